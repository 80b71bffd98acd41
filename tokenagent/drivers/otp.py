"""The YubiKey OTP factor: HMAC-SHA1 challenge-response in slot 1 or 2 (yubikit).

Theory of operation. Enrolment picks a random 32-byte challenge; the factor's secret is the
key's 20-byte HMAC-SHA1 response to it, which the key computes with the slot's secret
(programmed by ``ykman otp chalresp``, by KeePassXC, or by ``--otp-program``, which asks
before it overwrites anything). The vault stores the slot, the challenge, the key's serial
and whether the slot wants a touch. Unlock sends the same challenge to the key with that
serial (or to each key present) and gets the same response. The secret never leaves the
key; a copy of the slot's HMAC key (another key programmed with it) works as a backup.

With ``--otp-rolling`` the challenge changes after every unlock: in the same session the key
also answers a fresh challenge, and the slot is re-wrapped with that answer
(``Factor.renewal``, ``vault.operations.roll_forward``), so a recorded response is of no use
for the next unlock. A rolling factor is the only factor of its slot. ``tokenagent rotate``
renews the challenge of any OTP slot on demand.

Keys are reached over PC/SC (the OTP application, AID A0000005272001) and, for YubiKeys with
their smart-card interface turned off, over USB HID (the keyboard interface KeePassXC uses):
yubikit's ``YubiOtpSession`` speaks both.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Mapping
from typing import Any

from ..errors import (
    Cancelled,
    TokenAbsent,
    TokenAgentError,
    TokenError,
    TokenNotFound,
    UsageError,
    VaultFormatError,
)
from ..factors.base import Factor, FactorContext, JSONValue, SecretRequest, register
from ..factors.params import expect_b64, expect_keys
from .smartcard import SmartCardDevice, opened_cards, pulled_out, wrong_application

CHALLENGE_LEN = 32
HMAC_KEY_LEN = 20


def _session(device: SmartCardDevice) -> Any:
    from yubikit.yubiotp import YubiOtpSession

    return YubiOtpSession(device.connection)


@register
class OtpFactor(Factor):
    type = "otp"
    is_token = True
    opens_on_plug = True

    def __init__(self, slot: int, challenge: bytes, serial: int | None, touch: bool, rolling: bool = False) -> None:
        self.slot, self.challenge, self.serial, self.touch, self.rolling = slot, challenge, serial, touch, rolling
        self._renewal: tuple[Factor, bytearray] | None = None

    @classmethod
    def from_params(cls, params: Mapping[str, JSONValue]) -> Factor:
        expect_keys(params, {"slot", "challenge", "serial", "touch", "rolling"}, "otp", optional={"rolling"})
        slot, serial, touch = params["slot"], params["serial"], params["touch"]
        if params.get("rolling", True) is not True:
            raise VaultFormatError("otp: rolling is true when present")
        if slot not in (1, 2) or isinstance(slot, bool):
            raise VaultFormatError("otp: slot must be 1 or 2")
        if serial is not None and (not isinstance(serial, int) or isinstance(serial, bool) or serial < 0):
            raise VaultFormatError("otp: serial must be a non-negative integer or null")
        if not isinstance(touch, bool):
            raise VaultFormatError("otp: touch must be a boolean")
        return cls(int(slot), expect_b64(params, "challenge", CHALLENGE_LEN, "otp"), serial, touch,  # type: ignore[arg-type]
                   "rolling" in params)

    def params(self) -> dict[str, JSONValue]:
        params: dict[str, JSONValue] = {"slot": self.slot, "challenge": base64.b64encode(self.challenge).decode(),
                                        "serial": self.serial, "touch": self.touch}
        if self.rolling:
            params["rolling"] = True
        return params

    def describe(self) -> str:
        who = f"YubiKey {self.serial}" if self.serial else "a YubiKey"
        extras = (", touch" if self.touch else "") + (", rolling challenge" if self.rolling else "")
        return f"YubiKey OTP challenge-response ({who}, slot {self.slot}{extras})"

    @classmethod
    def enroll(cls, ctx: FactorContext, options: Mapping[str, Any]) -> tuple[Factor, bytearray]:
        from yubikit.yubiotp import SLOT, HmacSha1SlotConfiguration

        slot = int(options.get("otp_slot") or 2)
        with opened_cards(ctx, "otp", options.get("serial")) as devices:
            if not devices:
                raise TokenNotFound("no YubiKey with its OTP application found: plug one in")
            if len(devices) > 1:
                raise UsageError(f"{len(devices)} YubiKeys are present: name one with --serial")
            device = devices[0]
            label = device.label()
            try:
                session = _session(device)
                state = session.get_config_state()
                if options.get("otp_program"):
                    in_use = state.is_configured(SLOT(slot))
                    question = (f"Program a new challenge-response secret into slot {slot} of {label}?"
                                + (" The slot is in use: what it holds now is lost for good." if in_use else ""))
                    if not (ctx.force or ctx.ui.confirm(question)):
                        raise Cancelled(f"slot {slot} of {label} was not changed (confirm at the prompt, or --force)")
                    key = _new_hmac_key(ctx, options)
                    try:
                        config = HmacSha1SlotConfiguration(bytes(key)).require_touch(bool(options.get("otp_touch")))
                        session.put_configuration(SLOT(slot), config)
                        if options.get("otp_show_secret"):
                            touch_flag = " --touch" if options.get("otp_touch") else ""
                            ctx.ui.show_secret_once(
                                f"Challenge-response secret now in slot {slot} of {label}. To make a backup key that"
                                f" opens the same slots, program it with: ykman otp chalresp{touch_flag} {slot} SECRET"
                                " (keep the secret offline, or destroy it once the backup is made):", key.hex())
                    finally:
                        key[:] = bytes(len(key))
                    state = session.get_config_state()
                elif not state.is_configured(SLOT(slot)):
                    raise UsageError(f"slot {slot} of {label} is empty: program it with --otp-program"
                                     " (or 'ykman otp chalresp --generate')")
                touch = bool(state.is_touch_triggered(SLOT(slot)))
                # A secret meant for several keys (shown, given, or declared so) binds the slot to no serial:
                # any key whose slot holds it answers.
                shared = any(options.get(k) for k in ("otp_show_secret", "otp_secret_given", "otp_any_key"))
                factor = cls(slot, secrets.token_bytes(CHALLENGE_LEN), None if shared else device.serial, touch,
                             bool(options.get("otp_rolling")))
                return factor, factor._respond(device, ctx, label)
            except TokenAgentError:
                raise
            except Exception as err:  # noqa: BLE001 - transport failures, the key refusing
                raise _failed(device, label, err) from None

    def _respond(self, device: SmartCardDevice, ctx: FactorContext, label: str,
                 challenge: bytes | None = None) -> bytearray:
        """The key's HMAC-SHA1 of ``challenge`` (default: this factor's). The OTP application is
        selected right before (PC/SC access is shared: another program may have selected another
        application since), and once more if the answer shows another application got the command."""
        from yubikit.core.smartcard import ApduError
        from yubikit.yubiotp import SLOT

        if self.touch:
            ctx.ui.notify("touch", f"Touch {label} (challenge-response, slot {self.slot})")
        slot, data = SLOT(self.slot), challenge or self.challenge
        try:
            return bytearray(_session(device).calculate_hmac_sha1(slot, data))
        except ApduError as err:
            if not wrong_application(err.sw):
                raise
        return bytearray(_session(device).calculate_hmac_sha1(slot, data))  # selected once more

    def unlock(self, ctx: FactorContext) -> bytearray:
        secret, renewed = self._use(ctx, renew=self.rolling)
        self._renewal = renewed
        return secret

    def renewal(self) -> tuple[Factor, bytearray] | None:
        renewed, self._renewal = self._renewal, None
        return renewed

    def rotate(self, ctx: FactorContext) -> tuple[Factor, bytearray, bytearray]:
        """A new challenge: the key answers the old one and the new one in the same session."""
        secret, renewed = self._use(ctx, renew=True)
        assert renewed is not None  # renew=True always prepares one
        return renewed[0], secret, renewed[1]

    def _use(self, ctx: FactorContext, renew: bool) -> tuple[bytearray, tuple[Factor, bytearray] | None]:
        """The response to this factor's challenge, and with ``renew`` a factor with a fresh challenge
        and its response, from the same key."""
        from yubikit.yubiotp import SLOT

        with opened_cards(ctx, "otp", self.serial) as devices:
            for device in devices:
                label = device.label()
                try:
                    if not _session(device).get_config_state().is_configured(SLOT(self.slot)):
                        continue
                    secret = self._respond(device, ctx, label)
                    if not renew:
                        return secret, None
                    fresh = OtpFactor(self.slot, secrets.token_bytes(CHALLENGE_LEN), self.serial, self.touch,
                                      self.rolling)
                    try:
                        return secret, (fresh, self._respond(device, ctx, label, fresh.challenge))
                    except BaseException:
                        secret[:] = bytes(len(secret))
                        raise
                except TokenAgentError:
                    raise
                except Exception as err:  # noqa: BLE001 - transport failures, the key refusing
                    raise _failed(device, label, err) from None
            who = f"YubiKey {self.serial}" if self.serial else "the YubiKey of this slot"
            raise TokenAbsent(f"{who} is not plugged in")


def _new_hmac_key(ctx: FactorContext, options: Mapping[str, Any]) -> bytearray:
    """The HMAC-SHA1 key to program: given (``--otp-secret-file``, hex as ykman prints it) or random."""
    if not options.get("otp_secret_given"):
        return bytearray(secrets.token_bytes(HMAC_KEY_LEN))
    text = ctx.ui.ask_secret(SecretRequest("otp-secret", "Challenge-response secret to program (40 hex digits)"))
    try:
        digits = bytes(text).strip().replace(b" ", b"")
        if len(digits) != 2 * HMAC_KEY_LEN or not all(c in b"0123456789abcdefABCDEF" for c in digits):
            raise UsageError(f"the OTP secret is {HMAC_KEY_LEN * 2} hex digits (as 'ykman otp chalresp' takes it);"
                             " the one given is not")
        return bytearray(bytes.fromhex(digits.decode()))
    finally:
        text[:] = bytes(len(text))


def _failed(device: SmartCardDevice, label: str, err: Exception) -> TokenError:
    return pulled_out(device, label, err) or TokenError(
        f"{label} refused the challenge-response ({type(err).__name__}); a slot set to need a touch times out"
        " after 15 s")
