//! The fleet's coordinators on a shared store: each announces itself (a
//! key under its own lease, gone when its process is) with how many agents
//! it holds, and every one serves agents and admins; one leads
//! ([`lead`]) and runs what must happen once. A change another coordinator
//! records reaches this one's agents through a watch on the machines
//! ([`follow_machines`]). `drover coordinators list` reads the
//! announcements.

use std::sync::Arc;
use std::time::Duration;

use drover_protocol::v1::CoordinatorInfo;
use drover_protocol::{ErrorCode, WireError};
use drover_store::{Tree, Watched};

use super::{now_ms, Coordinator};
use crate::model::MachineRecord;
use crate::store::{Store, StoreError};

/// How often a coordinator says again how many agents it holds.
pub const ANNOUNCE_EVERY: Duration = Duration::from_secs(5);

/// How often a coordinator that does not lead tries to.
const CAMPAIGN_EVERY: Duration = Duration::from_secs(1);

/// This process as it announces itself (`leading` is filled in by the
/// reader, from who holds the leader key).
pub fn presence(address: &str, leading: bool, agents: u64) -> CoordinatorInfo {
    let now = now_ms();
    CoordinatorInfo { address: address.to_string(), pid: std::process::id(), leading, since: now, agents, updated_at: now, lease_left_s: None }
}

/// Who this process is, as the leader key and the plans of changes it
/// records in batches name it: its address and pid.
pub fn holder(address: &str) -> String {
    holder_at(address, std::process::id())
}

fn holder_at(address: &str, pid: u32) -> String {
    format!("coordinator {address} (pid {pid})")
}

/// The announcement's stored form.
pub fn encode(info: &CoordinatorInfo) -> Vec<u8> {
    serde_json::to_vec(info).unwrap_or_default()
}

/// The coordinators announced in a shared store (`None` on a store this
/// process alone opens).
fn announced(store: &Store) -> Result<Option<Vec<CoordinatorInfo>>, WireError> {
    let Some(presences) = store.backend().presences().map_err(StoreError::from)? else { return Ok(None) };
    Ok(Some(
        presences
            .into_iter()
            .filter_map(|p| {
                let mut info: CoordinatorInfo = serde_json::from_slice(&p.value)
                    .inspect_err(|e| tracing::warn!(name = %p.name, error = %e, "an unreadable coordinator presence skipped"))
                    .ok()?;
                info.lease_left_s = Some(p.ttl_left_s);
                info.leading = p.leads;
                Some(info)
            })
            .collect(),
    ))
}

/// The coordinators, the leader first: those announced in a shared store,
/// or this one alone.
pub fn list(state: &Coordinator) -> Result<Vec<CoordinatorInfo>, WireError> {
    let mut out = match announced(&state.store)? {
        Some(all) => all,
        None => {
            vec![CoordinatorInfo { since: state.serving_since, ..presence(&state.config.advertise.to_string(), true, state.live.connected_machines() as u64) }]
        }
    };
    out.sort_by(|a, b| b.leading.cmp(&a.leading).then(a.address.cmp(&b.address)));
    Ok(out)
}

/// How liveness is judged now: on a shared store, with the coordinators
/// present (this one always among them); a failure to read them is logged
/// and judged by the reports' age alone.
pub fn liveness(state: &Coordinator) -> crate::registry::Liveness {
    let present = match announced(&state.store) {
        Ok(Some(all)) => {
            let mut names: std::collections::HashSet<String> = all.iter().map(holder_of).collect();
            names.insert(holder(&state.config.advertise.to_string()));
            Some(names)
        }
        Ok(None) => None,
        Err(e) => {
            tracing::warn!(error = %e.message, "the coordinators present could not be read; machines are judged by their reports' age alone");
            None
        }
    };
    crate::registry::Liveness { now: now_ms(), health_interval: state.config.health_interval, present }
}

/// Whether the process `holder` names is among the coordinators announced
/// now (always false on a store this process alone opens: any other holder
/// was an earlier life of it).
pub fn present(store: &Store, holder: &str) -> Result<bool, WireError> {
    Ok(announced(store)?.is_some_and(|all| all.iter().any(|c| self::holder_of(c) == holder)))
}

fn holder_of(info: &CoordinatorInfo) -> String {
    holder_at(&info.address, info.pid)
}

/// Says again, every [`ANNOUNCE_EVERY`], how many agents this coordinator
/// holds (on a shared store).
pub async fn announce_periodically(state: Arc<Coordinator>) {
    if !shared(&state) {
        return;
    }
    let since = state.serving_since;
    loop {
        let info = CoordinatorInfo { since, ..presence(&state.config.advertise.to_string(), state.leads(), state.live.connected_machines() as u64) };
        let store: Store = state.store.clone();
        let announced = tokio::task::spawn_blocking(move || store.backend().reannounce(&encode(&info))).await;
        if let Ok(Err(e)) = announced {
            tracing::warn!(error = %e, "this coordinator's presence could not be renewed in the store");
        }
        tokio::time::sleep(ANNOUNCE_EVERY).await;
    }
}

/// Campaigns to lead, every [`CAMPAIGN_EVERY`] while another leads (on a
/// shared store; elsewhere this coordinator leads from the start). Once it
/// leads, it leads until its lease ends — and then its writes are fenced
/// and `drover serve` steps down — so [`Coordinator::leading`] never turns
/// back.
pub async fn lead(state: Arc<Coordinator>) {
    if !shared(&state) {
        return;
    }
    loop {
        if !*state.suspended.borrow() {
            let store = state.store.clone();
            match tokio::task::spawn_blocking(move || store.backend().campaign()).await {
                Ok(Ok(true)) => {
                    tracing::info!("this coordinator leads the fleet's coordinators: the rollout driver, provisioning and volume detaches run here");
                    state.leading.send_replace(true);
                    return;
                }
                Ok(Ok(false)) => {}
                Ok(Err(e)) => tracing::debug!(error = %e, "campaigning to lead failed; trying again"),
                Err(e) => tracing::warn!(error = %e, "campaigning to lead failed"),
            }
        }
        tokio::time::sleep(CAMPAIGN_EVERY).await;
    }
}

/// Follows the machines' records through the store's watch (on a shared
/// store), for the machines connected here: a new desired generation
/// another coordinator recorded is announced to the machine's agent (its
/// watch stream then reads the assignment), a revoked or removed machine's
/// connections are closed. Events of machines connected elsewhere cost a
/// lookup, nothing more.
pub async fn follow_machines(state: Arc<Coordinator>) {
    let Some(mut changes) = state.store.backend().watch(Tree::Machines) else { return };
    while let Some(change) = changes.recv().await {
        match change {
            Watched::Put(key, value) => {
                let Ok(id) = std::str::from_utf8(&key) else { continue };
                if !state.live.watching(id) {
                    continue;
                }
                match crate::store::codec::decode::<MachineRecord>(Tree::Machines, &key, &value) {
                    Ok(machine) => apply(&state, &machine),
                    Err(e) => tracing::warn!(machine = id, error = %e, "an unreadable machine record in the store's watch"),
                }
            }
            Watched::Deleted(key) => {
                let id = String::from_utf8_lossy(&key);
                state.live.close_machine(&id, ErrorCode::Revoked, "this machine was removed from the fleet");
            }
            Watched::Resync => {
                let store = state.store.clone();
                let watched = state.live.watched_machines();
                let machines = tokio::task::spawn_blocking(move || watched.iter().filter_map(|id| store.machine(id).ok().flatten()).collect::<Vec<_>>()).await;
                for machine in machines.unwrap_or_default() {
                    apply(&state, &machine);
                }
            }
        }
    }
}

/// What a machine's record, as another coordinator wrote it, means for its
/// agent connected here.
fn apply(state: &Coordinator, machine: &MachineRecord) {
    if machine.revoked_at.is_some() {
        state.live.close_machine(&machine.id, ErrorCode::Revoked, "this machine's certificate was revoked");
    } else {
        state.live.announce_generation(&machine.id, machine.desired_generation);
    }
}

/// Whether the store is one other coordinators share (etcd), where this
/// one holds a lease that can run out; sled and memory are this process's
/// alone, and nothing here runs for them.
fn shared(state: &Coordinator) -> bool {
    state.store.backend().lost().is_some()
}

/// How often [`guard_claim`] looks at the claim.
const GUARD_EVERY: Duration = Duration::from_millis(500);

/// Watches this coordinator's lease on a shared store. When it may have
/// run out (the store cut off or without quorum for the lease's length, so
/// another coordinator may lead now and this one's view is stale), it
/// stops serving: every connection is closed and new ones are refused, so
/// that agents move to the other coordinators instead of being answered
/// from stale state. It then tries to join again: joined (its lease lived
/// still, or nobody took what it held), it serves again; if it led and
/// another leads now, the store says so and `drover serve` steps down.
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
            tracing::error!("this coordinator could not renew its lease on the fleet's store in time (etcd cut off or without quorum): it serves nobody until it holds a lease again");
            state.suspended.send_replace(true);
            state.live.close_all(drover_protocol::ErrorCode::Unavailable, "this coordinator is cut off from the fleet's store; try another");
        }
        if !suspended && !lapsed {
            continue;
        }
        let store = state.store.clone();
        let again = tokio::task::spawn_blocking(move || store.backend().reclaim().map(|()| !store.backend().claim_lapsed())).await;
        if let Ok(Ok(true)) = again {
            tracing::warn!("this coordinator holds a lease on the fleet's store again; serving");
            state.suspended.send_replace(false);
        }
        // Otherwise: not yet renewed, the store still out of reach, or the
        // lead another's (then `drover serve` steps down).
    }
}
