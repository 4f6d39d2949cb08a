//! "Save and publish": one step from chosen tables to a running capture. It plans what the
//! publication, the slot and the definition need (shown before anything runs), then applies it.
//!
//! Invariant: nothing is changed at the source before the plan is shown; a table whose updates and
//! deletes a publication would refuse (no usable replica identity) is never added without the
//! user's choice for it.

use super::*;

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
    choices: &[crate::source::publication::Choice],
) -> Result<Vec<String>> {
    definition.validate()?;
    let client = connect(spec).await?;
    let tables = bound_tables(&client, definition).await?;
    let plan = crate::source::publication::publish_bound(
        &client,
        &definition.publication,
        &tables,
        choices,
    )
    .await?;
    let mut store = Store::open(store_dir)?;
    definition.save(&mut store)?;
    Ok(plan.statements)
}

/// The tables `definition` binds, as the server names them (each must be readable).
pub(super) async fn bound_tables(
    client: &Client,
    definition: &Definition,
) -> Result<Vec<crate::source::publication::TableRef>> {
    let readable = crate::source::discovery::discover(client, None).await?;
    let mut tables = Vec::with_capacity(definition.bindings.len());
    for binding in &definition.bindings {
        let found = crate::source::discovery::bound_table(&readable, binding, "bindings")?;
        tables.push(crate::source::publication::TableRef::new(
            &found.schema,
            &found.table,
        ));
    }
    Ok(tables)
}

/// What "Save and publish" followed by starting the capture will do, in order, worked out before
/// anything runs ([`plan_publish`]).
#[derive(Debug, Clone, Serialize, ts_rs::TS)]
#[serde(rename_all = "camelCase")]
pub struct PublishPlan {
    /// The publication's part: exactly the statements [`publish_with`] runs (the same
    /// [`crate::source::publication::plan`]), and the tables without a usable replica identity.
    pub publication: crate::source::publication::Plan,
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
    choices: &[crate::source::publication::Choice],
    running: bool,
) -> Result<PublishPlan> {
    definition.validate()?;
    slot::validate_name(&definition.slot)?;
    let client = connect(spec).await?;
    let tables = bound_tables(&client, definition).await?;
    let publication = crate::source::publication::plan(
        &client,
        &crate::source::publication::Request {
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
