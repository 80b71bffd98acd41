"""systemd's own FIDO2 client against the virtual token over hidraw: LUKS2 enrolment and unlock.

Runs in the desk guest (conftest.py). The token has no PIN and touches itself (``--touch
auto``), so the enrolment asks for no PIN (``--fido2-with-client-pin=no``) and keeps user
presence on (the default, ``--fido2-with-user-presence=yes``): a real key would blink here.
"""

from __future__ import annotations

import contextlib
import subprocess
from pathlib import Path

import pytest
from deskkit import UhidToken, run

pytestmark = [pytest.mark.desk, pytest.mark.timeout(1800)]
PASSPHRASE = "desk-tier-passphrase"
SYSTEMD_CRYPTSETUP = next((p for p in ("/usr/lib/systemd/systemd-cryptsetup", "/lib/systemd/systemd-cryptsetup")
                           if Path(p).exists()), "systemd-cryptsetup")


@pytest.fixture
def luks_loop(tmp_path: Path) -> object:
    image = tmp_path / "luks2.img"
    with open(image, "wb") as f:
        f.truncate(32 << 20)
    key = tmp_path / "passphrase"
    key.write_text(PASSPHRASE)
    # pbkdf2 at a low count for the passphrase slot: Argon2 under TCG would take minutes
    run("cryptsetup", "luksFormat", "--type", "luks2", "--batch-mode", "--pbkdf", "pbkdf2",
        "--pbkdf-force-iterations", "1000", "--key-file", str(key), str(image))
    loop = run("losetup", "--find", "--show", str(image)).stdout.strip()
    try:
        yield loop
    finally:
        for name in ("desk-fido2", "desk-token-only"):
            subprocess.run(["cryptsetup", "close", name], capture_output=True)
        with contextlib.suppress(Exception):
            run("losetup", "-d", loop, check=False)


def test_systemd_cryptenroll_enrols_the_key_and_systemd_cryptsetup_opens_with_it(uhid_token: UhidToken,
                                                                                luks_loop: str) -> None:
    run("systemd-cryptenroll", "--fido2-device=auto", "--fido2-with-client-pin=no", luks_loop,
        env={"PASSWORD": PASSPHRASE})
    dump = run("cryptsetup", "luksDump", luks_loop).stdout
    assert "systemd-fido2" in dump, dump
    run("systemd-cryptenroll", luks_loop)  # lists the slots: password and fido2
    run(SYSTEMD_CRYPTSETUP, "attach", "desk-fido2", luks_loop, "-", "fido2-device=auto,headless=true")
    assert Path("/dev/mapper/desk-fido2").exists()
    run(SYSTEMD_CRYPTSETUP, "detach", "desk-fido2")
    # libcryptsetup's systemd-fido2 token plugin, without any passphrase
    run("cryptsetup", "open", "--token-only", "--token-type", "systemd-fido2", luks_loop, "desk-token-only")
    assert Path("/dev/mapper/desk-token-only").exists()
    run("cryptsetup", "close", "desk-token-only")
