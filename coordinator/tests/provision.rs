//! Provisioning with real VMs: local QEMU guests booted from the image
//! `scripts/guest-image.sh` builds, enrolling from their seeds; the Proxmox
//! client against the Proxmox double, whose `start` boots a real VM too.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::{vm, Options, TestCoordinator};
use drover_coordinator::config::{ProviderConfig, ProxmoxProviderConfig};
use drover_coordinator::hypervisor::proxmox::Proxmox;
use drover_coordinator::hypervisor::qemu::{Launch, Qemu};
use drover_coordinator::hypervisor::{DataDisk, Hypervisor, HypervisorError, VmSpec};
use drover_protocol::seed::{CaPin, Seed};
use drover_protocol::v1::{AdminRequest, AdminResponse, MachineStatus, ProvisionInfo, ProvisionState, Secret};
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
    let AdminResponse::Provisions(all) = fleet.call(AdminRequest::Provisions).await else { panic!("expected provisions") };
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
        let info: ProvisionInfo = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{name}: {e}; stderr {}", String::from_utf8_lossy(&out.stderr)));
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
        &["deploy", "--selector", "role=vmtest", "--flake", "path:/etc/fleet#web", "--secret", &secret_arg, "--fact", "tier=web", "--check", &check, "--check", "file:/run/drover/facts.json", "--health-deadline", "30s", "--wait"],
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
    let (ok, _, stderr) = common::drover_json(&fleet, &["deploy", "--machine", &ids[2], "--flake", "path:/etc/fleet#web", "--check", &unreachable, "--health-deadline", "3s", "--wait"]);
    assert!(!ok, "an isolated guest reached a host service: {stderr}");
    // A wrong digest fails: the check reads the file, it does not only
    // find it.
    let wrong = format!("file:/run/drover/secrets/db-password#sha256={}", "0".repeat(64));
    let (ok, _, _) = common::drover_json(&fleet, &["deploy", "--machine", &ids[1], "--flake", "path:/etc/fleet#web", "--check", &wrong, "--health-deadline", "3s", "--wait"]);
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

fn spec(provision: &str) -> VmSpec {
    VmSpec {
        provision: provision.into(),
        name: "web-1".into(),
        template: None,
        cores: 2,
        memory_bytes: 1 << 30,
        disk_bytes: 2 << 30,
        disks: vec![DataDisk { serial: "vol-data".into(), size_bytes: 1 << 30 }],
    }
}

fn seed() -> Seed {
    Seed {
        coordinator: "10.0.2.2:7443".into(),
        server_name: "localhost".into(),
        ca: CaPin::Sha256([3; 32]),
        token: Secret::new(format!("drt_{}", "ef".repeat(32))),
        name: "web-1".into(),
    }
}

/// What every hypervisor does: a VM made is listed with its tag and not
/// running, started runs, stopped does not, deleted is gone, and deleting
/// it again is no error.
async fn hypervisor_contract(hv: &dyn Hypervisor) {
    assert!(hv.list().await.expect("list").is_empty());
    let id = hv.create(&spec("p-00000000c1"), &seed()).await.expect("create");
    let listed = hv.list().await.expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!((listed[0].vm_id.as_str(), listed[0].provision.as_str(), listed[0].running), (id.as_str(), "p-00000000c1", false));
    hv.start(&id).await.expect("start");
    hv.start(&id).await.expect("starting a running VM is no error");
    assert!(hv.list().await.expect("list")[0].running, "{}: started", hv.kind());
    hv.stop(&id).await.expect("stop");
    assert!(!hv.list().await.expect("list")[0].running, "{}: stopped", hv.kind());
    hv.delete(&id, false).await.expect("delete");
    assert!(hv.list().await.expect("list").is_empty(), "{}: deleted", hv.kind());
    hv.delete(&id, false).await.expect("deleting again is no error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hypervisor_contract_holds_for_local_qemu_and_proxmox() {
    let dir = tempfile::tempdir().expect("tempdir");
    let _vms = guard(dir.path());
    let ProviderConfig::Qemu(q) = vm::qemu_provider("local", vm::image_without_agent(), dir.path().join("vms"), Duration::from_secs(60)) else { unreachable!() };
    let qemu = Qemu::new(q, dir.path().join("vms"), "127.0.0.1:9".parse().expect("addr")).expect("qemu provider");
    hypervisor_contract(&qemu).await;

    let double = ProxmoxDouble::start(TOKEN).await;
    let proxmox = Proxmox::new(proxmox_config(&double, dir.path(), TOKEN)).expect("client");
    hypervisor_contract(&proxmox).await;
}

/// The Proxmox client against the double: the request sequence and bodies,
/// the token, a lock answer retried, a failed task's exit status in the
/// error, a wrong token refused with a clear error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxmox_client_follows_the_api_retries_locks_and_reports_failed_tasks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let double = ProxmoxDouble::start(TOKEN).await;
    let client = Proxmox::new(proxmox_config(&double, dir.path(), TOKEN)).expect("client");
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
    assert_eq!(config.get("tags").map(String::as_str), Some("drover;p-00000000a1"));
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
    let err = client.start(&id).await.expect_err("a failed start task");
    let text = err.to_string();
    assert!(text.contains("start failed: QEMU exited with code 1") && text.contains("TASK ERROR"), "{text}");
    client.delete(&id, false).await.expect("delete");
    assert!(double.vms().is_empty());
    let err = client.delete("100", true).await.expect_err("keeping disks is refused on Proxmox");
    assert!(err.to_string().contains("qm disk move"), "{err}");

    // A wrong token: refused, and the error says which file to fix.
    let other = dir.path().join("other");
    std::fs::create_dir(&other).expect("dir");
    let wrong = Proxmox::new(proxmox_config(&double, &other, "root@pam!drover=wrong")).expect("client");
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
}

/// End to end through the Proxmox client: the double's start boots the
/// clone as a real QEMU VM with the SMBIOS serial Proxmox would give it;
/// the agent reads its seed there, fetches the fleet CA pinned by its
/// digest, and enrolls as the provision's machine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provision_through_proxmox_boots_a_real_vm_that_enrolls_with_a_pinned_ca() {
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
