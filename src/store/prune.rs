//! Log retention ([`crate::store::retention`]): old changes that no current row needs are removed, in whole
//! source transactions; snapshots and the newest change are always kept.

use super::*;

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

/// Log retention ([`crate::store::retention`]): old changes that no current row needs are removed.
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
                    "SELECT seq, lsn, COALESCE(ts_ms, json_extract(doc, '$._meta.source.ts_ms')) FROM changes
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
            self.recount_runs(through)?;
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
