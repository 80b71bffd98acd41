#!/usr/bin/env python3
"""Cold start of ``tokenagent get`` (what every password command pays) and of ``tokenagent status``
against peers run the same way.

Peers: ``python -c pass`` with the same interpreter in the same plain install (the floor for
any Python tool installed as users install it; the editable .venv starts slower and is shown
apart) and
``ssh-add -l`` (a C client of ssh-agent). Each command is run N times as a fresh process;
medians are compared.

    .venv/bin/python bench/cold_get.py [-n 40]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT, TOKENAGENT, Agent, SshAgent, machine

SCRIPT = """#!{python}
import sys
from tokenagent._cli.entry import main
sys.exit(main())
"""


def plain_install(tmp: Path) -> str:
    """A venv where tokenagent and its dependencies are plain path entries, as in a wheel install (no
    editable-install finder)."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp / "venv")], check=True)
    site = next((tmp / "venv" / "lib").glob("python3*/site-packages"))
    # the source tree, then this venv's site-packages for the dependencies, as plain path entries
    # (a directory named in a .pth file is not scanned for .pth files: no editable-install finder)
    deps = next(p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir())
    (site / "tokenagent-src.pth").write_text(f"{ROOT}\n{deps}\n")
    script = tmp / "venv" / "bin" / "tokenagent"
    script.write_text(SCRIPT.format(python=tmp / "venv" / "bin" / "python"))
    script.chmod(0o755)
    return str(script)


def median_times(commands: dict[str, tuple[list[str], dict[str, str]]], n: int) -> dict[str, float]:
    """The median wall time of each command, run in turns (one of each, n + 3 rounds, the first 3
    dropped), so that a change in the machine's load touches every command alike."""
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(n + 3):
        for name, (cmd, env) in commands.items():
            start = time.perf_counter()
            subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(samples[3:]) for name, samples in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=40)
    args = parser.parse_args()
    agent, ssh = Agent(), SshAgent()
    try:
        get_args = ["get", "v0", "--context", "restic:/srv/repo"]
        with tempfile.TemporaryDirectory() as tmp:
            script = plain_install(Path(tmp))
            t = median_times({
                "plain": ([script, *get_args], agent.env),
                "editable": ([TOKENAGENT, *get_args], agent.env),
                # The floor: the same interpreter in the same plain install (the editable venv's own
                # python starts slower: its site-packages runs the editable-install finder's .pth).
                "bare": ([str(Path(script).with_name("python")), "-c", "pass"], agent.env),
                "editable_bare": ([sys.executable, "-c", "pass"], agent.env),
                "status": ([script, "status"], agent.env),  # the agent verbs' path
                "list": ([script, "list"], agent.env),  # a click command, for comparison
                "ssh_add": (["ssh-add", "-l"], ssh.env),
            }, args.n)
        plain, get, bare, editable_bare = t["plain"], t["editable"], t["bare"], t["editable_bare"]
        status, listing, ssh_add = t["status"], t["list"], t["ssh_add"]
        print(f"cold process time, median of {args.n}, {machine()}")
        print(f"  tokenagent get (installed)  {plain * 1000:7.1f} ms")
        print(f"  tokenagent get (editable)   {get * 1000:7.1f} ms   (the editable-install finder adds"
              f" {(get - plain) * 1000:.0f} ms)")
        print(f"  python -c pass (installed)  {bare * 1000:7.1f} ms   installed get = {plain / bare:.2f}x")
        print(f"  python -c pass (editable)   {editable_bare * 1000:7.1f} ms   (not the floor: the editable"
              " venv's startup)")
        print(f"  ssh-add -l                  {ssh_add * 1000:7.1f} ms   installed get = {plain / ssh_add:.1f}x")
        print(f"  tokenagent status           {status * 1000:7.1f} ms   = {status / bare:.2f}x python -c pass"
              " (goal: at most 3x)")
        print(f"  tokenagent list             {listing * 1000:7.1f} ms   = {listing / bare:.2f}x (through click)")
    finally:
        agent.close()
        ssh.close()


if __name__ == "__main__":
    main()
