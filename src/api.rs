//! The HTTP API (axum): `/healthz`, `/metrics` (Prometheus text), the
//! `/api/v1/…` resources and the status page at `/`. Handlers read the
//! state store and the object store; none waits for a running job.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio_util::sync::CancellationToken;

use crate::daemon::Shared;

/// Serves until `cancel` fires (then finishes the requests in flight).
pub async fn serve(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router(shared)).with_graceful_shutdown(async move { cancel.cancelled().await }).await
}

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new().route("/healthz", get(healthz)).route("/metrics", get(metrics)).with_state(shared)
}

async fn healthz(State(s): State<Arc<Shared>>) -> impl IntoResponse {
    axum::Json(serde_json::json!({
        "ok": true,
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": s.started.elapsed().as_secs(),
        "running": s.running().iter().map(|(t, j)| serde_json::json!({"target": t, "job": j})).collect::<Vec<_>>(),
    }))
}

async fn metrics(State(s): State<Arc<Shared>>) -> impl IntoResponse {
    s.metrics.set(
        "pgrehearse_uptime_seconds",
        "Seconds since the daemon started.",
        &[],
        s.started.elapsed().as_secs_f64(),
    );
    (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], s.metrics.render())
}
