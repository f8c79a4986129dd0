//! The object-store contract (`drover_testkit::contract`), which the test
//! kit's fake also keeps, run against a real Garage on 127.0.0.1 —
//! idempotent buckets and keys, exact grants, website access, quotas,
//! deletion, bucket names refused before anything is made, and the cluster
//! calls (node id, layout, health, status). Garage-only errors (a wrong
//! token, a server that is down) follow.

use crate::common;

use common::garage::GarageNode;
use drover_coordinator::s3::garage::Garage;
use drover_coordinator::s3::{ObjectStoreAdmin, S3Error};
use drover_testkit::contract;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_garage_keeps_the_contract() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = GarageNode::single(dir.path()).await;
    contract::object_store_data(&node.admin(), &node.s3_url).await;
    let bare_dir = tempfile::tempdir().expect("tempdir");
    let secret: [u8; 32] = common::garage::rand_bytes();
    let bare = GarageNode::spawn(bare_dir.path(), &common::garage::hex(&secret), 1);
    let admin = bare.admin();
    common::garage::retry(|| admin.node_id()).await;
    contract::object_store_cluster(&admin).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_token_garage_down_and_bad_names_each_have_their_own_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = GarageNode::single(dir.path()).await;

    let wrong = Garage::new(&node.admin_url, "not-the-token".into()).expect("client");
    assert!(matches!(wrong.ensure_bucket("x-media").await, Err(S3Error::Unauthorized)));

    let g = node.admin();
    match g.ensure_bucket("Bad_Name").await {
        Err(S3Error::InvalidBucketName { name, .. }) => assert_eq!(name, "Bad_Name"),
        other => panic!("expected InvalidBucketName, got {other:?}"),
    }
    assert!(g.buckets().await.expect("list").is_empty(), "nothing half-made");

    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let down = Garage::new(&format!("http://127.0.0.1:{closed}"), node.admin_token.clone()).expect("client");
    let err = down.ensure_bucket("x-media").await.expect_err("down");
    assert!(matches!(err, S3Error::Unreachable { .. }), "{err:?}");
    assert!(err.to_string().contains("is Garage running"), "{err}");
    assert!(g.keys().await.expect("keys").is_empty());
}
