"""The smaller deviations of issue 14 item 8, each decided in docs/spec/ and tested: unknown keys in a factor
descriptor, names and slot ids with a trailing newline, an empty context, malformed format strings, control
characters from a vault file on the terminal, and no core file from the get client."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from scripted import context  # type: ignore[import-not-found]

from tokenagent.client import AgentClient
from tokenagent.errors import UsageError, VaultFormatError
from tokenagent.factors.password import PasswordFactor
from tokenagent.vault import VaultStore, check_name, new_vault
from tokenagent.vault.format import parse


def run(home: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "TOKENAGENT_HOME": str(home), "TOKENAGENT_TEST_KDF": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "tokenagent._cli.entry", *args], env=full, capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL)


def _doc() -> dict:  # type: ignore[type-arg]
    vault, _ = new_vault("v", [PasswordFactor.enroll(context([b"pw"]), {})])
    return json.loads(vault.to_bytes())  # type: ignore[no-any-return]


def test_an_unknown_key_in_a_factor_descriptor_is_refused() -> None:
    doc = _doc()
    doc["slots"][0]["factors"][0]["note"] = "ignored by an older reader"
    with pytest.raises(VaultFormatError, match="'type' and 'params'"):
        parse(json.dumps(doc).encode(), "v")
    doc["slots"][0]["factors"][0] = {"type": "quantum", "params": {}, "x": 1}  # also for unknown types
    with pytest.raises(VaultFormatError, match="'type' and 'params'"):
        parse(json.dumps(doc).encode(), "v")


@pytest.mark.parametrize("name", ["v\n", "v\r", "v ", "\nv", "v\x00"])
def test_names_with_a_trailing_newline_are_refused(name: str) -> None:
    with pytest.raises(UsageError, match="invalid vault name"):
        check_name(name)


@pytest.mark.parametrize(("field", "value"), [("id", "1\n"), ("id", "1 "), ("fingerprint", None)])
def test_slot_ids_and_fingerprints_with_a_trailing_newline_are_refused(field: str, value: str | None) -> None:
    doc = _doc()
    if field == "id":
        doc["slots"][0]["id"] = value
    else:
        doc["fingerprint"] += "\n"
    with pytest.raises(VaultFormatError):
        parse(json.dumps(doc).encode(), "v")


def test_an_empty_context_is_refused_not_the_raw_secret(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    pw = tmp_path / "pw"
    pw.write_text("pw\n")
    assert run(home, "init", "v", "--password", "--password-file", str(pw), "--import-secret", str(pw)).returncode == 0
    raw = run(home, "open", "v", "--password-file", str(pw), "--reveal").stdout.strip()
    r = run(home, "open", "v", "--password-file", str(pw), "--reveal", "--context", "")
    assert r.returncode == 2 and "context" in r.stderr and raw not in r.stdout + r.stderr
    r = run(home, "get", "v", "--context", "", env={"TOKENAGENT_SOCKET": str(tmp_path / "none.sock")})
    assert r.returncode == 2 and "--context" in r.stderr
    r = run(home, "exec", "v", "--context", "", "--", "true", env={"TOKENAGENT_SOCKET": str(tmp_path / "x.sock")})
    assert r.returncode == 2, r.stderr
    with pytest.raises(UsageError, match="must not be empty"):
        AgentClient(str(tmp_path / "none.sock")).get("v", "")
    r = run(home, "open", "v", "--password-file", str(pw), "--reveal", "--context", "\udcff")  # undecodable argv
    assert r.returncode == 2 and "context label must be text" in r.stderr


@pytest.mark.parametrize("fmt", ["tokenagent-vault/", "tokenagent-vault/01", "tokenagent-vault/1.0", "tokenagent-vault/x",
                                 "tokenagent-vault/1 ", "tokenagent-vault/0", "tokenagent-vault/2\n",
                                 "tokenagent-vault/-2", "tokenagent-vault/٣", "tokenagent-vault"])
def test_malformed_format_strings_are_malformed_not_newer(fmt: str) -> None:
    doc = _doc()
    doc["format"] = fmt
    with pytest.raises(VaultFormatError, match="malformed"):
        parse(json.dumps(doc).encode(), "v")


@pytest.mark.parametrize("fmt", ["tokenagent-vault/2", "tokenagent-vault/10"])
def test_a_newer_format_asks_for_an_upgrade(fmt: str) -> None:
    doc = _doc()
    doc["format"] = fmt
    with pytest.raises(VaultFormatError, match="newer than this tokenagent understands; upgrade"):
        parse(json.dumps(doc).encode(), "v")


ESCAPES = ["\x1b[31m", "\x1b]0;owned\x07", "\x9b2J", "\u202e", "\r", "\x08"]


def test_control_characters_from_a_vault_never_reach_the_terminal(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    store = VaultStore(home / "data" / "vaults")
    from tokenagent.factors.keyfile import KeyFileFactor

    vault, _ = new_vault("v", [(KeyFileFactor("/nowhere/key", "00000000"), bytearray(32))])
    doc = json.loads(vault.to_bytes())
    doc["slots"][0]["label"] = "".join(ESCAPES) + "label"
    doc["slots"][0]["factors"][0]["params"]["hint"] = "/nowhere/" + "".join(ESCAPES)
    store.directory.mkdir(parents=True, exist_ok=True)
    (store.directory / "v.vault").write_text(json.dumps(doc))
    for args in (["slots", "v"], ["info", "v"], ["open", "v"], ["drill", "v"], ["slots", "v", "--json"]):
        r = run(home, *args)
        out = r.stdout + r.stderr
        assert "Traceback" not in out
        for escape in ESCAPES:
            assert escape not in out, (args, escape, out)
    assert "\\x1b[31m" in run(home, "slots", "v").stdout  # shown, escaped
    with pytest.raises(UsageError, match="control characters"):
        new_vault("w", [(KeyFileFactor("", "00000000"), bytearray(32))], label="\x1b[2J")


def test_the_get_client_makes_no_core_file(tmp_path: Path) -> None:
    """Before it reads a key, 'tokenagent get' has RLIMIT_CORE 0 (and is non-dumpable where cores go to a pipe)."""
    path = tmp_path / "agent.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)
    server.settimeout(30)
    env = {**os.environ, "TOKENAGENT_SOCKET": str(path), "TOKENAGENT_HOME": str(tmp_path)}
    proc = subprocess.Popen([sys.executable, "-m", "tokenagent._cli.entry", "get", "v"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        conn, _ = server.accept()  # the client is waiting for its key now
        limits = Path(f"/proc/{proc.pid}/limits").read_text()
        core = next(line for line in limits.splitlines() if line.startswith("Max core file size"))
        assert core.split()[4:6] == ["0", "0"], core
        conn.close()
    finally:
        proc.kill()
        proc.wait()
        server.close()
    # where core_pattern pipes to a program (which the kernel does not hold to RLIMIT_CORE): not dumpable
    probe = ("from tokenagent.fastget import _no_core_dumps; import ctypes; _no_core_dumps(piped=True);"
             " print(ctypes.CDLL(None).prctl(3, 0, 0, 0, 0))")  # PR_GET_DUMPABLE
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True).stdout.strip() == "0"
