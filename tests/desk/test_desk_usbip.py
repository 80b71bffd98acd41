"""The virtual token as a whole USB YubiKey 5 over USB/IP: vhci-hcd, usbhid and pcscd's own libccid drive it.

Runs in the desk guest (conftest.py). ``tokenagent virtual-token run --usbip`` exports the device (bus
id 1-1) on 127.0.0.1:3240; the Debian ``usbip`` tool attaches it to the guest kernel's vhci-hcd, which
enumerates it as it would a key in a USB port: the kernel's usbhid takes the OTP keyboard and the FIDO
interface (two hidraw nodes), and a real pcscd, started with no reader configuration at all, finds the
CCID interface by hot-plug and drives it with Debian's libccid (not vpcd). Every tool here is someone
else's: where it and the virtual token disagree, the tool is right.

The uhid token of test_desk_hid.py (serial 12345678, product 0x0403) may still be plugged in: this
one has another serial and product id, and every check below picks it by them.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from deskkit import SETTLE, Agent, control, run, tokenagent

pytestmark = [pytest.mark.desk, pytest.mark.timeout(1800)]
SERIAL, SECOND = 23456789, 34567890
YKMAN = str(Path(sys.executable).parent / "ykman")
READER = "Yubico YubiKey OTP+FIDO+CCID 00 00"
HID_ID = "HID_ID=0003:00001050:00000407"


def _wait(condition: Any, what: str, timeout: float = SETTLE) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.3)


def _usb_present() -> bool:
    for device in Path("/sys/bus/usb/devices").glob("*"):
        with contextlib.suppress(OSError):
            if (device / "idVendor").read_text().strip() == "1050" and \
                    (device / "idProduct").read_text().strip() == "0407":
                return True
    return False


def _hidraw_nodes() -> list[str]:
    nodes = []
    for node in sorted(Path("/sys/class/hidraw").glob("hidraw*")):
        with contextlib.suppress(OSError):
            if HID_ID in (node / "device" / "uevent").read_text():
                nodes.append(f"/dev/{node.name}")
    return nodes


def _fido_node() -> str | None:
    for node in _hidraw_nodes():
        info = subprocess.run(["udevadm", "info", "--query=property", node], capture_output=True, text=True)
        if "ID_FIDO_TOKEN=1" in info.stdout:
            return node
    return None


def _readers() -> list[str]:
    from smartcard.System import readers

    try:
        return [str(r) for r in readers()]
    except Exception:  # noqa: BLE001 - pcscd not up yet
        return []


class UsbipToken:
    def __init__(self, state: Path, serial: int = SERIAL, extra: tuple[str, ...] = ()) -> None:
        self.state, self.log = state, state.with_suffix(".log")
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "tokenagent._cli.entry", "virtual-token", "run",
                                          "--state", str(state), "--serial", str(serial), "--usbip", *extra],
                                         stdout=out, stderr=subprocess.STDOUT)
        self.ctl = state.with_name(state.name + ".ctl")
        _wait(lambda: self.ctl.exists() or self.proc.poll() is not None, "the virtual token did not start")
        assert self.proc.poll() is None, self.log.read_text()

    def control(self, command: str) -> dict[str, Any]:
        return control(self.ctl, command)

    def attach(self) -> None:
        run("usbip", "attach", "-r", "127.0.0.1", "-b", "1-1")
        _wait(_usb_present, "the USB device did not appear")
        subprocess.run(["udevadm", "settle", "--timeout=60"], check=False)
        _wait(lambda: _fido_node() is not None, "the FIDO hidraw node did not appear")

    def stop(self) -> None:
        from agentkit import stop_process

        stop_process(self.proc)


@pytest.fixture(scope="module")
def usbip_token(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UsbipToken]:
    if os.environ.get("TOKENAGENT_DESK_GUEST") != "1":
        pytest.skip("desk tests run in the desk guest (tests/desk/guest.py)")
    run("modprobe", "vhci-hcd")
    token = UsbipToken(tmp_path_factory.mktemp("usbip") / "token.json")
    try:
        token.attach()
        yield token
    finally:
        token.stop()
        _wait(lambda: not _usb_present(), "the USB device did not go when its server stopped", 60)


@pytest.fixture(scope="module")
def pcscd(usbip_token: UsbipToken, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A real pcscd with no reader.conf entries: it finds USB readers by hot-plug, with libccid."""
    from agentkit import stop_process
    from pcscd import pcscd_help, pcscd_options

    confdir = tmp_path_factory.mktemp("pcscd-conf")  # empty: no vpcd, no serial readers
    log = confdir.with_name("pcscd.log")
    Path("/run/pcscd").mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as out:
        proc = subprocess.Popen(["pcscd", "--foreground", "--debug", "--config", str(confdir),
                                 *pcscd_options(pcscd_help())], stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait(lambda: READER in _readers() or proc.poll() is not None, f"pcscd shows no {READER}: {_readers()}")
        assert proc.poll() is None, log.read_text(errors="replace")
        yield log
    finally:
        stop_process(proc)


def test_usbip_exports_and_the_kernel_enumerates_a_yubikey_5(usbip_token: UsbipToken) -> None:
    listed = run("usbip", "list", "-r", "127.0.0.1").stdout  # attached already: still listed as exported
    assert "1-1" in listed and "1050:0407" in listed, listed
    assert "ID 1050:0407" in run("lsusb").stdout
    verbose = run("lsusb", "-v", "-d", "1050:0407", check=False).stdout
    assert re.search(r"iProduct\s+2 YubiKey OTP\+FIDO\+CCID", verbose), verbose
    assert re.search(r"iManufacturer\s+1 Yubico", verbose), verbose
    classes = re.findall(r"bInterfaceClass\s+(\d+)", verbose)
    assert classes == ["3", "3", "11"], classes  # OTP keyboard, FIDO, CCID
    assert "ChipCard Interface Descriptor" in verbose or "Smart Card Device Class Descriptor" in verbose
    tree = run("lsusb", "-t").stdout
    assert tree.count("Driver=usbhid") >= 2, tree  # the kernel's usbhid drives both HID interfaces
    assert len(_hidraw_nodes()) == 2


def test_usbip_libfido2_and_python_fido2_see_the_fido_interface(usbip_token: UsbipToken) -> None:
    from fido2.ctap2 import Ctap2
    from fido2.hid import CtapHidDevice

    node = _fido_node()
    assert node is not None
    listed = run("fido2-token", "-L").stdout
    line = next((entry for entry in listed.splitlines() if entry.startswith(node + ":")), "")
    assert "vendor=0x1050" in line and "product=0x0407" in line, listed
    assert "Yubico" in line and "YubiKey OTP+FIDO+CCID" in line, line  # strings read from the USB device
    info = run("fido2-token", "-I", node).stdout
    assert "FIDO_2_0" in info and "hmac-secret" in info, info
    devices = [d for d in CtapHidDevice.list_devices() if d.descriptor.pid == 0x0407]
    assert len(devices) == 1, devices
    try:
        assert devices[0].descriptor.vid == 0x1050
        got = Ctap2(devices[0]).get_info()
        print(f"python-fido2: {devices[0]} versions={got.versions} extensions={got.extensions}")
        assert "hmac-secret" in got.extensions
    finally:
        devices[0].close()


def test_usbip_pcscd_drives_the_ccid_interface_with_libccid(pcscd: Path) -> None:
    from smartcard.System import readers

    reader = next(r for r in readers() if str(r) == READER)
    connection = reader.createConnection()
    connection.connect()
    try:
        atr = bytes(connection.getATR())
        print(f"{reader}: ATR {atr.hex(' ')}")
        assert atr == bytes.fromhex("3BFD1300008131FE158073C021C057597562694B657940")
        data, sw1, sw2 = connection.transmit(list(bytes.fromhex("00A4040008A000000308000010")))
        assert (sw1, sw2) == (0x90, 0x00)  # PIV selected, through libccid's XfrBlock
    finally:
        connection.disconnect()
    text = pcscd.read_text(errors="replace")
    assert "ifd-ccid.bundle" in text or "libccid" in text, text[-3000:]
    assert "vpcd" not in text.lower()


def test_usbip_ykman_lists_the_key_and_reads_piv_through_pcscd(pcscd: Path) -> None:
    listed = run(YKMAN, "list").stdout
    line = next((entry for entry in listed.splitlines() if str(SERIAL) in entry), "")
    assert "YubiKey 5" in line and "OTP+FIDO+CCID" in line, listed
    out = run(YKMAN, "--device", str(SERIAL), "piv", "info").stdout
    assert re.search(r"PIV version:\s+5\.7\.2", out), out
    out = run(YKMAN, "--device", str(SERIAL), "info").stdout
    assert str(SERIAL) in out and "PIV" in out, out


def test_usbip_ykman_otp_info_over_the_keyboard_interface(usbip_token: UsbipToken) -> None:
    out = run(YKMAN, "--device", str(SERIAL), "otp", "info").stdout
    assert re.search(r"Slot 1:\s+(empty|programmed)", out), out


def test_usbip_unplug_disconnects_and_plug_exports_again(usbip_token: UsbipToken, pcscd: Path) -> None:
    usbip_token.control("unplug")
    _wait(lambda: not _usb_present(), "the USB device stayed after unplug", 60)
    _wait(lambda: READER not in _readers(), "pcscd kept the reader after unplug", 60)
    assert _fido_node() is None
    usbip_token.control("plug")
    usbip_token.attach()
    _wait(lambda: READER in _readers(), "pcscd did not find the reader again", 60)


def test_usbip_tokenagent_opens_vaults_over_hid_and_over_libccid(usbip_token: UsbipToken, pcscd: Path,
                                                                 home: Path, tmp_path: Path) -> None:
    """tokenagent's own clients through the kernel and pcscd: FIDO2 over hidraw, PIV over libccid."""
    pins = tmp_path / "pins"
    pins.write_text("123456\n")
    found = json.loads(tokenagent(home, "devices", "--json").stdout)["devices"]
    mine = [(d["type"], d["transport"]) for d in found if d.get("serial") == SERIAL]
    print("tokenagent devices:", mine)
    assert ("fido2", "hid") in mine and ("fido2", "pcsc") not in mine, found  # FIDO is HID over USB
    assert any(kind == "piv" for kind, _ in mine), found
    tokenagent(home, "init", "f", "--fido2", "--serial", str(SERIAL), "--json")
    drilled = json.loads(tokenagent(home, "drill", "f", "--json").stdout)
    assert drilled["results"] == [{"ok": True, "slot": "1"}], drilled
    tokenagent(home, "init", "p", "--piv", "--serial", str(SERIAL), "--pin-file", str(pins), "--json")
    drilled = json.loads(tokenagent(home, "drill", "p", "--pin-file", str(pins), "--json").stdout)
    assert drilled["results"] == [{"ok": True, "slot": "1"}], drilled


def test_usbip_agent_unlocks_on_attach_and_locks_on_detach(usbip_token: UsbipToken, pcscd: Path, home: Path,
                                                           tmp_path: Path) -> None:
    """``--usbip-attach``: the token plugs itself into vhci-hcd; the agent follows the real hot-plug."""
    usbip_token.control("unplug")
    _wait(lambda: not _usb_present(), "the USB device stayed after unplug", 60)
    second = UsbipToken(tmp_path / "second.json", serial=SECOND, extra=("--usbip-port", "3241", "--usbip-attach"))
    agent = None
    try:
        _wait(_usb_present, "--usbip-attach did not plug the device in")
        tokenagent(home, "init", "a", "--fido2", "--serial", str(SECOND), "--json")
        second.control("unplug")
        _wait(lambda: not _usb_present(), "the USB device stayed after unplug", 60)
        agent = Agent(home, tmp_path / "agent.log")
        second.control("plug")
        agent.wait_event("unlocked")
        second.control("unplug")
        agent.wait_event("locked")
        names = [(e["event"], e.get("reader") or e.get("vault")) for e in agent.events]
        print("agent events:", json.dumps(agent.events))
        # the uhid token of test_desk_hid.py may be plugged in too: follow the node that unlocked "a"
        source = next(e["source"] for e in agent.events if e["event"] == "unlocked")
        node = source.removeprefix("token in ")
        assert node.startswith("hid:/dev/hidraw"), source
        wanted = [("token-added", node), ("unlocked", "a"), ("token-removed", node), ("locked", "a")]
        assert [n for n in names if n in wanted] == wanted, names
        assert next(e for e in agent.events if e["event"] == "locked")["reason"] == "token-removed"
    finally:
        if agent is not None:
            agent.stop()
        second.stop()
        _wait(lambda: not _usb_present(), "the second device stayed", 60)
        usbip_token.control("plug")
        usbip_token.attach()
