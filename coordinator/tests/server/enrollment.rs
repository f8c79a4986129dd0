//! Enrollment in one handshake (protocol 14): the connection an agent
//! enrolled on, with a CSR bound to that connection's TLS session, goes on
//! as the new machine — deployments, health, revocation — and a token
//! alone still makes nobody another machine: a CSR carried to another
//! connection is refused there, and a certificate got by replaying an
//! unbound one leaves the connection anonymous.

use crate::common;
use crate::security::sample_health;

use std::time::Duration;

use common::{eventually, raw_connect, TestCoordinator};
use drover_net::identity;
use drover_net::stream::read_frame_for;
use drover_net::{ClientError, CoordinatorConnection};
use drover_protocol::v1::*;
use drover_protocol::{ErrorCode, MAX_FRAME_LEN};

fn refused_code(r: Result<Response, ClientError>) -> ErrorCode {
    match r {
        Err(e) => e.code().unwrap_or_else(|| panic!("no code in {e:?}")),
        Ok(other) => panic!("expected a refusal, got {other:?}"),
    }
}

/// The coordinator's connection counter of `kind`.
fn connections(fleet: &TestCoordinator, kind: &str) -> u64 {
    let coordinator = &fleet.handle.as_ref().expect("serving").coordinator;
    let text = coordinator.metrics.render(coordinator);
    let prefix = format!("drover_connections_total{{kind=\"{kind}\"}} ");
    text.lines().find_map(|l| l.strip_prefix(&prefix)).map_or(0, |v| v.trim().parse().expect("a count"))
}

/// Whether machine `id` has a watch stream open.
fn watching(fleet: &TestCoordinator, id: &str) -> bool {
    fleet.handle.as_ref().expect("serving").coordinator.live.watching(id)
}

async fn next_event(events: &mut quinn::RecvStream, version: u16) -> AgentEvent {
    let frame = tokio::time::timeout(Duration::from_secs(10), read_frame_for::<Response>(events, MAX_FRAME_LEN, &[], version))
        .await
        .expect("an event within 10 s")
        .expect("event");
    match frame {
        Response::Agent(AgentResponse::Event(e)) => e,
        other => panic!("not an event: {other:?}"),
    }
}

fn uses_left(tokens: &[TokenInfo]) -> u32 {
    tokens.iter().map(|t| t.uses_left).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_machine_enrolled_on_its_connection_is_a_full_member_without_a_second_handshake() {
    let fleet = TestCoordinator::start().await;
    let (token, _) = fleet.token(1, &[("role", "web")]).await;
    let ca = identity::read_cert_pem(&fleet.state_dir.join("ca.pem")).expect("ca");
    let endpoint = drover_net::client::client_endpoint(fleet.addr).expect("endpoint");
    let config = fleet.agent_config("vm1", None);
    let key = identity::generate_key().expect("key");
    let (issued, kept) = drover_agent::session::enroll_keeping(&endpoint, &config, &ca, &key, Secret::new(token), "vm1").await.expect("enrolled");
    let conn: CoordinatorConnection = kept.expect("a coordinator of protocol 14 keeps the connection");
    assert!(conn.version >= 14, "{}", conn.version);
    let id = issued.subject.clone();

    // On the same connection, made without a certificate: welcomed as the
    // machine, its health recorded.
    let (_watch, mut events) = conn.open(&Request::Agent(AgentRequest::Watch)).await.expect("watch");
    match next_event(&mut events, conn.version).await {
        AgentEvent::Welcome { machine_id, .. } => assert_eq!(machine_id, id),
        other => panic!("expected the welcome, got {other:?}"),
    }
    let ack = conn.request(&Request::Agent(AgentRequest::Report(sample_health()))).await.expect("report");
    assert!(matches!(ack, Response::Agent(AgentResponse::Ack)), "{ack:?}");
    let machine = fleet.machine(&id).await;
    assert!(machine.health.is_some() && machine.status == MachineStatus::Online, "{machine:?}");
    assert!(watching(&fleet, &id), "its watch stream is the machine's");

    // A deployment reaches it there, and its outcome is taken.
    let mut spec = common::deploy_to_role("web", SystemSpec::Flake { uri: "/srv/flake".into(), attribute: "vm1".into() });
    spec.machine = Some(id.clone());
    spec.selector = Default::default();
    fleet.call(AdminRequest::Deploy(spec)).await;
    let assignment = match next_event(&mut events, conn.version).await {
        AgentEvent::Assigned { assignment, .. } => assignment,
        other => panic!("expected the assignment, got {other:?}"),
    };
    assert_eq!(assignment.generation, 1);
    let report = DeploymentReport {
        generation: 1,
        step: DeployStep::Succeeded,
        message: "switched".into(),
        output_tail: String::new(),
        system_path: Some("/nix/store/00000000000000000000000000000000-nixos-system-vm1".into()),
        volumes: vec![],
    };
    let ack = conn.request(&Request::Agent(AgentRequest::ReportDeployment(report))).await.expect("outcome");
    assert!(matches!(ack, Response::Agent(AgentResponse::Ack)), "{ack:?}");
    let shown = fleet.call(AdminRequest::DeploymentsShow { id: format!("d-{id}-1") }).await;
    assert!(format!("{shown:?}").contains("Succeeded"), "{shown:?}");

    // One connection in all: anonymous, gone on as the machine.
    assert_eq!(connections(&fleet, "anonymous"), 1);
    assert_eq!(connections(&fleet, "enrolled_in_place"), 1);
    assert_eq!(connections(&fleet, "machine"), 0, "no second handshake");

    // Revoking the machine closes that connection.
    fleet.call(AdminRequest::MachinesRevoke { id: id.clone() }).await;
    let closed = tokio::time::timeout(Duration::from_secs(10), conn.connection.closed()).await.expect("closed within 10 s");
    assert_eq!(drover_net::client::connection_code(&closed), Some(ErrorCode::Revoked), "{closed:?}");

    // The agent itself enrolls, reports and deploys on one connection too.
    let (_, token_file) = fleet.token(1, &[("role", "web")]).await;
    let mut agent = fleet.spawn_agent("vm2", Some(&token_file));
    let status = common::until_reported(&mut agent, 2).await;
    assert_eq!(status.connects, 1, "{status:?}");
    assert_eq!(connections(&fleet, "anonymous"), 2);
    assert_eq!(connections(&fleet, "enrolled_in_place"), 2);
    assert_eq!(connections(&fleet, "machine"), 0, "the agent did not connect again with its certificate");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_alone_cannot_make_a_connection_another_machine() {
    let fleet = TestCoordinator::start().await;
    let (token, _) = fleet.token(2, &[("role", "web")]).await;
    let enroll = |token: &str, csr_der: Vec<u8>| Request::Enroll(EnrollRequest { token: Secret::new(token), csr_der, hostname: "vm".into() });
    let tokens = || async { fleet.call(AdminRequest::TokensList).await.tokens().expect("tokens") };

    // The victim's CSR, bound to the victim's connection, carried by the
    // token's holder to a connection of its own: refused, no use spent,
    // and that connection is still nobody.
    let victim = identity::generate_key().expect("key");
    let victims = raw_connect(&fleet, None).await.expect("victim's connection");
    let binding = identity::enrollment_binding(&victims.connection).expect("a binding");
    let bound = identity::csr_der_bound(&victim, "victim", Some(&binding)).expect("csr");
    let thief = raw_connect(&fleet, None).await.expect("thief's connection");
    assert_ne!(identity::enrollment_binding(&thief.connection).as_deref(), Some(binding.as_str()), "each session its own binding");
    let refused = thief.request(&enroll(&token, bound.clone())).await;
    assert_eq!(refused_code(refused), ErrorCode::Unauthenticated);
    assert_eq!(uses_left(&tokens().await), 2, "nothing spent");
    assert!(fleet.machines().await.is_empty());
    assert_eq!(refused_code(thief.request(&Request::Agent(AgentRequest::Report(sample_health()))).await), ErrorCode::Unauthenticated);

    // On its own connection the same CSR enrolls the victim; its answer is
    // "lost" (the connection closed). Replayed elsewhere — where the retry
    // of a lost answer would otherwise hand out the victim's machine — it
    // is refused again.
    let enrolled = victims.request(&enroll(&token, bound.clone())).await.expect("the victim enrolls");
    let Response::Enrolled(issued) = enrolled else { panic!("{enrolled:?}") };
    victims.connection.close(0u32.into(), b"lost");
    let refused = thief.request(&enroll(&token, bound)).await;
    assert_eq!(refused_code(refused), ErrorCode::Unauthenticated);

    // A CSR without a binding (as an agent before protocol 14 sends), of
    // the victim's key and replayed with the token, takes the retry path
    // and gets a certificate for that key — which the thief cannot use
    // without the key — and the connection stays anonymous.
    let unbound = identity::csr_der(&victim, "victim").expect("csr");
    let replay = raw_connect(&fleet, None).await.expect("connection");
    let answer = replay.request(&enroll(&token, unbound)).await.expect("the retry path answers");
    let Response::Enrolled(again) = answer else { panic!("{answer:?}") };
    assert_eq!(again.subject, issued.subject, "the same machine, a certificate for the victim's key");
    for request in [Request::Agent(AgentRequest::Report(sample_health())), Request::Agent(AgentRequest::FetchAssignment)] {
        assert_eq!(refused_code(replay.request(&request).await), ErrorCode::Unauthenticated, "{request:?}");
    }
    let (_watch, mut events) = replay.open(&Request::Agent(AgentRequest::Watch)).await.expect("stream");
    let welcome = read_frame_for::<Response>(&mut events, MAX_FRAME_LEN, &[], replay.version).await.expect("an answer");
    assert!(matches!(welcome, Response::Error(ref e) if e.code == ErrorCode::Unauthenticated), "{welcome:?}");

    // The token's holder with a key of its own becomes a machine of its
    // own, on its connection: not the victim.
    let own = identity::generate_key().expect("key");
    let binding = identity::enrollment_binding(&thief.connection).expect("binding");
    let answer = thief.request(&enroll(&token, identity::csr_der_bound(&own, "thief", Some(&binding)).expect("csr"))).await.expect("enrolls");
    let Response::Enrolled(mine) = answer else { panic!("{answer:?}") };
    assert_ne!(mine.subject, issued.subject);
    let (_watch, mut events) = thief.open(&Request::Agent(AgentRequest::Watch)).await.expect("watch");
    match next_event(&mut events, thief.version).await {
        AgentEvent::Welcome { machine_id, .. } => assert_eq!(machine_id, mine.subject, "its own machine"),
        other => panic!("{other:?}"),
    }
    assert!(eventually(Duration::from_secs(5), || async { watching(&fleet, &mine.subject) }).await);
    assert!(!watching(&fleet, &issued.subject), "the victim's machine has no connection");
    assert_eq!(uses_left(&tokens().await), 0, "one use each: the victim, the thief's own machine");
}
