//! The Postgres backend, for cluster mode: every pod reads and writes the same
//! database, which is the source of truth for the catalog and the records.

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use crate::sql::sql_store;

/// Quiver's storage on Postgres.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    /// Reads outside a write (searches catching up, fetches, listings, the catalog).
    reader: PgPool,
    /// Writes. A pool of their own, because a writer keeps its connection while it
    /// waits for a row lock (its project's, its namespace's): a pile of one project's
    /// writes taking turns would otherwise hold every connection, and every tenant's
    /// reads on the pod would time out waiting for one.
    writer: PgPool,
}

/// Connections a pod holds at most: reads, writes.
const READ_CONNECTIONS: u32 = 8;
const WRITE_CONNECTIONS: u32 = 12;

impl PostgresStore {
    /// Connects to a `postgres://` URL; fails fast when the server does not answer.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let options: PgConnectOptions = url
            .parse()
            .map_err(|err| StoreError::Config(format!("invalid DATABASE_URL \"{}\": {err}", crate::redact_url(url))))?;
        let pool = |connections| {
            PgPoolOptions::new()
                .max_connections(connections)
                .acquire_timeout(Duration::from_secs(5))
                .connect_with(options.clone())
        };
        let connected = async { Ok::<_, sqlx::Error>((pool(READ_CONNECTIONS).await?, pool(WRITE_CONNECTIONS).await?)) };
        let (reader, writer) = connected.await.map_err(|err| match err {
            sqlx::Error::Database(db) => StoreError::Config(format!(
                "cannot use the database at {}: {}",
                crate::redact_url(url),
                db.message()
            )),
            other => StoreError::Unavailable(format!(
                "{}: {other}; check DATABASE_URL and that Postgres is running",
                crate::redact_url(url)
            )),
        })?;
        Ok(Self { reader, writer })
    }

    fn reader(&self) -> &PgPool {
        &self.reader
    }

    fn writer(&self) -> &PgPool {
        &self.writer
    }

    async fn begin_write(&self) -> StoreResult<Tx<'static>> {
        Ok(self.writer.begin().await?)
    }

    /// Tests `id` against a JSON array of ids bound at `param`.
    fn ids_in(param: &str) -> String {
        format!("id IN (SELECT jsonb_array_elements_text(CAST({param} AS jsonb)))")
    }

    /// Holds the project's row until the transaction ends: the project's capped
    /// writes take turns (see `Records::upsert_within`).
    async fn lock_project(tx: &mut Tx<'_>, project: ProjectId) -> StoreResult<()> {
        // NO KEY UPDATE: capped writers take turns on it, while the foreign-key checks
        // of other writes (KEY SHARE on the project's row) go on. FOR UPDATE blocked
        // them: a write updating its namespace's row a second time (its live count)
        // checks the key, and waited on a capped writer that waited on that row.
        sqlx::query("SELECT id FROM projects WHERE id = $1 FOR NO KEY UPDATE")
            .bind(project.0)
            .fetch_optional(&mut **tx)
            .await?;
        Ok(())
    }

    async fn insert_records(
        tx: &mut Tx<'_>,
        project: ProjectId,
        namespace: &str,
        seq: i64,
        now: DateTime<Utc>,
        batch: &[&RecordWrite],
    ) -> StoreResult<()> {
        // One statement for the whole batch: a round trip per row would dominate.
        let ids: Vec<&str> = batch.iter().map(|r| r.id.as_str()).collect();
        let vectors: Vec<Vec<u8>> = batch.iter().map(|r| crate::encode_vector(&r.vector)).collect();
        let metadata: Vec<String> = batch
            .iter()
            .map(|r| serde_json::Value::Object(r.metadata.clone()).to_string())
            .collect();
        let contents: Vec<Option<&str>> = batch.iter().map(|r| r.content.as_deref()).collect();
        sqlx::query(
            "INSERT INTO records (project_id, namespace, id, vector, metadata, content, seq, deleted, created_at, updated_at)
             SELECT $1, $2, r.id, r.vector, CAST(r.metadata AS jsonb), r.content, $3, FALSE, $4, $4
             FROM UNNEST($5::text[], $6::bytea[], $7::text[], $8::text[]) AS r (id, vector, metadata, content)
             ON CONFLICT (project_id, namespace, id) DO UPDATE SET
                 vector = excluded.vector, metadata = excluded.metadata, content = excluded.content,
                 seq = excluded.seq, updated_at = excluded.updated_at,
                 created_at = CASE WHEN records.deleted THEN excluded.created_at ELSE records.created_at END,
                 deleted = FALSE",
        )
        .bind(project.0)
        .bind(namespace)
        .bind(seq)
        .bind(now)
        .bind(&ids)
        .bind(&vectors)
        .bind(&metadata)
        .bind(&contents)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }
}

sql_store!(PostgresStore, sqlx::Postgres);

#[async_trait]
impl quiver_common::http::ReadinessCheck for PostgresStore {
    fn name(&self) -> &'static str {
        "storage"
    }

    async fn check(&self) -> Result<(), String> {
        sqlx::query("SELECT 1")
            .execute(&self.reader)
            .await
            .map(drop)
            .map_err(|err| err.to_string())
    }
}

#[async_trait]
impl crate::Store for PostgresStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    async fn migrate(&self) -> StoreResult<()> {
        // sqlx holds an advisory lock while migrating, so pods starting together are safe.
        sqlx::migrate!("../migrations/postgres").run(&self.writer).await?;
        Ok(())
    }

    async fn close(&self) {
        self.reader.close().await;
        self.writer.close().await;
    }
}
