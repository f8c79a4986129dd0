//! Certificate renewal over the authenticated connection: with a 30-second
//! lifetime an agent stays connected across three lifetimes, and after them
//! it reconnects with its newest certificate.

use crate::common;

use std::time::Duration;

use common::{raw_connect, until_reported, Options, TestCoordinator};
use drover_net::identity::{self, PeerCertificate};
use drover_protocol::ErrorCode;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_stays_connected_across_three_certificate_lifetimes() {
    let lifetime = Duration::from_secs(30);
    let fleet =
        TestCoordinator::start_with(Options { machine_cert_lifetime: Some(lifetime), health_interval: Duration::from_secs(1), ..Default::default() }).await;
    let (_, token) = fleet.token(1, &[]).await;
    let mut agent = fleet.spawn_agent("vm1", Some(&token));
    let first = until_reported(&mut agent, 1).await;
    let id = first.machine_id.clone().expect("id");
    let first_serial = first.serial.clone().expect("serial");
    let cert_path = fleet.dir.path().join("agents/vm1/cert.pem");
    let key_path = fleet.dir.path().join("agents/vm1/key.pem");
    let first_cert = identity::read_cert_pem(&cert_path).expect("first cert");

    // Renewal at two thirds: 20 s, 40 s, 60 s, 80 s.
    let status = agent.wait_for(3 * lifetime + Duration::from_secs(15), |s| s.renewals >= 4).await.unwrap_or_else(|s| panic!("not renewed four times: {s:?}"));
    assert_eq!(status.connects, 1, "the one connection stayed up: {status:?}");
    assert_eq!(status.phase, drover_agent::Phase::Connected);
    assert!(status.last_error.is_none(), "{status:?}");
    let m = fleet.machine(&id).await;
    assert_eq!(m.status, drover_protocol::v1::MachineStatus::Online);
    assert_ne!(m.cert_serial, first_serial);
    assert_eq!(Some(&m.cert_serial), status.serial.as_ref());
    let newest = PeerCertificate::parse(&identity::read_cert_pem(&cert_path).expect("cert")).expect("parse");
    assert_eq!(newest.serial, m.cert_serial, "the agent stored the certificate the coordinator recorded");

    // The first certificate has expired: TLS refuses it.
    let key = identity::read_key_pem(&key_path).expect("key").serialize_der();
    let err = raw_connect(&fleet, Some((&first_cert, &key))).await.expect_err("expired certificate");
    assert_ne!(err.code(), Some(ErrorCode::Revoked));

    // A restarted agent connects with its newest certificate, without enrolling.
    agent.stop().await.expect("stop");
    let mut again = fleet.spawn_agent("vm1", None);
    let s = until_reported(&mut again, 1).await;
    assert_eq!(s.machine_id.as_deref(), Some(id.as_str()));
    assert_eq!(fleet.machines().await.len(), 1);
    again.stop().await.expect("stop");
}
