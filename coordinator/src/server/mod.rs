//! The coordinator's QUIC server: one endpoint for agents and admins.
//!
//! [`start`] binds the endpoint and spawns the accept loop; every connection
//! is identified from its client certificate ([`connection`]) and each of its
//! bi-streams carries one request, handled by [`enroll`], [`agent`] or
//! [`admin`] according to who is asking.

mod admin;
pub use admin::check_admin_name;
mod agent;
mod connection;
mod enroll;
mod tenants;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use tokio::task::JoinHandle;

use drover_net::identity;
use drover_protocol::{ErrorCode, WireError};

use crate::config::Config;
use crate::pki::{self, Ca};
use crate::store::{SledStore, Store, StoreError};

/// Directory of the sled database inside the state directory.
pub const DB_DIR: &str = "db";

/// Lifetime of admin certificates.
pub fn admin_cert_lifetime() -> std::time::Duration {
    admin::ADMIN_CERT_LIFETIME
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Live connections of machines, so that revocation can close them.
#[derive(Default)]
pub struct Live {
    machines: Mutex<HashMap<String, HashMap<usize, quinn::Connection>>>,
    /// Each machine's desired generation, watched by its agent's watch stream.
    desired: Mutex<HashMap<String, tokio::sync::watch::Sender<u64>>>,
}

impl Live {
    /// Watches `machine`'s desired generation (starting from `current` if
    /// nothing was announced yet).
    pub fn subscribe(&self, machine: &str, current: u64) -> tokio::sync::watch::Receiver<u64> {
        let mut map = self.desired.lock().expect("desired map lock");
        map.entry(machine.to_string())
            .or_insert_with(|| tokio::sync::watch::channel(current).0)
            .subscribe()
    }

    /// Announces a new desired generation to `machine`'s agent, at once.
    pub fn notify(&self, machine: &str, generation: u64) {
        let mut map = self.desired.lock().expect("desired map lock");
        match map.get(machine) {
            Some(tx) => {
                tx.send_if_modified(|g| {
                    let newer = generation > *g;
                    if newer {
                        *g = generation;
                    }
                    newer
                });
            }
            None => {
                map.insert(machine.to_string(), tokio::sync::watch::channel(generation).0);
            }
        }
    }

    fn register(&self, machine: &str, conn: &quinn::Connection) {
        let mut map = self.machines.lock().expect("live map lock");
        map.entry(machine.to_string())
            .or_default()
            .insert(conn.stable_id(), conn.clone());
    }

    fn unregister(&self, machine: &str, conn: &quinn::Connection) {
        let mut map = self.machines.lock().expect("live map lock");
        if let Some(conns) = map.get_mut(machine) {
            conns.remove(&conn.stable_id());
            if conns.is_empty() {
                map.remove(machine);
            }
        }
    }

    /// Closes every live connection of `machine` with `code`.
    pub fn close_machine(&self, machine: &str, code: ErrorCode, reason: &str) -> usize {
        let conns: Vec<_> = self
            .machines
            .lock()
            .expect("live map lock")
            .get(machine)
            .map(|c| c.values().cloned().collect())
            .unwrap_or_default();
        for conn in &conns {
            conn.close(code.as_u32().into(), reason.as_bytes());
        }
        conns.len()
    }

    /// Forgets every connection (at shutdown, so the endpoint can go).
    fn clear(&self) {
        self.machines.lock().expect("live map lock").clear();
    }
}

/// Everything a request handler needs.
pub struct Coordinator {
    pub config: Config,
    pub store: Arc<dyn Store>,
    pub ca: Ca,
    pub live: Live,
    /// Serialises rollout starts (the one-rollout-per-machine check).
    pub rollout_lock: tokio::sync::Mutex<()>,
}

impl Coordinator {
    /// Opens the state directory: CA, store.
    pub fn open(config: Config) -> Result<Self> {
        let ca = Ca::load(&config.state_dir)
            .with_context(|| format!("loading the fleet CA from {}", config.state_dir.display()))?;
        let store = SledStore::open(&config.state_dir.join(DB_DIR))
            .with_context(|| format!("opening the store in {}", config.state_dir.display()))?;
        Ok(Coordinator {
            config,
            store: Arc::new(store),
            ca,
            live: Live::default(),
            rollout_lock: tokio::sync::Mutex::new(()),
        })
    }
}

/// Turns a store error into a wire error; internal details go to the log.
pub fn wire_error(e: StoreError) -> WireError {
    match e {
        StoreError::Token(refusal) => refusal.to_wire(),
        StoreError::NotFound { .. } => WireError::new(ErrorCode::NotFound, e.to_string()),
        StoreError::Conflict(_) => WireError::new(ErrorCode::Conflict, e.to_string()),
        StoreError::Revoked(_) => WireError::new(ErrorCode::Revoked, e.to_string()),
        other => {
            tracing::error!(error = %other, "store failure");
            WireError::new(ErrorCode::Internal, "internal error; see the coordinator's log")
        }
    }
}

/// A running server.
pub struct ServerHandle {
    pub local_addr: SocketAddr,
    pub coordinator: Arc<Coordinator>,
    endpoint: quinn::Endpoint,
    task: JoinHandle<()>,
    driver: JoinHandle<()>,
}

impl ServerHandle {
    /// Stops accepting, closes every connection and waits for them to end.
    pub async fn shutdown(self) {
        self.endpoint.close(0u32.into(), b"coordinator shutting down");
        self.endpoint.wait_idle().await;
        self.coordinator.live.clear();
        self.task.abort();
        let _ = self.task.await;
        self.driver.abort();
        let _ = self.driver.await;
        let _ = self.coordinator.store.flush();
    }
}

fn server_tls(config: &Config, ca: &Ca) -> Result<quinn::ServerConfig> {
    let dir = &config.state_dir;
    let cert = identity::read_cert_pem(&dir.join(pki::SERVER_CERT_FILE))?;
    let key = identity::read_key_pem(&dir.join(pki::SERVER_KEY_FILE))?;
    Ok(drover_net::tls::server_config(
        &ca.cert_der,
        vec![cert],
        &key.serialize_der(),
        config.idle_timeout,
    )?)
}

/// Opens the state and starts serving on `config.listen`.
pub async fn start(config: Config) -> Result<ServerHandle> {
    let coordinator = Arc::new(Coordinator::open(config)?);
    start_with(coordinator).await
}

/// Starts serving an already opened coordinator.
pub async fn start_with(coordinator: Arc<Coordinator>) -> Result<ServerHandle> {
    let tls = server_tls(&coordinator.config, &coordinator.ca)?;
    let endpoint = quinn::Endpoint::server(tls, coordinator.config.listen)
        .with_context(|| format!("cannot listen on {}", coordinator.config.listen))?;
    let local_addr = endpoint.local_addr()?;
    tracing::info!(%local_addr, "coordinator listening");
    let accept = endpoint.clone();
    let state = coordinator.clone();
    let driver = tokio::spawn(crate::rollout::service::drive(coordinator.clone()));
    let task = tokio::spawn(async move {
        while let Some(incoming) = accept.accept().await {
            let state = state.clone();
            tokio::spawn(async move {
                connection::handle(state, incoming).await;
            });
        }
    });
    Ok(ServerHandle {
        local_addr,
        coordinator,
        endpoint,
        task,
        driver,
    })
}

/// Checks that `dir` is a state directory (for error messages that help).
pub fn check_state_dir(dir: &Path) -> Result<()> {
    if !dir.join(pki::CA_CERT_FILE).exists() {
        anyhow::bail!(
            "{} is not a drover state directory (no {}); create one with `drover init --state-dir {}`",
            dir.display(),
            pki::CA_CERT_FILE,
            dir.display()
        );
    }
    Ok(())
}
