//! Snapshots for rollouts: taken of a machine's volumes before a rollout
//! switches it, and rolled back for a revert — only for the machine that
//! holds the volume, only for its newest generation and the snapshot that
//! generation names.

use drover_protocol::WireError;

use crate::model::{AssignmentRecord, SnapshotRecord, VolumeRecord};
use crate::store::deployments::generation_key;
use crate::store::Tx;

use super::super::errors::{conflict, invalid, not_found, revoked};
use super::super::generations::Recorded;
use super::super::{now_ms, Coordinator};
use super::{block_storage, wire};

/// The snapshot a rollout takes of each volume before its machine switches.
pub fn rollout_snapshot(rollout: &str) -> String {
    format!("pre-{rollout}")
}

/// Before a rollout switches these machines: a snapshot of every volume
/// they hold (idempotent, so a step retried after a failure takes none
/// twice).
pub async fn snapshot_before_switch(state: &Coordinator, rollout: &str, machines: &[String]) -> Result<(), WireError> {
    let snapshot = rollout_snapshot(rollout);
    let mut names = Vec::new();
    for id in machines {
        if let Some(m) = state.store.machine(id)? {
            names.extend(m.volumes.iter().map(|v| v.name.clone()));
        }
    }
    if names.is_empty() {
        return Ok(());
    }
    let block = block_storage(state)?;
    let now = now_ms();
    for name in names {
        block.snapshot(&name, &snapshot).await.map_err(wire)?;
        state
            .store
            .update::<VolumeRecord, WireError>(name.as_bytes(), |r| {
                if !r.snapshots.iter().any(|s| s.name == snapshot) {
                    r.snapshots.push(SnapshotRecord { name: snapshot.clone(), created_at: now });
                }
                Ok(())
            })
            .await?;
        tracing::info!(volume = %name, %snapshot, %rollout, "volume snapshot taken before the switch");
    }
    Ok(())
}

/// Inside a revert's transaction: the revert generation rolls back every
/// volume that has the rollout's snapshot before the machine switches back.
pub fn restore_in_revert(tx: &Tx, recorded: &mut Recorded, snapshot: &str) -> Result<(), WireError> {
    let key = generation_key(&recorded.target.machine_id, recorded.target.generation);
    let Some(mut assignment) = tx.get::<AssignmentRecord>(&key)? else { return Ok(()) };
    let mut changed = false;
    for v in assignment.assignment.volumes.iter_mut() {
        let record: Option<VolumeRecord> = tx.get(v.name.as_bytes())?;
        if record.is_some_and(|r| r.snapshots.iter().any(|s| s.name == snapshot)) {
            v.restore_snapshot = Some(snapshot.to_string());
            changed = true;
        }
    }
    if changed {
        tx.put(&key, &assignment)?;
        // The agent is sent what is recorded.
        recorded.assigned = std::sync::Arc::new((assignment.assignment, assignment.access));
    }
    Ok(())
}

/// An agent asks, having released the volume, that it be rolled back to
/// the snapshot its newest generation names. Only the machine that holds
/// the volume, only for that generation, only to that snapshot.
pub async fn restore(state: &Coordinator, machine_id: &str, generation: u64, name: &str) -> Result<(), WireError> {
    let machine = state.store.machine(machine_id)?.ok_or_else(|| not_found("this machine is not known"))?;
    if machine.revoked_at.is_some() {
        return Err(revoked(machine_id));
    }
    if generation != machine.desired_generation {
        return Err(conflict(format!("generation {generation} is not this machine's newest ({})", machine.desired_generation)));
    }
    let assignment: AssignmentRecord =
        state.store.get(&generation_key(machine_id, generation))?.ok_or_else(|| not_found(format!("generation {generation} has no assignment")))?;
    let snapshot = assignment
        .assignment
        .volumes
        .iter()
        .find(|v| v.name == name)
        .and_then(|v| v.restore_snapshot.clone())
        .ok_or_else(|| invalid(format!("generation {generation} does not roll volume {name:?} back")))?;
    let record = state.store.volume(name)?.ok_or_else(|| not_found(format!("volume {name:?} is not known")))?;
    if record.attached.as_ref().is_none_or(|a| a.machine_id != machine_id) {
        return Err(conflict(format!("volume {name:?} is not held by this machine")));
    }
    block_storage(state)?.rollback(name, &snapshot).await.map_err(wire)?;
    tracing::info!(volume = name, %snapshot, machine = machine_id, generation, "volume rolled back for a revert");
    Ok(())
}
