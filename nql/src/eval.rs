//! Values and expression evaluation with SQL's three-valued logic.
//!
//! Metadata values stay JSON ([`Datum::Json`]); comparing one with a literal compares
//! JSON values (numbers numerically, strings by bytes), so `price > 5` and
//! `source = 'web'` mean what they say. JSON `null` and a missing key are both NULL.
//!
//! Evaluating a literal borrows it ([`eval`] returns a [`Cow`]), so a parameter
//! referenced in every row costs nothing per row; what an expression makes (`||`,
//! `::text`) is held to [`MAX_VALUE_BYTES`].

use std::borrow::Cow;
use std::cmp::Ordering;
use std::sync::Arc;

use chrono::{DateTime, SecondsFormat, Utc};
use quiver_common::ApiError;
use quiver_common::json::{compare_integer_float, compare_numbers};
use serde_json::{Map, Number, Value};

use crate::Row;
use crate::budget::{MAX_VALUE_BYTES, json_len_within, over_value_limit, within_value_limit};
use crate::error::query_error;
use crate::plan::{BinOp, Column, Expr, JsonKey, parse_timestamp};

/// A runtime value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Datum {
    Null,
    Bool(bool),
    Int(i64),
    Num(f64),
    Text(String),
    Json(Value),
    /// Shared: a vector parameter is read once, however often the statement uses it.
    Vector(Arc<[f32]>),
    Time(DateTime<Utc>),
}

/// An `f32` as the shortest decimal that round-trips, so `0.1f32` reads `0.1`, not
/// `0.10000000149011612`.
pub(crate) fn f32_to_f64(x: f32) -> f64 {
    x.to_string().parse().unwrap_or(f64::from(x))
}

/// Parses `[1, 2.5, -3]` (pgvector's text form) into a vector.
pub(crate) fn parse_vector(text: &str) -> Result<Vec<f32>, String> {
    let inner = text
        .trim()
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .ok_or_else(|| format!("invalid vector '{}': write it as '[1, 2, 3]'", short(text)))?;
    if inner.trim().is_empty() {
        return Err("a vector must have at least one value".to_owned());
    }
    inner
        .split(',')
        .map(|part| {
            let x: f32 = part.trim().parse().map_err(|_| {
                format!(
                    "invalid vector '{}': \"{}\" is not a number",
                    short(text),
                    short(part.trim())
                )
            })?;
            if x.is_finite() {
                Ok(x)
            } else {
                Err(format!("invalid vector '{}': values must be finite", short(text)))
            }
        })
        .collect()
}

fn short(text: &str) -> String {
    if text.chars().count() > 30 {
        format!("{}…", text.chars().take(30).collect::<String>())
    } else {
        text.to_owned()
    }
}

impl Datum {
    /// A request parameter: arrays of numbers are vectors. One larger than
    /// [`MAX_VALUE_BYTES`] is refused before it is copied.
    pub(crate) fn from_param(value: &Value) -> Result<Datum, String> {
        let too_large = || Err(format!("{}: pass a smaller value", over_value_limit()));
        Ok(match value {
            Value::Null => Datum::Null,
            Value::Bool(b) => Datum::Bool(*b),
            Value::Number(n) => match n.as_i64() {
                Some(i) => Datum::Int(i),
                // Beyond i64 (up to u64::MAX), kept exact: a 64-bit id compares as itself.
                None if n.is_u64() => Datum::Json(value.clone()),
                None => Datum::Num(n.as_f64().unwrap_or(f64::NAN)),
            },
            Value::String(s) if s.len() > MAX_VALUE_BYTES => return too_large(),
            Value::String(s) => Datum::Text(s.clone()),
            Value::Array(items) if !items.is_empty() && items.iter().all(Value::is_number) => {
                if items.len().saturating_mul(4) > MAX_VALUE_BYTES {
                    return too_large();
                }
                let mut vector = Vec::with_capacity(items.len());
                for item in items {
                    let x = item.as_f64().unwrap_or(f64::NAN) as f32;
                    if !x.is_finite() {
                        return Err("is a vector with a value out of range for float4".to_owned());
                    }
                    vector.push(x);
                }
                Datum::Vector(vector.into())
            }
            other if json_len_within(other, MAX_VALUE_BYTES).is_none() => return too_large(),
            other => Datum::Json(other.clone()),
        })
    }

    /// A numeric literal as written.
    pub(crate) fn number(text: &str) -> Option<Datum> {
        if let Ok(i) = text.parse::<i64>() {
            return Some(Datum::Int(i));
        }
        // Beyond i64 (up to u64::MAX), kept exact: a 64-bit id compares as itself.
        if let Ok(u) = text.parse::<u64>() {
            return Some(Datum::Json(Value::from(u)));
        }
        text.parse::<f64>().ok().filter(|x| x.is_finite()).map(Datum::Num)
    }

    /// The value's type, for messages.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Datum::Null => "null",
            Datum::Bool(_) => "a boolean",
            Datum::Int(_) | Datum::Num(_) => "a number",
            Datum::Text(_) => "a string",
            Datum::Json(v) => quiver_common::error::json_kind(v),
            Datum::Vector(_) => "a vector",
            Datum::Time(_) => "a timestamp",
        }
    }

    /// `::text`, as Postgres casts: NULL stays NULL, jsonb is its JSON (a string
    /// quoted), a timestamp as Postgres writes one (`2026-12-05 16:33:06.123+00`),
    /// everything else as [`Datum::to_text`] writes it.
    pub(crate) fn cast_text(&self) -> Datum {
        match self {
            Datum::Null => Datum::Null,
            Datum::Json(value) => Datum::Text(jsonb_text(value)),
            Datum::Time(t) => Datum::Text(postgres_time(t)),
            other => Datum::Text(other.to_text()),
        }
    }

    /// The text form, borrowed where the value already is text.
    fn text(&self) -> Cow<'_, str> {
        match self {
            Datum::Text(s) | Datum::Json(Value::String(s)) => Cow::Borrowed(s),
            other => Cow::Owned(other.to_text()),
        }
    }

    /// The text form (a JSON string's text unquoted).
    pub(crate) fn to_text(&self) -> String {
        match self {
            Datum::Null => String::new(),
            Datum::Bool(b) => b.to_string(),
            Datum::Int(i) => i.to_string(),
            Datum::Num(x) => x.to_string(),
            Datum::Text(s) => s.clone(),
            Datum::Json(Value::String(s)) => s.clone(),
            Datum::Json(v) => jsonb_text(v),
            Datum::Vector(v) => {
                let parts: Vec<String> = v.iter().map(|x| x.to_string()).collect();
                format!("[{}]", parts.join(","))
            }
            Datum::Time(t) => format_time(t),
        }
    }

    /// The value in a result row.
    pub(crate) fn to_json(&self) -> Value {
        match self {
            Datum::Null => Value::Null,
            Datum::Bool(b) => Value::Bool(*b),
            Datum::Int(i) => Value::from(*i),
            Datum::Num(x) => Number::from_f64(*x).map_or(Value::Null, Value::Number),
            Datum::Text(s) => Value::String(s.clone()),
            Datum::Json(v) => v.clone(),
            Datum::Vector(v) => vector_json(v),
            Datum::Time(t) => Value::String(format_time(t)),
        }
    }

    /// The value as JSON, for comparing with a metadata value.
    fn as_json(&self) -> Option<Value> {
        match self {
            Datum::Null => None,
            Datum::Time(t) => Some(Value::String(format_time(t))),
            other => Some(other.to_json()),
        }
    }
}

pub(crate) fn vector_json(v: &[f32]) -> Value {
    Value::Array(
        v.iter()
            .map(|x| Number::from_f64(f32_to_f64(*x)).map_or(Value::Null, Value::Number))
            .collect(),
    )
}

pub(crate) fn format_time(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// A timestamptz as Postgres writes it as text in UTC: microseconds, their trailing
/// zeros dropped (`2026-12-05 16:33:06.12+00`).
fn postgres_time(t: &DateTime<Utc>) -> String {
    let micros = t.timestamp_subsec_micros();
    let fraction = if micros == 0 {
        String::new()
    } else {
        format!(".{micros:06}").trim_end_matches('0').to_owned()
    };
    format!("{}{fraction}+00", t.format("%Y-%m-%d %H:%M:%S"))
}

/// The Postgres type OID of an expression's result.
pub(crate) fn type_oid(expr: &Expr) -> u32 {
    match expr {
        Expr::Column(Column::Id) => 2950,
        Expr::Column(Column::Content) => 25,
        Expr::Column(Column::Metadata) | Expr::MetaKey(_) => 3802,
        Expr::Column(Column::Embedding) => 1021,
        Expr::Column(Column::CreatedAt | Column::UpdatedAt) => 1184,
        Expr::Json { text: true, .. } => 25,
        Expr::Json { text: false, .. } => 3802,
        Expr::Lit(datum) => match &**datum {
            Datum::Null | Datum::Text(_) => 25,
            Datum::Bool(_) => 16,
            Datum::Int(i) if i32::try_from(*i).is_ok() => 23,
            Datum::Int(_) => 20,
            Datum::Num(_) => 1700,
            Datum::Json(_) => 3802,
            Datum::Vector(_) => 1021,
            Datum::Time(_) => 1184,
        },
        Expr::Distance { .. } => 701,
        Expr::Binary { op, left, right } => match op {
            BinOp::Add | BinOp::Sub | BinOp::Mul | BinOp::Div | BinOp::Mod => {
                let (l, r) = (type_oid(left), type_oid(right));
                let int = |t| t == 20 || t == 23;
                if int(l) && int(r) {
                    if l == 20 || r == 20 { 20 } else { 23 }
                } else if (l == 1700 || int(l)) && (r == 1700 || int(r)) {
                    1700
                } else {
                    701
                }
            }
            BinOp::Concat if type_oid(left) == 3802 => 3802,
            BinOp::Concat => 25,
            _ => 16,
        },
        Expr::Neg(inner) => type_oid(inner),
        Expr::Text(_) => 25,
        Expr::Not(_) | Expr::IsNull { .. } | Expr::InList { .. } | Expr::Like { .. } => 16,
        Expr::Count => 20,
    }
}

fn type_name(datum: &Datum) -> &'static str {
    match datum {
        Datum::Null => "unknown",
        Datum::Bool(_) => "boolean",
        Datum::Int(_) => "bigint",
        Datum::Num(_) => "double precision",
        Datum::Text(_) => "text",
        Datum::Json(_) => "jsonb",
        Datum::Vector(_) => "vector",
        Datum::Time(_) => "timestamp with time zone",
    }
}

/// A boolean in three-valued logic; `what` names the clause for the error.
pub(crate) fn truth(datum: &Datum, what: &str) -> Result<Option<bool>, ApiError> {
    match datum {
        Datum::Null => Ok(None),
        Datum::Bool(b) | Datum::Json(Value::Bool(b)) => Ok(Some(*b)),
        other => Err(query_error(format!(
            "argument of {what} must be type boolean, not type {}",
            type_name(other)
        ))),
    }
}

/// Whether a row satisfies a WHERE clause (NULL counts as no).
pub(crate) fn matches(filter: Option<&Expr>, row: &Row) -> Result<bool, ApiError> {
    match filter {
        None => Ok(true),
        Some(expr) => Ok(truth(&*eval(expr, Some(row))?, "WHERE")? == Some(true)),
    }
}

fn json_null_to_null(value: Option<&Value>) -> Datum {
    match value {
        None | Some(Value::Null) => Datum::Null,
        Some(v) => Datum::Json(v.clone()),
    }
}

/// Evaluates an expression against a row (`None` where there is none, as in VALUES).
/// A literal is borrowed, not copied: a statement may name a large parameter many
/// times, and every row evaluates each.
pub(crate) fn eval<'e>(expr: &'e Expr, row: Option<&Row>) -> Result<Cow<'e, Datum>, ApiError> {
    match expr {
        Expr::Lit(datum) => Ok(Cow::Borrowed(&**datum)),
        other => compute(other, row).map(Cow::Owned),
    }
}

/// A value a statement makes, refused past [`MAX_VALUE_BYTES`]; `what` names the
/// expression, `instead` says how to stay within the limit.
pub(crate) fn bounded(datum: Datum, what: &str, instead: &str) -> Result<Datum, ApiError> {
    if within_value_limit(&datum) {
        Ok(datum)
    } else {
        Err(too_large(what, instead))
    }
}

fn too_large(what: &str, instead: &str) -> ApiError {
    query_error(format!("{what} {}: {instead}", over_value_limit()))
}

/// Evaluates anything but a literal.
fn compute(expr: &Expr, row: Option<&Row>) -> Result<Datum, ApiError> {
    let need_row = || row.ok_or_else(|| query_error("column references are not allowed here"));
    Ok(match expr {
        Expr::Column(column) => {
            let row = need_row()?;
            match column {
                Column::Id => Datum::Text(row.id.clone()),
                Column::Content => row.content.clone().map_or(Datum::Null, Datum::Text),
                Column::Metadata => Datum::Json(Value::Object(row.metadata.clone())),
                Column::Embedding => Datum::Vector(row.embedding.as_slice().into()),
                Column::CreatedAt => Datum::Time(row.created_at),
                Column::UpdatedAt => Datum::Time(row.updated_at),
            }
        }
        Expr::MetaKey(key) => json_null_to_null(need_row()?.metadata.get(key)),
        Expr::Json { base, key, text } => {
            let base = match base.as_ref() {
                // Avoid cloning the whole metadata object for `metadata->'k'`.
                Expr::Column(Column::Metadata) => {
                    let row = need_row()?;
                    let value = match key {
                        JsonKey::Key(k) => row.metadata.get(k),
                        JsonKey::Index(_) => None,
                    };
                    return Ok(json_access_result(value, *text));
                }
                other => eval(other, row)?,
            };
            let Datum::Json(base) = &*base else {
                return Ok(Datum::Null);
            };
            let value = match (key, base) {
                (JsonKey::Key(k), Value::Object(map)) => map.get(k),
                (JsonKey::Index(i), Value::Array(items)) => {
                    let len = items.len() as i64;
                    let index = if *i < 0 { len + i } else { *i };
                    usize::try_from(index).ok().and_then(|i| items.get(i))
                }
                _ => None,
            };
            json_access_result(value, *text)
        }
        Expr::Lit(datum) => (**datum).clone(),
        Expr::Distance { op, vector } => {
            let row = need_row()?;
            if row.embedding.len() != vector.len() {
                return Err(query_error(format!(
                    "different vector dimensions {} and {}",
                    row.embedding.len(),
                    vector.len()
                )));
            }
            Datum::Num(f32_to_f64(op.distance(&row.embedding, vector)))
        }
        Expr::Binary { op, left, right } => binary(*op, left, right, row)?,
        Expr::Not(inner) => match truth(&*eval(inner, row)?, "NOT")? {
            None => Datum::Null,
            Some(b) => Datum::Bool(!b),
        },
        Expr::Neg(inner) => match numeric(&*eval(inner, row)?, "-")? {
            Datum::Int(i) => Datum::Int(i.checked_neg().ok_or_else(|| query_error("bigint out of range"))?),
            Datum::Num(x) => Datum::Num(-x),
            other => other,
        },
        Expr::IsNull { expr, negated } => Datum::Bool((*eval(expr, row)? == Datum::Null) != *negated),
        Expr::Text(inner) => bounded(
            eval(inner, row)?.cast_text(),
            "the text of a ::text cast",
            "cast a smaller value",
        )?,
        Expr::InList { expr, list, negated } => {
            let value = eval(expr, row)?;
            if *value == Datum::Null {
                return Ok(Datum::Null);
            }
            let mut unknown = false;
            for item in list {
                match equals(&value, &*eval(item, row)?)? {
                    Some(true) => return Ok(Datum::Bool(!negated)),
                    Some(false) => {}
                    None => unknown = true,
                }
            }
            if unknown { Datum::Null } else { Datum::Bool(*negated) }
        }
        Expr::Like {
            expr,
            pattern,
            negated,
            case_insensitive,
            escape,
        } => {
            let value = eval(expr, row)?;
            let pattern = eval(pattern, row)?;
            if *value == Datum::Null || *pattern == Datum::Null {
                return Ok(Datum::Null);
            }
            let matched = like(&value.text(), &pattern.text(), *case_insensitive, *escape)?;
            Datum::Bool(matched != *negated)
        }
        Expr::Count => return Err(query_error("COUNT(*) is only allowed as a select-list item")),
    })
}

fn json_access_result(value: Option<&Value>, text: bool) -> Datum {
    match value {
        None | Some(Value::Null) => Datum::Null,
        Some(Value::String(s)) if text => Datum::Text(s.clone()),
        Some(other) if text => Datum::Text(jsonb_text(other)),
        Some(other) => Datum::Json(other.clone()),
    }
}

fn binary(op: BinOp, left: &Expr, right: &Expr, row: Option<&Row>) -> Result<Datum, ApiError> {
    match op {
        BinOp::And | BinOp::Or => {
            let l = truth(&*eval(left, row)?, op.symbol())?;
            // Short-circuit like Postgres may: FALSE AND x is FALSE, TRUE OR x is TRUE.
            let decided = if op == BinOp::And { Some(false) } else { Some(true) };
            if l == decided {
                return Ok(Datum::Bool(l == Some(true)));
            }
            let r = truth(&*eval(right, row)?, op.symbol())?;
            Ok(match (op, l, r) {
                (_, _, r) if r == decided => Datum::Bool(r == Some(true)),
                (_, Some(l), Some(r)) => Datum::Bool(if op == BinOp::And { l && r } else { l || r }),
                _ => Datum::Null,
            })
        }
        _ => {
            let l = eval(left, row)?;
            let r = eval(right, row)?;
            let (l, r) = (&*l, &*r);
            if *l == Datum::Null || *r == Datum::Null {
                return Ok(Datum::Null);
            }
            let ordering = |want: fn(Ordering) -> bool| -> Result<Datum, ApiError> {
                Ok(compare(l, r)?.map_or(Datum::Null, |o| Datum::Bool(want(o))))
            };
            match op {
                BinOp::Eq => Ok(equals(l, r)?.map_or(Datum::Null, Datum::Bool)),
                BinOp::Ne => Ok(equals(l, r)?.map_or(Datum::Null, |e| Datum::Bool(!e))),
                BinOp::Lt => ordering(|o| o == Ordering::Less),
                BinOp::Le => ordering(|o| o != Ordering::Greater),
                BinOp::Gt => ordering(|o| o == Ordering::Greater),
                BinOp::Ge => ordering(|o| o != Ordering::Less),
                BinOp::Concat => concat(l, r),
                _ => arithmetic(op, l, r),
            }
        }
    }
}

fn numeric(datum: &Datum, op: &str) -> Result<Datum, ApiError> {
    match datum {
        Datum::Null | Datum::Int(_) | Datum::Num(_) => Ok(datum.clone()),
        Datum::Json(Value::Number(n)) => Ok(match n.as_i64() {
            Some(i) => Datum::Int(i),
            None => Datum::Num(n.as_f64().unwrap_or(f64::NAN)),
        }),
        Datum::Text(s) => Datum::number(s.trim())
            .ok_or_else(|| query_error(format!("invalid input syntax for type double precision: \"{s}\""))),
        other => Err(query_error(format!(
            "operator does not exist: {op} applied to {}",
            type_name(other)
        ))),
    }
}

fn arithmetic(op: BinOp, l: &Datum, r: &Datum) -> Result<Datum, ApiError> {
    let symbol = op.symbol();
    let (l, r) = (numeric(l, symbol)?, numeric(r, symbol)?);
    if let (Datum::Int(a), Datum::Int(b)) = (&l, &r) {
        let (a, b) = (*a, *b);
        if matches!(op, BinOp::Div | BinOp::Mod) && b == 0 {
            return Err(query_error("division by zero"));
        }
        let result = match op {
            BinOp::Add => a.checked_add(b),
            BinOp::Sub => a.checked_sub(b),
            BinOp::Mul => a.checked_mul(b),
            BinOp::Div => a.checked_div(b),
            _ => a.checked_rem(b),
        };
        return result.map(Datum::Int).ok_or_else(|| query_error("bigint out of range"));
    }
    let float = |d: &Datum| match d {
        Datum::Int(i) => *i as f64,
        Datum::Num(x) => *x,
        _ => f64::NAN,
    };
    let (a, b) = (float(&l), float(&r));
    if matches!(op, BinOp::Div | BinOp::Mod) && b == 0.0 {
        return Err(query_error("division by zero"));
    }
    Ok(Datum::Num(match op {
        BinOp::Add => a + b,
        BinOp::Sub => a - b,
        BinOp::Mul => a * b,
        BinOp::Div => a / b,
        _ => a % b,
    }))
}

/// `||`: jsonb concatenation (objects merge, right wins) or text concatenation. The
/// result is held to [`MAX_VALUE_BYTES`]: `$1 || $1 || …` would otherwise make a value
/// as many times the size of `$1` as it names it, for every row.
fn concat(l: &Datum, r: &Datum) -> Result<Datum, ApiError> {
    const WHAT: &str = "the result of ||";
    const INSTEAD: &str = "concatenate fewer or smaller values";
    let as_json = |d: &Datum| -> Result<Value, ApiError> {
        match d {
            Datum::Json(v) => Ok(v.clone()),
            Datum::Text(t) => {
                serde_json::from_str(t).map_err(|e| query_error(format!("invalid input syntax for type json: {e}")))
            }
            other => Ok(other.to_json()),
        }
    };
    if let Datum::Json(_) = l {
        // Each side is a value within the limit or a row's own, so the merge is made
        // before it is measured.
        let (l, r) = (as_json(l)?, as_json(r)?);
        let merged = Datum::Json(match (l, r) {
            (Value::Object(mut a), Value::Object(b)) => {
                a.extend(b);
                Value::Object(a)
            }
            (Value::Array(mut a), Value::Array(b)) => {
                a.extend(b);
                Value::Array(a)
            }
            (Value::Array(mut a), b) => {
                a.push(b);
                Value::Array(a)
            }
            (a, Value::Array(mut b)) => {
                b.insert(0, a);
                Value::Array(b)
            }
            (a, b) => Value::Array(vec![a, b]),
        });
        return bounded(merged, WHAT, INSTEAD);
    }
    let (l, r) = (l.text(), r.text());
    // Measured before the text is made.
    if l.len().saturating_add(r.len()) > MAX_VALUE_BYTES {
        return Err(too_large(WHAT, INSTEAD));
    }
    let mut text = String::with_capacity(l.len() + r.len());
    text.push_str(&l);
    text.push_str(&r);
    Ok(Datum::Text(text))
}

/// jsonb's equality: numbers by value (`1` equals `1.0`) at any depth.
fn json_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => compare_numbers(x, y) == Some(Ordering::Equal),
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(x, y)| json_equal(x, y)),
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(key, x)| y.get(key).is_some_and(|y| json_equal(x, y)))
        }
        _ => a == b,
    }
}

fn json_compare(a: &Value, b: &Value) -> Option<Ordering> {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => compare_numbers(x, y),
        (Value::String(x), Value::String(y)) => Some(x.as_bytes().cmp(y.as_bytes())),
        (Value::Bool(x), Value::Bool(y)) => Some(x.cmp(y)),
        _ if json_equal(a, b) => Some(Ordering::Equal),
        _ => None,
    }
}

/// SQL `=`: NULL when either side is NULL or the values cannot be compared.
pub(crate) fn equals(a: &Datum, b: &Datum) -> Result<Option<bool>, ApiError> {
    match (a, b) {
        (Datum::Null, _) | (_, Datum::Null) => Ok(None),
        (Datum::Json(x), other) | (other, Datum::Json(x)) => Ok(other.as_json().map(|y| json_equal(x, &y))),
        _ => Ok(compare(a, b)?.map(|o| o == Ordering::Equal)),
    }
}

/// SQL ordering: `None` when either side is NULL or the types do not compare.
pub(crate) fn compare(a: &Datum, b: &Datum) -> Result<Option<Ordering>, ApiError> {
    let number = |text: &str| text.trim().parse::<f64>().ok();
    let time = |text: &str| {
        parse_timestamp(text).ok_or_else(|| {
            query_error(format!(
                "invalid input syntax for type timestamp with time zone: \"{text}\""
            ))
        })
    };
    Ok(match (a, b) {
        (Datum::Null, _) | (_, Datum::Null) => None,
        (Datum::Json(x), Datum::Json(y)) => json_compare(x, y),
        (Datum::Json(x), other) => other.as_json().and_then(|y| json_compare(x, &y)),
        (other, Datum::Json(y)) => other.as_json().and_then(|x| json_compare(&x, y)),
        (Datum::Int(x), Datum::Int(y)) => Some(x.cmp(y)),
        (Datum::Int(x), Datum::Num(y)) => compare_integer_float(i128::from(*x), *y),
        (Datum::Num(x), Datum::Int(y)) => compare_integer_float(i128::from(*y), *x).map(Ordering::reverse),
        (Datum::Num(x), Datum::Num(y)) => x.partial_cmp(y),
        (Datum::Text(x), Datum::Text(y)) => Some(x.as_bytes().cmp(y.as_bytes())),
        (Datum::Text(x), Datum::Int(_) | Datum::Num(_)) => number(x).and_then(|x| x.partial_cmp(&to_f64(b))),
        (Datum::Int(_) | Datum::Num(_), Datum::Text(y)) => number(y).and_then(|y| to_f64(a).partial_cmp(&y)),
        (Datum::Time(x), Datum::Time(y)) => Some(x.cmp(y)),
        (Datum::Time(x), Datum::Text(y)) => Some(x.cmp(&time(y)?)),
        (Datum::Text(x), Datum::Time(y)) => Some(time(x)?.cmp(y)),
        (Datum::Bool(x), Datum::Bool(y)) => Some(x.cmp(y)),
        (Datum::Vector(x), Datum::Vector(y)) => x[..].partial_cmp(&y[..]),
        (Datum::Vector(x), Datum::Text(y)) => parse_vector(y).ok().and_then(|y| x[..].partial_cmp(&y[..])),
        (Datum::Text(x), Datum::Vector(y)) => parse_vector(x).ok().and_then(|x| x[..].partial_cmp(&y[..])),
        _ => None,
    })
}

fn to_f64(d: &Datum) -> f64 {
    match d {
        Datum::Int(i) => *i as f64,
        Datum::Num(x) => *x,
        _ => f64::NAN,
    }
}

/// Orders two values for ORDER BY: comparable values by [`compare`], NULLs by
/// `nulls_first`, and values of different types by type so the order is total.
pub(crate) fn sort_order(a: &Datum, b: &Datum, nulls_first: bool) -> Ordering {
    match (a, b) {
        (Datum::Null, Datum::Null) => Ordering::Equal,
        (Datum::Null, _) => {
            if nulls_first {
                Ordering::Less
            } else {
                Ordering::Greater
            }
        }
        (_, Datum::Null) => {
            if nulls_first {
                Ordering::Greater
            } else {
                Ordering::Less
            }
        }
        _ => match (number_key(a), number_key(b)) {
            (Some(x), Some(y)) => number_order(x, y),
            _ => match compare(a, b) {
                Ok(Some(o)) => o,
                _ => rank(a).cmp(&rank(b)),
            },
        },
    }
}

/// A number as ORDER BY sorts it.
#[derive(Clone, Copy)]
enum SortNumber {
    Integer(i128),
    Float(f64),
}

fn number_key(d: &Datum) -> Option<SortNumber> {
    match d {
        Datum::Int(i) => Some(SortNumber::Integer(i128::from(*i))),
        Datum::Num(x) => Some(SortNumber::Float(*x)),
        Datum::Json(Value::Number(n)) => match quiver_common::json::integer_of(n) {
            Some(i) => Some(SortNumber::Integer(i)),
            None => n.as_f64().map(SortNumber::Float),
        },
        _ => None,
    }
}

/// Numbers' order in ORDER BY, a total one: by exact value (as `compare` has it), a
/// float before an integer of the same value, `-0.0` before `0.0`, NaN after all.
fn number_order(a: SortNumber, b: SortNumber) -> Ordering {
    use SortNumber::{Float, Integer};
    match (a, b) {
        (Integer(x), Integer(y)) => x.cmp(&y),
        (Float(x), Float(y)) => match (x.is_nan(), y.is_nan()) {
            (false, false) => x.partial_cmp(&y).unwrap_or(Ordering::Equal).then(x.total_cmp(&y)),
            (true, true) => x.total_cmp(&y),
            (x_nan, _) => {
                if x_nan {
                    Ordering::Greater
                } else {
                    Ordering::Less
                }
            }
        },
        (Integer(i), Float(f)) => compare_integer_float(i, f)
            .unwrap_or(Ordering::Less)
            .then(Ordering::Greater),
        (Float(f), Integer(i)) => compare_integer_float(i, f)
            .map_or(Ordering::Greater, Ordering::reverse)
            .then(Ordering::Less),
    }
}

/// jsonb's cross-type order: null < string < number < boolean < array < object.
fn rank(d: &Datum) -> u8 {
    match d {
        Datum::Json(Value::String(_)) | Datum::Text(_) => 1,
        Datum::Json(Value::Number(_)) | Datum::Int(_) | Datum::Num(_) => 2,
        Datum::Json(Value::Bool(_)) | Datum::Bool(_) => 3,
        Datum::Json(Value::Array(_)) | Datum::Vector(_) => 4,
        Datum::Json(Value::Object(_)) => 5,
        Datum::Time(_) => 6,
        Datum::Json(Value::Null) | Datum::Null => 0,
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Token {
    Any,
    One,
    Char(char),
}

/// The most steps [`like`] takes to match one value: about a tenth of a second.
pub(crate) const LIKE_MAX_STEPS: u64 = 50_000_000;

/// SQL LIKE: `%` any run, `_` one character, `escape` makes the next one literal.
pub(crate) fn like(text: &str, pattern: &str, case_insensitive: bool, escape: Option<char>) -> Result<bool, ApiError> {
    // Folded a character at a time, as the pattern is (`str::to_lowercase` would turn
    // a word-final Σ into ς, which the pattern's Σ, folded alone, never matches).
    let text: Vec<char> = if case_insensitive {
        text.chars().flat_map(char::to_lowercase).collect()
    } else {
        text.chars().collect()
    };
    // The pattern's escapes and wildcards are read as written; only the characters it
    // matches are folded (so an ESCAPE 'X' still escapes with ILIKE).
    let mut tokens = Vec::new();
    let literal = |c: char, tokens: &mut Vec<Token>| {
        if case_insensitive {
            tokens.extend(c.to_lowercase().map(Token::Char));
        } else {
            tokens.push(Token::Char(c));
        }
    };
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        match c {
            c if Some(c) == escape => match chars.next() {
                Some(next) => literal(next, &mut tokens),
                None => return Err(query_error("LIKE pattern must not end with escape character")),
            },
            '%' => tokens.push(Token::Any),
            '_' => tokens.push(Token::One),
            c => literal(c, &mut tokens),
        }
    }
    // The classic wildcard match: linear backtracking to the last `%`. That is
    // quadratic at worst (a long pattern of many `%` against a long text), so a match
    // that has not ended within a budget of steps is refused rather than left to hold
    // a thread where the statement timeout cannot reach it.
    let (mut t, mut p) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    let mut steps = 0u64;
    while t < text.len() {
        steps += 1;
        if steps > LIKE_MAX_STEPS {
            return Err(query_error(format!(
                "the LIKE pattern takes more than {LIKE_MAX_STEPS} steps to match one value: \
                 use fewer wildcards or a shorter pattern"
            )));
        }
        match tokens.get(p) {
            Some(Token::One) => {
                t += 1;
                p += 1;
            }
            Some(Token::Char(c)) if *c == text[t] => {
                t += 1;
                p += 1;
            }
            Some(Token::Any) => {
                star = Some((p, t));
                p += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    p = sp + 1;
                    t = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return Ok(false),
            },
        }
    }
    while tokens.get(p) == Some(&Token::Any) {
        p += 1;
    }
    Ok(p == tokens.len())
}

/// Merges for `metadata || …` are resolved here; this is the metadata a row ends with.
pub(crate) fn as_metadata(datum: Datum) -> Result<Option<Map<String, Value>>, ApiError> {
    crate::plan::metadata_value(datum, "the new metadata")
}

/// A jsonb value as Postgres writes it out: an object's keys shortest first, then in
/// byte order, as jsonb keeps them, and a space after each `,` and `:` between items
/// (`{"a": 1, "bb": [1, 2]}`). Numbers are as serde_json holds them (`1.5`, where
/// Postgres keeps `1.50` as written).
fn jsonb_text(value: &Value) -> String {
    fn sorted(value: &Value) -> Value {
        match value {
            Value::Object(map) => {
                let mut entries: Vec<(&String, &Value)> = map.iter().collect();
                entries.sort_by(|(a, _), (b, _)| a.len().cmp(&b.len()).then_with(|| a.as_bytes().cmp(b.as_bytes())));
                Value::Object(entries.into_iter().map(|(k, v)| (k.clone(), sorted(v))).collect())
            }
            Value::Array(items) => Value::Array(items.iter().map(sorted).collect()),
            other => other.clone(),
        }
    }
    let value = &sorted(value);
    struct Postgres;
    impl serde_json::ser::Formatter for Postgres {
        fn begin_array_value<W: ?Sized + std::io::Write>(
            &mut self,
            writer: &mut W,
            first: bool,
        ) -> std::io::Result<()> {
            if first { Ok(()) } else { writer.write_all(b", ") }
        }
        fn begin_object_key<W: ?Sized + std::io::Write>(&mut self, writer: &mut W, first: bool) -> std::io::Result<()> {
            if first { Ok(()) } else { writer.write_all(b", ") }
        }
        fn begin_object_value<W: ?Sized + std::io::Write>(&mut self, writer: &mut W) -> std::io::Result<()> {
            writer.write_all(b": ")
        }
    }
    let mut out = Vec::new();
    let mut serializer = serde_json::Serializer::with_formatter(&mut out, Postgres);
    serde::Serialize::serialize(value, &mut serializer).expect("a JSON value serializes");
    String::from_utf8(out).expect("serde_json writes UTF-8")
}
