//! Continuity between the store and its source: whether the slot can still deliver every change after
//! the store's checkpoint, checked before each stream starts (first start and every reconnect), and the
//! one way out when it cannot (a re-backfill that records the gap).
//!
//! Why it exists: PostgreSQL starts a logical stream at the slot's `confirmed_flush_lsn` when asked for
//! an earlier position, without a word. A slot that was dropped and created again, advanced by someone
//! else, or invalidated would therefore hand the capture a stream with a hole in it, and every command
//! would still exit 0. The store must never hold less than the source without saying so.
//!
//! Invariants:
//! - A store with history (a checkpoint past 0/0) streams only from a slot whose `confirmed_flush_lsn` is
//!   at or before that checkpoint, of the database system and database it was captured from. Capture
//!   confirms only what it stored, so its own slot always passes; anything else is a
//!   [`ErrorKind::Diverged`] error that says what happened and what `--resync` will do.
//! - A missing slot is created only for a store without history; for one with history, a new slot
//!   would start after the changes made while there was none, so it is refused the same way.
//! - [`resync`] is the only place that moves a checkpoint over a gap, and only when a person asks. It
//!   records the gap (from, to, when) in the store, so the change log's hole is written down, and raises
//!   the backfill counter of every backfilled binding so their rows are read again.

use serde::{Deserialize, Serialize};
use tokio_postgres::Client;

use crate::binding::{Definition, Mode};
use crate::error::{Error, ErrorKind, Result};
use crate::source::connection::{connect, ConnectionSpec};
use crate::source::pgoutput::Lsn;
use crate::source::slot::{self, SlotInfo};
use crate::source::sql;
use crate::store::Store;

/// The store meta key holding the [`SourceIdentity`] it was captured from.
const IDENTITY_KEY: &str = "source_identity";
/// The store meta key holding the list of [`Gap`]s accepted by [`resync`].
const GAPS_KEY: &str = "gaps";

/// Which database system, database and slot a store's history came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SourceIdentity {
    /// `pg_control_system().system_identifier`: different for every `initdb`, a restore keeps it.
    /// None when the role may not read it.
    pub system_identifier: Option<String>,
    /// The database's name.
    pub database: String,
    /// The slot's name.
    pub slot: String,
}

/// A stretch of the source's history that the change log does not hold, accepted by [`resync`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Gap {
    /// The store's checkpoint when the gap was found: changes after it may be missing.
    pub from: String,
    /// Where the new stream starts: changes before it were never received.
    pub to: String,
    /// When the re-backfill was asked for (Unix milliseconds).
    pub at_ms: i64,
    /// What happened, as the refusal said it.
    pub reason: String,
    /// The collections read again to close it.
    pub rebackfilled: Vec<String>,
    /// The store's last log position before the gap (entries after it were stored after the
    /// gap); consumers that had not read past it are told they cross it. Absent in gaps recorded
    /// before it was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_position: Option<u64>,
}

/// What [`resync`] did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Resync {
    /// The gap it recorded.
    pub gap: Gap,
    /// Whether it created the slot (it was missing) or created it again (it was invalidated).
    pub slot_created: bool,
}

/// Reads the identity of the source `client` is connected to, for slot `slot`.
pub async fn source_identity(client: &Client, slot: &str) -> Result<SourceIdentity> {
    let database: String = client
        .query_one("SELECT current_database()::text", &[])
        .await
        .map_err(|e| Error::from_postgres(&e, "reading the database name"))?
        .get(0);
    // Readable by any role on PostgreSQL 15; a server that restricts it still gets the other checks.
    let system_identifier = match client
        .query_one(
            "SELECT system_identifier::text FROM pg_control_system()",
            &[],
        )
        .await
    {
        Ok(row) => Some(row.get(0)),
        Err(e) => {
            tracing::debug!(error = %e, "pg_control_system() is not readable; the source is identified by database and slot");
            None
        }
    };
    Ok(SourceIdentity {
        system_identifier,
        database,
        slot: slot.to_string(),
    })
}

/// The identity recorded in `store`, if any.
pub fn recorded_identity(store: &Store) -> Result<Option<SourceIdentity>> {
    store
        .meta(IDENTITY_KEY)?
        .map(|text| {
            serde_json::from_str(&text).map_err(|e| {
                Error::internal(format!(
                    "store: the recorded source identity is unreadable: {e}"
                ))
            })
        })
        .transpose()
}

/// The gaps accepted so far, oldest first.
pub fn gaps(store: &Store) -> Result<Vec<Gap>> {
    match store.meta(GAPS_KEY)? {
        Some(text) => serde_json::from_str(&text)
            .map_err(|e| Error::internal(format!("store: the recorded gaps are unreadable: {e}"))),
        None => Ok(Vec::new()),
    }
}

/// The refusal: what happened, that streaming on would lose changes, and the way out.
fn diverged(what: String, checkpoint: Lsn) -> Error {
    Error::new(
        ErrorKind::Diverged,
        format!(
            "{what}. The store holds every change up to {checkpoint}; streaming on would silently miss the changes \
             made after that, so the capture stops here. To continue, re-backfill: `tidepool capture --resync` \
             (in the app, \"Re-backfill and continue\") reads every backfilled table again in a new snapshot, \
             records the gap in the change log's history, and then streams on"
        ),
    )
}

/// Checks that the slot can deliver every change after the store's checkpoint, creating it only for a
/// store without history when `create` is set, and records the source's identity on first use. Waits a
/// little for a slot a killed capture still holds (see [`slot::ensure`]).
pub async fn verify(
    client: &Client,
    store: &mut Store,
    slot_name: &str,
    create: bool,
) -> Result<SlotInfo> {
    let checkpoint = store.checkpoint()?;
    let history = checkpoint > Lsn(0);
    let identity = source_identity(client, slot_name).await?;
    let recorded = recorded_identity(store)?;
    if let (true, Some(recorded)) = (history, &recorded) {
        if let (Some(was), Some(now)) = (&recorded.system_identifier, &identity.system_identifier) {
            if was != now {
                return Err(diverged(
                    format!(
                        "this store was captured from another database system (system identifier {was}, now {now}): \
                         the connection points at a different server, or the database was restored into a new cluster"
                    ),
                    checkpoint,
                ));
            }
        }
        if recorded.database != identity.database {
            return Err(diverged(
                format!(
                    "this store was captured from database '{}', the connection now reaches '{}'",
                    recorded.database, identity.database
                ),
                checkpoint,
            ));
        }
    }
    let found = slot::find(client, slot_name).await?;
    if history {
        match &found {
            None => {
                return Err(diverged(
                    format!(
                        "replication slot {} no longer exists: it was dropped (by hand, or by Neon after a long pause), so \
                         the changes made since the capture last ran are gone from the server's point of view",
                        sql::ident(slot_name)
                    ),
                    checkpoint,
                ))
            }
            Some(found) if found.wal_status.as_deref() == Some("lost") => {
                return Err(diverged(
                    format!(
                        "replication slot {} was invalidated (wal_status = lost): the server removed WAL it still \
                         needed, usually because it grew past max_slot_wal_keep_size while the capture was behind",
                        sql::ident(slot_name)
                    ),
                    checkpoint,
                ))
            }
            Some(_) => {}
        }
    }
    let info = slot::ensure(client, slot_name, create && !history).await?;
    if history {
        let confirmed: Option<Lsn> = info
            .confirmed_flush_lsn
            .as_deref()
            .and_then(|l| l.parse().ok());
        if let Some(confirmed) = confirmed.filter(|c| *c > checkpoint) {
            return Err(diverged(
                format!(
                    "replication slot {} has confirmed up to {confirmed}, past the store's checkpoint {checkpoint}: \
                     it was created again, advanced by another client, or belongs to another capture, and it can no \
                     longer send the changes in between",
                    sql::ident(slot_name)
                ),
                checkpoint,
            ));
        }
    }
    if recorded.as_ref() != Some(&identity) {
        let text = serde_json::to_string(&identity).map_err(Error::internal)?;
        store.put_meta(IDENTITY_KEY, &text)?;
    }
    Ok(info)
}

/// The way out of a [`ErrorKind::Diverged`] refusal, asked for by a person: makes the slot usable
/// (creating it if it is missing, dropping and creating it if it was invalidated), records the gap
/// between the store's checkpoint and where the slot starts, moves the checkpoint there, and raises the
/// backfill counter of every backfilled binding, so the next capture reads those tables again in a new
/// snapshot while it streams. Collections captured with only new changes keep their rows; the gap is in
/// their history too.
///
/// Refused (InvalidInput) when the slot can still send everything after the checkpoint: nothing was
/// lost, so nothing is read again.
pub async fn resync(
    spec: &ConnectionSpec,
    store_dir: &std::path::Path,
    slot_name: &str,
) -> Result<Resync> {
    slot::validate_name(slot_name)?;
    let _writer = crate::store::lock::StoreLock::acquire_soon(store_dir).await?;
    let client = connect(spec).await?;
    let mut store = Store::open(store_dir)?;
    let reason = match verify(&client, &mut store, slot_name, false).await {
        Err(e) if e.kind() == ErrorKind::Diverged => e.message().to_string(),
        Err(e) => return Err(e),
        Ok(_) => {
            return Err(Error::invalid_input(
                "resync",
                format!(
                    "replication slot {} can still send every change after the store's checkpoint; nothing was lost, so nothing is read again",
                    sql::ident(slot_name)
                ),
            ))
        }
    };
    let mut slot_created = false;
    let info = match slot::find(&client, slot_name).await? {
        Some(found) if found.wal_status.as_deref() == Some("lost") => {
            tracing::warn!(slot = %slot_name, "dropping the invalidated slot to create it again, as asked");
            slot::drop_released(&client, slot_name).await?;
            slot_created = true;
            slot::ensure(&client, slot_name, true).await?
        }
        Some(_) => slot::ensure(&client, slot_name, false).await?,
        None => {
            slot_created = true;
            slot::ensure(&client, slot_name, true).await?
        }
    };
    let start: Lsn = info
        .confirmed_flush_lsn
        .as_deref()
        .and_then(|l| l.parse().ok())
        .ok_or_else(|| {
            Error::internal(format!(
                "replication slot {} has no confirmed_flush_lsn",
                sql::ident(slot_name)
            ))
        })?;
    let checkpoint = store.checkpoint()?;
    let mut rebackfilled = Vec::new();
    if let Some(mut definition) = Definition::load(&store)? {
        for binding in definition.bindings.iter_mut() {
            if binding.mode == Mode::Full {
                binding.backfill += 1;
                rebackfilled.push(binding.collection.clone());
            }
        }
        definition.save(&mut store)?;
    }
    let gap = Gap {
        from: checkpoint.to_string(),
        to: start.max(checkpoint).to_string(),
        at_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or_default(),
        reason,
        rebackfilled,
        log_position: Some(store.log_end()),
    };
    let mut all = gaps(&store)?;
    all.push(gap.clone());
    let identity = source_identity(&client, slot_name).await?;
    store.begin()?;
    store.set_meta(
        GAPS_KEY,
        &serde_json::to_string(&all).map_err(Error::internal)?,
    )?;
    store.set_meta(
        IDENTITY_KEY,
        &serde_json::to_string(&identity).map_err(Error::internal)?,
    )?;
    // The checkpoint never moves back; a slot behind the store (nothing was lost) keeps it.
    store.commit(start.max(checkpoint))?;
    tracing::info!(from = %gap.from, to = %gap.to, collections = gap.rebackfilled.len(), "gap recorded; the next capture re-backfills");
    Ok(Resync { gap, slot_created })
}
