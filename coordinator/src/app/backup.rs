//! `drover backup`: the store's trees at one moment, taken while the
//! coordinator serves (transactions wait while the trees are read), with
//! the state directory's identity files.

use drover_protocol::{ErrorCode, WireError};

use super::{now_ms, Coordinator};

/// The backup file's bytes.
pub async fn write(state: &Coordinator) -> Result<Vec<u8>, WireError> {
    let store = state.store.clone();
    let dir = state.config.state_dir.clone();
    let created_at = now_ms();
    let made = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<u8>> {
        let trees = store.snapshot()?;
        crate::backup::encode(&dir, trees, created_at)
    })
    .await
    .map_err(anyhow::Error::from)
    .and_then(|made| made);
    match made {
        Ok(bytes) => {
            tracing::info!(bytes = bytes.len(), "backup taken");
            Ok(bytes)
        }
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "backup failed");
            Err(WireError::new(ErrorCode::Internal, "the backup failed; the coordinator's log says why"))
        }
    }
}
