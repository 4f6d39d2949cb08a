//! What the Collections screen reads from a profile's store: the collections with their counts, a
//! page of current rows (reduced by key) or of the change log, each with the collection's key and
//! columns so the screen can lay out its table.
//!
//! Each change-log entry comes with what the screen shows of it (commit LSN, transaction, time, and
//! for an update the columns it changed, old → new), read from its `_meta` here. A filter is the
//! consumers' CEL expression ([`crate::app::preview_filter`]), evaluated here for stored documents and
//! for the live tail alike. Rows can be sorted by a column here too, so a big collection is never
//! shipped to the window to be sorted. It also exports a whole view (optionally filtered) as JSON
//! Lines or CSV.
//!
//! Invariants: an update's before image is only ever what PostgreSQL sent (the whole previous row
//! under REPLICA IDENTITY FULL, the old key when the key changed); without one the change says the
//! previous values are not known. Read-only. It opens the store beside a running capture (SQLite WAL: readers never block
//! the writer) and sees only what a store commit made durable.

use serde::Serialize;
use serde_json::Value as Json;

use crate::app::preview_filter::PreviewFilter;
use crate::app::profile::Profiles;
use crate::error::{Error, ErrorKind, Result};
use crate::store::{CollectionInfo, CollectionSpec, Store};

/// Which view of a collection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, ts_rs::TS)]
#[serde(rename_all = "camelCase")]
#[ts(rename = "CollectionView")]
pub enum View {
    /// The current rows, one per key, in key order.
    #[default]
    Rows,
    /// The change log, in order.
    Changes,
}

/// One page of documents.
#[derive(Debug, Clone, Serialize, ts_rs::TS)]
#[serde(rename_all = "camelCase")]
pub struct Page {
    /// The collection's description (key and columns).
    pub collection: CollectionSpec,
    /// The documents; for the change log, each with its log position.
    #[ts(type = "Array<Record<string, unknown>>")]
    pub documents: Vec<Json>,
    /// For the change log: what each document's change was (one per document, in the same order),
    /// read from its `_meta` here so the screen does not parse LSNs or documents itself. Empty for rows.
    pub changes: Vec<ChangeInfo>,
    /// For the change log: the position of the last entry read (the next page, or a tail, starts after
    /// it; with a filter, entries read that did not match are past it too).
    /// For rows: the newest log position when the page was read, so a tail that follows the page
    /// brings only later changes, not the whole log again.
    pub last_seq: u64,
    /// For rows in key order: the key of the last row read (the next page starts after it).
    pub last_key: Option<String>,
    /// Whether a next page may have more.
    pub has_more: bool,
}

/// A column to sort rows by.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, Serialize, ts_rs::TS)]
#[serde(rename_all = "camelCase")]
pub struct Sort {
    /// A column of the collection.
    pub column: String,
    /// Largest first (NULL first, as PostgreSQL's `DESC`); else smallest first, NULL last.
    #[serde(default)]
    pub descending: bool,
}

/// Which page to read.
#[derive(Debug, Clone, Default, serde::Deserialize, ts_rs::TS)]
#[serde(rename_all = "camelCase")]
pub struct PageRequest {
    /// Rows or changes.
    pub view: View,
    /// Changes: the page starts after this log position; none for the newest entries.
    #[serde(default)]
    pub after: Option<u64>,
    /// Rows in key order: the page starts after this key; none for the first.
    #[serde(default)]
    pub after_key: Option<String>,
    /// At most this many documents (1–10,000).
    pub limit: usize,
    /// Only documents this CEL expression matches: the consumers' filter language, over the
    /// message a consumer would get for the document (`record`, `changes`, `action`, `metadata`).
    #[serde(default)]
    pub filter: Option<String>,
    /// Rows: in this column's order instead of the key's; the page starts `offset` rows in.
    #[serde(default)]
    pub sort: Option<Sort>,
    /// Rows with `sort`: how many rows of the order come before the page.
    #[serde(default)]
    pub offset: usize,
}

impl PageRequest {
    /// The first page of a view.
    pub fn first(view: View, limit: usize) -> PageRequest {
        PageRequest {
            view,
            limit,
            ..PageRequest::default()
        }
    }
}

/// What one change-log entry was, beside its document: where and when it was committed, and for an
/// update what it changed.
#[derive(Debug, Clone, PartialEq, Serialize, ts_rs::TS)]
#[serde(rename_all = "camelCase")]
pub struct ChangeInfo {
    /// Its position in the store's log.
    pub seq: u64,
    /// `c` (insert, or a backfilled row), `u`, `d` or `t`.
    pub op: String,
    /// A row read by the backfill, not a change from the stream: `lsn` is then the snapshot's
    /// consistent point, `committed_ms` when it was read, and there is no transaction.
    pub snapshot: bool,
    /// The commit's LSN (`_meta.source.lsn`, PostgreSQL's `X/X` form).
    pub lsn: Option<String>,
    /// The source transaction's id (`_meta.source.txid`).
    pub xid: Option<u64>,
    /// When the transaction committed at the source, Unix milliseconds (`_meta.source.ts_ms`).
    pub committed_ms: Option<i64>,
    /// For an update: what changed, as far as the change says.
    pub update: Option<UpdateDiff>,
}

/// How much of an updated row's previous version a change carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ts_rs::TS)]
#[serde(rename_all = "camelCase")]
pub enum BeforeImage {
    /// The whole previous row (the table has `REPLICA IDENTITY FULL`).
    Full,
    /// Only the previous key: the key changed, and PostgreSQL sends the old key then.
    Key,
    /// Nothing: PostgreSQL sent only the new row (`REPLICA IDENTITY DEFAULT` with the key unchanged).
    Unknown,
}

/// What an update changed.
#[derive(Debug, Clone, PartialEq, Serialize, ts_rs::TS)]
#[serde(rename_all = "camelCase")]
pub struct UpdateDiff {
    /// How much of the previous row is known.
    pub before: BeforeImage,
    /// The columns whose value is known to have changed, in the collection's column order: with
    /// the whole previous row every changed column, with the old key the key's changed columns,
    /// else none (which columns changed is then not known, and nothing is guessed).
    pub fields: Vec<FieldChange>,
}

/// One changed column.
#[derive(Debug, Clone, PartialEq, Serialize, ts_rs::TS)]
#[serde(rename_all = "camelCase")]
pub struct FieldChange {
    /// The column.
    pub name: String,
    /// Its previous value (JSON `null` for NULL); absent when longer than [`DIFF_VALUE_BYTES`] (it is
    /// in the document's `_meta.before`, and is not sent twice).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[ts(optional, type = "unknown")]
    pub before: Option<Json>,
    /// Its new value; absent when longer than [`DIFF_VALUE_BYTES`] (it is in the document).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[ts(optional, type = "unknown")]
    pub after: Option<Json>,
}

/// A changed value longer than this (as JSON text) is not repeated in a [`FieldChange`]: a large
/// value (up to hundreds of MiB) would otherwise cross to the window twice more with each update.
pub const DIFF_VALUE_BYTES: usize = 4096;

/// `value`, unless it is longer than [`DIFF_VALUE_BYTES`].
fn small(value: &Json) -> Option<Json> {
    let long = match value {
        Json::String(s) => s.len() > DIFF_VALUE_BYTES,
        Json::Array(_) | Json::Object(_) => value.to_string().len() > DIFF_VALUE_BYTES,
        _ => false,
    };
    (!long).then(|| value.clone())
}

impl ChangeInfo {
    /// What the change-log entry `doc` at `seq` of a collection described by `spec` was.
    pub fn of(seq: u64, doc: &Json, spec: &CollectionSpec) -> ChangeInfo {
        let meta = doc.get("_meta");
        let source = meta.and_then(|m| m.get("source"));
        let op = meta
            .and_then(|m| m.get("op"))
            .and_then(Json::as_str)
            .unwrap_or("")
            .to_string();
        let snapshot = source
            .and_then(|s| s.get("snapshot"))
            .and_then(Json::as_bool)
            == Some(true);
        let update = (op == "u").then(|| diff(doc, meta.and_then(|m| m.get("before")), spec));
        ChangeInfo {
            seq,
            snapshot,
            lsn: source
                .and_then(|s| s.get("lsn"))
                .and_then(Json::as_str)
                .map(str::to_string),
            xid: if snapshot {
                None
            } else {
                source.and_then(|s| s.get("txid")).and_then(Json::as_u64)
            },
            committed_ms: source.and_then(|s| s.get("ts_ms")).and_then(Json::as_i64),
            op,
            update,
        }
    }
}

/// An update's changed columns from its `_meta.before`. A previous row that has any column outside
/// the key is the whole row (PostgreSQL sends either the whole old row or only the old key); a
/// column absent from the new document (an unchanged TOAST value not known) is not a change.
fn diff(doc: &Json, before: Option<&Json>, spec: &CollectionSpec) -> UpdateDiff {
    let Some(Json::Object(before)) = before else {
        return UpdateDiff {
            before: BeforeImage::Unknown,
            fields: Vec::new(),
        };
    };
    let full = spec.key.is_empty() || before.keys().any(|k| !spec.key.contains(k));
    let columns: Vec<&str> = spec
        .columns
        .as_array()
        .map(|cols| {
            cols.iter()
                .filter_map(|c| c.get("name").and_then(Json::as_str))
                .collect()
        })
        .unwrap_or_default();
    let fields = columns
        .into_iter()
        .filter(|c| full || spec.key.iter().any(|k| k == c))
        .filter_map(|c| {
            let (old, new) = (before.get(c)?, doc.get(c)?);
            (old != new).then(|| FieldChange {
                name: c.to_string(),
                before: small(old),
                after: small(new),
            })
        })
        .collect();
    UpdateDiff {
        before: if full {
            BeforeImage::Full
        } else {
            BeforeImage::Key
        },
        fields,
    }
}

fn open(profiles: &Profiles, id_or_name: &str) -> Result<Option<Store>> {
    Store::open_existing(&profiles.store_dir(id_or_name)?)
}

/// The profile's collections with their counts (none before the first capture).
pub fn collections(profiles: &Profiles, id_or_name: &str) -> Result<Vec<CollectionInfo>> {
    match open(profiles, id_or_name)? {
        Some(store) => store.collections(),
        None => Ok(Vec::new()),
    }
}

/// A page of `collection`: current rows in key order after `after_key` (or in a column's order), or
/// log entries after `after` (the newest when `after` is none), at most `limit`, only those matching
/// the filter.
pub fn page(
    profiles: &Profiles,
    id_or_name: &str,
    collection: &str,
    request: &PageRequest,
) -> Result<Page> {
    let store = open(profiles, id_or_name)?.ok_or_else(|| missing(collection))?;
    page_of(&store, collection, request)
}

fn missing(collection: &str) -> Error {
    Error::new(
        ErrorKind::NotFound,
        format!("no collection named '{collection}' yet: start the capture first"),
    )
}

/// Documents read per step when a filter or a sort is evaluated here rather than in SQL.
const SCAN: usize = 1_000;

/// A sorted view holds at most this many rows in memory to order them (the rows before the page and
/// the page); later pages of a sorted view are not offered.
pub const SORTED_ROWS: usize = 100_000;

/// A page read from an open store.
pub fn page_of(store: &Store, collection: &str, request: &PageRequest) -> Result<Page> {
    let spec = store
        .collection(collection)?
        .ok_or_else(|| missing(collection))?;
    let limit = request.limit.clamp(1, 10_000);
    let filter = request
        .filter
        .as_deref()
        .filter(|f| !f.trim().is_empty())
        .map(|f| PreviewFilter::compile(f, &spec))
        .transpose()?;
    let (documents, last_seq, last_key, has_more) = match (request.view, &request.sort) {
        (View::Rows, Some(sort)) => {
            let newest = store.last_seq(collection)?;
            let (docs, more) =
                rows_sorted(store, &spec, sort, request.offset, limit, filter.as_ref())?;
            (docs, newest, None, more)
        }
        (View::Rows, None) => {
            // Read before the rows: a change stored in between is in the page and heard again by
            // the tail (a re-read), never missed.
            let newest = store.last_seq(collection)?;
            let (rows, cursor, more) = match &filter {
                None => {
                    let rows =
                        store.rows_after(collection, request.after_key.as_deref(), limit, None)?;
                    let cursor = rows.last().map(|(key, _)| key.clone());
                    let more = rows.len() == limit;
                    (rows, cursor, more)
                }
                Some(f) => rows_matching(store, collection, request.after_key.clone(), limit, f)?,
            };
            (
                rows.into_iter().map(|(_, doc)| doc).collect::<Vec<_>>(),
                newest,
                cursor.or_else(|| request.after_key.clone()),
                more,
            )
        }
        (View::Changes, _) => {
            let (entries, scanned, more) = match (&filter, request.after) {
                (None, Some(after)) => {
                    let e = store.changes(collection, after, limit)?;
                    let more = e.len() == limit;
                    (e, None, more)
                }
                (None, None) => {
                    let e = store.latest_changes(collection, limit)?;
                    let more = e.len() == limit;
                    (e, None, more)
                }
                (Some(f), Some(after)) => {
                    let (e, scanned, more) = changes_matching(store, collection, after, limit, f)?;
                    (e, Some(scanned), more)
                }
                (Some(f), None) => {
                    let (e, newest) = latest_matching(store, collection, limit, f)?;
                    let more = e.len() == limit;
                    (e, Some(newest), more)
                }
            };
            let last = entries
                .last()
                .map(|(seq, _)| *seq)
                .max(scanned)
                .unwrap_or(request.after.unwrap_or(0));
            let (changes, documents) = entries
                .into_iter()
                .map(|(seq, doc)| (ChangeInfo::of(seq, &doc, &spec), doc))
                .unzip();
            return Ok(Page {
                collection: spec,
                documents,
                changes,
                last_seq: last,
                last_key: None,
                has_more: more,
            });
        }
    };
    Ok(Page {
        collection: spec,
        documents,
        changes: Vec::new(),
        last_seq,
        last_key,
        has_more,
    })
}

/// What a filtered read found, where it stopped reading (the cursor of the next page), and whether
/// more may follow.
type Scanned<T, C> = (Vec<T>, C, bool);

/// Rows in key order after `after`, at most `limit` matching `filter`; with the key of the last row
/// read (matching or not) and whether more may follow.
fn rows_matching(
    store: &Store,
    collection: &str,
    mut after: Option<String>,
    limit: usize,
    filter: &PreviewFilter,
) -> Result<Scanned<(String, Json), Option<String>>> {
    let mut out = Vec::new();
    loop {
        let chunk = store.rows_after(collection, after.as_deref(), SCAN, None)?;
        let full = chunk.len() == SCAN;
        for (key, doc) in chunk {
            after = Some(key.clone());
            if filter.matches(0, &doc) {
                out.push((key, doc));
                if out.len() == limit {
                    return Ok((out, after, true));
                }
            }
        }
        if !full {
            return Ok((out, after, false));
        }
    }
}

/// Log entries after `after`, at most `limit` matching `filter`; with the position of the last entry
/// read and whether more may follow.
fn changes_matching(
    store: &Store,
    collection: &str,
    mut after: u64,
    limit: usize,
    filter: &PreviewFilter,
) -> Result<Scanned<(u64, Json), u64>> {
    let mut out = Vec::new();
    loop {
        let chunk = store.changes(collection, after, SCAN)?;
        let full = chunk.len() == SCAN;
        for (seq, doc) in chunk {
            after = seq;
            if filter.matches(seq, &doc) {
                out.push((seq, doc));
                if out.len() == limit {
                    return Ok((out, after, true));
                }
            }
        }
        if !full {
            return Ok((out, after, false));
        }
    }
}

/// The newest `limit` log entries matching `filter`, oldest first, and the log's end when reading
/// began (a tail starts after it). Reads back from the end in windows of log positions that double,
/// so a rare match costs a few reads, not one per entry.
fn latest_matching(
    store: &Store,
    collection: &str,
    limit: usize,
    filter: &PreviewFilter,
) -> Result<(Vec<(u64, Json)>, u64)> {
    let newest = store.last_seq(collection)?;
    let mut found: Vec<(u64, Json)> = Vec::new();
    let (mut high, mut width) = (newest, SCAN as u64);
    while high > 0 && found.len() < limit {
        let low = high.saturating_sub(width);
        let mut window = Vec::new();
        let mut at = low;
        'window: loop {
            let chunk = store.changes(collection, at, SCAN)?;
            let full = chunk.len() == SCAN;
            for (seq, doc) in chunk {
                if seq > high {
                    break 'window;
                }
                at = seq;
                if filter.matches(seq, &doc) {
                    window.push((seq, doc));
                }
            }
            if !full {
                break;
            }
        }
        window.append(&mut found);
        found = window;
        high = low;
        width = width.saturating_mul(2);
    }
    let extra = found.len().saturating_sub(limit);
    found.drain(..extra);
    Ok((found, newest))
}

/// A value's place in a sort: PostgreSQL's order for each type, NULL after every value (and a value
/// not in the document, an unchanged TOAST value, after NULL).
#[derive(Debug, Clone, PartialEq)]
enum Rank {
    Bool(bool),
    Number(f64),
    Text(String),
    Other(String),
    Null,
    Absent,
}

impl Rank {
    fn of(value: Option<&Json>, numeric: bool) -> Rank {
        match value {
            None => Rank::Absent,
            Some(Json::Null) => Rank::Null,
            Some(Json::Bool(b)) => Rank::Bool(*b),
            Some(Json::Number(n)) => Rank::Number(n.as_f64().unwrap_or(f64::NAN)),
            // numeric values are kept as text so no digit is lost; they sort as numbers.
            Some(Json::String(s)) if numeric => match s.parse::<f64>() {
                Ok(n) => Rank::Number(n),
                Err(_) => Rank::Text(s.clone()),
            },
            Some(Json::String(s)) => Rank::Text(s.clone()),
            Some(other) => Rank::Other(other.to_string()),
        }
    }

    fn order(&self) -> u8 {
        match self {
            Rank::Bool(_) => 0,
            Rank::Number(_) => 1,
            Rank::Text(_) => 2,
            Rank::Other(_) => 3,
            Rank::Null => 4,
            Rank::Absent => 5,
        }
    }

    fn cmp(&self, other: &Rank) -> std::cmp::Ordering {
        match (self, other) {
            (Rank::Bool(a), Rank::Bool(b)) => a.cmp(b),
            (Rank::Number(a), Rank::Number(b)) => a.total_cmp(b),
            (Rank::Text(a), Rank::Text(b)) | (Rank::Other(a), Rank::Other(b)) => a.cmp(b),
            _ => self.order().cmp(&other.order()),
        }
    }
}

/// A row in a sort, ordered by its value then its key (so the order is total and pages are stable).
struct Ranked {
    rank: Rank,
    key: String,
    doc: Json,
    descending: bool,
}

impl Ord for Ranked {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        let by_value = self.rank.cmp(&other.rank);
        let by_value = if self.descending {
            by_value.reverse()
        } else {
            by_value
        };
        by_value.then_with(|| self.key.cmp(&other.key))
    }
}

impl PartialOrd for Ranked {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Ranked {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == std::cmp::Ordering::Equal
    }
}

impl Eq for Ranked {}

/// Rows `offset..offset + limit` in `sort`'s order, only those matching `filter`, and whether more
/// follow. Reads every row once and keeps only the first `offset + limit` of the order in memory
/// (a heap), so memory stays bounded however big the collection is.
fn rows_sorted(
    store: &Store,
    spec: &CollectionSpec,
    sort: &Sort,
    offset: usize,
    limit: usize,
    filter: Option<&PreviewFilter>,
) -> Result<(Vec<Json>, bool)> {
    let column = spec
        .columns
        .as_array()
        .and_then(|cols| {
            cols.iter()
                .find(|c| c.get("name").and_then(Json::as_str) == Some(sort.column.as_str()))
        })
        .ok_or_else(|| {
            Error::invalid_input(
                "sort",
                format!("'{}' is not a column of {}", sort.column, spec.name),
            )
        })?;
    let numeric = column.get("typeOid").and_then(Json::as_u64) == Some(1700);
    if offset >= SORTED_ROWS {
        return Ok((Vec::new(), false));
    }
    let keep = (offset + limit).min(SORTED_ROWS);
    let mut heap = std::collections::BinaryHeap::with_capacity(keep + 1);
    let mut matched = 0usize;
    let mut after: Option<String> = None;
    loop {
        let chunk = store.rows_after(&spec.name, after.as_deref(), SCAN, None)?;
        let full = chunk.len() == SCAN;
        for (key, doc) in chunk {
            after = Some(key.clone());
            if filter.is_some_and(|f| !f.matches(0, &doc)) {
                continue;
            }
            matched += 1;
            heap.push(Ranked {
                rank: Rank::of(doc.get(&sort.column), numeric),
                key,
                doc,
                descending: sort.descending,
            });
            if heap.len() > keep {
                heap.pop();
            }
        }
        if !full {
            break;
        }
    }
    let docs = heap
        .into_sorted_vec()
        .into_iter()
        .skip(offset)
        .map(|r| r.doc)
        .collect();
    Ok((
        docs,
        matched > offset + limit && offset + limit < SORTED_ROWS,
    ))
}

/// A file format for [`export`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, Serialize, ts_rs::TS)]
#[serde(rename_all = "camelCase")]
pub enum ExportFormat {
    /// One document per line, exactly as stored.
    Jsonl,
    /// One row per document: the collection's columns (and `op` for the change log). Strings as
    /// they are, other values as JSON, NULL and absent values as empty cells.
    Csv,
}

/// What an export wrote.
#[derive(Debug, Clone, Serialize, ts_rs::TS)]
#[serde(rename_all = "camelCase")]
pub struct Exported {
    /// The file.
    pub path: std::path::PathBuf,
    /// Documents written.
    pub documents: u64,
}

/// Where exports go: the user's Downloads folder (XDG), else `~/Downloads`.
pub fn default_export_dir() -> Result<std::path::PathBuf> {
    dirs::download_dir()
        .or_else(|| dirs::home_dir().map(|home| home.join("Downloads")))
        .ok_or_else(|| {
            Error::invalid_input("export folder", "no Downloads or home folder is known")
        })
}

/// Documents per read while exporting: memory stays flat whatever the collection's size.
const EXPORT_CHUNK: usize = 5_000;

/// Writes the whole view of `collection` (the change log from its start), filtered, to a new file in
/// `dir` named after the collection, view and local time (`public_orders-changes-2026-11-30-1805.csv`).
/// The file appears complete or not at all: it is written under a temporary name and linked to its
/// own name once complete.
pub fn export(
    profiles: &Profiles,
    id_or_name: &str,
    collection: &str,
    view: View,
    filter: Option<String>,
    format: ExportFormat,
    dir: &std::path::Path,
) -> Result<Exported> {
    let store = open(profiles, id_or_name)?.ok_or_else(|| missing(collection))?;
    let spec = store
        .collection(collection)?
        .ok_or_else(|| missing(collection))?;
    // Exports are plain files the user asked for, but hold captured rows: owner-only, like the store.
    crate::owner_only::create_dir_all(dir).map_err(|e| {
        Error::invalid_input(
            "export folder",
            format!("cannot create {}: {e}", dir.display()),
        )
    })?;
    let stem = export_stem(collection, view, chrono::Local::now().naive_local());
    let extension = match format {
        ExportFormat::Jsonl => "jsonl",
        ExportFormat::Csv => "csv",
    };
    let partial = dir.join(format!(".{stem}.{extension}.partial"));
    let written = write_export(&store, &spec, collection, view, filter, format, &partial);
    let documents = match written {
        Ok(n) => n,
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            return Err(e);
        }
    };
    // A second export in the same minute gets `-2`, `-3`…: a hard link fails rather than replace a
    // file, so no earlier export is overwritten, even by one made at the same moment.
    let mut path = dir.join(format!("{stem}.{extension}"));
    let mut n = 1;
    loop {
        match std::fs::hard_link(&partial, &path) {
            Ok(()) => break,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && n < 1000 => {
                n += 1;
                path = dir.join(format!("{stem}-{n}.{extension}"));
            }
            Err(e) => {
                let _ = std::fs::remove_file(&partial);
                return Err(Error::internal(format!(
                    "finishing {}: {e}",
                    path.display()
                )));
            }
        }
    }
    let _ = std::fs::remove_file(&partial);
    Ok(Exported { path, documents })
}

/// An export's file name without extension: the collection (a path separator or space as `_`), the
/// view, and the local date and time to the minute, readable and sorting in time order.
pub fn export_stem(collection: &str, view: View, at: chrono::NaiveDateTime) -> String {
    format!(
        "{}-{}-{}",
        collection.replace(['/', '\\', ' '], "_"),
        match view {
            View::Rows => "rows",
            View::Changes => "changes",
        },
        at.format("%Y-%m-%d-%H%M")
    )
}

fn write_export(
    store: &Store,
    spec: &CollectionSpec,
    collection: &str,
    view: View,
    filter: Option<String>,
    format: ExportFormat,
    path: &std::path::Path,
) -> Result<u64> {
    use std::io::Write;
    let io = |e: std::io::Error| Error::internal(format!("writing {}: {e}", path.display()));
    let file = crate::owner_only::create(path).map_err(io)?;
    let columns: Vec<String> = spec
        .columns
        .as_array()
        .map(|cols| {
            cols.iter()
                .filter_map(|c| c.get("name").and_then(Json::as_str).map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let csv_error = |e: csv::Error| Error::internal(format!("writing {}: {e}", path.display()));
    enum Out {
        Jsonl(std::io::BufWriter<std::fs::File>),
        Csv(Box<csv::Writer<std::fs::File>>),
    }
    let mut out = match format {
        ExportFormat::Jsonl => Out::Jsonl(std::io::BufWriter::new(file)),
        ExportFormat::Csv => {
            let mut w = csv::Writer::from_writer(file);
            let mut header: Vec<&str> = Vec::new();
            if view == View::Changes {
                header.push("op");
            }
            header.extend(columns.iter().map(String::as_str));
            w.write_record(&header).map_err(csv_error)?;
            Out::Csv(Box::new(w))
        }
    };
    let mut request = PageRequest {
        view,
        after: Some(0),
        after_key: None,
        limit: EXPORT_CHUNK,
        filter,
        sort: None,
        offset: 0,
    };
    let mut count = 0u64;
    loop {
        let page = page_of(store, collection, &request)?;
        for doc in &page.documents {
            match &mut out {
                Out::Csv(w) => {
                    let mut record: Vec<String> = Vec::with_capacity(columns.len() + 1);
                    if view == View::Changes {
                        record.push(
                            doc.pointer("/_meta/op")
                                .and_then(Json::as_str)
                                .unwrap_or("")
                                .to_string(),
                        );
                    }
                    for column in &columns {
                        record.push(match doc.get(column) {
                            None | Some(Json::Null) => String::new(),
                            Some(Json::String(s)) => s.clone(),
                            Some(other) => other.to_string(),
                        });
                    }
                    w.write_record(&record).map_err(csv_error)?;
                }
                Out::Jsonl(w) => {
                    serde_json::to_writer(&mut *w, doc).map_err(Error::internal)?;
                    w.write_all(b"\n").map_err(io)?;
                }
            }
            count += 1;
        }
        if !page.has_more {
            break;
        }
        request.after = Some(page.last_seq);
        request.after_key = page.last_key;
    }
    let file = match out {
        Out::Csv(w) => w
            .into_inner()
            .map_err(|e| Error::internal(format!("writing {}: {e}", path.display())))?,
        Out::Jsonl(w) => w
            .into_inner()
            .map_err(|e| Error::internal(format!("writing {}: {e}", path.display())))?,
    };
    file.sync_all().map_err(io)?;
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec() -> CollectionSpec {
        CollectionSpec {
            name: "public/orders".into(),
            schema: "public".into(),
            table: "orders".into(),
            key: vec!["id".into()],
            columns: json!([{"name": "id", "typeOid": 23}, {"name": "status", "typeOid": 25},
                            {"name": "body", "typeOid": 25}]),
        }
    }

    #[test]
    fn an_update_says_what_changed_only_as_far_as_its_before_image_goes() {
        let source = json!({"schema": "public", "table": "orders", "lsn": "0/16B3748", "txid": 771, "ts_ms": 1767225600123i64});
        // The whole previous row: the changed columns; a column not in the new document (an unchanged
        // TOAST value not known) is not a change.
        let full = json!({"id": 1, "status": "paid", "_meta": {"op": "u", "source": source,
            "before": {"id": 1, "status": "new", "body": "long"}, "unknown": ["body"]}});
        let info = ChangeInfo::of(9, &full, &spec());
        assert_eq!(
            (
                info.seq,
                info.op.as_str(),
                info.lsn.as_deref(),
                info.xid,
                info.committed_ms
            ),
            (9, "u", Some("0/16B3748"), Some(771), Some(1767225600123))
        );
        assert_eq!(
            info.update,
            Some(UpdateDiff {
                before: BeforeImage::Full,
                fields: vec![FieldChange {
                    name: "status".into(),
                    before: Some(json!("new")),
                    after: Some(json!("paid")),
                }],
            })
        );
        // A large value is not repeated beside the document that holds it.
        let big = "x".repeat(DIFF_VALUE_BYTES + 1);
        let large = json!({"id": 1, "status": "paid", "body": big, "_meta": {"op": "u", "source": source,
            "before": {"id": 1, "status": "paid", "body": "short"}}});
        let fields = ChangeInfo::of(13, &large, &spec()).update.unwrap().fields;
        assert_eq!(
            fields,
            vec![FieldChange {
                name: "body".into(),
                before: Some(json!("short")),
                after: None,
            }]
        );
        assert_eq!(
            serde_json::to_value(&fields[0]).unwrap(),
            json!({"name": "body", "before": "short"})
        );
        // Only the old key: the key's change, nothing about the rest.
        let key = json!({"id": 2, "status": "x", "_meta": {"op": "u", "source": source, "before": {"id": 1}}});
        let diff = ChangeInfo::of(10, &key, &spec()).update.unwrap();
        assert_eq!(diff.before, BeforeImage::Key);
        assert_eq!(diff.fields.len(), 1);
        assert_eq!(diff.fields[0].name, "id");
        // No before image: not known, and nothing invented.
        let none = json!({"id": 2, "status": "x", "_meta": {"op": "u", "source": source}});
        assert_eq!(
            ChangeInfo::of(11, &none, &spec()).update,
            Some(UpdateDiff {
                before: BeforeImage::Unknown,
                fields: vec![],
            })
        );
        // Inserts have no diff; a backfilled row has no transaction.
        let snap = json!({"id": 3, "_meta": {"op": "c", "source": {"lsn": "0/10", "txid": 0, "ts_ms": 5, "snapshot": true}}});
        let info = ChangeInfo::of(12, &snap, &spec());
        assert!(info.snapshot && info.xid.is_none() && info.update.is_none());
        assert_eq!(info.lsn.as_deref(), Some("0/10"));
    }

    #[test]
    fn export_names_read_as_a_date_and_time() {
        let at = chrono::NaiveDate::from_ymd_opt(2026, 11, 30)
            .unwrap()
            .and_hms_opt(18, 5, 59)
            .unwrap();
        assert_eq!(
            export_stem("public/orders", View::Changes, at),
            "public_orders-changes-2026-11-30-1805"
        );
        assert_eq!(
            export_stem("a b", View::Rows, at),
            "a_b-rows-2026-11-30-1805"
        );
    }

    #[test]
    fn values_sort_as_postgresql_sorts_them() {
        let ranks = [
            Rank::of(Some(&json!(false)), false),
            Rank::of(Some(&json!(true)), false),
            Rank::of(Some(&json!("9.5")), true),
            Rank::of(Some(&json!(10)), false),
            Rank::of(Some(&json!("10")), false),
            Rank::of(Some(&json!("9")), false),
            Rank::of(Some(&json!({"a": 1})), false),
            Rank::of(Some(&Json::Null), false),
            Rank::of(None, false),
        ];
        for pair in ranks.windows(2) {
            assert_eq!(pair[0].cmp(&pair[1]), std::cmp::Ordering::Less, "{pair:?}");
        }
    }
}
