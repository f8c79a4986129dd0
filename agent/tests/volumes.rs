//! The agent's volume attacher on real loop devices with real mkfs, blkid,
//! wipefs, cryptsetup, sfdisk, mkswap, mount, resize2fs and xfs_growfs (as
//! root): a blank device is formatted and mounted; a device that holds
//! anything else — random bytes, damaged filesystems, LUKS, partition
//! tables, swap, a RAID superblock at the end, one stray byte — is refused
//! without one byte changed, naming what it found; a volume formatted
//! before is never formatted again; a crash between mkfs and mount does not
//! format twice; filesystems grow with their devices (xfs online; ext4
//! online where the kernel allows it, else before the next mount).

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use drover_agent::system::volumes::{Probe, VolumeRecords, Volumes, VOLUMES_FILE};
use drover_protocol::v1::{Filesystem, VolumeMount};
use sha2::{Digest, Sha256};

const MIB: u64 = 1 << 20;

fn require_tools() {
    assert!(nix::unistd::geteuid().is_root(), "volume tests need root (loop devices, mount); run the test suite as root");
    for (tool, package) in [
        ("losetup", "util-linux"),
        ("blkid", "util-linux"),
        ("wipefs", "util-linux"),
        ("mkswap", "util-linux"),
        ("sfdisk", "fdisk"),
        ("cryptsetup", "cryptsetup-bin"),
        ("mkfs.ext4", "e2fsprogs"),
        ("mkfs.xfs", "xfsprogs"),
        ("resize2fs", "e2fsprogs"),
        ("xfs_growfs", "xfsprogs"),
        ("dumpe2fs", "e2fsprogs"),
        ("xfs_db", "xfsprogs"),
        ("e2fsck", "e2fsprogs"),
    ] {
        let found = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"].iter().any(|d| Path::new(d).join(tool).exists());
        assert!(found, "{tool} is missing; install it: apt-get install {package}");
    }
}

/// A machine's root with one volume's device: a sparse file on a loop
/// device, linked where DRBD puts it.
struct Machine {
    dir: tempfile::TempDir,
    loops: Vec<(PathBuf, PathBuf)>,
}

impl Machine {
    fn new() -> Self {
        require_tools();
        Machine { dir: tempfile::tempdir().expect("tempdir"), loops: Vec::new() }
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    fn volumes(&self) -> Volumes {
        let state = self.dir.path().join("state");
        std::fs::create_dir_all(&state).expect("state dir");
        Volumes::new(self.root(), &state, Duration::from_secs(5))
    }

    fn records(&self) -> VolumeRecords {
        self.volumes().load()
    }

    fn write_records(&self, records: &VolumeRecords) {
        let path = self.dir.path().join("state").join(VOLUMES_FILE);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, serde_json::to_vec(records).expect("json")).expect("write");
    }

    /// A blank device of `size` bytes for volume `name`; returns the loop device.
    fn device(&mut self, name: &str, size: u64) -> PathBuf {
        let image = self.dir.path().join(format!("{name}.img"));
        std::fs::File::create(&image).and_then(|f| f.set_len(size)).expect("image");
        let out = Command::new("losetup").args(["-f", "--show"]).arg(&image).output().expect("losetup");
        assert!(out.status.success(), "losetup: {}", String::from_utf8_lossy(&out.stderr));
        let device = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        let link = self.root().join("dev/drbd/by-res").join(name).join("0");
        std::fs::create_dir_all(link.parent().expect("parent")).expect("mkdir");
        std::os::unix::fs::symlink(&device, &link).expect("link");
        self.loops.push((device.clone(), image));
        device
    }

    /// Grows the volume's file and tells the loop device.
    fn grow(&self, device: &Path, size: u64) {
        let image = &self.loops.iter().find(|(d, _)| d == device).expect("known device").1;
        std::fs::OpenOptions::new().write(true).open(image).and_then(|f| f.set_len(size)).expect("grow");
        assert!(Command::new("losetup").arg("-c").arg(device).status().expect("losetup -c").success());
    }

    fn mount_point(&self, path: &str) -> PathBuf {
        self.root().join(path.trim_start_matches('/'))
    }

    fn mounted(&self, path: &str) -> bool {
        let wanted = self.mount_point(path).to_string_lossy().to_string();
        std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo").lines().any(|l| l.split(' ').nth(4) == Some(wanted.as_str()))
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        let root = self.root().to_string_lossy().to_string();
        let mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
            .filter(|m| m.starts_with(&root))
            .collect();
        for m in mounts.iter().rev() {
            let _ = nix::mount::umount2(m.as_str(), nix::mount::MntFlags::MNT_DETACH);
        }
        for (device, _) in &self.loops {
            let _ = Command::new("losetup").arg("-d").arg(device).status();
        }
    }
}

fn volume(name: &str, mount_point: &str, fs: Filesystem) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        device: format!("/dev/drbd/by-res/{name}/0"),
        mount_point: mount_point.into(),
        filesystem: fs,
        size_bytes: 0,
        formatted: false,
        restore_snapshot: None,
        fresh: true,
        overwrite: false,
    }
}

fn hash(device: &Path) -> String {
    let mut f = std::fs::File::open(device).expect("open");
    let mut h = Sha256::new();
    let mut buf = vec![0; 1 << 20];
    loop {
        let n = f.read(&mut buf).expect("read");
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    hex::encode(h.finalize())
}

fn uuid(device: &Path) -> String {
    let out = Command::new("blkid").args(["-p", "-s", "UUID", "-o", "value"]).arg(device).output().expect("blkid");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn mkfs(device: &Path, fs: &str) {
    let status = match fs {
        "xfs" => Command::new("mkfs.xfs").args(["-q", "-K"]).arg(device).status(),
        _ => Command::new("mkfs.ext4").args(["-q", "-E", "nodiscard"]).arg(device).status(),
    };
    assert!(status.expect("mkfs").success());
}

fn fs_total(path: &Path) -> u64 {
    let s = nix::sys::statvfs::statvfs(path).expect("statvfs");
    s.blocks() * s.fragment_size()
}

#[tokio::test]
async fn a_blank_device_is_formatted_once_and_mounted_and_keeps_its_files() {
    let mut m = Machine::new();
    let device = m.device("data", 64 * MIB);
    let v = m.volumes();
    let data = volume("data", "/srv/data", Filesystem::Ext4);
    let summary = v.attach(std::slice::from_ref(&data)).await.expect("attach");
    assert!(summary.contains("1 volume"), "{summary}");
    assert!(m.mounted("/srv/data"));
    assert_eq!(Volumes::probe(&device).await.expect("probe"), Probe::Filesystem("ext4".into()));
    let first = uuid(&device);
    std::fs::write(m.mount_point("/srv/data").join("file"), "kept").expect("write");

    // Again (a second deployment), and after the mount is gone (a reboot):
    // the same filesystem, never formatted again.
    v.attach(std::slice::from_ref(&data)).await.expect("attach again");
    nix::mount::umount2(&m.mount_point("/srv/data"), nix::mount::MntFlags::empty()).expect("umount");
    v.remount().await.expect("mounted again after a reboot");
    assert_eq!(uuid(&device), first, "not formatted again");
    assert_eq!(std::fs::read_to_string(m.mount_point("/srv/data").join("file")).expect("read"), "kept");

    let states = v.states();
    assert_eq!(states.len(), 1);
    assert!(states[0].mounted && states[0].formatted && states[0].used_bytes > 0 && states[0].total_bytes > 0, "{:?}", states[0]);
    assert_eq!(states[0].filesystem.as_deref(), Some("ext4"));

    // An assignment without it unmounts it; the data stays on the device.
    v.attach(&[]).await.expect("detach");
    assert!(!m.mounted("/srv/data"));
    assert_eq!(uuid(&device), first);
}

#[tokio::test]
async fn a_device_that_holds_anything_else_is_refused_with_not_one_byte_changed() {
    let mut m = Machine::new();
    let v = m.volumes();

    // Another filesystem than the one asked for.
    let xfs = m.device("other", 320 * MIB);
    mkfs(&xfs, "xfs");
    let before = hash(&xfs);
    let e = v.attach(&[volume("other", "/srv/other", Filesystem::Ext4)]).await.expect_err("xfs when ext4 is asked");
    assert!(e.contains("volume other") && e.contains("holds a xfs filesystem"), "{e}");
    assert_eq!(hash(&xfs), before, "not one byte changed");

    // A partition table (an MBR with one Linux partition).
    let table = m.device("table", 64 * MIB);
    {
        let mut f = std::fs::OpenOptions::new().write(true).open(&table).expect("open");
        let mut mbr = [0u8; 512];
        mbr[446 + 4] = 0x83;
        mbr[446 + 8..446 + 12].copy_from_slice(&2048u32.to_le_bytes());
        mbr[446 + 12..446 + 16].copy_from_slice(&10_000u32.to_le_bytes());
        mbr[510] = 0x55;
        mbr[511] = 0xAA;
        f.seek(SeekFrom::Start(0)).expect("seek");
        f.write_all(&mbr).expect("write");
        f.sync_all().expect("sync");
    }
    let before = hash(&table);
    let e = v.attach(&[volume("table", "/srv/table", Filesystem::Ext4)]).await.expect_err("a partition table");
    assert!(e.contains("volume table") && e.contains("partition table"), "{e}");
    assert_eq!(hash(&table), before, "not one byte changed");

    // Formatted before (the coordinator says so), its signature wiped since.
    let wiped = m.device("wiped", 64 * MIB);
    let before = hash(&wiped);
    let e = v.attach(&[VolumeMount { formatted: true, ..volume("wiped", "/srv/wiped", Filesystem::Ext4) }]).await.expect_err("formatted before");
    assert!(e.contains("volume wiped") && e.contains("formatted before"), "{e}");
    assert_eq!(hash(&wiped), before, "not one byte changed");
    // ... and the agent's own record says the same without the coordinator.
    let mut records = m.records();
    records.formatted.insert("wiped".into());
    m.write_records(&records);
    let e = v.attach(&[volume("wiped", "/srv/wiped", Filesystem::Ext4)]).await.expect_err("formatted before, by this agent");
    assert!(e.contains("formatted before"), "{e}");
    assert_eq!(hash(&wiped), before);
    for path in ["/srv/other", "/srv/table", "/srv/wiped"] {
        assert!(!m.mounted(path), "{path} is not mounted");
    }
}

#[tokio::test]
async fn an_agent_stopped_between_mkfs_and_mount_mounts_without_formatting_again() {
    let mut m = Machine::new();
    let device = m.device("data", 64 * MIB);
    // What the agent had done when it died: mkfs, and its record saved.
    mkfs(&device, "ext4");
    let mut records = m.records();
    records.formatted.insert("data".into());
    records.assigned = vec![volume("data", "/srv/data", Filesystem::Ext4)];
    m.write_records(&records);
    let made = uuid(&device);
    m.volumes().remount().await.expect("mounts");
    assert!(m.mounted("/srv/data"));
    assert_eq!(uuid(&device), made, "the filesystem mkfs made, not a new one");
}

#[tokio::test]
async fn a_mounted_xfs_volume_grows_online_with_its_file_intact() {
    let mut m = Machine::new();
    let device = m.device("media", 320 * MIB);
    let v = m.volumes();
    let media = volume("media", "/srv/media", Filesystem::Xfs);
    v.attach(std::slice::from_ref(&media)).await.expect("attach");
    let mount = m.mount_point("/srv/media");
    std::fs::write(mount.join("file"), "kept").expect("write");
    let before = fs_total(&mount);
    m.grow(&device, 400 * MIB);
    v.attach(std::slice::from_ref(&media)).await.expect("attach after the volume grew");
    assert!(m.mounted("/srv/media"), "grown without unmounting");
    let after = fs_total(&mount);
    assert!(after > before + 60 * MIB, "xfs grew online: {before} -> {after}");
    assert_eq!(std::fs::read_to_string(mount.join("file")).expect("read"), "kept");
    assert_eq!(v.states()[0].grow_pending, None);
}

#[tokio::test]
async fn an_ext4_volume_grows_online_or_before_its_next_mount() {
    let mut m = Machine::new();
    let device = m.device("db", 64 * MIB);
    let v = m.volumes();
    let db = volume("db", "/srv/db", Filesystem::Ext4);
    v.attach(std::slice::from_ref(&db)).await.expect("attach");
    let mount = m.mount_point("/srv/db");
    std::fs::write(mount.join("file"), "kept").expect("write");
    let before = fs_total(&mount);
    m.grow(&device, 96 * MIB);
    v.attach(std::slice::from_ref(&db)).await.expect("attach after the volume grew");
    assert!(m.mounted("/srv/db"));
    let state = v.states().remove(0);
    if fs_total(&mount) > before + 16 * MIB {
        // The kernel allowed the online resize.
        eprintln!("ext4 grew online");
        assert_eq!(state.grow_pending, None);
    } else {
        // Refused (this sandbox: "Permission denied to resize filesystem"):
        // reported as pending with the reason, and done at the next attach.
        let why = state.grow_pending.expect("the grow is reported pending");
        eprintln!("ext4 online grow refused: {why}");
        assert!(why.contains("Permission denied to resize filesystem") && why.contains("next time"), "{why}");
        v.attach(&[]).await.expect("detach");
        v.attach(std::slice::from_ref(&db)).await.expect("attach again");
        assert!(fs_total(&mount) > before + 16 * MIB, "grown before mounting");
        assert_eq!(v.states()[0].grow_pending, None);
    }
    assert_eq!(std::fs::read_to_string(mount.join("file")).expect("read"), "kept");
}

/// Writes `bytes` at `offset` of the device and syncs.
fn write_at(device: &Path, offset: u64, bytes: &[u8]) {
    let mut f = std::fs::OpenOptions::new().write(true).open(device).expect("open");
    f.seek(SeekFrom::Start(offset)).expect("seek");
    f.write_all(bytes).expect("write");
    f.sync_all().expect("sync");
}

fn run(program: &str, args: &[&str], device: &Path, stdin: Option<&str>) {
    let mut child = Command::new(program)
        .args(args)
        .arg(device)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    if let Some(input) = stdin {
        child.stdin.take().expect("stdin").write_all(input.as_bytes()).expect("stdin");
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// An md 1.0 superblock (RAID 1, two members) where md puts it: 8 KiB
/// before the device's 4 KiB-aligned end, with its checksum.
fn md_superblock(size: u64) -> (u64, Vec<u8>) {
    let offset = (size & !0xfff) - 0x2000;
    let mut sb = vec![0u8; 512];
    let put32 = |sb: &mut Vec<u8>, at: usize, v: u32| sb[at..at + 4].copy_from_slice(&v.to_le_bytes());
    let put64 = |sb: &mut Vec<u8>, at: usize, v: u64| sb[at..at + 8].copy_from_slice(&v.to_le_bytes());
    put32(&mut sb, 0, 0xa92b_4efc);
    put32(&mut sb, 4, 1);
    sb[16..32].copy_from_slice(&[7; 16]);
    sb[32..40].copy_from_slice(b"drover:0");
    put32(&mut sb, 72, 1);
    put64(&mut sb, 80, (size >> 9) - 16);
    put32(&mut sb, 92, 2);
    put64(&mut sb, 136, (size >> 9) - 16);
    put64(&mut sb, 144, offset >> 9);
    sb[168..184].copy_from_slice(&[9; 16]);
    put32(&mut sb, 220, 2);
    sb[258..260].copy_from_slice(&1u16.to_le_bytes());
    let sum: u64 = sb[..260].chunks(4).map(|c| u64::from(u32::from_le_bytes(c.try_into().expect("four bytes")))).sum();
    let csum = ((sum & 0xffff_ffff) + (sum >> 32)) as u32;
    put32(&mut sb, 216, csum);
    (offset, sb)
}

/// Every way a device can hold data without Drover's filesystem on it:
/// none is formatted or changed, and every refusal names what it found.
#[tokio::test]
async fn only_a_device_that_reads_as_never_written_is_formatted() {
    let mut m = Machine::new();
    let v = m.volumes();
    let mut cases: Vec<(&str, PathBuf, &str)> = Vec::new();

    let random = m.device("random", 64 * MIB);
    let mut noise = vec![0u8; (64 * MIB) as usize];
    rand::fill(&mut noise[..]);
    write_at(&random, 0, &noise);
    cases.push(("random", random, "non-zero data at offset"));

    let ext4 = m.device("ext4head", 64 * MIB);
    mkfs(&ext4, "ext4");
    write_at(&ext4, 0, &[0; 4096]);
    cases.push(("ext4head", ext4, "non-zero data at offset"));

    let xfs = m.device("xfshead", 320 * MIB);
    mkfs(&xfs, "xfs");
    write_at(&xfs, 0, &[0; 4096]);
    cases.push(("xfshead", xfs, "non-zero data at offset"));

    let luks = m.device("luks", 64 * MIB);
    run(
        "cryptsetup",
        &["luksFormat", "--type", "luks2", "--batch-mode", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", "--key-file", "-"],
        &luks,
        Some("secret"),
    );
    cases.push(("luks", luks, "crypto_LUKS"));

    let gpt = m.device("gpt", 64 * MIB);
    run("sfdisk", &["--quiet", "--no-reread", "--no-tell-kernel"], &gpt, Some("label: gpt\n,10MiB,L\n"));
    cases.push(("gpt", gpt, "partition table (gpt)"));

    let mbr = m.device("mbr", 64 * MIB);
    run("sfdisk", &["--quiet", "--no-reread", "--no-tell-kernel"], &mbr, Some("label: dos\n,10MiB,L\n"));
    cases.push(("mbr", mbr, "partition table (dos)"));

    let swap = m.device("swap", 64 * MIB);
    run("mkswap", &[], &swap, None);
    cases.push(("swap", swap, "swap"));

    let md = m.device("md", 64 * MIB);
    let (offset, sb) = md_superblock(64 * MIB);
    write_at(&md, offset, &sb);
    cases.push(("md", md, "linux_raid_member"));

    let stray = m.device("stray", 64 * MIB);
    write_at(&stray, 32 * MIB, &[1]);
    cases.push(("stray", stray, "non-zero data at offset 33554432"));

    for (name, device, named) in &cases {
        let before = hash(device);
        let e = v.attach(&[volume(name, &format!("/srv/{name}"), Filesystem::Ext4)]).await.expect_err(name);
        assert!(e.contains(&format!("volume {name}")) && e.contains(named) && e.contains("nothing was written"), "{name}: {e}");
        assert_eq!(&hash(device), &before, "{name}: not one byte changed");
        assert!(!m.mounted(&format!("/srv/{name}")), "{name} is not mounted");
        let state = v.states().into_iter().find(|s| &s.name == name).expect("its state is reported");
        assert!(!state.mounted && !state.formatted && state.error.as_deref().is_some_and(|e| e.contains(named)), "{state:?}");
    }

    // A device that reads as zeroes is formatted when the coordinator
    // vouches for it as new, and refused when it does not.
    let zeroes = m.device("zeroes", 64 * MIB);
    let before = hash(&zeroes);
    let e = v.attach(&[VolumeMount { fresh: false, ..volume("zeroes", "/srv/zeroes", Filesystem::Ext4) }]).await.expect_err("not vouched for");
    assert!(e.contains("does not vouch") && e.contains("allow-format zeroes --yes-overwrite zeroes"), "{e}");
    assert_eq!(hash(&zeroes), before);
    v.attach(&[volume("zeroes", "/srv/zeroes", Filesystem::Ext4)]).await.expect("a fresh, zeroed device is formatted");
    assert!(m.mounted("/srv/zeroes"));
    assert_eq!(Volumes::probe(&zeroes).await.expect("probe"), Probe::Filesystem("ext4".into()));
}

/// An operator's explicit overwrite formats what the rule refused, once.
#[tokio::test]
async fn an_operators_overwrite_formats_a_device_that_holds_data() {
    let mut m = Machine::new();
    let v = m.volumes();
    let device = m.device("old", 64 * MIB);
    write_at(&device, 0, &[0xab; 8192]);
    let refused = v.attach(&[volume("old", "/srv/old", Filesystem::Ext4)]).await.expect_err("refused by the rule");
    assert!(refused.contains("non-zero data at offset 0"), "{refused}");
    let overwrite = VolumeMount { overwrite: true, fresh: false, ..volume("old", "/srv/old", Filesystem::Ext4) };
    v.attach(std::slice::from_ref(&overwrite)).await.expect("formatted over the old bytes");
    assert!(m.mounted("/srv/old"));
    let made = uuid(&device);
    // Asked again (the same assignment after a restart): mounted, not formatted again.
    v.attach(&[]).await.expect("unmount");
    v.attach(std::slice::from_ref(&overwrite)).await.expect("mounted again");
    assert_eq!(uuid(&device), made);
}

/// A volume an apply releases is reported, unmounted, with its format.
#[tokio::test]
async fn a_released_volume_is_reported_with_its_format() {
    let mut m = Machine::new();
    let _device = m.device("data", 64 * MIB);
    let v = m.volumes();
    v.attach(&[volume("data", "/srv/data", Filesystem::Ext4)]).await.expect("attach");
    let attached = v.report_states();
    assert!(attached.len() == 1 && attached[0].mounted && attached[0].formatted, "{attached:?}");
    v.attach(&[]).await.expect("released");
    let released = v.report_states();
    assert!(released.len() == 1 && !released[0].mounted && released[0].formatted && released[0].name == "data", "{released:?}");
    assert_eq!(released[0].mount_point, "/srv/data");
    v.attach(&[]).await.expect("nothing to release");
    assert!(v.report_states().is_empty(), "reported once, by the apply that released it");
}
