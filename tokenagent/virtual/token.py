"""A virtual token: a card with its applets, its state file, its touch model and transports.

Theory of operation. ``VirtualToken`` owns one ``VirtualCard`` (FIDO2, OTP, PIV, Security Domain and management
applets) and a JSON
state file (serial, firmware version, each applet's ``state_dict``), rewritten atomically
after every persistent change, so a token keeps its keys, PIN and counters across plugs and
processes. Transports only move APDUs: ``DirectConnection`` looks like a pyscard connection
(what python-fido2's ``CtapPcscDevice`` and yubikit take), for in-process tests;
``tokenagent.virtual.vpcd`` plugs the same card into a real pcscd; ``hid_device`` gives
python-fido2's ``CtapHidDevice`` over the CTAPHID front end (``tokenagent.virtual.ctaphid``).
"""

from __future__ import annotations

import json
import os
import secrets
import threading
from pathlib import Path
from typing import Any

from .card import Applet, Presence, TouchMode, VirtualCard
from .ctap2 import Fido2Applet
from .ctaphid import HidFrontEnd, hid_device
from .management import ManagementApplet
from .otp import OtpApplet
from .piv import PivApplet
from .scp import SecurityDomain

# The ATR of a YubiKey 5 NFC held to an NFC reader ("YubiKey" in its historical bytes). The token
# speaks CTAP over the NFC framing, so clients that tell USB from NFC by the ATR (ykman, yubikit)
# must see a contactless card: over USB they would look for the USB product id, which a PC/SC
# reader does not have.
ATR = bytes.fromhex("3B8D80018073C021C057597562694B6579F9")
VERSION = (5, 7, 2)


class VirtualToken:
    def __init__(self, state_path: str | os.PathLike[str], serial: int | None = None,
                 touch: TouchMode | str = TouchMode.AUTO, touch_delay: float = 0.5) -> None:
        self.state_path = Path(state_path)
        self.presence = Presence(TouchMode(touch), touch_delay)
        self.fido2 = Fido2Applet(self.presence)
        self.otp = OtpApplet(self.presence, 0, VERSION)
        self.piv = PivApplet(self.presence, 0, VERSION)
        self.security_domain = SecurityDomain(self.piv._attestation)
        self.applets: list[Applet] = [self.fido2, self.otp, self.piv, self.security_domain]
        self._lock = threading.Lock()
        state = self._read()
        if state is None:
            self.serial = serial if serial is not None else 10_000_000 + secrets.randbelow(80_000_000)
            self.save()
        else:
            self.serial = int(state["serial"])
            if serial is not None and serial != self.serial:
                raise ValueError(f"{self.state_path} holds token {self.serial}, not {serial}")
            for applet in self.applets:
                if applet.state_key in state:
                    applet.load_state(state[applet.state_key])
        self.otp.serial = self.piv.serial = self.serial
        for applet in self.applets:
            applet.changed = self.save
        # the factory keys a YubiKey leaves with: PIV attestation (under this token's root CA) and SCP11b
        self.piv._attestation()
        self.security_domain.factory_keys()
        self.card = VirtualCard([*self.applets, ManagementApplet(self.serial, VERSION)], ATR,
                                secure_channels=self.security_domain)
        self.security_domain.card = self.card
        self.card.power_on()
        self.hid = HidFrontEnd(self.fido2, VERSION)

    def replug(self) -> None:
        """Pull the token out and put it back: a power cycle (PIN sessions and 3-strike counters reset)."""
        self.hid.unplug()
        self.card.power_off()
        self.card.power_on()
        self.hid.plug()

    def _read(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.state_path.read_text())
        except FileNotFoundError:
            return None

    def save(self) -> None:
        """Write the state file atomically (temp, fsync, rename), mode 0600."""
        with self._lock:
            state: dict[str, Any] = {"serial": self.serial, "version": list(VERSION)}
            for applet in self.applets:
                state[applet.state_key] = applet.state_dict()
            temp = self.state_path.with_name(f".{self.state_path.name}.tmp")
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "w") as out:
                json.dump(state, out)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temp, self.state_path)

    def touch(self) -> None:
        self.presence.touch()

    def connection(self) -> DirectConnection:
        return DirectConnection(self.card)

    def hid_device(self) -> Any:
        """python-fido2's ``CtapHidDevice`` on this token's CTAPHID transport (in process)."""
        return hid_device(self.hid, self.serial)


class DirectConnection:
    """The card as a pyscard ``CardConnection``: ``CtapPcscDevice(DirectConnection(card), name)``."""

    def __init__(self, card: VirtualCard) -> None:
        self.card = card
        self.connected = False

    def connect(self, *args: object, **kwargs: object) -> None:
        self.connected = True  # as with a shared PC/SC connection: no power cycle

    def disconnect(self) -> None:
        self.connected = False

    def release(self) -> None:
        self.disconnect()

    def getATR(self) -> list[int]:  # pyscard's name
        return list(self.card.atr)

    def transmit(self, apdu: list[int], protocol: object = None) -> tuple[list[int], int, int]:
        if not self.connected:
            raise OSError("the virtual card is not connected")
        response = self.card.transmit(bytes(apdu))
        return list(response[:-2]), response[-2], response[-1]
