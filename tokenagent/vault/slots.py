"""Slot operations: make a slot from enrolled factors, open one, sign and check the vault.

Theory of operation. A slot wraps the vault secret under a key-encryption key (KEK):

* policy "all": KEK = HKDF(len||secret for each factor in order, salt, "kek" || bound),
  so every factor is needed and their order matters;
* policy "threshold k": a random 32-byte slot key is split with Shamir into one share per
  factor; share i is sealed under HKDF(secret_i, salt, "share" || i || bound); any k
  opened shares give the slot key, and KEK = HKDF(len||slot key, salt, "kek" || bound).

``bound`` is the canonical encoding of the slot's public part (format, vault id, slot id,
policy, every factor descriptor) and is also the AEAD associated data, so a descriptor
edited on disk makes the unwrap fail. After any successful unwrap the header MAC over the
whole file is checked: a slot added by someone who never had the secret is detected.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace

from ..errors import (
    NoSlotMatched,
    NotMine,
    TokenAbsent,
    TokenNotPresent,
    UsageError,
    VaultIntegrityError,
    WrongSecret,
)
from ..factors.base import Factor, FactorContext, Interaction, SecretRequest
from . import crypto
from .format import MAX_SECRET_LEN, VAULT_ID_LEN, Policy, SealedShare, Slot, Vault, check_label

_SHARE_AD = crypto.LABEL_SHARE


@dataclass
class UnlockResult:
    """The opened secret (wipe it with ``crypto.wipe`` when done) and the slot that opened it."""

    slot_id: str
    masterkey: bytearray


def _wrap_ad(bound: bytes) -> bytes:
    return crypto.LABEL_WRAP_AD + b"\x00" + bound


def _share_ad(bound: bytes, index: int) -> bytes:
    return _SHARE_AD + b"\x00" + index.to_bytes(2, "big") + bound


def make_slot(
    vault_id: bytes,
    slot_id: str,
    masterkey: bytes | bytearray,
    enrolled: Sequence[tuple[Factor, bytes | bytearray]],
    threshold: int | None = None,
    label: str = "",
    now: int | None = None,
) -> Slot:
    """Wrap ``masterkey`` for the given (factor, secret) pairs."""
    n = len(enrolled)
    if n == 0:
        raise UsageError("a slot needs at least one factor")
    if threshold is not None and not 1 <= threshold <= n:
        raise UsageError(f"--threshold must be between 1 and the number of factors ({n})")
    if threshold == n or n == 1:
        threshold = None  # k = n is simply "all"; keep one encoding for it
    policy = Policy(threshold)
    slot = Slot(
        id=slot_id,
        label=label,
        created=int(now if now is not None else time.time()),
        last_drill=None,
        policy=policy,
        factors=tuple(f for f, _ in enrolled),
        salt=secrets.token_bytes(crypto.SALT_LEN),
        nonce=b"",
        wrapped=b"",
    )
    bound = slot.bound(vault_id)
    shares: tuple[SealedShare, ...] = ()
    if policy.k is None:
        kek = crypto.derive_kek([s for _, s in enrolled], slot.salt, bound)
    else:
        slot_key = bytearray(secrets.token_bytes(crypto.KEY_LEN))
        sealed = []
        for i, (share, (_, secret)) in enumerate(zip(crypto.shamir_split(slot_key, policy.k, n), enrolled, strict=True), 1):
            share_key = crypto.derive_share_key(secret, slot.salt, bound, i)
            nonce, box = crypto.seal(share_key, share, _share_ad(bound, i))
            sealed.append(SealedShare(nonce, box))
            crypto.wipe(share_key)
            crypto.wipe(share)
        shares = tuple(sealed)
        kek = crypto.derive_kek([slot_key], slot.salt, bound)
        crypto.wipe(slot_key)
    nonce, wrapped = crypto.seal(kek, masterkey, _wrap_ad(bound))
    crypto.wipe(kek)
    return Slot(**{**slot.__dict__, "nonce": nonce, "wrapped": wrapped, "shares": shares})


def open_slot(vault: Vault, slot: Slot, ctx: FactorContext,
              given: Sequence[bytes | bytearray] | None = None) -> bytearray:
    """Return the vault secret through ``slot``; NotMine/WrongSecret when it does not open.

    ``given``: the factors' secrets, already obtained (one per factor, in order), instead of
    asking each factor (``rotate`` gets old and new secrets in one token operation).
    """
    bound = slot.bound(vault.vault_id)

    def secret_of(i: int, factor: Factor) -> bytearray:
        if given is not None:
            return bytearray(given[i])
        return factor.unlock(_factor_context(ctx, slot, i))

    if slot.policy.k is None:
        secrets_: list[bytearray] = []
        try:
            for i, factor in enumerate(slot.factors):
                secrets_.append(secret_of(i, factor))
            kek = crypto.derive_kek(secrets_, slot.salt, bound)
        finally:
            for s in secrets_:
                crypto.wipe(s)
    else:
        kek = _open_threshold(slot, bound, secret_of)
    try:
        return crypto.open_sealed(kek, slot.nonce, slot.wrapped, _wrap_ad(bound))
    finally:
        crypto.wipe(kek)


class _NumberedPrompts(Interaction):
    """Tells apart the prompts of two factors of one type in a slot ("Password (2nd password)")."""

    def __init__(self, ui: Interaction, note: str) -> None:
        self._ui, self._note = ui, note

    def ask_secret(self, request: SecretRequest) -> bytearray:
        return self._ui.ask_secret(replace(request, prompt=f"{request.prompt} ({self._note})"))

    def notify(self, event: str, message: str) -> None:
        self._ui.notify(event, message)

    def confirm(self, question: str) -> bool:
        return self._ui.confirm(question)

    def show_secret_once(self, title: str, text: str) -> None:
        self._ui.show_secret_once(title, text)


_ORDINALS = {1: "1st", 2: "2nd", 3: "3rd"}


def _factor_context(ctx: FactorContext, slot: Slot, index: int) -> FactorContext:
    types = slot_types(slot)
    same = [i for i, t in enumerate(types) if t == types[index]]
    if len(same) == 1:
        return ctx
    nth = same.index(index) + 1
    return replace(ctx, ui=_NumberedPrompts(ctx.ui, f"{_ORDINALS.get(nth, f'{nth}th')} {types[index]}"))


def _open_threshold(slot: Slot, bound: bytes, secret_of: Callable[[int, Factor], bytearray]) -> bytearray:
    k = slot.policy.k or len(slot.factors)
    points: dict[int, bytearray] = {}
    problems: list[str] = []
    try:
        for i, (factor, share) in enumerate(zip(slot.factors, slot.shares, strict=True), 1):
            if len(points) >= k:
                break
            try:
                secret = secret_of(i - 1, factor)
            except (NotMine, WrongSecret) as err:
                problems.append(f"{factor.describe()}: {err.message}")
                continue
            key = crypto.derive_share_key(secret, slot.salt, bound, i)
            crypto.wipe(secret)
            try:
                points[i] = crypto.open_sealed(key, share.nonce, share.sealed, _share_ad(bound, i))
            except WrongSecret:
                problems.append(f"{factor.describe()}: wrong secret")
            finally:
                crypto.wipe(key)
        if len(points) < k:
            detail = "; ".join(problems) or "not enough factors given"
            raise NotMine(f"{len(points)} of the {k} factors needed were available ({detail})")
        slot_key = crypto.shamir_combine(points)
    finally:
        for p in points.values():
            crypto.wipe(p)
    try:
        return crypto.derive_kek([slot_key], slot.salt, bound)
    finally:
        crypto.wipe(slot_key)


def sign(vault: Vault, masterkey: bytes | bytearray) -> Vault:
    """Return ``vault`` with its header MAC computed over everything else."""
    body = crypto.canonical(vault.body())
    return vault.with_changes(mac=crypto.header_mac(masterkey, vault.vault_id, body))


def verify(vault: Vault, masterkey: bytes | bytearray) -> None:
    """Check the header MAC and the fingerprint with an opened secret."""
    expected = sign(vault, masterkey).mac
    if not secrets.compare_digest(expected, vault.mac):
        raise VaultIntegrityError(
            f"vault {vault.name!r} failed its integrity check: the file was changed by someone without the key;"
            " do not trust its slots (restore it from a backup)"
        )
    if crypto.fingerprint(masterkey) != vault.fingerprint:
        raise VaultIntegrityError(f"vault {vault.name!r}: the key does not match the recorded fingerprint")


def new_vault(
    name: str,
    enrolled: Sequence[tuple[Factor, bytes | bytearray]],
    threshold: int | None = None,
    secret: bytes | bytearray | None = None,
    allow_raw: bool | None = None,
    label: str = "",
) -> tuple[Vault, bytearray]:
    """A new vault with one slot; returns it signed, with its secret (generated unless given)."""
    if secret is not None and not 1 <= len(secret) <= MAX_SECRET_LEN:
        raise UsageError(f"an imported secret must be 1 to {MAX_SECRET_LEN} bytes, not {len(secret)}")
    check_label(label)
    masterkey = bytearray(secret) if secret is not None else bytearray(secrets.token_bytes(crypto.KEY_LEN))
    vault_id = secrets.token_bytes(VAULT_ID_LEN)
    now = int(time.time())
    slot = make_slot(vault_id, "1", masterkey, enrolled, threshold, label, now)
    vault = Vault(
        name=name,
        vault_id=vault_id,
        seq=1,
        created=now,
        secret_len=len(masterkey),
        # An imported secret exists to be handed back as is (a backup tool's passphrase);
        # a generated key is released only as per-context subkeys unless asked otherwise.
        allow_raw=(secret is not None) if allow_raw is None else allow_raw,
        fingerprint=crypto.fingerprint(masterkey),
        slots=(slot,),
        imported=secret is not None,
    )
    return sign(vault, masterkey), masterkey


def slot_types(slot: Slot) -> list[str]:
    return [f.descriptor()["type"] for f in slot.factors]


def usable_with(slot: Slot, offered: Iterable[str] | None) -> bool:
    """Whether the factor types the user offered could open ``slot`` (None = try everything)."""
    if offered is None:
        return True
    offered = set(offered)
    types = slot_types(slot)
    if slot.policy.k is None:
        return all(t in offered for t in types)
    return sum(t in offered for t in types) >= slot.policy.k


def unlock(vault: Vault, ctx: FactorContext, slot_ids: Sequence[str] | None = None) -> UnlockResult:
    """Try slots in order; the first that opens wins, then the whole file is verified.

    ``NotMine`` and ``WrongSecret`` move on to the next slot; any other error (a blocked
    PIN, a cancel) stops at once, because trying more slots would only repeat it.
    """
    slots = [vault.slot(s) for s in slot_ids] if slot_ids else list(vault.slots)
    offered = ctx.options.get("factor_types") if not slot_ids else None
    reasons: list[tuple[str, str]] = []
    absent: list[str] = []  # slots whose token is not plugged in
    refused = False  # a secret given was wrong
    for slot in slots:
        if not usable_with(slot, offered):
            reasons.append((slot.id, f"needs {slot.describe()}"))
            continue
        try:
            masterkey = open_slot(vault, slot, ctx)
        except (NotMine, WrongSecret) as err:
            reasons.append((slot.id, err.message))
            if isinstance(err, TokenAbsent):
                absent.append(slot.id)
            refused = refused or isinstance(err, WrongSecret)
            continue
        try:
            verify(vault, masterkey)
        except VaultIntegrityError:
            crypto.wipe(masterkey)
            raise
        return UnlockResult(slot.id, masterkey)
    detail = "; ".join(f"slot {slot_id}: {why}" for slot_id, why in reasons)
    if absent and not refused:  # "plug in your key" is the answer, not "wrong password"
        raise TokenNotPresent(f"the token of vault {vault.name!r} is not plugged in: plug it in and run again"
                              f" ({detail})", reasons, absent)
    raise NoSlotMatched(f"no slot of vault {vault.name!r} could be opened ({detail})", reasons)
