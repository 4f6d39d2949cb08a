//! Large values, stored once however many documents carry them.
//!
//! A column value whose text is at least [`LARGE_VALUE_BYTES`] long is not written into the documents
//! that carry it. The store keeps its JSON once, under the SHA-256 of that JSON, and each document holds
//! `null` in its place plus a [`ValueRef`] saying where the value goes. An update that leaves a TOASTed
//! value unchanged then costs a reference, not another copy, and the capture never has to read the
//! value back to fill it in.
//!
//! Invariants:
//! - A document with its references spliced in ([`splice`]) is byte for byte the document that would
//!   have been stored whole: readers never see a reference.
//! - A value's JSON is produced in pieces ([`write_json_pieces`]), so storing a value never needs a
//!   second copy of it in memory.

use serde::{Deserialize, Serialize};

use crate::document::source_meta::SourceCut;
use crate::document::value::Kind;
use crate::error::{Error, Result};

/// Values whose text is at least this long are stored apart from their documents.
pub const LARGE_VALUE_BYTES: usize = 64 * 1024;

/// How much text is turned into JSON at a time when a large value is written.
const PIECE_BYTES: usize = 1024 * 1024;

/// Where a large value's JSON goes, a piece at a time.
pub type Sink<'p> = dyn FnMut(&[u8]) -> Result<()> + 'p;

/// Where a large value belongs in a stored document: at byte `at` of the stored text, whose four bytes
/// there are `null`; `path` names the field (`["big"]`, or `["_meta","before","big"]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValueRef {
    /// Byte offset of the `null` standing in for the value.
    pub at: usize,
    /// The value's SHA-256 (of its JSON), lowercase hex.
    pub hash: String,
    /// The field the value belongs to, from the top of the document.
    pub path: Vec<String>,
}

/// A document as stored: its JSON text, with `null` where each of `refs` goes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Document {
    /// The JSON text (whole when `refs` is empty).
    pub text: String,
    /// The large values cut out of it, in order of `at`.
    pub refs: Vec<ValueRef>,
    /// Where `_meta.source` was left out of the text, for the store to keep apart; `None`: the text
    /// has it ([`crate::document::source_meta`]).
    pub source: Option<SourceCut>,
}

impl From<String> for Document {
    fn from(text: String) -> Document {
        Document {
            text,
            refs: Vec::new(),
            source: None,
        }
    }
}

impl From<&str> for Document {
    fn from(text: &str) -> Document {
        Document::from(text.to_string())
    }
}

impl Document {
    /// The references as stored next to the text (`None` without any).
    pub fn refs_text(&self) -> Option<String> {
        if self.refs.is_empty() {
            None
        } else {
            serde_json::to_string(&self.refs).ok()
        }
    }

    /// Appends `text` whose references are relative to its start, under `path` (prefixed to theirs).
    pub fn push_part(&mut self, text: &str, refs: &[ValueRef], path: &[String]) {
        let offset = self.text.len();
        self.text.push_str(text);
        self.refs.extend(refs.iter().map(|r| ValueRef {
            at: r.at + offset,
            hash: r.hash.clone(),
            path: path.iter().chain(&r.path).cloned().collect(),
        }));
    }
}

/// Reads a stored references column.
pub fn parse_refs(text: &str) -> Result<Vec<ValueRef>> {
    serde_json::from_str(text).map_err(|e| {
        Error::internal(format!(
            "store: a document's large-value references are unreadable: {e}"
        ))
    })
}

/// The document's text with every reference replaced by its value, read by `value` (which appends
/// the value's JSON to the buffer it is given).
pub fn splice(
    text: &str,
    refs: &[ValueRef],
    mut value: impl FnMut(&str, &mut Vec<u8>) -> Result<()>,
) -> Result<String> {
    let mut out = Vec::with_capacity(text.len());
    let mut from = 0;
    for r in refs {
        if r.at < from || text.get(r.at..r.at + 4) != Some("null") {
            return Err(Error::internal(format!(
                "store: a large-value reference at byte {} does not point at its place",
                r.at
            )));
        }
        out.extend_from_slice(&text.as_bytes()[from..r.at]);
        value(&r.hash, &mut out)?;
        from = r.at + 4;
    }
    out.extend_from_slice(&text.as_bytes()[from..]);
    String::from_utf8(out)
        .map_err(|_| Error::internal("store: a large value is not UTF-8 text".to_string()))
}

/// Writes the JSON of `text` (a value of `kind`) to `sink` in pieces of about [`PIECE_BYTES`]: the
/// same bytes as [`Kind::write_json`], without ever holding all of them.
pub fn write_json_pieces(
    kind: &Kind,
    text: &str,
    sink: &mut dyn FnMut(&[u8]) -> Result<()>,
) -> Result<()> {
    match kind {
        // A JSON string escapes character by character: pieces split on character boundaries escape
        // to the pieces of the whole.
        Kind::Text | Kind::Uuid | Kind::Time | Kind::Interval => {
            sink(b"\"")?;
            let mut piece = String::with_capacity(PIECE_BYTES + PIECE_BYTES / 8);
            let mut rest = text;
            while !rest.is_empty() {
                let mut end = rest.len().min(PIECE_BYTES);
                while !rest.is_char_boundary(end) {
                    end -= 1;
                }
                piece.clear();
                crate::document::value::write_json_string(&rest[..end], &mut piece);
                sink(&piece.as_bytes()[1..piece.len() - 1])?;
                rest = &rest[end..];
            }
            sink(b"\"")
        }
        Kind::Json => pieces(text.as_bytes(), sink),
        other => {
            let mut json = String::new();
            other
                .write_json(text, &mut json)
                .map_err(|e| Error::internal(e.to_string()))?;
            pieces(json.as_bytes(), sink)
        }
    }
}

/// Writes JSON text that is already whole to `sink` in pieces.
pub fn pieces(json: &[u8], sink: &mut dyn FnMut(&[u8]) -> Result<()>) -> Result<()> {
    json.chunks(PIECE_BYTES).try_for_each(sink)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn whole(kind: &Kind, text: &str) -> String {
        let mut out = Vec::new();
        write_json_pieces(kind, text, &mut |p| {
            out.extend_from_slice(p);
            Ok(())
        })
        .unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn pieces_join_to_the_json_of_the_whole_value() {
        // Escapes and multi-byte characters across piece boundaries.
        let text: String = "é\"\n\u{1}x".repeat(PIECE_BYTES / 3);
        for kind in [Kind::Text, Kind::Json, Kind::Bytea] {
            let value = if kind == Kind::Json {
                serde_json::to_string(&text).unwrap()
            } else if kind == Kind::Bytea {
                "\\x00ff".to_string()
            } else {
                text.clone()
            };
            let mut expected = String::new();
            kind.write_json(&value, &mut expected).unwrap();
            assert_eq!(whole(&kind, &value), expected, "{kind:?}");
        }
    }

    #[test]
    fn splicing_puts_each_value_in_its_place() {
        let mut doc = Document::from("{\"a\":1,");
        let row = r#""big":null,"c":null"#;
        let refs = [ValueRef {
            at: 6,
            hash: "h1".into(),
            path: vec!["big".into()],
        }];
        doc.push_part(row, &refs, &[]);
        doc.text.push('}');
        assert_eq!(doc.refs[0].at, 13);
        let spliced = splice(&doc.text, &doc.refs, |hash, out| {
            out.extend_from_slice(format!("\"{hash}\"").as_bytes());
            Ok(())
        })
        .unwrap();
        assert_eq!(spliced, r#"{"a":1,"big":"h1","c":null}"#);
        let wrong = [ValueRef {
            at: 1,
            ..refs[0].clone()
        }];
        assert!(splice(&doc.text, &wrong, |_, _| Ok(())).is_err());
    }
}
