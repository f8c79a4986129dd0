//! The coordinator's HTTP/1.1 listeners (`/metrics`, the fleet page): one
//! accept loop over hyper, bounded since anyone who reaches the port can
//! connect. At most `connections` are open at once, and a request's headers
//! (over HTTPS, the TLS handshake too) must arrive within `header_timeout`.
//! When every place is taken, a new connection replaces the oldest one that
//! is not in the middle of a request — one still sending its headers first
//! — so slow or idle clients can neither use up the process's file
//! descriptors nor keep others out.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::task::{AbortHandle, JoinHandle};

/// What answers a request: the request and the peer's address.
pub type Answer = Arc<dyn Fn(Request<Incoming>, SocketAddr) -> Pin<Box<dyn Future<Output = Response<Body>> + Send>> + Send + Sync>;

/// How much a listener holds.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    pub connections: usize,
    pub header_timeout: Duration,
}

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

/// Serves `listener` until the task is aborted: over TLS when `tls` is
/// given, each request answered by `answer`.
pub fn spawn(listener: tokio::net::TcpListener, bounds: Bounds, tls: Option<tokio_rustls::TlsAcceptor>, what: &'static str, answer: Answer) -> JoinHandle<()> {
    tokio::spawn(async move {
        let slots = Arc::new(Mutex::new(Slots::default()));
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, most likely: wait for some
                    // to be released rather than spin.
                    tracing::warn!(error = %e, "the {what} endpoint could not accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let mut open = lock(&slots);
            if !open.make_room(bounds.connections) {
                continue;
            }
            let id = open.next;
            open.next += 1;
            let served = Arc::new(AtomicBool::new(false));
            let busy = Arc::new(AtomicUsize::new(0));
            let (answer, slots_of_task, served_by, busy_by, tls) = (answer.clone(), slots.clone(), served.clone(), busy.clone(), tls.clone());
            let connection = tokio::spawn(async move {
                match tls {
                    None => serve_io(TokioIo::new(stream), peer, bounds, answer, served_by, busy_by).await,
                    Some(acceptor) => {
                        // The handshake is bounded like the headers.
                        if let Ok(Ok(stream)) = tokio::time::timeout(bounds.header_timeout, acceptor.accept(stream)).await {
                            serve_io(TokioIo::new(stream), peer, bounds, answer, served_by, busy_by).await;
                        }
                    }
                }
                lock(&slots_of_task).open.remove(&id);
            });
            open.open.insert(id, Slot { opened: Instant::now(), served, busy, task: connection.abort_handle() });
        }
    })
}

async fn serve_io<I>(io: TokioIo<I>, peer: SocketAddr, bounds: Bounds, answer: Answer, served: Arc<AtomicBool>, busy: Arc<AtomicUsize>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |request| {
        served.store(true, Ordering::Relaxed);
        busy.fetch_add(1, Ordering::Relaxed);
        let (answer, busy) = (answer.clone(), busy.clone());
        async move {
            let answered = answer(request, peer).await;
            busy.fetch_sub(1, Ordering::Relaxed);
            Ok::<_, Infallible>(answered)
        }
    });
    let _ = hyper::server::conn::http1::Builder::new().timer(TokioTimer::new()).header_read_timeout(bounds.header_timeout).serve_connection(io, service).await;
}
