//! Attacks a hostile network, one compromised VM or the lowest admin role
//! can make, each against a running coordinator, each with what everyone
//! else must still be able to do while it goes on:
//!
//! - a flood of half-open QUIC handshakes (Initial packets, never answered)
//!   from several source addresses: admins, machines and enrollment are
//!   served, and the coordinator's memory stays within 64 MiB of where it
//!   was (before handshakes were admitted by their own limits, 2,000 such
//!   Initials with `max_connections = 2000` refused everyone for 30 s);
//! - one machine's certificate opening 5,000 connections: it keeps at most
//!   `connections_per_machine`, nobody else is refused;
//! - 100 batches of oversized deployment reports from one machine: its
//!   deployment's record stays bounded, `deployments list` and `show` work;
//! - 105,000 refused requests from a viewer: every admin action stays in
//!   the audit log, the refusals are one entry and summaries;
//! - a removed admin's open connection: refused at its next request;
//! - 3,000 slow clients of the metrics endpoint (with the open-file limit
//!   of a default systemd unit): `/metrics` answers and `drover backup`
//!   works.

use crate::common;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{drover_json, enroll_raw, Options, Serving, TestCoordinator};
use drover_net::CoordinatorConnection;
use drover_protocol::v1::*;
use drover_protocol::ErrorCode;

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the coordinator's status");
    status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok()).expect("VmRSS")
}

/// Raises this process's open-file limit to its hard limit (the attackers
/// here hold thousands of sockets).
fn raise_file_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).expect("setrlimit");
}

fn ca_der(fleet: &TestCoordinator) -> Vec<u8> {
    drover_net::identity::read_cert_pem(&fleet.state_dir.join("ca.pem")).expect("ca")
}

/// A connection, Hello done, with `identity` (certificate, key DER) or none.
async fn connect(
    fleet: &TestCoordinator,
    endpoint: &quinn::Endpoint,
    identity: Option<(&[u8], &[u8])>,
) -> Result<CoordinatorConnection, drover_net::ClientError> {
    let config = drover_net::tls::client_config(&ca_der(fleet), identity, Duration::from_secs(10)).expect("tls");
    CoordinatorConnection::connect(endpoint, config, fleet.addr, "127.0.0.1", "attack-test", Duration::from_secs(10)).await
}

/// What everyone else must still be able to do: an admin request on a new
/// connection, a machine's request on a new connection, an enrollment.
async fn everyone_is_served(fleet: &TestCoordinator, machine: (&[u8], &[u8]), token: &str, n: usize) {
    let answer = tokio::time::timeout(Duration::from_secs(15), fleet.try_call(AdminRequest::WhoAmI)).await;
    assert!(matches!(answer, Ok(Ok(AdminResponse::Identity(_)))), "an admin is served: {answer:?}");
    let endpoint = drover_net::client::client_endpoint(fleet.addr).expect("endpoint");
    let conn = connect(fleet, &endpoint, Some(machine)).await.expect("a machine connects");
    let answer = conn.request(&Request::Agent(AgentRequest::FetchAssignment)).await;
    assert!(answer.is_ok(), "a machine is served: {answer:?}");
    conn.connection.close(0u32.into(), b"done");
    let enrolled = tokio::time::timeout(Duration::from_secs(15), enroll_raw(fleet, token, &format!("newcomer-{n}"))).await;
    assert!(enrolled.is_ok(), "a new machine enrolls");
}

/// `n` QUIC Initial packets, each opening a handshake of its own (a fresh
/// connection id and ClientHello), as a client's first datagram is.
fn initials(n: usize, server: SocketAddr, ca: &[u8]) -> Vec<Vec<u8>> {
    let config = drover_net::tls::client_config(ca, None, Duration::from_secs(10)).expect("tls");
    let mut endpoint = quinn_proto::Endpoint::new(Arc::new(quinn_proto::EndpointConfig::default()), None, false, None);
    let now = Instant::now();
    (0..n)
        .map(|_| {
            let (_, mut conn) = endpoint.connect(now, config.clone(), server, "127.0.0.1").expect("connect");
            let mut buf = Vec::new();
            let sent = conn.poll_transmit(now, 1, &mut buf).expect("an Initial");
            buf.truncate(sent.size);
            buf
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_half_open_handshakes_leaves_admins_machines_and_enrollment_served() {
    let mut fleet = TestCoordinator::start_with(Options { no_server: true, ..Default::default() }).await;
    // The defaults, but for the cap of the first reproduction.
    fleet.config.max_connections = 2_000;
    std::fs::write(fleet.state_dir.join("drover.toml"), fleet.config.to_toml()).expect("config");
    let server = Serving(common::spawn_coordinator(&fleet.state_dir));
    assert!(common::eventually(Duration::from_secs(20), || async { fleet.try_call(AdminRequest::WhoAmI).await.is_ok() }).await, "the coordinator serves");
    let (token, _) = fleet.token(10, &[]).await;
    let (issued, key) = enroll_raw(&fleet, &token, "vm1").await;
    let machine = (issued.certificate_der.as_slice(), key.as_slice());
    everyone_is_served(&fleet, machine, &token, 0).await;
    let before = rss_kib(server.0.id());

    // 20 source addresses, 300 handshakes each: 6,000 Initials, three times
    // the cap, sent as fast as the sockets take them.
    let packets = initials(6_000, fleet.addr, &ca_der(&fleet));
    let mut sockets = Vec::new();
    for i in 0..20u8 {
        let ip: IpAddr = format!("127.0.0.{}", 10 + i).parse().expect("ip");
        sockets.push(Arc::new(tokio::net::UdpSocket::bind(SocketAddr::new(ip, 0)).await.expect("bind an attacker's address")));
    }
    let flood = {
        let (sockets, addr) = (sockets.clone(), fleet.addr);
        tokio::spawn(async move {
            for (i, packet) in packets.iter().enumerate() {
                let _ = sockets[i % sockets.len()].send_to(packet, addr).await;
                if i % 500 == 499 {
                    tokio::task::yield_now().await;
                }
            }
        })
    };
    flood.await.expect("flood sent");
    // Within the handshake timeout (10 s), while every half-open handshake
    // the coordinator accepted is still held.
    everyone_is_served(&fleet, machine, &token, 1).await;
    let after = rss_kib(server.0.id());
    assert!(after < before + 64 * 1024, "memory stays within 64 MiB of where it was: {before} KiB → {after} KiB");
    eprintln!("half-open flood: RSS {before} KiB → {after} KiB");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_machine_opening_five_thousand_connections_keeps_two_and_locks_no_one_out() {
    raise_file_limit();
    let mut fleet = TestCoordinator::start_with(Options { no_server: true, ..Default::default() }).await;
    fleet.config.max_connections = 2_000;
    fleet.serve().await;
    let (token, _) = fleet.token(10, &[]).await;
    let (attacker, attacker_key) = enroll_raw(&fleet, &token, "compromised").await;
    let (honest, honest_key) = enroll_raw(&fleet, &token, "honest").await;
    let endpoint = drover_net::client::client_endpoint(fleet.addr).expect("endpoint");
    let config = drover_net::tls::client_config(&ca_der(&fleet), Some((&attacker.certificate_der, &attacker_key)), Duration::from_secs(10)).expect("tls");
    let mut held = Vec::new();
    let mut replaced = 0;
    for batch in 0..100 {
        let opened = futures_util::future::join_all(
            (0..50).map(|_| CoordinatorConnection::connect(&endpoint, config.clone(), fleet.addr, "127.0.0.1", "attack-test", Duration::from_secs(20))),
        )
        .await;
        for conn in opened {
            match conn {
                Ok(c) => held.push(c),
                // Opened 50 at a time, most are replaced by a newer one
                // before their Hello is answered (or while it is sent).
                Err(e) if e.to_string().contains("replaced by a newer connection") || e.to_string().contains("connection lost") => replaced += 1,
                Err(e) => panic!("a connection of the machine was refused, not replaced: {e}"),
            }
        }
        if batch % 20 == 19 {
            eprintln!("{} connections opened, {replaced} replaced during their Hello", held.len());
        }
    }
    // Every connection was let in as the newest of its machine, each
    // replacing the oldest: at most two are open now.
    let open = || held.iter().filter(|c| c.connection.close_reason().is_none()).count();
    assert!(common::eventually(Duration::from_secs(10), || async { open() <= 2 }).await, "one machine holds at most 2 connections, not {}", open());
    assert_eq!(held.len() + replaced, 5_000, "every connection was let in as the newest");
    everyone_is_served(&fleet, (&honest.certificate_der, &honest_key), &token, 0).await;
    let newest = held.iter().rev().find(|c| c.connection.close_reason().is_none()).expect("the newest is open");
    assert!(newest.request(&Request::Agent(AgentRequest::FetchAssignment)).await.is_ok(), "the attacker's newest connection works as any agent's");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_oversized_report_batches_leave_deployments_readable_and_the_record_bounded() {
    let fleet = TestCoordinator::start().await;
    let (token, _) = fleet.token(1, &[("role", "web")]).await;
    let (issued, key) = enroll_raw(&fleet, &token, "vm1").await;
    let _ = fleet
        .call(AdminRequest::Deploy(common::deploy_to_role("web", SystemSpec::Flake { uri: "path:/x".into(), attribute: "y".into() })))
        .await
        .deployed()
        .expect("deploy");
    let db_size = || -> u64 {
        fn walk(p: &std::path::Path) -> u64 {
            std::fs::read_dir(p)
                .map(|d| d.flatten().map(|e| if e.path().is_dir() { walk(&e.path()) } else { e.metadata().map(|m| m.len()).unwrap_or(0) }).sum())
                .unwrap_or(0)
        }
        walk(&fleet.state_dir.join("db"))
    };
    let before = db_size();
    let endpoint = drover_net::client::client_endpoint(fleet.addr).expect("endpoint");
    let conn = connect(&fleet, &endpoint, Some((&issued.certificate_der, &key))).await.expect("machine connects");
    let report = |i: usize| DeploymentReport {
        generation: 1,
        step: DeployStep::Switching,
        message: format!("{i}:{}", "m".repeat(4096)),
        output_tail: "o".repeat(4096),
        system_path: None,
        volumes: vec![],
    };
    for batch in 0..100 {
        let reports: Vec<_> = (0..32).map(|i| report(batch * 32 + i)).collect();
        loop {
            match conn.request(&Request::Agent(AgentRequest::ReportDeployments(reports.clone()))).await {
                Ok(_) => break,
                // Past its rate the machine is told to come back.
                Err(e) if e.code() == Some(ErrorCode::Unavailable) => tokio::time::sleep(Duration::from_millis(50)).await,
                Err(e) => panic!("report refused: {e}"),
            }
        }
    }
    let list = fleet.call(AdminRequest::DeploymentsList { machine: None }).await.deployments().expect("list");
    assert_eq!(list.len(), 1);
    let id = list[0].id.clone();
    let d = fleet.call(AdminRequest::DeploymentsShow { id }).await.deployment().expect("show");
    assert!(d.steps.len() <= 102, "steps are bounded (limits.deployment_steps and the note of the cut): {}", d.steps.len());
    assert!(d.steps.iter().any(|s| s.message.contains("more steps dropped")), "the cut is recorded");
    let bytes: usize = d.steps.iter().map(|s| s.message.len()).sum::<usize>() + d.output_tail.len();
    assert!(bytes < 128 << 10, "the record's text is bounded: {bytes} bytes");
    let (ok, _, err) = drover_json(&fleet, &["deployments", "list"]);
    assert!(ok, "drover deployments list works: {err}");
    fleet.handle.as_ref().expect("serving").coordinator.store.flush().await.expect("flush");
    let grown = db_size().saturating_sub(before);
    assert!(grown < 64 << 20, "the store grew by {grown} bytes for 3,200 reports of 8 KiB");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_refused_requests_from_a_viewer_evict_no_admin_action() {
    let mut fleet = TestCoordinator::start_with(Options { no_server: true, ..Default::default() }).await;
    // The attack as measured: no rate limit in the way, refusals summarised
    // every second.
    fleet.config.limits.admin_requests_per_second = 1_000_000;
    fleet.config.limits.audit_refusal_summary = Duration::from_secs(1);
    fleet.serve().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let vera = dir.path().join("vera.bundle");
    let (ok, _, err) = drover_json(&fleet, &["admins", "add", "vera", "--role", "viewer", "--out", vera.to_str().expect("utf-8")]);
    assert!(ok, "{err}");
    for i in 0..3 {
        let (ok, _, err) = drover_json(&fleet, &["tokens", "create", "--uses", &format!("{}", i + 1)]);
        assert!(ok, "{err}");
    }
    let viewer =
        drover_coordinator::client::AdminClient::connect(&drover_coordinator::bundle::AdminBundle::load(&vera).expect("bundle")).await.expect("viewer");
    let viewer = Arc::new(viewer);
    const REFUSED: usize = 105_000;
    let sent = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let workers: Vec<_> = (0..48)
        .map(|_| {
            let (viewer, sent) = (viewer.clone(), sent.clone());
            tokio::spawn(async move {
                while sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < REFUSED {
                    let e = viewer.call(AdminRequest::MachinesRevoke { id: "m-0000000000".into() }).await.expect_err("a viewer cannot revoke");
                    assert_eq!(e.code(), Some(ErrorCode::PermissionDenied), "{e}");
                }
            })
        })
        .collect();
    for w in workers {
        w.await.expect("worker");
    }
    // The root's own actions, all of them, after the flood.
    let (ok, root, err) = drover_json(&fleet, &["audit", "--admin", "root"]);
    assert!(ok, "{err}");
    let actions: Vec<&str> = root.as_array().expect("array").iter().map(|e| e["action"].as_str().expect("action")).collect();
    assert_eq!(actions.iter().filter(|a| **a == "tokens create").count(), 3, "{root}");
    assert!(actions.contains(&"admins add"), "{root}");
    // Vera's refusals: the first as it came, the rest counted in summaries.
    let counted = || async {
        let (_, vera_log, _) = drover_json(&fleet, &["audit", "--admin", "vera"]);
        let entries = vera_log.as_array().cloned().unwrap_or_default();
        let first = entries.iter().filter(|e| e["action"] == "machines revoke").count();
        let summarised: u64 = entries
            .iter()
            .filter(|e| e["action"] == "refused requests")
            .filter_map(|e| e["target"].as_str()?.strip_prefix("machines revoke ×")?.parse::<u64>().ok())
            .sum();
        (first, summarised, entries.len())
    };
    assert!(
        common::eventually(Duration::from_secs(10), || async { counted().await.1 == REFUSED as u64 - 1 }).await,
        "every refusal is counted: {:?}",
        counted().await
    );
    let (first, _, entries) = counted().await;
    assert_eq!(first, 1, "the first refusal has its own entry");
    assert!(entries < 200, "refusals take a few entries, not one each: {entries}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_admins_open_connection_is_refused_at_its_next_request() {
    let fleet = TestCoordinator::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let old = dir.path().join("old.bundle");
    let (ok, _, err) = drover_json(&fleet, &["admins", "add", "pviewer", "--role", "viewer", "--out", old.to_str().expect("utf-8")]);
    assert!(ok, "{err}");
    let held = drover_coordinator::client::AdminClient::connect(&drover_coordinator::bundle::AdminBundle::load(&old).expect("bundle")).await.expect("connect");
    assert!(matches!(held.call(AdminRequest::WhoAmI).await, Ok(AdminResponse::Identity(_))));
    let (ok, _, err) = drover_json(&fleet, &["admins", "remove", "pviewer"]);
    assert!(ok, "{err}");
    // Added again, with more rights, under the same name.
    let new = dir.path().join("new.bundle");
    let (ok, _, err) = drover_json(&fleet, &["admins", "add", "pviewer", "--role", "admin", "--out", new.to_str().expect("utf-8")]);
    assert!(ok, "{err}");
    let answer = held.call(AdminRequest::WhoAmI).await;
    assert!(answer.is_err(), "the old connection has no rights: {answer:?}");
    let answer = held.call(AdminRequest::TokensCreate(TokenSpec { labels: Default::default(), ttl_ms: 60_000, uses: 1 })).await;
    assert!(answer.is_err(), "and makes no token: {answer:?}");
    let again = drover_coordinator::client::AdminClient::connect(&drover_coordinator::bundle::AdminBundle::load(&old).expect("bundle")).await;
    if let Ok(client) = again {
        let e = client.call(AdminRequest::WhoAmI).await.expect_err("the old certificate is refused");
        assert_eq!(e.code(), Some(ErrorCode::Unauthenticated), "{e}");
    }
    let current =
        drover_coordinator::client::AdminClient::connect(&drover_coordinator::bundle::AdminBundle::load(&new).expect("bundle")).await.expect("connect");
    let me = current.call(AdminRequest::WhoAmI).await.expect("whoami").identity().expect("identity");
    assert_eq!(me.role, Role::Admin, "the new certificate has the new role");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_thousand_slow_metrics_clients_leave_metrics_and_backups_working() {
    raise_file_limit();
    let mut fleet = TestCoordinator::start_with(Options { no_server: true, ..Default::default() }).await;
    let metrics: SocketAddr = format!("127.0.0.1:{}", common::free_tcp_port()).parse().expect("addr");
    fleet.config.metrics_listen = Some(metrics);
    std::fs::write(fleet.state_dir.join("drover.toml"), fleet.config.to_toml()).expect("config");
    // The open-file limit of a systemd unit that sets none, hard and soft.
    let _server = Serving(
        std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("ulimit -n 1024 && exec {} serve --state-dir {}", env!("CARGO_BIN_EXE_drover"), fleet.state_dir.display()))
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start drover serve"),
    );
    assert!(common::eventually(Duration::from_secs(20), || async { fleet.try_call(AdminRequest::WhoAmI).await.is_ok() }).await, "the coordinator serves");

    // 3,000 clients from another address, each sending half a request and
    // then nothing.
    let mut slow = Vec::new();
    for _ in 0..3_000 {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.bind("127.0.0.2:0".parse().expect("addr")).expect("bind");
        if let Ok(Ok(mut stream)) = tokio::time::timeout(Duration::from_secs(5), socket.connect(metrics)).await {
            use tokio::io::AsyncWriteExt;
            let _ = stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n").await;
            slow.push(stream);
        }
    }
    assert!(slow.len() > 1_000, "the slow clients connected: {}", slow.len());

    let scrape = || async {
        let response = reqwest::Client::new().get(format!("http://{metrics}/metrics")).timeout(Duration::from_secs(5)).send().await;
        match response {
            Ok(r) if r.status().is_success() => r.text().await.ok(),
            _ => None,
        }
    };
    let text = scrape().await.expect("/metrics answers while 3,000 slow clients are held");
    assert!(text.contains("drover_"), "{text}");
    let file = fleet.dir.path().join("during-the-flood.backup");
    let key = fleet.dir.path().join("backup.key");
    let (ok, out, err) = drover_json(&fleet, &["backup", file.to_str().expect("utf-8"), "--key", key.to_str().expect("utf-8"), "--new-key"]);
    assert!(ok, "drover backup works while 3,000 slow clients are held: {err}");
    assert!(out["bytes"].as_u64().expect("bytes") > 0);
    drop(slow);
}
