//! Closure mode with real Nix (Debian's nix-bin): a system closure is built,
//! published to a binary cache signed with a key made here, and deployed to
//! agents that each have their own Nix store (a chroot store). Substituters
//! are only that local cache.

use crate::common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::TestCoordinator;
use drover_agent::system::health::SystemHealth;
use drover_agent::AgentHandle;
use drover_protocol::v1::*;

const NIX_HINT: &str = "this test needs Nix: install Debian's nix-bin (`apt-get install nix-bin`); scripts/test.sh installs it";

/// The system derivation (see the file for what it does).
fn system_nix() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/test-system.nix")
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}; {NIX_HINT}"));
    assert!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

struct Cache {
    dir: PathBuf,
    public_key: String,
}

impl Cache {
    fn new(dir: &Path) -> Self {
        std::fs::create_dir_all(dir).expect("mkdir");
        let name = format!("drover-test-{}", dir.file_name().and_then(|n| n.to_str()).unwrap_or("cache"));
        run(Command::new("nix-store").arg("--generate-binary-cache-key").arg(&name).arg(dir.join("sk")).arg(dir.join("pk")));
        let public_key = std::fs::read_to_string(dir.join("pk")).expect("pk");
        Cache { dir: dir.to_path_buf(), public_key }
    }

    /// Builds a system closure in the local store (substituters empty).
    fn build(&self, name: &str, body: &str) -> String {
        self.build_checked(name, body, "")
    }

    /// The same, with a pre-switch check that runs first for `switch`.
    fn build_checked(&self, name: &str, body: &str, check: &str) -> String {
        run(Command::new("nix-build")
            .arg(system_nix())
            .args(["--argstr", "name", name, "--argstr", "body", body, "--argstr", "check", check, "--no-out-link"])
            .args(["--option", "substituters", ""]))
    }

    fn url(&self, which: &str) -> String {
        format!("file://{}", self.dir.join(which).display())
    }

    /// Publishes a closure, signed (`cache`) or not (`unsigned`).
    fn publish(&self, path: &str, signed: bool) {
        let to = if signed { format!("{}?secret-key={}", self.url("cache"), self.dir.join("sk").display()) } else { self.url("unsigned") };
        run(Command::new("nix").args(["--extra-experimental-features", "nix-command", "copy", "--to", &to, path]).args(["--option", "substituters", ""]));
    }
}

struct Vm {
    store: PathBuf,
    profile: PathBuf,
}

impl Vm {
    fn activations(&self) -> Vec<String> {
        self.lines("activations")
    }

    fn lines(&self, file: &str) -> Vec<String> {
        std::fs::read_to_string(self.store.join(file)).unwrap_or_default().lines().map(str::to_string).collect()
    }

    /// What runs: the test system points `current-system` at itself.
    fn running(&self) -> Option<String> {
        std::fs::read_link(self.store.join("current-system")).ok().map(|p| p.display().to_string())
    }

    fn boot_default(&self) -> Option<String> {
        drover_agent::system::boot::resolve_profile(&self.profile)
    }

    /// The profile's numbered generations (`system-N-link`).
    fn generations(&self) -> usize {
        std::fs::read_dir(self.profile.parent().expect("profile dir"))
            .expect("profile dir")
            .flatten()
            .filter(|e| e.file_name().to_str().is_some_and(|n| n.starts_with("system-") && n.ends_with("-link")))
            .count()
    }
}

fn spawn_vm(fleet: &TestCoordinator, name: &str, token: &Path, systemctl: &Path) -> (Vm, AgentHandle) {
    spawn_vm_with(fleet, name, token, systemctl, |_| {})
}

fn spawn_vm_with(
    fleet: &TestCoordinator,
    name: &str,
    token: &Path,
    systemctl: &Path,
    adjust: impl FnOnce(&mut drover_agent::AgentConfig),
) -> (Vm, AgentHandle) {
    let root = fleet.dir.path().join("vms").join(name);
    let mut config = fleet.agent_config(name, Some(token));
    config.nix_store = Some(root.join("store"));
    config.system_profile = root.join("profiles/system");
    config.runtime_dir = root.join("run");
    config.systemctl = systemctl.to_path_buf();
    config.switch_timeout = Duration::from_secs(120);
    adjust(&mut config);
    let vm = Vm { store: root.join("store"), profile: root.join("profiles/system") };
    let health = SystemHealth::for_agent(&config);
    (vm, drover_agent::spawn(config, health, None).expect("agent"))
}

fn fake_systemctl(dir: &Path) -> PathBuf {
    let path = dir.join("systemctl");
    std::fs::write(&path, "#!/bin/sh\n[ \"$1\" = is-active ] || exit 2\ncase \"$2\" in up.service) echo active; exit 0;; *) echo inactive; exit 3;; esac\n")
        .expect("write");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path
}

fn closure(cache: &Cache, path: &str, from: &str) -> SystemSpec {
    SystemSpec::Closure { store_path: path.to_string(), substituters: vec![cache.url(from)], trusted_public_keys: vec![cache.public_key.clone()] }
}

async fn deploy(fleet: &TestCoordinator, selector: &[(&str, &str)], system: SystemSpec, checks: Vec<HealthCheck>) -> Vec<DeployedTarget> {
    deploy_goal(fleet, selector, system, checks, SwitchGoal::Switch).await
}

async fn deploy_goal(
    fleet: &TestCoordinator,
    selector: &[(&str, &str)],
    system: SystemSpec,
    checks: Vec<HealthCheck>,
    goal: SwitchGoal,
) -> Vec<DeployedTarget> {
    let spec = DeploySpec {
        machine: None,
        selector: selector.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        system,
        secrets: vec![],
        facts: Default::default(),
        checks,
        health_deadline_ms: 1_500,
        buckets: vec![],
        volumes: vec![],
        goal,
        force_switch: false,
        override_rollout: false,
        reboot: false,
    };
    fleet.call(AdminRequest::Deploy(spec)).await.deployed().expect("Deployed")
}

async fn finished(fleet: &TestCoordinator, id: &str) -> DeploymentInfo {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let d = fleet.call(AdminRequest::DeploymentsShow { id: id.into() }).await.deployment().expect("Deployment");
        if matches!(d.state, DeploymentState::Succeeded | DeploymentState::Failed | DeploymentState::Superseded) {
            return d;
        }
        assert!(Instant::now() < deadline, "deployment {id} did not finish: {d:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closures_from_a_signed_cache_activate_and_roll_back_and_unsigned_ones_are_refused() {
    let fleet = TestCoordinator::start().await;
    let cache = Cache::new(&fleet.dir.path().join("cache"));
    let systemctl = fake_systemctl(fleet.dir.path());
    let good = cache.build("drover-test-good", "exit 0");
    let broken = cache.build("drover-test-broken", "echo 'activation failed: broken unit' >&2; exit 1");
    let unsigned = cache.build("drover-test-unsigned", "exit 0");
    let other_signer = cache.build("drover-test-other-signer", "exit 0");
    cache.publish(&other_signer, true);
    cache.publish(&good, true);
    cache.publish(&broken, true);
    cache.publish(&unsigned, false);

    let (_, token) = fleet.token(2, &[("role", "web")]).await;
    let mut vms = Vec::new();
    let mut agents = Vec::new();
    for name in ["vm1", "vm2"] {
        let (vm, mut agent) = spawn_vm(&fleet, name, &token, &systemctl);
        agent.wait_for(Duration::from_secs(15), |s| s.reports >= 1).await.expect("online");
        vms.push(vm);
        agents.push(agent);
    }
    let web = [("role", "web")];

    // The first closure: realised from the cache into each agent's own store.
    for t in deploy(&fleet, &web, closure(&cache, &good, "cache"), vec![]).await {
        let d = finished(&fleet, &t.deployment_id).await;
        assert_eq!(d.state, DeploymentState::Succeeded, "{d:?}");
        assert_eq!(d.system_path.as_deref(), Some(good.as_str()));
    }
    for vm in &vms {
        assert!(vm.store.join(good.trim_start_matches('/')).join("bin/switch-to-configuration").exists());
        assert_eq!(vm.activations(), std::slice::from_ref(&good));
        assert_eq!(drover_agent::system::boot::resolve_profile(&vm.profile).as_deref(), Some(good.as_str()));
    }

    // A closure whose activation fails: back to the exact previous path.
    for t in deploy(&fleet, &web, closure(&cache, &broken, "cache"), vec![]).await {
        let d = finished(&fleet, &t.deployment_id).await;
        assert_eq!(d.state, DeploymentState::Failed);
        assert!(d.rolled_back, "{d:?}");
        assert!(d.output_tail.contains("activation failed: broken unit"), "{:?}", d.output_tail);
    }
    for vm in &vms {
        assert_eq!(vm.activations(), [good.clone(), broken.clone(), good.clone()]);
        assert_eq!(drover_agent::system::boot::resolve_profile(&vm.profile).as_deref(), Some(good.as_str()));
    }

    // Unsigned, and signed by a key that is not trusted: refused before any switch.
    // (A path the machine has not fetched yet: one already in its store is
    // trusted as it is.)
    let mut wrong_key = closure(&cache, &other_signer, "cache");
    if let SystemSpec::Closure { trusted_public_keys, .. } = &mut wrong_key {
        *trusted_public_keys = vec!["other-key:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".into()];
    }
    for system in [closure(&cache, &unsigned, "unsigned"), wrong_key] {
        for t in deploy(&fleet, &[("role", "web")], system, vec![]).await {
            let d = finished(&fleet, &t.deployment_id).await;
            assert_eq!(d.state, DeploymentState::Failed);
            assert!(!d.rolled_back, "nothing to roll back: {d:?}");
            let failure = d.steps.iter().find(|s| s.step == DeployStep::Failed).expect("failed step");
            assert!(failure.message.contains("not signed by any of the trusted keys"), "{}", failure.message);
            assert!(failure.message.contains("not changed"), "{}", failure.message);
        }
    }
    for vm in &vms {
        assert_eq!(vm.activations().len(), 3, "no activation for a refused closure");
        assert!(!vm.store.join(unsigned.trim_start_matches('/')).exists());
        assert!(!vm.store.join(other_signer.trim_start_matches('/')).exists());
    }
    for a in agents {
        a.stop().await.expect("stop");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unit_http_and_tcp_checks_gate_a_closure() {
    let fleet = TestCoordinator::start().await;
    let cache = Cache::new(&fleet.dir.path().join("cache"));
    let systemctl = fake_systemctl(fleet.dir.path());
    let first = cache.build("drover-test-checks-1", "exit 0");
    let second = cache.build("drover-test-checks-2", "exit 0");
    cache.publish(&first, true);
    cache.publish(&second, true);
    let (_, token) = fleet.token(1, &[("role", "checks")]).await;
    let (vm, mut agent) = spawn_vm(&fleet, "vm1", &token, &systemctl);
    agent.wait_for(Duration::from_secs(15), |s| s.reports >= 1).await.expect("online");

    // A live HTTP server and TCP port, and a closed port.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok").await;
        }
    });
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let passing = vec![
        HealthCheck::Unit { name: "up.service".into() },
        HealthCheck::Http { url: format!("http://127.0.0.1:{port}/health") },
        HealthCheck::Tcp { host: "127.0.0.1".into(), port },
    ];
    let t = deploy(&fleet, &[("role", "checks")], closure(&cache, &first, "cache"), passing).await;
    assert_eq!(finished(&fleet, &t[0].deployment_id).await.state, DeploymentState::Succeeded);

    for failing in [
        HealthCheck::Unit { name: "down.service".into() },
        HealthCheck::Http { url: format!("http://127.0.0.1:{closed}/health") },
        HealthCheck::Tcp { host: "127.0.0.1".into(), port: closed },
    ] {
        let started = Instant::now();
        let t = deploy(&fleet, &[("role", "checks")], closure(&cache, &second, "cache"), vec![failing.clone()]).await;
        let d = finished(&fleet, &t[0].deployment_id).await;
        assert!(started.elapsed() >= Duration::from_millis(1_500), "rolled back only after the deadline");
        assert!(d.rolled_back && d.state == DeploymentState::Failed, "{failing:?}: {d:?}");
        let why = d.steps.iter().find(|s| s.step == DeployStep::RollingBack).expect("reason").message.clone();
        assert!(why.contains("health checks failed"), "{why}");
        assert_eq!(drover_agent::system::boot::resolve_profile(&vm.profile).as_deref(), Some(first.as_str()));
    }
    assert_eq!(vm.activations().iter().filter(|p| **p == second).count(), 3, "the second closure was switched to once per deployment");
    assert_eq!(vm.activations().last().map(String::as_str), Some(first.as_str()));
    agent.stop().await.expect("stop");
}

/// The success message of a finished deployment.
fn outcome(d: &DeploymentInfo) -> String {
    d.steps
        .iter()
        .rev()
        .find(|s| matches!(s.step, DeployStep::Succeeded | DeployStep::Failed | DeployStep::RolledBack))
        .map(|s| s.message.clone())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switch_goals_inhibitors_and_failed_units_with_real_nix() {
    let fleet = TestCoordinator::start().await;
    let cache = Cache::new(&fleet.dir.path().join("cache"));
    let systemctl = fake_systemctl(fleet.dir.path());
    let base = cache.build("drover-goal-base", "exit 0");
    let later = cache.build("drover-goal-boot", "exit 0");
    let tried = cache.build("drover-goal-test", "exit 0");
    let dry = cache.build("drover-goal-dry", "exit 0");
    let inhibited =
        cache.build_checked("drover-goal-inhibited", "exit 0", "echo \"Pre-switch check 'switchInhibitors' failed\"; echo 'Pre-switch checks failed'; exit 1");
    let units_fail = cache.build("drover-goal-units", "echo 'warning: the following units failed: app.service, worker.service'; exit 4");
    for path in [&base, &later, &tried, &dry, &inhibited, &units_fail] {
        cache.publish(path, true);
    }
    let (_, token) = fleet.token(1, &[("role", "goals")]).await;
    let root = fleet.dir.path().join("vms/vm1");
    let (vm, mut agent) = spawn_vm_with(&fleet, "vm1", &token, &systemctl, |c| c.current_system = root.join("store/current-system"));
    agent.wait_for(Duration::from_secs(15), |s| s.reports >= 1).await.expect("online");
    let role = [("role", "goals")];
    let go = |path: &str, goal| deploy_goal(&fleet, &role, closure(&cache, path, "cache"), vec![], goal);

    // switch: runs it and makes it the boot default.
    let t = go(&base, SwitchGoal::Switch).await;
    assert_eq!(finished(&fleet, &t[0].deployment_id).await.state, DeploymentState::Succeeded);
    assert_eq!((vm.running(), vm.boot_default()), (Some(base.clone()), Some(base.clone())));

    // boot: the boot default changes, the running system does not, and the
    // machine reports the pending system.
    let t = go(&later, SwitchGoal::Boot).await;
    let d = finished(&fleet, &t[0].deployment_id).await;
    assert_eq!(d.state, DeploymentState::Succeeded, "{d:?}");
    assert!(outcome(&d).contains(&format!("reboot required to run {later}")), "{}", outcome(&d));
    assert_eq!((vm.running(), vm.boot_default()), (Some(base.clone()), Some(later.clone())));
    assert_eq!(vm.activations(), std::slice::from_ref(&base));
    assert_eq!(vm.lines("boot-entries"), std::slice::from_ref(&later));
    let id = t[0].machine_id.clone();
    assert!(
        common::eventually(Duration::from_secs(10), || async {
            fleet.machine(&id).await.health.is_some_and(|h| h.pending_system.as_deref() == Some(later.as_str()))
        })
        .await,
        "the machine reports the pending system"
    );

    // test: runs it, the boot default stays.
    let t = go(&tried, SwitchGoal::Test).await;
    assert_eq!(finished(&fleet, &t[0].deployment_id).await.state, DeploymentState::Succeeded);
    assert_eq!((vm.running(), vm.boot_default()), (Some(tried.clone()), Some(later.clone())));
    let generations = vm.generations();

    // dry-activate: reports what its switch-to-configuration printed, changes nothing.
    let t = go(&dry, SwitchGoal::DryActivate).await;
    let d = finished(&fleet, &t[0].deployment_id).await;
    assert_eq!(d.state, DeploymentState::Succeeded);
    assert!(d.output_tail.contains("would restart the following units: demo.service"), "{:?}", d.output_tail);
    assert_eq!((vm.running(), vm.boot_default()), (Some(tried.clone()), Some(later.clone())), "nothing changed");
    assert_eq!(vm.generations(), generations, "no profile generation");
    assert_eq!(vm.activations(), [base.clone(), tried.clone()], "no activation recorded");

    // A switch the pre-switch checks refuse is installed for the next boot.
    let t = go(&inhibited, SwitchGoal::Switch).await;
    let d = finished(&fleet, &t[0].deployment_id).await;
    assert_eq!(d.state, DeploymentState::Succeeded, "{d:?}");
    assert!(outcome(&d).contains("pre-switch checks refused") && outcome(&d).contains("reboot required"), "{}", outcome(&d));
    assert_eq!((vm.running(), vm.boot_default()), (Some(tried.clone()), Some(inhibited.clone())));
    assert_eq!(vm.lines("boot-entries").last(), Some(&inhibited));

    // Exit 4: switched, but units failed — a failed health gate naming
    // them, and the machine goes back to what ran before.
    let t = go(&units_fail, SwitchGoal::Switch).await;
    let d = finished(&fleet, &t[0].deployment_id).await;
    assert!(d.state == DeploymentState::Failed && d.rolled_back, "{d:?}");
    let why = d.steps.iter().find(|s| s.step == DeployStep::RollingBack).expect("reason").message.clone();
    assert!(why.contains("health gate failed") && why.contains("app.service, worker.service"), "{why}");
    assert_eq!(vm.running(), Some(tried.clone()), "back on the system that ran before");
    agent.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_newest_generations_stay_and_the_rollback_target_still_works() {
    let fleet = TestCoordinator::start().await;
    let cache = Cache::new(&fleet.dir.path().join("cache"));
    let systemctl = fake_systemctl(fleet.dir.path());
    let systems: Vec<String> = (1..=7).map(|i| cache.build(&format!("drover-keep-{i}"), "exit 0")).collect();
    let broken = cache.build("drover-keep-broken", "exit 1");
    for path in systems.iter().chain([&broken]) {
        cache.publish(path, true);
    }
    let (_, token) = fleet.token(1, &[("role", "keep")]).await;
    let (vm, mut agent) = spawn_vm_with(&fleet, "vm1", &token, &systemctl, |c| c.keep_generations = 3);
    agent.wait_for(Duration::from_secs(15), |s| s.reports >= 1).await.expect("online");
    for system in &systems {
        let t = deploy(&fleet, &[("role", "keep")], closure(&cache, system, "cache"), vec![]).await;
        assert_eq!(finished(&fleet, &t[0].deployment_id).await.state, DeploymentState::Succeeded);
    }
    assert_eq!(vm.generations(), 3, "keep_generations = 3");
    let in_store = |path: &str| vm.store.join(path.trim_start_matches('/')).exists();
    for old in &systems[..4] {
        assert!(!in_store(old), "{old} was collected");
    }
    for kept in &systems[4..] {
        assert!(in_store(kept), "{kept} stays");
    }
    // The rollback target (the newest) still works.
    let t = deploy(&fleet, &[("role", "keep")], closure(&cache, &broken, "cache"), vec![]).await;
    let d = finished(&fleet, &t[0].deployment_id).await;
    assert!(d.rolled_back && d.state == DeploymentState::Failed, "{d:?}");
    assert_eq!(vm.boot_default().as_deref(), Some(systems[6].as_str()));
    assert_eq!(vm.activations().last(), Some(&systems[6]));
    agent.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_over_three_machines_prints_their_changes_and_writes_nothing() {
    let fleet = TestCoordinator::start().await;
    let cache = Cache::new(&fleet.dir.path().join("cache"));
    let systemctl = fake_systemctl(fleet.dir.path());
    let base = cache.build("drover-dry-base", "exit 0");
    let next = cache.build("drover-dry-next", "echo next; exit 0");
    cache.publish(&base, true);
    let (_, token) = fleet.token(3, &[("role", "dry")]).await;
    let mut agents = Vec::new();
    for name in ["vm1", "vm2", "vm3"] {
        let (_, mut agent) = spawn_vm(&fleet, name, &token, &systemctl);
        agent.wait_for(Duration::from_secs(15), |s| s.reports >= 1).await.expect("online");
        agents.push(agent);
    }
    for t in deploy(&fleet, &[("role", "dry")], closure(&cache, &base, "cache"), vec![]).await {
        assert_eq!(finished(&fleet, &t.deployment_id).await.state, DeploymentState::Succeeded);
    }
    let before = all_deployments(&fleet).await;
    let desired_before = desired_generations(&fleet).await;

    // The command line, as an admin runs it.
    let secret = fleet.dir.path().join("db-password");
    std::fs::write(&secret, "hunter2").expect("write secret");
    let out = Command::new(env!("CARGO_BIN_EXE_drover"))
        .env("DROVER_ADMIN_BUNDLE", &fleet.bundle_path)
        .args(["deploy", "--selector", "role=dry", "--closure", &next, "--substituter", &cache.url("cache"), "--trusted-key", &cache.public_key])
        .args(["--secret", &format!("db=@{}", secret.display()), "--fact", "tier=web", "--dry-run"])
        .output()
        .expect("run drover");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(text.matches("would get generation 2 (has 1), goal switch").count(), 3, "{text}");
    assert_eq!(text.matches(&format!("system: {base} -> {next}")).count(), 3, "{text}");
    assert_eq!(text.matches("secret added: db").count(), 3, "{text}");
    assert_eq!(text.matches("fact added: tier = \"web\"").count(), 3, "{text}");
    assert_eq!(text.matches("closure diff:").count(), 3, "the coordinator's store holds both closures: {text}");
    assert!(!text.contains("hunter2"), "no secret value: {text}");

    // The same as data.
    let mut spec = DeploySpec {
        machine: None,
        selector: [("role".to_string(), "dry".to_string())].into(),
        system: closure(&cache, &next, "cache"),
        secrets: vec![],
        facts: Default::default(),
        checks: vec![],
        health_deadline_ms: 1_500,
        buckets: vec![],
        volumes: vec![],
        goal: SwitchGoal::Boot,
        force_switch: false,
        override_rollout: false,
        reboot: false,
    };
    let plan = fleet.call(AdminRequest::DeployDryRun(spec.clone())).await.deploy_plan().expect("DeployPlan");
    assert_eq!(plan.len(), 3);
    for p in &plan {
        assert_eq!((p.generation, p.current_generation, p.system_before.as_deref()), (2, 1, Some(base.as_str())));
        assert!(p.changes.contains(&"goal: boot".to_string()), "{:?}", p.changes);
        assert!(p.closure_diff.as_deref().is_some_and(|d| !d.is_empty()), "{p:?}");
    }

    // Nothing was written and no agent was told: every agent reports
    // twice more, still without a new desired generation.
    for a in &mut agents {
        let reports = a.status.borrow().reports;
        a.wait_for(Duration::from_secs(15), |s| s.reports >= reports + 2).await.expect("reports");
        assert_eq!(a.status.borrow().desired_generation, 1, "no agent was notified");
    }
    assert_eq!(all_deployments(&fleet).await, before, "no deployment recorded");
    assert_eq!(desired_generations(&fleet).await, desired_before);
    spec.selector = [("role".to_string(), "nobody".to_string())].into();
    let err = fleet.admin().await.call(AdminRequest::DeployDryRun(spec)).await.expect_err("no target");
    assert!(err.to_string().contains("no machine matches"), "{err}");
    for a in agents {
        a.stop().await.expect("stop");
    }
}

async fn all_deployments(fleet: &TestCoordinator) -> Vec<DeploymentInfo> {
    let d = fleet.call(AdminRequest::DeploymentsList { machine: None }).await.deployments().expect("Deployments");
    d
}

async fn desired_generations(fleet: &TestCoordinator) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    for m in fleet.machines().await {
        let d = fleet.call(AdminRequest::MachinesDetail { id: m.id.clone() }).await.machine_detail().expect("MachineDetail");
        out.push((m.id, d.desired_generation));
    }
    out
}
