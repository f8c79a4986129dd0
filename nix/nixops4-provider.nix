# Drover as a NixOps4 resource provider: a module of NixOps4's class
# `nixops4Provider` (its executable, and each resource type with its inputs,
# outputs and whether it needs NixOps4 state). The flake exposes it as
# `modules.nixops4Provider.drover`; docs/nixops4.md says how to use it.
#
# `drover` is a function from a system to the drover package; NixOps4 gives
# the module `resourceProviderSystem`.
{ drover }:
{ lib, resourceProviderSystem, ... }:
let
  inherit (lib) mkOption types;
  opt = type: description: mkOption { inherit type description; };
  optional = type: description: mkOption { type = types.nullOr type; default = null; inherit description; };
  labels = types.attrsOf types.str;
in
{
  _class = "nixops4Provider";
  name = "Drover";
  description = ''
    Drover's fleet as NixOps4 resources: VMs made on Drover's hypervisors
    (Proxmox VE, local QEMU) or existing machines adopted, tenants, S3
    buckets and keys on Garage, LINSTOR volumes, deployments that Drover's
    agents pull (with health gates, rollback and rollouts), and NixOps4's
    own state kept by the coordinator. The provider reaches the coordinator
    with an admin bundle: set DROVER_ADMIN_BUNDLE where NixOps4 runs.
  '';
  sourceBaseUrl = "https://example.invalid/drover/tree/main";
  sourceName = "drover";
  executable = "${drover resourceProviderSystem}/bin/drover";
  args = [ "nixops4" ];
  resourceTypes = {
    state = {
      description = "NixOps4's state, kept by the coordinator: every event in order, each patch applied to the stored document.";
      requireState = false;
      inputs.options.name = opt types.str "The state's name (lowercase letters, digits, '-', '_', '.').";
      outputs.options = {
        name = opt types.str "The state's name.";
        events = opt types.int "How many events it holds.";
        unapplied = opt (types.listOf types.int) "The events whose patch could not be applied.";
      };
    };
    tenant = {
      description = "An operator the fleet hosts services for.";
      requireState = true;
      inputs.options = {
        domain = opt types.str "The tenant's domain.";
        admin_email = opt types.str "The tenant's admin account's email.";
        admin_user = mkOption { type = types.str; default = "admin"; description = "The tenant's admin account's name."; };
      };
      outputs.options = {
        domain = opt types.str "The tenant's domain.";
        admin_user = opt types.str "Its admin account's name.";
        machines = opt types.int "How many machines carry its label.";
        created_at = opt types.int "When it was made (ms since the epoch): a destroy removes only this one.";
      };
    };
    machine = {
      description = "A VM Drover makes on a hypervisor provider, or an existing machine adopted by hostname. Destroy deletes only a VM Drover made; an adopted machine keeps running and loses the labels it was given.";
      requireState = true;
      inputs.options = {
        name = opt types.str "The provision's name (the VM's hostname), or this machine's name in the deployment.";
        provider = optional types.str "The hypervisor provider to make the VM on (from the coordinator's configuration).";
        adopt = optional types.str "An enrolled machine's hostname, taken over instead of making a VM.";
        template = optional types.str "The provider's template (Proxmox) or image.";
        cores = optional types.int "CPU cores of a new VM.";
        memory = optional types.str "Memory of a new VM (e.g. 2GiB).";
        disk = optional types.str "System disk of a new VM (e.g. 20GiB).";
        labels = mkOption { type = labels; default = { }; description = "Labels set on the machine (changed in place)."; };
        tenant = optional types.str "The tenant whose machine it is (changed in place).";
        timeout = mkOption { type = types.str; default = "15m"; description = "How long a new VM may take to come online."; };
      };
      outputs.options = {
        id = opt types.str "The machine's id.";
        hostname = opt types.str "Its hostname.";
        address = opt types.str "Its first IP address, as its agent reports it.";
        addresses = opt (types.listOf types.str) "Its IP addresses.";
        status = opt types.str "online, offline or revoked.";
        labels = opt labels "Its labels.";
        provisioned = opt types.bool "Whether Drover made its VM.";
      };
    };
    bucket = {
      description = "An S3 bucket on the fleet's Garage.";
      requireState = true;
      inputs.options = {
        name = opt types.str "The bucket's name.";
        public = mkOption { type = types.bool; default = false; description = "Whether it is served as a public website."; };
        quota = optional types.str "Its largest size (e.g. 100GiB).";
      };
      outputs.options = {
        name = opt types.str "The bucket's name.";
        id = opt types.str "Its Garage id.";
        public_url = opt (types.nullOr types.str) "Where it is served, when public.";
        objects = opt types.int "Objects in it.";
        bytes = opt types.int "Bytes in it.";
      };
    };
    s3_key = {
      description = "An S3 key with its permissions on a bucket. Its secret never leaves the coordinator except to machines.";
      requireState = true;
      inputs.options = {
        name = opt types.str "The key's name.";
        bucket = opt types.str "The bucket it may use.";
        read = mkOption { type = types.bool; default = true; description = "May read."; };
        write = mkOption { type = types.bool; default = false; description = "May write."; };
        owner = mkOption { type = types.bool; default = false; description = "May manage the bucket."; };
      };
      outputs.options = {
        name = opt types.str "The key's name.";
        id = opt types.str "Its access key id (not its secret).";
        bucket = opt types.str "The bucket.";
      };
    };
    volume = {
      description = "A LINSTOR volume. Destroy refuses unless delete_data_on_destroy is set: a volume may hold data.";
      requireState = true;
      inputs.options = {
        name = opt types.str "The volume's name.";
        size = opt types.str "Its size (e.g. 10GiB); it only grows.";
        replicas = optional types.int "How many replicas (LINSTOR places them).";
        delete_data_on_destroy = mkOption { type = types.bool; default = false; description = "Whether destroying the resource deletes the volume and its data."; };
      };
      outputs.options = {
        name = opt types.str "The volume's name.";
        size_bytes = opt types.int "Its size.";
        replicas = opt types.int "Its replicas.";
        machine = opt (types.nullOr types.str) "The machine it is attached to.";
        formatted = opt types.bool "Whether a filesystem was made on it.";
        created_at = opt types.int "When it was made (ms since the epoch): a destroy removes only this one.";
      };
    };
    deployment = {
      description = "A system deployed to one machine or to the machines a selector names, through their agents: waits for the outcome and fails with each machine's reason.";
      requireState = true;
      inputs.options = {
        machine = optional types.str "One machine, by id or hostname.";
        selector = mkOption { type = labels; default = { }; description = "Or every machine with these labels."; };
        flake = optional types.str "The system as URI#ATTRIBUTE, built on the machine.";
        closure = optional types.str "Or a built system's store path.";
        substituters = mkOption { type = types.listOf types.str; default = [ ]; description = "Where the closure is fetched from."; };
        trusted_public_keys = mkOption { type = types.listOf types.str; default = [ ]; description = "Keys the closure is signed with."; };
        facts = mkOption { type = labels; default = { }; description = "Facts the configuration reads (/run/drover/facts.json)."; };
        secret_files = mkOption { type = types.attrsOf types.str; default = { }; description = "Secret name -> a file on the deploying machine, read at apply time (the value never enters NixOps4's state)."; };
        checks = mkOption { type = types.listOf types.str; default = [ ]; description = "Health checks (unit:NAME, tcp:HOST:PORT, http:URL, file:PATH)."; };
        health_deadline = mkOption { type = types.str; default = "60s"; description = "How long the checks may take to pass."; };
        goal = optional types.str "switch, boot or test.";
        volumes = mkOption {
          type = types.attrsOf (types.submodule { options = { mount = opt types.str "Mount point."; filesystem = mkOption { type = types.str; default = "ext4"; description = "ext4 or xfs."; }; }; });
          default = { };
          description = "Volume name -> where it is mounted.";
        };
        buckets = mkOption { type = types.listOf types.str; default = [ ]; description = "Buckets the machines get keys for."; };
        strategy = optional (types.submodule {
          options = {
            canary = mkOption { type = types.int; default = 0; description = "Machines first, alone."; };
            max_parallel = mkOption { type = types.str; default = "1"; description = "At once (a count or a percentage)."; };
            auto_revert = mkOption { type = types.bool; default = true; description = "Revert every machine when the rollout fails."; };
          };
        }) "A rollout with this strategy instead of one deployment.";
        timeout = mkOption { type = types.str; default = "30m"; description = "How long the outcome is awaited."; };
      };
      outputs.options = {
        generation = opt types.int "The newest generation deployed.";
        machines = opt (types.attrsOf types.anything) "Machine id -> hostname, generation, outcome, system.";
      };
    };
  };
}
