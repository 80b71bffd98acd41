"""Public keys of tokens: read from certificate or key files (offline enrolment), and named by hash."""

from __future__ import annotations

import hashlib
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from .._files import read_small_file
from ..errors import UsageError


def spki_sha256(public: Any) -> str:
    """SHA-256 (hex) of a public key's DER SubjectPublicKeyInfo: how a vault names a token's key."""
    der = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


MAX_KEY_FILE_BYTES = 1 << 20  # a certificate or public key file (even a long chain is far smaller)


def load_public_key(path: str) -> Any:
    """A certificate or public key file (PEM or DER)."""
    data = read_small_file(path, MAX_KEY_FILE_BYTES, "the certificate or public key file")
    loaders = (lambda d: x509.load_pem_x509_certificate(d).public_key(),
               lambda d: x509.load_der_x509_certificate(d).public_key(),
               serialization.load_pem_public_key, serialization.load_der_public_key)
    for loader in loaders:
        try:
            return loader(data)
        except ValueError:
            continue
    raise UsageError(f"{path} is neither a certificate nor a public key (PEM or DER)")
