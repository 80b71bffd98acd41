"""Helpers for agent tests: a real ``tokenagent agent`` process in a private TOKENAGENT_HOME.

Test modules import these as ``agentkit``; conftest.py turns them into fixtures.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

PASSWORD = "agent-test-password"
CANARY_SECRET = b"CANARY-masterkey-5b1e0c77d2a94f6e"  # imported secret, allow_raw


def cli(home: Path, *args: str, stdin: str | None = None, env: dict[str, str] | None = None,
        timeout: float = 60) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "TOKENAGENT_HOME": str(home), "TOKENAGENT_TEST_KDF": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "tokenagent._cli.entry", *args], env=full_env,
                          capture_output=True, text=True, timeout=timeout, input=stdin)


def stop_process(proc: subprocess.Popen[bytes]) -> int:
    """SIGTERM, 10 s to go, then SIGKILL; the exit status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def private_home(tmp_path: Path, config: str | None = None) -> Path:
    """A TOKENAGENT_HOME (0700) with an optional config.toml."""
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    if config is not None:
        write_config(home, config)
    return home


def write_config(home: Path, config: str) -> None:
    """``config`` as the agent's config.toml in ``home``."""
    (home / "config").mkdir(mode=0o700, exist_ok=True)
    (home / "config" / "config.toml").write_text(config)


class AgentProcess:
    def __init__(self, home: Path, socket_path: Path, proc: subprocess.Popen[bytes], log: Path) -> None:
        self.home = home
        self.socket = socket_path
        self.proc = proc
        self.log = log
        self.stopped = False

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def get_socket(self) -> Path:
        """Where the agent serves its get socket (docs/spec/protocol.md), if it does."""
        return Path(str(self.socket) + ".get")

    def env(self) -> dict[str, str]:
        return {"TOKENAGENT_SOCKET": str(self.socket)}

    def cli(self, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        return cli(self.home, *args, env={**self.env(), **kw.pop("env", {})}, **kw)

    def connect(self) -> socket.socket:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(10)
        s.connect(str(self.socket))
        return s

    def stop(self) -> int:
        self.stopped = True
        return stop_process(self.proc)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


STARTED: list[AgentProcess] = []  # agents started by the running test (conftest shows their logs on failure)


def start_agent(home: Path, socket_path: Path | None = None, preexec: Any = None,
                extra_env: dict[str, str] | None = None) -> AgentProcess:
    socket_path = socket_path or home / "run" / "agent.sock"
    log = home.parent / f"agent-{time.monotonic_ns()}.log"
    env = {**os.environ, "TOKENAGENT_HOME": str(home), "TOKENAGENT_TEST_KDF": "1",
           "TOKENAGENT_SOCKET": str(socket_path), **(extra_env or {})}
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "tokenagent._cli.entry", "agent"], env=env,
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                preexec_fn=preexec)
    agent = AgentProcess(home, socket_path, proc, log)
    STARTED.append(agent)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"agent exited with {proc.returncode}: {agent.log_text()}")
        try:
            agent.connect().close()
            return agent
        except OSError:
            time.sleep(0.05)
    agent.stop()
    raise RuntimeError(f"agent did not listen within 20 s: {agent.log_text()}")


def make_vault(home: Path, name: str = "v1", secret: bytes | None = CANARY_SECRET) -> None:
    pw = home.parent / f"pw-{name}"
    pw.write_text(PASSWORD + "\n")
    args = ["init", name, "--password", "--password-file", str(pw)]
    if secret is not None:
        sec = home.parent / f"secret-{name}"
        sec.write_bytes(secret)
        args += ["--import-secret", str(sec)]
    done = cli(home, *args)
    assert done.returncode == 0, done.stderr


def password_file(home: Path) -> str:
    path = home.parent / "pw-unlock"
    path.write_text(PASSWORD + "\n")
    return str(path)


def frame(obj: object) -> bytes:
    """One JSON request framed as the agent protocol frames it."""
    body = json.dumps(obj).encode()
    return struct.pack(">I", len(body)) + body


def read_response(sock: socket.socket) -> dict[str, Any]:
    (length,) = struct.unpack(">I", recv_exactly(sock, 4))
    return json.loads(recv_exactly(sock, length))  # type: ignore[no-any-return]


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError(f"closed after {len(data)} of {n} bytes")
        data += chunk
    return data


# --- the two ways to ask for a key: the JSON agent socket and the get socket ---------------------
ASK = (None, "", "")  # decode_get_answer of the get socket's "ask the agent socket"


def json_get(agent: AgentProcess, vault: str, context: str | None) -> dict[str, Any]:
    """A ``get`` on the agent socket, its response."""
    with agent.connect() as s:
        s.sendall(frame({"op": "get", "id": 1, "vault": vault, **({"context": context} if context else {})}))
        return read_response(s)


def connect_get(agent: AgentProcess) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(str(agent.get_socket))
    return s


def read_get_answer(s: socket.socket) -> tuple[bytearray | None, str, str]:
    from tokenagent.protocol import decode_get_answer

    (length,) = struct.unpack(">I", recv_exactly(s, 4))
    return decode_get_answer(bytearray(recv_exactly(s, length)))


def fast_get(agent: AgentProcess, vault: str, context: str | None) -> tuple[bytearray | None, str, str]:
    """A ``get`` on the get socket: (key, "", "") released, or ``ASK``."""
    from tokenagent.protocol import encode_get

    with connect_get(agent) as s:
        s.sendall(encode_get(vault, context))  # type: ignore[arg-type]
        return read_get_answer(s)


def password_vaults(directory: Path, names: list[str], secret: bytes) -> Any:
    """A VaultStore in ``directory`` with these vaults, each one password slot at test KDF costs,
    made in process (much faster than one CLI run each)."""
    from scripted import context  # type: ignore[import-not-found]

    from tokenagent.factors.password import PasswordFactor
    from tokenagent.vault import VaultStore, new_vault

    for missing in reversed([d for d in (directory, *directory.parents) if not d.exists()]):
        missing.mkdir(mode=0o700)  # private, as the agent requires of its data directory
    store = VaultStore(directory)
    factor = PasswordFactor.enroll(context([b"pw"]), {})
    for name in names:
        store.create(new_vault(name, [factor], secret=secret)[0])
    return store


class Person:
    """Watches the terminal pinentry draws on and types when the prompt shows."""

    def __init__(self) -> None:
        self.master, slave = os.openpty()
        self.tty = os.ttyname(slave)
        self.screen = b""
        self.typed: bytes | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def will_type(self, text: bytes) -> None:
        self.typed = text
        self._thread.start()

    def _watch(self) -> None:
        sent = False
        while not self._stop.is_set():
            ready, _, _ = select.select([self.master], [], [], 0.1)
            if ready:
                self.screen += os.read(self.master, 4096)
            if not sent and b"PIN" in self.screen and self.typed is not None:
                time.sleep(0.2)
                os.write(self.master, self.typed)
                sent = True

    def close(self) -> None:
        self._stop.set()
