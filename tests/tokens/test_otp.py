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
    assert absent.returncode == 4 and "YubiKey 551 is not plugged in" in absent.stderr


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
