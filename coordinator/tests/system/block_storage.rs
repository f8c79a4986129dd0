//! The block-storage contract: what every [`BlockStorage`] must do, run
//! against the LINSTOR client talking to the controller double in
//! `common/linstor.rs` (sparse files, loop devices, snapshot copies):
//! idempotent creates, conflicts named, grow-only resizes, diskless
//! attachments that appear as block devices, snapshots and rollbacks that
//! restore the bytes, idempotent deletes, and LINSTOR's errors quoted.
//! Ownership: every volume made carries this fleet's identity, a resource
//! made by hand or by another fleet is neither listed nor changed in any
//! way, adoption takes over only an unowned one, a failed placement leaves
//! nothing behind, and a list costs two requests.

use crate::common;

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::time::Duration;

use common::linstor::LinstorDouble;
use drover_coordinator::config::LinstorConfig;
use drover_coordinator::volumes::linstor::Linstor;
use drover_coordinator::volumes::{BlockError, BlockStorage, VolumeSpec};

const MIB: u64 = 1024;

fn client(url: &str, configure: impl FnOnce(&mut LinstorConfig)) -> Linstor {
    let mut config = LinstorConfig::new(url);
    config.request_timeout = Duration::from_secs(5);
    configure(&mut config);
    Linstor::new(config, FLEET).expect("client")
}

const FLEET: &str = "drover-00112233aabbccdd";

fn spec(name: &str, mib: u64) -> VolumeSpec {
    VolumeSpec { name: name.into(), size_kib: mib * MIB, replicas: 2, resource_group: None }
}

fn write_at(device: &Path, offset: u64, bytes: &[u8]) {
    let mut f = std::fs::OpenOptions::new().write(true).open(device).expect("open device");
    f.seek(SeekFrom::Start(offset)).expect("seek");
    f.write_all(bytes).expect("write");
    f.sync_all().expect("sync");
}

fn read_at(device: &Path, offset: u64, len: usize) -> Vec<u8> {
    let mut f = std::fs::File::open(device).expect("open device");
    f.seek(SeekFrom::Start(offset)).expect("seek");
    let mut buf = vec![0; len];
    f.read_exact(&mut buf).expect("read");
    buf
}

/// The contract itself.
async fn contract(b: &dyn BlockStorage, double: &LinstorDouble) {
    // Create: idempotent with the same size, a conflict with another.
    let created = b.create(&spec("data", 64)).await.expect("create");
    assert!(created.made, "this call made it");
    let made = created.volume;
    assert_eq!(made.size_kib, 64 * MIB);
    assert_eq!(made.owner.as_deref(), Some(b.owner()), "it carries this fleet's identity");
    assert_eq!(made.replicas.iter().filter(|r| !r.diskless).count(), 2, "two diskful replicas placed");
    let again = b.create(&spec("data", 64)).await.expect("the same create again is success");
    assert!(!again.made, "found, not made again");
    assert_eq!(again.volume.size_kib, made.size_kib);
    let e = b.create(&spec("data", 128)).await.expect_err("another size is a conflict");
    assert!(matches!(e, BlockError::Conflict(_)) && e.to_string().contains("resize"), "{e}");
    assert_eq!(b.volumes().await.expect("list").len(), 1);
    assert!(b.volume("nothing").await.expect("lookup").is_none());

    // Available on a machine's node: a diskless client whose device appears.
    b.make_available("data", "vm-a").await.expect("make available");
    b.make_available("data", "vm-a").await.expect("idempotent");
    let v = b.volume("data").await.expect("volume").expect("exists");
    let r = v.replica("vm-a").expect("a resource on vm-a");
    assert!(r.diskless && r.ready(), "{r:?}");
    let link = double.node_root("vm-a").join("dev/drbd/by-res/data/0");
    let device = std::fs::canonicalize(&link).expect("the stable path resolves");
    assert!(std::os::unix::fs::FileTypeExt::is_block_device(&std::fs::metadata(&device).expect("stat").file_type()));
    write_at(&link, 4096, b"before");

    // Grow only.
    b.resize("data", 96 * MIB).await.expect("grow");
    assert_eq!(b.volume("data").await.expect("v").expect("v").size_kib, 96 * MIB);
    let size: u64 = std::fs::read_to_string(format!("/sys/class/block/{}/size", device.file_name().expect("name").to_string_lossy()))
        .expect("sysfs size")
        .trim()
        .parse()
        .expect("number");
    assert_eq!(size * 512, 96 << 20, "the device grew with the volume");
    let e = b.resize("data", 32 * MIB).await.expect_err("shrink refused");
    assert!(matches!(e, BlockError::Shrink { .. }), "{e}");

    // Snapshot, change, roll back: the bytes come back.
    b.snapshot("data", "before-migration").await.expect("snapshot");
    b.snapshot("data", "before-migration").await.expect("the same snapshot again is success");
    assert_eq!(b.snapshots("data").await.expect("snapshots"), ["before-migration"]);
    write_at(&link, 4096, b"after!");
    b.rollback("data", "before-migration").await.expect("rollback");
    assert_eq!(read_at(&link, 4096, 6), b"before", "rolled back to the snapshot's bytes");
    b.delete_snapshot("data", "before-migration").await.expect("delete snapshot");
    assert!(b.snapshots("data").await.expect("snapshots").is_empty());

    // Off the node: the diskless client goes, diskful replicas stay.
    b.remove_from_node("data", "vm-a").await.expect("remove");
    b.remove_from_node("data", "vm-a").await.expect("idempotent");
    assert!(!link.exists(), "the device is gone from the node");
    b.remove_from_node("data", "stor1").await.expect("a diskful replica is kept");
    assert!(b.volume("data").await.expect("v").expect("v").replica("stor1").is_some());

    // Spawned from a resource group.
    let spawned = b.create(&VolumeSpec { name: "db".into(), size_kib: 32 * MIB, replicas: 1, resource_group: Some("rg-db".into()) }).await.expect("spawn");
    assert_eq!(spawned.volume.replicas.len(), 2, "the group places two replicas");
    assert_eq!(spawned.volume.owner.as_deref(), Some(b.owner()), "a spawned volume carries this fleet's identity too");

    // Delete: gone; deleting again is success.
    b.delete("data").await.expect("delete");
    b.delete("data").await.expect("idempotent delete");
    assert!(b.volume("data").await.expect("lookup").is_none());
    b.delete("db").await.expect("delete");
    assert!(double.volumes().is_empty());
}

/// Ownership: what the contract asks of resources this fleet did not make.
async fn ours_only(b: &dyn BlockStorage, double: &LinstorDouble) {
    // A Proxmox VM's disk, made by linstor-proxmox, and another fleet's.
    double.make_foreign("vm-100-disk-1", 32 * MIB, &[]);
    double.make_foreign("other-fleet", 32 * MIB, &[("Aux/drover-fleet", "drover-ffffffffffffffff")]);
    let mine = b.create(&spec("mine", 32)).await.expect("create").volume;

    let listed: Vec<String> = b.volumes().await.expect("list").into_iter().map(|v| v.name).collect();
    assert_eq!(listed, ["mine"], "only this fleet's volumes are listed");
    let foreign = b.volume("vm-100-disk-1").await.expect("lookup").expect("it exists");
    assert_eq!(foreign.owner, None, "and is reported as nobody's");

    for name in ["vm-100-disk-1", "other-fleet"] {
        let refused = |what: &str, e: Result<(), BlockError>| {
            let e = e.expect_err(what);
            assert!(matches!(e, BlockError::NotOurs { .. }), "{what} {name}: {e}");
        };
        refused("create", b.create(&spec(name, 32)).await.map(drop));
        refused("resize", b.resize(name, 64 * MIB).await);
        refused("make available", b.make_available(name, "vm-a").await);
        refused("remove from node", b.remove_from_node(name, "stor1").await);
        refused("snapshot", b.snapshot(name, "snap1").await);
        refused("snapshots", b.snapshots(name).await.map(drop));
        refused("delete snapshot", b.delete_snapshot(name, "snap1").await);
        refused("rollback", b.rollback(name, "snap1").await);
        refused("delete", b.delete(name).await);
        let v = b.volume(name).await.expect("lookup").expect("still there");
        assert_eq!(v.size_kib, 32 * MIB, "{name} is unchanged");
        assert!(v.replica("vm-a").is_none(), "{name} was not placed on a machine's node");
    }
    let e = b.adopt("other-fleet").await.expect_err("another fleet's resource is not adopted");
    assert!(matches!(e, BlockError::NotOurs { owner: Some(_), .. }) && e.to_string().contains("another Drover fleet"), "{e}");
    assert_eq!(double.props("other-fleet").expect("props").get("Aux/drover-fleet").map(String::as_str), Some("drover-ffffffffffffffff"));

    // Adoption is explicit: the resource then carries this fleet's identity.
    let adopted = b.adopt("vm-100-disk-1").await.expect("adopt");
    assert_eq!(adopted.owner.as_deref(), Some(b.owner()));
    assert_eq!(b.adopt("vm-100-disk-1").await.expect("adopting again is success").owner.as_deref(), Some(b.owner()));
    let mut listed: Vec<String> = b.volumes().await.expect("list").into_iter().map(|v| v.name).collect();
    listed.sort();
    assert_eq!(listed, ["mine", "vm-100-disk-1"]);

    // Names ignore case in the block storage: "MINE" is the same resource.
    let same = b.create(&spec("MINE", 32)).await.expect("the same resource");
    assert!(!same.made && same.volume.name == mine.name, "{same:?}");

    // A list costs two requests, whatever the number of volumes.
    let before = double.log().len();
    b.volumes().await.expect("list");
    assert_eq!(double.log().len() - before, 2, "one for the definitions, one for the resources: {:?}", &double.log()[before..]);

    // A placement that fails leaves nothing behind.
    double.fail_next_placement();
    let e = b.create(&spec("halfway", 32)).await.expect_err("placement fails");
    assert!(e.to_string().contains("Not enough available nodes"), "{e}");
    assert!(b.volume("halfway").await.expect("lookup").is_none(), "the resource definition the create made is gone");
    assert!(b.create(&spec("halfway", 32)).await.expect("a retry").made);

    for name in ["mine", "vm-100-disk-1", "halfway"] {
        b.delete(name).await.expect("delete");
    }
    assert_eq!(double.volumes(), ["other-fleet"], "only what is not ours is left");
}

#[tokio::test]
async fn the_linstor_client_keeps_the_contract() {
    let dir = tempfile::tempdir().expect("tempdir");
    let double = LinstorDouble::start(dir.path(), &["vm-a", "vm-b"]).await;
    let b = client(&double.url, |_| {});
    contract(&b, &double).await;
    ours_only(&b, &double).await;
    let log = double.log();
    for call in [
        "POST /v1/resource-definitions",
        "POST /v1/resource-definitions/data/volume-definitions",
        "POST /v1/resource-definitions/data/autoplace",
        "POST /v1/resource-definitions/data/resources/vm-a/make-available",
    ] {
        assert!(log.iter().any(|l| l == call), "LINSTOR received {call}: {log:?}");
    }
}

#[tokio::test]
async fn linstor_errors_are_quoted_with_their_correction() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut double = LinstorDouble::start(dir.path(), &["vm-a"]).await;

    let b = client(&double.url, |c| c.storage_pool = Some("nope".into()));
    let e = b.create(&spec("data", 32)).await.expect_err("no such pool");
    let text = e.to_string();
    assert!(text.contains("Storage pool 'nope' not found") && text.contains("correction: Create a storage pool"), "{text}");

    let b = client(&double.url, |_| {});
    let e = b.create(&spec("many", 32)).await;
    assert!(e.is_ok(), "two storage nodes place two replicas: {e:?}");
    let e = b.create(&VolumeSpec { replicas: 3, ..spec("toomany", 32) }).await.expect_err("three replicas on two nodes");
    assert!(e.to_string().contains("Not enough available nodes"), "{e}");
    let e = b.make_available("many", "unknown-node").await.expect_err("unknown node");
    assert!(e.to_string().contains("Node 'unknown-node' not found"), "{e}");
    let sent = double.log().len();
    for bad in ["../etc", "a", "all", "Proxy"] {
        let e = b.create(&spec(bad, 32)).await.expect_err("a bad name is refused before anything is sent");
        assert!(matches!(e, BlockError::Invalid(_)), "{bad}: {e}");
    }
    assert_eq!(double.log().len(), sent, "nothing was sent for bad names");

    double.stop().await;
    let e = b.volume("many").await.expect_err("unreachable");
    assert!(matches!(e, BlockError::Unreachable { .. }) && e.to_string().contains("linstor.controller"), "{e}");
    double.resume().await;
    assert!(b.volume("many").await.expect("reachable again").is_some());
}

/// The contract the test kit's fake keeps too (device contents apart).
#[tokio::test]
async fn the_linstor_client_keeps_the_shared_contract() {
    let dir = tempfile::tempdir().expect("tempdir");
    let double = LinstorDouble::start(dir.path(), &["vm-a", "vm-b"]).await;
    double.make_foreign("vm-100-disk-1", 32 * MIB, &[]);
    double.make_foreign("other-fleet", 32 * MIB, &[("Aux/drover-fleet", "drover-ffffffffffffffff")]);
    drover_testkit::contract::block_storage(&client(&double.url, |_| {}), "vm-100-disk-1", "other-fleet").await;
}
