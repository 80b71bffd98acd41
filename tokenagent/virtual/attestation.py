"""PIV attestation of the virtual token: a per-token attestation CA, the attestation key of
slot F9, and the certificates ATTEST (INS F9) answers.

Theory of operation. A YubiKey leaves the factory with an attestation key in slot F9 and its
certificate in object 5FFF01, issued by Yubico's PIV root CA. Asked to attest a key it
generated, it answers an X.509 certificate of that key's public key, signed by the F9 key,
whose issuer is the F9 certificate's subject and whose validity is the F9 certificate's, with
Yubico's extensions: firmware version (1.3.6.1.4.1.41482.3.3, three bytes), serial
(.3.7, a DER INTEGER), PIN and touch policy (.3.8, two bytes), form factor (.3.9, one byte).
Verifiers (Yubico's attestation guide, ykman's `piv keys attest` then a chain check) walk
root -> F9 certificate -> attestation certificate and read those extensions.

The virtual token cannot have Yubico's root, so each token makes its own root CA ("tokenagent
virtual PIV attestation root CA, serial N") on first use, keeps it in its state file
(``piv.attestation.root_cert``, PEM), and issues its F9 certificate under it (and the
certificate of the Security Domain's SCP11b key, tokenagent.virtual.scp). A verifier that
trusts that root verifies this token's attestations as it would a YubiKey's under Yubico's.
"""

from __future__ import annotations

import base64
import datetime
import os
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

OID_FIRMWARE = x509.ObjectIdentifier("1.3.6.1.4.1.41482.3.3")
OID_SERIAL = x509.ObjectIdentifier("1.3.6.1.4.1.41482.3.7")
OID_POLICY = x509.ObjectIdentifier("1.3.6.1.4.1.41482.3.8")
OID_FORM_FACTOR = x509.ObjectIdentifier("1.3.6.1.4.1.41482.3.9")
NOT_BEFORE = datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)
NOT_AFTER = datetime.datetime(9999, 12, 31, 23, 59, 59, tzinfo=datetime.UTC)  # RFC 5280: no expiry


def _name(text: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])


def _der(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _ca_certificate(subject: x509.Name, issuer: x509.Name, public: Any, signer: ec.EllipticCurvePrivateKey,
                    path_length: int) -> x509.Certificate:
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(public)
            .serial_number(int.from_bytes(os.urandom(16), "big") >> 1)
            .not_valid_before(NOT_BEFORE).not_valid_after(NOT_AFTER)
            .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
            .sign(signer, hashes.SHA256()))


def make_attestation(serial: int) -> dict[str, str]:
    """A root CA and an F9 attestation key and certificate for the token ``serial`` (state: base64 DER)."""
    root_key = ec.generate_private_key(ec.SECP256R1())
    root_name = _name(f"tokenagent virtual PIV attestation root CA, serial {serial}")
    root = _ca_certificate(root_name, root_name, root_key.public_key(), root_key, 1)
    f9_key = ec.generate_private_key(ec.SECP256R1())
    f9 = _ca_certificate(_name(f"tokenagent virtual PIV attestation, serial {serial}"), root_name,
                         f9_key.public_key(), root_key, 0)
    return {"root_cert": root.public_bytes(serialization.Encoding.PEM).decode(),
            "root_key": base64.b64encode(_der(root_key)).decode(),
            "key": base64.b64encode(_der(f9_key)).decode(),
            "cert": base64.b64encode(f9.public_bytes(serialization.Encoding.DER)).decode()}


def attest(attestation: dict[str, str], slot: int, public: Any, version: tuple[int, int, int], serial: int,
           pin_policy: int, touch_policy: int, form_factor: int) -> bytes:
    """The DER attestation certificate of the key in ``slot`` (its public key ``public``)."""
    f9 = x509.load_der_x509_certificate(base64.b64decode(attestation["cert"]))
    signer = serialization.load_der_private_key(base64.b64decode(attestation["key"]), None)
    assert isinstance(signer, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey))  # as PIV stores it
    serial_der = x509.UnrecognizedExtension(OID_SERIAL, _der_integer(serial))
    builder = (x509.CertificateBuilder().subject_name(_name(f"YubiKey PIV Attestation {slot:02x}"))
               .issuer_name(f9.subject).public_key(public)
               .serial_number(int.from_bytes(os.urandom(16), "big") >> 1)
               .not_valid_before(f9.not_valid_before_utc).not_valid_after(f9.not_valid_after_utc)
               .add_extension(x509.UnrecognizedExtension(OID_FIRMWARE, bytes(version)), critical=False)
               .add_extension(serial_der, critical=False)
               .add_extension(x509.UnrecognizedExtension(OID_POLICY, bytes([pin_policy, touch_policy])),
                              critical=False)
               .add_extension(x509.UnrecognizedExtension(OID_FORM_FACTOR, bytes([form_factor])), critical=False))
    return builder.sign(signer, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def root_signer(attestation: dict[str, str]) -> tuple[ec.EllipticCurvePrivateKey, x509.Name]:
    """The root CA's key and name (it also issues the Security Domain's SCP11b certificate)."""
    key = serialization.load_der_private_key(base64.b64decode(attestation["root_key"]), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)  # made by make_attestation
    return key, x509.load_pem_x509_certificate(attestation["root_cert"].encode()).subject


def _der_integer(value: int) -> bytes:
    body = value.to_bytes(value.bit_length() // 8 + 1, "big")
    return bytes([0x02, len(body)]) + body
