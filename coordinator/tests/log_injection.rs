//! What peers send cannot forge or flood the coordinator's log: a client's
//! software string with a newline and a terminal escape, sent at Hello with
//! versions the coordinator does not speak, shows escaped on one line; 600
//! enrollments with made-up tokens from one address give one warning and
//! a summary, not 600 lines.

mod common;

use std::time::Duration;

use common::{LogCapture, TestCoordinator};
use drover_net::stream::read_frame;
use drover_protocol::frame::MAX_FRAME_LEN;
use drover_protocol::v1::*;
use drover_protocol::VersionRange;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_strings_are_escaped_and_refused_enrollments_summarised() {
    let lines = LogCapture::default();
    let writer = lines.clone();
    tracing_subscriber::fmt().with_env_filter("info").with_ansi(false).with_writer(move || writer.clone()).init();
    let mut fleet = TestCoordinator::start_with(common::Options { no_server: true, ..Default::default() }).await;
    fleet.config.limits.warning_summary_interval = Duration::from_secs(1);
    fleet.serve().await;
    let text = || String::from_utf8(lines.0.lock().expect("lines").clone()).expect("utf-8");

    // A forged line in the software string.
    let forged = "x\n2026-01-01T00:00:00Z  INFO drover: FAKE admin root revoked every machine\u{1b}[31m";
    let ca = drover_net::identity::read_cert_pem(&fleet.state_dir.join("ca.pem")).expect("ca");
    let config = drover_net::tls::client_config(&ca, None, Duration::from_secs(5)).expect("tls");
    let endpoint = drover_net::client::client_endpoint(fleet.addr).expect("endpoint");
    let conn = endpoint.connect_with(config, fleet.addr, "127.0.0.1").expect("connect").await.expect("handshake");
    let (mut send, mut recv) = conn.open_bi().await.expect("stream");
    let future = VersionRange { min: drover_protocol::SUPPORTED.max + 1, max: drover_protocol::SUPPORTED.max + 2 };
    drover_net::stream::write_frame(&mut send, &Request::Hello(Hello { versions: future, software: forged.into() })).await.expect("write");
    let answer: Response = read_frame(&mut recv, MAX_FRAME_LEN).await.expect("answer");
    assert!(matches!(answer, Response::Error(ref e) if e.code == drover_protocol::ErrorCode::VersionMismatch), "{answer:?}");
    assert!(common::eventually(Duration::from_secs(5), || async { text().contains("FAKE admin root") }).await, "the mismatch is logged: {}", text());
    let log = text();
    assert!(!log.lines().any(|l| l.contains("INFO drover: FAKE") && !l.contains("\\n")), "no forged line: {log}");
    assert!(log.contains("x\\n2026-01-01T00:00:00Z"), "the newline shows escaped: {log}");
    assert!(!log.contains('\u{1b}'), "no terminal escape reaches the log: {log:?}");

    // 600 enrollments with tokens that do not exist, from one address.
    let before = text().lines().count();
    let key = drover_net::identity::generate_key().expect("key");
    let config = fleet.agent_config("scanner", None);
    let mut refused = 0;
    for i in 0..600 {
        let token = Secret::new(format!("drt_{i:064}"));
        if drover_agent::session::enroll_once(&endpoint, &config, &ca, &key, token, "scanner").await.is_err() {
            refused += 1;
        }
    }
    assert_eq!(refused, 600);
    let summary = |log: &str| log.lines().any(|l| l.contains("enrollments refused") && l.contains("in the last 1s"));
    assert!(common::eventually(Duration::from_secs(10), || async { summary(&text()) }).await, "a summary line: {}", text());
    let written = text().lines().count() - before;
    assert!(written <= 10, "600 refusals wrote {written} lines: {}", text());
}
