//! The apply as a state machine without I/O: it takes events (what the
//! driver observed or finished) and returns actions (what the driver must
//! do next). It never reads the clock, touches a file or runs a program:
//! times come in with the events, so every interruption point is tested
//! with simulated time (`apply/tests.rs`).
//!
//! The sequence: record "applying N" (the journal) → write secrets, facts
//! and SSH access → attach volumes (mount them, formatting only blank
//! ones) → prepare (fetch the closure) → journal "switching" →
//! switch → journal "switched" → health gate → wait for contact with the
//! coordinator within the confirmation deadline → Succeeded. A failure
//! before the switch leaves the system as it was; one after it returns to
//! the exact system that ran before. An agent restarted mid-apply resumes
//! from the journal: before the switch it starts again; during the switch
//! it returns to the previous system (or, if nothing changed, reports the
//! apply failed); after the switch it runs the health gate again.

use serde::{Deserialize, Serialize};

use drover_protocol::v1::{DeployStep, DeploymentReport, HealthCheck, SwitchGoal, SystemSpec, VolumeState};

use crate::switched::{BootState, Switched};
use crate::text::tail;

/// Milliseconds on the driver's monotonic clock.
pub type Millis = u64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JournalStep {
    /// Before the switch: nothing about the system has changed.
    Started,
    /// The switch is under way.
    Switching,
    /// The switch finished; the health gate remains.
    Switched,
    /// Healthy, and rebooting to verify what boots.
    Rebooting,
}

/// The apply under way, as kept on disk. Secrets are not kept here (they
/// live only in the runtime directory).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Journal {
    pub generation: u64,
    pub step: JournalStep,
    pub previous_system: Option<String>,
    pub system: SystemSpec,
    pub checks: Vec<HealthCheck>,
    pub health_deadline_ms: u64,
    /// What the switch does with the system.
    #[serde(default)]
    pub goal: SwitchGoal,
    #[serde(default)]
    pub force_switch: bool,
    /// Reboot once healthy and verify the boot.
    #[serde(default)]
    pub reboot: bool,
    /// The boot id before the reboot.
    #[serde(default)]
    pub boot_before: Option<String>,
    /// The system the reboot must come back on.
    #[serde(default)]
    pub expected_boot: Option<String>,
}

/// The last finished generation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    pub generation: u64,
    pub step: DeployStep,
    pub message: String,
    pub output_tail: String,
    pub system_path: Option<String>,
    /// Whether the coordinator acknowledged this outcome.
    pub reported: bool,
    /// The volumes as the apply left them (filled in by the driver): the
    /// coordinator records a format with the outcome.
    #[serde(default)]
    pub volumes: Vec<VolumeState>,
}

impl Applied {
    pub fn report(&self) -> DeploymentReport {
        DeploymentReport {
            generation: self.generation,
            step: self.step,
            message: self.message.clone(),
            output_tail: self.output_tail.clone(),
            system_path: self.system_path.clone(),
            volumes: self.volumes.clone(),
        }
    }
}

/// A step that failed: what to say, and the command output's tail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub message: String,
    pub tail: String,
}

/// What the driver observed or finished.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A new assignment to apply; `current` is the system running now.
    Begin { journal: Journal },
    /// Secrets, facts and SSH access were written (a summary), or not.
    FilesWritten(Result<String, String>),
    /// The assignment's volumes are mounted (a summary), or why not.
    VolumesAttached(Result<String, String>),
    /// What the switch needs was fetched, or not.
    Prepared(Result<(), Failure>),
    /// The switch ended at `now`; `current` is the system running after it.
    Switched { result: Result<Switched, Failure>, now: Millis, current: Option<String> },
    /// The health gate passed, or failed with a reason.
    Gate(Result<(), String>),
    /// The coordinator was heard from at `at` (after the switch, at the
    /// driver's clock resolution); `current` runs now.
    Contact { at: Millis, current: Option<String> },
    /// No contact came by the deadline; it is `now`.
    NoContact { now: Millis },
    /// The rollback ended; `current` is the system running after it.
    RolledBack { result: Result<String, Failure>, current: Option<String> },
    /// The agent restarted and found `journal`; `current` runs now.
    Resume { journal: Journal, current: Option<String>, now: Millis },
    /// The boot before a reboot, with the system running now and the boot
    /// default.
    BootRecorded { boot: BootState, running: Option<String>, boot_default: Option<String> },
    /// After the reboot (or at its deadline, or when an agent restarted
    /// during it): the boot the machine is in now.
    Booted(BootState),
    /// The reboot command failed.
    RebootFailed(Failure),
    /// The last [`Action::SaveJournal`] failed (a full disk). Before the
    /// switch the apply ends, failed, and the actions returned replace what
    /// was still to do; after it (nothing returned) the apply goes on: the
    /// saved journal still says "switching", so a restart returns to the
    /// previous system.
    JournalNotSaved(String),
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Write the journal (atomically) before going on.
    SaveJournal(Journal),
    /// Tell the coordinator how far the apply is.
    Report(DeploymentReport),
    WriteFiles,
    AttachVolumes,
    Prepare,
    Switch,
    /// Run the health checks until they pass or `deadline_ms` passes.
    RunGate {
        deadline_ms: u64,
    },
    /// Wait for contact with the coordinator after `since`, until `until`.
    AwaitContact {
        since: Millis,
        until: Millis,
    },
    /// Return to `previous` (the exact system that ran before).
    RollBack {
        previous: Option<String>,
    },
    /// Record the outcome and drop the journal; the apply is over.
    Finish(Applied),
    /// Drop the journal; the apply had not reached the switch and starts
    /// again from the newest assignment.
    Restart,
    /// Read the boot id, the running system and the boot default.
    RecordBoot,
    /// Reboot, and wait (up to the agent's reboot deadline) for a new boot.
    Reboot,
    /// Read the boot the machine is in now (after a restart).
    CheckBoot,
}

/// Where the apply stands.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Stage {
    Idle,
    WritingFiles,
    AttachingVolumes,
    Preparing,
    Switching,
    Gate,
    Confirming,
    RollingBack { reason: String },
    RecordingBoot,
    Rebooting,
    Done,
}

/// One apply's state machine.
#[derive(Debug, Clone)]
pub struct Apply {
    journal: Option<Journal>,
    stage: Stage,
    /// Output of the switch, kept for the final report.
    tail: String,
    switched_at: Millis,
    confirm_deadline_ms: u64,
}

fn report(generation: u64, step: DeployStep, message: impl Into<String>, tail: &str, system_path: Option<String>) -> Action {
    Action::Report(DeploymentReport { generation, step, message: message.into(), output_tail: tail.to_string(), system_path, volumes: Vec::new() })
}

impl Apply {
    pub fn new(confirm_deadline_ms: u64) -> Self {
        Apply { journal: None, stage: Stage::Idle, tail: String::new(), switched_at: 0, confirm_deadline_ms }
    }

    /// Whether the apply is over (after [`Action::Finish`] or [`Action::Restart`]).
    pub fn done(&self) -> bool {
        self.stage == Stage::Done
    }

    fn generation(&self) -> u64 {
        self.journal.as_ref().map(|j| j.generation).unwrap_or(0)
    }

    fn previous(&self) -> Option<String> {
        self.journal.as_ref().and_then(|j| j.previous_system.clone())
    }

    /// The journal at its next step, to save (none before Begin or Resume).
    fn set_step(&mut self, step: JournalStep) -> Option<Action> {
        self.journal.as_mut().map(|j| {
            j.step = step;
            Action::SaveJournal(j.clone())
        })
    }

    fn finish(&mut self, step: DeployStep, message: String, tail: String, system_path: Option<String>) -> Vec<Action> {
        self.stage = Stage::Done;
        let applied = Applied { generation: self.generation(), step, message, output_tail: tail, system_path, reported: false, volumes: Vec::new() };
        vec![Action::Finish(applied)]
    }

    /// A success, or first a reboot when the journal asks for one.
    fn succeed(&mut self, message: String, tail: String, current: Option<String>) -> Vec<Action> {
        if self.journal.as_ref().is_some_and(|j| j.reboot) {
            self.tail = tail;
            self.stage = Stage::RecordingBoot;
            return vec![Action::RecordBoot];
        }
        self.finish(DeployStep::Succeeded, message, tail, current)
    }

    /// What the reboot came back to.
    fn verify_boot(&mut self, boot: BootState) -> Vec<Action> {
        let (before, expected) = self.journal.as_ref().map(|j| (j.boot_before.clone(), j.expected_boot.clone())).unwrap_or_default();
        let tail = std::mem::take(&mut self.tail);
        let Some(now) = boot.boot_id.clone() else {
            return self.finish(DeployStep::Failed, "the boot id cannot be read (boot_id_file); the reboot is not verified".into(), tail, boot.booted);
        };
        if before.as_deref() == Some(now.as_str()) {
            return self.finish(DeployStep::Failed, "the machine did not reboot (its boot id did not change)".into(), tail, boot.booted);
        }
        let expected_text = expected.clone().unwrap_or_else(|| "(unknown)".into());
        match (&boot.booted, &expected) {
            (Some(booted), Some(expected)) if booted == expected => {
                self.finish(DeployStep::Succeeded, format!("rebooted and verified: booted {booted} (boot {now})"), tail, boot.booted.clone())
            }
            (booted, _) => self.finish(
                DeployStep::Failed,
                format!("the machine came back on {} instead of {expected_text}, the system it was given", booted.as_deref().unwrap_or("an unknown system")),
                tail,
                boot.booted.clone(),
            ),
        }
    }

    fn roll_back(&mut self, reason: String) -> Vec<Action> {
        let g = self.generation();
        let action = report(g, DeployStep::RollingBack, reason.clone(), &self.tail, None);
        self.stage = Stage::RollingBack { reason };
        vec![action, Action::RollBack { previous: self.previous() }]
    }

    fn gate(&mut self) -> Vec<Action> {
        let (generation, checks, deadline_ms) = self.journal.as_ref().map(|j| (j.generation, j.checks.len(), j.health_deadline_ms)).unwrap_or_default();
        self.stage = Stage::Gate;
        vec![report(generation, DeployStep::HealthChecking, format!("{checks} check(s)"), "", None), Action::RunGate { deadline_ms }]
    }

    /// Takes one event and says what to do next. Events that do not fit the
    /// stage (a driver bug) change nothing and ask for nothing.
    pub fn handle(&mut self, event: Event) -> Vec<Action> {
        let g = self.generation();
        match (self.stage.clone(), event) {
            (Stage::Idle, Event::Begin { journal }) => {
                let generation = journal.generation;
                self.journal = Some(Journal { step: JournalStep::Started, ..journal });
                self.stage = Stage::WritingFiles;
                let mut actions = vec![report(generation, DeployStep::Received, "applying", "", None)];
                actions.extend(self.set_step(JournalStep::Started));
                actions.push(Action::WriteFiles);
                actions
            }
            (Stage::WritingFiles, Event::FilesWritten(Ok(summary))) => {
                self.stage = Stage::AttachingVolumes;
                vec![report(g, DeployStep::SecretsWritten, summary, "", None), Action::AttachVolumes]
            }
            (Stage::AttachingVolumes, Event::VolumesAttached(Ok(summary))) => {
                self.stage = Stage::Preparing;
                vec![report(g, DeployStep::VolumesAttached, summary, "", None), Action::Prepare]
            }
            (Stage::AttachingVolumes, Event::VolumesAttached(Err(e))) => {
                let previous = self.previous();
                self.finish(DeployStep::Failed, format!("volumes not attached: {e}; the system was not changed"), String::new(), previous)
            }
            (Stage::WritingFiles, Event::FilesWritten(Err(e))) => {
                let previous = self.previous();
                self.finish(DeployStep::Failed, format!("secrets and facts not written: {e}; the system was not changed"), String::new(), previous)
            }
            (Stage::Preparing, Event::Prepared(Ok(()))) => {
                self.stage = Stage::Switching;
                let mut actions: Vec<Action> = self.set_step(JournalStep::Switching).into_iter().collect();
                actions.extend([report(g, DeployStep::Switching, "switching the system", "", None), Action::Switch]);
                actions
            }
            (Stage::Preparing, Event::Prepared(Err(f))) => {
                let previous = self.previous();
                self.finish(DeployStep::Failed, format!("{}; the system was not changed", f.message), f.tail, previous)
            }
            (Stage::Switching, Event::Switched { result: Ok(Switched::Installed { tail, inhibited }), current, .. }) => {
                // Nothing runs differently until a reboot: no gate, no
                // confirmation, nothing to roll back.
                let pending = match self.journal.as_ref().map(|j| &j.system) {
                    Some(SystemSpec::Closure { store_path, .. }) => store_path.clone(),
                    _ => "the new system".to_string(),
                };
                let message = if inhibited {
                    format!("NixOS' pre-switch checks refused to switch; installed for the next boot instead: reboot required to run {pending} (--force-switch overrides the checks)")
                } else {
                    format!("installed for the next boot: reboot required to run {pending}")
                };
                let mut actions = vec![report(g, DeployStep::Switched, message.clone(), &tail, current.clone())];
                actions.extend(self.succeed(message, tail, current));
                actions
            }
            (Stage::Switching, Event::Switched { result: Ok(Switched::Reported { tail }), current, .. }) => {
                let message = "dry-activate: nothing was changed; the output says what a switch would start, stop, restart and reload".to_string();
                self.finish(DeployStep::Succeeded, message, tail, current)
            }
            (Stage::Switching, Event::Switched { result: Ok(Switched::UnitsFailed { tail, units }), current, .. }) => {
                self.tail = tail;
                let names = if units.is_empty() { "(not named in the output)".to_string() } else { units.join(", ") };
                let mut actions = vec![report(g, DeployStep::Switched, "switched, but some units failed", &self.tail, current)];
                actions.extend(self.roll_back(format!("health gate failed: units failed to start after the switch: {names}")));
                actions
            }
            (Stage::Switching, Event::Switched { result: Ok(Switched::Activated { tail }), now, current }) => {
                self.tail = tail;
                self.switched_at = now;
                let mut actions: Vec<Action> = self.set_step(JournalStep::Switched).into_iter().collect();
                actions.push(report(g, DeployStep::Switched, "switched", &self.tail, current));
                actions.extend(self.gate());
                actions
            }
            (Stage::Switching, Event::Switched { result: Err(f), .. }) => {
                self.tail = f.tail;
                self.roll_back(f.message)
            }
            (Stage::Gate, Event::Gate(Ok(()))) => {
                self.stage = Stage::Confirming;
                vec![Action::AwaitContact { since: self.switched_at, until: self.switched_at + self.confirm_deadline_ms }]
            }
            (Stage::Gate, Event::Gate(Err(why))) => self.roll_back(why),
            (Stage::Confirming, Event::Contact { at, current }) if at >= self.switched_at && at <= self.switched_at + self.confirm_deadline_ms => {
                let tail = std::mem::take(&mut self.tail);
                self.succeed("healthy".into(), tail, current)
            }
            (Stage::RecordingBoot, Event::BootRecorded { boot, running, boot_default }) => {
                let goal = self.journal.as_ref().map(|j| j.goal).unwrap_or_default();
                // After `switch` the new system runs and is the boot
                // default; after `boot` or `test` the boot default boots.
                let expected = if goal == SwitchGoal::Switch { running.or(boot_default) } else { boot_default };
                let mut actions: Vec<Action> = Vec::new();
                if let Some(j) = self.journal.as_mut() {
                    j.boot_before = boot.boot_id.clone();
                    j.expected_boot = expected.clone();
                }
                actions.extend(self.set_step(JournalStep::Rebooting));
                self.stage = Stage::Rebooting;
                let message = format!("rebooting; expecting {} to boot", expected.as_deref().unwrap_or("(unknown)"));
                actions.extend([report(g, DeployStep::Rebooting, message, "", None), Action::Reboot]);
                actions
            }
            (Stage::Rebooting, Event::Booted(boot)) => self.verify_boot(boot),
            (Stage::Rebooting, Event::RebootFailed(f)) => self.finish(DeployStep::Failed, format!("the reboot failed: {}", f.message), f.tail, None),
            (Stage::Confirming, Event::Contact { .. } | Event::NoContact { .. }) => self.roll_back(format!(
                "the coordinator was not reached within {} after the switch",
                humantime::format_duration(std::time::Duration::from_millis(self.confirm_deadline_ms))
            )),
            (Stage::RollingBack { reason }, Event::RolledBack { result, current }) => {
                let mut text = std::mem::take(&mut self.tail);
                match result {
                    Ok(out) => {
                        text.push_str(&out);
                        self.finish(DeployStep::RolledBack, format!("rolled back: {reason}"), tail(&text), current)
                    }
                    Err(f) => {
                        text.push_str(&f.tail);
                        self.finish(DeployStep::Failed, format!("{reason}; rollback failed: {}", f.message), tail(&text), current)
                    }
                }
            }
            (Stage::WritingFiles | Stage::Switching, Event::JournalNotSaved(why)) => {
                let previous = self.previous();
                self.finish(DeployStep::Failed, format!("the apply could not be recorded: {why}; the system was not changed"), String::new(), previous)
            }
            (Stage::Idle, Event::Resume { journal, current, now }) => self.resume(journal, current, now),
            _ => Vec::new(),
        }
    }

    fn resume(&mut self, journal: Journal, current: Option<String>, now: Millis) -> Vec<Action> {
        let generation = journal.generation;
        let step = journal.step;
        let previous = journal.previous_system.clone();
        self.journal = Some(journal);
        match step {
            JournalStep::Started => {
                self.stage = Stage::Done;
                vec![report(generation, DeployStep::Resumed, "agent restarted before the switch; applying again", "", None), Action::Restart]
            }
            JournalStep::Switching if current.is_some() && current == previous => {
                let mut actions = vec![report(generation, DeployStep::Resumed, "agent restarted during the switch; the system was not changed", "", None)];
                actions.extend(self.finish(
                    DeployStep::Failed,
                    "the agent restarted during the switch, before the system changed".into(),
                    String::new(),
                    current,
                ));
                actions
            }
            JournalStep::Switching => {
                let mut actions =
                    vec![report(generation, DeployStep::Resumed, "agent restarted during the switch; returning to the previous system", "", None)];
                actions.extend(self.roll_back("the agent restarted during the switch".into()));
                actions
            }
            JournalStep::Rebooting => {
                self.stage = Stage::Rebooting;
                vec![report(generation, DeployStep::Resumed, "agent restarted during the reboot; verifying what booted", "", None), Action::CheckBoot]
            }
            JournalStep::Switched => {
                // The confirmation deadline counts from now: the agent was
                // not running to hear the coordinator before.
                self.switched_at = now;
                let mut actions = vec![report(generation, DeployStep::Resumed, "agent restarted after the switch; checking health again", "", None)];
                actions.extend(self.gate());
                actions
            }
        }
    }
}
