//! The application layer: what the coordinator does, apart from how it is
//! reached. The server (QUIC), the rollout driver and every request handler
//! share [`Coordinator`]; this layer combines the pure cores (tokens,
//! registry, authz, deploy, tenancy, the rollout planner) with the store and
//! the external systems, and depends on no transport: the server depends on
//! it, never the reverse.
//!
//! Map: [`admin`] (the one exhaustive dispatch of admin requests, role
//! checked first) → [`machines`], [`deployments`], [`rollouts`],
//! [`tenants`], [`s3`], [`volumes`]; [`agent`] (what enrolled machines ask) and
//! [`enroll`]; [`generations`] (recording a machine's next generation, one
//! implementation for deployments, rollouts, volumes and reboots);
//! [`driver`] (the rollout task); [`live`] (open connections
//! and desired generations, as the server registers them); [`errors`]
//! (store and S3 failures as wire errors).

pub mod admin;
pub mod agent;
pub mod audit;
pub mod backup;
pub mod coordinators;
pub mod deployments;
pub mod driver;
pub mod enroll;
pub mod errors;
pub mod fleet;
pub mod generations;
pub mod live;
pub mod machines;
pub mod metrics;
pub mod nixops4;
pub mod provisions;
pub mod rollouts;
pub mod s3;
pub mod tenants;
pub mod volumes;
pub mod web;
pub mod web_sessions;

use std::sync::Arc;

use anyhow::{Context, Result};

pub use drover_net::clock::now_ms;
pub use live::Live;

use crate::config::Config;
use crate::nix::Nix;
use crate::pki::Ca;
use crate::s3::{Connector, ObjectStoreAdmin, S3Error};
use crate::store::{SledOptions, Store};
use crate::volumes::BlockStorage;

pub use crate::store::DB_DIR;

/// The object store the coordinator administers, when `[s3]` is configured.
#[derive(Clone)]
pub struct ObjectStore {
    pub config: crate::config::S3Config,
    /// A client for a node's admin endpoint.
    pub connect: Connector,
}

impl ObjectStore {
    /// A client of the configured admin endpoint.
    pub fn admin(&self) -> Result<Arc<dyn ObjectStoreAdmin>, S3Error> {
        (self.connect)(&self.config.admin_endpoint)
    }
}

/// Everything a request handler needs.
pub struct Coordinator {
    pub config: Config,
    pub store: Store,
    pub ca: Ca,
    pub live: Live,
    pub object_store: Option<ObjectStore>,
    /// The block storage for volumes, when `[linstor]` is configured (or
    /// why its client could not be made).
    pub block_storage: Option<Result<Arc<dyn BlockStorage>, String>>,
    /// Serialises rollout starts (the one-rollout-per-machine check).
    pub rollout_lock: tokio::sync::Mutex<()>,
    /// Generation writes hold it shared; a change recorded in batches
    /// ([`generations::record_in_batches`]) holds it alone, so that no
    /// other write gives its machines a generation between its batches.
    pub generations: tokio::sync::RwLock<()>,
    /// When this coordinator began (the rollout driver's healthy deadlines
    /// count from here for machines started before).
    pub serving_since: u64,
    /// True while this coordinator's claim on a shared store may have run
    /// out (cut off from etcd past the lease): it serves nobody then
    /// ([`coordinators::guard_claim`]).
    pub suspended: tokio::sync::watch::Sender<bool>,
    /// True while this coordinator leads the fleet's coordinators (always,
    /// on a store no other shares): only the leader runs what must happen
    /// once — the rollout driver, provisioning, volume detaches, finishing
    /// what another left between batches ([`coordinators::lead`]).
    pub leading: tokio::sync::watch::Sender<bool>,
    /// The plans of changes this process is recording in batches now
    /// (their keys): nobody finishes them under it.
    pub recording: std::sync::Mutex<std::collections::HashSet<String>>,
    /// Passes the rollout driver has made, so that a caller can wait until
    /// it has looked at the fleet again.
    pub driver_passes: tokio::sync::watch::Sender<u64>,
    pub metrics: metrics::Metrics,
    /// The hypervisor of each `[[providers]]` entry.
    pub hypervisors: provisions::Hypervisors,
    /// The coordinator's own Nix (closure diffs for dry runs).
    pub nix: Arc<dyn Nix>,
    /// Wakes the provisioning driver (a new provision).
    pub provision_wake: tokio::sync::Notify,
    /// Refused admin requests being counted for the audit log.
    pub refusals: audit::Refusals,
    /// Requests being answered now; a coordinator shutting down lets them
    /// finish (their writes are fenced if it lost its lease).
    pub requests: tokio::sync::watch::Sender<usize>,
    /// The fleet page's login links and sessions.
    pub web: web::Web,
}

/// One request being answered, counted in [`Coordinator::requests`] while
/// it lives.
pub struct InFlight(tokio::sync::watch::Sender<usize>);

impl InFlight {
    pub fn new(state: &Coordinator) -> Self {
        state.requests.send_modify(|n| *n += 1);
        InFlight(state.requests.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// The external systems a coordinator works with, made by whoever starts
/// it: the real clients (`crate::wiring`, from the configuration) or a test
/// kit's fakes. Nothing in the application layer makes a client itself.
pub struct Backends {
    /// The object store, when `[s3]` is configured.
    pub object_store: Option<ObjectStore>,
    /// The block storage, when `[linstor]` is configured (or why its
    /// client could not be made).
    pub block_storage: Option<Result<Arc<dyn BlockStorage>, String>>,
    /// The hypervisor of each `[[providers]]` entry, by name.
    pub hypervisors: provisions::Hypervisors,
    pub nix: Arc<dyn Nix>,
}

/// How long a coordinator's lease on the etcd store outlives a coordinator
/// that stopped renewing it (died, paused, cut off): its presence vanishes
/// then, and if it led, another coordinator leads.
pub const STORE_CLAIM_TTL: std::time::Duration = std::time::Duration::from_secs(10);

/// The state directory's fleet CA and store. On an etcd store the
/// coordinator joins the fleet's coordinators (its presence under its own
/// lease, which fences its writes); it does not wait for anyone.
pub fn open_state(config: &Config) -> Result<(Ca, Store)> {
    let ca = Ca::load(&config.state_dir).with_context(|| format!("loading the fleet CA from {}", config.state_dir.display()))?;
    let store = match &config.store {
        Some(etcd) => {
            let address = config.advertise.to_string();
            let presence = coordinators::encode(&coordinators::presence(&address, false, 0));
            Store::open_etcd_member(etcd.etcd_options()?, &address, &coordinators::holder(&address), STORE_CLAIM_TTL, &presence)
                .with_context(|| format!("opening the store in etcd ({})", etcd.etcd_endpoints.join(", ")))?
        }
        None => Store::open_with(
            &config.state_dir.join(DB_DIR),
            SledOptions { cache_bytes: config.limits.store_cache_mib << 20, min_free_bytes: config.limits.min_free_disk_mib << 20 },
        )
        .with_context(|| format!("opening the store in {}", config.state_dir.display()))?,
    };
    Ok((ca, store))
}

impl Coordinator {
    /// Whether this coordinator leads.
    pub fn leads(&self) -> bool {
        *self.leading.borrow()
    }

    /// Waits until this coordinator leads.
    pub async fn until_leading(&self) {
        let mut leading = self.leading.subscribe();
        let _ = leading.wait_for(|l| *l).await;
    }

    /// A coordinator over its configuration, CA, store and external systems.
    pub fn new(config: Config, ca: Ca, store: Store, backends: Backends) -> Self {
        Coordinator {
            config,
            ca,
            live: Live::default(),
            object_store: backends.object_store,
            block_storage: backends.block_storage,
            rollout_lock: tokio::sync::Mutex::new(()),
            generations: tokio::sync::RwLock::new(()),
            serving_since: now_ms(),
            suspended: tokio::sync::watch::Sender::new(false),
            // A store no other process shares: this one leads alone.
            leading: tokio::sync::watch::Sender::new(store.backend().lost().is_none()),
            store,
            recording: Default::default(),
            driver_passes: tokio::sync::watch::channel(0).0,
            metrics: metrics::Metrics::new(),
            hypervisors: backends.hypervisors,
            nix: backends.nix,
            provision_wake: tokio::sync::Notify::new(),
            refusals: audit::Refusals::default(),
            requests: tokio::sync::watch::Sender::new(0),
            web: web::Web::default(),
        }
    }
}
