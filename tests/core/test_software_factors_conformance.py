"""The software factors pass the shared conformance class (tests/factor_conformance.py)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from factor_conformance import FactorConformance  # type: ignore[import-not-found]
from scripted import ScriptedUI, context  # type: ignore[import-not-found]

from tokenagent.factors.base import FactorContext


class TestPasswordConformance(FactorConformance):
    factor_type = "password"

    def enroll_context(self) -> FactorContext:
        return context([b"open sesame"])

    def unlock_context(self) -> FactorContext:
        return context([b"open sesame"])

    def foreign_context(self) -> FactorContext:
        return context([b"open simsim"])


class TestKeyFileConformance(FactorConformance):
    factor_type = "keyfile"

    @pytest.fixture(autouse=True)
    def _files(self, tmp_path: Path) -> None:
        self.mine, self.other = tmp_path / "mine", tmp_path / "other"
        self.mine.write_bytes(os.urandom(32))
        self.other.write_bytes(os.urandom(32))

    def enroll_options(self) -> dict[str, Any]:
        return {"path": str(self.mine)}

    def enroll_context(self) -> FactorContext:
        return context()

    def unlock_context(self) -> FactorContext:
        return context(keyfiles=[str(self.mine)])

    def foreign_context(self) -> FactorContext:
        return context(keyfiles=[str(self.other)])


class TestRecoveryConformance(FactorConformance):
    factor_type = "recovery"

    def enroll_context(self) -> FactorContext:
        self.ui = ScriptedUI()
        return FactorContext(ui=self.ui, test_costs=True)

    def unlock_context(self) -> FactorContext:
        return context([self.ui.shown[-1].encode()])

    def foreign_context(self) -> FactorContext:
        return context([b"cccccccc" * 8])
