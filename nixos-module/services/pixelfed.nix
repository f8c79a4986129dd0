# services.drover-pixelfed: Pixelfed fed by Drover.
#
# Enables nixpkgs' services.pixelfed. Its services.pixelfed.secretFile is
# written at every start from what Drover delivered (never the Nix store):
# the S3 settings of the bucket deployed with `drover deploy --bucket
# BUCKET:public` (path-style, region from the facts) and the APP_KEY, made
# once on the machine. On a tenant's machine the tenant's admin account is
# created once (`artisan user:create ... --is_admin=1`), then given the
# coordinator's password through the environment, never a command line.
{ config, lib, pkgs, ... }:

let
  inherit (lib) mkIf;
  cfg = config.services.drover-pixelfed;
  pixelfed = config.services.pixelfed;
  drover = import ./common.nix { inherit config lib pkgs; };
  envFile = "${drover.envDir}/pixelfed.env";
  appKey = "/var/lib/drover-pixelfed/app-key";
in
{
  options.services.drover-pixelfed = drover.profileOptions { service = "Pixelfed"; example = "pics.example.org"; } // {
    createAdmin = drover.createAdminOption;
  };

  config = mkIf cfg.enable {
    services.pixelfed = {
      enable = true;
      inherit (cfg) domain;
      secretFile = envFile;
    };

    systemd.services.drover-pixelfed-env = drover.envUnit {
      name = "pixelfed";
      volumes = cfg.dataVolumes;
      group = pixelfed.group;
      before = [ "pixelfed-data-setup.service" "phpfpm-pixelfed.service" "pixelfed-horizon.service" ];
      # The data setup is a oneshot that has finished: try-restart would do
      # nothing, so it runs again (new keys reach Pixelfed's config cache),
      # then the services restart.
      rerun = [ "pixelfed-data-setup.service" ];
      restart = [ "phpfpm-pixelfed.service" "pixelfed-horizon.service" ];
      script = ''
        check_domain ${lib.escapeShellArg cfg.domain} services.drover-pixelfed.domain
        if [ ! -s ${appKey} ]; then
          mkdir -p "$(dirname ${appKey})"
          printf 'base64:%s' "$(head -c 32 /dev/urandom | base64)" > ${appKey}
        fi
        # Read into variables first: a missing fact or secret then stops
        # the script (inside another command's arguments it would not).
        region=$(fact s3_region)
        bucket=$(fact ${lib.escapeShellArg (drover.bucketFact cfg.bucket)})
        public_url=$(fact ${lib.escapeShellArg (drover.publicUrlFact cfg.bucket)})
        endpoint=$(fact s3_endpoint)
        access_key=$(secret ${drover.accessKeySecret cfg.bucket})
        secret_key=$(secret ${drover.secretKeySecret cfg.bucket})
        app_key=$(cat ${appKey})
        env_line APP_KEY "$app_key"
        env_line PF_ENABLE_CLOUD true
        env_line FILESYSTEM_CLOUD s3
        env_line AWS_ACCESS_KEY_ID "$access_key"
        env_line AWS_SECRET_ACCESS_KEY "$secret_key"
        env_line AWS_DEFAULT_REGION "$region"
        env_line AWS_BUCKET "$bucket"
        env_line AWS_URL "$public_url"
        env_line AWS_ENDPOINT "$endpoint"
        env_line AWS_USE_PATH_STYLE_ENDPOINT true
      '';
      serviceConfig.StateDirectory = "drover-pixelfed";
    };
    systemd.paths.drover-pixelfed-env = drover.envPath "pixelfed";

    systemd.services.drover-pixelfed-admin = mkIf cfg.createAdmin {
      description = "Pixelfed admin account from the Drover tenant";
      wantedBy = [ "multi-user.target" ];
      after = [ "pixelfed-data-setup.service" "phpfpm-pixelfed.service" ];
      requires = [ "pixelfed-data-setup.service" ];
      unitConfig.ConditionPathExists = [ "${drover.secrets}/tenant-admin-password" "!/var/lib/drover-pixelfed/admin-created" ];
      serviceConfig = {
        Type = "oneshot";
        LoadCredential = [ "password:${drover.secrets}/tenant-admin-password" "facts:${drover.facts}" ];
      };
      # `path` appends /bin to each entry, so the wrapper directory cannot go
      # there (it would become WRAPPERDIR/bin and sudo the non-setuid copy):
      # the setuid sudo is called by its full path.
      path = [ "/run/current-system/sw" ];
      script = ''
        set -euo pipefail
        facts="$CREDENTIALS_DIRECTORY/facts"
        user=$(${pkgs.jq}/bin/jq -er .admin_user "$facts")
        email=$(${pkgs.jq}/bin/jq -er .admin_email "$facts")
        export DROVER_ADMIN_USER="$user"
        DROVER_ADMIN_PASSWORD=$(cat "$CREDENTIALS_DIRECTORY/password")
        export DROVER_ADMIN_PASSWORD
        # A throwaway password first; the real one goes through the environment.
        pixelfed-manage user:create --name="$user" --username="$user" --email="$email" \
          --password="$(head -c 24 /dev/urandom | base64)" --is_admin=1 --confirm_email=1 || true
        ${config.security.wrapperDir}/sudo --preserve-env=DROVER_ADMIN_USER,DROVER_ADMIN_PASSWORD -u ${pixelfed.user} \
          pixelfed-manage tinker --execute='
            $u = App\User::where("username", getenv("DROVER_ADMIN_USER"))->firstOrFail();
            $u->password = Hash::make(getenv("DROVER_ADMIN_PASSWORD"));
            $u->is_admin = true;
            $u->save();'
        touch /var/lib/drover-pixelfed/admin-created
        echo "admin account $user ready"
      '';
    };
  };
}
