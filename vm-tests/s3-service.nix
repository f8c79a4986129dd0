# (b) A service VM, separate from the S3 VM, receives its bucket
# credentials from the coordinator and stores an object in Garage through
# them; a second service VM of another tenant receives nothing.
{ common }:

{
  name = "drover-s3-service";

  nodes = {
    coordinator = common.coordinatorNode ({ ... }: {
      services.drover.s3 = {
        admin_endpoint = "http://${common.garageIp}:3903";
        adminTokenFile = "/var/lib/drover-seed/garage-admin-token";
        s3_endpoint = "http://${common.garageIp}:3900";
      };
    });
    garage = common.garageNode;
    service = common.agentNode 1 ({ pkgs, ... }: { environment.systemPackages = [ pkgs.curl pkgs.jq ]; });
    other = common.agentNode 2 { };
  };

  testScript = ''
    ${common.seed}

    start_all()
    token = "0123456789abcdef0123456789abcdef"
    seed_garage(token)
    coordinator.succeed(f"mkdir -p /var/lib/drover-seed && printf %s {token} > /var/lib/drover-seed/garage-admin-token && chmod 600 /var/lib/drover-seed/garage-admin-token")
    coordinator.systemctl("restart drover.service")
    coordinator.wait_for_unit("drover.service")

    with subtest("the single Garage node is laid out by the coordinator"):
        drover("s3 cluster add-node --admin http://${common.garageIp}:3903 --rpc ${common.garageIp}:3901 --zone z1 --capacity 1G")
        drover("s3 cluster apply")

    with subtest("the service VM and the other VM enroll"):
        seed(service, ["role=media", "tenant=social.example"])
        seed(other, ["role=other"])
        coordinator.wait_until_succeeds("drover machines list --state-dir /var/lib/drover --output json | grep -q '\"hostname\": *\"service\"'", timeout=120)
        coordinator.wait_until_succeeds("drover machines list --state-dir /var/lib/drover --output json | grep -q '\"hostname\": *\"other\"'", timeout=120)

    with subtest("deploying with --bucket delivers credentials to the service VM only"):
        drover("tenants create social.example --admin-email ops@social.example")
        # The service keeps the system it runs (already in its store); the
        # deployment brings the bucket, its credentials and the tenant data.
        current = service.succeed("readlink -f /run/current-system").strip()
        coordinator.succeed("nix-store --generate-binary-cache-key unused /root/k /root/k.pub")
        key = coordinator.succeed("cat /root/k.pub").strip()
        sid = machine_id("service")
        drover(f"deploy --machine {sid} --closure {current} --substituter http://${common.coordinatorIp}:8080 --trusted-key {key} --bucket social-media --check s3:social-media --wait --wait-timeout 5m")
        service.succeed("test -s /run/drover/secrets/s3-social-media-access-key-id")
        facts = json.loads(service.succeed("cat /run/drover/facts.json"))
        assert facts["s3_bucket.social-media"] == "social-media", facts
        assert facts["domain"] == "social.example", facts
        other.fail("test -e /run/drover/secrets/s3-social-media-access-key-id")

    with subtest("the service VM stores an object in Garage with exactly those credentials"):
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
