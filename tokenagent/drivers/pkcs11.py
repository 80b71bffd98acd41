"""The PKCS#11 factor: ECDH on any PKCS#11 token (smart cards through OpenSC, HSMs, SoftHSM2).

Theory of operation. The token's key is named by an RFC 7512 URI
(``pkcs11:token=LABEL;object=LABEL`` or ``id=%01``; ``?module-path=/path/to/module.so``).
Enrolment needs only the key's public half, read from the token or, **offline**, from a
certificate or public-key file (``--piv-cert FILE``): a fresh ephemeral P-256/P-384 key pair
is made, the shared secret Z = ECDH(ephemeral, token key) is computed in software, the
ephemeral private key is thrown away and its public point kept in the vault. Unlock asks the
token to compute the same Z with ``CKM_ECDH1_DERIVE`` (after the PIN), so the token's private
key never leaves it. The factor's secret is HKDF-SHA256(Z, info "tokenagent/v1/pkcs11").

PIN rules: the token's flags are read first; a locked PIN is refused, the final try is
spent only with ``--force``, a wrong PIN is reported and not sent again. RSA keys are not
supported in this version (use an EC key).
"""

from __future__ import annotations

import base64
import hashlib
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ..errors import (
    NotMine,
    NotSupported,
    PinBlocked,
    PinInvalid,
    PinLastTry,
    TokenAgentError,
    TokenError,
    UsageError,
    VaultFormatError,
)
from ..factors.base import Factor, FactorContext, JSONValue, SecretRequest, register
from ..factors.params import expect_keys

CURVES: dict[str, ec.EllipticCurve] = {"secp256r1": ec.SECP256R1(), "secp384r1": ec.SECP384R1()}
INFO = b"tokenagent/v1/pkcs11"
CKF_USER_PIN_FINAL_TRY = 0x00020000
CKF_USER_PIN_LOCKED = 0x00040000


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


def _point(curve: ec.EllipticCurve, key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)


def _secret(z: bytes) -> bytearray:
    return bytearray(HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=INFO).derive(z))


def _load_public(path: str) -> ec.EllipticCurvePublicKey:
    data = Path(path).read_bytes()
    for loader in (lambda d: x509.load_pem_x509_certificate(d).public_key(),
                   lambda d: x509.load_der_x509_certificate(d).public_key(),
                   serialization.load_pem_public_key, serialization.load_der_public_key):
        try:
            key = loader(data)
        except ValueError:
            continue
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise NotSupported(f"{path}: only EC keys (P-256, P-384) are supported in this version")
        return key
    raise UsageError(f"{path} is neither a certificate nor a public key (PEM or DER)")


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
        raise NotMine(f"PKCS#11 token {uri.token!r} is not present") from None


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

    def __init__(self, uri: str, curve: str, ephemeral: bytes, key_hash: str) -> None:
        self.uri, self.curve, self.ephemeral, self.key_hash = uri, curve, ephemeral, key_hash

    @classmethod
    def from_params(cls, params: Mapping[str, JSONValue]) -> Factor:
        expect_keys(params, {"uri", "curve", "ephemeral", "key"}, "pkcs11")
        uri, curve, key_hash = params["uri"], params["curve"], params["key"]
        if not isinstance(uri, str) or curve not in CURVES or not isinstance(key_hash, str) or len(key_hash) != 64:
            raise VaultFormatError("pkcs11: uri, curve (secp256r1/secp384r1) and key (SHA-256 hex) are needed")
        try:
            Pkcs11Uri(uri)
            ephemeral = base64.b64decode(str(params["ephemeral"]), validate=True)
            ec.EllipticCurvePublicKey.from_encoded_point(CURVES[str(curve)], ephemeral)
        except (UsageError, ValueError):
            raise VaultFormatError("pkcs11: bad URI or ephemeral key") from None
        return cls(uri, str(curve), ephemeral, key_hash)

    def params(self) -> dict[str, JSONValue]:
        return {"uri": self.uri, "curve": self.curve, "ephemeral": base64.b64encode(self.ephemeral).decode(),
                "key": self.key_hash}

    def describe(self) -> str:
        return f"PKCS#11 key ({self.uri.partition('?')[0]}, ECDH {self.curve})"

    @classmethod
    def enroll(cls, ctx: FactorContext, options: Mapping[str, Any]) -> tuple[Factor, bytearray]:
        uri = Pkcs11Uri(str(options.get("uri") or ""))
        if options.get("cert"):
            public = _load_public(str(options["cert"]))  # offline: the token need not be here
        else:
            public = cls._token_public_key(uri, ctx)
        curve = public.curve.name
        if curve not in CURVES:
            raise NotSupported(f"curve {curve} is not supported (use P-256 or P-384)")
        ephemeral = ec.generate_private_key(CURVES[curve])
        z = ephemeral.exchange(ec.ECDH(), public)
        factor = cls(uri.text, curve, _point(CURVES[curve], ephemeral.public_key()),
                     hashlib.sha256(_point(CURVES[curve], public)).hexdigest())
        return factor, _secret(z)

    @staticmethod
    def _token_public_key(uri: Pkcs11Uri, ctx: FactorContext) -> ec.EllipticCurvePublicKey:
        import pkcs11
        from pkcs11 import Attribute, ObjectClass

        token = _token(uri, ctx)
        try:
            with token.open() as session:
                point = _find(session, uri, ObjectClass.PUBLIC_KEY)[Attribute.EC_POINT]
                params = _find(session, uri, ObjectClass.PUBLIC_KEY)[Attribute.EC_PARAMS]
        except pkcs11.PKCS11Error as err:
            raise TokenError(f"token {uri.token!r}: {type(err).__name__}") from None
        if point[0] == 0x04 and point[1] == len(point) - 2:  # DER OCTET STRING around the point
            point = point[2:]
        for curve in CURVES.values():
            if params == _curve_oid_der(curve):
                return ec.EllipticCurvePublicKey.from_encoded_point(curve, bytes(point))
        raise NotSupported(f"the key {uri.object or uri.id!r} is not on P-256 or P-384 (or not an EC key)")

    def unlock(self, ctx: FactorContext) -> bytearray:
        import pkcs11
        from pkcs11 import Attribute, KeyType, ObjectClass

        uri = Pkcs11Uri(self.uri)
        token = _token(uri, ctx)
        flags = int(token.flags)
        name = f"PKCS#11 token {uri.token!r}"
        if flags & CKF_USER_PIN_LOCKED:
            raise PinBlocked(f"the PIN of {name} is locked; unblock it with its SO PIN (tokenagent never does)")
        if flags & CKF_USER_PIN_FINAL_TRY and not ctx.force:
            raise PinLastTry(f"{name} has its final PIN try left; tokenagent does not spend it unless --force")
        pin = ctx.ui.ask_secret(SecretRequest("pin", f"PIN for {name}"))
        try:
            with token.open(user_pin=pin.decode("utf-8")) as session:
                public = _find(session, uri, ObjectClass.PUBLIC_KEY)
                point = bytes(public[Attribute.EC_POINT])
                if point[0] == 0x04 and point[1] == len(point) - 2:
                    point = point[2:]
                if hashlib.sha256(point).hexdigest() != self.key_hash:
                    raise NotMine(f"{name} holds another key under {uri.object or uri.id!r} than the one enrolled")
                private = _find(session, uri, ObjectClass.PRIVATE_KEY)
                derived = private.derive_key(
                    KeyType.GENERIC_SECRET, 8 * len(point[1:]) // 2,
                    mechanism_param=(pkcs11.KDF.NULL, None, self.ephemeral),
                    template={Attribute.SENSITIVE: False, Attribute.EXTRACTABLE: True, Attribute.TOKEN: False})
                z = bytes(derived[Attribute.VALUE])
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


def _curve_oid_der(curve: ec.EllipticCurve) -> bytes:
    from pkcs11.util.ec import encode_named_curve_parameters

    return bytes(encode_named_curve_parameters(curve.name))
