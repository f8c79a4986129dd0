#!/usr/bin/env bash
# Soak run (not a CI test): N simulated agents (default 1000) with churn —
# one agent stopped and started again every 200 ms — under back-to-back
# rollouts for M minutes (default 10). At the end every deployment must be
# in a final state and every machine must have reported; the coordinator's
# resident memory is sampled after each rollout and its trend over the
# second half printed (MiB per minute; flat is what a bounded coordinator
# shows).
#   scripts/soak.sh [N] [MINUTES]
source "$(dirname "$0")/lib.sh"
install_dependencies
cd "$ROOT"
N="${1:-1000}"
MINUTES="${2:-10}"
PORT="${DROVER_SOAK_PORT:-7545}"
SERVER="" SIM="" WORK=""
trap 'kill $SERVER $SIM 2>/dev/null || true; wait 2>/dev/null; rm -rf "$WORK"' EXIT
drill_coordinator soak "$PORT" --health-interval 10s
drill_serve
"$BIN/drover" tokens create --uses "$N" --ttl 1h --label role=soak >"$WORK/token"
drill_agent_config "$PORT"
RUST_LOG=error "$BIN/drover-agent" simulate -c "$WORK/agent.toml" --count "$N" --work-dir "$WORK/agents" \
  --timeout 10m --hold "$((MINUTES + 2))m" --churn 200ms --json >"$WORK/simulate.json" 2>"$WORK/simulate.log" &
SIM=$!
online() {
  "$BIN/drover" machines list -o json | python3 -c 'import json,sys; print(sum(m["status"] == "online" for m in json.load(sys.stdin)))'
}
while [ "$(online)" -lt "$N" ]; do sleep 1; done
log "all $N online; rolling out for $MINUTES minutes with churn"
START=$SECONDS
: >"$WORK/samples"
i=0
while [ $((SECONDS - START)) -lt $((MINUTES * 60)) ]; do
  i=$((i + 1))
  PHASE="$("$BIN/drover" rollout start --selector role=soak --flake "path:/nonexistent#gen$i" \
    --canary 1 --auto-promote --max-parallel 25% --max-failures 100% --health-deadline 5s --wait -o json 2>>"$WORK/rollouts.log" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["phase"])' || echo error)"
  RSS="$(awk '/VmRSS/ {print $2}' "/proc/$SERVER/status")"
  echo "$((SECONDS - START)) $RSS $PHASE" >>"$WORK/samples"
  log "rollout $i: $PHASE, coordinator RSS $((RSS / 1024)) MiB"
done
# Whatever the churn interrupted settles: agents come back and report.
sleep 30
"$BIN/drover" deployments list -o json >"$WORK/deployments.json"
"$BIN/drover" machines list -o json >"$WORK/machines.json"
python3 - "$WORK/samples" "$WORK/deployments.json" "$WORK/machines.json" "$N" <<'PY'
import collections, json, sys
samples = [l.split() for l in open(sys.argv[1]) if l.strip()]
deployments, machines, n = json.load(open(sys.argv[2])), json.load(open(sys.argv[3])), int(sys.argv[4])
states = collections.Counter(d["state"] for d in deployments)
phases = collections.Counter(s[2] for s in samples)
late = samples[len(samples) // 2:]
if len(late) >= 2:
    xs = [float(s[0]) / 60 for s in late]; ys = [float(s[1]) / 1024 for s in late]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / max(sum((x - mx) ** 2 for x in xs), 1e-9)
else:
    slope = None
unfinished = sum(states[s] for s in ("pending", "applying", "Pending", "Applying"))
print(f"agents                 {n}, machines registered {len(machines)}")
print(f"rollouts               {len(samples)}: " + ", ".join(f"{c} {p}" for p, c in sorted(phases.items())))
print("deployments            " + ", ".join(f"{c} {s}" for s, c in sorted(states.items())))
print(f"not in a final state   {unfinished}")
print(f"coordinator RSS        {float(samples[0][1]) / 1024:.0f} MiB after the first rollout, {float(samples[-1][1]) / 1024:.0f} MiB after the last; trend over the second half " + (f"{slope:+.2f} MiB/min" if slope is not None else "n/a (too few rollouts)"))
sys.exit(1 if unfinished or len(machines) != n else 0)
PY
wait "$SIM" || true
python3 -c "import json; r=json.load(open('$WORK/simulate.json')); print(f\"agent restarts (churn)  {r['restarts']}\")" 2>/dev/null || true
