"""Credential keys of the virtual FIDO2 authenticator: what a credential id holds and how it is opened.

Theory of operation. A credential id is the credential itself, sealed under the device key
(AES-256-GCM, associated data the rp id hash, so an id opens only for its rp), as YubiKeys
do for non-resident credentials. Format 2 (made now): ``02 || nonce(12) || seal(seed(32) ||
credProtect(1) || algorithm(1))``, 63 bytes, within the 128 bytes a YubiKey 5 states as
maxCredentialIdLength. The private key and the two hmac-secret CredRandom values (with and
without user verification) are derived from the seed with HKDF, each under its own label.
Format 1 (made by earlier versions, still opened): the sealed CBOR map of the private scalar
and both CredRandom values, ES256 only.

Algorithms: ES256 (ECDSA P-256 with SHA-256, COSE -7) and EdDSA (Ed25519, COSE -8).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from fido2 import cbor

ES256 = -7
EDDSA = -8
ALGORITHMS = (ES256, EDDSA)  # in the order getInfo lists them
_ALG_CODES = {ES256: 1, EDDSA: 2}
_P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
FORMAT_SEED = 2
FORMAT_LEGACY = 1
LABEL = b"tokenagent/v1/virtual-fido2/"


def _derive(seed: bytes, purpose: str, length: int = 32) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=LABEL + purpose.encode()).derive(seed)


@dataclass(frozen=True)
class CredentialKey:
    alg: int
    protect: int  # credProtect level 1-3
    private: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
    cred_random: bytes  # hmac-secret CredRandom without UV
    cred_random_uv: bytes  # with UV (CTAP 2.1 §12.5: two values)

    @property
    def large_blob_key(self) -> bytes:
        """The largeBlobKey (CTAP 2.1 §12.3) of a credential made with that extension."""
        return _derive(self.cred_random, "large-blob-key")

    def sign(self, message: bytes) -> bytes:
        if isinstance(self.private, ed25519.Ed25519PrivateKey):
            return self.private.sign(message)
        return self.private.sign(message, ec.ECDSA(hashes.SHA256()))

    def cose_public_key(self) -> dict[int, Any]:
        public = self.private.public_key()
        if isinstance(public, ed25519.Ed25519PublicKey):
            from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

            return {1: 1, 3: EDDSA, -1: 6, -2: public.public_bytes(Encoding.Raw, PublicFormat.Raw)}
        numbers = public.public_numbers()
        return {1: 2, 3: ES256, -1: 1, -2: numbers.x.to_bytes(32, "big"), -3: numbers.y.to_bytes(32, "big")}


def _from_seed(seed: bytes, protect: int, alg: int) -> CredentialKey:
    private: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
    if alg == EDDSA:
        private = ed25519.Ed25519PrivateKey.from_private_bytes(_derive(seed, "ed25519"))
    else:  # 48 bytes reduced mod n-1, plus 1: a scalar in [1, n-1] without noticeable bias (FIPS 186-5 A.2.1)
        scalar = int.from_bytes(_derive(seed, "p256", 48), "big") % (_P256_ORDER - 1) + 1
        private = ec.derive_private_key(scalar, ec.SECP256R1())
    return CredentialKey(alg, protect, private, _derive(seed, "cred-random"), _derive(seed, "cred-random-uv"))


def new_credential(device_key: bytes, rp_hash: bytes, alg: int, protect: int) -> tuple[bytes, CredentialKey]:
    """A new credential: its id (format 2) and its key."""
    seed, nonce = secrets.token_bytes(32), secrets.token_bytes(12)
    body = seed + bytes([protect, _ALG_CODES[alg]])
    cred_id = bytes([FORMAT_SEED]) + nonce + AESGCM(device_key).encrypt(nonce, body, rp_hash)
    return cred_id, _from_seed(seed, protect, alg)


def open_credential(device_key: bytes, rp_hash: bytes, cred_id: Any) -> CredentialKey | None:
    """The key in ``cred_id`` if it is one of this device's credentials for this rp, else None."""
    if not isinstance(cred_id, bytes) or len(cred_id) < 30 or cred_id[0] not in (FORMAT_SEED, FORMAT_LEGACY):
        return None
    try:
        body = AESGCM(device_key).decrypt(cred_id[1:13], cred_id[13:], rp_hash)
    except Exception:  # noqa: BLE001 - not ours, or for another rp
        return None
    if cred_id[0] == FORMAT_SEED:
        algs = {code: alg for alg, code in _ALG_CODES.items()}
        if len(body) != 34 or body[33] not in algs:
            return None
        return _from_seed(body[:32], body[32], algs[body[33]])
    legacy = cbor.decode(body)
    if not isinstance(legacy, dict):
        return None
    private = ec.derive_private_key(int.from_bytes(legacy["d"], "big"), ec.SECP256R1())
    return CredentialKey(ES256, int(legacy["protect"]), private, legacy["cr"], legacy["cru"])
