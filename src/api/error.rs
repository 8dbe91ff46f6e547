//! API errors: a status and a message for the operator, sent as
//! `{ "error": "…" }`. 4xx say what the caller must change; 5xx say which
//! dependency failed (503 when it is unreachable, so a caller may retry).
//! A domain error's status follows from its class ([`Classify`]).

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::config::ConfigError;
use crate::error_class::{Class, Classify};
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

    pub fn internal(message: impl Into<String>) -> ApiError {
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

/// The status of a domain error of `class`: 4xx for what the caller can
/// change (422 for a request that cannot be, 409 for one the evidence does
/// not allow now), 503 when a dependency is unreachable (retry), else 500.
fn status_of(class: Class) -> StatusCode {
    match class {
        Class::Usage => StatusCode::UNPROCESSABLE_ENTITY,
        Class::Refused => StatusCode::CONFLICT,
        Class::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Class::Configuration | Class::Problems | Class::Failed => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl ApiError {
    /// A domain error as an answer, with the status its class says.
    pub fn classified(e: &(impl Classify + std::fmt::Display)) -> ApiError {
        ApiError::of_class(e.class(), e.to_string())
    }

    /// A job's error (from the job runner) as an answer, with the status of
    /// the first domain error in its chain (500 when it holds none).
    pub fn of_job(e: &anyhow::Error) -> ApiError {
        let class = e.chain().find_map(crate::jobs::classified).map_or(Class::Failed, |c| c.class());
        ApiError::of_class(class, e.to_string())
    }

    fn of_class(class: Class, message: String) -> ApiError {
        match status_of(class) {
            StatusCode::INTERNAL_SERVER_ERROR => ApiError::internal(message),
            status => ApiError::new(status, message),
        }
    }
}

/// `?` on the domain errors the handlers meet.
macro_rules! classified {
    ($($t:ty),* $(,)?) => {
        $(impl From<$t> for ApiError {
            fn from(e: $t) -> ApiError {
                ApiError::classified(&e)
            }
        })*
    };
}

classified!(StateError, StoreError, PlanError, SnapshotError, ApprovalError);

/// The target a request names is the resource it asks for: an unknown one
/// is a 404 and a missing choice a 400, not the configuration error they
/// are on the command line.
impl From<ConfigError> for ApiError {
    fn from(e: ConfigError) -> ApiError {
        match e {
            ConfigError::UnknownTarget { .. } => ApiError::not_found(e.to_string()),
            ConfigError::AmbiguousTarget { .. } => ApiError::bad_request(e.to_string()),
            ConfigError::Read { .. } | ConfigError::Invalid { .. } => ApiError::classified(&e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_class_has_a_status() {
        let statuses: Vec<u16> = Class::ALL.iter().map(|c| status_of(*c).as_u16()).collect();
        assert_eq!(statuses, [422, 409, 503, 500, 500, 500]);
    }

    #[test]
    fn domain_errors_answer_with_their_class_status() {
        let hash: ApiError = ApprovalError::BadHash { given: "latest".into() }.into();
        assert_eq!(hash.status, StatusCode::UNPROCESSABLE_ENTITY);
        let refused: ApiError = ApprovalError::NotRehearsed { plan: "abc".into() }.into();
        assert_eq!(refused.status, StatusCode::CONFLICT);
        let down: ApiError = SnapshotError::Store(StoreError::Unavailable("connection refused".into())).into();
        assert_eq!(down.status, StatusCode::SERVICE_UNAVAILABLE);
        let unknown: ApiError = ConfigError::UnknownTarget { name: "nope".into(), known: "app".into() }.into();
        assert_eq!(unknown.status, StatusCode::NOT_FOUND);
        let ambiguous: ApiError = ConfigError::AmbiguousTarget { count: 2, known: "a, b".into() }.into();
        assert_eq!(ambiguous.status, StatusCode::BAD_REQUEST);
    }
}
