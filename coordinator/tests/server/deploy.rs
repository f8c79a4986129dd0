//! Deployments end to end over QUIC on 127.0.0.1, in flake mode with the
//! `nixos-rebuild` stand-in under `tests/fixtures/`: switch, health gate,
//! rollback, secrets and facts, push, offline agents, interrupted applies.

use crate::common;

use std::time::{Duration, Instant};

use common::flake::{flake, flake_spec, spawn_vm, spawn_vm_with};
use common::{eventually, raw_connect, TestCoordinator};
use drover_agent::AgentHandle;
use drover_protocol::v1::*;

fn spec_for(machine: &str, system: SystemSpec) -> DeploySpec {
    DeploySpec {
        machine: Some(machine.into()),
        selector: Default::default(),
        system,
        secrets: vec![],
        facts: Default::default(),
        checks: vec![],
        health_deadline_ms: 2_000,
        buckets: vec![],
        volumes: vec![],
        goal: Default::default(),
        force_switch: false,
        override_rollout: false,
        reboot: false,
    }
}

async fn deploy(fleet: &TestCoordinator, spec: DeploySpec) -> Vec<DeployedTarget> {
    fleet.call(AdminRequest::Deploy(spec)).await.deployed().expect("Deployed")
}

async fn deployment(fleet: &TestCoordinator, id: &str) -> DeploymentInfo {
    fleet.call(AdminRequest::DeploymentsShow { id: id.into() }).await.deployment().expect("Deployment")
}

async fn finished(fleet: &TestCoordinator, id: &str) -> DeploymentInfo {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let d = deployment(fleet, id).await;
        if matches!(d.state, DeploymentState::Succeeded | DeploymentState::Failed | DeploymentState::Superseded) {
            return d;
        }
        assert!(Instant::now() < deadline, "deployment {id} did not finish: {d:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn online(agent: &mut AgentHandle) -> String {
    agent.wait_for(Duration::from_secs(15), |s| s.reports >= 1).await.expect("agent online").machine_id.expect("id")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flake_mode_switches_then_rolls_back_a_broken_system() {
    let fleet = TestCoordinator::start().await;
    let flake = flake(fleet.dir.path());
    let (_, token) = fleet.token(2, &[("role", "web")]).await;
    let (vm1, mut a1) = spawn_vm(&fleet, "vm1", Some(&token));
    let (vm2, mut a2) = spawn_vm(&fleet, "vm2", Some(&token));
    let id1 = online(&mut a1).await;
    online(&mut a2).await;

    let mut spec = spec_for("", flake_spec(&flake, "good"));
    spec.machine = None;
    spec.selector = [("role".to_string(), "web".to_string())].into();
    let targets = deploy(&fleet, spec).await;
    assert_eq!(targets.len(), 2);
    for t in &targets {
        let d = finished(&fleet, &t.deployment_id).await;
        assert_eq!(d.state, DeploymentState::Succeeded, "{d:?}");
        assert!(d.steps.iter().any(|s| s.step == DeployStep::Switched));
        assert!(d.system_path.as_deref().is_some_and(|p| p.ends_with("/good")), "{d:?}");
    }
    assert_eq!(vm1.activations(), ["good"]);
    assert_eq!(vm2.activations(), ["good"]);
    let detail = fleet.call(AdminRequest::MachinesDetail { id: id1.clone() }).await.machine_detail().expect("MachineDetail");
    assert_eq!((detail.desired_generation, detail.current_generation), (1, Some(1)));

    // Many deployments in one request (what `deploy --wait` follows them
    // with): the same records, in the order asked; an unknown id and too
    // many ids are refused by name.
    let ids: Vec<String> = targets.iter().rev().map(|t| t.deployment_id.clone()).collect();
    let many = fleet.call(AdminRequest::DeploymentsShowMany { ids: ids.clone() }).await.deployments().expect("Deployments");
    let mut one_by_one = Vec::new();
    for id in &ids {
        one_by_one.push(deployment(&fleet, id).await);
    }
    assert_eq!(many, one_by_one);
    let admin = fleet.admin().await;
    let unknown = admin.call(AdminRequest::DeploymentsShowMany { ids: vec![ids[0].clone(), "m-none/1".into()] }).await;
    let e = unknown.expect_err("an unknown id");
    assert!(e.to_string().contains("m-none/1"), "{e}");
    let too_many = vec![ids[0].clone(); MAX_DEPLOYMENTS_PER_REQUEST + 1];
    let e = admin.call(AdminRequest::DeploymentsShowMany { ids: too_many }).await.expect_err("too many ids");
    admin.close().await;
    assert!(e.to_string().contains(&format!("at most {MAX_DEPLOYMENTS_PER_REQUEST}")), "{e}");

    // A broken system: activation fails, the agent runs `switch --rollback`.
    let targets = deploy(&fleet, spec_for(&id1, flake_spec(&flake, "broken"))).await;
    let d = finished(&fleet, &targets[0].deployment_id).await;
    assert_eq!(d.state, DeploymentState::Failed);
    assert!(d.rolled_back, "{d:?}");
    assert!(d.output_tail.contains("activation script failed"), "output tail kept: {:?}", d.output_tail);
    assert!(d.steps.iter().any(|s| s.step == DeployStep::RollingBack && s.message.contains("nixos-rebuild switch failed")), "{:?}", d.steps);
    assert_eq!(vm1.activations(), ["good", "broken", "good"], "rolled back to the first system");
    assert_eq!(vm2.activations(), ["good"], "the other machine was not touched");
    let detail = fleet.call(AdminRequest::MachinesDetail { id: id1.clone() }).await.machine_detail().expect("MachineDetail");
    assert_eq!((detail.desired_generation, detail.current_generation), (2, Some(1)));

    // `drover deploy --wait` exits non-zero and names the machine.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_drover"))
        .args(["deploy", "--machine", &id1, "--flake", &format!("path:{}#broken", flake.display()), "--wait"])
        .env("DROVER_ADMIN_BUNDLE", &fleet.bundle_path)
        .output()
        .expect("drover deploy");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&id1) && stderr.contains("rolled back"), "{stderr}");
    // History shows all three.
    let list = fleet.call(AdminRequest::DeploymentsList { machine: Some(id1.clone()) }).await.deployments().expect("Deployments");
    assert_eq!(list.iter().map(|d| d.generation).collect::<Vec<_>>(), [1, 2, 3]);
    a1.stop().await.expect("stop");
    a2.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_system_failing_its_health_check_is_rolled_back_after_the_deadline() {
    let fleet = TestCoordinator::start().await;
    let flake = flake(fleet.dir.path());
    let (_, token) = fleet.token(1, &[]).await;
    let (vm, mut agent) = spawn_vm(&fleet, "vm1", Some(&token));
    let id = online(&mut agent).await;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let open_port = listener.local_addr().expect("addr").port();
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();

    let mut ok = spec_for(&id, flake_spec(&flake, "good"));
    ok.checks = vec![HealthCheck::Tcp { host: "127.0.0.1".into(), port: open_port }];
    let t = deploy(&fleet, ok).await;
    assert_eq!(finished(&fleet, &t[0].deployment_id).await.state, DeploymentState::Succeeded);

    let mut bad = spec_for(&id, flake_spec(&flake, "good2"));
    bad.checks = vec![HealthCheck::Tcp { host: "127.0.0.1".into(), port: closed_port }];
    bad.health_deadline_ms = 1_500;
    let started = Instant::now();
    let t = deploy(&fleet, bad).await;
    let d = finished(&fleet, &t[0].deployment_id).await;
    assert!(started.elapsed() >= Duration::from_millis(1_500), "not before the deadline");
    assert!(d.rolled_back && d.state == DeploymentState::Failed, "{d:?}");
    assert!(d.steps.iter().any(|s| s.message.contains(&format!("tcp:127.0.0.1:{closed_port}"))), "{:?}", d.steps);
    assert_eq!(vm.activations(), ["good", "good2", "good"]);

    // Exit code 4 (switched, units failed) is a health failure: rolled back.
    let t = deploy(&fleet, spec_for(&id, flake_spec(&flake, "unitsfail"))).await;
    let d = finished(&fleet, &t[0].deployment_id).await;
    assert!(d.rolled_back, "{d:?}");
    assert!(d.steps.iter().any(|s| s.message.contains("some units failed")), "{:?}", d.steps);
    drop(listener);
    agent.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_and_facts_reach_only_their_machine_and_stale_secrets_are_removed() {
    let fleet = TestCoordinator::start().await;
    let flake = flake(fleet.dir.path());
    let (_, token) = fleet.token(2, &[]).await;
    let (vm_a, mut a) = spawn_vm(&fleet, "vm-a", Some(&token));
    let (vm_b, mut b) = spawn_vm(&fleet, "vm-b", Some(&token));
    let id_a = online(&mut a).await;
    let id_b = online(&mut b).await;
    let secret = |name: &str, value: &str, mode| SecretFile {
        name: name.into(),
        value: SecretBytes::new(value.as_bytes().to_vec()),
        owner: Some("nobody".into()),
        group: Some("nogroup".into()),
        mode,
    };
    let mut spec = spec_for(&id_a, flake_spec(&flake, "good"));
    spec.secrets = vec![secret("s3-key", "a-secret-value", 0o400), secret("db", "a-db-password", 0o440)];
    spec.facts = [("tenant".to_string(), "acme".to_string())].into();
    let t = deploy(&fleet, spec).await;
    assert_eq!(finished(&fleet, &t[0].deployment_id).await.state, DeploymentState::Succeeded);

    use std::os::unix::fs::MetadataExt;
    let key = vm_a.runtime().join("secrets/s3-key");
    assert_eq!(std::fs::read_to_string(&key).expect("secret"), "a-secret-value");
    let meta = std::fs::metadata(&key).expect("meta");
    assert_eq!(meta.mode() & 0o7777, 0o400);
    assert_eq!(meta.uid(), nix::unistd::User::from_name("nobody").expect("u").expect("nobody").uid.as_raw());
    assert_eq!(std::fs::metadata(vm_a.runtime().join("secrets/db")).expect("db").mode() & 0o7777, 0o440);
    let facts: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(vm_a.runtime().join("facts.json")).expect("facts")).expect("json");
    assert_eq!(facts["tenant"], "acme");
    assert_eq!(facts["machine_id"], id_a.as_str());
    assert!(!vm_b.runtime().join("secrets").exists(), "machine B got nothing on disk");

    // Over the wire: B's certificate fetches only B's assignment (none).
    let cert = drover_net::identity::read_cert_pem(&fleet.dir.path().join("agents/vm-b/cert.pem")).expect("cert");
    let key_b = drover_net::identity::read_key_pem(&fleet.dir.path().join("agents/vm-b/key.pem")).expect("key");
    let conn = raw_connect(&fleet, Some((&cert, &key_b.serialize_der()))).await.expect("connect as B");
    let answer = conn.request(&Request::Agent(AgentRequest::FetchAssignment)).await.expect("fetch");
    assert_eq!(answer, Response::Agent(AgentResponse::NoAssignment));
    // B cannot write into A's deployment history either.
    let forged = AgentRequest::ReportDeployment(DeploymentReport {
        generation: 1,
        step: DeployStep::Failed,
        message: "forged".into(),
        output_tail: String::new(),
        system_path: None,
        volumes: vec![],
    });
    let err = conn.request(&Request::Agent(forged)).await.expect_err("no deployment of B's");
    assert_eq!(err.code(), Some(drover_protocol::ErrorCode::NotFound));
    // Nor in a batch, and a batch is bounded: nothing of it is recorded.
    let report = |step| DeploymentReport { generation: 1, step, message: "forged".into(), output_tail: String::new(), system_path: None, volumes: vec![] };
    let batch = AgentRequest::ReportDeployments(vec![report(DeployStep::Received), report(DeployStep::Failed)]);
    let err = conn.request(&Request::Agent(batch)).await.expect_err("no deployment of B's");
    assert_eq!(err.code(), Some(drover_protocol::ErrorCode::NotFound));
    for size in [0, MAX_REPORTS_PER_REQUEST + 1] {
        let batch = AgentRequest::ReportDeployments(vec![report(DeployStep::Received); size]);
        let err = conn.request(&Request::Agent(batch)).await.expect_err("out of bounds");
        assert_eq!(err.code(), Some(drover_protocol::ErrorCode::BadRequest), "{size} reports");
        assert!(err.to_string().contains(&MAX_REPORTS_PER_REQUEST.to_string()), "{err}");
    }
    assert!(!deployment(&fleet, &t[0].deployment_id).await.steps.iter().any(|s| s.message == "forged"), "A's history untouched");
    // Neither deployments show nor machines show carry a secret value.
    let shown = serde_json::to_string(&deployment(&fleet, &t[0].deployment_id).await).expect("json");
    assert!(shown.contains("s3-key") && !shown.contains("a-secret-value"));
    let detail = fleet.call(AdminRequest::MachinesDetail { id: id_a.clone() }).await.machine_detail().expect("MachineDetail");
    assert!(!serde_json::to_string(&detail).expect("json").contains("a-secret-value"));
    // Give B a secret of its own: over the wire B gets exactly that one.
    let mut spec_b = spec_for(&id_b, flake_spec(&flake, "good"));
    spec_b.secrets = vec![secret("b-only", "b-secret-value", 0o400)];
    let tb = deploy(&fleet, spec_b).await;
    assert_eq!(finished(&fleet, &tb[0].deployment_id).await.state, DeploymentState::Succeeded);
    let Response::Agent(AgentResponse::Assignment { assignment: own, .. }) = conn.request(&Request::Agent(AgentRequest::FetchAssignment)).await.expect("fetch")
    else {
        panic!("expected B's assignment");
    };
    assert_eq!(own.secrets.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), ["b-only"]);
    assert!(!format!("{:?}{}", own.secrets.iter().map(|s| s.value.expose().to_vec()).collect::<Vec<_>>(), own.facts_json).contains("a-secret"));
    assert!(!std::str::from_utf8(own.secrets[0].value.expose()).expect("utf8").contains("a-secret-value"));
    assert!(!vm_b.runtime().join("secrets/s3-key").exists());

    // The next generation drops `db`: it is removed from disk.
    let mut spec = spec_for(&id_a, flake_spec(&flake, "good2"));
    spec.secrets = vec![secret("s3-key", "rotated", 0o400)];
    let t = deploy(&fleet, spec).await;
    assert_eq!(finished(&fleet, &t[0].deployment_id).await.state, DeploymentState::Succeeded);
    assert!(!vm_a.runtime().join("secrets/db").exists());
    assert_eq!(std::fs::read_to_string(&key).expect("secret"), "rotated");
    a.stop().await.expect("stop");
    b.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connected_agent_starts_within_a_second_and_an_offline_one_applies_only_the_latest() {
    let fleet = TestCoordinator::start().await;
    let flake = flake(fleet.dir.path());
    let (_, token) = fleet.token(1, &[]).await;
    let (vm, mut agent) = spawn_vm(&fleet, "vm1", Some(&token));
    let id = online(&mut agent).await;
    let started = Instant::now();
    let t = deploy(&fleet, spec_for(&id, flake_spec(&flake, "good"))).await;
    agent.wait_for(Duration::from_secs(1), |s| s.applies >= 1).await.expect("the agent starts applying within a second of the deploy");
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(finished(&fleet, &t[0].deployment_id).await.state, DeploymentState::Succeeded);
    agent.stop().await.expect("stop");

    // Offline: two generations are recorded; only the newest is applied.
    let older = deploy(&fleet, spec_for(&id, flake_spec(&flake, "broken"))).await;
    let newer = deploy(&fleet, spec_for(&id, flake_spec(&flake, "good2"))).await;
    let (_, agent) = spawn_vm(&fleet, "vm1", None);
    let d = finished(&fleet, &newer[0].deployment_id).await;
    assert_eq!(d.state, DeploymentState::Succeeded);
    assert_eq!(deployment(&fleet, &older[0].deployment_id).await.state, DeploymentState::Superseded);
    assert_eq!(vm.activations(), ["good", "good2"]);
    // Reconnecting never re-runs a finished generation.
    let before = agent.status.borrow().connects;
    agent.stop().await.expect("stop");
    let (_, mut again) = spawn_vm(&fleet, "vm1", None);
    again.wait_for(Duration::from_secs(10), |s| s.connects >= 1 && s.reports >= 2).await.expect("reconnected");
    assert!(before >= 1);
    assert_eq!(vm.activations(), ["good", "good2"], "no switch re-run on reconnect");
    assert_eq!(again.status.borrow().applies, 0);
    again.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_during_the_switch_returns_to_the_previous_system_after_restart() {
    let fleet = TestCoordinator::start().await;
    let flake = flake(fleet.dir.path());
    let (_, token) = fleet.token(1, &[]).await;
    let (vm, mut agent) = spawn_vm(&fleet, "vm1", Some(&token));
    let id = online(&mut agent).await;
    let t = deploy(&fleet, spec_for(&id, flake_spec(&flake, "good"))).await;
    assert_eq!(finished(&fleet, &t[0].deployment_id).await.state, DeploymentState::Succeeded);

    let t = deploy(&fleet, spec_for(&id, flake_spec(&flake, "slow"))).await;
    let journal = fleet.dir.path().join("agents/vm1/apply.json");
    assert!(
        eventually(Duration::from_secs(10), || async {
            std::fs::read_to_string(&journal).is_ok_and(|j| j.contains("\"switching\"")) && vm.activations().last().map(String::as_str) == Some("slow")
        })
        .await,
        "the switch started"
    );
    agent.abort(); // as a crash: the task and its child process die
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, again) = spawn_vm(&fleet, "vm1", None);
    let d = finished(&fleet, &t[0].deployment_id).await;
    assert_eq!(d.state, DeploymentState::Failed);
    assert!(d.rolled_back, "{d:?}");
    assert!(d.steps.iter().any(|s| s.step == DeployStep::Resumed), "reports the restart: {:?}", d.steps);
    assert_eq!(vm.activations(), ["good", "slow", "good"], "ends on the previous system; `slow` switched to once");
    assert!(!journal.exists(), "the journal is closed");
    again.stop().await.expect("stop");
    let _ = vm.name;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_system_that_cuts_the_machine_off_is_rolled_back_by_the_agent_itself() {
    let mut fleet = TestCoordinator::start().await;
    let flake = flake(fleet.dir.path());
    let (_, token) = fleet.token(1, &[]).await;
    let (vm, mut agent) = spawn_vm_with(&fleet, "vm1", Some(&token), |c| c.confirm_deadline = Duration::from_secs(3));
    let id = online(&mut agent).await;
    let t = deploy(&fleet, spec_for(&id, flake_spec(&flake, "good"))).await;
    assert_eq!(finished(&fleet, &t[0].deployment_id).await.state, DeploymentState::Succeeded);

    // The new system "cuts the network": the coordinator is gone from the
    // moment it activates until well after the confirmation deadline.
    let t = deploy(&fleet, spec_for(&id, flake_spec(&flake, "cutoff"))).await;
    assert!(eventually(Duration::from_secs(10), || async { vm.activations().last().map(String::as_str) == Some("cutoff") }).await, "the switch started");
    fleet.stop().await;
    let applied = fleet.dir.path().join("agents/vm1/applied.json");
    assert!(
        eventually(Duration::from_secs(20), || async {
            std::fs::read_to_string(&applied).is_ok_and(|a| a.contains("rolled_back") && a.contains("\"generation\": 2"))
        })
        .await,
        "the agent rolled back by itself while cut off"
    );
    assert_eq!(vm.activations(), ["good", "cutoff", "good"]);

    // Back online, the coordinator learns what happened.
    fleet.serve().await;
    let d = finished(&fleet, &t[0].deployment_id).await;
    assert!(d.rolled_back && d.state == DeploymentState::Failed, "{d:?}");
    let why = d.steps.iter().rev().find(|s| s.step == DeployStep::RolledBack).expect("rolled back").message.clone();
    assert!(why.contains("coordinator was not reached within 3s"), "{why}");
    agent.stop().await.expect("stop");
}

/// Flake mode hands the goal to `nixos-rebuild`: `boot` adds the profile
/// generation without activating, `test` activates without one, and
/// `dry-activate` changes nothing and reports what it would do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flake_mode_passes_the_goal_to_nixos_rebuild() {
    let fleet = TestCoordinator::start().await;
    let flake = flake(fleet.dir.path());
    let (_, token) = fleet.token(1, &[]).await;
    let (vm, mut agent) = spawn_vm(&fleet, "vm1", Some(&token));
    let id = online(&mut agent).await;
    let profile = |vm: &common::flake::Vm| std::fs::read_link(vm.root.join("profiles/system")).ok().map(|p| p.display().to_string());
    let go = |system: &str, goal: SwitchGoal| DeploySpec { goal, ..spec_for(&id, flake_spec(&flake, system)) };

    let t = deploy(&fleet, go("good", SwitchGoal::Switch)).await;
    assert_eq!(finished(&fleet, &t[0].deployment_id).await.state, DeploymentState::Succeeded);
    assert_eq!((vm.activations(), profile(&vm).as_deref()), (vec!["good".to_string()], Some("system-1-link")));

    let t = deploy(&fleet, go("good2", SwitchGoal::Boot)).await;
    let d = finished(&fleet, &t[0].deployment_id).await;
    assert_eq!(d.state, DeploymentState::Succeeded, "{d:?}");
    assert!(d.steps.iter().any(|s| s.message.contains("reboot required")), "{d:?}");
    assert_eq!((vm.activations(), profile(&vm).as_deref()), (vec!["good".to_string()], Some("system-2-link")), "boot: profile only");

    let t = deploy(&fleet, go("good2", SwitchGoal::Test)).await;
    assert_eq!(finished(&fleet, &t[0].deployment_id).await.state, DeploymentState::Succeeded);
    assert_eq!((vm.activations(), profile(&vm).as_deref()), (vec!["good".to_string(), "good2".to_string()], Some("system-2-link")), "test: no generation");

    let t = deploy(&fleet, go("broken", SwitchGoal::DryActivate)).await;
    let d = finished(&fleet, &t[0].deployment_id).await;
    assert_eq!(d.state, DeploymentState::Succeeded, "{d:?}");
    assert!(d.output_tail.contains("would activate"), "{:?}", d.output_tail);
    assert_eq!(vm.activations().len(), 2, "dry-activate activates nothing");
    agent.stop().await.expect("stop");
}
