"""Virtual tokens as a device provider (``FactorContext.devices``), without pcscd.

For in-process tests and the factor conformance suite: each token's FIDO2 applet is reached
through python-fido2's own ``CtapPcscDevice`` over a ``DirectConnection``, so the NFC
framing code that real PC/SC keys use runs unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ..discovery import serial_pcsc_device
from .token import VirtualToken


class VirtualDevices:
    def __init__(self, tokens: list[VirtualToken]) -> None:
        self.tokens = tokens  # the tokens "plugged in"; tests change this list

    def connections(self, kind: str, serial: int | None = None) -> Iterator[Any]:
        for token in list(self.tokens):
            if serial is not None and token.serial != serial:
                continue
            if kind == "fido2":
                yield serial_pcsc_device(token.connection(), f"virtual token {token.serial}", token.serial)
            elif kind in ("otp", "piv"):
                from ykman.pcsc import ScardSmartCardConnection

                from ..drivers.smartcard import SmartCardDevice

                yield SmartCardDevice(ScardSmartCardConnection(token.connection()), f"virtual token {token.serial}",
                                      token.serial)
