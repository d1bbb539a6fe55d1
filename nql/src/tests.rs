//! The NQL suite: statements with their expected rows and fields, errors, pagination,
//! explain, and a property test that nothing panics.

use proptest::prelude::*;
use quiver_common::ApiError;
use serde_json::{Map, Value, json};

use crate::eval::f32_to_f64;
use crate::testing::{MemoryBackend, timestamp};
use crate::{DistanceOp, QueryRequest, QueryResult, Row, execute, parse};

const KEY: &[u8] = b"test cursor key";

fn row(id: &str, content: Option<&str>, metadata: Value, embedding: [f32; 3], minute: i64) -> Row {
    Row {
        id: id.to_owned(),
        content: content.map(str::to_owned),
        metadata: metadata.as_object().cloned().expect("metadata is an object"),
        embedding: embedding.to_vec(),
        created_at: timestamp(minute),
        updated_at: timestamp(minute),
        version: 0,
    }
}

/// Five documents in `documents`, an empty `empty`, a cosine index.
fn backend() -> MemoryBackend {
    let b = MemoryBackend::new(3, DistanceOp::Cosine);
    let rows = [
        row(
            "a",
            Some("First document"),
            json!({"source": "web", "category": "tech", "price": 10, "tags": ["x", "y"]}),
            [1.0, 0.0, 0.0],
            1,
        ),
        row(
            "b",
            Some("Second document"),
            json!({"source": "blog", "category": "tech", "price": 20}),
            [0.9, 0.1, 0.0],
            2,
        ),
        row(
            "c",
            Some("Third note"),
            json!({"source": "web", "category": "food", "price": 5, "draft": true}),
            [0.0, 1.0, 0.0],
            3,
        ),
        row(
            "d",
            Some("Fourth NOTE"),
            json!({"source": "news", "price": 7.5, "rating": null}),
            [0.0, 0.0, 1.0],
            4,
        ),
        row("e", None, json!({"category": "food"}), [0.5, 0.5, 0.0], 5),
    ];
    for r in rows {
        b.put("documents", r);
    }
    b.create("empty");
    b
}

fn request(query: &str, params: Value) -> QueryRequest {
    QueryRequest {
        query: query.to_owned(),
        params: params.as_array().cloned().unwrap_or_default(),
        ..QueryRequest::default()
    }
}

async fn run(b: &MemoryBackend, query: &str, params: Value) -> QueryResult {
    match execute(b, &request(query, params), KEY).await {
        Ok(result) => result,
        Err(err) => panic!("{query}: {err:?}"),
    }
}

async fn fail(b: &MemoryBackend, query: &str, params: Value) -> (String, Option<String>) {
    match execute(b, &request(query, params), KEY).await {
        Ok(result) => panic!("{query} should fail, got {result:?}"),
        Err(ApiError::Query { message, detail }) => (message, detail),
        Err(other) => panic!("{query}: expected a QUERY_ERROR, got {other:?}"),
    }
}

fn ids(result: &QueryResult) -> Vec<String> {
    result
        .rows
        .iter()
        .map(|r| r.get("id").and_then(Value::as_str).unwrap_or("?").to_owned())
        .collect()
}

fn fields(result: &QueryResult) -> Vec<(String, u32)> {
    result.fields.iter().map(|f| (f.name.clone(), f.data_type_id)).collect()
}

fn cosine(a: [f32; 3], b: [f32; 3]) -> f64 {
    f32_to_f64(DistanceOp::Cosine.distance(&a, &b))
}

/// Statements whose result is a list of ids, in order.
#[tokio::test]
async fn statements_select_the_expected_rows_in_order() {
    let b = backend();
    let q = json!([[1.0, 0.0, 0.0]]);
    let cases: &[(&str, Value, &[&str])] = &[
        ("SELECT * FROM documents", json!([]), &["a", "b", "c", "d", "e"]),
        ("SELECT id FROM documents WHERE source = 'web'", json!([]), &["a", "c"]),
        ("SELECT id FROM documents WHERE source = $1", json!(["blog"]), &["b"]),
        ("SELECT id FROM documents WHERE source <> 'web'", json!([]), &["b", "d"]),
        ("SELECT id FROM documents WHERE source != 'web'", json!([]), &["b", "d"]),
        ("SELECT id FROM documents WHERE price < 10", json!([]), &["c", "d"]),
        (
            "SELECT id FROM documents WHERE price <= 10",
            json!([]),
            &["a", "c", "d"],
        ),
        ("SELECT id FROM documents WHERE price > 7.5", json!([]), &["a", "b"]),
        (
            "SELECT id FROM documents WHERE price >= $1",
            json!([7.5]),
            &["a", "b", "d"],
        ),
        (
            "SELECT id FROM documents WHERE category IN ('tech', 'food')",
            json!([]),
            &["a", "b", "c", "e"],
        ),
        (
            "SELECT id FROM documents WHERE category NOT IN ('tech')",
            json!([]),
            &["c", "e"],
        ),
        ("SELECT id FROM documents WHERE category IS NULL", json!([]), &["d"]),
        (
            "SELECT id FROM documents WHERE rating IS NULL AND source IS NOT NULL",
            json!([]),
            &["a", "b", "c", "d"],
        ),
        (
            "SELECT id FROM documents WHERE source IS NOT NULL",
            json!([]),
            &["a", "b", "c", "d"],
        ),
        (
            "SELECT id FROM documents WHERE source = 'web' AND price > 6",
            json!([]),
            &["a"],
        ),
        (
            "SELECT id FROM documents WHERE source = 'blog' OR category = 'food'",
            json!([]),
            &["b", "c", "e"],
        ),
        (
            "SELECT id FROM documents WHERE NOT (source = 'web')",
            json!([]),
            &["b", "d"],
        ),
        (
            "SELECT id FROM documents WHERE (source = 'web' OR source = 'news') AND NOT draft = true",
            json!([]),
            &[],
        ),
        ("SELECT id FROM documents WHERE draft = true", json!([]), &["c"]),
        ("SELECT id FROM documents WHERE draft", json!([]), &["c"]),
        (
            "SELECT id FROM documents WHERE content LIKE '%document'",
            json!([]),
            &["a", "b"],
        ),
        (
            "SELECT id FROM documents WHERE content LIKE 'F_rst%'",
            json!([]),
            &["a"],
        ),
        (
            "SELECT id FROM documents WHERE content ILIKE '%note'",
            json!([]),
            &["c", "d"],
        ),
        (
            "SELECT id FROM documents WHERE content NOT LIKE '%note'",
            json!([]),
            &["a", "b", "d"],
        ),
        ("SELECT id FROM documents WHERE content IS NULL", json!([]), &["e"]),
        (
            "SELECT id FROM documents WHERE metadata->>'category' = 'tech'",
            json!([]),
            &["a", "b"],
        ),
        (
            "SELECT id FROM documents WHERE metadata->>'price' = '7.5'",
            json!([]),
            &["d"],
        ),
        (
            "SELECT id FROM documents WHERE metadata->'price' > 9",
            json!([]),
            &["a", "b"],
        ),
        (
            "SELECT id FROM documents WHERE id IN ('b', 'e')",
            json!([]),
            &["b", "e"],
        ),
        ("SELECT id FROM documents WHERE id > 'c'", json!([]), &["d", "e"]),
        (
            "SELECT id FROM documents WHERE created_at >= '2024-01-01T00:03:00Z'",
            json!([]),
            &["c", "d", "e"],
        ),
        (
            "SELECT id FROM documents WHERE price BETWEEN 6 AND 12",
            json!([]),
            &["a", "d"],
        ),
        (
            "SELECT id FROM documents WHERE documents.source = 'news'",
            json!([]),
            &["d"],
        ),
        (
            "SELECT d.id FROM documents d WHERE d.source = 'news'",
            json!([]),
            &["d"],
        ),
        // Postgres puts NULLs first in descending order.
        (
            "SELECT id FROM documents ORDER BY price DESC",
            json!([]),
            &["e", "b", "a", "d", "c"],
        ),
        (
            "SELECT id FROM documents ORDER BY price DESC NULLS LAST",
            json!([]),
            &["b", "a", "d", "c", "e"],
        ),
        (
            "SELECT id FROM documents ORDER BY price ASC",
            json!([]),
            &["c", "d", "a", "b", "e"],
        ),
        (
            "SELECT id FROM documents ORDER BY price NULLS FIRST",
            json!([]),
            &["e", "c", "d", "a", "b"],
        ),
        (
            "SELECT id FROM documents ORDER BY category, id DESC",
            json!([]),
            &["e", "c", "b", "a", "d"],
        ),
        (
            "SELECT id FROM documents ORDER BY created_at DESC LIMIT 2",
            json!([]),
            &["e", "d"],
        ),
        (
            "SELECT id FROM documents ORDER BY id LIMIT 2 OFFSET 1",
            json!([]),
            &["b", "c"],
        ),
        (
            "SELECT id FROM documents LIMIT $1 OFFSET $2",
            json!([2, 3]),
            &["d", "e"],
        ),
        (
            "SELECT id FROM documents ORDER BY embedding <=> $1 LIMIT 3",
            q.clone(),
            &["a", "b", "e"],
        ),
        (
            "SELECT id FROM documents ORDER BY embedding <=> '[0,1,0]' LIMIT 2",
            json!([]),
            &["c", "e"],
        ),
        (
            "SELECT id FROM documents ORDER BY embedding <-> $1 LIMIT 3",
            q.clone(),
            &["a", "b", "e"],
        ),
        (
            "SELECT id FROM documents ORDER BY embedding <#> $1 LIMIT 3",
            q.clone(),
            &["a", "b", "e"],
        ),
        (
            "SELECT id FROM documents ORDER BY embedding <=> $1",
            q.clone(),
            &["a", "b", "e", "c", "d"],
        ),
        (
            "SELECT id FROM documents ORDER BY embedding <=> $1 DESC LIMIT 2",
            q.clone(),
            &["c", "d"],
        ),
        (
            "SELECT id FROM documents WHERE category = 'food' ORDER BY embedding <=> $1 LIMIT 5",
            q.clone(),
            &["e", "c"],
        ),
        (
            "SELECT id FROM documents WHERE content LIKE '%o%' ORDER BY embedding <=> $1 LIMIT 2",
            q.clone(),
            &["a", "b"],
        ),
        (
            "SELECT id, 1 - (embedding <=> $1) AS similarity FROM documents ORDER BY similarity DESC LIMIT 2",
            q.clone(),
            &["a", "b"],
        ),
        ("SELECT id FROM documents ORDER BY 1 DESC LIMIT 1", json!([]), &["e"]),
        ("SELECT id FROM empty", json!([]), &[]),
        ("SELECT id FROM empty WHERE whatever = 1", json!([]), &[]),
    ];
    for (query, params, expected) in cases {
        let result = run(&b, query, params.clone()).await;
        assert_eq!(ids(&result), *expected, "{query}");
        assert_eq!(result.row_count, expected.len() as u64, "{query}");
    }
}

#[tokio::test]
async fn projections_have_postgres_names_types_and_values() {
    let b = backend();
    let result = run(&b, "SELECT * FROM documents WHERE id = 'a'", json!([])).await;
    assert_eq!(
        fields(&result),
        vec![
            ("id".to_owned(), 2950),
            ("content".to_owned(), 25),
            ("metadata".to_owned(), 3802),
            ("embedding".to_owned(), 1021),
            ("created_at".to_owned(), 1184),
            ("updated_at".to_owned(), 1184),
        ]
    );
    assert_eq!(
        Value::Object(result.rows[0].clone()),
        json!({
            "id": "a",
            "content": "First document",
            "metadata": {"source": "web", "category": "tech", "price": 10, "tags": ["x", "y"]},
            "embedding": [1.0, 0.0, 0.0],
            "created_at": "2024-01-01T00:01:00Z",
            "updated_at": "2024-01-01T00:01:00Z",
        })
    );

    let result = run(
        &b,
        "SELECT source, metadata->>'price' AS p, metadata->'tags', metadata->'tags'->>0 AS first_tag, \
         price * 2 AS doubled, true AS yes FROM documents WHERE id = 'a'",
        json!([]),
    )
    .await;
    assert_eq!(
        fields(&result),
        vec![
            ("source".to_owned(), 3802),
            ("p".to_owned(), 25),
            ("?column?".to_owned(), 3802),
            ("first_tag".to_owned(), 25),
            ("doubled".to_owned(), 701),
            ("yes".to_owned(), 16),
        ]
    );
    let row = Value::Object(result.rows[0].clone());
    assert_eq!(row["source"], json!("web"));
    assert_eq!(row["p"], json!("10"));
    assert_eq!(row["?column?"], json!(["x", "y"]));
    assert_eq!(row["first_tag"], json!("x"));
    assert_eq!(row["doubled"], json!(20));
    assert_eq!(row["yes"], json!(true));
}

/// Metadata is schemaless: a key no row has is a column of NULLs, as one a row lacks
/// is NULL there. (It was `column "nope" does not exist` once no row had the key, so
/// whether a query ran depended on the data: the seed page's `WHERE source = $1` failed
/// on a collection without `source`, and a delete by it failed once it had run.)
#[tokio::test]
async fn metadata_keys_no_row_has_are_null() {
    let b = backend();
    let result = run(&b, "SELECT id, nope FROM documents ORDER BY id LIMIT 2", json!([])).await;
    assert_eq!(result.rows[0]["nope"], Value::Null);
    let result = run(&b, "SELECT COUNT(*) FROM documents WHERE nope IS NULL", json!([])).await;
    let all = run(&b, "SELECT COUNT(*) FROM documents", json!([])).await;
    assert_eq!(result.rows, all.rows);
    let result = run(&b, "SELECT id FROM documents WHERE nope = $1", json!(["x"])).await;
    assert!(result.rows.is_empty());
    // A key some row has is a column even where a row lacks it.
    let result = run(&b, "SELECT id, draft FROM documents ORDER BY id LIMIT 2", json!([])).await;
    assert_eq!(result.rows[0]["draft"], Value::Null);
    assert_eq!(fields(&result)[1], ("draft".to_owned(), 3802));
    let (message, _) = fail(&b, "SELECT id FROM documents WHERE x.id = 'a'", json!([])).await;
    assert_eq!(message, "missing FROM-clause entry for table \"x\"");
}

#[tokio::test]
async fn the_seed_pages_similarity_query_runs_verbatim_on_the_index() {
    let b = backend();
    let query =
        "SELECT id, content, 1 - (embedding <=> $1) AS similarity FROM documents ORDER BY embedding <=> $1 LIMIT 5";
    let result = run(&b, query, json!([[1.0, 0.0, 0.0]])).await;
    assert_eq!(ids(&result), ["a", "b", "e", "c", "d"]);
    assert_eq!(
        fields(&result),
        vec![
            ("id".to_owned(), 2950),
            ("content".to_owned(), 25),
            ("similarity".to_owned(), 701)
        ]
    );
    let expected = [
        [1.0, 0.0, 0.0],
        [0.9, 0.1, 0.0],
        [0.5, 0.5, 0.0],
        [0.0, 1.0, 0.0],
        [0.0, 0.0, 1.0],
    ];
    for (row, embedding) in result.rows.iter().zip(expected) {
        let similarity = row["similarity"].as_f64().expect("a number");
        assert!(
            (similarity - (1.0 - cosine(embedding, [1.0, 0.0, 0.0]))).abs() < 1e-12,
            "{row:?}"
        );
    }
    assert_eq!(result.rows[0]["similarity"], json!(1.0));
    assert_eq!(result.rows[2]["content"], Value::Null);
    let calls = b.nearest_calls();
    assert_eq!(calls.len(), 1, "one index search");
    assert_eq!(calls[0].k, 5);
    assert_eq!(calls[0].filter, None);
}

#[tokio::test]
async fn where_clauses_are_pushed_down_where_they_translate_exactly() {
    let b = backend();
    let q = json!([[1.0, 0.0, 0.0]]);
    let cases = [
        (
            "SELECT id FROM documents WHERE source = 'web' ORDER BY embedding <=> $1 LIMIT 2",
            Some(json!({"source": {"$eq": "web"}})),
        ),
        (
            "SELECT id FROM documents WHERE price > 5 AND category IN ('tech') ORDER BY embedding <=> $1 LIMIT 2",
            Some(json!({"$and": [{"price": {"$gt": 5}}, {"category": {"$in": ["tech"]}}]})),
        ),
        (
            "SELECT id FROM documents WHERE metadata->>'source' = 'web' OR rating IS NOT NULL ORDER BY embedding <=> $1 LIMIT 2",
            Some(json!({"$or": [{"source": {"$eq": "web"}}, {"rating": {"$exists": true}}]})),
        ),
        (
            "SELECT id FROM documents WHERE 5 < price AND content LIKE '%' ORDER BY embedding <=> $1 LIMIT 2",
            Some(json!({"price": {"$gt": 5}})),
        ),
    ];
    for (query, filter) in cases {
        let before = b.nearest_calls().len();
        run(&b, query, q.clone()).await;
        let calls = b.nearest_calls();
        assert_eq!(calls.len(), before + 1, "{query}");
        assert_eq!(calls[before].filter, filter, "{query}");
    }
    // Nothing pushable: an exact scan, no index call.
    let before = b.nearest_calls().len();
    let result = run(
        &b,
        "SELECT id FROM documents WHERE NOT source = 'web' ORDER BY embedding <=> $1 LIMIT 2",
        q.clone(),
    )
    .await;
    assert_eq!(ids(&result), ["b", "d"]);
    assert_eq!(b.nearest_calls().len(), before);
}

#[tokio::test]
async fn ordering_by_similarity_descending_also_uses_the_index() {
    let b = backend();
    let result = run(
        &b,
        "SELECT id, 1 - (embedding <=> $1) AS similarity FROM documents ORDER BY similarity DESC LIMIT 2",
        json!([[0.0, 1.0, 0.0]]),
    )
    .await;
    assert_eq!(ids(&result), ["c", "e"]);
    assert_eq!(b.nearest_calls().len(), 1);
    assert_eq!(b.nearest_calls()[0].k, 2);
}

#[tokio::test]
async fn an_index_for_another_metric_falls_back_to_an_exact_scan() {
    let b = backend();
    // The index serves cosine; L2 gets None and the executor scans.
    let result = run(
        &b,
        "SELECT id, embedding <-> $1 AS d FROM documents ORDER BY embedding <-> $1 LIMIT 2",
        json!([[0.0, 1.0, 0.0]]),
    )
    .await;
    assert_eq!(ids(&result), ["c", "e"]);
    assert_eq!(result.rows[0]["d"], json!(0.0));
    let expected = f32_to_f64(DistanceOp::L2.distance(&[0.5, 0.5, 0.0], &[0.0, 1.0, 0.0]));
    assert_eq!(result.rows[1]["d"], json!(expected));
    assert_eq!(b.nearest_calls().last().map(|c| c.op), Some(DistanceOp::L2));
}

#[tokio::test]
async fn a_recheck_that_drops_rows_from_a_full_index_answer_rescans() {
    let b = backend();
    // `tags = 'x'` is pushed as {"$eq": "x"}, which matches the array ["x","y"]; SQL
    // equality does not, so every row the index returns is dropped and the scan answers.
    let result = run(
        &b,
        "SELECT id FROM documents WHERE tags = 'x' OR source = 'news' ORDER BY embedding <=> $1 LIMIT 1",
        json!([[1.0, 0.0, 0.0]]),
    )
    .await;
    assert_eq!(ids(&result), ["d"]);
}

#[tokio::test]
async fn count_star_counts_matching_rows() {
    let b = backend();
    let result = run(&b, "SELECT COUNT(*) FROM documents", json!([])).await;
    assert_eq!(fields(&result), vec![("count".to_owned(), 20)]);
    assert_eq!(
        result.rows,
        vec![json!({"count": 5}).as_object().cloned().expect("object")]
    );
    let result = run(
        &b,
        "SELECT count(*) AS n FROM documents WHERE source = 'web'",
        json!([]),
    )
    .await;
    assert_eq!(result.rows[0]["n"], json!(2));
    let result = run(&b, "SELECT COUNT(*) FROM empty", json!([])).await;
    assert_eq!(result.rows[0]["count"], json!(0));
    let (message, _) = fail(&b, "SELECT id, COUNT(*) FROM documents", json!([])).await;
    assert!(message.contains("GROUP BY"), "{message}");
}

#[tokio::test]
async fn insert_update_and_delete_change_the_collection() {
    let b = backend();
    let result = run(
        &b,
        "INSERT INTO documents (id, content, metadata, embedding) VALUES \
         ('n1', 'new one', '{\"source\": \"api\", \"n\": 1}', '[0, 0, 2]'), ($1, $2, $3, $4)",
        json!(["n2", "new two", {"source": "api", "n": 2}, [0.0, 2.0, 0.0]]),
    )
    .await;
    assert_eq!(result.row_count, 2);
    assert!(result.rows.is_empty());
    let rows = b.rows("documents");
    let n1 = rows.iter().find(|r| r.id == "n1").expect("n1 inserted");
    assert_eq!(n1.embedding, vec![0.0, 0.0, 2.0]);
    assert_eq!(n1.metadata.get("n"), Some(&json!(1)));
    let n2 = rows.iter().find(|r| r.id == "n2").expect("n2 inserted");
    assert_eq!(n2.content.as_deref(), Some("new two"));

    // Without id and embedding the backend makes both; RETURNING id reports the id.
    let result = run(
        &b,
        "INSERT INTO documents (content, metadata) VALUES ('embed me', $1) RETURNING id",
        json!([{"source": "api"}]),
    )
    .await;
    assert_eq!(result.row_count, 1);
    assert_eq!(fields(&result), vec![("id".to_owned(), 2950)]);
    let new_id = result.rows[0]["id"].as_str().expect("an id").to_owned();
    let made = b
        .rows("documents")
        .into_iter()
        .find(|r| r.id == new_id)
        .expect("inserted");
    assert_eq!(made.embedding, b.embed("embed me"));

    // Replace, then merge.
    let result = run(
        &b,
        "UPDATE documents SET metadata = $1 WHERE id = 'n1'",
        json!([{"only": "this"}]),
    )
    .await;
    assert_eq!(result.row_count, 1);
    let result = run(
        &b,
        "UPDATE documents SET metadata = metadata || $1, content = 'changed' WHERE source = 'api'",
        json!([{"seen": true}]),
    )
    .await;
    assert_eq!(result.row_count, 2, "n2 and the embedded row; n1 lost its source");
    let rows = b.rows("documents");
    let n1 = rows.iter().find(|r| r.id == "n1").expect("n1");
    assert_eq!(Value::Object(n1.metadata.clone()), json!({"only": "this"}));
    let n2 = rows.iter().find(|r| r.id == "n2").expect("n2");
    assert_eq!(
        Value::Object(n2.metadata.clone()),
        json!({"source": "api", "n": 2, "seen": true})
    );
    assert_eq!(n2.content.as_deref(), Some("changed"));
    let result = run(
        &b,
        "UPDATE documents SET embedding = $1 WHERE id = 'n2'",
        json!([[1.0, 1.0, 1.0]]),
    )
    .await;
    assert_eq!(result.row_count, 1);
    assert_eq!(
        b.rows("documents")
            .iter()
            .find(|r| r.id == "n2")
            .map(|r| r.embedding.clone()),
        Some(vec![1.0, 1.0, 1.0])
    );

    let result = run(
        &b,
        "DELETE FROM documents WHERE source = 'api' OR only = 'this'",
        json!([]),
    )
    .await;
    assert_eq!(result.row_count, 3);
    assert_eq!(b.rows("documents").len(), 5);
    let result = run(&b, "DELETE FROM documents WHERE id = 'nothing'", json!([])).await;
    assert_eq!(result.row_count, 0);
    let result = run(&b, "DELETE FROM documents", json!([])).await;
    assert_eq!(result.row_count, 5);
    assert!(b.rows("documents").is_empty());
}

#[tokio::test]
async fn a_missing_relation_is_reported_like_postgres() {
    let b = backend();
    let err = execute(&b, &request("SELECT * FROM nonexistent", json!([])), KEY)
        .await
        .expect_err("no such collection");
    let envelope = err.envelope();
    assert_eq!(envelope.error.code, "QUERY_ERROR");
    assert_eq!(envelope.error.status, 400);
    assert_eq!(envelope.error.message, "relation \"nonexistent\" does not exist");
    assert_eq!(
        envelope.error.detail.as_deref(),
        Some("ERROR: relation \"nonexistent\" does not exist at character 15")
    );
    // Positions count characters across lines.
    let (_, detail) = fail(&b, "SELECT *\n  FROM  ghosts", json!([])).await;
    assert_eq!(
        detail.as_deref(),
        Some("ERROR: relation \"ghosts\" does not exist at character 18")
    );
}

#[tokio::test]
async fn errors_name_what_is_wrong() {
    let b = backend();
    let cases: &[(&str, Value, &str)] = &[
        (
            "SELECT id FROM documents WHERE source = $3",
            json!(["a", "b"]),
            "there is no parameter $3",
        ),
        (
            "SELECT id FROM documents ORDER BY embedding <=> $1 LIMIT 1",
            json!([[1.0, 0.0]]),
            "vector $1 has 2 dimensions, the project's dimension is 3",
        ),
        (
            "INSERT INTO documents (content, embedding) VALUES ('x', $1)",
            json!([[1.0]]),
            "has 1 dimensions, the project's dimension is 3",
        ),
        (
            "SELECT * FROM documents d JOIN empty e ON d.id = e.id",
            json!([]),
            "does not support JOIN",
        ),
        (
            "SELECT source, COUNT(*) FROM documents GROUP BY source",
            json!([]),
            "does not support GROUP BY",
        ),
        (
            "SELECT * FROM (SELECT * FROM documents) t",
            json!([]),
            "does not support subqueries",
        ),
        (
            "SELECT id FROM documents WHERE id IN (SELECT id FROM empty)",
            json!([]),
            "does not support subqueries",
        ),
        ("SELECT 1; SELECT 2", json!([]), "multiple statements are not supported"),
        (
            "CREATE TABLE t (id int)",
            json!([]),
            "does not support CREATE TABLE statements",
        ),
        (
            "DROP TABLE documents",
            json!([]),
            "does not support DROP TABLE statements",
        ),
        (
            "SELECT lower(content) FROM documents",
            json!([]),
            "does not support the function lower()",
        ),
        (
            "SELECT DISTINCT source FROM documents",
            json!([]),
            "does not support DISTINCT",
        ),
        (
            "SELECT id FROM documents UNION SELECT id FROM empty",
            json!([]),
            "does not support UNION",
        ),
        (
            "SELECT * FROM documents WHERE",
            json!([]),
            "syntax error: Expected: an expression, found: EOF",
        ),
        ("SELEC * FROM documents", json!([]), "syntax error"),
        (
            "SELECT 'unterminated FROM documents",
            json!([]),
            "syntax error: Unterminated string literal",
        ),
        ("", json!([]), "the query is empty"),
        (
            "SELECT id FROM documents LIMIT -1",
            json!([]),
            "LIMIT must not be negative",
        ),
        (
            "SELECT id FROM documents ORDER BY embedding <=> id LIMIT 1",
            json!([]),
            "compares the embedding column with a vector",
        ),
        (
            "SELECT id FROM documents WHERE content",
            json!([]),
            "argument of WHERE must be type boolean, not type text",
        ),
        (
            "SELECT price / 0 FROM documents WHERE id = 'a'",
            json!([]),
            "division by zero",
        ),
        (
            "UPDATE documents SET id = 'x'",
            json!([]),
            "column \"id\" cannot be updated",
        ),
        (
            "INSERT INTO documents (nope) VALUES ('x')",
            json!([]),
            "column \"nope\" of relation \"documents\" does not exist",
        ),
        (
            "INSERT INTO documents (content, metadata) VALUES ('x', '[1]')",
            json!([]),
            "metadata must be a JSON object",
        ),
        (
            "SELECT id FROM documents WHERE content LIKE 'a\\'",
            json!([]),
            "LIKE pattern must not end with escape character",
        ),
    ];
    for (query, params, expected) in cases {
        let (message, detail) = fail(&b, query, params.clone()).await;
        assert!(message.contains(expected), "{query}: {message}");
        assert!(detail.is_some_and(|d| d.starts_with("ERROR: ")), "{query}");
    }
    // Syntax errors carry their position.
    let (_, detail) = fail(&b, "SELECT * FROM documents WHERE", json!([])).await;
    assert_eq!(
        detail.as_deref(),
        Some("ERROR: syntax error: Expected: an expression, found: EOF at character 30")
    );
    let (_, detail) = fail(&b, "SELECT id FROM documents WHERE source = $3", json!(["a"])).await;
    assert!(detail.is_some_and(|d| d.ends_with("at character 41")));
    // Nothing was written by the failed INSERT.
    assert_eq!(b.rows("documents").len(), 5);
}

/// Content may be set NULL (as a record the vector API wrote has none); the
/// embedding stays as it was.
#[tokio::test]
async fn content_can_be_set_null_and_the_embedding_stays() {
    let b = backend();
    let before = b.rows("documents").into_iter().find(|r| r.id == "a").expect("a");
    let result = run(&b, "UPDATE documents SET content = NULL WHERE id = 'a'", json!([])).await;
    assert_eq!(result.row_count, 1);
    let after = b.rows("documents").into_iter().find(|r| r.id == "a").expect("a");
    assert_eq!(after.content, None);
    assert_eq!(after.embedding, before.embedding);
    let rows = run(
        &b,
        "SELECT id FROM documents WHERE content IS NULL ORDER BY id",
        json!([]),
    )
    .await;
    assert_eq!(
        serde_json::to_value(rows.rows).expect("json"),
        json!([{"id": "a"}, {"id": "e"}])
    );
}

#[test]
fn is_write_tells_reads_from_writes() {
    let read = parse("SELECT * FROM documents", &[]).expect("parses");
    assert!(!read.is_write());
    assert_eq!(read.collection(), "documents");
    for write in [
        "INSERT INTO documents (content) VALUES ('x')",
        "UPDATE documents SET content = 'x'",
        "DELETE FROM documents",
    ] {
        assert!(parse(write, &[]).expect("parses").is_write(), "{write}");
    }
}

/// 50 rows from the web scraper and 10 from elsewhere, for the seed page's paging example.
fn paged_backend() -> MemoryBackend {
    let b = MemoryBackend::new(3, DistanceOp::Cosine);
    for i in 0..60 {
        let source = if i % 6 == 5 { "manual" } else { "web-scraper" };
        b.put(
            "documents",
            row(
                &format!("doc-{i:02}"),
                Some("text"),
                json!({"source": source, "i": i}),
                [1.0, 0.0, 0.0],
                i,
            ),
        );
    }
    b
}

#[tokio::test]
async fn the_seed_pages_paging_example_returns_the_last_page() {
    let b = paged_backend();
    let mut req = request(
        "SELECT * FROM documents WHERE source = $1 ORDER BY created_at DESC",
        json!(["web-scraper"]),
    );
    req.limit = Some(20);
    req.offset = Some(40);
    let result = execute(&b, &req, KEY).await.expect("runs");
    assert_eq!(result.row_count, 10);
    assert_eq!(result.total_count, Some(50));
    assert_eq!(result.has_more, Some(false));
    assert_eq!(result.next_cursor, None);
    // Newest first: the last page holds the oldest web-scraper rows.
    assert_eq!(ids(&result).last().map(String::as_str), Some("doc-00"));
}

#[tokio::test]
async fn cursors_walk_every_page_to_the_end_and_refuse_tampering() {
    let b = paged_backend();
    let query = "SELECT id FROM documents WHERE source = $1 ORDER BY created_at DESC";
    let mut req = request(query, json!(["web-scraper"]));
    req.limit = Some(20);
    let mut seen = Vec::new();
    let mut pages = 0;
    let mut first_cursor = None;
    loop {
        let result = execute(&b, &req, KEY).await.expect("runs");
        pages += 1;
        assert_eq!(result.total_count, Some(50));
        seen.extend(ids(&result));
        match result.next_cursor {
            Some(cursor) => {
                assert_eq!(result.has_more, Some(true));
                assert_eq!(result.row_count, 20);
                first_cursor.get_or_insert(cursor.clone());
                req.cursor = Some(cursor);
                req.limit = None; // the cursor carries the page size
            }
            None => {
                assert_eq!(result.has_more, Some(false));
                assert_eq!(result.row_count, 10);
                break;
            }
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen.len(), 50);
    let mut unique = seen.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 50, "no row twice");
    assert_eq!(seen.first().map(String::as_str), Some("doc-58"));

    let cursor = first_cursor.expect("there was a second page");
    // Edited: flip one character.
    let mut tampered: Vec<char> = cursor.chars().collect();
    tampered[3] = if tampered[3] == 'A' { 'B' } else { 'A' };
    let mut bad = request(query, json!(["web-scraper"]));
    bad.cursor = Some(tampered.into_iter().collect());
    match execute(&b, &bad, KEY).await {
        Err(ApiError::Validation { message, .. }) => assert_eq!(message, "cursor is invalid"),
        other => panic!("expected a validation error, got {other:?}"),
    }
    // Another query (different params).
    let mut other = request(query, json!(["manual"]));
    other.cursor = Some(cursor.clone());
    match execute(&b, &other, KEY).await {
        Err(ApiError::Validation { message, .. }) => assert_eq!(message, "cursor does not belong to this query"),
        other => panic!("expected a validation error, got {other:?}"),
    }
    // Signed with another key.
    let mut same = request(query, json!(["web-scraper"]));
    same.cursor = Some(cursor);
    assert!(matches!(
        execute(&b, &same, b"another key").await,
        Err(ApiError::Validation { .. })
    ));
}

#[tokio::test]
async fn a_request_page_applies_within_the_statements_limit() {
    let b = paged_backend();
    let mut req = request("SELECT id FROM documents ORDER BY id LIMIT 5", json!([]));
    req.limit = Some(2);
    req.offset = Some(4);
    let result = execute(&b, &req, KEY).await.expect("runs");
    assert_eq!(ids(&result), ["doc-04"]);
    assert_eq!(result.total_count, Some(5));
    assert_eq!(result.has_more, Some(false));
}

/// A page of a sorted scan keeps only the rows up to the page's end as it goes (a
/// collection's worth would not fit in memory): what it returns, and the count, are
/// those of a sort of every row, ties included (they go by id).
#[tokio::test]
async fn pages_of_a_large_sorted_scan_are_slices_of_the_whole_sort() {
    let b = MemoryBackend::new(3, DistanceOp::Cosine);
    for i in 0..3_000 {
        // Scores repeat (many ties); ids are not in score order.
        let id = format!("r{:04}", (i * 7_919) % 3_000);
        b.put(
            "big",
            row(
                &id,
                Some("t"),
                json!({"score": i % 37, "odd": i % 2 == 1}),
                [1.0, 0.0, 0.0],
                0,
            ),
        );
    }
    for (order, filter) in [
        ("ORDER BY score DESC", ""),
        ("ORDER BY score, id DESC", "WHERE odd = true"),
        ("", "WHERE score > 30"),
        ("ORDER BY id", ""),
    ] {
        let whole = run(&b, &format!("SELECT id FROM big {filter} {order}"), json!([])).await;
        let whole = ids(&whole);
        for (limit, offset, page_offset, page_limit) in [
            (None, 0, 0, 10),
            (None, 0, 1_400, 100),
            (Some(2_000), 5, 1_990, 20),
            (Some(1_100), 1_000, 50, 1_000),
            (Some(10), 0, 0, 1_000),
        ] {
            let mut statement = format!("SELECT id FROM big {filter} {order}");
            if let Some(limit) = limit {
                statement.push_str(&format!(" LIMIT {limit}"));
            }
            statement.push_str(&format!(" OFFSET {offset}"));
            let mut req = request(&statement, json!([]));
            req.offset = Some(page_offset);
            req.limit = Some(page_limit);
            let result = execute(&b, &req, KEY).await.expect("runs");
            let window: Vec<String> = whole
                .iter()
                .skip(offset as usize)
                .take(limit.unwrap_or(u64::MAX) as usize)
                .cloned()
                .collect();
            let page: Vec<String> = window
                .iter()
                .skip(page_offset as usize)
                .take(page_limit as usize)
                .cloned()
                .collect();
            assert_eq!(ids(&result), page, "{statement}, page {page_offset}+{page_limit}");
            assert_eq!(result.total_count, Some(window.len() as u64), "{statement}");
            assert_eq!(
                result.has_more,
                Some(page_offset + page_limit < window.len() as u64),
                "{statement}"
            );
        }
    }
}

/// ORDER BY on numbers is a total order, integers beyond 2^53 and floats among them,
/// so a sort does not depend on the order rows come in and pages fit together.
#[tokio::test]
async fn numbers_sort_in_one_order_and_pages_fit_together() {
    let b = MemoryBackend::new(3, DistanceOp::Cosine);
    for (id, x) in [
        ("a", json!(9007199254740993u64)),
        ("b", json!(9007199254740992.0)),
        ("c", json!(9007199254740992u64)),
        ("d", json!(1)),
        ("e", json!(1.0)),
        ("f", json!(-2.5)),
        // 2^53 + 3 is less than the float 2^53 + 4, which it rounds to as a float.
        ("g", json!(9007199254740995u64)),
        ("h", json!(9007199254740996.0)),
    ] {
        b.put("mix", row(id, Some("t"), json!({"x": x}), [1.0, 0.0, 0.0], 0));
    }
    let whole = ids(&run(&b, "SELECT id FROM mix ORDER BY x", json!([])).await);
    assert_eq!(whole, ["f", "e", "d", "b", "c", "a", "g", "h"]);
    let mut paged = Vec::new();
    for offset in 0..8 {
        let mut req = request("SELECT id FROM mix ORDER BY x DESC", json!([]));
        req.offset = Some(offset);
        req.limit = Some(1);
        paged.extend(ids(&execute(&b, &req, KEY).await.expect("runs")));
    }
    assert_eq!(paged, ["h", "g", "a", "c", "b", "d", "e", "f"]);

    // Compared by exact value: 2^53 + 1 is more than the float 2^53, not equal to it.
    let above = ids(&run(
        &b,
        "SELECT id FROM mix WHERE x > 9007199254740992.0 ORDER BY id",
        json!([]),
    )
    .await);
    assert_eq!(above, ["a", "g", "h"]);
    let equal = ids(&run(
        &b,
        "SELECT id FROM mix WHERE x = 9007199254740992.0 ORDER BY id",
        json!([]),
    )
    .await);
    assert_eq!(equal, ["b", "c"]);
    // Integers beyond i64, as literals and parameters, stay exact too.
    b.put("mix", row("max", Some("t"), json!({"x": u64::MAX}), [1.0, 0.0, 0.0], 0));
    b.put(
        "mix",
        row("max-1", Some("t"), json!({"x": u64::MAX - 1}), [1.0, 0.0, 0.0], 0),
    );
    let literal = ids(&run(&b, "SELECT id FROM mix WHERE x = 18446744073709551615", json!([])).await);
    assert_eq!(literal, ["max"]);
    let param = ids(&run(&b, "SELECT id FROM mix WHERE x = $1", json!([u64::MAX])).await);
    assert_eq!(param, ["max"]);
    let literals = "SELECT id FROM mix WHERE 9007199254740993 > 9007199254740992.0 AND -3 < -2.5 ORDER BY id";
    assert_eq!(ids(&run(&b, literals, json!([])).await).len(), 10);
}

#[tokio::test]
async fn explain_describes_the_plan_without_running_writes() {
    let b = backend();
    let mut req = request(
        "SELECT id FROM documents WHERE source = 'web' ORDER BY embedding <=> $1 LIMIT 3",
        json!([[1.0, 0.0, 0.0]]),
    );
    req.explain = true;
    let result = execute(&b, &req, KEY).await.expect("explains");
    assert!(result.rows.is_empty());
    let plan = result.plan.expect("a plan");
    assert_eq!(plan["strategy"], json!("index_search"));
    assert_eq!(plan["collection"], json!("documents"));
    assert_eq!(plan["operator"], json!("<=>"));
    assert_eq!(plan["k"], json!(3));
    assert_eq!(plan["filter"], json!({"source": {"$eq": "web"}}));
    assert!(b.nearest_calls().is_empty(), "explain does not search");

    let mut req = request(
        "SELECT id FROM documents WHERE content LIKE 'F%' ORDER BY price DESC",
        json!([]),
    );
    req.explain = true;
    let plan = execute(&b, &req, KEY).await.expect("explains").plan.expect("a plan");
    assert_eq!(plan["strategy"], json!("exact_scan"));
    assert_eq!(plan["sort"][0]["direction"], json!("DESC"));

    let mut req = request("DELETE FROM documents", json!([]));
    req.explain = true;
    let plan = execute(&b, &req, KEY).await.expect("explains").plan.expect("a plan");
    assert_eq!(plan["statement"], json!("DELETE"));
    assert_eq!(b.rows("documents").len(), 5, "explain wrote nothing");
}

#[test]
fn results_serialize_with_the_seed_pages_names() {
    let result = QueryResult {
        rows: vec![Map::new()],
        row_count: 1,
        fields: vec![crate::Field {
            name: "id".to_owned(),
            data_type_id: 2950,
        }],
        total_count: Some(3),
        has_more: Some(true),
        next_cursor: Some("c".to_owned()),
        plan: None,
    };
    assert_eq!(
        serde_json::to_value(&result).expect("serializes"),
        json!({"rows": [{}], "rowCount": 1, "fields": [{"name": "id", "dataTypeID": 2950}],
               "totalCount": 3, "hasMore": true, "nextCursor": "c"})
    );
}

#[test]
fn deep_or_long_statements_are_refused_without_overflowing_the_stack() {
    let nested = format!(
        "SELECT id FROM documents WHERE {}1 = 1{}",
        "(".repeat(5000),
        ")".repeat(5000)
    );
    assert!(matches!(parse(&nested, &[]), Err(ApiError::Query { .. })));
    let chain = format!(
        "SELECT id FROM documents WHERE {}",
        vec!["price = 1"; 2000].join(" OR ")
    );
    let err = parse(&chain, &[]).expect_err("too deep");
    assert!(err.to_string().contains("nested more than"), "{err}");
    let long = format!("SELECT {} FROM documents", vec!["1"; 20_000].join(" + "));
    let err = parse(&long, &[]).expect_err("too long");
    assert!(err.to_string().contains("tokens"), "{err}");
}

/// `::text` casts any expression as Postgres writes it: jsonb as its JSON (a string
/// quoted), numbers, ids and NULL as they are.
#[tokio::test]
async fn text_casts_write_values_as_postgres_does() {
    let b = backend();
    let result = run(
        &b,
        "SELECT id::text AS i, price::text AS p, source::text AS s, (metadata->'tags')::text AS t, \
         rating::text AS r FROM documents WHERE price::text = '10'",
        json!([]),
    )
    .await;
    assert_eq!(
        serde_json::to_value(&result.rows).expect("json"),
        json!([{"i": "a", "p": "10", "s": "\"web\"", "t": "[\"x\", \"y\"]", "r": null}])
    );
    assert_eq!(result.fields[1].data_type_id, 25);
    assert_eq!(
        serde_json::to_value(
            run(
                &b,
                "SELECT '\"x\"'::jsonb::text AS j, '{\"source\":\"web\",\"b\":[1,2],\"a\":{}}'::jsonb::text AS o, \
         metadata->>'tags' AS t, id::text, (price + 1)::text FROM documents WHERE id = 'a'",
                json!([])
            )
            .await
            .rows
        )
        .expect("json"),
        json!([{"j": "\"x\"", "o": "{\"a\": {}, \"b\": [1, 2], \"source\": \"web\"}",
                "t": "[\"x\", \"y\"]", "id": "a", "text": "11"}])
    );
    let times = run(&b, "SELECT created_at::text FROM documents WHERE id = 'a'", json!([])).await;
    assert_eq!(
        serde_json::to_value(times.rows).expect("json"),
        json!([{"created_at": "2024-01-01 00:01:00+00"}])
    );
}

/// Copies made while planning are counted: a chain of BETWEENs (each tests its value
/// twice, so the plan doubles at each link) and ORDER BY naming a large output column
/// over and over are refused before they are built, not after minutes and gigabytes.
#[test]
fn statements_whose_plans_multiply_are_refused() {
    let chain = |links: usize| {
        format!(
            "SELECT id FROM documents WHERE price{}",
            " BETWEEN 0 AND 1".repeat(links)
        )
    };
    assert!(parse(&chain(8), &[]).is_ok(), "a short chain is fine");
    let started = std::time::Instant::now();
    let err = parse(&chain(40), &[]).expect_err("2^40 terms");
    assert!(err.to_string().contains("more than 100000 terms"), "{err}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "refused before it is built"
    );

    let list = vec!["1"; 1000].join(", ");
    let orders = vec!["a"; 1000].join(", ");
    let repeated = format!("SELECT price IN ({list}) AS a FROM documents ORDER BY {orders}");
    let err = parse(&repeated, &[]).expect_err("a million terms");
    assert!(err.to_string().contains("terms"), "{err}");
}

#[test]
fn the_longest_allowed_operator_chain_fits_a_two_megabyte_stack() {
    // sqlparser builds `1 + 1 + …` without recursing, but dropping it recurses once
    // per operator; the token limit keeps that within a tokio worker's stack.
    let terms = crate::plan::MAX_TOKENS / 2 - 4;
    let query = format!("SELECT {} FROM documents", vec!["1"; terms].join("+"));
    let outcome = std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(move || parse(&query, &[]).is_err())
        .expect("spawns")
        .join();
    assert_eq!(outcome.ok(), Some(true), "refused, without overflowing the stack");
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime")
}

const SEEDS: &[&str] = &[
    "SELECT id, content, 1 - (embedding <=> $1) AS similarity FROM documents ORDER BY embedding <=> $1 LIMIT 5",
    "SELECT * FROM documents WHERE source = $2 ORDER BY created_at DESC",
    "SELECT id FROM documents WHERE price > 5 AND (category IN ('a', 'b') OR content ILIKE '%x%') LIMIT 2 OFFSET 1",
    "SELECT COUNT(*) FROM documents WHERE metadata->>'source' = 'web'",
    "INSERT INTO documents (id, content, metadata, embedding) VALUES ('z', 'c', '{}', $1)",
    "UPDATE documents SET metadata = metadata || $3 WHERE NOT draft IS NULL",
    "DELETE FROM documents WHERE id = 'a' OR price <= 5",
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_text_never_panics(query in "\\PC{0,200}") {
        let b = backend();
        let params = vec![json!([1.0, 0.0, 0.0]), json!("web"), json!({"k": 1})];
        let _ = runtime().block_on(execute(&b, &QueryRequest { query, params, ..QueryRequest::default() }, KEY));
    }

    #[test]
    fn mutated_valid_queries_never_panic(
        seed in 0..SEEDS.len(),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), 0..4u8, "[ ()$',;*<=>#|%_0-9a-zA-Z\\-\\[\\]\\.]{0,4}"), 1..6),
        explain in any::<bool>(),
        limit in proptest::option::of(0..30u64),
    ) {
        let mut query: Vec<char> = SEEDS[seed].chars().collect();
        for (at, kind, text) in edits {
            let at = at.index(query.len() + 1);
            match kind {
                0 => query.splice(at..at, text.chars()).for_each(drop),
                1 if at < query.len() => { query.remove(at); }
                2 => query.truncate(at),
                _ => {
                    let end = (at + text.len()).min(query.len());
                    query.splice(at..end, text.chars()).for_each(drop);
                }
            }
        }
        let query: String = query.into_iter().collect();
        let b = backend();
        let params = vec![json!([1.0, 0.0, 0.0]), json!("web"), json!({"k": 1})];
        let request = QueryRequest { query, params, limit, explain, ..QueryRequest::default() };
        let _ = runtime().block_on(execute(&b, &request, KEY));
    }
}

#[tokio::test]
async fn an_update_of_more_rows_than_a_statement_changes_is_refused_whole() {
    let b = MemoryBackend::new(3, DistanceOp::Cosine);
    b.create("many");
    let rows = crate::exec::MAX_UPDATE_ROWS + 1;
    for i in 0..rows {
        b.put(
            "many",
            row(&format!("r{i:05}"), Some("text"), json!({"i": i}), [1.0, 0.0, 0.0], 1),
        );
    }
    let (message, _) = fail(&b, "UPDATE many SET content = 'changed'", json!([])).await;
    assert!(message.contains("more than 10000 rows"), "{message}");
    assert!(
        b.rows("many").iter().all(|r| r.content.as_deref() == Some("text")),
        "no row was changed"
    );
    // At the limit, the statement runs.
    let result = run(&b, "UPDATE many SET content = 'changed' WHERE i > 0", json!([])).await;
    assert_eq!(result.row_count, crate::exec::MAX_UPDATE_ROWS as u64);
}

#[tokio::test]
async fn a_select_returning_more_rows_than_a_statement_returns_is_refused_and_says_how_to_page() {
    let b = MemoryBackend::new(3, DistanceOp::Cosine);
    b.create("many");
    let rows = crate::exec::MAX_RESULT_ROWS as usize + 1;
    for i in 0..rows {
        b.put(
            "many",
            row(&format!("r{i:05}"), Some("text"), json!({"i": i}), [1.0, 0.0, 0.0], 1),
        );
    }
    for query in [
        "SELECT id FROM many",
        "SELECT id FROM many ORDER BY id DESC",
        // A LIMIT beyond the cap does not lift it.
        "SELECT id FROM many LIMIT 1000000000",
        "SELECT * FROM many ORDER BY id LIMIT 20000",
    ] {
        let (message, detail) = fail(&b, query, json!([])).await;
        assert!(
            message.contains("returns more than the 10000 rows a statement returns"),
            "{query}: {message}"
        );
        assert!(detail.is_some_and(|d| d.contains("LIMIT")), "{query}");
    }
    // Within the cap, with a LIMIT, with a page, or counted, it runs.
    assert_eq!(
        run(&b, "SELECT id FROM many WHERE i > 0", json!([])).await.row_count,
        10_000
    );
    assert_eq!(
        run(&b, "SELECT id FROM many ORDER BY id LIMIT 3", json!([]))
            .await
            .row_count,
        3
    );
    let paged = QueryRequest {
        limit: Some(100),
        ..request("SELECT id FROM many ORDER BY id", json!([]))
    };
    let page = execute(&b, &paged, KEY).await.expect("a page");
    assert_eq!(
        (page.row_count, page.total_count, page.has_more),
        (100, Some(10_001), Some(true))
    );
    let counted = run(&b, "SELECT COUNT(*) FROM many", json!([])).await;
    assert_eq!(counted.rows[0]["count"], json!(10_001));
}

#[tokio::test]
async fn an_update_is_computed_again_from_rows_changed_after_it_read_them() {
    let b = backend();
    // After the UPDATE read the tech rows (a and b): another client deletes b and moves
    // c to tech with a new price.
    b.meanwhile(|rows| {
        rows.remove("b");
        let c = rows.get_mut("c").expect("c");
        c.metadata.insert("category".into(), json!("tech"));
        c.metadata.insert("price".into(), json!(6));
    });
    let result = run(
        &b,
        "UPDATE documents SET metadata = metadata || '{\"touched\": true}', content = content || ' (edited)' \
         WHERE category = 'tech'",
        json!([]),
    )
    .await;
    assert_eq!(result.row_count, 2, "a and c");
    let rows = b.rows("documents");
    let get = |id: &str| rows.iter().find(|r| r.id == id);
    assert!(get("b").is_none(), "b stays deleted, not written back");
    let c = get("c").expect("c");
    assert_eq!(c.metadata["price"], json!(6), "the other client's change is kept");
    assert_eq!(c.metadata["touched"], json!(true));
    assert_eq!(c.content.as_deref(), Some("Third note (edited)"));
    assert_eq!(get("a").expect("a").content.as_deref(), Some("First document (edited)"));
    assert!(get("d").expect("d").metadata.get("touched").is_none());
}

#[tokio::test]
async fn a_delete_keeps_rows_changed_to_fail_its_where_after_it_read_them() {
    let b = backend();
    b.meanwhile(|rows| {
        rows.get_mut("a")
            .expect("a")
            .metadata
            .insert("category".into(), json!("kept"));
    });
    let result = run(&b, "DELETE FROM documents WHERE category = 'tech'", json!([])).await;
    let left: Vec<String> = b.rows("documents").into_iter().map(|r| r.id).collect();
    assert!(
        left.contains(&"a".to_owned()),
        "a no longer matched when the delete wrote: {left:?}"
    );
    assert!(
        b.rows("documents")
            .iter()
            .all(|r| r.metadata.get("category") != Some(&json!("tech"))),
        "every row still tech was deleted"
    );
    assert_eq!(result.row_count as usize, 5 - left.len());
}

#[tokio::test]
async fn rows_that_keep_changing_under_a_statement_fail_it_with_a_conflict_and_no_write() {
    let b = backend();
    for _ in 0..crate::exec::WRITE_ATTEMPTS {
        b.meanwhile(|rows| {
            let a = rows.get_mut("a").expect("a");
            let price = a.metadata["price"].as_i64().expect("price");
            a.metadata.insert("price".into(), json!(price + 1));
        });
    }
    let before = b.rows("documents");
    match execute(&b, &request("UPDATE documents SET content = 'x'", json!([])), KEY).await {
        Err(ApiError::Conflict(message)) => assert!(message.contains("run it again"), "{message}"),
        other => panic!("expected a conflict, got {other:?}"),
    }
    let after = b.rows("documents");
    assert!(
        after.iter().all(|r| r.content.as_deref() != Some("x")),
        "nothing written"
    );
    assert_eq!(after.len(), before.len());
    // The other client's writes landed; with them done, the statement runs.
    assert_eq!(
        after.iter().find(|r| r.id == "a").map(|r| r.metadata["price"].clone()),
        Some(json!(13))
    );
    assert_eq!(
        run(&b, "UPDATE documents SET content = 'x'", json!([])).await.row_count,
        5
    );
}

#[test]
fn like_reads_escapes_as_written_and_refuses_a_match_past_its_budget() {
    use crate::eval::like;
    // ILIKE folds what the pattern matches, not its escape character.
    assert!(like("%abc", "X%%", true, Some('X')).expect("like"));
    assert!(!like("xabc", "X%%", true, Some('X')).expect("like"));
    assert!(like("%ABC", "x%%", true, Some('x')).expect("like"));
    assert!(like("Straße", "STRA%", true, None).expect("like"));
    assert!(like("ΟΔΟΣ", "οδοσ", true, None).expect("like"));
    assert!(like("ΟΔΟΣ x", "ΟΔΟΣ%", true, None).expect("like"));
    // A pattern that backtracks over every position of a long text for every character
    // of a long run is refused, not run for minutes.
    let text = "a".repeat(200_000);
    let pattern = format!("%{}b", "a".repeat(5_000));
    match like(&text, &pattern, false, None) {
        Err(ApiError::Query { message, .. }) => assert!(message.contains("steps"), "{message}"),
        other => panic!("expected a QUERY_ERROR, got {other:?}"),
    }
    // Ordinary patterns over the same text are well within it.
    assert!(like(&text, "%aaa%", false, None).expect("like"));
    assert!(!like(&text, "%b%", false, None).expect("like"));
}

#[tokio::test]
async fn jsonb_equality_compares_numbers_by_value_inside_arrays_and_objects() {
    let b = MemoryBackend::new(3, DistanceOp::Cosine);
    b.put(
        "documents",
        row(
            "a",
            Some("x"),
            json!({"dims": [1.0, 2.0], "size": {"w": 3}}),
            [1.0, 0.0, 0.0],
            1,
        ),
    );
    b.put(
        "documents",
        row(
            "b",
            Some("y"),
            json!({"dims": [1, 3], "size": {"w": 4.0}}),
            [0.0, 1.0, 0.0],
            2,
        ),
    );
    for (query, expected) in [
        (
            "SELECT id FROM documents WHERE metadata->'dims' = '[1, 2]'::jsonb",
            vec!["a"],
        ),
        (
            "SELECT id FROM documents WHERE metadata->'size' = '{\"w\": 3.0}'::jsonb",
            vec!["a"],
        ),
        (
            "SELECT id FROM documents WHERE metadata->'size' = '{\"w\": 4}'::jsonb",
            vec!["b"],
        ),
        (
            "SELECT id FROM documents WHERE metadata->'dims' = '[1, 2, 3]'::jsonb",
            vec![],
        ),
    ] {
        assert_eq!(ids(&run(&b, query, json!([])).await), expected, "{query}");
    }
}

/// Runs a request within `budget` bytes in place of `MAX_STATEMENT_BYTES`, so a few
/// rows take the paths a full budget takes only over tens of megabytes.
async fn run_within(b: &MemoryBackend, req: &QueryRequest, budget: usize) -> Result<QueryResult, ApiError> {
    let statement = parse(&req.query, &req.params)?;
    crate::exec::execute_within(b, &statement, req, KEY, budget).await
}

fn query_message(outcome: Result<QueryResult, ApiError>) -> String {
    match outcome {
        Err(ApiError::Query { message, .. }) => message,
        other => panic!("expected a QUERY_ERROR, got {other:?}"),
    }
}

/// A parameter is bound once: every `$1` in the plan, and every distance to a vector
/// parameter, is the same value in memory, so naming a large one thousands of times
/// costs nothing more than naming it once.
#[test]
fn a_parameter_named_many_times_is_bound_once_and_shared_by_every_reference() {
    use crate::plan::{Expr, Kind};
    let names = vec!["$1"; 4_990].join(", ");
    let text = json!("t".repeat(200 * 1024));
    let statement = parse(&format!("SELECT {names} FROM documents"), &[text]).expect("plans");
    let Kind::Select(select) = &statement.kind else {
        panic!("a SELECT");
    };
    let values: Vec<_> = select
        .items
        .iter()
        .map(|item| match &item.expr {
            Expr::Lit(value) => value.clone(),
            other => panic!("a literal, got {other:?}"),
        })
        .collect();
    assert_eq!(values.len(), 4_990);
    assert!(
        values.iter().all(|v| std::sync::Arc::ptr_eq(v, &values[0])),
        "one value"
    );

    let distances = vec!["embedding <=> $1"; 1_000].join(", ");
    let statement = parse(&format!("SELECT {distances} FROM documents"), &[json!([1.0, 0.0, 0.0])]).expect("plans");
    let Kind::Select(select) = &statement.kind else {
        panic!("a SELECT");
    };
    let vectors: Vec<_> = select
        .items
        .iter()
        .map(|item| match &item.expr {
            Expr::Distance { vector, .. } => vector.clone(),
            other => panic!("a distance, got {other:?}"),
        })
        .collect();
    assert!(
        vectors.iter().all(|v| std::sync::Arc::ptr_eq(v, &vectors[0])),
        "one vector"
    );

    // A cast of a parameter is made once too.
    let casts = vec!["$1::jsonb"; 1_000].join(", ");
    let statement = parse(&format!("SELECT {casts} FROM documents"), &[json!("{\"a\": 1}")]).expect("plans");
    let Kind::Select(select) = &statement.kind else {
        panic!("a SELECT");
    };
    let made: Vec<_> = select
        .items
        .iter()
        .map(|item| match &item.expr {
            Expr::Lit(value) => value.clone(),
            other => panic!("a literal, got {other:?}"),
        })
        .collect();
    assert!(made.iter().all(|v| std::sync::Arc::ptr_eq(v, &made[0])), "one cast");
}

#[tokio::test]
async fn values_over_the_value_limit_are_refused_naming_the_limit() {
    let b = backend();
    let limit = crate::MAX_VALUE_BYTES;
    let at_limit = run(
        &b,
        "SELECT id FROM documents WHERE content = $1",
        json!(["a".repeat(limit)]),
    )
    .await;
    assert_eq!(at_limit.row_count, 0, "a value at the limit runs");

    for (what, param) in [
        ("text", json!("a".repeat(limit + 1))),
        ("a JSON object", json!({"k": "a".repeat(limit)})),
        ("a vector", json!(vec![0.5; limit / 4 + 1])),
    ] {
        let (message, _) = fail(&b, "SELECT id FROM documents WHERE content = $1", json!([param])).await;
        assert!(
            message.starts_with("parameter $1 is more than 262144 bytes (256 KiB)") && message.contains("smaller"),
            "{what}: {message}"
        );
    }
    let literal = format!("SELECT id FROM documents WHERE content = '{}'", "a".repeat(limit + 1));
    let (message, _) = fail(&b, &literal, json!([])).await;
    assert!(message.contains("is more than 262144 bytes (256 KiB)"), "{message}");
}

/// `||` and `::text` make values; none past the limit is made, so `$1 || $1 || …`
/// cannot build gigabytes per row out of a small parameter.
#[tokio::test]
async fn concatenation_and_casts_past_the_value_limit_are_refused() {
    let b = backend();
    let small = run(
        &b,
        "SELECT $1 || $1 || $1 AS t FROM documents WHERE id = 'a'",
        json!(["ab"]),
    )
    .await;
    assert_eq!(small.rows[0]["t"], json!("ababab"));

    // A chain nests one level a link, a balanced tree one level a doubling: 100 links
    // of 4 KiB, and 2,048 references to 1 KiB, are each past the limit.
    let chain = vec!["$1"; 100].join(" || ");
    let mut tree = "$1".to_owned();
    for _ in 0..11 {
        tree = format!("({tree} || {tree})");
    }
    for (expression, param) in [(chain, "x".repeat(4096)), (tree, "x".repeat(1024))] {
        let (message, _) = fail(&b, &format!("SELECT {expression} FROM documents"), json!([param])).await;
        assert!(
            message.starts_with("the result of || is more than 262144 bytes (256 KiB)")
                && message.ends_with("concatenate fewer or smaller values"),
            "{message}"
        );
    }

    // JSON merges are held to the limit as text is.
    let half = json!(vec!["y".repeat(1000); 150]);
    let (message, _) = fail(&b, "SELECT $1 || $1 FROM documents", json!([half])).await;
    assert!(message.starts_with("the result of || is more than"), "{message}");

    // In an UPDATE, nothing is written.
    let (message, _) = fail(
        &b,
        "UPDATE documents SET content = $1 || $1",
        json!(["z".repeat(200 * 1024)]),
    )
    .await;
    assert!(message.starts_with("the result of || is more than"), "{message}");
    assert_eq!(b.rows("documents")[0].content.as_deref(), Some("First document"));

    // jsonb's text puts a space after each comma: within the limit as JSON, not as text.
    let wide = json!(vec![""; 70_000]);
    let (message, _) = fail(&b, "SELECT $1::text FROM documents", json!([wide])).await;
    assert!(
        message.starts_with("the text of a ::text cast is more than"),
        "{message}"
    );
}

#[tokio::test]
async fn an_insert_whose_rows_copy_a_parameter_past_the_budget_is_refused() {
    let b = backend();
    let rows = vec!["($1)"; 260].join(", ");
    let (message, _) = fail(
        &b,
        &format!("INSERT INTO documents (content) VALUES {rows}"),
        json!(["c".repeat(crate::MAX_VALUE_BYTES)]),
    )
    .await;
    assert!(
        message.contains("the INSERT's rows come to more than 67108864 bytes (64 MiB)")
            && message.contains("several statements"),
        "{message}"
    );
    assert_eq!(b.rows("documents").len(), 5, "nothing was inserted");
}

/// The index filter and a plan's text quote each literal, so a statement naming a
/// large parameter many times would write it as often: the filter pushes down no more
/// than a value's worth (WHERE is checked on every row anyway), and a plan shows the
/// start of each literal.
#[tokio::test]
async fn a_plan_names_a_large_parameter_in_its_filter_and_text_only_briefly() {
    let b = backend();
    let names = vec!["$1"; 1_000].join(", ");
    let mut req = request(
        &format!("SELECT id FROM documents WHERE source IN ({names}) ORDER BY embedding <=> $2 LIMIT 5"),
        json!(["w".repeat(100 * 1024), [1.0, 0.0, 0.0]]),
    );
    req.explain = true;
    let plan = execute(&b, &req, KEY).await.expect("explains").plan.expect("a plan");
    assert!(plan.to_string().len() < 200_000, "{} bytes", plan.to_string().len());
    assert_eq!(plan["strategy"], "exact_scan", "too large to push down");
    assert!(
        plan["where"]
            .as_str()
            .is_some_and(|w| w.contains("'wwww") && w.contains('…'))
    );

    // The same statement runs, and answers as WHERE says.
    req.explain = false;
    assert_eq!(execute(&b, &req, KEY).await.expect("runs").row_count, 0);
    // A small filter is still pushed down whole.
    let mut small = request(
        "SELECT id FROM documents WHERE source IN ($1, $1) ORDER BY embedding <=> $2 LIMIT 5",
        json!(["web", [1.0, 0.0, 0.0]]),
    );
    small.explain = true;
    let plan = execute(&b, &small, KEY).await.expect("explains").plan.expect("a plan");
    assert_eq!(plan["filter"], json!({"source": {"$in": ["web", "web"]}}));
}

/// 3,000 rows with 400 bytes of content each, scores repeating (ties go by id).
fn scored_backend() -> MemoryBackend {
    let b = MemoryBackend::new(3, DistanceOp::Cosine);
    for i in 0..3_000 {
        let id = format!("r{:04}", (i * 7_919) % 3_000);
        b.put(
            "big",
            row(
                &id,
                Some(&"c".repeat(400)),
                json!({"score": i % 37}),
                [1.0, 0.0, 0.0],
                0,
            ),
        );
    }
    b
}

/// A DELETE holds the ids of the rows it deletes within the statement's budget:
/// past it, it is refused, deletes nothing, and says to run it in parts.
#[tokio::test]
async fn a_delete_matching_more_ids_than_its_budget_is_refused_and_deletes_nothing() {
    let b = scored_backend();
    let all = request("DELETE FROM big", json!([]));
    let message = query_message(run_within(&b, &all, 64 << 10).await);
    assert!(
        message.starts_with("the DELETE matches more rows than one statement deletes")
            && message.ends_with("narrow its WHERE and run it in parts"),
        "{message}"
    );
    assert_eq!(b.rows("big").len(), 3_000, "nothing deleted");
    let narrow = request("DELETE FROM big WHERE score = 0", json!([]));
    assert_eq!(run_within(&b, &narrow, 64 << 10).await.expect("runs").row_count, 82);
    assert_eq!(b.rows("big").len(), 3_000 - 82);
}

/// Past the budget, a sorted scan drops the rows it holds, keeps only their sort keys
/// and ids, and reads the page's rows again at the end: it answers as a sort of every
/// row does. Where even keys and ids would not fit, it is refused and says how to page.
#[tokio::test]
async fn a_scan_past_its_budget_keeps_keys_and_ids_and_answers_as_a_whole_sort_does() {
    let b = scored_backend();
    let budget = 1 << 20;
    for (statement, page_offset, page_limit) in [
        ("SELECT id, content FROM big ORDER BY score DESC", 1_400, 100),
        (
            "SELECT id, content FROM big ORDER BY score, id DESC OFFSET 5 LIMIT 2000",
            1_990,
            20,
        ),
        (
            "SELECT id, content FROM big ORDER BY score",
            9_000_000_000_000_000_000,
            10,
        ),
        ("SELECT id, content FROM big OFFSET 2990", 0, 100),
    ] {
        let mut req = request(statement, json!([]));
        req.offset = Some(page_offset);
        req.limit = Some(page_limit);
        let whole = execute(&b, &req, KEY).await.expect("runs");
        let within = run_within(&b, &req, budget).await.expect("runs within the budget");
        assert_eq!(ids(&within), ids(&whole), "{statement}");
        assert_eq!(within.rows, whole.rows, "{statement}");
        assert_eq!(
            (within.total_count, within.has_more, &within.next_cursor),
            (whole.total_count, whole.has_more, &whole.next_cursor),
            "{statement}"
        );
    }
    let mut deep = request("SELECT id FROM big ORDER BY score", json!([]));
    deep.offset = Some(2_500);
    deep.limit = Some(10);
    let message = query_message(run_within(&b, &deep, 64 << 10).await);
    assert!(
        message
            .starts_with("the SELECT cannot sort the rows before the end of its page within the 65536 bytes (64 KiB)"),
        "{message}"
    );
}

#[tokio::test]
async fn a_limit_of_ten_thousand_over_large_rows_is_refused_past_the_result_budget() {
    let b = MemoryBackend::new(3, DistanceOp::Cosine);
    for i in 0..300 {
        b.put(
            "big",
            row(
                &format!("r{i:03}"),
                Some(&"c".repeat(8 * 1024)),
                json!({}),
                [1.0, 0.0, 0.0],
                i,
            ),
        );
    }
    let budget = 1 << 20;
    let all = request("SELECT * FROM big ORDER BY created_at LIMIT 10000", json!([]));
    let outcome = run_within(&b, &all, budget).await;
    let Err(ApiError::Query { message, detail }) = outcome else {
        panic!("expected a QUERY_ERROR, got {outcome:?}");
    };
    assert_eq!(
        message,
        "the SELECT's rows come to more than 1048576 bytes (1 MiB), the most a statement returns at once"
    );
    assert!(detail.is_some_and(|d| d.contains("nextCursor")));
    // Smaller columns, or a smaller page, fit.
    let ids_only = request("SELECT id FROM big ORDER BY created_at LIMIT 10000", json!([]));
    assert_eq!(run_within(&b, &ids_only, budget).await.expect("runs").row_count, 300);
    let mut page = all.clone();
    page.limit = Some(50);
    let first = run_within(&b, &page, budget).await.expect("runs");
    assert_eq!((first.row_count, first.total_count), (50, Some(300)));
}

#[tokio::test]
async fn an_update_rewriting_more_than_its_budget_is_refused_and_writes_nothing() {
    let b = scored_backend();
    let req = request(
        "UPDATE big SET content = $1 WHERE score < 10",
        json!(["n".repeat(2048)]),
    );
    let message = query_message(run_within(&b, &req, 1 << 20).await);
    assert!(
        message.starts_with("the UPDATE's new values come to more than 1048576 bytes (1 MiB)")
            && message.ends_with("narrow its WHERE and run it in parts"),
        "{message}"
    );
    assert!(
        b.rows("big")
            .iter()
            .all(|r| r.content.as_deref().is_some_and(|c| c.starts_with('c')))
    );
    let narrow = request("UPDATE big SET content = $1 WHERE score = 0", json!(["n".repeat(2048)]));
    assert_eq!(run_within(&b, &narrow, 1 << 20).await.expect("runs").row_count, 82);
}
