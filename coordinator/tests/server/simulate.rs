//! The load generator against a real coordinator: simulated machines each
//! write their own secrets and facts (a deployment to all of them is not
//! failed by their writes racing in one directory), and the report's rate
//! divides by the time enrolling took, not by the whole run.

use crate::common;

use std::time::{Duration, Instant};

use common::{eventually, TestCoordinator};
use drover_agent::simulate::{self, SimulateOptions};
use drover_protocol::v1::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulated_machines_apply_a_deployment_each_in_its_own_directory() {
    let fleet = TestCoordinator::start().await;
    let (_, token) = fleet.token(4, &[("role", "sim")]).await;
    let mut base = fleet.agent_config("base", Some(&token));
    // The switch fails at once (no NixOS here); what comes before it is the point.
    base.nixos_rebuild = "/bin/false".into();
    let work_dir = fleet.dir.path().join("sim");
    let hold = Duration::from_secs(15);
    let started = Instant::now();
    let run = tokio::spawn(simulate::run(SimulateOptions {
        base,
        count: 4,
        work_dir: work_dir.clone(),
        coordinator_pid: None,
        spread: false,
        timeout: Duration::from_secs(60),
        hold,
        churn: None,
        agents_per_socket: simulate::DEFAULT_AGENTS_PER_SOCKET,
        switch: simulate::Simulated::Nix,
        ready_file: None,
        stop: None,
    }));
    assert!(eventually(Duration::from_secs(30), || async { fleet.machines().await.len() == 4 }).await, "four machines enrolled");

    let spec = DeploySpec {
        machine: None,
        selector: [("role".to_string(), "sim".to_string())].into(),
        system: SystemSpec::Flake { uri: "path:/nonexistent".into(), attribute: "x".into() },
        secrets: vec![],
        facts: [("tenant".to_string(), "acme".to_string())].into(),
        checks: vec![],
        health_deadline_ms: 1_000,
        buckets: vec![],
        volumes: vec![],
        goal: Default::default(),
        force_switch: false,
        override_rollout: false,
        reboot: false,
    };
    let deployed_at = drover_net::clock::now_ms();
    let targets = fleet.call(AdminRequest::Deploy(spec)).await.deployed().expect("deploy");
    assert_eq!(targets.len(), 4);
    let finished = eventually(Duration::from_secs(30), || async {
        let Ok(d) = fleet.call(AdminRequest::DeploymentsList { machine: None }).await.deployments() else { return false };
        d.len() == 4 && d.iter().all(|d| d.state == DeploymentState::Failed)
    })
    .await;
    assert!(finished, "every deployment ends");
    let done = fleet.call(AdminRequest::DeploymentsList { machine: None }).await.deployments().expect("Deployments");
    for d in &done {
        assert!(d.steps.iter().any(|s| s.step == DeployStep::SecretsWritten), "{}: facts written: {:?}", d.machine_id, d.steps);
        assert!(!d.steps.iter().any(|s| s.message.contains("not written")), "{}: {:?}", d.machine_id, d.steps);
    }
    let mut seen = Vec::new();
    for i in 0..4 {
        let facts = std::fs::read_to_string(work_dir.join(format!("agent-{i:05}/run/facts.json"))).expect("each agent's own facts");
        let facts: serde_json::Value = serde_json::from_str(&facts).expect("json");
        seen.push(facts["machine_id"].as_str().expect("machine id").to_string());
    }
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 4, "four machines, four facts files: {seen:?}");

    let report = run.await.expect("join").expect("simulate");
    let total = started.elapsed().as_secs_f64();
    assert_eq!((report.enrolled, report.online), (4, 4));
    assert!(report.enroll_seconds < total - hold.as_secs_f64(), "the rate divides by the enrolling time: {report:?}, run {total:.1}s");
    assert!((report.enrollments_per_second - 4.0 / report.enroll_seconds).abs() < 1e-6, "{report:?}");
    // The deployment's generation, received and finished by every agent,
    // at times between the deploy and the end of the run.
    let generation = targets[0].generation;
    let times = report.generations.iter().find(|g| g.generation == generation).expect("the deployed generation was recorded");
    assert_eq!((times.received_unix_ms.len(), times.applied_unix_ms.len()), (4, 4), "{times:?}");
    assert!(times.received_unix_ms.iter().all(|t| *t >= deployed_at && *t <= drover_net::clock::now_ms()), "{times:?}, deployed at {deployed_at}");
    assert!(times.received_unix_ms[3] <= times.applied_unix_ms[3], "{times:?}");
}

/// Correctness at scale: many simulated machines enroll with a token of
/// exactly as many uses (one record each), take one deployment, and every
/// deployment reaches `succeeded` with every step reported — without any
/// agent reconnecting because of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_to_many_simulated_machines_succeeds_everywhere_without_reconnects() {
    const N: usize = 300;
    let fleet = TestCoordinator::start_with(common::Options { health_interval: Duration::from_secs(5), ..Default::default() }).await;
    let (_, token) = fleet.token(N as u32, &[("role", "many")]).await;
    let mut base = fleet.agent_config("base", Some(&token));
    // An agent's own settings, not the quick ones of the small tests.
    let defaults = drover_agent::AgentConfig::new(fleet.addr, fleet.state_dir.join("ca.pem"), fleet.dir.path().join("unused"));
    base.connect_timeout = defaults.connect_timeout;
    base.backoff_initial = defaults.backoff_initial;
    base.backoff_max = defaults.backoff_max;
    let ready = fleet.dir.path().join("ready.json");
    let (stop, stopped) = tokio::sync::oneshot::channel();
    let run = tokio::spawn(simulate::run(SimulateOptions {
        base,
        count: N,
        work_dir: fleet.dir.path().join("sim"),
        coordinator_pid: None,
        spread: false,
        timeout: Duration::from_secs(300),
        hold: Duration::from_secs(3600),
        churn: None,
        agents_per_socket: simulate::DEFAULT_AGENTS_PER_SOCKET,
        switch: simulate::Simulated::Succeed,
        ready_file: Some(ready.clone()),
        stop: Some(stopped),
    }));
    assert!(eventually(Duration::from_secs(300), || async { ready.exists() }).await, "the simulator reports");
    let at_ready: serde_json::Value = serde_json::from_slice(&std::fs::read(&ready).expect("ready file")).expect("json");
    assert_eq!(at_ready["online"], N, "{at_ready}");
    assert_eq!(fleet.machines().await.len(), N, "exactly one record per machine");

    let spec = common::deploy_to_role("many", SystemSpec::Flake { uri: "path:/nonexistent".into(), attribute: "x".into() });
    let targets = fleet.call(AdminRequest::Deploy(spec)).await.deployed().expect("deploy");
    assert_eq!(targets.len(), N);
    let finished = eventually(Duration::from_secs(300), || async {
        let Ok(d) = fleet.call(AdminRequest::DeploymentsList { machine: None }).await.deployments() else { return false };
        d.len() == N && d.iter().all(|d| d.state == DeploymentState::Succeeded)
    })
    .await;
    let done = fleet.call(AdminRequest::DeploymentsList { machine: None }).await.deployments().expect("Deployments");
    let states: std::collections::BTreeMap<String, usize> = done.iter().fold(Default::default(), |mut m, d| {
        *m.entry(format!("{:?}", d.state)).or_default() += 1;
        m
    });
    assert!(finished, "every deployment succeeded: {states:?}");
    for d in &done {
        // Reports sent together are each recorded, once.
        for step in [DeployStep::Received, DeployStep::SecretsWritten, DeployStep::Switched, DeployStep::Succeeded] {
            let times = d.steps.iter().filter(|s| s.step == step).count();
            assert_eq!(times, 1, "{}: {step:?} reported once: {:?}", d.machine_id, d.steps);
        }
    }
    let _ = stop.send(());
    let report = run.await.expect("join").expect("simulate");
    assert_eq!(report.connects, N as u64, "no agent reconnected: {} connections for {N} agents", report.connects);
    let generation = targets[0].generation;
    let times = report.generations.iter().find(|g| g.generation == generation).expect("recorded");
    assert_eq!((times.received_unix_ms.len(), times.applied_unix_ms.len()), (N, N));
}
