#!/usr/bin/env python3
"""Cold start of ``tokenagent get`` (what every password command pays) and of the verbs that only
talk to the agent or read vault names (``status``, ``list``, ``lock``, ``events``, shell completion
of a vault name) against peers run the same way.

tokenagent is measured from a wheel install made by pip (compiled modules, pip's console script;
``plain_install``). Peers: ``python -c pass`` with the same interpreter in the same venv (the floor
for any Python tool installed as users install it; the editable .venv starts slower and is shown
apart) and ``ssh-add -l`` (a C client of ssh-agent). Each command is run N times as a fresh
process, in turns; medians are compared. ``--baseline TREE`` times another source tree's get
and agent verbs the same way in the same turns (before/after figures from one run). ``events``
streams until stopped: it is timed from its start to its first event line, while a thread here
makes an event every millisecond (unlock and lock of a vault no other command uses), so up to
about a millisecond of each sample is that wait.

    .venv/bin/python bench/cold_get.py [-n 40] [--baseline TREE]
"""

from __future__ import annotations

import argparse
import base64
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from _common import ROOT, TOKENAGENT, Agent, FramedClient, SshAgent, frame_json, machine

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


Runner = Callable[[], float]  # one fresh run of a command, its wall time


def run_once(cmd: list[str], env: dict[str, str]) -> Runner:
    def run() -> float:
        start = time.perf_counter()
        subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        return time.perf_counter() - start
    return run


def until_first_event(cmd: list[str], env: dict[str, str], agent: Agent, vault: str) -> Runner:
    """``tokenagent events`` from its start to its first line, with an event made every millisecond."""
    key = base64.b64encode(agent.secret).decode()

    def run() -> float:
        stop = threading.Event()

        def storm() -> None:
            with FramedClient(agent.socket) as c:
                while not stop.is_set():
                    c.call(frame_json({"op": "unlock", "vault": vault, "key": key}))
                    c.call(frame_json({"op": "lock", "vault": vault}))
                    time.sleep(0.001)

        thread = threading.Thread(target=storm, daemon=True)
        thread.start()
        try:
            start = time.perf_counter()
            proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
            assert proc.stdout is not None
            line = proc.stdout.readline()
            elapsed = time.perf_counter() - start
            proc.terminate()
            proc.wait()
            proc.stdout.close()
        finally:
            stop.set()
            thread.join()
        if not line:
            raise RuntimeError("tokenagent events ended without an event")
        return elapsed
    return run


def median_times(commands: dict[str, Runner], n: int) -> dict[str, float]:
    """The median wall time of each command, run in turns (one of each, n + 3 rounds, the first 3
    dropped), so that a change in the machine's load touches every command alike."""
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(n + 3):
        for name, run in commands.items():
            times[name].append(run())
    return {name: statistics.median(samples[3:]) for name, samples in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=40)
    parser.add_argument("--baseline", type=Path, help="another source tree of tokenagent (e.g. a git worktree of"
                        " an earlier commit), installed the same way; its get is timed in the same turns")
    args = parser.parse_args()
    agent, ssh = Agent(vaults=3), SshAgent()  # v0 unlocked (get), v1 for lock, v2 for the events storm
    try:
        get_args = ["get", "v0", "--context", "restic:/srv/repo"]
        env = agent.env
        complete = {**env, "_TOKENAGENT_COMPLETE": "bash_complete", "COMP_WORDS": "tokenagent lock v",
                    "COMP_CWORD": "2"}
        with tempfile.TemporaryDirectory() as tmp:
            script, old_script = plain_install(Path(tmp) / "this")
            commands: dict[str, Runner] = {}
            scripts = {"": script}
            if args.baseline:
                scripts["baseline "] = plain_install(Path(tmp) / "baseline", args.baseline)[0]
                commands["baseline"] = run_once([scripts["baseline "], *get_args], env)
            commands.update({
                "plain": run_once([script, *get_args], env),
                "old_pip": run_once([old_script, *get_args], env),
                "editable": run_once([TOKENAGENT, *get_args], env),
                # The floor: the same interpreter in the same plain install (the editable venv's own
                # python starts slower: its site-packages runs the editable-install finder's .pth).
                "bare": run_once([str(Path(script).with_name("python")), "-c", "pass"], env),
                "editable_bare": run_once([sys.executable, "-c", "pass"], env),
                "ssh_add": run_once(["ssh-add", "-l"], ssh.env),
            })
            for prefix, s in scripts.items():
                commands.update({
                    f"{prefix}status": run_once([s, "status"], env),
                    f"{prefix}status_json": run_once([s, "status", "--json"], env),
                    f"{prefix}list": run_once([s, "list"], env),
                    f"{prefix}lock": run_once([s, "lock", "v1"], env),
                    f"{prefix}events": until_first_event([s, "events"], env, agent, "v2"),
                    f"{prefix}complete": run_once([s], complete),  # one TAB (bash; zsh and fish alike)
                    f"{prefix}help": run_once([s, "status", "--help"], env),  # through click, for comparison
                })
            t = median_times(commands, args.n)
        plain, get, bare, editable_bare = t["plain"], t["editable"], t["bare"], t["editable_bare"]
        ssh_add = t["ssh_add"]
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
        print("  the agent verbs (installed; goal: at most 3x python -c pass):"
              + ("                    baseline" if args.baseline else ""))
        for name, label in (("status", "status"), ("status_json", "status --json"), ("list", "list"),
                            ("lock", "lock VAULT"), ("events", "events (to its first event)"),
                            ("complete", "completion of a vault name"),
                            ("help", "status --help (click, for comparison)")):
            line = f"    {label:36} {t[name] * 1000:7.1f} ms   = {t[name] / bare:.2f}x"
            if args.baseline:
                line += f"   {t['baseline ' + name] * 1000:7.1f} ms = {t['baseline ' + name] / bare:.2f}x"
            print(line)
    finally:
        agent.close()
        ssh.close()


if __name__ == "__main__":
    main()
