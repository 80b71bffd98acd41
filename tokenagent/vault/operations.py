"""Changes to an existing vault: add, remove, drill, rotate and roll forward slots.

Each change runs under the store's lock on the *current* file: the caller has opened the
vault and holds its secret, the current version is verified with that secret (so a file
swapped since the unlock is refused, and a slot another process added meanwhile is kept),
the change is applied, the sequence number is bumped and the file is signed again.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from ..errors import LastSlot, TokenAgentError, UsageError, VaultFull
from ..factors.base import Factor
from .crypto import wipe
from .format import MAX_FACTORS, MAX_SLOTS, Slot, Vault, check_label
from .slots import UnlockResult, make_slot, sign, verify
from .store import VaultStore


def check_room(vault: Vault) -> None:
    """Refuse a new slot before anything is enrolled or promised: the format holds at most MAX_SLOTS."""
    if len(vault.slots) >= MAX_SLOTS:
        raise VaultFull(f"vault {vault.name!r} has {len(vault.slots)} slots, the most a vault holds;"
                        " remove one first (tokenagent remove-slot); nothing was changed")


def check_slot_shape(n_factors: int, threshold: int | None) -> None:
    """What make_slot and the reader would refuse, said before any factor is enrolled (a token touched)."""
    if n_factors > MAX_FACTORS:
        raise UsageError(f"a slot holds at most {MAX_FACTORS} factors, not {n_factors}")
    if threshold is not None and not 1 <= threshold <= n_factors:
        raise UsageError(f"--threshold must be between 1 and the number of factors ({n_factors})")


def _signed_by(masterkey: bytes | bytearray) -> Callable[[Vault], None]:
    """The writer's last check: the version read back from its temporary file verifies with the secret."""
    return lambda written: verify(written, masterkey)


def is_token_slot(slot: Slot) -> bool:
    """Does opening this slot need a token (a key to plug in), not only things a person types or keeps?"""
    return any(f.is_token for f in slot.factors)


def add_slot(
    store: VaultStore,
    name: str,
    masterkey: bytes | bytearray,
    enrolled: Sequence[tuple[Factor, bytes | bytearray]],
    threshold: int | None = None,
    label: str = "",
) -> tuple[Vault, Slot]:
    added: list[Slot] = []
    check_label(label)

    def change(current: Vault) -> Vault:
        verify(current, masterkey)
        check_room(current)
        slot = make_slot(current.vault_id, current.next_slot_id(), masterkey, enrolled, threshold, label)
        added.append(slot)
        return sign(current.with_changes(seq=current.seq + 1, slots=(*current.slots, slot)), masterkey)

    vault = store.update(name, change, _signed_by(masterkey))
    return vault, added[0]


def remove_slot(
    store: VaultStore, name: str, masterkey: bytes | bytearray, slot_id: str, last_token_ok: bool = False
) -> Vault:
    def change(current: Vault) -> Vault:
        verify(current, masterkey)
        slot = current.slot(slot_id)
        rest = tuple(s for s in current.slots if s.id != slot_id)
        if not rest:
            raise LastSlot(
                f"slot {slot_id} is the last slot of vault {name!r}; removing it would lose the key."
                " Enrol another slot first"
            )
        if is_token_slot(slot) and not any(is_token_slot(s) for s in rest) and not last_token_ok:
            raise LastSlot(
                f"slot {slot_id} is the last token-backed slot of vault {name!r}; afterwards only"
                " passwords, key files or recovery keys open it. Run again with --last-token to confirm"
            )
        return sign(current.with_changes(seq=current.seq + 1, slots=rest), masterkey)

    return store.update(name, change, _signed_by(masterkey))


def record_drill(store: VaultStore, name: str, masterkey: bytes | bytearray, slot_id: str) -> Vault:
    """Remember when ``slot_id`` last opened the vault (shown by ``tokenagent slots``)."""
    now = int(time.time())

    def change(current: Vault) -> Vault:
        verify(current, masterkey)
        slots = tuple(
            Slot(**{**s.__dict__, "last_drill": now}) if s.id == slot_id else s for s in current.slots
        )
        current.slot(slot_id)
        return sign(current.with_changes(seq=current.seq + 1, slots=slots), masterkey)

    return store.update(name, change, _signed_by(masterkey))


def set_label(store: VaultStore, name: str, masterkey: bytes | bytearray, slot_id: str, label: str) -> Vault:
    check_label(label)

    def change(current: Vault) -> Vault:
        verify(current, masterkey)
        current.slot(slot_id)
        slots = tuple(Slot(**{**s.__dict__, "label": label}) if s.id == slot_id else s for s in current.slots)
        return sign(current.with_changes(seq=current.seq + 1, slots=slots), masterkey)

    return store.update(name, change, _signed_by(masterkey))


def replace_slot(
    store: VaultStore,
    name: str,
    masterkey: bytes | bytearray,
    slot_id: str,
    enrolled: Sequence[tuple[Factor, bytes | bytearray]],
) -> tuple[Vault, Slot]:
    """Re-wrap slot ``slot_id`` for new factor secrets (same id, label, policy; a fresh salt)."""
    replaced: list[Slot] = []

    def change(current: Vault) -> Vault:
        verify(current, masterkey)
        old = current.slot(slot_id)
        slot = make_slot(current.vault_id, slot_id, masterkey, enrolled, old.policy.k, old.label, old.created)
        slot = Slot(**{**slot.__dict__, "last_drill": int(time.time())})  # it was just opened
        replaced.append(slot)
        slots = tuple(slot if s.id == slot_id else s for s in current.slots)
        return sign(current.with_changes(seq=current.seq + 1, slots=slots), masterkey)

    vault = store.update(name, change, _signed_by(masterkey))
    return vault, replaced[0]


def roll_forward(store: VaultStore, name: str, vault: Vault, result: UnlockResult) -> Vault | None:
    """Re-wrap the slot that just opened ``vault`` when all its factors prepared renewed secrets
    (rolling challenges): the renewed file, as written and checked with the secret; None when there
    is nothing to roll. The old wrap stays valid until the new one is written, so a failure here
    loses nothing."""
    renewals = [factor.renewal() for factor in vault.slot(result.slot_id).factors]
    try:
        if not renewals or any(r is None for r in renewals):
            return None
        renewed, _ = replace_slot(store, name, result.masterkey, result.slot_id,
                                  [r for r in renewals if r is not None])
        return renewed
    finally:
        for renewal in renewals:
            if renewal is not None:
                wipe(renewal[1])


def roll_forward_or_keep(store: VaultStore, name: str, vault: Vault, result: UnlockResult,
                         warn: Callable[[str], None]) -> Vault:
    """``roll_forward`` after an unlock, for those who only open: the vault as it now is. A renewal
    that fails is told to ``warn`` and does not fail the unlock (the old wrap still opens)."""
    try:
        return roll_forward(store, name, vault, result) or vault
    except TokenAgentError as err:
        warn(err.message)
        return vault
