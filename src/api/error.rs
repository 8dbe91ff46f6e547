//! API errors: a status and a message for the operator, sent as
//! `{ "error": "…" }`. 4xx say what the caller must change; 5xx say which
//! dependency failed (503 when it is unreachable, so a caller may retry).

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::config::ConfigError;
use crate::migrations::PlanError;
use crate::release::approval::ApprovalError;
use crate::snapshot::SnapshotError;
use crate::state::StateError;
use crate::store::StoreError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError { status, message: message.into() }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn unprocessable(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, message)
    }

    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, message)
    }

    fn internal(message: impl Into<String>) -> ApiError {
        let e = ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, message);
        tracing::error!(error = %e.message, "An API request failed.");
        e
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.status, Json(serde_json::json!({ "error": self.message }))).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"pgrehearse\""));
        }
        r
    }
}

impl From<ConfigError> for ApiError {
    fn from(e: ConfigError) -> ApiError {
        match e {
            ConfigError::UnknownTarget { .. } => ApiError::not_found(e.to_string()),
            ConfigError::AmbiguousTarget { .. } => ApiError::bad_request(e.to_string()),
            other => ApiError::internal(other.to_string()),
        }
    }
}

impl From<StateError> for ApiError {
    fn from(e: StateError) -> ApiError {
        ApiError::internal(format!("the state store failed: {e}"))
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        if e.is_unavailable() {
            ApiError::unavailable(format!("the snapshot store is unreachable: {e}"))
        } else {
            ApiError::internal(format!("the snapshot store failed: {e}"))
        }
    }
}

impl From<PlanError> for ApiError {
    fn from(e: PlanError) -> ApiError {
        match e {
            PlanError::Pg(p) if p.is_unavailable() => ApiError::unavailable(p.to_string()),
            PlanError::State(s) => s.into(),
            other => ApiError::internal(other.to_string()),
        }
    }
}

impl From<SnapshotError> for ApiError {
    fn from(e: SnapshotError) -> ApiError {
        match e {
            SnapshotError::Store(s) => s.into(),
            SnapshotError::State(s) => s.into(),
            other => ApiError::internal(other.to_string()),
        }
    }
}

impl From<ApprovalError> for ApiError {
    fn from(e: ApprovalError) -> ApiError {
        use ApprovalError as A;
        match e {
            A::BadHash { .. } => ApiError::unprocessable(e.to_string()),
            A::Plan(p) => p.into(),
            A::State(s) => s.into(),
            A::Snapshot(s) => s.into(),
            // Refusals: the request is well-formed but the evidence does not
            // allow it (not rehearsed, not passed, not current, too old …).
            _ => ApiError::new(StatusCode::CONFLICT, e.to_string()),
        }
    }
}
