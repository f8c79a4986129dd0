#!/usr/bin/env bash
# The demo: Drover's main job end to end on this machine, on loopback, with
# real Nix. It starts a coordinator and three agents (each with its own Nix
# store, so the host's system is never touched), builds a small system
# closure, publishes it to a local binary cache signed with a key made here,
# deploys it to the three machines and shows them Succeeded; then deploys a
# closure whose activation fails and shows the automatic rollback.
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
  vm="$WORK/vm$i"
  mkdir -p "$vm"
  cat >"$vm/agent.toml" <<TOML
coordinator = "127.0.0.1:$PORT"
ca_file = "$DROVER_STATE_DIR/ca.pem"
enrollment_token_file = "$WORK/token"
state_dir = "$vm/state"
hostname = "vm$i"
runtime_dir = "$vm/run"
nix_store = "$vm/store"
system_profile = "$vm/profiles/system"
TOML
  log "starting agent vm$i (its own Nix store: $vm/store)"
  "$BIN/drover-agent" run --config "$vm/agent.toml" >"$vm/agent.log" 2>&1 &
  PIDS+=($!)
done

log "waiting for three machines online"
online=0
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

SYSTEM_NIX="$ROOT/coordinator/tests/fixtures/test-system.nix"
CACHE="$WORK/cache"
log "building a system closure with Nix (no substituters) and publishing it to a signed binary cache"
nix-store --generate-binary-cache-key drover-demo-1 "$WORK/cache.sk" "$WORK/cache.pk"
KEY="$(cat "$WORK/cache.pk")"
build() { nix-build "$SYSTEM_NIX" --argstr name "$1" --argstr body "$2" --no-out-link --option substituters ""; }
publish() { nix --extra-experimental-features nix-command copy --option substituters "" \
  --to "file://$CACHE?secret-key=$WORK/cache.sk" "$1"; }
GOOD="$(build drover-demo-system-$(date +%s) 'echo activated')"
publish "$GOOD"
echo "closure: $GOOD"

log "deploying it to every machine with tenant=demo"
"$BIN/drover" deploy --selector tenant=demo --closure "$GOOD" \
  --substituter "file://$CACHE" --trusted-key "$KEY" --fact tenant=demo --wait

log "deploying a closure whose activation fails: each machine rolls back by itself"
BROKEN="$(build drover-demo-broken-$(date +%s) 'echo "error: unit demo.service failed to start" >&2; exit 1')"
publish "$BROKEN"
if "$BIN/drover" deploy --selector tenant=demo --closure "$BROKEN" \
  --substituter "file://$CACHE" --trusted-key "$KEY" --wait; then
  echo "the broken closure was not refused" >&2
  exit 1
fi
"$BIN/drover" deployments list
for i in 1 2 3; do
  running="$(readlink "$(readlink -f "$WORK/vm$i/profiles")/$(readlink "$WORK/vm$i/profiles/system")")"
  [ "$running" = "$GOOD" ] || { echo "vm$i runs $running, expected $GOOD" >&2; exit 1; }
done
log "demo done: three machines run $GOOD again after the automatic rollback"
if [ "$KEEP" -eq 1 ]; then
  echo "fleet left running; state in $WORK"
  echo "  export DROVER_STATE_DIR=$DROVER_STATE_DIR; $BIN/drover machines list"
  echo "  stop it: kill ${PIDS[*]}"
fi
