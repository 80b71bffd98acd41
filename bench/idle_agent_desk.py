#!/usr/bin/env python3
"""An idle agent on a machine with mounted disks and udev: bench/idle_agent.py in the desk guest.

The container the other benches run in has no /dev/disk/by-uuid, so the agent's key-disk watch
finds no mounted filesystem there and never reads a vault at start. The desk guest (Debian's
kernel under QEMU, udev running, its Python image mounted from an ext4 disk with a by-uuid link)
is a desk in that respect: this boots it once and runs bench/idle_agent.py there (the editable
.venv only: the guest's Python image has no pip for a wheel install).

    .venv/bin/python bench/idle_agent_desk.py [-s 10]     # root, qemu, a kernel: as scripts/desk.sh
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "desk")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-s", "--seconds", type=float, default=10.0)
    args = parser.parse_args()
    from guest import boot_script, guest_log

    out = boot_script(f"bench/idle_agent.py --editable-only -s {args.seconds:g}", "idle_agent_desk")
    log = (out / "guest.log").read_text(errors="replace") if (out / "guest.log").exists() else ""
    lines = [line for line in log.splitlines() if line.startswith(("idle,", "  "))]
    if not lines:
        sys.exit(f"idle_agent_desk: the guest gave no result:\n{guest_log(out)}")
    print("in the desk guest (QEMU TCG):")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
