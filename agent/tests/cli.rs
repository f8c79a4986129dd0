//! What a newcomer sees from the agent's command line when a setting is wrong.

use std::process::Command;

fn agent(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_drover-agent")).args(args).output().expect("run drover-agent");
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn a_missing_ca_file_is_named_once_with_the_setting_to_fix() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("no-such-ca.pem");
    let state = dir.path().join("state");
    let (ok, err) =
        agent(&["run", "--coordinator", "127.0.0.1:9", "--ca-file", missing.to_str().expect("utf-8"), "--state-dir", state.to_str().expect("utf-8")]);
    assert!(!ok);
    assert!(err.contains("--ca-file"), "{err}");
    assert_eq!(err.matches("no-such-ca.pem").count(), 1, "the path once: {err}");
    assert_eq!(err.matches("No such file or directory").count(), 1, "the cause once: {err}");
}

#[test]
fn a_coordinator_without_a_port_says_the_form_to_write() {
    let (ok, err) = agent(&["run", "--coordinator", "drover.example.net", "--ca-file", "/ca.pem"]);
    assert!(!ok);
    assert!(err.contains("has no port") && err.contains("drover.example.net:7443"), "{err}");
}
