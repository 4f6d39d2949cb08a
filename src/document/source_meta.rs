//! `_meta.source`: where a change came from (schema, table, the transaction's LSN, id and commit
//! time). It is written here once for every path that builds it, and the store can leave it out of a
//! stored document and splice it back on every read.
//!
//! Why leave it out: in a typical change it is about 90 of the document's 150–250 bytes, and it is
//! the same for every change of one table in one transaction. The capture's cost per change is
//! dominated by the bytes it writes (each page goes to the WAL and then to the database), so a stored
//! change keeps only the numbers that rebuild it (a [`SourceCut`]).
//!
//! Invariant: [`splice`] rebuilds exactly the text [`write_source`] wrote, byte for byte, because
//! both write it with the same function; a document is cut only when nothing after the cut is a
//! large value's reference (their offsets are those of the stored text), and only for a streamed
//! change (`"snapshot"` is never cut).

use std::sync::Arc;

use crate::document::value::write_json_string;
use crate::source::pgoutput::Lsn;

/// A source table's qualified name, shared by every change cut from its documents.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SourceTable {
    /// The table's schema.
    pub schema: String,
    /// The table's name.
    pub table: String,
}

/// What was left out of a document's text: `,"source":{…}` goes back at byte `at`, rebuilt from
/// the rest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceCut {
    /// The byte of the text (just after `"_meta":{"op":"c"`) where the source goes back.
    pub at: usize,
    /// The source table.
    pub table: Arc<SourceTable>,
    /// The transaction's LSN (`_meta.source.lsn`), the change's own in the log.
    pub lsn: Lsn,
    /// The transaction's id.
    pub txid: u32,
    /// The transaction's commit time, Unix milliseconds.
    pub ts_ms: i64,
}

/// Appends the `source` object of `_meta`.
pub(crate) fn write_source(
    out: &mut String,
    table: &SourceTable,
    lsn: Lsn,
    txid: u32,
    ts_ms: i64,
    snapshot: bool,
) {
    use std::fmt::Write;
    out.push_str("{\"schema\":");
    write_json_string(&table.schema, out);
    out.push_str(",\"table\":");
    write_json_string(&table.table, out);
    // Writing to a String cannot fail.
    let _ = write!(out, ",\"lsn\":\"{lsn}\",\"txid\":{txid},\"ts_ms\":{ts_ms}");
    out.push_str(if snapshot { ",\"snapshot\":true}" } else { "}" });
}

/// The whole text of a document stored without its source: `text` with `,"source":{…}` put back at
/// byte `at`. `None` when `at` is not a place in `text` (a damaged store).
pub fn splice(
    text: &str,
    at: usize,
    table: &SourceTable,
    lsn: Lsn,
    txid: u32,
    ts_ms: i64,
) -> Option<String> {
    if !text.is_char_boundary(at) {
        return None;
    }
    let mut out = String::with_capacity(text.len() + 96 + table.schema.len() + table.table.len());
    out.push_str(&text[..at]);
    out.push_str(",\"source\":");
    write_source(&mut out, table, lsn, txid, ts_ms, false);
    out.push_str(&text[at..]);
    Some(out)
}

impl SourceCut {
    /// `text`, which this was cut from, made whole again.
    pub fn whole(&self, text: &str) -> Option<String> {
        splice(text, self.at, &self.table, self.lsn, self.txid, self.ts_ms)
    }
}

impl crate::document::large_value::Document {
    /// Puts a cut source back into the text (moving the references after it along), so the text is
    /// whole. `None` when the cut is not a place in the text.
    pub fn make_whole(&mut self) -> Option<()> {
        let Some(cut) = self.source.take() else {
            return Some(());
        };
        let whole = cut.whole(&self.text)?;
        let added = whole.len() - self.text.len();
        for r in self.refs.iter_mut().filter(|r| r.at >= cut.at) {
            r.at += added;
        }
        self.text = whole;
        Some(())
    }
}
