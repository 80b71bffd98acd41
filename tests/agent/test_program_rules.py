"""Program-aware client rules (docs/agent.md, "What a client may get"), with the real restic.

``allow_exe`` names the program that asks: for ``tokenagent get`` that is the program that ran
it (restic's RESTIC_PASSWORD_COMMAND), the parent the audit line records. The program is read
again at each request (a process that connects and then becomes another is refused), and a
program with preloaded code is refused (``refuse_preload``, on by default with ``allow_exe``):
LD_PRELOAD in its environment, or a mapped library that is not root's alone.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from agentkit import AgentProcess, password_file, start_agent

BIN = str(Path(sys.executable).parent)
NOBODY = 65534
PYTHON = os.path.realpath(sys.executable)
SCRUB = r"""
#include <string.h>
extern char **environ;
/* Hide from /proc/PID/environ that this library was preloaded: blank the variable's name in place. */
__attribute__((constructor)) static void scrub(void) {
    for (char **e = environ; *e; e++)
        if (strncmp(*e, "LD_PRELOAD=", 11) == 0)
            memset(*e, 'X', 10);
}
"""


def _restic() -> str:
    path = shutil.which("restic")
    if path is None:
        pytest.skip("restic is not installed (.ci/apt-packages.txt lists its Debian package)")
    return os.path.realpath(path)


def _ruled(home: Path, *programs: str) -> Iterator[AgentProcess]:
    """An agent whose vault v1 is for these programs only; v1 unlocked."""
    (home / "config").mkdir(mode=0o700, exist_ok=True)
    allowed = ", ".join(f'"{p}"' for p in programs)
    (home / "config" / "config.toml").write_text(f'[vaults.v1]\nallow_exe = [{allowed}]\n')
    agent = start_agent(home)
    try:
        done = agent.cli("unlock", "v1", "--password-file", password_file(agent.home))
        assert done.returncode == 0, done.stderr
        yield agent
    finally:
        agent.stop()


@pytest.fixture
def ruled(agent_home: Path) -> Iterator[AgentProcess]:
    yield from _ruled(agent_home, _restic())


@pytest.fixture
def python_ruled(agent_home: Path) -> Iterator[AgentProcess]:
    yield from _ruled(agent_home, PYTHON)


def _env(agent: AgentProcess, repo: Path, command: str = "tokenagent get v1 --context restic:/repo") -> dict[str, str]:
    return {**os.environ, **agent.env(), "TOKENAGENT_HOME": str(agent.home), "PATH": f"{BIN}:{os.environ['PATH']}",
            "RESTIC_REPOSITORY": str(repo), "RESTIC_PASSWORD_COMMAND": command, "RESTIC_CACHE_DIR": str(repo) + ".cache"}


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)


def _libc() -> str:
    with open("/proc/self/maps") as maps:
        return next(line.split()[-1] for line in maps if "/libc.so" in line or "/libc-" in line)


def test_allow_exe_lets_restic_through_its_password_command(ruled: AgentProcess, tmp_path: Path) -> None:
    restic = _restic()
    repo = tmp_path / "repo"
    env = _env(ruled, repo)
    init = _run([restic, "init"], env)
    assert init.returncode == 0, init.stderr
    data = tmp_path / "data"
    data.mkdir()
    (data / "f.txt").write_text("kept\n")
    backup = _run([restic, "backup", str(data)], env)
    assert backup.returncode == 0, backup.stderr
    # The same command run by a shell is not restic asking: refused.
    shell = _run(["bash", "-c", "tokenagent get v1 --context restic:/repo; exit $?"], env)  # bash stays its parent
    assert shell.returncode == 8 and "bash may not get keys of vault 'v1'" in shell.stderr, shell.stderr
    # restic with a preloaded library (root's own libc: harmless, but code put in from outside): refused.
    preloaded = _run([restic, "snapshots"], {**env, "LD_PRELOAD": _libc()})
    assert preloaded.returncode != 0 and "LD_PRELOAD is set" in preloaded.stderr, preloaded.stderr
    lines = [json.loads(line) for line in (ruled.home / "data" / "audit.log").read_text().splitlines()]
    released = [line for line in lines if line["ok"]]
    assert released and {line["parent_exe"] for line in released} == {restic}
    assert any(not line["ok"] and line["error"] == "access-denied" for line in lines)
    print(f"\nallow_exe = [{restic}]: restic init and backup served through 'tokenagent get';"
          " the same command from bash refused (exit 8); restic with LD_PRELOAD refused")


def test_a_preload_hidden_from_the_environment_shows_in_the_maps(ruled: AgentProcess, tmp_path: Path) -> None:
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed (.ci/apt-packages.txt lists it)")
    if os.getuid() != 0:
        pytest.skip("needs root to give the library another owner (CI runs as root)")
    lib = tmp_path / "scrub.so"
    source = tmp_path / "scrub.c"
    source.write_text(SCRUB)
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(lib), str(source)], check=True)
    os.chown(lib, NOBODY, NOBODY)  # a library someone other than root could have written
    restic = _restic()
    repo = tmp_path / "repo"
    assert _run([restic, "init"], _env(ruled, repo)).returncode == 0
    sneaky = _env(ruled, repo, f"env LD_PRELOAD={lib} tokenagent get v1 --context restic:/repo")
    done = _run([restic, "snapshots"], sneaky)
    assert done.returncode != 0 and "which is not root's alone" in done.stderr, done.stderr
    print("\na library preloaded into 'tokenagent get' that blanked LD_PRELOAD from its environment: refused (maps)")


def test_a_process_that_becomes_another_after_connecting_is_refused(python_ruled: AgentProcess,
                                                                   tmp_path: Path) -> None:
    """Python (allowed) connects; the connecting process then execs sleep, a child keeps the socket and asks."""
    script = tmp_path / "swap.py"
    script.write_text(textwrap.dedent(f"""
        import json, os, socket, struct, sys, time
        def frame(obj):
            body = json.dumps(obj).encode()
            return struct.pack(">I", len(body)) + body
        def answer(s):
            size = struct.unpack(">I", s.recv(4, socket.MSG_WAITALL))[0]
            return json.loads(s.recv(size, socket.MSG_WAITALL))
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect({str(python_ruled.socket)!r})
        s.sendall(frame({{"op": "hello", "id": 1, "versions": [1]}}))
        assert answer(s)["ok"]  # accepted: the agent has read who connected (python)
        s.set_inheritable(True)
        if os.fork() == 0:
            time.sleep(1.0)  # the connecting process is sleep by now
            s.sendall(frame({{"op": "get", "id": 2, "vault": "v1", "context": "x"}}))
            print(json.dumps(answer(s)), flush=True)
            os._exit(0)
        os.execv("/bin/sleep", ["sleep", "3"])
    """))
    done = subprocess.run([PYTHON, str(script)], capture_output=True, text=True, timeout=60)
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert answer["ok"] is False and answer["error"] == "access-denied", answer
    assert "no longer" in answer["message"]
    print(f"\nconnect as python, then exec sleep: {answer['message']}")
