//! The vector API: every curl of `shared/seeds/vector-api-reference.txt` verbatim,
//! every refusal, idempotency, filters, and recall against brute force.

use reqwest::Method;
use serde_json::{Value, json};

use crate::support::{assert_error, on_both_backends};
use quiver_tests::app::{Backend, Tenant, TestApp, read};

on_both_backends!(
    every_request_of_the_page_works_as_written,
    bad_vectors_are_refused_naming_the_vector_and_nothing_is_written,
    bad_searches_and_unknown_namespaces_are_4xx,
    idempotency_keys_replay_refuse_reuse_and_are_released_by_a_failure,
    idempotent_updates_and_deletes_replay_their_first_answer,
    ids_metadata_top_k_and_batches_at_their_limits_are_accepted_and_one_past_refused,
    filters_narrow_searches_and_deletes,
    scopes_and_tenancy_hold_on_every_route,
    ids_are_listed_with_a_cursor_and_fetched_in_bulk,
    vectors_sent_as_base64_are_the_vectors_their_bytes_hold,
    a_search_by_id_searches_with_the_stored_vector,
    a_search_gives_the_values_as_written,
    expired_idempotency_keys_are_deleted_in_the_background,
    with_the_records_store_gone_reads_serve_from_memory_and_writes_are_503,
);

/// Sends a request the way the page's curl does: the body's bytes as they are, as
/// JSON, with these headers.
async fn curl(
    app: &TestApp,
    method: Method,
    path: &str,
    key: &str,
    extra: &[(&str, &str)],
    body: impl Into<reqwest::Body>,
) -> (u16, Value, reqwest::header::HeaderMap) {
    let mut request = app
        .data_request(0, method, path)
        .header("Content-Type", "application/json")
        .header("x-api-key", key);
    for (name, value) in extra {
        request = request.header(*name, *value);
    }
    answer(request.body(body).send().await.expect("answer")).await
}

/// Status, JSON body and headers of a response.
async fn answer(response: reqwest::Response) -> (u16, Value, reqwest::header::HeaderMap) {
    let headers = response.headers().clone();
    let (status, body) = read(response).await;
    (status, body, headers)
}

/// The vector routes of one pod, called with one key. Each call sends its body as
/// JSON and answers the status and the JSON body.
struct VectorApi<'a> {
    app: &'a TestApp,
    pod: usize,
    key: &'a str,
}

impl<'a> VectorApi<'a> {
    /// Pod 0's routes, with `key`.
    fn new(app: &'a TestApp, key: &'a str) -> Self {
        Self::on_pod(app, 0, key)
    }

    fn on_pod(app: &'a TestApp, pod: usize, key: &'a str) -> Self {
        Self { app, pod, key }
    }

    async fn send(&self, method: Method, path: &str, body: Value) -> (u16, Value) {
        self.app.data_call(self.pod, method, path, self.key, Some(body)).await
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.app.data_call(self.pod, Method::GET, path, self.key, None).await
    }

    async fn upsert(&self, body: Value) -> (u16, Value) {
        self.send(Method::POST, "/v1/vectors/upsert", body).await
    }

    async fn search(&self, body: Value) -> (u16, Value) {
        self.send(Method::POST, "/v1/vectors/search", body).await
    }

    async fn query(&self, body: Value) -> (u16, Value) {
        self.send(Method::POST, "/v1/vectors/query", body).await
    }

    async fn update(&self, body: Value) -> (u16, Value) {
        self.send(Method::POST, "/v1/vectors/update", body).await
    }

    async fn delete(&self, body: Value) -> (u16, Value) {
        self.send(Method::DELETE, "/v1/vectors/delete", body).await
    }
}

const UPSERT: &str = r#"{
    "namespace": "products",
    "vectors": [
      {
        "id": "sku-1",
        "values": [0.11, 0.22, 0.33, 0.44],
        "metadata": {
          "name": "Widget A",
          "category": "hardware"
        }
      },
      {
        "id": "sku-2",
        "values": [0.55, 0.66, 0.77, 0.88],
        "metadata": {
          "name": "Widget B",
          "category": "software"
        }
      }
    ]
  }"#;

async fn every_request_of_the_page_works_as_written(app: TestApp) {
    let Tenant { readwrite: key, .. } = app.tenant(4, "cosine").await;
    let batch_001 = [("x-idempotency-key", "upsert-batch-001")];

    let (status, body, headers) = curl(&app, Method::POST, "/v1/vectors/upsert", &key, &batch_001, UPSERT).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["upserted_count"], 2);
    assert_eq!(body["namespace"], "products");
    assert_eq!(body["seq"], 1);
    assert!(headers.get("idempotent-replayed").is_none());
    // The same retry is replayed, not re-run.
    let (status, replay, headers) = curl(&app, Method::POST, "/v1/vectors/upsert", &key, &batch_001, UPSERT).await;
    assert_eq!((status, &replay), (200, &body));
    assert_eq!(headers["idempotent-replayed"], "true");

    let search = r#"{
    "namespace": "products",
    "vector": [0.11, 0.22, 0.33, 0.44],
    "top_k": 10
  }"#;
    let (status, body, _) = curl(&app, Method::POST, "/v1/vectors/search", &key, &[], search).await;
    assert_eq!(status, 200, "{body}");
    let matches = body["matches"].as_array().expect("matches");
    assert_eq!(matches.len(), 2);
    assert_eq!(matches[0]["id"], "sku-1");
    assert!(
        (matches[0]["score"].as_f64().expect("score") - 1.0).abs() < 1e-3,
        "{body}"
    );
    assert!(matches[0]["score"].as_f64() > matches[1]["score"].as_f64());
    assert_eq!(
        matches[0]["metadata"],
        json!({"name": "Widget A", "category": "hardware"})
    );

    let query = r#"{
    "namespace": "products",
    "id": "sku-1"
  }"#;
    let (status, body, _) = curl(&app, Method::POST, "/v1/vectors/query", &key, &[], query).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["id"], "sku-1");
    let values: Vec<f64> = body["values"]
        .as_array()
        .expect("values")
        .iter()
        .map(|v| v.as_f64().expect("number"))
        .collect();
    // As they were written: each 32-bit float as its shortest decimal, not widened.
    assert_eq!(values, [0.11, 0.22, 0.33, 0.44], "{body}");
    assert_eq!(body["metadata"]["name"], "Widget A");

    let update = r#"{
    "namespace": "products",
    "id": "sku-1",
    "metadata": {
      "category": "premium-hardware",
      "updated_at": "2025-01-15"
    }
  }"#;
    let (status, body, _) = curl(&app, Method::POST, "/v1/vectors/update", &key, &[], update).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"updated": true, "id": "sku-1", "namespace": "products", "seq": 2}),
        "the update answers as docs/vector-api.md says, one write after the upsert"
    );
    let (_, fetched, _) = curl(&app, Method::POST, "/v1/vectors/query", &key, &[], query).await;
    assert_eq!(
        fetched["metadata"],
        json!({"name": "Widget A", "category": "premium-hardware", "updated_at": "2025-01-15"}),
        "update merges metadata"
    );
    let (_, searched, _) = curl(&app, Method::POST, "/v1/vectors/search", &key, &[], search).await;
    assert_eq!(
        searched["matches"][0]["metadata"]["category"], "premium-hardware",
        "the index sees the update"
    );

    let delete = r#"{
    "namespace": "products",
    "id": "sku-1"
  }"#;
    let (status, body, _) = curl(&app, Method::DELETE, "/v1/vectors/delete", &key, &[], delete).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"deleted_count": 1, "namespace": "products", "seq": 3}),
        "{body}"
    );
    let (status, body, _) = curl(&app, Method::POST, "/v1/vectors/query", &key, &[], query).await;
    assert_error(status, &body, 404, "NOT_FOUND");
    let (status, searched, _) = curl(&app, Method::POST, "/v1/vectors/search", &key, &[], search).await;
    assert_eq!(status, 200, "{searched}");
    assert_eq!(
        match_ids(&searched),
        ["sku-2"],
        "the deleted vector is gone from search, the other one stays"
    );

    // `namespace` is optional and defaults to `default`; Bearer works as the page says.
    let response = app
        .data_request(0, Method::POST, "/v1/vectors/upsert")
        .header("authorization", format!("Bearer {key}"))
        .json(&json!({"vectors": [{"id": "x", "values": [1, 0, 0, 0]}]}))
        .send()
        .await
        .expect("answer");
    let (status, body) = read(response).await;
    assert_eq!((status, body["namespace"].clone()), (200, json!("default")));
}

async fn upsert_count(app: &TestApp, key: &str) -> u64 {
    namespaces(app, key)
        .await
        .iter()
        .map(|n| n["vector_count"].as_u64().expect("a vector_count"))
        .sum()
}

/// The project's namespaces, as `GET /v1/namespaces` lists them.
async fn namespaces(app: &TestApp, key: &str) -> Vec<Value> {
    let (status, body) = app.data_call(0, Method::GET, "/v1/namespaces", key, None).await;
    assert_eq!(status, 200, "{body}");
    body["namespaces"].as_array().expect("namespaces").clone()
}

/// The ids of a search's matches, in order.
fn match_ids(body: &Value) -> Vec<&str> {
    body["matches"]
        .as_array()
        .unwrap_or_else(|| panic!("matches: {body}"))
        .iter()
        .map(|m| m["id"].as_str().expect("an id"))
        .collect()
}

async fn bad_vectors_are_refused_naming_the_vector_and_nothing_is_written(app: TestApp) {
    let Tenant { readwrite: key, .. } = app.tenant(4, "cosine").await;
    let api = VectorApi::new(&app, &key);
    let good = json!({"id": "ok", "values": [1, 2, 3, 4]});
    let long_id = "x".repeat(513);
    let big_metadata = json!({"blob": "y".repeat(41 * 1024)});
    // Each bad vector alone would be refused; each message names it by its index in
    // the batch, and by its id when it has one as a string.
    let cases: Vec<(Value, &str)> = vec![
        (
            json!({"id": "sku-9", "values": [1, 2, 3]}),
            "has 3 values, the project's dimension is 4",
        ),
        (
            json!({"id": 7, "values": [1, 2, 3, 4]}),
            "has an id that is a number; ids must be strings",
        ),
        (
            json!({"id": "", "values": [1, 2, 3, 4]}),
            "has an id of 0 bytes; ids have 1 to 512 bytes",
        ),
        (
            json!({"id": long_id, "values": [1, 2, 3, 4]}),
            "has an id of 513 bytes; ids have 1 to 512 bytes",
        ),
        (json!({"values": [1, 2, 3, 4]}), "has no id"),
        (json!({"id": "a"}), "has no values"),
        (json!({"id": "a", "values": [1, "2", 3, 4]}), "value 1 is a string"),
        (json!({"id": "a", "values": [1, 2, 3, 1e39]}), "value 3 is not a finite"),
        (
            json!({"id": "a", "values": [1, 2, 3, 1e5]}),
            "value 3 is 100000, beyond ±65504, the largest magnitude the index holds",
        ),
        (json!({"id": "a", "values": [0, 0, 0, 0]}), "all zeros"),
        (
            json!({"id": "b64", "values": "AAAAAAAAAA=="}),
            "values are a string, which decodes to 7 bytes, not a whole number",
        ),
        (
            json!({"id": "b64", "values": "AACAPwAAAEAAAEBA"}),
            "has 3 values, the project's dimension is 4",
        ),
        (
            json!({"id": "a", "values": [1, 2, 3, 4], "metadata": [1]}),
            "metadata must be an object",
        ),
        (
            json!({"id": "a", "values": [1, 2, 3, 4], "metadata": big_metadata}),
            "bytes of metadata",
        ),
        (
            json!({"id": "a", "values": [1, 2, 3, 4], "sparse": {}}),
            "unknown field \"sparse\"",
        ),
        (json!("a string"), "must be an object with id and values, got a string"),
        // Postgres holds NUL in neither text nor JSON: refused on every store alike.
        (json!({"id": "a\0b", "values": [1, 2, 3, 4]}), "NUL character"),
        (
            json!({"id": "a", "values": [1, 2, 3, 4], "metadata": {"tags": ["ok", "x\0"]}}),
            "NUL character",
        ),
        (
            json!({"id": "a", "values": [1, 2, 3, 4], "metadata": {"k\0": 1}}),
            "NUL character",
        ),
    ];
    for (bad, needle) in cases {
        // First, second and sixth of the batch, with good vectors before and after it:
        // an index counted from 1, or from the wrong vector, names the wrong one.
        for at in [0, 1, 5] {
            let mut vectors: Vec<Value> = (0..at + 2)
                .map(|j| json!({"id": format!("ok-{j}"), "values": [1, 2, 3, 4]}))
                .collect();
            vectors[at] = bad.clone();
            let label = match bad["id"].as_str() {
                Some(id) => format!("vector {at} (id \"{id}\") "),
                None => format!("vector {at} "),
            };
            let body = json!({"namespace": "ns", "vectors": vectors});
            let (status, response) = api.upsert(body).await;
            let message = assert_error(status, &response, 400, "VALIDATION_ERROR");
            assert!(message.contains(needle), "{bad} at {at}: {message}");
            assert!(
                message.contains(&label),
                "{bad} at {at}: the message names it as {label:?}: {message}"
            );
            assert_eq!(
                namespaces(&app, &key).await,
                Vec::<Value>::new(),
                "{bad} at {at}: the refused batch wrote nothing, not even its namespace"
            );
        }
    }
    let too_many: Vec<Value> = (0..1001)
        .map(|i| json!({"id": format!("v{i}"), "values": [1, 2, 3, 4]}))
        .collect();
    let (status, response) = api.upsert(json!({"vectors": too_many})).await;
    let message = assert_error(status, &response, 400, "VALIDATION_ERROR");
    assert!(message.contains("1001") && message.contains("1000"), "{message}");
    let (status, response) = api.upsert(json!({"vectors": []})).await;
    assert_error(status, &response, 400, "VALIDATION_ERROR");
    let (status, response) = api.upsert(json!({"namespace": "ns"})).await;
    assert_error(status, &response, 400, "VALIDATION_ERROR");
    let (status, response, _) = curl(&app, Method::POST, "/v1/vectors/upsert", &key, &[], "{\"vectors\": [").await;
    let message = assert_error(status, &response, 400, "VALIDATION_ERROR");
    assert!(message.contains("not valid JSON"), "{message}");
    let (status, response) = api.upsert(json!({"namespace": "", "vectors": [good.clone()]})).await;
    assert_error(status, &response, 400, "VALIDATION_ERROR");

    assert_eq!(upsert_count(&app, &key).await, 0, "no refused batch wrote anything");
    let (status, _) = api.upsert(json!({"namespace": "ns", "vectors": [good]})).await;
    assert_eq!(status, 200);
    assert_eq!(upsert_count(&app, &key).await, 1);

    // Updates merge metadata: each under the cap, together past it, is refused whole.
    let update = |key_name: &str, values: [f32; 4]| json!({"namespace": "ns", "id": "ok", "metadata": {key_name: "z".repeat(30 * 1024)}, "values": values});
    let (status, body) = api.update(update("first", [4.0, 3.0, 2.0, 1.0])).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = api.update(update("second", [9.0, 9.0, 9.0, 9.0])).await;
    let message = assert_error(status, &body, 400, "VALIDATION_ERROR");
    assert!(
        message.contains("bytes of metadata") && message.contains("40960"),
        "{message}"
    );
    let (_, body) = api.query(json!({"namespace": "ns", "id": "ok"})).await;
    assert!(body["metadata"].get("second").is_none(), "{body}");
    assert_eq!(
        body["values"],
        json!([4.0, 3.0, 2.0, 1.0]),
        "the refused update changed nothing"
    );
}

async fn bad_searches_and_unknown_namespaces_are_4xx(app: TestApp) {
    let Tenant { readwrite: key, .. } = app.tenant(4, "euclidean").await;
    let api = VectorApi::new(&app, &key);
    let (status, body) = api
        .upsert(json!({"namespace": "ns", "vectors": [{"id": "a", "values": [1, 2, 3, 4]}]}))
        .await;
    assert_eq!((status, &body["upserted_count"]), (200, &json!(1)), "{body}");
    for (body, needle) in [
        (
            json!({"namespace": "ns", "vector": [1, 2, 3], "top_k": 3}),
            "dimension is 4",
        ),
        (json!({"namespace": "ns", "top_k": 3}), "no vector"),
        (
            json!({"namespace": "ns", "vector": [1, "2", 3, 4]}),
            "the query vector value 1 is a string, not a number",
        ),
        (
            json!({"namespace": "ns", "vector": "1,2,3,4"}),
            "the query vector values are a string, which is not base64: character 1 is ','",
        ),
        (
            json!({"namespace": "ns", "vector": {"values": [1, 2, 3, 4]}}),
            "the query vector values must be an array of numbers or a base64 string of little-endian 32-bit floats, got an object",
        ),
        (
            json!({"namespace": "ns", "vector": [1, 2, 3, 1e39]}),
            "the query vector value 3 is not a finite 32-bit float",
        ),
        (json!({"namespace": "ns", "vector": [1, 2, 3, 4], "top_k": 0}), "top_k"),
        (
            json!({"namespace": "ns", "vector": [1, 2, 3, 4], "top_k": 1001}),
            "top_k",
        ),
        (
            json!({"namespace": "ns", "vector": [1, 2, 3, 4], "top_k": "ten"}),
            "top_k",
        ),
        (
            json!({"namespace": "ns", "vector": [1, 2, 3, 4], "filter": {"a": {"$regex": "x"}}}),
            "$regex",
        ),
        (
            json!({"namespace": "ns", "vector": [1, 2, 3, 4], "consistency": "psychic"}),
            "consistency",
        ),
        (json!({"namespace": "ns", "vector": [1, 2, 3, 4], "topK": 3}), "topK"),
        (
            json!({"namespace": "ns", "vector": [1, 2, 3, 4], "filter": {"id": {"$in": (0..=10_000).collect::<Vec<u32>>()}}}),
            "more than 10000 values",
        ),
    ] {
        let (status, response) = api.search(body.clone()).await;
        assert_error(status, &response, 400, "VALIDATION_ERROR");
        assert!(response["error"].to_string().contains(needle), "{body}: {response}");
    }
    // A filter naming a key twice is refused, not read as its last mention (sent as
    // text: a JSON value cannot hold one key twice).
    for (method, path, body) in [
        (
            Method::POST,
            "/v1/vectors/search",
            r#"{"namespace": "ns", "vector": [1, 2, 3, 4], "filter": {"price": {"$gt": 5}, "price": {"$lt": 3}}}"#,
        ),
        (
            Method::DELETE,
            "/v1/vectors/delete",
            r#"{"namespace": "ns", "filter": {"$or": [{"a": 1}], "$or": [{"b": 2}]}}"#,
        ),
    ] {
        let (status, response, _) = curl(&app, method, path, &key, &[], body).await;
        assert_error(status, &response, 400, "VALIDATION_ERROR");
        assert!(
            response["error"].to_string().contains("appears twice"),
            "{body}: {response}"
        );
    }
    for (path, method, body) in [
        (
            "/v1/vectors/search",
            Method::POST,
            json!({"namespace": "nope", "vector": [1, 2, 3, 4]}),
        ),
        (
            "/v1/vectors/query",
            Method::POST,
            json!({"namespace": "nope", "id": "a"}),
        ),
        (
            "/v1/vectors/query",
            Method::POST,
            json!({"namespace": "nope", "ids": ["a", "b"]}),
        ),
        (
            "/v1/vectors/update",
            Method::POST,
            json!({"namespace": "nope", "id": "a", "metadata": {"x": 1}}),
        ),
        (
            "/v1/vectors/delete",
            Method::DELETE,
            json!({"namespace": "nope", "id": "a"}),
        ),
        (
            "/v1/vectors/update",
            Method::POST,
            json!({"namespace": "ns", "id": "missing", "metadata": {"x": 1}}),
        ),
    ] {
        let (status, response) = api.send(method, path, body.clone()).await;
        let message = assert_error(status, &response, 404, "NOT_FOUND");
        let missing = if body["namespace"] == "nope" {
            "namespace \"nope\" does not exist"
        } else {
            "no vector \"missing\""
        };
        assert!(message.contains(missing), "{path} {body}: {message}");
    }
    let (status, response) = api.get("/v1/vectors/nowhere").await;
    assert_error(status, &response, 404, "NOT_FOUND");
    // A search reads at most 8 MiB; an upsert, a batch, up to 64 MiB. JSON's own
    // whitespace pads the bodies past 8 MiB.
    let padding = " ".repeat(8 * 1024 * 1024);
    for (path, body, expected) in [
        (
            "/v1/vectors/search",
            format!("{{\"namespace\": \"ns\", \"vector\": [1, 2, 3, 4]{padding}}}"),
            413,
        ),
        (
            "/v1/vectors/upsert",
            format!("{{\"namespace\": \"ns\", \"vectors\": [{{\"id\": \"b\", \"values\": [1, 2, 3, 5]}}]{padding}}}"),
            200,
        ),
    ] {
        let (status, response, _) = curl(&app, Method::POST, path, &key, &[], body).await;
        if expected == 413 {
            let message = assert_error(status, &response, 413, "PAYLOAD_TOO_LARGE");
            assert!(message.contains("8 MiB"), "{message}");
        } else {
            assert_eq!(status, expected, "{path}: {response}");
            assert_eq!(response["upserted_count"], 1, "{response}");
        }
    }
    assert_eq!(upsert_count(&app, &key).await, 2);
    // An upsert reads at most 64 MiB: a body of exactly that is read; one byte more is
    // a 413, and writes nothing, though the vector in it is a good one.
    let cap = quiver_data_plane::MAX_BODY_BYTES;
    assert_eq!(cap, 64 * 1024 * 1024, "docs/vector-api.md documents 64 MiB");
    for (id, expected) in [("at-the-cap", 200), ("past-the-cap", 413)] {
        let head = format!("{{\"namespace\": \"ns\", \"vectors\": [{{\"id\": \"{id}\", \"values\": [4, 3, 2, 1]}}]");
        let length = if expected == 200 { cap } else { cap + 1 };
        let mut body = Vec::with_capacity(length);
        body.extend_from_slice(head.as_bytes());
        body.resize(length - 1, b' ');
        body.push(b'}');
        assert_eq!(body.len(), length);
        let (status, response, _) = curl(&app, Method::POST, "/v1/vectors/upsert", &key, &[], body).await;
        if expected == 413 {
            let message = assert_error(status, &response, 413, "PAYLOAD_TOO_LARGE");
            assert!(message.contains("64 MiB"), "{message}");
        } else {
            assert_eq!((status, &response["upserted_count"]), (200, &json!(1)), "{response}");
        }
    }
    assert_eq!(upsert_count(&app, &key).await, 3, "the body past the cap wrote nothing");
    let (status, response) = api
        .query(json!({"namespace": "ns", "ids": ["at-the-cap", "past-the-cap"]}))
        .await;
    assert_eq!(status, 200, "{response}");
    assert_eq!(
        response["vectors"]
            .as_array()
            .map(|v| v.iter().map(|v| v["id"].clone()).collect::<Vec<_>>()),
        Some(vec![json!("at-the-cap")]),
        "{response}"
    );
    let (status, response) = api.update(json!({"namespace": "ns", "id": "a"})).await;
    assert_error(status, &response, 400, "VALIDATION_ERROR");
}

async fn idempotency_keys_replay_refuse_reuse_and_are_released_by_a_failure(app: TestApp) {
    let Tenant { readwrite: key, .. } = app.tenant(4, "cosine").await;
    let api = VectorApi::new(&app, &key);
    // The header of each idempotency key the test sends.
    let [k1, k3, k4] = ["k1", "k3", "k4"].map(|k| [("x-idempotency-key", k)]);
    let body = r#"{"namespace":"ns","vectors":[{"id":"a","values":[1,2,3,4]}]}"#;
    let (status, first, _) = curl(&app, Method::POST, "/v1/vectors/upsert", &key, &k1, body).await;
    assert_eq!(status, 200, "{first}");
    let other = r#"{"namespace":"ns","vectors":[{"id":"b","values":[1,2,3,4]}]}"#;
    let (status, response, _) = curl(&app, Method::POST, "/v1/vectors/upsert", &key, &k1, other).await;
    assert_error(status, &response, 422, "UNPROCESSABLE");
    assert_eq!(upsert_count(&app, &key).await, 1, "the mismatched retry wrote nothing");

    // A failed request releases its key: the corrected retry runs.
    let bad = r#"{"namespace":"ns","vectors":[{"id":"c","values":[1,2,3]}]}"#;
    for attempt in ["the first", "the same bad request fails again rather than replaying"] {
        let (status, body, headers) = curl(&app, Method::POST, "/v1/vectors/upsert", &key, &k3, bad).await;
        let message = assert_error(status, &body, 400, "VALIDATION_ERROR");
        assert!(
            message.contains("vector 0 (id \"c\") has 3 values, the project's dimension is 4"),
            "{attempt}: {message}"
        );
        assert!(headers.get("idempotent-replayed").is_none(), "{attempt}");
    }
    assert_eq!(upsert_count(&app, &key).await, 1, "the bad requests wrote nothing");
    let fixed = r#"{"namespace":"ns","vectors":[{"id":"c","values":[1,2,3,4]}]}"#;
    let (status, body, _) = curl(&app, Method::POST, "/v1/vectors/upsert", &key, &k3, fixed).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["upserted_count"], 1, "{body}");
    let (status, body) = api.query(json!({"namespace": "ns", "id": "c"})).await;
    assert_eq!(status, 200, "the corrected retry wrote its vector: {body}");
    assert_eq!(body["values"], json!([1.0, 2.0, 3.0, 4.0]), "{body}");
    // A key is one request of the project: the same key on update is refused, and
    // the update runs with a key of its own.
    let update = r#"{"namespace":"ns","id":"a","metadata":{"x":1}}"#;
    let (status, body, _) = curl(&app, Method::POST, "/v1/vectors/update", &key, &k1, update).await;
    let message = assert_error(status, &body, 422, "UNPROCESSABLE");
    assert!(message.contains("another body or route"), "{message}");
    let (_, body) = api.query(json!({"namespace": "ns", "id": "a"})).await;
    assert!(
        body["metadata"].get("x").is_none(),
        "the refused update did not run: {body}"
    );
    let (status, body, _) = curl(&app, Method::POST, "/v1/vectors/update", &key, &k4, update).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!((&body["updated"], &body["id"]), (&json!(true), &json!("a")), "{body}");
    let (_, body) = api.query(json!({"namespace": "ns", "id": "a"})).await;
    assert_eq!(
        body["metadata"],
        json!({"x": 1}),
        "the update with its own key ran: {body}"
    );
}

/// Two requests with one key, racing over HTTP: while the first is held inside its
/// write (its key claimed, its transaction waiting on a lock another client holds),
/// the second is a 409; the first then answers, and a retry after it is its replay.
/// On Postgres only: [`TestApp::hold_writes`] on SQLite holds the database's one
/// write lock, which the first request's claim of its key needs too, so there the
/// first request cannot be held between its claim and its write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_while_the_first_request_runs_is_a_409_and_one_after_it_replays_it() {
    use quiver_tests::app::WritesHeld;
    let app = TestApp::start(Backend::Postgres).await;
    let Tenant { readwrite: key, .. } = app.tenant(4, "cosine").await;
    let body = r#"{"namespace":"race","vectors":[{"id":"a","values":[1,2,3,4]}]}"#;
    let send = || {
        app.data_request(0, Method::POST, "/v1/vectors/upsert")
            .header("content-type", "application/json")
            .header("x-api-key", &key)
            .header("x-idempotency-key", "raced")
            .body(body)
            .send()
    };

    let mut held = app.hold_writes().await;
    let first = tokio::spawn(send());
    // The first request is in flight once its key is claimed and its write waits on
    // the lock held here: both seen from the holding connection itself.
    {
        let WritesHeld::Postgres(connection) = &mut held else {
            panic!("a Postgres app holds writes with a Postgres connection");
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let claimed: i64 = sqlx::query_scalar("SELECT count(*) FROM idempotency_keys WHERE key = 'raced'")
                .fetch_one(&mut *connection)
                .await
                .expect("count claims");
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_locks
                 WHERE NOT granted AND relation = 'namespaces'::regclass
                   AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            )
            .fetch_one(&mut *connection)
            .await
            .expect("count lock waiters");
            if claimed == 1 && waiting >= 1 {
                break;
            }
            assert!(
                !first.is_finished(),
                "the first request answered while writes were held"
            );
            assert!(
                std::time::Instant::now() < deadline,
                "the first request never reached its write (claims {claimed}, waiters {waiting})"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    let (status, response, headers) = answer(send().await.expect("answer")).await;
    let message = assert_error(status, &response, 409, "CONFLICT");
    assert!(
        message.contains("\"raced\"") && message.contains("still being processed"),
        "{message}"
    );
    assert!(headers.get("idempotent-replayed").is_none());
    assert!(!first.is_finished(), "the first request is still held");

    held.release().await;
    let (status, original, headers) = answer(first.await.expect("the first request's task").expect("answer")).await;
    assert_eq!(status, 200, "{original}");
    assert_eq!(
        original,
        json!({"upserted_count": 1, "namespace": "race", "seq": 1}),
        "the conflicting retry did not run the write a second time"
    );
    assert!(headers.get("idempotent-replayed").is_none());

    let (status, replay, headers) = answer(send().await.expect("answer")).await;
    assert_eq!((status, &replay), (200, &original));
    assert_eq!(headers["idempotent-replayed"], "true");
    let listed = namespaces(&app, &key).await;
    assert_eq!(
        (&listed[0]["name"], &listed[0]["vector_count"], &listed[0]["seq"]),
        (&json!("race"), &json!(1), &json!(1)),
        "one write in all: {listed:?}"
    );
}

/// An update or a delete sent again with its key is answered as the first was, not
/// run again: a delete run twice would answer `deleted_count: 0` the second time.
async fn idempotent_updates_and_deletes_replay_their_first_answer(app: TestApp) {
    let Tenant { readwrite: key, .. } = app.tenant(4, "cosine").await;
    let api = VectorApi::new(&app, &key);
    let (status, body) = api
        .upsert(json!({"namespace": "ns", "vectors": [
            {"id": "a", "values": [1, 2, 3, 4], "metadata": {"n": 1}},
            {"id": "b", "values": [4, 3, 2, 1], "metadata": {"n": 2}},
        ]}))
        .await;
    assert_eq!((status, &body["seq"]), (200, &json!(1)), "{body}");
    let fetch = |id: &str| json!({"namespace": "ns", "id": id});

    for (method, path, first_body, other_body, expected) in [
        (
            Method::POST,
            "/v1/vectors/update",
            r#"{"namespace":"ns","id":"a","metadata":{"n":10}}"#,
            r#"{"namespace":"ns","id":"b","metadata":{"n":20}}"#,
            json!({"updated": true, "id": "a", "namespace": "ns", "seq": 2}),
        ),
        (
            Method::DELETE,
            "/v1/vectors/delete",
            r#"{"namespace":"ns","id":"a"}"#,
            r#"{"namespace":"ns","id":"b"}"#,
            json!({"deleted_count": 1, "namespace": "ns", "seq": 3}),
        ),
    ] {
        let idempotency_key = [("x-idempotency-key", path)];
        let (status, first, headers) = curl(&app, method.clone(), path, &key, &idempotency_key, first_body).await;
        assert_eq!((status, &first), (200, &expected), "{path}");
        assert!(headers.get("idempotent-replayed").is_none(), "{path}");
        // The retry: the stored answer, and the write not run again (no seq spent).
        let (status, replay, headers) = curl(&app, method.clone(), path, &key, &idempotency_key, first_body).await;
        assert_eq!((status, &replay), (200, &first), "{path}: a replay, not a second run");
        assert_eq!(headers["idempotent-replayed"], "true", "{path}");
        assert_eq!(
            namespaces(&app, &key).await[0]["seq"],
            expected["seq"],
            "{path}: the replay wrote nothing"
        );
        // The same key with another body is refused, and does not run.
        let (status, refused, _) = curl(&app, method.clone(), path, &key, &idempotency_key, other_body).await;
        let message = assert_error(status, &refused, 422, "UNPROCESSABLE");
        assert!(message.contains("another body or route"), "{path}: {message}");
        assert_eq!(
            namespaces(&app, &key).await[0]["seq"],
            expected["seq"],
            "{path}: the refused request wrote nothing"
        );
        let (status, b) = api.query(fetch("b")).await;
        assert_eq!(
            (status, &b["metadata"]),
            (200, &json!({"n": 2})),
            "{path}: b untouched by the refused request"
        );
    }
    let (status, a) = api.query(fetch("a")).await;
    assert_error(status, &a, 404, "NOT_FOUND");
    assert_eq!(upsert_count(&app, &key).await, 1);
}

/// The edges of the documented limits: each is accepted at the limit and refused one
/// past it. Ids and metadata are measured in bytes (metadata as JSON), not characters.
async fn ids_metadata_top_k_and_batches_at_their_limits_are_accepted_and_one_past_refused(app: TestApp) {
    let Tenant { readwrite: key, .. } = app.tenant(4, "cosine").await;
    let api = VectorApi::new(&app, &key);
    let upsert = |vector: &Value| json!({"namespace": "edge", "vectors": [vector]});
    let ascii = "x".repeat(512);
    // 256 two-byte characters: 512 bytes, the most an id holds; 257 of them are 514
    // bytes, refused though they are only 257 characters.
    let accented = "é".repeat(256);
    let too_long = "é".repeat(257);
    assert_eq!((ascii.len(), accented.len(), too_long.len()), (512, 512, 514));
    // Metadata is measured as the JSON of its object: `{"blob":"…"}` is the string's
    // bytes and 11 more.
    let cap = 40 * 1024;
    let metadata_of = |bytes: usize| json!({"blob": "y".repeat(bytes - 11)});
    assert_eq!(serde_json::to_vec(&metadata_of(cap)).expect("JSON").len(), cap);

    for vector in [
        json!({"id": ascii, "values": [1, 2, 3, 4], "metadata": {"kind": "ascii"}}),
        json!({"id": accented, "values": [1, 2, 3, 5], "metadata": {"kind": "accented"}}),
        json!({"id": "metadata-at-the-cap", "values": [1, 2, 3, 6], "metadata": metadata_of(cap)}),
    ] {
        let id = vector["id"].as_str().expect("an id");
        let (status, body) = api.upsert(upsert(&vector)).await;
        assert_eq!((status, &body["upserted_count"]), (200, &json!(1)), "{id}: {body}");
        let (status, fetched) = api.query(json!({"namespace": "edge", "id": id})).await;
        assert_eq!(status, 200, "{id}: {fetched}");
        assert_eq!(fetched["id"], vector["id"]);
        assert_eq!(fetched["metadata"], vector["metadata"], "{id}");
    }
    for (vector, says) in [
        (
            json!({"id": too_long, "values": [1, 2, 3, 4]}),
            format!("vector 0 (id \"{too_long}\") has an id of 514 bytes; ids have 1 to 512 bytes"),
        ),
        (
            json!({"id": "metadata-past-the-cap", "values": [1, 2, 3, 4], "metadata": metadata_of(cap + 1)}),
            format!(
                "vector 0 (id \"metadata-past-the-cap\") has {} bytes of metadata; the limit is {cap}",
                cap + 1
            ),
        ),
    ] {
        let (status, body) = api.upsert(upsert(&vector)).await;
        let message = assert_error(status, &body, 400, "VALIDATION_ERROR");
        assert!(message.contains(&says), "{message}");
    }
    assert_eq!(upsert_count(&app, &key).await, 3, "the refused vectors wrote nothing");

    // A batch of the plan's 1,000 vectors is taken whole, and a search's top_k of 1,000
    // answers 1,000 distinct records.
    let batch: Vec<Value> = (0..1000)
        .map(|i| json!({"id": format!("n{i:04}"), "values": [100.0, (i % 10) as f64, (i / 10 % 10) as f64, (i / 100) as f64]}))
        .collect();
    let (status, body) = api.upsert(json!({"namespace": "edge", "vectors": batch})).await;
    assert_eq!((status, &body["upserted_count"]), (200, &json!(1000)), "{body}");
    assert_eq!(upsert_count(&app, &key).await, 1003);
    let (status, body) = api
        .search(json!({"namespace": "edge", "vector": [1, 2, 3, 4], "top_k": 1000, "include_metadata": false}))
        .await;
    assert_eq!(status, 200, "{body}");
    let ids = match_ids(&body);
    let distinct: std::collections::HashSet<&str> = ids.iter().copied().collect();
    assert_eq!(
        (ids.len(), distinct.len()),
        (1000, 1000),
        "top_k 1000 gives 1000 distinct matches"
    );
    assert_eq!(ids[0], ascii, "the exact match first");
}

async fn filters_narrow_searches_and_deletes(app: TestApp) {
    let Tenant { readwrite: key, .. } = app.tenant(2, "euclidean").await;
    let api = VectorApi::new(&app, &key);
    let vectors: Vec<Value> = (0..60)
        .map(|i| {
            let color = ["red", "green", "blue"][i % 3];
            let tags = if i % 10 == 0 { json!(["round"]) } else { json!([]) };
            json!({
                "id": format!("v{i}"),
                "values": [i as f64, 0.0],
                "metadata": {"color": color, "size": i, "tags": tags}
            })
        })
        .collect();
    let (status, _) = api.upsert(json!({"namespace": "f", "vectors": vectors})).await;
    assert_eq!(status, 200);
    let search = |filter: Value, k: u32| json!({"namespace": "f", "vector": [0.0, 0.0], "top_k": k, "filter": filter});

    let (_, body) = api.search(search(json!({"color": "blue"}), 3)).await;
    assert_eq!(match_ids(&body), ["v2", "v5", "v8"]);
    let (_, body) = api.search(search(json!({"size": {"$gte": 10, "$lt": 13}}), 10)).await;
    assert_eq!(match_ids(&body), ["v10", "v11", "v12"]);
    let (_, body) = api
        .search(search(json!({"$or": [{"tags": "round"}, {"size": 1}]}), 3))
        .await;
    assert_eq!(match_ids(&body), ["v0", "v1", "v10"]);
    let (_, body) = api
        .search(search(
            json!({"color": {"$nin": ["red", "green"]}, "size": {"$gt": 50}}),
            10,
        ))
        .await;
    assert_eq!(match_ids(&body), ["v53", "v56", "v59"]);

    let (status, body) = api.delete(json!({"namespace": "f", "filter": {"color": "red"}})).await;
    assert_eq!((status, body["deleted_count"].clone()), (200, json!(20)), "{body}");
    let (_, body) = api.search(search(json!({"color": "red"}), 5)).await;
    assert_eq!(match_ids(&body), Vec::<&str>::new());
    let (status, body) = api.delete(json!({"namespace": "f", "filter": {}})).await;
    assert_error(status, &body, 400, "VALIDATION_ERROR");
    // However an everything-filter is written, and empty lists of values.
    for (filter, needle) in [
        (json!({"$and": [{}]}), "empty filter"),
        (json!({"$or": [{"color": "blue"}, {}]}), "empty filter"),
        (json!({"color": {"$nin": []}}), "non-empty array"),
        (json!({"color": {"$in": []}}), "non-empty array"),
    ] {
        let (status, body) = api.delete(json!({"namespace": "f", "filter": filter})).await;
        let message = assert_error(status, &body, 400, "VALIDATION_ERROR");
        assert!(message.contains(needle), "{filter}: {message}");
    }
    assert_eq!(upsert_count(&app, &key).await, 40);

    // A filter that matches nothing deletes nothing and spends no seq.
    let (_, before) = api.get("/v1/namespaces").await;
    let (status, body) = api
        .delete(json!({"namespace": "f", "filter": {"color": "purple"}}))
        .await;
    assert_eq!((status, &body["deleted_count"]), (200, &json!(0)), "{body}");
    assert_eq!(body["seq"], before["namespaces"][0]["seq"], "{body} {before}");

    // A list of ids: those that exist are deleted, in one write.
    let (status, body) = api
        .delete(json!({"namespace": "f", "ids": ["v1", "v2", "v3", "nope"]}))
        .await;
    assert_eq!((status, &body["deleted_count"]), (200, &json!(2)), "v3 was red: {body}");
    assert_eq!(
        body["seq"].as_i64(),
        before["namespaces"][0]["seq"].as_i64().map(|s| s + 1)
    );
    let too_many: Vec<String> = (0..1001).map(|i| format!("v{i}")).collect();
    for ids in [json!([]), json!(too_many)] {
        let (status, body) = api.delete(json!({"namespace": "f", "ids": ids})).await;
        assert_error(status, &body, 400, "VALIDATION_ERROR");
    }
    assert_eq!(upsert_count(&app, &key).await, 38);
}

async fn scopes_and_tenancy_hold_on_every_route(app: TestApp) {
    let alice = app.tenant(4, "cosine").await;
    let bob = app.tenant(4, "cosine").await;
    let alice_reads = VectorApi::new(&app, &alice.readonly);
    let alice_writes = VectorApi::new(&app, &alice.readwrite);
    let bob_admin = VectorApi::new(&app, &bob.admin);
    let upsert = json!({"namespace": "private", "vectors": [{"id": "a", "values": [1, 2, 3, 4], "metadata": {"owner": "alice"}}]});
    let (status, body) = alice_reads.upsert(upsert.clone()).await;
    assert_error(status, &body, 403, "FORBIDDEN");
    for (path, method, body) in [
        (
            "/v1/vectors/update",
            Method::POST,
            json!({"namespace": "private", "id": "a", "metadata": {"x": 1}}),
        ),
        (
            "/v1/vectors/delete",
            Method::DELETE,
            json!({"namespace": "private", "id": "a"}),
        ),
    ] {
        let (status, response) = alice_reads.send(method, path, body).await;
        assert_error(status, &response, 403, "FORBIDDEN");
    }
    let (status, body) = alice_writes.upsert(upsert).await;
    assert_eq!((status, &body["upserted_count"]), (200, &json!(1)), "{body}");
    // The read-only key reads what the read-write key wrote.
    let (status, body) = alice_reads
        .search(json!({"namespace": "private", "vector": [1, 2, 3, 4]}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(match_ids(&body), ["a"], "{body}");
    assert_eq!(body["matches"][0]["metadata"], json!({"owner": "alice"}), "{body}");

    // Bob's admin key names alice's namespace: it is not there for him.
    for (path, method, body) in [
        (
            "/v1/vectors/search",
            Method::POST,
            json!({"namespace": "private", "vector": [1, 2, 3, 4]}),
        ),
        (
            "/v1/vectors/query",
            Method::POST,
            json!({"namespace": "private", "id": "a"}),
        ),
        (
            "/v1/vectors/update",
            Method::POST,
            json!({"namespace": "private", "id": "a", "metadata": {"owner": "bob"}}),
        ),
        (
            "/v1/vectors/delete",
            Method::DELETE,
            json!({"namespace": "private", "id": "a"}),
        ),
    ] {
        let (status, response) = bob_admin.send(method, path, body).await;
        assert_error(status, &response, 404, "NOT_FOUND");
    }
    let (_, fetched) = alice_reads.query(json!({"namespace": "private", "id": "a"})).await;
    assert_eq!(fetched["metadata"]["owner"], "alice");
    let (status, body) = read(
        app.data_request(0, Method::POST, "/v1/vectors/search")
            .json(&json!({"vector": [1, 2, 3, 4]}))
            .send()
            .await
            .expect("answer"),
    )
    .await;
    assert_error(status, &body, 401, "UNAUTHORIZED");
}

async fn ids_are_listed_with_a_cursor_and_fetched_in_bulk(app: TestApp) {
    let Tenant { readwrite: key, .. } = app.tenant(2, "dotproduct").await;
    let api = VectorApi::new(&app, &key);
    let vectors: Vec<Value> = (0..25)
        .map(|i| json!({"id": format!("doc#{i:02}"), "values": [1.0, i as f64]}))
        .collect();
    let (status, body) = api.upsert(json!({"namespace": "l", "vectors": vectors})).await;
    assert_eq!((status, &body["upserted_count"]), (200, &json!(25)), "{body}");
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/vectors/list?namespace=l&prefix=doc%23&limit=10&cursor={c}"),
            None => "/v1/vectors/list?namespace=l&prefix=doc%23&limit=10".to_owned(),
        };
        let (status, body) = api.get(&path).await;
        assert_eq!(status, 200, "{body}");
        seen.extend(
            body["ids"]
                .as_array()
                .expect("ids")
                .iter()
                .map(|v| v.as_str().expect("id").to_owned()),
        );
        match body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen.len(), 25);
    assert_eq!(seen[0], "doc#00");
    // What no page returned: not base64, base64 of nothing, of bytes that are not
    // text, of text no id can be; a prefix no id can start with.
    for query in [
        "cursor=%%%",
        "cursor=",
        "cursor=__8",
        "cursor=YQBi",
        "prefix=a%00",
        "limit=0",
    ] {
        let path = format!("/v1/vectors/list?namespace=l&{query}");
        let (status, body) = api.get(&path).await;
        assert_error(status, &body, 400, "VALIDATION_ERROR");
    }
    // Bytes that are not UTF-8 are refused, not read as U+FFFD (another namespace).
    for path in [
        "/v1/vectors/list?namespace=%FF",
        "/v1/vectors/list?namespace=l&prefix=%F0%9F",
    ] {
        let (status, body) = api.get(path).await;
        let message = assert_error(status, &body, 400, "VALIDATION_ERROR");
        assert!(message.contains("UTF-8"), "{path}: {message}");
    }
    let long = "p".repeat(513);
    let (status, body) = api.get(&format!("/v1/vectors/list?namespace=l&prefix={long}")).await;
    assert_error(status, &body, 400, "VALIDATION_ERROR");

    let (status, body) = api
        .query(json!({"namespace": "l", "ids": ["doc#03", "missing", "doc#01"], "include_values": false}))
        .await;
    assert_eq!(status, 200, "{body}");
    let fetched: Vec<&str> = body["vectors"]
        .as_array()
        .expect("vectors")
        .iter()
        .map(|v| v["id"].as_str().expect("id"))
        .collect();
    assert_eq!(fetched, ["doc#03", "doc#01"]);
    assert!(body["vectors"][0].get("values").is_none());
    let (_, body) = api.search(json!({"namespace": "l", "vector": [0.0, 1.0], "top_k": 2, "include_values": true, "include_metadata": false})).await;
    assert_eq!(
        body["matches"][0]["id"], "doc#24",
        "dotproduct ranks the largest inner product first"
    );
    assert!(
        (body["matches"][0]["score"].as_f64().expect("score") - 24.0).abs() < 0.05,
        "{body}"
    );
    assert!(body["matches"][0]["values"].is_array() && body["matches"][0].get("metadata").is_none());

    // null is the default for every optional member of a search.
    let nulls_everywhere = json!({"namespace": "l", "vector": [0.0, 1.0], "top_k": null, "filter": null,
        "include_values": null, "include_metadata": null, "consistency": null});
    let (status, body) = api.search(nulls_everywhere).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["matches"][0].get("values").is_none(), "{body}");

    // A null in metadata is no value: not stored, as an update's null removes a key.
    let nulls = json!({"namespace": "l", "vectors": [{"id": "nulls", "values": [0.5, 0.5], "metadata": {"gone": null, "kept": 1}}]});
    let (status, _) = api.upsert(nulls).await;
    assert_eq!(status, 200);
    let (_, body) = api.query(json!({"namespace": "l", "id": "nulls"})).await;
    assert_eq!(body["metadata"], json!({"kept": 1}), "{body}");
    let filtered =
        json!({"namespace": "l", "vector": [0.5, 0.5], "top_k": 5, "filter": {"gone": {"$exists": false}, "kept": 1}});
    let (_, body) = api.search(filtered).await;
    assert_eq!(body["matches"][0]["id"], "nulls", "{body}");
}

/// The base64 of `values`' little-endian bytes, as OpenAI's embeddings API returns an
/// embedding for `encoding_format: "base64"`.
fn base64_of(values: &[f32]) -> String {
    use base64::Engine as _;
    let bytes: Vec<u8> = values.iter().flat_map(|x| x.to_le_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

async fn vectors_sent_as_base64_are_the_vectors_their_bytes_hold(app: TestApp) {
    let Tenant { readwrite: key, .. } = app.tenant(4, "cosine").await;
    let api = VectorApi::new(&app, &key);
    // 0.1 has no exact f32 and 1e-45 is subnormal: the bytes arrive as they were sent.
    let exact = [0.1_f32, -2.5, 1e-45, 65504.0];
    let upsert = json!({"namespace": "b", "vectors": [
        {"id": "sent-as-base64", "values": base64_of(&exact), "metadata": {"via": "base64"}},
        {"id": "sent-as-numbers", "values": [0.9, 0.1, 0.0, 0.0]},
    ]});
    let (status, body) = api.upsert(upsert).await;
    assert_eq!((status, &body["upserted_count"]), (200, &json!(2)), "{body}");

    let (status, body) = api.query(json!({"namespace": "b", "id": "sent-as-base64"})).await;
    assert_eq!(status, 200, "{body}");
    let fetched: Vec<f32> = serde_json::from_value(body["values"].clone()).expect("values are numbers");
    assert_eq!(
        fetched.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
        exact.map(f32::to_bits)
    );

    // A query sent as base64 (unpadded too) finds what the same numbers find.
    let query = [0.9_f32, 0.1, 0.0, 0.0];
    let by_numbers = json!({"namespace": "b", "vector": query, "top_k": 2});
    let (_, expected) = api.search(by_numbers).await;
    assert_eq!(expected["matches"][0]["id"], "sent-as-numbers", "{expected}");
    for encoded in [base64_of(&query), base64_of(&query).trim_end_matches('=').to_owned()] {
        let by_base64 = json!({"namespace": "b", "vector": encoded, "top_k": 2});
        let (status, body) = api.search(by_base64).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["matches"], expected["matches"], "{encoded}");
    }

    // New values by update, as base64.
    let update = json!({"namespace": "b", "id": "sent-as-numbers", "values": base64_of(&[0.0, 0.0, 1.0, 0.0])});
    let (status, body) = api.update(update).await;
    assert_eq!(status, 200, "{body}");
    let (_, body) = api.query(json!({"namespace": "b", "id": "sent-as-numbers"})).await;
    assert_eq!(body["values"], json!([0.0, 0.0, 1.0, 0.0]), "{body}");

    // A string that is not the base64 of four floats is refused, naming what is wrong.
    for (values, needle) in [
        (
            json!("AACAPw=="),
            "vector \"sent-as-numbers\" has 1 values, the project's dimension is 4",
        ),
        (json!("not base64!"), "which is not base64: character 3 is ' '"),
    ] {
        let update = json!({"namespace": "b", "id": "sent-as-numbers", "values": values});
        let (status, body) = api.update(update).await;
        let message = assert_error(status, &body, 400, "VALIDATION_ERROR");
        assert!(message.contains(needle), "{message}");
    }
    let (_, body) = api.query(json!({"namespace": "b", "id": "sent-as-numbers"})).await;
    assert_eq!(
        body["values"],
        json!([0.0, 0.0, 1.0, 0.0]),
        "a refused update changed nothing: {body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_on_one_pod_are_seen_by_another() {
    let app = TestApp::cluster(2).await;
    let key = app.tenant(4, "cosine").await.readwrite;
    let pod_0 = VectorApi::new(&app, &key);
    let pod_1 = VectorApi::on_pod(&app, 1, &key);
    let search = json!({"namespace": "shared", "vector": [1, 0, 0, 0], "top_k": 5, "consistency": "strong"});
    let (status, body) = pod_0
        .upsert(json!({"namespace": "shared", "vectors": [{"id": "a", "values": [1, 0, 0, 0]}]}))
        .await;
    assert_eq!(
        (status, &body["upserted_count"], &body["seq"]),
        (200, &json!(1), &json!(1)),
        "{body}"
    );
    let (status, body) = pod_1.search(search.clone()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(match_ids(&body), ["a"], "pod 1 loads the index from the store: {body}");
    assert_eq!(body["seq"], 1, "{body}");

    let (status, body) = pod_0
        .upsert(json!({"namespace": "shared", "vectors": [{"id": "b", "values": [0.9, 0.1, 0, 0]}]}))
        .await;
    assert_eq!(
        (status, &body["upserted_count"], &body["seq"]),
        (200, &json!(1), &json!(2)),
        "{body}"
    );
    let (status, body) = pod_1.search(search).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(match_ids(&body), ["a", "b"], "a strong read catches up at once: {body}");
    assert_eq!(body["seq"], 2, "{body}");

    let (status, body) = pod_0.delete(json!({"namespace": "shared", "id": "a"})).await;
    assert_eq!(
        (status, &body["deleted_count"], &body["seq"]),
        (200, &json!(1), &json!(3)),
        "{body}"
    );
    // An eventual read on pod 1 serves the delete once the bus brings it word: the
    // `seq` a search reports says when it has. Its 30 s background check would bring
    // it too, so the wait stays well under that, and is no measure of speed.
    let eventual = json!({"namespace": "shared", "vector": [1, 0, 0, 0], "top_k": 5});
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let body = loop {
        let (status, body) = pod_1.search(eventual.clone()).await;
        assert_eq!(status, 200, "{body}");
        if body["seq"].as_i64() >= Some(3) {
            break body;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "pod 1 did not hear of the delete: {body}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(
        match_ids(&body),
        ["b"],
        "pod 1 no longer finds the deleted vector: {body}"
    );
}

/// A pod that heard of writes it has not applied, and cannot reach the records store
/// to catch up, still answers searches from memory; strong reads and writes refuse.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_behind_serves_from_memory_when_the_store_is_gone() {
    let app = TestApp::cluster(2).await;
    let key = app.tenant(4, "cosine").await.readwrite;
    let pod_0 = VectorApi::new(&app, &key);
    let pod_1 = VectorApi::on_pod(&app, 1, &key);
    let upsert = |id: &str, values: [f32; 4]| json!({"namespace": "ns", "vectors": [{"id": id, "values": values}]});
    let search = json!({"namespace": "ns", "vector": [1, 0, 0, 0], "top_k": 5});
    let (status, _) = pod_0.upsert(upsert("a", [1.0, 0.0, 0.0, 0.0])).await;
    assert_eq!(status, 200);
    let (status, body) = pod_1.search(search.clone()).await;
    assert_eq!(
        (status, body["matches"].as_array().map(Vec::len)),
        (200, Some(1)),
        "{body}"
    );

    // Pod 1 hears of a write on pod 0, and loses the store before its next search.
    let (status, _) = pod_0.upsert(upsert("b", [0.9, 0.1, 0.0, 0.0])).await;
    assert_eq!(status, 200);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await; // the notice, through Redis
    app.store.close().await;
    for _ in 0..3 {
        let (status, body) = pod_1.search(search.clone()).await;
        assert_eq!(status, 200, "served from memory: {body}");
        assert_eq!(body["matches"][0]["id"], "a", "{body}");
    }
    let strong = json!({"namespace": "ns", "vector": [1, 0, 0, 0], "consistency": "strong"});
    let (status, body) = pod_1.search(strong).await;
    assert_error(status, &body, 503, "DATABASE_UNAVAILABLE");
}

/// 20,000 random 128-d vectors, 200 queries: recall@10 against brute force, with and
/// without a 1%-selective filter, and with a filter the walk applies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recall_at_10_is_at_least_095_with_and_without_a_selective_filter() {
    use rand::{Rng as _, SeedableRng as _};
    let app = TestApp::start(Backend::Sqlite).await;
    let key = app.tenant(128, "cosine").await.readwrite;
    let api = VectorApi::new(&app, &key);
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let data: Vec<Vec<f32>> = (0..20_000)
        .map(|_| (0..128).map(|_| rng.random_range(-1.0f32..1.0)).collect())
        .collect();
    for (batch, chunk) in data.chunks(1000).enumerate() {
        let vectors: Vec<Value> = chunk
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let n = batch * 1000 + i;
                json!({"id": format!("{n}"), "values": v, "metadata": {"bucket": n % 100}})
            })
            .collect();
        let (status, body) = api.upsert(json!({"namespace": "r", "vectors": vectors})).await;
        assert_eq!(status, 200, "{body}");
    }
    let cosine = |a: &[f32], b: &[f32]| {
        let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
        let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
        let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
        dot / (na * nb)
    };
    // Unfiltered; 1 % selective (200 records: the planner scans them exactly); and a
    // quarter (5,000 records, beyond what it scans: the filter runs inside the walk).
    let passes = |filtered: &str, n: usize| match filtered {
        "1 %" => n % 100 == 7,
        "25 %" => n % 100 < 25,
        _ => true,
    };
    for (filtered, filter) in [
        ("none", Value::Null),
        ("1 %", json!({"bucket": 7})),
        ("25 %", json!({"bucket": {"$lt": 25}})),
    ] {
        let (mut hits, mut total) = (0usize, 0usize);
        for q in 0..200 {
            let query: Vec<f32> = (0..128).map(|_| rng.random_range(-1.0f32..1.0)).collect();
            let mut truth: Vec<(f32, usize)> = data
                .iter()
                .enumerate()
                .filter(|(n, _)| passes(filtered, *n))
                .map(|(n, v)| (cosine(&query, v), n))
                .collect();
            truth.sort_by(|a, b| b.0.total_cmp(&a.0));
            let expected: std::collections::HashSet<String> =
                truth.iter().take(10).map(|(_, n)| n.to_string()).collect();
            let mut body = json!({"namespace": "r", "vector": query, "top_k": 10, "include_metadata": false});
            if !filter.is_null() {
                body["filter"] = filter.clone();
            }
            let (status, response) = api.search(body).await;
            assert_eq!(status, 200, "query {q}: {response}");
            let got = match_ids(&response);
            let distinct: std::collections::HashSet<&str> = got.iter().copied().collect();
            assert_eq!(
                (got.len(), distinct.len()),
                (10, 10),
                "query {q} (filtered: {filtered}) gives 10 distinct matches: {got:?}"
            );
            assert!(
                got.iter().all(|id| passes(filtered, id.parse().expect("a numeric id"))),
                "query {q} (filtered: {filtered}): every match passes the filter: {got:?}"
            );
            hits += got.iter().filter(|id| expected.contains(**id)).count();
            total += expected.len();
        }
        let recall = hits as f64 / total as f64;
        eprintln!("recall@10 (filtered: {filtered}) = {recall:.4}");
        assert!(recall >= 0.95, "recall@10 {recall:.4} < 0.95 (filtered: {filtered})");
    }
}

/// Idempotency keys live 24 hours: a pod deletes those past their time, with their
/// stored answers, in the background.
async fn expired_idempotency_keys_are_deleted_in_the_background(app: TestApp) {
    use chrono::Duration;
    let t = app.tenant(4, "cosine").await;
    let project: quiver_common::domain::ProjectId = t.project.parse().expect("project id");
    let answer = quiver_store::StoredResponse {
        status: 200,
        body: b"{}".to_vec(),
    };
    for (key, ttl) in [("expired", Duration::milliseconds(-1)), ("live", Duration::hours(24))] {
        let begun = app
            .store
            .begin(project, key, "h", Duration::seconds(30), ttl)
            .await
            .expect("begin");
        let quiver_store::IdempotencyBegin::Started { claim, .. } = begun else {
            panic!("expected a start, got {begun:?}");
        };
        assert!(
            app.store
                .complete(project, key, claim, &answer)
                .await
                .expect("complete")
        );
    }
    quiver_data_plane::spawn_housekeeping(
        std::sync::Arc::downgrade(&app.store),
        std::time::Duration::from_millis(50),
    );
    // Several rounds of the task later, nothing expired is left for a purge to find.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(app.store.purge_expired().await.expect("purge"), 0, "the task purged it");
    // The live one is kept, and replays.
    let live = app
        .store
        .begin(project, "live", "h", Duration::seconds(30), Duration::hours(24))
        .await;
    assert_eq!(live.expect("begin"), quiver_store::IdempotencyBegin::Replay(answer));
}

/// The index holds vectors in 16 bits; a search's `include_values` gives the values as
/// written, as a query by id does.
async fn a_search_gives_the_values_as_written(app: TestApp) {
    let Tenant { readwrite: key, .. } = app.tenant(4, "cosine").await;
    let api = VectorApi::new(&app, &key);
    let values = json!([0.11, 0.22, 0.33, 0.44]);
    let upsert = json!({"namespace": "ns", "vectors": [
        {"id": "a", "values": values, "metadata": {"n": 1}},
        {"id": "b", "values": [0.9, -0.1, 0.2, 0.3]},
    ]});
    let (status, body) = api.upsert(upsert).await;
    assert_eq!(status, 200, "{body}");
    let search = json!({"namespace": "ns", "vector": values, "top_k": 2, "include_values": true});
    let (status, body) = api.search(search).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["matches"][0]["id"], "a");
    assert_eq!(body["matches"][0]["values"], values, "{body}");
    assert_eq!(body["matches"][0]["metadata"], json!({"n": 1}));
    assert_eq!(body["matches"][1]["values"], json!([0.9, -0.1, 0.2, 0.3]), "{body}");
    let (_, fetched) = api.query(json!({"namespace": "ns", "id": "a"})).await;
    assert_eq!(fetched["values"], body["matches"][0]["values"]);
}

async fn with_the_records_store_gone_reads_serve_from_memory_and_writes_are_503(app: TestApp) {
    let Tenant {
        readwrite: key,
        readonly: unchecked,
        ..
    } = app.tenant(4, "cosine").await;
    let api = VectorApi::new(&app, &key);
    let upsert = json!({"namespace": "ns", "vectors": [{"id": "a", "values": [1, 2, 3, 4]}]});
    let search = json!({"namespace": "ns", "vector": [1, 2, 3, 4], "top_k": 1});
    let (status, body) = api.upsert(upsert.clone()).await;
    assert_eq!((status, &body["upserted_count"]), (200, &json!(1)), "{body}");
    let (status, body) = api.search(search.clone()).await;
    assert_eq!(status, 200, "the index is loaded and the key cached: {body}");
    assert_eq!(match_ids(&body), ["a"], "{body}");

    // Every connection to the records store goes away.
    app.store.close().await;

    let (status, body) = api.search(search).await;
    assert_eq!(status, 200, "searches keep serving from memory: {body}");
    assert_eq!(body["matches"][0]["id"], "a");
    // A search by id reads its vector from the records store.
    let by_id = json!({"namespace": "ns", "id": "a", "top_k": 1});
    let (status, body) = api.search(by_id).await;
    assert_error(status, &body, 503, "DATABASE_UNAVAILABLE");
    // A key this pod has not checked yet cannot be checked now: a 503, not a 401
    // that would tell the client its key is bad.
    let (status, body) = VectorApi::new(&app, &unchecked)
        .search(json!({"namespace": "ns", "vector": [1, 2, 3, 4]}))
        .await;
    assert_error(status, &body, 503, "DATABASE_UNAVAILABLE");
    // So does a search's include_values: the values as written are there.
    let with_values = json!({"namespace": "ns", "vector": [1, 2, 3, 4], "top_k": 1, "include_values": true});
    let (status, body) = api.search(with_values).await;
    assert_error(status, &body, 503, "DATABASE_UNAVAILABLE");
    let (status, body) = api.upsert(upsert).await;
    let message = assert_error(status, &body, 503, "DATABASE_UNAVAILABLE");
    assert!(
        !message.contains("sqlite") && !message.contains("postgres://"),
        "{message}"
    );
    // The pod still serves (searches from memory): it says so, degraded, and stays in
    // service, as every other pod sharing the store does.
    let (status, body) = read(
        app.data_request(0, Method::GET, "/readyz")
            .send()
            .await
            .expect("answer"),
    )
    .await;
    assert_eq!((status, &body["status"]), (200, &json!("degraded")), "{body}");
    assert_ne!(body["checks"]["storage"], "ok", "{body}");
}

async fn a_search_by_id_searches_with_the_stored_vector(app: TestApp) {
    let Tenant { readwrite: key, .. } = app.tenant(4, "cosine").await;
    let api = VectorApi::new(&app, &key);
    let upsert = json!({"namespace": "s", "vectors": [
        {"id": "a", "values": [1.0, 0.2, 0.0, 0.0], "metadata": {"side": "left"}},
        {"id": "b", "values": [0.9, 0.3, 0.1, 0.0], "metadata": {"side": "right"}},
        {"id": "c", "values": [0.0, 0.0, 1.0, 0.5], "metadata": {"side": "left"}},
    ]});
    let (status, body) = api.upsert(upsert).await;
    assert_eq!(status, 200, "{body}");

    // The same answer as a search with the vector's values, the vector itself first.
    let by_values = json!({"namespace": "s", "vector": [1.0, 0.2, 0.0, 0.0], "top_k": 3});
    let (_, expected) = api.search(by_values).await;
    let by_id = json!({"namespace": "s", "id": "a", "top_k": 3});
    let (status, body) = api.search(by_id).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["matches"], expected["matches"], "{body}");
    assert_eq!(match_ids(&body), ["a", "b", "c"], "{body}");
    assert!(body["matches"][0]["score"].as_f64().expect("a score") > 0.999, "{body}");

    // With a filter, the stored vector need not pass it.
    let filtered = json!({"namespace": "s", "id": "a", "top_k": 3, "filter": {"side": "right"}});
    let (status, body) = api.search(filtered).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["matches"].as_array().map(Vec::len), Some(1), "{body}");
    assert_eq!(body["matches"][0]["id"], "b", "{body}");

    // An id that is not stored is a 404; an id that is not an id, both or neither, a 400.
    let (status, body) = api.search(json!({"namespace": "s", "id": "nope"})).await;
    let message = assert_error(status, &body, 404, "NOT_FOUND");
    assert!(message.contains("\"nope\""), "{message}");
    for (request, says) in [
        (json!({"namespace": "s", "id": 7}), "ids must be strings"),
        (json!({"namespace": "s", "id": ""}), "1 to 512 bytes"),
        (
            json!({"namespace": "s", "id": "a", "vector": [1.0, 0.0, 0.0, 0.0]}),
            "both a vector and an id",
        ),
        (json!({"namespace": "s", "top_k": 3}), "no vector"),
    ] {
        let (status, body) = api.search(request.clone()).await;
        let message = assert_error(status, &body, 400, "VALIDATION_ERROR");
        assert!(message.contains(says), "{request}: {message}");
    }
}
