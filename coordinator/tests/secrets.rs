//! Enrollment token refusals, and the token's text in no log line and
//! nowhere in the store; a deployed secret's value in no log line. This file installs a process-wide log capture, so it
//! holds only this test.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{until_reported, TestCoordinator};
use drover_agent::session::enroll_once;
use drover_net::identity;
use drover_protocol::v1::{AdminRequest, DeploySpec, Secret, SecretBytes, SecretFile, SystemSpec, TokenSpec};

const SECRET_VALUE: &str = "s3cr3t-value-that-must-not-be-logged";
use drover_protocol::ErrorCode;

use common::LogCapture as Capture;

fn files_under(dir: &Path, out: &mut Vec<Vec<u8>>) {
    for entry in std::fs::read_dir(dir).expect("read dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            files_under(&path, out);
        } else {
            out.push(std::fs::read(&path).expect("read file"));
        }
    }
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_refusals_have_their_own_errors_and_token_text_never_reaches_logs_or_store() {
    let capture = Capture::default();
    let writer = capture.clone();
    tracing_subscriber::fmt().with_max_level(tracing::Level::TRACE).with_ansi(false).with_writer(move || writer.clone()).init();

    let mut fleet = TestCoordinator::start().await;
    let (used, used_file) = fleet.token(1, &[]).await;
    let (revoked, revoked_file) = fleet.token(1, &[]).await;
    let expired = {
        let spec = TokenSpec { labels: Default::default(), ttl_ms: 1, uses: 1 };
        let t = fleet.call(AdminRequest::TokensCreate(spec)).await.token_created().expect("TokenCreated");
        t.token.expose().to_string()
    };
    let revoked_id = revoked_file.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_prefix("token-")).expect("token id in the file name").to_string();
    fleet.call(AdminRequest::TokensRevoke { id: revoked_id }).await;
    let unknown = format!("drt_{}", "0".repeat(64));

    // The first use succeeds (through a real agent).
    let mut agent = fleet.spawn_agent("vm1", Some(&used_file));
    until_reported(&mut agent, 1).await;
    agent.stop().await.expect("stop");
    tokio::time::sleep(Duration::from_millis(20)).await;

    let ca = identity::read_cert_pem(&fleet.state_dir.join("ca.pem")).expect("ca");
    let endpoint = drover_net::client::client_endpoint(fleet.addr).expect("endpoint");
    let config = fleet.agent_config("vm2", None);
    let mut messages = Vec::new();
    for (token, code, words) in [
        (&used, ErrorCode::TokenExhausted, "no uses left"),
        (&expired, ErrorCode::TokenExpired, "expired"),
        (&unknown, ErrorCode::TokenUnknown, "unknown"),
        (&revoked, ErrorCode::TokenUnknown, "revoked"),
    ] {
        let key = identity::generate_key().expect("key");
        let err = enroll_once(&endpoint, &config, &ca, &key, Secret::new(token.clone()), "vm2").await.expect_err("refused");
        assert_eq!(err.code(), Some(code), "{err}");
        let text = err.to_string();
        assert!(text.contains(words), "{text:?} should say {words:?}");
        assert!(text.contains("drover tokens create"), "says how to fix it: {text}");
        messages.push(text);
    }
    messages.sort();
    messages.dedup();
    assert_eq!(messages.len(), 4, "each refusal has its own message");
    assert_eq!(fleet.machines().await.len(), 1, "no machine made by a refused token");

    // A deployment carrying a secret: its value reaches no log line either,
    // on the coordinator or on the agent that writes it.
    let machine = fleet.machines().await[0].id.clone();
    let spec = DeploySpec {
        machine: Some(machine.clone()),
        selector: Default::default(),
        system: SystemSpec::Flake { uri: "path:/nonexistent".into(), attribute: "web".into() },
        secrets: vec![SecretFile { name: "db".into(), value: SecretBytes::new(SECRET_VALUE.as_bytes().to_vec()), owner: None, group: None, mode: 0o400 }],
        facts: Default::default(),
        checks: vec![],
        health_deadline_ms: 1000,
        buckets: vec![],
        volumes: vec![],
        goal: Default::default(),
        force_switch: false,
        override_rollout: false,
        reboot: false,
    };
    let targets = fleet.call(AdminRequest::Deploy(spec)).await.deployed().expect("Deployed");
    let mut config = fleet.agent_config("vm1", None);
    config.runtime_dir = fleet.dir.path().join("run-vm1");
    config.nixos_rebuild = std::path::PathBuf::from("/bin/false");
    let health = drover_agent::system::health::SystemHealth::new(None, config.current_system.clone());
    let agent = drover_agent::spawn(config, health, None).expect("agent");
    assert!(
        common::eventually(Duration::from_secs(15), || async {
            let Ok(d) = fleet.call(AdminRequest::DeploymentsShow { id: targets[0].deployment_id.clone() }).await.deployment() else { return false };
            d.state == drover_protocol::v1::DeploymentState::Failed
        })
        .await,
        "the deployment ran"
    );
    let written = std::fs::read_to_string(fleet.dir.path().join("run-vm1/secrets/db")).expect("secret written");
    assert_eq!(written, SECRET_VALUE);
    agent.stop().await.expect("stop");

    fleet.stop().await;
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&fleet.state_dir).expect("state dir").permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "the coordinator's state (and the secrets in it) is private");
    let logs = capture.0.lock().expect("capture").clone();
    assert!(!contains(&logs, SECRET_VALUE), "a secret value reached a log line");
    assert!(contains(&logs, "enrollment refused"), "refusals are logged");
    assert!(contains(&logs, "machine enrolled"), "enrollment is logged");
    let mut stored = Vec::new();
    files_under(&fleet.state_dir.join("db"), &mut stored);
    assert!(!stored.is_empty());
    for token in [&used, &revoked, &expired, &unknown] {
        let secret_part = &token["drt_".len()..];
        assert!(!contains(&logs, secret_part), "a token reached a log line");
        for file in &stored {
            assert!(!contains(file, secret_part), "a token's text reached the store");
        }
    }
    assert!(!contains(&logs, "PRIVATE KEY"), "no key in the logs");
}
