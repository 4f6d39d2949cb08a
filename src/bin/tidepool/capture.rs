//! `tidepool capture`: runs a capture (and its deliveries) in this process until stopped.

use super::*;

/// What `tidepool capture` takes.
#[derive(Args)]
pub(super) struct CaptureArgs {
    #[command(flatten)]
    pub(super) target: Target,
    /// The store folder (default: the profile's own store, the one the app uses).
    #[arg(long)]
    pub(super) store: Option<PathBuf>,
    /// How long the store keeps changes that are no row's current state, for consumers that fall
    /// behind: off (keep everything, the default) or e.g. 7d, 12h, 30m. Saved with the store.
    #[arg(long, value_name = "DURATION")]
    pub(super) retention: Option<String>,
    /// Publication to decode with (default: the profile's, else tidepool_publication).
    #[arg(long)]
    pub(super) publication: Option<String>,
    /// Replication slot (default: the profile's, else tidepool_slot).
    #[arg(long)]
    pub(super) slot: Option<String>,
    /// Create the slot if it does not exist.
    #[arg(long)]
    pub(super) create_slot: bool,
    /// Exit once every transaction committed at or before this LSN (X/Y) is stored.
    #[arg(long)]
    pub(super) stop_at_lsn: Option<String>,
    /// Tables to capture, schema.table,…: their existing rows are backfilled first, in the snapshot of
    /// a new slot, then their changes stream from where the snapshot ends.
    #[arg(long, value_delimiter = ',')]
    pub(super) tables: Vec<String>,
    /// Capture only new changes of --tables, without backfilling their existing rows.
    #[arg(long)]
    pub(super) no_backfill: bool,
    /// Name a table's collection: schema.table=name (default schema/table). Repeatable.
    #[arg(long = "collection", value_name = "TABLE=NAME")]
    pub(super) collections: Vec<String>,
    /// Save and publish: print what it will do (the publication's SQL, the slot, the tables
    /// backfilled), make the publication contain --tables (creating it if missing), create the slot,
    /// backfill and stream.
    #[arg(long)]
    pub(super) publish: bool,
    /// With --publish: print what it would do and exit; nothing runs.
    #[arg(long, requires = "publish")]
    pub(super) dry_run: bool,
    /// After a refusal because the slot can no longer send every change (it was dropped, recreated,
    /// advanced or invalidated): create the slot again if needed, record the gap in the store, read
    /// every backfilled table again, and stream on.
    #[arg(long)]
    pub(super) resync: bool,
    /// With --publish: how each table without a usable replica identity is published.
    #[command(flatten)]
    pub(super) keyless: Keyless,
    /// Serve the pull API on this address (127.0.0.1:7376 when given without one; port 0 takes a
    /// free port, printed on standard error); webhook consumers are delivered in any case.
    #[arg(long, value_name = "ADDR", num_args = 0..=1, default_missing_value = tidepool::deliver::pull::DEFAULT_LISTEN)]
    pub(super) listen: Option<String>,
}

/// `schema.table=name` pairs.
pub(super) fn collection_names(pairs: &[String]) -> Result<Vec<CollectionName>, Error> {
    pairs
        .iter()
        .map(|pair| {
            let (table, name) = pair.rsplit_once('=').ok_or_else(|| {
                Error::invalid_input("--collection", format!("'{pair}' is not schema.table=name"))
            })?;
            Ok((
                tidepool::capture::backfill::parse_table_name(table)?,
                name.to_string(),
            ))
        })
        .collect()
}

/// The bindings of `--tables`: each named by `--collection`, else by the name `saved` (the store's
/// definition) gives it, which never changes, else by its default name made unique among the tables
/// given and against the names in use.
pub(super) fn bindings_for(
    tables: &[String],
    no_backfill: bool,
    names: &[String],
    saved: Option<&Definition>,
) -> Result<Vec<Binding>, Error> {
    let names = collection_names(names)?;
    let parsed = tables
        .iter()
        .map(|t| tidepool::capture::backfill::parse_table_name(t))
        .collect::<Result<Vec<_>, Error>>()?;
    let saved_name = |schema: &str, table: &str| {
        saved
            .and_then(|d| d.binding(schema, table))
            .map(|b| b.collection.clone())
    };
    let mut taken: std::collections::HashSet<String> =
        names.iter().map(|(_, name)| name.clone()).collect();
    taken.extend(
        saved
            .iter()
            .flat_map(|d| &d.bindings)
            .filter(|b| !parsed.iter().any(|(s, t)| *s == b.schema && *t == b.table))
            .map(|b| b.collection.clone()),
    );
    let explicit = |schema: &str, table: &str| {
        names
            .iter()
            .find(|((s, t), _)| s == schema && t == table)
            .map(|(_, name)| name.clone())
    };
    let fresh: Vec<(String, String)> = parsed
        .iter()
        .filter(|(s, t)| explicit(s, t).is_none() && saved_name(s, t).is_none())
        .cloned()
        .collect();
    let mut defaults = fresh
        .iter()
        .cloned()
        .zip(tidepool::binding::unique_collection_names(&fresh, &taken)?);
    let mut bindings = Vec::with_capacity(tables.len());
    for (schema, table) in parsed {
        let mut binding = Binding::new(&schema, &table);
        if let Some(name) = explicit(&schema, &table).or_else(|| saved_name(&schema, &table)) {
            binding.collection = name;
        } else if let Some((_, name)) =
            defaults.find(|(t, _)| *t == (schema.clone(), table.clone()))
        {
            binding.collection = name;
        }
        if no_backfill {
            binding.mode = Mode::OnlyChanges;
        }
        bindings.push(binding);
    }
    if let Some(((schema, table), _)) = names.iter().find(|(t, _)| {
        !bindings
            .iter()
            .any(|b| (b.schema.clone(), b.table.clone()) == *t)
    }) {
        return Err(Error::invalid_input(
            "--collection",
            format!("{schema}.{table} is not one of --tables"),
        ));
    }
    Ok(bindings)
}

pub(super) async fn capture(mut args: CaptureArgs) -> Result<(), Error> {
    let store_dir = match (&args.store, &args.target.profile) {
        (Some(dir), _) => dir.clone(),
        (None, Some(profile)) => engine()?.profiles().store_dir(profile)?,
        (None, None) => {
            return Err(Error::invalid_input(
                "--store",
                "give --store, or --profile to use the profile's own store",
            ))
        }
    };
    let store = store_dir;
    if let Some(text) = args.retention.take() {
        let retention = tidepool::store::retention::parse(&text)?;
        tidepool::store::retention::set_retention(&mut Store::open(&store)?, retention)?;
        eprintln!(
            "log retention: {}",
            tidepool::store::retention::describe(retention)
        );
    }
    let saved = match Store::open_existing(&store)? {
        Some(store) => Definition::load(&store)?,
        None => None,
    };
    let bindings = bindings_for(
        &args.tables,
        args.no_backfill,
        &args.collections,
        saved.as_ref(),
    )?;
    let spec = spec_for(&args.target)?;
    let (publication, slot) = publication_and_slot(&args.target, args.publication, args.slot)?;
    let stop_at = args
        .stop_at_lsn
        .map(|l| {
            l.parse::<Lsn>()
                .map_err(|e| Error::invalid_input("--stop-at-lsn", e.message()))
        })
        .transpose()?;
    if args.publish {
        if bindings.is_empty() {
            return Err(Error::invalid_input(
                "--tables",
                "--publish needs the tables to capture",
            ));
        }
        let definition = Definition {
            profile: args.target.profile.clone(),
            publication: publication.clone(),
            slot: slot.clone(),
            bindings: bindings.clone(),
        };
        let choices = args.keyless.parse()?;
        // The same plan the app shows before its one-click "Save and publish".
        let plan =
            tidepool::capture::plan_publish(&spec, &store, &definition, &choices, false).await?;
        eprintln!("save and publish will:");
        for (n, step) in plan.steps.iter().enumerate() {
            eprintln!("  {}. {step}", n + 1);
        }
        if args.dry_run {
            return Ok(());
        }
        for statement in
            tidepool::capture::publish_with(&spec, &store, &definition, &choices).await?
        {
            eprintln!("ran: {statement}");
        }
    }
    if args.resync {
        let done = tidepool::source::continuity::resync(&spec, &store, &slot).await?;
        eprintln!(
            "resync: {}; the change log has a gap from {} to {}; re-backfilling {}",
            if done.slot_created {
                "slot created"
            } else {
                "slot kept"
            },
            done.gap.from,
            done.gap.to,
            if done.gap.rebackfilled.is_empty() {
                "nothing (no collection was backfilled)".to_string()
            } else {
                done.gap.rebackfilled.join(", ")
            }
        );
    }
    let progress: std::sync::Arc<
        dyn Fn(&tidepool::capture::backfill::BackfillProgress) + Send + Sync,
    > = std::sync::Arc::new(|p| {
        let of = p
            .estimated_rows
            .map_or(String::new(), |e| format!(" of ~{e}"));
        let left = p
            .seconds_left
            .map_or(String::new(), |s| format!(", ~{s:.0} s left"));
        let state = if p.done { "done" } else { "reading" };
        eprintln!(
            "backfill {}: {state} {} rows{of} ({:.0} rows/s{left})",
            p.collection, p.rows, p.rows_per_second
        );
    });
    // Delivery reads the store beside the capture, woken by each store commit.
    let (commits, wake) = tokio::sync::watch::channel(0u64);
    let observer =
        tidepool::capture::Observer(std::sync::Arc::new(move |_: &tidepool::capture::Flush| {
            commits.send_modify(|n| *n += 1);
        }));
    let database = tidepool::deliver::Database {
        name: args
            .target
            .profile
            .clone()
            .unwrap_or_else(|| spec.database.clone()),
        database: spec.database.clone(),
        hostname: spec.host.clone(),
    };
    let pull = match &args.listen {
        Some(addr) => {
            let listener = tidepool::deliver::pull::bind(addr).await?;
            let token =
                tidepool::deliver::pull::api_token(&store, &tidepool::secrets::Keychain::open()?)?;
            // The bound address, not the asked one: `--listen 127.0.0.1:0` takes a free port, and
            // this line is how a script (and the tests) learn which.
            let bound = listener
                .local_addr()
                .map_or_else(|_| addr.clone(), |a| a.to_string());
            eprintln!("pull API on http://{bound} (token: `tidepool api-token`)");
            Some(tidepool::deliver::pull::serve(
                listener,
                tidepool::deliver::pull::PullOptions {
                    store_dir: store.clone(),
                    database: database.clone(),
                    token,
                    wake: wake.clone(),
                },
            ))
        }
        None => None,
    };
    let delivery = tidepool::deliver::run(tidepool::deliver::DeliveryOptions {
        store_dir: store.clone(),
        database,
        keychain: tidepool::secrets::Keychain::open().ok(),
        wake,
    });
    let options = CaptureOptions {
        spec,
        store_dir: store,
        publication,
        slot,
        create_slot: args.create_slot || args.publish || !bindings.is_empty(),
        stop_at,
        observer: Some(observer),
        bindings,
        backfill_progress: Some(progress),
    };
    let serving = async {
        match pull {
            Some(server) => server.await,
            None => std::future::pending().await,
        }
    };
    let report = tokio::select! {
        report = tidepool::capture::run(options) => report?,
        Err(e) = delivery => return Err(e.context("delivery")),
        Err(e) = serving => return Err(e.context("pull API")),
    };
    eprintln!(
        "backfilled {} rows; stored {} transactions ({} changes, {} already stored skipped); checkpoint {}",
        report.backfilled_rows, report.transactions, report.changes, report.skipped_transactions, report.checkpoint
    );
    Ok(())
}
