"""The vault's cryptography: canonical encoding, HKDF labels, AEAD wrap, header MAC, Shamir.

Everything here is pure (bytes in, bytes out) and is pinned by the known-answer vectors
in tests/vectors/. docs/spec/vault.md is the authority; the labels below are its
``tokenagent/v1/<purpose>`` strings.

Why these choices: HKDF-SHA256 combines factor secrets of any length and type into one
key without weakening any of them; AES-256-GCM with a key used exactly once (each
wrap draws a fresh salt, so a fresh KEK) makes the random 96-bit nonce safe; the
associated data binds every public parameter, so editing a KDF cost or a flag on disk
makes the unwrap fail instead of silently weakening the slot.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import UsageError, WrongSecret

LABEL_KEK = b"tokenagent/v1/kek"
LABEL_SHARE = b"tokenagent/v1/share"
LABEL_WRAP_AD = b"tokenagent/v1/wrap"
LABEL_HEADER_MAC = b"tokenagent/v1/header-mac"
LABEL_FINGERPRINT = b"tokenagent/v1/fingerprint"
LABEL_CONTEXT = b"tokenagent/v1/context"

KEY_LEN = 32
NONCE_LEN = 12
SALT_LEN = 32
TAG_LEN = 16


def canonical(value: Any) -> bytes:
    """The one byte encoding of a JSON value that everything is bound to (sorted keys, no spaces)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def hkdf(ikm: bytes | bytearray, salt: bytes | None, info: bytes, length: int = KEY_LEN) -> bytearray:
    """HKDF-SHA256 (RFC 5869) with the standard library's HMAC: no immutable copy of ``ikm`` is made,
    and it costs a few microseconds (the agent derives one per ``get``)."""
    if not 0 < length <= 255 * 32:
        raise ValueError("HKDF-SHA256 gives 1 to 8160 bytes")
    prk = hmac.digest(salt or bytes(32), ikm, "sha256")
    out, block, counter = bytearray(), b"", 1
    while len(out) < length:
        block = hmac.digest(prk, block + info + bytes([counter]), "sha256")
        out += block
        counter += 1
    del out[length:]
    return out


def combine_secrets(secrets_: Sequence[bytes | bytearray]) -> bytearray:
    """Length-prefixed concatenation, so (a, bc) and (ab, c) never give the same key."""
    out = bytearray()
    for s in secrets_:
        out += len(s).to_bytes(4, "big")
        out += s
    return out


def derive_kek(factor_secrets: Sequence[bytes | bytearray], salt: bytes, bound: bytes) -> bytearray:
    ikm = combine_secrets(factor_secrets)
    try:
        return hkdf(ikm, salt, LABEL_KEK + b"\x00" + bound)
    finally:
        wipe(ikm)


def derive_share_key(secret: bytes | bytearray, salt: bytes, bound: bytes, index: int) -> bytearray:
    return hkdf(secret, salt, LABEL_SHARE + b"\x00" + index.to_bytes(2, "big") + bound)


def seal(key: bytes | bytearray, plaintext: bytes | bytearray, ad: bytes) -> tuple[bytes, bytes]:
    """AES-256-GCM with a random nonce; returns (nonce, ciphertext||tag)."""
    # imported here: the agent loads cryptography only at its first vault read
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    nonce = secrets.token_bytes(NONCE_LEN)
    return nonce, AESGCM(bytes(key)).encrypt(nonce, bytes(plaintext), ad)


def open_sealed(key: bytes | bytearray, nonce: bytes, ciphertext: bytes, ad: bytes) -> bytearray:
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    try:
        return bytearray(AESGCM(bytes(key)).decrypt(nonce, ciphertext, ad))
    except InvalidTag:
        raise WrongSecret("the factors given do not open this slot") from None


def header_mac(masterkey: bytes | bytearray, vault_id: bytes, body: bytes) -> bytes:
    key = hkdf(masterkey, vault_id, LABEL_HEADER_MAC)
    try:
        return hmac.new(bytes(key), body, hashlib.sha256).digest()
    finally:
        wipe(key)


def fingerprint(masterkey: bytes | bytearray) -> str:
    """A short public name for a key: 128 bits of HKDF output as 8 groups of 4 hex digits."""
    digest = hkdf(masterkey, None, LABEL_FINGERPRINT, 16).hex()
    return ":".join(digest[i : i + 4] for i in range(0, 32, 4))


def derive_subkey(masterkey: bytes | bytearray, context: str, length: int = KEY_LEN) -> bytearray:
    """The key a client gets for ``get --context LABEL``: independent per label."""
    if not context:
        raise UsageError("a context label must not be empty (leave --context out for the key itself, where allowed)")
    try:
        label = context.encode("utf-8")
    except UnicodeEncodeError:
        raise UsageError("a context label must be text (it holds bytes that are not valid in this locale)") from None
    return hkdf(masterkey, None, LABEL_CONTEXT + b"\x00" + label, length)


def wipe(buf: bytearray | None) -> None:
    """Overwrite a secret in place (best effort: Python may have made copies elsewhere)."""
    if buf is not None:
        buf[:] = bytes(len(buf))  # in place: same length, same buffer


# --- Shamir's secret sharing over GF(2^8) (the AES field), for k-of-n slots ------------------------
# A k-of-n slot splits a random slot key into n shares, one per factor; share i is sealed under a key
# derived from factor i's secret. Share x-coordinates are 1..n; the secret is the polynomial at 0.

_EXP = [0] * 512
_LOG = [0] * 256


def _init_tables() -> None:
    x = 1
    for i in range(255):
        _EXP[i] = x
        _LOG[x] = i
        x ^= (x << 1) ^ (0x11B if x & 0x80 else 0)  # multiply by the generator 3
        x &= 0xFF
    for i in range(255, 512):
        _EXP[i] = _EXP[i - 255]


_init_tables()


def _mul(a: int, b: int) -> int:
    return 0 if a == 0 or b == 0 else _EXP[_LOG[a] + _LOG[b]]


def _div(a: int, b: int) -> int:
    if b == 0:
        raise ZeroDivisionError
    return 0 if a == 0 else _EXP[_LOG[a] + 255 - _LOG[b]]


def shamir_split(secret: bytes | bytearray, k: int, n: int) -> list[bytearray]:
    """n shares (x = 1..n) of which any k recover ``secret``."""
    if not 1 <= k <= n <= 255:
        raise ValueError("need 1 <= k <= n <= 255")
    shares = [bytearray(len(secret)) for _ in range(n)]
    for pos, byte in enumerate(secret):
        coeffs = [byte, *secrets.token_bytes(k - 1)]
        for i in range(n):
            x, y = i + 1, 0
            for c in reversed(coeffs):
                y = _mul(y, x) ^ c
            shares[i][pos] = y
    return shares


def shamir_combine(points: Mapping[int, bytes | bytearray]) -> bytearray:
    """Lagrange interpolation at 0 from {x: share}; gives garbage (caught by the AEAD) if k is not met."""
    xs = list(points)
    length = len(next(iter(points.values())))
    out = bytearray(length)
    for i, xi in enumerate(xs):
        num, den = 1, 1
        for j, xj in enumerate(xs):
            if i != j:
                num = _mul(num, xj)
                den = _mul(den, xi ^ xj)
        coeff = _div(num, den)
        share = points[xi]
        for pos in range(length):
            out[pos] ^= _mul(share[pos], coeff)
    return out
