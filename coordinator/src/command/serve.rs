//! `drover serve`: runs the coordinator until SIGINT or SIGTERM.

use anyhow::{Context, Result};
use tokio::signal::unix::{signal, SignalKind};

use crate::config::Config;
use crate::server;

/// Raises the soft limit on open files to the hard one (systemd's default
/// soft limit is 1,024), so that bursts of metrics scrapes and calls to
/// external systems never make the store's own files fail to open.
fn raise_file_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => tracing::debug!(from = soft, to = hard, "open-file limit raised"),
            Err(e) => tracing::warn!(error = %e, soft, hard, "the open-file limit could not be raised"),
        },
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "the open-file limit could not be read"),
    }
}

pub async fn run(config: Config, standby: bool) -> Result<()> {
    raise_file_limit();
    let patience = standby.then_some(std::time::Duration::MAX);
    let coordinator = std::sync::Arc::new(tokio::task::spawn_blocking(move || crate::wiring::coordinator_waiting(config, patience)).await??);
    let handle = server::start(coordinator).await?;
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
    handle.shutdown().await;
    Ok(())
}
