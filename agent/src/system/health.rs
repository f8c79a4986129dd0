//! Health reports from the running system: sysinfo for load, CPU, memory and
//! disks; `systemctl` for failed units where systemd runs.

use std::path::{Path, PathBuf};
use std::time::Duration;

use drover_protocol::v1::{DiskUsage, HealthReport};

use super::boot::{boot_id, booted_system, current_system, pending_system};

/// Something that can describe the machine's health.
pub trait HealthSource: Send {
    fn collect(&mut self) -> impl std::future::Future<Output = HealthReport> + Send;
}

/// Health of the machine the agent runs on.
pub struct SystemHealth {
    system: sysinfo::System,
    hostname: String,
    current_system: PathBuf,
    volumes: Option<super::volumes::Volumes>,
    /// The boot default (closure mode's profile), to tell a pending system.
    profile: Option<PathBuf>,
    /// The directory of the Nix store, for its free space.
    nix_store: PathBuf,
    boot_id: PathBuf,
}

impl SystemHealth {
    pub fn new(hostname: Option<String>, current_system: PathBuf) -> Self {
        let mut system = sysinfo::System::new();
        system.refresh_cpu_usage();
        SystemHealth {
            system,
            hostname: hostname.unwrap_or_else(system_hostname),
            current_system,
            volumes: None,
            profile: None,
            nix_store: PathBuf::from("/nix/store"),
            boot_id: PathBuf::from(crate::config::BOOT_ID_FILE),
        }
    }

    /// Health of the machine an agent with this configuration runs on,
    /// its volumes included.
    pub fn for_agent(config: &crate::config::AgentConfig) -> Self {
        let mut health = SystemHealth::new(config.hostname.clone(), config.current_system.clone());
        health.volumes = Some(super::volumes::Volumes::new(config.volume_root.clone(), &config.state_dir, config.device_wait));
        health.profile = Some(config.system_profile.clone());
        health.nix_store = match &config.nix_store {
            Some(root) => root.join("nix/store"),
            None => PathBuf::from("/nix/store"),
        };
        health.boot_id = config.boot_id_file.clone();
        health
    }
}

/// Total and free space of the file system holding `dir`.
pub fn disk_usage(dir: &Path) -> Option<DiskUsage> {
    let stat = nix::sys::statvfs::statvfs(dir).ok()?;
    let block = stat.fragment_size() as u64;
    Some(DiskUsage {
        mount_point: dir.display().to_string(),
        total_bytes: (stat.blocks() as u64).saturating_mul(block),
        available_bytes: (stat.blocks_available() as u64).saturating_mul(block),
    })
}

/// The system's hostname, or "localhost".
pub fn system_hostname() -> String {
    sysinfo::System::host_name().unwrap_or_else(|| "localhost".into())
}

/// Failed systemd units, or `None` where systemd is not the init system.
pub async fn failed_units() -> Option<Vec<String>> {
    if !Path::new("/run/systemd/system").exists() {
        return None;
    }
    let output = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::process::Command::new("systemctl").args(["list-units", "--state=failed", "--plain", "--no-legend", "--no-pager"]).kill_on_drop(true).output(),
    )
    .await
    .ok()?
    .ok()?;
    if !output.status.success() {
        return None;
    }
    Some(String::from_utf8_lossy(&output.stdout).lines().filter_map(|l| l.split_whitespace().next().map(str::to_string)).collect())
}

impl HealthSource for SystemHealth {
    async fn collect(&mut self) -> HealthReport {
        self.system.refresh_cpu_usage();
        self.system.refresh_memory();
        let load = sysinfo::System::load_average();
        let disks = sysinfo::Disks::new_with_refreshed_list()
            .iter()
            .filter(|d| d.total_space() > 0)
            .map(|d| DiskUsage { mount_point: d.mount_point().display().to_string(), total_bytes: d.total_space(), available_bytes: d.available_space() })
            .collect();
        HealthReport {
            hostname: self.hostname.clone(),
            uptime_secs: sysinfo::System::uptime(),
            load_average: [load.one, load.five, load.fifteen],
            cpu_count: u32::try_from(self.system.cpus().len()).unwrap_or(u32::MAX),
            cpu_usage_percent: self.system.global_cpu_usage(),
            memory_total_bytes: self.system.total_memory(),
            memory_used_bytes: self.system.used_memory(),
            disks,
            failed_units: failed_units().await,
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            system_path: current_system(&self.current_system),
            volumes: self.volumes.as_ref().map(|v| v.states()).unwrap_or_default(),
            boot_id: boot_id(&self.boot_id),
            booted_system: booted_system(&self.current_system),
            pending_system: self.profile.as_deref().and_then(|p| pending_system(&self.current_system, p)),
            nix_store: disk_usage(&self.nix_store),
            addresses: addresses(),
        }
    }
}

/// The machine's IP addresses, loopback and link-local left out, IPv4
/// first.
fn addresses() -> Vec<String> {
    let networks = sysinfo::Networks::new_with_refreshed_list();
    let mut out: Vec<std::net::IpAddr> = networks
        .values()
        .flat_map(|n| n.ip_networks().iter().map(|i| i.addr))
        .filter(|a| {
            !a.is_loopback()
                && match a {
                    std::net::IpAddr::V4(v4) => !v4.is_link_local(),
                    std::net::IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) != 0xfe80,
                }
        })
        .collect();
    out.sort_by_key(|a| (a.is_ipv6(), *a));
    out.dedup();
    out.iter().map(ToString::to_string).collect()
}

/// A fixed report, for the load generator's many simulated machines.
#[derive(Clone)]
pub struct FixedHealth(pub HealthReport);

impl HealthSource for FixedHealth {
    async fn collect(&mut self) -> HealthReport {
        self.0.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reports_this_machine() {
        let mut h = SystemHealth::new(Some("probe".into()), "/nonexistent/current-system".into());
        let r = h.collect().await;
        assert_eq!(r.hostname, "probe");
        assert!(r.memory_total_bytes > 0);
        assert!(r.cpu_count > 0);
        assert!(r.uptime_secs > 0);
        assert_eq!(r.system_path, None);
        assert!(!r.disks.is_empty(), "at least one disk");
    }

    #[test]
    fn current_system_follows_the_link() {
        let dir = tempfile::tempdir().expect("tempdir");
        let link = dir.path().join("current-system");
        std::os::unix::fs::symlink("/nix/store/abc-nixos-system", &link).expect("symlink");
        assert_eq!(current_system(&link).as_deref(), Some("/nix/store/abc-nixos-system"));
    }
}
