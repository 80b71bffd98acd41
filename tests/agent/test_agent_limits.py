"""One process must not shut everyone out: idle connections, the reserve, bounded waits, numbers.

Against a real ``tokenagent agent`` (docs/agent.md, "Connections and limits"): idle agent-socket
connections are closed after ``client_idle_timeout``; at ``MAX_CLIENTS`` the connection idle the
longest makes room, so ``lock --all`` and ``status`` always get in; ``get --wait`` requests are
bounded in number and leave nothing behind per name; TTLs and waits are checked numbers.
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket
from pathlib import Path

from agentkit import (
    CANARY_SECRET,
    AgentProcess,
    frame,
    password_file,
    password_vaults,
    read_response,
    start_agent,
)

from tokenagent.client import AgentClient
from tokenagent.daemon.config import AgentConfig
from tokenagent.daemon.server import MAX_CLIENTS, MAX_WAITS, AgentServer
from tokenagent.daemon.state import AgentState, Peer
from tokenagent.protocol import Request


def _unlock(agent: AgentProcess) -> None:
    done = agent.cli("unlock", "v1", "--password-file", password_file(agent.home))
    assert done.returncode == 0, done.stderr


def _hello(agent: AgentProcess) -> socket.socket:
    s = agent.connect()
    s.sendall(frame({"op": "hello", "id": 1, "versions": [1]}))
    assert read_response(s)["ok"]
    return s


def _answer(s: socket.socket) -> dict[str, object]:
    """The next response, past the events a waiting get is sent (what it waits for)."""
    while "event" in (message := read_response(s)):
        pass
    return message


def _closed(s: socket.socket, timeout: float = 15) -> bool:
    s.settimeout(timeout)
    try:
        return s.recv(16) == b""
    except ConnectionResetError:
        return True


def test_one_process_with_512_idle_connections_does_not_shut_out_lock_and_status(agent: AgentProcess) -> None:
    _unlock(agent)
    hogs = [_hello(agent) for _ in range(MAX_CLIENTS)]
    try:
        lock = agent.cli("lock", "--all")
        status = agent.cli("status", "--json")
        assert lock.returncode == 0, lock.stderr
        assert status.returncode == 0, status.stderr
        assert "Traceback" not in lock.stderr + status.stderr
        assert '"unlocked": false' in status.stdout
        assert _closed(hogs[0])  # the connection idle the longest made room (then lock's was gone: status fit)
        hogs[-1].sendall(frame({"op": "status", "id": 2}))  # the others are still served
        assert read_response(hogs[-1])["ok"]
    finally:
        for s in hogs:
            s.close()
    print(f"\n{MAX_CLIENTS} idle connections from one process: lock --all and status exit 0;"
          " the connection idle the longest was closed to make room")


def _answer(sock: socket.socket) -> dict[str, object]:
    """The answer to a request, past the events the agent sends first ("waiting" for a get --wait)."""
    answer = read_response(sock)
    while "event" in answer:
        answer = read_response(sock)
    return answer


def test_idle_connections_are_closed_but_waits_and_streams_are_not(tmp_path: Path, agent_home: Path) -> None:
    (agent_home / "config").mkdir(mode=0o700, exist_ok=True)
    (agent_home / "config" / "config.toml").write_text("[agent]\nclient_idle_timeout = 1\n")
    agent = start_agent(agent_home)
    try:
        idle = _hello(agent)
        stream = agent.connect()
        stream.sendall(frame({"op": "events", "id": 1}))
        assert read_response(stream)["ok"]
        waiting = agent.connect()
        waiting.sendall(frame({"op": "get", "id": 1, "vault": "v1", "wait": 3}))
        kept = AgentClient(agent.socket)
        kept.status()
        assert _closed(idle)  # closed after a second of nothing
        waiting.settimeout(15)
        assert _answer(waiting)["error"] == "locked"  # answered when its wait was over, not closed
        assert kept.status()["vaults"]  # the client's kept connection was closed: it connects again
        _unlock(agent)
        stream.settimeout(15)
        seen: list[object] = []
        while "unlocked" not in seen and len(seen) < 10:
            seen.append(read_response(stream).get("event"))  # the stream outlived the idle timeout
        assert "unlocked" in seen, seen
        kept.close()
        for s in (idle, stream, waiting):
            s.close()
    finally:
        agent.stop()
    print("\nclient_idle_timeout = 1: an idle connection closed; a 3 s wait answered; an event stream kept")


def test_waits_are_bounded_in_number(agent: AgentProcess) -> None:
    waiting = []
    try:
        for i in range(MAX_WAITS):
            s = agent.connect()
            s.sendall(frame({"op": "get", "id": i, "vault": "v1", "context": "c", "wait": 60}))
            waiting.append(s)
        extra = agent.connect()
        extra.sendall(frame({"op": "get", "id": 1, "vault": "v1", "context": "c", "wait": 60}))
        extra.settimeout(15)
        answer = _answer(extra)
        assert answer["error"] == "busy", answer  # at once, not after 60 s
        extra.close()
        _unlock(agent)
        served = 0
        for s in waiting:
            s.settimeout(15)
            served += _answer(s)["ok"] is True
        assert served == MAX_WAITS
    finally:
        for s in waiting:
            s.close()
    print(f"\nget --wait: {MAX_WAITS} waits held, the next answered busy at once; all {served} served on unlock")


def test_a_wait_leaves_nothing_behind(tmp_path: Path) -> None:
    store = password_vaults(tmp_path / "vaults", ["v1"], b"k" * 32)
    state = AgentState(store, AgentConfig(notify=False, watch_tokens=False))
    server = AgentServer(state, socket.socket(socket.AF_UNIX), None)
    peer = Peer(os.getpid(), os.getuid(), os.getgid())

    async def waits() -> list[str | None]:
        requests = [Request("get", i, {"vault": "v1", "context": f"c{i}", "wait": 0.01}) for i in range(200)]
        answers = await asyncio.gather(*(server.wait_unlocked(r, peer, 0.01) for r in requests))
        return [a.error for a in answers]

    assert set(asyncio.run(waits())) == {"locked"}
    assert server._unlocked == {} and server._waiting == {}
    server.sock.close()


def test_numbers_are_checked_and_nothing_changes(agent: AgentProcess) -> None:
    _unlock(agent)
    key = base64.b64encode(CANARY_SECRET).decode()
    before = AgentClient(agent.socket).status()["vaults"][0]
    bad = [{"idle_ttl": 1e308}, {"max_ttl": 1e308}, {"idle_ttl": -1}, {"max_ttl": 1e20}, {"idle_ttl": True},
           {"idle_ttl": "60"}]
    answers = []
    with agent.connect() as s:
        for i, ttl in enumerate(bad):
            s.sendall(frame({"op": "unlock", "id": i, "vault": "v1", "key": key, "slot": "x", **ttl}))
            answers.append(read_response(s)["error"])
        for i, wait in enumerate([-1, 1e308, "5", False]):
            s.sendall(frame({"op": "get", "id": 100 + i, "vault": "v1", "context": "c", "wait": wait}))
            answers.append(read_response(s)["error"])
    assert answers == ["usage"] * len(answers), answers
    after = AgentClient(agent.socket).status()["vaults"][0]
    assert after["unlocked"] and after["slot"] == before["slot"] and after["unlocked_for"] >= before["unlocked_for"]
    done = agent.cli("unlock", "v1", "--password-file", password_file(agent.home), "--idle-ttl", "1e308")
    assert done.returncode == 2 and "seconds" in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert AgentClient(agent.socket).status()["vaults"][0]["slot"] == before["slot"]
    print(f"\n{len(answers)} bad TTLs and waits: all answered usage; the open session unchanged")
