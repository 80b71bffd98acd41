"""The virtual token's FIDO2 authenticator: CTAP 2.1 over the NFC (ISO 7816) framing.

Theory of operation. The applet (AID A0000006472F0001) takes NFCCTAP_MSG (INS 10) whose data
is a CTAP command byte and its CBOR parameters, and answers a CTAP status byte and CBOR.
Commands that need user presence run in a worker thread: the first answer is SW 9100 with a
keepalive status (UP needed), and the client polls with NFCCTAP_GETRESPONSE (INS 11), P1 11
cancelling, as python-fido2's ``CtapPcscDevice`` does.

What is implemented (CTAP 2.1, §6): getInfo (maxMsgSize 1200, maxCredentialCountInList 8,
maxCredentialIdLength 128, as a YubiKey 5 states them; a longer message answers
REQUEST_TOO_LARGE, a longer list LIMIT_EXCEEDED); makeCredential (ES256 and EdDSA;
non-resident credentials whose id is the credential sealed under a device key, bound to the
rp id hash (``fido2_keys``); resident credentials kept in the state; excludeList;
extensions hmac-secret, credProtect, credBlob, largeBlobKey and minPinLength; packed self
attestation); getAssertion (allowList or resident credentials, the newest first,
getNextAssertion for the rest; options up/uv; hmac-secret with one or two salts under PIN/UV
protocol 1 or 2 (``pin_protocols``), with separate CredRandom values with and without UV);
clientPIN (getPinRetries, PIN_NOT_SET without a PIN; getKeyAgreement, setPIN, changePIN,
getPinToken, getPinUvAuthTokenUsingPinWithPermissions with the mc, ga, cm, lbw and acfg
permissions) with 8 retries decremented before the comparison, 3 consecutive mistakes
blocking PIN use until a power cycle, and a blocked PIN at 0; credential management (0x0A and
the 0x41 preview, ``credman``); large blobs (``large_blobs``); authenticatorConfig
(toggleAlwaysUv, setMinPINLength, ``authenticator_config``); authenticatorReset (only within
5 s of power-up, as a YubiKey 5, and with a touch); authenticatorSelection. Not implemented:
U2F/CTAP1, enterprise attestation, built-in UV, CTAP 2.2 additions; docs/virtual-token.md
lists them.

The device's secrets are in its state file, which is what persists a token across plugs.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec
from fido2 import cbor

from .authenticator_config import (
    CMD_CONFIG,
    MAX_PIN_LENGTH,
    MAX_RPIDS_FOR_MIN_PIN,
    AuthenticatorConfig,
    PinPolicy,
)
from .card import SW_INS_NOT_SUPPORTED, Apdu, ApduStatus, Applet, Presence
from .credman import CMD_CREDENTIAL_MGMT, CMD_CREDENTIAL_MGMT_PREVIEW, RESIDENT_CAPACITY, CredentialManagement
from .ctap_status import CtapFailure, Err
from .fido2_keys import ALGORITHMS, CredentialKey, new_credential, open_credential
from .large_blobs import CMD_LARGE_BLOBS, MAX_SERIALIZED, LargeBlobs, initial_state
from .pin_protocols import PROTOCOLS, PinProtocol, cose_public_key, public_key_from_cose

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
RESET_WINDOW = 5.0  # seconds after power-up (plug, NFC field) in which a YubiKey 5 accepts authenticatorReset
ECDH_ALG = -25
MAX_CREDS_IN_LIST = 8  # getInfo 0x07 and 0x08 as a YubiKey 5 states them
MAX_CRED_ID_LENGTH = 128
MAX_CRED_BLOB_LENGTH = 32  # getInfo maxCredBlobLength; blobs are kept with resident credentials
NEXT_ASSERTION_TIMEOUT = 30.0  # seconds getNextAssertion may follow getAssertion (CTAP 2.1 §6.3)


class Permission:
    MAKE_CREDENTIAL = 0x01
    GET_ASSERTION = 0x02
    CREDENTIAL_MGMT = 0x04
    BIO_ENROLL = 0x08
    LARGE_BLOB_WRITE = 0x10
    AUTHENTICATOR_CFG = 0x20
    PERSISTENT_CREDENTIAL_MGMT = 0x40
    GRANTED = MAKE_CREDENTIAL | GET_ASSERTION | CREDENTIAL_MGMT | LARGE_BLOB_WRITE | AUTHENTICATOR_CFG  # what this authenticator's getInfo backs
    DEFINED = 0x7F  # CTAP 2.1 §6.5.5.7: defined but unbacked permissions are refused, undefined ones ignored


@dataclass
class PendingAssertions:
    """What getNextAssertion still has to give after a getAssertion that found several resident credentials."""

    since: float
    rp_hash: bytes
    client_data_hash: bytes
    flags: int
    extensions: dict[str, Any]
    rest: list[tuple[bytes, CredentialKey, dict[str, Any] | None]]


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
        self.pin_length: int | None = None  # in code points, for a minimum PIN length set later
        self.policy = PinPolicy()
        self.config = AuthenticatorConfig(self)
        self.pin_retries = PIN_RETRIES
        self.sign_count = 0
        self.resident: list[dict[str, Any]] = []
        self.credman = CredentialManagement(self)
        self.large_blob_array = initial_state()  # base64 of the serialized large-blob array
        self.large_blobs = LargeBlobs(self, MAX_MSG_SIZE - 64)
        self._next_assertions: PendingAssertions | None = None
        self._boot()
        self._worker: threading.Thread | None = None
        self._result: bytes | None = None
        self._cancel = threading.Event()

    # --- persistent state ---------------------------------------------------------------------
    def state_dict(self) -> dict[str, object]:
        return {"device_key": base64.b64encode(self.device_key).decode(),
                "pin_hash": base64.b64encode(self.pin_hash).decode() if self.pin_hash else None,
                "pin_retries": self.pin_retries, "sign_count": self.sign_count, "resident": self.resident,
                "large_blobs": self.large_blob_array, "pin_length": self.pin_length,
                "policy": self.policy.state_dict()}

    def load_state(self, state: dict[str, object]) -> None:
        self.device_key = base64.b64decode(str(state["device_key"]))
        pin_hash = state.get("pin_hash")
        self.pin_hash = base64.b64decode(str(pin_hash)) if pin_hash else None
        self.pin_retries = int(state.get("pin_retries", PIN_RETRIES))  # type: ignore[call-overload]
        self.sign_count = int(state.get("sign_count", 0))  # type: ignore[call-overload]
        self.resident = list(state.get("resident", []))  # type: ignore[call-overload]
        self.large_blob_array = str(state.get("large_blobs") or initial_state())
        pin_length = state.get("pin_length")
        self.pin_length = int(pin_length) if isinstance(pin_length, int) else None
        self.policy = PinPolicy.from_state(state.get("policy"))

    # --- power and selection -----------------------------------------------------------------
    def _boot(self) -> None:
        self.key_agreement = ec.generate_private_key(ec.SECP256R1())
        self.pin_token = secrets.token_bytes(32)
        self.token_permissions = 0
        self.token_rp: str | None = None
        self.token_legacy = False  # from getPinToken (no permissions asked): the preview credMgmt takes it
        self.mistakes_this_boot = 0
        self._next_assertions = None
        self.credman.forget_walk()
        self.large_blobs.forget_write()
        self.powered_at = time.monotonic()

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
        if len(message) > MAX_MSG_SIZE:
            return bytes([Err.REQUEST_TOO_LARGE])  # above getInfo's maxMsgSize: the client splits its lists
        command, body = message[0], message[1:]
        try:
            params = cbor.decode(body) if body else {}
        except Exception:  # noqa: BLE001 - any malformed CBOR
            return bytes([Err.INVALID_CBOR])
        if not isinstance(params, dict):
            return bytes([Err.CBOR_UNEXPECTED_TYPE])
        handler: Callable[[dict[Any, Any]], dict[int, Any] | None] | None = {
            0x01: self.make_credential, 0x02: self.get_assertion, 0x04: self.get_info,
            0x06: self.client_pin, 0x07: self.reset, 0x08: self.get_next_assertion, 0x0B: self.selection,
            CMD_CREDENTIAL_MGMT: lambda p: self.credman.handle(p, preview=False),
            CMD_CREDENTIAL_MGMT_PREVIEW: lambda p: self.credman.handle(p, preview=True),
            CMD_LARGE_BLOBS: self.large_blobs.handle,
            CMD_CONFIG: self.config.handle,
        }.get(command)
        if handler is None:
            return bytes([Err.INVALID_COMMAND])
        if command != 0x08:
            self._next_assertions = None
        if command not in (CMD_CREDENTIAL_MGMT, CMD_CREDENTIAL_MGMT_PREVIEW):
            self.credman.forget_walk()
        try:
            result = handler(params)
        except CtapFailure as failure:
            return bytes([failure.code])
        except (KeyError, TypeError, ValueError, AttributeError, IndexError):
            return bytes([Err.INVALID_PARAMETER])
        return bytes([Err.SUCCESS]) + (cbor.encode(result) if result is not None else b"")

    def get_info(self, params: dict[Any, Any]) -> dict[int, Any]:
        return {
            0x01: ["FIDO_2_0", "FIDO_2_1_PRE", "FIDO_2_1"],
            0x02: ["credBlob", "credProtect", "hmac-secret", "largeBlobKey", "minPinLength"],
            0x03: AAGUID,
            0x04: {"rk": True, "up": True, "plat": False, "credMgmt": True, "clientPin": self.pin_hash is not None,
                   "largeBlobs": True, "pinUvAuthToken": True, "setMinPINLength": True,
                   "makeCredUvNotRqd": not self.policy.always_uv, "authnrCfg": True,
                   "alwaysUv": self.policy.always_uv, "credentialMgmtPreview": True},
            0x05: MAX_MSG_SIZE,
            0x06: [2, 1],
            0x07: MAX_CREDS_IN_LIST,
            0x08: MAX_CRED_ID_LENGTH,
            0x09: ["nfc", "usb"],
            0x0A: [{"type": "public-key", "alg": alg} for alg in ALGORITHMS],
            0x0B: MAX_SERIALIZED,
            0x0C: self.policy.force_change,
            0x0D: self.policy.min_length,
            0x0F: MAX_CRED_BLOB_LENGTH,
            0x10: MAX_RPIDS_FOR_MIN_PIN,
            0x14: RESIDENT_CAPACITY - len(self.resident),
        }

    def _touch(self) -> None:
        if not self.presence.wait(TOUCH_TIMEOUT, self._cancel.is_set):
            raise CtapFailure(Err.KEEPALIVE_CANCEL if self._cancel.is_set() else Err.USER_ACTION_TIMEOUT)

    def verify_auth_param(self, params: dict[Any, Any], auth_key: int, proto_key: int, message: bytes) -> None:
        """Check pinUvAuthParam = authenticate(pinUvAuthToken, message) under the request's PIN/UV protocol."""
        protocol = PROTOCOLS.get(params.get(proto_key, 0))
        if protocol is None:
            raise CtapFailure(Err.MISSING_PARAMETER if proto_key not in params else Err.INVALID_PARAMETER)
        if self.pin_hash is None:
            raise CtapFailure(Err.PIN_NOT_SET)
        if not isinstance(params[auth_key], bytes) or not protocol.verify(self.pin_token, message, params[auth_key]):
            raise CtapFailure(Err.PIN_AUTH_INVALID)

    def _check_uv(self, params: dict[Any, Any], auth_key: int, proto_key: int, client_data_hash: bytes,
                  permission: int, rp_id: str) -> bool:
        """Verify pinUvAuthParam (if given): True when the request carries user verification."""
        if params.get(auth_key) is None:
            return False
        self.verify_auth_param(params, auth_key, proto_key, client_data_hash)
        if not self.token_permissions & permission or (self.token_rp not in (None, rp_id)):
            raise CtapFailure(Err.PIN_AUTH_INVALID)
        self.token_rp = rp_id
        return True

    def _require_uv_if_always(self, params: dict[Any, Any], auth_key: int) -> None:
        if self.policy.always_uv and params.get(auth_key) is None:  # CTAP 2.1 §6.1.2 step 6, §6.2.2 step 6
            raise CtapFailure(Err.PUAT_REQUIRED if self.pin_hash is not None else Err.OPERATION_DENIED)

    @staticmethod
    def _credential_list(params: dict[Any, Any], key: int) -> list[Any]:
        listed = params.get(key) or []
        if not isinstance(listed, list):
            raise CtapFailure(Err.CBOR_UNEXPECTED_TYPE)
        if len(listed) > MAX_CREDS_IN_LIST:
            raise CtapFailure(Err.LIMIT_EXCEEDED)  # getInfo's maxCredentialCountInList
        return listed

    def make_credential(self, params: dict[Any, Any]) -> dict[int, Any]:
        client_data_hash, rp, user, algs = params[1], params[2], params[3], params[4]
        rp_id = rp["id"]
        offered = [a.get("alg") for a in algs if a.get("type") == "public-key"]
        alg = next((a for a in offered if a in ALGORITHMS), None)  # the rp's order of preference
        if alg is None:
            raise CtapFailure(Err.UNSUPPORTED_ALGORITHM)
        options = params.get(7, {})
        if options.get("up") is False:
            raise CtapFailure(Err.INVALID_OPTION)
        if options.get("uv"):
            raise CtapFailure(Err.UNSUPPORTED_OPTION)  # no built-in UV: use the PIN
        self._require_uv_if_always(params, 8)
        uv = self._check_uv(params, 8, 9, client_data_hash, Permission.MAKE_CREDENTIAL, rp_id)
        extensions = params.get(6, {})
        cred_protect = int(extensions.get("credProtect", 1))
        if cred_protect not in (1, 2, 3):
            raise CtapFailure(Err.INVALID_PARAMETER)
        cred_blob = extensions.get("credBlob")
        if cred_blob is not None and not isinstance(cred_blob, bytes):
            raise CtapFailure(Err.INVALID_PARAMETER)
        keep_blob = cred_blob is not None and len(cred_blob) <= MAX_CRED_BLOB_LENGTH and bool(options.get("rk"))
        large_blob_key = extensions.get("largeBlobKey")
        if large_blob_key is not None and (large_blob_key is not True or not options.get("rk")):
            raise CtapFailure(Err.INVALID_OPTION)  # only true, and only for resident credentials (§12.3)
        rp_hash = hashlib.sha256(rp_id.encode()).digest()
        for excluded in self._credential_list(params, 5):
            found = open_credential(self.device_key, rp_hash, excluded.get("id", b""))
            if found is not None and (found.protect < 3 or uv):
                self._touch()
                raise CtapFailure(Err.CREDENTIAL_EXCLUDED)
        user_id = base64.b64encode(user["id"]).decode()
        resident = bool(options.get("rk"))
        if resident and len(self.resident) >= RESIDENT_CAPACITY and not any(
                r["rp"] == rp_id and r["user_id"] == user_id for r in self.resident):
            raise CtapFailure(Err.KEY_STORE_FULL)
        self._touch()
        cred_id, key = new_credential(self.device_key, rp_hash, alg, cred_protect)
        if resident:  # a new credential for the same rp and user replaces the old one (CTAP 2.1 §6.1.2 step 17)
            self.resident = [r for r in self.resident if not (r["rp"] == rp_id and r["user_id"] == user_id)]
            self.resident.append({"rp": rp_id, "rp_name": rp.get("name"), "user_id": user_id,
                                  "user": {k: v for k, v in user.items() if k in ("name", "displayName") and v},
                                  "id": base64.b64encode(cred_id).decode(),
                                  **({"lbk": True} if large_blob_key else {}),
                                  **({"blob": base64.b64encode(cred_blob).decode()} if cred_blob and keep_blob
                                     else {})})
        ext_out: dict[str, Any] = {}
        if extensions.get("hmac-secret") is True:
            ext_out["hmac-secret"] = True
        if cred_blob is not None:
            ext_out["credBlob"] = keep_blob  # false for a non-resident credential or a blob over 32 bytes
        if "credProtect" in extensions:
            ext_out["credProtect"] = cred_protect
        if extensions.get("minPinLength") is True and rp_id in self.policy.min_length_rp_ids:
            ext_out["minPinLength"] = self.policy.min_length
        flags = 0x01 | (0x04 if uv else 0) | 0x40 | (0x80 if ext_out else 0)
        self.sign_count += 1
        self.changed()
        attested = AAGUID + len(cred_id).to_bytes(2, "big") + cred_id + cbor.encode(key.cose_public_key())
        auth_data = rp_hash + bytes([flags]) + self.sign_count.to_bytes(4, "big") + attested
        if ext_out:
            auth_data += cbor.encode(ext_out)
        answer = {1: "packed", 2: auth_data, 3: {"alg": alg, "sig": key.sign(auth_data + client_data_hash)}}
        if large_blob_key:
            answer[5] = key.large_blob_key
        return answer

    def get_assertion(self, params: dict[Any, Any]) -> dict[int, Any]:
        rp_id, client_data_hash = params[1], params[2]
        options = params.get(5, {})
        if options.get("uv"):
            raise CtapFailure(Err.UNSUPPORTED_OPTION)
        up = options.get("up", True)
        self._require_uv_if_always(params, 6)
        uv = self._check_uv(params, 6, 7, client_data_hash, Permission.GET_ASSERTION, rp_id)
        rp_hash = hashlib.sha256(rp_id.encode()).digest()
        candidates: list[tuple[bytes, Any, dict[str, Any] | None]] = []
        allow = self._credential_list(params, 3)
        if allow:
            for descriptor in allow:
                cred_id = descriptor.get("id", b"")
                opened = open_credential(self.device_key, rp_hash, cred_id)
                if opened is not None and (opened.protect < 3 or uv):
                    candidates.append((cred_id, opened, None))
        else:
            for entry in reversed(self.resident):  # the most recent first (CTAP 2.1 §6.2.2 step 12)
                cred_id = base64.b64decode(entry["id"])
                opened = open_credential(self.device_key, rp_hash, cred_id)
                if entry["rp"] == rp_id and opened is not None and (opened.protect == 1 or uv):
                    candidates.append((cred_id, opened, entry))
        if not candidates:
            raise CtapFailure(Err.NO_CREDENTIALS)
        if up:
            self._touch()
        extensions = params.get(4, {})
        flags = (0x01 if up else 0) | (0x04 if uv else 0)
        first = self._assertion(rp_hash, flags, client_data_hash, extensions, *candidates[0])
        if len(candidates) > 1 and not allow:
            first[5] = len(candidates)
            self._next_assertions = PendingAssertions(time.monotonic(), rp_hash, client_data_hash, flags,
                                                      extensions, candidates[1:])
        return first

    def get_next_assertion(self, params: dict[Any, Any]) -> dict[int, Any]:
        pending = self._next_assertions
        if pending is None or not pending.rest or time.monotonic() - pending.since > NEXT_ASSERTION_TIMEOUT:
            self._next_assertions = None
            raise CtapFailure(Err.NOT_ALLOWED)
        pending.since = time.monotonic()
        return self._assertion(pending.rp_hash, pending.flags, pending.client_data_hash, pending.extensions,
                               *pending.rest.pop(0))

    def _assertion(self, rp_hash: bytes, flags: int, client_data_hash: bytes, extensions: dict[str, Any],
                   cred_id: bytes, key: CredentialKey, record: dict[str, Any] | None) -> dict[int, Any]:
        ext_out: dict[str, Any] = {}
        encoded = base64.b64encode(cred_id).decode()
        stored = next((r for r in self.resident if r["id"] == encoded), None)
        if extensions.get("credBlob") is True:
            ext_out["credBlob"] = base64.b64decode(stored["blob"]) if stored and "blob" in stored else b""
        hmac_request = extensions.get("hmac-secret")
        if hmac_request is not None:
            uv = bool(flags & 0x04)
            ext_out["hmac-secret"] = self._hmac_secret(hmac_request, key.cred_random_uv if uv else key.cred_random)
        flags |= 0x80 if ext_out else 0
        self.sign_count += 1
        self.changed()
        auth_data = rp_hash + bytes([flags]) + self.sign_count.to_bytes(4, "big")
        if ext_out:
            auth_data += cbor.encode(ext_out)
        result: dict[int, Any] = {1: {"type": "public-key", "id": cred_id}, 2: auth_data,
                                  3: key.sign(auth_data + client_data_hash)}
        if record is not None:  # names only after user verification (CTAP 2.1 §6.2.2 step 12)
            result[4] = {"id": base64.b64decode(record["user_id"]), **(record["user"] if flags & 0x04 else {})}
        if extensions.get("largeBlobKey") is True and stored is not None and stored.get("lbk"):
            result[7] = key.large_blob_key
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

    # --- clientPIN --------------------------------------------------------------------------
    def client_pin(self, params: dict[Any, Any]) -> dict[int, Any] | None:
        sub = params[2]
        if sub == 0x01:  # getPINRetries: a key without a PIN has no retry counter (CTAP 2.1 §6.5.5.2, YubiKey 5)
            if self.pin_hash is None:
                raise CtapFailure(Err.PIN_NOT_SET)
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
            self._set_pin(protocol, shared, new_enc, must_differ=self.policy.force_change)
            return None
        if sub in (0x05, 0x09):  # getPinToken, getPinUvAuthTokenUsingPinWithPermissions
            permissions = Permission.MAKE_CREDENTIAL | Permission.GET_ASSERTION
            if sub == 0x09:
                permissions = params.get(9, 0)
                if not permissions:
                    raise CtapFailure(Err.INVALID_PARAMETER)
                if permissions & Permission.DEFINED & ~Permission.GRANTED:
                    raise CtapFailure(Err.UNAUTHORIZED_PERMISSION)  # be, lbw, acfg, pcmr: not in getInfo
            self._check_pin(protocol, shared, params[6])
            if self.policy.force_change:
                raise CtapFailure(Err.PIN_INVALID)  # the PIN must be changed first (authenticatorConfig)
            self.pin_token = secrets.token_bytes(32)
            self.token_permissions = permissions
            self.token_rp = params.get(0x0A) if sub == 0x09 else None
            self.token_legacy = sub == 0x05
            return {2: protocol.encrypt(shared, self.pin_token)}
        raise CtapFailure(Err.INVALID_PARAMETER)

    def _set_pin(self, protocol: PinProtocol, shared: bytes, new_enc: bytes, must_differ: bool = False) -> None:
        padded = protocol.decrypt(shared, new_enc)
        if len(padded) < 64:
            raise CtapFailure(Err.PIN_POLICY_VIOLATION)
        pin = padded.rstrip(b"\x00")
        length = len(pin.decode("utf-8", "replace"))
        if length < self.policy.min_length or len(pin) > MAX_PIN_LENGTH:
            raise CtapFailure(Err.PIN_POLICY_VIOLATION)
        pin_hash = hashlib.sha256(pin).digest()[:16]
        if must_differ and self.pin_hash is not None and hmac.compare_digest(pin_hash, self.pin_hash):
            raise CtapFailure(Err.PIN_POLICY_VIOLATION)  # forcePINChange wants another PIN
        self.pin_hash, self.pin_length = pin_hash, length
        self.pin_retries = PIN_RETRIES
        self.policy.force_change = False
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
        # CTAP 2.1 §6.6 lets an authenticator refuse a reset some time after power-up; a YubiKey 5 takes it only
        # within 5 s of being plugged in or put on the reader (ykman: "re-insert your YubiKey"), then with a touch.
        if time.monotonic() - self.powered_at > RESET_WINDOW:
            raise CtapFailure(Err.NOT_ALLOWED)
        self._touch()
        self.device_key = secrets.token_bytes(32)
        self.pin_hash, self.pin_length = None, None
        self.policy = PinPolicy()
        self.pin_retries = PIN_RETRIES
        self.resident = []
        self.large_blob_array = initial_state()
        self._boot()
        self.changed()
        return None

    def selection(self, params: dict[Any, Any]) -> None:
        self._touch()
        return None
