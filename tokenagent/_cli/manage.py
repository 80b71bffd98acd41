"""Vault housekeeping: delete, rename, relabel, passwd, set; and ``config check``.

``delete`` and ``rename`` change only files: neither needs the vault's key (the file's owner
could remove or rename it anyway), and neither reaches into the crypto, because a vault's
name is not bound into it (its id is). ``delete`` moves the files aside into
``VAULTS/deleted/`` rather than unlinking them: a vault deleted by mistake comes back with
``mv``, and ``--purge`` is there for the user who wants it gone. ``relabel``, ``passwd`` and
``set`` change what the header MAC covers, so they open the vault first, like ``enroll``.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import click

from ..errors import TokenAgentError, UsageError, VaultExists, vault_not_found
from ..factors.base import Factor
from ..vault import VaultStore, check_name, operations, sign, verify, wipe
from ..vault.format import Vault
from ..vault.slots import open_slot
from .admin import factor_context, open_vault, secret_file_options
from .util import emit, json_option

DELETED_DIR = "deleted"


def _confirm(question: str, yes: bool) -> None:
    if yes:
        return
    if not (sys.stdin.isatty() and sys.stderr.isatty()):
        raise UsageError(f"{question}: confirm with --yes (there is no terminal to ask on)")
    if not click.confirm(question, default=False, err=True):
        raise UsageError("nothing was changed")


def _lock_in_agent(vault: str) -> bool:
    """Lock ``vault`` in a running agent (its file is going away); False when none runs or it was not unlocked."""
    from ..client import AgentClient

    try:
        with AgentClient(timeout=5.0) as client:
            return bool(client.lock(vault)["was_unlocked"])
    except (OSError, TokenAgentError):
        return False


def _existing(store: VaultStore, name: str) -> None:
    if not store.exists(check_name(name)):
        raise vault_not_found(name, store.list())


@click.command()
@click.argument("vault")
@click.option("--yes", is_flag=True, help="Do not ask.")
@click.option("--purge", is_flag=True, help="Remove the files instead of keeping them in the deleted/ folder.")
@json_option
def delete(vault: str, yes: bool, purge: bool, as_json: bool) -> None:
    """Delete VAULT: its files move to VAULTS/deleted/ (with --purge, they are removed)."""
    store = VaultStore()
    _existing(store, vault)
    _confirm(f"Delete vault {vault!r}{' for good' if purge else ''}?", yes)
    kept: list[str] = []
    with store.locked(vault):
        aside = store.directory / DELETED_DIR
        if not purge:
            aside.mkdir(mode=0o700, exist_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%S")
        for path in (store.path(vault), store.backup_path(vault)):
            if not os.path.lexists(path):
                continue
            if purge:
                os.unlink(path)
            else:
                target = aside / f"{path.name}.{stamp}"
                os.rename(path, target)
                kept.append(str(target))
    locked = _lock_in_agent(vault)
    where = "removed" if purge else f"moved to {kept[0]} (move it back to undo; remove it to forget the vault)"
    emit(as_json, {"vault": vault, "kept": kept, "locked_in_agent": locked},
         f"vault {vault!r} deleted: {where}" + ("; locked in the agent" if locked else ""))


@click.command()
@click.argument("vault")
@click.argument("new_name")
@json_option
def rename(vault: str, new_name: str, as_json: bool) -> None:
    """Rename VAULT to NEW_NAME (its key, slots and fingerprint stay as they are)."""
    store = VaultStore()
    _existing(store, vault)
    check_name(new_name)
    with store.locked(vault), store.locked(new_name):
        if store.exists(new_name):
            raise VaultExists(f"a vault named {new_name!r} exists already")
        if os.path.lexists(store.backup_path(vault)):
            os.rename(store.backup_path(vault), store.backup_path(new_name))
        os.rename(store.path(vault), store.path(new_name))
    locked = _lock_in_agent(vault)
    notes = []
    if locked:
        notes.append(f"it was locked in the agent: unlock {new_name!r} again")
    from ..daemon.config import load_config

    try:
        if vault in load_config().vaults:
            notes.append(f"config.toml still has [vaults.{vault}]: rename that section too")
    except TokenAgentError:
        pass
    emit(as_json, {"vault": new_name, "old": vault, "locked_in_agent": locked, "notes": notes},
         "\n".join([f"vault {vault!r} renamed to {new_name!r}", *notes]))


@click.command()
@click.argument("vault")
@click.argument("slot")
@click.argument("label")
@secret_file_options
@click.option("--keyfile", "unlock_keyfiles", multiple=True, metavar="PATH", help="Key file for the unlock.")
@click.option("--unlock-slot", "unlock_slots", multiple=True, metavar="SLOT", help="Unlock with this slot.")
def relabel(vault: str, slot: str, label: str, unlock_keyfiles: tuple[str, ...], unlock_slots: tuple[str, ...],
            **kw: Any) -> None:
    """Give SLOT of VAULT the note LABEL (shown by 'tokenagent slots'); unlocks with any slot first."""
    store = VaultStore()
    store.load(vault).slot(slot)
    if len(label) > 200:
        raise UsageError("a label is at most 200 characters")
    ctx, ui = factor_context(kw, unlock_keyfiles)
    _, opened = open_vault(store, vault, ctx, ui, list(unlock_slots) or None)
    try:
        operations.set_label(store, vault, opened.masterkey, slot, label)
    finally:
        wipe(opened.masterkey)
    emit(kw["as_json"], {"vault": vault, "slot": slot, "label": label}, f"slot {slot} of vault {vault!r}: [{label}]")


def _password_slot(v: Vault, slot: str | None) -> str:
    with_password = [s.id for s in v.slots if any(f.descriptor()["type"] == "password" for f in s.factors)]
    if slot is not None:
        if slot not in with_password:
            v.slot(slot)
            raise UsageError(f"slot {slot} of vault {v.name!r} has no password")
        return slot
    if not with_password:
        raise UsageError(f"vault {v.name!r} has no slot with a password")
    if len(with_password) > 1:
        raise UsageError(f"vault {v.name!r} has passwords in slots {', '.join(with_password)}: name the slot")
    return with_password[0]


@click.command()
@click.argument("vault")
@click.argument("slot", required=False)
@secret_file_options
@click.option("--keyfile", "unlock_keyfiles", multiple=True, metavar="PATH", help="The slot's key file, if it has one.")
@click.option("--kdf-time", type=float, default=1.0, show_default=True, help="Password KDF target seconds.")
def passwd(vault: str, slot: str | None, unlock_keyfiles: tuple[str, ...], kdf_time: float, **kw: Any) -> None:
    """Replace the password of SLOT (the vault's password slot if there is one) in one step.

    Asks for the old password, then the new one twice (or reads both from --password-file, in
    that order); the slot's other factors are asked for as an unlock would. The slot keeps its
    id and label; the vault's key does not change, so nothing else needs to know.
    """
    from ..daemon.config import load_config
    from ..plugins import load_factor_types

    load_factor_types()
    store = VaultStore()
    loaded = store.load(vault)
    slot_id = _password_slot(loaded, slot)
    target = loaded.slot(slot_id)
    ctx, ui = factor_context(kw, unlock_keyfiles)
    registry = load_factor_types()
    olds: list[bytearray] = []
    news: list[tuple[Factor, bytearray]] = []
    try:
        for factor in target.factors:  # the old secrets, in slot order
            olds.append(factor.unlock(ctx))
        masterkey = open_slot(loaded, target, ctx, given=olds)
        try:
            policy = load_config().password_policy
            for factor, old in zip(target.factors, olds, strict=True):
                if factor.descriptor()["type"] == "password":
                    news.append(registry["password"].enroll(ctx, {"kdf_time": kdf_time, "policy": policy}))
                else:
                    news.append((factor, bytearray(old)))
            _, renewed = operations.replace_slot(store, vault, masterkey, slot_id, news)
        finally:
            wipe(masterkey)
    finally:
        for secret in olds:
            wipe(secret)
        for _, secret in news:
            wipe(secret)
    emit(kw["as_json"], {"vault": vault, "slot": renewed.id},
         f"the password of slot {renewed.id} of vault {vault!r} is changed")


@click.command(name="set")
@click.argument("vault")
@click.option("--allow-raw/--no-allow-raw", "allow_raw", default=None,
              help="May the agent hand out the vault's secret itself, or only per-context subkeys?")
@secret_file_options
@click.option("--keyfile", "unlock_keyfiles", multiple=True, metavar="PATH", help="Key file for the unlock.")
@click.option("--unlock-slot", "unlock_slots", multiple=True, metavar="SLOT", help="Unlock with this slot.")
def set_(vault: str, allow_raw: bool | None, unlock_keyfiles: tuple[str, ...], unlock_slots: tuple[str, ...],
         **kw: Any) -> None:
    """Change a setting of VAULT (--allow-raw / --no-allow-raw); unlocks with any slot first."""
    if allow_raw is None:
        raise UsageError("name a setting to change: --allow-raw or --no-allow-raw")
    store = VaultStore()
    ctx, ui = factor_context(kw, unlock_keyfiles)
    _, opened = open_vault(store, vault, ctx, ui, list(unlock_slots) or None)

    def change(current: Vault) -> Vault:
        verify(current, opened.masterkey)
        return sign(current.with_changes(seq=current.seq + 1, allow_raw=allow_raw), opened.masterkey)

    try:
        store.update(vault, change)
    finally:
        wipe(opened.masterkey)
    locked = _lock_in_agent(vault)  # the agent holds the old setting with the key: unlock again to apply
    emit(kw["as_json"], {"vault": vault, "allow_raw": allow_raw, "locked_in_agent": locked},
         f"vault {vault!r}: " + ("the agent may hand out its secret itself" if allow_raw else
                                 "the agent hands out only subkeys (get --context LABEL)")
         + ("; it was locked in the agent, unlock it again" if locked else ""))


@click.group()
def config() -> None:
    """The agent's configuration (config.toml)."""


@config.command(name="check")
@json_option
def config_check(as_json: bool) -> None:
    """Check config.toml as the agent reads it, and what it names: vaults, programs, modules."""
    from .. import paths
    from ..daemon.config import load_config, unknown_vault_sections

    path = paths.config_dir() / "config.toml"
    loaded = load_config(path)  # a file the agent would refuse: one line, exit 2
    problems = unknown_vault_sections(loaded, VaultStore().list())
    if loaded.pinentry and shutil.which(loaded.pinentry) is None:
        problems.append(f"[agent] pinentry {loaded.pinentry!r} is not a program on PATH")
    problems += [f"[devices] pkcs11_modules: {m} does not exist" for m in loaded.pkcs11_modules if not Path(m).exists()]
    for name, table in sorted(loaded.vaults.items()):
        problems += [f"[vaults.{name}] allow_exe: {exe} does not exist" for exe in table.get("allow_exe", [])
                     if not Path(exe).exists()]
    exists = path.exists()
    emit(as_json, {"path": str(path), "exists": exists, "problems": problems},
         "\n".join([f"config {path}: " + ("problems:" if problems else "ok" if exists else "not there (defaults)"),
                    *(f"  {p}" for p in problems)]))
    if problems:
        sys.exit(2)


def register(cli: click.Group) -> None:
    for command in (delete, rename, relabel, passwd, set_, config):
        cli.add_command(command)
