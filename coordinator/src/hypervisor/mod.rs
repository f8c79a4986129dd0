//! Hypervisors behind [`Hypervisor`]: VMs made from a template or image,
//! given a seed, started, stopped and deleted. [`qemu::Qemu`] runs real
//! VMs on this machine; [`proxmox::Proxmox`] drives a Proxmox VE cluster
//! over its REST API. The contract suite in `tests/hypervisor.rs` runs
//! both (Proxmox against the double in `testing/proxmox-double`).
//!
//! Every VM a provider makes is tagged with its provision's id, so that
//! the coordinator can find its VMs again after a crash and reconcile them
//! with its records.

pub mod netns;
pub mod proxmox;
pub mod qemu;

use drover_protocol::seed::Seed;

/// A data disk: a virtio disk with a serial (at most 20 bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataDisk {
    pub serial: String,
    pub size_bytes: u64,
}

/// What to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmSpec {
    /// The provision's id: the tag that finds the VM again.
    pub provision: String,
    pub name: String,
    pub template: Option<String>,
    pub cores: u32,
    pub memory_bytes: u64,
    pub disk_bytes: u64,
    pub disks: Vec<DataDisk>,
}

/// A VM a provider holds, as it reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmInfo {
    pub vm_id: String,
    /// The provision tag it carries.
    pub provision: String,
    pub running: bool,
}

/// Why a hypervisor call failed. Messages name the VM and the fix.
#[derive(Debug, thiserror::Error)]
pub enum HypervisorError {
    /// The provider refused our credentials.
    #[error("{0}")]
    Auth(String),
    /// The provider's limit on VMs is reached.
    #[error("{0}")]
    Full(String),
    /// A VM that does not exist.
    #[error("no VM {0}")]
    NotFound(String),
    /// A task or command failed; the text carries its output's tail.
    #[error("{0}")]
    Failed(String),
    /// The provider could not be reached or answered nonsense.
    #[error("{0}")]
    Unavailable(String),
}

#[async_trait::async_trait]
pub trait Hypervisor: Send + Sync {
    /// `qemu` or `proxmox`.
    fn kind(&self) -> &'static str;

    /// Makes the VM (disks, seed, tag), not started; returns its id. The
    /// seed's token is handed over only in a mode-0600 file or the
    /// provider's API, never on a command line of this machine.
    async fn create(&self, spec: &VmSpec, seed: &Seed) -> Result<String, HypervisorError>;

    async fn start(&self, vm_id: &str) -> Result<(), HypervisorError>;

    /// Stops the VM at once (power off); stopping a stopped VM is success.
    async fn stop(&self, vm_id: &str) -> Result<(), HypervisorError>;

    /// Stops and deletes the VM. Its data disks are deleted too unless
    /// `keep_disks`, where the provider can keep them. Deleting a VM that
    /// does not exist is success.
    async fn delete(&self, vm_id: &str, keep_disks: bool) -> Result<(), HypervisorError>;

    /// Every VM this provider made (it carries a provision tag).
    async fn list(&self) -> Result<Vec<VmInfo>, HypervisorError>;

    /// The end of the VM's console (QEMU's serial log) or of its last
    /// task's log (Proxmox), for errors.
    async fn console_tail(&self, vm_id: &str) -> String;
}

/// The last `max` bytes of `text`, from a line start, without terminal
/// escape sequences.
pub fn tail_text(text: &str, max: usize) -> String {
    let clean: String = strip_escapes(text);
    let trimmed = clean.trim_end();
    if trimmed.len() <= max {
        return trimmed.to_string();
    }
    let mut start = trimmed.len() - max;
    while !trimmed.is_char_boundary(start) {
        start += 1;
    }
    let rest = &trimmed[start..];
    rest.split_once('\n').map(|(_, r)| r).unwrap_or(rest).to_string()
}

fn strip_escapes(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for n in chars.by_ref() {
                    if n.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        if c == '\r' || (c.is_control() && c != '\n' && c != '\t') {
            continue;
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_tails_start_at_a_line_and_drop_escapes() {
        let text = "\u{1b}[2J\u{1b}[0mSeaBIOS\r\nline one\nline two\nline three\n";
        assert_eq!(tail_text(text, 1000), "SeaBIOS\nline one\nline two\nline three");
        assert_eq!(tail_text(text, 12), "line three");
    }
}
