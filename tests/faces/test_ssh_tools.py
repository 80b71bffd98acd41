"""The ssh-agent face with OpenSSH's own tools: ssh-add, ssh against a private sshd, ssh-keygen -Y, git."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from agentkit import AgentProcess, password_file, stop_process
from faceskit import Sshd, faces_home, need, run, ssh_env, start, unlock


@pytest.fixture
def face(tmp_path: Path) -> Iterator[AgentProcess]:
    need("ssh", "ssh-add", "ssh-keygen")
    agent = start(faces_home(tmp_path))
    try:
        yield agent
    finally:
        agent.stop()


def listed(agent: AgentProcess) -> subprocess.CompletedProcess[str]:
    return run(["ssh-add", "-L"], ssh_env(agent))


def pubkey(agent: AgentProcess, label: str, *how: str) -> str:
    how = how or ("--password-file", password_file(agent.home))
    key_type = ["--type", "ecdsa-p256"] if label == "p256" else []
    done = agent.cli("ssh", "pubkey", "v1", label, *key_type, "--comment", f"{'me' if label == 'laptop' else label}"
                     "@laptop", *how)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def audit(agent: AgentProcess) -> list[dict[str, object]]:
    path = agent.home / "data" / "audit.log"
    return [json.loads(line) for line in path.read_text().splitlines() if '"ssh-sign"' in line]


def test_ssh_env_names_the_socket(face: AgentProcess) -> None:
    done = face.cli("ssh", "env")
    assert done.returncode == 0 and done.stdout == f"SSH_AUTH_SOCK={face.socket}.ssh; export SSH_AUTH_SOCK;\n"
    assert json.loads(face.cli("ssh", "env", "--json").stdout)["exists"] is True
    assert (Path(f"{face.socket}.ssh").stat().st_mode & 0o777) == 0o600


def test_ssh_add_lists_the_derived_keys_only_while_unlocked(face: AgentProcess) -> None:
    locked = listed(face)
    assert locked.returncode == 1 and "no identities" in locked.stdout + locked.stderr
    unlock(face)
    lines = listed(face).stdout.splitlines()
    assert lines == [pubkey(face, "laptop"), pubkey(face, "p256")]
    assert lines[0].startswith("ssh-ed25519 ") and lines[1].startswith("ecdsa-sha2-nistp256 ")
    assert face.cli("lock", "v1").returncode == 0
    assert listed(face).returncode == 1
    unlock(face)
    assert len(listed(face).stdout.splitlines()) == 2
    assert face.cli("lock", "--all").returncode == 0
    assert listed(face).returncode == 1


def test_keys_are_the_same_whichever_slot_opened_the_vault(face: AgentProcess, tmp_path: Path) -> None:
    by_password = pubkey(face, "laptop", "--slot", "1", "--password-file", password_file(face.home))
    by_keyfile = pubkey(face, "laptop", "--slot", "2", "--keyfile", str(tmp_path / "keyfile"))
    assert by_password == by_keyfile
    unlock(face, "--slot", "2", "--keyfile", str(tmp_path / "keyfile"))
    assert listed(face).stdout.splitlines()[0] == by_password
    assert face.cli("lock", "v1").returncode == 0
    unlock(face, "--slot", "1", "--password-file", password_file(face.home))
    assert listed(face).stdout.splitlines()[0] == by_password
    other = pubkey(face, "other-label")
    assert other.split()[1] != by_password.split()[1]


def test_ssh_logs_in_to_sshd_and_fails_after_lock(face: AgentProcess, tmp_path: Path) -> None:
    need("/usr/sbin/sshd")
    unlock(face)
    sshd = Sshd(tmp_path / "sshd", pubkey(face, "laptop") + "\n")
    try:
        env = ssh_env(face)
        done = sshd.login(env)
        assert done.returncode == 0, done.stderr + sshd.log.read_text()
        (line,) = [a for a in audit(face) if a["ok"]]
        signed = line["signed"]
        assert isinstance(signed, dict)
        assert line["exe"] == "/usr/bin/ssh" and line["key"] == "laptop" and line["vault"] == "v1"
        assert signed["kind"] == "ssh-userauth" and signed["service"] == "ssh-connection"
        assert signed["host"] == sshd.host_fingerprint()
        assert face.cli("lock", "v1").returncode == 0
        refused = sshd.login(env)
        assert refused.returncode == 255 and "Permission denied" in refused.stderr
    finally:
        sshd.stop()


def test_ssh_keygen_sign_and_verify_with_allowed_signers(face: AgentProcess, tmp_path: Path) -> None:
    unlock(face)
    env = ssh_env(face)
    message = tmp_path / "message.txt"
    message.write_text("release 1.0\n")
    for label in ("laptop", "p256"):
        key = tmp_path / f"{label}.pub"
        key.write_text(pubkey(face, label) + "\n")
        sig = tmp_path / "message.txt.sig"
        sig.unlink(missing_ok=True)
        done = run(["ssh-keygen", "-Y", "sign", "-f", str(key), "-n", "file", str(message)], env)
        assert done.returncode == 0, done.stderr
        signers = tmp_path / "allowed_signers"
        signers.write_text(f"me@laptop {key.read_text()}")
        with open(message) as stdin:
            verified = run(["ssh-keygen", "-Y", "verify", "-f", str(signers), "-I", "me@laptop", "-n", "file",
                            "-s", str(sig)], env, stdin=stdin)
        assert verified.returncode == 0 and "Good \"file\" signature for me@laptop" in verified.stdout
        with open(message) as stdin:
            wrong_ns = run(["ssh-keygen", "-Y", "verify", "-f", str(signers), "-I", "me@laptop", "-n", "email",
                            "-s", str(sig)], env, stdin=stdin)
        assert wrong_ns.returncode != 0
    lines = audit(face)
    assert [(a["key"], a["signed"]) for a in lines] == [
        ("laptop", {"kind": "sshsig", "namespace": "file", "hash": "sha512"}),
        ("p256", {"kind": "sshsig", "namespace": "file", "hash": "sha512"})]
    assert all(a["exe"] == "/usr/bin/ssh-keygen" for a in lines)
    assert face.cli("lock", "v1").returncode == 0
    (tmp_path / "message.txt.sig").unlink()
    assert run(["ssh-keygen", "-Y", "sign", "-f", str(tmp_path / "laptop.pub"), "-n", "file", str(message)],
               env).returncode != 0


def test_git_commit_signed_through_the_agent(face: AgentProcess, tmp_path: Path) -> None:
    need("git")
    unlock(face)
    key = pubkey(face, "laptop")
    repo = tmp_path / "repo"
    signers = tmp_path / "allowed_signers"
    signers.write_text(f"me@laptop {key}\n")
    env = {**ssh_env(face), "HOME": str(tmp_path), "GIT_CONFIG_NOSYSTEM": "1", "GIT_AUTHOR_NAME": "Me",
           "GIT_AUTHOR_EMAIL": "me@laptop", "GIT_COMMITTER_NAME": "Me", "GIT_COMMITTER_EMAIL": "me@laptop"}

    def git(*args: str) -> subprocess.CompletedProcess[str]:
        return run(["git", "-C", str(repo), *args], env)

    assert run(["git", "init", "-q", str(repo)], env).returncode == 0
    for name, value in (("gpg.format", "ssh"), ("user.signingkey", f"key::{key}"),
                        ("gpg.ssh.allowedSignersFile", str(signers)), ("commit.gpgsign", "true")):
        assert git("config", name, value).returncode == 0
    (repo / "README").write_text("signed\n")
    assert git("add", "README").returncode == 0
    done = git("commit", "-q", "-m", "signed by a vault's key")
    assert done.returncode == 0, done.stderr
    shown = git("log", "--show-signature", "-1")
    assert 'Good "git" signature for me@laptop with ED25519 key' in shown.stdout, shown.stdout + shown.stderr
    assert audit(face)[-1]["signed"] == {"kind": "sshsig", "namespace": "git", "hash": "sha512"}
    assert face.cli("lock", "v1").returncode == 0
    (repo / "README").write_text("not signed\n")
    assert git("commit", "-q", "-am", "no key").returncode != 0


def test_refused_requests_change_nothing(face: AgentProcess, tmp_path: Path) -> None:
    unlock(face)
    env = ssh_env(face)
    own = tmp_path / "own_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(own)], check=True)
    added = run(["ssh-add", str(own)], env)
    assert added.returncode != 0
    removed = run(["ssh-add", "-D"], env)
    assert removed.returncode != 0
    served = tmp_path / "laptop.pub"
    served.write_text(pubkey(face, "laptop") + "\n")
    deleted = run(["ssh-add", "-d", str(served)], env)
    assert deleted.returncode != 0 and "agent refused" in deleted.stderr
    assert len(listed(face).stdout.splitlines()) == 2


def test_the_agent_removes_its_ssh_socket_on_exit(tmp_path: Path) -> None:
    agent = start(faces_home(tmp_path))
    path = Path(f"{agent.socket}.ssh")
    assert path.exists()
    assert stop_process(agent.proc) == 0
    agent.stopped = True
    assert not path.exists() and not os.path.exists(agent.socket)


class Screen:
    """A terminal for pinentry-curses: presses ``keys`` once the confirmation shows."""

    def __init__(self, keys: bytes) -> None:
        import select
        import threading
        import time

        self.master, self.slave = os.openpty()
        self.tty = os.ttyname(self.slave)
        self.text = b""
        self.stop = threading.Event()

        def watch() -> None:
            sent = False
            while not self.stop.is_set():
                if select.select([self.master], [], [], 0.1)[0]:
                    self.text += os.read(self.master, 4096)
                if not sent and b"sign with" in self.text:
                    time.sleep(0.3)
                    os.write(self.master, keys)
                    sent = True

        self.thread = threading.Thread(target=watch, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        os.close(self.master)
        os.close(self.slave)


@pytest.mark.parametrize(("keys", "signed"), [(b"\r", True), (b"\t\r", False)], ids=["ok", "cancel"])
def test_confirm_asks_pinentry_before_each_signature(tmp_path: Path, keys: bytes, signed: bool) -> None:
    need("ssh-keygen", "pinentry-curses")
    screen = Screen(keys)
    config = ('[agent]\nwatch_tokens = false\nnotify = false\npinentry = "pinentry-curses"\n'
              f'pinentry_tty = "{screen.tty}"\n\n[ssh]\nkeys = [{{vault = "v1", label = "laptop", confirm = true}}]\n')
    agent = start(faces_home(tmp_path, config))
    try:
        unlock(agent)
        key = tmp_path / "laptop.pub"
        key.write_text(pubkey(agent, "laptop") + "\n")
        message = tmp_path / "message.txt"
        message.write_text("confirm me\n")
        done = run(["ssh-keygen", "-Y", "sign", "-f", str(key), "-n", "file", str(message)], ssh_env(agent))
        assert (done.returncode == 0) is signed, done.stderr
        assert b"sign with" in screen.text  # the question was shown (and answered by the keys)
        (line,) = audit(agent)
        assert line["ok"] is signed and line["error"] == (None if signed else "cancelled")
    finally:
        agent.stop()
        screen.close()


def test_the_idle_ttl_takes_the_keys_away(face: AgentProcess) -> None:
    import time

    unlock(face, "--password-file", password_file(face.home), "--idle-ttl", "2", "--max-ttl", "0")
    assert len(listed(face).stdout.splitlines()) == 2
    deadline = time.monotonic() + 20
    while listed(face).returncode == 0 and time.monotonic() < deadline:
        time.sleep(0.5)  # each listing is not a use: only signatures push the idle deadline
    assert listed(face).returncode == 1
    status = json.loads(face.cli("status", "--json").stdout)
    assert [v["unlocked"] for v in status["vaults"]] == [False]
