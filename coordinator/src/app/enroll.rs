//! Enrollment: a token and a CSR in, a machine record and its certificate
//! out. The token text is hashed at once and appears in no log line; the
//! token rules are the [`crate::tokens`] core's, checked again inside the
//! transaction that spends a use and creates the machine.

use drover_net::identity::Subject;
use drover_protocol::v1::{EnrollRequest, IssuedCertificate};
use drover_protocol::{ErrorCode, WireError};

use crate::model::{MachineRecord, TokenRecord};
use crate::tokens::{self, TokenRefusal};

use super::errors::conflict;
use super::{now_ms, Coordinator};

/// A fresh machine id: `m-` and ten hex digits.
pub fn new_machine_id() -> String {
    let bytes: [u8; 5] = rand::random();
    format!("m-{}", hex::encode(bytes))
}

fn refuse(refusal: TokenRefusal, token_id: Option<&str>) -> WireError {
    tracing::info!(token = token_id.unwrap_or("-"), reason = %refusal, "enrollment refused");
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

pub async fn enroll(state: &Coordinator, req: EnrollRequest) -> Result<IssuedCertificate, WireError> {
    let hostname = req.hostname.trim();
    if hostname.is_empty() || hostname.len() > 253 || hostname.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(WireError::new(ErrorCode::InvalidArgument, "hostname must be 1-253 printable characters without spaces"));
    }
    if req.token.expose().len() > tokens::MAX_TOKEN_LEN {
        return Err(refuse(TokenRefusal::Unknown, None));
    }
    let hash = tokens::hash(req.token.expose());
    let now = now_ms();
    // Fail fast before spending a signature; the transaction checks again.
    let token = state.store.token_by_hash(&hash)?;
    tokens::check(token.as_ref(), now).map_err(|r| refuse(r, token.as_ref().map(|t| t.id.as_str())))?;
    let id = new_machine_id();
    let issued = state
        .ca
        .sign_client(&req.csr_der, &Subject::Machine(id.clone()), state.config.machine_cert_lifetime)
        .map_err(|e| {
            tracing::info!(error = %e, "enrollment refused: unusable CSR");
            WireError::new(ErrorCode::BadCsr, e.to_string())
        })?;
    let result = state
        .store
        .commit(|tx| {
            let token: Option<TokenRecord> = tx.get(hash.as_bytes())?;
            tokens::check(token.as_ref(), now).map_err(Refused::Token)?;
            let Some(mut token) = token else {
                return Err(Refused::Token(TokenRefusal::Unknown));
            };
            if tx.get::<MachineRecord>(id.as_bytes())?.is_some() {
                return Err(Refused::Other(conflict(format!("machine id {id} is taken"))));
            }
            token.uses_left -= 1;
            let machine = MachineRecord {
                id: id.clone(),
                hostname: hostname.to_string(),
                labels: token.labels.clone(),
                token_id: token.id.clone(),
                enrolled_at: now,
                revoked_at: None,
                cert_serial: issued.serial.clone(),
                cert_not_after: issued.not_after,
                previous_cert: None,
                last_seen: None,
                health: None,
                desired_generation: 0,
                current_generation: None,
                current_system: None,
            };
            tx.put(hash.as_bytes(), &token)?;
            tx.put(id.as_bytes(), &machine)?;
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
