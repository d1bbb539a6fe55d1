//! The bus: how the control plane tells every data-plane pod that something changed
//! (a key was revoked, a project changed plan or was deleted).
//!
//! Standalone uses [`InProcessBus`]; a cluster uses [`RedisBus`] (Redis pub/sub on one
//! channel per deployment prefix). Subscribers get a `tokio::sync::broadcast` receiver;
//! one that lags behind must assume it missed notices and drop what it cached.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt as _;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

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
}

/// Publishes notices and hands out subscriptions.
#[async_trait]
pub trait Bus: ReadinessCheck + Send + Sync {
    /// Sends a notice to every subscriber, in this process and others.
    async fn publish(&self, notice: Notice) -> anyhow::Result<()>;
    /// A receiver of every notice published from now on.
    fn subscribe(&self) -> broadcast::Receiver<Notice>;
}

const CAPACITY: usize = 4096;

/// The bus of a single process.
#[derive(Debug, Clone)]
pub struct InProcessBus {
    sender: broadcast::Sender<Notice>,
}

impl Default for InProcessBus {
    fn default() -> Self {
        Self {
            sender: broadcast::channel(CAPACITY).0,
        }
    }
}

#[async_trait]
impl Bus for InProcessBus {
    async fn publish(&self, notice: Notice) -> anyhow::Result<()> {
        // No receiver yet is fine: nobody has anything cached.
        let _ = self.sender.send(notice);
        Ok(())
    }

    fn subscribe(&self) -> broadcast::Receiver<Notice> {
        self.sender.subscribe()
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

/// A bus over Redis pub/sub. A background task keeps one subscription open,
/// reconnecting with backoff, and fans notices out to local subscribers.
pub struct RedisBus {
    channel: String,
    connection: redis::aio::ConnectionManager,
    sender: broadcast::Sender<Notice>,
    subscribed: Arc<AtomicBool>,
}

impl RedisBus {
    /// Connects to Redis at `url`; notices travel on `<prefix>notices`.
    pub async fn connect(url: &str, prefix: &str) -> anyhow::Result<Self> {
        let client = redis::Client::open(url).map_err(|err| anyhow::anyhow!("invalid REDIS_URL: {err}"))?;
        let connection = redis::aio::ConnectionManager::new(client.clone())
            .await
            .map_err(|err| anyhow::anyhow!("cannot reach Redis: {err}; check REDIS_URL and that Redis is running"))?;
        let channel = format!("{prefix}notices");
        let (sender, _) = broadcast::channel(CAPACITY);
        let subscribed = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        tokio::spawn(listen(
            client,
            channel.clone(),
            sender.clone(),
            Arc::clone(&subscribed),
            ready_tx,
        ));
        // Wait for the first subscription so that notices published right after
        // start-up are not missed; give up waiting after a few seconds.
        let _ = tokio::time::timeout(Duration::from_secs(5), ready_rx).await;
        Ok(Self {
            channel,
            connection,
            sender,
            subscribed,
        })
    }
}

async fn listen(
    client: redis::Client,
    channel: String,
    sender: broadcast::Sender<Notice>,
    subscribed: Arc<AtomicBool>,
    ready: tokio::sync::oneshot::Sender<()>,
) {
    let mut ready = Some(ready);
    let mut backoff = Duration::from_millis(100);
    loop {
        match client.get_async_pubsub().await {
            Ok(mut pubsub) => match pubsub.subscribe(&channel).await {
                Ok(()) => {
                    if !subscribed.swap(true, Ordering::SeqCst) {
                        tracing::info!(channel = %channel, "subscribed to bus notices");
                    }
                    backoff = Duration::from_millis(100);
                    if let Some(ready) = ready.take() {
                        let _ = ready.send(());
                    }
                    let mut messages = pubsub.into_on_message();
                    while let Some(message) = messages.next().await {
                        let payload: Vec<u8> = message.get_payload_bytes().to_vec();
                        match serde_json::from_slice::<Notice>(&payload) {
                            Ok(notice) => {
                                let _ = sender.send(notice);
                            }
                            Err(err) => tracing::warn!(error = %err, "ignoring a malformed bus notice"),
                        }
                    }
                }
                Err(err) => tracing::debug!(error = %err, "subscribing failed"),
            },
            Err(err) => tracing::debug!(error = %err, "connecting to Redis failed"),
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
        redis::cmd("PUBLISH")
            .arg(&self.channel)
            .arg(payload)
            .query_async::<i64>(&mut connection)
            .await
            .map_err(|err| anyhow::anyhow!("publishing a bus notice failed: {err}"))?;
        Ok(())
    }

    fn subscribe(&self) -> broadcast::Receiver<Notice> {
        self.sender.subscribe()
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
        redis::cmd("PING")
            .query_async::<String>(&mut connection)
            .await
            .map(drop)
            .map_err(|err| err.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn in_process_notices_reach_every_subscriber() {
        let bus = InProcessBus::default();
        let (mut a, mut b) = (bus.subscribe(), bus.subscribe());
        let notice = Notice::KeyRevoked {
            project_id: ProjectId::new(),
            key_id: "abc".into(),
        };
        bus.publish(notice.clone()).await.expect("publish");
        assert_eq!(a.recv().await.expect("a"), notice);
        assert_eq!(b.recv().await.expect("b"), notice);
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
