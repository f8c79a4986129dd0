//! Enrollment: a token and a CSR in, a machine record and its certificate
//! out. The token text is hashed at once and appears in no log line.

use drover_net::identity::Subject;
use drover_protocol::v1::{EnrollRequest, Response};
use drover_protocol::{ErrorCode, WireError};

use crate::model::MachineRecord;
use crate::tokens::{self, TokenRefusal};

use super::{now_ms, wire_error, Coordinator};

/// A fresh machine id: `m-` and ten hex digits.
pub fn new_machine_id() -> String {
    let bytes: [u8; 5] = rand::random();
    format!("m-{}", hex::encode(bytes))
}

fn refuse(refusal: TokenRefusal, token_id: Option<&str>) -> Response {
    tracing::info!(token = token_id.unwrap_or("-"), reason = %refusal, "enrollment refused");
    Response::Error(refusal.to_wire())
}

pub(super) async fn enroll(state: &Coordinator, req: EnrollRequest) -> Response {
    let hostname = req.hostname.trim();
    if hostname.is_empty() || hostname.len() > 253 || hostname.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Response::Error(WireError::new(
            ErrorCode::InvalidArgument,
            "hostname must be 1-253 printable characters without spaces",
        ));
    }
    if req.token.expose().len() > tokens::MAX_TOKEN_LEN {
        return refuse(TokenRefusal::Unknown, None);
    }
    let hash = tokens::hash(req.token.expose());
    let now = now_ms();
    // Fail fast before spending a signature; the transaction checks again.
    let token = match state.store.token_by_hash(&hash) {
        Ok(token) => token,
        Err(e) => return Response::Error(wire_error(e)),
    };
    if let Err(refusal) = tokens::check(token.as_ref(), now) {
        return refuse(refusal, token.as_ref().map(|t| t.id.as_str()));
    }
    let id = new_machine_id();
    let issued = match state.ca.sign_client(
        &req.csr_der,
        &Subject::Machine(id.clone()),
        state.config.machine_cert_lifetime,
    ) {
        Ok(issued) => issued,
        Err(e) => {
            tracing::info!(error = %e, "enrollment refused: unusable CSR");
            return Response::Error(WireError::new(ErrorCode::BadCsr, e.to_string()));
        }
    };
    let record = MachineRecord {
        id: id.clone(),
        hostname: hostname.to_string(),
        labels: Default::default(),
        token_id: String::new(),
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
    match state.store.enroll(&hash, now, &record) {
        Ok(machine) => {
            tracing::info!(machine = %machine.id, hostname = %machine.hostname, token = %machine.token_id, "machine enrolled");
            Response::Enrolled(issued)
        }
        Err(crate::store::StoreError::Token(refusal)) => {
            refuse(refusal, token.as_ref().map(|t| t.id.as_str()))
        }
        Err(e) => Response::Error(wire_error(e)),
    }
}
