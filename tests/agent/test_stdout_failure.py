"""Standard output that fails: a full device (/dev/full) or a reader that closed the pipe early.

``tokenagent get`` writes its key past Python's buffer, and the quick agent verbs skip click, so
each meets the failure itself; before, it reached the boundary as "internal error (OSError)".
Now one line says what failed (exit 1), and a closed pipe ends quietly with 141, as a shell
reports a process that SIGPIPE ended. No traceback, no key on standard error.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from agentkit import CANARY_SECRET, PASSWORD, make_vault, start_agent

VERBS = [("get", "v1", "--context", "restic"), ("get", "v1", "--context", "restic", "--json"),
         ("get", "v1"), ("status",), ("status", "--json"), ("list",), ("list", "--json"),
         ("lock", "v1", "--json")]


def _env(home: Path, agent_socket: Path) -> dict[str, str]:
    return {**os.environ, "TOKENAGENT_HOME": str(home), "TOKENAGENT_TEST_KDF": "1",
            "TOKENAGENT_SOCKET": str(agent_socket)}


@pytest.fixture
def unlocked(tmp_path: Path):  # type: ignore[no-untyped-def]
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    make_vault(home)
    agent = start_agent(home)
    try:
        yield agent
    finally:
        agent.stop()


def _unlock(agent) -> None:  # type: ignore[no-untyped-def]
    done = agent.cli("unlock", "v1", "--password-file", "-", stdin=PASSWORD + "\n")
    assert done.returncode == 0, done.stderr


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full on this system")
@pytest.mark.parametrize("args", VERBS, ids=" ".join)
def test_a_full_device_is_one_clear_line(unlocked, args: tuple[str, ...]) -> None:  # type: ignore[no-untyped-def]
    _unlock(unlocked)
    with open("/dev/full", "wb") as full:
        done = subprocess.run([sys.executable, "-m", "tokenagent._cli.entry", *args], stdout=full,
                              stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, timeout=60,
                              env=_env(unlocked.home, unlocked.socket))
    err = done.stderr.decode()
    assert done.returncode == 1, err
    assert err == ("tokenagent: cannot write to standard output: No space left on device; the command's"
                   " output is lost (check where it goes: a full disk, a device)\n"), err
    assert CANARY_SECRET.decode() not in err


@pytest.mark.parametrize("args", [VERBS[0], VERBS[3]], ids=" ".join)
def test_a_reader_that_closed_the_pipe_ends_it_quietly(unlocked, args: tuple[str, ...]) -> None:  # type: ignore[no-untyped-def]
    _unlock(unlocked)
    r, w = os.pipe()
    os.close(r)  # the reader is gone before anything is written
    try:
        done = subprocess.run([sys.executable, "-m", "tokenagent._cli.entry", *args], stdout=w,
                              stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, timeout=60,
                              env=_env(unlocked.home, unlocked.socket))
    finally:
        os.close(w)
    assert done.returncode == 141, done.stderr
    assert done.stderr == b""
