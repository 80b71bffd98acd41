"""Limits on the work a vault file may demand before any of its slots opens.

A crafted vault file can name any KDF cost; the costs are bound into the slot's AEAD, so an
edit is caught, but only after the KDF ran. These limits are checked when the file is read,
before anything is asked or computed (docs/spec/vault.md, "Limits"). They are the same in the
CLI and the agent, and can be raised (or lowered) from the environment:

    TOKENAGENT_MAX_KDF_MEMORY_MIB   Argon2id memory per password factor   (default 1024)
    TOKENAGENT_MAX_KDF_ITERATIONS   Argon2id passes per password factor   (default 64)
    TOKENAGENT_MAX_KDF_LANES        Argon2id lanes per password factor    (default 16)
    TOKENAGENT_MAX_KDF_TOTAL_GIB    sum over the file of memory x passes  (default 64, GiB-passes)

A file over a limit is refused with ``vault-format`` naming the limit and the variable.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..errors import UsageError

ENV_MEMORY = "TOKENAGENT_MAX_KDF_MEMORY_MIB"
ENV_ITERATIONS = "TOKENAGENT_MAX_KDF_ITERATIONS"
ENV_LANES = "TOKENAGENT_MAX_KDF_LANES"
ENV_TOTAL = "TOKENAGENT_MAX_KDF_TOTAL_GIB"

DEFAULT_MEMORY_MIB = 1024
DEFAULT_ITERATIONS = 64
DEFAULT_LANES = 16
DEFAULT_TOTAL_GIB = 64


@dataclass(frozen=True)
class KdfLimits:
    memory_kib: int
    iterations: int
    lanes: int
    total_kib_passes: int  # sum of m * t over every password factor of one file


def _env_int(name: str, default: int, high: int) -> int:
    text = os.environ.get(name)
    if text is None or text == "":
        return default
    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= high:
        raise UsageError(f"{name} must be a whole number from 1 to {high}, not {text[:20]!r}")
    return int(text)


def kdf_limits() -> KdfLimits:
    """The limits in force (read from the environment each time: tests and the agent may set them)."""
    return KdfLimits(
        memory_kib=_env_int(ENV_MEMORY, DEFAULT_MEMORY_MIB, 4096) * 1024,
        iterations=_env_int(ENV_ITERATIONS, DEFAULT_ITERATIONS, 1 << 16),
        lanes=_env_int(ENV_LANES, DEFAULT_LANES, 64),
        total_kib_passes=_env_int(ENV_TOTAL, DEFAULT_TOTAL_GIB, 1 << 20) * 1024 * 1024,
    )
