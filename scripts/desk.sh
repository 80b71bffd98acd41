#!/usr/bin/env bash
# The desk tier (docs/desk.md): one QEMU guest with Debian's kernel, uhid, udev and systemd runs
# tests/desk. Needs root, qemu-system-x86, linux-image-amd64, busybox-static (scripts/setup.sh
# installs them). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s)
status=0
.venv/bin/python -m pytest -q -rA -m desk tests/desk "$@" || status=$?
echo "desk tier: $(( $(date +%s) - started )) s wall time"
exit "$status"
