//! Rollouts over a fleet of 30 agents on 127.0.0.1 (flake mode with the
//! `nixos-rebuild` stand-in): canary and batches within their caps, failures
//! stopping the rollout with and without auto-revert, a coordinator killed
//! mid-rollout, and pause / resume / abort / revert.

use crate::common;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::flake::{flake, flake_spec, spawn_vm, Vm};
use common::{eventually, spawn_coordinator, Options, TestCoordinator};
use drover_agent::AgentHandle;
use drover_protocol::v1::*;

struct Fleet {
    coordinator: TestCoordinator,
    flake: PathBuf,
    vms: Vec<Vm>,
    agents: Vec<AgentHandle>,
}

impl Fleet {
    /// `n` agents labelled role=web, all on the "good" system (generation 1).
    async fn start(n: usize, serve_in_process: bool) -> (Fleet, Option<std::process::Child>) {
        Fleet::start_adjusted(n, serve_in_process, |_| {}).await
    }

    /// As [`Fleet::start`], with a last say on each agent's configuration.
    async fn start_adjusted(n: usize, serve_in_process: bool, adjust: impl Fn(&mut drover_agent::AgentConfig)) -> (Fleet, Option<std::process::Child>) {
        let mut coordinator = TestCoordinator::start_with(Options { no_server: true, ..Default::default() }).await;
        let child = if serve_in_process {
            coordinator.serve().await;
            None
        } else {
            Some(spawn_coordinator(&coordinator.state_dir))
        };
        let flake = flake(coordinator.dir.path());
        let (_, token) = coordinator.token(n as u32, &[("role", "web")]).await;
        let mut vms = Vec::new();
        let mut agents = Vec::new();
        for i in 0..n {
            let (vm, agent) = common::flake::spawn_vm_with(&coordinator, &format!("vm{i:02}"), Some(&token), &adjust);
            vms.push(vm);
            agents.push(agent);
        }
        for a in &mut agents {
            a.wait_for(Duration::from_secs(30), |s| s.reports >= 1).await.expect("agent online");
        }
        let fleet = Fleet { coordinator, flake, vms, agents };
        let spec = fleet.deploy_spec("good");
        let targets = fleet.coordinator.call(AdminRequest::Deploy(spec)).await.deployed().expect("Deployed");
        assert_eq!(targets.len(), n);
        let ok = eventually(Duration::from_secs(60), || async { fleet.vms.iter().all(|vm| vm.activations() == ["good"]) }).await;
        assert!(ok, "every machine runs the first system");
        // Wait until the coordinator has recorded every success.
        let ok = eventually(Duration::from_secs(30), || async {
            let Ok(d) = fleet.coordinator.call(AdminRequest::DeploymentsList { machine: None }).await.deployments() else { return false };
            d.iter().all(|d| d.state == DeploymentState::Succeeded)
        })
        .await;
        assert!(ok, "first deployments succeeded");
        (fleet, child)
    }

    fn deploy_spec(&self, system: &str) -> DeploySpec {
        DeploySpec {
            machine: None,
            selector: [("role".to_string(), "web".to_string())].into(),
            system: flake_spec(&self.flake, system),
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

    fn fail_on(&self, names: &[&str]) {
        let file = self.coordinator.dir.path().join("vms/fail-on");
        std::fs::write(file, names.join("\n") + "\n").expect("write fail-on");
    }

    async fn start_rollout(&self, system: &str, strategy: RolloutStrategy) -> RolloutInfo {
        self.start_rollout_checked(system, vec![], strategy).await
    }

    async fn start_rollout_checked(&self, system: &str, checks: Vec<HealthCheck>, strategy: RolloutStrategy) -> RolloutInfo {
        let mut deploy = self.deploy_spec(system);
        deploy.checks = checks;
        deploy.health_deadline_ms = 1_000;
        let spec = RolloutSpec { deploy, strategy, snapshot_volumes: false };
        self.coordinator.call(AdminRequest::RolloutStart(spec)).await.rollout().expect("Rollout")
    }

    async fn status(&self, id: &str) -> RolloutInfo {
        self.coordinator.call(AdminRequest::RolloutStatus { id: id.into() }).await.rollout().expect("Rollout")
    }

    async fn until(&self, id: &str, timeout: Duration, pred: impl Fn(&RolloutInfo) -> bool) -> RolloutInfo {
        let deadline = Instant::now() + timeout;
        loop {
            let r = self.status(id).await;
            if pred(&r) {
                return r;
            }
            assert!(Instant::now() < deadline, "rollout {id} did not get there: {}", summary(&r));
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until the rollout driver has made `n` more passes over the
    /// fleet (an event, not a guess at how long that takes).
    async fn driver_passes(&self, n: u64) {
        let handle = self.coordinator.handle.as_ref().expect("an in-process coordinator");
        let mut passes = handle.coordinator.driver_passes.subscribe();
        let target = *passes.borrow_and_update() + n;
        tokio::time::timeout(Duration::from_secs(30), passes.wait_for(|p| *p >= target)).await.expect("the driver keeps passing").expect("the driver runs");
    }

    async fn stop(self) {
        for a in self.agents {
            let _ = a.stop().await;
        }
    }
}

fn summary(r: &RolloutInfo) -> String {
    let mut counts = std::collections::BTreeMap::<&str, usize>::new();
    for m in &r.machines {
        *counts.entry(m.state.as_str()).or_default() += 1;
    }
    let failed: Vec<String> =
        r.machines.iter().filter(|m| m.state.as_str() == "failed").map(|m| format!("{}: {}", m.hostname, m.reason.clone().unwrap_or_default())).collect();
    format!("{} {:?} {:?} {failed:?}", r.phase, counts, r.reason)
}

fn strategy() -> RolloutStrategy {
    common::one_at_a_time()
}

/// The most machines in transition at once, from the recorded timeline.
fn peak_in_transition(r: &RolloutInfo) -> usize {
    let mut events: Vec<(u64, i32)> = Vec::new();
    for m in &r.machines {
        if let Some(start) = m.started_at {
            events.push((start, 1));
            events.push((m.settled_at.unwrap_or(u64::MAX), -1));
        }
    }
    events.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(&b.1)));
    let (mut now, mut peak) = (0i32, 0i32);
    for (_, d) in events {
        now += d;
        peak = peak.max(now);
    }
    peak as usize
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_then_batches_of_25_percent_take_all_30_machines_to_the_new_generation() {
    let (fleet, _) = Fleet::start(30, true).await;
    let mut s = strategy();
    s.canary = 1;
    s.auto_promote = false;
    s.max_parallel = Amount::Percent(25);
    let r = fleet.start_rollout("good2", s).await;
    assert_eq!(r.machines.len(), 30);
    let r = fleet.until(&r.id, Duration::from_secs(60), |r| r.phase.as_str() == "awaiting_promotion").await;
    assert_eq!(r.machines.iter().filter(|m| m.started_at.is_some()).count(), 1, "only the canary ran");
    assert!(r.machines.iter().any(|m| m.canary && m.state.as_str() == "done"));
    // A second rollout over the same machines is refused, naming the first.
    let err = fleet
        .coordinator
        .admin()
        .await
        .call(AdminRequest::RolloutStart(RolloutSpec { snapshot_volumes: false, deploy: fleet.deploy_spec("good"), strategy: strategy() }))
        .await
        .expect_err("overlap");
    assert_eq!(err.code(), Some(drover_protocol::ErrorCode::Conflict));
    assert!(err.to_string().contains(&r.id), "{err}");

    fleet.coordinator.call(AdminRequest::RolloutControl { id: r.id.clone(), action: RolloutAction::Promote }).await;
    let r = fleet.until(&r.id, Duration::from_secs(120), |r| r.phase.as_str() != "rolling").await;
    assert_eq!(r.phase.as_str(), "succeeded", "{}", summary(&r));
    assert!(r.machines.iter().all(|m| m.state.as_str() == "done"));
    let peak = peak_in_transition(&r);
    assert!(peak <= 8, "25% of 30 is 8 at once; the timeline shows {peak}");
    assert!(peak >= 2, "batches ran in parallel ({peak})");
    for vm in &fleet.vms {
        assert_eq!(vm.activations(), ["good", "good2"], "{}", vm.name);
    }
    let phases: Vec<&str> = r.phases.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(phases, ["canary", "awaiting_promotion", "rolling", "succeeded"]);
    // `deployments list --rollout` shows its 30 deployments; the CLI prints JSON.
    let out = Command::new(env!("CARGO_BIN_EXE_drover"))
        .args(["deployments", "list", "--rollout", &r.id, "--output", "json"])
        .env("DROVER_ADMIN_BUNDLE", &fleet.coordinator.bundle_path)
        .output()
        .expect("drover deployments list");
    assert!(out.status.success());
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(list.as_array().expect("array").len(), 30);
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_stop_the_rollout_and_auto_revert_puts_every_touched_machine_back() {
    for auto_revert in [true, false] {
        let (fleet, _) = Fleet::start(30, true).await;
        // The new system fails its health check on three machines: the 4th to
        // 6th in the order the planner takes them (by machine id), so that the
        // rollout stops before the end.
        let mut machines = fleet.coordinator.machines().await;
        machines.sort_by(|a, b| a.id.cmp(&b.id));
        let failing: Vec<String> = machines[3..6].iter().map(|m| m.hostname.clone()).collect();
        let failing: Vec<&str> = failing.iter().map(String::as_str).collect();
        fleet.fail_on(&failing);
        let mut s = strategy();
        s.max_parallel = Amount::Count(3);
        s.max_failures = Amount::Count(1);
        s.min_healthy_time_ms = 100;
        s.auto_revert = auto_revert;
        let check = vec![HealthCheck::Unit { name: "app.service".into() }];
        let r = fleet.start_rollout_checked("good2", check, s).await;
        let r = fleet.until(&r.id, Duration::from_secs(120), |r| matches!(r.phase.as_str(), "failed" | "reverted")).await;
        assert!(r.reason.as_deref().is_some_and(|x| x.contains("max_failures 1")), "{}", summary(&r));
        let touched: Vec<&RolloutMachine> = r.machines.iter().filter(|m| m.generation.is_some()).collect();
        assert!(touched.len() < 30, "the rollout stopped before the end: {}", summary(&r));
        if auto_revert {
            assert_eq!(r.phase.as_str(), "reverted");
            for m in &r.machines {
                let vm = fleet.vms.iter().find(|v| v.name == m.hostname).expect("vm");
                if m.generation.is_some() {
                    assert_eq!(m.state.as_str(), "reverted", "{}", m.hostname);
                    assert_eq!(vm.activations().last().map(String::as_str), Some("good"), "{} is back: {:?}", m.hostname, vm.activations());
                    let detail = fleet.coordinator.call(AdminRequest::MachinesDetail { id: m.machine_id.clone() }).await;
                    let detail = detail.machine_detail().expect("MachineDetail");
                    assert!(detail.current_system.as_deref().is_some_and(|p| p.ends_with("/good")), "{}: {detail:?}", m.hostname);
                } else {
                    assert_eq!(vm.activations(), ["good"], "{} was never touched", m.hostname);
                }
            }
        } else {
            assert_eq!(r.phase.as_str(), "failed");
            let failed: Vec<&str> = r.machines.iter().filter(|m| m.state.as_str() == "failed").map(|m| m.hostname.as_str()).collect();
            assert!(failed.len() >= 2 && failed.iter().all(|h| failing.contains(h)), "status names the failed machines: {failed:?}");
            assert!(
                r.machines
                    .iter()
                    .filter(|m| m.state.as_str() == "failed")
                    .all(|m| m.reason.as_deref().is_some_and(|x| x.contains("unit app.service is failed"))),
                "and why"
            );
            for m in r.machines.iter().filter(|m| m.state.as_str() == "done") {
                let vm = fleet.vms.iter().find(|v| v.name == m.hostname).expect("vm");
                assert_eq!(vm.activations().last().map(String::as_str), Some("good2"), "{} stays on the new system", m.hostname);
            }
        }
        fleet.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_survives_a_coordinator_killed_in_the_middle() {
    let (fleet, child) = Fleet::start(30, false).await;
    let mut child = child.expect("coordinator process");
    let mut s = strategy();
    s.max_parallel = Amount::Count(4);
    s.min_healthy_time_ms = 500;
    let r = fleet.start_rollout("good2", s).await;
    let mid = fleet.until(&r.id, Duration::from_secs(60), |r| r.machines.iter().filter(|m| m.state.as_str() == "done").count() >= 6).await;
    assert_eq!(mid.phase.as_str(), "rolling");
    child.kill().expect("SIGKILL the coordinator");
    child.wait().expect("reap");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut child = spawn_coordinator(&fleet.coordinator.state_dir);
    let r = fleet.until(&r.id, Duration::from_secs(180), |r| r.phase.as_str() != "rolling").await;
    assert_eq!(r.phase.as_str(), "succeeded", "{}", summary(&r));
    for vm in &fleet.vms {
        assert_eq!(vm.activations(), ["good", "good2"], "{}: applied once", vm.name);
    }
    for m in &r.machines {
        assert_eq!(m.generation, Some(2), "{}: one generation recorded by the rollout", m.hostname);
        assert!(m.started_at.is_some() && m.settled_at.is_some(), "timeline complete for {}", m.hostname);
    }
    assert!(peak_in_transition(&r) <= 4);
    fleet.stop().await;
    child.kill().expect("kill");
    child.wait().expect("reap");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_resume_abort_and_revert_change_the_fleet_as_documented() {
    let (fleet, _) = Fleet::start(8, true).await;
    let mut s = strategy();
    s.min_healthy_time_ms = 500;
    let r = fleet.start_rollout("good2", s).await;
    let id = r.id.clone();
    let control = |action| fleet.coordinator.call(AdminRequest::RolloutControl { id: id.clone(), action });
    fleet.until(&id, Duration::from_secs(30), |r| r.machines.iter().any(|m| m.started_at.is_some())).await;
    let paused = control(RolloutAction::Pause).await.rollout().expect("Rollout");
    assert!(paused.paused);
    let started = |r: &RolloutInfo| r.machines.iter().filter(|m| m.started_at.is_some()).count();
    let before = started(&fleet.status(&id).await);
    // Once every started machine has settled there is room for more; the
    // driver looks again a few times and starts none.
    fleet.until(&id, Duration::from_secs(30), |r| r.machines.iter().filter(|m| m.started_at.is_some()).all(|m| m.settled_at.is_some())).await;
    fleet.driver_passes(3).await;
    assert_eq!(started(&fleet.status(&id).await), before, "paused: nothing new starts");

    // A machine that enrolls during the rollout with matching labels is not
    // part of it: the target set is frozen at the start.
    let (_, late_token) = fleet.coordinator.token(1, &[("role", "web")]).await;
    let (late_vm, mut late) = spawn_vm(&fleet.coordinator, "late", Some(&late_token));
    let late_id = late.wait_for(Duration::from_secs(15), |s| s.reports >= 1).await.expect("late agent").machine_id.expect("id");

    control(RolloutAction::Resume).await;
    fleet.until(&id, Duration::from_secs(30), |r| started(r) >= before + 2).await;

    control(RolloutAction::Abort).await;
    let aborted = fleet.until(&id, Duration::from_secs(30), |r| r.phase.as_str() == "aborted").await;
    let touched = started(&aborted);
    fleet.driver_passes(3).await;
    let r = fleet.status(&id).await;
    assert_eq!(started(&r), touched, "aborted: nothing new starts");
    assert!(r.machines.iter().any(|m| m.state.as_str() == "waiting"), "the rest are left as they were");

    control(RolloutAction::Revert).await;
    let r = fleet.until(&id, Duration::from_secs(60), |r| r.phase.as_str() == "reverted").await;
    for m in &r.machines {
        let vm = fleet.vms.iter().find(|v| v.name == m.hostname).expect("vm");
        if m.started_at.is_some() {
            assert_eq!(m.state.as_str(), "reverted");
            assert_eq!(vm.activations().last().map(String::as_str), Some("good"), "{}", m.hostname);
        } else {
            assert_eq!(vm.activations(), ["good"], "{}", m.hostname);
        }
    }
    assert!(r.machines.iter().all(|m| m.machine_id != late_id), "the late machine is not a target");
    assert!(late_vm.activations().is_empty(), "and was never touched");
    late.stop().await.expect("stop");
    // A finished rollout refuses more changes, with a reason.
    let err =
        fleet.coordinator.admin().await.call(AdminRequest::RolloutControl { id: id.clone(), action: RolloutAction::Pause }).await.expect_err("no longer moves");
    assert_eq!(err.code(), Some(drover_protocol::ErrorCode::Conflict));
    fleet.stop().await;
}

/// A machine an active rollout holds refuses a manual deployment, naming
/// the rollout; `override_rollout` goes through, and the rollout records it
/// and leaves that machine alone to the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manual_deploy_to_a_held_machine_is_refused_unless_it_overrides_the_rollout() {
    let (fleet, _) = Fleet::start(3, true).await;
    let mut s = strategy();
    s.canary = 1;
    s.auto_promote = false;
    let r = fleet.start_rollout("good2", s).await;
    let r = fleet.until(&r.id, Duration::from_secs(60), |r| r.phase.as_str() == "awaiting_promotion").await;
    let waiting = r.machines.iter().find(|m| !m.canary).expect("a machine still waiting").clone();

    let mut manual = fleet.deploy_spec("good");
    manual.selector = Default::default();
    manual.machine = Some(waiting.machine_id.clone());
    let err = fleet.coordinator.admin().await.call(AdminRequest::Deploy(manual.clone())).await.expect_err("held");
    assert_eq!(err.code(), Some(drover_protocol::ErrorCode::Conflict));
    assert!(err.to_string().contains(&r.id) && err.to_string().contains("--override-rollout"), "{err}");
    let before = fleet.coordinator.call(AdminRequest::DeploymentsList { machine: Some(waiting.machine_id.clone()) }).await.deployments().expect("Deployments");
    assert_eq!(before.len(), 1, "nothing recorded for the refused deployment");

    manual.override_rollout = true;
    let targets = fleet.coordinator.call(AdminRequest::Deploy(manual)).await.deployed().expect("Deployed");
    let overridden = fleet.status(&r.id).await;
    let entry = overridden.machines.iter().find(|m| m.machine_id == waiting.machine_id).expect("entry");
    assert_eq!(entry.state.as_str(), "skipped");
    assert!(entry.reason.as_deref().is_some_and(|why| why.contains("overridden") && why.contains(&targets[0].deployment_id)), "{entry:?}");

    fleet.coordinator.call(AdminRequest::RolloutControl { id: r.id.clone(), action: RolloutAction::Promote }).await;
    let done = fleet.until(&r.id, Duration::from_secs(60), |r| r.phase.as_str() != "rolling").await;
    assert_eq!(done.phase.as_str(), "succeeded", "{}", summary(&done));
    let vm = fleet.vms.iter().find(|vm| vm.name == waiting.hostname).expect("vm");
    assert!(
        eventually(Duration::from_secs(30), || async { vm.activations() == ["good", "good"] }).await,
        "the manual deployment stays: {:?}",
        vm.activations()
    );
    assert!(!vm.activations().contains(&"good2".to_string()), "the rollout never touched it: {:?}", vm.activations());
    fleet.stop().await;
}

/// Simulated reboots: the agent's reboot command gives the machine a new
/// boot id and points `booted-system` at what it booted — the running
/// system, another one (machines listed in vms/wrong-boot), or nothing at
/// all (vms/no-reboot).
fn simulated_reboot(config: &mut drover_agent::AgentConfig) {
    let root = config.current_system.parent().expect("machine root").to_path_buf();
    let script = root.parent().expect("vms dir").join("reboot");
    std::fs::write(
        &script,
        "#!/bin/sh\nroot=\"$1\"; name=$(basename \"$root\"); vms=$(dirname \"$root\")\n\
         grep -qx \"$name\" \"$vms/no-reboot\" 2>/dev/null && exit 0\n\
         cat /proc/sys/kernel/random/uuid > \"$root/boot_id\"\n\
         if grep -qx \"$name\" \"$vms/wrong-boot\" 2>/dev/null; then ln -sfn /nix/store/00000000000000000000000000000000-other-system \"$root/booted-system\"\n\
         else ln -sfn \"$(readlink \"$root/current-system\")\" \"$root/booted-system\"; fi\n",
    )
    .expect("reboot script");
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    std::fs::write(root.join("boot_id"), "first-boot\n").expect("boot id");
    config.boot_id_file = root.join("boot_id");
    config.reboot_command = vec![script.display().to_string(), root.display().to_string()];
    config.reboot_deadline = Duration::from_secs(2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_with_reboots_verifies_each_boot_and_fails_a_wrong_system_or_no_return() {
    let (fleet, _) = Fleet::start_adjusted(3, true, simulated_reboot).await;
    let vms = fleet.coordinator.dir.path().join("vms");
    std::fs::write(vms.join("wrong-boot"), "vm01\n").expect("write");
    std::fs::write(vms.join("no-reboot"), "vm02\n").expect("write");
    let mut s = strategy();
    s.max_failures = Amount::Count(2);
    let mut deploy = fleet.deploy_spec("good2");
    deploy.reboot = true;
    let r = fleet.coordinator.call(AdminRequest::RolloutStart(RolloutSpec { deploy, strategy: s, snapshot_volumes: false })).await.rollout().expect("Rollout");
    let r = fleet.until(&r.id, Duration::from_secs(90), |r| matches!(r.phase.as_str(), "succeeded" | "failed")).await;
    let state = |host: &str| r.machines.iter().find(|m| m.hostname == host).expect("machine").clone();
    assert_eq!(state("vm00").state.as_str(), "done", "{}", summary(&r));
    let wrong = state("vm01");
    assert_eq!(wrong.state.as_str(), "failed");
    assert!(wrong.reason.as_deref().is_some_and(|w| w.contains("came back on /nix/store/00000000000000000000000000000000-other-system")), "{wrong:?}");
    let gone = state("vm02");
    assert_eq!(gone.state.as_str(), "failed");
    assert!(gone.reason.as_deref().is_some_and(|w| w.contains("did not reboot")), "{gone:?}");
    let boot_id = |vm: &str| std::fs::read_to_string(vms.join(vm).join("boot_id")).expect("boot id");
    assert_ne!(boot_id("vm00"), "first-boot\n");

    // `drover machines reboot ID --wait` reboots one machine and waits for
    // its verified return.
    let before = boot_id("vm00");
    let out = Command::new(env!("CARGO_BIN_EXE_drover"))
        .env("DROVER_ADMIN_BUNDLE", &fleet.coordinator.bundle_path)
        .args(["machines", "reboot", &state("vm00").machine_id, "--wait"])
        .output()
        .expect("run drover");
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_ne!(boot_id("vm00"), before, "rebooted again");
    let detail = fleet.coordinator.call(AdminRequest::MachinesDetail { id: state("vm00").machine_id }).await.machine_detail().expect("MachineDetail");
    assert!(
        eventually(Duration::from_secs(10), || async {
            let Ok(m) = fleet.coordinator.call(AdminRequest::MachinesShow { id: detail.machine.id.clone() }).await.machine() else { return false };
            m.health.is_some_and(|h| h.boot_id.as_deref() == Some(boot_id("vm00").trim()) && h.booted_system.is_some())
        })
        .await,
        "health reports the new boot"
    );
    fleet.stop().await;
}
