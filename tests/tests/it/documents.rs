//! The document and query API: every request of
//! `shared/seeds/document-and-query-api-reference.txt` as written, every error code
//! it lists, embedding providers (a fake OpenAI-compatible server and the real local
//! model), NQL through HTTP, and the page's rate limits (429, `X-RateLimit-*`) and
//! 503 with the records store gone on its routes.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::support::assert_error;
use quiver_tests::app::{Backend, Tenant, TestApp, embed_config, read};
use quiver_tests::fake_openai::FakeOpenAi;

/// An app whose `openai/*` models are served by a fake, with OpenAI's small model as
/// the default, as a deployment "configured" for the page's examples would be.
async fn app_with_openai(backend: Backend) -> (TestApp, FakeOpenAi) {
    let fake = FakeOpenAi::start().await;
    let app = TestApp::start_with(
        backend,
        embed_config(Some(fake.base_url.clone())),
        "openai/text-embedding-3-small",
    )
    .await;
    (app, fake)
}

/// Sends raw JSON text with `Authorization: Bearer`, as the page does.
async fn call(app: &TestApp, method: Method, path: &str, key: &str, body: Option<&str>) -> (u16, Value) {
    let mut request = app
        .data_request(0, method, path)
        .header("Authorization", format!("Bearer {key}"));
    if let Some(body) = body {
        request = request.header("Content-Type", "application/json").body(body.to_owned());
    }
    read(request.send().await.expect("answer")).await
}

/// Inserts `documents` into the collection `documents` with one batch request.
async fn insert_batch(app: &TestApp, key: &str, documents: Vec<Value>) {
    let (status, body) = app
        .data_call(
            0,
            Method::POST,
            "/api/v1/collections/documents/documents/batch",
            key,
            Some(json!({"documents": documents})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
}

const INSERT: &str = r#"{
"documents": [
{
"content": "NeuralDB is an AI-native database",
"metadata": { "source": "blog", "category": "technology" }
}
],
"embedding_model": "openai/text-embedding-3-small"
}"#;

const SEARCH: &str = r#"{
"query": "AI-native database for semantic search",
"limit": 10,
"min_similarity": 0.7,
"filters": {
"category": "technology"
},
"embedding_model": "openai/text-embedding-3-small",
"include_metadata": true
}"#;

const UPDATE: &str = r#"{
"content": "Updated content",
"metadata": { "source": "blog", "updated": true },
"regenerate_embedding": true
}"#;

const BATCH: &str = r#"{
"documents": [
{ "content": "Document 1", "metadata": {} },
{ "content": "Document 2", "metadata": {} }
]
}"#;

async fn document_requests_of_the_page_work_as_written(backend: Backend) {
    let (app, fake) = app_with_openai(backend).await;
    let t = app.tenant_named("mydb", 1536, "cosine").await;

    let (status, inserted) = call(
        &app,
        Method::POST,
        "/api/v1/collections/my_docs/documents",
        &t.readwrite,
        Some(INSERT),
    )
    .await;
    assert_eq!(status, 200, "{inserted}");
    assert_eq!(inserted["inserted"], 1);
    let id = inserted["ids"][0].as_str().expect("an id").to_owned();
    uuid::Uuid::parse_str(&id).expect("ids are UUIDs");

    let (status, batch) = call(
        &app,
        Method::POST,
        "/api/v1/collections/my_docs/documents/batch",
        &t.readwrite,
        Some(BATCH),
    )
    .await;
    assert_eq!(status, 200, "{batch}");
    assert_eq!(batch["inserted"], 2);
    assert_eq!(batch["ids"].as_array().map(Vec::len), Some(2));

    let (status, found) = call(
        &app,
        Method::POST,
        "/api/v1/collections/my_docs/search",
        &t.readonly,
        Some(SEARCH),
    )
    .await;
    assert_eq!(status, 200, "{found}");
    let results = found["results"].as_array().expect("results");
    assert_eq!(
        results.len(),
        1,
        "the filter keeps only the technology document: {found}"
    );
    assert_eq!(results[0]["id"], id.as_str());
    assert_eq!(results[0]["content"], "NeuralDB is an AI-native database");
    assert!(results[0]["similarity"].as_f64().expect("similarity") >= 0.7, "{found}");
    assert_eq!(
        results[0]["metadata"],
        json!({ "source": "blog", "category": "technology" })
    );
    assert_eq!(found["query_embedding_model"], "openai/text-embedding-3-small");
    assert!(found["latency_ms"].as_f64().expect("latency_ms") >= 0.0);
    assert!(
        fake.calls() >= 3,
        "insert, batch and search each embedded through the provider"
    );

    let path = format!("/api/v1/collections/my_docs/documents/{id}");
    let (status, document) = call(&app, Method::GET, &path, &t.readonly, None).await;
    assert_eq!(status, 200, "{document}");
    assert_eq!(document["id"], id.as_str());
    assert_eq!(document["content"], "NeuralDB is an AI-native database");
    assert_eq!(
        document["metadata"],
        json!({ "source": "blog", "category": "technology" })
    );
    let before = document["embedding"].as_array().expect("embedding").clone();
    assert_eq!(before.len(), 1536);

    let (status, updated) = call(&app, Method::PUT, &path, &t.readwrite, Some(UPDATE)).await;
    assert_eq!(status, 200, "{updated}");
    assert_eq!(updated["updated"], true);
    let (_, document) = call(&app, Method::GET, &path, &t.readonly, None).await;
    assert_eq!(document["content"], "Updated content");
    assert_eq!(
        document["metadata"],
        json!({ "source": "blog", "updated": true }),
        "PUT replaces metadata"
    );
    assert_ne!(
        document["embedding"].as_array().expect("embedding"),
        &before,
        "the embedding was regenerated"
    );

    let (status, deleted) = call(&app, Method::DELETE, &path, &t.readwrite, None).await;
    assert_eq!(status, 200, "{deleted}");
    assert_eq!(deleted["deleted"], true);
    let (status, gone) = call(&app, Method::GET, &path, &t.readonly, None).await;
    assert_error(status, &gone, 404, "NOT_FOUND");

    // The key may also come as a query parameter.
    let response = app
        .data_request(
            0,
            Method::GET,
            &format!("/api/v1/collections/my_docs/documents?api_key={}", t.readonly),
        )
        .send()
        .await
        .expect("answer");
    let (status, page) = read(response).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["totalCount"], 2, "the batch's two documents remain: {page}");
}

const QUERY: &str = r#"{
"query": "SELECT id, content, 1 - (embedding <=> $1) AS similarity FROM documents ORDER BY embedding <=> $1 LIMIT 5",
"params": [[0.023, -0.187, 0.412]],
"database": "mydb"
}"#;

const PAGINATED: &str = r#"{
"query": "SELECT * FROM documents WHERE source = $1 ORDER BY created_at DESC",
"params": ["web-scraper"],
"limit": 20,
"offset": 40
}"#;

/// A 3-dimensional project named `mydb` with a `documents` collection, the page's query setting.
async fn mydb(app: &TestApp) -> Tenant {
    let t = app.tenant_named("mydb", 3, "cosine").await;
    let documents = json!({"documents": [
        {"content": "First document", "embedding": [0.02, -0.19, 0.41], "metadata": {"source": "manual"}},
        {"content": "Second document", "embedding": [0.1, -0.1, 0.3], "metadata": {"source": "manual"}},
        {"content": "Third document", "embedding": [-0.4, 0.2, -0.1], "metadata": {"source": "manual"}},
    ]});
    let (status, body) = app
        .data_call(
            0,
            Method::POST,
            "/api/v1/collections/documents/documents",
            &t.readwrite,
            Some(documents),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    t
}

async fn query_requests_of_the_page_work_as_written(backend: Backend) {
    let app = TestApp::start(backend).await;
    let t = mydb(&app).await;

    for path in ["/api/v1/query", "/query"] {
        let (status, body) = call(&app, Method::POST, path, &t.readonly, Some(QUERY)).await;
        assert_eq!(status, 200, "{body}");
        let rows = body["rows"].as_array().expect("rows");
        assert_eq!(rows.len(), 3);
        assert_eq!(body["rowCount"], 3);
        assert_eq!(rows[0]["content"], "First document", "nearest first: {body}");
        assert_eq!(rows[1]["content"], "Second document");
        let similarities: Vec<f64> = rows
            .iter()
            .map(|r| r["similarity"].as_f64().expect("similarity"))
            .collect();
        assert!(
            similarities[0] > 0.99 && similarities.windows(2).all(|w| w[0] >= w[1]),
            "{similarities:?}"
        );
        assert_eq!(
            body["fields"],
            json!([
                { "name": "id", "dataTypeID": 2950 },
                { "name": "content", "dataTypeID": 25 },
                { "name": "similarity", "dataTypeID": 701 }
            ])
        );
        assert!(body["executionTimeMs"].as_f64().expect("executionTimeMs") >= 0.0);
    }

    let (status, body) = call(
        &app,
        Method::POST,
        "/api/v1/query",
        &t.readonly,
        Some(r#"{"query": "SELECT * FROM nonexistent"}"#),
    )
    .await;
    let message = assert_error(status, &body, 400, "QUERY_ERROR");
    assert_eq!(message, "relation \"nonexistent\" does not exist");
    assert_eq!(
        body["error"]["detail"],
        "ERROR: relation \"nonexistent\" does not exist at character 15"
    );
}

async fn nql_pages_with_offsets_and_cursors(backend: Backend) {
    let app = TestApp::start(backend).await;
    let t = app.tenant_named("mydb", 3, "cosine").await;
    let documents: Vec<Value> = (0..70)
        .map(|i| json!({"id": format!("doc-{i:02}"), "content": format!("page {i}"), "embedding": [1.0, i as f64, 0.5], "metadata": {"source": "web-scraper", "i": i}}))
        .chain((0..5).map(|i| json!({"content": format!("other {i}"), "embedding": [1.0, 0.0, 0.0], "metadata": {"source": "manual"}})))
        .collect();
    insert_batch(&app, &t.readwrite, documents).await;

    let (status, page) = call(&app, Method::POST, "/api/v1/query", &t.readonly, Some(PAGINATED)).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["rowCount"], 20);
    assert_eq!(page["totalCount"], 70);
    assert_eq!(page["hasMore"], true);
    assert!(
        page["rows"]
            .as_array()
            .expect("rows")
            .iter()
            .all(|r| r["metadata"]["source"] == "web-scraper")
    );
    let cursor = page["nextCursor"].as_str().expect("a cursor").to_owned();

    let (status, next) = app
        .data_call(
            0,
            Method::POST,
            "/api/v1/query",
            &t.readonly,
            Some(json!({"query": "SELECT * FROM documents WHERE source = $1 ORDER BY created_at DESC", "params": ["web-scraper"], "cursor": cursor})),
        )
        .await;
    assert_eq!(status, 200, "{next}");
    assert_eq!(next["rowCount"], 10, "rows 60..70: {next}");
    assert_eq!(next["hasMore"], false);
    assert!(next["nextCursor"].is_null());

    // A page of 1 to 10,000 rows, and an offset up to a signed 64-bit integer (the
    // spec's int64), on both routes.
    let (status, body) = app
        .data_call(
            0,
            Method::POST,
            "/api/v1/query",
            &t.readonly,
            Some(json!({"query": "SELECT * FROM documents", "offset": 9_223_372_036_854_775_808_u64})),
        )
        .await;
    let message = assert_error(status, &body, 400, "VALIDATION_ERROR");
    assert_eq!(
        message,
        "offset must be from 0 to 9223372036854775807, got 9223372036854775808"
    );
    for limit in [0, 10_001] {
        let (status, body) = app
            .data_call(
                0,
                Method::POST,
                "/api/v1/query",
                &t.readonly,
                Some(json!({"query": "SELECT * FROM documents", "limit": limit})),
            )
            .await;
        let message = assert_error(status, &body, 400, "VALIDATION_ERROR");
        assert_eq!(message, format!("limit must be from 1 to 10000, got {limit}"));
    }
    let path = "/api/v1/collections/documents/documents?offset=9223372036854775808";
    let (status, body) = app.data_call(0, Method::GET, path, &t.readonly, None).await;
    assert_error(status, &body, 400, "VALIDATION_ERROR");
    let path = "/api/v1/collections/documents/documents?offset=9223372036854775807";
    let (status, body) = app.data_call(0, Method::GET, path, &t.readonly, None).await;
    assert_eq!((status, &body["rowCount"]), (200, &json!(0)), "{body}");

    // A cursor is bound to its query.
    let (status, body) = app
        .data_call(
            0,
            Method::POST,
            "/api/v1/query",
            &t.readonly,
            Some(json!({"query": "SELECT * FROM documents", "cursor": cursor})),
        )
        .await;
    assert_error(status, &body, 400, "VALIDATION_ERROR");

    // Document lists page with the same cursors.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            None => "/api/v1/collections/documents/documents?limit=30".to_owned(),
            Some(c) => format!("/api/v1/collections/documents/documents?limit=30&cursor={c}"),
        };
        let (status, page) = app.data_call(0, Method::GET, &path, &t.readonly, None).await;
        assert_eq!(status, 200, "{page}");
        assert_eq!(page["totalCount"], 75);
        seen.extend(
            page["documents"]
                .as_array()
                .expect("documents")
                .iter()
                .map(|d| d["id"].clone()),
        );
        match page["nextCursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen.len(), 75);
    let mut sorted = seen.clone();
    sorted.sort_by(|a, b| a.as_str().cmp(&b.as_str()));
    assert_eq!(seen, sorted, "id order");

    // Pages follow ids: a document deleted from an earlier page shifts nothing.
    let first = "/api/v1/collections/documents/documents?limit=30";
    let (_, page) = app.data_call(0, Method::GET, first, &t.readonly, None).await;
    let cursor = page["nextCursor"].as_str().expect("a next page").to_owned();
    let gone = sorted[0].as_str().expect("id");
    let (status, body) = app
        .data_call(
            0,
            Method::DELETE,
            &format!("/api/v1/collections/documents/documents/{gone}"),
            &t.readwrite,
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let next = format!("/api/v1/collections/documents/documents?limit=30&cursor={cursor}");
    let (_, page) = app.data_call(0, Method::GET, &next, &t.readonly, None).await;
    assert_eq!(page["documents"][0]["id"], sorted[30], "{page}");
    assert_eq!(page["totalCount"], 74);
    let tampered = "/api/v1/collections/documents/documents?cursor=id.%25%25";
    let (status, body) = app.data_call(0, Method::GET, tampered, &t.readonly, None).await;
    assert_error(status, &body, 400, "VALIDATION_ERROR");
}

async fn nql_statements_read_and_write_through_http(backend: Backend) {
    let app = TestApp::start(backend).await;
    let t = mydb(&app).await;
    let q = |key: &str, query: &str, params: Value| {
        let body = json!({"query": query, "params": params});
        let key = key.to_owned();
        let app = &app;
        async move { app.data_call(0, Method::POST, "/api/v1/query", &key, Some(body)).await }
    };

    let (status, body) = q(&t.readonly, "SELECT COUNT(*) FROM documents", json!([])).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["rows"], json!([{"count": 3}]));
    assert_eq!(body["fields"], json!([{"name": "count", "dataTypeID": 20}]));

    let (status, body) = q(
        &t.readwrite,
        "INSERT INTO documents (id, content, metadata, embedding) VALUES ($1, $2, $3, $4)",
        json!(["n1", "Inserted by NQL", {"source": "nql", "rank": 7}, [0.5, 0.5, 0.5]]),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["rowCount"], 1);

    let (status, body) = q(
        &t.readonly,
        "SELECT id, metadata->>'source' AS source FROM documents WHERE rank > 5 AND content LIKE '%NQL'",
        json!([]),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["rows"], json!([{"id": "n1", "source": "nql"}]));

    let (status, body) = q(&t.readonly, "DELETE FROM documents WHERE id = 'n1'", json!([])).await;
    assert_error(status, &body, 403, "FORBIDDEN");

    let (status, body) = q(
        &t.readwrite,
        "UPDATE documents SET metadata = metadata || $1 WHERE source = 'manual'",
        json!([{"reviewed": true}]),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["rowCount"], 3);
    let (_, body) = q(
        &t.readonly,
        "SELECT COUNT(*) FROM documents WHERE reviewed = true",
        json!([]),
    )
    .await;
    assert_eq!(body["rows"], json!([{"count": 3}]), "{body}");

    // A WHERE the index's filter cannot take (20 ORs nest deeper than a filter may)
    // is evaluated by the executor instead: the search still answers.
    let ors: Vec<String> = (0..19).map(|i| format!("source = 'x{i}'")).collect();
    let (status, body) = q(
        &t.readonly,
        &format!(
            "SELECT id FROM documents WHERE {} OR source = 'manual' ORDER BY embedding <=> $1 LIMIT 2",
            ors.join(" OR ")
        ),
        json!([[0.5, 0.5, 0.5]]),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["rowCount"], 2, "{body}");

    // NQL writes the same records as the document API, under the same rules, and a
    // statement with one bad row writes none.
    let insert = "INSERT INTO documents (id, content, embedding) VALUES ($1, 'fine', $3), ($2, $4, $3)";
    for (params, code, needle) in [
        (
            json!(["n2", "n3", [0.0, 0.0, 0.0], "text"]),
            "QUERY_ERROR",
            "no direction for cosine",
        ),
        (
            json!(["n2", "n3", [0.5, 1e10, 0.5], "text"]),
            "QUERY_ERROR",
            "beyond ±65504",
        ),
        (
            json!(["n2", "", [0.5, 0.5, 0.5], "text"]),
            "QUERY_ERROR",
            "id must not be empty",
        ),
        (
            json!(["n2", "x".repeat(513), [0.5, 0.5, 0.5], "text"]),
            "VALIDATION_ERROR",
            "1 to 512 bytes",
        ),
        (
            json!(["n2", "n3", [0.5, 0.5, 0.5], "a\0b"]),
            "VALIDATION_ERROR",
            "NUL character",
        ),
    ] {
        let (status, body) = q(&t.readwrite, insert, params.clone()).await;
        let message = assert_error(status, &body, 400, code);
        assert!(message.contains(needle), "{params}: {message}");
    }
    let (status, body) = q(
        &t.readwrite,
        "UPDATE documents SET metadata = metadata || $1 WHERE source = 'manual'",
        json!([{"blob": "z".repeat(41 * 1024)}]),
    )
    .await;
    let message = assert_error(status, &body, 400, "VALIDATION_ERROR");
    assert!(message.contains("bytes of metadata"), "{message}");
    let (status, body) = q(
        &t.readwrite,
        "INSERT INTO documents (id, content, embedding) VALUES ('twice', 'a', $1), ('twice', 'b', $1)",
        json!([[0.5, 0.5, 0.5]]),
    )
    .await;
    let message = assert_error(status, &body, 400, "QUERY_ERROR");
    assert!(message.contains("\"twice\" twice"), "{message}");
    let (_, body) = q(&t.readonly, "SELECT COUNT(*) FROM documents", json!([])).await;
    assert_eq!(
        body["rows"],
        json!([{"count": 4}]),
        "nothing refused was written: {body}"
    );
    let (_, body) = q(
        &t.readonly,
        "SELECT COUNT(*) FROM documents WHERE metadata->>'blob' IS NOT NULL",
        json!([]),
    )
    .await;
    assert_eq!(body["rows"], json!([{"count": 0}]), "{body}");

    let (status, body) = q(&t.readwrite, "DELETE FROM documents WHERE id = 'n1'", json!([])).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["rowCount"], 1);
    let (_, body) = q(&t.readonly, "SELECT COUNT(*) FROM documents", json!([])).await;
    assert_eq!(body["rows"], json!([{"count": 3}]));

    // The search sees NQL's writes at once: the index was updated with them.
    let (status, body) = app
        .data_call(
            0,
            Method::POST,
            "/api/v1/collections/documents/search",
            &t.readonly,
            Some(json!({"vector": [-0.4, 0.2, -0.1], "limit": 1})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["results"][0]["content"], "Third document");
    assert_eq!(body["results"][0]["metadata"]["reviewed"], true);
    assert!(body["query_embedding_model"].is_null());

    let (status, body) = q(&t.readonly, "SELECT id FROM documents; DROP TABLE documents", json!([])).await;
    assert_error(status, &body, 400, "QUERY_ERROR");
    let (status, body) = q(&t.readwrite, "UPDATE documents SET nope = 1", json!([])).await;
    let message = assert_error(status, &body, 400, "QUERY_ERROR");
    assert!(message.contains("nope"), "{message}");
    let (status, body) = q(
        &t.readonly,
        "SELECT id FROM documents ORDER BY embedding <=> $1",
        json!([[1.0, 2.0]]),
    )
    .await;
    let message = assert_error(status, &body, 400, "QUERY_ERROR");
    assert!(
        message.contains('2') && message.contains('3'),
        "says both dimensions: {message}"
    );

    let (status, body) = app
        .data_call(
            0,
            Method::POST,
            "/api/v1/query",
            &t.readonly,
            Some(json!({"query": "SELECT 1 FROM documents", "database": "otherdb"})),
        )
        .await;
    assert_error(status, &body, 404, "NOT_FOUND");
    let (status, body) = app
        .data_call(
            0,
            Method::POST,
            "/api/v1/query",
            &t.readonly,
            Some(json!({"query": "SELECT id FROM documents", "explain": true})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(body["plan"].is_object(), "{body}");
    assert_eq!(body["rows"], json!([]));
    let (status, body) = app
        .data_call(
            0,
            Method::POST,
            "/api/v1/query",
            &t.readonly,
            Some(json!({"query": 42})),
        )
        .await;
    assert_error(status, &body, 400, "VALIDATION_ERROR");
    let (status, body) = app
        .data_call(
            0,
            Method::POST,
            "/api/v1/query",
            &t.readonly,
            Some(json!({"query": "SELECT id FROM documents", "timeout_ms": 0})),
        )
        .await;
    assert_error(status, &body, 400, "VALIDATION_ERROR");

    // A write statement takes x-idempotency-key: a retry replays, and inserts nothing.
    let insert = json!({"query": "INSERT INTO documents (content, embedding) VALUES ('once', $1) RETURNING id",
        "params": [[0.3, 0.2, 0.1]]});
    let mut answers = Vec::new();
    for _ in 0..2 {
        let response = app
            .data_request(0, Method::POST, "/api/v1/query")
            .header("x-api-key", &t.readwrite)
            .header("x-idempotency-key", "nql-once")
            .json(&insert)
            .send()
            .await
            .expect("answer");
        let replayed = response.headers().contains_key("idempotent-replayed");
        let (status, body) = read(response).await;
        assert_eq!(status, 200, "{body}");
        answers.push((body["rows"].clone(), replayed));
    }
    assert_eq!(answers[0].0, answers[1].0, "the same generated id");
    assert_eq!((answers[0].1, answers[1].1), (false, true));
    let (_, body) = q(
        &t.readonly,
        "SELECT COUNT(*) FROM documents WHERE content = 'once'",
        json!([]),
    )
    .await;
    assert_eq!(body["rows"], json!([{"count": 1}]), "{body}");

    // A batch naming an id twice writes the last of them, and counts it once.
    let twice = json!({"documents": [
        {"id": "dup", "content": "first", "embedding": [0.1, 0.2, 0.3]},
        {"id": "dup", "content": "second", "embedding": [0.1, 0.2, 0.3]},
    ]});
    let (status, body) = app
        .data_call(
            0,
            Method::POST,
            "/api/v1/collections/documents/documents/batch",
            &t.readwrite,
            Some(twice),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (&body["inserted"], &body["ids"]),
        (&json!(1), &json!(["dup", "dup"])),
        "{body}"
    );
    let (_, body) = q(&t.readonly, "SELECT content FROM documents WHERE id = 'dup'", json!([])).await;
    assert_eq!(body["rows"], json!([{"content": "second"}]));

    // A document named "batch" lives at the batch route's path: it is read, replaced
    // and deleted there like any other.
    insert_batch(
        &app,
        &t.readwrite,
        vec![json!({"id": "batch", "content": "named so", "embedding": [0.1, 0.2, 0.3]})],
    )
    .await;
    let path = "/api/v1/collections/documents/documents/batch";
    let (status, body) = app.data_call(0, Method::GET, path, &t.readonly, None).await;
    assert_eq!((status, &body["content"]), (200, &json!("named so")), "{body}");
    let (status, body) = app
        .data_call(0, Method::PUT, path, &t.readwrite, Some(json!({"content": "renamed"})))
        .await;
    assert_eq!((status, &body["updated"]), (200, &json!(true)), "{body}");
    let (_, body) = app.data_call(0, Method::GET, path, &t.readonly, None).await;
    assert_eq!(body["content"], "renamed", "{body}");
    let (status, body) = app.data_call(0, Method::DELETE, path, &t.readwrite, None).await;
    assert_eq!((status, &body["deleted"]), (200, &json!(true)), "{body}");
    let (status, _) = app.data_call(0, Method::GET, path, &t.readonly, None).await;
    assert_eq!(status, 404);
}

/// A write statement whose write has gone to the store when its timeout passes is not
/// answered as cancelled (the write commits all the same): it is answered when the
/// write is done, with what it did.
async fn a_write_under_way_runs_past_the_statement_timeout_and_is_answered(backend: Backend) {
    let app = TestApp::start(backend).await;
    let t = app.tenant_named("mydb", 3, "cosine").await;
    insert_batch(
        &app,
        &t.readwrite,
        vec![json!({"id": "first", "content": "a", "embedding": [1.0, 0.0, 0.0]})],
    )
    .await;
    let held = app.hold_writes().await;
    let insert = app
        .data_request(0, Method::POST, "/api/v1/query")
        .bearer_auth(&t.readwrite)
        .json(
            &json!({"query": "INSERT INTO documents (id, content, embedding) VALUES ('late', 'b', $1)",
            "params": [[0.0, 1.0, 0.0]], "timeout_ms": 200}),
        )
        .send();
    let insert = tokio::spawn(insert);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    if insert.is_finished() {
        let (status, body) = read(insert.await.expect("task").expect("answer")).await;
        panic!("the INSERT was answered while its write waited on the store: {status} {body}");
    }
    held.release().await;
    let (status, body) = read(insert.await.expect("task").expect("answer")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["rowCount"], 1, "{body}");
    let (status, body) = app
        .data_call(
            0,
            Method::POST,
            "/api/v1/query",
            &t.readonly,
            Some(json!({"query": "SELECT id FROM documents ORDER BY id"})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["rows"], json!([{"id": "first"}, {"id": "late"}]));
}

async fn a_statement_past_its_timeout_is_cancelled(backend: Backend) {
    let app = TestApp::start(backend).await;
    let t = app.tenant_named("mydb", 3, "cosine").await;
    for batch in 0..3 {
        let documents: Vec<Value> = (0..1000)
            .map(|i| json!({"content": format!("row {batch}-{i}"), "embedding": [1.0, f64::from(i), 0.5], "metadata": {"i": i}}))
            .collect();
        insert_batch(&app, &t.readwrite, documents).await;
    }
    // A full scan and sort of 3,000 rows takes longer than a millisecond.
    let slow =
        json!({"query": "SELECT id FROM documents WHERE content LIKE '%row%' ORDER BY content DESC", "timeout_ms": 1});
    let (status, body) = app
        .data_call(0, Method::POST, "/api/v1/query", &t.readonly, Some(slow))
        .await;
    let message = assert_error(status, &body, 400, "QUERY_ERROR");
    assert_eq!(message, "canceling statement due to statement timeout");
    let fine = json!({"query": "SELECT COUNT(*) FROM documents", "timeout_ms": 60000});
    let (status, body) = app
        .data_call(0, Method::POST, "/api/v1/query", &t.readonly, Some(fine))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["rows"], json!([{"count": 3000}]));
}

async fn bad_documents_are_refused_and_nothing_is_written(backend: Backend) {
    let (app, fake) = app_with_openai(backend).await;
    let t = app.tenant_named("mydb", 1536, "cosine").await;
    let post = |path: &'static str, body: Value| {
        let key = t.readwrite.clone();
        let app = &app;
        async move { app.data_call(0, Method::POST, path, &key, Some(body)).await }
    };
    let docs = "/api/v1/collections/c/documents";
    let batch = "/api/v1/collections/c/documents/batch";

    let many: Vec<Value> = (0..1001).map(|i| json!({"content": format!("d{i}")})).collect();
    let (status, body) = post(batch, json!({"documents": many})).await;
    let message = assert_error(status, &body, 400, "VALIDATION_ERROR");
    assert!(message.contains("1001") && message.contains("1000"), "{message}");

    let cases = [
        (json!({"documents": []}), "1 to 1000"),
        (
            json!({"documents": [{"content": "ok"}, {"metadata": {}}]}),
            "document 1 has no content",
        ),
        (json!({"documents": [{"content": 5}]}), "content must be a string"),
        (
            json!({"documents": [{"content": "x", "colour": "red"}]}),
            "unknown field \"colour\"",
        ),
        (
            json!({"documents": [{"id": "a", "content": "x", "embedding": [1.0, 2.0]}]}),
            "document 0 (id \"a\") has 2 values",
        ),
        (
            json!({"documents": [{"content": "x", "metadata": [1]}]}),
            "metadata must be an object",
        ),
        (
            json!({"documents": [{"content": "x"}], "embedding_model": "local/all-minilm-l6-v2"}),
            "384",
        ),
        (
            json!({"documents": [{"content": "x"}], "embedding_model": "nowhere/model"}),
            "nowhere",
        ),
    ];
    for (body, expected) in cases {
        let (status, answer) = post(docs, body.clone()).await;
        let message = assert_error(status, &answer, 400, "VALIDATION_ERROR");
        assert!(message.contains(expected), "{body} → {message}");
    }
    let (status, body) = post(
        docs,
        json!({"documents": [{"content": "x"}], "embedding_model": "local/all-minilm-l6-v2"}),
    )
    .await;
    let message = assert_error(status, &body, 400, "VALIDATION_ERROR");
    assert!(message.contains("1536"), "names both dimensions: {message}");

    // The provider failing past its retries is a 502; a brief failure is retried away.
    fake.fail_next(100);
    let (status, body) = post(docs, json!({"documents": [{"content": "x"}]})).await;
    assert_error(status, &body, 502, "UPSTREAM_ERROR");
    fake.fail_next(1);
    let (status, body) = post(docs, json!({"documents": [{"content": "retried"}]})).await;
    assert_eq!(status, 200, "{body}");

    let (status, body) = app
        .data_call(0, Method::GET, "/api/v1/collections/c/documents", &t.readonly, None)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["totalCount"], 1, "only the retried document was written: {body}");

    let (status, body) = app
        .data_call(
            0,
            Method::POST,
            docs,
            &t.readonly,
            Some(json!({"documents": [{"content": "x"}]})),
        )
        .await;
    assert_error(status, &body, 403, "FORBIDDEN");
    let (status, body) = app
        .data_call(
            0,
            Method::POST,
            "/api/v1/collections/missing/search",
            &t.readonly,
            Some(json!({"vector": vec![0.1; 1536]})),
        )
        .await;
    assert_error(status, &body, 404, "NOT_FOUND");
    let (status, body) = app
        .data_call(
            0,
            Method::GET,
            "/api/v1/collections/c/documents/nope",
            &t.readonly,
            None,
        )
        .await;
    assert_error(status, &body, 404, "NOT_FOUND");
    let (status, body) = app
        .data_call(
            0,
            Method::PUT,
            "/api/v1/collections/c/documents/nope",
            &t.readwrite,
            Some(json!({})),
        )
        .await;
    assert_error(status, &body, 400, "VALIDATION_ERROR");
    let (status, body) = app
        .data_call(
            0,
            Method::PUT,
            "/api/v1/collections/c/documents/nope",
            &t.readwrite,
            Some(json!({"content": "y"})),
        )
        .await;
    assert_error(status, &body, 404, "NOT_FOUND");
    let (status, body) = app
        .data_call(
            0,
            Method::POST,
            "/api/v1/collections/c/search",
            &t.readonly,
            Some(json!({"query": "x", "limit": 0})),
        )
        .await;
    assert_error(status, &body, 400, "VALIDATION_ERROR");
    let mut bad_vector = vec![json!(0.1); 1536];
    bad_vector[7] = json!("0.1");
    for (search, needle) in [
        (
            json!({"vector": bad_vector}),
            "the query vector value 7 is a string, not a number",
        ),
        (
            json!({"vector": [0.1, 0.2]}),
            "the query vector has 2 values, the project's dimension is 1536",
        ),
        (
            json!({"query": "x", "vector": vec![0.1; 1536]}),
            "send either query or vector, not both",
        ),
    ] {
        let (status, body) = app
            .data_call(
                0,
                Method::POST,
                "/api/v1/collections/c/search",
                &t.readonly,
                Some(search),
            )
            .await;
        let message = assert_error(status, &body, 400, "VALIDATION_ERROR");
        assert!(message.contains(needle), "{message}");
    }
    let (status, body) = app
        .data_call(
            0,
            Method::GET,
            "/api/v1/collections/c/documents",
            "qv_live_nosuchkey00000000_x",
            None,
        )
        .await;
    assert_error(status, &body, 401, "UNAUTHORIZED");
    let (status, body) = app.data_call(0, Method::GET, "/api/v1/models", &t.readonly, None).await;
    assert_eq!(status, 200, "{body}");
    let models = body["models"].as_array().expect("models");
    assert!(
        models
            .iter()
            .any(|m| m["name"] == "local/all-minilm-l6-v2" && m["dimension"] == 384),
        "{body}"
    );
    assert_eq!(body["default_model"], "openai/text-embedding-3-small");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_local_model_is_a_503_that_says_how_to_get_it() {
    let empty = tempfile::tempdir().expect("temp dir");
    let embed = quiver_embed::EmbedConfig {
        models_dir: empty.path().to_owned(),
        ..embed_config(None)
    };
    let app = TestApp::start_with(Backend::Sqlite, embed, quiver_embed::DEFAULT_MODEL).await;
    let t = app.tenant(384, "cosine").await;
    let (status, body) = app
        .data_call(
            0,
            Method::POST,
            "/api/v1/collections/c/documents",
            &t.readwrite,
            Some(json!({"documents": [{"content": "x"}]})),
        )
        .await;
    let message = assert_error(status, &body, 503, "SERVICE_UNAVAILABLE");
    assert!(message.contains("quiver models pull"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_model_finds_the_neuraldb_document_first() {
    quiver_tests::models::ensure_default_model().await;
    let app = TestApp::start(Backend::Sqlite).await;
    let t = app.tenant(384, "cosine").await;
    let documents = json!({"documents": [
        {"content": "The weather in Paris is sunny today"},
        {"content": "A recipe for chocolate chip cookies"},
        {"content": "NeuralDB is an AI-native database", "metadata": {"category": "technology"}},
        {"content": "PostgreSQL is a relational database"},
        {"content": "Football match results from the weekend"},
    ]});
    let (status, body) = app
        .data_call(
            0,
            Method::POST,
            "/api/v1/collections/docs/documents/batch",
            &t.readwrite,
            Some(documents),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = app
        .data_call(
            0,
            Method::POST,
            "/api/v1/collections/docs/search",
            &t.readonly,
            Some(json!({"query": "AI-native database for semantic search", "limit": 3})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["results"][0]["content"], "NeuralDB is an AI-native database",
        "{body}"
    );
    assert_eq!(body["query_embedding_model"], "local/all-minilm-l6-v2");
}

/// A request with an idempotency key whose client goes away still runs to its end and
/// stores its answer: the client's retry gets that answer, and nothing is written twice.
async fn an_abandoned_idempotent_write_is_finished_and_replayed(backend: Backend) {
    let (app, fake) = app_with_openai(backend).await;
    let t = app.tenant_named("mydb", 1536, "cosine").await;
    let docs = "/api/v1/collections/c/documents";
    let body = json!({"documents": [{"content": "written once"}]});
    let send = |timeout: Duration| {
        app.data_request(0, Method::POST, docs)
            .bearer_auth(&t.readwrite)
            .header("x-idempotency-key", "gone-away")
            .json(&body)
            .timeout(timeout)
            .send()
    };

    // The embedding takes a second; the client gives up (and closes its connection)
    // long before, while the request waits on the provider.
    fake.hold_next(Duration::from_millis(1000));
    let abandoned = send(Duration::from_millis(200)).await;
    assert!(abandoned.is_err_and(|e| e.is_timeout()), "the client gave up");

    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let (replayed, answer) = loop {
        let response = send(Duration::from_secs(30)).await.expect("answer");
        let replayed = response.headers().contains_key("idempotent-replayed");
        let (status, answer) = read(response).await;
        if status != 409 {
            assert_eq!(status, 200, "{answer}");
            break (replayed, answer);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the abandoned request never finished: {answer}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(replayed, "the retry replays the abandoned request's answer: {answer}");
    assert_eq!(answer["inserted"], 1, "{answer}");
    let (status, listed) = app.data_call(0, Method::GET, docs, &t.readonly, None).await;
    assert_eq!(status, 200, "{listed}");
    assert_eq!(listed["totalCount"], 1, "one document, written once: {listed}");
    assert_eq!(listed["documents"][0]["id"], answer["ids"][0], "{listed}");
}

/// A pod that dies after a keyed insert commits, before it stores the answer, leaves
/// the key claimed; the client's retry takes it over and runs the insert again. The
/// documents it makes get the same ids, so they are written again, not twice.
async fn an_insert_run_again_after_its_pod_died_makes_the_same_documents(backend: Backend) {
    let app = TestApp::start(backend).await;
    let t = app.tenant_named("mydb", 3, "cosine").await;
    let docs = "/api/v1/collections/c/documents";
    let body = json!({"documents": [
        {"content": "one", "embedding": [1.0, 0.0, 0.0]},
        {"content": "two", "embedding": [0.0, 1.0, 0.0]},
        {"id": "mine", "content": "three", "embedding": [0.0, 0.0, 1.0]},
    ]});
    let send = async || {
        let response = app
            .data_request(0, Method::POST, &format!("{docs}/batch"))
            .bearer_auth(&t.readwrite)
            .header("x-idempotency-key", "insert-1")
            .json(&body)
            .send()
            .await
            .expect("answer");
        let replayed = response.headers().contains_key("idempotent-replayed");
        let (status, answer) = read(response).await;
        assert_eq!(status, 200, "{answer}");
        (replayed, answer)
    };
    let (replayed, first) = send().await;
    assert!(!replayed);

    app.forget_idempotent_answers().await;
    let (replayed, again) = send().await;
    assert!(!replayed, "run again, not replayed: {again}");
    assert_eq!(again["ids"], first["ids"], "the same ids on the second run");
    let (replayed, stored) = send().await;
    assert!(replayed);
    assert_eq!(stored, again);

    let (status, listed) = app.data_call(0, Method::GET, docs, &t.readonly, None).await;
    assert_eq!(status, 200, "{listed}");
    assert_eq!(listed["totalCount"], 3, "three documents, written twice each: {listed}");
    let ids = first["ids"].as_array().expect("ids");
    assert!(ids[0].as_str() < ids[1].as_str(), "made in order: {ids:?}");

    // Another key makes other ids for the same documents.
    let (status, other) = app
        .data_call(
            0,
            Method::POST,
            &format!("{docs}/batch"),
            &t.readwrite,
            Some(body.clone()),
        )
        .await;
    assert_eq!(status, 200, "{other}");
    assert_ne!(other["ids"][0], first["ids"][0]);
    assert!(
        other["ids"][0].as_str() > ids[1].as_str(),
        "later ids sort after: {other}"
    );
}

/// An UPDATE is one write: when embedding its rows' new content fails partway, no row
/// has changed, and run again it changes them all.
async fn an_update_that_fails_partway_changes_nothing(backend: Backend) {
    let (app, fake) = app_with_openai(backend).await;
    let t = app.tenant_named("mydb", 1536, "cosine").await;
    for batch in 0..2 {
        let documents: Vec<Value> = (0..750)
            .map(|i| json!({"content": format!("document {batch}-{i}")}))
            .collect();
        insert_batch(&app, &t.readwrite, documents).await;
    }
    let query = async |key: &str, statement: &str| {
        app.data_call(0, Method::POST, "/api/v1/query", key, Some(json!({"query": statement})))
            .await
    };
    let edited = "SELECT COUNT(*) FROM documents WHERE content LIKE '%(edited)'";
    let update = "UPDATE documents SET content = content || ' (edited)'";

    // 1,500 new contents to embed take six calls of 256; the fifth and all after fail.
    fake.fail_after(4);
    let (status, body) = query(&t.readwrite, update).await;
    assert_error(status, &body, 502, "UPSTREAM_ERROR");
    fake.heal();
    let (status, body) = query(&t.readonly, edited).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["rows"], json!([{"count": 0}]), "no row changed");

    let (status, body) = query(&t.readwrite, update).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["rowCount"], 1500, "{body}");
    let (_, body) = query(&t.readonly, edited).await;
    assert_eq!(body["rows"], json!([{"count": 1500}]));
}

/// An UPDATE whose rows another client changes or deletes between its read and its
/// write runs again from the rows as they now are: a deleted row is not written back,
/// and the other client's change is not lost.
async fn an_update_reads_again_rows_changed_while_it_ran(backend: Backend) {
    let (app, fake) = app_with_openai(backend).await;
    let t = app.tenant_named("mydb", 1536, "cosine").await;
    insert_batch(
        &app,
        &t.readwrite,
        vec![
            json!({"id": "a", "content": "first", "metadata": {"n": 1}}),
            json!({"id": "b", "content": "second"}),
            json!({"id": "c", "content": "third"}),
        ],
    )
    .await;
    let before = fake.calls();
    // The UPDATE reads the three rows, then waits on the provider for their new
    // embeddings while the other client writes.
    fake.hold_next(Duration::from_millis(1500));
    let update = app
        .data_request(0, Method::POST, "/api/v1/query")
        .bearer_auth(&t.readwrite)
        .json(&json!({"query": "UPDATE documents SET content = content || ' (edited)'"}))
        .send();
    let meanwhile = async {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while fake.calls() == before {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the UPDATE never asked for embeddings"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let docs = "/api/v1/collections/documents/documents";
        let (status, body) = app
            .data_call(0, Method::DELETE, &format!("{docs}/b"), &t.readwrite, None)
            .await;
        assert_eq!(status, 200, "{body}");
        let (status, body) = app
            .data_call(
                0,
                Method::PUT,
                &format!("{docs}/a"),
                &t.readwrite,
                Some(json!({"metadata": {"n": 2}})),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    };
    let (response, ()) = tokio::join!(update, meanwhile);
    let (status, body) = read(response.expect("answer")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["rowCount"], 2, "a and c: {body}");
    assert_eq!(fake.calls(), before + 2, "the new contents were embedded again, once");

    let (status, body) = app
        .data_call(
            0,
            Method::POST,
            "/api/v1/query",
            &t.readonly,
            Some(json!({"query": "SELECT id, content, metadata FROM documents ORDER BY id"})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["rows"],
        json!([
            {"id": "a", "content": "first (edited)", "metadata": {"n": 2}},
            {"id": "c", "content": "third (edited)", "metadata": {}},
        ]),
        "b stays deleted and a keeps the other client's metadata"
    );
}

/// A re-embedding (`regenerate_embedding`) whose document another client gives new
/// text while it is embedded embeds the new text: the vector written is never of a
/// text the document no longer has.
async fn a_reembedding_whose_text_changed_meanwhile_embeds_the_new_text(backend: Backend) {
    let (app, fake) = app_with_openai(backend).await;
    let t = app.tenant_named("mydb", 1536, "cosine").await;
    insert_batch(&app, &t.readwrite, vec![json!({"id": "a", "content": "first words"})]).await;
    let docs = "/api/v1/collections/documents/documents";
    let before = fake.calls();
    fake.hold_next(Duration::from_millis(1500));
    let regenerate = app
        .data_request(0, Method::PUT, &format!("{docs}/a"))
        .bearer_auth(&t.readwrite)
        .json(&json!({"regenerate_embedding": true}))
        .send();
    let meanwhile = async {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while fake.calls() == before {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the update never asked for an embedding"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let (status, body) = app
            .data_call(
                0,
                Method::PUT,
                &format!("{docs}/a"),
                &t.readwrite,
                Some(json!({"content": "second thoughts"})),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    };
    let (response, ()) = tokio::join!(regenerate, meanwhile);
    let (status, body) = read(response.expect("answer")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(fake.calls(), before + 2, "the old text, then the new one");

    let (status, body) = app
        .data_call(
            0,
            Method::POST,
            "/v1/vectors/query",
            &t.readonly,
            Some(json!({"namespace": "documents", "id": "a"})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let stored: Vec<f32> = serde_json::from_value(body["values"].clone()).expect("values");
    let expected = quiver_tests::fake_openai::embedding("second thoughts", 1536);
    assert_eq!(stored.len(), expected.len());
    let off = stored
        .iter()
        .zip(&expected)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    assert!(off < 1e-6, "the vector is of the new text (off by {off})");
}

/// A collection keeps the model that first embedded its text: the page's update and
/// batch (which name no model) embed with it on a deployment whose default is another
/// model, a text search without a model is embedded with it, and naming another model
/// is refused rather than mixing two models' vectors.
async fn a_collection_keeps_the_model_that_embedded_it(backend: Backend) {
    let fake = FakeOpenAi::start().await;
    // The default is the local model, of another dimension than the project's.
    let app = TestApp::start_with(
        backend,
        embed_config(Some(fake.base_url.clone())),
        quiver_embed::DEFAULT_MODEL,
    )
    .await;
    let t = app.tenant_named("mydb", 1536, "cosine").await;
    let docs = "/api/v1/collections/my_docs/documents";
    let (status, inserted) = call(&app, Method::POST, docs, &t.readwrite, Some(INSERT)).await;
    assert_eq!(status, 200, "{inserted}");
    let id = inserted["ids"][0].as_str().expect("an id").to_owned();
    let (status, body) = call(&app, Method::PUT, &format!("{docs}/{id}"), &t.readwrite, Some(UPDATE)).await;
    assert_eq!(status, 200, "the update re-embeds with the collection's model: {body}");
    let (status, body) = call(&app, Method::POST, &format!("{docs}/batch"), &t.readwrite, Some(BATCH)).await;
    assert_eq!(status, 200, "the batch embeds with the collection's model: {body}");
    let (status, body) = call(
        &app,
        Method::POST,
        "/api/v1/collections/my_docs/search",
        &t.readonly,
        Some(r#"{"query": "AI-native database", "limit": 3}"#),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["query_embedding_model"], "openai/text-embedding-3-small");
    assert_eq!(body["results"].as_array().map(Vec::len), Some(3), "{body}");

    // NQL embeds with the collection's model too (the default's 384 dimensions would
    // be refused here).
    for statement in [
        json!({"query": "UPDATE my_docs SET content = 'rewritten' WHERE id = $1", "params": [id]}),
        json!({"query": "INSERT INTO my_docs (content) VALUES ('written by NQL')"}),
        // Content set NULL keeps the embedding; nothing to embed.
        json!({"query": "UPDATE my_docs SET content = NULL WHERE id = $1", "params": [id]}),
    ] {
        let (status, body) = app
            .data_call(0, Method::POST, "/api/v1/query", &t.readwrite, Some(statement.clone()))
            .await;
        assert_eq!((status, &body["rowCount"]), (200, &json!(1)), "{statement}: {body}");
    }

    let (status, body) = call(&app, Method::GET, &format!("{docs}/{id}"), &t.readonly, None).await;
    assert_eq!((status, &body["content"]), (200, &Value::Null), "{body}");
    assert_eq!(body["embedding"].as_array().map(Vec::len), Some(1536));

    let other_model = r#"{"documents": [{"content": "more"}], "embedding_model": "openai/text-embedding-ada-002"}"#;
    let (status, body) = call(&app, Method::POST, docs, &t.readwrite, Some(other_model)).await;
    let message = assert_error(status, &body, 400, "VALIDATION_ERROR");
    assert!(
        message.contains("embedded with openai/text-embedding-3-small"),
        "{message}"
    );
    let (status, body) = call(
        &app,
        Method::POST,
        "/api/v1/collections/my_docs/search",
        &t.readonly,
        Some(r#"{"query": "database", "embedding_model": "openai/text-embedding-ada-002"}"#),
    )
    .await;
    assert_error(status, &body, 400, "VALIDATION_ERROR");

    // Documents carrying their embeddings fix no model; the first text embedded does.
    let given = json!({"documents": [{"content": "given", "embedding": vec![0.5f32; 1536]}],
                       "embedding_model": "openai/text-embedding-ada-002"});
    let (status, body) = app
        .data_call(
            0,
            Method::POST,
            "/api/v1/collections/other/documents",
            &t.readwrite,
            Some(given),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = call(
        &app,
        Method::POST,
        "/api/v1/collections/other/documents",
        &t.readwrite,
        Some(other_model),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (_, body) = call(
        &app,
        Method::POST,
        "/api/v1/collections/other/search",
        &t.readonly,
        Some(r#"{"query": "more"}"#),
    )
    .await;
    assert_eq!(body["query_embedding_model"], "openai/text-embedding-ada-002", "{body}");
}

// Rate limits and the records store's outages on the document and query routes: the
// page's 429 `RATE_LIMITED` and 503 `DATABASE_UNAVAILABLE`, and its `X-RateLimit-*`
// headers, as docs/rate-limits.md and docs/vector-api.md define them.

/// Starter's quotas (docs/rate-limits.md): queries and documents a minute.
const STARTER_QUERIES: u64 = 30;
const STARTER_DOCUMENTS: u64 = 100;

/// A Starter project of dimension 4 (`TestApp::project`): its id, and a read-write
/// and a read-only key.
async fn starter(app: &TestApp) -> (quiver_common::domain::ProjectId, String, String) {
    let session = app.signup().await;
    let project = app.project(&session).await;
    let (readwrite, _) = app.key(&session, &project, "app_readwrite").await;
    let (readonly, _) = app.key(&session, &project, "app_readonly").await;
    (project.parse().expect("a project id"), readwrite, readonly)
}

fn epoch_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}

/// A response with its rate-limit headers read as numbers, and the epoch second (rounded
/// down) just before it was sent and just after it came back.
struct Limited {
    status: u16,
    body: Value,
    limit: Option<u64>,
    remaining: Option<u64>,
    reset: Option<u64>,
    retry_after: Option<u64>,
    sent: u64,
    answered: u64,
}

impl Limited {
    /// Asserts the headers of a budget of `quota` a minute and returns what is left:
    /// the limit is the plan's, and the reset is the epoch second when the units it
    /// misses (limit less remaining, a unit partly back counting as missing) are back,
    /// one every `60 / quota` seconds.
    fn budget(&self, quota: u64) -> u64 {
        let context = format!("{} {}", self.status, self.body);
        assert_eq!(self.limit, Some(quota), "X-RateLimit-Limit: {context}");
        let remaining = self.remaining.expect("X-RateLimit-Remaining");
        assert!(remaining <= quota, "X-RateLimit-Remaining {remaining}: {context}");
        let reset = self.reset.expect("X-RateLimit-Reset") as f64;
        let (missing, interval) = ((quota - remaining) as f64, 60.0 / quota as f64);
        let earliest = self.sent as f64 + (missing - 1.0).max(0.0) * interval;
        // The server's clock read the reset before `answered + 1`, and rounded it up.
        let latest = (self.answered as f64 + 1.0 + missing * interval).ceil();
        assert!(
            (earliest..=latest).contains(&reset),
            "X-RateLimit-Reset {reset} is not when {missing} units are back ({earliest}..={latest}): {context}"
        );
        remaining
    }

    /// Asserts a refusal of `n` units of a budget of `quota` `noun` a minute: a 429
    /// `RATE_LIMITED` in the envelope whose `Retry-After` is when the `n` units will be
    /// there, as its message says, and headers that say what is left. Returns what is left.
    fn refused(&self, quota: u64, noun: &str, n: u64) -> u64 {
        let message = assert_error(self.status, &self.body, 429, "RATE_LIMITED");
        let retry = self.retry_after.expect("Retry-After");
        assert_eq!(
            message,
            format!("rate limit reached: the plan allows {quota} {noun} a minute; retry in {retry} s")
        );
        let remaining = self.budget(quota);
        assert!(remaining < n, "{n} units were refused with {remaining} left");
        // The units still missing come back one every 60 / quota seconds; the one partly
        // back may be all but there.
        let interval = 60.0 / quota as f64;
        let missing = (n - remaining) as f64;
        let (earliest, latest) = (((missing - 1.0) * interval).floor(), (missing * interval).ceil());
        assert!(
            (earliest.max(1.0)..=latest.max(1.0)).contains(&(retry as f64)),
            "Retry-After {retry} for {missing} missing units ({earliest}..={latest})"
        );
        remaining
    }
}

async fn limited(app: &TestApp, method: Method, path: &str, key: &str, body: Option<Value>) -> Limited {
    let mut request = app.data_request(0, method, path).bearer_auth(key);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let sent = epoch_secs();
    let response = request.send().await.expect("answer");
    let answered = epoch_secs();
    let header = |name: &str| {
        response.headers().get(name).map(|v| {
            v.to_str()
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{name}: {v:?} is not a number"))
        })
    };
    let (limit, remaining, reset, retry_after) = (
        header("x-ratelimit-limit"),
        header("x-ratelimit-remaining"),
        header("x-ratelimit-reset"),
        header("retry-after"),
    );
    let (status, body) = read(response).await;
    Limited {
        status,
        body,
        limit,
        remaining,
        reset,
        retry_after,
        sent,
        answered,
    }
}

/// Sends `request(0)`, `request(1)`, … until one is a 429 (at most `at_most`), and
/// returns how many were admitted before it and the refusal. For requests of one unit
/// on a spent budget: units come back as time passes (one every 0.6 s or 2 s on
/// Starter), so a slow machine may have one or two admitted first.
async fn until_refused<F, R>(at_most: usize, mut request: F) -> (usize, Limited)
where
    F: FnMut(usize) -> R,
    R: std::future::Future<Output = Limited>,
{
    for i in 0..at_most {
        let answer = request(i).await;
        if answer.status == 429 {
            return (i, answer);
        }
        assert_eq!(answer.status, 200, "request {i}: {}", answer.body);
    }
    panic!("{at_most} requests and none was refused");
}

/// A document of the 4-dimensional Starter project.
fn doc(id: &str, i: usize) -> Value {
    json!({"id": id, "content": format!("text {i}"), "embedding": [1.0, 0.5, 0.25, i as f64 + 1.0]})
}

fn docs(prefix: &str, range: std::ops::Range<usize>) -> Value {
    let documents: Vec<Value> = range.map(|i| doc(&format!("{prefix}{i}"), i)).collect();
    json!({"documents": documents})
}

/// Document writes spend the documents budget, one a document: each route the page
/// lists for writing (insert, batch, PUT, DELETE) is refused with the page's 429 once
/// the budget is spent, with `Retry-After` and headers that say what is left, and a
/// refused write writes nothing.
async fn document_writes_past_the_documents_budget_are_429s_that_write_nothing(app: TestApp) {
    let (_, key, _) = starter(&app).await;
    let collection = "/api/v1/collections/c/documents";
    let batch = "/api/v1/collections/c/documents/batch";
    let post = async |path: &str, body: Value| limited(&app, Method::POST, path, &key, Some(body)).await;

    // A batch larger than a whole minute's quota can never pass, says so, and takes nothing.
    let too_big = post(batch, docs("x", 0..101)).await;
    let message = assert_error(too_big.status, &too_big.body, 429, "RATE_LIMITED");
    assert_eq!(
        message,
        "this request needs 101 documents and the plan allows 100 a minute: split it into smaller requests"
    );
    assert_eq!(too_big.retry_after, Some(60));
    assert_eq!(too_big.budget(STARTER_DOCUMENTS), 100, "it took nothing");

    let first = post(collection, docs("a", 0..60)).await;
    assert_eq!(
        (first.status, &first.body["inserted"]),
        (200, &json!(60)),
        "{}",
        first.body
    );
    assert_eq!(first.budget(STARTER_DOCUMENTS), 40, "60 of 100 spent");

    // 80 documents with 40 left: refused whole, and it takes nothing.
    let refused = post(batch, docs("b", 0..80)).await;
    let left = refused.refused(STARTER_DOCUMENTS, "documents", 80);
    assert!(left >= 40, "the refused batch took nothing, {left} left");
    assert!(
        refused.reset.expect("reset").abs_diff(first.reset.expect("reset")) <= 1,
        "the budget is full again when it was before the refusal: {:?} then {:?}",
        first.reset,
        refused.reset
    );
    let rest = post(batch, docs("c", 0..left as usize)).await;
    assert_eq!(rest.status, 200, "what was left passes whole: {}", rest.body);
    assert_eq!(rest.body["inserted"], left);
    rest.budget(STARTER_DOCUMENTS);

    // The budget spent, one more document is refused, on the insert route too.
    let (singles, refused) = until_refused(10, |i| post(collection, docs("s", i..i + 1))).await;
    assert_eq!(refused.refused(STARTER_DOCUMENTS, "documents", 1), 0);
    assert_eq!(refused.retry_after, Some(1), "a document comes back every 0.6 s");
    let send = async |method: Method, path: String, body: Option<Value>| limited(&app, method, &path, &key, body).await;
    let (edits, refused) = until_refused(10, |i| {
        send(
            Method::PUT,
            format!("{collection}/a0"),
            Some(json!({"content": format!("edit {i}")})),
        )
    })
    .await;
    assert_eq!(refused.refused(STARTER_DOCUMENTS, "documents", 1), 0);
    let (deletes, refused) =
        until_refused(10, |i| send(Method::DELETE, format!("{collection}/a{}", i + 1), None)).await;
    assert_eq!(refused.refused(STARTER_DOCUMENTS, "documents", 1), 0);

    // Nothing refused was written (reads spend the queries budget, not this one).
    let get = async |id: String| limited(&app, Method::GET, &format!("{collection}/{id}"), &key, None).await;
    for id in ["x0".to_owned(), "b0".to_owned(), format!("s{singles}")] {
        let answer = get(id.clone()).await;
        assert_error(answer.status, &answer.body, 404, "NOT_FOUND");
    }
    let a0 = get("a0".into()).await;
    let content = match edits {
        0 => "text 0".to_owned(),
        n => format!("edit {}", n - 1),
    };
    assert_eq!((a0.status, &a0.body["content"]), (200, &json!(content)), "{}", a0.body);
    let kept = get(format!("a{}", deletes + 1)).await;
    assert_eq!(kept.status, 200, "the refused delete deleted nothing: {}", kept.body);
    let listed = limited(&app, Method::GET, collection, &key, None).await;
    assert_eq!(listed.status, 200, "{}", listed.body);
    assert_eq!(
        listed.body["totalCount"],
        60 + left as usize + singles - deletes,
        "{}",
        listed.body
    );
}

fn took_one_query(answer: Limited, left: &mut u64, what: &str) -> Limited {
    *left -= 1;
    assert_eq!(
        answer.budget(STARTER_QUERIES),
        *left,
        "{what} took one query: {}",
        answer.body
    );
    answer
}

/// Reads spend the queries budget, one a request: the search, a document's GET, the
/// list and an NQL statement each say where it stands on their 200s and 404s, a request
/// refused before it counts (a 400, a 403) shows it untouched, and once it is spent each
/// is the page's 429; an NQL write refused so writes nothing.
async fn document_reads_and_statements_past_the_queries_budget_are_429s(app: TestApp) {
    let (project, key, readonly) = starter(&app).await;
    let collection = "/api/v1/collections/c/documents";
    let first = limited(&app, Method::POST, collection, &key, Some(docs("d", 0..1))).await;
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(
        first.budget(STARTER_DOCUMENTS),
        99,
        "a write spends the documents budget"
    );

    let search = async || {
        let body = json!({"vector": [1.0, 0.5, 0.25, 1.0], "limit": 1});
        limited(&app, Method::POST, "/api/v1/collections/c/search", &key, Some(body)).await
    };
    let get = async |id: &str| limited(&app, Method::GET, &format!("{collection}/{id}"), &key, None).await;
    let list = async || limited(&app, Method::GET, collection, &key, None).await;
    let nql = async |query: String| {
        let body = json!({"query": query, "params": [[1.0, 0.5, 0.25, 1.0]]});
        limited(&app, Method::POST, "/api/v1/query", &key, Some(body)).await
    };
    let count = || "SELECT COUNT(*) FROM c".to_owned();
    let insert = |i: usize| format!("INSERT INTO c (id, content, embedding) VALUES ('q{i}', 'by NQL', $1)");

    // Before anything is spent the query budget is full, and a 403 or a 400 (refused
    // before they count) shows it so: the budget of queries, even on a write route.
    let forbidden = limited(&app, Method::POST, collection, &readonly, Some(docs("ro", 0..1))).await;
    assert_error(forbidden.status, &forbidden.body, 403, "FORBIDDEN");
    assert_eq!(
        forbidden.budget(STARTER_QUERIES),
        30,
        "a 403 spends nothing, and shows the query budget"
    );
    // A key that is no key is refused before it names a budget, and spends nothing.
    let unauthorized = limited(&app, Method::GET, collection, "qv_live_nosuchkey00000000_x", None).await;
    assert_error(unauthorized.status, &unauthorized.body, 401, "UNAUTHORIZED");
    let bad = limited(
        &app,
        Method::POST,
        collection,
        &key,
        Some(json!({"documents": [{"id": "bad", "content": "x", "embedding": [1.0, 2.0]}]})),
    )
    .await;
    assert_error(bad.status, &bad.body, 400, "VALIDATION_ERROR");
    assert_eq!(
        bad.budget(STARTER_QUERIES),
        30,
        "a 400 spends nothing, and shows the query budget"
    );

    // Each counted request takes one query: what is left goes down one at a time (a
    // query comes back only every 2 s).
    let mut left = STARTER_QUERIES;
    let mut spend = |answer: Limited, what: &str| took_one_query(answer, &mut left, what);
    let found = spend(search().await, "a search");
    assert_eq!(
        (found.status, &found.body["results"][0]["id"]),
        (200, &json!("d0")),
        "{}",
        found.body
    );
    let fetched = spend(get("d0").await, "a GET");
    assert_eq!(
        (fetched.status, &fetched.body["content"]),
        (200, &json!("text 0")),
        "{}",
        fetched.body
    );
    let missing = spend(get("nope").await, "a GET of no document");
    assert_error(missing.status, &missing.body, 404, "NOT_FOUND");
    let listed = spend(list().await, "a list");
    assert_eq!(
        (listed.status, &listed.body["totalCount"]),
        (200, &json!(1)),
        "{}",
        listed.body
    );
    let counted = spend(nql(count()).await, "a SELECT");
    assert_eq!(
        (counted.status, &counted.body["rows"]),
        (200, &json!([{"count": 1}])),
        "{}",
        counted.body
    );
    // An INSERT spends a query and a document; its headers give one of the two budgets.
    let inserted = nql(insert(100)).await;
    assert_eq!(
        (inserted.status, &inserted.body["rowCount"]),
        (200, &json!(1)),
        "{}",
        inserted.body
    );
    left -= 1;
    match inserted.limit {
        Some(STARTER_DOCUMENTS) => assert_eq!(inserted.budget(STARTER_DOCUMENTS), 98, "d0 and q100"),
        _ => assert_eq!(inserted.budget(STARTER_QUERIES), left),
    }
    while left > 0 {
        let answer = took_one_query(search().await, &mut left, "a search");
        assert_eq!(answer.status, 200, "{}", answer.body);
    }

    // Spent: every route is refused, a query at a time, until one comes back in 2 s.
    let (_, refused) = until_refused(5, |_| search()).await;
    assert_eq!(refused.refused(STARTER_QUERIES, "queries", 1), 0);
    assert!((1..=2).contains(&refused.retry_after.expect("Retry-After")));
    let (_, refused) = until_refused(5, |_| get("d0")).await;
    assert_eq!(refused.refused(STARTER_QUERIES, "queries", 1), 0);
    let (_, refused) = until_refused(5, |_| list()).await;
    assert_eq!(refused.refused(STARTER_QUERIES, "queries", 1), 0);
    let (_, refused) = until_refused(5, |_| nql(count())).await;
    assert_eq!(refused.refused(STARTER_QUERIES, "queries", 1), 0);
    let (admitted, refused) = until_refused(5, |i| nql(insert(i))).await;
    assert_eq!(refused.refused(STARTER_QUERIES, "queries", 1), 0);

    // The refused INSERT wrote nothing (read past the API: its budget is spent).
    let ids: Vec<String> = (0..=admitted).map(|i| format!("q{i}")).collect();
    let written: Vec<String> = app
        .store
        .fetch(project, "c", &ids)
        .await
        .expect("fetch")
        .into_iter()
        .map(|record| record.id)
        .collect();
    assert_eq!(written, ids[..admitted], "only the admitted INSERTs wrote");
}

/// With every connection to the records store gone, the document and query APIs
/// refuse writes with the page's 503 `DATABASE_UNAVAILABLE` in the envelope and write
/// nothing, not even to the index in memory; reads that need the records store (a
/// document, a page of them, a search's contents, an NQL statement's rows) are 503s
/// too, while the vector API's search keeps answering from memory
/// (docs/vector-api.md, docs/operations.md).
async fn with_the_records_store_gone_document_and_query_writes_are_503_and_write_nothing(app: TestApp) {
    let t = app.tenant(4, "cosine").await;
    let collection = "/api/v1/collections/c/documents";
    let documents = json!({"documents": [
        {"id": "a", "content": "first", "embedding": [1.0, 0.0, 0.0, 0.0]},
        {"id": "b", "content": "second", "embedding": [0.0, 1.0, 0.0, 0.0]},
    ]});
    let (status, body) = app
        .data_call(0, Method::POST, collection, &t.readwrite, Some(documents))
        .await;
    assert_eq!((status, &body["inserted"]), (200, &json!(2)), "{body}");
    // The index is loaded and both keys are checked before the store goes.
    let search = json!({"vector": [1.0, 0.0, 0.0, 0.0], "limit": 1});
    let (status, body) = app
        .data_call(
            0,
            Method::POST,
            "/api/v1/collections/c/search",
            &t.readonly,
            Some(search.clone()),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (&body["results"][0]["id"], &body["results"][0]["content"]),
        (&json!("a"), &json!("first")),
        "{body}"
    );
    let nearest = async |vector: [f64; 4]| {
        let search = json!({"namespace": "c", "vector": vector, "top_k": 3});
        let (status, body) = app
            .data_call(0, Method::POST, "/v1/vectors/search", &t.readwrite, Some(search))
            .await;
        assert_eq!(status, 200, "{body}");
        body["matches"]
            .as_array()
            .expect("matches")
            .iter()
            .map(|m| m["id"].as_str().expect("an id").to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(nearest([1.0, 0.0, 0.0, 0.0]).await, ["a", "b"]);

    app.store.close().await;

    // A 503 is an authenticated response too: it gives the state of a budget of the
    // project's plan (Business Plus: 10,000 queries, 50,000 documents a minute).
    let unavailable = |answer: Limited, what: &str| {
        let message = assert_error(answer.status, &answer.body, 503, "DATABASE_UNAVAILABLE");
        assert!(
            !message.contains("sqlite") && !message.contains("postgres"),
            "{what}: the message names no backend: {message}"
        );
        let quota = answer.limit.expect("X-RateLimit-Limit");
        assert!([10_000, 50_000].contains(&quota), "{what}: X-RateLimit-Limit {quota}");
        answer.budget(quota);
    };
    let new = json!({"documents": [{"id": "new", "content": "third", "embedding": [0.0, 0.0, 1.0, 0.0]}]});
    let insert = json!({"query": "INSERT INTO c (id, content, embedding) VALUES ('new', 'third', $1)",
        "params": [[0.0, 0.0, 1.0, 0.0]]});
    let writes = [
        (Method::POST, collection.to_owned(), Some(new.clone())),
        (Method::POST, format!("{collection}/batch"), Some(new)),
        (
            Method::PUT,
            format!("{collection}/a"),
            Some(json!({"content": "changed", "embedding": [0.0, 0.0, 1.0, 0.0]})),
        ),
        (Method::DELETE, format!("{collection}/b"), None),
        (Method::POST, "/api/v1/query".to_owned(), Some(insert)),
        (
            Method::POST,
            "/api/v1/query".to_owned(),
            Some(json!({"query": "DELETE FROM c WHERE id = 'b'"})),
        ),
    ];
    for (method, path, body) in writes {
        let what = format!("{method} {path}");
        unavailable(limited(&app, method, &path, &t.readwrite, body).await, &what);
    }
    let reads = [
        (Method::GET, format!("{collection}/a"), None),
        (Method::GET, collection.to_owned(), None),
        (Method::POST, "/api/v1/collections/c/search".to_owned(), Some(search)),
        (
            Method::POST,
            "/api/v1/query".to_owned(),
            Some(json!({"query": "SELECT id FROM c"})),
        ),
    ];
    for (method, path, body) in reads {
        let what = format!("{method} {path}");
        unavailable(limited(&app, method, &path, &t.readonly, body).await, &what);
    }

    // The index in memory took none of the refused writes: "new" is not there, "a"
    // kept its vector and "b" was not deleted.
    assert_eq!(nearest([1.0, 0.0, 0.0, 0.0]).await, ["a", "b"]);
    assert_eq!(nearest([0.0, 1.0, 0.0, 0.0]).await, ["b", "a"]);
}

crate::support::on_both_backends!(
    document_writes_past_the_documents_budget_are_429s_that_write_nothing,
    document_reads_and_statements_past_the_queries_budget_are_429s,
    with_the_records_store_gone_document_and_query_writes_are_503_and_write_nothing,
);

/// The budgets of a cluster pod (leased from Redis) answer as standalone's do.
mod cluster {
    crate::support::on_a_cluster_pod!(
        document_writes_past_the_documents_budget_are_429s_that_write_nothing,
        document_reads_and_statements_past_the_queries_budget_are_429s,
    );
}

macro_rules! both {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                use quiver_tests::app::Backend;

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    super::$name(Backend::Sqlite).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    super::$name(Backend::Postgres).await;
                }
            }
        )*
    };
}

both!(
    document_requests_of_the_page_work_as_written,
    query_requests_of_the_page_work_as_written,
    nql_pages_with_offsets_and_cursors,
    nql_statements_read_and_write_through_http,
    bad_documents_are_refused_and_nothing_is_written,
    a_statement_past_its_timeout_is_cancelled,
    a_write_under_way_runs_past_the_statement_timeout_and_is_answered,
    an_abandoned_idempotent_write_is_finished_and_replayed,
    an_update_that_fails_partway_changes_nothing,
    an_update_reads_again_rows_changed_while_it_ran,
    a_reembedding_whose_text_changed_meanwhile_embeds_the_new_text,
    an_insert_run_again_after_its_pod_died_makes_the_same_documents,
    a_collection_keeps_the_model_that_embedded_it,
);

/// An NQL index search (`ORDER BY embedding <=> $1 LIMIT k`) reads whole records, a
/// page at a time, within a statement's byte budget; matches of large documents past
/// it are answered by the exact scan, which keeps only the columns selected, not by
/// gigabytes held by the pod.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_nql_index_search_past_the_statement_budget_is_answered_by_a_scan() {
    let app = TestApp::start(Backend::Sqlite).await;
    let t = mydb(&app).await;
    let content = "x".repeat(250 * 1024);
    for batch in 0..3 {
        let documents: Vec<Value> = (0..100)
            .map(|i| json!({"id": format!("big-{batch}-{i:02}"), "content": content, "embedding": [1.0, 0.5, (batch * 100 + i) as f32 / 300.0]}))
            .collect();
        let (status, body) = app
            .data_call(
                0,
                Method::POST,
                "/api/v1/collections/documents/documents",
                &t.readwrite,
                Some(json!({"documents": documents})),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }
    // 200 whole records (50 MiB) fit the budget; 300 (75 MiB) do not, and the scan
    // answers the same way the index would.
    for limit in [200, 300] {
        let search = json!({
            "query": format!("SELECT id FROM documents ORDER BY embedding <=> $1 LIMIT {limit}"),
            "params": [[1.0, 0.5, 0.0]],
        });
        let (status, body) = app
            .data_call(0, Method::POST, "/api/v1/query", &t.readonly, Some(search))
            .await;
        assert_eq!((status, body["rowCount"].as_u64()), (200, Some(limit)), "{body}");
        assert_eq!(body["rows"][0]["id"], "big-0-00", "the nearest first");
    }
}

/// A text that several rows are given at once is embedded once: an NQL `UPDATE … SET
/// content = $1` over many documents asks the model for one embedding, and every row
/// gets it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_text_given_to_many_rows_at_once_is_embedded_once() {
    let (app, fake) = app_with_openai(Backend::Sqlite).await;
    let t = app.tenant_named("mydb", 1536, "cosine").await;
    let documents: Vec<Value> = (0..50)
        .map(|i| json!({"id": format!("d{i}"), "content": format!("draft {i}")}))
        .collect();
    insert_batch(&app, &t.readwrite, documents).await;
    let before = fake.inputs();
    let body =
        json!({"query": "UPDATE documents SET content = $1", "params": ["a vector database for semantic search"]});
    let (status, body) = app
        .data_call(0, Method::POST, "/api/v1/query", &t.readwrite, Some(body))
        .await;
    assert_eq!((status, body["rowCount"].as_u64()), (200, Some(50)), "{body}");
    assert_eq!(fake.inputs() - before, 1, "one text, embedded once");
    // Every row has the embedding of its new text.
    let search = json!({"query": "a vector database for semantic search", "limit": 50});
    let (status, body) = app
        .data_call(
            0,
            Method::POST,
            "/api/v1/collections/documents/search",
            &t.readonly,
            Some(search),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let results = body["results"].as_array().expect("results");
    assert_eq!(results.len(), 50, "{body}");
    assert!(
        results
            .iter()
            .all(|r| r["similarity"].as_f64().is_some_and(|s| s > 0.999)),
        "{body}"
    );
}
