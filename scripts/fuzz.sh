#!/usr/bin/env bash
# Coverage-guided fuzzing (libFuzzer through cargo-fuzz) of every parser of
# outside input: the request and response frames, client certificates, the
# coordinator's and the agent's configuration files, SSH key lines, labels
# and backup files (fuzz/fuzz_targets/).
#
#   scripts/fuzz.sh [--dev] [--runs N | --seconds S] [TARGET...]
#
# Default: every target, release build, 60 seconds each. --runs N stops each
# target after N executions (docs/security.md's figures: --runs 10000000); --dev
# builds without optimisation (faster to build; the test command's smoke
# run). Prints one line per target; a crash stops the script with the
# input that caused it in fuzz/artifacts/TARGET/ (make it a regression test).
#
# cargo-fuzz passes flags that rustc accepts on stable only with
# RUSTC_BOOTSTRAP=1; no nightly toolchain is needed.
source "$(dirname "$0")/lib.sh"
need_cargo
need_apt build-essential
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
if ! cargo fuzz --version >/dev/null 2>&1; then
  log "installing cargo-fuzz (cargo install cargo-fuzz --locked)"
  cargo install cargo-fuzz --locked
fi

mode=(--release)
limit=(-max_total_time=60)
targets=()
while [ $# -gt 0 ]; do
  case "$1" in
    --dev) mode=(--dev); shift ;;
    --runs) limit=("-runs=$2"); shift 2 ;;
    --seconds) limit=("-max_total_time=$2"); shift 2 ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    -*) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
    *) targets+=("$1"); shift ;;
  esac
done

cd "$ROOT/fuzz"
export RUSTC_BOOTSTRAP=1
log "building the fuzz targets (${mode[*]})"
cargo fuzz build -s none "${mode[@]}"
[ "${#targets[@]}" -gt 0 ] || mapfile -t targets < <(cargo fuzz list)

for target in "${targets[@]}"; do
  mkdir -p "corpus/$target"
  seeds=()
  case "$target" in
    request|response) seeds=("$ROOT/protocol/tests/golden") ;;
    fleet_file) seeds=("$ROOT/examples") ;;
  esac
  out="$(mktemp)"
  if ! cargo fuzz run -s none "${mode[@]}" "$target" "corpus/$target" "${seeds[@]}" -- \
      "${limit[@]}" -print_final_stats=1 >"$out" 2>&1; then
    tail -40 "$out" >&2
    echo "fuzz target $target crashed; the input is in fuzz/artifacts/$target/" >&2
    rm -f "$out"
    exit 1
  fi
  runs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$out")"
  rate="$(sed -n 's/^stat::average_exec_per_sec: *//p' "$out")"
  printf '%-20s %12s executions  %8s/s  no crash\n' "$target" "$runs" "$rate"
  rm -f "$out"
done
