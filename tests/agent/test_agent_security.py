"""Security tests of the agent, DESIGN §6 #1-8, against a real ``tokenagent agent`` process.

Each test prints its figure (``-s`` shows them; docs/agent.md quotes them). Tests that need
root to play another uid (setuid to nobody, chown) skip without it; CI runs as root.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import json
import os
import resource
import select
import shutil
import socket
import stat
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from agentkit import (
    CANARY_SECRET,
    AgentProcess,
    cli,
    frame,
    password_file,
    password_vaults,
    read_response,
    start_agent,
)

from tokenagent.client import AgentClient
from tokenagent.daemon.config import AgentConfig
from tokenagent.daemon.state import AgentState, Peer
from tokenagent.protocol import MAX_FRAME, OPS, Request, encode_get

NOBODY = 65534
needs_root = pytest.mark.skipif(os.getuid() != 0, reason="needs root to act as another uid (CI runs as root)")


def unlock(agent: AgentProcess, *extra: str) -> None:
    done = agent.cli("unlock", "v1", "--password-file", password_file(agent.home), *extra)
    assert done.returncode == 0, done.stderr


def status_ok(agent: AgentProcess) -> bool:
    with agent.connect() as s:
        s.sendall(frame({"op": "status", "id": 1}))
        return read_response(s)["ok"] is True


@pytest.fixture
def open_socket_agent(agent_home: Path) -> Iterator[AgentProcess]:
    """An agent in a directory of its own outside the test's private tmp_path (``forced_open`` opens it)."""
    sock_dir = Path(tempfile.mkdtemp(prefix="ta-sock-"))
    proc = start_agent(agent_home, sock_dir / "agent.sock")
    try:
        yield proc
    finally:
        proc.stop()
        shutil.rmtree(sock_dir, ignore_errors=True)  # an agent killed after its 10 s leaves its sockets


@contextlib.contextmanager
def forced_open(agent: AgentProcess, *sockets: Path) -> Iterator[None]:
    """The socket dir and sockets forced to 0777 (as an attacker with a bad umask might), then 0700/0600 again.
    While open, the user's own clients refuse the directory (someone else could swap the socket)."""
    os.chmod(agent.socket.parent, 0o777)
    for path in sockets:
        os.chmod(path, 0o777)
    try:
        done = agent.cli("status")
        assert done.returncode == 3 and "open to other users" in done.stderr, done.stderr
        yield
    finally:
        os.chmod(agent.socket.parent, 0o700)
        for path in sockets:
            os.chmod(path, 0o600)


# --- #1 peer uid ---------------------------------------------------------------------------------

def _in_child(work: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run ``work`` in a forked child (which may drop privileges); return its JSON result."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            os.write(w, json.dumps(work()).encode())
        finally:
            os._exit(0)
    os.close(w)
    data = b""
    while chunk := os.read(r, 4096):
        data += chunk
    os.close(r)
    os.waitpid(pid, 0)
    return json.loads(data)


def _as_nobody(request: bytes, path: Path) -> dict[str, Any]:
    """In a child dropped to nobody: 100 connection attempts, each sending ``request``; the counts."""

    def attempts() -> dict[str, Any]:
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)
        counts = {"connected": 0, "answered": 0, "closed_unanswered": 0}
        for _ in range(100):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(5)
            try:
                s.connect(str(path))
                counts["connected"] += 1
                s.sendall(request)
                data = s.recv(4096)
                counts["answered" if data else "closed_unanswered"] += 1
            except (ConnectionResetError, BrokenPipeError):
                counts["closed_unanswered"] += 1
            finally:
                s.close()
        return counts

    return _in_child(attempts)


@needs_root
def test_other_uid_is_refused_even_with_a_0777_socket(open_socket_agent: AgentProcess) -> None:
    agent = open_socket_agent
    unlock(agent)
    with forced_open(agent, agent.socket):
        counts = _as_nobody(frame({"op": "lock-all", "id": 1}), agent.socket)
    assert counts == {"connected": 100, "answered": 0, "closed_unanswered": 100}
    # Nothing the stranger sent was acted on: the vault is still unlocked and no request was audited.
    with AgentClient(agent.socket) as client:
        assert [v["unlocked"] for v in client.status()["vaults"]] == [True]
    audit = agent.home / "data" / "audit.log"
    assert not audit.exists() or f'"uid": {NOBODY}' not in audit.read_text()
    same = sum(status_ok(agent) for _ in range(100))
    assert same == 100
    print(f"\n#1 peer uid: other uid refused {counts['closed_unanswered']}/100, same uid served {same}/100")


@needs_root
def test_other_uid_is_refused_on_the_get_socket(open_socket_agent: AgentProcess) -> None:
    agent = open_socket_agent
    get_socket = agent.get_socket
    if not get_socket.exists():
        pytest.skip("the get socket's C extension is not built (pip install needs gcc)")
    unlock(agent)
    with forced_open(agent, agent.socket, get_socket):
        counts = _as_nobody(encode_get("v1", "restic:/x") or b"", get_socket)
    assert counts == {"connected": 100, "answered": 0, "closed_unanswered": 100}
    audit = agent.home / "data" / "audit.log"
    assert not audit.exists() or f'"uid": {NOBODY}' not in audit.read_text()
    with AgentClient(agent.socket) as client:
        served = sum(len(client.get("v1", "restic:/x")) == 32 for _ in range(100))
    assert served == 100
    print(f"\n#1 peer uid, get socket: other uid refused {counts['closed_unanswered']}/100, same uid served {served}/100")


# --- #2 hostile socket dirs ----------------------------------------------------------------------

def _start_fails(home: Path, socket_path: Path) -> subprocess.CompletedProcess[str]:
    return cli(home, "agent", env={"TOKENAGENT_SOCKET": str(socket_path)}, timeout=30)


@needs_root
def test_hostile_socket_directories(agent_home: Path, tmp_path: Path) -> None:
    outcomes: dict[str, bool] = {}
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(real)
    done = _start_fails(agent_home, tmp_path / "link" / "agent.sock")
    outcomes["symlinked dir"] = done.returncode == 3 and "symbolic link" in done.stderr and not any(real.iterdir())

    wide = tmp_path / "wide"
    wide.mkdir()
    os.chmod(wide, 0o755)
    done = _start_fails(agent_home, wide / "agent.sock")
    outcomes["0755 dir"] = done.returncode == 3 and "chmod 700" in done.stderr and not any(wide.iterdir())

    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o700)
    os.chown(theirs, NOBODY, NOBODY)
    done = _start_fails(agent_home, theirs / "agent.sock")
    outcomes["dir of another uid"] = done.returncode == 3 and "owned by uid" in done.stderr

    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    (private / "agent.sock").write_text("precious")
    done = _start_fails(agent_home, private / "agent.sock")
    outcomes["regular file at the path"] = (done.returncode == 3 and "not a socket" in done.stderr
                                            and (private / "agent.sock").read_text() == "precious")

    live = start_agent(agent_home, private / "live.sock")
    try:
        done = _start_fails(agent_home, private / "live.sock")
        outcomes["live agent's socket"] = (done.returncode == 6 and "already running" in done.stderr
                                           and status_ok(live))
    finally:
        live.stop()

    stale_path = private / "stale.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(stale_path))
    stale.close()  # the file stays, nobody listens: an agent that was killed
    revived = start_agent(agent_home, stale_path)
    try:
        outcomes["stale socket"] = status_ok(revived) and stat.S_IMODE(os.stat(stale_path).st_mode) == 0o600
    finally:
        revived.stop()
    assert all(outcomes.values()), outcomes
    print(f"\n#2 hostile socket dirs: {sum(outcomes.values())}/6 refused or handled safely")


# --- #3 the client and a foreign socket -------------------------------------------------------------

@needs_root
def test_client_sends_nothing_to_a_socket_of_another_uid(agent_home: Path, tmp_path: Path) -> None:
    bait = tmp_path / "bait.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(bait))
    listener.listen(8)
    os.chown(bait, NOBODY, NOBODY)
    try:
        for args in (("get", "v1"), ("status",), ("lock", "--all")):
            done = cli(agent_home, *args, env={"TOKENAGENT_SOCKET": str(bait)})
            assert done.returncode == 3 and "not by you" in done.stderr, done.stderr
        ready, _, _ = select.select([listener], [], [], 0.2)
        assert ready == []  # not even a connection was made
    finally:
        listener.close()
    # A get socket planted beside the agent socket's path gets no request either.
    planted = tmp_path / "agent.sock.get"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(planted))
    listener.listen(8)
    os.chown(planted, NOBODY, NOBODY)
    try:
        done = cli(agent_home, "get", "v1", "--context", "x", env={"TOKENAGENT_SOCKET": str(tmp_path / "agent.sock")})
        assert done.returncode == 3 and "not by you" in done.stderr, done.stderr
        ready, _, _ = select.select([listener], [], [], 0.2)
        assert ready == []
    finally:
        listener.close()
    print("\n#3 foreign socket and foreign get socket: 0 connections, 0 requests")


# --- #4 no dumps, no same-uid memory reads --------------------------------------------------------

class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


PR_SET_SECUREBITS = 28
SECBIT_NOROOT_AND_LOCK = 0b11  # root gains no capabilities on exec, and that cannot be undone


def _no_root_capabilities() -> None:
    """Make the process and what it executes an ordinary uid-0 process without capabilities."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_SECUREBITS, SECBIT_NOROOT_AND_LOCK, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECUREBITS)")


def _drop_all_capabilities() -> None:
    _no_root_capabilities()
    libc = ctypes.CDLL(None, use_errno=True)
    header = _CapHeader(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3
    data = (_CapData * 2)()
    if libc.capset(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capset")


def _read_mem_as_same_uid_without_privilege(target_pid: int) -> dict[str, Any]:
    """In a forked child of the same uid with no capabilities: read the target's and a control's memory."""

    def reads() -> dict[str, Any]:
        result: dict[str, Any] = {}
        _drop_all_capabilities()
        control = subprocess.Popen(["sleep", "30"])
        for name, victim in (("agent", target_pid), ("control", control.pid)):
            try:
                with open(f"/proc/{victim}/maps") as maps:
                    start = int(maps.readline().split("-")[0], 16)
                with open(f"/proc/{victim}/mem", "rb") as mem:
                    mem.seek(start)
                    result[name] = f"read {len(mem.read(64))} bytes"
            except OSError as err:
                result[name] = f"refused: {err.strerror}"
        control.kill()
        control.wait()
        return result

    return _in_child(reads)


def _capabilities(pid: int) -> str:
    status = Path(f"/proc/{pid}/status").read_text()
    return next(line.split()[1] for line in status.splitlines() if line.startswith("CapEff:"))


@needs_root
def test_agent_memory_is_not_readable_and_cores_are_off(agent_home: Path) -> None:
    """Agent and reader are both uid 0 without capabilities: only the agent's own hardening can refuse."""
    agent = start_agent(agent_home, preexec=_no_root_capabilities)
    try:
        _check_agent_memory(agent)
    finally:
        agent.stop()


def _check_agent_memory(agent: AgentProcess) -> None:
    assert int(_capabilities(agent.pid), 16) == 0
    unlock(agent)
    result = _read_mem_as_same_uid_without_privilege(agent.pid)
    assert result["control"] == "read 64 bytes", result  # the same read works on an ordinary process
    assert result["agent"].startswith("refused"), result
    limits = Path(f"/proc/{agent.pid}/limits").read_text()
    core = next(line for line in limits.splitlines() if line.startswith("Max core file size"))
    assert core.split()[4:6] == ["0", "0"], core
    print(f"\n#4 /proc/PID/mem: agent {result['agent']}, control {result['control']}; RLIMIT_CORE 0/0")


# --- #5 the key leaves memory on lock -------------------------------------------------------------

def _scan_memory(pid: int, needle: bytes) -> int:
    hits = 0
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
        for line in maps:
            fields = line.split()
            if "r" not in fields[1] or (len(fields) > 5 and fields[5].startswith("[v")):
                continue
            start, end = (int(x, 16) for x in fields[0].split("-"))
            try:
                mem.seek(start)
                hits += mem.read(end - start).count(needle)
            except (OSError, OverflowError, ValueError):
                continue
    return hits


@needs_root
def test_masterkey_is_gone_from_agent_memory_after_lock(agent: AgentProcess) -> None:
    unlock(agent)
    with AgentClient(agent.socket) as client:
        for label in ("restic:/a", "borg:/b"):
            client.get("v1", context=label)
    before = _scan_memory(agent.pid, CANARY_SECRET)
    assert before >= 1  # the scan finds the key while it is held: the check can fail
    assert agent.cli("lock", "v1").returncode == 0
    after = _scan_memory(agent.pid, CANARY_SECRET)
    assert after == 0
    for text in (agent.log_text(), (agent.home / "data" / "audit.log").read_text()):
        assert CANARY_SECRET.decode() not in text and base64.b64encode(CANARY_SECRET).decode() not in text
    print(f"\n#5 raw masterkey copies in agent memory: {before} while unlocked, {after} after lock")


# --- #6 malformed frames on the socket --------------------------------------------------------------

def _malformed(i: int) -> bytes:
    bodies = [b"", b"{", b"[]", b"null", b'{"op": 1}', b'{"op": "get", "id": -3}', b"\xff" * 9,
              b'{"op": "get", "vault": {"x": 1}}', b'{"op": "unlock", "vault": "v1", "key": "%%%"}',
              b'{"op": "nosuch"}', b"[" * 2000, b'{"op": "get", "x": NaN}', b'"just a string"']
    body = bodies[i % len(bodies)]
    return struct.pack(">I", len(body)) + body


def test_ten_thousand_malformed_frames_then_status_every_hundred(agent: AgentProcess) -> None:
    answered = 0
    errors = 0
    with agent.connect() as s:
        for i in range(10_000):
            s.sendall(_malformed(i))
            response = read_response(s)
            errors += response["ok"] is False
            if i % 100 == 99:
                s.sendall(frame({"op": "status", "id": i}))
                response = read_response(s)
                answered += response["ok"] is True and response["id"] == i
    assert errors == 10_000 and answered == 100
    print(f"\n#6 10,000 malformed frames: 10,000 error answers, status answered {answered}/100")


def test_oversized_frame_closes_only_that_connection(agent: AgentProcess) -> None:
    with agent.connect() as bystander, agent.connect() as attacker:
        bystander.sendall(frame({"op": "hello", "id": 1}))
        assert read_response(bystander)["ok"]
        attacker.sendall(struct.pack(">I", MAX_FRAME + 1) + b"x" * 1000)
        answer = read_response(attacker)
        assert answer["error"] == "too-large"
        assert attacker.recv(10) == b""  # closed
        bystander.sendall(frame({"op": "status", "id": 2}))
        assert read_response(bystander)["ok"]


# --- #7 descriptor exhaustion and slow clients ------------------------------------------------------

def _low_fd_limit() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))


def _get_socket_answers(agent: AgentProcess) -> bool:
    """A get on the get socket gets an answer (here "ask the agent socket": the vault is locked); True
    if there is no get socket."""
    path = agent.get_socket
    if not path.exists():
        return True
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(str(path))
        s.sendall(encode_get("v1", "restic:/x") or b"")
        return s.recv(4096) == b"\x00\x00\x00\x02\x01\x02"


def test_descriptor_exhaustion_then_new_client_is_served(agent_home: Path) -> None:
    agent = start_agent(agent_home, preexec=_low_fd_limit)
    try:
        hogs = []
        for path in (agent.socket, agent.get_socket):
            for _ in range(200):  # three times what the agent may open, on each socket
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.setblocking(False)
                try:
                    s.connect(str(path))
                except (BlockingIOError, ConnectionRefusedError, OSError):
                    pass
                hogs.append(s)
        time.sleep(1.0)
        assert agent.proc.poll() is None
        for s in hogs:
            s.close()
        released = time.monotonic()
        while True:
            try:
                if status_ok(agent) and _get_socket_answers(agent):
                    break
            except OSError:
                time.sleep(0.05)
            assert time.monotonic() - released < 10, "no client served 10 s after the descriptors were freed"
        served_after = time.monotonic() - released
        assert agent.proc.poll() is None
        print(f"\n#7 after descriptor exhaustion (200 connections to each socket, limit 64): new clients of "
              f"both sockets served in {served_after:.2f} s")
    finally:
        agent.stop()


def test_slow_half_sent_frames_do_not_block_others(agent: AgentProcess) -> None:
    stalled = []
    paths = [agent.socket, agent.get_socket]
    paths = [p for p in paths if p.exists()]
    for path in paths:
        for _ in range(100):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(10)
            s.connect(str(path))
            s.sendall(b"\x00\x00")  # half a header, then nothing
            stalled.append(s)
    started = time.monotonic()
    assert status_ok(agent) and _get_socket_answers(agent)
    served = time.monotonic() - started
    closed = 0
    for s in stalled:
        s.settimeout(20)
        try:
            closed += s.recv(10) == b""  # the agent drops a frame stalled for FRAME_TIMEOUT
        except ConnectionResetError:
            closed += 1
        s.close()
    assert closed == len(stalled)
    print(f"\n#7 with 100 stalled half-frames on each of {len(paths)} sockets: new clients served in "
          f"{served:.3f} s; {closed}/{len(stalled)} stalled closed")


# --- #8 lifetimes and locked-state denials ------------------------------------------------------------

def _time_to_lock(agent: AgentProcess, keep_alive: bool, *ttl: str) -> float:
    events: list[tuple[float, str]] = []
    client = AgentClient(agent.socket, timeout=None)

    def listen() -> None:
        for event in client.events():
            events.append((time.monotonic(), str(event["event"])))
            if event["event"] == "locked":
                return

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    time.sleep(0.3)
    unlock(agent, *ttl)
    with AgentClient(agent.socket) as getter:
        while thread.is_alive() and keep_alive:
            try:
                getter.get("v1")
            except Exception:  # noqa: BLE001 - locked: the loop ends with the thread
                pass
            time.sleep(0.3)
    thread.join(30)
    client.close()
    times = dict((name, t) for t, name in events)
    return times["locked"] - times["unlocked"]


def test_idle_ttl_locks_within_a_second(agent: AgentProcess) -> None:
    took = _time_to_lock(agent, False, "--idle-ttl", "2", "--max-ttl", "0")
    assert abs(took - 2) <= 1, took
    print(f"\n#8 idle TTL 2 s: locked after {took:.2f} s")


def test_max_ttl_locks_despite_activity(agent: AgentProcess) -> None:
    took = _time_to_lock(agent, True, "--idle-ttl", "60", "--max-ttl", "3")
    assert abs(took - 3) <= 1, took
    print(f"\n#8 max TTL 3 s with a get every 0.3 s: locked after {took:.2f} s")


def test_deadlines_follow_the_monotonic_clock_not_the_wall_clock(tmp_path: Path) -> None:
    store = password_vaults(tmp_path / "vaults", ["v1"], b"k" * 32)
    now = [1000.0]
    state = AgentState(store, AgentConfig(), clock=lambda: now[0])
    state.add_session("v1", bytearray(b"k" * 32), "1", "client", idle_ttl=10, max_ttl=100)
    peer = Peer(1, os.getuid(), os.getgid())
    now[0] += 9.9
    assert state.dispatch(Request("get", 1, {"vault": "v1"}), peer).ok  # pushes idle to 1019.9
    now[0] += 9.9
    assert state.dispatch(Request("get", 2, {"vault": "v1"}), peer).ok
    now[0] += 10.0
    assert state.dispatch(Request("get", 3, {"vault": "v1"}), peer).error == "locked"


def test_every_op_while_locked(agent: AgentProcess) -> None:
    """Enumerate the ops with the vault locked: only ``get`` concerns a key and it is denied."""
    seen: dict[str, str] = {}
    args: dict[str, dict[str, object]] = {
        "hello": {"versions": [1]}, "status": {}, "list": {}, "get": {"vault": "v1"},
        "lock": {"vault": "v1"}, "lock-all": {}, "events": {},
        "unlock": {"vault": "v1", "key": base64.b64encode(b"not the key").decode()},
        "age-unwrap": {"vault": "v1", "label": "x", "stanzas": [["A" * 43, "A" * 43]]},
    }
    assert set(args) == set(OPS)
    for op in OPS:
        with agent.connect() as s:
            s.sendall(frame({"op": op, "id": 1, **args[op]}))
            answer = read_response(s)
        assert "key" not in answer
        seen[op] = "ok" if answer["ok"] else str(answer["error"])
    assert seen == {"hello": "ok", "status": "ok", "list": "ok", "get": "locked", "lock": "ok", "lock-all": "ok",
                    "events": "ok", "unlock": "vault-integrity", "age-unwrap": "locked"}
    with agent.connect() as s:
        s.sendall(frame({"op": "get", "id": 2, "vault": "v1", "context": "restic:/x"}))
        assert read_response(s)["error"] == "locked"
    print(f"\n#8 ops while locked: {seen}")
