//! Every control-plane route, and every refusal, over HTTP on both backends.

use reqwest::Method;
use serde_json::{Value, json};

use crate::support::{assert_error, on_both_backends};
use quiver_tests::app::TestApp;

on_both_backends!(
    accounts_sign_up_and_log_in_and_refuse_what_they_should,
    login_attempts_per_email_are_throttled,
    the_plan_catalog_is_public,
    projects_are_created_read_listed_replanned_and_deleted,
    project_requests_with_bad_input_are_400s_in_the_envelope,
    other_accounts_projects_are_404s_and_sessions_are_required,
    keys_are_shown_once_listed_without_secrets_and_revoked,
    browser_tokens_are_minted_within_bounds,
);

async fn accounts_sign_up_and_log_in_and_refuse_what_they_should(app: TestApp) {
    let signup = json!({"email": "Ada@Example.com", "password": "correct horse battery"});
    let (status, body) = app
        .control_call(Method::POST, "/v1/auth/signup", None, Some(signup.clone()))
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["user"]["email"], "ada@example.com");
    assert!(body["token"].as_str().is_some_and(|t| t.len() > 20));

    let (status, body) = app
        .control_call(Method::POST, "/v1/auth/signup", None, Some(signup))
        .await;
    assert_error(status, &body, 409, "CONFLICT");

    let short = json!({"email": "bob@example.com", "password": "elevenchars"});
    let (status, body) = app
        .control_call(Method::POST, "/v1/auth/signup", None, Some(short))
        .await;
    let message = assert_error(status, &body, 400, "VALIDATION_ERROR");
    assert!(message.contains("at least 12"), "{message}");

    let bad_email = json!({"email": "not-an-email", "password": "correct horse battery"});
    let (status, body) = app
        .control_call(Method::POST, "/v1/auth/signup", None, Some(bad_email))
        .await;
    assert_error(status, &body, 400, "VALIDATION_ERROR");

    let (status, body) = app
        .control_call(
            Method::POST,
            "/v1/auth/signup",
            None,
            Some(json!({"email": "x@example.com"})),
        )
        .await;
    assert_error(status, &body, 400, "VALIDATION_ERROR");

    let login = json!({"email": "ada@example.com", "password": "correct horse battery"});
    let (status, body) = app
        .control_call(Method::POST, "/v1/auth/login", None, Some(login))
        .await;
    assert_eq!(status, 200, "{body}");
    let session = body["token"].as_str().expect("token").to_owned();
    let (status, _) = app
        .control_call(Method::GET, "/v1/projects", Some(&session), None)
        .await;
    assert_eq!(status, 200);

    // Wrong password and unknown email read the same.
    let wrong = json!({"email": "ada@example.com", "password": "correct horse battery!"});
    let (status, body) = app
        .control_call(Method::POST, "/v1/auth/login", None, Some(wrong))
        .await;
    let wrong_password = assert_error(status, &body, 401, "UNAUTHORIZED");
    let unknown = json!({"email": "nobody@example.com", "password": "correct horse battery"});
    let (status, body) = app
        .control_call(Method::POST, "/v1/auth/login", None, Some(unknown))
        .await;
    let unknown_email = assert_error(status, &body, 401, "UNAUTHORIZED");
    assert_eq!(wrong_password, unknown_email);

    // Logging out ends every session of the account, this one and one from another
    // browser; a session begun after works.
    let login = json!({"email": "ada@example.com", "password": "correct horse battery"});
    let (_, body) = app
        .control_call(Method::POST, "/v1/auth/login", None, Some(login.clone()))
        .await;
    let other_browser = body["token"].as_str().expect("token").to_owned();
    let (status, body) = app
        .control_call(Method::POST, "/v1/auth/logout", Some(&session), None)
        .await;
    assert_eq!((status, &body), (204, &serde_json::Value::Null));
    for ended in [&session, &other_browser] {
        let (status, body) = app.control_call(Method::GET, "/v1/projects", Some(ended), None).await;
        let message = assert_error(status, &body, 401, "UNAUTHORIZED");
        assert!(message.contains("logged out"), "{message}");
    }
    let (status, body) = app
        .control_call(Method::POST, "/v1/auth/logout", Some(&session), None)
        .await;
    assert_error(status, &body, 401, "UNAUTHORIZED");
    let (_, body) = app
        .control_call(Method::POST, "/v1/auth/login", None, Some(login))
        .await;
    let fresh = body["token"].as_str().expect("token").to_owned();
    let (status, _) = app.control_call(Method::GET, "/v1/projects", Some(&fresh), None).await;
    assert_eq!(status, 200);
}

async fn login_attempts_per_email_are_throttled(app: TestApp) {
    let attempt = json!({"email": "target@example.com", "password": "guess guess guess"});
    for _ in 0..5 {
        let (status, _) = app
            .control_call(Method::POST, "/v1/auth/login", None, Some(attempt.clone()))
            .await;
        assert_eq!(status, 401);
    }
    let response = app
        .http
        .post(format!("{}/v1/auth/login", app.control))
        .json(&attempt)
        .send()
        .await
        .expect("answer");
    assert!(response.headers().contains_key("retry-after"));
    let (status, body) = quiver_tests::app::read(response).await;
    assert_error(status, &body, 429, "RATE_LIMITED");
    // Another email is not affected.
    let other = json!({"email": "other@example.com", "password": "guess guess guess"});
    let (status, _) = app
        .control_call(Method::POST, "/v1/auth/login", None, Some(other))
        .await;
    assert_eq!(status, 401);
}

/// Behind a trusted proxy, sign-ins are throttled per email and client: one client
/// guessing an account's password cannot lock its owner out from another address,
/// and one client trying many accounts is throttled whatever the emails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_ins_are_throttled_per_client_behind_a_trusted_proxy() {
    let app = TestApp::behind_a_proxy(quiver_tests::app::Backend::Sqlite).await;
    let from = async |client: &str, body: &Value| {
        let response = app
            .http
            .post(format!("{}/v1/auth/login", app.control))
            .header("x-forwarded-for", client)
            .json(body)
            .send()
            .await
            .expect("answer");
        quiver_tests::app::read(response).await
    };
    let guess = json!({"email": "target@example.com", "password": "guess guess guess"});
    for _ in 0..5 {
        assert_eq!(from("203.0.113.9", &guess).await.0, 401);
    }
    let (status, body) = from("203.0.113.9", &guess).await;
    assert_error(status, &body, 429, "RATE_LIMITED");
    // The owner, elsewhere, still gets an answer on the merits.
    assert_eq!(from("198.51.100.7", &guess).await.0, 401);
    // An IPv6 host holds its /64: another address in it is the same client.
    for _ in 0..5 {
        assert_eq!(from("2001:db8:7:7::1", &guess).await.0, 401);
    }
    let (status, body) = from("2001:db8:7:7::2", &guess).await;
    assert_error(status, &body, 429, "RATE_LIMITED");
    assert_eq!(from("2001:db8:7:8::1", &guess).await.0, 401, "another /64");

    // One address trying account after account: 60 attempts (and one more for each
    // second they took), then refused.
    let mut refused = None;
    for i in 0..200 {
        let other = json!({"email": format!("user{i}@example.com"), "password": "guess guess guess"});
        let (status, body) = from("192.0.2.44", &other).await;
        if status == 429 {
            refused = Some((i, body));
            break;
        }
        assert_eq!(status, 401, "{body}");
    }
    let (after, body) = refused.expect("refused after its burst");
    assert!(after >= 60, "refused after {after}: {body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("from this address")),
        "{body}"
    );
    // Sign-ups from that address wait too; others' do not.
    let signup = |email: &str| json!({"email": email, "password": "correct horse battery"});
    let response = app
        .http
        .post(format!("{}/v1/auth/signup", app.control))
        .header("x-forwarded-for", "192.0.2.44")
        .json(&signup("new@example.com"))
        .send()
        .await
        .expect("answer");
    let (status, body) = quiver_tests::app::read(response).await;
    assert_error(status, &body, 429, "RATE_LIMITED");
    let response = app
        .http
        .post(format!("{}/v1/auth/signup", app.control))
        .header("x-forwarded-for", "192.0.2.45")
        .json(&signup("new@example.com"))
        .send()
        .await
        .expect("answer");
    assert_eq!(response.status(), 201);
}

async fn the_plan_catalog_is_public(app: TestApp) {
    let (status, body) = app.control_call(Method::GET, "/v1/plans", None, None).await;
    assert_eq!(status, 200);
    let plans = body["plans"].as_array().expect("plans");
    assert_eq!(plans.len(), 4);
    assert_eq!(plans[0]["id"], "starter");
    assert_eq!(plans[0]["queries_per_minute"], 30);
    assert_eq!(plans[3]["documents_per_minute"], 50_000);
}

async fn projects_are_created_read_listed_replanned_and_deleted(app: TestApp) {
    let session = app.signup().await;
    let create = json!({"name": "shop", "dimension": 768, "metric": "dotproduct", "plan": "developer"});
    let (status, created) = app
        .control_call(Method::POST, "/v1/projects", Some(&session), Some(create))
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().expect("id").to_owned();
    assert_eq!(created["dimension"], 768);
    assert_eq!(created["metric"], "dotproduct");
    assert_eq!(created["limits"]["queries_per_minute"], 300);
    assert_eq!(created["api_base_url"], app.data[0]);
    assert_eq!(created["usage"], json!({"vectors": 0, "namespaces": 0}));

    let (_, list) = app
        .control_call(Method::GET, "/v1/projects", Some(&session), None)
        .await;
    assert_eq!(list["projects"].as_array().map(Vec::len), Some(1));
    assert_eq!(list["projects"][0]["id"], id.as_str());

    let (status, patched) = app
        .control_call(
            Method::PATCH,
            &format!("/v1/projects/{id}"),
            Some(&session),
            Some(json!({"plan": "business"})),
        )
        .await;
    assert_eq!(status, 200, "{patched}");
    assert_eq!(patched["plan"], "business");
    assert_eq!(patched["limits"]["documents_per_minute"], 10_000);
    let (_, read) = app
        .control_call(Method::GET, &format!("/v1/projects/{id}"), Some(&session), None)
        .await;
    assert_eq!(read["plan"], "business");

    let (status, body) = app
        .control_call(Method::DELETE, &format!("/v1/projects/{id}"), Some(&session), None)
        .await;
    assert_eq!((status, body), (204, serde_json::Value::Null));
    let (status, body) = app
        .control_call(Method::GET, &format!("/v1/projects/{id}"), Some(&session), None)
        .await;
    assert_error(status, &body, 404, "NOT_FOUND");
}

async fn project_requests_with_bad_input_are_400s_in_the_envelope(app: TestApp) {
    let session = app.signup().await;
    for (body, field) in [
        (json!({"name": "p", "dimension": 0, "metric": "cosine"}), "dimension"),
        (json!({"name": "p", "dimension": 4097, "metric": "cosine"}), "dimension"),
        (json!({"name": "p", "dimension": 4, "metric": "manhattan"}), "metric"),
        (
            json!({"name": "p", "dimension": 4, "metric": "cosine", "plan": "platinum"}),
            "plan",
        ),
        (json!({"name": "", "dimension": 4, "metric": "cosine"}), "name"),
        (json!({"dimension": 4, "metric": "cosine"}), "name"),
        (
            json!({"name": "p", "dimension": "four", "metric": "cosine"}),
            "dimension",
        ),
    ] {
        let (status, response) = app
            .control_call(Method::POST, "/v1/projects", Some(&session), Some(body.clone()))
            .await;
        assert_error(status, &response, 400, "VALIDATION_ERROR");
        let text = response["error"].to_string();
        assert!(text.contains(field), "the error for {body} should name {field}: {text}");
    }
    let malformed = app
        .http
        .post(format!("{}/v1/projects", app.control))
        .bearer_auth(&session)
        .header("content-type", "application/json")
        .body("{\"name\": ")
        .send()
        .await
        .expect("answer");
    let (status, body) = quiver_tests::app::read(malformed).await;
    assert_error(status, &body, 400, "VALIDATION_ERROR");

    let id = app.project(&session).await;
    let (status, body) = app
        .control_call(
            Method::PATCH,
            &format!("/v1/projects/{id}"),
            Some(&session),
            Some(json!({"plan": "gold"})),
        )
        .await;
    assert_error(status, &body, 400, "VALIDATION_ERROR");
    let (_, list) = app
        .control_call(Method::GET, "/v1/projects", Some(&session), None)
        .await;
    assert_eq!(
        list["projects"].as_array().map(Vec::len),
        Some(1),
        "nothing half-created"
    );
}

async fn other_accounts_projects_are_404s_and_sessions_are_required(app: TestApp) {
    let owner = app.signup().await;
    let intruder = app.signup().await;
    let id = app.project(&owner).await;

    for (method, path, body) in [
        (Method::GET, format!("/v1/projects/{id}"), None),
        (
            Method::PATCH,
            format!("/v1/projects/{id}"),
            Some(json!({"plan": "business"})),
        ),
        (Method::DELETE, format!("/v1/projects/{id}"), None),
        (Method::GET, format!("/v1/projects/{id}/keys"), None),
        (
            Method::POST,
            format!("/v1/projects/{id}/keys"),
            Some(json!({"label": "x", "role": "admin"})),
        ),
        (Method::POST, format!("/v1/projects/{id}/tokens"), Some(json!({}))),
        (Method::GET, "/v1/projects/not-a-uuid".to_owned(), None),
    ] {
        let (status, response) = app
            .control_call(method.clone(), &path, Some(&intruder), body.clone())
            .await;
        assert_error(status, &response, 404, "NOT_FOUND");
        let (status, response) = app.control_call(method.clone(), &path, None, body.clone()).await;
        assert_error(status, &response, 401, "UNAUTHORIZED");
        let (status, response) = app
            .control_call(method, &path, Some("eyJhbGciOiJIUzI1NiJ9.e30.x"), body)
            .await;
        assert_error(status, &response, 401, "UNAUTHORIZED");
    }
    let (_, list) = app
        .control_call(Method::GET, "/v1/projects", Some(&intruder), None)
        .await;
    assert_eq!(list["projects"], json!([]));
    let (_, read) = app
        .control_call(Method::GET, &format!("/v1/projects/{id}"), Some(&owner), None)
        .await;
    assert_eq!(read["plan"], "starter", "the intruder's PATCH changed nothing");
    // The scheme is case-insensitive, as HTTP says.
    let shouting = app
        .http
        .get(format!("{}/v1/projects/{id}", app.control))
        .header("authorization", format!("BEARER {owner}"))
        .send()
        .await
        .expect("answer");
    assert_eq!(shouting.status().as_u16(), 200);
}

async fn keys_are_shown_once_listed_without_secrets_and_revoked(app: TestApp) {
    let session = app.signup().await;
    let project = app.project(&session).await;
    let path = format!("/v1/projects/{project}/keys");
    let expires = (chrono::Utc::now() + chrono::Duration::days(7)).to_rfc3339();
    let (status, created) = app
        .control_call(
            Method::POST,
            &path,
            Some(&session),
            Some(json!({"label": "ci", "role": "app_readwrite", "expires_at": expires})),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let key = created["key"].as_str().expect("key").to_owned();
    let id = created["id"].as_str().expect("id").to_owned();
    assert!(key.starts_with(&format!("qv_live_{id}_")), "{key}");
    assert_eq!(created["prefix"], format!("qv_live_{id}"));
    assert_eq!(created["role"], "app_readwrite");
    let secret = key.rsplit('_').next().expect("secret part");
    assert!(secret.len() >= 22, "at least 128 bits of secret");

    let (status, list) = app.control_call(Method::GET, &path, Some(&session), None).await;
    assert_eq!(status, 200);
    assert_eq!(list["keys"][0]["label"], "ci");
    assert!(list["keys"][0]["expires_at"].is_string());
    assert!(!list.to_string().contains(secret), "a listing never shows the secret");
    assert!(list["keys"][0].get("key").is_none());

    for (body, field) in [
        (json!({"label": "x", "role": "owner"}), "role"),
        (json!({"label": "", "role": "admin"}), "label"),
        (
            json!({"label": "x", "role": "admin", "expires_at": "2001-01-01T00:00:00Z"}),
            "expires_at",
        ),
        (
            json!({"label": "x", "role": "admin", "expires_at": "tomorrow"}),
            "expires_at",
        ),
    ] {
        let (status, response) = app
            .control_call(Method::POST, &path, Some(&session), Some(body.clone()))
            .await;
        assert_error(status, &response, 400, "VALIDATION_ERROR");
        assert!(response["error"].to_string().contains(field), "{body} → {response}");
    }

    let revoke = format!("{path}/{id}");
    let (status, _) = app.control_call(Method::DELETE, &revoke, Some(&session), None).await;
    assert_eq!(status, 204);
    let (status, body) = app.control_call(Method::DELETE, &revoke, Some(&session), None).await;
    assert_error(status, &body, 404, "NOT_FOUND");
    let (_, list) = app.control_call(Method::GET, &path, Some(&session), None).await;
    assert!(list["keys"][0]["revoked_at"].is_string());
}

async fn browser_tokens_are_minted_within_bounds(app: TestApp) {
    let session = app.signup().await;
    let project = app.project(&session).await;
    let path = format!("/v1/projects/{project}/tokens");
    let (status, minted) = app
        .control_call(
            Method::POST,
            &path,
            Some(&session),
            Some(json!({"scopes": ["read"], "namespaces": ["products"], "ttl_seconds": 600})),
        )
        .await;
    assert_eq!(status, 201, "{minted}");
    assert_eq!(minted["scopes"], json!(["read"]));
    assert_eq!(minted["namespaces"], json!(["products"]));
    assert_eq!(minted["project_id"], project.as_str());
    let expires: chrono::DateTime<chrono::Utc> = minted["expires_at"].as_str().expect("expiry").parse().expect("time");
    assert!(expires <= chrono::Utc::now() + chrono::Duration::seconds(601));

    for body in [
        json!({"ttl_seconds": 3601}),
        json!({"ttl_seconds": 0}),
        json!({"scopes": []}),
        json!({"scopes": ["superuser"]}),
        json!({"scopes": ["read", "read", "write"]}),
        json!({"namespaces": []}),
        json!({"namespaces": ["a", "a"]}),
    ] {
        let (status, response) = app.control_call(Method::POST, &path, Some(&session), Some(body)).await;
        assert_error(status, &response, 400, "VALIDATION_ERROR");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_route_never_shadows_the_api() {
    let app = TestApp::start(quiver_tests::app::Backend::Sqlite).await;
    let page = app
        .http
        .get(format!("{}/projects/abc", app.control))
        .send()
        .await
        .expect("answer");
    assert_eq!(page.status(), 200);
    let html = page.text().await.expect("html");
    assert!(
        html.contains("npm run build"),
        "without a built console, the page says how to build it: {html}"
    );

    let (status, body) = app.control_call(Method::GET, "/v1/nothing-here", None, None).await;
    assert_error(status, &body, 404, "NOT_FOUND");
    let (status, body) = app
        .control_call(Method::POST, "/elsewhere", None, Some(json!({})))
        .await;
    assert_error(status, &body, 405, "METHOD_NOT_ALLOWED");
    let (status, body) = app.control_call(Method::GET, "/v1/plans", None, None).await;
    assert_eq!(status, 200, "{body}");
}
