"""The admin CLI as a user meets it: real processes, exit codes, one-line errors, --json, no secrets leaked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

CANARY = "canary-Secret-7f3a9c"


def run(home: Path, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TOKENAGENT_HOME": str(home), "TOKENAGENT_TEST_KDF": "1"}
    return subprocess.run([sys.executable, "-m", "tokenagent._cli.entry", *args], env=env, capture_output=True,
                          text=True, timeout=60, input=stdin.decode() if stdin is not None else None)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    h = tmp_path / "home"
    h.mkdir(mode=0o700)
    return h


def secret_file(tmp_path: Path, name: str, *lines: str) -> str:
    path = tmp_path / name
    path.write_text("".join(line + "\n" for line in lines))
    return str(path)


def test_admin_tour_with_json(home: Path, tmp_path: Path) -> None:
    pw = secret_file(tmp_path, "pw", CANARY)
    key = str(tmp_path / "usb.keyx")
    assert run(home, "keyfile", "generate", key).returncode == 0
    r = run(home, "init", "vault1", "--password", "--keyfile", key, "--password-file", pw, "--json")
    assert r.returncode == 0, r.stderr
    created = json.loads(r.stdout)
    assert created["ok"] and created["slot"] == "1" and len(created["fingerprint"]) == 39
    r = run(home, "enroll", "vault1", "--recovery", "--password-file", pw, "--unlock-keyfile", key, "--json")
    assert r.returncode == 0, r.stderr
    recovery = json.loads(r.stdout)["shown"][0]["secret"]
    slots = json.loads(run(home, "slots", "vault1", "--json").stdout)["slots"]
    assert [(s["id"], s["factors"]) for s in slots] == [("1", ["password", "keyfile"]), ("2", ["recovery"])]
    info = json.loads(run(home, "info", "vault1", "--json").stdout)
    assert info["fingerprint"] == created["fingerprint"] and info["allow_raw"] is False
    assert json.loads(run(home, "list", "--json").stdout)["vaults"] == ["vault1"]
    rec = secret_file(tmp_path, "rec", recovery)
    r = run(home, "open", "vault1", "--slot", "2", "--recovery-file", rec, "--reveal", "--json")
    key_hex = json.loads(r.stdout)["key"]
    r = run(home, "open", "vault1", "--password-file", pw, "--keyfile", key, "--reveal", "--json")
    assert json.loads(r.stdout)["key"] == key_hex and json.loads(r.stdout)["slot"] == "1"
    r = run(home, "open", "vault1", "--password-file", pw, "--keyfile", key)
    assert key_hex not in r.stdout + r.stderr  # only --reveal prints the key
    r = run(home, "drill", "vault1", "--password-file", pw, "--recovery-file", rec, "--keyfile", key, "--json")
    assert r.returncode == 0 and all(x["ok"] for x in json.loads(r.stdout)["results"])
    assert all(s["last_drill"] for s in json.loads(run(home, "slots", "vault1", "--json").stdout)["slots"])
    r = run(home, "remove-slot", "vault1", "1", "--recovery-file", rec, "--unlock-slot", "2")
    assert r.returncode == 0, r.stderr
    r = run(home, "remove-slot", "vault1", "2", "--recovery-file", rec)
    assert r.returncode == 8 and "last slot" in r.stderr


def test_import_secret_from_stdin(home: Path, tmp_path: Path) -> None:
    pw = secret_file(tmp_path, "pw", "pw")
    r = run(home, "init", "restic", "--password", "--password-file", pw, "--import-secret", "-", stdin=b"hunter2\n")
    assert r.returncode == 0, r.stderr
    r = run(home, "open", "restic", "--password-file", pw, "--reveal", "--format", "raw")
    assert r.stdout == "hunter2"


@pytest.mark.parametrize(
    ("case", "exit_code", "words"),
    [
        ("wrong-password", 4, "no slot of vault 'v' could be opened"),
        ("missing-keyfile", 2, "key file"),
        ("damaged", 3, "damaged"),
        ("unknown-slot", 3, "has no slot '9'"),
        ("last-slot", 8, "last slot"),
        ("no-vault", 3, "no vault named 'nope'"),
        ("no-factor", 2, "name at least one factor"),
        ("bad-name", 2, "invalid vault name"),
        ("exists", 3, "exists already"),
        ("no-terminal", 4, "use --password-file"),
        ("no-card", 10, "no PIV card found"),
    ],
)
def test_errors_are_one_clear_line(home: Path, tmp_path: Path, case: str, exit_code: int, words: str,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    pw = secret_file(tmp_path, "pw", CANARY)
    wrong = secret_file(tmp_path, "wrong", CANARY + "-wrong")
    assert run(home, "init", "v", "--password", "--password-file", pw).returncode == 0
    args = {
        "wrong-password": ["open", "v", "--password-file", wrong],
        "missing-keyfile": ["init", "w", "--keyfile", str(tmp_path / "absent")],
        "damaged": ["info", "v"],
        "unknown-slot": ["remove-slot", "v", "9", "--password-file", pw],
        "last-slot": ["remove-slot", "v", "1", "--password-file", pw],
        "no-vault": ["slots", "nope"],
        "no-factor": ["init", "w"],
        "bad-name": ["init", "../etc", "--password"],
        "exists": ["init", "v", "--password", "--password-file", pw],
        "no-terminal": ["open", "v"],
        "no-card": ["init", "w", "--piv"],
    }[case]
    if case == "damaged":
        vault_file = home / "data" / "vaults" / "v.vault"
        vault_file.write_text("{ truncated")
    if case == "no-card":  # no pcscd to reach: as on a machine with no reader
        monkeypatch.setenv("PCSCLITE_CSOCK_NAME", str(tmp_path / "no-pcscd.comm"))
    r = run(home, *args, stdin=b"")
    assert r.returncode == exit_code, (r.returncode, r.stderr)
    assert words in r.stderr
    assert r.stderr.startswith("tokenagent: ") and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert CANARY not in r.stdout + r.stderr


def test_damaged_primary_falls_back_to_backup_loudly(home: Path, tmp_path: Path) -> None:
    pw = secret_file(tmp_path, "pw", "pw", "pw2")
    assert run(home, "init", "v", "--password", "--password-file", pw).returncode == 0
    assert run(home, "enroll", "v", "--password", "--password-file", pw).returncode == 0
    (home / "data" / "vaults" / "v.vault").write_text("garbage")
    r = run(home, "open", "v", "--password-file", pw)
    assert r.returncode == 0 and "backup copy" in r.stderr


def test_two_concurrent_enrolls_both_land(home: Path, tmp_path: Path) -> None:
    pw = secret_file(tmp_path, "pw", "pw")
    assert run(home, "init", "v", "--password", "--password-file", pw).returncode == 0
    results: list[subprocess.CompletedProcess[str]] = []
    files = [secret_file(tmp_path, f"pw{i}", "pw", f"new{i}") for i in range(2)]
    threads = [threading.Thread(target=lambda f=f: results.append(run(home, "enroll", "v", "--password",
                                                                    "--password-file", f))) for f in files]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.returncode for r in results] == [0, 0], [r.stderr for r in results]
    slots = json.loads(run(home, "slots", "v", "--json").stdout)["slots"]
    assert sorted(s["id"] for s in slots) == ["1", "2", "3"]
    for i in range(2):
        r = run(home, "open", "v", "--password-file", secret_file(tmp_path, f"n{i}", f"new{i}"))
        assert r.returncode == 0, r.stderr


def test_vault_files_are_private_and_symlinks_refused(home: Path, tmp_path: Path) -> None:
    pw = secret_file(tmp_path, "pw", "pw")
    assert run(home, "init", "v", "--password", "--password-file", pw).returncode == 0
    vaults = home / "data" / "vaults"
    assert (vaults.stat().st_mode & 0o777) == 0o700
    assert ((vaults / "v.vault").stat().st_mode & 0o777) == 0o600
    target = vaults / "v.vault"
    link = vaults / "l.vault"
    link.symlink_to(target)
    r = run(home, "info", "l")
    assert r.returncode == 3 and "symbolic link" in r.stderr
    os.chmod(vaults, 0o755)
    r = run(home, "list")
    assert r.returncode == 3 and "chmod 700" in r.stderr


def test_canary_secrets_never_leak(home: Path, tmp_path: Path) -> None:
    """Plant a password, an imported secret and a recovery key; only --reveal and the one showing may print them."""
    import base64

    secret = b"CANARY-imported-secret-" + os.urandom(4).hex().encode()
    pw = secret_file(tmp_path, "pw", CANARY, CANARY)
    r = run(home, "init", "c", "--password", "--password-file", pw, "--import-secret", "-", stdin=secret)
    assert r.returncode == 0
    r = run(home, "enroll", "c", "--recovery", "--password-file", pw, "--json")
    recovery = json.loads(r.stdout)["shown"][0]["secret"]
    wrong = secret_file(tmp_path, "wrong", CANARY + "x", recovery[:-1] + "c")
    outputs = []
    for args in (
        ["open", "c", "--password-file", pw],
        ["open", "c", "--password-file", wrong, "--recovery-file", wrong],
        ["open", "c", "--password-file", wrong, "--json"],
        ["drill", "c", "--password-file", wrong, "--recovery-file", wrong],
        ["drill", "c", "--password-file", pw, "--json"],
        ["slots", "c", "--json"], ["info", "c"], ["info", "c", "--json"],
        ["enroll", "c", "--password", "--password-file", wrong],
        ["remove-slot", "c", "2", "--password-file", wrong],
    ):
        r = run(home, *args)
        outputs.append(r.stdout + r.stderr)
    vault_text = (home / "data" / "vaults" / "c.vault").read_text()
    outputs.append(vault_text)
    forms = [CANARY, secret.decode(), secret.hex(), base64.b64encode(secret).decode(), recovery,
             recovery.replace("-", "")]
    for text in outputs:
        for form in forms:
            assert form not in text
