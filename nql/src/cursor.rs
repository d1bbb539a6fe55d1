//! Page cursors: opaque, tamper-evident, bound to one query.
//!
//! A cursor is `base64url(payload ‖ HMAC-SHA256(key, payload))` where the payload is
//! JSON `{"q": <hash of query text and params>, "o": <next offset>, "l": <page size>}`.
//! The MAC makes an edited cursor fail; the hash makes a cursor from another query fail.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use quiver_common::ApiError;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;
const MAC_LEN: usize = 32;

/// Where the next page starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Position {
    pub offset: u64,
    pub limit: u64,
}

#[derive(Serialize, Deserialize)]
struct Payload {
    q: String,
    o: u64,
    l: u64,
}

/// A hash of what the cursor is bound to: the query text and its parameters.
pub(crate) fn query_hash(query: &str, params: &[Value]) -> String {
    /// Hashes what is written: the parameters' JSON, without a copy of it in memory.
    struct Hashing<'h>(&'h mut Sha256);
    impl std::io::Write for Hashing<'_> {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.update(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut hasher = Sha256::new();
    hasher.update((query.len() as u64).to_be_bytes());
    hasher.update(query.as_bytes());
    // JSON values always serialize (their keys are strings).
    let _ = serde_json::to_writer(Hashing(&mut hasher), params);
    // 16 bytes are plenty to tell queries apart; the MAC does the security work.
    hex::encode(&hasher.finalize()[..16])
}

fn mac(key: &[u8]) -> HmacSha256 {
    <HmacSha256 as Mac>::new_from_slice(key).expect("HMAC accepts keys of any length")
}

pub(crate) fn encode(key: &[u8], hash: &str, position: Position) -> String {
    let payload = serde_json::to_vec(&Payload {
        q: hash.to_owned(),
        o: position.offset,
        l: position.limit,
    })
    .expect("a struct of strings and integers serializes");
    let mut mac = mac(key);
    mac.update(&payload);
    let mut bytes = payload;
    bytes.extend_from_slice(&mac.finalize().into_bytes());
    URL_SAFE_NO_PAD.encode(bytes)
}

pub(crate) fn decode(key: &[u8], hash: &str, cursor: &str) -> Result<Position, ApiError> {
    let invalid = || ApiError::Validation {
        message: "cursor is invalid".to_owned(),
        detail: Some("pass the nextCursor of the previous page unchanged".to_owned()),
    };
    let bytes = URL_SAFE_NO_PAD
        .decode(cursor.trim_end_matches('='))
        .map_err(|_| invalid())?;
    if bytes.len() <= MAC_LEN {
        return Err(invalid());
    }
    let (payload, tag) = bytes.split_at(bytes.len() - MAC_LEN);
    let mut mac = mac(key);
    mac.update(payload);
    mac.verify_slice(tag).map_err(|_| invalid())?;
    let payload: Payload = serde_json::from_slice(payload).map_err(|_| invalid())?;
    if payload.q != hash {
        return Err(ApiError::Validation {
            message: "cursor does not belong to this query".to_owned(),
            detail: Some("a cursor only continues the query text and params it came from".to_owned()),
        });
    }
    Ok(Position {
        offset: payload.o,
        limit: payload.l,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Cursors handed out before the hash was streamed still belong to their query.
    #[test]
    fn the_query_hash_is_that_of_the_query_and_its_params_json() {
        let params = [json!("web"), json!({"k": [1, 2.5]})];
        let mut hasher = Sha256::new();
        hasher.update(5u64.to_be_bytes());
        hasher.update(b"query");
        hasher.update(serde_json::to_vec(&params).expect("serializes"));
        assert_eq!(query_hash("query", &params), hex::encode(&hasher.finalize()[..16]));
    }
}
