//! `/metrics` on `metrics_listen`: read with a Prometheus text-format
//! parser, its counters move with enrollments, deployments and rollouts, and
//! its gauges say what the fleet is.

use crate::common;

use std::collections::HashMap;
use std::time::Duration;

use common::flake::{flake, flake_spec, spawn_vm};
use common::{eventually, Options, TestCoordinator};
use drover_protocol::v1::*;

/// One scrape: each sample's value by its name and labels
/// (`name{k="v",...}`, labels sorted).
async fn scrape(addr: std::net::SocketAddr) -> HashMap<String, f64> {
    let answer = reqwest::get(format!("http://{addr}/metrics")).await.expect("GET /metrics");
    assert!(answer.status().is_success(), "{}", answer.status());
    let text = answer.text().await.expect("body");
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let parsed = prometheus_parse::Scrape::parse(lines).expect("the text format parses");
    assert!(!parsed.samples.is_empty());
    parsed
        .samples
        .into_iter()
        .map(|s| {
            let mut labels: Vec<String> = s.labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
            labels.sort();
            let value = match s.value {
                prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Gauge(v) | prometheus_parse::Value::Untyped(v) => v,
                prometheus_parse::Value::Histogram(_) | prometheus_parse::Value::Summary(_) => f64::NAN,
            };
            let key = if labels.is_empty() { s.metric } else { format!("{}{{{}}}", s.metric, labels.join(",")) };
            (key, value)
        })
        .collect()
}

fn value(m: &HashMap<String, f64>, key: &str) -> f64 {
    *m.get(key).unwrap_or_else(|| panic!("no sample {key}; have {:?}", m.keys().collect::<Vec<_>>()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_and_move_with_enrollments_deployments_and_rollouts() {
    let mut fleet = TestCoordinator::start_with(Options { no_server: true, ..Default::default() }).await;
    fleet.config.metrics_listen = Some("127.0.0.1:0".parse().expect("addr"));
    fleet.serve().await;
    let addr = fleet.handle.as_ref().and_then(|h| h.metrics_addr).expect("metrics served");
    let before = scrape(addr).await;
    assert_eq!(value(&before, "drover_enrollments_total"), 0.0);
    assert_eq!(value(&before, "drover_machines{status=\"online\"}"), 0.0);
    assert_eq!(value(&before, "drover_rollouts_started_total"), 0.0);

    // One enrollment, and one refused for a token that does not exist.
    let flake = flake(fleet.dir.path());
    let (_, token) = fleet.token(1, &[("role", "web")]).await;
    let (_vm, mut agent) = spawn_vm(&fleet, "vm1", Some(&token));
    common::until_reported(&mut agent, 1).await;
    let bogus = fleet.dir.path().join("bogus-token");
    std::fs::write(&bogus, "drt_0000000000000000000000000000000000000000000000000000000000000000").expect("write");
    let (_stranger_vm, mut stranger) = spawn_vm(&fleet, "stranger", Some(&bogus));
    stranger.wait_for(Duration::from_secs(15), |s| s.last_error.is_some()).await.expect("refused");
    stranger.stop().await.expect("stop");

    // A deployment, then a rollout, both to success.
    let spec = |system: &str| DeploySpec {
        machine: None,
        selector: [("role".to_string(), "web".to_string())].into(),
        system: flake_spec(&flake, system),
        secrets: vec![],
        facts: Default::default(),
        checks: vec![],
        health_deadline_ms: 2_000,
        buckets: vec![],
        volumes: vec![],
        goal: SwitchGoal::Switch,
        force_switch: false,
        override_rollout: false,
        reboot: false,
    };
    let _ = fleet.call(AdminRequest::Deploy(spec("good"))).await.deployed().expect("Deployed");
    let strategy = RolloutStrategy {
        canary: 0,
        max_parallel: Amount::Count(1),
        max_unavailable: Amount::Percent(100),
        max_failures: Amount::Count(0),
        healthy_deadline_ms: 30_000,
        min_healthy_time_ms: 0,
        progress_deadline_ms: 600_000,
        auto_revert: false,
        auto_promote: true,
    };
    assert!(
        eventually(Duration::from_secs(30), || async {
            let Ok(d) = fleet.call(AdminRequest::DeploymentsList { machine: None }).await.deployments() else { return false };
            d.iter().all(|d| d.state == DeploymentState::Succeeded)
        })
        .await
    );
    let r = fleet.call(AdminRequest::RolloutStart(RolloutSpec { deploy: spec("good2"), strategy, snapshot_volumes: false })).await.rollout().expect("Rollout");
    let during = scrape(addr).await;
    assert_eq!(value(&during, "drover_rollouts_started_total"), 1.0);
    assert!(
        eventually(Duration::from_secs(30), || async {
            let Ok(now) = fleet.call(AdminRequest::RolloutStatus { id: r.id.clone() }).await.rollout() else { return false };
            now.phase == RolloutPhase::Succeeded
        })
        .await
    );

    let after = scrape(addr).await;
    assert_eq!(value(&after, "drover_enrollments_total"), 1.0);
    assert!(value(&after, "drover_enrollment_refusals_total{reason=\"token_unknown\"}") >= 1.0, "the stranger was refused");
    assert_eq!(value(&after, "drover_deployments_total{outcome=\"succeeded\"}"), 2.0);
    assert_eq!(value(&after, "drover_deployment_duration_seconds_count"), 2.0);
    assert_eq!(value(&after, "drover_machines{status=\"online\"}"), 1.0);
    assert_eq!(value(&after, "drover_machines_generation_lag{lag=\"0\"}"), 1.0);
    assert_eq!(value(&after, "drover_connected_agents"), 1.0);
    assert!(value(&after, "drover_request_duration_seconds_count{kind=\"enroll\"}") >= 2.0);
    assert!(value(&after, "drover_request_duration_seconds_count{kind=\"deployment_report\"}") >= 2.0);
    assert!(value(&after, "drover_store_size_bytes") > 0.0);
    let expiry = value(&after, "drover_certificate_expiry_soonest_timestamp_seconds");
    assert!(expiry > (drover_net::clock::now_ms() / 1000) as f64, "{expiry}");
    // Which coordinator serves, on which store, since when.
    assert_eq!(value(&after, &format!("drover_coordinator_serving{{coordinator=\"{}\",store=\"sled\"}}", fleet.addr)), 1.0);
    assert_eq!(value(&after, &format!("drover_coordinator_leading{{coordinator=\"{}\",store=\"sled\"}}", fleet.addr)), 1.0, "alone on sled, it leads");
    let since = value(&after, "drover_coordinator_serving_since_timestamp_seconds");
    assert!(since > 0.0 && since <= (drover_net::clock::now_ms() / 1000) as f64, "{since}");
    // And `coordinators list` says the same: one, leading, with its agent.
    let coordinators = fleet.call(AdminRequest::CoordinatorsList).await.coordinators().expect("Coordinators");
    assert_eq!(coordinators.len(), 1, "{coordinators:?}");
    assert!(coordinators[0].leading && coordinators[0].agents == 1 && coordinators[0].address == fleet.addr.to_string(), "{coordinators:?}");
    assert_eq!(coordinators[0].lease_left_s, None, "no lease on sled");
    assert_eq!(coordinators[0].since / 1000, since as u64);
    agent.stop().await.expect("stop");
}
