#!/usr/bin/env python3
"""Cold start of ``tokenagent get`` (what every password command pays) and of ``tokenagent status``
against peers run the same way.

tokenagent is measured from a wheel install made by pip (compiled modules, pip's console script;
``plain_install``). Peers: ``python -c pass`` with the same interpreter in the same venv (the floor
for any Python tool installed as users install it; the editable .venv starts slower and is shown
apart) and ``ssh-add -l`` (a C client of ssh-agent). Each command is run N times as a fresh
process, in turns; medians are compared. ``--baseline TREE`` times another source tree's get
the same way in the same turns (before/after figures from one run).

    .venv/bin/python bench/cold_get.py [-n 40] [--baseline TREE]
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

# What pip 23.0 (Debian 12's python3-pip, and the pip of a venv made with Debian 12's python3 -m venv)
# writes as the console script: its ``import re`` costs every command some milliseconds before our
# code runs. pip >= 23.1 writes the ``removesuffix`` form, which pip itself writes below.
OLD_PIP_SCRIPT = """#!{python}
# -*- coding: utf-8 -*-
import re
import sys
from tokenagent._cli.entry import main
if __name__ == '__main__':
    sys.argv[0] = re.sub(r'(-script\\.pyw|\\.exe)?$', '', sys.argv[0])
    sys.exit(main())
"""


def plain_install(tmp: Path, root: Path = ROOT) -> tuple[str, str]:
    """A wheel install, as pip and pipx make it: a wheel of the tree at ``root`` (``pip wheel --no-deps``) installed by
    pip into a fresh venv (its modules compiled to .pyc, its console script written by pip), and the
    dependencies from this .venv linked into the same site-packages one by one (no .pth files: no
    editable-install finder). Returns the console script pip wrote and the same in pip 23.0's form."""
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, "wheel", "--no-deps", "-w", str(tmp / "wheel"), str(root)], check=True,
                   stdout=subprocess.DEVNULL)
    wheel = next((tmp / "wheel").glob("tokenagent-*.whl"))
    subprocess.run([*pip, "--python", str(venv / "bin" / "python"), "install", "--no-deps", "--no-index",
                    str(wheel)], check=True)
    site = next((venv / "lib").glob("python3*/site-packages"))
    deps = Path(next(p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir()))
    for entry in deps.iterdir():
        if entry.suffix != ".pth" and not entry.name.startswith(("tokenagent", "__editable__")) \
                and not (site / entry.name).exists():
            (site / entry.name).symlink_to(entry)
    assert next(site.glob("tokenagent/__pycache__/fastget.*.pyc"), None), "pip did not compile the package"
    old = venv / "bin" / "tokenagent-pip23"
    old.write_text(OLD_PIP_SCRIPT.format(python=venv / "bin" / "python"))
    old.chmod(0o755)
    return str(venv / "bin" / "tokenagent"), str(old)


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
    parser.add_argument("--baseline", type=Path, help="another source tree of tokenagent (e.g. a git worktree of"
                        " an earlier commit), installed the same way; its get is timed in the same turns")
    args = parser.parse_args()
    agent, ssh = Agent(), SshAgent()
    try:
        get_args = ["get", "v0", "--context", "restic:/srv/repo"]
        with tempfile.TemporaryDirectory() as tmp:
            script, old_script = plain_install(Path(tmp) / "this")
            commands: dict[str, tuple[list[str], dict[str, str]]] = {}
            if args.baseline:
                commands["baseline"] = ([plain_install(Path(tmp) / "baseline", args.baseline)[0], *get_args],
                                        agent.env)
            t = median_times({
                **commands,
                "plain": ([script, *get_args], agent.env),
                "old_pip": ([old_script, *get_args], agent.env),
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
        print(f"  tokenagent get (installed)  {plain * 1000:7.1f} ms   (console script of pip >= 23.1)")
        print(f"  the same, pip 23.0 script   {t['old_pip'] * 1000:7.1f} ms   = {t['old_pip'] / bare:.2f}x python -c"
              " pass (its 'import re')")
        print(f"  tokenagent get (editable)   {get * 1000:7.1f} ms   (the editable-install finder adds"
              f" {(get - plain) * 1000:.0f} ms)")
        if "baseline" in t:
            print(f"  get of {args.baseline}: {t['baseline'] * 1000:.1f} ms = {t['baseline'] / bare:.2f}x python -c pass")
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
