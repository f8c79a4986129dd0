//! Volumes on this machine: find each device, check what it holds, format
//! it only when it is provably blank, mount it, grow its filesystem to the
//! device, and unmount the volumes an assignment no longer gives. Real
//! tools: `blkid -p` and `wipefs --no-act` (signatures), `mkfs.ext4` /
//! `mkfs.xfs`, `mount(2)` and `umount(2)` through the `nix` crate,
//! `resize2fs` / `xfs_growfs`, `dumpe2fs` / `xfs_db` for filesystem sizes.
//!
//! **A device that holds anything is never formatted**: the blank rule
//! ([`super::blank`]) asks for a volume the coordinator vouches for as
//! fresh, no signature, and a device that reads as zeroes; anything else is
//! refused unchanged, naming what was found. The agent records "formatted"
//! (fsynced) before it mounts, so a crash between mkfs and mount never
//! formats twice, and reports each volume's state with the apply's
//! outcome, so the coordinator records a format durably.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::process::Command;

use drover_protocol::v1::{Filesystem, VolumeMount, VolumeState};

use super::blank::{self, Decision, Inspection};
pub use super::blank::{parse_probe, Probe};
use crate::text::tail;

/// File in the agent's state directory.
pub const VOLUMES_FILE: &str = "volumes.json";

/// Slack below which a filesystem counts as filling its device (alignment,
/// xfs' log rounding).
const GROW_SLACK: u64 = 4 << 20;

/// What this agent knows about its volumes, kept across restarts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeRecords {
    /// Volumes this agent formatted or found formatted.
    pub formatted: BTreeSet<String>,
    /// The volumes of the last assignment, to mount again after a reboot
    /// and to report on.
    pub assigned: Vec<VolumeMount>,
    /// Mount point of each volume this agent mounted.
    pub mounted: BTreeMap<String, String>,
    /// Why a volume's filesystem has not grown to its device yet.
    pub grow_pending: BTreeMap<String, String>,
    /// The generation each volume was last rolled back for (a revert
    /// restores a volume once, even when the agent restarts).
    #[serde(default)]
    pub restored: BTreeMap<String, u64>,
    /// Volumes the last apply unmounted because its assignment no longer
    /// gives them, with their mount points: reported, unmounted, with the
    /// apply's outcome.
    #[serde(default)]
    pub released: BTreeMap<String, String>,
    /// Why a volume of the last assignment was refused.
    #[serde(default)]
    pub refused: BTreeMap<String, String>,
}

/// The most volume states one report carries.
pub const MAX_REPORTED_VOLUMES: usize = 64;

/// Has the coordinator roll a released volume back to the snapshot the
/// generation names.
#[async_trait::async_trait]
pub trait Restorer: Send + Sync {
    async fn restore(&self, generation: u64, name: &str) -> Result<(), String>;
}

/// For attaching without a coordinator (at boot): restores are left to the
/// agent's next apply.
pub struct NoRestorer;

#[async_trait::async_trait]
impl Restorer for NoRestorer {
    async fn restore(&self, _generation: u64, _name: &str) -> Result<(), String> {
        Err("no connection to the coordinator to roll the volume back".into())
    }
}

/// Mounts and unmounts the volumes of assignments.
#[derive(Debug, Clone)]
pub struct Volumes {
    /// Prefix of device paths and mount points ("/" on a real machine; a
    /// directory in tests).
    root: PathBuf,
    records: PathBuf,
    /// How long to wait for a device to appear.
    device_wait: Duration,
}

fn io(what: &str, path: &Path, e: impl std::fmt::Display) -> String {
    format!("{what} {}: {e}", path.display())
}

async fn run(program: &str, args: &[&str]) -> Result<(i32, String, String), String> {
    let output = Command::new(program)
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| format!("cannot run {program}: {e}; install it (Debian: e2fsprogs, xfsprogs, util-linux)"))?;
    Ok((output.status.code().unwrap_or(-1), String::from_utf8_lossy(&output.stdout).into_owned(), String::from_utf8_lossy(&output.stderr).into_owned()))
}

/// Unescapes a path field of `/proc/self/mountinfo` (`\040` for a space).
fn unescape(field: &str) -> String {
    let mut out = String::new();
    let mut chars = field.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' {
            let code: String = chars.by_ref().take(3).collect();
            if let Ok(n) = u8::from_str_radix(&code, 8) {
                out.push(char::from(n));
                continue;
            }
            out.push('\\');
            out.push_str(&code);
        } else {
            out.push(c);
        }
    }
    out
}

/// Whether `mount_point` is a mount of the device `dev` (major:minor).
fn mounted_at(mount_point: &Path, dev: Option<(u64, u64)>) -> Result<Option<(u64, u64)>, String> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").map_err(|e| format!("cannot read /proc/self/mountinfo: {e}"))?;
    let wanted = mount_point.to_string_lossy();
    // The last mount on a path is the visible one.
    let mut found = None;
    for line in text.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        if fields.len() < 5 || unescape(fields[4]) != wanted {
            continue;
        }
        let mm = fields[2].split_once(':').and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)));
        found = mm;
    }
    Ok(match (found, dev) {
        (Some(f), Some(d)) if f != d => None,
        (f, _) => f,
    })
}

fn dev_numbers(device: &Path) -> Result<(u64, u64), String> {
    let meta = std::fs::metadata(device).map_err(|e| io("cannot stat", device, e))?;
    if !meta.file_type().is_block_device() {
        return Err(format!("{} is not a block device", device.display()));
    }
    let rdev = meta.rdev();
    Ok((nix::sys::stat::major(rdev), nix::sys::stat::minor(rdev)))
}

/// The device's size, from sysfs.
fn device_bytes(device: &Path) -> Result<u64, String> {
    let (major, minor) = dev_numbers(device)?;
    let path = format!("/sys/dev/block/{major}:{minor}/size");
    let sectors: u64 = std::fs::read_to_string(&path).map_err(|e| format!("cannot read {path}: {e}"))?.trim().parse().map_err(|e| format!("{path}: {e}"))?;
    Ok(sectors * 512)
}

/// The size of the filesystem on `device`.
async fn filesystem_bytes(device: &Path, fs: Filesystem) -> Result<u64, String> {
    let dev = device.to_string_lossy();
    let number = |text: &str, key: &str| -> Option<u64> {
        text.lines().find_map(|l| {
            let (k, v) = l.split_once(if key.ends_with(':') { ':' } else { '=' })?;
            (k.trim() == key.trim_end_matches(':')).then(|| v.trim().parse().ok()).flatten()
        })
    };
    match fs {
        Filesystem::Ext4 => {
            let (code, out, err) = run("dumpe2fs", &["-h", &dev]).await?;
            if code != 0 {
                return Err(format!("dumpe2fs failed: {}", tail(err.trim())));
            }
            let blocks = number(&out, "Block count:").ok_or("dumpe2fs printed no block count")?;
            let size = number(&out, "Block size:").ok_or("dumpe2fs printed no block size")?;
            Ok(blocks * size)
        }
        Filesystem::Xfs => {
            let (code, out, err) = run("xfs_db", &["-r", "-c", "sb 0", "-c", "print dblocks", "-c", "print blocksize", &dev]).await?;
            if code != 0 {
                return Err(format!("xfs_db failed: {}", tail(err.trim())));
            }
            let blocks = number(&out, "dblocks").ok_or("xfs_db printed no dblocks")?;
            let size = number(&out, "blocksize").ok_or("xfs_db printed no blocksize")?;
            Ok(blocks * size)
        }
    }
}

/// `resize2fs 1.47.0 (5-Feb-2023)`: a tool's version line.
fn is_version_line(line: &str, program: &str) -> bool {
    line.strip_prefix(program).is_some_and(|rest| rest.trim_start().starts_with(|c: char| c.is_ascii_digit()))
}

fn usage(mount_point: &Path) -> (u64, u64) {
    match nix::sys::statvfs::statvfs(mount_point) {
        Ok(s) => {
            let unit = s.fragment_size();
            let total = s.blocks() * unit;
            (total, total.saturating_sub(s.blocks_free() * unit))
        }
        Err(_) => (0, 0),
    }
}

impl Volumes {
    pub fn new(root: PathBuf, state_dir: &Path, device_wait: Duration) -> Self {
        Volumes { root, records: state_dir.join(VOLUMES_FILE), device_wait }
    }

    /// A path of the machine, under the root.
    fn path(&self, absolute: &str) -> PathBuf {
        self.root.join(absolute.trim_start_matches('/'))
    }

    pub fn load(&self) -> VolumeRecords {
        std::fs::read(&self.records).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default()
    }

    /// Saves the records durably (temporary file, fsync, rename).
    fn save(&self, records: &VolumeRecords) -> Result<(), String> {
        let bytes = serde_json::to_vec_pretty(records).map_err(|e| e.to_string())?;
        drover_net::fsutil::write_atomic(&self.records, &bytes, 0o600).map_err(|e| io("cannot write", &self.records, e))
    }

    /// Waits for the device to appear; returns the block device it names.
    async fn device(&self, v: &VolumeMount) -> Result<PathBuf, String> {
        let path = self.path(&v.device);
        let deadline = tokio::time::Instant::now() + self.device_wait;
        loop {
            if let Ok(real) = std::fs::canonicalize(&path) {
                if std::fs::metadata(&real).is_ok_and(|m| m.file_type().is_block_device()) {
                    return Ok(real);
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(format!(
                    "volume {}: its device {} did not appear within {:?}; is the volume available on this machine's node?",
                    v.name, v.device, self.device_wait
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub async fn probe(device: &Path) -> Result<Probe, String> {
        let (code, out, err) = run("blkid", &["-p", "-o", "export", &device.to_string_lossy()]).await?;
        parse_probe(code, &out).map_err(|e| format!("{e}: {}", tail(err.trim())))
    }

    /// Everything the blank rule looks at: blkid's probe, every signature
    /// wipefs finds (it writes nothing with `--no-act`), and the first
    /// non-zero byte of the scan. Reads only.
    pub async fn inspect(device: &Path) -> Result<Inspection, String> {
        let probe = Self::probe(device).await?;
        let dev = device.to_string_lossy();
        let (code, out, err) = run("wipefs", &["--no-act", "--noheadings", "--output", "TYPE,OFFSET", &dev]).await?;
        if code != 0 {
            return Err(format!("wipefs --no-act failed (exit {code}): {}", tail(err.trim())));
        }
        let signatures = blank::parse_signatures(&out);
        let device_bytes = device_bytes(device)?;
        let path = device.to_path_buf();
        let non_zero_at =
            tokio::task::spawn_blocking(move || blank::first_non_zero(&path, device_bytes)).await.map_err(|e| format!("reading the device failed: {e}"))??;
        Ok(Inspection { probe, signatures, non_zero_at, device_bytes })
    }

    async fn format(device: &Path, fs: Filesystem) -> Result<(), String> {
        let dev = device.to_string_lossy();
        // No force flags: mkfs itself refuses a device it finds in use.
        let (program, args): (&str, Vec<&str>) = match fs {
            Filesystem::Ext4 => ("mkfs.ext4", vec!["-q", "-E", "nodiscard", &dev]),
            Filesystem::Xfs => ("mkfs.xfs", vec!["-q", "-K", &dev]),
        };
        let (code, _, err) = run(program, &args).await?;
        if code != 0 {
            return Err(format!("{program} failed (exit {code}): {}", tail(err.trim())));
        }
        Ok(())
    }

    /// Grows the filesystem of an unmounted ext4 device (xfs grows only
    /// mounted).
    async fn grow_offline(device: &Path) -> Result<(), String> {
        let dev = device.to_string_lossy();
        let (code, _, err) = run("e2fsck", &["-f", "-p", &dev]).await?;
        if code >= 4 {
            return Err(format!("e2fsck found errors it could not correct (exit {code}): {}", tail(err.trim())));
        }
        let (code, _, err) = run("resize2fs", &[&dev]).await?;
        if code != 0 {
            return Err(format!("resize2fs failed: {}", tail(err.trim())));
        }
        Ok(())
    }

    /// Grows a mounted filesystem; `Err` is why it could not.
    async fn grow_online(device: &Path, mount_point: &Path, fs: Filesystem) -> Result<(), String> {
        let (program, target) = match fs {
            Filesystem::Ext4 => ("resize2fs", device.to_string_lossy().into_owned()),
            Filesystem::Xfs => ("xfs_growfs", mount_point.to_string_lossy().into_owned()),
        };
        let (code, out, err) = run(program, &[&target]).await?;
        if code != 0 {
            // resize2fs prints its version on stderr and the reason on
            // either stream: keep every line but the version.
            let text: Vec<&str> = err.lines().chain(out.lines()).map(str::trim).filter(|l| !l.is_empty() && !is_version_line(l, program)).collect();
            let text = if text.is_empty() { format!("exit code {code}") } else { text.join("; ") };
            return Err(format!("{program} could not grow it online: {}", tail(&text)));
        }
        Ok(())
    }

    async fn needs_grow(device: &Path, fs: Filesystem) -> Result<bool, String> {
        let device_size = device_bytes(device)?;
        let fs_size = filesystem_bytes(device, fs).await?;
        Ok(device_size > fs_size + GROW_SLACK)
    }

    /// Makes one volume mounted. Nothing is written to a device that holds
    /// anything but the filesystem asked for.
    async fn attach_one(&self, v: &VolumeMount, records: &mut VolumeRecords, restore: Option<(u64, &dyn Restorer)>) -> Result<(), String> {
        if let (Some(snapshot), Some((generation, restorer))) = (&v.restore_snapshot, restore) {
            if records.restored.get(&v.name) != Some(&generation) {
                // Released first: the block storage rolls back only a volume
                // nothing uses.
                let mount_point = records.mounted.get(&v.name).cloned().unwrap_or_else(|| v.mount_point.clone());
                self.unmount(&v.name, &mount_point).await?;
                records.mounted.remove(&v.name);
                self.save(records)?;
                restorer.restore(generation, &v.name).await.map_err(|e| format!("volume {}: rolling it back to snapshot {snapshot} failed: {e}", v.name))?;
                records.restored.insert(v.name.clone(), generation);
                self.save(records)?;
                tracing::info!(volume = %v.name, %snapshot, generation, "volume rolled back to its snapshot");
            }
        }
        let device = self.device(v).await?;
        let mount_point = self.path(&v.mount_point);
        let numbers = dev_numbers(&device)?;
        let already = mounted_at(&mount_point, Some(numbers))?.is_some();
        if !already {
            let found = Self::inspect(&device).await.map_err(|e| format!("volume {}: {e}", v.name))?;
            match blank::decide(v, records.formatted.contains(&v.name), &found) {
                Decision::Mount => {}
                Decision::Format(why) => {
                    if v.overwrite {
                        tracing::warn!(volume = %v.name, device = %device.display(), fs = %v.filesystem, reason = %why, "formatting over what the device holds");
                    } else {
                        tracing::info!(volume = %v.name, device = %device.display(), fs = %v.filesystem, reason = %why, "formatting a blank volume");
                    }
                    Self::format(&device, v.filesystem).await.map_err(|e| format!("volume {}: {e}", v.name))?;
                }
                Decision::Refuse(why) => return Err(why),
            }
            // Recorded before the mount: a crash from here on never formats again.
            if records.formatted.insert(v.name.clone()) {
                self.save(records)?;
            }
            if v.filesystem == Filesystem::Ext4 && Self::needs_grow(&device, v.filesystem).await? {
                Self::grow_offline(&device).await.map_err(|e| format!("volume {}: {e}", v.name))?;
                tracing::info!(volume = %v.name, "filesystem grown before mounting");
            }
            std::fs::create_dir_all(&mount_point).map_err(|e| io("cannot create the mount point", &mount_point, e))?;
            nix::mount::mount(Some(&device), &mount_point, Some(v.filesystem.as_str()), nix::mount::MsFlags::MS_NOATIME, None::<&str>)
                .map_err(|e| format!("volume {}: mounting {} at {} failed: {e}", v.name, device.display(), mount_point.display()))?;
            tracing::info!(volume = %v.name, mount_point = %v.mount_point, "volume mounted");
        } else {
            records.formatted.insert(v.name.clone());
        }
        records.mounted.insert(v.name.clone(), v.mount_point.clone());
        records.grow_pending.remove(&v.name);
        if Self::needs_grow(&device, v.filesystem).await? {
            match Self::grow_online(&device, &mount_point, v.filesystem).await {
                Ok(()) => tracing::info!(volume = %v.name, "filesystem grown online"),
                Err(why) => {
                    tracing::warn!(volume = %v.name, reason = %why, "filesystem grow pending until the next attach");
                    records.grow_pending.insert(v.name.clone(), format!("{why}; it grows the next time the volume is attached, before mounting"));
                }
            }
        }
        Ok(())
    }

    async fn unmount(&self, name: &str, mount_point: &str) -> Result<(), String> {
        let path = self.path(mount_point);
        if mounted_at(&path, None)?.is_none() {
            return Ok(());
        }
        // Under systemd, stopping the mount unit first stops the services
        // that require it (RequiresMountsFor), then unmounts.
        if self.root == Path::new("/") && Path::new("/run/systemd/system").exists() {
            if let Ok((0, unit, _)) = run("systemd-escape", &["-p", "--suffix=mount", mount_point]).await {
                let _ = run("systemctl", &["stop", unit.trim()]).await;
            }
            if mounted_at(&path, None)?.is_none() {
                tracing::info!(volume = name, mount_point, "volume unmounted");
                return Ok(());
            }
        }
        nix::mount::umount2(&path, nix::mount::MntFlags::empty())
            .map_err(|e| format!("volume {name}: unmounting {} failed: {e}; stop what uses it", path.display()))?;
        tracing::info!(volume = name, mount_point, "volume unmounted");
        Ok(())
    }

    /// Mounts every volume of an assignment and unmounts those it no longer
    /// gives; returns a summary, or the first refusal. Snapshots the
    /// assignment names are not restored (see [`Self::attach_for`]).
    pub async fn attach(&self, volumes: &[VolumeMount]) -> Result<String, String> {
        self.attach_with(volumes, None).await
    }

    /// [`Self::attach`] for generation `generation`, rolling volumes back to
    /// the snapshots it names (once) through `restorer`.
    pub async fn attach_for(&self, generation: u64, volumes: &[VolumeMount], restorer: &dyn Restorer) -> Result<String, String> {
        self.attach_with(volumes, Some((generation, restorer))).await
    }

    async fn attach_with(&self, volumes: &[VolumeMount], restore: Option<(u64, &dyn Restorer)>) -> Result<String, String> {
        let mut records = self.load();
        records.released.clear();
        records.refused.clear();
        for (name, mount_point) in records.mounted.clone() {
            if !volumes.iter().any(|v| v.name == name && v.mount_point == mount_point) {
                self.unmount(&name, &mount_point).await?;
                records.mounted.remove(&name);
                records.grow_pending.remove(&name);
                if !volumes.iter().any(|v| v.name == name) {
                    records.released.insert(name.clone(), mount_point.clone());
                }
                self.save(&records)?;
            }
        }
        records.assigned = volumes.to_vec();
        self.save(&records)?;
        for v in volumes {
            let result = self.attach_one(v, &mut records, restore).await;
            if let Err(why) = &result {
                records.refused.insert(v.name.clone(), why.clone());
            }
            self.save(&records)?;
            result?;
        }
        Ok(format!("{} volume(s) mounted", volumes.len()))
    }

    /// Mounts the volumes of the last assignment again (after a reboot).
    pub async fn remount(&self) -> Result<String, String> {
        let assigned = self.load().assigned;
        self.attach(&assigned).await
    }

    /// The state of each volume of the last assignment, for health reports.
    pub fn states(&self) -> Vec<VolumeState> {
        let records = self.load();
        records
            .assigned
            .iter()
            .map(|v| {
                let device = std::fs::canonicalize(self.path(&v.device)).ok();
                let numbers = device.as_deref().and_then(|d| dev_numbers(d).ok());
                let mount_point = self.path(&v.mount_point);
                let mounted = numbers.is_some() && mounted_at(&mount_point, numbers).ok().flatten().is_some();
                let (total_bytes, used_bytes) = if mounted { usage(&mount_point) } else { (0, 0) };
                VolumeState {
                    name: v.name.clone(),
                    mount_point: v.mount_point.clone(),
                    mounted,
                    formatted: records.formatted.contains(&v.name),
                    filesystem: mounted.then(|| v.filesystem.as_str().to_string()),
                    device_bytes: device.as_deref().and_then(|d| device_bytes(d).ok()).unwrap_or(0),
                    total_bytes,
                    used_bytes,
                    grow_pending: records.grow_pending.get(&v.name).cloned(),
                    error: (!mounted).then(|| records.refused.get(&v.name).cloned().unwrap_or_else(|| "not mounted".to_string())),
                }
            })
            .collect()
    }

    /// What an apply's report says of the volumes: those of the assignment
    /// ([`Self::states`]) and those it released, unmounted, with whether
    /// this agent formatted them. At most [`MAX_REPORTED_VOLUMES`].
    pub fn report_states(&self) -> Vec<VolumeState> {
        let records = self.load();
        let mut states = self.states();
        states.extend(records.released.iter().map(|(name, mount_point)| VolumeState {
            name: name.clone(),
            mount_point: mount_point.clone(),
            mounted: false,
            formatted: records.formatted.contains(name),
            filesystem: None,
            device_bytes: 0,
            total_bytes: 0,
            used_bytes: 0,
            grow_pending: None,
            error: Some("released: no longer in the assignment".into()),
        }));
        states.truncate(MAX_REPORTED_VOLUMES);
        states
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_paths_are_unescaped() {
        assert_eq!(unescape("/srv/my\\040data"), "/srv/my data");
        assert_eq!(unescape("/plain"), "/plain");
    }
}
