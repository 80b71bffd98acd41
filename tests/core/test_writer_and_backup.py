"""The writer never puts in place what the reader refuses; falling back to the backup is always said, never
written over (issue 14 item 2, issue 16 item 3): the 65th slot, a damaged main file with slots/drill/enroll/
remove-slot, 'tokenagent repair', and the agent's memory of each vault's sequence number."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from agentkit import PASSWORD, AgentProcess  # type: ignore[import-not-found]
from scripted import context  # type: ignore[import-not-found]

from tokenagent.daemon.state import AgentState
from tokenagent.errors import VaultFormatError, VaultFull
from tokenagent.factors.password import PasswordFactor
from tokenagent.vault import VaultStore, make_slot, new_vault, operations, sign
from tokenagent.vault.format import MAX_SLOTS


def run(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TOKENAGENT_HOME": str(home), "TOKENAGENT_TEST_KDF": "1"}
    return subprocess.run([sys.executable, "-m", "tokenagent._cli.entry", *args], env=env, capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL)


def snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if not p.name.endswith(".lock")}


def _password_vault(store: VaultStore, name: str, password: bytes = b"pw") -> bytearray:
    ctx = context([password])
    vault, masterkey = new_vault(name, [PasswordFactor.enroll(ctx, {})])
    store.create(vault)
    return masterkey


def test_writer_refuses_a_version_the_reader_would_refuse(store: VaultStore) -> None:
    """A change that would give a 65-slot file (the reader's limit) is not renamed into place."""
    masterkey = _password_vault(store, "v")
    for _ in range(MAX_SLOTS - 1):
        operations.add_slot(store, "v", masterkey, [PasswordFactor.enroll(context([b"pw"]), {})])
    before = snapshot(store.directory)

    def sixty_fifth(current):  # type: ignore[no-untyped-def]
        factor = PasswordFactor.enroll(context([b"pw"]), {})
        slot = make_slot(current.vault_id, current.next_slot_id(), masterkey, [factor])
        return sign(current.with_changes(seq=current.seq + 1, slots=(*current.slots, slot)), masterkey)

    with pytest.raises(VaultFormatError, match="would not load"):
        store.update("v", sixty_fifth)
    assert snapshot(store.directory) == before  # no temporary file either
    with pytest.raises(VaultFull, match="64 slots"):
        operations.add_slot(store, "v", masterkey, [PasswordFactor.enroll(context([b"pw"]), {})])
    assert snapshot(store.directory) == before


def test_enrolling_a_65th_slot_refuses_cleanly_and_changes_nothing(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    store = VaultStore(home / "data" / "vaults")
    masterkey = _password_vault(store, "full")
    for _ in range(MAX_SLOTS - 1):
        operations.add_slot(store, "full", masterkey, [PasswordFactor.enroll(context([b"pw"]), {})])
    before = snapshot(store.directory)
    pw = tmp_path / "pw"
    pw.write_text("pw\nnew\n")
    r = run(home, "enroll", "full", "--password", "--password-file", str(pw))
    assert r.returncode == 3, r.stderr
    assert "64 slots" in r.stderr and "added" not in r.stdout + r.stderr and "Traceback" not in r.stderr
    assert r.stderr.count("\n") == 1
    assert snapshot(store.directory) == before
    r = run(home, "enroll", "full", "--password", "--password-file", str(pw), "--json")
    assert json.loads(r.stdout)["error"] == "vault-full"


@pytest.fixture
def damaged(tmp_path: Path) -> tuple[Path, Path, str]:
    """A vault with slots 1-3 whose main file is damaged: its backup copy has slots 1-2 only."""
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    pw = tmp_path / "pw"
    pw.write_text("pw\n" * 8)
    assert run(home, "init", "v", "--password", "--password-file", str(pw)).returncode == 0
    for _ in range(2):
        r = run(home, "enroll", "v", "--password", "--password-file", str(pw))
        assert r.returncode == 0, r.stderr
    vaults = home / "data" / "vaults"
    (vaults / "v.vault").write_bytes((vaults / "v.vault").read_bytes()[:-30])
    return home, vaults, str(pw)


def test_slots_on_a_damaged_main_file_says_it_uses_the_backup(damaged: tuple[Path, Path, str]) -> None:
    home, vaults, _ = damaged
    r = run(home, "slots", "v")
    assert r.returncode == 0 and "backup copy" in r.stderr and "tokenagent repair v" in r.stderr
    assert r.stdout.count("slot ") == 2
    r = run(home, "slots", "v", "--json")
    data = json.loads(r.stdout)
    assert data["ok"] and any("backup copy" in w for w in data["warnings"]) and "backup copy" in r.stderr
    r = run(home, "info", "v", "--json")
    assert json.loads(r.stdout)["from_backup"] is True and json.loads(r.stdout)["warnings"]


@pytest.mark.parametrize("command", ["drill", "enroll", "remove-slot"])
def test_no_command_writes_over_a_damaged_main_file(damaged: tuple[Path, Path, str], command: str) -> None:
    home, vaults, pw = damaged
    before = snapshot(vaults)
    args = {"drill": ["drill", "v", "--password-file", pw],
            "enroll": ["enroll", "v", "--password", "--password-file", pw],
            "remove-slot": ["remove-slot", "v", "2", "--password-file", pw]}[command]
    r = run(home, *args)
    assert r.returncode == 3, (r.returncode, r.stderr)
    assert "backup copy" in r.stderr and "tokenagent repair v" in r.stderr and "Traceback" not in r.stderr
    assert snapshot(vaults) == before
    r = run(home, *args, "--json")
    assert r.returncode == 3 and json.loads(r.stdout.splitlines()[-1])["warnings"]
    assert snapshot(vaults) == before


def test_repair_restores_the_backup_and_keeps_the_damaged_file(damaged: tuple[Path, Path, str]) -> None:
    home, vaults, pw = damaged
    damaged_bytes = (vaults / "v.vault").read_bytes()
    backup = (vaults / "v.vault.bak").read_bytes()
    r = run(home, "repair", "v", "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["repaired"] and data["slots"] == ["1", "2"]
    assert Path(data["damaged_file"]).read_bytes() == damaged_bytes
    assert Path(data["damaged_file"]).name.startswith("v.vault.damaged-")
    assert (vaults / "v.vault").read_bytes() == backup
    r = run(home, "slots", "v")
    assert r.returncode == 0 and "backup" not in r.stderr
    r = run(home, "drill", "v", "--password-file", pw)
    assert r.returncode == 0, r.stderr
    r = run(home, "repair", "v")
    assert r.returncode == 0 and "not damaged" in r.stdout
    assert run(home, "list").stdout.split() == ["v"]


def test_repair_refuses_when_the_backup_is_damaged_too(damaged: tuple[Path, Path, str]) -> None:
    home, vaults, _ = damaged
    (vaults / "v.vault.bak").write_text("{")
    before = snapshot(vaults)
    r = run(home, "repair", "v")
    assert r.returncode == 3 and "so is its backup copy" in r.stderr
    assert snapshot(vaults) == before


def test_agent_warns_when_a_vault_file_goes_backwards_or_is_the_backup(store: VaultStore) -> None:
    masterkey = _password_vault(store, "v")
    state = AgentState(store=store)
    events: list[tuple[str, dict[str, object]]] = []
    state.listeners.append(lambda e: events.append((e.name, e.data)))
    operations.add_slot(store, "v", masterkey, [PasswordFactor.enroll(context([b"pw"]), {})])
    old = store.path("v").read_bytes()  # seq 2
    operations.add_slot(store, "v", masterkey, [PasswordFactor.enroll(context([b"pw"]), {})])
    state.add_session("v", bytearray(masterkey), "1", "client")  # sees seq 3
    assert "warning" not in state._status({}, None)["vaults"][0]  # type: ignore[arg-type]
    store.path("v").write_bytes(old)  # an older copy put back
    state.add_session("v", bytearray(masterkey), "1", "client")
    warnings = [d for name, d in events if name == "vault-warning"]
    assert warnings and warnings[0]["seq"] == 2 and warnings[0]["seen"] == 3
    status = state._status({}, None)["vaults"][0]  # type: ignore[arg-type]
    assert "went backwards" in status["warning"]
    store.path("v").write_text("damaged")
    state.add_session("v", bytearray(masterkey), "1", "client")
    assert "backup copy" in state._status({}, None)["vaults"][0]["warning"]  # type: ignore[arg-type]
    state.lock_all("test")


def test_stale_temporary_files_are_removed_by_the_next_write(store: VaultStore) -> None:
    masterkey = _password_vault(store, "v")
    stale = [store.directory / ".v.vault.tmp-999999-1", store.directory / ".v.vault.bak.tmp-1-2"]
    other = store.directory / ".w.vault.tmp-5-5"  # another vault's: not this lock's to remove
    for path in (*stale, other):
        path.write_bytes(b"half a vault")
    operations.add_slot(store, "v", masterkey, [PasswordFactor.enroll(context([b"pw"]), {})])
    assert not any(p.exists() for p in stale) and other.exists()
    assert sorted(p.name for p in store.directory.iterdir() if ".tmp-" in p.name) == [other.name]


def test_slot_limits_are_checked_before_any_factor_is_enrolled(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    empty = tmp_path / "empty"
    empty.write_text("")  # a factor that got as far as asking would fail with "no password given"
    r = run(home, "init", "v", *["--password"] * 17, "--password-file", str(empty))
    assert r.returncode == 2 and "at most 16 factors" in r.stderr, r.stderr
    r = run(home, "init", "v", "--password", "--password", "--threshold", "3", "--password-file", str(empty))
    assert r.returncode == 2 and "--threshold" in r.stderr, r.stderr
    r = run(home, "init", "v", "--password", "--label", "x" * 201, "--password-file", str(empty))
    assert r.returncode == 2 and "--label" in r.stderr, r.stderr
    assert not (home / "data" / "vaults" / "v.vault").exists()


def test_the_real_agent_warns_when_a_vault_file_goes_backwards(agent: AgentProcess) -> None:
    pw = agent.home.parent / "pw-twice"
    pw.write_text(PASSWORD + "\n" + PASSWORD + "\n")
    vaults = agent.home / "data" / "vaults"
    assert agent.cli("enroll", "v1", "--password", "--password-file", str(pw)).returncode == 0
    assert agent.cli("unlock", "v1", "--password-file", str(pw)).returncode == 0  # the agent sees seq 2
    (vaults / "v1.vault").write_bytes((vaults / "v1.vault.bak").read_bytes())  # seq 1 put back
    assert agent.cli("unlock", "v1", "--password-file", str(pw)).returncode == 0
    status = json.loads(agent.cli("status", "--json").stdout)
    entry = next(v for v in status["vaults"] if v["vault"] == "v1")
    assert "went backwards" in entry["warning"] and "seq 1" in entry["warning"]
    assert "went backwards" in agent.cli("status").stdout
    assert "went backwards" in agent.log_text()
