"""The ssh-agent protocol of the agent's ssh socket, from the specs (draft-miller-ssh-agent, PROTOCOL.agent).

In process (``SshService`` on an ``AgentState``, the sans-IO ``AgentConnection``), then on the
real socket: malformed and unknown messages answered SSH_AGENT_FAILURE, size limits, a fuzzer.
"""

from __future__ import annotations

import hashlib
import os
import random
import socket
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from agentkit import AgentProcess, password_vaults
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from faceskit import CONFIG, faces_home, start, unlock

from tokenagent import sshagent as sa
from tokenagent.daemon.config import AgentConfig, SshKey
from tokenagent.daemon.sshsocket import ConnectionState, SshService
from tokenagent.daemon.state import AgentState, Peer
from tokenagent.protocol import CLOSED, NEED_DATA, FrameError

SECRET = b"k" * 32
PEER = Peer(9, os.getuid(), os.getgid(), "/usr/bin/ssh", "/usr/bin/bash")
KEYS = (SshKey("v1", "laptop", "me@laptop"), SshKey("v1", "p256", "", "ecdsa-p256"), SshKey("v2", "other"))
EXECS = int(os.environ.get("TOKENAGENT_SSH_FUZZ_EXECS", "20000"))


def service(tmp_path: Path, **config: object) -> SshService:
    store = password_vaults(tmp_path / "vaults", ["v1", "v2"], SECRET)
    state = AgentState(store, AgentConfig(ssh_keys=KEYS, **config),  # type: ignore[arg-type]
                       audit_path=tmp_path / "audit.log")
    state.add_session("v1", bytearray(SECRET), "1", "client")
    return SshService(state)


def ask(svc: SshService, kind: int, payload: bytes = b"", peer: Peer = PEER,
        conn: ConnectionState | None = None) -> tuple[int, bytes]:
    answer = svc.handle(kind, payload, peer, conn or ConnectionState())
    assert isinstance(answer, bytes)
    (length,) = struct.unpack(">I", answer[:4])
    assert length == len(answer) - 4 >= 1
    return answer[4], answer[5:]


def identities(svc: SshService, peer: Peer = PEER) -> list[tuple[bytes, str]]:
    kind, body = ask(svc, sa.SSH_AGENTC_REQUEST_IDENTITIES, peer=peer)
    assert kind == sa.SSH_AGENT_IDENTITIES_ANSWER
    r = sa.Reader(body)
    out = [(r.string(), r.text()) for _ in range(r.u32())]
    r.end()
    return out


def sign_request(blob: bytes, data: bytes, flags: int = 0) -> bytes:
    return sa.string(blob) + sa.string(data) + struct.pack(">I", flags)


def test_listed_only_while_the_vault_is_unlocked(tmp_path: Path) -> None:
    svc = service(tmp_path)
    listed = identities(svc)
    assert [c for _, c in listed] == ["me@laptop", "v1/p256"]  # v2 is locked
    assert [sa.key_type_of(b) for b, _ in listed] == [sa.ED25519, sa.ECDSA_P256]
    svc.state.lock("v1", "request")
    assert identities(svc) == []
    svc.state.add_session("v2", bytearray(SECRET), "1", "client")
    assert [c for _, c in identities(svc)] == ["v2/other"]


def test_a_configuration_reload_changes_the_keys(tmp_path: Path) -> None:
    svc = service(tmp_path)
    assert len(identities(svc)) == 2
    svc.state.reload(AgentConfig(ssh_keys=(SshKey("v1", "new-label", "new"),)))
    assert [c for _, c in identities(svc)] == ["new"]
    svc.state.reload(AgentConfig())
    assert identities(svc) == []


def test_signatures_verify(tmp_path: Path) -> None:
    svc = service(tmp_path)
    (ed_blob, _), (ec_blob, _) = identities(svc)
    data = b"\x00\x00\x00\x04sess" + os.urandom(40)
    kind, body = ask(svc, sa.SSH_AGENTC_SIGN_REQUEST, sign_request(ed_blob, data))
    assert kind == sa.SSH_AGENT_SIGN_RESPONSE
    sig = sa.Reader(sa.Reader(body).string())
    assert sig.string() == sa.ED25519
    Ed25519PublicKey.from_public_bytes(sa.Reader(ed_blob[15:]).string()).verify(sig.string(), data)
    kind, body = ask(svc, sa.SSH_AGENTC_SIGN_REQUEST, sign_request(ec_blob, data))
    sig = sa.Reader(sa.Reader(body).string())
    assert kind == sa.SSH_AGENT_SIGN_RESPONSE and sig.string() == sa.ECDSA_P256
    rs = sa.Reader(sig.string())
    r, s = int.from_bytes(rs.string(), "big"), int.from_bytes(rs.string(), "big")
    point = sa.Reader(ec_blob)
    point.string(), point.string()
    public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point.string())
    public.verify(encode_dss_signature(r, s), data, ec.ECDSA(hashes.SHA256()))
    assert svc.state.sessions["v1"].releases == 2


def test_rsa_flags_unknown_keys_and_malformed_requests_fail(tmp_path: Path) -> None:
    svc = service(tmp_path)
    (blob, _), _ = identities(svc)
    for flags in (sa.SSH_AGENT_RSA_SHA2_256, sa.SSH_AGENT_RSA_SHA2_512):
        assert ask(svc, sa.SSH_AGENTC_SIGN_REQUEST, sign_request(blob, b"x", flags))[0] == sa.SSH_AGENT_FAILURE
    other = sa.ed25519_blob(Ed25519PrivateKey.generate().public_key().public_bytes_raw())
    assert ask(svc, sa.SSH_AGENTC_SIGN_REQUEST, sign_request(other, b"x"))[0] == sa.SSH_AGENT_FAILURE
    good = sign_request(blob, b"x")
    for bad in (good[:-1], good + b"\x00", good[:3], b"", b"\xff\xff\xff\xff" + good[4:]):
        assert ask(svc, sa.SSH_AGENTC_SIGN_REQUEST, bad)[0] == sa.SSH_AGENT_FAILURE
    assert ask(svc, sa.SSH_AGENTC_REQUEST_IDENTITIES, b"\x00")[0] == sa.SSH_AGENT_FAILURE
    assert ask(svc, sa.SSH_AGENTC_SIGN_REQUEST, good)[0] == sa.SSH_AGENT_SIGN_RESPONSE  # still usable


def test_key_changes_lock_and_unknown_types_are_refused(tmp_path: Path) -> None:
    svc = service(tmp_path)
    for kind in range(256):
        if kind in (sa.SSH_AGENTC_REQUEST_IDENTITIES, sa.SSH_AGENTC_SIGN_REQUEST, sa.SSH_AGENTC_EXTENSION):
            continue
        assert ask(svc, kind, os.urandom(kind % 7))[0] == sa.SSH_AGENT_FAILURE, kind
    assert len(identities(svc)) == 2 and "v1" in svc.state.sessions  # nothing changed


def test_extensions(tmp_path: Path) -> None:
    svc = service(tmp_path)
    kind, body = ask(svc, sa.SSH_AGENTC_EXTENSION, sa.string(b"query"))
    r = sa.Reader(body)
    assert kind == sa.SSH_AGENT_SUCCESS and r.text() == "query"
    assert {r.text(), r.text()} == {"query", "session-bind@openssh.com"}
    assert ask(svc, sa.SSH_AGENTC_EXTENSION, sa.string(b"no-such@example.org") + b"xyz")[0] == sa.SSH_AGENT_FAILURE
    assert ask(svc, sa.SSH_AGENTC_EXTENSION, b"\x00\x00")[0] == sa.SSH_AGENT_FAILURE


def test_session_bind_is_verified_and_names_the_host_in_the_audit(tmp_path: Path) -> None:
    svc = service(tmp_path)
    host = Ed25519PrivateKey.generate()
    hostkey = sa.ed25519_blob(host.public_key().public_bytes_raw())
    session_id = os.urandom(32)
    conn = ConnectionState()

    def bind(signature: bytes) -> int:
        contents = sa.string(hostkey) + sa.string(session_id) + sa.string(signature) + b"\x00"
        return ask(svc, sa.SSH_AGENTC_EXTENSION, sa.string(sa.EXT_SESSION_BIND.encode()) + contents, conn=conn)[0]

    assert bind(sa.ed25519_signature(host.sign(b"another session"))) == sa.SSH_AGENT_FAILURE
    assert bind(b"garbage") == sa.SSH_AGENT_FAILURE and conn.hosts == {}
    assert bind(sa.ed25519_signature(host.sign(session_id))) == sa.SSH_AGENT_SUCCESS
    (blob, _), _ = identities(svc)
    userauth = (sa.string(session_id) + bytes([50]) + sa.string(b"alice") + sa.string(b"ssh-connection")
                + sa.string(b"publickey") + b"\x01" + sa.string(b"ssh-ed25519") + sa.string(blob))
    assert ask(svc, sa.SSH_AGENTC_SIGN_REQUEST, sign_request(blob, userauth), conn=conn)[0] == \
        sa.SSH_AGENT_SIGN_RESPONSE
    line = (tmp_path / "audit.log").read_text()
    assert f'"host": "{sa.fingerprint(hostkey)}"' in line and '"user": "alice"' in line
    assert hashlib.sha256(session_id).hexdigest()[:16] in line


def test_client_rules_of_the_vault_apply(tmp_path: Path) -> None:
    svc = service(tmp_path, vaults={"v1": {"allow_exe": ["/usr/bin/ssh-keygen"]}})
    assert identities(svc) == []  # /usr/bin/ssh may not use v1's keys
    keygen = Peer(10, os.getuid(), os.getgid(), "/usr/bin/ssh-keygen")
    (blob, _), _ = identities(svc, keygen)
    assert ask(svc, sa.SSH_AGENTC_SIGN_REQUEST, sign_request(blob, b"x"))[0] == sa.SSH_AGENT_FAILURE
    assert ask(svc, sa.SSH_AGENTC_SIGN_REQUEST, sign_request(blob, b"x"), keygen)[0] == sa.SSH_AGENT_SIGN_RESPONSE
    assert '"error": "access-denied"' in (tmp_path / "audit.log").read_text()


def test_confirm_without_a_pinentry_refuses(tmp_path: Path) -> None:
    import asyncio

    svc = service(tmp_path)
    svc.keys = (SshKey("v1", "laptop", confirm=True),)
    (blob, _), = identities(svc)
    pending = svc.handle(sa.SSH_AGENTC_SIGN_REQUEST, sign_request(blob, b"x"), PEER, ConnectionState())
    assert not isinstance(pending, bytes)
    assert asyncio.run(pending) == sa.failure()  # type: ignore[arg-type]
    assert "confirm needs a pinentry" in (tmp_path / "audit.log").read_text()


def test_touch_needs_a_vault_unlocked_by_a_token(tmp_path: Path) -> None:
    import asyncio

    svc = service(tmp_path)
    svc.keys = (SshKey("v1", "laptop", touch=True),)
    (blob, _), = identities(svc)
    pending = svc.handle(sa.SSH_AGENTC_SIGN_REQUEST, sign_request(blob, b"x"), PEER, ConnectionState())
    assert not isinstance(pending, bytes)
    assert asyncio.run(pending) == sa.failure()  # type: ignore[arg-type]
    assert "touch needs the vault unlocked by a plugged token" in (tmp_path / "audit.log").read_text()


def test_idle_deadline_is_pushed_by_a_signature(tmp_path: Path) -> None:
    now = [100.0]
    svc = service(tmp_path)
    svc.state.clock = lambda: now[0]
    svc.state.add_session("v1", bytearray(SECRET), "1", "client", idle_ttl=10, max_ttl=0)
    (blob, _), _ = identities(svc)
    now[0] += 9
    assert ask(svc, sa.SSH_AGENTC_SIGN_REQUEST, sign_request(blob, b"x"))[0] == sa.SSH_AGENT_SIGN_RESPONSE
    now[0] += 9
    assert len(identities(svc)) == 2
    now[0] += 11
    assert identities(svc) == [] and "v1" not in svc.state.sessions  # the idle TTL locked it


def test_framing_limits() -> None:
    conn = sa.AgentConnection()
    conn.receive_data(b"\x00\x00\x00\x05\x0b")
    assert conn.next_message() is NEED_DATA
    conn.receive_data(b"abcd\x00\x00\x00\x01\x0b")
    assert conn.next_message() == (11, b"abcd") and conn.next_message() == (11, b"")
    assert conn.next_message() is NEED_DATA
    for length in (0, sa.MAX_MESSAGE + 1, 2**32 - 1):
        bad = sa.AgentConnection()
        bad.receive_data(struct.pack(">I", length) + b"\x0b")
        with pytest.raises(FrameError) as err:
            bad.next_message()
        assert err.value.fatal and bad.next_message() is CLOSED
    whole = sa.AgentConnection()
    whole.receive_data(struct.pack(">I", sa.MAX_MESSAGE) + b"\x0b" + bytes(sa.MAX_MESSAGE - 1))
    assert whole.next_message() == (11, bytes(sa.MAX_MESSAGE - 1))


def test_fuzz_the_parser_and_the_service(tmp_path: Path) -> None:
    """Mutated valid messages in random chunks: no exception, every answer well-formed, no signature
    from a locked vault's key."""
    svc = service(tmp_path)
    (ed_blob, _), (ec_blob, _) = identities(svc)
    svc.state.add_session("v2", bytearray(SECRET), "1", "client")
    (v2_blob, _), = [k for k in identities(svc) if k[1] == "v2/other"]
    svc.state.lock("v2", "request")
    seeds = [sa.message(11), sa.message(13, sign_request(ed_blob, b"data")),
             sa.message(13, sign_request(ec_blob, b"SSHSIG\x00\x00\x00\x03git", 2)),
             sa.message(13, sign_request(v2_blob, b"locked")), sa.message(27, sa.string(b"query")),
             sa.message(27, sa.string(b"session-bind@openssh.com") + bytes(20)), sa.message(17, bytes(40)),
             sa.message(22, sa.string(b"pw")), sa.message(99)]
    rng = random.Random(18)
    answers = 0
    for _ in range(EXECS):
        data = bytearray(b"".join(rng.choice(seeds) for _ in range(rng.randint(1, 3))))
        for _ in range(rng.randint(0, 4)):
            op = rng.randrange(4)
            if op == 0 and data:
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
            elif op == 1:
                data.insert(rng.randrange(len(data) + 1), rng.randrange(256))
            elif op == 2 and data:
                del data[rng.randrange(len(data))]
            else:
                pos = rng.randrange(len(data) + 1)
                data[pos:pos] = os.urandom(rng.randint(1, 8))
        conn, state = sa.AgentConnection(), ConnectionState()
        pos = 0
        while pos < len(data):
            step = rng.randint(1, 64)
            conn.receive_data(bytes(data[pos : pos + step]))
            pos += step
            while True:
                try:
                    message = conn.next_message()
                except FrameError as err:
                    assert err.fatal
                    break
                if message is NEED_DATA or message is CLOSED:
                    break
                assert isinstance(message, tuple)
                answer = svc.handle(message[0], message[1], PEER, state)
                assert isinstance(answer, bytes)
                (length,) = struct.unpack(">I", answer[:4])
                assert length == len(answer) - 4 and answer[4] in (5, 6, 12, 14)
                if answer[4] == 14:
                    assert sa.Reader(message[1]).string() in (ed_blob, ec_blob)
                answers += 1
            if conn.broken:
                break
    assert answers > EXECS // 2
    print(f"\nssh-agent fuzz: {EXECS} inputs, {answers} answers, 0 crashes")


# --- the real socket -----------------------------------------------------------------------------
@pytest.fixture
def face(tmp_path: Path) -> Iterator[AgentProcess]:
    agent = start(faces_home(tmp_path, CONFIG))
    try:
        yield agent
    finally:
        agent.stop()


def connect(agent: AgentProcess) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(f"{agent.socket}.ssh")
    return s


def read_answer(s: socket.socket) -> tuple[int, bytes]:
    def exactly(n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = s.recv(n - len(data))
            if not chunk:
                raise ConnectionError("closed")
            data += chunk
        return data

    (length,) = struct.unpack(">I", exactly(4))
    body = exactly(length)
    return body[0], body[1:]


def test_socket_survives_malformed_messages_and_limits(face: AgentProcess) -> None:
    unlock(face)
    rng = random.Random(5)
    failures = listings = 0
    with connect(face) as s:
        for _ in range(100):  # 10,000 malformed or refused messages, 100 at a time, each 100 then a listing
            batch = [sa.message(rng.choice([0, 1, 13, 17, 18, 19, 22, 23, 25, 27, 30, 200, 255]),
                                os.urandom(rng.randint(0, 40))) for _ in range(100)]
            s.sendall(b"".join(batch) + sa.message(sa.SSH_AGENTC_REQUEST_IDENTITIES))
            failures += sum(read_answer(s)[0] == sa.SSH_AGENT_FAILURE for _ in range(100))
            kind, body = read_answer(s)
            listings += kind == sa.SSH_AGENT_IDENTITIES_ANSWER and body[:4] == b"\x00\x00\x00\x02"
    assert (failures, listings) == (10000, 100)
    print(f"\nssh socket: 10,000 malformed messages answered FAILURE, listings after each 100: {listings}/100")
    with connect(face) as big, connect(face) as other:
        big.sendall(struct.pack(">I", sa.MAX_MESSAGE + 1) + b"\x0b")
        assert big.recv(10) == b""  # closed, nothing answered
        other.sendall(sa.message(sa.SSH_AGENTC_REQUEST_IDENTITIES))
        assert read_answer(other)[0] == sa.SSH_AGENT_IDENTITIES_ANSWER  # only that connection
    with connect(face) as zero:
        zero.sendall(b"\x00\x00\x00\x00")
        assert zero.recv(10) == b""
    with connect(face) as pipelined:
        pipelined.sendall(sa.message(11) * 50)
        assert all(read_answer(pipelined)[0] == sa.SSH_AGENT_IDENTITIES_ANSWER for _ in range(50))


def test_a_half_sent_message_is_dropped_after_the_frame_timeout(face: AgentProcess) -> None:
    with connect(face) as slow, connect(face) as other:
        slow.settimeout(30)
        slow.sendall(b"\x00\x00\x01\x00\x0b")  # 256 bytes announced, 1 sent
        other.sendall(sa.message(sa.SSH_AGENTC_REQUEST_IDENTITIES))
        assert read_answer(other)[0] == sa.SSH_AGENT_IDENTITIES_ANSWER
        assert slow.recv(10) == b""  # closed by the agent after 10 s (a hang would time out this recv)


NOBODY = 65534


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to act as another uid (CI runs as root)")
def test_another_uid_is_refused_before_a_byte_is_read(tmp_path: Path) -> None:
    import json
    import tempfile

    sock_dir = Path(tempfile.mkdtemp(prefix="ta-ssh-"))
    agent = start(faces_home(tmp_path, CONFIG), sock_dir / "agent.sock")
    try:
        unlock(agent)
        path = Path(f"{agent.socket}.ssh")
        os.chmod(sock_dir, 0o777)
        os.chmod(path, 0o777)  # as a bad umask or a careless chmod would leave it
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the stranger: 100 tries to list the keys
            counts = {"answered": 0, "refused": 0}
            try:
                os.setgroups([])
                os.setgid(NOBODY)
                os.setuid(NOBODY)
                for _ in range(100):
                    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                        s.settimeout(5)
                        try:
                            s.connect(str(path))
                            s.sendall(sa.message(sa.SSH_AGENTC_REQUEST_IDENTITIES))
                            counts["answered" if s.recv(4096) else "refused"] += 1
                        except (ConnectionResetError, BrokenPipeError):
                            counts["refused"] += 1
                os.write(w, json.dumps(counts).encode())
            finally:
                os._exit(0)
        os.close(w)
        with os.fdopen(r) as out:
            counts = json.loads(out.read())
        os.waitpid(pid, 0)
        assert counts == {"answered": 0, "refused": 100}
        with connect(agent) as s:
            served = 0
            for _ in range(100):
                s.sendall(sa.message(sa.SSH_AGENTC_REQUEST_IDENTITIES))
                served += read_answer(s)[0] == sa.SSH_AGENT_IDENTITIES_ANSWER
        assert served == 100
        print(f"\nssh socket 0777: other uid refused {counts['refused']}/100, same uid served {served}/100")
    finally:
        agent.stop()
        for leftover in sock_dir.iterdir():
            leftover.unlink()
        os.rmdir(sock_dir)
