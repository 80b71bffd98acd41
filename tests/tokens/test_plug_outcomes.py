"""What the agent does with a token that has just arrived (daemon/plug.py ``open_with_token``):
open the vault, give up for good (a refused PIN is never asked again), or try once more
because the token may not have settled. Virtual tokens in process stand in the reader."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from scripted import context  # type: ignore[import-not-found]
from ykman.pcsc import ScardSmartCardConnection
from yubikit.piv import DEFAULT_MANAGEMENT_KEY, KEY_TYPE, SLOT, PivSession
from yubikit.yubiotp import SLOT as OTP_SLOT
from yubikit.yubiotp import HmacSha1SlotConfiguration, YubiOtpSession

from tokenagent.daemon import plug
from tokenagent.drivers.otp import OtpFactor
from tokenagent.drivers.piv import PivFactor
from tokenagent.vault import VaultStore, new_vault
from tokenagent.virtual.provider import VirtualDevices
from tokenagent.virtual.token import VirtualToken


class TypedPin:
    """A pinentry that a person answers with ``pin``; counts the questions."""

    def __init__(self, pin: bytes) -> None:
        self.pin = pin
        self.asked = 0

    def ask(self, prompt: str) -> bytearray:
        self.asked += 1
        return bytearray(self.pin)


@pytest.fixture
def yubikey(tmp_path: Path) -> VirtualToken:
    tok = VirtualToken(tmp_path / "yk.json", serial=9001)
    YubiOtpSession(ScardSmartCardConnection(tok.connection())).put_configuration(
        OTP_SLOT.TWO, HmacSha1SlotConfiguration(bytes(range(20))))
    piv = PivSession(ScardSmartCardConnection(tok.connection()))
    piv.authenticate(DEFAULT_MANAGEMENT_KEY)
    piv.generate_key(SLOT.KEY_MANAGEMENT, KEY_TYPE.ECCP256)
    return tok


@pytest.fixture
def store(tmp_path: Path, yubikey: VirtualToken) -> VaultStore:
    directory = tmp_path / "vaults"
    directory.mkdir(mode=0o700)
    store = VaultStore(directory)
    ctx = context(pin=[b"123456"])
    ctx.devices = VirtualDevices([yubikey])
    store.create(new_vault("backups", [OtpFactor.enroll(ctx, {})])[0])
    store.create(new_vault("mail", [PivFactor.enroll(ctx, {"piv_existing": True})])[0])
    return store


def test_plug_outcomes(store: VaultStore, yubikey: VirtualToken, monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[tuple[str, dict[str, Any]]] = []

    def emit(name: str, **data: Any) -> None:
        events.append((name, data))

    present: list[VirtualToken] = []
    monkeypatch.setattr(plug, "ReaderDevices", lambda reader: VirtualDevices(present))
    # The token is not answering yet: worth another try, nothing asked of anyone.
    assert plug.open_with_token(store, "backups", "Virtual PCD 00 00", emit) is plug.RETRY
    pin = TypedPin(b"123456")
    assert plug.open_with_token(store, "mail", "Virtual PCD 00 00", emit, pinentry=pin) is plug.RETRY
    assert pin.asked == 0 and yubikey.piv.pin.remaining == 3
    # It answers: both vaults open.
    present.append(yubikey)
    opened = plug.open_with_token(store, "backups", "Virtual PCD 00 00", emit)
    assert isinstance(opened, plug.Opened) and opened.slot == "1" and len(opened.key) == 32
    opened = plug.open_with_token(store, "mail", "Virtual PCD 00 00", emit, pinentry=pin)
    assert isinstance(opened, plug.Opened) and pin.asked == 1 and ("pin", {"vault": "mail", "reader": "Virtual PCD 00 00"}) in events
    # A wrong PIN is final: one try spent, never asked again by a second round.
    wrong = TypedPin(b"000000")
    assert plug.open_with_token(store, "mail", "Virtual PCD 00 00", emit, pinentry=wrong) is plug.NOT_OPENED
    assert wrong.asked == 1 and yubikey.piv.pin.remaining == 2
    # Without pinentry the PIV vault is not one to open on plug at all.
    assert plug.open_with_token(store, "mail", "Virtual PCD 00 00", emit) is plug.NOT_OPENED
    # A vault that is not there is final too.
    assert plug.open_with_token(store, "nosuch", "Virtual PCD 00 00", emit) is plug.NOT_OPENED


def test_a_plug_in_unlock_reads_the_vault_file_once(store: VaultStore, yubikey: VirtualToken,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The session is made from the file as the unlock parsed and MAC-checked it, not read again."""
    from tokenagent.daemon.config import AgentConfig
    from tokenagent.daemon.state import AgentState

    monkeypatch.setattr(plug, "ReaderDevices", lambda reader: VirtualDevices([yubikey]))
    loads: list[str] = []
    load = store.load
    monkeypatch.setattr(store, "load", lambda name: loads.append(name) or load(name))
    opened = plug.open_with_token(store, "backups", "Virtual PCD 00 00", lambda name, **data: None)
    assert isinstance(opened, plug.Opened) and loads == ["backups"]
    state = AgentState(store, AgentConfig(notify=False, watch_tokens=False))
    state.add_session("backups", opened.key, opened.slot, "token", token="Virtual PCD 00 00", verified=opened.vault)
    assert loads == ["backups"] and "backups" in state.sessions

