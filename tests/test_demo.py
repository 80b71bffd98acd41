"""README's main command, the demo, runs to its end: the three flows on two virtual keys in a
private pcscd (as root), or the software version elsewhere."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_demo_runs_the_three_flows() -> None:
    env = {**os.environ, "TOKENAGENT_DEMO_NO_SETUP": "1"}
    done = subprocess.run(["bash", "scripts/demo.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    assert "== Done" in out and "Traceback" not in out + done.stderr
    if os.getuid() == 0:  # the virtual-token version: plug, unlock, unplug, backup
        assert "docs: unlocked (slot 2, token in Virtual PCD" in out
        assert "vault 'docs' is locked" in out and "-> released" in out
