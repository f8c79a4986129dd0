//! Planner tests with simulated time: a fake fleet where each started
//! machine finishes after `apply_ms`, succeeding or failing as told.

use std::collections::{BTreeMap, BTreeSet};

use super::plan::*;

struct Machine {
    online: bool,
    fails: bool,
    apply_ms: u64,
    /// When its current deployment (rollout or revert) started.
    started: Option<u64>,
    /// Changed by the rollout, and reverted.
    changed: bool,
    reverted: bool,
}

struct Sim {
    state: State,
    now: u64,
    fleet: BTreeMap<String, Machine>,
    /// (time, machines in transition, unavailable) after each step.
    timeline: Vec<(u64, usize, usize)>,
    starts: Vec<(u64, String)>,
    /// The most machines one step may start or revert.
    limit: usize,
    /// The most one step started or reverted.
    most: usize,
}

fn strategy() -> Strategy {
    Strategy {
        canary: 0,
        max_parallel: Amount::Count(2),
        max_unavailable: Amount::Count(100),
        max_failures: Amount::Count(0),
        healthy_deadline_ms: 10_000,
        min_healthy_time_ms: 0,
        progress_deadline_ms: 60_000,
        auto_revert: false,
        auto_promote: true,
    }
}

impl Sim {
    fn new(n: usize, strategy: Strategy) -> Self {
        let fleet: BTreeMap<String, Machine> = (0..n)
            .map(|i| (format!("m{i:02}"), Machine { online: true, fails: false, apply_ms: 500, started: None, changed: false, reverted: false }))
            .collect();
        let targets = fleet.keys().map(|id| (id.clone(), 1)).collect();
        Sim { state: State::new(strategy, targets, 0), now: 0, fleet, timeline: vec![], starts: vec![], limit: usize::MAX, most: 0 }
    }

    fn observe(&self) -> BTreeMap<String, Observation> {
        self.fleet
            .iter()
            .map(|(id, m)| {
                let outcome = m.started.filter(|s| s + m.apply_ms <= self.now).map(|s| {
                    let reverting = self.state.machines[id].slot == Slot::Reverting;
                    if m.fails && !reverting {
                        Outcome::Failed { reason: "boom".into() }
                    } else {
                        Outcome::Succeeded { at: s + m.apply_ms }
                    }
                });
                (id.clone(), Observation { online: m.online, outcome, still_current: true, watched_since: 0 })
            })
            .collect()
    }

    fn step(&mut self) -> Actions {
        let observed = self.observe();
        let actions = if self.limit == usize::MAX { self.state.step(&observed, self.now) } else { self.state.step_within(&observed, self.now, self.limit) };
        self.most = self.most.max(actions.start.len()).max(actions.revert.len());
        for id in &actions.start {
            let m = self.fleet.get_mut(id).expect("known");
            assert!(!m.changed, "{id} started twice");
            m.changed = true;
            m.started = Some(self.now);
            self.starts.push((self.now, id.clone()));
        }
        for id in &actions.revert {
            let m = self.fleet.get_mut(id).expect("known");
            assert!(m.changed && !m.reverted, "{id} reverted but not changed, or twice");
            m.reverted = true;
            m.started = Some(self.now);
        }
        let in_transition = self.state.count(|e| matches!(e.slot, Slot::Updating | Slot::Healthy { .. }));
        self.timeline.push((self.now, in_transition, in_transition + self.state.failures()));
        actions
    }

    /// Steps every 100 ms until the rollout stops moving (or `limit`).
    fn run(&mut self, limit: u64) {
        while self.now <= limit {
            self.step();
            if !self.state.phase.active() || self.state.phase == Phase::AwaitingPromotion {
                return;
            }
            self.now += 100;
        }
    }

    fn slots(&self, pred: impl Fn(&Slot) -> bool) -> usize {
        self.state.count(|e| pred(&e.slot))
    }
}

#[test]
fn amounts_parse_as_counts_and_percentages() {
    assert_eq!(Amount::parse("3"), Ok(Amount::Count(3)));
    assert_eq!(Amount::parse("25%"), Ok(Amount::Percent(25)));
    assert!(Amount::parse("150%").is_err());
    assert!(Amount::parse("x").is_err());
    // Caps round up and are at least one; tolerances round down.
    assert_eq!(Amount::Percent(25).cap(30), 8);
    assert_eq!(Amount::Percent(1).cap(10), 1);
    assert_eq!(Amount::Count(0).cap(10), 1);
    assert_eq!(Amount::Percent(10).tolerated(30), 3);
    assert_eq!(Amount::Percent(10).tolerated(9), 0);
    assert_eq!(Amount::Count(2).tolerated(30), 2);
}

#[test]
fn canary_then_promotion_then_batches_within_max_parallel() {
    let mut s = strategy();
    s.canary = 1;
    s.auto_promote = false;
    s.max_parallel = Amount::Percent(25);
    let mut sim = Sim::new(8, s);
    sim.run(100_000);
    assert_eq!(sim.state.phase, Phase::AwaitingPromotion);
    assert_eq!(sim.starts.len(), 1, "only the canary");
    assert!(sim.state.machines.values().any(|e| e.canary && e.slot == Slot::Done));
    // Nothing moves while awaiting promotion.
    sim.now += 5_000;
    assert!(sim.step().start.is_empty());
    sim.state.promote(sim.now).expect("promote");
    sim.run(100_000);
    assert_eq!(sim.state.phase, Phase::Succeeded);
    assert_eq!(sim.slots(|s| *s == Slot::Done), 8);
    assert!(sim.timeline.iter().all(|(_, t, _)| *t <= 2), "25% of 8 = 2 at most: {:?}", sim.timeline);
    assert!(sim.timeline.iter().any(|(_, t, _)| *t == 2), "batches use the room they have");
    let phases: Vec<Phase> = sim.state.phases.iter().map(|(p, _)| *p).collect();
    assert_eq!(phases, [Phase::Canary, Phase::AwaitingPromotion, Phase::Rolling, Phase::Succeeded]);
}

#[test]
fn auto_promote_goes_on_without_a_pause() {
    let mut s = strategy();
    s.canary = 2;
    let mut sim = Sim::new(6, s);
    sim.run(100_000);
    assert_eq!(sim.state.phase, Phase::Succeeded);
    let first_two: BTreeSet<u64> = sim.starts.iter().take(2).map(|(t, _)| *t).collect();
    let later = sim.starts[2].0;
    assert!(first_two.iter().all(|t| *t + 500 <= later), "the rest wait for the canaries: {:?}", sim.starts);
}

#[test]
fn max_unavailable_is_honoured_at_every_step() {
    for (parallel, unavailable) in [(Amount::Count(5), Amount::Count(2)), (Amount::Percent(50), Amount::Percent(20))] {
        let mut s = strategy();
        s.max_parallel = parallel;
        s.max_unavailable = unavailable;
        s.max_failures = Amount::Count(100);
        let mut sim = Sim::new(10, s.clone());
        for id in ["m03", "m07"] {
            sim.fleet.get_mut(id).expect("m").fails = true;
        }
        sim.run(100_000);
        assert_eq!(sim.state.phase, Phase::Succeeded);
        let cap = s.max_unavailable.cap(10);
        // Starting never pushes machines in transition plus failed above the cap.
        let mut by_time: BTreeMap<u64, usize> = BTreeMap::new();
        for (t, _) in &sim.starts {
            *by_time.entry(*t).or_default() += 1;
        }
        for (t, in_transition, unavailable) in &sim.timeline {
            if by_time.contains_key(t) {
                assert!(*unavailable <= cap.max(sim.state.failures()), "at {t}: {in_transition} in transition, {unavailable} unavailable, cap {cap}");
                assert!(*in_transition <= cap);
            }
        }
        assert_eq!(sim.slots(|s| matches!(s, Slot::Failed { .. })), 2);
    }
}

#[test]
fn more_failures_than_allowed_stop_the_rollout() {
    let mut s = strategy();
    s.max_failures = Amount::Count(1);
    let mut sim = Sim::new(10, s);
    for id in ["m00", "m01", "m02"] {
        sim.fleet.get_mut(id).expect("m").fails = true;
    }
    sim.run(100_000);
    assert_eq!(sim.state.phase, Phase::Failed);
    assert!(sim.state.reason.as_deref().is_some_and(|r| r.contains("max_failures 1")));
    let started = sim.starts.len();
    sim.now += 10_000;
    assert!(sim.step().start.is_empty(), "a stopped rollout starts nothing");
    assert_eq!(sim.starts.len(), started);
    assert!(sim.slots(|s| *s == Slot::Waiting) > 0, "the rest were never touched");
}

#[test]
fn auto_revert_puts_back_exactly_the_machines_that_changed() {
    let mut s = strategy();
    s.max_failures = Amount::Count(0);
    s.auto_revert = true;
    s.max_parallel = Amount::Count(3);
    let mut sim = Sim::new(10, s);
    sim.fleet.get_mut("m04").expect("m").fails = true;
    sim.fleet.get_mut("m04").expect("m").apply_ms = 900;
    sim.run(100_000);
    assert_eq!(sim.state.phase, Phase::Reverted);
    let changed: BTreeSet<&String> = sim.fleet.iter().filter(|(_, m)| m.changed).map(|(id, _)| id).collect();
    let reverted: BTreeSet<&String> = sim.fleet.iter().filter(|(_, m)| m.reverted).map(|(id, _)| id).collect();
    assert_eq!(changed, reverted);
    assert!(changed.len() < 10, "untouched machines stay untouched");
    assert!(sim.state.machines.values().all(|e| matches!(e.slot, Slot::Waiting | Slot::Reverted)));
}

#[test]
fn a_machine_without_a_previous_generation_is_reported_not_reverted() {
    let mut s = strategy();
    s.auto_revert = true;
    let mut sim = Sim::new(2, s);
    sim.state.machines.get_mut("m00").expect("m").previous_generation = 0;
    sim.fleet.get_mut("m01").expect("m").fails = true;
    sim.run(100_000);
    assert_eq!(sim.state.phase, Phase::Reverted);
    assert_eq!(sim.state.machines["m00"].slot, Slot::NotReverted);
    assert_eq!(sim.state.machines["m01"].slot, Slot::Reverted);
}

#[test]
fn min_healthy_time_delays_counting_and_the_next_batch() {
    let mut s = strategy();
    s.max_parallel = Amount::Count(1);
    s.min_healthy_time_ms = 2_000;
    let mut sim = Sim::new(3, s);
    sim.run(100_000);
    assert_eq!(sim.state.phase, Phase::Succeeded);
    let gaps: Vec<u64> = sim.starts.windows(2).map(|w| w[1].0 - w[0].0).collect();
    assert!(gaps.iter().all(|g| *g >= 2_500), "apply 500 ms + healthy 2 s before the next: {gaps:?}");
    // Unseen during its healthy time, a machine is not counted until seen
    // again; gone past the healthy deadline, it has failed.
    let mut s = strategy();
    s.min_healthy_time_ms = 2_000;
    s.healthy_deadline_ms = 5_000;
    s.max_failures = Amount::Count(5);
    let mut sim = Sim::new(2, s);
    sim.step();
    sim.now = 600;
    sim.step();
    assert!(matches!(sim.state.machines["m00"].slot, Slot::Healthy { .. }));
    sim.fleet.get_mut("m00").expect("m").online = false;
    sim.fleet.get_mut("m01").expect("m").online = false;
    sim.now = 3_000;
    sim.step();
    assert!(matches!(sim.state.machines["m00"].slot, Slot::Healthy { .. }), "not counted while unseen");
    assert!(matches!(sim.state.machines["m01"].slot, Slot::Healthy { .. }));
    sim.fleet.get_mut("m00").expect("m").online = true;
    sim.now = 3_100;
    sim.step();
    assert_eq!(sim.state.machines["m00"].slot, Slot::Done, "counted once seen again");
    sim.now = 6_000;
    sim.step();
    assert!(matches!(&sim.state.machines["m01"].slot, Slot::Failed { reason } if reason.contains("offline")));
    // One that leaves the generation (rolled back) fails at once.
    let mut s = strategy();
    s.min_healthy_time_ms = 2_000;
    let mut sim = Sim::new(1, s);
    sim.step();
    sim.now = 600;
    sim.step();
    let observed: std::collections::BTreeMap<String, Observation> =
        [("m00".to_string(), Observation { online: true, outcome: None, still_current: false, watched_since: 0 })].into();
    sim.state.step(&observed, 700);
    assert!(matches!(&sim.state.machines["m00"].slot, Slot::Failed { reason } if reason.contains("left the new generation")));
}

#[test]
fn an_offline_machine_neither_counts_nor_blocks_forever() {
    let mut s = strategy();
    s.progress_deadline_ms = 20_000;
    let mut sim = Sim::new(5, s);
    sim.fleet.get_mut("m02").expect("m").online = false;
    sim.run(10_000);
    assert_eq!(sim.state.phase, Phase::Rolling, "it waits for the offline machine");
    assert_eq!(sim.slots(|s| *s == Slot::Done), 4);
    assert_eq!(sim.state.machines["m02"].slot, Slot::Waiting);
    sim.run(100_000);
    assert_eq!(sim.state.phase, Phase::Succeeded);
    assert_eq!(sim.state.machines["m02"].slot, Slot::Skipped, "reported as skipped, not done");
    assert_eq!(sim.slots(|s| *s == Slot::Done), 4);
    assert!(sim.now >= 20_000);
    // Had it come back in time, it would have been updated.
    let mut sim = Sim::new(3, strategy());
    sim.fleet.get_mut("m01").expect("m").online = false;
    sim.run(5_000);
    sim.fleet.get_mut("m01").expect("m").online = true;
    sim.run(100_000);
    assert_eq!(sim.state.machines["m01"].slot, Slot::Done);
}

#[test]
fn a_machine_that_never_reports_fails_at_the_healthy_deadline() {
    let mut s = strategy();
    s.healthy_deadline_ms = 3_000;
    s.max_failures = Amount::Count(5);
    let mut sim = Sim::new(1, s);
    sim.fleet.get_mut("m00").expect("m").apply_ms = u64::MAX / 2;
    sim.run(100_000);
    assert!(matches!(&sim.state.machines["m00"].slot, Slot::Failed { reason } if reason.contains("healthy deadline")));
}

#[test]
fn pause_resume_abort_and_manual_revert() {
    let mut sim = Sim::new(6, strategy());
    sim.step();
    sim.state.paused = true;
    let started = sim.starts.len();
    for _ in 0..20 {
        sim.now += 100;
        assert!(sim.step().start.is_empty(), "paused: nothing starts");
    }
    assert_eq!(sim.starts.len(), started);
    sim.state.paused = false;
    sim.now += 100;
    sim.step();
    assert!(sim.starts.len() > started, "resumed");
    sim.state.abort(sim.now).expect("abort");
    let after_abort = sim.starts.len();
    sim.run(100_000);
    assert_eq!(sim.state.phase, Phase::Aborted);
    assert_eq!(sim.starts.len(), after_abort);
    sim.state.revert(sim.now).expect("revert");
    sim.run(100_000);
    assert_eq!(sim.state.phase, Phase::Reverted);
    let changed = sim.fleet.values().filter(|m| m.changed).count();
    assert_eq!(sim.fleet.values().filter(|m| m.reverted).count(), changed);
    assert!(sim.state.revert(sim.now).is_err());
}

#[test]
fn an_overridden_machine_is_settled_and_never_reverted() {
    let mut state = State::new(strategy(), [("a".to_string(), 1), ("b".to_string(), 1)].into(), 0);
    let online = |outcome: Option<Outcome>| Observation { online: true, outcome, still_current: true, watched_since: 0 };
    let started = state.step(&[("a".to_string(), online(None)), ("b".to_string(), online(None))].into(), 0);
    assert_eq!(started.start, ["a", "b"]);
    for id in ["a", "b"] {
        state.started(id, Ok(2));
    }
    assert!(state.holds("a") && state.holds("b"));
    state.overridden("a", "a/3".into(), 10);
    assert!(!state.holds("a"), "an overridden machine is no longer held");
    assert_eq!(state.machines["a"].slot, Slot::Overridden { deployment: "a/3".into() });
    state.revert(20).expect("revert");
    let actions = state.step(&[("a".to_string(), online(None)), ("b".to_string(), online(None))].into(), 20);
    assert_eq!(actions.revert, ["b"], "only the machine the rollout still held goes back");
}

#[test]
fn a_step_starts_and_reverts_at_most_its_limit_and_the_rollout_still_ends() {
    // What one transaction of the store takes: three machines a step.
    let wide = Strategy { canary: 2, max_parallel: Amount::Count(10), ..strategy() };
    let mut sim = Sim::new(10, wide.clone());
    sim.limit = 3;
    sim.run(60_000);
    assert_eq!(sim.state.phase, Phase::Succeeded);
    assert_eq!(sim.starts.len(), 10, "every machine started once");
    assert_eq!(sim.most, 3, "never more than the limit in one step, and the limit used");

    // Failing machines: the reverts come three at a time, every changed
    // machine reverted once.
    let mut sim = Sim::new(10, Strategy { canary: 0, max_failures: Amount::Count(5), auto_revert: true, ..wide });
    sim.limit = 3;
    for m in sim.fleet.values_mut() {
        m.fails = true;
    }
    sim.run(60_000);
    assert_eq!(sim.state.phase, Phase::Reverted);
    assert!(sim.most <= 3);
    let changed = sim.fleet.values().filter(|m| m.changed).count();
    assert!(changed > 3, "more machines changed than one step reverts: {changed}");
    assert!(sim.fleet.values().all(|m| m.changed == m.reverted), "every changed machine reverted");
}

#[test]
fn a_machine_started_before_the_coordinator_came_back_gets_its_healthy_deadline_from_then() {
    let mut state = State::new(Strategy { healthy_deadline_ms: 10_000, ..strategy() }, [("a".to_string(), 1)].into(), 0);
    let seen = |watched_since| -> BTreeMap<String, Observation> {
        [("a".to_string(), Observation { online: true, outcome: None, still_current: false, watched_since })].into()
    };
    assert_eq!(state.step(&seen(0), 0).start, ["a"]);
    // The coordinator that started it died; its successor serves from 20 s.
    state.step(&seen(20_000), 25_000);
    assert_eq!(state.machines["a"].slot, Slot::Updating, "25 s after the start, 5 s after the successor began: not yet failed");
    state.step(&seen(20_000), 30_500);
    assert!(matches!(state.machines["a"].slot, Slot::Failed { .. }), "10 s after the successor began: failed");
    // Watched all along, the same 25 s fail it.
    let mut watched = State::new(Strategy { healthy_deadline_ms: 10_000, ..strategy() }, [("a".to_string(), 1)].into(), 0);
    watched.step(&seen(0), 0);
    watched.step(&seen(0), 25_000);
    assert!(matches!(watched.machines["a"].slot, Slot::Failed { .. }));
}
