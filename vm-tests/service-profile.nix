# (c) A service profile as it ships: a Mastodon VM with
# services.drover-mastodon, fed only by what Drover delivers. Its
# environment unit writes Mastodon's environment from the facts and secrets,
# the tenant's admin account is created once, and a new key (a new
# generation after the old key was deleted) reaches the running service.
{ common }:

{
  name = "drover-service-profile";

  nodes = {
    coordinator = common.s3Coordinator common.garageIp {
      services.drover.s3.public_url = "http://{bucket}.web.garage.localhost:3902";
    };
    garage = common.garageNode;
    social = common.agentNode 1 ({ ... }: {
      imports = [ common.self.nixosModules.mastodon ];
      services.drover-mastodon = {
        enable = true;
        domain = "social.example";
        bucket = "social-media";
      };
      services.mastodon = {
        smtp.fromAddress = "noreply@social.example";
        streamingProcesses = 1;
      };
      virtualisation.memorySize = 3072;
      virtualisation.diskSize = 4096;
    });
  };

  testScript = ''
    ${common.seed}

    start_all()
    token = "0123456789abcdef0123456789abcdef"
    seed_garage(token)
    key = seed_s3_token(token)
    drover("s3 cluster add-node --admin http://${common.garageIp}:3903 --rpc ${common.garageIp}:3901 --zone z1 --capacity 1G")
    drover("s3 cluster apply")

    def deploy():
        current = social.succeed("readlink -f /run/current-system").strip()
        drover(f"deploy --machine {machine_id('social')} --closure {current} --substituter http://${common.coordinatorIp}:8080 --trusted-key {key} --bucket social-media:public --wait --wait-timeout 10m")

    def web_env(name):
        pid = social.succeed("systemctl show -p MainPID --value mastodon-web.service").strip()
        environ = social.succeed(f"tr '\\0' '\\n' < /proc/{pid}/environ")
        return dict(line.split("=", 1) for line in environ.splitlines() if "=" in line).get(name)

    with subtest("the Mastodon VM enrolls as the tenant's machine"):
        drover("tenants create social.example --admin-email ops@social.example --admin-user owner")
        seed(social, ["role=mastodon", "tenant=social.example"])
        coordinator.wait_until_succeeds("drover machines list --state-dir /var/lib/drover --output json | grep -q '\"hostname\": *\"social\"'", timeout=180)

    with subtest("the environment unit writes Mastodon's environment from facts and secrets"):
        deploy()
        social.wait_for_unit("drover-mastodon-env.service")
        env = social.succeed("cat /run/drover/env/mastodon.env")
        assert "S3_BUCKET='social-media'" in env, env
        assert "S3_ENDPOINT='http://${common.garageIp}:3900'" in env, env
        first_key = social.succeed("cat /run/drover/secrets/s3-social-media-access-key-id").strip()
        assert f"AWS_ACCESS_KEY_ID='{first_key}'" in env, env
        social.wait_for_unit("mastodon-web.service")
        assert web_env("AWS_ACCESS_KEY_ID") == first_key

    with subtest("the tenant's admin account is created once"):
        social.wait_until_succeeds("test -e /var/lib/drover-mastodon/admin-created", timeout=600)
        created = social.succeed("journalctl -u drover-mastodon-admin.service | grep -c 'admin account owner ready'").strip()
        assert created == "1", created

    with subtest("a new key reaches the running service with the next generation"):
        drover("s3 keys delete drover-social-media")
        deploy()
        social.wait_until_succeeds(f"! grep -q \"AWS_ACCESS_KEY_ID='{first_key}'\" /run/drover/env/mastodon.env", timeout=120)
        new_key = social.succeed("cat /run/drover/secrets/s3-social-media-access-key-id").strip()
        assert new_key != first_key
        social.wait_until_succeeds(f"test \"$(tr '\\0' '\\n' < /proc/$(systemctl show -p MainPID --value mastodon-web.service)/environ | grep ^AWS_ACCESS_KEY_ID=)\" = 'AWS_ACCESS_KEY_ID={new_key}'", timeout=300)
        created = social.succeed("journalctl -u drover-mastodon-admin.service | grep -c 'admin account owner ready'").strip()
        assert created == "1", "the admin account is not created again: " + created
  '';
}
