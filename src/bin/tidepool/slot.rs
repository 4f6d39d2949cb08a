//! `tidepool health` and `drop-slot`: the source's replication slot, watched and removed.

use super::*;

/// Prints the slot's health and its warnings.
pub(super) async fn health(profile: &str, json: bool) -> Result<(), Error> {
    let health = engine()?.slot_health(profile).await?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&health).map_err(Error::internal)?
        );
        return Ok(());
    }
    let mib = |b: Option<i64>| {
        b.map_or("-".to_string(), |b| {
            format!("{:.1} MiB", b as f64 / 1_048_576.0)
        })
    };
    println!("slot               {}", health.slot);
    println!("exists             {}", health.exists);
    println!("active             {}", health.active);
    println!(
        "wal_status         {}",
        health.wal_status.as_deref().unwrap_or("-")
    );
    println!("retained WAL       {}", mib(health.retained_bytes));
    println!("unconfirmed WAL    {}", mib(health.unconfirmed_bytes));
    println!("safe_wal_size      {}", mib(health.safe_wal_size));
    for w in &health.warnings {
        println!("{:?}: {}", w.level, w.message);
    }
    Ok(())
}

/// Drops the profile's slot and empties its store, after --confirm.
pub(super) async fn drop_slot(profile: &str, confirm: bool) -> Result<(), Error> {
    if !confirm {
        return Err(Error::invalid_input(
            "--confirm",
            "dropping the slot loses the changes it still holds, and the next capture backfills again; add --confirm",
        ));
    }
    engine()?.stop_and_drop_slot(profile).await?;
    println!("Slot dropped; the next capture backfills again.");
    Ok(())
}
