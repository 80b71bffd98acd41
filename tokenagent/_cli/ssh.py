"""SSH commands: ``tokenagent ssh env`` (the agent's ssh-agent socket) and ``ssh pubkey`` (docs/ssh.md)."""

from __future__ import annotations

import os
import shlex
from collections.abc import Callable
from typing import Any

import click

from .. import _locations, sshagent
from ..vault import VaultStore, wipe
from ..vault.identities import SSH_KEY_TYPES, check_label, ssh_private_key
from .admin import factor_context, open_vault, secret_file_options
from .util import emit, json_option


def open_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """How a command opens a vault here (the options of ``tokenagent unlock``)."""
    f = click.option("--slot", "unlock_slots", multiple=True, metavar="SLOT", help="Try only this slot.")(f)
    f = click.option("--keyfile", "unlock_keyfiles", multiple=True, metavar="PATH", help="Key file to offer.")(f)
    return secret_file_options(f)


def opened_secret(vault: str, kw: dict[str, Any]) -> bytearray:
    """The vault's secret, opened in this process with its slots (prompts, key files, tokens)."""
    ctx, ui = factor_context(kw, kw.get("unlock_keyfiles", ()))
    _, opened = open_vault(VaultStore(), vault, ctx, ui, list(kw.get("unlock_slots", ())) or None)
    return opened.masterkey


@click.group()
def ssh() -> None:
    """The agent's ssh-agent socket: SSH keys derived from vaults (docs/ssh.md)."""


@ssh.command()
@click.option("--csh", is_flag=True, help="Print csh commands.")
@json_option
def env(csh: bool, as_json: bool) -> None:
    """Print SSH_AUTH_SOCK for the agent's ssh-agent socket (eval "$(tokenagent ssh env)")."""
    path = _locations.ssh_socket(_locations.agent_socket())
    if csh:
        text = f"setenv SSH_AUTH_SOCK {shlex.quote(path)};"
    else:
        text = f"SSH_AUTH_SOCK={shlex.quote(path)}; export SSH_AUTH_SOCK;"
    if not os.path.exists(path) and not as_json:
        click.echo(f"tokenagent: no agent serves {path} yet (start it: tokenagent agent)", err=True)
    emit(as_json, {"ssh_auth_sock": path, "exists": os.path.exists(path)}, text)


@ssh.command()
@click.argument("vault")
@click.argument("label")
@click.option("--type", "key_type", type=click.Choice(SSH_KEY_TYPES), default="ed25519", show_default=True)
@click.option("--comment", help="Comment at the end of the line (default: VAULT/LABEL).")
@open_options
def pubkey(vault: str, label: str, key_type: str, comment: str | None, **kw: Any) -> None:
    """Print the authorized_keys line of the SSH key LABEL of VAULT (opens the vault here; no agent needed)."""
    check_label(label)
    secret = opened_secret(vault, kw)
    try:
        blob = sshagent.public_blob(ssh_private_key(secret, label, key_type))
    finally:
        wipe(secret)
    line = sshagent.authorized_keys_line(blob, comment if comment is not None else f"{vault}/{label}")
    emit(kw["as_json"], {"vault": vault, "label": label, "type": key_type, "authorized_keys": line,
                         "fingerprint": sshagent.fingerprint(blob)}, line)


def register(cli: click.Group) -> None:
    cli.add_command(ssh)
