#!/usr/bin/env python3
"""Cold start of ``tokenagent get`` (what every password command pays) against peers run the same way.

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


def median_time(cmd: list[str], env: dict[str, str], n: int) -> float:
    times = []
    for _ in range(n + 3):
        start = time.perf_counter()
        subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times[3:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=40)
    args = parser.parse_args()
    agent, ssh = Agent(), SshAgent()
    try:
        get_args = ["get", "v0", "--context", "restic:/srv/repo"]
        get = median_time([TOKENAGENT, *get_args], agent.env, args.n)
        with tempfile.TemporaryDirectory() as tmp:
            script = plain_install(Path(tmp))
            plain = median_time([script, *get_args], agent.env, args.n)
            # The floor: the same interpreter in the same plain install (the editable venv's own
            # python starts slower: its site-packages runs the editable-install finder's .pth).
            bare = median_time([str(Path(script).with_name("python")), "-c", "pass"], agent.env, args.n)
            editable_bare = median_time([sys.executable, "-c", "pass"], agent.env, args.n)
        ssh_add = median_time(["ssh-add", "-l"], ssh.env, args.n)
        print(f"cold process time, median of {args.n}, {machine()}")
        print(f"  tokenagent get (installed)  {plain * 1000:7.1f} ms")
        print(f"  tokenagent get (editable)   {get * 1000:7.1f} ms   (the editable-install finder adds"
              f" {(get - plain) * 1000:.0f} ms)")
        print(f"  python -c pass (installed)  {bare * 1000:7.1f} ms   installed get = {plain / bare:.2f}x")
        print(f"  python -c pass (editable)   {editable_bare * 1000:7.1f} ms   (not the floor: the editable"
              " venv's startup)")
        print(f"  ssh-add -l                  {ssh_add * 1000:7.1f} ms   installed get = {plain / ssh_add:.1f}x")
    finally:
        agent.close()
        ssh.close()


if __name__ == "__main__":
    main()
