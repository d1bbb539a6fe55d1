//! JSON values as metadata filters and queries compare them.

use std::cmp::Ordering;

use serde_json::Number;

/// A JSON number's exact value when it is an integer (JSON integers span i64 and u64,
/// so both fit an i128); `None` for a number with a fraction or an exponent.
pub fn integer_of(n: &Number) -> Option<i128> {
    n.as_i64().map(i128::from).or_else(|| n.as_u64().map(i128::from))
}

/// Orders two JSON numbers by value, exactly. As 64-bit floats, 2^53 + 1 would equal
/// 2^53, and a filter on 64-bit ids would match (and a delete by it remove) its
/// neighbours; so integers compare as integers, an integer and a float by their exact
/// values (1 equals 1.0, 2^53 + 1 is more than 9007199254740992.0), and two floats
/// as floats.
pub fn compare_numbers(x: &Number, y: &Number) -> Option<Ordering> {
    match (integer_of(x), integer_of(y)) {
        (Some(x), Some(y)) => Some(x.cmp(&y)),
        (Some(x), None) => compare_integer_float(x, y.as_f64()?),
        (None, Some(y)) => compare_integer_float(y, x.as_f64()?).map(Ordering::reverse),
        (None, None) => x.as_f64()?.partial_cmp(&y.as_f64()?),
    }
}

/// Past every JSON integer (they lie within ±2^64) and within what an i128 holds.
const BEYOND_INTEGERS: f64 = 1_267_650_600_228_229_401_496_703_205_376.0; // 2^100

/// An integer against a float by their exact values (`i as f64` rounds beyond 2^53).
pub fn compare_integer_float(i: i128, f: f64) -> Option<Ordering> {
    if f.is_nan() {
        return None;
    }
    if f >= BEYOND_INTEGERS {
        return Some(Ordering::Less);
    }
    if f <= -BEYOND_INTEGERS {
        return Some(Ordering::Greater);
    }
    // Exact: `whole` is an integer within ±2^100, and `f - whole` is f's fraction.
    let whole = f.trunc();
    Some(
        i.cmp(&(whole as i128))
            .then_with(|| 0.0.partial_cmp(&(f - whole)).unwrap_or(Ordering::Equal)),
    )
}

/// A float's value when it is an integer JSON's integers could hold a neighbour of
/// (`2.0` → 2, `-0.0` → 0; `2.5`, 1e300 → none).
pub fn float_as_integer(f: f64) -> Option<i128> {
    (f.trunc() == f && f.abs() < BEYOND_INTEGERS).then_some(f as i128)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn number(value: serde_json::Value) -> Number {
        match value {
            serde_json::Value::Number(n) => n,
            other => panic!("{other} is not a number"),
        }
    }

    #[test]
    fn integers_compare_exactly_and_others_by_value() {
        let cases = [
            (
                serde_json::json!(9007199254740993u64),
                serde_json::json!(9007199254740992u64),
                Ordering::Greater,
            ),
            (
                serde_json::json!(u64::MAX),
                serde_json::json!(i64::MAX),
                Ordering::Greater,
            ),
            (
                serde_json::json!(-9007199254740993i64),
                serde_json::json!(-9007199254740992i64),
                Ordering::Less,
            ),
            (serde_json::json!(-1), serde_json::json!(u64::MAX), Ordering::Less),
            (serde_json::json!(1), serde_json::json!(1.0), Ordering::Equal),
            (serde_json::json!(2), serde_json::json!(1.5), Ordering::Greater),
            (
                serde_json::json!(9007199254740993u64),
                serde_json::json!(9007199254740992.0),
                Ordering::Greater,
            ),
            (
                serde_json::json!(9007199254740992.0),
                serde_json::json!(9007199254740993u64),
                Ordering::Less,
            ),
            (
                serde_json::json!(9007199254740992u64),
                serde_json::json!(9007199254740992.0),
                Ordering::Equal,
            ),
            (
                serde_json::json!(-9007199254740993i64),
                serde_json::json!(-9007199254740992.0),
                Ordering::Less,
            ),
            (
                serde_json::json!(u64::MAX),
                serde_json::json!(18446744073709551616.0),
                Ordering::Less,
            ),
            (
                serde_json::json!(i64::MIN),
                serde_json::json!(-9223372036854775808.0),
                Ordering::Equal,
            ),
            (serde_json::json!(-3), serde_json::json!(-2.5), Ordering::Less),
            (serde_json::json!(-2), serde_json::json!(-2.5), Ordering::Greater),
            (serde_json::json!(0), serde_json::json!(1e300), Ordering::Less),
            (serde_json::json!(0), serde_json::json!(-1e300), Ordering::Greater),
            (serde_json::json!(1.5), serde_json::json!(2.5), Ordering::Less),
        ];
        for (x, y, expected) in cases {
            assert_eq!(
                compare_numbers(&number(x.clone()), &number(y.clone())),
                Some(expected),
                "{x} {y}"
            );
        }
    }
}
