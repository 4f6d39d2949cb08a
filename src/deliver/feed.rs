//! Reading the change store's log into a consumer's queue: each stored change after the consumer's
//! position, in log order, becomes a message if its action is wanted and the filter matches.
//!
//! Invariants:
//! - The store is only read here (its own connection, never a write), so delivery can neither block
//!   nor slow the capture's commits.
//! - The position moves past every entry read, matched or not, in the same ledger transaction that
//!   queues the messages ([`Ledger::enqueue`]). [`Feeder::read`] reads without queueing for a
//!   worker that delivers from the log and moves the position itself once messages are settled.
//! - A queue holds at most [`queue_limit`] messages (never more than [`QUEUE_LIMIT`]): a consumer that is behind costs local disk in
//!   the change store (which keeps the log), not memory or a copy of the log.
//! - A consumer is never silently short of changes: before each read it is told (a notice on the
//!   consumer, and the log) when changes it had not read were pruned by the store's retention, or
//!   when the store's history has a gap (a resync) ahead of its position.

use std::collections::HashSet;
use std::path::PathBuf;

use serde_json::Value as Json;

use crate::deliver::consumer::{ConsumerSpec, Destination, Mode, Notice, Start};
use crate::deliver::filter::{numeric_columns, Filter};
use crate::deliver::ledger::{Definition, Ledger};
use crate::deliver::message::{build, Database, Message, Place};
use crate::deliver::subject::{render, Values};
use crate::error::{Error, ErrorKind, Result};
use crate::store::{CollectionSpec, Store};

/// Log entries read per round.
pub const PAGE: usize = 500;

/// Most messages queued per consumer; reading stops until deliveries make room.
pub const QUEUE_LIMIT: u64 = 10_000;

/// Most messages queued for this consumer. A webhook consumer has at most `max_in_flight`
/// requests of `batch_size` out at once, so twice that (and at least two pages) keeps it busy; a
/// smaller queue is cheaper to count and stays in the ledger's cache. A pull consumer may hold up
/// to its `max_ack_pending` (10,000 by default) at once, so it gets the whole limit.
pub fn queue_limit(spec: &ConsumerSpec) -> u64 {
    match &spec.destination {
        Destination::Webhook(w) => {
            (2 * u64::from(w.max_in_flight) * w.batch_size.unwrap_or(1) as u64)
                .clamp(2 * PAGE as u64, QUEUE_LIMIT)
        }
        Destination::Pull(_) => QUEUE_LIMIT,
        Destination::Nats(n) => (4 * u64::from(n.batch_size)).clamp(2 * PAGE as u64, QUEUE_LIMIT),
    }
}

/// One page of a consumer's changes read from the log.
#[derive(Debug)]
pub struct Page {
    /// The messages it gave, with their log positions, in log order.
    pub messages: Vec<(u64, Message)>,
    /// The last log position read (matched or not): the next page starts after it.
    pub last: u64,
    /// Log entries read (fewer than [`PAGE`] once the consumer has caught up).
    pub read: usize,
}

/// Reads one store for its consumers.
pub struct Feeder {
    store_dir: PathBuf,
    database: Database,
    store: Option<Store>,
    /// The commit LSN (as in `_meta.source.lsn`) and first log position of the transaction read last.
    transaction: Option<(String, u64)>,
    /// The commit LSN and log position of the entry read last, whichever collection it was of.
    previous: Option<(String, u64)>,
    /// The consumer's filter, compiled once: its text and the result.
    filter: Option<(String, Filter)>,
}

impl std::fmt::Debug for Feeder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Feeder")
            .field("store_dir", &self.store_dir)
            .finish()
    }
}

impl Feeder {
    /// A feeder for the store in `store_dir`, whose source is `database`.
    pub fn new(store_dir: PathBuf, database: Database) -> Feeder {
        Feeder {
            store_dir,
            database,
            store: None,
            transaction: None,
            previous: None,
            filter: None,
        }
    }

    /// Queues the next page of the consumer's changes; returns how many log entries were read
    /// (fewer than [`PAGE`] when it has caught up or its queue is full).
    pub fn feed(&mut self, ledger: &mut Ledger, consumer_id: &str, now_ms: i64) -> Result<usize> {
        let consumer = self.definition(ledger, consumer_id)?;
        // Reading waits until a whole page fits: a queue kept full by one message at a time would
        // pay a round of queries per message delivered.
        let queued = ledger.queued(consumer_id)?;
        if queued > 0 && queued + PAGE as u64 > queue_limit(&consumer.spec) {
            return Ok(0);
        }
        let Some(page) = self.read(ledger, &consumer, consumer.position, now_ms)? else {
            return Ok(0);
        };
        ledger.enqueue(
            &consumer.id,
            consumer.spec.mode,
            &page.messages,
            page.last,
            now_ms,
        )?;
        Ok(page.read)
    }

    /// The consumer's definition, or `NotFound` once it was removed.
    pub fn definition(&self, ledger: &Ledger, consumer_id: &str) -> Result<Definition> {
        ledger.definition(consumer_id)?.ok_or_else(|| {
            Error::new(
                ErrorKind::NotFound,
                format!(
                    "no consumer '{consumer_id}' in {}",
                    self.store_dir.display()
                ),
            )
        })
    }

    /// The next page of the consumer's changes after log position `after`, as messages, without
    /// queueing them or moving the consumer's position (the caller does either); `None` when
    /// nothing was read. Records the consumer's notices first (see [`tell`]).
    pub fn read(
        &mut self,
        ledger: &mut Ledger,
        consumer: &Definition,
        after: u64,
        now_ms: i64,
    ) -> Result<Option<Page>> {
        if self.store.is_none() {
            self.store = Store::open_existing(&self.store_dir)?;
        }
        let Some(store) = &self.store else {
            return Ok(None);
        };
        tell(ledger, consumer, store, now_ms)?;
        let mut specs: Vec<CollectionSpec> = Vec::new();
        let mut entries: Vec<(u64, usize, Json)> = Vec::new();
        let mut stale = false;
        for name in &consumer.spec.collections {
            let Some(spec) = store.collection(name)? else {
                continue;
            };
            match store.changes(name, after, PAGE) {
                Ok(page) => {
                    let at = specs.len();
                    entries.extend(page.into_iter().map(|(seq, doc)| (seq, at, doc)));
                    specs.push(spec);
                }
                // Added after this store handle was opened.
                Err(e) if e.kind() == ErrorKind::NotFound => stale = true,
                Err(e) => return Err(e),
            }
        }
        if stale {
            self.store = None;
            self.previous = None;
        }
        entries.sort_by_key(|e| e.0);
        entries.truncate(PAGE);
        let Some(last) = entries.last().map(|e| e.0) else {
            return Ok(None);
        };
        let read = entries.len();
        let messages = self.messages(consumer, &specs, entries)?;
        Ok(Some(Page {
            messages,
            last,
            read,
        }))
    }

    fn messages(
        &mut self,
        consumer: &Definition,
        specs: &[CollectionSpec],
        entries: Vec<(u64, usize, Json)>,
    ) -> Result<Vec<(u64, Message)>> {
        let filter = match consumer.spec.filter.as_deref() {
            None => None,
            Some(text) => {
                if self.filter.as_ref().is_none_or(|(known, _)| known != text) {
                    self.filter = Some((text.to_string(), Filter::compile(text)?));
                }
                self.filter.as_ref().map(|(_, f)| f)
            }
        };
        let numeric: Vec<HashSet<String>> =
            specs.iter().map(|s| numeric_columns(&s.columns)).collect();
        let mut out = Vec::new();
        for (seq, at, doc) in entries {
            let index = index_of(
                &self.store,
                &mut self.transaction,
                &mut self.previous,
                seq,
                &doc,
            )?;
            let Some(message) = build(
                doc,
                Place { seq, index },
                &specs[at],
                (&consumer.id, &consumer.spec.name),
                &self.database,
                &consumer.spec.group_by,
            )?
            else {
                continue;
            };
            if !consumer.spec.wants(message.action) {
                continue;
            }
            if let Some(f) = &filter {
                if !f.matches(&message.body, &numeric[at]) {
                    continue;
                }
            }
            let mut message = message;
            if let Destination::Nats(nats) = &consumer.spec.destination {
                // A stream orders by subject: in changes mode (without columns to group by) the
                // subject is the group, so its messages reach the stream in commit order.
                if consumer.spec.mode == Mode::Changes && consumer.spec.group_by.is_empty() {
                    let subject = render(
                        &nats.subject,
                        &Values {
                            database: &self.database.database,
                            schema: &specs[at].schema,
                            table: &specs[at].table,
                            action: message.action.as_str(),
                        },
                    );
                    message.group = subject;
                }
            }
            out.push((seq, message));
        }
        Ok(out)
    }
}

/// The entry's index in its source transaction (or snapshot). The store is asked only when the
/// entry starts a transaction this feeder has not seen the start of: not when the entry just before
/// it in the log was read last (the usual case, one query per page at most).
fn index_of(
    store: &Option<Store>,
    transaction: &mut Option<(String, u64)>,
    previous: &mut Option<(String, u64)>,
    seq: u64,
    doc: &Json,
) -> Result<u64> {
    let Some(store) = store else {
        return Ok(0);
    };
    let source = doc.get("_meta").and_then(|m| m.get("source"));
    let snapshot = source
        .and_then(|s| s.get("snapshot"))
        .and_then(Json::as_bool)
        == Some(true);
    if snapshot {
        *previous = None;
        // A lookup in the (small) table of snapshot files.
        return Ok(seq - store.first_of_transaction(seq)?);
    }
    let lsn = source
        .and_then(|s| s.get("lsn"))
        .and_then(Json::as_str)
        .unwrap_or_default();
    let first = match (transaction.as_ref(), previous.as_ref()) {
        (Some((known, first)), _) if known == lsn && *first <= seq => *first,
        // The entry before it is of another transaction: this one starts here.
        (_, Some((before_lsn, before))) if *before + 1 == seq && before_lsn != lsn => seq,
        _ => store.first_of_transaction(seq)?,
    };
    keep(transaction, lsn, first);
    keep(previous, lsn, seq);
    Ok(seq - first)
}

/// Sets `slot` to `(lsn, at)`. Both slots are kept across entries, so their text is rewritten in
/// place, not allocated per entry.
fn keep(slot: &mut Option<(String, u64)>, lsn: &str, at: u64) {
    match slot {
        Some((known, was)) => {
            if known.as_str() != lsn {
                known.clear();
                known.push_str(lsn);
            }
            *was = at;
        }
        None => *slot = Some((lsn.to_string(), at)),
    }
}

/// Records the consumer's notices: changes of its collections pruned before it read them (by the
/// retention), and gaps in the store's history it has not read past. Each is logged once.
fn tell(ledger: &mut Ledger, consumer: &Definition, store: &Store, now_ms: i64) -> Result<()> {
    let name = &consumer.spec.name;
    let pruned = crate::store::retention::pruned(store)?;
    if !pruned.is_empty() {
        let floor = match consumer.spec.start {
            Start::Beginning => ledger.start_pruned(&consumer.id)?,
            Start::Now => Default::default(),
        };
        let missed: Vec<String> = consumer
            .spec
            .collections
            .iter()
            .filter_map(|c| {
                let at = *pruned.get(c)?;
                (at > consumer.position && at > floor.get(c).copied().unwrap_or(0))
                    .then(|| format!("{c} up to log position {at}"))
            })
            .collect();
        if !missed.is_empty() {
            let message = format!(
                "consumer '{name}' fell behind the store's retention ({}): changes it had not read yet were pruned ({}). \
                 They will not be delivered; it goes on with the changes kept. Raise the retention \
                 (`tidepool capture --retention`) so that a consumer which is down does not miss changes.",
                crate::store::retention::describe(crate::store::retention::retention(store)?),
                missed.join(", ")
            );
            let notice = Notice {
                kind: ErrorKind::Behind,
                message: message.clone(),
                at_ms: now_ms,
            };
            if ledger.notify(&consumer.id, "behind", notice)? {
                tracing::error!(consumer = %name, "{message}");
            }
        }
    }
    for gap in crate::source::continuity::gaps(store)? {
        let Some(at) = gap.log_position else {
            continue;
        };
        // At `at` it has read everything before the gap, and reads across it next.
        if consumer.position > at {
            continue;
        }
        let message = format!(
            "consumer '{name}' crosses a gap in the store's history after log position {at}: changes made on the \
             source between {} and {} were never captured ({}). {} Deletes made in the gap are not delivered.",
            gap.from,
            gap.to,
            gap.reason,
            if gap.rebackfilled.is_empty() {
                "No collection was read again.".to_string()
            } else {
                format!(
                    "The rows of {} were read again and arrive after it as `read` messages, each row's state after the gap.",
                    gap.rebackfilled.join(", ")
                )
            }
        );
        let notice = Notice {
            kind: ErrorKind::Diverged,
            message: message.clone(),
            at_ms: now_ms,
        };
        if ledger.notify(&consumer.id, &format!("gap:{at}"), notice)? {
            tracing::warn!(consumer = %name, "{message}");
        }
    }
    Ok(())
}
