//! The coordinator under the worst the protocol allows: connections without
//! a certificate and enrolled ones holding every stream they may open, each
//! declaring the largest frame and sending as much of it as flow control
//! lets through, while honest agents report and a deployment to all of them
//! completes. The coordinator (its own process) stays within its memory
//! bound and no honest agent goes offline. Before frames were read as their
//! bytes arrived, within a budget, one machine connection with 60 such
//! streams took the coordinator from 110 to 823 MiB.
//!
//! CI runs it at a small scale; `scripts/hostile-load.sh` runs it at the
//! full one (1,000 anonymous and 50 enrolled attackers, 500 simulated
//! agents beside the real ones), chosen with `DROVER_HOSTILE_SCALE=full`.

use crate::common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::flake::{flake, flake_spec, spawn_vm};
use common::{eventually, until_reported, Options, TestCoordinator};
use drover_agent::simulate::{self, SimulateOptions};
use drover_protocol::v1::*;

/// How many of each take part.
struct Scale {
    /// Connections without a certificate, each holding the streams it may open.
    anonymous: usize,
    /// Enrolled machines that attack: every stream declares the largest
    /// request a machine may send.
    authenticated: usize,
    /// Honest simulated agents (switch always succeeds) beside the real ones.
    simulated: usize,
}

impl Scale {
    fn from_env() -> Scale {
        match std::env::var("DROVER_HOSTILE_SCALE").as_deref() {
            Ok("full") => Scale { anonymous: 1_000, authenticated: 50, simulated: 500 },
            Ok("ci") | Err(_) => Scale { anonymous: 300, authenticated: 20, simulated: 0 },
            Ok(other) => panic!("DROVER_HOSTILE_SCALE={other}: use `ci` (the default) or `full`"),
        }
    }
}

/// Honest agents in this process, with a real apply (flake stand-in).
const AGENTS: usize = 8;
/// The budget for frames in flight, set in the coordinator's configuration.
const FRAMES_IN_FLIGHT_MIB: u64 = 64;
/// The bound docs/security.md states: idle RSS plus the frame budget plus 128 MiB
/// for QUIC's own buffers and connection state.
const BOUND_MIB: u64 = FRAMES_IN_FLIGHT_MIB + 128;

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the coordinator's status");
    status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok()).expect("VmRSS")
}

/// Opens a stream that declares a frame of `declared` bytes and sends up to
/// `sent` of them (as far as the coordinator reads), never finishing it.
async fn hold_stream(conn: &quinn::Connection, declared: u32, sent: usize) -> Option<(quinn::SendStream, quinn::RecvStream)> {
    let (mut send, recv) = tokio::time::timeout(Duration::from_secs(2), conn.open_bi()).await.ok()?.ok()?;
    send.write_all(&declared.to_be_bytes()).await.ok()?;
    let _ = tokio::time::timeout(Duration::from_secs(5), send.write_all(&vec![0x5A; sent])).await;
    Some((send, recv))
}

async fn attacker(
    endpoint: &quinn::Endpoint,
    fleet: &TestCoordinator,
    ca: &[u8],
    identity: Option<(&[u8], &[u8])>,
) -> Option<drover_net::CoordinatorConnection> {
    let config = drover_net::tls::client_config(ca, identity, Duration::from_secs(30)).expect("tls");
    drover_net::CoordinatorConnection::connect(endpoint, config, fleet.addr, "127.0.0.1", "attacker", Duration::from_secs(10)).await.ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_clients_neither_grow_the_coordinator_past_its_bound_nor_starve_its_agents() {
    let scale = Scale::from_env();
    let mut fleet = TestCoordinator::start_with(Options { no_server: true, ..Default::default() }).await;
    // Every attacker comes from 127.0.0.1: let them all in, so that the
    // frame budget, not the per-address cap, is what holds.
    fleet.config.limits.anonymous_per_address = 1_000;
    fleet.config.limits.frames_in_flight_mib = FRAMES_IN_FLIGHT_MIB;
    std::fs::write(fleet.state_dir.join("drover.toml"), fleet.config.to_toml()).expect("write the configuration");
    let coordinator = common::Serving(common::spawn_coordinator(&fleet.state_dir));
    let pid = coordinator.0.id();

    let (_, token) = fleet.token((AGENTS + scale.authenticated + scale.simulated) as u32, &[("role", "web")]).await;
    let flake = flake(fleet.dir.path());
    let mut agents: Vec<_> = (0..AGENTS).map(|i| spawn_vm(&fleet, &format!("vm{i}"), Some(&token))).collect();
    for (_, agent) in &mut agents {
        until_reported(agent, 1).await;
    }
    let simulator = (scale.simulated > 0).then(|| {
        let base = fleet.agent_config("sim", Some(&token));
        tokio::spawn(simulate::run(SimulateOptions {
            base,
            count: scale.simulated,
            work_dir: fleet.dir.path().join("sim"),
            coordinator_pid: None,
            spread: false,
            timeout: Duration::from_secs(300),
            hold: Duration::from_secs(900),
            churn: None,
            agents_per_socket: simulate::DEFAULT_AGENTS_PER_SOCKET,
            switch: simulate::Simulated::Succeed,
            ready_file: None,
            stop: None,
        }))
    });
    let all_online = eventually(Duration::from_secs(300), || async {
        fleet.machines().await.iter().filter(|m| m.status == MachineStatus::Online).count() == AGENTS + scale.simulated
    })
    .await;
    assert!(all_online, "every honest agent is online before the attack");
    let token_text = std::fs::read_to_string(&token).expect("token");
    let mut identities = Vec::new();
    for i in 0..scale.authenticated {
        let (issued, key) = common::enroll_raw(&fleet, token_text.trim(), &format!("evil{i}")).await;
        identities.push((issued.certificate_der, key));
    }
    let idle_kib = rss_kib(pid);
    let reports_before: Vec<u64> = agents.iter().map(|(_, a)| a.status.borrow().reports).collect();

    let peak = Arc::new(AtomicU64::new(idle_kib));
    let sampler = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                peak.fetch_max(rss_kib(pid), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };

    let ca = drover_net::identity::read_cert_pem(&fleet.state_dir.join("ca.pem")).expect("ca");
    let endpoint = drover_net::client::client_endpoint(fleet.addr).expect("endpoint");
    let mut held = Vec::new();
    let mut anonymous_in = 0;
    for _ in 0..scale.anonymous {
        if let Some(conn) = attacker(&endpoint, &fleet, &ca, None).await {
            anonymous_in += 1;
            held.push(conn);
        }
    }
    assert_eq!(anonymous_in, scale.anonymous, "connections without a certificate up to the cap are let in");
    let mut machines_in = 0;
    for (cert, key) in &identities {
        if let Some(conn) = attacker(&endpoint, &fleet, &ca, Some((cert, key))).await {
            machines_in += 1;
            held.push(conn);
        }
    }
    assert_eq!(machines_in, scale.authenticated);

    // Every connection opens all it may: the anonymous ones 4 streams of
    // 64 KiB frames (3 after Hello), the machines all theirs of 1 MiB, all at once.
    let streams_per_machine = fleet.config.limits.streams_per_machine as usize;
    let mut attacks = tokio::task::JoinSet::new();
    for (i, conn) in held.iter().enumerate() {
        let conn = conn.connection.clone();
        let (streams, declared, sent) = if i < scale.anonymous { (4, 64 << 10, 60 << 10) } else { (streams_per_machine, 1 << 20, 1 << 20) };
        attacks.spawn(async move {
            let mut open = Vec::new();
            for _ in 0..streams {
                if let Some(s) = hold_stream(&conn, declared, sent).await {
                    open.push(s);
                }
            }
            // Garbage on the way out, then the streams stay held.
            if let Some((mut send, _recv)) = hold_stream(&conn, 8, 0).await {
                let _ = send.write_all(&[0xEE; 8]).await;
            }
            open
        });
    }

    // Meanwhile the honest agents take a deployment.
    let spec = common::deploy_to_role("web", flake_spec(&flake, "good"));
    let targets = fleet.call(AdminRequest::Deploy(spec)).await.deployed().expect("deploy");
    assert_eq!(targets.len(), AGENTS + scale.authenticated + scale.simulated, "the deployment targets every machine with the label");
    let honest: Vec<String> = {
        let machines = fleet.machines().await;
        machines.iter().filter(|m| !m.hostname.starts_with("evil")).map(|m| m.id.clone()).collect()
    };
    assert_eq!(honest.len(), AGENTS + scale.simulated);
    let all_succeeded = eventually(Duration::from_secs(300), || async {
        let Ok(list) = fleet.call(AdminRequest::DeploymentsList { machine: None }).await.deployments() else { return false };
        honest.iter().all(|id| list.iter().any(|d| &d.machine_id == id && d.state == DeploymentState::Succeeded))
    })
    .await;
    let mut still_open = Vec::new();
    while let Some(open) = attacks.join_next().await {
        still_open.push(open.expect("attack task"));
    }
    assert!(all_succeeded, "every honest agent applied the deployment during the attack");

    let machines = fleet.machines().await;
    for id in &honest {
        let m = machines.iter().find(|m| &m.id == id).expect("listed");
        assert_eq!(m.status, MachineStatus::Online, "{} stayed online: {m:?}", m.hostname);
    }
    for ((vm, agent), before) in agents.iter().zip(reports_before) {
        let after = agent.status.borrow().reports;
        assert!(after > before, "{} kept reporting health during the attack ({before} then {after})", vm.name);
    }

    if let Some(simulator) = simulator {
        simulator.abort();
    }
    sampler.abort();
    let peak_kib = peak.load(Ordering::Relaxed).max(rss_kib(pid));
    let grown_mib = peak_kib.saturating_sub(idle_kib) / 1024;
    eprintln!("coordinator RSS: idle {} MiB, peak {} MiB under attack (+{grown_mib} MiB)", idle_kib / 1024, peak_kib / 1024);
    assert!(grown_mib <= BOUND_MIB, "the coordinator grew by {grown_mib} MiB under attack; the bound is {BOUND_MIB} MiB");
    drop(still_open);
    drop(held);
}
