//! Types every Quiver crate shares: identifiers and other domain newtypes, the one
//! error type that speaks the HTTP error envelope, the HTTP plumbing common to both
//! planes (request ids, health probes, fallbacks) and telemetry setup.

/// Notices from the control plane to every data-plane pod, in-process or over Redis.
pub mod bus;
/// The address of the client behind a request, through trusted proxies.
pub mod client;
/// Domain types parsed at the boundary: ids, roles, metrics, plans.
pub mod domain;
/// The error envelope: `ApiError` and the `AppJson` extractor.
pub mod error;
/// Background rounds on a shared object for as long as it lives.
pub mod every;
/// HTTP plumbing shared by both planes: request ids, tracing, health probes, fallbacks.
pub mod http;
/// JSON values compared.
pub mod json;
/// What both planes' OpenAPI documents declare beyond their handlers' annotations.
pub mod openapi;
/// URLs with their secrets replaced, for messages and logs.
pub mod redact;
/// Passwords and API keys: generation, argon2id hashing, parsing.
pub mod secrets;
/// Logging setup: pretty on a terminal, JSON for machines.
pub mod telemetry;
/// Signed JWTs: console sessions and browser tokens for the data plane.
pub mod token;

pub use error::{ApiError, AppJson, AppPath, AppQuery};
