//! An in-memory [`Backend`] for tests (this crate's, and others' with the `testing`
//! feature). Its index is exact and serves one metric, so tests can tell the index
//! path from the scan path and see what filter was pushed down.

use std::collections::BTreeMap;
use std::sync::Mutex;

use async_trait::async_trait;
use chrono::{DateTime, Duration, Utc};
use quiver_common::ApiError;
use serde_json::{Map, Value};

use crate::{Backend, DistanceOp, NewRow, Row, RowUpdate, RowVersion};

/// Another client's write to a collection's rows.
type Meanwhile = Box<dyn FnOnce(&mut BTreeMap<String, Row>) + Send>;

/// One `nearest` call, as the backend received it.
#[derive(Debug, Clone, PartialEq)]
pub struct NearestCall {
    pub op: DistanceOp,
    pub k: usize,
    pub filter: Option<Value>,
}

/// Collections in a map; `nearest` serves only `metric` (like a usearch index built
/// for the project's metric) and answers `None` for the other operators.
pub struct MemoryBackend {
    dimension: usize,
    metric: DistanceOp,
    collections: Mutex<BTreeMap<String, BTreeMap<String, Row>>>,
    calls: Mutex<Vec<NearestCall>>,
    next_id: Mutex<u64>,
    /// The last version given to a row.
    version: Mutex<i64>,
    /// Writes of other clients, each landing just before one of the statements' writes.
    meanwhile: Mutex<Vec<Meanwhile>>,
}

/// A fixed clock: row `n` was created `n` minutes after 2024-01-01T00:00:00Z.
pub fn timestamp(n: i64) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2024-01-01T00:00:00Z")
        .expect("a valid timestamp")
        .with_timezone(&Utc)
        + Duration::minutes(n)
}

impl MemoryBackend {
    pub fn new(dimension: usize, metric: DistanceOp) -> Self {
        MemoryBackend {
            dimension,
            metric,
            collections: Mutex::new(BTreeMap::new()),
            calls: Mutex::new(Vec::new()),
            next_id: Mutex::new(0),
            version: Mutex::new(0),
            meanwhile: Mutex::new(Vec::new()),
        }
    }

    /// Has another client's write change the written collection's rows just before the
    /// next UPDATE or DELETE writes (after its statement read them). Rows it changes get
    /// a new version.
    pub fn meanwhile(&self, write: impl FnOnce(&mut BTreeMap<String, Row>) + Send + 'static) {
        self.meanwhile.lock().expect("lock").push(Box::new(write));
    }

    fn next_version(&self) -> i64 {
        let mut version = self.version.lock().expect("lock");
        *version += 1;
        *version
    }

    /// Runs the next write of another client, if any, on `table`.
    fn interleave(&self, table: &mut BTreeMap<String, Row>) {
        let mut pending = self.meanwhile.lock().expect("lock");
        if pending.is_empty() {
            return;
        }
        let write = pending.remove(0);
        drop(pending);
        let before = table.clone();
        write(table);
        for row in table.values_mut() {
            if before.get(&row.id) != Some(row) {
                row.version = self.next_version();
            }
        }
    }

    /// Whether every row read is still there at the version read.
    fn unchanged<'r>(table: &BTreeMap<String, Row>, mut read: impl Iterator<Item = (&'r str, i64)>) -> bool {
        read.all(|(id, version)| table.get(id).is_some_and(|row| row.version == version))
    }

    /// Adds an empty collection.
    pub fn create(&self, collection: &str) {
        self.collections
            .lock()
            .expect("lock")
            .entry(collection.to_owned())
            .or_default();
    }

    /// Adds a row as is, at a new version.
    pub fn put(&self, collection: &str, mut row: Row) {
        row.version = self.next_version();
        self.collections
            .lock()
            .expect("lock")
            .entry(collection.to_owned())
            .or_default()
            .insert(row.id.clone(), row);
    }

    /// The rows of a collection in id order.
    pub fn rows(&self, collection: &str) -> Vec<Row> {
        self.collections
            .lock()
            .expect("lock")
            .get(collection)
            .map(|rows| rows.values().cloned().collect())
            .unwrap_or_default()
    }

    /// The `nearest` calls so far.
    pub fn nearest_calls(&self) -> Vec<NearestCall> {
        self.calls.lock().expect("lock").clone()
    }

    /// A stand-in embedding model: deterministic, from the text's bytes.
    pub fn embed(&self, text: &str) -> Vec<f32> {
        let mut v = vec![0.0f32; self.dimension];
        for (i, b) in text.bytes().enumerate() {
            if let Some(slot) = v.get_mut(i % self.dimension.max(1)) {
                *slot += f32::from(b) / 255.0;
            }
        }
        v
    }

    fn missing(collection: &str) -> ApiError {
        ApiError::NotFound(format!("collection {collection:?} not found"))
    }
}

#[async_trait]
impl Backend for MemoryBackend {
    fn dimension(&self) -> usize {
        self.dimension
    }

    async fn collection_exists(&self, collection: &str) -> Result<bool, ApiError> {
        Ok(self.collections.lock().expect("lock").contains_key(collection))
    }

    async fn scan(&self, collection: &str, after: Option<&str>, limit: usize) -> Result<Vec<Row>, ApiError> {
        let collections = self.collections.lock().expect("lock");
        let rows = collections.get(collection).ok_or_else(|| Self::missing(collection))?;
        Ok(rows
            .values()
            .filter(|r| after.is_none_or(|a| r.id.as_str() > a))
            .take(limit)
            .cloned()
            .collect())
    }

    async fn nearest(
        &self,
        collection: &str,
        op: DistanceOp,
        vector: &[f32],
        k: usize,
        filter: Option<&Value>,
    ) -> Result<Option<Vec<Row>>, ApiError> {
        self.calls.lock().expect("lock").push(NearestCall {
            op,
            k,
            filter: filter.cloned(),
        });
        if op != self.metric {
            return Ok(None);
        }
        let collections = self.collections.lock().expect("lock");
        let rows = collections.get(collection).ok_or_else(|| Self::missing(collection))?;
        let mut found: Vec<(f32, Row)> = rows
            .values()
            .filter(|r| filter.is_none_or(|f| filter_matches(f, &r.metadata)))
            .map(|r| (op.distance(&r.embedding, vector), r.clone()))
            .collect();
        found.sort_by(|a, b| a.0.total_cmp(&b.0).then_with(|| a.1.id.cmp(&b.1.id)));
        Ok(Some(found.into_iter().take(k).map(|(_, r)| r).collect()))
    }

    async fn insert(&self, collection: &str, rows: Vec<NewRow>) -> Result<Vec<String>, ApiError> {
        let mut collections = self.collections.lock().expect("lock");
        let table = collections
            .get_mut(collection)
            .ok_or_else(|| Self::missing(collection))?;
        let mut ids = Vec::new();
        let mut next = self.next_id.lock().expect("lock");
        let mut staged = Vec::new();
        for row in rows {
            let id = row.id.unwrap_or_else(|| {
                *next += 1;
                format!("00000000-0000-4000-8000-{:012}", *next)
            });
            if table.contains_key(&id) || staged.iter().any(|r: &Row| r.id == id) {
                return Err(ApiError::Conflict(format!("id {id:?} already exists")));
            }
            let embedding = row
                .embedding
                .unwrap_or_else(|| self.embed(row.content.as_deref().unwrap_or("")));
            let n = i64::try_from(table.len() + staged.len()).unwrap_or(0) + 1000;
            staged.push(Row {
                id: id.clone(),
                content: row.content,
                metadata: row.metadata,
                embedding,
                created_at: timestamp(n),
                updated_at: timestamp(n),
                version: self.next_version(),
            });
            ids.push(id);
        }
        for row in staged {
            table.insert(row.id.clone(), row);
        }
        Ok(ids)
    }

    async fn update(&self, collection: &str, rows: Vec<RowUpdate>) -> Result<Option<u64>, ApiError> {
        let mut collections = self.collections.lock().expect("lock");
        let table = collections
            .get_mut(collection)
            .ok_or_else(|| Self::missing(collection))?;
        self.interleave(table);
        if !Self::unchanged(table, rows.iter().map(|u| (u.id.as_str(), u.version))) {
            return Ok(None);
        }
        for update in &rows {
            let version = self.next_version();
            let row = table.get_mut(&update.id).expect("checked above");
            if let Some(content) = &update.content {
                row.content.clone_from(content);
            }
            if let Some(metadata) = &update.metadata {
                row.metadata = metadata.clone();
            }
            if let Some(embedding) = &update.embedding {
                row.embedding = embedding.clone();
            }
            row.updated_at = timestamp(5000);
            row.version = version;
        }
        Ok(Some(rows.len() as u64))
    }

    async fn delete(&self, collection: &str, rows: Vec<RowVersion>) -> Result<Option<u64>, ApiError> {
        let mut collections = self.collections.lock().expect("lock");
        let table = collections
            .get_mut(collection)
            .ok_or_else(|| Self::missing(collection))?;
        self.interleave(table);
        if !Self::unchanged(table, rows.iter().map(|r| (r.id.as_str(), r.version))) {
            return Ok(None);
        }
        Ok(Some(
            rows.iter().filter(|r| table.remove(&r.id).is_some()).count() as u64
        ))
    }
}

/// The vector API's filter language, as `quiver-engine` evaluates it (arrays match
/// when any element does for `$eq`/`$in`/comparisons, and when none does for `$ne`/`$nin`).
pub fn filter_matches(filter: &Value, metadata: &Map<String, Value>) -> bool {
    let Some(object) = filter.as_object() else {
        return false;
    };
    object.iter().all(|(key, condition)| match key.as_str() {
        "$and" => condition
            .as_array()
            .is_some_and(|all| all.iter().all(|f| filter_matches(f, metadata))),
        "$or" => condition
            .as_array()
            .is_some_and(|any| any.iter().any(|f| filter_matches(f, metadata))),
        field => {
            let value = metadata.get(field);
            match condition.as_object() {
                None => holds("$eq", condition, value),
                Some(ops) => ops.iter().all(|(op, operand)| holds(op, operand, value)),
            }
        }
    })
}

fn holds(op: &str, operand: &Value, value: Option<&Value>) -> bool {
    use std::cmp::Ordering;
    let equal = |a: &Value, b: &Value| match (a, b) {
        (Value::Number(x), Value::Number(y)) => quiver_common::json::compare_numbers(x, y) == Some(Ordering::Equal),
        _ => a == b,
    };
    let compare = |a: &Value, b: &Value| match (a, b) {
        (Value::Number(x), Value::Number(y)) => quiver_common::json::compare_numbers(x, y),
        (Value::String(x), Value::String(y)) => Some(x.as_bytes().cmp(y.as_bytes())),
        _ => None,
    };
    let any = |pred: &dyn Fn(&Value) -> bool| match value {
        Some(Value::Array(items)) => items.iter().any(pred),
        Some(v) => pred(v),
        None => false,
    };
    let list = || operand.as_array().cloned().unwrap_or_default();
    match op {
        "$eq" => any(&|v| equal(v, operand)),
        "$ne" => !any(&|v| equal(v, operand)),
        "$in" => any(&|v| list().iter().any(|t| equal(v, t))),
        "$nin" => !any(&|v| list().iter().any(|t| equal(v, t))),
        "$gt" => any(&|v| compare(v, operand) == Some(Ordering::Greater)),
        "$gte" => any(&|v| matches!(compare(v, operand), Some(Ordering::Greater | Ordering::Equal))),
        "$lt" => any(&|v| compare(v, operand) == Some(Ordering::Less)),
        "$lte" => any(&|v| matches!(compare(v, operand), Some(Ordering::Less | Ordering::Equal))),
        "$exists" => value.is_some_and(|v| !v.is_null()) == operand.as_bool().unwrap_or(false),
        _ => false,
    }
}
