//! The bus: how the control plane tells every data-plane pod that something changed
//! (a key was revoked, a project changed plan or was deleted).
//!
//! Standalone uses [`InProcessBus`], which calls listeners before `publish` returns, so
//! a revocation holds before the control plane answers. A cluster uses [`RedisBus`]
//! (Redis pub/sub on one channel per deployment prefix); after any gap in its
//! subscription it tells listeners [`BusEvent::MayHaveMissed`], and they must drop
//! what they cached.
//!
//! Nothing waits long on Redis: every command of [`RedisBus`] gives up after
//! [`BUS_WAIT`], and its connection reconnects with the short backoff of
//! [`redis_connection_config`]. What a notice announces is already in the store, and
//! pods find it there without the notice (revocations by polling, plans by reading
//! projects again), so a publish that fails is logged by its caller, never fatal.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt as _;
use serde::{Deserialize, Serialize};

use crate::domain::ProjectId;
use crate::http::ReadinessCheck;

/// Something every pod should know about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Notice {
    /// An API key was revoked: drop it from every cache now.
    KeyRevoked { project_id: ProjectId, key_id: String },
    /// A project changed (its plan): reload what is cached about it.
    ProjectChanged { project_id: ProjectId },
    /// A project was deleted with all its keys and data.
    ProjectDeleted { project_id: ProjectId },
    /// A write committed to a namespace: pods holding its index catch up to `seq`.
    NamespaceChanged {
        project_id: ProjectId,
        namespace: String,
        epoch: uuid::Uuid,
        seq: i64,
    },
    /// A namespace was deleted with all its records.
    NamespaceDeleted { project_id: ProjectId, namespace: String },
    /// A project's limits were published (it was created or changed plan).
    LimitsChanged { limits: ProjectLimits },
}

/// A project's effective rate limits, as the control plane publishes them (from its
/// plan) and every data-plane pod enforces them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectLimits {
    pub project_id: ProjectId,
    pub plan_id: String,
    pub queries_per_minute: u32,
    pub documents_per_minute: u32,
}

/// What a listener hears.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BusEvent {
    Notice(Notice),
    /// The subscription had a gap (Redis restarted, the network dropped): notices
    /// may have been lost, so cached state must be dropped or revalidated.
    MayHaveMissed,
}

/// A listener: called for every event, on the publisher's task (in-process) or the
/// bus's task (Redis). It must be quick and must not block.
pub type Listener = Arc<dyn Fn(&BusEvent) + Send + Sync>;

/// Publishes notices and calls listeners.
#[async_trait]
pub trait Bus: ReadinessCheck + Send + Sync {
    /// Sends a notice to every listener, in this process and others.
    async fn publish(&self, notice: Notice) -> anyhow::Result<()>;
    /// Adds a listener for every event from now on.
    fn listen(&self, listener: Listener);
    /// Stores a project's limits where pods load them at start, then tells every pod.
    async fn publish_limits(&self, limits: ProjectLimits) -> anyhow::Result<()>;
    /// Removes a deleted project's limits.
    async fn withdraw_limits(&self, project: ProjectId) -> anyhow::Result<()>;
    /// Every project's published limits, for a pod starting up.
    async fn all_limits(&self) -> anyhow::Result<Vec<ProjectLimits>>;
}

#[derive(Default, Clone)]
struct Listeners(Arc<RwLock<Vec<Listener>>>);

impl Listeners {
    fn add(&self, listener: Listener) {
        self.0.write().expect("listeners are never poisoned").push(listener);
    }

    fn call(&self, event: &BusEvent) {
        for listener in self.0.read().expect("listeners are never poisoned").iter() {
            listener(event);
        }
    }
}

/// The bus of a single process: `publish` calls every listener before it returns.
#[derive(Default, Clone)]
pub struct InProcessBus {
    listeners: Listeners,
    limits: Arc<RwLock<HashMap<ProjectId, ProjectLimits>>>,
}

impl InProcessBus {
    /// Tells every listener it may have missed notices, as [`RedisBus`] does after a
    /// gap in its subscription (this bus never has one: for tests).
    pub fn tell_of_a_gap(&self) {
        self.listeners.call(&BusEvent::MayHaveMissed);
    }
}

#[async_trait]
impl Bus for InProcessBus {
    async fn publish(&self, notice: Notice) -> anyhow::Result<()> {
        self.listeners.call(&BusEvent::Notice(notice));
        Ok(())
    }

    fn listen(&self, listener: Listener) {
        self.listeners.add(listener);
    }

    async fn publish_limits(&self, limits: ProjectLimits) -> anyhow::Result<()> {
        self.limits
            .write()
            .expect("limits are never poisoned")
            .insert(limits.project_id, limits.clone());
        self.publish(Notice::LimitsChanged { limits }).await
    }

    async fn withdraw_limits(&self, project: ProjectId) -> anyhow::Result<()> {
        self.limits.write().expect("limits are never poisoned").remove(&project);
        Ok(())
    }

    async fn all_limits(&self) -> anyhow::Result<Vec<ProjectLimits>> {
        Ok(self
            .limits
            .read()
            .expect("limits are never poisoned")
            .values()
            .cloned()
            .collect())
    }
}

#[async_trait]
impl ReadinessCheck for InProcessBus {
    fn name(&self) -> &'static str {
        "bus"
    }

    async fn check(&self) -> Result<(), String> {
        Ok(())
    }
}

/// How long one bus command may wait on Redis, reconnecting included. A request that
/// publishes (a key revocation, a plan change, a write's notice) waits at most this
/// per notice while Redis is away.
pub const BUS_WAIT: Duration = Duration::from_millis(500);

/// How long connecting and subscribing may take before the subscriber tries again.
const SUBSCRIBE_WAIT: Duration = Duration::from_secs(5);

/// How often a subscription asks Redis for a PONG, and how long the answer may take. A
/// subscriber only listens: across a network fault that leaves its connection open
/// but dead (no FIN, no RST), it would hear nothing, report itself subscribed, and
/// never know. Lenient, as each reconnection makes every pod drop its caches.
const SUBSCRIPTION_PING_EVERY: Duration = Duration::from_secs(5);
const SUBSCRIPTION_PING_WAIT: Duration = Duration::from_secs(3);

/// How Quiver's Redis connections reconnect: a few quick tries, each connection attempt
/// bounded, so that a command sent while Redis is away fails within about a second
/// instead of waiting out the client's default backoff (six retries, several seconds),
/// which a command's response timeout does not cover. Callers still bound each command
/// with a timeout of their own.
pub fn redis_connection_config() -> redis::aio::ConnectionManagerConfig {
    redis::aio::ConnectionManagerConfig::new()
        .set_number_of_retries(2)
        .set_min_delay(Duration::from_millis(50))
        .set_max_delay(Duration::from_millis(200))
        .set_connection_timeout(Some(Duration::from_millis(500)))
        .set_response_timeout(Some(Duration::from_millis(500)))
}

/// A client for `url`, and a connection manager over it ([`redis_connection_config`]).
/// A Redis that cannot be reached when a process starts is waited for as through any
/// outage (the manager connects on first use, and again after each failure), so pods
/// can start, restart or scale out while it is down. A Redis that answers and refuses
/// (a wrong password) is an error, as is a malformed URL: no retry would mend either,
/// and the manager would not retry a refusal.
pub async fn redis_connection(url: &str) -> anyhow::Result<(redis::Client, redis::aio::ConnectionManager)> {
    let client = redis::Client::open(url).map_err(|err| anyhow::anyhow!("invalid REDIS_URL: {err}"))?;
    let config = redis_connection_config();
    match tokio::time::timeout(
        BUS_WAIT * 2,
        redis::aio::ConnectionManager::new_with_config(client.clone(), config.clone()),
    )
    .await
    {
        Ok(Ok(connection)) => return Ok((client, connection)),
        Ok(Err(err)) if !err.is_io_error() => {
            return Err(anyhow::anyhow!(
                "Redis refused the connection: {err}; check REDIS_URL (its user and password)"
            ));
        }
        // Logged by what waits on Redis (the bus, the limiter's health), or by a
        // one-shot command's publish, when it matters.
        Ok(Err(err)) => tracing::debug!(error = %err, "Redis is unreachable: connecting on first use"),
        Err(_) => tracing::debug!("Redis did not answer: connecting on first use"),
    }
    let connection = redis::aio::ConnectionManager::new_lazy_with_config(client.clone(), config)
        .map_err(|err| anyhow::anyhow!("invalid REDIS_URL: {err}"))?;
    Ok((client, connection))
}

/// Runs one Redis command, giving up after [`BUS_WAIT`].
async fn within<T>(what: &str, command: impl Future<Output = redis::RedisResult<T>>) -> anyhow::Result<T> {
    match tokio::time::timeout(BUS_WAIT, command).await {
        Ok(result) => result.map_err(|err| anyhow::anyhow!("{what} failed: {err}")),
        Err(_) => Err(anyhow::anyhow!(
            "{what} failed: Redis did not answer within {} ms",
            BUS_WAIT.as_millis()
        )),
    }
}

/// A bus over Redis pub/sub. A background task keeps one subscription open,
/// reconnecting with backoff, and calls the local listeners.
pub struct RedisBus {
    channel: String,
    /// The hash of every project's limits: project id → JSON.
    limits_key: String,
    connection: redis::aio::ConnectionManager,
    listeners: Listeners,
    subscribed: Arc<AtomicBool>,
}

impl RedisBus {
    /// Connects to Redis at `url`; notices travel on `<prefix>notices`. Waits for the
    /// first try to subscribe, so that notices published right after start-up are not
    /// missed; when Redis is away, the bus starts unsubscribed and subscribes when it
    /// answers (its listeners then hear [`BusEvent::MayHaveMissed`]). Only a malformed
    /// URL, or a Redis that refuses the connection, is an error ([`redis_connection`]).
    pub async fn connect(url: &str, prefix: &str) -> anyhow::Result<Self> {
        let (client, connection) = redis_connection(url).await?;
        let bus = Self::over(connection, prefix);
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        tokio::spawn(subscribe(
            client,
            bus.channel.clone(),
            bus.listeners.clone(),
            Arc::clone(&bus.subscribed),
            ready_tx,
        ));
        // The first try is bounded by SUBSCRIBE_WAIT.
        if !ready_rx.await.unwrap_or(false) {
            tracing::warn!(channel = %bus.channel,
                "Redis did not answer at start: serving without bus notices until it does, and dropping caches then");
        }
        Ok(bus)
    }

    /// A bus that publishes and hears nothing (its listeners are never called), for a
    /// one-shot command: it neither subscribes nor waits to.
    pub async fn publisher(url: &str, prefix: &str) -> anyhow::Result<Self> {
        let (_, connection) = redis_connection(url).await?;
        Ok(Self::over(connection, prefix))
    }

    /// A bus over `connection`, not subscribed: notices travel on `<prefix>notices`.
    fn over(connection: redis::aio::ConnectionManager, prefix: &str) -> Self {
        Self {
            channel: format!("{prefix}notices"),
            limits_key: format!("{prefix}limits"),
            connection,
            listeners: Listeners::default(),
            subscribed: Arc::new(AtomicBool::new(false)),
        }
    }
}

async fn subscribe(
    client: redis::Client,
    channel: String,
    listeners: Listeners,
    subscribed: Arc<AtomicBool>,
    ready: tokio::sync::oneshot::Sender<bool>,
) {
    let mut ready = Some(ready);
    let mut had_gap = false;
    let mut backoff = Duration::from_millis(100);
    loop {
        // Bounded: a Redis that accepts connections but does not answer must not keep
        // the subscriber from trying again.
        let connected = tokio::time::timeout(SUBSCRIBE_WAIT, async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&channel).await?;
            Ok::<_, redis::RedisError>(pubsub)
        })
        .await;
        match connected {
            Ok(Ok(pubsub)) => {
                if !subscribed.swap(true, Ordering::SeqCst) {
                    tracing::info!(channel = %channel, "subscribed to bus notices");
                }
                backoff = Duration::from_millis(100);
                if let Some(ready) = ready.take() {
                    let _ = ready.send(true);
                }
                if std::mem::take(&mut had_gap) {
                    listeners.call(&BusEvent::MayHaveMissed);
                }
                let (mut sink, mut messages) = pubsub.split();
                let mut ping = tokio::time::interval_at(
                    tokio::time::Instant::now() + SUBSCRIPTION_PING_EVERY,
                    SUBSCRIPTION_PING_EVERY,
                );
                ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        message = messages.next() => {
                            let Some(message) = message else { break };
                            let payload: Vec<u8> = message.get_payload_bytes().to_vec();
                            match serde_json::from_slice::<Notice>(&payload) {
                                Ok(notice) => listeners.call(&BusEvent::Notice(notice)),
                                Err(err) => tracing::warn!(error = %err, "ignoring a malformed bus notice"),
                            }
                        }
                        _ = ping.tick() => {
                            match tokio::time::timeout(SUBSCRIPTION_PING_WAIT, sink.ping::<redis::Value>()).await {
                                Ok(Ok(_)) => {}
                                Ok(Err(err)) => {
                                    tracing::debug!(error = %err, "the subscription's ping failed");
                                    break;
                                }
                                Err(_) => {
                                    tracing::debug!("the subscription did not answer a ping");
                                    break;
                                }
                            }
                        }
                    }
                }
            }
            Ok(Err(err)) => tracing::debug!(error = %err, "subscribing failed"),
            Err(_) => tracing::debug!("subscribing timed out"),
        }
        had_gap = true;
        if let Some(ready) = ready.take() {
            let _ = ready.send(false);
        }
        if subscribed.swap(false, Ordering::SeqCst) {
            // Log once per outage, not once per retry.
            tracing::warn!(channel = %channel, "lost the bus subscription; reconnecting");
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

#[async_trait]
impl Bus for RedisBus {
    async fn publish(&self, notice: Notice) -> anyhow::Result<()> {
        let payload = serde_json::to_string(&notice)?;
        let mut connection = self.connection.clone();
        within(
            "publishing a bus notice",
            redis::cmd("PUBLISH")
                .arg(&self.channel)
                .arg(payload)
                .query_async::<i64>(&mut connection),
        )
        .await?;
        Ok(())
    }

    fn listen(&self, listener: Listener) {
        self.listeners.add(listener);
    }

    async fn publish_limits(&self, limits: ProjectLimits) -> anyhow::Result<()> {
        let stored = serde_json::to_string(&limits)?;
        let project = limits.project_id.to_string();
        let notice = serde_json::to_string(&Notice::LimitsChanged { limits })?;
        let mut connection = self.connection.clone();
        // One round trip: stored and announced together, or neither.
        within(
            "storing and announcing limits in Redis",
            redis::pipe()
                .atomic()
                .cmd("HSET")
                .arg(&self.limits_key)
                .arg(project)
                .arg(stored)
                .ignore()
                .cmd("PUBLISH")
                .arg(&self.channel)
                .arg(notice)
                .ignore()
                .query_async::<()>(&mut connection),
        )
        .await
    }

    async fn withdraw_limits(&self, project: ProjectId) -> anyhow::Result<()> {
        let mut connection = self.connection.clone();
        within(
            "removing limits from Redis",
            redis::cmd("HDEL")
                .arg(&self.limits_key)
                .arg(project.to_string())
                .query_async::<i64>(&mut connection),
        )
        .await?;
        Ok(())
    }

    async fn all_limits(&self) -> anyhow::Result<Vec<ProjectLimits>> {
        let mut connection = self.connection.clone();
        let entries: HashMap<String, String> = within(
            "loading limits from Redis",
            redis::cmd("HGETALL").arg(&self.limits_key).query_async(&mut connection),
        )
        .await?;
        Ok(entries
            .values()
            .filter_map(|json| match serde_json::from_str(json) {
                Ok(limits) => Some(limits),
                Err(err) => {
                    tracing::warn!(error = %err, "ignoring malformed limits in Redis");
                    None
                }
            })
            .collect())
    }
}

#[async_trait]
impl ReadinessCheck for RedisBus {
    fn name(&self) -> &'static str {
        "bus"
    }

    async fn check(&self) -> Result<(), String> {
        if !self.subscribed.load(Ordering::SeqCst) {
            return Err("not subscribed to Redis; retrying".into());
        }
        let mut connection = self.connection.clone();
        within("PING", redis::cmd("PING").query_async::<String>(&mut connection))
            .await
            .map(drop)
            .map_err(|err| format!("{err:#}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn in_process_notices_reach_every_listener_before_publish_returns() {
        let bus = InProcessBus::default();
        let heard = Arc::new(std::sync::Mutex::new(Vec::new()));
        for _ in 0..2 {
            let heard = Arc::clone(&heard);
            bus.listen(Arc::new(move |event| heard.lock().expect("lock").push(event.clone())));
        }
        let notice = Notice::KeyRevoked {
            project_id: ProjectId::new(),
            key_id: "abc".into(),
        };
        bus.publish(notice.clone()).await.expect("publish");
        let expected = BusEvent::Notice(notice);
        assert_eq!(*heard.lock().expect("lock"), vec![expected.clone(), expected]);
    }

    #[test]
    fn notices_have_a_stable_json_shape() {
        let project_id = ProjectId::new();
        let json = serde_json::to_value(Notice::ProjectDeleted { project_id }).expect("serializes");
        assert_eq!(
            json,
            serde_json::json!({"kind": "project_deleted", "project_id": project_id})
        );
    }
}
