//! Faults on a real network: the coordinator runs in a network namespace of
//! its own, joined to this one by a veth pair; nftables in that namespace
//! drops packets at random or cuts the agents off, and a UDP relay in the
//! test adds latency. Needs root, iproute2 and nftables (the README's test
//! command installs them).

use crate::common;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{eventually, Options, Serving, TestCoordinator};
use drover_agent::simulate::{self, SimulateOptions};
use drover_protocol::v1::*;
use tokio::net::UdpSocket;

/// Runs a command, failing the test with its error output and how to get
/// the program when it cannot run.
pub(crate) fn run(program: &str, args: &[&str], stdin: Option<&str>) {
    use std::io::Write;
    let mut child = std::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {program} ({e}): install iproute2 and nftables (apt-get install iproute2 nftables) and run the tests as root"));
    if let Some(text) = stdin {
        child.stdin.take().expect("stdin").write_all(text.as_bytes()).expect("write stdin");
    }
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success(), "{program} {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// A network namespace for the coordinator and a veth pair to it; the host
/// side holds two addresses, one the admin uses and one the agents' relay
/// uses, so that the agents alone can be cut off. Removed on drop.
pub(crate) struct Namespace {
    name: String,
    /// The host's side of the veth pair.
    pub(crate) host: Ipv4Addr,
    /// The coordinator's address, inside.
    pub(crate) inner: Ipv4Addr,
    /// The agents' relay sends from here.
    agents: Ipv4Addr,
}

impl Namespace {
    pub(crate) fn create() -> Self {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let id = (std::process::id() * 7 + NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)) % 200 + 20;
        let name = format!("drover-faults-{id}");
        let (host_if, inner_if) = (format!("dfh{id}"), format!("dfc{id}"));
        let net = format!("10.231.{id}");
        let _ = std::process::Command::new("ip").args(["netns", "del", &name]).stderr(std::process::Stdio::null()).status();
        run("ip", &["netns", "add", &name], None);
        let ns = Namespace {
            name: name.clone(),
            host: format!("{net}.1").parse().expect("ip"),
            inner: format!("{net}.2").parse().expect("ip"),
            agents: format!("{net}.3").parse().expect("ip"),
        };
        run("ip", &["link", "add", &host_if, "type", "veth", "peer", "name", &inner_if], None);
        run("ip", &["link", "set", &inner_if, "netns", &name], None);
        run("ip", &["addr", "add", &format!("{net}.1/24"), "dev", &host_if], None);
        run("ip", &["addr", "add", &format!("{net}.3/24"), "dev", &host_if], None);
        run("ip", &["link", "set", &host_if, "up"], None);
        let inner_net = format!("{net}.2/24");
        for cmd in
            [["addr", "add", inner_net.as_str(), "dev", inner_if.as_str()].as_slice(), &["link", "set", inner_if.as_str(), "up"], &["link", "set", "lo", "up"]]
        {
            let mut args = vec!["netns", "exec", name.as_str(), "ip"];
            args.extend_from_slice(cmd);
            run("ip", &args, None);
        }
        ns
    }

    pub(crate) fn nft(&self, script: &str) {
        run("ip", &["netns", "exec", &self.name, "nft", "-f", "-"], Some(script));
    }

    /// Drops `percent` of the UDP packets each way, at random.
    fn lose(&self, percent: u32) {
        self.nft(&format!(
            "table inet chaos {{\n chain input {{ type filter hook input priority 0; meta l4proto udp numgen random mod 100 < {percent} counter drop; }}\n chain output {{ type filter hook output priority 0; meta l4proto udp numgen random mod 100 < {percent} counter drop; }}\n}}\n"
        ));
    }

    /// Cuts the agents off (every packet from or to their relay).
    fn cut_agents_off(&self) {
        let a = self.agents;
        self.nft(&format!(
            "table inet partition {{\n chain input {{ type filter hook input priority 0; ip saddr {a} counter drop; }}\n chain output {{ type filter hook output priority 0; ip daddr {a} counter drop; }}\n}}\n"
        ));
    }

    /// Packets the rules of `table` dropped so far.
    fn dropped(&self, table: &str) -> u64 {
        let out = std::process::Command::new("ip").args(["netns", "exec", &self.name, "nft", "list", "table", "inet", table]).output().expect("nft list");
        let text = String::from_utf8_lossy(&out.stdout);
        text.split("packets ").skip(1).filter_map(|rest| rest.split_whitespace().next()?.parse::<u64>().ok()).sum()
    }

    fn heal(&self) {
        self.nft("delete table inet partition\n");
    }

    /// `drover serve` inside the namespace.
    pub(crate) fn serve(&self, state_dir: &Path) -> Serving {
        Serving(
            std::process::Command::new("ip")
                .args(["netns", "exec", &self.name, env!("CARGO_BIN_EXE_drover"), "serve", "--state-dir"])
                .arg(state_dir)
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("start drover serve in the namespace"),
        )
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// A UDP relay on 127.0.0.1 to `upstream`, sending from `from`, that holds
/// every datagram for `delay` each way.
struct Relay {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    async fn start(upstream: SocketAddr, from: IpAddr, delay: Duration) -> Self {
        let listen = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind the relay"));
        let addr = listen.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            let mut peers: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
            let mut buf = vec![0u8; 65_536];
            loop {
                let Ok((n, client)) = listen.recv_from(&mut buf).await else { return };
                let up = match peers.get(&client) {
                    Some(up) => up.clone(),
                    None => {
                        let up = Arc::new(UdpSocket::bind(SocketAddr::new(from, 0)).await.expect("bind upstream"));
                        up.connect(upstream).await.expect("connect upstream");
                        let (back, listen) = (up.clone(), listen.clone());
                        tokio::spawn(async move {
                            let mut buf = vec![0u8; 65_536];
                            while let Ok(n) = back.recv(&mut buf).await {
                                let (datagram, listen) = (buf[..n].to_vec(), listen.clone());
                                tokio::spawn(async move {
                                    tokio::time::sleep(delay).await;
                                    let _ = listen.send_to(&datagram, client).await;
                                });
                            }
                        });
                        peers.insert(client, up.clone());
                        up
                    }
                };
                let datagram = buf[..n].to_vec();
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    let _ = up.send(&datagram).await;
                });
            }
        });
        Relay { addr, task }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A coordinator in a namespace, admins reaching it directly and agents
/// through a relay with `delay` each way.
struct Setup {
    fleet: TestCoordinator,
    ns: Namespace,
    _server: Serving,
    relay: Relay,
}

async fn setup(delay: Duration) -> Setup {
    let mut fleet = TestCoordinator::start_with(Options { no_server: true, health_interval: Duration::from_secs(2), ..Default::default() }).await;
    let ns = Namespace::create();
    let inside = SocketAddr::new(IpAddr::V4(ns.inner), fleet.addr.port());
    fleet.config.listen = inside;
    fleet.connect_attempts = 5;
    std::fs::write(fleet.state_dir.join("drover.toml"), fleet.config.to_toml()).expect("configuration");
    // The certificate names 127.0.0.1; clients keep verifying that name.
    let mut bundle = fleet.bundle();
    bundle.coordinator = inside;
    bundle.write(&fleet.bundle_path).expect("bundle");
    let server = ns.serve(&fleet.state_dir);
    let relay = Relay::start(inside, IpAddr::V4(ns.agents), delay).await;
    assert!(
        eventually(Duration::from_secs(30), || async { drover_coordinator::client::AdminClient::connect(&fleet.bundle()).await.is_ok() }).await,
        "the coordinator in the namespace answers"
    );
    Setup { fleet, ns, _server: server, relay }
}

/// `count` simulated machines (their switch always succeeds) dialing the
/// relay; they run until the test ends.
async fn machines(s: &Setup, count: usize) -> tokio::task::JoinHandle<anyhow::Result<simulate::SimulateReport>> {
    let (_, token) = s.fleet.token(count as u32, &[("role", "sim")]).await;
    let mut base = s.fleet.agent_config("base", Some(&token));
    base.coordinator = s.relay.addr.into();
    base.server_name = Some("127.0.0.1".into());
    base.connect_timeout = Duration::from_secs(10);
    base.backoff_max = Duration::from_secs(5);
    let work_dir = s.fleet.dir.path().join("sim");
    let run = tokio::spawn(simulate::run(SimulateOptions {
        base,
        count,
        work_dir,
        coordinator_pid: None,
        spread: false,
        timeout: Duration::from_secs(600),
        hold: Duration::from_secs(3600),
        churn: None,
        agents_per_socket: simulate::DEFAULT_AGENTS_PER_SOCKET,
        switch: simulate::Simulated::Succeed,
        ready_file: None,
        stop: None,
    }));
    let all =
        eventually(Duration::from_secs(300), || async { s.fleet.machines().await.iter().filter(|m| m.status == MachineStatus::Online).count() == count }).await;
    assert!(all, "all {count} machines enrolled and online");
    run
}

async fn deploy_to_all(s: &Setup) -> usize {
    let spec = common::deploy_to_role("sim", SystemSpec::Flake { uri: "path:/nonexistent".into(), attribute: "x".into() });
    let targets = s.fleet.call(AdminRequest::Deploy(spec)).await.deployed().expect("deploy");
    targets.len()
}

async fn states(s: &Setup) -> HashMap<String, usize> {
    let list = s.fleet.call(AdminRequest::DeploymentsList { machine: None }).await.deployments().expect("list");
    let mut by_state = HashMap::new();
    for d in list {
        *by_state.entry(format!("{:?}", d.state)).or_default() += 1;
    }
    by_state
}

async fn all_succeeded(s: &Setup, count: usize, within: Duration) -> bool {
    eventually(within, || async { states(s).await.get("Succeeded").copied() == Some(count) }).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_to_100_machines_completes_with_10_percent_loss_each_way_and_200_ms_more_latency() {
    let _heavy = common::heavy().await;
    let s = setup(Duration::from_millis(100)).await;
    s.ns.lose(10);
    let _agents = machines(&s, 100).await;
    let started = Instant::now();
    assert_eq!(deploy_to_all(&s).await, 100);
    let done = all_succeeded(&s, 100, Duration::from_secs(300)).await;
    assert!(done, "every deployment succeeded: {:?}", states(&s).await);
    let dropped = s.ns.dropped("chaos");
    assert!(dropped > 100, "packets were lost on the way ({dropped})");
    eprintln!(
        "100 machines deployed in {:.1} s with 10 % loss each way ({dropped} packets dropped) and 200 ms more round trip",
        started.elapsed().as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn machines_cut_off_for_60_seconds_reconnect_and_finish_the_deployment() {
    let _heavy = common::heavy().await;
    let s = setup(Duration::ZERO).await;
    let _agents = machines(&s, 20).await;
    s.ns.cut_agents_off();
    let cut_at = Instant::now();
    assert_eq!(deploy_to_all(&s).await, 20, "admins still reach the coordinator");
    let offline = eventually(Duration::from_secs(60), || async { s.fleet.machines().await.iter().all(|m| m.status == MachineStatus::Offline) }).await;
    assert!(offline, "the coordinator sees the machines go offline");
    assert_eq!(states(&s).await.get("Succeeded"), None, "nothing reached the machines while cut off");
    tokio::time::sleep(Duration::from_secs(60).saturating_sub(cut_at.elapsed())).await;
    let dropped = s.ns.dropped("partition");
    assert!(dropped > 0, "the machines kept trying while cut off ({dropped} packets dropped)");
    s.ns.heal();
    let healed = Instant::now();
    let done = all_succeeded(&s, 20, Duration::from_secs(120)).await;
    assert!(done, "the deployment resumed and finished: {:?}", states(&s).await);
    eprintln!("20 machines finished {:.1} s after a 60 s partition ended", healed.elapsed().as_secs_f64());
    let machines = s.fleet.machines().await;
    assert!(machines.iter().all(|m| m.status == MachineStatus::Online), "every machine is back online");
    assert_eq!(machines.len(), 20, "none enrolled again");
}
