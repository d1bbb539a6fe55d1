use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use candle_core::{D, DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};
use tokio::sync::OnceCell;

use crate::{EmbedError, Embedder};

/// The folder under `models_dir`, also the model part of `local/all-minilm-l6-v2`.
pub const MINILM_DIR: &str = "all-minilm-l6-v2";
/// all-MiniLM-L6-v2's output dimension.
pub const MINILM_DIMENSION: usize = 384;
/// The files the model needs, all in [`MINILM_DIR`], each with the SHA-256 it has in
/// the release `quiver models pull` takes (which checks them: a mirror cannot serve
/// other weights, and a damaged file is fetched again).
pub const MINILM_FILES: [(&str, &str); 3] = [
    (
        "model.safetensors",
        "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    ),
    (
        "config.json",
        "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
    ),
    (
        "tokenizer.json",
        "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
    ),
];
/// sentence-transformers' `max_seq_length` for this model; longer texts are truncated.
const MAX_TOKENS: usize = 256;
/// Texts per forward pass: large enough to amortise, small enough to keep padding and memory low.
const BATCH_SIZE: usize = 32;

/// sentence-transformers all-MiniLM-L6-v2 run in-process on the CPU: BERT, mean pooling
/// over the attention mask, L2 normalisation; 384 dimensions.
///
/// The model is loaded on first use and shared by all callers; inference runs on the
/// blocking thread pool, never on the async executor, one batch at a time: a forward
/// pass already keeps every core busy, and callers' batches take turns in the order
/// they came, so a long insert does not hold up a search's query for all its batches,
/// and a request whose client went away stops after its batch in hand.
pub struct LocalEmbedder {
    dir: PathBuf,
    model: OnceCell<Arc<MiniLm>>,
    turns: tokio::sync::Semaphore,
}

impl std::fmt::Debug for LocalEmbedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalEmbedder")
            .field("dir", &self.dir)
            .field("loaded", &self.model.initialized())
            .finish()
    }
}

impl LocalEmbedder {
    /// An embedder reading its files from `dir` (`<models_dir>/all-minilm-l6-v2`) when first used.
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            model: OnceCell::new(),
            turns: tokio::sync::Semaphore::new(1),
        }
    }

    /// Whether all model files are in place.
    pub fn is_installed(&self) -> bool {
        missing_files(&self.dir).is_empty()
    }

    /// The loaded model; a failed load is not cached, so installing the files later works
    /// without a restart.
    async fn model(&self) -> Result<Arc<MiniLm>, EmbedError> {
        self.model
            .get_or_try_init(|| async {
                let missing = missing_files(&self.dir);
                if !missing.is_empty() {
                    return Err(model_missing(&self.dir, &missing));
                }
                let dir = self.dir.clone();
                let loaded = tokio::task::spawn_blocking(move || MiniLm::load(&dir))
                    .await
                    .map_err(|err| EmbedError::Internal(anyhow::anyhow!("loading the local model panicked: {err}")))?;
                let model = loaded.map_err(|err| {
                    EmbedError::Unavailable(format!(
                        "the local embedding model in {} could not be loaded ({err:#}); run `{}` to replace its files",
                        self.dir.display(),
                        pull_command(&self.dir)
                    ))
                })?;
                tracing::info!(dir = %self.dir.display(), "local embedding model loaded");
                Ok(Arc::new(model))
            })
            .await
            .cloned()
    }
}

#[async_trait::async_trait]
impl Embedder for LocalEmbedder {
    fn name(&self) -> &str {
        crate::DEFAULT_MODEL
    }

    fn dimension(&self) -> Option<usize> {
        Some(MINILM_DIMENSION)
    }

    async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let model = self.model().await?;
        let mut vectors = Vec::with_capacity(texts.len());
        for batch in texts.chunks(BATCH_SIZE) {
            let _turn = self
                .turns
                .acquire()
                .await
                .map_err(|err| EmbedError::Internal(anyhow::anyhow!("the local model's turns closed: {err}")))?;
            let (model, batch) = (Arc::clone(&model), batch.to_vec());
            let embedded = tokio::task::spawn_blocking(move || model.embed_batch(&batch))
                .await
                .map_err(|err| EmbedError::Internal(anyhow::anyhow!("local embedding panicked: {err}")))?
                .map_err(|err| EmbedError::Internal(err.context("embedding with the local model")))?;
            vectors.extend(embedded);
        }
        Ok(vectors)
    }
}

/// The loaded model and its tokenizer.
struct MiniLm {
    bert: BertModel,
    tokenizer: Tokenizer,
    device: Device,
}

impl MiniLm {
    fn load(dir: &Path) -> anyhow::Result<Self> {
        let device = Device::Cpu;
        let config_text = std::fs::read_to_string(dir.join("config.json")).context("reading config.json")?;
        let config: Config = serde_json::from_str(&config_text).context("parsing config.json")?;
        let weights = candle_core::safetensors::load(dir.join("model.safetensors"), &device)
            .context("reading model.safetensors")?;
        let bert = BertModel::load(VarBuilder::from_tensors(weights, DType::F32, &device), &config)
            .context("building the bert model from model.safetensors")?;

        let mut tokenizer = Tokenizer::from_file(dir.join("tokenizer.json"))
            .map_err(|err| anyhow::anyhow!("parsing tokenizer.json: {err}"))?;
        // tokenizer.json pads every text to 128 tokens and truncates there; pad each batch
        // to its longest text instead, and truncate where sentence-transformers does.
        let padding = PaddingParams {
            strategy: PaddingStrategy::BatchLongest,
            ..tokenizer.get_padding().cloned().unwrap_or_default()
        };
        tokenizer.with_padding(Some(padding));
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: MAX_TOKENS,
                ..TruncationParams::default()
            }))
            .map_err(|err| anyhow::anyhow!("configuring truncation: {err}"))?;
        Ok(Self {
            bert,
            tokenizer,
            device,
        })
    }

    /// Mean-pooled, L2-normalised embeddings for one batch.
    fn embed_batch(&self, texts: &[String]) -> anyhow::Result<Vec<Vec<f32>>> {
        let encodings = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|err| anyhow::anyhow!("tokenizing: {err}"))?;
        let rows = encodings.len();
        let columns = encodings.first().map_or(0, |encoding| encoding.get_ids().len());
        let flat = |pick: fn(&tokenizers::Encoding) -> &[u32]| -> Vec<u32> {
            encodings
                .iter()
                .flat_map(|encoding| pick(encoding).iter().copied())
                .collect()
        };
        let ids = Tensor::from_vec(flat(tokenizers::Encoding::get_ids), (rows, columns), &self.device)?;
        let type_ids = Tensor::from_vec(flat(tokenizers::Encoding::get_type_ids), (rows, columns), &self.device)?;
        let mask = Tensor::from_vec(
            flat(tokenizers::Encoding::get_attention_mask),
            (rows, columns),
            &self.device,
        )?;

        let hidden = self.bert.forward(&ids, &type_ids, Some(&mask))?; // (rows, columns, 384)
        let mask = mask.to_dtype(DType::F32)?.unsqueeze(D::Minus1)?; // (rows, columns, 1)
        let summed = hidden.broadcast_mul(&mask)?.sum(1)?; // (rows, 384)
        let counts = mask.sum(1)?.clamp(1e-9, f32::MAX)?; // (rows, 1)
        let mean = summed.broadcast_div(&counts)?;
        let norms = mean.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?.clamp(1e-12, f32::MAX)?;
        Ok(mean.broadcast_div(&norms)?.to_vec2::<f32>()?)
    }
}

fn missing_files(dir: &Path) -> Vec<&'static str> {
    MINILM_FILES
        .into_iter()
        .map(|(file, _)| file)
        .filter(|file| !dir.join(file).is_file())
        .collect()
}

/// The command that installs the model's files in `dir` (`<models dir>/all-minilm-l6-v2`).
fn pull_command(dir: &Path) -> String {
    format!(
        "quiver models pull {} --models-dir {}",
        crate::DEFAULT_MODEL,
        dir.parent().unwrap_or(dir).display()
    )
}

fn model_missing(dir: &Path, missing: &[&str]) -> EmbedError {
    EmbedError::ModelMissing(format!(
        "the local embedding model {} is not installed ({} missing in {}); run `{}` (or place \
         model.safetensors, config.json and tokenizer.json in {})",
        crate::DEFAULT_MODEL,
        missing.join(", "),
        dir.display(),
        pull_command(dir),
        dir.display()
    ))
}
