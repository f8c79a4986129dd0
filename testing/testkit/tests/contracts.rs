//! The fakes keep the same contracts as the real clients (which run them in
//! the coordinator's tests: `object_store.rs`, `block_storage.rs`,
//! `provision.rs`).

use drover_coordinator::hypervisor::Hypervisor;
use drover_coordinator::s3::{ObjectStoreAdmin, S3Error};
use drover_coordinator::volumes::BlockStorage;
use drover_testkit::block_storage::FakePool;
use drover_testkit::contract;
use drover_testkit::hypervisor::FakeHost;
use drover_testkit::object_store::FakeCluster;

#[tokio::test]
async fn the_fake_object_store_keeps_the_contract() {
    let cluster = FakeCluster::new();
    contract::object_store_data(&cluster.client("http://fake-1:3903"), "http://fake-1:3900").await;
    contract::object_store_cluster(&cluster.client("http://fake-2:3903")).await;
    cluster.set_unreachable(true);
    let err = cluster.client("http://fake-1:3903").buckets().await.expect_err("down");
    assert!(matches!(err, S3Error::Unreachable { .. }), "{err:?}");
}

#[tokio::test]
async fn the_fake_block_storage_keeps_the_contract() {
    let pool = FakePool::new();
    pool.make_foreign("vm-100-disk-1", 32 * 1024, None);
    pool.make_foreign("other-fleet", 32 * 1024, Some("drover-ffffffffffffffff"));
    let ours = pool.client("drover-00112233aabbccdd");
    assert_eq!(ours.owner(), "drover-00112233aabbccdd");
    contract::block_storage(&ours, "vm-100-disk-1", "other-fleet").await;
}

#[tokio::test]
async fn the_fake_hypervisor_keeps_the_contract() {
    let host = FakeHost::new();
    host.make_by_hand(150);
    let hv = host.client("drover-aaaa", "local");
    assert_eq!(hv.kind(), "fake");
    contract::hypervisor(&hv, &host.client("drover-bbbb", "local"), &host.client("drover-aaaa", "local2"), "150").await;
    // Numbers are reused, as on Proxmox: the next VM gets the lowest free id.
    let first = hv.create(&contract::vm_spec("p-00000000d1"), &contract::seed()).await.expect("create");
    assert_eq!(first, "100");
}

#[test]
fn the_gated_store_backend_keeps_the_store_contract() {
    drover_store::contract::run_all(|| {
        let backend = drover_testkit::store::GatedBackend::new();
        backend.release_flushes(1 << 20);
        backend
    });
}
