use std::sync::Arc;

use quiver_store::Store;
use quiver_store::conformance::StoreFixture;
use quiver_store::sqlite::SqliteStore;

use crate::postgres::TestDatabase;

/// A migrated SQLite store in a temporary data dir.
pub struct SqliteFixture {
    pub store: Arc<dyn Store>,
    pub dir: tempfile::TempDir,
}

impl SqliteFixture {
    pub async fn new() -> Self {
        let dir = tempfile::tempdir().expect("a temp dir");
        let store = quiver_store::connect(&SqliteStore::url_for_data_dir(dir.path()))
            .await
            .expect("SQLite opens");
        store.migrate().await.expect("SQLite migrates");
        Self { store, dir }
    }
}

impl SqliteFixture {
    /// Runs a statement on the store's database behind its back (to damage it, say).
    pub async fn execute(&self, statement: &str) {
        use sqlx::Connection;
        let url = SqliteStore::url_for_data_dir(self.dir.path());
        let mut connection = sqlx::SqliteConnection::connect(&url).await.expect("SQLite opens");
        sqlx::query(statement)
            .execute(&mut connection)
            .await
            .expect("the statement runs");
    }
}

impl StoreFixture for SqliteFixture {
    fn store(&self) -> Arc<dyn Store> {
        Arc::clone(&self.store)
    }
}

/// A migrated Postgres store in a database of its own.
pub struct PostgresFixture {
    pub store: Arc<dyn Store>,
    // Declared after the store: fields drop in order, so the pool closes first.
    pub database: TestDatabase,
}

impl PostgresFixture {
    pub async fn new() -> Self {
        let database = TestDatabase::create().await;
        let store = quiver_store::connect(database.url()).await.expect("Postgres connects");
        store.migrate().await.expect("Postgres migrates");
        Self { store, database }
    }
}

impl PostgresFixture {
    /// Runs a statement on the store's database behind its back (to damage it, say).
    pub async fn execute(&self, statement: &str) {
        use sqlx::Connection;
        let mut connection = sqlx::PgConnection::connect(self.database.url())
            .await
            .expect("Postgres connects");
        sqlx::query(statement)
            .execute(&mut connection)
            .await
            .expect("the statement runs");
    }
}

impl StoreFixture for PostgresFixture {
    fn store(&self) -> Arc<dyn Store> {
        Arc::clone(&self.store)
    }
}

/// A project of `dimension`-d vectors by `metric` on `plan`, owned by an account of its
/// own, made in the store directly.
pub async fn project(
    store: &dyn Store,
    dimension: u32,
    metric: quiver_common::domain::Metric,
    plan: &str,
) -> quiver_store::Project {
    let user = store
        .create_user(&format!("{}@example.com", uuid::Uuid::now_v7()), "h")
        .await
        .expect("user");
    store
        .create_project(quiver_store::NewProject {
            owner_id: user.id,
            name: format!("{dimension}-d {metric}"),
            dimension,
            metric,
            plan_id: plan.to_owned(),
        })
        .await
        .expect("project")
}
