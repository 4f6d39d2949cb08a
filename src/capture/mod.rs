//! Capture: every insert, update, delete and truncate from a pgoutput slot, stored exactly once.
//!
//! The stream is decoded message by message ([`crate::source::pgoutput`]); each source transaction is written
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
//! - A table is known by its OID (pgoutput's relation id), never by its name alone: a renamed table
//!   keeps its collection; a table dropped and created again, or a key column whose values now map to
//!   other JSON, has its collection read again (the stream stops before storing anything of that
//!   transaction), so a collection never keeps the old table's rows or keys as current rows. Each is
//!   logged and listed in [`CaptureReport::notices`].
//! - A bound table that leaves the publication is never a silent gap: pgoutput just stops sending its
//!   changes, so the capture checks membership at start and every few seconds (a table dropped and
//!   added back in between shows as a new `pg_publication_rel` row), records the table as having left
//!   (in the store, at the checkpoint), stops with `Diverged` while a table bound by a definition is
//!   out (a notice without one), and reads its collection again once it is back in.
//! - A backfill read alongside the stream is brought in only once the stream has stored everything
//!   committed before its snapshot.
//! - An unchanged TOASTed value is never turned into null: it comes from the old row (REPLICA IDENTITY
//!   FULL), else from the stored row, else the column is left out and named in `_meta.unknown`.
//! - A large value ([`crate::document::large_value`]) is stored once and referred to: taking an unchanged one
//!   from the stored row copies its reference, never the value.

use rustc_hash::FxHashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio_postgres::Client;

use crate::binding::{default_collection_name, Binding, Definition, Mode};
use crate::document::large_value::{Document, ValueRef};
use crate::document::source_meta::SourceTable;
use crate::document::value::{builtin, Kind};
use crate::document::{
    document, document_of, document_with_meta, meta, meta_at, now_postgres_micros,
    postgres_time_to_unix_ms, write_meta_cut, write_row, ColumnInfo, Columns, Relation, StoredRow,
    Transaction,
};
use crate::error::{Error, ErrorKind, Result};
use crate::source::connection::{connect, ConnectionSpec};
use crate::source::continuity;
use crate::source::pgoutput::{Decoder, Lsn, Message, OldKind, Value};
use crate::source::replication::{Event, Stream, StreamOptions};
use crate::source::slot;
use crate::source::sql;
use crate::store::{Op, Store};

pub mod backfill;
mod publish;
mod reconcile;

pub use publish::{plan_publish, publish, publish_with, PublishPlan};
use reconcile::{
    check_publication, check_published, initial_backfill, live_state, load_states, qualified,
    BindingState, Identity, Rebackfill, RunningBackfill, OWNED, STATE_KEY,
};

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

/// Called after every store commit, on the capture's task: keep it quick. Also called once each time
/// the stream (re)starts, with no changes and the checkpoint it resumes from, so a watcher knows the
/// capture is streaming before the first change arrives.
#[derive(Clone)]
pub struct Observer(pub std::sync::Arc<dyn Fn(&Flush) + Send + Sync>);

impl std::fmt::Debug for Observer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Observer")
    }
}

/// Told how a backfill progresses (from the capture's task or a backfill's).
pub type ProgressCallback =
    std::sync::Arc<dyn Fn(&crate::capture::backfill::BackfillProgress) + Send + Sync>;

/// A finished backfill's staging folder and outcome.
type BackfillDone = (PathBuf, Result<u64>);

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
    /// The tables to capture and their collections. Empty: the definition saved in the store, or with
    /// none, every table in the publication under its default name. Given, it becomes the store's
    /// definition; on a new store its `Full` bindings are backfilled in the new slot's snapshot, on a
    /// running one new bindings are backfilled alongside the stream.
    pub bindings: Vec<Binding>,
    /// Told how the backfill progresses.
    pub backfill_progress: Option<ProgressCallback>,
}

impl std::fmt::Debug for CaptureOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaptureOptions")
            .field("spec", &self.spec)
            .field("store_dir", &self.store_dir)
            .field("publication", &self.publication)
            .field("slot", &self.slot)
            .field("bindings", &self.bindings)
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
    /// What the capture did about changes to the source's tables (a table renamed, dropped and
    /// created again, a key column's type changed), one sentence each, as also logged.
    pub notices: Vec<String>,
}

/// Most changes one store batch may group across source transactions before it is committed.
const MAX_BATCH_CHANGES: u64 = 20_000;

/// How often a running capture looks for an edited definition.
const DEFINITION_POLL: Duration = Duration::from_secs(1);

/// How often a running capture checks that every bound table is still in its publication: pgoutput
/// says nothing when one leaves, it just stops sending its changes.
const PUBLICATION_POLL: Duration = Duration::from_secs(5);

/// Longest a batch may stay open while more transactions keep arriving.
const MAX_BATCH_AGE: Duration = Duration::from_millis(50);

/// Flushes closer together than this mean transactions are arriving faster than each can be made
/// durable on its own: the capture then waits up to [`GROUP_COMMIT_WAIT`] for the next one before
/// committing, so one fsync covers several. Slower streams (the latency benchmark's 1,000
/// transactions/s among them) are committed at once, as before.
const GROUP_COMMIT_RATE: Duration = Duration::from_micros(500);

/// Longest a commit waits for the next transaction while transactions arrive quickly. Tokio's
/// timers count whole milliseconds; the wait ends as soon as an event arrives, so it costs latency
/// only at the end of a burst.
const GROUP_COMMIT_WAIT: Duration = Duration::from_millis(1);

/// A table the stream described, as the capture holds it: its description for documents, whether
/// its collection is recorded in the open batch, and what happens to its changes.
struct Bound {
    rel: Relation,
    recorded: bool,
    handling: Handling,
}

/// What the capture does with a table's changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Handling {
    /// Stored in its collection.
    Store,
    /// Not bound: dropped.
    Ignore,
    /// Its backfill is being read in a snapshot taken at `point`. Changes committed from `point` on
    /// are held until the backfill's rows are in; earlier ones are in the snapshot, and are stored
    /// only if the collection was live before (a re-backfill keeps its log complete).
    Hold { point: Lsn, was_live: bool },
}

/// Where a change goes.
enum Disposition {
    Store,
    Hold,
    Ignore,
}

impl Handling {
    fn disposition(self, final_lsn: Lsn) -> Disposition {
        match self {
            Handling::Store => Disposition::Store,
            Handling::Ignore => Disposition::Ignore,
            Handling::Hold { point, .. } if final_lsn >= point => Disposition::Hold,
            Handling::Hold { was_live: true, .. } => Disposition::Store,
            Handling::Hold { .. } => Disposition::Ignore,
        }
    }
}

struct Capture {
    options: CaptureOptions,
    store: Store,
    sql: Option<Client>,
    relations: FxHashMap<u32, Bound>,
    types: FxHashMap<u32, Kind>,
    checkpoint: Lsn,
    report: CaptureReport,
    /// Commit times of the transactions in the open batch, for the observer.
    batch_commit_times: Vec<i64>,
    /// The definition in force (None: every published table under its default name) and its text as
    /// saved, to notice edits.
    definition: Option<Definition>,
    definition_text: Option<String>,
    /// Per bound table, what the capture has done about it.
    states: Vec<BindingState>,
    backfills: Vec<RunningBackfill>,
    /// Backfills read and waiting until the stream has passed their snapshot's point.
    finished: Vec<BackfillDone>,
    /// Tables found to need a re-backfill; the stream stops at once to start them.
    rebackfill: Vec<Rebackfill>,
    /// The publications the current stream decodes with (empty before the first stream starts).
    streamed: Vec<String>,
    /// When to prune the log next ([`crate::store::retention`]).
    next_prune: Instant,
    /// When to check next that the bound tables are still published ([`Capture::check_membership`]).
    next_publication_check: Instant,
    backfill_done: (
        tokio::sync::mpsc::UnboundedSender<BackfillDone>,
        tokio::sync::mpsc::UnboundedReceiver<BackfillDone>,
    ),
    /// The runtime [`run`] was called on: backfills read alongside the stream run there, so they
    /// neither slow the stream's thread nor wait for it.
    side: tokio::runtime::Handle,
}

impl Drop for Capture {
    /// A capture that ends (or is cancelled) takes its running backfills with it; their temporary
    /// slots go with their sessions, and the next run starts them over.
    fn drop(&mut self) {
        for backfill in &self.backfills {
            backfill.task.abort();
        }
    }
}

enum Outcome {
    Stopped,
    Ended,
    /// Stopped (nothing of the current transaction stored) to start [`Capture::rebackfill`].
    Rebackfill,
}

/// The pause before the next attempt after a lost connection: 250 ms, doubling with each failure in a
/// row, at most 30 s. One per retry loop, started afresh once an attempt worked.
struct ReconnectPause(Duration);

impl ReconnectPause {
    const FIRST: Duration = Duration::from_millis(250);
    const LONGEST: Duration = Duration::from_secs(30);

    fn new() -> ReconnectPause {
        ReconnectPause(Self::FIRST)
    }

    /// Sleeps for the current pause, and doubles the next one.
    async fn wait(&mut self) {
        tokio::time::sleep(self.0).await;
        self.0 = (self.0 * 2).min(Self::LONGEST);
    }
}

/// Runs a capture until `stop_at` is reached (or forever). Connection losses are retried with backoff
/// from the checkpoint; other errors end the run.
///
/// The capture runs on a thread of its own ([`on_own_thread`]); dropping the returned future stops it
/// there and returns once it has let go of its store and its connections.
pub async fn run(options: CaptureOptions) -> Result<CaptureReport> {
    let store_dir = options.store_dir.clone();
    on_own_thread(options).await.map_err(|e| {
        if e.kind() == ErrorKind::Storage {
            e.context(format!("the store at {}", store_dir.display()))
        } else {
            e
        }
    })
}

/// Runs [`run_in_store`] on a new thread with a single-threaded runtime, with the caller's runtime
/// kept for the backfills read alongside the stream ([`Capture::side`]).
///
/// Why: the replication transport, its relay and the capture hand every event on to each other. On
/// a multi-threaded runtime each hand-over could wake another thread, and on two cores those
/// threads fought the walsender for the second one; on one thread a hand-over is a task switch.
/// CPU per change fell by about a seventh (docs/benchmarks.md, "Capture CPU (issue 21)").
///
/// Invariant: the returned future, finished or dropped, outlives the capture: dropping it cancels
/// the capture on its thread and joins that thread, so a caller that aborted the run's task and
/// awaited it (to drop the slot, or to exit) knows the store and the connections are let go.
async fn on_own_thread(options: CaptureOptions) -> Result<CaptureReport> {
    let side = tokio::runtime::Handle::current();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::internal(format!("capture: starting its runtime: {e}")))?;
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let (cancel, cancelled) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("tidepool-capture".into())
        .spawn(move || {
            let result = runtime.block_on(async move {
                tokio::select! {
                    biased;
                    // The sender is dropped when the caller's future is.
                    _ = cancelled => None,
                    result = run_in_store(options, side) => Some(result),
                }
            });
            // Its tasks (the transport, a backfill's connection) are dropped, not waited for.
            runtime.shutdown_background();
            if let Some(result) = result {
                let _ = done_tx.send(result);
            }
        })
        .map_err(|e| Error::internal(format!("capture: starting its thread: {e}")))?;
    let _thread = CaptureThread {
        cancel: Some(cancel),
        thread: Some(thread),
    };
    done_rx.await.unwrap_or_else(|_| {
        Err(Error::internal(
            "capture: its thread ended without a result",
        ))
    })
}

/// The capture's thread, cancelled and joined when dropped (see [`on_own_thread`]).
struct CaptureThread {
    cancel: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for CaptureThread {
    fn drop(&mut self) {
        drop(self.cancel.take());
        if let Some(thread) = self.thread.take() {
            // Brief: dropping the capture rolls back an open batch and closes its connections.
            let _ = thread.join();
        }
    }
}

async fn run_in_store(
    options: CaptureOptions,
    side: tokio::runtime::Handle,
) -> Result<CaptureReport> {
    slot::validate_name(&options.slot)?;
    // Held until the capture returns (or its task is dropped): one writer numbers the log.
    let _writer = crate::store::lock::StoreLock::acquire_soon(&options.store_dir).await?;
    let mut store = Store::open(&options.store_dir)?;
    reconcile::discard_interrupted_staging(&options.store_dir);
    let mut sql = connect(&options.spec).await?;
    check_publication(&sql, &options.publication).await?;
    let mut definition_text = Definition::saved_text(&store)?;
    let mut definition = definition_text
        .as_deref()
        .map(Definition::parse)
        .transpose()?;
    if !options.bindings.is_empty() {
        let given = Definition {
            profile: definition.and_then(|d| d.profile),
            publication: options.publication.clone(),
            slot: options.slot.clone(),
            bindings: options.bindings.clone(),
        };
        definition_text = Some(given.save(&mut store)?);
        definition = Some(given);
    }
    let mut states = load_states(&store)?;
    let mut backfilled_rows = 0;
    if let Some(definition) = &definition {
        if store.checkpoint()? == Lsn(0) && states.is_empty() {
            let full: Vec<Binding> = definition
                .bindings
                .iter()
                .filter(|b| b.mode == Mode::Full)
                .cloned()
                .collect();
            let publications =
                crate::source::publication::streamed(&sql, &options.publication).await?;
            for binding in &full {
                check_published(&sql, &publications, &binding.schema, &binding.table).await?;
            }
            // A slot the person created (Sequin's guide has them create it first) has no snapshot left
            // to read the tables in: they are read in one of a temporary slot, taken at a transaction
            // boundary, alongside the stream from this slot, as a table bound later is. The states
            // stay empty, so the start-up's reconcile starts that backfill.
            let ours = store.meta(OWNED)?.as_deref() == Some(options.slot.as_str());
            if !full.is_empty() && !ours && slot::find(&sql, &options.slot).await?.is_some() {
                tracing::info!(slot = %options.slot, "the slot exists already; the tables are read in a snapshot of their own, alongside the stream from it");
            } else {
                states = definition.bindings.iter().map(live_state).collect();
                let state_text = serde_json::to_string(&states).map_err(Error::internal)?;
                if full.is_empty() {
                    store.set_meta(STATE_KEY, &state_text)?;
                    store.commit(Lsn(0))?;
                } else {
                    // A lost connection (a restart or failover of the server, a network cut) takes the
                    // snapshot with it: the backfill starts over with a new slot and snapshot, as a
                    // stream reconnects, instead of ending the capture.
                    let mut pause = ReconnectPause::new();
                    backfilled_rows = loop {
                        match initial_backfill(&options, &full, &state_text, &sql, &mut store).await
                        {
                            Ok(rows) => break rows,
                            Err(e) if e.kind() == ErrorKind::Connection => {
                                tracing::warn!(error = %e, "connection lost during the backfill; starting it over");
                                sql = loop {
                                    pause.wait().await;
                                    match connect(&options.spec).await {
                                        Ok(client) => break client,
                                        Err(e) if e.kind() == ErrorKind::Connection => {
                                            tracing::warn!(error = %e, "reconnecting for the backfill")
                                        }
                                        Err(e) => return Err(e),
                                    }
                                };
                            }
                            Err(e) => return Err(e),
                        }
                    };
                }
            }
        }
    }
    let checkpoint = store.checkpoint()?;
    let mut capture = Capture {
        options,
        store,
        sql: Some(sql),
        relations: FxHashMap::default(),
        types: FxHashMap::default(),
        checkpoint,
        report: CaptureReport {
            backfilled_rows,
            ..CaptureReport::default()
        },
        batch_commit_times: Vec::new(),
        definition: None,
        definition_text: None,
        states,
        backfills: Vec::new(),
        finished: Vec::new(),
        rebackfill: Vec::new(),
        streamed: Vec::new(),
        next_prune: Instant::now(),
        next_publication_check: Instant::now() + PUBLICATION_POLL,
        backfill_done: tokio::sync::mpsc::unbounded_channel(),
        side,
    };
    // The start-up's queries are retried on a lost connection, as the stream is: each step reads
    // what is stored and running, so doing it again does only what is still undone.
    let mut pause = ReconnectPause::new();
    loop {
        match capture
            .start_up(definition.clone(), definition_text.clone())
            .await
        {
            Ok(()) => break,
            Err(e) if e.kind() == ErrorKind::Connection => {
                tracing::warn!(error = %e, "connection lost while starting; reconnecting");
                capture.store.rollback()?;
                capture.states = load_states(&capture.store)?;
                capture.sql = None;
                pause.wait().await;
            }
            Err(e) => return Err(e),
        }
    }
    let mut pause = ReconnectPause::new();
    let result = loop {
        let started = Instant::now();
        let stored_before = capture.checkpoint;
        let result = capture.stream().await;
        // Whatever happened, an open batch holds only unconfirmed work: drop it, resume from the checkpoint.
        if let Err(rollback) = capture.store.rollback() {
            // The stream's own error says what went wrong; a failed rollback after it must not hide it.
            match result {
                Ok(_) => break Err(rollback),
                Err(e) => {
                    tracing::warn!(error = %rollback, "rolling back the open batch failed");
                    break Err(e);
                }
            }
        }
        capture.batch_commit_times.clear();
        // Renames and new bindings noted in the lost batch are noted again when their Relation
        // messages come again.
        capture.states = load_states(&capture.store)?;
        match result {
            Ok(Outcome::Stopped) => break Ok(()),
            Ok(Outcome::Rebackfill) => {
                capture.relations.clear();
                match capture.start_rebackfills().await {
                    Ok(()) => continue,
                    // The stream asks again when it comes back to the same Relation message.
                    Err(e) if e.kind() == ErrorKind::Connection => {
                        capture.store.rollback()?;
                        capture.states = load_states(&capture.store)?;
                        tracing::warn!(error = %e, "connection lost starting a re-backfill; reconnecting")
                    }
                    Err(e) => break Err(e),
                }
            }
            Ok(Outcome::Ended) => {
                tracing::warn!("the server ended the replication stream; reconnecting")
            }
            Err(e) if e.kind() == ErrorKind::Connection => {
                tracing::warn!(error = %e, "replication connection lost; reconnecting")
            }
            Err(e) => break Err(capture.explain(e).await),
        }
        // A connection that streamed a while, or stored something before it was lost, was
        // working: the next attempt starts from the shortest pause. Only failures in a row wait
        // longer each time (a walsender terminated every few seconds must not grow into 30 s
        // stalls while each reconnect succeeds).
        if started.elapsed() > Duration::from_secs(30) || capture.checkpoint > stored_before {
            pause = ReconnectPause::new();
        }
        pause.wait().await;
        capture.sql = None;
        capture.relations.clear();
    };
    result?;
    capture.report.checkpoint = capture.checkpoint.to_string();
    Ok(std::mem::take(&mut capture.report))
}

/// The next event if one is waiting; when transactions arrive `quick`ly, waits up to
/// [`GROUP_COMMIT_WAIT`] for one first.
async fn next_soon(stream: &mut Stream, quick: bool) -> Result<Option<Event>> {
    if let Some(next) = stream.next_ready().await? {
        return Ok(Some(next));
    }
    if quick {
        // `Stream::next` is cancel-safe: an event is never lost to the timeout.
        if let Ok(next) = tokio::time::timeout(GROUP_COMMIT_WAIT, stream.next()).await {
            return next;
        }
    }
    Ok(None)
}

/// The relation `relid` among those the stream described; a function of the map alone, so the caller
/// can write to the store while it holds the relation.
fn relation_in(relations: &FxHashMap<u32, Bound>, relid: u32) -> Result<&Relation> {
    bound_in(relations, relid).map(|b| &b.rel)
}

/// [`relation_in`], with what the capture does with the relation's changes.
fn bound_in(relations: &FxHashMap<u32, Bound>, relid: u32) -> Result<&Bound> {
    relations.get(&relid).ok_or_else(|| {
        Error::internal(format!(
            "pgoutput: a change for relation {relid} arrived before its Relation message"
        ))
    })
}

/// Stores or holds a change. A function of the store alone (not a method), so the caller can pass the
/// collection's name borrowed from its relation instead of copying it for every change.
#[allow(clippy::too_many_arguments)]
fn write(
    store: &mut Store,
    disposition: Disposition,
    collection: &str,
    lsn: Lsn,
    op: Op,
    key: &str,
    old_key: Option<&str>,
    doc: Document,
) -> Result<()> {
    match disposition {
        Disposition::Store => store.apply(collection, lsn, op, key, old_key, doc),
        Disposition::Hold => store.hold(collection, lsn, op, key, old_key, &doc),
        Disposition::Ignore => Ok(()),
    }
}

impl Capture {
    /// Picks up an edited definition (called between transactions).
    /// Prunes the log by the store's retention when due. Between batches only; a failure is
    /// logged and tried again later (pruning is housekeeping: it must not stop the capture).
    fn prune_if_due(&mut self) {
        if self.store.in_batch() || Instant::now() < self.next_prune {
            return;
        }
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let wait = match crate::store::retention::prune(&mut self.store, now_ms) {
            Ok(wait) => wait,
            Err(e) => {
                tracing::warn!(error = %e, "pruning the change log failed; trying again in a minute");
                Duration::from_secs(60)
            }
        };
        self.next_prune = Instant::now() + wait;
    }

    /// A stream error the server raised (not a lost connection) may come from the slot: dropped or
    /// invalidated under the running capture, the server says only that it "cannot read" from it. The
    /// slot's own state, read again, says what happened and what to do; otherwise `e` stands.
    async fn explain(&mut self, e: Error) -> Error {
        let Ok(client) = connect(&self.options.spec).await else {
            return e;
        };
        match continuity::verify(&client, &mut self.store, &self.options.slot, false).await {
            Err(diverged) if diverged.kind() == ErrorKind::Diverged => diverged,
            _ => e,
        }
    }

    async fn stream(&mut self) -> Result<Outcome> {
        if self.reached_stop() {
            return Ok(Outcome::Stopped);
        }
        if self.sql.is_none() {
            self.sql = Some(connect(&self.options.spec).await?);
        }
        let sql = self.sql.as_ref().expect("connected above");
        // Every (re)start checks that the slot can still send everything after the checkpoint: the slot
        // may have been dropped, recreated or invalidated while the connection was down.
        continuity::verify(sql, &mut self.store, &self.options.slot, false).await?;
        // The insert-only companion is decoded along, when it exists now.
        let publications = crate::source::publication::streamed(
            self.sql.as_ref().expect("connected above"),
            &self.options.publication,
        )
        .await?;
        self.streamed = publications.clone();
        let mut stream = Stream::start(StreamOptions {
            spec: &self.options.spec,
            slot: &self.options.slot,
            publications: &publications,
            start: self.checkpoint,
        })
        .await?;
        if let Some(observer) = &self.options.observer {
            (observer.0)(&Flush {
                checkpoint: self.checkpoint,
                changes: 0,
                commit_times_micros: Vec::new(),
                stored_at_micros: now_postgres_micros(),
            });
        }
        let mut decoder = Decoder::new(1);
        let mut tx: Option<Transaction> = None;
        let mut pending: Option<Event> = None;
        let mut batch_started = Instant::now();
        let mut batch_end = self.checkpoint;
        // When the last commit of a batch with changes returned, for group commit.
        let mut last_flush: Option<Instant> = None;
        let mut tick = tokio::time::interval(DEFINITION_POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if pending.is_none() && tx.is_none() {
                let position = if self.store.in_batch() {
                    batch_end
                } else {
                    self.checkpoint
                };
                if let Some(at) = self.ready_backfill(position) {
                    if self.store.in_batch() {
                        self.flush(&stream, batch_end)?;
                    }
                    let (staging, result) = self.finished.remove(at);
                    self.finish_backfill(staging, result).await?;
                    if self.reached_stop() {
                        stream.stop().await;
                        return Ok(Outcome::Stopped);
                    }
                    continue;
                }
            }
            let next = match pending.take() {
                Some(event) => Some(event),
                // Between transactions: also bring in finished backfills and edited definitions.
                None if tx.is_none() => {
                    tokio::select! {
                        biased;
                        Some(done) = self.backfill_done.1.recv() => {
                            self.finished.push(done);
                            continue;
                        }
                        _ = tick.tick() => {
                            if self.store.in_batch() {
                                self.flush(&stream, batch_end)?;
                            }
                            self.reload_definition().await?;
                            self.prune_if_due();
                            if Instant::now() >= self.next_publication_check {
                                self.next_publication_check = Instant::now() + PUBLICATION_POLL;
                                let back = self.check_membership().await?;
                                self.rebackfill.extend(back);
                                if !self.rebackfill.is_empty() {
                                    if self.store.in_batch() {
                                        self.flush(&stream, batch_end)?;
                                    }
                                    stream.stop().await;
                                    return Ok(Outcome::Rebackfill);
                                }
                            }
                            continue;
                        }
                        event = stream.next() => event?,
                    }
                }
                None => stream.next().await?,
            };
            let Some(event) = next else {
                return Ok(Outcome::Ended);
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
                        .decode_shared(&bytes)
                        .map_err(|e| Error::internal(format!("decoding pgoutput: {e}")))?;
                    self.message(message, tx.as_mut()).await?;
                    if !self.rebackfill.is_empty() {
                        stream.stop().await;
                        return Ok(Outcome::Rebackfill);
                    }
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
                        let quick = last_flush.is_some_and(|at| at.elapsed() < GROUP_COMMIT_RATE);
                        if let Some(next) = next_soon(&mut stream, quick).await? {
                            pending = Some(next);
                            continue;
                        }
                    }
                    self.flush(&stream, batch_end)?;
                    last_flush = Some(Instant::now());
                    // Hand the thread back to the runtime once per batch. The stream reads the
                    // socket on this task, so while the server has more to send nothing here waits,
                    // and the runtime would neither fire timers (the definition poll, backfills
                    // brought in) nor refill this task's cooperative budget: once spent, every
                    // read looks empty, `next_soon` finds nothing, and each transaction is flushed
                    // on its own. A capture behind a busy source then fell further behind.
                    tokio::task::yield_now().await;
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

    /// A finished backfill that can be brought in with the stream at `position`: a failed one at
    /// once, a read one when every transaction before its snapshot is stored (else a change older
    /// than the snapshot would be stored on top of the snapshot's rows).
    fn ready_backfill(&self, position: Lsn) -> Option<usize> {
        self.finished.iter().position(|(staging, result)| {
            result.is_err()
                || self
                    .backfills
                    .iter()
                    .find(|b| &b.staging == staging)
                    .is_none_or(|b| position >= b.point)
        })
    }

    /// The stop LSN is stored and no backfill is still being read.
    fn reached_stop(&self) -> bool {
        self.backfills.is_empty()
            && self
                .options
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
                replica_identity,
                ..
            } => {
                let mut infos = Vec::with_capacity(columns.len());
                for column in &columns {
                    let kind = self.kind_of(column.type_oid).await?;
                    infos.push(ColumnInfo::new(column.name.clone(), column.type_oid, kind));
                }
                let mut key: Vec<usize> = columns
                    .iter()
                    .enumerate()
                    .filter(|(_, c)| c.key)
                    .map(|(i, _)| i)
                    .collect();
                let (collection, handling) = match self.identify(relid, &namespace, &name).await? {
                    Identity::Bound(at) => {
                        let state = &self.states[at];
                        (state.collection.clone(), state.handling())
                    }
                    Identity::Unbound => {
                        (default_collection_name(&namespace, &name), Handling::Ignore)
                    }
                    Identity::Rebackfill(request) => {
                        self.rebackfill.push(request);
                        return Ok(());
                    }
                };
                if handling == Handling::Store {
                    if let Some(change) = self.key_type_change(&collection, &columns).await? {
                        self.rebackfill.push(Rebackfill {
                            seen: relid,
                            notice: format!(
                                "{change} in table {}; collection {collection} is read again (a re-backfill), \
                                 so rows stored under the old type's keys are replaced by the table's rows as they are now",
                                qualified(&namespace, &name)
                            ),
                            schema: namespace,
                            table: name,
                        });
                        return Ok(());
                    }
                }
                // REPLICA IDENTITY FULL flags every column as the identity; the collection's key stays
                // the table's own (as recorded, else as discovery picks it), or rows would split.
                if replica_identity == b'f' {
                    let names = match self.store.collection(&collection)? {
                        Some(spec) if !spec.key.is_empty() => spec.key,
                        _ => self.table_key(relid).await?,
                    };
                    let found: Vec<usize> = names
                        .iter()
                        .filter_map(|n| columns.iter().position(|c| &c.name == n))
                        .collect();
                    if !found.is_empty() && found.len() == names.len() {
                        key = found;
                    }
                }
                self.relations.insert(
                    relid,
                    Bound {
                        rel: Relation {
                            collection,
                            source: std::sync::Arc::new(SourceTable {
                                schema: namespace,
                                table: name,
                            }),
                            columns: infos,
                            key,
                        },
                        recorded: false,
                        handling,
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
                let disposition = self.disposition(relid, tx.final_lsn)?;
                if matches!(disposition, Disposition::Ignore) {
                    return Ok(());
                }
                self.record_relation(relid)?;
                let rel = relation_in(&self.relations, relid)?;
                let mut row = write_row(
                    rel,
                    &new,
                    Columns::All,
                    None,
                    None,
                    tx,
                    Some(&mut self.store),
                )?;
                let doc = document_with_meta(&mut row, |out, unknown| {
                    write_meta_cut(out, Op::Create, relid, rel, tx, unknown)
                });
                write(
                    &mut self.store,
                    disposition,
                    &rel.collection,
                    tx.final_lsn,
                    Op::Create,
                    &row.key,
                    None,
                    doc,
                )?;
                self.store.recycle(row.key);
                tx.index += 1;
                Ok(())
            }
            Message::Update {
                relid, old, new, ..
            } => {
                let Some(tx) = tx.filter(|t| !t.skip) else {
                    return Ok(());
                };
                let disposition = self.disposition(relid, tx.final_lsn)?;
                if matches!(disposition, Disposition::Ignore) {
                    return Ok(());
                }
                self.record_relation(relid)?;
                let rel = relation_in(&self.relations, relid)?;
                let old_row = match &old {
                    Some((kind, values)) => {
                        let columns = if *kind == OldKind::Full {
                            Columns::All
                        } else {
                            Columns::Key
                        };
                        Some(write_row(
                            rel,
                            values,
                            columns,
                            None,
                            None,
                            tx,
                            Some(&mut self.store),
                        )?)
                    }
                    None => None,
                };
                // The stored row, for unchanged TOAST values the WAL did not carry.
                let stored = if new.contains(&Value::UnchangedToast) {
                    let lookup_key = match &old_row {
                        Some(old_row) => old_row.key.clone(),
                        None => write_row(rel, &new, Columns::Key, None, None, tx, None)?.key,
                    };
                    self.store
                        .row_document(&rel.collection, &lookup_key)?
                        .map(StoredRow::of)
                        .transpose()?
                } else {
                    None
                };
                let old_values = match (&old, &old_row) {
                    (Some((_, values)), Some(old_row)) => {
                        Some((values.as_slice(), old_row.refs.as_slice()))
                    }
                    _ => None,
                };
                let mut row = write_row(
                    rel,
                    &new,
                    Columns::All,
                    old_values,
                    stored.as_ref(),
                    tx,
                    Some(&mut self.store),
                )?;
                let before = old_row.as_ref().map(|o| format!("{{{}}}", o.members));
                let (m, before_at) =
                    meta_at(Op::Update, relid, rel, tx, before.as_deref(), &row.unknown);
                let before_refs: Vec<ValueRef> = match (&old_row, before_at) {
                    (Some(old_row), Some(at)) => old_row
                        .refs
                        .iter()
                        .map(|r| ValueRef {
                            at: at + 1 + r.at,
                            hash: r.hash.clone(),
                            path: std::iter::once("before".to_string())
                                .chain(r.path.iter().cloned())
                                .collect(),
                        })
                        .collect(),
                    _ => Vec::new(),
                };
                let doc = document_of(&mut row, &m, &before_refs);
                let old_key = old_row.as_ref().map(|o| o.key.as_str());
                write(
                    &mut self.store,
                    disposition,
                    &rel.collection,
                    tx.final_lsn,
                    Op::Update,
                    &row.key,
                    old_key,
                    doc,
                )?;
                self.store.recycle(row.key);
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
                let disposition = self.disposition(relid, tx.final_lsn)?;
                if matches!(disposition, Disposition::Ignore) {
                    return Ok(());
                }
                self.record_relation(relid)?;
                let rel = relation_in(&self.relations, relid)?;
                let columns = if old_kind == OldKind::Full {
                    Columns::All
                } else {
                    Columns::Key
                };
                let mut row = write_row(rel, &old, columns, None, None, tx, Some(&mut self.store))?;
                let doc = document_with_meta(&mut row, |out, _| {
                    write_meta_cut(out, Op::Delete, relid, rel, tx, &[])
                });
                write(
                    &mut self.store,
                    disposition,
                    &rel.collection,
                    tx.final_lsn,
                    Op::Delete,
                    &row.key,
                    None,
                    doc,
                )?;
                self.store.recycle(row.key);
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
                    let disposition = self.disposition(relid, tx.final_lsn)?;
                    if matches!(disposition, Disposition::Ignore) {
                        continue;
                    }
                    self.record_relation(relid)?;
                    let rel = relation_in(&self.relations, relid)?;
                    let mut m = meta(Op::Truncate, relid, rel, tx, None, &[]);
                    m.pop();
                    m.push_str(&format!(
                        ",\"truncate\":{{\"cascade\":{},\"restartIdentity\":{}}}}}",
                        options & 1 != 0,
                        options & 2 != 0
                    ));
                    let doc = Document::from(document("", &m));
                    write(
                        &mut self.store,
                        disposition,
                        &rel.collection,
                        tx.final_lsn,
                        Op::Truncate,
                        "",
                        None,
                        doc,
                    )?;
                    tx.index += 1;
                }
                Ok(())
            }
            // Begin and Commit arrive as events; the rest needs no action with protocol version 1.
            _ => Ok(()),
        }
    }

    /// Where a change of `relid` in the transaction committed at `final_lsn` goes.
    fn disposition(&self, relid: u32, final_lsn: Lsn) -> Result<Disposition> {
        Ok(bound_in(&self.relations, relid)?
            .handling
            .disposition(final_lsn))
    }

    /// Records the relation's collection (its key and columns) in the open batch, once per Relation.
    fn record_relation(&mut self, relid: u32) -> Result<()> {
        let bound = self
            .relations
            .get_mut(&relid)
            .ok_or_else(|| Error::internal(format!("pgoutput: unknown relation {relid}")))?;
        if bound.recorded {
            return Ok(());
        }
        self.store.put_collection(&bound.rel.spec())?;
        bound.recorded = true;
        Ok(())
    }

    /// How a type's values map to JSON: built-ins directly, others from the catalog (enums are text,
    /// domains their base type, arrays of their element type).
    async fn table_key(&mut self, relid: u32) -> Result<Vec<String>> {
        if self.sql.is_none() {
            self.sql = Some(connect(&self.options.spec).await?);
        }
        crate::source::discovery::key_of(self.sql.as_ref().expect("connected above"), relid).await
    }

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
            crate::source::discovery::kind_of(self.sql.as_ref().expect("connected above"), oid)
                .await?;
        self.types.insert(oid, kind.clone());
        Ok(kind)
    }
}
