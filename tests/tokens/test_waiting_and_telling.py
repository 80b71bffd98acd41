"""Waiting and telling, with a virtual FIDO2 key in a private pcscd and the real CLI and agent.

- ``open``/``unlock`` with the key absent say "plug in your key" and wait for it (or fail at
  once with exit 10 when told not to wait, or without a terminal);
- ``get --wait`` says on stderr what it waits for;
- the agent's desktop notice names the program that wants the vault;
- several vaults with the key's PIN on one card: one PIN dialog for the plug event.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from agentkit import cli, private_home, start_agent
from pcscd import PrivatePcscd, TokenProcess
from plugkit import EventRecorder, NotificationService, fido2_pin_vaults

from tokenagent.client import AgentClient


def popen(home: Path, *args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    full = {**os.environ, "TOKENAGENT_HOME": str(home), "TOKENAGENT_TEST_KDF": "1", **env}
    return subprocess.Popen([sys.executable, "-m", "tokenagent._cli.entry", *args], env=full, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)


def read_stderr_until(proc: subprocess.Popen[str], words: str, timeout: float = 30) -> str:
    """Lines of ``proc``'s stderr until one holds ``words`` (read in a thread: no blocking past the deadline)."""
    seen: list[str] = []
    found = threading.Event()

    def reader() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            seen.append(line)
            if words in line:
                found.set()
                return

    threading.Thread(target=reader, daemon=True).start()
    assert found.wait(timeout), f"{words!r} not seen on stderr: {seen}"
    return "".join(seen)


def test_open_waits_for_the_key_to_be_plugged_in(pcscd: PrivatePcscd, tokens: list[TokenProcess],
                                                 tmp_path: Path) -> None:
    home = private_home(tmp_path)
    token = TokenProcess(pcscd, tmp_path / "key.json", 7301)
    tokens.append(token)
    assert cli(home, "init", "docs", "--fido2", env=pcscd.env).returncode == 0
    token.unplug()
    started = time.monotonic()
    at_once = cli(home, "open", "docs", env=pcscd.env)  # no terminal: a script is not kept waiting
    assert at_once.returncode == 10 and "not plugged in" in at_once.stderr, at_once.stderr
    no_wait = cli(home, "open", "docs", "--no-wait", "--token-wait", "30", env=pcscd.env)
    assert no_wait.returncode == 10 and time.monotonic() - started < 25
    waiting = popen(home, "open", "docs", "--token-wait", "60", env=pcscd.env)
    try:
        said = read_stderr_until(waiting, "plug in your key")
        assert "vault 'docs'" in said and "waiting up to 60 s" in said
        token.plug()
        out, err = waiting.communicate(timeout=60)
        assert waiting.returncode == 0, err
        assert "vault 'docs' opens with slot 1" in out
    finally:
        if waiting.poll() is None:
            waiting.kill()


def test_get_wait_tells_what_it_waits_for_and_the_desktop_names_the_program(
        pcscd: PrivatePcscd, tokens: list[TokenProcess], tmp_path: Path) -> None:
    home = private_home(tmp_path, "[agent]\nremoval_grace = 0.5\n")
    token = TokenProcess(pcscd, tmp_path / "key.json", 7302)
    tokens.append(token)
    assert cli(home, "init", "docs", "--fido2", env=pcscd.env).returncode == 0
    token.unplug()
    service = NotificationService(tmp_path)
    agent = start_agent(home, extra_env={**pcscd.env, "DBUS_SESSION_BUS_ADDRESS": service.address})
    try:
        # bash runs it as a child (not exec'd: a second command follows), as a backup script would
        script = f"{sys.executable} -m tokenagent._cli.entry get docs --context x --wait 60; exit $?"
        waiting = subprocess.Popen(["bash", "-c", script], text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   env={**os.environ, **agent.env(), "TOKENAGENT_HOME": str(home)})
        said = read_stderr_until(waiting, "waiting up to 60 s")
        assert "vault 'docs' is locked: plug in its token or run 'tokenagent unlock docs'; waiting up to 60 s" in said
        deadline = time.monotonic() + 20
        while not any(name == "Notify" and "wants vault" in str(body[3]) for name, body in service.calls):
            assert time.monotonic() < deadline, service.calls
            time.sleep(0.1)
        wanted = [body for name, body in service.calls if name == "Notify" and "wants vault" in str(body[3])]
        assert wanted[0][3] == "bash wants vault 'docs'" and wanted[0][4] == "Plug in or touch your key."
        token.plug()
        out, err = waiting.communicate(timeout=60)
        assert waiting.returncode == 0 and len(out.strip()) == 44, err
        deadline = time.monotonic() + 10
        while not any(name == "CloseNotification" for name, _ in service.calls):  # withdrawn once it is open
            assert time.monotonic() < deadline, service.calls
            time.sleep(0.1)
    finally:
        agent.stop()
        service.stop()


def test_one_pin_dialog_for_several_vaults_on_one_card(pcscd: PrivatePcscd, tokens: list[TokenProcess],
                                                       tmp_path: Path) -> None:
    home, person, state, token = fido2_pin_vaults(pcscd, tokens, tmp_path, 7303, ("docs", "mail"))
    agent = start_agent(home, extra_env=pcscd.env)
    recorder = EventRecorder(agent.socket)
    try:
        person.will_type(b"135790\r")  # once
        time.sleep(0.5)
        token.plug()
        with AgentClient(agent.socket) as client:
            for vault in ("docs", "mail"):
                assert len(client.get(vault, context="x", wait=60)) == 32
        assert [e["vault"] for e in recorder.events if e["event"] == "pin"] == ["docs"]  # one dialog: mail used the same PIN
        assert json.loads(state.read_text())["fido2"]["pin_retries"] == 8
    finally:
        recorder.close()
        person.close()
        agent.stop()
