"""Helpers of the desk tier's tests, run in the desk guest (conftest.py makes fixtures of them).

Test modules import these as ``deskkit`` (a unique name: the conftest files would shadow each other).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

SERIAL = 12345678
SETTLE = 120.0  # seconds: everything in the guest runs under TCG, on a shared machine



def run(*args: str, timeout: float = 600, env: dict[str, str] | None = None,
        check: bool = True) -> subprocess.CompletedProcess[str]:
    """A command as a user runs it; its output is printed (the report shows it) and kept."""
    done = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})
    print(f"$ {' '.join(args)}\n{done.stdout}{done.stderr}(exit {done.returncode})")
    if check:
        assert done.returncode == 0, f"{args[0]} failed: {done.stdout}{done.stderr}"
    return done


def tokenagent(home: Path, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    env = {"TOKENAGENT_HOME": str(home), "TOKENAGENT_TEST_KDF": "1", **kw.pop("env", {})}
    return run(sys.executable, "-m", "tokenagent._cli.entry", *args, env=env, **kw)


def fido_hidraw() -> list[str]:
    """The hidraw nodes udev marked as FIDO tokens (systemd's 60-fido-id.rules)."""
    out = []
    for node in sorted(Path("/dev").glob("hidraw*")):
        info = subprocess.run(["udevadm", "info", "--query=property", str(node)], capture_output=True, text=True)
        if "ID_FIDO_TOKEN=1" in info.stdout:
            out.append(str(node))
    return out


class UhidToken:
    """``tokenagent virtual-token run --uhid`` as a process: a USB YubiKey as the kernel sees one."""

    def __init__(self, state: Path, serial: int = SERIAL) -> None:
        self.state, self.serial = state, serial
        self.log = state.with_suffix(".log")
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "tokenagent._cli.entry", "virtual-token", "run",
                                          "--state", str(state), "--serial", str(serial), "--uhid"],
                                         stdout=out, stderr=subprocess.STDOUT)
        self.ctl = state.with_name(state.name + ".ctl")
        self._wait(lambda: self.ctl.exists(), "the virtual token did not start")
        self.wait_present(True)

    def _wait(self, condition: Any, what: str) -> None:
        deadline = time.monotonic() + SETTLE
        while not condition():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{what}: {self.log.read_text(errors='replace')}")
            time.sleep(0.2)

    def wait_present(self, present: bool) -> None:
        subprocess.run(["udevadm", "settle", "--timeout=60"], check=False)
        self._wait(lambda: bool(fido_hidraw()) == present, f"the hidraw node did not {'appear' if present else 'go'}")

    def control(self, command: str) -> dict[str, Any]:
        return control(self.ctl, command)

    def plug(self) -> None:
        self.control("plug")
        self.wait_present(True)

    def unplug(self) -> None:
        self.control("unplug")
        self.wait_present(False)

    def stop(self) -> None:
        from agentkit import stop_process

        stop_process(self.proc)


class Agent:
    """``tokenagent agent`` as a process on ``home``, with its event stream collected in ``events``."""

    def __init__(self, home: Path, log: Path, config: str = "[agent]\nremoval_grace = 0.5\n") -> None:
        (home / "config").mkdir(mode=0o700, exist_ok=True)
        (home / "config" / "config.toml").write_text(config)
        self.home, self.log = home, log
        self.events: list[dict[str, Any]] = []
        env = {**os.environ, "TOKENAGENT_HOME": str(home), "TOKENAGENT_TEST_KDF": "1"}
        with open(log, "wb") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "tokenagent._cli.entry", "agent"], env=env,
                                         stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.socket = home / "run" / "agent.sock"
        deadline = time.monotonic() + SETTLE
        while "agent ready" not in log.read_text(errors="replace"):
            assert self.proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        import threading

        self._listener = threading.Thread(target=self._listen, daemon=True)
        self._listener.start()
        self.wait_for(lambda: self._listening, "the event stream did not start")
        time.sleep(3)  # the stream's request reaches the agent; the watchers list what is there at start

    _listening = False

    def _listen(self) -> None:
        from tokenagent.client import AgentClient

        client = AgentClient(self.socket, timeout=None)
        stream = client.events()
        self._listening = True
        for event in stream:
            self.events.append(event)

    def wait_for(self, condition: Any, what: str) -> None:
        deadline = time.monotonic() + SETTLE
        while not condition():
            assert time.monotonic() < deadline, f"{what}: {self.events} {self.log.read_text(errors='replace')}"
            time.sleep(0.2)

    def wait_event(self, name: str, count: int = 1) -> None:
        self.wait_for(lambda: sum(e["event"] == name for e in self.events) >= count, f"no {name} event")

    def stop(self) -> None:
        from agentkit import stop_process

        stop_process(self.proc)


def control(ctl: Path, command: str) -> dict[str, Any]:
    """One command on a virtual token's control socket (plug, unplug, ...); its answer must be ok."""
    import socket

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(60)
        s.connect(str(ctl))
        s.sendall(command.encode() + b"\n")
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    answer: dict[str, Any] = json.loads(data)
    assert answer.get("ok"), answer
    return answer
