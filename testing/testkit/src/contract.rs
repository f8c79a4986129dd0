//! The contract suites: what every implementation of a seam must do, run
//! against the fakes here (this crate's tests) and against the real
//! systems wherever they run here (Garage, QEMU, the Proxmox and LINSTOR
//! clients against their doubles, in the coordinator's tests). A fake that
//! passes the same suite as the real client can stand in for it in tests of
//! the application layer.

use std::time::{Duration, Instant};

use drover_coordinator::hypervisor::{DataDisk, Hypervisor, HypervisorError, Owner, Removed, VmSpec};
use drover_coordinator::s3::{DataAccess, ObjectStoreAdmin, Permissions, Role, S3Error};
use drover_coordinator::volumes::{BlockError, BlockStorage, VolumeSpec};
use drover_protocol::seed::{CaPin, Seed};
use drover_protocol::v1::Secret;

/// Buckets, keys and grants.
/// `s3_endpoint` is the data plane the probe uses.
pub async fn object_store_data(g: &dyn ObjectStoreAdmin, s3_endpoint: &str) {
    let first = g.ensure_bucket("acme-media").await.expect("create bucket");
    let again = g.ensure_bucket("acme-media").await.expect("find bucket");
    assert_eq!(first.id, again.id, "the same bucket, not a second one");
    assert_eq!(g.buckets().await.expect("list").len(), 1);
    assert_eq!(again.aliases, ["acme-media"]);

    let key = g.ensure_key("acme-mastodon").await.expect("create key");
    let same = g.ensure_key("acme-mastodon").await.expect("find key");
    assert_eq!(key.id, same.id);
    assert!(key.secret.is_some() && key.secret == same.secret, "the secret is returned both times");
    assert_eq!(g.keys().await.expect("keys").len(), 1);
    assert!(g.keys().await.expect("keys").iter().all(|k| k.secret.is_none()), "lists carry no secret");
    assert!(g.key("acme-mastodon", false).await.expect("key").is_some_and(|k| k.secret.is_none()));
    assert!(!format!("{key:?}").contains(key.secret.as_deref().expect("secret")), "Debug hides the secret");

    g.grant(&first.id, &key.id, Permissions { read: true, write: true, owner: false }).await.expect("grant");
    g.grant(&first.id, &key.id, Permissions { read: true, write: true, owner: false }).await.expect("grant again");
    let b = g.bucket("acme-media").await.expect("info").expect("exists");
    assert_eq!(b.keys, [(key.id.clone(), true, true, false)]);
    let secret = key.secret.as_deref().expect("secret");
    let access = DataAccess { endpoint: s3_endpoint, region: "garage", key_id: &key.id, secret, bucket: "acme-media" };
    g.probe(&access).await.expect("a key granted read and write passes the probe");
    assert!(g.probe(&DataAccess { secret: "not-the-secret", ..access }).await.is_err(), "a wrong secret fails the probe");
    g.grant(&first.id, &key.id, Permissions { read: true, write: false, owner: false }).await.expect("narrow");
    let b = g.bucket("acme-media").await.expect("info").expect("exists");
    assert_eq!(b.keys, [(key.id.clone(), true, false, false)]);
    assert!(g.probe(&access).await.is_err(), "a read-only key fails the probe");

    g.set_website(&first.id, true).await.expect("website");
    assert!(g.bucket("acme-media").await.expect("info").expect("exists").website);
    g.set_quotas(&first.id, Some(1 << 30), Some(1000)).await.expect("quotas");
    let b = g.bucket("acme-media").await.expect("info").expect("exists");
    assert_eq!((b.max_size, b.max_objects), (Some(1 << 30), Some(1000)));

    match g.ensure_bucket("Bad_Name").await {
        Err(S3Error::InvalidBucketName { name, .. }) => assert_eq!(name, "Bad_Name"),
        other => panic!("expected InvalidBucketName, got {other:?}"),
    }
    assert_eq!(g.buckets().await.expect("list").len(), 1, "nothing half-made");
    assert!(matches!(g.delete_bucket("no-such-bucket").await, Err(S3Error::NotFound { .. })));

    g.delete_key("acme-mastodon").await.expect("delete key");
    assert!(g.key("acme-mastodon", false).await.expect("lookup").is_none());
    g.delete_bucket("acme-media").await.expect("delete bucket");
    assert!(g.bucket("acme-media").await.expect("lookup").is_none());
}

/// A node with no layout: its id, a layout applied, health and status.
pub async fn object_store_cluster(g: &dyn ObjectStoreAdmin) {
    let id = g.node_id().await.expect("node id");
    assert_eq!(id.len(), 64, "a node id is 64 hex digits: {id}");
    assert!(g.layout().await.expect("layout").is_empty(), "no role yet");
    let role = Role { node: id.clone(), zone: "dc1".into(), capacity: 1 << 30 };
    let version = g.apply_layout(std::slice::from_ref(&role)).await.expect("apply");
    assert_eq!(version, 1);
    assert_eq!(g.layout().await.expect("layout"), vec![role]);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let health = g.health().await.expect("health");
        if health.status == "healthy" {
            assert!(health.connected_nodes >= 1, "{health:?}");
            assert_eq!(health.partitions, health.partitions_all_ok, "{health:?}");
            break;
        }
        assert!(Instant::now() < deadline, "never healthy: {health:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let status = g.status().await.expect("status");
    assert_eq!(status.layout_version, 1);
    assert!(status.nodes.contains(&(id, true)), "{status:?}");
}

/// A VM spec for the contract.
pub fn vm_spec(provision: &str) -> VmSpec {
    VmSpec {
        provision: provision.into(),
        name: "web-1".into(),
        template: None,
        cores: 2,
        memory_bytes: 1 << 30,
        disk_bytes: 2 << 30,
        disks: vec![DataDisk { serial: "vol-data".into(), size_bytes: 1 << 30 }],
    }
}

/// A seed for the contract.
pub fn seed() -> Seed {
    Seed {
        coordinator: "10.0.2.2:7443".into(),
        server_name: "localhost".into(),
        ca: CaPin::Sha256([3; 32]),
        token: Secret::new(format!("drt_{}", "ef".repeat(32))),
        name: "web-1".into(),
    }
}

/// The owner `fleet`'s provider `provider`.
pub fn owner(fleet: &str, provider: &str) -> Owner {
    Owner { fleet: fleet.into(), provider: provider.into() }
}

/// What every hypervisor does: a VM made is listed with its identity and
/// not running, started runs, stopped does not, deleted is gone, and
/// deleting it again is no error. And what is not its own: a VM made by
/// hand at a reused id, another fleet's or another provider's VM, or
/// another provision's, is neither listed nor started, stopped or deleted.
pub async fn hypervisor(hv: &dyn Hypervisor, other_fleet: &dyn Hypervisor, other_provider: &dyn Hypervisor, hand_made: &str) {
    assert!(hv.list().await.expect("list").is_empty(), "{}: a VM made by hand is not listed", hv.kind());
    let id = hv.create(&vm_spec("p-00000000c1"), &seed()).await.expect("create");
    let listed = hv.list().await.expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!((listed[0].vm_id.as_str(), listed[0].provision.as_str(), listed[0].running), (id.as_str(), "p-00000000c1", false));
    assert!(other_fleet.list().await.expect("list").is_empty(), "{}: another fleet does not see it", hv.kind());
    assert!(other_provider.list().await.expect("list").is_empty(), "{}: another provider of the fleet does not see it", hv.kind());
    hv.start(&id, "p-00000000c1").await.expect("start");
    hv.start(&id, "p-00000000c1").await.expect("starting a running VM is no error");
    assert!(hv.list().await.expect("list")[0].running, "{}: started", hv.kind());

    // Nobody else's call touches it, nor does this provider touch theirs.
    for (who, other) in [("another fleet", other_fleet), ("another provider", other_provider), ("another provision", hv)] {
        let provision = if who == "another provision" { "p-00000000c2" } else { "p-00000000c1" };
        let e = other.stop(&id, provision).await.expect_err("refused");
        assert!(matches!(e, HypervisorError::NotOurs { .. }), "{}: {who}: {e}", hv.kind());
        let e = other.delete(&id, provision, false).await.expect_err("refused");
        assert!(matches!(e, HypervisorError::NotOurs { .. }), "{}: {who}: {e}", hv.kind());
    }
    assert!(hv.list().await.expect("list")[0].running, "{}: still running", hv.kind());
    for op in ["start", "stop", "delete"] {
        let e = match op {
            "start" => hv.start(hand_made, "p-00000000c1").await.expect_err("refused"),
            "stop" => hv.stop(hand_made, "p-00000000c1").await.expect_err("refused"),
            _ => hv.delete(hand_made, "p-00000000c1", false).await.map(drop).expect_err("refused"),
        };
        assert!(
            matches!(&e, HypervisorError::NotOurs { carries, .. } if carries.contains("no Drover identity")),
            "{}: {op} of a VM made by hand: {e}",
            hv.kind()
        );
    }

    hv.stop(&id, "p-00000000c1").await.expect("stop");
    assert!(!hv.list().await.expect("list")[0].running, "{}: stopped", hv.kind());
    assert_eq!(hv.delete(&id, "p-00000000c1", false).await.expect("delete"), Removed::Deleted);
    assert!(hv.list().await.expect("list").is_empty(), "{}: deleted", hv.kind());
    assert_eq!(hv.delete(&id, "p-00000000c1", false).await.expect("deleting again is no error"), Removed::Gone);
}

/// What every block storage does, device contents apart: idempotent
/// creates and named conflicts, grow-only resizes, diskless clients on
/// other nodes, snapshots (a volume with snapshots is not deleted),
/// idempotent deletes, names checked before anything is made; and the
/// volumes that are not its own — `hand_made` (no owner) and
/// `other_fleets` (another fleet's) — neither listed nor changed, the
/// hand-made one adopted only on request.
pub async fn block_storage(b: &dyn BlockStorage, hand_made: &str, other_fleets: &str) {
    let spec = |name: &str, mib: u64| VolumeSpec { name: name.into(), size_kib: mib * 1024, replicas: 2, resource_group: None };
    let created = b.create(&spec("data", 64)).await.expect("create");
    assert!(created.made);
    assert_eq!(created.volume.owner.as_deref(), Some(b.owner()), "it carries this fleet's identity");
    assert_eq!(created.volume.replicas.iter().filter(|r| !r.diskless).count(), 2, "two diskful replicas placed");
    assert!(!b.create(&spec("data", 64)).await.expect("again").made, "found, not made again");
    let e = b.create(&spec("data", 128)).await.expect_err("another size is a conflict");
    assert!(matches!(e, BlockError::Conflict(_)), "{e}");
    assert!(matches!(b.create(&spec("Bad Name", 64)).await, Err(BlockError::Invalid(_))), "a bad name is refused before anything is made");
    let listed: Vec<String> = b.volumes().await.expect("list").into_iter().map(|v| v.name).collect();
    assert_eq!(listed, ["data"], "only this fleet's volumes are listed");

    b.make_available("data", "vm-a").await.expect("available");
    b.make_available("data", "vm-a").await.expect("idempotent");
    let v = b.volume("data").await.expect("volume").expect("exists");
    assert!(v.replica("vm-a").is_some_and(|r| r.diskless && r.ready()), "{v:?}");
    b.remove_from_node("data", "vm-a").await.expect("remove");
    b.remove_from_node("data", "vm-a").await.expect("idempotent");
    assert!(b.volume("data").await.expect("volume").expect("exists").replica("vm-a").is_none());

    b.resize("data", 128 * 1024).await.expect("grow");
    assert!(matches!(b.resize("data", 64 * 1024).await, Err(BlockError::Shrink { .. })), "volumes only grow");
    b.snapshot("data", "before").await.expect("snapshot");
    assert_eq!(b.snapshots("data").await.expect("snapshots"), ["before"]);
    b.rollback("data", "before").await.expect("rollback");
    let e = b.delete("data").await.expect_err("a volume with snapshots is not deleted");
    assert!(e.to_string().contains("snapshot"), "{e}");
    b.delete_snapshot("data", "before").await.expect("delete snapshot");
    b.delete("data").await.expect("delete");
    b.delete("data").await.expect("deleting again is no error");
    assert!(b.volume("data").await.expect("lookup").is_none());

    for name in [hand_made, other_fleets] {
        let seen = b.volume(name).await.expect("lookup").expect("it exists");
        assert_ne!(seen.owner.as_deref(), Some(b.owner()));
        for (what, e) in [
            ("resize", b.resize(name, 1 << 30).await.expect_err("refused")),
            ("make_available", b.make_available(name, "vm-a").await.expect_err("refused")),
            ("snapshot", b.snapshot(name, "before").await.expect_err("refused")),
            ("delete", b.delete(name).await.expect_err("refused")),
        ] {
            assert!(matches!(e, BlockError::NotOurs { .. }), "{what} of {name}: {e}");
        }
        assert!(b.volume(name).await.expect("lookup").is_some(), "{name} is still there");
    }
    assert!(matches!(b.adopt(other_fleets).await, Err(BlockError::NotOurs { .. })), "another fleet's is never adopted");
    let adopted = b.adopt(hand_made).await.expect("adopt");
    assert_eq!(adopted.owner.as_deref(), Some(b.owner()));
    assert!(b.volumes().await.expect("list").iter().any(|v| v.name == hand_made), "adopted, it is listed");
}
