"""The way to the socket: the directory chain, the fallback location, binding by descriptor.

The client walks to the socket's directory with ``openat``/``O_NOFOLLOW`` steps and checks each
descriptor (tokenagent._locations); the agent binds in the directory it checked, by descriptor.
Tests that need another uid (chown to nobody) skip without root; CI runs as root.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tokenagent import _locations
from tokenagent.daemon import sockets
from tokenagent.errors import UnsafePath

NOBODY = 65534
needs_root = pytest.mark.skipif(os.getuid() != 0, reason="needs root to make files of another uid (CI runs as root)")


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[Path]:
    """A listening socket in a private directory (tmp_path is 0700) inside ``tmp_path/chain``."""
    directory = tmp_path / "chain" / "run"
    directory.mkdir(parents=True, mode=0o700)
    path = directory / "agent.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(str(path))
        s.listen(8)
        yield path


def _reach(path: Path) -> str:
    try:
        _locations.connect(str(path), 5).close()
        return "connected"
    except UnsafePath as err:
        return err.message


@needs_root
def test_directory_chain_is_checked_component_by_component(listener: Path, tmp_path: Path) -> None:
    chain = tmp_path / "chain"
    outcomes: dict[str, str] = {"plain": _reach(listener)}
    os.chmod(chain, 0o777)  # anyone may rename "run" away and put their own in its place
    outcomes["ancestor writable by others"] = _reach(listener)
    os.chmod(chain, 0o1777)  # sticky, as /tmp: others cannot rename what is ours
    outcomes["sticky ancestor"] = _reach(listener)
    os.chmod(chain, 0o755)
    os.chown(chain, NOBODY, NOBODY)
    outcomes["ancestor of another uid"] = _reach(listener)
    os.chown(chain, 0, 0)
    os.chmod(listener.parent, 0o770)
    outcomes["socket dir writable by group"] = _reach(listener)
    os.chmod(listener.parent, 0o700)
    (tmp_path / "ours").symlink_to(chain)
    outcomes["ancestor symlink of ours"] = _reach(tmp_path / "ours" / "run" / "agent.sock")
    (chain / "last").symlink_to(listener.parent)
    outcomes["socket dir is a symlink"] = _reach(chain / "last" / "agent.sock")
    theirs = tmp_path / "theirs"
    theirs.symlink_to(chain)
    os.lchown(theirs, NOBODY, NOBODY)
    outcomes["ancestor symlink of another uid"] = _reach(theirs / "run" / "agent.sock")
    expected = {
        "plain": "connected",
        "ancestor writable by others": "can be changed by other users",
        "sticky ancestor": "connected",
        "ancestor of another uid": "owned by uid 65534",
        "socket dir writable by group": "open to other users",
        "ancestor symlink of ours": "connected",
        "socket dir is a symlink": "is a symbolic link",
        "ancestor symlink of another uid": "made by uid 65534",
    }
    assert {k: expected[k] in v for k, v in outcomes.items()} == dict.fromkeys(expected, True), outcomes
    print(f"\nsocket directory chain: {len(outcomes)}/{len(expected)} cases as expected: {outcomes}")


def test_fallback_runtime_dir_is_not_a_shared_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without XDG_RUNTIME_DIR the socket goes where only the user can make names, never /tmp/NAME."""
    for var in ("TOKENAGENT_HOME", "XDG_RUNTIME_DIR", "XDG_STATE_HOME", "TOKENAGENT_SOCKET"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    run = _locations.runtime_dir()
    systemd = f"/run/user/{os.getuid()}/tokenagent"
    assert run in (systemd, f"{tmp_path}/.local/state/tokenagent/run-{os.uname().nodename}"), run
    assert not run.startswith("/tmp/tokenagent")
    monkeypatch.setenv("XDG_RUNTIME_DIR", "relative/dir")  # not absolute: ignored, as the XDG spec says
    assert _locations.runtime_dir() == run


def test_agent_and_client_meet_in_the_fallback_dir(tmp_path: Path) -> None:
    """An agent and a client with no XDG_RUNTIME_DIR find each other; the directory is made 0700."""
    home = tmp_path / "user"
    home.mkdir(mode=0o700)
    env = {k: v for k, v in os.environ.items()
           if k not in ("TOKENAGENT_HOME", "XDG_RUNTIME_DIR", "TOKENAGENT_SOCKET", "XDG_STATE_HOME")}
    env.update(HOME=str(home), XDG_DATA_HOME=str(home / "data"), XDG_CONFIG_HOME=str(home / "config"),
               TOKENAGENT_TEST_KDF="1")
    log = tmp_path / "agent.log"
    with open(log, "wb") as out:
        agent = subprocess.Popen([sys.executable, "-m", "tokenagent._cli.entry", "agent"], env=env,
                                 stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while True:
            done = subprocess.run([sys.executable, "-m", "tokenagent._cli.entry", "status", "--json"], env=env,
                                  capture_output=True, text=True, timeout=60)
            if done.returncode == 0 or agent.poll() is not None or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert done.returncode == 0, (done.stderr, log.read_text())
        ready = next(line for line in log.read_text().splitlines() if "agent ready on" in line)
        path = Path(ready.split("agent ready on ", 1)[1])
        assert path.is_relative_to(home) or path.is_relative_to(f"/run/user/{os.getuid()}"), path
        assert (path.parent.stat().st_mode & 0o777) == 0o700
        print(f"\nfallback runtime dir: the agent listens on {path}")
    finally:
        agent.terminate()
        agent.wait(20)


def test_agent_binds_in_the_directory_it_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The directory is swapped for a symlink right after the agent checked it: the socket still
    lands in the checked directory (by descriptor), and nothing is created where the symlink points."""
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    checked = tmp_path / "checked-then-moved"
    real_open_dir = _locations.open_dir

    def open_then_swap(path: str, private: bool = False, create: bool = False) -> int:
        fd = real_open_dir(path, private, create)
        os.rename(run, checked)
        run.symlink_to(elsewhere)
        return fd

    monkeypatch.setattr(_locations, "open_dir", open_then_swap)
    sock, path = sockets.bind_socket(run / "agent.sock")
    sock.close()
    assert (checked / "agent.sock").is_socket()
    assert list(elsewhere.iterdir()) == []
    assert path == run / "agent.sock"
