"""Fixtures for agent tests.

``agent_home`` makes a private home with one vault ("v1", password factor, test KDF costs,
an imported canary secret so tests can look for it); ``agent`` starts ``tokenagent agent``
on it and stops it after the test, failing the test if the agent died on its own.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from agentkit import AgentProcess, make_vault, start_agent


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
