"""The get socket (docs/spec/protocol.md, "The get socket"): ``get`` served by the agent's native
thread must answer exactly as the JSON ``get`` does, keep every rule of the agent, and survive
what the agent socket survives. The parser and the derivation are also driven directly.

Without the C extension (no compiler when tokenagent was installed) these tests skip; CI
builds it and TOKENAGENT_STRICT_SKIPS turns such a skip into a failure.
"""

from __future__ import annotations

import base64
import json
import os
import random
import socket
import stat
import struct
import time
from collections.abc import Iterator
from json.encoder import encode_basestring_ascii  # type: ignore[attr-defined]
from pathlib import Path
from typing import Any

import pytest
from agentkit import (
    CANARY_SECRET,
    AgentProcess,
    cli,
    frame,
    make_vault,
    password_file,
    read_response,
    recv_exactly,
    start_agent,
)
from getsocket_mutations import mutate  # type: ignore[import-not-found]
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenagent.client import AgentClient
from tokenagent.daemon import getsocket
from tokenagent.protocol import GET_MAX_BODY, decode_get_answer, encode_get
from tokenagent.vault import derive_subkey

pytestmark = pytest.mark.skipif(not getsocket.available(),
                                reason="the get socket's C extension is not built (pip install needs gcc)")

ERROR_CODES = {"protocol", "unsupported", "usage"}


def _native():  # type: ignore[no-untyped-def]
    from tokenagent.daemon import _getserver

    return _getserver


# --- the native parts against their Python twins ---------------------------------------------------

@settings(max_examples=300, deadline=None)
@given(secret=st.binary(min_size=1, max_size=4096),
       context=st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=256))
def test_subkey_equals_the_python_derivation(secret: bytes, context: str) -> None:
    assert _native().derive(secret, context.encode()) == bytes(derive_subkey(secret, context))


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.binary(max_size=300), st.text(max_size=100).map(lambda t: t.encode("utf-8", "surrogatepass"))))
def test_audit_strings_are_encoded_as_python_encodes_them(value: bytes) -> None:
    # A program path that is not UTF-8 is what os.readlink gives as surrogate escapes.
    assert _native().json_string(value) == encode_basestring_ascii(value.decode("utf-8", "surrogateescape"))


@settings(max_examples=300, deadline=None)
@given(name=st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z").filter(lambda n: not n.endswith((".bak", ".lock"))),
       context=st.one_of(st.none(), st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=256)))
def test_requests_encoded_by_the_client_parse_back(name: str, context: str | None) -> None:
    frame = encode_get(name, context)
    assert frame is not None and len(frame) - 4 <= GET_MAX_BODY
    assert struct.unpack(">I", frame[:4])[0] == len(frame) - 4
    assert _native().parse(frame[4:]) == (name.encode(), context.encode() if context else None)


@pytest.mark.parametrize("body, code", [
    (b"", "protocol"), (b"\x01", "protocol"), (b"\x02\x01", "unsupported"), (b"\x01\x02", "unsupported"),
    (b"\x01\x01\x02v1\x00", "protocol"), (b"\x01\x01\x02v1\x00\x01", "protocol"),
    (b"\x01\x01\x02v1\x00\x00x", "protocol"), (b"\x01\x01\x00\x00\x00", "usage"),
    (b"\x01\x01\x05v.bak\x00\x00", "usage"), (b"\x01\x01\x02../\x00\x00", "protocol"),
    (b"\x01\x01\x03../\x00\x00", "usage"), (b"\x01\x01\x02v1\x00\x02\xc3\x28", "usage"),
    (b"\x01\x01\x02v1\x00\x03\xed\xa0\x80", "usage"),  # a UTF-8-encoded surrogate
    (b"\x01\x01\x02v1\x02\x02" + "é".encode() * 257, "usage"),  # 257 characters
])
def test_bad_requests_get_their_error_code(body: bytes, code: str) -> None:
    assert _native().parse(body)[0] == code


def test_mutation_fuzz_of_the_parser_100k() -> None:
    """10^5 mutated requests through the native parser: every one parses or gets a known error code."""
    rng = random.Random(20261123)
    seeds = [encode_get("v1", None), encode_get("v1", "restic:/srv/repo"), encode_get("a" * 64, "é" * 256)]
    parse = _native().parse
    outcomes = {"parsed": 0, **dict.fromkeys(ERROR_CODES, 0)}
    for _ in range(100_000):
        body = mutate(rng, rng.choice(seeds)[4:])  # type: ignore[index]
        result = parse(body)
        if isinstance(result[0], str):
            assert result[0] in ERROR_CODES and isinstance(result[1], str)
            outcomes[result[0]] += 1
        else:
            assert len(result) == 2 and isinstance(result[0], bytes)
            outcomes["parsed"] += 1
    assert sum(outcomes.values()) == 100_000 and outcomes["parsed"] > 0 and all(outcomes.values())
    print(f"\nget-socket parser fuzz: 100,000 mutated requests, 0 crashes: {outcomes}")


# --- the agent's get socket, end to end ----------------------------------------------------------------

def connect_get(agent: AgentProcess) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(str(agent.get_socket))
    return s


def read_answer(s: socket.socket) -> tuple[bytearray | None, str, str]:
    (length,) = struct.unpack(">I", recv_exactly(s, 4))
    return decode_get_answer(bytearray(recv_exactly(s, length)))


def fast_get(agent: AgentProcess, vault: str, context: str | None) -> tuple[bytearray | None, str, str]:
    with connect_get(agent) as s:
        s.sendall(encode_get(vault, context))  # type: ignore[arg-type]
        return read_answer(s)


def json_get(agent: AgentProcess, vault: str, context: str | None) -> dict[str, Any]:
    with agent.connect() as s:
        s.sendall(frame({"op": "get", "id": 1, "vault": vault, **({"context": context} if context else {})}))
        return read_response(s)


def unlock(agent: AgentProcess, *extra: str) -> None:
    done = agent.cli("unlock", "v1", "--password-file", password_file(agent.home), *extra)
    assert done.returncode == 0, done.stderr


def audit_lines(agent: AgentProcess) -> list[dict[str, object]]:
    path = agent.home / "data" / "audit.log"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_get_socket_answers_as_the_agent_socket_does(agent: AgentProcess) -> None:
    path = agent.get_socket
    st_ = os.lstat(path)
    assert stat.S_ISSOCK(st_.st_mode) and stat.S_IMODE(st_.st_mode) == 0o600 and st_.st_uid == os.getuid()
    locked = fast_get(agent, "v1", "restic:/x")
    # a locked vault is not mirrored: the get socket says "locked" and the client asks the agent
    # socket, whose message says how to unlock it (issue 16: "plug in" only for token vaults)
    assert locked[0] is None and (locked[1], json_get(agent, "v1", "restic:/x")["error"]) == ("locked", "locked")
    unlock(agent)
    contexts = ["restic:/srv/repo", "é" * 256, "\x00tab\there\U0001f511", None]
    for context in contexts:
        key, code, message = fast_get(agent, "v1", context)
        answer = json_get(agent, "v1", context)
        assert code == "" and answer["ok"] is True, (code, message, answer)
        assert key == base64.b64decode(str(answer["key"]))
        assert key == (derive_subkey(CANARY_SECRET, context) if context else CANARY_SECRET)
    assert fast_get(agent, "v1.bak", "c")[1] == json_get(agent, "v1.bak", "c")["error"]
    assert json_get(agent, "nosuch", "c")["error"] == "vault-not-found"  # the get socket: not mirrored
    # The audit log has one line per release, the same from both sockets but for the time.
    lines = audit_lines(agent)
    released = [line for line in lines if line["ok"]]
    assert len(released) == 2 * len(contexts)
    for fast, slow in zip(released[0::2], released[1::2], strict=True):
        assert {k: v for k, v in fast.items() if k != "time"} == {k: v for k, v in slow.items() if k != "time"}
    assert [line["error"] for line in lines if not line["ok"]] == ["locked", "locked", "vault-not-found"]
    status = AgentClient(agent.socket).status()
    assert status["get_socket"] is True and status["vaults"][0]["releases"] == 2 * len(contexts)
    assert agent.cli("lock", "v1").returncode == 0
    assert fast_get(agent, "v1", "restic:/srv/repo")[1] == "locked"
    assert agent.stop() == 0 and not path.exists()


def test_cli_get_uses_the_get_socket(agent: AgentProcess) -> None:
    unlock(agent)
    expected = derive_subkey(CANARY_SECRET, "restic:/srv/repo")
    # With the agent socket's file moved away only the get socket can answer.
    moved = agent.socket.with_name("moved.sock")
    os.rename(agent.socket, moved)
    try:
        done = agent.cli("get", "v1", "--context", "restic:/srv/repo", "--format", "hex")
    finally:
        os.rename(moved, agent.socket)
    assert done.returncode == 0, done.stderr
    assert bytes.fromhex(done.stdout.strip()) == expected
    assert AgentClient(agent.socket).status()["vaults"][0]["releases"] == 1
    # And with the get socket gone the CLI gets the key from the agent socket.
    os.unlink(agent.get_socket)
    again = agent.cli("get", "v1", "--context", "restic:/srv/repo", "--format", "hex")
    assert again.returncode == 0 and again.stdout == done.stdout
    assert AgentClient(agent.socket).status()["vaults"][0]["releases"] == 2


def test_releases_on_the_get_socket_keep_the_vault_unlocked_then_it_locks(agent: AgentProcess) -> None:
    unlock(agent, "--idle-ttl", "2", "--max-ttl", "0")
    client = AgentClient(agent.socket)
    started = time.monotonic()
    while time.monotonic() - started < 4:  # twice the idle TTL, kept alive by get-socket gets only
        key, code, _ = fast_get(agent, "v1", "keepalive")
        assert key is not None, code
        time.sleep(0.4)
    entry = client.status()["vaults"][0]
    assert entry["unlocked"] and entry["idle_left"] > 1.0 and entry["releases"] >= 8
    last = time.monotonic()
    while client.status()["vaults"][0]["unlocked"]:
        assert time.monotonic() - last < 5, "not locked 5 s after the last release (idle TTL 2 s)"
        time.sleep(0.1)
    took = time.monotonic() - last
    assert abs(took - 2) <= 1, took
    assert fast_get(agent, "v1", "keepalive")[1] == "locked"
    print(f"\nget socket: idle TTL 2 s kept for 4 s by its gets, then locked {took:.2f} s after the last")


def test_get_socket_applies_the_client_rules(agent_home: Path) -> None:
    config = agent_home / "config"
    config.mkdir(mode=0o700)
    (config / "config.toml").write_text('[vaults.v1]\nallow_exe = ["/nonexistent/restic"]\n'
                                        f'[vaults.v2]\nallow_uids = [{os.getuid() + 1}]\n')
    make_vault(agent_home, "v2")
    agent = start_agent(agent_home)
    try:
        unlock(agent)
        done = agent.cli("unlock", "v2", "--password-file", password_file(agent.home))
        assert done.returncode == 0, done.stderr
        for vault in ("v1", "v2"):
            key, code, message = fast_get(agent, vault, "restic:/x")
            answer = json_get(agent, vault, "restic:/x")
            assert key is None and code == "access-denied" and (code, message) == (answer["error"], answer["message"])
        assert [line["error"] for line in audit_lines(agent)] == ["access-denied"] * 4
    finally:
        agent.stop()


def test_agent_with_get_socket_off(agent_home: Path) -> None:
    config = agent_home / "config"
    config.mkdir(mode=0o700)
    (config / "config.toml").write_text("[agent]\nget_socket = false\n")
    agent = start_agent(agent_home)
    try:
        assert not agent.get_socket.exists()
        assert AgentClient(agent.socket).status()["get_socket"] is False
        assert "agent socket only" in agent.cli("status").stdout
        unlock(agent)
        done = agent.cli("get", "v1", "--context", "c", "--format", "hex")
        assert done.returncode == 0 and bytes.fromhex(done.stdout.strip()) == derive_subkey(CANARY_SECRET, "c")
    finally:
        agent.stop()


def _malformed(rng: random.Random) -> bytes:
    body = bytearray(encode_get("v1", "restic:/x")[4:])  # type: ignore[index]
    kind = rng.randrange(5)
    if kind == 0:
        body[0] = rng.choice([0, 2, 255])
    elif kind == 1:
        body[1] = rng.choice([0, 2, 9])
    elif kind == 2:
        del body[rng.randrange(2, len(body)):]
    elif kind == 3:
        body += os.urandom(rng.randint(1, 5))
    else:
        body = bytearray(os.urandom(rng.randint(0, 30)))
        body[0:2] = b"\x01\x01"
    return struct.pack(">I", len(body)) + bytes(body)


def test_ten_thousand_malformed_requests_then_a_get_every_hundred(agent: AgentProcess) -> None:
    unlock(agent)
    rng = random.Random(6)
    errors, served = 0, 0
    expected = derive_subkey(CANARY_SECRET, "restic:/x")
    with connect_get(agent) as s:
        for i in range(10_000):
            s.sendall(_malformed(rng))
            key, code, _ = read_answer(s)
            errors += key is None and code in ERROR_CODES
            if i % 100 == 99:
                s.sendall(encode_get("v1", "restic:/x"))  # type: ignore[arg-type]
                served += read_answer(s)[0] == expected
    assert errors == 10_000 and served == 100
    assert not any(line["ok"] is False for line in audit_lines(agent))  # no malformed request reached a vault
    print(f"\nget socket, 10,000 malformed requests: {errors} error answers, get served {served}/100")


def test_oversized_length_closes_only_that_connection(agent: AgentProcess) -> None:
    unlock(agent)
    with connect_get(agent) as bystander, connect_get(agent) as attacker:
        attacker.sendall(struct.pack(">I", GET_MAX_BODY + 1) + b"x" * 100)
        assert read_answer(attacker)[1] == "too-large"
        assert attacker.recv(10) == b""
        bystander.sendall(encode_get("v1", "c"))  # type: ignore[arg-type]
        assert read_answer(bystander)[0] == derive_subkey(CANARY_SECRET, "c")


def test_pipelined_requests_are_answered_in_order(agent: AgentProcess) -> None:
    unlock(agent)
    contexts = [f"ctx-{i}" for i in range(200)]
    with connect_get(agent) as s:
        s.sendall(b"".join(encode_get("v1", c) for c in contexts))  # type: ignore[misc]
        keys = [read_answer(s)[0] for _ in contexts]
    assert keys == [derive_subkey(CANARY_SECRET, c) for c in contexts]


def test_a_client_that_does_not_read_blocks_nobody(agent: AgentProcess) -> None:
    unlock(agent)
    hog = connect_get(agent)
    hog.setblocking(False)
    one = encode_get("v1", "cc")  # 13 bytes: the agent's buffer holds a part of one when it stops reading
    assert one is not None
    request = one * 1000
    sent = 0
    deadline = time.monotonic() + 10
    try:
        while time.monotonic() < deadline:  # until the agent stops reading and the buffers are full
            try:
                sent += hog.send(request)
            except BlockingIOError:
                break
        assert time.monotonic() < deadline, "the agent kept reading from a client that reads nothing"
        assert fast_get(agent, "v1", "c")[0] == derive_subkey(CANARY_SECRET, "c")
        assert AgentClient(agent.socket).status()["vaults"][0]["unlocked"]
        # Its waiting requests are not a half-sent frame: after the frame timeout it is still
        # served, in order, once it reads.
        time.sleep(11)
        hog.setblocking(True)
        hog.settimeout(10)
        expected = derive_subkey(CANARY_SECRET, "cc")
        answered = sum(read_answer(hog)[0] == expected for _ in range(sent // len(one)))
        assert answered == sent // len(one)
    finally:
        hog.close()
    print(f"\nget socket: a client sent {sent // len(one):,} requests without reading; others served; all"
          " answered when it read, 11 s later")


@pytest.fixture
def two_agents(tmp_path: Path) -> Iterator[tuple[AgentProcess, AgentProcess]]:
    """Two agents on two sockets in one directory: each get socket belongs to its agent."""
    homes = []
    for name in ("a", "b"):
        home = tmp_path / name
        home.mkdir(mode=0o700)
        make_vault(home, secret=name.encode() * 32)
        homes.append(home)
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    agents = [start_agent(home, run / f"{home.name}.sock") for home in homes]
    try:
        yield agents[0], agents[1]
    finally:
        for agent in agents:
            agent.stop()


def test_each_agent_socket_has_its_own_get_socket(two_agents: tuple[AgentProcess, AgentProcess]) -> None:
    for agent in two_agents:
        unlock(agent)
    for agent, secret in zip(two_agents, (b"a" * 32, b"b" * 32), strict=True):
        done = cli(agent.home, "get", "v1", "--format", "hex", env=agent.env())
        assert done.returncode == 0 and bytes.fromhex(done.stdout.strip()) == secret
