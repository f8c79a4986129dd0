//! The driver: a task that every [`DRIVER_INTERVAL`] observes each
//! active rollout's machines (online, the outcome of the deployment the
//! rollout recorded) and has the planner take its next step, then
//! finishes the volume detaches whose machines have unmounted them
//! ([`super::volumes::finish_detaches`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use drover_protocol::v1::{DeploymentState, MachineStatus};

use crate::model::{DeploymentRecord, MachineRecord, RolloutRecord};
use crate::registry;
use crate::rollout::plan::{Observation, Outcome, Slot};
use crate::store::deployments::generation_key;
use crate::store::{StoreError, Tree};

use super::generations::directory;
use super::rollouts::{phase_wire, step};
use super::{now_ms, Coordinator};

/// At most how many steps one pass takes on one rollout, each a
/// transaction (see [`drive_once`]).
const MAX_STEPS_PER_PASS: usize = 40;

/// How often the driver looks at active rollouts.
pub const DRIVER_INTERVAL: Duration = Duration::from_millis(200);

/// What the step needs to know, and no more: machines in flight (their
/// outcome, whether they are online and still on the rollout's generation)
/// and, among those waiting, only as many online ones as a step can start.
/// Settled machines are not read at all, so a pass costs what is in
/// transition, not the whole rollout.
fn observe(state: &Coordinator, r: &RolloutRecord, liveness: &registry::Liveness) -> BTreeMap<String, Observation> {
    let now = liveness.now;
    let total = r.state.machines.len();
    let startable = r.state.strategy.max_parallel.cap(total).max(r.state.strategy.canary);
    let mut waiting_online = 0;
    let mut observed = BTreeMap::new();
    // The deployment whose outcome a machine in flight waits for.
    let watched = |e: &crate::rollout::plan::Entry| match e.slot {
        Slot::Reverting => e.revert_generation,
        Slot::Updating | Slot::Healthy { .. } => e.generation,
        _ => None,
    };
    let candidates: Vec<_> =
        r.state.machines.iter().filter(|(_, e)| matches!(e.slot, Slot::Updating | Slot::Healthy { .. } | Slot::Reverting | Slot::Waiting)).collect();
    // Read a chunk at a time, each in one read-only transaction that asks
    // for its keys ahead (on etcd, a request per chunk instead of two round
    // trips per machine: a pass over a large rollout was mostly waiting).
    let per_chunk = super::generations::machines_per_transaction(&state.store, 2, 0).unwrap_or(256).max(1);
    for chunk in candidates.chunks(per_chunk) {
        let chunk: Vec<_> = chunk.iter().filter(|(_, e)| e.slot != Slot::Waiting || waiting_online < startable).collect();
        if chunk.is_empty() {
            continue;
        }
        let read = state.store.transact(|tx| {
            tx.prefetch(chunk.iter().map(|(id, _)| (Tree::Machines, id.as_bytes().to_vec())))?;
            tx.prefetch(chunk.iter().filter_map(|(id, e)| watched(e).map(|g| (Tree::Deployments, generation_key(id, g)))))?;
            chunk
                .iter()
                .map(|(id, e)| {
                    let machine = tx.get::<MachineRecord>(id.as_bytes())?;
                    let deployment = match watched(e) {
                        Some(g) => tx.get::<DeploymentRecord>(&generation_key(id, g))?,
                        None => None,
                    };
                    Ok((machine, deployment))
                })
                .collect::<Result<Vec<_>, StoreError>>()
        });
        let read = match read {
            Ok(read) => read,
            Err(e) => {
                tracing::warn!(rollout = %r.id, error = %e, "the rollout's machines could not be read; the step waits");
                return observed;
            }
        };
        for ((id, e), (machine, deployment)) in chunk.into_iter().zip(read) {
            let Some(machine) = machine else { continue };
            let machine = state.live.newest(machine);
            let online = liveness.status(&machine) == MachineStatus::Online;
            if e.slot == Slot::Waiting {
                if waiting_online >= startable {
                    continue;
                }
                if online {
                    waiting_online += 1;
                }
                observed.insert((*id).clone(), Observation { online, outcome: None, still_current: false, watched_since: state.serving_since });
                continue;
            }
            let outcome = deployment.and_then(|d| match d.state {
                DeploymentState::Succeeded => Some(Outcome::Succeeded { at: d.finished_at.unwrap_or(now) }),
                DeploymentState::Failed => Some(Outcome::Failed { reason: d.steps.last().map(|s| s.message.clone()).unwrap_or_else(|| "failed".into()) }),
                DeploymentState::Superseded => Some(Outcome::Failed { reason: "superseded by a newer deployment".into() }),
                _ => None,
            });
            let still_current = e.generation.is_some() && machine.current_generation == e.generation;
            observed.insert((*id).clone(), Observation { online, outcome, still_current, watched_since: state.serving_since });
        }
    }
    observed
}

/// One pass over the active rollouts.
pub async fn drive_once(state: &Coordinator) {
    let rollouts = match state.store.rollouts() {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "cannot read rollouts");
            return;
        }
    };
    let active: Vec<RolloutRecord> = rollouts.into_iter().filter(|r| r.state.phase.active()).collect();
    if active.is_empty() {
        return;
    }
    let directory = match directory(state) {
        Ok(d) => d,
        Err(e) => {
            tracing::error!(error = %e.message, "cannot read tenants and admins");
            return;
        }
    };
    // Which coordinators are present: read once a pass.
    let present = super::coordinators::liveness(state);
    for r in active {
        let now = now_ms();
        let observed = observe(state, &r, &registry::Liveness { now, ..present.clone() });
        // A step records in one transaction: on a store that limits them
        // (etcd), it starts or reverts as many machines as fit, and the
        // next step the others. A revert with volume snapshots writes the
        // machine's volumes as well.
        let per_machine = super::generations::KEYS_PER_MACHINE + if r.snapshot_volumes { 4 } else { 1 };
        let limit = super::generations::machines_per_transaction(&state.store, per_machine, 2).unwrap_or(usize::MAX);
        let mut before = r.state.phase;
        if r.snapshot_volumes {
            // The machines this step will start, decided on a copy; the
            // step itself decides the same from the same observations.
            let mut probe = r.state.clone();
            let starting = probe.step_within(&observed, now, limit).start;
            if let Err(e) = super::volumes::snapshot_before_switch(state, &r.id, &starting).await {
                tracing::error!(rollout = %r.id, error = %e.message, "volume snapshots failed; the step waits for them");
                continue;
            }
        }
        // A step that filled its transaction may have more to start or
        // revert: another at once, on the same observations, up to
        // MAX_STEPS_PER_PASS (on etcd a large rollout would otherwise start
        // one transaction's worth of machines a pass). A step with volume
        // snapshots takes them first, so it stays one a pass.
        for _ in 0..MAX_STEPS_PER_PASS {
            let result = step(
                state,
                &r.id,
                &|s| s.step_within(&observed, now, limit),
                &|machine, g| crate::deploy::build(&r.spec, machine, g, now, &directory.extras(machine)),
                &|old, machine, g| crate::deploy::rebuild(&old.assignment, machine, g, now, &directory.access(machine)),
            )
            .await;
            let full = matches!(&result, Ok(stepped) if stepped.targets.len() >= limit && stepped.record.state.phase.active());
            match result {
                Ok(stepped) => {
                    for recorded in &stepped.targets {
                        recorded.announce(&state.live);
                    }
                    if !stepped.targets.is_empty() {
                        tracing::info!(rollout = %r.id, machines = stepped.targets.len(), "rollout recorded new generations");
                    }
                    if stepped.record.state.phase != before {
                        tracing::info!(rollout = %r.id, phase = %phase_wire(stepped.record.state.phase), reason = ?stepped.record.state.reason, "rollout phase");
                        before = stepped.record.state.phase;
                    }
                }
                Err(e) => tracing::error!(rollout = %r.id, error = %e.message, "rollout step failed"),
            }
            if !full || r.snapshot_volumes {
                break;
            }
        }
    }
}

/// The driver task: steps every active rollout, pausing [`DRIVER_INTERVAL`]
/// between passes — or twice as long as the last pass took, so that a
/// rollout of a large fleet leaves the coordinator at least two thirds of
/// its time for its agents — and counts its passes in
/// [`Coordinator::driver_passes`].
pub async fn drive(state: Arc<Coordinator>) {
    loop {
        let pass = std::time::Instant::now();
        drive_once(&state).await;
        super::volumes::finish_detaches(&state).await;
        if let Err(e) = super::generations::finish_orphaned_batches(&state).await {
            tracing::warn!(error = %e.message, "a deployment another coordinator left between batches is not finished yet; trying again");
        }
        state.driver_passes.send_modify(|n| *n += 1);
        tokio::time::sleep(DRIVER_INTERVAL.max(pass.elapsed() * 2)).await;
    }
}
