//! Reads and pages: rows in key order after a cursor, the change log after a position, one row by
//! key, and where a log entry sits in the transaction that wrote it.
//!
//! Invariant: every read writes the batch's pending rows first and splices large values back, so a
//! reader sees whole documents and exactly what the store holds, never a half-written batch.

use super::*;

/// How [`Store::log_entries`] reads one collection's log (`?1`): its condition and its order, over
/// the changes joined to their runs ([`runs::RUNS`]: `r` the run, `c` the change).
pub(super) type LogRead = (&'static str, &'static str);

/// The changes after position `?3`, oldest first. Runs are read from the one holding `?3` on: a
/// seek, not a walk of the older runs. Within a run the changes start at one lower bound, the
/// larger of the run's start and `?3 + 1`: given both bounds apart, SQLite seeks the run's start
/// and filters every change before `?3`, a walk of a million changes to read a tail's newest few.
pub(super) const AFTER: LogRead = (
    "r.collection = ?1 AND c.seq BETWEEN max(r.first_seq, ?3 + 1) AND r.last_seq
     AND r.last_seq > ?3
     AND r.first_seq >= COALESCE((SELECT max(first_seq) FROM change_runs
                                  WHERE collection = ?1 AND first_seq <= ?3), 0)",
    "r.first_seq, c.seq",
);

/// The changes newest first.
pub(super) const NEWEST: LogRead = (
    "r.collection = ?1 AND c.seq BETWEEN r.first_seq AND r.last_seq",
    "r.first_seq DESC, c.seq DESC",
);

/// The statement of a [`LogRead`]. Runs in `first_seq` order give their changes in position order
/// ([`runs`]), so SQLite walks both in the order asked, with no sort, and stops at the limit.
pub(super) fn log_sql((condition, order): LogRead) -> String {
    format!(
        "SELECT c.seq, {DOC}, c.refs FROM {} {SOURCE_JOIN} WHERE {condition} AND {} ORDER BY {order} LIMIT ?2",
        runs::RUNS,
        FilterParams::SQL
    )
}

/// An entry of `rows` after a cursor: its sort key, key, and document with its references (none for a
/// deleted row of a snapshot).
pub(super) type Entry = (Vec<u8>, String, Option<String>, Option<String>);

impl Store {
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
                "SELECT r.key, {DOC}, c.refs FROM rows r JOIN changes c ON c.seq = r.seq {SOURCE_JOIN}
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
    pub(super) fn rows_over_base(
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
                .prepare_cached(&format!(
                    "SELECT r.skey, r.key, {DOC}, c.refs FROM rows r LEFT JOIN changes c ON c.seq = r.seq {SOURCE_JOIN}
                      WHERE r.collection = ?1 AND r.skey > ?2 ORDER BY r.skey LIMIT ?3",
                ))
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
                        out.push((crate::store::rowkey::key_of(fk)?, doc));
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
            NEWEST,
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

    /// Log entries kept in SQLite (not in snapshot files) that meet the filter, read as `read` says
    /// ([`AFTER`], [`NEWEST`]); parameters numbered as [`FilterParams`] expects, ?2 the limit.
    pub(super) fn log_entries(
        &self,
        read: LogRead,
        params: &[&dyn rusqlite::ToSql],
    ) -> Result<Vec<(u64, Json)>> {
        let mut stmt = self
            .conn
            .prepare_cached(&log_sql(read))
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
            AFTER,
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

    pub(super) fn stored_row(&self, id: i64, skey: &[u8]) -> Result<Option<Document>> {
        let entry: Option<(Option<String>, Option<String>)> = self
            .conn
            .prepare_cached(&format!("SELECT {DOC}, c.refs FROM rows r LEFT JOIN changes c ON c.seq = r.seq {SOURCE_JOIN} WHERE r.collection = ?1 AND r.skey = ?2"))
            .and_then(|mut s| s.query_row(params![id, skey], |r| Ok((r.get(0)?, r.get(1)?))).optional())
            .map_err(sqlite("reading a row"))?;
        match entry {
            Some((Some(text), refs)) => Ok(Some(Document {
                source: None,
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
    pub(super) fn load(&self, doc: String, refs: Option<String>) -> Result<Json> {
        parse(whole_document(&self.conn, doc, refs)?)
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
