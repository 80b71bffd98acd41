"""Factor types describe themselves (is it a token, does it open on plug, does it need a PIN), and the
agent's plug-in choice and the CLI's token handling come from those properties, not from type names."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tokenagent.daemon.plug import plug_slots
from tokenagent.factors.base import REGISTRY, Factor, FactorContext, JSONValue, UnknownFactor
from tokenagent.plugins import load_factor_types
from tokenagent.vault.format import Policy, Slot
from tokenagent.vault.operations import is_token_slot


def slot(slot_id: str, *factors: Factor) -> Slot:
    return Slot(id=slot_id, label="", created=0, last_drill=None, policy=Policy(),
                factors=tuple(factors), salt=b"\0" * 32, nonce=b"\0" * 12, wrapped=b"")


def test_each_registered_type_says_what_it_is() -> None:
    load_factor_types()
    table = {name: (cls.is_token, cls.opens_on_plug) for name, cls in REGISTRY.items()}
    assert table == {"password": (False, False), "keyfile": (False, False), "recovery": (False, False),
                     "fido2": (True, True), "otp": (True, True), "piv": (True, True), "pkcs11": (True, False)}


class Dongle(Factor):
    """A factor type from elsewhere: only its own class says how it behaves."""

    type = "dongle"
    is_token = True
    opens_on_plug = True

    def __init__(self, pin: bool) -> None:
        self.pin = pin

    @classmethod
    def from_params(cls, params: Mapping[str, JSONValue]) -> Factor:
        return cls(bool(params["pin"]))

    def params(self) -> dict[str, JSONValue]:
        return {"pin": self.pin}

    @classmethod
    def enroll(cls, ctx: FactorContext, options: Mapping[str, Any]) -> tuple[Factor, bytearray]:
        raise NotImplementedError

    def unlock(self, ctx: FactorContext) -> bytearray:
        raise NotImplementedError

    def needs_pin(self) -> bool:
        return self.pin


def test_plug_slots_and_token_slots_follow_the_properties() -> None:
    from tokenagent.factors.password import PasswordFactor

    password = PasswordFactor(b"\0" * 16, 1, 8, 1)
    slots = (slot("1", Dongle(pin=False)), slot("2", Dongle(pin=True)), slot("3", Dongle(pin=False), password),
             slot("4", password))
    assert plug_slots(slots) == ["1"]
    assert plug_slots(slots, with_pin=True) == ["1", "2"]  # pinentry can ask: the PIN one too; a password never
    assert [is_token_slot(s) for s in slots] == [True, True, True, False]
    assert UnknownFactor("future", {}).is_token  # an unknown type may need a device: never taken for software
