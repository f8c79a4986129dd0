//! The coordinator's own Nix, for what it can tell about closures without
//! changing anything: `nix store diff-closures` between two systems that
//! its store holds (a dry run's package-level diff). [`Nix`] is the seam;
//! [`NixCli`] runs the real program.

use std::path::Path;
use std::time::Duration;

/// How long a diff may take.
const DIFF_TIMEOUT: Duration = Duration::from_secs(60);

/// What the coordinator asks of Nix.
#[async_trait::async_trait]
pub trait Nix: Send + Sync {
    /// The package-level difference between two closures (versions
    /// changed, size deltas), or `None` where this machine's Nix store
    /// lacks either of them or Nix cannot run.
    async fn diff_closures(&self, before: &str, after: &str) -> Option<String>;
}

/// The `nix` program on this machine.
pub struct NixCli;

#[async_trait::async_trait]
impl Nix for NixCli {
    async fn diff_closures(&self, before: &str, after: &str) -> Option<String> {
        diff_closures(before, after).await
    }
}

async fn diff_closures(before: &str, after: &str) -> Option<String> {
    if !Path::new(before).exists() || !Path::new(after).exists() {
        return None;
    }
    let run = tokio::process::Command::new("nix")
        .args(["--extra-experimental-features", "nix-command", "store", "diff-closures", before, after])
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(DIFF_TIMEOUT, run).await {
        Ok(Ok(out)) if out.status.success() => {
            let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
            Some(if text.is_empty() { "(no package-level differences)".into() } else { text })
        }
        Ok(Ok(out)) => {
            tracing::debug!(stderr = %String::from_utf8_lossy(&out.stderr), "nix store diff-closures failed");
            None
        }
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "nix is not available for closure diffs");
            None
        }
        Err(_) => None,
    }
}
