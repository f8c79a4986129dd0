# (a) A coordinator, one Garage node and two agent VMs. Both agents enroll at
# boot from a token file; a closure built by the test (a specialisation of
# the agents' own system) is published to a signed binary cache and
# deployed; a broken one (its activation fails) is rolled back by itself.
{ common }:

let
  # Both systems are built with the test; the agents run the base system.
  systems = { lib, pkgs, ... }: {
    specialisation.good.configuration = {
      environment.etc."drover-system".text = "good";
    };
    specialisation.broken.configuration = {
      environment.etc."drover-system".text = "broken";
      system.activationScripts.drover-broken = "echo 'this system is broken on purpose' >&2; exit 1";
    };
  };
in
{
  name = "drover-fleet";

  nodes = {
    coordinator = common.coordinatorNode ({ pkgs, ... }: {
      environment.systemPackages = [ pkgs.python3 ];
    });
    garage = common.garageNode;
    agent1 = common.agentNode 1 systems;
    agent2 = common.agentNode 2 systems;
  };

  testScript = { nodes, ... }: ''
    ${common.seed}

    start_all()
    coordinator.wait_for_unit("drover.service")
    seed_garage(garage.succeed("head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n'").strip())

    with subtest("both agents enroll at boot from their token file"):
        for (vm, name) in [(agent1, "agent1"), (agent2, "agent2")]:
            vm.wait_for_unit("multi-user.target")
            seed(vm, ["role=web"])
        for name in ["agent1", "agent2"]:
            coordinator.wait_until_succeeds(f"drover machines list --state-dir /var/lib/drover --output json | grep -q '\"hostname\": *\"{name}\"'", timeout=120)
        machines = drover_json("machines list --selector role=web")
        assert len(machines) == 2, machines
        assert all(m["status"] == "online" for m in machines), machines

    with subtest("a closure built in the test is published signed and deployed"):
        good = agent1.succeed("readlink -f /run/current-system/specialisation/good").strip()
        broken = agent1.succeed("readlink -f /run/current-system/specialisation/broken").strip()
        coordinator.succeed("nix-store --generate-binary-cache-key drover-test /root/cache.key /root/cache.pub")
        coordinator.succeed(f"nix --extra-experimental-features nix-command copy --to file:///var/cache/drover {good} {broken}")
        coordinator.succeed(f"nix --extra-experimental-features nix-command store sign --key-file /root/cache.key --store file:///var/cache/drover --recursive {good} {broken}")
        coordinator.succeed("cd /var/cache/drover && (python3 -m http.server 8080 >/dev/null 2>&1 &)")
        coordinator.wait_for_open_port(8080)
        key = coordinator.succeed("cat /root/cache.pub").strip()
        cache = "--substituter http://${common.coordinatorIp}:8080 --trusted-key " + key
        drover(f"deploy --selector role=web --closure {good} {cache} --wait --wait-timeout 10m")
        for vm in [agent1, agent2]:
            vm.succeed("grep -qx good /etc/drover-system")
            assert vm.succeed("readlink -f /run/current-system").strip() == good

    with subtest("a broken closure is rolled back, and the deployment says so"):
        coordinator.fail(f"drover deploy --state-dir /var/lib/drover --selector role=web --closure {broken} {cache} --wait --wait-timeout 10m")
        for vm in [agent1, agent2]:
            assert vm.succeed("readlink -f /run/current-system").strip() == good
            vm.succeed("grep -qx good /etc/drover-system")
        history = drover_json("deployments list")
        rolled = [d for d in history if d["rolled_back"]]
        assert len(rolled) == 2, history
  '';
}
