# services.drover-peertube: PeerTube fed by Drover.
#
# Enables nixpkgs' services.peertube. Object storage goes to the Drover
# bucket deployed with `drover deploy --bucket BUCKET:public`: the four
# PeerTube buckets are prefixes of it, both upload ACLs are null (Garage has
# no ACLs), and the endpoint, bucket, public URL and admin e-mail reach
# PeerTube as NODE_CONFIG in services.peertube.serviceEnvironmentFile, with
# the keys as AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY: never through the Nix
# store. On a tenant's machine the admin account is PeerTube's `root`, whose
# first password is the tenant's (PT_INITIAL_ROOT_PASSWORD, read by PeerTube
# on its first start only).
{ config, lib, pkgs, ... }:

let
  inherit (lib) mkIf;
  cfg = config.services.drover-peertube;
  peertube = config.services.peertube;
  drover = import ./common.nix { inherit config lib pkgs; };
  envFile = "${drover.envDir}/peertube.env";
  prefixes = {
    streaming_playlists = "streaming-playlists/";
    web_videos = "web-videos/";
    user_exports = "user-exports/";
    original_video_files = "original-video-files/";
  };
  # Buckets served publicly get the bucket's public URL as base_url.
  public = [ "streaming_playlists" "web_videos" ];
in
{
  options.services.drover-peertube = drover.profileOptions { service = "PeerTube"; example = "video.example.org"; };

  config = mkIf cfg.enable {
    services.peertube = {
      enable = true;
      localDomain = cfg.domain;
      serviceEnvironmentFile = envFile;
      settings.object_storage = {
        enabled = true;
        upload_acl = {
          public = null;
          private = null;
        };
      };
    };

    systemd.services.drover-peertube-env = drover.envUnit {
      name = "peertube";
      volumes = cfg.dataVolumes;
      group = peertube.group;
      before = [ "peertube.service" ];
      script = ''
        check_domain ${lib.escapeShellArg cfg.domain} services.drover-peertube.domain
        # Read into variables first: a missing fact or secret then stops
        # the script (inside another command's arguments it would not).
        bucket=$(fact ${lib.escapeShellArg (drover.bucketFact cfg.bucket)})
        base=$(fact ${lib.escapeShellArg (drover.publicUrlFact cfg.bucket)})
        endpoint=$(fact s3_endpoint)
        region=$(fact s3_region)
        access_key=$(secret ${drover.accessKeySecret cfg.bucket})
        secret_key=$(secret ${drover.secretKeySecret cfg.bucket})
        email=$(${pkgs.jq}/bin/jq -r '.admin_email // empty' ${drover.facts})
        node_config=$(${pkgs.jq}/bin/jq -cn \
          --arg endpoint "$endpoint" --arg region "$region" \
          --arg bucket "$bucket" --arg base "''${base%/}" --arg email "$email" \
          --argjson prefixes ${lib.escapeShellArg (builtins.toJSON prefixes)} \
          --argjson public ${lib.escapeShellArg (builtins.toJSON public)} '
            { object_storage: ({ endpoint: $endpoint, region: $region }
                + ($prefixes | with_entries(.value = {
                    bucket_name: $bucket,
                    prefix: .value,
                    base_url: (if (.key | IN($public[])) then $base + "/" + .value else "" end)
                  })))
            } + (if $email == "" then {} else { admin: { email: $email } } end)')
        env_line NODE_CONFIG "$node_config"
        env_line AWS_ACCESS_KEY_ID "$access_key"
        env_line AWS_SECRET_ACCESS_KEY "$secret_key"
        if [ -r ${drover.secrets}/tenant-admin-password ]; then
          root_password=$(secret tenant-admin-password)
          env_line PT_INITIAL_ROOT_PASSWORD "$root_password"
        fi
      '';
    };
    systemd.paths.drover-peertube-env = drover.envPath "peertube";
  };
}
