//! How long a store keeps its change log, for its consumers and the change views.
//!
//! What a store keeps: every collection's current rows, always (the backfill snapshots and the
//! changes that last wrote a row); the rest of the change log for as long as the capture's retention
//! says, by commit time, or forever when it has none (the default). A consumer's position holds the
//! log until the retention is exceeded, not longer: a consumer that falls further behind loses what
//! was pruned before it read it, and is told so ([`crate::ErrorKind::Behind`], in
//! `tidepool consumer list|show` and the log) instead of missing it silently.
//!
//! Invariants:
//! - Only the capture prunes, between its batches, in transactions of its own
//!   ([`Store::prune_log`]): pruning never races the capture's writes, and delivery only reads.
//! - A source transaction is pruned whole or not at all, and one that wrote a row's current
//!   document is kept whole (so the index of a change in its transaction, part of every
//!   idempotency key, never changes). Snapshots and the newest change are never pruned.
//! - The newest position pruned from each collection is recorded with the pruning, so a consumer
//!   that had not read that far is told, whichever process feeds it.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::store::Store;

/// The store meta key holding the retention in milliseconds (absent or 0: keep everything).
pub const RETENTION_KEY: &str = "log_retention_ms";

/// The store meta key holding, per collection, the newest log position pruned.
pub const PRUNED_KEY: &str = "log_pruned";

/// Changes looked at per pruning transaction, so one never holds the write lock for long.
const PRUNE_LIMIT: usize = 20_000;

/// Parses a retention: `off` (keep everything), or a number with `s`, `m`, `h` or `d`.
pub fn parse(text: &str) -> Result<Option<Duration>> {
    let text = text.trim();
    if matches!(text, "off" | "none" | "forever") {
        return Ok(None);
    }
    let bad = || {
        Error::invalid_input(
            "retention",
            format!(
                "'{text}' is not a retention: use off, or a number with s, m, h or d (e.g. 7d)"
            ),
        )
    };
    let unit = text.chars().last().ok_or_else(bad)?;
    let seconds: u64 = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        _ => return Err(bad()),
    };
    let n: u64 = text[..text.len() - 1].parse().map_err(|_| bad())?;
    if n == 0 {
        return Err(Error::invalid_input(
            "retention",
            "a retention of 0 would prune changes before any consumer reads them; use off to keep everything",
        ));
    }
    n.checked_mul(seconds)
        .map(|s| Some(Duration::from_secs(s)))
        .ok_or_else(bad)
}

/// A retention as [`parse`] reads it.
pub fn describe(retention: Option<Duration>) -> String {
    let Some(d) = retention else {
        return "off".into();
    };
    let s = d.as_secs();
    for (unit, size) in [("d", 86_400), ("h", 3600), ("m", 60)] {
        if s >= size && s % size == 0 {
            return format!("{}{unit}", s / size);
        }
    }
    format!("{s}s")
}

/// The store's retention (`None`: it keeps its whole log).
pub fn retention(store: &Store) -> Result<Option<Duration>> {
    Ok(store
        .meta(RETENTION_KEY)?
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|ms| *ms > 0)
        .map(Duration::from_millis))
}

/// Saves the store's retention; a running capture applies it within a minute.
pub fn set_retention(store: &mut Store, retention: Option<Duration>) -> Result<()> {
    let ms = retention.map_or(0, |d| d.as_millis() as u64);
    store.put_meta(RETENTION_KEY, &ms.to_string())
}

/// Per collection, the newest log position pruned so far.
pub fn pruned(store: &Store) -> Result<BTreeMap<String, u64>> {
    match store.meta(PRUNED_KEY)? {
        Some(text) => serde_json::from_str(&text).map_err(|e| {
            Error::internal(format!(
                "store: the pruned log positions are unreadable: {e}"
            ))
        }),
        None => Ok(BTreeMap::new()),
    }
}

/// Prunes what the retention no longer keeps, as of `now_ms`; returns how long to wait before the
/// next call (at once when it stopped at its limit).
pub fn prune(store: &mut Store, now_ms: i64) -> Result<Duration> {
    let Some(retention) = retention(store)? else {
        // Picks up a retention set meanwhile.
        return Ok(Duration::from_secs(10));
    };
    let done = store.prune_log(
        now_ms.saturating_sub(retention.as_millis() as i64),
        PRUNE_LIMIT,
        PRUNED_KEY,
    )?;
    if done.removed > 0 {
        tracing::info!(
            removed = done.removed,
            "pruned changes older than the retention ({})",
            describe(Some(retention))
        );
    }
    Ok(if done.more {
        Duration::ZERO
    } else {
        (retention / 10).clamp(Duration::from_secs(1), Duration::from_secs(60))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retentions_read_and_print_alike() {
        assert_eq!(parse("off").unwrap(), None);
        assert_eq!(parse("7d").unwrap(), Some(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse(" 90s ").unwrap(), Some(Duration::from_secs(90)));
        for text in ["7d", "12h", "30m", "90s", "off"] {
            assert_eq!(describe(parse(text).unwrap()), text);
        }
        for bad in ["", "7", "d", "0d", "-1h", "1w", "99999999999999999999d"] {
            let e = parse(bad).unwrap_err();
            assert!(e.message().starts_with("retention:"), "{bad}: {e}");
        }
    }
}
