"""Helpers for the ssh-agent and age tests: a vault with two slots, an agent serving [ssh] keys, sshd."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
from agentkit import PASSWORD, AgentProcess, cli, password_file, private_home, start_agent

CONFIG = """
[agent]
watch_tokens = false
notify = false

[ssh]
keys = [{vault = "v1", label = "laptop", comment = "me@laptop"},
        {vault = "v1", label = "p256", type = "ecdsa-p256", comment = "p256@laptop"}]
"""


def need(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None and not Path(t).exists()]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (Debian packages in .ci/apt-packages.txt)")


def faces_home(tmp_path: Path, config: str = CONFIG) -> Path:
    """A home with vault v1 (generated secret): slot 1 a password, slot 2 a key file (tmp_path/keyfile)."""
    home = private_home(tmp_path, config)
    pw = password_file(home)
    done = cli(home, "init", "v1", "--password", "--password-file", pw)
    assert done.returncode == 0, done.stderr
    keyfile = tmp_path / "keyfile"
    keyfile.write_bytes(os.urandom(32))
    done = cli(home, "enroll", "v1", "--keyfile", str(keyfile), "--password-file", pw)
    assert done.returncode == 0, done.stderr
    return home


def unlock(agent: AgentProcess, *how: str) -> None:
    done = agent.cli("unlock", "v1", *(how or ("--password-file", password_file(agent.home))))
    assert done.returncode == 0, done.stderr


def ssh_env(agent: AgentProcess) -> dict[str, str]:
    return {**os.environ, "SSH_AUTH_SOCK": str(agent.socket) + ".ssh"}


def run(args: list[str], env: dict[str, str], timeout: float = 60, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout, **kw)  # type: ignore[call-overload, no-any-return]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Sshd:
    """A private sshd on 127.0.0.1: its own config, host key, port and authorized_keys file."""

    def __init__(self, directory: Path, authorized_keys: str) -> None:
        need("/usr/sbin/sshd", "ssh-keygen")
        self.dir = directory
        directory.mkdir(mode=0o700)
        self.port = free_port()
        self.hostkey = directory / "host_ed25519"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.hostkey)], check=True)
        (directory / "authorized_keys").write_text(authorized_keys)
        (directory / "authorized_keys").chmod(0o600)
        config = directory / "sshd_config"
        # StrictModes off: the test's temporary directories are not the home directory sshd would check
        config.write_text(f"""Port {self.port}
ListenAddress 127.0.0.1
HostKey {self.hostkey}
AuthorizedKeysFile {directory / "authorized_keys"}
PidFile {directory / "sshd.pid"}
StrictModes no
UsePAM no
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
LogLevel VERBOSE
""")
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # its privilege-separation directory
        self.log = directory / "sshd.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(config)], stdout=out,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                socket.create_connection(("127.0.0.1", self.port), 1).close()
                break
            except OSError:
                time.sleep(0.05)
        host_pub = " ".join(Path(f"{self.hostkey}.pub").read_text().split()[:2])
        self.known_hosts = directory / "known_hosts"
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {host_pub}\n")

    def host_fingerprint(self) -> str:
        out = subprocess.run(["ssh-keygen", "-lf", f"{self.hostkey}.pub"], capture_output=True, text=True, check=True)
        return out.stdout.split()[1]

    def login(self, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        user = subprocess.run(["id", "-un"], capture_output=True, text=True, check=True).stdout.strip()
        return run(["ssh", "-F", "none", "-p", str(self.port), "-o", f"UserKnownHostsFile={self.known_hosts}",
                    "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-o", "IdentityFile=none",
                    "-o", "ConnectTimeout=20", f"{user}@127.0.0.1", "true"], env, timeout=60, stdin=subprocess.DEVNULL)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start(home: Path, socket_path: Path | None = None, extra_env: dict[str, str] | None = None) -> AgentProcess:
    """``tokenagent agent``, once its ssh socket is there too (it is bound just after the agent socket)."""
    agent = start_agent(home, socket_path, extra_env=extra_env)
    ssh = Path(f"{agent.socket}.ssh")
    deadline = time.monotonic() + 20
    while not ssh.exists():
        if time.monotonic() > deadline:
            agent.stop()
            raise RuntimeError(f"the agent bound no ssh socket: {agent.log_text()}")
        time.sleep(0.05)
    return agent


__all__ = ["PASSWORD", "Sshd", "faces_home", "need", "run", "ssh_env", "start", "unlock"]
