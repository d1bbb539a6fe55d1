//! The web console (`console/`, a single-page app) served at `/` from its build
//! directory: files as they are, and `index.html` for the app's own routes
//! (`/projects/…`) so they load on refresh. `/v1` stays the API's. A missing file (a
//! path under `/assets/`, or one whose name has an extension) is a 404, never the
//! index: a hashed script asked of a pod that does not have it (a rolling deploy)
//! must not be cached for a year as HTML.

use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use quiver_common::ApiError;
use tower::ServiceExt as _;
use tower_http::services::{ServeDir, ServeFile};

use crate::ControlPlane;

const NOT_BUILT: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Quiver</title></head>
<body style="font-family: system-ui, sans-serif; max-width: 40rem; margin: 4rem auto; line-height: 1.5">
<h1>Quiver</h1>
<p>The control-plane API is up under <code>/v1</code> (see <a href="/openapi.json">/openapi.json</a>),
but the web console has not been built.</p>
<p>Build it once with Node 20.19 or newer, then restart Quiver from the repository root:</p>
<pre>cd console &amp;&amp; npm install &amp;&amp; npm run build</pre>
<p>or point <code>--console-dir</code> (<code>QUIVER_CONSOLE_DIR</code>) at a built console.</p>
</body></html>"#;

/// Serves the console for any path the API does not own.
pub async fn serve(State(state): State<ControlPlane>, request: Request) -> Response {
    let path = request.uri().path();
    if path == "/v1" || path.starts_with("/v1/") {
        return ApiError::NotFound(format!("no route for {} {path}", request.method())).into_response();
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return ApiError::MethodNotAllowed(format!("{} is not allowed on {path}", request.method())).into_response();
    }
    let mut response = match state.settings.console_dir.clone() {
        Some(dir) => serve_from(dir, request).await,
        None => (StatusCode::OK, Html(NOT_BUILT)).into_response(),
    };
    guard(response.headers_mut());
    response
}

/// The console's own scripts and styles only, never inside another site's frame (a
/// framed console could be clicked into deleting a project), and no content sniffed
/// into another type. React sets inline styles through the DOM, which the policy
/// allows; the page shown when the console is not built styles itself inline.
fn guard(headers: &mut HeaderMap) {
    let is_html = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("text/html"));
    if is_html {
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(
                "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; \
                 object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
            ),
        );
    }
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
}

/// Whether a path missing from the build is one of the app's routes (which get the
/// index) rather than a file (which gets a 404).
fn is_app_route(path: &str) -> bool {
    let last = path.rsplit('/').next().unwrap_or_default();
    !path.starts_with("/assets/") && !last.contains('.')
}

async fn serve_from(dir: Arc<PathBuf>, request: Request) -> Response {
    let path = request.uri().path();
    let immutable = path.starts_with("/assets/");
    let app_route = is_app_route(path);
    let index = dir.join("index.html");
    let served = if app_route {
        ServeDir::new(dir.as_path())
            .fallback(ServeFile::new(index))
            .oneshot(request)
            .await
    } else {
        ServeDir::new(dir.as_path()).oneshot(request).await
    };
    let mut response = match served {
        Ok(response) => response.map(Body::new),
        Err(infallible) => match infallible {},
    };
    if response.status() == StatusCode::NOT_FOUND {
        return (
            StatusCode::NOT_FOUND,
            [(header::CACHE_CONTROL, "no-store")],
            ApiError::NotFound("no such file in the console's build".into()),
        )
            .into_response();
    }
    // Built assets carry a content hash in their names; index.html must be re-read
    // so a new build is picked up.
    let cache = if immutable && response.status().is_success() {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    response
}

/// The console directory to serve: the one given, which must hold a built console
/// (else every page would be a 404), or `console/dist` under the working directory
/// when it has been built there (running from a checkout).
pub fn locate(given: Option<PathBuf>) -> Result<Option<PathBuf>, String> {
    match given {
        Some(dir) if dir.join("index.html").is_file() => Ok(Some(dir)),
        Some(dir) => Err(format!(
            "--console-dir {} holds no index.html: point it at a built console (cd console && npm install && npm \
             run build makes console/dist), or leave it out",
            dir.display()
        )),
        None => {
            let dir = PathBuf::from("console/dist");
            Ok(dir.join("index.html").is_file().then_some(dir))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn get(dir: &std::path::Path, uri: &str) -> (StatusCode, String, String) {
        let request = Request::get(uri).body(Body::empty()).expect("request builds");
        let response = serve_from(Arc::new(dir.to_owned()), request).await;
        let status = response.status();
        let cache = response.headers()[header::CACHE_CONTROL]
            .to_str()
            .expect("ascii")
            .to_owned();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("body");
        (status, String::from_utf8_lossy(&body).into_owned(), cache)
    }

    #[tokio::test]
    async fn files_are_served_and_app_routes_fall_back_to_the_index() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("index.html"), "<div id=root></div>").expect("index");
        std::fs::create_dir(dir.path().join("assets")).expect("assets");
        std::fs::write(dir.path().join("assets/app-1a2b.js"), "console.log(1)").expect("asset");

        let (status, body, cache) = get(dir.path(), "/assets/app-1a2b.js").await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "console.log(1)"));
        assert!(cache.contains("immutable"), "{cache}");

        for route in ["/", "/projects/0190f0f0-aaaa-7bbb-8ccc-123456789abc", "/login"] {
            let (status, body, cache) = get(dir.path(), route).await;
            assert_eq!(
                (status, body.as_str()),
                (StatusCode::OK, "<div id=root></div>"),
                "{route}"
            );
            assert_eq!(cache, "no-cache");
        }

        // A file the build lacks is a 404 that no cache keeps, not the index.
        for missing in ["/assets/app-9z9z.js", "/assets/old.css", "/favicon.ico", "/robots.txt"] {
            let (status, body, cache) = get(dir.path(), missing).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{missing}");
            assert!(!body.contains("root"), "{missing}: {body}");
            assert_eq!(cache, "no-store", "{missing}");
        }
    }

    #[test]
    fn app_routes_are_told_from_files() {
        assert!(is_app_route("/"));
        assert!(is_app_route("/projects/0190f0f0-aaaa-7bbb-8ccc-123456789abc"));
        assert!(is_app_route("/login"));
        assert!(!is_app_route("/assets/index"));
        assert!(!is_app_route("/favicon.svg"));
    }

    #[test]
    fn pages_may_not_be_framed_nor_sniffed() {
        let mut html = HeaderMap::new();
        html.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
        guard(&mut html);
        let policy = html[header::CONTENT_SECURITY_POLICY].to_str().expect("ascii");
        assert!(policy.contains("frame-ancestors 'none'"), "{policy}");
        assert!(policy.contains("default-src 'self'"), "{policy}");
        assert_eq!(html[header::X_FRAME_OPTIONS], "DENY");
        assert_eq!(html[header::X_CONTENT_TYPE_OPTIONS], "nosniff");

        let mut script = HeaderMap::new();
        script.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/javascript"));
        guard(&mut script);
        assert!(!script.contains_key(header::CONTENT_SECURITY_POLICY));
        assert_eq!(script[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
    }

    #[test]
    fn a_given_console_dir_is_used_if_it_holds_a_build() {
        let dir = tempfile::tempdir().expect("temp dir");
        let err = locate(Some(dir.path().to_owned())).expect_err("no build there");
        assert!(err.contains("--console-dir") && err.contains("index.html"), "{err}");
        std::fs::write(dir.path().join("index.html"), "<div id=root></div>").expect("index");
        assert_eq!(locate(Some(dir.path().to_owned())), Ok(Some(dir.path().to_owned())));
    }
}
