//! The query endpoint (`POST /api/v1/query`, `POST /query`): NQL statements run by
//! `quiver-nql` over the caller's project, whose collections are its namespaces.
//! Also the document list, which is an NQL scan with the same pagination.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use quiver_common::ApiError;
use quiver_common::domain::{Metric, Plan, Scope};
use quiver_common::{AppPath, AppQuery};
use quiver_engine::Filter;
use quiver_nql::{Backend, DistanceOp, NewRow, QueryRequest as NqlRequest, Row, RowUpdate, RowVersion};
use quiver_store::{Record, RecordWrite, Seen};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::DataPlane;
use crate::auth::Principal;
use crate::documents::{check_content, collection, no_collection};
use crate::embeddings::{self, Source};
use crate::idempotency::idempotent;
use crate::json::parse_body;
use crate::limits::Kind;
use crate::records::{self, DeleteIf};
use crate::vectors::{check_id, check_metadata, cursor_of_id, id_of_cursor, without_nulls};

pub fn router() -> Router<DataPlane> {
    Router::new()
        .route("/api/v1/query", post(query))
        .route("/query", post(query))
        .route("/api/v1/collections/{collection}/documents", get(list))
}

/// The longest a statement may run when the request sets no `timeout_ms`.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest `timeout_ms` may ask for.
const MAX_TIMEOUT_MS: u64 = 300_000;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QueryRequest {
    /// One NQL statement.
    #[schema(
        example = "SELECT id, content, 1 - (embedding <=> $1) AS similarity FROM documents ORDER BY embedding <=> $1 LIMIT 5"
    )]
    query: String,
    /// Values for `$1`, `$2`, …: numbers, strings, booleans, objects, and arrays of numbers (vectors).
    #[serde(default)]
    #[schema(value_type = Vec<serde_json::Value>, example = json!([[0.023, -0.187, 0.412]]))]
    params: Vec<Value>,
    /// The project's name (or id); any other is refused.
    #[schema(example = "mydb")]
    database: Option<String>,
    /// Cancel the statement after this many milliseconds (default 30,000; at most 300,000).
    #[schema(minimum = 1, maximum = 300000)]
    timeout_ms: Option<u64>,
    /// Return the plan instead of running the statement.
    #[serde(default)]
    explain: bool,
    /// Page size over the statement's rows (1 to 10,000).
    #[schema(minimum = 1, maximum = 10000)]
    limit: Option<u64>,
    /// Rows to skip before the page.
    offset: Option<u64>,
    /// `nextCursor` of the previous page of the same query.
    cursor: Option<String>,
}

/// Rows, their fields, and pagination when a page was asked for.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct QueryResponse {
    #[serde(flatten)]
    result: quiver_nql::QueryResult,
    /// Time spent running the statement, embedding and I/O included.
    #[serde(rename = "executionTimeMs")]
    execution_time_ms: f64,
}

/// Run one NQL statement.
#[utoipa::path(
    post,
    operation_id = "run_query",
    path = "/api/v1/query",
    tag = "query",
    security(("api_key_header" = []), ("bearer" = []), ("api_key_query" = [])),
    params(("x-idempotency-key" = Option<String>, Header, description = "replay-safe retries of a write statement for 24 h")),
    request_body = QueryRequest,
    responses(
        (status = 200, body = QueryResponse),
        (status = 400, description = "QUERY_ERROR for NQL that cannot be parsed, planned or run; VALIDATION_ERROR for the body", body = quiver_common::error::ErrorEnvelope),
        (status = 401, body = quiver_common::error::ErrorEnvelope),
        (status = 403, description = "a write statement without the write scope", body = quiver_common::error::ErrorEnvelope),
        (status = 404, description = "no such database", body = quiver_common::error::ErrorEnvelope),
        (status = 409, description = "a write with the same idempotency key is in flight, or an UPDATE or DELETE whose rows other writes kept changing while it ran (nothing written)", body = quiver_common::error::ErrorEnvelope),
        (status = 422, description = "the idempotency key was used with another request", body = quiver_common::error::ErrorEnvelope),
        (status = 429, description = "the project's rate limit is spent", body = quiver_common::error::ErrorEnvelope),
        (status = 503, description = "the records store is unreachable", body = quiver_common::error::ErrorEnvelope),
    )
)]
pub async fn query(
    State(state): State<DataPlane>,
    principal: Principal,
    headers: HeaderMap,
    body: Result<axum::body::Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    principal.require(Scope::Read)?;
    let body = body.map_err(crate::json::body_rejection(crate::MAX_BODY_BYTES))?;
    let request: QueryRequest = parse_body(&headers, &body)?;
    if let Some(database) = &request.database
        && *database != principal.project.name
        && *database != principal.project_id.to_string()
    {
        return Err(ApiError::NotFound(format!(
            "database \"{database}\" does not exist: this key's project is \"{}\"",
            principal.project.name
        )));
    }
    let timeout = match request.timeout_ms {
        None => DEFAULT_TIMEOUT,
        Some(ms @ 1..=MAX_TIMEOUT_MS) => Duration::from_millis(ms),
        Some(other) => {
            return Err(ApiError::Validation {
                message: format!("timeout_ms must be from 1 to {MAX_TIMEOUT_MS}, got {other}"),
                detail: Some("field timeout_ms".into()),
            });
        }
    };
    let statement = quiver_nql::parse(&request.query, &request.params)?;
    let writes = statement.is_write() && !request.explain;
    let nql = NqlRequest {
        query: request.query,
        params: request.params,
        limit: request.limit,
        offset: request.offset,
        cursor: request.cursor,
        explain: request.explain,
    };
    if !writes {
        state.admit(&principal, Kind::Queries, 1).await?;
        let result = run(&state, &principal, &statement, &nql, timeout).await?;
        return Ok(Json(QueryResponse {
            result,
            execution_time_ms: elapsed_ms(started),
        })
        .into_response());
    }
    principal.require(Scope::Write)?;
    // A write statement takes x-idempotency-key as the other writes do.
    idempotent(&state, &principal, &headers, "query", &body, async {
        // A statement is a query; the backend counts each row it writes as a document.
        state.admit(&principal, Kind::Queries, 1).await?;
        let result = run(&state, &principal, &statement, &nql, timeout).await?;
        Ok(serde_json::to_value(QueryResponse {
            result,
            execution_time_ms: elapsed_ms(started),
        })
        .map_err(anyhow::Error::from)?)
    })
    .await
}

async fn run(
    state: &DataPlane,
    principal: &Principal,
    statement: &quiver_nql::Statement,
    request: &NqlRequest,
    timeout: Duration,
) -> Result<quiver_nql::QueryResult, ApiError> {
    let backend = ProjectBackend {
        state,
        principal,
        plan: state.plan_of(principal).await?,
        charged: AtomicU64::new(0),
        writing: tokio::sync::watch::Sender::new(false),
    };
    let mut writing = backend.writing.subscribe();
    let execution = quiver_nql::execute_parsed(&backend, statement, request, state.cursor_key.as_slice());
    tokio::pin!(execution);
    if let Ok(outcome) = tokio::time::timeout(timeout, &mut execution).await {
        return outcome;
    }
    // Past the timeout, a write that has gone to the store runs to its end whatever
    // becomes of the statement: answer with what it did, not with a timeout that
    // would say nothing was written. If it wrote nothing (its rows changed, and the
    // statement would run again), the timeout stands.
    tokio::select! {
        outcome = &mut execution => outcome,
        _ = writing.wait_for(|writing| !*writing) => Err(ApiError::Query {
            message: "canceling statement due to statement timeout".into(),
            detail: Some(format!(
                "the statement ran longer than {} ms; raise timeout_ms or narrow the query",
                timeout.as_millis()
            )),
        }),
    }
}

fn elapsed_ms(started: Instant) -> f64 {
    (started.elapsed().as_secs_f64() * 1e6).round() / 1e3
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Page size, 1 to 1,000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u64>,
    /// Documents to skip.
    offset: Option<u64>,
    /// `nextCursor` of the previous page.
    cursor: Option<String>,
    /// Accepted here only so the key is not refused as an unknown parameter.
    #[allow(dead_code)]
    #[param(ignore)]
    api_key: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DocumentPage {
    /// id, content, metadata, created_at, updated_at; in id order.
    #[schema(value_type = Vec<Object>)]
    documents: Vec<serde_json::Map<String, Value>>,
    #[serde(rename = "rowCount")]
    row_count: u64,
    #[serde(rename = "totalCount")]
    total_count: Option<u64>,
    #[serde(rename = "hasMore")]
    has_more: Option<bool>,
    #[serde(rename = "nextCursor")]
    next_cursor: Option<String>,
}

/// List a collection's documents in id order, a page at a time.
#[utoipa::path(
    get,
    operation_id = "list_documents",
    path = "/api/v1/collections/{collection}/documents",
    tag = "documents",
    security(("api_key_header" = []), ("bearer" = []), ("api_key_query" = [])),
    params(("collection" = String, Path), ListQuery),
    responses(
        (status = 200, body = DocumentPage),
        (status = 400, body = quiver_common::error::ErrorEnvelope),
        (status = 401, body = quiver_common::error::ErrorEnvelope),
        (status = 403, body = quiver_common::error::ErrorEnvelope),
        (status = 404, description = "no such collection", body = quiver_common::error::ErrorEnvelope),
        (status = 429, description = "the project's rate limit is spent", body = quiver_common::error::ErrorEnvelope),
    )
)]
pub async fn list(
    State(state): State<DataPlane>,
    principal: Principal,
    AppPath(name): AppPath<String>,
    query: Result<AppQuery<ListQuery>, ApiError>,
) -> Result<Json<DocumentPage>, ApiError> {
    principal.require(Scope::Read)?;
    let AppQuery(query) = query?;
    let collection = collection(&principal, &name)?;
    let limit = query.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::Validation {
            message: format!("limit must be from 1 to 1000, got {limit}"),
            detail: Some("field limit".into()),
        });
    }
    state.admit(&principal, Kind::Queries, 1).await?;
    if state
        .store
        .namespace(principal.project_id, &collection)
        .await?
        .is_none()
    {
        return Err(no_collection(&collection));
    }
    let select = format!(
        "SELECT id, content, metadata, created_at, updated_at FROM \"{}\"",
        collection.replace('"', "\"\"")
    );
    // Without an offset, pages follow ids: the next page starts after the last id
    // served, so writes between pages neither repeat a document nor skip one (an
    // offset would shift under them). An offset, and the cursors of a listing that
    // began with one, page by position through NQL's own cursors.
    let after = match (query.offset, query.cursor.as_deref()) {
        (None, None) => Some(None),
        (None, Some(cursor)) => cursor.strip_prefix(AFTER_ID).map(id_of_cursor).transpose()?.map(Some),
        _ => None,
    };
    let Some(after) = after else {
        let request = NqlRequest {
            query: format!("{select} ORDER BY id"),
            params: Vec::new(),
            limit: Some(limit),
            offset: query.offset,
            cursor: query.cursor,
            explain: false,
        };
        let statement = quiver_nql::parse(&request.query, &request.params)?;
        let result = run(&state, &principal, &statement, &request, DEFAULT_TIMEOUT).await?;
        return Ok(Json(DocumentPage {
            documents: result.rows,
            row_count: result.row_count,
            total_count: result.total_count,
            has_more: result.has_more,
            next_cursor: result.next_cursor,
        }));
    };
    let (query_text, params) = match &after {
        Some(id) => (
            format!("{select} WHERE id > $1 ORDER BY id"),
            vec![Value::String(id.clone())],
        ),
        None => (format!("{select} ORDER BY id"), Vec::new()),
    };
    let request = NqlRequest {
        query: query_text,
        params,
        limit: Some(limit),
        offset: None,
        cursor: None,
        explain: false,
    };
    let statement = quiver_nql::parse(&request.query, &request.params)?;
    let result = run(&state, &principal, &statement, &request, DEFAULT_TIMEOUT).await?;
    // The first page's statement counts the whole collection; a later one's, only
    // what follows its cursor.
    let total = match after {
        None => result.total_count,
        Some(_) => state
            .store
            .namespaces(principal.project_id)
            .await?
            .into_iter()
            .find(|ns| ns.name == collection)
            .map(|ns| ns.count),
    };
    let has_more = result.has_more.unwrap_or(false);
    let next_cursor = has_more
        .then(|| result.rows.last().and_then(|row| row.get("id")).and_then(Value::as_str))
        .flatten()
        .map(|id| format!("{AFTER_ID}{}", cursor_of_id(id)));
    Ok(Json(DocumentPage {
        documents: result.rows,
        row_count: result.row_count,
        total_count: total,
        has_more: Some(has_more),
        next_cursor,
    }))
}

/// How a document list's cursor that follows ids begins (then the last id served, in
/// URL-safe base64); NQL's positional cursors never begin so.
const AFTER_ID: &str = "id.";

/// NQL's view of one project: its namespaces are the collections.
struct ProjectBackend<'a> {
    state: &'a DataPlane,
    principal: &'a Principal,
    plan: Plan,
    /// Documents the statement's writes have taken from the rate limit so far: a
    /// statement run again (its rows changed under it) pays only for rows beyond them.
    charged: AtomicU64,
    /// Set as the statement's write goes to the store, and cleared if it wrote
    /// nothing (its rows changed and it runs again): while set, the statement timeout
    /// does not cut it (see [`run`]).
    writing: tokio::sync::watch::Sender<bool>,
}

fn row(record: Record) -> Row {
    Row {
        id: record.id,
        content: record.content,
        metadata: record.metadata,
        embedding: record.vector,
        created_at: record.created_at,
        updated_at: record.updated_at,
        version: record.seq,
    }
}

/// About how many bytes of whole records an index search reads at a time.
const PAGE_BYTES: usize = 8 << 20;

/// Largest page the executor may ask a scan for.
const MAX_SCAN_PAGE: usize = 1000;

impl ProjectBackend<'_> {
    /// Takes `rows` documents from the project's rate limit, less what earlier runs of
    /// the same statement took (at most a minute's budget in all, see `admit_capped`).
    async fn charge(&self, rows: usize) -> Result<(), ApiError> {
        let rows = rows as u64;
        let more = rows.saturating_sub(self.charged.load(Ordering::Relaxed));
        if more > 0 {
            self.state.admit_capped(self.principal, Kind::Documents, more).await?;
            self.charged.fetch_max(rows, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Writes records in one transaction (records::upsert runs it in a task of its
    /// own, so a statement timeout never cuts it between its commit and the index).
    /// `embedding_model` as [`records::upsert`] takes it: the model that made some of the
    /// vectors from text.
    async fn upsert(
        &self,
        collection: &str,
        writes: Vec<RecordWrite>,
        embedding_model: Option<&str>,
    ) -> Result<(), ApiError> {
        let upsert = records::upsert(
            self.state,
            self.principal,
            &self.plan,
            collection,
            writes,
            embedding_model,
        );
        self.writing(async { upsert.await.map(Some) }).await.map(drop)
    }

    /// Runs a write to the store with [`ProjectBackend::writing`] set, cleared again
    /// when the write says it wrote nothing (`Ok(None)`) or failed.
    async fn writing<T>(
        &self,
        write: impl Future<Output = Result<Option<T>, ApiError>>,
    ) -> Result<Option<T>, ApiError> {
        self.writing.send_replace(true);
        let outcome = write.await;
        if !matches!(outcome, Ok(Some(_))) {
            self.writing.send_replace(false);
        }
        outcome
    }

    fn check_vector(&self, vector: &[f32], what: &str) -> Result<(), ApiError> {
        let project = &self.principal.project;
        if vector.len() != project.dimension as usize {
            return Err(ApiError::Query {
                message: format!(
                    "{what} has {} dimensions, the project's dimension is {}",
                    vector.len(),
                    project.dimension
                ),
                detail: None,
            });
        }
        if vector.iter().any(|x| !x.is_finite()) {
            return Err(ApiError::Query {
                message: format!("{what} has a value that is not a finite number"),
                detail: None,
            });
        }
        // The vector API's rules, as the index is the same: 16-bit floats.
        if let Some(message) = crate::vectors::unstorable(vector, project.metric, what) {
            return Err(ApiError::Query { message, detail: None });
        }
        Ok(())
    }
}

#[async_trait]
impl Backend for ProjectBackend<'_> {
    fn dimension(&self) -> usize {
        self.principal.project.dimension as usize
    }

    async fn collection_exists(&self, collection: &str) -> Result<bool, ApiError> {
        // A token limited to some namespaces gets a 403 for any other, whether or not
        // it exists, as on every other route.
        self.principal.require_namespace(collection)?;
        Ok(self
            .state
            .store
            .namespace(self.principal.project_id, collection)
            .await?
            .is_some())
    }

    async fn scan(&self, collection: &str, after: Option<&str>, limit: usize) -> Result<Vec<Row>, ApiError> {
        let limit = limit.clamp(1, MAX_SCAN_PAGE) as u32;
        let records = self
            .state
            .store
            .scan(self.principal.project_id, collection, after, limit)
            .await?;
        Ok(records.into_iter().map(row).collect())
    }

    async fn nearest(
        &self,
        collection: &str,
        op: DistanceOp,
        vector: &[f32],
        k: usize,
        filter: Option<&Value>,
    ) -> Result<Option<Vec<Row>>, ApiError> {
        let project = &self.principal.project;
        let served = matches!(
            (op, project.metric),
            (DistanceOp::Cosine, Metric::Cosine)
                | (DistanceOp::L2, Metric::Euclidean)
                | (DistanceOp::NegativeInner, Metric::DotProduct)
        );
        // Past the index's largest k, the index would answer fewer than asked, which
        // the executor would take for all there is.
        if !served || k == 0 || k > crate::vectors::MAX_TOP_K * 10 {
            return Ok(None);
        }
        // A query vector the index cannot hold (values beyond 16-bit floats, or one
        // that is all zeros there, for cosine) gives NaN distances in a graph walk,
        // and so k arbitrary rows; the exact scan, in f32, answers right.
        if crate::vectors::unstorable(vector, project.metric, "the query vector").is_some() {
            return Ok(None);
        }
        let filter = match filter.map(Filter::parse) {
            None => Filter::All,
            Some(Ok(filter)) => filter,
            // The executor pushes down only filters it built, which the index refuses
            // only beyond its size caps (a long IN list): the executor scans instead.
            Some(Err(err)) => {
                tracing::debug!(error = %err, "a pushed-down filter the index does not take; scanning");
                return Ok(None);
            }
        };
        let query = quiver_engine::Query {
            vector: vector.to_vec(),
            k,
            filter: std::sync::Arc::new(filter),
            include_values: false,
            strong: false,
        };
        let Some(outcome) = self.state.indexes.search(project, collection, query).await? else {
            return Ok(Some(Vec::new()));
        };
        let ids: Vec<String> = outcome.matches.into_iter().map(|m| m.id).collect();
        let found = ids.len();
        let mut rows = Vec::with_capacity(ids.len());
        // Whole records, within the statement's byte budget (10,000 matches of large
        // documents would be gigabytes), in pages sized by the largest record seen so
        // far (about 8 MiB each). Past the budget the executor scans instead: it keeps
        // only the columns the statement returns.
        let (mut held, mut largest, mut next) = (0, 0, 0);
        while next < ids.len() {
            // 32 records first, then as many of the largest seen as make a page.
            let page = match largest {
                0 => 32,
                largest => (PAGE_BYTES / largest).clamp(1, MAX_SCAN_PAGE),
            };
            let chunk = &ids[next..(next + page).min(ids.len())];
            next += chunk.len();
            // `fetch` answers in the order asked, skipping what was deleted meanwhile.
            let records = self
                .state
                .store
                .fetch(self.principal.project_id, collection, chunk)
                .await?;
            for row in records.into_iter().map(row) {
                let bytes = quiver_nql::row_bytes(&row);
                (held, largest) = (held + bytes, largest.max(bytes));
                rows.push(row);
            }
            if held > quiver_nql::MAX_STATEMENT_BYTES {
                return Ok(None);
            }
        }
        // A match deleted since the index saw it (another pod's delete on its way
        // here, or one between the search and this read) leaves the answer short, which
        // the executor would take for all there is: scan instead.
        if rows.len() < found {
            return Ok(None);
        }
        Ok(Some(rows))
    }

    async fn insert(&self, collection: &str, mut rows: Vec<NewRow>) -> Result<Vec<String>, ApiError> {
        self.principal.require_namespace(collection)?;
        if rows.len() > self.plan.max_batch_size as usize {
            return Err(ApiError::Query {
                message: format!(
                    "the statement inserts {} rows; the limit is {} per statement",
                    rows.len(),
                    self.plan.max_batch_size
                ),
                detail: None,
            });
        }
        let mut sources = Vec::with_capacity(rows.len());
        for (i, row) in rows.iter_mut().enumerate() {
            // The same rules as the document and vector APIs: one store for all three.
            // Counted from 1, as NQL counts rows in its own messages.
            let what = format!("row {}", i + 1);
            if let Some(id) = &row.id {
                check_id(id, &what)?;
            }
            if let Some(content) = &row.content {
                check_content(content, &what)?;
            }
            check_metadata(&row.metadata, &what)?;
            row.metadata = without_nulls(std::mem::take(&mut row.metadata));
            sources.push(match (row.embedding.take(), &row.content) {
                (Some(vector), _) => {
                    self.check_vector(&vector, &format!("the embedding of {what}"))?;
                    Source::Given(vector)
                }
                (None, Some(content)) => Source::Text(content.clone()),
                (None, None) => {
                    return Err(ApiError::Query {
                        message: "a row without an embedding needs content to embed".into(),
                        detail: None,
                    });
                }
            });
        }
        let model = embeddings::text_model(self.state, self.principal, collection, None, &sources).await?;
        // Before embedding: a batch beyond the budget is refused whole, as an upsert is.
        self.state
            .admit(self.principal, Kind::Documents, rows.len() as u64)
            .await?;
        let vectors = embeddings::complete(self.state, &self.principal.project, model.as_deref(), sources).await?;
        let writes: Vec<RecordWrite> = rows
            .into_iter()
            .zip(vectors)
            .map(|(new, vector)| RecordWrite {
                id: new.id.unwrap_or_else(records::new_id),
                vector,
                metadata: new.metadata,
                content: new.content,
            })
            .collect();
        let ids: Vec<String> = writes.iter().map(|w| w.id.clone()).collect();
        self.upsert(collection, writes, model.as_deref()).await?;
        Ok(ids)
    }

    async fn update(&self, collection: &str, rows: Vec<RowUpdate>) -> Result<Option<u64>, ApiError> {
        self.principal.require_namespace(collection)?;
        // Every row is checked before the first is written.
        for update in &rows {
            let what = format!("the update of \"{}\"", update.id);
            if let Some(Some(content)) = &update.content {
                check_content(content, &what)?;
            }
            if let Some(metadata) = &update.metadata {
                check_metadata(metadata, &what)?;
            }
            if let Some(vector) = &update.embedding {
                self.check_vector(vector, &format!("the new embedding of \"{}\"", update.id))?;
            }
        }
        // Each row matched is a document written. The statement cannot be split by its
        // caller, so it takes at most a minute's budget, as a delete by filter does.
        self.charge(rows.len()).await?;
        // The statement is one write: every row is read and embedded first, then all
        // are written in one transaction (the executor caps a statement's rows), only
        // if none changed since the statement read it.
        let mut found = Vec::with_capacity(rows.len());
        for chunk in rows.chunks(MAX_SCAN_PAGE) {
            let ids: Vec<String> = chunk.iter().map(|r| r.id.clone()).collect();
            let mut current: std::collections::HashMap<String, Record> = self
                .state
                .store
                .fetch(self.principal.project_id, collection, &ids)
                .await?
                .into_iter()
                .map(|r| (r.id.clone(), r))
                .collect();
            for update in chunk {
                match current.remove(&update.id) {
                    Some(record) if record.seq == update.version => found.push((update, record)),
                    // Changed or deleted since the statement read it: it reads again.
                    _ => return Ok(None),
                }
            }
        }
        let seen: Vec<Seen> = found
            .iter()
            .map(|(update, _)| Seen {
                id: update.id.clone(),
                seq: update.version,
            })
            .collect();
        // New content without a new embedding is embedded again, so the vector keeps
        // describing the text.
        let sources: Vec<Source> = found
            .iter()
            .map(|(update, record)| match (&update.embedding, &update.content) {
                (Some(vector), _) => Source::Given(vector.clone()),
                (None, Some(Some(content))) => Source::Text(content.clone()),
                // Content set NULL, or left: the embedding stays.
                (None, Some(None) | None) => Source::Given(record.vector.clone()),
            })
            .collect();
        let model = embeddings::text_model(self.state, self.principal, collection, None, &sources).await?;
        let vectors = embeddings::complete(self.state, &self.principal.project, model.as_deref(), sources).await?;
        let writes: Vec<RecordWrite> = found
            .into_iter()
            .zip(vectors)
            .map(|((update, record), vector)| RecordWrite {
                id: update.id.clone(),
                vector,
                metadata: without_nulls(update.metadata.clone().unwrap_or(record.metadata)),
                content: update.content.clone().unwrap_or(record.content),
            })
            .collect();
        let changed = writes.len() as u64;
        let written = self
            .writing(records::upsert_unchanged(
                self.state,
                self.principal,
                &self.plan,
                collection,
                writes,
                seen,
                model.as_deref(),
            ))
            .await?;
        Ok(written.map(|_| changed))
    }

    async fn delete(&self, collection: &str, rows: Vec<RowVersion>) -> Result<Option<u64>, ApiError> {
        self.principal.require_namespace(collection)?;
        if rows.is_empty() {
            return Ok(Some(0));
        }
        self.charge(rows.len()).await?;
        let seen = rows
            .into_iter()
            .map(|r| Seen {
                id: r.id,
                seq: r.version,
            })
            .collect();
        let deleted = self
            .writing(records::delete(
                self.state,
                self.principal,
                collection,
                DeleteIf::Unchanged(seen),
            ))
            .await?;
        Ok(deleted.map(|(deleted, _)| deleted))
    }
}
