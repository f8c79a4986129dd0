//! One QUIC connection: who is on the other end, Hello first, then one
//! request per bi-stream.
//!
//! The TLS layer has already checked any client certificate against the
//! fleet CA. Here the certificate's identity is checked against the records:
//! a machine must exist, not be revoked, and hold the certificate's serial;
//! an admin must exist and hold the serial. A connection without a
//! certificate may only say Hello and Enroll, with small frames, for a
//! limited time — until it enrolls with a CSR bound to its own TLS session
//! (protocol 14): it then goes on as the machine it became, without a
//! second handshake ([`enroll_here`]).

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
use super::limits::{
    AnonymousSlot, HandshakeSlot, Limits, ADMIN_CONNECTION_BYTES, ANONYMOUS_CONNECTION_BYTES, MACHINE_CONNECTION_BYTES, MAX_MACHINE_REQUEST_LEN,
};

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
    // handshake costs its place for the timeout at most. Boxed, so that
    // the connection's task, held for its whole life, does not keep room
    // for the handshake.
    let conn = match Box::pin(tokio::time::timeout(limits.handshake_timeout, connecting)).await {
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
    // enrollment, for a limited time; one with a certificate gets its
    // streams and window.
    let anonymous = match &peer {
        Peer::Anonymous => match limits.admit_anonymous(remote.ip()) {
            Ok(slot) => {
                let c = conn.clone();
                let lifetime = tokio::spawn(async move {
                    tokio::select! {
                        _ = tokio::time::sleep(ANONYMOUS_LIFETIME) => {
                            c.close(ErrorCode::Unauthenticated.as_u32().into(), b"enrollment connection lifetime exceeded");
                        }
                        _ = c.closed() => {}
                    }
                });
                Some(Anonymous { _slot: slot, lifetime: lifetime.abort_handle() })
            }
            Err(e) => {
                limits.warnings.note(remote.ip(), "connections without a certificate refused", &e.message);
                close(&conn, &e);
                return;
            }
        },
        _ => None,
    };
    let span = match &peer {
        Peer::Anonymous => tracing::info_span!("conn", %remote, peer = "anonymous", machine = tracing::field::Empty),
        Peer::Machine { id } => tracing::info_span!("conn", %remote, machine = %id),
        Peer::Admin { name, .. } => tracing::info_span!("conn", %remote, admin = %name),
    };
    state.metrics.connection(match &peer {
        Peer::Anonymous => "anonymous",
        Peer::Machine { .. } => "machine",
        Peer::Admin { .. } => "admin",
    });
    async move {
        register(&state, &limits, &conn, &peer);
        tracing::debug!("connected");
        let peer = serve(&state, &limits, &conn, peer, anonymous).await;
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

/// What an anonymous connection holds while it is one: its place for
/// enrollment, and the timer that ends it.
struct Anonymous {
    _slot: AnonymousSlot,
    lifetime: tokio::task::AbortHandle,
}

impl Drop for Anonymous {
    fn drop(&mut self) {
        self.lifetime.abort();
    }
}

/// Makes a connection with an identity count as that identity's: its
/// streams and window, its place among the live connections (closed by a
/// revocation), and — registered before checking again — a revocation
/// racing with it either sees it or is seen here.
fn register(state: &Arc<Coordinator>, limits: &Arc<Limits>, conn: &quinn::Connection, peer: &Peer) {
    if matches!(peer, Peer::Anonymous) {
        return;
    }
    let streams = if matches!(peer, Peer::Machine { .. }) { limits.streams_per_machine } else { limits.streams_per_connection };
    conn.set_max_concurrent_bi_streams(streams.into());
    conn.set_receive_window(drover_net::tls::CONNECTION_RECEIVE_WINDOW.into());
    let closing = conn.clone();
    let closer: crate::app::live::Closer = Arc::new(move |code: ErrorCode, reason: &str| closing.close(code.as_u32().into(), reason.as_bytes()));
    match peer {
        Peer::Machine { id } => {
            state.live.register(id, conn.stable_id(), closer, limits.connections_per_machine);
            if is_revoked(state, id) {
                close(conn, &WireError::new(ErrorCode::Revoked, format!("machine {id} was revoked")));
            }
        }
        Peer::Admin { name, .. } => state.live.register_admin(name, conn.stable_id(), closer, limits.connections_per_admin),
        Peer::Anonymous => {}
    }
}

/// Serves the connection's streams until it ends; returns who it was by
/// then (an anonymous connection that enrolled with a CSR bound to its TLS
/// session goes on as the machine it became: see [`enroll_here`]).
async fn serve(state: &Arc<Coordinator>, limits: &Arc<Limits>, conn: &quinn::Connection, mut peer: Peer, mut anonymous: Option<Anonymous>) -> Peer {
    let mut budgets = Arc::new(Budgets::new(limits, &peer));
    // Boxed: the loop below, not the greeting, is what the connection's
    // task holds for its life.
    let Some(version) = Box::pin(greet(limits, conn, &peer, &budgets)).await else {
        return peer;
    };
    let (became, mut becomes) = tokio::sync::watch::channel(None::<String>);
    let became = Arc::new(became);
    loop {
        let (send, recv) = tokio::select! {
            // Before the next stream: the agent opens its first stream as
            // the machine only after the answer that made it one.
            biased;
            Ok(()) = becomes.changed(), if anonymous.is_some() => {
                let Some(id) = becomes.borrow_and_update().clone() else { continue };
                peer = Peer::Machine { id: id.clone() };
                anonymous = None;
                budgets = Arc::new(Budgets::new(limits, &peer));
                tracing::Span::current().record("machine", id.as_str());
                register(state, limits, conn, &peer);
                state.metrics.connection("enrolled_in_place");
                tracing::debug!("enrolled on this connection; it goes on as the machine");
                continue;
            }
            accepted = conn.accept_bi() => match accepted {
                Ok(streams) => streams,
                Err(_) => break,
            },
        };
        let state = state.clone();
        let limits = limits.clone();
        let budgets = budgets.clone();
        let caller = Caller { peer: peer.clone(), version, became: anonymous.is_some().then(|| became.clone()) };
        let conn = conn.clone();
        let in_flight = crate::app::InFlight::new(&state);
        tokio::spawn(
            async move {
                handle_stream(state, limits, &budgets, conn, caller, send, recv).await;
                drop(in_flight);
            }
            .in_current_span(),
        );
    }
    peer
}

/// The first stream, which must carry Hello: the version both ends speak,
/// or `None` once the connection is closed.
async fn greet(limits: &Arc<Limits>, conn: &quinn::Connection, peer: &Peer, budgets: &Budgets) -> Option<u16> {
    let Ok((mut send, mut recv)) = conn.accept_bi().await else {
        return None;
    };
    let hello = match budgets.read(&mut recv, peer, 0).await {
        Ok(Request::Hello(hello)) => hello,
        Ok(_) => {
            let e = WireError::new(ErrorCode::BadRequest, "the first request must be Hello");
            answer_and_close(conn, send, e).await;
            return None;
        }
        Err(e) => {
            bad_stream(limits, conn, send, recv, &e).await;
            close(conn, &WireError::new(ErrorCode::BadRequest, "the first request must be Hello"));
            return None;
        }
    };
    match negotiate(SUPPORTED, hello.versions) {
        Ok(version) => {
            let ack = Response::Hello(HelloAck { version, software: format!("drover {}", env!("CARGO_PKG_VERSION")) });
            write_frame(&mut send, &ack).await.ok()?;
            let _ = send.finish();
            Some(version)
        }
        Err(e) => {
            let detail = format!("client {} ({})", drover_protocol::text::printable(&hello.software, 120), e.message);
            limits.warnings.note(conn.remote_address().ip(), "version mismatches", &detail);
            answer_and_close(conn, send, e).await;
            None
        }
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

/// Who sent a stream, the protocol version agreed with it at Hello, and,
/// while the connection is anonymous, where an enrollment bound to it says
/// which machine it became.
struct Caller {
    peer: Peer,
    version: u16,
    became: Option<Arc<tokio::sync::watch::Sender<Option<String>>>>,
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
    let Caller { peer, version, became } = caller;
    let request = match Box::pin(budgets.read(&mut recv, &peer, version)).await {
        Ok(request) => request,
        Err(e) => return Box::pin(bad_stream(&limits, &conn, send, recv, &e)).await,
    };
    if let (Request::Agent(drover_protocol::v1::AgentRequest::Watch), Peer::Machine { id }) = (&request, &peer) {
        // The stream that lasts as long as the connection, one per agent:
        // its task holds the watch and nothing of the other requests.
        drop(request);
        agent::watch(&state, &conn, version, id, &mut send).await;
        return;
    }
    Box::pin(answer(state, limits, conn, Caller { peer, version, became }, request, send, recv)).await;
}

/// Answers one request (any but an agent's watch).
async fn answer(
    state: Arc<Coordinator>,
    limits: Arc<Limits>,
    conn: quinn::Connection,
    caller: Caller,
    request: Request,
    mut send: quinn::SendStream,
    recv: quinn::RecvStream,
) {
    let Caller { peer, version, became } = caller;
    let _recv = recv;
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
        (Request::Enroll(req), Peer::Anonymous) => Some(match Box::pin(enroll_here(&state, &conn, became.as_deref(), req)).await {
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

/// Enrolls on an anonymous connection. A CSR whose subject carries this
/// TLS session's binding ([`drover_net::identity::enrollment_binding`])
/// makes the connection the new machine's once the record is durable: the
/// CSR's signature, checked before anything is signed, shows that the
/// key's holder made it for this very session, so the connection is as
/// good as one made with the certificate. A binding of another session (a
/// CSR replayed from elsewhere) is refused; a CSR without one enrolls as
/// before, and the agent connects again with its certificate.
async fn enroll_here(
    state: &Coordinator,
    conn: &quinn::Connection,
    became: Option<&tokio::sync::watch::Sender<Option<String>>>,
    req: drover_protocol::v1::EnrollRequest,
) -> Result<drover_protocol::v1::IssuedCertificate, WireError> {
    let bound = drover_net::identity::csr_binding(&req.csr_der).map_err(|e| WireError::new(ErrorCode::BadCsr, e.to_string()))?;
    if let Some(bound) = &bound {
        if drover_net::identity::enrollment_binding(conn).as_deref() != Some(bound.as_str()) {
            return Err(WireError::new(ErrorCode::Unauthenticated, "the CSR is bound to another TLS session; make the CSR on the connection that sends it"));
        }
    }
    let issued = enroll::enroll(state, req).await?;
    if let (Some(_), Some(became)) = (bound, became) {
        // The first enrollment on a connection decides what it becomes.
        became.send_if_modified(|id| id.is_none() && id.replace(issued.subject.clone()).is_none());
    }
    Ok(issued)
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
