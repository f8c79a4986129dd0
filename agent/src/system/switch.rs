//! Switching the system, the only place the agent runs Nix.
//!
//! - Flake: `nixos-rebuild switch --flake URI#ATTR`; rollback with
//!   `nixos-rebuild switch --rollback`.
//! - Closure: `nix-store --realise PATH` from the given binary caches with
//!   signatures required, `nix-env -p PROFILE --set PATH`, then
//!   `PATH/bin/switch-to-configuration switch`; rollback sets the profile to
//!   the exact store path recorded before the switch and activates it.
//!
//! Where systemd runs, `switch-to-configuration` runs in a transient unit
//! with a fixed name (`systemd-run --unit=drover-switch --wait --pipe`): the
//! switch survives a restart of the agent, and the name is a lock against two
//! switches at once. Exit code 4 means "switched, but some units failed" and
//! is reported as such (the apply treats it as a failed health gate).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncReadExt;

use drover_protocol::v1::SystemSpec;

use crate::config::AgentConfig;
use crate::text::tail;

#[derive(Debug, thiserror::Error)]
pub enum SwitchError {
    #[error("{what} failed (exit {code})")]
    Failed { what: String, code: i32, tail: String },
    #[error("{what} did not finish within {}", humantime::format_duration(*.timeout))]
    Timeout { what: String, timeout: Duration, tail: String },
    #[error("cannot run {what}: {source}")]
    Spawn {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("switched, but some units failed to start")]
    UnitsFailed { tail: String },
    #[error("there is no previous system to roll back to")]
    NoPrevious,
    #[error("the closure is not signed by any of the trusted keys (--trusted-key); refusing it")]
    Unsigned { tail: String },
}

impl SwitchError {
    pub fn tail(&self) -> &str {
        match self {
            SwitchError::Failed { tail, .. }
            | SwitchError::Timeout { tail, .. }
            | SwitchError::UnitsFailed { tail }
            | SwitchError::Unsigned { tail } => tail,
            _ => "",
        }
    }
}

/// Runs a command with a timeout, collecting stdout and stderr together.
async fn run(program: &Path, args: &[String], timeout: Duration, what: &str) -> Result<(i32, String), SwitchError> {
    tracing::debug!(program = %program.display(), ?args, "running");
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| SwitchError::Spawn { what: what.to_string(), source })?;
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let collect = async {
        let mut out = Vec::new();
        let mut err = Vec::new();
        let _ = tokio::join!(stdout.read_to_end(&mut out), stderr.read_to_end(&mut err));
        let status = child.wait().await;
        out.extend_from_slice(&err);
        (status, String::from_utf8_lossy(&out).to_string())
    };
    match tokio::time::timeout(timeout, collect).await {
        Ok((Ok(status), text)) => Ok((status.code().unwrap_or(-1), tail(&text))),
        Ok((Err(source), _)) => Err(SwitchError::Spawn { what: what.to_string(), source }),
        Err(_) => Err(SwitchError::Timeout { what: what.to_string(), timeout, tail: String::new() }),
    }
}

async fn run_ok(program: &Path, args: &[String], timeout: Duration, what: &str) -> Result<String, SwitchError> {
    let (code, text) = run(program, args, timeout, what).await?;
    if code == 0 {
        Ok(text)
    } else {
        Err(SwitchError::Failed { what: what.to_string(), code, tail: text })
    }
}

/// Follows a profile's links to the store path it names (logical, as Nix
/// records it, also for a chroot store).
pub fn resolve_profile(profile: &Path) -> Option<String> {
    let mut path = profile.to_path_buf();
    for _ in 0..8 {
        let target = std::fs::read_link(&path).ok()?;
        let target = if target.is_relative() {
            path.parent().unwrap_or(Path::new("/")).join(target)
        } else {
            target
        };
        if target.starts_with("/nix/store") {
            return Some(target.display().to_string());
        }
        path = target;
    }
    None
}

/// Switching this machine's system: the seam between the apply and Nix.
/// [`NixSwitcher`] is the real one; the apply's tests use a fake.
#[async_trait::async_trait]
pub trait SystemSwitcher: Send + Sync {
    /// The system running now, as the switch for `spec` sees it.
    fn current(&self, spec: &SystemSpec) -> Option<String>;
    /// Fetches what the switch needs, without changing the running system.
    async fn prepare(&self, spec: &SystemSpec) -> Result<String, SwitchError>;
    /// Switches to `spec`; returns the output tail.
    async fn switch(&self, spec: &SystemSpec) -> Result<String, SwitchError>;
    /// Returns to `previous`, the exact system that ran before.
    async fn rollback(&self, spec: &SystemSpec, previous: Option<&str>) -> Result<String, SwitchError>;
}

/// Switches the system with Nix according to the agent's configuration.
pub struct NixSwitcher {
    config: AgentConfig,
}

impl NixSwitcher {
    pub fn new(config: AgentConfig) -> Self {
        NixSwitcher { config }
    }

    fn nix_tool(&self, name: &str) -> PathBuf {
        match &self.config.nix_bin_dir {
            Some(dir) => dir.join(name),
            None => PathBuf::from(name),
        }
    }

    fn store_args(&self) -> Vec<String> {
        match &self.config.nix_store {
            Some(root) => vec!["--store".into(), root.display().to_string()],
            None => vec![],
        }
    }

    /// Where a store path is on this machine's file system.
    fn physical(&self, store_path: &str) -> PathBuf {
        match &self.config.nix_store {
            Some(root) => root.join(store_path.trim_start_matches('/')),
            None => PathBuf::from(store_path),
        }
    }

    async fn activate(&self, store_path: &str) -> Result<String, SwitchError> {
        if let Some(dir) = self.config.system_profile.parent() {
            std::fs::create_dir_all(dir).map_err(|source| SwitchError::Spawn {
                what: format!("creating the profile directory {}", dir.display()),
                source,
            })?;
        }
        let mut args = self.store_args();
        args.extend([
            "-p".into(),
            self.config.system_profile.display().to_string(),
            "--set".into(),
            store_path.to_string(),
        ]);
        let mut text = run_ok(&self.nix_tool("nix-env"), &args, self.config.switch_timeout, "setting the system profile (nix-env --set)").await?;
        let script = self.physical(store_path).join("bin/switch-to-configuration");
        let (program, args) = if Path::new("/run/systemd/system").exists() && self.config.nix_store.is_none() {
            (
                PathBuf::from("systemd-run"),
                vec![
                    "--unit=drover-switch".into(),
                    "--wait".into(),
                    "--pipe".into(),
                    "--collect".into(),
                    "--quiet".into(),
                    script.display().to_string(),
                    "switch".into(),
                ],
            )
        } else {
            (script, vec!["switch".into()])
        };
        let (code, out) = run(&program, &args, self.config.switch_timeout, "switch-to-configuration switch").await?;
        text.push_str(&out);
        match code {
            0 => Ok(tail(&text)),
            4 => Err(SwitchError::UnitsFailed { tail: tail(&text) }),
            code => Err(SwitchError::Failed { what: "switch-to-configuration switch".into(), code, tail: tail(&text) }),
        }
    }
}

#[async_trait::async_trait]
impl SystemSwitcher for NixSwitcher {
    /// The system running now: the profile's store path (closure mode) or
    /// the current-system link (flake mode).
    fn current(&self, spec: &SystemSpec) -> Option<String> {
        match spec {
            SystemSpec::Closure { .. } => resolve_profile(&self.config.system_profile),
            SystemSpec::Flake { .. } => crate::system::health::current_system(&self.config.current_system),
        }
    }

    /// Fetches what the switch needs, without changing the running system.
    async fn prepare(&self, spec: &SystemSpec) -> Result<String, SwitchError> {
        match spec {
            SystemSpec::Flake { .. } => Ok(String::new()),
            SystemSpec::Closure { store_path, substituters, trusted_public_keys } => {
                let mut args = self.store_args();
                args.extend([
                    "--realise".into(),
                    store_path.clone(),
                    "--option".into(),
                    "substituters".into(),
                    substituters.join(" "),
                    "--option".into(),
                    "trusted-public-keys".into(),
                    trusted_public_keys.join(" "),
                    "--option".into(),
                    "require-sigs".into(),
                    "true".into(),
                    "--option".into(),
                    "builders".into(),
                    String::new(),
                    "--max-jobs".into(),
                    "0".into(),
                ]);
                match run_ok(&self.nix_tool("nix-store"), &args, self.config.switch_timeout, "fetching the closure (nix-store --realise)").await {
                    Err(SwitchError::Failed { tail, .. }) if tail.contains("is not signed by any of the keys") => {
                        Err(SwitchError::Unsigned { tail })
                    }
                    other => other,
                }
            }
        }
    }

    /// Switches to `spec`; returns the output tail.
    async fn switch(&self, spec: &SystemSpec) -> Result<String, SwitchError> {
        match spec {
            SystemSpec::Flake { uri, attribute } => {
                let args = vec!["switch".into(), "--flake".into(), format!("{uri}#{attribute}")];
                let (code, text) = run(&self.config.nixos_rebuild, &args, self.config.switch_timeout, "nixos-rebuild switch").await?;
                match code {
                    0 => Ok(text),
                    4 => Err(SwitchError::UnitsFailed { tail: text }),
                    code => Err(SwitchError::Failed { what: "nixos-rebuild switch".into(), code, tail: text }),
                }
            }
            SystemSpec::Closure { store_path, .. } => self.activate(store_path).await,
        }
    }

    /// Returns to the system that ran before: the exact store path recorded
    /// before the switch (closure mode), or nixos-rebuild's rollback.
    async fn rollback(&self, spec: &SystemSpec, previous: Option<&str>) -> Result<String, SwitchError> {
        match spec {
            SystemSpec::Flake { .. } => {
                let args = vec!["switch".into(), "--rollback".into()];
                run_ok(&self.config.nixos_rebuild, &args, self.config.switch_timeout, "nixos-rebuild switch --rollback").await
            }
            SystemSpec::Closure { .. } => {
                let previous = previous.ok_or(SwitchError::NoPrevious)?;
                self.activate(previous).await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_resolve_through_generation_links() {
        let dir = tempfile::tempdir().expect("tempdir");
        let profile = dir.path().join("system");
        std::os::unix::fs::symlink("/nix/store/aaa-system", dir.path().join("system-2-link")).expect("link");
        std::os::unix::fs::symlink("system-2-link", &profile).expect("link");
        assert_eq!(resolve_profile(&profile).as_deref(), Some("/nix/store/aaa-system"));
        assert_eq!(resolve_profile(&dir.path().join("missing")), None);
    }
}
