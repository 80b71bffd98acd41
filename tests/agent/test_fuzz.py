"""Fuzzing the frame parser and the dispatcher together (DESIGN §6 #6: ≥10⁵ executions, 0 crashes).

Two fuzzers over the same target (bytes → ``Connection("server")`` → ``AgentState.dispatch`` →
encoded answer), in process so that 10⁵ executions take seconds:

* a seeded mutation fuzzer: valid frames of every op are mutated (bit flips, byte
  insertions/deletions, splices, length-field damage, type-swapped arguments) and fed in
  random chunkings; ``TOKENAGENT_FUZZ_EXECS`` sets the count (CI: 100,000);
* Hypothesis, generating arbitrary JSON requests.

A crash is any exception other than ``FrameError`` leaving the parser, any exception at all
leaving ``dispatch`` or ``send``, a fatal frame error that is not an oversize length, a key
released while its vault is locked, or the secret showing up in an error message.
``bench/fuzz_protocol.py`` runs the same target under atheris for long campaigns.
"""

from __future__ import annotations

import base64
import json
import os
import random
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tokenagent.daemon.config import AgentConfig
from tokenagent.daemon.state import AgentState, Peer
from tokenagent.factors.base import FactorContext, Interaction, SecretRequest
from tokenagent.factors.password import PasswordFactor
from tokenagent.protocol import CLOSED, MAX_FRAME, NEED_DATA, OPS, Connection, FrameError, Request, Response
from tokenagent.vault import VaultStore, new_vault

EXECS = int(os.environ.get("TOKENAGENT_FUZZ_EXECS", "100000"))
SECRET = b"FUZZ-canary-secret-0123456789abcdef"
PEER = Peer(pid=4242, uid=os.getuid(), gid=os.getgid(), exe="/usr/bin/restic")


class FixedPassword(Interaction):
    def ask_secret(self, request: SecretRequest) -> bytearray:
        return bytearray(b"pw")

    def notify(self, event: str, message: str) -> None:
        pass


def context() -> FactorContext:
    return FactorContext(ui=FixedPassword(), test_costs=True)


class Target:
    """The agent minus its sockets, with invariants checked after every message."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(mode=0o700)
        store = VaultStore(directory)
        vault, _ = new_vault("v1", [PasswordFactor.enroll(context(), {})], secret=SECRET)
        store.create(vault)
        locked, _ = new_vault("v2", [PasswordFactor.enroll(context(), {})])
        store.create(locked)
        self.state = AgentState(store, AgentConfig())
        self.executions = 0
        self.responses = 0

    def relock(self) -> None:
        if "v1" not in self.state.sessions:
            self.state.add_session("v1", bytearray(SECRET), "1", "client")

    def feed(self, chunks: list[bytes]) -> None:
        self.executions += 1
        conn = Connection("server")
        for chunk in chunks + [b""]:
            conn.receive_data(chunk)
            while True:
                try:
                    message = conn.next_event()
                except FrameError as err:
                    assert err.code in ("protocol", "too-large")
                    assert not err.fatal or err.code == "too-large"
                    if err.fatal:
                        assert conn.next_event() is CLOSED
                        return
                    self.check(conn.send(Response.failure(None, err.code, str(err))))
                    continue
                if message is NEED_DATA or message is CLOSED:
                    break
                assert isinstance(message, Request)
                unlocked_before = set(self.state.sessions)
                response = self.state.dispatch(message, PEER)
                assert isinstance(response, Response) and response.id == message.id
                if response.ok and "key" in response.data:
                    assert message.op == "get" and message.args.get("vault") in unlocked_before
                if not response.ok:
                    assert response.error and response.message
                    assert response.error != "error", response.message  # an internal error is a crash
                    assert SECRET.decode() not in response.message
                self.check(conn.send(response))
                self.relock()

    def check(self, data: bytes) -> None:
        (length,) = struct.unpack(">I", data[:4])
        assert length == len(data) - 4 <= MAX_FRAME
        json.loads(data[4:])
        self.responses += 1


def frame(obj: object) -> bytes:
    body = json.dumps(obj).encode()
    return struct.pack(">I", len(body)) + body


WEIRD_VALUES: list[object] = [None, True, False, 0, -1, 2**64, 1e308, -0.0, "", "v1", "v2", "../v1", "x" * 300,
                              "\u0000", "\ud7ff", [], {}, [1, [2, [3]]], {"vault": "v1"}, "A" * 44,
                              base64.b64encode(SECRET).decode(), base64.b64encode(b"wrong").decode()]


def seeds() -> list[dict[str, object]]:
    out: list[dict[str, object]] = [{"op": op, "id": i} for i, op in enumerate(OPS)]
    out += [
        {"op": "hello", "id": 1, "versions": [1]},
        {"op": "hello", "id": 1, "versions": [99]},
        {"op": "get", "id": 2, "vault": "v1"},
        {"op": "get", "id": 3, "vault": "v1", "context": "restic:/srv/repo"},
        {"op": "get", "id": 4, "vault": "v2", "context": "borg"},
        {"op": "get", "id": 5, "vault": "v1", "wait": 1},
        {"op": "unlock", "id": 6, "vault": "v1", "key": base64.b64encode(SECRET).decode(), "idle_ttl": 5},
        {"op": "unlock", "id": 7, "vault": "v2", "key": base64.b64encode(b"x" * 32).decode()},
        {"op": "lock", "id": 8, "vault": "v1"},
        {"op": "lock-all", "id": 9},
        {"op": "nosuch", "id": 10},
    ]
    return out


def mutate(rng: random.Random, seed: dict[str, object]) -> bytes:
    choice = rng.randrange(8)
    if choice == 0:  # swap an argument's value for a weird one
        obj = dict(seed)
        obj[rng.choice([*obj.keys(), "vault", "context", "key", "versions", "wait", "idle_ttl"])] = \
            rng.choice(WEIRD_VALUES)
        return frame(obj)
    data = bytearray(frame(seed))
    if choice == 1:  # flip bits in the body
        for _ in range(rng.randrange(1, 4)):
            i = rng.randrange(4, len(data))
            data[i] ^= 1 << rng.randrange(8)
    elif choice == 2:  # insert random bytes in the body and fix the length
        i = rng.randrange(4, len(data) + 1)
        data[i:i] = rng.randbytes(rng.randrange(1, 8))
        struct.pack_into(">I", data, 0, len(data) - 4)
    elif choice == 3:  # delete a slice of the body and fix the length
        i = rng.randrange(4, len(data))
        del data[i:i + rng.randrange(1, 6)]
        struct.pack_into(">I", data, 0, len(data) - 4)
    elif choice == 4:  # damage the length field
        struct.pack_into(">I", data, 0, rng.choice([0, 1, len(data), len(data) - 5, MAX_FRAME, MAX_FRAME + 1,
                                                     2**32 - 1, rng.randrange(2**32)]))
    elif choice == 5:  # splice two frames' bytes
        other = frame(rng.choice(seeds()))
        cut = rng.randrange(len(data))
        data = data[:cut] + other[rng.randrange(len(other)):]
    elif choice == 6:  # pure noise
        data = bytearray(rng.randbytes(rng.randrange(0, 40)))
    else:  # several valid frames back to back
        data += frame(rng.choice(seeds())) + frame(rng.choice(seeds()))
    return bytes(data)


def chunked(rng: random.Random, data: bytes) -> list[bytes]:
    if rng.random() < 0.5:
        return [data]
    cuts = sorted(rng.randrange(len(data) + 1) for _ in range(rng.randrange(1, 5)))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True) if b > a]


def test_mutation_fuzz_of_parser_and_dispatcher(tmp_path: Path) -> None:
    target = Target(tmp_path / "vaults")
    target.relock()
    rng = random.Random(20261123)
    pool = seeds()
    for _ in range(EXECS):
        target.feed(chunked(rng, mutate(rng, rng.choice(pool))))
    assert target.executions == EXECS >= 100_000 or "TOKENAGENT_FUZZ_EXECS" in os.environ
    assert target.responses > EXECS // 2  # most inputs reached an answer, not only the parser
    print(f"fuzz: {target.executions} executions, {target.responses} responses, 0 crashes")


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
REQUESTS = st.fixed_dictionaries(
    {"op": st.sampled_from([*OPS, "nosuch"]) | st.text(max_size=70)},
    optional={"id": st.integers(-5, 2**60) | JSON, "vault": st.sampled_from(["v1", "v2", "nosuch", "../x"]) | JSON,
              "context": st.text(max_size=300) | JSON, "key": JSON, "versions": JSON, "wait": JSON,
              "idle_ttl": JSON, "max_ttl": JSON},
)


@pytest.fixture(scope="module")
def hypothesis_target(tmp_path_factory: pytest.TempPathFactory) -> Target:
    target = Target(tmp_path_factory.mktemp("fuzz") / "vaults")
    target.relock()
    return target


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(REQUESTS)
def test_hypothesis_requests_never_crash_the_dispatcher(hypothesis_target: Target, request: dict) -> None:
    hypothesis_target.feed([frame(request)])
