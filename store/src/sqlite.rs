//! The SQLite backend, for standalone mode: one file under the data dir, WAL journal,
//! `synchronous = FULL` so an acknowledged write survives a crash or power loss.
//!
//! Writes go through a pool of one connection, so writers queue in the process
//! instead of failing with `SQLITE_BUSY`; reads use a separate pool and, thanks to
//! WAL, never wait for writers. Other processes (the `quiver keys` CLI) wait on the
//! busy timeout.

use std::path::Path;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};

use crate::sql::sql_store;

/// Quiver's storage on a SQLite file.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    reader: SqlitePool,
    writer: SqlitePool,
}

/// The database file's name inside a data dir.
pub const DATABASE_FILE: &str = "quiver.db";

impl SqliteStore {
    /// The URL of the database inside a data dir.
    pub fn url_for_data_dir(data_dir: &Path) -> String {
        format!("sqlite://{}", data_dir.join(DATABASE_FILE).display())
    }

    /// Opens (creating if missing) the database at a `sqlite://PATH` URL.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let options: SqliteConnectOptions = url
            .parse()
            .map_err(|err| StoreError::Config(format!("invalid SQLite URL \"{url}\": {err}")))?;
        let options = options
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let open_error = |err: sqlx::Error| match err {
            sqlx::Error::Database(db) => StoreError::Config(format!(
                "cannot open the SQLite database {}: {}",
                options.get_filename().display(),
                db.message()
            )),
            other => other.into(),
        };
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options.clone())
            .await
            .map_err(open_error)?;
        let reader = SqlitePoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options.clone())
            .await
            .map_err(open_error)?;
        Ok(Self { reader, writer })
    }

    fn reader(&self) -> &SqlitePool {
        &self.reader
    }

    fn writer(&self) -> &SqlitePool {
        &self.writer
    }

    /// Tests `id` against a JSON array of ids bound at `param`.
    fn ids_in(param: &str) -> String {
        format!("id IN (SELECT value FROM json_each({param}))")
    }

    async fn insert_records(
        tx: &mut Tx<'_>,
        project: ProjectId,
        namespace: &str,
        seq: i64,
        now: DateTime<Utc>,
        batch: &[&RecordWrite],
    ) -> StoreResult<()> {
        // One prepared statement per row: SQLite is in-process, so rows cost
        // microseconds and no round trip.
        for record in batch {
            sqlx::query(UPSERT_RECORD)
                .bind(project.0)
                .bind(namespace)
                .bind(&record.id)
                .bind(crate::encode_vector(&record.vector))
                .bind(Json(&record.metadata))
                .bind(&record.content)
                .bind(seq)
                .bind(now)
                .execute(&mut **tx)
                .await?;
        }
        Ok(())
    }
}

const UPSERT_RECORD: &str = "
    INSERT INTO records (project_id, namespace, id, vector, metadata, content, seq, deleted, created_at, updated_at)
    VALUES ($1, $2, $3, $4, $5, $6, $7, FALSE, $8, $8)
    ON CONFLICT (project_id, namespace, id) DO UPDATE SET
        vector = excluded.vector, metadata = excluded.metadata, content = excluded.content,
        seq = excluded.seq, updated_at = excluded.updated_at,
        created_at = CASE WHEN records.deleted THEN excluded.created_at ELSE records.created_at END,
        deleted = FALSE";

sql_store!(SqliteStore, sqlx::Sqlite);

#[async_trait]
impl quiver_common::http::ReadinessCheck for SqliteStore {
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
impl crate::Store for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    async fn migrate(&self) -> StoreResult<()> {
        sqlx::migrate!("../migrations/sqlite").run(&self.writer).await?;
        Ok(())
    }

    async fn close(&self) {
        self.writer.close().await;
        self.reader.close().await;
    }
}
