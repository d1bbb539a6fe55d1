//! The checked-in OpenAPI documents match the code, and each plane serves its own.

use std::path::PathBuf;

use quiver_tests::app::{Backend, TestApp};

fn checked_in(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../openapi").join(name)
}

/// Fails on drift; with QUIVER_UPDATE_OPENAPI=1, rewrites the file instead.
fn assert_current(name: &str, generated: String) {
    let path = checked_in(name);
    let generated = format!("{generated}\n");
    if std::env::var_os("QUIVER_UPDATE_OPENAPI").is_some() {
        // A variable left set must not turn CI's drift check into a rewrite.
        assert!(
            std::env::var("QUIVER_CI").as_deref() != Ok("1"),
            "QUIVER_UPDATE_OPENAPI is set under CI (QUIVER_CI=1): the drift check would not run"
        );
        std::fs::write(&path, &generated).expect("write the spec");
        return;
    }
    let stored = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        stored == generated,
        "openapi/{name} is out of date: run `QUIVER_UPDATE_OPENAPI=1 cargo test -p quiver-tests openapi` and commit it"
    );
}

#[test]
fn the_checked_in_specs_match_the_code() {
    assert_current("control-plane.json", quiver_control_plane::openapi::spec_json());
    assert_current("data-plane.json", quiver_data_plane::openapi::spec_json());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_plane_serves_its_spec_with_every_route() {
    let app = TestApp::start(Backend::Sqlite).await;
    let control: serde_json::Value = app
        .http
        .get(format!("{}/openapi.json", app.control))
        .send()
        .await
        .expect("spec")
        .json()
        .await
        .expect("json");
    for path in [
        "/v1/auth/signup",
        "/v1/auth/login",
        "/v1/plans",
        "/v1/projects",
        "/v1/projects/{id}",
        "/v1/projects/{id}/keys",
        "/v1/projects/{id}/keys/{key_id}",
        "/v1/projects/{id}/tokens",
    ] {
        assert!(
            control["paths"].get(path).is_some(),
            "the control-plane spec lacks {path}"
        );
    }
    assert!(control["components"]["securitySchemes"].get("session").is_some());
    let data: serde_json::Value = app
        .http
        .get(format!("{}/openapi.json", app.data[0]))
        .send()
        .await
        .expect("spec")
        .json()
        .await
        .expect("json");
    for scheme in ["api_key_header", "bearer", "api_key_query"] {
        assert!(
            data["components"]["securitySchemes"].get(scheme).is_some(),
            "no {scheme}"
        );
    }
    assert!(data["paths"].get("/v1/namespaces").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_plane_serves_a_docs_page_that_needs_no_internet() {
    let app = TestApp::start(Backend::Sqlite).await;
    for base in [&app.control, &app.data[0]] {
        let page = app.http.get(format!("{base}/docs/")).send().await.expect("docs page");
        assert_eq!(page.status(), 200, "{base}/docs/");
        let html = page.text().await.expect("html");
        assert!(html.contains("swagger-ui"), "{html}");
        for asset in ["swagger-ui.css", "swagger-ui-bundle.js", "swagger-initializer.js"] {
            assert!(html.contains(asset), "the page loads {asset} from the binary");
            let response = app
                .http
                .get(format!("{base}/docs/{asset}"))
                .send()
                .await
                .expect("asset");
            assert_eq!(response.status(), 200, "{base}/docs/{asset}");
        }
        assert!(
            !html.contains("https://") && !html.contains("http://"),
            "no asset comes from elsewhere: {html}"
        );
        let initializer = app
            .http
            .get(format!("{base}/docs/swagger-initializer.js"))
            .send()
            .await
            .expect("initializer")
            .text()
            .await
            .expect("js");
        assert!(
            initializer.contains("/openapi.json"),
            "the page shows this plane's spec: {initializer}"
        );
    }
}
