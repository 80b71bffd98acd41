"""authenticatorCredentialManagement of the virtual FIDO2 authenticator (CTAP 2.1 §6.8).

Theory of operation. The command (0x0A, and 0x41, the CTAP 2.1 preview number a YubiKey 5
still answers) lists and edits the resident (discoverable) credentials. Every subcommand
but the two "get next" ones carries pinUvAuthParam = authenticate(pinUvAuthToken,
subCommand || CBOR(subCommandParams)) by a token with the cm permission (for 0x41 also a
token from the legacy getPinToken, as the preview allowed). Enumeration is stateful, as on
the key: enumerateRPsBegin / enumerateCredentialsBegin remember what is left, and the
GetNext subcommands walk it; any other command ends the walk.
"""

from __future__ import annotations

import base64
import hashlib
from typing import TYPE_CHECKING, Any

from fido2 import cbor

from .ctap_status import CtapFailure, Err
from .fido2_keys import open_credential

if TYPE_CHECKING:
    from .ctap2 import Fido2Applet

CMD_CREDENTIAL_MGMT = 0x0A
CMD_CREDENTIAL_MGMT_PREVIEW = 0x41
GET_CREDS_METADATA = 0x01
ENUMERATE_RPS_BEGIN = 0x02
ENUMERATE_RPS_NEXT = 0x03
ENUMERATE_CREDS_BEGIN = 0x04
ENUMERATE_CREDS_NEXT = 0x05
DELETE_CREDENTIAL = 0x06
UPDATE_USER = 0x07
PERMISSION_CM = 0x04
RESIDENT_CAPACITY = 100  # discoverable credentials a YubiKey 5 (firmware 5.7) holds


def user_entity(record: dict[str, Any]) -> dict[str, Any]:
    return {"id": base64.b64decode(record["user_id"]), **record["user"]}


def rp_entity(record: dict[str, Any]) -> dict[str, Any]:
    return {"id": record["rp"], **({"name": record["rp_name"]} if record.get("rp_name") else {})}


class CredentialManagement:
    def __init__(self, applet: Fido2Applet) -> None:
        self.applet = applet
        self._walk: tuple[int, list[dict[str, Any]]] | None = None  # next subcommand, what is left

    def forget_walk(self) -> None:
        self._walk = None

    def handle(self, params: dict[Any, Any], preview: bool) -> dict[int, Any] | None:
        sub = params.get(1)
        if not isinstance(sub, int):
            raise CtapFailure(Err.MISSING_PARAMETER)
        if sub in (ENUMERATE_RPS_NEXT, ENUMERATE_CREDS_NEXT):
            return self._next(sub)
        self._walk = None
        sub_params = params.get(2)
        if sub in (ENUMERATE_CREDS_BEGIN, DELETE_CREDENTIAL, UPDATE_USER) and not isinstance(sub_params, dict):
            raise CtapFailure(Err.MISSING_PARAMETER)
        message = bytes([sub]) + (cbor.encode(sub_params) if sub_params is not None else b"")
        if sub not in (GET_CREDS_METADATA, ENUMERATE_RPS_BEGIN, ENUMERATE_CREDS_BEGIN, DELETE_CREDENTIAL,
                       UPDATE_USER):
            raise CtapFailure(Err.INVALID_SUBCOMMAND)
        rp_hash = None
        if sub == ENUMERATE_CREDS_BEGIN:
            rp_hash = sub_params[1]  # type: ignore[index]
        elif sub in (DELETE_CREDENTIAL, UPDATE_USER):
            rp_hash = self._find(sub_params[2]["id"])[1]  # type: ignore[index]
        self._authorise(params, message, rp_hash, preview)
        if sub == GET_CREDS_METADATA:
            return {1: len(self.applet.resident), 2: RESIDENT_CAPACITY - len(self.applet.resident)}
        if sub == ENUMERATE_RPS_BEGIN:
            return self._rps()
        if sub == ENUMERATE_CREDS_BEGIN:
            return self._credentials(bytes(sub_params[1]))  # type: ignore[index]
        if sub == DELETE_CREDENTIAL:
            record = self._find(sub_params[2]["id"])[0]  # type: ignore[index]
            self.applet.resident.remove(record)
            self.applet.changed()
            return None
        self._update(sub_params)  # type: ignore[arg-type]
        return None

    def _authorise(self, params: dict[Any, Any], message: bytes, rp_hash: bytes | None, preview: bool) -> None:
        applet = self.applet
        if 4 not in params:
            raise CtapFailure(Err.PUAT_REQUIRED)
        applet.verify_auth_param(params, 4, 3, message)
        if not (applet.token_permissions & PERMISSION_CM or (preview and applet.token_legacy)):
            raise CtapFailure(Err.PIN_AUTH_INVALID)
        if applet.token_rp is not None and (
                rp_hash is None or hashlib.sha256(applet.token_rp.encode()).digest() != rp_hash):
            raise CtapFailure(Err.PIN_AUTH_INVALID)

    def _find(self, cred_id: Any) -> tuple[dict[str, Any], bytes]:
        if isinstance(cred_id, bytes):
            encoded = base64.b64encode(cred_id).decode()
            for record in self.applet.resident:
                if record["id"] == encoded:
                    return record, hashlib.sha256(record["rp"].encode()).digest()
        raise CtapFailure(Err.NO_CREDENTIALS)

    def _rps(self) -> dict[int, Any]:
        seen: dict[str, dict[str, Any]] = {}
        for record in self.applet.resident:
            seen.setdefault(record["rp"], record)
        if not seen:
            raise CtapFailure(Err.NO_CREDENTIALS)
        records = list(seen.values())
        self._walk = (ENUMERATE_RPS_NEXT, records[1:])
        return {**self._rp_answer(records[0]), 5: len(records)}

    @staticmethod
    def _rp_answer(record: dict[str, Any]) -> dict[int, Any]:
        return {3: rp_entity(record), 4: hashlib.sha256(record["rp"].encode()).digest()}

    def _credentials(self, rp_hash: bytes) -> dict[int, Any]:
        records = [r for r in reversed(self.applet.resident)
                   if hashlib.sha256(r["rp"].encode()).digest() == rp_hash]
        if not records:
            raise CtapFailure(Err.NO_CREDENTIALS)
        self._walk = (ENUMERATE_CREDS_NEXT, records[1:])
        return {**self._credential_answer(records[0]), 9: len(records)}

    def _credential_answer(self, record: dict[str, Any]) -> dict[int, Any]:
        cred_id = base64.b64decode(record["id"])
        key = open_credential(self.applet.device_key, hashlib.sha256(record["rp"].encode()).digest(), cred_id)
        assert key is not None, "a resident credential of this device opens"
        answer = {6: user_entity(record), 7: {"id": cred_id, "type": "public-key"}, 8: key.cose_public_key(),
                  10: key.protect}
        if record.get("lbk"):
            answer[11] = key.large_blob_key
        return answer

    def _next(self, sub: int) -> dict[int, Any]:
        if self._walk is None or self._walk[0] != sub or not self._walk[1]:
            self._walk = None
            raise CtapFailure(Err.NOT_ALLOWED)
        record = self._walk[1].pop(0)
        return self._rp_answer(record) if sub == ENUMERATE_RPS_NEXT else self._credential_answer(record)

    def _update(self, sub_params: dict[Any, Any]) -> None:
        record = self._find(sub_params[2]["id"])[0]
        user = sub_params.get(3)
        if not isinstance(user, dict) or user.get("id") != base64.b64decode(record["user_id"]):
            raise CtapFailure(Err.INVALID_PARAMETER)
        record["user"] = {k: v for k, v in user.items() if k in ("name", "displayName") and v}
        self.applet.changed()
