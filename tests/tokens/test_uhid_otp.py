"""The OTP HID interface of the uhid transport, driven by yubikit's own OtpProtocol in process.

The kernel half (feature reports through /dev/uhid and hidraw) runs in the desk tier
(tests/desk); here yubikit's framing meets the device end directly.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from pathlib import Path

from yubikit.core.otp import OtpConnection
from yubikit.management import ManagementSession
from yubikit.yubiotp import SLOT, HmacSha1SlotConfiguration, YubiOtpSession

from tokenagent.virtual.token import VirtualToken
from tokenagent.virtual.uhid import FIDO_REPORT_DESCRIPTOR, OTP_REPORT_DESCRIPTOR, UhidToken, create2_event


class FeatureReports(OtpConnection):
    """What ykman's hidraw connection does (HIDIOCGFEATURE / HIDIOCSFEATURE), minus the kernel."""

    def __init__(self, uhid: UhidToken) -> None:
        self.front = uhid.otp_front

    def receive(self) -> bytes:
        time.sleep(0.001)
        return self.front.get_feature()

    def send(self, data: bytes) -> None:
        assert len(data) == 8
        self.front.set_feature(data)

    def close(self) -> None:
        pass


def test_yubikit_programs_and_runs_hmac_sha1_over_feature_reports(tmp_path: Path) -> None:
    token = VirtualToken(tmp_path / "t.json", serial=7654321)
    connection = FeatureReports(UhidToken(token))
    session = YubiOtpSession(connection)
    assert session.get_serial() == 7654321
    assert tuple(session.version) == tuple(token.otp.version)
    key = bytes(range(20))
    session.put_configuration(SLOT.TWO, HmacSha1SlotConfiguration(key))
    assert session.get_config_state().is_configured(SLOT.TWO)
    challenge = b"tokenagent desk challenge"
    assert session.calculate_hmac_sha1(SLOT.TWO, challenge) == hmac.digest(key, challenge, hashlib.sha1)
    info = ManagementSession(connection).read_device_info()
    assert info.serial == 7654321


def test_rejected_command_leaves_the_status_unchanged(tmp_path: Path) -> None:
    token = VirtualToken(tmp_path / "t.json", serial=7654321)
    session = YubiOtpSession(FeatureReports(UhidToken(token)))
    try:
        session.calculate_hmac_sha1(SLOT.ONE, b"x")  # slot 1 is empty: the key answers nothing
    except Exception as err:  # noqa: BLE001 - yubikit's CommandRejectedError
        assert "No data" in str(err) or type(err).__name__ == "CommandRejectedError"
    else:
        raise AssertionError("an empty slot answered a challenge")


def test_create2_event_layout() -> None:
    event = create2_event("Yubico YubiKey OTP+FIDO", "123", 0x1050, 0x0403, FIDO_REPORT_DESCRIPTOR)
    assert len(event) == 4 + 4372  # struct uhid_event, whose largest member is uhid_create2_req
    assert int.from_bytes(event[4 + 256 : 4 + 258], "little") == len(FIDO_REPORT_DESCRIPTOR)
    assert event[4 + 276 : 4 + 276 + len(FIDO_REPORT_DESCRIPTOR)] == FIDO_REPORT_DESCRIPTOR
    assert OTP_REPORT_DESCRIPTOR.endswith(bytes.fromhex("0903750895 08b102c0".replace(" ", "")))
