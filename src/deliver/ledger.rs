//! The consumers' durable state: their definitions, how far each has read the store's log, and the
//! messages each has queued and not yet had acknowledged (waiting, in flight, or parked as failed).
//!
//! It is its own SQLite file next to the change store (`consumers.db` in the store folder), so
//! delivery never takes the change store's write lock: acknowledging messages can never delay a
//! capture's commit, and so never delays confirming the slot.
//!
//! A webhook consumer in changes mode does not copy its messages here: it delivers them straight
//! from the log ([`crate::deliver::webhook`]) and writes a row only for a message that failed, or
//! that must wait behind one of its group ([`Ledger::hold`]); its position is the log position up
//! to which every message was acknowledged or has a row. Rows mode (which coalesces queued rows),
//! a paused consumer, the pull API and NATS queue every message as before.
//!
//! Invariants:
//! - Reading the log into a queue and moving the consumer's position happen in one transaction
//!   ([`Ledger::enqueue`]): after a crash a change is either queued or still ahead of the position.
//!   A message delivered from the log gets its row in the transaction that moves the position past
//!   it, or is acknowledged before it ([`Ledger::advance`]).
//! - A message leaves the queue only when acknowledged (a 2xx, an ack) or skipped by hand, so a
//!   restart redelivers exactly what was not acknowledged. Its `ack_id` and body are fixed when it is
//!   queued, so a redelivery carries the same ones; a message delivered from the log has the ack id
//!   [`ack_id_of`] its consumer and `idempotency_key`, the same after any restart and in its row.
//! - A queue row delivered or skipped while the position is below it is remembered in `settled`
//!   until the position passes it, so reading the log again from the position (a restart, a
//!   pause) never sends or queues it again: a skip holds.
//! - Per group, only the oldest queued message can be claimed, and only while no message of the
//!   group is in flight or parked: at most one message per group in flight, in commit order.
//!   [`Ledger::claim_runs`] (NATS) hands out a group's queued messages together, oldest first, under
//!   the same condition: none of the group is in flight, held back or parked.
//! - In rows mode, a queued message not in flight is replaced by a newer change of its group.
//! - What a consumer's page shows is bounded: its last [`ATTEMPTS_KEPT`] requests and
//!   [`SAMPLES_KEPT_S`] seconds of delivered/latency samples, pruned as new ones arrive, removed
//!   with the consumer. A consumer is paused by a `paused:<id>` entry in `meta`.
use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::Value as Json;

use crate::deliver::consumer::{is_uuid, new_uuid, Consumer, ConsumerSpec, Mode, Notice};
use crate::deliver::message::Message;
use crate::error::{Error, ErrorKind, Result};

fn sqlite(context: &str) -> impl Fn(rusqlite::Error) -> Error + '_ {
    move |e| Error::internal(format!("consumers: {context}: {e}"))
}

/// A queued message handed out for delivery.
#[derive(Debug, Clone)]
pub struct Claimed {
    /// Its log position.
    pub seq: u64,
    /// Its ack id (a UUID), the same on every delivery.
    pub ack_id: String,
    /// The message, as queued (JSON text, sent as it is: never parsed again on its way out).
    pub body: Box<RawValue>,
    /// Deliveries before this one.
    pub attempts: u32,
}

/// A message parked after its last retry, as `tidepool consumer show` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, ts_rs::TS)]
#[serde(rename_all = "camelCase")]
#[ts(rename = "ParkedMessage")]
pub struct Parked {
    /// Its log position.
    pub seq: u64,
    /// Its ack id.
    pub ack_id: String,
    /// Failed attempts.
    pub attempts: u32,
    /// The last failure.
    pub last_error: Option<String>,
    /// The message.
    #[ts(type = "unknown")]
    pub message: Json,
}

/// A consumer as a delivery worker needs it each round.
#[derive(Debug, Clone)]
pub struct Definition {
    /// Its id.
    pub id: String,
    /// What it wants.
    pub spec: ConsumerSpec,
    /// The last log position read into its queue.
    pub position: u64,
}

/// The consumers of one store.
pub struct Ledger {
    conn: Connection,
    path: PathBuf,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger").field("path", &self.path).finish()
    }
}

/// The messages a claim's query selected (`seq, ack_id, body, attempts`).
fn claimed_rows(
    stmt: &mut rusqlite::CachedStatement<'_>,
    params: impl rusqlite::Params,
) -> Result<Vec<Claimed>> {
    let rows = stmt
        .query_map(params, |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, i64>(3)?,
            ))
        })
        .map_err(sqlite("claiming"))?;
    let mut claimed = Vec::new();
    for row in rows {
        let (seq, ack_id, body, attempts) = row.map_err(sqlite("claiming"))?;
        let body = RawValue::from_string(body)
            .map_err(|e| Error::internal(format!("consumers: a queued message: {e}")))?;
        claimed.push(Claimed {
            seq: seq as u64,
            ack_id,
            body,
            attempts: attempts as u32,
        });
    }
    Ok(claimed)
}

/// Marks claimed messages in flight until `until` (Unix ms).
fn mark_claimed(tx: &Connection, id: &str, claimed: &[Claimed], until: i64) -> Result<()> {
    let mut mark = tx
        .prepare_cached("UPDATE messages SET visible_until = ?3 WHERE consumer = ?1 AND seq = ?2")
        .map_err(sqlite("claiming"))?;
    for c in claimed {
        mark.execute(params![id, c.seq as i64, until])
            .map_err(sqlite("claiming"))?;
    }
    Ok(())
}

/// The ack id of the change with `idempotency_key` for consumer `consumer_id`: a UUID made from a
/// SHA-256 of both. A message delivered straight from the log (a webhook consumer in changes mode)
/// is never stored unless it fails, so its ack id (and the `webhook-id` made from it) must be
/// computable again: it is the same on every delivery, after any restart, and in the row written
/// if the message fails.
pub fn ack_id_of(consumer_id: &str, idempotency_key: &str) -> String {
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    // Length-prefixed, so no two pairs hash the same bytes.
    context.update(&(consumer_id.len() as u64).to_be_bytes());
    context.update(consumer_id.as_bytes());
    context.update(idempotency_key.as_bytes());
    let digest = context.finish();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest.as_ref()[..16]);
    uuid::Builder::from_custom_bytes(bytes)
        .into_uuid()
        .hyphenated()
        .to_string()
}

/// A message delivered straight from the log that now needs a row in the queue
/// ([`Ledger::hold`]): it failed, or its group is held back by a message that has one.
#[derive(Debug, Clone, Copy)]
pub struct Row<'a> {
    /// Its log position.
    pub seq: u64,
    /// Its delivery group.
    pub group: &'a str,
    /// Its ack id ([`ack_id_of`]).
    pub ack_id: &'a str,
    /// The message as JSON text.
    pub body: &'a str,
}

/// A failed first attempt of messages delivered straight from the log.
#[derive(Debug, Clone, Copy)]
pub struct Failure<'a> {
    /// Why it failed.
    pub error: &'a str,
    /// When it is due again (Unix ms).
    pub retry_at_ms: i64,
    /// Failures after which it is parked (`None`: never).
    pub max_retries: Option<u32>,
}

/// The ledger's file in a store folder.
pub fn ledger_path(store_dir: &Path) -> PathBuf {
    store_dir.join("consumers.db")
}

fn notices_key(id: &str) -> String {
    format!("notices:{id}")
}

fn start_pruned_key(id: &str) -> String {
    format!("start_pruned:{id}")
}

fn paused_key(id: &str) -> String {
    format!("paused:{id}")
}

/// Requests kept per consumer in its recent attempts; older ones are pruned as new ones arrive.
pub const ATTEMPTS_KEPT: i64 = 100;

/// Seconds of throughput and latency samples kept per consumer.
pub const SAMPLES_KEPT_S: i64 = 3600;

/// One request (or publish batch) a delivery worker made, as a consumer's page lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ts_rs::TS)]
#[serde(rename_all = "camelCase")]
#[ts(rename = "DeliveryAttempt")]
pub struct Attempt {
    /// When it started (Unix ms).
    pub at_ms: i64,
    /// Messages it carried (0 for a test message).
    pub messages: u32,
    /// The HTTP status answered, if one was.
    pub status: Option<u16>,
    /// Why it failed; none when it was acknowledged.
    pub error: Option<String>,
    /// How long it took.
    pub duration_ms: u64,
    /// A "Send a test message" request, not a delivery.
    pub test: bool,
}

/// What a consumer delivered in one second.
#[derive(Debug, Clone, PartialEq, Serialize, ts_rs::TS)]
#[serde(rename_all = "camelCase")]
#[ts(rename = "DeliverySample")]
pub struct Sample {
    /// The second (Unix seconds).
    pub second: i64,
    /// Messages acknowledged in it.
    pub delivered: u64,
    /// Their mean commit → acknowledged latency.
    pub latency_avg_ms: f64,
    /// Their longest.
    pub latency_max_ms: u64,
}

impl Ledger {
    /// Opens (creating if needed) the ledger of the store in `store_dir`.
    pub fn open(store_dir: &Path) -> Result<Ledger> {
        crate::owner_only::create_dir_all(store_dir).map_err(|e| {
            Error::invalid_input(
                "--store",
                format!("cannot create {}: {e}", store_dir.display()),
            )
        })?;
        let path = ledger_path(store_dir);
        // Owner-only like the store: SQLite gives its -wal and -shm files the database file's mode.
        crate::owner_only::create_keep(&path).map_err(|e| {
            Error::invalid_input("--store", format!("cannot create {}: {e}", path.display()))
        })?;
        // Queued messages are copies of captured rows: encrypted with the store's key if it is.
        let key = crate::store::encryption::key_for(store_dir)?;
        let conn = crate::store::open_database(&path, store_dir, key.as_deref())?;
        // NORMAL in WAL mode keeps the file consistent through a crash; a power loss may forget the
        // last acknowledgements, which only means a redelivery (delivery is at least once).
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = NORMAL;
             -- A full queue (QUEUE_LIMIT messages) stays in memory: claims and acknowledgements
             -- never wait on reading pages back from the OS.
             PRAGMA cache_size = -32768;
             CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS consumers (
               id TEXT PRIMARY KEY,
               name TEXT NOT NULL UNIQUE,
               spec TEXT NOT NULL,
               position INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS messages (
               consumer TEXT NOT NULL,
               seq INTEGER NOT NULL,
               grp TEXT NOT NULL,
               ack_id TEXT NOT NULL,
               body TEXT NOT NULL,
               attempts INTEGER NOT NULL DEFAULT 0,
               not_before INTEGER NOT NULL DEFAULT 0,
               visible_until INTEGER NOT NULL DEFAULT 0,
               failed INTEGER NOT NULL DEFAULT 0,
               last_error TEXT,
               PRIMARY KEY (consumer, seq));
             -- Queue rows delivered or skipped while the consumer's position was below them: a
             -- worker that reads the log again from the position passes over them, so a skip
             -- holds across a restart. Pruned as the position passes them.
             CREATE TABLE IF NOT EXISTS settled (
               consumer TEXT NOT NULL,
               seq INTEGER NOT NULL,
               PRIMARY KEY (consumer, seq)) WITHOUT ROWID;
             CREATE INDEX IF NOT EXISTS messages_by_group ON messages (consumer, grp, seq);
             CREATE UNIQUE INDEX IF NOT EXISTS messages_by_ack_id ON messages (consumer, ack_id);
             -- Both partial, so a message queued and delivered at the first attempt never enters
             -- them: parked messages, counted without a scan ...
             CREATE INDEX IF NOT EXISTS messages_parked ON messages (consumer) WHERE failed = 1;
             -- ... and messages held back by a claim or a retry delay, to find the next one due.
             -- Queries repeat the index's condition literally, or SQLite cannot use it.
             CREATE INDEX IF NOT EXISTS messages_held ON messages (consumer, max(not_before, visible_until))
               WHERE failed = 0 AND max(not_before, visible_until) > 0;
             -- What a consumer's page shows: its last ATTEMPTS_KEPT requests ...
             CREATE TABLE IF NOT EXISTS attempts (
               id INTEGER PRIMARY KEY AUTOINCREMENT,
               consumer TEXT NOT NULL,
               at_ms INTEGER NOT NULL,
               messages INTEGER NOT NULL,
               status INTEGER,
               error TEXT,
               duration_ms INTEGER NOT NULL,
               test INTEGER NOT NULL DEFAULT 0);
             CREATE INDEX IF NOT EXISTS attempts_by_consumer ON attempts (consumer, id);
             -- ... and per second of the last SAMPLES_KEPT_S, what it delivered and how late.
             CREATE TABLE IF NOT EXISTS samples (
               consumer TEXT NOT NULL,
               second INTEGER NOT NULL,
               delivered INTEGER NOT NULL,
               latency_sum_ms INTEGER NOT NULL,
               latency_max_ms INTEGER NOT NULL,
               PRIMARY KEY (consumer, second));",
        )
        .map_err(sqlite("creating the schema"))?;
        Ok(Ledger { conn, path })
    }

    /// Runs `f` in one transaction (each step in it keeps its own savepoint): a delivery worker's
    /// round of settling, reading and claiming commits once instead of once per step. Rolled back
    /// if `f` fails.
    pub fn round<T>(&mut self, f: impl FnOnce(&mut Ledger) -> Result<T>) -> Result<T> {
        // IMMEDIATE takes the write lock now: a read that later turned into a write could fail
        // with SQLITE_BUSY beside another connection (the pull API's, or the command line's).
        self.conn
            .execute_batch("BEGIN IMMEDIATE")
            .map_err(sqlite("starting a round"))?;
        match f(self) {
            Ok(value) => {
                self.conn
                    .execute_batch("COMMIT")
                    .map_err(sqlite("ending a round"))?;
                Ok(value)
            }
            Err(e) => {
                let _ = self.conn.execute_batch("ROLLBACK");
                Err(e)
            }
        }
    }

    /// This store's delivery id (made on first use), which names its pull API token in the keychain.
    pub fn store_id(&mut self) -> Result<String> {
        let id = new_uuid()?;
        self.conn
            .execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('store_id', ?1)",
                [&id],
            )
            .map_err(sqlite("naming the store"))?;
        self.conn
            .query_row("SELECT value FROM meta WHERE key = 'store_id'", [], |r| {
                r.get(0)
            })
            .map_err(sqlite("naming the store"))
    }

    /// Saves a new consumer reading the log after `position`.
    pub fn add(&mut self, spec: ConsumerSpec, position: u64) -> Result<Consumer> {
        spec.validate()?;
        if self.find(&spec.name)?.is_some() {
            return Err(Error::invalid_input(
                "name",
                format!("a consumer named '{}' exists already", spec.name),
            ));
        }
        let id = new_uuid()?;
        let text = serde_json::to_string(&spec)
            .map_err(|e| Error::internal(format!("consumers: encoding: {e}")))?;
        self.conn
            .execute(
                "INSERT INTO consumers (id, name, spec, position) VALUES (?1, ?2, ?3, ?4)",
                params![id, spec.name, text, position as i64],
            )
            .map_err(sqlite("saving a consumer"))?;
        self.get(&id)
    }

    /// Every consumer, by name.
    pub fn list(&self) -> Result<Vec<Consumer>> {
        let ids: Vec<String> = {
            let mut stmt = self
                .conn
                .prepare("SELECT id FROM consumers ORDER BY name")
                .map_err(sqlite("listing consumers"))?;
            let rows = stmt
                .query_map([], |r| r.get(0))
                .map_err(sqlite("listing consumers"))?;
            rows.collect::<std::result::Result<_, _>>()
                .map_err(sqlite("listing consumers"))?
        };
        ids.iter().map(|id| self.get(id)).collect()
    }

    /// A consumer's definition and position, without counting its queue: what a delivery worker
    /// reads every round.
    pub fn definition(&self, id_or_name: &str) -> Result<Option<Definition>> {
        let column = if is_uuid(id_or_name) { "id" } else { "name" };
        let row: Option<(String, String, i64)> = self
            .conn
            .prepare_cached(&format!(
                "SELECT id, spec, position FROM consumers WHERE {column} = ?1"
            ))
            .and_then(|mut s| {
                s.query_row([id_or_name], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                    .optional()
            })
            .map_err(sqlite("reading a consumer"))?;
        let Some((id, spec, position)) = row else {
            return Ok(None);
        };
        let spec: ConsumerSpec = serde_json::from_str(&spec)
            .map_err(|e| Error::internal(format!("consumers: '{id}' cannot be read: {e}")))?;
        Ok(Some(Definition {
            id,
            spec,
            position: position as u64,
        }))
    }

    fn find(&self, id_or_name: &str) -> Result<Option<Consumer>> {
        let Some(Definition { id, spec, position }) = self.definition(id_or_name)? else {
            return Ok(None);
        };
        let failed: i64 = self
            .conn
            .prepare_cached("SELECT count(*) FROM messages WHERE consumer = ?1 AND failed = 1")
            .and_then(|mut s| s.query_row([&id], |r| r.get(0)))
            .map_err(sqlite("counting messages"))?;
        let pending = self.queued(&id)? as i64 - failed;
        let notices = self.notices(&id)?.into_values().collect();
        let paused = self.paused(&id)?;
        Ok(Some(Consumer {
            paused,
            id,
            spec,
            position,
            pending: pending as u64,
            failed: failed as u64,
            notices,
        }))
    }

    /// Whether a consumer with this id or name exists (a delivery worker's check that it was not
    /// removed, without counting its queue).
    pub fn exists(&self, id_or_name: &str) -> Result<bool> {
        let column = if is_uuid(id_or_name) { "id" } else { "name" };
        self.conn
            .prepare_cached(&format!("SELECT 1 FROM consumers WHERE {column} = ?1"))
            .and_then(|mut s| s.exists([id_or_name]))
            .map_err(sqlite("reading a consumer"))
    }

    /// The consumer with this id or name.
    pub fn get(&self, id_or_name: &str) -> Result<Consumer> {
        self.find(id_or_name)?.ok_or_else(|| {
            Error::new(
                ErrorKind::NotFound,
                format!(
                    "no consumer named '{id_or_name}' in {}",
                    self.path.display()
                ),
            )
        })
    }

    /// Removes a consumer and its queue.
    pub fn remove(&mut self, id_or_name: &str) -> Result<Consumer> {
        let consumer = self.get(id_or_name)?;
        let tx = step(&mut self.conn).map_err(sqlite("removing"))?;
        tx.execute("DELETE FROM messages WHERE consumer = ?1", [&consumer.id])
            .map_err(sqlite("removing"))?;
        tx.execute("DELETE FROM consumers WHERE id = ?1", [&consumer.id])
            .map_err(sqlite("removing"))?;
        for table in ["attempts", "samples", "settled"] {
            tx.execute(
                &format!("DELETE FROM {table} WHERE consumer = ?1"),
                [&consumer.id],
            )
            .map_err(sqlite("removing"))?;
        }
        for key in [
            notices_key(&consumer.id),
            start_pruned_key(&consumer.id),
            paused_key(&consumer.id),
        ] {
            tx.execute("DELETE FROM meta WHERE key = ?1", [key])
                .map_err(sqlite("removing"))?;
        }
        tx.commit().map_err(sqlite("removing"))?;
        Ok(consumer)
    }

    /// A consumer's notices by topic.
    pub fn notices(&self, id: &str) -> Result<std::collections::BTreeMap<String, Notice>> {
        let text: Option<String> = self
            .conn
            .query_row(
                "SELECT value FROM meta WHERE key = ?1",
                [notices_key(id)],
                |r| r.get(0),
            )
            .optional()
            .map_err(sqlite("reading notices"))?;
        text.map_or(Ok(Default::default()), |t| {
            serde_json::from_str(&t)
                .map_err(|e| Error::internal(format!("consumers: notices of '{id}': {e}")))
        })
    }

    /// Records `notice` under `topic`, replacing the topic's earlier one; returns whether its kind
    /// or message is new (so it is logged once, not on every round).
    pub fn notify(&mut self, id: &str, topic: &str, notice: Notice) -> Result<bool> {
        let mut notices = self.notices(id)?;
        if notices
            .get(topic)
            .is_some_and(|n| n.kind == notice.kind && n.message == notice.message)
        {
            return Ok(false);
        }
        notices.insert(topic.to_string(), notice);
        self.put_meta(
            &notices_key(id),
            &serde_json::to_string(&notices).map_err(Error::internal)?,
        )?;
        Ok(true)
    }

    /// Per collection, the newest log position already pruned when a consumer starting at the
    /// beginning was added: it starts from the log as kept then, which is not falling behind.
    pub fn start_pruned(&self, id: &str) -> Result<std::collections::BTreeMap<String, u64>> {
        let text: Option<String> = self
            .conn
            .query_row(
                "SELECT value FROM meta WHERE key = ?1",
                [start_pruned_key(id)],
                |r| r.get(0),
            )
            .optional()
            .map_err(sqlite("reading a consumer's start"))?;
        Ok(text
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default())
    }

    /// Records [`Ledger::start_pruned`].
    pub fn set_start_pruned(
        &mut self,
        id: &str,
        pruned: &std::collections::BTreeMap<String, u64>,
    ) -> Result<()> {
        self.put_meta(
            &start_pruned_key(id),
            &serde_json::to_string(pruned).map_err(Error::internal)?,
        )
    }

    /// Whether the consumer is paused: its worker delivers nothing and the pull API hands nothing
    /// out; its messages stay queued.
    pub fn paused(&self, id: &str) -> Result<bool> {
        self.conn
            .prepare_cached("SELECT 1 FROM meta WHERE key = ?1")
            .and_then(|mut s| s.exists([paused_key(id)]))
            .map_err(sqlite("reading a consumer's pause"))
    }

    /// Pauses or resumes a consumer.
    pub fn set_paused(&mut self, id: &str, paused: bool) -> Result<()> {
        if paused {
            self.put_meta(&paused_key(id), "1")
        } else {
            self.conn
                .execute("DELETE FROM meta WHERE key = ?1", [paused_key(id)])
                .map(|_| ())
                .map_err(sqlite("resuming a consumer"))
        }
    }

    /// Replaces a consumer's definition (validated as a whole; its name stays). Messages already
    /// queued keep the body they were queued with; the new filter and actions apply to what is
    /// read from the log from now on.
    pub fn set_spec(&mut self, id: &str, spec: &ConsumerSpec) -> Result<()> {
        spec.validate()?;
        let text = serde_json::to_string(spec)
            .map_err(|e| Error::internal(format!("consumers: encoding: {e}")))?;
        let changed = self
            .conn
            .execute(
                "UPDATE consumers SET spec = ?2 WHERE id = ?1",
                params![id, text],
            )
            .map_err(sqlite("saving a consumer"))?;
        if changed == 0 {
            return Err(Error::new(
                ErrorKind::NotFound,
                format!("no consumer with id '{id}'"),
            ));
        }
        Ok(())
    }

    /// Records a request in the consumer's recent attempts, pruning what is beyond the last
    /// [`ATTEMPTS_KEPT`]; nothing once the consumer was removed (a request that finished after).
    pub fn record_attempt(&mut self, id: &str, attempt: &Attempt) -> Result<()> {
        if !self.exists(id)? {
            return Ok(());
        }
        let tx = step(&mut self.conn).map_err(sqlite("recording an attempt"))?;
        tx.prepare_cached(
            "INSERT INTO attempts (consumer, at_ms, messages, status, error, duration_ms, test)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )
        .and_then(|mut s| {
            s.execute(params![
                id,
                attempt.at_ms,
                attempt.messages,
                attempt.status,
                attempt.error,
                attempt.duration_ms as i64,
                attempt.test
            ])
        })
        .map_err(sqlite("recording an attempt"))?;
        tx.prepare_cached(
            "DELETE FROM attempts WHERE consumer = ?1 AND id <= (
               SELECT id FROM attempts WHERE consumer = ?1 ORDER BY id DESC LIMIT 1 OFFSET ?2)",
        )
        .and_then(|mut s| s.execute(params![id, ATTEMPTS_KEPT]))
        .map_err(sqlite("recording an attempt"))?;
        tx.commit().map_err(sqlite("recording an attempt"))
    }

    /// The consumer's recent attempts, newest first.
    pub fn attempts(&self, id: &str) -> Result<Vec<Attempt>> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT at_ms, messages, status, error, duration_ms, test FROM attempts
                 WHERE consumer = ?1 ORDER BY id DESC",
            )
            .map_err(sqlite("reading attempts"))?;
        let rows = stmt
            .query_map([id], |r| {
                Ok(Attempt {
                    at_ms: r.get(0)?,
                    messages: r.get(1)?,
                    status: r.get(2)?,
                    error: r.get(3)?,
                    duration_ms: r.get::<_, i64>(4)?.max(0) as u64,
                    test: r.get(5)?,
                })
            })
            .map_err(sqlite("reading attempts"))?;
        rows.collect::<std::result::Result<_, _>>()
            .map_err(sqlite("reading attempts"))
    }

    /// Adds messages acknowledged at `at_ms`, each with its commit → acknowledged latency, to the
    /// consumer's sample of that second, pruning samples older than [`SAMPLES_KEPT_S`]; nothing
    /// once the consumer was removed.
    pub fn record_delivered(&mut self, id: &str, at_ms: i64, latencies_ms: &[u64]) -> Result<()> {
        if latencies_ms.is_empty() || !self.exists(id)? {
            return Ok(());
        }
        let second = at_ms.div_euclid(1000);
        let sum: u64 = latencies_ms.iter().sum();
        let max = latencies_ms.iter().copied().max().unwrap_or(0);
        let tx = step(&mut self.conn).map_err(sqlite("recording a sample"))?;
        tx.prepare_cached(
            "INSERT INTO samples (consumer, second, delivered, latency_sum_ms, latency_max_ms)
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (consumer, second) DO UPDATE SET
               delivered = delivered + excluded.delivered,
               latency_sum_ms = latency_sum_ms + excluded.latency_sum_ms,
               latency_max_ms = max(latency_max_ms, excluded.latency_max_ms)",
        )
        .and_then(|mut s| {
            s.execute(params![
                id,
                second,
                latencies_ms.len() as i64,
                sum as i64,
                max as i64
            ])
        })
        .map_err(sqlite("recording a sample"))?;
        tx.prepare_cached("DELETE FROM samples WHERE consumer = ?1 AND second < ?2")
            .and_then(|mut s| s.execute(params![id, second - SAMPLES_KEPT_S]))
            .map_err(sqlite("recording a sample"))?;
        tx.commit().map_err(sqlite("recording a sample"))
    }

    /// The consumer's samples from `since` (Unix seconds) on, oldest first; seconds with nothing
    /// delivered have none.
    pub fn samples(&self, id: &str, since: i64) -> Result<Vec<Sample>> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT second, delivered, latency_sum_ms, latency_max_ms FROM samples
                 WHERE consumer = ?1 AND second >= ?2 ORDER BY second",
            )
            .map_err(sqlite("reading samples"))?;
        let rows = stmt
            .query_map(params![id, since], |r| {
                let delivered: i64 = r.get(1)?;
                let sum: i64 = r.get(2)?;
                Ok(Sample {
                    second: r.get(0)?,
                    delivered: delivered.max(0) as u64,
                    latency_avg_ms: if delivered > 0 {
                        sum as f64 / delivered as f64
                    } else {
                        0.0
                    },
                    latency_max_ms: r.get::<_, i64>(3)?.max(0) as u64,
                })
            })
            .map_err(sqlite("reading samples"))?;
        rows.collect::<std::result::Result<_, _>>()
            .map_err(sqlite("reading samples"))
    }

    /// Sets every consumer's position back to 0 after the store's log was emptied and starts
    /// again from position 1. Queued messages stay, moved below 0 in the same order, so they are
    /// still delivered first and the new log's positions never collide with them.
    pub fn rewind_all(&mut self) -> Result<()> {
        let tx = step(&mut self.conn).map_err(sqlite("rewinding"))?;
        // Every new value is below every old one: no two rows ever share a key during the update.
        tx.execute(
            "UPDATE messages SET seq = seq - (SELECT max(seq) - min(seq) + 1 FROM messages)",
            [],
        )
        .map_err(sqlite("rewinding"))?;
        tx.execute("UPDATE consumers SET position = 0", [])
            .map_err(sqlite("rewinding"))?;
        // Positions of the old log: the new one reuses them.
        tx.execute("DELETE FROM settled", [])
            .map_err(sqlite("rewinding"))?;
        tx.commit().map_err(sqlite("rewinding"))
    }

    fn put_meta(&mut self, key: &str, value: &str) -> Result<()> {
        self.conn
            .execute(
                "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                [key, value],
            )
            .map(|_| ())
            .map_err(sqlite("writing meta"))
    }

    /// Messages queued (waiting, in flight or parked).
    pub fn queued(&self, id: &str) -> Result<u64> {
        self.conn
            .query_row(
                "SELECT count(*) FROM messages WHERE consumer = ?1",
                [id],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n as u64)
            .map_err(sqlite("counting messages"))
    }

    /// Writes queue rows for messages delivered straight from the log: after `failure` (one failed
    /// attempt: due again at its retry time, or parked when no retry is allowed), or, without
    /// one, waiting behind a queued message of their group. A message that has a row already keeps
    /// it as it is (it was read again after a restart).
    pub fn hold(&mut self, id: &str, rows: &[Row<'_>], failure: Option<Failure<'_>>) -> Result<()> {
        let tx = step(&mut self.conn).map_err(sqlite("queueing"))?;
        {
            let mut insert = tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO messages
                       (consumer, seq, grp, ack_id, body, attempts, not_before, failed, last_error)
                     SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9
                     WHERE EXISTS (SELECT 1 FROM consumers WHERE id = ?1)",
                )
                .map_err(sqlite("queueing"))?;
            let (attempts, not_before, failed, error) = match failure {
                Some(f) => (1, f.retry_at_ms, f.max_retries == Some(0), Some(f.error)),
                None => (0, 0, false, None),
            };
            for row in rows {
                insert
                    .execute(params![
                        id,
                        row.seq as i64,
                        row.group,
                        row.ack_id,
                        row.body,
                        attempts,
                        not_before,
                        failed,
                        error
                    ])
                    .map_err(sqlite("queueing"))?;
            }
        }
        tx.commit().map_err(sqlite("queueing"))
    }

    /// The groups that have a queued message (waiting, in flight or parked): a message of one of
    /// them read from the log must wait behind it in the queue.
    pub fn queued_groups(&self, id: &str) -> Result<std::collections::HashSet<String>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT DISTINCT grp FROM messages WHERE consumer = ?1")
            .map_err(sqlite("reading the queue"))?;
        let rows = stmt
            .query_map([id], |r| r.get(0))
            .map_err(sqlite("reading the queue"))?;
        rows.collect::<std::result::Result<_, _>>()
            .map_err(sqlite("reading the queue"))
    }

    /// Moves the consumer's position forward to `position` (never back): every log entry up to it
    /// has been acknowledged or has a queue row.
    pub fn advance(&mut self, id: &str, position: u64) -> Result<()> {
        self.conn
            .prepare_cached("UPDATE consumers SET position = ?2 WHERE id = ?1 AND position < ?2")
            .and_then(|mut s| s.execute(params![id, position as i64]))
            .map_err(sqlite("moving a position"))?;
        self.conn
            .prepare_cached("DELETE FROM settled WHERE consumer = ?1 AND seq <= ?2")
            .and_then(|mut s| s.execute(params![id, position as i64]))
            .map(|_| ())
            .map_err(sqlite("moving a position"))
    }

    /// Queues `messages` (in log order) and moves the consumer's position to `position`, in one
    /// transaction. In rows mode a message replaces its group's queued messages that are not in
    /// flight at `now_ms`.
    pub fn enqueue(
        &mut self,
        id: &str,
        mode: Mode,
        messages: &[(u64, Message)],
        position: u64,
        now_ms: i64,
    ) -> Result<()> {
        let tx = step(&mut self.conn).map_err(sqlite("queueing"))?;
        {
            let mut replace = tx
                .prepare_cached(
                    "DELETE FROM messages WHERE consumer = ?1 AND grp = ?2 AND failed = 0 AND visible_until <= ?3",
                )
                .map_err(sqlite("queueing"))?;
            // A position settled from the queue above the consumer's position (delivered or
            // skipped by hand) is not queued again.
            let mut insert = tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO messages (consumer, seq, grp, ack_id, body)
                     SELECT ?1, ?2, ?3, ?4, ?5
                     WHERE NOT EXISTS (SELECT 1 FROM settled WHERE consumer = ?1 AND seq = ?2)",
                )
                .map_err(sqlite("queueing"))?;
            for (seq, message) in messages {
                if mode == Mode::Rows {
                    replace
                        .execute(params![id, message.group, now_ms])
                        .map_err(sqlite("queueing"))?;
                }
                // The ack id a message sent straight from the log had (ack_id_of), so one first
                // sent from there and queued after a restart keeps its `webhook-id`.
                let ack_id = match message.idempotency_key() {
                    Some(key) => ack_id_of(id, key),
                    None => new_uuid()?,
                };
                insert
                    .execute(params![
                        id,
                        *seq as i64,
                        message.group,
                        ack_id,
                        message.body.to_string()
                    ])
                    .map_err(sqlite("queueing"))?;
            }
        }
        tx.execute(
            "UPDATE consumers SET position = ?2 WHERE id = ?1 AND position < ?2",
            params![id, position as i64],
        )
        .map_err(sqlite("queueing"))?;
        tx.execute(
            "DELETE FROM settled WHERE consumer = ?1 AND seq <= ?2",
            params![id, position as i64],
        )
        .map_err(sqlite("queueing"))?;
        tx.commit().map_err(sqlite("queueing"))
    }

    /// Hands out up to `limit` messages, oldest first, each the oldest of its group with no message
    /// of the group in flight or parked, and marks them in flight until `now_ms + visible_ms`.
    /// With `max_pending`, no more than that many are in flight afterwards.
    pub fn claim(
        &mut self,
        id: &str,
        now_ms: i64,
        limit: usize,
        visible_ms: u64,
        max_pending: Option<u64>,
    ) -> Result<Vec<Claimed>> {
        let tx = step(&mut self.conn).map_err(sqlite("claiming"))?;
        let mut limit = limit as i64;
        if let Some(max) = max_pending {
            let pending: i64 = tx
                .query_row(
                    // The second and third conditions, implied by the fourth, let the index of held messages find them.
                    "SELECT count(*) FROM messages WHERE consumer = ?1 AND failed = 0
                       AND max(not_before, visible_until) > 0
                       AND max(not_before, visible_until) > ?2 AND visible_until > ?2",
                    params![id, now_ms],
                    |r| r.get(0),
                )
                .map_err(sqlite("claiming"))?;
            limit = limit.min((max as i64 - pending).max(0));
        }
        let mut claimed = Vec::new();
        if limit > 0 {
            let mut stmt = tx
                .prepare_cached(
                    "SELECT m.seq, m.ack_id, m.body, m.attempts FROM messages m
                     WHERE m.consumer = ?1 AND m.failed = 0 AND m.visible_until <= ?2 AND m.not_before <= ?2
                       AND NOT EXISTS (SELECT 1 FROM messages e WHERE e.consumer = ?1 AND e.grp = m.grp AND e.seq < m.seq)
                     ORDER BY m.seq LIMIT ?3",
                )
                .map_err(sqlite("claiming"))?;
            claimed = claimed_rows(&mut stmt, params![id, now_ms, limit])?;
        }
        mark_claimed(&tx, id, &claimed, now_ms + visible_ms as i64)?;
        tx.commit().map_err(sqlite("claiming"))?;
        Ok(claimed)
    }

    /// Hands out up to `limit` messages in log order, as many of each group as are queued (a NATS
    /// worker publishes them in this order on one connection, so a group's messages reach the
    /// stream in commit order). A group with a message in flight, held back by a retry delay or
    /// parked is skipped whole, so nothing overtakes that message. The messages are held for
    /// `visible_ms`.
    pub fn claim_runs(
        &mut self,
        id: &str,
        now_ms: i64,
        limit: usize,
        visible_ms: u64,
    ) -> Result<Vec<Claimed>> {
        let tx = step(&mut self.conn).map_err(sqlite("claiming"))?;
        let claimed = {
            let mut stmt = tx
                .prepare_cached(
                    // The conditions repeat the partial indexes' (parked; held), so both are used.
                    "WITH blocked AS (
                       SELECT grp FROM messages WHERE consumer = ?1 AND failed = 1
                       UNION
                       SELECT grp FROM messages WHERE consumer = ?1 AND failed = 0
                         AND max(not_before, visible_until) > 0 AND max(not_before, visible_until) > ?2)
                     SELECT seq, ack_id, body, attempts FROM messages
                     WHERE consumer = ?1 AND grp NOT IN blocked
                     ORDER BY seq LIMIT ?3",
                )
                .map_err(sqlite("claiming"))?;
            claimed_rows(&mut stmt, params![id, now_ms, limit as i64])?
        };
        mark_claimed(&tx, id, &claimed, now_ms + visible_ms as i64)?;
        tx.commit().map_err(sqlite("claiming"))?;
        Ok(claimed)
    }

    /// When the next message held back by a retry delay becomes due, if one is.
    pub fn next_due(&self, id: &str, now_ms: i64) -> Result<Option<i64>> {
        self.conn
            .query_row(
                "SELECT min(max(not_before, visible_until)) FROM messages WHERE consumer = ?1 AND failed = 0
                   AND max(not_before, visible_until) > 0 AND max(not_before, visible_until) > ?2",
                params![id, now_ms],
                |r| r.get(0),
            )
            .map_err(sqlite("reading delays"))
    }

    /// Removes acknowledged messages by log position.
    pub fn delivered(&mut self, id: &str, seqs: &[u64]) -> Result<()> {
        let tx = step(&mut self.conn).map_err(sqlite("acknowledging"))?;
        {
            // Only a message first sent from the log and queued when it failed can lie above the
            // position; remembering it keeps a restart from sending it again. The position is
            // read once, so a queue read ahead of it (NATS, rows mode) costs no extra statement.
            let position: Option<i64> = tx
                .query_row("SELECT position FROM consumers WHERE id = ?1", [id], |r| {
                    r.get(0)
                })
                .optional()
                .map_err(sqlite("acknowledging"))?;
            let mut remember = tx
                .prepare_cached("INSERT OR IGNORE INTO settled (consumer, seq) VALUES (?1, ?2)")
                .map_err(sqlite("acknowledging"))?;
            let mut stmt = tx
                .prepare_cached("DELETE FROM messages WHERE consumer = ?1 AND seq = ?2")
                .map_err(sqlite("acknowledging"))?;
            for &seq in seqs {
                if position.is_some_and(|p| seq as i64 > p) {
                    remember
                        .execute(params![id, seq as i64])
                        .map_err(sqlite("acknowledging"))?;
                }
                stmt.execute(params![id, seq as i64])
                    .map_err(sqlite("acknowledging"))?;
            }
        }
        tx.commit().map_err(sqlite("acknowledging"))
    }

    /// Records a failed attempt of each message: it is due again at `retry_at_ms`, or parked when it
    /// has failed more than `max_retries` times.
    pub fn attempt_failed(
        &mut self,
        id: &str,
        seqs: &[u64],
        error: &str,
        retry_at_ms: i64,
        max_retries: Option<u32>,
    ) -> Result<()> {
        let tx = step(&mut self.conn).map_err(sqlite("recording a failure"))?;
        {
            let mut stmt = tx
                .prepare_cached(
                    "UPDATE messages SET attempts = attempts + 1, last_error = ?3, not_before = ?4, visible_until = 0,
                       failed = CASE WHEN ?5 IS NOT NULL AND attempts + 1 > ?5 THEN 1 ELSE 0 END
                     WHERE consumer = ?1 AND seq = ?2",
                )
                .map_err(sqlite("recording a failure"))?;
            for seq in seqs {
                stmt.execute(params![
                    id,
                    *seq as i64,
                    error,
                    retry_at_ms,
                    max_retries.map(i64::from)
                ])
                .map_err(sqlite("recording a failure"))?;
            }
        }
        tx.commit().map_err(sqlite("recording a failure"))
    }

    /// Offers again at once every message of consumer `id` marked in flight. For a webhook worker
    /// starting up: no request of its own is in flight then, so a mark can only be left by a worker
    /// that was killed or stopped mid-request, and its messages must not wait out that request's
    /// hold before they are delivered again.
    pub fn release_claims(&mut self, id: &str) -> Result<usize> {
        self.conn
            .execute(
                "UPDATE messages SET visible_until = 0 WHERE consumer = ?1 AND failed = 0 AND visible_until > 0",
                [id],
            )
            .map_err(sqlite("releasing claims"))
    }

    /// Acknowledges pulled messages by ack id (unknown or already acknowledged ids are fine), and
    /// counts those acknowledged now in the consumer's delivered samples.
    pub fn ack(&mut self, id: &str, ack_ids: &[String]) -> Result<()> {
        let now_ms = crate::deliver::now_ms();
        let tx = step(&mut self.conn).map_err(sqlite("acknowledging"))?;
        let mut latencies = Vec::new();
        {
            let mut stmt = tx
                .prepare_cached(
                    "DELETE FROM messages WHERE consumer = ?1 AND ack_id = ?2 RETURNING body",
                )
                .map_err(sqlite("acknowledging"))?;
            for ack_id in ack_ids {
                let body: Option<String> = stmt
                    .query_row(params![id, ack_id], |r| r.get(0))
                    .optional()
                    .map_err(sqlite("acknowledging"))?;
                if let Some(body) = body {
                    // A message without a commit time still counts, with no latency to speak of.
                    latencies.push(
                        crate::deliver::message::commit_ms(&body)
                            .map_or(0, |commit| (now_ms - commit).max(0) as u64),
                    );
                }
            }
        }
        tx.commit().map_err(sqlite("acknowledging"))?;
        self.record_delivered(id, now_ms, &latencies)
    }

    /// Makes pulled messages available again at once.
    pub fn nack(&mut self, id: &str, ack_ids: &[String]) -> Result<()> {
        self.by_ack_ids(
            id,
            ack_ids,
            "UPDATE messages SET visible_until = 0 WHERE consumer = ?1 AND ack_id = ?2",
        )
    }

    fn by_ack_ids(&mut self, id: &str, ack_ids: &[String], sql: &str) -> Result<()> {
        let tx = step(&mut self.conn).map_err(sqlite("acknowledging"))?;
        {
            let mut stmt = tx.prepare_cached(sql).map_err(sqlite("acknowledging"))?;
            for ack_id in ack_ids {
                stmt.execute(params![id, ack_id])
                    .map_err(sqlite("acknowledging"))?;
            }
        }
        tx.commit().map_err(sqlite("acknowledging"))
    }

    /// The parked messages of a consumer, oldest first.
    pub fn parked(&self, id: &str) -> Result<Vec<Parked>> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT seq, ack_id, attempts, last_error, body FROM messages WHERE consumer = ?1 AND failed = 1 ORDER BY seq",
            )
            .map_err(sqlite("listing parked messages"))?;
        let rows = stmt
            .query_map([id], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, Option<String>>(3)?,
                    r.get::<_, String>(4)?,
                ))
            })
            .map_err(sqlite("listing parked messages"))?;
        rows.map(|row| {
            let (seq, ack_id, attempts, last_error, body) =
                row.map_err(sqlite("listing parked messages"))?;
            Ok(Parked {
                seq: seq as u64,
                ack_id,
                attempts: attempts as u32,
                last_error,
                message: serde_json::from_str(&body).unwrap_or(Json::Null),
            })
        })
        .collect()
    }

    /// Puts parked messages (all, or the one at `seq`) back in the queue with a fresh retry count;
    /// returns how many.
    pub fn retry(&mut self, id: &str, seq: Option<u64>) -> Result<u64> {
        self.conn
            .execute(
                "UPDATE messages SET failed = 0, attempts = 0, not_before = 0, visible_until = 0
                 WHERE consumer = ?1 AND failed = 1 AND (?2 IS NULL OR seq = ?2)",
                params![id, seq.map(|s| s as i64)],
            )
            .map(|n| n as u64)
            .map_err(sqlite("retrying"))
    }

    /// Drops parked messages (all, or the one at `seq`) without delivering them; returns how many.
    pub fn skip(&mut self, id: &str, seq: Option<u64>) -> Result<u64> {
        let tx = step(&mut self.conn).map_err(sqlite("skipping"))?;
        tx.execute(
            "INSERT OR IGNORE INTO settled (consumer, seq)
             SELECT consumer, seq FROM messages
             WHERE consumer = ?1 AND failed = 1 AND (?2 IS NULL OR seq = ?2)
               AND seq > (SELECT position FROM consumers WHERE id = ?1)",
            params![id, seq.map(|s| s as i64)],
        )
        .map_err(sqlite("skipping"))?;
        let skipped = tx
            .execute(
                "DELETE FROM messages WHERE consumer = ?1 AND failed = 1 AND (?2 IS NULL OR seq = ?2)",
                params![id, seq.map(|s| s as i64)],
            )
            .map_err(sqlite("skipping"))?;
        tx.commit().map_err(sqlite("skipping"))?;
        Ok(skipped as u64)
    }

    /// Which of the log positions in `(after, to]` were settled from the queue while the
    /// consumer's position was below them (delivered or skipped): a worker reading the log again
    /// passes over them.
    pub fn settled_between(
        &self,
        id: &str,
        after: u64,
        to: u64,
    ) -> Result<std::collections::HashSet<u64>> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT seq FROM settled WHERE consumer = ?1 AND seq > ?2 AND seq <= ?3",
            )
            .map_err(sqlite("reading settled positions"))?;
        let rows = stmt
            .query_map(params![id, after as i64, to as i64], |r| {
                r.get::<_, i64>(0).map(|s| s as u64)
            })
            .map_err(sqlite("reading settled positions"))?;
        rows.collect::<std::result::Result<_, _>>()
            .map_err(sqlite("reading settled positions"))
    }
}

/// One ledger step's transaction: a savepoint inside a [`Ledger::round`], else an IMMEDIATE
/// transaction of its own.
///
/// Why: a savepoint begun outside a transaction is a deferred transaction. A step that reads and
/// then writes (claiming, queueing) would then ask for the write lock holding an old snapshot, and
/// SQLite refuses that at once, without waiting for the busy timeout (SQLITE_BUSY), whenever another
/// connection wrote in between: the delivery worker, the pull API, the command line.
enum Step<'c> {
    Own(rusqlite::Transaction<'c>),
    Nested(rusqlite::Savepoint<'c>),
}

fn step(conn: &mut Connection) -> rusqlite::Result<Step<'_>> {
    if conn.is_autocommit() {
        conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map(Step::Own)
    } else {
        conn.savepoint().map(Step::Nested)
    }
}

impl std::ops::Deref for Step<'_> {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        match self {
            Step::Own(tx) => tx,
            Step::Nested(savepoint) => savepoint,
        }
    }
}

impl Step<'_> {
    fn commit(self) -> rusqlite::Result<()> {
        match self {
            Step::Own(tx) => tx.commit(),
            Step::Nested(savepoint) => savepoint.commit(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deliver::consumer::{Action, Destination, Pull, Start};
    use serde_json::json;

    struct Dir(PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    fn dir(name: &str) -> Dir {
        let d = std::env::temp_dir().join(format!("tidepool-ledger-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        Dir(d)
    }

    fn spec(mode: Mode) -> ConsumerSpec {
        ConsumerSpec {
            name: "app".into(),
            collections: vec!["public/t".into()],
            actions: vec![],
            filter: None,
            mode,
            start: Start::Beginning,
            group_by: vec![],
            destination: Destination::Pull(Pull::default()),
        }
    }

    fn attempt(n: i64) -> Attempt {
        Attempt {
            at_ms: n,
            messages: 1,
            status: Some(200),
            error: None,
            duration_ms: 1,
            test: false,
        }
    }

    fn msg(group: &str, n: i64) -> Message {
        Message {
            body: json!({"n": n}),
            action: Action::Update,
            group: group.into(),
        }
    }

    #[test]
    fn steps_beside_another_connections_writes_wait_instead_of_failing_busy() {
        let d = dir("busy");
        let mut l = Ledger::open(&d.0).unwrap();
        let c = l.add(spec(Mode::Changes), 0).unwrap();
        l.enqueue(&c.id, Mode::Changes, &[(1, msg("a", 1))], 1, 0)
            .unwrap();
        let id = c.id.clone();
        let path = d.0.clone();
        // Another connection writes as fast as it can (the delivery worker's rounds)…
        let writer = std::thread::spawn(move || {
            let mut other = Ledger::open(&path).unwrap();
            for n in 0..400 {
                other.round(|l| l.record_attempt(&id, &attempt(n))).unwrap();
            }
        });
        // …while this one claims (reads, then writes) outside any round, as the command line does.
        let mut failures = Vec::new();
        for n in 0..400 {
            if let Err(e) = l.claim(&c.id, 1000 + n, 1, 0, None) {
                failures.push(e.to_string());
            }
        }
        writer.join().unwrap();
        assert!(
            failures.is_empty(),
            "{} of 400 claims failed: {:?}",
            failures.len(),
            failures.first()
        );
    }

    #[test]
    fn one_per_group_in_flight_in_order_and_ack_ids_stay() {
        let d = dir("groups");
        let mut l = Ledger::open(&d.0).unwrap();
        let c = l.add(spec(Mode::Changes), 0).unwrap();
        assert!(l.add(spec(Mode::Changes), 0).is_err());
        l.enqueue(
            &c.id,
            Mode::Changes,
            &[(1, msg("a", 1)), (2, msg("a", 2)), (3, msg("b", 3))],
            3,
            0,
        )
        .unwrap();
        let first = l.claim(&c.id, 1000, 10, 500, None).unwrap();
        assert_eq!(first.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![1, 3]);
        // Nothing more while both groups are in flight; after the timeout the same ack ids come back.
        assert!(l.claim(&c.id, 1200, 10, 500, None).unwrap().is_empty());
        let again = l.claim(&c.id, 1600, 10, 500, None).unwrap();
        assert_eq!(again[0].ack_id, first[0].ack_id);
        l.ack(&c.id, &[first[0].ack_id.clone()]).unwrap();
        l.ack(&c.id, &[first[0].ack_id.clone()]).unwrap();
        l.nack(&c.id, &[first[1].ack_id.clone()]).unwrap();
        let next = l.claim(&c.id, 1700, 10, 500, Some(1)).unwrap();
        assert_eq!(next.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![2]);
        assert_eq!(l.get("app").unwrap().position, 3);
    }

    #[test]
    fn a_queued_message_has_the_ack_id_it_had_when_sent_from_the_log_and_a_removed_consumer_gets_no_rows(
    ) {
        let d = dir("ack-id");
        let mut l = Ledger::open(&d.0).unwrap();
        let c = l.add(spec(Mode::Changes), 0).unwrap();
        let keyed = Message {
            body: json!({"n": 1, "metadata": {"idempotency_key": "AAAB"}}),
            action: Action::Insert,
            group: "a".into(),
        };
        l.enqueue(&c.id, Mode::Changes, &[(1, keyed)], 1, 0)
            .unwrap();
        let claimed = l.claim(&c.id, 0, 10, 500, None).unwrap();
        assert_eq!(claimed[0].ack_id, ack_id_of(&c.id, "AAAB"));

        let body = r#"{"n":2}"#;
        let row = Row {
            seq: 2,
            group: "b",
            ack_id: "00000000-0000-4000-8000-000000000002",
            body,
        };
        l.remove("app").unwrap();
        l.hold(&c.id, &[row], None).unwrap();
        let left: i64 = l
            .conn
            .query_row("SELECT count(*) FROM messages", [], |r| r.get(0))
            .unwrap();
        assert_eq!(left, 0);
    }

    #[test]
    fn a_message_skipped_above_the_position_is_not_sent_or_queued_again_when_the_log_is_read_again()
    {
        let d = dir("skip-holds");
        let mut l = Ledger::open(&d.0).unwrap();
        let c = l.add(spec(Mode::Changes), 0).unwrap();
        // Seq 5 failed from the log with no retries left while the position stayed at 0 (an
        // earlier message of another group still in flight): parked.
        let row = Row {
            seq: 5,
            group: "a",
            ack_id: "00000000-0000-4000-8000-000000000005",
            body: r#"{"n":5}"#,
        };
        let failure = Failure {
            error: "HTTP 500",
            retry_at_ms: 0,
            max_retries: Some(0),
        };
        l.hold(&c.id, &[row], Some(failure)).unwrap();
        assert_eq!(l.parked(&c.id).unwrap().len(), 1);
        assert_eq!(l.skip(&c.id, Some(5)).unwrap(), 1);
        assert_eq!(
            l.settled_between(&c.id, 0, 10).unwrap(),
            std::collections::HashSet::from([5])
        );
        // Read again from the position (after a restart, or paused): 1..=5 come back; 5 stays out.
        let again: Vec<(u64, Message)> = (1..=5).map(|n| (n, msg("b", n as i64))).collect();
        l.enqueue(&c.id, Mode::Changes, &again, 5, 0).unwrap();
        assert_eq!(l.queued(&c.id).unwrap(), 4);
        assert!(l.settled_between(&c.id, 0, 10).unwrap().is_empty());
    }

    #[test]
    fn after_the_log_restarts_queued_messages_go_first_and_new_positions_do_not_collide() {
        let d = dir("rewind");
        let mut l = Ledger::open(&d.0).unwrap();
        let c = l.add(spec(Mode::Changes), 0).unwrap();
        l.enqueue(
            &c.id,
            Mode::Changes,
            &[(1, msg("a", 1)), (2, msg("a", 2))],
            2,
            0,
        )
        .unwrap();
        l.rewind_all().unwrap();
        assert_eq!(l.get("app").unwrap().position, 0);
        // The new log's positions 1 and 2 again: queued behind the old ones, none dropped.
        l.enqueue(
            &c.id,
            Mode::Changes,
            &[(1, msg("a", 3)), (2, msg("b", 4))],
            2,
            0,
        )
        .unwrap();
        assert_eq!(l.queued(&c.id).unwrap(), 4);
        let mut order = Vec::new();
        for now in 0..4 {
            let got = l.claim(&c.id, now, 1, 0, None).unwrap();
            let body: Json = serde_json::from_str(got[0].body.get()).unwrap();
            order.push(body["n"].as_i64().unwrap());
            l.ack(&c.id, &[got[0].ack_id.clone()]).unwrap();
        }
        assert_eq!(order, [1, 2, 3, 4]);
        l.notify(
            &c.id,
            "restarted",
            Notice {
                kind: ErrorKind::Diverged,
                message: "m".into(),
                at_ms: 1,
            },
        )
        .unwrap();
        assert_eq!(l.get("app").unwrap().notices.len(), 1);
        l.remove("app").unwrap();
        assert!(l.notices(&c.id).unwrap().is_empty());
    }

    #[test]
    fn rows_mode_coalesces_what_is_not_in_flight_and_failures_park() {
        let d = dir("rows");
        let mut l = Ledger::open(&d.0).unwrap();
        let c = l.add(spec(Mode::Rows), 0).unwrap();
        l.enqueue(
            &c.id,
            Mode::Rows,
            &[(1, msg("a", 1)), (2, msg("a", 2))],
            2,
            0,
        )
        .unwrap();
        let got = l.claim(&c.id, 10, 10, 1000, None).unwrap();
        assert_eq!(got.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![2]);
        // In flight: a newer change queues behind it instead of replacing it.
        l.enqueue(
            &c.id,
            Mode::Rows,
            &[(3, msg("a", 3)), (4, msg("a", 4))],
            4,
            20,
        )
        .unwrap();
        assert_eq!(l.queued(&c.id).unwrap(), 2);
        l.attempt_failed(&c.id, &[2], "HTTP 500", 0, Some(0))
            .unwrap();
        assert_eq!(
            l.parked(&c.id).unwrap()[0].last_error.as_deref(),
            Some("HTTP 500")
        );
        // A parked message blocks its group.
        assert!(l.claim(&c.id, 30, 10, 1000, None).unwrap().is_empty());
        assert_eq!(l.retry(&c.id, None).unwrap(), 1);
        assert_eq!(l.claim(&c.id, 40, 10, 1000, None).unwrap()[0].seq, 2);
        l.attempt_failed(&c.id, &[2], "HTTP 500", 0, Some(0))
            .unwrap();
        assert_eq!(l.skip(&c.id, Some(2)).unwrap(), 1);
        assert_eq!(l.claim(&c.id, 50, 10, 1000, None).unwrap()[0].seq, 4);
    }

    #[test]
    fn attempts_keep_the_last_hundred_and_samples_add_up_per_second() {
        let d = dir("attempts");
        let mut l = Ledger::open(&d.0).unwrap();
        let c = l.add(spec(Mode::Changes), 0).unwrap();
        for n in 0..(ATTEMPTS_KEPT + 5) {
            l.record_attempt(
                &c.id,
                &Attempt {
                    at_ms: n,
                    messages: 1,
                    status: Some(if n % 2 == 0 { 500 } else { 200 }),
                    error: (n % 2 == 0).then(|| "HTTP 500".to_string()),
                    duration_ms: 3,
                    test: false,
                },
            )
            .unwrap();
        }
        let attempts = l.attempts(&c.id).unwrap();
        assert_eq!(attempts.len() as i64, ATTEMPTS_KEPT);
        assert_eq!(attempts[0].at_ms, ATTEMPTS_KEPT + 4, "newest first");
        assert_eq!(attempts.last().unwrap().at_ms, 5, "the oldest pruned");
        l.record_delivered(&c.id, 10_100, &[10, 30]).unwrap();
        l.record_delivered(&c.id, 10_900, &[50]).unwrap();
        l.record_delivered(&c.id, 12_000, &[5]).unwrap();
        let samples = l.samples(&c.id, 0).unwrap();
        assert_eq!(
            samples
                .iter()
                .map(|s| (s.second, s.delivered, s.latency_avg_ms, s.latency_max_ms))
                .collect::<Vec<_>>(),
            [(10, 3, 30.0, 50), (12, 1, 5.0, 5)]
        );
        // An hour later the old seconds are pruned.
        l.record_delivered(&c.id, (12 + SAMPLES_KEPT_S) * 1000, &[1])
            .unwrap();
        assert_eq!(l.samples(&c.id, 0).unwrap().len(), 2);
        assert!(!l.paused(&c.id).unwrap());
        l.set_paused(&c.id, true).unwrap();
        assert!(l.get("app").unwrap().paused);
        l.set_paused(&c.id, false).unwrap();
        assert!(!l.get("app").unwrap().paused);
        l.remove("app").unwrap();
        assert!(l.attempts(&c.id).unwrap().is_empty());
        assert!(l.samples(&c.id, 0).unwrap().is_empty());
        // A request that finished after the consumer was removed leaves nothing behind.
        l.record_attempt(&c.id, &attempts[0]).unwrap();
        l.record_delivered(&c.id, 20_000, &[1]).unwrap();
        assert!(l.attempts(&c.id).unwrap().is_empty());
        assert!(l.samples(&c.id, 0).unwrap().is_empty());
    }
}
