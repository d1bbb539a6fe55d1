//! The vector API of `shared/seeds/vector-api-reference.txt`: upsert, search, query
//! (fetch by id), update, delete, and listing ids. Each write is one transaction in
//! the records store (all of a batch or none of it), then reaches this pod's index.

use std::sync::Arc;

use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use base64::Engine as _;
use quiver_common::domain::{Metric, Scope};
use quiver_common::{ApiError, AppQuery};
use quiver_engine::Filter;
use quiver_store::{Metadata, MetadataPatch, RecordPatch, RecordWrite};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::DataPlane;
use crate::auth::Principal;
use crate::idempotency::idempotent;
use crate::json::{parse_body, parse_body_with_vectors};
use crate::limits::Kind;
use crate::records;
use crate::vector_json::Place;
use quiver_common::error::json_kind as kind;

pub fn router() -> Router<DataPlane> {
    Router::new()
        .route("/v1/vectors/upsert", post(upsert))
        .route("/v1/vectors/search", post(search).layer(crate::request_body_limit()))
        .route("/v1/vectors/query", post(query).layer(crate::request_body_limit()))
        .route("/v1/vectors/update", post(update).layer(crate::request_body_limit()))
        .route(
            "/v1/vectors/delete",
            delete(remove).post(remove).layer(crate::request_body_limit()),
        )
        .route("/v1/vectors/list", get(list))
}

/// The namespace used when a request names none.
pub const DEFAULT_NAMESPACE: &str = "default";
/// Longest record id, in bytes.
pub const MAX_ID_BYTES: usize = 512;
/// Largest metadata object, serialized, in bytes.
pub const MAX_METADATA_BYTES: usize = 40 * 1024;
/// Most results a search returns.
pub const MAX_TOP_K: usize = 1000;
/// Most ids one fetch or delete may name.
pub const MAX_IDS: usize = 1000;
/// Largest magnitude of a vector's value: the largest finite 16-bit float, as the
/// index stores them (a larger value would be infinite there, and every distance to
/// it NaN).
pub const MAX_VALUE: f32 = 65504.0;
/// The largest magnitude a 16-bit float rounds to zero (2^-25, halfway to the smallest
/// subnormal, rounds to even: zero).
const F16_ZERO: f32 = 2.980_232_2e-8;

/// A namespace name: 1 to 256 bytes, no control characters.
pub(crate) fn namespace(name: Option<String>) -> Result<String, ApiError> {
    let name = name.unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned());
    if name.is_empty() || name.len() > 256 || name.chars().any(char::is_control) {
        return Err(ApiError::Validation {
            message: "namespace must have 1 to 256 bytes and no control characters".into(),
            detail: Some("field namespace".into()),
        });
    }
    Ok(name)
}

fn no_namespace(name: &str) -> ApiError {
    ApiError::NotFound(format!("namespace \"{name}\" does not exist"))
}

fn no_vector(id: &str, namespace: &str) -> ApiError {
    ApiError::NotFound(format!("no vector \"{id}\" in namespace \"{namespace}\""))
}

/// The 404 for a vector not found: of its namespace, when that is what is missing.
async fn not_found(state: &DataPlane, principal: &Principal, id: &str, namespace: &str) -> ApiError {
    match state.store.namespace(principal.project_id, namespace).await {
        Ok(None) => no_namespace(namespace),
        Ok(Some(_)) => no_vector(id, namespace),
        Err(err) => err.into(),
    }
}

/// Checks a vector's values: numbers (or their base64), finite as f32 and within
/// ±[`MAX_VALUE`], of the project's dimension, and (for cosine) not all zero. `what` names the vector in messages.
pub(crate) fn parse_values(value: &Value, dimension: u32, metric: Metric, what: &str) -> Result<Vec<f32>, ApiError> {
    VectorValues::deserialize(value)
        .map_err(|err| ApiError::validation(format!("{what}: {err}")))?
        .check(dimension, metric, what)
}

/// A vector as a request sent it, read in one pass: its numbers go straight into
/// `f32` as the body is parsed (no `Value` per number, which would cost more than the
/// rest of a search request). Anything else is kept only as far as
/// [`VectorValues::check`] needs to say what is wrong with it.
///
/// A vector is a JSON array of numbers, or a string holding the base64 (standard
/// alphabet, padding optional) of its little-endian IEEE 754 f32s: what OpenAI's
/// embeddings API returns for `encoding_format: "base64"`, so such embeddings pass
/// through as they come. The string is about half the bytes of the numbers, and
/// decoding it costs a few microseconds where reading 768 numbers costs ~30.
#[derive(Debug)]
pub(crate) enum VectorValues {
    /// An array, or a decoded base64 string. Elements of an array that are not
    /// numbers stand as NaN in `values`; `bad` is the first of them, with its kind.
    Array {
        values: Vec<f32>,
        bad: Option<(usize, &'static str)>,
    },
    /// A string that is not the base64 of f32s: why.
    Undecodable(String),
    /// Some other JSON value, by kind ("null", "an object", ...).
    Not(&'static str),
}

/// Base64 as vectors may be sent in: the standard alphabet (`+/`), with or without
/// `=` padding, and no stray bits in the last symbol.
const VECTOR_BASE64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

/// The f32s whose little-endian bytes `text` holds in base64, or why it does not.
fn decode_base64_vector(text: &str) -> Result<Vec<f32>, String> {
    let bytes = VECTOR_BASE64.decode(text).map_err(|err| match err {
        base64::DecodeError::InvalidByte(at, byte) => {
            format!("is not base64: character {at} is {:?}", char::from(byte))
        }
        base64::DecodeError::InvalidLength(_) => {
            format!("is not base64: {} characters is not a valid length", text.len())
        }
        base64::DecodeError::InvalidLastSymbol(at, _) => {
            format!("is not base64: character {at} leaves stray bits")
        }
        base64::DecodeError::InvalidPadding => "is not base64: its padding is wrong".to_owned(),
    })?;
    if bytes.len() % 4 != 0 {
        return Err(format!(
            "decodes to {} bytes, not a whole number of 32-bit floats (4 bytes each)",
            bytes.len()
        ));
    }
    Ok(bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect())
}

impl VectorValues {
    /// The values, if they are numbers, finite as f32 and within ±[`MAX_VALUE`], of the
    /// project's dimension and (for cosine) not all zero; otherwise a validation error
    /// that names `what`.
    pub(crate) fn check(self, dimension: u32, metric: Metric, what: &str) -> Result<Vec<f32>, ApiError> {
        let (values, bad) = match self {
            Self::Array { values, bad } => (values, bad),
            Self::Undecodable(why) => {
                return Err(ApiError::validation(format!(
                    "{what} values are a string, which {why}; send an array of numbers or the base64 of little-endian 32-bit floats"
                )));
            }
            Self::Not(kind) => {
                return Err(ApiError::validation(format!(
                    "{what} values must be an array of numbers or a base64 string of little-endian 32-bit floats, got {kind}"
                )));
            }
        };
        if values.len() != dimension as usize {
            return Err(ApiError::validation(format!(
                "{what} has {} values, the project's dimension is {dimension}",
                values.len()
            )));
        }
        // One pass without early exits, which compiles to vector instructions (768
        // values: 0.16 µs, where the searches below took 1.36 µs in a release build);
        // they run only to name what is wrong. NaN and ±∞ fail `abs() <= MAX_VALUE` too.
        let (in_range, any_nonzero) = values.iter().fold((true, false), |(in_range, any_nonzero), x| {
            (in_range & (x.abs() <= MAX_VALUE), any_nonzero | (x.abs() > F16_ZERO))
        });
        if in_range && (any_nonzero || metric != Metric::Cosine) {
            return Ok(values);
        }
        if let Some(i) = values.iter().position(|x| !x.is_finite()) {
            return Err(ApiError::validation(match bad {
                Some((at, kind)) if at == i => format!("{what} value {i} is {kind}, not a number"),
                _ => format!("{what} value {i} is not a finite 32-bit float"),
            }));
        }
        match unstorable(&values, metric, what) {
            Some(message) => Err(ApiError::validation(message)),
            None => Ok(values),
        }
    }
}

/// Why the index (16-bit floats) cannot hold finite `values`, if it cannot: a value
/// beyond ±[`MAX_VALUE`], or, for cosine, a vector that is all zeros once stored. The
/// vector and document APIs and NQL's writes all check it.
pub(crate) fn unstorable(values: &[f32], metric: Metric, what: &str) -> Option<String> {
    if let Some(i) = values.iter().position(|x| x.abs() > MAX_VALUE) {
        return Some(format!(
            "{what} value {i} is {}, beyond ±{MAX_VALUE}, the largest magnitude the index holds (it stores 16-bit floats)",
            values[i]
        ));
    }
    if metric != Metric::Cosine || values.iter().any(|x| x.abs() > F16_ZERO) {
        return None;
    }
    Some(if values.iter().all(|x| *x == 0.0) {
        format!("{what} is all zeros, which has no direction for cosine similarity")
    } else {
        format!(
            "{what} is all zeros as the index stores it (16-bit floats, in which every value within ±2^-25 is 0), which has no direction for cosine similarity"
        )
    })
}

impl<'de> Deserialize<'de> for VectorValues {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(match deserializer.deserialize_any(Shape { outermost: true })? {
            Read::Array { values, bad } => VectorValues::Array { values, bad },
            Read::Undecodable(why) => VectorValues::Undecodable(why),
            Read::Number(_) => VectorValues::Not("a number"),
            Read::Not(kind) => VectorValues::Not(kind),
        })
    }
}

/// What [`Shape`] read: a number, an array of numbers or a base64 string of f32s (the
/// outermost value only), or the kind of anything else, in the words of [`kind`].
enum Read {
    Number(f32),
    Array {
        values: Vec<f32>,
        bad: Option<(usize, &'static str)>,
    },
    /// An outermost string that is not the base64 of f32s: why.
    Undecodable(String),
    Not(&'static str),
}

impl Read {
    /// The number read, or the kind of what was read instead.
    fn number(self) -> Result<f32, &'static str> {
        match self {
            Read::Number(x) => Ok(x),
            Read::Array { .. } => Err("an array"),
            Read::Undecodable(_) => Err("a string"),
            Read::Not(kind) => Err(kind),
        }
    }
}

/// Reads a vector (`outermost`) or one of its elements. Arrays and objects inside
/// are read through and dropped: only their kind is kept.
struct Shape {
    outermost: bool,
}

impl<'de> serde::de::DeserializeSeed<'de> for Shape {
    type Value = Read;

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<Read, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Shape {
    type Value = Read;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_i64<E: serde::de::Error>(self, x: i64) -> Result<Read, E> {
        Ok(Read::Number(x as f32))
    }
    fn visit_u64<E: serde::de::Error>(self, x: u64) -> Result<Read, E> {
        Ok(Read::Number(x as f32))
    }
    fn visit_f64<E: serde::de::Error>(self, x: f64) -> Result<Read, E> {
        Ok(Read::Number(x as f32))
    }
    fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<Read, E> {
        Ok(Read::Not("a boolean"))
    }
    fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Read, E> {
        if !self.outermost {
            return Ok(Read::Not("a string"));
        }
        Ok(match decode_base64_vector(text) {
            Ok(values) => Read::Array { values, bad: None },
            Err(why) => Read::Undecodable(why),
        })
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<Read, E> {
        Ok(Read::Not("null"))
    }
    fn visit_none<E: serde::de::Error>(self) -> Result<Read, E> {
        Ok(Read::Not("null"))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Read, A::Error> {
        while map
            .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
            .is_some()
        {}
        Ok(Read::Not("an object"))
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Read, A::Error> {
        if !self.outermost {
            while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
            return Ok(Read::Not("an array"));
        }
        // A body does not say how long its arrays are, and the batch size is checked
        // only after parsing: reserve no more than the input says is there, or a 64 MiB
        // body of tiny vectors could ask for gigabytes. Growing costs little beside
        // parsing the numbers.
        let mut values = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        let mut bad = None;
        while let Some(element) = seq.next_element_seed(Shape { outermost: false })? {
            match element.number() {
                Ok(x) => values.push(x),
                Err(kind) => {
                    bad.get_or_insert((values.len(), kind));
                    values.push(f32::NAN);
                }
            }
        }
        Ok(Read::Array { values, bad })
    }
}

pub(crate) fn parse_id(value: Option<&Value>, what: &str) -> Result<String, ApiError> {
    match value {
        None | Some(Value::Null) => Err(ApiError::validation(format!("{what} has no id"))),
        Some(Value::String(id)) => check_id(id, what).map(|()| id.clone()),
        Some(other) => Err(ApiError::validation(format!(
            "{what} has an id that is {}; ids must be strings",
            kind(other)
        ))),
    }
}

/// Refuses an id no store can hold alike: 1 to [`MAX_ID_BYTES`] bytes, no NUL.
pub(crate) fn check_id(id: &str, what: &str) -> Result<(), ApiError> {
    if id.is_empty() || id.len() > MAX_ID_BYTES {
        return Err(ApiError::validation(format!(
            "{what} has an id of {} bytes; ids have 1 to {MAX_ID_BYTES} bytes",
            id.len()
        )));
    }
    if id.contains('\0') {
        return Err(ApiError::validation(format!(
            "{what} has an id with the NUL character (U+0000), which ids cannot hold"
        )));
    }
    Ok(())
}

/// A cursor that names the last id of a page (URL-safe base64), for lists in id
/// order: the vector list's, and the document list's after its prefix.
pub(crate) fn cursor_of_id(id: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(id)
}

/// The id a [`cursor_of_id`] cursor names; what is not an id is not a cursor.
pub(crate) fn id_of_cursor(cursor: &str) -> Result<String, ApiError> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .filter(|id| check_id(id, "the cursor").is_ok())
        .ok_or_else(|| ApiError::Validation {
            message: "the cursor is not one this API returned".into(),
            detail: Some("field cursor".into()),
        })
}

/// Whether a JSON value holds the NUL character in a string or key. Postgres stores
/// it in neither text nor JSON, so every store refuses it alike.
fn holds_nul(value: &Value) -> bool {
    match value {
        Value::String(text) => text.contains('\0'),
        Value::Array(items) => items.iter().any(holds_nul),
        Value::Object(map) => map_holds_nul(map),
        Value::Null | Value::Bool(_) | Value::Number(_) => false,
    }
}

/// [`holds_nul`] for an object: in a key, or in a value.
fn map_holds_nul(map: &Metadata) -> bool {
    map.iter().any(|(key, value)| key.contains('\0') || holds_nul(value))
}

/// Metadata as stored: a key whose value is `null` has no value, as an update's `null`
/// removes a key and a filter's `$exists` reads it, so it is left out.
pub(crate) fn without_nulls(mut metadata: Metadata) -> Metadata {
    metadata.retain(|_, value| !value.is_null());
    metadata
}

/// Refuses metadata over [`MAX_METADATA_BYTES`] as JSON, or holding NUL.
pub(crate) fn check_metadata(map: &Metadata, what: &str) -> Result<(), ApiError> {
    let bytes = serde_json::to_vec(map).map(|v| v.len()).unwrap_or(usize::MAX);
    if bytes > MAX_METADATA_BYTES {
        return Err(ApiError::validation(format!(
            "{what} has {bytes} bytes of metadata; the limit is {MAX_METADATA_BYTES}"
        )));
    }
    if map_holds_nul(map) {
        return Err(ApiError::validation(format!(
            "{what} has metadata with the NUL character (U+0000), which no key or string can hold"
        )));
    }
    Ok(())
}

pub(crate) fn parse_metadata(value: Option<&Value>, what: &str) -> Result<Metadata, ApiError> {
    match value {
        None | Some(Value::Null) => Ok(Metadata::new()),
        Some(Value::Object(map)) => check_metadata(map, what).map(|()| map.clone()),
        Some(other) => Err(ApiError::validation(format!(
            "{what} metadata must be an object, got {}",
            kind(other)
        ))),
    }
}

fn describe(i: usize, id: Option<&Value>) -> String {
    match id {
        Some(Value::String(id)) => format!("vector {i} (id \"{id}\")"),
        _ => format!("vector {i}"),
    }
}

/// Parses a batch into records, refusing the whole batch at the first bad vector.
fn parse_vectors(vectors: Vec<VectorItem>, principal: &Principal) -> Result<Vec<RecordWrite>, ApiError> {
    let project = &principal.project;
    vectors
        .into_iter()
        .enumerate()
        .map(|(i, vector)| {
            let (id, values, metadata, unknown) = match vector {
                VectorItem::Object {
                    id,
                    values,
                    metadata,
                    unknown,
                } => (id, values, metadata, unknown),
                VectorItem::Not(kind) => {
                    return Err(ApiError::validation(format!(
                        "vector {i} must be an object with id and values, got {kind}"
                    )));
                }
            };
            let what = describe(i, id.as_ref());
            if let Some(unknown) = unknown {
                return Err(ApiError::validation(format!(
                    "{what} has an unknown field \"{unknown}\": expected id, values, metadata"
                )));
            }
            let id = parse_id(id.as_ref(), &what)?;
            let values = values.ok_or_else(|| ApiError::validation(format!("{what} has no values")))?;
            Ok(RecordWrite {
                id,
                vector: values.check(project.dimension, project.metric, &what)?,
                metadata: without_nulls(parse_metadata(metadata.as_ref(), &what)?),
                content: None,
            })
        })
        .collect()
}

/// One element of an upsert's `vectors`, read in one pass: its values go straight into
/// `f32` ([`VectorValues`]) rather than through a `Value` per number, which costs more
/// than the rest of an upsert's parsing. What is wrong with it is kept for
/// [`parse_vectors`] to say, in order.
#[derive(Debug)]
enum VectorItem {
    Object {
        id: Option<Value>,
        values: Option<VectorValues>,
        metadata: Option<Value>,
        /// The first field that is not id, values or metadata.
        unknown: Option<String>,
    },
    /// Not an object: what it is instead.
    Not(&'static str),
}

impl<'de> Deserialize<'de> for VectorItem {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ItemVisitor)
    }
}

struct ItemVisitor;

impl<'de> serde::de::Visitor<'de> for ItemVisitor {
    type Value = VectorItem;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a vector object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<VectorItem, A::Error> {
        let (mut id, mut values, mut metadata, mut unknown) = (None, None, None, None);
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "id" => id = Some(map.next_value()?),
                "values" => values = Some(map.next_value()?),
                "metadata" => metadata = Some(map.next_value()?),
                _ => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                    unknown.get_or_insert(key);
                }
            }
        }
        Ok(VectorItem::Object {
            id,
            values,
            metadata,
            unknown,
        })
    }

    fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<VectorItem, E> {
        Ok(VectorItem::Not("a number"))
    }
    fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<VectorItem, E> {
        Ok(VectorItem::Not("a number"))
    }
    fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<VectorItem, E> {
        Ok(VectorItem::Not("a number"))
    }
    fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<VectorItem, E> {
        Ok(VectorItem::Not("a boolean"))
    }
    fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<VectorItem, E> {
        Ok(VectorItem::Not("a string"))
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<VectorItem, E> {
        Ok(VectorItem::Not("null"))
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<VectorItem, A::Error> {
        while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
        Ok(VectorItem::Not("an array"))
    }
}

/// How a request may send a vector's values, for the OpenAPI document: an array of
/// numbers, or a base64 string of little-endian f32s ([`VectorValues`] reads both).
pub struct VectorData;

/// A base64 string of the standard alphabet, padding optional.
const BASE64_PATTERN: &str = "^[A-Za-z0-9+/]*={0,2}$";

impl utoipa::PartialSchema for VectorData {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ArrayBuilder, KnownFormat, ObjectBuilder, OneOfBuilder, SchemaFormat, Type};
        let numbers = ArrayBuilder::new()
            .items(
                ObjectBuilder::new()
                    .schema_type(Type::Number)
                    .format(Some(SchemaFormat::KnownFormat(KnownFormat::Float))),
            )
            .description(Some("The values as numbers."))
            .examples([json!([0.11, 0.22, 0.33, 0.44])]);
        let base64 = ObjectBuilder::new()
            .schema_type(Type::String)
            .content_encoding("base64")
            .pattern(Some(BASE64_PATTERN))
            .description(Some(
                "The base64 (standard alphabet, `=` padding optional) of the values as \
                 little-endian IEEE 754 32-bit floats, 4 bytes each: what OpenAI's \
                 embeddings API returns with `encoding_format: \"base64\"`.",
            ))
            .examples([json!("rkfhPa5HYT7D9ag+rkfhPg==")]);
        OneOfBuilder::new()
            .item(numbers)
            .item(base64)
            .description(Some(format!(
                "A vector: exactly the project's dimension of finite values within ±{MAX_VALUE}, \
                 as an array of numbers or as base64."
            )))
            .into()
    }
}

impl utoipa::ToSchema for VectorData {}

/// One vector to write.
#[derive(Debug, utoipa::ToSchema)]
#[allow(dead_code)] // documentation only: vectors are validated one by one from JSON
pub struct VectorInput {
    /// 1 to 512 bytes.
    #[schema(example = "sku-1")]
    pub id: String,
    #[schema(value_type = VectorData)]
    pub values: Vec<f32>,
    /// A JSON object of at most 40 KiB.
    #[schema(value_type = Option<Object>, example = json!({"name": "Widget A", "category": "hardware"}))]
    pub metadata: Option<Value>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpsertRequest {
    /// Defaults to `default`.
    #[schema(example = "products")]
    namespace: Option<String>,
    /// 1 to 1,000 vectors.
    #[schema(value_type = Vec<VectorInput>, min_items = 1, max_items = 1000)]
    vectors: Vec<VectorItem>,
}

impl UpsertRequest {
    /// Reads an upsert's body, its vectors' numbers lifted out first where they can be
    /// ([`crate::vector_json`]): the request [`parse_body`] would read, for less CPU.
    pub fn read(headers: &HeaderMap, body: &[u8]) -> Result<Self, ApiError> {
        let place = Place::EachOf {
            outer: "vectors",
            inner: "values",
        };
        parse_body_with_vectors(headers, body, place, |request: &mut Self, lifted| {
            // One lifted vector for each element, in order: the body was read this way
            // only if every element was an object whose values were numbers.
            for (item, lifted) in request.vectors.iter_mut().zip(lifted) {
                if let VectorItem::Object { values, .. } = item {
                    *values = Some(VectorValues::Array {
                        values: lifted,
                        bad: None,
                    });
                }
            }
        })
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct UpsertResponse {
    /// Records written: each id once, however often the batch names it.
    pub upserted_count: u64,
    pub namespace: String,
    /// The namespace's sequence number after this write.
    pub seq: i64,
}

/// Insert or replace vectors; all of the batch or none of it.
#[utoipa::path(
    post,
    operation_id = "upsert_vectors",
    path = "/v1/vectors/upsert",
    tag = "vectors",
    security(("api_key_header" = []), ("bearer" = []), ("api_key_query" = [])),
    params(("x-idempotency-key" = Option<String>, Header, description = "replay-safe retries for 24 h")),
    request_body = UpsertRequest,
    responses(
        (status = 200, body = UpsertResponse),
        (status = 400, description = "invalid body or vector", body = quiver_common::error::ErrorEnvelope),
        (status = 401, body = quiver_common::error::ErrorEnvelope),
        (status = 403, description = "no write scope, or a plan cap", body = quiver_common::error::ErrorEnvelope),
        (status = 409, description = "the same idempotency key is in flight", body = quiver_common::error::ErrorEnvelope),
        (status = 413, body = quiver_common::error::ErrorEnvelope),
        (status = 422, description = "the idempotency key was used with another request", body = quiver_common::error::ErrorEnvelope),
        (status = 429, description = "the project's rate limit is spent", body = quiver_common::error::ErrorEnvelope),
        (status = 503, description = "the records store is unreachable", body = quiver_common::error::ErrorEnvelope),
    )
)]
pub async fn upsert(
    State(state): State<DataPlane>,
    principal: Principal,
    headers: HeaderMap,
    body: Result<axum::body::Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    principal.require(Scope::Write)?;
    let body = body.map_err(crate::json::body_rejection(crate::MAX_BODY_BYTES))?;
    idempotent(&state, &principal, &headers, "upsert", &body, async {
        let request = UpsertRequest::read(&headers, &body)?;
        let namespace = namespace(request.namespace)?;
        principal.require_namespace(&namespace)?;
        let plan = state.plan_of(&principal).await?;
        if request.vectors.is_empty() {
            return Err(ApiError::validation("vectors is empty: send 1 to 1000 vectors"));
        }
        if request.vectors.len() > plan.max_batch_size as usize {
            return Err(ApiError::Validation {
                message: format!(
                    "the batch has {} vectors; the limit is {} per request",
                    request.vectors.len(),
                    plan.max_batch_size
                ),
                detail: Some("field vectors".into()),
            });
        }
        let records = parse_vectors(request.vectors, &principal)?;
        state.admit(&principal, Kind::Documents, records.len() as u64).await?;
        let outcome = records::upsert(&state, &principal, &plan, &namespace, records, None).await?;
        Ok(serde_json::to_value(UpsertResponse {
            upserted_count: outcome.affected,
            namespace,
            seq: outcome.state.seq,
        })
        .map_err(anyhow::Error::from)?)
    })
    .await
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[schema(as = VectorSearchRequest)]
#[serde(deny_unknown_fields)]
pub struct SearchRequest {
    #[schema(example = "products")]
    namespace: Option<String>,
    /// The query vector, as numbers or base64. Give this or `id`.
    #[schema(value_type = Option<VectorData>)]
    vector: Option<VectorValues>,
    /// Instead of `vector`: the id of a vector in the namespace, whose values are the
    /// query (read from the records store). That vector is a match too, unless the
    /// filter leaves it out.
    #[schema(value_type = Option<String>, example = "sku-1")]
    id: Option<Value>,
    /// 1 to 1,000 (default 10).
    #[schema(value_type = Option<u32>, minimum = 1, maximum = 1000, example = 10)]
    top_k: Option<Value>,
    /// A metadata filter, e.g. `{"category": "hardware"}` or `{"price": {"$lt": 20}}`.
    #[schema(value_type = Option<Object>)]
    filter: Option<crate::json::UniqueKeys>,
    /// Default false.
    include_values: Option<bool>,
    /// Default true.
    include_metadata: Option<bool>,
    /// `eventual` (default) or `strong`: catch up with the records store first.
    #[schema(example = "eventual")]
    consistency: Option<String>,
}

impl SearchRequest {
    /// Reads a search's body, its query vector's numbers lifted out first where they
    /// can be ([`crate::vector_json`]): the request [`parse_body`] would read, for
    /// less CPU.
    pub fn read(headers: &HeaderMap, body: &[u8]) -> Result<Self, ApiError> {
        read_with_vector(headers, body, |request: &mut Self| &mut request.vector)
    }
}

/// Reads a body whose top-level member `vector` is a query vector, that vector's
/// numbers lifted out first where they can be ([`crate::vector_json`]) and put back
/// where `vector` says.
pub(crate) fn read_with_vector<T: DeserializeOwned>(
    headers: &HeaderMap,
    body: &[u8],
    vector: impl FnOnce(&mut T) -> &mut Option<VectorValues>,
) -> Result<T, ApiError> {
    parse_body_with_vectors(headers, body, Place::Member("vector"), |request, mut lifted| {
        if let Some(values) = lifted.pop() {
            *vector(request) = Some(VectorValues::Array { values, bad: None });
        }
    })
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MatchView {
    id: String,
    /// Similarity, higher is better (cosine similarity, inner product, or 1/(1+distance)).
    score: f32,
    #[serde(skip_serializing_if = "Option::is_none")]
    values: Option<Vec<f32>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    metadata: Option<Arc<Metadata>>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = VectorSearchResponse)]
pub struct SearchResponse {
    matches: Vec<MatchView>,
    namespace: String,
    /// The namespace seq the search saw.
    seq: i64,
}

/// A result count of 1 to [`MAX_TOP_K`] (default 10), named `field` in the request.
pub(crate) fn parse_top_k(value: Option<&Value>, field: &str) -> Result<usize, ApiError> {
    match value {
        None => Ok(10),
        Some(v) => v
            .as_u64()
            .filter(|k| (1..=MAX_TOP_K as u64).contains(k))
            .map(|k| k as usize)
            .ok_or_else(|| ApiError::Validation {
                message: format!("{field} must be an integer from 1 to {MAX_TOP_K}, got {v}"),
                detail: Some(format!("field {field}")),
            }),
    }
}

/// A metadata filter, named `field` in the request.
pub(crate) fn parse_filter(value: Option<&Value>, field: &str) -> Result<Filter, ApiError> {
    match value {
        None | Some(Value::Null) => Ok(Filter::All),
        Some(v) => Filter::parse(v).map_err(|err| ApiError::Validation {
            message: err.to_string(),
            detail: Some(format!("field {field}")),
        }),
    }
}

pub(crate) fn strong(consistency: Option<&str>) -> Result<bool, ApiError> {
    match consistency {
        None | Some("eventual") => Ok(false),
        Some("strong") => Ok(true),
        Some(other) => Err(ApiError::Validation {
            message: format!("consistency must be \"eventual\" or \"strong\", got \"{other}\""),
            detail: Some("field consistency".into()),
        }),
    }
}

/// k-NN similarity search, optionally filtered by metadata.
#[utoipa::path(
    post,
    operation_id = "search_vectors",
    path = "/v1/vectors/search",
    tag = "vectors",
    security(("api_key_header" = []), ("bearer" = []), ("api_key_query" = [])),
    request_body = SearchRequest,
    responses(
        (status = 200, body = SearchResponse),
        (status = 400, body = quiver_common::error::ErrorEnvelope),
        (status = 401, body = quiver_common::error::ErrorEnvelope),
        (status = 403, body = quiver_common::error::ErrorEnvelope),
        (status = 404, description = "no such namespace, or no vector of the search's `id`", body = quiver_common::error::ErrorEnvelope),
        (status = 429, description = "the project's rate limit is spent", body = quiver_common::error::ErrorEnvelope),
    )
)]
pub async fn search(
    State(state): State<DataPlane>,
    principal: Principal,
    headers: HeaderMap,
    body: Result<axum::body::Bytes, BytesRejection>,
) -> Result<Json<SearchResponse>, ApiError> {
    principal.require(Scope::Read)?;
    let body = body.map_err(crate::json::body_rejection(crate::MAX_REQUEST_BODY_BYTES))?;
    let request = SearchRequest::read(&headers, &body)?;
    let namespace = namespace(request.namespace)?;
    principal.require_namespace(&namespace)?;
    let project = &principal.project;
    let query = match (request.vector, request.id) {
        (Some(vector), None) => {
            SearchWith::Vector(vector.check(project.dimension, project.metric, "the query vector")?)
        }
        (None, Some(id)) => SearchWith::StoredAs(parse_id(Some(&id), "the search")?),
        (Some(_), Some(_)) => {
            return Err(ApiError::validation(
                "the search has both a vector and an id; give one: the vector, or the id of a stored vector",
            ));
        }
        (None, None) => {
            return Err(ApiError::validation(
                "the search has no vector; give `vector`, or `id` to search with a stored vector",
            ));
        }
    };
    let k = parse_top_k(request.top_k.as_ref(), "top_k")?;
    let filter = Arc::new(parse_filter(request.filter.as_ref().map(|f| &f.0), "filter")?);
    let strong = strong(request.consistency.as_deref())?;
    state.admit(&principal, Kind::Queries, 1).await?;
    let query = match query {
        SearchWith::Vector(values) => values,
        SearchWith::StoredAs(id) => {
            state
                .store
                .fetch(principal.project_id, &namespace, std::slice::from_ref(&id))
                .await?
                .pop()
                .ok_or_else(|| no_vector(&id, &namespace))?
                .vector
        }
    };
    let query = quiver_engine::Query {
        vector: query,
        k,
        filter,
        // The index holds each vector in 16 bits: values come from the records store.
        include_values: false,
        strong,
    };
    let outcome = state
        .indexes
        .search(project, &namespace, query)
        .await?
        .ok_or_else(|| no_namespace(&namespace))?;
    let include_metadata = request.include_metadata.unwrap_or(true);
    let with_values = request.include_values.unwrap_or(false);
    let mut stored = if with_values && !outcome.matches.is_empty() {
        let ids: Vec<String> = outcome.matches.iter().map(|m| m.id.clone()).collect();
        state
            .store
            .fetch(principal.project_id, &namespace, &ids)
            .await?
            .into_iter()
            .map(|record| (record.id, record.vector))
            .collect()
    } else {
        std::collections::HashMap::new()
    };
    let matches: Vec<MatchView> = outcome
        .matches
        .into_iter()
        .filter_map(|m| {
            // A record deleted since the search found it is left out, as a search a
            // moment later would.
            let values = if with_values { Some(stored.remove(&m.id)?) } else { None };
            Some(MatchView {
                id: m.id,
                score: m.score,
                values,
                metadata: include_metadata.then_some(m.metadata),
            })
        })
        .collect();
    Ok(Json(SearchResponse {
        matches,
        namespace,
        seq: outcome.seq,
    }))
}

/// What a search searches with.
enum SearchWith {
    /// The values the request gave.
    Vector(Vec<f32>),
    /// The values of the stored vector of this id.
    StoredAs(String),
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[schema(as = VectorQueryRequest)]
#[serde(deny_unknown_fields)]
pub struct QueryRequest {
    #[schema(example = "products")]
    namespace: Option<String>,
    /// One id: the answer is that vector, or a 404.
    #[schema(value_type = Option<String>, example = "sku-1")]
    id: Option<Value>,
    /// Up to 1,000 ids: the answer lists those that exist.
    #[schema(value_type = Option<Vec<String>>, min_items = 1, max_items = 1000)]
    ids: Option<Vec<Value>>,
    include_values: Option<bool>,
    include_metadata: Option<bool>,
}

fn parse_ids(id: Option<Value>, ids: Option<Vec<Value>>) -> Result<(Vec<String>, bool), ApiError> {
    match (id, ids) {
        (Some(id), None) => Ok((vec![parse_id(Some(&id), "the request")?], true)),
        (None, Some(ids)) => {
            if ids.is_empty() || ids.len() > MAX_IDS {
                return Err(ApiError::Validation {
                    message: format!("ids must list 1 to {MAX_IDS} ids, got {}", ids.len()),
                    detail: Some("field ids".into()),
                });
            }
            let parsed = ids
                .iter()
                .enumerate()
                .map(|(i, id)| parse_id(Some(id), &format!("ids[{i}]")))
                .collect::<Result<_, _>>()?;
            Ok((parsed, false))
        }
        (Some(_), Some(_)) => Err(ApiError::validation("send either id or ids, not both")),
        (None, None) => Err(ApiError::validation("send the id (or ids) of the vectors")),
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct VectorView {
    id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    values: Option<Vec<f32>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    metadata: Option<Metadata>,
}

/// Fetch vectors by id: with `id`, that vector (plus `namespace`); with `ids`,
/// `{"vectors": [...], "namespace"}`.
#[utoipa::path(
    post,
    operation_id = "fetch_vectors",
    path = "/v1/vectors/query",
    tag = "vectors",
    security(("api_key_header" = []), ("bearer" = []), ("api_key_query" = [])),
    request_body = QueryRequest,
    responses(
        (status = 200, description = "the vector (for `id`) or `{vectors, namespace}` (for `ids`)", body = FetchResponse),
        (status = 400, body = quiver_common::error::ErrorEnvelope),
        (status = 401, body = quiver_common::error::ErrorEnvelope),
        (status = 403, body = quiver_common::error::ErrorEnvelope),
        (status = 404, description = "no such namespace, or no such vector (for `id`)", body = quiver_common::error::ErrorEnvelope),
        (status = 429, description = "the project's rate limit is spent", body = quiver_common::error::ErrorEnvelope),
    )
)]
pub async fn query(
    State(state): State<DataPlane>,
    principal: Principal,
    headers: HeaderMap,
    body: Result<axum::body::Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    principal.require(Scope::Read)?;
    let body = body.map_err(crate::json::body_rejection(crate::MAX_REQUEST_BODY_BYTES))?;
    let request: QueryRequest = parse_body(&headers, &body)?;
    let namespace = namespace(request.namespace)?;
    principal.require_namespace(&namespace)?;
    let (ids, single) = parse_ids(request.id, request.ids)?;
    state.admit(&principal, Kind::Queries, 1).await?;
    let records = state.store.fetch(principal.project_id, &namespace, &ids).await?;
    // Nothing found may be the namespace missing, which is a 404 as it is for searches.
    if records.is_empty() && state.store.namespace(principal.project_id, &namespace).await?.is_none() {
        return Err(no_namespace(&namespace));
    }
    let (with_values, with_metadata) = (
        request.include_values.unwrap_or(true),
        request.include_metadata.unwrap_or(true),
    );
    let mut views: Vec<VectorView> = records
        .into_iter()
        .map(|r| VectorView {
            id: r.id,
            values: with_values.then_some(r.vector),
            metadata: with_metadata.then_some(r.metadata),
        })
        .collect();
    // Written straight from the structs: through a serde_json::Value each f32 would
    // widen to an f64 and print as 0.550000011920929 rather than 0.55.
    let answer = if single {
        let view = views.pop().ok_or_else(|| no_vector(&ids[0], &namespace))?;
        FetchResponse::One(Fetched { view, namespace })
    } else {
        FetchResponse::Many(FetchedMany {
            vectors: views,
            namespace,
        })
    };
    Ok(Json(answer).into_response())
}

/// What a query answers: for `id`, the vector; for `ids`, the vectors found.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(untagged)]
enum FetchResponse {
    One(Fetched),
    Many(FetchedMany),
}

/// What a query by `id` answers: the vector and its namespace.
#[derive(Serialize, utoipa::ToSchema)]
struct Fetched {
    #[serde(flatten)]
    view: VectorView,
    namespace: String,
}

/// What a query by `ids` answers.
#[derive(Serialize, utoipa::ToSchema)]
struct FetchedMany {
    vectors: Vec<VectorView>,
    namespace: String,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateRequest {
    #[schema(example = "products")]
    namespace: Option<String>,
    #[schema(value_type = String, example = "sku-1")]
    id: Option<Value>,
    /// Merged into the vector's metadata key by key; `null` removes a key.
    #[schema(value_type = Option<Object>, example = json!({"category": "premium-hardware", "updated_at": "2025-01-15"}))]
    metadata: Option<Value>,
    /// New values, as numbers or base64.
    #[schema(value_type = Option<VectorData>)]
    values: Option<Value>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct UpdateResponse {
    updated: bool,
    id: String,
    namespace: String,
    seq: i64,
}

/// Merge metadata into a vector, and optionally replace its values.
#[utoipa::path(
    post,
    operation_id = "update_vector",
    path = "/v1/vectors/update",
    tag = "vectors",
    security(("api_key_header" = []), ("bearer" = []), ("api_key_query" = [])),
    params(("x-idempotency-key" = Option<String>, Header, description = "replay-safe retries for 24 h")),
    request_body = UpdateRequest,
    responses(
        (status = 200, body = UpdateResponse),
        (status = 400, body = quiver_common::error::ErrorEnvelope),
        (status = 401, body = quiver_common::error::ErrorEnvelope),
        (status = 403, body = quiver_common::error::ErrorEnvelope),
        (status = 404, description = "no such namespace or vector", body = quiver_common::error::ErrorEnvelope),
        (status = 409, body = quiver_common::error::ErrorEnvelope),
        (status = 422, body = quiver_common::error::ErrorEnvelope),
        (status = 429, description = "the project's rate limit is spent", body = quiver_common::error::ErrorEnvelope),
    )
)]
pub async fn update(
    State(state): State<DataPlane>,
    principal: Principal,
    headers: HeaderMap,
    body: Result<axum::body::Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    principal.require(Scope::Write)?;
    let body = body.map_err(crate::json::body_rejection(crate::MAX_REQUEST_BODY_BYTES))?;
    idempotent(&state, &principal, &headers, "update", &body, async {
        let request: UpdateRequest = parse_body(&headers, &body)?;
        let namespace = namespace(request.namespace)?;
        principal.require_namespace(&namespace)?;
        let id = parse_id(request.id.as_ref(), "the request")?;
        let what = format!("vector \"{id}\"");
        let project = &principal.project;
        let patch = RecordPatch {
            metadata: request
                .metadata
                .as_ref()
                .map(|m| parse_metadata(Some(m), &what).map(MetadataPatch::Merge))
                .transpose()?,
            vector: request
                .values
                .as_ref()
                .map(|v| parse_values(v, project.dimension, project.metric, &what))
                .transpose()?,
            content: None,
            metadata_limit: Some(MAX_METADATA_BYTES),
            // Values sent as they are: no model made them.
            embedding_model: None,
            embedded_content: None,
        };
        if patch.metadata.is_none() && patch.vector.is_none() {
            return Err(ApiError::validation(
                "nothing to update: send metadata, values, or both",
            ));
        }
        state.admit(&principal, Kind::Documents, 1).await?;
        let Some((outcome, _)) = records::patch(&state, &principal, &namespace, &id, &patch).await? else {
            return Err(not_found(&state, &principal, &id, &namespace).await);
        };
        Ok(serde_json::to_value(UpdateResponse {
            updated: true,
            id,
            namespace,
            seq: outcome.state.seq,
        })
        .map_err(anyhow::Error::from)?)
    })
    .await
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeleteRequest {
    #[schema(example = "products")]
    namespace: Option<String>,
    #[schema(value_type = Option<String>, example = "sku-1")]
    id: Option<Value>,
    /// Up to 1,000 ids.
    #[schema(value_type = Option<Vec<String>>, min_items = 1, max_items = 1000)]
    ids: Option<Vec<Value>>,
    /// Delete every vector whose metadata matches (not empty).
    #[schema(value_type = Option<Object>)]
    filter: Option<crate::json::UniqueKeys>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeleteResponse {
    deleted_count: u64,
    namespace: String,
    seq: i64,
}

/// Delete vectors by id, by ids, or by metadata filter.
#[utoipa::path(
    delete,
    operation_id = "delete_vectors",
    path = "/v1/vectors/delete",
    tag = "vectors",
    security(("api_key_header" = []), ("bearer" = []), ("api_key_query" = [])),
    params(("x-idempotency-key" = Option<String>, Header, description = "replay-safe retries for 24 h")),
    request_body = DeleteRequest,
    responses(
        (status = 200, body = DeleteResponse),
        (status = 400, body = quiver_common::error::ErrorEnvelope),
        (status = 401, body = quiver_common::error::ErrorEnvelope),
        (status = 403, body = quiver_common::error::ErrorEnvelope),
        (status = 404, description = "no such namespace", body = quiver_common::error::ErrorEnvelope),
        (status = 409, body = quiver_common::error::ErrorEnvelope),
        (status = 422, body = quiver_common::error::ErrorEnvelope),
        (status = 429, description = "the project's rate limit is spent", body = quiver_common::error::ErrorEnvelope),
    )
)]
pub async fn remove(
    State(state): State<DataPlane>,
    principal: Principal,
    headers: HeaderMap,
    body: Result<axum::body::Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    principal.require(Scope::Write)?;
    let body = body.map_err(crate::json::body_rejection(crate::MAX_REQUEST_BODY_BYTES))?;
    idempotent(&state, &principal, &headers, "delete", &body, async {
        let request: DeleteRequest = parse_body(&headers, &body)?;
        let namespace = namespace(request.namespace)?;
        principal.require_namespace(&namespace)?;
        let (ids, by_filter) = match (request.filter, request.id, request.ids) {
            (Some(filter), None, None) => {
                let filter = parse_filter(Some(&filter.0), "filter")?;
                if filter.is_all() {
                    return Err(ApiError::Validation {
                        message: "an empty filter would delete everything: delete the namespace instead".into(),
                        detail: Some("field filter".into()),
                    });
                }
                // The match is a search of the namespace: a query, spent before it runs.
                state.admit(&principal, Kind::Queries, 1).await?;
                let filter = std::sync::Arc::new(filter);
                let ids = state
                    .indexes
                    .matching_ids(&principal.project, &namespace, std::sync::Arc::clone(&filter))
                    .await?
                    .ok_or_else(|| no_namespace(&namespace))?;
                (ids, Some(filter))
            }
            (Some(_), _, _) => return Err(ApiError::validation("send id, ids or filter, only one of them")),
            (None, id, ids) => (parse_ids(id, ids)?.0, None),
        };
        let which = match by_filter {
            Some(filter) => {
                // However many records match: the caller has no way to split the request.
                state
                    .admit_capped(&principal, Kind::Documents, ids.len() as u64)
                    .await?;
                // The index may be a moment behind the store: a record changed meanwhile
                // to fail the filter is kept.
                records::DeleteIf::StillMatching(ids, filter)
            }
            None => {
                state.admit(&principal, Kind::Documents, ids.len() as u64).await?;
                records::DeleteIf::Live(ids)
            }
        };
        let (deleted, seq) = records::delete(&state, &principal, &namespace, which)
            .await?
            .ok_or_else(|| no_namespace(&namespace))?;
        Ok(serde_json::to_value(DeleteResponse {
            deleted_count: deleted,
            namespace,
            seq,
        })
        .map_err(anyhow::Error::from)?)
    })
    .await
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    namespace: Option<String>,
    prefix: Option<String>,
    /// Page size, 1 to 1,000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
    cursor: Option<String>,
    /// Accepted here only so the key is not refused as an unknown parameter.
    #[allow(dead_code)]
    #[param(ignore)]
    api_key: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ListResponse {
    ids: Vec<String>,
    namespace: String,
    /// Pass as `cursor` for the next page; `null` on the last page.
    next_cursor: Option<String>,
}

/// List a namespace's ids in byte order, a page at a time.
#[utoipa::path(
    get,
    operation_id = "list_vectors",
    path = "/v1/vectors/list",
    tag = "vectors",
    security(("api_key_header" = []), ("bearer" = []), ("api_key_query" = [])),
    params(ListQuery),
    responses(
        (status = 200, body = ListResponse),
        (status = 400, body = quiver_common::error::ErrorEnvelope),
        (status = 401, body = quiver_common::error::ErrorEnvelope),
        (status = 403, body = quiver_common::error::ErrorEnvelope),
        (status = 404, description = "no such namespace", body = quiver_common::error::ErrorEnvelope),
        (status = 429, description = "the project's rate limit is spent", body = quiver_common::error::ErrorEnvelope),
    )
)]
pub async fn list(
    State(state): State<DataPlane>,
    principal: Principal,
    query: Result<AppQuery<ListQuery>, ApiError>,
) -> Result<Json<Value>, ApiError> {
    principal.require(Scope::Read)?;
    let AppQuery(query) = query?;
    let namespace = namespace(query.namespace)?;
    principal.require_namespace(&namespace)?;
    let limit = query.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::Validation {
            message: format!("limit must be from 1 to 1000, got {limit}"),
            detail: Some("field limit".into()),
        });
    }
    if let Some(prefix) = &query.prefix
        && (prefix.len() > MAX_ID_BYTES || prefix.contains('\0'))
    {
        return Err(ApiError::Validation {
            message: format!("prefix must be at most {MAX_ID_BYTES} bytes, without the NUL character, as ids are"),
            detail: Some("field prefix".into()),
        });
    }
    let after = query.cursor.as_deref().map(id_of_cursor).transpose()?;
    state.admit(&principal, Kind::Queries, 1).await?;
    if state.store.namespace(principal.project_id, &namespace).await?.is_none() {
        return Err(no_namespace(&namespace));
    }
    let ids = state
        .store
        .list_ids(
            principal.project_id,
            &namespace,
            query.prefix.as_deref(),
            after.as_deref(),
            limit,
        )
        .await?;
    let next_cursor = (ids.len() == limit as usize)
        .then(|| ids.last().map(|id| cursor_of_id(id)))
        .flatten();
    Ok(Json(
        serde_json::to_value(ListResponse {
            ids,
            namespace,
            next_cursor,
        })
        .map_err(anyhow::Error::from)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What reading a body gives, as text to compare: the request, or the refusal.
    fn outcome<T: std::fmt::Debug>(read: Result<T, ApiError>) -> String {
        match read {
            Ok(request) => format!("{request:?}"),
            Err(err) => format!("{:?}", err.envelope()),
        }
    }

    /// Reads `body` the handlers' way (vectors lifted where they can be) and whole, and
    /// asserts both give the same request or the same refusal; true if it was lifted.
    fn reads_alike<T: std::fmt::Debug + serde::de::DeserializeOwned>(
        body: &[u8],
        place: Place<'_>,
        read: fn(&HeaderMap, &[u8]) -> Result<T, ApiError>,
    ) -> bool {
        let mut headers = HeaderMap::new();
        headers.insert(
            axum::http::header::CONTENT_TYPE,
            axum::http::HeaderValue::from_static("application/json"),
        );
        assert_eq!(
            outcome(read(&headers, body)),
            outcome(parse_body::<T>(&headers, body)),
            "{}",
            String::from_utf8_lossy(body)
        );
        crate::vector_json::lift(body, place).is_some()
    }

    #[test]
    fn bodies_read_alike_with_their_vectors_lifted_or_whole() {
        use rand::{Rng, SeedableRng};
        let search = Place::Member("vector");
        let upsert = Place::EachOf {
            outer: "vectors",
            inner: "values",
        };
        let seeds = [
            (
                r#"{"namespace": "n", "vector": [0.5, -1, 2e-3, 0.03614793717861176, 1E+2], "top_k": 3,
                   "filter": {"tag": {"$in": ["x", "vector"]}}, "include_values": true}"#,
                search,
            ),
            (
                r#"{"namespace": "n", "vectors": [{"id": "a", "values": [1, 2.5], "metadata": {"values": [1]}},
                   {"id": "b", "values": [-0.0, 3e2]}]}"#,
                upsert,
            ),
        ];
        // Hand-picked: each of these is read whole, and must be refused or read alike.
        for body in [
            r#"{"vector": [01], "top_k": 1}"#,
            r#"{"vector": [1e400]}"#,
            r#"{"vector": [1], "vector": [2]}"#,
            r#"{"vect\u006fr": [1]}"#,
            r#"{"vector": [1], "top_k": "ten"}"#,
            r#"{"vector": [1], "colour": "red"}"#,
            r#"{"vector": "AACAPw=="}"#,
            r#"{"vector": [1]} trailing"#,
        ] {
            reads_alike(body.as_bytes(), search, SearchRequest::read);
        }
        // Bodies a few random edits away from valid ones: whatever the edits make of
        // them, the two ways agree, and enough of them are lifted to matter.
        let alphabet = b"[]{},:\" \\-+.eE0123456789nulvectorsa";
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        for (seed, place) in seeds {
            let mut lifted = 0;
            for _ in 0..4000 {
                let mut body = seed.as_bytes().to_vec();
                for _ in 0..rng.random_range(1..=3) {
                    let at = rng.random_range(0..body.len());
                    let byte = alphabet[rng.random_range(0..alphabet.len())];
                    match rng.random_range(0..3) {
                        0 => body[at] = byte,
                        1 => {
                            body.remove(at);
                        }
                        _ => body.insert(at, byte),
                    }
                }
                let was_lifted = match place {
                    Place::Member(_) => reads_alike(&body, place, SearchRequest::read),
                    Place::EachOf { .. } => reads_alike(&body, place, UpsertRequest::read),
                };
                lifted += usize::from(was_lifted);
            }
            assert!(lifted > 500, "only {lifted} of 4,000 edited bodies were lifted");
        }
    }

    /// The vector read in one pass from a body's text, and through a `Value`, as
    /// upserts read theirs: both must give the same values or the same refusal.
    fn both_ways(text: &str, dimension: u32, metric: Metric) -> Result<Vec<f32>, String> {
        #[derive(Deserialize)]
        struct Body {
            vector: VectorValues,
        }
        let body = format!(r#"{{"vector": {text}}}"#);
        let streamed: Body = serde_json::from_str(&body).expect("VectorValues read any JSON value");
        let streamed = streamed.vector.check(dimension, metric, "the query vector");
        let value: Value = serde_json::from_str(text).expect("valid JSON");
        let through_value = parse_values(&value, dimension, metric, "the query vector");
        let message = |r: Result<Vec<f32>, ApiError>| r.map_err(|e| e.envelope().error.message);
        let (streamed, through_value) = (message(streamed), message(through_value));
        assert_eq!(streamed, through_value, "{text}");
        streamed
    }

    #[test]
    fn a_vector_of_numbers_reads_into_f32() {
        assert_eq!(
            both_ways("[1, -2, 0.5, 1e-3]", 4, Metric::Cosine),
            Ok(vec![1.0, -2.0, 0.5, 0.001])
        );
        assert_eq!(both_ways("[0, 0]", 2, Metric::Euclidean), Ok(vec![0.0, 0.0]));
    }

    /// The base64 of `values`' little-endian bytes, as OpenAI's embeddings API sends
    /// them with `encoding_format: "base64"` (standard alphabet, padded).
    fn base64_of(values: &[f32]) -> String {
        let bytes: Vec<u8> = values.iter().flat_map(|x| x.to_le_bytes()).collect();
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    #[test]
    fn a_base64_vector_reads_as_its_little_endian_f32s() {
        let values = [1.0, -2.0, 0.5, 0.001, f32::MIN_POSITIVE, -65504.0];
        let padded = base64_of(&values[..4]);
        assert!(
            padded.ends_with('='),
            "{padded}: four floats are 16 bytes, padded to 24 characters"
        );
        assert_eq!(
            both_ways(&format!("{padded:?}"), 4, Metric::Cosine),
            Ok(values[..4].to_vec())
        );
        let unpadded = padded.trim_end_matches('=');
        assert_eq!(
            both_ways(&format!("{unpadded:?}"), 4, Metric::Cosine),
            Ok(values[..4].to_vec())
        );
        // Bit for bit, the extremes included: no detour through decimal.
        assert_eq!(
            both_ways(&format!("{:?}", base64_of(&values)), 6, Metric::Euclidean),
            Ok(values.to_vec())
        );
        // JSON may escape any character of the string.
        let escaped = format!("\"\\u{:04x}{}\"", padded.as_bytes()[0], &padded[1..]);
        assert_eq!(both_ways(&escaped, 4, Metric::Cosine), Ok(values[..4].to_vec()));
    }

    #[test]
    fn a_bad_base64_vector_is_refused_with_what_is_wrong() {
        let advice = "; send an array of numbers or the base64 of little-endian 32-bit floats";
        let nan = base64_of(&[1.0, f32::NAN, 3.0, 4.0]);
        let infinite = base64_of(&[1.0, 2.0, f32::INFINITY, 4.0]);
        let zeros = base64_of(&[0.0; 4]);
        let three = base64_of(&[1.0, 2.0, 3.0]);
        let url_safe = base64::engine::general_purpose::URL_SAFE.encode([0xfb_u8; 16]);
        let cases = [
            (nan, "the query vector value 1 is not a finite 32-bit float".to_owned()),
            (
                infinite,
                "the query vector value 2 is not a finite 32-bit float".to_owned(),
            ),
            (
                zeros,
                "the query vector is all zeros, which has no direction for cosine similarity".to_owned(),
            ),
            (
                three,
                "the query vector has 3 values, the project's dimension is 4".to_owned(),
            ),
            (
                "AAA=".to_owned(),
                format!(
                    "the query vector values are a string, which decodes to 2 bytes, not a whole number of 32-bit floats (4 bytes each){advice}"
                ),
            ),
            (
                "AAAAAAA=".to_owned(),
                format!(
                    "the query vector values are a string, which decodes to 5 bytes, not a whole number of 32-bit floats (4 bytes each){advice}"
                ),
            ),
            (
                url_safe,
                format!("the query vector values are a string, which is not base64: character 0 is '-'{advice}"),
            ),
            (
                "AAAAA".to_owned(),
                format!(
                    "the query vector values are a string, which is not base64: 5 characters is not a valid length{advice}"
                ),
            ),
            (
                "AAB=".to_owned(),
                format!(
                    "the query vector values are a string, which is not base64: character 2 leaves stray bits{advice}"
                ),
            ),
            (
                "AA=A".to_owned(),
                format!("the query vector values are a string, which is not base64: character 2 is '='{advice}"),
            ),
            (
                "AAA==".to_owned(),
                format!("the query vector values are a string, which is not base64: character 3 is '='{advice}"),
            ),
            (
                String::new(),
                "the query vector has 0 values, the project's dimension is 4".to_owned(),
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(
                both_ways(&format!("{text:?}"), 4, Metric::Cosine),
                Err(expected),
                "{text}"
            );
        }
    }

    #[test]
    fn a_short_vector_reserves_no_room_for_a_long_one() {
        // An upsert body may hold millions of tiny vectors before its batch size is
        // checked: each must cost what it holds, not a guess at a common dimension.
        let read: VectorValues = serde_json::from_str("[1, 2]").expect("a vector");
        let VectorValues::Array { values, .. } = read else {
            panic!("an array reads as one: {read:?}");
        };
        assert_eq!(values, vec![1.0, 2.0]);
        assert!(values.capacity() < 64, "capacity {}", values.capacity());
    }

    #[test]
    fn a_bad_vector_is_refused_with_what_is_wrong_at_the_first_bad_value() {
        let cases = [
            (
                r#""0.1, 0.2""#,
                "the query vector values are a string, which is not base64: character 1 is '.'; \
                 send an array of numbers or the base64 of little-endian 32-bit floats",
            ),
            (
                "null",
                "the query vector values must be an array of numbers or a base64 string of \
                 little-endian 32-bit floats, got null",
            ),
            (
                "{\"a\": [1]}",
                "the query vector values must be an array of numbers or a base64 string of \
                 little-endian 32-bit floats, got an object",
            ),
            (
                "7",
                "the query vector values must be an array of numbers or a base64 string of \
                 little-endian 32-bit floats, got a number",
            ),
            (
                "true",
                "the query vector values must be an array of numbers or a base64 string of \
                 little-endian 32-bit floats, got a boolean",
            ),
            (
                "[1, 2, 3]",
                "the query vector has 3 values, the project's dimension is 4",
            ),
            ("[]", "the query vector has 0 values, the project's dimension is 4"),
            (
                r#"[1, "2", 3, 4]"#,
                "the query vector value 1 is a string, not a number",
            ),
            ("[[1], 2, 3, {}]", "the query vector value 0 is an array, not a number"),
            (
                "[1, 2, null, {\"x\": 1}]",
                "the query vector value 2 is null, not a number",
            ),
            (
                "[1, 1e39, 3, false]",
                "the query vector value 1 is not a finite 32-bit float",
            ),
            (
                "[1, true, 3, 1e39]",
                "the query vector value 1 is a boolean, not a number",
            ),
            (
                "[1, 2, -65504.5, 1e38]",
                "the query vector value 2 is -65504.5, beyond ±65504, the largest magnitude the index holds \
                 (it stores 16-bit floats)",
            ),
            (
                "[0, 0, 0, 0.0]",
                "the query vector is all zeros, which has no direction for cosine similarity",
            ),
            (
                "[1e-45, 1e-9, -2.9e-8, 0]",
                "the query vector is all zeros as the index stores it (16-bit floats, in which every value within ±2^-25 is 0), which has no direction for cosine similarity",
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(both_ways(text, 4, Metric::Cosine), Err(expected.to_owned()), "{text}");
        }
        // Just past 2^-25 a 16-bit float holds its smallest step: a direction.
        assert!(both_ways("[3e-8, 0, 0, 0]", 4, Metric::Cosine).is_ok());
        assert!(both_ways("[1e-45, 0, 0, 0]", 4, Metric::Euclidean).is_ok());
    }
}
