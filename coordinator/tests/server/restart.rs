//! A coordinator killed and started again: the agents' connections to the
//! old process end at once — the new one answers their packets with
//! stateless resets keyed from the server key it keeps across restarts —
//! instead of hanging until QUIC's idle timeout (30 s for agents).

use crate::common;

use std::time::Duration;

use common::{eventually, Options, Serving, TestCoordinator};
use drover_protocol::v1::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_coordinator_resets_the_connections_of_its_previous_life() {
    let fleet = TestCoordinator::start_with(Options { no_server: true, ..Default::default() }).await;
    let mut server = Serving(common::spawn_coordinator(&fleet.state_dir));
    let (token, _) = fleet.token(1, &[]).await;
    assert!(eventually(Duration::from_secs(10), || async { common::raw_connect(&fleet, None).await.is_ok() }).await, "the coordinator serves");
    let (issued, key) = common::enroll_raw(&fleet, &token, "vm1").await;
    let ca = drover_net::identity::read_cert_pem(&fleet.state_dir.join("ca.pem")).expect("ca");
    // An agent's idle timeout: without the reset it would hang for 30 s.
    let config = drover_net::tls::client_config(&ca, Some((&issued.certificate_der, &key)), Duration::from_secs(30)).expect("tls");
    let endpoint = drover_net::client::client_endpoint(fleet.addr).expect("endpoint");
    let conn = drover_net::CoordinatorConnection::connect(&endpoint, config, fleet.addr, "127.0.0.1", "test", Duration::from_secs(5)).await.expect("connect");
    assert!(matches!(conn.request(&Request::Agent(AgentRequest::FetchAssignment)).await, Ok(Response::Agent(_))));

    server.0.kill().expect("SIGKILL the coordinator");
    let _ = server.0.wait();
    let _again = Serving(common::spawn_coordinator(&fleet.state_dir));
    assert!(eventually(Duration::from_secs(10), || async { common::raw_connect(&fleet, None).await.is_ok() }).await, "the coordinator serves again");

    // The old connection's next packet meets the new process.
    let started = std::time::Instant::now();
    let lost = tokio::time::timeout(Duration::from_secs(20), conn.request(&Request::Agent(AgentRequest::FetchAssignment)))
        .await
        .expect("the connection ends long before the idle timeout");
    assert!(lost.is_err(), "no answer on the old connection: {lost:?}");
    assert_eq!(conn.connection.close_reason(), Some(quinn::ConnectionError::Reset), "ended by a stateless reset");
    assert!(started.elapsed() < Duration::from_secs(20));
}
