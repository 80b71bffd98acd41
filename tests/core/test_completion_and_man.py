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


def _answer(monkeypatch: pytest.MonkeyPatch, capfdbinary: pytest.CaptureFixture[bytes], quick: bool,
            instruction: str, words: str, cword: str) -> bytes:
    """One completion request, answered by the quick path (agentverbs) or by click's (main.run)."""
    from tokenagent._cli import agentverbs
    from tokenagent._cli.main import run

    monkeypatch.setenv("_TOKENAGENT_COMPLETE", instruction)
    monkeypatch.setenv("COMP_WORDS", words)
    monkeypatch.setenv("COMP_CWORD", cword)
    capfdbinary.readouterr()
    if quick:
        assert agentverbs.run([]) == 0, "the quick path left this case to click"
    else:
        with pytest.raises(SystemExit) as done:
            run([])
        assert done.value.code == 0
    sys.stdout.flush()
    return capfdbinary.readouterr().out


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_quick_vault_name_completion_answers_as_click(home: Path, shell: str, monkeypatch: pytest.MonkeyPatch,
                                                      capfdbinary: pytest.CaptureFixture[bytes]) -> None:
    """A vault name after a command is completed without click (every TAB runs it): the same bytes as
    click's completion, for each shell's request form."""
    monkeypatch.setenv("TOKENAGENT_HOME", str(home))
    (home / "data" / "vaults" / (".dotted" + SUFFIX)).write_text("{}")  # hidden: not a vault, in neither answer
    cases = [("tokenagent unlock ", "2", ""), ("tokenagent unlock d", "2", "d"), ("tokenagent lock ", "2", ""), ("tokenagent slots ph", "2", "ph"),
             ("tokenagent drill x", "2", "x")]
    for words, cword, incomplete in cases:
        if shell == "fish":
            words, cword = (words, incomplete)
        instruction = f"{shell}_complete"
        quick = _answer(monkeypatch, capfdbinary, True, instruction, words, cword)
        slow = _answer(monkeypatch, capfdbinary, False, instruction, words, cword)
        assert quick == slow, (words, quick, slow)
    assert b"docs" in _answer(monkeypatch, capfdbinary, True, f"{shell}_complete", "tokenagent info do",
                              "do" if shell == "fish" else "2")


def test_quick_completion_leaves_the_rest_to_click(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Command names, options, later arguments, quoting and odd file names are click's to answer."""
    from tokenagent._cli import agentverbs

    monkeypatch.setenv("TOKENAGENT_HOME", str(home))
    monkeypatch.setenv("_TOKENAGENT_COMPLETE", "bash_complete")
    for words, cword in (("tokenagent sl", "1"), ("tokenagent lock --a", "2"), ("tokenagent lock docs ", "3"),
                         ("tokenagent 'lock' d", "2"), ("tokenagent keyfile ", "2"), ("tokenagent get d", "2")):
        monkeypatch.setenv("COMP_WORDS", words)
        monkeypatch.setenv("COMP_CWORD", cword)
        assert agentverbs.run([]) is None, words
    monkeypatch.setenv("COMP_WORDS", "tokenagent lock d")
    monkeypatch.setenv("COMP_CWORD", "2")
    (home / "data" / "vaults" / ("d\u00e9j\u00e0" + SUFFIX)).write_text("{}")
    assert agentverbs.run([]) is None  # a name that is not plain ASCII: click's path prints it
    monkeypatch.setenv("_TOKENAGENT_COMPLETE", "bash_source")
    assert agentverbs.run([]) is None


def test_quick_completion_knows_click_s_vault_commands() -> None:
    """The quick path's list of commands whose first argument is a vault is click's own tree."""
    import click

    from tokenagent._cli.agentverbs import VAULT_FIRST
    from tokenagent._cli.completion import VaultName
    from tokenagent._cli.main import _load_commands, cli

    _load_commands()
    first = set()
    for name, command in cli.commands.items():
        arguments = [p for p in command.params if isinstance(p, click.Argument)]
        if not isinstance(command, click.Group) and arguments and isinstance(arguments[0].type, VaultName):
            first.add(name)
    assert first == VAULT_FIRST


def test_quick_list_answers_as_click(home: Path, monkeypatch: pytest.MonkeyPatch,
                                     capfdbinary: pytest.CaptureFixture[bytes]) -> None:
    """'tokenagent list' runs without click and prints what click's list prints (text and --json);
    a name that is not plain ASCII goes to click's path."""
    from tokenagent._cli import agentverbs
    from tokenagent._cli.main import run

    monkeypatch.setenv("TOKENAGENT_HOME", str(home))
    (home / "data" / "vaults" / (".hidden" + SUFFIX)).write_text("{}")
    for args in (["list"], ["list", "--json"]):
        capfdbinary.readouterr()
        assert agentverbs.run(args) == 0
        sys.stdout.flush()
        quick = capfdbinary.readouterr().out
        assert run(args) == 0
        sys.stdout.flush()
        assert quick == capfdbinary.readouterr().out and b"docs" in quick and b"hidden" not in quick
    (home / "data" / "vaults" / ("d\u00e9j\u00e0" + SUFFIX)).write_text("{}")
    assert agentverbs.run(["list"]) is None
    empty = home.parent / "empty"
    monkeypatch.setenv("TOKENAGENT_HOME", str(empty))  # no directory yet: made private, nothing listed
    capfdbinary.readouterr()
    assert agentverbs.run(["list"]) == 0
    assert capfdbinary.readouterr().out == b"" and (empty / "data" / "vaults").is_dir()
    assert (empty / "data").stat().st_mode & 0o777 == 0o700
