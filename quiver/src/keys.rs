//! `quiver keys`: API keys from the shell, straight against the database (the
//! standalone SQLite file works while the server runs).

use clap::{Args, Subcommand};
use quiver_common::bus::{Bus, InProcessBus, RedisBus};
use quiver_common::domain::{ProjectId, Role};
use quiver_common::secrets::KEY_PREFIX;
use quiver_control_plane::keys::{CreateKey, KeyView, mint, revoke_key};

use crate::cli::StorageArgs;
use crate::serve;

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a key and print it on stdout (the only time it is shown).
    Create(CreateArgs),
    /// List a project's keys (never their secrets).
    List(ProjectArgs),
    /// Revoke a key; every pod refuses it within a second.
    Revoke(RevokeArgs),
}

#[derive(Debug, Args)]
pub struct ProjectArgs {
    /// The project's id.
    #[arg(long)]
    pub project: ProjectId,
    #[command(flatten)]
    pub storage: StorageArgs,
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    #[command(flatten)]
    pub target: ProjectArgs,
    /// A name to recognise the key by.
    #[arg(long)]
    pub label: String,
    /// app_readonly, app_readwrite or admin.
    #[arg(long)]
    pub role: Role,
    /// When the key stops working (RFC 3339, e.g. 2027-01-31T00:00:00Z).
    #[arg(long)]
    pub expires_at: Option<chrono::DateTime<chrono::Utc>>,
}

#[derive(Debug, Args)]
pub struct RevokeArgs {
    #[command(flatten)]
    pub target: ProjectArgs,
    /// The key's id, as `keys list` shows it (the part after qv_live_ and before the
    /// next _); its prefix `qv_live_<id>` works too.
    #[arg(long)]
    pub key: String,
    /// In a cluster, the Redis to tell pods through at once (pods also poll every second).
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,
    /// Prefix of the cluster's Redis channel.
    #[arg(long, env = "QUIVER_BUS_PREFIX", default_value = "quiver:")]
    pub bus_prefix: String,
}

impl KeysCommand {
    pub async fn run(self) -> anyhow::Result<()> {
        match self {
            KeysCommand::Create(args) => {
                let store = serve::open_store(&args.target.storage.url()?).await?;
                ensure_project(store.as_ref(), args.target.project).await?;
                let request = CreateKey {
                    label: args.label,
                    role: args.role,
                    expires_at: args.expires_at,
                };
                let created = mint(store.as_ref(), args.target.project, request)
                    .await
                    .map_err(api_error)?;
                store.close().await;
                println!("{}", created.key);
                Ok(())
            }
            KeysCommand::List(args) => {
                let store = serve::open_store(&args.storage.url()?).await?;
                ensure_project(store.as_ref(), args.project).await?;
                let keys = store.api_keys_of(args.project).await?;
                store.close().await;
                println!(
                    "{:<18} {:<14} {:<20} {:<26} {:<10}",
                    "ID", "ROLE", "LABEL", "CREATED", "STATE"
                );
                for key in keys.into_iter().map(KeyView::from) {
                    let state = match (key.revoked_at, key.expires_at) {
                        (Some(_), _) => "revoked",
                        (None, Some(at)) if at <= chrono::Utc::now() => "expired",
                        _ => "active",
                    };
                    println!(
                        "{:<18} {:<14} {:<20} {:<26} {:<10}",
                        key.id,
                        key.role,
                        key.label,
                        key.created_at.format("%Y-%m-%d %H:%M:%S UTC"),
                        state
                    );
                }
                Ok(())
            }
            KeysCommand::Revoke(args) => {
                let store = serve::open_store(&args.target.storage.url()?).await?;
                // The bus only hastens the news: pods poll for revoked keys every second
                // anyway, so a revocation during a Redis outage still goes through (the
                // announcement's failure is logged).
                let bus: Box<dyn Bus> = match &args.redis_url {
                    Some(url) => Box::new(RedisBus::publisher(url, &args.bus_prefix).await?),
                    None => Box::new(InProcessBus::default()),
                };
                let id = args.key.strip_prefix(KEY_PREFIX).unwrap_or(&args.key);
                revoke_key(store.as_ref(), bus.as_ref(), args.target.project, id)
                    .await
                    .map_err(api_error)?;
                store.close().await;
                eprintln!("revoked key {}", args.key);
                Ok(())
            }
        }
    }
}

async fn ensure_project(store: &dyn quiver_store::Store, project: ProjectId) -> anyhow::Result<()> {
    if store.project(project).await?.is_none() {
        anyhow::bail!("no project {project} in this database; check --project and --data-dir/--database-url");
    }
    Ok(())
}

fn api_error(err: quiver_common::ApiError) -> anyhow::Error {
    anyhow::anyhow!("{}", err.envelope().error.message)
}
