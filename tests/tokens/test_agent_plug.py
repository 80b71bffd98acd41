"""The three flows end to end: real agent, real CLI, virtual tokens in a private pcscd.

1. An admin makes a vault with a main and a backup token.
2. Plug the main token in: the agent unlocks the vault (touch), a client gets its key;
   pull it out: the vault locks.
3. The backup token alone unlocks it the same way.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from pathlib import Path

from agentkit import cli, start_agent
from pcscd import PrivatePcscd, TokenProcess

from tokenagent.client import AgentClient


def test_plug_unlocks_unplug_locks_backup_unlocks(pcscd: PrivatePcscd, tokens: list[TokenProcess],
                                                   tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    (home / "config").mkdir(mode=0o700)
    (home / "config" / "config.toml").write_text("[agent]\nremoval_grace = 0.5\n")

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
        events: list[dict[str, object]] = []
        listener = AgentClient(agent.socket, timeout=None)

        def listen() -> None:
            try:
                for event in listener.events():
                    events.append(event)
            except Exception:  # noqa: BLE001 - closed at the end of the test
                pass

        threading.Thread(target=listen, daemon=True).start()
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
        listener.close()
        names = [e["event"] for e in events]
        for expected_event in ("token-added", "unlocked", "token-removed", "locked"):
            assert expected_event in names, names
        assert any(e["event"] == "locked" and e.get("reason") == "token-removed" for e in events)
    finally:
        agent.stop()
