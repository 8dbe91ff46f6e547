//! The HTTP API (axum): `/healthz`, `/metrics` (Prometheus text), the
//! `/api/v1/…` resources (`resources.rs`), approvals (`approvals.rs`, the
//! only write, behind the bearer token of `[api] token_file`, `auth.rs`)
//! and the status page at `/` (`page.rs`). Connections of slow or idle
//! clients are timed out (`conn.rs`).
//!
//! Handlers read the state store and the object store, and read live's
//! migration history with a short timeout (`overview.rs`); none waits for a
//! running job. Errors are JSON `{ "error": "…" }` with a 4xx status that
//! says whose fault it is (`error.rs`).

mod approvals;
mod auth;
mod conn;
mod error;
mod overview;
mod page;
mod resources;

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::metrics::Metrics;
pub use error::ApiError;

/// The daemon as the API sees it: the configuration in force, its state
/// store, the jobs running, since when it runs, its metrics, how it reports
/// a job. The daemon implements this and hands itself to [`serve`]; the API
/// never imports the daemon.
pub trait Daemon: Send + Sync + 'static {
    /// The configuration in force (replaced as a whole on reload).
    fn config(&self) -> Arc<Config>;
    /// The state store of the configuration in force (opened by the daemon).
    fn state(&self) -> crate::state::State;
    /// The reporter of a job the API runs for `config` (mail and metrics as
    /// the daemon's; an error is the request's answer, not an alert).
    fn reporter(&self, config: &Config) -> crate::jobs::Reporter;
    /// Jobs running now, as (target, job name).
    fn running(&self) -> Vec<(String, &'static str)>;
    /// When the daemon started.
    fn started(&self) -> std::time::Instant;
    fn metrics(&self) -> &Metrics;
}

/// The handlers' state: the daemon behind its trait.
pub type Shared = dyn Daemon;

/// Serves until `cancel` fires (then finishes the requests in flight).
pub async fn serve(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    // The peer address is kept for the log line of a refused approval; slow
    // clients are timed out by the listener's streams (`conn.rs`).
    let app = router(shared).into_make_service_with_connect_info::<conn::Peer>();
    axum::serve(conn::GuardedListener(listener), app)
        .with_graceful_shutdown(async move { cancel.cancelled().await })
        .await
}

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/", get(page::index))
        .route(page::SCRIPT_PATH, get(page::script))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/api/v1/targets", get(resources::targets))
        .route("/api/v1/snapshots", get(resources::snapshots))
        .route("/api/v1/rehearsals/{id}", get(resources::rehearsal))
        .route("/api/v1/releases/{id}", get(resources::release))
        .route("/api/v1/approvals", post(approvals::create))
        .fallback(not_found)
        .layer(axum::middleware::from_fn(conn::deadline))
        .with_state(shared)
}

async fn healthz(State(s): State<Arc<Shared>>) -> impl IntoResponse {
    axum::Json(serde_json::json!({
        "ok": true,
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": s.started().elapsed().as_secs(),
        "running": s.running().iter().map(|(t, j)| serde_json::json!({"target": t, "job": j})).collect::<Vec<_>>(),
    }))
}

async fn metrics(State(s): State<Arc<Shared>>) -> impl IntoResponse {
    s.metrics().set(
        "pgrehearse_uptime_seconds",
        "Seconds since the daemon started.",
        &[],
        s.started().elapsed().as_secs_f64(),
    );
    (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], s.metrics().render())
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!(
        "no such resource: {}; the API has /api/v1/targets, /api/v1/snapshots, /api/v1/rehearsals/ID, /api/v1/releases/ID, POST /api/v1/approvals",
        uri.path()
    ))
}
