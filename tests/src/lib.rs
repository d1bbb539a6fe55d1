//! The harness Quiver's integration tests share: a fresh Postgres database per test
//! (from `DATABASE_URL`, or a testcontainers Postgres when that is unset and Docker
//! answers), store fixtures for both backends, and a way to run the real `quiver`
//! binary.

pub mod app;
pub mod crash;
pub mod fake_openai;
pub mod models;
pub mod postgres;
pub mod redis;
pub mod stores;
