//! The control plane: accounts, projects, API keys and plans, served as a JSON API
//! under `/v1` (and the console) on its own listener.

use std::sync::Arc;

use axum::Router;
use quiver_common::http::{ReadinessCheck, finish_router, health_router};
use quiver_store::Store;

/// The control plane's router: health probes and, as the product grows, the `/v1` API.
pub fn router(store: Arc<dyn Store>) -> Router {
    let checks: Vec<Arc<dyn ReadinessCheck>> = vec![store];
    finish_router(health_router(checks))
}
