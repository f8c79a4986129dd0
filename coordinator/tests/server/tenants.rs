//! Tenants and admins' SSH keys, end to end through the `drover` binary and
//! real agents: the tenant's facts and generated admin password reach only
//! the tenant's machines; a manager's keys reach only the machines of the
//! tenants they manage; a removed key, or a removed admin's keys, leave the
//! machines' authorized-keys files with the next generation.

use crate::common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::flake::{flake, flake_spec, spawn_vm, Vm};
use common::{drover_json, raw_connect, TestCoordinator};
use drover_protocol::v1::*;

/// Real OpenSSH public keys, with the fingerprints `ssh-keygen -l` prints.
const ALICE_LAPTOP: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPOh/A5QIaPMDlSH+Cinr6vjFuuXatuXg/QqHu9fmdxC alice@laptop";
const ALICE_LAPTOP_FP: &str = "SHA256:AvqgSLviZ4ScVzh+GQFmLgMPwB/RTx8DmFjncQrXGCQ";
const ALICE_DESK: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIC6wkq/taNjs4bqMMXdJyLqeSg+sMqu8OmPtto6nbmi+ alice@desk";
const ALICE_DESK_FP: &str = "SHA256:bPTaDf+lzPj9FsLjQ3AhLNCDbsA92Y4hoZ++ndmVFu8";
const ROOT_OPS: &str = "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBNGu9ygFKMR3YO2vhlBhv2zFmvs2h3LtFEBAB+RQHQhCYpjOIOIPZLOmXrojRGuDTp7hbAA8zq3+NgPmra8F2WU= root@ops";

/// The key material of a public key line (type and base64), as the agent
/// writes it before its own comment.
fn material(line: &str) -> String {
    line.split(' ').take(2).collect::<Vec<_>>().join(" ")
}

fn drover_ok(fleet: &TestCoordinator, args: &[&str]) -> serde_json::Value {
    let (ok, json, stderr) = drover_json(fleet, args);
    assert!(ok, "drover {args:?} failed: {stderr}");
    json
}

fn as_bundle(bundle: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_drover")).args(args).env("DROVER_ADMIN_BUNDLE", bundle).output().expect("run drover")
}

fn write_key(dir: &Path, name: &str, line: &str) -> String {
    let path = dir.join(format!("{name}.pub"));
    std::fs::write(&path, format!("{line}\n")).expect("write key");
    path.display().to_string()
}

fn authorized(vm: &Vm, login: &str) -> String {
    std::fs::read_to_string(vm.runtime().join("ssh").join(login)).unwrap_or_default()
}

fn facts(vm: &Vm) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(vm.runtime().join("facts.json")).expect("facts")).expect("json")
}

/// Deploys the "good" system to every machine labelled role=svc and waits
/// until each has succeeded.
async fn deploy_all(fleet: &TestCoordinator, flake: &Path, facts: &[(&str, &str)]) -> Result<(), String> {
    let (ok, json, stderr) = {
        let flake_ref = match flake_spec(flake, "good") {
            SystemSpec::Flake { uri, attribute } => format!("{uri}#{attribute}"),
            other => panic!("{other:?}"),
        };
        let mut args = vec!["deploy".to_string(), "--selector".into(), "role=svc".into(), "--flake".into(), flake_ref];
        for (k, v) in facts {
            args.push("--fact".into());
            args.push(format!("{k}={v}"));
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        drover_json(fleet, &args)
    };
    if !ok {
        return Err(stderr);
    }
    let ids: Vec<String> = json.as_array().expect("deployed targets").iter().map(|t| t["deployment_id"].as_str().expect("id").to_string()).collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    for id in ids {
        loop {
            let d = fleet.call(AdminRequest::DeploymentsShow { id: id.clone() }).await.deployment().expect("Deployment");
            if d.state == DeploymentState::Succeeded {
                break;
            }
            assert!(d.state != DeploymentState::Failed, "{d:?}");
            assert!(Instant::now() < deadline, "not finished: {d:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_data_and_managers_keys_reach_only_the_tenants_machines_and_removed_keys_leave() {
    let fleet = TestCoordinator::start().await;
    let dir = fleet.dir.path();
    let flake = flake(dir);

    // alice is an operator who manages social.example; root (admin role) manages everything.
    let alice_bundle = dir.join("alice.bundle");
    let out = as_bundle(&fleet.bundle_path, &["admins", "add", "alice", "--role", "operator", "--out", &alice_bundle.display().to_string()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let created =
        drover_ok(&fleet, &["tenants", "create", "social.example", "--admin-email", "ops@social.example", "--admin-user", "owner", "--manager", "alice"]);
    assert_eq!(created["domain"], "social.example");
    assert!(created["admin_password"].is_null(), "the password is not printed unless asked");
    drover_ok(&fleet, &["tenants", "create", "other.example", "--admin-email", "admin@other.example"]);
    let shown = drover_ok(&fleet, &["tenants", "show", "social.example", "--show-password"]);
    let password = shown["admin_password"].as_str().expect("password").to_string();
    assert!(password.len() >= 20, "a generated password: {password:?}");
    let other_password = drover_ok(&fleet, &["tenants", "show", "other.example", "--show-password"])["admin_password"].as_str().expect("password").to_string();
    assert_ne!(password, other_password, "each tenant has its own password");

    // Bad input is refused with what to do about it.
    let (ok, _, stderr) = drover_json(&fleet, &["tenants", "create", "Not A Domain", "--admin-email", "x@y.example"]);
    assert!(!ok && stderr.contains("DNS name"), "{stderr}");
    let (ok, _, stderr) = drover_json(&fleet, &["tenants", "create", "social.example", "--admin-email", "x@y.example"]);
    assert!(!ok && stderr.contains("already exists"), "{stderr}");
    let (ok, _, stderr) = drover_json(&fleet, &["tenants", "create", "third.example", "--admin-email", "x@y.example", "--manager", "nobody"]);
    assert!(!ok && stderr.contains("no admin named"), "{stderr}");
    let private = dir.join("id_ed25519");
    std::fs::write(&private, "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----\n").expect("write");
    let (ok, _, stderr) = drover_json(&fleet, &["admins", "add-key", "alice", &private.display().to_string()]);
    assert!(!ok && stderr.contains("private key") && !stderr.contains("b3BlbnNzaC1rZXkt"), "{stderr}");

    // Keys: two of alice's (as root on her tenant's machines), one of root's for login ops.
    let keys = drover_ok(&fleet, &["admins", "add-key", "alice", &write_key(dir, "laptop", ALICE_LAPTOP)]);
    assert_eq!(keys[0]["fingerprint"], ALICE_LAPTOP_FP);
    drover_ok(&fleet, &["admins", "add-key", "alice", &write_key(dir, "desk", ALICE_DESK)]);
    drover_ok(&fleet, &["admins", "add-key", "root", &write_key(dir, "ops", ROOT_OPS), "--login", "ops"]);
    // An operator may not grant SSH access, not even to itself.
    let out = as_bundle(&alice_bundle, &["admins", "add-key", "alice", &write_key(dir, "again", ALICE_LAPTOP)]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs admin"), "{}", String::from_utf8_lossy(&out.stderr));

    // Three machines: social.example's, other.example's, and one of no tenant.
    let (_, social_token) = fleet.token(1, &[("role", "svc"), ("tenant", "social.example")]).await;
    let (_, other_token) = fleet.token(1, &[("role", "svc"), ("tenant", "other.example")]).await;
    let (_, plain_token) = fleet.token(1, &[("role", "svc")]).await;
    let (social, mut a) = spawn_vm(&fleet, "social", Some(&social_token));
    let (other, mut b) = spawn_vm(&fleet, "other", Some(&other_token));
    let (plain, mut c) = spawn_vm(&fleet, "plain", Some(&plain_token));
    for agent in [&mut a, &mut b, &mut c] {
        agent.wait_for(Duration::from_secs(15), |s| s.reports >= 1).await.expect("online");
    }
    assert_eq!(drover_ok(&fleet, &["tenants", "list"])[0]["machines"], 1);

    // A deployment may not override what the tenant provides.
    let refused = deploy_all(&fleet, &flake, &[("domain", "evil.example")]).await.expect_err("clash refused");
    assert!(refused.contains("fact \"domain\" comes from tenant"), "{refused}");

    deploy_all(&fleet, &flake, &[("service", "mastodon")]).await.expect("deploy");

    // The tenant's machine: its facts, its password (0400), alice's and root's keys.
    let f = facts(&social);
    assert_eq!(f["domain"], "social.example");
    assert_eq!(f["tenant"], "social.example");
    assert_eq!(f["admin_user"], "owner");
    assert_eq!(f["admin_email"], "ops@social.example");
    assert_eq!(f["service"], "mastodon");
    let secret = social.runtime().join("secrets/tenant-admin-password");
    assert_eq!(std::fs::read_to_string(&secret).expect("password delivered"), password);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&secret).expect("meta").permissions().mode() & 0o777, 0o400);
    let root_keys = authorized(&social, "root");
    assert!(root_keys.contains(&material(ALICE_LAPTOP)) && root_keys.contains(&material(ALICE_DESK)), "{root_keys}");
    assert!(authorized(&social, "ops").contains(&material(ROOT_OPS)));

    // The other tenant's machine: its own data, no key of alice's.
    let f = facts(&other);
    assert_eq!(f["domain"], "other.example");
    assert_eq!(f["admin_user"], "admin");
    assert_eq!(std::fs::read_to_string(other.runtime().join("secrets/tenant-admin-password")).expect("own password"), other_password);
    assert!(!authorized(&other, "root").contains("ssh-"), "alice does not manage other.example");
    assert!(authorized(&other, "ops").contains(&material(ROOT_OPS)), "root manages every machine");

    // The machine of no tenant: no tenant data at all.
    let f = facts(&plain);
    assert!(f.get("domain").is_none() && f.get("admin_email").is_none(), "{f}");
    assert!(!plain.runtime().join("secrets/tenant-admin-password").exists());
    assert!(!authorized(&plain, "root").contains("ssh-"));

    // Over the wire, with the other machine's own certificate: nothing of social.example.
    let cert = drover_net::identity::read_cert_pem(&dir.join("agents/other/cert.pem")).expect("cert");
    let key = drover_net::identity::read_key_pem(&dir.join("agents/other/key.pem")).expect("key");
    let conn = raw_connect(&fleet, Some((&cert, &key.serialize_der()))).await.expect("connect as other");
    let answer = conn.request(&Request::Agent(AgentRequest::FetchAssignment)).await.expect("fetch");
    let Response::Agent(AgentResponse::Assignment { assignment, access }) = answer else { panic!("{answer:?}") };
    assert!(!assignment.facts_json.contains("social.example"));
    assert!(assignment.secrets.iter().all(|s| s.value.expose() != password.as_bytes()));
    assert!(access.authorized_keys.iter().all(|l| l.keys.iter().all(|k| !k.contains(&material(ALICE_LAPTOP)))));

    // The password is in no deployment record shown to admins.
    let history = drover_ok(&fleet, &["deployments", "list"]);
    assert!(!history.to_string().contains(&password));
    assert!(history.to_string().contains("tenant-admin-password"), "the secret's name is listed");

    // Removing one key: gone from the machine with the next generation, the other stays.
    let keys = drover_ok(&fleet, &["admins", "remove-key", "alice", ALICE_DESK_FP]);
    assert_eq!(keys.as_array().expect("keys").len(), 1);
    assert!(authorized(&social, "root").contains(&material(ALICE_DESK)), "not before the next generation");
    deploy_all(&fleet, &flake, &[]).await.expect("deploy");
    let root_keys = authorized(&social, "root");
    assert!(!root_keys.contains(&material(ALICE_DESK)), "removed key gone: {root_keys}");
    assert!(root_keys.contains(&material(ALICE_LAPTOP)), "{root_keys}");

    // Taking alice off the tenant, then removing her: her keys leave, her certificate stops working.
    let out = as_bundle(&alice_bundle, &["whoami"]);
    assert!(out.status.success());
    drover_ok(&fleet, &["admins", "remove", "alice"]);
    assert!(drover_ok(&fleet, &["tenants", "show", "social.example"])["managers"].as_array().expect("managers").is_empty());
    let out = as_bundle(&alice_bundle, &["whoami"]);
    assert!(!out.status.success(), "a removed admin's certificate no longer works");
    deploy_all(&fleet, &flake, &[]).await.expect("deploy");
    assert!(!authorized(&social, "root").contains("ssh-"), "{}", authorized(&social, "root"));
    assert!(authorized(&social, "ops").contains(&material(ROOT_OPS)));
    let (ok, _, stderr) = drover_json(&fleet, &["admins", "remove", "root"]);
    assert!(!ok && stderr.contains("last admin"), "{stderr}");

    // A tenant with machines cannot be forgotten by accident.
    let (ok, _, stderr) = drover_json(&fleet, &["tenants", "remove", "social.example"]);
    assert!(!ok && stderr.contains("labelled tenant=social.example"), "{stderr}");

    for agent in [a, b, c] {
        agent.stop().await.expect("stop");
    }
}
