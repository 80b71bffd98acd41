"""A smart card in a PC/SC reader (or a YubiKey's OTP interface over USB HID), as discovery
hands it out for the kinds "otp" and "piv".

The factor opens its yubikit session (``YubiOtpSession``, ``PivSession``) on ``connection``
(a yubikit ``SmartCardConnection``, or an ``OtpConnection`` for OTP over HID); ``serial`` is
what the key reported (None for cards of other makers).
"""

from __future__ import annotations

from typing import Any

# "instruction / class not supported": a command reached another application than the one we
# selected. PC/SC access is shared, so another program (ykman, OpenSC, a browser) may select
# another application on the card between two of our commands.
WRONG_APPLICATION = (0x6D00, 0x6E00)


class SmartCardDevice:
    def __init__(self, connection: Any, name: str, serial: int | None) -> None:
        self.connection, self.name, self.serial = connection, name, serial

    def close(self) -> None:
        try:
            self.connection.close()
        except Exception:  # noqa: BLE001 - a device already gone
            pass

    def label(self, what: str = "YubiKey") -> str:
        return f"{what} {self.serial}" if self.serial else f"the card in {self.name}"
