//! Sentences per second for the local model at batch sizes 1 and 32.
//!
//! `cargo bench -p quiver-embed`; the model is pulled into `QUIVER_MODELS_DIR`
//! (default /var/cache/quiver-models) first.

use std::hint::black_box;
use std::path::PathBuf;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use quiver_embed::{DEFAULT_MODEL, EmbedConfig, Embedders, pull};

fn models_dir() -> PathBuf {
    std::env::var_os("QUIVER_MODELS_DIR").map_or_else(|| PathBuf::from("/var/cache/quiver-models"), PathBuf::from)
}

fn sentences(count: usize) -> Vec<String> {
    (0..count)
        .map(|n| format!("document {n}: a vector database stores embeddings and answers nearest-neighbour queries"))
        .collect()
}

fn local_model(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let dir = models_dir();
    runtime
        .block_on(pull(&dir, DEFAULT_MODEL))
        .expect("the model can be pulled");
    let embedders = Embedders::new(EmbedConfig {
        models_dir: dir,
        ..EmbedConfig::default()
    });
    // Load the model outside the measurement.
    runtime
        .block_on(embedders.embed(DEFAULT_MODEL, sentences(1)))
        .expect("embeds");

    let mut group = c.benchmark_group("local/all-minilm-l6-v2");
    group.sample_size(10).measurement_time(Duration::from_secs(10));
    for batch in [1, 32] {
        let texts = sentences(batch);
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_function(format!("batch {batch}"), |b| {
            b.to_async(&runtime)
                .iter(|| async { black_box(embedders.embed(DEFAULT_MODEL, texts.clone()).await.expect("embeds")) });
        });
    }
    group.finish();
}

criterion_group!(benches, local_model);
criterion_main!(benches);
