"""The USB/IP transport on the host: its framing, its descriptors, and real clients over its interfaces.

The kernel half (vhci-hcd, usbhid, pcscd's libccid) runs in the desk tier (tests/desk/test_desk_usbip.py);
here a small USB/IP client written from the kernel's Documentation/usb/usbip_protocol.rst speaks to the
server over TCP, and python-fido2 (CTAPHID over the interrupt endpoints) and yubikit (PIV over CCID
messages on the bulk endpoints, OTP over feature reports in control requests) run on top of it.
"""

from __future__ import annotations

import plistlib
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fido2.ctap2 import Ctap2
from fido2.hid import CtapHidDevice
from fido2.hid.base import CtapHidConnection, HidDescriptor
from yubikit.core import TRANSPORT
from yubikit.core.otp import OtpConnection
from yubikit.core.smartcard import SmartCardConnection
from yubikit.management import ManagementSession
from yubikit.piv import PivSession
from yubikit.yubiotp import YubiOtpSession

from tokenagent.virtual.ccid import USB_ATR
from tokenagent.virtual.token import VirtualToken
from tokenagent.virtual.uhid import FIDO_REPORT_DESCRIPTOR, OTP_REPORT_DESCRIPTOR
from tokenagent.virtual.usbip import UsbipServer

SERIAL = 3456789
ECONNRESET, EPIPE = 104, 32
CCID_PLIST = Path("/usr/lib/pcsc/drivers/ifd-ccid.bundle/Contents/Info.plist")


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise EOFError("the server closed the connection")
        data += chunk
    return data


def devlist(port: int) -> tuple[int, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(struct.pack(">HHI", 0x0111, 0x8005, 0))
        version, code, status, count = struct.unpack(">HHII", recv_exactly(s, 12))
        assert (version, code, status) == (0x0111, 0x0005, 0)
        rest = b""
        if count:
            rest = recv_exactly(s, 312)
            rest += recv_exactly(s, 4 * rest[-1])
        return count, rest


def import_status(port: int, busid: bytes) -> tuple[int, socket.socket]:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(struct.pack(">HHI", 0x0111, 0x8003, 0) + busid.ljust(32, b"\0"))
    version, code, status = struct.unpack(">HHI", recv_exactly(s, 8))
    assert (version, code) == (0x0111, 0x0003)
    return status, s


class Client:
    """A USB/IP importer: URBs out, their answers collected by seqnum (IN ones may wait long)."""

    def __init__(self, port: int) -> None:
        status, self.sock = import_status(port, b"1-1")
        assert status == 0
        self.record = recv_exactly(self.sock, 312)
        self.sock.settimeout(None)
        self.answers: dict[int, tuple[int, int, bytes]] = {}
        self.cond = threading.Condition()
        self.seq = 0
        self._in: dict[int, bool] = {}
        self.closed = False
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            while True:
                head = recv_exactly(self.sock, 48)
                command, seqnum, devid, direction, ep = struct.unpack_from(">IIIII", head)
                assert (devid, direction, ep) == (0, 0, 0)  # "for server this shall be 0"
                status, length = struct.unpack_from(">iI", head, 20)
                data = b""
                if command == 3 and self._in.get(seqnum) and length:
                    data = recv_exactly(self.sock, length)
                with self.cond:
                    self.answers[seqnum] = (command, status, data)
                    self.cond.notify_all()
        except (EOFError, OSError):
            with self.cond:
                self.closed = True
                self.cond.notify_all()

    def submit(self, ep: int, direction_in: bool, length: int, data: bytes = b"", setup: bytes = bytes(8)) -> int:
        self.seq += 1
        self._in[self.seq] = direction_in
        head = struct.pack(">IIIII", 1, self.seq, (1 << 16) | 2, 1 if direction_in else 0, ep)
        head += struct.pack(">IIiii8s", 0, length, 0, 0 if ep else -1, 0, setup)
        self.sock.sendall(head + (b"" if direction_in else data))
        return self.seq

    def unlink(self, victim: int) -> int:
        self.seq += 1
        self.sock.sendall(struct.pack(">IIIII", 2, self.seq, (1 << 16) | 2, 0, 0) + struct.pack(">I24s", victim, b""))
        return self.seq

    def wait(self, seqnum: int, timeout: float = 10.0) -> tuple[int, int, bytes]:
        with self.cond:
            assert self.cond.wait_for(lambda: seqnum in self.answers or self.closed, timeout), f"no answer to {seqnum}"
            assert seqnum in self.answers, "the connection closed"
            return self.answers.pop(seqnum)

    def answered(self, seqnum: int, within: float) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: seqnum in self.answers, within)

    def control(self, request_type: int, request: int, value: int, index: int, length: int,
                data: bytes = b"") -> tuple[int, bytes]:
        setup = struct.pack("<BBHHH", request_type, request, value, index, length or len(data))
        _, status, answer = self.wait(self.submit(0, bool(request_type & 0x80), length or len(data), data, setup))
        return status, answer

    def descriptor(self, kind: int, index: int = 0, length: int = 255, recipient: int = 0x80, iface: int = 0) -> bytes:
        status, data = self.control(recipient, 6, (kind << 8) | index, iface, length)
        assert status == 0
        return data

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[UsbipServer]:
    token = VirtualToken(tmp_path / "token.json", serial=SERIAL)
    server = UsbipServer(token, port=0)
    server.plug()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def client(server: UsbipServer) -> Iterator[Client]:
    client = Client(server.port)
    assert client.control(0x00, 9, 1, 0, 0) == (0, b"")  # SET_CONFIGURATION 1
    try:
        yield client
    finally:
        client.close()


def walk(config: bytes) -> list[bytes]:
    """The descriptors in a configuration descriptor, each checked to fit."""
    out, at = [], 0
    while at < len(config):
        size = config[at]
        assert size >= 2 and at + size <= len(config), config.hex()
        out.append(config[at : at + size])
        at += size
    return out


def test_devlist_and_import_records_describe_a_yubikey_5_nfc(server: UsbipServer) -> None:
    count, record = devlist(server.port)
    assert count == 1
    path, busid, busnum, devnum, speed, vid, pid, bcd = struct.unpack_from(">256s32sIIIHHH", record)
    assert busid.rstrip(b"\0") == b"1-1" and (busnum, devnum, speed) == (1, 2, 2)  # full speed
    assert (vid, pid, bcd) == (0x1050, 0x0407, 0x0572)
    assert record[309:312] == bytes([1, 1, 3])  # configuration 1 of 1, three interfaces
    assert record[312:] == bytes([3, 1, 1, 0, 3, 0, 0, 0, 0x0B, 0, 0, 0])  # keyboard, FIDO HID, CCID
    status, sock = import_status(server.port, b"2-9")
    sock.close()
    assert status == 4  # ST_NODEV: no such bus id
    client = Client(server.port)
    try:
        status, sock = import_status(server.port, b"1-1")
        sock.close()
        assert status == 2  # ST_DEV_BUSY: one importer at a time
        assert client.record[:312] == record[:312]
    finally:
        client.close()


def test_descriptors_are_those_of_the_three_interfaces(client: Client) -> None:
    device = client.descriptor(1, length=64)  # the kernel's first read asks for 64 bytes
    assert len(device) == 18 and device[:2] == b"\x12\x01"
    bcd_usb, _, _, _, max0, vid, pid, bcd, manufacturer, product, serial, configs = struct.unpack_from(
        "<HBBBBHHHBBBB", device, 2)
    assert (bcd_usb, max0, vid, pid, bcd, configs) == (0x0200, 64, 0x1050, 0x0407, 0x0572, 1)
    assert client.descriptor(1, length=8) == device[:8]  # cut to wLength
    head = client.descriptor(2, length=9)
    total = struct.unpack_from("<H", head, 2)[0]
    config = client.descriptor(2, length=total)
    assert len(config) == total and config[4] == 3
    parts = walk(config)
    interfaces = [p for p in parts if p[1] == 4]
    assert [(p[2], p[5], p[6], p[7]) for p in interfaces] == [(0, 3, 1, 1), (1, 3, 0, 0), (2, 0x0B, 0, 0)]
    endpoints = [(p[2], p[3], struct.unpack_from("<H", p, 4)[0]) for p in parts if p[1] == 5]
    assert endpoints == [(0x81, 3, 8), (0x04, 3, 64), (0x84, 3, 64), (0x02, 2, 64), (0x82, 2, 64), (0x83, 3, 8)]
    classes = [p for p in parts if p[1] == 0x21]
    hid_otp, hid_fido, ccid = classes
    assert struct.unpack_from("<H", hid_otp, 7)[0] == len(OTP_REPORT_DESCRIPTOR)
    assert struct.unpack_from("<H", hid_fido, 7)[0] == len(FIDO_REPORT_DESCRIPTOR)
    assert len(ccid) == 54  # CCID 1.1 5.1
    protocols, = struct.unpack_from("<I", ccid, 6)
    features, max_message = struct.unpack_from("<II", ccid, 40)
    assert protocols == 2 and features & 0x00040000 and max_message == 3072  # T=1, extended APDU level
    assert client.descriptor(0x22, recipient=0x81, iface=1) == FIDO_REPORT_DESCRIPTOR
    assert client.descriptor(0x22, recipient=0x81, iface=0) == OTP_REPORT_DESCRIPTOR
    assert client.descriptor(3, 0) == b"\x04\x03\x09\x04"
    assert client.descriptor(3, manufacturer)[2:].decode("utf-16-le") == "Yubico"
    assert client.descriptor(3, product)[2:].decode("utf-16-le") == "YubiKey OTP+FIDO+CCID"
    assert serial == 0  # a YubiKey shows no USB serial number unless configured to
    assert client.control(0x80, 6, 0x0600, 0, 10)[0] == -EPIPE  # no device qualifier: a full-speed device
    assert client.control(0x40, 0x55, 0, 0, 0)[0] == -EPIPE  # vendor requests stall


class InterruptHid(CtapHidConnection):
    """What the kernel's usbhid does for hidraw: interrupt OUT for writes, an interrupt IN URB for reads."""

    def __init__(self, client: Client) -> None:
        self.client = client

    def write_packet(self, data: bytes) -> None:
        _, status, _ = self.client.wait(self.client.submit(4, False, 64, data))
        assert status == 0

    def read_packet(self) -> bytes:
        _, status, data = self.client.wait(self.client.submit(4, True, 64), 30)
        assert status == 0 and len(data) == 64
        return data

    def close(self) -> None:
        pass


def test_python_fido2_over_the_interrupt_endpoints(client: Client) -> None:
    descriptor = HidDescriptor("usbip", 0x1050, 0x0407, 64, 64, "YubiKey OTP+FIDO+CCID", None)
    device = CtapHidDevice(descriptor, InterruptHid(client))
    assert device.version == 2 and device.device_version == (5, 7, 2)
    info = Ctap2(device).get_info()
    assert "hmac-secret" in info.extensions and "FIDO_2_1" in info.versions


def test_the_ccid_slots_power_does_not_reboot_the_fido_interface(client: Client) -> None:
    """pcscd powers the CCID slot on when a client connects and off after idling, whenever it likes;
    on a YubiKey over USB that does not touch the FIDO authenticator, which is the HID interface's.
    The virtual token's did (a new key agreement), and an hmac-secret assertion begun over HID
    failed with INVALID_PARAMETER when the agent's PC/SC watcher met pcscd's power-on."""
    from fido2.ctap2.pin import ClientPin

    descriptor = HidDescriptor("usbip", 0x1050, 0x0407, 64, 64, "YubiKey OTP+FIDO+CCID", None)
    ctap = Ctap2(CtapHidDevice(descriptor, InterruptHid(client)))

    def key_agreement() -> object:
        return ctap.client_pin(2, ClientPin.CMD.GET_KEY_AGREEMENT)[ClientPin.RESULT.KEY_AGREEMENT]

    before = key_agreement()
    card = CcidCard(client)  # PC_to_RDR_IccPowerOn
    card.message(0x63, b"")  # PC_to_RDR_IccPowerOff
    CcidCard(client)  # and on again
    assert key_agreement() == before


class CcidCard(SmartCardConnection):
    """What libccid does: PowerOn, then one XfrBlock per APDU on bulk OUT, the answer read on bulk IN."""

    def __init__(self, client: Client) -> None:
        self.client, self.seq = client, 0
        self.atr = self.message(0x62, b"")

    def message(self, kind: int, data: bytes) -> bytes:
        self.seq = (self.seq + 1) & 0xFF
        message = struct.pack("<BIBBBBB", kind, len(data), 0, self.seq, 0, 0, 0) + data
        assert self.client.wait(self.client.submit(2, False, len(message), message))[1] == 0
        while True:
            answer = b""
            while len(answer) < 10 or len(answer) < 10 + struct.unpack_from("<I", answer, 1)[0]:
                _, status, chunk = self.client.wait(self.client.submit(2, True, 64), 30)  # 64: longer ones split
                assert status == 0
                answer += chunk
            assert answer[6] == self.seq
            if answer[7] & 0xC0 != 0x80:  # not a time extension
                assert answer[7] & 0x40 == 0, answer.hex()
                return answer[10:]

    @property
    def transport(self) -> TRANSPORT:
        return TRANSPORT.USB

    def send_and_receive(self, apdu: bytes) -> tuple[bytes, int]:
        answer = self.message(0x6F, apdu)
        return answer[:-2], int.from_bytes(answer[-2:], "big")

    def close(self) -> None:
        pass


def test_yubikit_piv_and_management_over_ccid_messages(client: Client) -> None:
    card = CcidCard(client)
    assert card.atr == USB_ATR
    assert card.atr[1] & 0xF0 == 0xF0  # what ykman reads as "USB", not NFC
    check = 0
    for byte in card.atr[1:]:
        check ^= byte
    assert check == 0  # TCK
    assert tuple(PivSession(card).version) == (5, 7, 2)
    assert ManagementSession(card).read_device_info().serial == SERIAL
    # a YubiKey's USB CCID interface has no FIDO applet (FIDO is HID over USB)
    assert card.send_and_receive(bytes.fromhex("00A4040008A0000006472F0001"))[1] == 0x6A82
    slot_status = struct.pack("<BIBBBBB", 0x65, 0, 0, 9, 0, 0, 0)
    assert client.wait(client.submit(2, False, 10, slot_status))[1] == 0
    answer = client.wait(client.submit(2, True, 64))[2]
    assert answer[0] == 0x81 and answer[6] == 9 and answer[7] == 0  # present, powered, processed
    params = struct.pack("<BIBBBBB", 0x6C, 0, 0, 10, 0, 0, 0)
    client.wait(client.submit(2, False, 10, params))
    answer = client.wait(client.submit(2, True, 64))[2]
    assert answer[0] == 0x82 and answer[9] == 1 and len(answer) == 17  # T=1 parameters


class ControlFeatureReports(OtpConnection):
    """What usbhid does for hidraw's HIDIOCGFEATURE / HIDIOCSFEATURE: GET_REPORT / SET_REPORT on interface 0."""

    def __init__(self, client: Client) -> None:
        self.client = client

    def receive(self) -> bytes:
        status, data = self.client.control(0xA1, 0x01, 0x0300, 0, 8)
        assert status == 0 and len(data) == 8
        return data

    def send(self, data: bytes) -> None:
        assert self.client.control(0x21, 0x09, 0x0300, 0, 0, data) == (0, b"")

    def close(self) -> None:
        pass


def test_yubikit_otp_over_feature_reports_in_control_requests(client: Client) -> None:
    assert client.control(0x21, 0x0A, 0, 0, 0) == (0, b"")  # SET_IDLE, as usbhid sends
    session = YubiOtpSession(ControlFeatureReports(client))
    assert session.get_serial() == SERIAL
    assert tuple(session.version) == (5, 7, 2)


def test_unlink_cancels_a_pending_in_urb_and_not_an_answered_one(client: Client) -> None:
    keyboard = client.submit(1, True, 8)  # the keyboard's interrupt IN: a YubiKey types nothing here
    assert not client.answered(keyboard, 0.3)
    command, status, _ = client.wait(client.unlink(keyboard))
    assert (command, status) == (4, -ECONNRESET)
    assert not client.answered(keyboard, 0.3)  # no RET_SUBMIT after a successful unlink
    done = client.submit(0, True, 18, setup=struct.pack("<BBHHH", 0x80, 6, 0x0100, 0, 18))
    client.wait(done)
    command, status, _ = client.wait(client.unlink(done))
    assert (command, status) == (4, 0)


def test_slot_change_then_unplug_closes_the_connection(server: UsbipServer, client: Client) -> None:
    notify = client.wait(client.submit(3, True, 8))[2]
    assert notify == b"\x50\x03"  # RDR_to_PC_NotifySlotChange: card present, changed
    pending = client.submit(1, True, 8)
    server.unplug()
    with client.cond:
        assert client.cond.wait_for(lambda: client.closed, 10)
    assert pending not in client.answers
    assert devlist(server.port)[0] == 0  # no longer exported
    status, sock = import_status(server.port, b"1-1")
    sock.close()
    assert status == 4
    server.plug()
    deadline = time.monotonic() + 10
    while devlist(server.port)[0] != 1:
        assert time.monotonic() < deadline
        time.sleep(0.1)


@pytest.mark.skipif(not CCID_PLIST.exists(), reason="libccid is not installed (apt-get install libccid)")
def test_libccid_knows_the_product_id() -> None:
    plist = plistlib.loads(CCID_PLIST.read_bytes())
    pairs = {(int(v, 16), int(p, 16)): n for v, p, n in
             zip(plist["ifdVendorID"], plist["ifdProductID"], plist["ifdFriendlyName"], strict=True)}
    assert pairs[(0x1050, 0x0407)] == "Yubico YubiKey OTP+FIDO+CCID"


def test_ccid_sends_time_extensions_while_the_card_waits() -> None:
    """A command that waits (for a touch) gets a time extension each second, then its answer."""
    from tokenagent.virtual.ccid import TIME_EXTENSION_EVERY, CcidSlot

    release = threading.Event()

    class SlowCard:
        def power_on(self, spare: tuple[object, ...] = ()) -> bytes:
            return b""

        def power_off(self, spare: tuple[object, ...] = ()) -> None:
            pass

        def transmit(self, apdu: bytes) -> bytes:
            release.wait(30)
            return b"\x01\x02\x90\x00"

    sent: list[bytes] = []
    slot = CcidSlot(SlowCard(), sent.append)
    slot.receive(struct.pack("<BIBBBBB", 0x62, 0, 0, 1, 0, 0, 0))
    assert sent.pop(0)[10:] == USB_ATR
    slot.receive(struct.pack("<BIBBBBB", 0x6F, 4, 0, 2, 0, 0, 0))  # the header in one transfer...
    slot.receive(bytes.fromhex("00A40400"))  # ...and its APDU in the next
    deadline = time.monotonic() + 30
    while len(sent) < 2:
        assert time.monotonic() < deadline
        time.sleep(TIME_EXTENSION_EVERY / 4)
    busy = struct.pack("<BIBBBBB", 0x65, 0, 0, 3, 0, 0, 0)
    slot.receive(busy)  # the slot is busy meanwhile
    release.set()
    while not any(m[10:] == b"\x01\x02\x90\x00" for m in sent):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    extensions = [m for m in sent if m[7] & 0xC0 == 0x80]
    assert len(extensions) >= 2 and all(m[0] == 0x80 and m[6] == 2 for m in extensions)
    refused = next(m for m in sent if m[6] == 3)
    assert refused[0] == 0x81 and refused[7] & 0x40 and refused[8] == 0xE0  # CMD_SLOT_BUSY
    answer = sent[-1]
    assert answer[0] == 0x80 and answer[6] == 2 and answer[7] == 0


def test_discovery_reads_a_yubikeys_serial_over_its_fido_interface(client: Client) -> None:
    """A YubiKey shows no USB serial string: tokenagent asks its FIDO interface (READ CONFIG) instead."""
    from tokenagent.discovery import device_serial

    descriptor = HidDescriptor("usbip", 0x1050, 0x0407, 64, 64, "YubiKey OTP+FIDO+CCID", None)
    device = CtapHidDevice(descriptor, InterruptHid(client))
    assert device.serial_number is None
    assert device_serial(device) == SERIAL
    other = CtapHidDevice(HidDescriptor("other", 0x20A0, 0x42B1, 64, 64, "another maker", None),
                          InterruptHid(client))
    assert device_serial(other) is None  # not a YubiKey: nothing asked


def test_cli_refuses_two_usb_identities_and_says_why_a_port_is_taken(tmp_path: Path) -> None:
    import subprocess
    import sys

    tmp_path.chmod(0o700)
    command = [sys.executable, "-m", "tokenagent._cli.entry", "virtual-token", "run", "--state",
               str(tmp_path / "t.json")]
    both = subprocess.run([*command, "--usbip", "--uhid"], capture_output=True, text=True, timeout=120)
    assert both.returncode != 0 and "Traceback" not in both.stderr
    assert "--uhid and --usbip" in both.stderr and len(both.stderr.strip().splitlines()) == 1, both.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        busy = subprocess.run([*command, "--usbip", "--usbip-port", str(port)], capture_output=True, text=True,
                              timeout=120)
    assert busy.returncode != 0 and "Traceback" not in busy.stderr
    assert "cannot plug in the USB/IP device" in busy.stderr and len(busy.stderr.strip().splitlines()) == 1, \
        busy.stderr
