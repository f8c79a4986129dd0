//! Admin requests and answers, and what they carry about admins, tenants, tokens and machines.

use serde::{Deserialize, Serialize};

use super::*;

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
    /// The fleet's coordinators, the leader first (on a shared store; on
    /// sled, the one). Answered with
    /// [`AdminResponse::Coordinators`] (protocol 11).
    CoordinatorsList,
    /// NixOps4's state kept by the coordinator, answered with
    /// [`AdminResponse::Nixops4State`] (protocol 12).
    Nixops4State(StateRequest),
    /// A one-time link to the fleet page for the admin asking (any role),
    /// answered with [`AdminResponse::WebLoginLink`] (protocol 13).
    WebLogin,
    /// A page of the machines matching `selector`, in the order of
    /// `MachinesList` (hostname, then id): at most `limit` (at most
    /// [`MAX_MACHINES_PER_PAGE`]) after `after` (an earlier page's `next`),
    /// from the first when `None`. Answered with
    /// [`AdminResponse::MachinesPage`] (protocol 14): a fleet too large for
    /// one answer's frame is listed page by page.
    MachinesPage {
        selector: Labels,
        after: Option<MachinesCursor>,
        limit: u32,
    },
}

/// The most machines one [`AdminRequest::MachinesPage`] answers with (an
/// answer stays far below the frame limit).
pub const MAX_MACHINES_PER_PAGE: u32 = 5_000;

/// Where a page of machines ends: its last machine's hostname and id.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct MachinesCursor {
    pub hostname: String,
    pub id: String,
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
    Coordinators(Vec<CoordinatorInfo>),
    Nixops4State(StateResponse),
    WebLoginLink(WebLoginLink),
    /// A page of machines; `next` is where the following page starts,
    /// `None` after the last (protocol 14).
    MachinesPage {
        machines: Vec<MachineInfo>,
        next: Option<MachinesCursor>,
    },
}

/// A one-time link that opens a session on the fleet page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct WebLoginLink {
    /// The whole link, secret included: it is shown to the admin who
    /// asked and to nobody else.
    pub url: String,
    /// When the link stops opening a session.
    pub expires_at: UnixMillis,
}

/// One coordinator of the fleet, as it announces itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct CoordinatorInfo {
    /// The address agents and admins reach it at.
    pub address: String,
    pub pid: u32,
    /// Whether it leads the fleet's coordinators (the rollout driver,
    /// provisioning and the other work that must happen once run on it);
    /// every coordinator serves agents and admins.
    pub leading: bool,
    /// Since when it serves.
    pub since: UnixMillis,
    /// Agents connected to it when it last said.
    pub agents: u64,
    /// When it last said.
    pub updated_at: UnixMillis,
    /// Seconds its presence's lease has left in the shared store (it
    /// vanishes that long after the process); `None` on sled.
    pub lease_left_s: Option<i64>,
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
