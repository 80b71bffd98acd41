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
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from deskkit import UhidToken

IN_GUEST = os.environ.get("TOKENAGENT_DESK_GUEST") == "1"
STRICT = os.environ.get("TOKENAGENT_STRICT_SKIPS") == "1"


# --- host: one guest boot, every test reports its guest outcome ----------------------------------

_GUESTS: dict[bool, dict[str, Any]] = {}


def _systemd_boot(item: pytest.Item) -> bool:
    """Whether ``item`` runs in the systemd-as-PID-1 boot (marker ``desk_systemd``) or the plain one."""
    return item.get_closest_marker("desk_systemd") is not None


def _desk_items(session: pytest.Session, systemd: bool) -> list[pytest.Item]:
    return [item for item in session.items
            if item.get_closest_marker("desk") is not None and _systemd_boot(item) == systemd]


def _boot(session: pytest.Session, systemd: bool) -> dict[str, Any]:
    guest = _GUESTS.setdefault(systemd, {})
    if "results" in guest:
        return guest
    from guest import guest_log, missing, run_guest

    why = missing()
    if why is not None:
        guest.update(results={}, skip=why, log="")
        return guest
    out = Path(tempfile.mkdtemp(prefix="tokenagent-desk-"))
    work = Path(tempfile.mkdtemp(prefix="tokenagent-desk-work-"))
    ids = [item.nodeid for item in _desk_items(session, systemd)]
    started = time.monotonic()
    results = run_guest(ids, out, work, systemd=systemd)
    guest.update(results=results, skip=None, log=guest_log(out), out=out, seconds=time.monotonic() - started)
    sys.stderr.write(f"\ndesk: one {'systemd ' if systemd else ''}guest boot ran {len(results)} tests in"
                     f" {guest['seconds']:.0f} s (results and logs in {out})\n")
    return guest


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
    guest = _boot(item.session, _systemd_boot(item))
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
