//! Plans and rate limits: per project, across pods, published by the control plane,
//! with `X-RateLimit-*` on every response and Redis outages survived.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};

use crate::support::assert_error;
use quiver_common::domain::ProjectId;
use quiver_data_plane::limits::{Budget, Kind, LocalBudget, RedisBudget};
use quiver_tests::app::{Backend, TestApp, read};
use quiver_tests::redis::PrivateRedis;

/// A Starter project (30 queries/min, 100 documents/min) of dimension 4 and a read-write key.
async fn starter(app: &TestApp) -> (String, String, String) {
    let session = app.signup().await;
    let project = app.project(&session).await;
    let (key, _) = app.key(&session, &project, "app_readwrite").await;
    (session, project, key)
}

struct Answer {
    status: u16,
    body: Value,
    limit: Option<u64>,
    remaining: Option<u64>,
    reset: Option<u64>,
    retry_after: Option<u64>,
}

async fn send(app: &TestApp, pod: usize, method: Method, path: &str, key: &str, body: Value) -> Answer {
    let response = app
        .data_request(pod, method, path)
        .header("x-api-key", key)
        .json(&body)
        .send()
        .await
        .expect("answer");
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
    };
    let (limit, remaining, reset, retry_after) = (
        header("x-ratelimit-limit"),
        header("x-ratelimit-remaining"),
        header("x-ratelimit-reset"),
        header("retry-after"),
    );
    let (status, body) = read(response).await;
    Answer {
        status,
        body,
        limit,
        remaining,
        reset,
        retry_after,
    }
}

async fn search(app: &TestApp, pod: usize, key: &str) -> Answer {
    send(
        app,
        pod,
        Method::POST,
        "/v1/vectors/search",
        key,
        json!({"vector": [0.1, 0.2, 0.3, 0.4], "top_k": 1}),
    )
    .await
}

async fn upsert(app: &TestApp, key: &str, count: usize, offset: usize) -> Answer {
    let vectors: Vec<Value> = (offset..offset + count)
        .map(|i| json!({"id": format!("v{i}"), "values": [0.1, 0.2, 0.3, i as f64 + 1.0]}))
        .collect();
    send(
        app,
        0,
        Method::POST,
        "/v1/vectors/upsert",
        key,
        json!({"vectors": vectors}),
    )
    .await
}

/// Writes one vector, then spends a Starter project's 30 queries: the next is refused.
async fn spend_the_starter_queries(app: &TestApp, key: &str) {
    assert_eq!(upsert(app, key, 1, 0).await.status, 200);
    for _ in 0..30 {
        assert_eq!(search(app, 0, key).await.status, 200);
    }
    assert_eq!(search(app, 0, key).await.status, 429);
}

/// Waits up to 2 s for pod 0 to give `key`'s project a query limit of `limit`, without
/// spending: a request refused before admission still carries the headers.
async fn wait_for_the_pod_to_say(app: &TestApp, key: &str, limit: u64) {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let bad = send(
            app,
            0,
            Method::POST,
            "/v1/vectors/search",
            key,
            json!({"vector": "nope"}),
        )
        .await;
        if bad.limit == Some(limit) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the pod still says {:?} after 2 s",
            bad.limit
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Moves the project to `plan` through the control plane.
async fn change_plan(app: &TestApp, session: &str, project: &str, plan: &str) -> (u16, Value) {
    app.control_call(
        Method::PATCH,
        &format!("/v1/projects/{project}"),
        Some(session),
        Some(json!({"plan": plan})),
    )
    .await
}

fn epoch_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}

async fn a_starter_project_admits_a_burst_of_30_queries_and_refuses_the_next(app: TestApp) {
    let (_, _, key) = starter(&app).await;
    assert_eq!(upsert(&app, &key, 1, 0).await.status, 200);
    for i in 0..30u64 {
        let answer = search(&app, 0, &key).await;
        assert_eq!(answer.status, 200, "query {i}: {}", answer.body);
        assert_eq!(answer.limit, Some(30));
        assert_eq!(answer.remaining, Some(29 - i), "query {i}");
        assert!(answer.reset.expect("reset") >= epoch_secs());
        if i == 10 {
            // Bad searches are refused before they count: the next query still finds
            // 18 left.
            for (path, body) in [
                ("/v1/vectors/search", json!({"vector": [0.1, "x", 0.3, 0.4]})),
                ("/api/v1/collections/docs/search", json!({"vector": [0.1, 0.2]})),
            ] {
                let bad = send(&app, 0, Method::POST, path, &key, body).await;
                assert_error(bad.status, &bad.body, 400, "VALIDATION_ERROR");
            }
        }
    }
    let refused = search(&app, 0, &key).await;
    let message = assert_error(refused.status, &refused.body, 429, "RATE_LIMITED");
    assert!(message.contains("30"), "{message}");
    let retry = refused.retry_after.expect("Retry-After");
    assert!((1..=2).contains(&retry), "one query comes back every 2 s: {retry}");
    assert_eq!((refused.limit, refused.remaining), (Some(30), Some(0)));

    let (_, _, other) = starter(&app).await;
    assert_eq!(upsert(&app, &other, 1, 0).await.status, 200);
    assert_eq!(
        search(&app, 0, &other).await.status,
        200,
        "another project is unaffected"
    );

    // A refused request of the first project still says where its budget stands, and
    // so does a response that took nothing from it (a 400 before admission).
    let bad = send(
        &app,
        0,
        Method::POST,
        "/v1/vectors/search",
        &key,
        json!({"vector": "nope"}),
    )
    .await;
    assert_eq!(bad.status, 400);
    assert_eq!(bad.limit, Some(30));
}

async fn writes_count_documents_and_a_batch_beyond_the_budget_is_refused_whole(app: TestApp) {
    let (_, _, key) = starter(&app).await;
    let first = upsert(&app, &key, 60, 0).await;
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!((first.limit, first.remaining), (Some(100), Some(40)));
    let refused = upsert(&app, &key, 60, 60).await;
    assert_error(refused.status, &refused.body, 429, "RATE_LIMITED");
    assert_eq!(refused.remaining, Some(40), "the refused batch took nothing");
    // 60 documents at 0.6 s each are back in 36 s (36.6 in a cluster, with the unit a
    // pod leases ahead): the budget is full again then, not a minute after the
    // refusal. A second more allows for rounding both ways.
    let reset = refused.reset.expect("reset");
    assert!(
        reset <= epoch_secs() + 38,
        "reset {reset} is more than 38 s from now ({})",
        epoch_secs()
    );
    let rest = upsert(&app, &key, 40, 60).await;
    assert_eq!(rest.status, 200, "the refused batch took nothing: {}", rest.body);
    let listed = send(&app, 0, Method::GET, "/v1/namespaces", &key, Value::Null).await;
    assert_eq!(listed.body["namespaces"][0]["vector_count"], 100, "{}", listed.body);

    let too_big = upsert(&app, &key, 101, 200).await;
    let message = assert_error(too_big.status, &too_big.body, 429, "RATE_LIMITED");
    assert!(
        message.contains("smaller"),
        "a batch over a minute's quota can never pass: {message}"
    );
}

async fn a_plan_change_takes_effect_within_a_second(app: TestApp) {
    let (session, project, key) = starter(&app).await;
    spend_the_starter_queries(&app, &key).await;
    let (status, body) = change_plan(&app, &session, &project, "developer").await;
    assert_eq!(status, 200, "{body}");
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let answer = search(&app, 0, &key).await;
        if answer.status == 200 {
            assert_eq!(answer.limit, Some(300));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still refused a second after the plan change"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A new plan keeps the units spent of the old one, not the fraction: an exhausted
/// Starter project (30 queries spent) that upgrades to Developer (300) may spend the
/// other 270 at once, the same standalone and across pods.
async fn a_plan_change_keeps_the_units_spent_not_the_fraction(app: TestApp) {
    let (session, project, key) = starter(&app).await;
    spend_the_starter_queries(&app, &key).await;
    let (status, body) = change_plan(&app, &session, &project, "developer").await;
    assert_eq!(status, 200, "{body}");
    wait_for_the_pod_to_say(&app, &key, 300).await;
    let first = search(&app, 0, &key).await;
    assert_eq!(first.status, 200, "the upgrade admits at once: {}", first.body);
    let remaining = first.remaining.expect("remaining");
    assert!(
        (265..=269).contains(&remaining),
        "300 less the 30 spent at Starter and this one, give or take what came back meanwhile: {remaining}"
    );
    for i in 0..100 {
        let answer = search(&app, 0, &key).await;
        assert_eq!(answer.status, 200, "query {i} after the upgrade: {}", answer.body);
    }
}

/// Limits published for another plan than the project's (a plan change whose own
/// limits never reached the bus, or were overwritten by older ones) do not hold: the
/// project's plan in the store does.
async fn limits_of_another_plan_than_the_projects_give_way_to_its_plan(app: TestApp) {
    let (_, project, key) = starter(&app).await;
    assert_eq!(upsert(&app, &key, 1, 0).await.status, 200);
    let project_id: quiver_common::domain::ProjectId = project.parse().expect("project id");
    app.bus
        .publish_limits(quiver_common::bus::ProjectLimits {
            project_id,
            plan_id: "stale-plan".into(),
            queries_per_minute: 1,
            documents_per_minute: 1,
        })
        .await
        .expect("publish");
    // Then limits for another project, which the pod does apply: once it says so, it
    // has heard the stale ones too (the bus delivers notices in order).
    let (_, other, other_key) = starter(&app).await;
    app.bus
        .publish_limits(quiver_common::bus::ProjectLimits {
            project_id: other.parse().expect("project id"),
            plan_id: "starter".into(),
            queries_per_minute: 7,
            documents_per_minute: 7,
        })
        .await
        .expect("publish");
    wait_for_the_pod_to_say(&app, &other_key, 7).await;
    for i in 0..30 {
        let answer = search(&app, 0, &key).await;
        assert_eq!(
            (answer.status, answer.limit),
            (200, Some(30)),
            "query {i}: {}",
            answer.body
        );
    }
    assert_eq!(search(&app, 0, &key).await.status, 429);
}

/// A delete by filter cannot be split, so it takes at most a minute's budget however
/// many records it matches; a delete by ids can be, and is held to the budget.
async fn a_delete_by_filter_takes_at_most_a_minutes_budget(app: TestApp) {
    let (_, project, key) = starter(&app).await;
    // 150 records, more than a Starter minute's 100 documents, written past the API (a
    // budget spent on writing them would stay spent).
    let records: Vec<quiver_store::RecordWrite> = (0..150)
        .map(|i| quiver_store::RecordWrite {
            id: format!("v{i}"),
            vector: vec![0.1, 0.2, 0.3, i as f32 + 1.0],
            metadata: json!({"old": true}).as_object().cloned().unwrap_or_default(),
            content: None,
        })
        .collect();
    let project_id = project.parse().expect("project id");
    app.store.upsert(project_id, "default", &records).await.expect("upsert");

    let ids: Vec<String> = (0..101).map(|i| format!("v{i}")).collect();
    let by_ids = send(&app, 0, Method::DELETE, "/v1/vectors/delete", &key, json!({"ids": ids})).await;
    let message = assert_error(by_ids.status, &by_ids.body, 429, "RATE_LIMITED");
    assert!(message.contains("smaller"), "{message}");
    let by_filter = send(
        &app,
        0,
        Method::DELETE,
        "/v1/vectors/delete",
        &key,
        json!({"filter": {"old": true}}),
    )
    .await;
    assert_eq!(by_filter.status, 200, "{}", by_filter.body);
    assert_eq!(by_filter.body["deleted_count"], 150);
    assert_eq!(by_filter.remaining, Some(0), "it took the whole budget");
    let next = upsert(&app, &key, 1, 0).await;
    assert_error(next.status, &next.body, 429, "RATE_LIMITED");
}

/// The plan's namespace cap holds against writes sent all at once: a Starter project
/// (10 namespaces) sent 20 upserts into new namespaces together makes exactly 10.
async fn concurrent_writes_cannot_pass_the_namespace_cap_together(app: TestApp) {
    let (_, _, key) = starter(&app).await;
    let answers = futures::future::join_all((0..20).map(|n| {
        let body = json!({"namespace": format!("ns{n}"), "vectors": [{"id": "a", "values": [0.1, 0.2, 0.3, 0.4]}]});
        send(&app, 0, Method::POST, "/v1/vectors/upsert", &key, body)
    }))
    .await;
    let mut made = 0;
    for answer in answers {
        if answer.status == 200 {
            made += 1;
        } else {
            let message = assert_error(answer.status, &answer.body, 403, "FORBIDDEN");
            assert!(message.contains("allows 10 namespaces"), "{message}");
        }
    }
    assert_eq!(made, 10);
    let listed = send(&app, 0, Method::GET, "/v1/namespaces", &key, Value::Null).await;
    assert_eq!(
        listed.body["namespaces"].as_array().map(Vec::len),
        Some(10),
        "{}",
        listed.body
    );
}

/// An NQL statement is a query, and each row it writes a document, as the vector and
/// document APIs count them: a statement is no way around the documents budget.
async fn nql_writes_count_a_document_per_row(app: TestApp) {
    let (_, _, key) = starter(&app).await;
    let nql = async |query: &str, params: Value| {
        send(
            &app,
            0,
            Method::POST,
            "/api/v1/query",
            &key,
            json!({"query": query, "params": params}),
        )
        .await
    };
    let insert = |from: usize, n: usize| {
        let rows: Vec<String> = (from..from + n).map(|i| format!("('d{i}', 'text {i}', $1)")).collect();
        format!("INSERT INTO docs (id, content, embedding) VALUES {}", rows.join(", "))
    };
    let embedding = json!([[0.1, 0.2, 0.3, 0.4]]);
    let count = async || nql("SELECT COUNT(*) FROM docs", json!([])).await.body["rows"].clone();

    // The collection, made by a first document: d0.
    let made = send(
        &app,
        0,
        Method::POST,
        "/v1/vectors/upsert",
        &key,
        json!({"namespace": "docs", "vectors": [{"id": "d0", "values": [0.1, 0.2, 0.3, 0.4]}]}),
    )
    .await;
    assert_eq!(made.status, 200, "{}", made.body);
    let first = nql(&insert(1, 59), embedding.clone()).await;
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(
        (first.limit, first.remaining),
        (Some(100), Some(40)),
        "1 + 59 documents"
    );
    let refused = nql(&insert(60, 41), embedding.clone()).await;
    assert_error(refused.status, &refused.body, 429, "RATE_LIMITED");
    assert_eq!(
        count().await,
        json!([{"count": 60}]),
        "the refused statement wrote nothing"
    );

    let ids: Vec<String> = (0..50).map(|i| format!("'d{i}'")).collect();
    let delete = nql(&format!("DELETE FROM docs WHERE id IN ({})", ids.join(", ")), json!([])).await;
    assert_error(delete.status, &delete.body, 429, "RATE_LIMITED");
    let update = nql("UPDATE docs SET metadata = '{\"seen\": true}'", json!([])).await;
    assert_error(update.status, &update.body, 429, "RATE_LIMITED");
    assert_eq!(count().await, json!([{"count": 60}]));
    let one = nql("DELETE FROM docs WHERE id = 'd0'", json!([])).await;
    assert_eq!(one.status, 200, "{}", one.body);
    assert_eq!((one.limit, one.remaining), (Some(100), Some(39)), "one document");
    assert_eq!(count().await, json!([{"count": 59}]));
}

mod standalone {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writes_cannot_pass_the_namespace_cap_together() {
        super::concurrent_writes_cannot_pass_the_namespace_cap_together(TestApp::start(Backend::Sqlite).await).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn nql_writes_count_a_document_per_row() {
        super::nql_writes_count_a_document_per_row(TestApp::start(Backend::Sqlite).await).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_starter_project_admits_a_burst_of_30_queries_and_refuses_the_next() {
        super::a_starter_project_admits_a_burst_of_30_queries_and_refuses_the_next(
            TestApp::start(Backend::Sqlite).await,
        )
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_count_documents_and_a_batch_beyond_the_budget_is_refused_whole() {
        super::writes_count_documents_and_a_batch_beyond_the_budget_is_refused_whole(
            TestApp::start(Backend::Sqlite).await,
        )
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_plan_change_takes_effect_within_a_second() {
        super::a_plan_change_takes_effect_within_a_second(TestApp::start(Backend::Sqlite).await).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn limits_of_another_plan_than_the_projects_give_way_to_its_plan() {
        super::limits_of_another_plan_than_the_projects_give_way_to_its_plan(TestApp::start(Backend::Sqlite).await)
            .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_delete_by_filter_takes_at_most_a_minutes_budget() {
        super::a_delete_by_filter_takes_at_most_a_minutes_budget(TestApp::start(Backend::Sqlite).await).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_plan_change_keeps_the_units_spent_not_the_fraction() {
        super::a_plan_change_keeps_the_units_spent_not_the_fraction(TestApp::start(Backend::Sqlite).await).await;
    }
}

mod cluster {
    use super::*;

    crate::support::on_a_cluster_pod!(
        concurrent_writes_cannot_pass_the_namespace_cap_together,
        a_starter_project_admits_a_burst_of_30_queries_and_refuses_the_next,
        writes_count_documents_and_a_batch_beyond_the_budget_is_refused_whole,
        a_plan_change_takes_effect_within_a_second,
        limits_of_another_plan_than_the_projects_give_way_to_its_plan,
        a_plan_change_keeps_the_units_spent_not_the_fraction,
        a_delete_by_filter_takes_at_most_a_minutes_budget,
    );

    /// A budget of its own in the machine's Redis, as a pod would have.
    async fn redis_budget(prefix: &str) -> RedisBudget {
        RedisBudget::connect(&quiver_tests::redis::url().await, prefix, 1)
            .await
            .expect("Redis budget")
    }

    /// The Redis budget rescales a budget spent at another quota exactly as the local
    /// one does: the units spent carry over, at most all of the new quota.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_redis_budget_carries_the_units_spent_to_a_new_quota_as_a_local_one_does() {
        let redis = redis_budget(&quiver_tests::redis::prefix()).await;
        let local = LocalBudget::default();
        let project = ProjectId::new();
        let mut steps = Vec::new();
        for (quota, n) in [(30, 30), (30, 1), (300, 1), (300, 200), (300, 70), (30, 1)] {
            let (from_redis, from_local) = (
                redis.take(project, Kind::Queries, quota, n).await,
                local.take_now(project, Kind::Queries, quota, n),
            );
            steps.push((quota, n, from_redis.admitted(), from_redis.remaining));
            assert_eq!(
                (from_redis.admitted(), from_redis.remaining, from_redis.limit),
                (from_local.admitted(), from_local.remaining, from_local.limit),
                "taking {n} at {quota}/min; so far (quota, n, admitted, remaining): {steps:?}"
            );
        }
        // 30 spent at Starter, then 1 + 200 of Developer's 300 (70 more are refused
        // with 69 left); back at Starter, 231 spent are all of it.
        assert_eq!(
            steps,
            [
                (30, 30, true, 0),
                (30, 1, false, 0),
                (300, 1, true, 269),
                (300, 200, true, 69),
                (300, 70, false, 69),
                (30, 1, false, 0),
            ]
        );
        // A request still at the smaller quota (a pod that has not heard of the plan
        // change yet) is refused without storing its view: back at 300, what was left
        // is left, not refilled to the 270 the cap at 30 would leave.
        // (68 left less this one; one fewer for the unit this pod had leased at 300,
        // dropped with its lease at 30 and still spent in Redis; more if any refilled.)
        let back = redis.take(project, Kind::Queries, 300, 1).await;
        assert!(back.admitted());
        assert!((66..=70).contains(&back.remaining), "{back:?}");
        // Standalone's budget the same (without the leased unit).
        let back = local.take_now(project, Kind::Queries, 300, 1);
        assert!(back.admitted());
        assert!((67..=70).contains(&back.remaining), "{back:?}");
    }

    /// Units a pod leased are good only while Redis counts them as spent: once its
    /// budget is full again, another pod may spend all of it, and the first pod's
    /// leftover lease is gone rather than admitted on top.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn leased_units_expire_once_redis_has_refilled_them() {
        let prefix = quiver_tests::redis::prefix();
        let (pod_a, pod_b) = (redis_budget(&prefix).await, redis_budget(&prefix).await);
        let project = ProjectId::new();
        // 600 a minute: one back every 100 ms; a request leases 3 more than it needs.
        let first = pod_a.take(project, Kind::Queries, 600, 1).await;
        assert_eq!((first.admitted(), first.remaining), (true, 599), "{first:?}");
        // The 4 units are back in Redis after 400 ms.
        tokio::time::sleep(Duration::from_millis(600)).await;
        let all = pod_b.take(project, Kind::Queries, 600, 600).await;
        assert!(all.admitted(), "the whole budget is back: {all:?}");
        // The three units pod A still holds would admit these three from memory; Redis
        // has them back only 300 ms after pod B spent them (a margin for a slow machine).
        let after = pod_a.take(project, Kind::Queries, 600, 3).await;
        assert!(
            !after.admitted(),
            "pod A's old lease would make 603 in a burst of 600: {after:?}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_pods_together_hold_the_plans_rate() {
        let app = TestApp::cluster(2).await;
        let session = app.signup().await;
        let (status, body) = app
            .control_call(
                Method::POST,
                "/v1/projects",
                Some(&session),
                Some(json!({"name": "busy", "dimension": 4, "metric": "cosine", "plan": "developer"})),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        let project = body["id"].as_str().expect("id").to_owned();
        let (key, _) = app.key(&session, &project, "app_readwrite").await;
        assert_eq!(upsert(&app, &key, 1, 0).await.status, 200);

        // Developer: 300 queries a minute, 5 a second after the burst. Both pods are
        // hammered for six seconds; together they may admit the burst plus six seconds.
        let started = Instant::now();
        let window = Duration::from_secs(6);
        let mut tasks = Vec::new();
        for pod in 0..2 {
            for _ in 0..4 {
                let (http, base, key) = (app.http.clone(), app.data[pod].clone(), key.clone());
                tasks.push(tokio::spawn(async move {
                    let mut admitted = 0u32;
                    while started.elapsed() < window {
                        let status = http
                            .post(format!("{base}/v1/vectors/search"))
                            .header("x-api-key", &key)
                            .json(&json!({"vector": [0.1, 0.2, 0.3, 0.4], "top_k": 1}))
                            .send()
                            .await
                            .expect("answer")
                            .status()
                            .as_u16();
                        match status {
                            200 => admitted += 1,
                            429 => {}
                            other => panic!("unexpected status {other}"),
                        }
                    }
                    (pod, admitted)
                }));
            }
        }
        let mut per_pod = [0u32; 2];
        for task in tasks {
            let (pod, admitted) = task.await.expect("client task");
            per_pod[pod] += admitted;
        }
        let elapsed = started.elapsed().as_secs_f64();
        let allowed = 300.0 + 5.0 * elapsed;
        let admitted = f64::from(per_pod[0] + per_pod[1]);
        assert!(
            (allowed * 0.9..=allowed * 1.1).contains(&admitted),
            "admitted {admitted} ({per_pod:?} per pod) in {elapsed:.1} s; the plan allows {allowed:.0}"
        );
        assert!(per_pod.iter().all(|n| *n > 0), "both pods served: {per_pod:?}");
    }

    /// Pod `pod`'s `/readyz`: its status and body.
    async fn readyz(app: &TestApp, pod: usize) -> (u16, Value) {
        read(
            app.data_request(pod, Method::GET, "/readyz")
                .send()
                .await
                .expect("answer"),
        )
        .await
    }

    /// Waits for pod `pod` to say it is `ready` (Redis answering again: the limiter's
    /// heartbeat finds it, the bus subscribes by itself), 15 s at most.
    async fn ready_within_15_s(app: &TestApp, pod: usize) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let (_, body) = readyz(app, pod).await;
            if body["status"] == "ready" {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "pod {pod} not ready 15 s after Redis came: {body}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pods_keep_enforcing_limits_while_redis_is_down_and_recover_when_it_returns() {
        let mut redis = PrivateRedis::start().await;
        let app = TestApp::cluster_on(1, redis.url()).await;
        let (_, _, key) = starter(&app).await;
        assert_eq!(upsert(&app, &key, 1, 0).await.status, 200);
        for _ in 0..10 {
            assert_eq!(search(&app, 0, &key).await.status, 200);
        }

        redis.stop();
        // Without Redis the pod enforces its share of the plan by itself: the whole
        // Starter quota (it is the only pod), from a fresh local budget.
        let mut admitted = 0;
        for _ in 0..40 {
            match search(&app, 0, &key).await.status {
                200 => admitted += 1,
                429 => {}
                other => panic!("unexpected status {other} while Redis is down"),
            }
        }
        assert!(
            (29..=31).contains(&admitted),
            "admitted {admitted} of 40 while Redis was down"
        );
        let (status, body) = readyz(&app, 0).await;
        assert_eq!((status, &body["status"]), (200, &json!("degraded")), "{body}");
        assert!(
            body["checks"]["rate_limits"].as_str().is_some_and(|why| why != "ok"),
            "readyz names the limiter: {body}"
        );

        redis.resume().await;
        ready_within_15_s(&app, 0).await;
        // Redis came back empty: a fresh shared budget.
        let answer = search(&app, 0, &key).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        assert_eq!(answer.limit, Some(30));
    }

    /// Pods can start, restart or scale out while Redis is down: each serves, enforcing
    /// the plan by itself and saying so on `/readyz`, and joins the cluster's shared
    /// budget and bus when Redis comes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pods_start_while_redis_is_down_and_join_it_when_it_comes() {
        let mut redis = PrivateRedis::start().await;
        redis.stop();
        let app = TestApp::cluster_on(2, redis.url()).await;
        let (_, _, key) = starter(&app).await;
        assert_eq!(upsert(&app, &key, 1, 0).await.status, 200);
        for pod in 0..2 {
            let answer = search(&app, pod, &key).await;
            assert_eq!(answer.status, 200, "pod {pod} serves without Redis: {}", answer.body);
            let (status, body) = readyz(&app, pod).await;
            assert_eq!((status, &body["status"]), (200, &json!("degraded")), "{body}");
            for check in ["bus", "rate_limits"] {
                assert!(
                    body["checks"][check].as_str().is_some_and(|why| why != "ok"),
                    "pod {pod}'s readyz names the {check}: {body}"
                );
            }
        }
        // Never having counted the pods, each takes the two it was told of: half of the
        // Starter plan's 30 queries each (one spent above), not all 30.
        for pod in 0..2 {
            let mut admitted = 1;
            for _ in 0..30 {
                let answer = search(&app, pod, &key).await;
                match answer.status {
                    200 => admitted += 1,
                    429 => assert_eq!(answer.limit, Some(30), "the headers speak of the plan"),
                    other => panic!("unexpected status {other}: {}", answer.body),
                }
            }
            assert!((15..=16).contains(&admitted), "pod {pod} admitted {admitted} alone");
        }

        redis.resume().await;
        for pod in 0..2 {
            ready_within_15_s(&app, pod).await;
        }
        // One budget for both pods now: the Starter plan's 30-query burst, shared (give
        // or take a unit leased or refilled meanwhile).
        let mut admitted = 0;
        for i in 0..60 {
            match search(&app, i % 2, &key).await.status {
                200 => admitted += 1,
                429 => {}
                other => panic!("unexpected status {other}"),
            }
        }
        assert!(
            (28..=33).contains(&admitted),
            "admitted {admitted} of 60 across the two pods"
        );
    }

    /// Sends what a Redis outage could hold up (a search, a write, a plan change) and
    /// returns the longest any of them took; each must answer, limited or not.
    async fn a_round_of_requests(app: &TestApp, session: &str, project: &str, key: &str, round: usize) -> Duration {
        let mut longest = Duration::ZERO;
        let started = Instant::now();
        let answer = search(app, 0, key).await;
        assert!(
            matches!(answer.status, 200 | 429),
            "search in round {round}: {}",
            answer.body
        );
        longest = longest.max(started.elapsed());
        let started = Instant::now();
        let answer = upsert(app, key, 1, round).await;
        assert!(
            matches!(answer.status, 200 | 429),
            "upsert in round {round}: {}",
            answer.body
        );
        longest = longest.max(started.elapsed());
        let started = Instant::now();
        let plan = if round.is_multiple_of(2) {
            "developer"
        } else {
            "starter"
        };
        let (status, body) = change_plan(app, session, project, plan).await;
        assert_eq!(status, 200, "plan change in round {round}: {body}");
        longest.max(started.elapsed())
    }

    /// While Redis hangs (it accepts connections and answers nothing) and then while it
    /// is gone, requests neither wait out the Redis client's reconnection backoff nor
    /// fail: the limiter decides on the pod alone, and announcements give up. The bound
    /// is on hanging, not on speed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn requests_answer_promptly_while_redis_hangs_or_is_down() {
        let bound = Duration::from_secs(2);
        let mut server = PrivateRedis::start().await;
        let app = TestApp::cluster_on(1, server.url()).await;
        let (session, project, key) = starter(&app).await;
        let (_, revoked) = app.key(&session, &project, "app_readonly").await;
        assert_eq!(upsert(&app, &key, 1, 0).await.status, 200);

        let pauser = redis::Client::open(server.url()).expect("a Redis URL");
        let mut pauser = pauser.get_multiplexed_async_connection().await.expect("Redis connects");
        redis::cmd("CLIENT")
            .arg("PAUSE")
            .arg(4000)
            .arg("ALL")
            .query_async::<()>(&mut pauser)
            .await
            .expect("CLIENT PAUSE");
        let hung = Instant::now();
        let mut round = 1;
        while hung.elapsed() < Duration::from_secs(3) {
            let longest = a_round_of_requests(&app, &session, &project, &key, round).await;
            assert!(longest < bound, "round {round} with Redis hung took {longest:?}");
            round += 1;
        }

        server.stop();
        let down = Instant::now();
        while down.elapsed() < Duration::from_secs(5) {
            let longest = a_round_of_requests(&app, &session, &project, &key, round).await;
            assert!(longest < bound, "round {round} with Redis down took {longest:?}");
            round += 1;
        }
        // A revocation is done once the store has it: the announcement failing does not
        // fail it, and pods find it by polling.
        let started = Instant::now();
        let (status, body) = app
            .control_call(
                Method::DELETE,
                &format!("/v1/projects/{project}/keys/{revoked}"),
                Some(&session),
                None,
            )
            .await;
        assert_eq!(status, 204, "{body}");
        assert!(started.elapsed() < bound, "revoking took {:?}", started.elapsed());

        server.resume().await;
        ready_within_15_s(&app, 0).await;
    }

    /// While Redis is down, each of two pods enforces half the plan; its headers still
    /// speak of the plan, a batch the plan allows is told to retry rather than split,
    /// and a delete by filter takes at most the pod's half.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn while_redis_is_down_a_pod_holds_its_share_and_speaks_of_the_plan() {
        let mut server = PrivateRedis::start().await;
        let app = TestApp::cluster_on(2, server.url()).await;
        let (_, project, key) = starter(&app).await;
        let records: Vec<quiver_store::RecordWrite> = (0..80)
            .map(|i| quiver_store::RecordWrite {
                id: format!("v{i}"),
                vector: vec![0.1, 0.2, 0.3, i as f32 + 1.0],
                metadata: json!({"old": true}).as_object().cloned().unwrap_or_default(),
                content: None,
            })
            .collect();
        let project_id = project.parse().expect("project id");
        app.store.upsert(project_id, "default", &records).await.expect("upsert");
        // Both pods count each other by their heartbeats, every two seconds.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        server.stop();

        let query = search(&app, 1, &key).await;
        assert_eq!((query.status, query.limit), (200, Some(30)), "{}", query.body);
        // 60 documents: within Starter's 100, more than the pod's 50.
        let vectors: Vec<Value> = (100..160)
            .map(|i| json!({"id": format!("v{i}"), "values": [0.1, 0.2, 0.3, i as f64]}))
            .collect();
        let batch = send(
            &app,
            1,
            Method::POST,
            "/v1/vectors/upsert",
            &key,
            json!({"vectors": vectors}),
        )
        .await;
        let message = assert_error(batch.status, &batch.body, 429, "RATE_LIMITED");
        assert!(!message.contains("smaller"), "the plan allows the batch: {message}");
        assert!(batch.retry_after.is_some_and(|secs| secs >= 1));
        assert_eq!(batch.limit, Some(100));
        let by_filter = send(
            &app,
            1,
            Method::DELETE,
            "/v1/vectors/delete",
            &key,
            json!({"filter": {"old": true}}),
        )
        .await;
        assert_eq!(by_filter.status, 200, "{}", by_filter.body);
        assert_eq!(by_filter.body["deleted_count"], 80);
        assert_eq!(
            (by_filter.limit, by_filter.remaining),
            (Some(100), Some(0)),
            "it took the pod's whole share"
        );
    }
}
