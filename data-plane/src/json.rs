//! Reading JSON bodies by hand (handlers that also hash the raw body for idempotency),
//! with the same envelope errors as `AppJson`.

use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode, header};
use quiver_common::ApiError;
use serde::de::DeserializeOwned;

use crate::vector_json::Place;

/// Parses a JSON body; a content type other than JSON, or a body that does not parse
/// into `T`, is a `VALIDATION_ERROR` that says what was wrong.
pub fn parse_body<T: DeserializeOwned>(headers: &HeaderMap, body: &[u8]) -> Result<T, ApiError> {
    require_json(headers)?;
    parse_json(body)
}

/// Parses a JSON body that carries vectors at `place`, reading their numbers the fast
/// way ([`crate::vector_json`]) where it can: then the body is read with the vectors
/// taken out, and `put` puts them back, in the body's order. Refusals are those of
/// [`parse_body`], word for word.
pub fn parse_body_with_vectors<T: DeserializeOwned>(
    headers: &HeaderMap,
    body: &[u8],
    place: Place<'_>,
    put: impl FnOnce(&mut T, Vec<Vec<f32>>),
) -> Result<T, ApiError> {
    require_json(headers)?;
    if let Some(lifted) = crate::vector_json::lift(body, place)
        && let Ok(mut request) = serde_json::from_slice(&lifted.rest)
    {
        put(&mut request, lifted.vectors);
        return Ok(request);
    }
    // The whole body the ordinary way, for the request or for what is wrong with it
    // (serde's message names a column of the body as sent).
    parse_json(body)
}

/// A content type other than JSON is a `VALIDATION_ERROR`.
fn require_json(headers: &HeaderMap) -> Result<(), ApiError> {
    if let Some(content_type) = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok())
        && !content_type.starts_with("application/json")
        && !content_type.contains("+json")
    {
        return Err(ApiError::validation(format!(
            "the request body must be JSON: send content-type: application/json, not {content_type}"
        )));
    }
    Ok(())
}

/// Parses JSON into `T`; a body that does not parse is a `VALIDATION_ERROR` that says
/// what was wrong.
fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    // serde would read a struct from an array of its fields in order; only objects are bodies.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{')
        && let Ok(value) = serde_json::from_slice::<serde_json::Value>(body)
    {
        return Err(ApiError::validation(format!(
            "the request body must be a JSON object, got {}",
            quiver_common::error::json_kind(&value)
        )));
    }
    serde_json::from_slice(body).map_err(|err| {
        let message = if err.is_syntax() || err.is_eof() {
            "the request body is not valid JSON"
        } else {
            "the request body does not have the expected shape"
        };
        ApiError::Validation {
            message: message.into(),
            detail: Some(err.to_string()),
        }
    })
}

/// A body that could not be read: too large for its route (which takes at most
/// `limit` bytes), or cut off.
pub fn body_rejection(limit: usize) -> impl Fn(BytesRejection) -> ApiError {
    move |rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge(format!(
                "the request body is larger than {} MiB, the most this request takes",
                limit / (1024 * 1024)
            ))
        } else {
            ApiError::validation(format!("cannot read the request body: {}", rejection.body_text()))
        }
    }
}

/// A JSON value in which no object names a key twice. serde_json keeps the last of a
/// repeated key without a word, so a filter such as `{"price": {"$gt": 5}, "price":
/// {"$lt": 3}}` would select other records than its sender wrote (and, in a delete,
/// delete them); read as this, it is a `VALIDATION_ERROR` naming the key.
#[derive(Debug, Clone, PartialEq)]
pub struct UniqueKeys(pub serde_json::Value);

impl<'de> serde::Deserialize<'de> for UniqueKeys {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(UniqueKeysVisitor).map(UniqueKeys)
    }
}

struct UniqueKeysVisitor;

impl<'de> serde::de::Visitor<'de> for UniqueKeysVisitor {
    type Value = serde_json::Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
        Ok(v.into())
    }

    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(v.into())
    }

    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(v.into())
    }

    fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
        Ok(v.into())
    }

    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(v.into())
    }

    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(v.into())
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(serde_json::Value::Null)
    }

    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(serde_json::Value::Null)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
        while let Some(UniqueKeys(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(serde_json::Value::Array(items))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut object = serde_json::Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let UniqueKeys(value) = map.next_value()?;
            if object.contains_key(&key) {
                return Err(serde::de::Error::custom(format!(
                    "key \"{key}\" appears twice in one object; write each key once (combine conditions with $and)"
                )));
            }
            object.insert(key, value);
        }
        Ok(serde_json::Value::Object(object))
    }
}

#[cfg(test)]
mod unique_keys_tests {
    use super::UniqueKeys;
    use serde_json::json;

    #[test]
    fn a_key_named_twice_at_any_depth_is_refused() {
        let read = |text: &str| serde_json::from_str::<UniqueKeys>(text).map(|u| u.0);
        assert_eq!(
            read(r#"{"a": [1, {"b": null}], "c": {"$in": [1.5, "x", true]}}"#).expect("valid"),
            json!({"a": [1, {"b": null}], "c": {"$in": [1.5, "x", true]}})
        );
        for twice in [
            r#"{"price": {"$gt": 5}, "price": {"$lt": 3}}"#,
            r#"{"$or": [{"a": 1}], "$or": [{"b": 2}]}"#,
            r#"{"$and": [{"a": {"$gt": 1, "$gt": 2}}]}"#,
        ] {
            let err = read(twice).expect_err(twice).to_string();
            assert!(err.contains("appears twice"), "{twice}: {err}");
        }
    }
}
