#!/usr/bin/env bash
# Runs the whole test suite, installing what it needs first.
#   scripts/test.sh            all tests
#   scripts/test.sh -- ARGS    extra arguments for `cargo test`
source "$(dirname "$0")/lib.sh"
install_dependencies
cd "$ROOT"
log "parsing every .nix file (nix-instantiate --parse)"
find . -name '*.nix' -not -path './target/*' -print0 | while IFS= read -r -d '' f; do
  nix-instantiate --parse "$f" >/dev/null || { echo "$f does not parse" >&2; exit 1; }
done
log "building"
cargo build --workspace --all-targets --locked
log "testing"
cargo test --workspace --locked "${@:2}" 2>&1
log "fuzzing smoke: every fuzz target for a few seconds (scripts/fuzz.sh)"
"$ROOT/scripts/fuzz.sh" --dev --seconds 5
