//! JSON values as metadata filters and queries compare them.

use std::cmp::Ordering;

use serde_json::Number;

/// A JSON number's exact value when it is an integer (JSON integers span i64 and u64,
/// so both fit an i128); `None` for a number with a fraction or an exponent.
pub fn integer_of(n: &Number) -> Option<i128> {
    n.as_i64().map(i128::from).or_else(|| n.as_u64().map(i128::from))
}

/// Orders two JSON numbers by value. Integers compare exactly: as 64-bit floats,
/// 2^53 + 1 would equal 2^53, and a filter on 64-bit ids would match (and a delete by
/// it remove) its neighbours. Anything with a fraction or an exponent compares as a
/// float, so 1 equals 1.0.
pub fn compare_numbers(x: &Number, y: &Number) -> Option<Ordering> {
    match (integer_of(x), integer_of(y)) {
        (Some(x), Some(y)) => Some(x.cmp(&y)),
        _ => x.as_f64()?.partial_cmp(&y.as_f64()?),
    }
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
