//! Applying an assignment on this machine, idempotent and safe to interrupt:
//! record "applying N" → write secrets and facts → fetch → switch → health
//! gate → Succeeded, or roll back to the exact system that ran before and
//! report RolledBack with the reason and the output tail.
//!
//! Two files in the agent's state directory make it restartable:
//! `apply.json` (the journal of the apply under way: generation, step, the
//! previous system) and `applied.json` (the last finished generation, its
//! outcome, and whether the coordinator has heard it). [`resume`] finishes an
//! apply the agent was killed in: before the switch it starts again; during
//! the switch it returns to the previous system; after the switch it runs the
//! health gate again. A generation is never switched to twice.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use drover_protocol::v1::{Access, Assignment, DeployStep, DeploymentReport, HealthCheck, SystemSpec};

use crate::config::AgentConfig;
use crate::system::{checks, secrets, switch::NixSwitcher};

pub const JOURNAL_FILE: &str = "apply.json";
pub const APPLIED_FILE: &str = "applied.json";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JournalStep {
    /// Before the switch: nothing about the system has changed.
    Started,
    /// The switch is under way.
    Switching,
    /// The switch finished; the health gate remains.
    Switched,
}

/// The apply under way. Secrets are not kept here (they live only in the
/// runtime directory).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Journal {
    pub generation: u64,
    pub step: JournalStep,
    pub previous_system: Option<String>,
    pub system: SystemSpec,
    pub checks: Vec<HealthCheck>,
    pub health_deadline_ms: u64,
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
}

impl Applied {
    pub fn report(&self) -> DeploymentReport {
        DeploymentReport {
            generation: self.generation,
            step: self.step,
            message: self.message.clone(),
            output_tail: self.output_tail.clone(),
            system_path: self.system_path.clone(),
        }
    }
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Option<T> {
    let text = std::fs::read_to_string(path).ok()?;
    match serde_json::from_str(&text) {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "unreadable record ignored");
            None
        }
    }
}

fn write_json<T: Serialize>(path: &Path, value: &T) {
    let text = serde_json::to_vec_pretty(value).expect("records serialise");
    if let Err(e) = drover_net::identity::write_atomic(path, &text, 0o600) {
        tracing::error!(path = %path.display(), error = %e, "cannot record the apply state");
    }
}

/// Reads and writes the apply records in the state directory.
#[derive(Clone)]
pub struct Records {
    dir: PathBuf,
}

impl Records {
    pub fn new(dir: &Path) -> Self {
        Records { dir: dir.to_path_buf() }
    }

    pub fn journal(&self) -> Option<Journal> {
        read_json(&self.dir.join(JOURNAL_FILE))
    }

    fn save_journal(&self, journal: &Journal) {
        write_json(&self.dir.join(JOURNAL_FILE), journal);
    }

    pub fn applied(&self) -> Option<Applied> {
        read_json(&self.dir.join(APPLIED_FILE))
    }

    /// The last finished generation (0 when none).
    pub fn last_generation(&self) -> u64 {
        self.applied().map(|a| a.generation).unwrap_or(0)
    }

    pub fn mark_reported(&self, generation: u64) {
        if let Some(mut a) = self.applied() {
            if a.generation == generation && !a.reported {
                a.reported = true;
                write_json(&self.dir.join(APPLIED_FILE), &a);
            }
        }
    }

    /// Records the outcome, then drops the journal.
    fn finish(&self, applied: &Applied) {
        write_json(&self.dir.join(APPLIED_FILE), applied);
        let _ = std::fs::remove_file(self.dir.join(JOURNAL_FILE));
    }
}

/// Carries out applies and reports their progress on a channel.
pub struct Applier {
    pub config: AgentConfig,
    pub switcher: NixSwitcher,
    pub records: Records,
    pub reports: mpsc::UnboundedSender<DeploymentReport>,
    /// When the agent last heard from the coordinator (set by the session).
    pub contact: watch::Receiver<Option<Instant>>,
}

impl Applier {
    pub fn new(
        config: AgentConfig,
        reports: mpsc::UnboundedSender<DeploymentReport>,
        contact: watch::Receiver<Option<Instant>>,
    ) -> Self {
        Applier {
            records: Records::new(&config.state_dir),
            switcher: NixSwitcher::new(config.clone()),
            config,
            reports,
            contact,
        }
    }

    /// Waits until the agent has heard from the coordinator after `since`,
    /// for at most the confirmation deadline counted from `since`.
    async fn confirmed_since(&self, since: Instant) -> bool {
        let mut contact = self.contact.clone();
        let deadline = since + self.config.confirm_deadline;
        tokio::time::timeout_at(deadline, contact.wait_for(|c| c.is_some_and(|t| t > since)))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    fn progress(&self, generation: u64, step: DeployStep, message: impl Into<String>, tail: &str, system_path: Option<String>) {
        let message = message.into();
        tracing::info!(generation, ?step, %message, "apply");
        let _ = self.reports.send(DeploymentReport {
            generation,
            step,
            message,
            output_tail: tail.to_string(),
            system_path,
        });
    }

    fn finish(&self, generation: u64, step: DeployStep, message: String, output_tail: String, system_path: Option<String>) -> Applied {
        tracing::info!(generation, ?step, %message, "apply finished");
        let applied = Applied { generation, step, message, output_tail, system_path, reported: false };
        self.records.finish(&applied);
        applied
    }

    /// Applies `assignment` and its SSH access from the start.
    pub async fn apply(&self, assignment: Assignment, access: Access) -> Applied {
        use tracing::Instrument;
        let span = tracing::info_span!("apply", generation = assignment.generation);
        self.apply_inner(assignment, access).instrument(span).await
    }

    async fn apply_inner(&self, assignment: Assignment, access: Access) -> Applied {
        let generation = assignment.generation;
        self.progress(generation, DeployStep::Received, "applying", "", None);
        let mut journal = Journal {
            generation,
            step: JournalStep::Started,
            previous_system: self.switcher.current(&assignment.system),
            system: assignment.system.clone(),
            checks: assignment.checks.clone(),
            health_deadline_ms: assignment.health_deadline_ms,
        };
        self.records.save_journal(&journal);
        let runtime = &self.config.runtime_dir;
        if let Err(e) = secrets::write_secrets(runtime, &assignment.secrets)
            .and_then(|()| secrets::write_facts(runtime, &assignment.facts_json))
            .and_then(|()| secrets::write_access(runtime, &access))
        {
            return self.finish(generation, DeployStep::Failed, format!("secrets and facts not written: {e}; the system was not changed"), String::new(), journal.previous_system);
        }
        let keys: usize = access.authorized_keys.iter().map(|l| l.keys.len()).sum();
        self.progress(generation, DeployStep::SecretsWritten, format!("{} secret(s), facts and {keys} SSH key(s) written", assignment.secrets.len()), "", None);
        if let Err(e) = self.switcher.prepare(&assignment.system).await {
            return self.finish(generation, DeployStep::Failed, format!("{e}; the system was not changed"), e.tail().to_string(), journal.previous_system);
        }
        journal.step = JournalStep::Switching;
        self.records.save_journal(&journal);
        self.progress(generation, DeployStep::Switching, "switching the system", "", None);
        let tail = match self.switcher.switch(&assignment.system).await {
            Ok(tail) => tail,
            Err(e) => return self.roll_back(&journal, e.to_string(), e.tail().to_string()).await,
        };
        journal.step = JournalStep::Switched;
        self.records.save_journal(&journal);
        let system_path = self.switcher.current(&assignment.system);
        self.progress(generation, DeployStep::Switched, "switched", &tail, system_path.clone());
        self.gate(&journal, tail).await
    }

    async fn gate(&self, journal: &Journal, tail: String) -> Applied {
        let generation = journal.generation;
        let switched_at = Instant::now();
        self.progress(generation, DeployStep::HealthChecking, format!("{} check(s)", journal.checks.len()), "", None);
        let deadline = Duration::from_millis(journal.health_deadline_ms);
        if let Err(why) = checks::gate(&journal.checks, deadline, &self.config.systemctl, &self.config.runtime_dir).await {
            return self.roll_back(journal, why, tail).await;
        }
        if !self.confirmed_since(switched_at).await {
            let why = format!(
                "the coordinator was not reached within {} after the switch",
                humantime::format_duration(self.config.confirm_deadline)
            );
            return self.roll_back(journal, why, tail).await;
        }
        let path = self.switcher.current(&journal.system);
        self.finish(generation, DeployStep::Succeeded, "healthy".into(), tail, path)
    }

    async fn roll_back(&self, journal: &Journal, reason: String, tail: String) -> Applied {
        let generation = journal.generation;
        self.progress(generation, DeployStep::RollingBack, reason.clone(), &tail, None);
        match self.switcher.rollback(&journal.system, journal.previous_system.as_deref()).await {
            Ok(out) => {
                let path = self.switcher.current(&journal.system);
                let mut text = tail;
                text.push_str(&out);
                self.finish(generation, DeployStep::RolledBack, format!("rolled back: {reason}"), crate::system::switch::tail(&text), path)
            }
            Err(e) => {
                let mut text = tail;
                text.push_str(e.tail());
                let path = self.switcher.current(&journal.system);
                self.finish(generation, DeployStep::Failed, format!("{reason}; rollback failed: {e}"), crate::system::switch::tail(&text), path)
            }
        }
    }

    /// Finishes an apply the agent was stopped in. Returns `None` when the
    /// apply had not reached the switch (it starts again from the latest
    /// assignment).
    pub async fn resume(&self, journal: Journal) -> Option<Applied> {
        let generation = journal.generation;
        match journal.step {
            JournalStep::Started => {
                self.progress(generation, DeployStep::Resumed, "agent restarted before the switch; applying again", "", None);
                let _ = std::fs::remove_file(self.config.state_dir.join(JOURNAL_FILE));
                None
            }
            JournalStep::Switching => {
                let current = self.switcher.current(&journal.system);
                if current.is_some() && current == journal.previous_system {
                    self.progress(generation, DeployStep::Resumed, "agent restarted during the switch; the system was not changed", "", None);
                    Some(self.finish(generation, DeployStep::Failed, "the agent restarted during the switch, before the system changed".into(), String::new(), current))
                } else {
                    self.progress(generation, DeployStep::Resumed, "agent restarted during the switch; returning to the previous system", "", None);
                    Some(self.roll_back(&journal, "the agent restarted during the switch".into(), String::new()).await)
                }
            }
            JournalStep::Switched => {
                self.progress(generation, DeployStep::Resumed, "agent restarted after the switch; checking health again", "", None);
                Some(self.gate(&journal, String::new()).await)
            }
        }
    }
}
