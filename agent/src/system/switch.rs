//! Switching the system, the only place the agent runs Nix.
//!
//! - Flake: `nixos-rebuild GOAL --flake URI#ATTR`; rollback with
//!   `nixos-rebuild switch --rollback` (after `test`, the boot default's
//!   `switch-to-configuration test`).
//! - Closure: `nix-store --realise PATH` from the given binary caches with
//!   signatures required, `nix-env -p PROFILE --set PATH` (goals `switch`
//!   and `boot` only), then `PATH/bin/switch-to-configuration GOAL`;
//!   rollback activates the exact store path recorded before the switch
//!   (setting the profile to it only after `switch`).
//!
//! Goals are `nixos-rebuild`'s: `switch`, `boot`, `test`, `dry-activate`.
//! A `switch` that NixOS' pre-switch checks refuse ("Pre-switch checks
//! failed") is installed as `boot` instead, and the machine reports that a
//! reboot is required; `force_switch` sets `NIXOS_NO_CHECK=1`, which skips
//! those checks. After a successful deployment, profile generations beyond
//! `keep_generations` are deleted (`nix-env --delete-generations`) and the
//! garbage collector reclaims their closures (`nix-store --gc`).
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

use drover_protocol::v1::{SwitchGoal, SystemSpec};

use crate::config::AgentConfig;
use crate::switched::{failed_units, refused_by_pre_switch_checks, BootState, Switched};
use crate::system::boot::resolve_profile;
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
            SwitchError::Failed { tail, .. } | SwitchError::Timeout { tail, .. } | SwitchError::UnitsFailed { tail } | SwitchError::Unsigned { tail } => tail,
            _ => "",
        }
    }
}

/// Runs a command (with `env` added) and a timeout, collecting stdout and
/// stderr together.
async fn run_with(program: &Path, args: &[String], env: &[(&str, &str)], timeout: Duration, what: &str) -> Result<(i32, String), SwitchError> {
    tracing::debug!(program = %program.display(), ?args, "running");
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .envs(env.iter().copied())
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
    run_ok_with(program, args, &[], timeout, what).await
}

async fn run_ok_with(program: &Path, args: &[String], env: &[(&str, &str)], timeout: Duration, what: &str) -> Result<String, SwitchError> {
    let (code, text) = run_with(program, args, env, timeout, what).await?;
    if code == 0 {
        Ok(text)
    } else {
        Err(SwitchError::Failed { what: what.to_string(), code, tail: text })
    }
}

/// Switching this machine's system: the seam between the apply and Nix.
/// [`NixSwitcher`] is the real one; the apply's tests use a fake.
#[async_trait::async_trait]
pub trait SystemSwitcher: Send + Sync {
    /// The system running now, as the switch for `spec` sees it.
    fn current(&self, spec: &SystemSpec) -> Option<String>;
    /// Fetches what the switch needs, without changing the running system.
    async fn prepare(&self, spec: &SystemSpec) -> Result<String, SwitchError>;
    /// Carries `goal` out for `spec` (with NixOS' pre-switch checks
    /// skipped when `force`); says what it did.
    async fn switch(&self, spec: &SystemSpec, goal: SwitchGoal, force: bool) -> Result<Switched, SwitchError>;
    /// Returns to `previous`, the exact system that ran before a switch
    /// made with `goal`.
    async fn rollback(&self, spec: &SystemSpec, previous: Option<&str>, goal: SwitchGoal) -> Result<String, SwitchError>;
    /// After a successful deployment: keeps the newest `keep` system
    /// generations and those running `protect`, deletes the others and has
    /// the garbage collector reclaim them. Returns how many were deleted.
    async fn prune(&self, spec: &SystemSpec, keep: u32, protect: &[String]) -> Result<usize, SwitchError>;
    /// The boot the machine is in: its boot id and booted system.
    fn boot(&self) -> BootState;
    /// The boot default: the system profile's store path.
    fn boot_default(&self) -> Option<String>;
    /// Asks the machine to reboot (returns once the command has run; the
    /// agent may be stopped by it).
    async fn reboot(&self) -> Result<(), SwitchError>;
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

    /// The `XDG_CACHE_HOME` of a Nix command that may download: with a
    /// store of its own (`nix_store`), the agent keeps Nix's binary-cache
    /// lookup cache in its state directory. Agents sharing one user's cache
    /// raced on it: concurrent fetches failed with "constraint failed (in
    /// '…/binary-cache-v6.sqlite')".
    fn fetch_cache_home(&self) -> Option<String> {
        self.config.nix_store.as_ref().map(|_| self.config.state_dir.join("cache").display().to_string())
    }

    /// Where a store path is on this machine's file system.
    fn physical(&self, store_path: &str) -> PathBuf {
        match &self.config.nix_store {
            Some(root) => root.join(store_path.trim_start_matches('/')),
            None => PathBuf::from(store_path),
        }
    }

    /// `nix-env -p PROFILE --set PATH`: the boot default.
    async fn set_profile(&self, store_path: &str) -> Result<String, SwitchError> {
        if let Some(dir) = self.config.system_profile.parent() {
            std::fs::create_dir_all(dir).map_err(|source| SwitchError::Spawn { what: format!("creating the profile directory {}", dir.display()), source })?;
        }
        let mut args = self.store_args();
        args.extend(["-p".into(), self.config.system_profile.display().to_string(), "--set".into(), store_path.to_string()]);
        run_ok(&self.nix_tool("nix-env"), &args, self.config.switch_timeout, "setting the system profile (nix-env --set)").await
    }

    /// `PATH/bin/switch-to-configuration GOAL`, in a fixed-name transient
    /// unit where systemd runs. Returns the exit code and output.
    async fn switch_to_configuration(&self, store_path: &str, goal: SwitchGoal, force: bool) -> Result<(i32, String), SwitchError> {
        let script = self.physical(store_path).join("bin/switch-to-configuration");
        let no_check: &[(&str, &str)] = if force { &[("NIXOS_NO_CHECK", "1")] } else { &[] };
        let (program, args) = if Path::new("/run/systemd/system").exists() && self.config.nix_store.is_none() {
            let mut args: Vec<String> = vec!["--unit=drover-switch".into(), "--wait".into(), "--pipe".into(), "--collect".into(), "--quiet".into()];
            if force {
                args.push("--setenv=NIXOS_NO_CHECK=1".into());
            }
            args.extend([script.display().to_string(), goal.as_str().into()]);
            (PathBuf::from("systemd-run"), args)
        } else {
            (script, vec![goal.as_str().into()])
        };
        run_with(&program, &args, no_check, self.config.switch_timeout, &format!("switch-to-configuration {goal}")).await
    }

    /// Closure mode: the profile for `switch` and `boot`, then the goal; a
    /// `switch` refused by pre-switch checks becomes `boot`.
    async fn activate(&self, store_path: &str, goal: SwitchGoal, force: bool) -> Result<Switched, SwitchError> {
        let mut text = if goal.sets_profile() { self.set_profile(store_path).await? } else { String::new() };
        let (code, out) = self.switch_to_configuration(store_path, goal, force).await?;
        text.push_str(&out);
        judge("switch-to-configuration", goal, force, code, text, || self.switch_to_configuration(store_path, SwitchGoal::Boot, false)).await
    }

    /// The numbered generations of the system profile (`NAME-N-link`),
    /// with the store path each names, oldest first.
    fn generations(&self) -> Vec<(u64, Option<String>)> {
        let profile = &self.config.system_profile;
        let (Some(dir), Some(name)) = (profile.parent(), profile.file_name().and_then(|n| n.to_str())) else {
            return Vec::new();
        };
        let prefix = format!("{name}-");
        let mut found: Vec<(u64, Option<String>)> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| {
                let file = entry.file_name().to_str()?.to_string();
                let number = file.strip_prefix(&prefix)?.strip_suffix("-link")?.parse().ok()?;
                Some((number, resolve_profile(&entry.path())))
            })
            .collect();
        found.sort();
        found
    }
}

/// What a goal's run (`program`, its exit code and output) did. A `switch`
/// that NixOS' pre-switch checks refused is run again as `boot`
/// (`as_boot`).
async fn judge<F>(program: &str, goal: SwitchGoal, force: bool, code: i32, mut text: String, as_boot: impl FnOnce() -> F) -> Result<Switched, SwitchError>
where
    F: std::future::Future<Output = Result<(i32, String), SwitchError>>,
{
    match code {
        0 => Ok(done(goal, tail(&text))),
        4 if goal.activates() => Ok(Switched::UnitsFailed { units: failed_units(&text), tail: tail(&text) }),
        _ if goal == SwitchGoal::Switch && !force && refused_by_pre_switch_checks(&text) => {
            let (code, out) = as_boot().await?;
            text.push_str(&out);
            match code {
                0 => Ok(Switched::Installed { tail: tail(&text), inhibited: true }),
                code => Err(SwitchError::Failed { what: format!("{program} boot"), code, tail: tail(&text) }),
            }
        }
        code => Err(SwitchError::Failed { what: format!("{program} {goal}"), code, tail: tail(&text) }),
    }
}

/// What a goal that exited 0 did.
fn done(goal: SwitchGoal, tail: String) -> Switched {
    match goal {
        SwitchGoal::Switch | SwitchGoal::Test => Switched::Activated { tail },
        SwitchGoal::Boot => Switched::Installed { tail, inhibited: false },
        SwitchGoal::DryActivate => Switched::Reported { tail },
    }
}

#[async_trait::async_trait]
impl SystemSwitcher for NixSwitcher {
    /// The system running now: the profile's store path (closure mode) or
    /// the current-system link (flake mode).
    /// (Where no current-system link exists, as in a chroot store, the
    /// profile stands for it.)
    fn current(&self, spec: &SystemSpec) -> Option<String> {
        let running = crate::system::boot::current_system(&self.config.current_system);
        match spec {
            SystemSpec::Closure { .. } => running.or_else(|| resolve_profile(&self.config.system_profile)),
            SystemSpec::Flake { .. } => running,
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
                let cache_home = self.fetch_cache_home();
                let env: Vec<(&str, &str)> = cache_home.iter().map(|dir| ("XDG_CACHE_HOME", dir.as_str())).collect();
                let what = "fetching the closure (nix-store --realise)";
                match run_ok_with(&self.nix_tool("nix-store"), &args, &env, self.config.switch_timeout, what).await {
                    Err(SwitchError::Failed { tail, .. }) if tail.contains("is not signed by any of the keys") => Err(SwitchError::Unsigned { tail }),
                    other => other,
                }
            }
        }
    }

    async fn switch(&self, spec: &SystemSpec, goal: SwitchGoal, force: bool) -> Result<Switched, SwitchError> {
        match spec {
            SystemSpec::Flake { uri, attribute } => {
                let rebuild = |goal: SwitchGoal| {
                    let args: Vec<String> = vec![goal.as_str().into(), "--flake".into(), format!("{uri}#{attribute}")];
                    let env: &'static [(&'static str, &'static str)] = if force { &[("NIXOS_NO_CHECK", "1")] } else { &[] };
                    async move { run_with(&self.config.nixos_rebuild, &args, env, self.config.switch_timeout, &format!("nixos-rebuild {goal}")).await }
                };
                let (code, text) = rebuild(goal).await?;
                judge("nixos-rebuild", goal, force, code, text, || rebuild(SwitchGoal::Boot)).await
            }
            SystemSpec::Closure { store_path, .. } => self.activate(store_path, goal, force).await,
        }
    }

    /// Returns to the system that ran before: the exact store path recorded
    /// before the switch (closure mode), or nixos-rebuild's rollback. After
    /// `test` the boot default was never changed, so only the activation
    /// is undone.
    async fn rollback(&self, spec: &SystemSpec, previous: Option<&str>, goal: SwitchGoal) -> Result<String, SwitchError> {
        let previous_or_default = || previous.map(str::to_string).or_else(|| resolve_profile(&self.config.system_profile)).ok_or(SwitchError::NoPrevious);
        let how = match (spec, goal) {
            (SystemSpec::Flake { .. }, SwitchGoal::Test) => SwitchGoal::Test,
            (SystemSpec::Flake { .. }, _) => {
                let args = vec!["switch".into(), "--rollback".into()];
                return run_ok(&self.config.nixos_rebuild, &args, self.config.switch_timeout, "nixos-rebuild switch --rollback").await;
            }
            (SystemSpec::Closure { .. }, SwitchGoal::Test) => SwitchGoal::Test,
            (SystemSpec::Closure { .. }, _) => SwitchGoal::Switch,
        };
        let target = if how == SwitchGoal::Test { previous_or_default()? } else { previous.ok_or(SwitchError::NoPrevious)?.to_string() };
        match self.activate(&target, how, false).await? {
            Switched::Activated { tail } => Ok(tail),
            Switched::UnitsFailed { tail, .. } => Err(SwitchError::UnitsFailed { tail }),
            Switched::Installed { tail, .. } | Switched::Reported { tail } => Ok(tail),
        }
    }

    fn boot(&self) -> BootState {
        BootState { boot_id: crate::system::boot::boot_id(&self.config.boot_id_file), booted: crate::system::boot::booted_system(&self.config.current_system) }
    }

    fn boot_default(&self) -> Option<String> {
        resolve_profile(&self.config.system_profile)
    }

    async fn reboot(&self) -> Result<(), SwitchError> {
        let (program, args) = self.config.reboot_command.split_first().ok_or_else(|| SwitchError::Spawn {
            what: "reboot_command".into(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "reboot_command is empty"),
        })?;
        tracing::info!(command = ?self.config.reboot_command, "rebooting");
        run_ok(Path::new(program), args, Duration::from_secs(120), "rebooting (reboot_command)").await.map(drop)
    }

    async fn prune(&self, spec: &SystemSpec, keep: u32, protect: &[String]) -> Result<usize, SwitchError> {
        if !matches!(spec, SystemSpec::Closure { .. }) {
            // nixos-rebuild keeps the profile; its generations are the
            // operator's (nix.gc on NixOS).
            return Ok(0);
        }
        let generations = self.generations();
        let newest_kept = generations.len().saturating_sub(keep as usize);
        let doomed: Vec<String> =
            generations.iter().take(newest_kept).filter(|(_, path)| path.as_ref().is_none_or(|p| !protect.contains(p))).map(|(n, _)| n.to_string()).collect();
        if doomed.is_empty() {
            return Ok(0);
        }
        let mut args = self.store_args();
        args.extend(["-p".into(), self.config.system_profile.display().to_string(), "--delete-generations".into()]);
        args.extend(doomed.iter().cloned());
        run_ok(&self.nix_tool("nix-env"), &args, self.config.switch_timeout, "deleting old system generations (nix-env --delete-generations)").await?;
        let mut gc = self.store_args();
        gc.push("--gc".into());
        run_ok(&self.nix_tool("nix-store"), &gc, self.config.switch_timeout, "collecting garbage (nix-store --gc)").await?;
        Ok(doomed.len())
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

    /// A `nix-store` that prints the cache directory it was given.
    fn recording_nix(dir: &Path) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let bin = dir.join("bin");
        std::fs::create_dir_all(&bin).expect("bin dir");
        let script = bin.join("nix-store");
        std::fs::write(&script, "#!/bin/sh\necho \"cache=${XDG_CACHE_HOME:-unset}\"\n").expect("script");
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        bin
    }

    fn test_config(dir: &Path) -> AgentConfig {
        let coordinator = "127.0.0.1:1".parse::<drover_net::HostPort>().expect("addr");
        let mut config = AgentConfig::new(coordinator, dir.join("ca.pem"), dir.join("state"));
        config.nix_bin_dir = Some(recording_nix(dir));
        config
    }

    fn closure() -> SystemSpec {
        SystemSpec::Closure {
            store_path: "/nix/store/aaa-system".into(),
            substituters: vec!["http://127.0.0.1:1".into()],
            trusted_public_keys: vec!["k:AAAA".into()],
        }
    }

    #[tokio::test]
    async fn an_agent_with_its_own_store_keeps_its_own_binary_cache_lookups() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = test_config(dir.path());
        config.nix_store = Some(dir.path().join("store"));
        let out = NixSwitcher::new(config).prepare(&closure()).await.expect("prepare");
        assert_eq!(out.trim(), format!("cache={}", dir.path().join("state/cache").display()));
    }

    #[tokio::test]
    async fn an_agent_on_the_machines_store_uses_nix_defaults() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = test_config(dir.path());
        config.nix_store = None;
        let out = NixSwitcher::new(config).prepare(&closure()).await.expect("prepare");
        assert!(!out.contains(&dir.path().join("state").display().to_string()), "{out}");
    }
}
