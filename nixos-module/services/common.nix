# Shared by the service profiles: reading what Drover delivered.
#
# The agent writes facts to RUNTIME/facts.json and secrets to
# RUNTIME/secrets/NAME (services.drover-agent.settings.runtime_dir, by default
# /run/drover). A profile turns them into the environment file its service
# reads, with a oneshot unit that runs before the service, on every start:
# values never pass through the Nix store.
{ config, lib, pkgs }:

let
  runtime = config.services.drover-agent.settings.runtime_dir;
in
rec {
  inherit runtime;
  facts = "${runtime}/facts.json";
  secrets = "${runtime}/secrets";
  envDir = "${runtime}/env";

  # Names of the facts and secrets `drover deploy --bucket NAME` delivers.
  bucketFact = bucket: "s3_bucket.${bucket}";
  publicUrlFact = bucket: "s3_public_url.${bucket}";
  accessKeySecret = bucket: "s3-${bucket}-access-key-id";
  secretKeySecret = bucket: "s3-${bucket}-secret-access-key";

  # A shell prelude for the units below: `fact KEY` prints a fact (failing
  # with a clear message when it is missing), `secret NAME` a secret.
  prelude = ''
    set -euo pipefail
    fact() {
      local v
      v=$(${pkgs.jq}/bin/jq -er --arg k "$1" '.[$k] // empty' ${facts}) || {
        echo "fact $1 is missing from ${facts}: deploy this machine with it (e.g. drover deploy --bucket, or a tenant label)" >&2
        exit 1
      }
      printf '%s' "$v"
    }
    secret() {
      [ -r "${secrets}/$1" ] || { echo "secret $1 is missing from ${secrets}: deploy this machine with it" >&2; exit 1; }
      cat "${secrets}/$1"
    }
    # One KEY=VALUE line, single-quoted for systemd's EnvironmentFile.
    env_line() {
      case "$2" in *"'"*|*$'\n'*) echo "$1: a value with a quote or newline cannot go into an environment file" >&2; exit 1 ;; esac
      printf "%s='%s'\n" "$1" "$2"
    }
  '';

  # A oneshot unit writing ${envDir}/NAME.env (mode 0440, root:GROUP) with
  # SCRIPT's standard output, before BEFORE. It waits for the facts; a path
  # unit runs it again whenever the agent rewrites them, and the services in
  # BEFORE are then (re)started with the new environment.
  envPath = name: {
    wantedBy = [ "multi-user.target" ];
    pathConfig.PathChanged = facts;
    pathConfig.Unit = "drover-${name}-env.service";
  };

  envUnit = { name, group, before, script }: {
    description = "Environment for ${name} from what Drover delivered";
    wantedBy = [ "multi-user.target" ];
    inherit before;
    requiredBy = before;
    unitConfig.ConditionPathExists = facts;
    serviceConfig = {
      Type = "oneshot";
      UMask = "0077";
    };
    path = [ pkgs.coreutils pkgs.jq ];
    script = ''
      ${prelude}
      mkdir -p ${envDir}
      tmp=$(mktemp ${envDir}/.${name}.XXXXXX)
      trap 'rm -f "$tmp"' EXIT
      {
      ${script}
      } > "$tmp"
      chgrp ${group} "$tmp"
      chmod 0440 "$tmp"
      changed=1
      if cmp -s "$tmp" ${envDir}/${name}.env; then changed=0; fi
      mv "$tmp" ${envDir}/${name}.env
      trap - EXIT
      if [ "$changed" = 1 ]; then
        for unit in ${lib.escapeShellArgs before}; do
          ${config.systemd.package}/bin/systemctl --no-block try-restart "$unit"
        done
      fi
    '';
  };
}
