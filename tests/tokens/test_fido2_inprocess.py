"""The FIDO2 factor against virtual tokens in process, every test over both framings python-fido2
has: PC/SC (``CtapPcscDevice``, NFC framing) and USB HID (``CtapHidDevice``, CTAPHID).

Covers the factor contract, hmac-secret agreement with python-fido2's own client, the PIN
rules of DESIGN §3 (retries read first, the last try kept, no resubmission, the 3-strike
rule), touch timeouts, and slots mixing tokens (composite, 2-of-3). The same factor through
a real pcscd is tests/tokens/test_pcscd.py.
"""

from __future__ import annotations

import hashlib
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from factor_conformance import TokenPairConformance  # type: ignore[import-not-found]
from fido2.client import DefaultClientDataCollector, Fido2Client
from fido2.ctap2 import Ctap2
from fido2.ctap2.extensions import HmacSecretExtension
from fido2.ctap2.pin import ClientPin, PinProtocolV1, PinProtocolV2
from fido2.pcsc import CtapPcscDevice
from fido2.utils import websafe_decode
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from scripted import context  # type: ignore[import-not-found]

from tokenagent.drivers.fido2 import Fido2Factor
from tokenagent.errors import (
    NoSlotMatched,
    NotMine,
    PinAuthBlocked,
    PinBlocked,
    PinInvalid,
    PinLastTry,
    TokenError,
    TouchTimeout,
)
from tokenagent.factors.base import FactorContext
from tokenagent.factors.password import PasswordFactor
from tokenagent.vault import new_vault, unlock
from tokenagent.virtual.card import TouchMode
from tokenagent.virtual.provider import VirtualDevices
from tokenagent.virtual.token import VirtualToken

PIN = b"246810"
TRANSPORT = ["pcsc"]


@pytest.fixture(autouse=True, params=["pcsc", "hid"])
def transport(request: pytest.FixtureRequest) -> Any:
    TRANSPORT[0] = request.param
    yield request.param
    TRANSPORT[0] = "pcsc"


def raw_device(tok: VirtualToken) -> Any:
    """python-fido2's device for the token over the transport under test."""
    return tok.hid_device() if TRANSPORT[0] == "hid" else CtapPcscDevice(tok.connection(), "raw")


def token(tmp_path: Path, serial: int, **kw: Any) -> VirtualToken:
    return VirtualToken(tmp_path / f"token-{serial}.json", serial=serial, **kw)


def ctx_for(*tokens: VirtualToken, pins: list[bytes] | None = None, force: bool = False,
            answers: list[bytes] | None = None, **options: Any) -> FactorContext:
    ctx = context(answers, pin=list(pins or []))
    ctx.devices = VirtualDevices(list(tokens), fido2_transport=TRANSPORT[0])
    ctx.force = force
    ctx.options.update(options)
    return ctx


def set_pin(tok: VirtualToken, pin: bytes = PIN) -> None:
    ClientPin(Ctap2(raw_device(tok)), PinProtocolV2()).set_pin(pin.decode())


def retries(tok: VirtualToken) -> int:
    return tok.fido2.pin_retries


class TestFido2Conformance(TokenPairConformance):
    factor_type = "fido2"
    serials = (1001, 1002)

    def make_token(self, serial: int) -> VirtualToken:
        return token(self.tmp, serial)

    def context_for(self, tok: VirtualToken) -> FactorContext:
        return ctx_for(tok)


def test_secret_matches_python_fido2_hmac_secret_client(tmp_path: Path) -> None:
    """python-fido2's WebAuthn client, given the same credential and salt, gets the same output."""
    tok = token(tmp_path, 7)
    factor, secret = Fido2Factor.enroll(ctx_for(tok), {"fido2_rp": "example.com"})
    assert isinstance(factor, Fido2Factor)
    client = Fido2Client(raw_device(tok),
                         DefaultClientDataCollector("https://example.com"), extensions=[HmacSecretExtension(allow_hmac_secret=True)])
    result = client.get_assertion({
        "challenge": b"x" * 32, "rpId": "example.com", "userVerification": "discouraged",
        "allowCredentials": [{"type": "public-key", "id": factor.credential}],
        "extensions": {"hmacGetSecret": {"salt1": factor.salt}},
    }).get_response(0)
    output = result.client_extension_results["hmacGetSecret"]["output1"]
    assert websafe_decode(output) == bytes(secret)


@pytest.mark.parametrize("protocol", [PinProtocolV1, PinProtocolV2])
def test_two_salts_and_both_pin_protocols(tmp_path: Path, protocol: type) -> None:
    tok = token(tmp_path, 8)
    ctap = Ctap2(raw_device(tok))
    cred = ctap.make_credential(b"h" * 32, {"id": "rp"}, {"id": b"u", "name": "u"}, [{"type": "public-key",
                                "alg": -7}], extensions={"hmac-secret": True}).auth_data.credential_data
    p = protocol()
    key_agreement, shared = p.encapsulate(ctap.client_pin(p.VERSION, ClientPin.CMD.GET_KEY_AGREEMENT)[1])
    salts = bytes(range(64))
    enc = p.encrypt(shared, salts)
    out = ctap.get_assertion("rp", b"c" * 32, [{"type": "public-key", "id": cred.credential_id}],
                             {"hmac-secret": {1: key_agreement, 2: enc, 3: p.authenticate(shared, enc),
                                              4: p.VERSION}}).auth_data.extensions["hmac-secret"]
    plain = p.decrypt(shared, out)
    assert len(plain) == 64 and plain[:32] != plain[32:]


def test_pin_slot_round_trip_and_secret_differs_from_no_pin(tmp_path: Path) -> None:
    tok = token(tmp_path, 9)
    set_pin(tok)
    with_pin, s1 = Fido2Factor.enroll(ctx_for(tok, pins=[PIN]), {"fido2_uv": True})
    assert with_pin.unlock(ctx_for(tok, pins=[PIN])) == s1
    # the same credential without UV gives another secret (CredRandom without UV): the PIN matters
    assert isinstance(with_pin, Fido2Factor)
    no_uv = Fido2Factor(with_pin.rp, with_pin.credential, with_pin.salt, False, with_pin.aaguid)
    assert no_uv.unlock(ctx_for(tok)) != s1
    assert "PIN" in with_pin.describe()


def test_adding_a_pin_later_does_not_change_a_no_pin_slot(tmp_path: Path) -> None:
    tok = token(tmp_path, 10)
    factor, secret = Fido2Factor.enroll(ctx_for(tok), {})
    set_pin(tok)
    ctx = ctx_for(tok)
    assert factor.unlock(ctx) == secret
    assert ctx.ui.asked == []  # no PIN was asked


def test_wrong_pin_spends_one_try_and_is_not_resubmitted(tmp_path: Path) -> None:
    tok = token(tmp_path, 11)
    set_pin(tok)
    factor, _ = Fido2Factor.enroll(ctx_for(tok, pins=[PIN]), {"fido2_uv": True})
    before = retries(tok)
    ctx = ctx_for(tok, pins=[b"000000", PIN])
    with pytest.raises(PinInvalid, match="7 tries left"):
        factor.unlock(ctx)
    assert retries(tok) == before - 1
    assert [r.kind for r in ctx.ui.asked] == ["pin"]  # asked once, the second PIN never used


def test_last_try_is_kept_unless_forced(tmp_path: Path) -> None:
    tok = token(tmp_path, 12)
    set_pin(tok)
    factor, secret = Fido2Factor.enroll(ctx_for(tok, pins=[PIN]), {"fido2_uv": True})
    tok.fido2.pin_retries = 1
    ctx = ctx_for(tok, pins=[PIN])
    with pytest.raises(PinLastTry, match="--force"):
        factor.unlock(ctx)
    assert retries(tok) == 1 and ctx.ui.asked == []  # refused before asking or spending anything
    assert factor.unlock(ctx_for(tok, pins=[PIN], force=True)) == secret
    assert retries(tok) == 8


def test_three_wrong_pins_need_a_replug(tmp_path: Path) -> None:
    tok = token(tmp_path, 13)
    set_pin(tok)
    factor, secret = Fido2Factor.enroll(ctx_for(tok, pins=[PIN]), {"fido2_uv": True})
    for _ in range(2):
        with pytest.raises(PinInvalid):
            factor.unlock(ctx_for(tok, pins=[b"999999"]))
    with pytest.raises(PinAuthBlocked, match="remove and re-insert"):
        factor.unlock(ctx_for(tok, pins=[b"999999"]))
    with pytest.raises(PinAuthBlocked):
        factor.unlock(ctx_for(tok, pins=[PIN]))  # even the right PIN, until the power cycle
    assert retries(tok) == 5
    tok.replug()
    assert factor.unlock(ctx_for(tok, pins=[PIN])) == secret


def test_preflight_spends_no_pin_try_on_other_keys(tmp_path: Path) -> None:
    other, mine = token(tmp_path, 14), token(tmp_path, 15)
    set_pin(other)
    set_pin(mine)
    factor, secret = Fido2Factor.enroll(ctx_for(mine, pins=[PIN]), {"fido2_uv": True})
    assert factor.unlock(ctx_for(other, mine, pins=[PIN])) == secret
    assert retries(other) == 8 and retries(mine) == 8


def test_touch_timeout_cancels_cleanly(tmp_path: Path) -> None:
    tok = token(tmp_path, 16)
    factor, secret = Fido2Factor.enroll(ctx_for(tok), {})
    tok.presence.mode = TouchMode.REFUSE
    started = time.monotonic()
    ctx = ctx_for(tok, touch_timeout=1.0)
    with pytest.raises(TouchTimeout, match="no touch within 1 s"):
        factor.unlock(ctx)
    assert time.monotonic() - started < 10
    tok.presence.mode = TouchMode.AUTO
    assert factor.unlock(ctx_for(tok)) == secret  # the key is usable right after


def test_explicit_touch_and_the_touch_notice(tmp_path: Path) -> None:
    tok = token(tmp_path, 17)
    factor, secret = Fido2Factor.enroll(ctx_for(tok), {})
    tok.presence.mode = TouchMode.DELAY
    tok.presence.delay = 0.5
    ctx = ctx_for(tok)
    notices: list[str] = []
    ctx.ui.notify = lambda event, message: notices.append(event)  # type: ignore[method-assign]
    assert factor.unlock(ctx) == secret
    assert "touch" in notices


def test_composite_password_and_fido2_slot(tmp_path: Path) -> None:
    tok = token(tmp_path, 18)
    enrolled = [PasswordFactor.enroll(context([b"pw"]), {}), Fido2Factor.enroll(ctx_for(tok), {})]
    vault, key = new_vault("v", enrolled)
    assert unlock(vault, ctx_for(tok, answers=[b"pw"])).masterkey == key
    with pytest.raises(NoSlotMatched):
        unlock(vault, ctx_for(answers=[b"pw"]))  # password alone
    with pytest.raises(NoSlotMatched):
        unlock(vault, ctx_for(tok))  # token alone


def test_two_of_three_tokens(tmp_path: Path) -> None:
    a, b, c = token(tmp_path, 21), token(tmp_path, 22), token(tmp_path, 23)
    all_three = ctx_for(a, b, c)
    enrolled = [Fido2Factor.enroll(all_three, {"serial": s}) for s in (21, 22, 23)]
    vault, key = new_vault("v", enrolled, threshold=2)
    for pair in ((a, b), (a, c), (b, c)):
        assert unlock(vault, ctx_for(*pair)).masterkey == key
    for single in (a, b, c):
        with pytest.raises(NoSlotMatched):
            unlock(vault, ctx_for(single))


def test_state_survives_a_new_process_view_of_the_token(tmp_path: Path) -> None:
    tok = token(tmp_path, 24)
    factor, secret = Fido2Factor.enroll(ctx_for(tok), {})
    again = VirtualToken(tmp_path / "token-24.json")
    assert again.serial == 24
    assert factor.unlock(ctx_for(again)) == secret


def test_no_key_present_is_not_mine(tmp_path: Path) -> None:
    factor, _ = Fido2Factor.enroll(ctx_for(token(tmp_path, 25)), {})
    with pytest.raises(NotMine, match="no FIDO2 key is plugged in"):
        factor.unlock(ctx_for())


def test_rp_id_hash_binds_the_credential(tmp_path: Path) -> None:
    tok = token(tmp_path, 26)
    factor, _ = Fido2Factor.enroll(ctx_for(tok), {"fido2_rp": "a.example"})
    assert isinstance(factor, Fido2Factor)
    moved = Fido2Factor("b.example", factor.credential, factor.salt, False, factor.aaguid)
    with pytest.raises(NotMine):
        moved.unlock(ctx_for(tok))
    assert hashlib.sha256(b"a.example").digest() not in factor.credential


def test_several_new_keys_the_touched_one_is_enrolled(tmp_path: Path) -> None:
    untouched, touched = token(tmp_path, 31, touch=TouchMode.REFUSE), token(tmp_path, 32)
    ctx = ctx_for(untouched, touched, touch_timeout=5.0)
    notices: list[str] = []
    ctx.ui.notify = lambda event, message: notices.append(message)  # type: ignore[method-assign]
    untouched.presence.mode = TouchMode.REFUSE
    factor, secret = Fido2Factor.enroll(ctx, {})
    assert any("touch the one to use" in n for n in notices)
    assert factor.unlock(ctx_for(touched)) == secret
    with pytest.raises(NotMine):
        factor.unlock(ctx_for(untouched))


def test_enrolling_a_key_already_in_the_vault_is_refused(tmp_path: Path) -> None:
    tok = token(tmp_path, 33)
    factor, _ = Fido2Factor.enroll(ctx_for(tok), {})
    ctx = ctx_for(tok)
    ctx.options["enrolled_factors"] = [factor.descriptor()]
    with pytest.raises(TokenError, match="already enrolled in this vault"):
        Fido2Factor.enroll(ctx, {})


def test_rotate_renews_the_salt_in_one_touch(tmp_path: Path) -> None:
    from tokenagent.vault import VaultStore, operations
    from tokenagent.vault.slots import open_slot

    tok = token(tmp_path, 41)
    factor, secret = Fido2Factor.enroll(ctx_for(tok), {})
    store_dir = tmp_path / "vaults"
    store_dir.mkdir(mode=0o700)
    store = VaultStore(store_dir)
    vault, key = new_vault("v", [(factor, secret)])
    store.create(vault)
    touches: list[float] = []
    original = tok.presence.wait
    tok.presence.wait = lambda *a, **k: touches.append(time.monotonic()) or original(*a, **k)  # type: ignore
    renewed, old, new = factor.rotate(ctx_for(tok))
    assert len(touches) == 1  # one assertion answered for both salts
    assert old == secret and new != secret and isinstance(renewed, Fido2Factor) and renewed.salt != factor.salt
    loaded = store.load("v")
    masterkey = open_slot(loaded, loaded.slots[0], ctx_for(tok), given=[old])
    assert masterkey == key
    operations.replace_slot(store, "v", masterkey, "1", [(renewed, new)])
    after = store.load("v")
    assert after.slots[0].id == "1" and after.slots[0].factors[0].params()["salt"] != factor.params()["salt"]
    assert unlock(after, ctx_for(tok)).masterkey == key
    assert renewed.unlock(ctx_for(tok)) == new


def count_pin_checks(tok: VirtualToken) -> Callable[[], int]:
    """Count the PINs the token is asked to check (getPinToken and its permissions variant)."""
    checks = [0]
    check = tok.fido2._check_pin

    def counting(*args: Any) -> None:
        checks[0] += 1
        check(*args)

    tok.fido2._check_pin = counting  # type: ignore[method-assign]
    return lambda: checks[0]


class PinSafety(RuleBasedStateMachine):
    """DESIGN §6 #12 over random sequences: no PIN sent at <= 1 retry without --force, at most
    one PIN per unlock (never resubmitted), none to a key without the credential (pre-flight)."""

    tmp: Path

    def __init__(self) -> None:
        super().__init__()
        fresh = Path(tempfile.mkdtemp(dir=self.tmp))  # every example starts with new tokens
        self.mine, self.other = token(fresh, 31), token(fresh, 32)
        set_pin(self.mine)
        set_pin(self.other)
        self.factor, self.secret = Fido2Factor.enroll(ctx_for(self.mine, pins=[PIN]), {"fido2_uv": True})
        self.mine_checks, self.other_checks = count_pin_checks(self.mine), count_pin_checks(self.other)

    @rule(right=st.booleans(), force=st.booleans(), with_other=st.booleans())
    def unlock(self, right: bool, force: bool, with_other: bool) -> None:
        before, left = self.mine_checks(), retries(self.mine)
        cards = (self.other, self.mine) if with_other else (self.mine,)
        try:
            assert self.factor.unlock(ctx_for(*cards, pins=[PIN if right else b"999999", PIN], force=force)) \
                == self.secret
            assert right
        except PinLastTry:
            assert left == 1 and not force
        except (PinBlocked, PinAuthBlocked):
            pass
        except PinInvalid:
            assert not right
        sent = self.mine_checks() - before
        assert sent <= 1
        if left == 0 or (left == 1 and not force):
            assert sent == 0

    @rule()
    def replug(self) -> None:
        self.mine.replug()

    @rule(value=st.integers(min_value=0, max_value=8))
    def counter_set_elsewhere(self, value: int) -> None:
        self.mine.fido2.pin_retries = value

    @invariant()
    def nothing_to_the_key_without_the_credential(self) -> None:
        assert self.other_checks() == 0 and retries(self.other) == 8


def test_pin_safety_sequences(tmp_path: Path) -> None:
    PinSafety.tmp = tmp_path
    runner = PinSafety.TestCase
    runner.settings = settings(max_examples=30, stateful_step_count=12, deadline=None,
                               suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
    runner().runTest()


def test_prf_mapping_matches_python_fido2_webauthn_prf(tmp_path: Path) -> None:
    """With --fido2-prf, a WebAuthn client's prf extension (python-fido2's) gets the factor's secret."""
    tok = token(tmp_path, 41)
    factor, secret = Fido2Factor.enroll(ctx_for(tok), {"fido2_rp": "example.com", "fido2_prf": True})
    assert isinstance(factor, Fido2Factor) and factor.params()["prf"] is True and "PRF" in factor.describe()
    client = Fido2Client(raw_device(tok), DefaultClientDataCollector("https://example.com"),
                         extensions=[HmacSecretExtension(allow_hmac_secret=True)])
    result = client.get_assertion({
        "challenge": b"x" * 32, "rpId": "example.com", "userVerification": "discouraged",
        "allowCredentials": [{"type": "public-key", "id": factor.credential}],
        "extensions": {"prf": {"eval": {"first": factor.salt}}},
    }).get_response(0)
    first = result.client_extension_results["prf"]["results"]["first"]
    assert (websafe_decode(first) if isinstance(first, str) else bytes(first)) == bytes(secret)
    assert Fido2Factor.from_params(factor.params()).unlock(ctx_for(tok)) == secret
    plain = Fido2Factor(factor.rp, factor.credential, factor.salt, factor.uv, factor.aaguid)
    assert plain.unlock(ctx_for(tok)) != secret  # the mapping is what makes the difference
    renewed, old, new = factor.rotate(ctx_for(tok))
    assert old == secret and renewed.unlock(ctx_for(tok)) == new and renewed.params()["prf"] is True


def test_another_program_selecting_another_application_mid_way(tmp_path: Path) -> None:
    """PC/SC access is shared: another program (ykman, OpenSC, 'tokenagent devices') may select the
    PIV application between two of our commands. The pre-flight selects FIDO again instead of
    taking the stray status word for "not this key's credential"."""
    from sharedcard import SharedCard

    from tokenagent.virtual.piv import AID as PIV_AID

    tok = token(tmp_path, 51)  # (over PC/SC whatever the module's transport: HID channels are per client)
    factor, secret = Fido2Factor.enroll(ctx_for(tok), {})
    shared = SharedCard(tok.card, lambda apdu: apdu[1] == 0x10 and apdu[5] == 0x02, PIV_AID)  # our getAssertion
    ctx = ctx_for(tok)
    ctx.devices = VirtualDevices([tok], connect=lambda _: shared)
    assert factor.unlock(ctx) == secret and shared.meddled


@pytest.mark.parametrize("credential", ["not base64!", "QUJD\n", 42, None, "é"])
def test_a_crafted_credential_is_a_vault_format_error(credential: object) -> None:
    """A bad credential id in a vault file is refused as a format error, never as a leaked decoder error."""
    from tokenagent.errors import VaultFormatError

    params = {"rp": "tokenagent", "credential": credential, "salt": "A" * 43 + "=", "uv": False,
              "aaguid": "00" * 16}
    with pytest.raises(VaultFormatError, match="credential"):
        Fido2Factor.from_params(params)
