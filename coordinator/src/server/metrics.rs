//! The Prometheus endpoint: plain HTTP/1.1 on `metrics_listen` (hyper,
//! bounded by [`super::http`]: `limits.metrics_connections` connections,
//! `limits.metrics_header_timeout` for a request's headers), one route,
//! `GET /metrics`, answered with what `app::metrics` renders.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use axum::body::Body;
use hyper::body::Incoming;
use hyper::header::CONTENT_TYPE;
use hyper::{Method, Request, Response, StatusCode};
use tokio::task::JoinHandle;

use super::http;
use crate::app::Coordinator;

/// The exposition format `prometheus-client` writes.
const CONTENT: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

async fn answer(state: Arc<Coordinator>, request: Request<Incoming>) -> Response<Body> {
    let reply = |status: StatusCode, text: &'static str| {
        let mut r = Response::new(Body::from(text));
        *r.status_mut() = status;
        r
    };
    if request.uri().path() != "/metrics" {
        return reply(StatusCode::NOT_FOUND, "only /metrics is served here\n");
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return reply(StatusCode::METHOD_NOT_ALLOWED, "use GET\n");
    }
    // The gauges read the store: off the async workers.
    match tokio::task::spawn_blocking(move || state.metrics.render(&state)).await {
        Ok(text) => {
            let mut r = Response::new(Body::from(text));
            r.headers_mut().insert(CONTENT_TYPE, hyper::header::HeaderValue::from_static(CONTENT));
            r
        }
        Err(_) => reply(StatusCode::INTERNAL_SERVER_ERROR, "rendering the metrics failed\n"),
    }
}

/// Binds `addr` and serves `/metrics` until the task is aborted.
pub async fn serve(state: Arc<Coordinator>, addr: SocketAddr) -> Result<(SocketAddr, JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot listen for metrics on {addr} (metrics_listen)"))?;
    let local = listener.local_addr()?;
    let bounds = http::Bounds { connections: state.config.limits.metrics_connections, header_timeout: state.config.limits.metrics_header_timeout };
    tracing::info!(%local, "metrics served at /metrics");
    let answer: http::Answer = Arc::new(move |request, _peer| Box::pin(answer(state.clone(), request)));
    Ok((local, http::spawn(listener, bounds, None, "metrics", answer)))
}
