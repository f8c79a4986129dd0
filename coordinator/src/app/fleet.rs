//! The last applied fleet: `drover apply` records it when it has carried a
//! plan out; `drover fleet show` and `drover fleet drift` read it.

use drover_protocol::v1::{AdminResponse, AppliedFleet};
use drover_protocol::WireError;

use crate::model::FleetRecord;
use crate::store::provisions::FLEET_KEY;

use super::errors::invalid;
use super::{now_ms, Coordinator};

/// The largest fleet document kept.
const MAX_DOCUMENT: usize = 4 << 20;

pub async fn save(state: &Coordinator, by: &str, document: String) -> Result<AdminResponse, WireError> {
    if document.len() > MAX_DOCUMENT {
        return Err(invalid(format!("a fleet document is at most {MAX_DOCUMENT} bytes")));
    }
    serde_json::from_str::<serde_json::Value>(&document).map_err(|e| invalid(format!("the fleet document is not JSON: {e}")))?;
    let record = FleetRecord { document, applied_at: now_ms(), by: by.to_string() };
    state.store.commit(|tx| tx.put(FLEET_KEY, &record)).await.map_err(WireError::from)?;
    tracing::info!(by, bytes = record.document.len(), "fleet applied");
    Ok(AdminResponse::Done)
}

pub fn show(state: &Coordinator) -> Result<AdminResponse, WireError> {
    Ok(AdminResponse::Fleet(state.store.fleet()?.map(|r| AppliedFleet { document: r.document, applied_at: r.applied_at, by: r.by })))
}
