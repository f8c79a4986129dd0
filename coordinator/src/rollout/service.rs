//! Rollouts in the coordinator: starting one (a frozen set of targets, at most
//! one active rollout per machine), pausing, resuming, aborting, reverting,
//! promoting, the wire view, and [`drive`], the task that observes the fleet
//! and steps every active rollout. Each step and the generations it records
//! are one store transaction, so a coordinator restart continues exactly
//! where the rollout stood.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use drover_protocol::v1::{
    self, DeploymentState, MachineStatus, RolloutAction, RolloutInfo, RolloutMachine, RolloutSpec,
};
use drover_protocol::{ErrorCode, WireError};

use crate::model::RolloutRecord;
use crate::registry;
use crate::tenancy::Directory;
use crate::server::{now_ms, wire_error, Coordinator};

use super::plan::{self, Observation, Outcome, Phase, Slot, State};

/// How often the driver looks at active rollouts.
pub const DRIVER_INTERVAL: Duration = Duration::from_millis(200);

fn amount(a: v1::Amount) -> plan::Amount {
    match a {
        v1::Amount::Count(n) => plan::Amount::Count(n),
        v1::Amount::Percent(p) => plan::Amount::Percent(p),
    }
}

pub fn strategy(w: &v1::RolloutStrategy) -> plan::Strategy {
    plan::Strategy {
        canary: w.canary as usize,
        max_parallel: amount(w.max_parallel),
        max_unavailable: amount(w.max_unavailable),
        max_failures: amount(w.max_failures),
        healthy_deadline_ms: w.healthy_deadline_ms,
        min_healthy_time_ms: w.min_healthy_time_ms,
        progress_deadline_ms: w.progress_deadline_ms,
        auto_revert: w.auto_revert,
        auto_promote: w.auto_promote,
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
    if w.healthy_deadline_ms == 0 {
        return Err("--healthy-deadline must be above zero".into());
    }
    Ok(())
}

fn phase_name(p: Phase) -> String {
    serde_json::to_value(p).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
}

fn slot_name(s: &Slot) -> (String, Option<String>) {
    let name = match s {
        Slot::Waiting => "waiting",
        Slot::Updating => "updating",
        Slot::Healthy { .. } => "healthy",
        Slot::Done => "done",
        Slot::Failed { .. } => "failed",
        Slot::Skipped => "skipped",
        Slot::Reverting => "reverting",
        Slot::Reverted => "reverted",
        Slot::NotReverted => "not_reverted",
    };
    let reason = match s {
        Slot::Failed { reason } => Some(reason.clone()),
        Slot::Skipped => Some("offline until the progress deadline".into()),
        Slot::NotReverted => Some("no previous generation to return to".into()),
        _ => None,
    };
    (name.to_string(), reason)
}

pub fn to_wire(state: &Coordinator, r: &RolloutRecord, strategy_wire: Option<&v1::RolloutStrategy>) -> RolloutInfo {
    let machines = r
        .state
        .machines
        .iter()
        .map(|(id, e)| {
            let (state_name, reason) = slot_name(&e.slot);
            RolloutMachine {
                machine_id: id.clone(),
                hostname: state.store.machine(id).ok().flatten().map(|m| m.hostname).unwrap_or_default(),
                state: state_name,
                canary: e.canary,
                generation: e.generation,
                revert_generation: e.revert_generation,
                started_at: e.started_at,
                settled_at: e.settled_at,
                reason,
            }
        })
        .collect();
    let s = &r.state.strategy;
    let back = |a: plan::Amount| match a {
        plan::Amount::Count(n) => v1::Amount::Count(n),
        plan::Amount::Percent(p) => v1::Amount::Percent(p),
    };
    RolloutInfo {
        id: r.id.clone(),
        phase: phase_name(r.state.phase),
        paused: r.state.paused,
        reason: r.state.reason.clone(),
        created_at: r.created_at,
        system: r.spec.system.clone(),
        selector: r.spec.selector.clone(),
        strategy: strategy_wire.cloned().unwrap_or(v1::RolloutStrategy {
            canary: u32::try_from(s.canary).unwrap_or(u32::MAX),
            max_parallel: back(s.max_parallel),
            max_unavailable: back(s.max_unavailable),
            max_failures: back(s.max_failures),
            healthy_deadline_ms: s.healthy_deadline_ms,
            min_healthy_time_ms: s.min_healthy_time_ms,
            progress_deadline_ms: s.progress_deadline_ms,
            auto_revert: s.auto_revert,
            auto_promote: s.auto_promote,
        }),
        phases: r.state.phases.iter().map(|(p, t)| (phase_name(*p), *t)).collect(),
        machines,
    }
}

/// Starts a rollout over the machines matching the selector now.
pub async fn start(state: &Coordinator, spec: RolloutSpec) -> Result<RolloutInfo, WireError> {
    let invalid = |m: String| WireError::new(ErrorCode::InvalidArgument, m);
    if spec.deploy.machine.is_some() {
        return Err(invalid("a rollout targets machines by --selector, not --machine".into()));
    }
    crate::deploy::validate(&spec.deploy).map_err(invalid)?;
    check_strategy(&spec.strategy).map_err(invalid)?;
    let _guard = state.rollout_lock.lock().await;
    let machines: Vec<_> = state
        .store
        .machines()
        .map_err(wire_error)?
        .into_iter()
        .filter(|m| m.revoked_at.is_none() && registry::matches(&m.labels, &spec.deploy.selector))
        .collect();
    let targets: BTreeMap<String, u64> = machines.iter().map(|m| (m.id.clone(), m.desired_generation)).collect();
    Directory::load(state.store.as_ref())
        .map_err(wire_error)?
        .check_spec(&spec.deploy, &machines)
        .map_err(invalid)?;
    if targets.is_empty() {
        return Err(WireError::new(ErrorCode::NotFound, "no machine matches the selector; see `drover machines list`"));
    }
    for other in state.store.rollouts().map_err(wire_error)? {
        if !other.state.phase.active() {
            continue;
        }
        if let Some(machine) = targets.keys().find(|id| other.state.machines.contains_key(*id)) {
            return Err(WireError::new(
                ErrorCode::Conflict,
                format!(
                    "machine {machine} is already in active rollout {}; wait for it, or abort it with `drover rollout abort {}`",
                    other.id, other.id
                ),
            ));
        }
    }
    let now = now_ms();
    let id_bytes: [u8; 4] = rand::random();
    let record = RolloutRecord {
        id: format!("r-{}", hex::encode(id_bytes)),
        created_at: now,
        spec: spec.deploy.clone(),
        state: State::new(strategy(&spec.strategy), targets, now),
    };
    state.store.insert_rollout(&record).map_err(wire_error)?;
    tracing::info!(rollout = %record.id, machines = record.state.machines.len(), "rollout started");
    Ok(to_wire(state, &record, Some(&spec.strategy)))
}

/// Pauses, resumes, aborts, reverts or promotes a rollout.
pub fn control(state: &Coordinator, id: &str, action: RolloutAction) -> Result<RolloutInfo, WireError> {
    let apply = |s: &mut State, now| -> Result<(), String> {
        match action {
            RolloutAction::Pause if s.phase.active() => {
                s.paused = true;
                Ok(())
            }
            RolloutAction::Resume if s.phase.active() => {
                s.paused = false;
                Ok(())
            }
            RolloutAction::Pause | RolloutAction::Resume => Err(format!("the rollout is {}; it no longer moves", phase_name(s.phase))),
            RolloutAction::Abort => s.abort(now),
            RolloutAction::Revert => s.revert(now),
            RolloutAction::Promote => s.promote(now),
        }
    };
    let current = state
        .store
        .rollout(id)
        .map_err(wire_error)?
        .ok_or_else(|| WireError::new(ErrorCode::NotFound, format!("rollout {id:?} not found; see `drover rollout list`")))?;
    let now = now_ms();
    apply(&mut current.state.clone(), now).map_err(|m| WireError::new(ErrorCode::Conflict, m))?;
    let (record, targets) = state
        .store
        .rollout_step(
            id,
            &|r| {
                let _ = apply(&mut r.state, now);
                Default::default()
            },
            &|_, _, _| unreachable_build(),
            &|_, _, _| unreachable_build(),
        )
        .map_err(wire_error)?;
    debug_assert!(targets.is_empty());
    tracing::info!(rollout = %id, ?action, "rollout controlled");
    Ok(to_wire(state, &record, None))
}

/// Controls record no generations; the driver does.
fn unreachable_build() -> (crate::model::AssignmentRecord, crate::model::DeploymentRecord) {
    unreachable!("a control step starts no machine")
}

fn observe(state: &Coordinator, r: &RolloutRecord, now: u64) -> BTreeMap<String, Observation> {
    let interval = state.config.health_interval;
    r.state
        .machines
        .iter()
        .filter_map(|(id, e)| {
            let machine = state.store.machine(id).ok().flatten()?;
            let online = registry::status(&machine, now, interval) == MachineStatus::Online;
            let watched = match e.slot {
                Slot::Reverting => e.revert_generation,
                _ => e.generation,
            };
            let outcome = watched
                .and_then(|g| state.store.deployment(id, g).ok().flatten())
                .and_then(|d| match d.state {
                    DeploymentState::Succeeded => Some(Outcome::Succeeded { at: d.finished_at.unwrap_or(now) }),
                    DeploymentState::Failed => Some(Outcome::Failed {
                        reason: d.steps.last().map(|s| s.message.clone()).unwrap_or_else(|| "failed".into()),
                    }),
                    DeploymentState::Superseded => Some(Outcome::Failed { reason: "superseded by a newer deployment".into() }),
                    _ => None,
                });
            let still_current = e.generation.is_some() && machine.current_generation == e.generation;
            Some((id.clone(), Observation { online, outcome, still_current }))
        })
        .collect()
}

/// One pass over the active rollouts.
pub fn drive_once(state: &Coordinator) {
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
    let directory = match Directory::load(state.store.as_ref()) {
        Ok(d) => d,
        Err(e) => {
            tracing::error!(error = %e, "cannot read tenants and admins");
            return;
        }
    };
    for r in active {
        let now = now_ms();
        let observed = observe(state, &r, now);
        let before = r.state.phase;
        let result = state.store.rollout_step(
            &r.id,
            &|rec| rec.state.step(&observed, now),
            &|rec, machine, g| crate::deploy::build(&rec.spec, machine, g, now, &directory.extras(machine)),
            &|old, machine, g| crate::deploy::rebuild(&old.assignment, machine, g, now, &directory.access(machine)),
        );
        match result {
            Ok((record, targets)) => {
                for t in &targets {
                    state.live.notify(&t.machine_id, t.generation);
                }
                if !targets.is_empty() {
                    tracing::info!(rollout = %r.id, machines = targets.len(), "rollout recorded new generations");
                }
                if record.state.phase != before {
                    tracing::info!(rollout = %r.id, phase = %phase_name(record.state.phase), reason = ?record.state.reason, "rollout phase");
                }
            }
            Err(e) => tracing::error!(rollout = %r.id, error = %e, "rollout step failed"),
        }
    }
}

/// The driver task: steps every active rollout at [`DRIVER_INTERVAL`].
pub async fn drive(state: Arc<Coordinator>) {
    let mut tick = tokio::time::interval(DRIVER_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        drive_once(&state);
    }
}
