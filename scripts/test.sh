#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the whole test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m ruff check tokenagent tests bench
.venv/bin/python -m mypy tokenagent
.venv/bin/python -m pytest -q "$@"
