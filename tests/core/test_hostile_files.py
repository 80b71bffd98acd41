"""Nothing a vault file names can make a reader hang or work without bound (issue 14 item 5): a FIFO named
like a vault file (with the real agent), key-file hints naming /dev/zero, /dev/urandom or a FIFO, key files
given on the command line, and KDF costs over the limits the user can see and set."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from agentkit import AgentProcess, frame, read_response  # type: ignore[import-not-found]
from scripted import context  # type: ignore[import-not-found]

from tokenagent.errors import UsageError, VaultFormatError
from tokenagent.factors.keyfile import KeyFileFactor, read_keyfile
from tokenagent.factors.password import PasswordFactor
from tokenagent.vault import VaultStore, new_vault
from tokenagent.vault.format import parse


def run(home: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "TOKENAGENT_HOME": str(home), "TOKENAGENT_TEST_KDF": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "tokenagent._cli.entry", *args], env=full, capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL)


def test_a_fifo_named_like_a_vault_does_not_freeze_the_agent(agent: AgentProcess) -> None:
    vaults = agent.home / "data" / "vaults"
    os.mkfifo(vaults / "fifo.vault", 0o600)
    with agent.connect() as s:
        s.sendall(frame({"op": "unlock", "id": 1, "vault": "fifo", "key": base64.b64encode(b"k" * 32).decode()}))
        answer = read_response(s)
    assert answer["ok"] is False and answer["error"] == "unsafe-path" and "FIFO" in answer["message"]
    r = agent.cli("lock", "--all", timeout=20)
    assert r.returncode == 0, r.stderr
    r = agent.cli("slots", "fifo", timeout=20)
    assert r.returncode == 3 and "FIFO" in r.stderr and "Traceback" not in r.stderr


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    path = tmp_path / "key.fifo"
    os.mkfifo(path, 0o600)
    return path


@pytest.mark.parametrize("hint", ["/dev/zero", "/dev/urandom", "FIFO", "/dev/tty", "/proc/self/fd/0", "/"])
def test_key_file_hints_naming_devices_or_fifos_do_not_hang(tmp_path: Path, fifo: Path, hint: str) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    store = VaultStore(home / "data" / "vaults")
    path = str(fifo) if hint == "FIFO" else hint
    vault, _ = new_vault("v", [(KeyFileFactor(path, "00000000"), bytearray(32))])
    store.create(vault)
    r = run(home, "open", "v")
    assert r.returncode == 4, r.stderr
    assert "not a regular file" in r.stderr and "Traceback" not in r.stderr and r.stderr.count("\n") == 1


@pytest.mark.parametrize("path", ["/dev/zero", "/dev/urandom", "FIFO"])
def test_key_files_named_on_the_command_line_are_files_only(tmp_path: Path, fifo: Path, path: str) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    given = str(fifo) if path == "FIFO" else path
    r = run(home, "init", "v", "--keyfile", given)
    assert r.returncode == 2 and "not a regular file" in r.stderr and "Traceback" not in r.stderr
    assert not (home / "data" / "vaults" / "v.vault").exists()
    with pytest.raises(UsageError, match="not a regular file"):
        read_keyfile(given)


def test_huge_key_files_are_refused(tmp_path: Path) -> None:
    big = tmp_path / "big"
    with open(big, "wb") as f:
        f.truncate((64 << 20) + 1)
    with pytest.raises(UsageError, match="larger than"):
        read_keyfile(big)


def _password_vault_doc(**params: int) -> dict[str, object]:
    vault, _ = new_vault("v", [PasswordFactor.enroll(context([b"pw"]), {})])
    doc = json.loads(vault.to_bytes())
    doc["slots"][0]["factors"][0]["params"].update(params)
    return doc  # type: ignore[no-any-return]


@pytest.mark.parametrize(("params", "env"), [
    ({"m": 1 << 22}, "TOKENAGENT_MAX_KDF_MEMORY_MIB"),
    ({"t": 1000}, "TOKENAGENT_MAX_KDF_ITERATIONS"),
    ({"p": 64, "m": 1 << 20}, "TOKENAGENT_MAX_KDF_LANES"),
])
def test_kdf_costs_over_the_limits_are_refused_before_any_work(params: dict[str, int], env: str,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    data = json.dumps(_password_vault_doc(**params)).encode()
    with pytest.raises(VaultFormatError, match=env):
        parse(data, "v")
    monkeypatch.setenv(env, {"MEMORY": "4096", "ITERATIONS": "1000", "LANES": "64"}[env.split("_")[-1]
                                                                                  if "MIB" not in env else "MEMORY"])
    monkeypatch.setenv("TOKENAGENT_MAX_KDF_MEMORY_MIB", "4096")
    parse(data, "v")  # the user raised the limit: the file reads (and its AEAD still binds the costs)


def test_the_whole_files_kdf_work_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    doc = _password_vault_doc(m=1 << 20, t=64)  # 1 GiB x 64 passes: at the per-factor limits
    parse(json.dumps(doc).encode(), "v")
    slot = doc["slots"][0]  # type: ignore[index]
    doc["slots"] = [dict(slot, id=str(i)) for i in range(1, 3)]  # two of them: 128 GiB-passes
    with pytest.raises(VaultFormatError, match="TOKENAGENT_MAX_KDF_TOTAL_GIB"):
        parse(json.dumps(doc).encode(), "v")
    monkeypatch.setenv("TOKENAGENT_MAX_KDF_TOTAL_GIB", "128")
    parse(json.dumps(doc).encode(), "v")
    monkeypatch.setenv("TOKENAGENT_MAX_KDF_TOTAL_GIB", "lots")
    with pytest.raises(UsageError, match="whole number"):
        parse(json.dumps(doc).encode(), "v")


def test_secret_files_naming_dev_zero_are_refused_not_read_forever(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    r = run(home, "init", "v", "--password", "--password-file", "/dev/zero")
    assert r.returncode == 2 and "more than" in r.stderr and "Traceback" not in r.stderr
    pw = tmp_path / "pw"
    pw.write_text("pw\n")
    r = run(home, "init", "v", "--password", "--password-file", str(pw), "--import-secret", "/dev/zero")
    assert r.returncode == 2 and "more than 4096" in r.stderr and "Traceback" not in r.stderr
    assert not (home / "data" / "vaults" / "v.vault").exists()


# --- other files the CLI and the agent open by a user's path: regular files only, with a size cap ------

def _sparse(path: Path, size: int = 100 << 20) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)  # 100 MB that take no disk
    return path


def _one_clean_line(r: subprocess.CompletedProcess[str], *words: str) -> None:
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert all(w in r.stderr for w in words), r.stderr
    assert "Traceback" not in r.stderr and r.stderr.count("\n") == 1, r.stderr


@pytest.mark.parametrize("kind", ["FIFO", "directory", "/dev/zero", "huge"])
def test_piv_cert_files_are_small_regular_files(tmp_path: Path, fifo: Path, kind: str) -> None:
    """``--piv-cert``: a FIFO with no writer must not hang the CLI (the run has a timeout), a device or
    a directory is refused by name, and a 100 MB file is refused without being read."""
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    given = {"FIFO": str(fifo), "directory": str(tmp_path), "/dev/zero": "/dev/zero",
             "huge": str(_sparse(tmp_path / "big.pem"))}[kind]
    r = run(home, "init", "v", "--piv", "--piv-cert", given)
    _one_clean_line(r, given, "larger than" if kind == "huge" else "not a regular file")
    assert not (home / "data" / "vaults" / "v.vault").exists()


@pytest.mark.parametrize("kind", ["FIFO", "huge", "directory"])
@pytest.mark.parametrize("option", ["--import-secret", "--password-file"])
def test_secret_files_never_block_at_open(tmp_path: Path, fifo: Path, kind: str, option: str) -> None:
    """Secret files may be pipes (a script's ``<(pass show x)``), so a FIFO is read, not refused; one
    with nothing writing must not hang the CLI (the run has a timeout): it reads as empty."""
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    pw = tmp_path / "pw"
    pw.write_text("a long enough password for the policy 4711\n")
    given = {"FIFO": str(fifo), "huge": str(_sparse(tmp_path / "big")), "directory": str(tmp_path)}[kind]
    args = ["--password-file", str(pw), "--import-secret", given] if option == "--import-secret" else [
        "--password-file", given]
    r = run(home, "init", "v", "--password", *args)
    code, said = {"FIFO": (2, "not 0") if option == "--import-secret" else (4, "no more lines"),
                  "huge": (2, "more than"), "directory": (2, "Is a directory")}[kind]
    assert r.returncode == code and said in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (home / "data" / "vaults" / "v.vault").exists()


def test_a_fifo_as_config_toml_does_not_hang(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / "config").mkdir(parents=True, mode=0o700)
    os.chmod(home, 0o700)
    os.mkfifo(home / "config" / "config.toml", 0o600)
    r = run(home, "config", "check")
    _one_clean_line(r, str(home / "config" / "config.toml"), "FIFO, not a regular file")
    agent = subprocess.run([sys.executable, "-m", "tokenagent._cli.entry", "agent"], capture_output=True, text=True,
                           timeout=60, stdin=subprocess.DEVNULL,
                           env={**os.environ, "TOKENAGENT_HOME": str(home), "TOKENAGENT_TEST_KDF": "1"})
    assert agent.returncode != 0 and "config.toml is a FIFO" in agent.stderr and "Traceback" not in agent.stderr


def test_a_huge_config_toml_is_refused(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / "config").mkdir(parents=True, mode=0o700)
    os.chmod(home, 0o700)
    _sparse(home / "config" / "config.toml")
    _one_clean_line(run(home, "config", "check"), "config.toml", "larger than")


@pytest.mark.parametrize("kind", ["FIFO", "huge"])
def test_cryptomator_masterkey_files_are_small_regular_files(tmp_path: Path, fifo: Path, kind: str) -> None:
    """Read in a child process: on the old code the FIFO blocked the open for ever (the timeout fails it)."""
    given = str(fifo) if kind == "FIFO" else str(_sparse(tmp_path / "masterkey.cryptomator"))
    code = ("import sys\nfrom tokenagent.errors import TokenAgentError\nfrom tokenagent.integrations import cryptomator\n"
            "try:\n    cryptomator.read_masterkey(sys.argv[1])\nexcept TokenAgentError as err:\n    print(err)\n")
    r = subprocess.run([sys.executable, "-c", code, given], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert ("not a regular file" if kind == "FIFO" else "too large") in r.stdout, r.stdout
