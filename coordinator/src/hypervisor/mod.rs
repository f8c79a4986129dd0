//! Hypervisors behind [`Hypervisor`]: VMs made from a template or image,
//! given a seed, started, stopped and deleted. [`qemu::Qemu`] runs real
//! VMs on this machine; [`proxmox::Proxmox`] drives a Proxmox VE cluster
//! over its REST API. The contract suite in `tests/system/provision.rs` runs both
//! (Proxmox against the double in `testing/proxmox-double`).
//!
//! **Ours only.** Clusters are shared with other tenants, tools and
//! coordinators, and VM ids are reused (Proxmox hands out the lowest free
//! one). Every VM a provider makes carries its [`VmIdentity`] — this
//! fleet, this provider, the provision — from the request that creates it,
//! and every destructive call (stop, delete) and every start first reads
//! the VM back and proceeds only if it carries this fleet's identity and
//! that provision's id; [`Hypervisor::list`] shows only this fleet's and
//! this provider's VMs. A VM id that now holds something else is
//! [`HypervisorError::NotOurs`], never touched.

pub mod netns;
pub mod proxmox;
pub mod qemu;

use drover_protocol::seed::Seed;

/// The most cores a VM may ask for, to refuse typing errors.
pub const MAX_CORES: u32 = 256;
/// The memory a VM may have.
pub const MEMORY_RANGE: std::ops::RangeInclusive<u64> = 128 << 20..=4 << 40;
/// The size of a VM's system disk.
pub const DISK_RANGE: std::ops::RangeInclusive<u64> = 64 << 20..=64 << 40;

/// Checks a VM's cores, memory and disk against [`MAX_CORES`],
/// [`MEMORY_RANGE`] and [`DISK_RANGE`]; the error names the key.
pub fn check_shape(cores: Option<u32>, memory_bytes: Option<u64>, disk_bytes: Option<u64>) -> Result<(), (&'static str, String)> {
    if cores.is_some_and(|c| c == 0 || c > MAX_CORES) {
        return Err(("cores", format!("must be between 1 and {MAX_CORES}")));
    }
    let size = |b: u64| bytesize::ByteSize::b(b).to_string();
    if memory_bytes.is_some_and(|m| !MEMORY_RANGE.contains(&m)) {
        return Err(("memory", format!("must be between {} and {}", size(*MEMORY_RANGE.start()), size(*MEMORY_RANGE.end()))));
    }
    if disk_bytes.is_some_and(|d| !DISK_RANGE.contains(&d)) {
        return Err(("disk", format!("must be between {} and {}", size(*DISK_RANGE.start()), size(*DISK_RANGE.end()))));
    }
    Ok(())
}

/// A data disk: a virtio disk with a serial (at most 20 bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataDisk {
    pub serial: String,
    pub size_bytes: u64,
}

/// Whose a VM is: the fleet (`Ca::fleet_id`), the provider (its name in
/// `drover.toml`) and the provision (`p-...`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct VmIdentity {
    pub fleet: String,
    pub provider: String,
    pub provision: String,
}

const FLEET_KEY: &str = "drover-fleet";
const PROVIDER_KEY: &str = "drover-provider";
const PROVISION_KEY: &str = "drover-provision";

impl VmIdentity {
    /// As lines `drover-fleet: ...`, `drover-provider: ...`,
    /// `drover-provision: ...` (a VM's description, an identity file).
    pub fn to_text(&self) -> String {
        format!("{FLEET_KEY}: {}\n{PROVIDER_KEY}: {}\n{PROVISION_KEY}: {}\n", self.fleet, self.provider, self.provision)
    }

    /// Reads [`Self::to_text`] from a text that may hold other lines; `None`
    /// when any of the three is missing.
    pub fn from_text(text: &str) -> Option<Self> {
        let field = |key: &str| text.lines().find_map(|l| l.trim().strip_prefix(key).and_then(|r| r.strip_prefix(':')).map(|v| v.trim().to_string()));
        Some(VmIdentity { fleet: field(FLEET_KEY)?, provider: field(PROVIDER_KEY)?, provision: field(PROVISION_KEY)? })
    }
}

/// The fleet and provider a hypervisor client acts for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub fleet: String,
    pub provider: String,
}

impl Owner {
    /// The identity a VM of `provision` carries.
    pub fn identity(&self, provision: &str) -> VmIdentity {
        VmIdentity { fleet: self.fleet.clone(), provider: self.provider.clone(), provision: provision.to_string() }
    }

    /// Whether a VM carrying `found` is this owner's.
    pub fn owns(&self, found: &VmIdentity) -> bool {
        found.fleet == self.fleet && found.provider == self.provider
    }

    /// Decides whether VM `vm_id`, read back as `found` (`None`: no such
    /// VM; `Some(None)`: a VM without Drover's identity), may be acted on
    /// for `provision`: `Ok(true)` if it is that provision's, `Ok(false)`
    /// if there is no such VM, else [`HypervisorError::NotOurs`].
    pub fn check(&self, vm_id: &str, provision: &str, found: Option<Option<VmIdentity>>) -> Result<bool, HypervisorError> {
        match found {
            None => Ok(false),
            Some(Some(id)) if self.owns(&id) && id.provision == provision => Ok(true),
            Some(found) => Err(HypervisorError::NotOurs {
                vm_id: vm_id.to_string(),
                carries: match found {
                    None => "no Drover identity".to_string(),
                    Some(id) if id.fleet != self.fleet => format!("another fleet's identity ({})", id.fleet),
                    Some(id) if id.provider != self.provider => format!("provider {}'s identity", id.provider),
                    Some(id) => format!("provision {}", id.provision),
                },
                wanted: provision.to_string(),
            }),
        }
    }
}

/// What to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmSpec {
    /// The provision's id: part of the identity that finds the VM again.
    pub provision: String,
    pub name: String,
    pub template: Option<String>,
    pub cores: u32,
    pub memory_bytes: u64,
    pub disk_bytes: u64,
    pub disks: Vec<DataDisk>,
}

/// A VM of this fleet and provider, as the provider reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmInfo {
    pub vm_id: String,
    /// The provision it belongs to.
    pub provision: String,
    pub running: bool,
}

/// What a delete did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removed {
    /// The provision's VM was deleted.
    Deleted,
    /// There was no VM of that id: nothing to do.
    Gone,
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
    /// The VM id holds a VM that is not the one asked for: left alone.
    #[error("VM {vm_id} carries {carries}, not provision {wanted} of this fleet; Drover leaves it alone (VM ids are reused)")]
    NotOurs { vm_id: String, carries: String, wanted: String },
    /// What was asked cannot be done by this provider; nothing changed.
    #[error("{0}")]
    Unsupported(String),
}

#[async_trait::async_trait]
pub trait Hypervisor: Send + Sync {
    /// `qemu` or `proxmox`.
    fn kind(&self) -> &'static str;

    /// The fleet and provider this client acts for.
    fn owner(&self) -> &Owner;

    /// Whether [`Self::delete`] can keep a VM's data disks.
    fn keeps_disks(&self) -> bool;

    /// Checks what [`Self::create`] would need, before anything is made
    /// (e.g. Proxmox's limit on the SMBIOS field that carries the seed).
    fn check(&self, spec: &VmSpec, seed: &Seed) -> Result<(), HypervisorError>;

    /// Makes the VM (disks, seed, identity), not started; returns its id.
    /// The identity is set by the request that creates the VM. The seed's
    /// token is handed over only in a mode-0600 file or the provider's API,
    /// never on a command line of this machine.
    async fn create(&self, spec: &VmSpec, seed: &Seed) -> Result<String, HypervisorError>;

    /// Starts the VM of `provision` (read back first).
    async fn start(&self, vm_id: &str, provision: &str) -> Result<(), HypervisorError>;

    /// Stops the VM of `provision` at once (power off), read back first;
    /// stopping a stopped VM is success.
    async fn stop(&self, vm_id: &str, provision: &str) -> Result<(), HypervisorError>;

    /// Stops and deletes the VM of `provision`, read back first. Its data
    /// disks are deleted too unless `keep_disks` (see [`Self::keeps_disks`]).
    /// A VM id that holds nothing is [`Removed::Gone`]; one that holds
    /// another VM is [`HypervisorError::NotOurs`].
    async fn delete(&self, vm_id: &str, provision: &str, keep_disks: bool) -> Result<Removed, HypervisorError>;

    /// Every VM this fleet's provider made (read back by its identity).
    async fn list(&self) -> Result<Vec<VmInfo>, HypervisorError>;

    /// A VM made before VMs carried a fleet's identity is marked only with
    /// its provision's id (random, 40 bits): when VM `vm_id` carries
    /// exactly `provision`'s old mark and no identity, it is given this
    /// fleet's identity and `true` returned. Anything else is left alone.
    async fn migrate(&self, vm_id: &str, provision: &str) -> Result<bool, HypervisorError>;

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
    fn an_identity_reads_back_from_a_text_with_other_lines_and_decides_what_may_be_touched() {
        let owner = Owner { fleet: "drover-00aa".into(), provider: "pve".into() };
        let id = owner.identity("p-0000000001");
        let text = format!("Drover machine web-1\n{}", id.to_text());
        assert_eq!(VmIdentity::from_text(&text), Some(id.clone()));
        assert_eq!(VmIdentity::from_text("a VM made by hand"), None);
        assert!(owner.check("100", "p-0000000001", Some(Some(id.clone()))).expect("ours"));
        assert!(!owner.check("100", "p-0000000001", None).expect("gone"));
        for (found, named) in [
            (None, "no Drover identity"),
            (Some(VmIdentity { fleet: "drover-ffff".into(), ..id.clone() }), "another fleet"),
            (Some(VmIdentity { provider: "pve-drbd".into(), ..id.clone() }), "provider pve-drbd"),
            (Some(owner.identity("p-0000000002")), "provision p-0000000002"),
        ] {
            let e = owner.check("100", "p-0000000001", Some(found)).expect_err("not ours");
            assert!(matches!(e, HypervisorError::NotOurs { .. }) && e.to_string().contains(named), "{e}");
        }
    }

    #[test]
    fn console_tails_start_at_a_line_and_drop_escapes() {
        let text = "\u{1b}[2J\u{1b}[0mSeaBIOS\r\nline one\nline two\nline three\n";
        assert_eq!(tail_text(text, 1000), "SeaBIOS\nline one\nline two\nline three");
        assert_eq!(tail_text(text, 12), "line three");
    }
}
