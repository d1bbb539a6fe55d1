//! Killing a writer with SIGKILL loses no acknowledged write and leaves no half batch.

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use quiver_common::domain::Metric;
use quiver_store::{NewProject, Store};
use quiver_tests::crash::{BATCH, NAMESPACE, batch};
use quiver_tests::stores::{PostgresFixture, SqliteFixture};

async fn project(store: &dyn Store) -> quiver_common::domain::ProjectId {
    let user = store.create_user("crash@example.com", "hash").await.expect("user");
    store
        .create_project(NewProject {
            owner_id: user.id,
            name: "crash".into(),
            dimension: 8,
            metric: Metric::Euclidean,
            plan_id: "starter".into(),
        })
        .await
        .expect("project")
        .id
}

/// Runs the writer against `url`, kills it after `acks` acknowledgements, and
/// returns the last acknowledged (batch, seq).
fn write_then_kill(url: &str, project: &str, acks: u64) -> (u64, i64) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_crash_writer"))
        .args([url, project])
        .stdout(Stdio::piped())
        .spawn()
        .expect("the crash writer starts");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut last = None;
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("a line from the writer");
        let mut parts = line.split_whitespace().skip(1);
        let batch: u64 = parts.next().and_then(|s| s.parse().ok()).expect("ack <batch> <seq>");
        let seq: i64 = parts.next().and_then(|s| s.parse().ok()).expect("ack <batch> <seq>");
        last = Some((batch, seq));
        if batch + 1 >= acks {
            // SIGKILL, not SIGTERM: no destructor, no flush, no goodbye.
            kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL).expect("kill the writer");
            break;
        }
    }
    let status = child.wait().expect("the writer exits");
    assert!(!status.success(), "the writer was killed, not finished: {status}");
    last.expect("the writer acknowledged some writes")
}

/// Whether batch `n` is in the store. It must be all there or not at all: when any of
/// its records are there, every one is, as the writer wrote it, by one write (one seq).
async fn batch_is_there(store: &dyn Store, project: quiver_common::domain::ProjectId, n: u64) -> bool {
    let expected = batch(n);
    let ids: Vec<String> = expected.iter().map(|r| r.id.clone()).collect();
    let found = store.fetch(project, NAMESPACE, &ids).await.expect("fetch");
    if found.is_empty() {
        return false;
    }
    assert_eq!(
        found.len(),
        BATCH,
        "batch {n} is half-written: {} of {BATCH}",
        found.len()
    );
    for (f, e) in found.iter().zip(&expected) {
        assert_eq!(
            (&f.id, &f.vector, &f.metadata, &f.content),
            (&e.id, &e.vector, &e.metadata, &e.content),
            "batch {n} holds a record other than the writer wrote"
        );
    }
    let seqs: std::collections::BTreeSet<i64> = found.iter().map(|f| f.seq).collect();
    assert_eq!(seqs.len(), 1, "batch {n} was not written by one write: seqs {seqs:?}");
    true
}

async fn assert_every_ack_survived(store: Arc<dyn Store>, project: quiver_common::domain::ProjectId, last: (u64, i64)) {
    let (last_batch, last_seq) = last;
    let state = store
        .namespace(project, NAMESPACE)
        .await
        .expect("state")
        .expect("namespace exists");
    assert!(
        state.seq >= last_seq,
        "seq {} went back behind the acknowledged {last_seq}",
        state.seq
    );
    for n in 0..=last_batch {
        assert!(
            batch_is_there(store.as_ref(), project, n).await,
            "acknowledged batch {n} was lost"
        );
    }
    // The writer kept committing between its last ack read and the SIGKILL: every
    // batch after the last acknowledged one is whole or absent, and once one is
    // absent none after it is there (the writer writes them in order, one at a time).
    let mut whole = last_batch + 1;
    while batch_is_there(store.as_ref(), project, whole).await {
        whole += 1;
    }
    let count = store
        .namespaces(project)
        .await
        .expect("namespaces")
        .into_iter()
        .find(|info| info.name == NAMESPACE)
        .expect("the namespace is listed")
        .count;
    assert_eq!(
        count,
        whole * BATCH as u64,
        "batches 0 to {} are whole and batch {whole} absent, so no record past them may be there",
        whole - 1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_keeps_every_acknowledged_write_through_sigkill() {
    let fixture = SqliteFixture::new().await;
    let project = project(fixture.store.as_ref()).await;
    let url = quiver_store::sqlite::SqliteStore::url_for_data_dir(fixture.dir.path());
    fixture.store.close().await;

    let last = write_then_kill(&url, &project.to_string(), 40);

    let reopened = quiver_store::connect(&url)
        .await
        .expect("the database reopens after the crash");
    assert_every_ack_survived(reopened, project, last).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_keeps_every_acknowledged_write_through_sigkill() {
    let fixture = PostgresFixture::new().await;
    let project = project(fixture.store.as_ref()).await;

    let last = write_then_kill(fixture.database.url(), &project.to_string(), 40);

    let reconnected = quiver_store::connect(fixture.database.url()).await.expect("reconnects");
    assert_every_ack_survived(reconnected, project, last).await;
}
