"""The virtual token behind a real kernel: uhid -> /dev/hidraw -> udev -> tools and tokenagent.

Runs in the desk guest (see conftest.py); on the host each test reports its guest outcome.
Every tool here is someone else's (udev, libfido2, python-fido2, ykman): where it and the
virtual token disagree, the tool is right.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from deskkit import SERIAL, UhidToken, fido_hidraw, run, tokenagent

pytestmark = [pytest.mark.desk, pytest.mark.timeout(1800)]  # the host side waits for the whole guest
YKMAN = str(Path(sys.executable).parent / "ykman")  # the console script, as a user runs it


def _properties(node: str) -> dict[str, str]:
    out = run("udevadm", "info", "--query=property", node).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def _yubikey_nodes() -> list[str]:
    nodes = []
    for node in sorted(Path("/dev").glob("hidraw*")):
        uevent = Path(f"/sys/class/hidraw/{node.name}/device/uevent").read_text()
        if "HID_ID=0003:00001050:00000403" in uevent:
            nodes.append(str(node))
    return nodes


def test_udev_tags_both_interfaces_for_the_user_and_the_agent(uhid_token: UhidToken) -> None:
    nodes = _yubikey_nodes()
    assert len(nodes) == 2, f"a YubiKey with OTP and FIDO has two HID interfaces: {nodes}"
    fido = fido_hidraw()
    assert len(fido) == 1 and fido[0] in nodes
    for node in nodes:
        props = _properties(node)
        tags = props.get("CURRENT_TAGS", props.get("TAGS", ""))
        assert ":uaccess:" in tags and ":tokenagent:" in tags and ":systemd:" in tags, (node, props)
        assert "tokenagent.service" in props.get("SYSTEMD_USER_WANTS", ""), (node, props)
    assert _properties(fido[0]).get("ID_SECURITY_TOKEN") == "1"  # systemd's own rules agree it is a FIDO key
    uniq = Path(f"/sys/class/hidraw/{Path(fido[0]).name}/device/uevent").read_text()
    assert f"HID_UNIQ={SERIAL}" in uniq


def test_udev_announces_each_interface_once_per_plug(uhid_token: UhidToken) -> None:
    """One plug, one ``add`` per hidraw node, as on a desk. The agent's HID watcher acts on each
    event; a guest running two udev daemons announced every node twice (the rules ran twice)."""
    import pyudev

    monitor = pyudev.Monitor.from_netlink(pyudev.Context())
    monitor.filter_by("hidraw")
    monitor.start()
    uhid_token.unplug()
    while monitor.poll(timeout=0.5) is not None:
        pass  # the removes
    uhid_token.plug()
    events = []
    while (event := monitor.poll(timeout=2)) is not None:
        events.append((event.action, event.device_node))
    adds = [node for action, node in events if action == "add"]
    assert len(adds) == 2 and len(set(adds)) == 2, f"expected one add per interface (FIDO, OTP): {events}"


def test_libfido2_lists_and_describes_the_key(uhid_token: UhidToken) -> None:
    node = fido_hidraw()[0]
    listed = run("fido2-token", "-L").stdout
    assert node in listed and "0x1050" in listed and "0x0403" in listed, listed
    info = run("fido2-token", "-I", node).stdout
    assert "FIDO_2_0" in info and "hmac-secret" in info, info
    assert re.search(r"aaguid: [0-9a-f]{32}", info), info


def test_python_fido2_finds_it_on_hidraw(uhid_token: UhidToken) -> None:
    from fido2.ctap2 import Ctap2
    from fido2.hid import CtapHidDevice

    devices = list(CtapHidDevice.list_devices())
    assert len(devices) == 1, devices
    device = devices[0]
    try:
        assert device.descriptor.vid == 0x1050 and device.descriptor.pid == 0x0403
        assert device.serial_number == str(SERIAL)
        info = Ctap2(device).get_info()
        print(f"python-fido2: {device} versions={info.versions} extensions={info.extensions}")
        assert "hmac-secret" in info.extensions and "FIDO_2_0" in info.versions
    finally:
        device.close()


def test_ykman_fido_info_over_usb(uhid_token: UhidToken) -> None:
    out = run(YKMAN, "fido", "info").stdout
    assert re.search(r"AAGUID:\s+[0-9a-f-]{36}", out), out
    assert "PIN" in out


def test_ykman_otp_info_over_usb(uhid_token: UhidToken) -> None:
    out = run(YKMAN, "otp", "info").stdout
    assert re.search(r"Slot 1:\s+(empty|programmed)", out) and re.search(r"Slot 2:\s+(empty|programmed)", out), out


def test_ykman_lists_the_key_with_its_serial(uhid_token: UhidToken) -> None:
    out = run(YKMAN, "list", "--serials").stdout
    assert out.split() == [str(SERIAL)], out


def test_tokenagent_devices_lists_it_over_hid(uhid_token: UhidToken, home: Path) -> None:
    found = json.loads(tokenagent(home, "devices", "--json").stdout)["devices"]
    fido = [d for d in found if d["type"] == "fido2"]
    assert len(fido) == 1 and fido[0]["transport"] == "hid" and fido[0]["serial"] == SERIAL, found
    assert fido[0]["hmac_secret"] is True
    otp = [d for d in found if d["type"] == "otp"]
    assert len(otp) == 1 and otp[0]["transport"] == "hid" and otp[0]["serial"] == SERIAL, found


def test_init_enroll_and_open_over_hid(uhid_token: UhidToken, home: Path) -> None:
    """init makes the FIDO2 credential over hidraw; enroll opens the vault with it (a second
    credential on the same key is refused, rightly); drill opens every slot again."""
    tokenagent(home, "init", "v", "--fido2", "--json")
    enrolled = json.loads(tokenagent(home, "enroll", "v", "--recovery", "--label", "paper", "--json").stdout)
    assert enrolled["unlocked_with"] == "1", enrolled  # opened with the FIDO2 slot, over hidraw
    slots = json.loads(tokenagent(home, "slots", "v", "--json").stdout)
    assert len(slots["slots"]) == 2, slots
    drilled = json.loads(tokenagent(home, "drill", "v", "1", "--json").stdout)
    assert drilled["results"] == [{"ok": True, "slot": "1"}], drilled


def test_otp_challenge_response_over_hid(uhid_token: UhidToken, home: Path) -> None:
    """yubikit's OTP over HID feature reports (program slot 2, then challenge-response) through tokenagent."""
    tokenagent(home, "init", "o", "--otp", "--otp-program", "--otp-slot", "2", "--json", "--force")
    drilled = json.loads(tokenagent(home, "drill", "o", "--json").stdout)
    print(json.dumps(drilled))
    out = run(YKMAN, "otp", "info").stdout
    assert re.search(r"Slot 2:\s+programmed", out), out


def _agent(home: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "TOKENAGENT_HOME": str(home), "TOKENAGENT_TEST_KDF": "1"}
    with open(log, "wb") as out:
        return subprocess.Popen([sys.executable, "-m", "tokenagent._cli.entry", "agent"], env=env, stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def _socket(home: Path) -> Path:
    from tokenagent import paths

    old = os.environ.get("TOKENAGENT_HOME")
    os.environ["TOKENAGENT_HOME"] = str(home)
    try:
        return Path(paths.agent_socket())
    finally:
        if old is None:
            del os.environ["TOKENAGENT_HOME"]
        else:
            os.environ["TOKENAGENT_HOME"] = old


def test_agent_unlocks_on_plug_and_locks_on_removal_through_udev(uhid_token: UhidToken, home: Path,
                                                                 tmp_path: Path) -> None:
    from agentkit import stop_process

    from tokenagent.client import AgentClient

    tokenagent(home, "init", "p", "--fido2", "--json")
    (home / "config").mkdir(mode=0o700, exist_ok=True)
    (home / "config" / "config.toml").write_text("[agent]\nremoval_grace = 0.5\n")
    uhid_token.unplug()
    log = tmp_path / "agent.log"
    agent = _agent(home, log)
    sock = _socket(home)
    seen: list[dict[str, Any]] = []
    try:
        deadline = time.monotonic() + 120
        while not sock.exists():
            assert agent.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        time.sleep(3)  # the watchers start after the socket is bound

        def listen() -> None:
            client = AgentClient(sock, timeout=None)
            for event in client.events():
                seen.append(event)
                if event["event"] == "locked":
                    client.close()
                    return

        listener = threading.Thread(target=listen, daemon=True)
        listener.start()
        time.sleep(2)
        uhid_token.plug()
        deadline = time.monotonic() + 120
        while not any(e["event"] == "unlocked" for e in seen):
            assert time.monotonic() < deadline, (seen, log.read_text())
            time.sleep(0.2)
        uhid_token.unplug()
        listener.join(120)
        names = [(e["event"], e.get("reader") or e.get("vault")) for e in seen]
        print("agent events:", json.dumps(seen))
        node = next(e["reader"] for e in seen if e["event"] == "token-added")
        assert node.startswith("hid:/dev/hidraw")
        assert [n for n in names if n[0] in ("token-added", "unlocked", "token-removed", "locked")] == [
            ("token-added", node), ("unlocked", "p"), ("token-removed", node), ("locked", "p")], names
        assert next(e for e in seen if e["event"] == "locked")["reason"] == "token-removed"
        assert "udev" in log.read_text()  # the HID watcher said it follows udev events
    finally:
        stop_process(agent)
        if not uhid_token.control("status")["plugged"]:
            uhid_token.plug()
