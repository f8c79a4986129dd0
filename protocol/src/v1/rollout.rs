//! Rollouts: strategies, phases and the state of each machine in one.

use serde::{Deserialize, Serialize};

use super::*;

/// A count, or a percentage of a rollout's targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum Amount {
    Count(u32),
    Percent(u32),
}

impl std::fmt::Display for Amount {
    /// As the command line takes it: `3` or `25%`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Amount::Count(n) => write!(f, "{n}"),
            Amount::Percent(p) => write!(f, "{p}%"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct RolloutStrategy {
    pub canary: u32,
    pub max_parallel: Amount,
    pub max_unavailable: Amount,
    pub max_failures: Amount,
    pub healthy_deadline_ms: u64,
    pub min_healthy_time_ms: u64,
    pub progress_deadline_ms: u64,
    pub auto_revert: bool,
    pub auto_promote: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct RolloutSpec {
    /// What to deploy: `deploy.machine` must be empty, `deploy.selector`
    /// names the targets.
    pub deploy: DeploySpec,
    pub strategy: RolloutStrategy,
    /// Snapshot every volume of a machine before it switches; a revert
    /// rolls the volumes back to it (protocol 3).
    #[serde(default)]
    pub snapshot_volumes: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[serde(rename_all = "snake_case")]
pub enum RolloutAction {
    Pause,
    Resume,
    Abort,
    Revert,
    Promote,
}

/// Where a rollout stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[serde(rename_all = "snake_case")]
pub enum RolloutPhase {
    Canary,
    AwaitingPromotion,
    Rolling,
    Succeeded,
    Failed,
    Aborted,
    Reverting,
    Reverted,
}

impl RolloutPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutPhase::Canary => "canary",
            RolloutPhase::AwaitingPromotion => "awaiting_promotion",
            RolloutPhase::Rolling => "rolling",
            RolloutPhase::Succeeded => "succeeded",
            RolloutPhase::Failed => "failed",
            RolloutPhase::Aborted => "aborted",
            RolloutPhase::Reverting => "reverting",
            RolloutPhase::Reverted => "reverted",
        }
    }
}

impl std::fmt::Display for RolloutPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where one machine of a rollout stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[serde(rename_all = "snake_case")]
pub enum RolloutMachineState {
    Waiting,
    Updating,
    Healthy,
    Done,
    Failed,
    Skipped,
    Reverting,
    Reverted,
    NotReverted,
}

impl RolloutMachineState {
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutMachineState::Waiting => "waiting",
            RolloutMachineState::Updating => "updating",
            RolloutMachineState::Healthy => "healthy",
            RolloutMachineState::Done => "done",
            RolloutMachineState::Failed => "failed",
            RolloutMachineState::Skipped => "skipped",
            RolloutMachineState::Reverting => "reverting",
            RolloutMachineState::Reverted => "reverted",
            RolloutMachineState::NotReverted => "not_reverted",
        }
    }
}

impl std::fmt::Display for RolloutMachineState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct RolloutMachine {
    pub machine_id: String,
    pub hostname: String,
    pub state: RolloutMachineState,
    pub canary: bool,
    pub generation: Option<u64>,
    pub revert_generation: Option<u64>,
    pub started_at: Option<UnixMillis>,
    pub settled_at: Option<UnixMillis>,
    pub reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct RolloutInfo {
    pub id: String,
    pub phase: RolloutPhase,
    pub paused: bool,
    pub reason: Option<String>,
    pub created_at: UnixMillis,
    pub system: SystemSpec,
    pub selector: Labels,
    pub strategy: RolloutStrategy,
    /// Phase changes with their times.
    pub phases: Vec<(RolloutPhase, UnixMillis)>,
    pub machines: Vec<RolloutMachine>,
}
