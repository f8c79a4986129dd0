//! Drover's test kit: a fake for every external system the coordinator
//! works with — object storage ([`object_store`]), block storage
//! ([`block_storage`]), hypervisors ([`hypervisor`]), the coordinator's Nix
//! calls ([`nix`]) — each held to the same contract suite ([`contract`]) as
//! the real client, and [`Fakes`], which wires them into a coordinator so
//! that the application layer is tested in process: no root, no Garage, no
//! QEMU. (The agent's system switcher has its fake beside the apply core,
//! `drover_agent::apply::tests`, and a simulated one in
//! `drover_agent::simulate`.)

pub mod block_storage;
pub mod contract;
pub mod hypervisor;
pub mod nix;
pub mod object_store;
pub mod store;

use std::sync::Arc;

use drover_coordinator::app::{Backends, ObjectStore};
use drover_coordinator::config::{Config, S3Config};

/// The fakes behind one coordinator, kept so that a test can look at them
/// and change them.
#[derive(Clone, Default)]
pub struct Fakes {
    pub objects: object_store::FakeCluster,
    pub pool: block_storage::FakePool,
    pub host: hypervisor::FakeHost,
    pub nix: Arc<nix::FakeNix>,
}

impl Fakes {
    pub fn new() -> Self {
        Fakes::default()
    }

    /// The backends of a coordinator of fleet `fleet` whose configuration
    /// is `config`: the fake object store when `[s3]` is set, the fake
    /// block storage when `[linstor]` is, a fake hypervisor for every
    /// provider.
    pub fn backends(&self, config: &Config, fleet: &str) -> Backends {
        Backends {
            object_store: config.s3.clone().map(|c: S3Config| ObjectStore { config: c, connect: self.objects.connector() }),
            block_storage: config.linstor.as_ref().map(|_| Ok(Arc::new(self.pool.client(fleet)) as _)),
            hypervisors: config.providers.iter().map(|p| (p.name().to_string(), Ok(Arc::new(self.host.client(fleet, p.name())) as _))).collect(),
            nix: self.nix.clone(),
        }
    }
}
