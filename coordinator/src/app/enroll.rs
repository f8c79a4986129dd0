//! Enrollment: a token and a CSR in, a machine record and its certificate
//! out. The token text is hashed at once and appears in no log line; the
//! token rules are the [`crate::tokens`] core's, checked again inside the
//! transaction that spends a use and creates the machine.
//!
//! An answer can be lost (a timeout, a dropped connection). The agent then
//! enrolls again with the same key and token: while its machine has never
//! connected, that retry gets the same machine and a new certificate, spends
//! no other use and makes no second record.

use drover_net::identity::Subject;
use drover_protocol::v1::{EnrollRequest, IssuedCertificate};
use drover_protocol::{ErrorCode, WireError};

use crate::model::{EnrollmentRecord, MachineRecord, TokenRecord};
use crate::pki::{Ca, CheckedCsr};
use crate::tokens::{self, TokenRefusal};

use super::errors::conflict;
use super::{now_ms, Coordinator};

/// A fresh machine id: `m-` and ten hex digits.
pub fn new_machine_id() -> String {
    let bytes: [u8; 5] = rand::random();
    format!("m-{}", hex::encode(bytes))
}

fn refuse(refusal: TokenRefusal, token_id: Option<&str>) -> WireError {
    // The server counts refusals per source in its warning summaries.
    tracing::debug!(token = token_id.unwrap_or("-"), reason = %refusal, "enrollment refused");
    refusal.to_wire()
}

/// Why an enrollment transaction did not commit.
enum Refused {
    Token(TokenRefusal),
    Other(WireError),
}

impl From<crate::store::StoreError> for Refused {
    fn from(e: crate::store::StoreError) -> Self {
        Refused::Other(e.into())
    }
}

/// Enrolls a machine, counting the outcome in the metrics (refusals by
/// their error code).
pub async fn enroll(state: &Coordinator, req: EnrollRequest) -> Result<IssuedCertificate, WireError> {
    let result = enroll_checked(state, req).await;
    match &result {
        Ok(_) => state.metrics.enrolled(),
        Err(e) => state.metrics.enrollment_refused(&snake_case(&format!("{:?}", e.code))),
    }
    result
}

/// `TokenExpired` → `token_expired`.
fn snake_case(name: &str) -> String {
    let mut out = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

async fn enroll_checked(state: &Coordinator, req: EnrollRequest) -> Result<IssuedCertificate, WireError> {
    let hostname = req.hostname.trim();
    if hostname.is_empty() || hostname.len() > 253 || hostname.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(WireError::new(ErrorCode::InvalidArgument, "hostname must be 1-253 printable characters without spaces"));
    }
    if req.token.expose().len() > tokens::MAX_TOKEN_LEN {
        return Err(refuse(TokenRefusal::Unknown, None));
    }
    let hash = tokens::hash(req.token.expose());
    let now = now_ms();
    // Checked once: its key's fingerprint and the signature come from it.
    let csr = Ca::check_csr(&req.csr_der).map_err(|e| {
        tracing::debug!(error = %e, "enrollment refused: unusable CSR");
        WireError::new(ErrorCode::BadCsr, e.to_string())
    })?;
    let key = csr.key_fingerprint();
    let token = state.store.token_by_hash(&hash)?;
    if let Some(issued) = retry(state, &csr, &key, token.as_ref()).await? {
        return Ok(issued);
    }
    // Fail fast before spending a signature; the transaction checks again.
    tokens::check(token.as_ref(), now).map_err(|r| refuse(r, token.as_ref().map(|t| t.id.as_str())))?;
    let id = new_machine_id();
    let issued = state.ca.sign_checked(&csr, &Subject::Machine(id.clone()), state.config.machine_cert_lifetime).map_err(|e| {
        tracing::debug!(error = %e, "enrollment refused: unusable CSR");
        WireError::new(ErrorCode::BadCsr, e.to_string())
    })?;
    // Owned by the transaction's body: it runs grouped with the other
    // enrollments waiting meanwhile (a fleet enrolls at once).
    let (hash_key, machine_id, host, serial, not_after, enrolled_key) =
        (hash.clone(), id.clone(), hostname.to_string(), issued.serial.clone(), issued.not_after, key.clone());
    let result = state
        .store
        .commit_grouped(move |tx| {
            let (hash, id, hostname, key) = (&hash_key, &machine_id, host.as_str(), &enrolled_key);
            let token: Option<TokenRecord> = tx.get(hash.as_bytes())?;
            tokens::check(token.as_ref(), now).map_err(Refused::Token)?;
            let Some(mut token) = token else {
                return Err(Refused::Token(TokenRefusal::Unknown));
            };
            if tx.get::<MachineRecord>(id.as_bytes())?.is_some() {
                return Err(Refused::Other(conflict(format!("machine id {id} is taken"))));
            }
            token.uses_left -= 1;
            // A provision's token names the machine and gives it the
            // provision's data disks.
            let (name, volumes) = match super::provisions::bind_enrollment(tx, &token, id)? {
                Some(bound) => bound,
                None if token.provision.is_some() => return Err(Refused::Token(TokenRefusal::Revoked)),
                None => (hostname.to_string(), Vec::new()),
            };
            let machine = MachineRecord {
                id: id.clone(),
                hostname: name,
                labels: token.labels.clone(),
                token_id: token.id.clone(),
                enrolled_at: now,
                revoked_at: None,
                cert_serial: serial.clone(),
                cert_not_after: not_after,
                previous_cert: None,
                last_seen: None,
                health: None,
                desired_generation: 0,
                current_generation: None,
                current_system: None,
                enrolled_key: Some(key.clone()),
                volumes,
                reported_via: None,
            };
            tx.put(hash.as_bytes(), &token)?;
            tx.put(id.as_bytes(), &machine)?;
            tx.put(key.as_bytes(), &EnrollmentRecord { machine_id: id.clone(), token_id: token.id.clone() })?;
            Ok(machine)
        })
        .await;
    match result {
        Ok(machine) => {
            tracing::info!(machine = %machine.id, hostname = %machine.hostname, token = %machine.token_id, "machine enrolled");
            Ok(issued)
        }
        Err(Refused::Token(refusal)) => Err(refuse(refusal, token.as_ref().map(|t| t.id.as_str()))),
        Err(Refused::Other(e)) => Err(e),
    }
}

/// The retry of an enrollment whose answer was lost: the same key, the same
/// token, a machine that has never connected and is not revoked. Returns a
/// new certificate for that machine, or `None` when this is no such retry
/// (the ordinary rules then apply).
async fn retry(state: &Coordinator, csr: &CheckedCsr, key: &str, token: Option<&TokenRecord>) -> Result<Option<IssuedCertificate>, WireError> {
    let Some(token) = token.filter(|t| !t.revoked) else {
        return Ok(None);
    };
    let Some(enrolled) = state.store.get::<EnrollmentRecord>(key.as_bytes())? else {
        return Ok(None);
    };
    let is_retry = |m: &MachineRecord| {
        enrolled.token_id == token.id
            && m.token_id == token.id
            && m.enrolled_key.as_deref() == Some(key)
            && m.revoked_at.is_none()
            && m.last_seen.is_none()
            && !state.live.has_unwritten(&m.id)
    };
    match state.store.machine(&enrolled.machine_id)? {
        Some(m) if is_retry(&m) => {}
        _ => return Ok(None),
    }
    let id = enrolled.machine_id;
    let issued = state
        .ca
        .sign_checked(csr, &Subject::Machine(id.clone()), state.config.machine_cert_lifetime)
        .map_err(|e| WireError::new(ErrorCode::BadCsr, e.to_string()))?;
    let still = state
        .store
        .commit(|tx| {
            let mut m: MachineRecord = tx.require(id.as_bytes())?;
            if !is_retry(&m) {
                return Ok::<_, WireError>(false);
            }
            m.previous_cert = Some((m.cert_serial.clone(), m.cert_not_after));
            m.cert_serial = issued.serial.clone();
            m.cert_not_after = issued.not_after;
            tx.put(id.as_bytes(), &m)?;
            Ok(true)
        })
        .await?;
    if !still {
        return Ok(None);
    }
    tracing::info!(machine = %id, token = %token.id, "enrollment retried after a lost answer; same machine, no use spent");
    Ok(Some(issued))
}
