//! The Prometheus endpoint: plain HTTP on `metrics_listen`, one route,
//! `GET /metrics`, answered with what `app::metrics` renders.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use tokio::task::JoinHandle;

use crate::app::Coordinator;

/// The exposition format `prometheus-client` writes.
const CONTENT: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Binds `addr` and serves `/metrics` until the task is aborted.
pub async fn serve(state: Arc<Coordinator>, addr: SocketAddr) -> Result<(SocketAddr, JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot listen for metrics on {addr} (metrics_listen)"))?;
    let local = listener.local_addr()?;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let state = state.clone();
            async move {
                // The gauges read the store: off the async workers.
                match tokio::task::spawn_blocking(move || state.metrics.render(&state)).await {
                    Ok(text) => ([(CONTENT_TYPE, CONTENT)], text).into_response(),
                    Err(_) => axum::http::StatusCode::INTERNAL_SERVER_ERROR.into_response(),
                }
            }
        }),
    );
    tracing::info!(%local, "metrics served at /metrics");
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(error = %e, "the metrics endpoint stopped");
        }
    });
    Ok((local, task))
}
