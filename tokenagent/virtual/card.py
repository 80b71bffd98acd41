"""ISO 7816-4 card framework of the virtual token: APDU parsing, applet selection,
command chaining, response chaining, power cycles, and the user-presence ("touch") model.

Theory of operation. A ``VirtualCard`` holds applets, each known by its AID. The
transport (vpcd client, in-process connection) hands it raw C-APDUs and power events;
it returns raw R-APDUs. SELECT (INS A4, P1 04) picks the applet whose AID starts with
the given bytes, as real cards do for partial AIDs. Command chaining (CLA bit 0x10)
is assembled here so applets see whole commands; long responses are cut to the
expected length and the rest is served by GET RESPONSE (INS C0) after SW 61xx, which
is what yubikit and python-fido2's PC/SC transport expect. Applets that need their
own response protocol (CTAP's NFCCTAP_GETRESPONSE) handle those instructions and
set ``own_chaining``.

A power cycle (vpcd power off/on or reset) deselects the applet and calls
``Applet.power_cycle``: CTAP's "3 wrong PINs until power cycle" rule lives there.

Secure channels (SCP03, SCP11b; tokenagent.virtual.scp) are opened on the selected applet by
the Security Domain's handshake commands (CLA 80/84, INS 50, 82, 88) and checked here: inside
one, each whole command (after chaining) is unwrapped before its applet sees it and a 9000
answer is wrapped before response chaining; a SELECT or power cycle closes the channel.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

# Status words (ISO 7816-4)
SW_OK = 0x9000
SW_BYTES_REMAINING = 0x6100  # | remaining, capped at 0xFF
SW_WRONG_LENGTH = 0x6700
SW_SECURITY_STATUS_NOT_SATISFIED = 0x6982
SW_AUTH_METHOD_BLOCKED = 0x6983
SW_DATA_INVALID = 0x6984
SW_CONDITIONS_NOT_SATISFIED = 0x6985
SW_COMMAND_NOT_ALLOWED = 0x6986
SW_INCORRECT_PARAMETERS = 0x6A80
SW_FUNCTION_NOT_SUPPORTED = 0x6A81
SW_FILE_NOT_FOUND = 0x6A82
SW_NO_SPACE = 0x6A84
SW_REFERENCE_DATA_NOT_FOUND = 0x6A88
SW_WRONG_P1P2 = 0x6B00
SW_INS_NOT_SUPPORTED = 0x6D00
SW_CLA_NOT_SUPPORTED = 0x6E00
SW_UNKNOWN = 0x6F00

INS_SELECT = 0xA4
INS_GET_RESPONSE = 0xC0
CLA_CHAINING = 0x10
CLA_PROPRIETARY, CLA_SECURE_MESSAGING = 0x80, 0x04
SCP_HANDSHAKE = frozenset({0x50, 0x82, 0x88})  # INITIALIZE UPDATE, EXTERNAL / INTERNAL AUTHENTICATE


class ApduStatus(Exception):
    """Raised by an applet to answer with a status word and no data."""

    def __init__(self, sw: int, data: bytes = b"") -> None:
        super().__init__(f"SW {sw:04X}")
        self.sw = sw
        self.data = data


@dataclass(frozen=True)
class Apdu:
    cla: int
    ins: int
    p1: int
    p2: int
    data: bytes = b""
    le: int = 0  # 0 = up to 256 (short) or 65536 (extended)
    extended: bool = False

    @classmethod
    def parse(cls, raw: bytes) -> Apdu:
        """Parse short and extended C-APDUs (cases 1-4). Raises ``ApduStatus(6700)`` on bad lengths."""
        if len(raw) < 4:
            raise ApduStatus(SW_WRONG_LENGTH)
        cla, ins, p1, p2 = raw[0], raw[1], raw[2], raw[3]
        body = raw[4:]
        if not body:
            return cls(cla, ins, p1, p2)
        if len(body) == 1:
            return cls(cla, ins, p1, p2, le=body[0] or 256)
        if body[0] != 0:  # short case 3/4
            lc = body[0]
            if len(body) == 1 + lc:
                return cls(cla, ins, p1, p2, bytes(body[1:]))
            if len(body) == 2 + lc:
                return cls(cla, ins, p1, p2, bytes(body[1 : 1 + lc]), le=body[-1] or 256)
            raise ApduStatus(SW_WRONG_LENGTH)
        # extended: 00 then 2-byte Lc or Le
        if len(body) == 3:
            le = int.from_bytes(body[1:3], "big") or 65536
            return cls(cla, ins, p1, p2, le=le, extended=True)
        lc = int.from_bytes(body[1:3], "big")
        rest = body[3:]
        if len(rest) == lc:
            return cls(cla, ins, p1, p2, bytes(rest), extended=True)
        if len(rest) == lc + 2:
            le = int.from_bytes(rest[lc:], "big") or 65536
            return cls(cla, ins, p1, p2, bytes(rest[:lc]), le=le, extended=True)
        raise ApduStatus(SW_WRONG_LENGTH)


class Applet:
    """One application on the card. Subclasses set ``aid`` and implement ``process``."""

    aid: bytes = b""
    name: str = "applet"
    own_chaining: bool = False  # True: the applet answers GET RESPONSE / chaining itself
    state_key: str = ""  # section name in the token's state file ("" = nothing persistent)

    def __init__(self) -> None:
        self.changed: Callable[[], None] = lambda: None  # set by the token: call after persistent changes

    def state_dict(self) -> dict[str, object]:
        """Persistent state (keys, PINs, counters, credentials) as JSON values."""
        return {}

    def load_state(self, state: dict[str, object]) -> None:
        """Restore what ``state_dict`` returned."""

    def select(self, p2: int) -> bytes:
        """Called on SELECT; return the FCI / select response data."""
        return b""

    def deselect(self) -> None:
        """Called when another applet is selected or the card is powered off."""

    def power_cycle(self) -> None:
        """Called on power off/reset: drop session state (PIN verified, per-boot counters)."""

    def process(self, apdu: Apdu) -> bytes:
        """Handle one whole command; return response data (SW 9000), or raise ``ApduStatus``."""
        raise ApduStatus(SW_INS_NOT_SUPPORTED)


class SecureChannels(Protocol):
    def handshake(self, apdu: Apdu, current: Any) -> tuple[bytes, Any]: ...


class VirtualCard:
    """A card with several applets; thread-safe: one APDU at a time."""

    def __init__(self, applets: list[Applet], atr: bytes, on_change: Callable[[], None] | None = None,
                 secure_channels: SecureChannels | None = None) -> None:
        self.applets = applets
        self.secure_channels = secure_channels
        self.channel: Any = None  # the open secure channel (tokenagent.virtual.scp.Channel)
        self.atr = atr
        self.selected: Applet | None = None
        self._chain: bytes | None = None
        self._pending = b""
        self._lock = threading.RLock()
        self.on_change = on_change

    def power_on(self, spare: tuple[Applet, ...] = ()) -> bytes:
        """The card powered up: every applet's session state reset, but for ``spare``'s (applets
        this card shares with a transport that has its own power: ``ccid.CcidSlot``)."""
        with self._lock:
            self._reset_session(spare)
            return self.atr

    def power_off(self, spare: tuple[Applet, ...] = ()) -> None:
        with self._lock:
            self._reset_session(spare)

    def _reset_session(self, spare: tuple[Applet, ...] = ()) -> None:
        if self.selected is not None:
            self.selected.deselect()
        self.selected = None
        self._chain = None
        self._pending = b""
        self.channel = None
        for applet in self.applets:
            if applet not in spare:
                applet.power_cycle()

    def transmit(self, raw: bytes) -> bytes:
        """Process one raw C-APDU; return the raw R-APDU (data + SW1 SW2)."""
        with self._lock:
            try:
                data, sw = self._transmit(raw)
            except ApduStatus as status:
                data, sw = status.data, status.sw
            except Exception:  # a bug in an applet must not kill the transport
                import logging

                logging.getLogger(__name__).exception("applet failed on INS %02X", raw[1] if len(raw) > 1 else 0)
                data, sw = b"", SW_UNKNOWN
            return data + sw.to_bytes(2, "big")

    def _transmit(self, raw: bytes) -> tuple[bytes, int]:
        apdu = Apdu.parse(raw)
        applet = self.selected
        if apdu.ins == INS_SELECT and apdu.p1 == 0x04 and not (apdu.cla & CLA_CHAINING):
            return self._select(apdu)
        if applet is not None and applet.own_chaining:
            return self._answer(applet.process(apdu), apdu, own=True)
        if apdu.ins == INS_GET_RESPONSE and self._pending:
            return self._answer(b"", apdu)
        self._pending = b""
        if apdu.cla & CLA_CHAINING:
            self._chain = (self._chain or b"") + apdu.data
            return b"", SW_OK
        if self._chain is not None:
            apdu = Apdu(apdu.cla, apdu.ins, apdu.p1, apdu.p2, self._chain + apdu.data, apdu.le, apdu.extended)
            self._chain = None
        if applet is None:
            raise ApduStatus(SW_CONDITIONS_NOT_SATISFIED if apdu.ins != INS_GET_RESPONSE else SW_WRONG_P1P2)
        if self.secure_channels is not None and apdu.cla & CLA_PROPRIETARY and apdu.ins in SCP_HANDSHAKE:
            data, self.channel = self.secure_channels.handshake(apdu, self.channel)
            return self._answer(data, apdu)
        if self.channel is not None:
            return self._secure(applet, apdu)
        if apdu.cla & CLA_SECURE_MESSAGING and not applet.own_chaining:
            raise ApduStatus(SW_SECURITY_STATUS_NOT_SATISFIED)  # secure messaging, but no channel open
        return self._answer(applet.process(apdu), apdu)

    def _secure(self, applet: Applet, apdu: Apdu) -> tuple[bytes, int]:
        channel = self.channel
        if not apdu.cla & CLA_SECURE_MESSAGING or not channel.authenticated:
            self.channel = None  # a plain command inside a channel ends it
            raise ApduStatus(SW_SECURITY_STATUS_NOT_SATISFIED)
        try:
            plain = channel.unwrap(apdu)
        except ApduStatus:
            self.channel = None
            raise
        data = applet.process(plain)  # an error status goes back unwrapped, as GlobalPlatform has it
        return self._answer(channel.wrap(data, SW_OK), plain)

    def _select(self, apdu: Apdu) -> tuple[bytes, int]:
        aid = apdu.data
        for applet in self.applets:
            if aid and applet.aid.startswith(aid):
                if self.selected is not None and self.selected is not applet:
                    self.selected.deselect()
                self._chain = None
                self._pending = b""
                self.channel = None
                self.selected = applet
                return self._answer(applet.select(apdu.p2), apdu)
        raise ApduStatus(SW_FILE_NOT_FOUND)

    def _answer(self, data: bytes, apdu: Apdu, own: bool = False) -> tuple[bytes, int]:
        if own:
            return data, SW_OK
        data = self._pending + data if apdu.ins == INS_GET_RESPONSE else data
        limit = apdu.le if apdu.le else (65536 if apdu.extended else 256)
        if len(data) > limit:
            self._pending = data[limit:]
            return data[:limit], SW_BYTES_REMAINING | min(len(self._pending), 0xFF)
        self._pending = b""
        return data, SW_OK


class TouchMode(StrEnum):
    AUTO = "auto"  # touched at once
    DELAY = "delay"  # touched after ``delay`` seconds
    EXPLICIT = "explicit"  # waits for ``touch()`` (the control channel's "touch")
    REFUSE = "refuse"  # never touched: every wait times out


class Presence:
    """User presence ("touch") shared by the applets of one token."""

    TOUCH_MEMORY = 1.0  # seconds a touch given just before a wait still counts (control-channel races)

    def __init__(self, mode: TouchMode = TouchMode.AUTO, delay: float = 0.5) -> None:
        self.mode = TouchMode(mode)
        self.delay = delay
        self._touched = threading.Event()
        self._touched_at = float("-inf")

    def touch(self) -> None:
        """A person touched the key (control channel)."""
        self._touched_at = time.monotonic()
        self._touched.set()

    def wait(
        self,
        timeout: float,
        cancelled: Callable[[], bool] = lambda: False,
        keepalive: Callable[[], None] | None = None,
    ) -> bool:
        """Wait for a touch; True if touched, False on timeout or cancel. ``keepalive`` is called ~every 0.1 s."""
        if self.mode is TouchMode.AUTO:
            return True
        start = time.monotonic()
        if self.mode is not TouchMode.EXPLICIT or start - self._touched_at > self.TOUCH_MEMORY:
            self._touched.clear()  # a real key does not remember an old touch; one just before the wait counts
        deadline = start + timeout
        while time.monotonic() < deadline:
            if cancelled():
                return False
            if self.mode is TouchMode.DELAY and time.monotonic() - start >= self.delay:
                return True
            if self.mode is TouchMode.EXPLICIT and self._touched.is_set():
                self._touched.clear()
                return True
            if keepalive is not None:
                keepalive()
            time.sleep(0.05 if self.mode is not TouchMode.REFUSE else 0.1)
        return False



def tlv(tag: int, value: bytes = b"") -> bytes:
    """BER-TLV encode (yubikit's ``Tlv``: one- or two-byte tags, short or long lengths)."""
    from yubikit.core import Tlv

    return bytes(Tlv(tag, value))


def tlv_parse(data: bytes) -> list[tuple[int, bytes]]:
    """Parse a sequence of BER-TLVs (yubikit's ``Tlv``); malformed input answers SW 6A80."""
    from yubikit.core import Tlv

    try:
        return [(item.tag, item.value) for item in Tlv.parse_list(data)]
    except (ValueError, IndexError):
        raise ApduStatus(SW_INCORRECT_PARAMETERS) from None
