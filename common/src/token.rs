//! Signed JWTs (HS256): console sessions for accounts, and short-lived project tokens
//! for browser clients of the data plane. The two have different audiences, so one can
//! never be used as the other. Only HS256 is accepted: a token signed with any other
//! algorithm (including `none`) is refused.

use std::collections::BTreeSet;

use chrono::{DateTime, Duration, Utc};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::domain::{ProjectId, Scope, UserId};

const SESSION_AUDIENCE: &str = "quiver-console";
const PROJECT_AUDIENCE: &str = "quiver-data";
const ISSUER: &str = "quiver";

/// The longest a project token may live.
pub const MAX_PROJECT_TOKEN_TTL: Duration = Duration::hours(1);

/// The claims of a console session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionClaims {
    pub sub: UserId,
    pub aud: String,
    pub iss: String,
    pub iat: i64,
    pub exp: i64,
    /// The account's session epoch when the session began: a log out raises the
    /// account's, which ends this session.
    #[serde(default)]
    pub epoch: i64,
}

/// The claims of a browser token for one project.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectClaims {
    /// The project the token is for; the data plane takes the project from here.
    pub project_id: ProjectId,
    /// What the token may do: a subset of its creator's scopes.
    pub scopes: BTreeSet<Scope>,
    /// When present, the only namespaces the token may touch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<BTreeSet<String>>,
    pub sub: String,
    pub aud: String,
    pub iss: String,
    pub iat: i64,
    pub exp: i64,
    /// A unique id, for audit logs.
    pub jti: String,
}

/// Signs and checks Quiver's JWTs with one HS256 secret.
#[derive(Clone)]
pub struct JwtKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    /// Signs pagination cursors; derived from the same secret so every pod agrees.
    cursor_key: [u8; 32],
}

impl std::fmt::Debug for JwtKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JwtKeys(<redacted>)")
    }
}

/// Why a token was refused. Deliberately coarse: clients learn no more than "invalid".
#[derive(Debug, thiserror::Error)]
#[error("invalid or expired token: {0}")]
pub struct TokenError(String);

impl JwtKeys {
    /// Keys from a secret of at least 32 bytes.
    pub fn new(secret: &[u8]) -> Result<Self, String> {
        if secret.len() < 32 {
            return Err(format!(
                "the JWT secret must have at least 32 bytes, it has {}",
                secret.len()
            ));
        }
        let cursor_key = {
            use sha2::Digest as _;
            let mut hasher = sha2::Sha256::new();
            hasher.update(b"quiver pagination cursor key\0");
            hasher.update(secret);
            hasher.finalize().into()
        };
        Ok(Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            cursor_key,
        })
    }

    /// A key for signing pagination cursors (not usable to forge tokens: it is a
    /// one-way derivation of the secret).
    pub fn cursor_key(&self) -> &[u8; 32] {
        &self.cursor_key
    }

    fn validation(audience: &str) -> Validation {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_audience(&[audience]);
        validation.set_issuer(&[ISSUER]);
        validation.set_required_spec_claims(&["exp", "aud", "iss"]);
        validation.leeway = 0;
        validation
    }

    fn sign<T: Serialize>(&self, claims: &T) -> String {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.encoding)
            .expect("HS256 signing of serializable claims cannot fail")
    }

    /// A session for an account whose session epoch is `epoch`, valid for `ttl`.
    pub fn issue_session(&self, user: UserId, epoch: i64, ttl: Duration) -> (String, DateTime<Utc>) {
        let now = Utc::now();
        let expires = now + ttl;
        let claims = SessionClaims {
            sub: user,
            aud: SESSION_AUDIENCE.into(),
            iss: ISSUER.into(),
            iat: now.timestamp(),
            exp: expires.timestamp(),
            epoch,
        };
        (self.sign(&claims), expires)
    }

    /// The account of a valid, unexpired session token, and the session epoch it
    /// began under (which the caller compares with the account's).
    pub fn verify_session(&self, token: &str) -> Result<(UserId, i64), TokenError> {
        jsonwebtoken::decode::<SessionClaims>(token, &self.decoding, &Self::validation(SESSION_AUDIENCE))
            .map(|data| (data.claims.sub, data.claims.epoch))
            .map_err(|err| TokenError(err.to_string()))
    }

    /// A token for one project's data plane, valid for `ttl` (at most an hour).
    pub fn issue_project_token(
        &self,
        project: ProjectId,
        scopes: BTreeSet<Scope>,
        namespaces: Option<BTreeSet<String>>,
        subject: String,
        ttl: Duration,
    ) -> (String, DateTime<Utc>) {
        let now = Utc::now();
        let expires = now + ttl.min(MAX_PROJECT_TOKEN_TTL);
        let claims = ProjectClaims {
            project_id: project,
            scopes,
            namespaces,
            sub: subject,
            aud: PROJECT_AUDIENCE.into(),
            iss: ISSUER.into(),
            iat: now.timestamp(),
            exp: expires.timestamp(),
            jti: uuid::Uuid::new_v4().to_string(),
        };
        (self.sign(&claims), expires)
    }

    /// The claims of a valid, unexpired project token.
    pub fn verify_project_token(&self, token: &str) -> Result<ProjectClaims, TokenError> {
        jsonwebtoken::decode::<ProjectClaims>(token, &self.decoding, &Self::validation(PROJECT_AUDIENCE))
            .map(|data| data.claims)
            .map_err(|err| TokenError(err.to_string()))
    }
}

/// Whether a bearer credential looks like a JWT rather than an API key.
pub fn looks_like_jwt(credential: &str) -> bool {
    credential.starts_with("eyJ") && credential.bytes().filter(|b| *b == b'.').count() == 2
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> JwtKeys {
        JwtKeys::new(&[7u8; 32]).expect("32 bytes")
    }

    #[test]
    fn sessions_and_project_tokens_verify_and_cannot_stand_in_for_each_other() {
        let keys = keys();
        let user = UserId::new();
        let (session, _) = keys.issue_session(user, 0, Duration::hours(1));
        assert_eq!(keys.verify_session(&session).expect("valid"), (user, 0));
        assert!(
            keys.verify_project_token(&session).is_err(),
            "a session is not a data-plane token"
        );

        let project = ProjectId::new();
        let scopes = BTreeSet::from([Scope::Read]);
        let (token, expires) =
            keys.issue_project_token(project, scopes.clone(), None, "key:x".into(), Duration::days(3));
        assert!(
            expires <= Utc::now() + MAX_PROJECT_TOKEN_TTL,
            "ttl is capped at an hour"
        );
        let claims = keys.verify_project_token(&token).expect("valid");
        assert_eq!((claims.project_id, claims.scopes), (project, scopes));
        assert!(keys.verify_session(&token).is_err());
        assert!(looks_like_jwt(&token));
    }

    #[test]
    fn tokens_signed_with_another_secret_or_expired_or_unsigned_are_refused() {
        let keys = keys();
        let other = JwtKeys::new(&[8u8; 32]).expect("32 bytes");
        let (foreign, _) = other.issue_session(UserId::new(), 0, Duration::hours(1));
        assert!(keys.verify_session(&foreign).is_err());

        let (expired, _) = keys.issue_session(UserId::new(), 0, Duration::seconds(-5));
        assert!(keys.verify_session(&expired).is_err());

        // alg "none": a header and claims with an empty signature.
        let (valid, _) = keys.issue_session(UserId::new(), 0, Duration::hours(1));
        let claims = valid.split('.').nth(1).expect("claims part");
        let none = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{claims}.");
        assert!(keys.verify_session(&none).is_err());
        assert!(JwtKeys::new(b"short").is_err());
    }
}
