//! `tidepool binding` and `tidepool discover`: which tables are captured into which collections.

use super::*;

#[derive(Subcommand)]
pub(super) enum BindingCommand {
    /// Lists the bindings: table, collection, mode, backfill counter.
    List {
        #[command(flatten)]
        store: consumer::StoreArg,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Binds one more table (adding it to the publication); its rows are backfilled alongside the
    /// running capture unless --no-backfill.
    Add {
        #[command(flatten)]
        target: Target,
        /// The store folder (default: the profile's own store).
        #[arg(long)]
        store: Option<PathBuf>,
        /// schema.table
        table: String,
        /// The collection's name (default schema/table).
        #[arg(long)]
        collection: Option<String>,
        /// Only new changes, no backfill.
        #[arg(long)]
        no_backfill: bool,
        /// How the table is published when it has no usable replica identity.
        #[command(flatten)]
        keyless: Keyless,
    },
    /// Reads a bound table again (a re-backfill) while the capture runs.
    Backfill {
        #[command(flatten)]
        store: consumer::StoreArg,
        /// schema.table
        table: String,
    },
    /// Renames a binding's collection (the stored rows and log keep their history).
    Rename {
        #[command(flatten)]
        store: consumer::StoreArg,
        /// schema.table
        table: String,
        /// The new collection name.
        collection: String,
    },
    /// Stops capturing a table; its collection stays in the store.
    Remove {
        #[command(flatten)]
        store: consumer::StoreArg,
        /// schema.table
        table: String,
        /// Also take the table out of the profile's publication (and its insert-only companion):
        /// its changes then stop reaching the slot at all. Needs --profile.
        #[arg(long)]
        drop_from_publication: bool,
        /// Print the statements, change nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

pub(super) async fn binding_command(command: BindingCommand) -> Result<(), Error> {
    match command {
        BindingCommand::List { store, json } => {
            let store = store.dir()?;
            let definition = Definition::load_from(&store)?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&definition).map_err(Error::internal)?
                );
                return Ok(());
            }
            println!(
                "publication {}, slot {}",
                definition.publication, definition.slot
            );
            for b in &definition.bindings {
                let mode = match b.mode {
                    Mode::Full => "backfill",
                    Mode::OnlyChanges => "only new changes",
                };
                println!(
                    "{}.{} -> {} ({mode}, backfill #{})",
                    b.schema, b.table, b.collection, b.backfill
                );
            }
        }
        BindingCommand::Add {
            target,
            store,
            table,
            collection,
            no_backfill,
            keyless,
        } => {
            let store = match (store, &target.profile) {
                (Some(store), _) => store,
                (None, Some(profile)) => engine()?.profiles().store_dir(profile)?,
                (None, None) => {
                    return Err(Error::invalid_input(
                        "--store",
                        "give --store, or --profile to use the profile's own store",
                    ))
                }
            };
            let mut definition = Definition::load_from(&store)?;
            let (schema, table) = tidepool::capture::backfill::parse_table_name(&table)?;
            if definition.binding(&schema, &table).is_some() {
                return Err(Error::invalid_input(
                    "table",
                    format!("{schema}.{table} is bound already"),
                ));
            }
            let mut binding = Binding::new(&schema, &table);
            let taken = definition
                .bindings
                .iter()
                .map(|b| b.collection.clone())
                .collect();
            binding.collection = match collection {
                Some(name) => name,
                None => tidepool::binding::unique_collection_names(
                    &[(schema.clone(), table.clone())],
                    &taken,
                )?
                .remove(0),
            };
            if no_backfill {
                binding.mode = Mode::OnlyChanges;
            }
            let collection = binding.collection.clone();
            definition.bindings.push(binding);
            let spec = spec_for(&target)?;
            for statement in
                tidepool::capture::publish_with(&spec, &store, &definition, &keyless.parse()?)
                    .await?
            {
                eprintln!("ran: {statement}");
            }
            eprintln!("bound {schema}.{table} to {collection}");
        }
        BindingCommand::Backfill { store, table } => {
            edit_binding(&store.dir()?, &table, |b| {
                b.backfill += 1;
                eprintln!(
                    "{}.{}: backfill #{} requested",
                    b.schema, b.table, b.backfill
                );
            })?;
        }
        BindingCommand::Rename {
            store,
            table,
            collection,
        } => {
            edit_binding(&store.dir()?, &table, |b| b.collection = collection.clone())?;
        }
        BindingCommand::Remove {
            store: store_arg,
            table,
            drop_from_publication,
            dry_run,
        } => {
            let store = store_arg.dir()?;
            let mut definition = Definition::load_from(&store)?;
            let (schema, name) = tidepool::capture::backfill::parse_table_name(&table)?;
            let before = definition.bindings.len();
            definition
                .bindings
                .retain(|b| !(b.schema == schema && b.table == name));
            if definition.bindings.len() == before {
                return Err(Error::invalid_input(
                    "table",
                    format!("{table} is not bound"),
                ));
            }
            // The statements are planned (and shown) before anything changes, the binding included.
            let dropping = if drop_from_publication {
                let profile = store_arg.profile.clone().ok_or_else(|| {
                    Error::invalid_input(
                        "--drop-from-publication",
                        "give --profile: its connection alters the publication",
                    )
                })?;
                let spec = spec_for(&Target {
                    url: None,
                    profile: Some(profile),
                })?;
                let client = connection::connect(&spec).await?;
                let statements = tidepool::source::publication::drop_table_statements(
                    &client,
                    &definition.publication,
                    &tidepool::source::publication::TableRef::new(&schema, &name),
                )
                .await?;
                if statements.is_empty() {
                    eprintln!(
                        "{schema}.{name} is not in publication {}",
                        tidepool::source::sql::ident(&definition.publication)
                    );
                }
                Some((client, statements))
            } else {
                None
            };
            if dry_run {
                for statement in dropping.iter().flat_map(|(_, s)| s) {
                    println!("{statement}");
                }
                return Ok(());
            }
            definition.save(&mut Store::open(&store)?)?;
            eprintln!("unbound {schema}.{name}; its collection stays in the store");
            if let Some((client, statements)) = dropping {
                for statement in statements {
                    println!("{statement}");
                    client
                        .batch_execute(&statement)
                        .await
                        .map_err(|e| Error::from_postgres(&e, &statement))?;
                }
            }
        }
    }
    Ok(())
}

/// Loads the store's definition, changes one binding, validates and saves it.
pub(super) fn edit_binding(
    store: &std::path::Path,
    table: &str,
    change: impl FnOnce(&mut Binding),
) -> Result<(), Error> {
    let mut definition = Definition::load_from(store)?;
    let (schema, name) = tidepool::capture::backfill::parse_table_name(table)?;
    let binding = definition
        .bindings
        .iter_mut()
        .find(|b| b.schema == schema && b.table == name)
        .ok_or_else(|| Error::invalid_input("table", format!("{table} is not bound")))?;
    change(binding);
    definition.save(&mut Store::open(store)?)?;
    Ok(())
}

pub(super) async fn discover(
    target: &Target,
    publication: Option<String>,
    json: bool,
) -> Result<(), Error> {
    let spec = spec_for(target)?;
    let publication = match (publication, &target.profile) {
        (Some(p), _) => Some(p),
        (None, Some(name)) => Some(engine()?.profiles().get(name)?.publication),
        (None, None) => None,
    };
    let client = connection::connect(&spec).await?;
    let tables = tidepool::source::discovery::discover(&client, publication.as_deref()).await?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&tables).map_err(Error::internal)?
        );
        return Ok(());
    }
    for t in &tables {
        let key = match t.key_source {
            tidepool::source::discovery::KeySource::PrimaryKey => {
                format!("primary key ({})", t.key.join(", "))
            }
            tidepool::source::discovery::KeySource::UniqueIndex => {
                format!(
                    "unique index {} ({})",
                    t.key_index.as_deref().unwrap_or("?"),
                    t.key.join(", ")
                )
            }
            tidepool::source::discovery::KeySource::None => {
                "no key: captured as changes keyed by position".to_string()
            }
        };
        let rows = t
            .estimated_rows
            .map_or("rows unknown".to_string(), |r| format!("~{r} rows"));
        let published = if publication.is_some() {
            if t.in_publication {
                ", published"
            } else {
                ", not published"
            }
        } else {
            ""
        };
        println!(
            "{}\t{key}; {rows}, {} kB{}{published}; replica identity {}",
            t.collection.name,
            t.size_bytes / 1024,
            if t.partitioned { ", partitioned" } else { "" },
            t.replica_identity
        );
    }
    Ok(())
}
