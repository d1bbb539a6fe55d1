use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use quiver_common::telemetry::LogFormat;

use crate::{keys, serve};

/// Quiver: a multi-tenant vector database.
///
/// With no command, runs standalone: the control plane, the data plane and storage in
/// one process, on a SQLite file under --data-dir. Every flag can also be set through
/// the environment variable shown next to it.
#[derive(Debug, Parser)]
#[command(name = "quiver", version, args_conflicts_with_subcommands = true)]
pub struct Cli {
    /// How to write logs (to stderr): `pretty` for people, `json` for log collectors.
    #[arg(long, env = "QUIVER_LOG_FORMAT", default_value = "pretty", global = true)]
    pub log_format: LogFormat,

    #[command(subcommand)]
    command: Option<Command>,

    #[command(flatten)]
    standalone: StandaloneArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run everything in one process on SQLite (the default).
    Standalone(StandaloneArgs),
    /// Run the control plane of a cluster (accounts, projects, keys, plans) on Postgres.
    ControlPlane(ClusterArgs),
    /// Run one data-plane pod of a cluster (the public vector, document and query APIs).
    DataPlane(ClusterArgs),
    /// Apply pending database migrations and exit.
    Migrate(StorageArgs),
    /// Create, list and revoke API keys from the shell, for automation and first start.
    #[command(subcommand)]
    Keys(keys::KeysCommand),
    /// Fetch embedding models into the models directory.
    #[command(subcommand)]
    Models(ModelsCommand),
    /// Print a plane's OpenAPI document (JSON) on stdout.
    Openapi {
        /// Which plane: control-plane or data-plane.
        #[arg(value_parser = ["control-plane", "data-plane"])]
        plane: String,
    },
}

#[derive(Debug, Args)]
pub struct StandaloneArgs {
    /// Where standalone keeps its database, JWT secret and index snapshots; created if missing.
    #[arg(long, env = "QUIVER_DATA_DIR", default_value = "./quiver-data")]
    pub data_dir: PathBuf,
    /// Address of the data plane: the public vector, document and query APIs.
    #[arg(long, env = "QUIVER_DATA_ADDR", default_value = "127.0.0.1:8080")]
    pub data_addr: SocketAddr,
    /// Address of the control plane: accounts, projects, keys, and the console.
    #[arg(long, env = "QUIVER_CONTROL_ADDR", default_value = "127.0.0.1:8081")]
    pub control_addr: SocketAddr,
    /// Memory for vector indexes (e.g. 512MiB, 4GiB); the least used are evicted beyond it.
    #[arg(long, env = "QUIVER_INDEX_MEMORY", default_value = "1GiB", value_parser = parse_index_memory)]
    pub index_memory: u64,
    #[command(flatten)]
    pub snapshots: SnapshotArgs,
    #[command(flatten)]
    pub proxies: ProxyArgs,
    /// Fetch the default local embedding model in the background at start when it is
    /// missing (requests that need it get a 503 until it is there).
    #[arg(long, env = "QUIVER_PULL_MODELS", default_value_t = true, action = clap::ArgAction::Set)]
    pub pull_models: bool,
    /// The built web console to serve on the control address (default: console/dist
    /// when run from a checkout where it was built).
    #[arg(long, env = "QUIVER_CONSOLE_DIR")]
    pub console_dir: Option<PathBuf>,
    #[command(flatten)]
    pub embed: EmbedArgs,
}

#[derive(Debug, Subcommand)]
pub enum ModelsCommand {
    /// Download a local model's files (default: local/all-minilm-l6-v2) into --models-dir.
    Pull {
        /// The model, as `local/<name>`.
        #[arg(default_value = quiver_embed::DEFAULT_MODEL)]
        model: String,
        /// Where models live (a cluster's data-plane pods look in theirs). Default:
        /// <data dir>/models, where standalone looks.
        #[arg(long, env = "QUIVER_MODELS_DIR")]
        models_dir: Option<PathBuf>,
        /// Standalone's data directory, whose models/ folder is the default.
        #[arg(long, env = "QUIVER_DATA_DIR", default_value = "./quiver-data")]
        data_dir: PathBuf,
    },
}

/// Embedding providers.
#[derive(Debug, Args)]
pub struct EmbedArgs {
    /// Where local embedding models live (filled by `quiver models pull`). Default:
    /// <data dir>/models standalone, ./models in a cluster.
    #[arg(long, env = "QUIVER_MODELS_DIR")]
    pub models_dir: Option<PathBuf>,
    /// Base URL of the OpenAI-compatible embeddings API behind `openai/*` models (OpenAI,
    /// Azure, Ollama, vLLM, TEI).
    #[arg(long, env = "QUIVER_OPENAI_BASE_URL", default_value = "https://api.openai.com/v1")]
    pub openai_base_url: String,
    /// The embedding model used when a request names none (`provider/model`).
    #[arg(long, env = "QUIVER_DEFAULT_EMBEDDING_MODEL", default_value = quiver_embed::DEFAULT_MODEL)]
    pub default_embedding_model: String,
    /// The API key sent to that endpoint, if it needs one.
    #[arg(long, env = "OPENAI_API_KEY", hide_env_values = true)]
    pub openai_api_key: Option<String>,
    /// How long one embeddings call may take, in seconds (1 to 600), before it is retried.
    #[arg(long, env = "QUIVER_EMBED_TIMEOUT", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..=600))]
    pub embed_timeout: u64,
}

impl EmbedArgs {
    /// Refuses, at start, what every request would otherwise fail on: a default model
    /// no embedder serves, an OpenAI base URL that is not an http(s) URL.
    pub fn check(&self) -> anyhow::Result<()> {
        quiver_embed::check_model_name(&self.default_embedding_model)
            .map_err(|err| anyhow::anyhow!("{err}; choose another with --default-embedding-model"))?;
        if !is_http_url(&self.openai_base_url) {
            anyhow::bail!(
                "\"{}\" is not an http or https URL; set --openai-base-url to the API's base, e.g. https://api.openai.com/v1",
                quiver_common::redact::redact_url(&self.openai_base_url)
            );
        }
        Ok(())
    }

    pub fn config(&self, default_models_dir: PathBuf) -> quiver_embed::EmbedConfig {
        quiver_embed::EmbedConfig {
            models_dir: self.models_dir.clone().unwrap_or(default_models_dir),
            openai_base_url: self.openai_base_url.clone(),
            openai_api_key: self.openai_api_key.clone(),
            timeout: std::time::Duration::from_secs(self.embed_timeout),
            ..quiver_embed::EmbedConfig::default()
        }
    }
}

/// Whether `text` is an absolute http(s) URL with a host.
fn is_http_url(text: &str) -> bool {
    let Some((scheme, rest)) = text.split_once("://") else {
        return false;
    };
    matches!(scheme, "http" | "https")
        && !rest.is_empty()
        && !rest.starts_with('/')
        && !rest.contains(char::is_whitespace)
}

/// When a data-plane pod snapshots its indexes to the store, so they load fast (and
/// rebuilds worn graphs, on the same rounds).
#[derive(Debug, Clone, clap::Args)]
pub struct SnapshotArgs {
    /// Seconds between checks for indexes to snapshot and worn graphs to rebuild (0 turns
    /// both off).
    #[arg(long, env = "QUIVER_SNAPSHOT_INTERVAL", default_value_t = 30)]
    pub snapshot_interval: u64,
    /// Snapshot an index once this many changes (or an eighth of its records, if more)
    /// were applied since its last snapshot, or once a change is ten minutes old.
    #[arg(long, env = "QUIVER_SNAPSHOT_CHANGES", default_value_t = 1_000)]
    pub snapshot_changes: u64,
}

impl SnapshotArgs {
    pub fn policy(&self) -> quiver_engine::SnapshotPolicy {
        quiver_engine::SnapshotPolicy {
            interval: std::time::Duration::from_secs(self.snapshot_interval),
            min_changes: self.snapshot_changes.max(1),
            ..quiver_engine::SnapshotPolicy::default()
        }
    }
}

/// Who is in front of the data plane.
#[derive(Debug, Clone, clap::Args)]
pub struct ProxyArgs {
    /// Proxies in front of the planes that append `X-Forwarded-For`, as their own
    /// addresses or networks only they are in (`10.42.7.0/28,192.168.1.1`): a request
    /// from one is taken to come from the client the header names, so that each client
    /// behind them has a budget of refused API keys (data plane) and of sign-ins
    /// (control plane) of its own. Never a range holding other hosts, which could write
    /// the header themselves. Empty: the connection's address.
    #[arg(long, env = "QUIVER_TRUSTED_PROXIES", default_value = "")]
    pub trusted_proxies: quiver_data_plane::client::TrustedProxies,
    /// Web pages allowed to call the data plane from a browser (CORS): `*` for any (API
    /// keys and project tokens are headers a page sends itself, never cookies), a
    /// comma-separated list of origins (`https://app.example.com`), or `none`.
    #[arg(long, env = "QUIVER_CORS_ORIGINS", default_value = "*")]
    pub cors_origins: quiver_data_plane::cors::CorsOrigins,
}

/// Parses a size: plain bytes, or a number with KiB, MiB or GiB.
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (number, unit) = text
        .find(|c: char| !c.is_ascii_digit())
        .map_or((text, ""), |at| text.split_at(at));
    let scale: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "K" | "KB" => 1 << 10,
        "MiB" | "M" | "MB" => 1 << 20,
        "GiB" | "G" | "GB" => 1 << 30,
        other => return Err(format!("unknown unit \"{other}\": use KiB, MiB or GiB")),
    };
    let number: u64 = number
        .parse()
        .map_err(|_| format!("\"{text}\" is not a size like 512MiB"))?;
    number
        .checked_mul(scale)
        .filter(|bytes| *bytes > 0)
        .ok_or_else(|| format!("\"{text}\" is not a usable size"))
}

/// The least `--index-memory` a data plane takes: less is more likely a unit left off
/// than a plan (a namespace of 10,000 384-d vectors weighs about 14 MiB in it).
const MIN_INDEX_MEMORY: u64 = 64 << 20;

fn parse_index_memory(text: &str) -> Result<u64, String> {
    let bytes = parse_bytes(text)?;
    if bytes < MIN_INDEX_MEMORY {
        return Err(format!(
            "{text} is too little for vector indexes: give at least 64MiB (a namespace of 10,000 384-d vectors weighs about 14 MiB in it)"
        ));
    }
    Ok(bytes)
}

#[derive(Debug, Args)]
pub struct ClusterArgs {
    /// The Postgres database that holds the catalog and the records.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: String,
    /// The Redis that carries notices (key revocations, plan changes) between pods.
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: String,
    /// Prefix of every Redis key and channel, to share one Redis between deployments.
    #[arg(long, env = "QUIVER_BUS_PREFIX", default_value = "quiver:")]
    pub bus_prefix: String,
    /// The secret (at least 32 bytes) that signs sessions and project tokens; the same on every pod.
    #[arg(long, env = "QUIVER_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: String,
    /// Address to listen on.
    #[arg(long, env = "QUIVER_ADDR", default_value = "0.0.0.0:8080")]
    pub addr: SocketAddr,
    /// The data-plane pods the deployment runs: until a pod has counted the live pods by
    /// their heartbeats in Redis (a pod that starts while Redis is away), it enforces
    /// this share of each project's quota alone.
    #[arg(long, env = "QUIVER_EXPECTED_PODS", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub expected_pods: u32,
    /// Memory for vector indexes on a data-plane pod (e.g. 512MiB, 4GiB).
    #[arg(long, env = "QUIVER_INDEX_MEMORY", default_value = "1GiB", value_parser = parse_index_memory)]
    pub index_memory: u64,
    #[command(flatten)]
    pub snapshots: SnapshotArgs,
    #[command(flatten)]
    pub proxies: ProxyArgs,
    /// The data plane's public URL, shown on projects as `api_base_url` (control plane).
    #[arg(long, env = "QUIVER_PUBLIC_DATA_URL", default_value = "http://localhost:8080")]
    pub public_data_url: String,
    /// The built web console the control plane serves at `/`.
    #[arg(long, env = "QUIVER_CONSOLE_DIR")]
    pub console_dir: Option<PathBuf>,
    #[command(flatten)]
    pub embed: EmbedArgs,
}

#[derive(Debug, Args)]
pub struct StorageArgs {
    /// A Postgres database (cluster mode). When absent, standalone's SQLite file under --data-dir.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Standalone's data dir, used when no --database-url is given.
    #[arg(long, env = "QUIVER_DATA_DIR", default_value = "./quiver-data")]
    pub data_dir: PathBuf,
}

impl StorageArgs {
    /// The database URL these arguments name, creating standalone's data dir if needed.
    pub fn url(&self) -> anyhow::Result<String> {
        match &self.database_url {
            Some(url) => Ok(url.clone()),
            None => serve::prepare_data_dir(&self.data_dir),
        }
    }
}

impl Cli {
    pub async fn run(self) -> anyhow::Result<()> {
        match self.command {
            None => serve::standalone(self.standalone).await,
            Some(Command::Standalone(args)) => serve::standalone(args).await,
            Some(Command::ControlPlane(args)) => serve::cluster(serve::Plane::Control, args).await,
            Some(Command::DataPlane(args)) => serve::cluster(serve::Plane::Data, args).await,
            Some(Command::Migrate(args)) => {
                let store = serve::open_store(&args.url()?).await?;
                tracing::info!(backend = store.backend(), "migrations applied");
                store.close().await;
                Ok(())
            }
            Some(Command::Keys(command)) => command.run().await,
            Some(Command::Models(ModelsCommand::Pull {
                model,
                models_dir,
                data_dir,
            })) => {
                let models_dir = models_dir.unwrap_or_else(|| data_dir.join("models"));
                let dir = quiver_embed::pull(&models_dir, &model).await?;
                println!("{model} is in {}", dir.display());
                Ok(())
            }
            Some(Command::Openapi { plane }) => {
                let spec = match plane.as_str() {
                    "control-plane" => quiver_control_plane::openapi::spec_json(),
                    _ => quiver_data_plane::openapi::spec_json(),
                };
                println!("{spec}");
                Ok(())
            }
        }
    }
}
