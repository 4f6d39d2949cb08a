//! Documents: how a row of a PostgreSQL table becomes the JSON document a collection stores, with
//! its `_meta` (operation, source position, the row before an update, columns whose value is not
//! known). The stream ([`crate::capture`]) and the backfill ([`crate::capture::backfill`], and the snapshot
//! files it writes, [`crate::store::snapshot`]) both build documents here, so this module imports none of
//! them, nor the store: a large value goes wherever [`LargeValues`] says.
//!
//! Invariant (why a row backfilled and the same row streamed give the same document): both paths
//! hand [`write_row`] the row as PostgreSQL's text output (pgoutput sends it; COPY's text format is
//! the same output, unescaped by [`copy_text`]), described by a [`Relation`] built from the same
//! column types ([`crate::document::value::Kind`]); `write_row` alone turns text into JSON members and the
//! canonical key, and [`meta`] / [`document_of`] alone add `_meta`. Only `_meta.source` differs
//! (a backfilled row says `"snapshot": true`), and only `_meta.op` and `before` by operation.

pub mod copy_text;
pub mod large_value;
pub mod source_meta;
pub mod value;

#[cfg(test)]
mod tests;

use std::sync::Arc;

use serde::Serialize;
use serde_json::{json, Value as Json};

use crate::document::large_value::{
    write_json_pieces, Document, Sink, ValueRef, LARGE_VALUE_BYTES,
};
use crate::document::source_meta::{write_source, SourceCut, SourceTable};
use crate::document::value::Kind;
use crate::error::{Error, Result};
use crate::source::pgoutput::{Lsn, Value};

/// Operations recorded in the change log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Op {
    /// Insert (Estuary's `c`).
    Create,
    /// Update (`u`).
    Update,
    /// Delete (`d`).
    Delete,
    /// Truncate (`t`).
    Truncate,
}

impl Op {
    /// The operation of a one-letter code.
    pub fn from_code(code: &str) -> Option<Op> {
        match code {
            "c" => Some(Op::Create),
            "u" => Some(Op::Update),
            "d" => Some(Op::Delete),
            "t" => Some(Op::Truncate),
            _ => None,
        }
    }

    /// The one-letter code used in documents.
    pub fn code(self) -> &'static str {
        match self {
            Op::Create => "c",
            Op::Update => "u",
            Op::Delete => "d",
            Op::Truncate => "t",
        }
    }
}

/// A collection's description, as the capture last saw its table.
#[derive(Debug, Clone, PartialEq, Serialize, ts_rs::TS)]
#[serde(rename_all = "camelCase")]
pub struct CollectionSpec {
    /// Name, `schema/table` unless renamed.
    pub name: String,
    /// Source schema.
    pub schema: String,
    /// Source table.
    pub table: String,
    /// Key column names, in key order.
    pub key: Vec<String>,
    /// Columns as `[{"name":…, "typeOid":…}]`.
    #[ts(type = "Array<{ name: string, typeOid: number }>")]
    pub columns: Json,
}

/// Microseconds since 2000-01-01 on this machine's clock, PostgreSQL's epoch.
pub fn now_postgres_micros() -> i64 {
    let since_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    since_unix.as_micros() as i64 - 946_684_800_000_000
}

/// PostgreSQL timestamps count microseconds from 2000-01-01.
pub(crate) fn postgres_time_to_unix_ms(micros: i64) -> i64 {
    micros.div_euclid(1000).saturating_add(946_684_800_000)
}

/// Which columns of a tuple go into a document.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Columns {
    /// Every column.
    All,
    /// Only the key's (a delete's or an old key's 'K' tuple).
    Key,
}

/// A row written as JSON object members (`"a":1,"b":"x"`), with its canonical key.
pub(crate) struct RowJson {
    pub(crate) members: String,
    pub(crate) key: String,
    pub(crate) unknown: Vec<String>,
    /// Large values stored apart, each `null` in `members` (offsets into `members`).
    pub(crate) refs: Vec<ValueRef>,
}

/// A column as documents need it: its name, its type, and how its values map to JSON.
pub(crate) struct ColumnInfo {
    pub(crate) name: String,
    /// `"name":`, escaped once per Relation message.
    pub(crate) member: String,
    pub(crate) type_oid: u32,
    pub(crate) kind: Kind,
}

impl ColumnInfo {
    pub(crate) fn new(name: String, type_oid: u32, kind: Kind) -> ColumnInfo {
        let mut member = String::new();
        crate::document::value::write_json_string(&name, &mut member);
        member.push(':');
        ColumnInfo {
            name,
            member,
            type_oid,
            kind,
        }
    }
}

/// A table as documents need it, from a pgoutput Relation message (the stream) or from the catalog
/// (a backfill): the same description either way.
pub(crate) struct Relation {
    /// The collection its rows go to.
    pub(crate) collection: String,
    /// The table's schema and name (`_meta.source`), shared with the changes cut from its documents.
    pub(crate) source: Arc<SourceTable>,
    pub(crate) columns: Vec<ColumnInfo>,
    /// Positions in `columns` of the collection's key, in key order (empty: keyed by position).
    pub(crate) key: Vec<usize>,
}

impl Relation {
    /// The collection's description for the store.
    pub(crate) fn spec(&self) -> CollectionSpec {
        CollectionSpec {
            name: self.collection.clone(),
            schema: self.source.schema.clone(),
            table: self.source.table.clone(),
            key: self
                .key
                .iter()
                .map(|&i| self.columns[i].name.clone())
                .collect(),
            columns: Json::Array(
                self.columns
                    .iter()
                    .map(|c| json!({"name": c.name, "typeOid": c.type_oid}))
                    .collect(),
            ),
        }
    }
}

/// The source transaction (or backfill snapshot) a document belongs to: what its `_meta.source`
/// says, and its position for keyless tables.
pub(crate) struct Transaction {
    pub(crate) final_lsn: Lsn,
    pub(crate) xid: u32,
    pub(crate) ts_ms: i64,
    pub(crate) commit_time_micros: i64,
    pub(crate) skip: bool,
    pub(crate) index: u64,
    /// Rows read by a backfill in the snapshot, not changes from the stream.
    pub(crate) snapshot: bool,
    /// `_meta.source` per relation, the same for every change of that table in this transaction.
    pub(crate) sources: Vec<(u32, String)>,
}

impl Transaction {
    fn source(&mut self, relid: u32, rel: &Relation) -> &str {
        let at = match self.sources.iter().position(|(id, _)| *id == relid) {
            Some(at) => at,
            None => {
                let mut source = String::with_capacity(96);
                write_source(
                    &mut source,
                    &rel.source,
                    self.final_lsn,
                    self.xid,
                    self.ts_ms,
                    self.snapshot,
                );
                self.sources.push((relid, source));
                self.sources.len() - 1
            }
        };
        &self.sources[at].1
    }
}

/// Where [`write_row`] puts a large value ([`crate::document::large_value`]): the store's values, kept once
/// by hash; and where it takes its buffers from, when the store keeps the written ones. A row built
/// only to read its key needs none.
pub(crate) trait LargeValues {
    /// Stores the JSON that `json` writes (in pieces) once; returns its hash.
    fn put_large_value(&mut self, json: &dyn Fn(&mut Sink<'_>) -> Result<()>) -> Result<String>;

    /// An empty buffer for a document, one written earlier when the store keeps them: the capture
    /// then allocates none per change.
    fn spare_buffer(&mut self) -> String {
        String::new()
    }
}

/// The stored row an update's unchanged TOAST values are taken from: its document with large values
/// left as references, which are copied as they are.
pub(crate) struct StoredRow {
    doc: Json,
    refs: Vec<ValueRef>,
}

impl StoredRow {
    pub(crate) fn of(doc: Document) -> Result<StoredRow> {
        Ok(StoredRow {
            doc: serde_json::from_str(&doc.text).map_err(|e| {
                Error::internal(format!("store: a stored document is not JSON: {e}"))
            })?,
            refs: doc.refs,
        })
    }

    /// A stored row known only by its large values' references (a snapshot file's line,
    /// [`copy_text::parse_stored_line`]).
    pub(crate) fn refs_only(refs: Vec<ValueRef>) -> StoredRow {
        StoredRow {
            doc: Json::Null,
            refs,
        }
    }
}

/// A reference to the large value of `column` among `refs`, if it has one.
fn value_ref<'r>(refs: &'r [ValueRef], column: &ColumnInfo) -> Option<&'r ValueRef> {
    refs.iter()
        .find(|r| r.path.len() == 1 && r.path[0] == column.name)
}

/// Writes a tuple's columns as JSON members. Unchanged TOAST values come from `old` (REPLICA IDENTITY
/// FULL: its values and the references its row took) or `stored`; those found in neither are left out
/// and returned by name. With a `store`, a large value of a non-key column is stored there once and
/// referred to. The key is a JSON array of the key columns' values; a table without a key is keyed by
/// the change's position in the stream, so every change stays its own row.
pub(crate) fn write_row(
    rel: &Relation,
    values: &[Value],
    columns: Columns,
    old: Option<(&[Value], &[ValueRef])>,
    stored: Option<&StoredRow>,
    tx: &Transaction,
    mut store: Option<&mut dyn LargeValues>,
) -> Result<RowJson> {
    // Room for the document's `{`, `_meta` (about 150 bytes) and `}` as well: the members' buffer
    // becomes the document's ([`document_of`]).
    let mut members = store
        .as_deref_mut()
        .map(|s| s.spare_buffer())
        .unwrap_or_default();
    members.reserve(224 + values.len() * 16);
    let mut unknown = Vec::new();
    let mut refs = Vec::new();
    // Inline: a key of up to four columns takes no allocation per change.
    let mut key_spans: smallvec::SmallVec<[(usize, std::ops::Range<usize>); 4]> =
        smallvec::SmallVec::new();
    for (i, column) in rel.columns.iter().enumerate() {
        let is_key = rel.key.contains(&i);
        if columns == Columns::Key && !is_key {
            continue;
        }
        let value = values.get(i).unwrap_or(&Value::Null);
        let value = match value {
            Value::UnchangedToast => {
                let from_old = old.and_then(|(values, _)| values.get(i));
                let old_ref = old.and_then(|(_, refs)| value_ref(refs, column));
                let stored_ref = stored.and_then(|s| value_ref(&s.refs, column));
                // The old row's value first (its reference when it took one), then the stored row's.
                let reference = match (from_old, old_ref, stored_ref) {
                    (Some(Value::Text(_)), Some(r), _) => Some(r),
                    (Some(Value::Text(_)), None, _) => None,
                    (_, _, stored_ref) => stored_ref,
                };
                match (from_old, reference) {
                    (_, Some(r)) if !is_key => {
                        push_member(&mut members, column);
                        let at = members.len();
                        refer(&mut members, &mut refs, at, r.hash.clone(), column);
                        continue;
                    }
                    (Some(text @ Value::Text(_)), _) => text,
                    _ => match stored.and_then(|s| s.doc.get(&column.name)) {
                        Some(previous) => {
                            let filled = previous.to_string();
                            push_member(&mut members, column);
                            let start = members.len();
                            match store.as_deref_mut() {
                                Some(store) if !is_key && filled.len() >= LARGE_VALUE_BYTES => {
                                    let hash = store.put_large_value(&|sink| {
                                        crate::document::large_value::pieces(
                                            filled.as_bytes(),
                                            sink,
                                        )
                                    })?;
                                    refer(&mut members, &mut refs, start, hash, column);
                                }
                                _ => members.push_str(&filled),
                            }
                            if is_key {
                                key_spans.push((i, start..members.len()));
                            }
                            continue;
                        }
                        None => {
                            unknown.push(column.name.clone());
                            continue;
                        }
                    },
                }
            }
            other => other,
        };
        push_member(&mut members, column);
        let start = members.len();
        match value {
            Value::Null | Value::UnchangedToast => members.push_str("null"),
            Value::Text(bytes) => {
                let text = utf8(bytes).ok_or_else(|| {
                    Error::internal(format!(
                        "{}.{}: a value is not UTF-8 text",
                        rel.collection, column.name
                    ))
                })?;
                match store.as_deref_mut() {
                    Some(store) if !is_key && text.len() >= LARGE_VALUE_BYTES => {
                        let hash = store
                            .put_large_value(&|sink| write_json_pieces(&column.kind, text, sink))
                            .map_err(|e| {
                                Error::new(
                                    e.kind(),
                                    format!(
                                        "{} column {}: {}",
                                        rel.collection,
                                        column.name,
                                        e.message()
                                    ),
                                )
                            })?;
                        refer(&mut members, &mut refs, start, hash, column);
                    }
                    _ => column.kind.write_json(text, &mut members).map_err(|e| {
                        Error::internal(format!("{} column {}: {e}", rel.collection, column.name))
                    })?,
                }
            }
            Value::Binary(_) => {
                return Err(Error::internal(
                    "pgoutput sent a binary value although text was requested",
                ))
            }
        }
        if is_key {
            key_spans.push((i, start..members.len()));
        }
    }
    let key = if rel.key.is_empty() {
        json!([tx.final_lsn.to_string(), tx.index]).to_string()
    } else {
        let mut key = store.map(|s| s.spare_buffer()).unwrap_or_default();
        key.push('[');
        for (n, &k) in rel.key.iter().enumerate() {
            if n > 0 {
                key.push(',');
            }
            match key_spans.iter().find(|(i, _)| *i == k) {
                Some((_, span)) => key.push_str(&members[span.clone()]),
                None => key.push_str("null"),
            }
        }
        key.push(']');
        key
    };
    Ok(RowJson {
        members,
        key,
        unknown,
        refs,
    })
}

/// A large value's place in a document: `null` in the members, and a reference at `at` to the
/// value stored under `hash`, which every reader splices back in.
fn refer(
    members: &mut String,
    refs: &mut Vec<ValueRef>,
    at: usize,
    hash: String,
    column: &ColumnInfo,
) {
    refs.push(ValueRef {
        at,
        hash,
        path: vec![column.name.clone()],
    });
    members.push_str("null");
}

/// `bytes` as text, if they are UTF-8. Most column values are short and ASCII: checking that
/// takes a few word compares, where the general validation costs about 100 instructions a value
/// (9 % of the capture's instructions on a 30-column table; docs/benchmarks.md, issue 21, step 13).
fn utf8(bytes: &[u8]) -> Option<&str> {
    if bytes.is_ascii() {
        // SAFETY: ASCII bytes are UTF-8.
        Some(unsafe { std::str::from_utf8_unchecked(bytes) })
    } else {
        std::str::from_utf8(bytes).ok()
    }
}

fn push_member(members: &mut String, column: &ColumnInfo) {
    if !members.is_empty() {
        members.push(',');
    }
    members.push_str(&column.member);
}

/// The `_meta` object: op, source, and `before` / `unknown` when there are any.
pub(crate) fn meta(
    op: Op,
    relid: u32,
    rel: &Relation,
    tx: &mut Transaction,
    before: Option<&str>,
    unknown: &[String],
) -> String {
    meta_at(op, relid, rel, tx, before, unknown).0
}

/// [`meta`], and where `before` starts in it (for the references of its large values).
pub(crate) fn meta_at(
    op: Op,
    relid: u32,
    rel: &Relation,
    tx: &mut Transaction,
    before: Option<&str>,
    unknown: &[String],
) -> (String, Option<usize>) {
    let mut meta = String::with_capacity(160);
    let before_at = write_meta(&mut meta, op, relid, rel, tx, before, unknown);
    (meta, before_at)
}

/// Appends the `_meta` object to `out`; returns where `before` starts in what it appended.
pub(crate) fn write_meta(
    out: &mut String,
    op: Op,
    relid: u32,
    rel: &Relation,
    tx: &mut Transaction,
    before: Option<&str>,
    unknown: &[String],
) -> Option<usize> {
    let start = out.len();
    write_op(out, op);
    out.push_str(",\"source\":");
    out.push_str(tx.source(relid, rel));
    write_meta_rest(out, start, before, unknown)
}

/// [`write_meta`] for a change without `before`, with `source` left out of a streamed change's text:
/// returns where it goes back ([`crate::document::source_meta`]). A backfilled row keeps it.
pub(crate) fn write_meta_cut(
    out: &mut String,
    op: Op,
    relid: u32,
    rel: &Relation,
    tx: &mut Transaction,
    unknown: &[String],
) -> Option<SourceCut> {
    if tx.snapshot {
        write_meta(out, op, relid, rel, tx, None, unknown);
        return None;
    }
    let start = out.len();
    write_op(out, op);
    let at = out.len();
    write_meta_rest(out, start, None, unknown);
    Some(SourceCut {
        at,
        table: rel.source.clone(),
        lsn: tx.final_lsn,
        txid: tx.xid,
        ts_ms: tx.ts_ms,
    })
}

/// `{"op":"c"`: the start of `_meta`.
fn write_op(out: &mut String, op: Op) {
    out.push_str("{\"op\":\"");
    out.push_str(op.code());
    out.push('"');
}

/// The rest of `_meta` after its source (`start` is where `_meta` began in `out`); returns where
/// `before` starts, relative to `start`.
fn write_meta_rest(
    out: &mut String,
    start: usize,
    before: Option<&str>,
    unknown: &[String],
) -> Option<usize> {
    let mut before_at = None;
    if let Some(before) = before {
        out.push_str(",\"before\":");
        before_at = Some(out.len() - start);
        out.push_str(before);
    }
    if !unknown.is_empty() {
        out.push_str(",\"unknown\":");
        out.push_str(&json!(unknown).to_string());
    }
    out.push('}');
    before_at
}

/// The document of a row and its `_meta`, with the references of the large values in both (those of
/// `meta` relative to it, under `_meta`). The row's members become the document's text in place (its
/// buffer is taken, leaving `row.members` empty): the capture's hot path then copies no member and
/// makes no new buffer per change. Its key, unknown columns and references stay for the caller.
pub(crate) fn document_of(row: &mut RowJson, meta: &str, meta_refs: &[ValueRef]) -> Document {
    let mut doc = document_opened(row, meta.len());
    if meta_refs.is_empty() {
        doc.text.push_str(meta);
    } else {
        doc.push_part(meta, meta_refs, &["_meta".to_string()]);
    }
    doc.text.push('}');
    doc
}

/// [`document_of`] for a `_meta` without large values, which `meta` writes straight into the
/// document (given the row's unknown columns): no buffer of its own per change. `meta` returns where
/// it left `_meta.source` out ([`write_meta_cut`]), if it did.
pub(crate) fn document_with_meta(
    row: &mut RowJson,
    meta: impl FnOnce(&mut String, &[String]) -> Option<SourceCut>,
) -> Document {
    // About what `_meta` takes without `before` or unknown columns.
    let mut doc = document_opened(row, 160);
    doc.source = meta(&mut doc.text, &row.unknown);
    doc.text.push('}');
    doc
}

/// The start of a row's document, up to `"_meta":`, in the row's own buffer ([`document_of`]), with
/// room for a `_meta` of `meta_len` bytes after it.
fn document_opened(row: &mut RowJson, meta_len: usize) -> Document {
    let members = std::mem::take(&mut row.members);
    let had_members = !members.is_empty();
    let mut doc = Document {
        text: members,
        refs: Vec::new(),
        source: None,
    };
    doc.text.reserve(meta_len + 12);
    // One byte moved along: the members' references shift by it.
    doc.text.insert(0, '{');
    doc.refs.extend(row.refs.iter().map(|r| ValueRef {
        at: r.at + 1,
        hash: r.hash.clone(),
        path: r.path.clone(),
    }));
    if had_members {
        doc.text.push(',');
    }
    doc.text.push_str("\"_meta\":");
    doc
}

/// A document's text from its members and its `_meta` (no large values in either).
pub(crate) fn document(members: &str, meta: &str) -> String {
    let mut doc = String::with_capacity(members.len() + meta.len() + 12);
    doc.push('{');
    doc.push_str(members);
    if !members.is_empty() {
        doc.push(',');
    }
    doc.push_str("\"_meta\":");
    doc.push_str(meta);
    doc.push('}');
    doc
}
