//! Rate limits: each project's queries/min and documents/min, held per project
//! across every pod.
//!
//! The limits themselves come from the control plane through the bus (loaded at
//! start, updated by `LimitsChanged` notices; a project not heard of yet falls back
//! to its plan in the store). Admission is GCRA: a budget of a minute's quota that
//! refills continuously, so a Starter project may burst 30 queries and then gets one
//! every two seconds. A new quota keeps the units spent of the old one.
//!
//! - Standalone (one process) keeps its budgets in memory, with the same GCRA as the
//!   Redis script (`governor` cannot carry the units spent over to a new quota).
//! - A cluster keeps one budget per project in Redis (a Lua GCRA script, atomic), and
//!   each pod leases a slice of it at a time (one unit at low rates, 1/200th of the
//!   quota at high ones), so most requests are decided in memory. A leased unit is
//!   spent only while Redis still counts it (until its budget would be full again),
//!   so pods together never admit more than the plan.
//! - When Redis does not answer within [`REDIS_WAIT`], each pod enforces its share
//!   (the quota divided by the live pods it last saw) in memory, logs it once,
//!   reports it on `/readyz`, and asks Redis again after a rest that grows while it
//!   stays down; the heartbeat brings it back as soon as Redis answers.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use axum::extract::{Request, State};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
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
    /// `None` when admitted; otherwise how long until the request would be
    /// (`Duration::MAX`: never, it is larger than the quota).
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
    /// [`Budget::take`] for a request the caller cannot split (a delete by filter): one
    /// larger than the most the budget can ever hold takes all of it, once it is full.
    async fn take_capped(&self, project: ProjectId, kind: Kind, per_minute: u32, n: u32) -> Decision {
        self.take(project, kind, per_minute, n.min(per_minute)).await
    }
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

/// Epoch seconds, rounded up, of the instant `at` (never before `now`).
fn epoch_secs_at(at: Instant, now: Instant) -> u64 {
    (epoch_now() + at.saturating_duration_since(now)).as_secs_f64().ceil() as u64
}

/// Units of a per-minute quota still missing when its budget is full after `wait`
/// (one partly back counts as missing).
fn missing_for(wait: Duration, per_minute: u32) -> u64 {
    let missing = wait.as_nanos().div_ceil(interval(per_minute).as_nanos().max(1));
    u64::try_from(missing).unwrap_or(u64::MAX).min(u64::from(per_minute))
}

/// Map sizes at which idle entries are swept out; doubled after a sweep.
const FIRST_SWEEP: usize = 1024;

/// One budget in memory: GCRA, as the Redis script runs it. It keeps when the budget
/// is full again and the quota it was spent at, and takes the quota with each call: a
/// call at another quota sees the units spent carried over (at most all of the new
/// quota) and stores that view only when it admits, so callers that disagree on a
/// quota (a plan change not yet heard of everywhere; a pod's share as pods come and
/// go) cannot refill the budget by taking turns.
struct Bucket {
    state: Mutex<Gcra>,
}

#[derive(Clone, Copy)]
struct Gcra {
    /// When the budget is full again.
    full_at: Instant,
    /// The quota it was spent at.
    per_minute: u32,
}

const MINUTE_NANOS: u128 = 60_000_000_000;

impl Gcra {
    /// Nanoseconds until full again, as at `per_minute`: the units spent carried over,
    /// at most all of the quota.
    fn missing_nanos(&self, now: Instant, per_minute: u32) -> u128 {
        let missing = self.full_at.saturating_duration_since(now).as_nanos();
        if self.per_minute == per_minute {
            return missing;
        }
        // Units spent at the old quota, as a fraction, then timed at the new one.
        let spent_units_x_minute = missing * u128::from(self.per_minute.max(1));
        (spent_units_x_minute / u128::from(per_minute.max(1))).min(MINUTE_NANOS)
    }
}

fn units_nanos(units: u64, per_minute: u32) -> u128 {
    (u128::from(units) * MINUTE_NANOS).div_ceil(u128::from(per_minute.max(1)))
}

impl Bucket {
    fn new(per_minute: u32) -> Self {
        Self {
            state: Mutex::new(Gcra {
                full_at: Instant::now(),
                per_minute,
            }),
        }
    }

    fn decision(per_minute: u32, missing: u128, retry_after: Option<Duration>) -> Decision {
        let per = u128::from(per_minute.max(1));
        // Units missing, a unit partly back counting as missing.
        let missing_units = (missing * per).div_ceil(MINUTE_NANOS).min(per);
        Decision {
            limit: per_minute,
            remaining: u64::try_from(per - missing_units).unwrap_or(0),
            reset: (epoch_now() + Duration::from_nanos(u64::try_from(missing).unwrap_or(u64::MAX)))
                .as_secs_f64()
                .ceil() as u64,
            retry_after,
        }
    }

    fn take(&self, per_minute: u32, n: u32) -> Decision {
        let now = Instant::now();
        let mut state = self.state.lock().expect("never poisoned");
        let missing = state.missing_nanos(now, per_minute);
        if n > per_minute.max(1) {
            // More than the whole burst: it would never be admitted at once.
            return Self::decision(per_minute, missing, Some(Duration::MAX));
        }
        let needed = units_nanos(u64::from(n.max(1)), per_minute);
        // Admitted while what is missing leaves room for `n` more in a minute's burst
        // (give or take a nanosecond a unit: `units_nanos` rounds each unit up).
        if missing + needed <= MINUTE_NANOS + u128::from(per_minute.max(1)) {
            let missing = missing + needed;
            *state = Gcra {
                full_at: now + Duration::from_nanos(u64::try_from(missing).unwrap_or(u64::MAX)),
                per_minute,
            };
            return Self::decision(per_minute, missing, None);
        }
        // A refusal takes nothing and stores nothing.
        let wait = missing + needed - MINUTE_NANOS;
        let wait = Duration::from_nanos(u64::try_from(wait).unwrap_or(u64::MAX)).max(Duration::from_millis(1));
        Self::decision(per_minute, missing, Some(wait))
    }

    fn peek(&self, per_minute: u32) -> Decision {
        let now = Instant::now();
        let missing = self
            .state
            .lock()
            .expect("never poisoned")
            .missing_nanos(now, per_minute);
        Self::decision(per_minute, missing, None)
    }

    /// Full, and so no different from a new bucket.
    fn is_full(&self) -> bool {
        self.state.lock().expect("never poisoned").full_at <= Instant::now()
    }
}

#[derive(Default)]
struct Buckets {
    map: HashMap<(ProjectId, Kind), Arc<Bucket>>,
    /// The size at which full buckets are swept out next.
    sweep_at: usize,
}

/// Budgets in this process's memory: exact for standalone, and a cluster pod's
/// fallback while Redis is away.
#[derive(Default)]
pub struct LocalBudget {
    buckets: RwLock<Buckets>,
}

impl LocalBudget {
    fn bucket(&self, project: ProjectId, kind: Kind, per_minute: u32) -> Arc<Bucket> {
        if let Some(bucket) = self.buckets.read().expect("never poisoned").map.get(&(project, kind)) {
            return Arc::clone(bucket);
        }
        let mut buckets = self.buckets.write().expect("never poisoned");
        if buckets.map.len() >= buckets.sweep_at.max(FIRST_SWEEP) {
            // A full bucket is no different from a new one. One only this map holds
            // (buckets are handed out under its lock) cannot be in use meanwhile.
            buckets
                .map
                .retain(|_, bucket| Arc::strong_count(bucket) > 1 || !bucket.is_full());
            buckets.sweep_at = buckets.map.len() * 2;
        }
        // A new quota (a plan change, or a pod's share of it changing) is the bucket's
        // to carry over: see `Bucket`.
        let bucket = buckets
            .map
            .entry((project, kind))
            .or_insert_with(|| Arc::new(Bucket::new(per_minute)));
        Arc::clone(bucket)
    }

    /// [`Budget::take`] without the async wrapper.
    pub fn take_now(&self, project: ProjectId, kind: Kind, per_minute: u32, n: u32) -> Decision {
        self.bucket(project, kind, per_minute).take(per_minute, n)
    }
}

#[async_trait]
impl Budget for LocalBudget {
    async fn take(&self, project: ProjectId, kind: Kind, per_minute: u32, n: u32) -> Decision {
        self.take_now(project, kind, per_minute, n)
    }

    fn peek(&self, project: ProjectId, kind: Kind, per_minute: u32) -> Decision {
        self.bucket(project, kind, per_minute).peek(per_minute)
    }

    fn forget(&self, project: ProjectId) {
        self.buckets
            .write()
            .expect("never poisoned")
            .map
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
/// KEYS[1]: the budget, a hash of `tat` (the theoretical arrival time, epoch ms: when
/// the budget is full again) and `burst` (the quota it was spent at).
/// ARGV: burst (the per-minute quota, also the burst), min, want.
/// Returns {granted, remaining after, ms until full again (rounded down), retry after
/// (ms, rounded up)}.
///
/// A budget spent at another quota is first rescaled so that the units spent carry
/// over (at most all of the new quota), as [`LocalBudget`] does: an exhausted Starter
/// project that upgrades has the new quota less what it spent, at once.
const GCRA: &str = r"
local burst = tonumber(ARGV[1])
local min = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local interval = 60000 / burst
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local stored = redis.call('HMGET', KEYS[1], 'tat', 'burst')
local tat = tonumber(stored[1]) or now
if tat < now then tat = now end
local was = tonumber(stored[2])
if was and was ~= burst then
  local spent = math.min((tat - now) / (60000 / was), burst)
  tat = now + spent * interval
end
local function save()
  redis.call('HSET', KEYS[1], 'tat', string.format('%.17g', tat), 'burst', burst)
  redis.call('PEXPIRE', KEYS[1], math.ceil(tat - now) + 1000)
end
-- The epsilon keeps a whole unit whole despite the float arithmetic.
local available = math.floor((now + burst * interval - tat) / interval + 1e-6)
-- A refusal stores nothing: a budget rescaled to a smaller quota has its units spent
-- capped, and stored, a pod still at the larger quota would find them refilled.
if available < min then
  return {0, available, math.floor(tat - now), math.ceil(tat + (min - burst) * interval - now)}
end
local granted = math.min(available, want)
tat = tat + granted * interval
save()
return {granted, available - granted, math.floor(tat - now), 0}
";

/// How long a request waits on Redis, reconnecting included, before it is decided on
/// this pod alone.
pub const REDIS_WAIT: Duration = Duration::from_millis(250);

/// How long the heartbeat waits on Redis.
const HEARTBEAT_WAIT: Duration = Duration::from_secs(1);

/// After Redis failed, requests are decided on the pod alone for this long before one
/// asks Redis again; the rest doubles with each failure up to [`LONGEST_REST`], and
/// ends as soon as Redis answers (a request or the heartbeat, every two seconds).
const FIRST_REST: Duration = Duration::from_secs(1);
const LONGEST_REST: Duration = Duration::from_secs(30);

/// Whether Redis answers, as requests and the heartbeat find it.
struct RedisHealth {
    rest: Mutex<Rest>,
    degraded: AtomicBool,
    /// Live pods as last counted from their heartbeats (at least 1); until the first
    /// count, the pods the deployment runs, as it told this one.
    pods: AtomicU32,
}

#[derive(Debug, Clone, Copy)]
struct Rest {
    /// Redis is not asked before this (`None`: it answers).
    until: Option<Instant>,
    /// The rest after the next failure.
    next: Duration,
}

impl RedisHealth {
    fn new(expected_pods: u32) -> Self {
        Self {
            rest: Mutex::new(Rest {
                until: None,
                next: FIRST_REST,
            }),
            degraded: AtomicBool::new(false),
            pods: AtomicU32::new(expected_pods.max(1)),
        }
    }

    /// Whether a request may ask Redis now. While Redis rests, the first request after
    /// the rest asks, and pushes the next try out by another rest, so that the other
    /// requests meanwhile do not all wait on a Redis that may still be down.
    fn may_ask(&self, now: Instant) -> bool {
        let mut rest = self.rest.lock().expect("never poisoned");
        match rest.until {
            None => true,
            Some(until) if now < until => false,
            Some(_) => {
                rest.until = Some(now + rest.next);
                true
            }
        }
    }

    /// How long until Redis is asked again (zero when it answers).
    fn rest_left(&self, now: Instant) -> Duration {
        let rest = self.rest.lock().expect("never poisoned");
        rest.until
            .map_or(Duration::ZERO, |until| until.saturating_duration_since(now))
    }

    fn failed(&self, err: &dyn std::fmt::Display, now: Instant) {
        {
            let mut rest = self.rest.lock().expect("never poisoned");
            rest.until = Some(now + rest.next);
            rest.next = (rest.next * 2).min(LONGEST_REST);
        }
        if !self.degraded.swap(true, Ordering::SeqCst) {
            tracing::warn!(
                error = %err,
                pods = self.pods.load(Ordering::Relaxed),
                "Redis is unreachable: enforcing each project's limits on this pod alone (its share of the plan) until it is back"
            );
        }
    }

    fn answered(&self) {
        *self.rest.lock().expect("never poisoned") = Rest {
            until: None,
            next: FIRST_REST,
        };
        if self.degraded.swap(false, Ordering::SeqCst) {
            tracing::info!("Redis is back: rate limits are shared across pods again");
        }
    }
}

/// Units this pod holds, taken from Redis ahead of use.
#[derive(Debug, Clone, Copy)]
struct Lease {
    per_minute: u32,
    /// Units taken from Redis and not spent yet. Redis counts them as spent until its
    /// budget would be full again (`full_at`); spent before then, they keep the cluster
    /// within the plan, and at `full_at` they are dropped, since Redis has given them
    /// back to everyone.
    held: u32,
    /// When Redis's budget, as it last answered, is full again (on this pod's clock,
    /// measured from when the question was sent, so never late).
    full_at: Instant,
    /// After Redis refused `need` units: until when it will go on refusing that many.
    /// Requests for as many are refused here meanwhile, so an exhausted project's
    /// traffic does not become one Redis round trip per request.
    denied: Option<(Instant, u32)>,
}

impl Lease {
    /// Nothing held, at a quota Redis is assumed to have whole.
    fn fresh(per_minute: u32, now: Instant) -> Self {
        Self {
            per_minute,
            held: 0,
            full_at: now,
            denied: None,
        }
    }

    /// Drops held units once Redis has given them back.
    fn expire(&mut self, now: Instant) {
        if now >= self.full_at {
            self.held = 0;
        }
    }

    /// No different from a fresh lease.
    fn is_idle(&self, now: Instant) -> bool {
        now >= self.full_at && self.denied.is_none_or(|(until, _)| now >= until)
    }

    /// What could be spent now: Redis's budget as it last answered, refilled since,
    /// and the units held here (which Redis counts as spent).
    fn remaining(&self, now: Instant) -> u64 {
        let per_minute = u64::from(self.per_minute);
        let missing = missing_for(self.full_at.saturating_duration_since(now), self.per_minute);
        let held = if now < self.full_at { u64::from(self.held) } else { 0 };
        (per_minute - missing + held).min(per_minute)
    }

    fn decision(&self, now: Instant, retry_after: Option<Duration>) -> Decision {
        // Redis's `full_at` counts the units held here as spent, which `remaining`
        // counts as there: the budget as reported is full as many units' time sooner.
        let held = if now < self.full_at { self.held } else { 0 };
        let full = self
            .full_at
            .checked_sub(interval(self.per_minute).saturating_mul(held))
            .unwrap_or(now);
        Decision {
            limit: self.per_minute,
            remaining: self.remaining(now),
            reset: epoch_secs_at(full, now),
            retry_after,
        }
    }
}

#[derive(Default)]
struct Leases {
    map: HashMap<(ProjectId, Kind), Lease>,
    /// The size at which idle leases are swept out next.
    sweep_at: usize,
}

impl Leases {
    /// The lease of (`project`, `kind`) at `per_minute`, with units Redis has given
    /// back dropped; a lease of another quota is dropped whole.
    fn lease(&mut self, project: ProjectId, kind: Kind, per_minute: u32, now: Instant) -> &mut Lease {
        if self.map.len() >= self.sweep_at.max(FIRST_SWEEP) {
            self.map.retain(|_, lease| !lease.is_idle(now));
            self.sweep_at = self.map.len() * 2;
        }
        let lease = self
            .map
            .entry((project, kind))
            .or_insert_with(|| Lease::fresh(per_minute, now));
        if lease.per_minute != per_minute {
            *lease = Lease::fresh(per_minute, now);
        }
        lease.expire(now);
        lease
    }
}

/// What the GCRA script answered.
#[derive(Debug, Clone, Copy)]
struct Answer {
    granted: u32,
    until_full: Duration,
    retry_after: Duration,
}

/// The cluster's budgets: shared in Redis, leased a slice at a time.
pub struct RedisBudget {
    connection: redis::aio::ConnectionManager,
    prefix: String,
    script: redis::Script,
    leases: Mutex<Leases>,
    fallback: LocalBudget,
    health: Arc<RedisHealth>,
}

impl RedisBudget {
    /// Starts this pod's heartbeat (which also counts the live pods) over a connection
    /// that waits for Redis when it is away ([`quiver_common::bus::redis_connection`]):
    /// meanwhile, at start as later, the pod enforces its share of each quota alone.
    /// Until the heartbeats have counted the pods, the share is taken over
    /// `expected_pods`, the pods the deployment runs: a pod that starts while Redis is
    /// away would otherwise take itself to be alone and admit a whole quota.
    pub async fn connect(url: &str, prefix: &str, expected_pods: u32) -> anyhow::Result<Self> {
        let (_, connection) = quiver_common::bus::redis_connection(url).await?;
        let health = Arc::new(RedisHealth::new(expected_pods));
        tokio::spawn(heartbeat(
            connection.clone(),
            format!("{prefix}pods"),
            Arc::downgrade(&health),
        ));
        Ok(Self {
            connection,
            prefix: prefix.to_owned(),
            script: redis::Script::new(GCRA),
            leases: Mutex::new(Leases::default()),
            fallback: LocalBudget::default(),
            health,
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
        format!("{}budget:{project}:{kind}", self.prefix)
    }

    async fn ask_redis(&self, key: &str, per_minute: u32, min: u32, want: u32) -> anyhow::Result<Answer> {
        let mut connection = self.connection.clone();
        // Bounded as a whole: a command sent while the connection reconnects waits on
        // the reconnection, which the connection's own response timeout does not cover.
        let answer: redis::RedisResult<(i64, i64, i64, i64)> = tokio::time::timeout(
            REDIS_WAIT,
            self.script
                .key(key)
                .arg(per_minute.max(1))
                .arg(min)
                .arg(want)
                .invoke_async(&mut connection),
        )
        .await
        .map_err(|_| anyhow::anyhow!("Redis did not answer within {} ms", REDIS_WAIT.as_millis()))?;
        let (granted, _remaining, until_full_ms, retry_ms) = answer?;
        Ok(Answer {
            granted: u32::try_from(granted).unwrap_or(0),
            until_full: Duration::from_millis(u64::try_from(until_full_ms).unwrap_or(0)),
            retry_after: Duration::from_millis(u64::try_from(retry_ms).unwrap_or(0).max(1)),
        })
    }

    fn share(&self, per_minute: u32) -> u32 {
        per_minute.div_ceil(self.health.pods.load(Ordering::Relaxed).max(1))
    }

    /// A decision on this pod alone, from its share of the quota, while Redis is away.
    /// The headers still speak of the plan's quota; a request the caller cannot split
    /// takes at most the share; a batch within the plan but larger than the share is
    /// told to retry (it may pass once Redis is back), never to split.
    fn alone(&self, project: ProjectId, kind: Kind, per_minute: u32, n: u32, capped: bool) -> Decision {
        let share = self.share(per_minute);
        let n = if capped { n.min(share) } else { n };
        let decision = self.fallback.take_now(project, kind, share, n);
        let retry_after = match decision.retry_after {
            Some(wait) if wait == Duration::MAX => {
                Some(self.health.rest_left(Instant::now()).max(Duration::from_secs(1)))
            }
            other => other,
        };
        Decision {
            limit: per_minute,
            retry_after,
            ..decision
        }
    }

    async fn take_within(&self, project: ProjectId, kind: Kind, per_minute: u32, n: u32, capped: bool) -> Decision {
        let asked = n.max(1);
        let n = if capped { asked.min(per_minute) } else { asked };
        let now = Instant::now();
        let held = {
            let mut leases = self.leases.lock().expect("never poisoned");
            let lease = leases.lease(project, kind, per_minute, now);
            if n > per_minute {
                return lease.decision(now, Some(Duration::MAX));
            }
            if lease.held >= n {
                lease.held -= n;
                return lease.decision(now, None);
            }
            if let Some((until, refused)) = lease.denied
                && now < until
                && n - lease.held >= refused
            {
                return lease.decision(now, Some(until - now));
            }
            // Take what is held (good until `full_at`); ask Redis for the rest (and a
            // slice more).
            (std::mem::take(&mut lease.held), lease.full_at)
        };
        let (held, held_until) = held;
        let give_back = |held: u32| {
            let now = Instant::now();
            let mut leases = self.leases.lock().expect("never poisoned");
            let lease = leases.lease(project, kind, per_minute, now);
            if now < lease.full_at {
                lease.held += held;
            }
        };
        if !self.health.may_ask(now) {
            give_back(held);
            return self.alone(project, kind, per_minute, asked, capped);
        }
        let need = n - held;
        let want = need + Self::slice(per_minute);
        let sent = Instant::now();
        match self.ask_redis(&self.key(project, kind), per_minute, need, want).await {
            Ok(answer) => {
                self.health.answered();
                let now = Instant::now();
                let mut leases = self.leases.lock().expect("never poisoned");
                let lease = leases.lease(project, kind, per_minute, now);
                // Units granted before, still held, stay good until then too: Redis
                // has counted them as spent without a break since they were granted.
                lease.full_at = lease.full_at.max(sent + answer.until_full);
                if answer.granted < need {
                    // Back, unless Redis gave them back meanwhile.
                    if now < held_until {
                        lease.held += held;
                    }
                    lease.denied = Some((now + answer.retry_after, need));
                    return lease.decision(now, Some(answer.retry_after));
                }
                lease.denied = None;
                lease.held += answer.granted - need;
                lease.decision(now, None)
            }
            Err(err) => {
                self.health.failed(&format!("{err:#}"), Instant::now());
                give_back(held);
                self.alone(project, kind, per_minute, asked, capped)
            }
        }
    }
}

#[async_trait]
impl Budget for RedisBudget {
    async fn take(&self, project: ProjectId, kind: Kind, per_minute: u32, n: u32) -> Decision {
        self.take_within(project, kind, per_minute, n, false).await
    }

    async fn take_capped(&self, project: ProjectId, kind: Kind, per_minute: u32, n: u32) -> Decision {
        self.take_within(project, kind, per_minute, n, true).await
    }

    fn peek(&self, project: ProjectId, kind: Kind, per_minute: u32) -> Decision {
        if self.health.degraded.load(Ordering::SeqCst) {
            let decision = self.fallback.peek(project, kind, self.share(per_minute));
            return Decision {
                limit: per_minute,
                ..decision
            };
        }
        let now = Instant::now();
        let mut leases = self.leases.lock().expect("never poisoned");
        leases.lease(project, kind, per_minute, now).decision(now, None)
    }

    fn forget(&self, project: ProjectId) {
        self.leases
            .lock()
            .expect("never poisoned")
            .map
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
        if self.health.degraded.load(Ordering::SeqCst) {
            return Err("Redis is unreachable: enforcing the last known limits on this pod alone".into());
        }
        Ok(())
    }
}

/// Every two seconds: note this pod alive in a sorted set, drop pods not seen for
/// six seconds, and count the rest. It is also how a pod notices Redis coming back
/// (or going away) without a request paying for the question. It ends with its budget.
async fn heartbeat(connection: redis::aio::ConnectionManager, key: String, health: Weak<RedisHealth>) {
    let pod = uuid::Uuid::new_v4().to_string();
    loop {
        let now_ms = epoch_now().as_millis() as f64;
        let mut connection = connection.clone();
        let counted = tokio::time::timeout(
            HEARTBEAT_WAIT,
            redis::pipe()
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
                .query_async::<(i64, i64, u32)>(&mut connection),
        )
        .await;
        let Some(health) = health.upgrade() else { return };
        match counted {
            Ok(Ok((_, _, count))) => {
                health.pods.store(count.max(1), Ordering::Relaxed);
                health.answered();
            }
            Ok(Err(err)) => health.failed(&err, Instant::now()),
            Err(_) => health.failed(&"the heartbeat got no answer within a second", Instant::now()),
        }
        drop(health);
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// The limits of every project this pod has heard of, and the budget they apply to.
pub struct Limits {
    store: Arc<dyn Store>,
    budget: Arc<dyn Budget>,
    published: RwLock<HashMap<ProjectId, Published>>,
    /// Numbers each entry of `published` in the order it was set.
    sets: AtomicU64,
}

/// A project's limits, and when they were set (see [`Limits::sets`]).
#[derive(Debug, Clone)]
struct Published {
    limits: ProjectLimits,
    set: u64,
}

impl Limits {
    /// Loads every published limit from the bus and keeps up with its notices.
    pub fn new(store: Arc<dyn Store>, bus: Arc<dyn Bus>, budget: Arc<dyn Budget>) -> Arc<Self> {
        let limits = Arc::new(Self {
            store,
            budget,
            published: RwLock::new(HashMap::new()),
            sets: AtomicU64::new(0),
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
        let set = self.sets.fetch_add(1, Ordering::SeqCst);
        self.published
            .write()
            .expect("never poisoned")
            .insert(limits.project_id, Published { limits, set });
    }

    /// Replaces what this pod knows with what the bus holds: after a gap in the bus,
    /// notices of deleted projects may have been missed, so nothing is kept from
    /// before but what was set while loading (a notice, or a plan read from the store).
    async fn load(&self, bus: &dyn Bus) {
        let started = self.sets.load(Ordering::SeqCst);
        match bus.all_limits().await {
            Ok(all) => {
                let count = all.len();
                let mut published = self.published.write().expect("never poisoned");
                let newer: Vec<Published> = published.values().filter(|p| p.set >= started).cloned().collect();
                *published = all
                    .into_iter()
                    .map(|limits| (limits.project_id, Published { limits, set: started }))
                    .collect();
                for entry in newer {
                    published.insert(entry.limits.project_id, entry);
                }
                tracing::debug!(projects = count, "loaded published limits");
            }
            // Projects not loaded fall back to their plans in the store.
            Err(err) => tracing::warn!(error = %format!("{err:#}"), "loading published limits failed"),
        }
    }

    /// The project's per-minute quota of `kind`.
    async fn quota(&self, project: &quiver_store::Project, kind: Kind) -> Result<u32, ApiError> {
        let published = self
            .published
            .read()
            .expect("never poisoned")
            .get(&project.id)
            .map(|p| p.limits.clone());
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
        let units = u32::try_from(n).unwrap_or(u32::MAX);
        let decision = if capped {
            self.budget.take_capped(project.id, kind, per_minute, units).await
        } else {
            self.budget.take(project.id, kind, per_minute, units).await
        };
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

        // A request at the smaller quota (a caller still at the old plan) is refused
        // without storing its capped view: back at the larger one, nothing refilled.
        let budget = LocalBudget::default();
        assert!(budget.take_now(project, Kind::Queries, 300, 231).admitted());
        assert!(!budget.take_now(project, Kind::Queries, 30, 1).admitted());
        let back = budget.take_now(project, Kind::Queries, 300, 1);
        assert!(back.admitted());
        assert_eq!(back.remaining, 68, "{back:?}");
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

    #[test]
    fn a_refused_batch_reports_what_is_left_and_when_the_budget_is_full_again() {
        let budget = LocalBudget::default();
        let project = ProjectId::new();
        assert!(budget.take_now(project, Kind::Documents, 100, 60).admitted());
        let refused = budget.take_now(project, Kind::Documents, 100, 60);
        assert!(!refused.admitted());
        assert_eq!(refused.remaining, 40, "the refused batch took nothing");
        // 60 documents at 0.6 s each come back in 36 s, not in a whole minute.
        let now = epoch_now().as_secs();
        assert!(
            (now + 35..=now + 37).contains(&refused.reset),
            "reset {} is not about 36 s after {now}",
            refused.reset
        );
        assert_eq!(budget.peek(project, Kind::Documents, 100).remaining, 40);
    }

    #[test]
    fn full_buckets_are_swept_out_and_spent_ones_kept() {
        let budget = LocalBudget::default();
        let spent = ProjectId::new();
        budget.take_now(spent, Kind::Queries, 30, 30);
        for _ in 0..FIRST_SWEEP {
            Budget::peek(&budget, ProjectId::new(), Kind::Queries, 30);
        }
        assert!(budget.buckets.read().expect("lock").map.len() < FIRST_SWEEP / 2);
        assert!(
            !budget.take_now(spent, Kind::Queries, 30, 1).admitted(),
            "a spent budget survives the sweep"
        );
    }

    fn lease(per_minute: u32, held: u32, full_in: Duration, now: Instant) -> Lease {
        Lease {
            per_minute,
            held,
            full_at: now + full_in,
            denied: None,
        }
    }

    #[test]
    fn a_lease_reports_its_budget_refilling_while_idle() {
        let now = Instant::now();
        // Starter, just exhausted: full again in a minute, one query back every 2 s.
        let exhausted = lease(30, 0, Duration::from_secs(60), now);
        assert_eq!(exhausted.remaining(now), 0);
        assert_eq!(exhausted.remaining(now + Duration::from_secs(2)), 1);
        assert_eq!(exhausted.remaining(now + Duration::from_secs(59)), 29);
        assert_eq!(
            exhausted.remaining(now + Duration::from_secs(600)),
            30,
            "an idle budget is full again, whatever Redis last said"
        );
        // Units held here count as what could be spent.
        assert_eq!(lease(30, 1, Duration::from_secs(4), now).remaining(now), 29);
    }

    #[test]
    fn a_lease_never_reports_a_reset_in_the_past() {
        let now = Instant::now();
        let long_full = lease(30, 0, Duration::ZERO, now);
        let later = now + Duration::from_secs(120);
        let decision = long_full.decision(later, None);
        assert!(decision.reset >= epoch_now().as_secs(), "{decision:?}");
        assert_eq!(decision.remaining, 30);
        let spent = lease(30, 0, Duration::from_secs(36), now).decision(now, None);
        let expected = epoch_now().as_secs() + 36;
        assert!((expected..=expected + 1).contains(&spent.reset), "{spent:?}");
        // Units held here are there to spend: the budget as reported (29 of 30, one
        // held) is full once one unit is back, not when Redis's is (two units' time).
        let holding = lease(30, 1, Duration::from_secs(4), now).decision(now, None);
        assert_eq!(holding.remaining, 29);
        let expected = epoch_now().as_secs() + 2;
        assert!((expected..=expected + 1).contains(&holding.reset), "{holding:?}");
    }

    #[test]
    fn a_lease_drops_held_units_once_redis_has_given_them_back() {
        let now = Instant::now();
        let mut leases = Leases::default();
        let project = ProjectId::new();
        *leases.lease(project, Kind::Queries, 600, now) = lease(600, 3, Duration::from_millis(400), now);
        assert_eq!(leases.lease(project, Kind::Queries, 600, now).held, 3);
        let later = now + Duration::from_millis(400);
        assert_eq!(
            leases.lease(project, Kind::Queries, 600, later).held,
            0,
            "Redis's budget is full again: the units leased from it are spent or gone"
        );
        *leases.lease(project, Kind::Queries, 600, now) = lease(600, 3, Duration::from_secs(1), now);
        assert_eq!(
            leases.lease(project, Kind::Queries, 6000, now).held,
            0,
            "a new quota drops the lease"
        );
    }

    #[test]
    fn redis_rests_longer_while_it_stays_down_and_not_at_all_once_it_answers() {
        let health = RedisHealth::new(1);
        let mut now = Instant::now();
        assert!(health.may_ask(now));
        let mut rests = Vec::new();
        for _ in 0..7 {
            health.failed(&"down", now);
            let rest = health.rest_left(now);
            rests.push(rest.as_secs());
            assert!(!health.may_ask(now + rest - Duration::from_millis(1)));
            now += rest;
            assert!(health.may_ask(now), "one request asks again after the rest");
        }
        assert_eq!(rests, [1, 2, 4, 8, 16, 30, 30]);
        assert!(health.degraded.load(Ordering::SeqCst));
        health.answered();
        assert!(!health.degraded.load(Ordering::SeqCst));
        assert!(health.may_ask(now));
        health.failed(&"down again", now);
        assert_eq!(health.rest_left(now), FIRST_REST, "the rest starts short again");
    }

    #[test]
    fn while_redis_rests_only_one_request_asks_it_again() {
        let health = RedisHealth::new(1);
        let now = Instant::now();
        health.failed(&"down", now);
        let after = now + FIRST_REST;
        assert!(health.may_ask(after));
        assert!(
            !health.may_ask(after),
            "the next request does not wait on Redis while the first one asks"
        );
    }
}
