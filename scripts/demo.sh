#!/usr/bin/env bash
# The tokenagent demo: sets up (scripts/setup.sh), then walks through the three flows in a
# throw-away TOKENAGENT_HOME, with restic as the program that needs a key:
#   1. an admin creates a vault with a main slot and a backup slot;
#   2. the agent unlocks it, restic gets its own subkey from the agent, the vault locks again;
#   3. the main factors are "lost": the backup slot unlocks it and restic works on.
# The main slot here is a composite of a password and a key file on a "USB stick";
# hardware-token slots (FIDO2, PIV, OTP, PKCS#11) and the virtual token are not in this
# version yet: the demo says so where they would appear.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "setting up (Debian packages, .venv); the log is in /tmp/tokenagent-setup.log"
if ! bash scripts/setup.sh > /tmp/tokenagent-setup.log 2>&1; then
  cat /tmp/tokenagent-setup.log; echo "setup failed"; exit 1
fi
export PATH="$PWD/.venv/bin:$PATH"

demo=$(mktemp -d /tmp/tokenagent-demo.XXXXXX)
export TOKENAGENT_HOME="$demo/home"
mkdir -m 700 "$TOKENAGENT_HOME"
agent_pid=""
cleanup() {
  if [ -n "$agent_pid" ]; then kill "$agent_pid" 2>/dev/null || true; wait "$agent_pid" 2>/dev/null || true; fi
  rm -rf "$demo"
}
trap cleanup EXIT

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }

# The demo types nothing: secrets come from files, as --password-file allows (never argv).
printf 'correct horse battery staple\n' > "$demo/password"
mkdir -m 700 "$demo/usb-stick"

step "1. Admin: a vault whose main slot needs a password AND a key file, and a printed recovery key"
run tokenagent keyfile generate "$demo/usb-stick/docs.keyx"
run tokenagent init docs --password --keyfile "$demo/usb-stick/docs.keyx" --password-file "$demo/password" \
    --label "password + USB stick"
echo "$ tokenagent enroll docs --recovery --label 'paper, in the safe' ..."
tokenagent enroll docs --recovery --label "paper, in the safe" --password-file "$demo/password" \
    --unlock-keyfile "$demo/usb-stick/docs.keyx" --json > "$demo/recovery.json"
python3 -c 'import json,sys; print("recovery key (shown once, print it):", json.load(open(sys.argv[1]))["shown"][0]["secret"])' \
    "$demo/recovery.json"
python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["shown"][0]["secret"])' "$demo/recovery.json" \
    > "$demo/recovery"
run tokenagent slots docs
echo "(a FIDO2/PIV/OTP/PKCS#11 token slot would be enrolled here with --fido2, --piv, ...: token factors"
echo " and the virtual token are not part of this version)"

step "2. The agent serves keys; restic gets its own subkey"
tokenagent agent > "$demo/agent.log" 2>&1 &
agent_pid=$!
for _ in $(seq 100); do tokenagent status >/dev/null 2>&1 && break; sleep 0.1; done
run tokenagent status
run tokenagent unlock docs --password-file "$demo/password" --keyfile "$demo/usb-stick/docs.keyx" --idle-ttl 600
export RESTIC_REPOSITORY="$demo/restic-repo"
export RESTIC_PASSWORD_COMMAND="tokenagent get docs --context restic:$RESTIC_REPOSITORY"
mkdir "$demo/data" && echo "quarterly report" > "$demo/data/report.txt"
run restic init --quiet
run restic backup --quiet "$demo/data"
run restic snapshots --compact
run tokenagent lock docs
echo "$ restic snapshots   # vault locked: restic is told why and fails"
if restic snapshots --compact 2>&1 | sed 's/^/  | /'; then echo "unexpected: restic ran while locked"; exit 1; fi

step "3. The main factors are lost: the backup slot (the recovery key) unlocks, restic works on"
run tokenagent unlock docs --slot 2 --recovery-file "$demo/recovery"
run restic snapshots --compact
run tokenagent status
run tokenagent lock --all

step "Audit log: every key release, with the program that asked"
python3 - "$TOKENAGENT_HOME/data/audit.log" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    e = json.loads(line)
    who = f"{e.get('parent_exe') or '?'} via {e['exe']}"
    print(f"  pid {e['pid']} ({who}): {e['vault']} context={e['context']} -> {'released' if e['ok'] else e['error']}")
PY

step "Done"
echo "Everything above ran in $demo (removed now). See README.md and docs/ for more."
