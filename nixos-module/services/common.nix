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

  # The options every profile has: its domain and its bucket.
  profileOptions = { service, example }: {
    enable = lib.mkEnableOption "${service} with its S3 storage and admin account from Drover";
    domain = lib.mkOption {
      type = lib.types.str;
      example = example;
      description = ''
        The instance's domain. On a tenant's machine it must equal the
        tenant's domain fact; the environment unit refuses to start the
        service otherwise.
      '';
    };
    bucket = lib.mkOption {
      type = lib.types.str;
      example = "${lib.replaceStrings [ "." ] [ "-" ] example}-media";
      description = "The Drover bucket holding the media (`drover deploy --bucket NAME:public`).";
    };
    dataVolumes = lib.mkOption {
      type = lib.types.listOf lib.types.str;
      default = [ ];
      example = [ "/var/lib/postgresql" ];
      description = ''
        Mount points of Drover volumes the service keeps its data on
        (`drover deploy --volume NAME:PATH`). The service starts only once
        they are mounted (RequiresMountsFor, after drover-mount-volumes at
        boot); it never writes into the bare directory underneath.
      '';
    };
  };

  createAdminOption = lib.mkOption {
    type = lib.types.bool;
    default = true;
    description = "Create the tenant's admin account once, from the tenant facts and password.";
  };

  # Names of the facts and secrets `drover deploy --bucket NAME` delivers.
  bucketFact = bucket: "s3_bucket.${bucket}";
  publicUrlFact = bucket: "s3_public_url.${bucket}";
  accessKeySecret = bucket: "s3-${bucket}-access-key-id";
  secretKeySecret = bucket: "s3-${bucket}-secret-access-key";

  # A shell prelude for the units below: `fact KEY` prints a fact (failing
  # with a clear message when it is missing), `secret NAME` a secret.
  # Call them in assignments (`v=$(fact KEY)`), which `set -e` stops at,
  # never inside another command's arguments (`env_line X "$(fact KEY)"`),
  # where a failure would be ignored and an empty value written;
  # agent/tests/nixos_module.rs refuses that form.
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
    # Refuses a machine of another tenant than the one the service is for.
    check_domain() {
      local tenant
      tenant=$(${pkgs.jq}/bin/jq -r '.domain // empty' ${facts})
      if [ -n "$tenant" ] && [ "$tenant" != "$1" ]; then
        echo "this machine belongs to tenant $tenant but $2 is $1; fix the configuration" >&2
        exit 1
      fi
    }
    # One KEY=VALUE line, single-quoted for systemd's EnvironmentFile.
    env_line() {
      case "$2" in *"'"*|*$'\n'*) echo "$1: a value with a quote or newline cannot go into an environment file" >&2; exit 1 ;; esac
      printf "%s='%s'\n" "$1" "$2"
    }
  '';

  # A oneshot unit writing ${envDir}/NAME.env (mode 0440, root:GROUP) with
  # SCRIPT's standard output, before BEFORE. It waits for the facts; a path
  # unit runs it again whenever the agent rewrites them. When the file
  # changed, the oneshots in RERUN run again (a finished oneshot ignores
  # try-restart) and the services in RESTART (default: BEFORE; unit
  # patterns allowed) are restarted if they run.
  envPath = name: {
    wantedBy = [ "multi-user.target" ];
    pathConfig.PathChanged = facts;
    pathConfig.Unit = "drover-${name}-env.service";
  };

  # `volumes`: mount points the service's data lives on. The environment
  # unit requires them, and every unit of the service requires the
  # environment unit: nothing of the service starts before its volumes.
  envUnit = { name, group, before, script, restart ? before, rerun ? [ ], serviceConfig ? { }, volumes ? [ ] }: {
    description = "Environment for ${name} from what Drover delivered";
    wantedBy = [ "multi-user.target" ];
    inherit before;
    requiredBy = before;
    after = lib.optional (volumes != [ ]) "drover-mount-volumes.service";
    unitConfig.ConditionPathExists = facts;
    unitConfig.RequiresMountsFor = volumes;
    serviceConfig = {
      Type = "oneshot";
      UMask = "0077";
    } // serviceConfig;
    # diffutils for cmp: without it the comparison always failed, and every
    # run restarted the services.
    path = [ pkgs.coreutils pkgs.diffutils pkgs.jq ];
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
        for unit in ${lib.escapeShellArgs rerun}; do
          ${config.systemd.package}/bin/systemctl --no-block restart "$unit"
        done
        for unit in ${lib.escapeShellArgs restart}; do
          ${config.systemd.package}/bin/systemctl --no-block try-restart "$unit"
        done
      fi
    '';
  };
}
