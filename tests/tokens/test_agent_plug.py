"""The three flows end to end: real agent, real CLI, virtual tokens in a private pcscd.

1. An admin makes a vault with a main and a backup token.
2. Plug the main token in: the agent unlocks the vault (touch), a client gets its key;
   pull it out: the vault locks.
3. The backup token alone unlocks it the same way.
"""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

from agentkit import cli, private_home, start_agent
from pcscd import PrivatePcscd, TokenProcess
from plugkit import EventRecorder, NotificationService, fido2_pin_vaults, pinentry_home

from tokenagent.client import AgentClient


def test_plug_unlocks_unplug_locks_backup_unlocks(pcscd: PrivatePcscd, tokens: list[TokenProcess],
                                                   tmp_path: Path) -> None:
    home = private_home(tmp_path, "[agent]\nremoval_grace = 0.5\n")

    # 1. the admin flow: main token, then a backup token enrolled with both plugged in
    main = TokenProcess(pcscd, tmp_path / "main.json", 5001)
    tokens.append(main)
    assert cli(home, "init", "docs", "--fido2", "--label", "main", env=pcscd.env).returncode == 0
    backup = TokenProcess(pcscd, tmp_path / "backup.json", 5002)
    tokens.append(backup)
    enrolled = cli(home, "enroll", "docs", "--fido2", "--label", "backup", env=pcscd.env)
    assert enrolled.returncode == 0, enrolled.stderr
    assert "skipping the FIDO2 key already enrolled" in enrolled.stderr  # the new key was picked, no question
    expected = json.loads(cli(home, "open", "docs", "--reveal", "--json", env=pcscd.env).stdout)["key"]
    main.unplug()
    backup.unplug()

    agent = start_agent(home, extra_env=pcscd.env)
    try:
        recorder = EventRecorder(agent.socket)
        with AgentClient(agent.socket) as client:
            assert [v["unlocked"] for v in client.status()["vaults"]] == [False]

            # 2. plug the main token in: unlocked by the agent; a client gets the key
            main.plug()
            key = client.get("docs", context="restic:/srv", wait=30)
            opened = client.status()["vaults"][0]
            assert opened["unlocked"] and opened["slot"] == "1" and "Virtual PCD" in opened["source"]
            raw = agent.cli("get", "docs", "--context", "restic:/srv", env=pcscd.env)
            assert base64.b64decode(raw.stdout) == bytes(key)

            # unplug: locked after the grace period
            main.unplug()
            deadline = time.monotonic() + 15
            while client.status()["vaults"][0]["unlocked"]:
                assert time.monotonic() < deadline, "the vault stayed unlocked after its token left"
                time.sleep(0.2)
            locked = agent.cli("get", "docs", "--context", "restic:/srv", env=pcscd.env)
            assert locked.returncode == 7

            # 3. the backup token alone
            backup.plug()
            again = client.get("docs", context="restic:/srv", wait=30)
            assert again == key and client.status()["vaults"][0]["slot"] == "2"
            full = agent.cli("open", "docs", "--reveal", "--json", env=pcscd.env)
            assert json.loads(full.stdout)["key"] == expected
        recorder.close()
        events = recorder.events
        names = [e["event"] for e in events]
        for expected_event in ("token-added", "unlocked", "token-removed", "locked"):
            assert expected_event in names, names
        assert any(e["event"] == "locked" and e.get("reason") == "token-removed" for e in events)
    finally:
        agent.stop()


def test_pin_slot_unlocked_on_plug_through_pinentry(pcscd: PrivatePcscd, tokens: list[TokenProcess],
                                                    tmp_path: Path) -> None:
    """A slot that needs the key's PIN: the agent asks for it with pinentry-curses when the key arrives."""
    home, person, state, token = fido2_pin_vaults(pcscd, tokens, tmp_path, 8001, ("docs",))
    agent = start_agent(home, extra_env=pcscd.env)
    try:
        person.will_type(b"135790\r")
        token.plug()
        with AgentClient(agent.socket) as client:
            key = client.get("docs", context="x", wait=40)
            assert len(key) == 32 and client.status()["vaults"][0]["slot"] == "1"
        assert b"unlock vault 'docs'" in person.screen and b"(8 tries" in person.screen  # the line may wrap
        assert json.loads(state.read_text())["fido2"]["pin_retries"] == 8
    finally:
        person.close()
        agent.stop()


def test_otp_and_piv_slots_unlocked_on_plug(pcscd: PrivatePcscd, tokens: list[TokenProcess], tmp_path: Path) -> None:
    """A YubiKey's OTP challenge-response opens one vault at plug-in with nothing typed; its PIV
    key opens another after the PIV PIN is typed into pinentry-curses."""
    from ykman.pcsc import ScardSmartCardConnection
    from yubikit.piv import DEFAULT_MANAGEMENT_KEY, KEY_TYPE, SLOT, PivSession
    from yubikit.yubiotp import SLOT as OTP_SLOT
    from yubikit.yubiotp import HmacSha1SlotConfiguration, YubiOtpSession

    from tokenagent.virtual.token import VirtualToken

    state = tmp_path / "yubikey.json"
    seed = VirtualToken(state, serial=8101)  # a key set up beforehand, as with ykman
    YubiOtpSession(ScardSmartCardConnection(seed.connection())).put_configuration(
        OTP_SLOT.TWO, HmacSha1SlotConfiguration(bytes(range(20))))
    piv = PivSession(ScardSmartCardConnection(seed.connection()))
    piv.authenticate(DEFAULT_MANAGEMENT_KEY)
    piv.generate_key(SLOT.KEY_MANAGEMENT, KEY_TYPE.ECCP256)
    del seed, piv
    home, person = pinentry_home(tmp_path)
    token = TokenProcess(pcscd, state, 8101)
    tokens.append(token)
    pin = tmp_path / "pin"
    pin.write_text("123456\n")
    assert cli(home, "init", "backups", "--otp", env=pcscd.env).returncode == 0
    made = cli(home, "init", "mail", "--piv", "--piv-existing", "--pin-file", str(pin), env=pcscd.env)
    assert made.returncode == 0, made.stderr
    token.unplug()
    agent = start_agent(home, extra_env=pcscd.env)
    recorder = EventRecorder(agent.socket)
    try:
        time.sleep(0.3)
        person.will_type(b"123456\r")
        token.plug()
        with AgentClient(agent.socket) as client:
            assert len(client.get("backups", context="borg", wait=40)) == 32
            assert len(client.get("mail", context="imap", wait=40)) == 32
            assert {v["vault"]: v["slot"] for v in client.status()["vaults"]} == {"backups": "1", "mail": "1"}
        assert b"unlock vault 'mail'" in person.screen and b"3 tries left" in person.screen
        # The event stream said what the agent waited for: the PIN of the PIV vault, none for OTP.
        recorder.wait_for("unlocked", "mail")
        recorder.wait_for("unlocked", "backups")
        events = [(str(e["event"]), e.get("vault")) for e in recorder.events]
        assert ("pin", "mail") in events and ("pin", "backups") not in events
        assert ("unlocked", "mail") in events and ("unlocked", "backups") in events
        assert json.loads(state.read_text())["piv"]["pin"]["remaining"] == 3
    finally:
        recorder.close()
        person.close()
        agent.stop()


def test_desktop_notifications_for_touch_and_removal(pcscd: PrivatePcscd, tokens: list[TokenProcess],
                                                     tmp_path: Path) -> None:
    home = private_home(tmp_path, "[agent]\nremoval_grace = 0.5\n")
    token = TokenProcess(pcscd, tmp_path / "key.json", 8201, touch="delay", touch_delay=2.0)
    tokens.append(token)
    assert cli(home, "init", "docs", "--fido2", env=pcscd.env, timeout=60).returncode == 0
    key = json.loads(cli(home, "open", "docs", "--reveal", "--json", env=pcscd.env, timeout=60).stdout)["key"]
    token.unplug()
    service = NotificationService(tmp_path)
    agent = start_agent(home, extra_env={**pcscd.env, "DBUS_SESSION_BUS_ADDRESS": service.address})
    try:
        token.plug()
        with AgentClient(agent.socket) as client:
            client.get("docs", context="x", wait=40)
            deadline = time.monotonic() + 10
            while not any(name == "CloseNotification" for name, _ in service.calls):
                assert time.monotonic() < deadline, service.calls
                time.sleep(0.1)
            token.unplug()
            while not any(name == "Notify" and "locked" in str(body[3]) for name, body in service.calls):
                assert time.monotonic() < deadline + 15, service.calls
                time.sleep(0.1)
        notices = [(i + 1, body) for i, (name, body) in enumerate(service.calls) if name == "Notify"]
        touch_id, touch = [(i, body) for i, body in notices if body[3] == "Touch your security key"][0]
        assert touch[0] == "tokenagent" and "'docs'" in str(touch[4])
        closed = [body for name, body in service.calls if name == "CloseNotification"]
        assert (touch_id,) in closed  # the touch notice is withdrawn once the vault is open
        wanted = [body for _, body in notices if "wants vault 'docs'" in str(body[3])]
        assert len(wanted) == 1  # the client waiting for it (this test's process, named by the program that ran it)
        assert not any(key in repr(body) for _, body in service.calls)  # no secret on the bus
    finally:
        agent.stop()
        service.stop()
