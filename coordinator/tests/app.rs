//! The application layer in process, against the test kit's fakes and the
//! in-memory store: no QUIC, no root, no Garage, no QEMU. Admin requests go
//! through the one dispatch (`app::admin::handle`, roles and audit
//! included); machines enroll through `app::enroll`; what the fakes were
//! asked is checked. The suites against the real systems (`s3.rs`,
//! `volumes.rs`, `provision.rs`, ...) stay beside these.

use std::sync::Arc;
use std::time::Duration;

use drover_coordinator::app::{self, admin, Coordinator};
use drover_coordinator::config::{LinstorConfig, ProviderConfig, QemuProviderConfig, S3Config};
use drover_coordinator::init::{init, InitOptions};
use drover_coordinator::store::{MemoryBackend, Store};
use drover_protocol::v1::*;
use drover_protocol::{ErrorCode, WireError};
use drover_testkit::Fakes;

/// A coordinator over the in-memory store (seeded by `drover init`: the CA,
/// the first admin) with every external system faked; `(coordinator,
/// fakes, the root admin's serial)`.
struct App {
    state: Arc<Coordinator>,
    fakes: Fakes,
    serial: String,
    _dir: tempfile::TempDir,
}

impl App {
    fn new() -> App {
        App::with_backend(Arc::new(MemoryBackend::default()))
    }

    fn with_backend(backend: Arc<dyn drover_coordinator::store::Backend>) -> App {
        App::with_store(Store::with_backend(backend))
    }

    fn with_store(store: Store) -> App {
        let dir = tempfile::tempdir().expect("tempdir");
        let state_dir = dir.path().join("state");
        let outcome = init(InitOptions {
            state_dir: state_dir.clone(),
            listen: "127.0.0.1:7443".parse().expect("addr"),
            advertise: None,
            server_names: vec![],
            admin_name: "root".into(),
            health_interval: Some(Duration::from_secs(1)),
            machine_cert_lifetime: None,
            store: None,
            join: None,
        })
        .expect("init");
        let mut config = outcome.config;
        config.s3 = Some(S3Config {
            admin_endpoint: "http://garage.fake:3903".into(),
            admin_token_file: dir.path().join("unused-token"),
            s3_endpoint: "http://s3.fake:3900".into(),
            region: "garage".into(),
            public_url: Some("https://{bucket}.web.example.net".into()),
        });
        config.linstor = Some(LinstorConfig::new("http://linstor.fake:3370"));
        config.providers = vec![ProviderConfig::Qemu(QemuProviderConfig {
            name: "local".into(),
            image: dir.path().join("image"),
            work_dir: None,
            max_vms: 4,
            accel: "tcg".into(),
            isolate: false,
            qemu: "qemu-system-x86_64".into(),
            guest_coordinator: None,
            cores: 1,
            memory_mib: 512,
            disk_mib: 1024,
            boot_timeout: Duration::from_secs(60),
        })];
        // What `drover init` stored, in memory.
        let (ca, on_disk) = app::open_state(&config).expect("state");
        store.load_snapshot(&on_disk.snapshot().expect("snapshot")).expect("load");
        drop(on_disk);
        let serial = store.admin("root").expect("read").expect("root").serials[0].clone();
        let fakes = Fakes::new();
        let backends = fakes.backends(&config, &ca.fleet_id());
        App { state: Arc::new(Coordinator::new(config, ca, store, backends)), fakes, serial, _dir: dir }
    }

    async fn call(&self, request: AdminRequest) -> Result<AdminResponse, WireError> {
        match admin::handle(&self.state, "root", &self.serial, request).await {
            Response::Admin(answer) => Ok(answer),
            Response::Error(e) => Err(e),
            other => panic!("unexpected answer {other:?}"),
        }
    }

    async fn ok(&self, request: AdminRequest) -> AdminResponse {
        self.call(request).await.unwrap_or_else(|e| panic!("refused: {e:?}"))
    }

    /// Enrolls a machine with a new one-use token carrying `labels`; its id.
    async fn enroll(&self, hostname: &str, labels: &[(&str, &str)]) -> String {
        let labels = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let created = self.ok(AdminRequest::TokensCreate(TokenSpec { labels, ttl_ms: 60_000, uses: 1 })).await.token_created().expect("a token");
        self.enroll_with(created.token, hostname).await.expect("enrolled").subject
    }

    async fn enroll_with(&self, token: Secret, hostname: &str) -> Result<IssuedCertificate, WireError> {
        let key = drover_net::identity::generate_key().expect("key");
        let csr_der = drover_net::identity::csr_der(&key, hostname).expect("csr");
        app::enroll::enroll(&self.state, EnrollRequest { token, csr_der, hostname: hostname.into() }).await
    }
}

/// A provision of `name` on the fake provider `local`, with its defaults.
fn provision_request(name: &str) -> ProvisionRequest {
    ProvisionRequest {
        name: name.into(),
        provider: "local".into(),
        template: None,
        cores: None,
        memory_bytes: None,
        disk_bytes: None,
        labels: Default::default(),
        disks: vec![],
    }
}

/// A rollout strategy: `canary` machines first, then `parallel` at a time
/// (as many may be unavailable), no failure allowed.
fn strategy(canary: u32, parallel: u32, auto_promote: bool) -> RolloutStrategy {
    RolloutStrategy {
        canary,
        max_parallel: Amount::Count(parallel),
        max_unavailable: Amount::Count(parallel),
        max_failures: Amount::Count(0),
        healthy_deadline_ms: 60_000,
        min_healthy_time_ms: 0,
        progress_deadline_ms: 600_000,
        auto_revert: true,
        auto_promote,
    }
}

fn closure(path: &str) -> SystemSpec {
    SystemSpec::Closure {
        store_path: path.into(),
        substituters: vec!["http://cache.example.org".into()],
        trusted_public_keys: vec!["cache.example.org-1:AAAA".into()],
    }
}

fn deploy(selector: &[(&str, &str)], system: SystemSpec) -> DeploySpec {
    DeploySpec {
        machine: None,
        selector: selector.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        system,
        secrets: vec![],
        facts: Default::default(),
        checks: vec![],
        health_deadline_ms: 5_000,
        buckets: vec![],
        volumes: vec![],
        goal: Default::default(),
        force_switch: false,
        override_rollout: false,
        reboot: false,
    }
}

#[tokio::test]
async fn a_deployment_records_a_generation_per_target_and_a_dry_run_shows_the_closure_diff() {
    let app = App::new();
    let a = app.enroll("web-1", &[("role", "web")]).await;
    let b = app.enroll("web-2", &[("role", "web")]).await;
    app.enroll("db-1", &[("role", "db")]).await;
    let targets = app
        .ok(AdminRequest::Deploy(deploy(&[("role", "web")], closure("/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-nixos-system-a"))))
        .await
        .deployed()
        .expect("deployed");
    let mut ids: Vec<&str> = targets.iter().map(|t| t.machine_id.as_str()).collect();
    ids.sort();
    let mut want = vec![a.as_str(), b.as_str()];
    want.sort();
    assert_eq!(ids, want, "the web machines, not the database");
    assert!(targets.iter().all(|t| t.generation == 1));
    let record = app.state.store.assignment(&a, 1).expect("read").expect("the assignment is recorded");
    assert_eq!(record.assignment.system, closure("/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-nixos-system-a"));

    app.fakes.nix.set_diff(
        "/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-nixos-system-a",
        "/nix/store/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-nixos-system-b",
        "hello: 2.12 → 2.12.1",
    );
    let plan = app
        .ok(AdminRequest::DeployDryRun(deploy(&[("role", "web")], closure("/nix/store/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-nixos-system-b"))))
        .await
        .deploy_plan()
        .expect("a plan");
    assert_eq!(plan.len(), 2);
    assert!(plan.iter().all(|p| p.closure_diff.as_deref() == Some("hello: 2.12 → 2.12.1")), "{plan:?}");
    assert_eq!(app.state.store.machine(&a).expect("read").expect("machine").desired_generation, 1, "a dry run records nothing");

    let e = app
        .call(AdminRequest::Deploy(deploy(&[("role", "nothing")], closure("/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-nixos-system-a"))))
        .await
        .expect_err("no target");
    assert_eq!(e.code, ErrorCode::NotFound);
}

#[tokio::test]
async fn a_deployment_with_a_bucket_makes_it_and_a_key_granted_only_to_it_and_delivers_them() {
    let app = App::new();
    let id = app.enroll("web-1", &[("role", "web")]).await;
    let spec = DeploySpec {
        buckets: vec![BucketRequest { name: "photos-media".into(), public: true }],
        ..deploy(&[("role", "web")], closure("/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-nixos-system-a"))
    };
    app.ok(AdminRequest::Deploy(spec)).await;
    let garage = app.fakes.objects.client("http://garage.fake:3903");
    use drover_coordinator::s3::ObjectStoreAdmin;
    let bucket = garage.bucket("photos-media").await.expect("read").expect("the bucket was made");
    assert!(bucket.website, "public: served through the web endpoint");
    assert_eq!(bucket.keys.len(), 1, "one key, granted on it: {:?}", bucket.keys);
    let assignment = app.state.store.assignment(&id, 1).expect("read").expect("assignment").assignment;
    let facts: serde_json::Value = serde_json::from_str(&assignment.facts_json).expect("facts");
    assert_eq!(facts["s3_bucket.photos-media"], "photos-media", "{facts}");
    assert_eq!(facts["s3_public_url.photos-media"], "https://photos-media.web.example.net", "{facts}");
    let names: Vec<&str> = assignment.secrets.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&"s3-photos-media-access-key-id") && names.contains(&"s3-photos-media-secret-access-key"), "{names:?}");

    app.fakes.objects.set_unreachable(true);
    let again = DeploySpec {
        buckets: vec![BucketRequest { name: "other-media".into(), public: false }],
        ..deploy(&[("role", "web")], closure("/nix/store/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-nixos-system-b"))
    };
    let e = app.call(AdminRequest::Deploy(again)).await.expect_err("Garage is down");
    assert_eq!(e.code, ErrorCode::Unavailable, "{e:?}");
    assert_eq!(app.state.store.machine(&id).expect("read").expect("machine").desired_generation, 1, "nothing recorded without its bucket");
}

#[tokio::test]
async fn volumes_are_made_owned_attached_with_a_new_generation_and_foreign_ones_left_alone() {
    let app = App::new();
    let id = app.enroll("db-1", &[("role", "db")]).await;
    app.ok(AdminRequest::Deploy(deploy(&[("role", "db")], closure("/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-nixos-system-a")))).await;
    app.ok(AdminRequest::Volumes(VolumeRequest::Create { name: "pgdata".into(), size_bytes: 1 << 30, replicas: Some(2), resource_group: None })).await;
    assert!(app.fakes.pool.exists("pgdata"));
    app.ok(AdminRequest::Volumes(VolumeRequest::Attach {
        name: "pgdata".into(),
        machine: id.clone(),
        mount_point: "/var/lib/postgresql".into(),
        filesystem: Filesystem::Xfs,
    }))
    .await;
    let machine = app.state.store.machine(&id).expect("read").expect("machine");
    assert_eq!(machine.desired_generation, 2, "attaching records a generation repeating the newest");
    let mounts = app.state.store.assignment(&id, 2).expect("read").expect("assignment").assignment.volumes;
    assert_eq!(mounts.len(), 1);
    assert!(mounts[0].fresh, "a volume this fleet just made is vouched for as fresh: {mounts:?}");

    app.fakes.pool.make_foreign("vm-100-disk-1", 1 << 20, None);
    let e =
        app.call(AdminRequest::Volumes(VolumeRequest::Delete { name: "vm-100-disk-1".into(), confirm: "vm-100-disk-1".into() })).await.expect_err("not ours");
    assert!(e.message.contains("did not make"), "{e:?}");
    assert!(app.fakes.pool.exists("vm-100-disk-1"), "a resource Drover did not make is never deleted");
    let listed = app.ok(AdminRequest::Volumes(VolumeRequest::List)).await.volumes().and_then(|a| a.volumes()).expect("a list");
    assert_eq!(listed.iter().map(|v| v.name.as_str()).collect::<Vec<_>>(), ["pgdata"], "only this fleet's volumes");
}

fn report(generation: u64, step: DeployStep, message: &str) -> DeploymentReport {
    DeploymentReport { generation, step, message: message.into(), output_tail: String::new(), system_path: None, volumes: vec![] }
}

/// A detach answers at once with the volume "detaching" and the generation
/// that unmounts it; nothing is taken off the node while the machine has
/// not applied it (a failed apply included); the driver finishes it once
/// the machine has.
#[tokio::test]
async fn a_detach_returns_at_once_and_the_driver_finishes_it_when_the_machine_has_unmounted_the_volume() {
    let app = App::new();
    let id = app.enroll("db-1", &[("role", "db")]).await;
    app.ok(AdminRequest::Deploy(deploy(&[("role", "db")], closure("/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-nixos-system-a")))).await;
    app.ok(AdminRequest::Volumes(VolumeRequest::Create { name: "pgdata".into(), size_bytes: 1 << 30, replicas: Some(1), resource_group: None })).await;
    app.ok(AdminRequest::Volumes(VolumeRequest::Attach {
        name: "pgdata".into(),
        machine: id.clone(),
        mount_point: "/srv/pg".into(),
        filesystem: Filesystem::Ext4,
    }))
    .await;
    app::agent::report_deployments(&app.state, &id, vec![report(2, DeployStep::Succeeded, "switched")]).await.expect("report");
    assert!(app.fakes.pool.nodes_of("pgdata").contains(&"db-1".to_string()), "available on the machine's node: {:?}", app.fakes.pool.nodes_of("pgdata"));

    // The machine has not applied anything since: the request does not wait for it.
    let answer = tokio::time::timeout(Duration::from_secs(5), app.call(AdminRequest::Volumes(VolumeRequest::Detach { name: "pgdata".into() })))
        .await
        .expect("the detach answers without waiting for the machine")
        .expect("detach started");
    let v = answer.volumes().and_then(|a| a.volume()).expect("a volume");
    let attached = v.attached.expect("still attached while the machine unmounts it");
    assert_eq!(attached.detaching, Some(3), "detaching in the machine's next generation");
    let assignment = app.state.store.assignment(&id, 3).expect("read").expect("generation 3").assignment;
    assert!(assignment.volumes.is_empty(), "generation 3 leaves the volume out");

    // Until the machine runs generation 3, the driver leaves the volume on its node.
    app::volumes::finish_detaches(&app.state).await;
    assert!(app.fakes.pool.nodes_of("pgdata").contains(&"db-1".to_string()), "not taken off before the machine unmounted it");
    app::agent::report_deployments(&app.state, &id, vec![report(3, DeployStep::Failed, "umount: target is busy")]).await.expect("report");
    app::volumes::finish_detaches(&app.state).await;
    assert!(app.fakes.pool.nodes_of("pgdata").contains(&"db-1".to_string()), "a failed unmount leaves it where it is");
    let record = app.state.store.volume("pgdata").expect("read").expect("record");
    assert_eq!(record.attached.and_then(|a| a.detaching), Some(3), "still detaching");

    // The machine's next generation (still without the volume) succeeds: the driver finishes.
    app.ok(AdminRequest::Deploy(deploy(&[("role", "db")], closure("/nix/store/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-nixos-system-b")))).await;
    let generation = app.state.store.machine(&id).expect("read").expect("machine").desired_generation;
    assert!(app.state.store.assignment(&id, generation).expect("read").expect("assignment").assignment.volumes.is_empty(), "the volume stays out");
    app::agent::report_deployments(&app.state, &id, vec![report(generation, DeployStep::Succeeded, "switched")]).await.expect("report");
    app::volumes::finish_detaches(&app.state).await;
    assert!(!app.fakes.pool.nodes_of("pgdata").contains(&"db-1".to_string()), "off the machine's node: {:?}", app.fakes.pool.nodes_of("pgdata"));
    let record = app.state.store.volume("pgdata").expect("read").expect("record");
    assert!(record.attached.is_none() && !record.fresh, "detached, and no longer fresh: {record:?}");
}

#[tokio::test]
async fn a_provision_makes_a_vm_carrying_its_identity_whose_seed_enrolls_it_and_destroy_removes_only_it() {
    let app = App::new();
    let driver = tokio::spawn(app::provisions::run(app.state.clone()));
    app.ok(AdminRequest::MachinesProvision(provision_request("web-1"))).await;
    let made = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Some((id, identity, _)) = app.fakes.host.vms().into_iter().next() {
                return (id, identity);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the driver made a VM");
    let (vm, identity) = made;
    let identity = identity.expect("it carries Drover's identity");
    assert_eq!((identity.fleet.as_str(), identity.provider.as_str()), (app.state.ca.fleet_id().as_str(), "local"));

    // The VM's agent enrolls with the token in its seed.
    let seed = app.fakes.host.seed_of(&vm.to_string()).expect("a seed");
    assert_eq!(seed.name, "web-1");
    let issued = app.enroll_with(seed.token.clone(), "web-1").await.expect("the seed's token enrolls the VM");
    let p = app.ok(AdminRequest::ProvisionShow { name: "web-1".into() }).await.provision().expect("a provision");
    assert_eq!(p.machine_id.as_deref(), Some(issued.subject.as_str()));
    assert!(app.enroll_with(seed.token, "again").await.is_err(), "the seed's token is spent");

    // A VM made by hand on the same host is never touched by destroy.
    app.fakes.host.make_by_hand(vm + 1);
    app.ok(AdminRequest::MachinesDestroy { name: "web-1".into(), keep_volumes: false }).await;
    let gone = tokio::time::timeout(Duration::from_secs(10), async {
        while app.fakes.host.vms().iter().any(|(id, _, _)| *id == vm) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(gone.is_ok(), "the provision's VM is deleted");
    assert!(app.fakes.host.vms().iter().any(|(id, identity, _)| *id == vm + 1 && identity.is_none()), "the hand-made VM is left alone");
    driver.abort();
}

/// A delete decides in one transaction that the volume is free and marks it
/// so: an attach that comes while the block storage deletes is refused,
/// instead of attaching a volume that is about to disappear.
#[tokio::test]
async fn an_attach_during_a_delete_is_refused_and_nothing_is_left_pointing_at_the_deleted_volume() {
    let app = Arc::new(App::new());
    let id = app.enroll("db-1", &[("role", "db")]).await;
    app.ok(AdminRequest::Deploy(deploy(&[("role", "db")], closure("/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-nixos-system-a")))).await;
    app.ok(AdminRequest::Volumes(VolumeRequest::Create { name: "scratch".into(), size_bytes: 1 << 30, replicas: Some(2), resource_group: None })).await;
    let release = app.fakes.pool.hold_deletes();
    let deleting = {
        let app = app.clone();
        tokio::spawn(async move { app.call(AdminRequest::Volumes(VolumeRequest::Delete { name: "scratch".into(), confirm: "scratch".into() })).await })
    };
    // The delete is in the block storage's hands now.
    let held = tokio::time::timeout(Duration::from_secs(10), async {
        while app.fakes.pool.deletes_waiting() == 0 {
            assert!(!deleting.is_finished(), "the delete ended before the block storage deleted");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(held.is_ok(), "the delete reached the block storage");
    let attach = AdminRequest::Volumes(VolumeRequest::Attach {
        name: "scratch".into(),
        machine: id.clone(),
        mount_point: "/srv/scratch".into(),
        filesystem: Filesystem::Ext4,
    });
    let refused = app.call(attach).await.expect_err("attaching a volume being deleted is refused");
    assert_eq!(refused.code, ErrorCode::Conflict, "{refused:?}");
    assert!(refused.message.contains("being deleted"), "{refused:?}");
    release.add_permits(1);
    deleting.await.expect("task").expect("the delete finishes");
    assert!(!app.fakes.pool.exists("scratch"));
    let machine = app.state.store.machine(&id).expect("read").expect("machine");
    assert!(machine.volumes.is_empty(), "the machine mounts nothing that was deleted: {:?}", machine.volumes);
}

#[tokio::test]
async fn an_attached_volume_is_neither_deleted_nor_rolled_back_and_the_refusal_names_its_machine() {
    let app = App::new();
    let id = app.enroll("db-1", &[("role", "db")]).await;
    app.ok(AdminRequest::Deploy(deploy(&[("role", "db")], closure("/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-nixos-system-a")))).await;
    app.ok(AdminRequest::Volumes(VolumeRequest::Create { name: "pgdata".into(), size_bytes: 1 << 30, replicas: Some(2), resource_group: None })).await;
    app.ok(AdminRequest::Volumes(VolumeRequest::Snapshot { name: "pgdata".into(), snapshot: Some("before".into()) })).await;
    app.ok(AdminRequest::Volumes(VolumeRequest::Attach {
        name: "pgdata".into(),
        machine: id.clone(),
        mount_point: "/srv/pg".into(),
        filesystem: Filesystem::Xfs,
    }))
    .await;
    for request in [
        VolumeRequest::Delete { name: "pgdata".into(), confirm: "pgdata".into() },
        VolumeRequest::Rollback { name: "pgdata".into(), snapshot: "before".into() },
    ] {
        let e = app.call(AdminRequest::Volumes(request)).await.expect_err("refused while attached");
        assert_eq!(e.code, ErrorCode::Conflict);
        assert!(e.message.contains("db-1") || e.message.contains(&id), "names the machine: {e:?}");
    }
    assert!(app.fakes.pool.exists("pgdata"));
    assert!(app.state.store.volume("pgdata").expect("read").expect("record").busy.is_none(), "a refusal leaves nothing marked");
}

/// A health report from db-1 with volume `pgdata` mounted and formatted.
fn pgdata_health() -> HealthReport {
    HealthReport {
        hostname: "db-1".into(),
        uptime_secs: 1,
        load_average: [0.0; 3],
        cpu_count: 1,
        cpu_usage_percent: 0.0,
        memory_total_bytes: 1,
        memory_used_bytes: 1,
        disks: vec![],
        failed_units: None,
        agent_version: "test".into(),
        system_path: None,
        boot_id: None,
        booted_system: None,
        pending_system: None,
        nix_store: None,
        addresses: vec![],
        volumes: vec![VolumeState {
            name: "pgdata".into(),
            mount_point: "/srv/pg".into(),
            mounted: true,
            formatted: true,
            filesystem: Some("xfs".into()),
            device_bytes: 1 << 30,
            total_bytes: 1 << 30,
            used_bytes: 1 << 20,
            grow_pending: None,
            error: None,
        }],
    }
}

/// A health report that carries volume states is written like every write
/// on the async side: behind the flush in progress, never as a transaction
/// of its own while sled holds its lock for a flush.
#[tokio::test]
async fn a_health_report_with_volume_states_waits_for_the_flush_in_progress() {
    let backend = drover_testkit::store::GatedBackend::new();
    backend.release_flushes(10_000);
    let app = App::with_backend(backend.clone());
    let id = app.enroll("db-1", &[("role", "db")]).await;
    app.ok(AdminRequest::Deploy(deploy(&[("role", "db")], closure("/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-nixos-system-a")))).await;
    app.ok(AdminRequest::Volumes(VolumeRequest::Create { name: "pgdata".into(), size_bytes: 1 << 30, replicas: Some(2), resource_group: None })).await;
    app.ok(AdminRequest::Volumes(VolumeRequest::Attach {
        name: "pgdata".into(),
        machine: id.clone(),
        mount_point: "/srv/pg".into(),
        filesystem: Filesystem::Xfs,
    }))
    .await;

    backend.hold_flushes();
    let flushing = tokio::spawn({
        let state = app.state.clone();
        // A write of its own, so that there is something to flush.
        async move { state.store.commit(|_| Ok::<_, drover_coordinator::store::StoreError>(())).await }
    });
    backend.flush_started().await;
    let report = pgdata_health();
    let reporting = tokio::spawn({
        let (state, id) = (app.state.clone(), id.clone());
        async move { app::agent::report_health(&state, &id, report).await }
    });
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
    assert_eq!(backend.transactions_during_flush.load(std::sync::atomic::Ordering::SeqCst), 0, "no transaction ran during the flush");
    assert!(!reporting.is_finished(), "the report waits for the flush");
    backend.release_flushes(10_000);
    flushing.await.expect("task").expect("flush");
    reporting.await.expect("task").expect("the report is recorded");
    assert!(app.state.store.volume("pgdata").expect("read").expect("record").formatted, "the volume's state is recorded");
}

/// A VM whose start fails for a while (a busy provider) is started again:
/// its provision boots, and the VM is neither deleted nor made twice.
#[tokio::test]
async fn a_vm_whose_start_fails_for_a_while_is_started_again_not_deleted() {
    let app = App::new();
    app.fakes.host.fail_next_starts(3);
    let driver = tokio::spawn(app::provisions::run(app.state.clone()));
    app.ok(AdminRequest::MachinesProvision(provision_request("web-1"))).await;
    let running = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if app.fakes.host.vms().iter().any(|(_, _, running)| *running) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(running.is_ok(), "the VM was started after the failed starts: {:?}", app.fakes.host.vms());
    assert_eq!(app.fakes.host.vms().len(), 1, "one VM, kept");
    assert_eq!(app.fakes.host.creates(), 1, "made once");
    let p = app.ok(AdminRequest::ProvisionShow { name: "web-1".into() }).await.provision().expect("Provision");
    assert_eq!(p.state, ProvisionState::Booting, "waiting for its agent, not failed: {p:?}");
    driver.abort();
}

/// Where the stored form of every record type is kept, one directory per
/// schema version (`v2/machines.json`, ...): a record as the store holds it.
fn store_goldens() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden-store")
}

/// Fills a store with a record of every kind through the application.
async fn a_store_with_every_kind_of_record() -> App {
    let app = App::new();
    let driver = tokio::spawn(app::provisions::run(app.state.clone()));
    let id = app.enroll("db-1", &[("role", "db"), ("tenant", "a.example")]).await;
    app.ok(AdminRequest::TenantsCreate(TenantSpec {
        domain: "a.example".into(),
        admin_email: "ops@a.example".into(),
        admin_user: "owner".into(),
        managers: vec![],
    }))
    .await;
    app.ok(AdminRequest::Deploy(deploy(&[("role", "db")], closure("/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-nixos-system-a")))).await;
    app.ok(AdminRequest::Volumes(VolumeRequest::Create { name: "pgdata".into(), size_bytes: 1 << 30, replicas: Some(1), resource_group: None })).await;
    app.ok(AdminRequest::Volumes(VolumeRequest::Attach {
        name: "pgdata".into(),
        machine: id.clone(),
        mount_point: "/srv/pg".into(),
        filesystem: Filesystem::Ext4,
    }))
    .await;
    app::agent::report_health(&app.state, &id, pgdata_health()).await.expect("a health report");
    let strategy = strategy(1, 1, false);
    let spec = deploy(&[("role", "db")], closure("/nix/store/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-nixos-system-b"));
    app.ok(AdminRequest::RolloutStart(RolloutSpec { deploy: spec, strategy, snapshot_volumes: false })).await;
    app.ok(AdminRequest::S3(S3Request::ClusterAddNode {
        admin: "http://10.0.0.1:3903".into(),
        rpc: "10.0.0.1:3901".into(),
        zone: "dc1".into(),
        capacity: 1 << 40,
    }))
    .await;
    app.ok(AdminRequest::FleetSave { document: "{}".into() }).await;
    app.ok(AdminRequest::MachinesProvision(provision_request("web-1"))).await;
    app.ok(AdminRequest::Nixops4State(StateRequest::Create { name: "social".into() })).await;
    app.ok(AdminRequest::Nixops4State(StateRequest::Event {
        name: "social".into(),
        event: "create".into(),
        nixops_version: "0.1.0".into(),
        patch: r#"[{"op":"add","path":"/resources/db","value":{"type":"machine"}}]"#.into(),
    }))
    .await;
    driver.abort();
    app
}

/// Every record type's stored form is held to a golden file: a record the
/// store wrote reads back and is written again byte for byte, so a change
/// to a record (or to a wire type a record holds) cannot change the store
/// by accident — it needs a new schema version with its migration. The
/// records of every older schema kept here still read back through the
/// migration chain. `DROVER_BLESS_STORE=1` writes the current version's
/// files from a store the application filled.
#[tokio::test]
async fn every_stored_record_keeps_its_form_and_older_ones_read_back() {
    use drover_coordinator::store::{recode, Tree, SCHEMA_VERSION};
    let current = store_goldens().join(format!("v{SCHEMA_VERSION}"));
    if std::env::var_os("DROVER_BLESS_STORE").is_some() {
        let app = a_store_with_every_kind_of_record().await;
        std::fs::create_dir_all(&current).expect("mkdir");
        for (tree, pairs) in app.state.store.snapshot().expect("snapshot") {
            if let Some((key, value)) = pairs.first().filter(|_| tree != "meta") {
                let file =
                    serde_json::json!({ "key": String::from_utf8_lossy(key), "value": serde_json::from_slice::<serde_json::Value>(value).expect("json") });
                std::fs::write(current.join(format!("{tree}.json")), serde_json::to_string_pretty(&file).expect("json") + "\n").expect("write");
            }
        }
    }
    let mut checked = 0;
    for version in 1..=SCHEMA_VERSION {
        let dir = store_goldens().join(format!("v{version}"));
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries {
            let path = entry.expect("entry").path();
            let name = path.file_stem().and_then(|s| s.to_str()).expect("name").to_string();
            let tree = Tree::named(&name).unwrap_or_else(|| panic!("{}: no tree {name}", path.display()));
            let file: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).expect("read")).expect("a golden record");
            let (key, value) = (file["key"].as_str().expect("key").as_bytes(), serde_json::to_vec(&file["value"]).expect("bytes"));
            let again = recode(tree, key, &value).unwrap_or_else(|e| panic!("{}: a record of schema {version} no longer reads back: {e}", path.display()));
            if version == SCHEMA_VERSION {
                let again: serde_json::Value = serde_json::from_slice(&again.expect("a record")).expect("json");
                assert_eq!(
                    again,
                    file["value"],
                    "{}: the stored form of {name} records changed; give the store a new schema version with a migration from this one, \
                     keep this file under v{version}/ and bless the new version's (DROVER_BLESS_STORE=1)",
                    path.display()
                );
            }
            checked += 1;
        }
    }
    for tree in Tree::ALL.iter().filter(|t| **t != Tree::Meta) {
        assert!(current.join(format!("{}.json", tree.name())).exists(), "tree {} has no golden record in {}", tree.name(), current.display());
    }
    assert!(checked >= Tree::ALL.len() - 1, "{checked} golden records checked");
}

/// `n` machines labelled `fleet=big`, enrolled; their ids.
async fn enroll_many(app: &App, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        ids.push(app.enroll(&format!("big-{i}"), &[("fleet", "big")]).await);
    }
    ids
}

/// Each machine's desired generation and whether records exist at `g`.
fn at_generation(app: &App, ids: &[String], g: u64) -> Vec<(u64, bool, bool)> {
    let store = &app.state.store;
    ids.iter()
        .map(|id| {
            let desired = store.machine(id).expect("read").expect("machine").desired_generation;
            (desired, store.assignment(id, g).expect("read").is_some(), store.deployment(id, g).expect("read").is_some())
        })
        .collect()
}

#[tokio::test]
async fn a_deployment_larger_than_one_transaction_is_recorded_in_batches_and_whole() {
    // 16 keys per transaction, as an etcd with --max-txn-ops 16: three
    // machines' generations fit one.
    let backend = Arc::new(MemoryBackend::default());
    let app = App::with_store(Store::with_backend(backend).limited_to(16));
    let ids = enroll_many(&app, 10).await;
    let targets = app
        .ok(AdminRequest::Deploy(deploy(&[("fleet", "big")], closure("/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-nixos-system-a"))))
        .await
        .deployed()
        .expect("deployed");
    assert_eq!(targets.len(), 10);
    assert!(at_generation(&app, &ids, 1).iter().all(|&(desired, a, d)| desired == 1 && a && d), "{:?}", at_generation(&app, &ids, 1));
    assert!(app.state.store.metas(app::generations::BATCH_PREFIX).expect("read").is_empty(), "the plan is gone once every machine points to it");
    let listed = app.ok(AdminRequest::DeploymentsList { machine: None }).await.deployments().expect("list");
    assert_eq!(listed.len(), 10);

    // Again: generation 2 supersedes 1 on every machine (not applied yet).
    app.ok(AdminRequest::Deploy(deploy(&[("fleet", "big")], closure("/nix/store/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-nixos-system-b")))).await;
    for id in &ids {
        assert_eq!(app.state.store.deployment(id, 1).expect("read").expect("g1").state, DeploymentState::Superseded);
        assert_eq!(app.state.store.machine(id).expect("read").expect("m").desired_generation, 2);
    }
    // A reboot of all of them is recorded the same way.
    app.ok(AdminRequest::MachinesReboot { machine: None, selector: [("fleet".to_string(), "big".to_string())].into() }).await;
    assert!(at_generation(&app, &ids, 3).iter().all(|&(desired, a, _)| desired == 3 && a));
    let rebooting = app.state.store.assignment(&ids[0], 3).expect("read").expect("g3");
    assert!(rebooting.assignment.reboot);
    assert_eq!(rebooting.assignment.system, closure("/nix/store/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-nixos-system-b"));
}

#[tokio::test]
async fn a_deployment_cut_off_between_its_batches_is_whole_or_absent_once_a_coordinator_starts_again() {
    let (mut absent, mut whole) = (0, 0);
    // Every transaction of the deployment, in turn, is the one the crash
    // stops: the plan, four batches staged, the commit point, four batches
    // pointed to, the plan removed.
    for crash_at in 1..=11 {
        let backend = drover_testkit::store::CrashingBackend::new();
        let app = App::with_store(Store::with_backend(backend.clone()).limited_to(16));
        let ids = enroll_many(&app, 10).await;
        backend.crash_at(crash_at);
        let result = app.call(AdminRequest::Deploy(deploy(&[("fleet", "big")], closure("/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-nixos-system-a")))).await;
        assert!(backend.crashed(), "transaction {crash_at} is one of the deployment's");
        assert!(result.is_err(), "a deployment cut off is not reported done (crash at {crash_at})");
        // The next start over the same store.
        backend.revive();
        app::generations::finish_batches(&app.state.store).await.expect("finished");
        let seen = at_generation(&app, &ids, 1);
        if seen.iter().all(|&(desired, a, d)| desired == 1 && a && d) {
            whole += 1;
        } else {
            assert!(seen.iter().all(|&(desired, a, d)| desired == 0 && !a && !d), "crash at transaction {crash_at}: neither whole nor absent: {seen:?}");
            absent += 1;
        }
        assert!(app.state.store.metas(app::generations::BATCH_PREFIX).expect("read").is_empty());
        let listed = app.ok(AdminRequest::DeploymentsList { machine: None }).await.deployments().expect("list");
        assert!(listed.len() == 10 || listed.is_empty(), "crash at {crash_at}: {} listed", listed.len());
    }
    assert_eq!((absent, whole), (6, 5), "cut before the commit point: absent; after it: whole");
}

/// Health reports kept in memory are written in as many transactions as
/// the store needs (measured: with 10,000 agents on etcd, a batch of 256
/// was refused by etcd's --max-txn-ops every time, and none was written).
#[tokio::test]
async fn health_reports_are_written_in_transactions_the_store_takes() {
    let app = App::with_store(Store::with_backend(Arc::new(MemoryBackend::default())).limited_to(16));
    let ids = enroll_many(&app, 40).await;
    for id in &ids {
        let health = HealthReport { volumes: vec![], ..pgdata_health() };
        app::agent::report_health(&app.state, id, health).await.expect("report");
    }
    let written = app::agent::write_liveness(&app.state).expect("written in transactions of at most 16 keys");
    assert_eq!(written, 40);
    for id in &ids {
        assert!(app.state.store.machine(id).expect("read").expect("machine").last_seen.is_some(), "{id} seen");
    }
}

/// Two coordinators sharing one store are asked to start rollouts over the
/// same machines at the same moment: one starts, the other is refused as a
/// conflict (each coordinator's own lock does not serialise them).
#[tokio::test]
async fn two_coordinators_sharing_a_store_start_one_rollout_over_the_same_machines() {
    let app = App::new();
    enroll_many(&app, 2).await;
    let (ca, on_disk) = app::open_state(&app.state.config).expect("state");
    drop(on_disk);
    let fleet = ca.fleet_id();
    let other = Coordinator::new(app.state.config.clone(), ca, app.state.store.clone(), app.fakes.backends(&app.state.config, &fleet));
    let strategy = strategy(1, 1, false);
    let spec = RolloutSpec {
        deploy: deploy(&[("fleet", "big")], closure("/nix/store/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-nixos-system-b")),
        strategy,
        snapshot_volumes: false,
    };
    let (a, b) = tokio::join!(
        admin::handle(&app.state, "root", &app.serial, AdminRequest::RolloutStart(spec.clone())),
        admin::handle(&other, "root", &app.serial, AdminRequest::RolloutStart(spec.clone()))
    );
    let started = [&a, &b].iter().filter(|r| matches!(r, Response::Admin(_))).count();
    assert_eq!(started, 1, "one rollout over the machines: {a:?} / {b:?}");
    let refused = [a, b].into_iter().find_map(|r| match r {
        Response::Error(e) => Some(e),
        _ => None,
    });
    assert_eq!(refused.map(|e| e.code), Some(ErrorCode::Conflict));
    let active = app.ok(AdminRequest::RolloutList).await;
    assert_eq!(active.rollouts().expect("Rollouts").len(), 1);
}

/// On a store that takes few keys a transaction (etcd), a rollout step
/// starts as many machines as one transaction holds; a pass of the driver
/// takes more steps at once while they fill their transactions, so a large
/// rollout does not start one transaction's worth of machines a pass.
#[tokio::test]
async fn a_driver_pass_takes_as_many_steps_as_fill_their_transactions() {
    let app = App::with_store(Store::with_backend(Arc::new(MemoryBackend::default())).limited_to(16));
    let ids = enroll_many(&app, 10).await;
    for id in &ids {
        let health = HealthReport { volumes: vec![], ..pgdata_health() };
        app::agent::report_health(&app.state, id, health).await.expect("report");
    }
    let strategy = strategy(0, 10, true);
    let spec = deploy(&[("fleet", "big")], closure("/nix/store/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-nixos-system-b"));
    app.ok(AdminRequest::RolloutStart(RolloutSpec { deploy: spec, strategy, snapshot_volumes: false })).await;
    let per_step = app::generations::machines_per_transaction(&app.state.store, app::generations::KEYS_PER_MACHINE + 1, 2).expect("a limited store");
    assert!(per_step < ids.len() / 2, "a step holds {per_step} of {} machines", ids.len());
    app::driver::drive_once(&app.state).await;
    let started = at_generation(&app, &ids, 1).iter().filter(|(desired, a, _)| *desired == 1 && *a).count();
    assert_eq!(started, ids.len(), "one pass started every machine the strategy allows, {per_step} a transaction");
}

/// A rollout whose record — every machine's state in one record — would
/// outgrow one request of the store (etcd's --max-request-bytes) is
/// refused at its start, saying how many machines fit, instead of stopping
/// in the middle unable to record a step; the same rollout fits a store
/// that takes more.
#[tokio::test]
async fn a_rollout_too_large_for_one_store_request_is_refused_at_its_start_saying_what_fits() {
    let spec = || RolloutSpec {
        deploy: deploy(&[("fleet", "big")], closure("/nix/store/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-nixos-system-b")),
        strategy: strategy(1, 10, true),
        snapshot_volumes: false,
    };
    let small = App::with_store(Store::with_backend(Arc::new(MemoryBackend::default())).limited_to_bytes(2048));
    enroll_many(&small, 20).await;
    let refused = small.call(AdminRequest::RolloutStart(spec())).await.expect_err("too large for one request");
    assert_eq!(refused.code, ErrorCode::InvalidArgument);
    assert!(refused.message.contains("20 machines") && refused.message.contains("store.max_request_bytes"), "{}", refused.message);
    assert!(small.ok(AdminRequest::RolloutList).await.rollouts().expect("Rollouts").is_empty(), "nothing recorded");
    let roomy = App::with_store(Store::with_backend(Arc::new(MemoryBackend::default())).limited_to_bytes(64 * 1024));
    enroll_many(&roomy, 20).await;
    roomy.ok(AdminRequest::RolloutStart(spec())).await;
}

/// A NixOps4 state keeps every event in order: a patch that applies
/// changes the document; one that does not is kept, marked, and leaves
/// the document as it was; a patch that is not JSON, one too large, a bad
/// name and a missing state are refused and keep nothing.
#[tokio::test]
async fn a_nixops4_state_keeps_every_event_in_order_and_applies_what_applies() {
    let app = App::new();
    let state = |r: StateRequest| AdminRequest::Nixops4State(r);
    let event = |patch: &str| state(StateRequest::Event { name: "social".into(), event: "update".into(), nixops_version: "0.1.0".into(), patch: patch.into() });
    let missing = app.call(event("[]")).await.expect_err("no such state");
    assert_eq!(missing.code, ErrorCode::NotFound, "{missing:?}");
    let made = app.ok(state(StateRequest::Create { name: "social".into() })).await.nixops4_state().expect("state").document().expect("doc");
    assert_eq!(made.events, 0);
    // Made again: the same state, not a new one.
    app.ok(event(r#"[{"op":"add","path":"/resources/a","value":1}]"#)).await;
    let again = app.ok(state(StateRequest::Create { name: "social".into() })).await.nixops4_state().expect("state").document().expect("doc");
    assert_eq!(again.events, 1, "{again:?}");
    let kept = app.ok(event(r#"[{"op":"remove","path":"/resources/nothing"}]"#)).await.nixops4_state().expect("state").recorded().expect("recorded");
    assert!(!kept.applied && kept.index == 1 && kept.error.as_deref().is_some_and(|e| e.contains("does not apply")), "{kept:?}");
    app.ok(event(r#"[{"op":"add","path":"/resources/b","value":2}]"#)).await;
    for (bad, why) in [("not json", "not JSON"), (&"x".repeat(300 << 10), "at most")] {
        let e = app.call(event(bad)).await.expect_err("refused");
        assert!(e.code == ErrorCode::InvalidArgument && e.message.contains(why), "{e:?}");
    }
    let e = app.call(state(StateRequest::Create { name: "../etc".into() })).await.expect_err("a bad name");
    assert!(e.message.contains("not a state name"), "{e:?}");
    let doc = app.ok(state(StateRequest::Read { name: "social".into() })).await.nixops4_state().expect("state").document().expect("doc");
    let value: serde_json::Value = serde_json::from_str(&doc.document).expect("json");
    assert_eq!(value["resources"], serde_json::json!({ "a": 1, "b": 2 }), "{value}");
    assert_eq!((doc.events, doc.unapplied.clone()), (3, vec![1]));
    let events =
        app.ok(state(StateRequest::Events { name: "social".into(), from: 0, limit: 10 })).await.nixops4_state().expect("state").events().expect("events");
    let order: Vec<(u64, bool, &str)> = events.iter().map(|e| (e.index, e.applied, e.by.as_str())).collect();
    assert_eq!(order, vec![(0, true, "root"), (1, false, "root"), (2, true, "root")]);
    let page = app.ok(state(StateRequest::Events { name: "social".into(), from: 1, limit: 1 })).await.nixops4_state().expect("state").events().expect("events");
    assert_eq!(page.iter().map(|e| e.index).collect::<Vec<_>>(), vec![1]);
}

/// Counts the values of `snapshot` (every tree) that hold `needle`.
fn holding(snapshot: &drover_coordinator::store::Snapshot, needle: &[u8]) -> Vec<String> {
    snapshot
        .iter()
        .flat_map(|(tree, pairs)| {
            pairs.iter().filter(|(_, v)| v.windows(needle.len()).any(|w| w == needle)).map(move |(k, _)| format!("{tree}/{}", String::from_utf8_lossy(k)))
        })
        .collect()
}

#[tokio::test]
async fn a_deployment_to_ten_thousand_machines_writes_its_spec_once() {
    const N: usize = 10_000;
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, app) in [("memory", App::new()), ("sled", App::with_store(Store::open(&dir.path().join("db")).expect("sled")))] {
        // One machine enrolled, and 9,999 more of its kind put in place (a
        // deployment reads nothing else of them).
        let first = app.enroll("big-0", &[("fleet", "big")]).await;
        let model = app.state.store.machine(&first).expect("read").expect("the machine");
        app.state
            .store
            .commit(|tx| {
                for i in 1..N {
                    let id = format!("m-{i:010x}");
                    let machine = drover_coordinator::model::MachineRecord { id: id.clone(), hostname: format!("big-{i}"), ..model.clone() };
                    tx.put(id.as_bytes(), &machine)?;
                }
                Ok::<_, drover_coordinator::store::StoreError>(())
            })
            .await
            .expect("machines");
        let path = "/nix/store/cccccccccccccccccccccccccccccccc-nixos-system-fleet";
        let secret = b"a-secret-every-machine-of-the-deployment-shares";
        let mut spec = deploy(&[("fleet", "big")], closure(path));
        spec.secrets = vec![SecretFile { name: "shared".into(), value: SecretBytes::new(secret.to_vec()), owner: None, group: None, mode: 0o400 }];
        spec.checks = vec![HealthCheck::Unit { name: "nginx.service".into() }];
        let deployed = app.ok(AdminRequest::Deploy(spec)).await.deployed().expect("deployed");
        assert_eq!(deployed.len(), N, "{name}");

        let snapshot = app.state.store.snapshot().expect("snapshot");
        let trees: std::collections::HashMap<&str, usize> = snapshot.iter().map(|(t, p)| (t.as_str(), p.len())).collect();
        assert_eq!(trees["specs"], 1, "{name}: one spec for the deployment");
        assert_eq!(trees["assignments"], N, "{name}");
        assert_eq!(trees["deployments"], N, "{name}");
        // The system and the secret are written once: in the spec.
        let secret_json = serde_json::to_vec(&SecretBytes::new(secret.to_vec())).expect("json");
        for needle in [path.as_bytes(), &secret_json, b"nginx.service"] {
            let found = holding(&snapshot, needle);
            assert_eq!(found.len(), 1, "{name}: {} in {found:?}", String::from_utf8_lossy(needle));
            assert!(found[0].starts_with("specs/"), "{name}: {found:?}");
        }
        // Each machine's own part is small.
        let largest = snapshot.iter().filter(|(t, _)| t == "assignments").flat_map(|(_, p)| p.iter().map(|(_, v)| v.len())).max().expect("assignments");
        assert!(largest < 1024, "{name}: an assignment of {largest} bytes");

        // Read back whole, as the agent is sent it and the admin shown it.
        let last = format!("m-{:010x}", N - 1);
        let assignment = app.state.store.assignment(&last, 1).expect("read").expect("assignment").assignment;
        assert_eq!(assignment.system, closure(path), "{name}");
        assert_eq!(assignment.secrets[0].value.expose(), secret, "{name}");
        assert_eq!(assignment.checks, vec![HealthCheck::Unit { name: "nginx.service".into() }]);
        assert!(assignment.facts_json.contains(&last), "{name}: {}", assignment.facts_json);
        let shown = app.ok(AdminRequest::DeploymentsShow { id: format!("d-{last}-1") }).await;
        assert!(format!("{shown:?}").contains(path), "{name}: {shown:?}");

        // The same spec deployed again shares the record; another adds one.
        let specs = || app.state.store.snapshot().expect("snapshot").into_iter().find(|(t, _)| t == "specs").map(|(_, p)| p.len());
        let mut again = deploy(&[], closure(path));
        again.machine = Some(first.clone());
        again.secrets = vec![SecretFile { name: "shared".into(), value: SecretBytes::new(secret.to_vec()), owner: None, group: None, mode: 0o400 }];
        again.checks = vec![HealthCheck::Unit { name: "nginx.service".into() }];
        app.ok(AdminRequest::Deploy(again)).await;
        assert_eq!(specs(), Some(1), "{name}: the same spec, kept once");
        app.ok(AdminRequest::Deploy(DeploySpec { machine: Some(first.clone()), selector: Default::default(), ..deploy(&[], closure(path)) })).await;
        assert_eq!(specs(), Some(2), "{name}: another spec (no secret, no check) is kept beside it");
    }
}

#[tokio::test]
async fn machines_are_listed_page_by_page_in_the_order_of_the_whole_list() {
    let app = App::new();
    for i in 0..12 {
        app.enroll(&format!("host-{:02}", i % 7), &[("fleet", if i % 3 == 0 { "a" } else { "b" })]).await;
    }
    let whole = app.ok(AdminRequest::MachinesList { selector: Default::default() }).await.machines().expect("machines");
    assert_eq!(whole.len(), 12);
    let mut paged = Vec::new();
    let mut after = None;
    let mut pages = 0;
    loop {
        let (machines, next) = app.ok(AdminRequest::MachinesPage { selector: Default::default(), after, limit: 5 }).await.machines_page().expect("a page");
        assert!(machines.len() <= 5);
        paged.extend(machines);
        pages += 1;
        match next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(paged, whole, "the same machines in the same order (hostnames repeat: the id orders them)");
    let a: Vec<_> = whole.iter().filter(|m| m.labels.get("fleet").map(String::as_str) == Some("a")).cloned().collect();
    let (only_a, next) = app
        .ok(AdminRequest::MachinesPage { selector: [("fleet".to_string(), "a".to_string())].into(), after: None, limit: 100 })
        .await
        .machines_page()
        .expect("a page");
    assert_eq!((only_a, next), (a, None));
    for limit in [0, MAX_MACHINES_PER_PAGE + 1] {
        let refused = app.call(AdminRequest::MachinesPage { selector: Default::default(), after: None, limit }).await.expect_err("refused");
        assert_eq!(refused.code, ErrorCode::InvalidArgument, "{limit}: {}", refused.message);
    }
}
