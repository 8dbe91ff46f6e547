//! The bearer token that guards the API's write endpoints: the contents of
//! `[api] token_file`. Compared in constant time (over SHA-256 digests, so
//! neither the content nor the length of the token leaks through timing);
//! never logged. Without a configured token the write endpoints are off.

use axum::http::{HeaderMap, StatusCode, header};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::ApiError;
use crate::config::Secret;

/// Why a request may not write. The messages name no token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// `[api] token_file` is not set: writes are disabled.
    NotConfigured,
    /// No `Authorization: Bearer …` header.
    Missing,
    Wrong,
}

impl Denied {
    /// A bounded label for logs.
    pub fn kind(self) -> &'static str {
        match self {
            Denied::NotConfigured => "not_configured",
            Denied::Missing => "missing",
            Denied::Wrong => "wrong",
        }
    }
}

impl From<Denied> for ApiError {
    fn from(d: Denied) -> ApiError {
        match d {
            Denied::NotConfigured => ApiError::new(
                StatusCode::FORBIDDEN,
                "write endpoints are disabled: no API token is configured; set [api] token_file to a file holding a token (chmod 600) and reload the daemon",
            ),
            Denied::Missing => ApiError::new(
                StatusCode::UNAUTHORIZED,
                "authentication required: send the header `Authorization: Bearer <token>` with the token from [api] token_file",
            ),
            Denied::Wrong => {
                ApiError::new(StatusCode::FORBIDDEN, "the API token is wrong; use the token from [api] token_file")
            }
        }
    }
}

/// Checks the request's bearer token against `expected`.
pub fn check(headers: &HeaderMap, expected: Option<&Secret>) -> Result<(), Denied> {
    let Some(expected) = expected else { return Err(Denied::NotConfigured) };
    let given = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(bearer);
    match given {
        None => Err(Denied::Missing),
        Some(t) if same(t, expected.expose()) => Ok(()),
        Some(_) => Err(Denied::Wrong),
    }
}

/// The credentials of a `Bearer` authorization value (scheme is
/// case-insensitive, RFC 9110 §11.1).
fn bearer(value: &str) -> Option<&str> {
    let (scheme, rest) = value.trim().split_once(' ')?;
    let token = rest.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

fn same(given: &str, expected: &str) -> bool {
    let (a, b) = (Sha256::digest(given.as_bytes()), Sha256::digest(expected.as_bytes()));
    a.ct_eq(&b).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(auth: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(a) = auth {
            h.insert(header::AUTHORIZATION, HeaderValue::from_str(a).unwrap());
        }
        h
    }

    #[test]
    fn bearer_tokens_are_checked() {
        let token = Secret::new("s3cret-token");
        assert_eq!(check(&headers(Some("Bearer s3cret-token")), Some(&token)), Ok(()));
        assert_eq!(check(&headers(Some("bearer   s3cret-token ")), Some(&token)), Ok(()));
        assert_eq!(check(&headers(None), Some(&token)), Err(Denied::Missing));
        assert_eq!(check(&headers(Some("Basic czNjcmV0")), Some(&token)), Err(Denied::Missing));
        assert_eq!(check(&headers(Some("Bearer ")), Some(&token)), Err(Denied::Missing));
        assert_eq!(check(&headers(Some("Bearer s3cret-tokeN")), Some(&token)), Err(Denied::Wrong));
        assert_eq!(check(&headers(Some("Bearer s3cret")), Some(&token)), Err(Denied::Wrong));
        assert_eq!(check(&headers(Some("Bearer s3cret-token")), None), Err(Denied::NotConfigured));
    }
}
