//! What the fleet page shows, read from the store and the live state: the
//! summary, the machines (failing, offline and behind first), a machine, a
//! deployment, a rollout, the tenants, and the health of Garage and
//! LINSTOR. Plain data with the words and numbers already chosen; the
//! server (`server::web`) renders it into escaped HTML and knows nothing
//! of the store. Every text here may come from an agent (hostnames, unit
//! names, output tails, labels): the templates escape all of it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use drover_protocol::v1::{self, DeploymentState, Labels, MachineStatus, WebLoginLink};
use drover_protocol::{ErrorCode, WireError};

use crate::model::{AdminRecord, MachineRecord};
use crate::output;
use crate::tenancy::TENANT_LABEL;

use super::web_sessions::WebSessions;
use super::{now_ms, Coordinator};

/// Machines one page of the table shows.
pub const PAGE_SIZE: usize = 100;
/// How long the health of Garage and LINSTOR, once asked, is shown before
/// they are asked again (a page refreshes every few seconds).
const BACKEND_HEALTH_TTL: Duration = Duration::from_secs(10);
/// How long each of them may take to answer.
const BACKEND_TIMEOUT: Duration = Duration::from_secs(3);

/// The page's state in this coordinator.
#[derive(Default)]
pub struct Web {
    pub sessions: WebSessions,
    /// The address the page is served on, once bound.
    pub bound: std::sync::OnceLock<std::net::SocketAddr>,
    backends: Mutex<Option<(u64, Vec<BackendHealth>)>>,
}

/// `drover web login`: a one-time link for the admin asking.
pub fn login_link(state: &Coordinator, admin: &AdminRecord) -> Result<WebLoginLink, WireError> {
    let base = state.web.bound.get().map(|addr| state.config.web_base_url(*addr)).ok_or_else(|| {
        WireError::new(
            ErrorCode::Unavailable,
            "this coordinator serves no fleet page: set web_listen (e.g. \"127.0.0.1:9480\") in its configuration and restart it",
        )
    })?;
    let (token, expires_at) = state.web.sessions.new_link(admin, now_ms(), state.config.limits.web_link_lifetime);
    Ok(WebLoginLink { url: format!("{base}/login?token={token}"), expires_at })
}

/// The strip at the top of every page.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub online: usize,
    pub offline: usize,
    pub revoked: usize,
    pub provisioning: usize,
    pub failing: usize,
    pub behind: usize,
    pub soonest_cert: String,
    pub store: String,
    pub rollouts_active: usize,
}

/// One row of the machines table.
#[derive(Debug, Clone)]
pub struct MachineRow {
    pub id: String,
    pub hostname: String,
    pub tenant: String,
    pub labels: String,
    pub status: &'static str,
    /// failing, offline, behind or ok: the row's colour and order.
    pub condition: &'static str,
    /// Why it is failing, when it is.
    pub why: String,
    pub generations: String,
    pub current_system: String,
    pub booted_system: String,
    pub pending_system: String,
    pub last_report: String,
    pub load: String,
    pub memory: String,
    pub failed_units: String,
    pub volumes: String,
    pub rollout: String,
}

/// What the machines table is asked for.
#[derive(Debug, Clone, Default)]
pub struct MachinesQuery {
    /// `key=value,...`, as `drover machines list --selector` takes it.
    pub selector: String,
    pub tenant: String,
    /// From 1.
    pub page: usize,
}

#[derive(Debug, Clone, Default)]
pub struct MachinesPage {
    pub rows: Vec<MachineRow>,
    /// Machines matching the filters.
    pub matched: usize,
    pub page: usize,
    pub pages: usize,
    pub selector: String,
    pub tenant: String,
    /// Why the filter was not applied, when it is malformed.
    pub filter_error: Option<String>,
}

/// A rollout, as its page and the list show it.
#[derive(Debug, Clone)]
pub struct RolloutView {
    pub id: String,
    pub phase: &'static str,
    pub active: bool,
    pub paused: bool,
    pub reason: String,
    pub created: String,
    pub system: String,
    pub selector: String,
    pub canary: String,
    /// Machines per state, e.g. "done 3, updating 1".
    pub states: String,
    pub failures: String,
    pub machines: Vec<RolloutMachineView>,
}

#[derive(Debug, Clone)]
pub struct RolloutMachineView {
    pub machine_id: String,
    pub hostname: String,
    pub state: &'static str,
    pub canary: bool,
    /// The path of its deployment's page (`MACHINE/GENERATION`).
    pub deployment: String,
    pub generation: String,
    pub reason: String,
}

/// A deployment with its steps.
#[derive(Debug, Clone)]
pub struct DeploymentView {
    pub id: String,
    pub machine_id: String,
    pub hostname: String,
    pub generation: u64,
    pub state: &'static str,
    pub rolled_back: bool,
    pub system: String,
    pub created: String,
    pub finished: String,
    pub steps: Vec<StepView>,
    pub steps_dropped: u64,
    pub output_tail: String,
    pub secret_names: String,
}

#[derive(Debug, Clone)]
pub struct StepView {
    pub at: String,
    pub step: String,
    pub message: String,
}

/// A machine's page.
#[derive(Debug, Clone)]
pub struct MachineView {
    pub row: MachineRow,
    pub enrolled: String,
    pub cert_expires: String,
    pub addresses: String,
    pub uptime: String,
    pub disks: Vec<(String, String)>,
    pub volumes: Vec<(String, String)>,
    pub buckets: Vec<String>,
    pub deployments: Vec<DeploymentView>,
}

/// A tenant with what it holds.
#[derive(Debug, Clone)]
pub struct TenantView {
    pub domain: String,
    pub admin_user: String,
    pub admin_email: String,
    pub managers: String,
    pub created: String,
    pub machines: Vec<MachineRow>,
    pub buckets: Vec<String>,
    pub volumes: Vec<String>,
}

/// Garage's or LINSTOR's health, as last asked.
#[derive(Debug, Clone)]
pub struct BackendHealth {
    pub system: &'static str,
    pub ok: bool,
    pub text: String,
}

fn not_found(what: String) -> WireError {
    WireError::new(ErrorCode::NotFound, what)
}

fn opt(s: &Option<String>) -> String {
    s.clone().unwrap_or_else(|| "-".into())
}

/// The machines a rollout holds (as a manual deployment would be refused
/// for them), by machine id.
fn held_by(rollouts: &[crate::model::RolloutRecord]) -> HashMap<String, String> {
    let mut held = HashMap::new();
    for r in rollouts.iter().filter(|r| r.state.phase.active()) {
        for id in r.state.machines.keys().filter(|id| r.state.holds(id)) {
            held.insert(id.clone(), r.id.clone());
        }
    }
    held
}

/// Whether a machine runs an older generation than it was given.
fn behind(m: &MachineRecord) -> bool {
    m.revoked_at.is_none() && m.desired_generation > 0 && m.current_generation != Some(m.desired_generation)
}

fn held_by_rollouts(state: &Coordinator) -> Result<HashMap<String, String>, WireError> {
    Ok(held_by(&state.store.rollouts()?))
}

/// Order of rows: failing, offline, behind, the rest.
fn rank(condition: &str) -> u8 {
    match condition {
        "failing" => 0,
        "offline" => 1,
        "behind" => 2,
        _ => 3,
    }
}

fn row(state: &Coordinator, liveness: &crate::registry::Liveness, m: &MachineRecord, held: &HashMap<String, String>) -> Result<MachineRow, WireError> {
    let info = liveness.to_wire(m);
    let health = info.health.as_ref();
    let failed_units: Vec<String> = health.and_then(|h| h.failed_units.clone()).unwrap_or_default();
    let behind = behind(m);
    // Only a machine behind can have a newest deployment that failed.
    let last_failed = if behind {
        state.store.deployment(&m.id, m.desired_generation)?.filter(|d| d.state == DeploymentState::Failed).map(|d| {
            format!(
                "deployment {} failed{}: {}",
                d.id,
                if d.rolled_back { " (rolled back)" } else { "" },
                d.steps.last().map(|s| s.message.as_str()).unwrap_or("")
            )
        })
    } else {
        None
    };
    let (condition, why) = match (&last_failed, info.status) {
        (_, MachineStatus::Revoked) => ("revoked", String::new()),
        (Some(why), _) => ("failing", why.clone()),
        (None, _) if !failed_units.is_empty() => ("failing", format!("failed units: {}", failed_units.join(", "))),
        (None, MachineStatus::Offline) => ("offline", String::new()),
        (None, _) if behind => ("behind", String::new()),
        _ => ("ok", String::new()),
    };
    let now = liveness.now;
    Ok(MachineRow {
        id: m.id.clone(),
        hostname: m.hostname.clone(),
        tenant: m.labels.get(TENANT_LABEL).cloned().unwrap_or_default(),
        labels: output::labels(&m.labels),
        status: info.status.as_str(),
        condition,
        why,
        generations: format!("{} / {}", m.desired_generation, m.current_generation.map_or("-".into(), |g| g.to_string())),
        current_system: opt(&m.current_system),
        booted_system: health.map(|h| opt(&h.booted_system)).unwrap_or_else(|| "-".into()),
        pending_system: health.map(|h| opt(&h.pending_system)).unwrap_or_else(|| "-".into()),
        last_report: output::ago(m.last_seen, now),
        load: health.map(|h| format!("{:.2}", h.load_average[0])).unwrap_or_else(|| "-".into()),
        memory: health.map(|h| format!("{} / {}", output::bytes(h.memory_used_bytes), output::bytes(h.memory_total_bytes))).unwrap_or_else(|| "-".into()),
        failed_units: failed_units.join(", "),
        volumes: m.volumes.iter().map(|v| v.name.clone()).collect::<Vec<_>>().join(", "),
        rollout: held.get(&m.id).cloned().unwrap_or_default(),
    })
}

/// The table's order: failing, offline, behind, the rest; then by name.
fn sort_rows(rows: &mut [MachineRow]) {
    rows.sort_by(|a, b| rank(a.condition).cmp(&rank(b.condition)).then_with(|| a.hostname.cmp(&b.hostname)).then_with(|| a.id.cmp(&b.id)));
}

/// A label selector as the CLI takes it (`key=value,key=value`).
pub fn parse_selector(text: &str) -> Result<Labels, String> {
    let mut labels = Labels::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = crate::registry::parse_label(part).map_err(|e| format!("{e}; write the selector as key=value,key=value"))?;
        labels.insert(k, v);
    }
    Ok(labels)
}

/// Everything the fleet's overview shows.
#[derive(Debug, Clone)]
pub struct Overview {
    pub summary: Summary,
    pub rollouts: Vec<RolloutView>,
    pub machines: MachinesPage,
}

/// The summary, the newest `rollouts` (those in progress first) and one
/// page of the machines table, from one read of the machines and the
/// rollouts.
pub fn overview(state: &Coordinator, query: &MachinesQuery, rollouts: usize) -> Result<Overview, WireError> {
    let liveness = super::coordinators::liveness(state);
    let records: Vec<MachineRecord> = state.store.machines()?.into_iter().map(|m| state.live.newest(m)).collect();
    let mut all_rollouts = state.store.rollouts()?;
    let held = held_by(&all_rollouts);
    let mut summary = Summary::default();
    let mut soonest: Option<u64> = None;
    let (selector, filter_error) = match parse_selector(&query.selector) {
        Ok(s) => (s, None),
        Err(e) => (Labels::new(), Some(e)),
    };
    let tenant = query.tenant.trim();
    let mut shown = Vec::new();
    for m in &records {
        let r = row(state, &liveness, m, &held)?;
        match r.status {
            "online" => summary.online += 1,
            "offline" => summary.offline += 1,
            _ => summary.revoked += 1,
        }
        if r.condition == "failing" {
            summary.failing += 1;
        }
        if behind(m) {
            summary.behind += 1;
        }
        if m.revoked_at.is_none() {
            soonest = Some(soonest.map_or(m.cert_not_after, |t| t.min(m.cert_not_after)));
        }
        if crate::registry::matches(&m.labels, &selector) && (tenant.is_empty() || m.labels.get(TENANT_LABEL).map(String::as_str) == Some(tenant)) {
            shown.push(r);
        }
    }
    summary.provisioning = state
        .store
        .provisions()?
        .iter()
        .filter(|p| matches!(p.state, v1::ProvisionState::Provisioning | v1::ProvisionState::Booting | v1::ProvisionState::Enrolled))
        .count();
    summary.soonest_cert = soonest.map_or("-".into(), |t| output::until(t, liveness.now));
    summary.store = match super::metrics::store_size(state) {
        Some(bytes) => output::bytes(bytes),
        None => "etcd (shared)".into(),
    };
    summary.rollouts_active = all_rollouts.iter().filter(|r| r.state.phase.active()).count();

    sort_rows(&mut shown);
    let matched = shown.len();
    let pages = matched.div_ceil(PAGE_SIZE).max(1);
    let page = query.page.clamp(1, pages);
    let rows = shown.into_iter().skip((page - 1) * PAGE_SIZE).take(PAGE_SIZE).collect();
    let machines = MachinesPage { rows, matched, page, pages, selector: query.selector.clone(), tenant: tenant.to_string(), filter_error };

    all_rollouts.sort_by_key(|r| (std::cmp::Reverse(r.state.phase.active()), std::cmp::Reverse(r.created_at)));
    all_rollouts.truncate(rollouts);
    let by_id: BTreeMap<String, MachineRecord> = records.into_iter().map(|m| (m.id.clone(), m)).collect();
    let rollouts = all_rollouts.iter().map(|r| rollout_view(r, &by_id)).collect();
    Ok(Overview { summary, rollouts, machines })
}

fn rollout_view(r: &crate::model::RolloutRecord, machines: &BTreeMap<String, MachineRecord>) -> RolloutView {
    let info = super::rollouts::to_wire(r, machines);
    let mut states: BTreeMap<&'static str, usize> = BTreeMap::new();
    for m in &info.machines {
        *states.entry(m.state.as_str()).or_default() += 1;
    }
    let failed = info.machines.iter().filter(|m| m.state == v1::RolloutMachineState::Failed).count();
    let canaries: Vec<&v1::RolloutMachine> = info.machines.iter().filter(|m| m.canary).collect();
    let canary = if canaries.is_empty() {
        "none".to_string()
    } else {
        canaries.iter().map(|m| format!("{} {}", m.hostname, m.state.as_str())).collect::<Vec<_>>().join(", ")
    };
    RolloutView {
        id: info.id.clone(),
        phase: info.phase.as_str(),
        active: r.state.phase.active(),
        paused: info.paused,
        reason: info.reason.clone().unwrap_or_default(),
        created: output::timestamp(info.created_at),
        system: crate::deploy::system_text(&info.system),
        selector: output::labels(&info.selector),
        canary,
        states: states.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", "),
        failures: format!("{failed} of {} allowed", info.strategy.max_failures),
        machines: info
            .machines
            .iter()
            .map(|m| RolloutMachineView {
                machine_id: m.machine_id.clone(),
                hostname: m.hostname.clone(),
                state: m.state.as_str(),
                canary: m.canary,
                deployment: m.generation.map(|g| format!("{}/{g}", m.machine_id)).unwrap_or_default(),
                generation: m.generation.map(|g| format!("generation {g}")).unwrap_or_default(),
                reason: m.reason.clone().unwrap_or_default(),
            })
            .collect(),
    }
}

fn machines_by_id(state: &Coordinator) -> Result<BTreeMap<String, MachineRecord>, WireError> {
    Ok(state.store.machines()?.into_iter().map(|m| (m.id.clone(), m)).collect())
}

pub fn rollout(state: &Coordinator, id: &str) -> Result<RolloutView, WireError> {
    let r = state.store.rollout(id)?.ok_or_else(|| not_found(format!("no rollout {id}")))?;
    Ok(rollout_view(&r, &machines_by_id(state)?))
}

fn deployment_view(d: &crate::model::DeploymentRecord) -> DeploymentView {
    DeploymentView {
        id: d.id.clone(),
        machine_id: d.machine_id.clone(),
        hostname: d.hostname.clone(),
        generation: d.generation,
        state: d.state.as_str(),
        rolled_back: d.rolled_back,
        system: crate::deploy::system_text(&d.system),
        created: output::timestamp(d.created_at),
        finished: d.finished_at.map_or("-".into(), output::timestamp),
        steps: d.steps.iter().map(|s| StepView { at: output::timestamp(s.at), step: s.step.as_str().replace('_', " "), message: s.message.clone() }).collect(),
        steps_dropped: d.steps_dropped,
        output_tail: d.output_tail.clone(),
        secret_names: d.secret_names.join(", "),
    }
}

/// A deployment by its id (`MACHINE/GENERATION`).
pub fn deployment(state: &Coordinator, machine: &str, generation: u64) -> Result<DeploymentView, WireError> {
    let d = state.store.deployment(machine, generation)?.ok_or_else(|| not_found(format!("no deployment {machine}/{generation}")))?;
    Ok(deployment_view(&d))
}

/// Deployments a machine's page shows, newest first.
const MACHINE_DEPLOYMENTS: usize = 10;

pub fn machine(state: &Coordinator, id: &str) -> Result<MachineView, WireError> {
    let m = state.store.machine(id)?.ok_or_else(|| not_found(format!("no machine {id}")))?;
    let m = state.live.newest(m);
    let liveness = super::coordinators::liveness(state);
    let row = row(state, &liveness, &m, &held_by_rollouts(state)?)?;
    let health = m.health.as_ref();
    let mut deployments = state.store.deployments(Some(&m.id))?;
    deployments.retain(|d| d.generation <= m.desired_generation);
    deployments.sort_by_key(|d| std::cmp::Reverse(d.generation));
    deployments.truncate(MACHINE_DEPLOYMENTS);
    let buckets = match state.store.assignment(&m.id, m.desired_generation)? {
        Some(a) => serde_json::from_str::<BTreeMap<String, serde_json::Value>>(&a.assignment.facts_json)
            .unwrap_or_default()
            .keys()
            .filter_map(|k| k.strip_prefix("s3_bucket.").map(str::to_string))
            .collect(),
        None => Vec::new(),
    };
    let reported: HashMap<&str, &v1::VolumeState> = health.map(|h| h.volumes.iter().map(|v| (v.name.as_str(), v)).collect()).unwrap_or_default();
    Ok(MachineView {
        enrolled: output::timestamp(m.enrolled_at),
        cert_expires: output::until(m.cert_not_after, liveness.now),
        addresses: health.map(|h| h.addresses.join(", ")).unwrap_or_default(),
        uptime: health.map(|h| output::duration(Duration::from_secs(h.uptime_secs))).unwrap_or_else(|| "-".into()),
        disks: health
            .map(|h| {
                h.disks
                    .iter()
                    .map(|d| (d.mount_point.clone(), format!("{} free of {}", output::bytes(d.available_bytes), output::bytes(d.total_bytes))))
                    .collect()
            })
            .unwrap_or_default(),
        volumes: m
            .volumes
            .iter()
            .map(|v| {
                let said = match reported.get(v.name.as_str()) {
                    Some(s) if s.mounted => format!("mounted, {} used of {}", output::bytes(s.used_bytes), output::bytes(s.total_bytes)),
                    Some(s) => format!("not mounted: {}", s.error.clone().unwrap_or_default()),
                    None => "not reported yet".into(),
                };
                (format!("{} on {}", v.name, v.mount_point), said)
            })
            .collect(),
        buckets,
        deployments: deployments.iter().map(deployment_view).collect(),
        row,
    })
}

/// Every tenant with its machines, buckets and volumes.
pub fn tenants(state: &Coordinator) -> Result<Vec<TenantView>, WireError> {
    let liveness = super::coordinators::liveness(state);
    let held = held_by_rollouts(state)?;
    let volumes = state.store.volumes()?;
    // One read of the machines, grouped by their tenant label.
    let mut by_tenant: HashMap<String, Vec<MachineRecord>> = HashMap::new();
    for m in state.store.machines()? {
        if let Some(t) = m.labels.get(TENANT_LABEL).cloned() {
            by_tenant.entry(t).or_default().push(state.live.newest(m));
        }
    }
    let mut out = Vec::new();
    for t in state.store.tenants()? {
        let records = by_tenant.remove(&t.domain).unwrap_or_default();
        let mut buckets = std::collections::BTreeSet::new();
        let mut machines = Vec::with_capacity(records.len());
        for m in &records {
            if let Some(a) = state.store.assignment(&m.id, m.desired_generation)? {
                let facts = serde_json::from_str::<BTreeMap<String, serde_json::Value>>(&a.assignment.facts_json).unwrap_or_default();
                buckets.extend(facts.keys().filter_map(|k| k.strip_prefix("s3_bucket.").map(str::to_string)));
            }
            machines.push(row(state, &liveness, m, &held)?);
        }
        sort_rows(&mut machines);
        let ids: std::collections::HashSet<&str> = records.iter().map(|m| m.id.as_str()).collect();
        out.push(TenantView {
            domain: t.domain.clone(),
            admin_user: t.admin_user.clone(),
            admin_email: t.admin_email.clone(),
            managers: t.managers.iter().cloned().collect::<Vec<_>>().join(", "),
            created: output::timestamp(t.created_at),
            volumes: volumes
                .iter()
                .filter(|v| v.attached.as_ref().is_some_and(|a| ids.contains(a.machine_id.as_str())))
                .map(|v| format!("{} ({})", v.name, output::bytes(v.size_bytes)))
                .collect(),
            buckets: buckets.into_iter().collect(),
            machines,
        });
    }
    Ok(out)
}

/// The health of Garage and LINSTOR, where configured; asked at most once
/// per [`BACKEND_HEALTH_TTL`], each bounded by [`BACKEND_TIMEOUT`].
pub async fn backends(state: &Coordinator) -> Vec<BackendHealth> {
    let ttl = u64::try_from(BACKEND_HEALTH_TTL.as_millis()).unwrap_or(u64::MAX);
    if let Some((at, health)) = state.web.backends.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
        if now_ms().saturating_sub(*at) < ttl {
            return health.clone();
        }
    }
    backends_now(state).await
}

/// Garage's health: from the nodes `drover s3 cluster` recorded, or else the
/// configured admin endpoint's own view.
async fn garage(state: &Coordinator) -> Result<BackendHealth, WireError> {
    if !state.store.s3_nodes()?.is_empty() {
        let c = super::s3::cluster::status(state).await?;
        return Ok(BackendHealth {
            system: "Garage",
            ok: c.health == "healthy",
            text: format!(
                "{}: {} of {} nodes up, {} of {} partitions ok, layout {}",
                c.health,
                c.nodes.iter().filter(|n| n.up).count(),
                c.nodes.len(),
                c.partitions_all_ok,
                c.partitions,
                c.layout_version
            ),
        });
    }
    let store = state.object_store.as_ref().ok_or_else(|| WireError::new(ErrorCode::Unavailable, "no [s3] configured"))?;
    let h = store.admin().map_err(super::errors::s3)?.health().await.map_err(super::errors::s3)?;
    Ok(BackendHealth {
        system: "Garage",
        ok: h.status == "healthy",
        text: format!("{}: {} nodes connected, {} of {} partitions ok", h.status, h.connected_nodes, h.partitions_all_ok, h.partitions),
    })
}

/// Asks Garage and LINSTOR now (each within [`BACKEND_TIMEOUT`]) and keeps
/// the answer for [`backends`].
pub async fn backends_now(state: &Coordinator) -> Vec<BackendHealth> {
    let mut out = Vec::new();
    if state.object_store.is_some() {
        out.push(match tokio::time::timeout(BACKEND_TIMEOUT, garage(state)).await {
            Ok(Ok(h)) => h,
            Ok(Err(e)) => BackendHealth { system: "Garage", ok: false, text: e.message },
            Err(_) => BackendHealth { system: "Garage", ok: false, text: format!("no answer within {}s", BACKEND_TIMEOUT.as_secs()) },
        });
    }
    match &state.block_storage {
        Some(Ok(block)) => out.push(match tokio::time::timeout(BACKEND_TIMEOUT, block.volumes()).await {
            Ok(Ok(v)) => {
                let whole = v.iter().filter(|v| v.replicas.iter().all(|r| r.ready())).count();
                BackendHealth {
                    system: "LINSTOR",
                    ok: whole == v.len(),
                    text: format!("answering; {whole} of {} volumes with every replica up to date", v.len()),
                }
            }
            Ok(Err(e)) => BackendHealth { system: "LINSTOR", ok: false, text: e.to_string() },
            Err(_) => BackendHealth { system: "LINSTOR", ok: false, text: format!("no answer within {}s", BACKEND_TIMEOUT.as_secs()) },
        }),
        Some(Err(e)) => out.push(BackendHealth { system: "LINSTOR", ok: false, text: e.clone() }),
        None => {}
    }
    *state.web.backends.lock().unwrap_or_else(|p| p.into_inner()) = Some((now_ms(), out.clone()));
    out
}
