# Evaluates every NixOS module of this repository with nixpkgs' own module
# system (lib.evalModules from nixpkgs' library, given as `libPath`),
# against strict stand-ins for the NixOS options the modules use, without
# the rest of nixpkgs. Run by scripts/eval-modules.sh; see docs/nixos.md.
#
# What it shows: every option the modules set or read exists with a fitting
# type, every configuration below evaluates (unit definitions, rendered
# scripts and settings included), the modules' assertions hold where they
# should and fire where they should, the coordinator unit's sandbox follows
# its providers. What only a real NixOS shows: the real options of
# systemd, nixpkgs' services (the stand-ins declare only what the modules
# touch), packages being built, units running.
{ libPath }:

let
  lib = import (libPath + "/lib");
  inherit (lib) mkOption types;

  # Packages are stand-ins: paths whose bin/ holds the host's programs, so a
  # rendered script can be run here (scripts/eval-modules.sh does).
  package = name: outPath: { type = "derivation"; inherit name outPath; };
  host = name: package name "/usr";
  standIn = name: package name "/stand-in/${name}";
  pkgs = {
    system = "x86_64-linux";
    jq = host "jq";
    coreutils = host "coreutils";
    diffutils = host "diffutils";
    gnused = host "gnused";
    util-linux = host "util-linux";
    e2fsprogs = host "e2fsprogs";
    xfsprogs = host "xfsprogs";
    iproute2 = standIn "iproute2";
    qemu_kvm = standIn "qemu";
    garage_2 = standIn "garage";
    formats.toml = { }: {
      type = types.attrsOf types.anything;
      generate = name: value: builtins.toFile name (builtins.toJSON value);
    };
    # The build-time check of a configuration runs `check-config` in a
    # derivation; here its script is kept as text (evaluated, not run).
    runCommand = name: _env: script: builtins.toFile name script;
    writeText = name: text: builtins.toFile name text;
  };

  str = types.str;
  listOfStr = types.listOf types.str;
  # As systemd.lib accepts them: text, numbers, booleans, packages, lists.
  scalar = types.oneOf [ types.str types.int types.bool types.package ];
  unitValue = types.either scalar (types.listOf scalar);
  unitSection = types.attrsOf unitValue;

  unit = {
    options = {
      description = mkOption { type = str; default = ""; };
      wantedBy = mkOption { type = listOfStr; default = [ ]; };
      requiredBy = mkOption { type = listOfStr; default = [ ]; };
      wants = mkOption { type = listOfStr; default = [ ]; };
      requires = mkOption { type = listOfStr; default = [ ]; };
      after = mkOption { type = listOfStr; default = [ ]; };
      before = mkOption { type = listOfStr; default = [ ]; };
      path = mkOption { type = types.listOf (types.either types.package str); default = [ ]; };
      environment = mkOption { type = types.attrsOf str; default = { }; };
      restartTriggers = mkOption { type = types.listOf types.unspecified; default = [ ]; };
      restartIfChanged = mkOption { type = types.bool; default = true; };
      script = mkOption { type = types.lines; default = ""; };
      preStart = mkOption { type = types.lines; default = ""; };
      serviceConfig = mkOption { type = unitSection; default = { }; };
      unitConfig = mkOption { type = unitSection; default = { }; };
    };
  };
  pathUnit = {
    options = {
      wantedBy = mkOption { type = listOfStr; default = [ ]; };
      pathConfig = mkOption { type = unitSection; default = { }; };
    };
  };

  # The NixOS options the modules use, and what nixpkgs' services give the
  # profiles to read (their users, groups, packages, the units they read).
  nixos = { config, ... }: {
    options = {
      assertions = mkOption {
        type = types.listOf (types.submodule { options = { assertion = mkOption { type = types.bool; }; message = mkOption { type = str; }; }; });
        default = [ ];
      };
      boot.kernelModules = mkOption { type = listOfStr; default = [ ]; };
      environment.systemPackages = mkOption { type = types.listOf types.package; default = [ ]; };
      networking.firewall.allowedTCPPorts = mkOption { type = types.listOf types.port; default = [ ]; };
      networking.firewall.allowedUDPPorts = mkOption { type = types.listOf types.port; default = [ ]; };
      services.openssh.authorizedKeysFiles = mkOption { type = listOfStr; default = [ ]; };
      systemd.package = mkOption { type = types.package; default = standIn "systemd"; };
      systemd.services = mkOption { type = types.attrsOf (types.submodule unit); default = { }; };
      systemd.paths = mkOption { type = types.attrsOf (types.submodule pathUnit); default = { }; };
      nix.package = mkOption { type = types.package; default = standIn "nix"; };
      system.build.nixos-rebuild = mkOption { type = types.package; default = standIn "nixos-rebuild"; };
      security.wrapperDir = mkOption { type = str; default = "/run/wrappers/bin"; };

      services.garage = {
        enable = mkOption { type = types.bool; default = false; };
        package = mkOption { type = types.package; };
        settings = mkOption { type = types.attrsOf types.anything; default = { }; };
      };
      services.mastodon = {
        enable = mkOption { type = types.bool; default = false; };
        localDomain = mkOption { type = str; };
        extraEnvFiles = mkOption { type = listOfStr; default = [ ]; };
        user = mkOption { type = str; default = "mastodon"; };
        group = mkOption { type = str; default = "mastodon"; };
        package = mkOption { type = types.package; default = standIn "mastodon"; };
        smtp.fromAddress = mkOption { type = str; };
        streamingProcesses = mkOption { type = types.ints.positive; };
      };
      services.peertube = {
        enable = mkOption { type = types.bool; default = false; };
        localDomain = mkOption { type = str; };
        serviceEnvironmentFile = mkOption { type = types.nullOr str; default = null; };
        group = mkOption { type = str; default = "peertube"; };
        settings = mkOption { type = types.attrsOf types.anything; default = { }; };
        secrets.secretsFile = mkOption { type = str; };
        redis.createLocally = mkOption { type = types.bool; default = false; };
        database.createLocally = mkOption { type = types.bool; default = false; };
      };
      services.pixelfed = {
        enable = mkOption { type = types.bool; default = false; };
        domain = mkOption { type = str; };
        secretFile = mkOption { type = str; };
        user = mkOption { type = str; default = "pixelfed"; };
        group = mkOption { type = str; default = "pixelfed"; };
      };
    };
    # What nixpkgs' Mastodon module defines, which the profile reads.
    config.systemd.services.mastodon-web = lib.mkIf config.services.mastodon.enable {
      environment = { RAILS_ENV = "production"; PATH = "/stand-in/path"; };
      path = [ (standIn "mastodon-env") ];
      serviceConfig.EnvironmentFile = [ "/var/lib/mastodon/.secrets_env" ];
    };
  };

  # The modules as the flake gives them (their packages are stand-ins).
  repo = ../nixos-module;
  agentModule = { key = "drover#agent"; imports = [ (repo + "/agent.nix") ]; services.drover-agent.package = lib.mkDefault (standIn "drover-agent"); };
  coordinatorModule = { key = "drover#coordinator"; imports = [ (repo + "/coordinator.nix") ]; services.drover.package = lib.mkDefault (standIn "drover"); };
  withAgent = path: { key = "drover#${baseNameOf path}"; imports = [ agentModule path ]; };
  modules = {
    agent = agentModule;
    coordinator = coordinatorModule;
    garage-node = withAgent (repo + "/garage-node.nix");
    mastodon = withAgent (repo + "/services/mastodon.nix");
    peertube = withAgent (repo + "/services/peertube.nix");
    pixelfed = withAgent (repo + "/services/pixelfed.nix");
  };

  eval = ms: lib.evalModules { modules = [ nixos { _module.args = { inherit pkgs; }; } ] ++ ms; };

  # The same configurations as vm-tests/modules.nix.
  agent = { services.drover-agent = { enable = true; coordinator = "192.0.2.1:7443"; caFile = "/etc/drover/ca.pem"; enrollmentTokenFile = "/run/drover-seed/token"; }; };
  seeded = { services.drover-agent = { enable = true; fromSeed = true; }; };
  coordinator = { services.drover = { enable = true; settings = { listen = "0.0.0.0:7443"; advertise = "192.0.2.1:7443"; server_names = [ "coordinator.example.org" ]; }; }; };
  qemuProvider = { services.drover.settings.providers = [{ kind = "qemu"; name = "local"; image = "/var/lib/drover/guest-image"; }]; };
  etcd = { services.drover.store = { etcdEndpoints = [ "https://192.0.2.31:2379" "https://192.0.2.32:2379" "https://192.0.2.33:2379" ]; prefix = "drover/fleet-a/"; caFile = "/run/keys/etcd-ca.pem"; certFile = "/run/keys/etcd-client.pem"; keyFile = "/run/keys/etcd-client.key"; }; };
  web = { services.drover.settings = { web_listen = "0.0.0.0:9480"; web_url = "https://coordinator.example.org:9480"; metrics_listen = "127.0.0.1:9465"; }; };
  s3 = { services.drover.s3 = { admin_endpoint = "http://192.0.2.20:3903"; adminTokenFile = "/run/keys/garage-admin-token"; s3_endpoint = "http://192.0.2.20:3900"; }; };
  garageNode = { services.drover-garage-node = { enable = true; address = "192.0.2.20"; zone = "dc1"; capacity = "10G"; }; };
  # The services' groups are root here, so that a rendered script that
  # went on past a missing fact would get as far as writing its file.
  mastodon = {
    services.drover-mastodon = { enable = true; domain = "social.example.org"; bucket = "media"; };
    services.mastodon = { smtp.fromAddress = "noreply@social.example.org"; streamingProcesses = 1; group = "root"; };
  };
  peertube = {
    services.drover-peertube = { enable = true; domain = "video.example.org"; bucket = "media"; };
    services.peertube = { secrets.secretsFile = "/run/keys/peertube-secret"; redis.createLocally = true; database.createLocally = true; group = "root"; };
  };
  pixelfed = {
    services.drover-pixelfed = { enable = true; domain = "pics.example.org"; bucket = "media"; };
    services.pixelfed.group = "root";
  };

  configurations = {
    agent = eval [ modules.agent agent ];
    agent-seeded = eval [ modules.agent seeded ];
    coordinator = eval [ modules.coordinator coordinator ];
    coordinator-s3 = eval [ modules.coordinator coordinator s3 ];
    coordinator-qemu = eval [ modules.coordinator coordinator qemuProvider ];
    coordinator-etcd = eval [ modules.coordinator coordinator etcd ];
    coordinator-web = eval [ modules.coordinator coordinator web ];
    coordinator-web-open = eval [ modules.coordinator coordinator web { services.drover.openWebFirewall = true; } ];
    garage-node = eval [ modules.garage-node agent garageNode ];
    mastodon = eval [ modules.mastodon seeded mastodon ];
    peertube = eval [ modules.peertube seeded peertube ];
    pixelfed = eval [ modules.pixelfed seeded pixelfed ];
    all = eval [ modules.coordinator modules.garage-node modules.mastodon modules.peertube modules.pixelfed agent coordinator s3 garageNode mastodon peertube pixelfed ];
  };

  negative = {
    token-file-in-the-store = { system = eval [ modules.agent agent { services.drover-agent.enrollmentTokenFile = lib.mkForce "${builtins.storeDir}/x-token"; } ]; expect = "enrollmentTokenFile must not be in the Nix store"; };
    runtime-dir-outside-run = { system = eval [ modules.agent agent { services.drover-agent.settings.runtime_dir = "/var/drover"; } ]; expect = "runtime_dir must be a directory under /run"; };
    state-dir-outside-var-lib = { system = eval [ modules.coordinator coordinator { services.drover.stateDir = "/srv/drover"; } ]; expect = "stateDir must be under /var/lib/"; };
    agent-state-dir-outside-var-lib = { system = eval [ modules.agent agent { services.drover-agent.stateDir = "/srv/agent"; } ]; expect = "stateDir must be a directory under /var/lib/"; };
    seed-and-coordinator = { system = eval [ modules.agent agent { services.drover-agent.fromSeed = true; } ]; expect = "with fromSeed = true the coordinator and the CA come from the VM's seed"; };
    no-coordinator = { system = eval [ modules.agent { services.drover-agent.enable = true; } ]; expect = "needs coordinator and caFile"; };
    etcd-key-in-the-store = { system = eval [ modules.coordinator coordinator etcd { services.drover.store.keyFile = lib.mkForce "${builtins.storeDir}/x-etcd-key"; } ]; expect = "store.keyFile must not be in the Nix store"; };
    etcd-half-tls = { system = eval [ modules.coordinator coordinator etcd { services.drover.store.caFile = lib.mkForce null; } ]; expect = "give caFile, certFile and keyFile together"; };
    etcd-tls-over-http = { system = eval [ modules.coordinator coordinator etcd { services.drover.store.etcdEndpoints = lib.mkForce [ "http://192.0.2.31:2379" ]; } ]; expect = "must be https:// URLs"; };
    s3-token-in-the-store = { system = eval [ modules.coordinator coordinator s3 { services.drover.s3.adminTokenFile = lib.mkForce "${builtins.storeDir}/x-garage-token"; } ]; expect = "adminTokenFile must not be in the Nix store"; };
  };

  failed = system: map (a: a.message) (lib.filter (a: !a.assertion) system.config.assertions);

  # Every unit forced to its last value: options, types and rendered text.
  evaluated = name: system:
    let
      wrong = failed system;
      units = builtins.toJSON { inherit (system.config.systemd) services paths; };
    in
    if wrong != [ ] then throw "${name}: assertions failed: ${builtins.toJSON wrong}"
    else builtins.seq (builtins.stringLength units) "${name}: evaluated (${toString (lib.length (lib.attrNames system.config.systemd.services))} units)";

  checkNegative = name: { system, expect }:
    let messages = failed system; in
    if lib.any (m: lib.hasInfix expect m) messages then "${name}: refused as expected"
    else throw "negative case ${name}: expected an assertion saying \"${expect}\", got: ${builtins.toJSON messages}";

  sandbox =
    let
      unit = name: configurations.${name}.config.systemd.services.drover;
      plain = unit "coordinator";
      qemu = unit "coordinator-qemu";
      checks = {
        "plain: namespaces restricted" = plain.serviceConfig.RestrictNamespaces == true;
        "plain: W^X memory" = plain.serviceConfig.MemoryDenyWriteExecute == true;
        "plain: no devices" = plain.serviceConfig.PrivateDevices == true;
        "plain: no netlink" = !(lib.elem "AF_NETLINK" plain.serviceConfig.RestrictAddressFamilies);
        "plain: nix on PATH" = lib.elem "/stand-in/nix" (map toString plain.path);
        "etcd: client certificates as credentials" = lib.length (unit "coordinator-etcd").serviceConfig.LoadCredential == 3;
        "etcd: init names the store" = lib.hasInfix "--store etcd://192.0.2.31:2379,192.0.2.32:2379,192.0.2.33:2379/drover/fleet-a --etcd-ca" (unit "coordinator-etcd").preStart;
        "plain: no store section" = !(lib.hasInfix "--store" plain.preStart);
        "qemu: namespaces allowed" = qemu.serviceConfig.RestrictNamespaces == false;
        "qemu: netlink allowed" = lib.elem "AF_NETLINK" qemu.serviceConfig.RestrictAddressFamilies;
        "qemu: /dev/kvm allowed" = lib.elem "/dev/kvm rw" qemu.serviceConfig.DeviceAllow;
        "qemu: TCG memory allowed" = qemu.serviceConfig.MemoryDenyWriteExecute == false;
        "qemu: QEMU, ip and nix on PATH" = lib.all (p: lib.elem p (map toString qemu.path)) [ "/stand-in/qemu" "/stand-in/iproute2" "/stand-in/nix" ];
        "agent: StateDirectory follows stateDir" = configurations.agent.config.systemd.services.drover-agent.serviceConfig.StateDirectory == "drover-agent";
        "web: no port opened unless asked" = configurations.coordinator-web.config.networking.firewall.allowedTCPPorts == [ ];
        "web: openWebFirewall opens the page's port only" = configurations.coordinator-web-open.config.networking.firewall.allowedTCPPorts == [ 9480 ];
        "garage: both secrets watched" = lib.length configurations.garage-node.config.systemd.paths.garage-secrets.pathConfig.PathChanged == 2;
      };
      wrong = lib.attrNames (lib.filterAttrs (_: ok: !ok) checks);
    in
    if wrong == [ ] then "units: ${toString (lib.length (lib.attrNames checks))} checks of sandboxes, paths and state directories hold"
    else throw "wrong: ${lib.concatStringsSep "; " wrong}";
  # Every option of the modules, for docs/nixos-options.md.
  optionDocs =
    let
      system = configurations.all;
      docs = prefix: map (o: { inherit (o) name description type; default = o.default.text or null; example = o.example.text or null; })
        (lib.filter (o: o.visible && !o.internal) (lib.optionAttrSetToDocList (lib.attrByPath prefix { } system.options)));
    in
    {
      "services.drover" = docs [ "services" "drover" ];
      "services.drover-agent" = docs [ "services" "drover-agent" ];
      "services.drover-garage-node" = docs [ "services" "drover-garage-node" ];
      "services.drover-mastodon" = docs [ "services" "drover-mastodon" ];
      "services.drover-peertube" = docs [ "services" "drover-peertube" ];
      "services.drover-pixelfed" = docs [ "services" "drover-pixelfed" ];
    };
in
{
  inherit optionDocs;
  report = lib.mapAttrsToList evaluated configurations ++ lib.mapAttrsToList checkNegative negative ++ [ sandbox ];
  # The profiles' environment scripts, rendered, for the script to run.
  profileScripts = lib.mapAttrs (name: _: configurations.${name}.config.systemd.services."drover-${name}-env".script) {
    mastodon = null;
    peertube = null;
    pixelfed = null;
  };
}
