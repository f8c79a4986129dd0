# Shared helpers for the project's scripts: install what is missing, skip
# what is there.

set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

log() { printf '==> %s\n' "$*" >&2; }

# Installs Debian packages that are not installed yet.
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
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
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
  need_apt build-essential pkg-config iproute2 procps curl python3 nix-bin util-linux e2fsprogs xfsprogs nftables
  need_garage
  export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
}
