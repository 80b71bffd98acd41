"""Virtual tokens as a device provider (``FactorContext.devices``), without pcscd.

For in-process tests and the factor conformance suite: each token's FIDO2 applet is reached
through python-fido2's own ``CtapPcscDevice`` over a ``DirectConnection``, so the NFC
framing code that real PC/SC keys use runs unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from fido2.pcsc import CtapPcscDevice

from .token import VirtualToken


class VirtualDevices:
    def __init__(self, tokens: list[VirtualToken]) -> None:
        self.tokens = tokens  # the tokens "plugged in"; tests change this list

    def connections(self, kind: str, serial: int | None = None) -> Iterator[Any]:
        for token in list(self.tokens):
            if serial is not None and token.serial != serial:
                continue
            if kind == "fido2":
                yield _SerialCtapPcscDevice(token.connection(), f"virtual token {token.serial}", token.serial)


class _SerialCtapPcscDevice(CtapPcscDevice):
    """A PC/SC CTAP device that knows its serial (read from the management applet on real keys)."""

    def __init__(self, connection: Any, name: str, serial: int) -> None:
        self._serial = serial
        super().__init__(connection, name)

    @property
    def serial_number(self) -> int | None:
        return self._serial
