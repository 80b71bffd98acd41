"""No traceback, one line, nothing changed (issue 14 item 7): every write command on a full disk and on a
read-only file system (a private tmpfs, as root), and the hostile inputs of the issue (a 5,000-digit
integer in a vault file, a lone surrogate in a label, exec --env 'A=B', unlock --idle-ttl nan), and the
top-level boundary for bugs."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from contextlib import redirect_stderr
from pathlib import Path

import pytest

HERE = Path(__file__).parent


def run(home: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "TOKENAGENT_HOME": str(home), "TOKENAGENT_TEST_KDF": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "tokenagent._cli.entry", *args], env=full, capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL)


def one_clean_line(r: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in r.stderr + r.stdout, r.stderr
    assert r.stderr.startswith("tokenagent: ") and r.stderr.count("\n") == 1, r.stderr


def test_write_commands_on_a_full_disk_and_a_read_only_file_system(tmp_path: Path) -> None:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare(1) for a private tmpfs (CI runs as root)")
    done = subprocess.run(["unshare", "--mount", "--propagation", "private", sys.executable,
                           str(HERE / "storage_driver.py"), str(tmp_path)], capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    figures = []
    for condition in ("full", "readonly"):
        results = out[condition]
        assert {"init", "enroll", "remove-slot", "drill", "keyfile-generate", "repair"} <= set(results)
        for name, r in results.items():
            assert r["rc"] != 0, (condition, name, r)
            assert "Traceback" not in r["stderr"] + r["stdout"], (condition, name, r["stderr"])
            errors = [line for line in r["stderr"].splitlines() if line.startswith("tokenagent: ")]
            assert len(errors) == 1 and r["stderr"].splitlines()[-1] == errors[0], (condition, name, r)
            assert r["unchanged"] and not r["temps"], (condition, name, r)
            assert not r["shown_secret"], (condition, name)  # no recovery key for a slot that was not kept
        storage = sum("nothing was changed" in r["stderr"] for r in results.values())
        figures.append(f"{condition}: {len(results)}/{len(results)} refused in one line, files unchanged"
                       f" ({storage} named the storage problem): {', '.join(sorted(results))}")
        assert storage == len(results), {n: r["stderr"] for n, r in results.items()}
    for name, r in out["readonly-reads"].items():  # reading still works on a read-only file system
        assert r["rc"] == 0, (name, r)
    print("\n".join(figures))


@pytest.fixture
def home(tmp_path: Path) -> Path:
    h = tmp_path / "home"
    h.mkdir(mode=0o700)
    pw = tmp_path / "pw"
    pw.write_text("pw\n")
    assert run(h, "init", "v", "--password", "--password-file", str(pw)).returncode == 0
    return h


def _vault_bytes(home: Path) -> bytes:
    return (home / "data" / "vaults" / "v.vault").read_bytes()


def test_a_5000_digit_integer_in_a_vault_file(home: Path) -> None:
    path = home / "data" / "vaults" / "v.vault"
    path.write_bytes(path.read_bytes().replace(b'"seq": 1', b'"seq": ' + b"9" * 5000))
    before = path.read_bytes()
    for args in (["slots", "v"], ["info", "v", "--json"]):
        r = run(home, *args)
        assert r.returncode == 3, r.stderr
        assert "Traceback" not in r.stderr and ("5000 digits" in r.stderr or "5000 digits" in r.stdout)
    assert path.read_bytes() == before


def test_a_lone_surrogate_in_a_label(home: Path, tmp_path: Path) -> None:
    pw = tmp_path / "pw2"
    pw.write_text("pw\nnew\n")
    before = _vault_bytes(home)
    label = b"caf\xff".decode("utf-8", "surrogateescape")  # what argv gives for bytes that are not UTF-8
    r = run(home, "enroll", "v", "--password", "--password-file", str(pw), "--label", label)
    assert r.returncode == 2 and "--label" in r.stderr
    one_clean_line(r)
    assert _vault_bytes(home) == before
    path = home / "data" / "vaults" / "v.vault"  # and one written into the file by someone else
    path.write_bytes(before.replace(b'"label": ""', b'"label": "\\udcff"'))
    r = run(home, "slots", "v")
    assert r.returncode == 3 and "lone surrogate" in r.stderr
    one_clean_line(r)


def test_exec_with_a_bad_environment_name(home: Path) -> None:
    for name in ("A=B", "", "1X", "A B"):
        r = run(home, "exec", "v", "--env", name, "--", "true")
        assert r.returncode == 2 and "--env" in r.stderr, r.stderr
        one_clean_line(r)


@pytest.mark.parametrize("value", ["nan", "inf", "-1", "1e400", "x"])
def test_unlock_with_a_ttl_that_is_not_a_number_of_seconds(home: Path, value: str) -> None:
    before = _vault_bytes(home)
    r = run(home, "unlock", "v", "--idle-ttl", value)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and "idle-ttl" in r.stderr
    assert _vault_bytes(home) == before


def test_a_bug_ends_in_one_line_without_its_message(monkeypatch: pytest.MonkeyPatch) -> None:
    from tokenagent._cli import entry, main

    def broken(args: list[str]) -> int:
        raise RuntimeError("canary-secret-in-a-bug")

    monkeypatch.setattr(main, "run", broken)
    err = io.StringIO()
    with redirect_stderr(err):
        code = entry.main(["slots", "v"])
    assert code == 1 and err.getvalue().count("\n") == 1
    assert "internal error (RuntimeError)" in err.getvalue() and "TOKENAGENT_DEBUG=1" in err.getvalue()
    assert "canary-secret" not in err.getvalue() and "Traceback" not in err.getvalue()
    monkeypatch.setenv("TOKENAGENT_DEBUG", "1")
    err = io.StringIO()
    with redirect_stderr(err):
        assert entry.main(["slots", "v"]) == 1
    assert "Traceback" in err.getvalue()
