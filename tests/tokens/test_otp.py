"""The YubiKey OTP (HMAC-SHA1 challenge-response) factor against the virtual token's OTP applet."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from pathlib import Path
from typing import Any

import pytest
from agentkit import cli, private_home
from factor_conformance import TokenPairConformance  # type: ignore[import-not-found]
from pcscd import PrivatePcscd, TokenProcess
from scripted import context  # type: ignore[import-not-found]
from ykman.pcsc import ScardSmartCardConnection
from yubikit.yubiotp import SLOT, HmacSha1SlotConfiguration, YubiOtpSession

from tokenagent.drivers.otp import OtpFactor
from tokenagent.errors import Cancelled, NotMine, UsageError
from tokenagent.factors.base import FactorContext
from tokenagent.virtual.provider import VirtualDevices
from tokenagent.virtual.token import VirtualToken


def token(tmp_path: Path, serial: int) -> VirtualToken:
    return VirtualToken(tmp_path / f"otp-{serial}.json", serial=serial)


def ctx_for(*tokens: VirtualToken, force: bool = False, confirm: bool = False) -> FactorContext:
    ctx = context()
    ctx.devices = VirtualDevices(list(tokens))
    ctx.force = force
    ctx.ui.confirm = lambda question: confirm  # type: ignore[method-assign]
    return ctx


def program(tok: VirtualToken, key: bytes, slot: int = 2, touch: bool = False) -> None:
    session = YubiOtpSession(ScardSmartCardConnection(tok.connection()))
    session.put_configuration(SLOT(slot), HmacSha1SlotConfiguration(key).require_touch(touch))


class TestOtpConformance(TokenPairConformance):
    factor_type = "otp"
    serials = (501, 502)

    def make_token(self, serial: int) -> VirtualToken:
        tok = token(self.tmp, serial)
        program(tok, os.urandom(20))
        return tok

    def context_for(self, tok: VirtualToken) -> FactorContext:
        return ctx_for(tok)

    def enroll_options(self) -> dict[str, Any]:
        return {"otp_slot": 2}


def test_secret_is_the_hmac_of_the_slot_key(tmp_path: Path) -> None:
    tok = token(tmp_path, 511)
    key = os.urandom(20)
    program(tok, key, slot=1)
    factor, secret = OtpFactor.enroll(ctx_for(tok), {"otp_slot": 1})
    assert isinstance(factor, OtpFactor) and factor.serial == 511 and factor.slot == 1
    assert bytes(secret) == hmac.digest(key, factor.challenge, hashlib.sha1)
    # another key programmed with the same secret is a working backup (as with ykman/KeePassXC)
    backup = token(tmp_path, 512)
    program(backup, key, slot=1)
    copy = OtpFactor(1, factor.challenge, None, False)
    assert copy.unlock(ctx_for(backup)) == secret
    with pytest.raises(NotMine):  # a slot enrolled from one key is that key's (its serial)
        factor.unlock(ctx_for(backup))
    shared, shared_secret = OtpFactor.enroll(ctx_for(tok), {"otp_slot": 1, "otp_any_key": True})
    assert shared.serial is None and shared.unlock(ctx_for(backup)) == shared_secret  # --otp-any-key


def test_programming_asks_first_and_keeps_the_slot_when_refused(tmp_path: Path) -> None:
    tok = token(tmp_path, 521)
    key = os.urandom(20)
    program(tok, key)
    with pytest.raises(Cancelled, match="was not changed"):
        OtpFactor.enroll(ctx_for(tok, confirm=False), {"otp_slot": 2, "otp_program": True})
    kept, secret = OtpFactor.enroll(ctx_for(tok), {"otp_slot": 2})
    assert bytes(secret) == hmac.digest(key, kept.challenge, hashlib.sha1)  # type: ignore[attr-defined]
    new, new_secret = OtpFactor.enroll(ctx_for(tok, confirm=True), {"otp_slot": 2, "otp_program": True})
    assert new.unlock(ctx_for(tok)) == new_secret
    assert kept.unlock(ctx_for(tok)) != secret  # the old secret is gone, as the question said


def test_empty_slot_and_absent_key(tmp_path: Path) -> None:
    tok = token(tmp_path, 531)
    with pytest.raises(UsageError, match="--otp-program"):
        OtpFactor.enroll(ctx_for(tok), {"otp_slot": 1})
    program(tok, os.urandom(20))
    factor, _ = OtpFactor.enroll(ctx_for(tok), {})
    with pytest.raises(NotMine, match="YubiKey 531 is not plugged in"):
        factor.unlock(ctx_for(token(tmp_path, 532)))


def test_touch_slot_asks_for_a_touch(tmp_path: Path) -> None:
    tok = token(tmp_path, 541)
    program(tok, os.urandom(20), touch=True)
    ctx = ctx_for(tok)
    notices: list[str] = []
    ctx.ui.notify = lambda event, message: notices.append(event)  # type: ignore[method-assign]
    factor, secret = OtpFactor.enroll(ctx, {})
    assert factor.touch and "touch" in notices and "touch" in factor.describe()


def test_otp_slot_through_pcscd_and_the_cli(pcscd: PrivatePcscd, tokens: list[TokenProcess], tmp_path: Path) -> None:
    home = private_home(tmp_path)
    tok = TokenProcess(pcscd, tmp_path / "otp.json", 551)
    tokens.append(tok)
    refused = cli(home, "init", "docs", "--otp", "--otp-program", env=pcscd.env)
    assert refused.returncode == 9 and "--force" in refused.stderr  # no terminal to confirm at
    done = cli(home, "init", "docs", "--otp", "--otp-program", "--force", "--json", env=pcscd.env)
    assert done.returncode == 0, done.stderr
    opened = cli(home, "open", "docs", "--reveal", "--json", env=pcscd.env)
    assert opened.returncode == 0, opened.stderr
    slots = json.loads(cli(home, "slots", "docs", "--json", env=pcscd.env).stdout)["slots"]
    assert "YubiKey 551" in slots[0]["describe"]
    tok.unplug()
    absent = cli(home, "open", "docs", env=pcscd.env)
    assert absent.returncode == 10 and "YubiKey 551 is not plugged in" in absent.stderr


def test_rolling_factor_prepares_its_next_challenge(tmp_path: Path) -> None:
    tok = token(tmp_path, 561)
    key = os.urandom(20)
    program(tok, key)
    factor, secret = OtpFactor.enroll(ctx_for(tok), {"otp_rolling": True})
    assert isinstance(factor, OtpFactor) and factor.params()["rolling"] is True and "rolling" in factor.describe()
    assert factor.renewal() is None  # nothing prepared before an unlock
    assert factor.unlock(ctx_for(tok)) == secret
    renewal = factor.renewal()
    assert renewal is not None and factor.renewal() is None  # taken once
    fresh, fresh_secret = renewal
    assert isinstance(fresh, OtpFactor) and fresh.rolling and fresh.challenge != factor.challenge
    assert bytes(fresh_secret) == hmac.digest(key, fresh.challenge, hashlib.sha1)
    assert OtpFactor.from_params(fresh.params()).unlock(ctx_for(tok)) == fresh_secret
    assert factor.unlock(ctx_for(tok)) == secret  # the key is unchanged: the old wrap still opens
    plain, _ = OtpFactor.enroll(ctx_for(tok), {})
    plain.unlock(ctx_for(tok))
    assert "rolling" not in plain.params() and plain.renewal() is None


def test_rolling_challenge_through_the_cli(pcscd: PrivatePcscd, tokens: list[TokenProcess], tmp_path: Path) -> None:
    """Every open, drill and agent unlock re-wraps the slot under a fresh challenge; the key stays the same."""
    home = private_home(tmp_path)
    tokens.append(TokenProcess(pcscd, tmp_path / "otp.json", 571))
    assert cli(home, "init", "docs", "--otp", "--otp-program", "--force", "--otp-rolling", env=pcscd.env).returncode == 0
    vault_file = home / "data" / "vaults" / "docs.vault"

    def challenge() -> str:
        return str(json.loads(vault_file.read_text())["slots"][0]["factors"][0]["params"]["challenge"])

    seen = {challenge()}
    keys = set()
    for command in (["open", "docs", "--reveal", "--json"], ["open", "docs", "--reveal", "--json"], ["drill", "docs"]):
        done = cli(home, *command, env=pcscd.env)
        assert done.returncode == 0, done.stderr
        if command[0] == "open":
            keys.add(json.loads(done.stdout)["key"])
        assert challenge() not in seen  # rolled
        seen.add(challenge())
    assert len(keys) == 1
    rotated = cli(home, "rotate", "docs", "1", env=pcscd.env)
    assert rotated.returncode == 0 and challenge() not in seen, rotated.stderr
    mixed = cli(home, "enroll", "docs", "--otp", "--otp-rolling", "--password", env=pcscd.env)
    assert mixed.returncode == 2 and "a slot of its own" in mixed.stderr


def test_another_program_selecting_another_application_in_between(tmp_path: Path) -> None:
    """PC/SC access is shared: a SELECT of the PIV application by another program between our
    SELECT and our challenge does not fail the unlock."""
    from sharedcard import SharedCard

    from tokenagent.virtual.piv import AID as PIV_AID

    tok = token(tmp_path, 581)
    program(tok, os.urandom(20))
    factor, secret = OtpFactor.enroll(ctx_for(tok), {})
    shared = SharedCard(tok.card, lambda apdu: apdu[1] == 0x01 and apdu[2] in (0x30, 0x38), PIV_AID)  # our challenge
    ctx = ctx_for(tok)
    ctx.devices = VirtualDevices([tok], connect=lambda _: shared)
    assert factor.unlock(ctx) == secret and shared.meddled


def test_backup_key_programmed_with_the_shown_secret(pcscd: PrivatePcscd, tokens: list[TokenProcess],
                                                     tmp_path: Path) -> None:
    """--otp-show-secret shows the secret written once; ykman programs a second key with it, which then
    opens the vault alone. --otp-secret-file writes a given secret (a third key), --otp-touch sets touch."""
    import subprocess
    import sys

    home = private_home(tmp_path)
    main, backup, third = (TokenProcess(pcscd, tmp_path / f"otp-{s}.json", s) for s in (601, 602, 603))
    tokens += [main, backup, third]
    done = cli(home, "init", "docs", "--otp", "--otp-program", "--otp-show-secret", "--otp-touch", "--force",
               "--serial", "601", "--json", env=pcscd.env)
    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)["shown"]
    assert len(shown) == 1 and "ykman otp chalresp --touch 2 SECRET" in shown[0]["title"]
    secret_hex = shown[0]["secret"]
    assert len(bytes.fromhex(secret_hex)) == 20
    slots = json.loads(cli(home, "slots", "docs", "--json", env=pcscd.env).stdout)["slots"]
    assert "touch" in slots[0]["describe"]  # read back from the key: the slot was programmed to need a touch
    key = json.loads(cli(home, "open", "docs", "--reveal", "--json", env=pcscd.env).stdout)["key"]

    env = {**os.environ, **pcscd.env}
    reader = subprocess.run([sys.executable, "-c", "from smartcard.System import readers; print(readers()[1])"],
                            env=env, capture_output=True, text=True, timeout=60).stdout.strip()
    programmed = subprocess.run([sys.executable, "-m", "ykman._cli.__main__", "--reader", reader, "otp", "chalresp",
                                 "--force", "2", secret_hex], env=env, capture_output=True, text=True, timeout=120,
                                stdin=subprocess.DEVNULL)
    assert programmed.returncode == 0, programmed.stderr

    secret_file = tmp_path / "otp-secret"
    secret_file.write_text(secret_hex + "\n")
    bad = tmp_path / "bad-secret"
    bad.write_text("not hex\n")
    refused = cli(home, "init", "other", "--otp", "--otp-program", "--otp-secret-file", str(bad), "--force",
                  "--serial", "603", env=pcscd.env)
    assert refused.returncode == 2 and "40 hex digits" in refused.stderr and "not hex" not in refused.stderr
    assert cli(home, "init", "other", "--otp", "--otp-program", "--otp-secret-file", str(secret_file), "--force",
               "--serial", "603", env=pcscd.env).returncode == 0
    assert cli(home, "init", "x", "--otp", "--otp-touch", env=pcscd.env).returncode == 2  # needs --otp-program

    main.unplug()
    third.unplug()
    alone = cli(home, "open", "docs", "--reveal", "--json", env=pcscd.env)
    assert alone.returncode == 0, alone.stderr
    assert json.loads(alone.stdout)["key"] == key  # the backup key alone opens the vault
    backup.unplug()
    third.plug()
    assert json.loads(cli(home, "open", "docs", "--reveal", "--json", env=pcscd.env).stdout)["key"] == key
