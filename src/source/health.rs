//! Slot health for the Monitor screen: what the capture's slot costs the server now, and what will
//! happen to it if nothing changes.
//!
//! A slot that is not consumed makes the server keep WAL: without `max_slot_wal_keep_size` it grows
//! until the disk fills; with it, the slot is invalidated (`wal_status = lost`) and the capture has to
//! backfill again. On Neon an inactive slot (no flush progress) is removed after about 40 hours, and an
//! active one keeps the compute from scaling to zero. This module turns those facts into warnings
//! early enough to act on.
//!
//! Invariant: it only reads (`pg_replication_slots`, settings, the store's checkpoint time); it never
//! touches the slot.

use serde::Serialize;

use crate::app::profile::Profiles;
use crate::error::{Error, Result};
use crate::store::Store;

/// Neon removes a slot that has made no flush progress for about this long.
pub const NEON_INACTIVE_SLOT_HOURS: i64 = 40;

/// Retained WAL above which a warning is shown (the preflight's threshold).
pub const RETAINED_WARN_BYTES: i64 = crate::source::preflight::LAG_WARN_BYTES;

/// How serious a warning is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ts_rs::TS)]
#[serde(rename_all = "camelCase")]
#[ts(rename = "HealthLevel")]
pub enum Level {
    /// Worth knowing (e.g. Neon will not scale to zero while capturing).
    Info,
    /// Act soon.
    Warn,
    /// The slot or the server is at risk now.
    Danger,
}

/// One thing to know about the slot, with what to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ts_rs::TS)]
#[serde(rename_all = "camelCase")]
#[ts(rename = "HealthWarning")]
pub struct Warning {
    /// Stable id for the UI and tests (`lost`, `unreserved`, `retained`, `neonRemoval`, …).
    pub id: &'static str,
    /// How serious.
    pub level: Level,
    /// What is happening and what to do.
    pub message: String,
}

/// The slot as the server sees it, and what follows from that.
#[derive(Debug, Clone, PartialEq, Serialize, ts_rs::TS)]
#[serde(rename_all = "camelCase")]
pub struct SlotHealth {
    /// The profile's slot.
    pub slot: String,
    /// Whether the slot exists.
    pub exists: bool,
    /// Whether a client streams from it now.
    pub active: bool,
    /// `reserved`, `extended`, `unreserved` or `lost`.
    pub wal_status: Option<String>,
    /// WAL the server keeps for the slot (current LSN − `restart_lsn`).
    pub retained_bytes: Option<i64>,
    /// WAL written but not yet confirmed by the capture (current LSN − `confirmed_flush_lsn`).
    pub unconfirmed_bytes: Option<i64>,
    /// Bytes that can still be written before the slot is at risk of `lost`, when
    /// `max_slot_wal_keep_size` is set.
    pub safe_wal_size: Option<i64>,
    /// `max_slot_wal_keep_size` in bytes; `None` when unlimited (-1).
    pub max_slot_wal_keep_bytes: Option<i64>,
    /// Whether the database is on Neon (host or link).
    pub neon: bool,
    /// When the capture last made progress (its checkpoint moved), Unix milliseconds.
    pub last_progress_unix_ms: Option<i64>,
    /// On Neon with an inactive slot: seconds left before Neon removes it (negative when overdue).
    pub neon_removal_in_secs: Option<i64>,
    /// What to know and do, most serious first.
    pub warnings: Vec<Warning>,
}

/// Reads the health of the profile's slot.
pub async fn slot(profiles: &Profiles, id_or_name: &str) -> Result<SlotHealth> {
    let profile = profiles.get(id_or_name)?;
    let spec = profiles.spec_blocking(&profile.id, None).await?;
    let client = crate::source::connection::connect(&spec).await?;
    let row = client
        .query_one(
            "SELECT s.slot_name IS NOT NULL, COALESCE(s.active, false), s.wal_status,
                    pg_wal_lsn_diff(pg_current_wal_lsn(), s.restart_lsn)::bigint,
                    pg_wal_lsn_diff(pg_current_wal_lsn(), s.confirmed_flush_lsn)::bigint,
                    s.safe_wal_size,
                    (SELECT setting::bigint * 1048576 FROM pg_settings WHERE name = 'max_slot_wal_keep_size')
               FROM (SELECT 1) one
               LEFT JOIN pg_replication_slots s ON s.slot_name = $1",
            &[&profile.slot],
        )
        .await
        .map_err(|e| Error::from_postgres(&e, "reading pg_replication_slots"))?;
    let last_progress = match Store::open_existing(&profiles.store_dir(&profile.id)?)? {
        Some(store) => store.checkpoint_at()?,
        None => None,
    };
    let keep: Option<i64> = row.get(6);
    let facts = Facts {
        exists: row.get(0),
        active: row.get(1),
        wal_status: row.get(2),
        retained: row.get(3),
        unconfirmed: row.get(4),
        safe_wal_size: row.get(5),
        max_keep: keep.filter(|k| *k >= 0),
        neon: crate::source::preflight::is_neon(&profile.host) || profile.neon.is_some(),
        last_progress,
        captured_before: last_progress.is_some(),
    };
    Ok(assess(&profile.slot, facts, now_ms()))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// What the server and the store said, before judging it.
#[derive(Debug, Clone, Default)]
struct Facts {
    exists: bool,
    active: bool,
    wal_status: Option<String>,
    retained: Option<i64>,
    unconfirmed: Option<i64>,
    safe_wal_size: Option<i64>,
    max_keep: Option<i64>,
    neon: bool,
    last_progress: Option<i64>,
    captured_before: bool,
}

fn mib(bytes: i64) -> String {
    format!("{:.0} MiB", bytes as f64 / 1_048_576.0)
}

fn hours(secs: i64) -> String {
    format!("{:.1} h", secs as f64 / 3600.0)
}

/// Judges the facts (a pure function, so every branch is tested without a server).
fn assess(slot: &str, f: Facts, now_ms: i64) -> SlotHealth {
    let name = crate::source::sql::ident(slot);
    let mut warnings = Vec::new();
    let mut warn = |id, level, message: String| warnings.push(Warning { id, level, message });
    if !f.exists {
        if f.captured_before {
            warn("missing", Level::Danger, format!(
                "Slot {name} is gone (dropped, or removed by the provider). Changes made since it went are not in the slot any more: \
                 use \"Stop and drop the slot\" to start over, and the next start backfills again."));
        }
    } else {
        match f.wal_status.as_deref() {
            Some("lost") => warn("lost", Level::Danger, format!(
                "Slot {name} was invalidated (wal_status = lost): the WAL it needed is gone. Stop and drop the slot; the next start backfills again.")),
            Some("unreserved") => warn("unreserved", Level::Danger, format!(
                "Slot {name} holds more WAL than max_slot_wal_keep_size allows (wal_status = unreserved): the next checkpoint invalidates it. Start the capture now.")),
            Some("extended") => warn("extended", Level::Warn, format!(
                "Slot {name} holds more WAL than max_wal_size (wal_status = extended). Keep the capture running so it catches up.")),
            _ => {}
        }
        let retained = f.retained.unwrap_or(0);
        if retained > RETAINED_WARN_BYTES {
            warn("retained", Level::Warn, format!(
                "The server keeps {} of WAL for slot {name}{}. It grows while the capture is paused; without max_slot_wal_keep_size it grows until the disk fills.",
                mib(retained),
                if f.active { "" } else { ", which nobody is consuming" }));
        }
        if f.max_keep.is_none() && !f.neon {
            // Neon sets its own limits and removes idle slots (below); elsewhere nothing stops it.
            warn("unlimitedWal", Level::Warn, format!(
                "max_slot_wal_keep_size is -1 (unlimited): while the capture is stopped, the server keeps WAL for slot {name} \
                 until its disk fills and the database stops. Set a limit the disk can afford, as a superuser: \
                 ALTER SYSTEM SET max_slot_wal_keep_size = '10GB'; SELECT pg_reload_conf(); \
                 Past the limit PostgreSQL invalidates the slot instead, and the next start backfills again."));
        }
        if let (Some(safe), Some(max)) = (f.safe_wal_size, f.max_keep) {
            if max > 0 && safe < max / 5 && f.wal_status.as_deref() != Some("lost") {
                warn("safeWalSize", Level::Danger, format!(
                    "Only {} more WAL can be written before slot {name} is invalidated (safe_wal_size). Start the capture, or it must backfill again.",
                    mib(safe.max(0))));
            }
        }
    }
    let mut neon_removal_in_secs = None;
    if f.neon && f.exists {
        if f.active {
            warn("neonScaleToZero", Level::Info,
                "While the capture streams, the Neon compute keeps a replication connection and does not scale to zero (you pay for it running). Pause the capture to let it suspend; the slot keeps the changes meanwhile.".to_string());
        } else {
            let limit = NEON_INACTIVE_SLOT_HOURS * 3600;
            match f.last_progress {
                Some(at) => {
                    let idle = (now_ms - at).max(0) / 1000;
                    let left = limit - idle;
                    neon_removal_in_secs = Some(left);
                    let level = if left < 8 * 3600 { Level::Danger } else { Level::Warn };
                    warn("neonRemoval", level, if left > 0 {
                        format!("Neon removes a slot that makes no progress for about {NEON_INACTIVE_SLOT_HOURS} h. Slot {name} last moved {} ago: about {} left. Start the capture before then, or the next start must backfill again.", hours(idle), hours(left))
                    } else {
                        format!("Slot {name} has made no progress for {}, past Neon's ~{NEON_INACTIVE_SLOT_HOURS} h limit: Neon may remove it any time. Start the capture now.", hours(idle))
                    });
                }
                None => warn("neonRemoval", Level::Warn, format!(
                    "Neon removes a slot that makes no progress for about {NEON_INACTIVE_SLOT_HOURS} h. Slot {name} is not being consumed: start the capture.")),
            }
        }
    }
    warnings.sort_by_key(|w| match w.level {
        Level::Danger => 0,
        Level::Warn => 1,
        Level::Info => 2,
    });
    SlotHealth {
        slot: slot.to_string(),
        exists: f.exists,
        active: f.active,
        wal_status: f.wal_status,
        retained_bytes: f.retained,
        unconfirmed_bytes: f.unconfirmed,
        safe_wal_size: f.safe_wal_size,
        max_slot_wal_keep_bytes: f.max_keep,
        neon: f.neon,
        last_progress_unix_ms: f.last_progress,
        neon_removal_in_secs,
        warnings,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR_MS: i64 = 3_600_000;

    fn ids(h: &SlotHealth) -> Vec<(&'static str, Level)> {
        h.warnings.iter().map(|w| (w.id, w.level)).collect()
    }

    fn healthy() -> Facts {
        Facts {
            exists: true,
            active: true,
            wal_status: Some("reserved".into()),
            retained: Some(1 << 20),
            unconfirmed: Some(0),
            max_keep: Some(10 << 30),
            ..Facts::default()
        }
    }

    #[test]
    fn an_unlimited_slot_wal_is_a_warning_with_its_fix_except_on_neon() {
        let unlimited = Facts {
            max_keep: None,
            ..healthy()
        };
        let h = assess("s", unlimited.clone(), 0);
        assert_eq!(ids(&h), vec![("unlimitedWal", Level::Warn)]);
        assert!(h.warnings[0]
            .message
            .contains("ALTER SYSTEM SET max_slot_wal_keep_size"));
        let on_neon = assess(
            "s",
            Facts {
                neon: true,
                ..unlimited.clone()
            },
            0,
        );
        assert!(!ids(&on_neon).iter().any(|(id, _)| *id == "unlimitedWal"));
        // No slot, nothing it could hold.
        let none = assess(
            "s",
            Facts {
                exists: false,
                ..unlimited
            },
            0,
        );
        assert_eq!(ids(&none), vec![]);
    }

    #[test]
    fn a_consumed_slot_on_plain_postgres_has_nothing_to_say() {
        assert_eq!(ids(&assess("s", healthy(), 0)), vec![]);
    }

    #[test]
    fn wal_status_and_retained_wal_warn_most_serious_first() {
        let h = assess(
            "s",
            Facts {
                active: false,
                wal_status: Some("unreserved".into()),
                retained: Some(3 << 30),
                ..healthy()
            },
            0,
        );
        assert_eq!(
            ids(&h),
            vec![("unreserved", Level::Danger), ("retained", Level::Warn)]
        );
        assert!(
            h.warnings[1].message.contains("3072 MiB"),
            "{:?}",
            h.warnings
        );
        assert!(h.warnings[1].message.contains("nobody is consuming"));
    }

    #[test]
    fn little_safe_wal_left_is_a_danger() {
        let facts = Facts {
            safe_wal_size: Some(100 << 20),
            max_keep: Some(1 << 30),
            ..healthy()
        };
        assert_eq!(
            ids(&assess("s", facts.clone(), 0)),
            vec![("safeWalSize", Level::Danger)]
        );
        let plenty = Facts {
            safe_wal_size: Some(900 << 20),
            ..facts
        };
        assert_eq!(ids(&assess("s", plenty, 0)), vec![]);
    }

    #[test]
    fn neon_counts_down_from_the_last_progress_of_an_inactive_slot() {
        let paused = Facts {
            active: false,
            neon: true,
            last_progress: Some(0),
            ..healthy()
        };
        let h = assess("s", paused.clone(), 10 * HOUR_MS);
        assert_eq!(h.neon_removal_in_secs, Some(30 * 3600));
        assert_eq!(ids(&h), vec![("neonRemoval", Level::Warn)]);
        assert!(
            h.warnings[0].message.contains("30.0 h left"),
            "{}",
            h.warnings[0].message
        );
        let late = assess("s", paused.clone(), 35 * HOUR_MS);
        assert_eq!(ids(&late), vec![("neonRemoval", Level::Danger)]);
        let overdue = assess("s", paused, 41 * HOUR_MS);
        assert_eq!(overdue.neon_removal_in_secs, Some(-3600));
        assert!(overdue.warnings[0].message.contains("any time"));
    }

    #[test]
    fn an_active_neon_capture_notes_that_the_compute_stays_up() {
        let h = assess(
            "s",
            Facts {
                neon: true,
                ..healthy()
            },
            0,
        );
        assert_eq!(ids(&h), vec![("neonScaleToZero", Level::Info)]);
        assert_eq!(h.neon_removal_in_secs, None);
    }

    #[test]
    fn a_slot_gone_after_capturing_is_a_danger_and_a_new_profile_is_not() {
        let gone = Facts {
            exists: false,
            captured_before: true,
            ..Facts::default()
        };
        assert_eq!(ids(&assess("s", gone, 0)), vec![("missing", Level::Danger)]);
        assert_eq!(ids(&assess("s", Facts::default(), 0)), vec![]);
    }
}
