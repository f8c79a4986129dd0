//! The Garage admin client against a real Garage on 127.0.0.1: idempotent
//! buckets and keys, grants, website access, quotas, deletion, and the
//! errors for a wrong token, a server that is down and a bad bucket name.

mod common;

use common::garage::GarageNode;
use drover_coordinator::s3::garage::Garage;
use drover_coordinator::s3::{ObjectStoreAdmin, Permissions, S3Error};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buckets_keys_and_grants_are_idempotent_against_real_garage() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = GarageNode::single(dir.path()).await;
    let g = node.admin();

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

    g.delete_key("acme-mastodon").await.expect("delete key");
    assert!(g.key("acme-mastodon", false).await.expect("lookup").is_none());
    g.delete_bucket("acme-media").await.expect("delete bucket");
    assert!(g.bucket("acme-media").await.expect("lookup").is_none());
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
