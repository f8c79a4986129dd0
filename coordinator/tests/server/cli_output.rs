//! The `drover` process itself: a reader of its standard output that goes
//! away (`drover ... | head`) ends the command quietly, as it ends other
//! Unix tools, not with a panic; `drover serve` runs without transparent
//! huge pages.

use crate::common;

use std::process::{Command, Stdio};

use common::TestCoordinator;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_pipe_ends_the_command_without_a_panic() {
    let fleet = TestCoordinator::start().await;
    for args in [&["machines", "list", "--output", "json"][..], &["tokens", "list"][..], &["whoami"][..]] {
        let bundle = fleet.bundle_path.clone();
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let (status, stderr) = tokio::task::spawn_blocking(move || {
            let mut child = Command::new(env!("CARGO_BIN_EXE_drover"))
                .args(&args)
                .env("DROVER_ADMIN_BUNDLE", &bundle)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("run drover");
            // The reader goes away before the answer is printed.
            drop(child.stdout.take());
            let out = child.wait_with_output().expect("wait");
            (out.status, String::from_utf8_lossy(&out.stderr).to_string())
        })
        .await
        .expect("join");
        assert!(!stderr.contains("panicked"), "no panic: {stderr}");
        assert_eq!(status.code(), Some(141), "{status:?} {stderr}");
    }
}

/// The coordinator turns transparent huge pages off for itself: where the
/// kernel's THP mode is `always`, its allocator's regions were backed by
/// 2 MiB pages and it held a fifth to a quarter more memory per agent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_coordinator_runs_without_transparent_huge_pages() {
    let fleet = TestCoordinator::start_with(common::Options { no_server: true, ..Default::default() }).await;
    let mut child = Command::new(env!("CARGO_BIN_EXE_drover"))
        .args(["serve", "--state-dir"])
        .arg(&fleet.state_dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run drover serve");
    let status = format!("/proc/{}/status", child.id());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let disabled = loop {
        let text = std::fs::read_to_string(&status).unwrap_or_default();
        if text.contains("THP_enabled:\t0") {
            break true;
        }
        if child.try_wait().expect("wait").is_some() || std::time::Instant::now() > deadline {
            break false;
        }
        // The flag is set in the first lines of main: poll for it.
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(disabled, "drover serve still allows transparent huge pages ({status})");
}
