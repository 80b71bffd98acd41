"""Shell completion (bash, zsh, fish) and the manual page, as a user installs and uses them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tokenagent.vault.store import SUFFIX

BIN = Path(sys.executable).parent


def tokenagent(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "tokenagent"), *args], env={**os.environ, "TOKENAGENT_HOME": str(home)},
                          capture_output=True, text=True, timeout=60)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    h = tmp_path / "home"
    (h / "data" / "vaults").mkdir(parents=True)
    for d in (h, h / "data", h / "data" / "vaults"):
        d.chmod(0o700)
    for name in ("docs", "dogs", "photos"):  # completion reads file names only
        (h / "data" / "vaults" / (name + SUFFIX)).write_text("{}")
    return h


def shell(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (Debian package {name})")
    return path


def run_shell(home: Path, argv: list[str]) -> list[str]:
    env = {**os.environ, "TOKENAGENT_HOME": str(home), "PATH": f"{BIN}:{os.environ['PATH']}"}
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, cwd=home)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_bash_completes_commands_and_vault_names(home: Path) -> None:
    script = home / "tokenagent.bash"
    script.write_text(tokenagent(home, "completion", "bash").stdout)
    complete = 'source "$1"; COMP_WORDS=($2); COMP_CWORD=$3; _tokenagent_completion tokenagent; printf "%s\\n" "${COMPREPLY[@]}"'
    bash = shell("bash")
    assert run_shell(home, [bash, "-c", complete, "-", str(script), "tokenagent drill do", "2"]) == ["docs", "dogs"]
    assert run_shell(home, [bash, "-c", complete, "-", str(script), "tokenagent sl", "1"]) == ["slots"]
    assert run_shell(home, [bash, "-c", complete, "-", str(script), "tokenagent unlock p", "2"]) == ["photos"]


def test_fish_completes_vault_names(home: Path) -> None:
    script = home / "tokenagent.fish"
    script.write_text(tokenagent(home, "completion", "fish").stdout)
    out = run_shell(home, [shell("fish"), "-c", f"source {script}; complete -C 'tokenagent unlock d'"])
    assert out == ["docs", "dogs"]


def test_zsh_script_loads_and_vault_names_answer(home: Path) -> None:
    script = home / "_tokenagent"
    script.write_text(tokenagent(home, "completion", "zsh").stdout)
    out = run_shell(home, [shell("zsh"), "-fc", f"autoload -U compinit; compinit -u; source {script};"
                           " whence -w _tokenagent_completion"])
    assert out == ["_tokenagent_completion:", "function"]
    env = {**os.environ, "TOKENAGENT_HOME": str(home), "_TOKENAGENT_COMPLETE": "zsh_complete",
           "COMP_WORDS": "tokenagent slots ph", "COMP_CWORD": "2"}
    answer = subprocess.run([str(BIN / "tokenagent")], env=env, capture_output=True, text=True, timeout=60)
    assert "photos" in answer.stdout.split("\n") and "docs" not in answer.stdout


def test_completion_refuses_an_unknown_shell(home: Path) -> None:
    done = tokenagent(home, "completion", "tcsh")
    assert done.returncode == 2 and "tcsh" in done.stderr and "Traceback" not in done.stderr


def test_man_page_renders_without_warnings_and_lists_every_command(home: Path, tmp_path: Path) -> None:
    from tokenagent._cli.main import _load_commands, cli

    page = tokenagent(home, "man").stdout
    assert page.startswith(".TH TOKENAGENT 1")
    groff = shutil.which("groff") or pytest.skip("groff is not installed (Debian package groff-base)")
    checked = subprocess.run([groff, "-man", "-ww", "-z"], input=page, capture_output=True, text=True, timeout=60,
                             env={**os.environ, "LC_ALL": "C.UTF-8"})
    assert checked.returncode == 0 and checked.stderr == "", checked.stderr
    text = subprocess.run([groff, "-man", "-Tutf8", "-P-cbou"], input=page, capture_output=True, text=True,
                          timeout=60, env={**os.environ, "LC_ALL": "C.UTF-8"}).stdout
    _load_commands()
    for name, command in cli.commands.items():
        if not command.hidden:
            assert f"tokenagent {name}" in text
    assert "--password-file" in text and "--otp-show-secret" in text  # options come from the parser itself
