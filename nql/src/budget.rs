//! What one statement may make and hold, in bytes.
//!
//! A data-plane pod runs every tenant's statements, so a statement's memory must be
//! bounded by constants, never by what it multiplies: a parameter referenced thousands
//! of times, a concatenation of a value with itself, the rows before a deep OFFSET. The
//! limits here are the whole of that story; `docs/nql.md` states them for users.

use std::io;

use serde_json::Value;

use crate::Row;
use crate::eval::Datum;

/// The largest text, JSON or vector value NQL takes or makes: a parameter, a literal,
/// or what `||` and `::text` produce. It is the document API's limit on content (the
/// data plane's `MAX_CONTENT_BYTES`); metadata is smaller still, so no value larger
/// than this can be stored or ever match. Text counts its UTF-8 bytes, JSON the bytes
/// of its text, a vector 4 bytes a value.
pub const MAX_VALUE_BYTES: usize = 256 * 1024;

/// The most bytes one statement makes or holds of each kind, counted as the values take
/// memory: its parameters and literals once planned (a parameter counts once, however
/// often `$n` appears), the rows an INSERT makes, the rows an UPDATE rewrites, the rows
/// a SELECT holds while it sorts and pages, and the rows it returns. A request body's
/// worth: the data plane takes bodies up to 64 MiB.
pub const MAX_STATEMENT_BYTES: usize = 64 << 20;

/// How a limit is written in messages: `262144 bytes (256 KiB)`.
pub(crate) fn bytes_text(bytes: usize) -> String {
    if bytes >= 1 << 20 && bytes.trailing_zeros() >= 20 {
        format!("{bytes} bytes ({} MiB)", bytes >> 20)
    } else if bytes >= 1 << 10 && bytes.trailing_zeros() >= 10 {
        format!("{bytes} bytes ({} KiB)", bytes >> 10)
    } else {
        format!("{bytes} bytes")
    }
}

/// `is more than 262144 bytes (256 KiB), …`: what is wrong with a value over
/// [`MAX_VALUE_BYTES`], to follow its name.
pub(crate) fn over_value_limit() -> String {
    format!(
        "is more than {}, the largest text, JSON or vector value NQL takes or makes \
         (a document's content is at most that)",
        bytes_text(MAX_VALUE_BYTES)
    )
}

/// A writer that only counts, and fails once past its limit (so measuring a huge value
/// stops early).
struct Counter {
    written: usize,
    limit: usize,
}

impl io::Write for Counter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.written += buf.len();
        if self.written > self.limit {
            return Err(io::Error::other("past the limit"));
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A writer that keeps the first `limit` bytes written, then fails (so writing out a
/// huge value stops early).
pub(crate) struct Prefix<'a> {
    pub out: &'a mut Vec<u8>,
    pub limit: usize,
}

impl io::Write for Prefix<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let room = self.limit.saturating_sub(self.out.len());
        self.out.extend_from_slice(&buf[..buf.len().min(room)]);
        if buf.len() > room {
            return Err(io::Error::other("past the limit"));
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The length of a JSON value's text, or `None` when it is more than `limit` bytes
/// (found without writing the text out, and without reading past the limit).
pub(crate) fn json_len_within(value: &Value, limit: usize) -> Option<usize> {
    let mut counter = Counter { written: 0, limit };
    serde_json::to_writer(&mut counter, value).ok()?;
    Some(counter.written)
}

/// Whether a value is within [`MAX_VALUE_BYTES`], as that limit counts it.
pub(crate) fn within_value_limit(datum: &Datum) -> bool {
    match datum {
        Datum::Text(text) => text.len() <= MAX_VALUE_BYTES,
        Datum::Json(value) => json_len_within(value, MAX_VALUE_BYTES).is_some(),
        Datum::Vector(vector) => vector.len().saturating_mul(4) <= MAX_VALUE_BYTES,
        Datum::Null | Datum::Bool(_) | Datum::Int(_) | Datum::Num(_) | Datum::Time(_) => true,
    }
}

/// About the memory a JSON value takes, itself included.
pub(crate) fn value_bytes(value: &Value) -> usize {
    size_of::<Value>()
        + match value {
            Value::String(s) => s.len(),
            Value::Array(items) => items.iter().map(value_bytes).sum(),
            Value::Object(map) => map
                .iter()
                // A map entry: its key, its value, and the tree node's share.
                .map(|(key, value)| size_of::<String>() + key.len() + value_bytes(value) + 16)
                .sum(),
            Value::Null | Value::Bool(_) | Value::Number(_) => 0,
        }
}

/// About the memory a value takes, itself included.
pub(crate) fn datum_bytes(datum: &Datum) -> usize {
    size_of::<Datum>()
        + match datum {
            Datum::Text(text) => text.len(),
            Datum::Json(value) => value_bytes(value),
            Datum::Vector(vector) => vector.len() * 4,
            Datum::Null | Datum::Bool(_) | Datum::Int(_) | Datum::Num(_) | Datum::Time(_) => 0,
        }
}

/// About the memory a metadata object takes.
pub(crate) fn metadata_bytes(metadata: &serde_json::Map<String, Value>) -> usize {
    metadata
        .iter()
        .map(|(key, value)| size_of::<String>() + key.len() + value_bytes(value) + 16)
        .sum()
}

/// About the memory a row takes, itself included.
pub fn row_bytes(row: &Row) -> usize {
    size_of::<Row>()
        + row.id.len()
        + row.content.as_ref().map_or(0, String::len)
        + metadata_bytes(&row.metadata)
        + row.embedding.len() * 4
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_length_is_the_texts_and_stops_past_the_limit() {
        let value = json!({"a": [1, "xy"]});
        assert_eq!(json_len_within(&value, 100), Some(value.to_string().len()));
        assert_eq!(json_len_within(&value, 5), None);
    }

    #[test]
    fn limits_are_written_in_their_unit() {
        assert_eq!(bytes_text(MAX_VALUE_BYTES), "262144 bytes (256 KiB)");
        assert_eq!(bytes_text(MAX_STATEMENT_BYTES), "67108864 bytes (64 MiB)");
        assert_eq!(bytes_text(1000), "1000 bytes");
    }
}
