//! What a statement costs in memory, measured: a counting global allocator records the
//! peak of live heap bytes while one statement runs, so these tests fail if a statement
//! takes memory in proportion to how often it names a value or to how many rows it
//! passes over, rather than within NQL's documented budgets.
//!
//! The collection is generated as it is scanned (no row lives longer than NQL keeps
//! it), so the peak is NQL's own.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use chrono::{DateTime, Duration, Utc};
use quiver_common::ApiError;
use quiver_nql::{
    Backend, DistanceOp, MAX_STATEMENT_BYTES, NewRow, QueryRequest, QueryResult, Row, RowUpdate, RowVersion, execute,
    parse,
};
use serde_json::{Map, Value, json};

/// The system allocator, counting live bytes and their peak.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(bytes: usize) {
    let live = LIVE.fetch_add(bytes, Ordering::Relaxed) + bytes;
    PEAK.fetch_max(live, Ordering::Relaxed);
}

// SAFETY: every call is passed to `System` unchanged; only counters are added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract for `alloc`, passed on.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            grew(layout.size());
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract for `alloc_zeroed`, passed on.
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            grew(layout.size());
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract for `dealloc`, passed on.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller's contract for `realloc`, passed on.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            grew(new_size);
        }
        new
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// One measurement at a time: the tests of this binary run on parallel threads.
static MEASURING: Mutex<()> = Mutex::new(());

const MIB: usize = 1 << 20;

/// Runs `work` and returns what it gave and the most heap it held at once beyond what
/// was live when it started.
fn peak_of<T>(work: impl FnOnce() -> T) -> (T, usize) {
    let _one = MEASURING.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let baseline = LIVE.load(Ordering::Relaxed);
    PEAK.store(baseline, Ordering::Relaxed);
    let out = work();
    let peak = PEAK.load(Ordering::Relaxed).saturating_sub(baseline);
    (out, peak)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime")
}

/// A collection of `rows` rows of `content_bytes` of content each, made as they are
/// scanned. Row `i` has id `r{i:05}` and was created `i` minutes after 2024-01-01, so
/// `ORDER BY created_at DESC` is the reverse of id order. Writes are counted, not kept.
struct Generated {
    rows: usize,
    content_bytes: usize,
}

impl Generated {
    fn row(&self, i: usize) -> Row {
        let created: DateTime<Utc> = DateTime::parse_from_rfc3339("2024-01-01T00:00:00Z")
            .expect("a valid timestamp")
            .with_timezone(&Utc)
            + Duration::minutes(i as i64);
        let mut metadata = Map::new();
        metadata.insert("i".to_owned(), json!(i));
        Row {
            id: format!("r{i:05}"),
            content: Some("x".repeat(self.content_bytes)),
            metadata,
            embedding: vec![1.0, 0.0, 0.0],
            created_at: created,
            updated_at: created,
            version: 1,
        }
    }
}

#[async_trait]
impl Backend for Generated {
    fn dimension(&self) -> usize {
        3
    }

    async fn collection_exists(&self, collection: &str) -> Result<bool, ApiError> {
        Ok(collection == "big")
    }

    async fn scan(&self, _collection: &str, after: Option<&str>, limit: usize) -> Result<Vec<Row>, ApiError> {
        let start = match after {
            None => 0,
            Some(id) => {
                id.trim_start_matches('r')
                    .parse::<usize>()
                    .expect("an id this backend made")
                    + 1
            }
        };
        Ok((start..self.rows.min(start + limit)).map(|i| self.row(i)).collect())
    }

    async fn nearest(
        &self,
        _collection: &str,
        _op: DistanceOp,
        _vector: &[f32],
        _k: usize,
        _filter: Option<&Value>,
    ) -> Result<Option<Vec<Row>>, ApiError> {
        Ok(None)
    }

    async fn insert(&self, _collection: &str, rows: Vec<NewRow>) -> Result<Vec<String>, ApiError> {
        Ok(rows.iter().map(|_| "new".to_owned()).collect())
    }

    async fn update(&self, _collection: &str, rows: Vec<RowUpdate>) -> Result<Option<u64>, ApiError> {
        Ok(Some(rows.len() as u64))
    }

    async fn delete(&self, _collection: &str, rows: Vec<RowVersion>) -> Result<Option<u64>, ApiError> {
        Ok(Some(rows.len() as u64))
    }
}

/// 4,000 rows of 64 KiB: 250 MiB of content, four times the statement budget.
fn big() -> Generated {
    Generated {
        rows: 4_000,
        content_bytes: 64 * 1024,
    }
}

fn request(query: &str, params: Vec<Value>, limit: Option<u64>, offset: Option<u64>) -> QueryRequest {
    QueryRequest {
        query: query.to_owned(),
        params,
        limit,
        offset,
        ..QueryRequest::default()
    }
}

fn run(backend: &Generated, request: &QueryRequest) -> (Result<QueryResult, ApiError>, usize) {
    let runtime = runtime();
    peak_of(|| runtime.block_on(execute(backend, request, b"key")))
}

fn ids(result: &QueryResult) -> Vec<&str> {
    result
        .rows
        .iter()
        .map(|row| row.get("id").and_then(Value::as_str).unwrap_or("?"))
        .collect()
}

fn query_error(outcome: Result<QueryResult, ApiError>) -> String {
    match outcome {
        Err(ApiError::Query { message, .. }) => message,
        other => panic!("expected a QUERY_ERROR, got {:?}", other.map(|r| r.row_count)),
    }
}

#[test]
fn a_large_parameter_named_thousands_of_times_takes_memory_for_one_copy() {
    let param = json!("p".repeat(200 * 1024));
    let names = vec!["$1"; 4_990].join(", ");

    // Planning: 4,990 references to 200 KiB would be a gigabyte of copies.
    let select = format!("SELECT {names} FROM big");
    let (planned, peak) = peak_of(|| parse(&select, std::slice::from_ref(&param)).map(drop));
    assert!(planned.is_ok(), "{planned:?}");
    assert!(peak < 32 * MIB, "planning held {} MiB", peak / MIB);

    // Running: every row compares with every reference, borrowing the value.
    let backend = Generated {
        rows: 200,
        content_bytes: 1024,
    };
    let filter = format!("SELECT id FROM big WHERE content IN ({names}) OR id = 'r00007'");
    let (result, peak) = run(&backend, &request(&filter, vec![param], None, None));
    let result = result.expect("runs");
    assert_eq!(ids(&result), ["r00007"]);
    assert!(peak < 32 * MIB, "running held {} MiB", peak / MIB);
}

#[test]
fn a_deep_offset_over_rows_of_large_content_holds_a_bounded_amount_and_counts_every_row() {
    let backend = big();
    let bound = MAX_STATEMENT_BYTES + 32 * MIB;

    // A request offset past the end: no rows, and totalCount is every row.
    let (result, peak) = run(
        &backend,
        &request(
            "SELECT * FROM big ORDER BY created_at DESC",
            vec![],
            Some(10),
            Some(9_000_000_000_000_000_000),
        ),
    );
    let result = result.expect("runs");
    assert_eq!(result.row_count, 0);
    assert_eq!(result.total_count, Some(4_000));
    assert_eq!(result.has_more, Some(false));
    assert!(peak < bound, "held {} MiB", peak / MIB);

    // The statement's own OFFSET past the end, with and without ORDER BY.
    for statement in [
        "SELECT * FROM big ORDER BY created_at DESC OFFSET 9000000000000000000 LIMIT 1",
        "SELECT * FROM big OFFSET 9000000000000000000 LIMIT 1",
    ] {
        let (result, peak) = run(&backend, &request(statement, vec![], Some(10), None));
        let result = result.expect("runs");
        assert_eq!((result.row_count, result.total_count), (0, Some(0)), "{statement}");
        assert!(peak < bound, "{statement}: held {} MiB", peak / MIB);
    }

    // A deep page that does exist: the last ten rows, read again once sorted.
    let (result, peak) = run(
        &backend,
        &request(
            "SELECT id, content FROM big ORDER BY created_at DESC",
            vec![],
            Some(100),
            Some(3_990),
        ),
    );
    let result = result.expect("runs");
    let expected: Vec<String> = (0..10).rev().map(|i| format!("r{i:05}")).collect();
    assert_eq!(ids(&result), expected);
    assert_eq!(result.total_count, Some(4_000));
    assert!(
        result
            .rows
            .iter()
            .all(|row| row["content"].as_str().map(str::len) == Some(64 * 1024))
    );
    assert!(peak < bound, "held {} MiB", peak / MIB);
}

#[test]
fn a_limit_of_ten_thousand_over_rows_of_large_content_stays_within_the_budget() {
    let backend = big();

    // Every column: 250 MiB of rows to return, refused once past the budget.
    let (outcome, peak) = run(
        &backend,
        &request("SELECT * FROM big ORDER BY created_at LIMIT 10000", vec![], None, None),
    );
    let message = query_error(outcome);
    assert!(
        message.contains("rows come to more than 67108864 bytes (64 MiB)"),
        "{message}"
    );
    assert!(peak < MAX_STATEMENT_BYTES + 32 * MIB, "held {} MiB", peak / MIB);

    // The columns that are small: every row, holding only what is returned.
    let (result, peak) = run(
        &backend,
        &request(
            "SELECT id, created_at FROM big ORDER BY created_at LIMIT 10000",
            vec![],
            None,
            None,
        ),
    );
    let result = result.expect("runs");
    assert_eq!(result.row_count, 4_000);
    assert_eq!(ids(&result).first().copied(), Some("r00000"));
    assert!(peak < 32 * MIB, "held {} MiB", peak / MIB);
}

#[test]
fn an_update_setting_a_large_value_on_many_rows_is_refused_within_the_budget() {
    let backend = big();
    let (outcome, peak) = run(
        &backend,
        &request(
            "UPDATE big SET content = $1",
            vec![json!("u".repeat(200 * 1024))],
            None,
            None,
        ),
    );
    let message = query_error(outcome);
    assert!(
        message.contains("new values come to more than 67108864 bytes (64 MiB)"),
        "{message}"
    );
    assert!(peak < MAX_STATEMENT_BYTES + 32 * MIB, "held {} MiB", peak / MIB);
}
