"""The conformance test class every factor type passes, software and token alike (STYLE #3).

A factor's test module subclasses ``FactorConformance`` (token factors: ``TokenPairConformance``,
which builds the three contexts from two tokens) and provides three context builders:
``enroll_context`` (what enrolment needs), ``unlock_context`` (the same source present) and
``foreign_context`` (a different source: another token, another key file, a wrong password),
plus ``enroll_options``. The class checks the contract of tokenagent.factors.base.Factor:

* enrolment gives a factor and a secret of at least 16 bytes;
* the descriptor survives JSON and ``factor_from_descriptor`` unchanged;
* the public parameters contain no trace of the secret, and ``describe()`` is one line;
* unlock with the same source gives the same secret, twice;
* unlock with a foreign source raises NotMine (or another AuthError), never returns the secret;
* unknown or missing parameters are refused with VaultFormatError;
* the type is registered, and a slot made of it round-trips through the vault.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from tokenagent.errors import AuthError, TokenAgentError, VaultFormatError
from tokenagent.factors.base import REGISTRY, Factor, FactorContext, factor_from_descriptor
from tokenagent.plugins import load_factor_types
from tokenagent.vault import new_vault, unlock


class FactorConformance:
    factor_type: str = ""
    tmp: Path  # a private directory for each test (token state files, key files)

    @pytest.fixture(autouse=True)
    def _private_tmp(self, tmp_path: Path) -> None:
        self.tmp = tmp_path

    # --- to provide ----------------------------------------------------------------------
    def enroll_context(self) -> FactorContext:
        raise NotImplementedError

    def unlock_context(self) -> FactorContext:
        raise NotImplementedError

    def foreign_context(self) -> FactorContext:
        raise NotImplementedError

    def enroll_options(self) -> dict[str, Any]:
        return {}

    # --- the contract ----------------------------------------------------------------------
    def _enroll(self) -> tuple[Factor, bytearray]:
        cls = load_factor_types()[self.factor_type]
        return cls.enroll(self.enroll_context(), self.enroll_options())

    def test_registered(self) -> None:
        load_factor_types()
        assert REGISTRY[self.factor_type].type == self.factor_type

    def test_enroll_gives_factor_and_secret(self) -> None:
        factor, secret = self._enroll()
        assert isinstance(factor, Factor) and isinstance(secret, bytearray) and len(secret) >= 16

    def test_descriptor_round_trips_through_json(self) -> None:
        factor, _ = self._enroll()
        stored = json.loads(json.dumps(factor.descriptor()))
        assert stored["type"] == self.factor_type
        again = factor_from_descriptor(stored)
        assert again.descriptor() == factor.descriptor()

    def test_params_and_description_hold_no_secret(self) -> None:
        factor, secret = self._enroll()
        text = json.dumps(factor.descriptor()) + factor.describe()
        for form in (bytes(secret).hex(), base64.b64encode(bytes(secret)).decode(), bytes(secret[:8]).hex()):
            assert form not in text
        assert "\n" not in factor.describe() and factor.describe()

    def test_unlock_gives_the_same_secret(self) -> None:
        factor, secret = self._enroll()
        again = factor_from_descriptor(json.loads(json.dumps(factor.descriptor())))
        assert again.unlock(self.unlock_context()) == secret
        assert again.unlock(self.unlock_context()) == secret

    def test_foreign_source_is_not_mine(self) -> None:
        factor, secret = self._enroll()
        try:
            other = factor.unlock(self.foreign_context())
        except AuthError:
            return
        assert other != secret  # a source that cannot tell gives a different secret; the AEAD refuses it

    def test_unknown_and_missing_params_are_refused(self) -> None:
        factor, _ = self._enroll()
        cls = REGISTRY[self.factor_type]
        params = factor.params()
        with pytest.raises(VaultFormatError):
            cls.from_params({**params, "unexpected": 1})
        for key in params:
            trimmed = {k: v for k, v in params.items() if k != key}
            try:
                cls.from_params(trimmed)
            except VaultFormatError:
                continue
            # an optional parameter may be absent; the factor must then still describe itself
            assert cls.from_params(trimmed).describe()

    def test_slot_round_trip(self) -> None:
        enrolled = [self._enroll()]
        vault, key = new_vault("conformance", enrolled)
        assert unlock(vault, self.unlock_context()).masterkey == key
        with pytest.raises(TokenAgentError):
            unlock(vault, self.foreign_context())


class TokenPairConformance(FactorConformance):
    """For token factors: enrolment and unlock use the first of two tokens, the foreign context
    the second. Subclasses give ``serials``, ``make_token(serial)`` and ``context_for(token)``."""

    serials: tuple[int, int] = (0, 0)

    def make_token(self, serial: int) -> Any:
        raise NotImplementedError

    def context_for(self, token: Any) -> FactorContext:
        raise NotImplementedError

    def _tokens(self) -> tuple[Any, Any]:
        if not hasattr(self, "_pair"):
            self._pair = (self.make_token(self.serials[0]), self.make_token(self.serials[1]))
        return self._pair

    def enroll_context(self) -> FactorContext:
        return self.context_for(self._tokens()[0])

    def unlock_context(self) -> FactorContext:
        return self.context_for(self._tokens()[0])

    def foreign_context(self) -> FactorContext:
        return self.context_for(self._tokens()[1])
