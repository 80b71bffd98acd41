"""What a new user meets first, with the real agent and CLI as processes (issue: first use).

Unknown vaults are ``vault-not-found`` at once, with the names close to the one typed; "plug in
its token" only for vaults that have a token slot; exit codes scripts can tell apart.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from agentkit import AgentProcess, make_vault, private_home, start_agent

from tokenagent.client import AgentClient
from tokenagent.errors import VaultLocked, VaultNotFound


@pytest.fixture(params=[True, False], ids=["get-socket", "json-socket"])  # the get socket hands these to the JSON one
def agent_either(request: pytest.FixtureRequest, tmp_path: Path) -> AgentProcess:
    home = private_home(tmp_path, f"[agent]\nget_socket = {'true' if request.param else 'false'}\n")
    make_vault(home, "backup-home")
    agent = start_agent(home)
    request.addfinalizer(agent.stop)
    return agent


def test_unknown_vault_is_not_found_at_once_with_the_close_names(agent_either: AgentProcess) -> None:
    agent = agent_either
    started = time.monotonic()
    typo = agent.cli("get", "backup-hom", "--wait", "30")
    assert time.monotonic() - started < 20  # not the 30 s of --wait: there is nothing to wait for
    assert typo.returncode == 3, typo.stderr
    assert typo.stderr == "tokenagent: no vault named 'backup-hom'; did you mean 'backup-home'?\n"
    far = agent.cli("get", "zzz", "--json")
    assert far.returncode == 3 and json.loads(far.stdout)["error"] == "vault-not-found"
    assert "tokenagent list" in json.loads(far.stdout)["message"]
    with AgentClient(agent.socket) as client:  # the JSON socket itself, with and without wait
        for args in ({"vault": "backup-hom"}, {"vault": "backup-hom", "wait": 30}):
            with pytest.raises(VaultNotFound, match="did you mean 'backup-home'"):
                client.request("get", **args)


def test_locked_password_vault_does_not_say_plug_in_a_token(agent_either: AgentProcess) -> None:
    locked = agent_either.cli("get", "backup-home")
    assert locked.returncode == 7
    assert locked.stderr == "tokenagent: vault 'backup-home' is locked: run 'tokenagent unlock backup-home'\n"
    with AgentClient(agent_either.socket) as client, pytest.raises(VaultLocked) as err:
        client.request("get", vault="backup-home")
    assert "plug in" not in err.value.message


def test_lock_of_an_unknown_name_fails(agent: AgentProcess) -> None:
    unknown = agent.cli("lock", "v2")
    assert unknown.returncode == 3 and "no vault named 'v2'; did you mean 'v1'?" in unknown.stderr
    known = agent.cli("lock", "v1")
    assert known.returncode == 0 and "was not unlocked" in known.stdout


def test_init_of_an_existing_vault_is_vault_exists(agent: AgentProcess) -> None:
    pw = agent.home.parent / "pw-again"
    pw.write_text("x\n")
    again = agent.cli("init", "v1", "--password", "--password-file", str(pw), "--json")
    assert again.returncode == 3 and json.loads(again.stdout)["error"] == "vault-exists"


CHILD = """
import fcntl, os, sys
fd = int(sys.argv[1]) if sys.argv[1].isdigit() else os.open(sys.argv[1], os.O_RDONLY)
data = os.read(fd, 4096)
environ = open("/proc/self/environ", "rb").read()
seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
print(data.decode().strip(), "TOKENAGENT_KEY" in os.environ, data.strip() in environ, seals & fcntl.F_SEAL_WRITE != 0)
"""


def test_exec_hands_the_key_on_a_descriptor_not_in_the_environment(agent: AgentProcess) -> None:
    import base64
    import sys

    from agentkit import CANARY_SECRET, password_file

    from tokenagent.vault import derive_subkey

    assert agent.cli("unlock", "v1", "--password-file", password_file(agent.home)).returncode == 0
    subkey = base64.b64encode(bytes(derive_subkey(CANARY_SECRET, "app"))).decode()
    by_fd = agent.cli("exec", "v1", "--context", "app", "--fd", "3", "--", sys.executable, "-c", CHILD, "3")
    assert by_fd.returncode == 0, by_fd.stderr
    assert by_fd.stdout.split() == [subkey, "False", "False", "True"]  # not in /proc/PID/environ; sealed
    by_path = agent.cli("exec", "v1", "--", sys.executable, "-c", CHILD, "{keyfile}")  # an imported secret
    assert by_path.returncode == 0, by_path.stderr
    assert by_path.stdout.split() == [CANARY_SECRET.decode(), "False", "False", "True"]
    by_env = agent.cli("exec", "v1", "--", sys.executable, "-c", "import os; print(os.environ['TOKENAGENT_KEY'])")
    assert by_env.stdout == CANARY_SECRET.decode() + "\n"  # the default, documented as visible to your processes
    raw_env = agent.cli("exec", "v1", "--format", "raw", "--", "true")
    assert raw_env.returncode == 2 and "--fd N or {keyfile}" in raw_env.stderr


def test_sighup_reloads_the_configuration(tmp_path: Path) -> None:
    import os
    import signal

    from agentkit import password_file

    home = private_home(tmp_path, '[vaults.v1]\nallow_exe = ["/nowhere/restic"]\n[vaults.v9]\nidle_ttl = 5\n')
    make_vault(home, "v1")
    agent = start_agent(home)
    try:
        assert agent.cli("unlock", "v1", "--password-file", password_file(home)).returncode == 0
        for args in (("get", "v1"), ("get", "v1", "--context", "c")):  # the agent socket and the get socket
            denied = agent.cli(*args)
            assert denied.returncode == 8 and "allow_exe" in denied.stderr
        conf = home / "config" / "config.toml"
        conf.write_text("[vaults.v1]\nidle_ttl = 600\n")
        os.kill(agent.pid, signal.SIGHUP)
        deadline = time.monotonic() + 20
        while "configuration reloaded" not in agent.log_text():
            assert time.monotonic() < deadline and agent.proc.poll() is None, agent.log_text()
            time.sleep(0.1)
        for args in (("get", "v1"), ("get", "v1", "--context", "c")):
            assert agent.cli(*args).returncode == 0  # the same agent, the vault still unlocked, the rule gone
        conf.write_text("[agent]\nidle_ttl = 'soon'\n")
        os.kill(agent.pid, signal.SIGHUP)
        deadline = time.monotonic() + 20
        while "configuration not reloaded" not in agent.log_text():
            assert time.monotonic() < deadline and agent.proc.poll() is None, agent.log_text()
            time.sleep(0.1)
        assert agent.cli("get", "v1").returncode == 0 and agent.proc.poll() is None
        assert "config: [vaults.v9] names no vault" in agent.log_text()  # said at start
    finally:
        agent.stop()
