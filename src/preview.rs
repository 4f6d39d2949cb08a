//! What the Collections screen reads from a profile's store: the collections with their counts, a
//! page of current rows (reduced by key) or of the change log, each with the collection's key and
//! columns so the screen can lay out its table.
//!
//! It also exports a whole view (optionally filtered) as JSON Lines or CSV.
//!
//! Invariant: read-only. It opens the store beside a running capture (SQLite WAL: readers never block
//! the writer) and sees only what a store commit made durable.

use serde::Serialize;
use serde_json::Value as Json;

use crate::error::{Error, ErrorKind, Result};
use crate::profile::Profiles;
use crate::store::{CollectionInfo, CollectionSpec, Filter, Store};

/// Which view of a collection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum View {
    /// The current rows, one per key, in key order.
    #[default]
    Rows,
    /// The change log, in order.
    Changes,
}

/// One page of documents.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Page {
    /// The collection's description (key and columns).
    pub collection: CollectionSpec,
    /// The documents; for the change log, each with its log position.
    pub documents: Vec<Json>,
    /// For the change log: the position of the last entry (the next page, or a tail, starts after it).
    /// For rows: the newest log position when the page was read, so a tail that follows the page
    /// brings only later changes, not the whole log again.
    pub last_seq: u64,
    /// For rows: the key of the last row (the next page starts after it).
    pub last_key: Option<String>,
    /// Whether a next page may have more (this one was full).
    pub has_more: bool,
}

/// Which page to read.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PageRequest {
    /// Rows or changes.
    pub view: View,
    /// Changes: the page starts after this log position; none for the newest entries.
    #[serde(default)]
    pub after: Option<u64>,
    /// Rows: the page starts after this key; none for the first.
    #[serde(default)]
    pub after_key: Option<String>,
    /// At most this many documents (1–10,000).
    pub limit: usize,
    /// Only documents matching this.
    #[serde(default)]
    pub filter: Option<Filter>,
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

/// A page of `collection`: current rows in key order after `after_key`, or log entries after `after`
/// (the newest when `after` is none), at most `limit`, only those matching the filter.
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

/// A page read from an open store.
pub fn page_of(store: &Store, collection: &str, request: &PageRequest) -> Result<Page> {
    let spec = store
        .collection(collection)?
        .ok_or_else(|| missing(collection))?;
    let limit = request.limit.clamp(1, 10_000);
    let filter = request.filter.as_ref();
    let (documents, last_seq, last_key) = match request.view {
        View::Rows => {
            // Read before the rows: a change stored in between is in the page and heard again by
            // the tail (a re-read), never missed.
            let newest = store.last_seq(collection)?;
            let rows = store.rows_after(collection, request.after_key.as_deref(), limit, filter)?;
            let last_key = rows
                .last()
                .map(|(key, _)| key.clone())
                .or_else(|| request.after_key.clone());
            (
                rows.into_iter().map(|(_, doc)| doc).collect::<Vec<_>>(),
                newest,
                last_key,
            )
        }
        View::Changes => {
            let entries = match request.after {
                Some(after) => store.changes_matching(collection, after, limit, filter)?,
                None => store.latest_changes_matching(collection, limit, filter)?,
            };
            let last = entries
                .last()
                .map(|(seq, _)| *seq)
                .unwrap_or(request.after.unwrap_or(0));
            (
                entries.into_iter().map(|(_, doc)| doc).collect(),
                last,
                None,
            )
        }
    };
    Ok(Page {
        collection: spec,
        has_more: documents.len() == limit,
        documents,
        last_seq,
        last_key,
    })
}

/// A file format for [`export`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum ExportFormat {
    /// One document per line, exactly as stored.
    Jsonl,
    /// One row per document: the collection's columns (and `op` for the change log). Strings as
    /// they are, other values as JSON, NULL and absent values as empty cells.
    Csv,
}

/// What an export wrote.
#[derive(Debug, Clone, Serialize)]
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
/// `dir` named after the collection and view. The file appears complete or not at all: it is written
/// under a temporary name and renamed.
pub fn export(
    profiles: &Profiles,
    id_or_name: &str,
    collection: &str,
    view: View,
    filter: Option<Filter>,
    format: ExportFormat,
    dir: &std::path::Path,
) -> Result<Exported> {
    let store = open(profiles, id_or_name)?.ok_or_else(|| missing(collection))?;
    let spec = store
        .collection(collection)?
        .ok_or_else(|| missing(collection))?;
    // Seconds since the epoch keep names unique per second and sortable.
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let name = format!(
        "{}-{}-{stamp}.{}",
        collection.replace(['/', '\\', ' '], "_"),
        match view {
            View::Rows => "rows",
            View::Changes => "changes",
        },
        match format {
            ExportFormat::Jsonl => "jsonl",
            ExportFormat::Csv => "csv",
        }
    );
    // Exports are plain files the user asked for, but hold captured rows: owner-only, like the store.
    crate::owner_only::create_dir_all(dir).map_err(|e| {
        Error::invalid_input(
            "export folder",
            format!("cannot create {}: {e}", dir.display()),
        )
    })?;
    let path = dir.join(&name);
    let partial = dir.join(format!(".{name}.partial"));
    let written = write_export(&store, &spec, collection, view, filter, format, &partial);
    let documents = match written {
        Ok(n) => n,
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            return Err(e);
        }
    };
    std::fs::rename(&partial, &path)
        .map_err(|e| Error::internal(format!("finishing {}: {e}", path.display())))?;
    Ok(Exported { path, documents })
}

fn write_export(
    store: &Store,
    spec: &CollectionSpec,
    collection: &str,
    view: View,
    filter: Option<Filter>,
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
