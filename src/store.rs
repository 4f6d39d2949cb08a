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
//! - A backfill's rows are a snapshot file ([`crate::snapshot`]), recorded in `snapshots` with the
//!   range of log positions its documents take. The live snapshot of a collection holds its base rows;
//!   `rows` holds what changed since, and shadows the file: an entry with a document replaces the
//!   file's row under that key, an entry without one (`seq IS NULL`) deletes it. `base` says whether
//!   the key has a row in the live snapshot, so counts need no file reads.
//! - Rows are kept in the order of their sort keys ([`crate::rowkey`]), in `rows` and in the files.
//! - The store folder and everything in it are owner-only ([`crate::owner_only`]); the database file
//!   is made `0600` before SQLite opens it, so its `-wal` and `-shm` files are too.
//! - A large value is stored once in `large_values`, under the hash of its JSON, and documents and
//!   snapshot files' lines refer to it ([`crate::large_value`]); every read splices it back, so
//!   readers see whole documents.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;
use serde_json::Value as Json;

use crate::encryption::StoreKey;
use crate::error::{Error, Result};
use crate::large_value::{parse_refs, splice, Document, Sink, ValueRef};
use crate::pgoutput::Lsn;
use crate::rowkey::sort_key;
use crate::snapshot::{Rebuild, Snapshot, SnapshotSource};

// Documents and their operations are defined with the mapping that builds them; the store keeps them.
pub use crate::document::{CollectionSpec, Op};

/// A collection's counts, for `tidepool collections`.
#[derive(Debug, Clone, PartialEq, Serialize)]
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
    conn: Connection,
    path: PathBuf,
    batch: Option<u64>,
    /// Collection name → its integer id in the tables.
    ids: std::collections::HashMap<String, i64>,
    /// The next change's position in the log.
    next_seq: i64,
    /// Inserts and upserts not yet written, so they can be written many rows per statement. Anything
    /// that must see them (a read, a delete, a key change, a truncate, a commit) writes them first.
    pending: Vec<Pending>,
    /// The bytes of the documents in `pending`: a few wide rows are written before `CHUNK` of them
    /// are held.
    pending_bytes: usize,
    /// Snapshot files opened so far, by their id in `snapshots`.
    opened: std::cell::RefCell<std::collections::HashMap<i64, std::sync::Arc<Base>>>,
    /// Each collection's live snapshot (its id), once looked up.
    live: std::cell::RefCell<std::collections::HashMap<i64, Option<i64>>>,
    /// The key of an encrypted store ([`crate::encryption`]); its snapshot files are sealed with it.
    key: Option<std::sync::Arc<StoreKey>>,
}

struct Pending {
    seq: i64,
    collection: i64,
    lsn: Lsn,
    op: Op,
    skey: Vec<u8>,
    key: String,
    base: bool,
    doc: String,
    refs: Option<String>,
}

/// A recorded snapshot file, open, with what its documents are rebuilt from.
struct Base {
    file: Snapshot,
    first_seq: u64,
    collection: String,
    source: SnapshotSource,
    /// The block read last: keys looked up one after another often fall in it.
    last_block: std::sync::Mutex<Option<(usize, std::sync::Arc<crate::snapshot::Block>)>>,
}

/// Turns a snapshot file's lines into the documents that match a filter, screening lines with the
/// file's needle before building their documents.
struct Matching<'f> {
    rebuild: Rebuild,
    needle: Option<memchr::memmem::Finder<'static>>,
    filter: Option<&'f Filter>,
}

impl Matching<'_> {
    /// The line's document, whole, if it matches. A line whose large values are references cannot
    /// be screened: the values are not in it.
    fn document(&mut self, conn: &Connection, line: &[u8]) -> Result<Option<Json>> {
        if self.needle.as_ref().is_some_and(|n| n.find(line).is_none())
            && !crate::document::copy_text::may_hold_refs(line)
        {
            return Ok(None);
        }
        let doc = self.rebuild.document(line)?;
        let doc = parse(splice(&doc.text, &doc.refs, |hash, out| {
            read_value(conn, hash, out)
        })?)?;
        Ok(self.filter.is_none_or(|f| f.matches(&doc)).then_some(doc))
    }
}

impl Base {
    fn rebuild(&self) -> Rebuild {
        Rebuild::new(&self.collection, &self.source)
    }

    /// The documents of this file's lines that match `filter` (all of them without one).
    fn matching<'f>(&self, filter: Option<&'f Filter>) -> Matching<'f> {
        Matching {
            rebuild: self.rebuild(),
            needle: self.needle(filter),
            filter,
        }
    }

    /// Bytes that every line of this file whose document matches `filter` contains, when the line
    /// alone can tell: the filter is on a text, uuid or integer column, whose document text is the
    /// line's field as it stands, and its value has nothing COPY escapes. A line without them is
    /// passed over without building its document (a filtered scan of 1M rows: 2 s before).
    fn needle(&self, filter: Option<&Filter>) -> Option<memchr::memmem::Finder<'static>> {
        use crate::value::Kind;
        let f = filter?;
        let column = self.source.columns.iter().find(|c| c.name == f.field)?;
        if !matches!(column.kind, Kind::Text | Kind::Uuid | Kind::Integer) {
            return None;
        }
        // NULL is `null` in the document but `\N` in the line; COPY escapes backslashes and control
        // characters, so a value holding them need not appear as it is.
        if f.value.is_empty()
            || f.value == "null"
            || f.value.bytes().any(|b| b == b'\\' || b < 0x20)
        {
            return None;
        }
        Some(memchr::memmem::Finder::new(f.value.as_bytes()).into_owned())
    }

    fn block(&self, i: usize) -> Result<std::sync::Arc<crate::snapshot::Block>> {
        let mut last = self.last_block.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, block)) = last.as_ref() {
            if *at == i {
                return Ok(block.clone());
            }
        }
        let block = std::sync::Arc::new(self.file.block(i)?);
        *last = Some((i, block.clone()));
        Ok(block)
    }

    /// The COPY line of the row under `skey`, if the file has one.
    fn get(&self, skey: &[u8]) -> Result<Option<Vec<u8>>> {
        if self.file.blocks() == 0 {
            return Ok(None);
        }
        let block = self.block(self.file.block_of_key(skey))?;
        Ok(block.get(skey).map(<[u8]>::to_vec))
    }
}

/// Rows per multi-row INSERT.
const CHUNK: usize = 64;

/// Held documents' bytes past which they are written before a chunk is full.
const PENDING_BYTES: usize = 8 * 1024 * 1024;

/// SQLite's page cache while a large value is written: its pages are written once and not read
/// again, so they go to the WAL instead of filling the cache (64 MiB otherwise).
const LARGE_VALUE_CACHE: &str = "PRAGMA cache_size = -2048";
const CACHE: &str = "PRAGMA cache_size = -65536";

/// The multi-row statements, built once.
static CHANGES_CHUNK_SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "INSERT INTO changes (seq, collection, lsn, op, doc, refs) VALUES {}",
        vec!["(?, ?, ?, ?, ?, ?)"; CHUNK].join(", ")
    )
});
static ROWS_CHUNK_SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "INSERT INTO rows (collection, skey, key, seq, base) VALUES {} ON CONFLICT (collection, skey) DO UPDATE SET seq = excluded.seq",
        vec!["(?, ?, ?, ?, ?)"; CHUNK].join(", ")
    )
});

/// What a store folder holds: the database and the journal files SQLite keeps beside it, the
/// consumers' ledger ([`crate::deliver`]), the snapshot files, and the capture's backfill staging
/// stores ([`crate::capture`]). Tightened on open.
const STORE_ENTRIES: &[&str] = &[
    crate::store_lock::LOCK_FILE,
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
            .map_err(|_| crate::encryption::lost(dir, "SQLCipher refused its key"))?;
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
                Some(_) => crate::encryption::lost(dir, "its key from the keychain does not open it (the key was replaced, or the file is damaged)"),
                None => crate::encryption::lost(
                    dir,
                    &format!(
                        "{} is not a readable database: it is encrypted but its marker ({}) is missing, or it is damaged",
                        path.display(),
                        crate::encryption::MARKER
                    ),
                ),
            })
        }
        Err(e) => Err(sqlite("opening")(e)),
    }
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
    /// ([`crate::encryption`]) is opened with its key from the OS keychain.
    pub fn open(dir: &Path) -> Result<Store> {
        let key = crate::encryption::key_for(dir)?;
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
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = FULL;
             PRAGMA foreign_keys = OFF;
             PRAGMA cache_size = -65536;
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
             CREATE INDEX IF NOT EXISTS changes_by_collection ON changes (collection, seq);
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
        create_rows(&conn)?;
        large_value_schema(&conn)?;
        let ids = collection_ids(&conn)?;
        let next_seq = next_seq(&conn)?;
        Ok(Store {
            conn,
            path,
            batch: None,
            ids,
            next_seq,
            pending: Vec::with_capacity(CHUNK),
            pending_bytes: 0,
            opened: Default::default(),
            live: Default::default(),
            key,
        })
    }

    /// The store's key, if it is encrypted.
    pub fn key(&self) -> Option<std::sync::Arc<StoreKey>> {
        self.key.clone()
    }

    /// The folder of this store's snapshot files.
    pub fn snapshot_dir(&self) -> PathBuf {
        self.path
            .parent()
            .map_or_else(|| PathBuf::from("snapshots"), |d| d.join("snapshots"))
    }

    /// Deletes snapshot files the store does not record (left by a crash before it recorded them).
    /// Only the capture calls this, before it writes files of its own.
    pub fn remove_unrecorded_snapshots(&self) -> Result<()> {
        let files = self.recorded_files()?;
        crate::snapshot::remove_unrecorded(&self.snapshot_dir(), &files)
    }

    fn recorded_files(&self) -> Result<Vec<String>> {
        let mut stmt = self
            .conn
            .prepare("SELECT file FROM snapshots")
            .map_err(sqlite("reading snapshots"))?;
        let files = stmt
            .query_map([], |r| r.get::<_, String>(0))
            .map_err(sqlite("reading snapshots"))?;
        files
            .collect::<std::result::Result<_, _>>()
            .map_err(sqlite("reading snapshots"))
    }

    /// Records a finished snapshot file (in [`Store::snapshot_dir`]) as `collection`'s rows, in the
    /// open batch: its documents take the next `rows` log positions, and it replaces the collection's
    /// rows (earlier snapshots stay in the log).
    pub fn add_snapshot(
        &mut self,
        collection: &str,
        file: &str,
        rows: u64,
        source: &SnapshotSource,
    ) -> Result<()> {
        self.in_open_batch("recording a snapshot")?;
        self.write_pending()?;
        let id = self.id_of(collection)?;
        let first = self.next_seq;
        self.replace_rows(id)?;
        self.conn
            .execute(
                "INSERT INTO snapshots (collection, first_seq, rows, file, live, source) VALUES (?1, ?2, ?3, ?4, 1, ?5)",
                params![id, first, rows as i64, file, serde_json::to_string(source).map_err(|e| Error::internal(e.to_string()))?],
            )
            .map_err(sqlite("recording a snapshot"))?;
        self.next_seq += rows as i64;
        self.batch = self.batch.map(|n| n + rows);
        Ok(())
    }

    /// Empties a collection's rows: its snapshots stay in the log only.
    fn replace_rows(&mut self, id: i64) -> Result<()> {
        self.conn
            .prepare_cached("DELETE FROM rows WHERE collection = ?1")
            .and_then(|mut s| s.execute([id]))
            .map_err(sqlite("replacing rows"))?;
        self.conn
            .prepare_cached("UPDATE snapshots SET live = 0 WHERE collection = ?1")
            .and_then(|mut s| s.execute([id]))
            .map_err(sqlite("replacing rows"))?;
        self.live.borrow_mut().clear();
        Ok(())
    }

    /// An open snapshot by its id in `snapshots`.
    fn snapshot(&self, id: i64) -> Result<std::sync::Arc<Base>> {
        if let Some(base) = self.opened.borrow().get(&id) {
            return Ok(base.clone());
        }
        let (first_seq, file, source, collection): (i64, String, String, String) = self
            .conn
            .prepare_cached(
                "SELECT s.first_seq, s.file, s.source, c.name FROM snapshots s JOIN collections c ON c.id = s.collection WHERE s.id = ?1",
            )
            .and_then(|mut s| s.query_row([id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))))
            .map_err(sqlite("reading a snapshot"))?;
        let source: SnapshotSource = serde_json::from_str(&source).map_err(|e| {
            Error::internal(format!(
                "store: snapshot {file} has no readable source: {e}"
            ))
        })?;
        let base = std::sync::Arc::new(Base {
            file: Snapshot::open(&self.snapshot_dir().join(&file), self.key.as_deref())?,
            first_seq: first_seq as u64,
            collection,
            source,
            last_block: Default::default(),
        });
        self.opened.borrow_mut().insert(id, base.clone());
        Ok(base)
    }

    /// The live snapshot of a collection, if it has one.
    fn live_base(&self, collection: i64) -> Result<Option<std::sync::Arc<Base>>> {
        let known = self.live.borrow().get(&collection).copied();
        let id = match known {
            Some(id) => id,
            None => {
                let id = self
                    .conn
                    .prepare_cached("SELECT id FROM snapshots WHERE collection = ?1 AND live = 1")
                    .and_then(|mut s| s.query_row([collection], |r| r.get::<_, i64>(0)).optional())
                    .map_err(sqlite("reading snapshots"))?;
                self.live.borrow_mut().insert(collection, id);
                id
            }
        };
        id.map(|id| self.snapshot(id)).transpose()
    }

    /// Every snapshot of a collection (live or not), oldest first: their ranges of the log.
    fn log_snapshots(&self, collection: i64) -> Result<Vec<std::sync::Arc<Base>>> {
        let ids: Vec<i64> = {
            let mut stmt = self
                .conn
                .prepare_cached("SELECT id FROM snapshots WHERE collection = ?1 ORDER BY first_seq")
                .map_err(sqlite("reading snapshots"))?;
            let ids = stmt
                .query_map([collection], |r| r.get(0))
                .map_err(sqlite("reading snapshots"))?;
            ids.collect::<std::result::Result<_, _>>()
                .map_err(sqlite("reading snapshots"))?
        };
        ids.into_iter().map(|id| self.snapshot(id)).collect()
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
            "DELETE FROM changes; DELETE FROM rows; DELETE FROM held; DELETE FROM snapshots; DELETE FROM collections; DELETE FROM meta; DELETE FROM large_values;",
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
        self.next_seq = 1;
        self.opened.borrow_mut().clear();
        self.live.borrow_mut().clear();
        self.remove_unrecorded_snapshots()
    }

    /// Starts a batch: one SQLite transaction for one or more whole source transactions.
    pub fn begin(&mut self) -> Result<()> {
        if self.batch.is_none() {
            self.conn
                .execute_batch("BEGIN IMMEDIATE")
                .map_err(sqlite("beginning a transaction"))?;
            self.batch = Some(0);
        }
        Ok(())
    }

    /// Whether a batch is open.
    pub fn in_batch(&self) -> bool {
        self.batch.is_some()
    }

    /// Changes written in the open batch.
    pub fn batch_len(&self) -> u64 {
        self.batch.unwrap_or(0)
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

    /// Abandons the open batch.
    pub fn rollback(&mut self) -> Result<()> {
        self.pending.clear();
        self.pending_bytes = 0;
        if self.batch.take().is_some() {
            // SQLite rolls a transaction back by itself after some failures (a full disk among them);
            // a second ROLLBACK would fail and hide the first error.
            if !self.conn.is_autocommit() {
                self.conn
                    .execute_batch("ROLLBACK")
                    .map_err(sqlite("rolling back"))?;
            }
            // Collections first recorded in the batch are gone with it, and so are their positions.
            self.ids = collection_ids(&self.conn)?;
            self.next_seq = next_seq(&self.conn)?;
            self.opened.borrow_mut().clear();
            self.live.borrow_mut().clear();
        }
        Ok(())
    }

    fn in_open_batch(&self, what: &str) -> Result<()> {
        if self.batch.is_none() {
            return Err(Error::internal(format!("store: {what} outside a batch")));
        }
        Ok(())
    }

    /// Every collection with its counts.
    pub fn collections(&self) -> Result<Vec<CollectionInfo>> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT c.name,
                        (SELECT count(*) FROM rows r WHERE r.collection = c.id AND r.seq IS NOT NULL AND r.base = 0)
                          + (SELECT COALESCE(sum(s.rows), 0) FROM snapshots s WHERE s.collection = c.id AND s.live = 1)
                          - (SELECT count(*) FROM rows r WHERE r.collection = c.id AND r.seq IS NULL),
                        (SELECT count(*) FROM changes h WHERE h.collection = c.id)
                          + (SELECT COALESCE(sum(s.rows), 0) FROM snapshots s WHERE s.collection = c.id),
                        CASE WHEN (SELECT max(h.seq) FROM changes h WHERE h.collection = c.id)
                                  >= COALESCE((SELECT max(s.first_seq + s.rows - 1) FROM snapshots s WHERE s.collection = c.id), 0)
                             THEN (SELECT json_extract(h.doc, '$._meta.source.ts_ms') FROM changes h
                                    WHERE h.collection = c.id ORDER BY h.seq DESC LIMIT 1)
                             ELSE (SELECT json_extract(s.source, '$.tsMs') FROM snapshots s
                                    WHERE s.collection = c.id ORDER BY s.first_seq DESC LIMIT 1) END
                   FROM collections c ORDER BY c.name",
            )
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
            .prepare_cached(
                "SELECT max(COALESCE((SELECT max(seq) FROM changes WHERE collection = ?1), 0),
                            COALESCE((SELECT max(first_seq + rows - 1) FROM snapshots WHERE collection = ?1 AND rows > 0), 0))",
            )
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

    /// Current rows in key order, at most `limit`.
    pub fn rows(&self, collection: &str, limit: usize) -> Result<Vec<Json>> {
        Ok(self
            .rows_after(collection, None, limit, None)?
            .into_iter()
            .map(|(_, doc)| doc)
            .collect())
    }

    /// Current rows in key order after the key `after` (from the start when none), at most `limit`,
    /// only those matching `filter`; each with its key, the cursor for the next page.
    pub fn rows_after(
        &self,
        collection: &str,
        after: Option<&str>,
        limit: usize,
        filter: Option<&Filter>,
    ) -> Result<Vec<(String, Json)>> {
        let id = self.id_of(collection)?;
        let f = FilterParams::of(filter)?;
        let after = after.map(sort_key).transpose()?;
        if let Some(base) = self.live_base(id)? {
            return self.rows_over_base(id, &base, after, limit, filter);
        }
        // Two statements rather than `(?3 IS NULL OR r.skey > ?3)`: with the OR, SQLite cannot seek
        // the key index to the cursor and reads every row before it.
        let cursor = if after.is_some() {
            "r.skey > ?3"
        } else {
            "?3 IS NULL"
        };
        let mut stmt = self
            .conn
            .prepare_cached(&format!(
                "SELECT r.key, c.doc, c.refs FROM rows r JOIN changes c ON c.seq = r.seq
                  WHERE r.collection = ?1 AND {cursor} AND {}
                  ORDER BY r.skey LIMIT ?2",
                FilterParams::SQL
            ))
            .map_err(sqlite("reading rows"))?;
        let docs = stmt
            .query_map(
                params![id, limit as i64, after, f.path, f.value, f.contains],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, Option<String>>(2)?,
                    ))
                },
            )
            .map_err(sqlite("reading rows"))?
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(sqlite("reading rows"))?;
        docs.into_iter()
            .map(|(key, doc, refs)| Ok((key, self.load(doc, refs)?)))
            .collect()
    }

    /// [`Store::rows_after`] for a collection with a live snapshot: the file's rows and the entries
    /// of `rows` merged in key order, an entry replacing (or, without a document, deleting) the file's
    /// row under its key.
    fn rows_over_base(
        &self,
        id: i64,
        base: &Base,
        after: Option<Vec<u8>>,
        limit: usize,
        filter: Option<&Filter>,
    ) -> Result<Vec<(String, Json)>> {
        const PAGE: usize = 256;
        let mut out = Vec::new();
        let mut matching = base.matching(filter);
        // Entries of `rows` after the cursor, a page at a time.
        let mut entries: std::collections::VecDeque<Entry> = Default::default();
        let mut entries_after = after.clone();
        let mut entries_done = false;
        let fill = |from: &Option<Vec<u8>>,
                    into: &mut std::collections::VecDeque<_>|
         -> Result<bool> {
            let mut stmt = self
                .conn
                .prepare_cached(
                    "SELECT r.skey, r.key, c.doc, c.refs FROM rows r LEFT JOIN changes c ON c.seq = r.seq
                      WHERE r.collection = ?1 AND r.skey > ?2 ORDER BY r.skey LIMIT ?3",
                )
                .map_err(sqlite("reading rows"))?;
            let page = stmt
                .query_map(
                    params![id, from.as_deref().unwrap_or(&[]), PAGE as i64],
                    |r| {
                        Ok((
                            r.get::<_, Vec<u8>>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, Option<String>>(2)?,
                            r.get::<_, Option<String>>(3)?,
                        ))
                    },
                )
                .map_err(sqlite("reading rows"))?
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(sqlite("reading rows"))?;
            let more = page.len() == PAGE;
            into.extend(page);
            Ok(more)
        };
        // The file's rows after the cursor.
        let mut block_no = match &after {
            Some(k) => base.file.block_of_key(k),
            None => 0,
        };
        let mut block = None;
        let mut at = 0;
        if base.file.blocks() > 0 {
            let b = base.block(block_no)?;
            at = after.as_deref().map_or(0, |k| b.position(k, false));
            block = Some(b);
        }
        while out.len() < limit {
            if entries.is_empty() && !entries_done {
                entries_done = !fill(&entries_after, &mut entries)?;
                if let Some(last) = entries.back() {
                    entries_after = Some(last.0.clone());
                }
            }
            // Move past an exhausted block.
            while let Some(b) = &block {
                if at < b.len() {
                    break;
                }
                block_no += 1;
                at = 0;
                block = if block_no < base.file.blocks() {
                    Some(base.block(block_no)?)
                } else {
                    None
                };
            }
            let file_key = block.as_ref().map(|b| b.skey(at));
            let entry_key = entries.front().map(|e| e.0.as_slice());
            match (file_key, entry_key) {
                (None, None) => break,
                (Some(fk), ek) if ek.is_none_or(|ek| fk < ek) => {
                    let b = block.as_ref().expect("a file key comes from a block");
                    if let Some(doc) = matching.document(&self.conn, b.line(at))? {
                        out.push((crate::rowkey::key_of(fk)?, doc));
                    }
                    at += 1;
                }
                (fk, Some(ek)) => {
                    if fk == Some(ek) {
                        at += 1;
                    }
                    let (_, key, doc, refs) = entries
                        .pop_front()
                        .expect("an entry key comes from an entry");
                    if let Some(doc) = doc.map(|d| self.load(d, refs)).transpose()? {
                        if filter.is_none_or(|f| f.matches(&doc)) {
                            out.push((key, doc));
                        }
                    }
                }
                (Some(_), None) => unreachable!("handled by the guard above"),
            }
        }
        Ok(out)
    }

    /// The newest `limit` entries of the change log, oldest first.
    pub fn latest_changes(&self, collection: &str, limit: usize) -> Result<Vec<(u64, Json)>> {
        self.latest_changes_matching(collection, limit, None)
    }

    /// The newest `limit` entries of the change log that match `filter`, oldest first.
    pub fn latest_changes_matching(
        &self,
        collection: &str,
        limit: usize,
        filter: Option<&Filter>,
    ) -> Result<Vec<(u64, Json)>> {
        let id = self.id_of(collection)?;
        let f = FilterParams::of(filter)?;
        let mut entries = self.log_entries(
            "c.collection = ?1",
            "c.seq DESC",
            params![
                id,
                limit as i64,
                None::<String>,
                f.path,
                f.value,
                f.contains
            ],
        )?;
        // Snapshots newer than the oldest entry found (all of them when fewer than `limit` were).
        let floor = if entries.len() == limit {
            entries.last().map_or(0, |e| e.0)
        } else {
            0
        };
        for base in self.log_snapshots(id)?.iter().rev() {
            if base.first_seq + base.file.rows() <= floor {
                continue;
            }
            let mut matching = base.matching(filter);
            let mut found = 0;
            'blocks: for b in (0..base.file.blocks()).rev() {
                let block = base.block(b)?;
                for i in (0..block.len()).rev() {
                    let seq = base.first_seq + block.first_ordinal + i as u64;
                    if seq <= floor || found == limit {
                        break 'blocks;
                    }
                    if let Some(doc) = matching.document(&self.conn, block.line(i))? {
                        entries.push((seq, doc));
                        found += 1;
                    }
                }
            }
        }
        entries.sort_by_key(|e| std::cmp::Reverse(e.0));
        entries.truncate(limit);
        entries.reverse();
        Ok(entries)
    }

    /// Log entries kept in SQLite (not in snapshot files) that meet `condition` and the filter, in
    /// `order`; parameters numbered as [`FilterParams`] expects, ?2 the limit.
    fn log_entries(
        &self,
        condition: &str,
        order: &str,
        params: &[&dyn rusqlite::ToSql],
    ) -> Result<Vec<(u64, Json)>> {
        let mut stmt = self
            .conn
            .prepare_cached(&format!(
                "SELECT c.seq, c.doc, c.refs FROM changes c WHERE {condition} AND {} ORDER BY {order} LIMIT ?2",
                FilterParams::SQL
            ))
            .map_err(sqlite("reading changes"))?;
        let docs = stmt
            .query_map(params, |r| {
                Ok((
                    r.get::<_, i64>(0)? as u64,
                    r.get::<_, String>(1)?,
                    r.get::<_, Option<String>>(2)?,
                ))
            })
            .map_err(sqlite("reading changes"))?
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(sqlite("reading changes"))?;
        docs.into_iter()
            .map(|(seq, doc, refs)| Ok((seq, self.load(doc, refs)?)))
            .collect()
    }

    /// The change log in order, at most `limit` entries after position `after` (0 for the start).
    pub fn changes(&self, collection: &str, after: u64, limit: usize) -> Result<Vec<(u64, Json)>> {
        self.changes_matching(collection, after, limit, None)
    }

    /// The change log in order after position `after`, at most `limit` entries matching `filter`.
    pub fn changes_matching(
        &self,
        collection: &str,
        after: u64,
        limit: usize,
        filter: Option<&Filter>,
    ) -> Result<Vec<(u64, Json)>> {
        let id = self.id_of(collection)?;
        let f = FilterParams::of(filter)?;
        let mut entries = self.log_entries(
            "c.collection = ?1 AND c.seq > ?3",
            "c.seq",
            params![id, limit as i64, after as i64, f.path, f.value, f.contains],
        )?;
        // Snapshots older than the newest entry found (all after `after` when fewer than `limit` were).
        let ceiling = if entries.len() == limit {
            entries.last().map_or(u64::MAX, |e| e.0)
        } else {
            u64::MAX
        };
        for base in self.log_snapshots(id)? {
            let end = base.first_seq + base.file.rows();
            if end <= after + 1 || base.first_seq >= ceiling || base.file.rows() == 0 {
                continue;
            }
            let mut matching = base.matching(filter);
            let mut found = 0;
            let from = (after + 1).saturating_sub(base.first_seq);
            let mut b = base.file.block_of_ordinal(from);
            'blocks: while b < base.file.blocks() {
                let block = base.block(b)?;
                let skip = from.saturating_sub(block.first_ordinal) as usize;
                for i in skip..block.len() {
                    let seq = base.first_seq + block.first_ordinal + i as u64;
                    if seq >= ceiling || found == limit {
                        break 'blocks;
                    }
                    if let Some(doc) = matching.document(&self.conn, block.line(i))? {
                        entries.push((seq, doc));
                        found += 1;
                    }
                }
                b += 1;
            }
        }
        entries.sort_by_key(|e| e.0);
        entries.truncate(limit);
        Ok(entries)
    }
}

/// Documents whose top-level `field` reads as `value`: a string as itself, a number in its JSON form,
/// `true`, `false`, `null`, an object or array as its JSON text. With `contains`, that text contains
/// `value` instead of equalling it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Filter {
    /// A top-level field (a column name, or `_meta`).
    pub field: String,
    /// The text to compare with.
    pub value: String,
    /// Substring match instead of equality.
    #[serde(default)]
    pub contains: bool,
}

impl crate::document::LargeValues for Store {
    fn put_large_value(&mut self, json: &dyn Fn(&mut Sink<'_>) -> Result<()>) -> Result<String> {
        Store::put_large_value(self, json)
    }
}

impl Filter {
    /// Whether a document matches, by the same rule the store's queries apply (for live tails).
    pub fn matches(&self, doc: &Json) -> bool {
        let Some(value) = doc.get(&self.field) else {
            return false;
        };
        let text = match value {
            Json::String(s) => s.clone(),
            other => other.to_string(),
        };
        if self.contains {
            text.contains(&self.value)
        } else {
            text == self.value
        }
    }
}

/// A filter as statement parameters ?4 (JSON path, NULL for none), ?5 (value), ?6 (contains).
struct FilterParams {
    path: Option<String>,
    value: Option<String>,
    contains: bool,
}

impl FilterParams {
    /// The condition on `c.doc`, matching [`Filter::matches`]. A document with large values has the
    /// field read in Rust (`tidepool_field`), by the rule the live tails apply.
    const SQL: &'static str = "(?4 IS NULL OR (CASE WHEN ?6 THEN instr(
            CASE WHEN c.refs IS NOT NULL THEN tidepool_field(c.doc, c.refs, ?4)
                 ELSE CASE json_type(c.doc, ?4) WHEN 'true' THEN 'true' WHEN 'false' THEN 'false' WHEN 'null' THEN 'null'
                 ELSE CAST(json_extract(c.doc, ?4) AS TEXT) END END, ?5) > 0
          ELSE CASE WHEN c.refs IS NOT NULL THEN tidepool_field(c.doc, c.refs, ?4)
                 ELSE CASE json_type(c.doc, ?4) WHEN 'true' THEN 'true' WHEN 'false' THEN 'false' WHEN 'null' THEN 'null'
                 ELSE CAST(json_extract(c.doc, ?4) AS TEXT) END END = ?5 END))";

    fn of(filter: Option<&Filter>) -> Result<FilterParams> {
        let Some(f) = filter else {
            return Ok(FilterParams {
                path: None,
                value: None,
                contains: false,
            });
        };
        // SQLite's JSON paths quote a key in double quotes and have no escape for one inside it.
        if f.field.is_empty() || f.field.contains('"') {
            return Err(Error::invalid_input(
                "filter field",
                format!(
                    "'{}' cannot be filtered on: give a column name without double quotes",
                    f.field
                ),
            ));
        }
        Ok(FilterParams {
            path: Some(format!("$.\"{}\"", f.field)),
            value: Some(f.value.clone()),
            contains: f.contains,
        })
    }
}

fn parse(doc: String) -> Result<Json> {
    serde_json::from_str(&doc)
        .map_err(|e| Error::internal(format!("store: a stored document is not JSON: {e}")))
}

/// An entry of `rows` after a cursor: its sort key, key, and document with its references (none for a
/// deleted row of a snapshot).
type Entry = (Vec<u8>, String, Option<String>, Option<String>);

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

/// What large values need ([`crate::large_value`]): their table, a `refs` column beside each stored
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

fn collection_ids(conn: &Connection) -> Result<std::collections::HashMap<String, i64>> {
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
    let moved = (|| -> Result<()> {
        conn.execute_batch("BEGIN IMMEDIATE; ALTER TABLE rows RENAME TO rows_before_sort_keys;")
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
        conn.execute_batch("DROP TABLE rows_before_sort_keys; COMMIT;")
            .map_err(sqlite("moving rows"))
    })();
    if moved.is_err() {
        let _ = conn.execute_batch("ROLLBACK");
    }
    moved
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
    /// Records (or updates) a collection's description, in the open batch. A renamed table's new name
    /// replaces the old one.
    pub fn put_collection(&mut self, spec: &CollectionSpec) -> Result<()> {
        self.in_open_batch("recording a collection")?;
        let id: i64 = self
            .conn
            .prepare_cached(
                "INSERT INTO collections (name, schema_name, table_name, key_columns, columns) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (name) DO UPDATE SET schema_name = excluded.schema_name, table_name = excluded.table_name,
                   key_columns = excluded.key_columns, columns = excluded.columns
                 RETURNING id",
            )
            .and_then(|mut s| {
                s.query_row(
                    params![spec.name, spec.schema, spec.table, serde_json::to_string(&spec.key).unwrap_or_default(), spec.columns.to_string()],
                    |r| r.get(0),
                )
            })
            .map_err(sqlite("recording a collection"))?;
        self.ids.insert(spec.name.clone(), id);
        Ok(())
    }

    /// The current row under `key`, including the open batch's own writes.
    pub fn row(&mut self, collection: &str, key: &str) -> Result<Option<Json>> {
        let id = self.id_of(collection)?;
        self.write_pending()?;
        let skey = sort_key(key)?;
        match self.stored_row(id, &skey)? {
            Some(doc) if doc.refs.is_empty() => parse(doc.text).map(Some),
            Some(doc) => {
                let text = splice(&doc.text, &doc.refs, |hash, out| {
                    read_value(&self.conn, hash, out)
                })?;
                parse(text).map(Some)
            }
            None => Ok(None),
        }
    }

    /// The current row under `key` as stored, large values left as references (so reading it costs
    /// nothing however large they are), including the open batch's own writes.
    pub fn row_document(&mut self, collection: &str, key: &str) -> Result<Option<Document>> {
        let id = self.id_of(collection)?;
        self.write_pending()?;
        self.stored_row(id, &sort_key(key)?)
    }

    fn stored_row(&self, id: i64, skey: &[u8]) -> Result<Option<Document>> {
        let entry: Option<(Option<String>, Option<String>)> = self
            .conn
            .prepare_cached("SELECT c.doc, c.refs FROM rows r LEFT JOIN changes c ON c.seq = r.seq WHERE r.collection = ?1 AND r.skey = ?2")
            .and_then(|mut s| s.query_row(params![id, skey], |r| Ok((r.get(0)?, r.get(1)?))).optional())
            .map_err(sqlite("reading a row"))?;
        match entry {
            Some((Some(text), refs)) => Ok(Some(Document {
                text,
                refs: refs
                    .as_deref()
                    .map(parse_refs)
                    .transpose()?
                    .unwrap_or_default(),
            })),
            Some((None, _)) => Ok(None),
            None => match self.live_base(id)? {
                Some(base) => match base.get(skey)? {
                    Some(line) => Ok(Some(base.rebuild().document(&line)?)),
                    None => Ok(None),
                },
                None => Ok(None),
            },
        }
    }

    /// A stored document, whole, as JSON.
    fn load(&self, doc: String, refs: Option<String>) -> Result<Json> {
        parse(whole_document(&self.conn, doc, refs)?)
    }

    /// Stores a large value's JSON once, in the open batch, and returns its hash for a [`ValueRef`].
    /// `json` writes the JSON to the sink it is given, in pieces; it is called once to hash it and,
    /// unless a value with that hash is stored already, once more to store it, streamed into SQLite,
    /// so the value is never held whole here.
    pub fn put_large_value(
        &mut self,
        json: &dyn Fn(&mut Sink<'_>) -> Result<()>,
    ) -> Result<String> {
        use sha2::Digest;
        use std::io::Write;
        self.in_open_batch("storing a large value")?;
        let mut hasher = sha2::Sha256::new();
        let mut len = 0usize;
        json(&mut |piece| {
            hasher.update(piece);
            len += piece.len();
            Ok(())
        })?;
        let hash: String = hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let stored: bool = self
            .conn
            .prepare_cached("SELECT EXISTS (SELECT 1 FROM large_values WHERE hash = ?1)")
            .and_then(|mut s| s.query_row([&hash], |r| r.get(0)))
            .map_err(sqlite("looking up a large value"))?;
        if stored {
            return Ok(hash);
        }
        self.conn
            .execute_batch(LARGE_VALUE_CACHE)
            .map_err(sqlite("storing a large value"))?;
        let written = (|| -> Result<()> {
            let id: i64 = self
                .conn
                .prepare_cached(
                    "INSERT INTO large_values (hash, json) VALUES (?1, zeroblob(?2)) RETURNING id",
                )
                .and_then(|mut s| s.query_row(params![hash, len as i64], |r| r.get(0)))
                .map_err(sqlite("storing a large value"))?;
            let mut blob = self
                .conn
                .blob_open("main", "large_values", "json", id, false)
                .map_err(sqlite("storing a large value"))?;
            let mut at = 0usize;
            json(&mut |piece| {
                at += piece.len();
                if at > len {
                    return Err(Error::internal(
                        "store: a large value grew while it was stored",
                    ));
                }
                blob.write_all(piece)
                    .map_err(|e| Error::internal(format!("store: writing a large value: {e}")))
            })?;
            if at != len {
                return Err(Error::internal(
                    "store: a large value shrank while it was stored",
                ));
            }
            Ok(())
        })();
        let restored = self
            .conn
            .execute_batch(CACHE)
            .map_err(sqlite("storing a large value"));
        written?;
        restored?;
        Ok(hash)
    }

    /// Whether the collection's live snapshot has a row under `skey`.
    fn in_base(&self, collection: i64, skey: &[u8]) -> Result<bool> {
        match self.live_base(collection)? {
            Some(base) => Ok(base.get(skey)?.is_some()),
            None => Ok(false),
        }
    }

    /// Appends a change to the log and applies it to the current rows. `key` is the canonical key of
    /// the row after the change; `old_key` the key before it, when an update changed the key.
    pub fn apply(
        &mut self,
        collection: &str,
        lsn: Lsn,
        op: Op,
        key: &str,
        old_key: Option<&str>,
        doc: impl Into<Document>,
    ) -> Result<()> {
        let doc: Document = doc.into();
        let refs = doc.refs_text();
        let doc = doc.text;
        self.in_open_batch("writing a change")?;
        let id = self.id_of(collection)?;
        let key_changed = old_key.is_some_and(|old| old != key);
        let skey = match op {
            Op::Truncate => Vec::new(),
            _ => sort_key(key)?,
        };
        let seq = self.next_seq;
        self.next_seq += 1;
        if matches!(op, Op::Create | Op::Update) && !key_changed {
            let base = self.in_base(id, &skey)?;
            self.pending_bytes += doc.len();
            self.pending.push(Pending {
                seq,
                collection: id,
                lsn,
                op,
                skey,
                key: key.to_string(),
                base,
                doc,
                refs,
            });
            if self.pending.len() >= CHUNK || self.pending_bytes >= PENDING_BYTES {
                self.write_pending()?;
            }
        } else {
            self.write_pending()?;
            self.insert_change(seq, id, lsn, op, &doc, refs.as_deref())?;
            if let Some(old) = old_key.filter(|_| key_changed) {
                self.delete_row(id, &sort_key(old)?, old)?;
            }
            match op {
                Op::Create | Op::Update => {
                    let base = self.in_base(id, &skey)?;
                    self.upsert_row(id, &skey, key, seq, base)?
                }
                Op::Delete => self.delete_row(id, &skey, key)?,
                Op::Truncate => self.replace_rows(id)?,
            }
        }
        self.batch = self.batch.map(|n| n + 1);
        Ok(())
    }

    /// Keeps a change of a collection whose backfill is still being read, in the open batch, to be
    /// applied after the backfill's rows by [`Store::import_backfill`]. Counts as a change of the batch.
    pub fn hold(
        &mut self,
        collection: &str,
        lsn: Lsn,
        op: Op,
        key: &str,
        old_key: Option<&str>,
        doc: &Document,
    ) -> Result<()> {
        self.in_open_batch("holding a change")?;
        self.conn
            .prepare_cached(
                "INSERT INTO held (collection, lsn, op, key, old_key, doc, refs) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )
            .and_then(|mut s| {
                s.execute(params![collection, lsn.0 as i64, op.code(), key, old_key, doc.text, doc.refs_text()])
            })
            .map_err(sqlite("holding a change"))?;
        self.batch = self.batch.map(|n| n + 1);
        Ok(())
    }

    /// Forgets the held changes of `collection` (its backfill is started over with a new snapshot).
    pub fn drop_held(&mut self, collection: &str) -> Result<()> {
        self.in_open_batch("dropping held changes")?;
        self.conn
            .execute("DELETE FROM held WHERE collection = ?1", [collection])
            .map_err(sqlite("dropping held changes"))?;
        Ok(())
    }

    /// Renames a collection (its rows and log stay), in the open batch.
    pub fn rename_collection(&mut self, from: &str, to: &str) -> Result<()> {
        self.in_open_batch("renaming a collection")?;
        self.write_pending()?;
        self.conn
            .execute(
                "UPDATE collections SET name = ?2 WHERE name = ?1",
                [from, to],
            )
            .map_err(sqlite("renaming a collection"))?;
        self.conn
            .execute(
                "UPDATE held SET collection = ?2 WHERE collection = ?1",
                [from, to],
            )
            .map_err(sqlite("renaming a collection"))?;
        self.ids = collection_ids(&self.conn)?;
        Ok(())
    }

    /// Brings a finished backfill in from the store in `staging` (read in one snapshot): for each
    /// `(collection, replace)` its documents are appended to the log and its rows become the
    /// collection's rows (replacing the current ones when `replace`, for a re-backfill); then the
    /// changes held since the snapshot are applied in order. All of it, and `meta`, commit in one
    /// transaction that keeps the checkpoint where it is, so a crash leaves none of it or all of it.
    pub fn import_backfill(
        &mut self,
        staging: &Path,
        collections: &[(String, bool)],
        meta: &[(&str, &str)],
    ) -> Result<u64> {
        if self.batch.is_some() {
            return Err(Error::internal("store: import_backfill inside a batch"));
        }
        let file = staging.join("tidepool.db");
        // The staging store is encrypted with this store's key when this one is.
        let attached = match &self.key {
            Some(key) => self.conn.execute(
                "ATTACH DATABASE ?1 AS staging KEY ?2",
                params![file.to_string_lossy(), key.sqlcipher_key().expose()],
            ),
            None => self
                .conn
                .execute("ATTACH DATABASE ?1 AS staging", [file.to_string_lossy()]),
        };
        attached.map_err(sqlite("attaching a backfill"))?;
        let result = self.import_attached(staging, collections, meta);
        if result.is_err() {
            let _ = self.rollback();
        }
        let detached = self
            .conn
            .execute_batch("DETACH DATABASE staging")
            .map_err(sqlite("detaching a backfill"));
        let rows = result?;
        detached?;
        Ok(rows)
    }

    fn import_attached(
        &mut self,
        staging: &Path,
        collections: &[(String, bool)],
        meta: &[(&str, &str)],
    ) -> Result<u64> {
        let checkpoint = self.checkpoint()?;
        self.begin()?;
        // Staging positions are unique across its collections: shifting them all past this log's end
        // by one amount keeps them unique and in order.
        let base = self.next_seq - 1;
        let mut rows = 0;
        for (collection, replace) in collections {
            let staged: Option<i64> = self
                .conn
                .query_row(
                    "SELECT id FROM staging.collections WHERE name = ?1",
                    [collection],
                    |r| r.get(0),
                )
                .optional()
                .map_err(sqlite("reading a backfill's collection"))?;
            let Some(staged) = staged else { continue };
            self.conn
                .execute(
                    "INSERT INTO main.collections (name, schema_name, table_name, key_columns, columns)
                     SELECT name, schema_name, table_name, key_columns, columns FROM staging.collections WHERE id = ?1
                     ON CONFLICT (name) DO UPDATE SET schema_name = excluded.schema_name, table_name = excluded.table_name,
                       key_columns = excluded.key_columns, columns = excluded.columns",
                    [staged],
                )
                .map_err(sqlite("importing a backfill's collection"))?;
            self.ids = collection_ids(&self.conn)?;
            let id = self.id_of(collection)?;
            let staged_snapshots: Vec<(i64, i64, String, String)> = self
                .conn
                .prepare("SELECT first_seq, rows, file, source FROM staging.snapshots WHERE collection = ?1 AND live = 1 ORDER BY first_seq")
                .and_then(|mut s| {
                    s.query_map([staged], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
                        .collect::<std::result::Result<_, _>>()
                })
                .map_err(sqlite("reading a backfill's snapshots"))?;
            if *replace || !staged_snapshots.is_empty() {
                self.replace_rows(id)?;
            }
            for (first_seq, count, file, source) in staged_snapshots {
                // Same file system (the staging folder is inside the store's): a rename, no copy. A
                // crash before the commit leaves the file unrecorded; the next start removes it and
                // backfills the table again.
                let from = staging.join("snapshots").join(&file);
                let to_dir = self.snapshot_dir();
                crate::owner_only::create_dir_all(&to_dir)
                    .and_then(|_| std::fs::rename(&from, to_dir.join(&file)))
                    .and_then(|_| std::fs::File::open(&to_dir).and_then(|d| d.sync_all()))
                    .map_err(|e| Error::internal(format!("store: moving snapshot {file}: {e}")))?;
                self.conn
                    .execute(
                        "INSERT INTO snapshots (collection, first_seq, rows, file, live, source) VALUES (?1, ?2, ?3, ?4, 1, ?5)",
                        params![id, base + first_seq, count, file, source],
                    )
                    .map_err(sqlite("importing a backfill's snapshot"))?;
                rows += count as u64;
            }
            rows += self
                .conn
                .execute(
                    "INSERT INTO main.changes (seq, collection, lsn, op, doc, refs)
                     SELECT ?1 + seq, ?2, lsn, op, doc, refs FROM staging.changes WHERE collection = ?3 ORDER BY seq",
                    params![base, id, staged],
                )
                .map_err(sqlite("importing a backfill's documents"))? as u64;
            self.conn
                .execute(
                    "INSERT INTO main.rows (collection, skey, key, seq, base)
                     SELECT ?2, skey, key, ?1 + seq, base FROM staging.rows WHERE collection = ?3
                     ON CONFLICT (collection, skey) DO UPDATE SET seq = excluded.seq",
                    params![base, id, staged],
                )
                .map_err(sqlite("importing a backfill's rows"))?;
        }
        self.import_large_values()?;
        self.next_seq = next_seq(&self.conn)?;
        self.live.borrow_mut().clear();
        for (collection, _) in collections {
            self.replay_held(collection)?;
        }
        for (key, value) in meta {
            self.set_meta(key, value)?;
        }
        self.commit(checkpoint)?;
        Ok(rows)
    }

    /// Copies the attached backfill's large values that this store does not hold yet (referenced by
    /// hash, so none is copied twice), a piece at a time: `INSERT … SELECT` would hold each whole.
    fn import_large_values(&mut self) -> Result<()> {
        use std::io::{Read, Write};
        let context = "importing a backfill's large values";
        let missing: Vec<(i64, String, i64)> = self
            .conn
            .prepare(
                "SELECT s.id, s.hash, length(s.json) FROM staging.large_values s
                  WHERE NOT EXISTS (SELECT 1 FROM main.large_values m WHERE m.hash = s.hash)",
            )
            .and_then(|mut st| {
                st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                    .collect::<std::result::Result<_, _>>()
            })
            .map_err(sqlite(context))?;
        if missing.is_empty() {
            return Ok(());
        }
        self.conn
            .execute_batch(LARGE_VALUE_CACHE)
            .map_err(sqlite(context))?;
        let copied = (|| -> Result<()> {
            let mut piece = vec![0u8; 1 << 20];
            for (from, hash, len) in missing {
                let to: i64 = self
                    .conn
                    .query_row(
                        "INSERT INTO main.large_values (hash, json) VALUES (?1, zeroblob(?2)) RETURNING id",
                        params![hash, len],
                        |r| r.get(0),
                    )
                    .map_err(sqlite(context))?;
                let mut reader = self
                    .conn
                    .blob_open("staging", "large_values", "json", from, true)
                    .map_err(sqlite(context))?;
                let mut writer = self
                    .conn
                    .blob_open("main", "large_values", "json", to, false)
                    .map_err(sqlite(context))?;
                loop {
                    let n = reader.read(&mut piece).map_err(|e| {
                        Error::internal(format!("store: reading large value {hash}: {e}"))
                    })?;
                    if n == 0 {
                        break;
                    }
                    writer.write_all(&piece[..n]).map_err(|e| {
                        Error::internal(format!("store: writing large value {hash}: {e}"))
                    })?;
                }
            }
            Ok(())
        })();
        let restored = self.conn.execute_batch(CACHE).map_err(sqlite(context));
        copied?;
        restored
    }

    /// Applies the held changes of `collection` in order and forgets them.
    fn replay_held(&mut self, collection: &str) -> Result<()> {
        let held = {
            let mut stmt = self
                .conn
                .prepare(
                    "SELECT lsn, op, key, old_key, doc, refs FROM held WHERE collection = ?1 ORDER BY n",
                )
                .map_err(sqlite("reading held changes"))?;
            let rows = stmt
                .query_map([collection], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, Option<String>>(3)?,
                        r.get::<_, String>(4)?,
                        r.get::<_, Option<String>>(5)?,
                    ))
                })
                .map_err(sqlite("reading held changes"))?;
            rows.collect::<std::result::Result<Vec<_>, _>>()
                .map_err(sqlite("reading held changes"))?
        };
        if !held.is_empty() && !self.ids.contains_key(collection) {
            return Err(Error::internal(format!(
                "store: changes are held for '{collection}', which the backfill did not create"
            )));
        }
        for (lsn, op, key, old_key, text, refs) in held {
            let op = Op::from_code(&op)
                .ok_or_else(|| Error::internal(format!("store: a held change has op '{op}'")))?;
            let doc = Document {
                text,
                refs: refs
                    .as_deref()
                    .map(parse_refs)
                    .transpose()?
                    .unwrap_or_default(),
            };
            self.apply(
                collection,
                Lsn(lsn as u64),
                op,
                &key,
                old_key.as_deref(),
                doc,
            )?;
        }
        self.conn
            .execute("DELETE FROM held WHERE collection = ?1", [collection])
            .map_err(sqlite("dropping held changes"))?;
        Ok(())
    }

    fn insert_change(
        &self,
        seq: i64,
        collection: i64,
        lsn: Lsn,
        op: Op,
        doc: &str,
        refs: Option<&str>,
    ) -> Result<()> {
        self.conn
            .prepare_cached(
                "INSERT INTO changes (seq, collection, lsn, op, doc, refs) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )
            .and_then(|mut s| {
                s.execute(params![seq, collection, lsn.0 as i64, op.code(), doc, refs])
            })
            .map_err(sqlite("appending a change"))?;
        Ok(())
    }

    fn upsert_row(
        &mut self,
        collection: i64,
        skey: &[u8],
        key: &str,
        seq: i64,
        base: bool,
    ) -> Result<()> {
        self.conn
            .prepare_cached(
                "INSERT INTO rows (collection, skey, key, seq, base) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (collection, skey) DO UPDATE SET seq = excluded.seq",
            )
            .and_then(|mut s| s.execute(params![collection, skey, key, seq, base]))
            .map_err(sqlite("writing a row"))?;
        Ok(())
    }

    /// Writes the buffered inserts and upserts: full chunks with one statement per table, the rest row
    /// by row. Within a statement SQLite applies rows in order, so a key written twice ends at the later.
    fn write_pending(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let pending = std::mem::take(&mut self.pending);
        self.pending_bytes = 0;
        let mut chunks = pending.chunks_exact(CHUNK);
        for chunk in &mut chunks {
            // Converted values live here so the statement can borrow them.
            let converted: Vec<(i64, &str)> = chunk
                .iter()
                .map(|p| (p.lsn.0 as i64, p.op.code()))
                .collect();
            let changes = chunk.iter().zip(&converted).flat_map(
                |(p, (lsn, op))| -> [&dyn rusqlite::ToSql; 6] {
                    [&p.seq, &p.collection, lsn, op, &p.doc, &p.refs]
                },
            );
            self.conn
                .prepare_cached(&CHANGES_CHUNK_SQL)
                .and_then(|mut s| s.execute(rusqlite::params_from_iter(changes)))
                .map_err(sqlite("appending changes"))?;
            let rows = chunk.iter().flat_map(|p| -> [&dyn rusqlite::ToSql; 5] {
                [&p.collection, &p.skey, &p.key, &p.seq, &p.base]
            });
            self.conn
                .prepare_cached(&ROWS_CHUNK_SQL)
                .and_then(|mut s| s.execute(rusqlite::params_from_iter(rows)))
                .map_err(sqlite("writing rows"))?;
        }
        for p in chunks.remainder() {
            self.insert_change(p.seq, p.collection, p.lsn, p.op, &p.doc, p.refs.as_deref())?;
            self.upsert_row(p.collection, &p.skey, &p.key, p.seq, p.base)?;
        }
        self.pending = pending;
        self.pending.clear();
        Ok(())
    }

    /// Deletes the row under `skey`: forgets its entry, or, when the live snapshot has a row under
    /// that key, leaves an entry without a document that hides it.
    fn delete_row(&mut self, collection: i64, skey: &[u8], key: &str) -> Result<()> {
        if self.in_base(collection, skey)? {
            self.conn
                .prepare_cached(
                    "INSERT INTO rows (collection, skey, key, seq, base) VALUES (?1, ?2, ?3, NULL, 1)
                     ON CONFLICT (collection, skey) DO UPDATE SET seq = NULL",
                )
                .and_then(|mut s| s.execute(params![collection, skey, key]))
                .map_err(sqlite("deleting a row"))?;
        } else {
            self.conn
                .prepare_cached("DELETE FROM rows WHERE collection = ?1 AND skey = ?2")
                .and_then(|mut s| s.execute(params![collection, skey]))
                .map_err(sqlite("deleting a row"))?;
        }
        Ok(())
    }

    /// Commits the open batch (opening one if needed) with `checkpoint` as the new checkpoint. Returns
    /// once SQLite has fsynced; only then may the capture confirm `checkpoint` to PostgreSQL.
    pub fn commit(&mut self, checkpoint: Lsn) -> Result<()> {
        self.begin()?;
        self.write_pending()?;
        let current = read_checkpoint(&self.conn)?;
        if checkpoint < current {
            self.rollback()?;
            return Err(Error::internal(format!(
                "store: the checkpoint would move back from {current} to {checkpoint}"
            )));
        }
        self.conn
            .execute(
                "INSERT INTO meta (key, value) VALUES ('checkpoint', ?1) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                [checkpoint.0.to_string()],
            )
            .map_err(sqlite("writing the checkpoint"))?;
        if checkpoint > current {
            // When the slot last made progress: Neon removes slots that make none for about 40 h.
            self.conn
                .execute(
                    "INSERT INTO meta (key, value) VALUES ('checkpoint_at', ?1) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    [unix_ms().to_string()],
                )
                .map_err(sqlite("writing the checkpoint"))?;
        }
        self.conn
            .execute_batch("COMMIT")
            .map_err(sqlite("committing"))?;
        self.batch = None;
        Ok(())
    }
}

/// Reads for delivery ([`crate::deliver`]): where a log entry sits in what wrote it.
impl Store {
    /// The log position of the first entry written with the entry at `seq`: the first change of its
    /// source transaction (a transaction's changes take consecutive positions) or the first row of
    /// its snapshot file. `seq` minus it is the entry's index there. The walk back is as long as
    /// the transaction: callers ask once per transaction.
    pub fn first_of_transaction(&self, seq: u64) -> Result<u64> {
        let snapshot: Option<i64> = self
            .conn
            .prepare_cached(
                "SELECT first_seq FROM snapshots WHERE first_seq <= ?1 AND first_seq + rows > ?1",
            )
            .and_then(|mut s| s.query_row([seq as i64], |r| r.get(0)).optional())
            .map_err(sqlite("reading snapshots"))?;
        if let Some(first) = snapshot {
            return Ok(first as u64);
        }
        let mut stmt = self
            .conn
            .prepare_cached("SELECT seq, lsn FROM changes WHERE seq <= ?1 ORDER BY seq DESC")
            .map_err(sqlite("reading changes"))?;
        let mut rows = stmt
            .query([seq as i64])
            .map_err(sqlite("reading changes"))?;
        let mut first = seq;
        let mut lsn = None;
        while let Some(row) = rows.next().map_err(sqlite("reading changes"))? {
            let (at, at_lsn): (i64, i64) = (
                row.get(0).map_err(sqlite("reading changes"))?,
                row.get(1).map_err(sqlite("reading changes"))?,
            );
            let at = at as u64;
            match lsn {
                None => lsn = Some(at_lsn),
                Some(l) if l == at_lsn && at + 1 == first => {}
                Some(_) => break,
            }
            first = at;
        }
        Ok(first)
    }
}

/// What one [`Store::prune_log`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Per collection, the newest log position ever removed from it.
    pub collections: BTreeMap<String, u64>,
    /// Changes removed by this call.
    pub removed: u64,
    /// Whether it stopped at its limit with more old changes to look at.
    pub more: bool,
}

/// Log retention ([`crate::retention`]): old changes that no current row needs are removed.
impl Store {
    /// The newest log position taken (0 for an empty log); the next entry stored goes after it.
    pub fn log_end(&self) -> u64 {
        (self.next_seq - 1).max(0) as u64
    }

    /// Removes the log's changes committed before `older_than_ms` (Unix milliseconds, by
    /// `_meta.source.ts_ms`), in whole source transactions, oldest first, but for transactions
    /// that wrote the document of a current row, at most about `limit` per call, in one transaction of its own.
    /// Snapshots and the newest change (which fixes the next log position) are always kept.
    /// The newest position removed from each collection is updated in the same transaction under
    /// meta `key`.
    pub fn prune_log(&mut self, older_than_ms: i64, limit: usize, key: &str) -> Result<Pruned> {
        if self.batch.is_some() {
            return Err(Error::internal("store: prune_log inside a batch"));
        }
        const THROUGH: &str = "log_pruned_through";
        let from: i64 = self
            .meta(THROUGH)?
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut pruned: BTreeMap<String, u64> = self
            .meta(key)?
            .and_then(|v| serde_json::from_str(&v).ok())
            .unwrap_or_default();
        // Entries of one source transaction share its commit LSN and time: stopping where the
        // time is too new, or where the LSN changes after `limit`, never splits one.
        let mut seen_limit = false;
        let through = {
            let mut stmt = self
                .conn
                .prepare(
                    "SELECT seq, lsn, json_extract(doc, '$._meta.source.ts_ms') FROM changes
                     WHERE seq > ?1 AND seq < (SELECT max(seq) FROM changes) ORDER BY seq",
                )
                .map_err(sqlite("reading the log's age"))?;
            let mut rows = stmt
                .query([from])
                .map_err(sqlite("reading the log's age"))?;
            let mut through = from;
            let mut last_lsn = None;
            let mut seen = 0usize;
            while let Some(row) = rows.next().map_err(sqlite("reading the log's age"))? {
                let seq: i64 = row.get(0).map_err(sqlite("reading the log's age"))?;
                let lsn: i64 = row.get(1).map_err(sqlite("reading the log's age"))?;
                let ts: Option<i64> = row.get(2).map_err(sqlite("reading the log's age"))?;
                if seen >= limit && last_lsn != Some(lsn) {
                    seen_limit = true;
                    break;
                }
                if ts.is_none_or(|ts| ts >= older_than_ms) {
                    // `through` ends the transaction before this one, unless this one began it.
                    if last_lsn == Some(lsn) {
                        through = from;
                    }
                    break;
                }
                through = seq;
                last_lsn = Some(lsn);
                seen += 1;
            }
            through
        };
        if through <= from {
            return Ok(Pruned {
                collections: pruned,
                removed: 0,
                more: false,
            });
        }
        self.conn
            .execute_batch("BEGIN IMMEDIATE")
            .map_err(sqlite("pruning the log"))?;
        let done = (|| -> Result<u64> {
            // A transaction goes whole or not at all, so the entries kept of it still take
            // consecutive positions and their index in it (in every idempotency key) stays right.
            const GONE: &str = "c.seq > ?1 AND c.seq <= ?2
                 AND c.lsn NOT IN (SELECT k.lsn FROM changes k WHERE k.seq IN
                       (SELECT seq FROM rows WHERE seq > ?1 AND seq <= ?2))
                 AND c.lsn <> (SELECT lsn FROM changes ORDER BY seq DESC LIMIT 1)";
            let newest: Vec<(String, i64)> = {
                let mut stmt = self
                    .conn
                    .prepare(&format!(
                        "SELECT k.name, max(c.seq) FROM changes c JOIN collections k ON k.id = c.collection
                         WHERE {GONE} GROUP BY k.name"
                    ))
                    .map_err(sqlite("pruning the log"))?;
                let rows = stmt
                    .query_map(params![from, through], |r| Ok((r.get(0)?, r.get(1)?)))
                    .map_err(sqlite("pruning the log"))?;
                rows.collect::<std::result::Result<_, _>>()
                    .map_err(sqlite("pruning the log"))?
            };
            let removed = self
                .conn
                .execute(
                    &format!("DELETE FROM changes AS c WHERE {GONE}"),
                    params![from, through],
                )
                .map_err(sqlite("pruning the log"))?;
            for (name, seq) in newest {
                let at = pruned.entry(name).or_default();
                *at = (*at).max(seq as u64);
            }
            for (k, v) in [
                (THROUGH, through.to_string()),
                (
                    key,
                    serde_json::to_string(&pruned).map_err(Error::internal)?,
                ),
            ] {
                self.conn
                    .execute(
                        "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                        params![k, v],
                    )
                    .map_err(sqlite("pruning the log"))?;
            }
            self.conn
                .execute_batch("COMMIT")
                .map_err(sqlite("pruning the log"))?;
            Ok(removed as u64)
        })();
        match done {
            Ok(removed) => Ok(Pruned {
                collections: pruned,
                removed,
                more: seen_limit,
            }),
            Err(e) => {
                let _ = self.conn.execute_batch("ROLLBACK");
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (Store, PathBuf) {
        let dir = std::env::temp_dir().join(format!(
            "tidepool-store-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        (Store::open(&dir).unwrap(), dir)
    }

    fn spec(name: &str) -> CollectionSpec {
        CollectionSpec {
            name: name.into(),
            schema: "public".into(),
            table: "t".into(),
            key: vec!["id".into()],
            columns: Json::Array(vec![]),
        }
    }

    /// A collection whose base rows are a snapshot file of ids 1..=n (`id`, `v` = "row {id}").
    fn with_snapshot(store: &mut Store, n: i64) {
        use crate::snapshot::{SnapshotWriter, SourceColumn};
        store.begin().unwrap();
        store.put_collection(&spec("public/t")).unwrap();
        let mut writer = SnapshotWriter::create(&store.snapshot_dir(), store.key()).unwrap();
        for id in 1..=n {
            writer
                .push(
                    &sort_key(&format!("[{id}]")).unwrap(),
                    format!("{id}\trow {id}").as_bytes(),
                )
                .unwrap();
        }
        let (file, rows) = writer.finish().unwrap();
        let column = |name: &str, kind| SourceColumn {
            name: name.into(),
            type_oid: 0,
            kind,
        };
        let source = SnapshotSource {
            schema: "public".into(),
            table: "t".into(),
            columns: vec![
                column("id", crate::value::Kind::Integer),
                column("v", crate::value::Kind::Text),
            ],
            key: vec![0],
            lsn: 100,
            ts_ms: 5,
        };
        store
            .add_snapshot("public/t", &file, rows, &source)
            .unwrap();
        store.commit(Lsn(100)).unwrap();
    }

    #[test]
    fn an_encrypted_store_imports_a_staged_backfill_sealed_with_its_key() {
        let dir =
            std::env::temp_dir().join(format!("tidepool-store-sealed-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let key = std::sync::Arc::new(StoreKey::generate().unwrap());
        let mut store = Store::open_keyed(&dir, Some(key.clone())).unwrap();
        // Large values the backfill stored: one the store has already, one it takes over, in
        // pieces (each value spans several).
        let [a, b] = ["a", "b"].map(|c| serde_json::to_string(&c.repeat(2_500_000)).unwrap());
        let put = |store: &mut Store, json: &str, lsn| {
            store.begin().unwrap();
            let hash = store
                .put_large_value(&|sink| crate::large_value::pieces(json.as_bytes(), sink))
                .unwrap();
            store.commit(Lsn(lsn)).unwrap();
            hash
        };
        let hash_a = put(&mut store, &a, 50);
        let staging_dir = dir.join("backfills").join("one");
        let mut staging = Store::open_keyed(&staging_dir, Some(key.clone())).unwrap();
        with_snapshot(&mut staging, 500);
        assert_eq!(put(&mut staging, &a, 100), hash_a);
        let hash_b = put(&mut staging, &b, 100);
        drop(staging);
        store
            .import_backfill(&staging_dir, &[("public/t".to_string(), true)], &[])
            .unwrap();
        let info = store.collections().unwrap();
        assert_eq!((info[0].rows, info[0].changes), (500, 500));
        for (hash, json) in [(&hash_a, &a), (&hash_b, &b)] {
            let mut out = Vec::new();
            read_value(&store.conn, hash, &mut out).unwrap();
            assert!(
                out == json.as_bytes(),
                "large value {hash} brought in whole"
            );
        }
        let values: i64 = store
            .conn
            .query_row("SELECT count(*) FROM large_values", [], |r| r.get(0))
            .unwrap();
        assert_eq!(values, 2, "a value the store had is not copied again");
        drop(store);
        let err = Store::open_keyed(
            &dir,
            Some(std::sync::Arc::new(StoreKey::generate().unwrap())),
        )
        .err()
        .unwrap();
        assert_eq!(err.kind(), crate::ErrorKind::Locked, "{err}");
        let err = Store::open_keyed(&dir, None).err().unwrap();
        assert_eq!(err.kind(), crate::ErrorKind::Locked, "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_snapshot_is_the_base_rows_and_later_changes_shadow_it() {
        let (mut store, dir) = store();
        with_snapshot(&mut store, 3000);
        assert_eq!(
            store.last_seq("public/t").unwrap(),
            3000,
            "the snapshot's range"
        );
        let doc = |id: i64, v: &str| format!(r#"{{"id":{id},"v":"{v}","_meta":{{"op":"u"}}}}"#);
        store.begin().unwrap();
        store
            .apply(
                "public/t",
                Lsn(200),
                Op::Update,
                "[2]",
                None,
                doc(2, "changed"),
            )
            .unwrap();
        store
            .apply("public/t", Lsn(200), Op::Delete, "[3]", None, r#"{"id":3}"#)
            .unwrap();
        store
            .apply(
                "public/t",
                Lsn(200),
                Op::Create,
                "[5000]",
                None,
                doc(5000, "new"),
            )
            .unwrap();
        store
            .apply(
                "public/t",
                Lsn(200),
                Op::Update,
                "[1500]",
                Some("[1501]"),
                doc(1500, "moved"),
            )
            .unwrap();
        store.commit(Lsn(200)).unwrap();

        assert_eq!(store.last_seq("public/t").unwrap(), 3004);
        let info = &store.collections().unwrap()[0];
        // 3000, less 3 (deleted), plus 5000 (new), less 1501 (moved onto 1500, replacing it).
        assert_eq!((info.rows, info.changes), (2999, 3004));
        assert_eq!(
            info.last_change_ms, None,
            "the test documents carry no ts_ms"
        );

        let first = store.rows_after("public/t", None, 4, None).unwrap();
        let keys: Vec<&str> = first.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            ["[1]", "[2]", "[4]", "[5]"],
            "numeric order, 3 deleted"
        );
        assert_eq!(first[0].1["v"], "row 1");
        assert_eq!(first[0].1["_meta"]["source"]["snapshot"], true);
        assert_eq!(first[1].1["v"], "changed");
        let mut all = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = store
                .rows_after("public/t", after.as_deref(), 700, None)
                .unwrap();
            if page.is_empty() {
                break;
            }
            after = page.last().map(|(k, _)| k.clone());
            all.extend(page);
        }
        assert_eq!(all.len(), 2999);
        assert_eq!(all[1498].1["v"], "moved", "1500 replaced by the moved row");
        assert_eq!(all[1499].0, "[1502]", "1501 is gone");
        assert_eq!(all.last().unwrap().0, "[5000]");
        assert_eq!(store.row("public/t", "[7]").unwrap().unwrap()["v"], "row 7");
        assert!(store.row("public/t", "[3]").unwrap().is_none());

        let filter = Filter {
            field: "v".into(),
            value: "row 2999".into(),
            contains: false,
        };
        let found = store
            .rows_after("public/t", None, 10, Some(&filter))
            .unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].0, "[2999]");
        // Filters the file's lines are screened for: a substring of a text column, an integer column,
        // and values the screen must not be trusted with (NULL, what COPY escapes).
        let filter = |field: &str, value: &str, contains| Filter {
            field: field.into(),
            value: value.into(),
            contains,
        };
        let keys = |f: Filter| -> Vec<String> {
            store
                .rows_after("public/t", None, 100, Some(&f))
                .unwrap()
                .into_iter()
                .map(|(k, _)| k)
                .collect()
        };
        let mut expected = vec!["[299]".to_string()];
        expected.extend((2990..=2999).map(|i| format!("[{i}]")));
        assert_eq!(keys(filter("v", "row 299", true)), expected);
        assert_eq!(keys(filter("id", "2998", false)), ["[2998]"]);
        assert_eq!(
            keys(filter("v", "changed", false)),
            ["[2]"],
            "a shadowing row"
        );
        assert!(keys(filter("v", "null", false)).is_empty());
        assert!(keys(filter("v", "row\t1", true)).is_empty());
        let logged = store
            .changes_matching("public/t", 0, 100, Some(&filter("id", "2998", false)))
            .unwrap();
        assert_eq!(logged.len(), 1);
        assert_eq!(logged[0].0, 2998);
        let newest = store
            .latest_changes_matching("public/t", 5, Some(&filter("v", "row 299", true)))
            .unwrap();
        let seqs: Vec<u64> = newest.iter().map(|(s, _)| *s).collect();
        assert_eq!(seqs, [2995, 2996, 2997, 2998, 2999]);

        // The log: the snapshot's 3000 documents, then the four changes.
        let head = store.changes("public/t", 0, 2).unwrap();
        assert_eq!((head[0].0, head[0].1["id"].as_i64()), (1, Some(1)));
        let across = store.changes("public/t", 2998, 4).unwrap();
        let seqs: Vec<u64> = across.iter().map(|(s, _)| *s).collect();
        assert_eq!(seqs, [2999, 3000, 3001, 3002]);
        assert_eq!(across[2].1["v"], "changed");
        let latest = store.latest_changes("public/t", 6).unwrap();
        let seqs: Vec<u64> = latest.iter().map(|(s, _)| *s).collect();
        assert_eq!(seqs, [2999, 3000, 3001, 3002, 3003, 3004]);
        let snapshot_only = Filter {
            field: "v".into(),
            value: "row 1".into(),
            contains: true,
        };
        let latest = store
            .latest_changes_matching("public/t", 2, Some(&snapshot_only))
            .unwrap();
        let ids: Vec<i64> = latest
            .iter()
            .map(|(_, d)| d["id"].as_i64().unwrap())
            .collect();
        assert_eq!(
            ids,
            [1998, 1999],
            "the newest matches, read backwards through the file"
        );

        // A truncate empties the collection; the log keeps everything.
        store.begin().unwrap();
        store
            .apply("public/t", Lsn(300), Op::Truncate, "", None, "{}")
            .unwrap();
        store.commit(Lsn(300)).unwrap();
        let info = &store.collections().unwrap()[0];
        assert_eq!((info.rows, info.changes), (0, 3005));
        assert!(store
            .rows_after("public/t", None, 10, None)
            .unwrap()
            .is_empty());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_large_value_is_stored_once_and_every_reader_gets_it_back() {
        let (mut store, dir) = store();
        store.begin().unwrap();
        store.put_collection(&spec("public/t")).unwrap();
        let value = "\"x\"\n".repeat(40_000);
        let json = serde_json::to_string(&value).unwrap();
        let put = |store: &mut Store| {
            store
                .put_large_value(&|sink| crate::large_value::pieces(json.as_bytes(), sink))
                .unwrap()
        };
        let hash = put(&mut store);
        assert_eq!(put(&mut store), hash, "the same value, the same hash");
        let doc = |n: i64| {
            let text = format!(r#"{{"id":1,"n":{n},"big":null}}"#);
            let at = text.find("null").unwrap();
            Document {
                text,
                refs: vec![ValueRef {
                    at,
                    hash: hash.clone(),
                    path: vec!["big".into()],
                }],
            }
        };
        store
            .apply("public/t", Lsn(1), Op::Create, "[1]", None, doc(0))
            .unwrap();
        store
            .hold("public/t", Lsn(2), Op::Update, "[1]", None, &doc(1))
            .unwrap();
        store.replay_held("public/t").unwrap();
        store.commit(Lsn(2)).unwrap();
        let values: i64 = store
            .conn
            .query_row("SELECT count(*) FROM large_values", [], |r| r.get(0))
            .unwrap();
        assert_eq!(values, 1);
        let whole = |n: i64| serde_json::json!({"id": 1, "n": n, "big": value});
        let changes = store.changes("public/t", 0, 10).unwrap();
        assert_eq!(changes[0].1, whole(0));
        assert_eq!(changes[1].1, whole(1), "a held change keeps its reference");
        assert_eq!(store.row("public/t", "[1]").unwrap().unwrap(), whole(1));
        let stored = store.row_document("public/t", "[1]").unwrap().unwrap();
        assert_eq!(stored, doc(1), "as stored, without reading the value");
        let filter = |value: &str| Filter {
            field: "big".into(),
            value: value.into(),
            contains: true,
        };
        let found = store
            .changes_matching("public/t", 0, 10, Some(&filter("\"x\"\n\"x")))
            .unwrap();
        assert_eq!(found.len(), 2);
        assert!(store
            .rows_after("public/t", None, 10, Some(&filter("y")))
            .unwrap()
            .is_empty());
        store.forget_capture(&[]).unwrap();
        let values: i64 = store
            .conn
            .query_row("SELECT count(*) FROM large_values", [], |r| r.get(0))
            .unwrap();
        assert_eq!(values, 0, "forgotten with the capture");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn an_uncommitted_snapshot_is_removed_and_a_recorded_one_kept() {
        let (mut store, dir) = store();
        with_snapshot(&mut store, 10);
        let mut stray =
            crate::snapshot::SnapshotWriter::create(&store.snapshot_dir(), store.key()).unwrap();
        stray.push(b"x", b"1").unwrap();
        stray.finish().unwrap();
        std::fs::write(store.snapshot_dir().join("half.snap.partial"), b"TPSNAP01").unwrap();
        assert_eq!(std::fs::read_dir(store.snapshot_dir()).unwrap().count(), 3);
        store.remove_unrecorded_snapshots().unwrap();
        assert_eq!(std::fs::read_dir(store.snapshot_dir()).unwrap().count(), 1);
        assert_eq!(store.collections().unwrap()[0].rows, 10);
        store.forget_capture(&[]).unwrap();
        assert_eq!(std::fs::read_dir(store.snapshot_dir()).unwrap().count(), 0);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn rows_are_reduced_by_key_and_the_log_keeps_every_change() {
        let (mut store, dir) = store();
        store.begin().unwrap();
        store.put_collection(&spec("public/t")).unwrap();
        store
            .apply(
                "public/t",
                Lsn(10),
                Op::Create,
                "[1]",
                None,
                r#"{"id":1,"v":"a"}"#,
            )
            .unwrap();
        store
            .apply(
                "public/t",
                Lsn(10),
                Op::Create,
                "[2]",
                None,
                r#"{"id":2,"v":"b"}"#,
            )
            .unwrap();
        store
            .apply(
                "public/t",
                Lsn(10),
                Op::Update,
                "[1]",
                None,
                r#"{"id":1,"v":"c"}"#,
            )
            .unwrap();
        store
            .apply(
                "public/t",
                Lsn(10),
                Op::Update,
                "[3]",
                Some("[2]"),
                r#"{"id":3,"v":"b"}"#,
            )
            .unwrap();
        assert_eq!(store.batch_len(), 4);
        store.commit(Lsn(20)).unwrap();
        assert_eq!(
            store.rows("public/t", 10).unwrap(),
            vec![
                serde_json::json!({"id":1,"v":"c"}),
                serde_json::json!({"id":3,"v":"b"})
            ]
        );
        store.begin().unwrap();
        store
            .apply("public/t", Lsn(30), Op::Delete, "[1]", None, r#"{"id":1}"#)
            .unwrap();
        store.commit(Lsn(40)).unwrap();
        assert_eq!(
            store.collections().unwrap(),
            vec![CollectionInfo {
                name: "public/t".into(),
                rows: 1,
                changes: 5,
                last_change_ms: None,
            }]
        );
        assert_eq!(store.checkpoint().unwrap(), Lsn(40));
        store.begin().unwrap();
        store
            .apply("public/t", Lsn(50), Op::Truncate, "", None, r#"{}"#)
            .unwrap();
        store.commit(Lsn(60)).unwrap();
        assert_eq!(store.collections().unwrap()[0].rows, 0);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn chunked_writes_keep_the_order_of_changes() {
        let (mut store, dir) = store();
        store.begin().unwrap();
        store.put_collection(&spec("public/t")).unwrap();
        for i in 0..150 {
            store
                .apply(
                    "public/t",
                    Lsn(1),
                    Op::Create,
                    &format!("[{i}]"),
                    None,
                    format!(r#"{{"id":{i},"v":0}}"#),
                )
                .unwrap();
        }
        // Within the next chunk: the same key twice, then a delete and a key change that flush it.
        store
            .apply(
                "public/t",
                Lsn(2),
                Op::Update,
                "[7]",
                None,
                r#"{"id":7,"v":1}"#,
            )
            .unwrap();
        store
            .apply(
                "public/t",
                Lsn(2),
                Op::Update,
                "[7]",
                None,
                r#"{"id":7,"v":2}"#,
            )
            .unwrap();
        store
            .apply("public/t", Lsn(2), Op::Delete, "[8]", None, r#"{"id":8}"#)
            .unwrap();
        store
            .apply(
                "public/t",
                Lsn(2),
                Op::Update,
                "[200]",
                Some("[9]"),
                r#"{"id":200,"v":3}"#,
            )
            .unwrap();
        assert_eq!(
            store.row("public/t", "[7]").unwrap().unwrap()["v"],
            2,
            "reads see buffered writes"
        );
        store.commit(Lsn(3)).unwrap();
        let info = &store.collections().unwrap()[0];
        assert_eq!((info.rows, info.changes), (149, 154));
        let changes = store.changes("public/t", 0, 1000).unwrap();
        let seqs: Vec<u64> = changes.iter().map(|(seq, _)| *seq).collect();
        assert_eq!(seqs, (1..=154).collect::<Vec<_>>());
        assert_eq!(changes[151].1, serde_json::json!({"id":7,"v":2}));
        let rows = store.rows("public/t", 1000).unwrap();
        assert!(rows.iter().all(|r| r["id"] != 8 && r["id"] != 9));
        assert!(rows.contains(&serde_json::json!({"id":200,"v":3})));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn an_uncommitted_batch_leaves_nothing_behind_and_the_checkpoint_never_moves_back() {
        let (mut store, dir) = store();
        store.begin().unwrap();
        store.put_collection(&spec("public/t")).unwrap();
        store
            .apply("public/t", Lsn(10), Op::Create, "[1]", None, "{}")
            .unwrap();
        // Dropped without commit: as after a crash.
        drop(store);
        let mut store = Store::open(&dir).unwrap();
        assert!(store.collections().unwrap().is_empty());
        assert_eq!(store.checkpoint().unwrap(), Lsn(0));
        assert!(
            store
                .apply("public/t", Lsn(10), Op::Create, "[1]", None, "{}")
                .is_err(),
            "writes need a batch"
        );
        store.commit(Lsn(100)).unwrap();
        assert!(store.commit(Lsn(50)).is_err());
        assert_eq!(store.checkpoint().unwrap(), Lsn(100));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn pages_of_rows_follow_the_key_and_filters_match_as_the_tail_does() {
        let (mut store, dir) = store();
        store.begin().unwrap();
        store.put_collection(&spec("public/t")).unwrap();
        let docs = [
            (
                "[1]",
                r#"{"id":1,"name":"ada","vip":true,"note":null,"tags":["x"]}"#,
            ),
            ("[2]", r#"{"id":2,"name":"bob","vip":false,"note":"hi"}"#),
            ("[3]", r#"{"id":3,"name":"adam","vip":true}"#),
            ("[4]", r#"{"id":4,"name":"cy","vip":false,"note":"ho"}"#),
        ];
        for (key, doc) in docs {
            store
                .apply("public/t", Lsn(1), Op::Create, key, None, doc.to_string())
                .unwrap();
        }
        store.commit(Lsn(1)).unwrap();

        let first = store.rows_after("public/t", None, 3, None).unwrap();
        let keys: Vec<&str> = first.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["[1]", "[2]", "[3]"]);
        let next = store.rows_after("public/t", Some("[3]"), 3, None).unwrap();
        assert_eq!(next.len(), 1);
        assert_eq!(next[0].1["id"], 4);

        let cases = [
            (
                Filter {
                    field: "name".into(),
                    value: "ada".into(),
                    contains: false,
                },
                vec![1],
            ),
            (
                Filter {
                    field: "name".into(),
                    value: "ada".into(),
                    contains: true,
                },
                vec![1, 3],
            ),
            (
                Filter {
                    field: "id".into(),
                    value: "2".into(),
                    contains: false,
                },
                vec![2],
            ),
            (
                Filter {
                    field: "vip".into(),
                    value: "true".into(),
                    contains: false,
                },
                vec![1, 3],
            ),
            (
                Filter {
                    field: "note".into(),
                    value: "null".into(),
                    contains: false,
                },
                vec![1],
            ),
            (
                Filter {
                    field: "tags".into(),
                    value: r#"["x"]"#.into(),
                    contains: false,
                },
                vec![1],
            ),
            (
                Filter {
                    field: "note".into(),
                    value: "h".into(),
                    contains: true,
                },
                vec![2, 4],
            ),
            (
                Filter {
                    field: "absent".into(),
                    value: "".into(),
                    contains: true,
                },
                vec![],
            ),
        ];
        for (filter, expected) in cases {
            let rows = store
                .rows_after("public/t", None, 10, Some(&filter))
                .unwrap();
            let ids: Vec<i64> = rows
                .iter()
                .map(|(_, d)| d["id"].as_i64().unwrap())
                .collect();
            assert_eq!(ids, expected, "rows for {filter:?}");
            let changes = store
                .changes_matching("public/t", 0, 10, Some(&filter))
                .unwrap();
            let ids: Vec<i64> = changes
                .iter()
                .map(|(_, d)| d["id"].as_i64().unwrap())
                .collect();
            assert_eq!(ids, expected, "changes for {filter:?}");
            // A live tail applies the same rule to each arriving document.
            let tailed: Vec<i64> = docs
                .iter()
                .map(|(_, d)| serde_json::from_str::<Json>(d).unwrap())
                .filter(|d| filter.matches(d))
                .map(|d| d["id"].as_i64().unwrap())
                .collect();
            assert_eq!(tailed, expected, "tail for {filter:?}");
        }
        let bad = Filter {
            field: "a\"b".into(),
            value: "x".into(),
            contains: false,
        };
        let e = store
            .rows_after("public/t", None, 10, Some(&bad))
            .unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::InvalidInput);
        assert!(e.message().contains("filter field"), "{e}");
        drop(store);
        let _ = std::fs::remove_dir_all(dir);
    }
}
