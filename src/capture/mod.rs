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
//! - A large value ([`crate::large_value`]) is stored once and referred to: taking an unchanged one
//!   from the stored row copies its reference, never the value.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio_postgres::Client;

use crate::binding::{default_collection_name, Binding, Definition, Mode};
use crate::connection::{connect, ConnectionSpec};
use crate::continuity;
use crate::document::{
    document, document_of, meta, meta_at, now_postgres_micros, postgres_time_to_unix_ms, write_row,
    ColumnInfo, Columns, Relation, StoredRow, Transaction,
};
use crate::error::{Error, ErrorKind, Result};
use crate::large_value::{Document, ValueRef};
use crate::pgoutput::{Decoder, Lsn, Message, OldKind, Value};
use crate::replication::{Event, Stream, StreamOptions};
use crate::slot;
use crate::sql;
use crate::store::{Op, Store};
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
    std::sync::Arc<dyn Fn(&crate::backfill::BackfillProgress) + Send + Sync>;

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

/// The capture's own record of a binding (kept in the store's meta, apart from the definition).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct BindingState {
    schema: String,
    table: String,
    collection: String,
    /// The binding's backfill counter this state reflects.
    backfill: u32,
    /// Set while a backfill is being read: its snapshot's point.
    #[serde(default)]
    backfilling: Option<Lsn>,
    /// Whether the collection was live before this backfill.
    #[serde(default)]
    was_live: bool,
    /// The table's OID (pgoutput's relation id): the binding follows the table through renames.
    #[serde(default)]
    oid: Option<u32>,
    /// OIDs of tables this binding followed before (dropped, then created again under the name):
    /// their changes still in the stream go to the same collection, ahead of the re-backfill that
    /// replaces their rows.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    retired: Vec<u32>,
    /// Set when the table was found outside the publication while it was bound (with the checkpoint
    /// then): the stream has none of its changes from some point before that on, and no slot can
    /// send them again. Its collection is read again (a re-backfill) once the table is back in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    left_publication: Option<Lsn>,
    /// Its membership of the publication when last looked at ([`membership`]'s token): a new one
    /// means it was dropped from the publication and added back since.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    published_as: Option<String>,
}

impl BindingState {
    fn handling(&self) -> Handling {
        match self.backfilling {
            Some(point) => Handling::Hold {
                point,
                was_live: self.was_live,
            },
            None => Handling::Store,
        }
    }
}

const STATE_KEY: &str = "bindings_state";

/// A backfill running alongside the stream, in its own snapshot, into a staging store.
struct RunningBackfill {
    tables: Vec<(String, String)>,
    staging: PathBuf,
    /// Its snapshot's point: it is brought in once the stream has stored everything before it, so no
    /// change older than the snapshot lands on top of the snapshot's rows.
    point: Lsn,
    task: tokio::task::JoinHandle<()>,
}

/// A bound table whose collection must be read again before its changes can be stored: the table
/// was dropped and created again under its name, or a key column's type changed.
struct Rebackfill {
    schema: String,
    table: String,
    /// The OID the table was seen under (a Relation message may come from a table dropped since).
    seen: u32,
    /// What happened and what the capture does about it, for the log and the report.
    notice: String,
}

/// How a relation's identity resolved against the bindings.
enum Identity {
    /// The binding at this index of the capture's states.
    Bound(usize),
    /// Not bound: its changes are dropped.
    Unbound,
    /// Bound, but its collection is read again first.
    Rebackfill(Rebackfill),
}

struct Capture {
    options: CaptureOptions,
    store: Store,
    sql: Option<Client>,
    relations: HashMap<u32, Bound>,
    types: HashMap<u32, Kind>,
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
    /// When to prune the log next ([`crate::retention`]).
    next_prune: Instant,
    /// When to check next that the bound tables are still published ([`Capture::check_membership`]).
    next_publication_check: Instant,
    backfill_done: (
        tokio::sync::mpsc::UnboundedSender<BackfillDone>,
        tokio::sync::mpsc::UnboundedReceiver<BackfillDone>,
    ),
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
pub async fn run(options: CaptureOptions) -> Result<CaptureReport> {
    let store_dir = options.store_dir.clone();
    run_in_store(options).await.map_err(|e| {
        if e.kind() == ErrorKind::Storage {
            e.context(format!("the store at {}", store_dir.display()))
        } else {
            e
        }
    })
}

async fn run_in_store(options: CaptureOptions) -> Result<CaptureReport> {
    slot::validate_name(&options.slot)?;
    // Held until the capture returns (or its task is dropped): one writer numbers the log.
    let _writer = crate::store_lock::StoreLock::acquire_soon(&options.store_dir).await?;
    let mut store = Store::open(&options.store_dir)?;
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
            let publications = crate::publication::streamed(&sql, &options.publication).await?;
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
        relations: HashMap::new(),
        types: HashMap::new(),
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

/// "Save and publish": checks `definition`, makes its publication contain every bound table (creating
/// the publication if it is missing), and saves the definition in the store in `store_dir`, where a
/// running capture picks it up and [`run`] starts from it. Returns the statements it ran. A bound
/// table without a usable replica identity is refused: see [`publish_with`].
pub async fn publish(
    spec: &ConnectionSpec,
    store_dir: &std::path::Path,
    definition: &Definition,
) -> Result<Vec<String>> {
    publish_with(spec, store_dir, definition, &[]).await
}

/// [`publish`] with the user's choice for each bound table that has no usable replica identity
/// (REPLICA IDENTITY FULL, or inserts only); without one, publishing it would make PostgreSQL refuse
/// the application's UPDATEs and DELETEs on it, so nothing runs and nothing is saved.
pub async fn publish_with(
    spec: &ConnectionSpec,
    store_dir: &std::path::Path,
    definition: &Definition,
    choices: &[crate::publication::Choice],
) -> Result<Vec<String>> {
    definition.validate()?;
    let client = connect(spec).await?;
    let tables = bound_tables(&client, definition).await?;
    let plan =
        crate::publication::publish_bound(&client, &definition.publication, &tables, choices)
            .await?;
    let mut store = Store::open(store_dir)?;
    definition.save(&mut store)?;
    Ok(plan.statements)
}

/// The tables `definition` binds, as the server names them (each must be readable).
async fn bound_tables(
    client: &Client,
    definition: &Definition,
) -> Result<Vec<crate::publication::TableRef>> {
    let readable = crate::discovery::discover(client, None).await?;
    let mut tables = Vec::with_capacity(definition.bindings.len());
    for binding in &definition.bindings {
        let found = crate::discovery::bound_table(&readable, binding, "bindings")?;
        tables.push(crate::publication::TableRef::new(
            &found.schema,
            &found.table,
        ));
    }
    Ok(tables)
}

/// What "Save and publish" followed by starting the capture will do, in order, worked out before
/// anything runs ([`plan_publish`]).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PublishPlan {
    /// The publication's part: exactly the statements [`publish_with`] runs (the same
    /// [`crate::publication::plan`]), and the tables without a usable replica identity.
    pub publication: crate::publication::Plan,
    /// Whether the slot exists already.
    pub slot_exists: bool,
    /// Whether the profile's capture runs already (it then picks up the new definition: no second
    /// capture starts).
    pub running: bool,
    /// The bound tables whose existing rows will be read, `"schema"."table"`.
    pub backfills: Vec<String>,
    /// One sentence per step, in the order they run.
    pub steps: Vec<String>,
}

/// Plans "Save and publish" of `definition` and the start of its capture from the store in
/// `store_dir` (`running`: whether that capture runs already); runs nothing. The publication
/// statements come from the same plan [`publish_with`] runs, so what is shown is what runs.
pub async fn plan_publish(
    spec: &ConnectionSpec,
    store_dir: &std::path::Path,
    definition: &Definition,
    choices: &[crate::publication::Choice],
    running: bool,
) -> Result<PublishPlan> {
    definition.validate()?;
    slot::validate_name(&definition.slot)?;
    let client = connect(spec).await?;
    let tables = bound_tables(&client, definition).await?;
    let publication = crate::publication::plan(
        &client,
        &crate::publication::Request {
            publication: definition.publication.clone(),
            tables,
            choices: choices.to_vec(),
            all_tables: false,
        },
    )
    .await?;
    let slot_exists = slot::find(&client, &definition.slot).await?.is_some();
    // A store that has streamed backfills only tables new to its definition (a table bound before
    // keeps its collection); a fresh one backfills every table bound with its existing rows.
    let store = Store::open_existing(store_dir)?;
    let streamed = match &store {
        Some(store) => store.checkpoint()? != Lsn(0),
        None => false,
    };
    let saved = match &store {
        Some(store) if streamed => Definition::load(store)?,
        _ => None,
    };
    let backfills: Vec<String> = definition
        .bindings
        .iter()
        .filter(|b| b.mode == Mode::Full)
        .filter(|b| {
            saved.as_ref().is_none_or(|saved| {
                !saved
                    .bindings
                    .iter()
                    .any(|s| s.schema == b.schema && s.table == b.table)
            })
        })
        .map(|b| qualified(&b.schema, &b.table))
        .collect();
    let mut steps = Vec::new();
    let publication_name = sql::ident(&definition.publication);
    if publication.statements.is_empty() {
        steps.push(format!(
            "The publication {publication_name} already contains every selected table: nothing to change."
        ));
    } else {
        steps.push(format!(
            "Update the publication {publication_name}: {}.",
            publication.statements.join("; ")
        ));
    }
    steps.push(format!(
        "Save the capture definition ({} table{}).",
        definition.bindings.len(),
        if definition.bindings.len() == 1 {
            ""
        } else {
            "s"
        }
    ));
    let slot_name = sql::ident(&definition.slot);
    let list = backfills.join(", ");
    if running {
        steps.push(
            "The capture is running: it picks up the new definition within a second (no second capture starts)."
                .to_string(),
        );
        if !backfills.is_empty() {
            steps.push(format!(
                "Backfill {list}, each in a snapshot of its own read alongside the stream."
            ));
        }
    } else if !slot_exists && !streamed {
        steps.push(format!(
            "Create the slot {slot_name} with an exported snapshot."
        ));
        if !backfills.is_empty() {
            steps.push(format!("Backfill {list} in that snapshot."));
        }
    } else {
        if slot_exists {
            steps.push(format!("Use the existing slot {slot_name}."));
        } else {
            steps.push(format!(
                "The slot {slot_name} no longer exists: the capture refuses to start until it is resynced."
            ));
        }
        if !backfills.is_empty() {
            steps.push(format!(
                "Backfill {list} in a snapshot of its own, read alongside the stream from the slot."
            ));
        }
    }
    if !running {
        steps.push("Start the capture: it streams every change from the slot.".to_string());
    }
    Ok(PublishPlan {
        publication,
        slot_exists,
        running,
        backfills,
        steps,
    })
}

fn live_state(binding: &Binding) -> BindingState {
    BindingState {
        schema: binding.schema.clone(),
        table: binding.table.clone(),
        collection: binding.collection.clone(),
        backfill: binding.backfill,
        backfilling: None,
        was_live: false,
        oid: binding.oid,
        retired: Vec::new(),
        left_publication: None,
        published_as: None,
    }
}

/// The capture's binding states as last committed.
fn load_states(store: &Store) -> Result<Vec<BindingState>> {
    match store.meta(STATE_KEY)? {
        Some(text) => serde_json::from_str(&text).map_err(|e| {
            Error::internal(format!(
                "store: the capture's binding state is unreadable: {e}"
            ))
        }),
        None => Ok(Vec::new()),
    }
}

/// The OID of the table now named `schema.table`, if there is one.
async fn table_oid(sql: &Client, schema: &str, table: &str) -> Result<Option<u32>> {
    Ok(sql
        .query_opt(
            "SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')",
            &[&schema, &table],
        )
        .await
        .map_err(|e| Error::from_postgres(&e, "reading pg_class"))?
        .map(|r| r.get(0)))
}

/// `"schema"."table"`, for notices.
fn qualified(schema: &str, table: &str) -> String {
    format!("{}.{}", sql::ident(schema), sql::ident(table))
}

/// The store meta key naming the slot a first backfill created (so an interrupted one is recognised).
const OWNED: &str = "backfill_slot";

/// Creates the slot with an exported snapshot, reads the tables in it, and commits their rows with the
/// slot's consistent point as the checkpoint. A slot left by an interrupted backfill (recorded in the
/// store) is replaced; any other existing slot never reaches here (its snapshot is gone, so the
/// tables are read alongside the stream instead) and is refused should it appear in between.
async fn initial_backfill(
    options: &CaptureOptions,
    tables: &[Binding],
    state: &str,
    sql: &Client,
    store: &mut Store,
) -> Result<u64> {
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
    let session =
        crate::replication::SnapshotSession::create(&options.spec, &options.slot, false).await?;
    let mut progress = |p: &crate::backfill::BackfillProgress| {
        if let Some(callback) = &options.backfill_progress {
            callback(p);
        }
    };
    let result = crate::backfill::run(
        &options.spec,
        store,
        tables,
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
    store.set_meta(STATE_KEY, state)?;
    store.commit(session.consistent_point)?;
    let consistent_point = session.consistent_point;
    session.close().await;
    tracing::info!(rows, %consistent_point, "backfill stored");
    Ok(rows)
}

/// Whether one of the `publications` the stream decodes with (the capture's, then its insert-only
/// companion) publishes `schema.table`.
async fn check_published(
    sql: &Client,
    publications: &[String],
    schema: &str,
    table: &str,
) -> Result<()> {
    let publication = publications.first().map(String::as_str).unwrap_or_default();
    // A FOR ALL TABLES publication lists the table in both parts: ask whether any row exists.
    let published: bool = sql
        .query_one(
            "SELECT EXISTS (
               SELECT 1 FROM pg_publication_tables WHERE pubname = ANY($1) AND schemaname = $2 AND tablename = $3
               UNION ALL
               SELECT 1 FROM pg_publication p JOIN pg_class c ON c.relname = $3 JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = $2
                WHERE p.pubname = ANY($1) AND p.puballtables)",
            &[&publications, &schema, &table],
        )
        .await
        .map_err(|e| Error::from_postgres(&e, "reading pg_publication_tables"))?
        .get(0);
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

/// Whether `publications` publish each of `tables` (schema, table), in one query: `None` when none
/// does, else a token that changes when the table was dropped from the publication and added back
/// (the OIDs of its `pg_publication_rel` rows, which are new rows then; empty when it is published by
/// FOR ALL TABLES, by its schema or through a parent, where a return cannot be seen this way).
async fn membership(
    sql: &Client,
    publications: &[String],
    tables: &[(&str, &str)],
) -> Result<Vec<Option<String>>> {
    let schemas: Vec<&str> = tables.iter().map(|(s, _)| *s).collect();
    let names: Vec<&str> = tables.iter().map(|(_, t)| *t).collect();
    let rows = sql
        .query(
            "SELECT EXISTS (SELECT 1 FROM pg_publication_tables
                             WHERE pubname = ANY($1) AND schemaname = b.s AND tablename = b.t)
                 OR EXISTS (SELECT 1 FROM pg_publication WHERE pubname = ANY($1) AND puballtables),
                    coalesce((SELECT string_agg(r.oid::text, ',' ORDER BY r.oid)
                                FROM pg_publication_rel r
                                JOIN pg_publication p ON p.oid = r.prpubid
                                JOIN pg_class c ON c.oid = r.prrelid
                                JOIN pg_namespace n ON n.oid = c.relnamespace
                               WHERE p.pubname = ANY($1) AND n.nspname = b.s AND c.relname = b.t), '')
               FROM unnest($2::text[], $3::text[]) WITH ORDINALITY AS b(s, t, i)
              ORDER BY b.i",
            &[&publications, &schemas, &names],
        )
        .await
        .map_err(|e| Error::from_postgres(&e, "reading pg_publication_rel"))?;
    Ok(rows
        .iter()
        .map(|r| r.get::<_, bool>(0).then(|| r.get::<_, String>(1)))
        .collect())
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
    /// The binding state of relation `relid`: its table's, or that of the table a recreated one
    /// replaced (its changes still in the stream).
    fn state_of(&self, relid: u32) -> Option<&BindingState> {
        self.states
            .iter()
            .find(|s| s.oid == Some(relid))
            .or_else(|| self.states.iter().find(|s| s.retired.contains(&relid)))
    }

    /// Where relation `relid`'s changes go: its collection and how they are handled.
    fn handling_for(&self, relid: u32, schema: &str, table: &str) -> (String, Handling) {
        match self.state_of(relid) {
            Some(state) => (state.collection.clone(), state.handling()),
            None => (default_collection_name(schema, table), Handling::Ignore),
        }
    }

    /// Resolves a Relation message's table against the bindings, by OID first: a known OID under a
    /// new name is a rename (the binding follows it, and says so); a bound name under a new OID is a
    /// table dropped and created again (its collection is read again). Without a definition every
    /// published table is bound on first sight, under a default name unique in this store.
    async fn identify(&mut self, relid: u32, schema: &str, table: &str) -> Result<Identity> {
        if let Some(at) = self.states.iter().position(|s| s.oid == Some(relid)) {
            self.follow_rename(at, relid, schema, table)?;
            return Ok(Identity::Bound(at));
        }
        if let Some(at) = self.states.iter().position(|s| s.retired.contains(&relid)) {
            return Ok(Identity::Bound(at));
        }
        if let Some(at) = self
            .states
            .iter()
            .position(|s| s.schema == schema && s.table == table)
        {
            match self.states[at].oid {
                // A binding recorded before OIDs were: this is its table.
                None => {
                    self.states[at].oid = Some(relid);
                    self.save_states()?;
                    return Ok(Identity::Bound(at));
                }
                Some(old) => match self.name_of(old).await? {
                    // The bound table still has this name: this relation is an earlier table of
                    // the name, dropped since. A re-backfill under way replaces what it leaves;
                    // else the collection may hold its rows as current ones: read it again.
                    Some(name) if name.0 == schema && name.1 == table => {
                        if self.states[at].backfilling.is_some() {
                            self.states[at].retired.push(relid);
                            self.save_states()?;
                            return Ok(Identity::Bound(at));
                        }
                        return Ok(Identity::Rebackfill(Rebackfill {
                            schema: schema.to_string(),
                            table: table.to_string(),
                            seen: relid,
                            notice: format!(
                                "an earlier table {} (OID {relid}) was dropped and the name now belongs to \
                                 OID {old}; collection {} follows OID {old} and is read again from it (a \
                                 re-backfill), replacing the earlier table's rows",
                                qualified(schema, table),
                                self.states[at].collection
                            ),
                        }));
                    }
                    // The bound table was renamed away and this one took its name: the binding
                    // follows its table; this one is new.
                    Some((old_schema, old_table)) => {
                        self.follow_rename(at, old, &old_schema, &old_table)?;
                    }
                    None => {
                        return Ok(Identity::Rebackfill(Rebackfill {
                            schema: schema.to_string(),
                            table: table.to_string(),
                            seen: relid,
                            notice: format!(
                                "table {} was dropped and created again (OID {old} is now {relid}); collection {} \
                                 now follows the new table and is read again from it (a re-backfill), replacing \
                                 the old table's rows",
                                qualified(schema, table),
                                self.states[at].collection
                            ),
                        }))
                    }
                },
            }
        }
        if self.definition.is_some() {
            return Ok(Identity::Unbound);
        }
        let collection = self.auto_collection(relid, schema, table).await?;
        self.states.push(BindingState {
            schema: schema.to_string(),
            table: table.to_string(),
            collection,
            backfill: 0,
            backfilling: None,
            was_live: false,
            oid: Some(relid),
            retired: Vec::new(),
            left_publication: None,
            published_as: None,
        });
        self.save_states()?;
        Ok(Identity::Bound(self.states.len() - 1))
    }

    /// Records that the table of the binding state at `at` (OID `oid`) is now named `schema.table`,
    /// when that is news: in the state, in running backfills, in the definition, and in a notice.
    fn follow_rename(&mut self, at: usize, oid: u32, schema: &str, table: &str) -> Result<()> {
        let state = &self.states[at];
        if state.schema == schema && state.table == table {
            return Ok(());
        }
        let (old_schema, old_table) = (state.schema.clone(), state.table.clone());
        self.notice(format!(
            "table {} was renamed to {}; collection {} keeps it",
            qualified(&old_schema, &old_table),
            qualified(schema, table),
            state.collection
        ));
        let state = &mut self.states[at];
        state.schema = schema.to_string();
        state.table = table.to_string();
        for backfill in &mut self.backfills {
            for named in &mut backfill.tables {
                if named.0 == old_schema && named.1 == old_table {
                    *named = (schema.to_string(), table.to_string());
                }
            }
        }
        self.save_states()?;
        if let Some(definition) = &mut self.definition {
            if let Some(binding) = definition
                .bindings
                .iter_mut()
                .find(|b| b.oid == Some(oid) || (b.schema == old_schema && b.table == old_table))
            {
                binding.schema = schema.to_string();
                binding.table = table.to_string();
                binding.oid = Some(oid);
            }
            self.save_definition()?;
        }
        Ok(())
    }

    /// The current name of the table with OID `oid`, if it still exists.
    async fn name_of(&mut self, oid: u32) -> Result<Option<(String, String)>> {
        if self.sql.is_none() {
            self.sql = Some(connect(&self.options.spec).await?);
        }
        let sql = self.sql.as_ref().expect("connected above");
        Ok(sql
            .query_opt(
                "SELECT n.nspname::text, c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                  WHERE c.oid = $1 AND c.relkind IN ('r', 'p')",
                &[&oid],
            )
            .await
            .map_err(|e| Error::from_postgres(&e, "reading pg_class"))?
            .map(|r| (r.get(0), r.get(1))))
    }

    /// The collection of a published table seen for the first time by a capture without a
    /// definition: the one a store made before bindings were recorded already holds for it, else
    /// its default name made unique among the tables discovery lists that have no collection yet (on
    /// a new store that is `discover`'s answer) and against the names this store already uses, which
    /// never change.
    async fn auto_collection(&mut self, relid: u32, schema: &str, table: &str) -> Result<String> {
        let plain = default_collection_name(schema, table);
        if let Some(spec) = self.store.collection(&plain)? {
            if spec.schema == schema
                && spec.table == table
                && !self.states.iter().any(|s| s.collection == plain)
            {
                return Ok(plain);
            }
        }
        let mut taken: std::collections::HashSet<String> =
            self.states.iter().map(|s| s.collection.clone()).collect();
        taken.extend(self.store.collections()?.into_iter().map(|c| c.name));
        if self.sql.is_none() {
            self.sql = Some(connect(&self.options.spec).await?);
        }
        let sql = self.sql.as_ref().expect("connected above");
        let mut names: Vec<(String, String)> = crate::discovery::readable_tables(sql)
            .await?
            .into_iter()
            // Tables already bound have their names; the others may yet claim theirs.
            .filter(|(oid, _, _)| *oid != relid && !self.states.iter().any(|s| s.oid == Some(*oid)))
            .map(|(_, s, t)| (s, t))
            .collect();
        names.push((schema.to_string(), table.to_string()));
        let mut unique = crate::binding::unique_collection_names(&names, &taken)?;
        Ok(unique.pop().expect("one name per table"))
    }

    /// Logs a notice and keeps it for the report.
    fn notice(&mut self, notice: String) {
        tracing::warn!("{notice}");
        self.report.notices.push(notice);
    }

    /// Saves the definition in force, with the identities the capture filled in, in the open batch
    /// (so it commits with what it describes), and takes its text as the one in force.
    fn save_definition(&mut self) -> Result<()> {
        let Some(definition) = &self.definition else {
            return Ok(());
        };
        let text = serde_json::to_string(definition).map_err(Error::internal)?;
        self.store.set_meta(crate::binding::META_KEY, &text)?;
        self.definition_text = Some(text);
        Ok(())
    }

    /// Whether a key column of relation `relid` (its collection `collection`) now has a type whose
    /// values map to JSON differently from the type recorded: then its new keys (`"1"`) would not
    /// match the stored ones (`1`). Returns what changed, for the notice.
    async fn key_type_change(
        &mut self,
        collection: &str,
        columns: &[crate::pgoutput::Column],
    ) -> Result<Option<String>> {
        let Some(spec) = self.store.collection(collection)? else {
            return Ok(None);
        };
        for key in &spec.key {
            let recorded = spec.columns.as_array().and_then(|cs| {
                cs.iter()
                    .find(|c| c["name"].as_str() == Some(key.as_str()))
                    .and_then(|c| c["typeOid"].as_u64())
                    .and_then(|oid| u32::try_from(oid).ok())
            });
            let now = columns.iter().find(|c| &c.name == key).map(|c| c.type_oid);
            let (Some(recorded), Some(now)) = (recorded, now) else {
                continue;
            };
            if recorded != now && self.kind_of(recorded).await? != self.kind_of(now).await? {
                return Ok(Some(format!(
                    "key column {} changed type (type OID {recorded} is now {now})",
                    sql::ident(key)
                )));
            }
        }
        Ok(None)
    }

    /// The bound tables whose recorded OID is gone while a table of another OID now has their name:
    /// dropped and created again while no capture ran.
    async fn recreated_while_stopped(&mut self) -> Result<Vec<Rebackfill>> {
        let mut found = Vec::new();
        if self.states.iter().all(|s| s.oid.is_none()) {
            return Ok(found);
        }
        if self.sql.is_none() {
            self.sql = Some(connect(&self.options.spec).await?);
        }
        let sql = self.sql.as_ref().expect("connected above");
        for state in &self.states {
            let Some(old) = state.oid else { continue };
            if state.backfilling.is_some() {
                continue;
            }
            let gone = sql
                .query_opt("SELECT 1 FROM pg_class WHERE oid = $1", &[&old])
                .await
                .map_err(|e| Error::from_postgres(&e, "reading pg_class"))?
                .is_none();
            if !gone {
                continue;
            }
            if let Some(new) = table_oid(sql, &state.schema, &state.table).await? {
                found.push(Rebackfill {
                    schema: state.schema.clone(),
                    table: state.table.clone(),
                    seen: new,
                    notice: format!(
                        "table {} was dropped and created again while the capture was stopped (OID {old} is now {new}); \
                         collection {} now follows the new table and is read again from it (a re-backfill), \
                         replacing the old table's rows",
                        qualified(&state.schema, &state.table),
                        state.collection
                    ),
                });
            }
        }
        Ok(found)
    }

    /// Checks that every bound table is still in the publication, and has not been out of it since the
    /// last look; returns the re-backfills due. pgoutput stops sending a table's changes from the
    /// `ALTER PUBLICATION … DROP TABLE` on and says nothing, so without this a collection would
    /// silently fall behind its table. A table found out, or found back under a new membership (its
    /// `pg_publication_rel` row is new: it was dropped and added back in between, however quickly), is
    /// recorded as having left, committed at the checkpoint so the record outlives an error.
    ///
    /// A table out now stops a capture with a definition (the tables were bound on purpose) with a
    /// [`ErrorKind::Diverged`] error that says what happened and what will be done; without one (every
    /// published table) it is a notice. A table that left and is in again has its collection read
    /// again (a re-backfill), once no backfill of it is under way.
    async fn check_membership(&mut self) -> Result<Vec<Rebackfill>> {
        if self.states.is_empty() {
            return Ok(Vec::new());
        }
        if self.sql.is_none() {
            self.sql = Some(connect(&self.options.spec).await?);
        }
        let sql = self.sql.as_ref().expect("connected above");
        let publications = crate::publication::streamed(sql, &self.options.publication).await?;
        let tables: Vec<(&str, &str)> = self
            .states
            .iter()
            .map(|s| (s.schema.as_str(), s.table.as_str()))
            .collect();
        let found = membership(sql, &publications, &tables).await?;
        let mut changed = false;
        let mut news = Vec::new();
        let mut out = Vec::new();
        for (i, member) in found.into_iter().enumerate() {
            let state = &mut self.states[i];
            let left = match &member {
                None => true,
                Some(token) => state.published_as.as_ref().is_some_and(|old| old != token),
            };
            if left && state.left_publication.is_none() {
                state.left_publication = Some(self.checkpoint);
                news.push(i);
                changed = true;
            }
            if member.is_none() {
                out.push(i);
            }
            if member.is_some() && state.published_as != member {
                state.published_as = member;
                changed = true;
            }
        }
        if changed {
            self.save_states()?;
            self.store.commit(self.checkpoint)?;
        }
        let publication = sql::ident(&self.options.publication);
        let reported: Vec<usize> = if self.definition.is_some() {
            out.clone()
        } else {
            out.iter().copied().filter(|i| news.contains(i)).collect()
        };
        if !reported.is_empty() {
            let names: Vec<String> = reported
                .iter()
                .map(|&i| qualified(&self.states[i].schema, &self.states[i].table))
                .collect();
            let collections: Vec<&str> = reported
                .iter()
                .map(|&i| self.states[i].collection.as_str())
                .collect();
            let noticed: Vec<String> = reported
                .iter()
                .map(|&i| {
                    self.states[i]
                        .left_publication
                        .unwrap_or_default()
                        .to_string()
                })
                .collect();
            let what = format!(
                "{} left publication {publication} while the capture followed it (noticed at {}): \
                 PostgreSQL sends none of its changes from then on, and no slot can send them again",
                names.join(", "),
                noticed.join(", ")
            );
            if self.definition.is_some() {
                return Err(Error::new(
                    ErrorKind::Diverged,
                    format!(
                        "{what}. Add it back ({}) or remove its binding, then start the capture again: \
                         collection {} is then read again from the table (a re-backfill), replacing its \
                         rows; the changes in between are not in its change log",
                        names
                            .iter()
                            .map(|n| format!("ALTER PUBLICATION {publication} ADD TABLE {n}"))
                            .collect::<Vec<_>>()
                            .join("; "),
                        collections.join(", ")
                    ),
                ));
            }
            self.notice(format!(
                "{what}; collection {} stops following it, and is read again from the table (a \
                 re-backfill) if it is added back",
                collections.join(", ")
            ));
        }
        let mut due = Vec::new();
        for (i, state) in self.states.iter().enumerate() {
            let Some(since) = state.left_publication else {
                continue;
            };
            if out.contains(&i) || state.backfilling.is_some() {
                continue;
            }
            let sql = self.sql.as_ref().expect("connected above");
            let Some(oid) = table_oid(sql, &state.schema, &state.table).await? else {
                continue;
            };
            due.push(Rebackfill {
                schema: state.schema.clone(),
                table: state.table.clone(),
                seen: oid,
                notice: format!(
                    "table {} is in publication {publication} again after it left (noticed at {since}); \
                     collection {} is read again from it (a re-backfill), replacing its rows; the changes \
                     made while it was out are not in its change log",
                    qualified(&state.schema, &state.table),
                    state.collection
                ),
            });
        }
        Ok(due)
    }

    /// Starts the re-backfills the stream asked for (called with no batch open): each binding
    /// follows its table's current OID (the old one retired), and its collection is read again in a
    /// new snapshot, its rows replaced when that is in. The stream then starts again at the
    /// checkpoint.
    async fn start_rebackfills(&mut self) -> Result<()> {
        let requests = std::mem::take(&mut self.rebackfill);
        if self.sql.is_none() {
            self.sql = Some(connect(&self.options.spec).await?);
        }
        let mut tables: Vec<(Binding, bool)> = Vec::new();
        for request in requests {
            let Some(at) = self
                .states
                .iter()
                .position(|s| s.schema == request.schema && s.table == request.table)
            else {
                continue;
            };
            if tables
                .iter()
                .any(|(b, _)| b.schema == request.schema && b.table == request.table)
            {
                continue;
            }
            let sql = self.sql.as_ref().expect("connected above");
            let current = table_oid(sql, &request.schema, &request.table).await?;
            let state = &mut self.states[at];
            // Every OID but the current one is retired: its changes still in the stream go to
            // this collection ahead of the re-backfill (a table may have been dropped and created
            // again more than once since the checkpoint).
            if let Some(new) = current {
                for old in [state.oid, Some(request.seen)].into_iter().flatten() {
                    if old != new && !state.retired.contains(&old) {
                        state.retired.push(old);
                    }
                }
                state.oid = Some(new);
            }
            let (oid, collection, backfill) = (state.oid, state.collection.clone(), state.backfill);
            self.notice(request.notice);
            let binding = match self.definition.as_mut().and_then(|d| {
                d.bindings
                    .iter_mut()
                    .find(|b| b.schema == request.schema && b.table == request.table)
            }) {
                Some(binding) => {
                    binding.oid = oid;
                    binding.clone()
                }
                None => Binding {
                    schema: request.schema.clone(),
                    table: request.table.clone(),
                    collection,
                    mode: Mode::Full,
                    backfill,
                    oid,
                },
            };
            tables.push((binding, true));
        }
        self.save_definition()?;
        if !tables.is_empty() {
            self.start_backfill(tables).await?;
        } else if self.store.in_batch() {
            self.store.commit(self.checkpoint)?;
        }
        // The stream just stopped: wait until the server has let go of the slot.
        let sql = self.sql.as_ref().expect("connected above");
        slot::ensure(sql, &self.options.slot, false).await?;
        Ok(())
    }

    /// Re-derives every known relation's collection and handling after the bindings changed.
    fn refresh_relations(&mut self) {
        let updates: Vec<(u32, String, Handling)> = self
            .relations
            .iter()
            .map(|(id, bound)| {
                let (collection, handling) =
                    self.handling_for(*id, &bound.rel.schema, &bound.rel.table);
                (*id, collection, handling)
            })
            .collect();
        for (id, collection, handling) in updates {
            if let Some(bound) = self.relations.get_mut(&id) {
                if bound.rel.collection != collection {
                    bound.recorded = false;
                }
                bound.rel.collection = collection;
                bound.handling = handling;
            }
        }
    }

    fn save_states(&mut self) -> Result<()> {
        let text = serde_json::to_string(&self.states).map_err(Error::internal)?;
        self.store.set_meta(STATE_KEY, &text)
    }

    /// Gives every binding of `definition` and its state the table's OID, matching bindings to states
    /// by OID, else by name. A binding or state saved before OIDs were recorded gets the OID of the
    /// table its name names now; a state's name is the table's last seen name, and its binding takes
    /// it (the table was renamed). Returns whether the definition changed.
    async fn fill_identities(&mut self, definition: &mut Definition) -> Result<bool> {
        let mut changed = false;
        let mut states_changed = false;
        for binding in &mut definition.bindings {
            let at = binding
                .oid
                .and_then(|oid| self.states.iter().position(|s| s.oid == Some(oid)))
                .or_else(|| {
                    self.states
                        .iter()
                        .position(|s| s.schema == binding.schema && s.table == binding.table)
                });
            let mut oid = at.and_then(|at| self.states[at].oid).or(binding.oid);
            if oid.is_none() {
                if self.sql.is_none() {
                    self.sql = Some(connect(&self.options.spec).await?);
                }
                let sql = self.sql.as_ref().expect("connected above");
                oid = table_oid(sql, &binding.schema, &binding.table).await?;
            }
            if let Some(at) = at {
                let state = &mut self.states[at];
                if state.oid != oid {
                    state.oid = oid;
                    states_changed = true;
                }
                if state.schema != binding.schema || state.table != binding.table {
                    binding.schema = state.schema.clone();
                    binding.table = state.table.clone();
                    changed = true;
                }
            }
            if binding.oid != oid {
                binding.oid = oid;
                changed = true;
            }
        }
        if states_changed {
            self.save_states()?;
        }
        Ok(changed)
    }

    /// Brings the capture in line with `definition` (called with no batch open): renames collections,
    /// drops unbound tables, and starts a backfill, in a snapshot of its own, for each table that is
    /// new and `Full`, whose backfill counter was raised, or whose backfill was interrupted.
    /// Everything between opening the store and the first stream: the slot's continuity, the
    /// definition reconciled with what is stored (backfills a crash interrupted start over: their
    /// snapshots died with their sessions), and tables recreated while no capture ran read again.
    async fn start_up(
        &mut self,
        definition: Option<Definition>,
        text: Option<String>,
    ) -> Result<()> {
        if self.sql.is_none() {
            self.sql = Some(connect(&self.options.spec).await?);
        }
        let sql = self.sql.as_ref().expect("connected above");
        continuity::verify(
            sql,
            &mut self.store,
            &self.options.slot,
            self.options.create_slot,
        )
        .await?;
        self.checkpoint = self.store.checkpoint()?;
        self.reconcile(definition, text).await?;
        // Read again now even if the new table never changes.
        self.rebackfill = self.recreated_while_stopped().await?;
        // A bound table that left the publication while the capture was stopped has a gap too.
        let back = self.check_membership().await?;
        self.rebackfill.extend(back);
        if !self.rebackfill.is_empty() {
            self.start_rebackfills().await?;
        }
        Ok(())
    }

    async fn reconcile(
        &mut self,
        definition: Option<Definition>,
        text: Option<String>,
    ) -> Result<()> {
        self.definition_text = text;
        let Some(mut definition) = definition else {
            self.definition = None;
            // Without a definition only a re-backfill can be under way: one a crash or a lost
            // connection interrupted starts over.
            let in_flight: Vec<(String, String)> = self
                .backfills
                .iter()
                .flat_map(|b| b.tables.iter().cloned())
                .collect();
            let interrupted: Vec<(Binding, bool)> = self
                .states
                .iter()
                .filter(|s| s.backfilling.is_some())
                .filter(|s| !in_flight.contains(&(s.schema.clone(), s.table.clone())))
                .map(|s| {
                    let binding = Binding {
                        schema: s.schema.clone(),
                        table: s.table.clone(),
                        collection: s.collection.clone(),
                        mode: Mode::Full,
                        backfill: s.backfill,
                        oid: s.oid,
                    };
                    (binding, s.was_live)
                })
                .collect();
            if !interrupted.is_empty() {
                self.start_backfill(interrupted).await?;
            }
            return Ok(());
        };
        let identities_filled = self.fill_identities(&mut definition).await?;
        if definition.publication != self.options.publication
            || definition.slot != self.options.slot
        {
            tracing::warn!(
                "the definition names another publication or slot; that takes effect when the capture restarts"
            );
        }
        self.store.begin()?;
        let running = |states: &[(String, String)], b: &Binding| {
            states.iter().any(|(s, t)| *s == b.schema && *t == b.table)
        };
        let in_flight: Vec<(String, String)> = self
            .backfills
            .iter()
            .flat_map(|b| b.tables.iter().cloned())
            .collect();
        let mut to_backfill = Vec::new();
        for binding in &definition.bindings {
            if running(&in_flight, binding) {
                // Looked at again when that backfill is in.
                continue;
            }
            match self
                .states
                .iter_mut()
                .find(|s| s.schema == binding.schema && s.table == binding.table)
            {
                None => {
                    if binding.mode == Mode::Full {
                        to_backfill.push((binding.clone(), false));
                    } else {
                        self.states.push(live_state(binding));
                    }
                }
                Some(state) => {
                    if state.collection != binding.collection {
                        self.store
                            .rename_collection(&state.collection, &binding.collection)?;
                        tracing::info!(from = %state.collection, to = %binding.collection, "collection renamed");
                        state.collection = binding.collection.clone();
                    }
                    if state.backfilling.is_some() {
                        to_backfill.push((binding.clone(), state.was_live));
                    } else if binding.backfill > state.backfill {
                        to_backfill.push((binding.clone(), true));
                    }
                }
            }
        }
        let before = self.states.len();
        self.states
            .retain(|s| definition.binding(&s.schema, &s.table).is_some());
        if self.states.len() != before {
            tracing::info!(
                removed = before - self.states.len(),
                "tables no longer bound; their collections stay in the store"
            );
        }
        self.definition = Some(definition);
        if identities_filled {
            self.save_definition()?;
        }
        self.save_states()?;
        self.store.commit(self.checkpoint)?;
        if !to_backfill.is_empty() {
            self.start_backfill(to_backfill).await?;
        }
        self.refresh_relations();
        Ok(())
    }

    /// Takes a snapshot in a temporary slot created now and reads `tables` in it into a staging store,
    /// on a task of its own, while the stream goes on. Every transaction the stream has stored so far
    /// committed before the slot's consistent point, so from here on the stream holds these tables'
    /// changes committed at or after it, and finishing ([`Capture::finish_backfill`]) applies them
    /// after the snapshot's rows.
    async fn start_backfill(&mut self, tables: Vec<(Binding, bool)>) -> Result<()> {
        if self.sql.is_none() {
            self.sql = Some(connect(&self.options.spec).await?);
        }
        let sql = self.sql.as_ref().expect("connected above");
        // Before the first stream, the one about to start decodes what exists now.
        let publications = if self.streamed.is_empty() {
            crate::publication::streamed(sql, &self.options.publication).await?
        } else {
            self.streamed.clone()
        };
        // A table read again (it was live) may leave the publication at any moment, here too: the
        // membership check ([`Capture::check_membership`]) follows those, so only a new one is refused.
        for (binding, was_live) in &tables {
            if !was_live {
                check_published(sql, &publications, &binding.schema, &binding.table).await?;
            }
        }
        // Membership read before the snapshot: a table that leaves the publication (or leaves and
        // comes back) after this shows as a change at the next check, so no gap after the snapshot's
        // point goes unseen; one out already has left.
        let named: Vec<(&str, &str)> = tables
            .iter()
            .map(|(b, _)| (b.schema.as_str(), b.table.as_str()))
            .collect();
        let members = membership(sql, &publications, &named).await?;
        let name = format!("tidepool_backfill_{}", crate::secrets::random_hex(6)?);
        let session =
            crate::replication::SnapshotSession::create(&self.options.spec, &name, true).await?;
        let point = session.consistent_point;
        self.store.begin()?;
        for ((binding, was_live), member) in tables.iter().zip(members) {
            self.store.drop_held(&binding.collection)?;
            let retired = self
                .states
                .iter()
                .find(|s| s.schema == binding.schema && s.table == binding.table)
                .map(|s| s.retired.clone())
                .unwrap_or_default();
            self.states
                .retain(|s| !(s.schema == binding.schema && s.table == binding.table));
            self.states.push(BindingState {
                backfilling: Some(point),
                was_live: *was_live,
                retired,
                left_publication: member.is_none().then_some(self.checkpoint),
                published_as: member,
                ..live_state(binding)
            });
        }
        self.save_states()?;
        self.store.commit(self.checkpoint)?;
        self.refresh_relations();
        let staging = self.options.store_dir.join("backfills").join(&name);
        let _ = std::fs::remove_dir_all(&staging);
        tracing::info!(tables = tables.len(), %point, "backfilling alongside the stream");
        let spec = self.options.spec.clone();
        let progress = self.options.backfill_progress.clone();
        let done = self.backfill_done.0.clone();
        let bindings: Vec<Binding> = tables.iter().map(|(b, _)| b.clone()).collect();
        let dir = staging.clone();
        // The staging store is part of this store: encrypted with its key if it is.
        let key = self.store.key();
        let task = tokio::spawn(async move {
            let result = async {
                let mut store = Store::open_keyed(&dir, key)?;
                let mut report = |p: &crate::backfill::BackfillProgress| {
                    if let Some(callback) = &progress {
                        callback(p);
                    }
                };
                let rows = crate::backfill::run(
                    &spec,
                    &mut store,
                    &bindings,
                    &session.snapshot,
                    point,
                    &mut report,
                )
                .await?;
                store.commit(point)?;
                Ok(rows)
            }
            .await;
            session.close().await;
            let _ = done.send((dir, result));
        });
        self.backfills.push(RunningBackfill {
            tables: tables
                .iter()
                .map(|(b, _)| (b.schema.clone(), b.table.clone()))
                .collect(),
            staging,
            point,
            task,
        });
        Ok(())
    }

    /// Brings a finished backfill in (called with no batch open): its rows, then the changes held
    /// since its snapshot, in one store transaction; the tables are live from then on.
    async fn finish_backfill(&mut self, staging: PathBuf, result: Result<u64>) -> Result<()> {
        let Some(at) = self.backfills.iter().position(|b| b.staging == staging) else {
            return Ok(());
        };
        let backfill = self.backfills.remove(at);
        let rows = match result {
            Ok(rows) => rows,
            Err(e) if e.kind() == ErrorKind::Connection => {
                tracing::warn!(error = %e, "a backfill lost its connection; starting it over");
                let _ = std::fs::remove_dir_all(&staging);
                return self.reconcile_again().await;
            }
            Err(e) => return Err(e),
        };
        let mut collections = Vec::new();
        for (schema, table) in &backfill.tables {
            if let Some(state) = self
                .states
                .iter_mut()
                .find(|s| &s.schema == schema && &s.table == table)
            {
                collections.push((state.collection.clone(), state.was_live));
                state.backfilling = None;
                state.was_live = false;
            }
        }
        let text = serde_json::to_string(&self.states).map_err(Error::internal)?;
        self.store
            .import_backfill(&staging, &collections, &[(STATE_KEY, &text)])?;
        let _ = std::fs::remove_dir_all(&staging);
        self.report.backfilled_rows += rows;
        tracing::info!(rows, tables = collections.len(), "backfill brought in");
        self.refresh_relations();
        // The definition may have moved on while it ran.
        self.reconcile_again().await
    }

    /// Reconciles with the definition in force again (a backfill ended: start what waited for it).
    async fn reconcile_again(&mut self) -> Result<()> {
        let definition = self.definition.clone();
        let text = self.definition_text.clone();
        self.reconcile(definition, text).await
    }

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
        let wait = match crate::retention::prune(&mut self.store, now_ms) {
            Ok(wait) => wait,
            Err(e) => {
                tracing::warn!(error = %e, "pruning the change log failed; trying again in a minute");
                Duration::from_secs(60)
            }
        };
        self.next_prune = Instant::now() + wait;
    }

    async fn reload_definition(&mut self) -> Result<()> {
        let text = Definition::saved_text(&self.store)?;
        if text == self.definition_text {
            return Ok(());
        }
        let definition = text.as_deref().map(Definition::parse).transpose()?;
        tracing::info!("the capture definition changed; applying it");
        self.reconcile(definition, text).await
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
        let publications = crate::publication::streamed(
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
                            schema: namespace,
                            table: name,
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
                let row = write_row(
                    rel,
                    &new,
                    Columns::All,
                    None,
                    None,
                    tx,
                    Some(&mut self.store),
                )?;
                let m = meta(Op::Create, relid, rel, tx, None, &row.unknown);
                let doc = document_of(&row, &m, &[]);
                let collection = rel.collection.clone();
                self.write(
                    disposition,
                    &collection,
                    tx.final_lsn,
                    Op::Create,
                    &row.key,
                    None,
                    doc,
                )?;
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
                let row = write_row(
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
                let doc = document_of(&row, &m, &before_refs);
                let collection = rel.collection.clone();
                let old_key = old_row.as_ref().map(|o| o.key.as_str());
                self.write(
                    disposition,
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
                let row = write_row(rel, &old, columns, None, None, tx, Some(&mut self.store))?;
                let m = meta(Op::Delete, relid, rel, tx, None, &[]);
                let doc = document_of(&row, &m, &[]);
                let collection = rel.collection.clone();
                self.write(
                    disposition,
                    &collection,
                    tx.final_lsn,
                    Op::Delete,
                    &row.key,
                    None,
                    doc,
                )?;
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
                    let rel = self.relation(relid)?;
                    let mut m = meta(Op::Truncate, relid, rel, tx, None, &[]);
                    m.pop();
                    m.push_str(&format!(
                        ",\"truncate\":{{\"cascade\":{},\"restartIdentity\":{}}}}}",
                        options & 1 != 0,
                        options & 2 != 0
                    ));
                    let doc = Document::from(document("", &m));
                    let collection = rel.collection.clone();
                    self.write(
                        disposition,
                        &collection,
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

    /// Stores or holds a change.
    #[allow(clippy::too_many_arguments)]
    fn write(
        &mut self,
        disposition: Disposition,
        collection: &str,
        lsn: Lsn,
        op: Op,
        key: &str,
        old_key: Option<&str>,
        doc: Document,
    ) -> Result<()> {
        match disposition {
            Disposition::Store => self.store.apply(collection, lsn, op, key, old_key, doc),
            Disposition::Hold => self.store.hold(collection, lsn, op, key, old_key, &doc),
            Disposition::Ignore => Ok(()),
        }
    }

    fn relation(&self, relid: u32) -> Result<&Relation> {
        relation_in(&self.relations, relid)
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
        crate::discovery::key_of(self.sql.as_ref().expect("connected above"), relid).await
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
            crate::discovery::kind_of(self.sql.as_ref().expect("connected above"), oid).await?;
        self.types.insert(oid, kind.clone());
        Ok(kind)
    }
}

/// The relation `relid` among those the stream described; a function of the map alone, so the caller
/// can write to the store while it holds the relation.
fn relation_in(relations: &HashMap<u32, Bound>, relid: u32) -> Result<&Relation> {
    bound_in(relations, relid).map(|b| &b.rel)
}

/// [`relation_in`], with what the capture does with the relation's changes.
fn bound_in(relations: &HashMap<u32, Bound>, relid: u32) -> Result<&Bound> {
    relations.get(&relid).ok_or_else(|| {
        Error::internal(format!(
            "pgoutput: a change for relation {relid} arrived before its Relation message"
        ))
    })
}
