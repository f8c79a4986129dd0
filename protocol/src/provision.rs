//! Provisioning messages: VMs the coordinator makes on a hypervisor
//! (protocol 6). Re-exported by [`crate::v1`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::volume::Filesystem;

/// A data disk a provisioned VM gets: a virtio disk whose serial is
/// `vol-NAME`, found in the guest at `/dev/disk/by-id/virtio-vol-NAME`,
/// formatted (only when blank) and mounted at `mount_point`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct ProvisionDisk {
    pub name: String,
    pub size_bytes: u64,
    pub mount_point: String,
    pub filesystem: Filesystem,
}

impl ProvisionDisk {
    /// The disk's serial (at most 20 bytes: `vol-` and a name of at most 16).
    pub fn serial(&self) -> String {
        format!("vol-{}", self.name)
    }
}

/// `drover machines provision`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct ProvisionRequest {
    /// The machine's name (a DNS label); provisioning a name again returns
    /// the provision that has it.
    pub name: String,
    /// A provider declared in the coordinator's `drover.toml`.
    pub provider: String,
    /// The provider's template (Proxmox: a VM id), or its default.
    pub template: Option<String>,
    pub cores: Option<u32>,
    pub memory_bytes: Option<u64>,
    pub disk_bytes: Option<u64>,
    pub labels: BTreeMap<String, String>,
    pub disks: Vec<ProvisionDisk>,
}

/// Where a provision is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum ProvisionState {
    /// The VM is being made.
    Provisioning,
    /// The VM runs; its agent has not enrolled yet.
    Booting,
    /// Its agent enrolled; not connected yet.
    Enrolled,
    /// Its agent is connected.
    Online,
    /// It did not come up (see `error`); its VM was deleted.
    Failed,
    /// `drover machines destroy` removed it.
    Destroyed,
}

impl ProvisionState {
    pub fn as_str(self) -> &'static str {
        match self {
            ProvisionState::Provisioning => "provisioning",
            ProvisionState::Booting => "booting",
            ProvisionState::Enrolled => "enrolled",
            ProvisionState::Online => "online",
            ProvisionState::Failed => "failed",
            ProvisionState::Destroyed => "destroyed",
        }
    }

    /// No further change will come by itself.
    pub fn settled(self) -> bool {
        matches!(self, ProvisionState::Online | ProvisionState::Failed | ProvisionState::Destroyed)
    }
}

/// A provision as the coordinator records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct ProvisionInfo {
    pub name: String,
    pub provider: String,
    pub state: ProvisionState,
    /// The hypervisor's id for the VM, once made.
    pub vm_id: Option<String>,
    /// The machine its agent enrolled as.
    pub machine_id: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub created_at: u64,
    /// When it must be online, or fail.
    pub deadline_at: u64,
    /// Why it failed, with the VM's console tail.
    pub error: Option<String>,
}

/// Something a plan found that would make its apply fail (protocol 10).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Problem {
    /// What it is about (a machine's name).
    pub subject: String,
    pub message: String,
}
