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
log "formatting (cargo fmt --check) and lints (cargo clippy -D warnings)"
rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt clippy 2>/dev/null || true
if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
  echo "cargo fmt and cargo clippy are needed: rustup component add rustfmt clippy (or Debian's rustfmt and rust-clippy)" >&2
  exit 1
fi
cargo fmt --all --check
cargo clippy --workspace --all-targets --all-features --locked -- -D warnings
log "shell scripts (shellcheck)"
shellcheck -x -S info scripts/*.sh scripts/nixos-rebuild-standin .ci/run
log "building"
cargo build --workspace --all-targets --all-features --locked
log "testing"
# The `system-tests` features add the suites against the real systems
# (root, Garage, QEMU, Nix, network namespaces); without them `cargo test`
# runs only what needs none of those.
cargo test --workspace --all-features --locked --doc 2>&1
cargo test --workspace --all-features --locked --lib --bins --tests "${@:2}" 2>&1
log "fuzzing smoke: every fuzz target for a few seconds (scripts/fuzz.sh)"
"$ROOT/scripts/fuzz.sh" --dev --seconds 5
