use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::num::NonZeroU32;

use axum::extract::{ConnectInfo, FromRequestParts, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
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

/// The address of the client that sent a request: the connection's peer, or behind
/// trusted proxies the client they name.
pub struct Client(pub IpAddr);

impl FromRequestParts<ControlPlane> for Client {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &ControlPlane) -> Result<Self, Self::Rejection> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map_or(IpAddr::V6(Ipv6Addr::UNSPECIFIED), |info| info.0.ip());
        let client = state.settings.trusted_proxies.client(peer, &parts.headers);
        // An IPv6 host commonly holds a whole /64: it is one client.
        Ok(Self(quiver_common::client::budget_holder(client)))
    }
}

/// Attempts to sign in or up, throttled where they come from and at what they aim.
pub struct AccountThrottle {
    /// Sign-ins per email and client: a burst of 5, then one every 12 s. Keyed by both,
    /// so that someone guessing an account's password from one address cannot lock its
    /// owner, elsewhere, out of it.
    sign_ins: Throttle<(String, IpAddr)>,
    /// Sign-ins and sign-ups per client, whatever the email: a burst of 60, then one a
    /// second. Each costs an argon2 hash, and one address trying many accounts is
    /// someone's list of leaked passwords.
    clients: Throttle<IpAddr>,
    /// Sign-ins per email, whatever the client: a burst of 60, then one a second. A
    /// backstop against guesses at one account spread over many addresses, loose
    /// enough that holding an owner out this way takes as many.
    emails: Throttle<String>,
}

impl Default for AccountThrottle {
    fn default() -> Self {
        Self {
            sign_ins: Throttle::new(Quota::per_minute(NonZeroU32::new(5).expect("5 is not zero"))),
            clients: Throttle::new(Quota::per_minute(NonZeroU32::new(60).expect("60 is not zero"))),
            emails: Throttle::new(Quota::per_minute(NonZeroU32::new(60).expect("60 is not zero"))),
        }
    }
}

/// When the next attempt may come.
type NotUntil = governor::NotUntil<governor::clock::QuantaInstant>;

impl AccountThrottle {
    fn sign_in(&self, email: &str, client: IpAddr) -> Result<(), ApiError> {
        self.clients
            .check(&client)
            .map_err(|not_until| too_many("too many sign-in attempts from this address", &not_until))?;
        self.sign_ins
            .check(&(email.to_owned(), client))
            .map_err(|not_until| too_many("too many sign-in attempts for this email", &not_until))?;
        self.emails
            .check(&email.to_owned())
            .map_err(|not_until| too_many("too many sign-in attempts for this email", &not_until))
    }

    fn sign_up(&self, client: IpAddr) -> Result<(), ApiError> {
        self.clients
            .check(&client)
            .map_err(|not_until| too_many("too many sign-ups from this address", &not_until))
    }
}

fn too_many(what: &str, not_until: &NotUntil) -> ApiError {
    let wait = not_until.wait_time_from(governor::clock::Clock::now(&governor::clock::DefaultClock::default()));
    ApiError::RateLimited {
        message: format!("{what}; wait and try again"),
        retry_after_secs: quiver_common::error::retry_after_secs(wait),
    }
}

/// A keyed rate limit that forgets keys whose budget has refilled once many are
/// tracked, so a stream of attempts on ever new keys cannot grow it without end.
struct Throttle<K: std::hash::Hash + Eq + Clone> {
    limiter: DefaultKeyedRateLimiter<K>,
    /// How many keys tracked starts the next pruning: twice what was left after the
    /// last, so that a map of keys all still throttled is not scanned on every try.
    prune_at: std::sync::atomic::AtomicUsize,
}

/// Keys a throttle tracks before it forgets those back to a full burst.
const TRACKED_KEYS: usize = 10_000;

impl<K: std::hash::Hash + Eq + Clone> Throttle<K> {
    fn new(quota: Quota) -> Self {
        Self {
            limiter: RateLimiter::keyed(quota),
            prune_at: std::sync::atomic::AtomicUsize::new(TRACKED_KEYS),
        }
    }

    /// Admits one attempt for `key`, or says when the next may come.
    fn check(&self, key: &K) -> Result<(), NotUntil> {
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
                .store(left.saturating_mul(2).max(TRACKED_KEYS), Ordering::Release);
        }
        self.limiter.check_key(key)
    }

    /// Keys tracked now.
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
        (status = 429, description = "too many attempts from this address", body = quiver_common::error::ErrorEnvelope),
    )
)]
pub async fn signup(
    State(state): State<ControlPlane>,
    client: Client,
    AppJson(body): AppJson<Credentials>,
) -> Result<(StatusCode, Json<SessionView>), ApiError> {
    let email = parse_email(&body.email)?;
    check_password(&body.password)?;
    state.account_attempts.sign_up(client.0)?;
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
        (status = 429, description = "too many attempts for this email from this address, or from this address in all", body = quiver_common::error::ErrorEnvelope),
    )
)]
pub async fn login(
    State(state): State<ControlPlane>,
    client: Client,
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
    state.account_attempts.sign_in(&email, client.0)?;
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
        let throttle = Throttle::new(quota);
        for i in 0..TRACKED_KEYS {
            assert!(throttle.check(&format!("user{i}@example.com")).is_ok());
        }
        assert_eq!(throttle.tracked(), TRACKED_KEYS);
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(throttle.check(&"one-more@example.com".to_owned()).is_ok());
        assert_eq!(throttle.tracked(), 1, "only the email just tried is left");
        // An email still being throttled is kept, and stays throttled.
        let busy = "busy@example.com".to_owned();
        for _ in 0..5 {
            assert!(throttle.check(&busy).is_ok());
        }
        assert!(throttle.check(&busy).is_err());

        // Emails all still throttled are kept, and the next pruning waits until twice
        // as many are tracked: a flood of new emails does not scan the map every time.
        let slow = Throttle::new(Quota::per_minute(NonZeroU32::new(5).expect("not zero")));
        for i in 0..TRACKED_KEYS {
            assert!(slow.check(&format!("user{i}@example.com")).is_ok());
        }
        assert!(slow.check(&"one-more@example.com".to_owned()).is_ok());
        assert_eq!(slow.tracked(), TRACKED_KEYS + 1);
        assert_eq!(
            slow.prune_at.load(std::sync::atomic::Ordering::Relaxed),
            2 * TRACKED_KEYS
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
