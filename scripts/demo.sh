#!/usr/bin/env bash
# The tokenagent demo (README's main command). It sets up (scripts/setup.sh), then walks
# through the three flows in a throw-away TOKENAGENT_HOME with restic as the program that
# needs a key:
#   1. an admin creates a vault with a main token, a backup token and a printed recovery key;
#   2. the agent runs; plugging the main token in unlocks the vault (touch), restic gets its
#      own subkey, pulling the token out locks the vault again;
#   3. the main token is "lost": the backup token unlocks the vault the same way.
# With no hardware, the tokens are virtual YubiKeys (tokenagent virtual-token) in a private
# pcscd with the vsmartcard vpcd driver (a mount namespace: needs root). Without root it
# runs the same flows with a password + key-file slot instead of tokens (TOKENAGENT_DEMO_SOFTWARE=1
# chooses that version; TOKENAGENT_DEMO_KEEP=1 keeps the demo directory for a look around).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${TOKENAGENT_DEMO_NO_SETUP:-}" ]; then  # set: already set up (the test suite runs the demo so)
  echo "setting up (Debian packages, .venv); the log is in /tmp/tokenagent-setup.log"
  if ! bash scripts/setup.sh > /tmp/tokenagent-setup.log 2>&1; then
    cat /tmp/tokenagent-setup.log; echo "setup failed"; exit 1
  fi
fi
export PATH="$PWD/.venv/bin:$PATH"
PY="$PWD/.venv/bin/python"

demo=$(mktemp -d /tmp/tokenagent-demo.XXXXXX)
export TOKENAGENT_HOME="$demo/home"
mkdir -m 700 "$TOKENAGENT_HOME" "$TOKENAGENT_HOME/config"
printf '[agent]\nremoval_grace = 1.0\n' > "$TOKENAGENT_HOME/config/config.toml"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  [ -n "${TOKENAGENT_DEMO_KEEP:-}" ] || rm -rf "$demo"
}
trap cleanup EXIT

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
say() { printf '   %s\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }

export RESTIC_REPOSITORY="$demo/restic-repo"
export RESTIC_PASSWORD_COMMAND="tokenagent get docs --context restic:$RESTIC_REPOSITORY --wait 30"
mkdir "$demo/data" && echo "quarterly report" > "$demo/data/report.txt"

start_agent() {
  tokenagent agent > "$demo/agent.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do tokenagent status >/dev/null 2>&1 && return 0; sleep 0.1; done
  cat "$demo/agent.log"; echo "the agent did not start"; exit 1
}

show_audit() {
  step "Audit log: every key release, with the program that asked"
  "$PY" - "$TOKENAGENT_HOME/data/audit.log" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    e = json.loads(line)
    who = f"{e.get('parent_exe') or '?'} via tokenagent get"
    print(f"   pid {e['pid']} ({who}): {e['vault']} context={e['context']} -> {'released' if e['ok'] else e['error']}")
PY
}

can_use_virtual_tokens() {
  [ -z "${TOKENAGENT_DEMO_SOFTWARE:-}" ] && [ "$(id -u)" = 0 ] && command -v unshare >/dev/null && command -v pcscd >/dev/null \
    && [ -e /usr/lib/pcsc/drivers/serial/libifdvpcd.so ]
}

# ------------------------------------------------------------------------------------------
if can_use_virtual_tokens; then
  # the private pcscd's helpers live in tests/pcscd.py: free ports, the options this pcscd needs
  # (--disable-polkit on pcscd 2.x built with polkit; 1.9 refuses it), its refusals of clients
  pcscd_py() { "$PY" -c "import sys; sys.path.insert(0, 'tests'); import pcscd; $1" "${@:2}"; }
  port=$(pcscd_py 'print(pcscd.free_ports(2))')
  pcscd_opts=$(pcscd_py 'print(" ".join(pcscd.pcscd_options(pcscd.pcscd_help())))')
  mkdir -p "$demo/pcscd/reader.conf.d"
  printf 'FRIENDLYNAME "Virtual PCD"\nDEVICENAME   /dev/null:0x%04X\nLIBPATH      /usr/lib/pcsc/drivers/serial/libifdvpcd.so\nCHANNELID    0x%04X\n' \
    "$port" "$port" > "$demo/pcscd/reader.conf.d/vpcd"
  unshare --mount --propagation private sh -c \
    "mkdir -p /run/pcscd && mount -t tmpfs -o mode=0755 tmpfs /run/pcscd && exec pcscd --foreground --config $demo/pcscd/reader.conf.d $pcscd_opts" \
    > "$demo/pcscd/log" 2>&1 &
  pcscd_pid=$!
  pids+=($pcscd_pid)
  export PCSCLITE_CSOCK_NAME=/proc/$pcscd_pid/root/run/pcscd/pcscd.comm
  for _ in $(seq 100); do [ -S "$PCSCLITE_CSOCK_NAME" ] && break; sleep 0.1; done
  if [ ! -S "$PCSCLITE_CSOCK_NAME" ]; then cat "$demo/pcscd/log"; echo "the private pcscd did not start (its log is above)"; exit 1; fi
  pcscd_refusals() {  # pcscd's own account when it turned clients away (polkit), instead of a misleading symptom
    local refused
    refused=$(pcscd_py 'print(pcscd.refusals(open(sys.argv[1]).read()))' "$demo/pcscd/log")
    [ -z "$refused" ] || printf 'pcscd turned clients away (pcscd %s):\n%s\n' "$(pcscd --version 2>&1 | grep -o '[0-9][0-9.]*' | head -1)" "$refused"
  }

  cards() {  # cards present in pcscd's readers, without sending them anything (the agent may be talking to one)
    "$PY" -c 'from smartcard.System import readers
n = 0
for r in readers():
    c = r.createConnection()
    try:
        c.connect(); n += 1; c.disconnect()
    except Exception:
        pass
print(n)' 2>/dev/null
  }
  wait_cards() { for _ in $(seq 60); do [ "$(cards)" = "$1" ] && return 0; sleep 0.25; done; pcscd_refusals; echo "pcscd did not show $1 token(s)"; exit 1; }
  start_token() {  # name serial slot
    tokenagent virtual-token run --state "$demo/$1.json" --serial "$2" --vpcd "127.0.0.1:$((port + $3))" \
      --unplugged > "$demo/$1.log" 2>&1 &
    pids+=($!)
    for _ in $(seq 100); do [ -S "$demo/$1.json.ctl" ] && return 0; sleep 0.1; done
    cat "$demo/$1.log"; pcscd_refusals; exit 1  # the trap stops the token and pcscd
  }
  plugged=0
  plug() { printf '$ tokenagent virtual-token plug --state %s.json   # (you plug in the key)\n' "$1"
           tokenagent virtual-token plug --state "$demo/$1.json" >/dev/null || { pcscd_refusals; exit 1; }
           plugged=$((plugged + 1)); wait_cards $plugged; }
  unplug() { printf '$ tokenagent virtual-token unplug --state %s.json   # (you pull the key out)\n' "$1"
             tokenagent virtual-token unplug --state "$demo/$1.json" >/dev/null; plugged=$((plugged - 1)); wait_cards $plugged; }

  step "Two virtual YubiKeys (FIDO2) in a private pcscd: 'main' (serial 5001) and 'backup' (5002)"
  start_token main 5001 0
  start_token backup 5002 1
  say "they answer like real keys over PC/SC: tokenagent, python-fido2 and pcsc-tools see them in pcscd"
  say "(they touch themselves at once; run one with --touch explicit to press it by hand)"

  step "1. Admin: a vault on the main key, a backup key, and a printed recovery key"
  plug main
  run tokenagent devices
  run tokenagent init docs --fido2 --label "main key"
  plug backup
  say "both keys are plugged in: tokenagent unlocks with the main one and enrols the other"
  run tokenagent enroll docs --fido2 --label "backup key, in the drawer"
  printf '$ tokenagent enroll docs --recovery --label "paper, in the safe"\n'
  tokenagent enroll docs --recovery --label "paper, in the safe" --json > "$demo/recovery.json"
  "$PY" -c 'import json,sys; print("   recovery key (shown once; print it):", json.load(open(sys.argv[1]))["shown"][0]["secret"])' "$demo/recovery.json"
  run tokenagent slots docs
  unplug backup
  unplug main

  step "2. The agent: plug the key in -> unlocked; a client gets a key; pull it out -> locked"
  start_agent
  run tokenagent status
  plug main
  say "the agent saw the key, found the vault's credential on it (no touch needed for that), and asked for a touch"
  run restic init --quiet
  run restic backup --quiet "$demo/data"
  run restic snapshots --compact
  run tokenagent status
  unplug main
  sleep 1.5
  run tokenagent status
  printf '$ restic snapshots   # the vault is locked: restic is told why\n'
  RESTIC_PASSWORD_COMMAND="tokenagent get docs --context restic:$RESTIC_REPOSITORY" restic snapshots --compact 2>&1 \
    | sed 's/^/   | /' || true

  step "3. The main key is lost: the backup key unlocks the vault"
  plug backup
  run restic snapshots --compact
  run tokenagent status
  unplug backup
  show_audit
else
  # ----------------------------------------------------------------------------------------
  echo
  echo "No virtual tokens here (they need root for a private pcscd, and pcscd with vsmartcard-vpcd)."
  echo "The same flows follow with a password + key-file slot standing in for the main token."
  printf 'correct horse battery staple\n' > "$demo/password"
  mkdir -m 700 "$demo/usb-stick"
  step "1. Admin: a vault with a password + key-file slot and a printed recovery key"
  run tokenagent keyfile generate "$demo/usb-stick/docs.keyx"
  run tokenagent init docs --password --keyfile "$demo/usb-stick/docs.keyx" --password-file "$demo/password"
  tokenagent enroll docs --recovery --password-file "$demo/password" --unlock-keyfile "$demo/usb-stick/docs.keyx" \
    --json > "$demo/recovery.json"
  "$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["shown"][0]["secret"])' "$demo/recovery.json" > "$demo/recovery"
  run tokenagent slots docs
  step "2. The agent serves keys; restic gets its own subkey"
  start_agent
  run tokenagent unlock docs --password-file "$demo/password" --keyfile "$demo/usb-stick/docs.keyx"
  run restic init --quiet
  run restic backup --quiet "$demo/data"
  run tokenagent lock docs
  step "3. The backup slot (the recovery key) unlocks"
  run tokenagent unlock docs --slot 2 --recovery-file "$demo/recovery"
  run restic snapshots --compact
  run tokenagent lock --all
  show_audit
fi

step "Done"
echo "Everything above ran in $demo$([ -n "${TOKENAGENT_DEMO_KEEP:-}" ] && echo ' (kept: TOKENAGENT_DEMO_KEEP)' || echo ' (removed now)'). See README.md and docs/ for more."
