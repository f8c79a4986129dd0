//! Provisioning with real VMs: local QEMU guests booted from the image
//! `scripts/guest-image.sh` builds, enrolling from their seeds; the Proxmox
//! client against the Proxmox double, whose `start` boots a real VM too.

use crate::common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::{vm, Options, TestCoordinator};
use drover_coordinator::config::{ProviderConfig, ProxmoxProviderConfig};
use drover_coordinator::hypervisor::proxmox::Proxmox;
use drover_coordinator::hypervisor::qemu::{Launch, Qemu};
use drover_coordinator::hypervisor::{DataDisk, Hypervisor, HypervisorError, Owner, Removed};
use drover_protocol::seed::Seed;
use drover_protocol::v1::{AdminRequest, AdminResponse, MachineStatus, ProvisionInfo, ProvisionState};
use drover_protocol::ErrorCode;
use proxmox_double::ProxmoxDouble;

const TOKEN: &str = "root@pam!drover=0f3c2a9e-5b7d-4e1f-9a6b-8c2d4e6f8a0b";

/// A coordinator with a local QEMU provider `local` over `image`.
async fn fleet_with_qemu(image: std::path::PathBuf, boot_timeout: Duration) -> (TestCoordinator, std::path::PathBuf) {
    let mut fleet = TestCoordinator::start_with(Options { no_server: true, ..Default::default() }).await;
    let work = fleet.dir.path().join("vms");
    fleet.config.providers.push(vm::qemu_provider("local", image, work.clone(), boot_timeout));
    fleet.serve().await;
    (fleet, work)
}

/// The VMs of a test's temporary directory die with the test.
fn guard(dir: &Path) -> vm::KillVmsOnDrop {
    vm::KillVmsOnDrop(dir.to_path_buf())
}

fn provision_json(fleet: &TestCoordinator, args: &[&str]) -> (bool, ProvisionInfo, String) {
    let (ok, json, stderr) = common::drover_json(fleet, args);
    let info = serde_json::from_value(json.clone()).unwrap_or_else(|e| panic!("no provision in {json} ({e}); stderr: {stderr}"));
    (ok, info, stderr)
}

async fn provisions(fleet: &TestCoordinator) -> Vec<ProvisionInfo> {
    let all = fleet.call(AdminRequest::Provisions).await.provisions().expect("expected provisions");
    all
}

/// Three VMs from the image: each enrolls with its fw_cfg seed and shows
/// online with the provision's name and labels; no process's command line
/// holds a token; a deployment lands its secret and facts inside each VM
/// (the agents' file checks prove it, digest included), one VM's data disk
/// is formatted and mounted; `destroy` stops and deletes them and their
/// certificates are refused afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_local_vms_enroll_from_their_seeds_take_a_deployment_and_are_destroyed() {
    let _heavy = common::heavy().await;
    let (fleet, work) = fleet_with_qemu(vm::image(), Duration::from_secs(180)).await;
    let _vms = guard(&work);
    let names = ["vm-a", "vm-b", "vm-c"];
    let runs: Vec<_> = names
        .iter()
        .map(|name| {
            let mut args = vec!["machines", "provision", name, "--provider", "local", "--label", "role=vmtest", "--label", "batch=one", "--wait"];
            if *name == "vm-a" {
                args.extend(["--volume", "data:64MiB:/srv/data:ext4"]);
            }
            let fleet_bundle = fleet.bundle_path.clone();
            let args: Vec<String> = args.into_iter().map(String::from).collect();
            std::thread::spawn(move || {
                std::process::Command::new(env!("CARGO_BIN_EXE_drover"))
                    .args(&args)
                    .args(["--output", "json"])
                    .env("DROVER_ADMIN_BUNDLE", fleet_bundle)
                    .output()
                    .expect("run drover")
            })
        })
        .collect();
    // While the VMs boot and enroll: no command line anywhere holds a token.
    let mut seen_tokens = false;
    for _ in 0..20 {
        seen_tokens |= vm::every_command_line().contains("drt_");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    for (name, run) in names.iter().zip(runs) {
        let out = run.join().expect("thread");
        let info: ProvisionInfo =
            serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{name}: {e}; stderr {}", String::from_utf8_lossy(&out.stderr)));
        assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(info.state, ProvisionState::Online, "{name}");
    }
    assert!(!seen_tokens && !vm::every_command_line().contains("drt_"), "a token showed on a command line");
    assert_eq!(vm::vm_dirs(&work).len(), 3, "one VM a provision");
    let seeds: Vec<_> = vm::vm_dirs(&work).iter().map(|d| d.join("seed")).collect();
    for seed in &seeds {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(seed).expect("seed").permissions().mode() & 0o777, 0o600, "{}", seed.display());
    }

    let machines = fleet.machines().await;
    let mut ids = Vec::new();
    for name in names {
        let m = machines.iter().find(|m| m.hostname == name).unwrap_or_else(|| panic!("no machine {name}: {machines:?}"));
        assert_eq!(m.status, MachineStatus::Online, "{name}");
        assert_eq!(m.labels.get("role").map(String::as_str), Some("vmtest"));
        assert_eq!(m.labels.get("batch").map(String::as_str), Some("one"));
        ids.push(m.id.clone());
    }
    // `machines list` shows the provider and VM id.
    let list = std::process::Command::new(env!("CARGO_BIN_EXE_drover"))
        .args(["machines", "list"])
        .env("DROVER_ADMIN_BUNDLE", &fleet.bundle_path)
        .output()
        .expect("machines list");
    let table = String::from_utf8_lossy(&list.stdout);
    assert!(table.contains("PROVIDER") && table.matches(" local ").count() >= 3, "{table}");

    // A deployment: the secret (by digest) and the facts land in each VM.
    let secret_value = format!("pw-{}", hex::encode(rand::random::<[u8; 8]>()));
    let secret_file = fleet.dir.path().join("db-password");
    std::fs::write(&secret_file, &secret_value).expect("secret file");
    let digest = {
        use sha2::{Digest, Sha256};
        hex::encode(Sha256::digest(secret_value.as_bytes()))
    };
    let secret_arg = format!("db-password=@{}", secret_file.display());
    let check = format!("file:/run/drover/secrets/db-password#sha256={digest}");
    let (ok, _, stderr) = common::drover_json(
        &fleet,
        &[
            "deploy",
            "--selector",
            "role=vmtest",
            "--flake",
            "path:/etc/fleet#web",
            "--secret",
            &secret_arg,
            "--fact",
            "tier=web",
            "--check",
            &check,
            "--check",
            "file:/run/drover/facts.json",
            "--health-deadline",
            "30s",
            "--wait",
        ],
    );
    assert!(ok, "the deployment to the VMs failed: {stderr}");
    // The data disk: formatted (ext4 made lost+found) and mounted.
    let (ok, _, stderr) = common::drover_json(
        &fleet,
        &["deploy", "--machine", &ids[0], "--flake", "path:/etc/fleet#web", "--check", "file:/srv/data/lost+found", "--health-deadline", "30s", "--wait"],
    );
    assert!(ok, "the data disk was not mounted in vm-a: {stderr}");
    // The guests reach the coordinator and nothing else: a TCP service on
    // the host's loopback is out of their reach (a check on it fails).
    let host_service = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let unreachable = format!("tcp:10.0.2.2:{}", host_service.local_addr().expect("addr").port());
    let (ok, _, stderr) = common::drover_json(
        &fleet,
        &["deploy", "--machine", &ids[2], "--flake", "path:/etc/fleet#web", "--check", &unreachable, "--health-deadline", "3s", "--wait"],
    );
    assert!(!ok, "an isolated guest reached a host service: {stderr}");
    // A wrong digest fails: the check reads the file, it does not only
    // find it.
    let wrong = format!("file:/run/drover/secrets/db-password#sha256={}", "0".repeat(64));
    let (ok, _, _) = common::drover_json(
        &fleet,
        &["deploy", "--machine", &ids[1], "--flake", "path:/etc/fleet#web", "--check", &wrong, "--health-deadline", "3s", "--wait"],
    );
    assert!(!ok, "a wrong digest must fail the health gate");

    // Its identity, from the VM's own disk (the agent keeps it there).
    let copy = fleet.dir.path().join("vm-b-system.img");
    let vm_b_dir = vm::vm_dirs(&work).into_iter().find(|d| std::fs::read_to_string(d.join("seed")).is_ok_and(|s| s.contains("name=vm-b"))).expect("vm-b's dir");
    std::fs::copy(vm_b_dir.join("system.img"), &copy).expect("copy the system disk");
    let cert_pem = vm::read_from_ext4_image(&copy, "/cert.pem");
    let key_pem = vm::read_from_ext4_image(&copy, "/key.pem");
    std::fs::write(fleet.dir.path().join("cert.pem"), &cert_pem).expect("write");
    std::fs::write(fleet.dir.path().join("key.pem"), &key_pem).expect("write");
    let cert = drover_net::identity::read_cert_pem(&fleet.dir.path().join("cert.pem")).expect("cert from the VM");
    let key = drover_net::identity::read_key_pem(&fleet.dir.path().join("key.pem")).expect("key from the VM");

    for name in names {
        // vm-a's data disk is kept; the others go with their VMs.
        let mut args = vec!["machines", "destroy", name];
        if name == "vm-a" {
            args.push("--keep-volumes");
        }
        let (ok, info, stderr) = provision_json(&fleet, &args);
        assert!(ok, "{name}: {stderr}");
        assert_eq!(info.state, ProvisionState::Destroyed);
    }
    let kept: Vec<_> = std::fs::read_dir(work.join("kept")).expect("kept disks").flatten().map(|e| e.file_name().to_string_lossy().to_string()).collect();
    assert!(kept.len() == 1 && kept[0].ends_with("-vol-data.img"), "vm-a's data disk is kept: {kept:?}");
    assert!(vm::vm_dirs(&work).is_empty(), "the VMs' directories are gone");
    assert!(!vm::qemu_running_in(&work), "no QEMU runs for them");
    for id in &ids {
        assert_eq!(fleet.machine(id).await.status, MachineStatus::Revoked);
    }
    let err = common::raw_connect(&fleet, Some((&cert, &key.serialize_der()))).await.expect_err("a destroyed VM's certificate is refused");
    assert_eq!(err.code(), Some(ErrorCode::Revoked), "{err:?}");
}

/// Provisioning a name twice makes one VM. A coordinator SIGKILLed right
/// after it accepted a provision finishes it after a restart: exactly one
/// VM, enrolled and online.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_vm_a_name_and_a_coordinator_killed_mid_provision_finishes_it() {
    let _heavy = common::heavy().await;
    let mut fleet = TestCoordinator::start_with(Options { no_server: true, ..Default::default() }).await;
    let work = fleet.dir.path().join("vms");
    let _vms = guard(&work);
    fleet.config.providers.push(vm::qemu_provider("local", vm::image(), work.clone(), Duration::from_secs(180)));
    std::fs::write(fleet.state_dir.join("drover.toml"), fleet.config.to_toml()).expect("write drover.toml");
    let mut server = common::Serving(common::spawn_coordinator(&fleet.state_dir));
    let mut first = None;
    for _ in 0..100 {
        let (ok, json, _) = common::drover_json(&fleet, &["machines", "provision", "once", "--provider", "local", "--label", "role=crash"]);
        if ok {
            first = Some(serde_json::from_value::<ProvisionInfo>(json).expect("provision"));
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let first = first.expect("the coordinator accepted the provision");
    // Killed at once: the VM may or may not be made yet.
    server.0.kill().expect("SIGKILL");
    server.0.wait().expect("reap");
    let _server = common::Serving(common::spawn_coordinator(&fleet.state_dir));
    let mut again = None;
    for _ in 0..100 {
        let (ok, json, _) = common::drover_json(&fleet, &["machines", "provision", "once", "--provider", "local", "--wait"]);
        if ok {
            again = Some(serde_json::from_value::<ProvisionInfo>(json).expect("provision"));
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let again = again.expect("the provision finished after the restart");
    assert_eq!(again.state, ProvisionState::Online);
    assert_eq!(again.created_at, first.created_at, "the same provision, not a second one");
    assert_eq!(vm::vm_dirs(&work).len(), 1, "exactly one VM");
    let all = provisions(&fleet).await;
    assert_eq!(all.len(), 1);
    let machines: Vec<_> = fleet.machines().await.into_iter().filter(|m| m.hostname == "once").collect();
    assert_eq!(machines.len(), 1, "one machine: {machines:?}");
    assert_eq!(Some(&machines[0].id), again.machine_id.as_ref());
    let (ok, _, stderr) = common::drover_json(&fleet, &["machines", "destroy", "once"]);
    assert!(ok, "{stderr}");
    assert!(vm::vm_dirs(&work).is_empty() && !vm::qemu_running_in(&work));
}

/// An image without the agent: the VM boots, never enrolls, and the
/// provision fails at its deadline with the console's tail; its VM is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vm_that_never_enrolls_fails_at_its_deadline_with_its_console_tail() {
    let _heavy = common::heavy().await;
    let (fleet, work) = fleet_with_qemu(vm::image_without_agent(), Duration::from_secs(25)).await;
    let _vms = guard(&work);
    let (ok, info, stderr) = provision_json(&fleet, &["machines", "provision", "silent", "--provider", "local", "--wait"]);
    assert!(!ok, "the provision must fail");
    assert_eq!(info.state, ProvisionState::Failed);
    let error = info.error.expect("an error");
    assert!(error.contains("did not enroll within 25s"), "{error}");
    assert!(error.contains("this image has no agent"), "the console's tail: {error}");
    assert!(stderr.contains("provision silent failed"), "{stderr}");
    assert!(vm::vm_dirs(&work).is_empty() && !vm::qemu_running_in(&work), "the failed VM is deleted");
    // A failed name can be provisioned again (here with the same result
    // pending); a wrong provider is named.
    let (ok, _, stderr) = common::drover_json(&fleet, &["machines", "provision", "x1", "--provider", "nowhere"]);
    assert!(!ok && stderr.contains("no provider \"nowhere\"") && stderr.contains("local"), "{stderr}");
    let (ok, _, stderr) = common::drover_json(&fleet, &["machines", "provision", "Bad_Name", "--provider", "local"]);
    assert!(!ok && stderr.contains("lowercase"), "{stderr}");
}

fn proxmox_config(double: &ProxmoxDouble, dir: &Path, token: &str) -> ProxmoxProviderConfig {
    use std::os::unix::fs::PermissionsExt;
    let token_file = dir.join("pve-token");
    std::fs::write(&token_file, token).expect("token file");
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let ca_file = dir.join("pve-ca.pem");
    std::fs::write(&ca_file, &double.ca_pem).expect("ca file");
    ProxmoxProviderConfig {
        name: "pve".into(),
        endpoint: double.endpoint(),
        token_file,
        ca_file: Some(ca_file),
        node: double.node.clone(),
        storage: "local-lvm".into(),
        template: proxmox_double::TEMPLATE_ID.to_string(),
        root_disk: "virtio0".into(),
        guest_coordinator: "10.0.2.2:1".into(),
        request_timeout: Duration::from_secs(10),
        task_timeout: Duration::from_secs(30),
        cores: 1,
        memory_mib: 256,
        disk_mib: 2048,
        boot_timeout: Duration::from_secs(180),
    }
}

use drover_testkit::contract::{owner, seed, vm_spec as spec};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hypervisor_contract_holds_for_local_qemu_and_proxmox() {
    let _heavy = common::heavy().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let _vms = guard(dir.path());
    let ProviderConfig::Qemu(q) = vm::qemu_provider("local", vm::image_without_agent(), dir.path().join("vms"), Duration::from_secs(60)) else {
        unreachable!()
    };
    let work = dir.path().join("vms");
    let make = |o: Owner| Qemu::new(q.clone(), work.clone(), "127.0.0.1:9".parse().expect("addr"), o).expect("qemu provider");
    // A directory another tool made among the VMs.
    std::fs::create_dir_all(work.join("150")).expect("a hand-made VM directory");
    std::fs::write(work.join("150/provision"), "p-00000000c1").expect("an old-style mark");
    drover_testkit::contract::hypervisor(
        &make(owner("drover-aaaa", "local")),
        &make(owner("drover-bbbb", "local")),
        &make(owner("drover-aaaa", "local2")),
        "150",
    )
    .await;
    assert!(work.join("150").is_dir(), "the hand-made directory is untouched");

    let double = ProxmoxDouble::start(TOKEN).await;
    double.make_vm(150, "hand-made", "a VM made by hand");
    let config = proxmox_config(&double, dir.path(), TOKEN);
    let make = |o: Owner| Proxmox::new(config.clone(), o).expect("client");
    drover_testkit::contract::hypervisor(
        &make(owner("drover-aaaa", "pve")),
        &make(owner("drover-bbbb", "pve")),
        &make(owner("drover-aaaa", "pve-drbd")),
        "150",
    )
    .await;
    assert!(double.vms().iter().any(|v| v.0 == 150 && v.2), "the hand-made VM still runs");
}

/// The Proxmox client against the double: the request sequence and bodies,
/// the token, a lock answer retried, a failed task's exit status in the
/// error, a wrong token refused with a clear error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxmox_client_follows_the_api_retries_locks_and_reports_failed_tasks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let double = ProxmoxDouble::start(TOKEN).await;
    let client = Proxmox::new(proxmox_config(&double, dir.path(), TOKEN), owner("drover-aaaa", "pve")).expect("client");
    double.lock_next_config(2);
    let id = client.create(&spec("p-00000000a1"), &seed()).await.expect("create despite two lock answers");
    assert_eq!(id, "100", "the id from /cluster/nextid");
    let log = double.log();
    let calls: Vec<&str> = log.iter().map(|l| l.split('?').next().unwrap_or("")).collect();
    let first = |needle: &str| calls.iter().position(|c| c.contains(needle)).unwrap_or_else(|| panic!("no {needle} in {calls:?}"));
    assert!(calls[0].ends_with("GET /api2/json/cluster/nextid"), "{calls:?}");
    assert!(first("POST /api2/json/nodes/pve1/qemu/9000/clone") < first("/tasks/"), "the clone, then its task: {calls:?}");
    let config_posts = calls.iter().filter(|c| c.starts_with("POST /api2/json/nodes/pve1/qemu/100/config")).count();
    assert_eq!(config_posts, 3, "two locked answers, then the configuration: {calls:?}");
    assert!(first("POST /api2/json/nodes/pve1/qemu/100/config") > first("POST /api2/json/nodes/pve1/qemu/9000/clone"));
    assert!(calls.contains(&"PUT /api2/json/nodes/pve1/qemu/100/resize"), "the boot disk grown: {calls:?}");
    let (_, name, running, config) = double.vms().into_iter().find(|v| v.0 == 100).expect("VM 100");
    assert_eq!((name.as_str(), running), ("web-1", false));
    assert_eq!(config.get("cores").map(String::as_str), Some("2"));
    assert_eq!(config.get("memory").map(String::as_str), Some("1024"));
    assert_eq!(config.get("tags").map(String::as_str), Some("drover;drover-aaaa;p-00000000a1"));
    let description = config.get("description").expect("a description");
    assert!(description.contains("drover-fleet: drover-aaaa") && description.contains("drover-provision: p-00000000a1"), "{description}");
    assert!(config.get("virtio1").is_some_and(|d| d.contains("size=1G") && d.contains("serial=vol-data")), "{config:?}");
    assert!(config.get("virtio0").is_some_and(|d| d.contains("size=2G")), "{config:?}");
    let smbios = config.get("smbios1").expect("smbios1");
    assert!(smbios.starts_with("serial=") && smbios.ends_with(",base64=1"), "{smbios}");
    assert!(!log.iter().any(|l| l.contains("drt_")), "the token is never in a URL");

    // The seed round-trips through Proxmox's base64 SMBIOS serial.
    use base64::Engine;
    let encoded = smbios.trim_start_matches("serial=").trim_end_matches(",base64=1");
    let decoded = String::from_utf8(base64::engine::general_purpose::STANDARD.decode(encoded).expect("base64")).expect("utf-8");
    assert_eq!(Seed::parse(&decoded).expect("a seed"), seed());

    // A failed task: its exit status and log in the error.
    double.fail_next("qmstart", "start failed: QEMU exited with code 1");
    let err = client.start(&id, "p-00000000a1").await.expect_err("a failed start task");
    let text = err.to_string();
    assert!(text.contains("start failed: QEMU exited with code 1") && text.contains("TASK ERROR"), "{text}");
    // A task that could not take the VM's lock is retried.
    double.fail_next("qmdestroy", "can't lock file '/var/lock/qemu-server/lock-100.conf' - got timeout");
    assert_eq!(client.delete(&id, "p-00000000a1", false).await.expect("delete, retried"), Removed::Deleted);
    assert!(double.vms().is_empty());
    let err = client.delete("100", "p-00000000a1", true).await.expect_err("keeping disks is refused on Proxmox");
    assert!(err.to_string().contains("qm disk move"), "{err}");

    // A wrong token: refused, and the error says which file to fix.
    let other = dir.path().join("other");
    std::fs::create_dir(&other).expect("dir");
    let wrong = Proxmox::new(proxmox_config(&double, &other, "root@pam!drover=wrong"), owner("drover-aaaa", "pve")).expect("client");
    let err = wrong.list().await.expect_err("a wrong token");
    assert!(matches!(err, HypervisorError::Auth(_)), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("Authentication failed!") && text.contains("pve-token"), "{text}");
    // Parameter errors carry Proxmox's per-parameter messages.
    let mut bad = spec("p-00000000a2");
    bad.disks = vec![DataDisk { serial: "a-serial-longer-than-twenty".into(), size_bytes: 1 << 30 }];
    let err = client.create(&bad, &seed()).await.expect_err("a serial too long");
    assert!(err.to_string().contains("Parameter verification failed.") && err.to_string().contains("20 characters"), "{err}");
    assert!(double.vms().is_empty(), "a VM that could not be configured is deleted");
    // A seed that does not fit Proxmox's smbios1 is refused before any request.
    let sent = double.log().len();
    let mut long = seed();
    long.server_name = "s".repeat(300);
    let err = client.create(&spec("p-00000000a3"), &long).await.expect_err("too long for smbios1");
    assert!(err.to_string().contains("smbios1") && err.to_string().contains("512"), "{err}");
    assert_eq!(double.log().len(), sent, "nothing was sent");
}

/// End to end through the Proxmox client: the double's start boots the
/// clone as a real QEMU VM with the SMBIOS serial Proxmox would give it;
/// the agent reads its seed there, fetches the fleet CA pinned by its
/// digest, and enrolls as the provision's machine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provision_through_proxmox_boots_a_real_vm_that_enrolls_with_a_pinned_ca() {
    let _heavy = common::heavy().await;
    let image = vm::image();
    let double = ProxmoxDouble::start(TOKEN).await;
    let mut fleet = TestCoordinator::start_with(Options { no_server: true, ..Default::default() }).await;
    let vms = fleet.dir.path().join("pve-vms");
    std::fs::create_dir_all(&vms).expect("dir");
    let _vms = guard(&vms);
    let boot_vms = vms.clone();
    double.on_start(Arc::new(move |req: proxmox_double::BootRequest| {
        let (image, dir) = (image.clone(), boot_vms.join(req.vmid.to_string()));
        Box::pin(async move {
            std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
            let system = dir.join("system.img");
            std::fs::File::create(&system).and_then(|f| f.set_len(req.boot_disk_bytes)).map_err(|e| e.to_string())?;
            let mut disks = vec![(system, "drover-system".to_string())];
            for (size, serial) in &req.disks {
                let file = dir.join(format!("{serial}.img"));
                std::fs::File::create(&file).and_then(|f| f.set_len(*size)).map_err(|e| e.to_string())?;
                disks.push((file, serial.clone()));
            }
            let launch = Launch {
                qemu: "qemu-system-x86_64".into(),
                name: format!("pve-{}", req.vmid),
                accel: "tcg".into(),
                image,
                dir,
                cores: req.cores,
                memory_bytes: req.memory_mib << 20,
                disks,
                fw_cfg_seed: None,
                smbios_serial: req.smbios_serial,
                guest_address: None,
            };
            launch.spawn().await.map(|_| ()).map_err(|e| e.to_string())
        })
    }));
    let stop_vms = vms.clone();
    double.on_stop(Arc::new(move |req: proxmox_double::BootRequest| {
        let dir = stop_vms.join(req.vmid.to_string());
        Box::pin(async move { drover_coordinator::hypervisor::qemu::stop_dir(&dir).await.map_err(|e| e.to_string()) })
    }));
    let mut config = proxmox_config(&double, fleet.dir.path(), TOKEN);
    config.guest_coordinator = format!("10.0.2.2:{}", fleet.addr.port());
    fleet.config.providers.push(ProviderConfig::Proxmox(config));
    fleet.serve().await;

    let (ok, info, stderr) = provision_json(&fleet, &["machines", "provision", "pve-web", "--provider", "pve", "--label", "role=pve", "--wait"]);
    assert!(ok, "{stderr}");
    assert_eq!(info.state, ProvisionState::Online);
    assert_eq!(info.vm_id.as_deref(), Some("100"));
    let machine = fleet.machine(info.machine_id.as_deref().expect("a machine")).await;
    assert_eq!((machine.hostname.as_str(), machine.status), ("pve-web", MachineStatus::Online));
    assert_eq!(machine.labels.get("role").map(String::as_str), Some("pve"));
    assert!(vm::qemu_running_in(&vms), "the double booted a real VM");

    let (ok, _, stderr) = common::drover_json(&fleet, &["machines", "destroy", "pve-web"]);
    assert!(ok, "{stderr}");
    assert!(double.vms().is_empty(), "the VM is deleted on Proxmox");
    assert!(!vm::qemu_running_in(&vms), "and stopped");
    assert_eq!(fleet.machine(&machine.id).await.status, MachineStatus::Revoked);
}

/// A coordinator whose providers (by name) are all on the Proxmox double;
/// nothing boots the clones, so provisions stay `booting`.
async fn fleet_on_pve(double: &ProxmoxDouble, providers: &[&str]) -> TestCoordinator {
    let mut fleet = TestCoordinator::start_with(Options { no_server: true, ..Default::default() }).await;
    for name in providers {
        let mut config = proxmox_config(double, fleet.dir.path(), TOKEN);
        config.name = name.to_string();
        fleet.config.providers.push(ProviderConfig::Proxmox(config));
    }
    fleet.serve().await;
    fleet
}

/// Provisions `name` on `provider` and waits until its VM is made.
async fn booting(fleet: &TestCoordinator, name: &str, provider: &str) -> ProvisionInfo {
    let (ok, _, stderr) = common::drover_json(fleet, &["machines", "provision", name, "--provider", provider]);
    assert!(ok, "{name}: {stderr}");
    let mut last = None;
    for _ in 0..300 {
        let p = fleet.call(AdminRequest::ProvisionShow { name: name.into() }).await.provision().expect("no provision");
        if p.state == ProvisionState::Booting && p.vm_id.is_some() {
            return p;
        }
        last = Some(p);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{name} never got its VM: {last:?}")
}

/// The VMs on the double that carry `provision`'s identity.
fn vms_of(double: &ProxmoxDouble, provision_vm: &str) -> Vec<u32> {
    let description = |c: &std::collections::BTreeMap<String, String>| c.get("description").cloned().unwrap_or_default();
    let wanted = double.vms().into_iter().find(|v| v.0.to_string() == provision_vm).map(|v| description(&v.3)).unwrap_or_default();
    double.vms().into_iter().filter(|v| !wanted.is_empty() && description(&v.3) == wanted).map(|v| v.0).collect()
}

/// Proxmox hands out the lowest free VM id: a provision made after
/// another was destroyed gets its id, and destroying the first again must
/// not touch it. VM ids are never trusted alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destroying_a_destroyed_provision_again_leaves_the_vm_that_reuses_its_id() {
    let double = ProxmoxDouble::start(TOKEN).await;
    let fleet = fleet_on_pve(&double, &["pve"]).await;
    let e = booting(&fleet, "pve-e", "pve").await;
    assert_eq!(e.vm_id.as_deref(), Some("100"));
    let (ok, info, stderr) = provision_json(&fleet, &["machines", "destroy", "pve-e"]);
    assert!(ok && info.state == ProvisionState::Destroyed, "{stderr}");
    assert!(double.vms().is_empty());
    let g = booting(&fleet, "pve-g", "pve").await;
    assert_eq!(g.vm_id.as_deref(), Some("100"), "the lowest free id again");

    let sent = double.log().len();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_drover"))
        .args(["machines", "destroy", "pve-e"])
        .env("DROVER_ADMIN_BUNDLE", &fleet.bundle_path)
        .output()
        .expect("drover");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let said = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("already destroyed"), "says it did nothing: {said}");
    assert!(!double.log()[sent..].iter().any(|l| !l.starts_with("GET")), "no change was sent to Proxmox: {:?}", &double.log()[sent..]);
    assert_eq!(double.vms().len(), 1, "pve-g's VM is still there");
    let g = fleet.call(AdminRequest::ProvisionShow { name: "pve-g".into() }).await.provision().expect("Provision");
    assert_eq!((g.state, g.vm_id.as_deref()), (ProvisionState::Booting, Some("100")));
}

/// Two providers on one Proxmox node, and a second coordinator (another
/// fleet) on the same cluster: restarts reconcile only what each one owns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_never_deletes_another_providers_or_another_coordinators_vm() {
    let double = ProxmoxDouble::start(TOKEN).await;
    double.make_vm(500, "somebody-elses", "made by hand");
    let mut first = fleet_on_pve(&double, &["pve", "pve-drbd"]).await;
    let a = booting(&first, "pve-a", "pve").await;
    let b = booting(&first, "drbd-b", "pve-drbd").await;
    // A restart reconciles both providers: each keeps its own VM.
    first.stop().await;
    first.serve().await;
    let mut second = fleet_on_pve(&double, &["pve"]).await;
    let c = booting(&second, "other-c", "pve").await;
    second.stop().await;
    second.serve().await;
    first.stop().await;
    first.serve().await;
    // Whatever ran reconcile: every VM is where it was.
    let ids: Vec<u32> = double.vms().into_iter().map(|v| v.0).collect();
    for p in [&a, &b, &c] {
        let id: u32 = p.vm_id.as_deref().expect("vm").parse().expect("id");
        assert!(ids.contains(&id), "{}'s VM {id} survived: {ids:?}", p.name);
    }
    assert!(ids.contains(&500), "the hand-made VM survived");
    for (fleet, name) in [(&first, "pve-a"), (&first, "drbd-b"), (&second, "other-c")] {
        let p = fleet.call(AdminRequest::ProvisionShow { name: name.into() }).await.provision().expect("Provision");
        assert_eq!(p.state, ProvisionState::Booting, "{name} is still live: {p:?}");
    }
    // Neither coordinator can destroy the other's provision, nor touch its VM.
    let (ok, _, err) = common::drover_json(&second, &["machines", "destroy", "pve-a"]);
    assert!(!ok && err.contains("no provision"), "{err}");
    let (ok, _, err) = common::drover_json(&second, &["machines", "destroy", "other-c"]);
    assert!(ok, "{err}");
    let ids: Vec<u32> = double.vms().into_iter().map(|v| v.0).collect();
    assert_eq!(ids.len(), 3, "only other-c's VM went: {ids:?}");
}

/// Three provisions at once, with Proxmox suggesting the same id to all
/// three (as it does to clients that ask at the same time): each is retried
/// with a fresh id and gets a VM of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_provisions_at_once_each_get_their_own_vm() {
    let double = ProxmoxDouble::start(TOKEN).await;
    let fleet = fleet_on_pve(&double, &["pve"]).await;
    double.repeat_next_ids(3);
    let names = ["race-1", "race-2", "race-3"];
    let runs: Vec<_> = names
        .iter()
        .map(|name| {
            let bundle = fleet.bundle_path.clone();
            let name = name.to_string();
            std::thread::spawn(move || {
                std::process::Command::new(env!("CARGO_BIN_EXE_drover"))
                    .args(["machines", "provision", &name, "--provider", "pve"])
                    .env("DROVER_ADMIN_BUNDLE", bundle)
                    .output()
                    .expect("drover")
            })
        })
        .collect();
    for run in runs {
        let out = run.join().expect("thread");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let mut ids = Vec::new();
    for name in names {
        let p = booting(&fleet, name, "pve").await;
        ids.push(p.vm_id.expect("vm"));
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 3, "three VMs: {ids:?}");
    assert_eq!(double.vms().len(), 3);
    let clones = double.log().iter().filter(|l| l.contains("/qemu/9000/clone")).count();
    assert!(clones > 3, "a clone to a taken id was retried: {clones} clone requests");
}

/// A coordinator SIGKILLed while Proxmox clones the template: the clone
/// carries its identity from the request that made it, so after the
/// restart the provision finds it and ends with exactly one VM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_killed_during_a_clone_ends_with_one_vm_for_the_provision() {
    let double = ProxmoxDouble::start(TOKEN).await;
    double.set_task_time(Duration::from_secs(3));
    let mut fleet = TestCoordinator::start_with(Options { no_server: true, ..Default::default() }).await;
    fleet.config.providers.push(ProviderConfig::Proxmox(proxmox_config(&double, fleet.dir.path(), TOKEN)));
    std::fs::write(fleet.state_dir.join("drover.toml"), fleet.config.to_toml()).expect("write drover.toml");
    let mut server = common::Serving(common::spawn_coordinator(&fleet.state_dir));
    let mut accepted = false;
    for _ in 0..100 {
        if common::drover_json(&fleet, &["machines", "provision", "cloned", "--provider", "pve"]).0 {
            accepted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(accepted, "the coordinator took the provision");
    let mut cloning = false;
    for _ in 0..200 {
        if double.lock_of(100).as_deref() == Some("clone") {
            cloning = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(cloning, "the clone started");
    server.0.kill().expect("SIGKILL");
    server.0.wait().expect("reap");
    double.set_task_time(proxmox_double::TASK_TIME);
    let _server = common::Serving(common::spawn_coordinator(&fleet.state_dir));
    let mut last = None;
    for _ in 0..300 {
        if let Ok(AdminResponse::Provision(p)) = fleet.try_call(AdminRequest::ProvisionShow { name: "cloned".into() }).await {
            let done = p.state == ProvisionState::Booting && p.vm_id.is_some();
            last = Some(p);
            if done {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let p = last.expect("the provision after the restart");
    assert_eq!(p.state, ProvisionState::Booting, "{p:?}");
    let vm = p.vm_id.expect("its VM");
    assert_eq!(vms_of(&double, &vm).len(), 1, "exactly one VM carries the provision: {:?}", double.vms());
    assert_eq!(double.vms().len(), 1, "and no other VM was left: {:?}", double.vms().iter().map(|v| v.0).collect::<Vec<_>>());
}

/// `destroy --keep-volumes` on a provider that cannot keep disks is refused
/// before anything changes; a provision whose VM could not be deleted says
/// so in `provisions list`, and `destroy` deletes it later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destroy_checks_before_it_changes_and_a_vm_left_behind_is_shown() {
    let double = ProxmoxDouble::start(TOKEN).await;
    let fleet = fleet_on_pve(&double, &["pve"]).await;
    let p = booting(&fleet, "keep-me", "pve").await;
    let (ok, _, err) = common::drover_json(&fleet, &["machines", "destroy", "keep-me", "--keep-volumes"]);
    assert!(!ok && err.contains("cannot keep") && err.contains("nothing was changed"), "{err}");
    let now = fleet.call(AdminRequest::ProvisionShow { name: "keep-me".into() }).await.provision().expect("Provision");
    assert_eq!(now.state, ProvisionState::Booting, "unchanged: {now:?}");
    assert_eq!(double.vms().len(), 1);
    assert_eq!(now.vm_id, p.vm_id);

    // A VM whose deletion fails is shown, and deleted by destroy.
    double.fail_next("qmdestroy", "storage 'local-lvm' is not online");
    let (ok, _, err) = common::drover_json(&fleet, &["machines", "destroy", "keep-me"]);
    assert!(!ok && err.contains("was not deleted"), "{err}");
    assert_eq!(double.vms().len(), 1);
    let (ok, _, err) = common::drover_json(&fleet, &["machines", "destroy", "keep-me"]);
    assert!(ok, "destroy again deletes it: {err}");
    assert!(double.vms().is_empty());
}

/// Local QEMU VMs: two coordinators (two fleets) sharing one work
/// directory, ids handed out under a lock and never again: a restart
/// reconciles only its own fleet's VMs, and a destroy of a destroyed
/// provision touches nothing — not the VM made after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_vms_of_another_coordinator_or_a_later_provision_are_never_touched() {
    let _heavy = common::heavy().await;
    let shared = tempfile::tempdir().expect("tempdir");
    let work = shared.path().join("vms");
    let _vms = guard(&work);
    let start = |work: std::path::PathBuf| async move {
        let mut fleet = TestCoordinator::start_with(Options { no_server: true, ..Default::default() }).await;
        fleet.config.providers.push(vm::qemu_provider("local", vm::image_without_agent(), work, Duration::from_secs(300)));
        fleet.serve().await;
        fleet
    };
    let mut a = start(work.clone()).await;
    let mut b = start(work.clone()).await;
    let qa = booting(&a, "qa", "local").await;
    let qb = booting(&b, "qb", "local").await;
    assert_ne!(qa.vm_id, qb.vm_id, "one id each");
    let dir = |p: &ProvisionInfo| work.join(p.vm_id.as_deref().expect("vm"));

    b.stop().await;
    b.serve().await;
    a.stop().await;
    a.serve().await;
    assert!(dir(&qa).is_dir() && dir(&qb).is_dir(), "both VMs survived both restarts");

    let (ok, _, err) = common::drover_json(&a, &["machines", "destroy", "qa"]);
    assert!(ok, "{err}");
    assert!(!dir(&qa).exists());
    let qg = booting(&a, "qg", "local").await;
    assert_ne!(qg.vm_id, qa.vm_id, "an id is never given twice");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_drover"))
        .args(["machines", "destroy", "qa"])
        .env("DROVER_ADMIN_BUNDLE", &a.bundle_path)
        .output()
        .expect("drover");
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("already destroyed"), "{out:?}");
    assert!(dir(&qg).is_dir() && dir(&qb).is_dir(), "qg's and the other coordinator's VMs are untouched");
    let (ok, _, err) = common::drover_json(&b, &["machines", "destroy", "qb"]);
    assert!(ok, "{err}");
    assert!(dir(&qg).is_dir(), "the other fleet's VM is untouched");
    assert!(!dir(&qb).exists());
}
