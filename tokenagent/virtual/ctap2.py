"""The virtual token's FIDO2 authenticator: CTAP 2.1 over the NFC (ISO 7816) framing.

Theory of operation. The applet (AID A0000006472F0001) takes NFCCTAP_MSG (INS 10) whose data
is a CTAP command byte and its CBOR parameters, and answers a CTAP status byte and CBOR.
Commands that need user presence run in a worker thread: the first answer is SW 9100 with a
keepalive status (UP needed), and the client polls with NFCCTAP_GETRESPONSE (INS 11), P1 11
cancelling, as python-fido2's ``CtapPcscDevice`` does.

What is implemented (CTAP 2.1, §6): getInfo; makeCredential (ES256; non-resident credentials
whose id is the credential's secrets sealed with AES-256-GCM under a device key, bound to the
rp id hash; resident credentials kept in the state; excludeList; extensions hmac-secret and
credProtect; packed self attestation); getAssertion (allowList or resident credentials,
options up/uv, hmac-secret with one or two salts under PIN/UV protocol 1 or 2, with separate
CredRandom values with and without UV); clientPIN (getPinRetries, getKeyAgreement, setPIN,
changePIN, getPinToken, getPinUvAuthTokenUsingPinWithPermissions) with 8 retries decremented
before the comparison, 3 consecutive mistakes blocking PIN use until a power cycle, and a
blocked PIN at 0; authenticatorReset (UP required); authenticatorSelection. Not implemented:
U2F/CTAP1, getNextAssertion (one credential per assertion), credential management, large
blobs, enterprise attestation, built-in UV; docs/virtual-token.md lists them.

The device's secrets are in its state file, which is what persists a token across plugs.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import threading
from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from fido2 import cbor

from .card import SW_INS_NOT_SUPPORTED, Apdu, ApduStatus, Applet, Presence

AID = bytes.fromhex("A0000006472F0001")
AAGUID = bytes.fromhex("746f6b656e6167656e742d7669727475")  # "tokenagent-virtu"
SW_KEEPALIVE = 0x9100
INS_MSG = 0x10
INS_GET_RESPONSE = 0x11
P1_CANCEL = 0x11
MAX_MSG_SIZE = 1200
PIN_RETRIES = 8
PIN_MISTAKES_PER_BOOT = 3
TOUCH_TIMEOUT = 30.0
ES256 = -7
ECDH_ALG = -25


class Err:
    """CTAP2 status codes (CTAP 2.1 §8.2)."""

    SUCCESS = 0x00
    INVALID_COMMAND = 0x01
    INVALID_PARAMETER = 0x02
    INVALID_LENGTH = 0x03
    CBOR_UNEXPECTED_TYPE = 0x11
    INVALID_CBOR = 0x12
    MISSING_PARAMETER = 0x14
    CREDENTIAL_EXCLUDED = 0x19
    UNSUPPORTED_ALGORITHM = 0x26
    OPERATION_DENIED = 0x27
    UNSUPPORTED_OPTION = 0x2B
    INVALID_OPTION = 0x2C
    KEEPALIVE_CANCEL = 0x2D
    NO_CREDENTIALS = 0x2E
    USER_ACTION_TIMEOUT = 0x2F
    NOT_ALLOWED = 0x30
    PIN_INVALID = 0x31
    PIN_BLOCKED = 0x32
    PIN_AUTH_INVALID = 0x33
    PIN_AUTH_BLOCKED = 0x34
    PIN_NOT_SET = 0x35
    PUAT_REQUIRED = 0x36
    PIN_POLICY_VIOLATION = 0x37
    UNAUTHORIZED_PERMISSION = 0x40


class CtapFailure(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(f"CTAP error 0x{code:02X}")
        self.code = code


class Permission:
    MAKE_CREDENTIAL = 0x01
    GET_ASSERTION = 0x02


# --- PIN/UV auth protocols (CTAP 2.1 §6.5.6, §6.5.7) ------------------------------------------

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


# --- the authenticator ---------------------------------------------------------------------------

class Fido2Applet(Applet):
    aid = AID
    name = "FIDO2"
    state_key = "fido2"

    def __init__(self, presence: Presence) -> None:
        super().__init__()
        self.presence = presence
        self.device_key = secrets.token_bytes(32)
        self.pin_hash: bytes | None = None  # LEFT(SHA-256(PIN), 16)
        self.pin_retries = PIN_RETRIES
        self.sign_count = 0
        self.resident: list[dict[str, Any]] = []
        self._boot()
        self._worker: threading.Thread | None = None
        self._result: bytes | None = None
        self._cancel = threading.Event()

    # --- persistent state ---------------------------------------------------------------------
    def state_dict(self) -> dict[str, object]:
        return {"device_key": base64.b64encode(self.device_key).decode(),
                "pin_hash": base64.b64encode(self.pin_hash).decode() if self.pin_hash else None,
                "pin_retries": self.pin_retries, "sign_count": self.sign_count, "resident": self.resident}

    def load_state(self, state: dict[str, object]) -> None:
        self.device_key = base64.b64decode(str(state["device_key"]))
        pin_hash = state.get("pin_hash")
        self.pin_hash = base64.b64decode(str(pin_hash)) if pin_hash else None
        self.pin_retries = int(state.get("pin_retries", PIN_RETRIES))  # type: ignore[call-overload]
        self.sign_count = int(state.get("sign_count", 0))  # type: ignore[call-overload]
        self.resident = list(state.get("resident", []))  # type: ignore[call-overload]

    # --- power and selection -----------------------------------------------------------------
    def _boot(self) -> None:
        self.key_agreement = ec.generate_private_key(ec.SECP256R1())
        self.pin_token = secrets.token_bytes(32)
        self.token_permissions = 0
        self.token_rp: str | None = None
        self.mistakes_this_boot = 0

    def power_cycle(self) -> None:
        self._cancel.set()
        self._boot()

    def select(self, p2: int) -> bytes:
        return b"FIDO_2_0"

    def start_request(self) -> None:
        """A new command begins (HID transport): forget an earlier cancel."""
        self._cancel.clear()

    def cancel(self) -> None:
        """The client cancelled (CTAPHID_CANCEL, NFCCTAP_GETRESPONSE with P1 11) or the key was pulled out."""
        self._cancel.set()

    def process(self, apdu: Apdu) -> bytes:
        if apdu.ins == INS_MSG:
            if self._worker is not None and self._worker.is_alive():
                raise ApduStatus(SW_KEEPALIVE, b"\x02")
            return self._start(apdu.data)
        if apdu.ins == INS_GET_RESPONSE:
            if apdu.p1 == P1_CANCEL:
                self.cancel()
            return self._poll()
        raise ApduStatus(SW_INS_NOT_SUPPORTED)

    def _start(self, message: bytes) -> bytes:
        self._cancel.clear()
        self._result = None

        def run() -> None:
            self._result = self.handle(message)

        self._worker = threading.Thread(target=run, daemon=True, name="virtual-fido2")
        self._worker.start()
        self._worker.join(0.05)  # most commands answer at once
        return self._poll()

    def _poll(self) -> bytes:
        worker = self._worker
        if worker is None:
            return bytes([Err.INVALID_COMMAND])
        worker.join(0.1)
        if worker.is_alive():
            raise ApduStatus(SW_KEEPALIVE, b"\x02")  # STATUS_UPNEEDED
        self._worker = None
        return self._result or bytes([Err.INVALID_COMMAND])

    # --- commands --------------------------------------------------------------------------
    def handle(self, message: bytes) -> bytes:
        """One CTAP2 command → status byte + CBOR (callable directly, for in-process tests)."""
        if not message:
            return bytes([Err.INVALID_LENGTH])
        command, body = message[0], message[1:]
        try:
            params = cbor.decode(body) if body else {}
        except Exception:  # noqa: BLE001 - any malformed CBOR
            return bytes([Err.INVALID_CBOR])
        if not isinstance(params, dict):
            return bytes([Err.CBOR_UNEXPECTED_TYPE])
        handler: Callable[[dict[Any, Any]], dict[int, Any] | None] | None = {
            0x01: self.make_credential, 0x02: self.get_assertion, 0x04: self.get_info,
            0x06: self.client_pin, 0x07: self.reset, 0x0B: self.selection,
        }.get(command)
        if handler is None:
            return bytes([Err.INVALID_COMMAND])
        try:
            result = handler(params)
        except CtapFailure as failure:
            return bytes([failure.code])
        except (KeyError, TypeError, ValueError):
            return bytes([Err.INVALID_PARAMETER])
        return bytes([Err.SUCCESS]) + (cbor.encode(result) if result is not None else b"")

    def get_info(self, params: dict[Any, Any]) -> dict[int, Any]:
        return {
            0x01: ["FIDO_2_0", "FIDO_2_1"],
            0x02: ["credProtect", "hmac-secret"],
            0x03: AAGUID,
            0x04: {"rk": True, "up": True, "plat": False, "clientPin": self.pin_hash is not None,
                   "pinUvAuthToken": True, "makeCredUvNotRqd": True},
            0x05: MAX_MSG_SIZE,
            0x06: [2, 1],
            0x09: ["nfc", "usb"],
            0x0A: [{"type": "public-key", "alg": ES256}],
            0x0D: 4,
        }

    def _touch(self) -> None:
        if not self.presence.wait(TOUCH_TIMEOUT, self._cancel.is_set):
            raise CtapFailure(Err.KEEPALIVE_CANCEL if self._cancel.is_set() else Err.USER_ACTION_TIMEOUT)

    def _check_uv(self, params: dict[Any, Any], auth_key: int, proto_key: int, client_data_hash: bytes,
                  permission: int, rp_id: str) -> bool:
        """Verify pinUvAuthParam (if given): True when the request carries user verification."""
        param = params.get(auth_key)
        if param is None:
            return False
        protocol = PROTOCOLS.get(params.get(proto_key, 0))
        if protocol is None:
            raise CtapFailure(Err.MISSING_PARAMETER if proto_key not in params else Err.INVALID_PARAMETER)
        if self.pin_hash is None:
            raise CtapFailure(Err.PIN_NOT_SET)
        if not protocol.verify(self.pin_token, client_data_hash, param):
            raise CtapFailure(Err.PIN_AUTH_INVALID)
        if not self.token_permissions & permission or (self.token_rp not in (None, rp_id)):
            raise CtapFailure(Err.PIN_AUTH_INVALID)
        self.token_rp = rp_id
        return True

    def make_credential(self, params: dict[Any, Any]) -> dict[int, Any]:
        client_data_hash, rp, user, algs = params[1], params[2], params[3], params[4]
        rp_id = rp["id"]
        if not any(a.get("alg") == ES256 and a.get("type") == "public-key" for a in algs):
            raise CtapFailure(Err.UNSUPPORTED_ALGORITHM)
        options = params.get(7, {})
        if options.get("up") is False:
            raise CtapFailure(Err.INVALID_OPTION)
        if options.get("uv"):
            raise CtapFailure(Err.UNSUPPORTED_OPTION)  # no built-in UV: use the PIN
        uv = self._check_uv(params, 8, 9, client_data_hash, Permission.MAKE_CREDENTIAL, rp_id)
        extensions = params.get(6, {})
        cred_protect = int(extensions.get("credProtect", 1))
        if cred_protect not in (1, 2, 3):
            raise CtapFailure(Err.INVALID_PARAMETER)
        rp_hash = hashlib.sha256(rp_id.encode()).digest()
        for excluded in params.get(5, []):
            found = self._open_credential(excluded.get("id", b""), rp_hash)
            if found is not None and (found["protect"] < 3 or uv):
                self._touch()
                raise CtapFailure(Err.CREDENTIAL_EXCLUDED)
        self._touch()
        key = ec.generate_private_key(ec.SECP256R1())
        secret = {"d": key.private_numbers().private_value.to_bytes(32, "big"),
                  "cr": secrets.token_bytes(32), "cru": secrets.token_bytes(32), "protect": cred_protect}
        cred_id = self._seal_credential(secret, rp_hash)
        if options.get("rk"):
            self.resident = [r for r in self.resident
                             if not (r["rp"] == rp_id and r["user_id"] == base64.b64encode(user["id"]).decode())]
            self.resident.append({"rp": rp_id, "user_id": base64.b64encode(user["id"]).decode(),
                                  "user": {k: v for k, v in user.items() if k in ("name", "displayName")},
                                  "id": base64.b64encode(cred_id).decode()})
        ext_out: dict[str, Any] = {}
        if extensions.get("hmac-secret") is True:
            ext_out["hmac-secret"] = True
        if "credProtect" in extensions:
            ext_out["credProtect"] = cred_protect
        flags = 0x01 | (0x04 if uv else 0) | 0x40 | (0x80 if ext_out else 0)
        self.sign_count += 1
        self.changed()
        attested = AAGUID + len(cred_id).to_bytes(2, "big") + cred_id + cbor.encode(
            cose_public_key(key.public_key(), ES256))
        auth_data = rp_hash + bytes([flags]) + self.sign_count.to_bytes(4, "big") + attested
        if ext_out:
            auth_data += cbor.encode(ext_out)
        signature = key.sign(auth_data + client_data_hash, ec.ECDSA(hashes.SHA256()))
        return {1: "packed", 2: auth_data, 3: {"alg": ES256, "sig": signature}}

    def get_assertion(self, params: dict[Any, Any]) -> dict[int, Any]:
        rp_id, client_data_hash = params[1], params[2]
        options = params.get(5, {})
        if options.get("uv"):
            raise CtapFailure(Err.UNSUPPORTED_OPTION)
        up = options.get("up", True)
        uv = self._check_uv(params, 6, 7, client_data_hash, Permission.GET_ASSERTION, rp_id)
        rp_hash = hashlib.sha256(rp_id.encode()).digest()
        candidates: list[tuple[bytes, dict[str, Any], dict[str, Any] | None]] = []
        allow = params.get(3)
        if allow:
            for descriptor in allow:
                opened = self._open_credential(descriptor.get("id", b""), rp_hash)
                if opened is not None and (opened["protect"] < 3 or uv):
                    candidates.append((descriptor["id"], opened, None))
        else:
            for entry in self.resident:
                cred_id = base64.b64decode(entry["id"])
                opened = self._open_credential(cred_id, rp_hash)
                if entry["rp"] == rp_id and opened is not None and (opened["protect"] == 1 or uv):
                    candidates.append((cred_id, opened, entry))
        if not candidates:
            raise CtapFailure(Err.NO_CREDENTIALS)
        cred_id, opened, record = candidates[0]
        if up:
            self._touch()
        ext_out: dict[str, Any] = {}
        hmac_request = params.get(4, {}).get("hmac-secret")
        if hmac_request is not None:
            ext_out["hmac-secret"] = self._hmac_secret(hmac_request, opened["cru"] if uv else opened["cr"])
        flags = (0x01 if up else 0) | (0x04 if uv else 0) | (0x80 if ext_out else 0)
        self.sign_count += 1
        self.changed()
        auth_data = rp_hash + bytes([flags]) + self.sign_count.to_bytes(4, "big")
        if ext_out:
            auth_data += cbor.encode(ext_out)
        key = ec.derive_private_key(int.from_bytes(opened["d"], "big"), ec.SECP256R1())
        result: dict[int, Any] = {1: {"type": "public-key", "id": cred_id}, 2: auth_data,
                                  3: key.sign(auth_data + client_data_hash, ec.ECDSA(hashes.SHA256()))}
        if record is not None:
            result[4] = {"id": base64.b64decode(record["user_id"]), **record["user"]}
            result[5] = len(candidates)
        return result

    def _hmac_secret(self, request: dict[int, Any], cred_random: bytes) -> bytes:
        protocol = PROTOCOLS.get(request.get(4, 1))
        if protocol is None:
            raise CtapFailure(Err.INVALID_PARAMETER)
        peer = public_key_from_cose(request[1])
        shared = protocol.kdf(self.key_agreement.exchange(ec.ECDH(), peer))
        salt_enc, salt_auth = request[2], request[3]
        if not protocol.verify(shared, salt_enc, salt_auth):
            raise CtapFailure(Err.INVALID_PARAMETER)
        salts = protocol.decrypt(shared, salt_enc)
        if len(salts) not in (32, 64):
            raise CtapFailure(Err.INVALID_LENGTH)
        output = b"".join(hmac.digest(cred_random, salts[i:i + 32], "sha256") for i in range(0, len(salts), 32))
        return protocol.encrypt(shared, output)

    # --- credentials -----------------------------------------------------------------------
    def _seal_credential(self, secret: dict[str, Any], rp_hash: bytes) -> bytes:
        nonce = secrets.token_bytes(12)
        body = cbor.encode(secret)
        return b"\x01" + nonce + AESGCM(self.device_key).encrypt(nonce, body, rp_hash)

    def _open_credential(self, cred_id: bytes, rp_hash: bytes) -> dict[str, Any] | None:
        if not isinstance(cred_id, bytes) or len(cred_id) < 30 or cred_id[0] != 1:
            return None
        try:
            body = AESGCM(self.device_key).decrypt(cred_id[1:13], cred_id[13:], rp_hash)
        except Exception:  # noqa: BLE001 - not ours, or for another rp
            return None
        decoded = cbor.decode(body)
        return decoded if isinstance(decoded, dict) else None

    # --- clientPIN --------------------------------------------------------------------------
    def client_pin(self, params: dict[Any, Any]) -> dict[int, Any] | None:
        sub = params[2]
        if sub == 0x01:
            return {3: self.pin_retries, 4: False}
        protocol = PROTOCOLS.get(params.get(1, 0))
        if protocol is None:
            raise CtapFailure(Err.INVALID_PARAMETER)
        if sub == 0x02:
            return {1: cose_public_key(self.key_agreement.public_key(), ECDH_ALG)}
        shared = protocol.kdf(self.key_agreement.exchange(ec.ECDH(), public_key_from_cose(params[3])))
        if sub == 0x03:  # setPIN
            if self.pin_hash is not None:
                raise CtapFailure(Err.NOT_ALLOWED)
            new_enc = params[5]
            if not protocol.verify(shared, new_enc, params[4]):
                raise CtapFailure(Err.PIN_AUTH_INVALID)
            self._set_pin(protocol, shared, new_enc)
            return None
        if self.pin_hash is None:
            raise CtapFailure(Err.PIN_NOT_SET)
        if sub == 0x04:  # changePIN
            new_enc, pin_hash_enc = params[5], params[6]
            if not protocol.verify(shared, new_enc + pin_hash_enc, params[4]):
                raise CtapFailure(Err.PIN_AUTH_INVALID)
            self._check_pin(protocol, shared, pin_hash_enc)
            self._set_pin(protocol, shared, new_enc)
            return None
        if sub in (0x05, 0x09):  # getPinToken, getPinUvAuthTokenUsingPinWithPermissions
            permissions = params.get(9, Permission.MAKE_CREDENTIAL | Permission.GET_ASSERTION) if sub == 0x09 \
                else Permission.MAKE_CREDENTIAL | Permission.GET_ASSERTION
            if sub == 0x09 and not permissions:
                raise CtapFailure(Err.INVALID_PARAMETER)
            if permissions & ~(Permission.MAKE_CREDENTIAL | Permission.GET_ASSERTION):
                raise CtapFailure(Err.UNAUTHORIZED_PERMISSION)
            self._check_pin(protocol, shared, params[6])
            self.pin_token = secrets.token_bytes(32)
            self.token_permissions = permissions
            self.token_rp = params.get(0x0A) if sub == 0x09 else None
            return {2: protocol.encrypt(shared, self.pin_token)}
        raise CtapFailure(Err.INVALID_PARAMETER)

    def _set_pin(self, protocol: PinProtocol, shared: bytes, new_enc: bytes) -> None:
        padded = protocol.decrypt(shared, new_enc)
        if len(padded) < 64:
            raise CtapFailure(Err.PIN_POLICY_VIOLATION)
        pin = padded.rstrip(b"\x00")
        if len(pin.decode("utf-8", "replace")) < 4 or len(pin) > 63:
            raise CtapFailure(Err.PIN_POLICY_VIOLATION)
        self.pin_hash = hashlib.sha256(pin).digest()[:16]
        self.pin_retries = PIN_RETRIES
        self.changed()

    def _check_pin(self, protocol: PinProtocol, shared: bytes, pin_hash_enc: bytes) -> None:
        if self.pin_retries == 0:
            raise CtapFailure(Err.PIN_BLOCKED)
        if self.mistakes_this_boot >= PIN_MISTAKES_PER_BOOT:
            raise CtapFailure(Err.PIN_AUTH_BLOCKED)
        self.pin_retries -= 1  # decrement before the comparison: pulling the key out does not help
        self.changed()
        given = protocol.decrypt(shared, pin_hash_enc)[:16]
        assert self.pin_hash is not None
        if not hmac.compare_digest(given, self.pin_hash):
            self.mistakes_this_boot += 1
            self.key_agreement = ec.generate_private_key(ec.SECP256R1())
            if self.pin_retries == 0:
                raise CtapFailure(Err.PIN_BLOCKED)
            if self.mistakes_this_boot >= PIN_MISTAKES_PER_BOOT:
                raise CtapFailure(Err.PIN_AUTH_BLOCKED)
            raise CtapFailure(Err.PIN_INVALID)
        self.pin_retries = PIN_RETRIES
        self.mistakes_this_boot = 0
        self.changed()

    # --- reset and selection ----------------------------------------------------------------
    def reset(self, params: dict[Any, Any]) -> None:
        self._touch()
        self.device_key = secrets.token_bytes(32)
        self.pin_hash = None
        self.pin_retries = PIN_RETRIES
        self.resident = []
        self._boot()
        self.changed()
        return None

    def selection(self, params: dict[Any, Any]) -> None:
        self._touch()
        return None
