//! Index snapshots: a namespace loads from its stored snapshot plus the writes after
//! it, an index that falls behind the tombstone horizon reloads, a snapshot that cannot
//! be used is ignored, the background task snapshots what changed, and worn graphs are
//! rebuilt aside.

use std::sync::Arc;
use std::time::Duration;

use quiver_common::domain::Metric;
use quiver_engine::{Filter, IndexManager, LoadedFrom, Query, SnapshotPolicy};
use quiver_store::{Project, RecordWrite, Snapshot, Store};
use quiver_tests::stores::SqliteFixture;

use crate::support::on_both_stores;

const DIM: usize = 16;

/// Record `i`'s vector: uniform in [0, 100) per dimension, seeded by `i`, so the same
/// record always gets the same vector. (Vectors laid along 97 lines, as these once
/// were, give usearch a degenerate graph, where whether a record just written was
/// found at the tuned width came down to how the threads happened to build it.)
fn vector(i: usize) -> Vec<f32> {
    use rand::{Rng as _, SeedableRng as _};
    let mut rng = rand::rngs::StdRng::seed_from_u64(i as u64);
    (0..DIM).map(|_| rng.random_range(0.0..100.0)).collect()
}

fn writes(range: std::ops::Range<usize>) -> Vec<RecordWrite> {
    range
        .map(|i| RecordWrite {
            id: format!("r{i}"),
            vector: vector(i),
            metadata: serde_json::json!({"i": i}).as_object().cloned().unwrap_or_default(),
            content: None,
        })
        .collect()
}

/// Records `range` with vectors a little off the ones [`writes`] gives them, still
/// nearest to those: writes that replace (a record upserted with the vector it has
/// keeps its node, and its graph does not wear).
fn rewrites(range: std::ops::Range<usize>) -> Vec<RecordWrite> {
    writes(range)
        .into_iter()
        .map(|mut write| {
            write.vector[0] += 1.0;
            write
        })
        .collect()
}

fn ids(range: impl Iterator<Item = usize>) -> Vec<String> {
    range.map(|i| format!("r{i}")).collect()
}

fn nearest(vector: Vec<f32>, strong: bool) -> Query {
    Query {
        vector,
        k: 1,
        filter: Arc::new(Filter::All),
        include_values: false,
        strong,
    }
}

async fn project(store: &dyn Store) -> Project {
    quiver_tests::stores::project(store, DIM as u32, Metric::Euclidean, "business").await
}

/// The id a manager finds nearest to record `i`'s own vector.
async fn found(manager: &IndexManager, project: &Project, i: usize, strong: bool) -> Option<String> {
    let outcome = manager
        .search(project, "ns", nearest(vector(i), strong))
        .await
        .expect("search")
        .expect("namespace");
    outcome.matches.first().map(|m| m.id.clone())
}

async fn loads_from_the_snapshot_plus_the_writes_after_it(store: Arc<dyn Store>) {
    let project = project(store.as_ref()).await;
    store.upsert(project.id, "ns", &writes(0..3_000)).await.expect("upsert");
    store
        .delete(project.id, "ns", &ids((0..3_000).step_by(3)))
        .await
        .expect("delete")
        .expect("namespace");

    let first = IndexManager::new(Arc::clone(&store), 1 << 30);
    assert_eq!(found(&first, &project, 1, false).await.as_deref(), Some("r1"));
    let status = first.status(project.id, "ns").await.expect("loaded");
    assert_eq!(
        (status.from, status.snapshot_seq, status.seq),
        (LoadedFrom::Replay, 0, 2)
    );
    assert_eq!(first.snapshot_now(project.id, "ns").await.expect("snapshot"), Some(2));
    assert_eq!(
        first.snapshot_now(project.id, "ns").await.expect("snapshot"),
        None,
        "nothing new to snapshot"
    );

    // Writes after the snapshot: new records, a replaced one and deletes.
    store
        .upsert(project.id, "ns", &writes(3_000..3_010))
        .await
        .expect("upsert");
    let moved = RecordWrite {
        vector: vector(5_000),
        ..writes(4..5).remove(0)
    };
    store.upsert(project.id, "ns", &[moved]).await.expect("replace r4");
    store
        .delete(project.id, "ns", &ids(3_000..3_005))
        .await
        .expect("delete")
        .expect("namespace");

    let second = IndexManager::new(Arc::clone(&store), 1 << 30);
    assert_eq!(found(&second, &project, 3_007, false).await.as_deref(), Some("r3007"));
    let status = second.status(project.id, "ns").await.expect("loaded");
    assert_eq!(status.from, LoadedFrom::Snapshot(2));
    assert_eq!((status.seq, status.records), (5, 2_000 + 5));
    assert_eq!(
        found(&second, &project, 5_000, false).await.as_deref(),
        Some("r4"),
        "r4 moved"
    );
    for i in [0, 3, 2_997, 3_001] {
        assert_ne!(
            found(&second, &project, i, false).await,
            Some(format!("r{i}")),
            "r{i} is deleted"
        );
    }
    // Both answer alike once the first has caught up.
    for i in (1..3_010).step_by(97) {
        assert_eq!(
            found(&first, &project, i, true).await,
            found(&second, &project, i, false).await,
            "record {i}"
        );
    }
}

async fn an_index_behind_the_horizon_reloads_from_the_snapshot(store: Arc<dyn Store>) {
    let project = project(store.as_ref()).await;
    store.upsert(project.id, "ns", &writes(0..500)).await.expect("upsert");
    let behind = IndexManager::new(Arc::clone(&store), 1 << 30);
    assert_eq!(found(&behind, &project, 7, false).await.as_deref(), Some("r7"));

    // Another pod deletes, snapshots, and so purges the tombstones `behind` never saw.
    store
        .delete(project.id, "ns", &ids(0..100))
        .await
        .expect("delete")
        .expect("namespace");
    store.upsert(project.id, "ns", &writes(500..510)).await.expect("upsert");
    let ahead = IndexManager::new(Arc::clone(&store), 1 << 30);
    assert_eq!(found(&ahead, &project, 505, false).await.as_deref(), Some("r505"));
    assert_eq!(ahead.snapshot_now(project.id, "ns").await.expect("snapshot"), Some(3));
    store.upsert(project.id, "ns", &writes(510..520)).await.expect("upsert");

    // A strong read catches up: past the horizon, by reloading.
    assert_ne!(
        found(&behind, &project, 7, true).await.as_deref(),
        Some("r7"),
        "r7 is deleted"
    );
    let status = behind.status(project.id, "ns").await.expect("loaded");
    assert_eq!(
        (status.from, status.seq, status.records),
        (LoadedFrom::Snapshot(3), 4, 420)
    );
    assert_eq!(found(&behind, &project, 515, false).await.as_deref(), Some("r515"));
}

async fn a_reload_without_a_usable_snapshot_rebuilds_from_the_records(store: Arc<dyn Store>) {
    let project = project(store.as_ref()).await;
    store.upsert(project.id, "ns", &writes(0..300)).await.expect("upsert");
    let behind = IndexManager::new(Arc::clone(&store), 1 << 30);
    assert_eq!(found(&behind, &project, 7, false).await.as_deref(), Some("r7"));

    store
        .delete(project.id, "ns", &ids(0..50))
        .await
        .expect("delete")
        .expect("namespace");
    let ahead = IndexManager::new(Arc::clone(&store), 1 << 30);
    assert_eq!(found(&ahead, &project, 70, false).await.as_deref(), Some("r70"));
    assert_eq!(ahead.snapshot_now(project.id, "ns").await.expect("snapshot"), Some(2));
    // The snapshot that raised the horizon is replaced by one nobody can read.
    store.upsert(project.id, "ns", &writes(300..310)).await.expect("upsert");
    let epoch = store
        .namespace(project.id, "ns")
        .await
        .expect("state")
        .expect("ns")
        .epoch;
    let garbage = Snapshot {
        epoch,
        seq: 3,
        bytes: vec![0; 100],
    };
    assert!(store.save_snapshot(project.id, "ns", &garbage).await.expect("save"));

    assert_ne!(
        found(&behind, &project, 7, true).await.as_deref(),
        Some("r7"),
        "r7 is deleted"
    );
    let status = behind.status(project.id, "ns").await.expect("loaded");
    assert_eq!((status.from, status.seq, status.records), (LoadedFrom::Replay, 3, 260));
    assert_eq!(store.snapshot(project.id, "ns").await.expect("read"), None, "discarded");
    assert_eq!(behind.snapshot_now(project.id, "ns").await.expect("snapshot"), Some(3));
}

/// A snapshot that cannot be used is discarded, but the tombstones it purged stay
/// purged: a load replaying every change from the first, page after page, reads past
/// that horizon (it never saw the purged records live), and does not reload forever.
async fn a_replay_from_the_first_change_reads_past_a_discarded_snapshots_horizon(store: Arc<dyn Store>) {
    let project = project(store.as_ref()).await;
    for part in 0..3 {
        let range = part * 1_500..(part + 1) * 1_500;
        store.upsert(project.id, "ns", &writes(range)).await.expect("upsert");
    }
    store
        .delete(project.id, "ns", &ids(0..10))
        .await
        .expect("delete")
        .expect("namespace");
    let first = IndexManager::new(Arc::clone(&store), 1 << 30);
    assert_eq!(found(&first, &project, 20, false).await.as_deref(), Some("r20"));
    assert_eq!(first.snapshot_now(project.id, "ns").await.expect("snapshot"), Some(4));
    store
        .upsert(project.id, "ns", &writes(4_500..4_510))
        .await
        .expect("upsert");
    let epoch = store
        .namespace(project.id, "ns")
        .await
        .expect("state")
        .expect("ns")
        .epoch;
    let garbage = Snapshot {
        epoch,
        seq: 5,
        bytes: vec![0; 100],
    };
    assert!(store.save_snapshot(project.id, "ns", &garbage).await.expect("save"));

    let fresh = IndexManager::new(Arc::clone(&store), 1 << 30);
    let loaded = tokio::time::timeout(Duration::from_secs(120), found(&fresh, &project, 4_505, false))
        .await
        .expect("the load ends");
    assert_eq!(loaded.as_deref(), Some("r4505"));
    let status = fresh.status(project.id, "ns").await.expect("loaded");
    assert_eq!(
        (status.from, status.seq, status.records),
        (LoadedFrom::Replay, 5, 4_500)
    );
    assert_ne!(
        found(&fresh, &project, 5, false).await.as_deref(),
        Some("r5"),
        "r5 is deleted"
    );
}

async fn an_unusable_snapshot_is_ignored_and_replaced(store: Arc<dyn Store>) {
    let project = project(store.as_ref()).await;
    store.upsert(project.id, "ns", &writes(0..200)).await.expect("upsert");
    let epoch = store
        .namespace(project.id, "ns")
        .await
        .expect("state")
        .expect("ns")
        .epoch;
    let garbage = Snapshot {
        epoch,
        seq: 1,
        bytes: b"QVSNAP01 but then nothing that checks out".to_vec(),
    };
    assert!(store.save_snapshot(project.id, "ns", &garbage).await.expect("save"));

    let manager = IndexManager::new(Arc::clone(&store), 1 << 30);
    assert_eq!(found(&manager, &project, 42, false).await.as_deref(), Some("r42"));
    let status = manager.status(project.id, "ns").await.expect("loaded");
    assert_eq!((status.from, status.records), (LoadedFrom::Replay, 200));
    assert_eq!(manager.snapshot_now(project.id, "ns").await.expect("snapshot"), Some(1));

    let next = IndexManager::new(Arc::clone(&store), 1 << 30);
    assert_eq!(found(&next, &project, 42, false).await.as_deref(), Some("r42"));
    assert_eq!(
        next.status(project.id, "ns").await.expect("loaded").from,
        LoadedFrom::Snapshot(1)
    );
}

/// A snapshot damaged in the database (a chunk gone, a size that does not add up) is
/// discarded and the index rebuilt from the records, not an error on every load.
async fn a_damaged_snapshot_is_discarded_and_the_index_rebuilt<F, R>(store: Arc<dyn Store>, execute: F)
where
    F: Fn(&'static str) -> R,
    R: std::future::Future<Output = ()>,
{
    let project = project(store.as_ref()).await;
    store.upsert(project.id, "ns", &writes(0..200)).await.expect("upsert");
    for damage in ["DELETE FROM snapshot_chunks", "UPDATE snapshots SET size = size + 1"] {
        let manager = IndexManager::new(Arc::clone(&store), 1 << 30);
        assert_eq!(found(&manager, &project, 42, false).await.as_deref(), Some("r42"));
        assert_eq!(manager.snapshot_now(project.id, "ns").await.expect("snapshot"), Some(1));
        execute(damage).await;

        let next = IndexManager::new(Arc::clone(&store), 1 << 30);
        assert_eq!(
            found(&next, &project, 42, false).await.as_deref(),
            Some("r42"),
            "{damage}"
        );
        let status = next.status(project.id, "ns").await.expect("loaded");
        assert_eq!((status.from, status.records), (LoadedFrom::Replay, 200), "{damage}");
        assert!(
            store.snapshot(project.id, "ns").await.expect("read").is_none(),
            "{damage}: discarded"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_snapshot_is_discarded_and_the_index_rebuilt_sqlite() {
    let fixture = SqliteFixture::new().await;
    a_damaged_snapshot_is_discarded_and_the_index_rebuilt(Arc::clone(&fixture.store), |sql| fixture.execute(sql)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_snapshot_is_discarded_and_the_index_rebuilt_postgres() {
    let fixture = quiver_tests::stores::PostgresFixture::new().await;
    a_damaged_snapshot_is_discarded_and_the_index_rebuilt(Arc::clone(&fixture.store), |sql| fixture.execute(sql)).await;
}

/// A load by replay starts tuning the search width before the search that loaded it
/// returns, and reports it until it is done: once `tuning` reads false, the width
/// served is the tuned one, not the default it loaded with.
async fn a_replayed_load_reports_its_tuning_until_the_width_is_settled(store: Arc<dyn Store>) {
    let project = project(store.as_ref()).await;
    store.upsert(project.id, "ns", &writes(0..3_000)).await.expect("upsert");
    let manager = IndexManager::new(Arc::clone(&store), 1 << 30);
    assert_eq!(found(&manager, &project, 1, false).await.as_deref(), Some("r1"));
    let status = settled(&manager, &project).await;
    // Which width the tuner settles on depends on its random sample and on the graph
    // (16 or 64 have been seen for these records); any of them is far narrower than the
    // default of 256 that a load starts with, which would mean no tuning took effect.
    assert!(
        status.ef < 256,
        "the tuned width, not the default of 256 a load starts with: {}",
        status.ef
    );
}

/// The status of a loaded namespace once no tuning of its search width is running.
async fn settled(manager: &IndexManager, project: &Project) -> quiver_engine::IndexStatus {
    let mut status = manager.status(project.id, "ns").await.expect("loaded");
    for _ in 0..600 {
        if !status.tuning {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        status = manager.status(project.id, "ns").await.expect("loaded");
    }
    assert!(
        !status.tuning,
        "a tuning of a few thousand 16-d records ends within 30 s"
    );
    status
}

/// Each replaced or deleted record leaves the graph a little harder to walk, so once a
/// fifth of the records have been replaced or deleted since the last tuning, the
/// search width is tuned again; fewer do not start one.
async fn replacing_a_fifth_of_the_records_tunes_the_search_width_again(store: Arc<dyn Store>) {
    let project = project(store.as_ref()).await;
    store.upsert(project.id, "ns", &writes(0..2_000)).await.expect("upsert");
    let manager = IndexManager::new(Arc::clone(&store), 1 << 30);
    assert_eq!(found(&manager, &project, 1, false).await.as_deref(), Some("r1"));
    let status = settled(&manager, &project).await;
    assert_eq!((status.tunings, status.churn), (1, 0), "tuned once, on load");
    // Every record written again as it is (a sync that upserts everything): no node
    // is replaced, so nothing wears.
    store.upsert(project.id, "ns", &writes(0..2_000)).await.expect("again");
    assert_eq!(found(&manager, &project, 1, true).await.as_deref(), Some("r1"));
    let status = settled(&manager, &project).await;
    assert_eq!((status.records, status.churn, status.tunings), (2_000, 0, 1));

    // 300 replaced and 50 deleted: 17.5 %.
    store
        .upsert(project.id, "ns", &rewrites(0..300))
        .await
        .expect("replace");
    store
        .delete(project.id, "ns", &ids(1_950..2_000))
        .await
        .expect("delete");
    assert_eq!(found(&manager, &project, 7, true).await.as_deref(), Some("r7"));
    let status = settled(&manager, &project).await;
    assert_eq!((status.records, status.churn, status.tunings), (1_950, 350, 1));

    // 40 more replaced: 390 of 1,950, a fifth.
    store
        .upsert(project.id, "ns", &rewrites(300..340))
        .await
        .expect("replace");
    assert_eq!(found(&manager, &project, 310, true).await.as_deref(), Some("r310"));
    let status = settled(&manager, &project).await;
    assert_eq!((status.churn, status.tunings), (390, 2), "tuned again");
    assert!(status.ef < 256, "a tuned width: {}", status.ef);
}

/// While a pod catches up with a large write it heard of, the search that started the
/// catch-up waits for it, and searches beside it answer at once from what is in memory
/// (reporting the seq before the write) rather than queue behind it.
async fn searches_beside_a_catch_up_answer_from_memory_without_waiting(store: Arc<dyn Store>) {
    let project = project(store.as_ref()).await;
    store.upsert(project.id, "ns", &writes(0..10)).await.expect("upsert");
    let manager = Arc::new(IndexManager::new(Arc::clone(&store), 1 << 30));
    assert_eq!(found(&manager, &project, 3, false).await.as_deref(), Some("r3"));
    let before = manager.status(project.id, "ns").await.expect("loaded");
    let total = 60_000;
    let outcome = store
        .upsert(project.id, "ns", &writes(10..total))
        .await
        .expect("upsert");
    manager.heard_of(project.id, "ns", outcome.state).await;

    let first = {
        let (manager, project) = (Arc::clone(&manager), project.clone());
        tokio::spawn(async move { manager.search(&project, "ns", nearest(vector(7), false)).await })
    };
    // Wait until the catch-up is adding the write to the graph.
    let mut status = manager.status(project.id, "ns").await.expect("loaded");
    while status.records == before.records {
        tokio::time::sleep(Duration::from_millis(1)).await;
        status = manager.status(project.id, "ns").await.expect("loaded");
    }
    let beside = manager
        .search(&project, "ns", nearest(vector(5), false))
        .await
        .expect("search")
        .expect("namespace");
    let after = manager.status(project.id, "ns").await.expect("loaded");
    assert!(
        after.records < total,
        "the catch-up was still running when the search beside it answered ({} of {total} in)",
        after.records
    );
    assert_eq!(beside.seq, before.seq, "the search beside it served what was in memory");
    let first = first.await.expect("task").expect("search").expect("namespace");
    assert_eq!(first.seq, outcome.state.seq, "the search that caught up saw the write");
    assert_eq!(manager.status(project.id, "ns").await.expect("loaded").records, total);
}

/// Once half the records of a namespace have been replaced or deleted since its graph
/// was built, the maintenance round rebuilds the graph aside, one at a time, while the
/// index serves searches and takes writes, and swaps it in with those writes applied.
async fn a_worn_graph_is_rebuilt_aside_and_keeps_the_writes_made_meanwhile(store: Arc<dyn Store>) {
    let project = project(store.as_ref()).await;
    store.upsert(project.id, "ns", &writes(0..2_000)).await.expect("upsert");
    let manager = Arc::new(IndexManager::new(Arc::clone(&store), 1 << 30));
    assert_eq!(found(&manager, &project, 1, false).await.as_deref(), Some("r1"));

    store
        .upsert(project.id, "ns", &rewrites(0..999))
        .await
        .expect("replace");
    assert_eq!(found(&manager, &project, 7, true).await.as_deref(), Some("r7"));
    let status = settled(&manager, &project).await;
    assert_eq!((status.churn, status.rebuilds), (999, 0));
    // A snapshot raises the tombstone horizon: the rebuild must not need to replay
    // from before it.
    assert_eq!(manager.snapshot_now(project.id, "ns").await.expect("snapshot"), Some(2));
    assert!(manager.rebuild_due().is_none(), "999 of 2,000 replaced: not due");
    // Another pod (or this one after a restart) loads the graph from that snapshot: its
    // churn comes with it, and its width was tuned at that churn.
    let restored = Arc::new(IndexManager::new(Arc::clone(&store), 1 << 30));
    assert_eq!(found(&restored, &project, 7, false).await.as_deref(), Some("r7"));
    let status = settled(&restored, &project).await;
    assert_eq!((status.churn, status.tunings, status.rebuilds), (999, 0, 0));

    store
        .upsert(project.id, "ns", &rewrites(999..1_000))
        .await
        .expect("replace");
    assert_eq!(found(&manager, &project, 999, true).await.as_deref(), Some("r999"));
    let worn = settled(&manager, &project).await;
    assert_eq!(worn.churn, 1_000);
    // One more replaced is half the records on the restored graph too.
    assert_eq!(found(&restored, &project, 999, true).await.as_deref(), Some("r999"));
    let rebuild = restored.rebuild_due().expect("half the restored graph replaced: due");
    tokio::time::timeout(Duration::from_secs(60), rebuild)
        .await
        .expect("a rebuild of 2,000 16-d records ends within a minute")
        .expect("task");
    let status = settled(&restored, &project).await;
    assert_eq!((status.rebuilds, status.churn, status.records), (1, 0, 2_000));
    drop(restored);
    let rebuild = manager.rebuild_due().expect("half the records replaced: due");
    assert!(manager.rebuild_due().is_none(), "one rebuild at a time");
    assert!(manager.status(project.id, "ns").await.expect("loaded").rebuilding);

    // Writes while it runs: ten new records and five deleted a round.
    let mut rounds = 0;
    while manager.status(project.id, "ns").await.expect("loaded").rebuilding && rounds < 100 {
        let new = 2_000 + rounds * 10;
        store
            .upsert(project.id, "ns", &writes(new..new + 10))
            .await
            .expect("upsert");
        let gone = 1_995 - rounds * 5;
        store
            .delete(project.id, "ns", &ids(gone..gone + 5))
            .await
            .expect("delete")
            .expect("namespace");
        let near = among_nearest(&manager, &project, new + 3, true).await;
        assert!(
            near.contains(&format!("r{}", new + 3)),
            "r{} written: {near:?}",
            new + 3
        );
        rounds += 1;
    }
    assert!(rounds > 0);
    tokio::time::timeout(Duration::from_secs(60), rebuild)
        .await
        .expect("a rebuild of 2,000 16-d records ends within a minute")
        .expect("task");

    let status = settled(&manager, &project).await;
    assert_eq!(status.rebuilds, 1);
    assert!(!status.rebuilding);
    assert_eq!(status.records, 2_000 + rounds * 5);
    assert_eq!(status.seq, worn.seq + 2 * rounds as i64);
    assert!(
        status.churn <= rounds * 5,
        "the new graph counts only what it removed itself: {} after {rounds} rounds",
        status.churn
    );
    assert_eq!(status.tunings, worn.tunings + 1, "tuned again once in place");
    assert!(status.ef < 256, "a tuned width: {}", status.ef);
    for i in [3, 998, 1_200, 2_000 + rounds * 10 - 1] {
        let near = among_nearest(&manager, &project, i, false).await;
        assert!(
            near.contains(&format!("r{i}")),
            "r{i} after {rounds} rounds ({status:?}): {near:?}"
        );
    }
    let deleted = 1_995 - (rounds - 1) * 5;
    let near = among_nearest(&manager, &project, deleted, false).await;
    assert!(!near.contains(&format!("r{deleted}")), "r{deleted} deleted: {near:?}");
    assert!(manager.rebuild_due().is_none(), "the new graph is not worn");
}

/// The ids of the ten records nearest to record `i`'s own vector. A record is looked
/// for among them, not first: the graph is approximate at its tuned width.
async fn among_nearest(manager: &IndexManager, project: &Project, i: usize, strong: bool) -> Vec<String> {
    let query = Query {
        k: 10,
        ..nearest(vector(i), strong)
    };
    let outcome = manager
        .search(project, "ns", query)
        .await
        .expect("search")
        .expect("namespace");
    outcome.matches.into_iter().map(|m| m.id).collect()
}

/// A rebuild holds two graphs of the namespace until it swaps: it waits while the
/// memory budget has no room for the second.
async fn a_rebuild_waits_for_room_in_the_memory_budget(store: Arc<dyn Store>) {
    let project = project(store.as_ref()).await;
    store.upsert(project.id, "ns", &writes(0..2_000)).await.expect("upsert");

    let roomy = IndexManager::new(Arc::clone(&store), 1 << 30);
    assert_eq!(found(&roomy, &project, 1, false).await.as_deref(), Some("r1"));
    roomy.settle().await;
    let size = roomy.memory_bytes();
    assert!(roomy.rebuild_now(project.id, "ns").await.expect("rebuild"));
    let status = roomy.status(project.id, "ns").await.expect("loaded");
    assert_eq!((status.rebuilds, status.records), (1, 2_000));
    assert_eq!(found(&roomy, &project, 1_234, false).await.as_deref(), Some("r1234"));

    let tight = IndexManager::new(Arc::clone(&store), size * 3 / 2);
    assert_eq!(found(&tight, &project, 1, false).await.as_deref(), Some("r1"));
    assert!(!tight.rebuild_now(project.id, "ns").await.expect("rebuild"));
    let status = tight.status(project.id, "ns").await.expect("still loaded");
    assert_eq!(status.rebuilds, 0);
}

/// Starts loading namespace "ns" in the background, and returns
/// once the load is under way (the namespace's state read, the index not in memory).
async fn loading(
    manager: &Arc<IndexManager>,
    project: &Project,
) -> tokio::task::JoinHandle<Option<Arc<quiver_engine::manager::Loaded>>> {
    let task = {
        let (manager, project) = (Arc::clone(manager), project.clone());
        tokio::spawn(async move { manager.open(&project, "ns").await.expect("open") })
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !manager.is_loading(project.id, "ns") && !task.is_finished() {
        assert!(std::time::Instant::now() < deadline, "the load never started");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert!(
        !manager.is_loaded(project.id, "ns").await && !task.is_finished(),
        "the load ended before the test could write beside it: give it more records"
    );
    task
}

/// A write this pod commits while the namespace's index is loading is in the index
/// the load leaves, though the load read the namespace's state before the write.
async fn a_write_committed_while_the_index_loads_is_in_it(store: Arc<dyn Store>) {
    let project = project(store.as_ref()).await;
    store.upsert(project.id, "ns", &writes(0..6_000)).await.expect("upsert");
    let manager = Arc::new(IndexManager::new(Arc::clone(&store), 1 << 30));
    let load = loading(&manager, &project).await;
    let outcome = store
        .upsert(project.id, "ns", &writes(6_000..6_001))
        .await
        .expect("write");
    manager
        .committed(project.id, "ns", outcome.state, Vec::new())
        .await
        .expect("committed");
    load.await.expect("the load").expect("namespace");
    assert_eq!(
        found(&manager, &project, 6_000, false).await.as_deref(),
        Some("r6000"),
        "an eventual search on this pod serves its acknowledged write"
    );
}

/// A namespace deleted while its index loads is not served from the index the load
/// leaves: the pod reads it as gone.
async fn a_namespace_deleted_while_its_index_loads_is_gone(store: Arc<dyn Store>) {
    let project = project(store.as_ref()).await;
    store.upsert(project.id, "ns", &writes(0..6_000)).await.expect("upsert");
    let manager = Arc::new(IndexManager::new(Arc::clone(&store), 1 << 30));
    let load = loading(&manager, &project).await;
    assert!(store.delete_namespace(project.id, "ns").await.expect("delete"));
    manager.forget_namespace(project.id, "ns").await;
    assert!(load.await.expect("the load").is_none(), "the load found it gone");
    assert!(!manager.is_loaded(project.id, "ns").await);
    let search = manager
        .search(&project, "ns", nearest(vector(1), false))
        .await
        .expect("search");
    assert!(search.is_none(), "no such namespace");
}

/// A load whose caller goes away (a client gone, an NQL statement's `timeout_ms`)
/// goes on to the cache, and leaves no trace that would make the namespace, deleted
/// and made again later, stale on this pod for good.
async fn a_load_whose_caller_went_away_ends_in_the_cache(store: Arc<dyn Store>) {
    let project = project(store.as_ref()).await;
    store.upsert(project.id, "ns", &writes(0..6_000)).await.expect("upsert");
    let manager = Arc::new(IndexManager::new(Arc::clone(&store), 1 << 30));
    let load = loading(&manager, &project).await;
    load.abort();
    assert!(load.await.is_err_and(|err| err.is_cancelled()), "cancelled");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !manager.is_loaded(project.id, "ns").await {
        assert!(
            std::time::Instant::now() < deadline,
            "the load went on without its caller"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(manager.status(project.id, "ns").await.expect("loaded").records, 6_000);

    // Cancelled again, then the namespace deleted and made again: its next load serves
    // the new life.
    manager.forget_namespace(project.id, "ns").await;
    let load = loading(&manager, &project).await;
    load.abort();
    assert!(store.delete_namespace(project.id, "ns").await.expect("delete"));
    manager.forget_namespace(project.id, "ns").await;
    store
        .upsert(project.id, "ns", &writes(7_000..7_001))
        .await
        .expect("again");
    assert_eq!(found(&manager, &project, 7_000, false).await.as_deref(), Some("r7000"));
    assert_eq!(manager.status(project.id, "ns").await.expect("loaded").records, 1);
}

/// A namespace deleted and made again while a pod replays it, without the pod hearing
/// of either, never mixes the two lives in one index.
async fn a_namespace_made_again_mid_replay_is_read_again(store: Arc<dyn Store>) {
    let project = project(store.as_ref()).await;
    // Twelve writes: the replay reads them a few pages at a time.
    for part in 0..12 {
        store
            .upsert(project.id, "ns", &writes(part * 1_000..(part + 1) * 1_000))
            .await
            .expect("upsert");
    }
    let manager = Arc::new(IndexManager::new(Arc::clone(&store), 1 << 30));
    let load = loading(&manager, &project).await;
    assert!(store.delete_namespace(project.id, "ns").await.expect("delete"));
    // The new life's seqs pass the old one's soon: ten writes of one record.
    for i in 10_000..10_010 {
        store.upsert(project.id, "ns", &writes(i..i + 1)).await.expect("again");
    }
    let epoch = store
        .namespace(project.id, "ns")
        .await
        .expect("state")
        .expect("exists")
        .epoch;
    // Never the two lives in one index. The load ends with the old life whole (its last
    // page read before the delete: this pod heard of none), or reads the namespace
    // again: gone (between the delete and the new life's first write), or the new life,
    // some of its writes.
    if let Some(loaded) = load.await.expect("the load") {
        let len = loaded.index.len();
        if loaded.index.epoch() == epoch {
            assert!((1..=10).contains(&len), "{len} records of the new life");
        } else {
            assert_eq!(len, 12_000, "the old life whole, nothing of the new");
        }
    }
    // A strong read catches up with the new life, and eventual reads serve it after.
    assert_eq!(found(&manager, &project, 10_009, true).await.as_deref(), Some("r10009"));
    let nearest_old = found(&manager, &project, 1, false).await.expect("a match");
    assert!(nearest_old.starts_with("r100"), "{nearest_old} is of the old life");
}

on_both_stores!(
    a_write_committed_while_the_index_loads_is_in_it,
    a_namespace_deleted_while_its_index_loads_is_gone,
    a_namespace_made_again_mid_replay_is_read_again,
    a_load_whose_caller_went_away_ends_in_the_cache,
    a_worn_graph_is_rebuilt_aside_and_keeps_the_writes_made_meanwhile,
    a_rebuild_waits_for_room_in_the_memory_budget,
    replacing_a_fifth_of_the_records_tunes_the_search_width_again,
    searches_beside_a_catch_up_answer_from_memory_without_waiting,
    a_replayed_load_reports_its_tuning_until_the_width_is_settled,
    loads_from_the_snapshot_plus_the_writes_after_it,
    an_index_behind_the_horizon_reloads_from_the_snapshot,
    a_reload_without_a_usable_snapshot_rebuilds_from_the_records,
    a_replay_from_the_first_change_reads_past_a_discarded_snapshots_horizon,
    an_unusable_snapshot_is_ignored_and_replaced,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_background_task_snapshots_indexes_that_changed() {
    let fixture = SqliteFixture::new().await;
    let store = Arc::clone(&fixture.store);
    let project = project(store.as_ref()).await;
    store.upsert(project.id, "ns", &writes(0..50)).await.expect("upsert");
    let manager = Arc::new(IndexManager::new(Arc::clone(&store), 1 << 30));
    let policy = SnapshotPolicy {
        interval: Duration::from_millis(20),
        min_changes: 40,
        max_age: Duration::from_secs(3600),
    };
    let task = IndexManager::run_maintenance(Arc::downgrade(&manager), policy).expect("runs");
    assert_eq!(found(&manager, &project, 3, false).await.as_deref(), Some("r3"));

    let snapshotted = |seq: i64| {
        let manager = Arc::clone(&manager);
        async move {
            for _ in 0..500 {
                if manager
                    .status(project.id, "ns")
                    .await
                    .is_some_and(|s| s.snapshot_seq == seq)
                {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            false
        }
    };
    assert!(snapshotted(1).await, "50 changes applied: due");
    assert_eq!(
        store
            .snapshot(project.id, "ns")
            .await
            .expect("read")
            .expect("stored")
            .seq,
        1
    );

    // Below the threshold nothing is stored; past it, the next round stores.
    store.upsert(project.id, "ns", &writes(50..60)).await.expect("upsert");
    assert_eq!(found(&manager, &project, 55, true).await.as_deref(), Some("r55"));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        store
            .snapshot(project.id, "ns")
            .await
            .expect("read")
            .expect("stored")
            .seq,
        1
    );
    store.upsert(project.id, "ns", &writes(60..100)).await.expect("upsert");
    assert_eq!(found(&manager, &project, 99, true).await.as_deref(), Some("r99"));
    assert!(snapshotted(3).await, "50 more changes: due again");

    drop(manager);
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the task ends with its manager")
        .expect("task");
}

/// Chunks of an upload whose pod died before its switch point to no snapshot: once the
/// upload is old enough to be abandoned (its id is a UUIDv7 of when it began), they
/// are deleted; a recent one, maybe still uploading, is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunks_of_abandoned_uploads_are_deleted() {
    let fixture = SqliteFixture::new().await;
    let store = Arc::clone(&fixture.store);
    let project = project(store.as_ref()).await;
    store.upsert(project.id, "ns", &writes(0..20)).await.expect("upsert");
    let manager = IndexManager::new(Arc::clone(&store), 1 << 30);
    assert_eq!(found(&manager, &project, 3, false).await.as_deref(), Some("r3"));
    assert_eq!(manager.snapshot_now(project.id, "ns").await.expect("snapshot"), Some(1));

    let url = quiver_store::sqlite::SqliteStore::url_for_data_dir(fixture.dir.path());
    let pool = sqlx::SqlitePool::connect(&url).await.expect("SQLite opens");
    let two_hours_ago = (chrono::Utc::now() - chrono::Duration::hours(2)).timestamp() as u64;
    let abandoned = uuid::Uuid::new_v7(uuid::Timestamp::from_unix(uuid::NoContext, two_hours_ago, 0));
    let uploading = uuid::Uuid::now_v7();
    for id in [abandoned, uploading] {
        for chunk in 0..2 {
            sqlx::query(
                "INSERT INTO snapshot_chunks (snapshot_id, chunk, project_id, namespace, bytes) VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(id)
            .bind(chunk)
            .bind(project.id.0)
            .bind("ns")
            .bind(vec![7u8; 16])
            .execute(&pool)
            .await
            .expect("insert a chunk");
        }
    }
    let left = async || -> Vec<uuid::Uuid> {
        sqlx::query_scalar("SELECT DISTINCT snapshot_id FROM snapshot_chunks ORDER BY snapshot_id")
            .fetch_all(&pool)
            .await
            .expect("chunks")
    };
    assert_eq!(left().await.len(), 3, "the stored snapshot's, and the two uploads'");
    assert_eq!(
        store
            .purge_orphan_chunks(chrono::Duration::hours(1))
            .await
            .expect("purge"),
        1
    );
    let kept = left().await;
    assert!(!kept.contains(&abandoned) && kept.contains(&uploading), "{kept:?}");
    assert_eq!(kept.len(), 2);
    assert_eq!(
        store
            .purge_orphan_chunks(chrono::Duration::hours(1))
            .await
            .expect("purge"),
        0
    );
    // The stored snapshot still loads.
    let next = IndexManager::new(Arc::clone(&store), 1 << 30);
    assert_eq!(found(&next, &project, 3, false).await.as_deref(), Some("r3"));
    assert_eq!(
        next.status(project.id, "ns").await.expect("loaded").from,
        LoadedFrom::Snapshot(1)
    );
    pool.close().await;
}

/// A restore holds a snapshot's bytes and the index made from them at once, outside
/// the cache's budget: restores running together stay within the budget. With room
/// in it for two restores' worth, four namespaces searched at once restore two at a
/// time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restores_running_together_stay_within_the_memory_budget() {
    use sqlx::Connection as _;
    const WIDE: usize = 1024;
    let fixture = quiver_tests::stores::PostgresFixture::new().await;
    let store = Arc::clone(&fixture.store);
    let project = quiver_tests::stores::project(store.as_ref(), WIDE as u32, Metric::Euclidean, "business").await;
    let wide = |i: usize| -> Vec<f32> { (0..WIDE).map(|d| ((i * 31 + d * 7) % 1000 + i) as f32).collect() };
    let search = |i: usize| Query {
        vector: wide(i),
        ..nearest(vector(i), false)
    };
    let namespaces = ["a", "b", "c", "d"];
    let writer = IndexManager::new(Arc::clone(&store), 1 << 30);
    let mut restored = 0;
    for namespace in namespaces {
        let records: Vec<RecordWrite> = (0..2_000)
            .map(|i| RecordWrite {
                id: format!("r{i}"),
                vector: wide(i),
                metadata: Default::default(),
                content: None,
            })
            .collect();
        store.upsert(project.id, namespace, &records).await.expect("upsert");
        writer
            .search(&project, namespace, search(1))
            .await
            .expect("search")
            .expect("namespace");
        assert!(
            writer
                .snapshot_now(project.id, namespace)
                .await
                .expect("snapshot")
                .is_some()
        );
        // As a pod restores it: what its index takes in memory then.
        let probe = IndexManager::new(Arc::clone(&store), 1 << 30);
        probe
            .search(&project, namespace, search(1))
            .await
            .expect("search")
            .expect("namespace");
        probe.settle().await;
        restored = restored.max(probe.memory_bytes());
    }
    // A restore takes twice its snapshot's size, in whole MiB; the four graphs differ a
    // little, and so may their snapshots' sizes.
    let mib = |bytes: u64| bytes.div_ceil(1 << 20);
    let mut weights = Vec::new();
    for namespace in namespaces {
        let size = store
            .snapshot_size(project.id, namespace)
            .await
            .expect("size")
            .expect("a snapshot");
        weights.push(mib(2 * size));
    }
    let (lightest, heaviest) = (*weights.iter().min().expect("4"), *weights.iter().max().expect("4"));
    // A budget that holds any one of the indexes, and any two restores but no three.
    let budget = (2 * heaviest) << 20;
    assert!(
        restored <= budget && 3 * lightest > mib(budget),
        "a budget of {budget} bytes for restores of {weights:?} MiB and indexes of {restored} bytes"
    );

    // The snapshots' chunks locked away: each restore begun waits on the lock in
    // Postgres, where the waiting can be counted.
    let mut lock = sqlx::PgConnection::connect(fixture.database.url())
        .await
        .expect("connects");
    sqlx::query("BEGIN").execute(&mut lock).await.expect("begin");
    sqlx::query("LOCK TABLE snapshot_chunks IN ACCESS EXCLUSIVE MODE")
        .execute(&mut lock)
        .await
        .expect("the lock");
    let pod = IndexManager::new(Arc::clone(&store), budget);
    let searches: Vec<_> = namespaces
        .into_iter()
        .map(|namespace| {
            let (pod, project, query) = (pod.clone(), project.clone(), search(1));
            tokio::spawn(async move { pod.search(&project, namespace, query).await })
        })
        .collect();
    // Counted from a connection of its own: inside the lock's transaction,
    // pg_stat_activity would answer the same snapshot every time.
    let mut watch = sqlx::PgConnection::connect(fixture.database.url())
        .await
        .expect("connects");
    let waiting =
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'";
    // Until two restores wait (on a busy machine they may take a while to get there),
    // then a second more: none beyond them starts.
    let (mut most, mut settled, deadline) = (0, None, std::time::Instant::now() + Duration::from_secs(30));
    loop {
        let now: i64 = sqlx::query_scalar(waiting).fetch_one(&mut watch).await.expect("count");
        most = most.max(now);
        let at = std::time::Instant::now();
        match settled {
            None if most >= 2 => settled = Some(at + Duration::from_secs(1)),
            Some(end) if at >= end => break,
            _ if at >= deadline => break,
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // None would be no restore at all (a replay reads no chunks); four, no bound.
    assert_eq!(most, 2, "restores waiting on the snapshots' chunks at once");
    sqlx::query("COMMIT").execute(&mut lock).await.expect("commit");

    for (namespace, search) in namespaces.into_iter().zip(searches) {
        let outcome = search
            .await
            .expect("the search's task")
            .expect("search")
            .expect("namespace");
        assert_eq!(outcome.matches[0].id, "r1", "{namespace}");
    }
}
