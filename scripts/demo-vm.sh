#!/usr/bin/env bash
# Provisioning with real VMs on this machine: builds the guest image (a
# Debian kernel, busybox and the drover-agent binary, started at boot),
# starts a coordinator with a local QEMU provider, provisions two VMs that
# enroll themselves from their fw_cfg seeds (one with a data disk), deploys
# a secret and facts to them — their agents' file checks prove the secret's
# digest inside each VM — and the data disk formatted and mounted, then
# destroys them. QEMU runs under TCG (no KVM needed); about a minute after
# the build.
#   scripts/demo-vm.sh          run, show, stop everything
#   scripts/demo-vm.sh --keep   leave the coordinator and VMs running
source "$(dirname "$0")/lib.sh"
install_dependencies
cd "$ROOT"
KEEP=0
[ "${1:-}" = "--keep" ] && KEEP=1

log "building drover and drover-agent"
cargo build --locked --bin drover --bin drover-agent
BIN="$ROOT/target/debug"
WORK="$(mktemp -d /tmp/drover-demo-vm.XXXXXX)"
PORT="${DROVER_DEMO_PORT:-7443}"
export DROVER_STATE_DIR="$WORK/coordinator"
SERVER=""
cleanup() {
  if [ "$KEEP" -eq 0 ]; then
    for name in web-1 db-1; do "$BIN/drover" machines destroy "$name" >/dev/null 2>&1 || true; done
    [ -n "$SERVER" ] && kill "$SERVER" 2>/dev/null
    wait 2>/dev/null || true
    rm -rf "$WORK"
  fi
}
trap cleanup EXIT

log "building the guest image (scripts/guest-image.sh)"
scripts/guest-image.sh --agent "$BIN/drover-agent" "$WORK/image"

log "a coordinator on 127.0.0.1:$PORT with a local QEMU provider"
"$BIN/drover" init --state-dir "$DROVER_STATE_DIR" --listen "127.0.0.1:$PORT" >/dev/null
cat >>"$DROVER_STATE_DIR/drover.toml" <<TOML

[[providers]]
kind = "qemu"
name = "local"
image = "$WORK/image"
max_vms = 2
memory_mib = 256
boot_timeout = "3m"
TOML
RUST_LOG=info "$BIN/drover" serve 2>"$WORK/coordinator.log" &
SERVER=$!
for _ in $(seq 100); do "$BIN/drover" whoami >/dev/null 2>&1 && break; sleep 0.1; done

log "provisioning web-1 and db-1 (db-1 with a 64 MiB data disk at /srv/data)"
start=$(date +%s)
"$BIN/drover" machines provision web-1 --provider local --label role=demo --label tier=web --wait &
P1=$!
"$BIN/drover" machines provision db-1 --provider local --label role=demo --label tier=db --volume data:64MiB:/srv/data --wait
wait "$P1"
log "both online after $(( $(date +%s) - start )) s"
"$BIN/drover" machines list

log "deploying a secret and facts to role=demo; each VM's agent checks the secret's SHA-256"
printf 'demo-%s' "$(od -An -tx1 -N8 /dev/urandom | tr -d ' \n')" >"$WORK/db-password"
digest="$(sha256sum "$WORK/db-password" | cut -d' ' -f1)"
"$BIN/drover" deploy --selector role=demo --flake path:/etc/fleet#demo \
  --secret "db-password=@$WORK/db-password" --fact tier=demo \
  --check "file:/run/drover/secrets/db-password#sha256=$digest" --check file:/run/drover/facts.json \
  --health-deadline 30s --wait
log "db-1 alone: its data disk is formatted and mounted at /srv/data"
"$BIN/drover" deploy --selector tier=db --flake path:/etc/fleet#demo --check file:/srv/data/lost+found --health-deadline 30s --wait

if [ "$KEEP" -eq 1 ]; then
  log "left running: DROVER_STATE_DIR=$DROVER_STATE_DIR $BIN/drover machines list; stop with: $BIN/drover machines destroy web-1 db-1; kill $SERVER"
  exit 0
fi
log "destroying both: revoked, VMs stopped and deleted"
"$BIN/drover" machines destroy web-1
"$BIN/drover" machines destroy db-1
"$BIN/drover" machines provisions
