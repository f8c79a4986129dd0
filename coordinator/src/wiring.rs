//! The real external systems, made from the configuration: Garage for
//! `[s3]`, LINSTOR for `[linstor]`, Proxmox VE and QEMU for
//! `[[providers]]`, the `nix` program. The only place that makes these
//! clients: the `serve` command (and tests of the real systems) pass what
//! it makes to [`Coordinator::new`]; tests of the application layer pass
//! fakes instead.

use std::sync::Arc;

use anyhow::Result;

use crate::app::provisions::Hypervisors;
use crate::app::{Backends, Coordinator, ObjectStore};
use crate::config::{Config, ProviderConfig, S3Config};
use crate::hypervisor::{Hypervisor, Owner};
use crate::nix::NixCli;
use crate::s3::garage::Garage;
use crate::s3::{Connector, ObjectStoreAdmin, S3Error};
use crate::volumes::linstor::Linstor;
use crate::volumes::BlockStorage;

/// Garage, with the admin token read from its file at each connection (so
/// a rotated token is used without a restart).
pub fn garage(config: S3Config) -> ObjectStore {
    let token_config = config.clone();
    let connect: Connector = Arc::new(move |endpoint: &str| {
        let token = token_config.admin_token().map_err(|e| S3Error::Config(format!("{e:#}")))?;
        Ok(Arc::new(Garage::new(endpoint, token)?) as Arc<dyn ObjectStoreAdmin>)
    });
    ObjectStore { config, connect }
}

/// Builds the configured providers' clients, for the fleet `fleet`.
pub fn hypervisors(config: &Config, fleet: &str) -> Hypervisors {
    config
        .providers
        .iter()
        .map(|p| {
            let owner = Owner { fleet: fleet.to_string(), provider: p.name().to_string() };
            let made: Result<Arc<dyn Hypervisor>, String> = match p {
                ProviderConfig::Qemu(q) => {
                    let dir = q.work_dir.clone().unwrap_or_else(|| config.state_dir.join("vms").join(&q.name));
                    // Isolated guests' relays forward to the listen address
                    // (loopback when it is unspecified).
                    let mut target = config.listen;
                    if target.ip().is_unspecified() {
                        target.set_ip(if target.is_ipv6() { std::net::Ipv6Addr::LOCALHOST.into() } else { std::net::Ipv4Addr::LOCALHOST.into() });
                    }
                    crate::hypervisor::qemu::Qemu::new(q.clone(), dir, target, owner).map(|h| Arc::new(h) as _).map_err(|e| e.to_string())
                }
                ProviderConfig::Proxmox(x) => crate::hypervisor::proxmox::Proxmox::new(x.clone(), owner).map(|h| Arc::new(h) as _).map_err(|e| e.to_string()),
            };
            (p.name().to_string(), made)
        })
        .collect()
}

/// The configured systems' real clients, for the fleet `fleet`.
pub fn backends(config: &Config, fleet: &str) -> Backends {
    Backends {
        object_store: config.s3.clone().map(garage),
        block_storage: config.linstor.clone().map(|l| Linstor::new(l, fleet).map(|c| Arc::new(c) as Arc<dyn BlockStorage>).map_err(|e| e.to_string())),
        hypervisors: hypervisors(config, fleet),
        nix: Arc::new(NixCli),
    }
}

/// Opens the state directory and makes the configured systems' clients.
pub fn coordinator(config: Config) -> Result<Coordinator> {
    let (ca, store) = crate::app::open_state(&config)?;
    let backends = backends(&config, &ca.fleet_id());
    Ok(Coordinator::new(config, ca, store, backends))
}
