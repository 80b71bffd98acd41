"""What the agent's process holds and starts: every descriptor it opens is close-on-exec (so a
helper program it runs, pinentry for one, inherits none of its sockets or files), and locking or
unlocking a vault starts no process (ctypes' find_library ran /sbin/ldconfig on each).
"""

from __future__ import annotations

import base64
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from agentkit import CANARY_SECRET, AgentProcess, frame, password_file, stop_process

from tokenagent.client import AgentClient
from tokenagent.errors import AgentNotRunning
from tokenagent.protocol import encode_get

O_CLOEXEC = 0o2000000


def open_descriptors(pid: int) -> dict[int, tuple[str, int]]:
    """fd -> (what it is, its open flags) for every descriptor of ``pid`` above stdio."""
    found = {}
    for name in os.listdir(f"/proc/{pid}/fd"):
        fd = int(name)
        if fd <= 2:
            continue
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                flags = next(int(line.split()[1], 8) for line in f if line.startswith("flags:"))
        except (FileNotFoundError, StopIteration):
            continue  # closed while we looked
        found[fd] = (target, flags)
    return found


def _exercise(agent: AgentProcess) -> list[socket.socket]:
    """Unlock, get on both sockets, and keep a few connections open (one streaming events)."""
    done = agent.cli("unlock", "v1", "--password-file", password_file(agent.home))
    assert done.returncode == 0, done.stderr
    with AgentClient(agent.socket) as client:
        assert client.get("v1", "restic:/x")
        assert client.get("v1", "é")  # through the agent socket: its audit writer opens the log
    held = [agent.connect()]
    if agent.get_socket.exists():
        fast = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        fast.connect(str(agent.get_socket))
        fast.sendall(encode_get("v1", "c"))  # type: ignore[arg-type]
        fast.recv(100)
        held.append(fast)
    events = agent.connect()
    events.sendall(frame({"op": "events", "id": 1}))
    events.recv(100)
    return [*held, events]


def _assert_all_cloexec(pid: int) -> int:
    descriptors = open_descriptors(pid)
    leaking = {fd: target for fd, (target, flags) in descriptors.items() if not flags & O_CLOEXEC}
    assert not leaking, f"descriptors a child would inherit: {leaking}"
    return len(descriptors)


def test_every_descriptor_of_the_agent_is_close_on_exec(agent: AgentProcess) -> None:
    held = _exercise(agent)
    try:
        count = _assert_all_cloexec(agent.pid)
        kinds = {target.split(":")[0] for target, _ in open_descriptors(agent.pid).values()}
        assert "socket" in kinds and any(k.endswith("audit.log") for k in kinds), kinds
    finally:
        for s in held:
            s.close()
    print(f"\nagent: {count} descriptors above stdio, all close-on-exec ({sorted(kinds)})")


def test_the_socket_systemd_passes_is_close_on_exec_too(agent_home: Path, tmp_path: Path) -> None:
    activate = shutil.which("systemd-socket-activate")
    if activate is None:
        pytest.skip("systemd-socket-activate is not installed (Debian package systemd)")
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    path = run / "agent.sock"
    env = {**os.environ, "TOKENAGENT_HOME": str(agent_home), "TOKENAGENT_TEST_KDF": "1", "TOKENAGENT_SOCKET": str(path)}
    proc = subprocess.Popen([activate, "-l", str(path), "-E", "TOKENAGENT_HOME", "-E", "TOKENAGENT_TEST_KDF",
                             sys.executable, "-m", "tokenagent._cli.entry", "agent"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(200):
            if path.exists():
                break
            time.sleep(0.05)
        os.chmod(path, 0o600)
        with AgentClient(path) as client:  # starts the agent on the inherited descriptor 3
            client.unlock("v1", CANARY_SECRET)
            assert client.get("v1", "c")
            assert 3 in open_descriptors(proc.pid)
            _assert_all_cloexec(proc.pid)
    finally:
        stop_process(proc)  # type: ignore[arg-type]


HOOKED_AGENT = """
import os, sys
log = open(os.environ["SPAWN_LOG"], "a", buffering=1)
WATCHED = ("subprocess.Popen", "os.fork", "os.forkpty", "os.posix_spawn", "os.exec", "os.system", "ctypes.dlopen")
def hook(event, args):
    if event in WATCHED:
        log.write(event + " " + repr(args)[:200] + "\\n")
sys.addaudithook(hook)
from tokenagent._cli.entry import main
sys.exit(main(["agent"]))
"""


def test_lock_and_unlock_start_no_process(agent_home: Path, tmp_path: Path) -> None:
    """Issue: every lock and unlock ran /sbin/ldconfig (ctypes.util.find_library), so the agent
    forked under load. Python's audit events of the real agent process during 20 unlock/lock
    rounds: no process started, no library loaded."""
    spawn_log = tmp_path / "spawns"
    (agent_home / "config").mkdir(mode=0o700)  # no token watchers: pyudev finds libudev with ldconfig at start
    (agent_home / "config" / "config.toml").write_text("[agent]\nwatch_tokens = false\n")
    path = agent_home / "run" / "agent.sock"
    env = {**os.environ, "TOKENAGENT_HOME": str(agent_home), "TOKENAGENT_TEST_KDF": "1",
           "TOKENAGENT_SOCKET": str(path), "SPAWN_LOG": str(spawn_log)}
    proc = subprocess.Popen([sys.executable, "-c", HOOKED_AGENT], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        for _ in range(400):
            try:
                AgentClient(path).status()
                break
            except (OSError, AgentNotRunning):
                time.sleep(0.05)
        with AgentClient(path) as client:
            client.unlock("v1", CANARY_SECRET)  # the first unlock may load what it needs once
            client.lock("v1")
            before = spawn_log.read_text().splitlines()
            for _ in range(20):
                client.unlock("v1", CANARY_SECRET)
                assert base64.b64encode(client.get("v1", "x"))
                client.lock("v1")
            after = spawn_log.read_text().splitlines()
    finally:
        stop_process(proc)  # type: ignore[arg-type]
    assert after[len(before):] == [], after[len(before):]
    print(f"\nagent: 20 unlock/get/lock rounds, 0 processes started, 0 libraries loaded (at start: {before})")
