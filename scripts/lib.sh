# shellcheck shell=bash
# Shared helpers for the project's scripts: install what is missing, skip
# what is there.

set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# Progress on standard error, with the seconds since the script started.
log() { printf '==> [%4d s] %s\n' "$SECONDS" "$*" >&2; }

# Installs Debian packages that are not installed yet (NEED_APT_OPTIONS
# adds apt-get options, e.g. --no-install-recommends).
need_apt() {
  local missing=()
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    log "installing Debian packages: ${missing[*]}"
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    # NEED_APT_OPTIONS may hold several options: split on purpose.
    # shellcheck disable=SC2086
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ${NEED_APT_OPTIONS:-} "${missing[@]}" >/dev/null
  fi
}

# The Rust toolchain must be there already (rustup); say so clearly if not.
need_cargo() {
  if ! command -v cargo >/dev/null 2>&1; then
    echo "cargo is not installed; install Rust with rustup (https://rustup.rs) and run this again" >&2
    exit 1
  fi
}

# Garage, built from crates.io (about ten minutes the first time; skipped
# when a garage binary is already installed).
GARAGE_VERSION="2.5.0"
need_garage() {
  if command -v garage >/dev/null 2>&1 || [ -x "${CARGO_HOME:-$HOME/.cargo}/bin/garage" ]; then
    return
  fi
  log "building Garage $GARAGE_VERSION from crates.io (cargo install garage --locked)"
  cargo install garage --locked --version "$GARAGE_VERSION"
}

# Installs everything the build and the tests need.
install_dependencies() {
  need_cargo
  need_apt build-essential pkg-config protobuf-compiler iproute2 procps curl python3 nix-bin util-linux e2fsprogs xfsprogs nftables fdisk cryptsetup-bin shellcheck etcd-server etcd-client
  # Local VMs (the QEMU provider and its guest image). Debian 12's QEMU
  # replaces a newer qemu-utils where one is installed; nothing here needs it.
  NEED_APT_OPTIONS=--no-install-recommends need_apt qemu-system-x86 busybox-static cpio binutils
  # The fleet page's tests drive a headless Chromium through its WebDriver.
  NEED_APT_OPTIONS=--no-install-recommends need_apt chromium chromium-driver
  need_garage
  export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
}

# The drills (crash-storm, soak): a release-built coordinator
# on loopback in a fresh work directory. Sets BIN, WORK and
# DROVER_STATE_DIR; every simulated agent comes from 127.0.0.1, so the
# per-address cap on enrolling connections (100 by default) is lifted.
#   drill_coordinator NAME PORT [drover init arguments...]
drill_coordinator() {
  drill_build
  WORK="$(mktemp -d "/tmp/drover-$1.XXXXXX")"
  drill_init "$2" "${@:3}"
}

# Builds the release binaries; sets BIN.
drill_build() {
  # BENCH_ALLOCATOR=system: the coordinator with glibc's allocator, to
  # weigh it against mimalloc; BENCH_HEAP=1 (which needs it: heaptrack
  # follows glibc's allocator) profiles its heap; BENCH_PERF=1 samples
  # call stacks. These builds keep line tables, for the profilers to name
  # functions (inlined ones too), in target directories of their own.
  if [ "${BENCH_HEAP:-0}" = 1 ] && { ! command -v heaptrack >/dev/null || ! command -v heaptrack_print >/dev/null; }; then
    echo "BENCH_HEAP=1 needs heaptrack and heaptrack_print: apt-get install heaptrack" >&2
    exit 1
  fi
  if [ "${BENCH_HEAP:-0}" = 1 ] || [ "${BENCH_ALLOCATOR:-mimalloc}" = system ]; then
    CARGO_PROFILE_RELEASE_DEBUG=line-tables-only cargo build --release --locked --target-dir "$ROOT/target/system-allocator" \
      --features drover-coordinator/system-allocator --bin drover --bin drover-agent --bin drover-bench
    BIN="$ROOT/target/system-allocator/release"
  elif [ "${BENCH_PERF:-0}" = 1 ]; then
    CARGO_PROFILE_RELEASE_DEBUG=line-tables-only cargo build --release --locked --target-dir "$ROOT/target/profiling" \
      --bin drover --bin drover-agent --bin drover-bench
    BIN="$ROOT/target/profiling/release"
  else
    cargo build --release --locked --bin drover --bin drover-agent --bin drover-bench
    BIN="$ROOT/target/release"
  fi
}

# Initialises a coordinator in $WORK/coordinator (sets DROVER_STATE_DIR)
# listening on PORT, with the per-address caps lifted (every simulated
# agent comes from 127.0.0.1) and no address validation (as bare quinn).
#   drill_init PORT [drover init arguments...]
drill_init() {
  export DROVER_STATE_DIR="$WORK/coordinator"
  "$BIN/drover" init --state-dir "$DROVER_STATE_DIR" --listen "127.0.0.1:$1" "${@:2}" >/dev/null
  printf '\n[limits]\nanonymous_connections = 100000\nanonymous_per_address = 100000\nhandshakes = 100000\nhandshakes_per_address = 100000\nretry_above = 100000\n' >>"$DROVER_STATE_DIR/drover.toml"
}

# Starts `drover serve` on the drill's state (PID in SERVER, log in
# $WORK/coordinator.log; DROVER_SERVE_LOG sets its log filter, default
# warn) and waits until it answers. With DRILL_HEAP=FILE it runs under
# heaptrack writing FILE.zst: SERVER is then the coordinator itself and
# SERVER_WRAPPER heaptrack, to wait for once the coordinator is stopped.
drill_serve() {
  if [ -n "${DRILL_HEAP:-}" ]; then
    RUST_LOG="${DROVER_SERVE_LOG:-warn}" heaptrack -o "$DRILL_HEAP" "$BIN/drover" serve >>"$WORK/heaptrack.log" 2>>"$WORK/coordinator.log" &
  else
    RUST_LOG="${DROVER_SERVE_LOG:-warn}" "$BIN/drover" serve 2>>"$WORK/coordinator.log" &
  fi
  # Read by the scripts that source this file.
  # shellcheck disable=SC2034
  SERVER=$! SERVER_WRAPPER=$!
  for _ in $(seq 100); do
    if "$BIN/drover" whoami >/dev/null 2>&1; then
      [ -z "${DRILL_HEAP:-}" ] || SERVER="$(pgrep -P "$SERVER_WRAPPER" -x drover)"
      return
    fi
    if ! kill -0 "$SERVER" 2>/dev/null; then
      echo "the coordinator exited at its start:" >&2
      tail -5 "$WORK/coordinator.log" >&2
      exit 1
    fi
    sleep 0.1
  done
  echo "the coordinator did not start; see $WORK/coordinator.log" >&2
  exit 1
}

# Writes $WORK/agent.toml for `drover-agent simulate -c`: the drill's
# coordinator on PORT, the token in $WORK/token, a switch that always
# succeeds.
#   drill_agent_config PORT
drill_agent_config() {
  cat >"$WORK/agent.toml" <<TOML
coordinator = "127.0.0.1:$1"
ca_file = "$DROVER_STATE_DIR/ca.pem"
enrollment_token_file = "$WORK/token"
state_dir = "$WORK/agent"
nixos_rebuild = "/bin/true"
TOML
}
