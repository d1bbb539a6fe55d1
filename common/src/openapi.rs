//! What both planes' OpenAPI documents declare beyond each handler's own annotations:
//! the answers any request may get, whatever its handler ([`Standard`]), and routes
//! that serve one operation under a second path or method ([`Alias`]).

use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::path::{HttpMethod, Operation, PathItem};
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::schema::{ObjectBuilder, Ref, Type};
use utoipa::openapi::{ContentBuilder, OpenApi, RefOr, Response};

/// Adds to every operation what its handler does not declare but may answer:
/// - 500, an internal error (logged with the response's `x-request-id`);
/// - 503 on every `/v1/` or `/api/` operation: the records store is unreachable;
/// - 413 on every operation that takes a body: the body is over the route's limit;
/// - the `x-request-id` header on every response, `Retry-After` on every 429, and
///   with `rate_limited`, the `X-RateLimit-*` headers on the answers and 429s of every
///   `/v1/` or `/api/` operation (other refusals carry them too, but say nothing of
///   the budget a client needs);
/// - `Idempotent-Replayed` on every response of an operation that takes an
///   `x-idempotency-key`.
pub struct Standard {
    pub rate_limited: bool,
}

impl utoipa::Modify for Standard {
    fn modify(&self, openapi: &mut OpenApi) {
        for (path, item) in &mut openapi.paths.paths {
            let api = path.starts_with("/v1/") || path.starts_with("/api/");
            for operation in operations(item) {
                let has_body = operation.request_body.is_some();
                let idempotent = operation
                    .parameters
                    .iter()
                    .flatten()
                    .any(|parameter| parameter.name == "x-idempotency-key");
                let responses = &mut operation.responses.responses;
                let mut declare = |status: &str, description: &str| {
                    responses
                        .entry(status.to_owned())
                        .or_insert_with(|| RefOr::T(error_response(description)));
                };
                declare("500", "an internal error, logged with the response's `x-request-id`");
                if api {
                    declare("503", "the records store is unreachable");
                }
                if has_body {
                    declare("413", "the request body is over the route's limit");
                }
                for (status, response) in responses.iter_mut() {
                    let RefOr::T(response) = response else { continue };
                    add_header(response, "x-request-id", Type::String, "this request's id, as logged");
                    if self.rate_limited && api && (status.starts_with('2') || status == "429") {
                        add_rate_limit_headers(response);
                    }
                    if status == "429" {
                        add_header(response, "retry-after", Type::Integer, "seconds until a retry can pass");
                    }
                    if idempotent {
                        add_header(
                            response,
                            "idempotent-replayed",
                            Type::Boolean,
                            "`true` when this is the stored answer to an earlier request with the same key",
                        );
                    }
                }
            }
        }
    }
}

/// Declares the operation at `from` again at `to`, under `operation_id`, for routes
/// that serve it under a second path or method (generated clients need a distinct id).
pub struct Alias {
    pub from: (&'static str, HttpMethod),
    pub to: (&'static str, HttpMethod),
    pub operation_id: &'static str,
}

impl utoipa::Modify for Alias {
    fn modify(&self, openapi: &mut OpenApi) {
        let (from_path, from_method) = &self.from;
        let mut aliased = openapi
            .paths
            .paths
            .get_mut(*from_path)
            .and_then(|item| operation(item, from_method).clone())
            .unwrap_or_else(|| panic!("no operation at {from_path} to alias as {}", self.operation_id));
        aliased.operation_id = Some(self.operation_id.to_owned());
        let (to_path, to_method) = &self.to;
        let item = openapi.paths.paths.entry((*to_path).to_owned()).or_default();
        *operation(item, to_method) = Some(aliased);
    }
}

fn operation<'a>(item: &'a mut PathItem, method: &HttpMethod) -> &'a mut Option<Operation> {
    match method {
        HttpMethod::Get => &mut item.get,
        HttpMethod::Post => &mut item.post,
        HttpMethod::Put => &mut item.put,
        HttpMethod::Delete => &mut item.delete,
        HttpMethod::Options => &mut item.options,
        HttpMethod::Head => &mut item.head,
        HttpMethod::Patch => &mut item.patch,
        HttpMethod::Trace => &mut item.trace,
    }
}

fn operations(item: &mut PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        &mut item.get,
        &mut item.post,
        &mut item.put,
        &mut item.delete,
        &mut item.options,
        &mut item.head,
        &mut item.patch,
        &mut item.trace,
    ]
    .into_iter()
    .flatten()
}

fn error_response(description: &str) -> Response {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("ErrorEnvelope")))
                .build(),
        )
        .build()
}

fn add_header(response: &mut Response, name: &str, kind: Type, description: &str) {
    response.headers.entry(name.to_owned()).or_insert_with(|| {
        HeaderBuilder::new()
            .schema(ObjectBuilder::new().schema_type(kind))
            .description(Some(description))
            .build()
    });
}

fn add_rate_limit_headers(response: &mut Response) {
    for (name, description) in [
        (
            "x-ratelimit-limit",
            "the per-minute quota of the budget the request spent from",
        ),
        ("x-ratelimit-remaining", "what could be spent right now"),
        ("x-ratelimit-reset", "epoch seconds when the budget is full again"),
    ] {
        add_header(response, name, Type::Integer, description);
    }
}
