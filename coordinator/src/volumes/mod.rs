//! Block storage behind [`BlockStorage`]: volumes made, grown, placed on
//! nodes, snapshotted and removed. [`linstor::Linstor`] implements it over
//! LINSTOR's REST API v1; the contract suite in `tests/system/block_storage.rs`
//! runs it against a LINSTOR controller double that backs volumes with
//! sparse files and attachments with loop devices.
//!
//! Every create is idempotent: an existing object with the same parameters
//! is success, one with other parameters a [`BlockError::Conflict`].
//!
//! **Ours only.** Block storage is shared with other tools (linstor-proxmox
//! keeps Proxmox VMs' disks there) and other fleets. Every volume Drover
//! creates carries this fleet's identity in a property set by the request
//! that creates it ([`OWNER_PROPERTY`]); listing shows only volumes that
//! carry it, and every change (resize, placing on a node, snapshots,
//! rollback, delete) first reads the volume back and refuses one that does
//! not ([`BlockError::NotOurs`]). A resource made by someone else is taken
//! over only by [`BlockStorage::adopt`], an explicit admin command.

pub mod linstor;

use serde::{Deserialize, Serialize};

pub use crate::volume_rules::{MAX_VOLUME_BYTES, MIN_VOLUME_BYTES};

/// The property that names the fleet a volume belongs to: LINSTOR's `Aux/`
/// namespace is for users' own properties.
pub const OWNER_PROPERTY: &str = "Aux/drover-fleet";

/// What to create.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeSpec {
    pub name: String,
    pub size_kib: u64,
    /// Diskful replicas to place (LINSTOR's place count).
    pub replicas: u8,
    /// Spawn from this resource group instead of placing by storage pool.
    pub resource_group: Option<String>,
}

/// A volume as the block storage reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Volume {
    pub name: String,
    pub size_kib: u64,
    pub replicas: Vec<Replica>,
    /// The fleet it belongs to ([`OWNER_PROPERTY`]); `None`: made by
    /// someone else.
    pub owner: Option<String>,
}

/// What [`BlockStorage::create`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Created {
    pub volume: Volume,
    /// The volume did not exist before this call: this call made it.
    pub made: bool,
}

impl Volume {
    pub fn replica(&self, node: &str) -> Option<&Replica> {
        self.replicas.iter().find(|r| r.node == node)
    }
}

/// The volume on one node: a diskful replica or a diskless client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replica {
    pub node: String,
    /// `UpToDate`, `Diskless`, `Inconsistent`, ...
    pub disk_state: String,
    pub diskless: bool,
    pub in_use: bool,
    pub device_path: Option<String>,
}

impl Replica {
    /// Whether the node can use the device now.
    pub fn ready(&self) -> bool {
        matches!(self.disk_state.as_str(), "UpToDate" | "Diskless")
    }
}

/// One entry of LINSTOR's answer (`ApiCallRc`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Report {
    pub ret_code: i64,
    pub message: String,
    #[serde(default)]
    pub cause: Option<String>,
    #[serde(default)]
    pub details: Option<String>,
    #[serde(default)]
    pub correction: Option<String>,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)?;
        if let Some(cause) = self.cause.as_deref().filter(|c| !c.is_empty()) {
            write!(f, " (cause: {cause})")?;
        }
        if let Some(correction) = self.correction.as_deref().filter(|c| !c.is_empty()) {
            write!(f, "; correction: {correction}")?;
        }
        Ok(())
    }
}

/// Why a block storage call failed.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error("the LINSTOR controller {url} is unreachable: {reason}; is it running, and is `linstor.controller` right?")]
    Unreachable { url: String, reason: String },
    #[error("the LINSTOR controller refused Drover's credentials (HTTP {0}); check `linstor.client_certificate`")]
    Unauthorized(u16),
    #[error("{what} {name:?} does not exist")]
    NotFound { what: &'static str, name: String },
    #[error("{0}")]
    Conflict(String),
    #[error("volume {name:?} is {current} and cannot shrink to {asked}; volumes only grow")]
    Shrink { name: String, current: String, asked: String },
    #[error("LINSTOR answered {status}: {}", join(.reports))]
    Linstor { status: u16, reports: Vec<Report> },
    #[error("LINSTOR's answer was not understood: {0}")]
    Decode(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Config(String),
    /// The resource exists but does not carry this fleet's identity.
    #[error("{}", not_ours(.name, .owner.as_deref()))]
    NotOurs { name: String, owner: Option<String> },
}

fn not_ours(name: &str, owner: Option<&str>) -> String {
    match owner {
        None => format!(
            "the block storage holds a resource {name:?} that Drover did not make (it lacks the {OWNER_PROPERTY} property); Drover leaves \
             it alone — if it is this fleet's to manage, take it over with `drover volumes adopt {name} --yes-adopt {name}`"
        ),
        Some(other) => {
            format!("the block storage resource {name:?} belongs to another Drover fleet ({OWNER_PROPERTY} = {other}); this coordinator leaves it alone")
        }
    }
}

fn join(reports: &[Report]) -> String {
    let text: Vec<String> = reports.iter().map(Report::to_string).collect();
    if text.is_empty() {
        "no message".into()
    } else {
        text.join("; ")
    }
}

/// Checks a volume name before anything is sent (see
/// [`crate::volume_rules`]).
pub fn check_name(name: &str) -> Result<(), BlockError> {
    crate::volume_rules::check_name(name).map_err(BlockError::Invalid)
}

/// Checks a snapshot name (the same rules as volumes).
pub fn check_snapshot_name(name: &str) -> Result<(), BlockError> {
    crate::volume_rules::check_name_of("snapshot", name).map_err(BlockError::Invalid)
}

/// Checks a size in bytes and turns it into KiB.
pub fn size_kib(bytes: u64) -> Result<u64, BlockError> {
    crate::volume_rules::size_kib(bytes, None).map_err(BlockError::Invalid)
}

/// The device path of a volume on a node, stable across reboots.
pub fn device_path(name: &str) -> String {
    format!("/dev/drbd/by-res/{name}/0")
}

/// Block storage, as Drover needs it. An implementation is made for one
/// fleet ([`Self::owner`]) and acts only on the volumes that carry it.
#[async_trait::async_trait]
pub trait BlockStorage: Send + Sync {
    /// This fleet's identity, as the volumes it owns carry it.
    fn owner(&self) -> &str;
    /// The volume by name, whoever owns it (its [`Volume::owner`] says),
    /// so that a caller can say why it will not touch it.
    async fn volume(&self, name: &str) -> Result<Option<Volume>, BlockError>;
    /// This fleet's volumes, in a few requests whatever their number.
    async fn volumes(&self) -> Result<Vec<Volume>, BlockError>;
    /// Creates the volume, owned by this fleet, and places its replicas;
    /// this fleet's existing volume of the same size is returned (`made`
    /// false), one of another size is a conflict, and anyone else's is
    /// [`BlockError::NotOurs`]. A placement that fails removes what this
    /// call made.
    async fn create(&self, spec: &VolumeSpec) -> Result<Created, BlockError>;
    /// Marks a resource no fleet owns as this fleet's; this fleet's own is
    /// returned as it is, another fleet's refused.
    async fn adopt(&self, name: &str) -> Result<Volume, BlockError>;
    /// Grows the volume; a smaller size is refused.
    async fn resize(&self, name: &str, size_kib: u64) -> Result<(), BlockError>;
    /// Makes the volume usable on `node` (a diskless client where the node
    /// holds no replica). Idempotent.
    async fn make_available(&self, name: &str, node: &str) -> Result<(), BlockError>;
    /// Takes a diskless client off `node`; a diskful replica stays (it is
    /// part of the volume's redundancy). Idempotent.
    async fn remove_from_node(&self, name: &str, node: &str) -> Result<(), BlockError>;
    async fn snapshot(&self, name: &str, snapshot: &str) -> Result<(), BlockError>;
    async fn snapshots(&self, name: &str) -> Result<Vec<String>, BlockError>;
    async fn delete_snapshot(&self, name: &str, snapshot: &str) -> Result<(), BlockError>;
    /// Returns the volume to a snapshot; refused while it is in use.
    async fn rollback(&self, name: &str, snapshot: &str) -> Result<(), BlockError>;
    /// Deletes the volume and its data. Idempotent; refused while it has
    /// snapshots.
    async fn delete(&self, name: &str) -> Result<(), BlockError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_quote_message_and_correction() {
        let e = BlockError::Linstor {
            status: 500,
            reports: vec![Report {
                ret_code: -4611686018427387596,
                message: "Storage pool 'nope' not found".into(),
                cause: Some("The specified storage pool could not be found".into()),
                details: None,
                correction: Some("Create a storage pool 'nope' first".into()),
            }],
        };
        let text = e.to_string();
        assert!(text.contains("Storage pool 'nope' not found") && text.contains("correction: Create a storage pool"), "{text}");
    }
}
