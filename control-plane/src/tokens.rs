use std::collections::BTreeSet;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use chrono::{DateTime, Duration, Utc};
use quiver_common::domain::{ProjectId, Scope};
use quiver_common::token::MAX_PROJECT_TOKEN_TTL;
use quiver_common::{ApiError, AppJson};
use serde::{Deserialize, Serialize};

use crate::ControlPlane;
use crate::session::Session;

pub fn router() -> Router<ControlPlane> {
    Router::new().route("/v1/projects/{id}/tokens", post(mint))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    /// What the token may do; by default, read only.
    #[serde(default)]
    pub scopes: Option<BTreeSet<Scope>>,
    /// When given, the only namespaces the token may touch.
    #[serde(default)]
    pub namespaces: Option<BTreeSet<String>>,
    /// Lifetime in seconds, 1 to 3600 (default 900).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 3600, default = 900)]
    pub ttl_seconds: Option<i64>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TokenView {
    pub token: String,
    pub project_id: ProjectId,
    pub scopes: BTreeSet<Scope>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<BTreeSet<String>>,
    pub expires_at: DateTime<Utc>,
}

/// Mint a short-lived token for browser clients of one project's data plane.
#[utoipa::path(
    post,
    operation_id = "create_token",
    path = "/v1/projects/{id}/tokens",
    tag = "tokens",
    security(("session" = [])),
    params(("id" = String, Path, description = "project id")),
    request_body = CreateToken,
    responses(
        (status = 201, body = TokenView),
        (status = 400, description = "bad scopes, namespaces or ttl", body = quiver_common::error::ErrorEnvelope),
        (status = 401, body = quiver_common::error::ErrorEnvelope),
        (status = 404, body = quiver_common::error::ErrorEnvelope),
    )
)]
pub async fn mint(
    State(state): State<ControlPlane>,
    session: Session,
    Path(id): Path<String>,
    AppJson(body): AppJson<CreateToken>,
) -> Result<(StatusCode, Json<TokenView>), ApiError> {
    let project = session.owned_project(&state, &id).await?;
    let max = MAX_PROJECT_TOKEN_TTL.num_seconds();
    let ttl = body.ttl_seconds.unwrap_or(900);
    if !(1..=max).contains(&ttl) {
        return Err(ApiError::Validation {
            message: format!("ttl_seconds {ttl} is out of range: use 1 to {max}"),
            detail: Some("field ttl_seconds".into()),
        });
    }
    let scopes = body.scopes.unwrap_or_else(|| BTreeSet::from([Scope::Read]));
    if scopes.is_empty() {
        return Err(ApiError::Validation {
            message: "a token needs at least one scope: read, write or admin".into(),
            detail: Some("field scopes".into()),
        });
    }
    if let Some(namespaces) = &body.namespaces
        && (namespaces.is_empty() || namespaces.iter().any(|n| n.is_empty()))
    {
        return Err(ApiError::Validation {
            message: "namespaces, when given, must list at least one non-empty name".into(),
            detail: Some("field namespaces".into()),
        });
    }
    let subject = format!("user:{}", session.user);
    let (token, expires_at) = state.jwt.issue_project_token(
        project.id,
        scopes.clone(),
        body.namespaces.clone(),
        subject,
        Duration::seconds(ttl),
    );
    Ok((
        StatusCode::CREATED,
        Json(TokenView {
            token,
            project_id: project.id,
            scopes,
            namespaces: body.namespaces,
            expires_at,
        }),
    ))
}
