"""README's install path for users: pipx from a checkout, into a fresh pipx home, then a first vault.

Builds the package the way a user's pipx does (an isolated build, pyscard compiled from source
with the prerequisites README lists) from a copy of the tracked files, so nothing of the test
environment's editable install is used.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_pipx_install_gives_a_working_tokenagent(tmp_path: Path) -> None:
    pipx = shutil.which("pipx")
    if pipx is None:
        pytest.skip("pipx is not installed (Debian package pipx)")
    if not (ROOT / ".git").exists():
        pytest.skip("optional: not a git checkout (the test installs the tracked files)")
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    source = tmp_path / "tokenagent"
    for name in filter(None, files.decode().split("\0")):
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    python = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else "python3"
    env = {**os.environ, "PIPX_HOME": str(tmp_path / "pipx"), "PIPX_BIN_DIR": str(tmp_path / "bin"),
           "PIPX_MAN_DIR": str(tmp_path / "man")}
    env.pop("VIRTUAL_ENV", None)
    done = subprocess.run([pipx, "install", "--python", python, str(source)], env=env, capture_output=True,
                          text=True, timeout=900, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stdout + done.stderr
    exe = tmp_path / "bin" / "tokenagent"
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    user = {**env, "TOKENAGENT_HOME": str(home), "TOKENAGENT_TEST_KDF": "1"}

    def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(exe), *args], env=user, capture_output=True, text=True, timeout=120, input=stdin)

    assert run("--version").stdout.startswith("tokenagent, version")
    assert run("init", "docs", "--password", "--password-file", "-", stdin="correct horse battery staple\n"
               ).returncode == 0
    opened = run("open", "docs", "--password-file", "-", stdin="correct horse battery staple\n")
    assert opened.returncode == 0, opened.stderr
    assert run("man").stdout.startswith(".TH TOKENAGENT 1")
    assert "_tokenagent_completion" in run("completion", "bash").stdout
    native = list((tmp_path / "pipx" / "venvs" / "tokenagent").rglob("_getserver*.so"))
    assert native, "the get socket's extension was not built by the user install"
