"""The desk tier (marker ``desk``): a real kernel, udev and HID devices between the virtual token and tokenagent.

On the host every desk test is a proxy: the first one boots one guest for all of them
(``guest.py``), and each reports the outcome its real run had in the guest. In the guest
(TOKENAGENT_DESK_GUEST=1) the tests run for real, against ``tokenagent virtual-token run
--uhid`` seen through /dev/hidraw and udev. Without QEMU, a kernel or virtme-ng the tests skip
with the reason; TOKENAGENT_STRICT_SKIPS=1 (CI) makes that a failure, as for pcscd.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

IN_GUEST = os.environ.get("TOKENAGENT_DESK_GUEST") == "1"
STRICT = os.environ.get("TOKENAGENT_STRICT_SKIPS") == "1"
SERIAL = 12345678
SETTLE = 120.0  # seconds: everything in the guest runs under TCG, on a shared machine


# --- host: one guest boot, every test reports its guest outcome ----------------------------------

_GUEST: dict[str, Any] = {}


def _desk_items(session: pytest.Session) -> list[pytest.Item]:
    return [item for item in session.items if item.get_closest_marker("desk") is not None]


def _boot(session: pytest.Session) -> dict[str, Any]:
    if "results" in _GUEST:
        return _GUEST
    from guest import guest_log, missing, run_guest

    why = missing()
    if why is not None:
        _GUEST.update(results={}, skip=why, log="")
        return _GUEST
    out = Path(tempfile.mkdtemp(prefix="tokenagent-desk-"))
    work = Path(tempfile.mkdtemp(prefix="tokenagent-desk-work-"))
    ids = [item.nodeid for item in _desk_items(session)]
    started = time.monotonic()
    results = run_guest(ids, out, work)
    _GUEST.update(results=results, skip=None, log=guest_log(out), out=out,
                  seconds=time.monotonic() - started)
    sys.stderr.write(f"\ndesk: one guest boot ran {len(results)} tests in {_GUEST['seconds']:.0f} s"
                     f" (results and logs in {out})\n")
    return _GUEST


def _report(item: pytest.Item, outcome: str, longrepr: Any, duration: float, sections: list[Any]) -> None:
    from _pytest.reports import TestReport

    ihook = item.ihook
    for when in ("setup", "call", "teardown"):
        this = outcome if when == "call" or outcome == "skipped" and when == "setup" else "passed"
        if outcome == "skipped" and when == "call":
            continue
        report = TestReport(item.nodeid, item.location, {item.name: 1}, this,
                            longrepr if this != "passed" else None, when, sections if when == "call" else [],
                            duration if when == "call" else 0.0)
        ihook.pytest_runtest_logreport(report=report)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> bool | None:
    if IN_GUEST or item.get_closest_marker("desk") is None:
        return None
    item.ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
    guest = _boot(item.session)
    result = guest["results"].get(item.nodeid)
    if guest["skip"] is not None:
        reason = f"desk tier: {guest['skip']}"
        if STRICT:
            _report(item, "failed", f"skipped under TOKENAGENT_STRICT_SKIPS=1 (CI must run this test): {reason}",
                    0.0, [])
        else:
            _report(item, "skipped", (str(item.path), item.location[1] or 0, f"Skipped: {reason}"), 0.0, [])
    elif result is None:
        _report(item, "failed", "the guest reported no result for this test (it did not boot, crashed or ran"
                " out of time):\n" + guest["log"], 0.0, [])
    else:
        sections = [("guest output", str(result.get("output", "")))] if result.get("output") else []
        outcome = str(result["outcome"])
        longrepr: Any = result.get("longrepr")
        if outcome == "skipped":
            longrepr = (str(item.path), item.location[1] or 0, str(longrepr))
        _report(item, outcome, longrepr, float(result.get("duration", 0.0)), sections)  # type: ignore[arg-type]
    item.ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
    return True


# --- guest: results for the host ------------------------------------------------------------------

_RESULTS: dict[str, dict[str, Any]] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    path = os.environ.get("DESK_RESULTS")
    if not IN_GUEST or not path:
        return
    entry = _RESULTS.setdefault(report.nodeid, {"outcome": "passed", "duration": 0.0, "output": ""})
    if report.when == "call":
        entry["duration"] = report.duration
    if report.failed or report.skipped:
        if entry["outcome"] == "passed":
            entry["outcome"] = "failed" if report.failed else "skipped"
            if report.skipped and isinstance(report.longrepr, tuple):
                entry["longrepr"] = str(report.longrepr[-1])
            else:
                entry["longrepr"] = str(report.longrepr)
    for name, text in report.sections if report.when == "call" else []:
        if "stdout" in name or "stderr" in name:
            entry["output"] += f"[{report.when} {name}]\n{text}"
    Path(path).write_text(json.dumps(_RESULTS, indent=1))


# --- guest fixtures -------------------------------------------------------------------------------

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
        import socket

        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(60)
            s.connect(str(self.ctl))
            s.sendall(command.encode() + b"\n")
            data = b""
            while chunk := s.recv(4096):
                data += chunk
        answer: dict[str, Any] = json.loads(data)
        assert answer.get("ok"), answer
        return answer

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


@pytest.fixture(scope="session")
def uhid_token(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UhidToken]:
    if not IN_GUEST:
        pytest.skip("desk tests run in the desk guest (tests/desk/guest.py)")
    token = UhidToken(tmp_path_factory.mktemp("token") / "token.json")
    try:
        yield token
    finally:
        token.stop()


@pytest.fixture
def home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    return home
