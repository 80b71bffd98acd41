"""authenticatorConfig of the virtual FIDO2 authenticator (CTAP 2.1 §6.11) and the PIN policy it sets.

Theory of operation. The command (0x0D) changes settings kept in the token's state:
toggleAlwaysUv (every makeCredential and getAssertion then needs user verification) and
setMinPINLength (a minimum PIN length that can only grow, the rp ids that may read it through
the minPinLength extension, and forcePINChange, set also when the new minimum is longer than
the current PIN). While forcePINChange is set, a correct PIN gives no token (PIN_INVALID, as
python-fido2's device tests expect of a YubiKey) until changePIN sets another PIN.
enableEnterpriseAttestation is not offered (no "ep" option). Each subcommand carries
pinUvAuthParam = authenticate(token, 32 x FF || 0D || subCommand || CBOR(subCommandParams)) by
a token with the acfg permission, unless no PIN is set and alwaysUv is off. A reset restores
the defaults.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from fido2 import cbor

from .ctap_status import CtapFailure, Err

if TYPE_CHECKING:
    from .ctap2 import Fido2Applet

CMD_CONFIG = 0x0D
TOGGLE_ALWAYS_UV = 0x02
SET_MIN_PIN_LENGTH = 0x03
PERMISSION_ACFG = 0x20
DEFAULT_MIN_PIN_LENGTH = 4
MAX_PIN_LENGTH = 63
MAX_RPIDS_FOR_MIN_PIN = 8  # getInfo maxRPIDsForSetMinPINLength


@dataclass
class PinPolicy:
    min_length: int = DEFAULT_MIN_PIN_LENGTH
    always_uv: bool = False
    force_change: bool = False
    min_length_rp_ids: list[str] = field(default_factory=list)

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_state(cls, state: Any) -> PinPolicy:
        if not isinstance(state, dict):
            return cls()
        return cls(int(state.get("min_length", DEFAULT_MIN_PIN_LENGTH)), bool(state.get("always_uv")),
                   bool(state.get("force_change")), [str(r) for r in state.get("min_length_rp_ids", [])])


class AuthenticatorConfig:
    def __init__(self, applet: Fido2Applet) -> None:
        self.applet = applet

    def handle(self, params: dict[Any, Any]) -> None:
        applet, policy = self.applet, self.applet.policy
        sub, sub_params = params.get(1), params.get(2)
        if sub not in (TOGGLE_ALWAYS_UV, SET_MIN_PIN_LENGTH):
            raise CtapFailure(Err.INVALID_SUBCOMMAND if isinstance(sub, int) else Err.MISSING_PARAMETER)
        if params.get(4) is not None or applet.pin_hash is not None or policy.always_uv:
            if params.get(4) is None:
                raise CtapFailure(Err.PUAT_REQUIRED)
            message = b"\xff" * 32 + bytes([CMD_CONFIG, sub]) + (cbor.encode(sub_params) if sub_params else b"")
            applet.verify_auth_param(params, 4, 3, message)
            if not applet.token_permissions & PERMISSION_ACFG:
                raise CtapFailure(Err.PIN_AUTH_INVALID)
        if sub == TOGGLE_ALWAYS_UV:
            policy.always_uv = not policy.always_uv
        else:
            self._set_min_pin_length(sub_params or {})
        applet.changed()

    def _set_min_pin_length(self, sub_params: dict[Any, Any]) -> None:
        applet, policy = self.applet, self.applet.policy
        new_length = sub_params.get(1, policy.min_length)
        rp_ids = sub_params.get(2)
        force = sub_params.get(3, False)
        if not isinstance(new_length, int) or not isinstance(force, bool):
            raise CtapFailure(Err.INVALID_PARAMETER)
        if new_length < policy.min_length or new_length > MAX_PIN_LENGTH:
            raise CtapFailure(Err.PIN_POLICY_VIOLATION)  # the minimum only grows
        if force and applet.pin_hash is None:
            raise CtapFailure(Err.PIN_NOT_SET)
        if rp_ids is not None:
            if not isinstance(rp_ids, list) or len(rp_ids) > MAX_RPIDS_FOR_MIN_PIN:
                raise CtapFailure(Err.INVALID_LENGTH)
            policy.min_length_rp_ids = [str(r) for r in rp_ids]
        policy.min_length = new_length
        if force or (applet.pin_hash is not None and (applet.pin_length or 0) < new_length):
            policy.force_change = True
