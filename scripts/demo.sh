#!/usr/bin/env bash
# The demo: a coordinator and three agents on this machine, on loopback.
# It initialises a state directory, starts `drover serve`, creates an
# enrollment token, starts three agents that enroll themselves, and shows
# them online with their health.
#   scripts/demo.sh          run, show, stop everything
#   scripts/demo.sh --keep   leave the fleet running (prints how to stop it)
source "$(dirname "$0")/lib.sh"
install_dependencies
cd "$ROOT"
KEEP=0
[ "${1:-}" = "--keep" ] && KEEP=1

log "building drover and drover-agent"
cargo build --locked --bin drover --bin drover-agent
BIN="$ROOT/target/debug"
WORK="$(mktemp -d /tmp/drover-demo.XXXXXX)"
PORT="${DROVER_DEMO_PORT:-7443}"
export DROVER_STATE_DIR="$WORK/coordinator"
PIDS=()
cleanup() {
  if [ "$KEEP" -eq 0 ]; then
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
  fi
}
trap cleanup EXIT

log "drover init (state in $DROVER_STATE_DIR)"
"$BIN/drover" init --state-dir "$DROVER_STATE_DIR" --listen "127.0.0.1:$PORT" --health-interval 2s
"$BIN/drover" serve >"$WORK/coordinator.log" 2>&1 &
PIDS+=($!)

log "creating an enrollment token for three machines"
for _ in $(seq 50); do "$BIN/drover" whoami >/dev/null 2>&1 && break; sleep 0.2; done
"$BIN/drover" tokens create --uses 3 --ttl 10m --label tenant=demo --label role=web >"$WORK/token"
chmod 600 "$WORK/token"

for i in 1 2 3; do
  log "starting agent vm$i"
  "$BIN/drover-agent" run --coordinator "127.0.0.1:$PORT" --ca-file "$DROVER_STATE_DIR/ca.pem" \
    --token-file "$WORK/token" --state-dir "$WORK/agent-vm$i" --hostname "vm$i" \
    >"$WORK/agent-vm$i.log" 2>&1 &
  PIDS+=($!)
done

log "waiting for three machines online"
for _ in $(seq 100); do
  online=$("$BIN/drover" machines list --output json | grep -c '"status": "online"' || true)
  [ "$online" -eq 3 ] && break
  sleep 0.3
done
"$BIN/drover" machines list
if [ "$online" -ne 3 ]; then
  echo "only $online of 3 machines came online; logs are in $WORK" >&2
  KEEP=1
  exit 1
fi
log "demo done: three machines enrolled and online"
if [ "$KEEP" -eq 1 ]; then
  echo "fleet left running; state in $WORK"
  echo "  export DROVER_STATE_DIR=$DROVER_STATE_DIR; $BIN/drover machines list"
  echo "  stop it: kill ${PIDS[*]}"
fi
