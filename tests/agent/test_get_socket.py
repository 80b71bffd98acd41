"""The get socket (docs/spec/protocol.md, "The get socket"): the native thread serves the success
path of ``get`` (the key, after its audit line) and answers everything else "ask the agent
socket", where the JSON ``get`` gives the refusal, its message and its audit line. It must
release exactly what the JSON ``get`` releases, keep every rule of the agent, and survive what
the agent socket survives. Its parser, derivation, audit line and constants are also checked
directly against the Python ones and the shared vectors (tests/vectors/get-socket).

Without the C extension (no compiler when tokenagent was installed) these tests skip; CI
builds it and TOKENAGENT_STRICT_SKIPS turns such a skip into a failure.
"""

from __future__ import annotations

import base64
import json
import os
import random
import stat
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from agentkit import (
    ASK,
    CANARY_SECRET,
    AgentProcess,
    cli,
    connect_get,
    fast_get,
    json_get,
    make_vault,
    password_file,
    read_get_answer,
    start_agent,
    write_config,
)
from getsocket_mutations import mutate  # type: ignore[import-not-found]
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenagent.client import AgentClient
from tokenagent.daemon import getsocket, state
from tokenagent.daemon.config import VaultPolicy
from tokenagent.protocol import GET_ASK, GET_MAX_BODY, encode_get
from tokenagent.vault import check_name, crypto, derive_subkey
from tokenagent.vault.format import MAX_SECRET_LEN

pytestmark = pytest.mark.skipif(not getsocket.available(),
                                reason="the get socket's C extension is not built (pip install needs gcc and libssl-dev)")

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "get-socket"


def _native():  # type: ignore[no-untyped-def]
    from tokenagent.daemon import _getserver

    return _getserver


# --- the native parts against their Python twins ---------------------------------------------------

def test_native_constants_equal_the_python_ones() -> None:
    native = _native()
    check_name("a" * native.MAX_NAME)
    with pytest.raises(Exception, match="invalid vault name"):
        check_name("a" * (native.MAX_NAME + 1))
    assert native.MAX_BODY == GET_MAX_BODY
    assert native.MAX_CONTEXT == state.MAX_CONTEXT
    assert native.MAX_SECRET == MAX_SECRET_LEN
    assert native.KEY_LEN == crypto.KEY_LEN
    assert native.LABEL_CONTEXT == crypto.LABEL_CONTEXT
    assert native.STATUS_ASK == GET_ASK


def test_shared_vectors_native_side() -> None:
    """tests/vectors/get-socket: what the native code releases, and the audit line it writes, are
    what the Python side gives (tests/core/test_vectors.py walks the same file there)."""
    native = _native()
    head, _, body = VECTORS.read_bytes().partition(b"\n\n")
    headers = dict(line.split(": ", 1) for line in head.decode().splitlines())
    secret = bytes.fromhex(headers["secret"])
    cases = [json.loads(line) for line in body.splitlines()]
    assert len(cases) == int(headers["cases"])
    outcomes = {"release": 0, "ask": 0}
    for case in cases:
        request = bytes.fromhex(case["request"])
        parsed = native.parse(request)
        outcomes[case["native"]] += 1
        if case["ask_because"] == "request":
            assert parsed is None, case
            continue
        name, context = parsed
        assert (name.decode(), context and context.decode()) == (case["vault"], case["context"])
        line = native.release_line(request, case["exe"], case["parent_exe"], case["pid"], case["uid"], case["time"])
        if case["ask_because"] == "peer":
            assert line is None, case
            continue
        if case["ask_because"] == "raw":
            assert context is None and not case["allow_raw"]
            continue
        assert case["native"] == "release" and line is not None and line.decode() == case["audit"]
        key = native.derive(secret, context) if context else secret
        assert key.hex() == case["key"]
    assert all(outcomes.values()), outcomes


@settings(max_examples=300, deadline=None)
@given(secret=st.binary(min_size=1, max_size=4096),
       context=st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=256).filter(
           lambda c: len(c.encode()) <= 256))
def test_subkey_equals_the_python_derivation(secret: bytes, context: str) -> None:
    assert _native().derive(secret, context.encode()) == bytes(derive_subkey(secret, context))


PLAIN = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E, exclude_characters='"\\'), min_size=1,
                max_size=256)


@settings(max_examples=300, deadline=None)
@given(name=st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z").filter(lambda n: not n.endswith((".bak", ".lock"))),
       context=st.one_of(st.none(), PLAIN, st.text(min_size=1, max_size=256)),
       exe=st.one_of(st.none(), PLAIN, st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"),
                                                   min_size=1, max_size=80)))
def test_release_lines_are_the_python_lines(name: str, context: str | None, exe: str | None) -> None:
    """Whatever the native code writes for a release is the Python line; what it cannot write
    unescaped it leaves to the agent socket."""
    from tokenagent.daemon.audit import audit_line

    request = encode_get(name, context)
    assert request is not None and len(request) - 4 <= GET_MAX_BODY
    assert struct.unpack(">I", request[:4])[0] == len(request) - 4
    parsed = _native().parse(request[4:])
    plain_context = context is None or (context.isascii() and context.isprintable() and not set(context) & set('"\\'))
    assert (parsed is not None) == plain_context
    if parsed is None:
        return
    assert parsed == (name.encode(), context.encode() if context else None)
    line = _native().release_line(request[4:], exe, "/usr/bin/restic", 7, 1000, 1764600000.125)
    plain_exe = exe is None or (exe.isascii() and exe.isprintable() and not set(exe) & set('"\\'))
    assert (line is not None) == plain_exe
    if line is not None:
        assert line == audit_line(name, context, 7, 1000, exe, "/usr/bin/restic", None, 1764600000.125)


def test_mutation_fuzz_of_the_parser_100k() -> None:
    """10^5 mutated requests through the native parser: every one is served or asked elsewhere,
    and whatever it serves is a request a client could have encoded."""
    rng = random.Random(20261123)
    seeds = [encode_get("v1", None), encode_get("v1", "restic:/srv/repo"), encode_get("a" * 64, "c" * 256)]
    parse = _native().parse
    outcomes = {"served": 0, "asked": 0}
    for _ in range(100_000):
        body = mutate(rng, rng.choice(seeds)[4:])  # type: ignore[index]
        result = parse(body)
        if result is None:
            outcomes["asked"] += 1
            continue
        name, context = result
        assert 1 <= len(name) <= 64 and (context is None or 1 <= len(context) <= 256)
        ctx = context or b""
        assert bytes((1, 1, len(name))) + name + len(ctx).to_bytes(2, "big") + ctx == body
        outcomes["served"] += 1
    assert sum(outcomes.values()) == 100_000 and all(outcomes.values())
    print(f"\nget-socket parser fuzz: 100,000 mutated requests, 0 crashes: {outcomes}")


def test_vaults_with_rules_the_native_code_cannot_decide_are_not_mirrored() -> None:
    assert getsocket.served_natively(VaultPolicy())
    assert getsocket.served_natively(VaultPolicy(idle_ttl=5, max_ttl=9, allow_uids=(1000,), unlock_on_plug=False))
    assert not getsocket.served_natively(VaultPolicy(allow_exe=("/usr/bin/restic",)))


# --- the agent's get socket, end to end ----------------------------------------------------------------

def unlock(agent: AgentProcess, *extra: str) -> None:
    done = agent.cli("unlock", "v1", "--password-file", password_file(agent.home), *extra)
    assert done.returncode == 0, done.stderr


def audit_lines(agent: AgentProcess) -> list[dict[str, object]]:
    path = agent.home / "data" / "audit.log"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_get_socket_releases_what_the_agent_socket_releases(agent: AgentProcess) -> None:
    path = agent.get_socket
    st_ = os.lstat(path)
    assert stat.S_ISSOCK(st_.st_mode) and stat.S_IMODE(st_.st_mode) == 0o600 and st_.st_uid == os.getuid()
    assert fast_get(agent, "v1", "restic:/x") == ASK  # locked: the agent socket says so
    assert json_get(agent, "v1", "restic:/x")["error"] == "locked"
    unlock(agent)
    plain, escaped = ["restic:/srv/repo", "x" * 256, None], ["é" * 256, "\x00tab\there\U0001f511", 'a "quoted" \\']
    for context in plain:
        key, code, message = fast_get(agent, "v1", context)
        answer = json_get(agent, "v1", context)
        assert code == "" and answer["ok"] is True, (code, message, answer)
        assert key == base64.b64decode(str(answer["key"]))
        assert key == (derive_subkey(CANARY_SECRET, context) if context else CANARY_SECRET)
    with AgentClient(agent.socket) as client:
        for context in escaped:  # the audit line would need escapes: served by the agent socket
            assert fast_get(agent, "v1", context) == ASK
            assert client.get("v1", context) == derive_subkey(CANARY_SECRET, context)
    for vault in ("nosuch", "v1.bak", "v1\n"):
        assert fast_get(agent, vault, "c") == ASK
    assert json_get(agent, "nosuch", "c")["error"] == "vault-not-found"  # what the client then hears
    # One line per release, the same from both sockets but for the time; a refusal has one line,
    # from the agent socket.
    lines = audit_lines(agent)
    assert [line["error"] for line in lines if not line["ok"]] == ["locked", "vault-not-found"]
    released = [line for line in lines if line["ok"]]
    assert len(released) == 2 * len(plain) + len(escaped)
    for fast, slow in zip(released[0:6:2], released[1:6:2], strict=True):
        assert {k: v for k, v in fast.items() if k != "time"} == {k: v for k, v in slow.items() if k != "time"}
    assert [line["context"] for line in released[6:]] == escaped
    status = AgentClient(agent.socket).status()
    assert status["get_socket"] is True and status["vaults"][0]["releases"] == len(released)
    assert agent.cli("lock", "v1").returncode == 0
    assert fast_get(agent, "v1", "restic:/srv/repo") == ASK
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
    assert fast_get(agent, "v1", "keepalive") == ASK
    print(f"\nget socket: idle TTL 2 s kept for 4 s by its gets, then locked {took:.2f} s after the last")


def test_get_socket_applies_the_client_rules(agent_home: Path) -> None:
    """allow_uids is decided natively; a vault with allow_exe is not mirrored at all. Refusals and
    their lines come from the agent socket."""
    write_config(agent_home, '[vaults.v1]\nallow_exe = ["/nonexistent/restic"]\n'
                             f'[vaults.v2]\nallow_uids = [{os.getuid() + 1}]\n'
                             f'[vaults.v3]\nallow_uids = [{os.getuid()}]\n')
    make_vault(agent_home, "v2")
    make_vault(agent_home, "v3")
    agent = start_agent(agent_home)
    try:
        for vault in ("v1", "v2", "v3"):
            done = agent.cli("unlock", vault, "--password-file", password_file(agent.home))
            assert done.returncode == 0, done.stderr
        for vault in ("v1", "v2"):
            assert fast_get(agent, vault, "restic:/x") == ASK
            answer = json_get(agent, vault, "restic:/x")
            assert answer["error"] == "access-denied" and "may not get keys" in answer["message"]
        assert fast_get(agent, "v3", "restic:/x")[0] == derive_subkey(CANARY_SECRET, "restic:/x")
        assert [(line["vault"], line["error"]) for line in audit_lines(agent)] == [
            ("v1", "access-denied"), ("v2", "access-denied"), ("v3", None)]
    finally:
        agent.stop()


def test_agent_with_get_socket_off(agent_home: Path) -> None:
    write_config(agent_home, "[agent]\nget_socket = false\n")
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
    asked, served = 0, 0
    expected = derive_subkey(CANARY_SECRET, "restic:/x")
    with connect_get(agent) as s:
        for i in range(10_000):
            s.sendall(_malformed(rng))
            asked += read_get_answer(s) == ASK
            if i % 100 == 99:
                s.sendall(encode_get("v1", "restic:/x"))  # type: ignore[arg-type]
                served += read_get_answer(s)[0] == expected
    assert asked == 10_000 and served == 100
    assert all(line["ok"] for line in audit_lines(agent)) and len(audit_lines(agent)) == 100
    print(f"\nget socket, 10,000 malformed requests: {asked} 'ask the agent socket', get served {served}/100")


def test_oversized_length_closes_only_that_connection(agent: AgentProcess) -> None:
    unlock(agent)
    with connect_get(agent) as bystander, connect_get(agent) as attacker:
        attacker.sendall(struct.pack(">I", GET_MAX_BODY + 1) + b"x" * 100)
        assert read_get_answer(attacker) == ASK
        assert attacker.recv(10) == b""
        bystander.sendall(encode_get("v1", "c"))  # type: ignore[arg-type]
        assert read_get_answer(bystander)[0] == derive_subkey(CANARY_SECRET, "c")


def test_pipelined_requests_are_answered_in_order(agent: AgentProcess) -> None:
    unlock(agent)
    contexts = [f"ctx-{i}" for i in range(200)]
    with connect_get(agent) as s:
        s.sendall(b"".join(encode_get("v1", c) for c in contexts))  # type: ignore[misc]
        keys = [read_get_answer(s)[0] for _ in contexts]
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
        answered = sum(read_get_answer(hog)[0] == expected for _ in range(sent // len(one)))
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
