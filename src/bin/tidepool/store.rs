//! `tidepool collections`, `preview` and `discard-store`: what a local store holds, read without
//! writing.

use super::*;

/// Deletes a profile's local store and its keychain entries; the profile stays.
pub(super) async fn discard_store(profile: &str, yes: bool) -> Result<(), Error> {
    if !yes {
        return Err(Error::invalid_input(
            "--yes",
            "discarding deletes the local copy of the captured rows and drops the profile's slot (the next capture backfills again); add --yes",
        ));
    }
    let removed = engine()?.discard_store(profile).await?;
    println!("{}", removed.describe());
    Ok(())
}

pub(super) fn collections(store: &std::path::Path, json: bool) -> Result<(), Error> {
    let store = open_existing_store(store)?;
    let collections = store.collections()?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&collections).map_err(Error::internal)?
        );
    } else {
        for c in collections {
            println!("{}\t{}\t{}", c.name, c.rows, c.changes);
        }
    }
    Ok(())
}

pub(super) fn preview(
    store: &std::path::Path,
    collection: &str,
    changes: bool,
    limit: usize,
    filter: Option<&str>,
    contains: bool,
) -> Result<(), Error> {
    let store = open_existing_store(store)?;
    let filter = match filter {
        Some(text) => {
            let (field, value) = text.split_once('=').ok_or_else(|| {
                Error::invalid_input("--where", format!("'{text}' is not FIELD=VALUE"))
            })?;
            Some(tidepool::store::Filter {
                field: field.to_string(),
                value: value.to_string(),
                contains,
            })
        }
        None => None,
    };
    let mut out = std::io::stdout().lock();
    let docs: Vec<serde_json::Value> = if changes {
        store
            .changes_matching(collection, 0, limit, filter.as_ref())?
            .into_iter()
            .map(|(_, d)| d)
            .collect()
    } else {
        store
            .rows_after(collection, None, limit, filter.as_ref())?
            .into_iter()
            .map(|(_, d)| d)
            .collect()
    };
    for doc in docs {
        match writeln!(out, "{doc}") {
            Ok(()) => {}
            // The reader has what it wanted (`| head`): stopping early is not a failure.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
            Err(e) => return Err(Error::from(e)),
        }
    }
    match out.flush() {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(Error::from(e)),
        _ => Ok(()),
    }
}

pub(super) fn open_existing_store(dir: &std::path::Path) -> Result<tidepool::store::Store, Error> {
    if !dir.join("tidepool.db").exists() {
        return Err(Error::new(
            ErrorKind::NotFound,
            format!("--store: {} holds no Tidepool store", dir.display()),
        ));
    }
    tidepool::store::Store::open(dir)
}
