"""A smart card in a PC/SC reader (or a YubiKey's OTP interface over USB HID), as discovery
hands it out for the kinds "otp" and "piv".

The factor opens its yubikit session (``YubiOtpSession``, ``PivSession``) on ``connection``
(a yubikit ``SmartCardConnection``, or an ``OtpConnection`` for OTP over HID); ``serial`` is
what the key reported (None for cards of other makers).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ..errors import TokenRemoved
from ..factors.base import FactorContext


def wrong_application(sw: int | None) -> bool:
    """"Instruction / class not supported": a command reached another application than the one we
    selected. PC/SC access is shared, so another program (ykman, OpenSC, a browser) may select
    another application on the card between two of our commands."""
    from yubikit.core.smartcard import SW  # where it is needed: yubikit.core.smartcard is not light

    return sw in (SW.INVALID_INSTRUCTION, SW.CLASS_NOT_SUPPORTED)


class SmartCardDevice:
    """``gone``: the exceptions of this connection's transport that mean the card or its reader
    went away (discovery knows them: pyscard's for a PC/SC reader); a driver asks ``pulled_out``."""

    def __init__(self, connection: Any, name: str, serial: int | None,
                 gone: tuple[type[BaseException], ...] = (OSError,)) -> None:
        self.connection, self.name, self.serial, self.gone = connection, name, serial, gone

    def close(self) -> None:
        try:
            self.connection.close()
        except Exception:  # noqa: BLE001 - a device already gone
            pass

    def label(self, what: str = "YubiKey") -> str:
        return f"{what} {self.serial}" if self.serial else f"the card in {self.name}"


@contextmanager
def opened_cards(ctx: FactorContext, kind: str, serial: int | None) -> Iterator[list[SmartCardDevice]]:
    """The cards discovery offers for ``kind`` ("otp", "piv"), closed again on the way out."""
    devices = list(ctx.devices.connections(kind, serial)) if ctx.devices else []
    try:
        yield devices
    finally:
        for device in devices:
            device.close()


def pulled_out(device: SmartCardDevice, name: str, err: Exception) -> TokenRemoved | None:
    """A transport failure that means the card went away (or the reader did), else None."""
    if isinstance(err, device.gone):
        return TokenRemoved(f"{name} stopped answering ({type(err).__name__}): was it pulled out? Nothing was changed")
    return None
