//! The order rows are kept in: each canonical key (the JSON array `write_row` builds, e.g. `[42]` or
//! `["eu",7]`) maps to a byte string whose byte order is the collection's row order, so the store's
//! rows, the snapshot files a backfill writes and the merge of the two all agree without parsing JSON
//! in a comparison.
//!
//! Invariants:
//! - The map is a function of the key's text and is one-to-one: two keys are the same row exactly when
//!   their sort keys are equal.
//! - Integers sort as numbers (`[2]` before `[10]`), and come before every other value; other values
//!   sort by their JSON text. A table keyed by a sequence therefore arrives from `COPY` already sorted.
//! - Decoding never panics: a text that is not a JSON array is an error.

use crate::error::{Error, Result};

/// Tag of an integer element: eight big-endian bytes follow, sign bit flipped.
const INTEGER: u8 = 1;
/// Tag of any other element: its JSON text follows, then a 0 byte (JSON text never holds a raw 0).
const OTHER: u8 = 2;

/// The sort key of a canonical key.
pub fn sort_key(key: &str) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(key.len() + 8);
    push_sort_key(key, &mut out)?;
    Ok(out)
}

/// Appends the sort key of a canonical key to `out` (the capture's buffer of pending keys); on an
/// error `out` is as it was.
pub fn push_sort_key(key: &str, out: &mut Vec<u8>) -> Result<()> {
    let start = out.len();
    each_element(key, |element| push_element(element, out)).inspect_err(|_| out.truncate(start))
}

/// Appends one key element's sort key, given the element's JSON text.
pub fn push_element(json: &str, out: &mut Vec<u8>) {
    match integer(json) {
        Some(n) => push_integer(n, out),
        None => {
            out.push(OTHER);
            out.extend_from_slice(json.as_bytes());
            out.push(0);
        }
    }
}

/// The canonical key a sort key was made from (the inverse of [`sort_key`]).
pub fn key_of(skey: &[u8]) -> Result<String> {
    let bad = || Error::internal("a stored sort key is damaged");
    let mut out = String::from("[");
    let mut at = 0;
    while at < skey.len() {
        if at > 0 {
            out.push(',');
        }
        match skey[at] {
            INTEGER => {
                let bytes: [u8; 8] = skey
                    .get(at + 1..at + 9)
                    .and_then(|b| b.try_into().ok())
                    .ok_or_else(bad)?;
                out.push_str(&((u64::from_be_bytes(bytes) ^ (1 << 63)) as i64).to_string());
                at += 9;
            }
            OTHER => {
                let rest = &skey[at + 1..];
                let end = rest.iter().position(|&b| b == 0).ok_or_else(bad)?;
                out.push_str(std::str::from_utf8(&rest[..end]).map_err(|_| bad())?);
                at += end + 2;
            }
            _ => return Err(bad()),
        }
    }
    out.push(']');
    Ok(out)
}

/// Appends the sort key element of an integer.
pub fn push_integer(n: i64, out: &mut Vec<u8>) {
    out.push(INTEGER);
    out.extend_from_slice(&((n as u64) ^ (1 << 63)).to_be_bytes());
}

/// `-?[0-9]+` that fits an i64, as JSON writes it (no leading zeros, no `-0`): the texts whose sort
/// key element is an integer's.
pub fn integer(json: &str) -> Option<i64> {
    let digits = json.strip_prefix('-').unwrap_or(json);
    if digits.is_empty()
        || !digits.bytes().all(|b| b.is_ascii_digit())
        || (digits.len() > 1 && digits.starts_with('0'))
        || json == "-0"
    {
        return None;
    }
    json.parse().ok()
}

/// The JSON texts of a key array's elements, as written (nothing is re-serialized, so the sort key
/// of a key read back from the store equals the one computed when it was written).
#[cfg(test)]
fn elements(key: &str) -> Result<Vec<&str>> {
    let mut out = Vec::new();
    each_element(key, |element| out.push(element))?;
    Ok(out)
}

/// Calls `each` with the JSON text of each element of `key`, in order, without collecting them. A
/// text that is not a JSON array is an error, found before or after some calls.
fn each_element<'k>(key: &'k str, mut each: impl FnMut(&'k str)) -> Result<()> {
    let bad = || Error::invalid_input("key", format!("'{key}' is not a row key (a JSON array)"));
    let inner = key
        .trim()
        .strip_prefix('[')
        .and_then(|k| k.strip_suffix(']'))
        .ok_or_else(bad)?;
    let bytes = inner.as_bytes();
    let mut count = 0usize;
    let (mut depth, mut in_string, mut escaped, mut start) = (0usize, false, false, 0);
    for (i, &b) in bytes.iter().enumerate() {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => depth += 1,
            b']' | b'}' => depth = depth.checked_sub(1).ok_or_else(bad)?,
            b',' if depth == 0 => {
                let element = inner[start..i].trim();
                if element.is_empty() {
                    return Err(bad());
                }
                each(element);
                count += 1;
                start = i + 1;
            }
            _ => {}
        }
    }
    if in_string || depth != 0 {
        return Err(bad());
    }
    let last = inner[start..].trim();
    if last.is_empty() {
        // `[]` has no elements; `[1,]` has an empty one.
        return if count == 0 { Ok(()) } else { Err(bad()) };
    }
    each(last);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_sort_as_numbers_and_before_other_values() {
        let mut keys = vec![
            "[10]",
            "[2]",
            "[-3]",
            "[\"a\"]",
            "[100]",
            "[9223372036854775807]",
            "[-9223372036854775808]",
            "[1.5]",
            "[\"b\"]",
        ];
        keys.sort_by_key(|k| sort_key(k).unwrap());
        assert_eq!(
            keys,
            vec![
                "[-9223372036854775808]",
                "[-3]",
                "[2]",
                "[10]",
                "[100]",
                "[9223372036854775807]",
                "[\"a\"]",
                "[\"b\"]",
                "[1.5]",
            ]
        );
    }

    #[test]
    fn composite_keys_compare_element_by_element() {
        let a = sort_key(r#"["eu",7]"#).unwrap();
        let b = sort_key(r#"["eu",10]"#).unwrap();
        let c = sort_key(r#"["eu,x",1]"#).unwrap();
        let d = sort_key(r#"["e",99]"#).unwrap();
        assert!(d < a && a < b && b < c);
        assert_eq!(
            elements(r#"[{"a":[1,2]},"x\",y"]"#).unwrap(),
            vec![r#"{"a":[1,2]}"#, r#""x\",y""#]
        );
    }

    #[test]
    fn a_sort_key_gives_back_its_key() {
        for key in ["[42]", r#"["eu",-7,{"a":[1]}]"#, "[]", "[1.5,null]"] {
            assert_eq!(key_of(&sort_key(key).unwrap()).unwrap(), key);
        }
        assert!(key_of(&[9]).is_err() && key_of(&[1, 0]).is_err() && key_of(&[2, b'x']).is_err());
    }

    #[test]
    fn bad_keys_are_errors() {
        for bad in ["", "1", "[1,]", "[\"open]", "[[1]", "[1]]"] {
            assert!(sort_key(bad).is_err(), "{bad}");
        }
        assert_eq!(sort_key("[]").unwrap(), Vec::<u8>::new());
    }

    proptest::proptest! {
        #[test]
        fn never_panics_and_is_one_to_one(a in "\\PC{0,24}", b in "\\PC{0,24}") {
            let _ = sort_key(&a);
            let (ka, kb) = (format!("[{}]", serde_json::json!(a)), format!("[{}]", serde_json::json!(b)));
            proptest::prop_assert_eq!(sort_key(&ka).unwrap() == sort_key(&kb).unwrap(), a == b);
        }

        #[test]
        fn integer_order_is_numeric_order(a: i64, b: i64) {
            proptest::prop_assert_eq!(
                sort_key(&format!("[{a}]")).unwrap().cmp(&sort_key(&format!("[{b}]")).unwrap()),
                a.cmp(&b)
            );
        }
    }
}
