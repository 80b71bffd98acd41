"""The agent as a user runs it: real ``tokenagent agent``, CLI verbs and the client, as processes."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from agentkit import CANARY_SECRET, PASSWORD, AgentProcess, make_vault, password_file, password_vaults

from tokenagent.client import AgentClient
from tokenagent.errors import PolicyError, VaultLocked
from tokenagent.vault import derive_subkey


def unlock(agent: AgentProcess, vault: str = "v1", *extra: str) -> None:
    done = agent.cli("unlock", vault, "--password-file", password_file(agent.home), *extra)
    assert done.returncode == 0, done.stderr


def test_unlock_get_exec_lock_through_the_cli(agent: AgentProcess) -> None:
    locked = agent.cli("get", "v1")
    assert locked.returncode == 7 and "locked" in locked.stderr and locked.stdout == ""
    unlock(agent)
    raw = agent.cli("get", "v1")  # an imported secret: as it came, and a newline
    assert raw.returncode == 0 and raw.stdout == CANARY_SECRET.decode() + "\n"
    b64 = agent.cli("get", "v1", "--format", "base64")
    assert b64.returncode == 0 and base64.b64decode(b64.stdout) == CANARY_SECRET
    sub = agent.cli("get", "v1", "--context", "restic:/srv/repo", "--format", "hex")
    assert sub.stdout.strip() == bytes(derive_subkey(CANARY_SECRET, "restic:/srv/repo")).hex()
    other = agent.cli("get", "v1", "--context", "borg:/srv/repo", "--format", "hex")
    assert other.stdout.strip() != sub.stdout.strip()
    ran = agent.cli("exec", "v1", "--context", "restic:/srv/repo", "--format", "hex", "--",
                    sys.executable, "-c", "import os; print(os.environ['TOKENAGENT_KEY'])")
    assert ran.returncode == 0 and ran.stdout.strip() == sub.stdout.strip()
    status = json.loads(agent.cli("status", "--json").stdout)
    (entry,) = status["vaults"]
    assert entry["unlocked"] and entry["slot"] == "1" and entry["releases"] == 5
    assert agent.cli("lock", "v1").returncode == 0
    assert agent.cli("get", "v1").returncode == 7


def test_generated_key_is_released_only_as_subkeys(agent: AgentProcess) -> None:
    make_vault(agent.home, "gen", secret=None)
    unlock(agent, "gen")
    with AgentClient(agent.socket) as client:
        try:
            client.get("gen")
            raise AssertionError("raw key released")
        except PolicyError as err:
            assert "--context" in err.message
        assert len(client.get("gen", context="gocryptfs")) == 32
    denied = agent.cli("get", "gen", "--json")
    assert json.loads(denied.stdout) == {"ok": False, "error": "denied",
                                         "message": "vault 'gen' releases only subkeys: ask with --context LABEL"}


def test_get_wait_is_answered_when_another_process_unlocks(agent: AgentProcess) -> None:
    env = {**os.environ, "TOKENAGENT_HOME": str(agent.home), **agent.env()}
    waiting = subprocess.Popen([sys.executable, "-m", "tokenagent._cli.entry", "get", "v1", "--wait", "30"],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1.0)
    assert waiting.poll() is None  # still waiting for the vault
    unlock(agent)
    out, err = waiting.communicate(timeout=20)
    assert waiting.returncode == 0, err
    assert out == CANARY_SECRET.decode() + "\n"


def test_get_wait_times_out_with_the_locked_error(agent: AgentProcess) -> None:
    started = time.monotonic()
    done = agent.cli("get", "v1", "--wait", "1")
    assert done.returncode == 7 and "locked" in done.stderr
    assert time.monotonic() - started >= 1.0


def test_events_stream_shows_unlock_and_lock(agent: AgentProcess) -> None:
    seen: list[dict[str, object]] = []

    def listen() -> None:
        client = AgentClient(agent.socket, timeout=None)
        for event in client.events():
            seen.append(event)
            if event["event"] == "locked":
                client.close()
                return

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    time.sleep(0.5)
    unlock(agent)
    agent.cli("lock", "--all")
    thread.join(15)
    assert [e["event"] for e in seen] == ["unlocked", "locked"]
    assert seen[0]["vault"] == "v1" and seen[1]["reason"] == "request"


def test_audit_log_records_each_release_without_the_key(agent: AgentProcess) -> None:
    unlock(agent)
    agent.cli("get", "v1", "--context", "restic:/srv/repo")
    agent.cli("lock", "v1")
    agent.cli("get", "v1")
    audit = agent.home / "data" / "audit.log"
    assert (audit.stat().st_mode & 0o777) == 0o600
    lines = [json.loads(line) for line in audit.read_text().splitlines()]
    assert [(e["vault"], e["context"], e["ok"], e["error"]) for e in lines] == [
        ("v1", "restic:/srv/repo", True, None), ("v1", None, False, "locked")]
    assert all(e["uid"] == os.getuid() and e["pid"] > 0 and e["exe"] for e in lines)
    text = audit.read_text() + agent.log_text()
    for form in (CANARY_SECRET.decode(), base64.b64encode(CANARY_SECRET).decode(), CANARY_SECRET.hex(), PASSWORD):
        assert form not in text


def test_stop_locks_everything_and_removes_the_socket(agent: AgentProcess) -> None:
    unlock(agent)
    assert agent.stop() == 0
    assert not agent.socket.exists()
    assert agent.cli("get", "v1").returncode == 6  # no agent


def test_second_agent_on_the_same_socket_refuses_to_start(agent: AgentProcess) -> None:
    second = agent.cli("agent", timeout=20)
    assert second.returncode == 6 and "already running" in second.stderr
    assert agent.cli("status").returncode == 0  # the first one is untouched


def test_client_without_agent_says_how_to_start_one(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    done = subprocess.run([sys.executable, "-m", "tokenagent._cli.entry", "get", "v1"], capture_output=True,
                          text=True, env={**os.environ, "TOKENAGENT_HOME": str(home)})
    assert done.returncode == 6 and "tokenagent agent" in done.stderr


def test_many_clients_are_served_while_one_waits(agent: AgentProcess) -> None:
    unlock(agent)
    waiter = AgentClient(agent.socket)
    waiter.connect()
    result: list[object] = []
    thread = threading.Thread(target=lambda: result.append(_try_get(waiter, "v2")), daemon=True)
    make_vault(agent.home, "v2", secret=None)
    thread.start()
    time.sleep(0.3)
    with AgentClient(agent.socket) as client:  # served while the other one waits
        for _ in range(50):
            assert bytes(client.get("v1")) == CANARY_SECRET
    assert thread.is_alive()
    unlock(agent, "v2")
    thread.join(10)
    assert result and isinstance(result[0], VaultLocked) is False and len(result[0]) == 32  # type: ignore[arg-type]
    waiter.close()


def _try_get(client: AgentClient, vault: str) -> object:
    try:
        return client.get(vault, context="x", wait=20)
    except Exception as err:  # noqa: BLE001 - the test inspects it
        return err


def _locked_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmLck:")))


def test_unlocked_key_is_locked_in_memory_until_lock(agent: AgentProcess) -> None:
    assert _locked_kib(agent.pid) == 0
    unlock(agent)
    status = json.loads(agent.cli("status", "--json").stdout)
    assert status["vaults"][0]["mlocked"] is True
    assert _locked_kib(agent.pid) > 0  # the page holding the key cannot be swapped out
    agent.cli("lock", "v1")
    assert _locked_kib(agent.pid) == 0


def test_status_of_many_unlocked_vaults(tmp_path: Path) -> None:
    """400 unlocked vaults: a status answer of about 100 kB, over the request limit, arrives whole."""
    from agentkit import start_agent

    from tokenagent.protocol import MAX_FRAME

    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    secret = os.urandom(32)
    password_vaults(home / "data" / "vaults", [f"v{i}" for i in range(400)], secret)
    agent = start_agent(home)
    try:
        with AgentClient(agent.socket) as client:
            for i in range(400):
                client.unlock(f"v{i}", secret)
            size = len(json.dumps(client.request("status")))
            vaults = client.status()["vaults"]
        assert size > MAX_FRAME and len(vaults) == 400 and all(v["unlocked"] for v in vaults)
        done = agent.cli("status")
        assert done.returncode == 0 and done.stdout.count("unlocked") >= 400, done.stderr
    finally:
        agent.stop()


def test_closing_the_client_ends_its_event_stream(agent: AgentProcess) -> None:
    listener = AgentClient(agent.socket, timeout=None)
    seen: list[str] = []
    ended = threading.Event()

    def listen() -> None:
        for event in listener.events():
            seen.append(str(event["event"]))
        ended.set()

    threading.Thread(target=listen, daemon=True).start()
    time.sleep(0.3)
    unlock(agent)
    deadline = time.monotonic() + 5
    while "unlocked" not in seen and time.monotonic() < deadline:
        time.sleep(0.05)
    listener.close()
    assert ended.wait(5), "events() still blocked 5 s after close()"
    assert "unlocked" in seen


def test_cli_get_imports_no_heavy_module(agent: AgentProcess) -> None:
    """'tokenagent get' is what every backup run starts: none of click, cryptography, fido2,
    yubikit/ykman or pyscard may be imported on its way (python -X importtime lists them all)."""
    unlock(agent)
    env = {**os.environ, "TOKENAGENT_HOME": str(agent.home), **agent.env()}
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "tokenagent._cli.entry", "get", "v1",
                           "--context", "restic:/srv/repo", "--format", "hex"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and bytes.fromhex(done.stdout.strip()) == derive_subkey(CANARY_SECRET, "restic:/srv/repo")
    imported = {line.rsplit("|", 1)[-1].strip().split(".")[0] for line in done.stderr.splitlines()
                if line.startswith("import time:")}
    assert "tokenagent" in imported and "_socket" in imported  # the listing works
    assert not imported & {"click", "cryptography", "fido2", "yubikit", "ykman", "smartcard", "pkcs11"}, imported
    # the get socket's round trip needs none of the JSON protocol, the socket module or the error tree
    # (beyond what this interpreter's start-up imports anyway: an editable install's finder does)
    bare = subprocess.run([sys.executable, "-X", "importtime", "-c", "pass"], env=env, capture_output=True,
                          text=True, timeout=60)
    at_start = {line.rsplit("|", 1)[-1].strip().split(".")[0] for line in bare.stderr.splitlines()
                if line.startswith("import time:")}
    assert not (imported - at_start) & {"json", "socket", "selectors", "base64", "re", "enum", "typing", "binascii",
                                        "struct", "__future__"}, imported
    as_imported = subprocess.run([sys.executable, "-X", "importtime", "-m", "tokenagent._cli.entry", "get", "v1"],
                                 env=env, capture_output=True, text=True, timeout=60)  # the agent-socket way
    assert as_imported.returncode == 0 and as_imported.stdout == CANARY_SECRET.decode() + "\n"
    imported = {line.rsplit("|", 1)[-1].strip().split(".")[0] for line in as_imported.stderr.splitlines()
                if line.startswith("import time:")}
    assert not imported & {"click", "cryptography", "fido2", "yubikit", "ykman", "smartcard", "pkcs11"}, imported


def test_agent_verbs_import_no_heavy_module(agent: AgentProcess) -> None:
    """status, lock and events only talk to the agent, list reads vault names: like get, they start
    without click, the vault code or any driver (tokenagent/_cli/agentverbs.py), and they answer as
    the click commands did."""
    unlock(agent)
    env = {**os.environ, "TOKENAGENT_HOME": str(agent.home), **agent.env()}
    heavy = {"click", "cryptography", "fido2", "yubikit", "ykman", "smartcard", "pkcs11"}

    def run(*args: str) -> tuple[subprocess.CompletedProcess[str], set[str]]:
        done = subprocess.run([sys.executable, "-X", "importtime", "-m", "tokenagent._cli.entry", *args],
                              env=env, capture_output=True, text=True, timeout=60)
        imported = {line.rsplit("|", 1)[-1].strip().split(".")[0] for line in done.stderr.splitlines()
                    if line.startswith("import time:")}
        return done, imported

    status, imported = run("status", "--json")
    assert status.returncode == 0 and json.loads(status.stdout)["vaults"][0]["unlocked"] is True
    assert "tokenagent" in imported and not imported & heavy, imported
    text, imported = run("status")
    assert "v1: unlocked (slot 1" in text.stdout and not imported & heavy
    locked, imported = run("lock", "v1")
    assert locked.returncode == 0 and "vault 'v1' locked" in locked.stdout and not imported & heavy
    unknown, imported = run("lock", "nosuch", "--json")
    assert unknown.returncode != 0 and json.loads(unknown.stdout)["error"] == "vault-not-found"
    assert not imported & heavy
    # nor the JSON module (wirejson), the socket module, pathlib, typing or the error tree, beyond what
    # this interpreter's start-up imports anyway (an editable install's finder imports some)
    bare = subprocess.run([sys.executable, "-X", "importtime", "-c", "pass"], env=env, capture_output=True,
                          text=True, timeout=60)
    at_start = {line.rsplit("|", 1)[-1].strip() for line in bare.stderr.splitlines() if line.startswith("import time:")}
    lean = {"json", "socket", "selectors", "base64", "re", "enum", "typing", "pathlib", "tokenagent.errors"}
    for args in (("status", "--json"), ("status",), ("lock", "v1"), ("list",), ("list", "--json")):
        done = subprocess.run([sys.executable, "-X", "importtime", "-m", "tokenagent._cli.entry", *args],
                              env=env, capture_output=True, text=True, timeout=60)
        names = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
        assert done.returncode == 0 and "tokenagent._cli.agentverbs" in names, (args, done.stderr[-300:])
        assert not (names - at_start) & lean, (args, (names - at_start) & lean)
    usage, imported = run("lock")  # not a form the quick parser takes: click says what is wrong
    assert usage.returncode == 2 and "click" in imported
    helped, _ = run("status", "--help")
    assert helped.returncode == 0 and "Show the agent" in helped.stdout


def test_fast_get_exit_codes_are_the_error_trees() -> None:
    """fastget answers usage and agent failures without importing the error tree: its numbers are these."""
    from tokenagent import fastget
    from tokenagent.errors import ExitCode

    assert (fastget.EXIT_USAGE, fastget.EXIT_AGENT) == (ExitCode.USAGE, ExitCode.AGENT)


def test_cli_get_ends_with_its_output_written(agent: AgentProcess) -> None:
    """The console script's get ends without the interpreter's teardown (_cli/entry.py: os._exit): what
    print buffered (--json, --help, an error line) is flushed first, with buffered streams as a user has
    them (no PYTHONUNBUFFERED), and the exit code is get's own."""
    unlock(agent)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    env.update({"TOKENAGENT_HOME": str(agent.home), **agent.env()})

    def get(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "tokenagent._cli.entry", "get", *args], env=env,
                              capture_output=True, text=True, timeout=60)

    as_json = get("v1", "--context", "restic:/srv/repo", "--json")
    answer = json.loads(as_json.stdout)
    assert as_json.returncode == 0 and answer["ok"] is True
    assert base64.b64decode(answer["key"]) == derive_subkey(CANARY_SECRET, "restic:/srv/repo")
    helped = get("--help")
    assert helped.returncode == 0 and helped.stdout.rstrip().endswith("(7: the vault is locked; 3: no such vault).")
    missing = get("nosuch", "--context", "x")
    assert missing.returncode == 3 and missing.stderr.startswith("tokenagent: no vault named 'nosuch'")
