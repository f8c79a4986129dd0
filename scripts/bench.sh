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
# Each N runs Drover twice: on its embedded store (sled) and on a
# three-member etcd cluster on loopback with three coordinators, the
# agents spread over them (BENCH_ETCD=0 skips that run); the etcd column adds the
# members' CPU in the deployment, their memory and database size.
# BENCH_IDLE_SECONDS (default 30) is how long idle CPU is measured; the
# coordinator's health interval is 10 s up to 10,000 agents and N/1000 s
# beyond (the health reports keep arriving at 1,000 a second, as an
# operator of a larger fleet would set it), its max_connections N plus
# 1,000 beyond 49,000, and beyond 10,000 its default bound on handshakes
# in progress (2,000; lifted up to 10,000 like the per-address bounds). The etcd run stops at BENCH_ETCD_MAX agents (default
# 10000: one etcd cluster on these two cores takes about 7 ms of its CPU
# per machine deployed, and a rollout's record holds about 8,000 machines
# within etcd's request limit; docs/etcd.md). The rollout starts 25 % at a
# time up to 10,000 agents, 10 % beyond. BENCH_AGENT_LOG sets the simulated
# agents' log filter (default: error), DROVER_SERVE_LOG the coordinator's
# (default: warn; with drover_coordinator::server::agent=debug it logs when
# it announced each generation, to set beside the agents' own
# drover_agent::session=debug lines); BENCH_PERF=1 samples both processes'
# call stacks with `perf record` during the deployment (99 Hz, DWARF
# unwinding, a build with line tables in target/profiling; the work
# directory is kept with perf-coordinator.data and perf-agents.data; read
# them with `perf report -i FILE --no-children --sort symbol`, or
# `--children` for what each caller costs); BENCH_ALLOCATOR=system builds the coordinator with
# glibc's allocator instead of mimalloc (target/system-allocator);
# BENCH_HEAP=1 runs the sled coordinator under heaptrack
# (that build, far slower: its timings are not the coordinator's) and writes the allocation sites by their
# peak to heap-peaks.txt and a peak flame graph's stacks to
# heap-peak.stacks in the kept work directory; BENCH_KEEP=1 keeps the work directory
# (logs, figures, JSON) and prints where it is. The simulated agents' files
# live on tmpfs (BENCH_AGENTS_TMPFS, default /dev/shm; about 25 KiB each).
source "$(dirname "$0")/lib.sh"
install_dependencies
cd "$ROOT"
[ "$#" -gt 0 ] || set -- 1000
IDLE="${BENCH_IDLE_SECONDS:-30}"
[ "${BENCH_HEAP:-0}" != 1 ] && [ "${BENCH_PERF:-0}" != 1 ] || BENCH_KEEP=1
if [ "${BENCH_PERF:-0}" = 1 ] && ! command -v perf >/dev/null; then
  echo "BENCH_PERF=1 needs perf: apt-get install linux-perf" >&2
  exit 1
fi
BARE_PORT="${DROVER_BENCH_BARE_PORT:-7601}"
PORT="${DROVER_BENCH_PORT:-7602}"
WEB_PORT="${DROVER_BENCH_WEB_PORT:-7690}"  # the fleet page (TCP)
TICK="$(getconf CLK_TCK)"
ulimit -n 65536 2>/dev/null || true
ETCD_PORT="${DROVER_BENCH_ETCD_PORT:-7610}"
PIDS=() AGENT_DIRS=() SERVER="" WORK="" ETCD_PIDS=()
drill_build
OUT="$(mktemp -d /tmp/drover-bench.XXXXXX)"
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "${AGENT_DIRS[@]}"
  if [ "${BENCH_KEEP:-0}" = 1 ]; then log "kept the work directory: $OUT"; else rm -rf "$OUT"; fi
}
trap cleanup EXIT

# Resident KiB and CPU ticks of one or more processes, summed.
rss_kib() { local t=0 p; for p in "$@"; do t=$((t + $(awk '/VmRSS/ {print $2}' "/proc/$p/status"))); done; echo "$t"; }
cpu_ticks() { local t=0 p; for p in "$@"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done; echo "$t"; }
rcvbuf_errors() { awk '/^Udp:/ { if (!h) { for (i = 1; i <= NF; i++) if ($i == "RcvbufErrors") c = i; h = 1 } else print $c }' /proc/net/snmp; }
# Datagrams the kernel dropped at the UDP socket bound to local PORT (the
# server's; the rest of the drops are at the clients' socket).
# Several ports: summed.
socket_drops() {
  local t=0 p
  for p in "$@"; do
    t=$((t + $(awk -v port="$(printf ':%04X' "$p")" 'index($2, port) == length($2) - 4 { d += $NF } END { print d + 0 }' /proc/net/udp)))
  done
  echo "$t"
}
now_ms() { date +%s%3N; }
# The coordinator's health interval for N agents: 10 s, or N/1000 s
# beyond 10,000 (reports at 1,000 a second).
health_interval() { if [ "$1" -le 10000 ]; then echo 10s; else echo "$((($1 + 999) / 1000))s"; fi; }
# How much of the fleet a rollout step takes for N agents.
rollout_step() { if [ "$1" -le 10000 ]; then echo 25%; else echo 10%; fi; }
wait_file() { # FILE SECONDS WHAT
  local end=$((SECONDS + $2))
  while [ ! -e "$1" ]; do
    if [ "$SECONDS" -ge "$end" ]; then echo "gave up waiting for $3 after $2 s" >&2; exit 1; fi
    sleep 0.1
  done
}
# Figures before N connections come, into DIR/figures (PIDS and PORTS:
# the coordinators', space-separated, summed).
#   before_connects DIR PIDS PORTS
before_connects() {
  # shellcheck disable=SC2086
  echo "rss_before $(rss_kib $2)" >"$1/figures"
  echo "drops_before $(rcvbuf_errors)" >>"$1/figures"
  # shellcheck disable=SC2086
  echo "server_drops_before $(socket_drops $3)" >>"$1/figures"
}
# Figures once they are all connected: memory, drops, idle CPU, and the
# moment the broadcast (or deployment) starts.
#   after_connects DIR PIDS PORTS
after_connects() {
  # shellcheck disable=SC2086
  {
    echo "drops_connected $(rcvbuf_errors)"
    echo "server_drops_connected $(socket_drops $3)"
    echo "rss_connected $(rss_kib $2)"
    echo "idle_cpu $(idle_cpu $2)"
    echo "rss_idle $(rss_kib $2)"
  } >>"$1/figures"
  echo "broadcast_at $(now_ms)" >>"$1/figures"
}
# Idle CPU of PIDS (summed) over IDLE seconds, as a percentage of one core.
idle_cpu() {
  local before after
  before="$(cpu_ticks "$@")"
  sleep "$IDLE"
  after="$(cpu_ticks "$@")"
  python3 -c "print(($after - $before) / $TICK / $IDLE * 100)"
}

# Three etcd members on loopback, data in DIR/etcd (PIDs in ETCD_PIDS).
etcd_start() { # DIR
  local dir="$1" cluster="" i
  ETCD_PIDS=()
  for i in 0 1 2; do cluster+="${cluster:+,}e$i=http://127.0.0.1:$((ETCD_PORT + 10 + i))"; done
  for i in 0 1 2; do
    etcd --name "e$i" --data-dir "$dir/etcd/e$i" \
      --listen-client-urls "http://127.0.0.1:$((ETCD_PORT + i))" --advertise-client-urls "http://127.0.0.1:$((ETCD_PORT + i))" \
      --listen-peer-urls "http://127.0.0.1:$((ETCD_PORT + 10 + i))" --initial-advertise-peer-urls "http://127.0.0.1:$((ETCD_PORT + 10 + i))" \
      --initial-cluster "$cluster" --initial-cluster-token "drover-bench-$$" --initial-cluster-state new 2>"$dir/etcd-e$i.log" &
    ETCD_PIDS+=($!)
    PIDS+=($!)
  done
  for _ in $(seq 150); do
    ETCDCTL_API=3 etcdctl --endpoints "http://127.0.0.1:$ETCD_PORT" endpoint health >/dev/null 2>&1 && return
    sleep 0.2
  done
  echo "etcd did not start; see $dir/etcd-e*.log" >&2
  exit 1
}
etcd_ticks() { local t=0 p; for p in "${ETCD_PIDS[@]}"; do t=$((t + $(cpu_ticks "$p"))); done; echo "$t"; }
etcd_rss_kib() { local t=0 p; for p in "${ETCD_PIDS[@]}"; do t=$((t + $(rss_kib "$p"))); done; echo "$t"; }
etcd_db_bytes() {
  ETCDCTL_API=3 etcdctl --endpoints "http://127.0.0.1:$ETCD_PORT" endpoint status -w json |
    python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["Status"]["dbSize"])'
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

drover() { # N DIR [etcd]
  local n="$1" dir="$2" store="${3:-sled}" sim j standby_pids=() ports="$PORT" spread=()
  mkdir -p "$dir"
  # The drill helpers (lib.sh) work in $WORK.
  # shellcheck disable=SC2034
  WORK="$dir"
  if [ "$store" = etcd ]; then
    etcd_start "$dir"
    local url="etcd://127.0.0.1:$ETCD_PORT,127.0.0.1:$((ETCD_PORT + 1)),127.0.0.1:$((ETCD_PORT + 2))/bench"
    drill_init "$PORT" --health-interval "$(health_interval "$n")" --store "$url"
    sed -i "1i web_listen = \"127.0.0.1:$WEB_PORT\"" "$DROVER_STATE_DIR/drover.toml"
    drill_serve
    # Two more coordinators of the fleet: every one serves, the agents are
    # spread over the three, and the coordinators' figures are their sums.
    for j in 1 2; do
      "$BIN/drover" init --state-dir "$dir/standby-$j" --listen "127.0.0.1:$((PORT + 10 * j))" --store "$url" --join "$DROVER_STATE_DIR" >/dev/null
      RUST_LOG=warn "$BIN/drover" serve --state-dir "$dir/standby-$j" 2>>"$dir/standby-$j.log" &
      standby_pids+=($!)
      PIDS+=($!)
      ports+=" $((PORT + 10 * j))"
    done
    spread=(--spread)
  else
    drill_init "$PORT" --health-interval "$(health_interval "$n")"
    sed -i "1i web_listen = \"127.0.0.1:$WEB_PORT\"" "$DROVER_STATE_DIR/drover.toml"
    [ "$n" -le 49000 ] || sed -i "s/^max_connections = .*/max_connections = $((n + 1000))/" "$DROVER_STATE_DIR/drover.toml"
    # Beyond 10,000 agents starting at once the coordinator keeps its
    # default bound on handshakes in progress: lifted, 50,000 overran the
    # two cores and 100,000 handshakes a minute timed out.
    [ "$n" -le 10000 ] || sed -i "s/^handshakes = .*/handshakes = 2000/" "$DROVER_STATE_DIR/drover.toml"
    if [ "${BENCH_HEAP:-0}" = 1 ]; then DRILL_HEAP="$dir/heap" drill_serve; else drill_serve; fi
  fi
  PIDS+=("$SERVER")
  "$BIN/drover" tokens create --uses "$n" --ttl 1h --label role=bench >"$dir/token"
  drill_agent_config "$PORT"
  if [ "$store" = etcd ]; then
    echo "other_coordinators = [\"127.0.0.1:$((PORT + 10))\", \"127.0.0.1:$((PORT + 20))\"]" >>"$dir/agent.toml"
    # Every one answers before the agents come.
    for j in 1 2; do
      for _ in $(seq 150); do "$BIN/drover" whoami --coordinator "127.0.0.1:$((PORT + 10 * j))" >/dev/null 2>&1 && break; sleep 0.2; done
    done
  fi
  local coords="$SERVER ${standby_pids[*]}"
  before_connects "$dir" "$coords" "$ports"
  # The simulated agents' state and runtime files on tmpfs: a real agent
  # writes them on its own machine's disk, and N agents creating files on
  # this one's made the simulator, not the coordinator, the bottleneck.
  local agents
  agents="$(mktemp -d "${BENCH_AGENTS_TMPFS:-/dev/shm}/drover-bench-agents.XXXXXX")"
  AGENT_DIRS+=("$agents")
  RUST_LOG="${BENCH_AGENT_LOG:-error}" "$BIN/drover-agent" simulate -c "$dir/agent.toml" --count "$n" --work-dir "$agents" "${spread[@]}" \
    --timeout 15m --hold 2h --ready-file "$dir/ready.json" --json >"$dir/final.json" 2>"$dir/simulate.log" &
  sim=$!
  PIDS+=("$sim")
  wait_file "$dir/ready.json" 960 "$n simulated agents"
  after_connects "$dir" "$coords" "$ports"
  # Whose CPU the deployment takes: the coordinator's or the simulator's.
  # shellcheck disable=SC2086
  echo "deploy_ticks_before $(cpu_ticks $coords) $(cpu_ticks "$sim")" >>"$dir/figures"
  [ "$store" != etcd ] || echo "etcd_ticks_before $(etcd_ticks)" >>"$dir/figures"
  local profilers=()
  if [ "${BENCH_PERF:-0}" = 1 ]; then
    perf record -F 99 --call-graph dwarf,16384 -p "$SERVER" -o "$dir/perf-coordinator.data" 2>>"$dir/perf.log" &
    profilers+=($!)
    perf record -F 99 --call-graph dwarf,16384 -p "$sim" -o "$dir/perf-agents.data" 2>>"$dir/perf.log" &
    profilers+=($!)
  fi
  "$BIN/drover" deploy --selector role=bench --flake "path:/nonexistent#bench" --health-deadline 5s \
    --wait -o json >"$dir/deploy.json" 2>>"$dir/cli.log" || echo "the deployment did not succeed everywhere" >&2
  if [ "${#profilers[@]}" -gt 0 ]; then
    kill -INT "${profilers[@]}"
    wait "${profilers[@]}" || true
  fi
  echo "deployed_at $(now_ms)" >>"$dir/figures"
  # shellcheck disable=SC2086
  echo "deploy_ticks_after $(cpu_ticks $coords) $(cpu_ticks "$sim")" >>"$dir/figures"
  [ "$store" != etcd ] || echo "etcd_ticks_after $(etcd_ticks)" >>"$dir/figures"
  # The agents' connects so far: the deployment's reconnects.
  kill -USR1 "$sim"
  wait_file "$dir/ready.json.snapshot" 60 "the simulator's snapshot"
  local started=$SECONDS t0 t1
  "$BIN/drover" rollout start --selector role=bench --flake "path:/nonexistent#rollout" --canary 1 --auto-promote \
    --max-parallel "$(rollout_step "$n")" --health-deadline 5s --wait -o json >"$dir/rollout.json" 2>>"$dir/cli.log" || echo "the rollout did not succeed" >&2
  echo "rollout_seconds $((SECONDS - started))" >>"$dir/figures"
  t0="$(now_ms)"; "$BIN/drover" machines list -o json | python3 -c 'import json,sys; print("registered", len(json.load(sys.stdin)))' >>"$dir/figures"; t1="$(now_ms)"
  echo "machines_list_ms $((t1 - t0))" >>"$dir/figures"
  local rollout_id
  rollout_id="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1])).get("id", ""))' "$dir/rollout.json" 2>/dev/null || true)"
  if [ -n "$rollout_id" ]; then
    t0="$(now_ms)"; "$BIN/drover" rollout status "$rollout_id" -o json >/dev/null; t1="$(now_ms)"
    echo "rollout_status_ms $((t1 - t0))" >>"$dir/figures"
  fi
  # The fleet page for N machines: the first page of the table, a later
  # page under a label filter, and the live fragment; the median of five
  # requests each, with a session from a one-time link.
  curl -fsS -o /dev/null -c "$dir/web-cookies" "$("$BIN/drover" web login 2>>"$dir/cli.log")"
  local what url
  for what in web_page web_filtered web_fragment; do
    case "$what" in
      web_page) url="/" ;;
      web_filtered) url="/?selector=role%3Dbench&page=$(((n + 199) / 200))" ;;
      web_fragment) url="/?fragment=1" ;;
    esac
    echo "${what}_ms $(for _ in 1 2 3 4 5; do curl -fsS -o /dev/null -b "$dir/web-cookies" -w '%{time_total}\n' "http://127.0.0.1:$WEB_PORT$url"; done | sort -n | sed -n 3p | awk '{printf "%d", $1 * 1000}')" >>"$dir/figures"
  done
  echo "drops_end $(rcvbuf_errors)" >>"$dir/figures"
  # shellcheck disable=SC2086
  echo "server_drops_end $(socket_drops $ports)" >>"$dir/figures"
  echo "load $(cut -d' ' -f1 /proc/loadavg)" >>"$dir/figures"
  if [ "$store" = etcd ]; then
    echo "etcd_rss $(etcd_rss_kib)" >>"$dir/figures"
    echo "etcd_db $(etcd_db_bytes)" >>"$dir/figures"
  fi
  kill -TERM "$sim"
  wait "$sim" || true
  kill -TERM "$SERVER" "${standby_pids[@]}"
  wait "$SERVER_WRAPPER" "${standby_pids[@]}" || true
  local heap
  for heap in "$dir"/heap.*; do
    [ -e "$heap" ] || continue
    heaptrack_print -f "$heap" --print-peaks --print-allocators 0 --print-temporary 0 --peak-limit 30 --sub-peak-limit 3 >"$dir/heap-peaks.txt"
    heaptrack_print -f "$heap" --print-peaks 0 --print-allocators 0 --print-temporary 0 \
      --flamegraph-cost-type peak --print-flamegraph "$dir/heap-peak.stacks" >/dev/null
    log "N = $n: the coordinator's heap profile: $dir/heap-peaks.txt, $dir/heap-peak.stacks"
  done
  if [ "$store" = etcd ]; then
    kill -TERM "${ETCD_PIDS[@]}"
    wait "${ETCD_PIDS[@]}" || true
  fi
}

for N in "$@"; do
  log "N = $N: bare quinn"
  bare "$N" "$OUT/bare-$N"
  log "N = $N: Drover on sled"
  drover "$N" "$OUT/drover-$N"
  if [ "${BENCH_ETCD:-1}" = 1 ] && [ "$N" -le "${BENCH_ETCD_MAX:-10000}" ]; then
    log "N = $N: Drover on etcd (three members), three coordinators serving, the agents spread over them"
    drover "$N" "$OUT/etcd-$N" etcd
  elif [ "${BENCH_ETCD:-1}" = 1 ]; then
    log "N = $N: no etcd run above BENCH_ETCD_MAX=${BENCH_ETCD_MAX:-10000} agents (see the header)"
  fi
  python3 - "$OUT/bare-$N" "$OUT/drover-$N" "$N" "$OUT/etcd-$N" <<'PY'
import json, os, sys
bare_dir, drover_dir, n, etcd_dir = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
def figures(d):
    out = {}
    for l in open(os.path.join(d, "figures")):
        if not l.strip(): continue
        k, *v = l.split()
        if len(v) == 1: out[k] = float(v[0])
        elif v: out[k] = [float(x) for x in v]
    return out
def q(values, p):
    if not values: return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p * (len(values) - 1))))]
def spread(times, t0):
    d = [(t - t0) / 1000 for t in times]
    return (q(d, .5), q(d, .99), max(d) if d else float("nan"), len(d))
NAN = float("nan")
bf = figures(bare_dir)
br = json.load(open(os.path.join(bare_dir, "final.json")))
b = br["broadcasts"][0] if br["broadcasts"] else {"sent_unix_ms": bf["broadcast_at"], "received_unix_ms": []}
b_recv = spread(b["received_unix_ms"], b["sent_unix_ms"])
bare_values = {
    "online (s)": br["seconds_until_all_connected"],
    "connects/s (enrollments, handshakes)": br["handshakes_per_second"],
    "coordinator KiB per connection, all online": (bf["rss_connected"] - bf["rss_before"]) / n,
    "  after the idle period": (bf["rss_idle"] - bf["rss_before"]) / n,
    "coordinator CPU at idle (% of a core)": bf["idle_cpu"],
    "generation received p50 (s)": b_recv[0],
    "generation received p99 (s)": b_recv[1],
    "generation received max (s)": b_recv[2],
    "UDP receive drops while connecting": bf["drops_connected"] - bf["drops_before"],
    "  of them at the server's socket": bf["server_drops_connected"] - bf["server_drops_before"],
    "UDP receive drops, broadcast to end": bf["drops_end"] - bf["drops_connected"],
    "  of them at the server's socket ": bf["server_drops_end"] - bf["server_drops_connected"],
    "load average (1 min) at the end": bf["load"],
}
def measure(d):
    df = figures(d)
    dr = json.load(open(os.path.join(d, "final.json")))
    ready = json.load(open(os.path.join(d, "ready.json")))
    snap = json.load(open(os.path.join(d, "ready.json.snapshot")))
    gens = dr["generations"]
    deploy = gens[0] if gens else {"received_unix_ms": [], "applied_unix_ms": []}
    recv = spread(deploy["received_unix_ms"], df["broadcast_at"])
    done = spread(deploy["applied_unix_ms"], df["broadcast_at"])
    tick = os.sysconf("SC_CLK_TCK")
    (cb, sb), (ca, sa) = df["deploy_ticks_before"], df["deploy_ticks_after"]
    try:
        phase = json.load(open(os.path.join(d, "rollout.json"))).get("phase", "?")
    except Exception:
        # `rollout start` wrote no JSON (refused, or no answer): its error is in cli.log.
        phase = "failed (cli.log)"
    deployed = json.load(open(os.path.join(d, "deploy.json"))) if os.path.getsize(os.path.join(d, "deploy.json")) else []
    v = {
        "online (s)": (dr["seconds_until_all_online"], "{:.2f}"),
        "connects/s (enrollments, handshakes)": (dr["enrollments_per_second"], "{:.0f}"),
        "coordinator KiB per connection, all online": ((df["rss_connected"] - df["rss_before"]) / n, "{:.1f}"),
        "  after the idle period": ((df["rss_idle"] - df["rss_before"]) / n, "{:.1f}"),
        "coordinator CPU at idle (% of a core)": (df["idle_cpu"], "{:.1f}"),
        "generation received p50 (s)": (recv[0], "{:.3f}"),
        "generation received p99 (s)": (recv[1], "{:.3f}"),
        "generation received max (s)": (recv[2], "{:.3f}"),
        "generation finished p50 (s)": (done[0], "{:.3f}"),
        "generation finished p99 (s)": (done[1], "{:.3f}"),
        "generation finished max (s)": (done[2], "{:.3f}"),
        "deployment wall time, deploy --wait (s)": ((df["deployed_at"] - df["broadcast_at"]) / 1000, "{:.1f}"),
        "  CPU in it: coordinator (core-seconds)": ((ca - cb) / tick, "{:.1f}"),
        "  CPU in it: simulated agents (core-seconds)": ((sa - sb) / tick, "{:.1f}"),
        "  CPU in it: etcd members (core-seconds)": (((df["etcd_ticks_after"] - df["etcd_ticks_before"]) / tick) if "etcd_ticks_after" in df else NAN, "{:.1f}"),
        "etcd members' memory at the end (MiB, all three)": (df.get("etcd_rss", NAN) / 1024, "{:.0f}"),
        "etcd database size at the end (MiB)": (df.get("etcd_db", NAN) / 1048576, "{:.1f}"),
        f"rollout, {'25%' if n <= 10000 else '10%'} at a time (s)": (df["rollout_seconds"], "{:.0f}"),
        "machines list (s)": (df["machines_list_ms"] / 1000, "{:.2f}"),
        "rollout status (s)": (df.get("rollout_status_ms", NAN) / 1000, "{:.2f}"),
        "fleet page, first 100 machines (s)": (df.get("web_page_ms", NAN) / 1000, "{:.3f}"),
        "  a middle page, label filter (s)": (df.get("web_filtered_ms", NAN) / 1000, "{:.3f}"),
        "  its live fragment (s)": (df.get("web_fragment_ms", NAN) / 1000, "{:.3f}"),
        "agent reconnects while connecting": (ready["connects"] - ready["online"], "{:.0f}"),
        "agent reconnects during the deployment": (snap["connects"] - ready["connects"], "{:.0f}"),
        "agent reconnects during the rollout": (dr["connects"] - snap["connects"], "{:.0f}"),
        "UDP receive drops while connecting": (df["drops_connected"] - df["drops_before"], "{:.0f}"),
        "  of them at the server's socket": (df["server_drops_connected"] - df["server_drops_before"], "{:.0f}"),
        "UDP receive drops, broadcast to end": (df["drops_end"] - df["drops_connected"], "{:.0f}"),
        "  of them at the server's socket ": (df["server_drops_end"] - df["server_drops_connected"], "{:.0f}"),
        "load average (1 min) at the end": (df["load"], "{:.2f}"),
    }
    summary = (f"{dr['online']} of {n} agents online, {int(df['registered'])} machines registered; the deployment: {recv[3]} received it, "
               f"{sum(1 for x in deployed if x.get('state') == 'succeeded')} succeeded; the rollout: {phase}")
    return v, summary
runs = [("sled", drover_dir)] + ([("etcd", etcd_dir)] if os.path.exists(os.path.join(etcd_dir, "final.json")) else [])
measured = [(name,) + measure(d) for name, d in runs]
print(f"\nN = {n} (health interval {10 if n <= 10000 else (n + 999) // 1000} s); bare: {br['connected']} connected ({br['retries']} retries, {br.get('lost', 0)} closed later), {b_recv[3]} got the broadcast")
for name, _, summary in measured:
    print(f"  Drover on {name}: {summary}")
names = list(measured[0][1].keys())
width = max(len(k) for k in names)
header = f"{'':{width}}" + "".join(f"  {'on ' + m[0]:>10}" for m in measured) + f"  {'bare quinn':>10}" + "".join(f"  {m[0] + '/bare':>10}" for m in measured)
print(header)
for k in names:
    fmt = measured[0][1][k][1]
    cells = []
    for m in measured:
        val = m[1][k][0]
        cells.append("" if val != val else fmt.format(val))
    bv = bare_values.get(k)
    line = f"{k:{width}}" + "".join(f"  {c:>10}" for c in cells) + f"  {'' if bv is None else fmt.format(bv):>10}"
    for m in measured:
        val = m[1][k][0]
        line += f"  {(f'{val / bv:.2f}×' if bv not in (None, 0) and bv == bv and val == val else ''):>10}"
    print(line)
PY
done
log "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo), $(uname -r)"
