//! Writes to a project's records that the vector, document and query APIs share:
//! each is one transaction in the records store, then reaches this pod's index and,
//! by a change notice, every other pod's.
//!
//! Each runs in a task of its own. hyper drops a handler's future when its client
//! goes away (a timeout, a closed connection), and a write cut between its commit and
//! the index update would be durable, yet missing from this pod's index and unknown
//! to the other pods until the namespace's next write.

use std::cell::Cell;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use quiver_common::ApiError;
use quiver_common::bus::Notice;
use quiver_common::domain::{Plan, ProjectId};
use quiver_engine::Filter;
use quiver_store::{Change, Record, RecordPatch, RecordWrite, Seen, WriteOutcome};
use sha2::{Digest as _, Sha256};
use uuid::Uuid;

use crate::DataPlane;
use crate::auth::Principal;

tokio::task_local! {
    /// The ids a request with an idempotency key makes, while it runs.
    static KEYED_IDS: KeyedIds;
}

/// Ids for the records a request with an idempotency key creates without ids of
/// their own. A request's pod can die after its write commits but before its answer
/// is stored; the client's retry then takes over the key and runs the request again.
/// Its ids come from the project, the key and the time the request first started
/// under the key (which a takeover keeps), so the run again makes the same ids and
/// writes the same records again instead of new ones.
pub(crate) struct KeyedIds {
    seed: [u8; 32],
    millis: u64,
    made: Cell<u32>,
}

impl KeyedIds {
    pub(crate) fn new(project: ProjectId, key: &str, first_started: DateTime<Utc>) -> Self {
        let seed = Sha256::new()
            .chain_update(project.0.as_bytes())
            .chain_update(key.as_bytes())
            .finalize()
            .into();
        KeyedIds {
            seed,
            millis: u64::try_from(first_started.timestamp_millis()).unwrap_or(0),
            made: Cell::new(0),
        }
    }

    /// Runs `request` with these ids for [`new_id`].
    pub(crate) async fn scope<F: Future>(self, request: F) -> F::Output {
        KEYED_IDS.scope(self, request).await
    }

    /// A UUIDv7 of the request's first start, whose next 18 bits count the ids made
    /// (so a request's ids sort in the order it made them, as `now_v7`'s do) and whose
    /// last 56 come from the seed.
    fn next(&self) -> Uuid {
        let n = self.made.get();
        self.made.set(n.wrapping_add(1));
        let hash = Sha256::new()
            .chain_update(self.seed)
            .chain_update(n.to_le_bytes())
            .finalize();
        let mut bytes = [0u8; 10];
        // The builder keeps 4 bits of the first byte and 6 of the third (the version
        // and variant take the rest): 18 bits of count, the order of the ids.
        bytes[0] = ((n >> 14) & 0x0f) as u8;
        bytes[1] = (n >> 6) as u8;
        bytes[2] = (n & 0x3f) as u8;
        bytes[3..].copy_from_slice(&hash[..7]);
        uuid::Builder::from_unix_timestamp_millis(self.millis, &bytes).into_uuid()
    }
}

/// A new record's id: a UUIDv7, so ids sort by creation. Within a request with an
/// idempotency key, the same ids on every run of the request ([`KeyedIds`]).
pub(crate) fn new_id() -> String {
    KEYED_IDS
        .try_with(KeyedIds::next)
        .unwrap_or_else(|_| Uuid::now_v7())
        .to_string()
}

/// Inserts or replaces records, all or none, after checking the plan's caps. With
/// `embedding_model` (the model that made some of the vectors from text), the write
/// also holds the namespace to that model: it becomes the namespace's when it has
/// none, and a namespace of another model refuses the write (a 400).
pub(crate) async fn upsert(
    state: &DataPlane,
    principal: &Principal,
    plan: &Plan,
    namespace: &str,
    records: Vec<RecordWrite>,
    embedding_model: Option<&str>,
) -> Result<WriteOutcome, ApiError> {
    let outcome = upsert_unchanged(state, principal, plan, namespace, records, Vec::new(), embedding_model).await?;
    Ok(outcome.expect("a write with nothing seen always goes ahead"))
}

/// [`upsert`] of records computed from ones read earlier, only if every record `seen`
/// is still as it was read; `None`, and nothing written, when one has changed since.
/// With nothing `seen`, the write always goes ahead.
pub(crate) async fn upsert_unchanged(
    state: &DataPlane,
    principal: &Principal,
    plan: &Plan,
    namespace: &str,
    records: Vec<RecordWrite>,
    seen: Vec<Seen>,
    embedding_model: Option<&str>,
) -> Result<Option<WriteOutcome>, ApiError> {
    let (owned, principal, namespace) = (state.clone(), principal.clone(), namespace.to_owned());
    // The plan's caps (and the namespace's model) are held inside the write's
    // transaction, so concurrent writes cannot pass them together.
    let caps = quiver_store::Caps {
        plan: plan.name.clone(),
        namespaces: u64::from(plan.max_namespaces),
        vectors: plan.max_vectors,
        embedding_model: embedding_model.map(str::to_owned),
    };
    detached(state, async move {
        upsert_now(&owned, &principal, &namespace, records, seen, &caps).await
    })
    .await
}

async fn upsert_now(
    state: &DataPlane,
    principal: &Principal,
    namespace: &str,
    records: Vec<RecordWrite>,
    seen: Vec<Seen>,
    caps: &quiver_store::Caps,
) -> Result<Option<WriteOutcome>, ApiError> {
    let project = principal.project_id;
    let outcome = if seen.is_empty() {
        state.store.upsert_within(project, namespace, &records, caps).await?
    } else {
        match state
            .store
            .upsert_unchanged(project, namespace, &records, &seen, caps)
            .await?
        {
            Some(outcome) => outcome,
            None => return Ok(None),
        }
    };
    let now = Utc::now();
    let changes = records
        .into_iter()
        .map(|write| {
            Change::Upsert(Record {
                id: write.id,
                vector: write.vector,
                metadata: write.metadata,
                content: write.content,
                seq: outcome.state.seq,
                created_at: now,
                updated_at: now,
            })
        })
        .collect();
    committed(state, principal, namespace, outcome, changes).await;
    Ok(Some(outcome))
}

/// Applies a patch to one live record; `None` when there is no such record.
pub(crate) async fn patch(
    state: &DataPlane,
    principal: &Principal,
    namespace: &str,
    id: &str,
    patch: &RecordPatch,
) -> Result<Option<(WriteOutcome, Record)>, ApiError> {
    let (owned, principal, namespace) = (state.clone(), principal.clone(), namespace.to_owned());
    let (id, patch) = (id.to_owned(), patch.clone());
    detached(state, async move {
        patch_now(&owned, &principal, &namespace, &id, &patch).await
    })
    .await
}

async fn patch_now(
    state: &DataPlane,
    principal: &Principal,
    namespace: &str,
    id: &str,
    patch: &RecordPatch,
) -> Result<Option<(WriteOutcome, Record)>, ApiError> {
    let Some((outcome, record)) = state.store.update(principal.project_id, namespace, id, patch).await? else {
        return Ok(None);
    };
    committed(
        state,
        principal,
        namespace,
        outcome,
        vec![Change::Upsert(record.clone())],
    )
    .await;
    Ok(Some((outcome, record)))
}

/// Which records a delete tombstones.
pub(crate) enum DeleteIf {
    /// Every one of these ids that is live.
    Live(Vec<String>),
    /// Those of these ids whose metadata passes the filter when the write commits.
    StillMatching(Vec<String>, Arc<Filter>),
    /// All of these, only if each is still as it was seen; none otherwise.
    Unchanged(Vec<Seen>),
}

/// Tombstones records, all in one transaction, as `which` says. Returns how many it
/// tombstoned and the namespace's seq after the write; `None` when the namespace does
/// not exist or, with [`DeleteIf::Unchanged`], a record has changed.
pub(crate) async fn delete(
    state: &DataPlane,
    principal: &Principal,
    namespace: &str,
    which: DeleteIf,
) -> Result<Option<(u64, i64)>, ApiError> {
    let (owned, principal, namespace) = (state.clone(), principal.clone(), namespace.to_owned());
    detached(
        state,
        async move { delete_now(&owned, &principal, &namespace, which).await },
    )
    .await
}

async fn delete_now(
    state: &DataPlane,
    principal: &Principal,
    namespace: &str,
    which: DeleteIf,
) -> Result<Option<(u64, i64)>, ApiError> {
    let project = principal.project_id;
    let (outcome, deleted) = match which {
        DeleteIf::Live(ids) => {
            let Some(outcome) = state.store.delete(project, namespace, &ids).await? else {
                return Ok(None);
            };
            (outcome, ids)
        }
        DeleteIf::Unchanged(seen) => {
            let Some(outcome) = state.store.delete_unchanged(project, namespace, &seen).await? else {
                return Ok(None);
            };
            (outcome, seen.into_iter().map(|s| s.id).collect())
        }
        DeleteIf::StillMatching(ids, filter) => {
            let matches = move |metadata: &quiver_store::Metadata| filter.matches(metadata);
            let Some(done) = state.store.delete_matching(project, namespace, &ids, &matches).await? else {
                return Ok(None);
            };
            done
        }
    };
    if outcome.affected > 0 {
        let changes = deleted
            .into_iter()
            .map(|id| Change::Delete {
                id,
                seq: outcome.state.seq,
            })
            .collect();
        committed(state, principal, namespace, outcome, changes).await;
    }
    Ok(Some((outcome.affected, outcome.state.seq)))
}

/// Runs a write to its end in a task of its own, whatever becomes of the caller.
async fn detached<T: Send + 'static>(
    state: &DataPlane,
    write: impl Future<Output = Result<T, ApiError>> + Send + 'static,
) -> Result<T, ApiError> {
    crate::run_tracked(&state.writes, write)
        .await
        .map_err(|err| ApiError::Internal(anyhow::anyhow!("a write task failed: {err}")))?
}

/// After a write commits: bring this pod's index along and tell the other pods.
async fn committed(
    state: &DataPlane,
    principal: &Principal,
    namespace: &str,
    outcome: WriteOutcome,
    changes: Vec<Change>,
) {
    if let Err(err) = state
        .indexes
        .committed(principal.project_id, namespace, outcome.state, changes)
        .await
    {
        // The write is durable; the index catches up from the store on its next use.
        tracing::warn!(error = %err, namespace, "applying a committed write to the index failed");
        state.indexes.forget_namespace(principal.project_id, namespace).await;
    }
    let notice = Notice::NamespaceChanged {
        project_id: principal.project_id,
        namespace: namespace.to_owned(),
        epoch: outcome.state.epoch,
        seq: outcome.state.seq,
    };
    if let Err(err) = state.bus.publish(notice).await {
        tracing::warn!(error = %err, "publishing a namespace change failed; other pods catch up on strong reads");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn made(project: ProjectId, key: &str, at: DateTime<Utc>, n: usize) -> Vec<String> {
        let ids = KeyedIds::new(project, key, at);
        (0..n).map(|_| ids.next().to_string()).collect()
    }

    #[test]
    fn keyed_ids_are_the_same_on_every_run_and_sort_in_the_order_made() {
        let project = ProjectId(Uuid::now_v7());
        let at = Utc::now();
        let ids = made(project, "k", at, 1 << 18);
        assert_eq!(ids[..1000], made(project, "k", at, 1000)[..]);
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "sorted as made, for every count the 18 bits hold"
        );
        let unique: std::collections::HashSet<&String> = ids.iter().collect();
        assert_eq!(unique.len(), ids.len());
        for id in &ids[..3] {
            let uuid = Uuid::parse_str(id).expect("a UUID");
            assert_eq!(uuid.get_version_num(), 7);
            let (seconds, nanos) = uuid.get_timestamp().expect("v7 has a time").to_unix();
            assert_eq!(
                seconds as i64 * 1000 + i64::from(nanos / 1_000_000),
                at.timestamp_millis()
            );
        }
        assert_ne!(made(project, "other", at, 1), made(project, "k", at, 1));
        assert_ne!(made(ProjectId(Uuid::now_v7()), "k", at, 1), made(project, "k", at, 1));
    }

    #[tokio::test]
    async fn new_ids_come_from_the_key_only_within_its_request() {
        let project = ProjectId(Uuid::now_v7());
        let at = Utc::now() - chrono::Duration::hours(1);
        let within = KeyedIds::new(project, "k", at)
            .scope(async { (new_id(), new_id()) })
            .await;
        assert_eq!(vec![within.0.clone(), within.1], made(project, "k", at, 2));
        let outside = new_id();
        assert!(outside > within.0, "a plain id is of now: {outside}");
    }
}
