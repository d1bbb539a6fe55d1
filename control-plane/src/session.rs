use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use quiver_common::ApiError;
use quiver_common::domain::{ProjectId, UserId};
use quiver_store::Project;

use crate::ControlPlane;

/// The account behind a valid console session (`Authorization: Bearer <JWT>`) that
/// no log out has ended.
#[derive(Debug, Clone, Copy)]
pub struct Session {
    pub user: UserId,
}

impl FromRequestParts<ControlPlane> for Session {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ControlPlane) -> Result<Self, Self::Rejection> {
        let token = parts
            .headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .and_then(|(scheme, token)| scheme.eq_ignore_ascii_case("bearer").then_some(token))
            .ok_or_else(|| {
                ApiError::Unauthorized("sign in first: send Authorization: Bearer <session token>".into())
            })?;
        let (user, epoch) = state
            .jwt
            .verify_session(token.trim())
            .map_err(|_| ApiError::Unauthorized("the session token is invalid or expired: sign in again".into()))?;
        // A log out ends the account's sessions begun before it (and a deleted account
        // has none).
        match state.store.user(user).await? {
            Some(account) if account.session_epoch == epoch => Ok(Session { user }),
            _ => Err(ApiError::Unauthorized(
                "the session has ended (logged out): sign in again".into(),
            )),
        }
    }
}

impl Session {
    /// The project if this session's account owns it; otherwise a 404, so that
    /// other accounts' project ids cannot be probed.
    pub async fn owned_project(&self, state: &ControlPlane, id: &str) -> Result<Project, ApiError> {
        let not_found = || ApiError::NotFound(format!("no project {id}"));
        let id: ProjectId = id.parse().map_err(|_| not_found())?;
        match state.store.project(id).await? {
            Some(project) if project.owner_id == self.user => Ok(project),
            _ => Err(not_found()),
        }
    }
}
