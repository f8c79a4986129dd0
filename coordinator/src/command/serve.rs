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

/// How long a coordinator that was fenced waits for its connections
/// and tasks to end.
const STEP_DOWN_PATIENCE: std::time::Duration = std::time::Duration::from_secs(5);

pub async fn run(config: Config, standby: bool) -> Result<()> {
    raise_file_limit();
    if standby {
        tracing::warn!("--standby is no longer needed: every coordinator of an etcd store serves, and one of them leads");
    }
    let coordinator = std::sync::Arc::new(tokio::task::spawn_blocking(move || crate::wiring::coordinator(config)).await??);
    let lost = coordinator.store.backend().lost();
    let handle = server::start(coordinator).await?;
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let stepped_down = async {
        match lost {
            Some(mut lost) => {
                if lost.wait_for(|l| *l).await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
            None => std::future::pending().await,
        }
    };
    let mut step_down = false;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
        _ = stepped_down => step_down = true,
    }
    tracing::info!("shutting down");
    if step_down {
        // Whatever its connections and tasks are doing, a coordinator that
        // was fenced must not linger.
        if tokio::time::timeout(STEP_DOWN_PATIENCE, handle.shutdown()).await.is_err() {
            tracing::warn!("connections and tasks did not end within {STEP_DOWN_PATIENCE:?}; stepping down without them");
        }
    } else {
        handle.shutdown().await;
    }
    tracing::info!("shut down");
    if step_down {
        anyhow::bail!("this coordinator's lease on the fleet's store ran out while it was paused or cut off, and another coordinator took over what it held: it stepped down; start it again to serve again");
    }
    Ok(())
}
