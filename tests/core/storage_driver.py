"""Runs tokenagent's write commands on a full and on a read-only file system (run by test_storage_errors.py).

Started as root under ``unshare --mount --propagation private``: the tmpfs it mounts on WORK/home is
seen by this process and its children only, and disappears with them. Prints one JSON object:
for each condition ("full", "readonly") and command, the exit code, stderr, and whether every vault
file is byte-for-byte as before and no temporary file is left.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

WORK = Path(sys.argv[1])
HOME = WORK / "home"
PW = WORK / "pw"
ENV = {**os.environ, "TOKENAGENT_HOME": str(HOME), "TOKENAGENT_TEST_KDF": "1"}


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tokenagent._cli.entry", *args], env=ENV, capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL)


def snapshot() -> dict[str, str]:
    out = {}
    for path in sorted(HOME.rglob("*")):
        if path.is_file() and path.name != "filler" and not path.name.endswith(".lock"):
            out[str(path.relative_to(HOME))] = path.read_bytes().hex()
    return out


def must(*args: str) -> None:
    done = cli(*args)
    if done.returncode != 0:
        raise SystemExit(f"setup failed: {args}: {done.stderr}")


def commands(condition: str) -> dict[str, list[str]]:
    pw = str(PW)
    wanted = {
        "init": ["init", "w", "--password", "--password-file", pw],
        "init-recovery": ["init", "r", "--recovery"],
        "enroll": ["enroll", "v", "--password", "--password-file", pw],
        "enroll-recovery": ["enroll", "v", "--recovery", "--password-file", pw],
        "remove-slot": ["remove-slot", "v", "2", "--password-file", pw],
        "drill": ["drill", "v", "--password-file", pw],
        "keyfile-generate": ["keyfile", "generate", str(HOME / "new.keyx")],
        "repair": ["repair", "d"],
        # admin verbs that exist in this tree (added by other changes); tried when present
        "relabel": ["relabel", "v", "1", "new label", "--password-file", pw],
        "passwd": ["passwd", "v", "1", "--password-file", pw],
        "set": ["set", "v", "--allow-raw", "--password-file", pw],
        # rename and delete need no free blocks (they rename files): tried on the read-only file system only
        "rename": ["rename", "v", "v2"],
        "delete": ["delete", "v", "--yes"],
    }
    if condition == "full":
        del wanted["rename"], wanted["delete"]
    helptext = cli("--help").stdout
    return {name: args for name, args in wanted.items() if f"  {args[0]} " in helptext or args[0] == "keyfile"}


def try_all(condition: str) -> dict[str, dict[str, object]]:
    results: dict[str, dict[str, object]] = {}
    for name, args in commands(condition).items():
        before = snapshot()
        done = cli(*args)
        after = snapshot()
        temps = [str(p) for p in HOME.rglob(".*.tmp-*")]
        results[name] = {"args": args, "rc": done.returncode, "stderr": done.stderr, "stdout": done.stdout,
                         "shown_secret": "Recovery key" in done.stdout,
                         "unchanged": before == after, "temps": temps}
    return results


def main() -> None:
    HOME.mkdir(mode=0o700, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(HOME)], check=True)
    PW.write_text("pw\n" * 20)
    must("init", "v", "--password", "--password-file", str(PW))
    must("enroll", "v", "--password", "--password-file", str(PW))
    must("init", "d", "--password", "--password-file", str(PW))
    must("enroll", "d", "--password", "--password-file", str(PW))
    damaged = HOME / "data" / "vaults" / "d.vault"
    damaged.write_bytes(damaged.read_bytes()[:-20])
    out: dict[str, object] = {}
    fd = os.open(HOME / "filler", os.O_WRONLY | os.O_CREAT, 0o600)  # fill every block
    for size in (65536, 4096, 1):
        try:
            while os.write(fd, b"\0" * size):
                pass
        except OSError:
            pass
    os.close(fd)
    out["full"] = try_all("full")
    os.unlink(HOME / "filler")
    subprocess.run(["mount", "-o", "remount,ro", str(HOME)], check=True)
    out["readonly"] = try_all("readonly")
    reads = {name: cli(*args) for name, args in {"slots": ["slots", "v"], "open": ["open", "v", "--password-file",
                                                                                   str(PW)]}.items()}
    out["readonly-reads"] = {name: {"rc": r.returncode, "stderr": r.stderr} for name, r in reads.items()}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
