"""The private pcscd harness itself: the options it gives pcscd by version, what it says when
pcscd turns clients away, and that a token whose start-up fails leaves no process behind.

pcscd 2.x as Debian 13 builds it asks polkit about every client; without a system D-Bus it
rejects them all unless started with ``--disable-polkit``, an option pcscd 1.9.9 refuses. Only
1.9.9 runs here, so the choice is tested on the help texts of both (the 2.x one is a fake made
after pcsc-lite 2's usage text), and the real pcscd is started with what its own help offers.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from pcscd import PrivatePcscd, TokenProcess, pcscd_help, pcscd_options, refusals

HELP_1_9_9 = """Usage: pcscd options
Options:
  -a, --apdu		log APDU commands and results
  -c, --config		new reader.conf.d path
  -f, --foreground	run in foreground (no daemon),
  -x, --auto-exit	pcscd will quit after 60 seconds of inactivity
  -S, --reader-name-no-serial    do not include the USB serial number in the name
  -I, --reader-name-no-interface do not include the USB interface name in the name
"""

HELP_2_X_FAKE = HELP_1_9_9 + "  --disable-polkit	disable polkit support\n"

LOG_2_X_FAKE = """00000016 pcscdaemon.c:132:SVCServiceRunLoop() A new context thread creation is requested: 13
00014180 auth.c:143:IsClientAuthorized() Process 18482 (user: 0) is NOT authorized for action: access_pcsc
00000380 winscard_svc.c:355:ContextThread() Rejected unauthorized PC/SC client
00000111 winscard_svc.c:1096:MSGCleanupClient() Thread is stopping: dwClientID=13
"""


def test_disable_polkit_only_where_pcscd_offers_it() -> None:
    assert pcscd_options(HELP_1_9_9) == []
    assert pcscd_options(HELP_2_X_FAKE) == ["--disable-polkit"]


def test_the_installed_pcscd_gets_what_its_help_offers() -> None:
    if not Path("/usr/sbin/pcscd").exists():
        pytest.skip("pcscd is not installed (Debian package pcscd)")
    version = subprocess.run(["pcscd", "--version"], capture_output=True, text=True).stdout
    options = pcscd_options(pcscd_help())
    if "version 1." in version:
        assert options == []
    else:
        assert options == ["--disable-polkit"], version


def test_refusals_are_quoted_from_pcscds_log() -> None:
    quoted = refusals(LOG_2_X_FAKE)
    assert quoted.splitlines() == LOG_2_X_FAKE.splitlines()[1:3]
    assert refusals("00000016 pcscdaemon.c:132:SVCServiceRunLoop() A new context thread\n") == ""


def _processes_with(text: str) -> list[int]:
    """The `virtual-token run` processes whose command line holds ``text``."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if text in cmdline and "virtual-token run" in cmdline:
                found.append(int(proc.name))
    return found


def test_a_token_whose_start_fails_is_stopped(pcscd: PrivatePcscd, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """pcscd turning clients away (as 2.x with polkit does) makes the token's start-up fail after its
    process runs: the process is stopped, the error quotes pcscd's log, and the reader is free again."""
    state = tmp_path / "refused.json"
    with open(pcscd.log, "a") as log:  # what pcscd 2.x logs when polkit says no
        log.write(LOG_2_X_FAKE)

    def turned_away(count: int, timeout: float = 15.0) -> None:
        raise RuntimeError(f"pcscd did not show {count} card(s): no readers{pcscd.explain()}")

    monkeypatch.setattr(pcscd, "wait_cards", turned_away)
    with pytest.raises(RuntimeError, match="Rejected unauthorized PC/SC client"):
        TokenProcess(pcscd, state, 7701)
    assert _processes_with(str(state)) == []
    assert pcscd.tokens == []
    monkeypatch.undo()
    again = TokenProcess(pcscd, tmp_path / "next.json", 7702)  # the harness goes on
    assert _processes_with(str(tmp_path / "next.json"))
    pcscd.stop()  # stops the tokens still in it, too
    assert _processes_with(str(tmp_path / "next.json")) == [] and again.proc.poll() is not None


def test_a_token_that_cannot_start_says_why(pcscd: PrivatePcscd, tmp_path: Path) -> None:
    """`virtual-token run` exiting at once (a state file of another token) is reported with its log."""
    state = tmp_path / "other.json"
    first = TokenProcess(pcscd, state, 7711)
    first.remove()
    with pytest.raises(RuntimeError, match="holds token 7711, not 7712: give its --serial"):
        TokenProcess(pcscd, state, 7712)
    assert _processes_with(str(state)) == []
