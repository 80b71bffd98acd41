"""Agent configuration: ``config.toml`` under the config dir (docs/agent.md has the reference).

    [agent]
    idle_ttl = 900          # seconds without a key request before a vault locks (0: never)
    max_ttl = 28800         # seconds after unlock when a vault locks regardless (0: never)
    lock_on_remove = true   # lock vaults opened by a token when that token is removed
    removal_grace = 2.0     # seconds a removed token has to come back before the lock
    audit = true            # JSON lines of every key release in DATA/audit.log
    audit_max_size = 16777216  # bytes; the log is rotated to audit.log.1 ... before it grows past (0: never)
    audit_keep = 4          # rotated files kept (audit.log.1 to audit.log.4)
    watch_tokens = true     # watch PC/SC readers and USB HID keys: unlock on plug, lock on removal
    touch_timeout = 30      # seconds a plugged token has to be touched
    pinentry = "pinentry-gnome3"   # ask PINs of plugged tokens with this program (default: none)
    pinentry_tty = "/dev/pts/3"    # for terminal pinentries (pinentry-curses): the terminal to use
    notify = true           # desktop notifications (touch your key, locked on removal) when a session bus is there
    get_socket = true       # answer get on a second socket (SOCKET.get) from a native thread, where built
    client_idle_timeout = 60   # seconds an agent-socket connection may sit idle before it is closed (0: never)

    [devices]
    pkcs11_modules = ["/usr/lib/x86_64-linux-gnu/opensc-pkcs11.so"]   # listed by 'tokenagent devices'

    [passwords]             # policy for new password factors (init, enroll, passwd)
    min_length = 12         # characters
    min_bits = 60           # estimated quality in bits (zxcvbn, as KeePassXC shows it)

    [ssh]                   # the ssh-agent socket (SOCKET.ssh; docs/ssh.md)
    socket = true           # serve it (default: true)
    keys = [{vault = "work", label = "laptop", comment = "me@work", type = "ed25519", confirm = false, touch = false}]

    [vaults.NAME]           # per-vault overrides and client rules
    idle_ttl = 60
    max_ttl = 3600
    allow_uids = [1000]     # only peers with these uids (default: the agent's own uid)
    allow_exe = ["/usr/bin/restic"]   # only these programs may get keys of this vault ("tokenagent get": its parent)
    refuse_preload = true   # with allow_exe: refuse a program with LD_PRELOAD or code not root's alone (default)
    unlock_on_plug = true
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import paths
from .._files import FileTooLarge, read_regular
from ..errors import UnsafePath, UsageError
from ..factors.quality import PasswordPolicy

MAX_CONFIG_BYTES = 1 << 20  # config.toml: far more than any configuration needs
MAX_SECONDS = 10 * 366 * 86400  # a TTL, grace or wait beyond ten years is a mistake (and overflows clocks)
_SECONDS = ("idle_ttl", "max_ttl", "removal_grace", "touch_timeout", "client_idle_timeout")


def check_seconds(value: object, what: str) -> float:
    """``value`` as a number of seconds: finite, 0 to MAX_SECONDS; UsageError naming ``what`` otherwise."""
    if (isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value)
            or not 0 <= value <= MAX_SECONDS):
        raise UsageError(f"{what} must be a number of seconds from 0 to {MAX_SECONDS} (ten years)")
    return float(value)


@dataclass(frozen=True)
class VaultPolicy:
    idle_ttl: float = 900.0
    max_ttl: float = 28800.0
    allow_uids: tuple[int, ...] | None = None
    allow_exe: tuple[str, ...] | None = None
    unlock_on_plug: bool = True
    refuse_preload: bool = True  # with allow_exe: refuse a program with preloaded code (daemon/peers.py)


@dataclass(frozen=True)
class SshKey:
    """An SSH key derived from a vault (docs/ssh.md): served while the vault is unlocked."""

    vault: str
    label: str
    comment: str = ""
    type: str = "ed25519"
    confirm: bool = False  # ask the pinentry program before each signature
    touch: bool = False  # open the vault again with the token that unlocked it (its touch) before each signature


@dataclass(frozen=True)
class AgentConfig:
    idle_ttl: float = 900.0
    max_ttl: float = 28800.0
    lock_on_remove: bool = True
    removal_grace: float = 2.0
    audit: bool = True
    audit_max_size: int = 16 * 1024 * 1024
    audit_keep: int = 4
    watch_tokens: bool = True
    touch_timeout: float = 30.0
    pinentry: str | None = None
    pinentry_tty: str | None = None
    notify: bool = True
    get_socket: bool = True
    client_idle_timeout: float = 60.0
    pkcs11_modules: tuple[str, ...] = ()
    password_policy: PasswordPolicy = PasswordPolicy()
    ssh_socket: bool = True
    ssh_keys: tuple[SshKey, ...] = ()
    vaults: dict[str, dict[str, Any]] = field(default_factory=dict)

    def policy(self, vault: str) -> VaultPolicy:
        raw = self.vaults.get(vault, {})
        uids = raw.get("allow_uids")
        exes = raw.get("allow_exe")
        return VaultPolicy(
            idle_ttl=float(raw.get("idle_ttl", self.idle_ttl)),
            max_ttl=float(raw.get("max_ttl", self.max_ttl)),
            allow_uids=tuple(int(u) for u in uids) if uids is not None else None,
            allow_exe=tuple(str(e) for e in exes) if exes is not None else None,
            unlock_on_plug=bool(raw.get("unlock_on_plug", True)),
            refuse_preload=bool(raw.get("refuse_preload", True)),
        )


_AGENT_KEYS = {"idle_ttl": (int, float), "max_ttl": (int, float), "lock_on_remove": bool,
               "removal_grace": (int, float), "audit": bool, "watch_tokens": bool, "touch_timeout": (int, float),
               "pinentry": str, "pinentry_tty": str, "notify": bool,
               "get_socket": bool}
_AGENT_KEYS["client_idle_timeout"] = (int, float)
_AGENT_KEYS.update(audit_max_size=int, audit_keep=int)
_DEVICE_KEYS = {"pkcs11_modules": list}
_PASSWORD_KEYS = {"min_length": int, "min_bits": (int, float)}
_SSH_KEYS = {"socket": bool, "keys": list}
_SSH_KEY_KEYS = {"vault": str, "label": str, "comment": str, "type": str, "confirm": bool, "touch": bool}
_VAULT_KEYS = {"idle_ttl": (int, float), "max_ttl": (int, float), "allow_uids": list, "allow_exe": list,
               "unlock_on_plug": bool, "refuse_preload": bool}


def _check(table: dict[str, Any], allowed: dict[str, Any], where: str) -> None:
    for key, value in table.items():
        if key not in allowed:
            raise UsageError(f"config {where}: unknown setting {key!r}")
        if not isinstance(value, allowed[key]) or (isinstance(value, bool) and allowed[key] is not bool):
            raise UsageError(f"config {where}: {key} has the wrong type")
        if key in _SECONDS:
            check_seconds(value, f"config {where}: {key}")


def load_config(path: Path | None = None) -> AgentConfig:
    path = path or paths.config_dir() / "config.toml"
    try:  # a regular file only (a FIFO there must not block the agent or the CLI), of a sane size
        raw = tomllib.loads(read_regular(path, MAX_CONFIG_BYTES, what="the configuration file").decode())
    except FileNotFoundError:
        return AgentConfig()
    except (UnsafePath, FileTooLarge) as err:
        raise UsageError(f"{err.message}") from None
    except OSError as err:
        raise UsageError(f"config {path}: {err.strerror or err}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise UsageError(f"config {path}: {err}") from None
    agent = raw.pop("agent", {})
    devices = raw.pop("devices", {})
    vaults = raw.pop("vaults", {})
    passwords = raw.pop("passwords", {})
    ssh = _ssh_config(raw.pop("ssh", {}), path)
    if raw:
        raise UsageError(f"config {path}: unknown tables {sorted(raw)}")
    _check(agent, _AGENT_KEYS, "[agent]")
    if agent.get("audit_max_size", 0) < 0 or agent.get("audit_keep", 1) < 1:
        raise UsageError(f"config {path}: [agent] audit_max_size must be 0 or more, audit_keep 1 or more")
    _check(devices, _DEVICE_KEYS, "[devices]")
    _check(passwords, _PASSWORD_KEYS, "[passwords]")
    if any(v < 0 for v in passwords.values()):
        raise UsageError(f"config {path}: [passwords] limits are not negative")
    modules = devices.get("pkcs11_modules", [])
    if not all(isinstance(m, str) for m in modules):
        raise UsageError(f"config {path}: [devices] pkcs11_modules is a list of paths")
    for name, table in vaults.items():
        _check(table, _VAULT_KEYS, f"[vaults.{name}]")
    return AgentConfig(**{k: agent[k] for k in agent}, pkcs11_modules=tuple(modules), vaults=vaults,
                       password_policy=PasswordPolicy(**passwords), **ssh)


def _ssh_config(table: Any, path: Path) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise UsageError(f"config {path}: [ssh] must be a table")
    _check(table, _SSH_KEYS, "[ssh]")
    keys = []
    for entry in table.get("keys", []):
        if not isinstance(entry, dict) or "vault" not in entry or "label" not in entry:
            raise UsageError(f"config {path}: [ssh] keys are tables with at least vault and label")
        _check(entry, _SSH_KEY_KEYS, "[ssh] keys")
        if entry.get("type", "ed25519") not in ("ed25519", "ecdsa-p256"):
            raise UsageError(f"config {path}: [ssh] key type is ed25519 or ecdsa-p256")
        keys.append(SshKey(**entry))
    return {"ssh_socket": table.get("socket", True), "ssh_keys": tuple(keys)}


def unknown_vault_sections(config: AgentConfig, vaults: list[str]) -> list[str]:
    """One line per ``[vaults.NAME]`` section naming no vault there is (a typo, or a vault since
    deleted or renamed): its rules would silently apply to nothing."""
    import difflib

    lines = []
    for name in sorted(set(config.vaults) - set(vaults)):
        close = difflib.get_close_matches(name, vaults, n=1, cutoff=0.5)
        hint = f"; did you mean [vaults.{close[0]}]?" if close else ""
        lines.append(f"[vaults.{name}] names no vault (see: tokenagent list){hint}")
    return lines
