use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Every error a Quiver HTTP endpoint can return.
///
/// The variant decides the HTTP status and the stable `code` of the envelope
/// `{"error":{"code","message","detail","status"}}`; the mapping is one exhaustive
/// `match`, so a new variant cannot ship without a status.
/// Whole seconds for `Retry-After`, rounded up and at least one: a client that waits
/// what it says is not refused again for the fraction left.
pub fn retry_after_secs(wait: std::time::Duration) -> u64 {
    wait.as_secs().saturating_add(u64::from(wait.subsec_nanos() > 0)).max(1)
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request body or a parameter failed validation (400 `VALIDATION_ERROR`).
    #[error("{message}")]
    Validation { message: String, detail: Option<String> },
    /// An NQL statement could not be parsed or planned (400 `QUERY_ERROR`).
    #[error("{message}")]
    Query { message: String, detail: Option<String> },
    /// Missing, unknown, expired or revoked credentials (401 `UNAUTHORIZED`).
    #[error("{0}")]
    Unauthorized(String),
    /// Valid credentials without the scope the operation needs (403 `FORBIDDEN`).
    #[error("{0}")]
    Forbidden(String),
    /// No such route, record, document, collection or project (404 `NOT_FOUND`).
    #[error("{0}")]
    NotFound(String),
    /// The route exists but not with this method (405 `METHOD_NOT_ALLOWED`).
    #[error("{0}")]
    MethodNotAllowed(String),
    /// The request conflicts with the current state, e.g. a duplicate email or an
    /// idempotent request still in flight (409 `CONFLICT`).
    #[error("{0}")]
    Conflict(String),
    /// The body is larger than the server accepts (413 `PAYLOAD_TOO_LARGE`).
    #[error("{0}")]
    PayloadTooLarge(String),
    /// Well-formed but cannot be processed, e.g. an idempotency key reused with a
    /// different body (422 `UNPROCESSABLE`).
    #[error("{0}")]
    Unprocessable(String),
    /// The project's or caller's rate limit is spent (429 `RATE_LIMITED`).
    #[error("{message}")]
    RateLimited { message: String, retry_after_secs: u64 },
    /// A service Quiver depends on (an embedding provider) failed (502 `UPSTREAM_ERROR`).
    #[error("{0}")]
    Upstream(String),
    /// The records store cannot be reached (503 `DATABASE_UNAVAILABLE`).
    #[error("{0}")]
    DatabaseUnavailable(String),
    /// Quiver cannot serve this right now for a reason other than the database,
    /// e.g. an embedding model that is not installed (503 `SERVICE_UNAVAILABLE`).
    #[error("{0}")]
    Unavailable(String),
    /// A bug or an unexpected failure. The client sees a generic message; the
    /// full error chain goes to the log with the request id.
    #[error("internal error: {0:#}")]
    Internal(#[from] anyhow::Error),
}

/// A JSON value's kind, for messages ("got a string").
pub fn json_kind(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// The body of every error response.
#[derive(Debug, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ErrorEnvelope {
    pub error: ErrorBody,
}

/// The inner object of [`ErrorEnvelope`].
#[derive(Debug, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// Stable, machine-readable code such as `VALIDATION_ERROR`.
    #[schema(example = "VALIDATION_ERROR")]
    pub code: String,
    /// What went wrong, in one lowercase sentence.
    pub message: String,
    /// More context when there is any (a parser position, the offending field).
    pub detail: Option<String>,
    /// The HTTP status, repeated for clients that only see the body.
    pub status: u16,
}

impl ApiError {
    /// Shorthand for a validation error without detail.
    pub fn validation(message: impl Into<String>) -> Self {
        Self::Validation {
            message: message.into(),
            detail: None,
        }
    }

    /// Shorthand for an NQL error with the parser's detail.
    pub fn query(message: impl Into<String>, detail: impl Into<Option<String>>) -> Self {
        Self::Query {
            message: message.into(),
            detail: detail.into(),
        }
    }

    /// The HTTP status of this error.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Validation { .. } | Self::Query { .. } => StatusCode::BAD_REQUEST,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Upstream(_) => StatusCode::BAD_GATEWAY,
            Self::DatabaseUnavailable(_) | Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable code of the envelope.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Validation { .. } => "VALIDATION_ERROR",
            Self::Query { .. } => "QUERY_ERROR",
            Self::Unauthorized(_) => "UNAUTHORIZED",
            Self::Forbidden(_) => "FORBIDDEN",
            Self::NotFound(_) => "NOT_FOUND",
            Self::MethodNotAllowed(_) => "METHOD_NOT_ALLOWED",
            Self::Conflict(_) => "CONFLICT",
            Self::PayloadTooLarge(_) => "PAYLOAD_TOO_LARGE",
            Self::Unprocessable(_) => "UNPROCESSABLE",
            Self::RateLimited { .. } => "RATE_LIMITED",
            Self::Upstream(_) => "UPSTREAM_ERROR",
            Self::DatabaseUnavailable(_) => "DATABASE_UNAVAILABLE",
            Self::Unavailable(_) => "SERVICE_UNAVAILABLE",
            Self::Internal(_) => "INTERNAL_ERROR",
        }
    }

    /// The envelope this error is sent as. Internal errors never leak their cause.
    pub fn envelope(&self) -> ErrorEnvelope {
        let (message, detail) = match self {
            Self::Validation { message, detail } | Self::Query { message, detail } => (message.clone(), detail.clone()),
            Self::Internal(_) => (
                "internal server error".to_owned(),
                Some("the error was logged with this response's x-request-id".to_owned()),
            ),
            other => (other.to_string(), None),
        };
        ErrorEnvelope {
            error: ErrorBody {
                code: self.code().to_owned(),
                message,
                detail,
                status: self.status().as_u16(),
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match &self {
            Self::Internal(err) => tracing::error!(error = ?err, "request failed"),
            Self::DatabaseUnavailable(msg) => tracing::warn!(error = %msg, "records store unavailable"),
            _ => {}
        }
        let status = self.status();
        let mut response = (status, axum::Json(self.envelope())).into_response();
        if let Self::RateLimited { retry_after_secs, .. } = &self {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
        }
        response
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        match rejection {
            JsonRejection::MissingJsonContentType(_) => {
                ApiError::validation("the request body must be JSON: send the header content-type: application/json")
            }
            JsonRejection::JsonSyntaxError(err) => ApiError::Validation {
                message: "the request body is not valid JSON".to_owned(),
                detail: Some(std::error::Error::source(&err).map_or_else(|| err.body_text(), ToString::to_string)),
            },
            JsonRejection::JsonDataError(err) => ApiError::Validation {
                message: "the request body does not have the expected shape".to_owned(),
                detail: Some(std::error::Error::source(&err).map_or_else(|| err.body_text(), ToString::to_string)),
            },
            JsonRejection::BytesRejection(err) if err.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                ApiError::PayloadTooLarge(format!("the request body is too large: {}", err.body_text()))
            }
            other => ApiError::validation(format!("cannot read the request body: {}", other.body_text())),
        }
    }
}

/// `axum::Json` whose rejection speaks the error envelope, so even a body that is
/// not JSON gets a `VALIDATION_ERROR` rather than a plain-text 400.
///
/// The body must be a JSON object: serde would otherwise read a struct from an array
/// of its fields in order (`[null, null]`), which no client means and the spec forbids.
#[derive(Debug, Clone, Copy, Default)]
pub struct AppJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for AppJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let axum::Json(raw) = axum::Json::<Box<serde_json::value::RawValue>>::from_request(req, state).await?;
        if !raw.get().starts_with('{') {
            let value: serde_json::Value = serde_json::from_str(raw.get()).map_err(anyhow::Error::from)?;
            return Err(ApiError::validation(format!(
                "the request body must be a JSON object, got {}",
                json_kind(&value)
            )));
        }
        // Through axum again, so a bad field is named by its path (`limits.max: invalid type`).
        Ok(AppJson(axum::Json::<T>::from_bytes(raw.get().as_bytes())?.0))
    }
}

/// `axum::extract::Path` whose refusals (a segment that is not UTF-8 once
/// percent-decoded, one that does not parse) are 400s in the envelope, not plain text.
pub struct AppPath<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for AppPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(value)| AppPath(value))
            .map_err(|rejection| ApiError::validation(rejection.body_text()))
    }
}

/// `axum::extract::Query` that refuses a query string that is not UTF-8 once
/// percent-decoded (the plain extractor replaces such bytes, so `?namespace=%FF`
/// would name the namespace "\u{FFFD}"), and whose refusals are 400s in the envelope.
pub struct AppQuery<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for AppQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let raw = parts.uri.query().unwrap_or_default();
        if percent_encoding::percent_decode_str(raw).decode_utf8().is_err() {
            return Err(ApiError::validation(
                "the query string is not UTF-8 once percent-decoded",
            ));
        }
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(value)| AppQuery(value))
            .map_err(|rejection| ApiError::validation(rejection.body_text()))
    }
}

impl<T: Serialize> IntoResponse for AppJson<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        use std::time::Duration;
        assert_eq!(retry_after_secs(Duration::from_millis(11_900)), 12);
        assert_eq!(retry_after_secs(Duration::from_secs(2)), 2);
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::MAX), u64::MAX);
    }

    #[test]
    fn internal_errors_do_not_leak_their_cause() {
        let err = ApiError::Internal(anyhow::anyhow!("password=hunter2 in a connection string"));
        let body = serde_json::to_string(&err.envelope()).expect("envelope serializes");
        assert!(!body.contains("hunter2"), "{body}");
        assert!(body.contains("INTERNAL_ERROR"));
        assert_eq!(err.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }

    #[test]
    fn validation_errors_carry_message_detail_and_status() {
        let err = ApiError::Validation {
            message: "vector 0 (id \"a\") has 3 values, the project's dimension is 4".into(),
            detail: Some("field vectors[0].values".into()),
        };
        let env = err.envelope();
        assert_eq!(env.error.code, "VALIDATION_ERROR");
        assert_eq!(env.error.status, 400);
        assert_eq!(env.error.detail.as_deref(), Some("field vectors[0].values"));
    }

    #[test]
    fn rate_limited_responses_carry_retry_after() {
        let response = ApiError::RateLimited {
            message: "slow down".into(),
            retry_after_secs: 7,
        }
        .into_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[header::RETRY_AFTER], "7");
    }
}
