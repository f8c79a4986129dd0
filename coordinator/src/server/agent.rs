//! Agent requests on the transport: the watch stream, which this module
//! keeps open and writes events to, and the one-answer requests, which the
//! application layer answers. A revoked machine's request closes its
//! connection.

use drover_protocol::v1::{Access, AgentEvent, AgentRequest, AgentResponse, Assignment, Response};
use drover_protocol::{ErrorCode, WireError};

use crate::app::live::Desired;
use crate::app::{agent as app, Coordinator};

/// Handles one agent request. Returns `None` when the handler answered on
/// the stream itself (the watch stream).
pub(super) async fn handle(
    state: &Coordinator,
    conn: &quinn::Connection,
    version: u16,
    id: &str,
    request: AgentRequest,
    send: &mut quinn::SendStream,
) -> Option<Response> {
    // Boxed: the futures of a store's transactions are large, and a
    // stream's task is as large as the largest it could hold.
    let answer = match request {
        AgentRequest::Watch => {
            watch(state, conn, version, id, send).await;
            return None;
        }
        AgentRequest::FetchAssignment => app::fetch_assignment(state, id),
        AgentRequest::ReportDeployment(report) => Box::pin(app::report_deployments(state, id, vec![report])).await,
        AgentRequest::ReportDeployments(reports) => Box::pin(app::report_deployments(state, id, reports)).await,
        AgentRequest::Report(report) => Box::pin(app::report_health(state, id, report)).await,
        AgentRequest::Renew { csr_der } => Box::pin(app::renew(state, id, &csr_der)).await,
        AgentRequest::RestoreVolume { generation, name } => {
            // Boxed: the block storage client's future is large, the other
            // requests' are small.
            Box::pin(crate::app::volumes::restore(state, id, generation, &name)).await.map(|()| AgentResponse::Ack)
        }
    };
    Some(match answer {
        Ok(answer) => Response::Agent(answer),
        Err(error) => Response::Error(refusal(conn, id, error)),
    })
}

/// Protocol 9 pushes a new generation's assignment with its announcement.
const ASSIGNED_SINCE: u16 = 9;

/// Sends Welcome and the machine's desired generation, then each newer
/// generation as it is recorded, until the connection or the stream
/// closes. A peer of protocol 9 gets a newer generation with its assignment
/// (`Assigned`), so that it need not ask for it; the generation it
/// connected to is only named (`Desired`): it has most likely applied that
/// one already, and a reconnecting fleet should not cost an assignment
/// each.
pub(super) async fn watch(state: &Coordinator, conn: &quinn::Connection, version: u16, id: &str, send: &mut quinn::SendStream) {
    let welcome =
        AgentEvent::Welcome { machine_id: id.to_string(), health_interval_ms: u64::try_from(state.config.health_interval.as_millis()).unwrap_or(u64::MAX) };
    if send_event(send, welcome, version).await.is_err() {
        return;
    }
    let mut desired = state.live.subscribe(id, app::desired_generation(state, id));
    let mut announced = 0;
    let mut just_connected = true;
    loop {
        let Desired { generation, assigned } = desired.borrow_and_update().clone();
        if generation > announced {
            let event = if just_connected || version < ASSIGNED_SINCE {
                AgentEvent::Desired { generation }
            } else {
                assigned_event(state, id, generation, assigned.as_deref())
            };
            announced = match &event {
                AgentEvent::Assigned { assignment, .. } => assignment.generation.max(generation),
                _ => generation,
            };
            if send_event(send, event, version).await.is_err() {
                return;
            }
            if assigned.is_some() {
                state.live.sent(id, generation);
            }
            tracing::debug!(generation = announced, "desired generation announced");
        }
        just_connected = false;
        tokio::select! {
            changed = desired.changed() => if changed.is_err() { return },
            _ = conn.closed() => return,
            _ = send.stopped() => return,
        }
    }
}

/// Writes one event of the watch stream. The event is encoded first and
/// dropped: what waits for the stream is its bytes, not the message (the
/// task lasts the connection).
async fn send_event(send: &mut quinn::SendStream, event: AgentEvent, version: u16) -> Result<(), drover_net::stream::StreamError> {
    let bytes = drover_protocol::frame::encode_for(&Response::Agent(AgentResponse::Event(event)), version)?;
    send.write_all(&bytes).await?;
    Ok(())
}

/// `Assigned` for `generation`: with the assignment recorded with it, or
/// else the newest in the store (which may be newer still); `Desired` when
/// the store has none.
fn assigned_event(state: &Coordinator, id: &str, generation: u64, recorded: Option<&(Assignment, Access)>) -> AgentEvent {
    if let Some((assignment, access)) = recorded.filter(|(a, _)| a.generation == generation) {
        return AgentEvent::Assigned { assignment: assignment.clone(), access: access.clone() };
    }
    match app::fetch_assignment(state, id) {
        Ok(AgentResponse::Assignment { assignment, access }) => AgentEvent::Assigned { assignment, access },
        _ => AgentEvent::Desired { generation },
    }
}

/// A revoked machine's request closes its connection; other errors answer.
fn refusal(conn: &quinn::Connection, id: &str, error: WireError) -> WireError {
    if error.code == ErrorCode::Revoked {
        tracing::info!(machine = %id, "request from a revoked machine; closing its connection");
        conn.close(ErrorCode::Revoked.as_u32().into(), error.message.as_bytes());
    }
    error
}
