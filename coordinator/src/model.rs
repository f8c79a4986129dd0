//! The coordinator's records: machines, enrollment tokens, admins. The store
//! persists them inside a versioned envelope; the server converts them to
//! wire types at its edge.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use drover_protocol::v1::{self, Role};

pub type Labels = BTreeMap<String, String>;
pub type UnixMillis = u64;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MachineRecord {
    pub id: String,
    pub hostname: String,
    pub labels: Labels,
    /// The token that enrolled it (its id, never its text).
    pub token_id: String,
    pub enrolled_at: UnixMillis,
    pub revoked_at: Option<UnixMillis>,
    /// The serial of the newest certificate.
    pub cert_serial: String,
    pub cert_not_after: UnixMillis,
    /// The certificate it held before its last renewal: accepted until it
    /// expires, so that an agent that lost the renewal answer is not locked out.
    pub previous_cert: Option<(String, UnixMillis)>,
    pub last_seen: Option<UnixMillis>,
    pub health: Option<HealthRecord>,
    /// The newest generation recorded for it (0: none yet).
    #[serde(default)]
    pub desired_generation: u64,
    /// The generation it last applied successfully, and the system path.
    #[serde(default)]
    pub current_generation: Option<u64>,
    #[serde(default)]
    pub current_system: Option<String>,
    /// SHA-256 of the public key it enrolled with.
    #[serde(default)]
    pub enrolled_key: Option<String>,
    /// The volumes it holds: every new generation mounts them, until they
    /// are detached.
    #[serde(default)]
    pub volumes: Vec<v1::VolumeMount>,
    /// On a store several coordinators share: the coordinator (as
    /// `app::coordinators::holder` names it) whose connection carried the
    /// newest health report written. While that coordinator is no longer
    /// present, the report does not make the machine online.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reported_via: Option<String>,
}

impl MachineRecord {
    /// Whether a certificate with this serial may still act for the machine.
    pub fn holds_serial(&self, serial: &str, now: UnixMillis) -> bool {
        self.cert_serial == serial || matches!(&self.previous_cert, Some((s, not_after)) if s == serial && *not_after > now)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthRecord {
    pub received_at: UnixMillis,
    pub hostname: String,
    pub uptime_secs: u64,
    pub load_average: [f64; 3],
    pub cpu_count: u32,
    pub cpu_usage_percent: f32,
    pub memory_total_bytes: u64,
    pub memory_used_bytes: u64,
    pub disks: Vec<DiskRecord>,
    pub failed_units: Option<Vec<String>>,
    pub agent_version: String,
    pub system_path: Option<String>,
    #[serde(default)]
    pub volumes: Vec<v1::VolumeState>,
    #[serde(default)]
    pub boot_id: Option<String>,
    #[serde(default)]
    pub booted_system: Option<String>,
    #[serde(default)]
    pub pending_system: Option<String>,
    #[serde(default)]
    pub nix_store: Option<DiskRecord>,
    #[serde(default)]
    pub addresses: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiskRecord {
    pub mount_point: String,
    pub total_bytes: u64,
    pub available_bytes: u64,
}

/// Longest string kept from a health report (host names, unit names,
/// mount points, paths); longer ones are cut.
const MAX_REPORTED_TEXT: usize = 4096;
/// Most disks and failed units kept from one report.
const MAX_REPORTED_ITEMS: usize = 256;

/// A float from the network as it may be stored: finite, or 0.
/// The highest load average kept: no machine has more runnable tasks.
const MAX_LOAD: f64 = 1e6;

/// A load average as a machine can have one: finite, 0 to [`MAX_LOAD`].
fn finite64(x: f64) -> f64 {
    if x.is_finite() {
        x.clamp(0.0, MAX_LOAD)
    } else {
        0.0
    }
}

/// A CPU usage as a percentage of all cores: finite, 0 to 100.
fn finite32(x: f32) -> f32 {
    if x.is_finite() {
        x.clamp(0.0, 100.0)
    } else {
        0.0
    }
}

/// Text from the network as it may be stored: without control characters,
/// at most `max` bytes (cut at a character boundary).
pub fn clean_text(text: &str, max: usize) -> String {
    let mut out: String = text.chars().filter(|c| !c.is_control()).collect();
    if out.len() > max {
        let mut end = max;
        while !out.is_char_boundary(end) {
            end -= 1;
        }
        out.truncate(end);
    }
    out
}

/// A volume's state from the network, as it may be stored: text cleaned
/// and cut.
pub fn clean_volume_state(v: &v1::VolumeState) -> v1::VolumeState {
    let text = |s: &str| clean_text(s, MAX_REPORTED_TEXT);
    v1::VolumeState {
        name: clean_text(&v.name, 64),
        mount_point: text(&v.mount_point),
        filesystem: v.filesystem.as_deref().map(|f| clean_text(f, 32)),
        grow_pending: v.grow_pending.as_deref().map(text),
        error: v.error.as_deref().map(text),
        ..v.clone()
    }
}

impl HealthRecord {
    /// The record of a report from the network, normalised: non-finite
    /// numbers become 0, strings are cut and cleaned, lists are capped. A
    /// hostile or broken agent can thus never store what cannot be read back.
    pub fn from_wire(report: v1::HealthReport, received_at: UnixMillis) -> Self {
        let text = |s: &str| clean_text(s, MAX_REPORTED_TEXT);
        HealthRecord {
            received_at,
            hostname: clean_text(&report.hostname, 253),
            uptime_secs: report.uptime_secs,
            load_average: report.load_average.map(finite64),
            cpu_count: report.cpu_count,
            cpu_usage_percent: finite32(report.cpu_usage_percent),
            memory_total_bytes: report.memory_total_bytes,
            memory_used_bytes: report.memory_used_bytes,
            disks: report.disks.iter().take(MAX_REPORTED_ITEMS).map(DiskRecord::from_wire).collect(),
            failed_units: report.failed_units.map(|units| units.iter().take(MAX_REPORTED_ITEMS).map(|u| clean_text(u, 256)).collect()),
            agent_version: clean_text(&report.agent_version, 128),
            system_path: report.system_path.as_deref().map(text),
            volumes: report.volumes.iter().take(MAX_REPORTED_ITEMS).map(clean_volume_state).collect(),
            boot_id: report.boot_id.as_deref().map(|b| clean_text(b, 64)),
            booted_system: report.booted_system.as_deref().map(text),
            pending_system: report.pending_system.as_deref().map(text),
            nix_store: report.nix_store.as_ref().map(DiskRecord::from_wire),
            // At most 16, each an IP address.
            addresses: report.addresses.iter().filter(|a| a.parse::<std::net::IpAddr>().is_ok()).take(16).cloned().collect(),
        }
    }

    pub fn to_wire(&self) -> v1::HealthReport {
        v1::HealthReport {
            hostname: self.hostname.clone(),
            uptime_secs: self.uptime_secs,
            load_average: self.load_average,
            cpu_count: self.cpu_count,
            cpu_usage_percent: self.cpu_usage_percent,
            memory_total_bytes: self.memory_total_bytes,
            memory_used_bytes: self.memory_used_bytes,
            disks: self.disks.iter().map(DiskRecord::to_wire).collect(),
            failed_units: self.failed_units.clone(),
            agent_version: self.agent_version.clone(),
            system_path: self.system_path.clone(),
            volumes: self.volumes.clone(),
            boot_id: self.boot_id.clone(),
            booted_system: self.booted_system.clone(),
            pending_system: self.pending_system.clone(),
            nix_store: self.nix_store.as_ref().map(DiskRecord::to_wire),
            addresses: self.addresses.clone(),
        }
    }
}

impl DiskRecord {
    fn from_wire(d: &v1::DiskUsage) -> Self {
        DiskRecord { mount_point: clean_text(&d.mount_point, MAX_REPORTED_TEXT), total_bytes: d.total_bytes, available_bytes: d.available_bytes }
    }

    fn to_wire(&self) -> v1::DiskUsage {
        v1::DiskUsage { mount_point: self.mount_point.clone(), total_bytes: self.total_bytes, available_bytes: self.available_bytes }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub id: String,
    /// SHA-256 of the token text, hex. The text itself is never stored.
    pub hash: String,
    pub labels: Labels,
    pub created_at: UnixMillis,
    pub expires_at: UnixMillis,
    pub uses_total: u32,
    pub uses_left: u32,
    pub revoked: bool,
    /// The provision this token was made for: the machine that enrolls with
    /// it gets the provision's name and is bound to it.
    #[serde(default)]
    pub provision: Option<String>,
}

/// The fleet `drover apply` applied last.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FleetRecord {
    pub document: String,
    pub applied_at: UnixMillis,
    pub by: String,
}

/// A VM the coordinator provisions, keyed by its name (one provision a
/// name: asking again returns it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProvisionRecord {
    /// `p-` and ten hex digits: the tag on the VM.
    pub id: String,
    pub name: String,
    pub provider: String,
    pub template: Option<String>,
    pub cores: u32,
    pub memory_bytes: u64,
    pub disk_bytes: u64,
    pub labels: Labels,
    pub disks: Vec<v1::ProvisionDisk>,
    pub state: v1::ProvisionState,
    pub vm_id: Option<String>,
    /// The one-time token in its seed (its id).
    pub token_id: Option<String>,
    pub machine_id: Option<String>,
    pub created_at: UnixMillis,
    pub deadline_at: UnixMillis,
    pub error: Option<String>,
    /// Its VM is deleted (or was never made): nothing of it is left on the
    /// provider.
    #[serde(default)]
    pub vm_gone: bool,
    /// Why its VM is still on the provider after it failed or was
    /// destroyed, and how to delete it.
    #[serde(default)]
    pub vm_left: Option<String>,
}

impl ProvisionRecord {
    pub fn to_wire(&self) -> v1::ProvisionInfo {
        v1::ProvisionInfo {
            name: self.name.clone(),
            provider: self.provider.clone(),
            state: self.state,
            vm_id: self.vm_id.clone(),
            machine_id: self.machine_id.clone(),
            labels: self.labels.clone(),
            created_at: self.created_at,
            deadline_at: self.deadline_at,
            error: match (&self.error, &self.vm_left) {
                (Some(e), Some(left)) => Some(format!("{e}\n{left}")),
                (None, Some(left)) => Some(left.clone()),
                (e, None) => e.clone(),
            },
        }
    }
}

impl TokenRecord {
    pub fn to_wire(&self) -> v1::TokenInfo {
        v1::TokenInfo {
            id: self.id.clone(),
            labels: self.labels.clone(),
            created_at: self.created_at,
            expires_at: self.expires_at,
            uses_total: self.uses_total,
            uses_left: self.uses_left,
            revoked: self.revoked,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminRecord {
    pub name: String,
    pub role: Role,
    pub created_at: UnixMillis,
    /// Serials of the certificates issued to this admin.
    pub serials: Vec<String>,
    /// SSH public keys delivered to the machines this admin manages.
    #[serde(default)]
    pub ssh_keys: Vec<SshKeyRecord>,
}

/// An admin's SSH public key, kept in canonical OpenSSH form.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SshKeyRecord {
    /// The account on the machines this key logs in to.
    pub login: String,
    /// `ALGORITHM BASE64`, without options or comment.
    pub key: String,
    pub fingerprint: String,
    pub algorithm: String,
    pub comment: String,
    pub added_at: UnixMillis,
}

impl SshKeyRecord {
    pub fn to_wire(&self, admin: &str) -> v1::SshKeyInfo {
        v1::SshKeyInfo {
            admin: admin.to_string(),
            login: self.login.clone(),
            fingerprint: self.fingerprint.clone(),
            algorithm: self.algorithm.clone(),
            comment: self.comment.clone(),
            added_at: self.added_at,
        }
    }
}

/// An operator the provider hosts services for. Machines labelled
/// `tenant=<domain>` are theirs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantRecord {
    pub domain: String,
    pub admin_email: String,
    pub admin_user: String,
    /// Generated at creation; delivered to the tenant's machines as a secret.
    pub admin_password: v1::Secret,
    /// Admins (by name) whose SSH keys reach the tenant's machines.
    pub managers: std::collections::BTreeSet<String>,
    pub created_at: UnixMillis,
}

impl AdminRecord {
    pub fn to_wire(&self) -> v1::AdminInfo {
        v1::AdminInfo { name: self.name.clone(), role: self.role, created_at: self.created_at }
    }
}

/// What the machines of one deployment share: the assignment's fields that
/// do not name the machine. Kept once in the specs tree, by the SHA-256 of
/// its stored form, and referred to by each assignment and deployment
/// record that holds it (see [`crate::store::specs`]); immutable, as its
/// key is its content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpecRecord {
    pub system: v1::SystemSpec,
    pub secrets: Vec<v1::SecretFile>,
    pub checks: Vec<v1::HealthCheck>,
    pub health_deadline_ms: u64,
    pub goal: v1::SwitchGoal,
    pub force_switch: bool,
    pub reboot: bool,
}

impl SpecRecord {
    /// The spec an assignment holds.
    pub fn of(assignment: &v1::Assignment) -> Self {
        SpecRecord {
            system: assignment.system.clone(),
            secrets: assignment.secrets.clone(),
            checks: assignment.checks.clone(),
            health_deadline_ms: assignment.health_deadline_ms,
            goal: assignment.goal,
            force_switch: assignment.force_switch,
            reboot: assignment.reboot,
        }
    }

    /// The digest it is kept under: SHA-256 of its JSON, in hex.
    pub fn digest(&self) -> String {
        use sha2::Digest;
        // A struct of strings, numbers and lists always encodes.
        let bytes = serde_json::to_vec(self).unwrap_or_default();
        hex::encode(sha2::Sha256::digest(bytes))
    }
}

/// One machine's assignment at one generation. The assignment itself is the
/// v1 wire type, which is append-only and so safe to keep as stored JSON;
/// the store keeps its shared part apart ([`SpecRecord`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssignmentRecord {
    pub machine_id: String,
    pub created_at: UnixMillis,
    pub assignment: v1::Assignment,
    /// The SSH access decided with this generation.
    #[serde(default)]
    pub access: v1::Access,
}

/// A deployment's history: what was asked, every step the agent reported.
/// Kept apart from its wire view ([`v1::DeploymentInfo`]); the JSON of both
/// has the same shape, so records written before they were separated read
/// back as they are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentRecord {
    pub id: String,
    pub machine_id: String,
    pub hostname: String,
    pub generation: u64,
    pub system: v1::SystemSpec,
    pub created_at: UnixMillis,
    pub finished_at: Option<UnixMillis>,
    pub state: v1::DeploymentState,
    pub rolled_back: bool,
    pub steps: Vec<StepRecord>,
    pub output_tail: String,
    pub system_path: Option<String>,
    /// Names of its secrets (never their values).
    pub secret_names: Vec<String>,
    /// Steps reported beyond the deployment's bound, counted, not kept.
    #[serde(default)]
    pub steps_dropped: u64,
    /// The [`SpecRecord`] its system is kept in (by digest), when it was
    /// recorded with its assignment: the store then keeps the system there
    /// only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<String>,
}

/// One step an agent reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepRecord {
    pub step: v1::DeployStep,
    pub at: UnixMillis,
    pub message: String,
}

impl DeploymentRecord {
    pub fn to_wire(&self) -> v1::DeploymentInfo {
        v1::DeploymentInfo {
            id: self.id.clone(),
            machine_id: self.machine_id.clone(),
            hostname: self.hostname.clone(),
            generation: self.generation,
            system: self.system.clone(),
            created_at: self.created_at,
            finished_at: self.finished_at,
            state: self.state,
            rolled_back: self.rolled_back,
            steps: {
                let mut steps: Vec<v1::StepInfo> = self.steps.iter().map(|s| v1::StepInfo { step: s.step, at: s.at, message: s.message.clone() }).collect();
                if self.steps_dropped > 0 {
                    // Said where they were cut: before the last step kept.
                    let at = steps.len().saturating_sub(1);
                    let when = steps.get(at).map(|s| (s.step, s.at)).unwrap_or((v1::DeployStep::Received, self.created_at));
                    steps.insert(at, v1::StepInfo { step: when.0, at: when.1, message: format!("… {} more steps dropped", self.steps_dropped) });
                }
                steps
            },
            output_tail: self.output_tail.clone(),
            system_path: self.system_path.clone(),
            secret_names: self.secret_names.clone(),
        }
    }
}

/// The id of the deployment of `generation` to `machine`.
pub fn deployment_id(machine: &str, generation: u64) -> String {
    format!("d-{machine}-{generation}")
}

/// Splits a deployment id back into machine and generation.
pub fn parse_deployment_id(id: &str) -> Option<(String, u64)> {
    let rest = id.strip_prefix("d-")?;
    let (machine, generation) = rest.rsplit_once('-')?;
    Some((machine.to_string(), generation.parse().ok()?))
}

/// A rollout: what it deploys and the planner's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutRecord {
    pub id: String,
    pub created_at: UnixMillis,
    pub spec: v1::DeploySpec,
    pub state: crate::rollout::plan::State,
    /// Volumes are snapshotted before each machine switches, and rolled
    /// back when it is reverted.
    #[serde(default)]
    pub snapshot_volumes: bool,
}

/// Which machine a public key enrolled as (keyed by the key's SHA-256), so
/// that an enrollment retried after a lost answer finds its machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollmentRecord {
    pub machine_id: String,
    pub token_id: String,
}

/// A Garage node recorded for the S3 cluster, keyed by its admin endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct S3NodeRecord {
    pub admin: String,
    pub rpc: String,
    pub zone: String,
    pub capacity: u64,
    /// Learnt from the node at `cluster apply`.
    pub id: Option<String>,
    pub added_at: UnixMillis,
}

/// One change an admin asked for, keyed by time and a sequence number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub at: UnixMillis,
    pub admin: String,
    pub action: String,
    /// What it was about; never a secret value.
    pub target: String,
    pub outcome: String,
}

impl AuditRecord {
    pub fn to_wire(&self) -> v1::AuditEntry {
        v1::AuditEntry { at: self.at, admin: self.admin.clone(), action: self.action.clone(), target: self.target.clone(), outcome: self.outcome.clone() }
    }
}

/// A volume Drover made or adopted, keyed by name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeRecord {
    pub name: String,
    pub size_bytes: u64,
    pub created_at: UnixMillis,
    /// The agent reported it formatted: a missing filesystem is then an
    /// error, never a reason to format again.
    #[serde(default)]
    pub formatted: bool,
    #[serde(default)]
    pub attached: Option<VolumeAttachmentRecord>,
    /// What the holding machine's agent last reported.
    #[serde(default)]
    pub state: Option<v1::VolumeState>,
    #[serde(default)]
    pub snapshots: Vec<SnapshotRecord>,
    /// Drover created it and no machine has released it since, nor has any
    /// agent reported it formatted: the one state in which a machine may be
    /// told it may format the volume (its device must still read as never
    /// written). Records from before this field read as not fresh.
    #[serde(default)]
    pub fresh: bool,
    /// An admin allowed the next machine it is given to format it whatever
    /// it holds (`drover volumes allow-format`); cleared once it is
    /// formatted.
    #[serde(default)]
    pub overwrite: bool,
    /// Taken over from outside Drover (`drover volumes adopt`).
    #[serde(default)]
    pub adopted: bool,
    /// An operation under way that the volume must not be attached during
    /// ("deleted", "rolled back"): set in the transaction that found the
    /// volume free, cleared when the operation ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub busy: Option<String>,
}

impl VolumeRecord {
    /// A record of a volume Drover has just come to hold.
    pub fn new(name: &str, size_bytes: u64, now: UnixMillis, fresh: bool) -> Self {
        VolumeRecord {
            name: name.to_string(),
            size_bytes,
            created_at: now,
            formatted: false,
            attached: None,
            state: None,
            snapshots: Vec::new(),
            fresh,
            overwrite: false,
            adopted: false,
            busy: None,
        }
    }

    /// What an agent said of it: a format ends freshness and any allowed
    /// overwrite, for good.
    pub fn saw_formatted(&mut self) {
        self.formatted = true;
        self.fresh = false;
        self.overwrite = false;
    }
}

/// Which machine holds a volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeAttachmentRecord {
    pub machine_id: String,
    pub node: String,
    pub mount_point: String,
    pub filesystem: v1::Filesystem,
    /// The generation that gave it to the machine.
    pub generation: u64,
    /// The generation without it, when a detach is under way.
    #[serde(default)]
    pub detaching: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRecord {
    pub name: String,
    pub created_at: UnixMillis,
}

/// A NixOps4 state document kept for a NixOps4 deployment, keyed by name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NixopsStateRecord {
    pub name: String,
    /// The document after every applied event, JSON.
    pub document: String,
    /// How many events it has: the next event's index.
    pub events: u64,
    /// The events whose patch could not be applied.
    pub unapplied: Vec<u64>,
    pub created_at: UnixMillis,
    pub updated_at: UnixMillis,
}

/// One event of a NixOps4 state, keyed by the state's name and its index.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NixopsEventRecord {
    pub name: String,
    pub index: u64,
    pub time: UnixMillis,
    pub event: String,
    pub nixops_version: String,
    /// The RFC 6902 patch as it came, JSON.
    pub patch: String,
    pub by: String,
    pub applied: bool,
    pub error: Option<String>,
}
