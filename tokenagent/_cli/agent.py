"""Agent commands: agent, status, unlock, lock, events, exec (``get`` is tokenagent.fastget)."""

from __future__ import annotations

import base64
import os
import re
import sys
from pathlib import Path
from typing import Any

import click

from ..client import AgentClient
from ..errors import UsageError
from ..vault import VaultStore, wipe
from . import agentverbs
from .admin import factor_context, open_vault, secret_file_options
from .util import SECONDS, emit, json_option, wait_seconds

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@click.command()
@click.option("--socket", "socket_file", type=click.Path(path_type=Path), help="Listen here (default: runtime dir).")
@click.option("--json", "as_json", is_flag=True, help="Log one JSON object per line (for log collectors).")
def agent(socket_file: Path | None, as_json: bool) -> None:
    """Run the agent in the foreground (systemd runs it with socket activation)."""
    from ..daemon.resources import asyncio_without_tls

    asyncio_without_tls()  # before the daemon imports asyncio: no TLS support loaded (daemon/resources.py)
    from ..daemon.server import run_agent

    sys.exit(run_agent(socket_file=socket_file, json_logs=as_json))


@click.command()
@json_option
def status(as_json: bool) -> None:
    """Show the agent and which vaults are unlocked."""
    agentverbs.status(as_json)


@click.command()
@click.argument("vault")
@secret_file_options
@click.option("--keyfile", "unlock_keyfiles", multiple=True, metavar="PATH", help="Key file to offer.")
@click.option("--slot", "unlock_slots", multiple=True, metavar="SLOT", help="Try only this slot.")
@click.option("--idle-ttl", type=SECONDS, help="Lock after this many idle seconds (0: never).")
@click.option("--max-ttl", type=SECONDS, help="Lock this many seconds after unlock regardless (0: never).")
def unlock(vault: str, unlock_keyfiles: tuple[str, ...], unlock_slots: tuple[str, ...],
           idle_ttl: float | None, max_ttl: float | None, **kw: Any) -> None:
    """Open VAULT here (prompts, key files, tokens) and hand it to the agent."""
    with AgentClient() as client:
        ctx, ui = factor_context(kw, unlock_keyfiles)
        _, opened = open_vault(VaultStore(), vault, ctx, ui, list(unlock_slots) or None)
        try:
            ttl = {k: v for k, v in (("idle_ttl", idle_ttl), ("max_ttl", max_ttl)) if v is not None}
            data = client.unlock(vault, opened.masterkey, opened.slot_id, **ttl)
        finally:
            wipe(opened.masterkey)
    emit(kw["as_json"], {"vault": vault, "slot": opened.slot_id, "fingerprint": data["fingerprint"]},
         f"vault {vault!r} unlocked in the agent (slot {opened.slot_id})")


@click.command()
@click.argument("vault", required=False)
@click.option("--all", "all_", is_flag=True, help="Lock every vault.")
@json_option
def lock(vault: str | None, all_: bool, as_json: bool) -> None:
    """Lock VAULT (or --all) in the agent: its key is wiped from memory."""
    agentverbs.lock(vault, all_, as_json)


@click.command()
@json_option
def events(as_json: bool) -> None:
    """Print the agent's events as they happen (token plugged, touch needed, unlocked, locked)."""
    agentverbs.events(as_json)


@click.command(name="exec", context_settings={"ignore_unknown_options": True})
@click.argument("vault")
@click.option("--context", "context_label", metavar="LABEL", help="Use the subkey for LABEL.")
@click.option("--env", "env_name", metavar="NAME",
              help="Put the key in this environment variable (default TOKENAGENT_KEY, unless --fd or {keyfile}).")
@click.option("--fd", "key_fd", type=click.IntRange(3, 1023), metavar="N",
              help="Give COMMAND the key on descriptor N (a sealed in-memory file), not in its environment.")
@click.option("--format", "fmt", type=click.Choice(["text", "hex", "base64", "raw"]),
              help="text, hex, base64 or raw (raw: --fd or {keyfile} only); default: an imported secret as it"
                   " came, any other key in base64.")
@click.option("--wait", type=wait_seconds, help="Wait this many seconds for the vault to be unlocked.")
@json_option
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def exec_(vault: str, context_label: str | None, env_name: str | None, key_fd: int | None, fmt: str | None,
          wait: float | None, as_json: bool, command: tuple[str, ...]) -> None:
    """Run COMMAND with the key of VAULT (use: exec VAULT [OPTIONS] -- CMD ARGS).

    By default the key is in $TOKENAGENT_KEY, which the command's children inherit and any
    process of yours can read in /proc/PID/environ. --fd N hands it over on descriptor N
    instead, and {keyfile} in COMMAND becomes the path of a sealed in-memory file holding it
    (/dev/fd/M, as 'keepass exec' does): e.g. exec backup -- restic --password-file {keyfile} snapshots.
    """
    from ..fastget import as_imported, fetch

    if env_name is not None and not _ENV_NAME.fullmatch(env_name):
        raise UsageError(f"--env {env_name[:40]!r} is not an environment variable name (letters, digits, '_';"
                         " not starting with a digit)")
    if context_label == "":
        raise UsageError("--context needs a label (an empty one is refused: leave --context out for the key itself)")
    as_file = key_fd is not None or any("{keyfile}" in arg for arg in command)
    if fmt == "raw" and not as_file:
        raise UsageError("--format raw needs --fd N or {keyfile}: an environment variable cannot hold any byte")
    key, imported = fetch(vault, context_label, wait, fmt is None and context_label is None)
    try:
        fmt = fmt or (as_imported(key) if imported else "base64")
        if fmt == "raw" and not as_file:
            raise UsageError(f"the secret of vault {vault!r} is binary: use --fd N or {{keyfile}}, or --format base64")
        data = _key_bytes(key, fmt)
    finally:
        wipe(key)
    args = list(command)
    env = dict(os.environ)
    if env_name or not as_file:
        value = data.rstrip(b"\n")
        if b"\0" in value:
            raise UsageError(f"the secret of vault {vault!r} holds a NUL byte, which no environment variable can:"
                             " use --fd N or {keyfile}")
        env[env_name or "TOKENAGENT_KEY"] = value.decode("utf-8", "surrogateescape")
    if as_file:
        from ..integrations.keepass import sealed_memfd

        fd = sealed_memfd(data, "tokenagent-key")
        if key_fd is not None and fd != key_fd:
            os.dup2(fd, key_fd, inheritable=True)
            os.close(fd)
            fd = key_fd
        args = [arg.replace("{keyfile}", f"/dev/fd/{fd}") for arg in args]
    try:
        os.execvpe(args[0], args, env)
    except FileNotFoundError:
        raise UsageError(f"command not found: {args[0]}") from None


def _key_bytes(key: bytearray, fmt: str) -> bytes:
    """The key as COMMAND gets it: the bytes (raw), the bytes and a newline (text), hex or base64 and a newline."""
    if fmt == "raw":
        return bytes(key)
    if fmt == "text":
        return bytes(key) if key.endswith(b"\n") else bytes(key) + b"\n"
    return ((key.hex() if fmt == "hex" else base64.b64encode(bytes(key)).decode()) + "\n").encode()


@click.command(context_settings={"ignore_unknown_options": True, "help_option_names": []})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def get(args: tuple[str, ...]) -> None:
    """Print a key from the agent: get VAULT [--context LABEL] [--format raw|hex|base64] [--wait S] [--json]."""
    from ..fastget import main as fast_main  # 'tokenagent get' normally runs it before click loads

    sys.exit(fast_main(list(args)))


def register(cli: click.Group) -> None:
    for command in (agent, status, unlock, lock, events, exec_, get):
        cli.add_command(command)
