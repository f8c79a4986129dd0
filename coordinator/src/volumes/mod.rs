//! Block storage behind [`BlockStorage`]: volumes made, grown, placed on
//! nodes, snapshotted and removed. [`linstor::Linstor`] implements it over
//! LINSTOR's REST API v1; the contract suite in `tests/block_storage.rs`
//! runs it against a LINSTOR controller double that backs volumes with
//! sparse files and attachments with loop devices.
//!
//! Every create is idempotent: an existing object with the same parameters
//! is success, one with other parameters a [`BlockError::Conflict`].

pub mod linstor;

use serde::{Deserialize, Serialize};

/// The largest volume Drover asks for (64 TiB), to refuse typing errors.
pub const MAX_VOLUME_BYTES: u64 = 64 << 40;
/// The smallest (xfs needs 300 MiB; 16 MiB keeps ext4 sensible).
pub const MIN_VOLUME_BYTES: u64 = 16 << 20;

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
}

fn join(reports: &[Report]) -> String {
    let text: Vec<String> = reports.iter().map(Report::to_string).collect();
    if text.is_empty() {
        "no message".into()
    } else {
        text.join("; ")
    }
}

/// Checks a volume name before anything is sent: LINSTOR's resource names
/// (letters, digits, `_` and `-`, starting with a letter, at most 48), and
/// nothing a path could misread.
pub fn check_name(name: &str) -> Result<(), BlockError> {
    let ok = !name.is_empty()
        && name.len() <= 48
        && name.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(BlockError::Invalid(format!(
            "volume name {name:?} is invalid: use 1 to 48 letters, digits, '_' and '-', starting with a letter"
        )))
    }
}

/// Checks a snapshot name (the same rules as volumes).
pub fn check_snapshot_name(name: &str) -> Result<(), BlockError> {
    check_name(name).map_err(|_| {
        BlockError::Invalid(format!(
            "snapshot name {name:?} is invalid: use 1 to 48 letters, digits, '_' and '-', starting with a letter"
        ))
    })
}

/// Checks a size in bytes and turns it into KiB.
pub fn size_kib(bytes: u64) -> Result<u64, BlockError> {
    if !(MIN_VOLUME_BYTES..=MAX_VOLUME_BYTES).contains(&bytes) {
        return Err(BlockError::Invalid(format!(
            "volume size {} is out of range: use {} to {}",
            bytesize::ByteSize::b(bytes),
            bytesize::ByteSize::b(MIN_VOLUME_BYTES),
            bytesize::ByteSize::b(MAX_VOLUME_BYTES)
        )));
    }
    Ok(bytes.div_ceil(1024))
}

/// The device path of a volume on a node, stable across reboots.
pub fn device_path(name: &str) -> String {
    format!("/dev/drbd/by-res/{name}/0")
}

/// Block storage, as Drover needs it.
#[async_trait::async_trait]
pub trait BlockStorage: Send + Sync {
    async fn volume(&self, name: &str) -> Result<Option<Volume>, BlockError>;
    async fn volumes(&self) -> Result<Vec<Volume>, BlockError>;
    /// Creates the volume and places its replicas; an existing volume of
    /// the same size is returned, one of another size is a conflict.
    async fn create(&self, spec: &VolumeSpec) -> Result<Volume, BlockError>;
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
    /// Deletes the volume and its data. Idempotent.
    async fn delete(&self, name: &str) -> Result<(), BlockError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_linstor_rules() {
        for ok in ["data", "acme-pg_1", "a"] {
            check_name(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in ["", "1data", "../x", "a/b", "a b", &"x".repeat(49)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sizes_are_bounded_and_rounded_up() {
        assert_eq!(size_kib(20 << 20).ok(), Some(20 << 10));
        assert_eq!(size_kib((20 << 20) + 1).ok(), Some((20 << 10) + 1));
        assert!(size_kib(1).is_err());
        assert!(size_kib(u64::MAX).is_err());
    }

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
