//! Real VMs for tests: the guest image built once per test run by
//! `scripts/guest-image.sh` (with the agent, and without it), and a local
//! QEMU provider for a test coordinator.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use drover_coordinator::config::{ProviderConfig, QemuProviderConfig};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace").to_path_buf()
}

/// Fails with how to install QEMU when it is missing.
pub fn require_qemu() {
    let found = std::process::Command::new("qemu-system-x86_64").arg("--version").output().is_ok_and(|o| o.status.success());
    assert!(found, "qemu-system-x86_64 is missing: install it with `apt-get install qemu-system-x86` (scripts/test.sh does)");
}

fn build(out: &Path, with_agent: bool) {
    require_qemu();
    let root = root();
    let mut args: Vec<String> = Vec::new();
    if with_agent {
        // The agent binary of this workspace (`cargo build --workspace`,
        // as scripts/test.sh runs before the tests).
        let agent = root.join("target/debug/drover-agent");
        assert!(agent.exists(), "{} is missing: run `cargo build --bin drover-agent` first (scripts/test.sh does)", agent.display());
        args.extend(["--agent".into(), agent.display().to_string()]);
    } else {
        args.push("--without-agent".into());
    }
    args.push(out.display().to_string());
    let output = std::process::Command::new(root.join("scripts/guest-image.sh")).args(&args).output().expect("run scripts/guest-image.sh");
    assert!(
        output.status.success(),
        "scripts/guest-image.sh failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The guest image with the agent (built once per test binary run).
pub fn image() -> PathBuf {
    static IMAGE: OnceLock<PathBuf> = OnceLock::new();
    IMAGE
        .get_or_init(|| {
            let out = root().join("target/guest-image-test");
            build(&out, true);
            out
        })
        .clone()
}

/// A guest image whose VMs boot but never enroll.
pub fn image_without_agent() -> PathBuf {
    static IMAGE: OnceLock<PathBuf> = OnceLock::new();
    IMAGE
        .get_or_init(|| {
            let out = root().join("target/guest-image-test-no-agent");
            build(&out, false);
            out
        })
        .clone()
}

/// A local QEMU provider called `name` over `image`, its VMs in `work_dir`.
pub fn qemu_provider(name: &str, image: PathBuf, work_dir: PathBuf, boot_timeout: std::time::Duration) -> ProviderConfig {
    ProviderConfig::Qemu(QemuProviderConfig {
        name: name.into(),
        image,
        work_dir: Some(work_dir),
        max_vms: 4,
        accel: "tcg".into(),
        isolate: true,
        qemu: "qemu-system-x86_64".into(),
        guest_coordinator: None,
        cores: 1,
        memory_mib: 256,
        disk_mib: 128,
        boot_timeout,
    })
}

/// VM directories (with a provision tag) under a QEMU provider's work dir.
pub fn vm_dirs(work_dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(work_dir) else { return vec![] };
    let mut dirs: Vec<PathBuf> = entries.flatten().map(|e| e.path()).filter(|p| p.join("identity").exists()).collect();
    dirs.sort();
    dirs
}

/// Whether any QEMU process runs a VM of `work_dir`.
pub fn qemu_running_in(work_dir: &Path) -> bool {
    let needle = work_dir.display().to_string();
    std::fs::read_dir("/proc").into_iter().flatten().flatten().any(|e| {
        std::fs::read(e.path().join("cmdline")).is_ok_and(|c| {
            let text = String::from_utf8_lossy(&c);
            text.contains("qemu-system") && text.contains(&needle)
        })
    })
}

/// The command line of every process (`/proc/*/cmdline`), joined.
pub fn every_command_line() -> String {
    let mut all = String::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        if let Ok(c) = std::fs::read(entry.path().join("cmdline")) {
            all.push_str(&String::from_utf8_lossy(&c).replace('\0', " "));
            all.push('\n');
        }
    }
    all
}

/// A file's content read from a copy of a running VM's ext4 disk with
/// debugfs (no mount); e2fsck first replays the journal, which may still
/// hold recent writes.
pub fn read_from_ext4_image(image: &Path, path: &str) -> Vec<u8> {
    let fsck = std::process::Command::new("e2fsck").args(["-fy"]).arg(image).output().expect("run e2fsck (e2fsprogs)");
    assert!(fsck.status.code().is_some_and(|c| c <= 1), "e2fsck on {}: {}", image.display(), String::from_utf8_lossy(&fsck.stdout));
    let out = std::process::Command::new("debugfs").args(["-R", &format!("cat {path}")]).arg(image).output().expect("run debugfs (e2fsprogs)");
    assert!(out.status.success(), "debugfs cannot read {path}: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

/// Kills every QEMU running a VM of its directory when dropped, so that a
/// failed test leaves no VM behind.
pub struct KillVmsOnDrop(pub PathBuf);

impl Drop for KillVmsOnDrop {
    fn drop(&mut self) {
        let needle = self.0.display().to_string();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
            let Ok(c) = std::fs::read(entry.path().join("cmdline")) else { continue };
            let text = String::from_utf8_lossy(&c);
            if text.contains("qemu-system") && text.contains(&needle) {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
            }
        }
    }
}
