//! `x-idempotency-key` on mutating requests: the first request with a key runs and
//! its successful response is kept for 24 hours per project; a retry with the same
//! route and body gets that response again (`Idempotent-Replayed: true`) without
//! running twice. The same key with another body, or on another route, is a 422; a
//! retry while the first is still running is a 409. A failed request releases the
//! key; a retry of the same request keeps its first start, and so the ids it makes
//! ([`crate::records::KeyedIds`]), in case its write committed before it failed.

use std::future::Future;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use quiver_common::ApiError;
use quiver_store::{Claim, IdempotencyBegin, StoredResponse};
use serde_json::Value;
use sha2::{Digest as _, Sha256};
use tokio_util::task::TaskTracker;

use crate::DataPlane;
use crate::auth::Principal;

pub const HEADER: &str = "x-idempotency-key";
const TTL: chrono::Duration = chrono::Duration::hours(24);
/// How long a claim holds before a retry may assume its pod died.
const LEASE: chrono::Duration = chrono::Duration::seconds(60);

fn json_response(status: StatusCode, body: Vec<u8>, replayed: bool) -> Response {
    let mut response = (status, [(header::CONTENT_TYPE, "application/json")], body).into_response();
    if replayed {
        response
            .headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    response
}

/// Runs a request with an idempotency key to its end in a task of its own, even when
/// its client goes away. hyper drops a handler's future with its connection, and one
/// dropped between its write's commit and [`idempotent`] storing the answer would
/// leave the key claimed until its lease ran out, and a retry after that would run the
/// request again: a document inserted without an id would be inserted twice.
/// A GET stores nothing under a key, and stays cancellable.
/// `writes` is the pod's [`DataPlane::writes`], which a shutdown waits for.
pub async fn run_to_the_end(State(writes): State<TaskTracker>, request: Request, next: Next) -> Response {
    if request.method() == Method::GET || !request.headers().contains_key(HEADER) {
        return next.run(request).await;
    }
    match crate::run_tracked(&writes, next.run(request)).await {
        Ok(response) => response,
        Err(err) => ApiError::Internal(anyhow::anyhow!("an idempotent request's task failed: {err}")).into_response(),
    }
}

/// Runs `operation` at most once per idempotency key (when the request has one).
pub async fn idempotent<F>(
    state: &DataPlane,
    principal: &Principal,
    headers: &HeaderMap,
    route: &str,
    body: &[u8],
    operation: F,
) -> Result<Response, ApiError>
where
    F: Future<Output = Result<Value, ApiError>>,
{
    let Some(key) = headers.get(HEADER) else {
        let value = operation.await?;
        return Ok(json_response(
            StatusCode::OK,
            serde_json::to_vec(&value).map_err(anyhow::Error::from)?,
            false,
        ));
    };
    let key = key
        .to_str()
        .ok()
        .filter(|k| !k.is_empty() && k.len() <= 255)
        .ok_or_else(|| ApiError::validation(format!("{HEADER} must be 1 to 255 visible ASCII characters")))?;
    let mut hasher = Sha256::new();
    hasher.update(route.as_bytes());
    hasher.update([0]);
    hasher.update(body);
    // A token limited to some namespaces checks its namespace inside the request, which
    // a replay skips: it is a request of its own, so it cannot replay another
    // credential's answer for a namespace it may not see (that is a 422).
    if let Some(namespaces) = &principal.namespaces {
        for namespace in namespaces {
            hasher.update([0]);
            hasher.update(namespace.as_bytes());
        }
    }
    let request_hash = hex::encode(hasher.finalize());
    // A key is one request of the project, whichever route it was sent to: the same
    // key on another route, or for another document, is another request (a 422).
    match state
        .store
        .begin(principal.project_id, key, &request_hash, LEASE, TTL)
        .await?
    {
        IdempotencyBegin::Replay(stored) => {
            let status = StatusCode::from_u16(stored.status).unwrap_or(StatusCode::OK);
            Ok(json_response(status, stored.body, true))
        }
        IdempotencyBegin::InFlight => Err(ApiError::Conflict(format!(
            "a request with {HEADER} \"{key}\" is still being processed; retry shortly"
        ))),
        IdempotencyBegin::Mismatch => Err(ApiError::Unprocessable(format!(
            "{HEADER} \"{key}\" was already used with a different request (another body or route)"
        ))),
        IdempotencyBegin::Started { first_started, claim } => {
            let ids = crate::records::KeyedIds::new(principal.project_id, key, first_started);
            finish(state, principal, key, claim, ids.scope(operation).await).await
        }
    }
}

/// Stores a started request's answer under its key, or releases the key when it failed.
async fn finish(
    state: &DataPlane,
    principal: &Principal,
    key: &str,
    claim: Claim,
    outcome: Result<Value, ApiError>,
) -> Result<Response, ApiError> {
    match outcome {
        Ok(value) => {
            let body = serde_json::to_vec(&value).map_err(anyhow::Error::from)?;
            let stored = StoredResponse {
                status: 200,
                body: body.clone(),
            };
            // The write is done either way; only the replay record would be missing.
            match state.store.complete(principal.project_id, key, claim, &stored).await {
                Ok(true) => {}
                Ok(false) => tracing::warn!(
                    "an idempotent request outlasted its claim and a retry took the key over: its response is not stored"
                ),
                Err(err) => tracing::warn!(error = %err, "storing an idempotent response failed"),
            }
            Ok(json_response(StatusCode::OK, body, false))
        }
        Err(err) => {
            if let Err(release) = state.store.abort(principal.project_id, key, claim).await {
                tracing::warn!(error = %release, "releasing an idempotency key failed");
            }
            Err(err)
        }
    }
}
