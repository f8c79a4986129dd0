#!/usr/bin/env bash
# The coordinator SIGKILLed under N connected agents during a rollout (a
# fault drill, not a CI test; default N = 1000): a release-built coordinator
# on loopback, `drover-agent simulate` with N agents whose switch always
# succeeds, a rollout of all of them (canary 1, 25 % at a time); once the
# rollout is moving the coordinator is killed and started again. Prints how
# long until every agent was back online (and the reconnect rate that
# implies), and how the rollout and its deployments ended.
#   scripts/crash-storm.sh [N]
source "$(dirname "$0")/lib.sh"
install_dependencies
cd "$ROOT"
N="${1:-1000}"
PORT="${DROVER_STORM_PORT:-7544}"
SERVER="" SIM="" WORK=""
trap 'kill $SERVER $SIM 2>/dev/null || true; wait 2>/dev/null; rm -rf "$WORK"' EXIT
drill_coordinator storm "$PORT" --health-interval 10s
# Machines heard from since $SINCE (ms): after the restart, those whose
# agent reconnected and reported to the new coordinator.
SINCE=0
online() {
  "$BIN/drover" machines list -o json | python3 -c "import json,sys; print(sum(m['status'] == 'online' and (m['last_seen'] or 0) >= $SINCE for m in json.load(sys.stdin)))"
}
wait_online() {
  local deadline=$((SECONDS + $1))
  while [ "$(online)" -lt "$N" ]; do
    [ "$SECONDS" -lt "$deadline" ] || { echo "only $(online) of $N online after $1 s" >&2; exit 1; }
    sleep 0.5
  done
}
drill_serve
"$BIN/drover" tokens create --uses "$N" --ttl 1h --label role=storm >"$WORK/token"
drill_agent_config "$PORT"
RUST_LOG=error "$BIN/drover-agent" simulate -c "$WORK/agent.toml" --count "$N" --work-dir "$WORK/agents" \
  --timeout 10m --hold 30m >"$WORK/simulate.log" 2>&1 &
SIM=$!
log "waiting for $N agents"
wait_online 600
log "all $N online; starting the rollout"
ROLLOUT="$("$BIN/drover" rollout start --selector role=storm --flake 'path:/nonexistent#storm' \
  --canary 1 --auto-promote --max-parallel 25% --health-deadline 5s -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')"
done_machines() {
  "$BIN/drover" rollout status "$ROLLOUT" -o json | python3 -c 'import json,sys; r=json.load(sys.stdin); print(sum(m["state"] == "done" for m in r["machines"]))'
}
while [ "$(done_machines)" -lt 1 ]; do sleep 0.2; done
log "rollout $ROLLOUT is moving ($(done_machines) done): SIGKILL the coordinator"
kill -9 "$SERVER"; wait "$SERVER" 2>/dev/null || true
SINCE=$(date +%s%3N)
START=$(date +%s.%N)
drill_serve
wait_online 600
BACK=$(python3 -c "import time; print(f'{time.time() - $START:.1f}')")
log "all $N back online in $BACK s"
for _ in $(seq 1200); do
  PHASE="$("$BIN/drover" rollout status "$ROLLOUT" -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["phase"])')"
  case "$PHASE" in succeeded|failed|aborted|reverted) break ;; esac
  sleep 0.5
done
"$BIN/drover" deployments list -o json >"$WORK/deployments.json"
"$BIN/drover" machines list -o json >"$WORK/machines.json"
N="$N" BACK="$BACK" PHASE="$PHASE" python3 - "$WORK/deployments.json" "$WORK/machines.json" <<'PY'
import collections, json, os, sys
d = json.load(open(sys.argv[1]))
machines = len(json.load(open(sys.argv[2])))
n, back, phase = int(os.environ["N"]), float(os.environ["BACK"]), os.environ["PHASE"]
states = collections.Counter(x["state"] for x in d)
print(f"agents                      {n}")
print(f"all back after the SIGKILL  {back:.1f} s ({n / max(back, 0.001):.0f} agents reconnected and reported per second)")
print(f"rollout                     {phase}")
print("deployments                 " + ", ".join(f"{c} {s}" for s, c in sorted(states.items())))
print(f"machines with a deployment  {len(set(x['machine_id'] for x in d))}")
print(f"machines                    {machines} " + ("(none enrolled again)" if machines == n else f"for {n} agents"))
PY
