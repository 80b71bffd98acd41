"""A Hypothesis state machine over add/remove/unlock of slots of every software factor (DESIGN §6 #14).

The model keeps, for each slot, how to open it; every step checks the file against the model:
every slot opens the same secret, a removed slot is gone, the last slot cannot be removed.
Hypothesis ends some runs early, so it runs 400 and the figures test checks that at least 200
reached 50 steps. The store lives on tmpfs where there is one, to stay fast.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from scripted import context  # type: ignore[import-not-found]

from tokenagent.errors import LastSlot, NoSlotMatched
from tokenagent.factors.keyfile import KeyFileFactor
from tokenagent.factors.password import PasswordFactor
from tokenagent.factors.recovery import RecoveryFactor
from tokenagent.vault import VaultStore, new_vault, operations, unlock

TMP_BASE = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None

# How to open a slot: password answers, recovery answers, key file paths.
Opener = tuple[list[bytes], list[bytes], list[str]]
STEPS: list[int] = []  # steps per run, for the figure printed at the end


class SlotModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="ta-model-", dir=TMP_BASE))
        os.chmod(self.dir, 0o700)
        self.store = VaultStore(self.dir / "vaults")
        self.slots: dict[str, Opener] = {}
        self.counter = 0
        self.steps = 0

    def teardown(self) -> None:
        STEPS.append(self.steps)
        shutil.rmtree(self.dir, ignore_errors=True)

    def _enroll(self, kinds: list[str]) -> tuple[list, Opener]:
        passwords: list[bytes] = []
        recoveries: list[bytes] = []
        files: list[str] = []
        enrolled = []
        for kind in kinds:
            self.counter += 1
            ctx = context()
            if kind == "password":
                pw = f"pw-{self.counter}".encode()
                ctx = context([pw])
                passwords.append(pw)
                enrolled.append(PasswordFactor.enroll(ctx, {}))
            elif kind == "keyfile":
                path = self.dir / f"key{self.counter}"
                path.write_bytes(os.urandom(40))
                files.append(str(path))
                enrolled.append(KeyFileFactor.enroll(ctx, {"path": str(path)}))
            else:
                enrolled.append(RecoveryFactor.enroll(ctx, {}))
                recoveries.append(ctx.ui.shown[0].encode())  # type: ignore[attr-defined]
        return enrolled, (passwords, recoveries, files)

    @initialize(kinds=st.lists(st.sampled_from(["password", "keyfile", "recovery"]), min_size=1, max_size=2))
    def create(self, kinds: list[str]) -> None:
        enrolled, opener = self._enroll(kinds)
        vault, self.key = new_vault("m", enrolled)
        self.store.create(vault)
        self.slots["1"] = opener

    @precondition(lambda self: len(self.slots) < 8)
    @rule(kinds=st.lists(st.sampled_from(["password", "keyfile", "recovery"]), min_size=1, max_size=3),
          threshold=st.booleans())
    def add(self, kinds: list[str], threshold: bool) -> None:
        enrolled, opener = self._enroll(kinds)
        k = 1 if threshold and len(kinds) > 1 else None
        _, slot = operations.add_slot(self.store, "m", self.key, enrolled, k)
        self.slots[slot.id] = opener

    @rule(data=st.data())
    def remove(self, data: st.DataObject) -> None:
        slot_id = data.draw(st.sampled_from(sorted(self.slots)))
        if len(self.slots) == 1:
            with pytest.raises(LastSlot):
                operations.remove_slot(self.store, "m", self.key, slot_id)
            return
        operations.remove_slot(self.store, "m", self.key, slot_id)
        del self.slots[slot_id]

    @rule(data=st.data())
    def unlock_one(self, data: st.DataObject) -> None:
        slot_id = data.draw(st.sampled_from(sorted(self.slots)))
        passwords, recoveries, files = self.slots[slot_id]
        ctx = context(None, files, password=list(passwords), recovery=list(recoveries))
        assert unlock(self.store.load("m"), ctx, [slot_id]).masterkey == self.key

    @rule()
    def wrong_secrets_open_nothing(self) -> None:
        with pytest.raises(NoSlotMatched):
            absent = [str(self.dir / "no-such-key-file")]  # so the key files' path hints are not used
            unlock(self.store.load("m"), context(None, absent, password=[b"nope"], recovery=[b"nope"]))

    @invariant()
    def file_matches_model(self) -> None:
        self.steps += 1
        if self.slots:
            assert sorted(s.id for s in self.store.load("m").slots) == sorted(self.slots)


SlotModel.TestCase.settings = settings(
    max_examples=400, stateful_step_count=50, deadline=None, suppress_health_check=list(HealthCheck)
)
TestSlotModel = SlotModel.TestCase


def test_model_figures() -> None:
    """Runs after the model (file order): print and check how much it exercised."""
    full = [n for n in STEPS if n >= 50]
    print(f"\nslot model: {len(STEPS)} runs, {sum(STEPS)} steps, {len(full)} runs of 50+ steps")
    assert len(full) >= 200
