"""python-fido2's own device tests (tests/device of the sdist of the installed fido2) against a fresh
virtual token, by scripts/fido2_device_suite.py: over the NFC framing through the private pcscd, and
over CTAPHID in process. 0 failed, 0 errors, and every skip explained by what getInfo does not claim
(the script checks that and exits 1 otherwise)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from pcscd import missing

ROOT = Path(__file__).resolve().parents[2]


def run_suite(transport: str) -> str:
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "fido2_device_suite.py"), "--transport", transport],
                          capture_output=True, text=True, timeout=1200, stdin=subprocess.DEVNULL)
    if done.returncode == 2 and "cannot download" in done.stderr:
        pytest.skip(done.stderr.strip())  # no network: a failure under TOKENAGENT_STRICT_SKIPS=1
    assert done.returncode == 0, done.stdout + done.stderr[-6000:]
    match = re.search(rf"^{transport}: (\d+) passed, 0 failed, 0 errors, (\d+) skipped", done.stdout, re.M)
    assert match, done.stdout
    assert int(match.group(1)) >= 40, done.stdout  # the suite ran, not just its skips
    assert "NOT EXPLAINED" not in done.stdout
    return done.stdout


@pytest.mark.timeout(1200)
def test_fido2_device_suite_over_ctaphid() -> None:
    run_suite("hid")


@pytest.mark.pcscd
@pytest.mark.timeout(1200)
def test_fido2_device_suite_over_nfc_through_pcscd() -> None:
    reason = missing()
    if reason:
        pytest.skip(reason)
    run_suite("nfc")
