//! What authenticating a data-plane request costs: a cached API-key check, a project
//! token (JWT) check, and the uncached argon2id verification a cache miss pays.
//!
//! Run: `cargo bench -p quiver-data-plane --bench auth`

use std::collections::BTreeSet;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use quiver_common::domain::{Metric, Role, Scope};
use quiver_common::secrets::{generate_api_key, hash_secret, verify_secret};
use quiver_common::token::JwtKeys;
use quiver_data_plane::auth::Authenticator;
use quiver_store::{NewApiKey, NewProject};

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let jwt = JwtKeys::new(&[42u8; 32]).expect("secret");
    let (auth, key, token) = runtime.block_on(async {
        let store = quiver_store::connect(&quiver_store::sqlite::SqliteStore::url_for_data_dir(dir.path()))
            .await
            .expect("store");
        store.migrate().await.expect("migrate");
        let user = store.create_user("bench@example.com", "h").await.expect("user");
        let project = store
            .create_project(NewProject {
                owner_id: user.id,
                name: "bench".into(),
                dimension: 4,
                metric: Metric::Cosine,
                plan_id: "starter".into(),
            })
            .await
            .expect("project");
        let key = generate_api_key();
        store
            .create_api_key(NewApiKey {
                id: key.id.clone(),
                project_id: project.id,
                label: "bench".into(),
                role: Role::Admin,
                secret_hash: hash_secret(&key.secret),
                expires_at: None,
            })
            .await
            .expect("key");
        let (token, _) = jwt.issue_project_token(
            project.id,
            BTreeSet::from([Scope::Read]),
            None,
            "bench".into(),
            chrono::Duration::hours(1),
        );
        let auth = Arc::new(Authenticator::new(store, jwt.clone()));
        auth.authenticate(&key.full)
            .await
            .expect("the first check verifies and caches");
        (auth, key, token)
    });

    c.bench_function("auth/cached_api_key", |b| {
        b.to_async(&runtime)
            .iter(|| async { auth.authenticate(&key.full).await.expect("valid") })
    });
    c.bench_function("auth/project_token_jwt", |b| {
        b.to_async(&runtime)
            .iter(|| async { auth.authenticate(&token).await.expect("valid") })
    });
    let hash = hash_secret(&key.secret);
    let mut slow = c.benchmark_group("auth/uncached");
    slow.sample_size(10);
    slow.bench_function("argon2id_verify", |b| {
        b.iter(|| assert!(verify_secret(&key.secret, &hash)))
    });
    slow.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
