"""The agent under systemd: socket activation, Type=notify readiness, and the shipped unit files."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from agentkit import cli

from tokenagent.client import AgentClient

ROOT = Path(__file__).resolve().parents[2]


def _need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} is not installed (Debian package systemd)")
    return path


def test_socket_activation_and_readiness_notification(agent_home: Path, tmp_path: Path) -> None:
    activate = _need("systemd-socket-activate")
    sock_dir = tmp_path / "run"
    sock_dir.mkdir(mode=0o700)
    path = sock_dir / "agent.sock"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify_path = tmp_path / "notify"
    notify.bind(str(notify_path))
    notify.settimeout(20)
    env = {**os.environ, "TOKENAGENT_HOME": str(agent_home), "TOKENAGENT_TEST_KDF": "1",
           "TOKENAGENT_SOCKET": str(path), "NOTIFY_SOCKET": str(notify_path)}
    proc = subprocess.Popen([activate, "-l", str(path), "-E", "NOTIFY_SOCKET", "-E", "TOKENAGENT_HOME",
                             sys.executable, "-m", "tokenagent._cli.entry", "agent"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        for _ in range(200):  # systemd-socket-activate binds, then waits for the first client
            if path.exists():
                break
            time.sleep(0.05)
        os.chmod(path, 0o600)
        with AgentClient(path) as client:  # the first connection starts the agent on the inherited socket
            assert client.version == 1
            assert [v["vault"] for v in client.status()["vaults"]] == ["v1"]
        assert notify.recv(256) == b"READY=1"
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=20)
        notify.close()
    assert b"an inherited socket" in out, out


def test_shipped_units_pass_systemd_analyze(tmp_path: Path) -> None:
    analyze = _need("systemd-analyze")
    exe = shutil.which("tokenagent") or str(Path(sys.executable).parent / "tokenagent")
    for name in ("tokenagent.socket", "tokenagent.service"):
        text = (ROOT / "systemd" / name).read_text().replace("%h/.local/bin/tokenagent", exe)
        (tmp_path / name).write_text(text)
    done = subprocess.run([analyze, "verify", str(tmp_path / "tokenagent.socket"),
                           str(tmp_path / "tokenagent.service")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "tokenagent" not in done.stderr, done.stderr  # no warning about our units


def test_bad_config_stops_the_agent_with_a_clear_message(agent_home: Path) -> None:
    config = agent_home / "config"
    config.mkdir(mode=0o700)
    (config / "config.toml").write_text("[agent]\nidle_tll = 5\n")
    done = cli(agent_home, "agent", timeout=30)
    assert done.returncode == 2 and "unknown setting 'idle_tll'" in done.stderr
