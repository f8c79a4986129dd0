//! The apply scheduler: what the agent applies and when, kept across
//! connections. An apply runs in its own task and goes on when the
//! connection drops; its progress reports queue until they are
//! acknowledged; the final outcome is sent again until acknowledged; a
//! newer generation is fetched once the machine is idle.
//!
//! The session talks to it through one typed interface: it asks
//! [`Scheduler::next_to_send`] what to send, sends it, and hands the answer back
//! with [`Scheduler::answered`]; [`Scheduler::wait`] wakes it when there is
//! something new to send.

use std::collections::VecDeque;
use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use drover_protocol::v1::{Access, Assignment, DeploymentReport};

use crate::apply::{Applied, Applier, ChannelRestorer, RestoreAsk};
use crate::config::AgentConfig;
use crate::system::switch::{NixSwitcher, SystemSwitcher};

/// What the scheduler needs sent to the coordinator.
#[derive(Debug, Clone, PartialEq)]
pub enum Outgoing {
    /// Progress reports of the apply under way (or just finished), oldest
    /// first: as many as are queued, up to the batch the session asked for.
    Progress(Vec<DeploymentReport>),
    /// The outcome of the last apply, which the coordinator has not
    /// acknowledged yet.
    Outcome(DeploymentReport),
    /// Ask for the newest assignment.
    Fetch,
    /// Roll a released volume back for the apply under way (a revert).
    Restore { generation: u64, name: String },
}

/// What the coordinator answered to an [`Outgoing`].
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    Acknowledged,
    Assignment(Box<(Assignment, Access)>),
    NoAssignment,
    /// The coordinator refused, saying why.
    Refused(String),
}

pub struct Scheduler {
    applier: Arc<Applier>,
    /// When the coordinator last answered; the apply's confirmation deadline
    /// waits on it.
    contact: watch::Sender<Option<Instant>>,
    reports: mpsc::UnboundedReceiver<DeploymentReport>,
    pending: VecDeque<DeploymentReport>,
    task: Option<JoinHandle<Option<Applied>>>,
    /// Volume rollbacks the apply asks for, and the one being asked.
    restores: mpsc::UnboundedReceiver<RestoreAsk>,
    restoring: Option<RestoreAsk>,
    /// The newest generation the coordinator announced.
    desired: u64,
    /// Applies started, resumed ones included.
    pub applies: u64,
}

impl Scheduler {
    pub fn new(config: &AgentConfig) -> Self {
        Scheduler::with_switcher(config, Arc::new(NixSwitcher::new(config.clone())))
    }

    /// A scheduler whose applies switch through `switcher`.
    pub fn with_switcher(config: &AgentConfig, switcher: Arc<dyn SystemSwitcher>) -> Self {
        let (tx, reports) = mpsc::unbounded_channel();
        let (contact, contact_rx) = watch::channel(None);
        let (restore_tx, restores) = mpsc::unbounded_channel();
        let mut applier = Applier::with_switcher(config.clone(), switcher, tx, contact_rx);
        applier.restorer = Arc::new(ChannelRestorer(restore_tx));
        Scheduler {
            applier: Arc::new(applier),
            contact,
            reports,
            pending: VecDeque::new(),
            task: None,
            restores,
            restoring: None,
            desired: 0,
            applies: 0,
        }
    }

    /// Resumes an apply the agent was stopped in, if any.
    pub fn resume_interrupted(&mut self) {
        if let Some(journal) = self.applier.records.journal() {
            tracing::warn!(generation = journal.generation, "an apply was interrupted; resuming it");
            let applier = self.applier.clone();
            self.applies += 1;
            self.task = Some(tokio::spawn(async move { applier.resume(journal).await }));
        }
    }

    /// The coordinator just answered.
    pub fn heard_from_coordinator(&self) {
        self.contact.send_replace(Some(Instant::now()));
    }

    /// The coordinator announced `generation`.
    pub fn desired(&mut self, generation: u64) {
        self.desired = self.desired.max(generation);
    }

    pub fn desired_generation(&self) -> u64 {
        self.desired
    }

    /// The last finished apply.
    pub fn applied(&self) -> Option<Applied> {
        self.applier.records.applied()
    }

    /// What to send now, if anything: queued progress first (at most
    /// `batch` reports in one go), then an unacknowledged outcome, then a
    /// fetch when a newer generation waits and nothing is being applied.
    pub fn next_to_send(&mut self, batch: usize) -> Option<Outgoing> {
        while let Ok(report) = self.reports.try_recv() {
            self.pending.push_back(report);
        }
        if !self.pending.is_empty() {
            return Some(Outgoing::Progress(self.pending.iter().take(batch.max(1)).cloned().collect()));
        }
        if self.restoring.is_none() {
            self.restoring = self.restores.try_recv().ok();
        }
        if let Some(ask) = &self.restoring {
            return Some(Outgoing::Restore { generation: ask.generation, name: ask.name.clone() });
        }
        if self.task.as_ref().is_some_and(|t| t.is_finished()) {
            self.task = None;
        }
        if self.task.is_some() {
            return None;
        }
        let records = &self.applier.records;
        let applied = records.applied();
        if let Some(applied) = applied.as_ref().filter(|a| !a.reported) {
            return Some(Outgoing::Outcome(applied.report()));
        }
        let last = applied.map(|a| a.generation).unwrap_or(0);
        if self.desired > last && records.journal().is_none() {
            return Some(Outgoing::Fetch);
        }
        None
    }

    /// The coordinator answered `sent`.
    pub fn answered(&mut self, sent: Outgoing, answer: Answer) {
        self.heard_from_coordinator();
        match (sent, answer) {
            (Outgoing::Progress(sent), _) => {
                self.pending.drain(..sent.len().min(self.pending.len()));
            }
            (Outgoing::Restore { .. }, answer) => {
                if let Some(ask) = self.restoring.take() {
                    let result = match answer {
                        Answer::Refused(why) => Err(why),
                        _ => Ok(()),
                    };
                    let _ = ask.reply.send(result);
                }
            }
            (Outgoing::Outcome(report), _) => self.applier.records.mark_reported(report.generation),
            (Outgoing::Fetch, Answer::Assignment(boxed)) => {
                let (assignment, access) = *boxed;
                let last = self.applier.records.last_generation();
                if self.task.is_some() {
                    return;
                }
                if assignment.generation <= last {
                    // Nothing newer than what was applied: wait for the next
                    // announcement instead of asking again.
                    self.desired = self.desired.min(last);
                    return;
                }
                tracing::info!(generation = assignment.generation, "applying a new generation");
                let applier = self.applier.clone();
                self.applies += 1;
                self.task = Some(tokio::spawn(async move { Some(applier.apply(assignment, access).await) }));
            }
            (Outgoing::Fetch, Answer::Acknowledged | Answer::NoAssignment | Answer::Refused(_)) => {
                // Nothing newer to apply after all.
                self.desired = self.desired.min(self.applier.records.last_generation());
            }
        }
    }

    /// Waits until there may be something new to send: a progress report,
    /// or the apply under way finishing. Cancel-safe.
    pub async fn wait(&mut self) {
        let (task, reports, pending) = (&mut self.task, &mut self.reports, &mut self.pending);
        let (restores, restoring) = (&mut self.restores, &mut self.restoring);
        let finished = async {
            match task.as_mut() {
                Some(task) => {
                    let _ = task.await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        let done = tokio::select! {
            Some(report) = reports.recv() => {
                pending.push_back(report);
                false
            }
            Some(ask) = restores.recv(), if restoring.is_none() => {
                *restoring = Some(ask);
                false
            }
            _ = finished => true,
        };
        if done {
            self.task = None;
        }
    }
}
