//! Rate limits: each project's queries/min and documents/min, held per project
//! across every pod.
//!
//! The limits themselves come from the control plane through the bus (loaded at
//! start, updated by `LimitsChanged` notices; a project not heard of yet falls back
//! to its plan in the store). Admission is GCRA: a budget of a minute's quota that
//! refills continuously, so a Starter project may burst 30 queries and then gets one
//! every two seconds.
//!
//! - Standalone (one process) keeps its budgets in memory with `governor`.
//! - A cluster keeps one budget per project in Redis (a Lua GCRA script, atomic), and
//!   each pod leases a slice of it at a time (one token at low rates, 1/200th of the
//!   quota at high ones), so most requests are decided in memory and pods together
//!   never admit more than the plan. When Redis cannot be reached, each pod enforces
//!   its share (the quota divided by the live pods it last saw) with `governor`, logs
//!   it once, reports it on `/readyz`, and goes back to Redis when it answers.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use axum::extract::{Request, State};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use quiver_common::ApiError;
use quiver_common::bus::{Bus, BusEvent, Notice, ProjectLimits};
use quiver_common::domain::ProjectId;
use quiver_common::http::ReadinessCheck;
use quiver_store::Store;

/// What a request spends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Searches, queries and fetches: one per request.
    Queries,
    /// Writes: one per vector or document written.
    Documents,
}

/// The outcome of taking from a budget, with what the rate-limit headers say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// The per-minute quota.
    pub limit: u32,
    /// What could still be taken now.
    pub remaining: u64,
    /// When the budget will be full again, in epoch seconds.
    pub reset: u64,
    /// `None` when admitted; otherwise how long until the request would be.
    pub retry_after: Option<Duration>,
}

impl Decision {
    pub fn admitted(&self) -> bool {
        self.retry_after.is_none()
    }
}

/// A per-project budget store.
#[async_trait]
pub trait Budget: ReadinessCheck + Send + Sync {
    /// Takes `n` units (all or none) from the budget of (`project`, `kind`), whose quota
    /// is `per_minute` with a burst of the same size.
    async fn take(&self, project: ProjectId, kind: Kind, per_minute: u32, n: u32) -> Decision;
    /// The budget's state, taking nothing.
    fn peek(&self, project: ProjectId, kind: Kind, per_minute: u32) -> Decision;
    /// Drops a deleted project's budgets.
    fn forget(&self, project: ProjectId);
}

fn epoch_now() -> Duration {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default()
}

/// Time for one unit of a per-minute quota to come back.
fn interval(per_minute: u32) -> Duration {
    Duration::from_secs(60) / per_minute.max(1)
}

/// Epoch seconds, rounded up, when `missing` units will have come back.
fn reset_after(per_minute: u32, missing: u64) -> u64 {
    let wait = interval(per_minute).saturating_mul(u32::try_from(missing).unwrap_or(u32::MAX));
    (epoch_now() + wait).as_secs_f64().ceil() as u64
}

type Limiter = RateLimiter<NotKeyed, InMemoryState, DefaultClock, StateInformationMiddleware>;

struct Bucket {
    per_minute: u32,
    limiter: Limiter,
    /// What the last decision left, and when: what `peek` starts from.
    last: Mutex<(Instant, u64)>,
}

impl Bucket {
    fn new(per_minute: u32) -> Self {
        let quota = NonZeroU32::new(per_minute.max(1)).expect("max(1) is non-zero");
        Self {
            per_minute,
            limiter: RateLimiter::direct(Quota::per_minute(quota).allow_burst(quota))
                .with_middleware::<StateInformationMiddleware>(),
            last: Mutex::new((Instant::now(), u64::from(quota.get()))),
        }
    }

    /// A bucket of `per_minute` with `spent` of it already taken (at most all of it).
    fn spent(per_minute: u32, spent: u64) -> Self {
        let bucket = Self::new(per_minute);
        let spent = u32::try_from(spent).unwrap_or(u32::MAX).min(per_minute.max(1));
        if let Some(spent) = NonZeroU32::new(spent) {
            bucket.take(spent.get());
        }
        bucket
    }

    fn take(&self, n: u32) -> Decision {
        let per_minute = self.per_minute;
        let denied = |retry_after: Duration| Decision {
            limit: per_minute,
            remaining: 0,
            reset: reset_after(per_minute, u64::from(per_minute)),
            retry_after: Some(retry_after),
        };
        let cells = NonZeroU32::new(n.max(1)).expect("max(1) is non-zero");
        match self.limiter.check_n(cells) {
            Ok(Ok(snapshot)) => {
                let remaining = u64::from(snapshot.remaining_burst_capacity());
                *self.last.lock().expect("never poisoned") = (Instant::now(), remaining);
                Decision {
                    limit: per_minute,
                    remaining,
                    reset: reset_after(per_minute, u64::from(per_minute) - remaining.min(u64::from(per_minute))),
                    retry_after: None,
                }
            }
            Ok(Err(not_until)) => {
                *self.last.lock().expect("never poisoned") = (Instant::now(), 0);
                denied(
                    not_until
                        .wait_time_from(DefaultClock::default().now())
                        .max(Duration::from_millis(1)),
                )
            }
            // More than the whole burst: it would never be admitted at once.
            Err(_) => denied(Duration::MAX),
        }
    }

    fn peek(&self) -> Decision {
        let (at, remaining) = *self.last.lock().expect("never poisoned");
        let refilled = at.elapsed().as_nanos() / interval(self.per_minute).as_nanos().max(1);
        let remaining = (u128::from(remaining) + refilled).min(u128::from(self.per_minute)) as u64;
        Decision {
            limit: self.per_minute,
            remaining,
            reset: reset_after(self.per_minute, u64::from(self.per_minute) - remaining),
            retry_after: None,
        }
    }
}

/// Budgets in this process's memory: exact for standalone, and a cluster pod's
/// fallback while Redis is away.
#[derive(Default)]
pub struct LocalBudget {
    buckets: RwLock<HashMap<(ProjectId, Kind), Arc<Bucket>>>,
}

impl LocalBudget {
    fn bucket(&self, project: ProjectId, kind: Kind, per_minute: u32) -> Arc<Bucket> {
        if let Some(bucket) = self.buckets.read().expect("never poisoned").get(&(project, kind))
            && bucket.per_minute == per_minute
        {
            return Arc::clone(bucket);
        }
        let mut buckets = self.buckets.write().expect("never poisoned");
        let bucket = buckets
            .entry((project, kind))
            .or_insert_with(|| Arc::new(Bucket::new(per_minute)));
        if bucket.per_minute != per_minute {
            // A new quota (a plan change, or a pod's share of it changing) keeps what
            // was spent of the old one: switching plans back and forth must not
            // refill the budget each time.
            let spent = u64::from(bucket.per_minute).saturating_sub(bucket.peek().remaining);
            *bucket = Arc::new(Bucket::spent(per_minute, spent));
        }
        Arc::clone(bucket)
    }

    /// [`Budget::take`] without the async wrapper.
    pub fn take_now(&self, project: ProjectId, kind: Kind, per_minute: u32, n: u32) -> Decision {
        self.bucket(project, kind, per_minute).take(n)
    }
}

#[async_trait]
impl Budget for LocalBudget {
    async fn take(&self, project: ProjectId, kind: Kind, per_minute: u32, n: u32) -> Decision {
        self.take_now(project, kind, per_minute, n)
    }

    fn peek(&self, project: ProjectId, kind: Kind, per_minute: u32) -> Decision {
        self.bucket(project, kind, per_minute).peek()
    }

    fn forget(&self, project: ProjectId) {
        self.buckets
            .write()
            .expect("never poisoned")
            .retain(|(p, _), _| *p != project);
    }
}

#[async_trait]
impl ReadinessCheck for LocalBudget {
    fn name(&self) -> &'static str {
        "rate_limits"
    }

    async fn check(&self) -> Result<(), String> {
        Ok(())
    }
}

/// GCRA over `n` units in Redis, granting between `min` and `want` of them.
/// KEYS[1]: the budget; ARGV: interval (ms per unit), burst (units), min, want.
/// Returns {granted, remaining after, full-again time (epoch ms), retry after (ms)}.
const GCRA: &str = r"
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local min = tonumber(ARGV[3])
local want = tonumber(ARGV[4])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local available = math.floor((now + burst * interval - tat) / interval)
if available < min then
  return {0, available, tat, math.ceil(tat + min * interval - burst * interval - now)}
end
local granted = math.min(available, want)
tat = tat + granted * interval
redis.call('SET', KEYS[1], tat, 'PX', math.ceil(tat - now) + 1000)
return {granted, available - granted, tat, 0}
";

/// Units this pod holds, taken from Redis ahead of use.
#[derive(Debug, Clone, Copy)]
struct Lease {
    per_minute: u32,
    held: u32,
    /// Redis's remaining budget after the lease was taken, and when it is full again.
    remaining: u64,
    reset_ms: u64,
    /// After Redis refused `need` units: until when it will go on refusing that many.
    /// Requests for as many are refused here meanwhile, so an exhausted project's
    /// traffic does not become one Redis round trip per request.
    denied: Option<(Instant, u32)>,
}

impl Lease {
    /// Nothing held yet, at a quota Redis is assumed to have whole.
    fn fresh(per_minute: u32) -> Self {
        Self {
            per_minute,
            held: 0,
            remaining: u64::from(per_minute),
            reset_ms: 0,
            denied: None,
        }
    }
}

/// The cluster's budgets: shared in Redis, leased a slice at a time.
pub struct RedisBudget {
    connection: redis::aio::ConnectionManager,
    prefix: String,
    script: redis::Script,
    leases: Mutex<HashMap<(ProjectId, Kind), Lease>>,
    fallback: LocalBudget,
    /// Redis is not asked again before this, after it failed.
    retry_redis_at: Mutex<Option<Instant>>,
    degraded: AtomicBool,
    /// Live pods as last counted from their heartbeats (at least 1).
    pods: Arc<AtomicU32>,
}

impl RedisBudget {
    /// Connects, and starts this pod's heartbeat (which also counts the live pods).
    pub async fn connect(url: &str, prefix: &str) -> anyhow::Result<Self> {
        let client = redis::Client::open(url).map_err(|err| anyhow::anyhow!("invalid REDIS_URL: {err}"))?;
        let connection = redis::aio::ConnectionManager::new(client)
            .await
            .map_err(|err| anyhow::anyhow!("cannot reach Redis: {err}; check REDIS_URL and that Redis is running"))?;
        let pods = Arc::new(AtomicU32::new(1));
        tokio::spawn(heartbeat(
            connection.clone(),
            format!("{prefix}pods"),
            Arc::clone(&pods),
        ));
        Ok(Self {
            connection,
            prefix: prefix.to_owned(),
            script: redis::Script::new(GCRA),
            leases: Mutex::new(HashMap::new()),
            fallback: LocalBudget::default(),
            retry_redis_at: Mutex::new(None),
            degraded: AtomicBool::new(false),
            pods,
        })
    }

    /// How much to lease beyond what a request needs: enough that a busy project asks
    /// Redis about once per 1/200th of its quota, little enough that units idle in
    /// other pods' leases stay under 1% of it.
    fn slice(per_minute: u32) -> u32 {
        (per_minute / 200).max(1)
    }

    fn key(&self, project: ProjectId, kind: Kind) -> String {
        let kind = match kind {
            Kind::Queries => "queries",
            Kind::Documents => "documents",
        };
        format!("{}rate:{project}:{kind}", self.prefix)
    }

    async fn ask_redis(
        &self,
        key: &str,
        per_minute: u32,
        min: u32,
        want: u32,
    ) -> redis::RedisResult<(u32, u64, u64, u64)> {
        let interval_ms = 60_000.0 / f64::from(per_minute.max(1));
        let mut connection = self.connection.clone();
        let (granted, remaining, tat, retry_ms): (i64, i64, f64, f64) = self
            .script
            .key(key)
            .arg(interval_ms)
            .arg(per_minute)
            .arg(min)
            .arg(want)
            .invoke_async(&mut connection)
            .await?;
        Ok((
            u32::try_from(granted).unwrap_or(0),
            u64::try_from(remaining).unwrap_or(0),
            tat.max(0.0) as u64,
            retry_ms.max(1.0) as u64,
        ))
    }

    fn redis_resting(&self) -> bool {
        let retry_at = self.retry_redis_at.lock().expect("never poisoned");
        retry_at.is_some_and(|at| Instant::now() < at)
    }

    fn redis_failed(&self, err: &redis::RedisError) {
        *self.retry_redis_at.lock().expect("never poisoned") = Some(Instant::now() + Duration::from_secs(1));
        if !self.degraded.swap(true, Ordering::SeqCst) {
            tracing::warn!(
                error = %err,
                pods = self.pods.load(Ordering::Relaxed),
                "Redis is unreachable: enforcing each project's limits on this pod alone (its share of the plan) until it is back"
            );
        }
    }

    fn redis_answered(&self) {
        if self.degraded.swap(false, Ordering::SeqCst) {
            tracing::info!("Redis is back: rate limits are shared across pods again");
        }
        *self.retry_redis_at.lock().expect("never poisoned") = None;
    }

    fn share(&self, per_minute: u32) -> u32 {
        per_minute.div_ceil(self.pods.load(Ordering::Relaxed).max(1))
    }
}

#[async_trait]
impl Budget for RedisBudget {
    async fn take(&self, project: ProjectId, kind: Kind, per_minute: u32, n: u32) -> Decision {
        let n = n.max(1);
        let held = {
            let mut leases = self.leases.lock().expect("never poisoned");
            let lease = leases.entry((project, kind)).or_insert(Lease::fresh(per_minute));
            if lease.per_minute != per_minute {
                *lease = Lease::fresh(per_minute);
            }
            if lease.held >= n {
                lease.held -= n;
                return Decision {
                    limit: per_minute,
                    remaining: lease.remaining + u64::from(lease.held),
                    reset: lease.reset_ms.div_ceil(1000),
                    retry_after: None,
                };
            }
            if let Some((until, refused)) = lease.denied {
                let now = Instant::now();
                if now < until && n - lease.held >= refused {
                    return Decision {
                        limit: per_minute,
                        remaining: u64::from(lease.held),
                        reset: reset_after(per_minute, u64::from(per_minute)),
                        retry_after: Some(until - now),
                    };
                }
            }
            // Take what is held; ask Redis for the rest (and a slice more).
            std::mem::take(&mut lease.held)
        };
        let give_back = |held: u32| {
            if held > 0
                && let Some(lease) = self.leases.lock().expect("never poisoned").get_mut(&(project, kind))
            {
                lease.held += held;
            }
        };
        if n > per_minute {
            give_back(held);
            return Decision {
                limit: per_minute,
                remaining: 0,
                reset: reset_after(per_minute, u64::from(per_minute)),
                retry_after: Some(Duration::MAX),
            };
        }
        if self.redis_resting() {
            give_back(held);
            return self.fallback.take_now(project, kind, self.share(per_minute), n);
        }
        let need = n - held;
        let want = need + Self::slice(per_minute);
        match self.ask_redis(&self.key(project, kind), per_minute, need, want).await {
            Ok((granted, remaining, reset_ms, retry_ms)) => {
                self.redis_answered();
                if granted < need {
                    give_back(held);
                    if let Some(lease) = self.leases.lock().expect("never poisoned").get_mut(&(project, kind)) {
                        lease.denied = Some((Instant::now() + Duration::from_millis(retry_ms), need));
                    }
                    return Decision {
                        limit: per_minute,
                        remaining: remaining + u64::from(held),
                        reset: reset_after(per_minute, u64::from(per_minute)),
                        retry_after: Some(Duration::from_millis(retry_ms)),
                    };
                }
                let mut leases = self.leases.lock().expect("never poisoned");
                let lease = leases.entry((project, kind)).or_insert(Lease::fresh(per_minute));
                lease.denied = None;
                lease.held += granted - need;
                lease.remaining = remaining;
                lease.reset_ms = reset_ms;
                Decision {
                    limit: per_minute,
                    remaining: remaining + u64::from(lease.held),
                    reset: reset_ms.div_ceil(1000),
                    retry_after: None,
                }
            }
            Err(err) => {
                self.redis_failed(&err);
                give_back(held);
                self.fallback.take_now(project, kind, self.share(per_minute), n)
            }
        }
    }

    fn peek(&self, project: ProjectId, kind: Kind, per_minute: u32) -> Decision {
        match self.leases.lock().expect("never poisoned").get(&(project, kind)) {
            Some(lease) if lease.per_minute == per_minute => Decision {
                limit: per_minute,
                remaining: lease.remaining + u64::from(lease.held),
                reset: lease.reset_ms.div_ceil(1000).max(epoch_now().as_secs()),
                retry_after: None,
            },
            _ => Decision {
                limit: per_minute,
                remaining: u64::from(per_minute),
                reset: epoch_now().as_secs(),
                retry_after: None,
            },
        }
    }

    fn forget(&self, project: ProjectId) {
        self.leases
            .lock()
            .expect("never poisoned")
            .retain(|(p, _), _| *p != project);
        self.fallback.forget(project);
    }
}

#[async_trait]
impl ReadinessCheck for RedisBudget {
    fn name(&self) -> &'static str {
        "rate_limits"
    }

    async fn check(&self) -> Result<(), String> {
        if self.degraded.load(Ordering::SeqCst) {
            return Err("Redis is unreachable: enforcing the last known limits on this pod alone".into());
        }
        Ok(())
    }
}

/// Every two seconds: note this pod alive in a sorted set, drop pods not seen for
/// six seconds, and count the rest.
async fn heartbeat(connection: redis::aio::ConnectionManager, key: String, pods: Arc<AtomicU32>) {
    let pod = uuid::Uuid::new_v4().to_string();
    loop {
        let now_ms = epoch_now().as_millis() as f64;
        let mut connection = connection.clone();
        let counted: redis::RedisResult<(i64, i64, u32)> = redis::pipe()
            .atomic()
            .cmd("ZADD")
            .arg(&key)
            .arg(now_ms)
            .arg(&pod)
            .cmd("ZREMRANGEBYSCORE")
            .arg(&key)
            .arg("-inf")
            .arg(now_ms - 6000.0)
            .cmd("ZCARD")
            .arg(&key)
            .query_async(&mut connection)
            .await;
        if let Ok((_, _, count)) = counted {
            pods.store(count.max(1), Ordering::Relaxed);
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// The limits of every project this pod has heard of, and the budget they apply to.
pub struct Limits {
    store: Arc<dyn Store>,
    budget: Arc<dyn Budget>,
    published: RwLock<HashMap<ProjectId, ProjectLimits>>,
}

impl Limits {
    /// Loads every published limit from the bus and keeps up with its notices.
    pub fn new(store: Arc<dyn Store>, bus: Arc<dyn Bus>, budget: Arc<dyn Budget>) -> Arc<Self> {
        let limits = Arc::new(Self {
            store,
            budget,
            published: RwLock::new(HashMap::new()),
        });
        let weak = Arc::downgrade(&limits);
        let reload_bus = Arc::clone(&bus);
        bus.listen(Arc::new(move |event| {
            let Some(limits) = weak.upgrade() else { return };
            match event {
                BusEvent::Notice(Notice::LimitsChanged { limits: published }) => limits.set(published.clone()),
                BusEvent::Notice(Notice::ProjectDeleted { project_id }) => {
                    limits.published.write().expect("never poisoned").remove(project_id);
                    limits.budget.forget(*project_id);
                }
                BusEvent::MayHaveMissed => {
                    let bus = Arc::clone(&reload_bus);
                    tokio::spawn(async move { limits.load(bus.as_ref()).await });
                }
                BusEvent::Notice(_) => {}
            }
        }));
        let loading = Arc::clone(&limits);
        tokio::spawn(async move { loading.load(bus.as_ref()).await });
        limits
    }

    fn set(&self, limits: ProjectLimits) {
        self.published
            .write()
            .expect("never poisoned")
            .insert(limits.project_id, limits);
    }

    async fn load(&self, bus: &dyn Bus) {
        match bus.all_limits().await {
            Ok(all) => {
                let count = all.len();
                for limits in all {
                    self.set(limits);
                }
                tracing::debug!(projects = count, "loaded published limits");
            }
            // Projects not loaded fall back to their plans in the store.
            Err(err) => tracing::warn!(error = %format!("{err:#}"), "loading published limits failed"),
        }
    }

    /// The project's per-minute quota of `kind`.
    async fn quota(&self, project: &quiver_store::Project, kind: Kind) -> Result<u32, ApiError> {
        let published = self.published.read().expect("never poisoned").get(&project.id).cloned();
        let limits = match published {
            // Limits of another plan than the project's (as this pod last read it from
            // the store) were published before a plan change whose own limits never
            // arrived, or arrived first and were overwritten: the store's plan wins.
            Some(limits) if limits.plan_id == project.plan_id => limits,
            _ => {
                let plan =
                    self.store.plan(&project.plan_id).await?.ok_or_else(|| {
                        anyhow::anyhow!("project {} has unknown plan {}", project.id, project.plan_id)
                    })?;
                let limits = ProjectLimits {
                    project_id: project.id,
                    plan_id: plan.id,
                    queries_per_minute: plan.queries_per_minute,
                    documents_per_minute: plan.documents_per_minute,
                };
                self.set(limits.clone());
                limits
            }
        };
        Ok(match kind {
            Kind::Queries => limits.queries_per_minute,
            Kind::Documents => limits.documents_per_minute,
        })
    }

    /// Admits `n` units of `kind` for the project, or refuses with a 429. Either way
    /// the decision goes into `slot` for the response's headers.
    pub async fn admit(
        &self,
        project: &quiver_store::Project,
        kind: Kind,
        n: u64,
        slot: &RateSlot,
    ) -> Result<(), ApiError> {
        self.admit_within(project, kind, n, slot, false).await
    }

    /// [`Limits::admit`] for a request the caller cannot split, such as a delete by
    /// filter: one larger than the quota takes the whole budget, once it is full.
    pub async fn admit_capped(
        &self,
        project: &quiver_store::Project,
        kind: Kind,
        n: u64,
        slot: &RateSlot,
    ) -> Result<(), ApiError> {
        self.admit_within(project, kind, n, slot, true).await
    }

    async fn admit_within(
        &self,
        project: &quiver_store::Project,
        kind: Kind,
        n: u64,
        slot: &RateSlot,
        capped: bool,
    ) -> Result<(), ApiError> {
        let per_minute = self.quota(project, kind).await?;
        let n = if capped { n.min(u64::from(per_minute)) } else { n };
        let units = u32::try_from(n).unwrap_or(u32::MAX);
        let decision = self.budget.take(project.id, kind, per_minute, units).await;
        slot.record(decision);
        match decision.retry_after {
            None => Ok(()),
            Some(wait) if wait == Duration::MAX => Err(ApiError::RateLimited {
                message: format!(
                    "this request needs {n} {} and the plan allows {per_minute} a minute: split it into smaller requests",
                    noun(kind)
                ),
                retry_after_secs: 60,
            }),
            Some(wait) => Err(ApiError::RateLimited {
                message: format!(
                    "rate limit reached: the plan allows {per_minute} {} a minute; retry in {} s",
                    noun(kind),
                    quiver_common::error::retry_after_secs(wait)
                ),
                retry_after_secs: quiver_common::error::retry_after_secs(wait),
            }),
        }
    }

    /// The headers for a request of this project that took nothing.
    async fn peek(&self, project: &quiver_store::Project) -> Option<Decision> {
        let per_minute = self.quota(project, Kind::Queries).await.ok()?;
        Some(self.budget.peek(project.id, Kind::Queries, per_minute))
    }
}

fn noun(kind: Kind) -> &'static str {
    match kind {
        Kind::Queries => "queries",
        Kind::Documents => "documents",
    }
}

/// Per request: which project it authenticated as, and the limiter's decision.
#[derive(Clone, Default)]
pub struct RateSlot(Arc<Mutex<SlotState>>);

impl std::fmt::Debug for RateSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RateSlot")
    }
}

#[derive(Default)]
struct SlotState {
    project: Option<Arc<quiver_store::Project>>,
    decision: Option<Decision>,
}

impl RateSlot {
    pub fn authenticated(&self, project: Arc<quiver_store::Project>) {
        self.0.lock().expect("never poisoned").project = Some(project);
    }

    fn record(&self, decision: Decision) {
        self.0.lock().expect("never poisoned").decision = Some(decision);
    }
}

/// Middleware: gives each request a [`RateSlot`] and writes `X-RateLimit-*` on its
/// response (from the decision, or the project's query budget when nothing was taken).
pub async fn headers(State(limits): State<Arc<Limits>>, mut request: Request, next: Next) -> Response {
    let slot = RateSlot::default();
    request.extensions_mut().insert(slot.clone());
    let mut response = next.run(request).await;
    let (project, decision) = {
        let state = slot.0.lock().expect("never poisoned");
        (state.project.clone(), state.decision)
    };
    let decision = match (decision, project) {
        (Some(decision), _) => Some(decision),
        (None, Some(project)) => limits.peek(&project).await,
        (None, None) => None,
    };
    if let Some(decision) = decision {
        let headers = response.headers_mut();
        headers.insert("x-ratelimit-limit", HeaderValue::from(decision.limit));
        headers.insert("x-ratelimit-remaining", HeaderValue::from(decision.remaining));
        headers.insert("x-ratelimit-reset", HeaderValue::from(decision.reset));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_local_budget_admits_a_burst_of_the_quota_then_refuses() {
        let budget = LocalBudget::default();
        let project = ProjectId::new();
        for i in 0..30 {
            let decision = budget.take_now(project, Kind::Queries, 30, 1);
            assert!(decision.admitted(), "query {i}");
            assert_eq!(decision.remaining, 29 - i);
        }
        let refused = budget.take_now(project, Kind::Queries, 30, 1);
        let wait = refused.retry_after.expect("refused");
        assert!(wait <= Duration::from_secs(2) && wait > Duration::ZERO, "{wait:?}");
        assert!(
            budget.take_now(ProjectId::new(), Kind::Queries, 30, 1).admitted(),
            "another project is unaffected"
        );
        assert!(
            budget.take_now(project, Kind::Documents, 100, 1).admitted(),
            "documents are a separate budget"
        );
    }

    #[test]
    fn a_batch_is_admitted_whole_or_not_at_all() {
        let budget = LocalBudget::default();
        let project = ProjectId::new();
        assert!(budget.take_now(project, Kind::Documents, 100, 60).admitted());
        let refused = budget.take_now(project, Kind::Documents, 100, 60);
        assert!(!refused.admitted());
        assert!(
            budget.take_now(project, Kind::Documents, 100, 40).admitted(),
            "nothing of the refused batch was taken"
        );
        assert_eq!(
            budget.take_now(project, Kind::Documents, 100, 101).retry_after,
            Some(Duration::MAX),
            "more than a minute's quota is never admitted"
        );
    }

    #[test]
    fn a_new_quota_takes_effect_at_once() {
        let budget = LocalBudget::default();
        let project = ProjectId::new();
        for _ in 0..30 {
            budget.take_now(project, Kind::Queries, 30, 1);
        }
        assert!(!budget.take_now(project, Kind::Queries, 30, 1).admitted());
        let raised = budget.take_now(project, Kind::Queries, 300, 1);
        assert!(raised.admitted());
        assert_eq!(
            raised.remaining,
            300 - 31,
            "what was spent of the old quota stays spent"
        );
    }

    #[test]
    fn switching_quotas_back_and_forth_does_not_refill_the_budget() {
        let budget = LocalBudget::default();
        let project = ProjectId::new();
        for _ in 0..30 {
            assert!(budget.take_now(project, Kind::Queries, 30, 1).admitted());
        }
        for quota in [300, 30, 300, 30] {
            Budget::peek(&budget, project, Kind::Queries, quota);
        }
        assert!(
            !budget.take_now(project, Kind::Queries, 30, 1).admitted(),
            "the starter budget spent before the switches is still spent"
        );
    }

    #[test]
    fn peeking_reports_the_budget_without_spending_it() {
        let budget = LocalBudget::default();
        let project = ProjectId::new();
        budget.take_now(project, Kind::Queries, 30, 10);
        let peeked = budget.peek(project, Kind::Queries, 30);
        assert_eq!((peeked.limit, peeked.remaining), (30, 20));
        assert!(peeked.reset >= epoch_now().as_secs());
        assert_eq!(budget.peek(project, Kind::Queries, 30).remaining, 20);
    }
}
