//! The object-store contract: what every [`ObjectStoreAdmin`] must do,
//! run against the in-memory fake and against a real Garage on 127.0.0.1 —
//! idempotent buckets and keys, exact grants, website access, quotas,
//! deletion, bucket names refused before anything is made, and the cluster
//! calls (node id, layout, health, status). Garage-only errors (a wrong
//! token, a server that is down) follow.

mod common;

use std::time::{Duration, Instant};

use common::garage::GarageNode;
use drover_coordinator::s3::fake::FakeCluster;
use drover_coordinator::s3::garage::Garage;
use drover_coordinator::s3::{ObjectStoreAdmin, Permissions, Role, S3Error};

/// Buckets, keys and grants.
async fn data_contract(g: &dyn ObjectStoreAdmin) {
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
    g.grant(&first.id, &key.id, Permissions { read: true, write: false, owner: false }).await.expect("narrow");
    let b = g.bucket("acme-media").await.expect("info").expect("exists");
    assert_eq!(b.keys, [(key.id.clone(), true, false, false)]);

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
async fn cluster_contract(g: &dyn ObjectStoreAdmin) {
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

#[tokio::test]
async fn the_fake_keeps_the_contract() {
    let cluster = FakeCluster::new();
    data_contract(&cluster.client("http://fake-1:3903")).await;
    cluster_contract(&cluster.client("http://fake-2:3903")).await;
    cluster.set_unreachable(true);
    let err = cluster.client("http://fake-1:3903").buckets().await.expect_err("down");
    assert!(matches!(err, S3Error::Unreachable { .. }), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_garage_keeps_the_contract() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = GarageNode::single(dir.path()).await;
    data_contract(&node.admin()).await;
    let bare_dir = tempfile::tempdir().expect("tempdir");
    let secret: [u8; 32] = common::garage::rand_bytes();
    let bare = GarageNode::spawn(bare_dir.path(), &common::garage::hex(&secret), 1);
    let admin = bare.admin();
    common::garage::retry(|| admin.node_id()).await;
    cluster_contract(&admin).await;
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
