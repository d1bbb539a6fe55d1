//! Quiver's integration tests, in one binary so the workspace links once.

mod support;

mod bus;
mod control_plane;
mod crash;
mod data_plane_auth;
mod documents;
mod index_memory;
mod limits;
mod migrations;
mod openapi;
mod snapshots;
mod store_conformance;
mod vectors;
