//! Volumes end to end: a coordinator configured with the LINSTOR double
//! (`common/linstor.rs`: sparse files, loop devices), in-process agents whose
//! volume roots are their nodes' directories, the `nixos-rebuild` stand-in,
//! and real mkfs and mount (as root). A volume is created, given to one
//! machine, formatted once and mounted, kept through later deployments and
//! an agent restart, refused to a second machine, moved with its data, and
//! deleted only when detached and confirmed; LINSTOR's faults refuse a
//! deployment with nothing recorded, and a retry completes. Never data
//! lost: a volume detached right after its deployment is recorded as
//! formatted and never formatted again elsewhere; a resource made outside
//! Drover is neither listed nor changed until adopted; names LINSTOR would
//! refuse or confuse are refused before any request; a refused volume
//! leaves the machine's assignment.

use crate::common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::flake::{flake, flake_spec, spawn_vm_with, Vm};
use common::linstor::LinstorDouble;
use common::{eventually, Options, TestCoordinator};
use drover_agent::AgentHandle;
use drover_coordinator::config::LinstorConfig;
use drover_protocol::v1::*;
use drover_protocol::{ErrorCode, WireError};

struct Fleet {
    coordinator: TestCoordinator,
    double: LinstorDouble,
    flake: PathBuf,
    token: PathBuf,
}

impl Fleet {
    async fn start(nodes: &[&str]) -> Fleet {
        Self::start_with(nodes, Options::default().health_interval).await
    }

    /// With agents reporting health every `health_interval`.
    async fn start_with(nodes: &[&str], health_interval: Duration) -> Fleet {
        let mut coordinator = TestCoordinator::start_with(Options { no_server: true, health_interval, ..Default::default() }).await;
        let double = LinstorDouble::start(&coordinator.dir.path().join("linstor"), nodes).await;
        let mut linstor = LinstorConfig::new(&double.url);
        linstor.ready_timeout = Duration::from_secs(10);
        linstor.request_timeout = Duration::from_secs(5);
        coordinator.config.linstor = Some(linstor);
        coordinator.serve().await;
        let flake = flake(coordinator.dir.path());
        let (_, token) = coordinator.token(10, &[("role", "db")]).await;
        Fleet { coordinator, double, flake, token }
    }

    /// A machine named after its LINSTOR node, its volume root that node's.
    async fn machine(&self, name: &str) -> (Vm, AgentHandle, String) {
        let (vm, mut agent) = self.spawn(name);
        agent.wait_for(Duration::from_secs(30), |s| s.reports >= 1).await.expect("agent online");
        let id = self.coordinator.machines().await.into_iter().find(|m| m.hostname == name).expect("enrolled").id;
        (vm, agent, id)
    }

    fn spawn(&self, name: &str) -> (Vm, AgentHandle) {
        let root = self.double.node_root(name);
        spawn_vm_with(&self.coordinator, name, Some(&self.token), |c| {
            c.volume_root = root;
            c.device_wait = Duration::from_secs(10);
        })
    }

    fn spec(&self, machine: &str, system: &str, volumes: Vec<VolumeClaim>) -> DeploySpec {
        DeploySpec {
            machine: Some(machine.into()),
            selector: Default::default(),
            system: flake_spec(&self.flake, system),
            secrets: vec![],
            facts: Default::default(),
            checks: vec![],
            health_deadline_ms: 5_000,
            buckets: vec![],
            volumes,
            goal: Default::default(),
            force_switch: false,
            override_rollout: false,
            reboot: false,
        }
    }

    /// Deploys and waits for the outcome.
    async fn deploy(&self, spec: DeploySpec) -> Result<DeploymentInfo, WireError> {
        let client = self.coordinator.admin().await;
        let answer = client.call(AdminRequest::Deploy(spec)).await;
        client.close().await;
        let targets = match answer {
            Ok(answer) => answer.deployed().expect("Deployed"),
            Err(e) => return Err(WireError::new(e.code().unwrap_or(ErrorCode::Internal), e.to_string())),
        };
        let id = targets[0].deployment_id.clone();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let mut last;
        loop {
            let d = self.coordinator.call(AdminRequest::DeploymentsShow { id: id.clone() }).await.deployment().expect("Deployment");
            let over = matches!(d.state, DeploymentState::Succeeded | DeploymentState::Failed);
            last = Some(d);
            if over {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "the deployment ends: {last:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(last.expect("seen"))
    }

    async fn cli(&self, args: &[&str]) -> (bool, serde_json::Value, String) {
        let fleet = &self.coordinator;
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let bundle = fleet.bundle_path.clone();
        tokio::task::spawn_blocking(move || {
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_drover"))
                .args(&args)
                .args(["--output", "json"])
                .env("DROVER_ADMIN_BUNDLE", &bundle)
                .output()
                .expect("run drover");
            let json = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
            (out.status.success(), json, String::from_utf8_lossy(&out.stderr).to_string())
        })
        .await
        .expect("cli")
    }
}

fn mounted(path: &Path) -> bool {
    let wanted = path.to_string_lossy().to_string();
    std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo").lines().any(|l| l.split(' ').nth(4) == Some(wanted.as_str()))
}

fn claim(name: &str, mount: &str, fs: Filesystem, size: Option<u64>) -> VolumeClaim {
    VolumeClaim { name: name.into(), mount_point: mount.into(), filesystem: fs, size_bytes: size }
}

fn uuid(device: &Path) -> String {
    let out = std::process::Command::new("blkid").args(["-p", "-s", "UUID", "-o", "value"]).arg(device).output().expect("blkid");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_volume_is_formatted_once_kept_and_moved_with_its_data() {
    let fleet = Fleet::start(&["vm-a", "vm-b"]).await;
    let (_vm_a, agent_a, a) = fleet.machine("vm-a").await;
    let (_vm_b, _agent_b, b) = fleet.machine("vm-b").await;
    let mount_a = fleet.double.node_root("vm-a").join("srv/data");
    let mount_b = fleet.double.node_root("vm-b").join("srv/data");

    // Deploy with a new volume: LINSTOR gets the definitions and the
    // resource on A's node; A formats the blank device and mounts it.
    let d = fleet.deploy(fleet.spec(&a, "good", vec![claim("data", "/srv/data", Filesystem::Ext4, Some(64 << 20))])).await.expect("deployed");
    assert_eq!(d.state, DeploymentState::Succeeded, "{d:?}");
    assert!(d.steps.iter().any(|s| s.step == DeployStep::VolumesAttached), "{:?}", d.steps);
    let log = fleet.double.log();
    for call in [
        "POST /v1/resource-definitions",
        "POST /v1/resource-definitions/data/volume-definitions",
        "POST /v1/resource-definitions/data/autoplace",
        "POST /v1/resource-definitions/data/resources/vm-a/make-available",
    ] {
        assert!(log.iter().any(|l| l == call), "LINSTOR received {call}: {log:?}");
    }
    assert!(mounted(&mount_a), "A mounted the volume");
    let device = fleet.double.device("data", "vm-a").expect("the volume is on A's node");
    let made = uuid(&device);
    assert!(!made.is_empty(), "A formatted it");
    std::fs::write(mount_a.join("file"), "written on A").expect("write");

    // A second deployment (no --volume: the machine keeps what it holds).
    let d = fleet.deploy(fleet.spec(&a, "good2", vec![])).await.expect("deployed");
    assert_eq!(d.state, DeploymentState::Succeeded, "{d:?}");
    assert!(mounted(&mount_a));
    // An agent restart.
    agent_a.stop().await.expect("stop");
    let (_vm_a, mut agent_a) = fleet.spawn("vm-a");
    agent_a.wait_for(Duration::from_secs(30), |s| s.reports >= 1).await.expect("back online");
    let d = fleet.deploy(fleet.spec(&a, "good", vec![])).await.expect("deployed");
    assert_eq!(d.state, DeploymentState::Succeeded, "{d:?}");
    assert_eq!(uuid(&device), made, "never formatted again");
    assert_eq!(std::fs::read_to_string(mount_a.join("file")).expect("read"), "written on A");

    // The coordinator records what the agent reports: formatted, mounted, used.
    let ok = eventually(Duration::from_secs(20), || async {
        let (ok, v, _) = fleet.cli(&["volumes", "show", "data"]).await;
        ok && v["formatted"] == true && v["state"]["mounted"] == true && v["state"]["used_bytes"].as_u64().unwrap_or(0) > 0
    })
    .await;
    assert!(ok, "volumes show reports the agent's state: {:?}", fleet.cli(&["volumes", "show", "data"]).await);

    // One machine at a time: B is refused, naming A.
    let (ok, _, err) = fleet.cli(&["volumes", "attach", "data", "--machine", &b, "--mount", "/srv/data"]).await;
    assert!(!ok && err.contains(&a), "refused naming A: {err}");
    let e = fleet.deploy(fleet.spec(&b, "good", vec![claim("data", "/srv/data", Filesystem::Ext4, None)])).await.expect_err("refused");
    assert!(e.message.contains(&a) && e.message.contains("nothing recorded"), "{e}");
    // Nor is an attached volume deleted.
    let (ok, _, err) = fleet.cli(&["volumes", "delete", "data", "--yes-delete-data", "data"]).await;
    assert!(!ok && err.contains("detach it first"), "{err}");

    // Detach: A unmounts it, it leaves A's node; B then mounts A's file.
    let (ok, v, err) = fleet.cli(&["volumes", "detach", "data", "--wait"]).await;
    assert!(ok, "detach: {err}");
    assert!(v["attached"].is_null(), "{v}");
    assert!(!mounted(&mount_a), "A no longer has it mounted");
    assert!(!fleet.double.nodes_of("data").contains(&"vm-a".to_string()), "off A's node");
    let (ok, _, err) = fleet.cli(&["volumes", "attach", "data", "--machine", &b, "--mount", "/srv/data"]).await;
    assert!(!ok && err.contains("no deployment yet"), "a machine without a system gets its volumes with its first deployment: {err}");
    let d = fleet.deploy(fleet.spec(&b, "good", vec![])).await.expect("deployed");
    assert_eq!(d.state, DeploymentState::Succeeded, "{d:?}");
    let (ok, v, err) = fleet.cli(&["volumes", "attach", "data", "--machine", &b, "--mount", "/srv/data"]).await;
    assert!(ok, "attach to B: {err}");
    assert_eq!(v["attached"]["machine_id"], b.as_str());
    let moved = eventually(Duration::from_secs(30), || async { mounted(&mount_b) }).await;
    assert!(moved, "B mounted it");
    assert_eq!(std::fs::read_to_string(mount_b.join("file")).expect("read on B"), "written on A");
    assert_eq!(uuid(&fleet.double.device("data", "vm-b").expect("on B's node")), made, "the same filesystem, moved");

    // Delete: refused without the confirmation, done after detach with it.
    let (ok, _, err) = fleet.cli(&["volumes", "detach", "data", "--wait"]).await;
    assert!(ok, "{err}");
    let (ok, _, err) = fleet.cli(&["volumes", "delete", "data", "--yes-delete-data", "other"]).await;
    assert!(!ok && err.contains("--yes-delete-data data"), "{err}");
    let (ok, _, err) = fleet.cli(&["volumes", "delete", "data", "--yes-delete-data", "data"]).await;
    assert!(ok, "{err}");
    assert!(fleet.double.volumes().is_empty(), "gone from LINSTOR");
    let (ok, list, _) = fleet.cli(&["volumes", "list"]).await;
    assert!(ok && list.as_array().is_some_and(|l| l.is_empty()), "{list}");
}

async fn desired(fleet: &Fleet, id: &str) -> u64 {
    let d = fleet.coordinator.call(AdminRequest::MachinesDetail { id: id.into() }).await.machine_detail().expect("MachineDetail");
    d.desired_generation
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linstor_faults_refuse_the_deployment_with_nothing_recorded_and_a_retry_completes() {
    let mut fleet = Fleet::start(&["vm-a"]).await;
    let (vm, _agent, a) = fleet.machine("vm-a").await;
    let d = fleet.deploy(fleet.spec(&a, "good", vec![])).await.expect("deployed");
    assert_eq!(d.state, DeploymentState::Succeeded);
    let before = desired(&fleet, &a).await;

    // Unreachable.
    fleet.double.stop().await;
    let e = fleet.deploy(fleet.spec(&a, "good2", vec![claim("pg", "/var/lib/pg", Filesystem::Ext4, Some(32 << 20))])).await.expect_err("unreachable");
    assert!(e.message.contains("unreachable") && e.message.contains("nothing recorded"), "{e}");
    assert_eq!(desired(&fleet, &a).await, before, "no generation recorded");
    fleet.double.resume().await;
    let (ok, list, _) = fleet.cli(&["volumes", "list"]).await;
    assert!(ok && list.as_array().is_some_and(|l| l.is_empty()), "no volume recorded: {list}");

    // An existing volume of another size.
    let (ok, _, err) = fleet.cli(&["volumes", "create", "small", "--size", "32MiB"]).await;
    assert!(ok, "{err}");
    let e = fleet.deploy(fleet.spec(&a, "good2", vec![claim("small", "/srv/small", Filesystem::Ext4, Some(64 << 20))])).await.expect_err("size");
    assert!(e.message.contains("exists with 32.0 MiB") && e.message.contains("volumes resize"), "{e}");
    assert_eq!(desired(&fleet, &a).await, before);

    // A storage pool that does not exist: LINSTOR's message and correction.
    fleet.coordinator.stop().await;
    if let Some(l) = fleet.coordinator.config.linstor.as_mut() {
        l.storage_pool = Some("nope".into());
    }
    fleet.coordinator.serve().await;
    let e = fleet.deploy(fleet.spec(&a, "good2", vec![claim("pg", "/var/lib/pg", Filesystem::Ext4, Some(32 << 20))])).await.expect_err("pool");
    assert!(e.message.contains("Storage pool 'nope' not found") && e.message.contains("correction:"), "{e}");
    assert_eq!(desired(&fleet, &a).await, before);

    // Fixed: the same deployment completes.
    fleet.coordinator.stop().await;
    if let Some(l) = fleet.coordinator.config.linstor.as_mut() {
        l.storage_pool = None;
    }
    fleet.coordinator.serve().await;
    let d = fleet.deploy(fleet.spec(&a, "good2", vec![claim("pg", "/var/lib/pg", Filesystem::Ext4, Some(32 << 20))])).await.expect("retry");
    assert_eq!(d.state, DeploymentState::Succeeded, "{d:?}");
    assert!(mounted(&fleet.double.node_root("vm-a").join("var/lib/pg")));

    // A device that holds another filesystem: the deployment fails before
    // the switch, naming the volume and what it found; the device is unchanged.
    let (ok, _, err) = fleet.cli(&["volumes", "create", "old", "--size", "320MiB"]).await;
    assert!(ok, "{err}");
    let image = fleet.double.root.join("volumes/old.img");
    assert!(std::process::Command::new("mkfs.xfs").args(["-q", "-K"]).arg(&image).status().expect("mkfs.xfs").success());
    let hash = |p: &Path| {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(std::fs::read(p).expect("read image")))
    };
    let before_hash = hash(&image);
    let activations = vm.activations().len();
    let d = fleet.deploy(fleet.spec(&a, "good", vec![claim("old", "/srv/old", Filesystem::Ext4, None)])).await.expect("recorded");
    assert_eq!(d.state, DeploymentState::Failed, "{d:?}");
    let last = &d.steps.last().expect("steps").message;
    assert!(last.contains("volume old") && last.contains("xfs") && last.contains("not changed"), "{last}");
    assert_eq!(hash(&image), before_hash, "not one byte of the device changed");
    assert_eq!(vm.activations().len(), activations, "no switch happened");
    assert!(!mounted(&fleet.double.node_root("vm-a").join("srv/old")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drover_volumes_resize_grows_a_mounted_volume_and_refuses_to_shrink() {
    let fleet = Fleet::start(&["vm-a"]).await;
    let (_vm, _agent, a) = fleet.machine("vm-a").await;
    let claims = vec![claim("media", "/srv/media", Filesystem::Xfs, Some(320 << 20)), claim("db", "/srv/db", Filesystem::Ext4, Some(64 << 20))];
    let d = fleet.deploy(fleet.spec(&a, "good", claims)).await.expect("deployed");
    assert_eq!(d.state, DeploymentState::Succeeded, "{d:?}");
    let media = fleet.double.node_root("vm-a").join("srv/media");
    std::fs::write(media.join("file"), "kept").expect("write");
    let total = |v: &serde_json::Value| v["state"]["total_bytes"].as_u64().unwrap_or(0);
    assert!(eventually(Duration::from_secs(20), || async { total(&fleet.cli(&["volumes", "show", "media"]).await.1) > 0 }).await);
    let before = total(&fleet.cli(&["volumes", "show", "media"]).await.1);

    let (ok, v, err) = fleet.cli(&["volumes", "resize", "media", "--size", "400MiB"]).await;
    assert!(ok, "{err}");
    assert_eq!(v["size_bytes"], 400u64 << 20);
    let grown = eventually(Duration::from_secs(30), || async {
        let (_, v, _) = fleet.cli(&["volumes", "show", "media"]).await;
        total(&v) > before + (60 << 20) && v["state"]["mounted"] == true
    })
    .await;
    assert!(grown, "xfs grew on A without unmounting: {:?}", fleet.cli(&["volumes", "show", "media"]).await);
    assert_eq!(std::fs::read_to_string(media.join("file")).expect("read"), "kept");

    // ext4: grown online where the kernel allows; else reported pending.
    let (ok, _, err) = fleet.cli(&["volumes", "resize", "db", "--size", "96MiB"]).await;
    assert!(ok, "{err}");
    let settled = eventually(Duration::from_secs(30), || async {
        let (_, v, _) = fleet.cli(&["volumes", "show", "db"]).await;
        total(&v) > (80 << 20) || v["state"]["grow_pending"].as_str().is_some_and(|w| w.contains("next time"))
    })
    .await;
    assert!(settled, "the ext4 grow is done or reported pending: {:?}", fleet.cli(&["volumes", "show", "db"]).await);

    let (ok, _, err) = fleet.cli(&["volumes", "resize", "media", "--size", "320MiB"]).await;
    assert!(!ok && err.contains("cannot shrink"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reverted_rollout_with_snapshot_volumes_returns_each_volume_to_its_snapshot() {
    let fleet = Fleet::start(&["vm-a", "vm-b", "vm-c"]).await;
    let mut machines = Vec::new();
    for name in ["vm-a", "vm-b", "vm-c"] {
        let (vm, agent, id) = fleet.machine(name).await;
        let volume = format!("data-{}", &name[3..]);
        let d = fleet.deploy(fleet.spec(&id, "good", vec![claim(&volume, "/srv/data", Filesystem::Ext4, Some(32 << 20))])).await.expect("deployed");
        assert_eq!(d.state, DeploymentState::Succeeded, "{d:?}");
        let mount = fleet.double.node_root(name).join("srv/data");
        std::fs::write(mount.join("before"), "written before the rollout").expect("write");
        // On the disk, not only in the page cache: a snapshot of a mounted
        // volume holds what reached the device.
        nix::unistd::sync();
        // Where the "migrate" system writes its marker.
        std::fs::write(vm.root.join("volume-mount"), mount.to_string_lossy().as_bytes()).expect("write");
        machines.push((vm, agent, id, mount, volume));
    }
    // The new generation's health check fails on every machine.
    std::fs::write(fleet.coordinator.dir.path().join("vms/fail-on"), "vm-a\nvm-b\nvm-c\n").expect("fail-on");

    let mut deploy = fleet.spec("", "migrate", vec![]);
    deploy.machine = None;
    deploy.selector = [("role".to_string(), "db".to_string())].into();
    deploy.checks = vec![HealthCheck::Unit { name: "app.service".into() }];
    deploy.health_deadline_ms = 1_000;
    let strategy = RolloutStrategy {
        canary: 0,
        max_parallel: Amount::Percent(100),
        max_unavailable: Amount::Percent(100),
        max_failures: Amount::Count(0),
        healthy_deadline_ms: 30_000,
        min_healthy_time_ms: 0,
        progress_deadline_ms: 60_000,
        auto_revert: true,
        auto_promote: true,
    };
    let r =
        fleet.coordinator.call(AdminRequest::RolloutStart(RolloutSpec { deploy, strategy, snapshot_volumes: true })).await.rollout().expect("rollout refused");
    let mut last = None;
    let reverted = eventually(Duration::from_secs(90), || {
        let id = r.id.clone();
        let fleet = &fleet;
        async move {
            let Ok(now) = fleet.coordinator.call(AdminRequest::RolloutStatus { id }).await.rollout() else { return false };
            now.phase == RolloutPhase::Reverted && now.machines.iter().all(|m| m.state == RolloutMachineState::Reverted)
        }
    })
    .await;
    if !reverted {
        let now = fleet.coordinator.call(AdminRequest::RolloutStatus { id: r.id.clone() }).await.rollout().expect("Rollout");
        last = Some(now);
    }
    assert!(reverted, "the rollout reverted every machine: {last:?}");

    let made = fleet.coordinator.call(AdminRequest::DeploymentsOfRollout { id: r.id.clone() }).await.deployments().expect("Deployments");
    for (_, _, id, mount, _) in &machines {
        let wrote = made.iter().any(|d| &d.machine_id == id && d.output_tail.contains(&format!("marker written in {}", mount.display())));
        assert!(wrote, "{id}: the new generation wrote its marker on the volume: {made:?}");
    }
    for (vm, _agent, id, mount, volume) in &machines {
        assert!(vm.activations().contains(&"migrate".to_string()), "{id} ran the new generation (its migration)");
        assert!(mounted(mount), "{id}: the volume is mounted again");
        assert!(!mount.join("migrated").exists(), "{id}: the migration's marker is gone with the rollback");
        assert_eq!(std::fs::read_to_string(mount.join("before")).expect("read"), "written before the rollout", "{id}");
        let (ok, snaps, err) = fleet.cli(&["volumes", "snapshots", volume]).await;
        assert!(ok, "{err}");
        assert!(snaps.as_array().is_some_and(|s| s.iter().any(|x| x["name"] == format!("pre-{}", r.id))), "{snaps}");
    }
    // A machine cannot have another machine's volume rolled back, nor its
    // own outside a revert that names a snapshot.
    let cert = drover_net::identity::read_cert_pem(&fleet.coordinator.dir.path().join("agents/vm-a/cert.pem")).expect("cert");
    let key = drover_net::identity::read_key_pem(&fleet.coordinator.dir.path().join("agents/vm-a/key.pem")).expect("key");
    let conn = common::raw_connect(&fleet.coordinator, Some((&cert, &key.serialize_der()))).await.expect("connect as vm-a");
    let (_, _, a_id, _, _) = &machines[0];
    let desired_a = desired(&fleet, a_id).await;
    for (generation, name) in [(desired_a, "data-b"), (desired_a - 1, "data-a")] {
        let e = conn.request(&Request::Agent(AgentRequest::RestoreVolume { generation, name: name.into() })).await.expect_err("refused");
        let text = e.to_string();
        assert!(text.contains("not held by this machine") || text.contains("is not this machine's newest") || text.contains("does not roll"), "{text}");
    }
    let e = conn
        .request(&Request::Agent(AgentRequest::RestoreVolume { generation: desired_a + 1, name: "data-a".into() }))
        .await
        .expect_err("a generation that does not exist");
    assert!(e.to_string().contains("newest"), "{e}");
    let (ok, snaps, err) = fleet.cli(&["volumes", "snapshots", "data-a", "--prune"]).await;
    assert!(ok && snaps.as_array().is_some_and(|s| s.is_empty()), "{snaps} {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_gives_each_machine_its_own_volume_by_hostname() {
    let fleet = Fleet::start(&["vm-a", "vm-b"]).await;
    let (_vm_a, _agent_a, _) = fleet.machine("vm-a").await;
    let (_vm_b, _agent_b, _) = fleet.machine("vm-b").await;
    let flake = format!("path:{}#good", fleet.flake.display());

    // One name for two machines: refused before anything is made.
    let (ok, _, err) = fleet.cli(&["rollout", "start", "--selector", "role=db", "--flake", &flake, "--volume", "pg:/srv/pg,size=32MiB"]).await;
    assert!(!ok && err.contains("{hostname}"), "{err}");
    assert!(fleet.double.volumes().is_empty(), "nothing made");

    let (ok, r, err) = fleet
        .cli(&["rollout", "start", "--selector", "role=db", "--flake", &flake, "--volume", "pg-{hostname}:/srv/pg:xfs,size=320MiB", "--min-healthy-time", "0s"])
        .await;
    assert!(ok, "{err}");
    let id = r["id"].as_str().expect("rollout id").to_string();
    let done = eventually(Duration::from_secs(60), || async {
        let Ok(now) = fleet.coordinator.call(AdminRequest::RolloutStatus { id: id.clone() }).await.rollout() else { return false };
        now.phase == RolloutPhase::Succeeded
    })
    .await;
    assert!(done, "the rollout succeeds");
    assert_eq!(fleet.double.volumes(), ["pg-vm-a", "pg-vm-b"]);
    for node in ["vm-a", "vm-b"] {
        assert!(mounted(&fleet.double.node_root(node).join("srv/pg")), "{node} mounts its own volume");
        assert_eq!(fleet.double.nodes_of(&format!("pg-{node}")).iter().filter(|n| n.starts_with("vm-")).collect::<Vec<_>>(), [node]);
    }
}

fn hash(p: &Path) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(std::fs::read(p).expect("read image")))
}

/// The outcome of a machine's deployment of `generation`, once it is over.
async fn outcome(fleet: &Fleet, machine: &str, generation: u64) -> DeploymentInfo {
    let id = format!("d-{machine}-{generation}");
    let show = || async {
        let d = fleet.coordinator.call(AdminRequest::DeploymentsShow { id: id.clone() }).await.deployment().expect("Deployment");
        d
    };
    let over = eventually(Duration::from_secs(60), || async { matches!(show().await.state, DeploymentState::Succeeded | DeploymentState::Failed) }).await;
    let last = show().await;
    assert!(over, "deployment {id} ends: {last:?}");
    last
}

/// "Formatted" is durable with the outcome: a volume detached as soon as
/// its deployment returns — long before any health report — is recorded
/// as formatted, and a second machine refuses it once its first 4 KiB were
/// damaged instead of formatting it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_volume_detached_right_after_its_deployment_is_never_formatted_again() {
    let fleet = Fleet::start_with(&["vm-a", "vm-b"], Duration::from_secs(120)).await;
    let (_vm_a, _agent_a, a) = fleet.machine("vm-a").await;
    let (_vm_b, _agent_b, b) = fleet.machine("vm-b").await;
    assert_eq!(fleet.deploy(fleet.spec(&b, "good", vec![])).await.expect("deployed").state, DeploymentState::Succeeded);

    let d = fleet.deploy(fleet.spec(&a, "good", vec![claim("quick2", "/srv/quick2", Filesystem::Ext4, Some(64 << 20))])).await.expect("deployed");
    assert_eq!(d.state, DeploymentState::Succeeded, "{d:?}");
    let mount_a = fleet.double.node_root("vm-a").join("srv/quick2");
    std::fs::write(mount_a.join("file"), "written on A").expect("write");
    let (ok, v, err) = fleet.cli(&["volumes", "detach", "quick2", "--wait"]).await;
    assert!(ok, "detach: {err}");
    assert!(v["attached"].is_null() && v["formatted"] == true, "recorded as formatted when the detach returns: {v}");
    let (_, v, _) = fleet.cli(&["volumes", "show", "quick2"]).await;
    assert_eq!(v["formatted"], true, "{v}");

    // The first 4 KiB damaged (the superblock and what precedes it).
    let image = fleet.double.image("quick2").expect("the volume's file");
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&image).expect("open image");
        f.write_all_at(&[0u8; 4096], 0).expect("damage");
        f.sync_all().expect("sync");
    }
    let damaged = hash(&image);
    let (ok, v, err) = fleet.cli(&["volumes", "attach", "quick2", "--machine", &b, "--mount", "/srv/quick2"]).await;
    assert!(ok, "attach to B is recorded: {err}");
    let generation = v["attached"]["generation"].as_u64().expect("the generation that gives it to B");
    let d = outcome(&fleet, &b, generation).await;
    assert_eq!(d.state, DeploymentState::Failed, "B refuses the volume: {d:?}");
    let last = &d.steps.last().expect("steps").message;
    assert!(last.contains("volume quick2") && last.contains("formatted before"), "{last}");
    assert_eq!(hash(&image), damaged, "not one byte of the volume changed");
    assert!(!mounted(&fleet.double.node_root("vm-b").join("srv/quick2")));
    let (_, v, _) = fleet.cli(&["volumes", "show", "quick2"]).await;
    assert!(v["attached"].is_null() && v["formatted"] == true, "the refused volume left B, still recorded formatted: {v}");
}

/// A resource made outside Drover (a Proxmox VM's disk by linstor-proxmox)
/// is neither listed, deleted, attached, resized nor snapshotted through
/// Drover; an admin adopts it explicitly, and even then it is formatted
/// only when an admin allows it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resource_drover_did_not_make_is_left_alone_until_adopted() {
    let fleet = Fleet::start(&["vm-a"]).await;
    let (_vm, _agent, a) = fleet.machine("vm-a").await;
    assert_eq!(fleet.deploy(fleet.spec(&a, "good", vec![])).await.expect("deployed").state, DeploymentState::Succeeded);
    fleet.double.make_foreign("vm-100-disk-1", 64 << 10, &[]);
    let image = fleet.double.image("vm-100-disk-1").expect("file");
    let before = hash(&image);
    let sent = fleet.double.log().len();

    let (ok, list, _) = fleet.cli(&["volumes", "list"]).await;
    assert!(ok && list.as_array().is_some_and(|l| l.is_empty()), "not listed: {list}");
    for args in [
        vec!["volumes", "delete", "vm-100-disk-1", "--yes-delete-data", "vm-100-disk-1"],
        vec!["volumes", "attach", "vm-100-disk-1", "--machine", a.as_str(), "--mount", "/srv/x"],
        vec!["volumes", "resize", "vm-100-disk-1", "--size", "128MiB"],
        vec!["volumes", "snapshot", "vm-100-disk-1"],
        vec!["volumes", "show", "vm-100-disk-1"],
    ] {
        let (ok, _, err) = fleet.cli(&args).await;
        assert!(!ok && err.contains("did not make") && err.contains("volumes adopt vm-100-disk-1"), "{args:?}: {err}");
    }
    let e = fleet.deploy(fleet.spec(&a, "good2", vec![claim("vm-100-disk-1", "/srv/x", Filesystem::Ext4, None)])).await.expect_err("refused");
    assert!(e.message.contains("did not make") && e.message.contains("nothing recorded"), "{e}");
    let changes: Vec<String> = fleet.double.log()[sent..].iter().filter(|l| !l.starts_with("GET")).cloned().collect();
    assert!(changes.is_empty(), "nothing but reads reached LINSTOR: {changes:?}");
    assert_eq!(hash(&image), before);
    assert_eq!(fleet.double.nodes_of("vm-100-disk-1"), ["stor1"], "still where it was");

    // Adopted explicitly, by an admin, with the name twice.
    let (ok, _, err) = fleet.cli(&["volumes", "adopt", "vm-100-disk-1", "--yes-adopt", "other"]).await;
    assert!(!ok && err.contains("--yes-adopt vm-100-disk-1"), "{err}");
    let (ok, v, err) = fleet.cli(&["volumes", "adopt", "vm-100-disk-1", "--yes-adopt", "vm-100-disk-1"]).await;
    assert!(ok && v["name"] == "vm-100-disk-1", "{err}");
    assert!(fleet.double.props("vm-100-disk-1").expect("props").get("Aux/drover-fleet").is_some_and(|f| f.starts_with("drover-")));
    let (_, list, _) = fleet.cli(&["volumes", "list"]).await;
    assert_eq!(list.as_array().map(|l| l.len()), Some(1), "{list}");

    // Adopted, it reads as zeroes, yet it is not Drover's to call new: refused.
    let d = fleet.deploy(fleet.spec(&a, "good2", vec![claim("vm-100-disk-1", "/srv/x", Filesystem::Ext4, None)])).await.expect("recorded");
    assert_eq!(d.state, DeploymentState::Failed, "{d:?}");
    assert!(d.steps.last().expect("steps").message.contains("does not vouch"), "{:?}", d.steps);
    assert_eq!(hash(&image), before, "unchanged");
    let (ok, _, err) = fleet.cli(&["volumes", "allow-format", "vm-100-disk-1", "--yes-overwrite", "vm-100-disk-1"]).await;
    assert!(ok, "{err}");
    let d = fleet.deploy(fleet.spec(&a, "good2", vec![claim("vm-100-disk-1", "/srv/x", Filesystem::Ext4, None)])).await.expect("deployed");
    assert_eq!(d.state, DeploymentState::Succeeded, "formatted once allowed: {d:?}");
    assert!(mounted(&fleet.double.node_root("vm-a").join("srv/x")));
    let (_, v, _) = fleet.cli(&["volumes", "show", "vm-100-disk-1"]).await;
    assert_eq!(v["formatted"], true, "{v}");
    let (_, audit, _) = fleet.cli(&["audit"]).await;
    let actions: Vec<&str> = audit.as_array().into_iter().flatten().filter_map(|e| e["action"].as_str()).collect();
    assert!(actions.contains(&"volumes adopt") && actions.contains(&"volumes allow-format"), "audited: {actions:?}");
}

/// Names LINSTOR refuses or treats as one, sizes and mount points that
/// cannot work, all refused with the reason before any request; a volume
/// with snapshots names the way to delete them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_volume_input_is_refused_before_any_request_with_the_fix() {
    let fleet = Fleet::start(&["vm-a"]).await;
    let (_vm, _agent, a) = fleet.machine("vm-a").await;
    assert_eq!(fleet.deploy(fleet.spec(&a, "good", vec![])).await.expect("deployed").state, DeploymentState::Succeeded);
    let (ok, _, err) = fleet.cli(&["volumes", "create", "data", "--size", "32MiB"]).await;
    assert!(ok, "{err}");
    let sent = fleet.double.log().len();
    let flake = format!("path:{}#good", fleet.flake.display());
    for (args, named) in [
        (vec!["volumes", "create", "a", "--size", "32MiB"], "2 to 48"),
        (vec!["volumes", "create", "all", "--size", "32MiB"], "reserves"),
        (vec!["volumes", "create", "DATA", "--size", "32MiB"], "same block storage resource as volume \"data\""),
        (vec!["volumes", "create", "neg", "--size", "-1"], "negative"),
        (vec!["volumes", "create", "neg", "--size=-1"], "negative"),
        (vec!["deploy", "--machine", a.as_str(), "--flake", flake.as_str(), "--volume", "DATA:/srv/data"], "same block storage resource"),
        (vec!["deploy", "--machine", a.as_str(), "--flake", flake.as_str(), "--volume", "media:/srv/media:xfs,size=64MiB"], "300"),
        (vec!["deploy", "--machine", a.as_str(), "--flake", flake.as_str(), "--volume", "keys:/etc/ssh,size=32MiB"], "/etc"),
        (vec!["deploy", "--machine", a.as_str(), "--flake", flake.as_str(), "--volume", "home:/home,size=32MiB"], "hide every directory"),
    ] {
        let (ok, _, err) = fleet.cli(&args).await;
        assert!(!ok && err.contains(named), "{args:?} refused naming {named:?}: {err}");
    }
    assert_eq!(fleet.double.log().len(), sent, "no request reached LINSTOR: {:?}", &fleet.double.log()[sent..]);

    let (ok, _, err) = fleet.cli(&["volumes", "snapshot", "data", "--name", "keep"]).await;
    assert!(ok, "{err}");
    let (ok, _, err) = fleet.cli(&["volumes", "delete", "data", "--yes-delete-data", "data"]).await;
    assert!(!ok && err.contains("volumes snapshots data --prune"), "{err}");
    assert_eq!(fleet.double.volumes(), ["data"]);
}

/// A `--volume` the agent refused (a device that holds data) leaves the
/// machine: the next plain deployment succeeds without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_refused_volume_a_plain_deployment_succeeds() {
    let fleet = Fleet::start(&["vm-a"]).await;
    let (_vm, _agent, a) = fleet.machine("vm-a").await;
    assert_eq!(fleet.deploy(fleet.spec(&a, "good", vec![])).await.expect("deployed").state, DeploymentState::Succeeded);
    let (ok, _, err) = fleet.cli(&["volumes", "create", "junk", "--size", "32MiB"]).await;
    assert!(ok, "{err}");
    // A partition table, as another tool left it.
    let image = fleet.double.image("junk").expect("file");
    let mut sfdisk = std::process::Command::new("sfdisk")
        .args(["--quiet", "--no-reread", "--no-tell-kernel"])
        .arg(&image)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("sfdisk (apt-get install fdisk)");
    std::io::Write::write_all(sfdisk.stdin.as_mut().expect("stdin"), b"label: gpt\n,8MiB,L\n").expect("table");
    assert!(sfdisk.wait().expect("sfdisk").success());
    let before = hash(&image);

    let d = fleet.deploy(fleet.spec(&a, "good2", vec![claim("junk", "/srv/junk", Filesystem::Ext4, None)])).await.expect("recorded");
    assert_eq!(d.state, DeploymentState::Failed, "{d:?}");
    assert!(d.steps.last().expect("steps").message.contains("partition table (gpt)"), "{:?}", d.steps);
    assert_eq!(hash(&image), before);

    let d = fleet.deploy(fleet.spec(&a, "good2", vec![])).await.expect("deployed");
    assert_eq!(d.state, DeploymentState::Succeeded, "the next plain deployment does not carry the refused volume: {d:?}");
    let (_, v, _) = fleet.cli(&["volumes", "show", "junk"]).await;
    assert!(v["attached"].is_null(), "{v}");
    let off = eventually(Duration::from_secs(10), || async { !fleet.double.nodes_of("junk").contains(&"vm-a".to_string()) }).await;
    assert!(off, "taken off the machine's node");
}
