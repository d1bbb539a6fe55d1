use quiver_common::ApiError;

/// What can go wrong in storage, in terms the layers above can act on.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A uniqueness constraint was violated (duplicate email, key id).
    #[error("{0}")]
    Conflict(String),
    /// A reference or check constraint was violated (unknown plan, bad dimension).
    #[error("{0}")]
    Invalid(String),
    /// A write would take a project past its plan's caps (see `Records::upsert_within`).
    #[error("{0}")]
    OverCap(String),
    /// The database cannot be reached: connection refused, pool timed out or closed.
    #[error("the database is unreachable: {0}")]
    Unavailable(String),
    /// The configuration cannot work (bad URL, unwritable path).
    #[error("{0}")]
    Config(String),
    /// The changes asked for reach back past `horizon`, below which a snapshot
    /// compacted the tombstones away: reload the namespace from its snapshot.
    #[error("changes up to seq {horizon} were compacted into a snapshot")]
    Compacted { horizon: i64 },
    /// Anything else, e.g. a corrupt row.
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

impl From<sqlx::Error> for StoreError {
    fn from(err: sqlx::Error) -> Self {
        match &err {
            sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::Conflict(db.message().to_owned()),
            sqlx::Error::Database(db) if db.is_foreign_key_violation() || db.is_check_violation() => {
                StoreError::Invalid(db.message().to_owned())
            }
            // Text Postgres cannot hold (the NUL character): the request's fault. The
            // APIs refuse it before it gets here; this keeps anything missed a 400.
            sqlx::Error::Database(db) if matches!(db.code().as_deref(), Some("22P05" | "22021")) => {
                StoreError::Invalid(format!("a value the store cannot hold: {}", db.message()))
            }
            // The server is going away or cannot take the connection: a connection
            // failure (class 08), an administrator or crash shutdown, a server still
            // starting (57P01-57P03), or its connection slots all taken (53300).
            sqlx::Error::Database(db)
                if db.code().is_some_and(|code| {
                    code.starts_with("08") || matches!(code.as_ref(), "57P01" | "57P02" | "57P03" | "53300")
                }) =>
            {
                StoreError::Unavailable(db.message().to_owned())
            }
            // SQLite's file held by another process's write past the busy timeout.
            sqlx::Error::Database(db)
                if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some()
                    && db
                        .code()
                        .and_then(|code| code.parse::<i32>().ok())
                        .is_some_and(|code| matches!(code & 0xff, 5 | 6)) =>
            {
                StoreError::Unavailable(db.message().to_owned())
            }
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed => StoreError::Unavailable(err.to_string()),
            _ => StoreError::Other(err.into()),
        }
    }
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(err: sqlx::migrate::MigrateError) -> Self {
        match err {
            sqlx::migrate::MigrateError::Execute(inner) => inner.into(),
            other => StoreError::Other(anyhow::Error::new(other).context("migrating the database")),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::Conflict(msg) => ApiError::Conflict(msg),
            StoreError::Invalid(msg) => ApiError::validation(msg),
            StoreError::OverCap(msg) => ApiError::Forbidden(msg),
            StoreError::Unavailable(msg) => {
                ApiError::DatabaseUnavailable(format!("the records store is unreachable: {msg}"))
            }
            StoreError::Config(msg) => ApiError::Internal(anyhow::anyhow!(msg)),
            compacted @ StoreError::Compacted { .. } => ApiError::Internal(compacted.into()),
            StoreError::Other(err) => ApiError::Internal(err),
        }
    }
}
