"""Integration commands: ``keepass keyfile`` and ``cryptomator adopt|keys|export-masterkey|forget-masterkey``.

Keys come from the running agent (``tokenagent unlock VAULT`` or a plugged token first), as
for ``tokenagent get``; ``--wait SECONDS`` waits for the vault to be unlocked. The formats are
in tokenagent.integrations; the recipes in docs/integrations.md.
"""

from __future__ import annotations

import base64
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import click

from .. import paths
from .._files import FileTooLarge, read_regular
from ..errors import UnsafePath, UsageError, VaultExists, VaultNotFound
from ..factors.base import SecretRequest
from ..integrations import cryptomator as cm
from ..integrations import keepass
from ..vault import VaultStore, check_name, wipe
from .admin import create_vault, factor_options, secret_file_options
from .interaction import SecretLines, TerminalInteraction
from .util import emit, json_option, progress, wait_seconds

wait_option = click.option("--wait", type=wait_seconds, metavar="SECONDS",
                           help="Wait this long for the vault to be unlocked (plug in its token).")


def agent_key(vault: str, context: str | None, wait: float | None) -> bytearray:
    """The key from the agent; with ``wait``, what it waits for is said on stderr (as 'get --wait' does)."""
    from ..fastget import fetch

    return fetch(vault, context, wait, False)[0]


def _write_secret_output(data: bytes, output: str | None, fd: int | None, what: str,
                         as_json: bool = False, about: dict[str, Any] | None = None) -> str:
    """Send ``data`` to --output FILE (0400, new), --fd N, or a non-terminal stdout; say where.

    With ``--json`` the answer is one JSON object: where the secret went, or, on standard output,
    the secret itself (``data``, text, or base64 with ``encoding`` for binary formats)."""
    if output and fd is not None:
        raise UsageError("give --output or --fd, not both")
    if as_json:
        if sys.stdout.isatty():
            raise UsageError(f"standard output is a terminal; the {what} would be shown on screen: pipe it,"
                             " or use --fd N or --output FILE")
        if output or fd is not None:
            where = _write_secret_output(data, output, fd, what)
            emit(True, {**(about or {}), "written": where}, "")
            return where
        try:
            body: dict[str, Any] = {"data": data.decode("utf-8"), "encoding": "text"}
        except UnicodeDecodeError:
            body = {"data": base64.b64encode(data).decode(), "encoding": "base64"}
        emit(True, {**(about or {}), **body}, "")
        return "standard output"
    if output:
        keepass.write_file(output, data)
        return output
    if fd is not None:
        keepass.write_fd(fd, data)
        return f"descriptor {fd}"
    if sys.stdout.isatty():
        raise UsageError(f"standard output is a terminal; the {what} would be shown on screen: pipe it"
                         " (e.g. 3< <(tokenagent ...) and /dev/fd/3), or use --fd N or --output FILE")
    keepass.write_fd(sys.stdout.fileno(), data)
    return "standard output"


def _ask(option: str, path: str | None, request: SecretRequest) -> str:
    files = {"password": SecretLines(option, path)} if path else {}
    ui = TerminalInteraction(files)
    secret = ui.ask_secret(request)
    try:
        return secret.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"{option}: the password is not UTF-8") from None
    finally:
        wipe(secret)


# --- KeePass --------------------------------------------------------------------------------

@click.group()
def keepass_group() -> None:
    """KeePass composite keys: a key file that exists only while the vault is unlocked."""


@keepass_group.command(name="keyfile")
@click.argument("vault")
@click.option("--name", default=keepass.DEFAULT_NAME, show_default=True,
              help="Name of this key file (one per database: keepass:NAME is the context).")
@click.option("--output", metavar="FILE", help="Write a new file (mode 0400) instead of standard output.")
@click.option("--fd", type=int, metavar="N", help="Write to this inherited file descriptor.")
@wait_option
@json_option
def keepass_keyfile(vault: str, name: str, output: str | None, fd: int | None, wait: float | None,
                    as_json: bool) -> None:
    """Emit the KeePass XML 2.0 key file derived from VAULT (to a pipe, --fd N or --output FILE)."""
    label = keepass.context_label(name)
    key = agent_key(check_name(vault), label, wait)
    try:
        data = keepass.keyfile_from_subkey(key)
    finally:
        wipe(key)
    where = _write_secret_output(data, output, fd, "key file", as_json, {"vault": vault, "context": label})
    if output and not as_json:
        click.echo(f"KeePass key file for {label} written to {where} (mode 0400)", err=True)


@keepass_group.command(name="exec", context_settings={"ignore_unknown_options": True})
@click.argument("vault")
@click.option("--name", default=keepass.DEFAULT_NAME, show_default=True, help="Name of this key file.")
@wait_option
@json_option
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def keepass_exec(vault: str, name: str, wait: float | None, as_json: bool, command: tuple[str, ...]) -> None:
    """Run COMMAND with the key file of VAULT as {keyfile} (a sealed in-memory file, never on disk).

    COMMAND replaces tokenagent: --json (before --) makes only tokenagent's own errors JSON.

    Example: tokenagent keepass exec docs -- keepassxc-cli ls -k {keyfile} docs.kdbx
    """
    if not any("{keyfile}" in arg for arg in command):
        raise UsageError("put {keyfile} where COMMAND takes the key file, e.g. -k {keyfile}")
    key = agent_key(check_name(vault), keepass.context_label(name), wait)
    try:
        data = keepass.keyfile_from_subkey(key)
    finally:
        wipe(key)
    fd = keepass.sealed_memfd(data, f"{name}.keyx")
    args = [arg.replace("{keyfile}", f"/dev/fd/{fd}") for arg in command]
    try:
        os.execvp(args[0], args)
    except FileNotFoundError:
        raise UsageError(f"command not found: {args[0]}") from None


# --- Cryptomator ----------------------------------------------------------------------------

def _adopted_dir() -> Path:
    return paths.ensure_private_dir(paths.ensure_private_dir(paths.data_dir()) / "cryptomator")


def _record_path(name: str) -> Path:
    return _adopted_dir() / f"{name}.json"


def _kept_masterkey(name: str) -> Path:
    return _adopted_dir() / f"{name}.{cm.MASTERKEY_NAME}"


def _record(name: str) -> dict[str, Any]:
    try:
        return json.loads(read_regular(_record_path(name), cm.MAX_FILE_BYTES, follow=False, what="the record"))
    except FileNotFoundError:
        raise VaultNotFound(f"no adopted Cryptomator vault named {name!r}; see 'tokenagent cryptomator adopt'") \
            from None
    except (UnsafePath, FileTooLarge) as err:
        raise UsageError(err.message) from None


@click.group()
def cryptomator_group() -> None:
    """Cryptomator vaults whose masterkey is kept behind tokens instead of in the cloud folder."""


@cryptomator_group.command()
@click.argument("vault_dir", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--name", required=True, help="Name of the tokenagent vault to create for it.")
@click.option("--cryptomator-password-file", metavar="FILE", help="Read the vault's Cryptomator password from FILE.")
@click.option("--keep-masterkey", is_flag=True, help="Leave masterkey.cryptomator in the vault folder.")
@click.option("--placeholder/--no-placeholder", default=True, show_default=True,
              help="Put a placeholder without key material where masterkey.cryptomator was.")
@factor_options
@secret_file_options
def adopt(vault_dir: Path, name: str, cryptomator_password_file: str | None, keep_masterkey: bool,
          placeholder: bool, **kw: Any) -> None:
    """Keep VAULT_DIR's keys in a new tokenagent vault and move masterkey.cryptomator out of the folder."""
    check_name(name)
    if VaultStore().exists(name):
        raise VaultExists(f"a vault named {name!r} exists already; choose another --name")
    config = cm.read_config(vault_dir)
    mk_path = cm.masterkey_path(vault_dir, config)
    if not os.path.lexists(mk_path):
        raise UsageError(f"{mk_path} is not there: was this vault adopted already?")
    mk_bytes = cm.read_small(mk_path, "the masterkey file")
    password = _ask("--cryptomator-password-file", cryptomator_password_file,
                    SecretRequest("password", f"Cryptomator password of {vault_dir}"))
    with progress(f"opening {cm.MASTERKEY_NAME} with its password (scrypt)", quiet=kw["as_json"]):
        keys = cm.open_vault(vault_dir, password)  # scrypt, key unwrap, versionMac and the JWT signature
    try:
        new, ui = create_vault(name, kw, keys, allow_raw=True)
    finally:
        wipe(keys)
    kept = _kept_masterkey(name)
    cm.write_new_file(kept, mk_bytes)  # a copy first: the original goes only once the copy is safe
    record = {"vault_dir": str(vault_dir.resolve()), "masterkey_name": config.masterkey_name,
              "vault_id": config.vault_id, "adopted": int(time.time()), "kept_masterkey": str(kept)}
    cm.write_new_file(_record_path(name), json.dumps(record, indent=2).encode() + b"\n")
    moved = False
    if not keep_masterkey:
        if cm.read_small(kept, "the kept masterkey file") != mk_bytes:
            raise UsageError(f"the copy {kept} does not match {mk_path}; the original was left in place")
        if placeholder:  # tools such as pycryptomator open the file even when given the keys
            cm.replace_with_placeholder(mk_path, name)
        else:
            os.unlink(mk_path)
        moved = True
    emit(kw["as_json"],
         {"vault": name, "fingerprint": new.fingerprint, "vault_dir": record["vault_dir"], "moved": moved,
          "kept_masterkey": str(kept), "shown": ui.shown},
         f"Cryptomator vault {vault_dir} adopted as {name!r} (slot 1: {new.slots[0].describe()});\n"
         + (f"masterkey.cryptomator moved out of the vault folder to {kept}" if moved
            else f"masterkey.cryptomator left in place (a copy is in {kept})"))


@cryptomator_group.command()
@click.argument("name")
@click.option("--format", "fmt", type=click.Choice(cm.KEY_FORMATS), default="base64", show_default=True)
@click.option("--check", "check_dir", type=click.Path(file_okay=False, exists=True, path_type=Path),
              help="Verify the keys against this vault folder (default: the adopted folder, if present).")
@click.option("--output", metavar="FILE", help="Write a new file (mode 0400) instead of standard output.")
@click.option("--fd", type=int, metavar="N", help="Write to this inherited file descriptor.")
@wait_option
@json_option
def keys(name: str, fmt: str, check_dir: Path | None, output: str | None, fd: int | None,
         wait: float | None, as_json: bool) -> None:
    """Serve the raw keys of the adopted vault NAME (from the agent), in a format Cryptomator tools take."""
    record = _record(check_name(name))
    raw = agent_key(name, None, wait)
    try:
        folder = check_dir or Path(record["vault_dir"])
        if check_dir or (folder / cm.CONFIG_NAME).exists():
            cm.check_keys(folder, raw)  # the JWT signature proves these are this vault's keys
        data = cm.encode_keys(raw, fmt)
    finally:
        wipe(raw)
    _write_secret_output(data, output, fd, "vault key", as_json, {"vault": name, "format": fmt})


@cryptomator_group.command(name="export-masterkey")
@click.argument("name")
@click.argument("output", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--new-password-file", metavar="FILE", help="Read the new Cryptomator password from FILE.")
@click.option("--scrypt-cost", type=int, default=cm.DEFAULT_SCRYPT_COST, show_default=True,
              help="scrypt N of the new file (a power of 2).")
@wait_option
@json_option
def export_masterkey(name: str, output: Path, new_password_file: str | None, scrypt_cost: int,
                     wait: float | None, as_json: bool) -> None:
    """Write a fresh masterkey.cryptomator for NAME under a new password (for the official apps)."""
    _record(check_name(name))
    password = _ask("--new-password-file", new_password_file,
                    SecretRequest("new-password", f"New Cryptomator password for {name}", confirm=True))
    raw = agent_key(name, None, wait)
    try:
        mk = cm.wrap_masterkey(raw, password, scrypt_cost)
    finally:
        wipe(raw)
    try:
        cm.write_new_file(output, mk.to_json())
    except FileExistsError:
        raise UsageError(f"{output} exists already; tokenagent never overwrites a masterkey file") from None
    emit(as_json, {"vault": name, "output": str(output)},
         f"new masterkey file for {name!r} written to {output}; copy it into the vault folder to use the"
         " official Cryptomator apps (and delete it again after)")


@cryptomator_group.command(name="forget-masterkey")
@click.argument("name")
@click.option("--yes", is_flag=True, help="Do not ask.")
@json_option
def forget_masterkey(name: str, yes: bool, as_json: bool) -> None:
    """Delete the original masterkey.cryptomator kept at adoption (the vault's keys stay in tokenagent)."""
    _record(check_name(name))
    kept = _kept_masterkey(name)
    if not kept.exists():
        raise UsageError(f"no kept masterkey file for {name!r} ({kept})")
    if not yes and not (sys.stdin.isatty() and click.confirm(
            f"Delete {kept}? Afterwards only tokenagent (or an exported masterkey) opens this vault", err=True)):
        raise UsageError("not deleted (confirm at the prompt, or pass --yes)")
    os.unlink(kept)
    emit(as_json, {"vault": name, "deleted": str(kept)}, f"deleted {kept}")


def register(cli: click.Group) -> None:
    cli.add_command(keepass_group, name="keepass")
    cli.add_command(cryptomator_group, name="cryptomator")
