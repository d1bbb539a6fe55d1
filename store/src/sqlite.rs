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

    /// A write transaction, holding SQLite's write lock from its first statement. A
    /// deferred one that reads first cannot wait for another connection's write lock
    /// (SQLite answers busy at once rather than risk a deadlock); this one waits for it
    /// (the busy timeout) like any writer.
    async fn begin_write(&self) -> StoreResult<Tx<'static>> {
        Ok(self.writer.begin_with("BEGIN IMMEDIATE").await?)
    }

    /// Tests `id` against a JSON array of ids bound at `param`.
    fn ids_in(param: &str) -> String {
        format!("id IN (SELECT value FROM json_each({param}))")
    }

    /// Nothing to do: every write goes through the one writer connection, so writes
    /// already take turns (see `Records::upsert_within`).
    async fn lock_project(_tx: &mut Tx<'_>, _project: ProjectId) -> StoreResult<()> {
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
        // Many rows a statement: each statement is a round trip to sqlx's SQLite
        // thread, which cost more than the row itself when each row had its own.
        for rows in batch.chunks(ROWS_PER_INSERT) {
            let mut insert = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
                "INSERT INTO records (project_id, namespace, id, vector, metadata, content, seq, deleted, created_at, updated_at) ",
            );
            insert.push_values(rows, |mut row, record| {
                row.push_bind(project.0)
                    .push_bind(namespace)
                    .push_bind(&record.id)
                    .push_bind(crate::encode_vector(&record.vector))
                    .push_bind(Json(&record.metadata))
                    .push_bind(&record.content)
                    .push_bind(seq)
                    .push("FALSE")
                    .push_bind(now)
                    .push_bind(now);
            });
            insert.push(UPSERT_CONFLICT);
            insert.build().execute(&mut **tx).await?;
        }
        Ok(())
    }
}

/// Rows an insert statement takes: 9 parameters each, well under SQLite's limit.
const ROWS_PER_INSERT: usize = 100;

/// What an insert does with a row whose id is there already (deleted or not). SQLite
/// applies it row by row, so it also holds between two rows of one statement.
const UPSERT_CONFLICT: &str = "
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
