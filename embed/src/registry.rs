use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;

use crate::local::{self, LocalEmbedder};
use crate::openai::OpenAiEmbedder;
use crate::{EmbedError, Embedder};

/// The model used when a project configures none.
pub const DEFAULT_MODEL: &str = "local/all-minilm-l6-v2";

/// OpenAI models listed by [`Embedders::models`], with their dimensions. Any other
/// `openai/<name>` is accepted too (Ollama, vLLM and TEI serve their own names).
const KNOWN_OPENAI_MODELS: &[(&str, usize, &str)] = &[
    (
        "text-embedding-3-small",
        1536,
        "openai's small third-generation embedding model",
    ),
    (
        "text-embedding-3-large",
        3072,
        "openai's large third-generation embedding model",
    ),
    (
        "text-embedding-ada-002",
        1536,
        "openai's second-generation embedding model",
    ),
];

/// How to reach the embedding providers.
#[derive(Clone)]
pub struct EmbedConfig {
    /// Where local models live, one folder per model (`<models_dir>/all-minilm-l6-v2/`).
    pub models_dir: PathBuf,
    /// Base URL of the OpenAI-compatible API, without `/embeddings`.
    pub openai_base_url: String,
    /// Sent as `Authorization: Bearer <key>` when set.
    pub openai_api_key: Option<String>,
    /// Limit for one HTTP request to the provider, response body included.
    pub timeout: Duration,
    /// Retries after the first attempt on 429, 5xx, connect errors and timeouts.
    pub max_retries: u32,
    /// Texts per request to the provider.
    pub batch_size: usize,
    /// First retry delay; it doubles per retry (with jitter) up to a cap.
    pub retry_base_delay: Duration,
}

impl Default for EmbedConfig {
    fn default() -> Self {
        Self {
            models_dir: PathBuf::from("models"),
            openai_base_url: "https://api.openai.com/v1".to_owned(),
            openai_api_key: None,
            timeout: Duration::from_secs(30),
            max_retries: 3,
            batch_size: 256,
            retry_base_delay: Duration::from_millis(250),
        }
    }
}

// Hand-written so the API key never reaches a log.
impl std::fmt::Debug for EmbedConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbedConfig")
            .field("models_dir", &self.models_dir)
            .field("openai_base_url", &self.openai_base_url)
            .field("openai_api_key", &self.openai_api_key.as_ref().map(|_| "<redacted>"))
            .field("timeout", &self.timeout)
            .field("max_retries", &self.max_retries)
            .field("batch_size", &self.batch_size)
            .field("retry_base_delay", &self.retry_base_delay)
            .finish()
    }
}

/// A model as listed to users.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ModelInfo {
    /// The name to configure, `provider/model`.
    #[schema(example = "local/all-minilm-l6-v2")]
    pub name: String,
    /// `local` or `openai`.
    pub provider: String,
    /// The vectors' dimension, when known before the first call.
    pub dimension: Option<usize>,
    /// Whether the model can be used right now: files installed, or a provider configured.
    pub available: bool,
    /// One line about the model.
    pub description: String,
}

/// The registry of embedding models: resolves `provider/model` names and embeds.
///
/// Cheap to share behind an `Arc`; the local model is loaded once, on first use, and
/// each OpenAI-compatible model remembers its dimension after its first call.
pub struct Embedders {
    config: EmbedConfig,
    http: reqwest::Client,
    local: Arc<LocalEmbedder>,
    openai: Mutex<HashMap<String, Arc<OpenAiEmbedder>>>,
}

impl std::fmt::Debug for Embedders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Embedders")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Embedders {
    /// A registry for `config`. Nothing is loaded or contacted yet.
    pub fn new(config: EmbedConfig) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(config.timeout)
            .build()
            // Only a TLS backend that cannot initialise fails here; rustls with its
            // bundled roots reads no system configuration.
            .expect("the http client builds with rustls and a connect timeout");
        let local = Arc::new(LocalEmbedder::new(config.models_dir.join(local::MINILM_DIR)));
        Self {
            config,
            http,
            local,
            openai: Mutex::new(HashMap::new()),
        }
    }

    /// The configuration this registry was built from.
    pub fn config(&self) -> &EmbedConfig {
        &self.config
    }

    /// One vector per text, in order, from `model` (`provider/model`).
    pub async fn embed(&self, model: &str, texts: Vec<String>) -> Result<Vec<Vec<f32>>, EmbedError> {
        validate_texts(&texts)?;
        let embedder = self.embedder(model)?;
        embedder.embed(&texts).await
    }

    /// The dimension of `model`'s vectors; `Ok(None)` for an OpenAI-compatible model
    /// that is not listed and has not been called yet.
    pub fn dimension(&self, model: &str) -> Result<Option<usize>, EmbedError> {
        Ok(self.embedder(model)?.dimension())
    }

    /// The embedder behind `model`, for callers that keep it.
    pub fn embedder(&self, model: &str) -> Result<Arc<dyn Embedder>, EmbedError> {
        check_model_name(model)?;
        Ok(match model.split_once('/') {
            Some(("openai", name)) => self.openai_embedder(name),
            _ => self.local.clone(),
        })
    }

    /// The listed models: the local one and the well-known OpenAI ones.
    pub fn models(&self) -> Vec<ModelInfo> {
        let openai_configured = self.config.openai_api_key.is_some()
            || !self
                .config
                .openai_base_url
                .trim_end_matches('/')
                .ends_with("api.openai.com/v1");
        let mut models = vec![ModelInfo {
            name: DEFAULT_MODEL.to_owned(),
            provider: "local".to_owned(),
            dimension: Some(local::MINILM_DIMENSION),
            available: self.local.is_installed(),
            description: "sentence-transformers all-MiniLM-L6-v2, run in-process on the cpu (384 dimensions)"
                .to_owned(),
        }];
        models.extend(
            KNOWN_OPENAI_MODELS
                .iter()
                .map(|(name, dimension, description)| ModelInfo {
                    name: format!("openai/{name}"),
                    provider: "openai".to_owned(),
                    dimension: Some(*dimension),
                    available: openai_configured,
                    description: (*description).to_owned(),
                }),
        );
        models
    }

    fn openai_embedder(&self, name: &str) -> Arc<OpenAiEmbedder> {
        // A poisoned lock only means another thread panicked while inserting; the map
        // itself is still consistent.
        let mut models = self.openai.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(embedder) = models.get(name) {
            return Arc::clone(embedder);
        }
        let known = KNOWN_OPENAI_MODELS
            .iter()
            .find(|(known, ..)| *known == name)
            .map(|(_, dim, _)| *dim);
        let embedder = Arc::new(OpenAiEmbedder::new(self.http.clone(), &self.config, name, known));
        // Names come from requests: past a few dozen, a new one is not kept (it learns
        // its dimension again on each use), so no stream of names can grow the map.
        if models.len() < MAX_KEPT_OPENAI_MODELS {
            models.insert(name.to_owned(), Arc::clone(&embedder));
        }
        embedder
    }
}

/// OpenAI-compatible models whose embedder (and the dimension it learned) is kept.
const MAX_KEPT_OPENAI_MODELS: usize = 64;
/// The longest model name taken.
const MAX_MODEL_NAME: usize = 128;

/// A model name as OpenAI-compatible servers spell them (`text-embedding-3-small`,
/// `nomic-ai/nomic-embed-text-v1.5`, `mxbai-embed-large:latest`): at most 128 bytes of
/// letters, digits and `. _ - : / @ +`.
fn check_openai_name(name: &str) -> Result<(), EmbedError> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || "._-:/@+".contains(c);
    if name.len() > MAX_MODEL_NAME || !name.chars().all(allowed) {
        let shown: String = name.chars().take(40).collect();
        return Err(EmbedError::UnknownModel(format!(
            "invalid model name \"openai/{shown}{}\": at most {MAX_MODEL_NAME} bytes of letters, digits and . _ - : / @ +",
            if shown.len() < name.len() { "…" } else { "" }
        )));
    }
    Ok(())
}

fn local_model_names() -> Vec<String> {
    vec![DEFAULT_MODEL.to_owned()]
}

fn unknown_model(model: &str) -> EmbedError {
    let listed: Vec<String> = KNOWN_OPENAI_MODELS
        .iter()
        .map(|(name, ..)| format!("openai/{name}"))
        .collect();
    EmbedError::UnknownModel(format!(
        "unknown embedding model \"{model}\"; use \"provider/model\" with provider \"local\" ({}) or \"openai\" \
         (any model the openai-compatible endpoint serves, e.g. {})",
        local_model_names().join(", "),
        listed.join(", ")
    ))
}

/// Rejects what no provider can embed: no texts, or a text with nothing but whitespace.
fn validate_texts(texts: &[String]) -> Result<(), EmbedError> {
    if texts.is_empty() {
        return Err(EmbedError::Invalid(
            "no texts to embed; send at least one non-empty text".to_owned(),
        ));
    }
    if let Some(index) = texts.iter().position(|text| text.trim().is_empty()) {
        return Err(EmbedError::Invalid(format!(
            "text {index} is empty; every text to embed needs at least one non-whitespace character"
        )));
    }
    Ok(())
}

/// Refuses a model name no embedder of this build serves (`local/<name>` of a local
/// model, or `openai/<model>`), as a request naming it would be refused.
pub fn check_model_name(model: &str) -> Result<(), EmbedError> {
    match model.split_once('/') {
        Some(("local", name)) if name == local::MINILM_DIR => Ok(()),
        Some(("local", name)) => Err(EmbedError::UnknownModel(format!(
            "unknown local embedding model \"{name}\"; the local models are: {}",
            local_model_names().join(", ")
        ))),
        Some(("openai", name)) if !name.trim().is_empty() => check_openai_name(name),
        _ => Err(unknown_model(model)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry() -> Embedders {
        Embedders::new(EmbedConfig {
            models_dir: std::env::temp_dir().join("quiver-embed-no-models-here"),
            ..EmbedConfig::default()
        })
    }

    #[test]
    fn unknown_provider_is_rejected_with_the_providers_that_exist() {
        let err = registry()
            .dimension("cohere/embed-v3")
            .expect_err("cohere is not a provider");
        let EmbedError::UnknownModel(message) = err else {
            panic!("expected UnknownModel, got {err:?}")
        };
        assert!(message.contains("cohere/embed-v3"), "{message}");
        assert!(message.contains("local/all-minilm-l6-v2"), "{message}");
        assert!(message.contains("openai/text-embedding-3-small"), "{message}");
    }

    #[test]
    fn name_without_provider_is_an_unknown_model() {
        for name in ["all-minilm-l6-v2", "", "openai/", "/x"] {
            let err = registry().dimension(name).expect_err("no provider");
            assert!(matches!(err, EmbedError::UnknownModel(_)), "{name:?}: {err:?}");
        }
    }

    #[test]
    fn unknown_local_model_lists_the_local_models() {
        let err = registry().dimension("local/bge-small").expect_err("not a local model");
        let EmbedError::UnknownModel(message) = err else {
            panic!("expected UnknownModel, got {err:?}")
        };
        assert!(
            message.contains("bge-small") && message.contains("local/all-minilm-l6-v2"),
            "{message}"
        );
    }

    #[test]
    fn any_openai_model_name_is_accepted_and_known_ones_have_a_dimension() {
        let registry = registry();
        assert_eq!(
            registry.dimension("openai/text-embedding-3-large").expect("known"),
            Some(3072)
        );
        assert_eq!(registry.dimension("openai/nomic-embed-text").expect("any name"), None);
        assert_eq!(registry.dimension(DEFAULT_MODEL).expect("local"), Some(384));
    }

    /// Model names come from requests: a name no server spells is refused, and no
    /// stream of new names grows what the registry keeps.
    #[test]
    fn openai_model_names_are_checked_and_only_so_many_kept() {
        let registry = registry();
        for name in ["nomic-ai/nomic-embed-text-v1.5", "mxbai-embed-large:latest", "a@b+c_d"] {
            assert_eq!(registry.dimension(&format!("openai/{name}")).expect(name), None);
        }
        for name in [
            "x".repeat(129),
            "has space".into(),
            "tab\t".into(),
            "é".into(),
            "a\"b".into(),
        ] {
            let err = registry.dimension(&format!("openai/{name}")).expect_err("refused");
            let EmbedError::UnknownModel(message) = err else {
                panic!("expected UnknownModel, got {err:?}")
            };
            assert!(message.contains("invalid model name"), "{message}");
            assert!(message.len() < 200, "the name is cut short in the message: {message}");
        }
        assert_eq!(
            registry
                .dimension(&format!("openai/{}", "x".repeat(128)))
                .expect("128 bytes"),
            None
        );
        for i in 0..1_000 {
            registry.embedder(&format!("openai/model-{i}")).expect("a name");
        }
        let kept = registry.openai.lock().expect("lock").len();
        assert_eq!(kept, MAX_KEPT_OPENAI_MODELS);
        // A kept embedder is the same one each time.
        let first = registry
            .embedder("openai/nomic-ai/nomic-embed-text-v1.5")
            .expect("kept");
        let again = registry
            .embedder("openai/nomic-ai/nomic-embed-text-v1.5")
            .expect("kept");
        assert!(Arc::ptr_eq(&first, &again));
    }

    #[test]
    fn models_lists_local_and_openai_models_with_availability() {
        let models = registry().models();
        let names: Vec<&str> = models.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "local/all-minilm-l6-v2",
                "openai/text-embedding-3-small",
                "openai/text-embedding-3-large",
                "openai/text-embedding-ada-002"
            ]
        );
        assert!(!models[0].available, "no model files in an empty dir");
        assert!(!models[1].available, "no api key and the default openai url");
        assert_eq!(models[2].dimension, Some(3072));
    }

    #[tokio::test]
    async fn empty_input_is_invalid_before_any_provider_is_called() {
        let registry = registry();
        let err = registry.embed(DEFAULT_MODEL, vec![]).await.expect_err("no texts");
        assert!(matches!(err, EmbedError::Invalid(_)), "{err:?}");
        let err = registry
            .embed(DEFAULT_MODEL, vec!["fine".into(), "  ".into()])
            .await
            .expect_err("blank text");
        let EmbedError::Invalid(message) = err else {
            panic!("expected Invalid, got {err:?}")
        };
        assert!(message.contains("text 1"), "{message}");
    }

    #[test]
    fn debug_output_hides_the_api_key() {
        let config = EmbedConfig {
            openai_api_key: Some("sk-secret".into()),
            ..EmbedConfig::default()
        };
        assert!(!format!("{config:?}").contains("sk-secret"));
    }
}
