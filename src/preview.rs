//! What the Collections screen reads from a profile's store: the collections with their counts, a
//! page of current rows (reduced by key) or of the change log, each with the collection's key and
//! columns so the screen can lay out its table.
//!
//! Invariant: read-only. It opens the store beside a running capture (SQLite WAL: readers never block
//! the writer) and sees only what a store commit made durable.

use serde::Serialize;
use serde_json::Value as Json;

use crate::error::{Error, ErrorKind, Result};
use crate::profile::Profiles;
use crate::store::{CollectionInfo, CollectionSpec, Store};

/// Which view of a collection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum View {
    /// The current rows, one per key, in key order.
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
    pub last_seq: u64,
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

/// A page of `collection`: current rows (at most `limit`), or log entries after `after` (the newest
/// `limit` when `after` is none).
pub fn page(
    profiles: &Profiles,
    id_or_name: &str,
    collection: &str,
    view: View,
    after: Option<u64>,
    limit: usize,
) -> Result<Page> {
    let missing = || {
        Error::new(
            ErrorKind::NotFound,
            format!("no collection named '{collection}' yet: start the capture first"),
        )
    };
    let store = open(profiles, id_or_name)?.ok_or_else(missing)?;
    let spec = store.collection(collection)?.ok_or_else(missing)?;
    let limit = limit.clamp(1, 10_000);
    let (documents, last_seq) = match view {
        View::Rows => (store.rows(collection, limit)?, 0),
        View::Changes => {
            let entries = match after {
                Some(after) => store.changes(collection, after, limit)?,
                None => store.latest_changes(collection, limit)?,
            };
            let last = entries
                .last()
                .map(|(seq, _)| *seq)
                .unwrap_or(after.unwrap_or(0));
            (entries.into_iter().map(|(_, doc)| doc).collect(), last)
        }
    };
    Ok(Page {
        collection: spec,
        documents,
        last_seq,
    })
}
