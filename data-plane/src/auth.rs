//! Who is calling: API keys and project tokens, resolved to a [`Principal`].
//!
//! An API key is checked against its argon2id hash once; the outcome is cached under a
//! SHA-256 of the whole key (bounded, with a TTL), so a cached check costs
//! microseconds and the cache never holds a usable secret. Revocations reach the cache
//! two ways: bus notices (immediately) and a poll of recently revoked keys every
//! second (a safety net for lost notices, and for revocations made by the CLI).
//! Project tokens (JWTs) are verified with the shared secret, no database involved.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use chrono::{DateTime, Utc};
use quiver_common::ApiError;
use quiver_common::bus::{Bus, BusEvent, Notice};
use quiver_common::domain::{ProjectId, Scope};
use quiver_common::secrets::{HashQueue, fingerprint, parse_api_key, verify_secret_bounded};
use quiver_common::token::{JwtKeys, looks_like_jwt};
use quiver_store::{Project, Store};

use crate::DataPlane;

/// How long a verified key stays cached when nothing revokes it.
const CACHE_TTL: Duration = Duration::from_secs(300);
/// How far behind this pod's clock a revoker's may run and its revocations still be
/// found by the poll (see `spawn_watchers`).
const REVOKER_CLOCK_SKEW: chrono::Duration = chrono::Duration::seconds(60);
/// How many verified keys a pod keeps.
const CACHE_CAPACITY: u64 = 100_000;
/// How often `last_used_at` is written per key, at most.
const TOUCH_EVERY: Duration = Duration::from_secs(60);

/// An authenticated caller and its project. The only way to a project's data:
/// handlers take the project from here, never from the request.
#[derive(Debug, Clone)]
pub struct Principal {
    pub project_id: ProjectId,
    /// The project, from the pod's cache.
    pub project: Arc<Project>,
    pub scopes: BTreeSet<Scope>,
    /// `Some` for tokens limited to some namespaces.
    pub namespaces: Option<BTreeSet<String>>,
    /// The API key's id, or the token's subject.
    pub credential: String,
    /// Where this request's rate-limit decision goes, for its response headers.
    pub rate: crate::limits::RateSlot,
}

impl Principal {
    /// A 403 unless the caller has `scope`.
    pub fn require(&self, scope: Scope) -> Result<(), ApiError> {
        if self.scopes.contains(&scope) {
            Ok(())
        } else {
            let name = match scope {
                Scope::Read => "read",
                Scope::Write => "write",
                Scope::Admin => "admin",
            };
            Err(ApiError::Forbidden(format!(
                "this credential lacks the {name} scope needed for this operation"
            )))
        }
    }

    /// A 403 unless the caller may touch `namespace`.
    pub fn require_namespace(&self, namespace: &str) -> Result<(), ApiError> {
        match &self.namespaces {
            Some(allowed) if !allowed.contains(namespace) => Err(ApiError::Forbidden(format!(
                "this token may not access namespace \"{namespace}\""
            ))),
            _ => Ok(()),
        }
    }

    /// Whether the caller may see `namespace` (for listings).
    pub fn may_see(&self, namespace: &str) -> bool {
        self.namespaces
            .as_ref()
            .is_none_or(|allowed| allowed.contains(namespace))
    }
}

#[derive(Debug, Clone)]
struct VerifiedKey {
    key_id: String,
    project_id: ProjectId,
    scopes: BTreeSet<Scope>,
    expires_at: Option<DateTime<Utc>>,
    /// The bus gaps counted when the key was last checked against the database.
    gaps: u64,
}

impl VerifiedKey {
    /// A key as its row has it, checked against the database after `gaps` bus gaps.
    fn of(stored: quiver_store::ApiKey, gaps: u64) -> Self {
        Self {
            key_id: stored.id,
            project_id: stored.project_id,
            scopes: stored.role.scopes().iter().copied().collect(),
            expires_at: stored.expires_at,
            gaps,
        }
    }
}

/// Who a credential belongs to, before its project is looked up.
#[derive(Debug, Clone)]
pub struct Credential {
    pub project_id: ProjectId,
    pub scopes: BTreeSet<Scope>,
    pub namespaces: Option<BTreeSet<String>>,
    pub credential: String,
}

/// Resolves credentials to principals. One per pod.
pub struct Authenticator {
    store: Arc<dyn Store>,
    jwt: JwtKeys,
    verified: moka::future::Cache<[u8; 32], Arc<VerifiedKey>>,
    /// Keys revoked recently: checked on every hit, so a verification that raced a
    /// revocation cannot resurrect the key. Pruned after the cache TTL.
    revoked: Mutex<HashMap<String, Instant>>,
    touched: moka::future::Cache<String, ()>,
    /// Refused key checks (a database read and often an argon2id verification, ~13 ms
    /// of CPU) per client address: a flood of made-up or wrong keys from one address
    /// is refused before it reaches argon2. Keys that verify are not counted, so
    /// clients behind one proxy address, all presenting keys a pod has not seen yet
    /// (after a restart), are never held back.
    failures_per_peer: governor::DefaultKeyedRateLimiter<IpAddr>,
    /// Addresses whose refused checks spent their budget, and until when.
    blocked_peers: Mutex<HashMap<IpAddr, Instant>>,
    /// Gaps the bus has had: a cached key checked before the last one is read from the
    /// database again on its next use (a notice that deleted it may be lost).
    gaps: std::sync::atomic::AtomicU64,
}

/// Refused key checks one address may cause: a burst of 30, then 10 a second.
const FAILURES_PER_SECOND: u32 = 10;
const FAILURE_BURST: u32 = 30;

/// Why a credential was refused; all but `Throttled` become 401s with the same message shape.
#[derive(Debug)]
enum Refusal {
    Unknown,
    Revoked,
    Expired,
    Throttled(Duration),
    /// The key could not be checked (the store unreachable, the hash task failed):
    /// not the caller's fault, and not counted against its address.
    Unchecked(ApiError),
}

impl Authenticator {
    pub fn new(store: Arc<dyn Store>, jwt: JwtKeys) -> Self {
        Self {
            store,
            jwt,
            verified: moka::future::Cache::builder()
                .max_capacity(CACHE_CAPACITY)
                .time_to_live(CACHE_TTL)
                .support_invalidation_closures()
                .build(),
            revoked: Mutex::new(HashMap::new()),
            touched: moka::future::Cache::builder()
                .max_capacity(CACHE_CAPACITY)
                .time_to_live(TOUCH_EVERY)
                .build(),
            failures_per_peer: governor::RateLimiter::keyed(
                governor::Quota::per_second(NonZeroU32::new(FAILURES_PER_SECOND).expect("non-zero"))
                    .allow_burst(NonZeroU32::new(FAILURE_BURST).expect("non-zero")),
            ),
            blocked_peers: Mutex::new(HashMap::new()),
            gaps: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Keeps the cache honest: listens to bus notices and polls revocations.
    pub fn spawn_watchers(self: &Arc<Self>, bus: &dyn Bus) {
        // A weak reference: the bus must not keep a dropped pod's cache alive.
        let weak = Arc::downgrade(self);
        bus.listen(Arc::new(move |event| {
            if let Some(this) = weak.upgrade() {
                this.apply(event);
            }
        }));
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let mut since = Utc::now();
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                // Addresses whose budget is whole again need no memory.
                this.failures_per_peer.retain_recent();
                let now = Instant::now();
                this.blocked_peers
                    .lock()
                    .expect("never poisoned")
                    .retain(|_, until| *until > now);
                // Overlap the windows by a minute: a revocation is stamped with the
                // revoker's clock (a control plane, or the CLI on an operator's
                // machine), which may run behind this pod's.
                let now = Utc::now();
                match this.store.keys_revoked_since(since - REVOKER_CLOCK_SKEW).await {
                    Ok(keys) => {
                        for key in keys {
                            if !this.recently_revoked(&key.id) {
                                this.forget_key(&key.id);
                            }
                        }
                        since = now;
                    }
                    Err(err) => tracing::debug!(error = %err, "polling revoked keys failed; will retry"),
                }
            }
        });
    }

    fn apply(&self, event: &BusEvent) {
        match event {
            BusEvent::Notice(Notice::KeyRevoked { key_id, .. }) => self.forget_key(key_id),
            BusEvent::Notice(Notice::ProjectDeleted { project_id }) => {
                let project_id = *project_id;
                if self
                    .verified
                    .invalidate_entries_if(move |_, v| v.project_id == project_id)
                    .is_err()
                {
                    self.verified.invalidate_all();
                }
            }
            BusEvent::Notice(
                Notice::ProjectChanged { .. }
                | Notice::NamespaceChanged { .. }
                | Notice::NamespaceDeleted { .. }
                | Notice::LimitsChanged { .. },
            ) => {}
            BusEvent::MayHaveMissed => {
                // Not dropped: each would cost an argon2 check (~13 ms of CPU) on its
                // next use, every pod at once after a Redis blip. The database says
                // whether a key is still there; its secret was checked already.
                tracing::warn!("the bus had a gap; cached keys are read from the database again on their next use");
                self.gaps.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
    }

    fn forget_key(&self, key_id: &str) {
        {
            let mut revoked = self.revoked.lock().expect("the revoked set is never poisoned");
            let now = Instant::now();
            revoked.retain(|_, at| now.duration_since(*at) < CACHE_TTL);
            revoked.insert(key_id.to_owned(), now);
        }
        let key_id = key_id.to_owned();
        if self
            .verified
            .invalidate_entries_if(move |_, v| v.key_id == key_id)
            .is_err()
        {
            self.verified.invalidate_all();
        }
    }

    fn recently_revoked(&self, key_id: &str) -> bool {
        self.revoked
            .lock()
            .expect("the revoked set is never poisoned")
            .contains_key(key_id)
    }

    /// Resolves a presented credential: an API key or a project token.
    pub async fn authenticate(&self, credential: &str) -> Result<Credential, ApiError> {
        self.authenticate_from(credential, || None).await
    }

    /// [`Authenticator::authenticate`] for a request from the address `peer` gives,
    /// whose key checks that miss the cache are rate-limited per address (per /64 for
    /// IPv6). `peer` is asked only on a miss.
    pub async fn authenticate_from(
        &self,
        credential: &str,
        peer: impl FnOnce() -> Option<IpAddr> + Send,
    ) -> Result<Credential, ApiError> {
        if looks_like_jwt(credential) {
            let claims = self
                .jwt
                .verify_project_token(credential)
                .map_err(|_| ApiError::Unauthorized("the token is invalid or expired".into()))?;
            return Ok(Credential {
                project_id: claims.project_id,
                scopes: claims.scopes,
                namespaces: claims.namespaces,
                credential: claims.sub,
            });
        }
        let key = self
            .verify_key(credential, peer)
            .await
            .map_err(|refusal| match refusal {
                Refusal::Unknown => ApiError::Unauthorized("invalid API key".to_owned()),
                Refusal::Revoked => ApiError::Unauthorized("this API key was revoked".to_owned()),
                Refusal::Expired => ApiError::Unauthorized("this API key has expired".to_owned()),
                Refusal::Throttled(wait) => ApiError::RateLimited {
                    message: "too many unrecognised API keys from this address; slow down".to_owned(),
                    retry_after_secs: quiver_common::error::retry_after_secs(wait),
                },
                Refusal::Unchecked(err) => err,
            })?;
        self.touch(&key.key_id).await;
        Ok(Credential {
            project_id: key.project_id,
            scopes: key.scopes.clone(),
            namespaces: None,
            credential: key.key_id.clone(),
        })
    }

    async fn verify_key(
        &self,
        presented: &str,
        peer: impl FnOnce() -> Option<IpAddr> + Send,
    ) -> Result<Arc<VerifiedKey>, Refusal> {
        let (key_id, secret) = parse_api_key(presented).ok_or(Refusal::Unknown)?;
        let fingerprint = fingerprint(presented);
        let key = match self.verified.get(&fingerprint).await {
            Some(hit) if hit.gaps < self.gaps.load(std::sync::atomic::Ordering::SeqCst) => {
                match self.recheck(&hit).await {
                    Ok(fresh) => {
                        self.verified.insert(fingerprint, Arc::clone(&fresh)).await;
                        fresh
                    }
                    Err(refusal) => {
                        self.verified.invalidate(&fingerprint).await;
                        return Err(refusal);
                    }
                }
            }
            Some(hit) => hit,
            None => {
                // An IPv6 client spends the budget of its /64.
                let peer = peer().map(crate::client::budget_holder);
                if let Some(wait) = peer.and_then(|peer| self.blocked_for(peer)) {
                    return Err(Refusal::Throttled(wait));
                }
                let loaded = match self.load_key(key_id, secret).await {
                    Ok(loaded) => loaded,
                    Err(unchecked @ Refusal::Unchecked(_)) => return Err(unchecked),
                    Err(refusal) => {
                        if let Some(peer) = peer {
                            self.count_failure(peer);
                        }
                        return Err(refusal);
                    }
                };
                self.verified.insert(fingerprint, Arc::clone(&loaded)).await;
                loaded
            }
        };
        if self.recently_revoked(&key.key_id) {
            self.verified.invalidate(&fingerprint).await;
            return Err(Refusal::Revoked);
        }
        if key.expires_at.is_some_and(|at| at <= Utc::now()) {
            return Err(Refusal::Expired);
        }
        Ok(key)
    }

    /// How long `peer` is still refused, if its refused checks spent their budget.
    fn blocked_for(&self, peer: IpAddr) -> Option<Duration> {
        let blocked = self.blocked_peers.lock().expect("never poisoned");
        let until = *blocked.get(&peer)?;
        until.checked_duration_since(Instant::now())
    }

    /// Counts a refused check against `peer`; once its budget is spent, the address
    /// is refused until a check comes back to it.
    fn count_failure(&self, peer: IpAddr) {
        if let Err(not_until) = self.failures_per_peer.check_key(&peer) {
            let now = governor::clock::Clock::now(&governor::clock::DefaultClock::default());
            let until = Instant::now() + not_until.wait_time_from(now);
            self.blocked_peers.lock().expect("never poisoned").insert(peer, until);
        }
    }

    /// A cached key as the database has it now, without checking its secret again
    /// (the fingerprint that found it in the cache is of the secret that checked out).
    async fn recheck(&self, cached: &VerifiedKey) -> Result<Arc<VerifiedKey>, Refusal> {
        let gaps = self.gaps.load(std::sync::atomic::Ordering::SeqCst);
        let stored = self.stored_key(&cached.key_id).await?;
        if stored.project_id != cached.project_id {
            return Err(Refusal::Unknown);
        }
        Ok(Arc::new(VerifiedKey::of(stored, gaps)))
    }

    /// A key's row, if it is there and not revoked.
    async fn stored_key(&self, key_id: &str) -> Result<quiver_store::ApiKey, Refusal> {
        let stored = match self.store.api_key(key_id).await {
            Ok(Some(stored)) => stored,
            Ok(None) => return Err(Refusal::Unknown),
            // Fail closed, as what it is: a database outage is a 503, not a bad key.
            Err(err) => {
                tracing::warn!(error = %err, "cannot load an API key");
                return Err(Refusal::Unchecked(err.into()));
            }
        };
        if stored.revoked_at.is_some() {
            return Err(Refusal::Revoked);
        }
        Ok(stored)
    }

    async fn load_key(&self, key_id: &str, secret: &str) -> Result<Arc<VerifiedKey>, Refusal> {
        let gaps = self.gaps.load(std::sync::atomic::Ordering::SeqCst);
        let stored = self.stored_key(key_id).await?;
        let (secret, hash) = (secret.to_owned(), stored.secret_hash.clone());
        let matches = verify_secret_bounded(HashQueue::Keys, secret, Some(hash))
            .await
            .map_err(|err| Refusal::Unchecked(ApiError::Internal(err.context("checking an API key's hash"))))?;
        if !matches {
            return Err(Refusal::Unknown);
        }
        Ok(Arc::new(VerifiedKey::of(stored, gaps)))
    }

    /// Writes `last_used_at` at most once a minute per key, off the request path.
    async fn touch(&self, key_id: &str) {
        if self.touched.contains_key(key_id) {
            return;
        }
        self.touched.insert(key_id.to_owned(), ()).await;
        let (store, key_id) = (Arc::clone(&self.store), key_id.to_owned());
        tokio::spawn(async move {
            if let Err(err) = store.touch_api_key(&key_id, Utc::now()).await {
                tracing::debug!(error = %err, key_id = %key_id, "recording key use failed");
            }
        });
    }
}

/// The credential of a request: `x-api-key`, `Authorization: Bearer`, or `?api_key=`
/// (accepted for clients that cannot set headers; the query is never logged).
fn credential(parts: &Parts) -> Option<String> {
    if let Some(key) = parts.headers.get("x-api-key").and_then(|v| v.to_str().ok()) {
        return Some(key.trim().to_owned());
    }
    // An Authorization header of another scheme (a proxy's Basic, say) is not ours:
    // the key may still come in the query.
    if let Some(auth) = parts.headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok())
        && let Some((scheme, value)) = auth.split_once(' ')
        && scheme.eq_ignore_ascii_case("bearer")
    {
        return Some(value.trim().to_owned());
    }
    let query = parts.uri.query()?;
    query.split('&').find_map(|pair| {
        let (name, value) = pair.split_once('=')?;
        (name == "api_key").then(|| value.to_owned())
    })
}

impl FromRequestParts<DataPlane> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &DataPlane) -> Result<Self, Self::Rejection> {
        let credential = credential(parts)
            .ok_or_else(|| ApiError::Unauthorized("missing API key: send x-api-key or Authorization: Bearer".into()))?;
        // The client behind the connection (a load balancer's address would make its
        // clients share one budget of refused key checks), read only if the key misses
        // the cache.
        let peer = || {
            parts
                .extensions
                .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                .map(|info| state.trusted_proxies.client(info.0.ip(), &parts.headers))
        };
        let credential = state.auth.authenticate_from(&credential, peer).await?;
        // A token outlives nothing: one for a deleted project is refused like a bad one.
        let project = state
            .projects
            .get(credential.project_id)
            .await?
            .ok_or_else(|| ApiError::Unauthorized("the credential's project does not exist".into()))?;
        tracing::Span::current().record("project_id", tracing::field::display(project.id));
        let rate = parts
            .extensions
            .get::<crate::limits::RateSlot>()
            .cloned()
            .unwrap_or_default();
        rate.authenticated(Arc::clone(&project));
        Ok(Principal {
            project_id: project.id,
            project,
            scopes: credential.scopes,
            namespaces: credential.namespaces,
            credential: credential.credential,
            rate,
        })
    }
}
