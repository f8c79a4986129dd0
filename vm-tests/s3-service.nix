# (b) Three Garage VMs built from garage-node.nix enroll as Drover machines
# with the labels their module computes, receive the cluster's RPC secret
# and admin token as Drover secrets, and are formed into one cluster
# (replication 3, three zones) with `drover s3 cluster add-machine` and
# `apply`. A service VM, separate from them, receives its bucket credentials
# and stores an object through them; a VM of another tenant receives nothing.
{ common }:

let
  garage = n: common.agentNode (10 + n) ({ ... }: {
    imports = [ common.self.nixosModules.garage-node ];
    services.drover-garage-node = {
      enable = true;
      address = common.agentIp (10 + n);
      zone = "z${toString n}";
      capacity = "1G";
    };
    virtualisation.diskSize = 2048;
  });
in
{
  name = "drover-s3-service";

  nodes = {
    coordinator = common.s3Coordinator (common.agentIp 11) { };
    garage1 = garage 1;
    garage2 = garage 2;
    garage3 = garage 3;
    service = common.agentNode 1 ({ pkgs, ... }: { environment.systemPackages = [ pkgs.curl pkgs.jq ]; });
    other = common.agentNode 2 { };
  };

  testScript = { nodes, ... }: ''
    ${common.seed}

    start_all()
    token = "0123456789abcdef0123456789abcdef"
    rpc_secret = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"
    key = seed_s3_token(token)
    coordinator.succeed(f"printf %s {rpc_secret} > /root/garage-rpc-secret && printf %s {token} > /root/garage-admin-token")

    garages = {
        "garage1": (garage1, json.loads('${builtins.toJSON nodes.garage1.services.drover-garage-node.tokenLabels}')),
        "garage2": (garage2, json.loads('${builtins.toJSON nodes.garage2.services.drover-garage-node.tokenLabels}')),
        "garage3": (garage3, json.loads('${builtins.toJSON nodes.garage3.services.drover-garage-node.tokenLabels}')),
    }

    with subtest("the Garage VMs enroll with the labels garage-node.nix computes"):
        for name, (vm, labels) in garages.items():
            seed(vm, [f"{k}={v}" for k, v in labels.items()])
        for name in garages:
            coordinator.wait_until_succeeds(f"drover machines list --state-dir /var/lib/drover --output json | grep -q '\"hostname\": *\"{name}\"'", timeout=180)

    with subtest("the cluster's secrets arrive as Drover secrets and Garage starts"):
        for name, (vm, _) in garages.items():
            current = vm.succeed("readlink -f /run/current-system").strip()
            drover(f"deploy --machine {machine_id(name)} --closure {current} --substituter http://${common.coordinatorIp}:8080 --trusted-key {key} "
                   "--secret garage-rpc-secret=@/root/garage-rpc-secret --secret garage-admin-token=@/root/garage-admin-token --wait --wait-timeout 5m")
        for vm, _ in garages.values():
            vm.wait_for_unit("garage.service")
            vm.wait_for_open_port(3903)

    with subtest("the coordinator forms the cluster from the machines' labels"):
        for name in garages:
            drover(f"s3 cluster add-machine {machine_id(name)}")
        drover("s3 cluster apply")
        status = drover_json("s3 cluster status")
        assert status["health"] == "healthy", status
        assert len(status["nodes"]) == 3 and all(n["up"] for n in status["nodes"]), status
        assert sorted(n["zone"] for n in status["nodes"]) == ["z1", "z2", "z3"], status

    with subtest("the service VM and the other VM enroll"):
        seed(service, ["role=media", "tenant=social.example"])
        seed(other, ["role=other"])
        coordinator.wait_until_succeeds("drover machines list --state-dir /var/lib/drover --output json | grep -q '\"hostname\": *\"service\"'", timeout=120)
        coordinator.wait_until_succeeds("drover machines list --state-dir /var/lib/drover --output json | grep -q '\"hostname\": *\"other\"'", timeout=120)

    with subtest("deploying with --bucket delivers credentials to the service VM only"):
        drover("tenants create social.example --admin-email ops@social.example")
        current = service.succeed("readlink -f /run/current-system").strip()
        sid = machine_id("service")
        drover(f"deploy --machine {sid} --closure {current} --substituter http://${common.coordinatorIp}:8080 --trusted-key {key} --bucket social-media --check s3:social-media --wait --wait-timeout 5m")
        service.succeed("test -s /run/drover/secrets/s3-social-media-access-key-id")
        facts = json.loads(service.succeed("cat /run/drover/facts.json"))
        assert facts["s3_bucket.social-media"] == "social-media", facts
        assert facts["domain"] == "social.example", facts
        other.fail("test -e /run/drover/secrets/s3-social-media-access-key-id")

    with subtest("the service VM stores an object in the cluster with exactly those credentials"):
        service.succeed(
            "echo 'hello from the service VM' > /tmp/object && "
            "curl --fail --aws-sigv4 aws:amz:garage:s3 "
            "--user \"$(cat /run/drover/secrets/s3-social-media-access-key-id):$(cat /run/drover/secrets/s3-social-media-secret-access-key)\" "
            "--upload-file /tmp/object \"$(jq -r .s3_endpoint /run/drover/facts.json)/social-media/hello.txt\""
        )
        bucket = drover_json("s3 buckets show social-media")
        assert bucket["objects"] == 1, bucket
  '';
}
