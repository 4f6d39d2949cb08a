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

use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;
use serde_json::Value as Json;

use crate::error::{Error, Result};
use crate::pgoutput::Lsn;

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
#[derive(Debug, Clone, PartialEq, Serialize)]
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
    pub columns: Json,
}

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
}

struct Pending {
    seq: i64,
    collection: i64,
    lsn: Lsn,
    op: Op,
    key: String,
    doc: String,
}

/// Rows per multi-row INSERT.
const CHUNK: usize = 64;

/// The multi-row statements, built once.
static CHANGES_CHUNK_SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "INSERT INTO changes (seq, collection, lsn, op, doc) VALUES {}",
        vec!["(?, ?, ?, ?, ?)"; CHUNK].join(", ")
    )
});
static ROWS_CHUNK_SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "INSERT INTO rows (collection, key, seq) VALUES {} ON CONFLICT (collection, key) DO UPDATE SET seq = excluded.seq",
        vec!["(?, ?, ?)"; CHUNK].join(", ")
    )
});

fn sqlite(context: &str) -> impl Fn(rusqlite::Error) -> Error + '_ {
    move |e| Error::internal(format!("store: {context}: {e}"))
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

    /// Opens (creating if needed) the store in `dir`.
    pub fn open(dir: &Path) -> Result<Store> {
        std::fs::create_dir_all(dir).map_err(|e| {
            Error::invalid_input("--store", format!("cannot create {}: {e}", dir.display()))
        })?;
        let path = dir.join("tidepool.db");
        let conn = Connection::open(&path).map_err(sqlite("opening"))?;
        // Another process (the command line editing the definition, a preview) may hold the write
        // lock for a moment; wait for it instead of failing.
        conn.busy_timeout(std::time::Duration::from_secs(30))
            .map_err(sqlite("opening"))?;
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
             CREATE TABLE IF NOT EXISTS rows (
               collection INTEGER NOT NULL,
               key TEXT NOT NULL,
               seq INTEGER NOT NULL,
               PRIMARY KEY (collection, key)) WITHOUT ROWID;
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
        let ids = collection_ids(&conn)?;
        let next_seq = next_seq(&conn)?;
        Ok(Store {
            conn,
            path,
            batch: None,
            ids,
            next_seq,
            pending: Vec::with_capacity(CHUNK),
        })
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
            "DELETE FROM changes; DELETE FROM rows; DELETE FROM held; DELETE FROM collections; DELETE FROM meta;",
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
        Ok(())
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
        if self.batch.take().is_some() {
            self.conn
                .execute_batch("ROLLBACK")
                .map_err(sqlite("rolling back"))?;
            // Collections first recorded in the batch are gone with it, and so are their positions.
            self.ids = collection_ids(&self.conn)?;
            self.next_seq = next_seq(&self.conn)?;
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
                        (SELECT count(*) FROM rows r WHERE r.collection = c.id),
                        (SELECT count(*) FROM changes h WHERE h.collection = c.id),
                        (SELECT json_extract(h.doc, '$._meta.source.ts_ms') FROM changes h
                          WHERE h.collection = c.id ORDER BY h.seq DESC LIMIT 1)
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
        // Two statements rather than `(?3 IS NULL OR r.key > ?3)`: with the OR, SQLite cannot seek
        // the key index to the cursor and reads every row before it.
        let cursor = if after.is_some() {
            "r.key > ?3"
        } else {
            "?3 IS NULL"
        };
        let mut stmt = self
            .conn
            .prepare_cached(&format!(
                "SELECT r.key, c.doc FROM rows r JOIN changes c ON c.seq = r.seq
                  WHERE r.collection = ?1 AND {cursor} AND {}
                  ORDER BY r.key LIMIT ?2",
                FilterParams::SQL
            ))
            .map_err(sqlite("reading rows"))?;
        let docs = stmt
            .query_map(
                params![id, limit as i64, after, f.path, f.value, f.contains],
                |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)),
            )
            .map_err(sqlite("reading rows"))?;
        docs.map(|d| {
            let (key, doc) = d.map_err(sqlite("reading rows"))?;
            Ok((key, parse(doc)?))
        })
        .collect()
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
        let mut stmt = self
            .conn
            .prepare_cached(&format!(
                "SELECT c.seq, c.doc FROM changes c WHERE c.collection = ?1 AND {} ORDER BY c.seq DESC LIMIT ?2",
                FilterParams::SQL
            ))
            .map_err(sqlite("reading changes"))?;
        let docs = stmt
            .query_map(
                params![
                    id,
                    limit as i64,
                    None::<String>,
                    f.path,
                    f.value,
                    f.contains
                ],
                |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, String>(1)?)),
            )
            .map_err(sqlite("reading changes"))?;
        let mut entries = docs
            .map(|d| {
                let (seq, doc) = d.map_err(sqlite("reading changes"))?;
                Ok((seq, parse(doc)?))
            })
            .collect::<Result<Vec<_>>>()?;
        entries.reverse();
        Ok(entries)
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
        let mut stmt = self
            .conn
            .prepare_cached(&format!(
                "SELECT c.seq, c.doc FROM changes c WHERE c.collection = ?1 AND c.seq > ?3 AND {} ORDER BY c.seq LIMIT ?2",
                FilterParams::SQL
            ))
            .map_err(sqlite("reading changes"))?;
        let docs = stmt
            .query_map(
                params![id, limit as i64, after as i64, f.path, f.value, f.contains],
                |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, String>(1)?)),
            )
            .map_err(sqlite("reading changes"))?;
        docs.map(|d| {
            let (seq, doc) = d.map_err(sqlite("reading changes"))?;
            Ok((seq, parse(doc)?))
        })
        .collect()
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
    /// The condition on `c.doc`, matching [`Filter::matches`].
    const SQL: &'static str = "(?4 IS NULL OR (CASE WHEN ?6 THEN instr(
            CASE json_type(c.doc, ?4) WHEN 'true' THEN 'true' WHEN 'false' THEN 'false' WHEN 'null' THEN 'null'
                 ELSE CAST(json_extract(c.doc, ?4) AS TEXT) END, ?5) > 0
          ELSE CASE json_type(c.doc, ?4) WHEN 'true' THEN 'true' WHEN 'false' THEN 'false' WHEN 'null' THEN 'null'
                 ELSE CAST(json_extract(c.doc, ?4) AS TEXT) END = ?5 END))";

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
    conn.query_row("SELECT COALESCE(max(seq), 0) + 1 FROM changes", [], |r| {
        r.get(0)
    })
    .map_err(sqlite("reading the log's end"))
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
    /// Records (or updates) a collection's description, in the open batch.
    pub fn put_collection(&mut self, spec: &CollectionSpec) -> Result<()> {
        self.in_open_batch("recording a collection")?;
        let id: i64 = self
            .conn
            .prepare_cached(
                "INSERT INTO collections (name, schema_name, table_name, key_columns, columns) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (name) DO UPDATE SET key_columns = excluded.key_columns, columns = excluded.columns
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
        let doc: Option<String> = self
            .conn
            .prepare_cached("SELECT c.doc FROM rows r JOIN changes c ON c.seq = r.seq WHERE r.collection = ?1 AND r.key = ?2")
            .and_then(|mut s| s.query_row(params![id, key], |r| r.get(0)).optional())
            .map_err(sqlite("reading a row"))?;
        doc.map(parse).transpose()
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
        doc: impl Into<String>,
    ) -> Result<()> {
        let doc = doc.into();
        self.in_open_batch("writing a change")?;
        let id = self.id_of(collection)?;
        let seq = self.next_seq;
        self.next_seq += 1;
        let key_changed = old_key.is_some_and(|old| old != key);
        if matches!(op, Op::Create | Op::Update) && !key_changed {
            self.pending.push(Pending {
                seq,
                collection: id,
                lsn,
                op,
                key: key.to_string(),
                doc,
            });
            if self.pending.len() >= CHUNK {
                self.write_pending()?;
            }
        } else {
            self.write_pending()?;
            self.insert_change(seq, id, lsn, op, &doc)?;
            if let Some(old) = old_key.filter(|_| key_changed) {
                self.delete_row(id, old)?;
            }
            match op {
                Op::Create | Op::Update => self.upsert_row(id, key, seq)?,
                Op::Delete => self.delete_row(id, key)?,
                Op::Truncate => {
                    self.conn
                        .prepare_cached("DELETE FROM rows WHERE collection = ?1")
                        .and_then(|mut s| s.execute([id]))
                        .map_err(sqlite("truncating rows"))?;
                }
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
        doc: &str,
    ) -> Result<()> {
        self.in_open_batch("holding a change")?;
        self.conn
            .prepare_cached(
                "INSERT INTO held (collection, lsn, op, key, old_key, doc) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )
            .and_then(|mut s| {
                s.execute(params![collection, lsn.0 as i64, op.code(), key, old_key, doc])
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
        self.conn
            .execute("ATTACH DATABASE ?1 AS staging", [file.to_string_lossy()])
            .map_err(sqlite("attaching a backfill"))?;
        let result = self.import_attached(collections, meta);
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
                     ON CONFLICT (name) DO UPDATE SET key_columns = excluded.key_columns, columns = excluded.columns",
                    [staged],
                )
                .map_err(sqlite("importing a backfill's collection"))?;
            self.ids = collection_ids(&self.conn)?;
            let id = self.id_of(collection)?;
            if *replace {
                self.conn
                    .execute("DELETE FROM main.rows WHERE collection = ?1", [id])
                    .map_err(sqlite("replacing rows"))?;
            }
            rows += self
                .conn
                .execute(
                    "INSERT INTO main.changes (seq, collection, lsn, op, doc)
                     SELECT ?1 + seq, ?2, lsn, op, doc FROM staging.changes WHERE collection = ?3 ORDER BY seq",
                    params![base, id, staged],
                )
                .map_err(sqlite("importing a backfill's documents"))? as u64;
            self.conn
                .execute(
                    "INSERT INTO main.rows (collection, key, seq)
                     SELECT ?2, key, ?1 + seq FROM staging.rows WHERE collection = ?3
                     ON CONFLICT (collection, key) DO UPDATE SET seq = excluded.seq",
                    params![base, id, staged],
                )
                .map_err(sqlite("importing a backfill's rows"))?;
        }
        self.next_seq = next_seq(&self.conn)?;
        for (collection, _) in collections {
            self.replay_held(collection)?;
        }
        for (key, value) in meta {
            self.set_meta(key, value)?;
        }
        self.commit(checkpoint)?;
        Ok(rows)
    }

    /// Applies the held changes of `collection` in order and forgets them.
    fn replay_held(&mut self, collection: &str) -> Result<()> {
        let held = {
            let mut stmt = self
                .conn
                .prepare(
                    "SELECT lsn, op, key, old_key, doc FROM held WHERE collection = ?1 ORDER BY n",
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
        for (lsn, op, key, old_key, doc) in held {
            let op = Op::from_code(&op)
                .ok_or_else(|| Error::internal(format!("store: a held change has op '{op}'")))?;
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

    fn insert_change(&self, seq: i64, collection: i64, lsn: Lsn, op: Op, doc: &str) -> Result<()> {
        self.conn
            .prepare_cached(
                "INSERT INTO changes (seq, collection, lsn, op, doc) VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .and_then(|mut s| s.execute(params![seq, collection, lsn.0 as i64, op.code(), doc]))
            .map_err(sqlite("appending a change"))?;
        Ok(())
    }

    fn upsert_row(&mut self, collection: i64, key: &str, seq: i64) -> Result<()> {
        self.conn
            .prepare_cached(
                "INSERT INTO rows (collection, key, seq) VALUES (?1, ?2, ?3)
                 ON CONFLICT (collection, key) DO UPDATE SET seq = excluded.seq",
            )
            .and_then(|mut s| s.execute(params![collection, key, seq]))
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
        let mut chunks = pending.chunks_exact(CHUNK);
        for chunk in &mut chunks {
            // Converted values live here so the statement can borrow them.
            let converted: Vec<(i64, &str)> = chunk
                .iter()
                .map(|p| (p.lsn.0 as i64, p.op.code()))
                .collect();
            let changes = chunk.iter().zip(&converted).flat_map(
                |(p, (lsn, op))| -> [&dyn rusqlite::ToSql; 5] {
                    [&p.seq, &p.collection, lsn, op, &p.doc]
                },
            );
            self.conn
                .prepare_cached(&CHANGES_CHUNK_SQL)
                .and_then(|mut s| s.execute(rusqlite::params_from_iter(changes)))
                .map_err(sqlite("appending changes"))?;
            let rows = chunk
                .iter()
                .flat_map(|p| -> [&dyn rusqlite::ToSql; 3] { [&p.collection, &p.key, &p.seq] });
            self.conn
                .prepare_cached(&ROWS_CHUNK_SQL)
                .and_then(|mut s| s.execute(rusqlite::params_from_iter(rows)))
                .map_err(sqlite("writing rows"))?;
        }
        for p in chunks.remainder() {
            self.insert_change(p.seq, p.collection, p.lsn, p.op, &p.doc)?;
            self.upsert_row(p.collection, &p.key, p.seq)?;
        }
        self.pending = pending;
        self.pending.clear();
        Ok(())
    }

    fn delete_row(&mut self, collection: i64, key: &str) -> Result<()> {
        self.conn
            .prepare_cached("DELETE FROM rows WHERE collection = ?1 AND key = ?2")
            .and_then(|mut s| s.execute(params![collection, key]))
            .map_err(sqlite("deleting a row"))?;
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
