"""Identities derived from a vault: SSH keys and age X25519 keys (docs/spec/vault.md, "Identities").

Why derived: every slot of a vault opens the same secret, so a key computed from the secret
and a label is the same whichever token, password or recovery key opened the vault. A lost
token is replaced by enrolling a new slot; the SSH public key in ``authorized_keys`` and the
age recipient in a backup script do not change. Each purpose has its own HKDF label, so an SSH
key says nothing about an age key, a ``get --context`` subkey, or another label's key.

Everything here is pure (bytes in, keys out) and pinned by tests/vectors/identity-*. The
private key objects come from ``cryptography``, which keeps its own immutable copy of the
seed: callers build them per use and drop them (what Python cannot wipe, docs/ssh.md says).
"""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from ..errors import UsageError
from .crypto import hkdf, wipe

LABEL_SSH_ED25519 = b"tokenagent/v1/ssh/ed25519"
LABEL_SSH_ECDSA_P256 = b"tokenagent/v1/ssh/ecdsa-p256"
LABEL_AGE_X25519 = b"tokenagent/v1/age/x25519"

SSH_KEY_TYPES = ("ed25519", "ecdsa-p256")
MAX_LABEL = 256
# the order of P-256's base point; the scalar is HKDF output (48 bytes: bias below 2^-128) mod n-1, plus 1
P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def check_label(label: str) -> str:
    if not isinstance(label, str) or not 0 < len(label) <= MAX_LABEL or any(ord(c) < 0x20 for c in label):
        raise UsageError(f"an identity label is 1 to {MAX_LABEL} printable characters")
    return label


def _info(purpose: bytes, label: str) -> bytes:
    return purpose + b"\x00" + check_label(label).encode("utf-8")


def ssh_seed(secret: bytes | bytearray, label: str, key_type: str = "ed25519") -> bytearray:
    """The private key material of the SSH key ``label``: an Ed25519 seed (32 bytes), or 48 bytes
    that become the P-256 scalar."""
    if key_type == "ed25519":
        return hkdf(secret, None, _info(LABEL_SSH_ED25519, label), 32)
    if key_type == "ecdsa-p256":
        return hkdf(secret, None, _info(LABEL_SSH_ECDSA_P256, label), 48)
    raise UsageError(f"unknown SSH key type {key_type!r} (one of {', '.join(SSH_KEY_TYPES)})")


def ssh_private_key(secret: bytes | bytearray, label: str,
                    key_type: str = "ed25519") -> Ed25519PrivateKey | ec.EllipticCurvePrivateKey:
    seed = ssh_seed(secret, label, key_type)
    try:
        if key_type == "ed25519":
            return Ed25519PrivateKey.from_private_bytes(bytes(seed))
        scalar = int.from_bytes(seed, "big") % (P256_ORDER - 1) + 1
        return ec.derive_private_key(scalar, ec.SECP256R1())
    finally:
        wipe(seed)


def age_x25519_key(secret: bytes | bytearray, label: str) -> X25519PrivateKey:
    """The X25519 key of the age identity ``label`` (the scalar is clamped by X25519 itself)."""
    seed = hkdf(secret, None, _info(LABEL_AGE_X25519, label), 32)
    try:
        return X25519PrivateKey.from_private_bytes(bytes(seed))
    finally:
        wipe(seed)


def age_public(secret: bytes | bytearray, label: str) -> bytes:
    return age_x25519_key(secret, label).public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
