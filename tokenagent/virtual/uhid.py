"""The virtual token as kernel HID devices: a USB YubiKey's FIDO and OTP interfaces through /dev/uhid.

Theory of operation. The kernel's uhid driver (``modprobe uhid``) lets a process be a HID device:
it writes UHID_CREATE2 (name, ids, report descriptor) to /dev/uhid and the kernel makes a HID
device of it, with a /dev/hidrawN node that udev announces as it would a USB key's. Every event
is one ``struct uhid_event`` (a 32-bit type and a packed union); reads give the host's side:
OUTPUT (a report written to hidraw), GET_REPORT / SET_REPORT (feature reports, answered with a
*_REPLY event carrying the request's id), OPEN / CLOSE (a reader came or went); writes give the
device's side: INPUT2 (a report to the readers), DESTROY (pulled out).

A YubiKey 5 with OTP and FIDO enabled over USB (product id 0x0403) shows two HID interfaces, and
so does this: one uhid device per interface, with the same serial as the HID "uniq" string.

* FIDO: usage page 0xF1D0, usage 1, 64-byte input and output reports, no report ids. Output
  reports go to the token's CTAPHID front end (``tokenagent.virtual.ctaphid.HidFrontEnd``, the
  same framing the in-process transport runs); its answers come back as input reports.
* OTP: a boot keyboard whose 8-byte feature report carries the YubiKey OTP protocol (what
  yubikit's ``OtpProtocol`` speaks): a host writes a 70-byte frame (64 bytes of payload, slot
  command, CRC-16, 3 filler bytes) in ten 7-byte pieces, each with 0x80 | sequence in the last
  byte (all-zero pieces but the first and last are skipped, so they count as zeros); reading
  the feature report gives the status (version, programming sequence, touch level, then a flag
  byte: 0 idle, 0x20 waiting for a touch), or, after a command with data, the answer in 7-byte
  pieces flagged 0x40 | sequence, then 0x40 with sequence 0 for the end, until the host writes
  the reset report (0xFF in the last byte). Commands: configure slot 1 / 2 (0x01 / 0x03),
  HMAC-SHA1 challenge-response (0x30 / 0x38), serial (0x10) and device information (0x13),
  run by the token's OTP and management applets as they are over CCID.

Unplugging destroys both devices (the nodes vanish, udev says "remove"); plugging creates them
again, a power cycle for the token as with the PC/SC transport.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import select
import struct
import threading
from collections.abc import Callable
from typing import Any

from .card import Apdu, ApduStatus

log = logging.getLogger("tokenagent.virtual")

UHID_PATH = "/dev/uhid"
UHID_DESTROY, UHID_START, UHID_STOP, UHID_OPEN, UHID_CLOSE, UHID_OUTPUT = 1, 2, 3, 4, 5, 6
UHID_GET_REPORT, UHID_GET_REPORT_REPLY, UHID_CREATE2, UHID_INPUT2 = 9, 10, 11, 12
UHID_SET_REPORT, UHID_SET_REPORT_REPLY = 13, 14
UHID_DATA_MAX = 4096
EVENT_SIZE = 4 + 128 + 64 + 64 + 2 + 2 + 4 + 4 + 4 + 4 + UHID_DATA_MAX  # the union's largest member: create2
BUS_USB = 0x03
YUBICO_VID = 0x1050
YUBIKEY_OTP_FIDO_PID = 0x0403  # YubiKey 4/5 with the OTP and FIDO interfaces enabled over USB
POLL_MS = 200
EIO = 5

FIDO_REPORT_DESCRIPTOR = bytes.fromhex(
    "06d0f1"        # usage page FIDO alliance
    "0901"          # usage CTAPHID
    "a101"          # collection (application)
    "0920" "1500" "26ff00" "7508" "9540" "8102"  # usage data in: 64 bytes, input
    "0921" "1500" "26ff00" "7508" "9540" "9102"  # usage data out: 64 bytes, output
    "c0")
OTP_REPORT_DESCRIPTOR = bytes.fromhex(
    "0501" "0906" "a101"                                   # generic desktop, keyboard, application
    "0507" "19e0" "29e7" "1500" "2501" "7501" "9508" "8102"  # modifier keys
    "9501" "7508" "8101"                                   # reserved byte
    "9505" "7501" "0508" "1901" "2905" "9102"              # LEDs
    "9501" "7503" "9101"                                   # LED padding
    "9506" "7508" "1500" "25ff" "0507" "1900" "29ff" "8100"  # key codes
    "0903" "7508" "9508" "b102"                            # the 8-byte feature report: the OTP protocol
    "c0")

FIDO_PACKET = 64
FEATURE_SIZE = 8
PIECE = FEATURE_SIZE - 1
FRAME_SIZE = 70
PAYLOAD_SIZE = 64
PIECES = FRAME_SIZE // PIECE  # 10
FLAG_WRITE, FLAG_PENDING, FLAG_WAIT_TOUCH, FLAG_PROCESSING = 0x80, 0x40, 0x20, 0x01
SEQUENCE_MASK = 0x1F
RESET = 0xFF
SLOT_CONFIG = {0x01: 1, 0x03: 2}
SLOT_CHAL_HMAC = {0x30: 1, 0x38: 2}
SLOT_DEVICE_SERIAL, SLOT_YK4_CAPABILITIES = 0x10, 0x13
OTP_INS_CONFIG, MANAGEMENT_INS_READ_CONFIG = 0x01, 0x1D
CTAPHID_YUBIKEY_READ_CONFIG = 0x42  # CTAPHID vendor command: the management applet's device information


def crc16(data: bytes) -> int:
    """The CRC-16 (ISO 13239) of the OTP protocol's frames."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x8408 if crc & 1 else crc >> 1
    return crc


def with_crc(data: bytes) -> bytes:
    """An answer as the key sends it: the data and the complement of its CRC (residual 0xF0B8)."""
    return data + struct.pack("<H", ~crc16(data) & 0xFFFF)


def create2_event(name: str, uniq: str, vendor: int, product: int, descriptor: bytes, phys: str = "") -> bytes:
    body = struct.pack("<128s64s64sHHIIII", name.encode()[:127], phys.encode()[:63], uniq.encode()[:63],
                       len(descriptor), BUS_USB, vendor, product, 0x0100, 0)
    return struct.pack("<I", UHID_CREATE2) + body + descriptor.ljust(UHID_DATA_MAX, b"\0")


def input2_event(report: bytes) -> bytes:
    return struct.pack("<IH", UHID_INPUT2, len(report)) + report.ljust(UHID_DATA_MAX, b"\0")


class UhidDevice:
    """One kernel HID device backed by this process (one /dev/uhid file descriptor)."""

    def __init__(self, name: str, uniq: str, descriptor: bytes, on_output: Callable[[bytes], None] | None = None,
                 on_get_feature: Callable[[], bytes] | None = None,
                 on_set_feature: Callable[[bytes], None] | None = None,
                 product: int = YUBIKEY_OTP_FIDO_PID) -> None:
        self.name, self.uniq, self.descriptor, self.product = name, uniq, descriptor, product
        self.on_output, self.on_get_feature, self.on_set_feature = on_output, on_get_feature, on_set_feature
        self._fd: int | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._write_lock = threading.Lock()

    @property
    def created(self) -> bool:
        return self._fd is not None

    def create(self) -> None:
        try:
            fd = os.open(UHID_PATH, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            raise OSError(f"{UHID_PATH} is missing: load the uhid kernel module (modprobe uhid)") from None
        os.write(fd, create2_event(self.name, self.uniq, YUBICO_VID, self.product, self.descriptor))
        self._fd = fd
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, args=(fd,), daemon=True, name=f"uhid-{self.name}")
        self._thread.start()

    def destroy(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2 * POLL_MS / 1000 + 1)
        with contextlib.suppress(OSError):
            self._write(fd, struct.pack("<I", UHID_DESTROY))
        os.close(fd)

    def send_input(self, report: bytes) -> None:
        fd = self._fd
        if fd is not None:
            self._write(fd, input2_event(report))

    def _write(self, fd: int, event: bytes) -> None:
        with self._write_lock:
            os.write(fd, event)

    def _run(self, fd: int) -> None:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        while not self._stop.is_set():
            try:
                if not poller.poll(POLL_MS):
                    continue
                event = os.read(fd, EVENT_SIZE)
            except OSError as err:
                log.debug("uhid %s: %s", self.name, err)
                return
            try:
                self._event(fd, event)
            except Exception:  # noqa: BLE001 - a bug in a handler must not kill the device
                log.exception("uhid %s: event not handled", self.name)

    def _event(self, fd: int, event: bytes) -> None:
        kind = struct.unpack_from("<I", event)[0]
        if kind == UHID_OUTPUT and self.on_output is not None:
            data_end = 4 + UHID_DATA_MAX
            size = struct.unpack_from("<H", event, data_end)[0]
            self.on_output(bytes(event[4 : 4 + size]))
        elif kind == UHID_GET_REPORT:
            request, _rnum, _rtype = struct.unpack_from("<IBB", event, 4)
            answer = self.on_get_feature() if self.on_get_feature is not None else None
            if answer is None:
                reply = struct.pack("<IIHH", UHID_GET_REPORT_REPLY, request, EIO, 0)
            else:
                data = b"\0" + answer  # the report number first, as hidraw's HIDIOCGFEATURE hands it on
                reply = struct.pack("<IIHH", UHID_GET_REPORT_REPLY, request, 0, len(data)) + data
            self._write(fd, reply.ljust(EVENT_SIZE, b"\0"))
        elif kind == UHID_SET_REPORT:
            request, _rnum, _rtype, size = struct.unpack_from("<IBBH", event, 4)
            data = bytes(event[12 : 12 + size])
            err = 0
            if self.on_set_feature is None:
                err = EIO
            else:
                self.on_set_feature(data[1:] if len(data) == FEATURE_SIZE + 1 else data)
            self._write(fd, struct.pack("<IIH", UHID_SET_REPORT_REPLY, request, err).ljust(EVENT_SIZE, b"\0"))


class OtpHidFrontEnd:
    """The device end of the YubiKey OTP protocol over 8-byte feature reports."""

    def __init__(self, otp_applet: Any, management_applet: Any, version: tuple[int, int, int]) -> None:
        self.otp, self.management, self.version = otp_applet, management_applet, version
        self._lock = threading.Lock()
        self._frame = bytearray(FRAME_SIZE)
        self._answer: bytes | None = None
        self._answer_seq = 0
        self._worker: threading.Thread | None = None
        self._waits_for_touch = False

    def reset(self) -> None:
        with self._lock:
            self._frame = bytearray(FRAME_SIZE)
            self._answer, self._answer_seq = None, 0

    def _status(self) -> bytes:
        return self.otp.status()  # version (3), programming sequence, touch level (2, little endian)

    def get_feature(self) -> bytes:
        with self._lock:
            if self._worker is not None and self._worker.is_alive():
                flag = FLAG_WAIT_TOUCH if self._waits_for_touch else FLAG_PROCESSING
                return b"\0" + self._status() + bytes([flag])
            if self._answer is not None:
                start = self._answer_seq * PIECE
                if start < len(self._answer):
                    piece = self._answer[start : start + PIECE].ljust(PIECE, b"\0")
                    report = piece + bytes([FLAG_PENDING | self._answer_seq])
                    self._answer_seq += 1
                    return report
                return bytes(PIECE) + bytes([FLAG_PENDING])  # sequence 0 again: the end
            return b"\0" + self._status() + b"\0"

    def set_feature(self, report: bytes) -> None:
        if len(report) != FEATURE_SIZE:
            return
        flags = report[PIECE]
        if flags == RESET:
            self.reset()
            return
        if not flags & FLAG_WRITE:
            return
        seq = flags & SEQUENCE_MASK
        if seq >= PIECES:
            return  # DUMMY_REPORT_WRITE and other sequences: nothing to store
        with self._lock:
            if seq == 0:
                self._frame = bytearray(FRAME_SIZE)
                self._answer, self._answer_seq = None, 0
            self._frame[seq * PIECE : (seq + 1) * PIECE] = report[:PIECE]
            if seq != PIECES - 1:
                return
            frame, self._frame = bytes(self._frame), bytearray(FRAME_SIZE)
            payload, slot = frame[:PAYLOAD_SIZE], frame[PAYLOAD_SIZE]
            if struct.unpack_from("<H", frame, PAYLOAD_SIZE + 1)[0] != crc16(payload):
                log.debug("OTP frame with a bad CRC: ignored")
                return
            self._waits_for_touch = slot in SLOT_CHAL_HMAC and bool(
                self.otp.slots.get(SLOT_CHAL_HMAC[slot], {}).get("touch"))
            self._worker = threading.Thread(target=self._command, args=(slot, payload), daemon=True,
                                            name="virtual-otp-hid")
            self._worker.start()

    def _command(self, slot: int, payload: bytes) -> None:
        answer: bytes | None = None
        try:
            if slot in SLOT_CONFIG:
                self.otp.process(Apdu(0, OTP_INS_CONFIG, slot, 0, payload[:58]))  # the new status shows it
            elif slot in SLOT_CHAL_HMAC:
                answer = self.otp.process(Apdu(0, OTP_INS_CONFIG, slot, 0, payload))
            elif slot == SLOT_DEVICE_SERIAL:
                answer = self.otp.process(Apdu(0, OTP_INS_CONFIG, slot, 0))
            elif slot == SLOT_YK4_CAPABILITIES:
                answer = self.management.process(Apdu(0, MANAGEMENT_INS_READ_CONFIG, payload[0], 0))
        except ApduStatus as err:
            log.debug("OTP command %02x refused: %s", slot, err)
        with self._lock:
            if answer is not None:
                self._answer, self._answer_seq = with_crc(answer), 0


def hid_front_ends(token: Any) -> OtpHidFrontEnd:
    """A YubiKey's two HID interfaces on ``token``: its CTAPHID front end learns READ CONFIG (yubikit
    reads the device information there too); the OTP front end is returned."""
    from .management import ManagementApplet

    management = ManagementApplet(token.serial, tuple(token.otp.version))
    token.hid.vendor_commands[CTAPHID_YUBIKEY_READ_CONFIG] = lambda data: management.process(
        Apdu(0, MANAGEMENT_INS_READ_CONFIG, data[0] if data else 0, 0))
    return OtpHidFrontEnd(token.otp, management, tuple(token.otp.version))


class UhidToken:
    """A virtual token's USB HID interfaces (FIDO and OTP) as kernel devices; ``plug``/``unplug``."""

    def __init__(self, token: Any) -> None:
        self.token = token
        serial = str(token.serial)
        self.otp_front = hid_front_ends(token)
        self.fido = UhidDevice("Yubico YubiKey OTP+FIDO", serial, FIDO_REPORT_DESCRIPTOR, on_output=self._output)
        self.otp_device = UhidDevice("Yubico YubiKey OTP+FIDO", serial, OTP_REPORT_DESCRIPTOR,
                                     on_get_feature=self.otp_front.get_feature,
                                     on_set_feature=self.otp_front.set_feature)
        self._pump: threading.Thread | None = None
        self._pumping = threading.Event()

    @property
    def plugged(self) -> bool:
        return self.fido.created

    def plug(self) -> None:
        if self.plugged:
            return
        self.token.hid.plug()  # a power cycle: channels, PIN sessions and 3-strike counters reset
        self.otp_front.reset()
        self.fido.create()
        try:
            self.otp_device.create()
        except OSError:
            self.fido.destroy()
            raise
        self._pumping.set()
        self._pump = threading.Thread(target=self._pump_answers, daemon=True, name="uhid-fido-input")
        self._pump.start()

    def unplug(self) -> None:
        if not self.plugged:
            return
        self._pumping.clear()
        self.token.hid.unplug()
        self.fido.destroy()
        self.otp_device.destroy()
        if self._pump is not None:
            self._pump.join(1)

    def _output(self, report: bytes) -> None:
        if len(report) == FIDO_PACKET + 1:
            report = report[1:]  # the report number (0: this descriptor has none)
        try:
            self.token.hid.write(report)
        except OSError as err:
            log.debug("CTAPHID report refused: %s", err)

    def _pump_answers(self) -> None:
        answers: queue.Queue[bytes] = self.token.hid.out
        while self._pumping.is_set():
            try:
                packet = answers.get(timeout=POLL_MS / 1000)
            except queue.Empty:
                continue
            try:
                self.fido.send_input(packet)
            except OSError as err:
                log.debug("CTAPHID answer not delivered: %s", err)
