//! A resilient Garage cluster formed by the coordinator: three real Garage
//! processes on 127.0.0.1 (replication factor 3, three zones), joined with
//! `drover s3 cluster add-node` and `apply`; `status` reports a stopped node
//! as down, and the cluster is healthy again once it is back.

use crate::common;

use std::process::Command;
use std::time::Duration;

use common::garage::{coordinator_with_s3, hex, rand_bytes, GarageNode};
use common::{eventually, TestCoordinator};

fn drover(fleet: &TestCoordinator, args: &[&str]) -> serde_json::Value {
    let (ok, json, stderr) = common::drover_json(fleet, args);
    assert!(ok && !json.is_null(), "drover {args:?}: {stderr}");
    json
}

fn node_up(status: &serde_json::Value, admin: &str) -> Option<bool> {
    status["nodes"].as_array()?.iter().find(|n| n["admin"] == admin).and_then(|n| n["up"].as_bool())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_garage_nodes_in_three_zones_form_a_healthy_cluster_that_survives_a_node() {
    let _heavy = common::heavy().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let secret: [u8; 32] = rand_bytes();
    let token: [u8; 16] = rand_bytes();
    let (secret, token) = (hex(&secret), hex(&token));
    let mut nodes: Vec<GarageNode> = (0..3).map(|i| GarageNode::spawn_with_token(&dir.path().join(format!("garage{i}")), &secret, 3, &token)).collect();

    let fleet = coordinator_with_s3(&nodes[0].admin_url, &nodes[0].s3_url, &token).await;

    for (i, node) in nodes.iter().enumerate().take(2) {
        let zone = format!("dc{}", i + 1);
        let status = drover(&fleet, &["s3", "cluster", "add-node", "--admin", &node.admin_url, "--rpc", &node.rpc_addr, "--zone", &zone, "--capacity", "1GiB"]);
        assert_eq!(status["nodes"].as_array().expect("nodes").len(), i + 1);
    }
    // The third Garage node is a Drover machine, described by its labels.
    let (enroll_token, _) = fleet.token(1, &[("role", "garage")]).await;
    let (machine, _) = common::enroll_raw(&fleet, &enroll_token, "garage3").await;
    let out = Command::new(env!("CARGO_BIN_EXE_drover"))
        .args(["s3", "cluster", "add-node", "--machine", &machine.subject])
        .env("DROVER_ADMIN_BUNDLE", &fleet.bundle_path)
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("has no label garage."), "{}", String::from_utf8_lossy(&out.stderr));
    let admin_label = format!("garage.admin={}", nodes[2].admin_url);
    let rpc_label = format!("garage.rpc={}", nodes[2].rpc_addr);
    drover(&fleet, &["machines", "label", &machine.subject, &admin_label, &rpc_label, "garage.zone=dc3", "garage.capacity=1GiB"]);
    let status = drover(&fleet, &["s3", "cluster", "add-node", "--machine", &machine.subject]);
    assert_eq!(status["nodes"].as_array().expect("nodes").len(), 3);
    let applied = drover(&fleet, &["s3", "cluster", "apply"]);
    assert_eq!(applied["health"], "healthy", "{applied}");
    assert!(applied["layout_version"].as_u64().expect("version") >= 1);
    assert_eq!(applied["partitions_all_ok"], applied["partitions"]);
    let zones: Vec<&str> = applied["nodes"].as_array().expect("nodes").iter().map(|n| n["zone"].as_str().expect("zone")).collect();
    assert_eq!(zones.len(), 3);
    assert!(applied["nodes"].as_array().expect("nodes").iter().all(|n| n["up"] == true && n["id"].is_string()));
    // Applying again changes nothing.
    let again = drover(&fleet, &["s3", "cluster", "apply"]);
    assert_eq!(again["layout_version"], applied["layout_version"]);

    // A service's bucket and key, and objects written through that key.
    drover(&fleet, &["s3", "buckets", "create", "acme-media"]);
    drover(&fleet, &["s3", "keys", "create", "acme-mastodon"]);
    drover(&fleet, &["s3", "grant", "--bucket", "acme-media", "--key", "acme-mastodon", "--read", "--write"]);
    let key = drover(&fleet, &["s3", "keys", "show", "acme-mastodon", "--show-secret"]);
    let s3 = drover_coordinator::s3::probe::client(&nodes[0].s3_url, "garage", key["id"].as_str().expect("id"), key["secret"].as_str().expect("secret"))
        .expect("an S3 client");
    let put = |name: String, body: Vec<u8>| {
        let s3 = s3.clone();
        async move { s3.put_object().bucket("acme-media").key(name).body(aws_sdk_s3::primitives::ByteStream::from(body)).send().await.map(|_| ()) }
    };
    let get = |name: String| {
        let s3 = s3.clone();
        async move {
            let out = s3.get_object().bucket("acme-media").key(name).send().await.map_err(|e| e.to_string())?;
            out.body.collect().await.map(|b| b.into_bytes().to_vec()).map_err(|e| e.to_string())
        }
    };
    let blob: Vec<u8> = (0..2 * 1024 * 1024u32).map(|i| (i % 253) as u8).collect();
    for i in 0..3 {
        put(format!("media/{i}.bin"), blob.clone()).await.expect("write before the failure");
    }

    // Stop one node: status names it as down while it is down.
    let down_admin = nodes[2].admin_url.clone();
    nodes[2].stop();
    let reported = eventually(Duration::from_secs(60), || async {
        let s = drover(&fleet, &["s3", "cluster", "status"]);
        node_up(&s, &down_admin) == Some(false) && s["health"] != "unavailable"
    })
    .await;
    assert!(reported, "status reports the stopped node as down");
    let s = drover(&fleet, &["s3", "cluster", "status"]);
    assert_eq!(node_up(&s, &nodes[0].admin_url), Some(true));
    assert_eq!(s["health"], "degraded", "{s}");
    // With one of three replicas gone, reads and writes still succeed.
    for i in 0..3 {
        assert_eq!(get(format!("media/{i}.bin")).await.expect("read while a node is down"), blob);
    }
    put("media/during.bin".into(), blob.clone()).await.expect("write while a node is down");
    assert_eq!(get("media/during.bin".into()).await.expect("read back"), blob);

    // Back: healthy again.
    nodes[2].start();
    let healthy = eventually(Duration::from_secs(90), || async {
        let s = drover(&fleet, &["s3", "cluster", "status"]);
        s["health"] == "healthy" && node_up(&s, &down_admin) == Some(true)
    })
    .await;
    assert!(healthy, "the cluster is healthy again after the node restarts");
}
