"""The virtual OTP applet's stored configurations: every mode yubikit and ykman program, swap,
update, delete and NDEF, with the status bits `ykman otp info` and yubikit's ConfigState read."""

from __future__ import annotations

import base64
import json
import os
import sys
from pathlib import Path

import pytest
from pcscd import PrivatePcscd, TokenProcess
from test_piv_virtual import first_reader, tool, ykman  # type: ignore[import-not-found]
from ykman.pcsc import ScardSmartCardConnection
from yubikit.core.smartcard import ApduError
from yubikit.yubiotp import (
    SLOT,
    HmacSha1SlotConfiguration,
    HotpSlotConfiguration,
    StaticPasswordSlotConfiguration,
    UpdateConfiguration,
    YubiOtpSession,
    YubiOtpSlotConfiguration,
)

from tokenagent.virtual.token import VirtualToken

ACCESS = bytes.fromhex("010203040506")


def session(token: VirtualToken) -> YubiOtpSession:
    return YubiOtpSession(ScardSmartCardConnection(token.connection()))


def modes(state: Path) -> dict[str, str]:
    return {slot: config["mode"] for slot, config in json.loads(state.read_text())["otp"]["slots"].items()}


def test_every_mode_is_stored_with_its_status_bits(tmp_path: Path) -> None:
    token = VirtualToken(tmp_path / "t.json", serial=8801)
    otp = session(token)
    otp.put_configuration(SLOT.ONE, YubiOtpSlotConfiguration(b"\x01" * 6, os.urandom(6), os.urandom(16)))
    otp.put_configuration(SLOT.TWO, HmacSha1SlotConfiguration(os.urandom(20)))  # no touch
    state = otp.get_config_state()
    assert state.is_configured(SLOT.ONE) and state.is_touch_triggered(SLOT.ONE)  # a touch types the OTP
    assert state.is_configured(SLOT.TWO) and not state.is_touch_triggered(SLOT.TWO)
    assert modes(token.state_path) == {"1": "yubico-otp", "2": "challenge-response-hmac-sha1"}
    otp.put_configuration(SLOT.TWO, HotpSlotConfiguration(os.urandom(20)).digits8(True))
    otp.put_configuration(SLOT.ONE, StaticPasswordSlotConfiguration(bytes(range(4, 20))))
    assert modes(token.state_path) == {"1": "static-password", "2": "oath-hotp"}
    with pytest.raises(ApduError):  # not a challenge-response slot
        otp.calculate_hmac_sha1(SLOT.TWO, b"challenge")
    otp.swap_slots()
    assert modes(token.state_path) == {"1": "oath-hotp", "2": "static-password"}
    otp.delete_slot(SLOT.ONE)
    state = session(token).get_config_state()
    assert not state.is_configured(SLOT.ONE) and state.is_configured(SLOT.TWO)


def test_update_keeps_the_secret_and_access_codes_hold(tmp_path: Path) -> None:
    token = VirtualToken(tmp_path / "t.json", serial=8802)
    otp = session(token)
    key = os.urandom(20)
    otp.put_configuration(SLOT.ONE, HmacSha1SlotConfiguration(key))
    before = otp.calculate_hmac_sha1(SLOT.ONE, b"challenge")
    otp.update_configuration(SLOT.ONE, UpdateConfiguration().serial_api_visible(True), ACCESS)
    assert otp.calculate_hmac_sha1(SLOT.ONE, b"challenge") == before  # the secret stays
    with pytest.raises(ApduError):  # the access code set by the update now guards the slot
        otp.delete_slot(SLOT.ONE)
    otp.delete_slot(SLOT.ONE, ACCESS)
    assert not otp.get_config_state().is_configured(SLOT.ONE)
    otp.put_configuration(SLOT.TWO, HmacSha1SlotConfiguration(key).allow_update(False))
    with pytest.raises(Exception):  # noqa: B017 - refused: not programmed to allow updates
        otp.update_configuration(SLOT.TWO, UpdateConfiguration())


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_ykman_programs_swaps_updates_deletes_and_sets_ndef(pcscd: PrivatePcscd, tokens: list[TokenProcess],
                                                          tmp_path: Path) -> None:
    state = tmp_path / "a.json"
    tokens.append(TokenProcess(pcscd, state, 6707))
    reader = first_reader(pcscd)

    def otp(*args: str) -> str:
        done = ykman(pcscd, reader, "otp", *args)
        assert done.returncode == 0, (args, done.stdout, done.stderr)
        return done.stdout

    assert otp("info").splitlines() == ["Slot 1: empty", "Slot 2: empty"]
    otp("static", "1", "--generate", "--force")
    otp("hotp", "2", "JBSWY3DPEHPK3PXP", "--force")
    assert otp("info").splitlines() == ["Slot 1: programmed", "Slot 2: programmed"]
    assert modes(state) == {"1": "static-password", "2": "oath-hotp"}
    otp("swap", "--force")
    assert modes(state) == {"1": "oath-hotp", "2": "static-password"}
    otp("yubiotp", "2", "--serial-public-id", "--generate-private-id", "--generate-key", "--force")
    assert modes(state) == {"1": "oath-hotp", "2": "yubico-otp"}
    touch = tool(pcscd, sys.executable, "-c", _TOUCH_BITS, reader)
    assert touch.returncode == 0 and touch.stdout.split() == ["True", "True"], touch
    otp("settings", "1", "--new-access-code", ACCESS.hex(), "--force")
    refused = ykman(pcscd, reader, "otp", "delete", "1", "--force")
    assert refused.returncode != 0 and "Failed to write" in refused.stderr, refused
    otp("--access-code", ACCESS.hex(), "delete", "1", "--force")
    otp("ndef", "2", "--prefix", "https://example.org/otp#")
    record = base64.b64decode(json.loads(state.read_text())["otp"]["ndef"]["2"])
    assert record[1] == ord("U") and record[2] == 4 and record[3:3 + record[0] - 1] == b"example.org/otp#"
    assert otp("info").splitlines() == ["Slot 1: empty", "Slot 2: programmed"]


_TOUCH_BITS = """
import sys
from smartcard.System import readers
from ykman.pcsc import ScardSmartCardConnection
from yubikit.yubiotp import SLOT, YubiOtpSession
reader = next(r for r in readers() if str(r) == sys.argv[1])
state = YubiOtpSession(ScardSmartCardConnection(reader.createConnection())).get_config_state()
print(state.is_touch_triggered(SLOT.ONE), state.is_touch_triggered(SLOT.TWO))
"""
