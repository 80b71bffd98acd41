"""PIN/UV auth protocols 1 and 2 of the virtual FIDO2 authenticator (CTAP 2.1 §6.5.6, §6.5.7), and the
COSE form of its key agreement keys."""

from __future__ import annotations

import hashlib
import hmac
import os
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .ctap_status import CtapFailure, Err


class PinProtocol:
    version = 1

    def kdf(self, z: bytes) -> bytes:
        return hashlib.sha256(z).digest()

    def encrypt(self, key: bytes, plaintext: bytes) -> bytes:
        enc = Cipher(algorithms.AES(key), modes.CBC(bytes(16))).encryptor()
        return enc.update(plaintext) + enc.finalize()

    def decrypt(self, key: bytes, ciphertext: bytes) -> bytes:
        if len(ciphertext) % 16:
            raise CtapFailure(Err.INVALID_PARAMETER)
        dec = Cipher(algorithms.AES(key), modes.CBC(bytes(16))).decryptor()
        return dec.update(ciphertext) + dec.finalize()

    def authenticate(self, key: bytes, message: bytes) -> bytes:
        return hmac.digest(key, message, "sha256")[:16]

    def verify(self, key: bytes, message: bytes, signature: bytes) -> bool:
        return hmac.compare_digest(self.authenticate(key, message), signature)


class PinProtocolTwo(PinProtocol):
    version = 2

    def kdf(self, z: bytes) -> bytes:
        def part(info: bytes) -> bytes:
            return HKDF(algorithm=hashes.SHA256(), length=32, salt=bytes(32), info=info).derive(z)

        return part(b"CTAP2 HMAC key") + part(b"CTAP2 AES key")

    def encrypt(self, key: bytes, plaintext: bytes) -> bytes:
        iv = os.urandom(16)
        enc = Cipher(algorithms.AES(key[32:]), modes.CBC(iv)).encryptor()
        return iv + enc.update(plaintext) + enc.finalize()

    def decrypt(self, key: bytes, ciphertext: bytes) -> bytes:
        if len(ciphertext) < 32 or len(ciphertext) % 16:
            raise CtapFailure(Err.INVALID_PARAMETER)
        dec = Cipher(algorithms.AES(key[32:]), modes.CBC(ciphertext[:16])).decryptor()
        return dec.update(ciphertext[16:]) + dec.finalize()

    def authenticate(self, key: bytes, message: bytes) -> bytes:
        return hmac.digest(key[:32], message, "sha256")


PROTOCOLS: dict[int, PinProtocol] = {1: PinProtocol(), 2: PinProtocolTwo()}


def cose_public_key(key: ec.EllipticCurvePublicKey, alg: int) -> dict[int, Any]:
    numbers = key.public_numbers()
    return {1: 2, 3: alg, -1: 1, -2: numbers.x.to_bytes(32, "big"), -3: numbers.y.to_bytes(32, "big")}


def public_key_from_cose(cose: Any) -> ec.EllipticCurvePublicKey:
    try:
        if cose[1] != 2 or cose[-1] != 1:
            raise CtapFailure(Err.INVALID_PARAMETER)
        x, y = int.from_bytes(cose[-2], "big"), int.from_bytes(cose[-3], "big")
        return ec.EllipticCurvePublicNumbers(x, y, ec.SECP256R1()).public_key()
    except (KeyError, TypeError, ValueError):
        raise CtapFailure(Err.INVALID_PARAMETER) from None
