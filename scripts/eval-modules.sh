#!/usr/bin/env bash
# Evaluates every NixOS module with nixpkgs' own module system, without the
# rest of nixpkgs, then runs each profile's rendered environment script
# against facts that lack the bucket (each must fail naming the fact and
# write no environment file).
#
#   scripts/eval-modules.sh PATH/TO/nixpkgs.lib
#
# PATH is a checkout of nixpkgs' library alone
# (https://github.com/nix-community/nixpkgs.lib, a few MB): the directory
# holding lib/. On a machine with all of nixpkgs, `nix flake check` runs
# the full checks instead (checks.modules, checks.profile-facts).
source "$(dirname "$0")/lib.sh"
if [ $# -ne 1 ] || [ ! -f "$1/lib/default.nix" ]; then
  echo "usage: $0 PATH/TO/nixpkgs.lib  (a checkout of https://github.com/nix-community/nixpkgs.lib: the directory holding lib/)" >&2
  exit 2
fi
LIB="$(cd "$1" && pwd)"
need_apt nix-bin jq
cd "$ROOT"

log "evaluating the modules (lib.evalModules, nixpkgs.lib $(cat "$LIB/lib/.version" 2>/dev/null || echo '?'))"
nix-instantiate --eval --strict --json nix/eval-modules.nix --arg libPath "$LIB" -A report | jq -r '.[]'

log "evaluating the NixOps4 provider module and the example deployment against it"
nix-instantiate --eval --strict --json nix/eval-nixops4.nix --arg libPath "$LIB" -A report | jq -r '.[]'

log "running each profile's environment script against facts without its bucket"
WORK="$(mktemp -d /run/drover-eval.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/run/secrets" "$WORK/state"
echo '{"s3_endpoint":"http://s3.example.org:3900","s3_region":"garage","s3_public_url.media":"https://media.example.org"}' >"$WORK/run/facts.json"
scripts="$(nix-instantiate --eval --strict --json nix/eval-modules.nix --arg libPath "$LIB" -A profileScripts)"
for name in $(jq -r 'keys[]' <<<"$scripts"); do
  jq -r --arg n "$name" '.[$n]' <<<"$scripts" \
    | sed "s|/run/drover|$WORK/run|g; s|/var/lib/drover-|$WORK/state/drover-|g" >"$WORK/$name.sh"
  if bash "$WORK/$name.sh" 2>"$WORK/$name.err"; then
    echo "$name: the environment script succeeded without the bucket's fact" >&2
    exit 1
  fi
  if ! grep -q "fact s3_bucket.media is missing" "$WORK/$name.err"; then
    echo "$name: the failure does not name the missing fact:" >&2
    cat "$WORK/$name.err" >&2
    exit 1
  fi
  if [ -e "$WORK/run/env/$name.env" ]; then
    echo "$name: an environment file was written" >&2
    exit 1
  fi
  echo "$name: refused, naming the missing fact ($(head -1 "$WORK/$name.err"))"
done

log "writing docs/nixos-options.md from the modules' options"
{
  echo "# NixOS options"
  echo
  echo "Every option of Drover's NixOS modules, generated from the modules"
  echo "(\`scripts/eval-modules.sh PATH/TO/nixpkgs.lib\`); do not edit by hand."
  echo "[nixos.md](nixos.md) says how the modules fit together."
  nix-instantiate --eval --strict --json nix/eval-modules.nix --arg libPath "$LIB" -A optionDocs | jq -r '
    to_entries[] |
    "\n## `\(.key)`\n",
    (.value[] |
      "### `\(.name)`\n\n\(.description // "" | gsub("\n+$"; ""))\n\n- type: \(.type)" +
      (if .default != null then "\n- default: `\(.default | gsub("\n"; " "))`" else "" end) +
      (if .example != null then "\n- example: `\(.example | gsub("\n"; " "))`" else "" end) + "\n")'
} >docs/nixos-options.md
echo "docs/nixos-options.md: $(grep -c '^### ' docs/nixos-options.md) options"
