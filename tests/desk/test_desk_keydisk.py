"""A key disk: a filesystem carrying a key file, on a loop device, mounted and unmounted for real.

Runs in the desk guest (conftest.py): udev makes /dev/disk/by-uuid/UUID for the loop device,
the agent notices the mount-table change, opens the vault whose key-file slot names that
filesystem (hint ``UUID=…:/pwsafe.key``) and locks it again when the filesystem is unmounted.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
from pathlib import Path

import pytest
from deskkit import Agent, run, tokenagent

pytestmark = [pytest.mark.desk, pytest.mark.timeout(1800)]
UUID = "3a8c1f2e-5b7d-4e09-9c61-0d2f4b6a8e17"


@pytest.fixture
def stick(tmp_path: Path, home: Path) -> object:
    stage = tmp_path / "stage"
    stage.mkdir()
    tokenagent(home, "keyfile", "generate", str(stage / "pwsafe.key"))
    image = tmp_path / "stick.img"
    with open(image, "wb") as f:
        f.truncate(16 << 20)
    run("mkfs.ext4", "-q", "-U", UUID, "-d", str(stage), str(image))
    loop = run("losetup", "--find", "--show", str(image)).stdout.strip()
    run("udevadm", "settle", "--timeout=60")
    mount = tmp_path / "media"
    mount.mkdir()
    try:
        yield loop, mount
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)
        with contextlib.suppress(Exception):
            run("losetup", "-d", loop, check=False)


def test_key_disk_unlocks_on_mount_and_locks_on_unmount(stick: tuple[str, Path], home: Path, tmp_path: Path) -> None:
    loop, mount = stick
    assert Path(f"/dev/disk/by-uuid/{UUID}").exists(), "udev made no by-uuid link"
    run("mount", loop, str(mount))
    made = json.loads(tokenagent(home, "init", "kd", "--keyfile", f"UUID={UUID}:/pwsafe.key", "--json").stdout)
    slots = json.loads(tokenagent(home, "slots", "kd", "--json").stdout)["slots"]
    assert slots[0]["describe"] == f"key file /pwsafe.key on the key disk {UUID}", slots
    run("umount", str(mount))
    agent = Agent(home, tmp_path / "agent.log")
    try:
        run("mount", loop, str(mount))
        agent.wait_event("unlocked")
        run("umount", str(mount))
        agent.wait_event("locked")
        print("agent events:", json.dumps(agent.events))
        reader = f"disk:{UUID}"
        names = [(e["event"], e.get("reader") or e.get("vault")) for e in agent.events
                 if e.get("reader", reader) == reader]  # the virtual USB key of the other tests may be plugged too
        assert names == [("token-added", reader), ("unlocked", "kd"), ("token-removed", reader), ("locked", "kd")], names
        assert agent.events[-1]["reason"] == "token-removed"
        assert made["vault"] == "kd"
    finally:
        agent.stop()
