//! Agent requests on the transport: the watch stream, which this module
//! keeps open and writes events to, and the one-answer requests, which the
//! application layer answers. A revoked machine's request closes its
//! connection.

use drover_net::stream::write_frame;
use drover_protocol::v1::{AgentEvent, AgentRequest, AgentResponse, Response};
use drover_protocol::{ErrorCode, WireError};

use crate::app::{agent as app, Coordinator};

/// Handles one agent request. Returns `None` when the handler answered on
/// the stream itself (the watch stream).
pub(super) async fn handle(
    state: &Coordinator,
    conn: &quinn::Connection,
    id: &str,
    request: AgentRequest,
    send: &mut quinn::SendStream,
) -> Option<Response> {
    let answer = match request {
        AgentRequest::Watch => {
            watch(state, conn, id, send).await;
            return None;
        }
        AgentRequest::FetchAssignment => app::fetch_assignment(state, id),
        AgentRequest::ReportDeployment(report) => app::report_deployments(state, id, std::slice::from_ref(&report)).await,
        AgentRequest::ReportDeployments(reports) => app::report_deployments(state, id, &reports).await,
        AgentRequest::Report(report) => app::report_health(state, id, report),
        AgentRequest::Renew { csr_der } => app::renew(state, id, &csr_der).await,
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

/// Sends Welcome, then the machine's desired generation whenever it changes,
/// until the connection or the stream closes.
async fn watch(state: &Coordinator, conn: &quinn::Connection, id: &str, send: &mut quinn::SendStream) {
    let welcome = Response::Agent(AgentResponse::Event(AgentEvent::Welcome {
        machine_id: id.to_string(),
        health_interval_ms: u64::try_from(state.config.health_interval.as_millis()).unwrap_or(u64::MAX),
    }));
    if write_frame(send, &welcome).await.is_err() {
        return;
    }
    let mut desired = state.live.subscribe(id, app::desired_generation(state, id));
    let mut announced = 0;
    loop {
        let generation = *desired.borrow_and_update();
        if generation > announced {
            let event = Response::Agent(AgentResponse::Event(AgentEvent::Desired { generation }));
            if write_frame(send, &event).await.is_err() {
                return;
            }
            tracing::debug!(generation, "desired generation announced");
            announced = generation;
        }
        tokio::select! {
            changed = desired.changed() => if changed.is_err() { return },
            _ = conn.closed() => return,
            _ = send.stopped() => return,
        }
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
