# services.drover: the Drover coordinator, one NixOS option away.
#
# At first start the service runs `drover init` on its state directory
# (fleet CA, server certificate, first admin bundle at STATE_DIR/admin.bundle,
# readable by root only). The configuration it then serves with is generated
# from `settings` and checked at build time by `drover check-config
# --without-files`: a typo fails `nixos-rebuild`, not the running service.
# Secrets are given only as files outside the Nix store (`*File` options) and
# reach the service as systemd credentials.
{ config, lib, pkgs, ... }:

let
  inherit (lib) mkEnableOption mkIf mkOption types;
  cfg = config.services.drover;
  toml = pkgs.formats.toml { };

  port = lib.toInt (lib.last (lib.splitString ":" cfg.settings.listen));

  # Local VMs (`[[providers]]` of kind qemu): QEMU runs as the
  # coordinator's child, each VM in a network namespace of its own.
  qemuProviders = lib.filter (p: (p.kind or null) == "qemu") (cfg.settings.providers or [ ]);
  runsQemu = qemuProviders != [ ];

  s3Settings = lib.optionalAttrs (cfg.s3 != null) {
    s3 = {
      inherit (cfg.s3) admin_endpoint s3_endpoint region;
      admin_token_file = "/run/credentials/drover.service/s3-admin-token";
    } // lib.optionalAttrs (cfg.s3.public_url != null) { inherit (cfg.s3) public_url; };
  };

  # The fleet's records in etcd: the client certificates reach the
  # service as credentials, like the S3 token.
  etcdTls = cfg.store != null && cfg.store.caFile != null;
  credential = name: "/run/credentials/drover.service/${name}";
  storeSettings = lib.optionalAttrs (cfg.store != null) {
    store = {
      etcd_endpoints = cfg.store.etcdEndpoints;
      inherit (cfg.store) prefix timeout;
      max_txn_ops = cfg.store.maxTxnOps;
      max_request_bytes = cfg.store.maxRequestBytes;
    } // lib.optionalAttrs etcdTls {
      ca_file = credential "etcd-ca";
      cert_file = credential "etcd-cert";
      key_file = credential "etcd-key";
    };
  };
  # `drover init --store` for the fleet's first coordinator.
  storeUrl = "etcd://${lib.concatMapStringsSep "," (e: lib.last (lib.splitString "://" e)) cfg.store.etcdEndpoints}/${lib.removeSuffix "/" cfg.store.prefix}";
  initStoreArgs = lib.optionalString (cfg.store != null) (
    "--store ${lib.escapeShellArg storeUrl}"
    + lib.optionalString etcdTls " --etcd-ca ${credential "etcd-ca"} --etcd-cert ${credential "etcd-cert"} --etcd-key ${credential "etcd-key"}"
  );

  rawConfig = toml.generate "drover-unchecked.toml" (
    (lib.filterAttrs (_: v: v != null) cfg.settings) // { state_dir = cfg.stateDir; } // s3Settings // storeSettings
  );

  # The generated configuration, refused at build time when it is invalid.
  configFile = pkgs.runCommand "drover.toml" { nativeBuildInputs = [ cfg.package ]; } ''
    cp ${rawConfig} $out
    drover check-config --config $out --without-files
  '';
in
{
  options.services.drover = {
    enable = mkEnableOption "the Drover coordinator";

    package = mkOption {
      type = types.package;
      description = "The package providing bin/drover.";
    };

    stateDir = mkOption {
      type = types.str;
      default = "/var/lib/drover";
      description = "The coordinator's state: store, fleet CA and keys, first admin bundle.";
    };

    openFirewall = mkOption {
      type = types.bool;
      default = false;
      description = "Open the UDP port of `settings.listen` (QUIC) in the firewall.";
    };

    adminName = mkOption {
      type = types.str;
      default = "root";
      description = "The first admin, whose bundle `drover init` writes to STATE_DIR/admin.bundle.";
    };

    settings = mkOption {
      description = "The coordinator's configuration (drover.toml), rendered to TOML.";
      default = { };
      type = types.submodule {
        freeformType = toml.type;
        options = {
          listen = mkOption {
            type = types.str;
            default = "0.0.0.0:7443";
            description = "UDP address the QUIC endpoint listens on.";
          };
          advertise = mkOption {
            type = types.str;
            example = "203.0.113.5:7443";
            description = "The address agents and admins dial.";
          };
          server_names = mkOption {
            type = types.listOf types.str;
            example = [ "coordinator.example.net" "203.0.113.5" ];
            description = "Names and addresses in the server certificate; the first is the one clients verify.";
          };
          machine_cert_lifetime = mkOption {
            type = types.nullOr types.str;
            default = null;
            example = "7d";
            description = "Lifetime of machine certificates (default 7d); agents renew at two thirds.";
          };
          health_interval = mkOption {
            type = types.nullOr types.str;
            default = null;
            example = "10s";
            description = "How often agents report health (default 10s).";
          };
          idle_timeout = mkOption {
            type = types.nullOr types.str;
            default = null;
            description = "A QUIC connection with no traffic for this long is closed (default 30s).";
          };
          metrics_listen = mkOption {
            type = types.nullOr types.str;
            default = null;
            example = "127.0.0.1:9465";
            description = "TCP address serving Prometheus metrics at /metrics (plain HTTP); null: no metrics. No port is opened in the firewall for it unless `openMetricsFirewall` is set.";
          };
          web_listen = mkOption {
            type = types.nullOr types.str;
            default = null;
            example = "127.0.0.1:9480";
            description = "TCP address serving the read-only fleet page (log in with `drover web login`); plain HTTP on a loopback address, HTTPS with the coordinator's certificate from the fleet CA elsewhere; null: no page. No port is opened in the firewall for it unless `openWebFirewall` is set.";
          };
          web_url = mkOption {
            type = types.nullOr types.str;
            default = null;
            example = "https://fleet.example.net:9480";
            description = "The fleet page's address as browsers reach it, used in login links (default: made from web_listen).";
          };
        };
      };
    };
    qemuPackage = mkOption {
      type = types.package;
      default = pkgs.qemu_kvm;
      defaultText = lib.literalExpression "pkgs.qemu_kvm";
      description = "QEMU for `[[providers]]` of kind qemu (on the unit's PATH only when one is configured); its qemu-system-x86_64 runs the VMs.";
    };

    openMetricsFirewall = mkOption {
      type = types.bool;
      default = false;
      description = "Open the TCP port of `settings.metrics_listen` in the firewall (off: scrape it from the machine or over a tunnel).";
    };

    openWebFirewall = mkOption {
      type = types.bool;
      default = false;
      description = "Open the TCP port of `settings.web_listen` in the firewall (off: reach the fleet page from the machine or over a tunnel).";
    };

    store = mkOption {
      default = null;
      description = "Keep the fleet's records in an etcd cluster, so that several coordinators serve one fleet; null: in the state directory (sled). The first coordinator's `drover init` creates the fleet under `prefix`.";
      type = types.nullOr (types.submodule {
        options = {
          etcdEndpoints = mkOption {
            type = types.nonEmptyListOf types.str;
            example = [ "https://10.0.0.1:2379" "https://10.0.0.2:2379" "https://10.0.0.3:2379" ];
            description = "The etcd members' client URLs (three members survive the loss of one).";
          };
          prefix = mkOption {
            type = types.strMatching "[^[:space:]]+/";
            example = "drover/fleet-a/";
            description = "Every key of this fleet starts with it; it ends with /.";
          };
          caFile = mkOption {
            type = types.nullOr types.str;
            default = null;
            example = "/run/keys/etcd-ca.pem";
            description = "The CA of the members' certificates; with certFile and keyFile, mutual TLS (https endpoints).";
          };
          certFile = mkOption {
            type = types.nullOr types.str;
            default = null;
            example = "/run/keys/etcd-client.pem";
            description = "This coordinator's client certificate for etcd.";
          };
          keyFile = mkOption {
            type = types.nullOr types.str;
            default = null;
            example = "/run/keys/etcd-client.key";
            description = "Its key: a file outside the Nix store.";
          };
          timeout = mkOption {
            type = types.str;
            default = "5s";
            description = "How long one store call may take before the store counts as unavailable.";
          };
          maxTxnOps = mkOption {
            type = types.ints.between 16 1000000;
            default = 128;
            description = "The cluster's --max-txn-ops: the most keys one change reads or writes.";
          };
          maxRequestBytes = mkOption {
            type = types.ints.between 262144 2147483647;
            default = 1572864;
            description = "The cluster's --max-request-bytes: the largest change; it bounds how many machines one rollout takes (about 150 bytes each).";
          };
        };
      });
    };

    s3 = mkOption {
      default = null;
      description = "The Garage cluster the coordinator makes buckets and keys on; null: no S3.";
      type = types.nullOr (types.submodule {
        options = {
          admin_endpoint = mkOption {
            type = types.str;
            example = "http://10.0.0.10:3903";
            description = "Garage's admin API.";
          };
          adminTokenFile = mkOption {
            type = types.str;
            example = "/run/keys/garage-admin-token";
            description = "A file (outside the Nix store) holding Garage's admin token.";
          };
          s3_endpoint = mkOption {
            type = types.str;
            example = "http://s3.internal:3900";
            description = "The S3 endpoint services use.";
          };
          region = mkOption {
            type = types.str;
            default = "garage";
            description = "Garage's s3_region.";
          };
          public_url = mkOption {
            type = types.nullOr types.str;
            default = null;
            example = "https://{bucket}.web.example.net";
            description = "Public URL of a bucket with website access; {bucket} is replaced.";
          };
        };
      });
    };
  };

  config = mkIf cfg.enable {
    assertions = [
      {
        assertion = cfg.s3 == null || !(lib.hasPrefix builtins.storeDir cfg.s3.adminTokenFile);
        message = "services.drover.s3.adminTokenFile must not be in the Nix store, which everyone can read.";
      }
      {
        assertion = cfg.store == null || (let files = [ cfg.store.caFile cfg.store.certFile cfg.store.keyFile ]; in lib.all (f: f == null) files || lib.all (f: f != null) files);
        message = "services.drover.store: give caFile, certFile and keyFile together (mutual TLS with etcd), or none of them.";
      }
      {
        assertion = cfg.store == null || cfg.store.keyFile == null || !(lib.hasPrefix builtins.storeDir cfg.store.keyFile);
        message = "services.drover.store.keyFile must not be in the Nix store, which everyone can read.";
      }
      {
        assertion = !etcdTls || lib.all (lib.hasPrefix "https://") cfg.store.etcdEndpoints;
        message = "services.drover.store: with client certificates the etcdEndpoints must be https:// URLs.";
      }
      {
        assertion = lib.hasPrefix "/var/lib/" cfg.stateDir;
        message = "services.drover.stateDir must be under /var/lib/ (systemd's StateDirectory makes it, mode 0700).";
      }
    ];

    environment.systemPackages = [ cfg.package ];
    networking.firewall.allowedUDPPorts = lib.optional cfg.openFirewall port;
    networking.firewall.allowedTCPPorts =
      lib.optional (cfg.openMetricsFirewall && cfg.settings.metrics_listen != null)
        (lib.toInt (lib.last (lib.splitString ":" cfg.settings.metrics_listen)))
      ++ lib.optional (cfg.openWebFirewall && cfg.settings.web_listen != null)
        (lib.toInt (lib.last (lib.splitString ":" cfg.settings.web_listen)));

    systemd.services.drover = {
      description = "Drover coordinator";
      wantedBy = [ "multi-user.target" ];
      wants = [ "network-online.target" ];
      after = [ "network-online.target" ];
      restartTriggers = [ configFile ];
      # nix for `drover deploy --dry-run`'s closure diffs; with local VMs,
      # QEMU and ip (a VM's network namespace is brought up over netlink).
      path = [ config.nix.package ] ++ lib.optionals runsQemu [ cfg.qemuPackage pkgs.iproute2 ];
      preStart = ''
        if [ ! -e ${cfg.stateDir}/drover.toml ]; then
          ${cfg.package}/bin/drover init --state-dir ${cfg.stateDir} \
            --listen ${cfg.settings.listen} --advertise ${cfg.settings.advertise} \
            --admin-name ${lib.escapeShellArg cfg.adminName} ${initStoreArgs} \
            ${lib.concatMapStringsSep " " (n: "--server-name ${lib.escapeShellArg n}") cfg.settings.server_names}
        fi
      '';
      serviceConfig = {
        ExecStart = "${cfg.package}/bin/drover serve --config ${configFile}";
        Restart = "on-failure";
        RestartSec = 5;
        # QUIC connections share the endpoint's UDP sockets; descriptors go
        # to the store's files, metrics connections (at most
        # limits.metrics_connections) and calls to Garage, LINSTOR and
        # Proxmox. The default 1,024 leaves too little room for bursts of
        # those; this leaves plenty for any max_connections.
        LimitNOFILE = lib.mkDefault 65536;
        StateDirectory = lib.removePrefix "/var/lib/" cfg.stateDir;
        StateDirectoryMode = "0700";
        LoadCredential = lib.optional (cfg.s3 != null) "s3-admin-token:${cfg.s3.adminTokenFile}"
          ++ lib.optionals etcdTls [ "etcd-ca:${cfg.store.caFile}" "etcd-cert:${cfg.store.certFile}" "etcd-key:${cfg.store.keyFile}" ];
        NoNewPrivileges = true;
        PrivateTmp = true;
        ProtectSystem = "strict";
        ProtectHome = true;
        ProtectKernelTunables = true;
        ProtectKernelModules = true;
        ProtectControlGroups = true;
        LockPersonality = true;
        SystemCallArchitectures = "native";
      } // (if runsQemu then {
        # QEMU is the coordinator's child and inherits its sandbox: each VM
        # gets a network namespace (unshare, netlink to bring lo up), /dev/kvm
        # where the host has it (accel = "kvm"), and TCG needs writable and
        # executable memory.
        PrivateDevices = false;
        DeviceAllow = [ "/dev/kvm rw" "/dev/net/tun rw" ];
        RestrictAddressFamilies = [ "AF_INET" "AF_INET6" "AF_UNIX" "AF_NETLINK" ];
        RestrictNamespaces = false;
        MemoryDenyWriteExecute = false;
      } else {
        PrivateDevices = true;
        RestrictAddressFamilies = [ "AF_INET" "AF_INET6" "AF_UNIX" ];
        RestrictNamespaces = true;
        MemoryDenyWriteExecute = true;
      });
    };
  };
}
