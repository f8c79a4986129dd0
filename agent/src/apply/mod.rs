//! Applying an assignment on this machine, idempotent and safe to
//! interrupt. [`core`] decides (a state machine without I/O); [`Applier`]
//! carries its actions out — the journal and outcome files, secrets and
//! facts, the switch through a [`SystemSwitcher`], the health gate, the
//! wait for the coordinator — and feeds the results back as events.
//!
//! Two files in the agent's state directory make it restartable:
//! `apply.json` (the journal of the apply under way: generation, step, the
//! previous system) and `applied.json` (the last finished generation, its
//! outcome, and whether the coordinator has heard it). A generation is
//! never switched to twice.

pub mod core;
mod records;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use drover_protocol::v1::{Access, Assignment, DeploymentReport, SystemSpec};

use crate::config::AgentConfig;
use crate::system::switch::{SwitchError, SystemSwitcher};
use crate::system::volumes::{NoRestorer, Restorer, Volumes};
use crate::system::{checks, secrets};

use self::core::{Action, Apply, Event, Failure, Millis};
pub use self::core::{Applied, Journal, JournalStep};
pub use records::{Records, APPLIED_FILE, JOURNAL_FILE};

fn failure(e: SwitchError) -> Failure {
    Failure { message: e.to_string(), tail: e.tail().to_string() }
}

/// Carries out applies and reports their progress on a channel.
pub struct Applier {
    pub config: AgentConfig,
    pub switcher: Arc<dyn SystemSwitcher>,
    pub records: Records,
    pub reports: mpsc::UnboundedSender<DeploymentReport>,
    /// When the agent last heard from the coordinator (set by the session).
    pub contact: watch::Receiver<Option<Instant>>,
    /// Has the coordinator roll volumes back for a revert.
    pub restorer: Arc<dyn Restorer>,
    /// True while a switch waits to hear from the coordinator before its
    /// confirmation deadline (the session then leaves a silent one soon).
    pub confirming: Arc<std::sync::atomic::AtomicBool>,
    /// The origin of the core's clock.
    epoch: Instant,
}

/// A volume rollback the apply asks the coordinator for, with where to
/// send the outcome.
#[derive(Debug)]
pub struct RestoreAsk {
    pub generation: u64,
    pub name: String,
    pub reply: tokio::sync::oneshot::Sender<Result<(), String>>,
}

/// How long an apply waits for the coordinator to roll a volume back.
const RESTORE_WAIT: Duration = Duration::from_secs(300);

/// Hands rollback requests to the scheduler, which sends them over the
/// connection when there is one.
pub struct ChannelRestorer(pub mpsc::UnboundedSender<RestoreAsk>);

#[async_trait::async_trait]
impl Restorer for ChannelRestorer {
    async fn restore(&self, generation: u64, name: &str) -> Result<(), String> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.0.send(RestoreAsk { generation, name: name.to_string(), reply }).map_err(|_| "the agent is stopping".to_string())?;
        match tokio::time::timeout(RESTORE_WAIT, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err("the agent is stopping".into()),
            Err(_) => Err(format!("the coordinator did not roll the volume back within {}", humantime::format_duration(RESTORE_WAIT))),
        }
    }
}

impl Applier {
    pub fn with_switcher(
        config: AgentConfig,
        switcher: Arc<dyn SystemSwitcher>,
        reports: mpsc::UnboundedSender<DeploymentReport>,
        contact: watch::Receiver<Option<Instant>>,
    ) -> Self {
        Applier {
            records: Records::new(&config.state_dir),
            switcher,
            config,
            reports,
            contact,
            restorer: Arc::new(NoRestorer),
            confirming: Arc::default(),
            epoch: Instant::now(),
        }
    }

    fn now(&self) -> Millis {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn core(&self) -> Apply {
        Apply::new(u64::try_from(self.config.confirm_deadline.as_millis()).unwrap_or(u64::MAX))
    }

    /// Applies `assignment` and its SSH access from the start.
    pub async fn apply(&self, assignment: Assignment, access: Access) -> Applied {
        use tracing::Instrument;
        let span = tracing::info_span!("apply", generation = assignment.generation);
        let journal = Journal {
            generation: assignment.generation,
            step: JournalStep::Started,
            previous_system: self.switcher.current(&assignment.system),
            system: assignment.system.clone(),
            checks: assignment.checks.clone(),
            health_deadline_ms: assignment.health_deadline_ms,
            goal: assignment.goal,
            force_switch: assignment.force_switch,
            reboot: assignment.reboot,
            boot_before: None,
            expected_boot: None,
        };
        let outcome = self.run(Event::Begin { journal }, Some((&assignment, &access))).instrument(span).await;
        // A fresh apply always ends in an outcome; the fallback only guards
        // against a driver that stopped early.
        outcome.unwrap_or_else(|| Applied {
            generation: assignment.generation,
            step: drover_protocol::v1::DeployStep::Failed,
            message: "the apply stopped without an outcome".into(),
            output_tail: String::new(),
            system_path: None,
            reported: false,
            volumes: Vec::new(),
        })
    }

    /// Finishes an apply the agent was stopped in. Returns `None` when the
    /// apply had not reached the switch (it starts again from the latest
    /// assignment).
    pub async fn resume(&self, journal: Journal) -> Option<Applied> {
        use tracing::Instrument;
        let span = tracing::info_span!("apply", generation = journal.generation);
        let current = self.switcher.current(&journal.system);
        self.run(Event::Resume { journal, current, now: self.now() }, None).instrument(span).await
    }

    /// Feeds `first` to a fresh core and carries out what it asks until the
    /// apply is over.
    async fn run(&self, first: Event, assignment: Option<(&Assignment, &Access)>) -> Option<Applied> {
        let mut core = self.core();
        let mut journal: Option<Journal> = match &first {
            Event::Begin { journal } | Event::Resume { journal, .. } => Some(journal.clone()),
            _ => None,
        };
        let mut pending: VecDeque<Action> = core.handle(first).into();
        while let Some(action) = pending.pop_front() {
            let next = match action {
                Action::SaveJournal(saved) => {
                    let outcome = self.records.save_journal(&saved);
                    journal = Some(saved);
                    if let Err(why) = outcome {
                        let instead = core.handle(Event::JournalNotSaved(why));
                        if !instead.is_empty() {
                            pending.clear();
                            pending.extend(instead);
                        }
                    }
                    None
                }
                Action::Report(mut report) => {
                    tracing::info!(generation = report.generation, step = ?report.step, message = %report.message, "apply");
                    if report.step == drover_protocol::v1::DeployStep::VolumesAttached {
                        report.volumes = self.volumes().report_states();
                    }
                    let _ = self.reports.send(report);
                    None
                }
                Action::WriteFiles => Some(Event::FilesWritten(self.write_files(assignment))),
                Action::AttachVolumes => {
                    let (generation, volumes) = assignment.map(|(a, _)| (a.generation, a.volumes.clone())).unwrap_or_default();
                    Some(Event::VolumesAttached(self.volumes().attach_for(generation, &volumes, self.restorer.as_ref()).await))
                }
                Action::Prepare => {
                    let spec = journal.as_ref()?.system.clone();
                    Some(Event::Prepared(self.switcher.prepare(&spec).await.map(drop).map_err(failure)))
                }
                Action::Switch => {
                    let j = journal.as_ref()?;
                    let spec = j.system.clone();
                    let result = self.switcher.switch(&spec, j.goal, j.force_switch).await.map_err(failure);
                    Some(Event::Switched { result, now: self.now(), current: self.switcher.current(&spec) })
                }
                Action::RunGate { deadline_ms } => {
                    let checks = journal.as_ref().map(|j| j.checks.clone()).unwrap_or_default();
                    let deadline = Duration::from_millis(deadline_ms);
                    Some(Event::Gate(checks::gate(&checks, deadline, &self.config.systemctl, &self.config.runtime_dir).await))
                }
                Action::AwaitContact { since, until } => Some(self.await_contact(since, until, journal.as_ref().map(|j| &j.system)).await),
                Action::RollBack { previous } => {
                    let j = journal.as_ref()?;
                    let spec = j.system.clone();
                    let result = self.switcher.rollback(&spec, previous.as_deref(), j.goal).await.map_err(failure);
                    Some(Event::RolledBack { result, current: self.switcher.current(&spec) })
                }
                Action::Finish(mut applied) => {
                    tracing::info!(generation = applied.generation, step = ?applied.step, message = %applied.message, "apply finished");
                    // The outcome says what became of the volumes, so that
                    // the coordinator records a format with it.
                    applied.volumes = self.volumes().report_states();
                    self.records.finish(&applied);
                    if applied.step == drover_protocol::v1::DeployStep::Succeeded {
                        if let Some(j) = &journal {
                            self.prune(j).await;
                        }
                    }
                    return Some(applied);
                }
                Action::Restart => {
                    self.records.drop_journal();
                    return None;
                }
                Action::RecordBoot => {
                    let spec = journal.as_ref()?.system.clone();
                    Some(Event::BootRecorded { boot: self.switcher.boot(), running: self.switcher.current(&spec), boot_default: self.switcher.boot_default() })
                }
                Action::Reboot => {
                    let before = journal.as_ref().and_then(|j| j.boot_before.clone());
                    Some(self.reboot(before).await)
                }
                Action::CheckBoot => Some(Event::Booted(self.switcher.boot())),
            };
            if let Some(event) = next {
                pending.extend(core.handle(event));
            }
        }
        None
    }

    /// Reboots, then waits until the machine is in another boot than
    /// `before` or the reboot deadline passes. On a real machine the agent
    /// is stopped by the reboot and the restarted agent resumes from the
    /// journal instead.
    async fn reboot(&self, before: Option<String>) -> Event {
        if let Err(e) = self.switcher.reboot().await {
            return Event::RebootFailed(failure(e));
        }
        let deadline = Instant::now() + self.config.reboot_deadline;
        loop {
            let boot = self.switcher.boot();
            if boot.boot_id != before || Instant::now() >= deadline {
                return Event::Booted(boot);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Old system generations go after a successful deployment; the
    /// running, booted and pending systems and the rollback target stay.
    async fn prune(&self, journal: &Journal) {
        if !journal.goal.sets_profile() {
            return;
        }
        let link = &self.config.current_system;
        let protect: Vec<String> = [
            self.switcher.current(&journal.system),
            crate::system::boot::booted_system(link),
            crate::system::boot::resolve_profile(&self.config.system_profile),
            journal.previous_system.clone(),
        ]
        .into_iter()
        .flatten()
        .collect();
        match self.switcher.prune(&journal.system, self.config.keep_generations, &protect).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, keep = self.config.keep_generations, "old system generations deleted and collected"),
            Err(e) => tracing::warn!(error = %e, "old system generations could not be deleted; they stay until the next deployment"),
        }
    }

    /// The machine's volumes, as this agent mounts them.
    pub fn volumes(&self) -> Volumes {
        Volumes::new(self.config.volume_root.clone(), &self.config.state_dir, self.config.device_wait)
    }

    /// Secrets, facts and SSH access of the assignment, written before the
    /// switch; returns a summary.
    fn write_files(&self, assignment: Option<(&Assignment, &Access)>) -> Result<String, String> {
        let Some((assignment, access)) = assignment else {
            return Err("no assignment to write".into());
        };
        let runtime = &self.config.runtime_dir;
        secrets::write_secrets(runtime, &assignment.secrets)
            .and_then(|()| secrets::write_facts(runtime, &assignment.facts_json))
            .and_then(|()| secrets::write_access(runtime, access))
            .map_err(|e| e.to_string())?;
        let keys: usize = access.authorized_keys.iter().map(|l| l.keys.len()).sum();
        Ok(format!("{} secret(s), facts and {keys} SSH key(s) written", assignment.secrets.len()))
    }

    /// Waits until the agent hears from the coordinator after `since`, for
    /// at most until `until` (both on the core's clock).
    async fn await_contact(&self, since: Millis, until: Millis, system: Option<&SystemSpec>) -> Event {
        let since_at = self.epoch + Duration::from_millis(since);
        let deadline = self.epoch + Duration::from_millis(until);
        let mut contact = self.contact.clone();
        self.confirming.store(true, std::sync::atomic::Ordering::SeqCst);
        let heard = tokio::time::timeout_at(deadline, contact.wait_for(|c| c.is_some_and(|t| t > since_at))).await;
        self.confirming.store(false, std::sync::atomic::Ordering::SeqCst);
        match heard {
            Ok(Ok(at)) => {
                let at = at.map(|t| t.duration_since(self.epoch).as_millis()).unwrap_or_default();
                let current = system.and_then(|s| self.switcher.current(s));
                Event::Contact { at: u64::try_from(at).unwrap_or(u64::MAX), current }
            }
            _ => Event::NoContact { now: self.now() },
        }
    }
}
