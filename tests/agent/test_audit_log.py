"""The audit log (docs/agent.md, "The audit log"): no key leaves without its whole line, on both
sockets, with the disk full; rotation by size with both writers (the agent socket's and the get
socket's) appending; ``tokenagent audit`` reading it back.

The full disk is a tiny tmpfs under the agent's data directory, which needs root to mount.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from agentkit import (
    CANARY_SECRET,
    AgentProcess,
    cli,
    fast_get,
    json_get,
    make_vault,
    password_file,
    start_agent,
    write_config,
)

from tokenagent.client import AgentClient
from tokenagent.daemon.audit import AuditLog, audit_line, log_files
from tokenagent.errors import AgentError
from tokenagent.vault import derive_subkey

PAGE = 4096


def whole_lines(path: Path) -> list[dict[str, Any]]:
    """Every line of the file, each of which must be a whole JSON object ending in a newline."""
    data = path.read_bytes() if path.exists() else b""
    assert data == b"" or data.endswith(b"\n"), f"torn last line: {data[-120:]!r}"
    lines = [json.loads(line) for line in data.splitlines()]
    assert all(isinstance(line, dict) for line in lines)
    return lines


# --- a full disk ------------------------------------------------------------------------------------

@contextlib.contextmanager
def _tiny_disk(tmp_path: Path, config: str | None = None) -> Iterator[AgentProcess]:
    """An agent whose data directory (vault and audit log) is a 256 KiB tmpfs, "v1" unlocked."""
    if os.getuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root to mount a tmpfs (CI runs as root)")
    home = tmp_path / "home"
    data = home / "data"
    data.mkdir(parents=True)
    os.chmod(home, 0o700)
    if config is not None:
        write_config(home, config)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs", str(data)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    agent = None
    try:
        make_vault(home)
        agent = start_agent(home)
        done = agent.cli("unlock", "v1", "--password-file", password_file(home))
        assert done.returncode == 0, done.stderr
        yield agent
    finally:
        if agent is not None:
            agent.stop()
        if subprocess.run(["umount", str(data)]).returncode != 0:
            subprocess.run(["umount", "-l", str(data)])


@pytest.fixture
def tiny_disk_agent(tmp_path: Path) -> Iterator[AgentProcess]:
    with _tiny_disk(tmp_path) as agent:
        yield agent


def _fill(directory: Path) -> Path:
    """Take every free block of the file system (ENOSPC at the end)."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for chunk in (65536, PAGE, 1):
            while True:
                try:
                    if os.write(fd, b"\0" * chunk) < chunk:
                        break
                except OSError as err:
                    assert err.errno == errno.ENOSPC
                    break
    finally:
        os.close(fd)
    return filler


def _leave_room(log: Path, room: int) -> None:
    """Pad the log with one whole line so that ``room`` bytes are left in its last page."""
    size = log.stat().st_size if log.exists() else 0
    pad = (PAGE - room - size - len(b'{"pad": ""}\n')) % PAGE
    with open(log, "ab") as f:
        f.write(b'{"pad": "' + b"p" * pad + b'"}\n')
    assert (PAGE - log.stat().st_size % PAGE) % PAGE == room


def test_no_key_without_its_whole_audit_line_when_the_disk_is_full(tiny_disk_agent: AgentProcess) -> None:
    """Issue: with the disk full a key was released with its audit line cut short. For each room
    left on the disk (0 bytes up to more than a line), a get on each socket is either released
    with its whole line or refused with no part of a line left; never a torn line."""
    if not tiny_disk_agent.get_socket.exists():
        pytest.skip("the get socket's C extension is not built")
    agent = tiny_disk_agent
    log = agent.home / "data" / "audit.log"
    context = "restic:/srv/repo"
    expected = derive_subkey(CANARY_SECRET, context)
    outcomes = {"json released": 0, "json refused": 0, "get socket released": 0, "get socket asked": 0}
    for room in (0, 1, 20, 100, 150, 180, 200, 230, 260, 1000, 3000):
        _leave_room(log, room)
        filler = _fill(log.parent)
        try:
            before = log.stat().st_size
            answer = json_get(agent, "v1", context)
            lines = whole_lines(log)
            if answer["ok"]:
                outcomes["json released"] += 1
                assert lines[-1]["context"] == context and lines[-1]["ok"] is True
            else:
                outcomes["json refused"] += 1
                assert answer["error"] == "agent" and "No space left on device" in answer["message"], answer
                assert "nothing is released without its audit line" in answer["message"]
                assert log.stat().st_size == before
            before = log.stat().st_size
            key, code, _ = fast_get(agent, "v1", context)
            lines = whole_lines(log)
            if key is not None:
                outcomes["get socket released"] += 1
                assert key == expected and lines[-1]["context"] == context and lines[-1]["ok"] is True
            else:
                outcomes["get socket asked"] += 1
                assert (key, code) == (None, "") and log.stat().st_size == before
                with pytest.raises(AgentError, match="No space left on device"):  # what the client then hears
                    AgentClient(agent.socket).get("v1", context)
                assert log.stat().st_size == before
        finally:
            filler.unlink()
    assert all(outcomes.values()), outcomes
    # The command line says it in one line, and works again once there is room.
    filler = _fill(log.parent)
    try:
        _leave_room(log, 0)
        done = cli(agent.home, "get", "v1", "--context", context, env=agent.env())
        assert done.returncode == 6 and done.stdout == "", (done.returncode, done.stdout)
        assert "cannot write the audit log" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    finally:
        filler.unlink()
    assert fast_get(agent, "v1", context)[0] == expected
    assert json_get(agent, "v1", context)["ok"] is True
    whole_lines(log)
    print(f"\nfull disk, 11 amounts of room left, each socket: {outcomes}; 0 torn lines, 0 keys without a line")


def test_without_the_get_socket_the_python_writer_also_refuses_whole(tmp_path: Path) -> None:
    """The agent socket's own writer (an agent without the get socket) on the same full disk."""
    with _tiny_disk(tmp_path, "[agent]\nget_socket = false\n") as agent:
        assert not agent.get_socket.exists()
        log = agent.home / "data" / "audit.log"
        outcomes = {"released": 0, "refused": 0}
        for room in (0, 1, 50, 150, 230, 3000):
            _leave_room(log, room)
            filler = _fill(log.parent)
            try:
                before = log.stat().st_size
                answer = json_get(agent, "v1", "restic:/srv/repo")
                lines = whole_lines(log)
                if answer["ok"]:
                    outcomes["released"] += 1
                    assert lines[-1]["context"] == "restic:/srv/repo" and lines[-1]["ok"] is True
                else:
                    outcomes["refused"] += 1
                    assert answer["error"] == "agent" and "No space left on device" in answer["message"]
                    assert log.stat().st_size == before
            finally:
                filler.unlink()
        assert all(outcomes.values()), outcomes
    print(f"\nfull disk, agent socket's own writer: {outcomes}; 0 torn lines")


# --- rotation ---------------------------------------------------------------------------------------

def test_rotation_keeps_every_line_in_order_with_both_writers(agent_home: Path) -> None:
    write_config(agent_home, "[agent]\naudit_max_size = 3000\naudit_keep = 3\n")
    agent = start_agent(agent_home)
    try:
        done = agent.cli("unlock", "v1", "--password-file", password_file(agent_home))
        assert done.returncode == 0, done.stderr
        native = agent.get_socket.exists()
        served = {"get socket": 0, "agent socket": 0}
        for i in range(60):
            context = f"n-{i:04d}"
            expected = derive_subkey(CANARY_SECRET, context)
            key = fast_get(agent, "v1", context)[0] if native and i % 3 else None
            if key is None:  # a client then asks the agent socket (every third get, and at the cap)
                answer = json_get(agent, "v1", context)
                assert answer["ok"], answer
                served["agent socket"] += 1
            else:
                assert key == expected
                served["get socket"] += 1
        files = log_files(agent_home / "data" / "audit.log")
        assert [f.name for f in files] == ["audit.log.3", "audit.log.2", "audit.log.1", "audit.log"]
        contexts = []
        for f in files:
            assert f.stat().st_size <= 3000 and stat_mode(f) == 0o600
            contexts += [line["context"] for line in whole_lines(f)]
        # The kept files hold the newest lines, each once, in order: a contiguous run up to the last.
        first = int(contexts[0][2:])
        assert contexts == [f"n-{i:04d}" for i in range(first, 60)], contexts
        if native:
            assert served["get socket"] > 30, served
        listed = cli(agent_home, "audit", "--json", env=agent.env())
        assert listed.returncode == 0, listed.stderr
        assert [r["context"] for r in json.loads(listed.stdout)["records"]] == contexts
    finally:
        agent.stop()
    print(f"\naudit rotation at 3,000 bytes, 3 kept: {len(contexts)} newest lines in order, served by {served}")


def stat_mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_a_write_cut_short_leaves_no_part_of_the_line(tmp_path: Path) -> None:
    """The writer's own check, without a full disk: a file size limit (RLIMIT_FSIZE) cuts the write."""
    script = (
        "import json, os, resource, signal, sys\n"
        "from tokenagent.daemon.audit import AuditLog, audit_line\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "log = AuditLog(sys.argv[1])\n"
        "line = audit_line('v1', 'c' * 200, 1, 2, '/bin/x', None, None, 1.0)\n"
        "log.write(line)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (len(line) + 50, len(line) + 50))\n"
        "try:\n"
        "    log.write(line)\n"
        "except OSError as err:\n"
        "    print('refused', err.errno)\n"
        "print(os.path.getsize(sys.argv[1]) == len(line))\n")
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "audit.log")], capture_output=True,
                          text=True, timeout=60)
    assert done.stdout.split() == ["refused", str(errno.ENOSPC), "True"], done.stdout + done.stderr
    whole_lines(tmp_path / "audit.log")


# --- tokenagent audit ---------------------------------------------------------------------------------

def test_the_audit_command_filters_and_reads_rotated_files(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / "data").mkdir(parents=True, mode=0o700)
    now = time.time()
    log = AuditLog(home / "data" / "audit.log", max_size=700, keep=5)
    rows = [("backup", "restic:/srv", "/usr/bin/python3", "/usr/bin/restic", None, now - 7200),
            ("backup", None, "/usr/bin/python3", "/usr/bin/borg", "denied", now - 3000),
            ("mail", "imap\x1b[31m", "/usr/bin/fetchmail", "/bin/sh", None, now - 600),
            ("backup", "restic:/srv", "/usr/bin/restic", "/bin/bash", "access-denied", now - 60)]
    for i, (vault, context, exe, parent, error, when) in enumerate(rows):
        log.write(audit_line(vault, context, 100 + i, 1000, exe, parent, error, when))
    log.close()
    assert len(log_files(home / "data" / "audit.log")) > 1  # rotated at 700 bytes
    with open(home / "data" / "audit.log", "ab") as f:
        f.write(b"not json\n")

    def records(*args: str) -> list[int]:
        done = cli(home, "audit", "--json", *args)
        assert done.returncode == 0, done.stderr
        return [r["pid"] for r in json.loads(done.stdout)["records"]]

    assert records() == [100, 101, 102, 103]
    assert records("--vault", "backup") == [100, 101, 103]
    assert records("--program", "restic") == [100, 103]  # the client, or the program that ran it
    assert records("--program", "/usr/bin/borg") == [101]
    assert records("--since", "1h") == [101, 102, 103]
    assert records("--since", "1h", "--until", "5m") == [101, 102]
    assert records("--until", str(now - 5000)) == [100]
    assert records("--refused") == [101, 103] and records("--released") == [100, 102]
    assert records("--last", "1") == [103]
    text = cli(home, "audit", "--vault", "mail")
    assert text.returncode == 0 and "\x1b" not in text.stdout and "imap\\x1b[31m" in text.stdout
    assert "released" in text.stdout and "run by /bin/sh" in text.stdout
    assert "1 line(s)" in text.stderr and "not audit records" in text.stderr
    bad = cli(home, "audit", "--since", "yesterday")
    assert bad.returncode == 2 and "cannot read the time" in bad.stderr
    with contextlib.suppress(FileNotFoundError):
        for f in log_files(home / "data" / "audit.log"):
            f.unlink()
    empty = cli(home, "audit", "--json")
    assert empty.returncode == 0 and json.loads(empty.stdout)["records"] == []



# --- an audit log that is not a regular file ------------------------------------------------------

@pytest.mark.parametrize("kind", ["FIFO", "directory"])
def test_an_audit_log_that_is_not_a_file_blocks_nothing_and_releases_nothing(agent_home: Path, kind: str) -> None:
    """A FIFO (nothing reading it) or a directory at the audit log's path: the agent starts, says so,
    answers status and lock, and refuses every get with that reason on both sockets (no hang: each
    client has a timeout)."""
    log = agent_home / "data" / "audit.log"
    if kind == "FIFO":
        os.mkfifo(log, 0o600)
    else:
        log.mkdir()
    agent = start_agent(agent_home)
    try:
        done = agent.cli("unlock", "v1", "--password-file", password_file(agent_home), timeout=30)
        assert done.returncode == 0, done.stderr
        assert fast_get(agent, "v1", "c")[0] is None  # not released by the get socket
        answer = json_get(agent, "v1", "c")
        assert answer["ok"] is False and f"is a {kind.lower()}, not a regular file" in answer["message"].lower()
        assert "remove it" in answer["message"] and str(log) in answer["message"]
        got = agent.cli("get", "v1", "--context", "c", timeout=30)
        assert got.returncode != 0 and "not a regular file" in got.stderr and "Traceback" not in got.stderr
        assert agent.cli("status", timeout=30).returncode == 0
        assert agent.cli("lock", "--all", timeout=30).returncode == 0
        assert "not a regular file" in agent.log_text()  # said at start
    finally:
        agent.stop()
