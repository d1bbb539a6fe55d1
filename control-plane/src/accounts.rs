use std::num::NonZeroU32;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use quiver_common::domain::UserId;
use quiver_common::secrets::{MIN_PASSWORD_LEN, hash_secret, verify_secret};
use quiver_common::{ApiError, AppJson};
use serde::{Deserialize, Serialize};

use crate::ControlPlane;

pub fn router() -> Router<ControlPlane> {
    Router::new()
        .route("/v1/auth/signup", post(signup))
        .route("/v1/auth/login", post(login))
}

/// Login attempts admitted per email: a burst of 5, then one every 12 s.
pub struct LoginThrottle(DefaultKeyedRateLimiter<String>);

impl Default for LoginThrottle {
    fn default() -> Self {
        let quota = Quota::per_minute(NonZeroU32::new(5).expect("5 is not zero"));
        Self(RateLimiter::keyed(quota))
    }
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct Credentials {
    #[schema(example = "ada@example.com")]
    pub email: String,
    /// At least 12 characters.
    #[schema(min_length = 12, max_length = 1024, example = "correct horse battery")]
    pub password: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct UserView {
    pub id: UserId,
    pub email: String,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SessionView {
    pub user: UserView,
    pub token: String,
    pub expires_at: DateTime<Utc>,
}

/// Lowercases and checks an email: one `@`, a non-empty local part, a dotted domain.
fn parse_email(raw: &str) -> Result<String, ApiError> {
    let email = raw.trim().to_lowercase();
    let valid = email.len() <= 254
        && !email.chars().any(char::is_whitespace)
        && email.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty()
                && !domain.contains('@')
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
        });
    if valid {
        Ok(email)
    } else {
        Err(ApiError::Validation {
            message: format!("\"{raw}\" is not an email address"),
            detail: Some("field email".into()),
        })
    }
}

fn check_password(password: &str) -> Result<(), ApiError> {
    let chars = password.chars().count();
    if chars < MIN_PASSWORD_LEN {
        return Err(ApiError::Validation {
            message: format!("the password has {chars} characters; use at least {MIN_PASSWORD_LEN}"),
            detail: Some("field password".into()),
        });
    }
    if password.len() > 1024 {
        return Err(ApiError::Validation {
            message: "the password is longer than 1024 bytes".into(),
            detail: Some("field password".into()),
        });
    }
    Ok(())
}

/// Create an account and start a session.
#[utoipa::path(
    post,
    operation_id = "signup",
    path = "/v1/auth/signup",
    tag = "accounts",
    request_body = Credentials,
    responses(
        (status = 201, description = "account created", body = SessionView),
        (status = 400, description = "bad email or password shorter than 12 characters", body = quiver_common::error::ErrorEnvelope),
        (status = 409, description = "the email is taken", body = quiver_common::error::ErrorEnvelope),
    )
)]
pub async fn signup(
    State(state): State<ControlPlane>,
    AppJson(body): AppJson<Credentials>,
) -> Result<(StatusCode, Json<SessionView>), ApiError> {
    let email = parse_email(&body.email)?;
    check_password(&body.password)?;
    let password = body.password;
    let hash = tokio::task::spawn_blocking(move || hash_secret(&password))
        .await
        .map_err(anyhow::Error::from)?;
    let user = state.store.create_user(&email, &hash).await.map_err(|err| match err {
        quiver_store::StoreError::Conflict(_) => {
            ApiError::Conflict(format!("an account with email {email} already exists"))
        }
        other => other.into(),
    })?;
    tracing::info!(user_id = %user.id, "account created");
    Ok((StatusCode::CREATED, Json(start_session(&state, user))))
}

/// Start a session.
#[utoipa::path(
    post,
    operation_id = "login",
    path = "/v1/auth/login",
    tag = "accounts",
    request_body = Credentials,
    responses(
        (status = 200, description = "signed in", body = SessionView),
        (status = 400, description = "the body is not JSON credentials", body = quiver_common::error::ErrorEnvelope),
        (status = 401, description = "wrong email or password", body = quiver_common::error::ErrorEnvelope),
        (status = 429, description = "too many attempts for this email", body = quiver_common::error::ErrorEnvelope),
    )
)]
pub async fn login(
    State(state): State<ControlPlane>,
    AppJson(body): AppJson<Credentials>,
) -> Result<Json<SessionView>, ApiError> {
    let email = body.email.trim().to_lowercase();
    if let Err(not_until) = state.login_attempts.0.check_key(&email) {
        let wait = not_until.wait_time_from(governor::clock::Clock::now(&governor::clock::DefaultClock::default()));
        return Err(ApiError::RateLimited {
            message: "too many sign-in attempts for this email; wait and try again".into(),
            retry_after_secs: wait.as_secs().max(1),
        });
    }
    let refused = || ApiError::Unauthorized("wrong email or password".into());
    let user = state.store.user_by_email(&email).await?;
    let password = body.password;
    // Hash even for unknown emails, so timing does not tell which part was wrong.
    let stored = user.as_ref().map(|u| u.password_hash.clone());
    let matches = tokio::task::spawn_blocking(move || match stored {
        Some(hash) => verify_secret(&password, &hash),
        None => {
            let _ = hash_secret(&password);
            false
        }
    })
    .await
    .map_err(anyhow::Error::from)?;
    let user = user.filter(|_| matches).ok_or_else(refused)?;
    Ok(Json(start_session(&state, user)))
}

/// A new session for an account that proved who it is.
fn start_session(state: &ControlPlane, user: quiver_store::User) -> SessionView {
    let (token, expires_at) = state.jwt.issue_session(user.id, state.settings.session_ttl);
    SessionView {
        user: UserView {
            id: user.id,
            email: user.email,
            created_at: user.created_at,
        },
        token,
        expires_at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_lowercased_and_checked() {
        assert_eq!(parse_email(" Ada@Example.COM ").expect("valid"), "ada@example.com");
        for bad in [
            "",
            "ada",
            "@example.com",
            "ada@",
            "ada@example",
            "a da@example.com",
            "a@b@c.com",
            "ada@.com",
        ] {
            assert!(parse_email(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn passwords_under_twelve_characters_are_refused() {
        assert!(check_password("elevenchars").is_err());
        assert!(check_password("twelve chars").is_ok());
        assert!(check_password(&"x".repeat(1025)).is_err());
    }
}
