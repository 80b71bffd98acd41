#!/usr/bin/env bash
# The desk tier (docs/desk.md): one QEMU guest with Debian's kernel, uhid, udev and systemd runs
# tests/desk. Needs root, qemu-system-x86, linux-image-amd64, busybox-static (scripts/setup.sh
# installs them). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s)
# Debian 13 moved systemd-cryptenroll and systemd-cryptsetup into a package of their own
if ! command -v systemd-cryptenroll >/dev/null && [ "$(id -u)" = 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends systemd-cryptsetup >/dev/null || true
fi
status=0
.venv/bin/python -m pytest -q -rA -m desk tests/desk "$@" || status=$?
echo "desk tier: $(( $(date +%s) - started )) s wall time"
exit "$status"
