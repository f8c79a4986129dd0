# services.drover-garage-node: a Garage node that is a Drover machine.
#
# Built on nixpkgs' services.garage. Its rpc_secret and admin token are
# Drover secrets (delivered by `drover deploy --secret`, written to
# /run/drover/secrets/) and reach Garage as systemd credentials, never
# through the Nix store. The coordinator places the node in the cluster
# (`drover s3 cluster add-node --machine ID`, then `drover s3 cluster apply`) from
# the labels garage.admin, garage.rpc, garage.zone and garage.capacity. The
# coordinator decides a machine's labels from its enrollment token, so give
# the token the labels this module computes in its read-only `tokenLabels`
# option (see docs/nixos.md).
{ config, lib, pkgs, ... }:

let
  inherit (lib) mkEnableOption mkIf mkOption types;
  cfg = config.services.drover-garage-node;
  secrets = config.services.drover-agent.settings.runtime_dir + "/secrets";
  credentials = "/run/credentials/garage.service";
in
{
  options.services.drover-garage-node = {
    tokenLabels = mkOption {
      type = types.attrsOf types.str;
      readOnly = true;
      defaultText = lib.literalExpression ''{ role = "garage"; "garage.admin" = "http://''${address}:3903"; "garage.rpc" = "''${address}:3901"; "garage.zone" = zone; "garage.capacity" = capacity; }'';
      default = {
        role = "garage";
        "garage.admin" = "http://${cfg.address}:3903";
        "garage.rpc" = "${cfg.address}:3901";
        "garage.zone" = cfg.zone;
        "garage.capacity" = cfg.capacity;
      };
      description = ''
        The labels to give this node's enrollment token
        (`drover tokens create --label k=v ...`): the coordinator reads them
        to place the node in the cluster.
      '';
    };

    enable = mkEnableOption "a Garage node formed into a cluster by Drover";

    package = mkOption {
      type = types.package;
      default = pkgs.garage_2;
      defaultText = lib.literalExpression "pkgs.garage_2";
      description = "The Garage package (admin API v2 needs Garage 2.x).";
    };

    address = mkOption {
      type = types.str;
      example = "10.0.0.21";
      description = "The address other nodes and the coordinator reach this node at.";
    };

    zone = mkOption {
      type = types.str;
      example = "rack-a";
      description = "The zone of this node; replication factor 3 places copies in three zones.";
    };

    capacity = mkOption {
      type = types.str;
      example = "500G";
      description = "The storage this node offers to the layout (bytes, or with a unit).";
    };

    rpcSecretName = mkOption {
      type = types.str;
      default = "garage-rpc-secret";
      description = "The Drover secret holding the cluster's RPC secret (64 hex digits).";
    };

    adminTokenName = mkOption {
      type = types.str;
      default = "garage-admin-token";
      description = "The Drover secret holding the admin API token.";
    };

    rootDomain = mkOption {
      type = types.str;
      default = ".web.garage.localhost";
      description = "Garage's s3_web root_domain: buckets with website access are served as BUCKET<rootDomain>.";
    };

    openFirewall = mkOption {
      type = types.bool;
      default = true;
      description = "Open Garage's S3 (3900), RPC (3901), web (3902) and admin (3903) ports.";
    };
  };

  config = mkIf cfg.enable {
    services.garage = {
      enable = true;
      inherit (cfg) package;
      settings = {
        replication_factor = 3;
        db_engine = "lmdb";
        rpc_bind_addr = "[::]:3901";
        rpc_public_addr = "${cfg.address}:3901";
        rpc_secret_file = "${credentials}/rpc_secret";
        s3_api = {
          s3_region = "garage";
          api_bind_addr = "[::]:3900";
        };
        s3_web = {
          bind_addr = "[::]:3902";
          root_domain = cfg.rootDomain;
        };
        admin = {
          api_bind_addr = "[::]:3903";
          admin_token_file = "${credentials}/admin_token";
        };
      };
    };

    # The secrets arrive with the machine's first generation: Garage starts
    # when they are there, and restarts with them.
    systemd.services.garage = {
      unitConfig.ConditionPathExists = [ "${secrets}/${cfg.rpcSecretName}" "${secrets}/${cfg.adminTokenName}" ];
      serviceConfig.LoadCredential = [
        "rpc_secret:${secrets}/${cfg.rpcSecretName}"
        "admin_token:${secrets}/${cfg.adminTokenName}"
      ];
    };

    # Started as soon as the agent has written both secrets (the first
    # generation that carries them), not only at the next boot: each write
    # of either one tries again, and Garage's condition waits for both. (A
    # PathExists on one of them would trigger over and over while the other
    # is missing, until systemd's trigger limit stopped the path unit.)
    systemd.paths.garage-secrets = {
      wantedBy = [ "multi-user.target" ];
      pathConfig = {
        PathChanged = [ "${secrets}/${cfg.rpcSecretName}" "${secrets}/${cfg.adminTokenName}" ];
        Unit = "garage.service";
      };
    };

    networking.firewall.allowedTCPPorts = lib.optionals cfg.openFirewall [ 3900 3901 3902 3903 ];
  };
}
