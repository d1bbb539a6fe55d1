//! The index manager: which namespaces this pod has in memory, loading them from the
//! records store on first use, keeping them current in seq order, and evicting the
//! least useful ones when they outgrow the pod's memory budget.
//!
//! Every change reaches an index through one path, [`IndexManager::catch_up`]: a write
//! on this pod hands over its own changes when they are the next seq; otherwise (a
//! write on another pod, a gap) the index replays `changes_since` its seq from the
//! store. Indexes are caches: dropping one loses nothing.
//!
//! A namespace loads from its stored snapshot, when there is one, plus the changes
//! after it; without one it replays every record and rebuilds the graph, which takes
//! minutes for large namespaces. [`IndexManager::run_maintenance`] snapshots the
//! indexes that changed enough in the background; storing a snapshot purges the
//! tombstones it covers, and an index that falls behind that horizon reloads. The same
//! rounds rebuild, aside, the graph of an index whose records have mostly been replaced
//! or deleted since it was built ([`IndexManager::rebuild_due`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use moka::ops::compute::Op;
use quiver_common::domain::Metric;
use quiver_common::domain::ProjectId;
use quiver_store::{Change, NamespaceState, Project, Snapshot, Store, StoreError};
use tokio::sync::Semaphore;

use crate::filter::Filter;
use crate::index::{IndexError, NamespaceIndex, RestoreError, SearchOutcome, callers};

/// Changes read from the store per round trip while loading or catching up.
const PAGE: u32 = 2_000;
/// Records a tuning of a namespace's search width draws queries around, two around
/// each (see `NamespaceIndex::tune_ef`): recall is read off 2,000 neighbours of each
/// kind of query, since one query's recall varies widely. The exact scans take all
/// the queries in one pass, so more cost little beyond their trial searches.
const TUNING_SEEDS: usize = 200;
/// Below this many records, a namespace's search width is not tuned nor its graph
/// rebuilt: the default width finds everything in a graph that small.
const SMALL: usize = 1_000;
/// A graph is rebuilt once this share of its records has churned (been replaced or
/// deleted) since it was built: see [`NamespaceIndex::churn`] for what churn costs.
/// Until then, re-tuning the search width keeps recall up at some search speed.
const REBUILD_CHURN: f64 = 0.5;
/// After a search found the records store unreachable while catching up with writes
/// heard of, searches of that index serve what is in memory this long before one
/// tries again (each try may wait out the store's connection timeout).
const CATCH_UP_RETRY: Duration = Duration::from_secs(5);

/// What can go wrong in the engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error("an index task failed: {0}")]
    Task(String),
    /// The namespace was deleted (and perhaps made again, a new epoch) while its index
    /// was being read from the store: that index is of a life that has ended.
    #[error("the namespace was deleted or made again while its index was read; retry")]
    Stale,
    /// The namespace's index is larger than the pod's whole memory budget: holding it
    /// could take the pod, and every tenant it serves, down for memory.
    #[error(
        "the namespace's index needs about {} MiB, more than this pod's index memory ({} MiB, --index-memory); it cannot be searched until an operator raises that",
        bytes.div_ceil(1 << 20),
        budget >> 20
    )]
    TooLarge { bytes: u64, budget: u64 },
}

impl From<EngineError> for quiver_common::ApiError {
    fn from(err: EngineError) -> Self {
        match err {
            EngineError::Store(store) => store.into(),
            EngineError::Stale | EngineError::TooLarge { .. } => quiver_common::ApiError::Unavailable(err.to_string()),
            other => quiver_common::ApiError::Internal(other.into()),
        }
    }
}

type Key = (ProjectId, String);

/// The error of a load shared by every caller waiting on it, for each of them: what
/// the caller can act on stays what it is (a namespace to read again, a store to wait
/// for: a 503, as for any other read of it), the rest is the load's failure.
fn shared_load_error(err: &EngineError) -> EngineError {
    match err {
        EngineError::Stale => EngineError::Stale,
        EngineError::TooLarge { bytes, budget } => EngineError::TooLarge {
            bytes: *bytes,
            budget: *budget,
        },
        EngineError::Store(StoreError::Unavailable(reason)) => {
            EngineError::Store(StoreError::Unavailable(reason.clone()))
        }
        other => EngineError::Task(other.to_string()),
    }
}

/// A loaded index and what keeps it in order.
pub struct Loaded {
    pub index: NamespaceIndex,
    /// Held while changes are applied, so they apply in seq order.
    applying: tokio::sync::Mutex<()>,
    /// The highest seq this pod has heard of (from its own writes or notices).
    wanted: AtomicI64,
    /// The record count at the last ef tuning; tuning runs again when it doubles.
    tuned_at: AtomicI64,
    /// The index's churn at the last ef tuning; tuning runs again when a fifth of the
    /// records more have been removed or replaced.
    tuned_churn: AtomicU64,
    /// Tunings started since the index was loaded.
    tunings_started: AtomicU64,
    /// Tunings running now, in the background.
    tunings: AtomicU64,
    /// The seq of the newest snapshot known to be stored.
    snapshot_seq: AtomicI64,
    /// Changes applied since that snapshot.
    since_snapshot: AtomicU64,
    /// When that snapshot was taken or loaded (or the index built).
    snapshot_at: std::sync::Mutex<Instant>,
    /// Held while a snapshot is taken and stored, so one runs at a time.
    saving: tokio::sync::Mutex<()>,
    /// Where the index was last loaded from.
    from: std::sync::Mutex<LoadedFrom>,
    /// Whether its graph is being rebuilt aside right now.
    rebuilding: AtomicBool,
    /// Rebuilds swapped in since the index was loaded.
    rebuilds: AtomicU64,
    /// When a search last found the records store unreachable catching up.
    catch_up_failed: std::sync::Mutex<Option<Instant>>,
}

/// Counts a background tuning of an index as running (in [`IndexStatus::tuning`]) from
/// before it is spawned until it ends, however it ends.
struct TuningRunning(Arc<Loaded>);

impl TuningRunning {
    fn start(loaded: Arc<Loaded>) -> Self {
        loaded.tunings.fetch_add(1, Ordering::SeqCst);
        Self(loaded)
    }
}

impl Drop for TuningRunning {
    fn drop(&mut self) {
        self.0.tunings.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Marks an index as being rebuilt (in [`IndexStatus::rebuilding`]) from before the
/// rebuild is spawned until it ends, however it ends.
struct RebuildRunning(Arc<Loaded>);

impl RebuildRunning {
    fn start(loaded: Arc<Loaded>) -> Self {
        loaded.rebuilding.store(true, Ordering::SeqCst);
        Self(loaded)
    }
}

impl Drop for RebuildRunning {
    fn drop(&mut self) {
        self.0.rebuilding.store(false, Ordering::SeqCst);
    }
}

impl Loaded {
    fn new(index: NamespaceIndex, wanted: i64, from: LoadedFrom) -> Self {
        // A restored index was tuned before its snapshot; a new one tunes once it has grown.
        let tuned_at = match from {
            LoadedFrom::Snapshot(_) => index.len() as i64,
            LoadedFrom::Replay => 0,
        };
        // Churn carried in a snapshot was there when it was tuned.
        let tuned_churn = AtomicU64::new(index.churn() as u64);
        Self {
            index,
            applying: tokio::sync::Mutex::new(()),
            wanted: AtomicI64::new(wanted),
            tuned_at: AtomicI64::new(tuned_at),
            tuned_churn,
            tunings_started: AtomicU64::new(0),
            tunings: AtomicU64::new(0),
            snapshot_seq: AtomicI64::new(from.snapshot_seq()),
            since_snapshot: AtomicU64::new(0),
            snapshot_at: std::sync::Mutex::new(Instant::now()),
            saving: tokio::sync::Mutex::new(()),
            from: std::sync::Mutex::new(from),
            rebuilding: AtomicBool::new(false),
            rebuilds: AtomicU64::new(0),
            catch_up_failed: std::sync::Mutex::new(None),
        }
    }

    /// Whether a search may try to catch up: not within [`CATCH_UP_RETRY`] of finding
    /// the records store unreachable.
    fn may_catch_up(&self) -> bool {
        self.catch_up_failed
            .lock()
            .expect("never poisoned")
            .is_none_or(|at| at.elapsed() >= CATCH_UP_RETRY)
    }

    /// An index being built to replace a loaded one's contents, private to its builder:
    /// it replays from the store as a new one would, but is tuned only once swapped in
    /// (`tune_if_changed` leaves it be).
    fn aside(index: NamespaceIndex) -> Arc<Self> {
        let aside = Arc::new(Self::new(index, 0, LoadedFrom::Replay));
        aside.tuned_at.store(i64::MAX / 4, Ordering::SeqCst);
        aside
    }

    /// Records that the index was (re)loaded from `from`.
    fn loaded_from(&self, from: LoadedFrom) {
        self.snapshot_seq.store(from.snapshot_seq(), Ordering::SeqCst);
        self.snapshot_counted(u64::MAX);
        // The index swapped in was tuned at its churn: built afresh (0) or as of its
        // snapshot, which keeps the churn so that a worn graph is still rebuilt.
        self.tuned_churn.store(self.index.churn() as u64, Ordering::SeqCst);
        *self.from.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = from;
    }

    /// Starts the count towards the next snapshot over: `changes` of those applied
    /// are in a snapshot now (`u64::MAX`: all of them).
    fn snapshot_counted(&self, changes: u64) {
        let _ = self
            .since_snapshot
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| Some(n.saturating_sub(changes)));
        *self
            .snapshot_at
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Instant::now();
    }
}

/// What a loaded index holds and where it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexStatus {
    /// The seq of the last change applied.
    pub seq: i64,
    pub records: usize,
    /// The seq of the newest snapshot known to be stored (0: none).
    pub snapshot_seq: i64,
    pub from: LoadedFrom,
    /// The search width it serves.
    pub ef: usize,
    /// Whether it is tuning its search width in the background right now. A load that
    /// replays records starts its tuning before it returns, so right after a search
    /// that loaded the index, `false` means `ef` is the settled width.
    pub tuning: bool,
    /// Tunings started since the index was loaded: after the first, each one is for
    /// the namespace having doubled, or a fifth of its records removed or replaced.
    pub tunings: u64,
    /// Vectors removed from the graph (deleted or replaced) since it was built or
    /// restored ([`NamespaceIndex::churn`]).
    pub churn: usize,
    /// Whether its graph is being rebuilt aside right now ([`IndexManager::rebuild_due`]).
    pub rebuilding: bool,
    /// Rebuilt graphs swapped in since the index was loaded.
    pub rebuilds: u64,
}

/// When indexes are snapshotted in the background.
#[derive(Debug, Clone, Copy)]
pub struct SnapshotPolicy {
    /// How often loaded indexes are checked for a snapshot or a rebuild due; zero turns
    /// both off.
    pub interval: Duration,
    /// Snapshot once this many changes (or an eighth of the index, if more) were
    /// applied since the last snapshot...
    pub min_changes: u64,
    /// ...or once any change is this old without a snapshot.
    pub max_age: Duration,
}

impl Default for SnapshotPolicy {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(30),
            min_changes: 1_000,
            max_age: Duration::from_secs(600),
        }
    }
}

impl SnapshotPolicy {
    fn is_due(&self, loaded: &Loaded) -> bool {
        let changes = loaded.since_snapshot.load(Ordering::SeqCst);
        if changes == 0 || loaded.index.seq() <= loaded.snapshot_seq.load(Ordering::SeqCst) {
            return false;
        }
        let threshold = self.min_changes.max(loaded.index.len() as u64 / 8);
        let age = loaded
            .snapshot_at
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .elapsed();
        changes >= threshold || age >= self.max_age
    }
}

/// Where a loaded index came from, for logs and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadedFrom {
    /// A stored snapshot as of this seq, plus the changes after it.
    Snapshot(i64),
    /// Every record, replayed into a new graph.
    Replay,
}

impl LoadedFrom {
    /// The seq of the snapshot loaded; 0 for none.
    fn snapshot_seq(self) -> i64 {
        match self {
            LoadedFrom::Snapshot(seq) => seq,
            LoadedFrom::Replay => 0,
        }
    }
}

/// What a pod hears of a namespace while its index loads, when the load is not in the
/// cache to be told: the newest write (epoch and seq), and whether the namespace was
/// forgotten (deleted).
#[derive(Debug, Default)]
struct News {
    latest: Option<(uuid::Uuid, i64)>,
    forgotten: bool,
    /// Callers of `open` loading it now (they share one load).
    openers: usize,
    /// The index being loaded, once made: a write heard of from then on raises its
    /// `wanted` at once, so a search that meets it in the cache (even before its
    /// loader has read this entry again) catches up with that write first.
    index: Option<Weak<Loaded>>,
}

/// A caller's place among the openers of a namespace being loaded, given up when it
/// finishes or, should its load panic, when dropped: an entry left behind would keep
/// a deleted namespace's `forgotten` forever, and every later load of the name stale.
struct Opening<'a> {
    loading: &'a std::sync::Mutex<HashMap<Key, News>>,
    key: &'a Key,
    finished: bool,
}

impl<'a> Opening<'a> {
    fn new(loading: &'a std::sync::Mutex<HashMap<Key, News>>, key: &'a Key) -> Self {
        loading
            .lock()
            .expect("never poisoned")
            .entry(key.clone())
            .or_default()
            .openers += 1;
        Self {
            loading,
            key,
            finished: false,
        }
    }

    /// Gives the place up; returns the newest write heard of meanwhile, and whether the
    /// namespace was forgotten.
    fn finish(mut self) -> (Option<(uuid::Uuid, i64)>, bool) {
        self.finished = true;
        self.leave()
    }

    fn leave(&self) -> (Option<(uuid::Uuid, i64)>, bool) {
        let mut loading = self.loading.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(news) = loading.get_mut(self.key) else {
            return (None, false);
        };
        news.openers -= 1;
        let heard = (news.latest, news.forgotten);
        if news.openers == 0 {
            loading.remove(self.key);
        }
        heard
    }
}

impl Drop for Opening<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.leave();
        }
    }
}

impl News {
    /// Raises `loaded`'s wanted seq to the newest write heard of in its epoch.
    fn raise(&self, loaded: &Loaded) {
        if let Some((epoch, seq)) = self.latest
            && epoch == loaded.index.epoch()
        {
            loaded.wanted.fetch_max(seq, Ordering::SeqCst);
        }
    }
}

/// All the indexes of one pod. A clone is a handle to the same indexes.
#[derive(Clone)]
pub struct IndexManager {
    store: Arc<dyn Store>,
    cache: moka::future::Cache<Key, Arc<Loaded>>,
    /// The namespaces whose index is loading, with what was heard of them meanwhile:
    /// the load applies it once it is in the cache.
    loading: Arc<std::sync::Mutex<HashMap<Key, News>>>,
    permits: Arc<Semaphore>,
    /// MiB of the memory budget, taken by restores while they run ([`Self::restore`]).
    restoring: Arc<Semaphore>,
    /// The memory budget, in bytes.
    budget: u64,
    /// Held by the rebuild running, so one runs at a time.
    rebuilding: Arc<tokio::sync::Mutex<()>>,
}

/// What to search for.
#[derive(Debug, Clone)]
pub struct Query {
    pub vector: Vec<f32>,
    /// How many results, at most.
    pub k: usize,
    pub filter: Arc<Filter>,
    /// Give each match's values as the index holds them: in 16 bits, close to but not
    /// the values written.
    pub include_values: bool,
    /// Catch up with the store before answering (read-your-writes across pods).
    pub strong: bool,
}

impl IndexManager {
    /// A manager whose indexes together stay within about `memory_budget` bytes.
    pub fn new(store: Arc<dyn Store>, memory_budget: u64) -> Self {
        let capacity_kib = (memory_budget / 1024).clamp(1, u64::from(u32::MAX));
        let cache = moka::future::Cache::builder()
            .max_capacity(capacity_kib)
            // Least recently used goes first. moka's default, TinyLFU, also refuses
            // to admit a new entry used less often than the one it would evict: a
            // namespace new to a full pod would load again on every use.
            .eviction_policy(moka::policy::EvictionPolicy::lru())
            // An index of about the whole budget (none grows past it: `TooLarge`)
            // weighs at most the budget, so moka keeps it alone (all others evicted)
            // rather than refusing it, which would load it again for every search.
            .weigher(move |_, loaded: &Arc<Loaded>| {
                let kib = (loaded.index.memory_bytes() as u64 / 1024).clamp(1, capacity_kib);
                u32::try_from(kib).unwrap_or(u32::MAX)
            })
            .support_invalidation_closures()
            .eviction_listener(|key: Arc<Key>, _, cause| {
                // Replaced: the same index put back to be weighed again, not dropped.
                if cause != moka::notification::RemovalCause::Replaced {
                    tracing::info!(project_id = %key.0, namespace = %key.1, ?cause, "index dropped from memory");
                }
            })
            .build();
        Self {
            store,
            cache,
            loading: Arc::new(std::sync::Mutex::new(HashMap::new())),
            permits: Arc::new(Semaphore::new(callers())),
            restoring: Arc::new(Semaphore::new(Self::mib(memory_budget) as usize)),
            budget: memory_budget,
            rebuilding: Arc::new(tokio::sync::Mutex::new(())),
        }
    }

    /// The namespace's index, loading it on first use; `None` when the namespace does
    /// not exist. Catches up first when this pod heard of newer writes.
    pub async fn open(&self, project: &Project, namespace: &str) -> Result<Option<Arc<Loaded>>, EngineError> {
        let key = (project.id, namespace.to_owned());
        // A namespace deleted or made again while its index was read is read again,
        // a few times at most.
        let mut tries = 0;
        loop {
            tries += 1;
            let loaded = match self.cache.get(&key).await {
                Some(loaded) => loaded,
                None => match self.load_into_cache(project, namespace, &key).await {
                    Ok(Some(loaded)) => loaded,
                    Ok(None) => return Ok(None),
                    Err(EngineError::Stale) if tries < 3 => continue,
                    Err(err) => return Err(err),
                },
            };
            match self.freshen(project, namespace, &loaded).await {
                Ok(()) => return Ok(Some(loaded)),
                Err(EngineError::Stale) if tries < 3 => self.drop_if_cached(&key, &loaded).await,
                Err(err) => return Err(err),
            }
        }
    }

    /// Loads an index and puts it in the cache (one load however many ask at once),
    /// then applies what was heard of the namespace meanwhile. The load runs in a task
    /// of its own: a caller that goes away (a client gone, a query's timeout) neither
    /// cuts it short, so a long replay still ends in the cache for the next search,
    /// nor leaves the namespace's entry among those loading.
    async fn load_into_cache(
        &self,
        project: &Project,
        namespace: &str,
        key: &Key,
    ) -> Result<Option<Arc<Loaded>>, EngineError> {
        let (manager, project, namespace, key) = (self.clone(), project.clone(), namespace.to_owned(), key.clone());
        tokio::spawn(async move { manager.load_into_cache_here(&project, &namespace, &key).await })
            .await
            .map_err(|e| EngineError::Task(e.to_string()))?
    }

    async fn load_into_cache_here(
        &self,
        project: &Project,
        namespace: &str,
        key: &Key,
    ) -> Result<Option<Arc<Loaded>>, EngineError> {
        // Before reading the namespace's state: a write committed after that read
        // finds this entry (`hear`) if it does not find the index in the cache.
        let opening = Opening::new(&self.loading, key);
        let loaded = self.load_shared(project, namespace, key).await;
        // Read after the load went into the cache: from here on, writes find the index.
        let (latest, forgotten) = opening.finish();
        let Some(loaded) = loaded? else {
            return Ok(None);
        };
        let recreated = latest.is_some_and(|(epoch, _)| epoch != loaded.index.epoch());
        if forgotten || recreated {
            self.drop_if_cached(key, &loaded).await;
            return Err(EngineError::Stale);
        }
        if let Some((_, seq)) = latest {
            loaded.wanted.fetch_max(seq, Ordering::SeqCst);
        }
        Ok(Some(loaded))
    }

    /// The namespace's index from the cache, loaded into it if need be; `None` when
    /// the namespace does not exist.
    async fn load_shared(
        &self,
        project: &Project,
        namespace: &str,
        key: &Key,
    ) -> Result<Option<Arc<Loaded>>, EngineError> {
        let Some(state) = self.store.namespace(project.id, namespace).await? else {
            return Ok(None);
        };
        self.cache
            .try_get_with(key.clone(), self.load(project, namespace, state))
            .await
            .map(Some)
            .map_err(|err| shared_load_error(&err))
    }

    /// Catches a loaded index up with the writes heard of, unless a write or a
    /// catch-up is being applied right now: a search then serves what is in memory (an
    /// eventual search; a strong one catches up to the store's seq itself) instead of
    /// waiting seconds for a large write to go in.
    async fn freshen(&self, project: &Project, namespace: &str, loaded: &Arc<Loaded>) -> Result<(), EngineError> {
        // Two atomics decide it for nearly every search; the lock only when behind.
        if loaded.wanted.load(Ordering::SeqCst) > loaded.index.seq()
            && loaded.may_catch_up()
            && let Ok(_applying) = loaded.applying.try_lock()
        {
            match self.catch_up_holding(loaded, project.id, namespace, None).await {
                Ok(()) => {}
                // Reads keep serving from memory while the store is unreachable; the
                // writes heard of arrive once it answers again.
                Err(EngineError::Store(StoreError::Unavailable(err))) => {
                    *loaded.catch_up_failed.lock().expect("never poisoned") = Some(Instant::now());
                    tracing::warn!(project_id = %project.id, namespace, error = %err,
                        "catching up with writes heard of failed: serving what is in memory");
                }
                Err(other) => return Err(other),
            }
        }
        Ok(())
    }

    /// Removes `loaded` from the cache if it is still the namespace's index there.
    async fn drop_if_cached(&self, key: &Key, loaded: &Arc<Loaded>) {
        self.if_still_cached(key.clone(), loaded, Op::Remove).await;
    }

    /// Applies `op` to the namespace's cache entry if that entry is still `loaded`
    /// (under moka's key lock, which removal takes too); otherwise leaves it be.
    async fn if_still_cached(&self, key: Key, loaded: &Arc<Loaded>, op: Op<Arc<Loaded>>) {
        self.cache
            .entry(key)
            .and_compute_with(|entry| {
                std::future::ready(match entry {
                    Some(entry) if Arc::ptr_eq(entry.value(), loaded) => op,
                    _ => Op::Nop,
                })
            })
            .await;
    }

    /// Notes a write heard of for a namespace whose index is loading.
    fn hear(&self, key: &Key, state: NamespaceState) {
        if let Some(news) = self.loading.lock().expect("never poisoned").get_mut(key) {
            news.latest = match news.latest {
                Some((epoch, seq)) if epoch == state.epoch => Some((epoch, seq.max(state.seq))),
                _ => Some((state.epoch, state.seq)),
            };
            if let Some(loaded) = news.index.as_ref().and_then(Weak::upgrade) {
                news.raise(&loaded);
            }
        }
    }

    /// Makes a new index being loaded known to the writes heard of meanwhile (see
    /// [`News::index`]), and applies those heard of so far.
    fn loading_into(&self, key: &Key, loaded: &Arc<Loaded>) {
        if let Some(news) = self.loading.lock().expect("never poisoned").get_mut(key) {
            news.index = Some(Arc::downgrade(loaded));
            news.raise(loaded);
        }
    }

    async fn load(
        &self,
        project: &Project,
        namespace: &str,
        state: NamespaceState,
    ) -> Result<Arc<Loaded>, EngineError> {
        let started = std::time::Instant::now();
        let (dimension, metric) = (project.dimension as usize, project.metric);
        // Not yet visible to anyone: a new index can replay in place.
        let (index, from) = match self
            .restore(project.id, namespace, dimension, metric, state.epoch)
            .await?
        {
            Some((index, seq)) => (index, LoadedFrom::Snapshot(seq)),
            None => (NamespaceIndex::new(dimension, metric, state.epoch)?, LoadedFrom::Replay),
        };
        let loaded = Arc::new(Loaded::new(index, state.seq, from));
        self.loading_into(&(project.id, namespace.to_owned()), &loaded);
        self.catch_up(&loaded, project.id, namespace, Some(state.seq)).await?;
        // A restored index takes other room than its snapshot's bytes.
        self.within_budget(&loaded.index)?;
        tracing::info!(
            project_id = %project.id,
            namespace,
            records = loaded.index.len(),
            seq = loaded.index.seq(),
            ?from,
            ms = started.elapsed().as_millis() as u64,
            "index loaded"
        );
        Ok(loaded)
    }

    /// A namespace's index as of its stored snapshot, with the snapshot's seq; `None`
    /// when there is none or it cannot be used (then it is discarded: the records are
    /// the truth, and the index rebuilt from them is snapshotted again).
    async fn restore(
        &self,
        project: ProjectId,
        namespace: &str,
        dimension: usize,
        metric: Metric,
        epoch: uuid::Uuid,
    ) -> Result<Option<(NamespaceIndex, i64)>, EngineError> {
        // A restore holds the snapshot's bytes and the index made from them, twice the
        // snapshot's size, before the cache can weigh the index and evict others for
        // it. Restores running together hold at most the memory budget that way, so a
        // pod all of whose tenants search at once (just started, say) is not killed
        // for memory. A snapshot larger than the budget is not read at all.
        let Some(size) = self.store.snapshot_size(project, namespace).await? else {
            return Ok(None);
        };
        if size > self.budget {
            return Err(EngineError::TooLarge {
                bytes: size,
                budget: self.budget,
            });
        }
        let weight = Self::mib(size.saturating_mul(2)).min(Self::mib(self.budget));
        let _restoring = self
            .restoring
            .acquire_many(weight)
            .await
            .map_err(|e| EngineError::Task(e.to_string()))?;
        let Some(snapshot) = self.store.snapshot(project, namespace).await? else {
            return Ok(None);
        };
        if snapshot.epoch != epoch {
            return Ok(None); // of the namespace's earlier life, going with it
        }
        let seq = snapshot.seq;
        let restored =
            tokio::task::spawn_blocking(move || NamespaceIndex::restore(dimension, metric, epoch, &snapshot.bytes))
                .await
                .map_err(|e| EngineError::Task(e.to_string()))?;
        match restored {
            Ok(index) => Ok(Some((index, seq))),
            // The snapshot may be sound: the load fails, and the next one tries again.
            Err(RestoreError::Index(err)) => Err(err.into()),
            Err(RestoreError::Unusable(err)) => {
                tracing::warn!(
                    project_id = %project,
                    namespace,
                    seq,
                    error = %err,
                    "the stored index snapshot cannot be used; rebuilding from the records"
                );
                self.store.discard_snapshot(project, namespace, seq).await?;
                Ok(None)
            }
        }
    }

    /// [`EngineError::TooLarge`] for an index larger than the whole budget, weighed as
    /// the cache weighs it ([`NamespaceIndex::memory_bytes`]).
    fn within_budget(&self, index: &NamespaceIndex) -> Result<(), EngineError> {
        let bytes = index.memory_bytes() as u64;
        if bytes > self.budget {
            return Err(EngineError::TooLarge {
                bytes,
                budget: self.budget,
            });
        }
        Ok(())
    }

    /// `bytes` in whole MiB, at least 1 (and at most what a semaphore counts).
    fn mib(bytes: u64) -> u32 {
        u32::try_from(bytes.div_ceil(1 << 20))
            .unwrap_or(u32::MAX)
            .clamp(1, 1 << 28)
    }

    /// Replays changes from the store until the index has applied at least `target`
    /// (or everything the store has, when `None`).
    async fn catch_up(
        &self,
        loaded: &Arc<Loaded>,
        project: ProjectId,
        namespace: &str,
        target: Option<i64>,
    ) -> Result<(), EngineError> {
        let _applying = loaded.applying.lock().await;
        self.catch_up_holding(loaded, project, namespace, target).await
    }

    /// [`IndexManager::catch_up`] for a caller that holds `loaded.applying`. An index
    /// that grew is weighed again, so the memory budget sees it whoever caught it up.
    async fn catch_up_holding(
        &self,
        loaded: &Arc<Loaded>,
        project: ProjectId,
        namespace: &str,
        target: Option<i64>,
    ) -> Result<(), EngineError> {
        let before = loaded.index.seq();
        let caught_up = self.replay(loaded, project, namespace, target).await;
        let key = (project, namespace.to_owned());
        if let Err(EngineError::Index(_) | EngineError::Task(_) | EngineError::TooLarge { .. }) = &caught_up {
            // A change that failed part way may leave the index out of step with the
            // records: it loads again from the store on its next use (as after a
            // failed apply of a write this pod made). One grown past the budget goes
            // too, and is refused when next used.
            self.drop_if_cached(&key, loaded).await;
            return caught_up;
        }
        // Only an index served from the cache: one loading now (whose load is this
        // catch-up) is weighed as it goes in, and one built aside is not cached.
        if loaded.index.seq() != before
            && let Some(cached) = self.cache.get(&key).await
            && Arc::ptr_eq(&cached, loaded)
        {
            self.reweigh(key, cached).await;
        }
        caught_up
    }

    /// Applies the store's changes after the index's seq, page by page, until it has
    /// applied at least `target` (or everything, when `None`).
    async fn replay(
        &self,
        loaded: &Arc<Loaded>,
        project: ProjectId,
        namespace: &str,
        target: Option<i64>,
    ) -> Result<(), EngineError> {
        let mut limit = PAGE;
        let mut reloads = 0;
        // A replay from the first change (an index loaded without a usable snapshot)
        // never saw live the records whose tombstones a snapshot purged before it
        // began: only a horizon raised since then means it would miss deletes. (Read
        // before the first page: a purge after this raises the horizon past it.)
        let horizon_known = match loaded.index.seq() {
            0 => self.store.horizon(project, namespace).await?,
            _ => 0,
        };
        loop {
            let after = loaded.index.seq();
            if target.is_some_and(|t| after >= t) {
                return Ok(());
            }
            let changes = self
                .store
                .changes_since(project, namespace, after, limit, horizon_known);
            let mut changes = match changes.await {
                Ok(changes) => changes,
                Err(StoreError::Compacted { horizon }) if reloads < 3 => {
                    // Deletes this index has not seen were purged by a newer snapshot.
                    reloads += 1;
                    let from = self.reload(loaded, project, namespace).await?;
                    tracing::info!(project_id = %project, namespace, after, horizon, ?from, "index reloaded past the horizon");
                    continue;
                }
                Err(err) => return Err(err.into()),
            };
            // Nothing more short of the seq wanted: the namespace may have been deleted
            // meanwhile, its records with it (and this index would stop part way).
            let short = target.is_some_and(|t| after < t);
            if changes.is_empty() && !short {
                return Ok(());
            }
            // Read after the changes: a namespace deleted since this index's epoch began,
            // and perhaps made again, would mix another life's records into it.
            match self.store.namespace(project, namespace).await? {
                Some(state) if state.epoch == loaded.index.epoch() => {}
                _ => return Err(EngineError::Stale),
            }
            if changes.is_empty() {
                return Ok(());
            }
            let full_page = changes.len() == limit as usize;
            if full_page {
                // The last seq may continue on the next page: apply only whole writes.
                let last = changes.last().map(Change::seq).unwrap_or_default();
                let whole = changes.iter().position(|c| c.seq() == last).unwrap_or(0);
                if whole == 0 {
                    // One write larger than a page: read it whole.
                    limit = limit.saturating_mul(2);
                    continue;
                }
                changes.truncate(whole);
            }
            self.apply(loaded, changes).await?;
            // Checked page by page, so a load stops before it holds much more.
            self.within_budget(&loaded.index)?;
            if !full_page {
                return Ok(());
            }
        }
    }

    /// Replaces a loaded index's contents with the stored snapshot, or, without a usable
    /// one, with an index rebuilt from every record. The replacement is built aside and
    /// swapped in whole, so searches meanwhile see the old contents, never a partial one.
    async fn reload(
        &self,
        loaded: &Arc<Loaded>,
        project: ProjectId,
        namespace: &str,
    ) -> Result<LoadedFrom, EngineError> {
        let index = &loaded.index;
        let (dimension, metric, epoch) = (index.dimension(), index.metric(), index.epoch());
        let from = match self.restore(project, namespace, dimension, metric, epoch).await? {
            Some((fresh, seq)) => {
                index.swap_with(&fresh);
                LoadedFrom::Snapshot(seq)
            }
            None => {
                let aside = Loaded::aside(NamespaceIndex::new(dimension, metric, epoch)?);
                Box::pin(self.catch_up(&aside, project, namespace, None)).await?;
                index.swap_with(&aside.index);
                loaded.tuned_at.store(0, Ordering::SeqCst);
                LoadedFrom::Replay
            }
        };
        loaded.loaded_from(from);
        Ok(from)
    }

    async fn apply(&self, loaded: &Arc<Loaded>, changes: Vec<Change>) -> Result<(), EngineError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|e| EngineError::Task(e.to_string()))?;
        let applied = Arc::clone(loaded);
        let count = changes.len() as u64;
        tokio::task::spawn_blocking(move || applied.index.apply(&changes))
            .await
            .map_err(|e| EngineError::Task(e.to_string()))??;
        loaded.since_snapshot.fetch_add(count, Ordering::SeqCst);
        Self::tune_if_changed(loaded);
        Ok(())
    }

    /// Re-tunes the search width in the background when the namespace has doubled
    /// since it was last tuned, or a fifth of its records have been removed or
    /// replaced since (each such change leaves the graph a little worse to walk: see
    /// [`NamespaceIndex::churn`]).
    fn tune_if_changed(loaded: &Arc<Loaded>) {
        let size = loaded.index.len() as i64;
        // A graph being rebuilt is tuned once the new one is in.
        if size < SMALL as i64 || loaded.rebuilding.load(Ordering::SeqCst) {
            return;
        }
        let last = loaded.tuned_at.load(Ordering::SeqCst);
        let churn = loaded.index.churn() as u64;
        let churn_then = loaded.tuned_churn.load(Ordering::SeqCst);
        let grown = size >= last.saturating_mul(2);
        let claimed = if grown {
            loaded
                .tuned_at
                .compare_exchange(last, size, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
        } else if churn.saturating_sub(churn_then) >= size as u64 / 5
            // Not while a tuning runs (the later could finish first), nor on an index
            // being rebuilt aside (tuned once in place).
            && loaded.tunings.load(Ordering::SeqCst) == 0
            && last < i64::MAX / 4
        {
            loaded
                .tuned_churn
                .compare_exchange(churn_then, churn, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
        } else {
            return;
        };
        if !claimed {
            return; // Another task is on it.
        }
        loaded.tuned_churn.fetch_max(churn, Ordering::SeqCst);
        let generation = loaded.tunings_started.fetch_add(1, Ordering::SeqCst) + 1;
        let running = TuningRunning::start(Arc::clone(loaded));
        tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            let loaded = &running.0;
            if grown && last > 0 {
                // Its width was tuned at half the records or fewer: searched meanwhile,
                // a wider one keeps recall up (see `NamespaceIndex::widen`).
                loaded.index.widen();
            }
            match loaded.index.measure_ef(TUNING_SEEDS) {
                // A tuning started since (of more records) serves its own width: this
                // one's, measured on fewer, would narrow what it widened.
                Ok(Some((ef, recall))) if loaded.tunings_started.load(Ordering::SeqCst) == generation => {
                    loaded.index.set_ef(ef);
                    let ms = started.elapsed().as_millis() as u64;
                    tracing::info!(records = size, churn, ef, recall, ms, "search width tuned")
                }
                Ok(Some((ef, _))) => tracing::info!(
                    records = size,
                    churn,
                    ef,
                    "search width tuned, overtaken by a later tuning"
                ),
                Ok(None) => {}
                Err(err) => tracing::warn!(error = %err, "tuning the search width failed"),
            }
        });
    }

    /// Brings a loaded index up to a write this pod just committed. `changes` are the
    /// write's own changes, applied directly when they are the next seq.
    pub async fn committed(
        &self,
        project: ProjectId,
        namespace: &str,
        state: NamespaceState,
        changes: Vec<Change>,
    ) -> Result<(), EngineError> {
        let key = (project, namespace.to_owned());
        // Before looking in the cache: an index loading now is not there yet.
        self.hear(&key, state);
        let Some(loaded) = self.cache.get(&key).await else {
            return Ok(()); // Not in memory: it loads with this write when next used.
        };
        if loaded.index.epoch() != state.epoch {
            self.drop_if_cached(&key, &loaded).await;
            return Ok(());
        }
        loaded.wanted.fetch_max(state.seq, Ordering::SeqCst);
        {
            let _applying = loaded.applying.lock().await;
            if loaded.index.seq() == state.seq - 1 {
                if changes.is_empty() {
                    loaded.index.advance_to(state.seq);
                } else {
                    self.apply(&loaded, changes).await?;
                }
            }
        }
        // Another write got in between (or this one was not next): replay from the store.
        if loaded.index.seq() < state.seq {
            self.catch_up(&loaded, project, namespace, Some(state.seq)).await?;
        }
        self.reweigh(key, loaded).await;
        Ok(())
    }

    /// Puts an index back in the cache so the memory budget sees its new size, unless
    /// it left the cache meanwhile (evicted, or its namespace deleted: a deleted
    /// namespace's index must not come back).
    async fn reweigh(&self, key: Key, loaded: Arc<Loaded>) {
        if let Err(err) = self.within_budget(&loaded.index) {
            tracing::warn!(project_id = %key.0, namespace = %key.1, error = %err,
                "an index grew larger than the whole memory budget: dropped, and refused until the budget is raised");
            self.drop_if_cached(&key, &loaded).await;
            return;
        }
        self.if_still_cached(key, &loaded, Op::Put(Arc::clone(&loaded))).await;
    }

    /// Another pod wrote `seq` to the namespace: catch up before the next search.
    pub async fn heard_of(&self, project: ProjectId, namespace: &str, state: NamespaceState) {
        let key = (project, namespace.to_owned());
        self.hear(&key, state);
        if let Some(loaded) = self.cache.get(&key).await {
            self.catch_up_to(&key, &loaded, Some(state)).await;
        }
    }

    /// Has `loaded`, the index of `key`, catch up to its namespace as it is now
    /// (`None`: gone) on its next search: its wanted seq is raised, or, when the
    /// namespace is gone or of another life (a new epoch), it is dropped if still
    /// cached.
    async fn catch_up_to(&self, key: &Key, loaded: &Arc<Loaded>, now: Option<NamespaceState>) {
        match now {
            Some(state) if state.epoch == loaded.index.epoch() => {
                loaded.wanted.fetch_max(state.seq, Ordering::SeqCst);
            }
            _ => self.drop_if_cached(key, loaded).await,
        }
    }

    /// Searches a namespace; `None` when it does not exist. With `query.strong`, first
    /// reads the namespace's seq from the store and catches up to it.
    pub async fn search(
        &self,
        project: &Project,
        namespace: &str,
        query: Query,
    ) -> Result<Option<SearchOutcome>, EngineError> {
        let Some(loaded) = self.open(project, namespace).await? else {
            return Ok(None);
        };
        if query.strong {
            match self.store.namespace(project.id, namespace).await? {
                None => {
                    self.forget_namespace(project.id, namespace).await;
                    return Ok(None);
                }
                Some(state) if state.epoch != loaded.index.epoch() => {
                    self.forget_namespace(project.id, namespace).await;
                    return Box::pin(self.search(project, namespace, query)).await;
                }
                Some(state) => match self.catch_up(&loaded, project.id, namespace, Some(state.seq)).await {
                    Err(EngineError::Stale) => {
                        self.forget_namespace(project.id, namespace).await;
                        return Box::pin(self.search(project, namespace, query)).await;
                    }
                    caught_up => caught_up?,
                },
            }
        }
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|e| EngineError::Task(e.to_string()))?;
        // An unfiltered search walks the graph a bounded distance (ef × M vectors, well
        // under a millisecond here): it runs on this thread, unless a write holds the
        // index, rather than pay a hop to the blocking pool and back. Filtered searches
        // may scan many records, and go to the blocking pool.
        if query.filter.is_all()
            && let Some(found) = loaded
                .index
                .try_search(&query.vector, query.k, &query.filter, query.include_values)
        {
            return Ok(Some(found?));
        }
        let outcome = tokio::task::spawn_blocking(move || {
            loaded
                .index
                .search_at_seq(&query.vector, query.k, &query.filter, query.include_values)
        })
        .await
        .map_err(|e| EngineError::Task(e.to_string()))??;
        Ok(Some(outcome))
    }

    /// The ids of the records that pass `filter`, after catching up with the store;
    /// `None` when the namespace does not exist.
    pub async fn matching_ids(
        &self,
        project: &Project,
        namespace: &str,
        filter: Arc<Filter>,
    ) -> Result<Option<Vec<String>>, EngineError> {
        let Some(mut loaded) = self.open(project, namespace).await? else {
            return Ok(None);
        };
        match self.catch_up(&loaded, project.id, namespace, None).await {
            Err(EngineError::Stale) => {
                // The namespace was deleted, or made again, since this index was loaded.
                self.forget_namespace(project.id, namespace).await;
                let Some(fresh) = self.open(project, namespace).await? else {
                    return Ok(None);
                };
                self.catch_up(&fresh, project.id, namespace, None).await?;
                loaded = fresh;
            }
            caught_up => caught_up?,
        }
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|e| EngineError::Task(e.to_string()))?;
        let ids = tokio::task::spawn_blocking(move || loaded.index.matching_ids(&filter))
            .await
            .map_err(|e| EngineError::Task(e.to_string()))?;
        Ok(Some(ids))
    }

    /// Catches every index in memory up with its namespace as the store has it, for
    /// when notices may have been lost (the bus was down, or a writer's publish
    /// failed): the next search catches up, and the index of a namespace deleted
    /// meanwhile is dropped. Without it, such an index would serve what it last heard
    /// until the namespace's next notice, however long that is. One read of the store
    /// per project with indexes here.
    pub async fn resync(&self) -> Result<(), EngineError> {
        // The indexes first, the store after: an index loaded after the store was read
        // is not in this list, so a namespace made since is never taken for deleted.
        type Cached = (Arc<Key>, Arc<Loaded>);
        let mut by_project: HashMap<ProjectId, Vec<Cached>> = HashMap::new();
        for (key, loaded) in self.cache.iter() {
            by_project.entry(key.0).or_default().push((key, loaded));
        }
        for (project, indexes) in by_project {
            let live: HashMap<String, NamespaceState> = self
                .store
                .namespaces(project)
                .await?
                .into_iter()
                .map(|info| {
                    let state = NamespaceState {
                        epoch: info.epoch,
                        seq: info.seq,
                    };
                    (info.name, state)
                })
                .collect();
            // Each index as it was listed: what the store said may be older than what
            // this pod heard since (the namespace deleted and made again, a new index
            // loaded), so it only raises that index's wanted seq, or drops that index.
            for (key, loaded) in indexes {
                self.catch_up_to(&key, &loaded, live.get(&key.1).copied()).await;
            }
        }
        Ok(())
    }

    /// Every `period`, for as long as the manager lives: [`IndexManager::resync`], a
    /// backstop for notices lost while the bus seemed up (a writer whose publish
    /// failed).
    pub fn run_resync(manager: Weak<Self>, period: Duration) -> tokio::task::JoinHandle<()> {
        quiver_common::every::every(period, period, manager, |manager| async move {
            if let Err(err) = manager.resync().await {
                tracing::warn!(error = %err, "checking the indexes in memory against the store failed");
            }
        })
    }

    /// Drops a namespace's index (it was deleted).
    pub async fn forget_namespace(&self, project: ProjectId, namespace: &str) {
        let key = (project, namespace.to_owned());
        // A load running now would put the deleted namespace's index in the cache.
        if let Some(news) = self.loading.lock().expect("never poisoned").get_mut(&key) {
            news.forgotten = true;
        }
        self.cache.invalidate(&key).await;
    }

    /// Drops every index of a project (it was deleted).
    pub fn forget_project(&self, project: ProjectId) {
        for (key, news) in self.loading.lock().expect("never poisoned").iter_mut() {
            news.forgotten |= key.0 == project;
        }
        if self
            .cache
            .invalidate_entries_if(move |key, _| key.0 == project)
            .is_err()
        {
            self.cache.invalidate_all();
        }
    }

    /// Snapshots every loaded index that `policy` says is due, one at a time; returns
    /// how many were stored. Failures are logged and retried on the next round.
    pub async fn snapshot_due(&self, policy: &SnapshotPolicy) -> usize {
        // An index being rebuilt is snapshotted once the new graph is in (the rebuild
        // holds `saving` meanwhile).
        let due: Vec<(Arc<Key>, Arc<Loaded>)> = self
            .cache
            .iter()
            .filter(|(_, loaded)| !loaded.rebuilding.load(Ordering::SeqCst) && policy.is_due(loaded))
            .collect();
        let mut stored = 0;
        for (key, loaded) in due {
            match self.save(&key.0, &key.1, &loaded).await {
                Ok(Some(_)) => stored += 1,
                Ok(None) => {}
                Err(err) => {
                    tracing::warn!(project_id = %key.0, namespace = %key.1, error = %err, "index snapshot failed")
                }
            }
        }
        stored
    }

    /// Snapshots a namespace's index now, if it is in memory: the seq stored, or `None`
    /// when it is not loaded or a snapshot as new is already stored.
    pub async fn snapshot_now(&self, project: ProjectId, namespace: &str) -> Result<Option<i64>, EngineError> {
        let Some(loaded) = self.cache.get(&(project, namespace.to_owned())).await else {
            return Ok(None);
        };
        self.save(&project, namespace, &loaded).await
    }

    async fn save(
        &self,
        project: &ProjectId,
        namespace: &str,
        loaded: &Arc<Loaded>,
    ) -> Result<Option<i64>, EngineError> {
        let _saving = loaded.saving.lock().await;
        let started = Instant::now();
        let taken = Arc::clone(loaded);
        let changes_before = loaded.since_snapshot.load(Ordering::SeqCst);
        let (seq, bytes) = tokio::task::spawn_blocking(move || taken.index.snapshot())
            .await
            .map_err(|e| EngineError::Task(e.to_string()))??;
        if seq <= loaded.snapshot_seq.load(Ordering::SeqCst) {
            return Ok(None);
        }
        let size = bytes.len();
        let snapshot = Snapshot {
            epoch: loaded.index.epoch(),
            seq,
            bytes,
        };
        let stored = self.store.save_snapshot(*project, namespace, &snapshot).await?;
        // Stored here or (refused) as new or newer elsewhere: either way, not due again
        // until more changes arrive.
        loaded.snapshot_seq.fetch_max(seq, Ordering::SeqCst);
        loaded.snapshot_counted(changes_before);
        if !stored {
            return Ok(None);
        }
        tracing::info!(
            project_id = %project,
            namespace,
            seq,
            bytes = size,
            records = loaded.index.len(),
            ms = started.elapsed().as_millis() as u64,
            "index snapshot stored"
        );
        Ok(Some(seq))
    }

    /// Bytes the indexes in memory hold as they are now (the cache weighs each as it
    /// was when last inserted).
    fn held_bytes(&self) -> u64 {
        self.cache
            .iter()
            .map(|(_, loaded)| loaded.index.memory_bytes() as u64)
            .sum()
    }

    /// Whether the memory budget, with `held` bytes in use, has room for a second
    /// graph the size of `loaded`'s, as a rebuild holds both until it swaps.
    fn has_room_to_rebuild(&self, held: u64, loaded: &Loaded) -> bool {
        held + loaded.index.memory_bytes() as u64 <= self.budget
    }

    /// Starts rebuilding, in the background, the graph of the loaded index that has
    /// churned most, if at least half its records have been replaced or deleted since
    /// its graph was built, it has at least a thousand, and the memory budget has room
    /// for a second graph of its size. One rebuild runs at a time: `None` when one
    /// already runs or none is due.
    pub fn rebuild_due(self: &Arc<Self>) -> Option<tokio::task::JoinHandle<()>> {
        let wear = |loaded: &Loaded| loaded.index.churn() as f64 / loaded.index.len().max(1) as f64;
        let held = self.held_bytes();
        let (key, loaded) = self
            .cache
            .iter()
            .filter(|(_, loaded)| {
                loaded.index.len() >= SMALL && wear(loaded) >= REBUILD_CHURN && self.has_room_to_rebuild(held, loaded)
            })
            .max_by(|(_, a), (_, b)| wear(a).total_cmp(&wear(b)))?;
        let one_at_a_time = Arc::clone(&self.rebuilding).try_lock_owned().ok()?;
        let running = RebuildRunning::start(loaded);
        let manager = Arc::clone(self);
        Some(tokio::spawn(async move {
            let _one_at_a_time = one_at_a_time;
            if let Err(err) = manager.rebuild(&key, running).await {
                tracing::warn!(project_id = %key.0, namespace = %key.1, error = %err, "rebuilding an index graph failed");
            }
        }))
    }

    /// Rebuilds a namespace's graph now, if its index is in memory, after any rebuild
    /// running ends: whether a rebuilt graph was swapped in (not when the index is not
    /// loaded or the memory budget has no room for a second graph of its size).
    pub async fn rebuild_now(&self, project: ProjectId, namespace: &str) -> Result<bool, EngineError> {
        let key = (project, namespace.to_owned());
        let Some(loaded) = self.cache.get(&key).await else {
            return Ok(false);
        };
        let _one_at_a_time = self.rebuilding.lock().await;
        self.rebuild(&key, RebuildRunning::start(loaded)).await
    }

    /// Builds a new graph of the index's records aside ([`NamespaceIndex::rebuilt`]),
    /// from half the cores, while the index serves searches and takes writes; then
    /// applies the writes made meanwhile to it from the store, the last of them holding
    /// writes, and swaps it in whole, at the search width served.
    /// Its width is tuned again once it is in, and it is snapshotted with the next write.
    async fn rebuild(&self, key: &Key, running: RebuildRunning) -> Result<bool, EngineError> {
        let (project, namespace) = (key.0, key.1.as_str());
        let loaded = &Arc::clone(&running.0);
        if !self.has_room_to_rebuild(self.held_bytes(), loaded) {
            tracing::info!(
                project_id = %project,
                namespace,
                bytes = loaded.index.memory_bytes(),
                "no room in the memory budget to rebuild the index's graph aside"
            );
            return Ok(false);
        }
        // No snapshot of the worn graph meanwhile.
        let _saving = loaded.saving.lock().await;
        let started = Instant::now();
        let index = &loaded.index;
        let churn = index.churn();
        // The records as the index holds them, into a new graph, while writes go on to
        // the index served (a replay from the store would meet the tombstone horizon
        // of the namespace's last snapshot)...
        let worn = Arc::clone(loaded);
        let fresh = tokio::task::spawn_blocking(move || worn.index.rebuilt())
            .await
            .map_err(|e| EngineError::Task(e.to_string()))??;
        let aside = Loaded::aside(fresh);
        self.catch_up(&aside, project, namespace, None).await?;
        // ...and the writes made meanwhile, holding writes. A tuning of the worn graph
        // that is still running would set its width on the new one: it ends first (no
        // new one starts while the index is rebuilding).
        while loaded.tunings.load(Ordering::SeqCst) > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let applying = loaded.applying.lock().await;
        self.catch_up(&aside, project, namespace, Some(index.seq())).await?;
        let still_served = self
            .cache
            .get(key)
            .await
            .is_some_and(|cached| Arc::ptr_eq(&cached, loaded));
        let restored = matches!(
            *aside.from.lock().unwrap_or_else(std::sync::PoisonError::into_inner),
            LoadedFrom::Snapshot(_)
        );
        if !still_served || restored {
            // Evicted or replaced meanwhile, or the catch-up met the tombstone horizon of
            // a snapshot another pod stored and restored it (a graph no newer than the
            // one served).
            tracing::info!(project_id = %project, namespace, still_served, restored, "index graph rebuild dropped");
            return Ok(false);
        }
        aside.index.set_ef(index.ef());
        index.swap_with(&aside.index);
        loaded.rebuilds.fetch_add(1, Ordering::SeqCst);
        loaded.tuned_churn.store(index.churn() as u64, Ordering::SeqCst);
        loaded.tuned_at.store(0, Ordering::SeqCst);
        // Every record is in a new place: worth a snapshot at the next write.
        loaded.since_snapshot.fetch_add(index.len() as u64, Ordering::SeqCst);
        drop(applying);
        drop(running);
        Self::tune_if_changed(loaded);
        self.reweigh(key.clone(), Arc::clone(loaded)).await;
        tracing::info!(
            project_id = %project,
            namespace,
            records = index.len(),
            churn,
            seq = index.seq(),
            ms = started.elapsed().as_millis() as u64,
            "index graph rebuilt"
        );
        Ok(true)
    }

    /// Every `policy.interval`, for as long as the manager lives: snapshots the indexes
    /// due, and starts the rebuild of the most worn graph, if one is due and none runs.
    pub fn run_maintenance(manager: Weak<Self>, policy: SnapshotPolicy) -> Option<tokio::task::JoinHandle<()>> {
        if policy.interval.is_zero() {
            return None;
        }
        Some(quiver_common::every::every(
            policy.interval,
            policy.interval,
            manager,
            move |manager| async move {
                manager.snapshot_due(&policy).await;
                manager.rebuild_due();
            },
        ))
    }

    /// Where a namespace's index stands, if it is in memory.
    pub async fn status(&self, project: ProjectId, namespace: &str) -> Option<IndexStatus> {
        let loaded = self.cache.get(&(project, namespace.to_owned())).await?;
        Some(IndexStatus {
            seq: loaded.index.seq(),
            records: loaded.index.len(),
            snapshot_seq: loaded.snapshot_seq.load(Ordering::SeqCst),
            from: *loaded.from.lock().unwrap_or_else(std::sync::PoisonError::into_inner),
            ef: loaded.index.ef(),
            tuning: loaded.tunings.load(Ordering::SeqCst) > 0,
            tunings: loaded.tunings_started.load(Ordering::SeqCst),
            churn: loaded.index.churn(),
            rebuilding: loaded.rebuilding.load(Ordering::SeqCst),
            rebuilds: loaded.rebuilds.load(Ordering::SeqCst),
        })
    }

    /// Bytes held by the indexes in memory (as weighed when last inserted).
    pub fn memory_bytes(&self) -> u64 {
        self.cache.weighted_size() * 1024
    }

    /// Finishes pending cache maintenance (evictions), so that the sizes reported after
    /// it are exact; the cache otherwise does this lazily.
    pub async fn settle(&self) {
        self.cache.run_pending_tasks().await;
    }

    /// Whether a namespace's index is in memory.
    /// Whether the namespace's index is being loaded now, past reading the namespace's
    /// state: the index is made and taking the records.
    pub fn is_loading(&self, project: ProjectId, namespace: &str) -> bool {
        self.loading
            .lock()
            .expect("never poisoned")
            .get(&(project, namespace.to_owned()))
            .is_some_and(|news| news.index.is_some())
    }

    pub async fn is_loaded(&self, project: ProjectId, namespace: &str) -> bool {
        self.cache.contains_key(&(project, namespace.to_owned()))
    }

    /// Bytes the indexes in memory use, without usearch's reserved room to grow.
    pub fn used_bytes(&self) -> u64 {
        self.cache
            .iter()
            .map(|(_, loaded)| loaded.index.used_bytes() as u64)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_load_that_lost_the_store_is_a_503_for_every_caller_waiting_on_it() {
        let lost = EngineError::Store(StoreError::Unavailable("connection refused".into()));
        let answer = quiver_common::ApiError::from(shared_load_error(&lost));
        assert!(
            matches!(answer, quiver_common::ApiError::DatabaseUnavailable(ref m) if m.contains("connection refused")),
            "{answer:?}"
        );
        assert!(matches!(shared_load_error(&EngineError::Stale), EngineError::Stale));
        let broken = EngineError::Task("a blocking task panicked".into());
        assert!(matches!(
            quiver_common::ApiError::from(shared_load_error(&broken)),
            quiver_common::ApiError::Internal(_)
        ));
    }
}
