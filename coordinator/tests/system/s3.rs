//! `drover s3` through the coordinator against a real Garage on 127.0.0.1:
//! buckets, keys and grants made twice change nothing; secrets are shown
//! only when asked; a viewer cannot create; a wrong token and a Garage that
//! is down each give their own clear error and leave nothing half-made.

use crate::common;

use std::process::Command;

use common::garage::{coordinator_with_s3, GarageNode};
use common::TestCoordinator;
use drover_coordinator::s3::ObjectStoreAdmin;

async fn coordinator_for(node_admin: &str, token: &str) -> TestCoordinator {
    coordinator_with_s3(node_admin, "http://127.0.0.1:3900", token).await
}

fn drover(fleet: &TestCoordinator, args: &[&str]) -> (bool, serde_json::Value, String) {
    common::drover_json(fleet, args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_creates_buckets_keys_and_grants_idempotently() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = GarageNode::single(dir.path()).await;
    let fleet = coordinator_for(&node.admin_url, &node.admin_token).await;

    let (ok, first, err) = drover(&fleet, &["s3", "buckets", "create", "acme-media", "--public", "--max-size", "1GiB"]);
    assert!(ok, "{err}");
    let (ok, again, _) = drover(&fleet, &["s3", "buckets", "create", "acme-media", "--public", "--max-size", "1GiB"]);
    assert!(ok);
    assert_eq!(first["id"], again["id"], "the same bucket");
    assert_eq!(again["website"], true);
    assert_eq!(again["public_url"], "http://acme-media.web.garage.localhost");
    assert_eq!(again["max_size"], 1u64 << 30);

    let (ok, key, err) = drover(&fleet, &["s3", "keys", "create", "acme-mastodon"]);
    assert!(ok, "{err}");
    assert!(key["secret"].is_null(), "no secret unless asked: {key}");
    let (_, key2, _) = drover(&fleet, &["s3", "keys", "create", "acme-mastodon"]);
    assert_eq!(key["id"], key2["id"]);
    let (ok, shown, _) = drover(&fleet, &["s3", "keys", "show", "acme-mastodon", "--show-secret"]);
    assert!(ok);
    assert!(shown["secret"].as_str().is_some_and(|s| s.len() > 20), "{shown}");

    for _ in 0..2 {
        let (ok, b, err) = drover(&fleet, &["s3", "grant", "--bucket", "acme-media", "--key", "acme-mastodon", "--read", "--write"]);
        assert!(ok, "{err}");
        assert_eq!(b["grants"].as_array().expect("grants").len(), 1);
        assert_eq!(b["grants"][0]["write"], true);
        assert_eq!(b["grants"][0]["owner"], false);
    }
    let admin = node.admin();
    assert_eq!(admin.buckets().await.expect("list").len(), 1);
    assert_eq!(admin.keys().await.expect("keys").len(), 1);

    // A viewer lists but cannot create, and never sees a secret.
    let viewer_bundle = fleet.dir.path().join("viewer.bundle");
    let status = Command::new(env!("CARGO_BIN_EXE_drover"))
        .args(["admins", "add", "vera", "--role", "viewer", "--out"])
        .arg(&viewer_bundle)
        .env("DROVER_ADMIN_BUNDLE", &fleet.bundle_path)
        .status()
        .expect("admins add");
    assert!(status.success());
    let as_viewer = |args: &[&str]| Command::new(env!("CARGO_BIN_EXE_drover")).args(args).env("DROVER_ADMIN_BUNDLE", &viewer_bundle).output().expect("run");
    assert!(as_viewer(&["s3", "buckets", "list"]).status.success());
    let out = as_viewer(&["s3", "buckets", "create", "other-media"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("viewer"));
    assert!(!as_viewer(&["s3", "keys", "show", "acme-mastodon", "--show-secret"]).status.success());
    assert_eq!(admin.buckets().await.expect("list").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_token_garage_down_and_invalid_names_are_refused_clearly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = GarageNode::single(dir.path()).await;

    let wrong = coordinator_for(&node.admin_url, "not-the-admin-token").await;
    let (ok, _, err) = drover(&wrong, &["s3", "buckets", "create", "acme-media"]);
    assert!(!ok);
    assert!(err.contains("refused the admin token"), "{err}");

    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let down = coordinator_for(&format!("http://127.0.0.1:{closed}"), &node.admin_token).await;
    let (ok, _, err) = drover(&down, &["s3", "buckets", "create", "acme-media"]);
    assert!(!ok);
    assert!(err.contains("unreachable") && err.contains("is Garage running"), "{err}");

    let right = coordinator_for(&node.admin_url, &node.admin_token).await;
    let (ok, _, err) = drover(&right, &["s3", "buckets", "create", "Not_Valid"]);
    assert!(!ok);
    assert!(err.contains("bucket name \"Not_Valid\" is invalid"), "{err}");
    let admin = node.admin();
    assert!(admin.buckets().await.expect("list").is_empty(), "nothing half-made");
    assert!(admin.keys().await.expect("keys").is_empty());
}
