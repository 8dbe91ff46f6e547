//! `POST /api/v1/approvals`: approves a rehearsed plan, as `pgrehearse
//! approve` does (the same job through the job runner: an interrupted
//! release of the target is finished first, the outcome is reported; the
//! same refusals), for the status page's Approve button and for CI.
//!
//! Body: `{ "target": "app", "plan": "<hash or ≥12-hex prefix>", "by":
//! "name", "note": "…" }` (`target` may be left out when the config has
//! one target). Checked in this order, each with its own status: the
//! bearer token (401 none, 403 wrong or none configured), the body (415 not
//! JSON, 400 malformed, 422 missing or invalid fields), the target (404),
//! then the approval itself (409 refused, with the reason); 201 with the
//! approval on success.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, State};
use axum::http::{Extensions, HeaderMap, StatusCode, header};
use serde::Deserialize;

use tokio_util::sync::CancellationToken;

use super::Shared;
use super::conn::Peer;
use super::{ApiError, auth};
use crate::config::Config;
use crate::jobs::{self, Job, Reporter};
use crate::release::approval::Approved;

/// How long an approval may take (it reads live's history once).
const TIMEOUT: Duration = Duration::from_secs(15);
const MAX_BY: usize = 200;
const MAX_NOTE: usize = 2000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Request {
    target: Option<String>,
    plan: String,
    by: String,
    note: Option<String>,
}

pub async fn create(
    State(s): State<Arc<Shared>>,
    extensions: Extensions,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Approved>), ApiError> {
    let cfg = s.config();
    let peer = extensions.get::<ConnectInfo<Peer>>().map(|ConnectInfo(Peer(a))| a.to_string()).unwrap_or_default();
    if let Err(denied) = auth::check(&headers, cfg.api.as_ref().and_then(|a| a.token.as_ref())) {
        tracing::warn!(peer = %peer, reason = denied.kind(), "Refused an approval request: not authorized.");
        return Err(denied.into());
    }
    let req = parse(&headers, body)?;
    let target = cfg.target(req.target.as_deref())?.name.clone();
    let reporter = s.reporter(&cfg);
    let job = Job::Approve { plan: req.plan, by: Some(req.by), note: req.note };
    let a = approve(cfg, reporter, target, job).await?;
    tracing::info!(peer = %peer, target = %a.target, approval = %a.approval_id, by = %a.approved_by, "Plan approved through the API.");
    Ok((StatusCode::CREATED, Json(a)))
}

/// Runs the approval `job` of `target` through the job runner on a thread
/// of its own (the runner's future is not `Send`), in an environment built
/// for it. The approval is given up after [`TIMEOUT`] (an interrupted
/// release the runner finishes first is not).
async fn approve(cfg: Arc<Config>, reporter: Reporter, target: String, job: Job) -> Result<Approved, ApiError> {
    let cancel = CancellationToken::new();
    let deadline = {
        let cancel = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(TIMEOUT).await;
            cancel.cancel();
        })
    };
    let ran = jobs::on_thread(format!("approve-{target}"), move || async move {
        let done = async {
            let env = jobs::Env::open(cfg, reporter, cancel, crate::progress::Mode::Logs).await?;
            let t = env.config.target(Some(&target))?;
            jobs::run(&env, t, job).await
        };
        match done.await {
            Ok(jobs::Done::Approved(a)) => Ok(a),
            Ok(other) => Err(ApiError::internal(format!("the approval job ended with {other:?}, not an approval"))),
            Err(e) if jobs::is_cancelled(&e) => Err(ApiError::unavailable(format!(
                "live did not answer within {} s while reading its migration history; nothing was approved, try again",
                TIMEOUT.as_secs()
            ))),
            Err(e) => Err(ApiError::of_job(&e)),
        }
    })
    .await;
    deadline.abort();
    ran.map_err(|e| ApiError::internal(e.to_string()))?
}

/// The body as a [`Request`], with a message a person can act on.
fn parse(headers: &HeaderMap, body: Result<Bytes, BytesRejection>) -> Result<Request, ApiError> {
    let ctype = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let essence = ctype.split(';').next().unwrap_or("").trim();
    if !essence.is_empty() && !essence.eq_ignore_ascii_case("application/json") {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("the body must be JSON (Content-Type: application/json), not {essence}"),
        ));
    }
    let body = body.map_err(|e| ApiError::new(e.status(), e.body_text()))?;
    let example = r#"{"target": "app", "plan": "<plan hash>", "by": "<your name>", "note": "<optional>"}"#;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request(format!("the body is empty; send a JSON object such as {example}")));
    }
    let req: Request = serde_json::from_slice(&body).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => {
            ApiError::unprocessable(format!("invalid approval request: {e}; expected {example}"))
        }
        _ => ApiError::bad_request(format!("malformed JSON: {e}")),
    })?;
    let by = req.by.trim();
    if by.is_empty() {
        return Err(ApiError::unprocessable("`by` is empty: name the person (or CI job) who approves"));
    }
    if by.chars().count() > MAX_BY || by.chars().any(char::is_control) {
        return Err(ApiError::unprocessable(format!(
            "`by` must be a name of at most {MAX_BY} characters, without control characters"
        )));
    }
    if req.note.as_deref().is_some_and(|n| n.chars().count() > MAX_NOTE) {
        return Err(ApiError::unprocessable(format!("`note` is longer than {MAX_NOTE} characters")));
    }
    Ok(Request { by: by.to_string(), note: req.note.filter(|n| !n.trim().is_empty()), ..req })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json_headers() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
        h
    }

    fn parsed(body: &str) -> Result<Request, ApiError> {
        parse(&json_headers(), Ok(Bytes::from(body.to_string())))
    }

    #[test]
    fn bodies_are_validated_with_statuses_that_say_what_is_wrong() {
        let ok = parsed(r#"{"plan": "abcdef012345", "by": " alice ", "note": ""}"#).unwrap();
        assert_eq!((ok.by.as_str(), ok.note, ok.target), ("alice", None, None));
        let e = parsed(r#"{"plan": "abc", "by": "#).unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert!(e.message.starts_with("malformed JSON: "), "{}", e.message);
        assert_eq!(parsed("  ").unwrap_err().status, StatusCode::BAD_REQUEST);
        let e = parsed(r#"{"plan": "abcdef012345"}"#).unwrap_err();
        assert_eq!(e.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(e.message.contains("missing field `by`"), "{}", e.message);
        assert_eq!(
            parsed(r#"{"plan": "x", "by": "a", "extra": 1}"#).unwrap_err().status,
            StatusCode::UNPROCESSABLE_ENTITY
        );
        assert_eq!(parsed(r#"{"plan": "x", "by": "  "}"#).unwrap_err().status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(parsed(r#"["plan"]"#).unwrap_err().status, StatusCode::UNPROCESSABLE_ENTITY);
        let mut form = HeaderMap::new();
        form.insert(header::CONTENT_TYPE, "application/x-www-form-urlencoded".parse().unwrap());
        let e = parse(&form, Ok(Bytes::from_static(b"plan=x"))).unwrap_err();
        assert_eq!(e.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    }
}
