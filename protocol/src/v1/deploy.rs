//! Deployments: what a machine should run (systems, secrets, checks, goals), its assignment, and the progress of applying it.

use serde::{Deserialize, Serialize};

use super::*;

/// Secret bytes (a secret file's content). Never shown by `Debug`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[serde(transparent)]
pub struct SecretBytes(Vec<u8>);

impl SecretBytes {
    pub fn new(value: impl Into<Vec<u8>>) -> Self {
        SecretBytes(value.into())
    }

    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretBytes(<{} bytes redacted>)", self.0.len())
    }
}

/// The system a machine should run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum SystemSpec {
    /// `nixos-rebuild switch --flake URI#ATTRIBUTE` on the machine.
    Flake { uri: String, attribute: String },
    /// A pre-built closure realised from a binary cache and activated.
    Closure { store_path: String, substituters: Vec<String>, trusted_public_keys: Vec<String> },
}

/// A secret written to `<runtime>/secrets/<name>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct SecretFile {
    pub name: String,
    pub value: SecretBytes,
    pub owner: Option<String>,
    pub group: Option<String>,
    pub mode: u32,
}

/// A check that must pass after a switch, before the health deadline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum HealthCheck {
    /// A systemd unit that must be active.
    Unit { name: String },
    /// An HTTP URL that must answer 2xx.
    Http { url: String },
    /// A TCP port that must accept connections.
    Tcp { host: String, port: u16 },
    /// A bucket that must answer, with the credentials and facts the
    /// machine received for it (`--bucket`).
    S3 { bucket: String },
    /// A file that must exist, with this SHA-256 (hex) when given
    /// (protocol 6): shows that a secret or a service's file landed without
    /// sending its content back.
    File { path: String, sha256: Option<String> },
}

/// What a deployment does with the new system, as `nixos-rebuild` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[serde(rename_all = "kebab-case")]
pub enum SwitchGoal {
    /// Activate it and make it the boot default.
    #[default]
    Switch,
    /// Make it the boot default only; it runs after the next reboot.
    Boot,
    /// Activate it without touching the boot default; a reboot returns to
    /// the previous system.
    Test,
    /// Report what activating it would change, and change nothing.
    DryActivate,
}

impl SwitchGoal {
    /// The word `switch-to-configuration` and `nixos-rebuild` take.
    pub fn as_str(self) -> &'static str {
        match self {
            SwitchGoal::Switch => "switch",
            SwitchGoal::Boot => "boot",
            SwitchGoal::Test => "test",
            SwitchGoal::DryActivate => "dry-activate",
        }
    }

    /// Whether the system profile (the boot default) is set.
    pub fn sets_profile(self) -> bool {
        matches!(self, SwitchGoal::Switch | SwitchGoal::Boot)
    }

    /// Whether the running system changes.
    pub fn activates(self) -> bool {
        matches!(self, SwitchGoal::Switch | SwitchGoal::Test)
    }
}

impl std::fmt::Display for SwitchGoal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for SwitchGoal {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "switch" => Ok(SwitchGoal::Switch),
            "boot" => Ok(SwitchGoal::Boot),
            "test" => Ok(SwitchGoal::Test),
            "dry-activate" => Ok(SwitchGoal::DryActivate),
            other => Err(format!("'{other}' is not a switch goal: use switch, boot, test or dry-activate")),
        }
    }
}

/// One machine's assignment at one generation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Assignment {
    pub generation: u64,
    pub system: SystemSpec,
    pub secrets: Vec<SecretFile>,
    /// A JSON object written to `<runtime>/facts.json`.
    pub facts_json: String,
    pub checks: Vec<HealthCheck>,
    pub health_deadline_ms: u64,
    /// Mounted before the switch (protocol 3).
    #[serde(default)]
    pub volumes: Vec<VolumeMount>,
    /// What to do with the system (protocol 5).
    #[serde(default)]
    pub goal: SwitchGoal,
    /// Switch even when NixOS' pre-switch checks refuse (`NIXOS_NO_CHECK`).
    #[serde(default)]
    pub force_switch: bool,
    /// After the switch and the health gate, reboot and verify that the
    /// machine came back, on the system it was given.
    #[serde(default)]
    pub reboot: bool,
}

/// What an admin asks to deploy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct DeploySpec {
    /// One machine, or every machine matching `selector` (not both).
    pub machine: Option<String>,
    pub selector: Labels,
    pub system: SystemSpec,
    pub secrets: Vec<SecretFile>,
    pub facts: Labels,
    pub checks: Vec<HealthCheck>,
    pub health_deadline_ms: u64,
    /// Buckets the coordinator makes ready before recording the generation:
    /// their credentials become secrets, their endpoint and names facts.
    #[serde(default)]
    pub buckets: Vec<BucketRequest>,
    /// Volumes the coordinator makes available on each target's node
    /// before recording the generation (protocol 3).
    #[serde(default)]
    pub volumes: Vec<VolumeClaim>,
    /// What to do with the system (protocol 5).
    #[serde(default)]
    pub goal: SwitchGoal,
    #[serde(default)]
    pub force_switch: bool,
    /// Deploy to machines an active rollout holds; the rollout records it.
    #[serde(default)]
    pub override_rollout: bool,
    /// Reboot each machine after its switch and verify what it booted.
    #[serde(default)]
    pub reboot: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct DeployedTarget {
    pub machine_id: String,
    pub hostname: String,
    pub generation: u64,
    pub deployment_id: String,
}

/// Steps of applying a generation on an agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[serde(rename_all = "snake_case")]
pub enum DeployStep {
    Received,
    SecretsWritten,
    Switching,
    Switched,
    HealthChecking,
    Succeeded,
    Failed,
    RollingBack,
    RolledBack,
    /// The agent restarted during the apply and resumed it.
    Resumed,
    /// The assignment's volumes are mounted (protocol 3).
    VolumesAttached,
    /// The machine reboots to verify what it boots (protocol 5).
    Rebooting,
}

impl DeployStep {
    /// The name it has on the wire (JSON).
    pub fn as_str(self) -> &'static str {
        match self {
            DeployStep::Received => "received",
            DeployStep::SecretsWritten => "secrets_written",
            DeployStep::Switching => "switching",
            DeployStep::Switched => "switched",
            DeployStep::HealthChecking => "health_checking",
            DeployStep::Succeeded => "succeeded",
            DeployStep::Failed => "failed",
            DeployStep::RollingBack => "rolling_back",
            DeployStep::RolledBack => "rolled_back",
            DeployStep::Resumed => "resumed",
            DeployStep::VolumesAttached => "volumes_attached",
            DeployStep::Rebooting => "rebooting",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct DeploymentReport {
    pub generation: u64,
    pub step: DeployStep,
    pub message: String,
    pub output_tail: String,
    pub system_path: Option<String>,
    /// The machine's volumes as the apply left them, on the reports of
    /// attached volumes and of the outcome (protocol 10): the coordinator
    /// records a format in the same transaction as the outcome. Volumes the
    /// apply released are listed unmounted, with what the agent knows of
    /// them.
    #[serde(default)]
    pub volumes: Vec<VolumeState>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[serde(rename_all = "snake_case")]
pub enum DeploymentState {
    Pending,
    Applying,
    Succeeded,
    Failed,
    /// A newer generation was recorded before this one was applied.
    Superseded,
}

impl DeploymentState {
    /// The name it has on the wire (JSON).
    pub fn as_str(self) -> &'static str {
        match self {
            DeploymentState::Pending => "pending",
            DeploymentState::Applying => "applying",
            DeploymentState::Succeeded => "succeeded",
            DeploymentState::Failed => "failed",
            DeploymentState::Superseded => "superseded",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct StepInfo {
    pub step: DeployStep,
    pub at: UnixMillis,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct DeploymentInfo {
    pub id: String,
    pub machine_id: String,
    pub hostname: String,
    pub generation: u64,
    pub system: SystemSpec,
    pub created_at: UnixMillis,
    pub finished_at: Option<UnixMillis>,
    pub state: DeploymentState,
    pub rolled_back: bool,
    pub steps: Vec<StepInfo>,
    pub output_tail: String,
    pub system_path: Option<String>,
    /// Names of its secrets (never their values).
    pub secret_names: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct MachineDetail {
    pub machine: MachineInfo,
    pub desired_generation: u64,
    pub current_generation: Option<u64>,
    pub current_system: Option<String>,
}
