//! NQL: the SQL subset the query endpoint runs.
//!
//! A collection is a table whose columns are `id`, `content`, `metadata`, `embedding`,
//! `created_at`, `updated_at` and every metadata key. A statement is parsed with
//! `sqlparser` ([`parse`]), planned into this crate's own small AST (so nothing outside
//! the grammar in `docs/nql.md` can reach the executor), and run by [`execute`] against a
//! [`Backend`] that the data plane implements over its records store and index.
//!
//! The crate knows nothing about HTTP: the handler authorizes (a write scope when
//! [`Statement::is_write`]), applies the timeout, and shapes the response.

mod budget;
mod cursor;
mod error;
mod eval;
mod exec;
mod plan;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
#[cfg(test)]
mod tests;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use quiver_common::ApiError;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub use budget::{MAX_STATEMENT_BYTES, MAX_VALUE_BYTES, row_bytes};
pub use exec::{execute, execute_parsed};
pub use plan::{Statement, parse};

/// One live row of a collection.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub id: String,
    pub content: Option<String>,
    pub metadata: Map<String, Value>,
    pub embedding: Vec<f32>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Changes with every write to the row: an UPDATE or DELETE computed from the row
    /// is written only if the row still has the version it was read at.
    pub version: i64,
}

/// A row as the statement read it: which one, and at what version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowVersion {
    pub id: String,
    pub version: i64,
}

/// The pgvector distance operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DistanceOp {
    /// `<=>`: cosine distance, `1 - cos(a, b)`.
    Cosine,
    /// `<->`: euclidean distance.
    L2,
    /// `<#>`: negative inner product, `-(a · b)`.
    NegativeInner,
}

impl DistanceOp {
    /// The operator as written in SQL.
    pub fn symbol(self) -> &'static str {
        match self {
            DistanceOp::Cosine => "<=>",
            DistanceOp::L2 => "<->",
            DistanceOp::NegativeInner => "<#>",
        }
    }

    /// The distance between two vectors of equal length, computed in `f32`.
    pub fn distance(self, a: &[f32], b: &[f32]) -> f32 {
        let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
        match self {
            DistanceOp::Cosine => {
                let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
                let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
                if na == 0.0 || nb == 0.0 {
                    // pgvector returns NaN here; a distance of 1 (orthogonal) sorts sanely.
                    1.0
                } else {
                    1.0 - dot / (na * nb)
                }
            }
            DistanceOp::L2 => a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum::<f32>().sqrt(),
            DistanceOp::NegativeInner => -dot,
        }
    }
}

/// A row to insert.
#[derive(Debug, Clone, PartialEq)]
pub struct NewRow {
    /// `None`: the backend makes a UUID.
    pub id: Option<String>,
    pub content: Option<String>,
    pub metadata: Map<String, Value>,
    /// `None`: the backend embeds `content`.
    pub embedding: Option<Vec<f32>>,
}

/// New values for an existing row; `None` leaves a field as it is.
#[derive(Debug, Clone, PartialEq)]
pub struct RowUpdate {
    pub id: String,
    /// The row's version when the statement read it.
    pub version: i64,
    /// The new content: `Some(None)` sets it NULL, `None` leaves it as it is.
    pub content: Option<Option<String>>,
    /// The whole new metadata object (merges are resolved by the executor).
    pub metadata: Option<Map<String, Value>>,
    pub embedding: Option<Vec<f32>>,
}

/// What the executor needs from the data plane: one project's collections.
#[async_trait]
pub trait Backend: Send + Sync {
    /// The project's embedding dimension.
    fn dimension(&self) -> usize;
    async fn collection_exists(&self, collection: &str) -> Result<bool, ApiError>;
    /// Live rows in id byte order with `id > after`, at most `limit` (the executor pages
    /// through a whole collection with this).
    async fn scan(&self, collection: &str, after: Option<&str>, limit: usize) -> Result<Vec<Row>, ApiError>;
    /// Approximately the `k` nearest rows by the collection's index among rows whose
    /// metadata matches `filter` (the vector API's JSON filter language), nearest first.
    /// `Ok(None)` when the index cannot serve this operator, so the executor scans exactly.
    async fn nearest(
        &self,
        collection: &str,
        op: DistanceOp,
        vector: &[f32],
        k: usize,
        filter: Option<&Value>,
    ) -> Result<Option<Vec<Row>>, ApiError>;
    /// Inserts all rows or none; returns their ids in order.
    async fn insert(&self, collection: &str, rows: Vec<NewRow>) -> Result<Vec<String>, ApiError>;
    /// Applies all updates or none, and only if every row still has the version the
    /// statement read it at; returns how many rows changed. `Ok(None)`, with nothing
    /// written, when another write changed or deleted one of them in between: the
    /// executor then runs the statement again.
    async fn update(&self, collection: &str, rows: Vec<RowUpdate>) -> Result<Option<u64>, ApiError>;
    /// Deletes these rows, all or none, and only if every one still has the version
    /// the statement read it at; returns how many it deleted. `Ok(None)` as for
    /// [`Backend::update`].
    async fn delete(&self, collection: &str, rows: Vec<RowVersion>) -> Result<Option<u64>, ApiError>;
}

/// The body of `POST /query`, minus what the handler handles itself (the timeout).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct QueryRequest {
    /// One NQL statement.
    #[schema(example = "SELECT id, content FROM documents WHERE source = $1 LIMIT 5")]
    pub query: String,
    /// Values of `$1`, `$2`, …: arrays of numbers are vectors.
    #[serde(default)]
    #[schema(value_type = Vec<Object>)]
    pub params: Vec<Value>,
    /// Page size over the statement's result (see `docs/nql.md`, "Pagination").
    #[serde(default)]
    pub limit: Option<u64>,
    /// Rows of the statement's result to skip before the page.
    #[serde(default)]
    pub offset: Option<u64>,
    /// A `nextCursor` from the previous page of the same query.
    #[serde(default)]
    pub cursor: Option<String>,
    /// Return the plan instead of running the statement.
    #[serde(default)]
    pub explain: bool,
}

/// A result column: its name and Postgres type OID.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Field {
    pub name: String,
    #[serde(rename = "dataTypeID")]
    pub data_type_id: u32,
}

/// The outcome of a statement, shaped like the query endpoint's response.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct QueryResult {
    #[schema(value_type = Vec<Object>)]
    pub rows: Vec<Map<String, Value>>,
    /// Rows returned (reads) or affected (writes).
    pub row_count: u64,
    pub fields: Vec<Field>,
    /// Rows the statement yields without the page; only when a page was requested.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total_count: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub has_more: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
    /// The plan, when `explain` was asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub plan: Option<Value>,
}
