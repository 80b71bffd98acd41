"""The age face with stock age: age -e to the age1 recipient, age -d through age-plugin-tokenagent and the agent."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from agentkit import AgentProcess, password_file
from faceskit import faces_home, need, run, start, unlock

from tokenagent import agekeys
from tokenagent.vault.identities import age_public, age_x25519_key

BIN = str(Path(sys.executable).parent)  # where age-plugin-tokenagent is installed with tokenagent


@pytest.fixture
def face(tmp_path: Path) -> Iterator[AgentProcess]:
    need("age", "age-keygen")
    if not Path(BIN, "age-plugin-tokenagent").exists():
        pytest.fail("age-plugin-tokenagent is not installed next to the interpreter (pip install -e .)")
    agent = start(faces_home(tmp_path))
    try:
        yield agent
    finally:
        agent.stop()


def age_env(agent: AgentProcess, wait: float = 0) -> dict[str, str]:
    return {**os.environ, **agent.env(), "TOKENAGENT_HOME": str(agent.home), "TOKENAGENT_AGE_WAIT": str(wait),
            "PATH": f"{BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}"}


def recipient(agent: AgentProcess, label: str = "backup", *how: str) -> str:
    done = agent.cli("age", "recipient", "v1", label, *(how or ("--password-file", password_file(agent.home))))
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def identity_file(agent: AgentProcess, path: Path, vault: str = "v1", label: str = "backup") -> Path:
    if vault == "v1":
        done = agent.cli("age", "identity", vault, label)
        assert done.returncode == 0, done.stderr
        path.write_text(done.stdout)
    else:  # a vault that is not on this machine
        path.write_text(agekeys.identity(vault, label) + "\n")
    return path


def encrypt(agent: AgentProcess, tmp_path: Path, *recipients: str, text: bytes = b"the plaintext\n") -> Path:
    out = tmp_path / f"file-{time.monotonic_ns()}.age"
    args = ["age", "-e", "-o", str(out)]
    for r in recipients:
        args += ["-r", r]
    done = subprocess.run(args, input=text, capture_output=True, timeout=30, env=age_env(agent))
    assert done.returncode == 0, done.stderr
    return out


def decrypt(agent: AgentProcess, identity: Path, encrypted: Path, wait: float = 0) -> subprocess.CompletedProcess[str]:
    return run(["age", "-d", "-i", str(identity), str(encrypted)], age_env(agent, wait), timeout=90,
               stdin=subprocess.DEVNULL)


def native_key(tmp_path: Path, name: str) -> tuple[Path, str]:
    path = tmp_path / name
    subprocess.run(["age-keygen", "-o", str(path)], check=True, capture_output=True)
    public = subprocess.run(["age-keygen", "-y", str(path)], check=True, capture_output=True, text=True)
    return path, public.stdout.strip()


def test_stock_age_encrypts_and_the_agent_decrypts(face: AgentProcess, tmp_path: Path) -> None:
    unlock(face)
    to = recipient(face)
    assert to.startswith("age1") and len(to) == 62
    encrypted = encrypt(face, tmp_path, to)
    done = decrypt(face, identity_file(face, tmp_path / "id.txt"), encrypted)
    assert done.returncode == 0 and done.stdout == "the plaintext\n", done.stderr
    ident = (tmp_path / "id.txt").read_text()
    assert "AGE-PLUGIN-TOKENAGENT-1" in ident and to not in ident
    (line,) = [json.loads(x) for x in (face.home / "data" / "audit.log").read_text().splitlines()
               if '"age-unwrap"' in x]
    assert line["ok"] and line["stanza"] == 0 and line["key"] == "backup" and line["parent_exe"] == "/usr/bin/age"


def test_recipient_is_the_same_whichever_slot_opened_the_vault(face: AgentProcess, tmp_path: Path) -> None:
    by_password = recipient(face, "backup", "--slot", "1", "--password-file", password_file(face.home))
    by_keyfile = recipient(face, "backup", "--slot", "2", "--keyfile", str(tmp_path / "keyfile"))
    assert by_password == by_keyfile != recipient(face, "other")
    encrypted = encrypt(face, tmp_path, by_password)
    unlock(face, "--slot", "2", "--keyfile", str(tmp_path / "keyfile"))  # the other slot opens the vault
    done = decrypt(face, identity_file(face, tmp_path / "id.txt"), encrypted)
    assert done.returncode == 0 and done.stdout == "the plaintext\n", done.stderr


def test_the_recipient_is_what_age_keygen_computes_for_the_derived_key(tmp_path: Path) -> None:
    need("age-keygen")
    secret = bytes(range(32))
    raw = age_x25519_key(secret, "backup").private_bytes_raw()
    secret_key = tmp_path / "key.txt"
    secret_key.write_text(agekeys.bech32_encode("age-secret-key-", raw).upper() + "\n")
    public = subprocess.run(["age-keygen", "-y", str(secret_key)], capture_output=True, text=True, check=True)
    assert public.stdout.strip() == agekeys.recipient(age_public(secret, "backup"))


def test_locked_vault_fails_with_age_error_and_no_hang(face: AgentProcess, tmp_path: Path) -> None:
    unlock(face)
    encrypted = encrypt(face, tmp_path, recipient(face))
    assert face.cli("lock", "v1").returncode == 0
    done = decrypt(face, identity_file(face, tmp_path / "id.txt"), encrypted)
    assert done.returncode != 0 and done.stdout == ""
    assert "vault 'v1' is locked" in done.stderr and "tokenagent unlock v1" in done.stderr
    assert "Traceback" not in done.stderr


def test_locked_vault_waits_for_the_unlock_and_tells_the_user(face: AgentProcess, tmp_path: Path) -> None:
    unlock(face)
    encrypted = encrypt(face, tmp_path, recipient(face))
    assert face.cli("lock", "v1").returncode == 0
    audit = face.home / "data" / "audit.log"
    proc = subprocess.Popen(["age", "-d", "-i", str(identity_file(face, tmp_path / "id.txt")), str(encrypted)],
                            env=age_env(face, wait=60), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not (audit.exists() and '"error": "locked"' in audit.read_text()) and time.monotonic() < deadline:
            time.sleep(0.1)  # the plugin asked once, was told locked, now waits
        time.sleep(0.5)
        unlock(face)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0 and out == b"the plaintext\n", err
    assert b"vault 'v1' is locked" in err and b"waiting 60 s" in err


def test_foreign_and_wrong_identities_are_skipped(face: AgentProcess, tmp_path: Path) -> None:
    unlock(face)
    native, native_recipient = native_key(tmp_path, "native.txt")
    other_native, _ = native_key(tmp_path, "other.txt")
    to_native = encrypt(face, tmp_path, native_recipient)
    ours_other_label = identity_file(face, tmp_path / "wrong-label.txt", label="not-this-one")
    elsewhere = identity_file(face, tmp_path / "elsewhere.txt", vault="elsewhere")
    mixed = tmp_path / "mixed.txt"
    mixed.write_text(ours_other_label.read_text() + elsewhere.read_text() + native.read_text())
    done = decrypt(face, mixed, to_native)
    assert done.returncode == 0 and done.stdout == "the plaintext\n", done.stderr
    to_vault = encrypt(face, tmp_path, recipient(face), native_recipient)  # two stanzas; ours second
    first_wrong = tmp_path / "first-wrong.txt"
    first_wrong.write_text(other_native.read_text() + ours_other_label.read_text()
                           + identity_file(face, tmp_path / "id.txt").read_text())
    done = decrypt(face, first_wrong, to_vault)
    assert done.returncode == 0 and done.stdout == "the plaintext\n", done.stderr
    nothing = decrypt(face, ours_other_label, to_vault)
    assert nothing.returncode != 0 and "no identity matched" in nothing.stderr


def test_no_agent_is_a_clear_error(tmp_path: Path) -> None:
    need("age")
    agent = start(faces_home(tmp_path))
    unlock(agent)
    to = recipient(agent)
    encrypted = encrypt(agent, tmp_path, to)
    ident = identity_file(agent, tmp_path / "id.txt")
    agent.stop()
    done = decrypt(agent, ident, encrypted)
    assert done.returncode != 0 and "no agent" in done.stderr and "Traceback" not in done.stderr
