"""The virtual token's PIV applet (NIST SP 800-73-4 with the YubiKey extensions).

What yubikit's ``PivSession``, ``ykman piv``, ``yubico-piv-tool``/libykpiv and OpenSC's PIV
driver send, over ISO 7816 APDUs (AID A000000308):

* VERIFY (20) of the PIN (P2 80): eight bytes padded with FF. A wrong PIN spends one try and
  answers 63Cx (x = tries left); at 0 tries the PIN is blocked (6983). An empty VERIFY
  spends nothing: 9000 when the PIN is already verified (since the last SELECT), else 63Cx.
  P1 FF forgets the verification. Selecting the applet again, selecting another one or a
  power cycle also forget it (libykpiv relies on this to read the retry counter).
* CHANGE REFERENCE DATA (24) for PIN (80) and PUK (81), RESET RETRY COUNTER (2C) with the
  PUK; each wrong old value spends a try of that reference.
* GENERAL AUTHENTICATE (87): with the management key (P2 9B; AES-192 by default on 5.7, 3DES
  or AES-128/192/256 after SET MANAGEMENT KEY) as the two-step witness/challenge exchange; with
  a key slot: raw RSA (tag 81), ECDSA over a digest of any length (tag 81; cut or padded to the
  curve size), Ed25519 over the message (tag 81), ECDH with P-256/P-384/X25519 (tag 85). PIN
  policy (never/once/always) and touch policy (never/always/cached for 15 s) per key.
* GENERATE ASYMMETRIC KEY PAIR (47) for RSA 1024/2048/3072/4096, P-256, P-384, Ed25519 and
  X25519, with PIN and touch policy; IMPORT KEY (FE); MOVE/DELETE KEY (F6): all need the
  management key.
* GET DATA (CB) / PUT DATA (DB) of the object ids a YubiKey takes (7E, read only; 7F61; any
  5F0000-5FFFFF); writing needs the management key.
* ATTEST (F9) of a generated key under the slot F9 attestation key (tokenagent.virtual.attestation).
* Yubico's GET VERSION (FD), GET SERIAL (F8), GET METADATA (F7) of PIN, PUK, management key
  and key slots, SET PIN RETRIES (FA; management key and PIN; resets PIN and PUK to the
  defaults), RESET (FB; only when PIN and PUK are both blocked), SET MANAGEMENT KEY (FF).

Defaults are a new YubiKey's: PIN 123456, PUK 12345678, 3 tries each, management key
010203040506070801020304050607080102030405060708 (AES-192 from firmware 5.7, 3DES before).
IMPORT KEY into F9 replaces the attestation key (its certificate is object 5FFF01). Not
implemented: biometric verification. Secure channels (SCP03/SCP11b)
are the card's (tokenagent.virtual.card, tokenagent.virtual.scp).
"""

from __future__ import annotations

import base64
import hmac
import os
import time
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa, x25519
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from .attestation import attest, make_attestation
from .card import (
    SW_AUTH_METHOD_BLOCKED,
    SW_CONDITIONS_NOT_SATISFIED,
    SW_FILE_NOT_FOUND,
    SW_INCORRECT_PARAMETERS,
    SW_INS_NOT_SUPPORTED,
    SW_REFERENCE_DATA_NOT_FOUND,
    SW_SECURITY_STATUS_NOT_SATISFIED,
    SW_WRONG_LENGTH,
    SW_WRONG_P1P2,
    Apdu,
    ApduStatus,
    Applet,
    Presence,
    tlv,
    tlv_parse,
)
from .management import FORM_FACTOR_USB_A_KEYCHAIN

AID = bytes.fromhex("A000000308000010000100")

INS_VERIFY = 0x20
INS_CHANGE_REFERENCE = 0x24
INS_RESET_RETRY = 0x2C
INS_GENERATE = 0x47
INS_AUTHENTICATE = 0x87
INS_GET_DATA = 0xCB
INS_PUT_DATA = 0xDB
INS_MOVE_KEY = 0xF6
INS_ATTEST = 0xF9
INS_GET_METADATA = 0xF7
INS_GET_SERIAL = 0xF8
INS_SET_PIN_RETRIES = 0xFA
INS_RESET = 0xFB
INS_GET_VERSION = 0xFD
INS_IMPORT_KEY = 0xFE
INS_SET_MGMKEY = 0xFF

PIN_P2, PUK_P2 = 0x80, 0x81
SLOT_MANAGEMENT = 0x9B
SLOT_ATTESTATION = 0xF9
KEY_SLOTS = frozenset([0x9A, 0x9C, 0x9D, 0x9E, *range(0x82, 0x96)])

# Algorithms (P1 of GENERAL AUTHENTICATE, tag 80 of GENERATE)
RSA_BITS = {0x06: 1024, 0x07: 2048, 0x05: 3072, 0x16: 4096}
EC_CURVES: dict[int, type[ec.EllipticCurve]] = {0x11: ec.SECP256R1, 0x14: ec.SECP384R1}
ALG_ED25519, ALG_X25519 = 0xE0, 0xE1  # firmware 5.7
MGM_TDES, MGM_AES128, MGM_AES192, MGM_AES256 = 0x03, 0x08, 0x0A, 0x0C
MGM_KEY_LEN = {MGM_TDES: 24, MGM_AES128: 16, MGM_AES192: 24, MGM_AES256: 32}

PIN_NEVER, PIN_ONCE, PIN_ALWAYS = 0x01, 0x02, 0x03
TOUCH_NEVER, TOUCH_ALWAYS, TOUCH_CACHED = 0x01, 0x02, 0x03
ORIGIN_GENERATED, ORIGIN_IMPORTED = 1, 2
TOUCH_TIMEOUT = 15.0
TOUCH_CACHE = 15.0

DEFAULT_PIN, DEFAULT_PUK = "123456", "12345678"
DEFAULT_MGM_KEY = bytes(range(1, 9)) * 3
DEFAULT_RETRIES = 3

DISCOVERY = 0x7E
BITGT = 0x7F61  # biometric information templates group template (SP 800-73-4)
ATTESTATION_OBJECT = 0x5FFF01  # the certificate of the attestation key (slot F9)
# Objects read only after the PIN (SP 800-73-4 part 1, 3.1): fingerprints, printed information
# (where ykman keeps a PIN-protected management key), facial image, iris images.
PIN_PROTECTED_OBJECTS = frozenset({0x5FC103, 0x5FC109, 0x5FC108, 0x5FC121})
# Discovery object: the PIV AID, PIN usage policy "PIV PIN only"
DISCOVERY_VALUE = tlv(0x4F, AID) + tlv(0x5F2F, b"\x40\x00")
SELECT_RESPONSE = tlv(0x61, tlv(0x4F, AID[5:]) + tlv(0x79, tlv(0x4F, AID[:5])))


def _default_pin_policy(slot: int) -> int:
    return {0x9C: PIN_ALWAYS, 0x9E: PIN_NEVER}.get(slot, PIN_ONCE)


def _padded(value: bytes) -> str | None:
    """An 8-byte PIN/PUK field without its FF padding; None when it is not valid text."""
    try:
        return value.rstrip(b"\xff").decode()
    except UnicodeDecodeError:
        return None


def _retries_sw(remaining: int) -> int:
    return SW_AUTH_METHOD_BLOCKED if remaining <= 0 else 0x63C0 | min(remaining, 15)


def _public_tlvs(key: Any) -> bytes:
    """The public key as GENERATE answers it inside 7F49 (and GET METADATA in tag 04)."""
    public = key.public_key()
    if isinstance(public, rsa.RSAPublicKey):
        numbers = public.public_numbers()
        return tlv(0x81, numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big")) + tlv(
            0x82, numbers.e.to_bytes(3, "big"))
    if isinstance(public, (ed25519.Ed25519PublicKey, x25519.X25519PublicKey)):
        return tlv(0x86, public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))
    return tlv(0x86, public.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint))


def _use_key(key: Any, fields: dict[int, bytes]) -> bytes:
    """GENERAL AUTHENTICATE with a key slot: ECDH (tag 85, P-256/P-384/X25519), else tag 81: raw
    RSA, ECDSA over a digest, Ed25519 over the message."""
    if 0x85 in fields:
        try:
            if isinstance(key, ec.EllipticCurvePrivateKey):
                return key.exchange(ec.ECDH(), ec.EllipticCurvePublicKey.from_encoded_point(key.curve, fields[0x85]))
            if isinstance(key, x25519.X25519PrivateKey):
                return key.exchange(x25519.X25519PublicKey.from_public_bytes(fields[0x85]))
        except ValueError:
            pass
        raise ApduStatus(SW_INCORRECT_PARAMETERS)
    message = fields[0x81]
    if isinstance(key, rsa.RSAPrivateKey):
        numbers = key.private_numbers()
        n = numbers.public_numbers.n
        size = (n.bit_length() + 7) // 8
        value = int.from_bytes(message, "big")
        if len(message) != size or value >= n:
            raise ApduStatus(SW_INCORRECT_PARAMETERS)
        return pow(value, numbers.d, n).to_bytes(size, "big")
    if isinstance(key, ec.EllipticCurvePrivateKey):
        hash_type = {256: hashes.SHA256(), 384: hashes.SHA384()}[key.curve.key_size]
        return key.sign(_ecdsa_input(message, hash_type.digest_size), ec.ECDSA(Prehashed(hash_type)))
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.sign(message)
    raise ApduStatus(SW_INCORRECT_PARAMETERS)  # X25519 only agrees


class _Reference:
    """A PIN or PUK with its retry counter."""

    def __init__(self, value: str, total: int = DEFAULT_RETRIES) -> None:
        self.value, self.total, self.remaining = value, total, total

    def check(self, given: bytes) -> bool:
        """Spend a try on a wrong value (decrement before answering); raise when blocked."""
        if self.remaining <= 0:
            raise ApduStatus(SW_AUTH_METHOD_BLOCKED)
        if hmac.compare_digest(given, self.value.encode().ljust(8, b"\xff")):
            self.remaining = self.total
            return True
        self.remaining -= 1
        return False

    def as_dict(self) -> dict[str, object]:
        return {"value": self.value, "total": self.total, "remaining": self.remaining}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> _Reference:
        ref = cls(str(d["value"]), int(d["total"]))
        ref.remaining = int(d["remaining"])
        return ref


class PivApplet(Applet):
    aid = AID
    name = "PIV"
    state_key = "piv"

    def __init__(self, presence: Presence, serial: int, version: tuple[int, int, int]) -> None:
        super().__init__()
        self.presence, self.serial, self.version = presence, serial, version
        self.attestation: dict[str, str] | None = None  # kept across RESET, as a YubiKey's factory key
        self._factory()
        self._clear_security_state()

    def _factory(self) -> None:
        self.pin = _Reference(DEFAULT_PIN)
        self.puk = _Reference(DEFAULT_PUK)
        # firmware 5.7 ships the default key as AES-192, earlier ones as 3DES (same bytes)
        self.mgm_type = MGM_AES192 if self.version >= (5, 7, 0) else MGM_TDES
        self.mgm_key, self.mgm_touch = DEFAULT_MGM_KEY, False
        self.keys: dict[int, dict[str, Any]] = {}  # slot -> alg, pin_policy, touch_policy, origin, key (PKCS#8)
        self.objects: dict[int, bytes] = {}

    def _clear_security_state(self) -> None:
        self.pin_verified = False
        self.pin_just_verified = False  # for PIN policy "always": the VERIFY right before
        self.mgm_authenticated = False
        self.witness: bytes | None = None
        self.touched_at: dict[int, float] = {}

    # --- state -------------------------------------------------------------------------

    def state_dict(self) -> dict[str, object]:
        keys = {f"{slot:02x}": {**meta, "key": base64.b64encode(meta["key"]).decode()}
                for slot, meta in self.keys.items()}
        return {"pin": self.pin.as_dict(), "puk": self.puk.as_dict(), "mgm_type": self.mgm_type,
                "mgm_key": self.mgm_key.hex(), "mgm_touch": self.mgm_touch, "keys": keys,
                "objects": {f"{oid:x}": base64.b64encode(data).decode() for oid, data in self.objects.items()},
                "attestation": self.attestation}

    def load_state(self, state: dict[str, Any]) -> None:
        self.pin = _Reference.from_dict(state["pin"])
        self.puk = _Reference.from_dict(state["puk"])
        self.mgm_type, self.mgm_key = int(state["mgm_type"]), bytes.fromhex(state["mgm_key"])
        self.mgm_touch = bool(state["mgm_touch"])
        self.keys = {int(slot, 16): {**meta, "key": base64.b64decode(meta["key"])} for slot, meta in state["keys"].items()}
        self.objects = {int(oid, 16): base64.b64decode(data) for oid, data in state["objects"].items()}
        self.attestation = state.get("attestation")

    # --- card events -------------------------------------------------------------------

    def select(self, p2: int) -> bytes:
        self._clear_security_state()
        return SELECT_RESPONSE

    def deselect(self) -> None:
        self._clear_security_state()

    def power_cycle(self) -> None:
        self._clear_security_state()

    def process(self, apdu: Apdu) -> bytes:
        handler = self._handlers.get(apdu.ins)
        if handler is None:
            raise ApduStatus(SW_INS_NOT_SUPPORTED)
        try:
            return handler(self, apdu)
        finally:
            if apdu.ins != INS_VERIFY:  # "PIN always" needs the VERIFY right before the key's use
                self.pin_just_verified = False

    # --- PIN, PUK ----------------------------------------------------------------------

    def _verify(self, apdu: Apdu) -> bytes:
        if apdu.p2 != PIN_P2:
            raise ApduStatus(SW_REFERENCE_DATA_NOT_FOUND)
        if apdu.p1 == 0xFF and not apdu.data:
            self.pin_verified = False
            return b""
        if apdu.p1 != 0x00:
            raise ApduStatus(SW_WRONG_P1P2)
        if not apdu.data:
            if self.pin_verified:
                return b""
            raise ApduStatus(_retries_sw(self.pin.remaining))
        if len(apdu.data) != 8:
            raise ApduStatus(SW_WRONG_LENGTH)
        ok = self.pin.check(apdu.data)
        self.changed()
        if not ok:
            self.pin_verified = False
            raise ApduStatus(_retries_sw(self.pin.remaining))
        self.pin_verified = self.pin_just_verified = True
        return b""

    def _change_reference(self, apdu: Apdu) -> bytes:
        ref = {PIN_P2: self.pin, PUK_P2: self.puk}.get(apdu.p2)
        if ref is None:
            raise ApduStatus(SW_REFERENCE_DATA_NOT_FOUND)
        if len(apdu.data) != 16:
            raise ApduStatus(SW_WRONG_LENGTH)
        ok = ref.check(apdu.data[:8])
        self.changed()
        if not ok:
            raise ApduStatus(_retries_sw(ref.remaining))
        ref.value = self._new_value(apdu.data[8:])
        self.changed()
        return b""

    def _reset_retry(self, apdu: Apdu) -> bytes:
        if apdu.p2 != PIN_P2:
            raise ApduStatus(SW_REFERENCE_DATA_NOT_FOUND)
        if len(apdu.data) != 16:
            raise ApduStatus(SW_WRONG_LENGTH)
        ok = self.puk.check(apdu.data[:8])
        self.changed()
        if not ok:
            raise ApduStatus(_retries_sw(self.puk.remaining))
        self.pin.value = self._new_value(apdu.data[8:])
        self.pin.remaining = self.pin.total
        self.changed()
        return b""

    @staticmethod
    def _new_value(field: bytes) -> str:
        value = _padded(field)
        if value is None or not 6 <= len(value.encode()) <= 8:
            raise ApduStatus(SW_INCORRECT_PARAMETERS)
        return value

    def _set_pin_retries(self, apdu: Apdu) -> bytes:
        if not (self.mgm_authenticated and self.pin_verified):
            raise ApduStatus(SW_SECURITY_STATUS_NOT_SATISFIED)
        if not (1 <= apdu.p1 <= 0xFF and 1 <= apdu.p2 <= 0xFF):
            raise ApduStatus(SW_WRONG_P1P2)
        self.pin, self.puk = _Reference(DEFAULT_PIN, apdu.p1), _Reference(DEFAULT_PUK, apdu.p2)
        self.pin_verified = False
        self.changed()
        return b""

    def _reset(self, apdu: Apdu) -> bytes:
        if self.pin.remaining > 0 or self.puk.remaining > 0:
            raise ApduStatus(SW_CONDITIONS_NOT_SATISFIED)
        f9 = self.objects.get(ATTESTATION_OBJECT)  # the attestation key and its certificate stay
        self._factory()
        if f9 is not None:
            self.objects[ATTESTATION_OBJECT] = f9
        self._clear_security_state()
        self.changed()
        return b""

    # --- management key ----------------------------------------------------------------

    def _mgm_cipher(self) -> Cipher[modes.ECB]:
        if self.mgm_type == MGM_TDES:
            from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES

            return Cipher(TripleDES(self.mgm_key), modes.ECB())  # the PIV protocol's block
        return Cipher(algorithms.AES(self.mgm_key), modes.ECB())

    def _mgm_authenticate(self, apdu: Apdu) -> bytes:
        if apdu.p1 != self.mgm_type:
            raise ApduStatus(SW_INCORRECT_PARAMETERS)
        fields = dict(tlv_parse(_dyn_auth(apdu.data)))
        block = 8 if self.mgm_type == MGM_TDES else 16
        if fields.get(0x80) == b"":  # step 1: the client asks for a witness
            self.witness = os.urandom(block)
            encryptor = self._mgm_cipher().encryptor()
            return tlv(0x7C, tlv(0x80, encryptor.update(self.witness) + encryptor.finalize()))
        witness, self.witness = self.witness, None
        answer, challenge = fields.get(0x80), fields.get(0x81)
        if witness is None or answer is None or challenge is None or len(challenge) != block:
            raise ApduStatus(SW_INCORRECT_PARAMETERS)
        if not hmac.compare_digest(witness, answer):
            raise ApduStatus(SW_SECURITY_STATUS_NOT_SATISFIED)
        if self.mgm_touch and not self.presence.wait(TOUCH_TIMEOUT):
            raise ApduStatus(SW_SECURITY_STATUS_NOT_SATISFIED)
        self.mgm_authenticated = True
        encryptor = self._mgm_cipher().encryptor()
        return tlv(0x7C, tlv(0x82, encryptor.update(challenge) + encryptor.finalize()))

    def _set_mgm_key(self, apdu: Apdu) -> bytes:
        if not self.mgm_authenticated:
            raise ApduStatus(SW_SECURITY_STATUS_NOT_SATISFIED)
        if apdu.p1 != 0xFF or apdu.p2 not in (0xFE, 0xFF) or len(apdu.data) < 1:
            raise ApduStatus(SW_WRONG_P1P2)
        key_type = apdu.data[0]
        fields = dict(tlv_parse(apdu.data[1:]))
        key = fields.get(SLOT_MANAGEMENT)
        if key_type not in MGM_KEY_LEN or key is None or len(key) != MGM_KEY_LEN[key_type]:
            raise ApduStatus(SW_INCORRECT_PARAMETERS)
        self.mgm_type, self.mgm_key, self.mgm_touch = key_type, key, apdu.p2 == 0xFE
        self.changed()
        return b""

    # --- keys --------------------------------------------------------------------------

    def _authenticate(self, apdu: Apdu) -> bytes:
        if apdu.p2 == SLOT_MANAGEMENT:
            return self._mgm_authenticate(apdu)
        meta = self.keys.get(apdu.p2)
        if apdu.p2 not in KEY_SLOTS or meta is None or meta["alg"] != apdu.p1:
            raise ApduStatus(SW_INCORRECT_PARAMETERS)
        fields = dict(tlv_parse(_dyn_auth(apdu.data)))
        if fields.get(0x82) != b"" or (0x81 in fields) == (0x85 in fields):
            raise ApduStatus(SW_INCORRECT_PARAMETERS)
        self._check_use(apdu.p2, meta)
        key = serialization.load_der_private_key(meta["key"], None)
        return tlv(0x7C, tlv(0x82, _use_key(key, fields)))

    def _check_use(self, slot: int, meta: dict[str, Any]) -> None:
        """The key's PIN and touch policies."""
        pin_policy = meta["pin_policy"]
        if pin_policy == PIN_ONCE and not self.pin_verified:
            raise ApduStatus(SW_SECURITY_STATUS_NOT_SATISFIED)
        if pin_policy == PIN_ALWAYS and not self.pin_just_verified:
            raise ApduStatus(SW_SECURITY_STATUS_NOT_SATISFIED)
        touch = meta["touch_policy"]
        if touch == TOUCH_NEVER:
            return
        if touch == TOUCH_CACHED and time.monotonic() - self.touched_at.get(slot, float("-inf")) < TOUCH_CACHE:
            return
        if not self.presence.wait(TOUCH_TIMEOUT):
            raise ApduStatus(SW_SECURITY_STATUS_NOT_SATISFIED)
        self.touched_at[slot] = time.monotonic()

    def _generate(self, apdu: Apdu) -> bytes:
        if not self.mgm_authenticated:
            raise ApduStatus(SW_SECURITY_STATUS_NOT_SATISFIED)
        if apdu.p1 != 0 or apdu.p2 not in KEY_SLOTS:
            raise ApduStatus(SW_WRONG_P1P2)
        template = dict(tlv_parse(apdu.data))
        fields = dict(tlv_parse(template.get(0xAC, b"")))
        alg = fields.get(0x80, b"")
        if len(alg) != 1:
            raise ApduStatus(SW_INCORRECT_PARAMETERS)
        key: Any
        if alg[0] in RSA_BITS:
            key = rsa.generate_private_key(65537, RSA_BITS[alg[0]])
        elif alg[0] in EC_CURVES:
            key = ec.generate_private_key(EC_CURVES[alg[0]]())
        elif alg[0] == ALG_ED25519:
            key = ed25519.Ed25519PrivateKey.generate()
        elif alg[0] == ALG_X25519:
            key = x25519.X25519PrivateKey.generate()
        else:
            raise ApduStatus(SW_INCORRECT_PARAMETERS)
        self._store_key(apdu.p2, alg[0], key, fields, ORIGIN_GENERATED)
        return tlv(0x7F49, _public_tlvs(key))

    def _import(self, apdu: Apdu) -> bytes:
        if not self.mgm_authenticated:
            raise ApduStatus(SW_SECURITY_STATUS_NOT_SATISFIED)
        if apdu.p2 not in KEY_SLOTS and apdu.p2 != SLOT_ATTESTATION:
            raise ApduStatus(SW_WRONG_P1P2)
        fields = dict(tlv_parse(apdu.data))
        key: Any
        try:
            if apdu.p1 in RSA_BITS:
                p, q, dmp1, dmq1, iqmp = (int.from_bytes(fields[t], "big") for t in (1, 2, 3, 4, 5))
                e = 65537
                public = rsa.RSAPublicNumbers(e, p * q)
                d = pow(e, -1, (p - 1) * (q - 1))
                key = rsa.RSAPrivateNumbers(p, q, d, dmp1, dmq1, iqmp, public).private_key()
                if key.key_size != RSA_BITS[apdu.p1]:
                    raise ValueError("size")
            elif apdu.p1 in EC_CURVES:
                key = ec.derive_private_key(int.from_bytes(fields[6], "big"), EC_CURVES[apdu.p1]())
            elif apdu.p1 == ALG_ED25519:
                key = ed25519.Ed25519PrivateKey.from_private_bytes(fields[7])
            elif apdu.p1 == ALG_X25519:
                key = x25519.X25519PrivateKey.from_private_bytes(fields[8])
            else:
                raise ValueError("algorithm")
        except (KeyError, ValueError):
            raise ApduStatus(SW_INCORRECT_PARAMETERS) from None
        self._store_key(apdu.p2, apdu.p1, key, fields, ORIGIN_IMPORTED)
        return b""

    def _store_key(self, slot: int, alg: int, key: Any, fields: dict[int, bytes], origin: int) -> None:
        if slot == SLOT_ATTESTATION:  # an attestation key of one's own (ykman piv keys import f9)
            if not isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)):
                raise ApduStatus(SW_INCORRECT_PARAMETERS)
            der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
            self.attestation = {**self._attestation(), "key": base64.b64encode(der).decode()}
            self.changed()
            return
        pin_policy = fields.get(0xAA, b"\x00")[0] or _default_pin_policy(slot)
        touch_policy = fields.get(0xAB, b"\x00")[0] or TOUCH_NEVER
        if pin_policy not in (PIN_NEVER, PIN_ONCE, PIN_ALWAYS) or touch_policy not in (
                TOUCH_NEVER, TOUCH_ALWAYS, TOUCH_CACHED):
            raise ApduStatus(SW_INCORRECT_PARAMETERS)
        der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        self.keys[slot] = {"alg": alg, "pin_policy": pin_policy, "touch_policy": touch_policy, "origin": origin,
                           "key": der}
        self.changed()

    def _move_key(self, apdu: Apdu) -> bytes:
        if not self.mgm_authenticated:
            raise ApduStatus(SW_SECURITY_STATUS_NOT_SATISFIED)
        source, target = apdu.p2, apdu.p1
        if source not in KEY_SLOTS or not (target == 0xFF or target in KEY_SLOTS) or source == target:
            raise ApduStatus(SW_WRONG_P1P2)
        meta = self.keys.pop(source, None)
        if meta is None:
            raise ApduStatus(SW_REFERENCE_DATA_NOT_FOUND)
        if target != 0xFF:
            self.keys[target] = meta
        self.changed()
        return b""

    def _metadata(self, apdu: Apdu) -> bytes:
        if apdu.p2 in (PIN_P2, PUK_P2):
            ref, default = (self.pin, DEFAULT_PIN) if apdu.p2 == PIN_P2 else (self.puk, DEFAULT_PUK)
            return (tlv(0x01, b"\xff") + tlv(0x02, b"\x00\x00") + tlv(0x05, bytes([ref.value == default]))
                    + tlv(0x06, bytes([ref.total, max(ref.remaining, 0)])))
        if apdu.p2 == SLOT_MANAGEMENT:
            touch = TOUCH_ALWAYS if self.mgm_touch else TOUCH_NEVER
            return (tlv(0x01, bytes([self.mgm_type])) + tlv(0x02, bytes([0, touch]))
                    + tlv(0x05, bytes([self.mgm_key == DEFAULT_MGM_KEY])))
        meta = self.keys.get(apdu.p2)
        if meta is None:  # an empty slot, or no such reference (0x96: no fingerprint sensor)
            raise ApduStatus(SW_REFERENCE_DATA_NOT_FOUND)
        key = serialization.load_der_private_key(meta["key"], None)
        return (tlv(0x01, bytes([meta["alg"]])) + tlv(0x02, bytes([meta["pin_policy"], meta["touch_policy"]]))
                + tlv(0x03, bytes([meta["origin"]])) + tlv(0x04, _public_tlvs(key)))

    # --- data objects ------------------------------------------------------------------

    def _object_id(self, apdu: Apdu) -> int:
        """The object of GET/PUT DATA (tag 5C). A YubiKey takes 7E (discovery), 7F61 (BIT group
        template) and any three-byte id 5F0000-5FFFFF: the PIV ones (5FC101-5FC123), Yubico's
        (5FFF00 ykman's admin data, 5FFF01 the attestation certificate, 5FFF10-15 Microsoft's) and
        undefined ones an application may use; anything else is refused (6A80)."""
        if (apdu.p1, apdu.p2) != (0x3F, 0xFF):
            raise ApduStatus(SW_WRONG_P1P2)
        items = tlv_parse(apdu.data)
        if not items or items[0][0] != 0x5C:
            raise ApduStatus(SW_INCORRECT_PARAMETERS)
        raw = items[0][1]
        if raw not in (b"\x7e", b"\x7f\x61") and not (len(raw) == 3 and raw[0] == 0x5F):
            raise ApduStatus(SW_INCORRECT_PARAMETERS)
        return int.from_bytes(raw, "big")

    def _get_data(self, apdu: Apdu) -> bytes:
        oid = self._object_id(apdu)
        if oid == DISCOVERY:
            return tlv(DISCOVERY, DISCOVERY_VALUE)
        if oid in PIN_PROTECTED_OBJECTS and not self.pin_verified:
            raise ApduStatus(SW_SECURITY_STATUS_NOT_SATISFIED)
        if oid == ATTESTATION_OBJECT and oid not in self.objects:
            certificate = base64.b64decode(self._attestation()["cert"])  # stored as PIV stores certificates
            return tlv(0x53, tlv(0x70, certificate) + tlv(0x71, b"\x00") + tlv(0xFE))  # as from the factory, until replaced
        if oid not in self.objects:
            raise ApduStatus(SW_FILE_NOT_FOUND)
        return tlv(0x53, self.objects[oid])

    def _put_data(self, apdu: Apdu) -> bytes:
        if not self.mgm_authenticated:
            raise ApduStatus(SW_SECURITY_STATUS_NOT_SATISFIED)
        oid = self._object_id(apdu)
        items = tlv_parse(apdu.data)
        if oid == DISCOVERY or len(items) != 2 or items[1][0] != 0x53:  # the discovery object is fixed
            raise ApduStatus(SW_INCORRECT_PARAMETERS)
        if items[1][1]:
            self.objects[oid] = items[1][1]
        else:
            self.objects.pop(oid, None)
        self.changed()
        return b""

    # --- attestation -------------------------------------------------------------------

    def _attestation(self) -> dict[str, str]:
        """This token's attestation CA and F9 key (tokenagent.virtual.attestation), made on first use."""
        if self.attestation is None or "root_key" not in self.attestation:
            self.attestation = make_attestation(self.serial)
            self.changed()
        return self.attestation

    def _attest(self, apdu: Apdu) -> bytes:
        """ATTEST (F9): a certificate of a key the card generated; imported keys are not attested."""
        meta = self.keys.get(apdu.p1)
        if apdu.p1 not in KEY_SLOTS or meta is None:
            raise ApduStatus(SW_REFERENCE_DATA_NOT_FOUND)
        if meta["origin"] != ORIGIN_GENERATED:
            raise ApduStatus(SW_INCORRECT_PARAMETERS)
        public = serialization.load_der_private_key(meta["key"], None).public_key()
        attestation = dict(self._attestation())
        stored = self.objects.get(ATTESTATION_OBJECT)  # a certificate of one's own for F9 (TLV 70)
        if stored is not None:
            certificate = dict(tlv_parse(stored)).get(0x70)
            if certificate is None:
                raise ApduStatus(SW_INCORRECT_PARAMETERS)
            attestation["cert"] = base64.b64encode(certificate).decode()
        return attest(attestation, apdu.p1, public, self.version, self.serial, meta["pin_policy"],
                      meta["touch_policy"], FORM_FACTOR_USB_A_KEYCHAIN)

    # --- Yubico extensions -------------------------------------------------------------

    def _get_version(self, apdu: Apdu) -> bytes:
        return bytes(self.version)

    def _get_serial(self, apdu: Apdu) -> bytes:
        return self.serial.to_bytes(4, "big")

    _handlers = {
        INS_VERIFY: _verify,
        INS_CHANGE_REFERENCE: _change_reference,
        INS_RESET_RETRY: _reset_retry,
        INS_AUTHENTICATE: _authenticate,
        INS_GENERATE: _generate,
        INS_IMPORT_KEY: _import,
        INS_MOVE_KEY: _move_key,
        INS_ATTEST: _attest,
        INS_GET_DATA: _get_data,
        INS_PUT_DATA: _put_data,
        INS_GET_METADATA: _metadata,
        INS_GET_SERIAL: _get_serial,
        INS_GET_VERSION: _get_version,
        INS_SET_PIN_RETRIES: _set_pin_retries,
        INS_RESET: _reset,
        INS_SET_MGMKEY: _set_mgm_key,
    }


def _ecdsa_input(digest: bytes, size: int) -> bytes:
    """The digest as the curve's ECDSA takes it (FIPS 186-4 6.4): a longer one is cut to its leftmost
    ``size`` bytes, a shorter one (SHA-256 on P-384, SHA-1 on P-256) is the same number left-padded
    with zeros. A YubiKey signs both; clients rely on it (yubikit sends a SHA-256 digest unpadded
    for a P-384 key, libykpiv and OpenSC send what the hash gave)."""
    if not digest:
        raise ApduStatus(SW_INCORRECT_PARAMETERS)
    return digest[:size].rjust(size, b"\0")


def _dyn_auth(data: bytes) -> bytes:
    """The content of the dynamic authentication template (7C)."""
    items = tlv_parse(data)
    if len(items) != 1 or items[0][0] != 0x7C:
        raise ApduStatus(SW_INCORRECT_PARAMETERS)
    return items[0][1]
