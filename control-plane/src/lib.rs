//! The control plane: accounts, projects, API keys, plans and browser tokens, served
//! as a JSON API under `/v1` on its own listener.
//!
//! Every route but signup, login and the plan catalog needs a console session
//! (`Authorization: Bearer <session JWT>`), and every project route checks that the
//! project belongs to the session's account: another account's project is a 404.

use std::sync::Arc;

use axum::Router;
use quiver_common::bus::Bus;
use quiver_common::http::{ReadinessCheck, Weight, finish_router, health_router};
use quiver_common::token::JwtKeys;
use quiver_store::Store;

/// Signup and login.
pub mod accounts;
/// The web console's files.
pub mod console;
/// API keys: mint, list, revoke; also used by the `quiver keys` CLI.
pub mod keys;
/// Publishing projects' rate limits to the data plane.
pub mod limits;
/// The OpenAPI document of this plane.
pub mod openapi;
/// The plan catalog.
pub mod plans;
/// Projects: create, list, read, change plan, delete.
pub mod projects;
/// The session extractor.
pub mod session;
/// Short-lived project tokens for browser clients.
pub mod tokens;

/// Settings of the control plane.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The data plane's public base URL, shown on every project.
    pub api_base_url: String,
    /// How long a console session lasts.
    pub session_ttl: chrono::Duration,
    /// The built web console (`console/dist`) to serve at `/`; `None` serves a page
    /// that says how to build it.
    pub console_dir: Option<Arc<std::path::PathBuf>>,
    /// Proxies whose `X-Forwarded-For` names the client (sign-ins are throttled per
    /// client address).
    pub trusted_proxies: quiver_common::client::TrustedProxies,
}

/// Everything a control-plane handler may use.
#[derive(Clone)]
pub struct ControlPlane {
    pub store: Arc<dyn Store>,
    pub bus: Arc<dyn Bus>,
    pub jwt: JwtKeys,
    pub settings: Arc<Settings>,
    account_attempts: Arc<accounts::AccountThrottle>,
}

impl ControlPlane {
    pub fn new(store: Arc<dyn Store>, bus: Arc<dyn Bus>, jwt: JwtKeys, settings: Settings) -> Self {
        Self {
            store,
            bus,
            jwt,
            settings: Arc::new(settings),
            account_attempts: Arc::new(accounts::AccountThrottle::default()),
        }
    }

    /// The control plane's router: `/v1` and the health probes.
    pub fn router(self) -> Router {
        // Without its store the control plane serves nothing; without the bus it still
        // commits every change (pods poll for what they miss).
        let checks: Vec<(Arc<dyn ReadinessCheck>, Weight)> = vec![
            (self.store.clone(), Weight::Required),
            (self.bus.clone(), Weight::Shared),
        ];
        let api = Router::new()
            .merge(accounts::router())
            .merge(plans::router())
            .merge(projects::router())
            .merge(keys::router())
            .merge(tokens::router())
            // `/docs`: Swagger UI, bundled in the binary (no CDN); `/openapi.json`: the spec.
            .merge(utoipa_swagger_ui::SwaggerUi::new("/docs").url(
                "/openapi.json",
                <openapi::ControlPlaneApi as utoipa::OpenApi>::openapi(),
            ))
            .route("/", axum::routing::any(console::serve))
            .route("/{*path}", axum::routing::any(console::serve))
            .with_state(self);
        finish_router(api.merge(health_router(checks)))
    }
}
