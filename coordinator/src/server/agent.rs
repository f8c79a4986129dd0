//! Requests from enrolled machines: the watch stream, health reports and
//! certificate renewal. A machine only ever reads or writes its own record.

use drover_net::identity::Subject;
use drover_net::stream::write_frame;
use drover_protocol::v1::{AgentEvent, AgentRequest, AgentResponse, Response};
use drover_protocol::{ErrorCode, WireError};

use crate::model::HealthRecord;
use crate::store::StoreError;

use super::{now_ms, wire_error, Coordinator};

/// Handles one agent request. Returns `None` when the handler answered on the
/// stream itself (the watch stream).
pub(super) async fn handle(
    state: &Coordinator,
    conn: &quinn::Connection,
    id: &str,
    request: AgentRequest,
    send: &mut quinn::SendStream,
    _recv: &mut quinn::RecvStream,
) -> Option<Response> {
    match request {
        AgentRequest::Watch => {
            let welcome = Response::Agent(AgentResponse::Event(AgentEvent::Welcome {
                machine_id: id.to_string(),
                health_interval_ms: u64::try_from(state.config.health_interval.as_millis())
                    .unwrap_or(u64::MAX),
            }));
            if write_frame(send, &welcome).await.is_err() {
                return None;
            }
            let current = match state.store.machine(id) {
                Ok(Some(m)) => m.desired_generation,
                _ => 0,
            };
            let mut desired = state.live.subscribe(id, current);
            let mut announced = 0;
            loop {
                let generation = *desired.borrow_and_update();
                if generation > announced {
                    let event = Response::Agent(AgentResponse::Event(AgentEvent::Desired { generation }));
                    if write_frame(send, &event).await.is_err() {
                        return None;
                    }
                    announced = generation;
                }
                tokio::select! {
                    changed = desired.changed() => if changed.is_err() { return None },
                    _ = conn.closed() => return None,
                    _ = send.stopped() => return None,
                }
            }
        }
        AgentRequest::FetchAssignment | AgentRequest::FetchAssignmentWithAccess => {
            let with_access = request == AgentRequest::FetchAssignmentWithAccess;
            let answer = state.store.machine(id).and_then(|m| {
                let desired = m.map(|m| m.desired_generation).unwrap_or(0);
                if desired == 0 {
                    return Ok(None);
                }
                state.store.assignment(id, desired)
            });
            Some(match answer {
                Ok(Some(record)) if with_access => Response::Agent(AgentResponse::AssignmentWithAccess {
                    assignment: record.assignment,
                    access: record.access,
                }),
                Ok(Some(record)) => Response::Agent(AgentResponse::Assignment(record.assignment)),
                Ok(None) => Response::Agent(AgentResponse::NoAssignment),
                Err(e) => Response::Error(wire_error(e)),
            })
        }
        AgentRequest::ReportDeployment(report) => {
            let now = now_ms();
            let result = state.store.update_deployment(id, report.generation, &|d, m| {
                crate::deploy::apply_report(d, m, &report, now);
                Ok(())
            });
            Some(match result {
                Ok(d) => {
                    tracing::info!(generation = report.generation, step = ?report.step, state = ?d.state, "deployment progress");
                    Response::Agent(AgentResponse::Ack)
                }
                Err(e) => Response::Error(wire_error(e)),
            })
        }
        AgentRequest::Report(report) => {
            let now = now_ms();
            let health = HealthRecord::from_wire(report, now);
            let result = state.store.record_health(id, &|m| {
                if m.revoked_at.is_some() {
                    return Err(StoreError::Revoked(id.to_string()));
                }
                m.last_seen = Some(now);
                m.health = Some(health.clone());
                Ok(())
            });
            Some(match result {
                Ok(_) => Response::Agent(AgentResponse::Ack),
                Err(e) => refusal(conn, id, e),
            })
        }
        AgentRequest::Renew { csr_der } => {
            let issued = match state.ca.sign_client(
                &csr_der,
                &Subject::Machine(id.to_string()),
                state.config.machine_cert_lifetime,
            ) {
                Ok(issued) => issued,
                Err(e) => return Some(Response::Error(WireError::new(ErrorCode::BadCsr, e.to_string()))),
            };
            let result = state.store.update_machine(id, &|m| {
                if m.revoked_at.is_some() {
                    return Err(StoreError::Revoked(id.to_string()));
                }
                m.previous_cert = Some((m.cert_serial.clone(), m.cert_not_after));
                m.cert_serial = issued.serial.clone();
                m.cert_not_after = issued.not_after;
                Ok(())
            });
            Some(match result {
                Ok(_) => {
                    tracing::info!(serial = %issued.serial, "certificate renewed");
                    Response::Agent(AgentResponse::Renewed(issued))
                }
                Err(e) => refusal(conn, id, e),
            })
        }
    }
}

/// A revoked machine's request closes its connection; other errors answer.
fn refusal(conn: &quinn::Connection, id: &str, e: StoreError) -> Response {
    let error = wire_error(e);
    if error.code == ErrorCode::Revoked {
        tracing::info!(machine = %id, "request from a revoked machine; closing its connection");
        conn.close(ErrorCode::Revoked.as_u32().into(), error.message.as_bytes());
    }
    Response::Error(error)
}
