use std::collections::BTreeSet;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use chrono::{DateTime, Duration, Utc};
use quiver_common::AppPath;
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
    /// What the token may do, each at most once; by default, read only.
    #[serde(default)]
    #[schema(value_type = Option<BTreeSet<Scope>>)]
    pub scopes: Option<Vec<Scope>>,
    /// When given, the only namespaces the token may touch, each at most once.
    #[serde(default)]
    #[schema(value_type = Option<BTreeSet<String>>)]
    pub namespaces: Option<Vec<String>>,
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
    AppPath(id): AppPath<String>,
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
    let scopes = match body.scopes {
        None => BTreeSet::from([Scope::Read]),
        Some(scopes) => distinct(scopes, "scopes")?,
    };
    let namespaces = body.namespaces.map(|n| distinct(n, "namespaces")).transpose()?;
    if scopes.is_empty() {
        return Err(ApiError::Validation {
            message: "a token needs at least one scope: read, write or admin".into(),
            detail: Some("field scopes".into()),
        });
    }
    if let Some(namespaces) = &namespaces
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
        namespaces.clone(),
        subject,
        Duration::seconds(ttl),
    );
    Ok((
        StatusCode::CREATED,
        Json(TokenView {
            token,
            project_id: project.id,
            scopes,
            namespaces,
            expires_at,
        }),
    ))
}

/// The items as a set, refusing a list that names one twice (the spec says each at most once).
fn distinct<T: Ord>(items: Vec<T>, field: &str) -> Result<BTreeSet<T>, ApiError> {
    let count = items.len();
    let set: BTreeSet<T> = items.into_iter().collect();
    if set.len() != count {
        return Err(ApiError::Validation {
            message: format!("{field} lists the same value more than once"),
            detail: Some(format!("field {field}")),
        });
    }
    Ok(set)
}
