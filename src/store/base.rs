//! Rows backed by snapshot files: a backfill's rows stay in the file it wrote ([`crate::store::snapshot`]),
//! recorded in `snapshots` with the log positions its documents take, and `rows` only shadows them.
//!
//! Invariants: a collection has at most one live snapshot, whose base rows are the file's; an entry
//! in `rows` with a document replaces the file's row under its key, one without deletes it; a file
//! not recorded in `snapshots` (a crash before its import committed) is removed at open, never read.

use super::*;

/// A recorded snapshot file, open, with what its documents are rebuilt from.
pub(super) struct Base {
    pub(super) file: Snapshot,
    pub(super) first_seq: u64,
    pub(super) collection: String,
    pub(super) source: SnapshotSource,
    /// The block read last: keys looked up one after another often fall in it.
    pub(super) last_block:
        std::sync::Mutex<Option<(usize, std::sync::Arc<crate::store::snapshot::Block>)>>,
}

/// Turns a snapshot file's lines into the documents that match a filter, screening lines with the
/// file's needle before building their documents.
pub(super) struct Matching<'f> {
    pub(super) rebuild: Rebuild,
    pub(super) needle: Option<memchr::memmem::Finder<'static>>,
    pub(super) filter: Option<&'f Filter>,
}

impl Matching<'_> {
    /// The line's document, whole, if it matches. A line whose large values are references cannot
    /// be screened: the values are not in it.
    pub(super) fn document(&mut self, conn: &Connection, line: &[u8]) -> Result<Option<Json>> {
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
    pub(super) fn rebuild(&self) -> Rebuild {
        Rebuild::new(&self.collection, &self.source)
    }

    /// The documents of this file's lines that match `filter` (all of them without one).
    pub(super) fn matching<'f>(&self, filter: Option<&'f Filter>) -> Matching<'f> {
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
    pub(super) fn needle(
        &self,
        filter: Option<&Filter>,
    ) -> Option<memchr::memmem::Finder<'static>> {
        use crate::document::value::Kind;
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

    pub(super) fn block(&self, i: usize) -> Result<std::sync::Arc<crate::store::snapshot::Block>> {
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
    pub(super) fn get(&self, skey: &[u8]) -> Result<Option<Vec<u8>>> {
        if self.file.blocks() == 0 {
            return Ok(None);
        }
        let block = self.block(self.file.block_of_key(skey))?;
        Ok(block.get(skey).map(<[u8]>::to_vec))
    }
}

impl Store {
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
        crate::store::snapshot::remove_unrecorded(&self.snapshot_dir(), &files)
    }

    pub(super) fn recorded_files(&self) -> Result<Vec<String>> {
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
    pub(super) fn replace_rows(&mut self, id: i64) -> Result<()> {
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
    pub(super) fn snapshot(&self, id: i64) -> Result<std::sync::Arc<Base>> {
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
    pub(super) fn live_base(&self, collection: i64) -> Result<Option<std::sync::Arc<Base>>> {
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
    pub(super) fn log_snapshots(&self, collection: i64) -> Result<Vec<std::sync::Arc<Base>>> {
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

    /// Whether the collection's live snapshot has a row under `skey`.
    pub(super) fn in_base(&self, collection: i64, skey: &[u8]) -> Result<bool> {
        match self.live_base(collection)? {
            Some(base) => Ok(base.get(skey)?.is_some()),
            None => Ok(false),
        }
    }

    /// Brings a finished backfill in from the store in `staging` (read in one snapshot): for each
    /// `(collection, replace)` its documents are appended to the log and its rows become the
    /// collection's rows (replacing the current ones when `replace`, for a re-backfill; a collection
    /// to replace that the backfill did not stage had no table in its snapshot and is emptied); then the
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

    pub(super) fn import_attached(
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
            let Some(staged) = staged else {
                // Read before and missing from the snapshot (dropped since): it has no rows now.
                if *replace {
                    if let Some(&id) = self.ids.get(collection) {
                        self.replace_rows(id)?;
                    }
                }
                continue;
            };
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
            let span: (Option<i64>, Option<i64>, i64) = self
                .conn
                .query_row(
                    "SELECT min(seq), max(seq), count(*) FROM staging.changes WHERE collection = ?1",
                    [staged],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .map_err(sqlite("importing a backfill's documents"))?;
            if let (Some(first), Some(last), count) = span {
                // Other collections' staged changes may fall between these: readers skip them.
                self.cover(id, base + first, base + last, count)?;
            }
            rows += self
                .conn
                .execute(
                    // Whole documents: the staging store's source tables have ids of their own.
                    &format!(
                        "INSERT INTO main.changes (seq, collection, lsn, op, doc, refs)
                         SELECT ?1 + c.seq, ?2, c.lsn, c.op, {DOC}, c.refs FROM staging.changes c
                         LEFT JOIN staging.source_tables s ON s.id = c.source_table
                         WHERE c.collection = ?3 ORDER BY c.seq"
                    ),
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
    pub(super) fn import_large_values(&mut self) -> Result<()> {
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
}
