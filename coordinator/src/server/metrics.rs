//! The Prometheus endpoint: plain HTTP/1.1 on `metrics_listen` (hyper),
//! one route, `GET /metrics`, answered with what `app::metrics` renders.
//!
//! Bounded, since anyone who reaches the port can connect: at most
//! `limits.metrics_connections` connections at once, and a request's
//! headers must arrive within `limits.metrics_header_timeout`. When every
//! place is taken, a new connection replaces the oldest one that is not in
//! the middle of a request — one still sending its headers first — so slow
//! or idle clients can neither use up the process's file descriptors nor
//! keep a scraper out.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::CONTENT_TYPE;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::task::{AbortHandle, JoinHandle};

use crate::app::Coordinator;

/// The exposition format `prometheus-client` writes.
const CONTENT: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// One open connection, as admission sees it.
struct Slot {
    opened: Instant,
    /// Whether a whole request has arrived on it (a client still sending
    /// its first headers is replaced first).
    served: Arc<AtomicBool>,
    /// Requests being answered on it now (such a connection is never
    /// replaced).
    busy: Arc<AtomicUsize>,
    task: AbortHandle,
}

/// The open connections, by a counter.
#[derive(Default)]
struct Slots {
    next: u64,
    open: BTreeMap<u64, Slot>,
}

impl Slots {
    /// Makes room for one more when `cap` are open: ends the connection
    /// least worth keeping. Returns false when every one is answering.
    fn make_room(&mut self, cap: usize) -> bool {
        if self.open.len() < cap {
            return true;
        }
        let victim = self
            .open
            .iter()
            .filter(|(_, s)| s.busy.load(Ordering::Relaxed) == 0)
            .min_by_key(|(_, s)| (s.served.load(Ordering::Relaxed), s.opened))
            .map(|(id, _)| *id);
        match victim.and_then(|id| self.open.remove(&id)) {
            Some(slot) => {
                slot.task.abort();
                true
            }
            None => false,
        }
    }
}

fn lock(slots: &Mutex<Slots>) -> std::sync::MutexGuard<'_, Slots> {
    slots.lock().unwrap_or_else(|p| p.into_inner())
}

async fn answer(state: Arc<Coordinator>, request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let reply = |status: StatusCode, text: &'static str| {
        let mut r = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
        *r.status_mut() = status;
        r
    };
    if request.uri().path() != "/metrics" {
        return Ok(reply(StatusCode::NOT_FOUND, "only /metrics is served here\n"));
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return Ok(reply(StatusCode::METHOD_NOT_ALLOWED, "use GET\n"));
    }
    // The gauges read the store: off the async workers.
    Ok(match tokio::task::spawn_blocking(move || state.metrics.render(&state)).await {
        Ok(text) => {
            let mut r = Response::new(Full::new(Bytes::from(text)));
            r.headers_mut().insert(CONTENT_TYPE, hyper::header::HeaderValue::from_static(CONTENT));
            r
        }
        Err(_) => reply(StatusCode::INTERNAL_SERVER_ERROR, "rendering the metrics failed\n"),
    })
}

/// Binds `addr` and serves `/metrics` until the task is aborted.
pub async fn serve(state: Arc<Coordinator>, addr: SocketAddr) -> Result<(SocketAddr, JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot listen for metrics on {addr} (metrics_listen)"))?;
    let local = listener.local_addr()?;
    let cap = state.config.limits.metrics_connections;
    let header_timeout = state.config.limits.metrics_header_timeout;
    tracing::info!(%local, "metrics served at /metrics");
    let task = tokio::spawn(async move {
        let slots = Arc::new(Mutex::new(Slots::default()));
        loop {
            let (stream, _peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, most likely: wait for some
                    // to be released rather than spin.
                    tracing::warn!(error = %e, "the metrics endpoint could not accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let mut open = lock(&slots);
            if !open.make_room(cap) {
                continue;
            }
            let id = open.next;
            open.next += 1;
            let served = Arc::new(AtomicBool::new(false));
            let busy = Arc::new(AtomicUsize::new(0));
            let (state, slots_of_task, served_by, busy_by) = (state.clone(), slots.clone(), served.clone(), busy.clone());
            let connection = tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    served_by.store(true, Ordering::Relaxed);
                    busy_by.fetch_add(1, Ordering::Relaxed);
                    let (state, busy) = (state.clone(), busy_by.clone());
                    async move {
                        let answered = answer(state, request).await;
                        busy.fetch_sub(1, Ordering::Relaxed);
                        answered
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(header_timeout)
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
                lock(&slots_of_task).open.remove(&id);
            });
            open.open.insert(id, Slot { opened: Instant::now(), served, busy, task: connection.abort_handle() });
        }
    });
    Ok((local, task))
}
