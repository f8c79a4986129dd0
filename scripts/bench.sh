#!/usr/bin/env bash
# The benchmark (not a test): for each N, a bare quinn mTLS server and N
# clients with Drover's TLS, transport and socket settings (`drover-bench`),
# then a release-built coordinator and N simulated agents
# (`drover-agent simulate`, a no-op switch) — the same connects, idle
# keep-alives and one broadcast — and one table of Drover's figures beside
# the bare ones, with the ratio:
#   time until all online, connects per second, coordinator RSS per
#   connection when all are online and again after the idle period (the
#   enrollment connections closed by then), its CPU at idle, a new generation's fan-out (deploy → received, and
#   → finished on the agents) p50/p99/max, the deployment's wall time and
#   the CPU the coordinator and the simulator spent in it, a rollout's wall
#   time, the agents' reconnects, the machine's load and UDP receive-buffer
#   drops (in all, and at the server's socket).
#   scripts/bench.sh [N...]          (default: 1000)
# BENCH_IDLE_SECONDS (default 30) is how long idle CPU is measured; the
# coordinator's health interval is 10 s. BENCH_AGENT_LOG sets the simulated
# agents' log filter (default: error), DROVER_SERVE_LOG the coordinator's
# (default: warn; with drover_coordinator::server::agent=debug it logs when
# it announced each generation, to set beside the agents' own
# drover_agent::session=debug lines); BENCH_PERF=1 samples both processes
# with `perf record` during the deployment (perf-coordinator.data and
# perf-agents.data; read them with `perf report -i FILE --no-children
# --sort symbol`); BENCH_KEEP=1 keeps the work directory
# (logs, figures, JSON) and prints where it is. The simulated agents' files
# live on tmpfs (BENCH_AGENTS_TMPFS, default /dev/shm; about 25 KiB each).
source "$(dirname "$0")/lib.sh"
install_dependencies
cd "$ROOT"
[ "$#" -gt 0 ] || set -- 1000
IDLE="${BENCH_IDLE_SECONDS:-30}"
if [ "${BENCH_PERF:-0}" = 1 ] && ! command -v perf >/dev/null; then
  echo "BENCH_PERF=1 needs perf: apt-get install linux-perf" >&2
  exit 1
fi
BARE_PORT="${DROVER_BENCH_BARE_PORT:-7601}"
PORT="${DROVER_BENCH_PORT:-7602}"
TICK="$(getconf CLK_TCK)"
ulimit -n 65536 2>/dev/null || true
PIDS=() AGENT_DIRS=() SERVER="" WORK=""
drill_build
OUT="$(mktemp -d /tmp/drover-bench.XXXXXX)"
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "${AGENT_DIRS[@]}"
  if [ "${BENCH_KEEP:-0}" = 1 ]; then log "kept the work directory: $OUT"; else rm -rf "$OUT"; fi
}
trap cleanup EXIT

rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
rcvbuf_errors() { awk '/^Udp:/ { if (!h) { for (i = 1; i <= NF; i++) if ($i == "RcvbufErrors") c = i; h = 1 } else print $c }' /proc/net/snmp; }
# Datagrams the kernel dropped at the UDP socket bound to local PORT (the
# server's; the rest of the drops are at the clients' socket).
socket_drops() { awk -v port="$(printf ':%04X' "$1")" 'index($2, port) == length($2) - 4 { d += $NF } END { print d + 0 }' /proc/net/udp; }
now_ms() { date +%s%3N; }
wait_file() { # FILE SECONDS WHAT
  local end=$((SECONDS + $2))
  while [ ! -e "$1" ]; do
    if [ "$SECONDS" -ge "$end" ]; then echo "gave up waiting for $3 after $2 s" >&2; exit 1; fi
    sleep 0.1
  done
}
# Figures before N connections come, into DIR/figures.
#   before_connects DIR PID PORT
before_connects() {
  echo "rss_before $(rss_kib "$2")" >"$1/figures"
  echo "drops_before $(rcvbuf_errors)" >>"$1/figures"
  echo "server_drops_before $(socket_drops "$3")" >>"$1/figures"
}
# Figures once they are all connected: memory, drops, idle CPU, and the
# moment the broadcast (or deployment) starts.
#   after_connects DIR PID PORT
after_connects() {
  echo "drops_connected $(rcvbuf_errors)" >>"$1/figures"
  echo "server_drops_connected $(socket_drops "$3")" >>"$1/figures"
  echo "rss_connected $(rss_kib "$2")" >>"$1/figures"
  echo "idle_cpu $(idle_cpu "$2")" >>"$1/figures"
  echo "rss_idle $(rss_kib "$2")" >>"$1/figures"
  echo "broadcast_at $(now_ms)" >>"$1/figures"
}
# Idle CPU of PID over IDLE seconds, as a percentage of one core.
idle_cpu() {
  local before after
  before="$(cpu_ticks "$1")"
  sleep "$IDLE"
  after="$(cpu_ticks "$1")"
  python3 -c "print(($after - $before) / $TICK / $IDLE * 100)"
}

bare() { # N DIR
  local n="$1" dir="$2" server clients
  mkdir -p "$dir"
  "$BIN/drover-bench" bare-server --listen "127.0.0.1:$BARE_PORT" --dir "$dir/server" 2>"$dir/server.log" &
  server=$!
  PIDS+=("$server")
  wait_file "$dir/server/ready" 30 "the bare server"
  before_connects "$dir" "$server" "$BARE_PORT"
  "$BIN/drover-bench" bare-clients --connect "127.0.0.1:$BARE_PORT" --dir "$dir/server" --count "$n" \
    --ready-file "$dir/ready.json" >"$dir/final.json" 2>"$dir/clients.log" &
  clients=$!
  PIDS+=("$clients")
  wait_file "$dir/ready.json" 900 "$n bare clients"
  after_connects "$dir" "$server" "$BARE_PORT"
  kill -USR1 "$server"
  wait_file "$dir/ready.json.broadcast" 300 "the bare broadcast"
  echo "drops_end $(rcvbuf_errors)" >>"$dir/figures"
  echo "server_drops_end $(socket_drops "$BARE_PORT")" >>"$dir/figures"
  echo "load $(cut -d' ' -f1 /proc/loadavg)" >>"$dir/figures"
  kill -TERM "$clients"
  wait "$clients" || true
  kill -TERM "$server"
  wait "$server" || true
}

drover() { # N DIR
  local n="$1" dir="$2" sim
  mkdir -p "$dir"
  # The drill helpers (lib.sh) work in $WORK.
  # shellcheck disable=SC2034
  WORK="$dir"
  drill_init "$PORT" --health-interval 10s
  drill_serve
  PIDS+=("$SERVER")
  "$BIN/drover" tokens create --uses "$n" --ttl 1h --label role=bench >"$dir/token"
  drill_agent_config "$PORT"
  before_connects "$dir" "$SERVER" "$PORT"
  # The simulated agents' state and runtime files on tmpfs: a real agent
  # writes them on its own machine's disk, and N agents creating files on
  # this one's made the simulator, not the coordinator, the bottleneck.
  local agents
  agents="$(mktemp -d "${BENCH_AGENTS_TMPFS:-/dev/shm}/drover-bench-agents.XXXXXX")"
  AGENT_DIRS+=("$agents")
  RUST_LOG="${BENCH_AGENT_LOG:-error}" "$BIN/drover-agent" simulate -c "$dir/agent.toml" --count "$n" --work-dir "$agents" \
    --timeout 15m --hold 2h --ready-file "$dir/ready.json" --json >"$dir/final.json" 2>"$dir/simulate.log" &
  sim=$!
  PIDS+=("$sim")
  wait_file "$dir/ready.json" 960 "$n simulated agents"
  after_connects "$dir" "$SERVER" "$PORT"
  # Whose CPU the deployment takes: the coordinator's or the simulator's.
  echo "deploy_ticks_before $(cpu_ticks "$SERVER") $(cpu_ticks "$sim")" >>"$dir/figures"
  local profilers=()
  if [ "${BENCH_PERF:-0}" = 1 ]; then
    perf record -F 499 -p "$SERVER" -o "$dir/perf-coordinator.data" 2>>"$dir/perf.log" &
    profilers+=($!)
    perf record -F 499 -p "$sim" -o "$dir/perf-agents.data" 2>>"$dir/perf.log" &
    profilers+=($!)
  fi
  "$BIN/drover" deploy --selector role=bench --flake "path:/nonexistent#bench" --health-deadline 5s \
    --wait -o json >"$dir/deploy.json" 2>>"$dir/cli.log" || echo "the deployment did not succeed everywhere" >&2
  if [ "${#profilers[@]}" -gt 0 ]; then
    kill -INT "${profilers[@]}"
    wait "${profilers[@]}" || true
  fi
  echo "deployed_at $(now_ms)" >>"$dir/figures"
  echo "deploy_ticks_after $(cpu_ticks "$SERVER") $(cpu_ticks "$sim")" >>"$dir/figures"
  # The agents' connects so far: the deployment's reconnects.
  kill -USR1 "$sim"
  wait_file "$dir/ready.json.snapshot" 60 "the simulator's snapshot"
  local started=$SECONDS t0 t1
  "$BIN/drover" rollout start --selector role=bench --flake "path:/nonexistent#rollout" --canary 1 --auto-promote \
    --max-parallel 25% --health-deadline 5s --wait -o json >"$dir/rollout.json" 2>>"$dir/cli.log" || echo "the rollout did not succeed" >&2
  echo "rollout_seconds $((SECONDS - started))" >>"$dir/figures"
  t0="$(now_ms)"; "$BIN/drover" machines list -o json | python3 -c 'import json,sys; print("registered", len(json.load(sys.stdin)))' >>"$dir/figures"; t1="$(now_ms)"
  echo "machines_list_ms $((t1 - t0))" >>"$dir/figures"
  local rollout_id
  rollout_id="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1])).get("id", ""))' "$dir/rollout.json" 2>/dev/null || true)"
  if [ -n "$rollout_id" ]; then
    t0="$(now_ms)"; "$BIN/drover" rollout status "$rollout_id" -o json >/dev/null; t1="$(now_ms)"
    echo "rollout_status_ms $((t1 - t0))" >>"$dir/figures"
  fi
  echo "drops_end $(rcvbuf_errors)" >>"$dir/figures"
  echo "server_drops_end $(socket_drops "$PORT")" >>"$dir/figures"
  echo "load $(cut -d' ' -f1 /proc/loadavg)" >>"$dir/figures"
  kill -TERM "$sim"
  wait "$sim" || true
  kill -TERM "$SERVER"
  wait "$SERVER" || true
}

for N in "$@"; do
  log "N = $N: bare quinn"
  bare "$N" "$OUT/bare-$N"
  log "N = $N: Drover"
  drover "$N" "$OUT/drover-$N"
  python3 - "$OUT/bare-$N" "$OUT/drover-$N" "$N" <<'PY'
import json, os, sys
bare_dir, drover_dir, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
def figures(d):
    out = {}
    for l in open(os.path.join(d, "figures")):
        if not l.strip(): continue
        k, *v = l.split()
        if len(v) == 1: out[k] = float(v[0])
        elif v: out[k] = [float(x) for x in v]
    return out
bf, df = figures(bare_dir), figures(drover_dir)
br, dr = json.load(open(os.path.join(bare_dir, "final.json"))), json.load(open(os.path.join(drover_dir, "final.json")))
ready = json.load(open(os.path.join(drover_dir, "ready.json")))
deployed_snap = json.load(open(os.path.join(drover_dir, "ready.json.snapshot")))
def q(values, p):
    if not values: return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p * (len(values) - 1))))]
def spread(times, t0):
    d = [(t - t0) / 1000 for t in times]
    return (q(d, .5), q(d, .99), max(d) if d else float("nan"), len(d))
b = br["broadcasts"][0] if br["broadcasts"] else {"sent_unix_ms": bf["broadcast_at"], "received_unix_ms": []}
b_recv = spread(b["received_unix_ms"], b["sent_unix_ms"])
gens = dr["generations"]
deploy = gens[0] if gens else {"received_unix_ms": [], "applied_unix_ms": []}
d_recv = spread(deploy["received_unix_ms"], df["broadcast_at"])
d_done = spread(deploy["applied_unix_ms"], df["broadcast_at"])
rows = []
def row(name, drover, bare=None, fmt="{:.2f}", lower_is_better=True):
    ratio = ""
    if bare not in (None, 0) and bare == bare and drover == drover:
        ratio = f"{drover / bare:.2f}×"
    rows.append((name, fmt.format(drover), "" if bare is None else fmt.format(bare), ratio))
row("online (s)", dr["seconds_until_all_online"], br["seconds_until_all_connected"])
row("connects/s (enrollments, handshakes)", dr["enrollments_per_second"], br["handshakes_per_second"], "{:.0f}")
row("coordinator KiB per connection, all online", (df["rss_connected"] - df["rss_before"]) / n, (bf["rss_connected"] - bf["rss_before"]) / n, "{:.1f}")
row("  after the idle period", (df["rss_idle"] - df["rss_before"]) / n, (bf["rss_idle"] - bf["rss_before"]) / n, "{:.1f}")
row("coordinator CPU at idle (% of a core)", df["idle_cpu"], bf["idle_cpu"], "{:.1f}")
row("generation received p50 (s)", d_recv[0], b_recv[0], "{:.3f}")
row("generation received p99 (s)", d_recv[1], b_recv[1], "{:.3f}")
row("generation received max (s)", d_recv[2], b_recv[2], "{:.3f}")
row("generation finished p50 (s)", d_done[0], None, "{:.3f}")
row("generation finished p99 (s)", d_done[1], None, "{:.3f}")
row("generation finished max (s)", d_done[2], None, "{:.3f}")
try:
    rollout = json.load(open(os.path.join(drover_dir, "rollout.json")))
    rollout_phase = rollout.get("phase", "?")
except Exception:
    rollout_phase = "no answer"
deployed = json.load(open(os.path.join(drover_dir, "deploy.json"))) if os.path.getsize(os.path.join(drover_dir, "deploy.json")) else []
succeeded = sum(1 for d in deployed if d.get("state") == "succeeded")
tick = os.sysconf("SC_CLK_TCK")
if "deploy_ticks_after" in df:
    (cb, sb), (ca, sa) = df["deploy_ticks_before"], df["deploy_ticks_after"]
    wall = (df["deployed_at"] - df["broadcast_at"]) / 1000
    row("deployment wall time, deploy --wait (s)", wall, None, "{:.1f}")
    row("  CPU in it: coordinator (core-seconds)", (ca - cb) / tick, None, "{:.1f}")
    row("  CPU in it: simulated agents (core-seconds)", (sa - sb) / tick, None, "{:.1f}")
row("rollout, 25% at a time (s)", df["rollout_seconds"], None, "{:.0f}")
row("machines list (s)", df["machines_list_ms"] / 1000, None, "{:.2f}")
row("rollout status (s)", df.get("rollout_status_ms", float("nan")) / 1000, None, "{:.2f}")
row("agent reconnects while connecting", ready["connects"] - ready["online"], None, "{:.0f}")
row("agent reconnects during the deployment", deployed_snap["connects"] - ready["connects"], None, "{:.0f}")
row("agent reconnects during the rollout", dr["connects"] - deployed_snap["connects"], None, "{:.0f}")
row("UDP receive drops while connecting", df["drops_connected"] - df["drops_before"], bf["drops_connected"] - bf["drops_before"], "{:.0f}")
row("  of them at the server's socket", df["server_drops_connected"] - df["server_drops_before"],
    bf["server_drops_connected"] - bf["server_drops_before"], "{:.0f}")
row("UDP receive drops, broadcast to end", df["drops_end"] - df["drops_connected"], bf["drops_end"] - bf["drops_connected"], "{:.0f}")
row("  of them at the server's socket", df["server_drops_end"] - df["server_drops_connected"],
    bf["server_drops_end"] - bf["server_drops_connected"], "{:.0f}")
row("load average (1 min) at the end", df["load"], bf["load"], "{:.2f}")
print(f"\nN = {n}: {dr['online']} of {n} agents online, {int(df['registered'])} machines registered; "
      f"the deployment: {d_recv[3]} received it, {succeeded} succeeded; the rollout: {rollout_phase}; "
      f"bare: {br['connected']} connected ({br['retries']} retries, {br.get('lost', 0)} closed later), {b_recv[3]} got the broadcast")
width = max(len(r[0]) for r in rows)
print(f"{'':{width}}  {'Drover':>10}  {'bare quinn':>10}  {'ratio':>7}")
for name, d, b, r in rows:
    print(f"{name:{width}}  {d:>10}  {b:>10}  {r:>7}")
PY
done
log "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo), $(uname -r)"
