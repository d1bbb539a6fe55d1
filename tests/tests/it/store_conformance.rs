//! The store conformance suite, once per backend.

mod sqlite {
    quiver_store::store_conformance_suite!(quiver_tests::stores::SqliteFixture::new());
}

mod postgres {
    quiver_store::store_conformance_suite!(quiver_tests::stores::PostgresFixture::new());
}

/// On Postgres, writers waiting on a row lock hold connections of their own pool: a pile
/// of them (one project's writes taking turns) leaves the reads every tenant needs
/// their connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_waiting_on_a_lock_leave_reads_their_connections() {
    use std::sync::Arc;

    use quiver_common::domain::Metric;
    use quiver_store::RecordWrite;
    use sqlx::Connection;

    let fixture = quiver_tests::stores::PostgresFixture::new().await;
    let store = Arc::clone(&fixture.store);
    let project = quiver_tests::stores::project(&*store, 2, Metric::Euclidean, "business").await;
    let write = |i: usize| RecordWrite {
        id: format!("r{i}"),
        vector: vec![i as f32, 1.0],
        metadata: Default::default(),
        content: None,
    };
    store.upsert(project.id, "ns", &[write(0)]).await.expect("upsert");

    // Another session holds the namespace's row, as a long delete of it would.
    let mut holder = sqlx::PgConnection::connect(fixture.database.url())
        .await
        .expect("connects");
    let mut held = holder.begin().await.expect("begin");
    sqlx::query("UPDATE namespaces SET horizon = horizon WHERE project_id = $1 AND name = 'ns'")
        .bind(project.id.0)
        .execute(&mut *held)
        .await
        .expect("lock");
    let writers: Vec<_> = (1..=30)
        .map(|i| {
            let (store, write) = (Arc::clone(&store), write(i));
            tokio::spawn(async move { store.upsert(project.id, "ns", &[write]).await })
        })
        .collect();
    let mut watcher = sqlx::PgConnection::connect(fixture.database.url())
        .await
        .expect("connects");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(&mut watcher)
        .await
        .expect("counts");
        if waiting >= 12 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the writers never queued on the lock"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    // Every write connection is waiting; reads still get theirs.
    let state = store
        .namespace(project.id, "ns")
        .await
        .expect("a read is served")
        .expect("ns");
    assert_eq!(state.seq, 1);
    assert_eq!(
        store
            .fetch(project.id, "ns", &["r0".to_owned()])
            .await
            .expect("fetch")
            .len(),
        1
    );

    held.rollback().await.expect("release");
    let mut written = 0;
    for writer in writers {
        // Those that got a connection write; the rest may have timed out waiting for one.
        if writer.await.expect("the writer").is_ok() {
            written += 1;
        }
    }
    assert!(written >= 12, "{written} writes went in");
}
