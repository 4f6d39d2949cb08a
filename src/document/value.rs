//! PostgreSQL values (their text output) → JSON, with one documented mapping for every built-in type.
//!
//! | PostgreSQL                                   | JSON                                                  |
//! |----------------------------------------------|-------------------------------------------------------|
//! | int2, int4, int8, oid, xid                   | number (exact: int8 stays an i64)                     |
//! | numeric                                      | string keeping every digit; `"NaN"`, `"Infinity"`     |
//! | float4, float8                               | number; `"NaN"`, `"Infinity"`, `"-Infinity"` strings  |
//! | bool                                         | true / false                                          |
//! | text, varchar, bpchar, name, char, citext…   | string                                                |
//! | json, jsonb                                  | the JSON value itself, embedded                       |
//! | bytea                                        | base64 string                                         |
//! | uuid                                         | string                                                |
//! | date                                         | `"2024-01-31"`; BC as ISO 8601 years (`"-0043-03-15"`)|
//! | time                                         | `"13:45:00.5"`                                        |
//! | timetz                                       | `"13:45:00+05:30"`                                    |
//! | timestamp                                    | RFC 3339 in UTC, `"2024-01-31T13:45:00.5Z"`            |
//! | timestamptz                                  | RFC 3339 in UTC, `"2024-01-31T13:45:00.5Z"`            |
//! | date / timestamp(tz) ±infinity               | `"infinity"` / `"-infinity"`                          |
//! | interval                                     | ISO 8601 duration string, `"P1Y2M3DT4H5M6S"`          |
//! | arrays of any of these (nested, NULLs)       | JSON arrays of the element mapping, null for NULL     |
//! | enums                                        | string                                                |
//! | domains                                      | as their base type                                    |
//! | anything else (money, inet, point, ranges…)  | its text output, as a string                          |
//!
//! Text, not binary, transfer: pgoutput's and COPY's text forms are one format, so a row gives the same
//! document whether the backfill or the stream brought it. The session pins what text output depends on
//! ([`SESSION_OPTIONS`]). timestamp (without time zone) is reported in UTC with `Z`, as Estuary Flow does.
//!
//! Invariant: conversion never panics; malformed text is a typed error naming the type.

use base64::Engine as _;
use serde_json::{Number, Value as Json};

/// Startup options that fix every setting text output depends on.
pub const SESSION_OPTIONS: &str =
    "-c DateStyle=ISO -c TimeZone=UTC -c IntervalStyle=iso_8601 -c extra_float_digits=1 -c bytea_output=hex";

/// How a column's values become JSON.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Kind {
    /// bool.
    Bool,
    /// Integer types.
    Integer,
    /// float4, float8.
    Float,
    /// numeric.
    Numeric,
    /// Text-like types, enums, and anything without a mapping of its own.
    Text,
    /// json, jsonb.
    Json,
    /// bytea.
    Bytea,
    /// uuid.
    Uuid,
    /// date.
    Date,
    /// time.
    Time,
    /// timetz.
    TimeTz,
    /// timestamp.
    Timestamp,
    /// timestamptz.
    TimestampTz,
    /// interval.
    Interval,
    /// An array of `element`, whose text form separates elements by `delimiter`.
    Array {
        /// The elements' kind.
        element: Box<Kind>,
        /// `typdelim` (`,` for all but box).
        delimiter: char,
    },
}

/// A built-in type's kind by OID; `None` for types that need a catalog lookup (enums, domains, arrays
/// of those, extension types).
pub fn builtin(oid: u32) -> Option<Kind> {
    let array = |element: Kind| {
        Some(Kind::Array {
            element: Box::new(element),
            delimiter: ',',
        })
    };
    Some(match oid {
        16 => Kind::Bool,
        20 | 21 | 23 | 26 | 28 | 29 | 5069 => Kind::Integer,
        700 | 701 => Kind::Float,
        1700 => Kind::Numeric,
        18 | 19 | 25 | 1042 | 1043 => Kind::Text,
        114 | 3802 => Kind::Json,
        17 => Kind::Bytea,
        2950 => Kind::Uuid,
        1082 => Kind::Date,
        1083 => Kind::Time,
        1266 => Kind::TimeTz,
        1114 => Kind::Timestamp,
        1184 => Kind::TimestampTz,
        1186 => Kind::Interval,
        1000 => return array(Kind::Bool),
        1005 | 1007 | 1016 | 1028 | 1011 | 1012 => return array(Kind::Integer),
        1021 | 1022 => return array(Kind::Float),
        1231 => return array(Kind::Numeric),
        1002 | 1003 | 1009 | 1014 | 1015 => return array(Kind::Text),
        199 | 3807 => return array(Kind::Json),
        1001 => return array(Kind::Bytea),
        2951 => return array(Kind::Uuid),
        1182 => return array(Kind::Date),
        1183 => return array(Kind::Time),
        1270 => return array(Kind::TimeTz),
        1115 => return array(Kind::Timestamp),
        1185 => return array(Kind::TimestampTz),
        1187 => return array(Kind::Interval),
        // Other built-in types (money, inet, cidr, macaddr, geometric, ranges, tsvector, xml, bit…):
        // their text output is the clearest JSON form.
        oid if oid < 16384 => Kind::Text,
        _ => return None,
    })
}

/// Why a value's text could not be converted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} value {text:?}: {problem}")]
pub struct ValueError {
    kind: &'static str,
    text: String,
    problem: &'static str,
}

fn error(kind: &'static str, text: &str, problem: &'static str) -> ValueError {
    let text: String = text.chars().take(64).collect();
    ValueError {
        kind,
        text,
        problem,
    }
}

impl Kind {
    fn name(&self) -> &'static str {
        match self {
            Kind::Bool => "bool",
            Kind::Integer => "integer",
            Kind::Float => "float",
            Kind::Numeric => "numeric",
            Kind::Text => "text",
            Kind::Json => "json",
            Kind::Bytea => "bytea",
            Kind::Uuid => "uuid",
            Kind::Date => "date",
            Kind::Time => "time",
            Kind::TimeTz => "timetz",
            Kind::Timestamp => "timestamp",
            Kind::TimestampTz => "timestamptz",
            Kind::Interval => "interval",
            Kind::Array { .. } => "array",
        }
    }

    /// Converts one value's text output to JSON.
    pub fn to_json(&self, text: &str) -> Result<Json, ValueError> {
        let name = self.name();
        Ok(match self {
            Kind::Bool => match text {
                "t" | "true" => Json::Bool(true),
                "f" | "false" => Json::Bool(false),
                _ => return Err(error(name, text, "is not t or f")),
            },
            Kind::Integer => match text.parse::<i64>() {
                Ok(n) => Json::Number(n.into()),
                // xid8 and oid can exceed i64; keep them exact.
                Err(_) => match text.parse::<u64>() {
                    Ok(n) => Json::Number(n.into()),
                    Err(_) => return Err(error(name, text, "is not an integer")),
                },
            },
            Kind::Float => match text {
                "NaN" | "Infinity" | "-Infinity" => Json::String(text.to_string()),
                _ => {
                    let f: f64 = text
                        .parse()
                        .map_err(|_| error(name, text, "is not a number"))?;
                    Number::from_f64(f)
                        .map(Json::Number)
                        .ok_or_else(|| error(name, text, "is not finite"))?
                }
            },
            Kind::Numeric => {
                let ok = matches!(text, "NaN" | "Infinity" | "-Infinity") || is_numeric_text(text);
                if !ok {
                    return Err(error(name, text, "is not a numeric"));
                }
                Json::String(text.to_string())
            }
            Kind::Text | Kind::Uuid | Kind::Time | Kind::Interval => Json::String(text.to_string()),
            Kind::Json => {
                serde_json::from_str(text).map_err(|_| error(name, text, "is not valid JSON"))?
            }
            Kind::Bytea => {
                let hex = text
                    .strip_prefix("\\x")
                    .ok_or_else(|| error(name, text, "is not in hex format (\\x…)"))?;
                Json::String(base64::engine::general_purpose::STANDARD.encode(
                    decode_hex(hex).ok_or_else(|| error(name, text, "has invalid hex digits"))?,
                ))
            }
            Kind::Date => {
                Json::String(date(text).ok_or_else(|| error(name, text, "is not an ISO date"))?)
            }
            Kind::TimeTz => Json::String(
                time_with_offset(text)
                    .ok_or_else(|| error(name, text, "is not an ISO time with offset"))?,
            ),
            Kind::Timestamp | Kind::TimestampTz => Json::String(
                timestamp(text).ok_or_else(|| error(name, text, "is not an ISO timestamp"))?,
            ),
            Kind::Array { element, delimiter } => {
                let mut parser = ArrayParser {
                    chars: text.as_bytes(),
                    at: 0,
                    delimiter: *delimiter as u8,
                };
                parser.skip_dimensions();
                let value = parser
                    .array(element)
                    .ok_or_else(|| error(name, text, "is not a valid array literal"))?;
                if parser.at != parser.chars.len() {
                    return Err(error(name, text, "has text after the array"));
                }
                value
            }
        })
    }
}

impl Kind {
    /// Appends the value's JSON to `out`: the same JSON as [`Kind::to_json`], written without building
    /// a `serde_json::Value` for the common kinds (the capture's hot path).
    pub fn write_json(&self, text: &str, out: &mut String) -> Result<(), ValueError> {
        match self {
            // The text PostgreSQL prints for every int2, int4, int8 and oid: JSON as it is, known so
            // without parsing it (up to 18 digits always fits an i64).
            Kind::Integer if is_short_json_integer(text) => out.push_str(text),
            Kind::Integer => {
                if text.parse::<i64>().is_err() && text.parse::<u64>().is_err() {
                    return Err(error("integer", text, "is not an integer"));
                }
                // Rust accepts "+5"; JSON does not. PostgreSQL never prints it, but the check is cheap.
                if is_json_number(text) {
                    out.push_str(text);
                } else {
                    out.push_str(&self.to_json(text)?.to_string());
                }
            }
            Kind::Float if !matches!(text, "NaN" | "Infinity" | "-Infinity") => {
                match text.parse::<f64>() {
                    // PostgreSQL's shortest round-trip output ("1.5", "1e+30", "-0") is valid JSON as it is.
                    Ok(f) if f.is_finite() && is_json_number(text) => out.push_str(text),
                    _ => out.push_str(&self.to_json(text)?.to_string()),
                }
            }
            Kind::Bool => out.push_str(match text {
                "t" | "true" => "true",
                "f" | "false" => "false",
                _ => return Err(error("bool", text, "is not t or f")),
            }),
            Kind::Text | Kind::Uuid | Kind::Time | Kind::Interval => write_json_string(text, out),
            // json and jsonb text output is JSON already (json keeps its validated input as is).
            Kind::Json => out.push_str(text),
            // The common scalar kinds whose JSON is a string made from the text: written straight
            // into `out`, without the String and the `Json` value that `to_json` builds. Whatever the
            // direct writer does not take (and any output JSON would escape) goes the general way.
            Kind::Numeric
            | Kind::Bytea
            | Kind::Date
            | Kind::TimeTz
            | Kind::Timestamp
            | Kind::TimestampTz
                if self.write_json_string_directly(text, out) => {}
            _ => match self.to_json(text)? {
                // A string with nothing to escape (numeric, bytea's base64, dates, timestamps) is
                // written as serde_json writes it, without printing it into a buffer of its own first.
                Json::String(s) if !s.bytes().any(is_escaped) => {
                    out.push('"');
                    out.push_str(&s);
                    out.push('"');
                }
                json => out.push_str(&json.to_string()),
            },
        }
        Ok(())
    }
}

impl Kind {
    /// Appends the JSON string of a numeric, bytea, date, timetz or timestamp value to `out` and
    /// says so; says no, with `out` as it was, when the text is not one it writes directly (the
    /// caller then takes the general way, which also reports malformed text).
    fn write_json_string_directly(&self, text: &str, out: &mut String) -> bool {
        let start = out.len();
        out.push('"');
        let written = match self {
            Kind::Numeric => {
                let ok = is_numeric_text(text);
                if ok {
                    out.push_str(text);
                }
                ok
            }
            Kind::Bytea => match text.strip_prefix("\\x").and_then(decode_hex) {
                Some(bytes) => {
                    use base64::Engine;
                    base64::engine::general_purpose::STANDARD.encode_string(bytes, out);
                    true
                }
                None => false,
            },
            Kind::Date => write_date(text, out).is_some(),
            Kind::TimeTz => write_time_with_offset(text, out).is_some(),
            Kind::Timestamp | Kind::TimestampTz => write_timestamp(text, out).is_some(),
            _ => false,
        };
        // Quotes, backslashes and control characters would need escaping: PostgreSQL never prints
        // them in these types, and the general way handles them if it ever did.
        if !written || out.as_bytes()[start + 1..].iter().any(|&b| is_escaped(b)) {
            out.truncate(start);
            return false;
        }
        out.push('"');
        true
    }
}

/// Whether `text` is a finite numeric's output: digits, signs, a point and an exponent, and nothing
/// else (what PostgreSQL prints for numeric; NaN and ±Infinity aside).
fn is_numeric_text(text: &str) -> bool {
    !text.is_empty()
        && text
            .bytes()
            .all(|c| c.is_ascii_digit() || matches!(c, b'-' | b'.' | b'e' | b'E' | b'+'))
}

/// Whether JSON escapes `byte` in a string: a quote, a backslash or a control character.
fn is_escaped(byte: u8) -> bool {
    byte < 0x20 || byte == b'"' || byte == b'\\'
}

/// Whether `text` follows JSON's number grammar: `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`.
/// `-?(0|[1-9][0-9]{0,17})`: an integer in JSON's form that fits an i64 whatever its digits.
fn is_short_json_integer(text: &str) -> bool {
    let digits = text.strip_prefix('-').unwrap_or(text).as_bytes();
    (1..=18).contains(&digits.len())
        && digits.iter().all(u8::is_ascii_digit)
        && (digits.len() == 1 || digits[0] != b'0')
}

fn is_json_number(text: &str) -> bool {
    let bytes = text.as_bytes();
    let mut i = usize::from(bytes.first() == Some(&b'-'));
    let digits = |i: &mut usize| {
        let start = *i;
        while bytes.get(*i).is_some_and(u8::is_ascii_digit) {
            *i += 1;
        }
        *i - start
    };
    let whole = digits(&mut i);
    if whole == 0 || (whole > 1 && bytes[i - whole] == b'0') {
        return false;
    }
    if bytes.get(i) == Some(&b'.') {
        i += 1;
        if digits(&mut i) == 0 {
            return false;
        }
    }
    if matches!(bytes.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(bytes.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        if digits(&mut i) == 0 {
            return false;
        }
    }
    i == bytes.len()
}

/// Appends `text` as a JSON string literal.
///
/// Text is scanned eight bytes at a time for the bytes JSON escapes (`"`, `\\`, below 0x20) and
/// copied in runs: most text has none, and a 10 KB text column was scanned a byte at a time for every
/// change (docs/benchmarks.md, "Capture CPU (issue 21)"). The output is byte-identical to the
/// byte-at-a-time loop it replaced, which a test keeps as the reference.
pub fn write_json_string(text: &str, out: &mut String) {
    out.reserve(text.len() + 2);
    out.push('"');
    let bytes = text.as_bytes();
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        // Skip whole words with nothing to escape.
        while i + 8 <= bytes.len() {
            let word = u64::from_le_bytes(bytes[i..i + 8].try_into().expect("eight bytes"));
            if needs_escape(word) {
                break;
            }
            i += 8;
        }
        if i >= bytes.len() {
            break;
        }
        let byte = bytes[i];
        let escaped = match byte {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x00..=0x1f => "",
            _ => {
                i += 1;
                continue;
            }
        };
        // `i` is at an ASCII byte, so both slices end on character boundaries.
        out.push_str(&text[start..i]);
        if escaped.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.push_str("\\u00");
            out.push(HEX[usize::from(byte >> 4)] as char);
            out.push(HEX[usize::from(byte & 0xf)] as char);
        } else {
            out.push_str(escaped);
        }
        i += 1;
        start = i;
    }
    out.push_str(&text[start..]);
    out.push('"');
}

/// Whether any of the eight bytes in `word` is one JSON escapes: a quote, a backslash or a control
/// character below 0x20. Exact (no false positives or negatives) for the question "any".
fn needs_escape(word: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // A byte below n (n <= 128) sets its high bit in (x - n) & !x; the classic "has less" test.
    let below_space = word.wrapping_sub(ONES * 0x20) & !word;
    let zero_byte = |x: u64| x.wrapping_sub(ONES) & !x;
    let quote = zero_byte(word ^ (ONES * u64::from(b'"')));
    let backslash = zero_byte(word ^ (ONES * u64::from(b'\\')));
    (below_space | quote | backslash) & HIGH != 0
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    let digit = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    hex.as_bytes()
        .chunks(2)
        .map(|pair| Some(digit(pair[0])? << 4 | digit(pair[1])?))
        .collect()
}

/// `YYYY-MM-DD[ BC]` → ISO 8601 (astronomical year numbering for BC), or ±infinity as is.
fn date(text: &str) -> Option<String> {
    let mut out = String::new();
    write_date(text, &mut out)?;
    Some(out)
}

/// Appends [`date`]'s result to `out`; on `None`, `out` may hold part of it.
fn write_date(text: &str, out: &mut String) -> Option<()> {
    if text == "infinity" || text == "-infinity" {
        out.push_str(text);
        return Some(());
    }
    let (body, bc) = match text.strip_suffix(" BC") {
        Some(body) => (body, true),
        None => (text, false),
    };
    write_date_body(body, bc, out)
}

/// `YYYY-MM-DD`, before Christ when `bc`.
fn write_date_body(body: &str, bc: bool, out: &mut String) -> Option<()> {
    let (year, rest) = body.split_once('-')?;
    if year.is_empty() || !year.bytes().all(|b| b.is_ascii_digit()) || rest.len() != 5 {
        return None;
    }
    if !bc {
        out.push_str(body);
        return Some(());
    }
    let year: i64 = year.parse().ok()?;
    use std::fmt::Write;
    write!(out, "-{:04}-{rest}", year - 1).ok()
}

/// `HH:MM:SS[.f]±HH[:MM[:SS]]` → `HH:MM:SS[.f]±HH:MM` (seconds in an offset are kept as `:SS`).
fn time_with_offset(text: &str) -> Option<String> {
    let mut out = String::new();
    write_time_with_offset(text, &mut out)?;
    Some(out)
}

/// Appends [`time_with_offset`]'s result to `out`; on `None`, `out` may hold part of it.
fn write_time_with_offset(text: &str, out: &mut String) -> Option<()> {
    let split = text.rfind(['+', '-'])?;
    let (time, offset) = text.split_at(split);
    out.push_str(time);
    write_offset(offset, out)
}

/// Appends an offset (`±HH[:MM[:SS]]`) as RFC 3339 writes it: `Z` for UTC, else `±HH:MM[:SS]`.
fn write_offset(offset: &str, out: &mut String) -> Option<()> {
    let sign = offset.get(..1)?;
    let rest = &offset[1..];
    let parts = rest.split(':');
    let mut count = 0;
    let mut zero = true;
    for part in parts {
        count += 1;
        if count > 3 || part.len() != 2 || !part.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        zero &= part == "00";
    }
    if sign == "+" && zero {
        out.push('Z');
        return Some(());
    }
    if sign != "+" && sign != "-" {
        return None;
    }
    out.push_str(sign);
    out.push_str(rest);
    if count == 1 {
        out.push_str(":00");
    }
    Some(())
}

/// `YYYY-MM-DD HH:MM:SS[.f][±HH[:MM]][ BC]` → RFC 3339 (`T`, offset, `Z` for UTC and for values
/// without a zone), or ±infinity as is.
fn timestamp(text: &str) -> Option<String> {
    let mut out = String::new();
    write_timestamp(text, &mut out)?;
    Some(out)
}

/// Appends [`timestamp`]'s result to `out`; on `None`, `out` may hold part of it.
fn write_timestamp(text: &str, out: &mut String) -> Option<()> {
    if text == "infinity" || text == "-infinity" {
        out.push_str(text);
        return Some(());
    }
    let (body, bc) = match text.strip_suffix(" BC") {
        Some(body) => (body, true),
        None => (text, false),
    };
    let (day, time) = body.split_once(' ')?;
    // As the date alone would be: ±infinity is taken as it is, but not before Christ.
    if !bc && (day == "infinity" || day == "-infinity") {
        out.push_str(day);
    } else {
        write_date_body(day, bc, out)?;
    }
    let (clock, offset) = match time.find(['+', '-']) {
        Some(at) => (&time[..at], Some(&time[at..])),
        None => (time, None),
    };
    if clock.len() < 8 {
        return None;
    }
    out.push('T');
    out.push_str(clock);
    match offset {
        Some(offset) => write_offset(offset, out),
        None => {
            out.push('Z');
            Some(())
        }
    }
}

struct ArrayParser<'a> {
    chars: &'a [u8],
    at: usize,
    delimiter: u8,
}

impl ArrayParser<'_> {
    fn peek(&self) -> Option<u8> {
        self.chars.get(self.at).copied()
    }

    fn skip_space(&mut self) {
        while self.peek().is_some_and(|c| c.is_ascii_whitespace()) {
            self.at += 1;
        }
    }

    /// Arrays with non-default bounds start with `[lo:hi]…=`; the bounds do not change the JSON.
    fn skip_dimensions(&mut self) {
        if self.peek() == Some(b'[') {
            if let Some(eq) = self.chars.iter().position(|&c| c == b'=') {
                self.at = eq + 1;
            }
        }
    }

    fn array(&mut self, element: &Kind) -> Option<Json> {
        self.skip_space();
        if self.peek()? != b'{' {
            return None;
        }
        self.at += 1;
        let mut items = Vec::new();
        self.skip_space();
        if self.peek() == Some(b'}') {
            self.at += 1;
            return Some(Json::Array(items));
        }
        loop {
            self.skip_space();
            let item = match self.peek()? {
                b'{' => self.array(element)?,
                b'"' => {
                    self.at += 1;
                    let mut raw = Vec::new();
                    loop {
                        match self.peek()? {
                            b'\\' => {
                                raw.push(*self.chars.get(self.at + 1)?);
                                self.at += 2;
                            }
                            b'"' => {
                                self.at += 1;
                                break;
                            }
                            c => {
                                raw.push(c);
                                self.at += 1;
                            }
                        }
                    }
                    element.to_json(std::str::from_utf8(&raw).ok()?).ok()?
                }
                _ => {
                    let mut raw = Vec::new();
                    while let Some(c) = self.peek() {
                        if c == self.delimiter || c == b'}' {
                            break;
                        }
                        if c == b'\\' {
                            raw.push(*self.chars.get(self.at + 1)?);
                            self.at += 2;
                        } else {
                            raw.push(c);
                            self.at += 1;
                        }
                    }
                    let text = std::str::from_utf8(&raw).ok()?.trim_end();
                    if text.eq_ignore_ascii_case("NULL") {
                        Json::Null
                    } else {
                        element.to_json(text).ok()?
                    }
                }
            };
            items.push(item);
            self.skip_space();
            match self.peek()? {
                b'}' => {
                    self.at += 1;
                    return Some(Json::Array(items));
                }
                c if c == self.delimiter => self.at += 1,
                _ => return None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn convert(oid: u32, text: &str) -> Json {
        builtin(oid)
            .unwrap()
            .to_json(text)
            .unwrap_or_else(|e| panic!("{oid} {text}: {e}"))
    }

    #[test]
    fn scalars_map_as_documented() {
        assert_eq!(convert(16, "t"), json!(true));
        assert_eq!(convert(20, "-9223372036854775808"), json!(i64::MIN));
        assert_eq!(convert(26, "4294967295"), json!(4294967295u64));
        assert_eq!(
            convert(1700, "12345678901234567890.000000000000000001"),
            json!("12345678901234567890.000000000000000001")
        );
        assert_eq!(convert(1700, "NaN"), json!("NaN"));
        assert_eq!(convert(701, "1.5"), json!(1.5));
        assert_eq!(convert(701, "-Infinity"), json!("-Infinity"));
        assert_eq!(convert(700, "NaN"), json!("NaN"));
        assert_eq!(
            convert(3802, r#"{"a": [1, 2.5, null]}"#),
            json!({"a": [1, 2.5, null]})
        );
        assert_eq!(convert(17, "\\x00ff10"), json!("AP8Q"));
        assert_eq!(
            convert(2950, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
            json!("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")
        );
        assert_eq!(convert(1082, "2024-01-31"), json!("2024-01-31"));
        assert_eq!(convert(1082, "0044-03-15 BC"), json!("-0043-03-15"));
        assert_eq!(convert(1082, "infinity"), json!("infinity"));
        assert_eq!(convert(1083, "13:45:00.5"), json!("13:45:00.5"));
        assert_eq!(convert(1266, "13:45:00+05:30"), json!("13:45:00+05:30"));
        assert_eq!(convert(1266, "13:45:00-08"), json!("13:45:00-08:00"));
        assert_eq!(
            convert(1114, "2024-01-31 13:45:00.5"),
            json!("2024-01-31T13:45:00.5Z")
        );
        assert_eq!(
            convert(1184, "2024-01-31 13:45:00+00"),
            json!("2024-01-31T13:45:00Z")
        );
        assert_eq!(convert(1184, "-infinity"), json!("-infinity"));
        assert_eq!(convert(1186, "P1Y2M3DT4H5M6.5S"), json!("P1Y2M3DT4H5M6.5S"));
        assert_eq!(convert(790, "$1.00"), json!("$1.00"));
    }

    #[test]
    fn arrays_nest_and_keep_nulls_and_quotes() {
        assert_eq!(convert(1007, "{1,NULL,3}"), json!([1, null, 3]));
        assert_eq!(convert(1007, "{{1,2},{3,4}}"), json!([[1, 2], [3, 4]]));
        assert_eq!(convert(1007, "[0:1]={5,6}"), json!([5, 6]));
        assert_eq!(
            convert(1009, r#"{"a b","c\"d",NULL,"NULL",plain}"#),
            json!(["a b", "c\"d", null, "NULL", "plain"])
        );
        assert_eq!(convert(1009, "{}"), json!([]));
        assert_eq!(
            convert(3807, r#"{"{\"k\": 1}",null}"#),
            json!([{"k": 1}, null])
        );
        assert_eq!(convert(1231, "{1.50,NaN}"), json!(["1.50", "NaN"]));
    }

    #[test]
    fn malformed_text_is_an_error_naming_the_type() {
        for (oid, text) in [
            (16, "yes"),
            (23, "1.5"),
            (114, "{"),
            (17, "00"),
            (17, "\\xZZ"),
            (1007, "{1,2"),
            (1007, "{1}x"),
            (1082, "yesterday"),
            (1700, "ten"),
        ] {
            let err = builtin(oid).unwrap().to_json(text).unwrap_err();
            assert!(!err.to_string().is_empty());
        }
    }

    #[test]
    fn writing_json_directly_gives_the_same_json() {
        let cases: &[(u32, &str)] = &[
            (16, "f"),
            (20, "-42"),
            (26, "4294967295"),
            (701, "1e+30"),
            (701, "-0"),
            (701, "NaN"),
            (700, "1.5"),
            (1700, "1.50"),
            (25, "tab\there \"q\" \\ \u{1} é"),
            (2950, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
            (3802, r#"{"a": [1, {"b": null}]}"#),
            (17, "\\x00ff"),
            (1114, "2024-01-31 13:45:00"),
            (1007, "{1,NULL}"),
        ];
        for (oid, text) in cases {
            let kind = builtin(*oid).unwrap();
            let mut out = String::new();
            kind.write_json(text, &mut out).unwrap();
            let written: Json = serde_json::from_str(&out)
                .unwrap_or_else(|e| panic!("{oid} {text:?} wrote {out}: {e}"));
            assert_eq!(written, kind.to_json(text).unwrap(), "{oid} {text:?}");
        }
    }

    #[test]
    fn only_json_numbers_are_copied_as_they_are() {
        for ok in [
            "0",
            "-0",
            "1.5",
            "1e+30",
            "1E-05",
            "-12.250",
            "9223372036854775807",
        ] {
            assert!(is_json_number(ok), "{ok}");
        }
        for bad in [
            "+5", "1.", ".5", "-.5", "01", "1e", "1e+", "", "-", "inf", "0x10",
        ] {
            assert!(!is_json_number(bad), "{bad}");
        }
        let mut out = String::new();
        builtin(701).unwrap().write_json("+1.", &mut out).unwrap();
        assert_eq!(out, "1.0");
    }

    /// The date and time conversions as they were before they wrote into a buffer: the reference
    /// their output must match.
    mod old {
        pub fn date(text: &str) -> Option<String> {
            if text == "infinity" || text == "-infinity" {
                return Some(text.to_string());
            }
            let (body, bc) = match text.strip_suffix(" BC") {
                Some(body) => (body, true),
                None => (text, false),
            };
            let (year, rest) = body.split_once('-')?;
            if year.is_empty() || !year.bytes().all(|b| b.is_ascii_digit()) || rest.len() != 5 {
                return None;
            }
            if !bc {
                return Some(body.to_string());
            }
            let year: i64 = year.parse().ok()?;
            Some(format!("-{:04}-{rest}", year - 1))
        }

        pub fn time_with_offset(text: &str) -> Option<String> {
            let split = text.rfind(['+', '-'])?;
            let (time, offset) = text.split_at(split);
            Some(format!("{time}{}", offset_of(offset)?))
        }

        fn offset_of(offset: &str) -> Option<String> {
            let sign = offset.get(..1)?;
            let parts: Vec<&str> = offset[1..].split(':').collect();
            if parts.is_empty()
                || parts.len() > 3
                || parts
                    .iter()
                    .any(|p| p.len() != 2 || !p.bytes().all(|b| b.is_ascii_digit()))
            {
                return None;
            }
            if sign == "+" && parts.iter().all(|p| *p == "00") {
                return Some("Z".to_string());
            }
            Some(match parts.len() {
                1 => format!("{sign}{}:00", parts[0]),
                _ => format!("{sign}{}", parts.join(":")),
            })
        }

        pub fn timestamp(text: &str) -> Option<String> {
            if text == "infinity" || text == "-infinity" {
                return Some(text.to_string());
            }
            let (body, bc) = match text.strip_suffix(" BC") {
                Some(body) => (body, true),
                None => (text, false),
            };
            let (day, time) = body.split_once(' ')?;
            let day = date(&if bc {
                format!("{day} BC")
            } else {
                day.to_string()
            })?;
            let (clock, offset) = match time.find(['+', '-']) {
                Some(at) => (&time[..at], offset_of(&time[at..])?),
                None => (time, "Z".to_string()),
            };
            if clock.len() < 8 {
                return None;
            }
            Some(format!("{day}T{clock}{offset}"))
        }
    }

    /// The byte-at-a-time escaping [`write_json_string`] replaced: the reference its output must match.
    fn byte_loop(text: &str) -> String {
        let mut out = String::from('"');
        let mut start = 0;
        for (i, byte) in text.bytes().enumerate() {
            let escaped = match byte {
                b'"' => "\\\"",
                b'\\' => "\\\\",
                b'\n' => "\\n",
                b'\r' => "\\r",
                b'\t' => "\\t",
                0x00..=0x1f => "",
                _ => continue,
            };
            out.push_str(&text[start..i]);
            if escaped.is_empty() {
                out.push_str(&format!("\\u{byte:04x}"));
            } else {
                out.push_str(escaped);
            }
            start = i + 1;
        }
        out.push_str(&text[start..]);
        out.push('"');
        out
    }

    #[test]
    fn every_byte_a_word_can_hold_is_escaped_where_the_byte_loop_escaped_it() {
        // Each byte value at each of the eight positions of a word, and across a word's end.
        for byte in 0u8..=0x7f {
            for at in 0..17 {
                let mut text = "x".repeat(17);
                text.replace_range(at..at + 1, &char::from(byte).to_string());
                let mut fast = String::new();
                write_json_string(&text, &mut fast);
                assert_eq!(fast, byte_loop(&text), "byte {byte:#04x} at {at}");
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn direct_writing_agrees_with_the_mapping_for_numbers(text in "[-+]?[0-9]{0,4}(\\.[0-9]{0,3})?([eE][-+]?[0-9]{0,3})?") {
            for oid in [20, 701] {
                let kind = builtin(oid).unwrap();
                let mut out = String::new();
                if let (Ok(mapped), Ok(())) = (kind.to_json(&text), kind.write_json(&text, &mut out)) {
                    // 0 and 0.0 are one JSON number; compare numbers by value.
                    let written = serde_json::from_str::<Json>(&out).unwrap();
                    proptest::prop_assert_eq!(written.as_f64(), mapped.as_f64(), "{} vs {}", written, mapped);
                }
            }
        }

        #[test]
        fn integers_are_written_as_before_their_short_form_was_copied(text in "[-+]?[0-9]{0,22}") {
            let kind = builtin(20).unwrap();
            let mut out = String::new();
            let written = kind.write_json(&text, &mut out);
            // What write_json wrote before it copied short integers without parsing them.
            let before = kind
                .to_json(&text)
                .map(|json| if is_json_number(&text) { text.clone() } else { json.to_string() });
            proptest::prop_assert_eq!(written.is_ok(), before.is_ok());
            if let Ok(before) = before {
                proptest::prop_assert_eq!(out, before);
            }
        }

        #[test]
        fn written_text_is_always_the_json_string(text in "\\PC{0,40}") {
            let mut out = String::new();
            write_json_string(&text, &mut out);
            proptest::prop_assert_eq!(serde_json::from_str::<Json>(&out).unwrap(), Json::String(text));
        }

        #[test]
        fn word_at_a_time_escaping_writes_what_the_byte_loop_wrote(
            text in "([\\x00-\\x1f\"\\\\a-z\u{7f}\u{80}-\u{7ff}\u{10000}\u{1f600}]|[a-z]{0,17}){0,40}"
        ) {
            let mut fast = String::new();
            write_json_string(&text, &mut fast);
            proptest::prop_assert_eq!(&fast, &byte_loop(&text));
            proptest::prop_assert_eq!(serde_json::from_str::<Json>(&fast).unwrap(), Json::String(text));
        }

        #[test]
        fn dates_times_and_timestamps_are_written_as_before(
            text in "(-?infinity|[0-9]{0,5}-[0-9]{2}-[0-9]{2})( [0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{1,6})?([+-][0-9]{2}(:[0-9]{2}){0,3})?)?( BC)?|[0-9:. +-]{0,20}"
        ) {
            proptest::prop_assert_eq!(date(&text), old::date(&text));
            proptest::prop_assert_eq!(timestamp(&text), old::timestamp(&text));
            proptest::prop_assert_eq!(time_with_offset(&text), old::time_with_offset(&text));
            for oid in [1082u32, 1083, 1266, 1114, 1184, 1700, 17] {
                let kind = builtin(oid).unwrap();
                let mut out = String::from("[");
                let direct = kind.write_json(&text, &mut out);
                proptest::prop_assert_eq!(direct.is_ok(), kind.to_json(&text).is_ok());
                if let Ok(json) = kind.to_json(&text) {
                    proptest::prop_assert_eq!(out, format!("[{json}"));
                }
            }
        }

        #[test]
        fn no_text_makes_any_kind_panic(text in "\\PC{0,40}") {
            for oid in [16, 20, 700, 1700, 25, 114, 17, 2950, 1082, 1083, 1266, 1114, 1184, 1186, 1007, 1009, 1015] {
                let _ = builtin(oid).unwrap().to_json(&text);
            }
        }
    }
}
