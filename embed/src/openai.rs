use std::sync::OnceLock;
use std::time::Duration;

use rand::Rng;
use reqwest::StatusCode;
use reqwest::header::{HeaderMap, RETRY_AFTER};
use serde::Deserialize;

use crate::{EmbedConfig, EmbedError, Embedder};

/// Longest wait between two attempts, also for a provider's `Retry-After`.
const MAX_BACKOFF: Duration = Duration::from_secs(20);
/// How much of a provider's error body goes into our message.
const MAX_PROVIDER_MESSAGE: usize = 300;
/// Bytes of text in one request to the provider, besides `batch_size` texts: about
/// 100,000 tokens of English, a third of what OpenAI takes in one request (300,000),
/// so a batch of long documents is sent in several requests instead of refused.
const MAX_BATCH_BYTES: usize = 400_000;

/// An OpenAI-compatible `POST {base_url}/embeddings` endpoint serving one model.
pub struct OpenAiEmbedder {
    /// `openai/<model>`.
    name: String,
    /// The model name sent to the provider.
    model: String,
    url: String,
    /// `url` as messages show it: any credentials in it redacted.
    shown_url: String,
    api_key: Option<String>,
    http: reqwest::Client,
    timeout: Duration,
    max_retries: u32,
    batch_size: usize,
    retry_base_delay: Duration,
    /// Known up front for listed models, otherwise learned from the first response.
    dimension: OnceLock<usize>,
}

impl std::fmt::Debug for OpenAiEmbedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiEmbedder")
            .field("name", &self.name)
            .field("url", &self.shown_url)
            .field("dimension", &self.dimension.get())
            .finish_non_exhaustive()
    }
}

/// The provider's answer; only the fields we use.
#[derive(Deserialize)]
struct EmbeddingsResponse {
    data: Vec<EmbeddingItem>,
}

#[derive(Deserialize)]
struct EmbeddingItem {
    index: usize,
    // f64 so that a value beyond f32's range is caught instead of becoming infinity.
    embedding: Vec<f64>,
}

/// Why one attempt failed, and whether another attempt may help.
enum AttemptError {
    /// The provider answered with this status and message.
    Status {
        status: StatusCode,
        message: String,
        retry_after: Option<Duration>,
    },
    /// No answer: connection refused, reset, or timed out.
    Transport(String),
    /// An answer that is not what the API promises; retrying will not fix it.
    Malformed(String),
}

impl OpenAiEmbedder {
    /// An embedder for `model` on the endpoint in `config`; `dimension` when known up front.
    pub fn new(http: reqwest::Client, config: &EmbedConfig, model: &str, dimension: Option<usize>) -> Self {
        let known = OnceLock::new();
        if let Some(dimension) = dimension {
            let _ = known.set(dimension);
        }
        let url = format!("{}/embeddings", config.openai_base_url.trim_end_matches('/'));
        Self {
            name: format!("openai/{model}"),
            model: model.to_owned(),
            shown_url: quiver_common::redact::redact_url(&url),
            url,
            api_key: config.openai_api_key.clone(),
            http,
            timeout: config.timeout,
            max_retries: config.max_retries,
            batch_size: config.batch_size.max(1),
            retry_base_delay: config.retry_base_delay,
            dimension: known,
        }
    }

    /// One batch, retried on 429, 5xx and transport errors.
    async fn embed_batch(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let attempts = self.max_retries + 1;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let err = match self.attempt(texts).await {
                Ok(vectors) => return Ok(vectors),
                Err(err) => err,
            };
            let retryable = match &err {
                AttemptError::Status { status, .. } => {
                    *status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error()
                }
                AttemptError::Transport(_) => true,
                AttemptError::Malformed(_) => false,
            };
            if !retryable || attempt >= attempts {
                return Err(self.final_error(err, attempt));
            }
            let delay = match &err {
                AttemptError::Status {
                    retry_after: Some(wait),
                    ..
                } => (*wait).min(MAX_BACKOFF),
                _ => self.backoff(attempt),
            };
            tracing::warn!(
                model = %self.name,
                attempt,
                delay_ms = delay.as_millis() as u64,
                error = %self.describe(&err),
                "embedding request failed, retrying"
            );
            tokio::time::sleep(delay).await;
        }
    }

    async fn attempt(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, AttemptError> {
        let mut request = self
            .http
            .post(&self.url)
            .timeout(self.timeout)
            .json(&serde_json::json!({ "model": self.model, "input": texts }));
        if let Some(key) = &self.api_key {
            request = request.bearer_auth(key);
        }
        let response = request
            .send()
            .await
            .map_err(|err| AttemptError::Transport(transport_message(&err)))?;
        let status = response.status();
        let retry_after = parse_retry_after(response.headers());
        // The body is read under the same request timeout.
        let body = response
            .bytes()
            .await
            .map_err(|err| AttemptError::Transport(transport_message(&err)))?;
        if !status.is_success() {
            return Err(AttemptError::Status {
                status,
                message: provider_message(&body),
                retry_after,
            });
        }
        let parsed: EmbeddingsResponse = serde_json::from_slice(&body)
            .map_err(|err| AttemptError::Malformed(format!("the response is not an embeddings list ({err})")))?;
        validate_response(parsed, texts.len()).map_err(AttemptError::Malformed)
    }

    /// Exponential backoff with jitter: a random wait in [d/2, d] for d = base * 2^(attempt-1).
    fn backoff(&self, attempt: u32) -> Duration {
        let exponential = self.retry_base_delay.saturating_mul(1 << (attempt - 1).min(16));
        let capped = exponential.min(MAX_BACKOFF);
        capped.mul_f64(rand::rng().random_range(0.5..=1.0))
    }

    fn describe(&self, err: &AttemptError) -> String {
        match err {
            AttemptError::Status { status, message, .. } => format!("status {status}: {message}"),
            AttemptError::Transport(message) | AttemptError::Malformed(message) => message.clone(),
        }
    }

    fn final_error(&self, err: AttemptError, attempts: u32) -> EmbedError {
        let tries = if attempts == 1 {
            "1 attempt".to_owned()
        } else {
            format!("{attempts} attempts")
        };
        let (name, url) = (&self.name, &self.shown_url);
        match err {
            // This server's credentials: the tenant can do nothing about them, and the
            // provider's message may quote part of the key. The log has it.
            AttemptError::Status { status, message, .. }
                if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN =>
            {
                tracing::error!(model = %name, url = %url, %status, provider_message = %message,
                    "the embedding provider refused this server's credentials");
                EmbedError::Upstream(format!(
                    "the embedding provider for {name} refused this server's credentials ({status}); the operator \
                     must check its API key"
                ))
            }
            // The provider refused the input itself (a text over the model's context
            // length, most often): the request's fault, not the provider's.
            AttemptError::Status { status, message, .. }
                if matches!(
                    status,
                    StatusCode::BAD_REQUEST | StatusCode::PAYLOAD_TOO_LARGE | StatusCode::UNPROCESSABLE_ENTITY
                ) =>
            {
                EmbedError::Invalid(format!(
                    "the embedding provider for {name} refused the input ({status}): {message}"
                ))
            }
            AttemptError::Status { status, message, .. } => EmbedError::Upstream(format!(
                "embedding provider for {name} at {url} answered {status} after {tries}: {message}"
            )),
            AttemptError::Transport(message) => EmbedError::Unavailable(format!(
                "embedding provider for {name} at {url} is unreachable after {tries}: {message}; check the openai \
                 base url and that the provider is running"
            )),
            AttemptError::Malformed(message) => EmbedError::Upstream(format!(
                "embedding provider for {name} at {url} sent an invalid response: {message}"
            )),
        }
    }

    /// Remembers the first dimension seen and rejects a provider that changes it.
    fn check_dimension(&self, vectors: &[Vec<f32>]) -> Result<(), EmbedError> {
        let Some(found) = vectors.first().map(Vec::len) else {
            return Ok(());
        };
        let expected = *self.dimension.get_or_init(|| found);
        if found != expected {
            return Err(EmbedError::Upstream(format!(
                "embedding provider for {} returned {found}-dimensional vectors, but the model's dimension is \
                 {expected}; check that the endpoint serves the model it is named after",
                self.name
            )));
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl Embedder for OpenAiEmbedder {
    fn name(&self) -> &str {
        &self.name
    }

    fn dimension(&self) -> Option<usize> {
        self.dimension.get().copied()
    }

    async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let mut vectors = Vec::with_capacity(texts.len());
        for batch in batches(texts, self.batch_size, MAX_BATCH_BYTES) {
            let batch_vectors = self.embed_batch(batch).await?;
            self.check_dimension(&batch_vectors)?;
            vectors.extend(batch_vectors);
        }
        Ok(vectors)
    }
}

/// Consecutive runs of `texts` of at most `count` texts and, unless one text alone is
/// longer, at most `bytes` bytes.
fn batches(texts: &[String], count: usize, bytes: usize) -> impl Iterator<Item = &[String]> {
    let mut rest = texts;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut taken = 0;
        let mut size = 0;
        while taken < rest.len() && taken < count.max(1) {
            size += rest[taken].len();
            if taken > 0 && size > bytes {
                break;
            }
            taken += 1;
        }
        let (batch, after) = rest.split_at(taken);
        rest = after;
        Some(batch)
    })
}

/// Puts the vectors in input order and checks count, indices, dimensions and values.
fn validate_response(response: EmbeddingsResponse, expected: usize) -> Result<Vec<Vec<f32>>, String> {
    if response.data.len() != expected {
        return Err(format!("{} embeddings for {expected} texts", response.data.len()));
    }
    let mut slots: Vec<Option<Vec<f32>>> = vec![None; expected];
    let mut dimension = None;
    for item in response.data {
        let slot = slots
            .get_mut(item.index)
            .ok_or_else(|| format!("index {} is out of range for {expected} texts", item.index))?;
        if slot.is_some() {
            return Err(format!("index {} appears twice", item.index));
        }
        if item.embedding.is_empty() {
            return Err(format!("embedding {} is empty", item.index));
        }
        let dim = *dimension.get_or_insert(item.embedding.len());
        if item.embedding.len() != dim {
            return Err(format!(
                "embedding {} has {} values, the others have {dim}",
                item.index,
                item.embedding.len()
            ));
        }
        let vector: Vec<f32> = item.embedding.iter().map(|&value| value as f32).collect();
        if vector.iter().any(|value| !value.is_finite()) {
            return Err(format!(
                "embedding {} has a value that is not a finite 32-bit float",
                item.index
            ));
        }
        *slot = Some(vector);
    }
    // Every slot is filled: there are `expected` items, each in range and unique.
    Ok(slots.into_iter().flatten().collect())
}

fn parse_retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    // Only the delay-seconds form; an HTTP date falls back to our own backoff.
    value
        .parse::<f64>()
        .ok()
        .filter(|secs| secs.is_finite() && *secs >= 0.0)
        // Longer waits are cut to our longest anyway; a huge one would overflow.
        .map(|secs| Duration::from_secs_f64(secs.min(MAX_BACKOFF.as_secs_f64())))
}

/// The provider's own message: OpenAI's `{"error":{"message"}}`, Ollama's
/// `{"error":"..."}`, or the start of the body.
fn provider_message(body: &[u8]) -> String {
    let from_json = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|value| {
            let error = value.get("error")?;
            error
                .get("message")
                .and_then(serde_json::Value::as_str)
                .or_else(|| error.as_str())
                .map(str::to_owned)
        });
    let message = from_json.unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_owned());
    if message.is_empty() {
        return "(empty body)".to_owned();
    }
    match message.char_indices().nth(MAX_PROVIDER_MESSAGE) {
        Some((cut, _)) => format!("{}…", &message[..cut]),
        None => message,
    }
}

fn transport_message(err: &reqwest::Error) -> String {
    let kind = if err.is_timeout() {
        "timed out"
    } else if err.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    // The source chain says why (refused, dns, tls); reqwest's own text repeats the url.
    let mut cause = String::new();
    let mut source = std::error::Error::source(err);
    while let Some(inner) = source {
        cause = inner.to_string();
        source = inner.source();
    }
    if cause.is_empty() {
        kind.to_owned()
    } else {
        format!("{kind} ({cause})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(index: usize, embedding: Vec<f64>) -> EmbeddingItem {
        EmbeddingItem { index, embedding }
    }

    #[test]
    fn response_is_put_in_input_order() {
        let response = EmbeddingsResponse {
            data: vec![item(1, vec![1.0]), item(0, vec![0.0])],
        };
        assert_eq!(
            validate_response(response, 2).expect("valid"),
            vec![vec![0.0], vec![1.0]]
        );
    }

    #[test]
    fn response_with_wrong_count_duplicate_index_or_ragged_dimensions_is_rejected() {
        let cases = [
            (vec![item(0, vec![1.0])], "1 embeddings for 2 texts"),
            (vec![item(0, vec![1.0]), item(0, vec![1.0])], "appears twice"),
            (vec![item(0, vec![1.0]), item(5, vec![1.0])], "out of range"),
            (vec![item(0, vec![1.0]), item(1, vec![1.0, 2.0])], "has 2 values"),
            (vec![item(0, vec![]), item(1, vec![])], "is empty"),
            (vec![item(0, vec![1e300]), item(1, vec![1.0])], "finite"),
        ];
        for (data, expected) in cases {
            let err = validate_response(EmbeddingsResponse { data }, 2).expect_err(expected);
            assert!(err.contains(expected), "{err} should mention {expected}");
        }
    }

    #[test]
    fn provider_messages_are_extracted_from_openai_and_ollama_bodies() {
        assert_eq!(
            provider_message(br#"{"error":{"message":"bad key","type":"x"}}"#),
            "bad key"
        );
        assert_eq!(provider_message(br#"{"error":"model not found"}"#), "model not found");
        assert_eq!(provider_message(b"  gateway down \n"), "gateway down");
        assert_eq!(provider_message(b""), "(empty body)");
        assert!(provider_message("é".repeat(1000).as_bytes()).chars().count() <= MAX_PROVIDER_MESSAGE + 1);
    }

    #[test]
    fn retry_after_seconds_are_parsed_and_dates_ignored() {
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, "2".parse().expect("valid header"));
        assert_eq!(parse_retry_after(&headers), Some(Duration::from_secs(2)));
        headers.insert(
            RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().expect("valid header"),
        );
        assert_eq!(parse_retry_after(&headers), None);
        // Finite, and beyond what a Duration holds: cut to the longest wait.
        headers.insert(RETRY_AFTER, "1e300".parse().expect("valid header"));
        assert_eq!(parse_retry_after(&headers), Some(MAX_BACKOFF));
    }

    #[test]
    fn batches_hold_a_count_and_a_size_of_texts() {
        let texts: Vec<String> = ["aaaa", "bb", "cccccc", "d", "eeeeeeeeee", "f"]
            .into_iter()
            .map(str::to_owned)
            .collect();
        let sizes = |count, bytes| batches(&texts, count, bytes).map(<[String]>::len).collect::<Vec<_>>();
        assert_eq!(sizes(256, 1000), vec![6]);
        assert_eq!(sizes(4, 1000), vec![4, 2]);
        // Up to 8 bytes a batch; a text longer than that goes alone.
        assert_eq!(sizes(256, 8), vec![2, 2, 1, 1]);
        assert_eq!(batches(&[], 4, 8).count(), 0);
        let all: Vec<&String> = batches(&texts, 3, 7).flatten().collect();
        assert_eq!(all, texts.iter().collect::<Vec<_>>(), "every text once, in order");
    }
}
