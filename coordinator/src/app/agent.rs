//! What enrolled machines ask for: who they are (checked against the
//! records on every connection), their desired generation, their newest
//! assignment, progress reports, health reports and certificate renewal. A
//! machine only ever reads or writes its own record; everything it sends is
//! checked or normalised before it is stored.

use drover_net::identity::{PeerCertificate, Subject};
use drover_protocol::v1::{AgentResponse, DeploymentReport, DeploymentState, HealthReport, IssuedCertificate, VolumeState, MAX_REPORTS_PER_REQUEST};
use drover_protocol::{ErrorCode, WireError};

use crate::model::{DeploymentRecord, HealthRecord, MachineRecord};
use crate::store::deployments::generation_key;

use super::errors::revoked;
use super::{now_ms, Coordinator};

/// Who is on the other end of a connection, as the records confirm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peer {
    Anonymous,
    Machine {
        id: String,
    },
    /// An admin, with the serial of the certificate it connected with:
    /// every request is checked against the admin's record as it is then.
    Admin {
        name: String,
        serial: String,
    },
}

/// Checks a client certificate (already verified against the fleet CA by
/// TLS) against the records: a machine must exist, not be revoked, and hold
/// the serial; an admin must exist and hold the serial.
pub fn identify(state: &Coordinator, cert: Option<PeerCertificate>) -> Result<Peer, WireError> {
    let Some(cert) = cert else {
        return Ok(Peer::Anonymous);
    };
    let unauthenticated = |msg: &str| WireError::new(ErrorCode::Unauthenticated, msg.to_string());
    match cert.subject {
        Subject::Machine(id) => {
            let record =
                state.store.machine(&id)?.ok_or_else(|| unauthenticated("this machine is not known to the coordinator; enroll it again with a new token"))?;
            if record.revoked_at.is_some() {
                return Err(revoked(&id));
            }
            if !record.holds_serial(&cert.serial, now_ms()) {
                return Err(unauthenticated("this certificate was replaced; use the machine's newest certificate"));
            }
            Ok(Peer::Machine { id })
        }
        Subject::Admin(name) => {
            let record = state.store.admin(&name)?.ok_or_else(|| unauthenticated("this admin is not known to the coordinator"))?;
            if !record.serials.contains(&cert.serial) {
                return Err(unauthenticated("this admin certificate is no longer valid"));
            }
            Ok(Peer::Admin { name, serial: cert.serial })
        }
    }
}

/// Whether machine `id` was revoked since it connected.
pub fn is_revoked(state: &Coordinator, id: &str) -> bool {
    matches!(state.store.machine(id), Ok(Some(m)) if m.revoked_at.is_some())
}

/// The machine's newest recorded generation (0: none).
pub fn desired_generation(state: &Coordinator, id: &str) -> u64 {
    match state.store.machine(id) {
        Ok(Some(m)) => m.desired_generation,
        _ => 0,
    }
}

/// The machine's newest assignment, with the SSH access decided with it.
pub fn fetch_assignment(state: &Coordinator, id: &str) -> Result<AgentResponse, WireError> {
    let desired = state.store.machine(id)?.map(|m| m.desired_generation).unwrap_or(0);
    if desired == 0 {
        return Ok(AgentResponse::NoAssignment);
    }
    Ok(match state.store.assignment(id, desired)? {
        Some(record) => AgentResponse::Assignment { assignment: record.assignment, access: record.access },
        None => AgentResponse::NoAssignment,
    })
}

/// The most volume states one progress report is read for.
const MAX_REPORTED_VOLUMES: usize = 64;

/// Folds progress reports (oldest first) into the machine's own
/// deployments, in one transaction. A report of an outcome (succeeded,
/// failed, rolled back) changes the machine's record too and is flushed
/// before it is acknowledged: the agent then stops sending it. Steps on the
/// way only add to a deployment's history and wait for the store's
/// periodic flush (the outcome that follows is what counts): a deploy to a
/// large fleet would otherwise flush for every step of every machine.
pub async fn report_deployments(state: &Coordinator, id: &str, reports: Vec<DeploymentReport>) -> Result<AgentResponse, WireError> {
    if reports.is_empty() || reports.len() > MAX_REPORTS_PER_REQUEST {
        return Err(WireError::new(ErrorCode::BadRequest, format!("a request carries 1 to {MAX_REPORTS_PER_REQUEST} progress reports, not {}", reports.len())));
    }
    let now = now_ms();
    // An outcome, or volumes' states (a format among them), change the
    // machine's records and are flushed before they are acknowledged.
    let outcome = reports.iter().any(|r| crate::deploy::is_outcome(r.step) || !r.volumes.is_empty());
    let reports = std::sync::Arc::new(reports);
    let steps = state.config.limits.deployment_steps;
    let (machine_id, folded) = (id.to_string(), reports.clone());
    // Grouped with the other machines' reports: a deployment makes every
    // machine report at once.
    let fold = move |tx: &crate::store::Tx<'_>| {
        let id = machine_id.as_str();
        let mut machine: MachineRecord = tx.require(id.as_bytes())?;
        let mut finished = Vec::new();
        let mut dropped = Vec::new();
        for report in folded.iter() {
            let key = generation_key(id, report.generation);
            let mut deployment: DeploymentRecord = tx.require(&key)?;
            let was_final = deployment.finished_at.is_some();
            let cut_before = deployment.steps_dropped;
            crate::deploy::apply_report(&mut deployment, &mut machine, report, now, steps);
            if cut_before == 0 && deployment.steps_dropped > 0 {
                tracing::warn!(
                    machine = id,
                    generation = report.generation,
                    "a deployment's steps passed their bound (limits.deployment_steps); more are counted, not kept"
                );
            }
            tx.put(&key, &deployment)?;
            if !report.volumes.is_empty() {
                let states: Vec<VolumeState> = report.volumes.iter().take(MAX_REPORTED_VOLUMES).map(crate::model::clean_volume_state).collect();
                super::volumes::record_states(tx, &mut machine, &states)?;
                if deployment.state == DeploymentState::Failed && !was_final {
                    dropped.extend(super::volumes::drop_refused(tx, &mut machine, report.generation, &states)?);
                }
            }
            if let (false, Some(at)) = (was_final, deployment.finished_at) {
                finished.push((deployment.state, deployment.rolled_back, at.saturating_sub(deployment.created_at)));
            }
        }
        if outcome {
            tx.put(id.as_bytes(), &machine)?;
        }
        Ok::<_, WireError>((finished, dropped))
    };
    let (finished, dropped) = if outcome { state.store.commit_grouped(fold).await? } else { state.store.write_grouped(fold).await? };
    super::volumes::release_dropped(state, dropped);
    for (deployment_state, rolled_back, took_ms) in finished {
        state.metrics.deployment_finished(deployment_state, rolled_back, took_ms as f64 / 1000.0);
    }
    // Outcomes at info; the steps on the way (many, and a machine's to
    // send) at debug.
    for report in reports.iter() {
        if crate::deploy::is_outcome(report.step) {
            tracing::info!(generation = report.generation, step = ?report.step, "deployment finished");
        } else {
            tracing::debug!(generation = report.generation, step = ?report.step, "deployment progress");
        }
    }
    Ok(AgentResponse::Ack)
}

/// Records a health report, normalised (see [`HealthRecord::from_wire`]).
/// A report about volumes is folded into their records at once; any other
/// report is kept in memory ([`crate::app::live::Live::saw`]) and written
/// with the others by [`write_liveness`]: losing the newest reports in a
/// crash is harmless (the next ones come within an interval), and reports
/// are frequent. A revoked machine's connections were closed when it was
/// revoked, and it cannot connect again.
pub async fn report_health(state: &Coordinator, id: &str, report: HealthReport) -> Result<AgentResponse, WireError> {
    let now = now_ms();
    let health = HealthRecord::from_wire(report, now);
    if health.volumes.is_empty() {
        state.live.saw(id, now, health);
        return Ok(AgentResponse::Ack);
    }
    // Through the write lane: a flush in progress holds writes back rather
    // than a worker blocking on the store's gate.
    state
        .store
        .write(|tx| {
            let mut m: MachineRecord = tx.require(id.as_bytes())?;
            if m.revoked_at.is_some() {
                return Err(revoked(id));
            }
            m.last_seen = Some(now);
            super::volumes::record_states(tx, &mut m, &health.volumes)?;
            m.health = Some(health.clone());
            tx.put(id.as_bytes(), &m)?;
            Ok(())
        })
        .await?;
    Ok(AgentResponse::Ack)
}

/// How often the health reports kept in memory are written to the store.
pub const LIVENESS_WRITE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(30);

/// Machines whose reports one transaction writes.
const LIVENESS_BATCH: usize = 256;

/// Writes the health reports kept in memory to the machines' records, in
/// batches (a record written meanwhile with a newer report keeps it; a
/// machine removed meanwhile is skipped); a report stays in memory until
/// its batch is written. Runs every
/// [`LIVENESS_WRITE_INTERVAL`] and at shutdown.
pub fn write_liveness(state: &Coordinator) -> Result<usize, WireError> {
    let unwritten = state.live.unwritten();
    // On a shared store, which coordinator's connection carried them.
    let via = state.store.backend().lost().map(|_| super::coordinators::holder(&state.config.advertise.to_string()));
    // As many as one transaction of the store takes (etcd: --max-txn-ops).
    let per = state.store.max_txn_ops().map_or(LIVENESS_BATCH, |ops| ops.saturating_sub(1).clamp(1, LIVENESS_BATCH));
    for batch in unwritten.chunks(per) {
        state.store.transact(|tx| {
            tx.prefetch(batch.iter().map(|(id, _, _)| (crate::store::Tree::Machines, id.as_bytes())))?;
            for (id, at, health) in batch {
                let Some(mut m) = tx.get::<MachineRecord>(id.as_bytes())? else { continue };
                if m.revoked_at.is_some() || m.last_seen.is_some_and(|seen| seen >= *at) {
                    continue;
                }
                m.last_seen = Some(*at);
                m.health = Some(health.clone());
                m.reported_via.clone_from(&via);
                tx.put(id.as_bytes(), &m)?;
            }
            Ok::<_, WireError>(())
        })?;
        state.live.written(batch);
    }
    Ok(unwritten.len())
}

/// Writes the health reports kept in memory every
/// [`LIVENESS_WRITE_INTERVAL`], off the async workers — on a shared store
/// every health interval, if shorter, so that the other coordinators (the
/// leader's rollout driver among them) see this one's machines online.
pub async fn write_liveness_periodically(state: std::sync::Arc<Coordinator>) {
    let every = match state.store.backend().lost() {
        Some(_) => LIVENESS_WRITE_INTERVAL.min(state.config.health_interval).max(std::time::Duration::from_millis(100)),
        None => LIVENESS_WRITE_INTERVAL,
    };
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let state = state.clone();
        match tokio::task::spawn_blocking(move || write_liveness(&state)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e.message, "health reports not written to the store; trying again"),
            Err(e) => tracing::warn!(error = %e, "writing health reports failed"),
        }
    }
}

/// Signs a new certificate for the same machine; the old one stays valid
/// until it expires, so a lost answer does not lock the machine out.
pub async fn renew(state: &Coordinator, id: &str, csr_der: &[u8]) -> Result<AgentResponse, WireError> {
    let issued: IssuedCertificate = state
        .ca
        .sign_client(csr_der, &Subject::Machine(id.to_string()), state.config.machine_cert_lifetime)
        .map_err(|e| WireError::new(ErrorCode::BadCsr, e.to_string()))?;
    state
        .store
        .update::<MachineRecord, WireError>(id.as_bytes(), |m| {
            if m.revoked_at.is_some() {
                return Err(revoked(id));
            }
            m.previous_cert = Some((m.cert_serial.clone(), m.cert_not_after));
            m.cert_serial = issued.serial.clone();
            m.cert_not_after = issued.not_after;
            Ok(())
        })
        .await?;
    tracing::info!(serial = %issued.serial, "certificate renewed");
    Ok(AgentResponse::Renewed(issued))
}
