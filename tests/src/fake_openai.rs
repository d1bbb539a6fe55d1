//! A stand-in for an OpenAI-compatible `/v1/embeddings` endpoint, so tests exercise
//! the `openai/*` provider without a network. Its embeddings are a crude bag of words
//! in which words about databases and search share one direction: enough for the
//! seed page's search to find its document, and deterministic.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};

/// A running fake; dropped with the test.
pub struct FakeOpenAi {
    /// `http://127.0.0.1:<port>/v1`, for `EmbedConfig::openai_base_url`.
    pub base_url: String,
    state: Arc<FakeState>,
}

struct FakeState {
    calls: AtomicUsize,
    /// Texts embedded, over every call.
    inputs: AtomicUsize,
    /// Answer this many coming calls with a 503 before serving again.
    fail_next: AtomicUsize,
    /// Milliseconds the next call waits before it answers.
    hold_next_ms: AtomicU64,
    /// Calls to serve before every call fails (with a 503) until healed; `u64::MAX`: off.
    serve_before_failing: AtomicU64,
}

/// Words that all point the same way, standing in for a model's notion of "about databases".
const TOPIC: &[&str] = &[
    "neuraldb",
    "database",
    "databases",
    "db",
    "ai-native",
    "semantic",
    "search",
    "vector",
];
const STOPWORDS: &[&str] = &["a", "an", "the", "is", "for", "of", "and", "to", "in"];

/// The fake's embedding of `text` in `dimension` dimensions, unit length.
pub fn embedding(text: &str, dimension: usize) -> Vec<f32> {
    let mut vector = vec![0f32; dimension];
    for word in text.split(|c: char| c.is_whitespace() || ",.;:!?".contains(c)) {
        let word = word.to_lowercase();
        if word.is_empty() || STOPWORDS.contains(&word.as_str()) {
            continue;
        }
        let slot = if TOPIC.contains(&word.as_str()) {
            0
        } else {
            // FNV-1a: stable across runs, unlike the std hasher.
            let hash = word.bytes().fold(0xcbf29ce484222325u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
            });
            1 + (hash % (dimension as u64 - 1)) as usize
        };
        vector[slot] += 1.0;
    }
    if vector.iter().all(|x| *x == 0.0) {
        vector[dimension - 1] = 1.0;
    }
    let norm = vector.iter().map(|x| x * x).sum::<f32>().sqrt();
    vector.iter_mut().for_each(|x| *x /= norm);
    vector
}

fn dimension_of(model: &str) -> usize {
    match model {
        "text-embedding-3-large" => 3072,
        "text-embedding-3-small" | "text-embedding-ada-002" => 1536,
        // Other names stand for small self-hosted models.
        _ => 384,
    }
}

async fn embeddings(State(state): State<Arc<FakeState>>, headers: HeaderMap, Json(body): Json<Value>) -> Response {
    state.calls.fetch_add(1, Ordering::SeqCst);
    let hold = state.hold_next_ms.swap(0, Ordering::SeqCst);
    if hold > 0 {
        tokio::time::sleep(Duration::from_millis(hold)).await;
    }
    let failing = state
        .serve_before_failing
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| match n {
            u64::MAX | 0 => None,
            n => Some(n - 1),
        })
        .is_err_and(|n| n == 0);
    if failing
        || state
            .fail_next
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"error": {"message": "overloaded"}})),
        )
            .into_response();
    }
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some("Bearer sk-test") {
        return (StatusCode::UNAUTHORIZED, Json(json!({"error": {"message": "bad key"}}))).into_response();
    }
    let model = body["model"].as_str().unwrap_or_default().to_owned();
    let inputs: Vec<String> = match &body["input"] {
        Value::String(text) => vec![text.clone()],
        Value::Array(items) => items.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect(),
        _ => Vec::new(),
    };
    state.inputs.fetch_add(inputs.len(), Ordering::SeqCst);
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(index, text)| json!({"object": "embedding", "index": index, "embedding": embedding(text, dimension_of(&model))}))
        .collect();
    Json(json!({"object": "list", "data": data, "model": model, "usage": {"prompt_tokens": 0, "total_tokens": 0}}))
        .into_response()
}

impl FakeOpenAi {
    pub async fn start() -> Self {
        let state = Arc::new(FakeState {
            calls: AtomicUsize::new(0),
            inputs: AtomicUsize::new(0),
            fail_next: AtomicUsize::new(0),
            hold_next_ms: AtomicU64::new(0),
            serve_before_failing: AtomicU64::new(u64::MAX),
        });
        let router = axum::Router::new()
            .route("/v1/embeddings", post(embeddings))
            .with_state(Arc::clone(&state));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a free port");
        let addr = listener.local_addr().expect("local addr");
        tokio::spawn(async move { axum::serve(listener, router).await.expect("fake OpenAI runs") });
        Self {
            base_url: format!("http://{addr}/v1"),
            state,
        }
    }

    /// How many embeddings calls it has had.
    pub fn calls(&self) -> usize {
        self.state.calls.load(Ordering::SeqCst)
    }

    /// How many texts it has embedded, over every call.
    pub fn inputs(&self) -> usize {
        self.state.inputs.load(Ordering::SeqCst)
    }

    /// Makes the next call wait this long before it answers.
    pub fn hold_next(&self, wait: Duration) {
        let ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
        self.state.hold_next_ms.store(ms, Ordering::SeqCst);
    }

    /// Serves the next `n` calls, then fails every call with a 503 until [`FakeOpenAi::heal`].
    pub fn fail_after(&self, n: u64) {
        self.state.serve_before_failing.store(n, Ordering::SeqCst);
    }

    /// Serves every call again (undoes [`FakeOpenAi::fail_after`]).
    pub fn heal(&self) {
        self.state.serve_before_failing.store(u64::MAX, Ordering::SeqCst);
    }

    /// Makes the next `n` calls fail with a 503.
    pub fn fail_next(&self, n: usize) {
        self.state.fail_next.store(n, Ordering::SeqCst);
    }
}
