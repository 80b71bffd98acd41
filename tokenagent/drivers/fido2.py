"""The FIDO2 factor: a secret from a key's hmac-secret extension (CTAP 2.1 §12.5).

Theory of operation. Enrolment makes a non-resident ES256 credential for the rp id
(``tokenagent`` by default) with hmac-secret and credProtect level 2 (usable only with its
credential id), then asks the key for HMAC(CredRandom, salt) with a fresh random 32-byte
salt: that output is the factor's secret. The vault stores the rp id, the credential id, the
salt, whether user verification (the key's PIN) was used, and the AAGUID. The key holds
two CredRandom values, one used with UV and one without, so a slot enrolled with
``--fido2-uv`` gives its secret only when the PIN is given, and a slot enrolled without it
keeps giving the same secret when a PIN is later set on the key (tokenagent never sends the
PIN for such a slot).

With ``--fido2-prf`` the stored salt is a WebAuthn PRF input: the key is given
SHA-256("WebAuthn PRF" || 0x00 || salt), as browsers do for the ``prf`` extension, so a web
page on the same rp id with the same credential and input derives the same 32 bytes.

Unlock first finds the key that holds the credential without touching anything: a
getAssertion with ``up=false`` on every key present (pre-flight; no touch, no PIN). Only
that key is asked, once, for the hmac-secret with user presence ("touch your key").

PIN rules (shared by every token type): the retry counter is read first; with one try left
tokenagent refuses unless ``--force``; a wrong PIN is reported, never sent again; a key
that has seen 3 wrong PINs since it was plugged in must be re-plugged; there is no
automatic reset. A touch that does not come within ``--touch-timeout`` cancels cleanly.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import secrets
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from fido2.ctap import STATUS, CtapDevice, CtapError
from fido2.ctap2 import Ctap2
from fido2.ctap2.base import args as ctap2_args
from fido2.ctap2.pin import ClientPin, PinProtocol, PinProtocolV1, PinProtocolV2

from ..errors import (
    NotSupported,
    PinAuthBlocked,
    PinBlocked,
    PinInvalid,
    PinRequired,
    TokenAbsent,
    TokenAgentError,
    TokenError,
    TokenNotFound,
    TokenRemoved,
    TouchTimeout,
    VaultFormatError,
)
from ..factors.base import Factor, FactorContext, JSONValue, SecretRequest, register
from ..factors.params import expect_b64, expect_keys
from .pinrules import check_retries

DEFAULT_RP = "tokenagent"
PRF_CONTEXT = b"WebAuthn PRF\x00"  # WebAuthn Level 3, the prf extension's salt mapping
SALT_LEN = 32
CRED_PROTECT = 2  # userVerificationOptionalWithCredentialIDList
ES256 = -7
DEFAULT_TOUCH_TIMEOUT = 30.0
PREFLIGHT_ATTEMPTS = 5  # transport errors (a card reset just after insertion) are retried, 0.3 s apart


def _devices(ctx: FactorContext, serial: int | None) -> list[CtapDevice]:
    if ctx.devices is None:
        return []
    return list(ctx.devices.connections("fido2", serial))


def _close(devices: list[CtapDevice]) -> None:
    for device in devices:
        try:
            device.close()
        except Exception:  # noqa: BLE001 - closing a gone device
            pass


def _protocol(ctap: Ctap2) -> PinProtocol:
    return PinProtocolV2() if 2 in ctap.info.pin_uv_protocols else PinProtocolV1()


@contextmanager
def _touch_wait(ctx: FactorContext, message: str) -> Iterator[threading.Event]:
    """An event that cancels the request after the touch timeout; tells the user to touch once."""
    cancel = threading.Event()
    timeout = float(ctx.options.get("touch_timeout") or DEFAULT_TOUCH_TIMEOUT)
    timer = threading.Timer(timeout, cancel.set)
    timer.daemon = True
    timer.start()
    try:
        yield cancel
    except CtapError as err:
        if err.code in (CtapError.ERR.KEEPALIVE_CANCEL, CtapError.ERR.USER_ACTION_TIMEOUT):
            raise TouchTimeout(f"no touch within {timeout:.0f} s; nothing was changed") from None
        raise
    finally:
        timer.cancel()


def _keepalive(ctx: FactorContext, message: str) -> Any:
    told = [False]

    def on_keepalive(status: int) -> None:
        if status == STATUS.UPNEEDED and not told[0]:
            told[0] = True
            ctx.ui.notify("touch", message)

    return on_keepalive


def pin_token(ctap: Ctap2, ctx: FactorContext, name: str, rp: str) -> tuple[PinProtocol, bytes]:
    """A PIN/UV token for makeCredential and getAssertion on ``rp``, by the PIN rules above."""
    if not ctap.info.options.get("clientPin"):
        raise PinRequired(f"{name} has no PIN set, but this slot needs one (was the key reset?);"
                          " set a PIN with 'ykman fido access change-pin' or use another slot")
    protocol = _protocol(ctap)
    client_pin = ClientPin(ctap, protocol)
    retries, _ = client_pin.get_pin_retries()
    check_retries(retries, ctx, name, "PIN", "only a reset of its FIDO2 application (which destroys this"
                  " slot) helps: open the vault with another slot")
    pin = ctx.ui.ask_secret(SecretRequest("pin", f"PIN for {name}", retries=retries))
    try:
        token = client_pin.get_pin_token(
            pin.decode("utf-8"), ClientPin.PERMISSION.MAKE_CREDENTIAL | ClientPin.PERMISSION.GET_ASSERTION, rp)
    except CtapError as err:
        if err.code == CtapError.ERR.PIN_INVALID:
            raise PinInvalid(f"wrong PIN for {name} ({retries - 1} tries left); not retried") from None
        if err.code == CtapError.ERR.PIN_AUTH_BLOCKED:
            raise PinAuthBlocked(f"{name} refuses PINs after 3 wrong ones: remove and re-insert the key") from None
        if err.code == CtapError.ERR.PIN_BLOCKED:
            raise PinBlocked(f"the PIN of {name} is now blocked") from None
        if err.code == CtapError.ERR.PIN_POLICY_VIOLATION:
            raise PinInvalid(f"that is not a valid PIN for {name}") from None
        raise
    finally:
        pin[:] = bytes(len(pin))
    return protocol, token


def hmac_secret(ctap: Ctap2, ctx: FactorContext, name: str, rp: str, credential: bytes, salt: bytes,
                uv: bool) -> bytearray:
    """One assertion with user presence: HMAC(CredRandom, salt) from the key; two salts give 64 bytes."""
    token = None
    protocol = _protocol(ctap)
    if uv:
        protocol, token = pin_token(ctap, ctx, name, rp)
    response = ctap.client_pin(protocol.VERSION, ClientPin.CMD.GET_KEY_AGREEMENT)
    key_agreement, shared = protocol.encapsulate(response[ClientPin.RESULT.KEY_AGREEMENT])
    salt_enc = protocol.encrypt(shared, salt)
    extension = {"hmac-secret": {1: key_agreement, 2: salt_enc, 3: protocol.authenticate(shared, salt_enc),
                                 4: protocol.VERSION}}
    client_data_hash = secrets.token_bytes(32)
    message = f"Touch your FIDO2 key ({name})"
    with _touch_wait(ctx, message) as cancel:
        assertion = ctap.get_assertion(
            rp, client_data_hash, [{"type": "public-key", "id": credential}], extension, None,
            protocol.authenticate(token, client_data_hash) if token else None,
            protocol.VERSION if token else None, event=cancel, on_keepalive=_keepalive(ctx, message))
    flags = assertion.auth_data.flags
    if uv and not flags & assertion.auth_data.FLAG.UV:
        raise TokenError(f"{name} did not verify the user although the PIN was given")
    output = (assertion.auth_data.extensions or {}).get("hmac-secret")
    if not isinstance(output, bytes):
        raise NotSupported(f"{name} did not answer the hmac-secret extension")
    return bytearray(protocol.decrypt(shared, output)[:len(salt)])


def _select_one(devices: list[CtapDevice], ctx: FactorContext) -> CtapDevice:
    """Several keys and no --serial: the one the user touches (authenticatorSelection)."""
    if len(devices) == 1:
        return devices[0]
    ctx.ui.notify("touch", f"{len(devices)} FIDO2 keys are present: touch the one to use")
    chosen: list[CtapDevice] = []
    done = threading.Event()

    def ask(device: CtapDevice) -> None:
        try:
            Ctap2(device).selection(event=done)
            if not done.is_set():
                chosen.append(device)
                done.set()
        except CtapError:
            pass

    threads = [threading.Thread(target=ask, args=(d,), daemon=True) for d in devices]
    for thread in threads:
        thread.start()
    done.wait(float(ctx.options.get("touch_timeout") or DEFAULT_TOUCH_TIMEOUT))
    done.set()
    for thread in threads:
        thread.join(2)
    if not chosen:
        raise TouchTimeout("no key was touched; name one with --serial")
    return chosen[0]


@register
class Fido2Factor(Factor):
    type = "fido2"
    is_token = True
    opens_on_plug = True

    def __init__(self, rp: str, credential: bytes, salt: bytes, uv: bool, aaguid: str, prf: bool = False) -> None:
        self.rp, self.credential, self.salt, self.uv, self.aaguid, self.prf = rp, credential, salt, uv, aaguid, prf

    @classmethod
    def from_params(cls, params: Mapping[str, JSONValue]) -> Factor:
        expect_keys(params, {"rp", "credential", "salt", "uv", "aaguid", "prf"}, "fido2", optional={"prf"})
        rp, uv, aaguid = params["rp"], params["uv"], params["aaguid"]
        if params.get("prf", True) is not True:
            raise VaultFormatError("fido2: prf is true when present")
        if not isinstance(rp, str) or not 0 < len(rp) <= 253:
            raise VaultFormatError("fido2: rp must be a non-empty string")
        if not isinstance(uv, bool) or not isinstance(aaguid, str) or len(aaguid) != 32:
            raise VaultFormatError("fido2: uv must be a boolean and aaguid 32 hex digits")
        credential = expect_b64(params, "credential", None, "fido2")
        if not 16 <= len(credential) <= 1024:
            raise VaultFormatError("fido2: the credential id must be 16 to 1024 bytes")
        return cls(rp, credential, expect_b64(params, "salt", SALT_LEN, "fido2"), uv, aaguid, "prf" in params)

    def params(self) -> dict[str, JSONValue]:
        params: dict[str, JSONValue] = {"rp": self.rp, "credential": base64.b64encode(self.credential).decode(),
                                        "salt": base64.b64encode(self.salt).decode(), "uv": self.uv,
                                        "aaguid": self.aaguid}
        if self.prf:
            params["prf"] = True
        return params

    def _key_salts(self, *inputs: bytes) -> bytes:
        """The hmac-secret salts for these inputs: as they are, or mapped as WebAuthn's PRF extension
        maps its inputs (SHA-256 of "WebAuthn PRF", 0x00, input), so that a web page using PRF on
        the same rp id and credential gets the same 32 bytes."""
        if not self.prf:
            return b"".join(inputs)
        return b"".join(hashlib.sha256(PRF_CONTEXT + data).digest() for data in inputs)

    @classmethod
    def enroll(cls, ctx: FactorContext, options: Mapping[str, Any]) -> tuple[Factor, bytearray]:
        rp = str(options.get("fido2_rp") or DEFAULT_RP)
        uv = bool(options.get("fido2_uv"))
        devices = _devices(ctx, options.get("serial"))
        if not devices:
            raise TokenNotFound("no FIDO2 key found: plug one in (or check its permissions: docs/agent.md, udev)")
        try:
            known = [cls.from_params(d["params"]) for d in ctx.options.get("enrolled_factors", [])
                     if d.get("type") == cls.type]
            fresh = [d for d in devices if not any(isinstance(k, cls) and k._holds(d) for k in known)]
            if not fresh:
                raise TokenError("every FIDO2 key present is already enrolled in this vault; plug in the new key"
                                 " (a backup must be another key)")
            if len(fresh) < len(devices):
                ctx.ui.notify("info", "skipping the FIDO2 key already enrolled in this vault")
            device = _select_one(fresh, ctx)
            name = _name(device)
            ctap = Ctap2(device)
            if "hmac-secret" not in ctap.info.extensions:
                raise NotSupported(f"{name} does not support the hmac-secret extension")
            protocol, token = (None, None)
            if uv:
                protocol, token = pin_token(ctap, ctx, name, rp)
            client_data_hash = secrets.token_bytes(32)
            message = f"Touch your FIDO2 key ({name}) to enrol it"
            with _touch_wait(ctx, message) as cancel:
                attestation = ctap.make_credential(
                    client_data_hash, {"id": rp, "name": "tokenagent"},
                    {"id": secrets.token_bytes(16), "name": "tokenagent", "displayName": "tokenagent vault"},
                    [{"type": "public-key", "alg": ES256}], None,
                    {"hmac-secret": True, "credProtect": CRED_PROTECT}, {"rk": False},
                    protocol.authenticate(token, client_data_hash) if protocol and token else None,
                    protocol.VERSION if protocol else None, event=cancel, on_keepalive=_keepalive(ctx, message))
            data = attestation.auth_data.credential_data
            if data is None or not (attestation.auth_data.extensions or {}).get("hmac-secret"):
                raise NotSupported(f"{name} made a credential without hmac-secret")
            factor = cls(rp, bytes(data.credential_id), secrets.token_bytes(SALT_LEN), uv, bytes(data.aaguid).hex(),
                         bool(options.get("fido2_prf")))
            return factor, hmac_secret(ctap, ctx, name, rp, factor.credential, factor._key_salts(factor.salt), uv)
        except CtapError as err:
            raise TokenError(f"the FIDO2 key refused: {err.code.name if hasattr(err.code, 'name') else err.code}") \
                from None
        except TokenAgentError:
            raise
        except Exception as err:  # noqa: BLE001 - the transport failed: pulled out, reader gone
            raise _removed("the FIDO2 key", err) from None
        finally:
            _close(devices)

    def _holds(self, device: CtapDevice) -> bool:
        return self._find([device]) is not None

    def _find(self, devices: list[CtapDevice]) -> tuple[CtapDevice, Ctap2] | None:
        """Pre-flight: the key holding this credential, asked with up=false (no touch, no PIN). Only
        whether it answers matters, so its assertion is not parsed (python-fido2's ``send_cbor``,
        the request ``get_assertion`` would send)."""
        for device in devices:
            for _attempt in range(PREFLIGHT_ATTEMPTS):
                try:
                    ctap = Ctap2(device)
                    ctap.send_cbor(Ctap2.CMD.GET_ASSERTION, ctap2_args(
                        self.rp, secrets.token_bytes(32), [{"type": "public-key", "id": self.credential}], None,
                        {"up": False}))
                    return device, ctap
                except CtapError as err:
                    if err.code == CtapError.ERR.OTHER and hasattr(device, "_select"):
                        # a PC/SC status word, not a CTAP answer: another program selected another
                        # application on the card between our commands; select FIDO again, ask again
                        with contextlib.suppress(Exception):
                            device._select()  # python-fido2's re-selection of the applet
                        time.sleep(0.1)
                        continue
                    break  # the key answered: not its credential
                except Exception:  # noqa: BLE001 - a transport hiccup (card reset just after insertion)
                    time.sleep(0.3)
        return None

    def unlock(self, ctx: FactorContext) -> bytearray:
        return self._secret(ctx, self._key_salts(self.salt))

    def _secret(self, ctx: FactorContext, salts: bytes) -> bytearray:
        devices = _devices(ctx, ctx.options.get("serial"))
        try:
            found = self._find(devices)
            if found is None:
                raise TokenAbsent("the FIDO2 key of this slot is not plugged in" if devices
                              else "no FIDO2 key is plugged in")
            device, ctap = found
            name = _name(device)
            if not self.uv and ctap.info.options.get("alwaysUv"):
                ctx.ui.notify("warning", f"{name} now requires user verification for everything; this slot was"
                                         " enrolled without it and will not open with this key")
            try:
                return hmac_secret(ctap, ctx, name, self.rp, self.credential, salts, self.uv)
            except CtapError as err:
                raise TokenError(f"{name} refused: {getattr(err.code, 'name', err.code)}") from None
            except TokenAgentError:
                raise
            except Exception as err:  # noqa: BLE001 - the transport failed: pulled out, reader gone
                raise _removed(name, err) from None
        finally:
            _close(devices)

    def needs_pin(self) -> bool:
        return bool(self.uv)

    def describe(self) -> str:
        return f"FIDO2 key (hmac-secret, rp {self.rp}{', PIN' if self.uv else ''}{', WebAuthn PRF' if self.prf else ''})"

    def rotate(self, ctx: FactorContext) -> tuple[Factor, bytearray, bytearray]:
        """A new salt, in one touch: the key answers for the old salt and the new one together."""
        new_salt = secrets.token_bytes(SALT_LEN)
        both = self._secret(ctx, self._key_salts(self.salt, new_salt))
        try:
            renewed = Fido2Factor(self.rp, self.credential, new_salt, self.uv, self.aaguid, self.prf)
            return renewed, bytearray(both[:SALT_LEN]), bytearray(both[SALT_LEN:])
        finally:
            both[:] = bytes(len(both))


def _removed(name: str, err: Exception) -> TokenRemoved:
    return TokenRemoved(f"{name} stopped answering ({type(err).__name__}): was it pulled out? Nothing was"
                        " changed; plug it in and try again")


def device_name(device: CtapDevice) -> str:
    """A FIDO2 key as a person knows it: its product name and serial, and where it is (the PC/SC
    reader holding it, or the hidraw path), e.g. "FIDO2 key (serial 6001) in reader 'Virtual PCD 00 00'"."""
    serial = getattr(device, "serial_number", None)
    label = getattr(device, "product_name", None) or "FIDO2 key"
    if serial:
        label += f" (serial {serial})"
    reader = getattr(device, "reader", None)  # set by tokenagent.discovery for PC/SC devices
    path = getattr(getattr(device, "descriptor", None), "path", None)
    if reader:
        return f"{label} in reader '{reader}'"
    return f"{label} at {path}" if isinstance(path, str) and path else label


_name = device_name
