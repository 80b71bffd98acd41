#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the whole test suite. Extra arguments go to pytest.
# The desk tier (tests/desk, one QEMU guest: docs/desk.md) runs after the main suite when no
# arguments are given.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m ruff check tokenagent tests bench
.venv/bin/python -m mypy tokenagent
.venv/bin/python -m pytest -q -m "not desk" "$@"
if [ "$#" -eq 0 ]; then
    bash scripts/desk.sh
fi
