//! NQL errors in Postgres' words, with Postgres' 1-based character positions.

use quiver_common::ApiError;
use sqlparser::parser::ParserError;
use sqlparser::tokenizer::Span;

/// A 1-based character offset into the query text, as Postgres reports positions.
pub type Pos = Option<usize>;

/// A `QUERY_ERROR` without a position.
pub fn query_error(message: impl Into<String>) -> ApiError {
    let message = message.into();
    ApiError::Query {
        detail: Some(format!("ERROR: {message}")),
        message,
    }
}

/// A `QUERY_ERROR` whose detail says where, like `ERROR: … at character 15`.
pub fn query_error_at(message: impl Into<String>, pos: Pos) -> ApiError {
    let message = message.into();
    let detail = match pos {
        Some(pos) => format!("ERROR: {message} at character {pos}"),
        None => format!("ERROR: {message}"),
    };
    ApiError::Query {
        message,
        detail: Some(detail),
    }
}

/// A construct outside the grammar.
pub fn unsupported(construct: impl std::fmt::Display) -> ApiError {
    query_error(format!("NQL does not support {construct} (see the NQL grammar)"))
}

/// Converts a sqlparser line/column (both 1-based, columns in characters) into a
/// 1-based character offset.
pub fn char_offset(query: &str, line: u64, column: u64) -> Pos {
    if line == 0 || column == 0 {
        return None;
    }
    let mut offset = 0usize;
    for (index, text) in query.split('\n').enumerate() {
        if index as u64 + 1 == line {
            return Some(offset.saturating_add(usize::try_from(column).ok()?));
        }
        offset += text.chars().count() + 1;
    }
    None
}

/// Where a span starts, as a character offset.
pub fn span_pos(query: &str, span: Span) -> Pos {
    char_offset(query, span.start.line, span.start.column)
}

/// A sqlparser error as a `QUERY_ERROR`: its message, and its position converted to a
/// character offset (the end of the input when it ran out of tokens).
pub fn parser_error(query: &str, err: ParserError) -> ApiError {
    let raw = match err {
        ParserError::TokenizerError(message) | ParserError::ParserError(message) => message,
        ParserError::RecursionLimitExceeded => {
            return query_error("the statement is nested too deeply");
        }
    };
    let (message, pos) = match raw.rfind(" at Line: ") {
        Some(at) => {
            let location = &raw[at + " at Line: ".len()..];
            let pos = location
                .split_once(", Column: ")
                .and_then(|(line, column)| char_offset(query, line.trim().parse().ok()?, column.trim().parse().ok()?));
            (raw[..at].to_owned(), pos)
        }
        None if raw.ends_with("found: EOF") => (raw.clone(), Some(query.chars().count() + 1)),
        None => (raw.clone(), None),
    };
    query_error_at(format!("syntax error: {message}"), pos)
}
