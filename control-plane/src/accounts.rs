use std::num::NonZeroU32;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use quiver_common::domain::UserId;
use quiver_common::secrets::{HashQueue, MIN_PASSWORD_LEN, hash_secret_bounded, verify_secret_bounded};
use quiver_common::{ApiError, AppJson};
use serde::{Deserialize, Serialize};

use crate::ControlPlane;
use crate::session::Session;

pub fn router() -> Router<ControlPlane> {
    Router::new()
        .route("/v1/auth/signup", post(signup))
        .route("/v1/auth/login", post(login))
        .route("/v1/auth/logout", post(logout))
}

/// Login attempts admitted per email: a burst of 5, then one every 12 s.
pub struct LoginThrottle {
    limiter: DefaultKeyedRateLimiter<String>,
    /// How many emails tracked starts the next pruning: twice what was left after the
    /// last, so that a map of emails all still throttled is not scanned on every try.
    prune_at: std::sync::atomic::AtomicUsize,
}

/// Emails the throttle tracks before it forgets those back to a full burst.
const TRACKED_EMAILS: usize = 10_000;

impl Default for LoginThrottle {
    fn default() -> Self {
        Self::with_quota(Quota::per_minute(NonZeroU32::new(5).expect("5 is not zero")))
    }
}

impl LoginThrottle {
    /// Admits one attempt for `email`, or says when the next may come. Emails whose
    /// budget has refilled are forgotten once many are tracked, so a stream of
    /// attempts on ever new emails cannot grow the throttle without end.
    fn check(&self, email: &str) -> Result<(), governor::NotUntil<governor::clock::QuantaInstant>> {
        use std::sync::atomic::Ordering;
        let tracked = self.limiter.len();
        let prune_at = self.prune_at.load(Ordering::Relaxed);
        if tracked >= prune_at
            && self
                .prune_at
                .compare_exchange(prune_at, usize::MAX, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            // One caller prunes; the others go on meanwhile.
            self.limiter.retain_recent();
            self.limiter.shrink_to_fit();
            let left = self.limiter.len();
            self.prune_at
                .store(left.saturating_mul(2).max(TRACKED_EMAILS), Ordering::Release);
        }
        self.limiter.check_key(&email.to_owned())
    }

    fn with_quota(quota: Quota) -> Self {
        Self {
            limiter: RateLimiter::keyed(quota),
            prune_at: std::sync::atomic::AtomicUsize::new(TRACKED_EMAILS),
        }
    }

    /// Emails tracked now.
    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.limiter.len()
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

/// The longest password an account may have, in bytes.
const MAX_PASSWORD_BYTES: usize = 1024;

fn check_password(password: &str) -> Result<(), ApiError> {
    let chars = password.chars().count();
    if chars < MIN_PASSWORD_LEN {
        return Err(ApiError::Validation {
            message: format!("the password has {chars} characters; use at least {MIN_PASSWORD_LEN}"),
            detail: Some("field password".into()),
        });
    }
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(ApiError::Validation {
            message: format!("the password is longer than {MAX_PASSWORD_BYTES} bytes"),
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
    let hash = hash_secret_bounded(HashQueue::Accounts, body.password).await?;
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
    let refused = || ApiError::Unauthorized("wrong email or password".into());
    // No account has a malformed email or an over-long password (signup refuses
    // them): such attempts are refused before they are hashed or tracked.
    let Ok(email) = parse_email(&body.email) else {
        return Err(refused());
    };
    if body.password.len() > MAX_PASSWORD_BYTES {
        return Err(refused());
    }
    if let Err(not_until) = state.login_attempts.check(&email) {
        let wait = not_until.wait_time_from(governor::clock::Clock::now(&governor::clock::DefaultClock::default()));
        return Err(ApiError::RateLimited {
            message: "too many sign-in attempts for this email; wait and try again".into(),
            retry_after_secs: quiver_common::error::retry_after_secs(wait),
        });
    }
    let user = state.store.user_by_email(&email).await?;
    // Hashes even for unknown emails, so timing does not tell which part was wrong.
    let stored = user.as_ref().map(|u| u.password_hash.clone());
    let matches = verify_secret_bounded(HashQueue::Accounts, body.password, stored).await?;
    let user = user.filter(|_| matches).ok_or_else(refused)?;
    Ok(Json(start_session(&state, user)))
}

/// End every session of the signed-in account: this one, and those in other browsers.
#[utoipa::path(
    post,
    operation_id = "logout",
    path = "/v1/auth/logout",
    tag = "accounts",
    security(("session" = [])),
    responses(
        (status = 204, description = "every session of the account has ended"),
        (status = 401, description = "no valid session", body = quiver_common::error::ErrorEnvelope),
    )
)]
pub async fn logout(State(state): State<ControlPlane>, session: Session) -> Result<StatusCode, ApiError> {
    state.store.end_sessions(session.user).await?;
    tracing::info!(user_id = %session.user, "sessions ended");
    Ok(StatusCode::NO_CONTENT)
}

/// A new session for an account that proved who it is.
fn start_session(state: &ControlPlane, user: quiver_store::User) -> SessionView {
    let (token, expires_at) = state
        .jwt
        .issue_session(user.id, user.session_epoch, state.settings.session_ttl);
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
    fn the_login_throttle_forgets_emails_whose_budget_has_refilled() {
        // One attempt back every millisecond, so budgets refill while the test waits.
        let quota = Quota::per_second(NonZeroU32::new(1000).expect("not zero"))
            .allow_burst(NonZeroU32::new(5).expect("not zero"));
        let throttle = LoginThrottle::with_quota(quota);
        for i in 0..TRACKED_EMAILS {
            assert!(throttle.check(&format!("user{i}@example.com")).is_ok());
        }
        assert_eq!(throttle.tracked(), TRACKED_EMAILS);
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(throttle.check("one-more@example.com").is_ok());
        assert_eq!(throttle.tracked(), 1, "only the email just tried is left");
        // An email still being throttled is kept, and stays throttled.
        for _ in 0..5 {
            assert!(throttle.check("busy@example.com").is_ok());
        }
        assert!(throttle.check("busy@example.com").is_err());

        // Emails all still throttled are kept, and the next pruning waits until twice
        // as many are tracked: a flood of new emails does not scan the map every time.
        let slow = LoginThrottle::default();
        for i in 0..TRACKED_EMAILS {
            assert!(slow.check(&format!("user{i}@example.com")).is_ok());
        }
        assert!(slow.check("one-more@example.com").is_ok());
        assert_eq!(slow.tracked(), TRACKED_EMAILS + 1);
        assert_eq!(
            slow.prune_at.load(std::sync::atomic::Ordering::Relaxed),
            2 * TRACKED_EMAILS
        );
    }

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
