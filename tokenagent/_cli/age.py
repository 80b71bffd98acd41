"""age commands: ``tokenagent age identity`` and ``age recipient`` (docs/age.md)."""

from __future__ import annotations

from typing import Any

import click

from .. import agekeys
from ..vault import VaultStore, wipe
from ..vault.identities import age_public, check_label
from .ssh import open_options, opened_secret
from .util import emit, json_option


@click.group()
def age() -> None:
    """age identities and recipients derived from vaults, for age-plugin-tokenagent (docs/age.md)."""


@age.command()
@click.argument("vault")
@click.argument("label")
@json_option
def identity(vault: str, label: str, as_json: bool) -> None:
    """Print the AGE-PLUGIN-TOKENAGENT-1 identity of the age key LABEL of VAULT (it names them; no secret)."""
    check_label(label)
    VaultStore().load(vault)  # the vault must exist here
    text = agekeys.identity(vault, label)
    emit(as_json, {"vault": vault, "label": label, "identity": text},
         f"# tokenagent vault {vault}, age key {label}: decrypt with age -d -i THIS_FILE\n{text}")


@age.command()
@click.argument("vault")
@click.argument("label")
@open_options
def recipient(vault: str, label: str, **kw: Any) -> None:
    """Print the age1... recipient of the age key LABEL of VAULT (opens the vault here; no agent needed)."""
    check_label(label)
    secret = opened_secret(vault, kw)
    try:
        text = agekeys.recipient(age_public(secret, label))
    finally:
        wipe(secret)
    emit(kw["as_json"], {"vault": vault, "label": label, "recipient": text}, text)


def register(cli: click.Group) -> None:
    cli.add_command(age)
