//! Attacks on the trusted channel, over real QUIC on 127.0.0.1: foreign
//! certificates, anonymous connections, wrong roles, revoked machines,
//! version mismatches and hostile frames.

use crate::common;

use std::time::{Duration, Instant};

use common::{enroll_raw, raw_connect, raw_connect_with_ca, until_reported, TestCoordinator};
use drover_coordinator::pki::Ca;
use drover_net::identity::{self, Subject};
use drover_net::stream::read_frame;
use drover_protocol::frame::{self, MAX_FRAME_LEN};
use drover_protocol::v1::*;
use drover_protocol::{ErrorCode, VersionRange};

fn refused_code(r: Result<Response, drover_net::ClientError>) -> ErrorCode {
    match r {
        Err(e) => e.code().unwrap_or_else(|| panic!("no code in {e:?}")),
        Ok(other) => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_from_another_ca_is_refused() {
    let fleet = TestCoordinator::start().await;
    let (token, _) = fleet.token(1, &[]).await;
    let (issued, key) = enroll_raw(&fleet, &token, "vm1").await;
    // The genuine certificate works.
    let ok = raw_connect(&fleet, Some((&issued.certificate_der, &key))).await.expect("genuine cert");
    let answer = ok.request(&Request::Agent(AgentRequest::Report(sample_health()))).await.expect("report");
    assert_eq!(answer, Response::Agent(AgentResponse::Ack));
    // A rogue CA signs a certificate claiming the same machine (and one
    // claiming to be the root admin).
    let (rogue, _) = Ca::generate("rogue").expect("rogue ca");
    let rogue_key = identity::generate_key().expect("key");
    let csr = identity::csr_der(&rogue_key, "x").expect("csr");
    for subject in [Subject::Machine(issued.subject.clone()), Subject::Admin("root".into())] {
        let forged = rogue.sign_client(&csr, &subject, Duration::from_secs(600)).expect("forge");
        let fleet_ca = identity::read_cert_pem(&fleet.state_dir.join("ca.pem")).expect("ca");
        let result = raw_connect_with_ca(&fleet, &fleet_ca, Some((&forged.certificate_der, &rogue_key.serialize_der()))).await;
        match result {
            Err(drover_net::ClientError::Connection { .. }) | Err(drover_net::ClientError::Stream(_)) => {}
            other => panic!("forged {subject:?} certificate was not refused: {other:?}"),
        }
    }
}

pub(crate) fn sample_health() -> HealthReport {
    HealthReport {
        hostname: "raw".into(),
        uptime_secs: 1,
        load_average: [0.0; 3],
        cpu_count: 1,
        cpu_usage_percent: 0.0,
        memory_total_bytes: 1,
        memory_used_bytes: 1,
        disks: vec![],
        failed_units: None,
        agent_version: "test".into(),
        system_path: None,
        boot_id: None,
        booted_system: None,
        pending_system: None,
        nix_store: None,
        addresses: vec![],
        volumes: vec![],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_without_a_certificate_can_only_say_hello_and_enroll() {
    let fleet = TestCoordinator::start().await;
    let anon = raw_connect(&fleet, None).await.expect("anonymous hello works");
    for request in [
        Request::Agent(AgentRequest::Watch),
        Request::Agent(AgentRequest::Report(sample_health())),
        Request::Agent(AgentRequest::Renew { csr_der: vec![] }),
        Request::Admin(AdminRequest::MachinesList { selector: Default::default() }),
        Request::Admin(AdminRequest::TokensCreate(TokenSpec { labels: Default::default(), ttl_ms: 1000, uses: 1 })),
        Request::Admin(AdminRequest::AdminsAdd { name: "eve".into(), role: Role::Admin, csr_der: vec![] }),
    ] {
        assert_eq!(refused_code(anon.request(&request).await), ErrorCode::Unauthenticated, "{request:?}");
    }
    // Enroll is allowed (and refused here only for its unknown token).
    let key = identity::generate_key().expect("key");
    let enroll = Request::Enroll(EnrollRequest { token: Secret::new("drt_nope"), csr_der: identity::csr_der(&key, "x").expect("csr"), hostname: "vm".into() });
    assert_eq!(refused_code(anon.request(&enroll).await), ErrorCode::TokenUnknown);
    // Nothing was created.
    assert!(fleet.machines().await.is_empty());
    let admins = fleet.call(AdminRequest::AdminsList).await;
    assert!(matches!(admins, AdminResponse::Admins(a) if a.len() == 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_whose_first_request_is_not_hello_is_closed() {
    let fleet = TestCoordinator::start().await;
    let ca = identity::read_cert_pem(&fleet.state_dir.join("ca.pem")).expect("ca");
    let config = drover_net::tls::client_config(&ca, None, Duration::from_secs(5)).expect("tls");
    let endpoint = drover_net::client::client_endpoint(fleet.addr).expect("endpoint");
    let conn = endpoint.connect_with(config, fleet.addr, "127.0.0.1").expect("connect").await.expect("handshake");
    let (mut send, mut recv) = conn.open_bi().await.expect("stream");
    drover_net::stream::write_frame(&mut send, &Request::Admin(AdminRequest::MachinesList { selector: Default::default() })).await.expect("write");
    let answer: Response = read_frame(&mut recv, MAX_FRAME_LEN).await.expect("answer");
    assert!(matches!(answer, Response::Error(e) if e.code == ErrorCode::BadRequest));
    let reason = tokio::time::timeout(Duration::from_secs(5), conn.closed()).await.expect("closed");
    assert_eq!(drover_net::client::connection_code(&reason), Some(ErrorCode::BadRequest));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_machine_certificate_cannot_make_admin_requests() {
    let fleet = TestCoordinator::start().await;
    let (token, _) = fleet.token(2, &[]).await;
    let (issued, key) = enroll_raw(&fleet, &token, "vm1").await;
    let conn = raw_connect(&fleet, Some((&issued.certificate_der, &key))).await.expect("connect");
    for request in [
        AdminRequest::MachinesList { selector: Default::default() },
        AdminRequest::MachinesRevoke { id: issued.subject.clone() },
        AdminRequest::TokensCreate(TokenSpec { labels: Default::default(), ttl_ms: 1000, uses: 1 }),
    ] {
        assert_eq!(refused_code(conn.request(&Request::Admin(request)).await), ErrorCode::PermissionDenied);
    }
    // Nor enroll again to mint more identities.
    let key2 = identity::generate_key().expect("key");
    let enroll =
        Request::Enroll(EnrollRequest { token: Secret::new(token.clone()), csr_der: identity::csr_der(&key2, "x").expect("csr"), hostname: "vm2".into() });
    assert_eq!(refused_code(conn.request(&enroll).await), ErrorCode::BadRequest);
    assert_eq!(fleet.machines().await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_viewer_lists_but_cannot_revoke_operator_can() {
    let fleet = TestCoordinator::start().await;
    let (token, _) = fleet.token(1, &[]).await;
    let (issued, _) = enroll_raw(&fleet, &token, "vm1").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut bundles = Vec::new();
    for (name, role) in [("vera", "viewer"), ("otto", "operator")] {
        let out = dir.path().join(format!("{name}.bundle"));
        let status = std::process::Command::new(env!("CARGO_BIN_EXE_drover"))
            .args(["admins", "add", name, "--role", role, "--out"])
            .arg(&out)
            .env("DROVER_ADMIN_BUNDLE", &fleet.bundle_path)
            .status()
            .expect("drover admins add");
        assert!(status.success());
        bundles.push(drover_coordinator::bundle::AdminBundle::load(&out).expect("new bundle"));
    }
    let viewer = drover_coordinator::client::AdminClient::connect(&bundles[0]).await.expect("viewer");
    let list = viewer.call(AdminRequest::MachinesList { selector: Default::default() }).await.expect("viewer lists");
    assert!(matches!(list, AdminResponse::Machines(m) if m.len() == 1));
    let denied = viewer.call(AdminRequest::MachinesRevoke { id: issued.subject.clone() }).await.expect_err("viewer revokes");
    assert_eq!(denied.code(), Some(ErrorCode::PermissionDenied));
    assert!(denied.to_string().contains("viewer"), "{denied}");
    let denied =
        viewer.call(AdminRequest::TokensCreate(TokenSpec { labels: Default::default(), ttl_ms: 1000, uses: 1 })).await.expect_err("viewer creates a token");
    assert_eq!(denied.code(), Some(ErrorCode::PermissionDenied));
    assert_ne!(fleet.machine(&issued.subject).await.status, MachineStatus::Revoked);
    let operator = drover_coordinator::client::AdminClient::connect(&bundles[1]).await.expect("operator");
    let denied = operator.call(AdminRequest::AdminsAdd { name: "eve".into(), role: Role::Admin, csr_der: vec![] }).await.expect_err("operator adds an admin");
    assert_eq!(denied.code(), Some(ErrorCode::PermissionDenied));
    operator.call(AdminRequest::MachinesRevoke { id: issued.subject.clone() }).await.expect("operator revokes");
    assert_eq!(fleet.machine(&issued.subject).await.status, MachineStatus::Revoked);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_closes_the_live_connection_within_a_second_and_refuses_reconnects() {
    let fleet = TestCoordinator::start().await;
    let (_, token) = fleet.token(1, &[]).await;
    let mut agent = fleet.spawn_agent("vm1", Some(&token));
    let id = until_reported(&mut agent, 1).await.machine_id.expect("id");
    let admin = fleet.admin().await;
    let started = Instant::now();
    admin.call(AdminRequest::MachinesRevoke { id: id.clone() }).await.expect("revoke");
    let status = agent.wait_for(Duration::from_secs(1), |s| s.phase == drover_agent::Phase::Revoked).await.expect("agent sees the revocation within a second");
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(status.machine_id.as_deref(), Some(id.as_str()));
    assert!(matches!(agent.join().await, Err(drover_agent::AgentError::Revoked(_))));
    assert_eq!(fleet.machine(&id).await.status, MachineStatus::Revoked);

    // A restarted agent with the same identity is refused at once.
    let again = fleet.spawn_agent("vm1", Some(&token));
    let ended = tokio::time::timeout(Duration::from_secs(10), again.join()).await.expect("agent ends");
    assert!(matches!(ended, Err(drover_agent::AgentError::Revoked(_))), "{ended:?}");

    // A raw connection with its certificate is closed with the Revoked code,
    // so neither renewal nor reports get through.
    let cert = identity::read_cert_pem(&fleet.dir.path().join("agents/vm1/cert.pem")).expect("cert");
    let key = identity::read_key_pem(&fleet.dir.path().join("agents/vm1/key.pem")).expect("key");
    let err = raw_connect(&fleet, Some((&cert, &key.serialize_der()))).await.expect_err("refused");
    assert_eq!(err.code(), Some(ErrorCode::Revoked), "{err:?}");
    let m = fleet.machine(&id).await;
    assert_eq!(m.status, MachineStatus::Revoked);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_mismatch_is_refused_naming_both_versions() {
    let fleet = TestCoordinator::start().await;
    let ca = identity::read_cert_pem(&fleet.state_dir.join("ca.pem")).expect("ca");
    let config = drover_net::tls::client_config(&ca, None, Duration::from_secs(5)).expect("tls");
    let endpoint = drover_net::client::client_endpoint(fleet.addr).expect("endpoint");
    let conn = endpoint.connect_with(config, fleet.addr, "127.0.0.1").expect("connect").await.expect("handshake");
    let (mut send, mut recv) = conn.open_bi().await.expect("stream");
    // Versions newer than any this build speaks.
    let future = VersionRange { min: drover_protocol::SUPPORTED.max + 1, max: drover_protocol::SUPPORTED.max + 2 };
    let hello = Request::Hello(Hello { versions: future, software: "future".into() });
    drover_net::stream::write_frame(&mut send, &hello).await.expect("write");
    let answer: Response = read_frame(&mut recv, MAX_FRAME_LEN).await.expect("answer");
    let Response::Error(e) = answer else { panic!("expected a refusal, got {answer:?}") };
    assert_eq!(e.code, ErrorCode::VersionMismatch);
    assert!(e.message.contains(&future.to_string()), "names the client's versions: {}", e.message);
    assert!(e.message.contains(&format!("this side speaks {}", drover_protocol::SUPPORTED)), "names the coordinator's version: {}", e.message);
    let reason = tokio::time::timeout(Duration::from_secs(5), conn.closed()).await.expect("closed");
    assert_eq!(drover_net::client::connection_code(&reason), Some(ErrorCode::VersionMismatch));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_frames_and_garbage_close_only_their_stream() {
    let fleet = TestCoordinator::start().await;
    let (_, token) = fleet.token(1, &[]).await;
    let mut agent = fleet.spawn_agent("vm1", Some(&token));
    until_reported(&mut agent, 1).await;
    let (token2, _) = fleet.token(1, &[]).await;
    let (issued, key) = enroll_raw(&fleet, &token2, "attacker").await;
    for identity in [None, Some((issued.certificate_der.as_slice(), key.as_slice()))] {
        let conn = raw_connect(&fleet, identity).await.expect("connect");
        let oversized = (u32::MAX).to_be_bytes().to_vec();
        let mut garbage = 40u32.to_be_bytes().to_vec();
        garbage.extend(std::iter::repeat_n(0xEEu8, 40));
        let anonymous_too_big = ((frame::MAX_UNAUTHENTICATED_FRAME_LEN + 1) as u32).to_be_bytes().to_vec();
        for bytes in [oversized, garbage, anonymous_too_big] {
            let (mut send, mut recv) = conn.connection.open_bi().await.expect("stream");
            send.write_all(&bytes).await.expect("write");
            // Where the length is within the limit, the coordinator waits for
            // a payload that never comes; finishing the stream ends the wait.
            let _ = send.finish();
            let answer = tokio::time::timeout(Duration::from_secs(5), read_frame::<Response>(&mut recv, MAX_FRAME_LEN))
                .await
                .expect("the coordinator answers a bad stream");
            match answer {
                Ok(Response::Error(e)) => assert_eq!(e.code, ErrorCode::BadRequest, "{}", e.message),
                other => panic!("expected BadRequest, got {other:?}"),
            }
        }
        // The same connection still serves well-formed requests.
        let key = identity::generate_key().expect("key");
        let probe = match identity {
            None => Request::Enroll(EnrollRequest { token: Secret::new("drt_x"), csr_der: identity::csr_der(&key, "x").expect("csr"), hostname: "x".into() }),
            Some(_) => Request::Agent(AgentRequest::Report(sample_health())),
        };
        let answer = conn.request(&probe).await;
        match identity {
            None => assert_eq!(refused_code(answer), ErrorCode::TokenUnknown),
            Some(_) => assert_eq!(answer.expect("report"), Response::Agent(AgentResponse::Ack)),
        }
    }
    // Every other agent is still served.
    let before = agent.status.borrow().reports;
    until_reported(&mut agent, before + 2).await;
    assert_eq!(fleet.machines().await.len(), 2);
}

/// A client session store that counts the TLS 1.3 tickets it is given.
#[derive(Debug)]
struct CountingStore {
    inner: rustls::client::ClientSessionMemoryCache,
    tickets: std::sync::atomic::AtomicUsize,
}

impl rustls::client::ClientSessionStore for CountingStore {
    fn set_kx_hint(&self, server_name: rustls::pki_types::ServerName<'static>, group: rustls::NamedGroup) {
        self.inner.set_kx_hint(server_name, group)
    }
    fn kx_hint(&self, server_name: &rustls::pki_types::ServerName<'_>) -> Option<rustls::NamedGroup> {
        self.inner.kx_hint(server_name)
    }
    fn set_tls12_session(&self, server_name: rustls::pki_types::ServerName<'static>, value: rustls::client::Tls12ClientSessionValue) {
        self.inner.set_tls12_session(server_name, value)
    }
    fn tls12_session(&self, server_name: &rustls::pki_types::ServerName<'_>) -> Option<rustls::client::Tls12ClientSessionValue> {
        self.inner.tls12_session(server_name)
    }
    fn remove_tls12_session(&self, server_name: &rustls::pki_types::ServerName<'static>) {
        self.inner.remove_tls12_session(server_name)
    }
    fn insert_tls13_ticket(&self, server_name: rustls::pki_types::ServerName<'static>, value: rustls::client::Tls13ClientSessionValue) {
        self.tickets.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.insert_tls13_ticket(server_name, value)
    }
    fn take_tls13_ticket(&self, server_name: &rustls::pki_types::ServerName<'static>) -> Option<rustls::client::Tls13ClientSessionValue> {
        self.inner.take_tls13_ticket(server_name)
    }
}

/// A client that keeps sessions in `store`, with or without a certificate.
fn resuming_client(ca: &[u8], identity: Option<(&[u8], &[u8])>, store: std::sync::Arc<CountingStore>) -> quinn::ClientConfig {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from(ca.to_vec())).expect("ca");
    let builder = rustls::ClientConfig::builder_with_provider(drover_net::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls 1.3")
        .with_root_certificates(roots);
    let mut tls = match identity {
        Some((cert, key)) => builder
            .with_client_auth_cert(vec![CertificateDer::from(cert.to_vec())], PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.to_vec())))
            .expect("identity"),
        None => builder.with_no_client_auth(),
    };
    tls.alpn_protocols = vec![drover_protocol::ALPN.to_vec()];
    tls.resumption = rustls::client::Resumption::store(store);
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).expect("quic");
    let mut config = quinn::ClientConfig::new(std::sync::Arc::new(quic));
    config.transport_config(drover_net::tls::transport(Duration::from_secs(10)));
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_session_tickets_are_issued_and_a_client_without_its_certificate_is_anonymous() {
    let fleet = TestCoordinator::start().await;
    let (token, _) = fleet.token(1, &[]).await;
    let (issued, key) = enroll_raw(&fleet, &token, "vm1").await;
    let ca = identity::read_cert_pem(&fleet.state_dir.join("ca.pem")).expect("ca");
    let store = std::sync::Arc::new(CountingStore { inner: rustls::client::ClientSessionMemoryCache::new(16), tickets: 0.into() });
    let endpoint = drover_net::client::client_endpoint(fleet.addr).expect("endpoint");
    let server_name = fleet.addr.ip().to_string();

    // A full handshake with the machine's certificate: it may act as the
    // machine, and is given no ticket to come back without it.
    let config = resuming_client(&ca, Some((&issued.certificate_der, &key)), store.clone());
    let conn = drover_net::CoordinatorConnection::connect(&endpoint, config, fleet.addr, &server_name, "test", Duration::from_secs(5))
        .await
        .expect("connect as the machine");
    let answer = conn.request(&Request::Agent(AgentRequest::FetchAssignment)).await.expect("fetch");
    assert_eq!(answer, Response::Agent(AgentResponse::NoAssignment));
    // A second round trip: tickets, had any been sent, arrive after the handshake.
    conn.request(&Request::Agent(AgentRequest::FetchAssignment)).await.expect("fetch again");
    conn.connection.close(0u32.into(), b"done");
    assert_eq!(store.tickets.load(std::sync::atomic::Ordering::SeqCst), 0, "the coordinator issued session tickets");

    // The same session store without the certificate: a full handshake
    // again, so the client is anonymous and may not act as the machine.
    let config = resuming_client(&ca, None, store.clone());
    let conn = drover_net::CoordinatorConnection::connect(&endpoint, config, fleet.addr, &server_name, "test", Duration::from_secs(5))
        .await
        .expect("connect without a certificate");
    assert!(conn.connection.peer_identity().is_some(), "the server's certificate was presented (a full handshake)");
    assert_eq!(refused_code(conn.request(&Request::Agent(AgentRequest::FetchAssignment)).await), ErrorCode::Unauthenticated);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_maximum_are_refused_until_one_closes() {
    let mut fleet = TestCoordinator::start_with(common::Options { no_server: true, ..Default::default() }).await;
    fleet.config.max_connections = 2;
    fleet.serve().await;
    let first = raw_connect(&fleet, None).await.expect("first");
    let _second = raw_connect(&fleet, None).await.expect("second");
    let third = raw_connect(&fleet, None).await.expect_err("a third is refused");
    assert!(third.to_string().contains("refused"), "{third}");
    first.connection.close(0u32.into(), b"done");
    let again = common::eventually(Duration::from_secs(10), || async { raw_connect(&fleet, None).await.is_ok() }).await;
    assert!(again, "a place freed by a closed connection is taken again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_connections_at_their_cap_leave_agents_and_admins_working() {
    let mut fleet = TestCoordinator::start_with(common::Options { no_server: true, ..Default::default() }).await;
    fleet.config.limits.anonymous_connections = 3;
    fleet.config.limits.anonymous_per_address = 2;
    fleet.serve().await;
    let (_, token) = fleet.token(1, &[]).await;
    let mut agent = fleet.spawn_agent("vm1", Some(&token));
    let before = until_reported(&mut agent, 1).await.reports;

    let _first = raw_connect(&fleet, None).await.expect("first");
    let _second = raw_connect(&fleet, None).await.expect("second");
    let third = raw_connect(&fleet, None).await.expect_err("a third from one address is refused");
    assert_eq!(third.code(), Some(ErrorCode::Unavailable), "{third}");

    let machines = fleet.call(AdminRequest::MachinesList { selector: Default::default() }).await.machines().expect("machines");
    assert_eq!(machines.len(), 1, "admins keep working");
    until_reported(&mut agent, before + 2).await;
}
