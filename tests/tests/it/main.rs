//! Quiver's integration tests, in one binary so the workspace links once.

mod crash;
mod store_conformance;
