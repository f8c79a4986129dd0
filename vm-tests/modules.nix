# checks.<system>.modules: every module evaluated in a minimal NixOS
# configuration to its system.build.toplevel.drvPath — no VM, nothing built,
# seconds on a machine with nixpkgs:
#
#   nix build .#checks.x86_64-linux.modules
#
# An evaluation error (a conflicting definition, a missing option, a type
# error) fails the check. Negative cases check that the modules' own
# assertions fire: they evaluate `config.assertions`, not the system (which
# would stop at the first failed assertion).
{ pkgs, self, nixpkgs }:

let
  inherit (pkgs) lib;

  ca = pkgs.writeText "ca.pem" "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n";

  base = {
    boot.loader.grub.enable = false;
    fileSystems."/" = { device = "none"; fsType = "tmpfs"; };
    system.stateVersion = "26.11";
    nixpkgs.hostPlatform = pkgs.stdenv.hostPlatform.system;
  };

  agent = {
    services.drover-agent = {
      enable = true;
      coordinator = "192.0.2.1:7443";
      caFile = ca;
      enrollmentTokenFile = "/run/drover-seed/token";
    };
  };

  coordinator = {
    services.drover = {
      enable = true;
      settings = {
        listen = "0.0.0.0:7443";
        advertise = "192.0.2.1:7443";
        server_names = [ "coordinator.example.org" "192.0.2.1" ];
      };
    };
  };

  # Local VMs through QEMU: the unit's sandbox lets QEMU run.
  qemuProvider = {
    services.drover.settings.providers = [{ kind = "qemu"; name = "local"; image = "/var/lib/drover/guest-image"; }];
  };

  s3 = {
    services.drover.s3 = {
      admin_endpoint = "http://192.0.2.20:3903";
      adminTokenFile = "/run/keys/garage-admin-token";
      s3_endpoint = "http://192.0.2.20:3900";
    };
  };

  garageNode = {
    services.drover-garage-node = {
      enable = true;
      address = "192.0.2.20";
      zone = "dc1";
      capacity = "10G";
    };
  };

  # Each profile on a tenant's machine, with its bucket; the nixpkgs options
  # a real deployment must set anyway are set here too.
  mastodon = {
    services.drover-mastodon = { enable = true; domain = "social.example.org"; bucket = "social-example-org-media"; };
    services.mastodon = { smtp.fromAddress = "noreply@social.example.org"; streamingProcesses = 1; };
  };
  peertube = {
    services.drover-peertube = { enable = true; domain = "video.example.org"; bucket = "video-example-org-media"; };
    services.peertube = {
      secrets.secretsFile = "/run/keys/peertube-secret";
      redis.createLocally = true;
      database.createLocally = true;
    };
  };
  pixelfed = {
    services.drover-pixelfed = { enable = true; domain = "pics.example.org"; bucket = "pics-example-org-media"; };
  };

  eval = modules: nixpkgs.lib.nixosSystem { modules = [ base ] ++ modules; };

  configurations = with self.nixosModules; {
    agent = eval [ self.nixosModules.agent agent ];
    coordinator = eval [ self.nixosModules.coordinator coordinator ];
    coordinator-s3 = eval [ self.nixosModules.coordinator coordinator s3 ];
    coordinator-qemu = eval [ self.nixosModules.coordinator coordinator qemuProvider ];
    garage-node = eval [ garage-node agent garageNode ];
    mastodon = eval [ self.nixosModules.mastodon agent mastodon ];
    peertube = eval [ self.nixosModules.peertube agent peertube ];
    pixelfed = eval [ self.nixosModules.pixelfed agent pixelfed ];
    all = eval [ default agent coordinator s3 garageNode mastodon peertube pixelfed ];
  };

  # name → (configuration, words the failed assertion must contain)
  negative = with self.nixosModules; {
    token-file-in-the-store = {
      system = eval [ self.nixosModules.agent agent { services.drover-agent.enrollmentTokenFile = lib.mkForce "${pkgs.writeText "token" "t"}"; } ];
      expect = "enrollmentTokenFile must not be in the Nix store";
    };
    runtime-dir-outside-run = {
      system = eval [ self.nixosModules.agent agent { services.drover-agent.settings.runtime_dir = "/var/drover"; } ];
      expect = "runtime_dir must be a directory under /run";
    };
    state-dir-outside-var-lib = {
      system = eval [ self.nixosModules.coordinator coordinator { services.drover.stateDir = "/srv/drover"; } ];
      expect = "stateDir must be under /var/lib/";
    };
    seed-and-coordinator = {
      system = eval [ self.nixosModules.agent agent { services.drover-agent.fromSeed = true; } ];
      expect = "with fromSeed = true the coordinator and the CA come from the VM's seed";
    };
    agent-state-dir-outside-var-lib = {
      system = eval [ self.nixosModules.agent agent { services.drover-agent.stateDir = "/srv/agent"; } ];
      expect = "stateDir must be a directory under /var/lib/";
    };
    s3-token-in-the-store = {
      system = eval [ self.nixosModules.coordinator coordinator s3 { services.drover.s3.adminTokenFile = lib.mkForce "${pkgs.writeText "garage-token" "t"}"; } ];
      expect = "adminTokenFile must not be in the Nix store";
    };
  };

  failed = system: map (a: a.message) (lib.filter (a: !a.assertion) system.config.assertions);

  # The coordinator unit with and without local VMs: hardened, except what
  # QEMU needs when a qemu provider is configured.
  sandbox =
    let
      unit = name: configurations.${name}.config.systemd.services.drover;
      plain = unit "coordinator";
      qemu = unit "coordinator-qemu";
      checks = {
        "plain: namespaces restricted" = plain.serviceConfig.RestrictNamespaces == true;
        "plain: W^X memory" = plain.serviceConfig.MemoryDenyWriteExecute == true;
        "plain: no devices" = plain.serviceConfig.PrivateDevices == true;
        "plain: nix on PATH" = lib.elem configurations.coordinator.config.nix.package plain.path;
        "qemu: namespaces allowed" = qemu.serviceConfig.RestrictNamespaces == false;
        "qemu: netlink allowed" = lib.elem "AF_NETLINK" qemu.serviceConfig.RestrictAddressFamilies;
        "qemu: /dev/kvm allowed" = lib.elem "/dev/kvm rw" qemu.serviceConfig.DeviceAllow;
        "qemu: TCG memory allowed" = qemu.serviceConfig.MemoryDenyWriteExecute == false;
        "qemu: QEMU, ip and nix on PATH" = lib.all (p: lib.elem p qemu.path) [ pkgs.qemu_kvm pkgs.iproute2 configurations.coordinator-qemu.config.nix.package ];
      };
      wrong = lib.attrNames (lib.filterAttrs (_: ok: !ok) checks);
    in
    if wrong == [ ] then "sandbox: ${toString (lib.length (lib.attrNames checks))} checks hold"
    else throw "the coordinator unit's sandbox is wrong: ${lib.concatStringsSep "; " wrong}";

  checkNegative = name: { system, expect }:
    let messages = failed system; in
    if lib.any (m: lib.hasInfix expect m) messages then "${name}: refused as expected"
    else throw "negative case ${name}: expected an assertion saying \"${expect}\", got: ${builtins.toJSON messages}";

  # Forcing drvPath evaluates the whole system; the string's context is
  # dropped so that nothing is built.
  evaluated = name: system: "${name}: ${builtins.unsafeDiscardStringContext system.config.system.build.toplevel.drvPath}";

in
pkgs.writeText "drover-modules-evaluated" (lib.concatStringsSep "\n" (
  lib.mapAttrsToList evaluated configurations
  ++ lib.mapAttrsToList checkNegative negative
  ++ [ sandbox ]
) + "\n")
