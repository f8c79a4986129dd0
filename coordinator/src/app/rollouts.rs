//! Rollouts: starting one (a frozen set of targets, at most one active
//! rollout per machine; its buckets made ready after every check passed),
//! pausing, resuming, aborting, reverting, promoting, and the wire view.
//! [`step`] records what the planner decided — its new state and the
//! generations it starts or reverts — in one transaction, so a coordinator
//! restart continues exactly where the rollout stood.

use std::collections::BTreeMap;

use drover_protocol::v1::{self, AdminResponse, RolloutAction, RolloutInfo, RolloutMachine, RolloutMachineState, RolloutPhase, RolloutSpec};
use drover_protocol::{ErrorCode, WireError};

use crate::model::{AssignmentRecord, DeploymentRecord, MachineRecord, RolloutRecord};
use crate::registry;
use crate::rollout::plan::{self, Actions, Phase, Slot, State};
use crate::store::deployments::generation_key;

use super::errors::{conflict, invalid, not_found};
use super::generations::{directory, record_one, Make, Recorded};
use super::{now_ms, s3, volumes, Coordinator};

impl From<v1::Amount> for plan::Amount {
    fn from(a: v1::Amount) -> Self {
        match a {
            v1::Amount::Count(n) => plan::Amount::Count(n),
            v1::Amount::Percent(p) => plan::Amount::Percent(p),
        }
    }
}

impl From<plan::Amount> for v1::Amount {
    fn from(a: plan::Amount) -> Self {
        match a {
            plan::Amount::Count(n) => v1::Amount::Count(n),
            plan::Amount::Percent(p) => v1::Amount::Percent(p),
        }
    }
}

/// The planner's strategy from the wire's.
pub fn strategy(w: &v1::RolloutStrategy) -> plan::Strategy {
    plan::Strategy {
        canary: w.canary as usize,
        max_parallel: w.max_parallel.into(),
        max_unavailable: w.max_unavailable.into(),
        max_failures: w.max_failures.into(),
        healthy_deadline_ms: w.healthy_deadline_ms,
        min_healthy_time_ms: w.min_healthy_time_ms,
        progress_deadline_ms: w.progress_deadline_ms,
        auto_revert: w.auto_revert,
        auto_promote: w.auto_promote,
    }
}

fn strategy_wire(s: &plan::Strategy) -> v1::RolloutStrategy {
    v1::RolloutStrategy {
        canary: u32::try_from(s.canary).unwrap_or(u32::MAX),
        max_parallel: s.max_parallel.into(),
        max_unavailable: s.max_unavailable.into(),
        max_failures: s.max_failures.into(),
        healthy_deadline_ms: s.healthy_deadline_ms,
        min_healthy_time_ms: s.min_healthy_time_ms,
        progress_deadline_ms: s.progress_deadline_ms,
        auto_revert: s.auto_revert,
        auto_promote: s.auto_promote,
    }
}

fn check_strategy(w: &v1::RolloutStrategy) -> Result<(), String> {
    for (name, a) in [("--max-parallel", w.max_parallel), ("--max-unavailable", w.max_unavailable), ("--max-failures", w.max_failures)] {
        if let v1::Amount::Percent(p) = a {
            if p > 100 {
                return Err(format!("{name} {p}% is more than 100%"));
            }
        }
    }
    for (name, a) in [("--max-parallel", w.max_parallel), ("--max-unavailable", w.max_unavailable)] {
        if matches!(a, v1::Amount::Count(0) | v1::Amount::Percent(0)) {
            return Err(format!("{name} {a} would never start a machine: give at least 1, or a percentage above 0%"));
        }
    }
    if w.healthy_deadline_ms == 0 {
        return Err("--healthy-deadline must be above zero".into());
    }
    Ok(())
}

pub fn phase_wire(p: Phase) -> RolloutPhase {
    match p {
        Phase::Canary => RolloutPhase::Canary,
        Phase::AwaitingPromotion => RolloutPhase::AwaitingPromotion,
        Phase::Rolling => RolloutPhase::Rolling,
        Phase::Succeeded => RolloutPhase::Succeeded,
        Phase::Failed => RolloutPhase::Failed,
        Phase::Aborted => RolloutPhase::Aborted,
        Phase::Reverting => RolloutPhase::Reverting,
        Phase::Reverted => RolloutPhase::Reverted,
    }
}

pub fn slot_wire(s: &Slot) -> (RolloutMachineState, Option<String>) {
    match s {
        Slot::Waiting => (RolloutMachineState::Waiting, None),
        Slot::Updating => (RolloutMachineState::Updating, None),
        Slot::Healthy { .. } => (RolloutMachineState::Healthy, None),
        Slot::Done => (RolloutMachineState::Done, None),
        Slot::Failed { reason } => (RolloutMachineState::Failed, Some(reason.clone())),
        Slot::Skipped => (RolloutMachineState::Skipped, Some("offline until the progress deadline".into())),
        Slot::Reverting => (RolloutMachineState::Reverting, None),
        Slot::Reverted => (RolloutMachineState::Reverted, None),
        Slot::Overridden { deployment } => {
            (RolloutMachineState::Skipped, Some(format!("overridden by the manual deployment {deployment} (--override-rollout)")))
        }
        Slot::NotReverted => (RolloutMachineState::NotReverted, Some("no previous generation to return to".into())),
    }
}

/// The wire view of a rollout; host names come from `machines`.
pub fn to_wire(r: &RolloutRecord, machines: &BTreeMap<String, MachineRecord>) -> RolloutInfo {
    RolloutInfo {
        id: r.id.clone(),
        phase: phase_wire(r.state.phase),
        paused: r.state.paused,
        reason: r.state.reason.clone(),
        created_at: r.created_at,
        system: r.spec.system.clone(),
        selector: r.spec.selector.clone(),
        strategy: strategy_wire(&r.state.strategy),
        phases: r.state.phases.iter().map(|(p, t)| (phase_wire(*p), *t)).collect(),
        machines: r
            .state
            .machines
            .iter()
            .map(|(id, e)| {
                let (state, reason) = slot_wire(&e.slot);
                RolloutMachine {
                    machine_id: id.clone(),
                    hostname: machines.get(id).map(|m| m.hostname.clone()).unwrap_or_default(),
                    state,
                    canary: e.canary,
                    generation: e.generation,
                    revert_generation: e.revert_generation,
                    started_at: e.started_at,
                    settled_at: e.settled_at,
                    reason,
                }
            })
            .collect(),
    }
}

fn machines_by_id(state: &Coordinator) -> Result<BTreeMap<String, MachineRecord>, WireError> {
    Ok(state.store.machines()?.into_iter().map(|m| (m.id.clone(), m)).collect())
}

fn rollout(state: &Coordinator, id: &str) -> Result<RolloutRecord, WireError> {
    state.store.rollout(id)?.ok_or_else(|| not_found(format!("rollout {id:?} not found; see `drover rollout list`")))
}

/// The records of one rollout's machines (not the whole fleet's), for their
/// host names: one that cannot be read shows none rather than failing the
/// status.
fn machines_of(state: &Coordinator, r: &RolloutRecord) -> BTreeMap<String, MachineRecord> {
    r.state.machines.keys().filter_map(|id| state.store.machine(id).ok().flatten().map(|m| (id.clone(), m))).collect()
}

pub fn status(state: &Coordinator, id: &str) -> Result<AdminResponse, WireError> {
    let r = rollout(state, id)?;
    Ok(AdminResponse::Rollout(to_wire(&r, &machines_of(state, &r))))
}

pub fn list(state: &Coordinator) -> Result<AdminResponse, WireError> {
    let machines = machines_by_id(state)?;
    Ok(AdminResponse::Rollouts(state.store.rollouts()?.iter().map(|r| to_wire(r, &machines)).collect()))
}

/// The deployments a rollout made, and its reverts, oldest first.
pub fn deployments(state: &Coordinator, id: &str) -> Result<AdminResponse, WireError> {
    let r = rollout(state, id)?;
    let mut out = Vec::new();
    for (machine, e) in &r.state.machines {
        for g in [e.generation, e.revert_generation].into_iter().flatten() {
            if let Some(d) = state.store.deployment(machine, g)? {
                out.push(d);
            }
        }
    }
    out.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
    Ok(AdminResponse::Deployments(out.iter().map(DeploymentRecord::to_wire).collect()))
}

/// Starts a rollout over the machines matching the selector now. Every
/// check comes before the buckets are made, so a refused rollout leaves no
/// bucket or key behind.
pub async fn start(state: &Coordinator, by: &str, mut spec: RolloutSpec) -> Result<RolloutInfo, WireError> {
    if spec.deploy.machine.is_some() {
        return Err(invalid("a rollout targets machines by --selector, not --machine"));
    }
    crate::deploy::validate(&spec.deploy)
        .and_then(|()| check_strategy(&spec.strategy))
        .and_then(|()| s3::provision::check(&spec.deploy.buckets))
        .and_then(|()| volumes::check_claims(&volumes::expand_claims(&spec.deploy.volumes, "h")))
        .map_err(invalid)?;
    if spec.snapshot_volumes {
        super::volumes::block_storage(state)?;
    }
    let _guard = state.rollout_lock.lock().await;
    // Rollouts started since the check below, by this or (on a shared
    // store) another coordinator, make the commit refuse.
    let epoch = state.store.meta(ROLLOUT_EPOCH_KEY)?;
    let machines: Vec<_> =
        state.store.machines()?.into_iter().filter(|m| m.revoked_at.is_none() && registry::matches(&m.labels, &spec.deploy.selector)).collect();
    if machines.is_empty() {
        return Err(not_found("no machine matches the selector; see `drover machines list`"));
    }
    directory(state)?.check_spec(&spec.deploy, &machines).map_err(invalid)?;
    for other in state.store.rollouts()? {
        if !other.state.phase.active() {
            continue;
        }
        if let Some(machine) = machines.iter().find(|m| other.state.machines.contains_key(&m.id)) {
            return Err(conflict(format!(
                "machine {} is already in active rollout {}; wait for it, or abort it with `drover rollout abort {}`",
                machine.id, other.id, other.id
            )));
        }
    }
    if machines.len() > 1 && spec.deploy.volumes.iter().any(|c| !c.name.contains(volumes::HOSTNAME)) {
        return Err(invalid(format!(
            "a volume goes to one machine, and {} machines match; put {} in its name to give each its own (e.g. pg-{}:/var/lib/postgresql,size=20GiB)",
            machines.len(),
            volumes::HOSTNAME,
            volumes::HOSTNAME
        )));
    }
    let refused = |e: WireError| WireError::new(e.code, format!("rollout refused, nothing recorded: {}", e.message));
    let mut mounts = Vec::new();
    for m in machines.iter().filter(|_| !spec.deploy.volumes.is_empty()) {
        let claims = volumes::expand_claims(&spec.deploy.volumes, &m.hostname);
        volumes::check_claims(&claims).map_err(invalid)?;
        mounts.push((m.id.clone(), volumes::node_of(m), volumes::prepare(state, &claims, m).await.map_err(refused)?));
    }
    if let Err(e) = s3::provision::provision(state, &mut spec.deploy).await {
        return Err(refused(e));
    }
    let now = now_ms();
    let targets: BTreeMap<String, u64> = machines.iter().map(|m| (m.id.clone(), m.desired_generation)).collect();
    let id_bytes: [u8; 4] = rand::random();
    let record = RolloutRecord {
        id: format!("r-{}", hex::encode(id_bytes)),
        created_at: now,
        spec: spec.deploy.clone(),
        state: State::new(strategy(&spec.strategy), targets, now),
        snapshot_volumes: spec.snapshot_volumes,
    };
    fits_one_request(state, &record)?;
    state
        .store
        .commit(|tx| {
            if tx.meta(ROLLOUT_EPOCH_KEY)? != epoch {
                return Err(conflict("another rollout started while this one was checked; start it again"));
            }
            let next = epoch.as_deref().and_then(|e| e.parse::<u64>().ok()).unwrap_or(0) + 1;
            tx.put_meta(ROLLOUT_EPOCH_KEY, &next.to_string())?;
            for (id, node, machine_mounts) in &mounts {
                volumes::record_attachments(tx, id, node, machine_mounts, now)?;
            }
            tx.insert_new(record.id.as_bytes(), &record, || format!("rollout {} already exists", record.id)).map_err(WireError::from)
        })
        .await?;
    state.metrics.rollout_started();
    tracing::info!(rollout = %record.id, machines = record.state.machines.len(), by, "rollout started");
    Ok(to_wire(&record, &machines.into_iter().map(|m| (m.id.clone(), m)).collect()))
}

/// Refuses a rollout whose record — every machine's state in it, as large
/// as each entry grows — would not fit one request of the store (etcd's
/// --max-request-bytes): it would stop in the middle, unable to record a
/// step. A quarter more is kept for failure reasons.
fn fits_one_request(state: &Coordinator, record: &RolloutRecord) -> Result<(), WireError> {
    let Some(limit) = state.store.max_request_bytes() else { return Ok(()) };
    let mut grown = record.clone();
    for entry in grown.state.machines.values_mut() {
        entry.slot = crate::rollout::plan::Slot::Healthy { since: u64::from(u32::MAX) * 1000 };
        entry.generation = Some(u64::from(u32::MAX));
        entry.revert_generation = Some(u64::from(u32::MAX));
        entry.started_at = Some(u64::from(u32::MAX) * 1000);
        entry.settled_at = Some(u64::from(u32::MAX) * 1000);
    }
    let bytes = serde_json::to_vec(&grown).map_err(|e| WireError::new(ErrorCode::Internal, format!("a rollout record could not be encoded: {e}")))?.len();
    let needed = bytes + bytes / 4;
    if needed > limit {
        let machines = record.state.machines.len();
        let fit = (limit as u64 * machines as u64 / needed as u64).max(1);
        return Err(invalid(format!(
            "a rollout over {machines} machines keeps about {} KiB of state in one record, more than one request of the fleet's store takes ({} KiB, store.max_request_bytes); about {fit} machines fit: split it into rollouts over narrower selectors (e.g. by a label), or raise etcd's --max-request-bytes and store.max_request_bytes together",
            needed.div_ceil(1024),
            limit / 1024
        )));
    }
    Ok(())
}

/// The meta key counting rollout starts: each start's transaction reads and
/// bumps it, so two coordinators cannot both start rollouts over the same
/// machines from the same view of the active ones.
const ROLLOUT_EPOCH_KEY: &str = "rollout_epoch";

/// Pauses, resumes, aborts, reverts or promotes a rollout.
pub async fn control(state: &Coordinator, by: &str, id: &str, action: RolloutAction) -> Result<RolloutInfo, WireError> {
    let now = now_ms();
    let record = state
        .store
        .update::<RolloutRecord, WireError>(id.as_bytes(), |r| {
            let s = &mut r.state;
            let result = match action {
                RolloutAction::Pause | RolloutAction::Resume if s.phase.active() => {
                    s.paused = action == RolloutAction::Pause;
                    Ok(())
                }
                RolloutAction::Pause | RolloutAction::Resume => Err(format!("the rollout is {}; it no longer moves", phase_wire(s.phase))),
                RolloutAction::Abort => s.abort(now),
                RolloutAction::Revert => s.revert(now),
                RolloutAction::Promote => s.promote(now),
            };
            result.map_err(|m| WireError::new(ErrorCode::Conflict, m))
        })
        .await
        .map_err(|e| if e.code == ErrorCode::NotFound { not_found(format!("rollout {id:?} not found; see `drover rollout list`")) } else { e })?;
    tracing::info!(rollout = %id, ?action, by, "rollout controlled");
    Ok(to_wire(&record, &machines_of(state, &record)))
}

/// What one step recorded.
pub struct Stepped {
    pub record: RolloutRecord,
    /// The generations it started or reverted, to announce.
    pub targets: Vec<Recorded>,
}

/// Runs `decide` (the planner's step) on rollout `id` and records, in one
/// transaction, its new state and the generations it starts (built by
/// `make`) or reverts (the previous generation's assignment again, built by
/// `remake`). Flushed only when something changed.
pub async fn step(
    state: &Coordinator,
    id: &str,
    decide: &(dyn Fn(&mut State) -> Actions + Sync),
    make: Make<'_>,
    remake: &(dyn Fn(&AssignmentRecord, &MachineRecord, u64) -> (AssignmentRecord, DeploymentRecord) + Sync),
) -> Result<Stepped, WireError> {
    let _shared = state.generations.read().await;
    let (record, targets, changed) = state
        .store
        .write(|tx| {
            let before: RolloutRecord = tx.require(id.as_bytes())?;
            let mut record = before.clone();
            let actions = decide(&mut record.state);
            let mut targets = Vec::new();
            for machine in &actions.start {
                let outcome = record_one(tx, machine, make)?;
                record.state.started(machine, outcome.as_ref().map(|r| r.target.generation).map_err(|e| e.to_string()));
                targets.extend(outcome.ok());
            }
            for machine in &actions.revert {
                let Some(previous) = record.state.machines.get(machine).map(|e| e.previous_generation) else {
                    continue;
                };
                let old: Option<AssignmentRecord> = tx.get(&generation_key(machine, previous))?;
                let mut outcome = match &old {
                    Some(old) => record_one(tx, machine, &|m, g| remake(old, m, g))?.ok(),
                    None => None,
                };
                record.state.reverted(machine, outcome.as_ref().map(|r| r.target.generation));
                if let (true, Some(r)) = (record.snapshot_volumes, &mut outcome) {
                    super::volumes::restore_in_revert(tx, r, &super::volumes::rollout_snapshot(id))?;
                }
                targets.extend(outcome);
            }
            let changed = record != before;
            if changed {
                tx.put(id.as_bytes(), &record)?;
            }
            Ok::<_, WireError>((record, targets, changed))
        })
        .await?;
    if changed {
        state.store.flush().await?;
    }
    Ok(Stepped { record, targets })
}
