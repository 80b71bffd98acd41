"""Helpers for the vault-core tests: a scripted Interaction (imported as ``scripted``; conftest has the fixtures)."""

from __future__ import annotations

from tokenagent.errors import NotMine
from tokenagent.factors.base import FactorContext, Interaction, SecretRequest
from tokenagent.plugins import load_factor_types

load_factor_types()


class ScriptedUI(Interaction):
    """Answers prompts from a list; records what was shown once; runs out → 'not available'."""

    def __init__(self, answers: list[bytes] | None = None, by_kind: dict[str, list[bytes]] | None = None) -> None:
        self.answers = list(answers or [])
        self.by_kind = {k: list(v) for k, v in (by_kind or {}).items()}
        self.shown: list[str] = []
        self.asked: list[SecretRequest] = []
        self._cache: dict[tuple[str, str], bytes] = {}

    def ask_secret(self, request: SecretRequest) -> bytearray:
        self.asked.append(request)
        key = (request.kind, request.prompt)
        if key in self._cache:  # as the terminal UI: one answer serves every slot tried
            return bytearray(self._cache[key])
        answer = self._next(request)
        if request.kind in ("password", "recovery", "pin"):
            self._cache[key] = bytes(answer)
        return answer

    def _next(self, request: SecretRequest) -> bytearray:
        if request.kind in self.by_kind:
            if not self.by_kind[request.kind]:
                raise NotMine(f"no {request.kind} given")
            return bytearray(self.by_kind[request.kind].pop(0))
        if not self.answers:
            raise NotMine(f"no {request.kind} given")
        return bytearray(self.answers.pop(0))

    def notify(self, event: str, message: str) -> None:
        pass

    def show_secret_once(self, title: str, text: str) -> None:
        self.shown.append(text)


def context(
    answers: list[bytes] | None = None, keyfiles: list[str] | None = None, **by_kind: list[bytes]
) -> FactorContext:
    return FactorContext(ui=ScriptedUI(answers, by_kind), test_costs=True, options={"keyfiles": list(keyfiles or [])})
