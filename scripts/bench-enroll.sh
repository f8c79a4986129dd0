#!/usr/bin/env bash
# Load generator (a benchmark, not a test): a release-built coordinator on
# loopback, then `drover-agent simulate` enrolls and connects N agents (default
# 1000) from one process. Reports enrollments per second, time until all are
# online, and the coordinator's resident memory, each against a baseline of
# 10 agents measured in the same run.
#   scripts/bench-enroll.sh [N]
source "$(dirname "$0")/lib.sh"
install_dependencies
cd "$ROOT"
N="${1:-1000}"
PORT="${DROVER_BENCH_PORT:-7543}"
SERVER="" SIM="" WORK=""
trap 'kill $SERVER 2>/dev/null || true; wait 2>/dev/null; rm -rf "$WORK"' EXIT
drill_coordinator bench "$PORT"
drill_serve
run() {
  "$BIN/drover" tokens create --uses "$1" --ttl 1h >"$WORK/token-$1"
  RUST_LOG=error "$BIN/drover-agent" simulate --count "$1" --json \
    --coordinator "127.0.0.1:$PORT" --ca-file "$DROVER_STATE_DIR/ca.pem" \
    --token-file "$WORK/token-$1" --work-dir "$WORK/agents-$1" --coordinator-pid "$SERVER"
}
run 10 >"$WORK/base.json"
run "$N" >"$WORK/load.json"
python3 - "$WORK/base.json" "$WORK/load.json" "$N" <<'PY'
import json, sys
base, load, n = json.load(open(sys.argv[1])), json.load(open(sys.argv[2])), sys.argv[3]
print(f"baseline: 10 agents, load: {n} agents")
print(f"enrollments per second   {load['enrollments_per_second']:.1f} (baseline {base['enrollments_per_second']:.1f}, ratio {load['enrollments_per_second']/base['enrollments_per_second']:.2f})")
print(f"seconds until all online {load['seconds_until_all_online']:.2f} (baseline {base['seconds_until_all_online']:.2f}, ratio {load['seconds_until_all_online']/base['seconds_until_all_online']:.2f})")
rss0, rss = base['coordinator_rss_before_bytes'], load['coordinator_rss_bytes']
print(f"coordinator RSS          {rss/2**20:.1f} MiB (idle {rss0/2**20:.1f} MiB, ratio {rss/rss0:.2f})")
print(f"online                   {load['online']}/{load['agents']}")
PY
