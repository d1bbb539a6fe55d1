//! Data-plane authentication and authorization, over HTTP on both backends, and key
//! revocation across pods through Redis.

use std::time::{Duration, Instant};

use quiver_common::domain::{Metric, ProjectId};
use quiver_store::{NewProject, RecordWrite};
use quiver_tests::app::{JWT_SECRET, TestApp, read};
use reqwest::Method;
use serde_json::{Value, json};

use crate::support::{assert_error, on_both_backends};

on_both_backends!(
    keys_are_accepted_in_every_documented_place,
    missing_malformed_unknown_and_wrong_keys_are_401s,
    each_role_has_exactly_its_scopes,
    the_project_always_comes_from_the_credential,
    revoked_keys_are_refused_at_once,
    expired_keys_are_refused,
    project_tokens_carry_scopes_and_namespaces,
    forged_expired_and_foreign_tokens_are_401s,
    deleting_a_project_stops_its_keys,
);

async fn list(app: &TestApp, pod: usize, key: &str) -> (u16, Value) {
    read(
        app.data_request(pod, Method::GET, "/v1/namespaces")
            .header("x-api-key", key)
            .send()
            .await
            .expect("answer"),
    )
    .await
}

/// Polls pod `pod` until `key` is refused, failing if that takes a second or more:
/// the promise is that a revocation holds on every pod within one second.
async fn assert_refused_within_a_second(app: &TestApp, pod: usize, key: &str, since: Instant) -> Value {
    loop {
        let (status, body) = list(app, pod, key).await;
        if status == 401 {
            assert_error(status, &body, 401, "UNAUTHORIZED");
            return body;
        }
        assert!(
            since.elapsed() < Duration::from_secs(1),
            "pod {pod} still accepts the key after a second"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn delete_namespace(app: &TestApp, key: &str, namespace: &str) -> (u16, Value) {
    let path = format!("/v1/namespaces/{namespace}");
    read(
        app.data_request(0, Method::DELETE, &path)
            .bearer_auth(key)
            .send()
            .await
            .expect("answer"),
    )
    .await
}

async fn seed(app: &TestApp, project: &str, namespace: &str) {
    let project: ProjectId = project.parse().expect("project id");
    let record = RecordWrite {
        id: "sku-1".into(),
        vector: vec![0.11, 0.22, 0.33, 0.44],
        metadata: Default::default(),
        content: None,
    };
    app.store.upsert(project, namespace, &[record]).await.expect("seed");
}

async fn keys_are_accepted_in_every_documented_place(app: TestApp) {
    let session = app.signup().await;
    let project = app.project(&session).await;
    let (key, _) = app.key(&session, &project, "app_readonly").await;
    seed(&app, &project, "products").await;

    let header = app
        .data_request(0, Method::GET, "/v1/namespaces")
        .header("x-api-key", &key);
    let bearer = app
        .data_request(0, Method::GET, "/v1/namespaces")
        .header("authorization", format!("Bearer {key}"));
    let query = app.data_request(0, Method::GET, &format!("/v1/namespaces?api_key={key}"));
    let shouting = app
        .data_request(0, Method::GET, "/v1/namespaces")
        .header("authorization", format!("BEARER {key}"));
    // A proxy's own Authorization (another scheme) leaves the query's key to count.
    let behind_basic_auth = app
        .data_request(0, Method::GET, &format!("/v1/namespaces?api_key={key}"))
        .header("authorization", "Basic cHJveHk6cGFzcw==");
    for request in [header, bearer, query, shouting, behind_basic_auth] {
        let (status, body) = read(request.send().await.expect("answer")).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            body["namespaces"],
            json!([{"name": "products", "vector_count": 1, "seq": 1}])
        );
    }
}

async fn missing_malformed_unknown_and_wrong_keys_are_401s(app: TestApp) {
    let session = app.signup().await;
    let project = app.project(&session).await;
    let (key, id) = app.key(&session, &project, "admin").await;
    let wrong_secret = format!("qv_live_{id}_{}", "A".repeat(32));
    let unknown = format!("qv_live_{}_{}", "0".repeat(16), "A".repeat(32));

    let (status, body) = read(
        app.data_request(0, Method::GET, "/v1/namespaces")
            .send()
            .await
            .expect("answer"),
    )
    .await;
    let message = assert_error(status, &body, 401, "UNAUTHORIZED");
    assert!(message.contains("x-api-key"), "{message}");
    for bad in [
        "",
        "garbage",
        "ndb_live_your_api_key_here",
        &unknown,
        &wrong_secret,
        &key[..key.len() - 1],
    ] {
        let (status, body) = list(&app, 0, bad).await;
        assert_error(status, &body, 401, "UNAUTHORIZED");
        assert!(!body.to_string().contains(&key[20..]), "the error echoes no secret");
    }
    let (status, body) = read(
        app.data_request(0, Method::GET, "/v1/namespaces")
            .header("authorization", format!("Basic {key}"))
            .send()
            .await
            .expect("answer"),
    )
    .await;
    assert_error(status, &body, 401, "UNAUTHORIZED");
    assert_eq!(
        list(&app, 0, &key).await.0,
        200,
        "the real key still works after the failures"
    );
}

async fn each_role_has_exactly_its_scopes(app: TestApp) {
    let session = app.signup().await;
    let project = app.project(&session).await;
    seed(&app, &project, "a").await;
    seed(&app, &project, "b").await;
    let (readonly, _) = app.key(&session, &project, "app_readonly").await;
    let (readwrite, _) = app.key(&session, &project, "app_readwrite").await;
    let (admin, _) = app.key(&session, &project, "admin").await;

    for key in [&readonly, &readwrite, &admin] {
        assert_eq!(list(&app, 0, key).await.0, 200);
    }
    for key in [&readonly, &readwrite] {
        let (status, body) = delete_namespace(&app, key, "a").await;
        let message = assert_error(status, &body, 403, "FORBIDDEN");
        assert!(message.contains("admin"), "{message}");
    }
    let search = json!({"namespace": "a", "vector": [0.11, 0.22, 0.33, 0.44]});
    let searched = app
        .data_call(0, Method::POST, "/v1/vectors/search", &readonly, Some(search.clone()))
        .await;
    assert_eq!(searched.0, 200, "the index is in memory: {}", searched.1);
    let (status, body) = delete_namespace(&app, &admin, "a").await;
    assert_eq!((status, body), (200, json!({"deleted": true, "namespace": "a"})));
    let (status, body) = app
        .data_call(0, Method::POST, "/v1/vectors/search", &readonly, Some(search))
        .await;
    assert_error(status, &body, 404, "NOT_FOUND");
    let (status, body) = delete_namespace(&app, &admin, "a").await;
    assert_error(status, &body, 404, "NOT_FOUND");
    let (status, body) = delete_namespace(&app, &admin, "%FF").await;
    let message = assert_error(status, &body, 400, "VALIDATION_ERROR");
    assert!(message.contains("UTF-8"), "{message}");
    for bad in ["n".repeat(257), "a%0Ab".to_owned()] {
        let (status, body) = delete_namespace(&app, &admin, &bad).await;
        let message = assert_error(status, &body, 400, "VALIDATION_ERROR");
        assert!(message.contains("1 to 256 bytes"), "{message}");
    }
    let (_, listed) = list(&app, 0, &readonly).await;
    assert_eq!(listed["namespaces"].as_array().map(Vec::len), Some(1));

    // With an idempotency key, a retry replays the answer instead of a 404; the same
    // key for another namespace is another request.
    let with_key = async |namespace: &str| {
        let response = app
            .data_request(0, Method::DELETE, &format!("/v1/namespaces/{namespace}"))
            .bearer_auth(&admin)
            .header("x-idempotency-key", "drop-b")
            .send()
            .await
            .expect("answer");
        let replayed = response.headers().contains_key("idempotent-replayed");
        let (status, body) = read(response).await;
        (status, body, replayed)
    };
    let deleted = json!({"deleted": true, "namespace": "b"});
    assert_eq!(with_key("b").await, (200, deleted.clone(), false));
    assert_eq!(with_key("b").await, (200, deleted, true));
    let (status, body, _) = with_key("a").await;
    assert_error(status, &body, 422, "UNPROCESSABLE");
    let (_, listed) = list(&app, 0, &readonly).await;
    assert_eq!(listed["namespaces"], json!([]));
}

async fn the_project_always_comes_from_the_credential(app: TestApp) {
    let alice = app.signup().await;
    let bob = app.signup().await;
    let alices = app.project(&alice).await;
    let bobs = app.project(&bob).await;
    seed(&app, &alices, "private").await;
    let (bob_admin, _) = app.key(&bob, &bobs, "admin").await;

    let (_, listed) = list(&app, 0, &bob_admin).await;
    assert_eq!(listed["namespaces"], json!([]));
    let (status, body) = delete_namespace(&app, &bob_admin, "private").await;
    assert_error(status, &body, 404, "NOT_FOUND");
    let namespaces = app
        .store
        .namespaces(alices.parse().expect("id"))
        .await
        .expect("namespaces");
    assert_eq!(namespaces.len(), 1, "alice's namespace survives bob's attempt");
}

async fn revoked_keys_are_refused_at_once(app: TestApp) {
    let session = app.signup().await;
    let project = app.project(&session).await;
    let (key, id) = app.key(&session, &project, "app_readonly").await;
    assert_eq!(list(&app, 0, &key).await.0, 200, "the key is verified and cached");

    let (status, _) = app
        .control_call(
            Method::DELETE,
            &format!("/v1/projects/{project}/keys/{id}"),
            Some(&session),
            None,
        )
        .await;
    assert_eq!(status, 204);
    let (status, body) = list(&app, 0, &key).await;
    let message = assert_error(status, &body, 401, "UNAUTHORIZED");
    assert!(message.contains("revoked"), "{message}");
}

async fn expired_keys_are_refused(app: TestApp) {
    let session = app.signup().await;
    let project = app.project(&session).await;
    // Long enough for the key's creation and first check (two argon2 hashes, slow on
    // a loaded machine) to come before it.
    let expires = chrono::Utc::now() + chrono::Duration::seconds(5);
    let (status, created) = app
        .control_call(
            Method::POST,
            &format!("/v1/projects/{project}/keys"),
            Some(&session),
            Some(json!({"label": "short-lived", "role": "admin", "expires_at": expires.to_rfc3339()})),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let key = created["key"].as_str().expect("key").to_owned();
    assert_eq!(list(&app, 0, &key).await.0, 200);
    let past = (expires - chrono::Utc::now()).to_std().unwrap_or_default() + Duration::from_millis(100);
    tokio::time::sleep(past).await;
    let (status, body) = list(&app, 0, &key).await;
    let message = assert_error(status, &body, 401, "UNAUTHORIZED");
    assert!(message.contains("expired"), "{message}");
}

async fn mint_token(app: &TestApp, session: &str, project: &str, body: Value) -> String {
    let (status, minted) = app
        .control_call(
            Method::POST,
            &format!("/v1/projects/{project}/tokens"),
            Some(session),
            Some(body),
        )
        .await;
    assert_eq!(status, 201, "{minted}");
    minted["token"].as_str().expect("token").to_owned()
}

async fn project_tokens_carry_scopes_and_namespaces(app: TestApp) {
    let session = app.signup().await;
    let project = app.project(&session).await;
    seed(&app, &project, "public").await;
    seed(&app, &project, "secret").await;

    let reader = mint_token(&app, &session, &project, json!({})).await;
    // A browser asks first (a CORS preflight, no credentials), then sends the token.
    let preflight = app
        .data_request(0, Method::OPTIONS, "/v1/vectors/search")
        .header("origin", "https://app.example.com")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "authorization, content-type")
        .send()
        .await
        .expect("answer");
    assert_eq!(preflight.status(), 200);
    let allowed = |name: &str| preflight.headers()[name].to_str().expect("ascii").to_ascii_lowercase();
    assert_eq!(allowed("access-control-allow-origin"), "*");
    assert!(allowed("access-control-allow-methods").contains("post"));
    assert!(allowed("access-control-allow-headers").contains("authorization"));
    assert!(
        preflight.headers().contains_key("x-request-id"),
        "a preflight has a request id (and a log line) as every request does"
    );
    // A refusal carries the headers too, so the page can read why.
    let refused = app
        .data_request(0, Method::GET, "/v1/namespaces")
        .header("origin", "https://app.example.com")
        .bearer_auth("not-a-token")
        .send()
        .await
        .expect("answer");
    assert_eq!(refused.status(), 401);
    assert_eq!(refused.headers()["access-control-allow-origin"], "*");
    assert!(
        refused.headers()["access-control-expose-headers"]
            .to_str()
            .expect("ascii")
            .contains("x-request-id")
    );
    // A client that is not a browser page (no Origin) is answered without them.
    let plain = app
        .data_request(0, Method::GET, "/v1/namespaces")
        .bearer_auth(&reader)
        .send()
        .await
        .expect("answer");
    assert_eq!(plain.status(), 200);
    assert!(!plain.headers().contains_key("access-control-allow-origin"));
    let (status, body) = read(
        app.data_request(0, Method::GET, "/v1/namespaces")
            .bearer_auth(&reader)
            .send()
            .await
            .expect("answer"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["namespaces"].as_array().map(Vec::len), Some(2));
    let (status, body) = delete_namespace(&app, &reader, "public").await;
    assert_error(status, &body, 403, "FORBIDDEN");

    let scoped = mint_token(
        &app,
        &session,
        &project,
        json!({"scopes": ["read", "admin"], "namespaces": ["public"]}),
    )
    .await;
    let (_, body) = read(
        app.data_request(0, Method::GET, "/v1/namespaces")
            .bearer_auth(&scoped)
            .send()
            .await
            .expect("answer"),
    )
    .await;
    assert_eq!(body["namespaces"][0]["name"], "public");
    assert_eq!(
        body["namespaces"].as_array().map(Vec::len),
        Some(1),
        "only its namespaces are visible"
    );
    let (status, body) = delete_namespace(&app, &scoped, "secret").await;
    assert_error(status, &body, 403, "FORBIDDEN");
    let (status, _) = delete_namespace(&app, &scoped, "public").await;
    assert_eq!(status, 200);

    // A token limited to some namespaces cannot replay another credential's answer
    // for a namespace it may not see, whatever idempotency key it sends.
    let writer = mint_token(&app, &session, &project, json!({"scopes": ["read", "write"]})).await;
    let limited = mint_token(
        &app,
        &session,
        &project,
        json!({"scopes": ["read", "write"], "namespaces": ["public"]}),
    )
    .await;
    let upsert = |token: &str, namespace: &str| {
        app.data_request(0, Method::POST, "/v1/vectors/upsert")
            .bearer_auth(token)
            .header("x-idempotency-key", format!("key-{namespace}"))
            .json(&json!({"namespace": namespace, "vectors": [{"id": "x", "values": [1, 2, 3, 4]}]}))
    };
    let (status, first) = read(upsert(&writer, "secret").send().await.expect("answer")).await;
    assert_eq!(status, 200, "{first}");
    let (status, body) = read(upsert(&limited, "secret").send().await.expect("answer")).await;
    assert_error(status, &body, 422, "UNPROCESSABLE");
    // NQL as everywhere: another collection is a 403, whether it exists or not.
    for collection in ["secret", "nowhere"] {
        let (status, body) = read(
            app.data_request(0, Method::POST, "/api/v1/query")
                .bearer_auth(&limited)
                .json(&json!({"query": format!("SELECT id FROM {collection}")}))
                .send()
                .await
                .expect("answer"),
        )
        .await;
        assert_error(status, &body, 403, "FORBIDDEN");
    }
    // Its own requests replay as usual.
    let (status, own) = read(upsert(&limited, "public").send().await.expect("answer")).await;
    assert_eq!(status, 200, "{own}");
    let answer = upsert(&limited, "public").send().await.expect("answer");
    assert_eq!(
        answer.headers().get("idempotent-replayed").map(|v| v.to_str().ok()),
        Some(Some("true"))
    );
    let (status, again) = read(answer).await;
    assert_eq!((status, again), (200, own));
}

fn forge(secret: &[u8], algorithm: jsonwebtoken::Algorithm, project: &str, exp_offset: i64) -> String {
    let now = chrono::Utc::now().timestamp();
    let claims = json!({
        "project_id": project, "scopes": ["read", "write", "admin"], "sub": "forger",
        "aud": "quiver-data", "iss": "quiver", "iat": now, "exp": now + exp_offset, "jti": "x",
    });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(algorithm),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
    .expect("sign")
}

async fn forged_expired_and_foreign_tokens_are_401s(app: TestApp) {
    let session = app.signup().await;
    let project = app.project(&session).await;
    let other_project = app.project(&app.signup().await).await;
    seed(&app, &project, "ns").await;
    let genuine = forge(JWT_SECRET, jsonwebtoken::Algorithm::HS256, &project, 60);
    let (status, _) = delete_namespace(&app, &genuine, "nothing-here").await;
    assert_eq!(status, 404, "a well-signed token passes authentication");

    let mut tampered = genuine.clone();
    tampered.pop();
    tampered.push(if genuine.ends_with('A') { 'B' } else { 'A' });
    let refused = [
        forge(
            b"another-secret-of-at-least-32-bytes",
            jsonwebtoken::Algorithm::HS256,
            &project,
            60,
        ),
        forge(JWT_SECRET, jsonwebtoken::Algorithm::HS512, &project, 60),
        forge(JWT_SECRET, jsonwebtoken::Algorithm::HS256, &project, -5),
        tampered,
        session.clone(),
    ];
    for token in &refused {
        let (status, body) = read(
            app.data_request(0, Method::GET, "/v1/namespaces")
                .bearer_auth(token)
                .send()
                .await
                .expect("answer"),
        )
        .await;
        assert_error(status, &body, 401, "UNAUTHORIZED");
    }
    // A well-signed token for a project that does not exist (or was deleted) is refused.
    let ghost = forge(
        JWT_SECRET,
        jsonwebtoken::Algorithm::HS256,
        &ProjectId::new().to_string(),
        60,
    );
    let (status, body) = read(
        app.data_request(0, Method::GET, "/v1/namespaces")
            .bearer_auth(&ghost)
            .send()
            .await
            .expect("answer"),
    )
    .await;
    let message = assert_error(status, &body, 401, "UNAUTHORIZED");
    assert!(message.contains("project"), "{message}");
    let (status, _) = app
        .control_call(Method::DELETE, &format!("/v1/projects/{project}"), Some(&session), None)
        .await;
    assert_eq!(status, 204);
    let (status, body) = read(
        app.data_request(0, Method::GET, "/v1/namespaces")
            .bearer_auth(&genuine)
            .send()
            .await
            .expect("answer"),
    )
    .await;
    assert_error(status, &body, 401, "UNAUTHORIZED");

    // A genuine token for another project sees that project, not this one.
    let theirs = forge(JWT_SECRET, jsonwebtoken::Algorithm::HS256, &other_project, 60);
    let (status, body) = read(
        app.data_request(0, Method::GET, "/v1/namespaces")
            .bearer_auth(&theirs)
            .send()
            .await
            .expect("answer"),
    )
    .await;
    assert_eq!((status, body["namespaces"].clone()), (200, json!([])));
}

async fn deleting_a_project_stops_its_keys(app: TestApp) {
    let session = app.signup().await;
    let project = app.project(&session).await;
    let (key, _) = app.key(&session, &project, "admin").await;
    assert_eq!(list(&app, 0, &key).await.0, 200);
    let (status, _) = app
        .control_call(Method::DELETE, &format!("/v1/projects/{project}"), Some(&session), None)
        .await;
    assert_eq!(status, 204);
    let (status, body) = list(&app, 0, &key).await;
    assert_error(status, &body, 401, "UNAUTHORIZED");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_reaches_every_pod_through_redis_within_a_second() {
    let app = TestApp::cluster(2).await;
    let session = app.signup().await;
    let project = app.project(&session).await;
    let (key, id) = app.key(&session, &project, "app_readonly").await;
    for pod in 0..2 {
        assert_eq!(list(&app, pod, &key).await.0, 200, "pod {pod} caches the key");
    }
    let revoked_at = Instant::now();
    let (status, _) = app
        .control_call(
            Method::DELETE,
            &format!("/v1/projects/{project}/keys/{id}"),
            Some(&session),
            None,
        )
        .await;
    assert_eq!(status, 204);
    for pod in 0..2 {
        // Across processes the notice travels through Redis: the promise is one second.
        assert_refused_within_a_second(&app, pod, &key, revoked_at).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_from_the_store_work_without_the_control_plane() {
    // Keys written by `quiver keys create` (straight into the store) authenticate too.
    let app = TestApp::start(quiver_tests::app::Backend::Sqlite).await;
    let user = app.store.create_user("cli@example.com", "h").await.expect("user");
    let project = app
        .store
        .create_project(NewProject {
            owner_id: user.id,
            name: "cli".into(),
            dimension: 4,
            metric: Metric::Cosine,
            plan_id: "starter".into(),
        })
        .await
        .expect("project");
    let request = quiver_control_plane::keys::CreateKey {
        label: "cli".into(),
        role: quiver_common::domain::Role::AppReadonly,
        expires_at: None,
    };
    let created = quiver_control_plane::keys::mint(app.store.as_ref(), project.id, request)
        .await
        .expect("mint");
    assert_eq!(list(&app, 0, &created.key).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_made_up_keys_from_one_address_is_refused_before_argon2() {
    let app = TestApp::start(quiver_tests::app::Backend::Sqlite).await;
    let session = app.signup().await;
    let project = app.project(&session).await;
    let (key, _) = app.key(&session, &project, "app_readonly").await;
    assert_eq!(list(&app, 0, &key).await.0, 200, "a real key, now cached");

    let mut statuses = Vec::new();
    for _ in 0..45 {
        let made_up = quiver_common::secrets::generate_api_key().full;
        statuses.push(list(&app, 0, &made_up).await.0);
    }
    let unauthorized = statuses.iter().filter(|s| **s == 401).count();
    let throttled = statuses.iter().filter(|s| **s == 429).count();
    assert!(
        (30..=32).contains(&unauthorized),
        "a burst of 30 refused checks, then the address waits: {statuses:?}"
    );
    assert_eq!(unauthorized + throttled, 45, "{statuses:?}");
    let (status, body) = list(&app, 0, &quiver_common::secrets::generate_api_key().full).await;
    assert_error(status, &body, 429, "RATE_LIMITED");
    // With no trusted proxies configured, a client cannot name itself another.
    let forged = app
        .data_request(0, Method::GET, "/v1/namespaces")
        .header("x-api-key", quiver_common::secrets::generate_api_key().full)
        .header("x-forwarded-for", "203.0.113.8")
        .send()
        .await
        .expect("answer");
    let (status, body) = read(forged).await;
    assert_error(status, &body, 429, "RATE_LIMITED");

    assert_eq!(list(&app, 0, &key).await.0, 200, "a cached key is never held back");
}

/// Keys that verify never count against an address: clients behind one proxy, all
/// presenting keys the pod has not seen (as after a restart), are never held back,
/// however many more than the refusals' burst of 30 they are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_first_uses_of_real_keys_from_one_address_are_not_throttled() {
    let app = TestApp::start(quiver_tests::app::Backend::Sqlite).await;
    let session = app.signup().await;
    // Two Starter projects, so that no project's 30 queries a minute run out.
    let mut keys = Vec::new();
    for _ in 0..2 {
        let project = app.project(&session).await;
        for _ in 0..18 {
            keys.push(app.key(&session, &project, "app_readonly").await.0);
        }
    }
    for (i, key) in keys.iter().enumerate() {
        let (status, body) = list(&app, 0, key).await;
        assert_eq!(status, 200, "key {i}'s first use: {body}");
    }
}

/// Behind a trusted load balancer each client has a budget of refused key checks of
/// its own, told apart by `X-Forwarded-For`: one client's flood of made-up keys holds
/// back that client, not the others who come through the same balancer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_trusted_proxy_each_client_has_its_own_budget_of_refused_keys() {
    let app = TestApp::behind_a_proxy(quiver_tests::app::Backend::Sqlite).await;
    let made_up = |client: &str| {
        app.data_request(0, Method::GET, "/v1/namespaces")
            .header("x-api-key", quiver_common::secrets::generate_api_key().full)
            // A client may write its own entries; the proxy appends the address it saw.
            .header("x-forwarded-for", format!("10.9.9.9, {client}"))
            .send()
    };
    let mut statuses = Vec::new();
    for _ in 0..40 {
        statuses.push(made_up("203.0.113.7").await.expect("answer").status().as_u16());
    }
    assert!(
        statuses.iter().filter(|s| **s == 429).count() >= 8,
        "the flooding client waits: {statuses:?}"
    );
    let (status, body) = read(made_up("203.0.113.8").await.expect("answer")).await;
    assert_error(status, &body, 401, "UNAUTHORIZED");
    // Without the header the request is the proxy's own, with a budget of its own too.
    let (status, body) = list(&app, 0, &quiver_common::secrets::generate_api_key().full).await;
    assert_error(status, &body, 401, "UNAUTHORIZED");
}

/// After a gap in the bus (notices may be lost), a cached key is read from the
/// database again on its next use, but its secret is not hashed again: a Redis blip
/// would otherwise cost every pod an argon2 check (~13 ms of CPU) per active key at
/// once. A key deleted or revoked meanwhile is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_bus_gap_cached_keys_are_read_again_not_hashed_again() {
    use quiver_common::bus::InProcessBus;
    use quiver_common::domain::Role;
    use quiver_common::secrets::{generate_api_key, hash_secret};
    use quiver_data_plane::auth::Authenticator;
    use quiver_store::NewApiKey;

    let fixture = quiver_tests::stores::SqliteFixture::new().await;
    let store = std::sync::Arc::clone(&fixture.store);
    let project = quiver_tests::stores::project(&*store, 4, Metric::Cosine, "starter").await;
    let mut keys = Vec::new();
    for label in ["kept", "rehashed", "deleted", "revoked"] {
        let key = generate_api_key();
        store
            .create_api_key(NewApiKey {
                id: key.id.clone(),
                project_id: project.id,
                label: label.into(),
                role: Role::Admin,
                secret_hash: hash_secret(&key.secret),
                expires_at: None,
            })
            .await
            .expect("key");
        keys.push(key);
    }
    let bus = InProcessBus::default();
    let jwt = quiver_common::token::JwtKeys::new(JWT_SECRET).expect("secret");
    let auth = std::sync::Arc::new(Authenticator::new(std::sync::Arc::clone(&store), jwt));
    auth.spawn_watchers(&bus);
    for key in &keys {
        auth.authenticate(&key.full).await.expect("verified and cached");
    }

    // Behind the cache's back: one key's stored hash replaced (only a fresh argon2
    // check would notice), one deleted, one revoked, and no notice of any of it.
    let [_, rehashed, deleted, revoked] = &keys[..] else {
        unreachable!()
    };
    let other = hash_secret("not the key's secret at all");
    fixture
        .execute(&format!(
            "UPDATE api_keys SET secret_hash = '{other}' WHERE id = '{}'",
            rehashed.id
        ))
        .await;
    fixture
        .execute(&format!("DELETE FROM api_keys WHERE id = '{}'", deleted.id))
        .await;
    fixture
        .execute(&format!(
            "UPDATE api_keys SET revoked_at = '2026-01-01T00:00:00+00:00' WHERE id = '{}'",
            revoked.id
        ))
        .await;
    bus.tell_of_a_gap();

    auth.authenticate(&keys[0].full).await.expect("still a key");
    auth.authenticate(&rehashed.full)
        .await
        .expect("read again, not hashed again");
    let refused = auth.authenticate(&deleted.full).await.expect_err("gone");
    assert!(refused.to_string().contains("invalid"), "{refused}");
    let refused = auth.authenticate(&revoked.full).await.expect_err("revoked");
    assert!(refused.to_string().contains("revoked"), "{refused}");
}
