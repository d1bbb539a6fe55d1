use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{delete, get};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use quiver_common::AppPath;
use quiver_common::bus::Notice;
use quiver_common::domain::{ProjectId, Role};
use quiver_common::secrets::{HashQueue, generate_api_key, hash_secret_bounded, key_prefix};
use quiver_common::{ApiError, AppJson};
use quiver_store::{ApiKey, NewApiKey, Store};
use serde::{Deserialize, Serialize};

use crate::ControlPlane;
use crate::session::Session;

pub fn router() -> Router<ControlPlane> {
    Router::new()
        .route("/v1/projects/{id}/keys", get(list).post(create))
        .route("/v1/projects/{id}/keys/{key_id}", delete(revoke))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    #[schema(min_length = 1, max_length = 100, example = "my-app")]
    pub label: String,
    pub role: Role,
    pub expires_at: Option<DateTime<Utc>>,
}

/// A key as listings show it: never the secret.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct KeyView {
    pub id: String,
    /// `qv_live_<id>`: the public start of the key, to recognise it by.
    pub prefix: String,
    pub label: String,
    pub role: Role,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

impl From<ApiKey> for KeyView {
    fn from(key: ApiKey) -> Self {
        Self {
            prefix: key_prefix(&key.id),
            id: key.id,
            label: key.label,
            role: key.role,
            created_at: key.created_at,
            expires_at: key.expires_at,
            last_used_at: key.last_used_at,
            revoked_at: key.revoked_at,
        }
    }
}

/// A new key: the only time the whole key is shown.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CreatedKey {
    /// The whole key. Store it now: Quiver keeps only a hash of its secret.
    pub key: String,
    #[serde(flatten)]
    pub view: KeyView,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct KeyList {
    pub keys: Vec<KeyView>,
}

/// Validates a key request, mints the key and stores the hash of its secret.
/// Shared by the HTTP API and the `quiver keys create` CLI.
pub async fn mint(store: &dyn Store, project: ProjectId, request: CreateKey) -> Result<CreatedKey, ApiError> {
    let label = request.label.trim().to_owned();
    if label.is_empty() || label.chars().count() > 100 {
        return Err(ApiError::Validation {
            message: "the key label must have 1 to 100 characters".into(),
            detail: Some("field label".into()),
        });
    }
    if let Some(expires_at) = request.expires_at
        && expires_at <= Utc::now()
    {
        return Err(ApiError::Validation {
            message: format!("expires_at {expires_at} is in the past"),
            detail: Some("field expires_at".into()),
        });
    }
    let generated = generate_api_key();
    let secret = generated.secret.clone();
    let secret_hash = hash_secret_bounded(HashQueue::Accounts, secret).await?;
    let stored = store
        .create_api_key(NewApiKey {
            id: generated.id,
            project_id: project,
            label,
            role: request.role,
            secret_hash,
            expires_at: request.expires_at,
        })
        .await?;
    tracing::info!(project_id = %project, key_id = %stored.id, role = %stored.role, "api key created");
    Ok(CreatedKey {
        key: generated.full,
        view: stored.into(),
    })
}

/// Revokes a key and tells every pod. Shared by the HTTP API and the CLI.
pub async fn revoke_key(
    store: &dyn Store,
    bus: &dyn quiver_common::bus::Bus,
    project: ProjectId,
    key_id: &str,
) -> Result<(), ApiError> {
    if !store.revoke_api_key(project, key_id).await? {
        return Err(ApiError::NotFound(format!("no live key {key_id} in project {project}")));
    }
    tracing::info!(project_id = %project, key_id = %key_id, "api key revoked");
    // The revocation is done: pods that miss the notice find it in the store's
    // revocations, which they poll every second.
    let notice = Notice::KeyRevoked {
        project_id: project,
        key_id: key_id.to_owned(),
    };
    if let Err(err) = bus.publish(notice).await {
        tracing::warn!(error = %format!("{err:#}"), project_id = %project, key_id = %key_id,
            "announcing a key's revocation failed; pods find it by polling");
    }
    Ok(())
}

/// Create a key. The response is the only time the whole key is shown.
#[utoipa::path(
    post,
    operation_id = "create_key",
    path = "/v1/projects/{id}/keys",
    tag = "keys",
    security(("session" = [])),
    params(("id" = String, Path, description = "project id")),
    request_body = CreateKey,
    responses(
        (status = 201, body = CreatedKey),
        (status = 400, description = "bad label, role or expiry", body = quiver_common::error::ErrorEnvelope),
        (status = 401, body = quiver_common::error::ErrorEnvelope),
        (status = 404, body = quiver_common::error::ErrorEnvelope),
    )
)]
pub async fn create(
    State(state): State<ControlPlane>,
    session: Session,
    AppPath(id): AppPath<String>,
    AppJson(body): AppJson<CreateKey>,
) -> Result<(StatusCode, Json<CreatedKey>), ApiError> {
    let project = session.owned_project(&state, &id).await?;
    let created = mint(state.store.as_ref(), project.id, body).await?;
    Ok((StatusCode::CREATED, Json(created)))
}

/// A project's keys: prefix, label, role, dates; never the secret.
#[utoipa::path(
    get,
    operation_id = "list_keys",
    path = "/v1/projects/{id}/keys",
    tag = "keys",
    security(("session" = [])),
    params(("id" = String, Path, description = "project id")),
    responses((status = 200, body = KeyList), (status = 401, body = quiver_common::error::ErrorEnvelope), (status = 404, body = quiver_common::error::ErrorEnvelope))
)]
pub async fn list(
    State(state): State<ControlPlane>,
    session: Session,
    AppPath(id): AppPath<String>,
) -> Result<Json<KeyList>, ApiError> {
    let project = session.owned_project(&state, &id).await?;
    let keys = state.store.api_keys_of(project.id).await?;
    Ok(Json(KeyList {
        keys: keys.into_iter().map(KeyView::from).collect(),
    }))
}

/// Revoke a key: every data-plane pod refuses it within a second.
#[utoipa::path(
    delete,
    operation_id = "revoke_key",
    path = "/v1/projects/{id}/keys/{key_id}",
    tag = "keys",
    security(("session" = [])),
    params(("id" = String, Path, description = "project id"), ("key_id" = String, Path, description = "key id")),
    responses((status = 204, description = "revoked"), (status = 401, body = quiver_common::error::ErrorEnvelope), (status = 404, body = quiver_common::error::ErrorEnvelope))
)]
pub async fn revoke(
    State(state): State<ControlPlane>,
    session: Session,
    AppPath((id, key_id)): AppPath<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let project = session.owned_project(&state, &id).await?;
    revoke_key(state.store.as_ref(), state.bus.as_ref(), project.id, &key_id).await?;
    Ok(StatusCode::NO_CONTENT)
}
