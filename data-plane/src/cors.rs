//! Which web pages may call the data plane from a browser: project tokens exist for
//! browser clients, and a browser sends their requests (a JSON body, an
//! `Authorization` header) only after a CORS preflight the API answers.

use std::str::FromStr;
use std::time::Duration;

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::Response;
use tower::{Layer as _, ServiceExt as _};
use tower_http::cors::{AllowOrigin, CorsLayer};

/// The origins allowed (`--cors-origins`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum CorsOrigins {
    /// Any page (`*`, the default). Credentials here are headers a page must hold
    /// itself (an API key or a project token), never cookies a browser adds on its own,
    /// so another site's page gains nothing from being allowed.
    #[default]
    Any,
    /// Only these origins (`https://app.example.com`).
    List(Vec<HeaderValue>),
    /// None: no CORS headers, browsers refuse every cross-origin call (`none`).
    None,
}

impl FromStr for CorsOrigins {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.trim() {
            "*" => Ok(Self::Any),
            "" | "none" => Ok(Self::None),
            list => list
                .split(',')
                .map(|origin| {
                    let origin = origin.trim();
                    let valid = origin.split_once("://").is_some_and(|(scheme, host)| {
                        matches!(scheme, "http" | "https") && !host.is_empty() && !host.contains('/')
                    });
                    if !valid {
                        return Err(format!(
                            "\"{origin}\" is not an origin: write scheme://host[:port], no path (e.g. \
                             https://app.example.com), or * for any, or none"
                        ));
                    }
                    HeaderValue::from_str(origin).map_err(|_| format!("\"{origin}\" is not a valid origin"))
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Self::List),
        }
    }
}

/// Runs a request through `cors` when it comes from a browser page (it has an
/// `Origin`: every cross-origin request and preflight does), and straight on
/// otherwise: a client on a server gains nothing from the headers, and applying the
/// layer to every request cost a search request about 5,000 instructions (cloning
/// the layer's settings, growing the response's header map; docs/benchmarks.md).
pub async fn for_browsers(State(cors): State<Arc<CorsLayer>>, request: Request, next: Next) -> Response {
    if !request.headers().contains_key(header::ORIGIN) {
        // The answer depends on Origin: a cache must not give this one to a page.
        let mut response = next.run(request).await;
        response
            .headers_mut()
            .append(header::VARY, HeaderValue::from_static("origin"));
        return response;
    }
    match cors.layer(next).oneshot(request).await {
        Ok(response) => response,
        Err(infallible) => match infallible {},
    }
}

/// The layer that answers preflights and marks responses, or `None` for
/// [`CorsOrigins::None`].
pub fn layer(origins: &CorsOrigins) -> Option<CorsLayer> {
    let allow = match origins {
        CorsOrigins::Any => AllowOrigin::any(),
        CorsOrigins::List(list) => AllowOrigin::list(list.clone()),
        CorsOrigins::None => return None,
    };
    let names = |names: &[&'static str]| {
        names
            .iter()
            .map(|name| HeaderName::from_static(name))
            .collect::<Vec<_>>()
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST, Method::PUT, Method::DELETE])
            .allow_headers(names(&[
                "authorization",
                "content-type",
                "x-api-key",
                crate::idempotency::HEADER,
                quiver_common::http::REQUEST_ID_HEADER,
            ]))
            .expose_headers(names(&[
                quiver_common::http::REQUEST_ID_HEADER,
                "retry-after",
                "x-ratelimit-limit",
                "x-ratelimit-remaining",
                "x-ratelimit-reset",
                "idempotent-replayed",
            ]))
            .max_age(Duration::from_secs(600)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_read_from_the_flag() {
        assert_eq!("*".parse::<CorsOrigins>(), Ok(CorsOrigins::Any));
        assert_eq!("none".parse::<CorsOrigins>(), Ok(CorsOrigins::None));
        assert_eq!(
            "https://a.example.com, http://localhost:5173".parse::<CorsOrigins>(),
            Ok(CorsOrigins::List(vec![
                HeaderValue::from_static("https://a.example.com"),
                HeaderValue::from_static("http://localhost:5173"),
            ]))
        );
        for bad in ["a.example.com", "https://a.example.com/app", "ftp://x", "https://"] {
            assert!(bad.parse::<CorsOrigins>().is_err(), "{bad}");
        }
    }
}
