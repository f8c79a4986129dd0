# Pieces the VM tests share: fixed addresses on the test network, the
# coordinator node, an agent node, and Python helpers for the test scripts.
{ self, lib }:

rec {
  inherit self;
  coordinatorIp = "192.168.1.10";
  garageIp = "192.168.1.20";
  agentIp = n: "192.168.1.${toString (30 + n)}";

  address = ip: {
    networking.interfaces.eth1.ipv4.addresses = lib.mkForce [{ address = ip; prefixLength = 24; }];
    networking.firewall.enable = false;
  };

  coordinatorNode = extra: { ... }: {
    imports = [ self.nixosModules.coordinator (address coordinatorIp) extra ];
    services.drover = {
      enable = true;
      settings = {
        listen = "0.0.0.0:7443";
        advertise = "${coordinatorIp}:7443";
        server_names = [ coordinatorIp ];
        health_interval = "2s";
      };
    };
    virtualisation.memorySize = 1024;
  };

  # The coordinator managing the Garage whose admin API is at ADMIN_IP; its
  # admin token file is written by the test script (`seed_s3_token`).
  s3Coordinator = adminIp: extra: coordinatorNode ({ ... }: {
    imports = [ extra ];
    services.drover.s3 = {
      admin_endpoint = "http://${adminIp}:3903";
      adminTokenFile = "/var/lib/drover-seed/garage-admin-token";
      s3_endpoint = "http://${adminIp}:3900";
    };
  });

  # A single Garage node (replication 1); its RPC secret and admin token
  # come from an environment file the test script writes (`seed_garage`).
  garageNode = { pkgs, ... }: {
    imports = [ (address garageIp) ];
    services.garage = {
      enable = true;
      package = pkgs.garage_2;
      environmentFile = "/var/lib/garage-seed/env";
      settings = {
        replication_factor = 1;
        rpc_bind_addr = "[::]:3901";
        rpc_public_addr = "${garageIp}:3901";
        s3_api = { s3_region = "garage"; api_bind_addr = "[::]:3900"; };
        admin.api_bind_addr = "[::]:3903";
      };
    };
  };

  # An agent that enrolls itself at boot: the CA and token files arrive the
  # way cloud-init would put them there (the test script writes them), and
  # the service keeps retrying until they do.
  agentNode = n: extra: { ... }: {
    imports = [ self.nixosModules.agent (address (agentIp n)) extra ];
    services.drover-agent = {
      enable = true;
      coordinator = "${coordinatorIp}:7443";
      caFile = "/var/lib/drover-seed/ca.pem";
      enrollmentTokenFile = "/var/lib/drover-seed/token";
      settings = {
        backoff_max = "2s";
        confirm_deadline = "30s";
      };
    };
    services.openssh.enable = true;
    virtualisation.memorySize = 1024;
  };

  # Python for the test scripts: make a token on the coordinator and seed an
  # agent with it and the CA, as a config drive would.
  seed = ''
    import json

    def drover(cmd):
        return coordinator.succeed(f"drover {cmd} --state-dir /var/lib/drover")

    def drover_json(cmd):
        return json.loads(drover(f"{cmd} --output json"))

    def seed(machine, labels):
        token = drover_json("tokens create --uses 1 --ttl 1h " + " ".join(f"--label {l}" for l in labels))["token"]
        ca = coordinator.succeed("cat /var/lib/drover/ca.pem")
        machine.succeed("mkdir -p /var/lib/drover-seed && chmod 700 /var/lib/drover-seed")
        machine.succeed(f"cat > /var/lib/drover-seed/ca.pem <<'EOF'\n{ca}\nEOF")
        machine.succeed(f"printf %s '{token}' > /var/lib/drover-seed/token && chmod 600 /var/lib/drover-seed/token")

    def seed_garage(admin_token):
        rpc = garage.succeed("head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n'").strip()
        garage.succeed(f"mkdir -p /var/lib/garage-seed && printf 'GARAGE_RPC_SECRET=%s\\nGARAGE_ADMIN_TOKEN=%s\\n' {rpc} {admin_token} > /var/lib/garage-seed/env")
        garage.systemctl("restart garage.service")
        garage.wait_for_open_port(3903)

    def seed_s3_token(admin_token):
        coordinator.succeed(f"mkdir -p /var/lib/drover-seed && printf %s {admin_token} > /var/lib/drover-seed/garage-admin-token && chmod 600 /var/lib/drover-seed/garage-admin-token")
        coordinator.systemctl("restart drover.service")
        coordinator.wait_for_unit("drover.service")
        # The systems the tests deploy are already in each VM's store; the
        # key only satisfies the closure mode's rule that one is named.
        coordinator.succeed("nix-store --generate-binary-cache-key unused /root/k /root/k.pub")
        return coordinator.succeed("cat /root/k.pub").strip()

    def machine_id(hostname):
        for m in drover_json("machines list"):
            if m["hostname"] == hostname:
                return m["id"]
        raise Exception(f"{hostname} is not enrolled")
  '';
}
