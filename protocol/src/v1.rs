//! Version 1 of the wire messages.
//!
//! Each bi-stream carries one [`Request`] from the client and one or more
//! [`Response`] frames from the coordinator (one, except for
//! [`AgentRequest::Watch`], whose stream stays open for events).
//!
//! bincode is not self-describing: variants and fields are only ever appended,
//! never reordered or removed. The golden files under `tests/golden/` hold the
//! bytes of every message so that a change that breaks old peers fails a test.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::WireError;
use crate::version::VersionRange;

pub use crate::provision::{Problem, ProvisionDisk, ProvisionInfo, ProvisionRequest, ProvisionState};
pub use crate::volume::{
    Filesystem, ReplicaInfo, SnapshotInfo, VolumeAttachment, VolumeClaim, VolumeInfo, VolumeMount, VolumeRequest, VolumeResponse, VolumeState,
};

/// Milliseconds since the Unix epoch.
pub type UnixMillis = u64;

/// Labels attached to machines and tokens (`key=value`).
pub type Labels = BTreeMap<String, String>;

/// A secret string (an enrollment token). Its value never shows in `Debug`
/// output, so it cannot leak into a log line through `{:?}`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret value, for the one place that must use it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// The first frame of every bi-stream a client opens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum Request {
    /// Must be the first request on every connection.
    Hello(Hello),
    /// Allowed on a connection without a client certificate.
    Enroll(EnrollRequest),
    /// Requires a machine certificate.
    Agent(AgentRequest),
    /// Requires an admin certificate.
    Admin(AdminRequest),
}

/// What the coordinator answers on a bi-stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum Response {
    Hello(HelloAck),
    Enrolled(IssuedCertificate),
    Agent(AgentResponse),
    Admin(AdminResponse),
    Error(WireError),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Hello {
    /// The protocol versions the client speaks.
    pub versions: VersionRange,
    /// Free text naming the client software and version, for logs.
    pub software: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct HelloAck {
    /// The version chosen for this connection.
    pub version: u16,
    pub software: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct EnrollRequest {
    pub token: Secret,
    /// A PKCS#10 certificate signing request (DER) for the machine's own key.
    /// Only its public key is used: the coordinator decides the identity.
    pub csr_der: Vec<u8>,
    /// The hostname the machine reports for itself (informational).
    pub hostname: String,
}

/// A certificate the coordinator signed for a machine or an admin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct IssuedCertificate {
    /// The identity the coordinator chose (a machine id or an admin name).
    pub subject: String,
    pub certificate_der: Vec<u8>,
    /// Lowercase hex serial number.
    pub serial: String,
    pub not_after: UnixMillis,
    /// The certificate's lifetime in milliseconds, from which the holder
    /// computes when to renew (at two thirds).
    pub lifetime_ms: u64,
}

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

/// Admin roles: a viewer reads, an operator runs the fleet, an admin also
/// manages admins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Viewer,
    Operator,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "viewer" => Ok(Role::Viewer),
            "operator" => Ok(Role::Operator),
            "admin" => Ok(Role::Admin),
            other => Err(format!("unknown role {other:?}; expected admin, operator or viewer")),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum AdminRequest {
    WhoAmI,
    TokensCreate(TokenSpec),
    TokensList,
    TokensRevoke {
        id: String,
    },
    MachinesList {
        selector: Labels,
    },
    MachinesShow {
        id: String,
    },
    MachinesLabel {
        id: String,
        set: Labels,
        remove: Vec<String>,
    },
    MachinesRevoke {
        id: String,
    },
    AdminsAdd {
        name: String,
        role: Role,
        csr_der: Vec<u8>,
    },
    AdminsList,
    /// Records a new generation for every target.
    Deploy(DeploySpec),
    DeploymentsList {
        machine: Option<String>,
    },
    DeploymentsShow {
        id: String,
    },
    /// A machine with its desired and current generation.
    MachinesDetail {
        id: String,
    },
    RolloutStart(RolloutSpec),
    RolloutStatus {
        id: String,
    },
    RolloutList,
    RolloutControl {
        id: String,
        action: RolloutAction,
    },
    /// The deployments a rollout made (and its reverts).
    DeploymentsOfRollout {
        id: String,
    },
    /// Object storage administration through the coordinator.
    S3(S3Request),
    /// Records an operator (tenant) and generates its admin password.
    TenantsCreate(TenantSpec),
    TenantsList,
    TenantsShow {
        domain: String,
        show_password: bool,
    },
    TenantsRemove {
        domain: String,
    },
    /// Changes which admins manage a tenant (their SSH keys reach its machines).
    TenantsManagers {
        domain: String,
        add: Vec<String>,
        remove: Vec<String>,
    },
    /// Records an SSH public key of an admin for logins as `login`.
    AdminsAddKey {
        name: String,
        login: String,
        key: String,
    },
    /// Removes an admin's key by its SHA256 fingerprint.
    AdminsRemoveKey {
        name: String,
        fingerprint: String,
    },
    /// SSH keys of one admin, or of all.
    AdminsKeys {
        name: Option<String>,
    },
    /// Removes an admin: its certificate stops working, its keys leave.
    AdminsRemove {
        name: String,
    },
    /// Volumes from the block storage (protocol 3).
    Volumes(VolumeRequest),
    /// A consistent snapshot of the coordinator's state, taken while it
    /// serves; answered on the same stream by [`AdminResponse::BackupChunk`]s
    /// and one [`AdminResponse::BackupEnd`] (protocol 4).
    Backup,
    /// The audit log: what admins changed, oldest first, at most `limit`
    /// entries (the newest ones), from `since` on and by `admin` when given
    /// (protocol 4).
    Audit {
        since: Option<UnixMillis>,
        admin: Option<String>,
        limit: u32,
    },
    /// What a deployment (or a rollout of it) would change on each target,
    /// recording and announcing nothing (protocol 5).
    DeployDryRun(DeploySpec),
    /// Reboots one machine, or every machine matching `selector`, verifying
    /// that each comes back on its boot default: a new generation repeating
    /// each one's newest assignment, to reboot after it (protocol 5).
    /// Answered with [`AdminResponse::Deployed`].
    MachinesReboot {
        machine: Option<String>,
        selector: Labels,
    },
    /// Makes a VM on a provider that enrolls itself (protocol 6); answered
    /// with [`AdminResponse::Provision`].
    MachinesProvision(ProvisionRequest),
    /// One provision by name, or the provision of a machine id.
    ProvisionShow {
        name: String,
    },
    Provisions,
    /// Revokes a provisioned machine and deletes its VM; its data disks are
    /// kept with `keep_volumes`.
    MachinesDestroy {
        name: String,
        keep_volumes: bool,
    },
    /// Records the fleet `drover apply` has just applied (JSON: the file and
    /// what its references resolved to).
    FleetSave {
        document: String,
    },
    /// The last applied fleet, answered with [`AdminResponse::Fleet`].
    FleetShow,
    /// Deployments by id (at most [`MAX_DEPLOYMENTS_PER_REQUEST`]),
    /// answered with [`AdminResponse::Deployments`] in the order asked:
    /// `drover deploy --wait` follows many deployments in a few requests
    /// instead of one per deployment. Protocol 8.
    DeploymentsShowMany {
        ids: Vec<String>,
    },
    /// Checks provisions as `MachinesProvision` would take them — names,
    /// providers and their limits (`max_vms` with these added), sizes,
    /// the seed's fit — making nothing; answered with
    /// [`AdminResponse::Problems`] (protocol 10). `drover plan` asks it.
    ProvisionsCheck {
        requests: Vec<ProvisionRequest>,
    },
    /// A page of the whole audit log, oldest first: at most `limit` entries
    /// after the position `after` (an earlier page's `next`), from the
    /// start when `None`. Answered with [`AdminResponse::AuditPage`]
    /// (protocol 10). `drover audit --export` reads the log with it.
    AuditExport {
        after: Option<String>,
        limit: u32,
    },
}

/// The most deployments one [`AdminRequest::DeploymentsShowMany`] asks for
/// (an answer stays far below the frame limit).
pub const MAX_DEPLOYMENTS_PER_REQUEST: usize = 200;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum AdminResponse {
    Done,
    Identity(AdminInfo),
    TokenCreated(CreatedToken),
    Tokens(Vec<TokenInfo>),
    Machines(Vec<MachineInfo>),
    Machine(MachineInfo),
    AdminCreated(IssuedCertificate),
    Admins(Vec<AdminInfo>),
    Deployed(Vec<DeployedTarget>),
    Deployments(Vec<DeploymentInfo>),
    Deployment(DeploymentInfo),
    MachineDetail(MachineDetail),
    Rollout(RolloutInfo),
    Rollouts(Vec<RolloutInfo>),
    S3(S3Response),
    Tenant(TenantInfo),
    Tenants(Vec<TenantInfo>),
    SshKeys(Vec<SshKeyInfo>),
    Volumes(VolumeResponse),
    /// Part of a backup, in order.
    BackupChunk(Vec<u8>),
    /// The end of a backup: its size and SHA-256 (hex), to check the parts.
    BackupEnd {
        bytes: u64,
        sha256: String,
    },
    Audit(Vec<AuditEntry>),
    /// The answer to [`AdminRequest::DeployDryRun`], one entry a target.
    DeployPlan(Vec<PlannedTarget>),
    Provision(ProvisionInfo),
    Provisions(Vec<ProvisionInfo>),
    /// The last applied fleet's document and when and by whom it was
    /// applied; `None` before the first `drover apply`.
    Fleet(Option<AppliedFleet>),
    /// What a check found wrong; empty when nothing (protocol 10).
    Problems(Vec<Problem>),
    /// A page of the audit log; `next` is where the following page starts,
    /// `None` after the last.
    AuditPage {
        entries: Vec<AuditEntry>,
        next: Option<String>,
    },
}

/// A fleet as `drover apply` recorded it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct AppliedFleet {
    pub document: String,
    pub applied_at: UnixMillis,
    pub by: String,
}

/// What a deployment would change on one machine against its newest
/// assignment. Secrets appear by name only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct PlannedTarget {
    pub machine_id: String,
    pub hostname: String,
    /// The generation it would get.
    pub generation: u64,
    /// Its newest generation now (0: none).
    pub current_generation: u64,
    /// The system it has now (its newest assignment's), and would get.
    pub system_before: Option<String>,
    pub system_after: String,
    pub goal: SwitchGoal,
    /// One line per change: `secret added: NAME`, `fact changed: k: a -> b`, ...
    pub changes: Vec<String>,
    /// `nix store diff-closures` between both closures, where the
    /// coordinator's Nix store holds both.
    pub closure_diff: Option<String>,
    /// Why it could not take the deployment (then nothing else applies).
    pub refused: Option<String>,
}

/// One change an admin asked for, as the coordinator recorded it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct AuditEntry {
    pub at: UnixMillis,
    pub admin: String,
    /// What was asked, as the CLI says it ("tokens create", "s3 key show
    /// --show-secret").
    pub action: String,
    /// What it was about (an id, a name, a selector); never a secret value.
    pub target: String,
    /// "ok", or the refusal's code and message.
    pub outcome: String,
}

/// An operator to record (`drover tenants create`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct TenantSpec {
    /// The operator's domain; machines labelled `tenant=DOMAIN` are theirs.
    pub domain: String,
    pub admin_email: String,
    /// The services' admin account name.
    pub admin_user: String,
    /// Admins who manage this tenant's machines.
    pub managers: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct TenantInfo {
    pub domain: String,
    pub admin_email: String,
    pub admin_user: String,
    pub managers: Vec<String>,
    pub created_at: UnixMillis,
    /// Machines labelled with this tenant (not revoked).
    pub machines: u32,
    /// Only when asked for (`--show-password`).
    pub admin_password: Option<Secret>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct SshKeyInfo {
    pub admin: String,
    pub login: String,
    /// `SHA256:...`, as `ssh-keygen -l` prints it.
    pub fingerprint: String,
    pub algorithm: String,
    pub comment: String,
    pub added_at: UnixMillis,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct TokenSpec {
    pub labels: Labels,
    pub ttl_ms: u64,
    pub uses: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct CreatedToken {
    pub info: TokenInfo,
    /// Shown once; the coordinator keeps only its hash.
    pub token: Secret,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct TokenInfo {
    pub id: String,
    pub labels: Labels,
    pub created_at: UnixMillis,
    pub expires_at: UnixMillis,
    pub uses_total: u32,
    pub uses_left: u32,
    pub revoked: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[serde(rename_all = "lowercase")]
pub enum MachineStatus {
    Online,
    Offline,
    Revoked,
}

impl MachineStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            MachineStatus::Online => "online",
            MachineStatus::Offline => "offline",
            MachineStatus::Revoked => "revoked",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct MachineInfo {
    pub id: String,
    pub hostname: String,
    pub labels: Labels,
    pub status: MachineStatus,
    pub enrolled_at: UnixMillis,
    pub last_seen: Option<UnixMillis>,
    pub cert_serial: String,
    pub cert_not_after: UnixMillis,
    pub health: Option<HealthReport>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct AdminInfo {
    pub name: String,
    pub role: Role,
    pub created_at: UnixMillis,
}

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

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum S3Request {
    BucketsList,
    BucketCreate {
        name: String,
        public: bool,
        max_size: Option<u64>,
        max_objects: Option<u64>,
    },
    BucketShow {
        name: String,
    },
    BucketDelete {
        name: String,
    },
    KeysList,
    KeyCreate {
        name: String,
    },
    KeyShow {
        name: String,
        show_secret: bool,
    },
    KeyDelete {
        name: String,
    },
    Grant {
        bucket: String,
        key: String,
        read: bool,
        write: bool,
        owner: bool,
    },
    /// Records a Garage node for the cluster (its admin API and RPC address).
    ClusterAddNode {
        admin: String,
        rpc: String,
        zone: String,
        capacity: u64,
    },
    /// Connects the recorded nodes, applies the layout, waits until healthy.
    ClusterApply,
    ClusterStatus,
    /// Records a Garage node that is a Drover machine, from its labels
    /// `garage.admin`, `garage.rpc`, `garage.zone` and `garage.capacity`.
    ClusterAddMachine {
        machine: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum S3Response {
    Buckets(Vec<S3Bucket>),
    Bucket(S3Bucket),
    Keys(Vec<S3Key>),
    Key(S3Key),
    Done,
    Cluster(S3Cluster),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct S3Node {
    pub id: Option<String>,
    pub admin: String,
    pub rpc: String,
    pub zone: String,
    pub capacity: u64,
    /// As the cluster sees it; `false` while the node is down.
    pub up: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct S3Cluster {
    /// healthy, degraded or unavailable (Garage's words); unknown when no
    /// node answered.
    pub health: String,
    pub layout_version: u64,
    pub partitions: u64,
    pub partitions_all_ok: u64,
    pub nodes: Vec<S3Node>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct S3Grant {
    pub key_id: String,
    pub read: bool,
    pub write: bool,
    pub owner: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct S3Bucket {
    pub id: String,
    pub aliases: Vec<String>,
    pub website: bool,
    pub public_url: Option<String>,
    pub objects: u64,
    pub bytes: u64,
    pub grants: Vec<S3Grant>,
    pub max_size: Option<u64>,
    pub max_objects: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct S3Key {
    pub id: String,
    pub name: String,
    /// Only when asked for (`--show-secret`).
    pub secret: Option<Secret>,
}

/// A bucket a deployment needs (`--bucket NAME[:public]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct BucketRequest {
    pub name: String,
    /// Served publicly through the web endpoint (media).
    pub public: bool,
}
