"""Virtual tokens as a device provider (``FactorContext.devices``), without pcscd.

For in-process tests and the factor conformance suite: each token's FIDO2 applet is reached
through python-fido2's own ``CtapPcscDevice`` over a ``DirectConnection`` (the NFC framing
that PC/SC keys use) or its ``CtapHidDevice`` over the CTAPHID front end (the framing of USB
keys); the OTP and PIV applets through yubikit's smart-card sessions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from ..discovery import pcsc_gone, serial_pcsc_device
from .token import VirtualToken


class VirtualDevices:
    def __init__(self, tokens: list[VirtualToken], fido2_transport: str = "pcsc",
                 connect: Callable[[VirtualToken], Any] | None = None) -> None:
        self.tokens = tokens  # the tokens "plugged in"; tests change this list
        self.fido2_transport = fido2_transport  # "pcsc" (NFC framing) or "hid" (CTAPHID)
        self.connect = connect or VirtualToken.connection  # a token's pyscard-style connection

    def connections(self, kind: str, serial: int | None = None) -> Iterator[Any]:
        for token in list(self.tokens):
            if serial is not None and token.serial != serial:
                continue
            try:
                device = self._open(token, kind)
            except Exception:  # noqa: BLE001 - as discovery does: a token that does not answer is not there
                continue
            if device is not None:
                yield device

    def _open(self, token: VirtualToken, kind: str) -> Any | None:
        name = f"virtual token {token.serial}"
        if kind == "fido2" and self.fido2_transport == "hid":
            return token.hid_device()
        if kind == "fido2":
            return serial_pcsc_device(self.connect(token), name, token.serial)
        if kind in ("otp", "piv"):
            from ykman.pcsc import ScardSmartCardConnection

            from ..drivers.smartcard import SmartCardDevice

            return SmartCardDevice(ScardSmartCardConnection(self.connect(token)), name, token.serial, pcsc_gone())
        return None
