//! Reading JSON bodies by hand (handlers that also hash the raw body for idempotency),
//! with the same envelope errors as `AppJson`.

use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode, header};
use quiver_common::ApiError;
use serde::de::DeserializeOwned;

use crate::vector_json::Place;

/// Parses a JSON body; a content type other than JSON, or a body that does not parse
/// into `T`, is a `VALIDATION_ERROR` that says what was wrong.
pub fn parse_body<T: DeserializeOwned>(headers: &HeaderMap, body: &[u8]) -> Result<T, ApiError> {
    require_json(headers)?;
    parse_json(body)
}

/// Parses a JSON body that carries vectors at `place`, reading their numbers the fast
/// way ([`crate::vector_json`]) where it can: then the body is read with the vectors
/// taken out, and `put` puts them back, in the body's order. Refusals are those of
/// [`parse_body`], word for word.
pub fn parse_body_with_vectors<T: DeserializeOwned>(
    headers: &HeaderMap,
    body: &[u8],
    place: Place<'_>,
    put: impl FnOnce(&mut T, Vec<Vec<f32>>),
) -> Result<T, ApiError> {
    require_json(headers)?;
    if let Some(lifted) = crate::vector_json::lift(body, place)
        && let Ok(mut request) = serde_json::from_slice(&lifted.rest)
    {
        put(&mut request, lifted.vectors);
        return Ok(request);
    }
    // The whole body the ordinary way, for the request or for what is wrong with it
    // (serde's message names a column of the body as sent).
    parse_json(body)
}

/// A content type other than JSON is a `VALIDATION_ERROR`.
fn require_json(headers: &HeaderMap) -> Result<(), ApiError> {
    if let Some(content_type) = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok())
        && !content_type.starts_with("application/json")
        && !content_type.contains("+json")
    {
        return Err(ApiError::validation(format!(
            "the request body must be JSON: send content-type: application/json, not {content_type}"
        )));
    }
    Ok(())
}

/// Parses JSON into `T`; a body that does not parse is a `VALIDATION_ERROR` that says
/// what was wrong.
fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
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

/// A body that could not be read: too large for its route (which takes at most
/// `limit` bytes), or cut off.
pub fn body_rejection(limit: usize) -> impl Fn(BytesRejection) -> ApiError {
    move |rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge(format!(
                "the request body is larger than {} MiB, the most this request takes",
                limit / (1024 * 1024)
            ))
        } else {
            ApiError::validation(format!("cannot read the request body: {}", rejection.body_text()))
        }
    }
}
