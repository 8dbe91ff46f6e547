//! The read-only resources of `/api/v1`: targets (where each stands),
//! snapshots (with their restore drills), rehearsal reports and releases
//! (record and journal). They read the daemon's state store and the object
//! store (opened per request, with a timeout) only; live is read for the
//! pending plan, with a timeout.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use serde::Deserialize;

use super::ApiError;
use super::Shared;
use super::overview::{self, SnapshotView, TargetSummary};
use crate::config::Config;
use crate::release::Release;

/// `GET /api/v1/targets`: every target's summary.
pub async fn targets(State(s): State<Arc<Shared>>) -> Result<Json<Vec<TargetSummary>>, ApiError> {
    let cfg = s.config();
    Ok(Json(all(s.as_ref(), &cfg, false).await?.into_iter().map(|o| o.summary).collect()))
}

/// Every target's overview, gathered side by side (one slow live server
/// does not add up with another).
pub async fn all(s: &Shared, cfg: &Config, detail: bool) -> Result<Vec<overview::Overview>, ApiError> {
    let state = s.state();
    let store = overview::open_store(cfg).await;
    let store = store.as_ref().map(|b| b.as_ref()).map_err(|e| e.message.as_str());
    let running = s.running();
    let jobs = cfg.targets.iter().map(|t| {
        let job = running.iter().find(|(name, _)| *name == t.name).map(|(_, j)| *j);
        overview::gather(&state, store, t, job, detail)
    });
    futures::future::join_all(jobs).await.into_iter().collect()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotsQuery {
    target: Option<String>,
}

/// `GET /api/v1/snapshots?target=NAME`: newest first, with each one's
/// latest restore drill (`verified_at`, `restore_duration_ms`). The target
/// may be left out when the config has only one.
pub async fn snapshots(
    State(s): State<Arc<Shared>>,
    query: Result<Query<SnapshotsQuery>, QueryRejection>,
) -> Result<Json<Vec<SnapshotView>>, ApiError> {
    let Query(q) =
        query.map_err(|e| ApiError::bad_request(format!("{}; the only parameter is ?target=NAME", e.body_text())))?;
    let cfg = s.config();
    let target = cfg.target(q.target.as_deref())?;
    let store = overview::open_store(&cfg).await?;
    Ok(Json(overview::snapshots(store.as_ref(), &target.name).await?))
}

/// `GET /api/v1/rehearsals/{id}`: the stored JSON report. A rehearsal
/// still running, or one that could not run, has no report: then its
/// record (status, error) is returned instead.
pub async fn rehearsal(
    State(s): State<Arc<Shared>>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let id = path_id(id)?;
    let state = s.state();
    let rec = state.rehearsal_record(&id).await?.ok_or_else(|| {
        ApiError::not_found(format!(
            "rehearsal `{id}` does not exist; GET /api/v1/targets shows each target's latest rehearsal"
        ))
    })?;
    match rec.report {
        Some(report) => Ok(Json(report)),
        None => Ok(Json(serde_json::to_value(&rec).expect("a rehearsal record serializes"))),
    }
}

/// `GET /api/v1/releases/{id}`: the release record and its journal, as
/// `pgrehearse --json releases ID` prints them.
pub async fn release(
    State(s): State<Arc<Shared>>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<Release>, ApiError> {
    let id = path_id(id)?;
    let state = s.state();
    let record = state.release(&id).await?.ok_or_else(|| {
        ApiError::not_found(format!(
            "release `{id}` does not exist; GET /api/v1/targets shows each target's latest release"
        ))
    })?;
    let journal = state.journal(&record.id).await?;
    let mut rel = Release::new(record, journal, false);
    rel.watch = state.watch(&rel.record.id).await?.map(|w| crate::release::watch_view(&w));
    Ok(Json(rel))
}

/// The `{id}` of a path, or a JSON 400 like every other API error (axum's
/// own rejection is plain text), e.g. for percent-encoded bytes that are not
/// UTF-8.
fn path_id(id: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    id.map(|Path(id)| id)
        .map_err(|e| ApiError::bad_request(format!("{}; ids are the ones GET /api/v1/targets shows", e.body_text())))
}
