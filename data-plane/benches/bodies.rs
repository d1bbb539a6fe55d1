//! What reading a request body costs before anything else happens: a search with a
//! 768-d query, and an upsert of 500 such vectors, their numbers written as embedding
//! APIs and Python's `json` write them (each f32 as its 17-digit double). Each is
//! read the whole-body way (serde_json, number by number) and the way the handlers
//! read it, with the vectors' numbers lifted out first ([`quiver_data_plane::vector_json`]).
//!
//! Run: `cargo bench -p quiver-data-plane --bench bodies`

use axum::http::{HeaderMap, HeaderValue, header};
use criterion::{Criterion, criterion_group, criterion_main};
use quiver_data_plane::json::parse_body;
use quiver_data_plane::vectors::{SearchRequest, UpsertRequest};
use rand::{Rng, SeedableRng};
use serde_json::json;

/// A random 768-d unit vector, as JSON numbers.
fn vector(rng: &mut impl Rng) -> serde_json::Value {
    let values: Vec<f32> = (0..768).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    let norm = values.iter().map(|x| x * x).sum::<f32>().sqrt();
    // f32 → f64 → JSON: the double's shortest form, as Python prints a float32's value.
    json!(values.iter().map(|x| f64::from(x / norm)).collect::<Vec<f64>>())
}

fn bench(c: &mut Criterion) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));

    let search = json!({"namespace": "bench", "vector": vector(&mut rng), "top_k": 10, "include_metadata": false})
        .to_string()
        .into_bytes();
    let mut group = c.benchmark_group(format!("search body, 768 numbers, {} bytes", search.len()));
    group.bench_function("serde_json, whole body", |b| {
        b.iter(|| parse_body::<SearchRequest>(&headers, &search).expect("parses"))
    });
    group.bench_function("vector lifted, rest by serde_json", |b| {
        b.iter(|| SearchRequest::read(&headers, &search).expect("parses"))
    });
    // One body over and over lets the branch predictor learn its numbers' digits,
    // which a server's stream of distinct queries never does: read 64 distinct
    // bodies in turn (1 MB, about what a core's cache holds).
    let searches: Vec<Vec<u8>> = (0..64)
        .map(|_| {
            json!({"namespace": "bench", "vector": vector(&mut rng), "top_k": 10, "include_metadata": false})
                .to_string()
                .into_bytes()
        })
        .collect();
    let mut turn = 0;
    group.bench_function("vector lifted, 64 distinct bodies in turn", |b| {
        b.iter(|| {
            turn = (turn + 1) % searches.len();
            SearchRequest::read(&headers, &searches[turn]).expect("parses")
        })
    });
    group.finish();

    let vectors: Vec<serde_json::Value> = (0..500)
        .map(|i| json!({"id": format!("doc-{i}"), "values": vector(&mut rng), "metadata": {"i": i}}))
        .collect();
    let upsert = json!({"namespace": "bench", "vectors": vectors})
        .to_string()
        .into_bytes();
    let mut group = c.benchmark_group(format!("upsert body, 500 × 768 numbers, {} bytes", upsert.len()));
    group.sample_size(20);
    group.bench_function("serde_json, whole body", |b| {
        b.iter(|| parse_body::<UpsertRequest>(&headers, &upsert).expect("parses"))
    });
    group.bench_function("vectors lifted, rest by serde_json", |b| {
        b.iter(|| UpsertRequest::read(&headers, &upsert).expect("parses"))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
