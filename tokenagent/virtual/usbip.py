"""The virtual token as a USB device over USB/IP: a YubiKey 5 NFC's three interfaces for a real kernel.

Theory of operation. USB/IP (the kernel's Documentation/usb/usbip_protocol.rst, version 1.1.1)
carries USB requests over TCP, big endian throughout. A client asks a server for its list of
exported devices (OP_REQ_DEVLIST, 8 bytes; OP_REP_DEVLIST: a 312-byte record per device and 4
bytes per interface) or imports one by its bus id (OP_REQ_IMPORT; OP_REP_IMPORT: status and the
record); after an import the connection carries URBs: USBIP_CMD_SUBMIT (a 48-byte header:
command, seqnum, devid, direction, endpoint, transfer flags, length, start frame, number of
packets, interval, the 8-byte setup packet; then the data of an OUT transfer) answered by
USBIP_RET_SUBMIT (status, actual length; then the data of an IN transfer), and
USBIP_CMD_UNLINK (cancel the SUBMIT with that seqnum) answered by USBIP_RET_UNLINK (status
-ECONNRESET when it was still pending, after which that SUBMIT gets no answer; 0 when it had
been answered). The client is usually the kernel's vhci-hcd: ``usbip attach`` makes the
connection, does the import and hands the socket to the kernel
(``/sys/devices/platform/vhci_hcd.0/attach``), which then enumerates the device as if it were
plugged into a port: usbhid, hidraw and udev see it as they see any USB key. vhci-hcd answers
SET_ADDRESS itself; every other request, enumeration included, comes here.

The device (``YubiKeyUsb``) is a YubiKey 5 NFC with OTP, FIDO and CCID enabled over USB
(product 0x0407, "YubiKey OTP+FIDO+CCID", full speed, bcdDevice the firmware version):

* interface 0, OTP: a boot keyboard (HID 3/1/1), interrupt IN 0x81 (8 bytes, never typed on),
  and its 8-byte feature report carrying the YubiKey OTP protocol over GET_REPORT / SET_REPORT
  control requests (``tokenagent.virtual.uhid.OtpHidFrontEnd``, shared with the uhid transport);
* interface 1, FIDO: usage page 0xF1D0, interrupt OUT 0x04 and IN 0x84 of 64 bytes, the
  token's CTAPHID front end (``tokenagent.virtual.ctaphid``);
* interface 2, CCID (class 0x0B): bulk OUT 0x02, bulk IN 0x82, interrupt IN 0x83 (slot
  changes), and the CCID class descriptor libccid reads (T=1, APDU level exchange, 3072-byte
  messages), the token's card behind it (``tokenagent.virtual.ccid``).

IN transfers wait until there is something to send: a pending interrupt IN URB on 0x84 is
answered when CTAPHID has a packet, one on 0x82 when the card has answered, and an unlink
takes it back. One importer at a time; ``plug``/``unplug`` export the device or pull it out
(the connection is closed: the importing kernel sees the device disconnected). With
``attach=True`` the server also attaches the device to this machine's vhci-hcd on every plug,
as ``usbip attach`` would (a TCP connection to itself, the import, the sysfs write), so plugging
and unplugging the virtual token is a real USB hot-plug.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import queue
import socket
import struct
import threading
from pathlib import Path
from typing import Any

from .ccid import CcidSlot, notify_slot_change
from .uhid import FIDO_REPORT_DESCRIPTOR, OTP_REPORT_DESCRIPTOR, hid_front_ends

log = logging.getLogger("tokenagent.virtual")

USBIP_VERSION = 0x0111
DEFAULT_PORT = 3240
OP_REQ_DEVLIST, OP_REP_DEVLIST, OP_REQ_IMPORT, OP_REP_IMPORT = 0x8005, 0x0005, 0x8003, 0x0003
CMD_SUBMIT, CMD_UNLINK, RET_SUBMIT, RET_UNLINK = 1, 2, 3, 4
DIR_OUT, DIR_IN = 0, 1
ST_OK, ST_DEV_BUSY, ST_NODEV = 0, 2, 4
HEADER_SIZE = 48
OP_HEADER = struct.Struct(">HHI")
BASIC = struct.Struct(">IIIII")
SUBMIT = struct.Struct(">IIiii8s")
DEVICE_RECORD = struct.Struct(">256s32sIIIHHHBBBBBB")  # 312 bytes
ECONNRESET, EPIPE = 104, 32
SPEED_FULL = 2
MAX_TRANSFER = 1 << 20  # a larger OUT transfer is a broken client: the connection is closed
VHCI = Path("/sys/devices/platform/vhci_hcd.0")
VDEV_ST_NULL = 4

YUBICO_VID, YUBIKEY_OTP_FIDO_CCID_PID = 0x1050, 0x0407
BUSID, BUSNUM, DEVNUM = "1-1", 1, 2
MANUFACTURER, PRODUCT = "Yubico", "YubiKey OTP+FIDO+CCID"
EP_OTP_IN, EP_FIDO_OUT, EP_FIDO_IN = 0x81, 0x04, 0x84
EP_CCID_OUT, EP_CCID_IN, EP_CCID_NOTIFY = 0x02, 0x82, 0x83
IF_OTP, IF_FIDO, IF_CCID = 0, 1, 2
FIDO_PACKET, OTP_FEATURE = 64, 8

# requests (USB 2.0 chapter 9, HID 1.11 7.2, CCID 1.1 5.3)
GET_STATUS, CLEAR_FEATURE, SET_FEATURE, GET_DESCRIPTOR = 0x00, 0x01, 0x03, 0x06
GET_CONFIGURATION, SET_CONFIGURATION, GET_INTERFACE, SET_INTERFACE = 0x08, 0x09, 0x0A, 0x0B
DT_DEVICE, DT_CONFIG, DT_STRING, DT_INTERFACE, DT_ENDPOINT = 1, 2, 3, 4, 5
DT_HID, DT_REPORT, DT_CCID = 0x21, 0x22, 0x21
HID_GET_REPORT, HID_GET_IDLE, HID_GET_PROTOCOL = 0x01, 0x02, 0x03
HID_SET_REPORT, HID_SET_IDLE, HID_SET_PROTOCOL = 0x09, 0x0A, 0x0B
REPORT_INPUT, REPORT_OUTPUT, REPORT_FEATURE = 1, 2, 3
CCID_ABORT, CCID_GET_CLOCK_FREQUENCIES, CCID_GET_DATA_RATES = 0x01, 0x02, 0x03
TYPE_MASK, TYPE_STANDARD, TYPE_CLASS = 0x60, 0x00, 0x20
RECIPIENT_MASK, RECIPIENT_DEVICE, RECIPIENT_INTERFACE, RECIPIENT_ENDPOINT = 0x1F, 0, 1, 2
CLOCK_KHZ, DATA_RATE = 4000, 10752


def _version_bcd(version: tuple[int, int, int]) -> int:
    major, minor, patch = version
    return (major << 8) | (minor << 4) | patch  # 5.7.2 -> 0x0572, as a YubiKey reports its firmware


def device_descriptor(version: tuple[int, int, int]) -> bytes:
    return struct.pack("<BBHBBBBHHHBBBB", 18, DT_DEVICE, 0x0200, 0, 0, 0, 64, YUBICO_VID, YUBIKEY_OTP_FIDO_CCID_PID,
                       _version_bcd(version), 1, 2, 0, 1)


def _interface(number: int, endpoints: int, cls: int, subclass: int, protocol: int) -> bytes:
    return struct.pack("<BBBBBBBBB", 9, DT_INTERFACE, number, 0, endpoints, cls, subclass, protocol, 0)


def _endpoint(address: int, attributes: int, size: int, interval: int) -> bytes:
    return struct.pack("<BBBBHB", 7, DT_ENDPOINT, address, attributes, size, interval)


def _hid(report_length: int) -> bytes:
    return struct.pack("<BBHBBBH", 9, DT_HID, 0x0111, 0, 1, DT_REPORT, report_length)


def ccid_class_descriptor() -> bytes:
    """CCID 1.1 5.1: one slot, 5/3/1.8 V, T=1, fixed clock and rate, IFSD 254; features 0x000400FE: automatic
    parameters, activation, voltage, clock, baud rate, parameter negotiation and PPS, short and extended APDU
    level exchange; 3072-byte messages, GET RESPONSE and ENVELOPE classes echoed, no PIN pad, one busy slot."""
    return struct.pack("<BBHBBIIIBIIBIIIIIBBHBB", 54, DT_CCID, 0x0100, 0, 0x07, 0x02, CLOCK_KHZ, CLOCK_KHZ, 0,
                       DATA_RATE, DATA_RATE, 0, 254, 0, 0, 0x000400FE, 3072, 0xFF, 0xFF, 0, 0, 1)


def configuration_descriptor() -> bytes:
    body = (_interface(IF_OTP, 1, 0x03, 0x01, 0x01) + _hid(len(OTP_REPORT_DESCRIPTOR))
            + _endpoint(EP_OTP_IN, 0x03, 8, 10)
            + _interface(IF_FIDO, 2, 0x03, 0x00, 0x00) + _hid(len(FIDO_REPORT_DESCRIPTOR))
            + _endpoint(EP_FIDO_OUT, 0x03, FIDO_PACKET, 2) + _endpoint(EP_FIDO_IN, 0x03, FIDO_PACKET, 2)
            + _interface(IF_CCID, 3, 0x0B, 0x00, 0x00) + ccid_class_descriptor()
            + _endpoint(EP_CCID_OUT, 0x02, 64, 0) + _endpoint(EP_CCID_IN, 0x02, 64, 0)
            + _endpoint(EP_CCID_NOTIFY, 0x03, 8, 32))
    # bus powered, 30 mA
    return struct.pack("<BBHBBBBB", 9, DT_CONFIG, 9 + len(body), 3, 1, 0, 0x80, 15) + body


def string_descriptor(index: int) -> bytes | None:
    if index == 0:
        return bytes([4, DT_STRING]) + struct.pack("<H", 0x0409)  # US English
    text = {1: MANUFACTURER, 2: PRODUCT}.get(index)
    if text is None:
        return None
    data = text.encode("utf-16-le")
    return bytes([2 + len(data), DT_STRING]) + data


def device_record(version: tuple[int, int, int]) -> bytes:
    """The 312-byte description of the device in OP_REP_DEVLIST and OP_REP_IMPORT."""
    return DEVICE_RECORD.pack(f"/sys/devices/tokenagent-virtual/usb{BUSNUM}/{BUSID}".encode(), BUSID.encode(),
                              BUSNUM, DEVNUM, SPEED_FULL, YUBICO_VID, YUBIKEY_OTP_FIDO_CCID_PID,
                              _version_bcd(version), 0, 0, 0, 1, 1, 3)


def interface_records() -> bytes:
    return bytes([0x03, 0x01, 0x01, 0, 0x03, 0x00, 0x00, 0, 0x0B, 0x00, 0x00, 0])


def ret_submit(seqnum: int, status: int, data: bytes = b"", actual_length: int | None = None) -> bytes:
    length = len(data) if actual_length is None else actual_length
    return BASIC.pack(RET_SUBMIT, seqnum, 0, 0, 0) + struct.pack(">iIiii8s", status, length, 0, 0, 0, b"") + data


def ret_unlink(seqnum: int, status: int) -> bytes:
    return BASIC.pack(RET_UNLINK, seqnum, 0, 0, 0) + struct.pack(">i24s", status, b"")


def _recv_exactly(sock: socket.socket, n: int) -> bytes | None:
    data = bytearray()
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            return None
        data += chunk
    return bytes(data)


class YubiKeyUsb:
    """The USB device: descriptors, control requests and the endpoints' data, behind one importer."""

    def __init__(self, token: Any) -> None:
        self.token = token
        self.version: tuple[int, int, int] = tuple(token.otp.version)  # type: ignore[assignment]
        self.otp_front = hid_front_ends(token)
        self.ccid = CcidSlot(token.card, lambda message: self.push(EP_CCID_IN, message), spare=(token.fido2,))
        self.configuration = 0
        self._lock = threading.RLock()
        self._pending: dict[int, collections.deque[tuple[int, int]]] = collections.defaultdict(collections.deque)
        self._data: dict[int, collections.deque[bytes]] = collections.defaultdict(collections.deque)
        self._sock: socket.socket | None = None
        self._send_lock = threading.Lock()
        self._pump: threading.Thread | None = None

    # --- a session: the time one importer has it (plugged into that host) -------------------

    def begin(self, sock: socket.socket) -> None:
        with self._lock:
            self._sock = sock
            self.configuration = 0
            self._pending.clear()
            self._data.clear()
            self.ccid.reset()
            self.otp_front.reset()
            self.token.hid.plug()  # a power cycle, as plugging a key in is
            self._data[EP_CCID_NOTIFY].append(notify_slot_change(True))
        self._pump = threading.Thread(target=self._pump_fido, args=(sock,), daemon=True, name="usbip-fido-in")
        self._pump.start()

    def end(self, sock: socket.socket) -> None:
        with self._lock:
            if self._sock is not sock:
                return
            self._sock = None
            self._pending.clear()
            self._data.clear()
            self.token.hid.unplug()
            self.ccid.reset()
        if self._pump is not None and self._pump is not threading.current_thread():
            self._pump.join(2)

    @property
    def imported(self) -> bool:
        return self._sock is not None

    def serve(self, sock: socket.socket) -> None:
        """The URB traffic of one import until the connection ends."""
        self.begin(sock)
        try:
            while True:
                head = _recv_exactly(sock, HEADER_SIZE)
                if head is None:
                    return
                command, seqnum, _devid, direction, ep = BASIC.unpack_from(head)
                if command == CMD_SUBMIT:
                    _flags, length, _start, _packets, _interval, setup = SUBMIT.unpack_from(head, BASIC.size)
                    if length > MAX_TRANSFER:
                        log.debug("usbip: a %d-byte transfer: connection closed", length)
                        return
                    data = b""
                    if direction == DIR_OUT and length:
                        got = _recv_exactly(sock, length)
                        if got is None:
                            return
                        data = got
                    self.submit(seqnum, ep | (0x80 if direction == DIR_IN else 0), setup, length, data)
                elif command == CMD_UNLINK:
                    self.unlink(seqnum, struct.unpack_from(">I", head, BASIC.size)[0])
                else:
                    log.debug("usbip: unknown command %d: connection closed", command)
                    return
        except OSError as err:
            log.debug("usbip: connection ended: %s", err)
        finally:
            self.end(sock)

    def _send(self, data: bytes) -> None:
        sock = self._sock
        if sock is None:
            return
        with self._send_lock:
            try:
                sock.sendall(data)
            except OSError as err:
                log.debug("usbip: answer not sent: %s", err)

    # --- URBs ----------------------------------------------------------------------------

    def submit(self, seqnum: int, address: int, setup: bytes, length: int, data: bytes) -> None:
        if address & 0x0F == 0:
            try:
                answer = self.control(setup, data)
            except Exception:  # noqa: BLE001 - a bug in a handler stalls the request, not the device
                log.exception("usbip: control request %s not handled", setup.hex())
                answer = None
            if answer is None:
                self._send(ret_submit(seqnum, -EPIPE))
            elif setup[0] & 0x80:
                self._send(ret_submit(seqnum, 0, answer[:length]))
            else:
                self._send(ret_submit(seqnum, 0, actual_length=len(data)))
        elif address == EP_FIDO_OUT:
            self._fido_output(data)
            self._send(ret_submit(seqnum, 0, actual_length=len(data)))
        elif address == EP_CCID_OUT:
            self._send(ret_submit(seqnum, 0, actual_length=len(data)))
            self.ccid.receive(data)
        elif address in (EP_OTP_IN, EP_FIDO_IN, EP_CCID_IN, EP_CCID_NOTIFY):
            with self._lock:
                self._pending[address].append((seqnum, length))
                self._match(address)
        else:
            self._send(ret_submit(seqnum, -EPIPE))

    def unlink(self, seqnum: int, victim: int) -> None:
        with self._lock:
            for waiting in self._pending.values():
                for entry in waiting:
                    if entry[0] == victim:
                        waiting.remove(entry)
                        self._send(ret_unlink(seqnum, -ECONNRESET))
                        return
        self._send(ret_unlink(seqnum, 0))  # answered already (or never seen)

    def push(self, address: int, data: bytes) -> None:
        """Data for an IN endpoint: it goes to the oldest pending URB there, or waits for one."""
        with self._lock:
            if self._sock is None:
                return
            self._data[address].append(data)
            self._match(address)

    def _match(self, address: int) -> None:
        waiting, data = self._pending[address], self._data[address]
        while waiting and data:
            seqnum, length = waiting.popleft()
            chunk = data.popleft()
            if len(chunk) > length:  # a bulk message longer than this URB: the rest goes to the next
                data.appendleft(chunk[length:])
                chunk = chunk[:length]
            self._send(ret_submit(seqnum, 0, chunk))

    # --- the FIDO interface ---------------------------------------------------------------

    def _fido_output(self, report: bytes) -> None:
        try:
            self.token.hid.write(report[:FIDO_PACKET].ljust(FIDO_PACKET, b"\0"))
        except OSError as err:
            log.debug("CTAPHID report refused: %s", err)

    def _pump_fido(self, sock: socket.socket) -> None:
        answers: queue.Queue[bytes] = self.token.hid.out
        while self._sock is sock:
            try:
                packet = answers.get(timeout=0.2)
            except queue.Empty:
                continue
            self.push(EP_FIDO_IN, packet)

    # --- control requests -------------------------------------------------------------------

    def control(self, setup: bytes, data: bytes) -> bytes | None:
        """One control request: the answer (b"" for none), or None for a stall."""
        request_type, request, value, index, _length = struct.unpack("<BBHHH", setup)
        kind, recipient = request_type & TYPE_MASK, request_type & RECIPIENT_MASK
        if kind == TYPE_STANDARD:
            return self._standard(request, recipient, value, index)
        if kind == TYPE_CLASS and recipient == RECIPIENT_INTERFACE:
            if index in (IF_OTP, IF_FIDO):
                return self._hid_class(request, value, index, data)
            if index == IF_CCID:
                return self._ccid_class(request)
        return None

    def _standard(self, request: int, recipient: int, value: int, index: int) -> bytes | None:
        if request == GET_DESCRIPTOR:
            kind, number = value >> 8, value & 0xFF
            if recipient == RECIPIENT_DEVICE:
                if kind == DT_DEVICE:
                    return device_descriptor(self.version)
                if kind == DT_CONFIG and number == 0:
                    return configuration_descriptor()
                if kind == DT_STRING:
                    return string_descriptor(number)
                return None  # device qualifier, BOS, other speed: a full-speed USB 2.0 device has none
            if recipient == RECIPIENT_INTERFACE and index in (IF_OTP, IF_FIDO):
                report = OTP_REPORT_DESCRIPTOR if index == IF_OTP else FIDO_REPORT_DESCRIPTOR
                if kind == DT_REPORT:
                    return report
                if kind == DT_HID:
                    return _hid(len(report))
            return None
        if request == SET_CONFIGURATION and recipient == RECIPIENT_DEVICE:
            if value not in (0, 1):
                return None
            self.configuration = value
            return b""
        if request == GET_CONFIGURATION:
            return bytes([self.configuration])
        if request == GET_STATUS:
            return b"\0\0"
        if request in (CLEAR_FEATURE, SET_FEATURE):
            return b""  # endpoint halt, remote wake-up: nothing here stalls or sleeps
        if request == SET_INTERFACE and recipient == RECIPIENT_INTERFACE:
            return b"" if value == 0 and index <= IF_CCID else None
        if request == GET_INTERFACE and recipient == RECIPIENT_INTERFACE:
            return b"\0" if index <= IF_CCID else None
        return None

    def _hid_class(self, request: int, value: int, index: int, data: bytes) -> bytes | None:
        report_type = value >> 8
        if request in (HID_SET_IDLE, HID_SET_PROTOCOL):
            return b""
        if request == HID_GET_IDLE:
            return b"\0"
        if request == HID_GET_PROTOCOL:
            return b"\1"  # report protocol
        if index == IF_OTP:
            if request == HID_GET_REPORT and report_type == REPORT_FEATURE:
                return self.otp_front.get_feature()
            if request == HID_SET_REPORT and report_type == REPORT_FEATURE:
                self.otp_front.set_feature(data[-OTP_FEATURE:] if len(data) > OTP_FEATURE else data)
                return b""
            if request == HID_SET_REPORT and report_type == REPORT_OUTPUT:
                return b""  # the keyboard LEDs: a YubiKey has none to light
            if request == HID_GET_REPORT and report_type == REPORT_INPUT:
                return bytes(8)  # no key pressed
            return None
        if request == HID_SET_REPORT and report_type == REPORT_OUTPUT:
            self._fido_output(data)  # hidraw's write falls back to SET_REPORT without an OUT endpoint
            return b""
        return None

    def _ccid_class(self, request: int) -> bytes | None:
        if request == CCID_ABORT:
            return b""
        if request == CCID_GET_CLOCK_FREQUENCIES:
            return struct.pack("<I", CLOCK_KHZ)
        if request == CCID_GET_DATA_RATES:
            return struct.pack("<I", DATA_RATE)
        return None


class UsbipServer:
    """A USB/IP server exporting one ``YubiKeyUsb`` (bus id 1-1) on a TCP port of this machine."""

    def __init__(self, token: Any, host: str = "127.0.0.1", port: int = DEFAULT_PORT, attach: bool = False) -> None:
        self.device = YubiKeyUsb(token)
        self.host, self.port, self.attach = host, port, attach
        self.exported = False
        self._busy = False
        self._listener: socket.socket | None = None
        self._lock = threading.Lock()

    @property
    def plugged(self) -> bool:
        return self.exported

    def start(self) -> None:
        if self._listener is not None:
            return
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind((self.host, self.port))
        except OSError:
            listener.close()
            raise
        listener.listen(8)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True, name="usbip-accept").start()

    def stop(self) -> None:
        self.unplug()
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()

    def plug(self) -> None:
        """Export the device (and, with ``attach``, attach it to this machine's vhci-hcd)."""
        self.start()
        self.exported = True
        for _ in range(50):  # a connection closed by an unplug just before ends first
            if not self._busy:
                break
            threading.Event().wait(0.1)
        if self.attach and not self._busy:
            try:
                attach_local(self.host, self.port)
            except OSError:
                self.exported = False
                raise

    def unplug(self) -> None:
        """Pull it out: no longer exported, and the importer's connection is closed."""
        self.exported = False
        sock = self.device._sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=self._client, args=(conn,), daemon=True, name="usbip-client").start()

    def _client(self, conn: socket.socket) -> None:
        with conn:
            try:
                head = _recv_exactly(conn, OP_HEADER.size)
                if head is None:
                    return
                version, code, _status = OP_HEADER.unpack(head)
                if code == OP_REQ_DEVLIST:
                    conn.sendall(self.devlist())
                elif code == OP_REQ_IMPORT:
                    busid = _recv_exactly(conn, 32)
                    if busid is None:
                        return
                    status = self._claim(busid.rstrip(b"\0").decode(errors="replace"))
                    if status != ST_OK:
                        conn.sendall(OP_HEADER.pack(USBIP_VERSION, OP_REP_IMPORT, status))
                        return
                    try:
                        conn.sendall(OP_HEADER.pack(USBIP_VERSION, OP_REP_IMPORT, ST_OK)
                                     + device_record(self.device.version))
                        self.device.serve(conn)
                    finally:
                        self._busy = False
                else:
                    log.debug("usbip: request %04x (version %04x) not known", code, version)
            except OSError as err:
                log.debug("usbip: client: %s", err)

    def _claim(self, busid: str) -> int:
        with self._lock:
            if busid != BUSID or not self.exported:
                return ST_NODEV
            if self._busy:
                return ST_DEV_BUSY
            self._busy = True  # one importer at a time
            return ST_OK

    def devlist(self) -> bytes:
        if not self.exported:
            return OP_HEADER.pack(USBIP_VERSION, OP_REP_DEVLIST, ST_OK) + struct.pack(">I", 0)
        return (OP_HEADER.pack(USBIP_VERSION, OP_REP_DEVLIST, ST_OK) + struct.pack(">I", 1)
                + device_record(self.device.version) + interface_records())


def vhci_free_port() -> int:
    """A free high-speed (USB 2.0) port of vhci-hcd (its ``status`` file: hub port sta spd dev sockfd busid)."""
    try:
        lines = (VHCI / "status").read_text().splitlines()
    except FileNotFoundError:
        raise OSError("vhci-hcd is not loaded (modprobe vhci-hcd)") from None
    for line in lines[1:]:
        fields = line.split()
        if len(fields) >= 3 and fields[0] == "hs" and int(fields[2]) == VDEV_ST_NULL:
            return int(fields[1])
    raise OSError("vhci-hcd has no free USB 2.0 port")


def attach_local(host: str, port: int) -> None:
    """What ``usbip attach -r HOST -b 1-1`` does: import the device, then give the socket to vhci-hcd."""
    sock = socket.create_connection((host, port), timeout=30)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(OP_HEADER.pack(USBIP_VERSION, OP_REQ_IMPORT, 0) + BUSID.encode().ljust(32, b"\0"))
        head = _recv_exactly(sock, OP_HEADER.size)
        if head is None or OP_HEADER.unpack(head)[2] != ST_OK:
            raise OSError("the USB/IP server refused the import")
        record = _recv_exactly(sock, DEVICE_RECORD.size)
        if record is None:
            raise OSError("the USB/IP server closed the connection")
        fields = DEVICE_RECORD.unpack(record)
        busnum, devnum, speed = fields[2], fields[3], fields[4]
        sock.settimeout(None)
        vhci_port = vhci_free_port()
        (VHCI / "attach").write_text(f"{vhci_port} {sock.fileno()} {(busnum << 16) | devnum} {speed}")
    finally:
        sock.close()  # the kernel holds its own reference now
