//! Indexes live under a per-pod memory budget: the least useful are evicted and
//! load again, from the records store, when next used.

use std::sync::Arc;

use quiver_common::domain::Metric;
use quiver_engine::{Filter, IndexManager, Query};
use quiver_store::RecordWrite;
use quiver_tests::stores::SqliteFixture;

fn query(vector: Vec<f32>) -> Query {
    Query {
        vector,
        k: 1,
        filter: Arc::new(Filter::All),
        include_values: false,
        strong: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn indexes_beyond_the_memory_budget_are_evicted_and_reload_on_use() {
    let fixture = SqliteFixture::new().await;
    let store = Arc::clone(&fixture.store);
    let project = quiver_tests::stores::project(&*store, 64, Metric::Euclidean, "business").await;
    for (n, namespace) in ["a", "b", "c"].iter().enumerate() {
        let records: Vec<RecordWrite> = (0..2_000)
            .map(|i| RecordWrite {
                id: format!("{namespace}{i}"),
                vector: (0..64).map(|d| (n * 1000 + i + d) as f32).collect(),
                metadata: Default::default(),
                content: None,
            })
            .collect();
        store.upsert(project.id, namespace, &records).await.expect("upsert");
    }

    // Measure one index, then give the manager room for about one and a half.
    let probe = IndexManager::new(Arc::clone(&store), 1 << 30);
    probe
        .search(&project, "a", query(vec![0.0; 64]))
        .await
        .expect("search")
        .expect("namespace");
    probe.settle().await;
    let one = probe.memory_bytes();
    assert!(one > 0);
    let budget = one * 3 / 2;
    let manager = IndexManager::new(Arc::clone(&store), budget);

    for namespace in ["a", "b", "c"] {
        let found = manager
            .search(&project, namespace, query(vec![0.0; 64]))
            .await
            .expect("search");
        assert!(found.is_some_and(|f| f.matches.len() == 1), "{namespace} answers");
        manager.settle().await;
        assert!(
            manager.memory_bytes() <= budget,
            "{} bytes held, budget {budget}",
            manager.memory_bytes()
        );
    }
    let loaded = async |manager: &IndexManager| {
        let mut loaded = Vec::new();
        for namespace in ["a", "b", "c"] {
            if manager.is_loaded(project.id, namespace).await {
                loaded.push(namespace);
            }
        }
        loaded
    };
    assert_eq!(loaded(&manager).await, ["c"], "only the last one used fits the budget");

    // An evicted namespace still answers, correctly: it loads again from the store,
    // and the least recently used one makes room for it, however often that one was
    // used before.
    for _ in 0..20 {
        manager
            .search(&project, "c", query(vec![0.0; 64]))
            .await
            .expect("search");
    }
    let first = (0..64).map(|d| d as f32).collect();
    let outcome = manager
        .search(&project, "a", query(first))
        .await
        .expect("search")
        .expect("namespace");
    assert_eq!(outcome.matches[0].id, "a0");
    manager.settle().await;
    assert_eq!(loaded(&manager).await, ["a"], "the index just loaded stays in memory");
}

/// An index larger than the whole budget is refused, a 503 saying so, rather than
/// held: held, it could take the pod, and every tenant it serves, down for memory. The
/// pod keeps what it holds for others, whether the index would come from the records,
/// from a snapshot (refused unread) or grow past the budget by catching up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_larger_than_the_budget_is_refused_and_the_others_kept() {
    let fixture = SqliteFixture::new().await;
    let store = Arc::clone(&fixture.store);
    let project = quiver_tests::stores::project(&*store, 64, Metric::Euclidean, "business").await;
    let records = |namespace: &str, range: std::ops::Range<usize>| -> Vec<RecordWrite> {
        range
            .map(|i| RecordWrite {
                id: format!("{namespace}{i}"),
                vector: (0..64).map(|d| (i + d) as f32).collect(),
                metadata: Default::default(),
                content: None,
            })
            .collect()
    };
    store
        .upsert(project.id, "small", &records("small", 0..10))
        .await
        .expect("upsert");
    store
        .upsert(project.id, "big", &records("big", 0..20_000))
        .await
        .expect("upsert");
    // A budget between the two indexes' weights, measured.
    let weigh = async |namespace: &str| {
        let probe = IndexManager::new(Arc::clone(&store), 1 << 30);
        probe
            .search(&project, namespace, query(vec![0.0; 64]))
            .await
            .expect("search");
        probe.settle().await;
        probe.memory_bytes()
    };
    let (small, big) = (weigh("small").await, weigh("big").await);
    assert!(
        big > small + (1 << 20),
        "the big index is bigger: {big} against {small} bytes"
    );
    let manager = IndexManager::new(Arc::clone(&store), (small + big) / 2);
    let refused = async |manager: &IndexManager, namespace: &str, strong: bool| {
        let outcome = manager
            .search(
                &project,
                namespace,
                Query {
                    strong,
                    ..query(vec![0.0; 64])
                },
            )
            .await;
        let Err(err @ quiver_engine::EngineError::TooLarge { .. }) = outcome else {
            panic!("{namespace} is refused, got {outcome:?}");
        };
        let answer = quiver_common::ApiError::from(err);
        assert_eq!(answer.status(), 503);
        assert!(answer.to_string().contains("--index-memory"), "{answer}");
    };

    let found = manager
        .search(&project, "small", query(vec![0.0; 64]))
        .await
        .expect("search");
    assert!(found.is_some_and(|f| f.matches.len() == 1));
    refused(&manager, "big", false).await;
    manager.settle().await;
    assert!(
        manager.is_loaded(project.id, "small").await,
        "kept, not evicted for a refused index"
    );
    assert!(!manager.is_loaded(project.id, "big").await);

    // From a snapshot a roomier pod stored: as restored, still too large; and a
    // snapshot itself larger than the budget is refused unread.
    let roomy = IndexManager::new(Arc::clone(&store), 1 << 30);
    roomy
        .search(&project, "big", query(vec![0.0; 64]))
        .await
        .expect("search");
    assert!(roomy.snapshot_now(project.id, "big").await.expect("snapshot").is_some());
    refused(&manager, "big", false).await;
    let size = store
        .snapshot_size(project.id, "big")
        .await
        .expect("size")
        .expect("stored");
    let tight = IndexManager::new(Arc::clone(&store), size - 1);
    let outcome = tight.search(&project, "big", query(vec![0.0; 64])).await;
    assert!(
        matches!(outcome, Err(quiver_engine::EngineError::TooLarge { bytes, .. }) if bytes == size),
        "refused for the snapshot's size: {outcome:?}"
    );

    // Grown past the budget by writes another pod made, heard of on a strong read.
    store
        .upsert(project.id, "small", &records("small", 10..20_000))
        .await
        .expect("upsert");
    refused(&manager, "small", true).await;
    manager.settle().await;
    assert!(
        !manager.is_loaded(project.id, "small").await,
        "dropped once it outgrew the budget"
    );
}

/// An index that grows by catching up with writes heard of from other pods (not by
/// this pod's own writes) is weighed again, so the memory budget keeps counting it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_caught_up_with_other_pods_writes_is_weighed_again() {
    let fixture = SqliteFixture::new().await;
    let store = Arc::clone(&fixture.store);
    let project = quiver_tests::stores::project(&*store, 64, Metric::Euclidean, "business").await;
    let records = |range: std::ops::Range<usize>| -> Vec<RecordWrite> {
        range
            .map(|i| RecordWrite {
                id: format!("r{i}"),
                vector: (0..64).map(|d| ((i * 7 + d) % 1000) as f32).collect(),
                metadata: Default::default(),
                content: None,
            })
            .collect()
    };
    store.upsert(project.id, "a", &records(0..200)).await.expect("upsert");
    let manager = IndexManager::new(Arc::clone(&store), 1 << 30);
    manager
        .search(&project, "a", query(vec![0.0; 64]))
        .await
        .expect("search");
    manager.settle().await;
    let small = manager.memory_bytes();

    // Another pod writes, and this one hears of it and catches up on its next search.
    let outcome = store
        .upsert(project.id, "a", &records(200..6_000))
        .await
        .expect("upsert");
    manager.heard_of(project.id, "a", outcome.state).await;
    let found = manager
        .search(&project, "a", query(vec![0.0; 64]))
        .await
        .expect("search")
        .expect("namespace");
    assert_eq!(manager.status(project.id, "a").await.expect("loaded").records, 6_000);
    assert_eq!(found.seq, outcome.state.seq);
    manager.settle().await;
    // The budget counts what the index holds now (in KiB, as the cache weighs it).
    let held = manager
        .open(&project, "a")
        .await
        .expect("open")
        .expect("namespace")
        .index
        .memory_bytes() as u64;
    assert!(held > small, "the index grew: {held} bytes against {small}");
    assert_eq!(
        manager.memory_bytes(),
        held / 1024 * 1024,
        "{small} bytes before catching up"
    );
}

/// Notices a pod missed (the bus was down) are made up by a resync: an index behind
/// its namespace catches up on its next search, and the index of a namespace deleted
/// meanwhile is dropped, instead of serving what it last heard until the next notice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resync_makes_up_for_notices_missed() {
    let fixture = SqliteFixture::new().await;
    let store = Arc::clone(&fixture.store);
    let project = quiver_tests::stores::project(&*store, 2, Metric::Euclidean, "business").await;
    let write = |id: &str, x: f32| RecordWrite {
        id: id.to_owned(),
        vector: vec![x, 0.0],
        metadata: Default::default(),
        content: None,
    };
    store
        .upsert(project.id, "kept", &[write("old", 0.0)])
        .await
        .expect("upsert");
    store
        .upsert(project.id, "gone", &[write("g", 0.0)])
        .await
        .expect("upsert");
    let manager = IndexManager::new(Arc::clone(&store), 1 << 30);
    for namespace in ["kept", "gone"] {
        manager
            .search(&project, namespace, query(vec![0.0, 0.0]))
            .await
            .expect("search")
            .expect("namespace");
    }
    manager.settle().await;

    // Another pod writes to one namespace and deletes the other; no notice comes.
    let outcome = store
        .upsert(project.id, "kept", &[write("new", 10.0)])
        .await
        .expect("upsert");
    assert!(store.delete_namespace(project.id, "gone").await.expect("delete"));
    async fn nearest(manager: &IndexManager, project: &quiver_store::Project) -> (String, i64) {
        let found = manager
            .search(project, "kept", query(vec![10.0, 0.0]))
            .await
            .expect("search")
            .expect("namespace");
        (found.matches[0].id.clone(), found.seq)
    }
    assert_eq!(
        nearest(&manager, &project).await.0,
        "old",
        "unheard of, the write is not served yet"
    );

    manager.resync().await.expect("resync");
    assert_eq!(nearest(&manager, &project).await, ("new".to_owned(), outcome.state.seq));
    manager.settle().await;
    assert!(
        !manager.is_loaded(project.id, "gone").await,
        "the deleted namespace's index is dropped"
    );
    assert!(
        manager
            .search(&project, "gone", query(vec![0.0, 0.0]))
            .await
            .expect("search")
            .is_none(),
        "and it does not come back"
    );
}
