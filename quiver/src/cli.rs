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
    #[arg(long, env = "QUIVER_INDEX_MEMORY", default_value = "1GiB", value_parser = parse_bytes)]
    pub index_memory: u64,
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
    /// Memory for vector indexes on a data-plane pod (e.g. 512MiB, 4GiB).
    #[arg(long, env = "QUIVER_INDEX_MEMORY", default_value = "1GiB", value_parser = parse_bytes)]
    pub index_memory: u64,
    /// The data plane's public URL, shown on projects as `api_base_url` (control plane).
    #[arg(long, env = "QUIVER_PUBLIC_DATA_URL", default_value = "http://localhost:8080")]
    pub public_data_url: String,
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
