//! What enrolled machines ask for: who they are (checked against the
//! records on every connection), their desired generation, their newest
//! assignment, progress reports, health reports and certificate renewal. A
//! machine only ever reads or writes its own record; everything it sends is
//! checked or normalised before it is stored.

use drover_net::identity::{PeerCertificate, Subject};
use drover_protocol::v1::{AgentResponse, DeploymentReport, HealthReport, IssuedCertificate};
use drover_protocol::{ErrorCode, WireError};

use crate::model::{DeploymentRecord, HealthRecord, MachineRecord};
use crate::store::deployments::generation_key;

use super::errors::revoked;
use super::{now_ms, Coordinator};

/// Who is on the other end of a connection, as the records confirm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peer {
    Anonymous,
    Machine { id: String },
    Admin { name: String },
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
            let record = state.store.machine(&id)?.ok_or_else(|| {
                unauthenticated("this machine is not known to the coordinator; enroll it again with a new token")
            })?;
            if record.revoked_at.is_some() {
                return Err(revoked(&id));
            }
            if !record.holds_serial(&cert.serial, now_ms()) {
                return Err(unauthenticated("this certificate was replaced; use the machine's newest certificate"));
            }
            Ok(Peer::Machine { id })
        }
        Subject::Admin(name) => {
            let record =
                state.store.admin(&name)?.ok_or_else(|| unauthenticated("this admin is not known to the coordinator"))?;
            if !record.serials.contains(&cert.serial) {
                return Err(unauthenticated("this admin certificate is no longer valid"));
            }
            Ok(Peer::Admin { name })
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

/// Folds a progress report into the machine's own deployment.
pub async fn report_deployment(state: &Coordinator, id: &str, report: DeploymentReport) -> Result<AgentResponse, WireError> {
    let now = now_ms();
    let key = generation_key(id, report.generation);
    let d = state
        .store
        .commit(|tx| {
            let mut deployment: DeploymentRecord = tx.require(&key)?;
            let was_final = deployment.finished_at.is_some();
            let mut machine: MachineRecord = tx.require(id.as_bytes())?;
            crate::deploy::apply_report(&mut deployment, &mut machine, &report, now);
            tx.put(&key, &deployment)?;
            tx.put(id.as_bytes(), &machine)?;
            Ok::<_, WireError>((deployment, was_final))
        })
        .await?;
    let (d, was_final) = d;
    if let (false, Some(finished)) = (was_final, d.finished_at) {
        state.metrics.deployment_finished(d.state, d.rolled_back, finished.saturating_sub(d.created_at) as f64 / 1000.0);
    }
    tracing::info!(generation = report.generation, step = ?report.step, state = ?d.state, "deployment progress");
    Ok(AgentResponse::Ack)
}

/// Records a health report, normalised (see [`HealthRecord::from_wire`]).
/// Not flushed at once: losing the newest report in a crash is harmless,
/// and reports are frequent.
pub fn report_health(state: &Coordinator, id: &str, report: HealthReport) -> Result<AgentResponse, WireError> {
    let now = now_ms();
    let health = HealthRecord::from_wire(report, now);
    state.store.transact(|tx| {
        let mut m: MachineRecord = tx.require(id.as_bytes())?;
        if m.revoked_at.is_some() {
            return Err(revoked(id));
        }
        m.last_seen = Some(now);
        if !m.volumes.is_empty() {
            super::volumes::record_states(tx, &mut m, &health.volumes)?;
        }
        m.health = Some(health.clone());
        tx.put(id.as_bytes(), &m)?;
        Ok(())
    })?;
    Ok(AgentResponse::Ack)
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
