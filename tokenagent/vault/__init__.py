"""The vault: a secret wrapped by slots of factors (docs/spec/vault.md).

Public API used by the CLI, the agent and the integrations:

* ``VaultStore(directory=None)``: ``list()``, ``path(name)``, ``load(name) -> Vault``,
  ``create(vault)``, ``update(name, change)`` (locked read-modify-write), ``delete(name)``.
* ``Vault`` / ``Slot`` / ``Policy``: the parsed file; ``vault.allow_raw`` says whether the
  agent may release the secret itself or only per-context subkeys.
* ``new_vault(name, enrolled, threshold, secret)``, ``make_slot(...)``, ``sign``, ``verify``.
* ``unlock(vault, ctx, slot_ids=None) -> UnlockResult(slot_id, masterkey)``: tries slots in
  order, ``NotMine``/``WrongSecret`` move on, ``NoSlotMatched`` carries per-slot reasons;
  the header MAC is verified after every unlock.
* ``fingerprint(masterkey)``, ``derive_subkey(masterkey, context)`` (HKDF label
  ``tokenagent/v1/context``), ``wipe(buffer)``.
* ``operations``: add_slot, remove_slot, record_drill (each locked, signed, atomic).
"""

from __future__ import annotations

from .crypto import derive_subkey, fingerprint, wipe
from .format import FORMAT, Policy, Slot, Vault
from .operations import add_slot, record_drill, remove_slot
from .slots import UnlockResult, make_slot, new_vault, open_slot, sign, unlock, verify
from .store import VaultStore, check_name

__all__ = [
    "FORMAT",
    "Policy",
    "add_slot",
    "record_drill",
    "remove_slot",
    "Slot",
    "UnlockResult",
    "Vault",
    "VaultStore",
    "check_name",
    "derive_subkey",
    "fingerprint",
    "make_slot",
    "new_vault",
    "open_slot",
    "sign",
    "unlock",
    "verify",
    "wipe",
]
