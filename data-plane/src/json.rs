//! Reading JSON bodies by hand (handlers that also hash the raw body for idempotency),
//! with the same envelope errors as `AppJson`.

use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode, header};
use quiver_common::ApiError;
use serde::de::DeserializeOwned;

/// Parses a JSON body; a content type other than JSON, or a body that does not parse
/// into `T`, is a `VALIDATION_ERROR` that says what was wrong.
pub fn parse_body<T: DeserializeOwned>(headers: &HeaderMap, body: &[u8]) -> Result<T, ApiError> {
    if let Some(content_type) = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok())
        && !content_type.starts_with("application/json")
        && !content_type.contains("+json")
    {
        return Err(ApiError::validation(format!(
            "the request body must be JSON: send content-type: application/json, not {content_type}"
        )));
    }
    // serde would read a struct from an array of its fields in order; only objects are bodies.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{')
        && let Ok(value) = serde_json::from_slice::<serde_json::Value>(body)
    {
        return Err(ApiError::validation(format!(
            "the request body must be a JSON object, got {}",
            quiver_common::error::json_kind(&value)
        )));
    }
    serde_json::from_slice(body).map_err(|err| {
        let message = if err.is_syntax() || err.is_eof() {
            "the request body is not valid JSON"
        } else {
            "the request body does not have the expected shape"
        };
        ApiError::Validation {
            message: message.into(),
            detail: Some(err.to_string()),
        }
    })
}

/// A body that could not be read: too large, or cut off.
pub fn body_rejection(rejection: BytesRejection) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::PayloadTooLarge(format!(
            "the request body is larger than {} MiB",
            crate::MAX_BODY_BYTES / (1024 * 1024)
        ))
    } else {
        ApiError::validation(format!("cannot read the request body: {}", rejection.body_text()))
    }
}
