"""``tokenagent repair VAULT``: put the backup copy back in place of a damaged main file.

The only command that writes a vault from its backup copy (every other command refuses to
change a vault whose main file is damaged, and says so). The damaged file is kept aside as
``NAME.vault.damaged-TIMESTAMP`` in the vault directory, for a look or a restore by hand.
No secret is needed: the restored copy is checked by its header MAC at the next unlock,
like any vault file.
"""

from __future__ import annotations

import click

from ..plugins import load_factor_types
from ..vault import VaultStore
from .util import emit, json_option


@click.command()
@click.argument("vault")
@json_option
def repair(vault: str, as_json: bool) -> None:
    """Restore VAULT's backup copy over a damaged main file (the damaged file is kept aside)."""
    load_factor_types()
    done = VaultStore().repair(vault)
    if not done.restored:
        emit(as_json, {"vault": vault, "repaired": False, "seq": done.vault.seq},
             f"vault {vault!r} is not damaged; nothing to do")
        return
    emit(as_json, {"vault": vault, "repaired": True, "seq": done.vault.seq, "damaged_file": str(done.damaged) if done.damaged else None,
                   "slots": [s.id for s in done.vault.slots]},
         f"vault {vault!r} restored from its backup copy (seq {done.vault.seq}, slots"
         f" {', '.join(s.id for s in done.vault.slots)}); the damaged file is kept as {done.damaged}."
         " Changes made after that copy are lost: re-enrol any slot added since"
         if done.damaged else f"vault {vault!r} restored from its backup copy (seq {done.vault.seq}); its main file was missing")


def register(cli: click.Group) -> None:
    cli.add_command(repair)
