"""The recipes of docs/integrations.md, run with the real tools against a running agent.

Each tool gets its key from ``tokenagent`` (``get --context``, ``keepass exec``,
``cryptomator keys``) served by a real ``tokenagent agent``. The vault's slot is a FIDO2
virtual token in a private pcscd: plugging it in is what unlocks the vault in the agent,
pulling it out is what locks it, and each test checks that the tool then fails cleanly
with tokenagent's message on its error output.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from agentkit import AgentProcess, cli, private_home, start_agent
from pcscd import PrivatePcscd, TokenProcess

from tokenagent.client import AgentClient
from tokenagent.integrations import cryptomator as cm

BIN = str(Path(sys.executable).parent)
LOCKED = "is locked"


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} is not installed (.ci/apt-packages.txt lists its Debian package)")
    return path


class Tools:
    """Runs commands as a user's shell would: tokenagent on PATH, the agent's socket in the env."""

    def __init__(self, agent: AgentProcess, token: TokenProcess, pcscd: PrivatePcscd, tmp: Path) -> None:
        self.agent = agent
        self.token = token
        self.tmp = tmp
        self.env = {**os.environ, **agent.env(), **pcscd.env, "TOKENAGENT_HOME": str(agent.home),
                    "PATH": BIN + os.pathsep + os.environ.get("PATH", "")}

    def run(self, *args: str, stdin: str | bytes | None = None, env: dict[str, str] | None = None,
            check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(list(args), env={**self.env, **(env or {})}, capture_output=True, timeout=timeout,
                              input=stdin.encode() if isinstance(stdin, str) else stdin, cwd=self.tmp)
        result = subprocess.CompletedProcess(done.args, done.returncode, done.stdout.decode(errors="replace"),
                                             done.stderr.decode(errors="replace"))
        if check:
            assert result.returncode == 0, f"{args}: {result.stdout}\n{result.stderr}"
        return result

    def sh(self, script: str, **kw: object) -> subprocess.CompletedProcess[str]:
        return self.run("bash", "-c", "set -euo pipefail\n" + script, **kw)  # type: ignore[arg-type]

    def _wait(self, vault: str, unlocked: bool) -> None:
        deadline = time.monotonic() + 30
        with AgentClient(self.agent.socket) as client:
            while {v["vault"]: v["unlocked"] for v in client.status()["vaults"]}.get(vault) != unlocked:
                assert time.monotonic() < deadline, f"vault {vault} did not become {'un' if unlocked else ''}locked"
                time.sleep(0.1)

    def unlock(self, vault: str = "backup") -> None:
        """Plug the token in (again): the agent unlocks the vault."""
        if self.token.plugged:
            self.lock("backup")  # out, until the agent has seen it leave (vault "backup" locked)
        self.token.plug()
        self._wait(vault, True)

    def lock(self, vault: str = "backup") -> None:
        """Pull the token out: the agent locks the vault."""
        self.token.unplug()
        self._wait(vault, False)


@pytest.fixture
def tools(pcscd: PrivatePcscd, tokens: list[TokenProcess], tmp_path: Path) -> Iterator[Tools]:
    home = private_home(tmp_path, "[agent]\nremoval_grace = 0.2\n")
    token = TokenProcess(pcscd, tmp_path / "token.json", 6001)
    tokens.append(token)
    # a generated key: only per-tool subkeys leave the agent
    done = cli(home, "init", "backup", "--fido2", env=pcscd.env)
    assert done.returncode == 0, done.stderr
    token.unplug()
    agent = start_agent(home, extra_env=pcscd.env)
    try:
        t = Tools(agent, token, pcscd, tmp_path)
        t.unlock()
        yield t
    finally:
        agent.stop()


def _unlock_later(tools: Tools, delay: float) -> threading.Thread:
    def later() -> None:
        time.sleep(delay)
        tools.unlock()

    thread = threading.Thread(target=later, daemon=True)
    thread.start()
    return thread


# --- restic -----------------------------------------------------------------------------------

def test_restic_password_command(tools: Tools) -> None:
    need("restic")
    repo = tools.tmp / "restic-repo"
    data = tools.tmp / "data"
    data.mkdir()
    (data / "report.txt").write_text("quarterly report\n")
    env = {"RESTIC_REPOSITORY": str(repo),
           "RESTIC_PASSWORD_COMMAND": f"tokenagent get backup --context restic:{repo}",
           "RESTIC_CACHE_DIR": str(tools.tmp / "restic-cache")}
    tools.run("restic", "init", env=env)
    tools.run("restic", "backup", "--quiet", str(data), env=env)
    tools.run("restic", "restore", "latest", "--target", str(tools.tmp / "restored"), env=env)
    assert (tools.tmp / "restored" / str(data).lstrip("/") / "report.txt").read_text() == "quarterly report\n"

    other = {**env, "RESTIC_PASSWORD_COMMAND": "tokenagent get backup --context restic:/elsewhere"}
    wrong = tools.run("restic", "snapshots", env=other, check=False)
    assert wrong.returncode != 0 and "wrong password" in wrong.stderr  # another context, another key

    tools.lock()
    locked = tools.run("restic", "snapshots", env=env, check=False)
    assert locked.returncode != 0 and LOCKED in locked.stderr and "tokenagent unlock backup" in locked.stderr

    waiting = {**env, "RESTIC_PASSWORD_COMMAND": f"tokenagent get backup --context restic:{repo} --wait 30"}
    thread = _unlock_later(tools, 1.0)
    assert "1 snapshots" in tools.run("restic", "snapshots", env=waiting).stdout
    thread.join()


# --- borg -------------------------------------------------------------------------------------

def test_borg_passcommand(tools: Tools) -> None:
    need("borg")
    repo = tools.tmp / "borg-repo"
    data = tools.tmp / "data"
    data.mkdir()
    (data / "notes.txt").write_text("borg was here\n")
    env = {"BORG_REPO": str(repo), "BORG_PASSCOMMAND": f"tokenagent get backup --context borg:{repo}",
           "BORG_BASE_DIR": str(tools.tmp / "borg-base"), "BORG_DISPLAY_PASSPHRASE": "no"}
    tools.run("borg", "init", "--encryption=repokey-blake2", env=env)
    tools.run("borg", "create", "::first", "data", env=env)
    assert "first" in tools.run("borg", "list", env=env).stdout
    out = tools.tmp / "out"
    out.mkdir()
    subprocess.run(["borg", "extract", "::first"], env={**tools.env, **env}, cwd=out, check=True,
                   capture_output=True)
    assert (out / "data" / "notes.txt").read_text() == "borg was here\n"

    tools.lock()
    locked = tools.run("borg", "list", env=env, check=False)
    assert locked.returncode != 0 and LOCKED in locked.stderr


# --- gocryptfs ----------------------------------------------------------------------------------

def _fuse_usable() -> bool:
    return os.path.exists("/dev/fuse") and os.access("/dev/fuse", os.R_OK | os.W_OK) and \
        shutil.which("fusermount3") is not None


def test_gocryptfs_extpass(tools: Tools) -> None:
    need("gocryptfs")
    cipher = tools.tmp / "cipher"
    cipher.mkdir()
    extpass = f"tokenagent get backup --context gocryptfs:{cipher}"
    tools.run("gocryptfs", "-init", "-q", "-scryptn", "10", "-extpass", extpass, str(cipher))
    tools.run("gocryptfs", "-fsck", "-q", "-extpass", extpass, str(cipher))  # decrypts the master key and checks
    wrong = tools.run("gocryptfs", "-fsck", "-q", "-extpass", "tokenagent get backup --context gocryptfs:/other",
                      str(cipher), check=False)
    assert wrong.returncode == 12  # gocryptfs: wrong password

    tools.lock()
    locked = tools.run("gocryptfs", "-fsck", "-q", "-extpass", extpass, str(cipher), check=False)
    assert locked.returncode != 0 and LOCKED in locked.stderr


def test_gocryptfs_mount_through_fuse(tools: Tools) -> None:
    need("gocryptfs")
    if not _fuse_usable():
        pytest.skip("optional: FUSE (/dev/fuse, fusermount3) is not usable here; the -fsck test covers the key")
    cipher, plain = tools.tmp / "cipher", tools.tmp / "plain"
    cipher.mkdir()
    plain.mkdir()
    extpass = f"tokenagent get backup --context gocryptfs:{cipher}"
    tools.run("gocryptfs", "-init", "-q", "-scryptn", "10", "-extpass", extpass, str(cipher))
    tools.run("gocryptfs", "-q", "-extpass", extpass, str(cipher), str(plain))
    try:
        (plain / "secret.txt").write_text("behind a token\n")
    finally:
        tools.run("fusermount3", "-u", str(plain))
    assert not (plain / "secret.txt").exists() and len(list(cipher.iterdir())) == 3
    tools.run("gocryptfs", "-q", "-extpass", extpass, str(cipher), str(plain))
    try:
        assert (plain / "secret.txt").read_text() == "behind a token\n"
    finally:
        tools.run("fusermount3", "-u", str(plain))
    tools.lock()
    plain2 = tools.tmp / "plain2"
    plain2.mkdir()
    locked = tools.run("gocryptfs", "-q", "-extpass", extpass, str(cipher), str(plain2), check=False)
    assert locked.returncode != 0 and LOCKED in locked.stderr and not list(plain2.iterdir())


# --- imported secrets: the tools' existing passwords, kept behind the token -----------------------

def test_imported_passwords_for_restic_borg_and_gocryptfs(tools: Tools) -> None:
    """docs/integrations.md "Moving an existing password": each tool made with a password, the
    password imported (from a file, with its newline, and from standard input, without), and the
    tool run with plain 'tokenagent get VAULT' as its password command."""
    for tool in ("restic", "borg", "gocryptfs"):
        need(tool)
    pw_file = tools.tmp / "restic-password.txt"
    pw_file.write_text("correct horse battery staple\n")
    repo, data = tools.tmp / "restic-repo", tools.tmp / "data"
    data.mkdir()
    (data / "report.txt").write_text("quarterly report\n")
    cache = {"RESTIC_CACHE_DIR": str(tools.tmp / "restic-cache"), "RESTIC_REPOSITORY": str(repo)}
    tools.run("restic", "init", env={**cache, "RESTIC_PASSWORD_FILE": str(pw_file)})
    tools.run("restic", "backup", "--quiet", str(data), env={**cache, "RESTIC_PASSWORD_FILE": str(pw_file)})
    borg_env = {"BORG_REPO": str(tools.tmp / "borg-repo"), "BORG_BASE_DIR": str(tools.tmp / "borg-base"),
                "BORG_DISPLAY_PASSPHRASE": "no"}
    tools.run("borg", "init", "--encryption=repokey-blake2", env={**borg_env, "BORG_PASSPHRASE": "borg pass phrase"})
    cipher = tools.tmp / "cipher"
    cipher.mkdir()
    go_pw = tools.tmp / "go-pw"
    go_pw.write_text("gocryptfs password\n")
    tools.run("gocryptfs", "-init", "-q", "-scryptn", "10", "-passfile", str(go_pw), str(cipher))

    tools.run("tokenagent", "init", "restic", "--fido2", "--import-secret", str(pw_file))  # the file, as it is
    tools.run("tokenagent", "init", "borg", "--fido2", "--import-secret", "-", stdin="borg pass phrase\n")
    tools.run("tokenagent", "init", "go", "--fido2", "--import-secret", str(go_pw))
    tools.unlock("restic")  # plugging the token in opens them all, in name order: restic is the last
    assert tools.run("tokenagent", "get", "restic").stdout == "correct horse battery staple\n"
    assert tools.run("tokenagent", "get", "borg").stdout == "borg pass phrase\n"  # stdin's newline was dropped

    restic = {**cache, "RESTIC_PASSWORD_COMMAND": "tokenagent get restic"}
    assert "1 snapshots" in tools.run("restic", "snapshots", env=restic).stdout
    tools.run("restic", "check", "--quiet", env=restic)
    tools.run("borg", "create", "::first", "data", env={**borg_env, "BORG_PASSCOMMAND": "tokenagent get borg"})
    assert "first" in tools.run("borg", "list", env={**borg_env, "BORG_PASSCOMMAND": "tokenagent get borg"}).stdout
    tools.run("gocryptfs", "-fsck", "-q", "-extpass", "tokenagent get go", str(cipher))
    wrong = tools.run("gocryptfs", "-fsck", "-q", "-extpass", "tokenagent get borg", str(cipher), check=False)
    assert wrong.returncode == 12  # another vault's password is refused: the check above meant it

    tools.lock("restic")
    locked = tools.run("restic", "snapshots", env=restic, check=False)
    assert locked.returncode != 0 and LOCKED in locked.stderr and "plug in its token" in locked.stderr


# --- cryptsetup (LUKS2 on a file) ------------------------------------------------------------

LUKS_FAST = "--pbkdf pbkdf2 --pbkdf-force-iterations 1000"  # the tokenagent key is already 256 random bits


def test_cryptsetup_luks2_key_file_from_stdin(tools: Tools) -> None:
    need("cryptsetup")
    img = tools.tmp / "disk.img"
    with open(img, "wb") as f:
        f.truncate(20 * 1024 * 1024)
    get = f"tokenagent get backup --context luks:{img} --format raw"
    tools.sh(f"{get} | cryptsetup luksFormat --type luks2 --batch-mode {LUKS_FAST} --key-file=- {img}")
    tools.sh(f"{get} | cryptsetup open --test-passphrase --key-file=- {img}")
    # a second keyslot holding the subkey of another context (e.g. for a second machine)
    tools.sh(f"{get} | cryptsetup luksAddKey --batch-mode {LUKS_FAST} --key-file=- {img} "
             f"<(tokenagent get backup --context luks:{img}:second --format raw)")
    tools.sh(f"tokenagent get backup --context luks:{img}:second --format raw"
             f" | cryptsetup open --test-passphrase --key-file=- {img}")
    wrong = tools.sh(f"tokenagent get backup --context luks:/other --format raw"
                     f" | cryptsetup open --test-passphrase --key-file=- {img}", check=False)
    assert wrong.returncode != 0 and "No key available" in wrong.stderr
    dump = tools.run("cryptsetup", "luksDump", str(img)).stdout
    assert dump.count("luks2") >= 2  # two keyslots

    tools.lock()
    locked = tools.sh(f"{get} | cryptsetup open --test-passphrase --key-file=- {img}", check=False)
    assert locked.returncode != 0 and LOCKED in locked.stderr


# --- KeePass: keepassxc-cli and pykeepass ------------------------------------------------------

def test_keepassxc_composite_key(tools: Tools) -> None:
    need("keepassxc-cli")
    db = tools.tmp / "docs.kdbx"
    tools.run("tokenagent", "keepass", "exec", "backup", "--", "keepassxc-cli", "db-create", "-q", "-p", "-t", "100",
              "--set-key-file", "{keyfile}", str(db), stdin="db password\ndb password\n")
    tools.run("tokenagent", "keepass", "exec", "backup", "--", "keepassxc-cli", "mkdir", "-q", "-k", "{keyfile}",
              str(db), "Servers", stdin="db password\n")
    listing = tools.run("tokenagent", "keepass", "exec", "backup", "--", "keepassxc-cli", "ls", "-q",
                        "-k", "{keyfile}", str(db), stdin="db password\n")
    assert "Servers/" in listing.stdout
    assert list(tools.tmp.glob("*.keyx")) == []  # the key file never touched the disk
    password_only = tools.run("keepassxc-cli", "ls", "-q", str(db), stdin="db password\n", check=False)
    assert password_only.returncode != 0  # the password alone does not open it

    tools.lock()
    locked = tools.run("tokenagent", "keepass", "exec", "backup", "--", "keepassxc-cli", "ls", "-q",
                       "-k", "{keyfile}", str(db), stdin="db password\n", check=False)
    assert locked.returncode == 7 and LOCKED in locked.stderr


def test_pykeepass_database_opens_in_keepassxc(tools: Tools) -> None:
    need("keepassxc-cli")
    from pykeepass import PyKeePass, create_database

    keyfile = tools.run("tokenagent", "keepass", "keyfile", "backup").stdout.encode()
    db = tools.tmp / "py.kdbx"
    kp = create_database(str(db), password="db password", keyfile=io.BytesIO(keyfile))
    kp.add_entry(kp.root_group, "mail", "alice", "hunter2")
    kp.save()
    reopened = PyKeePass(str(db), password="db password", keyfile=io.BytesIO(keyfile))
    assert reopened.find_entries(title="mail", first=True).username == "alice"
    shown = tools.run("tokenagent", "keepass", "exec", "backup", "--", "keepassxc-cli", "show", "-q",
                      "-k", "{keyfile}", str(db), "mail", stdin="db password\n")
    assert "alice" in shown.stdout
    other = tools.run("tokenagent", "keepass", "keyfile", "backup", "--name", "other").stdout.encode()
    as_json = json.loads(tools.run("tokenagent", "keepass", "keyfile", "backup", "--json").stdout)
    assert as_json["ok"] and as_json["encoding"] == "text" and as_json["data"].encode() == keyfile
    from pykeepass.exceptions import CredentialsError

    with pytest.raises(CredentialsError):  # another key file name, another key
        PyKeePass(str(db), password="db password", keyfile=io.BytesIO(other))


def test_keyfile_is_not_written_to_a_terminal_or_over_a_file(tools: Tools) -> None:
    out = tools.tmp / "k.keyx"
    tools.run("tokenagent", "keepass", "keyfile", "backup", "--output", str(out))
    assert (out.stat().st_mode & 0o777) == 0o400
    written = json.loads(tools.run("tokenagent", "keepass", "keyfile", "backup", "--output",
                                   str(tools.tmp / "j.keyx"), "--json").stdout)
    assert written == {"ok": True, "vault": "backup", "context": "keepass:keyfile", "written": str(tools.tmp / "j.keyx")}
    again = tools.run("tokenagent", "keepass", "keyfile", "backup", "--output", str(out), check=False)
    assert again.returncode != 0 and "never overwrites" in again.stderr
    no_placeholder = tools.run("tokenagent", "keepass", "exec", "backup", "--", "true", check=False)
    assert no_placeholder.returncode == 2 and "{keyfile}" in no_placeholder.stderr


# --- Cryptomator ----------------------------------------------------------------------------

CM_PASSWORD = "cryptomator password"


def pycryptomator(tools: Tools, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return tools.run(sys.executable, "-m", "pycryptomator", *args, check=check)


def test_cryptomator_adopt_serve_export(tools: Tools) -> None:
    vault = tools.tmp / "cloud" / "vault"
    vault.mkdir(parents=True)
    pycryptomator(tools, "--init", "--password", CM_PASSWORD, str(vault))
    (tools.tmp / "plan.txt").write_text("the plan\n")
    pycryptomator(tools, "--password", CM_PASSWORD, str(vault), "encrypt", str(tools.tmp / "plan.txt"), "/plan.txt")
    cm_pw = tools.tmp / "cm-pw"
    cm_pw.write_text(CM_PASSWORD + "\n")

    adopted = tools.run("tokenagent", "cryptomator", "adopt", str(vault), "--name", "cloud", "--fido2",
                        "--cryptomator-password-file",
                        str(cm_pw))
    assert "moved out of the vault folder" in adopted.stdout
    left = json.loads((vault / cm.MASTERKEY_NAME).read_text())
    assert list(left) == ["tokenagent"]  # a placeholder: a cloud attacker now lacks the key material
    assert pycryptomator(tools, "--password", CM_PASSWORD, str(vault), "ls", "/", check=False).returncode != 0

    tools.unlock("cloud")
    enc, mac = tools.run("tokenagent", "cryptomator", "keys", "cloud", "--format", "pycryptomator").stdout.split()
    listing = pycryptomator(tools, "--master-keys", enc, mac, str(vault), "ls", "/")
    raw = json.loads(tools.run("tokenagent", "cryptomator", "keys", "cloud", "--format", "raw", "--json").stdout)
    assert raw["encoding"] == "base64" and len(base64.b64decode(raw["data"])) == 64
    assert "plan.txt" in listing.stdout
    content = pycryptomator(tools, "--master-keys", enc, mac, str(vault), "decrypt", "/plan.txt", "-")
    assert "the plan" in content.stdout

    new_pw = tools.tmp / "new-pw"
    new_pw.write_text("a new password\n")
    exported = tools.tmp / "masterkey.cryptomator"
    tools.run("tokenagent", "cryptomator", "export-masterkey", "cloud", str(exported), "--new-password-file",
              str(new_pw))
    copy = tools.tmp / "copy"
    shutil.copytree(vault, copy)
    shutil.copy(exported, copy / cm.MASTERKEY_NAME)
    official = pycryptomator(tools, "--password", "a new password", str(copy), "decrypt", "/plan.txt", "-")
    assert "the plan" in official.stdout

    tools.lock("cloud")
    locked = tools.run("tokenagent", "cryptomator", "keys", "cloud", check=False)
    assert locked.returncode == 7 and LOCKED in locked.stderr


def test_cryptomator_adopt_with_a_wrong_password_changes_nothing(tools: Tools) -> None:
    vault = tools.tmp / "vault"
    vault.mkdir()
    pycryptomator(tools, "--init", "--password", CM_PASSWORD, str(vault))
    before = sorted(p.name for p in vault.iterdir())
    wrong = tools.tmp / "wrong"
    wrong.write_text("not it\n")
    done = tools.run("tokenagent", "cryptomator", "adopt", str(vault), "--name", "cloud", "--fido2",
                     "--cryptomator-password-file",
                     str(wrong), check=False)
    assert done.returncode == 4 and "wrong Cryptomator password" in done.stderr
    assert sorted(p.name for p in vault.iterdir()) == before
    assert "cloud" not in tools.run("tokenagent", "list").stdout


def test_cryptomator_adopted_twice_is_refused(tools: Tools) -> None:
    vault = tools.tmp / "vault"
    vault.mkdir()
    pycryptomator(tools, "--init", "--password", CM_PASSWORD, str(vault))
    cm_pw = tools.tmp / "cm-pw"
    cm_pw.write_text(CM_PASSWORD + "\n")
    args = ["--fido2", "--cryptomator-password-file", str(cm_pw)]
    tools.run("tokenagent", "cryptomator", "adopt", str(vault), "--name", "first", *args)
    again = tools.run("tokenagent", "cryptomator", "adopt", str(vault), "--name", "second", *args, check=False)
    assert again.returncode == 3 and "placeholder" in again.stderr
    assert (tools.agent.home / "data" / "cryptomator" / "first.masterkey.cryptomator").exists()
