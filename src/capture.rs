//! Capture: every insert, update, delete and truncate from a pgoutput slot, stored exactly once.
//!
//! The stream is decoded message by message ([`crate::pgoutput`]); each source transaction is written
//! into the store inside a store batch, and the batch is committed together with the new checkpoint
//! (the transaction's end LSN). Several source transactions share one batch while more are already
//! waiting, so a busy stream pays one fsync per batch, an idle one per transaction.
//!
//! Invariants (what is acknowledged to PostgreSQL and when):
//! - The LSN confirmed to the server is always the store's checkpoint, and it is confirmed only after
//!   the store commit that wrote it has returned. `confirmed_flush_lsn` never passes the checkpoint.
//! - Exactly once: streaming resumes at the checkpoint, and a transaction whose commit record lies
//!   before the checkpoint (one stored whose confirmation never reached the server) is skipped whole.
//! - An idle slot still advances: a keepalive's position is stored as the checkpoint and confirmed when
//!   no transaction is open and nothing is unstored, so WAL is not retained while captured tables are
//!   quiet.
//! - An unchanged TOASTed value is never turned into null: it comes from the old row (REPLICA IDENTITY
//!   FULL), else from the stored row, else the column is left out and named in `_meta.unknown`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{json, Value as Json};
use tokio_postgres::Client;

use crate::connection::{connect, ConnectionSpec};
use crate::error::{Error, ErrorKind, Result};
use crate::pgoutput::{Decoder, Lsn, Message, OldKind, Value};
use crate::replication::{Event, Stream, StreamOptions};
use crate::slot;
use crate::sql;
use crate::store::{CollectionSpec, Op, Store};
use crate::value::{builtin, Kind};

/// What one store commit made durable, reported to an [`Observer`].
#[derive(Debug, Clone)]
pub struct Flush {
    /// The new checkpoint.
    pub checkpoint: Lsn,
    /// Changes in the commit.
    pub changes: u64,
    /// Commit times of the source transactions in the commit (microseconds since 2000-01-01, the
    /// server's clock), for commit-to-stored latency.
    pub commit_times_micros: Vec<i64>,
    /// When the store commit returned (microseconds since 2000-01-01, this machine's clock).
    pub stored_at_micros: i64,
}

/// Called after every store commit, on the capture's task: keep it quick.
#[derive(Clone)]
pub struct Observer(pub std::sync::Arc<dyn Fn(&Flush) + Send + Sync>);

impl std::fmt::Debug for Observer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Observer")
    }
}

/// Microseconds since 2000-01-01 on this machine's clock, PostgreSQL's epoch.
pub fn now_postgres_micros() -> i64 {
    let since_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    since_unix.as_micros() as i64 - 946_684_800_000_000
}

/// What to capture and where to.
#[derive(Clone)]
pub struct CaptureOptions {
    /// The source database.
    pub spec: ConnectionSpec,
    /// The store folder.
    pub store_dir: PathBuf,
    /// Publication to decode with.
    pub publication: String,
    /// Slot to stream from.
    pub slot: String,
    /// Create the slot when it does not exist.
    pub create_slot: bool,
    /// Stop once every transaction committed at or before this LSN is stored.
    pub stop_at: Option<Lsn>,
    /// Told about every store commit (metrics, latency, the desktop's live view).
    pub observer: Option<Observer>,
    /// Tables (schema, table) to backfill before streaming, read in the new slot's snapshot.
    pub backfill: Vec<(String, String)>,
    /// Told how the backfill progresses.
    pub backfill_progress:
        Option<std::sync::Arc<dyn Fn(&crate::backfill::BackfillProgress) + Send + Sync>>,
}

impl std::fmt::Debug for CaptureOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaptureOptions")
            .field("spec", &self.spec)
            .field("store_dir", &self.store_dir)
            .field("publication", &self.publication)
            .field("slot", &self.slot)
            .field("backfill", &self.backfill)
            .finish_non_exhaustive()
    }
}

/// What a capture run did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CaptureReport {
    /// Source transactions stored.
    pub transactions: u64,
    /// Changes stored.
    pub changes: u64,
    /// Transactions skipped because they were stored before (resent after a crash).
    pub skipped_transactions: u64,
    /// Rows the backfill stored.
    pub backfilled_rows: u64,
    /// The checkpoint at the end.
    pub checkpoint: String,
}

/// Most changes one store batch may group across source transactions before it is committed.
const MAX_BATCH_CHANGES: u64 = 20_000;
/// Longest a batch may stay open while more transactions keep arriving.
const MAX_BATCH_AGE: Duration = Duration::from_millis(50);

pub(crate) struct ColumnInfo {
    pub(crate) name: String,
    /// `"name":`, escaped once per Relation message.
    pub(crate) member: String,
    pub(crate) type_oid: u32,
    pub(crate) kind: Kind,
}

impl ColumnInfo {
    pub(crate) fn new(name: String, type_oid: u32, kind: Kind) -> ColumnInfo {
        let mut member = String::new();
        crate::value::write_json_string(&name, &mut member);
        member.push(':');
        ColumnInfo {
            name,
            member,
            type_oid,
            kind,
        }
    }
}

pub(crate) struct Relation {
    pub(crate) collection: String,
    pub(crate) schema: String,
    pub(crate) table: String,
    pub(crate) columns: Vec<ColumnInfo>,
    pub(crate) key: Vec<usize>,
    pub(crate) recorded: bool,
}

impl Relation {
    /// The collection's description for the store.
    pub(crate) fn spec(&self) -> CollectionSpec {
        CollectionSpec {
            name: self.collection.clone(),
            schema: self.schema.clone(),
            table: self.table.clone(),
            key: self
                .key
                .iter()
                .map(|&i| self.columns[i].name.clone())
                .collect(),
            columns: Json::Array(
                self.columns
                    .iter()
                    .map(|c| json!({"name": c.name, "typeOid": c.type_oid}))
                    .collect(),
            ),
        }
    }
}

pub(crate) struct Transaction {
    pub(crate) final_lsn: Lsn,
    pub(crate) xid: u32,
    pub(crate) ts_ms: i64,
    pub(crate) commit_time_micros: i64,
    pub(crate) skip: bool,
    pub(crate) index: u64,
    /// Rows read by a backfill in the snapshot, not changes from the stream.
    pub(crate) snapshot: bool,
    /// `_meta.source` per relation, the same for every change of that table in this transaction.
    pub(crate) sources: Vec<(u32, String)>,
}

impl Transaction {
    fn source(&mut self, relid: u32, rel: &Relation) -> &str {
        let at = match self.sources.iter().position(|(id, _)| *id == relid) {
            Some(at) => at,
            None => {
                let mut source = String::with_capacity(96);
                source.push_str("{\"schema\":");
                crate::value::write_json_string(&rel.schema, &mut source);
                source.push_str(",\"table\":");
                crate::value::write_json_string(&rel.table, &mut source);
                source.push_str(&format!(
                    ",\"lsn\":\"{}\",\"txid\":{},\"ts_ms\":{}",
                    self.final_lsn, self.xid, self.ts_ms
                ));
                source.push_str(if self.snapshot {
                    ",\"snapshot\":true}"
                } else {
                    "}"
                });
                self.sources.push((relid, source));
                self.sources.len() - 1
            }
        };
        &self.sources[at].1
    }
}

struct Capture {
    options: CaptureOptions,
    store: Store,
    sql: Option<Client>,
    relations: HashMap<u32, Relation>,
    types: HashMap<u32, Kind>,
    checkpoint: Lsn,
    report: CaptureReport,
    /// Commit times of the transactions in the open batch, for the observer.
    batch_commit_times: Vec<i64>,
}

enum Outcome {
    Stopped,
    Ended,
}

/// Runs a capture until `stop_at` is reached (or forever). Connection losses are retried with backoff
/// from the checkpoint; other errors end the run.
pub async fn run(options: CaptureOptions) -> Result<CaptureReport> {
    let mut store = Store::open(&options.store_dir)?;
    let mut checkpoint = store.checkpoint()?;
    let sql = connect(&options.spec).await?;
    check_publication(&sql, &options.publication).await?;
    let mut backfilled_rows = 0;
    if !options.backfill.is_empty() {
        if checkpoint > Lsn(0) {
            return Err(Error::invalid_input(
                "--tables",
                format!("this store has captured up to {checkpoint} already; backfilling tables into a running capture is not supported yet"),
            ));
        }
        for (schema, table) in &options.backfill {
            check_published(&sql, &options.publication, schema, table).await?;
        }
        backfilled_rows = initial_backfill(&options, &sql, &mut store).await?;
        checkpoint = store.checkpoint()?;
    }
    slot::ensure(&sql, &options.slot, options.create_slot).await?;
    let mut capture = Capture {
        options,
        store,
        sql: Some(sql),
        relations: HashMap::new(),
        types: HashMap::new(),
        checkpoint,
        report: CaptureReport {
            backfilled_rows,
            ..CaptureReport::default()
        },
        batch_commit_times: Vec::new(),
    };
    let mut backoff = Duration::from_millis(250);
    loop {
        let started = Instant::now();
        let result = capture.stream().await;
        // Whatever happened, an open batch holds only unconfirmed work: drop it, resume from the checkpoint.
        capture.store.rollback()?;
        capture.batch_commit_times.clear();
        match result {
            Ok(Outcome::Stopped) => break,
            Ok(Outcome::Ended) => {
                tracing::warn!("the server ended the replication stream; reconnecting")
            }
            Err(e) if e.kind() == ErrorKind::Connection => {
                tracing::warn!(error = %e, "replication connection lost; reconnecting")
            }
            Err(e) => return Err(e),
        }
        if started.elapsed() > Duration::from_secs(30) {
            backoff = Duration::from_millis(250);
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(30));
        capture.sql = None;
        capture.relations.clear();
    }
    capture.report.checkpoint = capture.checkpoint.to_string();
    Ok(capture.report)
}

/// Creates the slot with an exported snapshot, reads the tables in it, and commits their rows with the
/// slot's consistent point as the checkpoint. A slot left by an interrupted backfill (recorded in the
/// store) is replaced; any other existing slot is refused, because its snapshot is gone.
async fn initial_backfill(
    options: &CaptureOptions,
    sql: &Client,
    store: &mut Store,
) -> Result<u64> {
    const OWNED: &str = "backfill_slot";
    if slot::find(sql, &options.slot).await?.is_some() {
        if store.meta(OWNED)?.as_deref() == Some(options.slot.as_str()) {
            tracing::warn!(slot = %options.slot, "an earlier backfill was interrupted; starting it over with a new slot");
            sql.execute("SELECT pg_drop_replication_slot($1)", &[&options.slot])
                .await
                .map_err(|e| {
                    Error::from_postgres(&e, "dropping the interrupted backfill's slot")
                })?;
        } else {
            return Err(Error::invalid_input(
                "slot",
                format!(
                    "{} exists already; a consistent backfill needs a new slot created with its snapshot: choose another slot \
                     name, drop this one (SELECT pg_drop_replication_slot({})), or capture only new changes (--no-backfill)",
                    sql::ident(&options.slot),
                    sql::literal(&options.slot)
                ),
            ));
        }
    }
    // Recorded before the slot exists, so a crash in between is recognised next time.
    store.set_meta(OWNED, &options.slot)?;
    store.commit(Lsn(0))?;
    let session = crate::replication::SnapshotSession::create(&options.spec, &options.slot).await?;
    let mut progress = |p: &crate::backfill::BackfillProgress| {
        if let Some(callback) = &options.backfill_progress {
            callback(p);
        }
    };
    let result = crate::backfill::run(
        &options.spec,
        store,
        &options.backfill,
        &session.snapshot,
        session.consistent_point,
        &mut progress,
    )
    .await;
    let rows = match result {
        Ok(rows) => rows,
        Err(e) => {
            store.rollback()?;
            session.close().await;
            return Err(e);
        }
    };
    store.commit(session.consistent_point)?;
    let consistent_point = session.consistent_point;
    session.close().await;
    tracing::info!(rows, %consistent_point, "backfill stored");
    Ok(rows)
}

async fn check_published(sql: &Client, publication: &str, schema: &str, table: &str) -> Result<()> {
    let published = sql
        .query_opt(
            "SELECT 1 FROM pg_publication_tables WHERE pubname = $1 AND schemaname = $2 AND tablename = $3
             UNION ALL
             SELECT 1 FROM pg_publication p JOIN pg_class c ON c.relname = $3 JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = $2
              WHERE p.pubname = $1 AND p.puballtables",
            &[&publication, &schema, &table],
        )
        .await
        .map_err(|e| Error::from_postgres(&e, "reading pg_publication_tables"))?
        .is_some();
    if !published {
        return Err(Error::invalid_input(
            "--tables",
            format!(
                "{}.{} is not in publication {}: its changes would not be captured after the backfill; add it with ALTER PUBLICATION {} ADD TABLE {}.{}",
                sql::ident(schema), sql::ident(table), sql::ident(publication), sql::ident(publication), sql::ident(schema), sql::ident(table)
            ),
        ));
    }
    Ok(())
}

async fn check_publication(sql: &Client, publication: &str) -> Result<()> {
    let exists = sql
        .query_opt(
            "SELECT 1 FROM pg_publication WHERE pubname = $1",
            &[&publication],
        )
        .await
        .map_err(|e| Error::from_postgres(&e, "reading pg_publication"))?
        .is_some();
    if !exists {
        return Err(Error::new(
            ErrorKind::NotFound,
            format!(
                "publication {} does not exist; create it with CREATE PUBLICATION {} FOR TABLE …",
                sql::ident(publication),
                sql::ident(publication)
            ),
        ));
    }
    Ok(())
}

impl Capture {
    async fn stream(&mut self) -> Result<Outcome> {
        if self.reached_stop() {
            return Ok(Outcome::Stopped);
        }
        let mut stream = Stream::start(StreamOptions {
            spec: &self.options.spec,
            slot: &self.options.slot,
            publication: &self.options.publication,
            start: self.checkpoint,
        })
        .await?;
        let mut decoder = Decoder::new(1);
        let mut tx: Option<Transaction> = None;
        let mut pending: Option<Event> = None;
        let mut batch_started = Instant::now();
        let mut batch_end = self.checkpoint;
        loop {
            let event = match pending.take() {
                Some(event) => event,
                None => match stream.next().await? {
                    Some(event) => event,
                    None => return Ok(Outcome::Ended),
                },
            };
            match event {
                Event::Begin {
                    final_lsn,
                    commit_time_micros,
                    xid,
                } => {
                    let skip = final_lsn < self.checkpoint;
                    if !skip && !self.store.in_batch() {
                        self.store.begin()?;
                        batch_started = Instant::now();
                    }
                    tx = Some(Transaction {
                        final_lsn,
                        xid,
                        ts_ms: postgres_time_to_unix_ms(commit_time_micros),
                        commit_time_micros,
                        skip,
                        index: 0,
                        snapshot: false,
                        sources: Vec::new(),
                    });
                }
                Event::Data(bytes) => {
                    let message = decoder
                        .decode(&bytes)
                        .map_err(|e| Error::internal(format!("decoding pgoutput: {e}")))?;
                    self.message(message, tx.as_mut()).await?;
                }
                Event::Commit { end_lsn, .. } => {
                    let Some(done) = tx.take() else {
                        return Err(Error::internal("a Commit arrived without a Begin"));
                    };
                    if done.skip {
                        self.report.skipped_transactions += 1;
                        continue;
                    }
                    self.batch_commit_times.push(done.commit_time_micros);
                    batch_end = end_lsn;
                    // Keep the batch open while more is already waiting, within bounds.
                    if self.store.batch_len() < MAX_BATCH_CHANGES
                        && batch_started.elapsed() < MAX_BATCH_AGE
                    {
                        if let Some(next) = stream.next_ready().await? {
                            pending = Some(next);
                            continue;
                        }
                    }
                    self.flush(&stream, batch_end)?;
                    if self.reached_stop() {
                        stream.stop().await;
                        return Ok(Outcome::Stopped);
                    }
                }
                Event::KeepAlive { wal_end } => {
                    if tx.is_none() {
                        if self.store.in_batch() {
                            self.flush(&stream, batch_end)?;
                        }
                        // Nothing is open or unstored: the server's position is safe to store and confirm,
                        // which lets an idle slot release WAL.
                        if wal_end > self.checkpoint {
                            self.flush(&stream, wal_end)?;
                        }
                        if self.reached_stop() {
                            stream.stop().await;
                            return Ok(Outcome::Stopped);
                        }
                    }
                }
                Event::Message { .. } => {}
            }
        }
    }

    fn reached_stop(&self) -> bool {
        self.options
            .stop_at
            .is_some_and(|stop| self.checkpoint >= stop)
    }

    /// Commits the open batch (or just the checkpoint) and only then confirms it to the server.
    fn flush(&mut self, stream: &Stream, checkpoint: Lsn) -> Result<()> {
        let changes = self.store.batch_len();
        self.store.commit(checkpoint)?;
        stream.confirm(checkpoint);
        self.checkpoint = checkpoint;
        let commit_times_micros = std::mem::take(&mut self.batch_commit_times);
        // Counted only once stored: a batch lost with its connection is not in the report.
        self.report.transactions += commit_times_micros.len() as u64;
        self.report.changes += changes;
        if let Some(observer) = &self.options.observer {
            (observer.0)(&Flush {
                checkpoint,
                changes,
                commit_times_micros,
                stored_at_micros: now_postgres_micros(),
            });
        }
        if changes > 0 {
            tracing::debug!(%checkpoint, changes, "stored");
        }
        Ok(())
    }

    async fn message(&mut self, message: Message, tx: Option<&mut Transaction>) -> Result<()> {
        match message {
            Message::Relation {
                relid,
                namespace,
                name,
                columns,
                ..
            } => {
                let mut infos = Vec::with_capacity(columns.len());
                for column in &columns {
                    let kind = self.kind_of(column.type_oid).await?;
                    infos.push(ColumnInfo::new(column.name.clone(), column.type_oid, kind));
                }
                let key = columns
                    .iter()
                    .enumerate()
                    .filter(|(_, c)| c.key)
                    .map(|(i, _)| i)
                    .collect();
                let collection = format!("{namespace}/{name}");
                self.relations.insert(
                    relid,
                    Relation {
                        collection,
                        schema: namespace,
                        table: name,
                        columns: infos,
                        key,
                        recorded: false,
                    },
                );
                Ok(())
            }
            Message::Type { oid, .. } => {
                // A type may have changed (ALTER TYPE … ADD VALUE keeps enums text; a new domain needs a lookup).
                self.types.remove(&oid);
                Ok(())
            }
            Message::Insert { relid, new, .. } => {
                let Some(tx) = tx.filter(|t| !t.skip) else {
                    return Ok(());
                };
                self.record_relation(relid)?;
                let rel = self.relation(relid)?;
                let row = write_row(rel, &new, Columns::All, None, None, tx)?;
                let doc = document(
                    &row.members,
                    &meta(Op::Create, relid, rel, tx, None, &row.unknown),
                );
                let collection = rel.collection.clone();
                self.store
                    .apply(&collection, tx.final_lsn, Op::Create, &row.key, None, doc)?;
                tx.index += 1;
                Ok(())
            }
            Message::Update {
                relid, old, new, ..
            } => {
                let Some(tx) = tx.filter(|t| !t.skip) else {
                    return Ok(());
                };
                self.record_relation(relid)?;
                // A field borrow, not `self.relation()`: the store is written below while `rel` is alive.
                let rel = self.relations.get(&relid).ok_or_else(|| {
                    Error::internal(format!("pgoutput: unknown relation {relid}"))
                })?;
                let old_row = match &old {
                    Some((kind, values)) => {
                        let columns = if *kind == OldKind::Full {
                            Columns::All
                        } else {
                            Columns::Key
                        };
                        Some(write_row(rel, values, columns, None, None, tx)?)
                    }
                    None => None,
                };
                // The stored row, for unchanged TOAST values the WAL did not carry.
                let stored = if new.contains(&Value::UnchangedToast) {
                    let lookup_key = match &old_row {
                        Some(old_row) => old_row.key.clone(),
                        None => write_row(rel, &new, Columns::Key, None, None, tx)?.key,
                    };
                    self.store.row(&rel.collection, &lookup_key)?
                } else {
                    None
                };
                let old_values = old.as_ref().map(|(_, values)| values.as_slice());
                let row = write_row(rel, &new, Columns::All, old_values, stored.as_ref(), tx)?;
                let before = old_row.as_ref().map(|o| format!("{{{}}}", o.members));
                let doc = document(
                    &row.members,
                    &meta(Op::Update, relid, rel, tx, before.as_deref(), &row.unknown),
                );
                let collection = rel.collection.clone();
                let old_key = old_row.as_ref().map(|o| o.key.as_str());
                self.store.apply(
                    &collection,
                    tx.final_lsn,
                    Op::Update,
                    &row.key,
                    old_key,
                    doc,
                )?;
                tx.index += 1;
                Ok(())
            }
            Message::Delete {
                relid,
                old_kind,
                old,
                ..
            } => {
                let Some(tx) = tx.filter(|t| !t.skip) else {
                    return Ok(());
                };
                self.record_relation(relid)?;
                let rel = self.relation(relid)?;
                let columns = if old_kind == OldKind::Full {
                    Columns::All
                } else {
                    Columns::Key
                };
                let row = write_row(rel, &old, columns, None, None, tx)?;
                let doc = document(&row.members, &meta(Op::Delete, relid, rel, tx, None, &[]));
                let collection = rel.collection.clone();
                self.store
                    .apply(&collection, tx.final_lsn, Op::Delete, &row.key, None, doc)?;
                tx.index += 1;
                Ok(())
            }
            Message::Truncate {
                options, relids, ..
            } => {
                let Some(tx) = tx.filter(|t| !t.skip) else {
                    return Ok(());
                };
                for relid in relids {
                    self.record_relation(relid)?;
                    let rel = self.relation(relid)?;
                    let mut m = meta(Op::Truncate, relid, rel, tx, None, &[]);
                    m.pop();
                    m.push_str(&format!(
                        ",\"truncate\":{{\"cascade\":{},\"restartIdentity\":{}}}}}",
                        options & 1 != 0,
                        options & 2 != 0
                    ));
                    let doc = document("", &m);
                    let collection = rel.collection.clone();
                    self.store
                        .apply(&collection, tx.final_lsn, Op::Truncate, "", None, doc)?;
                    tx.index += 1;
                }
                Ok(())
            }
            // Begin and Commit arrive as events; the rest needs no action with protocol version 1.
            _ => Ok(()),
        }
    }

    fn relation(&self, relid: u32) -> Result<&Relation> {
        self.relations.get(&relid).ok_or_else(|| {
            Error::internal(format!(
                "pgoutput: a change for relation {relid} arrived before its Relation message"
            ))
        })
    }

    /// Records the relation's collection (its key and columns) in the open batch, once per Relation.
    fn record_relation(&mut self, relid: u32) -> Result<()> {
        let rel = self
            .relations
            .get_mut(&relid)
            .ok_or_else(|| Error::internal(format!("pgoutput: unknown relation {relid}")))?;
        if rel.recorded {
            return Ok(());
        }
        self.store.put_collection(&rel.spec())?;
        rel.recorded = true;
        Ok(())
    }

    /// How a type's values map to JSON: built-ins directly, others from the catalog (enums are text,
    /// domains their base type, arrays of their element type).
    async fn kind_of(&mut self, oid: u32) -> Result<Kind> {
        if let Some(kind) = builtin(oid) {
            return Ok(kind);
        }
        if let Some(kind) = self.types.get(&oid) {
            return Ok(kind.clone());
        }
        if self.sql.is_none() {
            self.sql = Some(connect(&self.options.spec).await?);
        }
        let kind =
            crate::discovery::kind_of(self.sql.as_ref().expect("connected above"), oid).await?;
        self.types.insert(oid, kind.clone());
        Ok(kind)
    }
}

/// PostgreSQL timestamps count microseconds from 2000-01-01.
pub(crate) fn postgres_time_to_unix_ms(micros: i64) -> i64 {
    micros.div_euclid(1000).saturating_add(946_684_800_000)
}

/// Which columns of a tuple go into a document.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Columns {
    /// Every column.
    All,
    /// Only the key's (a delete's or an old key's 'K' tuple).
    Key,
}

/// A row written as JSON object members (`"a":1,"b":"x"`), with its canonical key.
pub(crate) struct RowJson {
    pub(crate) members: String,
    pub(crate) key: String,
    pub(crate) unknown: Vec<String>,
}

/// Writes a tuple's columns as JSON members. Unchanged TOAST values come from `old` (REPLICA IDENTITY
/// FULL) or `stored`; those found in neither are left out and returned by name. The key is a JSON
/// array of the key columns' values; a table without a key is keyed by the change's position in the
/// stream, so every change stays its own row.
pub(crate) fn write_row(
    rel: &Relation,
    values: &[Value],
    columns: Columns,
    old: Option<&[Value]>,
    stored: Option<&Json>,
    tx: &Transaction,
) -> Result<RowJson> {
    let mut members = String::with_capacity(64 + values.len() * 16);
    let mut unknown = Vec::new();
    let mut key_spans: Vec<(usize, std::ops::Range<usize>)> = Vec::with_capacity(rel.key.len());
    for (i, column) in rel.columns.iter().enumerate() {
        let is_key = rel.key.contains(&i);
        if columns == Columns::Key && !is_key {
            continue;
        }
        let value = values.get(i).unwrap_or(&Value::Null);
        let filled;
        let value = match value {
            Value::UnchangedToast => match (
                old.and_then(|o| o.get(i)),
                stored.and_then(|s| s.get(&column.name)),
            ) {
                (Some(text @ Value::Text(_)), _) => text,
                (_, Some(previous)) => {
                    filled = previous.to_string();
                    push_member(&mut members, column);
                    let start = members.len();
                    members.push_str(&filled);
                    if is_key {
                        key_spans.push((i, start..members.len()));
                    }
                    continue;
                }
                _ => {
                    unknown.push(column.name.clone());
                    continue;
                }
            },
            other => other,
        };
        push_member(&mut members, column);
        let start = members.len();
        match value {
            Value::Null | Value::UnchangedToast => members.push_str("null"),
            Value::Text(bytes) => {
                let text = std::str::from_utf8(bytes).map_err(|_| {
                    Error::internal(format!(
                        "{}.{}: a value is not UTF-8 text",
                        rel.collection, column.name
                    ))
                })?;
                column.kind.write_json(text, &mut members).map_err(|e| {
                    Error::internal(format!("{} column {}: {e}", rel.collection, column.name))
                })?;
            }
            Value::Binary(_) => {
                return Err(Error::internal(
                    "pgoutput sent a binary value although text was requested",
                ))
            }
        }
        if is_key {
            key_spans.push((i, start..members.len()));
        }
    }
    let key = if rel.key.is_empty() {
        json!([tx.final_lsn.to_string(), tx.index]).to_string()
    } else {
        let mut key = String::from("[");
        for (n, &k) in rel.key.iter().enumerate() {
            if n > 0 {
                key.push(',');
            }
            match key_spans.iter().find(|(i, _)| *i == k) {
                Some((_, span)) => key.push_str(&members[span.clone()]),
                None => key.push_str("null"),
            }
        }
        key.push(']');
        key
    };
    Ok(RowJson {
        members,
        key,
        unknown,
    })
}

fn push_member(members: &mut String, column: &ColumnInfo) {
    if !members.is_empty() {
        members.push(',');
    }
    members.push_str(&column.member);
}

/// The `_meta` object: op, source, and `before` / `unknown` when there are any.
pub(crate) fn meta(
    op: Op,
    relid: u32,
    rel: &Relation,
    tx: &mut Transaction,
    before: Option<&str>,
    unknown: &[String],
) -> String {
    let mut meta = String::with_capacity(160);
    meta.push_str("{\"op\":\"");
    meta.push_str(op.code());
    meta.push_str("\",\"source\":");
    meta.push_str(tx.source(relid, rel));
    if let Some(before) = before {
        meta.push_str(",\"before\":");
        meta.push_str(before);
    }
    if !unknown.is_empty() {
        meta.push_str(",\"unknown\":");
        meta.push_str(&json!(unknown).to_string());
    }
    meta.push('}');
    meta
}

pub(crate) fn document(members: &str, meta: &str) -> String {
    let mut doc = String::with_capacity(members.len() + meta.len() + 12);
    doc.push('{');
    doc.push_str(members);
    if !members.is_empty() {
        doc.push(',');
    }
    doc.push_str("\"_meta\":");
    doc.push_str(meta);
    doc.push('}');
    doc
}
