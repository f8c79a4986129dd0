//! The Drover agent: runs on every VM, enrolls it, keeps its one connection
//! to the coordinator and reports its health.
//!
//! Map: [`session`] (the connection's life: enroll, connect, report, renew,
//! reconnect), [`scheduler`] (what to apply and report, across
//! connections), [`apply`] (the apply: a pure core and its driver),
//! [`backoff`] (reconnect delays, pure), [`identity`] (key and certificate
//! on disk), [`system`] (the only layer that runs processes or reads the
//! machine), [`switched`] (what a switch did: the core's and the system
//! layer's shared words), [`config`], [`simulate`] (the load generator).

pub mod apply;
pub mod backoff;
pub mod config;
pub mod identity;
pub mod scheduler;
pub mod seed;
pub mod session;
pub mod simulate;
pub mod switched;
pub mod system;
pub mod text;

use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use config::AgentConfig;
pub use session::{Agent, AgentError, AgentStatus, Phase};
use system::health::HealthSource;

/// A running agent task.
pub struct AgentHandle {
    pub status: watch::Receiver<AgentStatus>,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<Result<(), AgentError>>,
}

impl AgentHandle {
    /// Stops the agent and waits for it.
    pub async fn stop(self) -> Result<(), AgentError> {
        let _ = self.shutdown.send(true);
        self.task.await.unwrap_or(Ok(()))
    }

    /// Kills the agent's task at once, as a crash would.
    pub fn abort(self) {
        self.task.abort();
    }

    /// Waits until the status satisfies `pred`, or `timeout` passes.
    pub async fn wait_for(&mut self, timeout: std::time::Duration, pred: impl Fn(&AgentStatus) -> bool) -> Result<AgentStatus, AgentStatus> {
        let waited = tokio::time::timeout(timeout, self.status.wait_for(|s| pred(s))).await.ok().and_then(|r| r.ok().map(|s| s.clone()));
        waited.ok_or_else(|| self.status.borrow().clone())
    }

    /// Whether the agent task has ended.
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Waits for the agent task to end by itself.
    pub async fn join(self) -> Result<(), AgentError> {
        self.task.await.unwrap_or(Ok(()))
    }
}

/// Starts an agent on the current tokio runtime. `endpoint` lets many agents
/// share one UDP socket (the load generator); by default each has its own.
pub fn spawn<H: HealthSource + 'static>(config: AgentConfig, health: H, endpoint: Option<quinn::Endpoint>) -> Result<AgentHandle, drover_net::ClientError> {
    spawn_with(config, health, endpoint, None, None)
}

/// [`spawn`], switching systems through `switcher` instead of Nix and
/// running applies on `applies_on` instead of the caller's runtime (the
/// load generator's simulated machines).
pub fn spawn_with<H: HealthSource + 'static>(
    config: AgentConfig,
    health: H,
    endpoint: Option<quinn::Endpoint>,
    switcher: Option<std::sync::Arc<dyn system::switch::SystemSwitcher>>,
    applies_on: Option<tokio::runtime::Handle>,
) -> Result<AgentHandle, drover_net::ClientError> {
    let endpoint = match endpoint {
        Some(e) => e,
        None => drover_net::client::client_endpoint_for(&config.coordinator)?,
    };
    let (status_tx, status_rx) = watch::channel(AgentStatus::default());
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let hostname = config.hostname.clone().unwrap_or_else(system::health::system_hostname);
    let mut scheduler = match switcher {
        Some(switcher) => scheduler::Scheduler::with_switcher(&config, switcher),
        None => scheduler::Scheduler::new(&config),
    };
    scheduler.applies_on = applies_on;
    let agent = Agent { scheduler, config, endpoint, health, hostname, status: status_tx, shutdown: shutdown_rx };
    let task = tokio::spawn(agent.run());
    Ok(AgentHandle { status: status_rx, shutdown: shutdown_tx, task })
}
