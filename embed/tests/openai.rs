//! The OpenAI-compatible provider against a fake server on 127.0.0.1:0.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use quiver_embed::{EmbedConfig, EmbedError, Embedders};
use serde_json::{Value, json};

/// One request the fake server received.
#[derive(Debug, Clone)]
struct Call {
    authorization: Option<String>,
    model: String,
    input: Vec<String>,
}

/// What the fake server answers to the n-th call (0-based).
enum Reply {
    /// Vectors `[n, 2n, 1]` for input text "n", listed in reverse order.
    Embeddings,
    Status(u16, &'static str, Option<&'static str>),
    Sleep(Duration),
    Raw(String),
}

type Script = Arc<dyn Fn(usize, &Call) -> Reply + Send + Sync>;

#[derive(Clone)]
struct FakeState {
    calls: Arc<Mutex<Vec<Call>>>,
    script: Script,
}

struct Fake {
    base_url: String,
    calls: Arc<Mutex<Vec<Call>>>,
}

impl Fake {
    fn calls(&self) -> Vec<Call> {
        self.calls.lock().expect("test lock").clone()
    }
}

async fn fake(script: impl Fn(usize, &Call) -> Reply + Send + Sync + 'static) -> Fake {
    let calls = Arc::new(Mutex::new(Vec::new()));
    let state = FakeState {
        calls: calls.clone(),
        script: Arc::new(script),
    };
    let app = Router::new().route("/v1/embeddings", post(handle)).with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    Fake {
        base_url: format!("http://{addr}/v1"),
        calls,
    }
}

async fn handle(State(state): State<FakeState>, headers: HeaderMap, Json(body): Json<Value>) -> Response {
    let call = Call {
        authorization: headers
            .get("authorization")
            .map(|v| v.to_str().expect("ascii").to_owned()),
        model: body["model"].as_str().expect("model").to_owned(),
        input: serde_json::from_value(body["input"].clone()).expect("input is a list of strings"),
    };
    let n = {
        let mut calls = state.calls.lock().expect("test lock");
        calls.push(call.clone());
        calls.len() - 1
    };
    match (state.script)(n, &call) {
        Reply::Embeddings => Json(embeddings(&call.input)).into_response(),
        Reply::Status(status, body, retry_after) => {
            let mut response = (StatusCode::from_u16(status).expect("status"), body.to_owned()).into_response();
            if let Some(value) = retry_after {
                response
                    .headers_mut()
                    .insert("retry-after", value.parse().expect("header"));
            }
            response
        }
        Reply::Sleep(delay) => {
            tokio::time::sleep(delay).await;
            Json(embeddings(&call.input)).into_response()
        }
        Reply::Raw(body) => ([("content-type", "application/json")], body).into_response(),
    }
}

fn embeddings(input: &[String]) -> Value {
    let data: Vec<Value> = input
        .iter()
        .enumerate()
        .rev()
        .map(|(index, text)| {
            let n: f32 = text.parse().expect("test inputs are numbers");
            json!({"object": "embedding", "index": index, "embedding": [n, 2.0 * n, 1.0]})
        })
        .collect();
    json!({"object": "list", "data": data, "model": "fake"})
}

fn registry(fake: &Fake, tweak: impl FnOnce(&mut EmbedConfig)) -> Embedders {
    let mut config = EmbedConfig {
        openai_base_url: fake.base_url.clone(),
        openai_api_key: Some("sk-test".to_owned()),
        retry_base_delay: Duration::from_millis(5),
        ..EmbedConfig::default()
    };
    tweak(&mut config);
    Embedders::new(config)
}

fn numbers(count: usize) -> Vec<String> {
    (0..count).map(|n| n.to_string()).collect()
}

#[tokio::test]
async fn order_is_preserved_across_batches_and_the_bearer_key_is_sent() {
    let fake = fake(|_, _| Reply::Embeddings).await;
    let embedders = registry(&fake, |c| c.batch_size = 3);

    let vectors = embedders.embed("openai/bge-m3", numbers(10)).await.expect("embeds");

    let expected: Vec<Vec<f32>> = (0..10).map(|n| vec![n as f32, 2.0 * n as f32, 1.0]).collect();
    assert_eq!(vectors, expected);
    let calls = fake.calls();
    assert_eq!(calls.iter().map(|c| c.input.len()).collect::<Vec<_>>(), [3, 3, 3, 1]);
    assert!(
        calls
            .iter()
            .all(|c| c.authorization.as_deref() == Some("Bearer sk-test"))
    );
    assert!(
        calls.iter().all(|c| c.model == "bge-m3"),
        "the provider prefix is not sent"
    );
}

#[tokio::test]
async fn no_authorization_header_without_a_key() {
    let fake = fake(|_, _| Reply::Embeddings).await;
    let embedders = registry(&fake, |c| c.openai_api_key = None);

    embedders
        .embed("openai/nomic-embed-text", numbers(1))
        .await
        .expect("embeds");

    assert_eq!(fake.calls()[0].authorization, None);
}

#[tokio::test]
async fn retries_after_429_and_500_then_succeeds() {
    let fake = fake(|n, _| match n {
        0 => Reply::Status(429, r#"{"error":{"message":"slow down"}}"#, Some("0")),
        1 => Reply::Status(500, "oops", None),
        _ => Reply::Embeddings,
    })
    .await;
    let embedders = registry(&fake, |_| {});

    let vectors = embedders
        .embed("openai/m", numbers(2))
        .await
        .expect("third attempt succeeds");

    assert_eq!(vectors.len(), 2);
    assert_eq!(fake.calls().len(), 3);
}

#[tokio::test]
async fn retry_after_is_honoured() {
    let fake = fake(|n, _| match n {
        0 => Reply::Status(429, "busy", Some("1")),
        _ => Reply::Embeddings,
    })
    .await;
    let embedders = registry(&fake, |_| {});

    let started = Instant::now();
    embedders
        .embed("openai/m", numbers(1))
        .await
        .expect("second attempt succeeds");

    assert!(
        started.elapsed() >= Duration::from_millis(950),
        "waited {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn gives_up_with_upstream_after_max_retries() {
    let fake = fake(|_, _| Reply::Status(503, r#"{"error":{"message":"model overloaded"}}"#, None)).await;
    let embedders = registry(&fake, |c| c.max_retries = 2);

    let err = embedders.embed("openai/m", numbers(1)).await.expect_err("always 503");

    assert_eq!(fake.calls().len(), 3, "one attempt and two retries");
    let EmbedError::Upstream(message) = err else {
        panic!("expected Upstream, got {err:?}")
    };
    assert!(
        message.contains("503") && message.contains("model overloaded"),
        "{message}"
    );
    assert!(message.contains("3 attempts"), "{message}");
}

#[tokio::test]
async fn client_errors_are_not_retried() {
    let fake = fake(|_, _| Reply::Status(401, r#"{"error":{"message":"incorrect api key"}}"#, None)).await;
    let embedders = registry(&fake, |_| {});

    let err = embedders.embed("openai/m", numbers(1)).await.expect_err("401");

    assert_eq!(fake.calls().len(), 1);
    let EmbedError::Upstream(message) = err else {
        panic!("expected Upstream, got {err:?}")
    };
    // The server's own credentials: the tenant is told so, without the provider's
    // text, which may quote part of the key.
    assert!(
        message.contains("401") && message.contains("credentials") && !message.contains("incorrect api key"),
        "{message}"
    );
}

#[tokio::test]
async fn an_input_the_provider_refuses_is_the_requests_fault() {
    let fake = fake(|_, _| {
        Reply::Status(
            400,
            r#"{"error":{"message":"This model's maximum context length is 8192 tokens"}}"#,
            None,
        )
    })
    .await;
    let embedders = registry(&fake, |_| {});

    let err = embedders.embed("openai/m", numbers(1)).await.expect_err("400");

    assert_eq!(fake.calls().len(), 1, "not retried");
    let EmbedError::Invalid(message) = err else {
        panic!("expected Invalid, got {err:?}")
    };
    assert!(message.contains("maximum context length"), "{message}");
}

#[tokio::test]
async fn a_timeout_becomes_unavailable_after_retries() {
    let fake = fake(|_, _| Reply::Sleep(Duration::from_secs(3))).await;
    let embedders = registry(&fake, |c| {
        c.timeout = Duration::from_millis(200);
        c.max_retries = 1;
    });

    let err = embedders.embed("openai/m", numbers(1)).await.expect_err("too slow");

    assert_eq!(fake.calls().len(), 2);
    let EmbedError::Unavailable(message) = err else {
        panic!("expected Unavailable, got {err:?}")
    };
    assert!(message.contains("timed out"), "{message}");
}

#[tokio::test]
async fn an_unreachable_provider_is_unavailable() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let embedders = Embedders::new(EmbedConfig {
        openai_base_url: format!("http://{addr}/v1"),
        max_retries: 1,
        retry_base_delay: Duration::from_millis(5),
        ..EmbedConfig::default()
    });

    let err = embedders
        .embed("openai/m", numbers(1))
        .await
        .expect_err("nothing listens");

    let EmbedError::Unavailable(message) = err else {
        panic!("expected Unavailable, got {err:?}")
    };
    assert!(
        message.contains("unreachable") && message.contains("2 attempts"),
        "{message}"
    );
}

#[tokio::test]
async fn malformed_responses_are_upstream_errors_and_not_retried() {
    let bodies = [
        ("not json", "not an embeddings list"),
        (
            r#"{"data": [{"index": 0, "embedding": [1.0]}]}"#,
            "1 embeddings for 2 texts",
        ),
        (
            r#"{"data": [{"index": 0, "embedding": [1.0]}, {"index": 1, "embedding": [1.0, 2.0]}]}"#,
            "has 2 values",
        ),
        (
            r#"{"data": [{"index": 0, "embedding": [1.0]}, {"index": 0, "embedding": [1.0]}]}"#,
            "appears twice",
        ),
        (
            r#"{"data": [{"index": 0, "embedding": [1e39]}, {"index": 1, "embedding": [1.0]}]}"#,
            "finite",
        ),
        (
            r#"{"data": [{"index": 0, "embedding": ["a"]}, {"index": 1, "embedding": [1.0]}]}"#,
            "not an embeddings list",
        ),
    ];
    for (body, expected) in bodies {
        let fake = fake(move |_, _| Reply::Raw(body.to_owned())).await;
        let embedders = registry(&fake, |_| {});

        let err = embedders.embed("openai/m", numbers(2)).await.expect_err(body);

        assert_eq!(fake.calls().len(), 1, "{body}");
        let EmbedError::Upstream(message) = err else {
            panic!("expected Upstream for {body}, got {err:?}")
        };
        assert!(message.contains(expected), "{message} should contain {expected}");
    }
}

#[tokio::test]
async fn the_dimension_is_remembered_after_the_first_call() {
    let fake = fake(|_, _| Reply::Embeddings).await;
    let embedders = registry(&fake, |_| {});
    assert_eq!(
        embedders.dimension("openai/nomic-embed-text").expect("any openai name"),
        None
    );

    embedders
        .embed("openai/nomic-embed-text", numbers(2))
        .await
        .expect("embeds");

    assert_eq!(
        embedders.dimension("openai/nomic-embed-text").expect("any openai name"),
        Some(3)
    );
}

#[tokio::test]
async fn a_provider_that_changes_dimension_is_an_upstream_error() {
    let fake = fake(|_, _| Reply::Embeddings).await;
    let embedders = registry(&fake, |_| {});

    // The fake returns 3 values, the listed model has 1536.
    let err = embedders
        .embed("openai/text-embedding-3-small", numbers(1))
        .await
        .expect_err("wrong dim");

    let EmbedError::Upstream(message) = err else {
        panic!("expected Upstream, got {err:?}")
    };
    assert!(
        message.contains("3-dimensional") && message.contains("1536"),
        "{message}"
    );
}
