#!/usr/bin/env python3
"""Long fuzzing campaigns of the frame parser and dispatcher under atheris (coverage-guided).

The target and its invariants are those of tests/agent/test_fuzz.py, which CI runs with
10^5 mutation-fuzzer executions; this script is for hours, not seconds:

    .venv/bin/pip install atheris
    .venv/bin/python bench/fuzz_protocol.py -atheris_runs=10000000 [corpus_dir]
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "agent"))
with atheris.instrument_imports():
    from test_fuzz import Target  # noqa: E402

TARGET = Target(Path(tempfile.mkdtemp(prefix="tokenagent-fuzz-")) / "vaults")
TARGET.relock()


def one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    cuts = sorted({fdp.ConsumeIntInRange(0, 64) for _ in range(fdp.ConsumeIntInRange(0, 3))})
    payload = fdp.ConsumeBytes(fdp.remaining_bytes())
    chunks = [payload[a:b] for a, b in zip([0, *cuts], [*cuts, len(payload)], strict=False) if b > a]
    TARGET.feed(chunks or [payload])


if __name__ == "__main__":
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
