//! The rollout planner: a pure state machine over a frozen set of target
//! machines, driven by observations and "now" (simulated time in tests).
//!
//! Names follow Nomad's `update` block and Kubernetes Deployments:
//! - `canary` machines go first; after they are healthy the rollout waits for
//!   `promote` (or promotes itself with `auto_promote`);
//! - `max_parallel` caps the machines in transition (updating, or healthy for
//!   less than `min_healthy_time`);
//! - `max_unavailable` caps machines in transition plus failed ones;
//! - more failures than `max_failures` stop the rollout; with `auto_revert`
//!   every machine it changed goes back to its previous generation;
//! - a machine that has not succeeded within `healthy_deadline` has failed;
//!   one that leaves the new generation before `min_healthy_time` has failed;
//!   one unseen during it is not counted until seen again (or fails past the
//!   healthy deadline), so a coordinator restart fails nobody;
//! - offline machines wait their turn; any still offline when nothing else
//!   remains and `progress_deadline` has passed since the start are skipped
//!   (never counted as successes).
//!
//! The target set is frozen at the start: machines that enroll later are not
//! included (start another rollout for them).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub type Millis = u64;

/// A count, or a percentage of the targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Amount {
    Count(u32),
    Percent(u32),
}

impl Amount {
    /// Parses `N` or `P%`.
    pub fn parse(s: &str) -> Result<Amount, String> {
        if let Some(p) = s.strip_suffix('%') {
            let p: u32 = p.parse().map_err(|_| format!("{s:?} is not a percentage"))?;
            if p > 100 {
                return Err(format!("{s:?} is more than 100%"));
            }
            Ok(Amount::Percent(p))
        } else {
            s.parse().map(Amount::Count).map_err(|_| format!("{s:?} is neither N nor P%"))
        }
    }

    /// As a cap on machines at once: percentages round up, at least one.
    pub fn cap(self, total: usize) -> usize {
        match self {
            Amount::Count(n) => (n as usize).max(1),
            Amount::Percent(p) => (total * p as usize).div_ceil(100).max(1),
        }
    }

    /// As a number of failures tolerated: percentages round down.
    pub fn tolerated(self, total: usize) -> usize {
        match self {
            Amount::Count(n) => n as usize,
            Amount::Percent(p) => total * p as usize / 100,
        }
    }
}

impl std::fmt::Display for Amount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Amount::Count(n) => write!(f, "{n}"),
            Amount::Percent(p) => write!(f, "{p}%"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Strategy {
    pub canary: usize,
    pub max_parallel: Amount,
    pub max_unavailable: Amount,
    pub max_failures: Amount,
    pub healthy_deadline_ms: Millis,
    pub min_healthy_time_ms: Millis,
    pub progress_deadline_ms: Millis,
    pub auto_revert: bool,
    pub auto_promote: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Canary,
    AwaitingPromotion,
    Rolling,
    Succeeded,
    /// Stopped after too many failures, without reverting.
    Failed,
    Aborted,
    Reverting,
    Reverted,
}

impl Phase {
    /// Whether the rollout still moves machines.
    pub fn active(self) -> bool {
        matches!(self, Phase::Canary | Phase::AwaitingPromotion | Phase::Rolling | Phase::Reverting)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Slot {
    Waiting,
    Updating,
    /// Succeeded; counts once healthy for `min_healthy_time`.
    Healthy {
        since: Millis,
    },
    Done,
    Failed {
        reason: String,
    },
    Skipped,
    Reverting,
    Reverted,
    /// Could not be reverted (no previous generation).
    NotReverted,
    /// An admin deployed to it by hand (`--override-rollout`); the rollout
    /// leaves it alone from then on, reverts included.
    Overridden {
        deployment: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub slot: Slot,
    pub canary: bool,
    /// The generation before the rollout touched it (0: none).
    pub previous_generation: u64,
    /// The generation the rollout recorded for it.
    pub generation: Option<u64>,
    pub revert_generation: Option<u64>,
    pub started_at: Option<Millis>,
    /// When it left "in transition" (done, failed or skipped).
    pub settled_at: Option<Millis>,
}

impl Entry {
    pub fn new(previous_generation: u64) -> Self {
        Entry { slot: Slot::Waiting, canary: false, previous_generation, generation: None, revert_generation: None, started_at: None, settled_at: None }
    }

    fn in_transition(&self) -> bool {
        matches!(self.slot, Slot::Updating | Slot::Healthy { .. })
    }

    /// Whether the rollout changed (started) this machine.
    fn touched(&self) -> bool {
        self.started_at.is_some()
    }
}

/// The planner's whole state, kept in the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub phase: Phase,
    pub paused: bool,
    pub started_at: Millis,
    pub strategy: Strategy,
    pub machines: BTreeMap<String, Entry>,
    /// Phase changes with their times.
    pub phases: Vec<(Phase, Millis)>,
    pub reason: Option<String>,
}

/// What the driver observed of one machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observation {
    pub online: bool,
    /// Outcome of the deployment the rollout (or its revert) recorded.
    pub outcome: Option<Outcome>,
    /// Whether it still runs the rollout's generation (for min_healthy_time).
    pub still_current: bool,
    /// Since when the coordinator could see it (since it began serving):
    /// time before that — a failover, a restart — does not count against
    /// the healthy deadline of a machine started earlier.
    pub watched_since: Millis,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Succeeded { at: Millis },
    Failed { reason: String },
}

/// What the driver must do now.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Actions {
    /// Record the rollout's generation for these machines.
    pub start: Vec<String>,
    /// Record each machine's previous generation again.
    pub revert: Vec<String>,
}

impl State {
    pub fn new(strategy: Strategy, targets: BTreeMap<String, u64>, now: Millis) -> Self {
        let phase = if strategy.canary > 0 { Phase::Canary } else { Phase::Rolling };
        State {
            phase,
            paused: false,
            started_at: now,
            strategy,
            machines: targets.into_iter().map(|(id, prev)| (id, Entry::new(prev))).collect(),
            phases: vec![(phase, now)],
            reason: None,
        }
    }

    fn set_phase(&mut self, phase: Phase, now: Millis) {
        if self.phase != phase {
            self.phase = phase;
            self.phases.push((phase, now));
        }
    }

    pub fn count(&self, pred: impl Fn(&Entry) -> bool) -> usize {
        self.machines.values().filter(|e| pred(e)).count()
    }

    pub fn failures(&self) -> usize {
        self.count(|e| matches!(e.slot, Slot::Failed { .. }))
    }

    /// Manual promotion after the canaries.
    pub fn promote(&mut self, now: Millis) -> Result<(), String> {
        match self.phase {
            Phase::AwaitingPromotion => {
                self.set_phase(Phase::Rolling, now);
                Ok(())
            }
            Phase::Canary => Err("the canaries are not healthy yet".into()),
            other => Err(format!("nothing to promote: the rollout is {other:?}")),
        }
    }

    pub fn abort(&mut self, now: Millis) -> Result<(), String> {
        if !self.phase.active() || self.phase == Phase::Reverting {
            return Err(format!("the rollout is {:?}; nothing to abort", self.phase));
        }
        self.reason = Some("aborted".into());
        self.set_phase(Phase::Aborted, now);
        Ok(())
    }

    /// Puts every machine the rollout changed back on its previous generation.
    pub fn revert(&mut self, now: Millis) -> Result<(), String> {
        if matches!(self.phase, Phase::Reverting | Phase::Reverted) {
            return Err("the rollout is already reverted".into());
        }
        self.set_phase(Phase::Reverting, now);
        Ok(())
    }

    /// Whether the rollout still holds `machine`: it is active and the
    /// machine waits, updates, proves healthy or is being reverted.
    pub fn holds(&self, machine: &str) -> bool {
        self.phase.active()
            && self.machines.get(machine).is_some_and(|e| matches!(e.slot, Slot::Waiting | Slot::Updating | Slot::Healthy { .. } | Slot::Reverting))
    }

    /// An admin deployed `deployment` to `machine` by hand over the
    /// rollout: the machine is settled and left alone.
    pub fn overridden(&mut self, machine: &str, deployment: String, now: Millis) {
        if let Some(e) = self.machines.get_mut(machine) {
            e.slot = Slot::Overridden { deployment };
            e.settled_at = Some(now);
        }
    }

    /// Takes note of what became of a start [`State::step`] asked for: the
    /// generation recorded for the machine, or why none could be (it then
    /// counts as failed).
    pub fn started(&mut self, machine: &str, outcome: Result<u64, String>) {
        if let Some(e) = self.machines.get_mut(machine) {
            match outcome {
                Ok(generation) => e.generation = Some(generation),
                Err(reason) => e.slot = Slot::Failed { reason },
            }
        }
    }

    /// Takes note of what became of a revert: the generation that returns
    /// the machine to its previous assignment, or none (nothing to return
    /// to, or the machine cannot take a generation), which leaves it not
    /// reverted.
    pub fn reverted(&mut self, machine: &str, outcome: Option<u64>) {
        if let Some(e) = self.machines.get_mut(machine) {
            match outcome {
                Some(generation) => e.revert_generation = Some(generation),
                None => e.slot = Slot::NotReverted,
            }
        }
    }

    /// Moves the rollout forward. Pure: the same inputs give the same result.
    pub fn step(&mut self, observed: &BTreeMap<String, Observation>, now: Millis) -> Actions {
        self.step_within(observed, now, usize::MAX)
    }

    /// [`State::step`], starting or reverting at most `limit` machines (at
    /// least one); the others wait for the next step.
    pub fn step_within(&mut self, observed: &BTreeMap<String, Observation>, now: Millis, limit: usize) -> Actions {
        let limit = limit.max(1);
        let mut actions = Actions::default();
        let s = self.strategy.clone();
        let total = self.machines.len();

        // 1. What happened to machines in flight.
        for (id, entry) in self.machines.iter_mut() {
            let Some(obs) = observed.get(id) else { continue };
            match entry.slot.clone() {
                Slot::Updating => match &obs.outcome {
                    Some(Outcome::Succeeded { at }) => entry.slot = Slot::Healthy { since: *at },
                    Some(Outcome::Failed { reason }) => {
                        entry.slot = Slot::Failed { reason: reason.clone() };
                        entry.settled_at = Some(now);
                    }
                    None => {
                        if entry.started_at.is_some_and(|t| now.saturating_sub(t.max(obs.watched_since)) > s.healthy_deadline_ms) {
                            entry.slot = Slot::Failed { reason: "not healthy within the healthy deadline".into() };
                            entry.settled_at = Some(now);
                        }
                    }
                },
                Slot::Healthy { since } => {
                    if !obs.still_current {
                        entry.slot = Slot::Failed { reason: "left the new generation during the minimum healthy time".into() };
                        entry.settled_at = Some(now);
                    } else if !obs.online {
                        // Not counted while unseen (the coordinator may just
                        // have restarted); gone too long, it has failed.
                        if now.saturating_sub(since) > s.healthy_deadline_ms.max(s.min_healthy_time_ms) {
                            entry.slot = Slot::Failed { reason: "offline during the minimum healthy time".into() };
                            entry.settled_at = Some(now);
                        }
                    } else if now.saturating_sub(since) >= s.min_healthy_time_ms {
                        entry.slot = Slot::Done;
                        entry.settled_at = Some(now);
                    }
                }
                Slot::Reverting if obs.outcome.is_some() => entry.slot = Slot::Reverted,
                _ => {}
            }
        }

        // 2. Too many failures stop the rollout.
        if matches!(self.phase, Phase::Canary | Phase::AwaitingPromotion | Phase::Rolling) && self.failures() > s.max_failures.tolerated(total) {
            self.reason = Some(format!("{} failure(s), more than max_failures {}", self.failures(), s.max_failures));
            if s.auto_revert {
                self.set_phase(Phase::Reverting, now);
            } else {
                self.set_phase(Phase::Failed, now);
            }
        }

        // 3. Reverting: every touched machine goes back once.
        if self.phase == Phase::Reverting {
            for (id, entry) in self.machines.iter_mut() {
                let revertible = entry.touched() && !matches!(entry.slot, Slot::Reverting | Slot::Reverted | Slot::NotReverted | Slot::Overridden { .. });
                if revertible {
                    if entry.previous_generation == 0 {
                        entry.slot = Slot::NotReverted;
                    } else if actions.revert.len() < limit {
                        entry.slot = Slot::Reverting;
                        actions.revert.push(id.clone());
                    }
                }
            }
            if self.count(|e| e.slot == Slot::Reverting) == 0 {
                self.set_phase(Phase::Reverted, now);
            }
            return actions;
        }

        if self.paused || !matches!(self.phase, Phase::Canary | Phase::Rolling) {
            return actions;
        }

        // 4. Canaries.
        if self.phase == Phase::Canary {
            let chosen = self.count(|e| e.canary);
            let want = s.canary.min(total).saturating_sub(chosen);
            let picks: Vec<String> = self
                .machines
                .iter()
                .filter(|(id, e)| e.slot == Slot::Waiting && observed.get(*id).is_some_and(|o| o.online))
                .map(|(id, _)| id.clone())
                .take(want.min(limit))
                .collect();
            for id in picks {
                let entry = self.machines.get_mut(&id).expect("picked from the map");
                entry.canary = true;
                entry.slot = Slot::Updating;
                entry.started_at = Some(now);
                actions.start.push(id);
            }
            let canaries = self.count(|e| e.canary);
            let canaries_done = self.count(|e| e.canary && matches!(e.slot, Slot::Done | Slot::Overridden { .. }));
            if canaries > 0 && canaries_done == canaries && canaries == s.canary.min(total) {
                if s.auto_promote {
                    self.set_phase(Phase::Rolling, now);
                } else {
                    self.set_phase(Phase::AwaitingPromotion, now);
                    return actions;
                }
            } else {
                return actions;
            }
        }

        // 5. Batches within max_parallel and max_unavailable.
        let in_transition = self.count(Entry::in_transition);
        let unavailable = in_transition + self.failures();
        let room = s.max_parallel.cap(total).saturating_sub(in_transition).min(s.max_unavailable.cap(total).saturating_sub(unavailable));
        let picks: Vec<String> = self
            .machines
            .iter()
            .filter(|(id, e)| e.slot == Slot::Waiting && observed.get(*id).is_some_and(|o| o.online))
            .map(|(id, _)| id.clone())
            .take(room.min(limit - actions.start.len()))
            .collect();
        for id in picks {
            let entry = self.machines.get_mut(&id).expect("picked from the map");
            entry.slot = Slot::Updating;
            entry.started_at = Some(now);
            actions.start.push(id);
        }

        // 6. The end: nothing in flight, nobody online waiting.
        let waiting = self.count(|e| e.slot == Slot::Waiting);
        if self.count(Entry::in_transition) == 0 && actions.start.is_empty() {
            if waiting > 0 && now.saturating_sub(self.started_at) >= s.progress_deadline_ms {
                for entry in self.machines.values_mut() {
                    if entry.slot == Slot::Waiting {
                        entry.slot = Slot::Skipped;
                        entry.settled_at = Some(now);
                    }
                }
            }
            if self.count(|e| e.slot == Slot::Waiting) == 0 {
                self.set_phase(Phase::Succeeded, now);
            }
        }
        actions
    }
}
