//! Writes, batching and the checkpoint: a batch ([`Store::begin`] … [`Store::commit`]) applies whole
//! source transactions to the change log and the rows and commits them with the checkpoint LSN.
//!
//! Invariants: changes and the checkpoint commit in one SQLite transaction, and the checkpoint never
//! moves back; a failed write of buffered inserts rolls the whole batch back, and no batch begins
//! until the caller has called [`Store::rollback`]; inserts are held in `pending` and written many per statement, but anything that must
//! see them (a read, a delete, a key change, a truncate, a commit) writes them first; changes held for
//! a table not yet backfilled are replayed only past its snapshot point; a chunk whose positions
//! are left to SQLite ([`CHANGES_APPEND_SQL`]) starts right after the log's last change and is checked
//! to end at the position the store gave its last change, or its batch fails.

use super::*;
use crate::store::rowkey::push_sort_key;

/// Rows per multi-row INSERT.
pub(super) const CHUNK: usize = 64;

/// Held documents' bytes past which they are written before a chunk is full.
pub(super) const PENDING_BYTES: usize = 8 * 1024 * 1024;

/// The multi-row statements, built once. `OR FAIL`, not SQLite's default `ABORT`: an aborting
/// statement that writes many rows inside a transaction first copies every page it touches into a
/// statement journal, to undo itself alone (a memcpy of a 16 KiB page, a malloc and a free per page:
/// 8–10 % of the capture's CPU). A failed statement here abandons the whole batch instead
/// ([`Store::write_pending`]), so the rows it wrote before failing are never committed. Whether a
/// statement needs the journal is SQLite's decision and can change with its version: a profile
/// that shows `memjrnlWrite` again means it has.
pub(super) static CHANGES_CHUNK_SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "INSERT OR FAIL INTO changes (seq, collection, lsn, op, doc, refs, meta_at, source_table, txid, ts_ms) VALUES {}",
        vec!["(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"; CHUNK].join(", ")
    )
});

pub(super) static ROWS_CHUNK_SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "INSERT OR FAIL INTO rows (collection, skey, key, seq, base) VALUES {} ON CONFLICT (collection, skey) DO UPDATE SET seq = excluded.seq",
        vec!["(?, ?, ?, ?, ?)"; CHUNK].join(", ")
    )
});

/// [`CHANGES_CHUNK_SQL`] for a uniform chunk ([`uniform`]): what its changes share is bound once
/// (`?1` the first change's position, the others' following it; `?2`–`?7` collection, LSN, op and
/// the source's table, transaction id and time), and each change binds only its document and where its
/// source was cut. A chunk of one source transaction's inserts into one table binds 135 values
/// instead of 640: binding and unbinding were 12 % of the capture's instructions (docs/benchmarks.md,
/// issue 21, step 12).
pub(super) static CHANGES_UNIFORM_SQL: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| uniform_changes_sql(false));

/// [`CHANGES_UNIFORM_SQL`] for a chunk that starts right after the log's last change: its positions
/// are left to SQLite, which gives each row the table's largest position plus one, the same
/// positions. An explicit position costs a search of the log's B-tree per change, to prove it
/// unused (7 % of the capture's instructions); a new one is taken from the tree's right edge.
/// `?1` is bound and not used, so both statements take the same values.
pub(super) static CHANGES_APPEND_SQL: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| uniform_changes_sql(true));

fn uniform_changes_sql(append: bool) -> String {
    let rows: Vec<String> = (0..CHUNK)
        .map(|k| {
            let seq = match (append, k) {
                (true, _) => String::new(),
                (false, 0) => "?1, ".to_string(),
                (false, k) => format!("?1 + {k}, "),
            };
            format!(
                "({seq}?2, ?3, ?4, ?{}, NULL, ?{}, ?5, ?6, ?7)",
                UNIFORM_CHANGES_SHARED + 1 + 2 * k,
                UNIFORM_CHANGES_SHARED + 2 + 2 * k
            )
        })
        .collect();
    format!(
        "INSERT OR FAIL INTO changes ({}collection, lsn, op, doc, refs, meta_at, source_table, txid, ts_ms) VALUES {}",
        if append { "" } else { "seq, " },
        rows.join(", ")
    )
}

/// The values [`CHANGES_UNIFORM_SQL`] binds once per chunk.
const UNIFORM_CHANGES_SHARED: usize = 7;

/// [`ROWS_CHUNK_SQL`] for a uniform chunk: `?1` the collection, `?2` the first change's position,
/// `?3` whether rows are in the live snapshot; each row binds its sort key and key.
pub(super) static ROWS_UNIFORM_SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let rows: Vec<String> = (0..CHUNK)
        .map(|k| {
            let seq = if k == 0 {
                "?2".to_string()
            } else {
                format!("?2 + {k}")
            };
            format!(
                "(?1, ?{}, ?{}, {seq}, ?3)",
                UNIFORM_ROWS_SHARED + 1 + 2 * k,
                UNIFORM_ROWS_SHARED + 2 + 2 * k
            )
        })
        .collect();
    format!(
        "INSERT OR FAIL INTO rows (collection, skey, key, seq, base) VALUES {} ON CONFLICT (collection, skey) DO UPDATE SET seq = excluded.seq",
        rows.join(", ")
    )
});

/// The values [`ROWS_UNIFORM_SQL`] binds once per chunk.
const UNIFORM_ROWS_SHARED: usize = 3;

/// Whether `chunk` can be written with the uniform statements: consecutive positions, and one
/// collection, LSN, op, snapshot membership and source; no references (their column is NULL there).
pub(super) fn uniform(chunk: &[Pending]) -> bool {
    let Some(first) = chunk.first() else {
        return false;
    };
    let source = |p: &Pending| p.cut.map(|c| (c.source_table, c.txid, c.ts_ms));
    chunk.iter().zip(first.seq..).all(|(p, seq)| {
        p.seq == seq
            && p.collection == first.collection
            && p.lsn == first.lsn
            && p.op == first.op
            && p.base == first.base
            && p.refs.is_none()
            && source(p) == source(first)
    })
}

/// The `meta_at` value of a change: where its source was cut, if it was.
fn at_param(cut: Option<StoredCut>) -> bulk::Param<'static> {
    cut.map_or(bulk::Param::Null, |c| bulk::Param::Int(c.at))
}

/// The `source_table`, `txid` and `ts_ms` values of a change, in that order: its cut source's, or
/// none.
fn source_params(cut: Option<StoredCut>) -> [bulk::Param<'static>; 3] {
    use bulk::Param;
    match cut {
        Some(cut) => [
            Param::Int(cut.source_table),
            Param::Int(cut.txid),
            Param::Int(cut.ts_ms),
        ],
        None => [Param::Null; 3],
    }
}

/// The statement in `slot`, prepared from `sql` on first use.
fn prepared<'s>(
    slot: &'s mut Option<bulk::Bulk>,
    conn: &Connection,
    sql: &str,
) -> rusqlite::Result<&'s mut bulk::Bulk> {
    let stmt = match slot.take() {
        Some(stmt) => stmt,
        None => bulk::Bulk::prepare(conn, sql)?,
    };
    Ok(slot.insert(stmt))
}

impl crate::document::LargeValues for Store {
    fn put_large_value(&mut self, json: &dyn Fn(&mut Sink<'_>) -> Result<()>) -> Result<String> {
        Store::put_large_value(self, json)
    }

    fn spare_buffer(&mut self) -> String {
        self.spare.pop().unwrap_or_default()
    }
}

impl Store {
    /// Keeps `buffer` (a document or key written or done with) to be handed out again, cleared.
    pub(crate) fn recycle(&mut self, mut buffer: String) {
        if self.spare.len() < SPARE_BUFFERS && buffer.capacity() <= SPARE_BUFFER_BYTES {
            buffer.clear();
            self.spare.push(buffer);
        }
    }

    /// Starts a batch: one SQLite transaction for one or more whole source transactions.
    pub fn begin(&mut self) -> Result<()> {
        if self.failed {
            return Err(Error::internal(
                "store: a write failed and its batch was rolled back; call rollback before the next batch",
            ));
        }
        if self.batch.is_none() {
            self.conn
                .execute_batch("BEGIN IMMEDIATE")
                .map_err(sqlite("beginning a transaction"))?;
            self.batch = Some(0);
            self.run_tail = None;
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

    /// Abandons the open batch.
    pub fn rollback(&mut self) -> Result<()> {
        self.failed = false;
        self.pending.clear();
        self.pending_bytes = 0;
        self.run_tail = None;
        if self.batch.take().is_some() {
            // SQLite rolls a transaction back by itself after some failures (a full disk among them);
            // a second ROLLBACK would fail and hide the first error.
            if !self.conn.is_autocommit() {
                self.conn
                    .execute_batch("ROLLBACK")
                    .map_err(sqlite("rolling back"))?;
            }
            // Collections and source tables first recorded in the batch are gone with it, and so
            // are their positions.
            self.source_tables.clear();
            self.ids = collection_ids(&self.conn)?;
            self.next_seq = next_seq(&self.conn)?;
            self.opened.borrow_mut().clear();
            self.live.borrow_mut().clear();
        }
        Ok(())
    }

    pub(super) fn in_open_batch(&self, what: &str) -> Result<()> {
        if self.batch.is_none() {
            return Err(Error::internal(format!("store: {what} outside a batch")));
        }
        Ok(())
    }

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
        self.in_open_batch("writing a change")?;
        let (doc, refs, cut) = self.stored_form(doc, lsn)?;
        let id = self.id_of(collection)?;
        let key_changed = old_key.is_some_and(|old| old != key);
        // Taken once the key is known good: a bad key leaves no gap in the log's positions.
        let seq = self.next_seq;
        if matches!(op, Op::Create | Op::Update) && !key_changed {
            let start = self.pending_skeys.len();
            push_sort_key(key, &mut self.pending_skeys)?;
            let skey = start..self.pending_skeys.len();
            let base = match self.in_base(id, &self.pending_skeys[skey.clone()]) {
                Ok(base) => base,
                Err(e) => {
                    self.pending_skeys.truncate(start);
                    return Err(e);
                }
            };
            self.next_seq += 1;
            let start = self.pending_keys.len();
            self.pending_keys.push_str(key);
            self.pending_bytes += doc.len();
            self.pending.push(Pending {
                seq,
                collection: id,
                lsn,
                op,
                skey,
                key: start..self.pending_keys.len(),
                base,
                doc,
                refs,
                cut,
            });
            if self.pending.len() >= CHUNK || self.pending_bytes >= PENDING_BYTES {
                self.write_pending()?;
            }
        } else {
            let skey = match op {
                Op::Truncate => Vec::new(),
                _ => sort_key(key)?,
            };
            self.next_seq += 1;
            self.write_pending()?;
            self.cover(id, seq, seq, 1)?;
            self.insert_change(seq, id, lsn, op, &doc, refs.as_deref(), cut)?;
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
        // Held changes are kept whole: they are applied later, maybe by another store version.
        let mut whole;
        let doc = if doc.source.is_some() {
            whole = doc.clone();
            whole.make_whole().ok_or_else(|| {
                Error::internal("store: a held change's source does not fit its document")
            })?;
            &whole
        } else {
            doc
        };
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

    /// Applies the held changes of `collection` in order and forgets them.
    pub(super) fn replay_held(&mut self, collection: &str) -> Result<()> {
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
                source: None,
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

    #[allow(clippy::too_many_arguments)]
    pub(super) fn insert_change(
        &self,
        seq: i64,
        collection: i64,
        lsn: Lsn,
        op: Op,
        doc: &str,
        refs: Option<&str>,
        cut: Option<StoredCut>,
    ) -> Result<()> {
        self.conn
            .prepare_cached(
                "INSERT INTO changes (seq, collection, lsn, op, doc, refs, meta_at, source_table, txid, ts_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    seq,
                    collection,
                    lsn.0 as i64,
                    op.code(),
                    doc,
                    refs,
                    cut.map(|c| c.at),
                    cut.map(|c| c.source_table),
                    cut.map(|c| c.txid),
                    cut.map(|c| c.ts_ms)
                ])
            })
            .map_err(sqlite("appending a change"))?;
        Ok(())
    }

    /// A document as stored: its text, its references, and the columns of its source when it was
    /// cut ([`crate::document::source_meta`]). A source is kept apart only when the change's LSN
    /// (which rebuilds it) is its own and no reference follows it; otherwise it is put back.
    fn stored_form(
        &mut self,
        mut doc: Document,
        lsn: Lsn,
    ) -> Result<(String, Option<String>, Option<StoredCut>)> {
        let cut = match doc.source.take() {
            Some(cut) if cut.lsn == lsn && doc.refs.iter().all(|r| r.at < cut.at) => {
                let source_table = self.source_table_id(&cut.table)?;
                Some(StoredCut {
                    at: cut.at as i64,
                    source_table,
                    txid: i64::from(cut.txid),
                    ts_ms: cut.ts_ms,
                })
            }
            Some(cut) => {
                doc.source = Some(cut);
                doc.make_whole().ok_or_else(|| {
                    Error::internal("store: a change's source does not fit its document")
                })?;
                None
            }
            None => None,
        };
        let refs = doc.refs_text();
        Ok((doc.text, refs, cut))
    }

    /// The id of a source table in `source_tables`, added in the open batch if it is new.
    fn source_table_id(&mut self, table: &std::sync::Arc<SourceTable>) -> Result<i64> {
        if let Some(&id) = self.source_tables.get(&**table) {
            return Ok(id);
        }
        self.conn
            .prepare_cached(
                "INSERT INTO source_tables (schema_name, table_name) VALUES (?1, ?2)
                 ON CONFLICT (schema_name, table_name) DO NOTHING",
            )
            .and_then(|mut s| s.execute(params![table.schema, table.table]))
            .map_err(sqlite("recording a source table"))?;
        let id: i64 = self
            .conn
            .prepare_cached(
                "SELECT id FROM source_tables WHERE schema_name = ?1 AND table_name = ?2",
            )
            .and_then(|mut s| s.query_row(params![table.schema, table.table], |r| r.get(0)))
            .map_err(sqlite("recording a source table"))?;
        self.source_tables.insert(table.clone(), id);
        Ok(id)
    }

    pub(super) fn upsert_row(
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
    pub(super) fn write_pending(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let mut pending = std::mem::take(&mut self.pending);
        let mut skeys = std::mem::take(&mut self.pending_skeys);
        let mut keys = std::mem::take(&mut self.pending_keys);
        self.pending_bytes = 0;
        let written = self.write_chunks(&pending, &skeys, &keys);
        // The buffers are kept for the next changes, also after an error.
        for p in pending.drain(..) {
            self.recycle(p.doc);
        }
        skeys.clear();
        keys.clear();
        self.pending = pending;
        self.pending_skeys = skeys;
        self.pending_keys = keys;
        if written.is_err() {
            // A statement that failed part-way keeps what it wrote (`OR FAIL`): nothing of this
            // batch may be committed now, and no later commit may store a checkpoint past it.
            if let Err(e) = self.rollback() {
                tracing::warn!(error = %e, "rolling back after a failed write failed");
            }
            self.failed = true;
        }
        written
    }

    fn write_chunks(&mut self, pending: &[Pending], skeys: &[u8], keys: &str) -> Result<()> {
        use bulk::Param;
        let mut chunks = pending.chunks_exact(CHUNK);
        let mut changes: Vec<Param<'_>> = Vec::with_capacity(CHUNK * 10);
        let mut rows: Vec<Param<'_>> = Vec::with_capacity(CHUNK * 5);
        self.cover_pending(pending)?;
        for chunk in &mut chunks {
            changes.clear();
            rows.clear();
            if uniform(chunk) {
                let first = &chunk[0];
                changes.extend([
                    Param::Int(first.seq),
                    Param::Int(first.collection),
                    Param::Int(first.lsn.0 as i64),
                    Param::Text(first.op.code()),
                ]);
                changes.extend(source_params(first.cut));
                rows.extend([
                    Param::Int(first.collection),
                    Param::Int(first.seq),
                    Param::Int(first.base as i64),
                ]);
                for p in chunk {
                    changes.extend([Param::Text(&p.doc), at_param(p.cut)]);
                    rows.extend([
                        Param::Blob(&skeys[p.skey.clone()]),
                        Param::Text(&keys[p.key.clone()]),
                    ]);
                }
                let log_end: i64 = self
                    .conn
                    .prepare_cached("SELECT COALESCE(max(seq), 0) FROM changes")
                    .and_then(|mut s| s.query_row([], |r| r.get(0)))
                    .map_err(sqlite("reading the log's end"))?;
                let appends = log_end + 1 == first.seq;
                let (slot, sql) = if appends {
                    (&mut self.bulk_changes_append, &*CHANGES_APPEND_SQL)
                } else {
                    (&mut self.bulk_changes_uniform, &*CHANGES_UNIFORM_SQL)
                };
                prepared(slot, &self.conn, sql)
                    .and_then(|s| s.execute(&self.conn, &changes))
                    .map_err(sqlite("appending changes"))?;
                let last = first.seq + CHUNK as i64 - 1;
                if appends && self.conn.last_insert_rowid() != last {
                    // Never expected: the rows would point at other changes than their own.
                    return Err(Error::internal(format!(
                        "store: SQLite placed a chunk's last change at {}, not {last}",
                        self.conn.last_insert_rowid()
                    )));
                }
                prepared(&mut self.bulk_rows_uniform, &self.conn, &ROWS_UNIFORM_SQL)
                    .and_then(|s| s.execute(&self.conn, &rows))
                    .map_err(sqlite("writing rows"))?;
                continue;
            }
            for p in chunk {
                changes.extend([
                    Param::Int(p.seq),
                    Param::Int(p.collection),
                    Param::Int(p.lsn.0 as i64),
                    Param::Text(p.op.code()),
                    Param::Text(&p.doc),
                    p.refs.as_deref().map_or(Param::Null, Param::Text),
                ]);
                changes.push(at_param(p.cut));
                changes.extend(source_params(p.cut));
                rows.extend([
                    Param::Int(p.collection),
                    Param::Blob(&skeys[p.skey.clone()]),
                    Param::Text(&keys[p.key.clone()]),
                    Param::Int(p.seq),
                    Param::Int(p.base as i64),
                ]);
            }
            prepared(&mut self.bulk_changes, &self.conn, &CHANGES_CHUNK_SQL)
                .and_then(|s| s.execute(&self.conn, &changes))
                .map_err(sqlite("appending changes"))?;
            prepared(&mut self.bulk_rows, &self.conn, &ROWS_CHUNK_SQL)
                .and_then(|s| s.execute(&self.conn, &rows))
                .map_err(sqlite("writing rows"))?;
        }
        for p in chunks.remainder() {
            self.insert_change(
                p.seq,
                p.collection,
                p.lsn,
                p.op,
                &p.doc,
                p.refs.as_deref(),
                p.cut,
            )?;
            self.upsert_row(
                p.collection,
                &skeys[p.skey.clone()],
                &keys[p.key.clone()],
                p.seq,
                p.base,
            )?;
        }
        Ok(())
    }

    /// Deletes the row under `skey`: forgets its entry, or, when the live snapshot has a row under
    /// that key, leaves an entry without a document that hides it.
    pub(super) fn delete_row(&mut self, collection: i64, skey: &[u8], key: &str) -> Result<()> {
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
