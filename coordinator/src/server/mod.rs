//! The coordinator's QUIC server: endpoints for agents and admins on
//! `listen_sockets` sockets sharing one address (each socket's datagrams are
//! received by its endpoint's own task). It is the transport only:
//! [`start`] binds the endpoints, spawns an accept loop for each and the
//! rollout driver; [`connection`] identifies each peer (through
//! [`crate::app::agent::identify`]), requires Hello first and hands every
//! bi-stream's request to the application layer; [`agent`] keeps the watch
//! stream open. Nothing else imports this module.

mod agent;
mod connection;
mod http;
mod limits;
mod metrics;
pub mod web;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use tokio::task::JoinHandle;

use drover_net::identity;

use crate::app::Coordinator;
use crate::config::Config;
use crate::pki::{self, Ca};

/// A running server.
pub struct ServerHandle {
    pub local_addr: SocketAddr,
    /// Where `/metrics` is served (`metrics_listen`), if anywhere.
    pub metrics_addr: Option<SocketAddr>,
    metrics: Option<JoinHandle<()>>,
    /// Where the fleet page is served (`web_listen`), if anywhere.
    pub web_addr: Option<SocketAddr>,
    web: Option<JoinHandle<()>>,
    pub coordinator: Arc<Coordinator>,
    endpoints: Vec<quinn::Endpoint>,
    /// The accept loops, one per endpoint.
    tasks: Vec<JoinHandle<()>>,
    driver: JoinHandle<()>,
    /// The provisioning driver (its tasks end with it).
    provisioner: JoinHandle<()>,
    /// Warning summaries, refusal summaries, the audit log's pruning and
    /// this coordinator's presence in a shared store.
    summaries: JoinHandle<()>,
    /// Writes the health reports kept in memory to the store.
    liveness: JoinHandle<()>,
}

/// How long a coordinator shutting down waits for the requests it is
/// answering.
const REQUESTS_PATIENCE: std::time::Duration = std::time::Duration::from_secs(30);

impl ServerHandle {
    /// Stops accepting, closes every connection and waits for them to end.
    pub async fn shutdown(self) {
        for endpoint in &self.endpoints {
            endpoint.close(0u32.into(), b"coordinator shutting down");
        }
        for endpoint in &self.endpoints {
            endpoint.wait_idle().await;
        }
        // A request's work goes on when its connection closes (a
        // deployment being recorded, say): it ends before the process does.
        let mut requests = self.coordinator.requests.subscribe();
        if tokio::time::timeout(REQUESTS_PATIENCE, requests.wait_for(|n| *n == 0)).await.is_err() {
            tracing::warn!(left = *requests.borrow(), "requests still being answered after {REQUESTS_PATIENCE:?}; shutting down without them");
        }
        self.coordinator.live.clear();
        for task in self.tasks {
            task.abort();
            let _ = task.await;
        }
        self.driver.abort();
        let _ = self.driver.await;
        self.provisioner.abort();
        let _ = self.provisioner.await;
        self.summaries.abort();
        let _ = self.summaries.await;
        self.liveness.abort();
        let _ = self.liveness.await;
        let state = self.coordinator.clone();
        match tokio::task::spawn_blocking(move || crate::app::agent::write_liveness(&state)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e.message, "the newest health reports were not written to the store"),
            Err(e) => tracing::warn!(error = %e, "writing the newest health reports failed"),
        }
        for task in [self.metrics, self.web].into_iter().flatten() {
            task.abort();
            let _ = task.await;
        }
        let _ = self.coordinator.store.flush().await;
    }
}

/// The coordinator's certificate chain (its certificate, then the fleet
/// CA's) and private key (PKCS#8 DER), from the state directory.
fn server_identity(config: &Config, ca: &Ca) -> Result<(Vec<Vec<u8>>, Vec<u8>)> {
    let dir = &config.state_dir;
    let cert = identity::read_cert_pem(&dir.join(pki::SERVER_CERT_FILE))?;
    let key = identity::read_key_pem(&dir.join(pki::SERVER_KEY_FILE))?.serialize_der();
    Ok((vec![cert, ca.cert_der.clone()], key))
}

/// The server's TLS configuration, and its private key (which also seeds
/// the stateless-reset key, so that it outlives a restart).
fn server_tls(config: &Config, ca: &Ca) -> Result<(quinn::ServerConfig, Vec<u8>)> {
    let (chain, key) = server_identity(config, ca)?;
    let tls = drover_net::tls::server_config(&ca.cert_der, chain, &key, config.idle_timeout)?;
    Ok((tls, key))
}

/// Starts serving an opened coordinator (`crate::wiring::coordinator` makes
/// one from the configuration) on `config.listen`.
pub async fn start(coordinator: Arc<Coordinator>) -> Result<ServerHandle> {
    let (tls, key) = server_tls(&coordinator.config, &coordinator.ca)?;
    // A deployment a stopped coordinator left between its batches: whole
    // or gone before anyone is told anything. On a shared store the leader
    // does it (for coordinators no longer there), in its driver.
    if coordinator.leads() {
        crate::app::generations::finish_orphaned_batches(&coordinator).await.map_err(|e| anyhow::anyhow!(e.message))?;
    }
    let sockets = coordinator.config.sockets();
    let endpoints = drover_net::socket::server_endpoints(coordinator.config.listen, sockets, tls, &key)
        .with_context(|| format!("cannot listen on {}", coordinator.config.listen))?;
    let local_addr = endpoints[0].local_addr()?;
    tracing::info!(%local_addr, sockets, "coordinator listening");
    let (metrics_addr, metrics) = match coordinator.config.metrics_listen {
        Some(addr) => {
            let (addr, task) = metrics::serve(coordinator.clone(), addr).await?;
            (Some(addr), Some(task))
        }
        None => (None, None),
    };
    let (web_addr, web) = match coordinator.config.web_listen {
        Some(addr) => {
            let (addr, task) = web::serve(coordinator.clone(), addr).await?;
            (Some(addr), Some(task))
        }
        None => (None, None),
    };
    // What must happen once runs on the coordinator that leads (this one
    // alone on sled; on etcd, once it won the election).
    let driver = {
        let state = coordinator.clone();
        tokio::spawn(async move {
            state.until_leading().await;
            crate::app::driver::drive(state).await;
        })
    };
    let liveness = tokio::spawn(crate::app::agent::write_liveness_periodically(coordinator.clone()));
    let provisioner = {
        let state = coordinator.clone();
        tokio::spawn(async move {
            state.until_leading().await;
            crate::app::provisions::run(state).await;
        })
    };
    let limits = limits::Limits::new(&coordinator.config.limits, coordinator.config.max_connections);
    let summaries = {
        let (limits, state) = (limits.clone(), coordinator.clone());
        tokio::spawn(async move {
            tokio::join!(
                limits.warnings.run(),
                crate::app::audit::keep_periodically(state.clone()),
                crate::app::coordinators::announce_periodically(state.clone()),
                crate::app::coordinators::lead(state.clone()),
                crate::app::coordinators::follow_machines(state.clone()),
                crate::app::coordinators::guard_claim(state)
            );
        })
    };
    let tasks = endpoints
        .iter()
        .map(|accept| {
            let (accept, state, limits) = (accept.clone(), coordinator.clone(), limits.clone());
            tokio::spawn(async move {
                while let Some(incoming) = accept.accept().await {
                    // Cut off from the fleet's store past its claim's
                    // lease, this coordinator may no longer be the one:
                    // refused at once, so that agents try the others.
                    if *state.suspended.borrow() {
                        incoming.refuse();
                        continue;
                    }
                    // Decided before any connection state exists: a flood
                    // of Initials costs a counter, not memory.
                    let ip = incoming.remote_address().ip();
                    match limits.admit_handshake(ip, incoming.remote_address_validated(), incoming.may_retry()) {
                        limits::Admission::Handshake(slot) => {
                            let state = state.clone();
                            let limits = limits.clone();
                            tokio::spawn(async move {
                                connection::handle(state, limits, incoming, slot).await;
                            });
                        }
                        limits::Admission::Retry => {
                            if incoming.retry().is_err() {
                                tracing::debug!(peer = %ip, "a Retry could not be sent");
                            }
                        }
                        limits::Admission::Drop(why) => {
                            incoming.ignore();
                            limits.warnings.note(ip, "connection attempts dropped", why);
                        }
                        limits::Admission::Refuse(why) => {
                            incoming.refuse();
                            limits.warnings.note(ip, "connection attempts refused", why);
                        }
                    }
                }
            })
        })
        .collect();
    Ok(ServerHandle { local_addr, metrics_addr, metrics, web_addr, web, coordinator, endpoints, tasks, driver, provisioner, summaries, liveness })
}
