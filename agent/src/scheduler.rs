//! The apply scheduler: what the agent applies and when, kept across
//! connections. An apply runs in its own task and goes on when the
//! connection drops; its progress reports queue until they are
//! acknowledged; the final outcome is sent again until acknowledged; a
//! newer generation is applied once the machine is idle (its assignment as
//! the coordinator pushed it, or fetched).
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
    /// The last progress reports of a finished apply and its outcome, in
    /// one request.
    Finished { progress: Vec<DeploymentReport>, outcome: DeploymentReport },
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
    /// The assignment the coordinator sent with its announcement (protocol
    /// 9), applied instead of fetching once the machine is idle.
    offered: Option<Box<(Assignment, Access)>>,
    /// Applies started, resumed ones included.
    pub applies: u64,
    /// Where applies run: the agent's own runtime unless set (the load
    /// generator runs its simulated machines' applies apart, see
    /// [`crate::simulate`]).
    pub applies_on: Option<tokio::runtime::Handle>,
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
            offered: None,
            applies: 0,
            applies_on: None,
        }
    }

    /// Resumes an apply the agent was stopped in, if any.
    pub fn resume_interrupted(&mut self) {
        if let Some(journal) = self.applier.records.journal() {
            tracing::warn!(generation = journal.generation, "an apply was interrupted; resuming it");
            let applier = self.applier.clone();
            self.applies += 1;
            self.task = Some(self.spawn_apply(async move { applier.resume(journal).await }));
        }
    }

    fn spawn_apply(&self, apply: impl std::future::Future<Output = Option<Applied>> + Send + 'static) -> JoinHandle<Option<Applied>> {
        match &self.applies_on {
            Some(runtime) => runtime.spawn(apply),
            None => tokio::spawn(apply),
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

    /// The coordinator announced a generation with its assignment.
    pub fn assigned(&mut self, assignment: Assignment, access: Access) {
        self.desired(assignment.generation);
        if self.offered.as_ref().is_none_or(|o| o.0.generation < assignment.generation) {
            self.offered = Some(Box::new((assignment, access)));
        }
    }

    /// Whether a switch waits to hear from the coordinator before its
    /// confirmation deadline (a rollback follows if it does not).
    pub fn confirming(&self) -> bool {
        self.task.as_ref().is_some_and(|t| !t.is_finished()) && self.applier.confirming.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn desired_generation(&self) -> u64 {
        self.desired
    }

    /// The last finished apply.
    pub fn applied(&self) -> Option<Applied> {
        self.applier.records.applied()
    }

    /// What to send now, if anything: queued progress first (at most
    /// `batch` reports in one go; with the outcome when the apply is over
    /// and they all fit), then an unacknowledged outcome, then — when a
    /// newer generation waits and nothing is being applied — a fetch, or
    /// nothing when the assignment came with the announcement: its apply
    /// starts instead.
    pub fn next_to_send(&mut self, batch: usize) -> Option<Outgoing> {
        // Whether the apply is over is asked before its reports are taken:
        // a finished apply has queued all of them.
        if self.task.as_ref().is_some_and(|t| t.is_finished()) {
            self.task = None;
        }
        while let Ok(report) = self.reports.try_recv() {
            self.pending.push_back(report);
        }
        let batch = batch.max(1);
        let unreported = || self.applier.records.applied().filter(|a| !a.reported).map(|a| a.report());
        if !self.pending.is_empty() {
            let progress: Vec<DeploymentReport> = self.pending.iter().take(batch).cloned().collect();
            // The last reports and the outcome go together when the
            // request can take them all (protocol 7).
            if let Some(outcome) = unreported().filter(|_| self.task.is_none() && progress.len() < batch) {
                if progress.len() == self.pending.len() {
                    return Some(Outgoing::Finished { progress, outcome });
                }
            }
            return Some(Outgoing::Progress(progress));
        }
        if self.restoring.is_none() {
            self.restoring = self.restores.try_recv().ok();
        }
        if let Some(ask) = &self.restoring {
            return Some(Outgoing::Restore { generation: ask.generation, name: ask.name.clone() });
        }
        if self.task.is_some() {
            return None;
        }
        if let Some(outcome) = unreported() {
            return Some(Outgoing::Outcome(outcome));
        }
        let records = &self.applier.records;
        let last = records.last_generation();
        if self.desired > last && records.journal().is_none() {
            match self.offered.take() {
                Some(offered) if offered.0.generation == self.desired => self.start(*offered),
                _ => return Some(Outgoing::Fetch),
            }
        }
        None
    }

    /// Starts applying `assignment`, unless an apply is under way or it is
    /// not newer than the last one applied.
    fn start(&mut self, (assignment, access): (Assignment, Access)) {
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
        self.task = Some(self.spawn_apply(async move { Some(applier.apply(assignment, access).await) }));
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
            (Outgoing::Finished { progress, outcome }, _) => {
                self.pending.drain(..progress.len().min(self.pending.len()));
                self.applier.records.mark_reported(outcome.generation);
            }
            (Outgoing::Fetch, Answer::Assignment(boxed)) => self.start(*boxed),
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
