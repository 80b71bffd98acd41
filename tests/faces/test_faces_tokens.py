"""The faces with two FIDO2 tokens in two slots of one vault (virtual tokens behind a private pcscd).

Whichever token unlocked the vault, ``ssh-add -L`` shows the same key and age decrypts with the
same identity; pulling the token out takes the keys away (the agent's lock on removal).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from agentkit import AgentProcess, cli, private_home
from faceskit import need, run, start
from pcscd import PrivatePcscd, TokenProcess

BIN = str(Path(sys.executable).parent)
CONFIG = """[agent]
removal_grace = 0.5
notify = false

[ssh]
keys = [{vault = "docs", label = "laptop", comment = "me@laptop"}]
"""


def listed(agent: AgentProcess, env: dict[str, str]) -> list[str]:
    done = run(["ssh-add", "-L"], {**os.environ, **env, "SSH_AUTH_SOCK": f"{agent.socket}.ssh"})
    return done.stdout.splitlines() if done.returncode == 0 else []


def wait_for(condition: object, what: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


def test_two_tokens_give_the_same_ssh_key_and_age_recipient(pcscd: PrivatePcscd, tokens: list[TokenProcess],
                                                            tmp_path: Path) -> None:
    need("ssh-add", "age")
    home = private_home(tmp_path, CONFIG)
    main = TokenProcess(pcscd, tmp_path / "main.json", 6001)
    tokens.append(main)
    assert cli(home, "init", "docs", "--fido2", "--label", "main", env=pcscd.env).returncode == 0
    backup = TokenProcess(pcscd, tmp_path / "backup.json", 6002)
    tokens.append(backup)
    assert cli(home, "enroll", "docs", "--fido2", "--label", "backup", env=pcscd.env).returncode == 0
    backup.unplug()

    # offline, each token alone: the same public key and recipient
    by_main = cli(home, "ssh", "pubkey", "docs", "laptop", "--comment", "me@laptop", env=pcscd.env)
    recipient_main = cli(home, "age", "recipient", "docs", "notes", env=pcscd.env)
    main.unplug()
    backup.plug()
    by_backup = cli(home, "ssh", "pubkey", "docs", "laptop", "--comment", "me@laptop", env=pcscd.env)
    recipient_backup = cli(home, "age", "recipient", "docs", "notes", env=pcscd.env)
    assert by_main.returncode == by_backup.returncode == 0, by_main.stderr + by_backup.stderr
    assert by_main.stdout == by_backup.stdout and by_main.stdout.startswith("ssh-ed25519 ")
    assert recipient_main.stdout == recipient_backup.stdout and recipient_main.stdout.startswith("age1")
    backup.unplug()

    secret = tmp_path / "notes.age"
    subprocess.run(["age", "-e", "-r", recipient_main.stdout.strip(), "-o", str(secret)], input=b"notes\n",
                   check=True, timeout=30)
    identity = tmp_path / "notes.identity"
    identity.write_text(cli(home, "age", "identity", "docs", "notes").stdout)
    age_env = {**os.environ, **pcscd.env, "TOKENAGENT_HOME": str(home), "TOKENAGENT_AGE_WAIT": "0",
               "PATH": f"{BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}"}

    agent = start(home, extra_env=pcscd.env)
    try:
        age_env["TOKENAGENT_SOCKET"] = str(agent.socket)
        assert listed(agent, pcscd.env) == []
        for token in (main, backup):
            token.plug()  # the agent unlocks the vault with it (touch given by the virtual token)
            wait_for(lambda: listed(agent, pcscd.env) == [by_main.stdout.strip()], "the key was not listed")
            done = run(["age", "-d", "-i", str(identity), str(secret)], age_env, stdin=subprocess.DEVNULL)
            assert done.returncode == 0 and done.stdout == "notes\n", done.stderr
            token.unplug()  # the lock on removal takes the keys away
            wait_for(lambda: listed(agent, pcscd.env) == [], "the key stayed after its token left")
        done = run(["age", "-d", "-i", str(identity), str(secret)], age_env, stdin=subprocess.DEVNULL)
        assert done.returncode != 0 and "is locked" in done.stderr
    finally:
        agent.stop()


def test_touch_before_each_signature(pcscd: PrivatePcscd, tokens: list[TokenProcess], tmp_path: Path) -> None:
    """``touch = true``: the token that unlocked the vault must open it again, touched, for each signature."""
    import json
    import threading

    need("ssh-keygen")
    home = private_home(tmp_path, '[agent]\nremoval_grace = 0.5\nnotify = false\ntouch_timeout = 3\n\n[ssh]\n'
                                  'keys = [{vault = "docs", label = "laptop", touch = true}]\n')
    token = TokenProcess(pcscd, tmp_path / "main.json", 6101, touch="explicit")
    tokens.append(token)
    touching = threading.Event()
    stop = threading.Event()

    def finger() -> None:  # a person touching the key while asked to
        while not stop.is_set():
            if touching.is_set():
                token.touch()
            time.sleep(0.3)

    person = threading.Thread(target=finger, daemon=True)
    person.start()
    try:
        touching.set()
        assert cli(home, "init", "docs", "--fido2", env=pcscd.env).returncode == 0
        pub = cli(home, "ssh", "pubkey", "docs", "laptop", env=pcscd.env)
        assert pub.returncode == 0, pub.stderr
        token.unplug()
        agent = start(home, extra_env=pcscd.env)
        try:
            token.plug()
            wait_for(lambda: listed(agent, pcscd.env) != [], "the vault was not unlocked on plug")
            key = tmp_path / "laptop.pub"
            key.write_text(pub.stdout)
            message = tmp_path / "message.txt"
            message.write_text("touch me\n")
            env = {**os.environ, **pcscd.env, "SSH_AUTH_SOCK": f"{agent.socket}.ssh"}
            signed = run(["ssh-keygen", "-Y", "sign", "-f", str(key), "-n", "file", str(message)], env)
            assert signed.returncode == 0, signed.stderr
            touching.clear()  # nobody touches now: the signature is refused after touch_timeout
            (tmp_path / "message.txt.sig").unlink()
            refused = run(["ssh-keygen", "-Y", "sign", "-f", str(key), "-n", "file", str(message)], env)
            assert refused.returncode != 0
            lines = [json.loads(x) for x in (home / "data" / "audit.log").read_text().splitlines() if "ssh-sign" in x]
            assert [(x["ok"], x["error"]) for x in lines] == [
                (True, None), (False, "no touch: the token did not open the vault")]
            assert listed(agent, pcscd.env) != []  # a refused touch does not lock the vault
        finally:
            agent.stop()
    finally:
        stop.set()
        person.join()
