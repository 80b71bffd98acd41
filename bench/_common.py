"""Shared parts of the benchmarks: a private agent with unlocked vaults, a raw framed client, a
private pcscd with a virtual token, stats."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TOKENAGENT = str(Path(sys.executable).parent / "tokenagent")


class Agent:
    """``tokenagent agent`` in a temporary TOKENAGENT_HOME with ``vaults`` vaults, ``v0`` unlocked
    (unless ``unlocked`` is false)."""

    def __init__(self, vaults: int = 1, config: str | None = None, unlocked: bool = True,
                 exe: str = TOKENAGENT) -> None:
        self.tmp = tempfile.TemporaryDirectory(prefix="tokenagent-bench-")
        self.home = Path(self.tmp.name) / "home"
        self.home.mkdir(mode=0o700)
        if config is not None:  # config.toml, read by the agent at start
            (self.home / "config").mkdir(mode=0o700)
            (self.home / "config" / "config.toml").write_text(config)
        self.socket = self.home / "run" / "agent.sock"
        self.env = {**os.environ, "TOKENAGENT_HOME": str(self.home), "TOKENAGENT_SOCKET": str(self.socket),
                    "TOKENAGENT_TEST_KDF": "1"}
        os.environ.update(TOKENAGENT_HOME=str(self.home), TOKENAGENT_SOCKET=str(self.socket), TOKENAGENT_TEST_KDF="1")
        from tokenagent.factors.base import FactorContext, Interaction, SecretRequest
        from tokenagent.factors.password import PasswordFactor
        from tokenagent.vault import VaultStore, new_vault

        class UI(Interaction):
            def ask_secret(self, request: SecretRequest) -> bytearray:
                return bytearray(b"bench")

            def notify(self, event: str, message: str) -> None:
                pass

        store = VaultStore()
        factor = PasswordFactor.enroll(FactorContext(ui=UI(), test_costs=True), {})
        self.secret = os.urandom(32)
        for i in range(vaults):
            vault, _ = new_vault(f"v{i}", [factor], secret=self.secret)
            store.create(vault)
        self.proc = subprocess.Popen([exe, "agent"], env=self.env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        for _ in range(400):
            try:
                with socket.socket(socket.AF_UNIX) as s:
                    s.connect(str(self.socket))
                break
            except OSError:
                time.sleep(0.05)
        if not unlocked:
            return
        with FramedClient(self.socket) as c:
            c.call(frame_json({"op": "unlock", "vault": "v0", "key": base64.b64encode(self.secret).decode(),
                               "idle_ttl": 0, "max_ttl": 0}))

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait()
        self.tmp.cleanup()


def frame_json(obj: object) -> bytes:
    body = json.dumps(obj, separators=(",", ":")).encode()
    return struct.pack(">I", len(body)) + body


class FramedClient:
    """A blocking client for length-prefixed protocols (tokenagent's and ssh-agent's share the framing)."""

    def __init__(self, path: Path | str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(str(path))

    def __enter__(self) -> FramedClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def call(self, request: bytes) -> bytes:
        self.sock.sendall(request)
        header = self._exactly(4)
        return self._exactly(struct.unpack(">I", header)[0])

    def _exactly(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("closed")
            data += chunk
        return data


class SshAgent:
    """A private ssh-agent holding one ed25519 key."""

    def __init__(self) -> None:
        self.tmp = tempfile.TemporaryDirectory(prefix="tokenagent-bench-ssh-")
        self.socket = Path(self.tmp.name) / "ssh.sock"
        self.proc = subprocess.Popen(["ssh-agent", "-D", "-a", str(self.socket)], stdout=subprocess.DEVNULL)
        for _ in range(200):
            if self.socket.exists():
                break
            time.sleep(0.02)
        key = Path(self.tmp.name) / "id"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        self.env = {**os.environ, "SSH_AUTH_SOCK": str(self.socket)}
        subprocess.run(["ssh-add", "-q", str(key)], env=self.env, check=True, capture_output=True)

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait()
        self.tmp.cleanup()


SSH_REQUEST_IDENTITIES = struct.pack(">IB", 1, 11)  # SSH_AGENTC_REQUEST_IDENTITIES


@contextlib.contextmanager
def pcscd_with_token(bench: str, serial: int, **token_options: Any) -> Iterator[tuple[Path, Any, Any]]:
    """A private pcscd (tests/pcscd.py: root, pcscd, vsmartcard-vpcd) with one virtual token plugged
    in, in a temporary directory: (the directory, the PrivatePcscd, the TokenProcess); both stopped
    after. Without those parts the bench ends with the reason."""
    if str(ROOT / "tests") not in sys.path:
        sys.path.insert(0, str(ROOT / "tests"))
    from pcscd import PrivatePcscd, TokenProcess, missing

    reason = missing()
    if reason:
        sys.exit(f"{bench}: {reason}")
    with tempfile.TemporaryDirectory(prefix="tokenagent-bench-") as tmp_name:
        tmp = Path(tmp_name)
        pcscd = PrivatePcscd(tmp / "pcscd")
        token = None
        try:
            token = TokenProcess(pcscd, tmp / "token.json", serial, **token_options)
            yield tmp, pcscd, token
        finally:
            if token is not None:
                token.stop()
            pcscd.stop()


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def machine() -> str:
    return f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}, {os.uname().release}"
