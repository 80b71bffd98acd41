#!/usr/bin/env python3
"""An idle agent: how often it wakes up and how much memory it holds, against an idle ssh-agent.

Both run with nothing to do (the agent: one vault, locked; no token). After a settling pause
the wake-ups of every thread are counted for ``-s`` seconds from /proc (voluntary context
switches: each is a thread going to sleep again after it woke), and the resident memory is read.
The agent runs twice: from this repository's editable .venv and from a wheel install (as pip and
pipx install it: bench/cold_get.py's ``plain_install``; the editable-install finder alone costs
about half a MiB). Without pcscd running, the agent's PC/SC watcher looks for it every few seconds; with udev it
gets HID changes as events.

    .venv/bin/python bench/idle_agent.py [-s 10]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from _common import Agent, SshAgent, machine
from cold_get import plain_install


def wakeups(pid: int) -> int:
    total = 0
    for status in Path(f"/proc/{pid}/task").glob("*/status"):
        try:
            for line in status.read_text().splitlines():
                if line.startswith("voluntary_ctxt_switches:"):
                    total += int(line.split()[1])
        except OSError:
            pass  # a thread that ended
    return total


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def idle_figures(pid: int, seconds: float) -> tuple[float, float]:
    time.sleep(3.0)
    before = wakeups(pid)
    time.sleep(seconds)
    return (wakeups(pid) - before) / seconds, rss_mib(pid)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-s", "--seconds", type=float, default=10.0)
    parser.add_argument("--editable-only", action="store_true",
                        help="no wheel install (where pip is missing: the desk guest, bench/idle_agent_desk.py)")
    args = parser.parse_args()
    from tokenagent.discovery import mounted_filesystems

    with tempfile.TemporaryDirectory() as tmp:
        wheel_exe = None if args.editable_only else plain_install(Path(tmp))[0]
        editable, ssh = Agent(unlocked=False), SshAgent()
        wheel = Agent(unlocked=False, exe=wheel_exe) if wheel_exe else None
        try:
            ours = idle_figures(editable.proc.pid, args.seconds)
            installed = idle_figures(wheel.proc.pid, args.seconds) if wheel else None
            theirs = idle_figures(ssh.proc.pid, args.seconds)
        finally:
            editable.close()
            if wheel:
                wheel.close()
            ssh.close()
    disks = len(mounted_filesystems())
    print(f"idle, nothing unlocked, {args.seconds:.0f} s, {machine()}; {disks} mounted filesystem(s) with a UUID")
    if installed:
        print(f"  tokenagent agent  {installed[0]:6.2f} wake-ups/s   {installed[1]:6.1f} MiB resident   (wheel install)")
    print(f"  tokenagent agent  {ours[0]:6.2f} wake-ups/s   {ours[1]:6.1f} MiB resident   (editable .venv)")
    print(f"  ssh-agent         {theirs[0]:6.2f} wake-ups/s   {theirs[1]:6.1f} MiB resident"
          f"   (memory: agent = {(installed or ours)[1] / theirs[1]:.1f}x)")
    print("  goals: no periodic wake-up with udev (at most 1/s without), at most 25 MiB before a token is seen")


if __name__ == "__main__":
    main()
