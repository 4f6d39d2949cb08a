//! COPY's text format, as a backfill reads it and as a snapshot file keeps it: a line split into
//! the same values pgoutput would send for the row (so [`super::write_row`] builds the same
//! document), a large field's JSON written in pieces, and the references a snapshot line holds in
//! place of large values stored apart.
//!
//! Invariants: parsing never panics on any input (a malformed line is an error naming what is
//! wrong); a reference mark (`\L` and a hash) can never be read from a value PostgreSQL wrote,
//! since COPY never writes a backslash before `L`.

use crate::document::large_value::ValueRef;
use crate::document::value::Kind;
use crate::error::{Error, Result};
use crate::source::pgoutput::Value;

use super::{Relation, StoredRow};

/// Splits one line of COPY's text format into values: fields separated by tabs, `\N` for NULL,
/// backslash escapes (`\t`, `\n`, `\\`, octal `\123`, hex `\x4F`, …).
pub fn parse_copy_line(line: &[u8], values: &mut Vec<Value>) -> std::result::Result<(), String> {
    values.clear();
    for field in line.split(|&b| b == b'\t') {
        if field == b"\\N" {
            values.push(Value::Null);
            continue;
        }
        if !field.contains(&b'\\') {
            values.push(Value::Text(field.to_vec().into()));
            continue;
        }
        let mut out = Vec::with_capacity(field.len());
        unescape_copy(field, 0, &mut out, usize::MAX)?;
        values.push(Value::Text(out.into()));
    }
    Ok(())
}

/// Unescapes COPY's text field `field` from byte `from` onto `out`, stopping between escapes once
/// `out` holds `limit` bytes or more. Returns where it stopped (`field.len()` at the end).
fn unescape_copy(
    field: &[u8],
    from: usize,
    out: &mut Vec<u8>,
    limit: usize,
) -> std::result::Result<usize, String> {
    let mut i = from;
    while i < field.len() && out.len() < limit {
        if field[i] != b'\\' {
            // A run of plain bytes at once.
            let end = memchr::memchr(b'\\', &field[i..]).map_or(field.len(), |n| i + n);
            let end = end.min(i.saturating_add(limit - out.len()));
            out.extend_from_slice(&field[i..end]);
            i = end;
            continue;
        }
        let next = *field
            .get(i + 1)
            .ok_or("a field ends with a lone backslash")?;
        i += 2;
        match next {
            b'b' => out.push(8),
            b'f' => out.push(12),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'v' => out.push(11),
            b'0'..=b'7' => {
                let mut value = u32::from(next - b'0');
                for _ in 0..2 {
                    match field.get(i) {
                        Some(d @ b'0'..=b'7') => {
                            value = value * 8 + u32::from(d - b'0');
                            i += 1;
                        }
                        _ => break,
                    }
                }
                out.push((value & 0xff) as u8);
            }
            b'x' => {
                let mut value = 0u32;
                let mut digits = 0;
                while digits < 2 {
                    match field.get(i).and_then(|d| (*d as char).to_digit(16)) {
                        Some(d) => {
                            value = value * 16 + d;
                            i += 1;
                            digits += 1;
                        }
                        None => break,
                    }
                }
                if digits == 0 {
                    out.push(b'x');
                } else {
                    out.push(value as u8);
                }
            }
            other => out.push(other),
        }
    }
    Ok(i)
}

/// Unescaped text taken from a COPY field at a time when a large value's JSON is written.
const LARGE_PIECE_BYTES: usize = 1024 * 1024;

/// Writes the JSON of the value in COPY's text field `field` (a column of `kind`) to `sink` in
/// pieces: the same bytes as [`crate::document::value::Kind::write_json`] of the unescaped text, and so the
/// same hash as the value streamed from pgoutput, without holding the unescaped value whole (for
/// text and JSON; other kinds are unescaped whole first).
pub(crate) fn write_copy_field_json(
    kind: &Kind,
    field: &[u8],
    sink: &mut dyn FnMut(&[u8]) -> Result<()>,
) -> Result<()> {
    let not_utf8 = || Error::internal("a value is not UTF-8 text");
    let copy_error = |e: String| Error::internal(e);
    let quoted = match kind {
        Kind::Text | Kind::Uuid | Kind::Time | Kind::Interval => true,
        Kind::Json => false,
        other => {
            let mut raw = Vec::with_capacity(field.len());
            unescape_copy(field, 0, &mut raw, usize::MAX).map_err(copy_error)?;
            let text = String::from_utf8(raw).map_err(|_| not_utf8())?;
            return crate::document::large_value::write_json_pieces(other, &text, sink);
        }
    };
    if quoted {
        sink(b"\"")?;
    }
    let mut raw: Vec<u8> = Vec::with_capacity(LARGE_PIECE_BYTES + 8);
    let mut json = String::with_capacity(LARGE_PIECE_BYTES + LARGE_PIECE_BYTES / 8);
    let mut at = 0;
    loop {
        at = unescape_copy(field, at, &mut raw, LARGE_PIECE_BYTES).map_err(copy_error)?;
        let end = at >= field.len();
        // A character split at the piece's end waits for the next piece.
        let valid = match std::str::from_utf8(&raw) {
            Ok(text) => text.len(),
            Err(e) if e.error_len().is_none() && !end => e.valid_up_to(),
            Err(_) => return Err(not_utf8()),
        };
        let text = std::str::from_utf8(&raw[..valid]).map_err(|_| not_utf8())?;
        if quoted {
            json.clear();
            crate::document::value::write_json_string(text, &mut json);
            sink(&json.as_bytes()[1..json.len() - 1])?;
        } else if !text.is_empty() {
            sink(text.as_bytes())?;
        }
        raw.drain(..valid);
        if end {
            break;
        }
    }
    if quoted {
        sink(b"\"")?;
    }
    Ok(())
}

/// How a snapshot file's line holds a large value stored apart ([`crate::document::large_value`]): the field
/// is this mark and the value's hash. COPY never writes a backslash before `L`, so no value read
/// from PostgreSQL is taken for one.
pub(crate) const REF_MARK: &[u8] = b"\\L";

/// The hash in a field that is a large value's reference.
pub(crate) fn ref_field(field: &[u8]) -> Option<&str> {
    let hash = field.strip_prefix(REF_MARK)?;
    (hash.len() == 64 && hash.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
        .then(|| std::str::from_utf8(hash).ok())
        .flatten()
}

/// Whether a snapshot line may hold references (a cheap screen: a line without the mark holds none).
pub(crate) fn may_hold_refs(line: &[u8]) -> bool {
    memchr::memmem::find(line, REF_MARK).is_some()
}

/// Splits a snapshot file's line (COPY text whose large values may be references,
/// [`crate::capture::backfill`]) into `values`; a reference's column reads as unchanged TOAST, and its
/// reference is in `refs`, for [`write_row`] to take from a [`StoredRow`].
pub(crate) fn parse_stored_line(
    line: &[u8],
    rel: &Relation,
    values: &mut Vec<Value>,
    refs: &mut Vec<ValueRef>,
) -> std::result::Result<(), String> {
    parse_copy_line(line, values)?;
    refs.clear();
    if !may_hold_refs(line) {
        return Ok(());
    }
    for (i, field) in line.split(|&b| b == b'\t').enumerate() {
        let Some(hash) = ref_field(field) else {
            continue;
        };
        let column = rel
            .columns
            .get(i)
            .filter(|_| !rel.key.contains(&i))
            .ok_or("a large value's reference is in a key column or past the last")?;
        if let Some(value) = values.get_mut(i) {
            *value = Value::UnchangedToast;
        }
        refs.push(ValueRef {
            at: 0,
            hash: hash.to_string(),
            path: vec![column.name.clone()],
        });
    }
    Ok(())
}

/// The stored row [`write_row`] takes a line's references from (none without references).
pub(crate) fn refs_row(refs: &[ValueRef]) -> Option<StoredRow> {
    (!refs.is_empty()).then(|| StoredRow::refs_only(refs.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_lines_split_and_unescape() {
        let mut values = Vec::new();
        parse_copy_line(b"1\t\\N\ta\\tb\\nc\\\\d\t\\101\\x42\t", &mut values).unwrap();
        assert_eq!(
            values,
            vec![
                Value::Text(bytes::Bytes::from_static(b"1")),
                Value::Null,
                Value::Text(bytes::Bytes::from_static(b"a\tb\nc\\d")),
                Value::Text(bytes::Bytes::from_static(b"AB")),
                Value::Text(bytes::Bytes::new()),
            ]
        );
        assert!(parse_copy_line(b"bad\\", &mut values).is_err());
    }

    /// `text` as COPY's text format writes a field.
    fn copy_escaped(text: &str) -> Vec<u8> {
        let mut out = Vec::new();
        for b in text.bytes() {
            match b {
                b'\\' => out.extend_from_slice(b"\\\\"),
                b'\n' => out.extend_from_slice(b"\\n"),
                b'\t' => out.extend_from_slice(b"\\t"),
                // PostgreSQL writes these bytes as they are; octal escapes are valid COPY too, and
                // make a character's bytes separate escapes, which a piece may split.
                b if b >= 0x80 => out.extend_from_slice(format!("\\{b:03o}").as_bytes()),
                b => out.push(b),
            }
        }
        out
    }

    fn field_json(kind: &Kind, field: &[u8]) -> Result<String> {
        let mut out = Vec::new();
        write_copy_field_json(kind, field, &mut |p| {
            out.extend_from_slice(p);
            Ok(())
        })?;
        Ok(String::from_utf8(out).unwrap())
    }

    #[test]
    fn a_large_copy_field_becomes_the_json_of_its_value_in_pieces() {
        // Escapes and multi-byte characters across piece boundaries.
        let text = "é\"\n\t\\\u{1}x€".repeat(LARGE_PIECE_BYTES / 5);
        let field = copy_escaped(&text);
        for (kind, value) in [
            (Kind::Text, text.clone()),
            (Kind::Json, serde_json::to_string(&text).unwrap()),
            (Kind::Bytea, "\\x00ff".to_string()),
        ] {
            let mut expected = String::new();
            kind.write_json(&value, &mut expected).unwrap();
            let field = if kind == Kind::Text {
                field.clone()
            } else {
                copy_escaped(&value)
            };
            assert_eq!(field_json(&kind, &field).unwrap(), expected, "{kind:?}");
        }
        // A character cut short, a lone backslash: errors, not panics.
        for bad in [&b"ab\\303"[..], b"ab\\", b"\\303\\050"] {
            assert!(field_json(&Kind::Text, bad).is_err(), "{bad:?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn copy_fields_become_json_as_parsed_values_do(field in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64)) {
            let field: Vec<u8> = field.into_iter().filter(|&b| b != b'\t').collect();
            let mut values = Vec::new();
            let parsed = parse_copy_line(&field, &mut values);
            let written = field_json(&Kind::Text, &field);
            if let (Ok(()), [Value::Text(bytes)]) = (&parsed, values.as_slice()) {
                if let Ok(text) = std::str::from_utf8(bytes) {
                    let mut expected = String::new();
                    Kind::Text.write_json(text, &mut expected).unwrap();
                    proptest::prop_assert_eq!(written.unwrap(), expected);
                }
            }
        }

        #[test]
        fn copy_parsing_never_panics(line in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64)) {
            let mut values = Vec::new();
            let _ = parse_copy_line(&line, &mut values);
        }
    }
}
