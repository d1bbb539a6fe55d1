//! Writes to a project's records that the vector, document and query APIs share:
//! each is one transaction in the records store, then reaches this pod's index and,
//! by a change notice, every other pod's.
//!
//! Each runs in a task of its own. hyper drops a handler's future when its client
//! goes away (a timeout, a closed connection), and a write cut between its commit and
//! the index update would be durable, yet missing from this pod's index and unknown
//! to the other pods until the namespace's next write.

use std::sync::Arc;

use chrono::Utc;
use quiver_common::ApiError;
use quiver_common::bus::Notice;
use quiver_common::domain::Plan;
use quiver_engine::Filter;
use quiver_store::{Change, Record, RecordPatch, RecordWrite, WriteOutcome};

use crate::DataPlane;
use crate::auth::Principal;

/// Inserts or replaces records, all or none, after checking the plan's caps.
pub(crate) async fn upsert(
    state: &DataPlane,
    principal: &Principal,
    plan: &Plan,
    namespace: &str,
    records: Vec<RecordWrite>,
) -> Result<WriteOutcome, ApiError> {
    let (owned, principal, plan, namespace) = (state.clone(), principal.clone(), plan.clone(), namespace.to_owned());
    detached(state, async move {
        upsert_now(&owned, &principal, &plan, &namespace, records).await
    })
    .await
}

async fn upsert_now(
    state: &DataPlane,
    principal: &Principal,
    plan: &Plan,
    namespace: &str,
    records: Vec<RecordWrite>,
) -> Result<WriteOutcome, ApiError> {
    // The plan's caps are held inside the write's transaction, so concurrent writes
    // cannot pass them together.
    let caps = quiver_store::Caps {
        plan: plan.name.clone(),
        namespaces: u64::from(plan.max_namespaces),
        vectors: plan.max_vectors,
    };
    let outcome = state
        .store
        .upsert_within(principal.project_id, namespace, &records, &caps)
        .await?;
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
    Ok(outcome)
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

/// Tombstones records by id, all in one transaction; with `still_matching`, only
/// those whose metadata passes it when the write commits. Returns how many it
/// tombstoned and the namespace's seq after the write; `None` when the namespace does
/// not exist.
pub(crate) async fn delete(
    state: &DataPlane,
    principal: &Principal,
    namespace: &str,
    ids: &[String],
    still_matching: Option<Arc<Filter>>,
) -> Result<Option<(u64, i64)>, ApiError> {
    let (owned, principal, namespace, ids) = (state.clone(), principal.clone(), namespace.to_owned(), ids.to_vec());
    detached(state, async move {
        delete_now(&owned, &principal, &namespace, ids, still_matching).await
    })
    .await
}

async fn delete_now(
    state: &DataPlane,
    principal: &Principal,
    namespace: &str,
    ids: Vec<String>,
    still_matching: Option<Arc<Filter>>,
) -> Result<Option<(u64, i64)>, ApiError> {
    let project = principal.project_id;
    let (outcome, deleted) = match still_matching {
        None => {
            let Some(outcome) = state.store.delete(project, namespace, &ids).await? else {
                return Ok(None);
            };
            (outcome, ids)
        }
        Some(filter) => {
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
