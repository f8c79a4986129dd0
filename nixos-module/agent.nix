# services.drover-agent: the Drover agent, baked into every VM so that it
# enrolls itself at first boot and then keeps in touch with its coordinator.
#
# The options mirror the agent's own configuration keys (agent/src/config.rs);
# a test in the Rust workspace (agent/tests/nixos_module.rs) fails when one
# side has a key the other lacks. Top-level options are the keys every VM
# sets; the rest are declared under `settings` (freeform, rendered to TOML).
{ config, lib, pkgs, ... }:

let
  inherit (lib) mkEnableOption mkIf mkOption types;
  cfg = config.services.drover-agent;
  toml = pkgs.formats.toml { };

  # Keys of the agent's configuration file besides the top-level ones.
  settingsOptions = {
    server_name = mkOption {
      type = types.nullOr types.str;
      default = null;
      description = "Name verified in the coordinator's certificate (default: the coordinator's IP address).";
    };
    hostname = mkOption {
      type = types.nullOr types.str;
      default = null;
      description = "Hostname to report (default: the system's).";
    };
    backoff_initial = mkOption {
      type = types.str;
      default = "500ms";
      description = "First pause before reconnecting.";
    };
    backoff_max = mkOption {
      type = types.str;
      default = "60s";
      description = "Longest pause between reconnects.";
    };
    connect_timeout = mkOption {
      type = types.str;
      default = "10s";
      description = "How long to wait for the coordinator to answer.";
    };
    current_system = mkOption {
      type = types.str;
      default = "/run/current-system";
      description = "The link to the running system, reported with health.";
    };
    runtime_dir = mkOption {
      type = types.str;
      default = "/run/drover";
      description = "Where secrets (secrets/NAME) and facts.json are written (a tmpfs).";
    };
    switch_timeout = mkOption {
      type = types.str;
      default = "30m";
      description = "The longest a system switch may take.";
    };
    nixos_rebuild = mkOption {
      type = types.str;
      default = "${config.system.build.nixos-rebuild}/bin/nixos-rebuild";
      defaultText = lib.literalExpression ''"''${config.system.build.nixos-rebuild}/bin/nixos-rebuild"'';
      description = "The command run for flake deployments.";
    };
    nix_bin_dir = mkOption {
      type = types.nullOr types.str;
      default = "${config.nix.package}/bin";
      defaultText = lib.literalExpression ''"''${config.nix.package}/bin"'';
      description = "Directory holding nix-store and nix-env.";
    };
    nix_store = mkOption {
      type = types.nullOr types.str;
      default = null;
      description = "A Nix store to use instead of the system's (for testing).";
    };
    system_profile = mkOption {
      type = types.str;
      default = "/nix/var/nix/profiles/system";
      description = "The system profile closures are installed into.";
    };
    systemctl = mkOption {
      type = types.str;
      default = "${config.systemd.package}/bin/systemctl";
      defaultText = lib.literalExpression ''"''${config.systemd.package}/bin/systemctl"'';
      description = "The command asked whether a unit is active (unit: checks).";
    };
    confirm_deadline = mkOption {
      type = types.str;
      default = "2m";
      description = "After a switch the agent must reach the coordinator within this long, or it rolls back by itself.";
    };
    volume_root = mkOption {
      type = types.str;
      default = "/";
      description = "Prefix of volume device paths and mount points (/ on a machine).";
    };
    device_wait = mkOption {
      type = types.str;
      default = "60s";
      description = "How long a volume's device may take to appear.";
    };
    keep_generations = mkOption {
      type = types.ints.positive;
      default = 5;
      description = "System profile generations kept after a successful closure deployment; older ones are deleted and the Nix garbage collector reclaims them. The running, booted and pending systems and the rollback target are always kept.";
    };
    reboot_command = mkOption {
      type = types.listOf types.str;
      default = [ "${config.systemd.package}/bin/systemctl" "reboot" ];
      defaultText = lib.literalExpression ''[ "''${config.systemd.package}/bin/systemctl" "reboot" ]'';
      description = "The command that reboots the machine (deployments with --reboot, drover machines reboot).";
    };
    reboot_deadline = mkOption {
      type = types.str;
      default = "10m";
      description = "How long a reboot may take before it counts as failed.";
    };
    boot_id_file = mkOption {
      type = types.str;
      default = "/proc/sys/kernel/random/boot_id";
      description = "Where the kernel gives the current boot's id (reported with health, to verify reboots).";
    };
  };

  # null means "not set": left out of the TOML file. The CA file is
  # interpolated, not `toString`-ed: a path literal (./ca.pem) is then copied
  # into the store, instead of naming a file on the machine that evaluated
  # the configuration.
  rawSettings = toml.generate "drover-agent-unchecked.toml" (lib.filterAttrs (_: v: v != null) ({
    coordinator = cfg.coordinator;
    ca_file = if cfg.caFile == null then null else "${cfg.caFile}";
    enrollment_token_file = cfg.enrollmentTokenFile;
    state_dir = cfg.stateDir;
  } // cfg.settings));

  # Checked at build time, like the coordinator's: an unknown or malformed
  # key fails `nixos-rebuild`, not the agent at boot. A seeded machine's
  # file is checked with a placeholder coordinator and CA, which its seed
  # replaces at first boot.
  settingsFile = pkgs.runCommand "drover-agent.toml" { nativeBuildInputs = [ cfg.package ]; } (if cfg.fromSeed then ''
    cp ${rawSettings} $out
    { echo 'coordinator = "seed.invalid:1"'; echo 'ca_file = "/seed"'; cat $out; } > check.toml
    drover-agent check-config --config check.toml
  '' else ''
    cp ${rawSettings} $out
    drover-agent check-config --config $out
  '');

  # With fromSeed the agent writes its configuration here at first boot,
  # from the seed over settingsFile.
  configFile = if cfg.fromSeed then "${cfg.stateDir}/agent.toml" else "${settingsFile}";
  runArgs = if cfg.fromSeed then "--config ${configFile} --seed-defaults ${settingsFile}" else "--config ${configFile}";

  runtimeDir = cfg.settings.runtime_dir;
in
{
  options.services.drover-agent = {
    enable = mkEnableOption "the Drover agent";

    package = mkOption {
      type = types.package;
      description = "The package providing bin/drover-agent.";
    };

    fromSeed = mkOption {
      type = types.bool;
      default = false;
      description = ''
        Take the coordinator, its certificate name, the fleet CA and a
        one-time enrollment token from the VM's seed at first boot (what
        `drover machines provision` gives a VM: the QEMU fw_cfg file
        opt/io.drover/seed, a cloud-init NoCloud file, or the SMBIOS serial
        Proxmox sets) instead of `coordinator`, `caFile` and
        `enrollmentTokenFile`. One image then serves every VM.
      '';
    };

    coordinator = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "drover.example.net:7443";
      description = "The coordinator's QUIC address, host:port: a DNS name (resolved at every connection attempt) or an IP address ([2001:db8::1]:7443 for IPv6).";
    };

    caFile = mkOption {
      type = types.nullOr types.path;
      default = null;
      description = "The fleet CA certificate (PEM); the only root the agent trusts.";
    };

    enrollmentTokenFile = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "/run/drover-token";
      description = ''
        A file holding the enrollment token, read at first boot only. Give a
        path outside the Nix store (e.g. written by cloud-init or read from a
        config drive); the store is world-readable.
      '';
    };

    stateDir = mkOption {
      type = types.str;
      default = "/var/lib/drover-agent";
      description = "Where the agent keeps its key, certificate and apply records: a directory under /var/lib/, which systemd makes (StateDirectory) with mode 0700.";
    };

    sshAccess = mkOption {
      type = types.bool;
      default = true;
      description = ''
        Let the SSH keys the coordinator delivers log in: sshd also reads
        RUNTIME_DIR/ssh/%u, which the agent writes with every generation
        (`drover admins add-key`); a key removed there leaves with the next
        generation. The login must exist on the machine (root does).
      '';
    };

    settings = mkOption {
      type = types.submodule {
        freeformType = toml.type;
        options = settingsOptions;
      };
      default = { };
      description = "Further keys of the agent's configuration file.";
    };
  };

  config = mkIf cfg.enable {
    # The fw_cfg seed appears under /sys/firmware/qemu_fw_cfg.
    boot.kernelModules = lib.mkIf cfg.fromSeed [ "qemu_fw_cfg" ];
    services.openssh.authorizedKeysFiles = lib.mkIf cfg.sshAccess [ "${cfg.settings.runtime_dir}/ssh/%u" ];

    assertions = [
      {
        assertion = cfg.fromSeed || (cfg.coordinator != null && cfg.caFile != null);
        message = "services.drover-agent needs coordinator and caFile, or fromSeed = true to take them from the VM's seed.";
      }
      {
        assertion = !cfg.fromSeed || (cfg.coordinator == null && cfg.caFile == null);
        message = "services.drover-agent: with fromSeed = true the coordinator and the CA come from the VM's seed; remove coordinator and caFile (or set fromSeed = false).";
      }
      {
        assertion = lib.hasPrefix "/var/lib/" cfg.stateDir && cfg.stateDir != "/var/lib/";
        message = "services.drover-agent.stateDir must be a directory under /var/lib/ (systemd's StateDirectory makes it, mode 0700), not ${cfg.stateDir}.";
      }
      {
        assertion = cfg.enrollmentTokenFile == null || !(lib.hasPrefix builtins.storeDir cfg.enrollmentTokenFile);
        message = "services.drover-agent.enrollmentTokenFile must not be in the Nix store, which everyone can read.";
      }
      {
        assertion = lib.hasPrefix "/run/" runtimeDir && runtimeDir != "/run/";
        message = "services.drover-agent.settings.runtime_dir must be a directory under /run (a tmpfs: secrets live there), not ${runtimeDir}.";
      }
    ];

    systemd.services.drover-agent = {
      description = "Drover agent";
      wantedBy = [ "multi-user.target" ];
      wants = [ "network-online.target" ];
      after = [ "network-online.target" ];
      # The switch restarts services; the agent must not stop itself midway.
      restartIfChanged = false;
      # blkid, mkfs, resize2fs, xfs_growfs for volumes.
      path = [ pkgs.util-linux pkgs.e2fsprogs pkgs.xfsprogs ];
      serviceConfig = {
        ExecStart = "${cfg.package}/bin/drover-agent run ${runArgs}";
        Restart = "always";
        RestartSec = 5;
        # Exit code 3: this machine was revoked; restarting cannot help.
        RestartPreventExitStatus = 3;
        # Made by systemd from stateDir (under /var/lib/, an assertion says).
        StateDirectory = lib.removePrefix "/var/lib/" cfg.stateDir;
        StateDirectoryMode = "0700";
        # The directory the agent writes secrets to, made by systemd from
        # settings.runtime_dir (not a fixed name).
        RuntimeDirectory = lib.removePrefix "/run/" runtimeDir;
        RuntimeDirectoryPreserve = "yes";
        # It switches the system as root and mounts volumes for the whole
        # machine: no options that give it a mount namespace of its own
        # (PrivateTmp, ProtectHome: its mounts would not reach the other
        # services) or a device policy (ProtectClock's DeviceAllow: blkid
        # and mkfs need the volumes' block devices). What stays:
        ProtectHostname = false;
        RestrictRealtime = true;
        LockPersonality = true;
      };
    };

    # At boot, the volumes of the last applied assignment are mounted again
    # before the services that use them start (they order themselves after
    # their mount points with RequiresMountsFor). It never formats a device
    # that holds data.
    systemd.services.drover-mount-volumes = {
      description = "Mount the volumes Drover gave this machine";
      wantedBy = [ "multi-user.target" ];
      before = [ "multi-user.target" "drover-agent.service" ];
      after = [ "local-fs.target" ];
      unitConfig.ConditionPathExists = "${cfg.stateDir}/volumes.json";
      restartIfChanged = false;
      serviceConfig = {
        Type = "oneshot";
        RemainAfterExit = true;
        ExecStart = "${cfg.package}/bin/drover-agent mount-volumes --config ${configFile}";
      };
      path = [ pkgs.util-linux pkgs.e2fsprogs pkgs.xfsprogs ];
    };
  };
}
