//! The conformance suite: one set of behaviours every [`Store`] backend must have.
//!
//! [`store_conformance_suite!`](crate::store_conformance_suite) expands to one
//! `#[tokio::test]` per function here, given an expression that yields a
//! [`StoreFixture`] (a fresh, migrated store that stays alive while the test runs).

use std::sync::Arc;

use chrono::{Duration, Utc};
use quiver_common::domain::{Metric, ProjectId, Role, UserId};
use serde_json::json;

use crate::{
    Change, Claim, IdempotencyBegin, Metadata, MetadataPatch, NewApiKey, NewProject, Project, Record, RecordPatch,
    RecordWrite, SNAPSHOT_CHUNK, Seen, Snapshot, Store, StoreError, StoredResponse,
};

/// A fresh, migrated store, with whatever keeps it alive (a temp dir, a database).
pub trait StoreFixture: Send + Sync {
    fn store(&self) -> Arc<dyn Store>;
}

/// Expands to the whole suite for one backend: `store_conformance_suite!(make_fixture())`
/// where `make_fixture()` is a future of a [`StoreFixture`].
#[macro_export]
macro_rules! store_conformance_suite {
    ($fixture:expr) => {
        $crate::store_conformance_suite!(@tests $fixture;
            users_are_unique_by_email_and_found_by_email_or_id,
            the_plan_catalog_is_seeded_cheapest_first,
            projects_are_listed_by_owner_and_change_plan,
            projects_refuse_unknown_plans_owners_and_bad_dimensions,
            deleting_a_project_deletes_everything_it_owns,
            api_keys_are_stored_listed_revoked_and_touched,
            upserts_take_increasing_seqs_and_replace_records,
            capped_writes_hold_the_plans_caps_even_when_concurrent,
            a_batch_that_repeats_an_id_keeps_the_last_write,
            a_write_to_an_unknown_project_writes_nothing,
            updates_merge_metadata_and_may_replace_vector_and_content,
            updates_of_missing_records_change_nothing,
            deletes_leave_tombstones_that_changes_since_replays,
            deletes_by_filter_keep_records_changed_to_fail_it,
            writes_from_what_was_seen_go_ahead_only_if_it_is_unchanged,
            changes_since_pages_in_seq_order,
            snapshots_replace_older_ones_and_purge_the_tombstones_they_cover,
            snapshots_of_a_gone_or_recreated_namespace_are_refused_and_deleted_with_it,
            snapshots_saved_while_records_are_written_keep_the_horizon_at_the_stored_seq,
            list_ids_pages_in_byte_order_with_a_prefix,
            scans_page_through_live_records_in_id_order,
            namespaces_are_listed_with_live_counts_and_usage_adds_up,
            a_deleted_namespace_loses_its_records_and_comes_back_with_a_new_epoch,
            projects_never_see_each_others_records,
            concurrent_writers_get_distinct_seqs_in_commit_order_and_lose_nothing,
            concurrent_read_modify_writes_of_one_record_lose_no_update,
            a_large_batch_is_written_whole,
            a_namespace_keeps_the_embedding_model_of_its_first_embedded_write,
            idempotency_claims_replays_and_refuses,
            abandoned_or_expired_idempotency_claims_can_be_taken_over,
            a_claim_taken_over_is_no_longer_its_first_requests,
            the_store_reports_ready,
        );
    };
    (@tests $fixture:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let fixture = $fixture.await;
                $crate::conformance::$name($crate::conformance::StoreFixture::store(&fixture)).await;
            }
        )*
    };
}

async fn user(store: &dyn Store) -> UserId {
    let email = format!("{}@example.com", uuid::Uuid::new_v4());
    store
        .create_user(&email, "$argon2id$v=19$stub")
        .await
        .expect("user is created")
        .id
}

async fn project(store: &dyn Store) -> Project {
    let owner = user(store).await;
    store
        .create_project(NewProject {
            owner_id: owner,
            name: "test".into(),
            dimension: 3,
            metric: Metric::Cosine,
            plan_id: "starter".into(),
        })
        .await
        .expect("project is created")
}

fn write(id: &str, x: f32, meta: serde_json::Value) -> RecordWrite {
    RecordWrite {
        id: id.into(),
        vector: vec![x, x + 0.5, -x],
        metadata: match meta {
            serde_json::Value::Object(map) => map,
            other => panic!("metadata must be an object, got {other}"),
        },
        content: None,
    }
}

fn started(begun: IdempotencyBegin) -> bool {
    matches!(begun, IdempotencyBegin::Started { .. })
}

fn ids(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

pub async fn users_are_unique_by_email_and_found_by_email_or_id(store: Arc<dyn Store>) {
    let created = store
        .create_user("ada@example.com", "hash-1")
        .await
        .expect("first signup");
    assert_eq!(created.email, "ada@example.com");
    assert_eq!(created.password_hash, "hash-1");

    let duplicate = store.create_user("ada@example.com", "hash-2").await;
    assert!(matches!(duplicate, Err(StoreError::Conflict(_))), "{duplicate:?}");

    let by_email = store
        .user_by_email("ada@example.com")
        .await
        .expect("query")
        .expect("found");
    assert_eq!(by_email, created);
    let by_id = store.user(created.id).await.expect("query").expect("found");
    assert_eq!(by_id, created);
    assert!(store.user_by_email("bob@example.com").await.expect("query").is_none());
    assert!(store.user(UserId::new()).await.expect("query").is_none());

    // A log out raises the account's session epoch, and only that account's.
    assert_eq!(created.session_epoch, 0);
    let other = store.create_user("bob@example.com", "hash-3").await.expect("signup");
    assert!(store.end_sessions(created.id).await.expect("log out"));
    assert!(store.end_sessions(created.id).await.expect("log out again"));
    assert_eq!(
        store
            .user(created.id)
            .await
            .expect("query")
            .expect("found")
            .session_epoch,
        2
    );
    assert_eq!(
        store.user(other.id).await.expect("query").expect("found").session_epoch,
        0
    );
    assert!(!store.end_sessions(UserId::new()).await.expect("no account"));
}

pub async fn the_plan_catalog_is_seeded_cheapest_first(store: Arc<dyn Store>) {
    let plans = store.plans().await.expect("plans");
    let summary: Vec<(&str, u32, u32)> = plans
        .iter()
        .map(|p| (p.id.as_str(), p.queries_per_minute, p.documents_per_minute))
        .collect();
    assert_eq!(
        summary,
        [
            ("starter", 30, 100),
            ("developer", 300, 1_000),
            ("business", 3_000, 10_000),
            ("business_plus", 10_000, 50_000)
        ]
    );
    assert_eq!(
        store.plan("business").await.expect("query").expect("exists").name,
        "Business"
    );
    assert!(store.plan("platinum").await.expect("query").is_none());
}

pub async fn projects_are_listed_by_owner_and_change_plan(store: Arc<dyn Store>) {
    let first = project(store.as_ref()).await;
    let second = store
        .create_project(NewProject {
            owner_id: first.owner_id,
            name: "second".into(),
            dimension: 4096,
            metric: Metric::DotProduct,
            plan_id: "developer".into(),
        })
        .await
        .expect("second project");
    let other = project(store.as_ref()).await;

    let mine = store.projects_of(first.owner_id).await.expect("list");
    assert_eq!(mine, vec![first.clone(), second.clone()]);
    assert_eq!(store.project(second.id).await.expect("get"), Some(second.clone()));
    let all = store.all_projects().await.expect("all");
    assert!(all.contains(&first) && all.contains(&other));

    let changed = store
        .set_project_plan(first.id, "business")
        .await
        .expect("replan")
        .expect("exists");
    assert_eq!(changed.plan_id, "business");
    assert!(changed.updated_at >= first.updated_at);
    assert_eq!(
        store.project(first.id).await.expect("get").expect("exists").plan_id,
        "business"
    );
    assert!(
        store
            .set_project_plan(ProjectId::new(), "business")
            .await
            .expect("query")
            .is_none()
    );
}

pub async fn projects_refuse_unknown_plans_owners_and_bad_dimensions(store: Arc<dyn Store>) {
    let owner = user(store.as_ref()).await;
    let new = |owner_id, dimension, plan: &str| NewProject {
        owner_id,
        name: "p".into(),
        dimension,
        metric: Metric::Euclidean,
        plan_id: plan.into(),
    };
    for (attempt, what) in [
        (new(owner, 8, "platinum"), "unknown plan"),
        (new(UserId::new(), 8, "starter"), "unknown owner"),
        (new(owner, 0, "starter"), "dimension 0"),
        (new(owner, 4097, "starter"), "dimension 4097"),
    ] {
        let result = store.create_project(attempt).await;
        assert!(matches!(result, Err(StoreError::Invalid(_))), "{what}: {result:?}");
    }
    let project = project(store.as_ref()).await;
    let replan = store.set_project_plan(project.id, "platinum").await;
    assert!(matches!(replan, Err(StoreError::Invalid(_))), "{replan:?}");
    assert!(store.projects_of(owner).await.expect("list").is_empty());
}

pub async fn deleting_a_project_deletes_everything_it_owns(store: Arc<dyn Store>) {
    let project = project(store.as_ref()).await;
    let keep = self::project(store.as_ref()).await;
    for p in [&project, &keep] {
        store
            .create_api_key(NewApiKey {
                id: format!("k{}", p.id.0.simple()),
                project_id: p.id,
                label: "l".into(),
                role: Role::Admin,
                secret_hash: "h".into(),
                expires_at: None,
            })
            .await
            .expect("key");
        store
            .upsert(p.id, "ns", &[write("a", 1.0, json!({}))])
            .await
            .expect("upsert");
        let begun = store
            .begin(p.id, "idem", "hash", Duration::seconds(30), Duration::hours(24))
            .await
            .expect("begin");
        assert!(started(begun));
    }

    assert!(store.delete_project(project.id).await.expect("delete"));
    assert!(
        !store
            .delete_project(project.id)
            .await
            .expect("second delete is a no-op")
    );
    assert!(store.project(project.id).await.expect("get").is_none());
    assert!(store.api_keys_of(project.id).await.expect("keys").is_empty());
    assert!(store.namespaces(project.id).await.expect("namespaces").is_empty());
    assert!(
        store
            .fetch(project.id, "ns", &ids(&["a"]))
            .await
            .expect("fetch")
            .is_empty()
    );
    assert!(
        store
            .changes_since(project.id, "ns", 0, 10, 0)
            .await
            .expect("changes")
            .is_empty()
    );

    // The other project is untouched.
    assert_eq!(store.api_keys_of(keep.id).await.expect("keys").len(), 1);
    assert_eq!(store.fetch(keep.id, "ns", &ids(&["a"])).await.expect("fetch").len(), 1);
    let again = store
        .begin(keep.id, "idem", "hash", Duration::seconds(30), Duration::hours(24))
        .await
        .expect("begin");
    assert_eq!(again, IdempotencyBegin::InFlight);
}

pub async fn api_keys_are_stored_listed_revoked_and_touched(store: Arc<dyn Store>) {
    let project = project(store.as_ref()).await;
    let other = self::project(store.as_ref()).await;
    let expires = Utc::now() + Duration::days(30);
    let new = |id: &str, role| NewApiKey {
        id: id.into(),
        project_id: project.id,
        label: format!("label-{id}"),
        role,
        secret_hash: format!("hash-{id}"),
        expires_at: Some(expires),
    };
    let k1 = store.create_api_key(new("key1", Role::AppReadonly)).await.expect("k1");
    let k2 = store.create_api_key(new("key2", Role::Admin)).await.expect("k2");
    assert_eq!(
        (k1.role, k1.label.as_str(), k1.secret_hash.as_str()),
        (Role::AppReadonly, "label-key1", "hash-key1")
    );
    assert_eq!(
        k1.expires_at.map(|t| t.timestamp_millis()),
        Some(expires.timestamp_millis())
    );
    assert!(k1.last_used_at.is_none() && k1.revoked_at.is_none());

    let duplicate = store.create_api_key(new("key1", Role::Admin)).await;
    assert!(matches!(duplicate, Err(StoreError::Conflict(_))), "{duplicate:?}");

    assert_eq!(
        store.api_keys_of(project.id).await.expect("list"),
        vec![k1.clone(), k2.clone()]
    );
    assert_eq!(store.api_key("key2").await.expect("get"), Some(k2));
    assert!(store.api_key("nope").await.expect("get").is_none());

    let used = Utc::now();
    store.touch_api_key("key1", used).await.expect("touch");
    let touched = store.api_key("key1").await.expect("get").expect("exists");
    assert_eq!(
        touched.last_used_at.map(|t| t.timestamp_millis()),
        Some(used.timestamp_millis())
    );

    assert!(
        !store
            .revoke_api_key(other.id, "key1")
            .await
            .expect("revoke via another project")
    );
    assert!(store.revoke_api_key(project.id, "key1").await.expect("revoke"));
    assert!(!store.revoke_api_key(project.id, "key1").await.expect("revoke twice"));
    assert!(
        store
            .api_key("key1")
            .await
            .expect("get")
            .expect("kept")
            .revoked_at
            .is_some()
    );
}

pub async fn upserts_take_increasing_seqs_and_replace_records(store: Arc<dyn Store>) {
    let p = project(store.as_ref()).await.id;
    let first = store
        .upsert(p, "ns", &[write("a", 1.0, json!({"k": 1})), write("b", 2.0, json!({}))])
        .await
        .expect("first");
    assert_eq!((first.state.seq, first.affected), (1, 2));

    let mut with_content = write("a", 3.0, json!({"k": 2, "tags": ["x"]}));
    with_content.content = Some("hello".into());
    let second = store.upsert(p, "ns", &[with_content.clone()]).await.expect("second");
    assert_eq!(second.state.seq, 2);
    assert_eq!(second.state.epoch, first.state.epoch);

    let fetched = store.fetch(p, "ns", &ids(&["b", "missing", "a"])).await.expect("fetch");
    assert_eq!(fetched.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), ["b", "a"]);
    let a = &fetched[1];
    assert_eq!(a.vector, with_content.vector);
    assert_eq!(a.metadata, with_content.metadata);
    assert_eq!(a.content.as_deref(), Some("hello"));
    assert_eq!(a.seq, 2);
    assert!(a.updated_at >= a.created_at);
    assert_eq!(fetched[0].seq, 1);
    assert_eq!(store.namespace(p, "ns").await.expect("state"), Some(second.state));
    assert!(store.namespace(p, "other").await.expect("state").is_none());
}

pub async fn a_batch_that_repeats_an_id_keeps_the_last_write(store: Arc<dyn Store>) {
    let p = project(store.as_ref()).await.id;
    let outcome = store
        .upsert(
            p,
            "ns",
            &[write("a", 1.0, json!({"v": 1})), write("a", 2.0, json!({"v": 2}))],
        )
        .await
        .expect("upsert");
    assert_eq!(outcome.affected, 1);
    let fetched = store.fetch(p, "ns", &ids(&["a"])).await.expect("fetch");
    assert_eq!(fetched[0].metadata["v"], 2);
    assert_eq!(store.namespaces(p).await.expect("list")[0].count, 1);
}

pub async fn a_write_to_an_unknown_project_writes_nothing(store: Arc<dyn Store>) {
    let ghost = ProjectId::new();
    let result = store.upsert(ghost, "ns", &[write("a", 1.0, json!({}))]).await;
    assert!(matches!(result, Err(StoreError::Invalid(_))), "{result:?}");
    assert!(store.namespace(ghost, "ns").await.expect("state").is_none());
    assert!(
        store
            .changes_since(ghost, "ns", 0, 10, 0)
            .await
            .expect("changes")
            .is_empty()
    );
}

pub async fn updates_merge_metadata_and_may_replace_vector_and_content(store: Arc<dyn Store>) {
    let p = project(store.as_ref()).await.id;
    store
        .upsert(
            p,
            "ns",
            &[write(
                "a",
                1.0,
                json!({"name": "Widget A", "category": "hardware", "old": true}),
            )],
        )
        .await
        .expect("upsert");
    let patch = RecordPatch {
        metadata: Some(MetadataPatch::Merge(
            json!({"category": "premium-hardware", "updated_at": "2025-01-15", "old": null})
                .as_object()
                .cloned()
                .unwrap_or_default(),
        )),
        ..RecordPatch::default()
    };
    let (outcome, record) = store
        .update(p, "ns", "a", &patch)
        .await
        .expect("update")
        .expect("exists");
    assert_eq!(outcome.state.seq, 2);
    assert_eq!(
        serde_json::Value::Object(record.metadata.clone()),
        json!({"name": "Widget A", "category": "premium-hardware", "updated_at": "2025-01-15"})
    );
    assert_eq!(record.vector, vec![1.0, 1.5, -1.0], "values are kept when not given");

    let replace = RecordPatch {
        vector: Some(vec![9.0, 8.0, 7.0]),
        content: Some("new text".into()),
        ..RecordPatch::default()
    };
    store
        .update(p, "ns", "a", &replace)
        .await
        .expect("update")
        .expect("exists");
    let stored = store.fetch(p, "ns", &ids(&["a"])).await.expect("fetch").remove(0);
    assert_eq!(stored.vector, vec![9.0, 8.0, 7.0]);
    assert_eq!(stored.content.as_deref(), Some("new text"));
    assert_eq!(stored.metadata, record.metadata);
    assert_eq!(stored.seq, 3);

    let replace_metadata = RecordPatch {
        metadata: Some(MetadataPatch::Replace(
            json!({"source": "blog", "updated": true})
                .as_object()
                .cloned()
                .unwrap_or_default(),
        )),
        ..RecordPatch::default()
    };
    let (_, record) = store
        .update(p, "ns", "a", &replace_metadata)
        .await
        .expect("update")
        .expect("exists");
    assert_eq!(
        serde_json::Value::Object(record.metadata),
        json!({"source": "blog", "updated": true}),
        "a replacing patch drops the keys it does not name"
    );
    let stored = store.fetch(p, "ns", &ids(&["a"])).await.expect("fetch").remove(0);
    assert_eq!(
        serde_json::Value::Object(stored.metadata),
        json!({"source": "blog", "updated": true})
    );
    assert_eq!(
        stored.content.as_deref(),
        Some("new text"),
        "content is kept when not given"
    );

    // A merge that would take the metadata past its limit changes nothing.
    let grow = |key: &str| RecordPatch {
        metadata: Some(MetadataPatch::Merge(
            json!({key: "x".repeat(30)}).as_object().cloned().unwrap_or_default(),
        )),
        metadata_limit: Some(80),
        ..RecordPatch::default()
    };
    let (outcome, _) = store
        .update(p, "ns", "a", &grow("first"))
        .await
        .expect("within the limit")
        .expect("exists");
    let refused = store.update(p, "ns", "a", &grow("second")).await;
    assert!(
        matches!(refused, Err(StoreError::Invalid(ref message)) if message.contains("limit is 80")),
        "{refused:?}"
    );
    let stored = store.fetch(p, "ns", &ids(&["a"])).await.expect("fetch").remove(0);
    assert!(!stored.metadata.contains_key("second"));
    assert_eq!(stored.seq, outcome.state.seq, "no seq was spent");
    let ns = store.namespace(p, "ns").await.expect("namespace").expect("exists");
    assert_eq!(ns.seq, outcome.state.seq);
}

pub async fn updates_of_missing_records_change_nothing(store: Arc<dyn Store>) {
    let p = project(store.as_ref()).await.id;
    let patch = RecordPatch::default();
    assert!(store.update(p, "nowhere", "a", &patch).await.expect("update").is_none());
    assert!(store.namespace(p, "nowhere").await.expect("state").is_none());

    store
        .upsert(p, "ns", &[write("a", 1.0, json!({}))])
        .await
        .expect("upsert");
    assert!(store.update(p, "ns", "b", &patch).await.expect("update").is_none());
    assert_eq!(
        store.namespace(p, "ns").await.expect("state").expect("exists").seq,
        1,
        "no seq spent"
    );
}

pub async fn deletes_leave_tombstones_that_changes_since_replays(store: Arc<dyn Store>) {
    let p = project(store.as_ref()).await.id;
    assert!(
        store.delete(p, "ns", &ids(&["a"])).await.expect("delete").is_none(),
        "unknown namespace"
    );
    store
        .upsert(
            p,
            "ns",
            &[
                write("a", 1.0, json!({})),
                write("b", 2.0, json!({})),
                write("c", 3.0, json!({})),
            ],
        )
        .await
        .expect("upsert");

    let deleted = store
        .delete(p, "ns", &ids(&["a", "c", "zzz"]))
        .await
        .expect("delete")
        .expect("namespace");
    assert_eq!((deleted.affected, deleted.state.seq), (2, 2));
    let again = store
        .delete(p, "ns", &ids(&["a"]))
        .await
        .expect("delete")
        .expect("namespace");
    assert_eq!((again.affected, again.state.seq), (0, 2), "a no-op spends no seq");

    assert_eq!(
        store.fetch(p, "ns", &ids(&["a", "b", "c"])).await.expect("fetch").len(),
        1
    );
    let changes = store.changes_since(p, "ns", 1, 100, 0).await.expect("changes");
    assert_eq!(
        changes,
        vec![
            Change::Delete { id: "a".into(), seq: 2 },
            Change::Delete { id: "c".into(), seq: 2 }
        ]
    );

    // Writing a tombstoned id revives it.
    store
        .upsert(p, "ns", &[write("a", 4.0, json!({"back": true}))])
        .await
        .expect("revive");
    let revived = store.fetch(p, "ns", &ids(&["a"])).await.expect("fetch");
    assert_eq!(revived.len(), 1);
    assert_eq!(revived[0].metadata["back"], true);
    assert_eq!(store.namespaces(p).await.expect("list")[0].count, 2);
}

/// A delete by filter picks its ids from an index, which may be a moment behind: the
/// store deletes only those whose metadata still passes the filter when it commits.
pub async fn deletes_by_filter_keep_records_changed_to_fail_it(store: Arc<dyn Store>) {
    let p = project(store.as_ref()).await.id;
    let free = |metadata: &Metadata| metadata.get("tier") == Some(&json!("free"));
    assert!(
        store
            .delete_matching(p, "ns", &ids(&["a"]), &free)
            .await
            .expect("delete")
            .is_none(),
        "unknown namespace"
    );
    store
        .upsert(
            p,
            "ns",
            &[
                write("a", 1.0, json!({"tier": "free"})),
                write("b", 2.0, json!({"tier": "free"})),
                write("c", 3.0, json!({"tier": "paid"})),
            ],
        )
        .await
        .expect("upsert");
    // a and b were picked; then b moved to another tier.
    let patch = RecordPatch {
        metadata: Some(MetadataPatch::Merge(
            json!({"tier": "paid"}).as_object().expect("object").clone(),
        )),
        ..RecordPatch::default()
    };
    store.update(p, "ns", "b", &patch).await.expect("update").expect("b");

    let (outcome, deleted) = store
        .delete_matching(p, "ns", &ids(&["a", "b", "zzz"]), &free)
        .await
        .expect("delete")
        .expect("namespace");
    assert_eq!(deleted, ids(&["a"]));
    assert_eq!((outcome.affected, outcome.state.seq), (1, 3));
    let live: Vec<String> = store
        .fetch(p, "ns", &ids(&["a", "b", "c"]))
        .await
        .expect("fetch")
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(live, ids(&["b", "c"]));

    let (outcome, deleted) = store
        .delete_matching(p, "ns", &ids(&["b", "c"]), &free)
        .await
        .expect("delete")
        .expect("namespace");
    assert!(deleted.is_empty());
    assert_eq!((outcome.affected, outcome.state.seq), (0, 3), "a no-op spends no seq");
    assert_eq!(store.namespaces(p).await.expect("list")[0].count, 2);
}

/// A write computed from records read earlier (an NQL UPDATE or DELETE) goes ahead
/// only if none of them was changed or deleted since; otherwise it changes nothing and
/// spends no seq.
pub async fn writes_from_what_was_seen_go_ahead_only_if_it_is_unchanged(store: Arc<dyn Store>) {
    let p = project(store.as_ref()).await.id;
    let caps = crate::Caps {
        plan: "test".into(),
        namespaces: 10,
        vectors: 100,
        embedding_model: None,
    };
    let seen = |records: &[Record]| -> Vec<Seen> {
        records
            .iter()
            .map(|r| Seen {
                id: r.id.clone(),
                seq: r.seq,
            })
            .collect()
    };
    let gone = [Seen { id: "a".into(), seq: 1 }];
    assert!(
        store.delete_unchanged(p, "ns", &gone).await.expect("delete").is_none(),
        "no namespace"
    );
    store
        .upsert(
            p,
            "ns",
            &[
                write("a", 1.0, json!({"v": 1})),
                write("b", 2.0, json!({"v": 1})),
                write("c", 3.0, json!({"v": 1})),
            ],
        )
        .await
        .expect("upsert");
    let read = store.fetch(p, "ns", &ids(&["a", "b", "c"])).await.expect("fetch");
    // Meanwhile another writer changes b and deletes c.
    store
        .upsert(p, "ns", &[write("b", 2.0, json!({"v": 2}))])
        .await
        .expect("upsert b");
    store.delete(p, "ns", &ids(&["c"])).await.expect("delete c");

    let stale_b = [write("a", 1.0, json!({"v": 10})), write("b", 2.0, json!({"v": 10}))];
    assert!(
        store
            .upsert_unchanged(p, "ns", &stale_b, &seen(&read[..2]), &caps)
            .await
            .expect("upsert")
            .is_none(),
        "b changed since it was read"
    );
    let resurrect = [write("c", 3.0, json!({"v": 10}))];
    assert!(
        store
            .upsert_unchanged(p, "ns", &resurrect, &seen(&read[2..]), &caps)
            .await
            .expect("upsert")
            .is_none(),
        "c was deleted since it was read"
    );
    assert!(
        store
            .delete_unchanged(p, "ns", &seen(&read[..2]))
            .await
            .expect("delete")
            .is_none(),
        "b changed since it was read"
    );
    let now = store.fetch(p, "ns", &ids(&["a", "b", "c"])).await.expect("fetch");
    assert_eq!(now.len(), 2, "nothing written, c still deleted");
    assert_eq!(
        (now[0].metadata["v"].clone(), now[1].metadata["v"].clone()),
        (json!(1), json!(2))
    );
    assert_eq!(
        store.namespace(p, "ns").await.expect("ns").expect("ns").seq,
        3,
        "refusals spend no seq"
    );

    // Read again, they go ahead.
    let outcome = store
        .upsert_unchanged(p, "ns", &stale_b, &seen(&now), &caps)
        .await
        .expect("upsert")
        .expect("unchanged");
    assert_eq!((outcome.affected, outcome.state.seq), (2, 4));
    let now = store.fetch(p, "ns", &ids(&["a", "b"])).await.expect("fetch");
    assert_eq!(now[1].metadata["v"], json!(10));
    let outcome = store
        .delete_unchanged(p, "ns", &seen(&now))
        .await
        .expect("delete")
        .expect("unchanged");
    assert_eq!((outcome.affected, outcome.state.seq), (2, 5));
    assert!(store.fetch(p, "ns", &ids(&["a", "b"])).await.expect("fetch").is_empty());
}

pub async fn changes_since_pages_in_seq_order(store: Arc<dyn Store>) {
    let p = project(store.as_ref()).await.id;
    for i in 0..5 {
        store
            .upsert(p, "ns", &[write(&format!("r{i}"), i as f32, json!({"i": i}))])
            .await
            .expect("upsert");
    }
    store
        .upsert(p, "ns", &[write("r1", 9.0, json!({"i": 99}))])
        .await
        .expect("rewrite r1");

    let all = store.changes_since(p, "ns", 0, 100, 0).await.expect("changes");
    let seqs: Vec<i64> = all.iter().map(Change::seq).collect();
    assert_eq!(seqs, [1, 3, 4, 5, 6], "r1 moved to seq 6, the latest state only");
    let page = store.changes_since(p, "ns", 3, 2, 0).await.expect("page");
    assert_eq!(page.iter().map(Change::seq).collect::<Vec<_>>(), [4, 5]);
    match &all[4] {
        Change::Upsert(record) => assert_eq!((record.id.as_str(), record.metadata["i"].clone()), ("r1", json!(99))),
        other => panic!("expected r1's upsert, got {other:?}"),
    }
}

pub async fn snapshots_replace_older_ones_and_purge_the_tombstones_they_cover(store: Arc<dyn Store>) {
    let p = project(store.as_ref()).await.id;
    assert_eq!(store.snapshot(p, "ns").await.expect("read"), None);
    assert_eq!(store.snapshot_size(p, "ns").await.expect("size"), None);
    store
        .upsert(p, "ns", &[write("a", 1.0, json!({})), write("b", 2.0, json!({}))])
        .await
        .expect("upsert");
    store
        .delete(p, "ns", &ids(&["a"]))
        .await
        .expect("delete")
        .expect("namespace");
    let epoch = store.namespace(p, "ns").await.expect("state").expect("exists").epoch;

    // Larger than two chunks, with a pattern that shows chunks out of order.
    let bytes: Vec<u8> = (0..SNAPSHOT_CHUNK * 2 + 1234).map(|i| (i % 251) as u8).collect();
    let big = Snapshot { epoch, seq: 2, bytes };
    assert!(store.save_snapshot(p, "ns", &big).await.expect("save"));
    assert_eq!(store.snapshot(p, "ns").await.expect("read"), Some(big.clone()));
    assert_eq!(
        store.snapshot_size(p, "ns").await.expect("size"),
        Some(big.bytes.len() as u64),
        "its size, read without it"
    );
    let stale = Snapshot {
        seq: 1,
        bytes: vec![1],
        ..big.clone()
    };
    assert!(!store.save_snapshot(p, "ns", &stale).await.expect("save"), "older");
    assert_eq!(store.snapshot(p, "ns").await.expect("read"), Some(big.clone()), "kept");
    let same = Snapshot {
        bytes: vec![2; 3],
        ..big.clone()
    };
    assert!(!store.save_snapshot(p, "ns", &same).await.expect("save"), "same seq");
    // A snapshot that could not be used is discarded; one of its seq may replace it.
    assert!(
        !store.discard_snapshot(p, "ns", 1).await.expect("discard"),
        "not that one"
    );
    assert!(store.discard_snapshot(p, "ns", 2).await.expect("discard"));
    assert_eq!(store.snapshot(p, "ns").await.expect("read"), None);
    assert!(
        store.save_snapshot(p, "ns", &same).await.expect("save"),
        "same seq, none stored"
    );
    assert_eq!(store.snapshot(p, "ns").await.expect("read"), Some(same));
    assert!(
        !store.save_snapshot(p, "ns", &stale).await.expect("save"),
        "below the horizon"
    );

    // The tombstone of "a" (seq 2) is gone; replaying from before it must reload.
    let all = store.changes_since(p, "ns", 0, 100, 0).await.expect("from scratch");
    assert_eq!(all.iter().map(Change::seq).collect::<Vec<_>>(), [1], "b only");
    match store.changes_since(p, "ns", 1, 100, 0).await {
        Err(StoreError::Compacted { horizon }) => assert_eq!(horizon, 2),
        other => panic!("expected Compacted, got {other:?}"),
    }
    assert_eq!(store.changes_since(p, "ns", 2, 100, 0).await.expect("at horizon"), []);
    // A replay from the first change, begun with the horizon where it is, goes on.
    assert_eq!(store.horizon(p, "ns").await.expect("horizon"), 2);
    assert_eq!(store.horizon(p, "nowhere").await.expect("horizon"), 0);
    assert_eq!(
        store
            .changes_since(p, "ns", 1, 100, 2)
            .await
            .expect("the horizon known"),
        [],
        "nothing after b's seq"
    );
    assert!(
        matches!(
            store.changes_since(p, "ns", 1, 100, 1).await,
            Err(StoreError::Compacted { horizon: 2 })
        ),
        "a horizon raised since the replay began"
    );
    store
        .delete(p, "ns", &ids(&["b"]))
        .await
        .expect("delete")
        .expect("namespace");
    assert_eq!(
        store.changes_since(p, "ns", 2, 100, 0).await.expect("after horizon"),
        [Change::Delete { id: "b".into(), seq: 3 }],
        "tombstones after the snapshot stay"
    );
    // A purged id can be written again.
    store
        .upsert(p, "ns", &[write("a", 5.0, json!({}))])
        .await
        .expect("revive");
    assert_eq!(store.namespaces(p).await.expect("list")[0].count, 1);

    let small = Snapshot {
        epoch,
        seq: 4,
        bytes: b"newer".to_vec(),
    };
    assert!(store.save_snapshot(p, "ns", &small).await.expect("replace"));
    assert_eq!(store.snapshot(p, "ns").await.expect("read"), Some(small));
}

pub async fn snapshots_of_a_gone_or_recreated_namespace_are_refused_and_deleted_with_it(store: Arc<dyn Store>) {
    let owner = project(store.as_ref()).await;
    let p = owner.id;
    let snapshot = |epoch, seq| Snapshot {
        epoch,
        seq,
        bytes: vec![7; 10],
    };
    assert!(
        !store
            .save_snapshot(p, "nowhere", &snapshot(uuid::Uuid::now_v7(), 1))
            .await
            .expect("save"),
        "no such namespace"
    );
    store
        .upsert(p, "ns", &[write("a", 1.0, json!({}))])
        .await
        .expect("upsert");
    store
        .delete(p, "ns", &ids(&["a"]))
        .await
        .expect("delete")
        .expect("namespace");
    let old = store.namespace(p, "ns").await.expect("state").expect("exists").epoch;
    assert!(store.save_snapshot(p, "ns", &snapshot(old, 1)).await.expect("save"));
    assert!(store.delete_namespace(p, "ns").await.expect("delete"));
    assert_eq!(store.snapshot(p, "ns").await.expect("read"), None, "deleted with it");

    store
        .upsert(p, "ns", &[write("a", 1.0, json!({}))])
        .await
        .expect("recreate");
    store
        .delete(p, "ns", &ids(&["a"]))
        .await
        .expect("delete")
        .expect("namespace");
    assert!(
        !store.save_snapshot(p, "ns", &snapshot(old, 2)).await.expect("save"),
        "the old epoch"
    );
    assert_eq!(
        store.changes_since(p, "ns", 1, 100, 0).await.expect("kept"),
        [Change::Delete { id: "a".into(), seq: 2 }],
        "a refused snapshot purges nothing"
    );
    let new = store.namespace(p, "ns").await.expect("state").expect("exists").epoch;
    assert!(store.save_snapshot(p, "ns", &snapshot(new, 2)).await.expect("save"));
    assert!(store.delete_project(p).await.expect("delete project"));
    assert_eq!(
        store.snapshot(p, "ns").await.expect("read"),
        None,
        "deleted with the project"
    );
    // A write that arrives after its project's delete is refused as that, not with
    // the schema's words for it.
    match store.upsert(p, "other", &[write("a", 1.0, json!({}))]).await {
        Err(StoreError::Invalid(message)) => assert_eq!(message, format!("project {p} was deleted")),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

pub async fn snapshots_saved_while_records_are_written_keep_the_horizon_at_the_stored_seq(store: Arc<dyn Store>) {
    let p = project(store.as_ref()).await.id;
    store
        .upsert(p, "ns", &[write("seed", 0.0, json!({}))])
        .await
        .expect("seed");
    let epoch = store.namespace(p, "ns").await.expect("state").expect("exists").epoch;
    let batch: Vec<RecordWrite> = (0..10).map(|i| write(&format!("r{i}"), i as f32, json!({}))).collect();
    let names = ids(&["r0", "r1", "r2", "r3", "r4", "r5", "r6", "r7", "r8", "r9"]);
    // Writers delete and revive the ids whose tombstones the savers purge.
    let writer = {
        let store = Arc::clone(&store);
        tokio::spawn(async move {
            for _ in 0..30 {
                store.upsert(p, "ns", &batch).await.expect("upsert");
                store.delete(p, "ns", &names).await.expect("delete").expect("namespace");
            }
        })
    };
    // Two savers, as two pods would, each snapshotting the seq it last saw.
    let savers: Vec<_> = (0..2u8)
        .map(|pod| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let mut saved = 0;
                for round in 0..30 {
                    let seq = store.namespace(p, "ns").await.expect("state").expect("exists").seq;
                    let snapshot = Snapshot {
                        epoch,
                        seq,
                        bytes: vec![pod; SNAPSHOT_CHUNK / 2 + round],
                    };
                    saved += usize::from(store.save_snapshot(p, "ns", &snapshot).await.expect("save"));
                }
                saved
            })
        })
        .collect();
    writer.await.expect("writer");
    let mut saved = 0;
    for saver in savers {
        saved += saver.await.expect("saver");
    }
    assert!(saved > 0);
    let stored = store.snapshot(p, "ns").await.expect("read").expect("stored");
    // Replaying from the stored snapshot works: the horizon is not above it.
    store
        .changes_since(p, "ns", stored.seq, 1000, 0)
        .await
        .expect("replay from the snapshot");
    if stored.seq > 1 {
        assert!(matches!(
            store.changes_since(p, "ns", stored.seq - 1, 1000, 0).await,
            Err(StoreError::Compacted { horizon }) if horizon == stored.seq
        ));
    }
}

pub async fn list_ids_pages_in_byte_order_with_a_prefix(store: Arc<dyn Store>) {
    let p = project(store.as_ref()).await.id;
    let names = ["doc#2", "doc#10", "Doc#1", "img#1", "doc#1", "é"];
    let batch: Vec<RecordWrite> = names.iter().map(|id| write(id, 1.0, json!({}))).collect();
    store.upsert(p, "ns", &batch).await.expect("upsert");
    store.delete(p, "ns", &ids(&["img#1"])).await.expect("delete");

    let all = store.list_ids(p, "ns", None, None, 100).await.expect("list");
    assert_eq!(
        all,
        ids(&["Doc#1", "doc#1", "doc#10", "doc#2", "é"]),
        "byte order, tombstones hidden"
    );
    let first = store.list_ids(p, "ns", Some("doc#"), None, 2).await.expect("page 1");
    assert_eq!(first, ids(&["doc#1", "doc#10"]));
    let next = store
        .list_ids(p, "ns", Some("doc#"), Some("doc#10"), 2)
        .await
        .expect("page 2");
    assert_eq!(next, ids(&["doc#2"]));
}

pub async fn scans_page_through_live_records_in_id_order(store: Arc<dyn Store>) {
    let p = project(store.as_ref()).await.id;
    let batch: Vec<RecordWrite> = (0..7)
        .map(|i| RecordWrite {
            content: Some(format!("text {i}")),
            ..write(&format!("r{i}"), i as f32, json!({"i": i}))
        })
        .collect();
    store.upsert(p, "ns", &batch).await.expect("upsert");
    store.delete(p, "ns", &ids(&["r3"])).await.expect("delete");
    store
        .upsert(p, "other", &[write("r0", 1.0, json!({}))])
        .await
        .expect("other namespace");

    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = store.scan(p, "ns", after.as_deref(), 2).await.expect("scan");
        assert!(page.len() <= 2);
        let Some(last) = page.last() else { break };
        after = Some(last.id.clone());
        seen.extend(page);
    }
    let seen_ids: Vec<&str> = seen.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(
        seen_ids,
        ["r0", "r1", "r2", "r4", "r5", "r6"],
        "id order, tombstones hidden"
    );
    let r5 = &seen[4];
    assert_eq!(r5.content.as_deref(), Some("text 5"));
    assert_eq!(r5.metadata["i"], json!(5));
    assert_eq!(r5.vector[0], 5.0);
    assert!(store.scan(p, "missing", None, 10).await.expect("scan").is_empty());
}

pub async fn namespaces_are_listed_with_live_counts_and_usage_adds_up(store: Arc<dyn Store>) {
    let p = project(store.as_ref()).await.id;
    store
        .upsert(
            p,
            "b",
            &[
                write("1", 1.0, json!({})),
                write("2", 1.0, json!({})),
                write("3", 1.0, json!({})),
            ],
        )
        .await
        .expect("b");
    store.upsert(p, "a", &[write("1", 1.0, json!({}))]).await.expect("a");
    store
        .upsert(p, "b", &[write("1", 2.0, json!({})), write("4", 1.0, json!({}))])
        .await
        .expect("b again");
    store.delete(p, "b", &ids(&["2"])).await.expect("delete");
    // Byte order, whatever the database's collation: upper case first, then `_`.
    for name in ["é", "_c", "B"] {
        store.upsert(p, name, &[write("1", 1.0, json!({}))]).await.expect(name);
    }

    let listed: Vec<(String, u64, i64)> = store
        .namespaces(p)
        .await
        .expect("list")
        .into_iter()
        .map(|n| (n.name, n.count, n.seq))
        .collect();
    assert_eq!(
        listed,
        [
            ("B".into(), 1, 1),
            ("_c".into(), 1, 1),
            ("a".into(), 1, 1),
            ("b".into(), 3, 3),
            ("é".into(), 1, 1)
        ]
    );
    let usage = store.project_usage(p).await.expect("usage");
    assert_eq!((usage.vectors, usage.namespaces), (7, 5));
}

pub async fn a_deleted_namespace_loses_its_records_and_comes_back_with_a_new_epoch(store: Arc<dyn Store>) {
    let p = project(store.as_ref()).await.id;
    let before = store
        .upsert(p, "ns", &[write("a", 1.0, json!({}))])
        .await
        .expect("upsert");
    assert!(store.delete_namespace(p, "ns").await.expect("delete"));
    assert!(!store.delete_namespace(p, "ns").await.expect("again"));
    assert!(store.namespace(p, "ns").await.expect("state").is_none());
    assert!(store.fetch(p, "ns", &ids(&["a"])).await.expect("fetch").is_empty());

    let after = store
        .upsert(p, "ns", &[write("b", 1.0, json!({}))])
        .await
        .expect("upsert");
    assert_ne!(after.state.epoch, before.state.epoch);
    assert_eq!(after.state.seq, 1);
    let changes = store.changes_since(p, "ns", 0, 10, 0).await.expect("changes");
    assert_eq!(changes.len(), 1, "nothing of the old namespace is replayed");
}

pub async fn projects_never_see_each_others_records(store: Arc<dyn Store>) {
    let (p, q) = (project(store.as_ref()).await.id, project(store.as_ref()).await.id);
    store
        .upsert(p, "shared-name", &[write("a", 1.0, json!({"owner": "p"}))])
        .await
        .expect("p");
    store
        .upsert(q, "shared-name", &[write("a", 2.0, json!({"owner": "q"}))])
        .await
        .expect("q");

    assert_eq!(
        store.fetch(q, "shared-name", &ids(&["a"])).await.expect("fetch")[0].metadata["owner"],
        "q"
    );
    store.delete(q, "shared-name", &ids(&["a"])).await.expect("delete");
    assert_eq!(
        store.fetch(p, "shared-name", &ids(&["a"])).await.expect("fetch")[0].metadata["owner"],
        "p"
    );
    assert!(store.delete_namespace(q, "shared-name").await.expect("delete ns"));
    assert_eq!(store.namespaces(p).await.expect("list").len(), 1);
    assert_eq!(store.project_usage(q).await.expect("usage").vectors, 0);
}

pub async fn concurrent_writers_get_distinct_seqs_in_commit_order_and_lose_nothing(store: Arc<dyn Store>) {
    let p = project(store.as_ref()).await.id;
    let writers = 8;
    let batches = 12;
    let mut tasks = Vec::new();
    for w in 0..writers {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for b in 0..batches {
                let batch: Vec<RecordWrite> = (0..10)
                    .map(|i| write(&format!("w{w}-b{b}-{i}"), i as f32, json!({"w": w, "b": b})))
                    .collect();
                seqs.push(
                    store
                        .upsert(p, "ns", &batch)
                        .await
                        .expect("concurrent upsert")
                        .state
                        .seq,
                );
            }
            seqs
        }));
    }
    let mut seqs: Vec<i64> = Vec::new();
    for task in tasks {
        seqs.extend(task.await.expect("writer task"));
    }
    seqs.sort_unstable();
    let expected: Vec<i64> = (1..=(writers * batches) as i64).collect();
    assert_eq!(seqs, expected, "every write got its own seq, none skipped");

    let changes = store.changes_since(p, "ns", 0, 10_000, 0).await.expect("changes");
    assert_eq!(changes.len(), writers * batches * 10);
    let info = &store.namespaces(p).await.expect("list")[0];
    assert_eq!(info.count, (writers * batches * 10) as u64);
    // Records of one write share its seq: replay by seq sees whole writes.
    let mut by_seq = std::collections::BTreeMap::<i64, Vec<String>>::new();
    for change in changes {
        if let Change::Upsert(r) = change {
            by_seq.entry(r.seq).or_default().push(r.id);
        }
    }
    assert!(
        by_seq.values().all(|ids| ids.len() == 10),
        "a write is never split across seqs"
    );
}

/// Writers that each read a record, then write it back changed only if it is unchanged
/// (as NQL's UPDATE does), racing one another: every increment lands exactly once, and
/// a delete from a stale read never takes a record changed since.
pub async fn concurrent_read_modify_writes_of_one_record_lose_no_update(store: Arc<dyn Store>) {
    let p = project(store.as_ref()).await.id;
    let caps = crate::Caps {
        plan: "test".into(),
        namespaces: 10,
        vectors: 100,
        embedding_model: None,
    };
    store
        .upsert(p, "ns", &[write("counter", 1.0, json!({"n": 0}))])
        .await
        .expect("upsert");
    let (writers, increments) = (6, 10);
    let mut tasks = Vec::new();
    for _ in 0..writers {
        let (store, caps) = (Arc::clone(&store), caps.clone());
        tasks.push(tokio::spawn(async move {
            let (mut done, mut overtaken) = (0, 0);
            while done < increments {
                let read = store.fetch(p, "ns", &ids(&["counter"])).await.expect("fetch");
                let n = read[0].metadata["n"].as_i64().expect("n");
                let seen = [Seen {
                    id: "counter".into(),
                    seq: read[0].seq,
                }];
                let next = [write("counter", 1.0, json!({"n": n + 1}))];
                match store
                    .upsert_unchanged(p, "ns", &next, &seen, &caps)
                    .await
                    .expect("upsert")
                {
                    Some(_) => done += 1,
                    None => overtaken += 1,
                }
            }
            overtaken
        }));
    }
    let mut overtaken = 0;
    for task in tasks {
        overtaken += task.await.expect("writer task");
    }
    let now = store.fetch(p, "ns", &ids(&["counter"])).await.expect("fetch");
    assert_eq!(
        now[0].metadata["n"],
        json!(writers * increments),
        "every increment landed once ({overtaken} attempts overtaken and run again)"
    );
    assert_eq!(
        store.namespace(p, "ns").await.expect("ns").expect("ns").seq,
        1 + (writers * increments) as i64,
        "only the writes that went ahead took a seq"
    );

    // A delete and a write from the same read race: exactly one goes ahead.
    for round in 0..10 {
        let read = store.fetch(p, "ns", &ids(&["counter"])).await.expect("fetch");
        let seen = [Seen {
            id: "counter".into(),
            seq: read[0].seq,
        }];
        let writer = {
            let (store, caps, seen) = (Arc::clone(&store), caps.clone(), seen.clone());
            tokio::spawn(async move {
                let next = [write("counter", 1.0, json!({"n": -1}))];
                store
                    .upsert_unchanged(p, "ns", &next, &seen, &caps)
                    .await
                    .expect("upsert")
            })
        };
        let deleted = store.delete_unchanged(p, "ns", &seen).await.expect("delete");
        let written = writer.await.expect("writer task");
        let now = store.fetch(p, "ns", &ids(&["counter"])).await.expect("fetch");
        match (deleted, written) {
            (Some(_), None) => assert!(now.is_empty(), "round {round}: deleted as read; the write saw it gone"),
            (None, Some(_)) => assert_eq!(now[0].metadata["n"], json!(-1), "round {round}: the delete kept it"),
            (Some(_), Some(_)) => panic!("round {round}: the delete and the write both went ahead from one read"),
            (None, None) => panic!("round {round}: neither went ahead, though nothing else wrote"),
        }
        if now.is_empty() {
            store
                .upsert(p, "ns", &[write("counter", 1.0, json!({"n": 0}))])
                .await
                .expect("upsert");
        }
    }
}

/// A capped write checks the plan's caps inside its transaction: concurrent writes
/// into new namespaces cannot pass the namespace cap together, a write past the
/// vector cap writes nothing, and records a write replaces do not count.
pub async fn capped_writes_hold_the_plans_caps_even_when_concurrent(store: Arc<dyn Store>) {
    let p = project(store.as_ref()).await.id;
    let caps = crate::Caps {
        plan: "tiny".into(),
        namespaces: 3,
        vectors: 10,
        embedding_model: None,
    };
    let mut tasks = Vec::new();
    for n in 0..12 {
        let (store, caps) = (Arc::clone(&store), caps.clone());
        tasks.push(tokio::spawn(async move {
            store
                .upsert_within(p, &format!("ns{n}"), &[write("a", 1.0, json!({}))], &caps)
                .await
        }));
    }
    let mut written = 0;
    for task in tasks {
        match task.await.expect("writer task") {
            Ok(_) => written += 1,
            Err(StoreError::OverCap(message)) => {
                assert!(message.contains("the tiny plan allows 3 namespaces"), "{message}")
            }
            Err(other) => panic!("expected OverCap, got {other:?}"),
        }
    }
    assert_eq!(written, 3, "exactly the cap's namespaces were made");
    let namespaces = store.namespaces(p).await.expect("list");
    assert_eq!(namespaces.len(), 3);
    let ns = namespaces[0].name.clone();

    // 3 records now; 7 more fit, 8 do not, and a refused write leaves no trace.
    let eight: Vec<RecordWrite> = (0..8).map(|i| write(&format!("v{i}"), i as f32, json!({}))).collect();
    let before = store.namespace(p, &ns).await.expect("state").expect("namespace");
    let refused = store.upsert_within(p, &ns, &eight, &caps).await;
    assert!(
        matches!(&refused, Err(StoreError::OverCap(message)) if message.contains("allows 10 vectors")),
        "{refused:?}"
    );
    assert_eq!(store.namespace(p, &ns).await.expect("state"), Some(before));
    assert_eq!(store.project_usage(p).await.expect("usage").vectors, 3);
    store.upsert_within(p, &ns, &eight[..7], &caps).await.expect("7 fit");
    // Replacing records adds none: at the cap, a write of the same ids still passes.
    store
        .upsert_within(p, &ns, &eight[..7], &caps)
        .await
        .expect("replacements");
    assert_eq!(store.project_usage(p).await.expect("usage").vectors, 10);
    let more = store
        .upsert_within(p, &ns, &[write("one-more", 1.0, json!({}))], &caps)
        .await;
    assert!(matches!(more, Err(StoreError::OverCap(_))), "{more:?}");
    // Unlimited writes (no caps) are not held to them.
    store
        .upsert(p, "ns-free", &[write("x", 1.0, json!({}))])
        .await
        .expect("uncapped");
}

/// The first capped write that names an embedding model gives the namespace its model,
/// in the write's transaction; a write by another model is refused and writes nothing
/// (its seq neither); writes that name none (vectors given) go ahead; a namespace made
/// again starts without one.
pub async fn a_namespace_keeps_the_embedding_model_of_its_first_embedded_write(store: Arc<dyn Store>) {
    let p = project(store.as_ref()).await.id;
    let caps = |model: Option<&str>| crate::Caps {
        plan: "test".into(),
        namespaces: 10,
        vectors: 100,
        embedding_model: model.map(str::to_owned),
    };
    assert_eq!(store.embedding_model(p, "ns").await.expect("read"), None);
    store
        .upsert_within(p, "ns", &[write("given", 1.0, json!({}))], &caps(None))
        .await
        .expect("vectors given");
    assert_eq!(store.embedding_model(p, "ns").await.expect("read"), None);
    let first = store
        .upsert_within(p, "ns", &[write("a", 1.0, json!({}))], &caps(Some("m1")))
        .await
        .expect("first embedded write");
    assert_eq!(
        store.embedding_model(p, "ns").await.expect("read").as_deref(),
        Some("m1")
    );
    let refused = store
        .upsert_within(p, "ns", &[write("b", 2.0, json!({}))], &caps(Some("m2")))
        .await;
    match refused {
        Err(StoreError::Invalid(message)) => assert!(message.contains("embedded with m1"), "{message}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(store.fetch(p, "ns", &ids(&["b"])).await.expect("fetch").is_empty());
    assert_eq!(
        store.namespace(p, "ns").await.expect("read").expect("ns").seq,
        first.state.seq
    );
    store
        .upsert_within(p, "ns", &[write("c", 3.0, json!({}))], &caps(Some("m1")))
        .await
        .expect("the same model");
    // An update that embedded text is held to the model too.
    let regenerated = |model: &str| RecordPatch {
        vector: Some(vec![0.5, 0.5, 0.5]),
        embedding_model: Some(model.to_owned()),
        ..RecordPatch::default()
    };
    match store.update(p, "ns", "a", &regenerated("m2")).await {
        Err(StoreError::Invalid(message)) => assert!(message.contains("embedded with m1"), "{message}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(
        store.fetch(p, "ns", &ids(&["a"])).await.expect("fetch")[0].vector,
        vec![1.0, 1.5, -1.0],
        "the refused update changed nothing"
    );
    store
        .update(p, "ns", "a", &regenerated("m1"))
        .await
        .expect("the same model")
        .expect("updated");
    assert!(store.delete_namespace(p, "ns").await.expect("delete"));
    store
        .upsert_within(p, "ns", &[write("d", 3.0, json!({}))], &caps(Some("m2")))
        .await
        .expect("a new life, a new model");
    assert_eq!(
        store.embedding_model(p, "ns").await.expect("read").as_deref(),
        Some("m2")
    );
}

pub async fn a_large_batch_is_written_whole(store: Arc<dyn Store>) {
    let p = project(store.as_ref()).await.id;
    let batch: Vec<RecordWrite> = (0..5_000)
        .map(|i| {
            let mut w = write(
                &format!("id-{i:05}"),
                i as f32 / 10.0,
                json!({"i": i, "even": i % 2 == 0}),
            );
            w.content = Some(format!("document number {i}"));
            w
        })
        .collect();
    let outcome = store.upsert(p, "big", &batch).await.expect("large batch");
    assert_eq!(outcome.affected, 5_000);
    assert_eq!(store.namespaces(p).await.expect("list")[0].count, 5_000);
    let sample = store
        .fetch(p, "big", &ids(&["id-00000", "id-04999"]))
        .await
        .expect("fetch");
    assert_eq!(sample[1].content.as_deref(), Some("document number 4999"));
    assert_eq!(sample[1].vector, batch[4999].vector);
    let mut listed = 0;
    let mut cursor: Option<String> = None;
    loop {
        let page = store
            .list_ids(p, "big", None, cursor.as_deref(), 1_000)
            .await
            .expect("page");
        if page.is_empty() {
            break;
        }
        listed += page.len();
        cursor = page.last().cloned();
    }
    assert_eq!(listed, 5_000);
}

/// When a request [`Idempotency::begin`] started first started, and its claim.
fn started_with(begun: IdempotencyBegin) -> (chrono::DateTime<Utc>, Claim) {
    match begun {
        IdempotencyBegin::Started { first_started, claim } => (first_started, claim),
        other => panic!("expected a start, got {other:?}"),
    }
}

/// The claim of a request [`Idempotency::begin`] started.
fn claim_of(begun: IdempotencyBegin) -> Claim {
    started_with(begun).1
}

pub async fn idempotency_claims_replays_and_refuses(store: Arc<dyn Store>) {
    let p = project(store.as_ref()).await.id;
    let (lease, ttl) = (Duration::seconds(30), Duration::hours(24));
    let claim = claim_of(store.begin(p, "k", "h1", lease, ttl).await.expect("begin"));
    assert_eq!(
        store.begin(p, "k", "h1", lease, ttl).await.expect("dup"),
        IdempotencyBegin::InFlight
    );
    assert_eq!(
        store.begin(p, "k", "h2", lease, ttl).await.expect("other"),
        IdempotencyBegin::Mismatch
    );

    let response = StoredResponse {
        status: 200,
        body: br#"{"upserted_count":2}"#.to_vec(),
    };
    assert!(store.complete(p, "k", claim, &response).await.expect("complete"));
    assert_eq!(
        store.begin(p, "k", "h1", lease, ttl).await.expect("replay"),
        IdempotencyBegin::Replay(response)
    );
    assert_eq!(
        store.begin(p, "k", "h2", lease, ttl).await.expect("other"),
        IdempotencyBegin::Mismatch
    );

    // Keys are per project.
    let q = project(store.as_ref()).await.id;
    assert!(started(store.begin(q, "k", "h2", lease, ttl).await.expect("begin")));

    // A failed request releases its claim.
    let claim = claim_of(store.begin(p, "k2", "h", lease, ttl).await.expect("begin"));
    store.abort(p, "k2", claim).await.expect("abort");
    assert!(started(store.begin(p, "k2", "h", lease, ttl).await.expect("retry")));
}

/// A request that outlasts its lease and loses the key to a retry can neither release
/// the retry's claim (letting another body in beside it) nor store its answer on it.
pub async fn a_claim_taken_over_is_no_longer_its_first_requests(store: Arc<dyn Store>) {
    let p = project(store.as_ref()).await.id;
    let ttl = Duration::hours(24);
    let slow = claim_of(
        store
            .begin(p, "k", "h", Duration::milliseconds(-1), ttl)
            .await
            .expect("begin"),
    );
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let retry = claim_of(
        store
            .begin(p, "k", "h", Duration::seconds(30), ttl)
            .await
            .expect("takeover"),
    );
    assert_ne!(slow, retry);

    store.abort(p, "k", slow).await.expect("abort");
    assert_eq!(
        store
            .begin(p, "k", "other", Duration::seconds(30), ttl)
            .await
            .expect("other"),
        IdempotencyBegin::Mismatch,
        "the retry still holds the key"
    );
    let late = StoredResponse {
        status: 200,
        body: br#"{"from":"the slow one"}"#.to_vec(),
    };
    assert!(!store.complete(p, "k", slow, &late).await.expect("complete"));
    assert_eq!(
        store
            .begin(p, "k", "h", Duration::seconds(30), ttl)
            .await
            .expect("held"),
        IdempotencyBegin::InFlight
    );
    let answer = StoredResponse {
        status: 200,
        body: br#"{"from":"the retry"}"#.to_vec(),
    };
    assert!(store.complete(p, "k", retry, &answer).await.expect("complete"));
    assert_eq!(
        store
            .begin(p, "k", "h", Duration::seconds(30), ttl)
            .await
            .expect("replay"),
        IdempotencyBegin::Replay(answer)
    );
}

pub async fn abandoned_or_expired_idempotency_claims_can_be_taken_over(store: Arc<dyn Store>) {
    let p = project(store.as_ref()).await.id;
    let ttl = Duration::hours(24);
    // A claim whose lease already ran out (its pod died) can be taken by the same request…
    let (first, _) = started_with(
        store
            .begin(p, "k", "h", Duration::milliseconds(-1), ttl)
            .await
            .expect("begin"),
    );
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    assert_eq!(
        store
            .begin(p, "k", "other", Duration::seconds(30), ttl)
            .await
            .expect("mismatch"),
        IdempotencyBegin::Mismatch,
        "…but not by another request"
    );
    let (taken, _) = started_with(
        store
            .begin(p, "k", "h", Duration::seconds(30), ttl)
            .await
            .expect("takeover"),
    );
    assert_eq!(
        taken.timestamp_millis(),
        first.timestamp_millis(),
        "the same request, taken over, keeps its first start"
    );
    assert_eq!(
        store
            .begin(p, "k", "h", Duration::seconds(30), ttl)
            .await
            .expect("held"),
        IdempotencyBegin::InFlight
    );

    // A released claim (its request failed) may be taken by any request; the same
    // request keeps its first start, as its write may have committed before it failed.
    let (failed, claim) = started_with(
        store
            .begin(p, "released", "h", Duration::seconds(30), ttl)
            .await
            .expect("begin"),
    );
    store.abort(p, "released", claim).await.expect("abort");
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let (retried, claim) = started_with(
        store
            .begin(p, "released", "h", Duration::seconds(30), ttl)
            .await
            .expect("retry"),
    );
    assert_eq!(retried.timestamp_millis(), failed.timestamp_millis());
    store.abort(p, "released", claim).await.expect("abort");
    let (corrected, _) = started_with(
        store
            .begin(p, "released", "h2", Duration::seconds(30), ttl)
            .await
            .expect("another body"),
    );
    assert!(corrected > failed, "another request starts now");

    // An expired entry is forgotten: any request may use the key again, and purge removes it.
    let done = StoredResponse {
        status: 200,
        body: b"{}".to_vec(),
    };
    let (old, _) = started_with(
        store
            .begin(p, "old", "h", Duration::seconds(30), Duration::milliseconds(-1))
            .await
            .expect("begin"),
    );
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let (again, claim) = started_with(
        store
            .begin(p, "old", "h", Duration::seconds(30), ttl)
            .await
            .expect("reuse"),
    );
    assert!(
        again > old,
        "an expired entry taken over is a new request, starting now"
    );
    assert!(store.complete(p, "old", claim, &done).await.expect("complete"));
    let (_, claim) = started_with(
        store
            .begin(p, "expiring", "h", Duration::seconds(30), Duration::milliseconds(-1))
            .await
            .expect("begin"),
    );
    assert!(store.complete(p, "expiring", claim, &done).await.expect("complete"));
    assert_eq!(store.purge_expired().await.expect("purge"), 1);
    assert!(started(
        store
            .begin(p, "expiring", "new-body", Duration::seconds(30), ttl)
            .await
            .expect("reuse")
    ));
}

pub async fn the_store_reports_ready(store: Arc<dyn Store>) {
    assert_eq!(store.check().await, Ok(()));
    assert_eq!(store.name(), "storage");
    assert!(["sqlite", "postgres"].contains(&store.backend()));
}
