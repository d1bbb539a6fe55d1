use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::{delete, get};
use axum::{Json, Router};
use quiver_common::ApiError;
use quiver_common::AppPath;
use quiver_common::domain::Scope;
use serde::Serialize;

use crate::DataPlane;
use crate::auth::Principal;
use crate::idempotency::idempotent;
use crate::limits::Kind;

pub fn router() -> Router<DataPlane> {
    Router::new()
        .route("/v1/namespaces", get(list))
        .route("/v1/namespaces/{namespace}", delete(remove))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct NamespaceView {
    pub name: String,
    pub vector_count: u64,
    /// The sequence number of the namespace's last write.
    pub seq: i64,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct NamespaceList {
    pub namespaces: Vec<NamespaceView>,
}

/// The project's namespaces with their vector counts.
#[utoipa::path(
    get,
    operation_id = "list_namespaces",
    path = "/v1/namespaces",
    tag = "namespaces",
    security(("api_key_header" = []), ("bearer" = []), ("api_key_query" = [])),
    responses(
        (status = 200, body = NamespaceList),
        (status = 401, description = "missing or invalid credential", body = quiver_common::error::ErrorEnvelope),
        (status = 403, description = "no read scope", body = quiver_common::error::ErrorEnvelope),
        (status = 429, description = "the project's rate limit is spent", body = quiver_common::error::ErrorEnvelope),
    )
)]
pub async fn list(State(state): State<DataPlane>, principal: Principal) -> Result<Json<NamespaceList>, ApiError> {
    principal.require(Scope::Read)?;
    state.admit(&principal, Kind::Queries, 1).await?;
    let namespaces = state
        .store
        .namespaces(principal.project_id)
        .await?
        .into_iter()
        .filter(|ns| principal.may_see(&ns.name))
        .map(|ns| NamespaceView {
            name: ns.name,
            vector_count: ns.count,
            seq: ns.seq,
        })
        .collect();
    Ok(Json(NamespaceList { namespaces }))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Deleted {
    pub deleted: bool,
    pub namespace: String,
}

/// Delete a namespace and every record in it (admin scope).
#[utoipa::path(
    delete,
    operation_id = "delete_namespace",
    path = "/v1/namespaces/{namespace}",
    tag = "namespaces",
    security(("api_key_header" = []), ("bearer" = []), ("api_key_query" = [])),
    params(
        ("namespace" = String, Path),
        ("x-idempotency-key" = Option<String>, Header, description = "replay-safe retries for 24 h"),
    ),
    responses(
        (status = 200, body = Deleted),
        (status = 400, body = quiver_common::error::ErrorEnvelope),
        (status = 401, body = quiver_common::error::ErrorEnvelope),
        (status = 403, description = "no admin scope", body = quiver_common::error::ErrorEnvelope),
        (status = 404, description = "no such namespace", body = quiver_common::error::ErrorEnvelope),
        (status = 409, body = quiver_common::error::ErrorEnvelope),
        (status = 422, body = quiver_common::error::ErrorEnvelope),
        (status = 429, description = "the project's rate limit is spent", body = quiver_common::error::ErrorEnvelope),
    )
)]
pub async fn remove(
    State(state): State<DataPlane>,
    principal: Principal,
    headers: HeaderMap,
    AppPath(namespace): AppPath<String>,
) -> Result<Response, ApiError> {
    principal.require(Scope::Admin)?;
    // The same names as everywhere else: a name no namespace can have is a 400.
    let namespace = crate::vectors::namespace(Some(namespace))?;
    principal.require_namespace(&namespace)?;
    // The namespace is the whole request: a retry of this delete replays its answer
    // rather than finding the namespace gone.
    idempotent(
        &state,
        &principal,
        &headers,
        "namespace-delete",
        namespace.as_bytes(),
        async {
            state.admit(&principal, Kind::Documents, 1).await?;
            if !state.store.delete_namespace(principal.project_id, &namespace).await? {
                return Err(ApiError::NotFound(format!("no namespace \"{namespace}\"")));
            }
            state.indexes.forget_namespace(principal.project_id, &namespace).await;
            let notice = quiver_common::bus::Notice::NamespaceDeleted {
                project_id: principal.project_id,
                namespace: namespace.clone(),
            };
            if let Err(err) = state.bus.publish(notice).await {
                tracing::warn!(error = %err, "publishing a namespace deletion failed");
            }
            tracing::info!(project_id = %principal.project_id, namespace = %namespace, "namespace deleted");
            Ok(serde_json::to_value(Deleted {
                deleted: true,
                namespace: namespace.clone(),
            })
            .map_err(anyhow::Error::from)?)
        },
    )
    .await
}
