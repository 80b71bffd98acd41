"""The command line as a new user meets it (no agent needed): help, refusals, one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

PW = "first-use-password"


def run(home: Path, *args: str, stdout: int | None = None, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TOKENAGENT_HOME": str(home), "TOKENAGENT_TEST_KDF": "1",
           "TOKENAGENT_SOCKET": str(home / "no-agent.sock")}
    return subprocess.run([sys.executable, "-m", "tokenagent._cli.entry", *args], env=env, text=True, timeout=60,
                          stdout=stdout if stdout is not None else subprocess.PIPE, stderr=subprocess.PIPE,
                          input=stdin)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    h = tmp_path / "home"
    h.mkdir(mode=0o700)
    return h


def on_a_terminal(home: Path, *args: str) -> tuple[int, str, bytes]:
    """Run with standard output on a pseudo-terminal: exit code, stderr, what the terminal got."""
    master, slave = os.openpty()
    try:
        done = run(home, *args, stdout=slave)
        os.set_blocking(master, False)
        try:
            shown = os.read(master, 65536)
        except BlockingIOError:
            shown = b""
    finally:
        os.close(slave)
        os.close(master)
    return done.returncode, done.stderr, shown


def test_get_help_prints_help_and_exits_0(home: Path) -> None:
    for flag in ("--help", "-h"):
        done = run(home, "get", flag)
        assert done.returncode == 0 and done.stderr == ""
        assert done.stdout.startswith("usage: tokenagent get VAULT") and "--context LABEL" in done.stdout


@pytest.mark.parametrize("value", ["-1", "nan", "inf", "soon"])
def test_a_negative_or_odd_wait_is_refused(home: Path, value: str) -> None:
    done = run(home, "get", "v", "--wait", value)
    assert done.returncode == 2 and "--wait takes a number of seconds" in done.stderr
    done = run(home, "exec", "v", "--wait", value, "--", "true")
    assert done.returncode == 2 and "--wait" in done.stderr and "Traceback" not in done.stderr


def test_raw_keys_are_not_written_to_a_terminal(home: Path, tmp_path: Path) -> None:
    code, err, shown = on_a_terminal(home, "get", "v", "--format", "raw")
    assert code == 2 and "standard output is a terminal" in err and shown == b""
    pw = tmp_path / "pw"
    pw.write_text(PW + "\n")
    assert run(home, "init", "v", "--password", "--password-file", str(pw)).returncode == 0
    code, err, shown = on_a_terminal(home, "open", "v", "--password-file", str(pw), "--reveal", "--format", "raw")
    assert code == 2 and "standard output is a terminal" in err and shown == b""
    piped = run(home, "open", "v", "--password-file", str(pw), "--reveal", "--format", "hex")
    assert piped.returncode == 0 and len(piped.stdout.strip()) == 64


def test_keyfile_generate_into_a_missing_directory_is_one_line(home: Path, tmp_path: Path) -> None:
    target = tmp_path / "no" / "such" / "dir" / "k.keyx"
    done = run(home, "keyfile", "generate", str(target))
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert done.stderr == f"tokenagent: cannot write {target}: the directory {target.parent} does not exist\n"


def test_exec_json_is_an_option_not_the_command(home: Path) -> None:
    done = run(home, "exec", "v", "--json", "--", "true")
    answer = json.loads(done.stdout)  # the agent is not running: said as JSON, "--json" was not run
    assert done.returncode == 6 and answer["error"] == "agent-not-running"


def test_fido2_keys_have_human_names(tmp_path: Path) -> None:
    from fido2.pcsc import CtapPcscDevice

    from tokenagent.discovery import serial_pcsc_device
    from tokenagent.drivers.fido2 import device_name
    from tokenagent.virtual.token import VirtualToken

    token = VirtualToken(tmp_path / "token.json", serial=6001)
    named = serial_pcsc_device(token.connection(), "Virtual PCD 00 00", 6001)
    assert device_name(named) == "FIDO2 key (serial 6001) in reader 'Virtual PCD 00 00'"
    assert device_name(CtapPcscDevice(token.connection(), "Virtual PCD 00 01")) == "FIDO2 key"
    hid = token.hid_device()
    print(device_name(hid))
    assert "CtapHidDevice(" not in device_name(hid) and "serial 6001" in device_name(hid)


def lines(tmp_path: Path, name: str, *secrets: str) -> str:
    path = tmp_path / name
    path.write_text("".join(s + "\n" for s in secrets))
    return str(path)


def test_delete_rename_relabel_passwd_set(home: Path, tmp_path: Path) -> None:
    pw = lines(tmp_path, "pw", PW)
    assert run(home, "init", "docs", "--password", "--password-file", pw).returncode == 0
    key = run(home, "open", "docs", "--password-file", pw, "--reveal").stdout

    renamed = run(home, "rename", "docs", "papers", "--json")
    assert renamed.returncode == 0 and json.loads(renamed.stdout)["vault"] == "papers", renamed.stderr
    assert run(home, "open", "papers", "--password-file", pw, "--reveal").stdout == key  # the same key
    assert run(home, "open", "docs", "--password-file", pw).returncode == 3
    assert run(home, "init", "other", "--password", "--password-file", pw).returncode == 0
    taken = run(home, "rename", "papers", "other")
    assert taken.returncode == 3 and "exists already" in taken.stderr

    assert run(home, "relabel", "papers", "1", "desk password", "--password-file", pw).returncode == 0
    assert "[desk password]" in run(home, "slots", "papers").stdout

    changed = run(home, "passwd", "papers", "--password-file", lines(tmp_path, "change", PW, "a new one, much longer"))
    assert changed.returncode == 0, changed.stderr
    assert run(home, "open", "papers", "--password-file", pw).returncode == 4  # the old password no longer opens it
    new_pw = lines(tmp_path, "new", "a new one, much longer")
    assert run(home, "open", "papers", "--password-file", new_pw, "--reveal").stdout == key
    assert "[desk password]" in run(home, "slots", "papers").stdout  # same slot, same label

    assert json.loads(run(home, "info", "papers", "--json").stdout)["allow_raw"] is False
    assert run(home, "set", "papers", "--allow-raw", "--password-file", new_pw).returncode == 0
    assert json.loads(run(home, "info", "papers", "--json").stdout)["allow_raw"] is True

    no_tty = run(home, "delete", "papers")
    assert no_tty.returncode == 2 and "--yes" in no_tty.stderr and run(home, "info", "papers").returncode == 0
    deleted = run(home, "delete", "papers", "--yes", "--json")
    assert deleted.returncode == 0, deleted.stderr
    kept = Path(json.loads(deleted.stdout)["kept"][0])
    assert kept.parent.name == "deleted" and (kept.stat().st_mode & 0o777) == 0o600
    assert json.loads(run(home, "list", "--json").stdout)["vaults"] == ["other"]
    kept.rename(home / "data" / "vaults" / "papers.vault")  # undo, as the message says
    assert run(home, "open", "papers", "--password-file", new_pw, "--reveal").stdout == key
    assert run(home, "delete", "papers", "--yes", "--purge").returncode == 0
    assert not list((home / "data" / "vaults").glob("papers*"))


def test_config_check_names_what_does_not_exist(home: Path, tmp_path: Path) -> None:
    pw = lines(tmp_path, "pw", PW)
    assert run(home, "init", "backup", "--password", "--password-file", pw).returncode == 0
    ok = run(home, "config", "check")
    assert ok.returncode == 0 and "not there (defaults)" in ok.stdout
    (home / "config").mkdir(mode=0o700, exist_ok=True)
    conf = home / "config" / "config.toml"
    conf.write_text('[vaults.backups]\nidle_ttl = 60\n[vaults.backup]\nallow_exe = ["/no/such/restic"]\n')
    bad = run(home, "config", "check", "--json")
    problems = json.loads(bad.stdout)["problems"]
    assert bad.returncode == 2
    assert problems == ["[vaults.backups] names no vault (see: tokenagent list); did you mean [vaults.backup]?",
                        "[vaults.backup] allow_exe: /no/such/restic does not exist"]
    conf.write_text("[agent]\nidle_tll = 5\n")
    broken = run(home, "config", "check")
    assert broken.returncode == 2 and "unknown setting 'idle_tll'" in broken.stderr and broken.stderr.count("\n") == 1


def test_argon2_calibration_shows_progress_on_a_terminal(home: Path, tmp_path: Path) -> None:
    pw = lines(tmp_path, "pw", "a long enough password for the policy")
    env = {k: v for k, v in os.environ.items() if k != "TOKENAGENT_TEST_KDF"}  # the real calibration
    master, slave = os.openpty()
    try:
        done = subprocess.run([sys.executable, "-m", "tokenagent._cli.entry", "init", "slow", "--password",
                               "--password-file", pw, "--kdf-time", "0.2"],
                              env={**env, "TOKENAGENT_HOME": str(home)}, stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=slave, timeout=120)
        os.set_blocking(master, False)
        shown = b""
        try:
            while chunk := os.read(master, 65536):
                shown += chunk
        except (BlockingIOError, OSError):
            pass
    finally:
        os.close(slave)
        os.close(master)
    assert done.returncode == 0
    assert b"measuring this machine for the password's Argon2id (target 0.2 s)..." in shown
    assert b": done in " in shown
    piped = subprocess.run([sys.executable, "-m", "tokenagent._cli.entry", "init", "quiet", "--password",
                            "--password-file", pw, "--kdf-time", "0.2"], env={**env, "TOKENAGENT_HOME": str(home)},
                           capture_output=True, text=True, timeout=120)
    assert piped.returncode == 0 and "measuring" not in piped.stderr  # not a terminal: no progress line
