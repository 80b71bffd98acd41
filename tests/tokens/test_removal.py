"""DESIGN §6 #13 at every command boundary: the token is pulled out after the n-th command of
an unlock, for every n. Each time the factor ends with a clean token error (never another
exception, never a secret), no PIN is sent twice, and the token works again once it is back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from scripted import context  # type: ignore[import-not-found]
from sharedcard import PulledCard
from ykman.pcsc import ScardSmartCardConnection
from yubikit.piv import DEFAULT_MANAGEMENT_KEY, KEY_TYPE, SLOT, PivSession
from yubikit.yubiotp import SLOT as OTP_SLOT
from yubikit.yubiotp import HmacSha1SlotConfiguration, YubiOtpSession

from tokenagent.drivers.fido2 import Fido2Factor
from tokenagent.drivers.otp import OtpFactor
from tokenagent.drivers.piv import PivFactor
from tokenagent.errors import TokenAgentError
from tokenagent.factors.base import Factor, FactorContext
from tokenagent.virtual.provider import VirtualDevices
from tokenagent.virtual.token import VirtualToken


def prepared(kind: str, tmp_path: Path) -> tuple[VirtualToken, Factor, bytearray]:
    tok = VirtualToken(tmp_path / f"{kind}.json", serial=9900)
    if kind == "otp":
        YubiOtpSession(ScardSmartCardConnection(tok.connection())).put_configuration(
            OTP_SLOT.TWO, HmacSha1SlotConfiguration(bytes(range(20))))
        factor, secret = OtpFactor.enroll(ctx(tok, None), {})
    elif kind == "piv":
        piv = PivSession(ScardSmartCardConnection(tok.connection()))
        piv.authenticate(DEFAULT_MANAGEMENT_KEY)
        piv.generate_key(SLOT.KEY_MANAGEMENT, KEY_TYPE.ECCP256)
        factor, secret = PivFactor.enroll(ctx(tok, None), {"piv_existing": True})
    else:
        factor, secret = Fido2Factor.enroll(ctx(tok, None), {})
    return tok, factor, secret


def ctx(tok: VirtualToken, card: PulledCard | None) -> FactorContext:
    context_ = context(pin=[b"123456"])
    context_.devices = VirtualDevices([tok], connect=(lambda _: card) if card is not None else None)
    return context_


@pytest.mark.parametrize("kind", ["fido2", "otp", "piv"])
def test_pulled_out_after_every_command(kind: str, tmp_path: Path) -> None:
    tok, factor, secret = prepared(kind, tmp_path)
    counting = PulledCard(tok.card, None)
    assert factor.unlock(ctx(tok, counting)) == secret
    commands = counting.sent
    assert commands >= 3
    outcomes: dict[str, int] = {}
    for after in range(commands):
        tok.replug()  # a fresh power-up: no state left over from the last round
        before = tok.piv.pin.remaining
        card = PulledCard(tok.card, after)
        try:
            result: Any = factor.unlock(ctx(tok, card))
        except TokenAgentError as err:
            outcomes[type(err).__name__] = outcomes.get(type(err).__name__, 0) + 1
        else:
            raise AssertionError(f"pulled out after {after} of {commands} commands, yet unlock gave {len(result)} bytes")
        assert tok.piv.pin.remaining == before  # a PIN sent at most once, and never a wrong one
    tok.replug()
    assert factor.unlock(ctx(tok, None)) == secret  # back in: it works
    # before the token has answered it is "not plugged in" (TokenAbsent); once it has, "pulled out"
    assert sum(outcomes.values()) == commands and set(outcomes) <= {"TokenRemoved", "TokenAbsent"}, outcomes
    assert outcomes.get("TokenRemoved", 0) >= 4, outcomes
