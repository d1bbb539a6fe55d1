//! The data plane: stateless pods that authenticate API keys, enforce limits and serve
//! the vector, document and query APIs over per-namespace indexes.

use std::sync::Arc;

use axum::Router;
use quiver_common::http::{ReadinessCheck, finish_router, health_router};
use quiver_store::Store;

/// The data plane's router: health probes and, as the product grows, the public APIs.
pub fn router(store: Arc<dyn Store>) -> Router {
    let checks: Vec<Arc<dyn ReadinessCheck>> = vec![store];
    finish_router(health_router(checks))
}
