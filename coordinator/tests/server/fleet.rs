//! The fleet over real QUIC on 127.0.0.1: enrollment, health, the CLI's JSON,
//! offline detection, restarts of agents and of the coordinator.

use crate::common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{eventually, until_reported, Options, TestCoordinator};
use drover_protocol::v1::{AdminRequest, AdminResponse, DeploySpec, MachineStatus, SystemSpec, TokenSpec};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_agents_enroll_and_show_online_with_health_in_the_cli_json() {
    let fleet = TestCoordinator::start().await;
    let (_, token) = fleet.token(3, &[("role", "web"), ("tenant", "a")]).await;
    let mut agents: Vec<_> = (1..=3).map(|i| fleet.spawn_agent(&format!("vm{i}"), Some(&token))).collect();
    for a in &mut agents {
        until_reported(a, 1).await;
    }
    let output = Command::new(env!("CARGO_BIN_EXE_drover"))
        .args(["machines", "list", "--output", "json"])
        .env("DROVER_ADMIN_BUNDLE", &fleet.bundle_path)
        .stderr(Stdio::inherit())
        .output()
        .expect("run drover machines list");
    assert!(output.status.success());
    let machines: serde_json::Value = serde_json::from_slice(&output.stdout).expect("json");
    let machines = machines.as_array().expect("array");
    assert_eq!(machines.len(), 3);
    for (i, m) in machines.iter().enumerate() {
        assert_eq!(m["hostname"], format!("vm{}", i + 1));
        assert_eq!(m["status"], "online");
        assert_eq!(m["labels"]["role"], "web");
        assert_eq!(m["labels"]["tenant"], "a");
        let health = &m["health"];
        assert_eq!(health["hostname"], format!("vm{}", i + 1));
        assert!(health["memory_total_bytes"].as_u64().expect("memory") > 0);
        assert!(health["cpu_count"].as_u64().expect("cpus") > 0);
        assert!(!health["disks"].as_array().expect("disks").is_empty());
        assert_eq!(health["agent_version"], env!("CARGO_PKG_VERSION"));
        assert!(m["id"].as_str().expect("id").starts_with("m-"));
    }
    // The selector filters.
    let none = fleet.call(AdminRequest::MachinesList { selector: [("role".to_string(), "db".to_string())].into() }).await.machines().expect("Machines");
    assert!(none.is_empty());
    for a in agents {
        a.stop().await.expect("agent stops");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_agent_turns_offline_after_three_missed_intervals() {
    let fleet = TestCoordinator::start_with(Options { health_interval: Duration::from_millis(200), ..Default::default() }).await;
    let (_, token) = fleet.token(1, &[]).await;
    let mut agent = fleet.spawn_agent("vm1", Some(&token));
    let status = until_reported(&mut agent, 3).await;
    let id = status.machine_id.expect("id");
    assert_eq!(fleet.machine(&id).await.status, MachineStatus::Online);
    agent.stop().await.expect("stop");
    let stopped_at = std::time::Instant::now();
    assert!(eventually(Duration::from_secs(10), || async { fleet.machine(&id).await.status == MachineStatus::Offline }).await, "machine never turned offline");
    // Not before three intervals (600 ms) since its last report.
    let m = fleet.machine(&id).await;
    let last = m.last_seen.expect("last seen");
    assert!(drover_net::clock::now_ms() - last > 600);
    assert!(stopped_at.elapsed() <= Duration::from_secs(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_restart_keeps_its_identity_and_makes_no_second_record() {
    let fleet = TestCoordinator::start().await;
    let (_, token) = fleet.token(5, &[]).await;
    let mut agent = fleet.spawn_agent("vm1", Some(&token));
    let first = until_reported(&mut agent, 1).await;
    agent.stop().await.expect("stop");
    let mut again = fleet.spawn_agent("vm1", Some(&token));
    let second = until_reported(&mut again, 1).await;
    assert_eq!(first.machine_id, second.machine_id);
    assert_eq!(fleet.machines().await.len(), 1);
    let tokens = fleet.call(AdminRequest::TokensList).await.tokens().expect("Tokens");
    assert_eq!(tokens[0].uses_left, 4, "the restart did not spend a token use");
    again.stop().await.expect("stop");
}

/// The coordinator runs as its own process here, so it can be killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinator_restart_keeps_machines_and_tokens_and_agents_reconnect_without_enrolling() {
    let fleet = TestCoordinator::start_with(Options { no_server: true, ..Default::default() }).await;
    let spawn = || common::spawn_coordinator(&fleet.state_dir);
    let mut server = spawn();
    let (_, token) = fleet.token(3, &[("role", "web")]).await;
    let (_, spare) = fleet.token(2, &[]).await;
    let mut agents: Vec<_> = (1..=2).map(|i| fleet.spawn_agent(&format!("vm{i}"), Some(&token))).collect();
    let mut ids = Vec::new();
    for a in &mut agents {
        ids.push(until_reported(a, 1).await.machine_id.expect("id"));
    }
    server.kill().expect("SIGKILL the coordinator");
    server.wait().expect("reap");
    // Started again at once: the new process resets the connections of the
    // old one, so the agents need not wait out QUIC's idle timeout (30 s).
    let mut server = spawn();
    for (a, id) in agents.iter_mut().zip(&ids) {
        let s = a.wait_for(Duration::from_secs(20), |s| s.connects >= 2 && s.phase == drover_agent::Phase::Connected).await.expect("agent reconnects");
        assert_eq!(s.machine_id.as_ref(), Some(id), "same identity after the restart");
    }
    let machines = fleet.machines().await;
    assert_eq!(machines.len(), 2, "no machine enrolled twice");
    let tokens = fleet.call(AdminRequest::TokensList).await.tokens().expect("Tokens");
    assert_eq!(tokens.len(), 2, "tokens persist");
    let main = tokens.iter().find(|t| t.uses_total == 3).expect("token");
    assert_eq!(main.uses_left, 1);
    assert!(spare.exists());
    for a in agents {
        a.stop().await.expect("stop");
    }
    server.kill().expect("kill");
    server.wait().expect("reap");
}

/// What the coordinator acknowledged survives a SIGKILL right after the
/// answer: tokens, enrollments, generations (sled's periodic flush alone
/// would lose the last half second).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_coordinator_acknowledged_survives_a_sigkill_right_after() {
    let fleet = TestCoordinator::start_with(Options { no_server: true, ..Default::default() }).await;
    let spawn = || common::spawn_coordinator(&fleet.state_dir);
    let kill = |mut child: std::process::Child| {
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");
    };

    let server = spawn();
    let (token, _) = fleet.token(1, &[]).await;
    kill(server);
    let server = spawn();
    let tokens = fleet.call(AdminRequest::TokensList).await.tokens().expect("Tokens");
    assert_eq!(tokens.len(), 1, "the token survived");

    let (issued, _) = common::enroll_raw(&fleet, &token, "vm1").await;
    kill(server);
    let server = spawn();
    assert_eq!(fleet.machines().await.len(), 1, "the enrollment survived");

    let spec = DeploySpec {
        machine: Some(issued.subject.clone()),
        selector: Default::default(),
        system: SystemSpec::Flake { uri: "path:/fleet".into(), attribute: "web".into() },
        secrets: vec![],
        facts: Default::default(),
        checks: vec![],
        health_deadline_ms: 1000,
        buckets: vec![],
        volumes: vec![],
        goal: Default::default(),
        force_switch: false,
        override_rollout: false,
        reboot: false,
    };
    let targets = fleet.call(AdminRequest::Deploy(spec)).await.deployed().expect("Deployed");
    assert_eq!(targets[0].generation, 1);
    kill(server);
    let server = spawn();
    let detail = fleet.call(AdminRequest::MachinesDetail { id: issued.subject.clone() }).await.machine_detail().expect("MachineDetail");
    assert_eq!(detail.desired_generation, 1, "the generation survived");

    // Concurrent changes share flushes (group commit): each acknowledged
    // one survives all the same.
    let admin = std::sync::Arc::new(fleet.admin().await);
    let mut created = tokio::task::JoinSet::new();
    for i in 0..40u32 {
        let admin = admin.clone();
        created.spawn(async move {
            let spec = TokenSpec { labels: [("n".to_string(), i.to_string())].into(), ttl_ms: 3_600_000, uses: 1 };
            matches!(admin.call(AdminRequest::TokensCreate(spec)).await, Ok(AdminResponse::TokenCreated(_)))
        });
    }
    let mut acknowledged = 0;
    while let Some(ok) = created.join_next().await {
        acknowledged += usize::from(ok.expect("task"));
    }
    assert_eq!(acknowledged, 40);
    kill(server);
    let server = spawn();
    let tokens = fleet.call(AdminRequest::TokensList).await.tokens().expect("Tokens");
    assert_eq!(tokens.len(), 1 + 40, "every concurrently acknowledged token survived");
    kill(server);
}

/// An enrollment whose answer is lost (the agent never sees its
/// certificate) is retried with the same key and token: the retry gets the
/// same machine and a fresh certificate, spends no second use and makes no
/// second record. Once the machine has connected, the token rules hold again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enrollment_retried_after_a_lost_answer_gets_the_same_machine_without_spending_a_use() {
    let fleet = TestCoordinator::start().await;
    let (token, token_file) = fleet.token(1, &[("role", "web")]).await;
    let ca = drover_net::identity::read_cert_pem(&fleet.state_dir.join("ca.pem")).expect("ca");
    let endpoint = drover_net::client::client_endpoint(fleet.addr).expect("endpoint");
    let config = fleet.agent_config("vm1", Some(&token_file));
    let key = drover_net::identity::generate_key().expect("key");
    let enroll = |key| {
        let (endpoint, config, ca, token) = (endpoint.clone(), config.clone(), ca.clone(), token.clone());
        async move { drover_agent::session::enroll_once(&endpoint, &config, &ca, key, drover_protocol::v1::Secret::new(token), "vm1").await }
    };

    // The first answer is "lost": the test drops it.
    let lost = enroll(&key).await.expect("first attempt");
    let retried = enroll(&key).await.expect("the retry is answered, not refused");
    assert_eq!(retried.subject, lost.subject, "the same machine");
    assert_ne!(retried.serial, lost.serial, "with a certificate of its own");
    let machines = fleet.machines().await;
    assert_eq!(machines.len(), 1, "no second record: {machines:?}");
    let tokens = fleet.call(AdminRequest::TokensList).await.tokens().expect("Tokens");
    assert_eq!(tokens[0].uses_left, 0, "one use spent, not two");

    // Another key with the spent token is refused.
    let other = drover_net::identity::generate_key().expect("key");
    let err = enroll(&other).await.expect_err("a second machine is refused");
    assert_eq!(err.code(), Some(drover_protocol::ErrorCode::TokenExhausted), "{err:?}");

    // The agent with that key connects with the retried certificate...
    std::fs::create_dir_all(&config.state_dir).expect("state dir");
    drover_net::identity::write_key_pem(&config.state_dir.join(drover_agent::identity::KEY_FILE), &key).expect("key on disk");
    drover_agent::identity::store_certificate(&config.state_dir, &retried).expect("certificate on disk");
    let health = drover_agent::system::health::SystemHealth::for_agent(&config);
    let mut agent = drover_agent::spawn(config.clone(), health, None).expect("agent");
    let status = until_reported(&mut agent, 1).await;
    assert_eq!(status.machine_id.as_deref(), Some(retried.subject.as_str()));
    agent.stop().await.expect("stop");
    // ...after which the same key and token are an ordinary, refused enrollment.
    let err = enroll(&key).await.expect_err("no retry once connected");
    assert_eq!(err.code(), Some(drover_protocol::ErrorCode::TokenExhausted), "{err:?}");
    assert_eq!(fleet.machines().await.len(), 1);
}

/// A coordinator given by name, as real fleets write it: the agent resolves
/// `localhost:PORT` and verifies the certificate by that name; an agent
/// holding another fleet's CA is told which setting is wrong.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_enrolls_through_a_host_name_and_a_wrong_ca_is_named() {
    let fleet = TestCoordinator::start().await;
    let (_, token) = fleet.token(2, &[]).await;
    let mut config = fleet.agent_config("named", Some(&token));
    config.coordinator = format!("localhost:{}", fleet.addr.port()).parse().expect("host:port");
    assert_eq!(config.server_name(), "localhost");
    let health = drover_agent::system::health::SystemHealth::for_agent(&config);
    let mut agent = drover_agent::spawn(config, health, None).expect("agent starts");
    let status = until_reported(&mut agent, 1).await;
    assert_eq!(fleet.machine(status.machine_id.as_deref().expect("enrolled")).await.hostname, "named");
    agent.stop().await.expect("stop");

    let other = tempfile::tempdir().expect("tempdir");
    let (other_ca, _) = drover_coordinator::pki::Ca::generate("another fleet").expect("CA");
    std::fs::write(other.path().join("ca.pem"), drover_net::identity::cert_pem(&other_ca.cert_der)).expect("write CA");
    let mut config = fleet.agent_config("stranger", Some(&token));
    config.ca_file = other.path().join("ca.pem");
    let health = drover_agent::system::health::SystemHealth::for_agent(&config);
    let mut stranger = drover_agent::spawn(config, health, None).expect("agent starts");
    let status = stranger.wait_for(Duration::from_secs(15), |s| s.last_error.is_some()).await.unwrap_or_else(|s| panic!("no error: {s:?}"));
    let error = status.last_error.expect("error");
    assert!(error.contains("ca_file (--ca-file)"), "{error}");
    stranger.stop().await.expect("stop");
}

/// Health reports are kept in memory and written to the store in batches:
/// what `machines show` says is the newest report all the same, and a
/// coordinator that stops writes the ones it kept, so that the newest
/// report survives the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_newest_health_report_is_shown_at_once_and_survives_a_restart() {
    let mut fleet = TestCoordinator::start().await;
    let (_, token) = fleet.token(1, &[]).await;
    let mut agent = fleet.spawn_agent("vm1", Some(&token));
    let id = until_reported(&mut agent, 2).await.machine_id.expect("id");
    let shown = fleet.machine(&id).await;
    assert_eq!(shown.status, MachineStatus::Online);
    let seen = shown.last_seen.expect("seen");
    assert!(shown.health.is_some(), "the report kept in memory is shown");
    agent.stop().await.expect("stop");
    let last = fleet.machine(&id).await.last_seen.expect("seen");
    assert!(last >= seen);
    fleet.stop().await;
    fleet.serve().await;
    let after = fleet.machine(&id).await;
    assert_eq!(after.last_seen, Some(last), "the newest report was written when the coordinator stopped");
    assert!(after.health.is_some());
}

/// Opens a machine's watch stream after a Hello offering `versions`, and
/// reads its Welcome. The stream lasts while its sending half is kept.
async fn watch_speaking(
    fleet: &TestCoordinator,
    cert_der: &[u8],
    key_der: &[u8],
    versions: drover_protocol::VersionRange,
) -> (quinn::Connection, quinn::SendStream, quinn::RecvStream) {
    use drover_net::stream::{read_frame, write_frame};
    use drover_protocol::v1::{AgentEvent, AgentRequest, AgentResponse, Hello, Request, Response};
    let ca = drover_net::identity::read_cert_pem(&fleet.state_dir.join("ca.pem")).expect("ca");
    let config = drover_net::tls::client_config(&ca, Some((cert_der, key_der)), Duration::from_secs(10)).expect("tls");
    let endpoint = drover_net::client::client_endpoint(fleet.addr).expect("endpoint");
    let conn = endpoint.connect_with(config, fleet.addr, "127.0.0.1").expect("connect").await.expect("handshake");
    let (mut send, mut recv) = conn.open_bi().await.expect("stream");
    write_frame(&mut send, &Request::Hello(Hello { versions, software: "test".into() })).await.expect("hello");
    let ack: Response = read_frame(&mut recv, drover_protocol::MAX_FRAME_LEN).await.expect("hello answer");
    assert!(matches!(ack, Response::Hello(ref a) if a.version == versions.max), "{ack:?}");
    let (mut send, mut events) = conn.open_bi().await.expect("stream");
    write_frame(&mut send, &Request::Agent(AgentRequest::Watch)).await.expect("watch");
    let welcome: Response = read_frame(&mut events, drover_protocol::MAX_FRAME_LEN).await.expect("welcome");
    assert!(matches!(welcome, Response::Agent(AgentResponse::Event(AgentEvent::Welcome { .. }))), "{welcome:?}");
    (conn, send, events)
}

async fn next_event(events: &mut quinn::RecvStream) -> drover_protocol::v1::AgentEvent {
    use drover_protocol::v1::{AgentResponse, Response};
    let frame = tokio::time::timeout(Duration::from_secs(10), drover_net::stream::read_frame::<Response>(events, drover_protocol::MAX_FRAME_LEN))
        .await
        .expect("an event within 10 s")
        .expect("event");
    match frame {
        Response::Agent(AgentResponse::Event(event)) => event,
        other => panic!("expected an event, got {other:?}"),
    }
}

/// A generation recorded while a machine is connected reaches it with its
/// assignment (protocol 9): exactly what FetchAssignment answers, so the
/// machine needs no request. The generation it connected to is only named,
/// and a protocol 8 peer is still told the generation by name and fetches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generation_recorded_while_connected_comes_with_its_assignment_from_protocol_9() {
    use drover_protocol::v1::{AgentEvent, AgentRequest, AgentResponse, Request, Response};
    use drover_protocol::{VersionRange, SUPPORTED};
    let fleet = TestCoordinator::start().await;
    let (token, _) = fleet.token(2, &[("role", "push")]).await;
    let (new, new_key) = common::enroll_raw(&fleet, &token, "push-new").await;
    let (old, old_key) = common::enroll_raw(&fleet, &token, "push-old").await;
    let system = SystemSpec::Flake { uri: "path:/nonexistent".into(), attribute: "x".into() };
    let first = fleet.call(AdminRequest::Deploy(common::deploy_to_role("push", system.clone()))).await.deployed().expect("deploy");
    assert!(first.iter().all(|t| t.generation == 1), "{first:?}");

    let (new_conn, _new_watch, mut new_events) = watch_speaking(&fleet, &new.certificate_der, &new_key, SUPPORTED).await;
    let (_old_conn, _old_watch, mut old_events) = watch_speaking(&fleet, &old.certificate_der, &old_key, VersionRange { min: 6, max: 8 }).await;
    assert_eq!(next_event(&mut new_events).await, AgentEvent::Desired { generation: 1 }, "the generation connected to is named");
    assert_eq!(next_event(&mut old_events).await, AgentEvent::Desired { generation: 1 });

    let spec = DeploySpec { facts: [("site".to_string(), "b".to_string())].into(), ..common::deploy_to_role("push", system) };
    let second = fleet.call(AdminRequest::Deploy(spec)).await.deployed().expect("deploy");
    assert!(second.iter().all(|t| t.generation == 2), "{second:?}");
    let AgentEvent::Assigned { assignment, access } = next_event(&mut new_events).await else { panic!("protocol 9 gets the assignment with the generation") };
    assert_eq!(assignment.generation, 2);
    assert!(assignment.facts_json.contains("\"site\""), "the new generation's assignment: {}", assignment.facts_json);
    let conn = drover_net::CoordinatorConnection { connection: new_conn, version: SUPPORTED.max };
    let fetched = conn.request(&Request::Agent(AgentRequest::FetchAssignment)).await.expect("fetch");
    assert_eq!(fetched, Response::Agent(AgentResponse::Assignment { assignment, access }), "the same as a fetch answers");
    assert_eq!(next_event(&mut old_events).await, AgentEvent::Desired { generation: 2 }, "protocol 8 is told the generation");
}
