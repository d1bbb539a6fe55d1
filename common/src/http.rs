use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderName, Request, Response};
use axum::routing::get;
use axum::serve::{ListenerExt, TapIo};
use axum::{Json, Router};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;
use tracing::Span;

use crate::ApiError;

/// The header that carries a request's id, set on every request and echoed on every response.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Something `/readyz` checks: the records store, the bus.
#[async_trait]
pub trait ReadinessCheck: Send + Sync {
    /// A short name for the component, shown in the probe's body.
    fn name(&self) -> &'static str;
    /// `Ok` when the component can serve, or why it cannot.
    async fn check(&self) -> Result<(), String>;
}

/// How a failed check weighs on `/readyz`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Weight {
    /// The pod can serve nothing without it: `/readyz` is a 503.
    Required,
    /// A dependency every pod shares, without which a pod still serves part of its
    /// API (a data-plane pod's searches from memory, its rate limits kept alone):
    /// `/readyz` stays 200 and says `degraded`. An outage of such a dependency fails
    /// every pod's probe at once, and an orchestrator would take them all out of
    /// service for something none of them can mend.
    Shared,
}

type Checks = Arc<Vec<(Arc<dyn ReadinessCheck>, Weight)>>;

/// `GET /healthz` (the process is alive) and `GET /readyz` (every required check
/// passes; see [`Weight`]).
pub fn health_router(checks: Vec<(Arc<dyn ReadinessCheck>, Weight)>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(Arc::new(checks))
}

/// The process is alive.
#[utoipa::path(get, operation_id = "healthz", path = "/healthz", tag = "health", responses((status = 200, description = "alive", example = json!({"status": "ok"}))))]
pub async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// The pod can serve: every dependency it cannot do without answers. One that every
/// pod shares and the pod can partly do without is reported, with `degraded`.
#[utoipa::path(
    get,
    operation_id = "readyz",
    path = "/readyz",
    tag = "health",
    responses(
        (status = 200, description = "ready, or `degraded` with a shared dependency down (the checks say which)", example = json!({"status": "ready", "checks": {"storage": "ok", "bus": "ok"}})),
        (status = 503, description = "a required check failed", body = crate::error::ErrorEnvelope),
    )
)]
pub async fn readyz(State(checks): State<Checks>) -> Result<Json<Value>, ApiError> {
    // All at once, each within 2 s: a probe that hangs is a failed probe, and
    // orchestrators time out at a few seconds.
    let outcomes = futures::future::join_all(checks.iter().map(|(check, weight)| async move {
        let outcome = tokio::time::timeout(Duration::from_secs(2), check.check())
            .await
            .unwrap_or_else(|_| Err("no answer within 2 s".to_owned()));
        (check.name(), *weight, outcome)
    }))
    .await;
    let mut components = serde_json::Map::new();
    let mut failures = Vec::new();
    let mut degraded = false;
    for (name, weight, outcome) in outcomes {
        match outcome {
            Ok(()) => components.insert(name.to_owned(), json!("ok")),
            Err(why) => {
                match weight {
                    Weight::Required => failures.push(format!("{name}: {why}")),
                    Weight::Shared => degraded = true,
                }
                components.insert(name.to_owned(), json!(why))
            }
        };
    }
    if !failures.is_empty() {
        return Err(ApiError::Unavailable(format!("not ready: {}", failures.join("; "))));
    }
    let status = if degraded { "degraded" } else { "ready" };
    Ok(Json(json!({ "status": status, "checks": components })))
}

/// The connections `listener` accepts, with Nagle's algorithm off (`TCP_NODELAY`), as
/// the planes serve them. With it on, a response whose last segment is small waits
/// for the client's ACK of the one before, and a client that delays its ACKs (Linux
/// holds them up to 40 ms) turns that into 40 ms of latency on a sub-millisecond search.
pub fn without_nagle(listener: TcpListener) -> TapIo<TcpListener, fn(&mut TcpStream)> {
    listener.tap_io(set_nodelay)
}

fn set_nodelay(stream: &mut TcpStream) {
    if let Err(err) = stream.set_nodelay(true) {
        tracing::warn!(error = %err, "could not set TCP_NODELAY on a connection");
    }
}

/// Finishes a plane's router: envelope-speaking 404 and 405 fallbacks, a request id
/// on every request and response, and a tracing span per request that records the
/// path but never the query string (it may carry `api_key`).
pub fn finish_router(router: Router) -> Router {
    finish_router_with(router, |router| router)
}

/// [`finish_router`], with `inner` layering the router and its fallbacks inside the
/// request id and the log line: what it answers by itself (a CORS preflight) has both.
pub fn finish_router_with(router: Router, inner: impl FnOnce(Router) -> Router) -> Router {
    let request_id = HeaderName::from_static(REQUEST_ID_HEADER);
    inner(
        router
            .fallback(route_not_found)
            .method_not_allowed_fallback(method_not_allowed)
            // A handler that panics is a 500 in the envelope, logged with its request,
            // not a connection dropped without a word; inside `inner`, so that a
            // browser page can read it too.
            .layer(CatchPanicLayer::custom(panic_response)),
    )
    .layer(
        ServiceBuilder::new()
            .layer(SetRequestIdLayer::new(request_id.clone(), MakeRequestUuid))
            .layer(
                TraceLayer::new_for_http()
                    .make_span_with(request_span)
                    .on_request(())
                    .on_response(log_response),
            )
            .layer(PropagateRequestIdLayer::new(request_id)),
    )
}

fn panic_response(_panic: Box<dyn std::any::Any + Send + 'static>) -> Response<Body> {
    // The panic hook has logged it, with its message and where.
    axum::response::IntoResponse::into_response(ApiError::Internal(anyhow::anyhow!("a request handler panicked")))
}

fn request_span(request: &Request<Body>) -> Span {
    let request_id = request
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    tracing::info_span!(
        "request",
        method = %request.method(),
        path = %request.uri().path(),
        request_id = %request_id,
        project_id = tracing::field::Empty,
    )
}

fn log_response<B>(response: &Response<B>, latency: Duration, _span: &Span) {
    tracing::info!(
        status = response.status().as_u16(),
        latency_ms = latency.as_secs_f64() * 1000.0,
        "request finished"
    );
}

async fn route_not_found(request: Request<Body>) -> ApiError {
    ApiError::NotFound(format!("no route for {} {}", request.method(), request.uri().path()))
}

async fn method_not_allowed(request: Request<Body>) -> ApiError {
    ApiError::MethodNotAllowed(format!(
        "{} is not allowed on {}",
        request.method(),
        request.uri().path()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;
    use axum::serve::Listener;
    use tower::ServiceExt;

    struct Fixed(Result<(), String>);

    #[async_trait]
    impl ReadinessCheck for Fixed {
        fn name(&self) -> &'static str {
            "storage"
        }
        async fn check(&self) -> Result<(), String> {
            self.0.clone()
        }
    }

    async fn get(router: Router, uri: &str) -> (StatusCode, Value, Option<String>) {
        let response = router
            .oneshot(Request::get(uri).body(Body::empty()).expect("request builds"))
            .await
            .expect("router is infallible");
        let status = response.status();
        let id = response
            .headers()
            .get(REQUEST_ID_HEADER)
            .map(|v| v.to_str().expect("ascii").to_owned());
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("body reads");
        (status, serde_json::from_slice(&bytes).expect("json body"), id)
    }

    #[tokio::test]
    async fn readyz_reports_each_check_and_fails_when_a_required_one_fails() {
        let ok = finish_router(health_router(vec![(Arc::new(Fixed(Ok(()))), Weight::Required)]));
        let (status, body, _) = get(ok, "/readyz").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["checks"]["storage"], "ok");
        assert_eq!(body["status"], "ready");

        // A shared dependency down: still serving, and saying so.
        let shared = finish_router(health_router(vec![(
            Arc::new(Fixed(Err("connection refused".into()))),
            Weight::Shared,
        )]));
        let (status, body, _) = get(shared, "/readyz").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["status"], "degraded");
        assert_eq!(body["checks"]["storage"], "connection refused");

        let down = finish_router(health_router(vec![(
            Arc::new(Fixed(Err("connection refused".into()))),
            Weight::Required,
        )]));
        let (status, body, _) = get(down, "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["error"]["code"], "SERVICE_UNAVAILABLE");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("storage: connection refused")
        );
    }

    #[tokio::test]
    async fn served_connections_send_without_waiting_for_acks() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind a free port");
        let addr = listener.local_addr().expect("local addr");
        let mut listener = without_nagle(listener);
        let client = TcpStream::connect(addr).await.expect("connect");
        assert!(
            !client.nodelay().expect("read TCP_NODELAY"),
            "a plain socket waits for ACKs"
        );
        let (accepted, peer) = listener.accept().await;
        assert_eq!(peer, client.local_addr().expect("client addr"));
        assert!(accepted.nodelay().expect("read TCP_NODELAY"));
    }

    #[tokio::test]
    async fn a_handler_that_panics_answers_a_500_in_the_envelope() {
        let router = finish_router(Router::new().route(
            "/boom",
            axum::routing::get(|| async {
                if std::hint::black_box(true) {
                    panic!("a bug");
                }
                "unreachable"
            }),
        ));
        let (status, body, id) = get(router, "/boom").await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(body["error"]["code"], "INTERNAL_ERROR");
        assert!(
            !body.to_string().contains("a bug"),
            "the panic's text stays in the log: {body}"
        );
        assert!(id.is_some_and(|id| !id.is_empty()));
    }

    #[tokio::test]
    async fn unknown_routes_get_the_envelope_and_every_response_a_request_id() {
        let router = finish_router(health_router(Vec::new()));
        let (status, body, id) = get(router, "/nope").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(body["error"]["code"], "NOT_FOUND");
        assert_eq!(body["error"]["status"], 404);
        assert!(id.is_some_and(|id| !id.is_empty()));
    }
}
