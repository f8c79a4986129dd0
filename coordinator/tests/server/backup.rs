//! Backups and the audit log, end to end with the `drover` binary: a backup
//! taken while the coordinator serves (and is written to) restores into a
//! new state directory, where a new coordinator serves the same machines
//! and their agents reconnect without enrolling; a damaged file or a used
//! directory is refused with nothing written. `drover audit` lists what
//! each admin changed, with no secret value in it.

use crate::common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use common::{drover_json, eventually, until_reported, Options, Serving, TestCoordinator};
use drover_protocol::v1::*;

fn drover(args: &[&str], bundle: &Path) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_drover")).args(args).env("DROVER_ADMIN_BUNDLE", bundle).output().expect("run drover")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_while_serving_restores_a_coordinator_whose_agents_reconnect_without_enrolling() {
    let fleet = TestCoordinator::start_with(Options { no_server: true, ..Default::default() }).await;
    let mut server = Serving(common::spawn_coordinator(&fleet.state_dir));
    let (_, token) = fleet.token(2, &[("role", "web")]).await;
    let mut agents: Vec<_> = (1..=2).map(|i| fleet.spawn_agent(&format!("vm{i}"), Some(&token))).collect();
    let mut ids = Vec::new();
    for a in &mut agents {
        ids.push(until_reported(a, 1).await.machine_id.expect("enrolled"));
    }

    // Writes go on while the backup is taken.
    let writer = {
        let bundle = fleet.bundle();
        let id = ids[0].clone();
        tokio::spawn(async move {
            let client = drover_coordinator::client::AdminClient::connect(&bundle).await.expect("admin");
            for i in 0..200 {
                let set = [("step".to_string(), i.to_string())].into();
                client.call(AdminRequest::MachinesLabel { id: id.clone(), set, remove: vec![] }).await.expect("label");
            }
            client.close().await;
        })
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("fleet.backup");
    let key = dir.path().join("backup.key");
    let key_arg = key.to_str().expect("utf-8");
    let (ok, out, err) = drover_json(&fleet, &["backup", file.to_str().expect("utf-8"), "--key", key_arg, "--new-key"]);
    assert!(ok, "drover backup: {err}");
    assert_eq!(std::fs::metadata(&key).expect("key").permissions().mode() & 0o777, 0o600, "the key is the operator's: 0600");
    assert_eq!(out["file_bytes"].as_u64(), Some(std::fs::metadata(&file).expect("file").len()));
    assert!(out["bytes"].as_u64().expect("bytes") < out["file_bytes"].as_u64().expect("file bytes"), "the seal adds its header and MAC");
    assert_eq!(std::fs::metadata(&file).expect("file").permissions().mode() & 0o777, 0o600, "the backup holds the CA key: 0600");
    writer.await.expect("writes went on while the backup was taken");
    let again = drover(&["backup", file.to_str().expect("utf-8"), "--key", key_arg], &fleet.bundle_path);
    assert!(!again.status.success(), "an existing file is not written over");
    assert!(String::from_utf8_lossy(&again.stderr).contains("exists"), "{}", String::from_utf8_lossy(&again.stderr));

    server.0.kill().expect("SIGKILL the coordinator");
    server.0.wait().expect("reap");

    // A damaged copy is refused and makes nothing.
    let mut bytes = std::fs::read(&file).expect("read");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xFF;
    let damaged = dir.path().join("damaged.backup");
    std::fs::write(&damaged, &bytes).expect("write");
    let refused_dir = dir.path().join("never");
    let out = drover(&["restore", damaged.to_str().expect("utf-8"), "--key", key_arg, "--state-dir", refused_dir.to_str().expect("utf-8")], &fleet.bundle_path);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("damaged"), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!refused_dir.exists(), "nothing is made from a damaged backup");

    let restored = dir.path().join("restored");
    let without_key = drover(&["restore", file.to_str().expect("utf-8"), "--state-dir", restored.to_str().expect("utf-8")], &fleet.bundle_path);
    assert!(!without_key.status.success(), "a sealed backup needs its key");
    assert!(String::from_utf8_lossy(&without_key.stderr).contains("--key"), "{}", String::from_utf8_lossy(&without_key.stderr));
    let out = drover(&["restore", file.to_str().expect("utf-8"), "--key", key_arg, "--state-dir", restored.to_str().expect("utf-8")], &fleet.bundle_path);
    assert!(out.status.success(), "drover restore: {}", String::from_utf8_lossy(&out.stderr));
    let again = drover(&["restore", file.to_str().expect("utf-8"), "--key", key_arg, "--state-dir", restored.to_str().expect("utf-8")], &fleet.bundle_path);
    assert!(!again.status.success(), "a used state directory is refused");
    assert!(String::from_utf8_lossy(&again.stderr).contains("not empty"), "{}", String::from_utf8_lossy(&again.stderr));
    let config = std::fs::read_to_string(restored.join("drover.toml")).expect("config");
    assert!(config.contains(restored.to_str().expect("utf-8")), "the configuration names its new directory: {config}");

    // The old directory is gone (the admin's bundle kept elsewhere, as
    // admins do); the restored one serves the same fleet.
    let restored_bundle = dir.path().join("root.bundle");
    std::fs::copy(&fleet.bundle_path, &restored_bundle).expect("keep the bundle");
    std::fs::remove_dir_all(&fleet.state_dir).expect("lose the original state");
    let _server = Serving(common::spawn_coordinator(&restored));
    for (a, id) in agents.iter_mut().zip(&ids) {
        let before = a.status.borrow().reports;
        let status = a
            .wait_for(Duration::from_secs(30), |s| s.reports >= before + 2)
            .await
            .unwrap_or_else(|s| panic!("the agent reports to the restored coordinator: {s:?}"));
        assert_eq!(status.machine_id.as_ref(), Some(id), "the same machine, not a new enrollment");
    }
    let out = drover(&["machines", "list", "--output", "json"], &restored_bundle);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let machines: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let listed: Vec<&str> = machines.as_array().expect("array").iter().map(|m| m["id"].as_str().expect("id")).collect();
    assert_eq!(listed.len(), 2, "no machine enrolled again: {machines}");
    for id in &ids {
        assert!(listed.contains(&id.as_str()));
    }
    let online = eventually(Duration::from_secs(10), || async {
        let out = drover(&["machines", "list", "--output", "json"], &restored_bundle);
        let m: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        m.as_array().is_some_and(|a| a.iter().all(|m| m["status"] == "online"))
    })
    .await;
    assert!(online, "both machines are online on the restored coordinator");
}

/// The attack on unkeyed checksums: a viewer's role changed to admin in
/// the backup and its SHA-256 computed again. A sealed backup so changed
/// is refused; so is an unsealed one unless asked for explicitly. An
/// encrypted backup shows neither the CA's key nor a secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_with_a_raised_role_and_a_recomputed_checksum_is_refused() {
    use sha2::Digest;
    let fleet = TestCoordinator::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let vera = dir.path().join("vera.bundle");
    let out = drover(&["admins", "add", "vera", "--role", "viewer", "--out", vera.to_str().expect("utf-8")], &fleet.bundle_path);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (token, _) = fleet.token(1, &[("role", "web")]).await;
    common::enroll_raw(&fleet, &token, "vm1").await;
    let spec = DeploySpec {
        secrets: vec![SecretFile { name: "db".into(), value: SecretBytes::new(SECRET_VALUE.as_bytes().to_vec()), owner: None, group: None, mode: 0o400 }],
        ..common::deploy_to_role("web", SystemSpec::Flake { uri: "path:/nonexistent".into(), attribute: "x".into() })
    };
    let _ = fleet.call(AdminRequest::Deploy(spec)).await.deployed().expect("deploy");
    let key = dir.path().join("backup.key");
    let key_arg = key.to_str().expect("utf-8");
    let sealed = dir.path().join("sealed.backup");
    let out = drover(&["backup", sealed.to_str().expect("utf-8"), "--key", key_arg, "--new-key"], &fleet.bundle_path);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // The backup the coordinator sent, inside the seal: magic, flags, key
    // id, nonce before it, the MAC after it.
    let file = std::fs::read(&sealed).expect("read");
    let header = b"DROVER-BACKUP 2\n".len() + 1 + 16 + 12;
    let inner = &file[header..file.len() - 32];
    assert!(inner.starts_with(b"DROVER-BACKUP 1\n"));
    // "viewer" → "admin", the same length so that every length prefix holds.
    let raise = |backup: &[u8]| -> Vec<u8> {
        let (payload, _) = backup.split_at(backup.len() - 32);
        let at = payload.windows(15).position(|w| w == br#""role":"viewer""#).expect("the viewer's record is in the backup");
        let mut changed = payload.to_vec();
        changed[at..at + 15].copy_from_slice(br#""role": "admin""#);
        let digest = sha2::Sha256::digest(&changed[b"DROVER-BACKUP 1\n".len()..]);
        changed.extend_from_slice(&digest);
        changed
    };
    let raised = raise(inner);

    let restore = |file: &Path, into: &str, extra: &[&str]| {
        let mut args = vec!["restore", file.to_str().expect("utf-8"), "--state-dir"];
        let target = dir.path().join(into);
        args.push(target.to_str().expect("utf-8"));
        args.extend_from_slice(extra);
        let out = drover(&args, &fleet.bundle_path);
        (out.status.success(), String::from_utf8_lossy(&out.stderr).to_string(), target)
    };

    // Sealed, changed inside, checksum recomputed: the MAC fails.
    let mut resealed = file[..header].to_vec();
    resealed.extend_from_slice(&raised);
    resealed.extend_from_slice(&file[file.len() - 32..]);
    let tampered = dir.path().join("tampered.backup");
    std::fs::write(&tampered, &resealed).expect("write");
    let (ok, err, target) = restore(&tampered, "from-tampered", &["--key", key_arg]);
    assert!(!ok && err.contains("fails its authentication"), "{err}");
    assert!(!target.exists(), "nothing is made");

    // Unsealed (as an older drover wrote them), changed and checksummed
    // again: refused unless --unauthenticated says the operator knows.
    let unsealed = dir.path().join("unsealed.backup");
    std::fs::write(&unsealed, &raised).expect("write");
    let (ok, err, target) = restore(&unsealed, "from-unsealed", &[]);
    assert!(!ok && err.contains("--unauthenticated"), "{err}");
    assert!(!target.exists(), "nothing is made");
    let plain = dir.path().join("plain.backup");
    std::fs::write(&plain, inner).expect("write");
    let (ok, err, _) = restore(&plain, "from-plain", &["--unauthenticated"]);
    assert!(ok, "an old unsealed backup restores when asked explicitly: {err}");

    // Another key cannot open it.
    let other = dir.path().join("other.key");
    let second = dir.path().join("second.backup");
    let out = drover(&["backup", second.to_str().expect("utf-8"), "--key", other.to_str().expect("utf-8"), "--new-key"], &fleet.bundle_path);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (ok, err, _) = restore(&second, "from-second", &["--key", key_arg]);
    assert!(!ok && err.contains("another backup key"), "{err}");

    // Encrypted: neither the CA's key nor a deployment's secret in clear.
    let encrypted = dir.path().join("encrypted.backup");
    let out = drover(&["backup", encrypted.to_str().expect("utf-8"), "--key", key_arg, "--encrypt"], &fleet.bundle_path);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let bytes = std::fs::read(&encrypted).expect("read");
    let ca_key = std::fs::read(fleet.state_dir.join("ca.key")).expect("ca key");
    let contains = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
    assert!(contains(inner, &ca_key[40..80]), "the plain backup does hold the CA key (so the check below means something)");
    assert!(contains(inner, SECRET_VALUE.as_bytes()) || contains(inner, &serde_json::to_vec(SECRET_VALUE.as_bytes()).expect("json")[1..30]), "and the secret");
    assert!(!contains(&bytes, &ca_key[40..80]), "the encrypted backup does not show the CA key");
    assert!(!contains(&bytes, b"DROVER-BACKUP 1"), "nor the backup inside it");
    let (ok, err, restored) = restore(&encrypted, "from-encrypted", &["--key", key_arg]);
    assert!(ok, "{err}");
    assert_eq!(std::fs::read(restored.join("ca.key")).expect("restored ca key"), ca_key);
}

const TOKEN_MARK: &str = "never-in-the-audit";
const SECRET_VALUE: &str = "s3cr3t-file-content-42";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drover_audit_lists_each_admins_changes_without_secret_values() {
    let fleet = TestCoordinator::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let vera = dir.path().join("vera.bundle");
    let out = drover(&["admins", "add", "vera", "--role", "viewer", "--out", vera.to_str().expect("utf-8")], &fleet.bundle_path);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let (token_text, token_file) = fleet.token(1, &[("role", TOKEN_MARK)]).await;
    let mut agent = fleet.spawn_agent("vm1", Some(&token_file));
    let id = until_reported(&mut agent, 1).await.machine_id.expect("enrolled");
    let (ok, _, err) = drover_json(&fleet, &["tenants", "create", "acme.example", "--admin-email", "ops@acme.example"]);
    assert!(ok, "{err}");
    let (ok, tenant, err) = drover_json(&fleet, &["tenants", "show", "acme.example", "--show-password"]);
    assert!(ok, "{err}");
    let password = tenant["admin_password"].as_str().unwrap_or_else(|| panic!("the tenant's password was shown: {tenant}")).to_string();
    let spec = DeploySpec {
        machine: Some(id.clone()),
        selector: Default::default(),
        secrets: vec![SecretFile { name: "db".into(), value: SecretBytes::new(SECRET_VALUE.as_bytes().to_vec()), owner: None, group: None, mode: 0o400 }],
        ..common::deploy_to_role("", SystemSpec::Flake { uri: "path:/nonexistent".into(), attribute: "x".into() })
    };
    let _ = fleet.call(AdminRequest::Deploy(spec)).await.deployed().expect("deploy");
    // A refused change is recorded with its refusal.
    let out = drover(&["machines", "revoke", &id], &vera);
    assert!(!out.status.success(), "a viewer cannot revoke");

    let (ok, all, err) = drover_json(&fleet, &["audit"]);
    assert!(ok, "drover audit: {err}");
    let entries = all.as_array().expect("array");
    let find = |admin: &str, action: &str| entries.iter().find(|e| e["admin"] == admin && e["action"] == action);
    for action in ["admins add", "tokens create", "tenants create", "tenants show --show-password", "deploy"] {
        let e = find("root", action).unwrap_or_else(|| panic!("root's {action} is recorded: {all}"));
        assert_eq!(e["outcome"], "ok", "{e}");
    }
    assert_eq!(find("root", "deploy").expect("deploy")["target"], format!("machine {id}"));
    let refused = find("vera", "machines revoke").unwrap_or_else(|| panic!("vera's refused revoke is recorded: {all}"));
    assert!(refused["outcome"].as_str().expect("outcome").contains("PermissionDenied"), "{refused}");
    assert!(find("root", "machines list").is_none(), "reads are not recorded");

    let text = all.to_string();
    for secret in [token_text.trim(), SECRET_VALUE, password.as_str()] {
        assert!(!secret.is_empty());
        assert!(!text.contains(secret), "a secret value is in the audit log: {text}");
    }

    let (ok, by_vera, _) = drover_json(&fleet, &["audit", "--admin", "vera"]);
    assert!(ok);
    assert!(by_vera.as_array().expect("array").iter().all(|e| e["admin"] == "vera"));
    assert_eq!(by_vera.as_array().expect("array").len(), 1, "{by_vera}");
    let (ok, future, _) = drover_json(&fleet, &["audit", "--since", "2999-01-01T00:00:00Z"]);
    assert!(ok);
    assert_eq!(future.as_array().expect("array").len(), 0);
    let (ok, recent, _) = drover_json(&fleet, &["audit", "--since", "1h", "--limit", "2"]);
    assert!(ok);
    let recent = recent.as_array().expect("array");
    assert_eq!(recent.len(), 2, "the newest two");
    assert_eq!(recent[1], entries[entries.len() - 1], "oldest first, newest last");

    // The whole log, exported page by page before it is pruned.
    let export = dir.path().join("audit.jsonl");
    let (ok, done, err) = drover_json(&fleet, &["audit", "--export", export.to_str().expect("utf-8")]);
    assert!(ok, "drover audit --export: {err}");
    let exported: Vec<serde_json::Value> =
        std::fs::read_to_string(&export).expect("export").lines().map(|l| serde_json::from_str(l).expect("one entry per line")).collect();
    assert_eq!(done["entries"].as_u64(), Some(exported.len() as u64));
    assert_eq!(&exported[..entries.len()], &entries[..], "the same entries, oldest first");
    let again = drover(&["audit", "--export", export.to_str().expect("utf-8")], &fleet.bundle_path);
    assert!(!again.status.success(), "an existing file is not written over");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_store_is_refused_with_the_way_back_instead_of_serving_an_empty_fleet() {
    let fleet = TestCoordinator::start_with(Options { no_server: true, ..Default::default() }).await;
    let data = fleet.state_dir.join("db").join("db");
    let mut bytes = std::fs::read(&data).expect("the store's data file");
    for i in (0..bytes.len()).step_by(97) {
        bytes[i] ^= 0x5A;
    }
    std::fs::write(&data, &bytes).expect("damage it");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_drover")).args(["serve", "--state-dir"]).arg(&fleet.state_dir).output().expect("run drover serve");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a damaged store does not serve: {stderr}");
    assert!(stderr.contains("damaged") && stderr.contains("drover restore"), "{stderr}");
    assert!(stderr.contains(&fleet.state_dir.join("db").display().to_string()), "the message names the store: {stderr}");
}
