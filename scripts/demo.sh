#!/usr/bin/env bash
# The demo: Drover's main job end to end on this machine, on loopback, with
# real Nix and a real Garage. It starts a single-node Garage and a coordinator
# that manages it, makes the binary cache bucket and its publisher key with
# `drover s3`, starts three agents (each with its own Nix store, so the host's
# system is never touched), builds a small system closure, publishes it to the
# Garage bucket signed with a key made here, deploys it to the three machines
# (which fetch it from Garage's web endpoint) and shows them Succeeded; then
# deploys a closure whose activation fails and shows the automatic rollback.
# Then a volume: a LINSTOR controller double (volumes on loop devices; needs
# root) gives vm1 a volume that its agent formats and mounts; a file written
# there is still there when the volume has moved to vm2. Last, the three
# machines are brought under one fleet file, examples/fleet.toml, applied as
# shipped: two tenants, buckets, a volume and three services.
#   scripts/demo.sh          run, show, stop everything
#   scripts/demo.sh --keep   leave the fleet running (prints how to stop it)
source "$(dirname "$0")/lib.sh"
install_dependencies
cd "$ROOT"
KEEP=0
[ "${1:-}" = "--keep" ] && KEEP=1

log "building drover, drover-agent and the LINSTOR double"
cargo build --locked --bin drover --bin drover-agent --bin linstor-double
BIN="$ROOT/target/debug"
WORK="$(mktemp -d /tmp/drover-demo.XXXXXX)"
PORT="${DROVER_DEMO_PORT:-7443}"
GPORT="${DROVER_DEMO_GARAGE_PORT:-3900}"   # S3 API; RPC +1, web +2, admin +3
WPORT="${DROVER_DEMO_WEB_PORT:-9480}"      # the fleet page, on loopback
export DROVER_STATE_DIR="$WORK/coordinator"
PIDS=()
cleanup() {
  if [ "$KEEP" -eq 0 ]; then
    # Agents first, the LINSTOR double last (it unmounts and frees its
    # loop devices when it stops).
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do kill "${PIDS[$i]}" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
  fi
}
trap cleanup EXIT

log "starting a single-node Garage on 127.0.0.1:$GPORT-$((GPORT + 3))"
mkdir -p "$WORK/garage"
rand_hex() { od -An -tx1 -N"$1" /dev/urandom | tr -d ' \n'; }
cat >"$WORK/garage/garage.toml" <<TOML
metadata_dir = "$WORK/garage/meta"
data_dir = "$WORK/garage/data"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:$((GPORT + 1))"
rpc_public_addr = "127.0.0.1:$((GPORT + 1))"
rpc_secret = "$(rand_hex 32)"
[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:$GPORT"
[s3_web]
bind_addr = "127.0.0.1:$((GPORT + 2))"
root_domain = ".web.garage.localhost"
[admin]
api_bind_addr = "127.0.0.1:$((GPORT + 3))"
admin_token = "$(rand_hex 16)"
TOML
chmod 600 "$WORK/garage/garage.toml"
# The command as an array: a work directory with a space stays one argument.
GARAGE=(garage -c "$WORK/garage/garage.toml")
"${GARAGE[@]}" server >"$WORK/garage/garage.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 50); do "${GARAGE[@]}" status >/dev/null 2>&1 && break; sleep 0.2; done
NODE="$("${GARAGE[@]}" node id -q | cut -d@ -f1)"
"${GARAGE[@]}" layout assign -z dc1 -c 1G "$NODE" >/dev/null
"${GARAGE[@]}" layout apply --version 1 >/dev/null

VOLUMES=0
LPORT="${DROVER_DEMO_LINSTOR_PORT:-3370}"
if [ "$(id -u)" -eq 0 ]; then
  VOLUMES=1
  log "starting the LINSTOR controller double on 127.0.0.1:$LPORT (volumes on loop devices)"
  "$BIN/linstor-double" --root "$WORK/linstor" --listen "127.0.0.1:$LPORT" --node vm1 --node vm2 --node vm3 \
    >"$WORK/linstor.log" 2>&1 &
  PIDS+=($!)
else
  log "not root: the volume part of the demo is left out (loop devices and mount need root)"
fi

log "drover init (state in $DROVER_STATE_DIR), managing that Garage"
"$BIN/drover" init --state-dir "$DROVER_STATE_DIR" --listen "127.0.0.1:$PORT" --health-interval 2s
sed -n 's/^admin_token = "\(.*\)"/\1/p' "$WORK/garage/garage.toml" >"$DROVER_STATE_DIR/garage-admin-token"
chmod 600 "$DROVER_STATE_DIR/garage-admin-token"
cat >>"$DROVER_STATE_DIR/drover.toml" <<TOML

[s3]
admin_endpoint = "http://127.0.0.1:$((GPORT + 3))"
admin_token_file = "$DROVER_STATE_DIR/garage-admin-token"
s3_endpoint = "http://127.0.0.1:$GPORT"
region = "garage"
public_url = "http://{bucket}:$((GPORT + 2))"
TOML
# The fleet page, on loopback (plain HTTP there): `drover web login`.
sed -i "1i web_listen = \"127.0.0.1:$WPORT\"" "$DROVER_STATE_DIR/drover.toml"
if [ "$VOLUMES" -eq 1 ]; then
  cat >>"$DROVER_STATE_DIR/drover.toml" <<TOML

[linstor]
controller = "http://127.0.0.1:$LPORT"
TOML
fi
"$BIN/drover" check-config
"$BIN/drover" serve >"$WORK/coordinator.log" 2>&1 &
PIDS+=($!)

for _ in $(seq 50); do "$BIN/drover" whoami >/dev/null 2>&1 && break; sleep 0.2; done
if ! kill -0 "${PIDS[-1]}" 2>/dev/null; then
  echo "the coordinator did not start (is UDP port $PORT taken? set DROVER_DEMO_PORT):" >&2
  tail -5 "$WORK/coordinator.log" >&2
  exit 1
fi
log "creating an enrollment token for three machines"
(umask 077; "$BIN/drover" tokens create --uses 3 --ttl 10m --label tenant=demo --label role=web >"$WORK/token")
log "the token is in $WORK/token (mode 0600), where the three agents read it"

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
volume_root = "$WORK/linstor/nodes/vm$i"
nixos_rebuild = "$vm/nixos-rebuild"
current_system = "$vm/store/current-system"
TOML
  # Not NixOS: flake deployments go through the stand-in, which records the
  # flake reference as the system (closures activate for real).
  cat >"$vm/nixos-rebuild" <<SH
#!/bin/sh
DROVER_STANDIN_STATE="$vm/flake-systems" DROVER_STANDIN_CURRENT="$vm/store/current-system" exec "$ROOT/scripts/nixos-rebuild-standin" "\$@"
SH
  chmod 755 "$vm/nixos-rebuild"
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

log "making the binary cache bucket and its publisher key with drover s3"
# Garage's web endpoint serves the bucket named as the Host header: a bucket
# called "localhost" is served at http://localhost:PORT, no DNS needed.
"$BIN/drover" s3 buckets create localhost --public
"$BIN/drover" s3 keys create nix-cache-publisher
"$BIN/drover" s3 grant --bucket localhost --key nix-cache-publisher --read --write >/dev/null
"$BIN/drover" s3 keys show nix-cache-publisher --show-secret --output json >"$WORK/publisher.json"
chmod 600 "$WORK/publisher.json"
S3_USER="$(python3 -c 'import json,sys; k=json.load(open(sys.argv[1])); print(k["id"] + ":" + k["secret"])' "$WORK/publisher.json")"
CACHE_URL="http://localhost:$((GPORT + 2))"

SYSTEM_NIX="$ROOT/coordinator/tests/fixtures/test-system.nix"
STAGING="$WORK/cache-staging"
log "building a system closure with Nix (no substituters) and publishing it, signed, to Garage"
nix-store --generate-binary-cache-key drover-demo-1 "$WORK/cache.sk" "$WORK/cache.pk"
KEY="$(cat "$WORK/cache.pk")"
build() { nix-build "$SYSTEM_NIX" --argstr name "$1" --argstr body "$2" --no-out-link --option substituters ""; }
publish() {
  nix --extra-experimental-features nix-command copy --option substituters "" \
    --to "file://$STAGING?secret-key=$WORK/cache.sk" "$1"
  (cd "$STAGING" && find . -type f | sed 's|^\./||' | while read -r f; do
    curl -sf --aws-sigv4 "aws:amz:garage:s3" --user "$S3_USER" -H "x-amz-content-sha256: UNSIGNED-PAYLOAD" \
      -T "$f" "http://127.0.0.1:$GPORT/localhost/$f" >/dev/null
  done)
}
GOOD="$(build "drover-demo-system-$(date +%s)" 'echo activated')"
publish "$GOOD"
echo "closure: $GOOD"

log "deploying it to every machine with tenant=demo"
"$BIN/drover" deploy --selector tenant=demo --closure "$GOOD" \
  --substituter "$CACHE_URL" --trusted-key "$KEY" --fact tenant=demo --wait

log "deploying a closure whose activation fails: each machine rolls back by itself"
BROKEN="$(build "drover-demo-broken-$(date +%s)" 'echo "error: unit demo.service failed to start" >&2; exit 1')"
publish "$BROKEN"
log "first a dry run: what it would change on each machine (nothing is recorded or sent)"
"$BIN/drover" deploy --selector tenant=demo --closure "$BROKEN" \
  --substituter "$CACHE_URL" --trusted-key "$KEY" --dry-run
if "$BIN/drover" deploy --selector tenant=demo --closure "$BROKEN" \
  --substituter "$CACHE_URL" --trusted-key "$KEY" --wait; then
  echo "the broken closure was not refused" >&2
  exit 1
fi
"$BIN/drover" deployments list
for i in 1 2 3; do
  running="$(readlink "$(readlink -f "$WORK/vm$i/profiles")/$(readlink "$WORK/vm$i/profiles/system")")"
  [ "$running" = "$GOOD" ] || { echo "vm$i runs $running, expected $GOOD" >&2; exit 1; }
done
log "three machines run $GOOD again after the automatic rollback"

if [ "$VOLUMES" -eq 1 ]; then
  id_of() { "$BIN/drover" machines list --output json | python3 -c 'import json,sys; print([m["id"] for m in json.load(sys.stdin) if m["hostname"] == sys.argv[1]][0])' "$1"; }
  VM1="$(id_of vm1)"
  VM2="$(id_of vm2)"
  log "giving vm1 a new volume: LINSTOR makes it, vm1's agent formats the blank device and mounts it at /srv/data"
  "$BIN/drover" deploy --machine "$VM1" --closure "$GOOD" --substituter "$CACHE_URL" --trusted-key "$KEY" \
    --volume data:/srv/data:ext4,size=64MiB --wait
  echo "written on vm1 at $(date -u +%FT%TZ)" >"$WORK/linstor/nodes/vm1/srv/data/hello.txt"
  sync
  "$BIN/drover" volumes show data
  log "moving the volume to vm2: vm1 unmounts it, then vm2 mounts it with vm1's file"
  "$BIN/drover" volumes detach data --wait
  "$BIN/drover" volumes attach data --machine "$VM2" --mount /srv/data
  for _ in $(seq 100); do
    [ -f "$WORK/linstor/nodes/vm2/srv/data/hello.txt" ] && break
    sleep 0.3
  done
  echo "vm2 reads: $(cat "$WORK/linstor/nodes/vm2/srv/data/hello.txt")"
  if grep -q " $WORK/linstor/nodes/vm1/srv/data " /proc/self/mounts; then
    echo "vm1 still has the volume mounted" >&2
    exit 1
  fi
  "$BIN/drover" volumes list

  log "one fleet file for the three machines: examples/fleet.toml, applied as shipped (its secrets: scripts/example-secrets.sh)"
  "$ROOT/scripts/example-secrets.sh"
  "$BIN/drover" plan examples/fleet.toml
  "$BIN/drover" apply examples/fleet.toml --yes --timeout 5m
  "$BIN/drover" fleet show
  "$BIN/drover" fleet drift
  "$BIN/drover" machines list
fi
log "the fleet page at http://127.0.0.1:$WPORT: a one-time link from drover web login, opened with curl"
link="$("$BIN/drover" web login 2>/dev/null)"
page="$(curl -fsS -c "$WORK/cookies" -b "$WORK/cookies" -L "$link")"
if ! grep -q '3</b> online' <<<"$page"; then
  echo "the fleet page does not show three machines online; the coordinator's log is $WORK/coordinator.log" >&2
  exit 1
fi
echo "the fleet page shows 3 machines online"
log "demo done"
if [ "$KEEP" -eq 1 ]; then
  echo "fleet left running; state in $WORK"
  echo "  export DROVER_STATE_DIR=$DROVER_STATE_DIR; $BIN/drover machines list"
  echo "  the fleet page (this link works once, for 5 minutes; \`drover web login\` makes another):"
  echo "    $("$BIN/drover" web login 2>/dev/null)"
  echo "  stop it: kill ${PIDS[*]}"
fi
