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
use drover_net::stream::{read_frame, write_frame, StreamError};
use drover_protocol::frame::{MAX_FRAME_LEN, MAX_UNAUTHENTICATED_FRAME_LEN};
use drover_protocol::v1::{HelloAck, Request, Response};
use drover_protocol::{negotiate, ErrorCode, WireError, SUPPORTED};

use crate::app::agent::{identify, is_revoked, Peer};
use crate::app::{admin, enroll, Coordinator};

use super::agent;

/// How long a connection without a certificate may stay open.
const ANONYMOUS_LIFETIME: Duration = Duration::from_secs(30);

fn max_frame(peer: &Peer) -> usize {
    match peer {
        Peer::Anonymous => MAX_UNAUTHENTICATED_FRAME_LEN,
        _ => MAX_FRAME_LEN,
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
    PeerCertificate::parse(leaf)
        .map(Some)
        .map_err(|_| WireError::new(ErrorCode::Unauthenticated, "client certificate carries no drover identity"))
}

pub(super) async fn handle(state: Arc<Coordinator>, incoming: quinn::Incoming) {
    let remote = incoming.remote_address();
    let conn = match incoming.await {
        Ok(conn) => conn,
        Err(e) => {
            tracing::debug!(%remote, error = %e, "handshake failed");
            return;
        }
    };
    let peer = match certificate(&conn).and_then(|cert| identify(&state, cert)) {
        Ok(peer) => peer,
        Err(e) => {
            tracing::info!(%remote, code = ?e.code, reason = %e.message, "connection refused");
            close(&conn, &e);
            return;
        }
    };
    let span = match &peer {
        Peer::Anonymous => tracing::info_span!("conn", %remote, peer = "anonymous"),
        Peer::Machine { id } => tracing::info_span!("conn", %remote, machine = %id),
        Peer::Admin { name } => tracing::info_span!("conn", %remote, admin = %name),
    };
    async move {
        if let Peer::Machine { id } = &peer {
            // Register before re-checking, so that a revocation racing with
            // this connection either sees it or is seen here.
            let closing = conn.clone();
            let closer: crate::app::live::Closer =
                Arc::new(move |code: ErrorCode, reason: &str| closing.close(code.as_u32().into(), reason.as_bytes()));
            state.live.register(id, conn.stable_id(), closer);
            if is_revoked(&state, id) {
                close(&conn, &WireError::new(ErrorCode::Revoked, format!("machine {id} was revoked")));
            }
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
        serve(&state, &conn, &peer).await;
        if let Peer::Machine { id } = &peer {
            state.live.unregister(id, conn.stable_id());
        }
        tracing::debug!(reason = ?conn.close_reason(), "disconnected");
    }
    .instrument(span)
    .await;
}

async fn serve(state: &Arc<Coordinator>, conn: &quinn::Connection, peer: &Peer) {
    // The first stream must carry Hello; it is handled before any other.
    let Ok((mut send, mut recv)) = conn.accept_bi().await else {
        return;
    };
    let hello = match read_frame::<Request>(&mut recv, max_frame(peer)).await {
        Ok(Request::Hello(hello)) => hello,
        Ok(_) => {
            let e = WireError::new(ErrorCode::BadRequest, "the first request must be Hello");
            return answer_and_close(conn, send, e).await;
        }
        Err(e) => {
            bad_stream(&BadStreams::default(), send, recv, &e).await;
            close(conn, &WireError::new(ErrorCode::BadRequest, "the first request must be Hello"));
            return;
        }
    };
    match negotiate(SUPPORTED, hello.versions) {
        Ok(version) => {
            let ack = Response::Hello(HelloAck {
                version,
                software: format!("drover {}", env!("CARGO_PKG_VERSION")),
            });
            if write_frame(&mut send, &ack).await.is_err() {
                return;
            }
            let _ = send.finish();
        }
        Err(e) => {
            tracing::info!(client = %hello.software, reason = %e.message, "version mismatch");
            return answer_and_close(conn, send, e).await;
        }
    }

    let bad = Arc::new(BadStreams::default());
    while let Ok((send, recv)) = conn.accept_bi().await {
        let state = state.clone();
        let peer = peer.clone();
        let conn = conn.clone();
        let bad = bad.clone();
        tokio::spawn(
            async move { handle_stream(state, conn, peer, &bad, send, recv).await }
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

/// How many warnings about bad streams the whole coordinator writes per
/// second; more are counted and named in the next one written.
const BAD_STREAM_WARNINGS_PER_SECOND: u64 = 5;

/// Bad streams from one connection: the first is a warning, the rest are
/// debug lines, so that a client cannot fill the log.
#[derive(Default)]
pub(super) struct BadStreams {
    seen: std::sync::atomic::AtomicU64,
}

/// The process-wide budget: (the second, warnings written in it, warnings
/// suppressed since the last one written).
static WARNING_BUDGET: std::sync::Mutex<(u64, u64, u64)> = std::sync::Mutex::new((0, 0, 0));

fn log_bad_stream(bad: &BadStreams, e: &StreamError) {
    let n = bad.seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    if n > 0 {
        tracing::debug!(error = %e, streams = n + 1, "unreadable request; closing the stream");
        return;
    }
    let second = crate::app::now_ms() / 1000;
    let mut budget = WARNING_BUDGET.lock().unwrap_or_else(|p| p.into_inner());
    if budget.0 != second {
        *budget = (second, 0, budget.2);
    }
    if budget.1 >= BAD_STREAM_WARNINGS_PER_SECOND {
        budget.2 += 1;
        return;
    }
    budget.1 += 1;
    let suppressed = std::mem::take(&mut budget.2);
    drop(budget);
    tracing::warn!(error = %e, suppressed, "unreadable request; closing the stream (later ones on this connection are logged at debug level)");
}

/// Answers a stream whose request could not be read, then closes it. The
/// connection and every other stream go on.
async fn bad_stream(bad: &BadStreams, mut send: quinn::SendStream, mut recv: quinn::RecvStream, e: &StreamError) {
    log_bad_stream(bad, e);
    let _ = recv.stop(ErrorCode::BadRequest.as_u32().into());
    let error = WireError::new(ErrorCode::BadRequest, format!("unreadable request: {e}"));
    let _ = write_frame(&mut send, &Response::Error(error)).await;
    let _ = send.finish();
}

async fn handle_stream(
    state: Arc<Coordinator>,
    conn: quinn::Connection,
    peer: Peer,
    bad: &BadStreams,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let request = match read_frame::<Request>(&mut recv, max_frame(&peer)).await {
        Ok(request) => request,
        Err(e) => return bad_stream(bad, send, recv, &e).await,
    };
    let denied = |code, msg: &str| Some(Response::Error(WireError::new(code, msg.to_string())));
    let answer = match (request, &peer) {
        (Request::Hello(_), _) => denied(ErrorCode::BadRequest, "Hello was already exchanged on this connection"),
        (Request::Enroll(req), Peer::Anonymous) => Some(match enroll::enroll(&state, req).await {
            Ok(issued) => Response::Enrolled(issued),
            Err(e) => Response::Error(e),
        }),
        (Request::Enroll(_), _) => denied(ErrorCode::BadRequest, "this connection already has an identity; enroll without a client certificate"),
        (Request::Agent(req), Peer::Machine { id }) => {
            agent::handle(&state, &conn, id, req, &mut send).await
        }
        (Request::Agent(_), Peer::Anonymous) => denied(ErrorCode::Unauthenticated, "this request needs a machine certificate; enroll first"),
        (Request::Agent(_), Peer::Admin { .. }) => denied(ErrorCode::PermissionDenied, "admin certificates cannot make agent requests"),
        (Request::Admin(req), Peer::Admin { name }) => Some(admin::handle(&state, name, req).await),
        (Request::Admin(_), Peer::Anonymous) => denied(ErrorCode::Unauthenticated, "this request needs an admin certificate"),
        (Request::Admin(_), Peer::Machine { .. }) => denied(ErrorCode::PermissionDenied, "machine certificates cannot make admin requests"),
    };
    if let Some(answer) = answer {
        if let Response::Error(e) = &answer {
            tracing::debug!(code = ?e.code, reason = %e.message, "request refused");
        }
        let _ = write_frame(&mut send, &answer).await;
        let _ = send.finish();
    }
}
