//! Replication slots: checking that a capture's slot is usable, creating it when asked, and reading its
//! position and health.
//!
//! Invariant: the engine never drops or advances a slot on its own; positions move only through the
//! capture's confirmations, and a slot is dropped only when a person asks ("Stop and drop the slot").

use serde::Serialize;
use tokio_postgres::Client;

use crate::error::{Error, ErrorKind, Result};
use crate::source::pgoutput::Lsn;
use crate::source::sql;

/// What `pg_replication_slots` says about a slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SlotInfo {
    /// Slot name.
    pub name: String,
    /// Output plugin.
    pub plugin: String,
    /// The database it decodes.
    pub database: String,
    /// Whether a client is streaming from it now.
    pub active: bool,
    /// The server's process serving that client.
    pub active_pid: Option<i32>,
    /// Where the slot's consumer has confirmed it has stored up to.
    pub confirmed_flush_lsn: Option<String>,
    /// `reserved`, `extended`, `unreserved` or `lost`.
    pub wal_status: Option<String>,
}

/// Slot names are 1–63 of `a-z`, `0-9` and `_` (PostgreSQL's rule, checked here so the error names the
/// field instead of arriving from the server).
pub fn validate_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > 63 {
        return Err(Error::invalid_input(
            "slot",
            format!("'{name}' must be 1 to 63 characters long"),
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_'))
    {
        return Err(Error::invalid_input(
            "slot",
            format!("'{name}' contains {bad:?}; slot names use only a-z, 0-9 and _"),
        ));
    }
    Ok(())
}

/// Reads a slot, if it exists.
pub async fn find(client: &Client, name: &str) -> Result<Option<SlotInfo>> {
    let row = client
        .query_opt(
            "SELECT slot_name::text, COALESCE(plugin::text, ''), COALESCE(database::text, ''), active, active_pid,
                    confirmed_flush_lsn::text, wal_status
               FROM pg_replication_slots WHERE slot_name = $1",
            &[&name],
        )
        .await
        .map_err(|e| Error::from_postgres(&e, "reading pg_replication_slots"))?;
    Ok(row.map(|r| SlotInfo {
        name: r.get(0),
        plugin: r.get(1),
        database: r.get(2),
        active: r.get(3),
        active_pid: r.get(4),
        confirmed_flush_lsn: r.get(5),
        wal_status: r.get(6),
    }))
}

/// How long to wait for a slot that is still active: after a capture was killed, the server takes a
/// moment to notice the dead connection and release the slot.
const RELEASE_WAIT: std::time::Duration = std::time::Duration::from_secs(15);

/// Checks that `name` is a pgoutput slot of this database that nobody streams from (waiting a little
/// for one a killed capture still holds), creating it when it is missing and `create` is set.
pub async fn ensure(client: &Client, name: &str, create: bool) -> Result<SlotInfo> {
    let deadline = std::time::Instant::now() + RELEASE_WAIT;
    loop {
        let slot = check(client, name, create).await?;
        if !slot.active {
            return Ok(slot);
        }
        if std::time::Instant::now() >= deadline {
            return Err(Error::new(
                ErrorKind::Postgres,
                format!(
                    "replication slot {} is in use by server process {}: a slot serves one consumer at a time",
                    sql::ident(name),
                    slot.active_pid.map_or("?".to_string(), |p| p.to_string())
                ),
            ));
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// The slot, created if missing and allowed, checked for everything but whether it is active.
async fn check(client: &Client, name: &str, create: bool) -> Result<SlotInfo> {
    let database: String = client
        .query_one("SELECT current_database()::text", &[])
        .await
        .map_err(|e| Error::from_postgres(&e, "reading the database name"))?
        .get(0);
    let slot = match find(client, name).await? {
        Some(slot) => slot,
        None if create => {
            client
                .execute("SELECT pg_create_logical_replication_slot($1, 'pgoutput')", &[&name])
                .await
                .map_err(|e| Error::from_postgres(&e, &format!("creating replication slot {}", sql::ident(name))))?;
            find(client, name).await?.ok_or_else(|| Error::internal("the new slot is not in pg_replication_slots"))?
        }
        None => {
            return Err(Error::new(
                ErrorKind::NotFound,
                format!(
                    "replication slot {} does not exist; create it with --create-slot, or run SELECT pg_create_logical_replication_slot({}, 'pgoutput')",
                    sql::ident(name),
                    sql::literal(name)
                ),
            ))
        }
    };
    if slot.plugin != "pgoutput" {
        return Err(Error::invalid_input(
            "slot",
            format!(
                "{} uses the plugin '{}', Tidepool needs 'pgoutput'",
                sql::ident(name),
                slot.plugin
            ),
        ));
    }
    if slot.database != database {
        return Err(Error::invalid_input(
            "slot",
            format!(
                "{} decodes database '{}', not '{database}': a slot belongs to one database",
                sql::ident(name),
                slot.database
            ),
        ));
    }
    if slot.wal_status.as_deref() == Some("lost") {
        return Err(Error::new(
            ErrorKind::Postgres,
            format!("replication slot {} was invalidated (wal_status = lost): the WAL it needed is gone; drop it and capture again with a new backfill", sql::ident(name)),
        ));
    }
    Ok(slot)
}

/// The slot's `confirmed_flush_lsn`.
pub async fn confirmed_flush(client: &Client, name: &str) -> Result<Option<Lsn>> {
    Ok(find(client, name)
        .await?
        .and_then(|s| s.confirmed_flush_lsn)
        .and_then(|l| l.parse().ok()))
}

/// Drops the slot once no one streams from it (waiting a little for a capture that was just stopped
/// to let go). Returns whether there was a slot to drop.
pub async fn drop_released(client: &Client, name: &str) -> Result<bool> {
    let deadline = std::time::Instant::now() + RELEASE_WAIT;
    loop {
        let Some(slot) = find(client, name).await? else {
            return Ok(false);
        };
        if !slot.active {
            client
                .execute("SELECT pg_drop_replication_slot($1)", &[&name])
                .await
                .map_err(|e| {
                    Error::from_postgres(
                        &e,
                        &format!("dropping replication slot {}", sql::ident(name)),
                    )
                })?;
            return Ok(true);
        }
        if std::time::Instant::now() >= deadline {
            return Err(Error::new(
                ErrorKind::Postgres,
                format!(
                    "replication slot {} is still in use by server process {}; stop whatever streams from it first",
                    sql::ident(name),
                    slot.active_pid.map_or("?".to_string(), |p| p.to_string())
                ),
            ));
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}
