//! Buckets declared by deployments, against a real Garage on 127.0.0.1: the
//! coordinator makes the bucket and a key scoped to it, checks the key, and
//! hands credentials and facts to the targeted machine only; the test stores
//! and reads back several MiB with exactly those credentials. Garage down or
//! a wrong token refuses the deployment without recording it, and a retry
//! completes it.

use crate::common;

use std::time::{Duration, Instant};

use common::flake::{flake, flake_spec, spawn_vm};
use common::garage::{coordinator_with_s3, GarageNode};
use common::{raw_connect, TestCoordinator};
use drover_coordinator::s3::{probe, ObjectStoreAdmin};
use drover_protocol::v1::*;
use drover_protocol::ErrorCode;

async fn coordinator(admin_url: &str, s3_url: &str, token: &str) -> TestCoordinator {
    coordinator_with_s3(admin_url, s3_url, token).await
}

/// A deployment whose buckets the coordinator makes ready first.
fn with_buckets(spec: DeploySpec, buckets: Vec<BucketRequest>) -> AdminRequest {
    AdminRequest::Deploy(DeploySpec { buckets, ..spec })
}

fn spec(flake: &std::path::Path) -> DeploySpec {
    DeploySpec {
        machine: None,
        selector: [("role".to_string(), "mastodon".to_string())].into(),
        system: flake_spec(flake, "good"),
        secrets: vec![],
        facts: [("tenant".to_string(), "acme".to_string())].into(),
        checks: vec![],
        health_deadline_ms: 2_000,
        buckets: vec![],
        volumes: vec![],
        goal: Default::default(),
        force_switch: false,
        override_rollout: false,
        reboot: false,
    }
}

async fn finished(fleet: &TestCoordinator, id: &str) -> DeploymentInfo {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let d = fleet.call(AdminRequest::DeploymentsShow { id: id.into() }).await.deployment().expect("Deployment");
        if matches!(d.state, DeploymentState::Succeeded | DeploymentState::Failed) {
            return d;
        }
        assert!(Instant::now() < deadline, "not finished: {d:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_gets_its_bucket_and_only_its_machines_get_the_credentials() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = GarageNode::single(dir.path()).await;
    let fleet = coordinator(&node.admin_url, &node.s3_url, &node.admin_token).await;
    let flake = flake(fleet.dir.path());
    let (_, svc_token) = fleet.token(1, &[("role", "mastodon")]).await;
    let (_, other_token) = fleet.token(1, &[("role", "other")]).await;
    let (svc, mut a) = spawn_vm(&fleet, "svc", Some(&svc_token));
    let (other, mut b) = spawn_vm(&fleet, "other", Some(&other_token));
    a.wait_for(Duration::from_secs(15), |s| s.reports >= 1).await.expect("online");
    b.wait_for(Duration::from_secs(15), |s| s.reports >= 1).await.expect("online");

    let buckets = vec![BucketRequest { name: "acme-media".into(), public: true }];
    let mut key_ids = Vec::new();
    for _ in 0..2 {
        let answer = fleet.call(with_buckets(spec(&flake), buckets.clone())).await;
        let targets = answer.deployed().expect("Deployed");
        assert_eq!(targets.len(), 1, "only the mastodon machine");
        assert_eq!(finished(&fleet, &targets[0].deployment_id).await.state, DeploymentState::Succeeded);
        key_ids.push(std::fs::read_to_string(svc.runtime().join("secrets/s3-acme-media-access-key-id")).expect("key id delivered"));
    }
    assert_eq!(key_ids[0], key_ids[1], "the second deployment reused the key");
    let admin = node.admin();
    assert_eq!(admin.buckets().await.expect("buckets").len(), 1, "nothing duplicated");
    assert_eq!(admin.keys().await.expect("keys").len(), 1);
    let bucket = admin.bucket("acme-media").await.expect("info").expect("bucket");
    assert!(bucket.website, "public bucket");
    assert_eq!(bucket.keys.len(), 1);
    assert_eq!((bucket.keys[0].1, bucket.keys[0].2, bucket.keys[0].3), (true, true, false), "read and write, not owner");

    // The facts point at the cluster's S3 endpoint.
    let facts: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(svc.runtime().join("facts.json")).expect("facts")).expect("json");
    assert_eq!(facts["s3_endpoint"], node.s3_url.as_str());
    assert_eq!(facts["s3_region"], "garage");
    assert_eq!(facts["s3_bucket.acme-media"], "acme-media");
    assert_eq!(facts["s3_public_url.acme-media"], "http://acme-media.web.garage.localhost");
    assert_eq!(facts["tenant"], "acme");

    // With exactly the delivered credentials: several MiB in and out.
    let id = std::fs::read_to_string(svc.runtime().join("secrets/s3-acme-media-access-key-id")).expect("id");
    let secret = std::fs::read_to_string(svc.runtime().join("secrets/s3-acme-media-secret-access-key")).expect("secret");
    let s3 = probe::client(facts["s3_endpoint"].as_str().expect("endpoint"), "garage", &id, &secret).expect("an S3 client");
    let data: Vec<u8> = (0..5 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    s3.put_object()
        .bucket("acme-media")
        .key("media/video.bin")
        .body(aws_sdk_s3::primitives::ByteStream::from(data.clone()))
        .send()
        .await
        .expect("put 5 MiB with the delivered key");
    let back = s3.get_object().bucket("acme-media").key("media/video.bin").send().await.expect("get");
    let back = back.body.collect().await.expect("body").into_bytes();
    assert_eq!(back.len(), data.len());
    assert!(back.as_ref() == data.as_slice(), "the object reads back intact");

    // The other machine never receives them: not on disk, not over the wire.
    assert!(!other.runtime().join("secrets").exists());
    let cert = drover_net::identity::read_cert_pem(&fleet.dir.path().join("agents/other/cert.pem")).expect("cert");
    let key = drover_net::identity::read_key_pem(&fleet.dir.path().join("agents/other/key.pem")).expect("key");
    let conn = raw_connect(&fleet, Some((&cert, &key.serialize_der()))).await.expect("connect as other");
    let answer = conn.request(&Request::Agent(AgentRequest::FetchAssignment)).await.expect("fetch");
    assert_eq!(answer, Response::Agent(AgentResponse::NoAssignment));
    a.stop().await.expect("stop");
    b.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garage_down_or_a_wrong_token_refuses_the_deployment_and_a_retry_completes_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut node = GarageNode::single(dir.path()).await;
    let fleet = coordinator(&node.admin_url, &node.s3_url, &node.admin_token).await;
    let flake = flake(fleet.dir.path());
    let (_, token) = fleet.token(1, &[("role", "mastodon")]).await;
    let (_, mut a) = spawn_vm(&fleet, "svc", Some(&token));
    let machine = a.wait_for(Duration::from_secs(15), |s| s.reports >= 1).await.expect("online").machine_id.expect("id");
    let buckets = vec![BucketRequest { name: "acme-media".into(), public: false }];

    // Garage down: refused, nothing recorded.
    node.stop();
    let client = fleet.admin().await;
    let err = client.call(with_buckets(spec(&flake), buckets.clone())).await.expect_err("refused");
    assert_eq!(err.code(), Some(ErrorCode::Unavailable), "{err}");
    assert!(err.to_string().contains("nothing recorded") && err.to_string().contains("is Garage running"), "{err}");
    assert_eq!(desired(&fleet, &machine).await, 0);

    // A wrong admin token: refused with its own message.
    node.start();
    let wrong = coordinator(&node.admin_url, &node.s3_url, "wrong-token").await;
    let (_, wrong_token) = wrong.token(1, &[("role", "mastodon")]).await;
    let (_, mut w) = spawn_vm(&wrong, "svc2", Some(&wrong_token));
    w.wait_for(Duration::from_secs(15), |s| s.reports >= 1).await.expect("online");
    let err = wrong.admin().await.call(with_buckets(spec(&flake), buckets.clone())).await.expect_err("refused");
    assert!(err.to_string().contains("refused the admin token"), "{err}");
    w.stop().await.expect("stop");
    let admin = node.admin();
    common::garage::wait_healthy(&admin).await;
    assert!(admin.buckets().await.expect("buckets").is_empty(), "nothing half-made");

    // An invalid name is refused before anything is sent.
    let err = client.call(with_buckets(spec(&flake), vec![BucketRequest { name: "No_Good".into(), public: false }])).await.expect_err("invalid");
    assert_eq!(err.code(), Some(ErrorCode::InvalidArgument), "{err}");

    // A rollout refused for its targets or its strategy makes no bucket:
    // every check comes before anything is made.
    let refused = DeploySpec {
        selector: [("role".to_string(), "nobody".to_string())].into(),
        buckets: vec![BucketRequest { name: "refused-rollout".into(), public: false }],
        ..spec(&flake)
    };
    let strategy = RolloutStrategy {
        canary: 0,
        max_parallel: Amount::Count(1),
        max_unavailable: Amount::Percent(100),
        max_failures: Amount::Count(0),
        healthy_deadline_ms: 60_000,
        min_healthy_time_ms: 0,
        progress_deadline_ms: 60_000,
        auto_revert: false,
        auto_promote: true,
    };
    let err = client
        .call(AdminRequest::RolloutStart(RolloutSpec { snapshot_volumes: false, deploy: refused.clone(), strategy: strategy.clone() }))
        .await
        .expect_err("no target");
    assert_eq!(err.code(), Some(ErrorCode::NotFound), "{err}");
    let targeted = DeploySpec { selector: [("role".to_string(), "mastodon".to_string())].into(), ..refused };
    let err = client
        .call(AdminRequest::RolloutStart(RolloutSpec {
            snapshot_volumes: false,
            deploy: targeted,
            strategy: RolloutStrategy { healthy_deadline_ms: 0, ..strategy },
        }))
        .await
        .expect_err("bad strategy");
    assert_eq!(err.code(), Some(ErrorCode::InvalidArgument), "{err}");
    assert!(admin.bucket("refused-rollout").await.expect("lookup").is_none(), "a refused rollout leaves no bucket");
    assert!(admin.key("drover-refused-rollout", false).await.expect("lookup").is_none(), "nor a key");

    // Garage back: the same request completes.
    let t = client.call(with_buckets(spec(&flake), buckets)).await.expect("deploys").deployed().expect("Deployed");
    assert_eq!(finished(&fleet, &t[0].deployment_id).await.state, DeploymentState::Succeeded);
    assert_eq!(desired(&fleet, &machine).await, 1);
    assert_eq!(admin.buckets().await.expect("buckets").len(), 1);
    a.stop().await.expect("stop");
}

async fn desired(fleet: &TestCoordinator, machine: &str) -> u64 {
    let d = fleet.call(AdminRequest::MachinesDetail { id: machine.into() }).await.machine_detail().expect("MachineDetail");
    d.desired_generation
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_s3_check_passes_on_the_live_bucket_and_rolls_back_when_the_key_loses_its_rights() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = GarageNode::single(dir.path()).await;
    let fleet = coordinator(&node.admin_url, &node.s3_url, &node.admin_token).await;
    let flake = flake(fleet.dir.path());
    let (_, token) = fleet.token(1, &[("role", "mastodon")]).await;
    let (vm, mut a) = spawn_vm(&fleet, "svc", Some(&token));
    a.wait_for(Duration::from_secs(15), |s| s.reports >= 1).await.expect("online");
    let check = vec![HealthCheck::S3 { bucket: "acme-media".into() }];

    let mut first = spec(&flake);
    first.checks = check.clone();
    let buckets = vec![BucketRequest { name: "acme-media".into(), public: false }];
    let t = fleet.call(with_buckets(first, buckets)).await.deployed().expect("Deployed");
    let d = finished(&fleet, &t[0].deployment_id).await;
    assert_eq!(d.state, DeploymentState::Succeeded, "the s3 check passes on the live bucket: {d:?}");

    // The key loses its rights on the bucket.
    let secret = |name: &str| std::fs::read_to_string(vm.runtime().join("secrets").join(name)).expect("delivered");
    let (id, key_secret) = (secret("s3-acme-media-access-key-id"), secret("s3-acme-media-secret-access-key"));
    let admin = node.admin();
    let bucket = admin.bucket("acme-media").await.expect("info").expect("bucket");
    admin.grant(&bucket.id, &id, drover_coordinator::s3::Permissions { read: false, write: false, owner: false }).await.expect("revoke rights");

    // A new system with the same credentials and the same check: rolled back.
    let mut next = spec(&flake);
    next.system = flake_spec(&flake, "good2");
    next.checks = check;
    next.health_deadline_ms = 1_500;
    next.facts.insert("s3_endpoint".into(), node.s3_url.clone());
    next.facts.insert("s3_region".into(), "garage".into());
    next.secrets = [("s3-acme-media-access-key-id", id), ("s3-acme-media-secret-access-key", key_secret)]
        .into_iter()
        .map(|(name, value)| SecretFile { name: name.into(), value: SecretBytes::new(value.into_bytes()), owner: None, group: None, mode: 0o400 })
        .collect();
    let t = fleet.call(AdminRequest::Deploy(next)).await.deployed().expect("Deployed");
    let d = finished(&fleet, &t[0].deployment_id).await;
    assert!(d.rolled_back && d.state == DeploymentState::Failed, "{d:?}");
    let why = d.steps.iter().find(|s| s.step == DeployStep::RollingBack).expect("reason").message.clone();
    assert!(why.contains("s3:acme-media"), "{why}");
    assert_eq!(vm.activations(), ["good", "good2", "good"]);
    a.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_gets_its_buckets_ready_and_delivered_too() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = GarageNode::single(dir.path()).await;
    let fleet = coordinator(&node.admin_url, &node.s3_url, &node.admin_token).await;
    let flake = flake(fleet.dir.path());
    let (_, token) = fleet.token(2, &[("role", "mastodon")]).await;
    let (vm1, mut a) = spawn_vm(&fleet, "svc1", Some(&token));
    let (vm2, mut b) = spawn_vm(&fleet, "svc2", Some(&token));
    a.wait_for(Duration::from_secs(15), |s| s.reports >= 1).await.expect("online");
    b.wait_for(Duration::from_secs(15), |s| s.reports >= 1).await.expect("online");
    let strategy = RolloutStrategy {
        canary: 0,
        max_parallel: Amount::Count(1),
        max_unavailable: Amount::Percent(100),
        max_failures: Amount::Count(0),
        healthy_deadline_ms: 30_000,
        min_healthy_time_ms: 100,
        progress_deadline_ms: 60_000,
        auto_revert: false,
        auto_promote: true,
    };
    let mut deploy = spec(&flake);
    deploy.checks = vec![HealthCheck::S3 { bucket: "acme-media".into() }];
    deploy.buckets = vec![BucketRequest { name: "acme-media".into(), public: true }];
    let request = AdminRequest::RolloutStart(RolloutSpec { snapshot_volumes: false, deploy, strategy });
    let r = fleet.call(request).await.rollout().expect("Rollout");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now = fleet.call(AdminRequest::RolloutStatus { id: r.id.clone() }).await.rollout().expect("Rollout");
        if now.phase.as_str() != "rolling" {
            assert_eq!(now.phase.as_str(), "succeeded", "{now:?}");
            break;
        }
        assert!(Instant::now() < deadline, "rollout did not finish");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for vm in [&vm1, &vm2] {
        assert!(vm.runtime().join("secrets/s3-acme-media-secret-access-key").exists(), "{}", vm.name);
    }
    a.stop().await.expect("stop");
    b.stop().await.expect("stop");
}
