//! Metadata filters: the vector API's filter language, parsed once into a [`Filter`]
//! and evaluated against a record's metadata.
//!
//! `{"category": "hardware"}` is equality; operators are `$eq $ne $gt $gte $lt $lte
//! $in $nin $exists`, combined with `$and` / `$or` (arrays of filters). Several keys in
//! one object must all hold. When the metadata value is an array, `$eq`/`$in` match if
//! any element matches, and `$ne`/`$nin` if none does. Comparisons (`$gt`…) apply to
//! numbers, and to strings (byte order); values of other types never compare.

use std::cmp::Ordering;
use std::collections::HashSet;

use quiver_common::error::json_kind as kind;
use quiver_common::json::{compare_numbers, float_as_integer, integer_of};
use serde_json::{Map, Number, Value};

/// A parsed filter.
#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    /// Every record.
    All,
    And(Vec<Filter>),
    Or(Vec<Filter>),
    Field {
        key: String,
        op: Op,
    },
}

/// A condition on one metadata field.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    Eq(Value),
    Ne(Value),
    Gt(Value),
    Gte(Value),
    Lt(Value),
    Lte(Value),
    In(Box<ValueSet>),
    Nin(Box<ValueSet>),
    Exists(bool),
}

/// The values of an `$in` or `$nin`, each looked up in constant time however many
/// there are (a search may test every record of a namespace against thousands of ids).
/// Equal as [`equal`] has it: numbers by their exact values, so 1 equals 1.0 and
/// 2^53 + 1 does not equal 9007199254740992.0.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ValueSet {
    strings: HashSet<String>,
    booleans: [bool; 2],
    /// Integers, and the floats whose value is an integer (`2.0`, `-0.0`).
    integers: HashSet<i128>,
    /// The bits of every other float.
    floats: HashSet<u64>,
}

/// A number as a [`ValueSet`] keeps it: an integer, or a float with a fraction.
enum Exact {
    Integer(i128),
    Float(u64),
}

fn exact(n: &Number) -> Option<Exact> {
    if let Some(i) = integer_of(n) {
        return Some(Exact::Integer(i));
    }
    let x = n.as_f64()?;
    Some(match float_as_integer(x) {
        Some(i) => Exact::Integer(i),
        None => Exact::Float(x.to_bits()),
    })
}

impl ValueSet {
    fn insert(&mut self, value: &Value) {
        match value {
            Value::String(s) => {
                self.strings.insert(s.clone());
            }
            Value::Bool(b) => self.booleans[usize::from(*b)] = true,
            Value::Number(n) => match exact(n) {
                Some(Exact::Integer(i)) => {
                    self.integers.insert(i);
                }
                Some(Exact::Float(bits)) => {
                    self.floats.insert(bits);
                }
                None => {}
            },
            Value::Null | Value::Array(_) | Value::Object(_) => {}
        }
    }

    fn contains(&self, value: &Value) -> bool {
        match value {
            Value::String(s) => self.strings.contains(s),
            Value::Bool(b) => self.booleans[usize::from(*b)],
            Value::Number(n) => match exact(n) {
                Some(Exact::Integer(i)) => self.integers.contains(&i),
                Some(Exact::Float(bits)) => self.floats.contains(&bits),
                None => false,
            },
            Value::Null | Value::Array(_) | Value::Object(_) => false,
        }
    }
}

/// Why a filter was refused; the message names the offending part.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid filter: {0}")]
pub struct FilterError(pub String);

/// How deep `$and`/`$or` may nest: bounded, so a hostile filter cannot exhaust the stack.
const MAX_DEPTH: usize = 16;
/// Conditions (one per operator on a key) a filter may hold: each is tested on every
/// record a search looks at.
pub const MAX_CONDITIONS: usize = 1_000;
/// Values a filter may list in all (`$in`/`$nin` items, and every other operand).
pub const MAX_VALUES: usize = 10_000;

impl Filter {
    /// Parses the JSON form.
    pub fn parse(value: &Value) -> Result<Filter, FilterError> {
        let mut size = Size::default();
        parse(value, 0, &mut size)
    }

    /// Whether `metadata` satisfies the filter.
    pub fn matches(&self, metadata: &Map<String, Value>) -> bool {
        match self {
            Filter::All => true,
            Filter::And(all) => all.iter().all(|f| f.matches(metadata)),
            Filter::Or(any) => any.iter().any(|f| f.matches(metadata)),
            Filter::Field { key, op } => op.holds(metadata.get(key)),
        }
    }

    /// Whether the filter lets every record through.
    pub fn is_all(&self) -> bool {
        matches!(self, Filter::All)
    }
}

/// What a filter holds so far, against [`MAX_CONDITIONS`] and [`MAX_VALUES`].
#[derive(Default)]
struct Size {
    conditions: usize,
    values: usize,
}

impl Size {
    fn add(&mut self, values: usize) -> Result<(), FilterError> {
        self.conditions += 1;
        self.values += values;
        if self.conditions > MAX_CONDITIONS {
            return Err(FilterError(format!("more than {MAX_CONDITIONS} conditions")));
        }
        if self.values > MAX_VALUES {
            return Err(FilterError(format!(
                "more than {MAX_VALUES} values in all (in $in and $nin lists and other operands)"
            )));
        }
        Ok(())
    }
}

fn parse(value: &Value, depth: usize, size: &mut Size) -> Result<Filter, FilterError> {
    if depth > MAX_DEPTH {
        return Err(FilterError(format!("nested deeper than {MAX_DEPTH} levels")));
    }
    let object = value
        .as_object()
        .ok_or_else(|| FilterError(format!("expected an object, got {}", kind(value))))?;
    let mut parts = Vec::with_capacity(object.len());
    for (key, condition) in object {
        match key.as_str() {
            "$and" | "$or" => {
                let items = condition
                    .as_array()
                    .filter(|items| !items.is_empty())
                    .ok_or_else(|| FilterError(format!("{key} takes a non-empty array of filters")))?;
                let parsed = items
                    .iter()
                    .map(|item| parse(item, depth + 1, size))
                    .collect::<Result<Vec<_>, _>>()?;
                // An empty object in the list lets every record through: `$and` drops
                // it and `$or` becomes it, so `is_all` sees what `{}` would be.
                if key == "$and" {
                    parts.extend(parsed);
                } else if parsed.iter().any(Filter::is_all) {
                    parts.push(Filter::All);
                } else {
                    parts.push(Filter::Or(parsed));
                }
            }
            other if other.starts_with('$') => {
                return Err(FilterError(format!(
                    "unknown operator {other} at the top level: use $and, $or, or a metadata key"
                )));
            }
            field => parts.extend(parse_field(field, condition, size)?),
        }
    }
    parts.retain(|part| !part.is_all());
    Ok(match parts.len() {
        0 => Filter::All,
        1 => parts.pop().expect("one part"),
        _ => Filter::And(parts),
    })
}

fn parse_field(key: &str, condition: &Value, size: &mut Size) -> Result<Vec<Filter>, FilterError> {
    let field = |op| Filter::Field {
        key: key.to_owned(),
        op,
    };
    let Some(operators) = condition.as_object() else {
        // A bare value is equality.
        size.add(1)?;
        return Ok(vec![field(Op::Eq(scalar(key, "$eq", condition)?))]);
    };
    if operators.is_empty() {
        return Err(FilterError(format!("the condition on \"{key}\" is an empty object")));
    }
    operators
        .iter()
        .map(|(op, operand)| {
            size.add(operand.as_array().map_or(1, Vec::len))?;
            Ok(field(match op.as_str() {
                "$eq" => Op::Eq(scalar(key, op, operand)?),
                "$ne" => Op::Ne(scalar(key, op, operand)?),
                "$gt" => Op::Gt(comparable(key, op, operand)?),
                "$gte" => Op::Gte(comparable(key, op, operand)?),
                "$lt" => Op::Lt(comparable(key, op, operand)?),
                "$lte" => Op::Lte(comparable(key, op, operand)?),
                "$in" => Op::In(Box::new(list(key, op, operand)?)),
                "$nin" => Op::Nin(Box::new(list(key, op, operand)?)),
                "$exists" => Op::Exists(
                    operand
                        .as_bool()
                        .ok_or_else(|| FilterError(format!("$exists on \"{key}\" takes true or false")))?,
                ),
                other => {
                    return Err(FilterError(format!(
                        "unknown operator {other} on \"{key}\": use $eq, $ne, $gt, $gte, $lt, $lte, $in, $nin or $exists"
                    )));
                }
            }))
        })
        .collect()
}

fn scalar(key: &str, op: &str, value: &Value) -> Result<Value, FilterError> {
    match value {
        Value::String(_) | Value::Number(_) | Value::Bool(_) => Ok(value.clone()),
        other => Err(FilterError(format!(
            "{op} on \"{key}\" takes a string, number or boolean, got {}",
            kind(other)
        ))),
    }
}

fn comparable(key: &str, op: &str, value: &Value) -> Result<Value, FilterError> {
    match value {
        Value::String(_) | Value::Number(_) => Ok(value.clone()),
        other => Err(FilterError(format!(
            "{op} on \"{key}\" takes a number or a string, got {}",
            kind(other)
        ))),
    }
}

fn list(key: &str, op: &str, value: &Value) -> Result<ValueSet, FilterError> {
    let items = value
        .as_array()
        .ok_or_else(|| FilterError(format!("{op} on \"{key}\" takes an array, got {}", kind(value))))?;
    if items.is_empty() {
        return Err(FilterError(format!("{op} on \"{key}\" takes a non-empty array")));
    }
    let mut set = ValueSet::default();
    for item in items {
        set.insert(&scalar(key, op, item)?);
    }
    Ok(set)
}

/// Equality across JSON numbers compares values, so 1 equals 1.0.
fn equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => compare_numbers(x, y) == Some(Ordering::Equal),
        _ => a == b,
    }
}

fn compare(a: &Value, b: &Value) -> Option<Ordering> {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => compare_numbers(x, y),
        (Value::String(x), Value::String(y)) => Some(x.as_bytes().cmp(y.as_bytes())),
        _ => None,
    }
}

impl Op {
    fn holds(&self, value: Option<&Value>) -> bool {
        // Arrays in metadata: match on any element (for $eq, $in, comparisons).
        let any = |pred: &dyn Fn(&Value) -> bool| match value {
            Some(Value::Array(items)) => items.iter().any(pred),
            Some(v) => pred(v),
            None => false,
        };
        match self {
            Op::Eq(target) => any(&|v| equal(v, target)),
            Op::Ne(target) => !any(&|v| equal(v, target)),
            Op::In(targets) => any(&|v| targets.contains(v)),
            Op::Nin(targets) => !any(&|v| targets.contains(v)),
            Op::Gt(target) => any(&|v| compare(v, target) == Some(Ordering::Greater)),
            Op::Gte(target) => any(&|v| matches!(compare(v, target), Some(Ordering::Greater | Ordering::Equal))),
            Op::Lt(target) => any(&|v| compare(v, target) == Some(Ordering::Less)),
            Op::Lte(target) => any(&|v| matches!(compare(v, target), Some(Ordering::Less | Ordering::Equal))),
            Op::Exists(should) => value.is_some_and(|v| !v.is_null()) == *should,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn meta(value: Value) -> Map<String, Value> {
        value.as_object().cloned().expect("an object")
    }

    fn check(filter: Value, metadata: Value) -> bool {
        Filter::parse(&filter).expect("valid filter").matches(&meta(metadata))
    }

    #[test]
    fn a_plain_map_is_equality_on_every_key() {
        let m = json!({"category": "hardware", "name": "Widget A", "price": 10});
        assert!(check(json!({"category": "hardware"}), m.clone()));
        assert!(check(json!({"category": "hardware", "price": 10.0}), m.clone()));
        assert!(!check(json!({"category": "software"}), m.clone()));
        assert!(!check(json!({"category": "hardware", "name": "Widget B"}), m.clone()));
        assert!(check(json!({}), m));
    }

    #[test]
    fn every_operator_does_what_it_says() {
        let m = json!({"price": 10, "name": "b", "tags": ["x", "y"], "flag": true, "none": null});
        let cases = [
            (json!({"price": {"$eq": 10}}), true),
            (json!({"price": {"$ne": 10}}), false),
            (json!({"price": {"$gt": 9.5}}), true),
            (json!({"price": {"$gte": 10}}), true),
            (json!({"price": {"$lt": 10}}), false),
            (json!({"price": {"$lte": 10}}), true),
            (json!({"price": {"$gt": 5, "$lt": 20}}), true),
            (json!({"name": {"$gt": "a"}}), true),
            (json!({"name": {"$gt": 1}}), false),
            (json!({"price": {"$in": [1, 10]}}), true),
            (json!({"price": {"$nin": [1, 10]}}), false),
            (json!({"tags": "y"}), true),
            (json!({"tags": {"$in": ["z", "x"]}}), true),
            (json!({"tags": {"$nin": ["z"]}}), true),
            (json!({"tags": {"$ne": "x"}}), false),
            (json!({"flag": true}), true),
            (json!({"price": {"$exists": true}}), true),
            (json!({"missing": {"$exists": false}}), true),
            (json!({"none": {"$exists": true}}), false),
            (json!({"missing": {"$ne": 1}}), true),
            (json!({"missing": {"$eq": 1}}), false),
            (json!({"$or": [{"price": 1}, {"name": "b"}]}), true),
            (json!({"$and": [{"price": 10}, {"name": "a"}]}), false),
            (
                json!({"$or": [{"$and": [{"price": {"$gte": 10}}, {"flag": true}]}, {"name": "zzz"}]}),
                true,
            ),
        ];
        for (filter, expected) in cases {
            assert_eq!(check(filter.clone(), m.clone()), expected, "{filter}");
        }
    }

    /// What lets every record through is `All` however it is written, so a delete by
    /// filter can refuse it.
    #[test]
    fn empty_objects_inside_and_or_are_every_record() {
        for filter in [
            json!({}),
            json!({"$and": [{}]}),
            json!({"$or": [{}]}),
            json!({"$or": [{"a": 1}, {}]}),
            json!({"$and": [{}, {"$or": [{}]}]}),
            json!({"$and": [{"$and": [{}]}], "$or": [{}, {"b": 2}]}),
        ] {
            assert_eq!(Filter::parse(&filter), Ok(Filter::All), "{filter}");
        }
        let narrowed = Filter::parse(&json!({"$and": [{}, {"a": 1}], "$or": [{"b": 2}]})).expect("valid");
        assert!(!narrowed.is_all());
        assert!(narrowed.matches(&meta(json!({"a": 1, "b": 2}))));
        assert!(!narrowed.matches(&meta(json!({"a": 1}))));
    }

    #[test]
    fn integers_compare_exactly_beyond_what_a_float_holds() {
        let big = json!({"x": 9007199254740993u64, "y": i64::MAX, "z": -9007199254740993i64});
        assert!(check(json!({"x": 9007199254740993u64}), big.clone()));
        assert!(!check(json!({"x": 9007199254740992u64}), big.clone()));
        assert!(!check(json!({"x": {"$in": [9007199254740992u64, 1]}}), big.clone()));
        assert!(check(json!({"x": {"$gt": 9007199254740992u64}}), big.clone()));
        assert!(check(json!({"y": {"$gt": i64::MAX - 1}}), big.clone()));
        assert!(check(json!({"y": {"$lt": u64::MAX}}), big.clone()));
        assert!(check(json!({"z": {"$lt": -9007199254740992i64}}), big.clone()));
        // Integers against floats still compare by value.
        assert!(check(json!({"x": {"$gt": 9.0e15}}), big.clone()));
        assert!(check(json!({"n": 1.0}), json!({"n": 1})));
        assert!(check(json!({"n": {"$lt": 1.5}}), json!({"n": 1})));
        // ... by their exact values: 2^53 + 1 is not the float 2^53, nor in a set of it.
        assert!(!check(json!({"x": 9007199254740992.0}), big.clone()));
        assert!(check(json!({"x": {"$gt": 9007199254740992.0}}), big.clone()));
        assert!(!check(json!({"x": {"$lte": 9007199254740992.0}}), big.clone()));
        assert!(!check(json!({"x": {"$in": [9007199254740992.0]}}), big.clone()));
        assert!(check(json!({"x": {"$nin": [9007199254740992.0]}}), big.clone()));
        assert!(check(json!({"y": {"$lt": 9223372036854775808.0}}), big.clone()));
        assert!(check(json!({"n": {"$in": [2.0]}}), json!({"n": 2})));
        assert!(check(json!({"n": {"$in": [2]}}), json!({"n": -0.0 + 2.0})));
    }

    /// `$in` and `$nin` look their values up in sets: what they find is what `$eq` on
    /// each value finds, integers beyond 2^53 and floats among them.
    #[test]
    fn in_and_nin_find_what_eq_on_each_value_finds() {
        let values = [
            json!(0),
            json!(-0.0),
            json!(1),
            json!(1.0),
            json!(1.5),
            json!(-3),
            json!(9007199254740992u64),
            json!(9007199254740993u64),
            json!(9007199254740992.0),
            json!(u64::MAX),
            json!(18446744073709551615.0),
            json!(-9007199254740993i64),
            json!(1e300),
            json!("1"),
            json!(""),
            json!(true),
            json!(false),
        ];
        for (i, a) in values.iter().enumerate() {
            for b in &values[i..] {
                for probe in &values {
                    let record = json!({"k": probe});
                    let eq = check(json!({"k": {"$eq": a}}), record.clone())
                        || check(json!({"k": {"$eq": b}}), record.clone());
                    assert_eq!(
                        check(json!({"k": {"$in": [a, b]}}), record.clone()),
                        eq,
                        "{probe} in [{a}, {b}]"
                    );
                    assert_eq!(
                        check(json!({"k": {"$nin": [a, b]}}), record),
                        !eq,
                        "{probe} nin [{a}, {b}]"
                    );
                }
            }
        }
        let ids: Vec<String> = (0..10_000).map(|i| format!("doc-{i}")).collect();
        let among = Filter::parse(&json!({"id": {"$in": ids}})).expect("10,000 values");
        assert!(among.matches(&meta(json!({"id": "doc-9999"}))));
        assert!(among.matches(&meta(json!({"id": ["x", "doc-5"]}))));
        assert!(!among.matches(&meta(json!({"id": "doc-10000"}))));
    }

    /// A filter is tested on every record a search looks at: its size is bounded.
    #[test]
    fn filters_beyond_the_size_caps_are_refused() {
        let values: Vec<u32> = (0..=MAX_VALUES as u32).collect();
        let err = Filter::parse(&json!({"id": {"$in": values}})).expect_err("too many values");
        assert!(err.0.contains("more than 10000 values"), "{err}");
        let half: Vec<u32> = (0..MAX_VALUES as u32 / 2 + 1).collect();
        let err = Filter::parse(&json!({"$or": [{"a": {"$in": half}}, {"b": {"$nin": half}}]})).expect_err("in all");
        assert!(err.0.contains("values in all"), "{err}");
        let keys: Map<String, Value> = (0..=MAX_CONDITIONS).map(|i| (format!("k{i}"), json!(i))).collect();
        let err = Filter::parse(&Value::Object(keys)).expect_err("too many conditions");
        assert!(err.0.contains("more than 1000 conditions"), "{err}");
        let keys: Map<String, Value> = (0..MAX_CONDITIONS).map(|i| (format!("k{i}"), json!(i))).collect();
        assert!(Filter::parse(&Value::Object(keys)).is_ok());
    }

    #[test]
    fn malformed_filters_are_refused_with_what_was_wrong() {
        for (filter, needle) in [
            (json!([1]), "expected an object"),
            (json!({"price": {"$regex": "x"}}), "unknown operator $regex"),
            (json!({"$not": {"a": 1}}), "unknown operator $not"),
            (json!({"price": {"$in": 3}}), "takes an array"),
            (json!({"price": {"$gt": true}}), "number or a string"),
            (json!({"price": {"$exists": "yes"}}), "true or false"),
            (json!({"$and": []}), "non-empty array"),
            (
                json!({"price": {"$in": []}}),
                "$in on \"price\" takes a non-empty array",
            ),
            (
                json!({"price": {"$nin": []}}),
                "$nin on \"price\" takes a non-empty array",
            ),
            (json!({"price": {}}), "empty object"),
            (json!({"price": [1, 2]}), "got an array"),
            (json!({"price": null}), "got null"),
        ] {
            let err = Filter::parse(&filter).expect_err("refused");
            assert!(err.0.contains(needle), "{filter}: {err}");
        }
        let mut deep = json!({"a": 1});
        for _ in 0..20 {
            deep = json!({"$and": [deep]});
        }
        assert!(Filter::parse(&deep).is_err());
    }
}
