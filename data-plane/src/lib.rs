//! The data plane: stateless pods that authenticate API keys and project tokens and
//! serve the public APIs over each project's data.

use std::sync::Arc;

use axum::Router;
use quiver_common::ApiError;
use quiver_common::bus::Bus;
use quiver_common::bus::{BusEvent, Notice};
use quiver_common::domain::Plan;
use quiver_common::http::{ReadinessCheck, Weight, finish_router_with, health_router};
use quiver_common::token::JwtKeys;
use quiver_engine::IndexManager;
use quiver_store::{NamespaceState, Store};

use crate::auth::Principal;

/// Credentials to principals: API keys (cached) and project tokens.
pub mod auth;
pub use quiver_common::client;
/// Which web pages may call the data plane from a browser.
pub mod cors;
/// The document API: collections of documents, embedded on the way in.
pub mod documents;
/// Text to vectors with the model a request names; the model catalog.
pub mod embeddings;
/// `x-idempotency-key` for mutating requests.
pub mod idempotency;
/// Reading JSON bodies with envelope errors.
pub mod json;
/// Per-project rate limits, shared by every pod.
pub mod limits;
/// Listing and deleting namespaces.
pub mod namespaces;
/// The query endpoint (NQL) and the document list.
pub mod query;
/// Writes shared by the vector, document and query APIs.
mod records;
/// Reading the vectors of a search or an upsert straight from the body's bytes.
pub mod vector_json;
/// The vector API.
pub mod vectors;

/// The largest request body the data plane reads, that of a batch (an upsert, a
/// document insert, an NQL statement): 1,000 vectors of 4,096 dimensions as JSON fit
/// with room to spare.
pub const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;
/// The largest body of a request that carries no batch (a search, fetch, update or
/// delete): a 4,096-d query, a filter of 10,000 values, or 1,000 ids of 512 bytes
/// each written as JSON escapes fit. Parsed JSON takes several times its text in
/// memory, so no request reads more than it may need.
pub const MAX_REQUEST_BODY_BYTES: usize = 8 * 1024 * 1024;

/// The body limit of a route whose requests carry no batch (see
/// [`MAX_REQUEST_BODY_BYTES`]); the router's own is [`MAX_BODY_BYTES`].
fn request_body_limit() -> axum::extract::DefaultBodyLimit {
    axum::extract::DefaultBodyLimit::max(MAX_REQUEST_BODY_BYTES)
}

/// Runs `task` to its end in a task of its own on `writes` (a pod's
/// [`DataPlane::writes`], which a shutdown waits for), whatever becomes of its caller.
pub(crate) async fn run_tracked<T: Send + 'static>(
    writes: &tokio_util::task::TaskTracker,
    task: impl Future<Output = T> + Send + 'static,
) -> Result<T, tokio::task::JoinError> {
    writes.spawn(tracing::Instrument::in_current_span(task)).await
}

/// Settings of a data-plane pod.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Bytes of vector indexes this pod keeps in memory before evicting the least used.
    pub index_memory: u64,
    /// When loaded indexes are snapshotted to the store in the background.
    pub snapshots: quiver_engine::SnapshotPolicy,
    /// Embedding providers: where local models live, the OpenAI-compatible endpoint.
    pub embed: quiver_embed::EmbedConfig,
    /// The embedding model for requests that name none.
    pub default_embedding_model: String,
    /// Proxies (load balancers, ingresses) whose `X-Forwarded-For` names the client.
    pub trusted_proxies: client::TrustedProxies,
    /// The web pages whose browser calls are let through (CORS).
    pub cors_origins: cors::CorsOrigins,
}
/// The OpenAPI document of this plane.
pub mod openapi;
/// The projects this pod serves, cached.
pub mod projects;

/// Everything a data-plane handler may use ([`PlaneState`]), behind one `Arc`: axum
/// clones a handler's state for each request, and one reference count is cheaper to
/// move than a dozen (each a cache line the pod's cores take from each other).
#[derive(Clone)]
pub struct DataPlane(Arc<PlaneState>);

impl std::ops::Deref for DataPlane {
    type Target = PlaneState;

    fn deref(&self) -> &PlaneState {
        &self.0
    }
}

/// What a [`DataPlane`] holds.
pub struct PlaneState {
    pub store: Arc<dyn Store>,
    pub bus: Arc<dyn Bus>,
    pub auth: Arc<auth::Authenticator>,
    pub projects: Arc<projects::Projects>,
    pub indexes: Arc<IndexManager>,
    pub embedders: Arc<quiver_embed::Embedders>,
    pub limits: Arc<limits::Limits>,
    budget: Arc<dyn limits::Budget>,
    /// The embedding model for requests that name none.
    pub default_model: Arc<str>,
    /// Signs pagination cursors.
    pub cursor_key: Arc<[u8; 32]>,
    /// Whose `X-Forwarded-For` to believe.
    pub trusted_proxies: Arc<client::TrustedProxies>,
    /// Writes and idempotent requests that run on after their clients go away: a
    /// shutdown waits for them ([`DataPlane::writes`]).
    writes: tokio_util::task::TaskTracker,
    /// The plan catalog, which only migrations change: read once a minute at most.
    plans: moka::future::Cache<String, Plan>,
    cors_origins: Arc<cors::CorsOrigins>,
}

/// How often a pod tidies the records store (see [`spawn_housekeeping`]).
pub const HOUSEKEEPING_EVERY: std::time::Duration = std::time::Duration::from_secs(600);

/// A snapshot upload no snapshot points to this long after it began was abandoned.
const ABANDONED_UPLOAD: chrono::Duration = chrono::Duration::hours(1);

/// How often a pod checks the indexes it holds against the store, besides after a bus
/// gap ([`IndexManager::resync`]): one read a project with indexes here.
pub const RESYNC_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

/// Now and every `period`, for as long as the store is in use: deletes expired
/// idempotency keys (with their stored answers) and the chunks of snapshot uploads
/// abandoned by a pod that died before its switch. Every pod runs it: each is a
/// DELETE of rows past their time, whichever pod gets there first.
pub fn spawn_housekeeping(store: std::sync::Weak<dyn Store>, period: std::time::Duration) {
    quiver_common::every::every(std::time::Duration::ZERO, period, store, |store| async move {
        match store.purge_expired().await {
            Ok(0) => {}
            Ok(purged) => tracing::info!(purged, "expired idempotency keys deleted"),
            Err(err) => {
                tracing::warn!(error = %err, "deleting expired idempotency keys failed; trying again later")
            }
        }
        match store.purge_orphan_chunks(ABANDONED_UPLOAD).await {
            Ok(0) => {}
            Ok(uploads) => tracing::info!(uploads, "abandoned snapshot uploads deleted"),
            Err(err) => {
                tracing::warn!(error = %err, "deleting abandoned snapshot uploads failed; trying again later")
            }
        }
    });
}

impl DataPlane {
    /// A pod's state; starts the tasks that keep its key cache current.
    /// `budget` keeps the rate-limit budgets: [`limits::LocalBudget`] for one process,
    /// [`limits::RedisBudget`] for a cluster.
    pub fn new(
        store: Arc<dyn Store>,
        bus: Arc<dyn Bus>,
        budget: Arc<dyn limits::Budget>,
        jwt: JwtKeys,
        settings: Settings,
    ) -> Self {
        let cursor_key = Arc::new(*jwt.cursor_key());
        let limits = limits::Limits::new(Arc::clone(&store), Arc::clone(&bus), Arc::clone(&budget));
        let embedders = Arc::new(quiver_embed::Embedders::new(settings.embed));
        let auth = Arc::new(auth::Authenticator::new(Arc::clone(&store), jwt));
        auth.spawn_watchers(bus.as_ref());
        let projects = projects::Projects::new(Arc::clone(&store), bus.as_ref());
        let indexes = Arc::new(IndexManager::new(Arc::clone(&store), settings.index_memory));
        IndexManager::run_maintenance(Arc::downgrade(&indexes), settings.snapshots);
        IndexManager::run_resync(Arc::downgrade(&indexes), RESYNC_EVERY);
        spawn_housekeeping(Arc::downgrade(&store), HOUSEKEEPING_EVERY);
        let weak = Arc::downgrade(&indexes);
        bus.listen(Arc::new(move |event| {
            let Some(indexes) = weak.upgrade() else { return };
            match event.clone() {
                BusEvent::Notice(Notice::NamespaceChanged {
                    project_id,
                    namespace,
                    epoch,
                    seq,
                }) => {
                    tokio::spawn(async move {
                        indexes
                            .heard_of(project_id, &namespace, NamespaceState { epoch, seq })
                            .await;
                    });
                }
                BusEvent::Notice(Notice::NamespaceDeleted { project_id, namespace }) => {
                    tokio::spawn(async move { indexes.forget_namespace(project_id, &namespace).await });
                }
                BusEvent::Notice(Notice::ProjectDeleted { project_id }) => indexes.forget_project(project_id),
                BusEvent::Notice(
                    Notice::KeyRevoked { .. } | Notice::ProjectChanged { .. } | Notice::LimitsChanged { .. },
                ) => {}
                // Notices may have been lost: catch every index in memory up with the
                // store (the key cache and the limits do the same on their side).
                BusEvent::MayHaveMissed => {
                    tokio::spawn(async move {
                        if let Err(err) = indexes.resync().await {
                            tracing::warn!(error = %err, "catching the indexes up after a bus gap failed; the next round retries");
                        }
                    });
                }
            }
        }));
        Self(Arc::new(PlaneState {
            store,
            bus,
            auth,
            projects,
            indexes,
            embedders,
            limits,
            budget,
            default_model: settings.default_embedding_model.into(),
            cursor_key,
            trusted_proxies: Arc::new(settings.trusted_proxies),
            cors_origins: Arc::new(settings.cors_origins),
            writes: tokio_util::task::TaskTracker::new(),
            plans: moka::future::Cache::builder()
                .max_capacity(64)
                .time_to_live(std::time::Duration::from_secs(60))
                .build(),
        }))
    }

    /// The writes (and idempotent requests) still running, which outlive their clients:
    /// a pod shutting down closes this and waits for it before it closes the store.
    pub fn writes(&self) -> tokio_util::task::TaskTracker {
        self.writes.clone()
    }

    /// Spends `n` units of the caller's project's `kind` budget, or refuses with a 429.
    pub async fn admit(&self, principal: &Principal, kind: limits::Kind, n: u64) -> Result<(), ApiError> {
        self.limits.admit(&principal.project, kind, n, &principal.rate).await
    }

    /// [`DataPlane::admit`] for a request that cannot be split: it takes at most a
    /// minute's quota.
    pub async fn admit_capped(&self, principal: &Principal, kind: limits::Kind, n: u64) -> Result<(), ApiError> {
        self.limits
            .admit_capped(&principal.project, kind, n, &principal.rate)
            .await
    }

    /// The caller's plan.
    pub async fn plan_of(&self, principal: &Principal) -> Result<Plan, ApiError> {
        let plan_id = &principal.project.plan_id;
        if let Some(plan) = self.plans.get(plan_id).await {
            return Ok(plan);
        }
        let plan = self
            .store
            .plan(plan_id)
            .await?
            .ok_or_else(|| anyhow::anyhow!("project {} has unknown plan {plan_id}", principal.project_id))?;
        self.plans.insert(plan_id.clone(), plan.clone()).await;
        Ok(plan)
    }

    /// The data plane's router: the public APIs and the health probes.
    pub fn router(self) -> Router {
        // Each pod shares these with every other, and serves without them (searches from
        // memory, writes refused, limits kept alone): they degrade it, they do not take
        // it out of service.
        let checks: Vec<(Arc<dyn ReadinessCheck>, Weight)> = vec![
            (self.store.clone(), Weight::Shared),
            (self.bus.clone(), Weight::Shared),
            (self.budget.clone(), Weight::Shared),
        ];
        let limits = Arc::clone(&self.limits);
        let cors = cors::layer(&self.cors_origins);
        let api = Router::new()
            .merge(namespaces::router())
            .merge(vectors::router())
            .merge(documents::router())
            .merge(embeddings::router())
            .merge(query::router())
            // `/docs`: Swagger UI, bundled in the binary (no CDN); `/openapi.json`: the spec.
            .merge(
                utoipa_swagger_ui::SwaggerUi::new("/docs")
                    .url("/openapi.json", <openapi::DataPlaneApi as utoipa::OpenApi>::openapi()),
            )
            .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
            .layer(axum::middleware::from_fn_with_state(
                self.writes(),
                idempotency::run_to_the_end,
            ))
            .layer(axum::middleware::from_fn_with_state(limits, limits::headers))
            .with_state(self);
        // Outside the routes and their fallbacks, so that it answers preflights (before
        // any route's 405 for OPTIONS) and refusals (401, 429) carry the headers a
        // browser needs to read them; inside the request id and the log line.
        finish_router_with(api.merge(health_router(checks)), |router| match cors {
            Some(cors) => router.layer(axum::middleware::from_fn_with_state(Arc::new(cors), cors::for_browsers)),
            None => router,
        })
    }
}
