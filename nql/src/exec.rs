//! Running a [`Statement`] against a [`Backend`]: choosing between the index and an
//! exact scan, re-checking WHERE, sorting, paging, projecting, and writing.
//!
//! Memory is bounded by [`MAX_STATEMENT_BYTES`], not by the collection: a scan asks for
//! pages sized by their rows' bytes, holds only the rows that may end up in the page
//! asked for (and only the columns the statement returns), drops the rows themselves
//! to keep just their sort keys and ids when even those outgrow the budget (reading the
//! page's rows again at the end), and refuses what would still not fit.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::sync::Arc;

use quiver_common::ApiError;
use serde_json::{Map, Value, json};

use crate::budget::{
    MAX_STATEMENT_BYTES, MAX_VALUE_BYTES, bytes_text, datum_bytes, metadata_bytes, row_bytes, value_bytes,
};
use crate::cursor::{self, Position};
use crate::error::{query_error, query_error_at};
use crate::eval::{self, Datum, type_oid};
use crate::plan::{BinOp, Column, Delete, Expr, Insert, JsonKey, Kind, Select, SortKey, Update};
use crate::{Backend, DistanceOp, Field, QueryRequest, QueryResult, Row, RowUpdate, RowVersion, Statement, parse};

/// The most rows one `Backend::scan` call asks for; the executor yields to the runtime
/// between pages.
const SCAN_PAGE: usize = 512;
/// The rows the first `Backend::scan` call of a statement asks for, before the size of
/// the collection's rows is known.
const FIRST_SCAN_PAGE: usize = 32;
/// About the most bytes of rows one `Backend::scan` call asks for: later pages ask for
/// as many rows of the largest size seen so far as fit.
const SCAN_PAGE_BYTES: usize = 8 << 20;
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
    execute_within(backend, statement, request, cursor_key, MAX_STATEMENT_BYTES).await
}

/// [`execute_parsed`] with `budget` in place of [`MAX_STATEMENT_BYTES`] (tests take
/// the paths a full budget takes only over tens of megabytes with a few rows).
pub(crate) async fn execute_within(
    backend: &dyn Backend,
    statement: &Statement,
    request: &QueryRequest,
    cursor_key: &[u8],
    budget: usize,
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
        budget,
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
        vector: Arc<[f32]>,
        k: u64,
        filter: Option<Value>,
    },
    /// Read every row, filter, sort.
    Scan,
}

/// The distance an ORDER BY key sorts nearest-first by: `embedding <=> v` ascending,
/// or a similarity like `1 - (embedding <=> v)` or `-(embedding <#> v)` descending.
fn nearest_first(key: &SortKey) -> Option<(DistanceOp, &Arc<[f32]>)> {
    match (&key.expr, key.desc) {
        (Expr::Distance { op, vector }, false) => Some((*op, vector)),
        (
            Expr::Binary {
                op: BinOp::Sub,
                left,
                right,
            },
            true,
        ) if matches!(left.as_ref(), Expr::Lit(lit) if matches!(**lit, Datum::Int(_) | Datum::Num(_))) => {
            match right.as_ref() {
                Expr::Distance { op, vector } => Some((*op, vector)),
                _ => None,
            }
        }
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
    let mut room = MAX_PUSHDOWN_BYTES;
    let filter = match &select.filter {
        None => None,
        Some(filter) => match pushdown(filter, &mut room) {
            Some(pushed) => Some(pushed),
            None => return Strategy::Scan,
        },
    };
    Strategy::Index {
        op,
        vector: Arc::clone(vector),
        k,
        filter,
    }
}

/// The most bytes of keys and values a pushed-down filter holds. Past it, the rest of
/// WHERE is not pushed (WHERE is checked on every row anyway): a statement naming a
/// large parameter many times would otherwise write it into the filter as often.
const MAX_PUSHDOWN_BYTES: usize = MAX_VALUE_BYTES;

/// Takes `bytes` from what a pushed-down filter may still hold, if they are there.
fn take(room: &mut usize, bytes: usize) -> Option<()> {
    *room = room.checked_sub(bytes)?;
    Some(())
}

/// Translates the part of a WHERE clause that the JSON filter language can say, so
/// the index filters while it searches. The result may let through more rows than
/// WHERE does (never fewer); the executor re-checks WHERE on every row. It holds at
/// most `room` bytes of keys and values, less each time.
fn pushdown(expr: &Expr, room: &mut usize) -> Option<Value> {
    match expr {
        Expr::Binary {
            op: BinOp::And,
            left,
            right,
        } => match (pushdown(left, room), pushdown(right, room)) {
            (Some(l), Some(r)) => Some(json!({ "$and": [l, r] })),
            (Some(one), None) | (None, Some(one)) => Some(one),
            (None, None) => None,
        },
        Expr::Binary {
            op: BinOp::Or,
            left,
            right,
        } => Some(json!({ "$or": [pushdown(left, room)?, pushdown(right, room)?] })),
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
            take(room, key.len())?;
            if text {
                // `metadata->>'k' = 'v'` only when no non-string JSON value prints as v.
                return match (op, &**datum) {
                    (BinOp::Eq, Datum::Text(s)) if serde_json::from_str::<Value>(s).is_err() => {
                        take(room, s.len())?;
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
            let value = scalar(datum, op == BinOp::Eq, room)?;
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
            take(room, key.len())?;
            let values = list
                .iter()
                .map(|item| match item {
                    Expr::Lit(datum) => scalar(datum, true, room),
                    _ => None,
                })
                .collect::<Option<Vec<_>>>()?;
            Some(json!({ key: { "$in": values } }))
        }
        Expr::IsNull { expr, negated } => {
            let (key, _) = pushable_key(expr)?;
            take(room, key.len())?;
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
/// booleans for equality; taken from `room` (a number or boolean counts 8 bytes).
fn scalar(datum: &Datum, equality: bool, room: &mut usize) -> Option<Value> {
    let bytes = match datum {
        Datum::Text(s) | Datum::Json(Value::String(s)) => s.len(),
        _ => 8,
    };
    let value = match datum {
        Datum::Int(_) | Datum::Num(_) | Datum::Text(_) if bytes <= *room => {
            Some(datum.to_json()).filter(|v| !v.is_null())
        }
        Datum::Bool(b) if equality => Some(Value::Bool(*b)),
        Datum::Json(v @ (Value::String(_) | Value::Number(_))) if bytes <= *room => Some(v.clone()),
        Datum::Json(Value::Bool(b)) if equality => Some(Value::Bool(*b)),
        _ => None,
    }?;
    take(room, bytes)?;
    Some(value)
}

struct Executor<'a> {
    backend: &'a dyn Backend,
    statement: &'a Statement,
    collection: &'a str,
    dimension: usize,
    /// Bytes of rows the statement may hold, and may return ([`MAX_STATEMENT_BYTES`]).
    budget: usize,
}

/// A matching row as a SELECT holds it while it sorts and pages: its sort keys, its id
/// and, until the rows held outgrow the budget, the row itself with only the columns
/// the statement returns.
struct Held {
    keys: Vec<Datum>,
    id: String,
    /// Boxed: an entry whose row was dropped is a few dozen bytes.
    row: Option<Box<Row>>,
    /// What the entry takes in memory, about.
    bytes: usize,
}

/// The columns a SELECT's output reads; the rows it holds drop the others.
#[derive(Debug, Clone, Copy, Default)]
struct Needs {
    content: bool,
    metadata: bool,
    embedding: bool,
}

impl Needs {
    fn of(select: &Select) -> Needs {
        let mut needs = Needs::default();
        for item in &select.items {
            needs.add(&item.expr);
        }
        needs
    }

    fn add(&mut self, expr: &Expr) {
        match expr {
            Expr::Column(Column::Content) => self.content = true,
            Expr::Column(Column::Metadata) | Expr::MetaKey(_) => self.metadata = true,
            Expr::Column(Column::Embedding) | Expr::Distance { .. } => self.embedding = true,
            Expr::Column(_) | Expr::Lit(_) | Expr::Count => {}
            Expr::Json { base, .. } => self.add(base),
            Expr::Binary { left, right, .. } => {
                self.add(left);
                self.add(right);
            }
            Expr::Not(inner) | Expr::Neg(inner) | Expr::IsNull { expr: inner, .. } | Expr::Text(inner) => {
                self.add(inner);
            }
            Expr::InList { expr, list, .. } => {
                self.add(expr);
                list.iter().for_each(|item| self.add(item));
            }
            Expr::Like { expr, pattern, .. } => {
                self.add(expr);
                self.add(pattern);
            }
        }
    }

    /// The row with only the columns needed.
    fn slim(self, mut row: Row) -> Row {
        if !self.content {
            row.content = None;
        }
        if !self.metadata {
            row.metadata = Map::new();
        }
        if !self.embedding {
            row.embedding = Vec::new();
        }
        row
    }
}

/// Whether an expression's value depends on the row (a constant sort key orders
/// nothing, so it is not evaluated per row).
fn reads_row(expr: &Expr) -> bool {
    match expr {
        Expr::Column(_) | Expr::MetaKey(_) | Expr::Distance { .. } | Expr::Count => true,
        Expr::Lit(_) => false,
        Expr::Json { base, .. } => reads_row(base),
        Expr::Binary { left, right, .. } => reads_row(left) || reads_row(right),
        Expr::Not(inner) | Expr::Neg(inner) | Expr::IsNull { expr: inner, .. } | Expr::Text(inner) => reads_row(inner),
        Expr::InList { expr, list, .. } => reads_row(expr) || list.iter().any(reads_row),
        Expr::Like { expr, pattern, .. } => reads_row(expr) || reads_row(pattern),
    }
}

fn sort_too_large(budget: usize) -> ApiError {
    ApiError::Query {
        message: format!(
            "the SELECT cannot sort the rows before the end of its page within the {} a statement holds",
            bytes_text(budget)
        ),
        detail: Some(
            "an exact scan keeps the sort keys and ids of every row up to OFFSET + LIMIT (and the page asked \
             for): use a smaller OFFSET, sort by smaller values, narrow WHERE, or page by the sort key \
             (WHERE created_at > $1 ORDER BY created_at LIMIT n) rather than by offset"
                .to_owned(),
        ),
    }
}

fn result_too_large(budget: usize) -> ApiError {
    ApiError::Query {
        message: format!(
            "the SELECT's rows come to more than {}, the most a statement returns at once",
            bytes_text(budget)
        ),
        detail: Some(
            "ask for fewer rows at once (send limit and follow nextCursor page by page, or a smaller LIMIT), \
             or select fewer or smaller columns (content and embedding are the largest)"
                .to_owned(),
        ),
    }
}

/// The rows an exact scan holds: of those seen so far, the first `keep` in sort order,
/// within `budget` bytes. Past `budget`, it keeps the first `keep`, and if those alone
/// take more than half of it, it drops the rows (keeping keys and ids, so the page's
/// rows are read again at the end), then refuses if even keys and ids take more than
/// half. Each cut frees at least half the budget, so cuts stay rare.
struct Holding<'s> {
    order: &'s [SortKey],
    keep: usize,
    budget: usize,
    needs: Needs,
    entries: Vec<Held>,
    bytes: usize,
    rows_dropped: bool,
}

impl Holding<'_> {
    fn push(&mut self, keys: Vec<Datum>, key_bytes: usize, row: Row) -> Result<(), ApiError> {
        let id = row.id.clone();
        let row = (!self.rows_dropped).then(|| Box::new(self.needs.slim(row)));
        let bytes = size_of::<Held>() + id.len() + key_bytes + row.as_deref().map_or(0, row_bytes);
        self.bytes += bytes;
        self.entries.push(Held { keys, id, row, bytes });
        if self.entries.len() >= self.keep.saturating_mul(2).max(SCAN_PAGE) || self.bytes > self.budget {
            self.cut()?;
        }
        Ok(())
    }

    /// Keeps the first `keep` entries, then drops rows or refuses as the budget says.
    fn cut(&mut self) -> Result<(), ApiError> {
        // The order is total (ties go by id), so the entries cut here are never among
        // the first `keep`.
        sort(&mut self.entries, self.order);
        self.entries.truncate(self.keep);
        self.bytes = self.entries.iter().map(|e| e.bytes).sum();
        if self.bytes > self.budget / 2 && !self.rows_dropped {
            self.rows_dropped = true;
            for entry in &mut self.entries {
                if let Some(row) = entry.row.take() {
                    entry.bytes -= row_bytes(&row);
                }
            }
            self.bytes = self.entries.iter().map(|e| e.bytes).sum();
        }
        if self.bytes > self.budget / 2 {
            return Err(sort_too_large(self.budget));
        }
        Ok(())
    }

    fn finish(mut self) -> Vec<Held> {
        sort(&mut self.entries, self.order);
        self.entries.truncate(self.keep);
        self.entries
    }
}

/// What an exact scan found: the entries it held, in order, the first of them at
/// position `base` among all matches, and how many rows matched.
struct Scanned {
    held: Vec<Held>,
    base: u64,
    count: u64,
}

/// Bytes of rows a SELECT has made to return so far, against its budget.
struct Returned {
    bytes: usize,
    budget: usize,
}

impl Returned {
    fn add(&mut self, bytes: usize) -> Result<(), ApiError> {
        self.bytes = self.bytes.saturating_add(bytes);
        if self.bytes > self.budget {
            return Err(result_too_large(self.budget));
        }
        Ok(())
    }
}

/// A row as the SELECT returns it, counted against `returned` value by value (a
/// statement may name a large column many times).
fn project(select: &Select, row: &Row, returned: &mut Returned) -> Result<Map<String, Value>, ApiError> {
    let mut map = Map::new();
    for item in &select.items {
        let value = eval::eval(&item.expr, Some(row))?.to_json();
        returned.add(size_of::<String>() + item.name.len() + value_bytes(&value) + 16)?;
        map.insert(item.name.clone(), value);
    }
    Ok(map)
}

impl Executor<'_> {
    /// Reads the collection page by page, calling `visit` for each row until it says stop.
    async fn scan_all(&self, mut visit: impl FnMut(Row) -> Result<bool, ApiError>) -> Result<(), ApiError> {
        let mut after: Option<String> = None;
        let mut asked = FIRST_SCAN_PAGE;
        let mut largest = 0usize;
        loop {
            let rows = self.backend.scan(self.collection, after.as_deref(), asked).await?;
            let full = rows.len() >= asked;
            after = rows.last().map(|r| r.id.clone());
            // A page of large rows (long contents) is held whole while it is read: the
            // next asks for as many rows of the largest size seen so far as fit.
            largest = rows.iter().map(row_bytes).fold(largest, usize::max);
            asked = (SCAN_PAGE_BYTES / largest.max(1)).clamp(1, SCAN_PAGE);
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

    /// A row's sort keys and the bytes they take. A key that does not read the row is
    /// the same for every row and orders nothing: it is NULL here, not a copy of a
    /// (possibly large) value per row. Keys taking more than half the budget for one
    /// row are refused.
    fn sort_keys(&self, order: &[SortKey], row: &Row) -> Result<(Vec<Datum>, usize), ApiError> {
        let mut keys = Vec::with_capacity(order.len());
        let mut bytes = 0usize;
        for key in order {
            let datum = if reads_row(&key.expr) {
                eval::eval(&key.expr, Some(row))?.into_owned()
            } else {
                Datum::Null
            };
            bytes += datum_bytes(&datum);
            if bytes > self.budget / 2 {
                return Err(sort_too_large(self.budget));
            }
            keys.push(datum);
        }
        Ok((keys, bytes))
    }

    /// How many rows match a SELECT's WHERE.
    async fn count_matches(&self, select: &Select) -> Result<u64, ApiError> {
        let mut count = 0u64;
        self.scan_all(|row| {
            if eval::matches(select.filter.as_ref(), &row)? {
                count += 1;
            }
            Ok(true)
        })
        .await?;
        Ok(count)
    }

    /// Exact scan: the first `keep` matching rows in sort order, and how many matched.
    /// `stop_at`: without ORDER BY, the scan may stop once this many rows matched.
    /// `first`: no row before this position is returned. Every match is counted, but
    /// only rows that may be returned are held (without ORDER BY, rows come in their
    /// final order, so only those from `first` to `keep`), within the budget.
    async fn scan_select(
        &self,
        select: &Select,
        stop_at: Option<u64>,
        keep: u64,
        first: u64,
    ) -> Result<Scanned, ApiError> {
        let unordered = select.order.is_empty();
        let base = if unordered { first.min(keep) } else { 0 };
        let mut holding = Holding {
            order: &select.order,
            keep: usize::try_from(keep - base).unwrap_or(usize::MAX),
            budget: self.budget,
            needs: Needs::of(select),
            entries: Vec::new(),
            bytes: 0,
            rows_dropped: false,
        };
        let mut count = 0u64;
        self.scan_all(|row| {
            if !eval::matches(select.filter.as_ref(), &row)? {
                return Ok(true);
            }
            let position = count;
            count += 1;
            if !unordered || (base..keep).contains(&position) {
                let (keys, key_bytes) = self.sort_keys(&select.order, &row)?;
                holding.push(keys, key_bytes, row)?;
            }
            Ok(stop_at.is_none_or(|n| count < n))
        })
        .await?;
        Ok(Scanned {
            held: holding.finish(),
            base,
            count,
        })
    }

    /// The rows of `entries` as the SELECT returns them, in order. Entries whose rows
    /// were dropped are read again (a second scan, by id), each re-checked against
    /// WHERE: a row deleted, or changed to fail WHERE, since the first read is left out.
    async fn materialize(&self, select: &Select, entries: Vec<Held>) -> Result<Vec<Map<String, Value>>, ApiError> {
        let mut returned = Returned {
            bytes: 0,
            budget: self.budget,
        };
        let mut out: Vec<Option<Map<String, Value>>> = Vec::with_capacity(entries.len());
        let mut missing: HashMap<String, usize> = HashMap::new();
        for (index, entry) in entries.into_iter().enumerate() {
            match entry.row {
                Some(row) => out.push(Some(project(select, &row, &mut returned)?)),
                None => {
                    missing.insert(entry.id, index);
                    out.push(None);
                }
            }
        }
        if !missing.is_empty() {
            self.scan_all(|row| {
                if let Some(index) = missing.remove(row.id.as_str())
                    && eval::matches(select.filter.as_ref(), &row)?
                {
                    out[index] = Some(project(select, &row, &mut returned)?);
                }
                Ok(!missing.is_empty())
            })
            .await?;
        }
        Ok(out.into_iter().flatten().collect())
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
            let count = self.count_matches(select).await?;
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

        let mut result: Option<Vec<Held>> = None;
        if let Strategy::Index { op, vector, k, filter } = strategy(select) {
            result = self.index_select(select, op, &vector, k, filter.as_ref()).await?;
        }
        let scanned = match result {
            Some(held) => Scanned {
                count: held.len() as u64,
                held,
                base: 0,
            },
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
                // Nor are rows before OFFSET and the page's own offset.
                let first = select.offset.saturating_add(page.map_or(0, |page| page.offset));
                self.scan_select(select, stop_at, select.offset.saturating_add(keep), first)
                    .await?
            }
        };
        let matched = scanned.count;
        // The window over every match, of which `held` holds at least what is returned.
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

        // Page first (positions from `start`), then project only the rows returned.
        let total = (end - start) as u64;
        let (from, to, meta) = match page {
            None => (start, end, None),
            Some(page) => {
                let from = page.offset.min(total) as usize;
                let to = page.limit.map_or(total, |l| page.offset.saturating_add(l).min(total)) as usize;
                let has_more = (to as u64) < total;
                let next = has_more.then(|| {
                    let limit = page.limit.unwrap_or(total);
                    cursor::encode(
                        cursor_key,
                        &cursor::query_hash(&request.query, &request.params),
                        Position {
                            offset: to as u64,
                            limit,
                        },
                    )
                });
                (start + from, start + to, Some((total, has_more, next)))
            }
        };
        // `held[i]` is the row at position `base + i`.
        let Scanned { mut held, base, .. } = scanned;
        let base = base as usize;
        let to = to.saturating_sub(base).min(held.len());
        let from = from.saturating_sub(base).min(to);
        held.truncate(to);
        held.drain(..from);
        let out = self.materialize(select, held).await?;
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
    ) -> Result<Option<Vec<Held>>, ApiError> {
        if k == 0 {
            return Ok(Some(Vec::new()));
        }
        let k = k as usize;
        let Some(found) = self.backend.nearest(self.collection, op, vector, k, filter).await? else {
            return Ok(None);
        };
        let returned = found.len();
        let needs = Needs::of(select);
        let mut kept: Vec<Held> = Vec::with_capacity(returned);
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
                let (keys, _) = self.sort_keys(&select.order, &row)?;
                kept.push(Held {
                    keys,
                    id: row.id.clone(),
                    row: Some(Box::new(needs.slim(row))),
                    bytes: 0,
                });
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

    /// The UPDATE's new values for each row it matches, as the rows are now. Each row
    /// owns its new values (a `$1` set on every row is a copy per row), so the rows
    /// come to at most the budget, which the refusal says how to stay within.
    async fn updates(&self, update: &Update) -> Result<Vec<RowUpdate>, ApiError> {
        let mut changes = Vec::new();
        let mut bytes = 0usize;
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
                Some(expr) => Some(crate::plan::content_value(
                    eval::eval(expr, Some(&row))?.into_owned(),
                    &label,
                )?),
            };
            let metadata = match &update.metadata {
                None => None,
                Some(expr) => match eval::as_metadata(eval::eval(expr, Some(&row))?.into_owned())? {
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
                Some(expr) => match crate::plan::embedding_value(eval::eval(expr, Some(&row))?.into_owned(), &label)? {
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
            let change = RowUpdate {
                id: row.id,
                version: row.version,
                content,
                metadata,
                embedding,
            };
            bytes = bytes.saturating_add(update_bytes(&change));
            if bytes > self.budget {
                return Err(query_error(format!(
                    "the UPDATE's new values come to more than {}, the most one statement rewrites (all of its \
                     rows or none): narrow its WHERE and run it in parts",
                    bytes_text(self.budget)
                )));
            }
            changes.push(change);
            Ok(true)
        })
        .await?;
        Ok(changes)
    }

    async fn delete(&self, delete: &Delete) -> Result<QueryResult, ApiError> {
        self.until_written("DELETE", || async {
            // The ids of the rows it deletes, within the statement's budget (a million
            // rows' come to some 70 MB).
            let (mut rows, mut bytes) = (Vec::new(), 0usize);
            self.scan_all(|row| {
                if eval::matches(delete.filter.as_ref(), &row)? {
                    bytes = bytes.saturating_add(row.id.len() + std::mem::size_of::<RowVersion>());
                    if bytes > self.budget {
                        return Err(query_error(format!(
                            "the DELETE matches more rows than one statement deletes: their ids come to more than {} \
                             (all of its rows or none): narrow its WHERE and run it in parts",
                            bytes_text(self.budget)
                        )));
                    }
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

/// About the memory an UPDATE's new values for a row take.
fn update_bytes(update: &RowUpdate) -> usize {
    size_of::<RowUpdate>()
        + update.id.len()
        + update.content.as_ref().and_then(Option::as_ref).map_or(0, String::len)
        + update.metadata.as_ref().map_or(0, metadata_bytes)
        + update.embedding.as_ref().map_or(0, |v| v.len() * 4)
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
fn sort(rows: &mut [Held], order: &[SortKey]) {
    if order.is_empty() {
        return;
    }
    rows.sort_by(|ra, rb| {
        for ((x, y), key) in ra.keys.iter().zip(&rb.keys).zip(order) {
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

/// The most characters of a literal a plan shows: a statement may name a large
/// parameter many times.
const DESCRIBED_CHARS: usize = 100;

/// `text`, or its first [`DESCRIBED_CHARS`] characters and `…`.
fn shortened(text: &str) -> std::borrow::Cow<'_, str> {
    match text.char_indices().nth(DESCRIBED_CHARS) {
        None => std::borrow::Cow::Borrowed(text),
        Some((at, _)) => std::borrow::Cow::Owned(format!("{}…", &text[..at])),
    }
}

/// A JSON value's text, shortened as [`shortened`] does, without writing out more of
/// a large value than is shown.
fn shortened_json(value: &Value) -> String {
    match crate::budget::json_len_within(value, DESCRIBED_CHARS * 4) {
        Some(_) => shortened(&value.to_string()).into_owned(),
        None => {
            let mut prefix = Vec::new();
            let mut writer = crate::budget::Prefix {
                out: &mut prefix,
                limit: DESCRIBED_CHARS * 4,
            };
            // Stops with an error once the prefix is long enough.
            let _ = serde_json::to_writer(&mut writer, value);
            format!(
                "{}…",
                shortened(&String::from_utf8_lossy(&prefix)).trim_end_matches('…')
            )
        }
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
        Expr::Lit(d) => match &**d {
            Datum::Null => "NULL".to_owned(),
            Datum::Text(s) => format!("'{}'", shortened(s).replace('\'', "''")),
            Datum::Vector(v) => format!("'[{} values]'", v.len()),
            Datum::Json(v) => shortened_json(v),
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
