//! The data plane: stateless pods that authenticate API keys and project tokens and
//! serve the public APIs over each project's data.

use std::sync::Arc;

use axum::Router;
use quiver_common::bus::Bus;
use quiver_common::http::{ReadinessCheck, finish_router, health_router};
use quiver_common::token::JwtKeys;
use quiver_store::Store;

/// Credentials to principals: API keys (cached) and project tokens.
pub mod auth;
/// Listing and deleting namespaces.
pub mod namespaces;
/// The OpenAPI document of this plane.
pub mod openapi;
/// The projects this pod serves, cached.
pub mod projects;

async fn openapi_json() -> impl axum::response::IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        openapi::spec_json(),
    )
}

/// Everything a data-plane handler may use.
#[derive(Clone)]
pub struct DataPlane {
    pub store: Arc<dyn Store>,
    pub bus: Arc<dyn Bus>,
    pub auth: Arc<auth::Authenticator>,
    pub projects: Arc<projects::Projects>,
}

impl DataPlane {
    /// A pod's state; starts the tasks that keep its key cache current.
    pub fn new(store: Arc<dyn Store>, bus: Arc<dyn Bus>, jwt: JwtKeys) -> Self {
        let auth = Arc::new(auth::Authenticator::new(Arc::clone(&store), jwt));
        auth.spawn_watchers(bus.as_ref());
        let projects = projects::Projects::new(Arc::clone(&store), bus.as_ref());
        Self {
            store,
            bus,
            auth,
            projects,
        }
    }

    /// The data plane's router: the public APIs and the health probes.
    pub fn router(self) -> Router {
        let checks: Vec<Arc<dyn ReadinessCheck>> = vec![self.store.clone(), self.bus.clone()];
        let api = Router::new()
            .merge(namespaces::router())
            .route("/openapi.json", axum::routing::get(openapi_json))
            .with_state(self);
        finish_router(api.merge(health_router(checks)))
    }
}
