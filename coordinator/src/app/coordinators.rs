//! The fleet's coordinators: each announces itself in a shared store (a
//! key under a lease, gone when its process is), the serving one with how
//! many agents it holds; `drover coordinators list` reads them.

use std::sync::Arc;
use std::time::Duration;

use drover_protocol::v1::CoordinatorInfo;
use drover_protocol::WireError;

use super::{now_ms, Coordinator};
use crate::store::{Store, StoreError};

/// How often the serving coordinator says again how many agents it holds.
pub const ANNOUNCE_EVERY: Duration = Duration::from_secs(5);

/// This process as it announces itself.
pub fn presence(address: &str, serving: bool, agents: u64) -> CoordinatorInfo {
    let now = now_ms();
    CoordinatorInfo { address: address.to_string(), pid: std::process::id(), serving, since: now, agents, updated_at: now, lease_left_s: None }
}

/// The announcement's stored form.
pub fn encode(info: &CoordinatorInfo) -> Vec<u8> {
    serde_json::to_vec(info).unwrap_or_default()
}

/// The coordinators, serving one first: those announced in a shared
/// store, or this one alone.
pub fn list(state: &Coordinator) -> Result<Vec<CoordinatorInfo>, WireError> {
    let mut out = match state.store.backend().presences().map_err(StoreError::from)? {
        Some(presences) => presences
            .into_iter()
            .filter_map(|p| {
                let mut info: CoordinatorInfo = serde_json::from_slice(&p.value)
                    .inspect_err(|e| tracing::warn!(name = %p.name, error = %e, "an unreadable coordinator presence skipped"))
                    .ok()?;
                info.lease_left_s = Some(p.ttl_left_s);
                Some(info)
            })
            .collect(),
        None => {
            vec![CoordinatorInfo { since: state.serving_since, ..presence(&state.config.advertise.to_string(), true, state.live.connected_machines() as u64) }]
        }
    };
    out.sort_by(|a, b| b.serving.cmp(&a.serving).then(a.address.cmp(&b.address)));
    Ok(out)
}

/// Says again, every [`ANNOUNCE_EVERY`], that this coordinator serves and
/// how many agents it holds (on a shared store).
pub async fn announce_periodically(state: Arc<Coordinator>) {
    if !shared(&state) {
        return;
    }
    let since = state.serving_since;
    loop {
        let info = CoordinatorInfo { since, ..presence(&state.config.advertise.to_string(), true, state.live.connected_machines() as u64) };
        let store: Store = state.store.clone();
        let announced = tokio::task::spawn_blocking(move || store.backend().reannounce(&encode(&info))).await;
        if let Ok(Err(e)) = announced {
            tracing::warn!(error = %e, "this coordinator's presence could not be renewed in the store");
        }
        tokio::time::sleep(ANNOUNCE_EVERY).await;
    }
}

/// Whether the store is one other coordinators share (etcd), where this
/// one holds a claim that another can take; sled and memory are this
/// process's alone, and nothing here runs for them.
fn shared(state: &Coordinator) -> bool {
    state.store.backend().lost().is_some()
}

/// How often [`guard_claim`] looks at the claim.
const GUARD_EVERY: Duration = Duration::from_millis(500);

/// Watches this coordinator's claim on a shared store. When its lease may
/// have run out (the store cut off or without quorum for the lease's
/// length, so another coordinator may serve now), it stops serving: every
/// connection is closed and new ones are refused, so that agents move to
/// the coordinator that serves instead of being answered from stale state.
/// It then tries to take the claim again: held again (nobody took it, or
/// it lived still), it serves again; taken by another, the store says the
/// claim is lost and `drover serve` steps down.
pub async fn guard_claim(state: Arc<Coordinator>) {
    if !shared(&state) {
        return;
    }
    loop {
        tokio::time::sleep(GUARD_EVERY).await;
        let store = state.store.clone();
        let lapsed = tokio::task::spawn_blocking(move || store.backend().claim_lapsed()).await.unwrap_or(false);
        let suspended = *state.suspended.borrow();
        if lapsed && !suspended {
            tracing::error!("this coordinator could not renew its claim on the fleet's store within the claim's lease (etcd cut off or without quorum): it serves nobody until it holds the claim again");
            state.suspended.send_replace(true);
            state.live.close_all(drover_protocol::ErrorCode::Unavailable, "this coordinator is cut off from the fleet's store; try another");
        }
        if !suspended && !lapsed {
            continue;
        }
        let store = state.store.clone();
        let again = tokio::task::spawn_blocking(move || store.backend().reclaim().map(|()| !store.backend().claim_lapsed())).await;
        if let Ok(Ok(true)) = again {
            tracing::warn!("this coordinator holds its claim on the fleet's store again; serving");
            state.suspended.send_replace(false);
        }
        // Otherwise: not yet renewed, the store still out of reach, or the
        // claim another's (then `drover serve` steps down).
    }
}
