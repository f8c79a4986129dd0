//! A client sending bad streams cannot flood the coordinator's log: one
//! warning for a peer's first bad stream, debug lines after it, and one
//! summary per peer and interval ("499 bad streams from 127.0.0.1 in the
//! last 1s"); one probe run once wrote 64,000 warning lines.

mod common;

use std::time::Duration;

use common::{raw_connect, TestCoordinator};
use drover_net::stream::read_frame;
use drover_protocol::frame::MAX_FRAME_LEN;
use drover_protocol::v1::Response;

use common::LogCapture as Lines;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_streams_do_not_flood_the_log() {
    let lines = Lines::default();
    let writer = lines.clone();
    tracing_subscriber::fmt().with_env_filter("warn").with_ansi(false).with_writer(move || writer.clone()).init();
    let mut fleet = TestCoordinator::start_with(common::Options { no_server: true, ..Default::default() }).await;
    fleet.config.limits.warning_summary_interval = Duration::from_secs(1);
    fleet.serve().await;
    let mut answered = 0;
    for _ in 0..20 {
        let conn = raw_connect(&fleet, None).await.expect("connect");
        for _ in 0..25 {
            let (mut send, mut recv) = conn.connection.open_bi().await.expect("stream");
            let mut garbage = 8u32.to_be_bytes().to_vec();
            garbage.extend([0xEE; 8]);
            send.write_all(&garbage).await.expect("write");
            let _ = send.finish();
            let answer = tokio::time::timeout(Duration::from_secs(5), read_frame::<Response>(&mut recv, MAX_FRAME_LEN)).await.expect("answered");
            assert!(matches!(answer, Ok(Response::Error(_))), "{answer:?}");
            answered += 1;
        }
        conn.connection.close(0u32.into(), b"done");
    }
    assert_eq!(answered, 500, "every bad stream is answered");
    let text = || String::from_utf8(lines.0.lock().expect("lines").clone()).expect("utf-8");
    // "N bad streams from 127.0.0.1 in the last 1s", once per interval.
    let summaries = |text: &str| -> Vec<u64> {
        text.lines()
            .filter_map(|l| l.split_once(" bad streams from 127.0.0.1 in the last 1s"))
            .filter_map(|(head, _)| head.rsplit(' ').next()?.parse().ok())
            .collect()
    };
    let summarised = common::eventually(Duration::from_secs(10), || async { summaries(&text()).iter().sum::<u64>() == 500 }).await;
    // Without CAP_NET_ADMIN (not root) each endpoint also warns once that
    // its UDP buffers are smaller than asked: not about the peer's streams.
    let text: String = text().lines().filter(|l| !l.contains("UDP socket buffers are smaller than asked")).map(|l| format!("{l}\n")).collect();
    assert!(summarised, "every bad stream is counted in a per-peer summary: {text}");
    let intervals = summaries(&text).len();
    let warnings = text.lines().filter(|l| l.contains("unreadable request")).count();
    assert!(warnings <= intervals, "at most one warning per interval for the peer's first bad stream: {text}");
    assert!(text.lines().count() <= 2 * intervals, "no flood: {text}");
}
