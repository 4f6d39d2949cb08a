//! The local collection store: for each collection, its change log and its current rows reduced by key,
//! in one SQLite database (`tidepool.db` in the store folder; WAL journal, `synchronous=FULL`).
//!
//! Invariants:
//! - Changes and the capture's checkpoint LSN are committed in the same SQLite transaction
//!   ([`Store::commit`]); the capture reports an LSN to PostgreSQL only after that commit returns, so
//!   nothing is acknowledged before it is durably stored.
//! - A batch holds whole source transactions: a crash rolls back to the last checkpoint, never into the
//!   middle of a source transaction.
//! - Rows are reduced by key: an insert or update replaces the row, a delete removes it, a truncate
//!   empties the collection; every one of them is also appended to the change log, in order.
//! - A document is written once: the change log holds it, and a row is the key's pointer to the change
//!   that last wrote it (so a row always equals a logged document).
//! - A streamed insert or delete is stored without its `_meta.source` (about half its bytes): the
//!   change's `lsn`, `txid`, `ts_ms`, `source_table` and `meta_at` columns rebuild it, and every read
//!   of a change goes through [`DOC`] (`tidepool_doc`), so readers see whole documents, byte for byte
//!   what the capture built ([`crate::document::source_meta`]). `meta_at` NULL: the text is whole.
//! - A backfill's rows are a snapshot file ([`crate::store::snapshot`]), recorded in `snapshots` with the
//!   range of log positions its documents take. The live snapshot of a collection holds its base rows;
//!   `rows` holds what changed since, and shadows the file: an entry with a document replaces the
//!   file's row under that key, an entry without one (`seq IS NULL`) deletes it. `base` says whether
//!   the key has a row in the live snapshot, so counts need no file reads.
//! - Rows are kept in the order of their sort keys ([`crate::store::rowkey`]), in `rows` and in the files.
//! - A collection's changes are found through its runs (`change_runs`, [`runs`]), not an index: every
//!   change lies in a run of its collection, written in the same transaction.
//! - The store folder and everything in it are owner-only ([`crate::owner_only`]); the database file
//!   is made `0600` before SQLite opens it, so its `-wal` and `-shm` files are too.
//! - A large value is stored once in `large_values`, under the hash of its JSON, and documents and
//!   snapshot files' lines refer to it ([`crate::document::large_value`]); every read splices it back, so
//!   readers see whole documents.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;
use serde_json::Value as Json;

use crate::document::large_value::{parse_refs, splice, Document, Sink, ValueRef};
use crate::document::source_meta::SourceTable;
use crate::error::{Error, Result};
use crate::source::pgoutput::Lsn;
use crate::store::encryption::StoreKey;
use crate::store::rowkey::sort_key;
use crate::store::snapshot::{Rebuild, Snapshot, SnapshotSource};

// Documents and their operations are defined with the mapping that builds them; the store keeps them.
pub use crate::document::{CollectionSpec, Op};

mod base;
mod bulk;
pub mod encryption;
mod filter;
pub mod lock;
mod prune;
mod read;
pub mod retention;
pub mod rowkey;
mod runs;
pub mod snapshot;
#[cfg(test)]
mod tests;
mod write;

use base::Base;
pub use filter::Filter;
use filter::FilterParams;
pub use prune::Pruned;
use write::CHUNK;

/// A collection's counts, for `tidepool collections`.
#[derive(Debug, Clone, PartialEq, Serialize, ts_rs::TS)]
#[serde(rename_all = "camelCase")]
pub struct CollectionInfo {
    /// Name.
    pub name: String,
    /// Current rows.
    pub rows: u64,
    /// Entries in the change log.
    pub changes: u64,
    /// When the newest change happened at the source (`_meta.source.ts_ms` of the log's last entry:
    /// the commit time, or the backfill's read time), Unix milliseconds.
    pub last_change_ms: Option<i64>,
}

/// The store in one folder. Writes happen in a batch: [`Store::begin`], then [`Store::apply`] and
/// friends, then [`Store::commit`] with the new checkpoint (dropping the store rolls an open batch back).
pub struct Store {
    /// The multi-row inserts of `pending` into `changes` and `rows`, prepared on first use. Declared
    /// before `conn`: they are finalized before it closes ([`bulk`]).
    bulk_changes: Option<bulk::Bulk>,
    bulk_rows: Option<bulk::Bulk>,
    /// The same for a uniform chunk ([`write::uniform`]), with the values its changes share bound once.
    bulk_changes_uniform: Option<bulk::Bulk>,
    bulk_changes_append: Option<bulk::Bulk>,
    bulk_rows_uniform: Option<bulk::Bulk>,
    conn: Connection,
    path: PathBuf,
    batch: Option<u64>,
    /// A write of buffered changes failed and took its batch with it: no batch begins (so nothing is
    /// committed over the lost changes) until the caller acknowledges it with [`Store::rollback`].
    failed: bool,
    /// Collection name → its integer id in the tables.
    ids: rustc_hash::FxHashMap<String, i64>,
    /// The next change's position in the log.
    next_seq: i64,
    /// Inserts and upserts not yet written, so they can be written many rows per statement. Anything
    /// that must see them (a read, a delete, a key change, a truncate, a commit) writes them first.
    pending: Vec<Pending>,
    /// The sort keys and the canonical keys of `pending`, end to end: one buffer each instead of two
    /// allocations per change.
    pending_skeys: Vec<u8>,
    pending_keys: String,
    /// Cleared buffers of written documents and keys, handed out again by
    /// [`crate::document::LargeValues::spare_buffer`]: the capture's hot path then allocates no
    /// buffer per change once it runs (docs/benchmarks.md, issue 21, step 12).
    spare: Vec<String>,
    /// The bytes of the documents in `pending`: a few wide rows are written before `CHUNK` of them
    /// are held.
    pending_bytes: usize,
    /// Snapshot files opened so far, by their id in `snapshots`.
    opened: std::cell::RefCell<rustc_hash::FxHashMap<i64, std::sync::Arc<Base>>>,
    /// Each collection's live snapshot (its id), once looked up.
    live: std::cell::RefCell<rustc_hash::FxHashMap<i64, Option<i64>>>,
    /// The key of an encrypted store ([`crate::store::encryption`]); its snapshot files are sealed with it.
    key: Option<std::sync::Arc<StoreKey>>,
    /// Source table → its id in `source_tables`, for changes stored without their `_meta.source`
    /// ([`crate::document::source_meta`]); forgotten with a rolled-back batch, which may have added it.
    source_tables: rustc_hash::FxHashMap<std::sync::Arc<SourceTable>, i64>,
    /// The change run the open batch last wrote ([`runs`]); forgotten when a batch begins or is
    /// rolled back.
    run_tail: Option<runs::Tail>,
}

/// A change stored without its `_meta.source`: the columns that rebuild it
/// ([`crate::document::source_meta`]; the LSN is the change's own).
#[derive(Clone, Copy)]
struct StoredCut {
    at: i64,
    source_table: i64,
    txid: i64,
    ts_ms: i64,
}

struct Pending {
    seq: i64,
    collection: i64,
    lsn: Lsn,
    op: Op,
    /// Where its sort key is in [`Store`]'s `pending_skeys`.
    skey: std::ops::Range<usize>,
    /// Where its canonical key is in [`Store`]'s `pending_keys`.
    key: std::ops::Range<usize>,
    base: bool,
    doc: String,
    refs: Option<String>,
    cut: Option<StoredCut>,
}

/// Spare buffers [`Store`] keeps at most: a chunk's documents and the keys of the changes between.
const SPARE_BUFFERS: usize = 2 * CHUNK;

/// The largest buffer kept spare: a larger one (a wide row's document) is freed, so the spare
/// buffers hold at most `SPARE_BUFFERS` × this.
const SPARE_BUFFER_BYTES: usize = 64 * 1024;

/// SQLite's page cache while a large value is written: its pages are written once and not read
/// again, so they go to the WAL instead of filling the cache ([`CACHE`] otherwise).
const LARGE_VALUE_CACHE: &str = "PRAGMA cache_size = -2048";

/// SQLite's page cache: 16 MiB. The capture appends (the log, and rows mostly in key order), so a
/// larger cache only held pages already written; at 64 MiB it was most of the capture's peak memory
/// (docs/benchmarks.md, "Capture CPU (issue 21)").
const CACHE: &str = "PRAGMA cache_size = -16384";

/// The page size of a new plain store: 16 KiB, the encrypted store's too. The capture's large
/// transactions write and checkpoint each page once, with a quarter of the system calls of SQLite's
/// default of 4 KiB (docs/benchmarks.md, "Capture CPU (issue 21)", step 8).
const PAGE_SIZE: &str = "PRAGMA page_size = 16384";

/// What a store folder holds: the database and the journal files SQLite keeps beside it, the
/// consumers' ledger ([`crate::deliver`]), the snapshot files, and the capture's backfill staging
/// stores ([`crate::capture`]). Tightened on open.
const STORE_ENTRIES: &[&str] = &[
    crate::store::lock::LOCK_FILE,
    "tidepool.db",
    "tidepool.db-wal",
    "tidepool.db-shm",
    "tidepool.db-journal",
    "consumers.db",
    "consumers.db-wal",
    "consumers.db-shm",
    "encryption.json",
    "snapshots",
    "backfills",
];

/// Maps a SQLite error to the engine's: a full disk is a [`crate::ErrorKind::Storage`] error that says so
/// (the caller adds where the store is), anything else is internal.
fn sqlite(context: &str) -> impl Fn(rusqlite::Error) -> Error + '_ {
    move |e| {
        let full = matches!(
            &e,
            rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::DiskFull
        );
        if full {
            Error::new(
                crate::ErrorKind::Storage,
                format!("store: {context}: the disk holding the store is full ({e}); nothing unstored was confirmed to PostgreSQL: free some space and start the capture again"),
            )
        } else {
            Error::internal(format!("store: {context}: {e}"))
        }
    }
}

/// The page size of an encrypted store's databases. Fixed: a database is read with the size it was
/// written with.
const CIPHER_PAGE_BYTES: u32 = 16384;

/// Opens the SQLite database at `path` of the store folder `dir`, with `key` when it is encrypted,
/// and proves the key by reading it: a wrong or missing key is a [`crate::ErrorKind::Locked`] error
/// here, never garbage later. Shared with the consumers' ledger, which lives in the same folder.
pub fn open_database(path: &Path, dir: &Path, key: Option<&StoreKey>) -> Result<Connection> {
    let conn = Connection::open(path).map_err(sqlite("opening"))?;
    // SQLCipher would otherwise write its own lines to stderr on a wrong key; the error below says it.
    let _ = conn.execute_batch("PRAGMA cipher_log_level = NONE;");
    if let Some(key) = key {
        // 16 KiB cipher pages: SQLCipher encrypts and MACs each page, and a bulk write costs about half
        // as much more over plain with pages four times SQLite's default (docs/benchmarks.md). The
        // default is set too, so a staging store attached with the key reads with the same size.
        conn.execute_batch(&format!(
            "PRAGMA cipher_default_page_size = {CIPHER_PAGE_BYTES};"
        ))
        .map_err(sqlite("opening"))?;
        conn.execute_batch(key.sqlcipher_pragma().expose())
            .map_err(|_| crate::store::encryption::lost(dir, "SQLCipher refused its key"))?;
        conn.execute_batch(&format!("PRAGMA cipher_page_size = {CIPHER_PAGE_BYTES};"))
            .map_err(sqlite("opening"))?;
    }
    // Another process (the command line editing the definition, a preview) may hold the write
    // lock for a moment; wait for it instead of failing.
    conn.busy_timeout(std::time::Duration::from_secs(30))
        .map_err(sqlite("opening"))?;
    match conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get::<_, i64>(0)) {
        Ok(_) => Ok(conn),
        Err(rusqlite::Error::SqliteFailure(f, _)) if f.code == rusqlite::ErrorCode::NotADatabase => {
            Err(match key {
                Some(_) => crate::store::encryption::lost(dir, "its key from the keychain does not open it (the key was replaced, or the file is damaged)"),
                None => crate::store::encryption::lost(
                    dir,
                    &format!(
                        "{} is not a readable database: it is encrypted but its marker ({}) is missing, or it is damaged",
                        path.display(),
                        crate::store::encryption::MARKER
                    ),
                ),
            })
        }
        Err(e) => Err(sqlite("opening")(e)),
    }
}

fn parse(doc: String) -> Result<Json> {
    serde_json::from_str(&doc)
        .map_err(|e| Error::internal(format!("store: a stored document is not JSON: {e}")))
}

/// Appends the JSON of the large value stored under `hash` to `out`, read in place from SQLite.
fn read_value(conn: &Connection, hash: &str, out: &mut Vec<u8>) -> Result<()> {
    use std::io::Read;
    let id: i64 = conn
        .prepare_cached("SELECT id FROM large_values WHERE hash = ?1")
        .and_then(|mut s| s.query_row([hash], |r| r.get(0)))
        .optional()
        .map_err(sqlite("reading a large value"))?
        .ok_or_else(|| Error::internal(format!("store: large value {hash} is missing")))?;
    let mut blob = conn
        .blob_open("main", "large_values", "json", id, true)
        .map_err(sqlite("reading a large value"))?;
    out.reserve(blob.len());
    blob.read_to_end(out)
        .map_err(|e| Error::internal(format!("store: reading large value {hash}: {e}")))?;
    Ok(())
}

/// A stored document with its large values spliced in.
fn whole_document(conn: &Connection, doc: String, refs: Option<String>) -> Result<String> {
    match refs {
        None => Ok(doc),
        Some(refs) => splice(&doc, &parse_refs(&refs)?, |hash, out| {
            read_value(conn, hash, out)
        }),
    }
}

/// What large values need ([`crate::document::large_value`]): their table, a `refs` column beside each stored
/// document (added to stores made before values were shared), the `tidepool_field` function filters
/// use, and a cap on the WAL kept after a checkpoint (a 100 MiB value would otherwise leave a
/// 100 MiB `-wal` file behind).
fn large_value_schema(conn: &Connection) -> Result<()> {
    conn.execute_batch(
        "PRAGMA journal_size_limit = 8388608;
         CREATE TABLE IF NOT EXISTS large_values (
           id INTEGER PRIMARY KEY,
           hash TEXT NOT NULL UNIQUE,
           json BLOB NOT NULL);",
    )
    .map_err(sqlite("creating the schema"))?;
    add_column(conn, "changes", "refs TEXT")?;
    add_column(conn, "held", "refs TEXT")?;
    register_document_function(conn)
}

/// What changes stored without their `_meta.source` need ([`crate::document::source_meta`]): the
/// source tables' names, the columns beside each change that rebuild its source (`meta_at` NULL:
/// the document is whole), and the `tidepool_doc` function every read of a change goes through
/// ([`DOC`]).
fn source_meta_schema(conn: &Connection) -> Result<()> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS source_tables (
           id INTEGER PRIMARY KEY,
           schema_name TEXT NOT NULL,
           table_name TEXT NOT NULL,
           UNIQUE (schema_name, table_name));",
    )
    .map_err(sqlite("creating the schema"))?;
    for column in [
        "meta_at INTEGER",
        "source_table INTEGER",
        "txid INTEGER",
        "ts_ms INTEGER",
    ] {
        add_column(conn, "changes", column)?;
    }
    use rusqlite::functions::FunctionFlags;
    conn.create_scalar_function(
        "tidepool_doc",
        7,
        FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC,
        |ctx| -> rusqlite::Result<String> {
            let text = ctx.get_raw(0).as_str().map_err(|e| {
                rusqlite::Error::UserFunctionError(Box::new(Error::internal(format!(
                    "store: a change's document is not text: {e}"
                ))))
            })?;
            let at: i64 = ctx.get(1)?;
            let schema: Option<String> = ctx.get(2)?;
            let table: Option<String> = ctx.get(3)?;
            let lsn: i64 = ctx.get(4)?;
            let txid: i64 = ctx.get(5)?;
            let ts_ms: i64 = ctx.get(6)?;
            let whole = match (schema, table) {
                (Some(schema), Some(table)) => crate::document::source_meta::splice(
                    text,
                    usize::try_from(at).unwrap_or(usize::MAX),
                    &SourceTable { schema, table },
                    Lsn(lsn as u64),
                    txid as u32,
                    ts_ms,
                ),
                _ => None,
            };
            whole.ok_or_else(|| {
                rusqlite::Error::UserFunctionError(Box::new(Error::internal(format!(
                    "store: a change stored without its source (at byte {at}) cannot be made whole: \
                     its source table is missing or the position is outside its document"
                ))))
            })
        },
    )
    .map_err(sqlite("registering tidepool_doc"))
}

/// A change's whole document text in a query over `changes c` joined with [`SOURCE_JOIN`]: the
/// stored text, with `_meta.source` put back when it was left out.
macro_rules! doc_sql {
    () => {
        "CASE WHEN c.meta_at IS NULL THEN c.doc ELSE tidepool_doc(c.doc, c.meta_at, s.schema_name, s.table_name, c.lsn, c.txid, c.ts_ms) END"
    };
}
pub(crate) use doc_sql;

/// [`doc_sql!`] as a constant.
pub(super) const DOC: &str = doc_sql!();

/// The join every query reading [`DOC`] needs.
pub(super) const SOURCE_JOIN: &str = "LEFT JOIN source_tables s ON s.id = c.source_table";

/// Adds a column to a table of a store created before it existed.
fn add_column(conn: &Connection, table: &str, column: &str) -> Result<()> {
    let name = column.split(' ').next().unwrap_or(column);
    let present = || -> Result<bool> {
        conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM pragma_table_info(?1) WHERE name = ?2)",
            [table, name],
            |r| r.get(0),
        )
        .map_err(sqlite("reading the schema"))
    };
    if present()? {
        return Ok(());
    }
    match conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column}")) {
        Ok(()) => Ok(()),
        // Another connection opening the same store (the running capture, a preview) added it
        // between the check and here: it is there, which is all that is asked.
        Err(_) if present()? => Ok(()),
        Err(e) => Err(sqlite("adding a column")(e)),
    }
}

/// Registers `tidepool_field(doc, refs, path)`: the top-level field at `path` (`$."name"`) of a
/// document with large values, as text by [`Filter::matches`]'s rule (NULL when absent), with the
/// values under that field spliced in. Filters on documents with references use it.
fn register_document_function(conn: &Connection) -> Result<()> {
    use rusqlite::functions::FunctionFlags;
    conn.create_scalar_function(
        "tidepool_field",
        3,
        FunctionFlags::SQLITE_UTF8,
        |ctx| -> rusqlite::Result<Option<String>> {
            let doc: String = ctx.get(0)?;
            let refs: Option<String> = ctx.get(1)?;
            let path: String = ctx.get(2)?;
            let field = path
                .strip_prefix("$.\"")
                .and_then(|p| p.strip_suffix('"'))
                .unwrap_or(&path)
                .to_string();
            let user = |e: Error| rusqlite::Error::UserFunctionError(Box::new(e));
            let refs: Vec<ValueRef> = match refs {
                Some(refs) => parse_refs(&refs)
                    .map_err(user)?
                    .into_iter()
                    .filter(|r| r.path.first() == Some(&field))
                    .collect(),
                None => Vec::new(),
            };
            let doc = if refs.is_empty() {
                doc
            } else {
                // SAFETY: the connection is the one running this statement, alive while it runs.
                let conn = unsafe { ctx.get_connection()? };
                splice(&doc, &refs, |hash, out| read_value(&conn, hash, out)).map_err(user)?
            };
            let mut doc = parse(doc).map_err(user)?;
            Ok(doc.get_mut(&field).map(|value| match value.take() {
                Json::String(s) => s,
                other => other.to_string(),
            }))
        },
    )
    .map_err(sqlite("registering tidepool_field"))
}

fn collection_ids(conn: &Connection) -> Result<rustc_hash::FxHashMap<String, i64>> {
    let mut stmt = conn
        .prepare("SELECT name, id FROM collections")
        .map_err(sqlite("reading collections"))?;
    let pairs = stmt
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
        .map_err(sqlite("reading collections"))?;
    pairs
        .collect::<std::result::Result<_, _>>()
        .map_err(sqlite("reading collections"))
}

fn next_seq(conn: &Connection) -> Result<i64> {
    conn.query_row(
        "SELECT max(COALESCE((SELECT max(seq) FROM changes), 0),
                    COALESCE((SELECT max(first_seq + rows - 1) FROM snapshots), 0)) + 1",
        [],
        |r| r.get(0),
    )
    .map_err(sqlite("reading the log's end"))
}

const ROWS_TABLE: &str = "CREATE TABLE IF NOT EXISTS rows (
       collection INTEGER NOT NULL,
       skey BLOB NOT NULL,
       key TEXT NOT NULL,
       seq INTEGER,
       base INTEGER NOT NULL DEFAULT 0,
       PRIMARY KEY (collection, skey)) WITHOUT ROWID;";

/// Creates `rows`, or moves a store written before rows had sort keys to the current layout (one
/// transaction: a crash leaves the old layout, and the next open moves it again).
fn create_rows(conn: &Connection) -> Result<()> {
    let columns: Vec<String> = conn
        .prepare("SELECT name FROM pragma_table_info('rows')")
        .and_then(|mut s| {
            s.query_map([], |r| r.get(0))?
                .collect::<std::result::Result<_, _>>()
        })
        .map_err(sqlite("reading the schema"))?;
    if columns.is_empty() || columns.iter().any(|c| c == "skey") {
        return conn
            .execute_batch(ROWS_TABLE)
            .map_err(sqlite("creating the schema"));
    }
    in_transaction(conn, "moving rows", || {
        conn.execute_batch("ALTER TABLE rows RENAME TO rows_before_sort_keys;")
            .map_err(sqlite("moving rows"))?;
        conn.execute_batch(ROWS_TABLE)
            .map_err(sqlite("moving rows"))?;
        let old: Vec<(i64, String, i64)> = conn
            .prepare("SELECT collection, key, seq FROM rows_before_sort_keys")
            .and_then(|mut s| {
                s.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                    .collect::<std::result::Result<_, _>>()
            })
            .map_err(sqlite("moving rows"))?;
        let mut insert = conn
            .prepare("INSERT INTO rows (collection, skey, key, seq) VALUES (?1, ?2, ?3, ?4)")
            .map_err(sqlite("moving rows"))?;
        for (collection, key, seq) in old {
            insert
                .execute(params![collection, sort_key(&key)?, key, seq])
                .map_err(sqlite("moving rows"))?;
        }
        conn.execute_batch("DROP TABLE rows_before_sort_keys;")
            .map_err(sqlite("moving rows"))
    })
}

/// Runs `steps` of a schema change in one transaction: an error or a crash leaves the layout
/// before it, and the next open makes the change again.
fn in_transaction(
    conn: &Connection,
    what: &'static str,
    steps: impl FnOnce() -> Result<()>,
) -> Result<()> {
    conn.execute_batch("BEGIN IMMEDIATE")
        .map_err(sqlite(what))?;
    let done = steps().and_then(|_| conn.execute_batch("COMMIT").map_err(sqlite(what)));
    if done.is_err() {
        let _ = conn.execute_batch("ROLLBACK");
    }
    done
}

fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn read_checkpoint(conn: &Connection) -> Result<Lsn> {
    let value: Option<String> = conn
        .query_row("SELECT value FROM meta WHERE key = 'checkpoint'", [], |r| {
            r.get(0)
        })
        .optional()
        .map_err(sqlite("reading the checkpoint"))?;
    Ok(Lsn(value.and_then(|v| v.parse().ok()).unwrap_or(0)))
}

impl Store {
    /// Opens the store in `dir` if one was ever created there; `None` before a capture's first run.
    /// Readers use this so that looking never creates an empty store.
    pub fn open_existing(dir: &Path) -> Result<Option<Store>> {
        if !dir.join("tidepool.db").exists() {
            return Ok(None);
        }
        Store::open(dir).map(Some)
    }

    /// Opens (creating if needed) the store in `dir`. The folder and its files are owner-only
    /// ([`crate::owner_only`]); an existing store is tightened first. A folder marked encrypted
    /// ([`crate::store::encryption`]) is opened with its key from the OS keychain.
    pub fn open(dir: &Path) -> Result<Store> {
        let key = crate::store::encryption::key_for(dir)?;
        Store::open_keyed(dir, key)
    }

    /// Opens (creating if needed) the store in `dir` with `key` (none: not encrypted): a staging
    /// store inside an encrypted store's folder is encrypted with that store's key.
    pub fn open_keyed(dir: &Path, key: Option<std::sync::Arc<StoreKey>>) -> Result<Store> {
        crate::owner_only::create_dir_all(dir).map_err(|e| {
            Error::invalid_input("--store", format!("cannot create {}: {e}", dir.display()))
        })?;
        crate::owner_only::tighten(dir, STORE_ENTRIES);
        let path = dir.join("tidepool.db");
        // SQLite gives its -wal and -shm files the database file's mode: make that 0600 first.
        crate::owner_only::create_keep(&path).map_err(|e| {
            Error::invalid_input("--store", format!("cannot create {}: {e}", path.display()))
        })?;
        let conn = open_database(&path, dir, key.as_deref())?;
        if key.is_none() {
            // A new database only (SQLite keeps an existing one's size, and an encrypted one has its
            // cipher's, the same).
            conn.execute_batch(PAGE_SIZE).map_err(sqlite("opening"))?;
        }
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = FULL;
             PRAGMA foreign_keys = OFF;
             CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS collections (
               id INTEGER PRIMARY KEY,
               name TEXT NOT NULL UNIQUE,
               schema_name TEXT NOT NULL,
               table_name TEXT NOT NULL,
               key_columns TEXT NOT NULL,
               columns TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS changes (
               seq INTEGER PRIMARY KEY,
               collection INTEGER NOT NULL,
               lsn INTEGER NOT NULL,
               op TEXT NOT NULL,
               doc TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS snapshots (
               id INTEGER PRIMARY KEY,
               collection INTEGER NOT NULL,
               first_seq INTEGER NOT NULL,
               rows INTEGER NOT NULL,
               file TEXT NOT NULL,
               live INTEGER NOT NULL,
               source TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS held (
               n INTEGER PRIMARY KEY,
               collection TEXT NOT NULL,
               lsn INTEGER NOT NULL,
               op TEXT NOT NULL,
               key TEXT NOT NULL,
               old_key TEXT,
               doc TEXT NOT NULL);",
        )
        .map_err(sqlite("creating the schema"))?;
        conn.execute_batch(CACHE)
            .map_err(sqlite("creating the schema"))?;
        create_rows(&conn)?;
        large_value_schema(&conn)?;
        source_meta_schema(&conn)?;
        runs::schema(&conn)?;
        let ids = collection_ids(&conn)?;
        let next_seq = next_seq(&conn)?;
        Ok(Store {
            bulk_changes: None,
            bulk_rows: None,
            bulk_changes_uniform: None,
            bulk_changes_append: None,
            bulk_rows_uniform: None,
            conn,
            path,
            batch: None,
            failed: false,
            ids,
            next_seq,
            pending: Vec::with_capacity(CHUNK),
            pending_skeys: Vec::with_capacity(CHUNK * 16),
            pending_keys: String::with_capacity(CHUNK * 16),
            spare: Vec::with_capacity(SPARE_BUFFERS),
            pending_bytes: 0,
            opened: Default::default(),
            live: Default::default(),
            key,
            source_tables: Default::default(),
            run_tail: None,
        })
    }

    /// The store's key, if it is encrypted.
    pub fn key(&self) -> Option<std::sync::Arc<StoreKey>> {
        self.key.clone()
    }

    fn id_of(&self, name: &str) -> Result<i64> {
        self.ids.get(name).copied().ok_or_else(|| {
            Error::new(
                crate::ErrorKind::NotFound,
                format!("no collection named '{name}' in {}", self.path.display()),
            )
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The checkpoint: the end LSN of the last stored source transaction (or of the last idle
    /// keepalive), `0/0` for a new store.
    pub fn checkpoint(&self) -> Result<Lsn> {
        read_checkpoint(&self.conn)
    }

    /// When the checkpoint last moved forward (Unix milliseconds), if it ever did.
    pub fn checkpoint_at(&self) -> Result<Option<i64>> {
        Ok(self.meta("checkpoint_at")?.and_then(|v| v.parse().ok()))
    }

    /// Forgets everything the capture stored (collections, rows, the log, held changes, the checkpoint
    /// and the capture's state) but the meta values named in `keep`, in one transaction. Used after the
    /// slot is dropped: the checkpoint means nothing without it, so the next start backfills afresh.
    pub fn forget_capture(&mut self, keep: &[&str]) -> Result<()> {
        if self.batch.is_some() {
            return Err(Error::internal("store: forget_capture inside a batch"));
        }
        self.begin()?;
        let kept: Vec<(String, String)> = keep
            .iter()
            .filter_map(|k| {
                self.meta(k)
                    .transpose()
                    .map(|v| v.map(|v| (k.to_string(), v)))
            })
            .collect::<Result<_>>()?;
        let cleared = self.conn.execute_batch(
            "DELETE FROM changes; DELETE FROM change_runs; DELETE FROM rows; DELETE FROM held; DELETE FROM snapshots; DELETE FROM collections; DELETE FROM meta; DELETE FROM large_values; DELETE FROM source_tables;",
        );
        if let Err(e) = cleared {
            self.rollback()?;
            return Err(sqlite("forgetting the capture")(e));
        }
        for (key, value) in &kept {
            self.set_meta(key, value)?;
        }
        self.conn
            .execute_batch("COMMIT")
            .map_err(sqlite("committing"))?;
        self.batch = None;
        self.ids.clear();
        self.source_tables.clear();
        self.next_seq = 1;
        self.opened.borrow_mut().clear();
        self.live.borrow_mut().clear();
        self.remove_unrecorded_snapshots()
    }

    /// A value the engine keeps about this store (e.g. the slot a backfill created).
    pub fn meta(&self, key: &str) -> Result<Option<String>> {
        self.conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()
            .map_err(sqlite("reading meta"))
    }

    /// Sets a meta value in the open batch (committed with it).
    pub fn set_meta(&mut self, key: &str, value: &str) -> Result<()> {
        self.begin()?;
        self.conn
            .execute("INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = excluded.value", [key, value])
            .map_err(sqlite("writing meta"))?;
        Ok(())
    }

    /// Sets a meta value in a transaction of its own, for writers other than the capture (the
    /// definition editor). Refused while this store has a batch open.
    pub fn put_meta(&mut self, key: &str, value: &str) -> Result<()> {
        if self.batch.is_some() {
            return Err(Error::internal("store: put_meta inside a batch"));
        }
        self.conn
            .execute("INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = excluded.value", [key, value])
            .map_err(sqlite("writing meta"))?;
        Ok(())
    }

    /// Every collection with its counts.
    pub fn collections(&self) -> Result<Vec<CollectionInfo>> {
        // A collection's changes through its runs ([`runs::RUNS`], the change named `h` here).
        const RUNS_H: &str = "change_runs r JOIN changes h
             ON h.seq BETWEEN r.first_seq AND r.last_seq AND h.collection = r.collection";
        let mut stmt = self
            .conn
            .prepare(&format!(
                "SELECT c.name,
                        (SELECT count(*) FROM rows r WHERE r.collection = c.id AND r.seq IS NOT NULL AND r.base = 0)
                          + (SELECT COALESCE(sum(s.rows), 0) FROM snapshots s WHERE s.collection = c.id AND s.live = 1)
                          - (SELECT count(*) FROM rows r WHERE r.collection = c.id AND r.seq IS NULL),
                        (SELECT COALESCE(sum(r.changes), 0) FROM change_runs r WHERE r.collection = c.id)
                          + (SELECT COALESCE(sum(s.rows), 0) FROM snapshots s WHERE s.collection = c.id),
                        CASE WHEN (SELECT h.seq FROM {RUNS_H} WHERE r.collection = c.id
                                    ORDER BY r.first_seq DESC, h.seq DESC LIMIT 1)
                                  >= COALESCE((SELECT max(s.first_seq + s.rows - 1) FROM snapshots s WHERE s.collection = c.id), 0)
                             THEN (SELECT COALESCE(h.ts_ms, json_extract(h.doc, '$._meta.source.ts_ms')) FROM {RUNS_H}
                                    WHERE r.collection = c.id ORDER BY r.first_seq DESC, h.seq DESC LIMIT 1)
                             ELSE (SELECT json_extract(s.source, '$.tsMs') FROM snapshots s
                                    WHERE s.collection = c.id ORDER BY s.first_seq DESC LIMIT 1) END
                   FROM collections c ORDER BY c.name"
            ))
            .map_err(sqlite("listing collections"))?;
        let rows = stmt
            .query_map([], |r| {
                Ok(CollectionInfo {
                    name: r.get(0)?,
                    rows: r.get::<_, i64>(1)? as u64,
                    changes: r.get::<_, i64>(2)? as u64,
                    last_change_ms: r.get(3)?,
                })
            })
            .map_err(sqlite("listing collections"))?;
        rows.collect::<std::result::Result<_, _>>()
            .map_err(sqlite("listing collections"))
    }

    /// The newest position in a collection's change log (its snapshots' ranges included), 0 when
    /// the log is empty: a tail that starts after it hears only what is stored later.
    pub fn last_seq(&self, collection: &str) -> Result<u64> {
        let id = self.id_of(collection)?;
        self.conn
            .prepare_cached(&format!(
                "SELECT max(COALESCE((SELECT c.seq FROM {} WHERE r.collection = ?1 AND {}
                                      ORDER BY r.first_seq DESC, c.seq DESC LIMIT 1), 0),
                            COALESCE((SELECT max(first_seq + rows - 1) FROM snapshots WHERE collection = ?1 AND rows > 0), 0))",
                runs::RUNS,
                runs::SPAN
            ))
            .and_then(|mut s| s.query_row([id], |r| r.get::<_, i64>(0)))
            .map(|seq| seq as u64)
            .map_err(sqlite("reading the change log's end"))
    }

    /// A collection's description.
    pub fn collection(&self, name: &str) -> Result<Option<CollectionSpec>> {
        self.conn
            .query_row(
                "SELECT name, schema_name, table_name, key_columns, columns FROM collections WHERE name = ?1",
                [name],
                |r| {
                    let key: String = r.get(3)?;
                    let columns: String = r.get(4)?;
                    Ok(CollectionSpec {
                        name: r.get(0)?,
                        schema: r.get(1)?,
                        table: r.get(2)?,
                        key: serde_json::from_str(&key).unwrap_or_default(),
                        columns: serde_json::from_str(&columns).unwrap_or(Json::Null),
                    })
                },
            )
            .optional()
            .map_err(sqlite("reading a collection"))
    }
}
