//! The agent's configuration: a TOML file (`deny_unknown_fields`) whose keys
//! the command-line flags can override. The NixOS module renders the same
//! keys, so this struct is the one source of truth for them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use drover_net::HostPort;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// The coordinator's QUIC address, `host:port` (a DNS name, resolved at
    /// every connection attempt, or an IP address).
    pub coordinator: HostPort,
    /// Other coordinators of the same fleet (on an etcd store every one
    /// serves): when the one in use cannot be reached, the
    /// next is tried, in turn, with the same jittered backoff. Each must
    /// present a certificate for the name verified (`server_name`, or the
    /// host of its own address).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub other_coordinators: Vec<HostPort>,
    /// The name to verify in the coordinator's certificate (default: the
    /// host of `coordinator`).
    #[serde(default)]
    pub server_name: Option<String>,
    /// The fleet CA certificate (PEM); the only root the agent trusts.
    pub ca_file: PathBuf,
    /// The enrollment token, read at first start only (a file outside the
    /// Nix store, e.g. from cloud-init).
    #[serde(default)]
    pub enrollment_token_file: Option<PathBuf>,
    /// Where the agent keeps its key, certificate and records.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// The hostname to report (default: the system's).
    #[serde(default)]
    pub hostname: Option<String>,
    /// First reconnect delay.
    #[serde(with = "humantime_serde", default = "default_backoff_initial")]
    pub backoff_initial: Duration,
    /// Longest reconnect delay.
    #[serde(with = "humantime_serde", default = "default_backoff_max")]
    pub backoff_max: Duration,
    /// How long to wait for the coordinator to answer a connection attempt.
    #[serde(with = "humantime_serde", default = "default_connect_timeout")]
    pub connect_timeout: Duration,
    /// The link to the running system, reported with health.
    #[serde(default = "default_current_system")]
    pub current_system: PathBuf,
    /// Where secrets (`secrets/NAME`) and `facts.json` are written; a tmpfs
    /// on NixOS.
    #[serde(default = "default_runtime_dir")]
    pub runtime_dir: PathBuf,
    /// The longest a system switch may take.
    #[serde(with = "humantime_serde", default = "default_switch_timeout")]
    pub switch_timeout: Duration,
    /// The command run for flake deployments (`nixos-rebuild` on NixOS).
    #[serde(default = "default_nixos_rebuild")]
    pub nixos_rebuild: PathBuf,
    /// Directory holding `nix-store` and `nix-env` (default: found on PATH).
    #[serde(default)]
    pub nix_bin_dir: Option<PathBuf>,
    /// A Nix store to use instead of the system's (`--store`), e.g. a chroot
    /// store root for testing. Nix's binary-cache lookups are then kept in
    /// `state_dir/cache`, not in the user's `~/.cache/nix`.
    #[serde(default)]
    pub nix_store: Option<PathBuf>,
    /// The system profile closures are installed into.
    #[serde(default = "default_system_profile")]
    pub system_profile: PathBuf,
    /// The command asked whether a unit is active (`unit:` checks).
    #[serde(default = "default_systemctl")]
    pub systemctl: PathBuf,
    /// After a switch the agent must reach the coordinator again within this
    /// long, or it returns to the previous system by itself: a configuration
    /// that cuts the machine off undoes itself.
    #[serde(with = "humantime_serde", default = "default_confirm_deadline")]
    pub confirm_deadline: Duration,
    /// Prefix of volume device paths and mount points: `/` on a machine;
    /// a directory for tests.
    #[serde(default = "default_volume_root")]
    pub volume_root: PathBuf,
    /// How long to wait for a volume's device to appear.
    #[serde(with = "humantime_serde", default = "default_device_wait")]
    pub device_wait: Duration,
    /// System profile generations kept after a successful closure
    /// deployment; older ones are deleted and the Nix garbage collector
    /// reclaims them. The running, booted and pending systems and the
    /// rollback target are always kept.
    #[serde(default = "default_keep_generations")]
    pub keep_generations: u32,
    /// Where the kernel gives the current boot's id.
    #[serde(default = "default_boot_id_file")]
    pub boot_id_file: PathBuf,
    /// The command that reboots the machine (a deployment with `--reboot`,
    /// `drover machines reboot`).
    #[serde(default = "default_reboot_command")]
    pub reboot_command: Vec<String>,
    /// How long a reboot may take before it counts as failed.
    #[serde(with = "humantime_serde", default = "default_reboot_deadline")]
    pub reboot_deadline: Duration,
}

fn default_reboot_command() -> Vec<String> {
    vec!["systemctl".into(), "reboot".into()]
}

fn default_reboot_deadline() -> Duration {
    Duration::from_secs(600)
}

fn default_keep_generations() -> u32 {
    5
}

/// Where Linux gives the id of the current boot.
pub const BOOT_ID_FILE: &str = "/proc/sys/kernel/random/boot_id";

fn default_boot_id_file() -> PathBuf {
    PathBuf::from(BOOT_ID_FILE)
}

fn default_volume_root() -> PathBuf {
    PathBuf::from("/")
}

fn default_device_wait() -> Duration {
    Duration::from_secs(60)
}

fn default_confirm_deadline() -> Duration {
    Duration::from_secs(120)
}

fn default_systemctl() -> PathBuf {
    PathBuf::from("systemctl")
}

fn default_runtime_dir() -> PathBuf {
    PathBuf::from("/run/drover")
}

fn default_switch_timeout() -> Duration {
    Duration::from_secs(30 * 60)
}

fn default_nixos_rebuild() -> PathBuf {
    PathBuf::from("nixos-rebuild")
}

fn default_system_profile() -> PathBuf {
    PathBuf::from("/nix/var/nix/profiles/system")
}

pub fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/drover-agent")
}

fn default_backoff_initial() -> Duration {
    Duration::from_millis(500)
}

fn default_backoff_max() -> Duration {
    Duration::from_secs(60)
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_current_system() -> PathBuf {
    PathBuf::from("/run/current-system")
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the agent configuration {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a valid agent configuration: {message}")]
    Parse { path: String, message: String },
    #[error("invalid agent configuration: {0}")]
    Invalid(String),
}

impl AgentConfig {
    /// A configuration with defaults for everything but the essentials.
    pub fn new(coordinator: impl Into<HostPort>, ca_file: PathBuf, state_dir: PathBuf) -> Self {
        AgentConfig {
            coordinator: coordinator.into(),
            other_coordinators: Vec::new(),
            server_name: None,
            ca_file,
            enrollment_token_file: None,
            state_dir,
            hostname: None,
            backoff_initial: default_backoff_initial(),
            backoff_max: default_backoff_max(),
            connect_timeout: default_connect_timeout(),
            current_system: default_current_system(),
            runtime_dir: default_runtime_dir(),
            switch_timeout: default_switch_timeout(),
            nixos_rebuild: default_nixos_rebuild(),
            nix_bin_dir: None,
            nix_store: None,
            system_profile: default_system_profile(),
            systemctl: default_systemctl(),
            confirm_deadline: default_confirm_deadline(),
            volume_root: default_volume_root(),
            device_wait: default_device_wait(),
            keep_generations: default_keep_generations(),
            boot_id_file: default_boot_id_file(),
            reboot_command: default_reboot_command(),
            reboot_deadline: default_reboot_deadline(),
        }
    }

    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.display().to_string(), source })?;
        let config: AgentConfig = toml::from_str(&text).map_err(|e| ConfigError::Parse { path: path.display().to_string(), message: e.to_string() })?;
        config.check()?;
        Ok(config)
    }

    pub fn check(&self) -> Result<(), ConfigError> {
        if self.backoff_initial.is_zero() || self.backoff_initial > self.backoff_max {
            return Err(ConfigError::Invalid("backoff_initial must be above zero and at most backoff_max".into()));
        }
        if self.reboot_command.is_empty() {
            return Err(ConfigError::Invalid("reboot_command must name a program (default: systemctl reboot)".into()));
        }
        if self.keep_generations == 0 {
            return Err(ConfigError::Invalid("keep_generations must be at least 1 (the running system is always kept)".into()));
        }
        if self.connect_timeout.is_zero() {
            return Err(ConfigError::Invalid("connect_timeout must be above zero".into()));
        }
        Ok(())
    }

    /// The name verified in the coordinator's certificate.
    pub fn server_name(&self) -> String {
        self.server_name.clone().unwrap_or_else(|| self.coordinator.host().to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_file_gets_defaults_and_unknown_keys_are_refused() {
        let ok = "coordinator = \"127.0.0.1:7443\"\nca_file = \"/ca.pem\"\n";
        let c: AgentConfig = toml::from_str(ok).expect("parse");
        assert_eq!(c.backoff_max, Duration::from_secs(60));
        assert_eq!(c.server_name(), "127.0.0.1");
        let named: AgentConfig = toml::from_str("coordinator = \"drover.example.net:7443\"\nca_file = \"/ca.pem\"\n").expect("a name");
        assert_eq!(named.server_name(), "drover.example.net");
        let e = toml::from_str::<AgentConfig>("coordinator = \"drover.example.net\"\nca_file = \"/ca.pem\"\n").expect_err("no port");
        assert!(e.to_string().contains("has no port"), "{e}");
        let bad = format!("{ok}colour = \"blue\"\n");
        assert!(toml::from_str::<AgentConfig>(&bad).is_err());
    }
}
