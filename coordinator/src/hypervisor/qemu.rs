//! Local VMs with `qemu-system-x86_64`: one directory per VM under the
//! provider's work directory, holding its identity (written first, under
//! the work directory's lock, before anything else of the VM exists), its
//! seed (mode 0600, handed to QEMU as a `fw_cfg` file, never on the command
//! line), its system disk, its data disks (sparse image files attached as
//! virtio disks with a serial), its serial console log and QEMU's pid.
//! QEMU runs daemonized, so VMs outlive a coordinator restart; the
//! directory is the record the provider lists, and QEMU's process carries
//! the provision id in its name. Ids come from a counter kept under an
//! exclusive lock (`flock`), so two creates at once never share one and
//! none is ever given twice.
//!
//! The guest boots the image `scripts/guest-image.sh` builds (a kernel and
//! an initramfs with the agent) and reaches the coordinator at 10.0.2.2
//! through QEMU user networking; with `isolate` (the default) QEMU runs in
//! a network namespace of its own and reaches nothing else ([`super::netns`]).

use std::path::{Path, PathBuf};
use std::time::Duration;

use drover_protocol::seed::Seed;

use super::{tail_text, DataDisk, HypervisorError, Owner, Removed, VmIdentity, VmInfo, VmSpec};
use crate::config::QemuProviderConfig;

/// The VM's identity ([`VmIdentity::to_text`]); written first.
const IDENTITY_FILE: &str = "identity";
/// The lock held while an id is given out.
const LOCK_FILE: &str = "ids.lock";
/// The next id to give out.
const COUNTER_FILE: &str = "next-id";
/// What marked a VM before identities: its provision's id alone.
const OLD_TAG_FILE: &str = "provision";
const PID_FILE: &str = "qemu.pid";
const CONSOLE_FILE: &str = "console.log";
const SEED_FILE: &str = "seed";
/// The serial of a VM's own disk (the agent's state lives on it).
pub const SYSTEM_DISK_SERIAL: &str = "drover-system";
/// The first VM id, as on Proxmox.
const FIRST_ID: u32 = 100;

pub struct Qemu {
    config: QemuProviderConfig,
    owner: Owner,
    work_dir: PathBuf,
    /// Where the coordinator listens (what the relays forward to).
    coordinator: std::net::SocketAddr,
    /// The relay of each isolated VM that runs.
    relays: std::sync::Mutex<std::collections::HashMap<String, super::netns::Relay>>,
}

fn io(what: &str, path: &Path, e: std::io::Error) -> HypervisorError {
    HypervisorError::Failed(format!("cannot {what} {}: {e}", path.display()))
}

/// How to run one VM.
#[derive(Debug, Clone)]
pub struct Launch {
    pub qemu: PathBuf,
    /// QEMU's `-name`: the provision's id, so the process says whose it is.
    pub name: String,
    pub accel: String,
    /// A directory with `vmlinux` and `initrd.img`.
    pub image: PathBuf,
    /// The VM's directory: console log and pid file go there.
    pub dir: PathBuf,
    pub cores: u32,
    pub memory_bytes: u64,
    /// Image files and their serials, the system disk first.
    pub disks: Vec<(PathBuf, String)>,
    /// A file handed to the guest as `fw_cfg` `opt/io.drover/seed`.
    pub fw_cfg_seed: Option<PathBuf>,
    /// The SMBIOS type 1 serial (how Proxmox hands over its seed).
    pub smbios_serial: Option<String>,
    /// The address QEMU's DHCP gives the guest (in 10.0.2.0/24; the host
    /// is 10.0.2.2), so that each VM has its own.
    pub guest_address: Option<std::net::Ipv4Addr>,
}

/// The guest address of a VM id: 10.0.2.16 upwards, wrapping after 200.
pub fn guest_address(vm_id: u32) -> std::net::Ipv4Addr {
    std::net::Ipv4Addr::new(10, 0, 2, 16 + (vm_id.saturating_sub(FIRST_ID) % 200) as u8)
}

impl Launch {
    /// The command line; the seed is a file name, never its content.
    pub fn args(&self) -> Vec<String> {
        let dir = &self.dir;
        let mut args: Vec<String> = vec![
            "-name".into(),
            self.name.clone(),
            "-accel".into(),
            self.accel.clone(),
            "-cpu".into(),
            "max".into(),
            "-smp".into(),
            self.cores.to_string(),
            "-m".into(),
            format!("{}M", self.memory_bytes >> 20),
            "-kernel".into(),
            self.image.join("vmlinux").display().to_string(),
            "-initrd".into(),
            self.image.join("initrd.img").display().to_string(),
            "-append".into(),
            "console=ttyS0 quiet panic=-1".into(),
            "-no-reboot".into(),
            "-display".into(),
            "none".into(),
            "-monitor".into(),
            "none".into(),
            "-serial".into(),
            format!("file:{}", dir.join(CONSOLE_FILE).display()),
            "-netdev".into(),
            match self.guest_address {
                Some(a) => format!("user,id=n0,dhcpstart={a}"),
                None => "user,id=n0".into(),
            },
            "-device".into(),
            "virtio-net-pci,netdev=n0,romfile=".into(),
        ];
        for (i, (file, serial)) in self.disks.iter().enumerate() {
            args.push("-drive".into());
            args.push(format!("file={},if=none,id=d{i},format=raw", file.display()));
            args.push("-device".into());
            args.push(format!("virtio-blk-pci,drive=d{i},serial={serial}"));
        }
        if let Some(seed) = &self.fw_cfg_seed {
            args.push("-fw_cfg".into());
            args.push(format!("name=opt/io.drover/seed,file={}", seed.display()));
        }
        if let Some(serial) = &self.smbios_serial {
            args.push("-smbios".into());
            args.push(format!("type=1,serial={}", serial.replace(',', ",,")));
        }
        args.push("-daemonize".into());
        args.push("-pidfile".into());
        args.push(dir.join(PID_FILE).display().to_string());
        args
    }

    fn check_image(&self) -> Result<(), HypervisorError> {
        for file in ["vmlinux", "initrd.img"] {
            let path = self.image.join(file);
            if !path.exists() {
                return Err(HypervisorError::Failed(format!(
                    "the guest image has no {}; build it with `scripts/guest-image.sh {}`",
                    path.display(),
                    self.image.display()
                )));
            }
        }
        Ok(())
    }

    fn command(&self) -> std::process::Command {
        let _ = std::fs::remove_file(self.dir.join(PID_FILE));
        let mut command = std::process::Command::new(&self.qemu);
        command.args(self.args()).stdin(std::process::Stdio::null());
        command
    }

    /// QEMU's parent exits once the daemonized VM is set up: its outcome.
    fn started(&self, output: std::io::Result<std::process::Output>) -> Result<u32, HypervisorError> {
        let output = output.map_err(|e| {
            HypervisorError::Failed(format!(
                "cannot run {}: {e}; install QEMU (`apt-get install qemu-system-x86`) or set the provider's `qemu`",
                self.qemu.display()
            ))
        })?;
        if !output.status.success() {
            return Err(HypervisorError::Failed(format!(
                "{} failed ({}): {}",
                self.qemu.display(),
                output.status,
                tail_text(&String::from_utf8_lossy(&output.stderr), 2000)
            )));
        }
        read_pid(&self.dir).ok_or_else(|| HypervisorError::Failed(format!("QEMU started but wrote no pid file in {}", self.dir.display())))
    }

    /// Starts QEMU daemonized; returns once the VM runs.
    pub async fn spawn(&self) -> Result<u32, HypervisorError> {
        self.check_image()?;
        let output = tokio::process::Command::from(self.command()).output().await;
        self.started(output)
    }

    /// Starts QEMU daemonized in a network namespace of its own, with the
    /// guest side of a relay bound to 127.0.0.1:`port` there.
    pub async fn spawn_isolated(&self, port: u16) -> Result<(u32, std::net::UdpSocket), HypervisorError> {
        self.check_image()?;
        let mut command = self.command();
        let (output, socket) = tokio::task::spawn_blocking(move || {
            super::netns::in_namespace(None, move || {
                let socket = super::netns::bind_guest_side(port)?;
                Ok((command.output(), socket))
            })
        })
        .await
        .map_err(|e| HypervisorError::Failed(format!("the VM's namespace thread failed: {e}")))?
        .map_err(|e| HypervisorError::Failed(format!("cannot make the VM's network namespace: {e} (this needs root)")))?;
        Ok((self.started(output)?, socket))
    }
}

/// The pid of the VM's QEMU when it still runs.
fn read_pid(dir: &Path) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(dir.join(PID_FILE)).ok()?.trim().parse().ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    // A reused pid is not our VM: the command line names the VM's directory.
    let dir_text = dir.display().to_string();
    let ours = cmdline.split(|b| *b == 0).any(|arg| String::from_utf8_lossy(arg).contains(&dir_text));
    ours.then_some(pid)
}

/// Stops the QEMU of the VM in `dir` (SIGTERM, then SIGKILL after 10 s) and
/// waits until it is gone.
pub async fn stop_dir(dir: &Path) -> Result<(), HypervisorError> {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let Some(pid) = read_pid(dir) else { return Ok(()) };
    let pid = Pid::from_raw(pid as i32);
    let _ = kill(pid, Signal::SIGTERM);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while read_pid(dir).is_some() {
        if tokio::time::Instant::now() >= deadline {
            let _ = kill(pid, Signal::SIGKILL);
        }
        if tokio::time::Instant::now() >= deadline + Duration::from_secs(5) {
            return Err(HypervisorError::Failed(format!("QEMU (pid {pid}) of {} does not stop", dir.display())));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// A sparse image file of `bytes`.
fn sparse_file(path: &Path, bytes: u64) -> Result<(), HypervisorError> {
    let file = std::fs::OpenOptions::new().write(true).create_new(true).open(path).map_err(|e| io("create", path, e))?;
    file.set_len(bytes).map_err(|e| io("size", path, e))
}

impl Qemu {
    /// A provider over `work_dir`; isolated VMs reach `coordinator` only.
    pub fn new(config: QemuProviderConfig, work_dir: PathBuf, coordinator: std::net::SocketAddr, owner: Owner) -> Result<Self, HypervisorError> {
        std::fs::create_dir_all(&work_dir).map_err(|e| io("create", &work_dir, e))?;
        Ok(Qemu { config, owner, work_dir, coordinator, relays: Default::default() })
    }

    /// The identity the VM in `dir` carries; `None` when there is no such
    /// directory, `Some(None)` when it carries none.
    fn identity(dir: &Path) -> Option<Option<VmIdentity>> {
        if !dir.is_dir() {
            return None;
        }
        Some(std::fs::read_to_string(dir.join(IDENTITY_FILE)).ok().and_then(|t| VmIdentity::from_text(&t)))
    }

    /// The VM's directory when VM `vm_id` is `provision`'s; `None` when
    /// there is no such VM.
    fn checked(&self, vm_id: &str, provision: &str) -> Result<Option<PathBuf>, HypervisorError> {
        let dir = self.dir(vm_id)?;
        Ok(self.owner.check(vm_id, provision, Self::identity(&dir))?.then_some(dir))
    }

    /// Gives out the next id and makes its directory with the VM's
    /// identity, under the work directory's exclusive lock: blocking.
    fn allocate(work_dir: &Path, identity: &VmIdentity) -> Result<(u32, PathBuf), HypervisorError> {
        use nix::fcntl::{Flock, FlockArg};
        let lock_path = work_dir.join(LOCK_FILE);
        let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&lock_path).map_err(|e| io("open", &lock_path, e))?;
        let _held =
            Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, e)| HypervisorError::Failed(format!("cannot lock {}: {e}", lock_path.display())))?;
        let counter = work_dir.join(COUNTER_FILE);
        let recorded: u32 = std::fs::read_to_string(&counter).ok().and_then(|t| t.trim().parse().ok()).unwrap_or(FIRST_ID);
        let highest = std::fs::read_dir(work_dir)
            .map_err(|e| io("read", work_dir, e))?
            .flatten()
            .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
            .max();
        let mut id = highest.map_or(FIRST_ID, |n| n + 1).max(recorded);
        let dir = loop {
            let dir = work_dir.join(id.to_string());
            match std::fs::create_dir(&dir) {
                Ok(()) => break dir,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => id += 1,
                Err(e) => return Err(io("create", &dir, e)),
            }
        };
        drover_net::fsutil::write_atomic(&dir.join(IDENTITY_FILE), identity.to_text().as_bytes(), 0o644).map_err(|e| io("write", &dir, e))?;
        drover_net::fsutil::write_atomic(&counter, (id + 1).to_string().as_bytes(), 0o644).map_err(|e| io("write", &counter, e))?;
        Ok((id, dir))
    }

    /// The port isolated guests dial at 10.0.2.2 (the coordinator's).
    fn guest_port(&self) -> u16 {
        self.coordinator.port()
    }

    /// Sets the relay of a running isolated VM up again (after a restart
    /// of the coordinator), inside the VM's namespace.
    async fn ensure_relay(&self, vm_id: &str, pid: u32) -> Result<(), HypervisorError> {
        if !self.config.isolate || self.relays.lock().unwrap_or_else(|e| e.into_inner()).contains_key(vm_id) {
            return Ok(());
        }
        let port = self.guest_port();
        let ns = PathBuf::from(format!("/proc/{pid}/ns/net"));
        let socket = tokio::task::spawn_blocking(move || super::netns::in_namespace(Some(ns), move || super::netns::bind_guest_side(port)))
            .await
            .map_err(|e| HypervisorError::Failed(e.to_string()))?
            .map_err(|e| HypervisorError::Failed(format!("cannot enter VM {vm_id}'s network namespace: {e}")))?;
        self.attach_relay(vm_id, socket)
    }

    fn attach_relay(&self, vm_id: &str, socket: std::net::UdpSocket) -> Result<(), HypervisorError> {
        let relay = super::netns::relay(socket, self.coordinator).map_err(|e| HypervisorError::Failed(format!("cannot relay VM {vm_id}: {e}")))?;
        self.relays.lock().unwrap_or_else(|e| e.into_inner()).insert(vm_id.to_string(), relay);
        Ok(())
    }

    fn drop_relay(&self, vm_id: &str) {
        self.relays.lock().unwrap_or_else(|e| e.into_inner()).remove(vm_id);
    }

    fn dir(&self, vm_id: &str) -> Result<PathBuf, HypervisorError> {
        if vm_id.is_empty() || !vm_id.bytes().all(|b| b.is_ascii_digit()) {
            return Err(HypervisorError::NotFound(vm_id.to_string()));
        }
        Ok(self.work_dir.join(vm_id))
    }

    fn vm_dirs(&self) -> Result<Vec<(String, PathBuf)>, HypervisorError> {
        let mut out = Vec::new();
        let entries = std::fs::read_dir(&self.work_dir).map_err(|e| io("read", &self.work_dir, e))?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            if !name.is_empty() && name.bytes().all(|b| b.is_ascii_digit()) && entry.path().is_dir() {
                out.push((name, entry.path()));
            }
        }
        out.sort_by_key(|(id, _)| id.parse::<u64>().unwrap_or(0));
        Ok(out)
    }

    fn launch(&self, dir: &Path, provision: &str, cores: u32, memory_bytes: u64, disks: Vec<(PathBuf, String)>) -> Launch {
        Launch {
            qemu: self.config.qemu.clone(),
            name: format!("drover-{provision}"),
            accel: self.config.accel.clone(),
            image: self.config.image.clone(),
            dir: dir.to_path_buf(),
            cores,
            memory_bytes,
            disks,
            fw_cfg_seed: Some(dir.join(SEED_FILE)),
            smbios_serial: None,
            guest_address: dir.file_name().and_then(|n| n.to_str()).and_then(|n| n.parse().ok()).map(guest_address),
        }
    }

    fn data_disk_file(dir: &Path, serial: &str) -> PathBuf {
        dir.join(format!("{serial}.img"))
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Shape {
    cores: u32,
    memory_bytes: u64,
    serials: Vec<String>,
}

#[async_trait::async_trait]
impl super::Hypervisor for Qemu {
    fn kind(&self) -> &'static str {
        "qemu"
    }

    fn owner(&self) -> &Owner {
        &self.owner
    }

    fn keeps_disks(&self) -> bool {
        true
    }

    fn check(&self, _spec: &VmSpec, _seed: &Seed) -> Result<(), HypervisorError> {
        Ok(())
    }

    async fn create(&self, spec: &VmSpec, seed: &Seed) -> Result<String, HypervisorError> {
        let existing = self.list().await?;
        if existing.len() >= self.config.max_vms as usize {
            return Err(HypervisorError::Full(format!(
                "provider {} holds {} VMs, its max_vms; destroy one or raise max_vms",
                self.config.name,
                existing.len()
            )));
        }
        let work_dir = self.work_dir.clone();
        let identity = self.owner.identity(&spec.provision);
        let (id, dir) = tokio::task::spawn_blocking(move || Self::allocate(&work_dir, &identity))
            .await
            .map_err(|e| HypervisorError::Failed(format!("allocating a VM id failed: {e}")))??;
        let vm_id = id.to_string();
        let made = (|| {
            drover_net::fsutil::write_atomic(&dir.join(SEED_FILE), seed.encode('\n').as_bytes(), 0o600).map_err(|e| io("write", &dir.join(SEED_FILE), e))?;
            sparse_file(&dir.join("system.img"), spec.disk_bytes)?;
            for DataDisk { serial, size_bytes } in &spec.disks {
                sparse_file(&Self::data_disk_file(&dir, serial), *size_bytes)?;
            }
            let shape = Shape { cores: spec.cores, memory_bytes: spec.memory_bytes, serials: spec.disks.iter().map(|d| d.serial.clone()).collect() };
            let shape = serde_json::to_vec(&shape).map_err(|e| HypervisorError::Failed(e.to_string()))?;
            drover_net::fsutil::write_atomic(&dir.join("shape.json"), &shape, 0o644).map_err(|e| io("write", &dir, e))
        })();
        if let Err(e) = made {
            // This call's own VM, just made: its directory goes.
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e);
        }
        Ok(vm_id)
    }

    async fn start(&self, vm_id: &str, provision: &str) -> Result<(), HypervisorError> {
        let dir = self.checked(vm_id, provision)?.ok_or_else(|| HypervisorError::NotFound(vm_id.to_string()))?;
        if let Some(pid) = read_pid(&dir) {
            return self.ensure_relay(vm_id, pid).await;
        }
        let shape: Shape = std::fs::read(dir.join("shape.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| HypervisorError::NotFound(vm_id.to_string()))?;
        let mut disks = vec![(dir.join("system.img"), SYSTEM_DISK_SERIAL.to_string())];
        disks.extend(shape.serials.iter().map(|s| (Self::data_disk_file(&dir, s), s.clone())));
        let launch = self.launch(&dir, provision, shape.cores, shape.memory_bytes, disks);
        if self.config.isolate {
            let (_, socket) = launch.spawn_isolated(self.guest_port()).await?;
            self.attach_relay(vm_id, socket)?;
        } else {
            launch.spawn().await?;
        }
        Ok(())
    }

    async fn stop(&self, vm_id: &str, provision: &str) -> Result<(), HypervisorError> {
        let Some(dir) = self.checked(vm_id, provision)? else { return Ok(()) };
        stop_dir(&dir).await?;
        self.drop_relay(vm_id);
        Ok(())
    }

    async fn delete(&self, vm_id: &str, provision: &str, keep_disks: bool) -> Result<Removed, HypervisorError> {
        let Some(dir) = self.checked(vm_id, provision)? else { return Ok(Removed::Gone) };
        stop_dir(&dir).await?;
        self.drop_relay(vm_id);
        if keep_disks {
            let kept = self.work_dir.join("kept");
            std::fs::create_dir_all(&kept).map_err(|e| io("create", &kept, e))?;
            for entry in std::fs::read_dir(&dir).map_err(|e| io("read", &dir, e))?.flatten() {
                let name = entry.file_name().to_string_lossy().to_string();
                if name.starts_with("vol-") && name.ends_with(".img") {
                    let to = kept.join(format!("{provision}-{name}"));
                    std::fs::rename(entry.path(), &to).map_err(|e| io("keep", &to, e))?;
                    tracing::info!(vm = vm_id, disk = %to.display(), "data disk kept");
                }
            }
        }
        // The identity first: a half-removed directory is nobody's VM, and
        // is left alone.
        let _ = std::fs::remove_file(dir.join(IDENTITY_FILE));
        std::fs::remove_dir_all(&dir).map_err(|e| io("remove", &dir, e))?;
        Ok(Removed::Deleted)
    }

    async fn list(&self) -> Result<Vec<VmInfo>, HypervisorError> {
        let mut out = Vec::new();
        for (vm_id, dir) in self.vm_dirs()? {
            let Some(Some(identity)) = Self::identity(&dir) else {
                // Another tool's directory, or a create cut short between
                // mkdir and its identity: not this fleet's to touch.
                tracing::debug!(vm = %vm_id, dir = %dir.display(), "a VM directory without Drover's identity; left alone");
                continue;
            };
            if !self.owner.owns(&identity) {
                continue;
            }
            let pid = read_pid(&dir);
            if let Some(pid) = pid {
                if let Err(e) = self.ensure_relay(&vm_id, pid).await {
                    tracing::warn!(vm = %vm_id, error = %e, "cannot relay a running VM");
                }
            }
            out.push(VmInfo { vm_id, provision: identity.provision, running: pid.is_some() });
        }
        Ok(out)
    }

    async fn migrate(&self, vm_id: &str, provision: &str) -> Result<bool, HypervisorError> {
        let dir = self.dir(vm_id)?;
        if Self::identity(&dir) != Some(None) {
            return Ok(false);
        }
        let old = std::fs::read_to_string(dir.join(OLD_TAG_FILE)).unwrap_or_default();
        if old.trim() != provision {
            return Ok(false);
        }
        let identity = self.owner.identity(provision);
        drover_net::fsutil::write_atomic(&dir.join(IDENTITY_FILE), identity.to_text().as_bytes(), 0o644).map_err(|e| io("write", &dir, e))?;
        tracing::info!(vm = vm_id, provision, "a VM made before identities now carries this fleet's");
        Ok(true)
    }

    async fn console_tail(&self, vm_id: &str) -> String {
        let Ok(dir) = self.dir(vm_id) else { return String::new() };
        let text = std::fs::read(dir.join(CONSOLE_FILE)).unwrap_or_default();
        tail_text(&String::from_utf8_lossy(&text), 2000)
    }
}
