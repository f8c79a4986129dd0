//! The coordinator's Prometheus metrics (`prometheus-client`): counters and
//! histograms moved where things happen (enrollments, finished deployments,
//! rollouts started, requests), and gauges read from the store at each
//! scrape (machines by status and generation lag, the soonest certificate
//! expiry, rollouts, connected agents, the store's size). Served on
//! `metrics_listen`, never on the QUIC endpoint.

use std::sync::Mutex;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

use drover_protocol::v1::DeploymentState;

use super::Coordinator;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Reason {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Outcome {
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Kind {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Status {
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Lag {
    lag: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RolloutPhase {
    rollout: String,
    phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RolloutMachines {
    rollout: String,
    state: String,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency() -> Histogram {
    // 1 ms to ~33 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// Every metric, registered once.
pub struct Metrics {
    registry: Mutex<Registry>,
    enrollments: Counter,
    enrollment_refusals: Family<Reason, Counter>,
    connections: Family<Kind, Counter>,
    deployments: Family<Outcome, Counter>,
    deployment_duration: Histogram,
    rollouts_started: Counter,
    requests: Histograms<Kind>,
    machines: Family<Status, Gauge>,
    generation_lag: Family<Lag, Gauge>,
    cert_expiry: Gauge,
    rollout_phase: Family<RolloutPhase, Gauge>,
    rollout_machines: Family<RolloutMachines, Gauge>,
    connected: Gauge,
    store_size: Gauge,
    serving: Family<Serving, Gauge>,
    leading: Family<Serving, Gauge>,
    serving_since: Gauge,
}

/// The coordinator that exposes the metrics, and its store: only the
/// coordinator that answers (every coordinator of a fleet serves).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Serving {
    coordinator: String,
    store: String,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let m = Metrics {
            registry: Mutex::new(Registry::with_prefix("drover")),
            enrollments: Counter::default(),
            enrollment_refusals: Family::default(),
            connections: Family::default(),
            deployments: Family::default(),
            // 1 s to ~4.5 h.
            deployment_duration: Histogram::new(exponential_buckets(1.0, 2.0, 15)),
            rollouts_started: Counter::default(),
            requests: Family::new_with_constructor(latency),
            machines: Family::default(),
            generation_lag: Family::default(),
            cert_expiry: Gauge::default(),
            rollout_phase: Family::default(),
            rollout_machines: Family::default(),
            connected: Gauge::default(),
            store_size: Gauge::default(),
            serving: Family::default(),
            leading: Family::default(),
            serving_since: Gauge::default(),
        };
        {
            // Registered metrics share their values with the fields.
            let mut r = m.registry.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            r.register("enrollments", "Machines enrolled", m.enrollments.clone());
            r.register("enrollment_refusals", "Enrollments refused, by reason", m.enrollment_refusals.clone());
            r.register(
                "connections",
                "Connections accepted, by kind: machine, admin, anonymous (to enroll), and enrolled_in_place (anonymous ones that went on as the machine they enrolled)",
                m.connections.clone(),
            );
            r.register("deployments", "Deployments that reached a final state, by outcome", m.deployments.clone());
            r.register_with_unit("deployment_duration", "Time from recording a deployment to its final state", Unit::Seconds, m.deployment_duration.clone());
            r.register("rollouts_started", "Rollouts started", m.rollouts_started.clone());
            r.register_with_unit("request_duration", "Time to answer a request, by kind", Unit::Seconds, m.requests.clone());
            r.register("machines", "Machines by status", m.machines.clone());
            r.register("machines_generation_lag", "Machines by how many generations they are behind their desired one", m.generation_lag.clone());
            r.register_with_unit(
                "certificate_expiry_soonest_timestamp",
                "When the first machine certificate expires (Unix time; 0 without machines)",
                Unit::Seconds,
                m.cert_expiry.clone(),
            );
            r.register("rollout_phase", "Active rollouts: 1 for the phase each is in", m.rollout_phase.clone());
            r.register("rollout_machines", "Machines of each active rollout, by their state in it", m.rollout_machines.clone());
            r.register("connected_agents", "Machines with an open connection", m.connected.clone());
            r.register_with_unit("store_size", "Size of the store on disk", Unit::Bytes, m.store_size.clone());
            r.register(
                "coordinator_serving",
                "1 while this coordinator serves agents and admins (0 while it is cut off from its etcd store), with its address and store",
                m.serving.clone(),
            );
            r.register(
                "coordinator_leading",
                "1 while this coordinator leads the fleet's coordinators (its rollout driver and provisioning run; always on sled)",
                m.leading.clone(),
            );
            r.register_with_unit(
                "coordinator_serving_since_timestamp",
                "When this coordinator began serving (Unix time): a change is a failover or a restart",
                Unit::Seconds,
                m.serving_since.clone(),
            );
        }
        m
    }

    pub fn enrolled(&self) {
        self.enrollments.inc();
    }

    /// A connection accepted (`machine`, `admin`, `anonymous`), or an
    /// anonymous one that went on as its machine (`enrolled_in_place`).
    pub fn connection(&self, kind: &str) {
        self.connections.get_or_create(&Kind { kind: kind.to_string() }).inc();
    }

    pub fn enrollment_refused(&self, reason: &str) {
        self.enrollment_refusals.get_or_create(&Reason { reason: reason.to_string() }).inc();
    }

    /// A deployment reached `state` after `seconds`.
    pub fn deployment_finished(&self, state: DeploymentState, rolled_back: bool, seconds: f64) {
        let outcome = match (state, rolled_back) {
            (DeploymentState::Succeeded, _) => "succeeded",
            (DeploymentState::Failed, true) => "rolled_back",
            (DeploymentState::Failed, false) => "failed",
            _ => return,
        };
        self.deployments.get_or_create(&Outcome { outcome: outcome.into() }).inc();
        self.deployment_duration.observe(seconds);
    }

    pub fn rollout_started(&self) {
        self.rollouts_started.inc();
    }

    pub fn request(&self, kind: &str, seconds: f64) {
        self.requests.get_or_create(&Kind { kind: kind.to_string() }).observe(seconds);
    }

    /// The text exposition, with the gauges read now.
    pub fn render(&self, state: &Coordinator) -> String {
        self.refresh(state);
        let mut text = String::new();
        let registry = self.registry.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Err(e) = encode(&mut text, &registry) {
            tracing::warn!(error = %e, "metrics could not be encoded");
        }
        text
    }

    fn refresh(&self, state: &Coordinator) {
        let liveness = super::coordinators::liveness(state);
        let machines: Vec<_> = state.store.machines().unwrap_or_default().into_iter().map(|m| state.live.newest(m)).collect();
        self.machines.clear();
        self.generation_lag.clear();
        for status in ["online", "offline", "revoked"] {
            self.machines.get_or_create(&Status { status: status.into() }).set(0);
        }
        let mut soonest: Option<u64> = None;
        for m in &machines {
            let status = liveness.status(m);
            self.machines.get_or_create(&Status { status: status.as_str().into() }).inc();
            if m.revoked_at.is_some() {
                continue;
            }
            let lag = m.desired_generation.saturating_sub(m.current_generation.unwrap_or(0));
            let lag = match lag {
                0 => "0",
                1 => "1",
                2..=4 => "2-4",
                _ => "5+",
            };
            self.generation_lag.get_or_create(&Lag { lag: lag.into() }).inc();
            soonest = Some(soonest.map_or(m.cert_not_after, |s| s.min(m.cert_not_after)));
        }
        self.cert_expiry.set(i64::try_from(soonest.unwrap_or(0) / 1000).unwrap_or(i64::MAX));
        self.rollout_phase.clear();
        self.rollout_machines.clear();
        for r in state.store.rollouts().unwrap_or_default().iter().filter(|r| r.state.phase.active()) {
            let phase = super::rollouts::phase_wire(r.state.phase);
            self.rollout_phase.get_or_create(&RolloutPhase { rollout: r.id.clone(), phase: phase.as_str().into() }).set(1);
            for entry in r.state.machines.values() {
                let (slot, _) = super::rollouts::slot_wire(&entry.slot);
                self.rollout_machines.get_or_create(&RolloutMachines { rollout: r.id.clone(), state: slot.as_str().into() }).inc();
            }
        }
        self.connected.set(i64::try_from(state.live.connected_machines()).unwrap_or(i64::MAX));
        let store = if state.config.store.is_some() { "etcd" } else { "sled" };
        let me = Serving { coordinator: state.config.advertise.to_string(), store: store.into() };
        self.serving.clear();
        self.serving.get_or_create(&me).set(i64::from(!*state.suspended.borrow()));
        self.leading.clear();
        self.leading.get_or_create(&me).set(i64::from(state.leads()));
        self.serving_since.set(i64::try_from(state.serving_since / 1000).unwrap_or(i64::MAX));
        self.store_size.set(i64::try_from(store_size(state).unwrap_or(0)).unwrap_or(i64::MAX));
    }
}

/// The size of this coordinator's store on disk; `None` on etcd (whose
/// size its own metrics give).
pub fn store_size(state: &Coordinator) -> Option<u64> {
    state.config.store.is_none().then(|| dir_size(&state.config.state_dir.join(super::DB_DIR)))
}

/// The bytes of the files under `dir`.
fn dir_size(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_size(&e.path()),
            Ok(_) => e.metadata().map(|m| m.len()).unwrap_or(0),
            Err(_) => 0,
        })
        .sum()
}
