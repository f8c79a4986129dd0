//! One QUIC connection: who is on the other end, Hello first, then one
//! request per bi-stream.
//!
//! The TLS layer has already checked any client certificate against the
//! fleet CA. Here the certificate's identity is checked against the records:
//! a machine must exist, not be revoked, and hold the certificate's serial;
//! an admin must exist and hold the serial. A connection without a
//! certificate may only say Hello and Enroll, with small frames, for a
//! limited time.

use std::sync::Arc;
use std::time::Duration;

use tracing::Instrument;

use drover_net::identity::PeerCertificate;
use drover_net::stream::{read_frame_for, write_frame, write_frame_for, FrameBudget, StreamError};
use drover_protocol::frame::{MAX_FRAME_LEN, MAX_UNAUTHENTICATED_FRAME_LEN};
use drover_protocol::v1::{AdminRequest, AdminResponse, HelloAck, Request, Response};
use drover_protocol::{negotiate, ErrorCode, WireError, SUPPORTED};

use crate::app::agent::{identify, is_revoked, Peer};
use crate::app::{admin, enroll, Coordinator};

use super::agent;
use super::limits::{HandshakeSlot, Limits, ADMIN_CONNECTION_BYTES, ANONYMOUS_CONNECTION_BYTES, MACHINE_CONNECTION_BYTES, MAX_MACHINE_REQUEST_LEN};

/// How long a connection without a certificate may stay open.
const ANONYMOUS_LIFETIME: Duration = Duration::from_secs(30);

fn max_frame(peer: &Peer) -> usize {
    match peer {
        Peer::Anonymous => MAX_UNAUTHENTICATED_FRAME_LEN,
        Peer::Machine { .. } => MAX_MACHINE_REQUEST_LEN,
        Peer::Admin { .. } => MAX_FRAME_LEN,
    }
}

/// The request bytes one connection may hold in flight, and its kind's
/// share of the coordinator's budget.
struct Budgets {
    connection: FrameBudget,
    share: FrameBudget,
}

impl Budgets {
    fn new(limits: &Limits, peer: &Peer) -> Self {
        let (bytes, share) = match peer {
            Peer::Anonymous => (ANONYMOUS_CONNECTION_BYTES, &limits.budgets.anonymous),
            Peer::Machine { .. } => (MACHINE_CONNECTION_BYTES, &limits.budgets.machines),
            Peer::Admin { .. } => (ADMIN_CONNECTION_BYTES, &limits.budgets.admins),
        };
        Budgets { connection: FrameBudget::new(bytes), share: share.clone() }
    }

    /// Reads a request in the shapes of protocol `version` (Hello, read
    /// before any version is agreed, has one shape in every version).
    async fn read(&self, recv: &mut quinn::RecvStream, peer: &Peer, version: u16) -> Result<Request, StreamError> {
        read_frame_for(recv, max_frame(peer), &[&self.connection, &self.share], version).await
    }
}

fn close(conn: &quinn::Connection, error: &WireError) {
    conn.close(error.code.as_u32().into(), error.message.as_bytes());
}

/// The drover identity in the peer's certificate, if it presented one.
fn certificate(conn: &quinn::Connection) -> Result<Option<PeerCertificate>, WireError> {
    let Some(any) = conn.peer_identity() else {
        return Ok(None);
    };
    let Ok(chain) = any.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>() else {
        return Ok(None);
    };
    let Some(leaf) = chain.first() else {
        return Ok(None);
    };
    PeerCertificate::parse(leaf).map(Some).map_err(|_| WireError::new(ErrorCode::Unauthenticated, "client certificate carries no drover identity"))
}

/// Carries a connection from its handshake (which holds `handshake`, one
/// of the places for handshakes in progress, at most
/// `limits.handshake_timeout`) to its end.
pub(super) async fn handle(state: Arc<Coordinator>, limits: Arc<Limits>, incoming: quinn::Incoming, handshake: HandshakeSlot) {
    let remote = incoming.remote_address();
    let connecting = match incoming.accept() {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(%remote, error = %e, "connection attempt refused by QUIC");
            return;
        }
    };
    // Dropping the handshake's future closes its connection: a half-open
    // handshake costs its place for the timeout at most.
    let conn = match tokio::time::timeout(limits.handshake_timeout, connecting).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => {
            tracing::debug!(%remote, error = %e, "handshake failed");
            return;
        }
        Err(_) => {
            limits.warnings.note(remote.ip(), "handshakes that did not finish in time", "handshake timeout");
            return;
        }
    };
    drop(handshake);
    let peer = match certificate(&conn).and_then(|cert| identify(&state, cert)) {
        Ok(peer) => peer,
        Err(e) => {
            limits.warnings.note(remote.ip(), "refused connections", &e.message);
            close(&conn, &e);
            return;
        }
    };
    let _place = match limits.admit_connection(matches!(peer, Peer::Admin { .. })) {
        Ok(place) => place,
        Err(e) => {
            limits.warnings.note(remote.ip(), "connections refused for want of places", &e.message);
            close(&conn, &e);
            return;
        }
    };
    // A connection without a certificate takes one of the few places for
    // enrollment; one with a certificate gets its streams and window.
    let _slot = match &peer {
        Peer::Anonymous => match limits.admit_anonymous(remote.ip()) {
            Ok(slot) => Some(slot),
            Err(e) => {
                limits.warnings.note(remote.ip(), "connections without a certificate refused", &e.message);
                close(&conn, &e);
                return;
            }
        },
        _ => {
            conn.set_max_concurrent_bi_streams(limits.streams_per_connection.into());
            conn.set_receive_window(drover_net::tls::CONNECTION_RECEIVE_WINDOW.into());
            None
        }
    };
    let span = match &peer {
        Peer::Anonymous => tracing::info_span!("conn", %remote, peer = "anonymous"),
        Peer::Machine { id } => tracing::info_span!("conn", %remote, machine = %id),
        Peer::Admin { name, .. } => tracing::info_span!("conn", %remote, admin = %name),
    };
    async move {
        if let Peer::Machine { id } = &peer {
            // Register before re-checking, so that a revocation racing with
            // this connection either sees it or is seen here.
            let closing = conn.clone();
            let closer: crate::app::live::Closer = Arc::new(move |code: ErrorCode, reason: &str| closing.close(code.as_u32().into(), reason.as_bytes()));
            state.live.register(id, conn.stable_id(), closer, limits.connections_per_machine);
            if is_revoked(&state, id) {
                close(&conn, &WireError::new(ErrorCode::Revoked, format!("machine {id} was revoked")));
            }
        }
        if let Peer::Admin { name, .. } = &peer {
            let closing = conn.clone();
            let closer: crate::app::live::Closer = Arc::new(move |code: ErrorCode, reason: &str| closing.close(code.as_u32().into(), reason.as_bytes()));
            state.live.register_admin(name, conn.stable_id(), closer, limits.connections_per_admin);
        }
        if matches!(peer, Peer::Anonymous) {
            let c = conn.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = tokio::time::sleep(ANONYMOUS_LIFETIME) => {
                        c.close(ErrorCode::Unauthenticated.as_u32().into(), b"enrollment connection lifetime exceeded");
                    }
                    _ = c.closed() => {}
                }
            });
        }
        tracing::debug!("connected");
        serve(&state, &limits, &conn, &peer).await;
        match &peer {
            Peer::Machine { id } => state.live.unregister(id, conn.stable_id()),
            Peer::Admin { name, .. } => state.live.unregister_admin(name, conn.stable_id()),
            Peer::Anonymous => {}
        }
        tracing::debug!(reason = ?conn.close_reason(), "disconnected");
    }
    .instrument(span)
    .await;
}

async fn serve(state: &Arc<Coordinator>, limits: &Arc<Limits>, conn: &quinn::Connection, peer: &Peer) {
    // The first stream must carry Hello; it is handled before any other.
    let Ok((mut send, mut recv)) = conn.accept_bi().await else {
        return;
    };
    let budgets = Arc::new(Budgets::new(limits, peer));
    let hello = match budgets.read(&mut recv, peer, 0).await {
        Ok(Request::Hello(hello)) => hello,
        Ok(_) => {
            let e = WireError::new(ErrorCode::BadRequest, "the first request must be Hello");
            return answer_and_close(conn, send, e).await;
        }
        Err(e) => {
            bad_stream(limits, conn, send, recv, &e).await;
            close(conn, &WireError::new(ErrorCode::BadRequest, "the first request must be Hello"));
            return;
        }
    };
    let version = match negotiate(SUPPORTED, hello.versions) {
        Ok(version) => {
            let ack = Response::Hello(HelloAck { version, software: format!("drover {}", env!("CARGO_PKG_VERSION")) });
            if write_frame(&mut send, &ack).await.is_err() {
                return;
            }
            let _ = send.finish();
            version
        }
        Err(e) => {
            let detail = format!("client {} ({})", drover_protocol::text::printable(&hello.software, 120), e.message);
            limits.warnings.note(conn.remote_address().ip(), "version mismatches", &detail);
            return answer_and_close(conn, send, e).await;
        }
    };

    while let Ok((send, recv)) = conn.accept_bi().await {
        let state = state.clone();
        let limits = limits.clone();
        let budgets = budgets.clone();
        let peer = peer.clone();
        let conn = conn.clone();
        let in_flight = crate::app::InFlight::new(&state);
        tokio::spawn(
            async move {
                handle_stream(state, limits, &budgets, conn, Caller { peer, version }, send, recv).await;
                drop(in_flight);
            }
            .in_current_span(),
        );
    }
}

/// Sends `error` as the stream's answer, gives it a moment to arrive, then
/// closes the connection with the same code.
async fn answer_and_close(conn: &quinn::Connection, mut send: quinn::SendStream, error: WireError) {
    let _ = write_frame(&mut send, &Response::Error(error.clone())).await;
    let _ = send.finish();
    let _ = tokio::time::timeout(Duration::from_secs(1), send.stopped()).await;
    close(conn, &error);
}

/// Answers a stream whose request could not be read, then closes it. The
/// connection and every other stream go on. A request refused for want of
/// memory is "unavailable", not the peer's fault.
async fn bad_stream(limits: &Limits, conn: &quinn::Connection, mut send: quinn::SendStream, mut recv: quinn::RecvStream, e: &StreamError) {
    let ip = conn.remote_address().ip();
    let code = match e {
        StreamError::BudgetExhausted { .. } => {
            limits.budget_exhausted(ip);
            ErrorCode::Unavailable
        }
        _ => {
            limits.warnings.bad_stream(ip, e);
            ErrorCode::BadRequest
        }
    };
    let _ = recv.stop(code.as_u32().into());
    let error = WireError::new(code, format!("unreadable request: {e}"));
    let _ = write_frame(&mut send, &Response::Error(error)).await;
    let _ = send.finish();
}

/// Who sent a stream, and the protocol version agreed with it at Hello.
struct Caller {
    peer: Peer,
    version: u16,
}

async fn handle_stream(
    state: Arc<Coordinator>,
    limits: Arc<Limits>,
    budgets: &Budgets,
    conn: quinn::Connection,
    caller: Caller,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let Caller { peer, version } = caller;
    let request = match budgets.read(&mut recv, &peer, version).await {
        Ok(request) => request,
        Err(e) => return bad_stream(&limits, &conn, send, recv, &e).await,
    };
    // Each identity's requests per second (the watch stream, which lasts
    // the connection, apart): past its rate, "unavailable, retry after".
    let who = match &peer {
        Peer::Machine { id } => Some((id.as_str(), false)),
        Peer::Admin { name, .. } => Some((name.as_str(), true)),
        Peer::Anonymous => None,
    };
    if let (Some((who, admin)), false) = (who, matches!(request, Request::Agent(drover_protocol::v1::AgentRequest::Watch))) {
        if let Err(wait) = limits.request(who, admin) {
            limits.warnings.note(conn.remote_address().ip(), "requests over the rate", who);
            let e = WireError::new(ErrorCode::Unavailable, format!("too many requests from {who}: retry after {} ms", wait.as_millis().max(1)));
            let _ = write_frame_for(&mut send, &Response::Error(e), version).await;
            let _ = send.finish();
            return;
        }
    }
    let denied = |code, msg: &str| Some(Response::Error(WireError::new(code, msg.to_string())));
    let kind = request_kind(&request);
    let started = std::time::Instant::now();
    let answer = match (request, &peer) {
        (Request::Hello(_), _) => denied(ErrorCode::BadRequest, "Hello was already exchanged on this connection"),
        (Request::Enroll(req), Peer::Anonymous) => Some(match Box::pin(enroll::enroll(&state, req)).await {
            Ok(issued) => Response::Enrolled(issued),
            Err(e) => {
                // One warning, then a count per source and interval: a
                // scan with made-up tokens cannot flood the log.
                limits.warnings.note(conn.remote_address().ip(), "enrollments refused", &e.message);
                Response::Error(e)
            }
        }),
        (Request::Enroll(_), _) => denied(ErrorCode::BadRequest, "this connection already has an identity; enroll without a client certificate"),
        (Request::Agent(req), Peer::Machine { id }) => agent::handle(&state, &conn, version, id, req, &mut send).await,
        (Request::Agent(_), Peer::Anonymous) => denied(ErrorCode::Unauthenticated, "this request needs a machine certificate; enroll first"),
        (Request::Agent(_), Peer::Admin { .. }) => denied(ErrorCode::PermissionDenied, "admin certificates cannot make agent requests"),
        (Request::Admin(AdminRequest::Backup), Peer::Admin { name, serial }) => match Box::pin(admin::backup(&state, name, serial)).await {
            Ok(bytes) => {
                send_backup(&mut send, &bytes).await;
                None
            }
            Err(e) => Some(Response::Error(e)),
        },
        // Boxed: the admin requests' futures (S3, block storage, hypervisor
        // clients) are many kilobytes, and every stream's task — an agent's
        // health report too — would otherwise be allocated and moved at
        // that size.
        (Request::Admin(req), Peer::Admin { name, serial }) => Some(Box::pin(admin::handle(&state, name, serial, req)).await),
        (Request::Admin(_), Peer::Anonymous) => denied(ErrorCode::Unauthenticated, "this request needs an admin certificate"),
        (Request::Admin(_), Peer::Machine { .. }) => denied(ErrorCode::PermissionDenied, "machine certificates cannot make admin requests"),
    };
    if let Some(kind) = kind {
        state.metrics.request(kind, started.elapsed().as_secs_f64());
    }
    if let Some(answer) = answer {
        if let Response::Error(e) = &answer {
            tracing::debug!(code = ?e.code, reason = %drover_protocol::text::printable(&e.message, 300), "request refused");
        }
        let _ = write_frame_for(&mut send, &answer, version).await;
        let _ = send.finish();
    }
}

/// The request's kind for the latency metric; none for the watch stream,
/// which lasts as long as the connection.
fn request_kind(request: &Request) -> Option<&'static str> {
    use drover_protocol::v1::AgentRequest;
    Some(match request {
        Request::Hello(_) => "hello",
        Request::Enroll(_) => "enroll",
        Request::Agent(AgentRequest::Watch) => return None,
        Request::Agent(AgentRequest::Report(_)) => "health_report",
        Request::Agent(AgentRequest::Renew { .. }) => "renew",
        Request::Agent(AgentRequest::FetchAssignment) => "fetch_assignment",
        Request::Agent(AgentRequest::ReportDeployment(_) | AgentRequest::ReportDeployments(_)) => "deployment_report",
        Request::Agent(AgentRequest::RestoreVolume { .. }) => "restore_volume",
        Request::Admin(_) => "admin",
    })
}

/// The largest part of a backup in one frame.
const BACKUP_CHUNK: usize = 4 << 20;

/// Sends a backup in parts, then its size and SHA-256.
async fn send_backup(send: &mut quinn::SendStream, bytes: &[u8]) {
    use sha2::Digest;
    for chunk in bytes.chunks(BACKUP_CHUNK) {
        if write_frame(send, &Response::Admin(AdminResponse::BackupChunk(chunk.to_vec()))).await.is_err() {
            return;
        }
    }
    let end = AdminResponse::BackupEnd { bytes: bytes.len() as u64, sha256: hex::encode(sha2::Sha256::digest(bytes)) };
    let _ = write_frame(send, &Response::Admin(end)).await;
    let _ = send.finish();
}
