#!/usr/bin/env bash
# Makes the secret files examples/fleet.toml and examples/fleet-proxmox.toml
# name (random passwords, mode 0600, in examples/secrets/); existing ones
# are kept.
set -euo pipefail
dir="$(cd "$(dirname "$0")/.." && pwd)/examples/secrets"
mkdir -p "$dir"
chmod 700 "$dir"
for name in social-pg-password photos-pg-password; do
  [ -e "$dir/$name" ] && continue
  (umask 077; head -c 24 /dev/urandom | base64 >"$dir/$name")
  echo "made $dir/$name"
done
