"""The virtual token's FIDO2 authenticator over CTAPHID (CTAP 2.1 §11.2), in process.

Theory of operation. ``HidFrontEnd`` is the device end of the USB HID transport: it takes
64-byte output reports, reassembles messages (initialization packet: channel id, command with
bit 7 set, 16-bit length, data; continuation packets: channel id, sequence 0-127, data), runs
them and queues the input reports of the answer. ``VirtualHidConnection`` is python-fido2's
``CtapHidConnection`` over it, so ``fido2.hid.CtapHidDevice`` runs its own framing code
unchanged: what a USB key does over /dev/hidraw, without USB.

Commands: INIT (on the broadcast channel 0xFFFFFFFF a new channel is allocated; on an
allocated channel it resynchronises it), PING (echo), WINK, CBOR (the FIDO2 applet's
``handle``; KEEPALIVE with status UP-NEEDED every 100 ms while it runs), CANCEL (no answer;
the running CBOR command ends with CTAP2_ERR_KEEPALIVE_CANCEL), and ERROR answers:
INVALID_CMD (MSG: no U2F/CTAP1, hence the NMSG capability), INVALID_LEN, INVALID_SEQ,
INVALID_CHANNEL, CHANNEL_BUSY (another channel's command is running). Pulling the key out
(``unplug``) makes reads and writes fail with OSError, as a vanished hidraw device does.
"""

from __future__ import annotations

import os
import queue
import struct
import threading
from collections.abc import Callable
from typing import Any

from fido2.hid import CtapHidDevice
from fido2.hid.base import CtapHidConnection, HidDescriptor

from .ctap2 import Fido2Applet

PACKET_SIZE = 64
BROADCAST = 0xFFFFFFFF
TYPE_INIT = 0x80
CMD_PING, CMD_MSG, CMD_LOCK, CMD_INIT, CMD_WINK = 0x01, 0x03, 0x04, 0x06, 0x08
CMD_CBOR, CMD_CANCEL, CMD_KEEPALIVE, CMD_ERROR = 0x10, 0x11, 0x3B, 0x3F
ERR_INVALID_CMD, ERR_INVALID_LEN, ERR_INVALID_SEQ = 0x01, 0x03, 0x04
ERR_CHANNEL_BUSY, ERR_INVALID_CHANNEL = 0x06, 0x0B
STATUS_UPNEEDED = 0x02
CAPABILITY_WINK, CAPABILITY_CBOR, CAPABILITY_NMSG = 0x01, 0x04, 0x08
MAX_MESSAGE = PACKET_SIZE - 7 + 128 * (PACKET_SIZE - 5)  # 7609 bytes
READ_TIMEOUT = 60.0
YUBICO_VID, YUBIKEY_5_PID = 0x1050, 0x0407


class HidFrontEnd:
    def __init__(self, applet: Fido2Applet, version: tuple[int, int, int]) -> None:
        self.applet, self.version = applet, version
        self.out: queue.Queue[bytes] = queue.Queue()
        self.plugged = True
        self._channels: set[int] = set()
        self._partial: dict[int, tuple[int, int, bytearray, int]] = {}  # cid -> cmd, length, data, next seq
        self._running: tuple[int, threading.Thread] | None = None
        self._lock = threading.RLock()
        self._plugs = 0  # answers of a command begun before a replug are dropped, as the USB bus would
        # vendor commands (0x40-0x7F) a transport adds, e.g. the YubiKey's READ CONFIG (0x42) over USB
        self.vendor_commands: dict[int, Callable[[bytes], bytes]] = {}

    # --- packets in ----------------------------------------------------------------------

    def write(self, packet: bytes) -> None:
        if not self.plugged:
            raise OSError("the virtual key was pulled out")
        if len(packet) != PACKET_SIZE:
            raise OSError(f"a CTAPHID report is {PACKET_SIZE} bytes, not {len(packet)}")
        with self._lock:
            self._packet(bytes(packet))

    def _packet(self, packet: bytes) -> None:
        cid = struct.unpack_from(">I", packet)[0]
        if packet[4] & TYPE_INIT:
            cmd = packet[4] & 0x7F
            length = struct.unpack_from(">H", packet, 5)[0]
            if cmd == CMD_INIT:
                self._partial.pop(cid, None)
            elif cid != BROADCAST and cid not in self._channels:
                return self._error(cid, ERR_INVALID_CHANNEL)
            if cmd == CMD_CANCEL:
                if self._running is not None and self._running[0] == cid:
                    self.applet.cancel()
                return None
            if length > MAX_MESSAGE:
                return self._error(cid, ERR_INVALID_LEN)
            self._partial[cid] = (cmd, length, bytearray(packet[7 : 7 + length]), 0)
        else:
            if cid not in self._partial:
                return None  # a stray continuation is ignored (CTAP 2.1 §11.2.5)
            cmd, length, data, seq = self._partial[cid]
            if packet[4] != seq:
                del self._partial[cid]
                return self._error(cid, ERR_INVALID_SEQ)
            data += packet[5 : 5 + length - len(data)]
            self._partial[cid] = (cmd, length, data, seq + 1)
        cmd, length, data, _ = self._partial[cid]
        if len(data) >= length:
            del self._partial[cid]
            self._message(cid, cmd, bytes(data[:length]))
        return None

    def _message(self, cid: int, cmd: int, data: bytes) -> None:
        if cmd == CMD_INIT:
            if len(data) != 8:
                return self._error(cid, ERR_INVALID_LEN)
            if cid == BROADCAST:
                new = int.from_bytes(os.urandom(4), "big") or 1
                while new == BROADCAST or new in self._channels:
                    new = int.from_bytes(os.urandom(4), "big") or 1
                self._channels.add(new)
            else:
                new = cid
            capabilities = CAPABILITY_WINK | CAPABILITY_CBOR | CAPABILITY_NMSG
            return self._send(cid, CMD_INIT, data + struct.pack(">IBBBBB", new, 2, *self.version, capabilities))
        if cid == BROADCAST:
            return self._error(cid, ERR_INVALID_CHANNEL)
        if self._running is not None and self._running[1].is_alive():
            return self._error(cid, ERR_CHANNEL_BUSY)
        if cmd == CMD_PING:
            return self._send(cid, CMD_PING, data)
        if cmd == CMD_WINK:
            return self._send(cid, CMD_WINK, b"")
        if cmd in self.vendor_commands:
            return self._send(cid, cmd, self.vendor_commands[cmd](data))
        if cmd == CMD_CBOR:
            self.applet.start_request()
            worker = threading.Thread(target=self._cbor, args=(cid, data), daemon=True, name="virtual-ctaphid")
            self._running = (cid, worker)
            worker.start()
            return None
        return self._error(cid, ERR_INVALID_CMD)  # MSG (U2F), LOCK and the rest

    def _cbor(self, cid: int, message: bytes) -> None:
        plugs = self._plugs
        result: list[bytes] = []
        runner = threading.Thread(target=lambda: result.append(self.applet.handle(message)), daemon=True)
        runner.start()
        runner.join(0.05)
        while runner.is_alive():
            self._send(cid, CMD_KEEPALIVE, bytes([STATUS_UPNEEDED]), plugs)
            runner.join(0.1)
        self._send(cid, CMD_CBOR, result[0] if result else b"\x7f", plugs)

    # --- packets out ---------------------------------------------------------------------

    def _error(self, cid: int, code: int) -> None:
        self._send(cid, CMD_ERROR, bytes([code]))

    def _send(self, cid: int, cmd: int, data: bytes, plugs: int | None = None) -> None:
        header = struct.pack(">IBH", cid, TYPE_INIT | cmd, len(data))
        first = PACKET_SIZE - len(header)
        packets = [(header + data[:first]).ljust(PACKET_SIZE, b"\0")]
        rest, seq = data[first:], 0
        while rest:
            chunk, rest = rest[: PACKET_SIZE - 5], rest[PACKET_SIZE - 5 :]
            packets.append((struct.pack(">IB", cid, seq) + chunk).ljust(PACKET_SIZE, b"\0"))
            seq += 1
        with self._lock:
            if plugs is not None and plugs != self._plugs:
                return
            for packet in packets:
                self.out.put(packet)

    def read(self, timeout: float = READ_TIMEOUT) -> bytes:
        deadline = timeout
        while self.plugged:
            try:
                return self.out.get(timeout=min(0.1, deadline))
            except queue.Empty:
                deadline -= 0.1
                if deadline <= 0:
                    raise OSError("the virtual key did not answer") from None
        raise OSError("the virtual key was pulled out")

    def unplug(self) -> None:
        self.plugged = False
        self._plugs += 1
        self.applet.cancel()

    def plug(self) -> None:
        with self._lock:
            self._plugs += 1
            self._channels.clear()
            self._partial.clear()
            while not self.out.empty():
                self.out.get_nowait()
        self.applet.power_cycle()
        self.plugged = True


class VirtualHidConnection(CtapHidConnection):
    """python-fido2's HID connection to a ``HidFrontEnd``."""

    def __init__(self, front: HidFrontEnd) -> None:
        self.front = front

    def read_packet(self) -> bytes:
        return self.front.read()

    def write_packet(self, data: bytes) -> None:
        self.front.write(data)

    def close(self) -> None:
        pass


def hid_descriptor(serial: int) -> HidDescriptor:
    """What a HID backend would list for the virtual key (a YubiKey 5's vendor and product ids)."""
    return HidDescriptor(f"virtual-hid:{serial}", YUBICO_VID, YUBIKEY_5_PID, PACKET_SIZE, PACKET_SIZE,
                         "tokenagent virtual token", str(serial))


def hid_device(front: HidFrontEnd, serial: int) -> Any:
    """A ``CtapHidDevice`` on the virtual key (its INIT exchange runs here)."""
    return CtapHidDevice(hid_descriptor(serial), VirtualHidConnection(front))
