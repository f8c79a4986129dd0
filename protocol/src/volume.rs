//! Volume messages (protocol version 3): block devices from the provider's
//! block storage (LINSTOR), given to one machine at a time, formatted only
//! when provably blank and mounted by its agent before the switch. Protocol
//! 10 added what the coordinator vouches for ([`VolumeMount::fresh`]), the
//! operator's explicit overwrite, and adopting resources Drover did not
//! make.

use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch (as `v1::UnixMillis`, which re-exports
/// this module's types).
pub type UnixMillis = u64;

/// A filesystem Drover puts on a blank volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[serde(rename_all = "lowercase")]
pub enum Filesystem {
    Ext4,
    Xfs,
}

impl Filesystem {
    pub fn as_str(self) -> &'static str {
        match self {
            Filesystem::Ext4 => "ext4",
            Filesystem::Xfs => "xfs",
        }
    }
}

impl std::fmt::Display for Filesystem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Filesystem {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ext4" => Ok(Filesystem::Ext4),
            "xfs" => Ok(Filesystem::Xfs),
            other => Err(format!("unknown filesystem {other:?}; use ext4 or xfs")),
        }
    }
}

/// A volume a deployment needs (`--volume NAME:/mount[:fs][,size=SIZE]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct VolumeClaim {
    pub name: String,
    pub mount_point: String,
    pub filesystem: Filesystem,
    /// Created with this size when it does not exist yet.
    pub size_bytes: Option<u64>,
}

/// A volume in an assignment: where its device appears on the machine and
/// where it is mounted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct VolumeMount {
    pub name: String,
    /// The device's stable path, e.g. `/dev/drbd/by-res/NAME/0` (or a
    /// hypervisor disk's `/dev/disk/by-id/virtio-SERIAL`).
    pub device: String,
    pub mount_point: String,
    pub filesystem: Filesystem,
    pub size_bytes: u64,
    /// The coordinator has recorded that this volume was formatted: a
    /// missing filesystem is then an error to report, never a reason to
    /// format. To a peer older than protocol 10 it is also set for every
    /// volume the coordinator does not vouch for as [`Self::fresh`].
    pub formatted: bool,
    /// A rollout's revert: before mounting, the agent releases the volume
    /// and has the coordinator roll it back to this snapshot (taken before
    /// the rollout switched the machine), once per generation.
    pub restore_snapshot: Option<String>,
    /// The coordinator vouches that Drover created this volume and that it
    /// was never formatted nor given to a machine before this attachment
    /// (protocol 10). Only then may the agent format it, and only when the
    /// device also reads as never written. Stored records from before
    /// protocol 10 read as not fresh.
    #[serde(default)]
    pub fresh: bool,
    /// An operator allowed formatting over whatever the device holds
    /// (`drover volumes allow-format NAME --yes-overwrite NAME`); the agent
    /// still mounts the filesystem asked for when it finds it (protocol 10).
    #[serde(default)]
    pub overwrite: bool,
}

/// A volume's state on a machine, as its agent reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct VolumeState {
    pub name: String,
    pub mount_point: String,
    pub mounted: bool,
    /// The agent has formatted it, or found Drover's filesystem on it.
    pub formatted: bool,
    pub filesystem: Option<String>,
    pub device_bytes: u64,
    pub total_bytes: u64,
    pub used_bytes: u64,
    /// Why the filesystem has not grown to the device's size yet.
    pub grow_pending: Option<String>,
    /// Why the volume is not mounted, when it should be.
    pub error: Option<String>,
}

/// `drover volumes ...`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum VolumeRequest {
    List,
    Show {
        name: String,
    },
    Create {
        name: String,
        size_bytes: u64,
        replicas: Option<u8>,
        resource_group: Option<String>,
    },
    /// Grow only.
    Resize {
        name: String,
        size_bytes: u64,
    },
    /// Gives the volume to a machine: it is made available on the machine's
    /// node and the machine gets a generation that mounts it.
    Attach {
        name: String,
        machine: String,
        mount_point: String,
        filesystem: Filesystem,
    },
    /// The holding machine unmounts it (a generation without it), then the
    /// volume is taken off its node.
    Detach {
        name: String,
    },
    Snapshot {
        name: String,
        snapshot: Option<String>,
    },
    /// Lists snapshots; with `prune`, deletes all but those of running
    /// rollouts first.
    Snapshots {
        name: String,
        prune: bool,
    },
    Rollback {
        name: String,
        snapshot: String,
    },
    /// `confirm` must repeat the name (`--yes-delete-data NAME`).
    Delete {
        name: String,
        confirm: String,
    },
    /// Takes over a block storage resource Drover did not create: marks it
    /// with this fleet's identity and records it, never as fresh (protocol
    /// 10). `confirm` must repeat the name (`--yes-adopt NAME`).
    Adopt {
        name: String,
        confirm: String,
    },
    /// Lets the next machine the volume is given to format it whatever it
    /// holds, once (protocol 10). `confirm` must repeat the name
    /// (`--yes-overwrite NAME`).
    AllowFormat {
        name: String,
        confirm: String,
    },
}

/// A replica of a volume on a storage node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct ReplicaInfo {
    pub node: String,
    pub disk_state: String,
    pub diskless: bool,
    pub in_use: bool,
}

/// Which machine holds a volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct VolumeAttachment {
    pub machine_id: String,
    pub hostname: String,
    pub node: String,
    pub mount_point: String,
    pub filesystem: Filesystem,
    /// The generation that gives it to the machine.
    pub generation: u64,
    /// A detach is under way: the machine has a generation without it.
    pub detaching: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct VolumeInfo {
    pub name: String,
    pub size_bytes: u64,
    pub replicas: Vec<ReplicaInfo>,
    pub attached: Option<VolumeAttachment>,
    pub formatted: bool,
    /// What the holding machine's agent last reported.
    pub state: Option<VolumeState>,
    pub created_at: UnixMillis,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct SnapshotInfo {
    pub name: String,
    pub volume: String,
    pub created_at: UnixMillis,
}

// An answer is moved once into a frame; boxing its larger variant would buy
// nothing (as for the other answers in `v1`).
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum VolumeResponse {
    Volume(VolumeInfo),
    Volumes(Vec<VolumeInfo>),
    Snapshots(Vec<SnapshotInfo>),
    Done,
}
