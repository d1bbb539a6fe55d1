//! Running a [`Statement`] against a [`Backend`]: choosing between the index and an
//! exact scan, re-checking WHERE, sorting, paging, projecting, and writing.

use std::cmp::Ordering;

use quiver_common::ApiError;
use serde_json::{Map, Value, json};

use crate::cursor::{self, Position};
use crate::error::{query_error, query_error_at};
use crate::eval::{self, Datum, type_oid};
use crate::plan::{BinOp, Column, Delete, Expr, Insert, JsonKey, Kind, Select, SortKey, Update};
use crate::{Backend, DistanceOp, Field, QueryRequest, QueryResult, Row, RowUpdate, RowVersion, Statement, parse};

/// Rows per `Backend::scan` call; the executor yields to the runtime between pages.
const SCAN_PAGE: usize = 512;
/// The longest an exact scan evaluates rows without giving its thread back.
const YIELD_EVERY: std::time::Duration = std::time::Duration::from_millis(10);
/// The largest `k` sent to the index; deeper pages are served by an exact scan.
const MAX_INDEX_K: u64 = 10_000;

/// Parses and runs one request. `cursor_key` signs page cursors.
///
/// Request-level `limit`/`offset`/`cursor` page over the statement's result: the
/// statement's own LIMIT/OFFSET decide the result, the request picks a page of it.
pub async fn execute(
    backend: &dyn Backend,
    request: &QueryRequest,
    cursor_key: &[u8],
) -> Result<QueryResult, ApiError> {
    let statement = parse(&request.query, &request.params)?;
    execute_parsed(backend, &statement, request, cursor_key).await
}

/// Runs an already parsed statement (the handler parses first to check the write
/// scope); `request` must be the one `statement` was parsed from.
pub async fn execute_parsed(
    backend: &dyn Backend,
    statement: &Statement,
    request: &QueryRequest,
    cursor_key: &[u8],
) -> Result<QueryResult, ApiError> {
    let page = page_of(request, cursor_key)?;
    let dimension = backend.dimension();
    for (label, len) in &statement.vectors {
        if *len != dimension {
            return Err(query_error(format!(
                "{label} has {len} dimensions, the project's dimension is {dimension}"
            )));
        }
    }
    let table = statement.table();
    if !backend.collection_exists(&table.name).await? {
        return Err(query_error_at(
            format!("relation \"{}\" does not exist", table.name),
            table.pos,
        ));
    }
    let mut executor = Executor {
        backend,
        statement,
        collection: &table.name,
        dimension,
    };
    if request.explain {
        return Ok(QueryResult {
            plan: Some(executor.explain()),
            ..QueryResult::default()
        });
    }
    match &statement.kind {
        Kind::Select(select) => executor.select(select, page, request, cursor_key).await,
        Kind::Insert(insert) => executor.insert(insert).await,
        Kind::Update(update) => executor.update(update).await,
        Kind::Delete(delete) => executor.delete(delete).await,
    }
}

/// The requested page: where it starts and how long it is (`None`: to the end).
#[derive(Debug, Clone, Copy)]
struct Page {
    offset: u64,
    limit: Option<u64>,
}

/// The largest page a request may ask for (`limit`).
pub const MAX_PAGE_LIMIT: u64 = 10_000;

/// The most rows a SELECT returns without a page `limit`, whatever its LIMIT: beyond
/// it the statement is refused, not held whole in memory, and says how to page.
pub const MAX_RESULT_ROWS: u64 = 10_000;

/// The most rows one UPDATE changes. A statement is one write, all of its rows or
/// none, which its backend holds in memory (new vectors included) until it commits.
pub const MAX_UPDATE_ROWS: usize = 10_000;

/// How many times an UPDATE or DELETE runs before it gives up on rows that other
/// writes keep changing between its read and its write.
pub const WRITE_ATTEMPTS: usize = 3;

fn kept_changing(statement: &str) -> ApiError {
    ApiError::Conflict(format!(
        "other writes changed rows this {statement} matched while it ran, {WRITE_ATTEMPTS} times in a row; \
         nothing was written: run it again"
    ))
}

/// The largest `offset` a request may ask for: a signed 64-bit integer, as the OpenAPI
/// document says (`int64`) and SQL's `OFFSET` takes.
pub const MAX_OFFSET: u64 = i64::MAX as u64;

fn page_of(request: &QueryRequest, key: &[u8]) -> Result<Option<Page>, ApiError> {
    if let Some(limit) = request.limit.filter(|limit| !(1..=MAX_PAGE_LIMIT).contains(limit)) {
        return Err(ApiError::Validation {
            message: format!("limit must be from 1 to {MAX_PAGE_LIMIT}, got {limit}"),
            detail: Some("field limit".into()),
        });
    }
    if let Some(offset) = request.offset.filter(|&offset| offset > MAX_OFFSET) {
        return Err(ApiError::Validation {
            message: format!("offset must be from 0 to {MAX_OFFSET}, got {offset}"),
            detail: Some("field offset".into()),
        });
    }
    if let Some(cursor) = &request.cursor {
        let hash = cursor::query_hash(&request.query, &request.params);
        let Position { offset, limit } = cursor::decode(key, &hash, cursor)?;
        return Ok(Some(Page {
            offset,
            limit: request.limit.or(Some(limit)),
        }));
    }
    if request.limit.is_none() && request.offset.is_none() {
        return Ok(None);
    }
    Ok(Some(Page {
        offset: request.offset.unwrap_or(0),
        limit: request.limit,
    }))
}

/// How a SELECT finds its rows.
#[derive(Debug, Clone, PartialEq)]
enum Strategy {
    /// Ask the index for the `k` nearest rows matching `filter`, then re-check WHERE.
    Index {
        op: DistanceOp,
        vector: Vec<f32>,
        k: u64,
        filter: Option<Value>,
    },
    /// Read every row, filter, sort.
    Scan,
}

/// The distance an ORDER BY key sorts nearest-first by: `embedding <=> v` ascending,
/// or a similarity like `1 - (embedding <=> v)` or `-(embedding <#> v)` descending.
fn nearest_first(key: &SortKey) -> Option<(DistanceOp, &Vec<f32>)> {
    match (&key.expr, key.desc) {
        (Expr::Distance { op, vector }, false) => Some((*op, vector)),
        (
            Expr::Binary {
                op: BinOp::Sub,
                left,
                right,
            },
            true,
        ) if matches!(left.as_ref(), Expr::Lit(Datum::Int(_) | Datum::Num(_))) => match right.as_ref() {
            Expr::Distance { op, vector } => Some((*op, vector)),
            _ => None,
        },
        (Expr::Neg(inner), true) => match inner.as_ref() {
            Expr::Distance { op, vector } => Some((*op, vector)),
            _ => None,
        },
        _ => None,
    }
}

fn strategy(select: &Select) -> Strategy {
    let ([key], Some(limit), false) = (select.order.as_slice(), select.limit, select.aggregate) else {
        return Strategy::Scan;
    };
    let Some((op, vector)) = nearest_first(key) else {
        return Strategy::Scan;
    };
    let k = select.offset.saturating_add(limit);
    if k > MAX_INDEX_K {
        return Strategy::Scan;
    }
    let filter = match &select.filter {
        None => None,
        Some(filter) => match pushdown(filter) {
            Some(pushed) => Some(pushed),
            None => return Strategy::Scan,
        },
    };
    Strategy::Index {
        op,
        vector: vector.clone(),
        k,
        filter,
    }
}

/// Translates the part of a WHERE clause that the JSON filter language can say, so
/// the index filters while it searches. The result may let through more rows than
/// WHERE does (never fewer); the executor re-checks WHERE on every row.
fn pushdown(expr: &Expr) -> Option<Value> {
    match expr {
        Expr::Binary {
            op: BinOp::And,
            left,
            right,
        } => match (pushdown(left), pushdown(right)) {
            (Some(l), Some(r)) => Some(json!({ "$and": [l, r] })),
            (Some(one), None) | (None, Some(one)) => Some(one),
            (None, None) => None,
        },
        Expr::Binary {
            op: BinOp::Or,
            left,
            right,
        } => Some(json!({ "$or": [pushdown(left)?, pushdown(right)?] })),
        Expr::Binary { op, left, right } => {
            let (key, value, op) = match (pushable_key(left), pushable_key(right)) {
                (Some(key), None) => (key, right, *op),
                (None, Some(key)) => (key, left, flip(*op)?),
                _ => return None,
            };
            let (key, text) = key;
            let Expr::Lit(datum) = value.as_ref() else {
                return None;
            };
            if text {
                // `metadata->>'k' = 'v'` only when no non-string JSON value prints as v.
                return match (op, datum) {
                    (BinOp::Eq, Datum::Text(s)) if serde_json::from_str::<Value>(s).is_err() => {
                        Some(json!({ key: { "$eq": s } }))
                    }
                    _ => None,
                };
            }
            let operator = match op {
                BinOp::Eq => "$eq",
                BinOp::Lt => "$lt",
                BinOp::Le => "$lte",
                BinOp::Gt => "$gt",
                BinOp::Ge => "$gte",
                // `<>` is not pushed: the filter's `$ne` also rejects arrays holding the value.
                _ => return None,
            };
            let value = scalar(datum, op == BinOp::Eq)?;
            Some(json!({ key: { operator: value } }))
        }
        Expr::InList {
            expr,
            list,
            negated: false,
        } => {
            let (key, false) = pushable_key(expr)? else {
                return None;
            };
            let values = list
                .iter()
                .map(|item| match item {
                    Expr::Lit(datum) => scalar(datum, true),
                    _ => None,
                })
                .collect::<Option<Vec<_>>>()?;
            Some(json!({ key: { "$in": values } }))
        }
        Expr::IsNull { expr, negated } => {
            let (key, _) = pushable_key(expr)?;
            Some(json!({ key: { "$exists": *negated } }))
        }
        _ => None,
    }
}

/// A metadata key the filter language can address, and whether it is read as text (`->>`).
fn pushable_key(expr: &Expr) -> Option<(String, bool)> {
    let (key, text) = match expr {
        Expr::MetaKey(key) => (key, false),
        Expr::Json {
            base,
            key: JsonKey::Key(key),
            text,
        } if **base == Expr::Column(Column::Metadata) => (key, *text),
        _ => return None,
    };
    // Keys starting with `$` would read as operators.
    (!key.starts_with('$')).then(|| (key.clone(), text))
}

fn flip(op: BinOp) -> Option<BinOp> {
    Some(match op {
        BinOp::Eq => BinOp::Eq,
        BinOp::Lt => BinOp::Gt,
        BinOp::Le => BinOp::Ge,
        BinOp::Gt => BinOp::Lt,
        BinOp::Ge => BinOp::Le,
        _ => return None,
    })
}

/// A literal the filter language compares like WHERE does: numbers and strings, and
/// booleans for equality.
fn scalar(datum: &Datum, equality: bool) -> Option<Value> {
    match datum {
        Datum::Int(_) | Datum::Num(_) | Datum::Text(_) => Some(datum.to_json()).filter(|v| !v.is_null()),
        Datum::Bool(b) if equality => Some(Value::Bool(*b)),
        Datum::Json(v @ (Value::String(_) | Value::Number(_))) => Some(v.clone()),
        Datum::Json(Value::Bool(b)) if equality => Some(Value::Bool(*b)),
        _ => None,
    }
}

struct Executor<'a> {
    backend: &'a dyn Backend,
    statement: &'a Statement,
    collection: &'a str,
    dimension: usize,
}

/// An ordered list of matching rows, each with its sort keys.
type Sorted = Vec<(Vec<Datum>, Row)>;

impl Executor<'_> {
    /// Reads the collection page by page, calling `visit` for each row until it says stop.
    async fn scan_all(&self, mut visit: impl FnMut(Row) -> Result<bool, ApiError>) -> Result<(), ApiError> {
        let mut after: Option<String> = None;
        loop {
            let rows = self.backend.scan(self.collection, after.as_deref(), SCAN_PAGE).await?;
            let full = rows.len() >= SCAN_PAGE;
            after = rows.last().map(|r| r.id.clone());
            // Rows costly to evaluate (long texts, LIKE patterns) give the thread back
            // now and then within a page, where the statement timeout can end it.
            let mut since_yield = std::time::Instant::now();
            for row in rows {
                if !visit(row)? {
                    return Ok(());
                }
                if since_yield.elapsed() >= YIELD_EVERY {
                    tokio::task::yield_now().await;
                    since_yield = std::time::Instant::now();
                }
            }
            if !full || after.is_none() {
                return Ok(());
            }
            tokio::task::yield_now().await;
        }
    }

    fn sort_keys(&self, order: &[SortKey], row: &Row) -> Result<Vec<Datum>, ApiError> {
        order.iter().map(|key| eval::eval(&key.expr, Some(row))).collect()
    }

    /// Exact scan: the matching rows, sorted, and how many matched.
    /// `stop_at`: without ORDER BY, the scan may stop once this many rows matched.
    /// `keep`: only the first this many rows in sort order are wanted. Every match is
    /// counted, but no more than twice as many rows are held at any time, so a page of
    /// a large collection takes memory for the page, not the collection.
    async fn scan_select(
        &self,
        select: &Select,
        stop_at: Option<u64>,
        keep: Option<u64>,
    ) -> Result<(Sorted, u64), ApiError> {
        let keep = keep.map(|keep| usize::try_from(keep).unwrap_or(usize::MAX));
        let mut matched: Sorted = Vec::new();
        let mut count = 0u64;
        self.scan_all(|row| {
            if !eval::matches(select.filter.as_ref(), &row)? {
                return Ok(true);
            }
            count += 1;
            if !select.aggregate {
                let keys = self.sort_keys(&select.order, &row)?;
                matched.push((keys, row));
                if let Some(keep) = keep
                    && matched.len() >= keep.saturating_mul(2).max(SCAN_PAGE)
                {
                    // The order is total (ties go by id), so the rows cut here are
                    // never among the first `keep`.
                    sort(&mut matched, &select.order);
                    matched.truncate(keep);
                }
            }
            Ok(stop_at.is_none_or(|n| count < n))
        })
        .await?;
        sort(&mut matched, &select.order);
        if let Some(keep) = keep {
            matched.truncate(keep);
        }
        Ok((matched, count))
    }

    async fn select(
        &mut self,
        select: &Select,
        page: Option<Page>,
        request: &QueryRequest,
        cursor_key: &[u8],
    ) -> Result<QueryResult, ApiError> {
        let window = |len: u64| -> (usize, usize) {
            let start = select.offset.min(len);
            let end = select.limit.map_or(len, |l| start.saturating_add(l).min(len));
            (start as usize, end as usize)
        };

        if select.aggregate {
            let (_, count) = self.scan_select(select, None, None).await?;
            let (start, end) = window(1);
            let mut rows = Vec::new();
            if start < end {
                let mut out = Map::new();
                for item in &select.items {
                    let value = match &item.expr {
                        Expr::Count => Value::from(count),
                        other => eval::eval(other, None)?.to_json(),
                    };
                    out.insert(item.name.clone(), value);
                }
                rows.push(out);
            }
            return Ok(paged(rows, fields(select), page, request, cursor_key));
        }

        let mut result: Option<Sorted> = None;
        if let Strategy::Index { op, vector, k, filter } = strategy(select) {
            result = self.index_select(select, op, &vector, k, filter.as_ref()).await?;
        }
        let (rows, matched) = match result {
            Some(rows) => {
                let matched = rows.len() as u64;
                (rows, matched)
            }
            None => {
                // Without ORDER BY and without a page (whose totalCount needs every
                // match), the scan can stop once OFFSET + LIMIT rows matched.
                let stop_at = match (select.order.is_empty(), page, select.limit) {
                    (true, None, Some(limit)) => Some(select.offset.saturating_add(limit.min(MAX_RESULT_ROWS + 1))),
                    // One row past the cap tells enough (see MAX_RESULT_ROWS).
                    (true, None, None) => Some(select.offset.saturating_add(MAX_RESULT_ROWS + 1)),
                    _ => None,
                };
                // Rows past OFFSET + LIMIT, or past the end of the page asked for, are
                // never returned: only those before are kept.
                let page_end = page.and_then(|page| page.limit.map(|limit| page.offset.saturating_add(limit)));
                // With neither, no more than one row past the cap is kept: enough to
                // tell the statement returns too many.
                let keep = match (select.limit, page_end) {
                    (None, None) => MAX_RESULT_ROWS + 1,
                    (Some(limit), None) => limit.min(MAX_RESULT_ROWS + 1),
                    (None, Some(page_end)) => page_end,
                    (Some(limit), Some(page_end)) => limit.min(page_end),
                };
                self.scan_select(select, stop_at, Some(select.offset.saturating_add(keep)))
                    .await?
            }
        };
        // The window over every match, of which `rows` holds at least what is returned.
        let (start, end) = window(matched);
        // Rows returned at once, whatever the LIMIT: only a page's limit bounds them.
        let unbounded = page.is_none_or(|page| page.limit.is_none());
        if unbounded && (end - start) as u64 > MAX_RESULT_ROWS {
            return Err(ApiError::Query {
                message: format!("the SELECT returns more than the {MAX_RESULT_ROWS} rows a statement returns at once"),
                detail: Some(format!(
                    "add a LIMIT of at most {MAX_RESULT_ROWS}, or send limit (up to {MAX_PAGE_LIMIT}) and follow \
                     nextCursor page by page"
                )),
            });
        }
        let mut rows: Vec<Row> = rows.into_iter().map(|(_, row)| row).collect();
        rows.truncate(end);
        rows.drain(..start.min(rows.len()));

        // Page first, then project only the rows returned.
        let total = (end - start) as u64;
        let (rows, meta) = match page {
            None => (rows, None),
            Some(page) => {
                let start = page.offset.min(total) as usize;
                let end = page.limit.map_or(total, |l| page.offset.saturating_add(l).min(total)) as usize;
                let has_more = (end as u64) < total;
                let next = has_more.then(|| {
                    let limit = page.limit.unwrap_or(total);
                    cursor::encode(
                        cursor_key,
                        &cursor::query_hash(&request.query, &request.params),
                        Position {
                            offset: end as u64,
                            limit,
                        },
                    )
                });
                let mut rows = rows;
                rows.truncate(end);
                rows.drain(..start);
                (rows, Some((total, has_more, next)))
            }
        };
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let mut map = Map::new();
            for item in &select.items {
                map.insert(item.name.clone(), eval::eval(&item.expr, Some(row))?.to_json());
            }
            out.push(map);
        }
        let (total_count, has_more, next_cursor) = match meta {
            Some((total, has_more, next)) => (Some(total), Some(has_more), next),
            None => (None, None, None),
        };
        Ok(QueryResult {
            row_count: out.len() as u64,
            rows: out,
            fields: fields(select),
            total_count,
            has_more,
            next_cursor,
            plan: None,
        })
    }

    /// The index path. `None` when the exact scan must answer instead: the index cannot
    /// serve the operator, or re-checking WHERE dropped rows from a full answer (so rows
    /// beyond `k` might have qualified).
    async fn index_select(
        &self,
        select: &Select,
        op: DistanceOp,
        vector: &[f32],
        k: u64,
        filter: Option<&Value>,
    ) -> Result<Option<Sorted>, ApiError> {
        if k == 0 {
            return Ok(Some(Vec::new()));
        }
        let k = k as usize;
        let Some(found) = self.backend.nearest(self.collection, op, vector, k, filter).await? else {
            return Ok(None);
        };
        let returned = found.len();
        let mut kept: Sorted = Vec::with_capacity(returned);
        // As the scan does: a WHERE re-checked on thousands of rows (LIKE on long
        // contents) lets the statement timeout end it.
        let mut since_yield = std::time::Instant::now();
        for row in found {
            if since_yield.elapsed() >= YIELD_EVERY {
                tokio::task::yield_now().await;
                since_yield = std::time::Instant::now();
            }
            if row.embedding.len() != self.dimension {
                return Err(ApiError::Internal(anyhow_error(format!(
                    "row {:?} has {} dimensions, the project has {}",
                    row.id,
                    row.embedding.len(),
                    self.dimension
                ))));
            }
            if eval::matches(select.filter.as_ref(), &row)? {
                let keys = self.sort_keys(&select.order, &row)?;
                kept.push((keys, row));
            }
        }
        if kept.len() < returned && returned >= k {
            return Ok(None);
        }
        // The index is approximate; the order returned is by exact distance.
        sort(&mut kept, &select.order);
        Ok(Some(kept))
    }

    async fn insert(&self, insert: &Insert) -> Result<QueryResult, ApiError> {
        // As Postgres refuses a statement that would write one row twice.
        let mut given = std::collections::HashSet::new();
        if let Some(id) = insert
            .rows
            .iter()
            .filter_map(|row| row.id.as_ref())
            .find(|id| !given.insert(*id))
        {
            return Err(query_error(format!(
                "the statement inserts id \"{id}\" twice: a row can be written once per statement"
            )));
        }
        let ids = self.backend.insert(self.collection, insert.rows.clone()).await?;
        let (rows, fields) = if insert.returning_id {
            let rows = ids
                .iter()
                .map(|id| {
                    let mut map = Map::new();
                    map.insert("id".to_owned(), Value::String(id.clone()));
                    map
                })
                .collect();
            (rows, vec![field("id", 2950)])
        } else {
            (Vec::new(), Vec::new())
        };
        Ok(QueryResult {
            rows,
            row_count: ids.len() as u64,
            fields,
            ..QueryResult::default()
        })
    }

    /// Runs a write statement's `attempt` (read, then write the rows as read) until
    /// its write goes ahead, at most [`WRITE_ATTEMPTS`] times: `Ok(None)` from it means
    /// another write changed the rows in between and nothing was written.
    async fn until_written<F, Fut>(&self, statement: &str, mut attempt: F) -> Result<QueryResult, ApiError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<Option<u64>, ApiError>>,
    {
        for _ in 0..WRITE_ATTEMPTS {
            if let Some(count) = attempt().await? {
                return Ok(QueryResult {
                    row_count: count,
                    ..QueryResult::default()
                });
            }
        }
        Err(kept_changing(statement))
    }

    async fn update(&self, update: &Update) -> Result<QueryResult, ApiError> {
        self.until_written("UPDATE", || async {
            let changes = self.updates(update).await?;
            if changes.is_empty() {
                return Ok(Some(0));
            }
            self.backend.update(self.collection, changes).await
        })
        .await
    }

    /// The UPDATE's new values for each row it matches, as the rows are now.
    async fn updates(&self, update: &Update) -> Result<Vec<RowUpdate>, ApiError> {
        let mut changes = Vec::new();
        let dimension = self.dimension;
        self.scan_all(|row| {
            if !eval::matches(update.filter.as_ref(), &row)? {
                return Ok(true);
            }
            let label = format!("row {:?}", row.id);
            let content = match &update.content {
                None => None,
                // NULL content is allowed, as in a record the vector API wrote: the
                // embedding stays as it is.
                Some(expr) => Some(crate::plan::content_value(eval::eval(expr, Some(&row))?, &label)?),
            };
            let metadata = match &update.metadata {
                None => None,
                Some(expr) => match eval::as_metadata(eval::eval(expr, Some(&row))?)? {
                    Some(metadata) => Some(metadata),
                    None => {
                        return Err(query_error(
                            "metadata cannot be set to NULL: set it to '{}' to empty it",
                        ));
                    }
                },
            };
            let embedding = match &update.embedding {
                None => None,
                Some(expr) => match crate::plan::embedding_value(eval::eval(expr, Some(&row))?, &label)? {
                    Some(v) if v.len() == dimension => Some(v),
                    Some(v) => {
                        return Err(query_error(format!(
                            "the new embedding has {} dimensions, the project's dimension is {dimension}",
                            v.len()
                        )));
                    }
                    None => return Err(query_error("embedding cannot be set to NULL")),
                },
            };
            if changes.len() == MAX_UPDATE_ROWS {
                return Err(query_error(format!(
                    "the UPDATE matches more than {MAX_UPDATE_ROWS} rows, the most one statement changes \
                     (all of them or none): narrow its WHERE and run it in parts"
                )));
            }
            changes.push(RowUpdate {
                id: row.id,
                version: row.version,
                content,
                metadata,
                embedding,
            });
            Ok(true)
        })
        .await?;
        Ok(changes)
    }

    async fn delete(&self, delete: &Delete) -> Result<QueryResult, ApiError> {
        self.until_written("DELETE", || async {
            let mut rows = Vec::new();
            self.scan_all(|row| {
                if eval::matches(delete.filter.as_ref(), &row)? {
                    rows.push(RowVersion {
                        id: row.id,
                        version: row.version,
                    });
                }
                Ok(true)
            })
            .await?;
            if rows.is_empty() {
                return Ok(Some(0));
            }
            self.backend.delete(self.collection, rows).await
        })
        .await
    }

    fn explain(&mut self) -> Value {
        let collection = self.collection;
        match &self.statement.kind {
            Kind::Select(select) => {
                let mut plan = json!({
                    "statement": "SELECT",
                    "collection": collection,
                    "where": select.filter.as_ref().map(describe),
                    "limit": select.limit,
                    "offset": select.offset,
                    "columns": select.items.iter().map(|i| i.name.clone()).collect::<Vec<_>>(),
                });
                let details = if select.aggregate {
                    json!({"strategy": "exact_scan", "aggregate": "count"})
                } else {
                    match strategy(select) {
                        Strategy::Index { op, k, filter, .. } => json!({
                            "strategy": "index_search",
                            "operator": op.symbol(),
                            "k": k,
                            "filter": filter,
                            "recheck": select.filter.is_some(),
                            "fallback": "exact_scan when the index cannot serve the operator or the re-check drops rows",
                        }),
                        Strategy::Scan => json!({
                            "strategy": "exact_scan",
                            "sort": select.order.iter().map(|key| json!({
                                "key": describe(&key.expr),
                                "direction": if key.desc { "DESC" } else { "ASC" },
                                "nulls": if key.nulls_first { "FIRST" } else { "LAST" },
                            })).collect::<Vec<_>>(),
                        }),
                    }
                };
                if let (Value::Object(plan), Value::Object(details)) = (&mut plan, details) {
                    plan.extend(details);
                }
                plan
            }
            Kind::Insert(insert) => json!({
                "statement": "INSERT",
                "collection": collection,
                "strategy": "insert",
                "rows": insert.rows.len(),
            }),
            Kind::Update(update) => {
                let set: Vec<String> = [
                    update.content.as_ref().map(|e| format!("content = {}", describe(e))),
                    update.metadata.as_ref().map(|e| format!("metadata = {}", describe(e))),
                    update
                        .embedding
                        .as_ref()
                        .map(|e| format!("embedding = {}", describe(e))),
                ]
                .into_iter()
                .flatten()
                .collect();
                json!({
                    "statement": "UPDATE",
                    "collection": collection,
                    "strategy": "exact_scan",
                    "where": update.filter.as_ref().map(describe),
                    "set": set,
                })
            }
            Kind::Delete(delete) => json!({
                "statement": "DELETE",
                "collection": collection,
                "strategy": "exact_scan",
                "where": delete.filter.as_ref().map(describe),
            }),
        }
    }
}

fn anyhow_error(message: String) -> anyhow::Error {
    anyhow::anyhow!(message)
}

fn field(name: &str, oid: u32) -> Field {
    Field {
        name: name.to_owned(),
        data_type_id: oid,
    }
}

fn fields(select: &Select) -> Vec<Field> {
    select.items.iter().map(|i| field(&i.name, type_oid(&i.expr))).collect()
}

/// Sorts by the ORDER BY keys, ties broken by id so pages are stable.
fn sort(rows: &mut Sorted, order: &[SortKey]) {
    if order.is_empty() {
        return;
    }
    rows.sort_by(|(a, ra), (b, rb)| {
        for ((x, y), key) in a.iter().zip(b).zip(order) {
            let ordering = match (x, y) {
                (Datum::Null, Datum::Null) => Ordering::Equal,
                (Datum::Null, _) if key.nulls_first => Ordering::Less,
                (Datum::Null, _) => Ordering::Greater,
                (_, Datum::Null) if key.nulls_first => Ordering::Greater,
                (_, Datum::Null) => Ordering::Less,
                _ => {
                    let o = eval::sort_order(x, y, false);
                    if key.desc { o.reverse() } else { o }
                }
            };
            if ordering != Ordering::Equal {
                return ordering;
            }
        }
        ra.id.as_bytes().cmp(rb.id.as_bytes())
    });
}

/// Applies a page to an already final list of rows (the COUNT(*) case).
fn paged(
    rows: Vec<Map<String, Value>>,
    fields: Vec<Field>,
    page: Option<Page>,
    request: &QueryRequest,
    key: &[u8],
) -> QueryResult {
    let total = rows.len() as u64;
    let Some(page) = page else {
        return QueryResult {
            row_count: total,
            rows,
            fields,
            ..QueryResult::default()
        };
    };
    let start = page.offset.min(total) as usize;
    let end = page.limit.map_or(total, |l| page.offset.saturating_add(l).min(total)) as usize;
    let has_more = (end as u64) < total;
    let next_cursor = has_more.then(|| {
        cursor::encode(
            key,
            &cursor::query_hash(&request.query, &request.params),
            Position {
                offset: end as u64,
                limit: page.limit.unwrap_or(total),
            },
        )
    });
    let rows: Vec<_> = rows.into_iter().skip(start).take(end - start).collect();
    QueryResult {
        row_count: rows.len() as u64,
        rows,
        fields,
        total_count: Some(total),
        has_more: Some(has_more),
        next_cursor,
        plan: None,
    }
}

/// An expression as NQL text, for plans.
fn describe(expr: &Expr) -> String {
    match expr {
        Expr::Column(c) => c.name().to_owned(),
        Expr::MetaKey(k) => format!("\"{k}\""),
        Expr::Json { base, key, text } => {
            let arrow = if *text { "->>" } else { "->" };
            match key {
                JsonKey::Key(k) => format!("{}{arrow}'{k}'", describe(base)),
                JsonKey::Index(i) => format!("{}{arrow}{i}", describe(base)),
            }
        }
        Expr::Lit(d) => match d {
            Datum::Null => "NULL".to_owned(),
            Datum::Text(s) => format!("'{}'", s.replace('\'', "''")),
            Datum::Vector(v) => format!("'[{} values]'", v.len()),
            other => other.to_json().to_string(),
        },
        Expr::Distance { op, vector } => format!("embedding {} '[{} values]'", op.symbol(), vector.len()),
        Expr::Binary { op, left, right } => format!("({} {} {})", describe(left), op.symbol(), describe(right)),
        Expr::Not(e) => format!("NOT {}", describe(e)),
        Expr::Neg(e) => format!("-{}", describe(e)),
        Expr::IsNull { expr, negated } => {
            format!("{} IS {}NULL", describe(expr), if *negated { "NOT " } else { "" })
        }
        Expr::InList { expr, list, negated } => format!(
            "{} {}IN ({})",
            describe(expr),
            if *negated { "NOT " } else { "" },
            list.iter().map(describe).collect::<Vec<_>>().join(", ")
        ),
        Expr::Like {
            expr,
            pattern,
            negated,
            case_insensitive,
            ..
        } => format!(
            "{} {}{} {}",
            describe(expr),
            if *negated { "NOT " } else { "" },
            if *case_insensitive { "ILIKE" } else { "LIKE" },
            describe(pattern)
        ),
        Expr::Count => "count(*)".to_owned(),
        Expr::Text(e) => format!("({})::text", describe(e)),
    }
}
