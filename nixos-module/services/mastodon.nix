# services.drover-mastodon: Mastodon fed by Drover.
#
# Enables nixpkgs' services.mastodon and gives it, through
# services.mastodon.extraEnvFiles (never the Nix store): the S3 endpoint,
# region, bucket, public URL and keys of the bucket deployed with
# `drover deploy --bucket BUCKET:public`, and, on a tenant's machine, creates
# the tenant's admin account once (`tootctl accounts create USER --email E
# --confirmed --role Owner`) with the password the coordinator generated
# (`drover tenants show DOMAIN --show-password`).
{ config, lib, pkgs, ... }:

let
  inherit (lib) mkIf;
  cfg = config.services.drover-mastodon;
  mastodon = config.services.mastodon;
  drover = import ./common.nix { inherit config lib pkgs; };
  webEnv = config.systemd.services.mastodon-web;
  envFile = "${drover.envDir}/mastodon.env";
in
{
  options.services.drover-mastodon = drover.profileOptions { service = "Mastodon"; example = "social.example.org"; } // {
    createAdmin = drover.createAdminOption;
  };

  config = mkIf cfg.enable {
    services.mastodon = {
      enable = true;
      localDomain = cfg.domain;
      extraEnvFiles = [ envFile ];
    };

    systemd.services.drover-mastodon-env = drover.envUnit {
      name = "mastodon";
      volumes = cfg.dataVolumes;
      group = mastodon.group;
      before = [ "mastodon-init-db.service" "mastodon-web.service" "mastodon-streaming.target" "mastodon-sidekiq-all.service" ];
      # The streaming target does not restart its instances: name them.
      restart = [ "mastodon-web.service" "mastodon-streaming-*.service" "mastodon-sidekiq-all.service" ];
      script = ''
        check_domain ${lib.escapeShellArg cfg.domain} services.drover-mastodon.domain
        # Read into variables first: a missing fact or secret then stops
        # the script (inside another command's arguments it would not).
        endpoint=$(fact s3_endpoint)
        region=$(fact s3_region)
        bucket=$(fact ${lib.escapeShellArg (drover.bucketFact cfg.bucket)})
        public_url=$(fact ${lib.escapeShellArg (drover.publicUrlFact cfg.bucket)})
        access_key=$(secret ${drover.accessKeySecret cfg.bucket})
        secret_key=$(secret ${drover.secretKeySecret cfg.bucket})
        env_line S3_ENABLED true
        env_line S3_PROTOCOL "$(printf '%s' "$endpoint" | sed -E 's|^(https?)://.*|\1|')"
        env_line S3_ENDPOINT "$endpoint"
        env_line S3_REGION "$region"
        env_line S3_BUCKET "$bucket"
        env_line S3_ALIAS_HOST "$(printf '%s' "$public_url" | sed -E 's|^https?://||; s|/+$||')"
        env_line S3_FORCE_SINGLE_REQUEST true
        env_line AWS_ACCESS_KEY_ID "$access_key"
        env_line AWS_SECRET_ACCESS_KEY "$secret_key"
      '';
    };
    systemd.paths.drover-mastodon-env = drover.envPath "mastodon";

    # Once per instance: the tenant's admin account, Owner, with the
    # coordinator's password (set through Rails, never on a command line).
    systemd.services.drover-mastodon-admin = mkIf cfg.createAdmin {
      description = "Mastodon admin account from the Drover tenant";
      wantedBy = [ "multi-user.target" ];
      after = [ "mastodon-web.service" "drover-mastodon-env.service" ];
      requires = [ "mastodon-web.service" ];
      unitConfig.ConditionPathExists = [ "${drover.secrets}/tenant-admin-password" "!/var/lib/drover-mastodon/admin-created" ];
      # mastodon-web's environment without its PATH: NixOS derives PATH from
      # a unit's `path`, so copying it would define PATH twice (a conflict
      # that fails evaluation). The same `path` gives the same PATH.
      environment = builtins.removeAttrs webEnv.environment [ "PATH" ];
      path = webEnv.path;
      serviceConfig = {
        Type = "oneshot";
        User = mastodon.user;
        Group = mastodon.group;
        WorkingDirectory = mastodon.package;
        EnvironmentFile = webEnv.serviceConfig.EnvironmentFile;
        LoadCredential = [ "password:${drover.secrets}/tenant-admin-password" "facts:${drover.facts}" ];
        StateDirectory = "drover-mastodon";
        StateDirectoryMode = "0700";
      };
      script = ''
        set -euo pipefail
        facts="$CREDENTIALS_DIRECTORY/facts"
        user=$(${pkgs.jq}/bin/jq -er .admin_user "$facts")
        email=$(${pkgs.jq}/bin/jq -er .admin_email "$facts")
        if ! ${mastodon.package}/bin/tootctl accounts modify "$user" >/dev/null 2>&1; then
          ${mastodon.package}/bin/tootctl accounts create "$user" --email "$email" --confirmed --role Owner > /dev/null
          ${mastodon.package}/bin/tootctl accounts approve "$user"
        fi
        DROVER_ADMIN_USER="$user" DROVER_ADMIN_PASSWORD_FILE="$CREDENTIALS_DIRECTORY/password" \
          ${mastodon.package}/bin/rails runner '
            user = Account.find_local!(ENV.fetch("DROVER_ADMIN_USER")).user
            user.update!(password: File.read(ENV.fetch("DROVER_ADMIN_PASSWORD_FILE")).strip)
          '
        touch /var/lib/drover-mastodon/admin-created
        echo "admin account $user ready"
      '';
    };
  };
}
