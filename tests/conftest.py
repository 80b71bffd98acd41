"""Shared test configuration.

Tests that need system parts (a private pcscd with vpcd, SoftHSM2, restic...) skip with
a clear reason on a machine without them. Under CI, ``.ci/run`` sets
TOKENAGENT_STRICT_SKIPS=1 and every skip becomes a failure, so a missing install step
cannot hide behind a green run. A test that may legitimately skip everywhere says so
with a reason starting with "optional:".
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from agentkit import STARTED, AgentProcess, make_vault, start_agent
from pcscd import PrivatePcscd, TokenProcess, missing

STRICT_SKIPS = os.environ.get("TOKENAGENT_STRICT_SKIPS") == "1"
# Tests use the minimum KDF costs (docs/spec/vault.md, "Test costs"); tests of the floor unset it.
os.environ["TOKENAGENT_TEST_KDF"] = "1"


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):  # type: ignore[no-untyped-def]
    STARTED.clear()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):  # type: ignore[no-untyped-def]
    outcome = yield
    report = outcome.get_result()
    if report.failed and call.when == "call":
        for agent in STARTED:  # what each agent of the test logged: the first thing to read in a CI failure
            report.sections.append((f"agent log {agent.log.name}", agent.log_text()[-20000:]))
    if STRICT_SKIPS and report.skipped and not hasattr(report, "wasxfail"):
        reason = str(report.longrepr[-1]) if isinstance(report.longrepr, tuple) else str(report.longrepr)
        if "optional:" not in reason:
            report.outcome = "failed"
            report.longrepr = f"skipped under TOKENAGENT_STRICT_SKIPS=1 (CI must run this test): {reason}"


@pytest.fixture
def tokenagent_home(tmp_path, monkeypatch):  # type: ignore[no-untyped-def]
    """A private TOKENAGENT_HOME for one test."""
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    monkeypatch.setenv("TOKENAGENT_HOME", str(home))
    return home


# --- a real agent (helpers in agentkit.py) ------------------------------------------------------
# ``agent_home``: a private home with one vault "v1" (password factor at test KDF costs, an
# imported canary secret so tests can look for it). ``agent``: ``tokenagent agent`` running
# on it, stopped after the test, which fails if the agent died on its own.

@pytest.fixture
def agent_home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    make_vault(home)
    return home


@pytest.fixture
def agent(agent_home: Path) -> Iterator[AgentProcess]:
    proc = start_agent(agent_home)
    try:
        yield proc
    finally:
        alive = proc.stopped or proc.proc.poll() is None
        proc.stop()
        assert alive, f"the agent died during the test: {proc.log_text()}"


# --- a private pcscd with virtual tokens (helpers in pcscd.py) ---------------------------------

@pytest.fixture
def pcscd(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[PrivatePcscd]:
    """A private pcscd with the vpcd driver; skipped without root/pcscd/vpcd (a failure under CI).
    ``@pytest.mark.reader_name("Yubico Virtual PCD")`` names its readers (ykcs11 wants "Yubico...")."""
    reason = missing()
    if reason:
        pytest.skip(reason)
    marker = request.node.get_closest_marker("reader_name")
    daemon = PrivatePcscd(tmp_path / "pcscd", *(marker.args if marker else ()))
    try:
        yield daemon
    finally:
        daemon.stop()


@pytest.fixture
def tokens(pcscd: PrivatePcscd, tmp_path: Path) -> Iterator[list[TokenProcess]]:
    """Start virtual tokens with ``tokens.append(TokenProcess(pcscd, path, serial))``; all stopped after."""
    started: list[TokenProcess] = []
    try:
        yield started
    finally:
        for token in started:
            token.stop()
