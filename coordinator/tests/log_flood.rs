//! A client sending bad streams cannot flood the coordinator's log: one
//! warning for a connection's first bad stream, debug lines after it, and a
//! process-wide budget of warnings per second (one probe run once wrote
//! 64,000 warning lines).

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{raw_connect, TestCoordinator};
use drover_net::stream::read_frame;
use drover_protocol::frame::MAX_FRAME_LEN;
use drover_protocol::v1::Response;

/// Log lines, kept in memory.
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<u8>>>);

impl Write for Lines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lines").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_streams_do_not_flood_the_log() {
    let lines = Lines::default();
    let writer = lines.clone();
    tracing_subscriber::fmt()
        .with_env_filter("warn")
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .init();
    let fleet = TestCoordinator::start().await;
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
    let text = String::from_utf8(lines.0.lock().expect("lines").clone()).expect("utf-8");
    let warnings = text.lines().filter(|l| l.contains("unreadable request")).count();
    assert!(warnings >= 1, "bad streams are still reported: {text}");
    assert!(warnings <= 20, "{warnings} warning lines for 500 bad streams on 20 connections");
}
