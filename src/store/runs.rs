//! Change runs: which stretches of the change log hold each collection's changes.
//!
//! Reading one collection's changes in order (a consumer's feed, the preview, the pull API) needs
//! them by position. An index on `changes (collection, seq)` gave that, at the cost of a second
//! B-tree insert, its key comparisons and its page splits for every stored change: 12 % of the
//! capture's instructions (docs/benchmarks.md, issue 21, step 13). A run `[first_seq, last_seq]`
//! stands for every change a collection writes before another collection's change follows, so a
//! transaction of a million inserts into one table is one run, extended once per statement.
//!
//! Invariants:
//! - Every change of a collection lies in one of that collection's runs. A run may also span
//!   positions with no change (a snapshot's range, a pruned change) and, rarely, changes of other
//!   collections, so readers match both the range ([`SPAN`]) and the collection ([`RUNS`]).
//! - A collection's runs do not overlap: each change is read once, and runs in `first_seq` order
//!   give their changes in position order, so a read in position order needs no sort.
//! - A run is written in the transaction that writes the changes it covers, before them.
//! - A run counts the changes of its collection it holds (`changes`), so a collection's count is a
//!   sum over its runs, not a walk of its log; a prune counts the runs it touched again.

use super::*;

/// The log joined to its runs: `r` the run, `c` the change. Readers of one collection put
/// `r.collection = ?` and the run's range ([`SPAN`], or a narrower one) in their condition, and
/// order by `r.first_seq, c.seq` (both descending for the newest first).
pub(super) const RUNS: &str = "change_runs r JOIN changes c ON c.collection = r.collection";

/// A change within its run's range.
pub(super) const SPAN: &str = "c.seq BETWEEN r.first_seq AND r.last_seq";

/// Extends run `(?1, ?2)` to `?3` with `?4` more changes.
const EXTEND: &str = "UPDATE change_runs SET last_seq = ?3, changes = changes + ?4
     WHERE collection = ?1 AND first_seq = ?2";

/// Starts run `(?1, ?2)`, to `?3`, of `?4` changes.
const START: &str =
    "INSERT INTO change_runs (collection, first_seq, last_seq, changes) VALUES (?1, ?2, ?3, ?4)";

/// The run that ends at the log's end, as last written in the open batch: the next changes of its
/// collection extend it with one `UPDATE` and no lookup.
#[derive(Clone, Copy, Debug)]
pub(super) struct Tail {
    collection: i64,
    first: i64,
    last: i64,
}

/// Creates `change_runs`. A store made before runs existed has the index instead: its runs are
/// built from the log and the index is dropped, in one transaction (a crash leaves the index, and
/// the next open builds the runs again).
pub(super) fn schema(conn: &Connection) -> Result<()> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS change_runs (
           collection INTEGER NOT NULL,
           first_seq INTEGER NOT NULL,
           last_seq INTEGER NOT NULL,
           changes INTEGER NOT NULL,
           PRIMARY KEY (collection, first_seq)) WITHOUT ROWID;",
    )
    .map_err(sqlite("creating the schema"))?;
    let indexed: bool = conn
        .query_row(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = 'changes_by_collection')",
            [],
            |r| r.get(0),
        )
        .map_err(sqlite("reading the schema"))?;
    if !indexed {
        return Ok(());
    }
    in_transaction(conn, "building change runs", || {
        conn.execute_batch("DELETE FROM change_runs;")
            .map_err(sqlite("building change runs"))?;
        let mut insert = conn
            .prepare(START)
            .map_err(sqlite("building change runs"))?;
        let mut log = conn
            .prepare("SELECT collection, seq FROM changes ORDER BY seq")
            .map_err(sqlite("building change runs"))?;
        let mut changes = log.query([]).map_err(sqlite("building change runs"))?;
        let mut run: Option<(i64, i64, i64, i64)> = None;
        while let Some(row) = changes.next().map_err(sqlite("building change runs"))? {
            let (collection, seq): (i64, i64) = (
                row.get(0).map_err(sqlite("building change runs"))?,
                row.get(1).map_err(sqlite("building change runs"))?,
            );
            match &mut run {
                Some((c, _, last, count)) if *c == collection => {
                    *last = seq;
                    *count += 1;
                }
                _ => {
                    if let Some(done) = run.replace((collection, seq, seq, 1)) {
                        insert
                            .execute(params![done.0, done.1, done.2, done.3])
                            .map_err(sqlite("building change runs"))?;
                    }
                }
            }
        }
        if let Some(done) = run {
            insert
                .execute(params![done.0, done.1, done.2, done.3])
                .map_err(sqlite("building change runs"))?;
        }
        conn.execute_batch("DROP INDEX changes_by_collection;")
            .map_err(sqlite("building change runs"))
    })
}

impl Store {
    /// Records, before they are written, that `count` changes of `collection` take positions in
    /// `first..=last`: extends the collection's last run when nothing of another collection was
    /// stored after it, or starts a run.
    pub(super) fn cover(
        &mut self,
        collection: i64,
        first: i64,
        last: i64,
        count: i64,
    ) -> Result<()> {
        if let Some(tail) = self
            .run_tail
            .filter(|t| t.collection == collection && t.last < first)
        {
            let extended = self
                .conn
                .prepare_cached(EXTEND)
                .and_then(|mut s| s.execute(params![collection, tail.first, last, count]))
                .map_err(sqlite("extending a change run"))?;
            if extended == 1 {
                self.run_tail = Some(Tail { last, ..tail });
                return Ok(());
            }
        }
        // The log's end before these changes: what is stored, and what was covered for the
        // changes of this batch not yet written.
        let stored: i64 = self
            .conn
            .prepare_cached("SELECT COALESCE(max(seq), 0) FROM changes")
            .and_then(|mut s| s.query_row([], |r| r.get(0)))
            .map_err(sqlite("reading the log's end"))?;
        let end = stored.max(self.run_tail.map_or(0, |t| t.last));
        let newest: Option<(i64, i64)> = self
            .conn
            .prepare_cached(
                "SELECT first_seq, last_seq FROM change_runs WHERE collection = ?1
                 ORDER BY first_seq DESC LIMIT 1",
            )
            .and_then(|mut s| {
                s.query_row([collection], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()
            })
            .map_err(sqlite("reading change runs"))?;
        let (run_first, statement) = match newest {
            Some((_, newest_last)) if newest_last >= first => {
                // Below the collection's newest run: never expected, as positions only grow, but
                // merging whatever these positions overlap keeps every change read once.
                self.run_tail = None;
                return self.merge_run(collection, first, last, count);
            }
            Some((newest_first, newest_last)) if newest_last == end => (newest_first, EXTEND),
            _ => (first, START),
        };
        self.conn
            .prepare_cached(statement)
            .and_then(|mut s| s.execute(params![collection, run_first, last, count]))
            .map_err(sqlite("writing a change run"))?;
        self.run_tail = Some(Tail {
            collection,
            first: run_first,
            last,
        });
        Ok(())
    }

    /// Covers `first..=last` with one run that replaces every run of `collection` it overlaps.
    fn merge_run(&self, collection: i64, first: i64, last: i64, count: i64) -> Result<()> {
        const OVERLAPPING: &str = "collection = ?1 AND first_seq <= ?3 AND last_seq >= ?2";
        let (low, high, merged): (Option<i64>, Option<i64>, i64) = self
            .conn
            .query_row(
                &format!(
                    "SELECT min(first_seq), max(last_seq), COALESCE(sum(changes), 0)
                     FROM change_runs WHERE {OVERLAPPING}"
                ),
                params![collection, first, last],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .map_err(sqlite("merging change runs"))?;
        self.conn
            .execute(
                &format!("DELETE FROM change_runs WHERE {OVERLAPPING}"),
                params![collection, first, last],
            )
            .map_err(sqlite("merging change runs"))?;
        self.conn
            .execute(
                START,
                params![
                    collection,
                    low.map_or(first, |l| l.min(first)),
                    high.map_or(last, |h| h.max(last)),
                    merged + count
                ],
            )
            .map_err(sqlite("merging change runs"))?;
        Ok(())
    }

    /// Covers the changes of `pending` (in position order), one run per stretch of one collection.
    pub(super) fn cover_pending(&mut self, pending: &[Pending]) -> Result<()> {
        let mut rest = pending;
        while let Some(first) = rest.first() {
            let n = rest
                .iter()
                .position(|p| p.collection != first.collection)
                .unwrap_or(rest.len());
            self.cover(first.collection, first.seq, rest[n - 1].seq, n as i64)?;
            rest = &rest[n..];
        }
        Ok(())
    }

    /// Counts again the runs that start at or before `through`, after a prune removed changes
    /// there, and drops those left empty. A prune runs outside a batch, and the next batch
    /// forgets the tail.
    pub(super) fn recount_runs(&self, through: i64) -> Result<()> {
        self.conn
            .execute(
                "UPDATE change_runs AS r SET changes =
                   (SELECT count(*) FROM changes c WHERE c.seq BETWEEN r.first_seq AND r.last_seq
                      AND c.collection = r.collection)
                 WHERE r.first_seq <= ?1",
                [through],
            )
            .and_then(|_| {
                self.conn
                    .execute("DELETE FROM change_runs WHERE changes = 0", [])
            })
            .map_err(sqlite("pruning change runs"))?;
        Ok(())
    }
}
