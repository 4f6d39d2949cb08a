//! The `tidepool` command line: everything the desktop app does, for scripts, headless machines and
//! benchmarks. Each subcommand is a thin wrapper over one engine call.
//!
//! Passwords never travel in arguments: a `--url` that carries one is refused; the password comes from
//! `PGPASSWORD`, the libpq password file, or a prompt on the terminal.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

mod binding;
mod capture;
mod consumer;
mod neon;
mod profiles;
mod setup;
mod slot;
mod store;

use tidepool::app::api::Tidepool;
use tidepool::app::profile::{self, PasswordStorage, ProfileDraft, SecretState};
use tidepool::binding::{Binding, Definition, Mode};
use tidepool::capture::CaptureOptions;
use tidepool::secrets::Secret;
use tidepool::source::connection::{self, ConnectionSpec, ReplicationRight, ServerFacts};
use tidepool::source::conninfo::Conninfo;
use tidepool::source::pgoutput::Lsn;
use tidepool::source::pgpass;
use tidepool::store::Store;
use tidepool::{Error, ErrorKind};

use binding::{binding_command, discover, BindingCommand};
use capture::{capture, CaptureArgs};
use neon::{neon_command, NeonCommand};
use profiles::{profile_command, ProfileCommand};
use setup::{check, setup, Keyless, RunAsFlag, Scope, SetupCommand};
use slot::{drop_slot, health};
use store::{collections, discard_store, preview};

#[derive(Parser)]
#[command(
    name = "tidepool",
    version,
    about = "From PostgreSQL to a live, local stream of its changes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Connects and shows the server's version, the role, wal_level and whether the role may replicate.
    Check {
        #[command(flatten)]
        target: Target,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        scope: Scope,
        /// Exit with status 3 when a check fails.
        #[arg(long)]
        strict: bool,
    },
    /// Runs one setup fix; with --dry-run, prints the SQL or HTTP request it would run.
    Setup {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        scope: Scope,
        /// Print what would run, run nothing.
        #[arg(long)]
        dry_run: bool,
        /// Run the fix as this saved profile (typically the database owner's), which must be for
        /// the same host, port and database; the checks stay the capture role's.
        #[arg(long = "as", value_name = "PROFILE", conflicts_with = "as_user")]
        as_profile: Option<String>,
        /// Run the fix as this role, its password read from the terminal (or one line of standard
        /// input), used for this run and not kept.
        #[arg(long, value_name = "ROLE")]
        as_user: Option<String>,
        #[command(subcommand)]
        action: SetupCommand,
    },
    /// Saved connection profiles (shared with the desktop app; passwords live in the OS keychain).
    #[command(subcommand)]
    Profile(ProfileCommand),
    /// Neon: the API key (kept in the OS keychain), projects, and linking a profile to its project.
    #[command(subcommand)]
    Neon(NeonCommand),
    /// Streams every change from a pgoutput slot into a local store, exactly once.
    Capture(CaptureArgs),
    /// The tables a store's capture binds to collections; edits reach a running capture within a
    /// second (a new table is backfilled alongside the stream).
    #[command(subcommand)]
    Binding(BindingCommand),
    /// Consumers: deliver a store's changes to applications by webhook or the pull API.
    #[command(subcommand)]
    Consumer(consumer::ConsumerCommand),
    /// Prints the pull API's bearer token (kept in the OS keychain; made on first use).
    ApiToken {
        #[command(flatten)]
        store: consumer::StoreArg,
    },
    /// Lists the tables the role can read as collections: key, JSON Schema, size, publication membership.
    Discover {
        #[command(flatten)]
        target: Target,
        /// Mark which tables this publication publishes (default: the profile's).
        #[arg(long)]
        publication: Option<String>,
        /// Print JSON (with the JSON Schemas) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Lists the store's collections: name, current rows, changes.
    Collections {
        #[command(flatten)]
        store: consumer::StoreArg,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Prints a collection's current rows (or its change log) as JSON lines.
    Preview {
        #[command(flatten)]
        store: consumer::StoreArg,
        /// The collection, e.g. public/orders.
        collection: String,
        /// The change log in order instead of the current rows.
        #[arg(long)]
        changes: bool,
        /// At most this many documents.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Only documents whose field reads as the value: `--where status=shipped` (`null`, `true`
        /// and numbers as in JSON).
        #[arg(long = "where", value_name = "FIELD=VALUE")]
        filter: Option<String>,
        /// With --where: the field contains the value instead of equalling it.
        #[arg(long)]
        contains: bool,
    },
    /// The health of a profile's slot: WAL it holds, wal_status, safe_wal_size, Neon's removal clock.
    Health {
        /// The saved profile.
        #[arg(long)]
        profile: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Deletes a profile's local store (captured rows, snapshots, consumers) and its keychain entries,
    /// and drops its slot, keeping the profile; the next capture backfills again. The way out when an
    /// encrypted store's key is lost. Nothing else on the source is touched.
    DiscardStore {
        /// The saved profile.
        #[arg(long)]
        profile: String,
        /// Required: the local copy is deleted.
        #[arg(long)]
        yes: bool,
    },
    /// Drops a profile's slot (the server frees its WAL) and empties the local store but for the
    /// capture definition, so the next capture backfills again.
    DropSlot {
        /// The saved profile.
        #[arg(long)]
        profile: String,
        /// Required: the slot's unconsumed changes are lost.
        #[arg(long)]
        confirm: bool,
    },
    /// Writes the profile's capture for another engine: `estuary` (a flow.yaml for `flowctl catalog
    /// publish`) or `sequin` (a sequin.yaml for `sequin config apply`, with the consumers as sinks).
    /// Secrets are placeholders; the file says what the other engine does differently.
    Export {
        /// estuary or sequin.
        engine: String,
        /// The saved profile.
        #[arg(long)]
        profile: String,
        /// Write to this file instead of standard output.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Starts a throwaway local PostgreSQL with a sample shop schema and a trickle of writes, saves the
    /// "Demo database" profile for it, and removes both when stopped (Ctrl-C).
    Demo {
        /// Milliseconds between two rounds of writes.
        #[arg(long, default_value_t = 1000)]
        interval_ms: u64,
    },
}

/// Which database: a connection string or a saved profile.
#[derive(Args)]
#[group(required = true, multiple = false)]
struct Target {
    /// A postgres:// URL or key=value string, without the password.
    #[arg(long)]
    url: Option<String>,
    /// A saved profile's name.
    #[arg(long)]
    profile: Option<String>,
}

#[tokio::main]
async fn main() -> ExitCode {
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TIDEPOOL_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let (result, json) = match cli.command {
        Command::Check {
            target,
            json,
            scope,
            strict,
        } => match check(&target, json, &scope).await {
            Ok(true) if strict => return ExitCode::from(3),
            Ok(_) => (Ok(()), json),
            Err(e) => (Err(e), json),
        },
        Command::Setup {
            target,
            scope,
            dry_run,
            as_profile,
            as_user,
            action,
        } => {
            let run_as = RunAsFlag {
                profile: as_profile,
                user: as_user,
            };
            (
                setup(&target, &scope, dry_run, &run_as, action).await,
                false,
            )
        }
        Command::Profile(command) => {
            let json = matches!(command, ProfileCommand::List { json: true });
            (profile_command(command).await, json)
        }
        Command::Neon(command) => {
            let json = matches!(command, NeonCommand::Projects { json: true });
            (neon_command(command).await, json)
        }
        Command::Capture(args) => (capture(args).await, false),
        Command::Consumer(command) => {
            let json = matches!(
                command,
                consumer::ConsumerCommand::List { json: true, .. }
                    | consumer::ConsumerCommand::Show { json: true, .. }
            );
            (consumer::run(command), json)
        }
        Command::ApiToken { store } => (consumer::api_token(&store), false),
        Command::Binding(command) => {
            let json = matches!(command, BindingCommand::List { json: true, .. });
            (binding_command(command).await, json)
        }
        Command::Discover {
            target,
            publication,
            json,
        } => (discover(&target, publication, json).await, json),
        Command::Collections { store, json } => (
            store.dir().and_then(|store| collections(&store, json)),
            json,
        ),
        Command::Preview {
            store,
            collection,
            changes,
            limit,
            filter,
            contains,
        } => (
            store.dir().and_then(|store| {
                preview(
                    &store,
                    &collection,
                    changes,
                    limit,
                    filter.as_deref(),
                    contains,
                )
            }),
            false,
        ),
        Command::Demo { interval_ms } => (demo(interval_ms).await, false),
        Command::Health { profile, json } => (health(&profile, json).await, json),
        Command::DropSlot { profile, confirm } => (drop_slot(&profile, confirm).await, false),
        Command::DiscardStore { profile, yes } => (discard_store(&profile, yes).await, false),
        Command::Export {
            engine,
            profile,
            output,
        } => (export(&engine, &profile, output.as_deref()), false),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            if json {
                println!("{}", serde_json::json!({ "error": err }));
            } else {
                eprintln!("error ({}): {}", err.kind(), err.message());
            }
            ExitCode::FAILURE
        }
    }
}

/// Runs the demo database until Ctrl-C, then removes it and its profile.
async fn demo(interval_ms: u64) -> Result<(), Error> {
    let engine = std::sync::Arc::new(engine()?);
    let interval = std::time::Duration::from_millis(interval_ms.max(10));
    let view = {
        let engine = engine.clone();
        tokio::task::spawn_blocking(move || engine.start_demo(interval))
            .await
            .map_err(|e| Error::internal(format!("starting the demo: {e}")))??
    };
    println!(
        "Demo database running at {} (profile \"{}\", database {}); Ctrl-C removes it.",
        view.address,
        view.profile.name,
        tidepool::app::demo::DEMO_DATABASE
    );
    let _ = tokio::signal::ctrl_c().await;
    let removed = tokio::task::spawn_blocking(move || engine.stop_demo())
        .await
        .map_err(|e| Error::internal(format!("removing the demo: {e}")))??;
    if let Some(removed) = removed {
        println!("Demo removed: {}", removed.describe());
    }
    Ok(())
}

/// The publication and slot given, else the profile's, else the defaults.
fn publication_and_slot(
    target: &Target,
    publication: Option<String>,
    slot: Option<String>,
) -> Result<(String, String), Error> {
    let saved = match &target.profile {
        Some(name) => Some(engine()?.profiles().get(name)?),
        None => None,
    };
    Ok((
        publication
            .or_else(|| saved.as_ref().map(|p| p.publication.clone()))
            .unwrap_or_else(|| profile::DEFAULT_PUBLICATION.into()),
        slot.or_else(|| saved.as_ref().map(|p| p.slot.clone()))
            .unwrap_or_else(|| profile::DEFAULT_SLOT.into()),
    ))
}

fn export(engine: &str, profile: &str, output: Option<&std::path::Path>) -> Result<(), Error> {
    let exported = crate::engine()?.export_capture(profile, engine.parse()?)?;
    match output {
        Some(path) => {
            std::fs::write(path, &exported.text).map_err(|e| {
                Error::invalid_input("--output", format!("cannot write {}: {e}", path.display()))
            })?;
            eprintln!("wrote {} ({})", path.display(), exported.file_name);
        }
        None => print!("{}", exported.text),
    }
    Ok(())
}

/// The engine over the saved profiles: the same API the desktop app holds.
fn engine() -> Result<Tidepool, Error> {
    Ok(Tidepool::open(&profile::data_dir()?))
}

/// The spec for `--url` or `--profile`, with the password found without it ever being an argument.
fn spec_for(target: &Target) -> Result<ConnectionSpec, Error> {
    match (&target.url, &target.profile) {
        (Some(url), _) => spec_from_url(url),
        (None, Some(name)) => {
            let engine = engine()?;
            let profiles = engine.profiles();
            let profile = profiles.get(name)?;
            let typed = match profile.password {
                PasswordStorage::Keychain => None,
                PasswordStorage::AskEachTime => {
                    let spec = profiles.spec(name, None)?;
                    password_for(&spec)?
                }
            };
            profiles.spec(name, typed)
        }
        (None, None) => Err(Error::invalid_input("--url", "give --url or --profile")),
    }
}

/// Parses `--url` and finds the password without it ever being an argument.
fn spec_from_url(url: &str) -> Result<ConnectionSpec, Error> {
    let mut spec = Conninfo::parse(url)?.into_spec();
    if spec.password.is_some() {
        return Err(password_in_url());
    }
    spec.password = password_for(&spec)?;
    Ok(spec)
}

/// Arguments are visible to every process on the machine: a password never travels in one.
fn password_in_url() -> Error {
    Error::invalid_input(
        "--url",
        "contains a password, which would be visible to every process on this machine; remove it and \
         set PGPASSWORD, add it to ~/.pgpass, or type it when asked",
    )
}

fn password_for(spec: &ConnectionSpec) -> Result<Option<Secret>, Error> {
    if let Some(password) = std::env::var_os("PGPASSWORD") {
        let password = password
            .into_string()
            .map_err(|_| Error::invalid_input("PGPASSWORD", "is not valid UTF-8"))?;
        return Ok(Some(Secret::new(password)));
    }
    if let Some(path) = pgpass::default_path() {
        if let Some(password) =
            pgpass::lookup(&path, &spec.host, spec.port, &spec.database, &spec.user)
        {
            return Ok(Some(password));
        }
    }
    if std::io::stdin().is_terminal() {
        let prompt = format!("Password for {}@{}: ", spec.user, spec.target());
        let typed = rpassword::prompt_password(prompt).map_err(|e| {
            Error::new(
                ErrorKind::InvalidInput,
                format!("reading the password: {e}"),
            )
        })?;
        return Ok((!typed.is_empty()).then(|| Secret::new(typed)));
    }
    Ok(None)
}

/// A table (schema, name) and the collection name given to it.
type CollectionName = ((String, String), String);
