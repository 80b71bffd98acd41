"""The password factor: Argon2id (RFC 9106) over the typed password.

Costs are calibrated at enrolment to a target time (default 1 s) on this machine, stored in
the slot and bound into its AEAD, and checked against a floor when read: a vault edited to
lower costs is refused before any password is asked. The floor can only be lowered for
tests, by ``TOKENAGENT_TEST_KDF=1`` in the environment (docs/spec/vault.md).
"""

from __future__ import annotations

import base64
import os
import secrets
import time
from collections.abc import Mapping
from typing import Any

from ..errors import UsageError, VaultFormatError
from .base import Factor, FactorContext, JSONValue, SecretRequest, register
from .limits import ENV_ITERATIONS, ENV_LANES, ENV_MEMORY, kdf_limits
from .params import expect_b64, expect_int, expect_keys
from .quality import PasswordPolicy, hint

ENV_TEST_KDF = "TOKENAGENT_TEST_KDF"
SALT_LEN = 16
OUT_LEN = 32
# OWASP's first Argon2id recommendation; never below this outside tests.
FLOOR_MEMORY_KIB = 19456
FLOOR_ITERATIONS = 2
CALIBRATION_MEMORY_KIB = 65536
TEST_COSTS = {"t": 1, "m": 8, "p": 1}
DEFAULT_TARGET_SECONDS = 1.0


def test_costs_allowed() -> bool:
    return os.environ.get(ENV_TEST_KDF) == "1"


def argon2id(password: bytes | bytearray, salt: bytes, t: int, m: int, p: int) -> bytearray:
    from cryptography.hazmat.primitives.kdf.argon2 import Argon2id  # here: parsing a vault does not need it

    kdf = Argon2id(salt=salt, length=OUT_LEN, iterations=t, lanes=p, memory_cost=m)
    return bytearray(kdf.derive(bytes(password)))


def calibrate(target_seconds: float) -> dict[str, int]:
    """Iterations at 64 MiB reaching ``target_seconds`` here (never under the floor).

    One pass and three passes are timed: their difference is the cost of an iteration, the
    rest is the fixed cost of filling 64 MiB, which a single pass would count as iteration time.
    """
    def timed(t: int) -> float:
        start = time.perf_counter()
        argon2id(b"calibration", secrets.token_bytes(SALT_LEN), t, CALIBRATION_MEMORY_KIB, 1)
        return time.perf_counter() - start

    one, three = timed(1), timed(3)
    per_pass = max((three - one) / 2, 1e-4)
    fixed = max(one - per_pass, 0.0)
    t = max(FLOOR_ITERATIONS, min(64, round((target_seconds - fixed) / per_pass)))
    return {"t": t, "m": CALIBRATION_MEMORY_KIB, "p": 1}


@register
class PasswordFactor(Factor):
    type = "password"

    def __init__(self, salt: bytes, t: int, m: int, p: int) -> None:
        self.salt, self.t, self.m, self.p = salt, t, m, p

    @classmethod
    def from_params(cls, params: Mapping[str, JSONValue]) -> Factor:
        expect_keys(params, {"kdf", "salt", "t", "m", "p"}, "password")
        if params["kdf"] != "argon2id":
            raise VaultFormatError("password: only the argon2id KDF is supported")
        limits = kdf_limits()
        t = expect_int(params, "t", 1, 1 << 16, "password")
        m = expect_int(params, "m", 8, 1 << 22, "password")
        p = expect_int(params, "p", 1, 64, "password")
        for value, limit, what, env in ((m, limits.memory_kib, f"memory {m} KiB", ENV_MEMORY),
                                        (t, limits.iterations, f"{t} passes", ENV_ITERATIONS),
                                        (p, limits.lanes, f"{p} lanes", ENV_LANES)):
            if value > limit:
                raise VaultFormatError(f"password: Argon2id {what} is over this machine's limit ({limit});"
                                       f" raise {env} if the vault is yours and meant to be this costly")
        if m < 8 * p:
            raise VaultFormatError("password: Argon2id needs at least 8 KiB per lane")
        if (m < FLOOR_MEMORY_KIB or t < FLOOR_ITERATIONS) and not test_costs_allowed():
            raise VaultFormatError(
                f"password: KDF costs t={t}, m={m} KiB are below the minimum (t>={FLOOR_ITERATIONS},"
                f" m>={FLOOR_MEMORY_KIB} KiB); the vault was weakened or made for tests"
            )
        return cls(expect_b64(params, "salt", SALT_LEN, "password"), t, m, p)

    def kdf_work(self) -> int:
        return self.t * self.m

    def params(self) -> dict[str, JSONValue]:
        return {"kdf": "argon2id", "salt": base64.b64encode(self.salt).decode(), "t": self.t, "m": self.m, "p": self.p}

    @classmethod
    def enroll(cls, ctx: FactorContext, options: Mapping[str, Any]) -> tuple[Factor, bytearray]:
        password = ctx.ui.ask_secret(SecretRequest("new-password", "New password for this slot", confirm=True))
        try:
            if not password:
                raise UsageError("the password is empty; choose a real one")
            policy = options.get("policy") or PasswordPolicy()
            advice = hint(policy.check(password))
            if advice:
                ctx.ui.notify("warning", advice)
            if ctx.test_costs:
                if not test_costs_allowed():
                    raise UsageError(f"test KDF costs need {ENV_TEST_KDF}=1 in the environment")
                costs = dict(TEST_COSTS)
                factor = cls(secrets.token_bytes(SALT_LEN), costs["t"], costs["m"], costs["p"])
                return factor, argon2id(password, factor.salt, factor.t, factor.m, factor.p)
            target = float(options.get("kdf_time") or DEFAULT_TARGET_SECONDS)
            with ctx.ui.working(f"measuring this machine for the password's Argon2id (target {target:g} s)"):
                costs = calibrate(target)
                factor = cls(secrets.token_bytes(SALT_LEN), costs["t"], costs["m"], costs["p"])
                return factor, argon2id(password, factor.salt, factor.t, factor.m, factor.p)
        finally:
            password[:] = b"\0" * len(password)

    def unlock(self, ctx: FactorContext) -> bytearray:
        password = ctx.ui.ask_secret(SecretRequest("password", "Password"))
        try:
            return argon2id(password, self.salt, self.t, self.m, self.p)
        finally:
            password[:] = b"\0" * len(password)

    def describe(self) -> str:
        memory = f"{self.m // 1024} MiB" if self.m >= 1024 else f"{self.m} KiB"
        return f"password (argon2id t={self.t} m={memory})"
