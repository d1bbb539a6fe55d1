//! Passwords and API keys: generation, argon2id hashing, parsing.
//!
//! An API key reads `qv_live_<key id>_<secret>`. The key id is public (it names the
//! stored row and appears in listings as the key's prefix); the secret carries 190
//! bits from the OS's random source and is stored only as an argon2id hash.

use argon2::password_hash::{PasswordHasher as _, PasswordVerifier as _};
use argon2::{Algorithm, Argon2, Params, Version};
use rand::TryRngCore as _;
use rand::distr::{Alphanumeric, SampleString as _};
use rand::rngs::OsRng;
use sha2::{Digest as _, Sha256};

/// The fixed start of every key.
pub const KEY_PREFIX: &str = "qv_live_";
const KEY_ID_LEN: usize = 16;
const SECRET_LEN: usize = 32;

/// The shortest password an account may have.
pub const MIN_PASSWORD_LEN: usize = 12;

/// argon2id with the OWASP-recommended minimum: 19 MiB of memory, 2 passes, 1 lane.
fn argon2() -> Argon2<'static> {
    let params = Params::new(19 * 1024, 2, 1, None).expect("the OWASP argon2id parameters are valid");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// Hashes a password or key secret into a PHC string (random salt included).
/// CPU-heavy (tens of milliseconds): call it off the async executor.
pub fn hash_secret(secret: &str) -> String {
    argon2()
        .hash_password(secret.as_bytes())
        .expect("argon2id hashing with valid parameters cannot fail")
        .to_string()
}

/// Checks a password or key secret against its PHC hash. A malformed hash never matches.
/// CPU-heavy: call it off the async executor.
pub fn verify_secret(secret: &str, hash: &str) -> bool {
    argon2().verify_password(secret.as_bytes(), hash).is_ok()
}

/// Who waits for an argon2 hash: each queue runs at most one hash per core at a time.
/// Each hash takes 19 MiB and a core for tens of milliseconds, so a flood queues here
/// instead of filling the blocking pool (hundreds of threads) with hashes that would
/// together take gigabytes. Two queues, so that a flood of sign-ins (anyone may send
/// them) never delays a data-plane request whose key is not yet verified, where both
/// run in one process (standalone).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashQueue {
    /// Sign-ups, sign-ins and new keys, on the control plane.
    Accounts,
    /// API keys presented to the data plane, the first time a pod sees each.
    Keys,
}

impl HashQueue {
    fn permits(self) -> &'static std::sync::Arc<tokio::sync::Semaphore> {
        static ACCOUNTS: std::sync::OnceLock<std::sync::Arc<tokio::sync::Semaphore>> = std::sync::OnceLock::new();
        static KEYS: std::sync::OnceLock<std::sync::Arc<tokio::sync::Semaphore>> = std::sync::OnceLock::new();
        let cell = match self {
            HashQueue::Accounts => &ACCOUNTS,
            HashQueue::Keys => &KEYS,
        };
        cell.get_or_init(|| {
            let cores = std::thread::available_parallelism().map_or(1, usize::from);
            std::sync::Arc::new(tokio::sync::Semaphore::new(cores))
        })
    }

    /// Runs `work` (an argon2 hash) on a blocking thread once a permit is free. The
    /// permit goes with the work, so a caller that gives up waiting (a client gone)
    /// does not free it while the hash still runs.
    async fn run<T: Send + 'static>(self, work: impl FnOnce() -> T + Send + 'static) -> Result<T, anyhow::Error> {
        let permit = std::sync::Arc::clone(self.permits()).acquire_owned().await?;
        Ok(tokio::task::spawn_blocking(move || {
            let _permit = permit;
            work()
        })
        .await?)
    }
}

/// [`hash_secret`] off the async executor, in its turn in `queue`.
pub async fn hash_secret_bounded(queue: HashQueue, secret: String) -> Result<String, anyhow::Error> {
    queue.run(move || hash_secret(&secret)).await
}

/// [`verify_secret`] off the async executor, in its turn in `queue`. `None` as the
/// hash (no such account) hashes the secret anyway, so the time taken does not tell
/// whether the account exists; it never matches.
pub async fn verify_secret_bounded(
    queue: HashQueue,
    secret: String,
    hash: Option<String>,
) -> Result<bool, anyhow::Error> {
    queue
        .run(move || match hash {
            Some(hash) => verify_secret(&secret, &hash),
            None => {
                let _ = hash_secret(&secret);
                false
            }
        })
        .await
}

/// A newly minted key; `full` is shown to its owner once and never stored.
#[derive(Debug, Clone)]
pub struct GeneratedKey {
    pub id: String,
    pub secret: String,
    pub full: String,
}

/// Mints a key from the OS's random source.
pub fn generate_api_key() -> GeneratedKey {
    let mut os = OsRng.unwrap_err();
    let id = Alphanumeric.sample_string(&mut os, KEY_ID_LEN).to_ascii_lowercase();
    let secret = Alphanumeric.sample_string(&mut os, SECRET_LEN);
    let full = format!("{KEY_PREFIX}{id}_{secret}");
    GeneratedKey { id, secret, full }
}

/// Splits a presented key into its id and secret, or `None` when it is not shaped like one.
pub fn parse_api_key(key: &str) -> Option<(&str, &str)> {
    let rest = key.strip_prefix(KEY_PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    let well_formed = id.len() == KEY_ID_LEN
        && secret.len() == SECRET_LEN
        && id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && secret.bytes().all(|b| b.is_ascii_alphanumeric());
    well_formed.then_some((id, secret))
}

/// The public part of a key, as listings show it: `qv_live_<key id>`.
pub fn key_prefix(id: &str) -> String {
    format!("{KEY_PREFIX}{id}")
}

/// A SHA-256 of a whole presented key: what caches are keyed by, so a cache never
/// holds a usable secret.
pub fn fingerprint(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_parse_back_and_differ() {
        let a = generate_api_key();
        let b = generate_api_key();
        assert_ne!(a.full, b.full);
        assert_eq!(parse_api_key(&a.full), Some((a.id.as_str(), a.secret.as_str())));
        assert!(a.full.starts_with(&key_prefix(&a.id)));
    }

    #[test]
    fn malformed_keys_do_not_parse() {
        let key = generate_api_key().full;
        for bad in [
            "",
            "qv_live_",
            &key[..key.len() - 1],
            &key.replace("qv_live_", "qv_test_"),
            &format!("{key}x"),
            "ndb_live_your_api_key_here",
        ] {
            assert_eq!(parse_api_key(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn secrets_verify_only_against_their_own_hash() {
        let hash = hash_secret("correct horse battery staple");
        assert!(hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{hash}");
        assert!(!hash.contains("correct horse"));
        assert!(verify_secret("correct horse battery staple", &hash));
        assert!(!verify_secret("correct horse battery stapl", &hash));
        assert!(!verify_secret("anything", "not a phc string"));
    }
}
