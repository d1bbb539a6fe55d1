//! How many namespaces' indexes a pod holds in its memory budget: loads `--namespaces`
//! namespaces of `--records` vectors each, as a pod loads them (from SQLite, by
//! replay), and reports per index the process's growth in resident memory (as it is,
//! and once the allocator has given its heaps' free memory back) against the weight
//! the budget gives it ([`quiver_engine::NamespaceIndex::memory_bytes`]) and the bytes
//! usearch counts in use; then loads them all again on a manager with
//! `--index-memory-mib` and reports how many it holds.
//!
//! ```sh
//! cargo run --release -p quiver-bench --bin index-density -- --namespaces 200 --records 100 --dim 384
//! ```

use std::sync::Arc;

use clap::Parser;
use quiver_engine::{Filter, IndexManager, Query};
use quiver_store::RecordWrite;

#[derive(Parser)]
struct Args {
    /// Namespaces to load.
    #[arg(long, default_value_t = 200)]
    namespaces: usize,
    /// Vectors in each.
    #[arg(long, default_value_t = 100)]
    records: usize,
    #[arg(long, default_value_t = 384)]
    dim: usize,
    /// The budget of the second pass, in MiB.
    #[arg(long, default_value_t = 512)]
    index_memory_mib: u64,
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dir = tempfile::tempdir()?;
    let store = quiver_bench::sqlite_store(dir.path()).await?;
    let project = quiver_bench::create_project(store.as_ref(), args.dim).await?;

    eprintln!(
        "writing {} namespaces of {} × {}-d vectors…",
        args.namespaces, args.records, args.dim
    );
    let names: Vec<String> = (0..args.namespaces).map(|n| format!("ns{n}")).collect();
    for (n, namespace) in names.iter().enumerate() {
        let vectors = quiver_bench::clustered_unit_vectors(args.records, args.dim, 10, n as u64);
        let records: Vec<RecordWrite> = vectors
            .into_iter()
            .enumerate()
            .map(|(i, vector)| RecordWrite {
                id: format!("r{i}"),
                vector,
                metadata: Default::default(),
                content: None,
            })
            .collect();
        for batch in records.chunks(1_000) {
            store.upsert(project.id, namespace, batch).await?;
        }
    }
    let vector = quiver_bench::clustered_unit_vectors(1, args.dim, 10, u64::MAX).remove(0);
    let query = || Query {
        vector: vector.clone(),
        k: 10,
        filter: Arc::new(Filter::All),
        include_values: false,
        strong: false,
    };

    // Every index held: what each adds to the process, against what it weighs. Taken
    // over the second half, so that what the process grows by once (the allocator's
    // per-thread arenas, the store's connections and caches) is not counted.
    eprintln!("loading them all…");
    let roomy = IndexManager::new(Arc::clone(&store), 1 << 40);
    let (first, second) = names.split_at(args.namespaces / 2);
    for namespace in first {
        roomy.search(&project, namespace, query()).await?;
    }
    roomy.settle().await;
    let before = trimmed_resident_bytes();
    let (weighed_before, used_before) = (roomy.memory_bytes(), roomy.used_bytes());
    for namespace in second {
        roomy.search(&project, namespace, query()).await?;
    }
    roomy.settle().await;
    let per_index = |bytes: f64| bytes / second.len() as f64;
    let resident = per_index(quiver_bench::resident_bytes() - before);
    let trimmed = per_index(trimmed_resident_bytes() - before);
    let weighed = per_index((roomy.memory_bytes() - weighed_before) as f64);
    let used = per_index((roomy.used_bytes() - used_before) as f64);
    drop(roomy);

    // The same namespaces on a pod of `--index-memory`.
    let budget = args.index_memory_mib << 20;
    let pod = IndexManager::new(Arc::clone(&store), budget);
    for namespace in &names {
        pod.search(&project, namespace, query()).await?;
    }
    pod.settle().await;
    let mut held = 0;
    for namespace in &names {
        held += usize::from(pod.is_loaded(project.id, namespace).await);
    }

    let kib = |bytes: f64| bytes / 1024.0;
    println!(
        "| {} × {}-d | {:.0} KiB | {:.0} KiB | {:.0} KiB | {:.0} KiB | {held} of {} in {} MiB |",
        args.records,
        args.dim,
        kib(resident),
        kib(trimmed),
        kib(weighed),
        kib(used),
        args.namespaces,
        args.index_memory_mib,
    );
    println!(
        "(vectors an index; resident memory an index, and with the heap's free memory given back; weighed by the budget; in use by usearch's count; held by a pod)"
    );
    Ok(())
}

/// Resident memory once the allocator has given the free memory of its heaps back to
/// the system: what the indexes hold, without what loading them allocated and freed.
fn trimmed_resident_bytes() -> f64 {
    // SAFETY: malloc_trim only returns free memory to the system; no pointer changes.
    unsafe { libc::malloc_trim(0) };
    quiver_bench::resident_bytes()
}
