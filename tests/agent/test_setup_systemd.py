"""``tokenagent setup systemd``: the user units as installed for this tokenagent (docs/agent.md)."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest


def _setup(tmp_path: Path, **env: str) -> tuple[subprocess.CompletedProcess[str], Path]:
    units = tmp_path / "units"
    full = {k: v for k, v in os.environ.items() if k != "TOKENAGENT_HOME"}
    full.update(HOME=str(tmp_path / "home"), **env)
    (tmp_path / "home").mkdir(exist_ok=True)
    done = subprocess.run([str(Path(sys.executable).parent / "tokenagent"), "setup", "systemd", "--unit-dir",
                           str(units), "--no-enable", "--json"], capture_output=True, text=True, env=full, timeout=60)
    return done, units


def test_units_name_the_installed_executable_and_the_data_dir(tmp_path: Path) -> None:
    data_home = tmp_path / "xdg-data"
    done, units = _setup(tmp_path, XDG_DATA_HOME=str(data_home))
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    service = (units / "tokenagent.service").read_text()
    exe = str((Path(sys.executable).parent / "tokenagent").resolve())
    assert f"ExecStart={exe} agent" in service
    assert f"ReadWritePaths=-{data_home / 'tokenagent'}" in service
    assert f"Environment=XDG_DATA_HOME={data_home}" in service
    assert f"ExecStartPre=+/bin/mkdir -p -m 0700 {data_home / 'tokenagent'}" in service  # a fresh home
    assert "%h/.local/bin" not in service
    data = data_home / "tokenagent"
    assert data.is_dir() and stat.S_IMODE(data.stat().st_mode) == 0o700  # a fresh home: made for the sandbox
    assert (units / "tokenagent.socket").read_text() == (Path(__file__).parents[2] / "systemd" /
                                                          "tokenagent.socket").read_text()
    assert any("udev/70-tokenagent.rules" in line for line in answer["udev_commands"])
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is missing (apt-get install systemd)")
    verified = subprocess.run([analyze, "verify", str(units / "tokenagent.socket"), str(units / "tokenagent.service")],
                              capture_output=True, text=True)
    assert verified.returncode == 0 and "tokenagent" not in verified.stderr, verified.stderr


def test_default_data_dir_without_xdg(tmp_path: Path) -> None:
    done, units = _setup(tmp_path)
    assert done.returncode == 0, done.stderr
    service = (units / "tokenagent.service").read_text()
    assert f"ReadWritePaths=-{tmp_path / 'home' / '.local/share/tokenagent'}" in service
    assert "Environment=XDG_DATA_HOME" not in service
    assert f"ExecStartPre=+/bin/mkdir -p -m 0700 {tmp_path / 'home' / '.local/share/tokenagent'}" in service


def test_refuses_under_tokenagent_home(tmp_path: Path) -> None:
    env = {**os.environ, "TOKENAGENT_HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "-m", "tokenagent._cli.entry", "setup", "systemd", "--unit-dir",
                           str(tmp_path / "u"), "--no-enable"], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 2 and "TOKENAGENT_HOME is set" in done.stderr
    assert not (tmp_path / "u").exists()
