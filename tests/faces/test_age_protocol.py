"""age-plugin-tokenagent's side of the plugin protocol (C2SP age-plugin), Bech32, and the age-unwrap op.

The plugin runs in process on byte streams; its agent is the real dispatcher (``AgentState``)
without the socket, so every answer is what the agent would send.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import pytest
from agentkit import password_vaults
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tokenagent import agekeys
from tokenagent.ageplugin import Plugin
from tokenagent.daemon.ageunwrap import X25519_INFO
from tokenagent.daemon.config import AgentConfig
from tokenagent.daemon.state import AgentState, Peer
from tokenagent.errors import error_for_code
from tokenagent.protocol import Request
from tokenagent.vault.crypto import hkdf
from tokenagent.vault.identities import age_public

SECRET = b"s" * 32
PEER = Peer(7, os.getuid(), os.getgid(), "/usr/bin/python3", "/usr/bin/age")


class InProcessAgent:
    """AgentClient's ``request`` against the agent's dispatcher."""

    def __init__(self, state: AgentState) -> None:
        self.state = state
        self.requests: list[dict[str, Any]] = []

    def request(self, op: str, timeout: float | None = None, **args: Any) -> dict[str, Any]:
        self.requests.append({"op": op, **args})
        answer = self.state.dispatch(Request(op, 1, args), PEER)
        if not answer.ok:
            raise error_for_code(answer.error or "error")(answer.message)
        return answer.data


@pytest.fixture
def state(tmp_path: Path) -> AgentState:
    state = AgentState(password_vaults(tmp_path / "vaults", ["v1"], SECRET), AgentConfig(audit=False))
    state.add_session("v1", bytearray(SECRET), "1", "client")
    return state


def wrap(file_key: bytes, public: bytes) -> tuple[str, bytes]:
    """An X25519 stanza as age writes it (age-encryption.org/v1)."""
    ephemeral = X25519PrivateKey.generate()
    share = ephemeral.public_key().public_bytes_raw()
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

    shared = ephemeral.exchange(X25519PublicKey.from_public_bytes(public))
    key = hkdf(shared, share + public, X25519_INFO, 32)
    return agekeys.b64(share), ChaCha20Poly1305(bytes(key)).encrypt(bytes(12), file_key, None)


def phase1(*stanzas: bytes) -> io.BytesIO:
    return io.BytesIO(b"".join(stanzas) + agekeys.write_stanza("done"))


def answers(count: int) -> bytes:
    return agekeys.write_stanza("ok") * count


def run_plugin(state: AgentState, inp: bytes, replies: bytes = b"") -> tuple[list[tuple[str, list[str], bytes]],
                                                                               InProcessAgent]:
    out = io.BytesIO()
    agent = InProcessAgent(state)
    Plugin(io.BytesIO(inp + replies), out, wait=0, client=agent).run()  # type: ignore[arg-type]
    out.seek(0)
    reader = agekeys.StanzaReader(out)
    sent = []
    while True:
        stanza = reader.read()
        sent.append(stanza)
        if stanza[0] == "done":
            return sent, agent


def test_plugin_sends_the_file_key_and_ignores_unknown_stanzas(state: AgentState) -> None:
    file_key = os.urandom(16)
    share, body = wrap(file_key, age_public(SECRET, "backup"))
    other_share, other_body = wrap(os.urandom(16), X25519PrivateKey.generate().public_key().public_bytes_raw())
    inp = phase1(
        agekeys.write_stanza("grease-^*", ("x", "y"), os.urandom(70)),        # grease from age: ignored
        agekeys.write_stanza("add-identity", (agekeys.identity("v1", "backup"),)),
        agekeys.write_stanza("recipient-stanza", ("0", "scrypt", "c2FsdA", "18"), os.urandom(32)),
        agekeys.write_stanza("recipient-stanza", ("0", "X25519", other_share), other_body),
        agekeys.write_stanza("recipient-stanza", ("0", "X25519", share), body),
        agekeys.write_stanza("recipient-stanza", ("0", "X25519", "AAAA"), body),  # malformed: not ours
        agekeys.write_stanza("some-future-command", (), b"\x00" * 10),
    ).getvalue()
    sent, agent = run_plugin(state, inp, answers(1))
    assert sent == [("file-key", ["0"], file_key), ("done", [], b"")]
    (asked,) = agent.requests
    assert asked["op"] == "age-unwrap" and len(asked["stanzas"]) == 2  # only the well-formed X25519 stanzas


def test_not_mine_sends_nothing_so_age_tries_the_next_identity(state: AgentState) -> None:
    share, body = wrap(os.urandom(16), X25519PrivateKey.generate().public_key().public_bytes_raw())
    inp = phase1(agekeys.write_stanza("add-identity", (agekeys.identity("v1", "backup"),)),
                 agekeys.write_stanza("add-identity", (agekeys.identity("elsewhere", "backup"),)),
                 agekeys.write_stanza("recipient-stanza", ("0", "X25519", share), body)).getvalue()
    sent, agent = run_plugin(state, inp)
    assert sent == [("done", [], b"")] and len(agent.requests) == 2


def test_a_file_with_many_recipients_is_asked_in_parts(state: AgentState) -> None:
    file_key = os.urandom(16)
    others = [wrap(file_key, X25519PrivateKey.generate().public_key().public_bytes_raw()) for _ in range(99)]
    ours = wrap(file_key, age_public(SECRET, "backup"))
    inp = phase1(agekeys.write_stanza("add-identity", (agekeys.identity("v1", "backup"),)),
                 *(agekeys.write_stanza("recipient-stanza", ("0", "X25519", s), b) for s, b in [*others, ours]))
    sent, agent = run_plugin(state, inp.getvalue(), answers(1))
    assert sent == [("file-key", ["0"], file_key), ("done", [], b"")]
    assert [len(r["stanzas"]) for r in agent.requests] == [64, 36]


def test_a_file_without_x25519_stanzas_asks_nothing(state: AgentState) -> None:
    inp = phase1(agekeys.write_stanza("add-identity", (agekeys.identity("v1", "backup"),)),
                 agekeys.write_stanza("recipient-stanza", ("0", "piv-p256", "abc", "def"), os.urandom(32))).getvalue()
    sent, agent = run_plugin(state, inp)
    assert sent == [("done", [], b"")] and agent.requests == []


def test_second_file_and_second_identity(state: AgentState) -> None:
    keys = [os.urandom(16), os.urandom(16)]
    s0, b0 = wrap(keys[0], age_public(SECRET, "a"))
    s1, b1 = wrap(keys[1], age_public(SECRET, "b"))
    inp = phase1(agekeys.write_stanza("add-identity", (agekeys.identity("v1", "a"),)),
                 agekeys.write_stanza("add-identity", (agekeys.identity("v1", "b"),)),
                 agekeys.write_stanza("recipient-stanza", ("0", "X25519", s0), b0),
                 agekeys.write_stanza("recipient-stanza", ("1", "X25519", s1), b1)).getvalue()
    sent, _ = run_plugin(state, inp, answers(2))
    assert sent == [("file-key", ["0"], keys[0]), ("file-key", ["1"], keys[1]), ("done", [], b"")]


def test_locked_vault_is_an_identity_error(state: AgentState) -> None:
    share, body = wrap(os.urandom(16), age_public(SECRET, "backup"))
    state.lock("v1", "request")
    inp = phase1(agekeys.write_stanza("add-identity", (agekeys.identity("v1", "backup"),)),
                 agekeys.write_stanza("recipient-stanza", ("0", "X25519", share), body)).getvalue()
    sent, _ = run_plugin(state, inp, answers(1))
    assert sent[0][:2] == ("error", ["identity", "0"]) and b"is locked" in sent[0][2]
    assert sent[-1][0] == "done"


def test_an_unreadable_identity_is_an_identity_error(state: AgentState) -> None:
    bad = agekeys.bech32_encode(agekeys.IDENTITY_HRP, b"\x09garbage").upper()  # a version we do not know
    inp = phase1(agekeys.write_stanza("add-identity", (agekeys.identity("v1", "x"),)),
                 agekeys.write_stanza("add-identity", (bad,))).getvalue()
    sent, _ = run_plugin(state, inp, answers(1))
    assert sent[0][:2] == ("error", ["identity", "1"]) and sent[-1][0] == "done"


def test_the_agent_refuses_bad_stanzas_and_rules(state: AgentState) -> None:
    def ask(**args: Any) -> Any:
        return state.dispatch(Request("age-unwrap", 1, {"vault": "v1", "label": "x", **args}), PEER)

    assert ask(stanzas=[["AAAA", "AAAA"]]).error == "usage"
    assert ask(stanzas="no").error == "usage"
    assert ask(stanzas=[["A" * 43, "A" * 43]] * 65).error == "usage"
    assert ask(stanzas=[], label="").error == "usage"
    assert ask(stanzas=[]).data == {"vault": "v1", "index": None, "file_key": None}
    low_order = agekeys.b64(bytes(32))  # the all-zero share gives the all-zero secret: skipped, not an error
    assert ask(stanzas=[[low_order, "A" * 43]]).data["file_key"] is None
    assert state.dispatch(Request("age-unwrap", 1, {"vault": "nosuch", "label": "x", "stanzas": []}),
                          PEER).error == "vault-not-found"
    ruled = AgentState(state.store, AgentConfig(audit=False, vaults={"v1": {"allow_exe": ["/usr/bin/restic"]}}))
    ruled.add_session("v1", bytearray(SECRET), "1", "client")
    answer = ruled.dispatch(Request("age-unwrap", 1, {"vault": "v1", "label": "x", "stanzas": []}), PEER)
    assert answer.error == "access-denied"


@pytest.mark.parametrize("size", [0, 1, 47, 48, 49, 96, 1000])
def test_stanza_bodies_round_trip(size: int) -> None:
    body = os.urandom(size)
    encoded = agekeys.write_stanza("t", ("a", "b"), body)
    assert encoded.splitlines()[-1].__len__() < 64
    assert agekeys.StanzaReader(io.BytesIO(encoded)).read() == ("t", ["a", "b"], body)


@pytest.mark.parametrize("data", [b"-> t\nAAA=\n", b"-> t\n" + b"A" * 65 + b"\n", b"t\n\n", b"-> t  x\n\n",
                                  b"-> t\nAB\n", b"-> t\n\xff\n", b"-> t\n"])
def test_bad_stanzas_are_refused(data: bytes) -> None:
    with pytest.raises((agekeys.EncodingError, EOFError)):
        agekeys.StanzaReader(io.BytesIO(data)).read()


def test_bech32() -> None:
    ident = agekeys.identity("v1", "backup")
    assert ident.startswith("AGE-PLUGIN-TOKENAGENT-1") and agekeys.parse_identity(ident) == ("v1", "backup")
    assert agekeys.parse_identity(ident.lower()) == ("v1", "backup")
    for bad in (ident[:-1] + ("Q" if ident[-1] != "Q" else "P"), ident[:30] + ident[30:].lower(),
                "AGE-PLUGIN-OTHER-1" + ident[23:], agekeys.recipient(bytes(32)), "", "AGE1"):
        with pytest.raises(agekeys.EncodingError):
            agekeys.parse_identity(bad)
    # BIP 173's own valid test strings
    for valid in ("A12UEL5L", "abcdef1qpzry9x8gf2tvdw0s3jn54khce6mua7lmqqqxw"):
        agekeys.bech32_decode(valid)


_TYPES = ["add-identity", "recipient-stanza", "done", "grease-x", "X25519", "msg", ""]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(stanzas=st.lists(st.tuples(st.sampled_from(_TYPES) | st.text("abcXYZ-_0123456789", max_size=12),
                                  st.lists(st.sampled_from(["0", "1", "X25519", agekeys.identity("v1", "k"), "AAAA",
                                                            "A" * 43, "-1", "99999999999"])
                                           | st.text("abc019+/", min_size=1, max_size=50), max_size=4),
                                  st.binary(max_size=100)), max_size=8),
       tail=st.binary(max_size=40))
def test_fuzz_the_plugin_with_arbitrary_phase_one_input(state: AgentState, stanzas: list[Any], tail: bytes) -> None:
    """Whatever age (or anyone) sends, the plugin ends with a protocol error it reports, or answers
    with well-formed stanzas ending in done; it never raises anything else."""
    data = b"".join(agekeys.write_stanza(k, a, b) for k, a, b in stanzas if k) + tail
    out = io.BytesIO()
    try:
        Plugin(io.BytesIO(data + answers(4)), out, wait=0, client=InProcessAgent(state)).run()  # type: ignore[arg-type]
    except (agekeys.EncodingError, EOFError):
        return
    out.seek(0)
    reader = agekeys.StanzaReader(out)
    while reader.read()[0] != "done":
        pass
