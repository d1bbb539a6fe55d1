//! What the rate limiter costs per request: the in-memory budget (standalone, and a
//! cluster pod's fallback), and a cluster pod's budget when the request is covered by
//! its lease (no Redis round trip) or needs one (a Lua GCRA call to Redis).
//!
//! Run: `cargo bench -p quiver-data-plane --bench limits` (the Redis cases need
//! `REDIS_URL`, e.g. redis://127.0.0.1:6379).

use criterion::{Criterion, criterion_group, criterion_main};
use quiver_common::domain::ProjectId;
use quiver_data_plane::limits::{Budget, Kind, LocalBudget, RedisBudget};

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let local = LocalBudget::default();
    let projects: Vec<ProjectId> = (0..1000).map(|_| ProjectId::new()).collect();
    let mut i = 0;
    // A quota no benchmark exhausts, so every call is an admission.
    c.bench_function("local budget: admit one query (1,000 projects)", |b| {
        b.iter(|| {
            i = (i + 1) % projects.len();
            local.take_now(projects[i], Kind::Queries, u32::MAX, 1)
        })
    });

    let Ok(url) = std::env::var("REDIS_URL") else {
        eprintln!("REDIS_URL is not set: skipping the Redis budget cases");
        return;
    };
    let prefix = format!("quiver-bench:{}:", uuid::Uuid::new_v4().simple());
    let redis = runtime
        .block_on(RedisBudget::connect(&url, &prefix, 1))
        .expect("Redis budget");
    let project = ProjectId::new();
    // A quota the benchmark cannot spend (it would then measure refusals, each a round
    // trip), leased 21 million at a time: nearly every call is served from the lease
    // without awaiting anything, so it is polled once, outside a runtime (whose
    // per-iteration overhead would otherwise dominate); the rare refill goes to Redis.
    let _context = runtime.enter();
    c.bench_function("redis budget: admit one query from the lease", |b| {
        b.iter(|| {
            let take = redis.take(project, Kind::Queries, u32::MAX, 1);
            futures::FutureExt::now_or_never(take)
                .unwrap_or_else(|| runtime.block_on(redis.take(project, Kind::Queries, u32::MAX, 1)))
        })
    });
    // 30 a minute leases one at a time: every call asks Redis.
    let slow = ProjectId::new();
    c.bench_function("redis budget: a round trip to Redis (refused)", |b| {
        b.to_async(&runtime).iter(|| redis.take(slow, Kind::Queries, 30, 1))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
