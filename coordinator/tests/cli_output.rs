//! The CLI's standard output: a reader that goes away (`drover ... | head`)
//! ends the command quietly, as it ends other Unix tools, not with a panic.

mod common;

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
