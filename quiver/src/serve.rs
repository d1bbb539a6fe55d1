//! Binding listeners, serving the planes and shutting down cleanly.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context as _, anyhow};
use axum::Router;
use quiver_common::bus::{Bus, InProcessBus, RedisBus};
use quiver_common::token::JwtKeys;
use quiver_control_plane::{ControlPlane, Settings};
use quiver_data_plane::DataPlane;
use quiver_data_plane::Settings as DataSettings;
use quiver_data_plane::limits::{LocalBudget, RedisBudget};
use quiver_store::Store;
use quiver_store::sqlite::SqliteStore;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::cli::{ClusterArgs, StandaloneArgs};

/// Which plane a cluster process serves.
#[derive(Debug, Clone, Copy)]
pub enum Plane {
    Control,
    Data,
}

/// Creates the data dir if needed, checks it is writable, and returns the SQLite URL in it.
pub fn prepare_data_dir(dir: &Path) -> anyhow::Result<String> {
    // Only its owner may read it: it holds every tenant's records, the key and password
    // hashes, and the JWT secret. (A directory that exists already keeps its mode.)
    let mut create = std::fs::DirBuilder::new();
    std::os::unix::fs::DirBuilderExt::mode(create.recursive(true), 0o700);
    create.create(dir).map_err(|err| {
        anyhow!(
            "cannot create the data directory {}: {err}; choose a writable --data-dir",
            dir.display()
        )
    })?;
    let probe = dir.join(".quiver-write-test");
    std::fs::write(&probe, b"")
        .and_then(|()| std::fs::remove_file(&probe))
        .map_err(|err| {
            anyhow!(
                "the data directory {} is not writable: {err}; choose a writable --data-dir",
                dir.display()
            )
        })?;
    Ok(SqliteStore::url_for_data_dir(dir))
}

/// Opens and migrates the store at `url`.
pub async fn open_store(url: &str) -> anyhow::Result<Arc<dyn Store>> {
    let store = quiver_store::connect(url).await?;
    store.migrate().await.context("migrating the database")?;
    Ok(store)
}

async fn bind(addr: SocketAddr, flag: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|err| anyhow!("cannot listen on {addr}: {err}; choose another address with {flag}"))
}

/// How long console sessions last.
const SESSION_TTL: chrono::Duration = chrono::Duration::hours(12);

/// The JWT secret of a standalone install: generated into the data dir on first
/// start, readable by its owner only.
fn standalone_jwt_secret(dir: &Path) -> anyhow::Result<JwtKeys> {
    let path = dir.join("jwt-secret");
    let secret = match std::fs::read_to_string(&path) {
        Ok(secret) => secret,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            use rand::TryRngCore as _;
            use std::io::Write as _;
            #[cfg(unix)]
            use std::os::unix::fs::OpenOptionsExt as _;
            let mut bytes = [0u8; 32];
            rand::rngs::OsRng
                .try_fill_bytes(&mut bytes)
                .map_err(|err| anyhow!("the OS random source failed: {err}"))?;
            let secret = hex::encode(bytes);
            // Written whole under another name, then linked into place: a crash or a
            // full disk part way leaves no secret rather than an empty one that every
            // later start would refuse, and of two first starts at once the second
            // finds the first's secret (the link fails if the name exists) and uses it.
            let staging = dir.join(format!(".jwt-secret.{}", std::process::id()));
            let write_new = |at: &Path, create_new: bool| -> std::io::Result<()> {
                let mut options = std::fs::OpenOptions::new();
                options.write(true);
                if create_new {
                    options.create_new(true);
                } else {
                    options.create(true).truncate(true);
                }
                #[cfg(unix)]
                options.mode(0o600);
                let mut file = options.open(at)?;
                file.write_all(secret.as_bytes())?;
                file.sync_all()
            };
            let written = write_new(&staging, false).and_then(|()| match std::fs::hard_link(&staging, &path) {
                // A file system without hard links (some network shares): the file is
                // made in place, as the only start that can make it.
                Err(err) if err.kind() != std::io::ErrorKind::AlreadyExists => {
                    tracing::debug!(error = %err, "no hard link for the JWT secret; writing it in place");
                    write_new(&path, true).inspect_err(|err| {
                        // Ours, cut short (another start's would have made create_new fail).
                        if err.kind() != std::io::ErrorKind::AlreadyExists {
                            let _ = std::fs::remove_file(&path);
                        }
                    })
                }
                linked => linked,
            });
            let _ = std::fs::remove_file(&staging);
            // The new name itself, on disk; a file system that cannot say so is no reason
            // not to start.
            if let Err(err) = std::fs::File::open(dir).and_then(|d| d.sync_all()) {
                tracing::debug!(error = %err, "could not sync the data dir after writing the JWT secret");
            }
            match written {
                Ok(()) => secret,
                Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {
                    std::fs::read_to_string(&path).map_err(|err| anyhow!("cannot read {}: {err}", path.display()))?
                }
                Err(err) => return Err(anyhow!("cannot write {}: {err}", path.display())),
            }
        }
        Err(err) => return Err(anyhow!("cannot read {}: {err}", path.display())),
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        if let Ok(meta) = std::fs::metadata(&path)
            && meta.permissions().mode() & 0o077 != 0
        {
            tracing::warn!(path = %path.display(), mode = format!("{:o}", meta.permissions().mode() & 0o777),
                "the JWT secret can be read by others than its owner: chmod 600 it");
        }
    }
    JwtKeys::new(secret.trim().as_bytes()).map_err(|err| {
        anyhow!(
            "{}: {err}; it holds no usable secret (delete it to have a new one made, which ends every console \
             session and project token)",
            path.display()
        )
    })
}

pub async fn standalone(args: StandaloneArgs) -> anyhow::Result<()> {
    args.embed.check()?;
    let console_dir = quiver_control_plane::console::locate(args.console_dir.clone()).map_err(|err| anyhow!(err))?;
    let url = prepare_data_dir(&args.data_dir)?;
    // Bind before opening storage, so a taken port fails fast and touches nothing.
    let data = bind(args.data_addr, "--data-addr").await?;
    let control = bind(args.control_addr, "--control-addr").await?;
    let jwt = standalone_jwt_secret(&args.data_dir)?;
    let store = open_store(&url).await?;
    let bus: Arc<dyn Bus> = Arc::new(InProcessBus::default());
    quiver_control_plane::limits::publish_all(store.as_ref(), bus.as_ref()).await?;
    let data_url = format!("http://{}", data.local_addr()?);
    let control_url = format!("http://{}", control.local_addr()?);
    let embed = args.embed.config(args.data_dir.join("models"));
    if args.pull_models {
        pull_default_model_in_background(embed.models_dir.clone());
    }
    let settings = Settings {
        api_base_url: data_url.clone(),
        session_ttl: SESSION_TTL,
        console_dir: console_dir.map(Arc::new),
        trusted_proxies: args.proxies.trusted_proxies.clone(),
    };
    let data_plane = DataPlane::new(
        Arc::clone(&store),
        Arc::clone(&bus),
        Arc::new(LocalBudget::default()),
        jwt.clone(),
        DataSettings {
            index_memory: args.index_memory,
            snapshots: args.snapshots.policy(),
            embed: embed.clone(),
            default_embedding_model: args.embed.default_embedding_model.clone(),
            trusted_proxies: args.proxies.trusted_proxies.clone(),
            cors_origins: args.proxies.cors_origins.clone(),
        },
    );
    let writes = Some(data_plane.writes());
    let servers = vec![
        (data, data_plane.router()),
        (
            control,
            ControlPlane::new(Arc::clone(&store), bus, jwt, settings).router(),
        ),
    ];
    tracing::info!(
        data_dir = %args.data_dir.display(),
        data_api = %data_url,
        control_api = %control_url,
        "quiver standalone is up"
    );
    if store.all_projects().await?.is_empty() {
        tracing::info!(
            sign_up = %format!(
                "curl -X POST {control_url}/v1/auth/signup -H 'content-type: application/json' \
                 -d '{{\"email\":\"you@example.com\",\"password\":\"a long passphrase\"}}'"
            ),
            first_key = %format!(
                "quiver keys create --data-dir {} --project <project id> --label my-app --role app_readwrite",
                args.data_dir.display()
            ),
            "first start: sign up on the control plane, create a project, then make a key from the shell"
        );
    }
    serve_until_signal(servers, writes, store).await
}

/// Standalone should embed out of the box: fetch the default model once, in the
/// background, so start-up is not held up (requests that need it meanwhile get a 503
/// that says it is on its way).
fn pull_default_model_in_background(models_dir: PathBuf) {
    tokio::spawn(async move {
        if quiver_embed::is_installed(&models_dir, quiver_embed::DEFAULT_MODEL) {
            return;
        }
        tracing::info!(model = quiver_embed::DEFAULT_MODEL, dir = %models_dir.display(), "fetching the default embedding model");
        match quiver_embed::pull(&models_dir, quiver_embed::DEFAULT_MODEL).await {
            Ok(dir) => {
                tracing::info!(model = quiver_embed::DEFAULT_MODEL, dir = %dir.display(), "embedding model ready")
            }
            Err(err) => tracing::warn!(
                error = %format!("{err:#}"),
                "could not fetch the default embedding model; run `quiver models pull` or start with --pull-models=false"
            ),
        }
    });
}

pub async fn cluster(plane: Plane, args: ClusterArgs) -> anyhow::Result<()> {
    let jwt = JwtKeys::new(args.jwt_secret.as_bytes()).map_err(|err| anyhow!("QUIVER_JWT_SECRET: {err}"))?;
    let console_dir = match plane {
        Plane::Control => {
            quiver_control_plane::console::locate(args.console_dir.clone()).map_err(|err| anyhow!(err))?
        }
        Plane::Data => None,
    };
    let listener = bind(args.addr, "--addr").await?;
    let store = open_store(&args.database_url).await?;
    let bus: Arc<dyn Bus> = Arc::new(RedisBus::connect(&args.redis_url, &args.bus_prefix).await?);
    let mut writes = None;
    let router = match plane {
        Plane::Control => {
            let settings = Settings {
                api_base_url: args.public_data_url.clone(),
                session_ttl: SESSION_TTL,
                console_dir: console_dir.map(Arc::new),
                trusted_proxies: args.proxies.trusted_proxies.clone(),
            };
            let (publish_store, publish_bus) = (Arc::clone(&store), Arc::clone(&bus));
            tokio::spawn(async move {
                if let Err(err) =
                    quiver_control_plane::limits::publish_all(publish_store.as_ref(), publish_bus.as_ref()).await
                {
                    tracing::warn!(error = %format!("{err:#}"), "publishing limits at start failed");
                }
            });
            ControlPlane::new(Arc::clone(&store), bus, jwt, settings).router()
        }
        Plane::Data => {
            args.embed.check()?;
            let settings = DataSettings {
                index_memory: args.index_memory,
                snapshots: args.snapshots.policy(),
                embed: args.embed.config(PathBuf::from("models")),
                default_embedding_model: args.embed.default_embedding_model.clone(),
                trusted_proxies: args.proxies.trusted_proxies.clone(),
                cors_origins: args.proxies.cors_origins.clone(),
            };
            let budget = Arc::new(RedisBudget::connect(&args.redis_url, &args.bus_prefix, args.expected_pods).await?);
            let data_plane = DataPlane::new(Arc::clone(&store), bus, budget, jwt, settings);
            writes = Some(data_plane.writes());
            data_plane.router()
        }
    };
    tracing::info!(plane = ?plane, addr = %listener.local_addr()?, "quiver is up");
    serve_until_signal(vec![(listener, router)], writes, store).await
}

/// How long a shutdown waits for requests in flight to finish.
const DRAIN_GRACE: std::time::Duration = std::time::Duration::from_secs(30);
/// How long a shutdown waits for writes whose clients went away.
const WRITES_GRACE: std::time::Duration = std::time::Duration::from_secs(30);

/// A second signal came during the shutdown: the process exits at once (130),
/// waiting for nothing but its log lines to be written.
#[derive(Debug)]
pub struct Interrupted;

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("stopped by a second signal")
    }
}

impl std::error::Error for Interrupted {}

/// Serves every router until SIGTERM or Ctrl-C, lets in-flight requests finish (and
/// the data plane's `writes`, which outlive clients that went away), then closes the
/// store. If one server fails, the others are shut down too. A second signal ends the
/// wait with [`Interrupted`].
async fn serve_until_signal(
    servers: Vec<(TcpListener, Router)>,
    writes: Option<tokio_util::task::TaskTracker>,
    store: Arc<dyn Store>,
) -> anyhow::Result<()> {
    let (stop, stopped) = watch::channel(false);
    let stop = Arc::new(stop);
    let (interrupt, interrupted) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn({
        let stop = Arc::clone(&stop);
        async move {
            wait_for_signal().await;
            tracing::info!("shutting down: finishing in-flight requests (a second signal stops at once)");
            let _ = stop.send(true);
            // Every acknowledged write is in the store already: stopping now loses
            // nothing but the answers of requests still running.
            wait_for_signal().await;
            tracing::warn!("a second signal: stopping without waiting for requests still running");
            let _ = interrupt.send(());
        }
    });
    tokio::select! {
        outcome = serve_and_drain(servers, writes, store, stop, stopped) => outcome,
        Ok(()) = interrupted => Err(Interrupted.into()),
    }
}

async fn serve_and_drain(
    servers: Vec<(TcpListener, Router)>,
    writes: Option<tokio_util::task::TaskTracker>,
    store: Arc<dyn Store>,
    stop: Arc<watch::Sender<bool>>,
    stopped: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut tasks = tokio::task::JoinSet::new();
    for (listener, router) in servers {
        let mut stopped = stopped.clone();
        let stop = Arc::clone(&stop);
        tasks.spawn(async move {
            let result = axum::serve(
                quiver_common::http::without_nagle(listener),
                router.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .with_graceful_shutdown(async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            })
            .await;
            let _ = stop.send(true);
            result
        });
    }
    let mut outcome = Ok(());
    let mut stopping = stopped.clone();
    let drained = async {
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok(Ok(())) => {}
                Ok(Err(err)) => outcome = Err(anyhow!("a listener failed: {err}")),
                Err(err) => outcome = Err(anyhow!("a server task failed: {err}")),
            }
        }
    };
    // Requests still running some time after the signal (a slow client's upload, a
    // long search) do not hold the exit for ever.
    let deadline = async {
        let _ = stopping.wait_for(|stop| *stop).await;
        tokio::time::sleep(DRAIN_GRACE).await;
    };
    tokio::select! {
        () = drained => {}
        () = deadline => tracing::warn!("shutting down with requests still running after {DRAIN_GRACE:?}"),
    }
    tasks.abort_all();
    if let Some(writes) = writes {
        writes.close();
        if tokio::time::timeout(WRITES_GRACE, writes.wait()).await.is_err() {
            tracing::warn!(still_running = writes.len(), "shutting down with writes still running");
        }
    }
    store.close().await;
    tracing::info!("shut down cleanly");
    outcome
}

async fn wait_for_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn a_new_data_dir_is_its_owners_alone() {
        let parent = tempfile::tempdir().expect("temp dir");
        let dir = parent.path().join("a/quiver-data");
        let url = super::prepare_data_dir(&dir).expect("prepared");
        assert!(url.starts_with("sqlite:"), "{url}");
        let mode = std::fs::metadata(&dir).expect("made").permissions().mode();
        assert_eq!(mode & 0o777, 0o700, "{mode:o}");
    }

    /// The secret is made once, its owner's alone, and kept; a file left empty (by a
    /// crash of a version that wrote in place) is refused with what to do.
    #[test]
    fn the_jwt_secret_is_made_once_whole_and_an_empty_one_says_what_to_do() {
        let dir = tempfile::tempdir().expect("temp dir");
        let first = super::standalone_jwt_secret(dir.path()).expect("made");
        let path = dir.path().join("jwt-secret");
        let mode = std::fs::metadata(&path).expect("made").permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
        let secret = std::fs::read_to_string(&path).expect("read");
        assert_eq!(secret.len(), 64);
        let again = super::standalone_jwt_secret(dir.path()).expect("kept");
        let user: quiver_common::domain::UserId = "0190f0f0-aaaa-7bbb-8ccc-123456789abc".parse().expect("a uuid");
        let token = first.issue_session(user, 0, chrono::Duration::hours(1)).0;
        assert!(again.verify_session(&token).is_ok(), "the same secret after a restart");
        let left: Vec<_> = std::fs::read_dir(dir.path()).expect("dir").collect();
        assert_eq!(left.len(), 1, "no staging file left behind");

        std::fs::write(&path, "").expect("truncate");
        let err = super::standalone_jwt_secret(dir.path()).expect_err("empty").to_string();
        assert!(err.contains("delete it to have a new one made"), "{err}");
    }
}
