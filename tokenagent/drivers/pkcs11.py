"""The PKCS#11 factor: ECDH or RSA-OAEP on any PKCS#11 token (smart cards through OpenSC, HSMs, SoftHSM2).

Theory of operation. The token's key is named by an RFC 7512 URI
(``pkcs11:token=LABEL;object=LABEL`` or ``id=%01``; ``?module-path=/path/to/module.so``).
Enrolment needs only the key's public half, read from the token or, **offline**, from a
certificate or public-key file (``--piv-cert FILE``).

* EC keys (P-256, P-384): a fresh ephemeral key pair is made, the shared secret Z =
  ECDH(ephemeral, token key) is computed in software, the ephemeral private key is thrown
  away and its public point kept in the vault. Unlock asks the token for the same Z with
  ``CKM_ECDH1_DERIVE``.
* RSA keys (2048-4096 bits): 32 random bytes Z are encrypted to the token key with OAEP
  (SHA-1 and MGF1-SHA-1: the one variant SoftHSM2 and most tokens decrypt; OAEP's security
  does not rest on SHA-1's collision resistance) and the ciphertext kept. Unlock asks the
  token to decrypt it with ``CKM_RSA_PKCS_OAEP``.

Either way the token's private key never leaves it, and the factor's secret is
HKDF-SHA256(Z, info "tokenagent/v1/pkcs11"). The vault keeps the SHA-256 of the key's
SubjectPublicKeyInfo: a token holding another key under the same name is "not mine".

PIN rules: the token's flags are read first; a locked PIN is refused, the final try is
spent only with ``--force``, a wrong PIN is reported and not sent again.
"""

from __future__ import annotations

import base64
import secrets
import urllib.parse
from collections.abc import Mapping
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from ..errors import (
    NotMine,
    NotSupported,
    PinBlocked,
    PinInvalid,
    TokenAbsent,
    TokenAgentError,
    TokenError,
    UsageError,
    VaultFormatError,
)
from ..factors.base import Factor, FactorContext, JSONValue, SecretRequest, register
from ..factors.params import expect_b64, expect_keys
from ..vault.crypto import hkdf
from .keys import load_public_key, spki_sha256
from .pinrules import check_retries

CURVES: dict[str, ec.EllipticCurve] = {"secp256r1": ec.SECP256R1(), "secp384r1": ec.SECP384R1()}
RSA_SIZES = {"rsa2048": 2048, "rsa3072": 3072, "rsa4096": 4096}
CHALLENGE_LEN = {"secp256r1": 65, "secp384r1": 97, "rsa2048": 256, "rsa3072": 384, "rsa4096": 512}
OAEP = padding.OAEP(padding.MGF1(hashes.SHA1()), hashes.SHA1(), None)  # see the module doc
RSA_SECRET_LEN = 32
INFO = b"tokenagent/v1/pkcs11"


class Pkcs11Uri:
    """The parts of an RFC 7512 URI tokenagent uses; ``pin-value`` is refused (no secrets in vaults)."""

    def __init__(self, uri: str) -> None:
        if not uri.startswith("pkcs11:"):
            raise UsageError(f"{uri!r} is not a PKCS#11 URI (pkcs11:token=...;object=...)")
        path, _, query = uri[len("pkcs11:"):].partition("?")
        self.path = _pairs(path, ";")
        self.query = _pairs(query, "&")
        if "pin-value" in self.query or "pin-value" in self.path:
            raise UsageError("the PKCS#11 URI must not hold the PIN (pin-value): it would be stored in the vault")
        self.token = self.path.get("token")
        self.object = self.path.get("object")
        self.id = self.path.get("id")
        self.module = self.query.get("module-path")
        if not self.token or not (self.object or self.id):
            raise UsageError("the PKCS#11 URI needs token=LABEL and object=LABEL or id=%XX")
        self.text = uri


def _pairs(text: str, sep: str) -> dict[str, str]:
    out = {}
    for part in filter(None, text.split(sep)):
        key, _, value = part.partition("=")
        out[key] = urllib.parse.unquote(value)
    return out


def _point(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)


def _secret(z: bytes) -> bytearray:
    return hkdf(z, None, INFO, 32)


def _algorithm(public: Any, where: str) -> str:
    if isinstance(public, ec.EllipticCurvePublicKey) and public.curve.name in CURVES:
        return public.curve.name
    if isinstance(public, rsa.RSAPublicKey) and f"rsa{public.key_size}" in RSA_SIZES:
        return f"rsa{public.key_size}"
    raise NotSupported(f"{where}: only EC keys on P-256/P-384 and RSA keys of 2048, 3072 or 4096 bits are supported")


def _library(uri: Pkcs11Uri, ctx: FactorContext) -> Any:
    import pkcs11

    module = uri.module or ctx.options.get("pkcs11_module")
    if not module:
        raise UsageError("name the PKCS#11 module: add ?module-path=/path/to/module.so to the URI")
    try:
        return pkcs11.lib(module)
    except Exception as err:  # noqa: BLE001 - missing file, not a PKCS#11 module
        raise UsageError(f"cannot load the PKCS#11 module {module}: {err}") from None


def _token(uri: Pkcs11Uri, ctx: FactorContext) -> Any:
    import pkcs11

    try:
        return _library(uri, ctx).get_token(token_label=uri.token)
    except (pkcs11.NoSuchToken, pkcs11.exceptions.TokenNotPresent):
        raise TokenAbsent(f"PKCS#11 token {uri.token!r} is not present") from None


def _find(session: Any, uri: Pkcs11Uri, object_class: Any) -> Any:
    import pkcs11

    query: dict[str, Any] = {"object_class": object_class}
    if uri.object:
        query["label"] = uri.object
    if uri.id:
        query["id"] = uri.id.encode("latin-1")
    try:
        return session.get_key(**query)
    except pkcs11.NoSuchKey:
        raise NotMine(f"token {uri.token!r} has no key {uri.object or uri.id!r}") from None
    except pkcs11.MultipleObjectsReturned:
        raise UsageError(f"token {uri.token!r} has several keys matching {uri.text}: name one by id") from None


@register
class Pkcs11Factor(Factor):
    type = "pkcs11"
    is_token = True

    def __init__(self, uri: str, algorithm: str, challenge: bytes, key_hash: str) -> None:
        self.uri, self.algorithm, self.challenge, self.key_hash = uri, algorithm, challenge, key_hash

    @classmethod
    def from_params(cls, params: Mapping[str, JSONValue]) -> Factor:
        expect_keys(params, {"uri", "algorithm", "challenge", "key"}, "pkcs11")
        uri, algorithm, key_hash = params["uri"], params["algorithm"], params["key"]
        if not isinstance(uri, str) or algorithm not in CHALLENGE_LEN:
            raise VaultFormatError("pkcs11: uri and algorithm (secp256r1, secp384r1, rsa2048, rsa3072, rsa4096)"
                                   " are needed")
        if not isinstance(key_hash, str) or len(key_hash) != 64 or key_hash.strip("0123456789abcdef"):
            raise VaultFormatError("pkcs11: key must be the SHA-256 (hex) of the token's public key")
        challenge = expect_b64(params, "challenge", CHALLENGE_LEN[str(algorithm)], "pkcs11")
        try:
            Pkcs11Uri(uri)
            if algorithm in CURVES:
                ec.EllipticCurvePublicKey.from_encoded_point(CURVES[str(algorithm)], challenge)
        except (UsageError, ValueError):
            raise VaultFormatError("pkcs11: bad URI or ephemeral key") from None
        return cls(uri, str(algorithm), challenge, key_hash)

    def params(self) -> dict[str, JSONValue]:
        return {"uri": self.uri, "algorithm": self.algorithm, "challenge": base64.b64encode(self.challenge).decode(),
                "key": self.key_hash}

    def needs_pin(self) -> bool:
        return True  # C_Login

    def describe(self) -> str:
        how = f"ECDH {self.algorithm}" if self.algorithm in CURVES else f"{self.algorithm.upper()} OAEP"
        return f"PKCS#11 key ({self.uri.partition('?')[0]}, {how})"

    @classmethod
    def enroll(cls, ctx: FactorContext, options: Mapping[str, Any]) -> tuple[Factor, bytearray]:
        uri = Pkcs11Uri(str(options.get("uri") or ""))
        if options.get("cert"):
            public = load_public_key(str(options["cert"]))  # offline: the token need not be here
            where = str(options["cert"])
        else:
            public = cls._token_public_key(uri, ctx)
            where = f"the key {uri.object or uri.id!r}"
        algorithm = _algorithm(public, where)
        if algorithm in CURVES:
            ephemeral = ec.generate_private_key(CURVES[algorithm])
            z = ephemeral.exchange(ec.ECDH(), public)
            challenge = _point(ephemeral.public_key())
        else:
            z = secrets.token_bytes(RSA_SECRET_LEN)
            challenge = public.encrypt(z, OAEP)
        return cls(uri.text, algorithm, challenge, spki_sha256(public)), _secret(z)

    @staticmethod
    def _token_public_key(uri: Pkcs11Uri, ctx: FactorContext) -> Any:
        import pkcs11
        from pkcs11 import ObjectClass

        token = _token(uri, ctx)
        try:
            with token.open() as session:
                return _public_from_object(_find(session, uri, ObjectClass.PUBLIC_KEY), uri)
        except pkcs11.PKCS11Error as err:
            raise TokenError(f"token {uri.token!r}: {type(err).__name__}") from None

    def unlock(self, ctx: FactorContext) -> bytearray:
        import pkcs11
        from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass, TokenFlag

        uri = Pkcs11Uri(self.uri)
        token = _token(uri, ctx)
        flags = TokenFlag(token.flags)
        name = f"PKCS#11 token {uri.token!r}"
        # PKCS#11 reports no count, only flags: locked = 0 tries, final try = 1, otherwise more
        retries = 0 if TokenFlag.USER_PIN_LOCKED in flags else 1 if TokenFlag.USER_PIN_FINAL_TRY in flags else 2
        check_retries(retries, ctx, name, "PIN", "unblock it with its SO PIN (tokenagent never does)")
        try:
            with token.open() as session:  # the key is checked before the PIN is asked
                if spki_sha256(_public_from_object(_find(session, uri, ObjectClass.PUBLIC_KEY), uri)) != self.key_hash:
                    raise NotMine(f"{name} holds another key under {uri.object or uri.id!r} than the one enrolled")
        except pkcs11.PKCS11Error as err:
            raise TokenError(f"{name} refused: {type(err).__name__}") from None
        pin = ctx.ui.ask_secret(SecretRequest("pin", f"PIN for {name}"))
        try:
            with token.open(user_pin=pin.decode("utf-8")) as session:
                private = _find(session, uri, ObjectClass.PRIVATE_KEY)
                if self.algorithm in CURVES:
                    size = (CURVES[self.algorithm].key_size + 7) // 8
                    derived = private.derive_key(
                        KeyType.GENERIC_SECRET, 8 * size,
                        mechanism_param=(pkcs11.KDF.NULL, None, self.challenge),
                        template={Attribute.SENSITIVE: False, Attribute.EXTRACTABLE: True, Attribute.TOKEN: False})
                    z = bytes(derived[Attribute.VALUE])
                else:
                    z = bytes(private.decrypt(self.challenge, mechanism=Mechanism.RSA_PKCS_OAEP,
                                              mechanism_param=(Mechanism.SHA_1, pkcs11.MGF.SHA1, None)))
        except pkcs11.PinIncorrect:
            raise PinInvalid(f"wrong PIN for {name}; not retried") from None
        except pkcs11.PinLocked:
            raise PinBlocked(f"the PIN of {name} is locked") from None
        except TokenAgentError:
            raise
        except pkcs11.PKCS11Error as err:
            raise TokenError(f"{name} refused: {type(err).__name__}") from None
        finally:
            pin[:] = bytes(len(pin))
        return _secret(z)


def _public_from_object(obj: Any, uri: Pkcs11Uri) -> Any:
    """A PKCS#11 public-key object as a ``cryptography`` public key."""
    from pkcs11 import Attribute, KeyType

    where = f"the key {uri.object or uri.id!r}"
    if obj.key_type == KeyType.RSA:
        n = int.from_bytes(bytes(obj[Attribute.MODULUS]), "big")
        e = int.from_bytes(bytes(obj[Attribute.PUBLIC_EXPONENT]), "big")
        return rsa.RSAPublicNumbers(e, n).public_key()
    if obj.key_type != KeyType.EC:
        raise NotSupported(f"{where} is neither an EC nor an RSA key")
    point, params = bytes(obj[Attribute.EC_POINT]), bytes(obj[Attribute.EC_PARAMS])
    if point[0] == 0x04 and point[1] == len(point) - 2:  # DER OCTET STRING around the point
        point = point[2:]
    for curve in CURVES.values():
        if params == _curve_oid_der(curve):
            return ec.EllipticCurvePublicKey.from_encoded_point(curve, point)
    raise NotSupported(f"{where} is not on P-256 or P-384")


def _curve_oid_der(curve: ec.EllipticCurve) -> bytes:
    from pkcs11.util.ec import encode_named_curve_parameters

    return bytes(encode_named_curve_parameters(curve.name))
