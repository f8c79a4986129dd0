//! Messages between an agent and the coordinator: its requests, the events of its watch stream, its health reports.

use serde::{Deserialize, Serialize};

use super::*;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum AgentRequest {
    /// Opens the long-lived event stream; answered by [`AgentEvent`]s.
    Watch,
    /// A periodic health report; answered by [`AgentResponse::Ack`].
    Report(HealthReport),
    /// A new certificate for the same machine; answered by
    /// [`AgentResponse::Renewed`].
    Renew { csr_der: Vec<u8> },
    /// The machine's newest assignment with the SSH access that goes with
    /// it; answered by [`AgentResponse::Assignment`] or
    /// [`AgentResponse::NoAssignment`].
    FetchAssignment,
    /// Progress or the outcome of applying a generation.
    ReportDeployment(DeploymentReport),
    /// The volume `name` of the machine's newest generation is released
    /// (unmounted): roll it back to the snapshot that generation names.
    /// Answered by [`AgentResponse::Ack`] once done (protocol 3).
    RestoreVolume { generation: u64, name: String },
    /// Several progress reports at once, oldest first (at most
    /// [`MAX_REPORTS_PER_REQUEST`]), recorded together; answered by
    /// [`AgentResponse::Ack`] (protocol 7).
    ReportDeployments(Vec<DeploymentReport>),
}

/// The most progress reports one [`AgentRequest::ReportDeployments`] may carry.
pub const MAX_REPORTS_PER_REQUEST: usize = 32;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum AgentResponse {
    Ack,
    Renewed(IssuedCertificate),
    Event(AgentEvent),
    Assignment { assignment: Assignment, access: Access },
    NoAssignment,
}

/// Who may log in to a machine over SSH, as the coordinator decided at the
/// assignment's generation: the keys of the admins who manage its tenant.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Access {
    pub authorized_keys: Vec<LoginKeys>,
}

/// The authorized keys of one login on the machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct LoginKeys {
    pub login: String,
    /// OpenSSH public key lines (`TYPE BASE64 COMMENT`), no options.
    pub keys: Vec<String>,
}

/// Events pushed to an agent on its watch stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum AgentEvent {
    /// First event on a watch stream.
    Welcome {
        machine_id: String,
        /// How often the agent must report health.
        health_interval_ms: u64,
    },
    /// The machine's desired generation; sent after Welcome, and whenever
    /// it changes to a peer older than protocol 9.
    Desired { generation: u64 },
    /// A new desired generation with its assignment and SSH access (protocol
    /// 9): what [`AgentRequest::FetchAssignment`] would answer, sent when
    /// the generation changes while the machine is connected, so that a
    /// deploy to a large fleet costs no request per machine.
    Assigned { assignment: Assignment, access: Access },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct HealthReport {
    pub hostname: String,
    pub uptime_secs: u64,
    pub load_average: [f64; 3],
    pub cpu_count: u32,
    pub cpu_usage_percent: f32,
    pub memory_total_bytes: u64,
    pub memory_used_bytes: u64,
    pub disks: Vec<DiskUsage>,
    /// Failed systemd units; `None` where systemd does not run.
    pub failed_units: Option<Vec<String>>,
    pub agent_version: String,
    /// The target of `/run/current-system`, where it exists.
    pub system_path: Option<String>,
    /// The volumes of its assignment (protocol 3).
    #[serde(default)]
    pub volumes: Vec<VolumeState>,
    /// The kernel's boot id (`/proc/sys/kernel/random/boot_id`), which
    /// changes at every boot (protocol 5).
    pub boot_id: Option<String>,
    /// The target of `/run/booted-system`: what the machine booted.
    pub booted_system: Option<String>,
    /// A system installed for the next boot (goal `boot`, or a `switch`
    /// that pre-switch checks refused) and not running yet: a reboot is
    /// required.
    pub pending_system: Option<String>,
    /// The file system holding the Nix store.
    pub nix_store: Option<DiskUsage>,
    /// The machine's IP addresses, loopback left out (protocol 6): what a
    /// fleet's `${machines.NAME.address}` resolves to.
    #[serde(default)]
    pub addresses: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct DiskUsage {
    pub mount_point: String,
    pub total_bytes: u64,
    pub available_bytes: u64,
}
