"""The PIV factor against the virtual token's PIV applet (yubikit over the in-process
connection), and end to end through the CLI and the private pcscd."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from agentkit import cli, private_home
from cryptography.hazmat.primitives import serialization
from factor_conformance import TokenPairConformance  # type: ignore[import-not-found]
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from pcscd import PrivatePcscd, TokenProcess
from scripted import context  # type: ignore[import-not-found]
from ykman.pcsc import ScardSmartCardConnection
from yubikit.piv import DEFAULT_MANAGEMENT_KEY, KEY_TYPE, PIN_POLICY, SLOT, TOUCH_POLICY, PivSession

from tokenagent.drivers.piv import PivFactor
from tokenagent.errors import (
    Cancelled,
    NoSlotMatched,
    NotMine,
    PinBlocked,
    PinInvalid,
    PinLastTry,
    TokenError,
    UsageError,
)
from tokenagent.factors.base import FactorContext
from tokenagent.factors.password import PasswordFactor
from tokenagent.vault import new_vault, unlock
from tokenagent.virtual.card import Apdu, TouchMode
from tokenagent.virtual.piv import INS_VERIFY
from tokenagent.virtual.provider import VirtualDevices
from tokenagent.virtual.token import VirtualToken

PIN = b"123456"


def token(tmp_path: Path, serial: int, key: KEY_TYPE | None = KEY_TYPE.ECCP256, slot: SLOT = SLOT.KEY_MANAGEMENT,
          **policies: Any) -> VirtualToken:
    tok = VirtualToken(tmp_path / f"piv-{serial}.json", serial=serial)
    if key is not None:
        piv = PivSession(ScardSmartCardConnection(tok.connection()))
        piv.authenticate(DEFAULT_MANAGEMENT_KEY)
        piv.generate_key(slot, key, **policies)
    return tok


def ctx_for(*tokens: VirtualToken, pins: list[bytes] | None = None, force: bool = False,
            confirm: bool = False) -> FactorContext:
    ctx = context(pin=list(pins if pins is not None else [PIN]))
    ctx.devices = VirtualDevices(list(tokens))
    ctx.force = force
    ctx.ui.confirm = lambda question: confirm  # type: ignore[method-assign]
    return ctx


def count_pin_submissions(tok: VirtualToken) -> Callable[[], int]:
    """Count the VERIFY commands that carry a PIN (an empty VERIFY only reads the counter)."""
    submitted = [0]
    handlers = dict(tok.piv._handlers)
    verify = handlers[INS_VERIFY]

    def counting(applet: Any, apdu: Apdu) -> bytes:
        if apdu.data:
            submitted[0] += 1
        return verify(applet, apdu)

    handlers[INS_VERIFY] = counting
    tok.piv._handlers = handlers  # type: ignore[misc]
    return lambda: submitted[0]


def public_key_file(tok: VirtualToken, path: Path, slot: SLOT = SLOT.KEY_MANAGEMENT) -> Path:
    piv = PivSession(ScardSmartCardConnection(tok.connection()))
    public = piv.get_slot_metadata(slot).public_key
    path.write_bytes(public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return path


class TestPivConformance(TokenPairConformance):
    factor_type = "piv"
    serials = (601, 602)

    def make_token(self, serial: int) -> VirtualToken:
        return token(self.tmp, serial)

    def context_for(self, tok: VirtualToken) -> FactorContext:
        return ctx_for(tok)

    def enroll_options(self) -> dict[str, Any]:
        return {"piv_existing": True}


@pytest.mark.parametrize("algorithm", ["p256", "p384", "rsa2048"])
def test_generated_key_round_trip(tmp_path: Path, algorithm: str) -> None:
    tok = token(tmp_path, 610, key=None)
    factor, secret = PivFactor.enroll(ctx_for(tok), {"piv_algorithm": algorithm, "piv_slot": "85"})
    assert isinstance(factor, PivFactor) and factor.serial == 610 and factor.algorithm == algorithm
    assert factor.slot == "85" and len(secret) == 32
    assert PivFactor.from_params(factor.params()).unlock(ctx_for(tok)) == secret
    metadata = PivSession(ScardSmartCardConnection(tok.connection())).get_slot_metadata(SLOT.RETIRED4)
    assert metadata.generated


def test_pin_policy_never_asks_no_pin(tmp_path: Path) -> None:
    tok = token(tmp_path, 611, key=None)
    factor, secret = PivFactor.enroll(ctx_for(tok), {"pin_policy": "never"})
    ctx = ctx_for(tok, pins=[])
    assert factor.unlock(ctx) == secret
    assert ctx.ui.asked == []  # type: ignore[attr-defined]


def test_occupied_slot_is_replaced_only_when_confirmed(tmp_path: Path) -> None:
    tok = token(tmp_path, 612)
    before = public_key_file(tok, tmp_path / "before.pem").read_bytes()
    with pytest.raises(Cancelled, match="--piv-existing"):
        PivFactor.enroll(ctx_for(tok), {})
    assert public_key_file(tok, tmp_path / "still.pem").read_bytes() == before
    factor, secret = PivFactor.enroll(ctx_for(tok, confirm=True), {})
    assert public_key_file(tok, tmp_path / "after.pem").read_bytes() != before
    assert factor.unlock(ctx_for(tok)) == secret


def test_management_key_other_than_the_default(tmp_path: Path) -> None:
    from yubikit.piv import MANAGEMENT_KEY_TYPE

    tok = token(tmp_path, 613, key=None)
    new_key = os.urandom(24)
    piv = PivSession(ScardSmartCardConnection(tok.connection()))
    piv.authenticate(DEFAULT_MANAGEMENT_KEY)
    piv.set_management_key(MANAGEMENT_KEY_TYPE.AES192, new_key)
    with pytest.raises(UsageError, match="--piv-management-key-file"):
        PivFactor.enroll(ctx_for(tok), {})
    key_file = tmp_path / "mgm"
    key_file.write_text(new_key.hex() + "\n")
    factor, secret = PivFactor.enroll(ctx_for(tok), {"piv_management_key_file": str(key_file)})
    assert factor.unlock(ctx_for(tok)) == secret


def test_management_key_stored_under_the_pin_by_ykman(tmp_path: Path) -> None:
    """'ykman piv access change-management-key --generate --protect': the key is on the card,
    readable after the PIN; enrolment reads it with the PIN rules and generates the key."""
    from ykman.piv import pivman_set_mgm_key
    from yubikit.core.smartcard import ApduError
    from yubikit.piv import MANAGEMENT_KEY_TYPE

    tok = token(tmp_path, 614, key=None)
    piv = PivSession(ScardSmartCardConnection(tok.connection()))
    piv.authenticate(DEFAULT_MANAGEMENT_KEY)
    piv.verify_pin(PIN.decode())
    pivman_set_mgm_key(piv, os.urandom(24), MANAGEMENT_KEY_TYPE.AES192, store_on_device=True)
    fresh = PivSession(ScardSmartCardConnection(tok.connection()))
    with pytest.raises(ApduError):  # the stored key is not readable without the PIN
        fresh.get_object(0x5FC109)
    submissions = count_pin_submissions(tok)
    with pytest.raises(PinInvalid, match="2 tries left"):  # a wrong PIN: nothing generated, not resent
        PivFactor.enroll(ctx_for(tok, pins=[b"000000", PIN]), {})
    assert submissions() == 1 and not tok.piv.keys
    ctx = ctx_for(tok)
    factor, secret = PivFactor.enroll(ctx, {})
    assert [request.kind for request in ctx.ui.asked] == ["pin"]  # type: ignore[attr-defined]
    assert factor.unlock(ctx_for(tok)) == secret
    assert tok.piv.pin.remaining == 3


def test_offline_backup_from_its_certificate(tmp_path: Path) -> None:
    """DESIGN §3: the backup card need not be present; later it alone unlocks."""
    main, backup = token(tmp_path, 620), token(tmp_path, 621, key=KEY_TYPE.RSA2048, slot=SLOT.RETIRED1)
    cert = public_key_file(backup, tmp_path / "backup.pem", SLOT.RETIRED1)
    factor, secret = PivFactor.enroll(ctx_for(main), {"cert": str(cert), "piv_slot": "82", "serial": 621})
    assert isinstance(factor, PivFactor) and factor.algorithm == "rsa2048" and factor.serial == 621
    with pytest.raises(NotMine):
        factor.unlock(ctx_for(main))  # the main card is not the backup
    assert factor.unlock(ctx_for(main, backup)) == secret  # the backup alone holds the key


def test_wrong_pin_spends_one_try_and_is_not_resubmitted(tmp_path: Path) -> None:
    tok = token(tmp_path, 630)
    factor, _ = PivFactor.enroll(ctx_for(tok), {"piv_existing": True})
    submissions = count_pin_submissions(tok)
    with pytest.raises(PinInvalid, match="2 tries left"):
        factor.unlock(ctx_for(tok, pins=[b"000000", PIN]))
    assert submissions() == 1 and tok.piv.pin.remaining == 2


def test_last_try_is_kept_unless_forced_and_blocked_is_refused(tmp_path: Path) -> None:
    tok = token(tmp_path, 631)
    factor, secret = PivFactor.enroll(ctx_for(tok), {"piv_existing": True})
    tok.piv.pin.remaining = 1
    submissions = count_pin_submissions(tok)
    ctx = ctx_for(tok)
    with pytest.raises(PinLastTry, match="--force"):
        factor.unlock(ctx)
    assert submissions() == 0 and ctx.ui.asked == []  # type: ignore[attr-defined]
    assert factor.unlock(ctx_for(tok, force=True)) == secret
    assert submissions() == 1 and tok.piv.pin.remaining == 3
    tok.piv.pin.remaining = 0
    with pytest.raises(PinBlocked, match="PUK"):
        factor.unlock(ctx_for(tok, force=True))
    assert submissions() == 1 and tok.piv.puk.remaining == 3  # the PUK is never used


def test_preflight_spends_no_pin_on_other_cards(tmp_path: Path) -> None:
    mine, other = token(tmp_path, 640), token(tmp_path, 641)
    factor, secret = PivFactor.enroll(ctx_for(mine), {"piv_existing": True})
    counted = count_pin_submissions(other)
    assert factor.unlock(ctx_for(other, mine)) == secret
    assert counted() == 0 and other.piv.pin.remaining == 3
    with pytest.raises(NotMine):
        factor.unlock(ctx_for(other))
    assert counted() == 0


def test_touch_policy_timeout_is_a_clean_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tokenagent.virtual.piv as piv_module

    monkeypatch.setattr(piv_module, "TOUCH_TIMEOUT", 0.3)
    tok = token(tmp_path, 650, touch_policy=TOUCH_POLICY.ALWAYS, pin_policy=PIN_POLICY.NEVER)
    factor, secret = PivFactor.enroll(ctx_for(tok), {"piv_existing": True})
    notices: list[str] = []
    ctx = ctx_for(tok)
    ctx.ui.notify = lambda event, message: notices.append(event)  # type: ignore[method-assign]
    tok.presence.mode = TouchMode.REFUSE
    with pytest.raises(TokenError, match="touch"):
        factor.unlock(ctx)
    assert "touch" in notices
    tok.presence.mode = TouchMode.AUTO
    assert factor.unlock(ctx_for(tok)) == secret


def test_composite_slot_and_two_of_three_cards(tmp_path: Path) -> None:
    a, b, c = token(tmp_path, 661), token(tmp_path, 662), token(tmp_path, 663)
    composite = [PasswordFactor.enroll(context([b"pw"]), {}), PivFactor.enroll(ctx_for(a), {"piv_existing": True})]
    vault, key = new_vault("v", composite)
    with_both = ctx_for(a)
    with_both.ui.by_kind["password"] = [b"pw"]  # type: ignore[attr-defined]
    assert unlock(vault, with_both).masterkey == key
    with pytest.raises(NoSlotMatched):
        unlock(vault, ctx_for(a))  # the card alone
    everyone = ctx_for(a, b, c)
    enrolled = [PivFactor.enroll(everyone, {"piv_existing": True, "serial": s}) for s in (661, 662, 663)]
    vault, key = new_vault("w", enrolled, threshold=2)
    for pair in ((a, b), (a, c), (b, c)):
        assert unlock(vault, ctx_for(*pair, pins=[PIN, PIN])).masterkey == key
    for single in (a, b, c):
        with pytest.raises(NoSlotMatched):
            unlock(vault, ctx_for(single))


def test_bad_params_are_refused(tmp_path: Path) -> None:
    from tokenagent.errors import VaultFormatError

    factor, _ = PivFactor.enroll(ctx_for(token(tmp_path, 670)), {"piv_existing": True})
    good = factor.params()
    for bad in ({"slot": "9a"}, {"algorithm": "rsa1024"}, {"key": "zz" * 32}, {"challenge": "AAAA"},
                {"serial": -1}, {"challenge": __import__("base64").b64encode(b"\x04" + bytes(64)).decode()}):
        with pytest.raises(VaultFormatError):
            PivFactor.from_params({**good, **bad})
    with pytest.raises(UsageError, match="9d"):
        PivFactor.enroll(ctx_for(token(tmp_path, 671)), {"piv_slot": "9a"})


class PinSafety(RuleBasedStateMachine):
    """DESIGN §6 #12 over random sequences: no PIN sent at <= 1 try without --force, never two
    PINs per unlock, none to a card that does not hold the key; the PUK is never touched."""

    tmp: Path

    def __init__(self) -> None:
        super().__init__()
        fresh = Path(tempfile.mkdtemp(dir=self.tmp))  # every example starts with new cards
        self.mine, self.other = token(fresh, 690), token(fresh, 680)
        self.factor, self.secret = PivFactor.enroll(ctx_for(self.mine), {"piv_existing": True})
        self.mine_sent = count_pin_submissions(self.mine)
        self.other_sent = count_pin_submissions(self.other)

    @rule(right=st.booleans(), force=st.booleans(), with_other=st.booleans())
    def unlock(self, right: bool, force: bool, with_other: bool) -> None:
        before, remaining = self.mine_sent(), self.mine.piv.pin.remaining
        cards = (self.other, self.mine) if with_other else (self.mine,)
        ctx = ctx_for(*cards, pins=[PIN if right else b"999999", PIN], force=force)
        try:
            assert self.factor.unlock(ctx) == self.secret
            assert right and remaining >= 1
        except PinLastTry:
            assert remaining == 1 and not force
        except PinBlocked:
            assert remaining <= 1
        except PinInvalid:
            assert not right
        sent = self.mine_sent() - before
        assert sent <= 1
        if remaining == 0 or (remaining == 1 and not force):
            assert sent == 0

    @rule(value=st.integers(min_value=0, max_value=3))
    def counter_set_elsewhere(self, value: int) -> None:
        """Another program spent (or restored) tries."""
        self.mine.piv.pin.remaining = value

    @invariant()
    def nothing_to_the_other_card_and_no_puk(self) -> None:
        assert self.other_sent() == 0
        assert self.mine.piv.puk.remaining == 3


def test_pin_safety_sequences(tmp_path: Path) -> None:
    PinSafety.tmp = tmp_path
    runner = PinSafety.TestCase
    runner.settings = settings(max_examples=40, stateful_step_count=15, deadline=None,
                               suppress_health_check=[HealthCheck.too_slow])
    runner().runTest()


# --- end to end: the CLI through the private pcscd ----------------------------------------


def test_cli_init_enroll_offline_and_open(pcscd: PrivatePcscd, tokens: list[TokenProcess], tmp_path: Path) -> None:
    home = private_home(tmp_path)
    main = TokenProcess(pcscd, tmp_path / "main.json", 7101)
    tokens.append(main)
    backup = token(tmp_path, 7102)  # a card in a drawer: only its public key is at hand
    cert = public_key_file(backup, tmp_path / "backup.pem")
    pin = tmp_path / "pin"
    pin.write_text("123456\n")

    def run(*args: str) -> Any:
        return cli(home, *args, env=pcscd.env)

    created = run("init", "docs", "--piv", "--piv-algorithm", "p384", "--pin-file", str(pin), "--label", "main")
    assert created.returncode == 0, created.stderr
    offline = run("enroll", "docs", "--piv", "--piv-cert", str(cert), "--serial", "7102", "--label", "backup",
                  "--pin-file", str(pin))
    assert offline.returncode == 0, offline.stderr
    slots = json.loads(run("slots", "docs", "--json").stdout)["slots"]
    assert [s["label"] for s in slots] == ["main", "backup"] and "card 7102" in slots[1]["describe"]
    opened = run("open", "docs", "--reveal", "--json", "--pin-file", str(pin))
    assert opened.returncode == 0, opened.stderr
    assert json.loads(opened.stdout)["slot"] == "1"
    main.unplug()
    absent = run("open", "docs", "--pin-file", str(pin))
    assert absent.returncode == 10 and "not plugged in" in absent.stderr and "Traceback" not in absent.stderr
    main.remove()
    tokens.clear()
    tokens.append(TokenProcess(pcscd, tmp_path / "piv-7102.json", 7102))  # now the backup card is plugged in
    with_backup = run("open", "docs", "--reveal", "--json", "--pin-file", str(pin))
    assert with_backup.returncode == 0, with_backup.stderr
    assert json.loads(with_backup.stdout)["slot"] == "2"
    assert json.loads(with_backup.stdout)["key"] == json.loads(opened.stdout)["key"]


OPENSC = "/usr/lib/x86_64-linux-gnu/opensc-pkcs11.so"


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # ykman's certificate helper parses the subject itself
def test_pkcs11_factor_through_opensc_and_the_virtual_piv_card(pcscd: PrivatePcscd, tokens: list[TokenProcess],
                                                               tmp_path: Path) -> None:
    """The PKCS#11 code path that runs on SoftHSM2 also runs on OpenSC's module, reaching the
    virtual card through pcscd: ECDH with the main card's P-256 key, RSA-OAEP with the backup
    card's RSA-2048 key, which is enrolled offline from its certificate."""
    import datetime

    from ykman.piv import generate_self_signed_certificate

    if not os.path.exists(OPENSC):
        pytest.skip(f"{OPENSC} is missing (Debian package opensc-pkcs11)")
    cards = {}
    for serial, name, key_type in ((7201, "vault-main", KEY_TYPE.ECCP256), (7202, "vault-backup", KEY_TYPE.RSA2048)):
        tok = token(tmp_path, serial, key=key_type)
        piv = PivSession(ScardSmartCardConnection(tok.connection()))
        piv.verify_pin("123456")
        public = piv.get_slot_metadata(SLOT.KEY_MANAGEMENT).public_key
        cert = generate_self_signed_certificate(piv, SLOT.KEY_MANAGEMENT, public, f"CN={name}",
                                                datetime.datetime(2025, 1, 1), datetime.datetime(2035, 1, 1))
        piv.authenticate(DEFAULT_MANAGEMENT_KEY)
        piv.put_certificate(SLOT.KEY_MANAGEMENT, cert)
        (tmp_path / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        cards[serial] = tok.state_path
    main = TokenProcess(pcscd, cards[7201], 7201)
    tokens.append(main)
    home = private_home(tmp_path)
    pin = tmp_path / "pin"
    pin.write_text("123456\n")

    def run(*args: str) -> Any:
        return cli(home, *args, env=pcscd.env, timeout=120)

    # OpenSC names the token after the certificate's subject; slot 9d is key id 03
    main_uri = f"pkcs11:token=vault-main;id=%03?module-path={OPENSC}"
    backup_uri = f"pkcs11:token=vault-backup;id=%03?module-path={OPENSC}"
    created = run("init", "docs", "--pkcs11", main_uri, "--pin-file", str(pin))
    assert created.returncode == 0, created.stderr
    offline = run("enroll", "docs", "--pkcs11", backup_uri, "--piv-cert", str(tmp_path / "vault-backup.pem"),
                  "--pin-file", str(pin))
    assert offline.returncode == 0, offline.stderr
    opened = run("open", "docs", "--reveal", "--json", "--pin-file", str(pin))
    assert opened.returncode == 0, opened.stderr
    assert json.loads(opened.stdout)["slot"] == "1"
    main.remove()
    tokens.clear()
    tokens.append(TokenProcess(pcscd, cards[7202], 7202))
    with_backup = run("open", "docs", "--reveal", "--json", "--pin-file", str(pin))
    assert with_backup.returncode == 0, with_backup.stderr
    assert json.loads(with_backup.stdout)["slot"] == "2"
    assert json.loads(with_backup.stdout)["key"] == json.loads(opened.stdout)["key"]
    wrong = tmp_path / "wrong"
    wrong.write_text("000000\n")
    refused = run("open", "docs", "--pin-file", str(wrong))
    assert refused.returncode == 5 and "wrong PIN" in refused.stderr, refused.stderr
    assert json.loads(cards[7202].read_text())["piv"]["pin"]["remaining"] == 2  # one try spent, not resent


def test_card_pulled_out_while_waiting_for_a_touch(pcscd: PrivatePcscd, tokens: list[TokenProcess],
                                                   tmp_path: Path) -> None:
    """DESIGN §6 #13 for PIV: a clean error, no hang, the vault unchanged."""
    card = TokenProcess(pcscd, tmp_path / "card.json", 7301, touch="explicit")
    tokens.append(card)
    home = private_home(tmp_path)
    pin = tmp_path / "pin"
    pin.write_text("123456\n")
    made = cli(home, "init", "docs", "--piv", "--touch-policy", "always", "--pin-file", str(pin), env=pcscd.env)
    assert made.returncode == 0, made.stderr
    vault_file = home / "data" / "vaults" / "docs.vault"
    before = vault_file.read_bytes()
    env = {**os.environ, "TOKENAGENT_HOME": str(home), "TOKENAGENT_TEST_KDF": "1", **pcscd.env}
    waiting = subprocess.Popen([sys.executable, "-m", "tokenagent._cli.entry", "open", "docs", "--pin-file", str(pin)],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(3.0)  # PIN verified, the card waits for a touch
    assert waiting.poll() is None
    started = time.monotonic()
    card.unplug()
    out, err = waiting.communicate(timeout=30)
    assert time.monotonic() - started < 20
    assert waiting.returncode == 10 and "Traceback" not in err and "pulled out" in err, (out, err)
    assert vault_file.read_bytes() == before
    card.plug()
    stop = threading.Event()

    def person() -> None:  # touches the card whenever it blinks
        while not stop.wait(0.3):
            card.touch()

    toucher = threading.Thread(target=person, daemon=True)
    toucher.start()
    try:
        again = cli(home, "open", "docs", "--pin-file", str(pin), env=pcscd.env)
    finally:
        stop.set()
        toucher.join()
    assert again.returncode == 0 and "Touch YubiKey 7301" in again.stderr, again.stderr


def test_another_program_selecting_another_application_before_the_pin(tmp_path: Path) -> None:
    """A SELECT by another program between ours and the key lookup: the PIV application is
    selected again, the card is not passed over, one PIN is asked and spent on the right card."""
    from sharedcard import SharedCard

    from tokenagent.virtual.otp import AID as OTP_AID

    tok = token(tmp_path, 7401)
    factor, secret = PivFactor.enroll(ctx_for(tok), {"piv_existing": True})
    shared = SharedCard(tok.card, lambda apdu: apdu[1] == 0xF7 and apdu[3] == 0x9D, OTP_AID)  # our key lookup
    ctx = ctx_for(tok)
    ctx.devices = VirtualDevices([tok], connect=lambda _: shared)
    submitted = count_pin_submissions(tok)
    assert factor.unlock(ctx) == secret and shared.meddled and submitted() == 1
