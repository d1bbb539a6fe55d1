use quiver_common::openapi::{Alias, Standard};
use utoipa::openapi::path::HttpMethod;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

/// The data plane's OpenAPI document.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Quiver data plane",
        description = "The public APIs of a project. Authenticate with an API key (`x-api-key`, \
                       `Authorization: Bearer`, or `?api_key=`) or a project token. Every error is \
                       `{\"error\":{\"code\",\"message\",\"detail\",\"status\"}}`."
    ),
    paths(
        quiver_common::http::healthz,
        quiver_common::http::readyz,
        crate::namespaces::list,
        crate::namespaces::remove,
        crate::vectors::upsert,
        crate::vectors::search,
        crate::vectors::query,
        crate::vectors::update,
        crate::vectors::remove,
        crate::vectors::list,
        crate::documents::insert,
        crate::documents::insert_batch,
        crate::query::list,
        crate::documents::fetch,
        crate::documents::replace,
        crate::documents::remove,
        crate::documents::search,
        crate::embeddings::models,
        crate::query::query,
    ),
    components(schemas(crate::vectors::VectorInput, crate::vectors::VectorView, crate::documents::DocumentInput)),
    modifiers(&KeyAuth, &STANDARD, &POST_DELETE, &SHORT_QUERY),
    tags(
        (name = "vectors", description = "Upsert, search, fetch, update, delete and list vectors"),
        (name = "namespaces", description = "Namespaces of the key's project"),
        (name = "documents", description = "Collections of documents, embedded on the way in, and semantic search"),
        (name = "query", description = "NQL: SQL over a project's collections (also at POST /query)"),
        (name = "health", description = "Probes"),
    )
)]
pub struct DataPlaneApi;

struct KeyAuth;

const STANDARD: Standard = Standard { rate_limited: true };
/// For clients that cannot send a body with DELETE.
const POST_DELETE: Alias = Alias {
    from: ("/v1/vectors/delete", HttpMethod::Delete),
    to: ("/v1/vectors/delete", HttpMethod::Post),
    operation_id: "delete_vectors_post",
};
const SHORT_QUERY: Alias = Alias {
    from: ("/api/v1/query", HttpMethod::Post),
    to: ("/query", HttpMethod::Post),
    operation_id: "query_short",
};

impl Modify for KeyAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key_header",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "x-api-key",
                "An API key: qv_live_<key id>_<secret>",
            ))),
        );
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("An API key, or a project token minted by the control plane"))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "api_key_query",
            SecurityScheme::ApiKey(ApiKey::Query(ApiKeyValue::with_description(
                "api_key",
                "An API key in the query string, for clients that cannot set headers (discouraged)",
            ))),
        );
    }
}

/// The spec as pretty JSON, as checked in under `openapi/`.
pub fn spec_json() -> String {
    DataPlaneApi::openapi()
        .to_pretty_json()
        .expect("the OpenAPI document serializes")
}
