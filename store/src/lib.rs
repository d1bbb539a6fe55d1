//! Storage for Quiver: the catalog (users, plans, projects, API keys), the records
//! of every namespace (vectors, metadata, content, per-namespace sequence numbers and
//! tombstones) and idempotency records.
//!
//! Each is a trait; [`sqlite::SqliteStore`] (standalone) and
//! [`postgres::PostgresStore`] (cluster) implement all of them and are held to one
//! conformance suite ([`conformance`]). [`connect`] picks the backend by URL scheme.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use quiver_common::domain::{Metric, Plan, ProjectId, Role, UserId};
use quiver_common::http::ReadinessCheck;
use serde_json::{Map, Value};
use uuid::Uuid;

mod error;
pub mod postgres;
mod sql;
pub mod sqlite;
mod vector_bytes;

#[cfg(feature = "conformance")]
pub mod conformance;

pub use error::StoreError;
pub use vector_bytes::{decode_vector, encode_vector};

/// Result of every store operation.
pub type StoreResult<T> = Result<T, StoreError>;

/// A JSON object: the metadata of a record.
pub type Metadata = Map<String, Value>;

/// An account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: UserId,
    /// Lowercased at the boundary; unique.
    pub email: String,
    /// An argon2id PHC string; never the password.
    pub password_hash: String,
    pub created_at: DateTime<Utc>,
    /// Raised by each log out: a console session begun under a lower one has ended.
    pub session_epoch: i64,
}

/// What creating a project needs.
#[derive(Debug, Clone)]
pub struct NewProject {
    pub owner_id: UserId,
    pub name: String,
    pub dimension: u32,
    pub metric: Metric,
    pub plan_id: String,
}

/// A tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Project {
    pub id: ProjectId,
    pub owner_id: UserId,
    pub name: String,
    pub dimension: u32,
    pub metric: Metric,
    pub plan_id: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// What creating an API key needs. The id is public (it is part of the key); only
/// a hash of the secret part is stored.
#[derive(Debug, Clone)]
pub struct NewApiKey {
    pub id: String,
    pub project_id: ProjectId,
    pub label: String,
    pub role: Role,
    pub secret_hash: String,
    pub expires_at: Option<DateTime<Utc>>,
}

/// A stored API key: everything but the secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    pub id: String,
    pub project_id: ProjectId,
    pub label: String,
    pub role: Role,
    pub secret_hash: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// How much a project stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ProjectUsage {
    /// Live records (tombstones excluded) across all namespaces.
    pub vectors: u64,
    pub namespaces: u64,
}

/// A plan's caps on what a project stores, held by a write inside its transaction
/// (see [`Records::upsert_within`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caps {
    /// The plan's name, for the refusal's message.
    pub plan: String,
    pub namespaces: u64,
    pub vectors: u64,
    /// The embedding model that made the write's vectors from text, if one did: the
    /// namespace takes it as its model when it has none, in the write's transaction,
    /// and a write by another model than the namespace's is refused
    /// ([`StoreError::Invalid`], [`model_mismatch`]).
    pub embedding_model: Option<String>,
}

/// The refusal of a write or a request whose embedding model is not the collection's.
pub fn model_mismatch(collection: &str, recorded: &str, asked: &str) -> String {
    format!(
        "collection \"{collection}\" is embedded with {recorded}: name that model (or none), or send embeddings; \
         vectors of {asked} would not compare with its documents'"
    )
}

/// Users, plans, projects and API keys.
#[async_trait]
pub trait Catalog: Send + Sync {
    /// Creates an account. A taken email is [`StoreError::Conflict`].
    async fn create_user(&self, email: &str, password_hash: &str) -> StoreResult<User>;
    async fn user_by_email(&self, email: &str) -> StoreResult<Option<User>>;
    async fn user(&self, id: UserId) -> StoreResult<Option<User>>;
    /// Ends every console session of the account begun so far (raises its
    /// `session_epoch`); `false` when there is no such account.
    async fn end_sessions(&self, id: UserId) -> StoreResult<bool>;

    /// The plan catalog, cheapest first.
    async fn plans(&self) -> StoreResult<Vec<Plan>>;
    async fn plan(&self, id: &str) -> StoreResult<Option<Plan>>;

    /// Creates a project. An unknown plan or owner is [`StoreError::Invalid`].
    async fn create_project(&self, project: NewProject) -> StoreResult<Project>;
    async fn project(&self, id: ProjectId) -> StoreResult<Option<Project>>;
    /// The projects an account owns, oldest first.
    async fn projects_of(&self, owner: UserId) -> StoreResult<Vec<Project>>;
    /// Every project, for publishing limits at start.
    async fn all_projects(&self) -> StoreResult<Vec<Project>>;
    /// Changes a project's plan; `None` when there is no such project.
    async fn set_project_plan(&self, id: ProjectId, plan_id: &str) -> StoreResult<Option<Project>>;
    /// Deletes a project with its keys, namespaces, records and idempotency records.
    async fn delete_project(&self, id: ProjectId) -> StoreResult<bool>;
    async fn project_usage(&self, id: ProjectId) -> StoreResult<ProjectUsage>;

    /// Stores a new key. A duplicate id is [`StoreError::Conflict`].
    async fn create_api_key(&self, key: NewApiKey) -> StoreResult<ApiKey>;
    async fn api_key(&self, id: &str) -> StoreResult<Option<ApiKey>>;
    /// A project's keys, revoked ones included, oldest first.
    async fn api_keys_of(&self, project: ProjectId) -> StoreResult<Vec<ApiKey>>;
    /// Marks a key revoked; `false` when the project has no such live key.
    async fn revoke_api_key(&self, project: ProjectId, id: &str) -> StoreResult<bool>;
    /// Keys revoked at or after `since`, oldest first: pods poll this so that a
    /// revocation holds even when its bus notice is lost.
    async fn keys_revoked_since(&self, since: DateTime<Utc>) -> StoreResult<Vec<ApiKey>>;
    /// Records that a key was used (best effort, coarse-grained by the caller).
    async fn touch_api_key(&self, id: &str, at: DateTime<Utc>) -> StoreResult<()>;
}

/// One record to write.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordWrite {
    pub id: String,
    pub vector: Vec<f32>,
    pub metadata: Metadata,
    pub content: Option<String>,
}

/// A record as a reader saw it: its id and the seq of the write that last touched it
/// ([`Record::seq`]), which every later write to it changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub id: String,
    pub seq: i64,
}

/// A stored record.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub id: String,
    pub vector: Vec<f32>,
    pub metadata: Metadata,
    pub content: Option<String>,
    /// The namespace seq of the write that last touched it.
    pub seq: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A change to replay into an index: a record as it now is, or its tombstone.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    Upsert(Record),
    Delete { id: String, seq: i64 },
}

impl Change {
    pub fn seq(&self) -> i64 {
        match self {
            Change::Upsert(record) => record.seq,
            Change::Delete { seq, .. } => *seq,
        }
    }
}

/// Where a namespace stands. `epoch` changes when a namespace is deleted and created
/// again, so a cached index of the old one is never mistaken for the new one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NamespaceState {
    pub epoch: Uuid,
    pub seq: i64,
}

/// A namespace with its size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespaceInfo {
    pub name: String,
    pub epoch: Uuid,
    pub seq: i64,
    /// Live records.
    pub count: u64,
}

/// The outcome of a write: the namespace's state after it and how many records it changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteOutcome {
    pub state: NamespaceState,
    pub affected: u64,
}

/// How a patch changes a record's metadata.
#[derive(Debug, Clone, PartialEq)]
pub enum MetadataPatch {
    /// Keys merged into the record's metadata; a `null` value removes the key.
    Merge(Metadata),
    /// The whole metadata object replaced.
    Replace(Metadata),
}

/// A change to one record.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RecordPatch {
    pub metadata: Option<MetadataPatch>,
    /// Replaces the vector.
    pub vector: Option<Vec<f32>>,
    /// Replaces the content.
    pub content: Option<String>,
    /// The most bytes the record's metadata may take as JSON once patched: beyond it
    /// the update is refused ([`StoreError::Invalid`]) and nothing changes. A merge
    /// can grow metadata past what any one request sends.
    pub metadata_limit: Option<usize>,
    /// The embedding model that made `vector` from text, if one did: held as
    /// [`Caps::embedding_model`] is, in the update's transaction.
    pub embedding_model: Option<String>,
    /// The record's content `vector` was embedded from, read before the update: the
    /// update goes ahead only if the content is still that text, and is otherwise a
    /// [`StoreError::Conflict`] that changes nothing (another write changed the text
    /// while it was embedded, and the vector would no longer be of it).
    pub embedded_content: Option<String>,
}

/// The records of every namespace.
///
/// Every write is one transaction: it takes the namespace's next `seq` (which also
/// serializes writers of one namespace, so seq order is commit order) and stamps it
/// on each record it touches. Deletes leave tombstones so that [`Records::changes_since`]
/// can replay them into an index.
#[async_trait]
pub trait Records: Send + Sync {
    /// Inserts or replaces records, creating the namespace if needed. All or nothing.
    /// When a batch repeats an id, the last occurrence wins.
    async fn upsert(&self, project: ProjectId, namespace: &str, records: &[RecordWrite]) -> StoreResult<WriteOutcome>;
    /// [`Records::upsert`], refused ([`StoreError::OverCap`], nothing written) when it
    /// would take the project past `caps`: a namespace beyond `caps.namespaces`, or
    /// more live records than `caps.vectors` (records it replaces do not count). The
    /// check runs inside the write's transaction with the project's other capped
    /// writes held off, so concurrent writes cannot pass a cap together.
    async fn upsert_within(
        &self,
        project: ProjectId,
        namespace: &str,
        records: &[RecordWrite],
        caps: &Caps,
    ) -> StoreResult<WriteOutcome>;
    /// [`Records::upsert_within`] of a write computed from records read earlier: only if
    /// every record in `seen` is still live and unchanged (its seq the one it was read
    /// at) when the write takes the namespace's lock. `Ok(None)`, and nothing written,
    /// when one was changed or deleted in between.
    async fn upsert_unchanged(
        &self,
        project: ProjectId,
        namespace: &str,
        records: &[RecordWrite],
        seen: &[Seen],
        caps: &Caps,
    ) -> StoreResult<Option<WriteOutcome>>;
    /// Live records with these ids, in the order asked; missing ids are skipped.
    async fn fetch(&self, project: ProjectId, namespace: &str, ids: &[String]) -> StoreResult<Vec<Record>>;
    /// Applies a patch to a live record; `None` when there is no such record.
    async fn update(
        &self,
        project: ProjectId,
        namespace: &str,
        id: &str,
        patch: &RecordPatch,
    ) -> StoreResult<Option<(WriteOutcome, Record)>>;
    /// Tombstones the live records with these ids; `affected` counts those that existed.
    /// `None` when the namespace does not exist.
    async fn delete(&self, project: ProjectId, namespace: &str, ids: &[String]) -> StoreResult<Option<WriteOutcome>>;
    /// [`Records::delete`] of those of these records whose metadata still passes
    /// `still_matches` inside the write's transaction, with the namespace's other
    /// writes held off: a record chosen by a filter, then changed to fail it before
    /// the delete commits, is kept. Returns the ids it tombstoned.
    async fn delete_matching(
        &self,
        project: ProjectId,
        namespace: &str,
        ids: &[String],
        still_matches: &(dyn for<'m> Fn(&'m Metadata) -> bool + Send + Sync),
    ) -> StoreResult<Option<(WriteOutcome, Vec<String>)>>;
    /// [`Records::delete`] of records chosen from what a reader saw: only if every
    /// record in `seen` is still live and unchanged when the delete takes the
    /// namespace's lock. `Ok(None)`, and nothing deleted, when one was changed or
    /// deleted in between, or the namespace is gone.
    async fn delete_unchanged(
        &self,
        project: ProjectId,
        namespace: &str,
        seen: &[Seen],
    ) -> StoreResult<Option<WriteOutcome>>;
    /// Every change with `seq > after`, in seq order, at most `limit` of them.
    /// [`StoreError::Compacted`] when `0 < after` and a snapshot purged tombstones
    /// after it (the namespace's [`Records::horizon`] is above `after`): replaying from
    /// there would miss deletes. Unless the horizon is still `horizon_known`: a replay
    /// from the first change, begun when the horizon was already there, never saw
    /// live the records whose tombstones were purged, and misses nothing.
    async fn changes_since(
        &self,
        project: ProjectId,
        namespace: &str,
        after: i64,
        limit: u32,
        horizon_known: i64,
    ) -> StoreResult<Vec<Change>>;
    /// The seq up to which the namespace's tombstones have been purged (0 when none
    /// have, or there is no such namespace).
    async fn horizon(&self, project: ProjectId, namespace: &str) -> StoreResult<i64>;
    /// Live ids in byte order, after the cursor, starting with the prefix.
    async fn list_ids(
        &self,
        project: ProjectId,
        namespace: &str,
        prefix: Option<&str>,
        after: Option<&str>,
        limit: u32,
    ) -> StoreResult<Vec<String>>;
    /// Live records in id byte order with ids after the cursor, at most `limit`: a
    /// whole namespace, page by page.
    async fn scan(
        &self,
        project: ProjectId,
        namespace: &str,
        after: Option<&str>,
        limit: u32,
    ) -> StoreResult<Vec<Record>>;
    async fn namespace(&self, project: ProjectId, namespace: &str) -> StoreResult<Option<NamespaceState>>;
    /// The embedding model that made the namespace's vectors from text, if one has
    /// (`None` too when there is no such namespace).
    async fn embedding_model(&self, project: ProjectId, namespace: &str) -> StoreResult<Option<String>>;
    /// A project's namespaces by name, with live counts.
    async fn namespaces(&self, project: ProjectId) -> StoreResult<Vec<NamespaceInfo>>;
    /// Deletes a namespace with all its records; `false` when it did not exist.
    async fn delete_namespace(&self, project: ProjectId, namespace: &str) -> StoreResult<bool>;
}

/// A namespace's serialized index as of `seq` (the format is the engine's business).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub epoch: Uuid,
    pub seq: i64,
    pub bytes: Vec<u8>,
}

/// Bytes per stored chunk of a snapshot: well under both backends' value limits, and
/// small enough that no single row is a burden to read or write.
pub const SNAPSHOT_CHUNK: usize = 4 << 20;

/// Index snapshots, one per namespace, so a pod loads a namespace's index instead of
/// rebuilding its graph from every record.
#[async_trait]
pub trait Snapshots: Send + Sync {
    /// Stores a snapshot, replacing the namespace's current one, and purges the
    /// tombstones it covers (`seq <= snapshot.seq`), raising the namespace's horizon
    /// to it. `false` (nothing
    /// changed) when the namespace is gone or has another epoch, or a snapshot of the
    /// same or a later seq is (or was, before the horizon) stored. The chunks are uploaded before the switch, so
    /// writers to the namespace wait only for the switch.
    async fn save_snapshot(&self, project: ProjectId, namespace: &str, snapshot: &Snapshot) -> StoreResult<bool>;
    /// The namespace's snapshot, if one is stored.
    async fn snapshot(&self, project: ProjectId, namespace: &str) -> StoreResult<Option<Snapshot>>;
    /// The size in bytes of the namespace's snapshot, if one is stored, without
    /// reading it.
    async fn snapshot_size(&self, project: ProjectId, namespace: &str) -> StoreResult<Option<u64>>;
    /// Deletes the chunks of uploads begun more than `older_than` ago that no snapshot
    /// points to (a pod died between its upload and its switch); returns how many
    /// uploads' chunks it deleted.
    async fn purge_orphan_chunks(&self, older_than: chrono::Duration) -> StoreResult<u64>;
    /// Deletes the namespace's snapshot if it is the one of `seq` (one that could not
    /// be used), so that a good one of the same seq can take its place. The horizon
    /// stays: a replay from the start needs no tombstones.
    async fn discard_snapshot(&self, project: ProjectId, namespace: &str, seq: i64) -> StoreResult<bool>;
}

/// A response stored under an idempotency key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredResponse {
    pub status: u16,
    pub body: Vec<u8>,
}

/// One request's hold on an idempotency key, as [`Idempotency::begin`] gave it: the
/// end of its lease, which every later claim of the key (a takeover once the lease has
/// run out) sets later still, so it names the request that holds the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim(pub i64);

/// What [`Idempotency::begin`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdempotencyBegin {
    /// The key is new (or its earlier attempt expired or was abandoned): go ahead,
    /// then [`Idempotency::complete`] or [`Idempotency::abort`]. `first_started` is
    /// when the request first started under the key: a retry that takes over an
    /// abandoned attempt of the same request gets the attempt's time, so whatever the
    /// request derives from it (the ids it makes) comes out the same.
    Started { first_started: DateTime<Utc>, claim: Claim },
    /// The same request already completed: send this.
    Replay(StoredResponse),
    /// The same key is being processed right now.
    InFlight,
    /// The key was used with a different request.
    Mismatch,
}

/// Responses of mutating requests, kept per project and key for replay-safe retries.
#[async_trait]
pub trait Idempotency: Send + Sync {
    /// Claims `key` for a request whose body hashes to `request_hash`. A claim older
    /// than `lease` without completion is considered abandoned and can be taken over.
    async fn begin(
        &self,
        project: ProjectId,
        key: &str,
        request_hash: &str,
        lease: chrono::Duration,
        ttl: chrono::Duration,
    ) -> StoreResult<IdempotencyBegin>;
    /// Stores the response of a claimed key; `false` when the claim is no longer this
    /// request's (its lease ran out and a retry took the key over): nothing is stored.
    async fn complete(
        &self,
        project: ProjectId,
        key: &str,
        claim: Claim,
        response: &StoredResponse,
    ) -> StoreResult<bool>;
    /// Releases a claim whose request failed, so a retry can run, with this request's
    /// body or another; a retry of the same request keeps its first start. Nothing
    /// happens when the claim is no longer this request's.
    async fn abort(&self, project: ProjectId, key: &str, claim: Claim) -> StoreResult<()>;
    /// Deletes expired entries; returns how many.
    async fn purge_expired(&self) -> StoreResult<u64>;
}

/// A whole backend.
#[async_trait]
pub trait Store: Catalog + Records + Snapshots + Idempotency + ReadinessCheck {
    /// `sqlite` or `postgres`.
    fn backend(&self) -> &'static str;
    /// Applies pending migrations.
    async fn migrate(&self) -> StoreResult<()>;
    /// Waits for in-flight statements and closes every connection.
    async fn close(&self);
}

/// Opens the backend named by the URL's scheme (`sqlite:` or `postgres:`/`postgresql:`),
/// without migrating.
pub async fn connect(url: &str) -> StoreResult<Arc<dyn Store>> {
    if url.starts_with("sqlite:") {
        Ok(Arc::new(sqlite::SqliteStore::connect(url).await?))
    } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
        Ok(Arc::new(postgres::PostgresStore::connect(url).await?))
    } else {
        Err(StoreError::Config(format!(
            "unsupported database URL \"{}\": expected sqlite://PATH or postgres://USER@HOST/DB",
            redact_url(url)
        )))
    }
}

pub use quiver_common::redact::redact_url;

/// Deduplicates a batch by id, keeping the last occurrence, in first-seen order.
pub(crate) fn last_write_wins(records: &[RecordWrite]) -> Vec<&RecordWrite> {
    let mut position = std::collections::HashMap::with_capacity(records.len());
    let mut out: Vec<&RecordWrite> = Vec::with_capacity(records.len());
    for record in records {
        match position.get(record.id.as_str()) {
            Some(&i) => out[i] = record,
            None => {
                position.insert(record.id.as_str(), out.len());
                out.push(record);
            }
        }
    }
    out
}

/// Merges a metadata patch into metadata: keys set, `null` removes.
pub(crate) fn merge_metadata(target: &mut Metadata, patch: &Metadata) {
    for (key, value) in patch {
        if value.is_null() {
            target.remove(key);
        } else {
            target.insert(key.clone(), value.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_ids_in_a_batch_keep_the_last_write() {
        let w = |id: &str, x: f32| RecordWrite {
            id: id.into(),
            vector: vec![x],
            metadata: Metadata::new(),
            content: None,
        };
        let batch = [w("a", 1.0), w("b", 2.0), w("a", 3.0)];
        let kept = last_write_wins(&batch);
        assert_eq!(kept.len(), 2);
        assert_eq!((kept[0].id.as_str(), kept[0].vector[0]), ("a", 3.0));
        assert_eq!(kept[1].id, "b");
    }
}
