"""The vault file: a JSON document, parsed strictly into ``Vault`` and ``Slot`` objects.

Theory of operation. A vault file is one UTF-8 JSON object (docs/spec/vault.md):

    {"format": "tokenagent-vault/1", "vault_id": B64(16), "seq": N, "created": T,
     "secret_len": L, "allow_raw": bool, "fingerprint": "xxxx:...", "slots": [SLOT...],
     "mac": B64(32)}            (+ "imported": true for an imported secret)

    SLOT = {"id": "1", "label": "...", "created": T, "last_drill": T|null,
            "policy": {"kind": "all"} | {"kind": "threshold", "k": K},
            "factors": [{"type": "...", "params": {...}}, ...],
            "salt": B64(32), "nonce": B64(12), "wrapped": B64(L+16),
            "shares": [{"nonce": B64(12), "sealed": B64(48)}, ...]}     # threshold only

Parsing is strict: unknown top-level or slot keys, duplicate keys, wrong types, numbers
out of range, bad base64 and trailing data are all ``VaultFormatError`` with a message
naming the field. Nothing here needs the masterkey; the MAC and the AEAD tags are
checked by ``tokenagent.vault.slots`` once a slot is open.
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass, field, replace
from typing import Any

from ..errors import UsageError, VaultFormatError
from ..factors.base import Factor, factor_from_descriptor
from ..factors.limits import ENV_TOTAL, kdf_limits
from ..factors.params import no_duplicates
from ..factors.params import strict_b64 as unb64
from .crypto import NONCE_LEN, SALT_LEN, TAG_LEN, canonical

FORMAT = "tokenagent-vault/1"
MAX_FILE_BYTES = 1 << 20
MAX_SLOTS = 64
MAX_FACTORS = 16
MAX_SECRET_LEN = 4096
MAX_LABEL_LEN = 200
VAULT_ID_LEN = 16
MAC_LEN = 32

_TOP_KEYS = {"format", "vault_id", "seq", "created", "secret_len", "allow_raw", "fingerprint", "slots", "mac"}
_OPTIONAL_TOP_KEYS = {"imported"}  # written only when true, so other files stay as older versions wrote them
_SLOT_KEYS = {"id", "label", "created", "last_drill", "policy", "factors", "salt", "nonce", "wrapped", "shares"}
_SLOT_ID = re.compile(r"[1-9][0-9]{0,5}")
_MAX_SLOT_ID = 999999
_FINGERPRINT = re.compile(r"[0-9a-f]{4}(:[0-9a-f]{4}){7}")
_FORMAT = re.compile(r"tokenagent-vault/(?P<n>[1-9][0-9]{0,8})")
_MAX_INT = 2**53
_MAX_INT_DIGITS = 20  # longer integer literals are refused before Python converts them
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _int(value: Any, what: str, low: int = 0, high: int = _MAX_INT) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise VaultFormatError(f"{what} must be an integer from {low} to {high}")
    return value


@dataclass(frozen=True)
class Policy:
    """All factors required (``k is None``), or any ``k`` of them."""

    k: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {"kind": "all"} if self.k is None else {"kind": "threshold", "k": self.k}

    def describe(self, n: int) -> str:
        return "all" if self.k is None else f"{self.k} of {n}"

    @classmethod
    def from_json(cls, value: Any, n_factors: int) -> Policy:
        if not isinstance(value, dict):
            raise VaultFormatError("slot policy must be an object")
        kind = value.get("kind")
        if kind == "all" and set(value) == {"kind"}:
            return cls(None)
        if kind == "threshold" and set(value) == {"kind", "k"}:
            return cls(_int(value["k"], "threshold k", 1, n_factors))
        raise VaultFormatError("slot policy must be {'kind': 'all'} or {'kind': 'threshold', 'k': K}")


@dataclass(frozen=True)
class SealedShare:
    nonce: bytes
    sealed: bytes


@dataclass(frozen=True)
class Slot:
    id: str
    label: str
    created: int
    last_drill: int | None
    policy: Policy
    factors: tuple[Factor, ...]
    salt: bytes
    nonce: bytes
    wrapped: bytes
    shares: tuple[SealedShare, ...] = ()

    def public(self, vault_id: bytes) -> dict[str, Any]:
        """What the slot's keys and associated data are bound to (no label/drill: those may change)."""
        return {
            "format": FORMAT,
            "vault_id": b64(vault_id),
            "slot": self.id,
            "policy": self.policy.to_json(),
            "factors": [f.descriptor() for f in self.factors],
        }

    def bound(self, vault_id: bytes) -> bytes:
        return canonical(self.public(vault_id))

    def describe(self) -> str:
        names = ", ".join(f.describe() for f in self.factors)
        policy = "" if self.policy.k is None or len(self.factors) == 1 else f" ({self.policy.describe(len(self.factors))})"
        return f"{names}{policy}"

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "label": self.label,
            "created": self.created,
            "last_drill": self.last_drill,
            "policy": self.policy.to_json(),
            "factors": [f.descriptor() for f in self.factors],
            "salt": b64(self.salt),
            "nonce": b64(self.nonce),
            "wrapped": b64(self.wrapped),
        }
        if self.shares:
            out["shares"] = [{"nonce": b64(s.nonce), "sealed": b64(s.sealed)} for s in self.shares]
        return out


@dataclass(frozen=True)
class Vault:
    name: str
    vault_id: bytes
    seq: int
    created: int
    secret_len: int
    allow_raw: bool
    fingerprint: str
    slots: tuple[Slot, ...]
    mac: bytes = b""
    from_backup: bool = field(default=False, compare=False)
    imported: bool = False  # the secret was imported (init --import-secret): served as it came
    damage: str = field(default="", compare=False)  # why the main file was refused (from_backup only)

    def slot(self, slot_id: str) -> Slot:
        for s in self.slots:
            if s.id == slot_id:
                return s
        known = ", ".join(s.id for s in self.slots) or "none"
        from ..errors import SlotNotFound

        raise SlotNotFound(f"vault {self.name!r} has no slot {slot_id!r} (slots: {known})")

    def next_slot_id(self) -> str:
        """One more than the highest id; past the last id, the lowest free one (ids are never in use twice)."""
        used = {int(s.id) for s in self.slots}
        highest = max(used, default=0)
        if highest < _MAX_SLOT_ID:
            return str(highest + 1)
        return str(min(set(range(1, len(used) + 2)) - used))

    def body(self) -> dict[str, Any]:
        """Everything but the MAC: the MAC's input is ``canonical(body())``."""
        return {
            "format": FORMAT,
            "vault_id": b64(self.vault_id),
            "seq": self.seq,
            "created": self.created,
            "secret_len": self.secret_len,
            "allow_raw": self.allow_raw,
            "fingerprint": self.fingerprint,
            "slots": [s.to_json() for s in self.slots],
            **({"imported": True} if self.imported else {}),
        }

    def to_bytes(self) -> bytes:
        doc = {**self.body(), "mac": b64(self.mac)}
        return (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode()

    def with_changes(self, **changes: Any) -> Vault:
        return replace(self, **changes)


def _reject_constant(name: str) -> Any:
    raise VaultFormatError(f"{name} is not a valid number")


def _parse_int(text: str) -> int:
    if len(text.lstrip("-")) > _MAX_INT_DIGITS:
        raise VaultFormatError(f"an integer of {len(text)} digits is out of range")
    return int(text)


def _reject_float(text: str) -> Any:
    raise VaultFormatError(f"{text[:20]!r}: numbers in a vault file are integers")


def _check_text(value: Any, where: str = "vault file") -> None:
    """Every string in the file must be Unicode text (a lone surrogate cannot be printed or re-encoded)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise VaultFormatError(f"{where}: a string holds an invalid character (a lone surrogate)") from None
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_text(key, where)
            _check_text(item, where)
    elif isinstance(value, list):
        for item in value:
            _check_text(item, where)


def check_label(label: str) -> str:
    """A slot label as enrolment accepts it: at most MAX_LABEL_LEN characters of printable text."""
    if len(label) > MAX_LABEL_LEN:
        raise UsageError(f"--label is {len(label)} characters; at most {MAX_LABEL_LEN} are kept")
    try:
        label.encode("utf-8")
    except UnicodeEncodeError:
        raise UsageError("--label is not valid text in this locale (undecodable bytes)") from None
    if _CONTROL.search(label):
        raise UsageError("--label must not contain control characters")
    return label


def check_format(fmt: Any) -> None:
    """Refuse any format but ours: a well-formed newer version asks for an upgrade, anything else is malformed."""
    if fmt == FORMAT:
        return
    match = _FORMAT.fullmatch(fmt) if isinstance(fmt, str) else None
    if match and int(match["n"]) > 1:
        raise VaultFormatError(f"vault format {fmt!r} is newer than this tokenagent understands; upgrade")
    if isinstance(fmt, str) and fmt.startswith("tokenagent-vault"):
        raise VaultFormatError(f"vault format {fmt[:40]!r} is malformed (expected {FORMAT!r}); the file is damaged")
    raise VaultFormatError("not a tokenagent vault (missing or wrong 'format')")


def parse(data: bytes, name: str) -> Vault:
    """Parse and validate a vault file's bytes; raise ``VaultFormatError`` naming the problem."""
    if len(data) > MAX_FILE_BYTES:
        raise VaultFormatError(f"vault file is larger than {MAX_FILE_BYTES} bytes")
    try:
        doc = json.loads(data.decode("utf-8"), object_pairs_hook=no_duplicates(), parse_constant=_reject_constant,
                         parse_int=_parse_int, parse_float=_reject_float)
    except UnicodeDecodeError:
        raise VaultFormatError("vault file is not UTF-8 text") from None
    except json.JSONDecodeError as err:
        raise VaultFormatError(f"vault file is not valid JSON ({err.msg} at line {err.lineno})") from None
    except RecursionError:
        raise VaultFormatError("vault file nests too deeply") from None
    if not isinstance(doc, dict):
        raise VaultFormatError("vault file must hold a JSON object")
    check_format(doc.get("format"))
    try:
        _check_text(doc)
    except RecursionError:
        raise VaultFormatError("vault file nests too deeply") from None
    if set(doc) - _OPTIONAL_TOP_KEYS != _TOP_KEYS:
        extra, missing = set(doc) - _TOP_KEYS - _OPTIONAL_TOP_KEYS, _TOP_KEYS - set(doc)
        raise VaultFormatError(f"vault fields wrong (unknown: {sorted(extra)}, missing: {sorted(missing)})")
    vault_id = unb64(doc["vault_id"], "vault_id", VAULT_ID_LEN)
    secret_len = _int(doc["secret_len"], "secret_len", 1, MAX_SECRET_LEN)
    if not isinstance(doc["allow_raw"], bool):
        raise VaultFormatError("allow_raw must be true or false")
    if doc.get("imported", True) is not True:
        raise VaultFormatError("imported must be true when present (it is left out otherwise)")
    fp = doc["fingerprint"]
    if not isinstance(fp, str) or not _FINGERPRINT.fullmatch(fp):
        raise VaultFormatError("fingerprint must be 8 groups of 4 hex digits")
    raw_slots = doc["slots"]
    if not isinstance(raw_slots, list) or not 1 <= len(raw_slots) <= MAX_SLOTS:
        raise VaultFormatError(f"slots must be a list of 1 to {MAX_SLOTS} slots")
    slots = tuple(_parse_slot(s, secret_len) for s in raw_slots)
    ids = [s.id for s in slots]
    if len(set(ids)) != len(ids):
        raise VaultFormatError("two slots have the same id")
    _check_work(slots)
    return Vault(
        name=name,
        vault_id=vault_id,
        seq=_int(doc["seq"], "seq"),
        created=_int(doc["created"], "created"),
        secret_len=secret_len,
        allow_raw=doc["allow_raw"],
        fingerprint=fp,
        slots=slots,
        mac=unb64(doc["mac"], "mac", MAC_LEN),
        imported="imported" in doc,
    )


def _parse_slot(raw: Any, secret_len: int) -> Slot:
    if not isinstance(raw, dict):
        raise VaultFormatError("each slot must be an object")
    required = _SLOT_KEYS - {"shares"}
    if not required <= set(raw) <= _SLOT_KEYS:
        unknown, missing = sorted(set(raw) - _SLOT_KEYS), sorted(required - set(raw))
        raise VaultFormatError(f"slot fields wrong (unknown: {unknown}, missing: {missing})")
    slot_id = raw["id"]
    if not isinstance(slot_id, str) or not _SLOT_ID.fullmatch(slot_id):
        raise VaultFormatError("slot id must be a decimal number as a string")
    what = f"slot {slot_id}"
    label = raw["label"]
    if not isinstance(label, str) or len(label) > MAX_LABEL_LEN:
        raise VaultFormatError(f"{what}: label must be a string of at most {MAX_LABEL_LEN} characters")
    last_drill = raw["last_drill"]
    if last_drill is not None:
        last_drill = _int(last_drill, f"{what}: last_drill")
    descriptors = raw["factors"]
    if not isinstance(descriptors, list) or not 1 <= len(descriptors) <= MAX_FACTORS:
        raise VaultFormatError(f"{what}: factors must be a list of 1 to {MAX_FACTORS} factors")
    factors = tuple(factor_from_descriptor(d) if isinstance(d, dict) else _bad_factor(what) for d in descriptors)
    policy = Policy.from_json(raw["policy"], len(factors))
    shares: tuple[SealedShare, ...] = ()
    if policy.k is not None:
        raw_shares = raw.get("shares")
        if not isinstance(raw_shares, list) or len(raw_shares) != len(factors):
            raise VaultFormatError(f"{what}: a threshold slot needs one sealed share per factor")
        shares = tuple(_parse_share(s, what) for s in raw_shares)
    elif "shares" in raw:
        raise VaultFormatError(f"{what}: only threshold slots have shares")
    return Slot(
        id=slot_id,
        label=label,
        created=_int(raw["created"], f"{what}: created"),
        last_drill=last_drill,
        policy=policy,
        factors=factors,
        salt=unb64(raw["salt"], f"{what}: salt", SALT_LEN),
        nonce=unb64(raw["nonce"], f"{what}: nonce", NONCE_LEN),
        wrapped=unb64(raw["wrapped"], f"{what}: wrapped", secret_len + TAG_LEN),
        shares=shares,
    )


def _check_work(slots: tuple[Slot, ...]) -> None:
    """The memory-hard work the whole file can demand at one unlock, bounded before any is done."""
    total = sum(f.kdf_work() for s in slots for f in s.factors)
    limit = kdf_limits().total_kib_passes
    if total > limit:
        raise VaultFormatError(f"the password KDFs of this file would need {total // 1048576} GiB-passes in all,"
                               f" over this machine's limit of {limit // 1048576} (raise {ENV_TOTAL} if the vault"
                               " is yours and meant to be this costly)")


def _bad_factor(what: str) -> Factor:
    raise VaultFormatError(f"{what}: each factor must be an object")


def _parse_share(raw: Any, what: str) -> SealedShare:
    if not isinstance(raw, dict) or set(raw) != {"nonce", "sealed"}:
        raise VaultFormatError(f"{what}: a share must be {{'nonce', 'sealed'}}")
    return SealedShare(
        nonce=unb64(raw["nonce"], f"{what}: share nonce", NONCE_LEN),
        sealed=unb64(raw["sealed"], f"{what}: share", 32 + TAG_LEN),
    )
