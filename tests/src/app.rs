//! `TestApp`: both planes served in-process on free ports over a fresh store, with a
//! typed client for the steps every test repeats (sign up, create a project, a key).

use std::any::Any;
use std::sync::Arc;

use quiver_common::bus::{Bus, InProcessBus, RedisBus};
use quiver_common::token::JwtKeys;
use quiver_control_plane::{ControlPlane, Settings};
use quiver_data_plane::DataPlane;
use quiver_data_plane::client::TrustedProxies;
use quiver_data_plane::limits::{Budget, LocalBudget, RedisBudget};
use quiver_embed::EmbedConfig;
use quiver_store::Store;
use serde_json::{Value, json};

use crate::stores::{PostgresFixture, SqliteFixture};

/// The JWT secret every test app signs with.
pub const JWT_SECRET: &[u8] = b"test-secret-of-at-least-32-bytes!!";

/// Which storage backend an app runs on.
#[derive(Debug, Clone, Copy)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A running Quiver: one control plane and one or more data-plane pods.
pub struct TestApp {
    pub control: String,
    /// Data-plane pods' base URLs; `data[0]` is the default.
    pub data: Vec<String>,
    pub http: reqwest::Client,
    pub store: Arc<dyn Store>,
    /// The control plane's bus: what it publishes, the pods hear.
    pub bus: Arc<dyn Bus>,
    fixture: Box<dyn Any + Send + Sync>,
}

async fn serve(router: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a free port");
    let addr = listener.local_addr().expect("local addr");
    let service = router.into_make_service_with_connect_info::<std::net::SocketAddr>();
    tokio::spawn(async move {
        axum::serve(quiver_common::http::without_nagle(listener), service)
            .await
            .expect("test server runs")
    });
    format!("http://{addr}")
}

async fn fixture(backend: Backend) -> (Arc<dyn Store>, Box<dyn Any + Send + Sync>) {
    match backend {
        Backend::Sqlite => {
            let f = SqliteFixture::new().await;
            (Arc::clone(&f.store), Box::new(f))
        }
        Backend::Postgres => {
            let f = PostgresFixture::new().await;
            (Arc::clone(&f.store), Box::new(f))
        }
    }
}

/// Embedding providers for a test app: the shared models dir (the local model is
/// fetched once per machine), and `openai/*` at `openai_base_url` (by default a port
/// where nothing listens, so a test that needs it must start a fake).
pub fn embed_config(openai_base_url: Option<String>) -> EmbedConfig {
    EmbedConfig {
        models_dir: crate::models::dir(),
        openai_base_url: openai_base_url.unwrap_or_else(|| "http://127.0.0.1:9/v1".into()),
        openai_api_key: Some("sk-test".into()),
        timeout: std::time::Duration::from_secs(5),
        max_retries: 1,
        ..EmbedConfig::default()
    }
}

/// A test pod's settings: a 256 MiB index budget, and no background snapshots (tests
/// snapshot when they mean to, with `IndexManager::snapshot_now`).
fn pod_settings(embed: EmbedConfig, default_model: &str) -> quiver_data_plane::Settings {
    quiver_data_plane::Settings {
        index_memory: 256 * 1024 * 1024,
        snapshots: quiver_engine::SnapshotPolicy {
            interval: std::time::Duration::ZERO,
            ..quiver_engine::SnapshotPolicy::default()
        },
        embed,
        default_embedding_model: default_model.to_owned(),
        trusted_proxies: TrustedProxies::default(),
        cors_origins: Default::default(),
    }
}

impl TestApp {
    /// Standalone-style: one pod, the in-process bus.
    pub async fn start(backend: Backend) -> Self {
        Self::start_with(backend, embed_config(None), quiver_embed::DEFAULT_MODEL).await
    }

    /// [`TestApp::start`] with these embedding providers and default model.
    pub async fn start_with(backend: Backend, embed: EmbedConfig, default_model: &str) -> Self {
        Self::standalone(backend, pod_settings(embed, default_model)).await
    }

    /// [`TestApp::start`] as if behind a load balancer: requests come from 127.0.0.1,
    /// a trusted proxy, and name their client in `X-Forwarded-For`.
    pub async fn behind_a_proxy(backend: Backend) -> Self {
        let settings = quiver_data_plane::Settings {
            trusted_proxies: "127.0.0.1".parse().expect("an address"),
            cors_origins: Default::default(),
            ..pod_settings(embed_config(None), quiver_embed::DEFAULT_MODEL)
        };
        Self::standalone(backend, settings).await
    }

    async fn standalone(backend: Backend, pod: quiver_data_plane::Settings) -> Self {
        let (store, fixture) = fixture(backend).await;
        let bus: Arc<dyn Bus> = Arc::new(InProcessBus::default());
        Self::assemble(store, fixture, bus.clone(), vec![bus], pod, None).await
    }

    /// Cluster-style on Postgres: `pods` data-plane pods, each with its own Redis
    /// connection, and a control plane publishing through Redis.
    pub async fn cluster(pods: usize) -> Self {
        Self::cluster_on(pods, crate::redis::url().await).await
    }

    /// [`TestApp::cluster`] over the Redis at `url`.
    pub async fn cluster_on(pods: usize, url: String) -> Self {
        let (store, fixture) = fixture(Backend::Postgres).await;
        let prefix = crate::redis::prefix();
        let connect = || async { Arc::new(RedisBus::connect(&url, &prefix).await.expect("Redis bus")) as Arc<dyn Bus> };
        let control_bus = connect().await;
        let mut pod_buses = Vec::new();
        for _ in 0..pods {
            pod_buses.push(connect().await);
        }
        let pod = pod_settings(embed_config(None), quiver_embed::DEFAULT_MODEL);
        Self::assemble(store, fixture, control_bus, pod_buses, pod, Some((url, prefix))).await
    }

    /// Serves a data-plane pod with `pod`'s settings on each of `pod_buses`, and a
    /// control plane on `control_bus`.
    async fn assemble(
        store: Arc<dyn Store>,
        fixture: Box<dyn Any + Send + Sync>,
        control_bus: Arc<dyn Bus>,
        pod_buses: Vec<Arc<dyn Bus>>,
        pod: quiver_data_plane::Settings,
        redis: Option<(String, String)>,
    ) -> Self {
        let jwt = JwtKeys::new(JWT_SECRET).expect("test secret is long enough");
        let mut data = Vec::new();
        let pods = u32::try_from(pod_buses.len()).expect("a few pods");
        for bus in pod_buses {
            let budget: Arc<dyn Budget> = match &redis {
                // Told how many pods there are, as the Helm chart tells each pod.
                Some((url, prefix)) => Arc::new(RedisBudget::connect(url, prefix, pods).await.expect("Redis budget")),
                None => Arc::new(LocalBudget::default()),
            };
            data.push(serve(DataPlane::new(Arc::clone(&store), bus, budget, jwt.clone(), pod.clone()).router()).await);
        }
        let settings = Settings {
            api_base_url: data[0].clone(),
            session_ttl: chrono::Duration::hours(1),
            console_dir: None,
            trusted_proxies: pod.trusted_proxies.clone(),
        };
        let control =
            serve(ControlPlane::new(Arc::clone(&store), Arc::clone(&control_bus), jwt, settings).router()).await;
        Self {
            control,
            data,
            http: reqwest::Client::new(),
            store,
            bus: control_bus,
            fixture,
        }
    }

    /// Sends a JSON request to the control plane with an optional session.
    pub async fn control_call(
        &self,
        method: reqwest::Method,
        path: &str,
        session: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = self.http.request(method, format!("{}{path}", self.control));
        if let Some(token) = session {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        read(request.send().await.expect("control plane answers")).await
    }

    /// Signs up a fresh account and returns its session token.
    pub async fn signup(&self) -> String {
        let email = format!("{}@example.com", uuid::Uuid::new_v4().simple());
        let (status, body) = self
            .control_call(
                reqwest::Method::POST,
                "/v1/auth/signup",
                None,
                Some(json!({"email": email, "password": "correct horse battery"})),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        body["token"].as_str().expect("a session token").to_owned()
    }

    /// Creates a project (dimension 4, cosine, starter) and returns its id.
    pub async fn project(&self, session: &str) -> String {
        let (status, body) = self
            .control_call(
                reqwest::Method::POST,
                "/v1/projects",
                Some(session),
                Some(json!({"name": "test", "dimension": 4, "metric": "cosine", "plan": "starter"})),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        body["id"].as_str().expect("a project id").to_owned()
    }

    /// Creates a key with `role` and returns the whole key and its id.
    pub async fn key(&self, session: &str, project: &str, role: &str) -> (String, String) {
        let (status, body) = self
            .control_call(
                reqwest::Method::POST,
                &format!("/v1/projects/{project}/keys"),
                Some(session),
                Some(json!({"label": format!("{role} key"), "role": role})),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        (
            body["key"].as_str().expect("key").to_owned(),
            body["id"].as_str().expect("id").to_owned(),
        )
    }

    /// A request to data-plane pod `pod`.
    pub fn data_request(&self, pod: usize, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, format!("{}{path}", self.data[pod]))
    }
}

/// Status and JSON body (or `null` for an empty body) of a response.
pub async fn read(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let bytes = response.bytes().await.expect("body");
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&bytes)))
    };
    (status, body)
}

/// A project and keys of each role, ready for data-plane calls.
pub struct Tenant {
    pub session: String,
    pub project: String,
    pub readonly: String,
    pub readwrite: String,
    pub admin: String,
}

impl TestApp {
    /// Leaves every idempotency key as a pod leaves it when it dies between a write's
    /// commit and storing the write's answer: claimed, unanswered, its lease run out.
    /// A retry with the key then takes it over and runs the request again.
    pub async fn forget_idempotent_answers(&self) {
        let sql = "UPDATE idempotency_keys SET response_status = NULL, response_body = NULL, locked_until_ms = 0";
        if let Some(fixture) = self.fixture.downcast_ref::<SqliteFixture>() {
            let url = quiver_store::sqlite::SqliteStore::url_for_data_dir(fixture.dir.path());
            let pool = sqlx::SqlitePool::connect(&url).await.expect("SQLite opens");
            sqlx::query(sql).execute(&pool).await.expect("update");
            pool.close().await;
        } else if let Some(fixture) = self.fixture.downcast_ref::<PostgresFixture>() {
            let pool = sqlx::PgPool::connect(fixture.database.url())
                .await
                .expect("Postgres connects");
            sqlx::query(sql).execute(&pool).await.expect("update");
            pool.close().await;
        } else {
            panic!("a store fixture of an unknown kind");
        }
    }

    /// Holds off every write to the records store's namespaces, as a long transaction
    /// of another client would, until the returned guard is released; reads go on.
    pub async fn hold_writes(&self) -> WritesHeld {
        if let Some(fixture) = self.fixture.downcast_ref::<SqliteFixture>() {
            let url = quiver_store::sqlite::SqliteStore::url_for_data_dir(fixture.dir.path());
            let mut connection = <sqlx::SqliteConnection as sqlx::Connection>::connect(&url)
                .await
                .expect("SQLite opens");
            sqlx::query("BEGIN IMMEDIATE")
                .execute(&mut connection)
                .await
                .expect("the write lock");
            WritesHeld::Sqlite(connection)
        } else if let Some(fixture) = self.fixture.downcast_ref::<PostgresFixture>() {
            let mut connection = <sqlx::PgConnection as sqlx::Connection>::connect(fixture.database.url())
                .await
                .expect("Postgres connects");
            sqlx::query("BEGIN").execute(&mut connection).await.expect("begin");
            sqlx::query("LOCK TABLE namespaces IN EXCLUSIVE MODE")
                .execute(&mut connection)
                .await
                .expect("the lock");
            WritesHeld::Postgres(connection)
        } else {
            panic!("a store fixture of an unknown kind");
        }
    }

    /// Signs up, creates a project with this dimension and metric, and a key per role.
    pub async fn tenant(&self, dimension: u32, metric: &str) -> Tenant {
        self.tenant_named("t", dimension, metric).await
    }

    /// [`TestApp::tenant`] with the project named `name`.
    pub async fn tenant_named(&self, name: &str, dimension: u32, metric: &str) -> Tenant {
        let session = self.signup().await;
        let (status, body) = self
            .control_call(
                reqwest::Method::POST,
                "/v1/projects",
                Some(&session),
                Some(json!({"name": name, "dimension": dimension, "metric": metric, "plan": "business_plus"})),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        let project = body["id"].as_str().expect("id").to_owned();
        let readonly = self.key(&session, &project, "app_readonly").await.0;
        let readwrite = self.key(&session, &project, "app_readwrite").await.0;
        let admin = self.key(&session, &project, "admin").await.0;
        Tenant {
            session,
            project,
            readonly,
            readwrite,
            admin,
        }
    }

    /// A JSON call to data-plane pod `pod` with `x-api-key`.
    pub async fn data_call(
        &self,
        pod: usize,
        method: reqwest::Method,
        path: &str,
        key: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = self.data_request(pod, method, path).header("x-api-key", key);
        if let Some(body) = body {
            request = request.json(&body);
        }
        read(request.send().await.expect("data plane answers")).await
    }
}

/// Writes held off by [`TestApp::hold_writes`].
pub enum WritesHeld {
    Sqlite(sqlx::SqliteConnection),
    Postgres(sqlx::PgConnection),
}

impl WritesHeld {
    /// Lets the writes waiting on the lock go ahead.
    pub async fn release(self) {
        match self {
            WritesHeld::Sqlite(mut connection) => {
                sqlx::query("ROLLBACK")
                    .execute(&mut connection)
                    .await
                    .expect("rollback");
            }
            WritesHeld::Postgres(mut connection) => {
                sqlx::query("ROLLBACK")
                    .execute(&mut connection)
                    .await
                    .expect("rollback");
            }
        }
    }
}
