use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

/// The control plane's OpenAPI document.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Quiver control plane",
        description = "Accounts, projects, API keys, plans and browser tokens. Every error is \
                       `{\"error\":{\"code\",\"message\",\"detail\",\"status\"}}`."
    ),
    paths(
        quiver_common::http::healthz,
        quiver_common::http::readyz,
        crate::accounts::signup,
        crate::accounts::login,
        crate::accounts::logout,
        crate::plans::list,
        crate::projects::create,
        crate::projects::list,
        crate::projects::read,
        crate::projects::update,
        crate::projects::remove,
        crate::keys::create,
        crate::keys::list,
        crate::keys::revoke,
        crate::tokens::mint,
    ),
    modifiers(&SessionAuth, &STANDARD),
    tags(
        (name = "accounts", description = "Sign up and sign in"),
        (name = "plans", description = "The plan catalog"),
        (name = "projects", description = "Projects of the signed-in account"),
        (name = "keys", description = "API keys of a project"),
        (name = "tokens", description = "Short-lived browser tokens"),
        (name = "health", description = "Probes"),
    )
)]
pub struct ControlPlaneApi;

/// The control plane's requests spend no project's rate limit.
const STANDARD: quiver_common::openapi::Standard = quiver_common::openapi::Standard { rate_limited: false };

struct SessionAuth;

impl Modify for SessionAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "session",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some("A session token from /v1/auth/signup or /v1/auth/login"))
                    .build(),
            ),
        );
    }
}

/// The spec as pretty JSON, as checked in under `openapi/`.
pub fn spec_json() -> String {
    ControlPlaneApi::openapi()
        .to_pretty_json()
        .expect("the OpenAPI document serializes")
}
