//! A hypervisor in memory that keeps [`Hypervisor`]'s contract the way
//! Proxmox VE does: VMs numbered from 100 with the lowest free id handed out
//! again (so numbers are reused, as on a real cluster), every VM Drover
//! makes carrying its [`VmIdentity`] from the create, every start, stop and
//! delete reading it back first, and VMs made by hand or by other fleets
//! and providers on the same host left alone. Several owners share one
//! [`FakeHost`]. `contract::hypervisor` runs against it, QEMU and the
//! Proxmox client.
//!
//! A VM here never boots: a test plays its agent (enrolls with the token in
//! [`FakeHost::seed_of`]) when it wants one online.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use drover_coordinator::hypervisor::{Hypervisor, HypervisorError, Owner, Removed, VmIdentity, VmInfo, VmSpec};
use drover_protocol::seed::Seed;

#[derive(Debug, Clone)]
struct Vm {
    /// `None`: made by hand, without Drover's identity.
    identity: Option<VmIdentity>,
    /// Marked only with a provision id (a VM from before identities).
    old_mark: Option<String>,
    running: bool,
    seed: Option<Seed>,
    spec: Option<VmSpec>,
}

#[derive(Default)]
struct State {
    vms: BTreeMap<u32, Vm>,
    /// VMs the host can hold at most.
    capacity: Option<usize>,
    creates: u64,
    /// The next starts fail (a provider busy for a while).
    failing_starts: u32,
}

/// One host (or cluster), shared by every owner's client.
#[derive(Clone, Default)]
pub struct FakeHost {
    state: Arc<Mutex<State>>,
}

/// A client of a [`FakeHost`] for one fleet and provider.
pub struct FakeHypervisor {
    host: FakeHost,
    owner: Owner,
}

impl FakeHost {
    pub fn new() -> Self {
        FakeHost::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The client of `fleet`'s provider `provider`.
    pub fn client(&self, fleet: &str, provider: &str) -> FakeHypervisor {
        FakeHypervisor { host: self.clone(), owner: Owner { fleet: fleet.to_string(), provider: provider.to_string() } }
    }

    /// A VM made by hand (no identity) at `id`, running.
    pub fn make_by_hand(&self, id: u32) {
        self.lock().vms.insert(id, Vm { identity: None, old_mark: None, running: true, seed: None, spec: None });
    }

    /// A VM from before identities: marked with `provision` only.
    pub fn make_old_style(&self, id: u32, provision: &str) {
        self.lock().vms.insert(id, Vm { identity: None, old_mark: Some(provision.to_string()), running: true, seed: None, spec: None });
    }

    /// At most `n` VMs on the host.
    pub fn set_capacity(&self, n: usize) {
        self.lock().capacity = Some(n);
    }

    /// The seed VM `id` was given (what its agent would read at boot).
    pub fn seed_of(&self, id: &str) -> Option<Seed> {
        self.lock().vms.get(&id.parse().ok()?)?.seed.clone()
    }

    /// What VM `id` was made with.
    pub fn spec_of(&self, id: &str) -> Option<VmSpec> {
        self.lock().vms.get(&id.parse().ok()?)?.spec.clone()
    }

    /// Every VM: (id, identity, running).
    pub fn vms(&self) -> Vec<(u32, Option<VmIdentity>, bool)> {
        self.lock().vms.iter().map(|(id, v)| (*id, v.identity.clone(), v.running)).collect()
    }

    /// The next `n` starts fail with a provider error.
    pub fn fail_next_starts(&self, n: u32) {
        self.lock().failing_starts = n;
    }

    /// VMs created through any client.
    pub fn creates(&self) -> u64 {
        self.lock().creates
    }
}

impl FakeHypervisor {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.host.lock()
    }

    /// Reads VM `vm_id` back and checks it is `provision`'s: `Ok(None)` when
    /// there is no such VM.
    fn checked<'a>(&self, s: &'a mut State, vm_id: &str, provision: &str) -> Result<Option<&'a mut Vm>, HypervisorError> {
        let id: u32 = vm_id.parse().map_err(|_| HypervisorError::NotFound(vm_id.to_string()))?;
        let found = s.vms.get(&id).map(|v| v.identity.clone());
        if self.owner.check(vm_id, provision, found)? {
            Ok(s.vms.get_mut(&id))
        } else {
            Ok(None)
        }
    }
}

#[async_trait::async_trait]
impl Hypervisor for FakeHypervisor {
    fn kind(&self) -> &'static str {
        "fake"
    }

    fn owner(&self) -> &Owner {
        &self.owner
    }

    fn keeps_disks(&self) -> bool {
        true
    }

    fn check(&self, _spec: &VmSpec, _seed: &Seed) -> Result<(), HypervisorError> {
        Ok(())
    }

    async fn create(&self, spec: &VmSpec, seed: &Seed) -> Result<String, HypervisorError> {
        let mut s = self.lock();
        if s.capacity.is_some_and(|c| s.vms.len() >= c) {
            return Err(HypervisorError::Full(format!("the host holds {} VMs, its most", s.vms.len())));
        }
        let id = (100..).find(|id| !s.vms.contains_key(id)).unwrap_or(u32::MAX);
        let vm =
            Vm { identity: Some(self.owner.identity(&spec.provision)), old_mark: None, running: false, seed: Some(seed.clone()), spec: Some(spec.clone()) };
        s.vms.insert(id, vm);
        s.creates += 1;
        Ok(id.to_string())
    }

    async fn start(&self, vm_id: &str, provision: &str) -> Result<(), HypervisorError> {
        let mut s = self.lock();
        if s.failing_starts > 0 {
            s.failing_starts -= 1;
            return Err(HypervisorError::Failed("the host is busy".into()));
        }
        match self.checked(&mut s, vm_id, provision)? {
            Some(vm) => {
                vm.running = true;
                Ok(())
            }
            None => Err(HypervisorError::NotFound(vm_id.to_string())),
        }
    }

    async fn stop(&self, vm_id: &str, provision: &str) -> Result<(), HypervisorError> {
        let mut s = self.lock();
        if let Some(vm) = self.checked(&mut s, vm_id, provision)? {
            vm.running = false;
        }
        Ok(())
    }

    async fn delete(&self, vm_id: &str, provision: &str, _keep_disks: bool) -> Result<Removed, HypervisorError> {
        let mut s = self.lock();
        if self.checked(&mut s, vm_id, provision)?.is_none() {
            return Ok(Removed::Gone);
        }
        s.vms.remove(&vm_id.parse::<u32>().map_err(|_| HypervisorError::NotFound(vm_id.to_string()))?);
        Ok(Removed::Deleted)
    }

    async fn list(&self) -> Result<Vec<VmInfo>, HypervisorError> {
        Ok(self
            .lock()
            .vms
            .iter()
            .filter_map(|(id, vm)| {
                let identity = vm.identity.as_ref().filter(|i| self.owner.owns(i))?;
                Some(VmInfo { vm_id: id.to_string(), provision: identity.provision.clone(), running: vm.running })
            })
            .collect())
    }

    async fn migrate(&self, vm_id: &str, provision: &str) -> Result<bool, HypervisorError> {
        let mut s = self.lock();
        let Ok(id) = vm_id.parse::<u32>() else { return Ok(false) };
        match s.vms.get_mut(&id) {
            Some(vm) if vm.identity.is_none() && vm.old_mark.as_deref() == Some(provision) => {
                vm.identity = Some(self.owner.identity(provision));
                vm.old_mark = None;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn console_tail(&self, vm_id: &str) -> String {
        format!("(fake VM {vm_id}: no console)")
    }
}
