"""The runtime-directory race (issue: a key sent to another user's listener).

Someone who can change the socket's directory swaps ``agent.sock`` (and ``agent.sock.get``)
back and forth between the agent's socket and a symlink to a listener of another uid, as
fast as it can, while clients connect. A client that checks the path and then connects to it
again loses that race now and then; a client that checks the *connected* peer
(``SO_PEERCRED``) before its first byte never sends anything to the stranger. The stranger
counts what reaches it: connections (the race was run) and bytes (what must stay 0).
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import socket
import tempfile
import time
from pathlib import Path

import pytest
from agentkit import AgentProcess, password_file

from tokenagent.client import AgentClient
from tokenagent.errors import TokenAgentError

NOBODY = 65534
ATTEMPTS = 10_000
needs_root = pytest.mark.skipif(os.getuid() != 0, reason="needs root to run a listener as another uid (CI runs as root)")


def _stranger(path: Path, report: int) -> None:
    """In a child dropped to nobody: listen at ``path``, count connections and bytes until SIGTERM."""
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    os.chmod(path, 0o777)
    listener.listen(512)
    listener.setblocking(False)
    counts = {"connections": 0, "bytes": 0}
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    peers: list[socket.socket] = []
    while not stop:
        try:
            ready, _, _ = select.select([listener, *peers], [], [], 0.1)
        except InterruptedError:
            continue
        for s in ready:
            if s is listener:
                try:
                    conn, _ = listener.accept()
                except BlockingIOError:
                    continue
                conn.setblocking(False)
                counts["connections"] += 1
                peers.append(conn)
                continue
            try:
                data = s.recv(65536)
            except OSError:
                data = b""
            counts["bytes"] += len(data)
            peers.remove(s)
            s.close()  # answer nothing: a client that sent something waits for no answer long
    os.write(report, json.dumps(counts).encode())


def _swapper(links: list[tuple[Path, Path, Path]]) -> None:
    """Forever: each socket path becomes the symlink to the stranger, then the agent's socket again."""
    n = 0
    while True:
        for path, real, bait in links:
            n += 1
            tmp = path.with_name(f".swap{n}")
            os.symlink(bait, tmp)
            os.rename(tmp, path)
            os.link(real, tmp)
            os.rename(tmp, path)


def _fork(work, *args) -> int:  # type: ignore[no-untyped-def]
    pid = os.fork()
    if pid == 0:
        try:
            work(*args)
        finally:
            os._exit(0)
    return pid


def _attempt(path: Path, get: bool) -> str:
    client = AgentClient(path, timeout=5)
    try:
        if get:
            client.get("v1", context="restic:/race")
        else:
            client.connect()  # the hello frame
        return "agent"
    except TokenAgentError as err:
        return err.code
    except OSError:
        return "os-error"
    finally:
        client.close()


@needs_root
def test_socket_swapped_under_clients_sends_nothing_to_the_stranger(agent: AgentProcess) -> None:
    done = agent.cli("unlock", "v1", "--password-file", password_file(agent.home))
    assert done.returncode == 0, done.stderr
    bait_dir = Path(tempfile.mkdtemp(prefix="ta-stranger-"))  # outside the test's 0700 tmp_path
    os.chmod(bait_dir, 0o755)
    os.chown(bait_dir, NOBODY, NOBODY)
    bait = bait_dir / "listen.sock"
    r, w = os.pipe()
    stranger = _fork(_stranger, bait, w)
    os.close(w)
    deadline = time.monotonic() + 10
    while not bait.exists():
        assert time.monotonic() < deadline, "the stranger's listener did not appear"
        time.sleep(0.01)
    links = []
    for path in (agent.socket, agent.get_socket):
        if path.exists():
            real = path.with_name(path.name + ".real")
            os.link(path, real)  # the agent's socket under a second name, to swap back in
            links.append((path, real, bait))
    swapper = _fork(_swapper, links)
    outcomes: dict[str, dict[str, int]] = {"agent socket": {}, "get socket": {}}
    try:
        for kind, get in (("agent socket", False), ("get socket", True)):
            if get and len(links) < 2:
                continue  # no get socket built here: the agent socket serves get (counted above)
            for _ in range(ATTEMPTS):
                outcome = _attempt(agent.socket, get)
                outcomes[kind][outcome] = outcomes[kind].get(outcome, 0) + 1
    finally:
        os.kill(swapper, signal.SIGKILL)
        os.waitpid(swapper, 0)
        for path, real, _ in links:
            os.replace(real, path)
        os.kill(stranger, signal.SIGTERM)
        data = b""
        while chunk := os.read(r, 4096):
            data += chunk
        os.close(r)
        os.waitpid(stranger, 0)
        shutil.rmtree(bait_dir, ignore_errors=True)
    counts = json.loads(data)
    print(f"\nruntime-dir race: {ATTEMPTS:,} attempts per socket while the path was swapped; "
          f"outcomes {outcomes}; the stranger saw {counts['connections']} connections and {counts['bytes']} bytes")
    assert counts["bytes"] == 0
    # The race was run: clients were served by the agent, and some reached the stranger's listener.
    assert all(o.get("agent", 0) > 0 for o in outcomes.values() if o), outcomes
    assert agent.proc.poll() is None
