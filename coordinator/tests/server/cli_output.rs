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

/// A fleet too large for one answer's frame (8 MiB: about 35,000
/// machines) is listed whole by `drover machines list`, page by page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn machines_list_shows_a_fleet_larger_than_a_page() {
    let fleet = common::TestCoordinator::start().await;
    let (_, token) = fleet.token(1, &[("role", "web")]).await;
    let (issued, _) = common::enroll_raw(&fleet, &std::fs::read_to_string(token).expect("token"), "first").await;
    let store = &fleet.handle.as_ref().expect("serving").coordinator.store;
    let model = store.machine(&issued.subject).expect("read").expect("the machine");
    let extra = 40_000;
    // With names this long, 40,000 machines are more than 8 MiB.
    const LONG: &str = "a-long-domain-name-of-the-tenant-this-machine-serves.and-of-its-hosting-provider.in-a-region-named-at-length.of-a-country.whose-name-is-long-too.example";
    store
        .commit(|tx| {
            for i in 0..extra {
                let id = format!("m-{i:010x}");
                tx.put(id.as_bytes(), &drover_coordinator::model::MachineRecord { id: id.clone(), hostname: format!("vm-{i:05}.{LONG}"), ..model.clone() })?;
            }
            Ok::<_, drover_coordinator::store::StoreError>(())
        })
        .await
        .expect("machines");
    let whole = fleet.try_call(drover_protocol::v1::AdminRequest::MachinesList { selector: Default::default() }).await;
    assert!(whole.is_err(), "one answer would not fit a frame");
    let (ok, json, stderr) = common::drover_json(&fleet, &["machines", "list"]);
    assert!(ok, "{stderr}");
    let listed = json.as_array().expect("a list");
    assert_eq!(listed.len(), extra + 1);
    assert_eq!(listed[0]["hostname"], "first");
    assert_eq!(listed[extra]["hostname"], format!("vm-{:05}.{LONG}", extra - 1));
}
