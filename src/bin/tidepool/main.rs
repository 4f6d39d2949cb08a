//! The `tidepool` command line: everything the desktop app does, for scripts, headless machines and
//! benchmarks. Each subcommand is a thin wrapper over one engine call.
//!
//! Passwords never travel in arguments: a `--url` that carries one is refused; the password comes from
//! `PGPASSWORD`, the libpq password file, or a prompt on the terminal.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

#[path = "tidepool/consumer.rs"]
mod consumer;
use tidepool::binding::{Binding, Definition, Mode};
use tidepool::capture::CaptureOptions;
use tidepool::connection::{self, ConnectionSpec, ReplicationRight, ServerFacts};
use tidepool::conninfo::Conninfo;
use tidepool::pgoutput::Lsn;
use tidepool::profile::{self, PasswordStorage, ProfileDraft, Profiles, SecretState};
use tidepool::secrets::Secret;
use tidepool::store::Store;
use tidepool::{pgpass, Error, ErrorKind};

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

/// How each table without a usable replica identity is published: without a choice, publishing
/// such a table would make PostgreSQL refuse every UPDATE and DELETE on it, so it is refused.
#[derive(Args, Clone, Default)]
struct Keyless {
    /// schema.table=leave-out|replica-identity-full|insert-only, for a table with no primary key or
    /// replica identity (repeatable).
    #[arg(long = "keyless", value_name = "TABLE=CHOICE")]
    choices: Vec<String>,
}

impl Keyless {
    fn parse(&self) -> Result<Vec<tidepool::publication::Choice>, Error> {
        use tidepool::publication::{Choice, Handling};
        self.choices
            .iter()
            .map(|pair| {
                let (table, choice) = pair.rsplit_once('=').ok_or_else(|| {
                    Error::invalid_input(
                        "--keyless",
                        format!("'{pair}' is not schema.table=choice"),
                    )
                })?;
                let (schema, table) = tidepool::backfill::parse_table_name(table)?;
                let handling = match choice {
                    "leave-out" => Handling::LeaveOut,
                    "replica-identity-full" | "full" => Handling::ReplicaIdentityFull,
                    "insert-only" => Handling::InsertOnly,
                    other => {
                        return Err(Error::invalid_input(
                            "--keyless",
                            format!(
                                "'{other}' is not leave-out, replica-identity-full or insert-only"
                            ),
                        ))
                    }
                };
                Ok(Choice {
                    schema,
                    table,
                    handling,
                })
            })
            .collect()
    }
}

/// Prints what a publication plan does with each table that has no usable replica identity.
fn print_notes(plan: &tidepool::publication::Plan) {
    for note in &plan.notes {
        eprintln!("note: {note}");
    }
}

/// The publication, slot and tables the checks and fixes are about.
#[derive(Args)]
struct Scope {
    /// Publication (default: the profile's, else tidepool_publication).
    #[arg(long)]
    publication: Option<String>,
    /// Slot (default: the profile's, else tidepool_slot).
    #[arg(long)]
    slot: Option<String>,
    /// Tables to capture, schema.table,… (default: the publication's).
    #[arg(long, value_delimiter = ',')]
    tables: Vec<String>,
    /// The Neon project the database belongs to (enables the Neon fixes; default: the profile's link).
    #[arg(long)]
    neon_project: Option<String>,
    /// The Neon branch (default: the profile's link).
    #[arg(long)]
    neon_branch: Option<String>,
}

#[derive(Subcommand)]
enum SetupCommand {
    /// ALTER SYSTEM SET wal_level = logical (then restart PostgreSQL).
    WalLevel,
    /// Gives a role REPLICATION.
    GrantReplication {
        /// The role (default: the connecting one).
        #[arg(long)]
        role: Option<String>,
    },
    /// Creates a replication role with a generated password, saved with a new profile in the keychain.
    CreateRole {
        /// The new role.
        #[arg(long)]
        role: String,
        /// The name of the new profile that uses it (with --profile, by default that profile's
        /// name followed by the role in parentheses; with --url, required).
        #[arg(long)]
        save_as: Option<String>,
    },
    /// The three GRANTs of the setup guide for one schema.
    GrantSchema {
        /// The schema.
        #[arg(long)]
        schema: String,
        /// The role (default: the connecting one).
        #[arg(long)]
        role: Option<String>,
    },
    /// Creates the publication or adds exactly --tables to it (never FOR ALL TABLES).
    Publication {
        #[command(flatten)]
        keyless: Keyless,
        /// FOR ALL TABLES instead of --tables; refused while a table without a usable replica
        /// identity has no --keyless schema.table=replica-identity-full.
        #[arg(long)]
        all_tables: bool,
    },
    /// Creates the slot (pgoutput).
    CreateSlot,
    /// Drops the slot: its consumer loses its position.
    DropSlot {
        /// Confirms the slot may go.
        #[arg(long)]
        confirm: bool,
    },
    /// ALTER TABLE … REPLICA IDENTITY FULL.
    ReplicaIdentityFull {
        /// schema.table
        #[arg(long)]
        table: String,
    },
    /// Neon: turns on logical replication for --neon-project (cannot be undone; restarts computes).
    NeonLogicalReplication {
        /// Confirms the restart and that it cannot be undone.
        #[arg(long)]
        confirm: bool,
    },
    /// Neon: creates a role through the API (it may replicate); its password goes to the keychain
    /// with a new profile. Needs --profile linked to a Neon project (or --neon-project/--neon-branch).
    NeonCreateRole {
        /// The new role.
        #[arg(long)]
        role: String,
    },
    /// Neon: reads the profile's role password from the API into the keychain.
    NeonRevealPassword,
    /// Neon: resets the profile's role password; the new one goes to the keychain.
    NeonResetPassword {
        /// Confirms that clients using the old password stop connecting.
        #[arg(long)]
        confirm: bool,
    },
}

#[derive(Subcommand)]
enum NeonCommand {
    /// Stores the Neon API key in the OS keychain, read from standard input (never an argument).
    Key,
    /// Lists the projects the key can see, with their branches.
    Projects {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Links a profile to its Neon project and branch (found from its host unless given).
    Link {
        /// The profile's name.
        #[arg(long)]
        profile: String,
        /// The project id.
        #[arg(long, requires = "branch")]
        project: Option<String>,
        /// The branch id.
        #[arg(long, requires = "project")]
        branch: Option<String>,
    },
    /// Removes a profile's Neon link.
    Unlink {
        /// The profile's name.
        #[arg(long)]
        profile: String,
    },
}

#[derive(Subcommand)]
enum BindingCommand {
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

#[derive(Subcommand)]
enum ProfileCommand {
    /// Saves a profile; its password (from PGPASSWORD, ~/.pgpass or a prompt) goes to the OS keychain.
    Add {
        /// The profile's name.
        #[arg(long)]
        name: String,
        /// A postgres:// URL or key=value string, without the password.
        #[arg(long)]
        url: String,
        /// Publication to capture from (default tidepool_publication).
        #[arg(long)]
        publication: Option<String>,
        /// Replication slot (default tidepool_slot).
        #[arg(long)]
        slot: Option<String>,
        /// Store no password; ask for it each time.
        #[arg(long)]
        ask_password: bool,
        /// Keep the captured rows unencrypted on disk (stores are encrypted at rest by default,
        /// with a key kept in the OS keychain).
        #[arg(long)]
        plain_store: bool,
        /// Reach the database through this SSH bastion, `ssh://user@host[:port]`; the URL's host is
        /// the database as the bastion sees it.
        #[arg(long, value_name = "SSH_URL")]
        ssh: Option<String>,
        /// The private key to log in to the bastion with. It is read once into the OS keychain; its
        /// passphrase, if any, from TIDEPOOL_SSH_PASSPHRASE or a prompt.
        #[arg(long, value_name = "PATH", requires = "ssh")]
        ssh_key_file: Option<PathBuf>,
        /// The bastion's host key (`ssh-ed25519 AAAA…`, a line of its known_hosts without the host).
        #[arg(
            long,
            value_name = "KEY",
            requires = "ssh",
            conflicts_with = "trust_ssh_host_key"
        )]
        ssh_host_key: Option<String>,
        /// Accept the host key the bastion shows now (its fingerprint is printed): trust on first use.
        #[arg(long, requires = "ssh")]
        trust_ssh_host_key: bool,
    },
    /// Shows the SSH bastion's host key of a profile, and with --accept saves it as the accepted one.
    SshHostKey {
        /// The profile's name.
        #[arg(long)]
        profile: String,
        /// Accept the key shown (after comparing its fingerprint with the bastion's).
        #[arg(long)]
        accept: bool,
    },
    /// Lists the saved profiles and whether the keychain holds each one's password.
    List {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Deletes a profile, its local store (captured rows, snapshots, consumers) and its keychain
    /// entries (password, store key, consumers' secrets, pull API token).
    Remove {
        /// The profile's name.
        name: String,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(
            // The replication transport logs each lost connection as an ERROR before the capture
            // reconnects and says so itself: its own lines are for debugging.
            tracing_subscriber::EnvFilter::try_from_env("TIDEPOOL_LOG")
                .unwrap_or_else(|_| "warn,pgwire_replication=off".into()),
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

/// Deletes a profile's local store and its keychain entries; the profile stays.
async fn discard_store(profile: &str, yes: bool) -> Result<(), Error> {
    if !yes {
        return Err(Error::invalid_input(
            "--yes",
            "discarding deletes the local copy of the captured rows and drops the profile's slot (the next capture backfills again); add --yes",
        ));
    }
    let removed = tidepool::run::Runs::default()
        .discard_store(&profiles()?, profile)
        .await?;
    println!("{}", removed.describe());
    Ok(())
}

/// Prints the slot's health and its warnings.
async fn health(profile: &str, json: bool) -> Result<(), Error> {
    let health = tidepool::health::slot(&profiles()?, profile).await?;
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
async fn drop_slot(profile: &str, confirm: bool) -> Result<(), Error> {
    if !confirm {
        return Err(Error::invalid_input(
            "--confirm",
            "dropping the slot loses the changes it still holds, and the next capture backfills again; add --confirm",
        ));
    }
    tidepool::run::Runs::default()
        .stop_and_drop_slot(profile, &profiles()?)
        .await?;
    println!("Slot dropped; the next capture backfills again.");
    Ok(())
}

/// Runs the demo database until Ctrl-C, then removes it and its profile.
async fn demo(interval_ms: u64) -> Result<(), Error> {
    let profiles = profiles()?;
    let interval = std::time::Duration::from_millis(interval_ms.max(10));
    let (demo, view) = {
        let profiles = profiles.clone();
        tokio::task::spawn_blocking(move || tidepool::demo::Demo::start(&profiles, interval))
            .await
            .map_err(|e| Error::internal(format!("starting the demo: {e}")))??
    };
    println!(
        "Demo database running at {} (profile \"{}\", database {}); Ctrl-C removes it.",
        view.address,
        view.profile.name,
        tidepool::demo::DEMO_DATABASE
    );
    let _ = tokio::signal::ctrl_c().await;
    let removed = tokio::task::spawn_blocking(move || demo.stop(&profiles))
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
        Some(name) => Some(profiles()?.get(name)?),
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

/// The Neon project and branch the fix acts on, or an error naming the flags to give.
fn neon_branch_of(target: &tidepool::preflight::Target) -> Result<(String, String), Error> {
    match (&target.neon_project, &target.neon_branch) {
        (Some(project), Some(branch)) => Ok((project.clone(), branch.clone())),
        _ => Err(Error::invalid_input(
            "--neon-project",
            "link the profile (`tidepool neon link --profile …`) or give --neon-project and --neon-branch",
        )),
    }
}

/// The preflight target for the command line's scope.
fn preflight_target(
    target: &Target,
    spec: &ConnectionSpec,
    scope: &Scope,
) -> Result<tidepool::preflight::Target, Error> {
    let (publication, slot) =
        publication_and_slot(target, scope.publication.clone(), scope.slot.clone())?;
    let link = match &target.profile {
        Some(name) => profiles()?.get(name)?.neon,
        None => None,
    };
    Ok(tidepool::preflight::Target {
        host: spec.host.clone(),
        publication,
        slot,
        tables: scope
            .tables
            .iter()
            .map(|t| tidepool::backfill::parse_table_name(t))
            .collect::<Result<_, _>>()?,
        neon_project: scope
            .neon_project
            .clone()
            .or_else(|| link.as_ref().map(|l| l.project_id.clone())),
        neon_branch: scope
            .neon_branch
            .clone()
            .or_else(|| link.as_ref().map(|l| l.branch_id.clone())),
        slot_warn_bytes: None,
        // No capture runs in this process, and `check` has no store to ask.
        running_capture: None,
        store_history: None,
    })
}

/// Prints the server's facts and the preflight checklist; returns whether a check failed.
async fn check(target: &Target, json: bool, scope: &Scope) -> Result<bool, Error> {
    let spec = spec_for(target)?;
    let preflight = preflight_target(target, &spec, scope)?;
    let facts = connection::test_connection(&spec)
        .await
        .map_err(|e| e.in_neon_project(preflight.neon_project.as_deref()))?;
    let client = connection::connect(&spec).await?;
    let mut checks = tidepool::preflight::run(&client, &preflight).await?;
    if let Some(project) = &preflight.neon_project {
        let neon = tokio::task::spawn_blocking(tidepool::neon::Client::from_keychain)
            .await
            .map_err(Error::internal)?;
        checks.push(tidepool::preflight::neon_ip_allow(neon, project).await);
    }
    let failed = checks
        .iter()
        .any(|c| c.status == tidepool::preflight::Status::Fail);
    if json {
        let mut value = serde_json::to_value(&facts).map_err(Error::internal)?;
        value["checks"] = serde_json::to_value(&checks).map_err(Error::internal)?;
        println!(
            "{}",
            serde_json::to_string_pretty(&value).map_err(Error::internal)?
        );
    } else {
        print!("{}", render_facts(&facts));
        println!();
        for c in &checks {
            let mark = match c.status {
                tidepool::preflight::Status::Pass => "pass",
                tidepool::preflight::Status::Warn => "WARN",
                tidepool::preflight::Status::Fail => "FAIL",
                tidepool::preflight::Status::Step => "step",
            };
            println!("[{mark}] {}: {}", c.title, c.explanation);
            if let Some(fix) = &c.fix {
                for line in &fix.preview {
                    println!("       fix: {line}");
                }
                for note in fix.plan.iter().flat_map(|p| &p.notes) {
                    println!("       note: {note}");
                }
            }
        }
    }
    Ok(failed)
}

/// `setup`'s `--as` / `--as-user`: who runs the fix, when not the connecting role.
struct RunAsFlag {
    profile: Option<String>,
    user: Option<String>,
}

impl RunAsFlag {
    /// The role the fix runs as, for the preview.
    fn role(&self, connecting: &str) -> Result<String, Error> {
        Ok(match (&self.profile, &self.user) {
            (Some(name), _) => profiles()?.get(name)?.user,
            (None, Some(user)) => user.clone(),
            (None, None) => connecting.to_string(),
        })
    }

    /// Resolves it, reading `--as-user`'s password now (never from an argument or the environment).
    fn resolve(&self) -> Result<tidepool::setup::RunAs, Error> {
        use tidepool::setup::RunAs;
        Ok(match (&self.profile, &self.user) {
            (Some(name), _) => RunAs::OtherProfile {
                profile: name.clone(),
            },
            (None, Some(user)) => RunAs::Password {
                user: user.clone(),
                password: read_secret(
                    &format!("Password for role {user}: "),
                    "--as-user password",
                )?,
            },
            (None, None) => RunAs::Profile,
        })
    }
}

/// A secret typed at the terminal (not echoed), or one line of standard input when it is not one.
fn read_secret(prompt: &str, what: &str) -> Result<Secret, Error> {
    let text = if std::io::stdin().is_terminal() {
        rpassword::prompt_password(prompt)
            .map_err(|e| Error::invalid_input(what, format!("reading it: {e}")))?
    } else {
        let mut line = String::new();
        std::io::stdin()
            .read_line(&mut line)
            .map_err(|e| Error::invalid_input(what, format!("reading it: {e}")))?;
        line.truncate(line.trim_end_matches(['\r', '\n']).len());
        line
    };
    Ok(Secret::new(text))
}

async fn setup(
    target: &Target,
    scope: &Scope,
    dry_run: bool,
    run_as: &RunAsFlag,
    command: SetupCommand,
) -> Result<(), Error> {
    use tidepool::setup::Action;
    let spec = spec_for(target)?;
    let preflight = preflight_target(target, &spec, scope)?;
    let connecting = spec.user.clone();
    let mut save_as = None;
    let action = match command {
        SetupCommand::WalLevel => Action::SetWalLevel,
        SetupCommand::GrantReplication { role } => Action::GrantReplication {
            role: role.unwrap_or(connecting),
        },
        SetupCommand::CreateRole {
            role,
            save_as: name,
        } => {
            if name.is_none() && (target.profile.is_none() || target.url.is_some()) {
                // Without a profile to name it after, the new password would have nowhere to go.
                return Err(Error::invalid_input(
                    "--save-as",
                    "name the profile that keeps the new role's password",
                ));
            }
            save_as = name;
            Action::CreateReplicationRole { role }
        }
        SetupCommand::GrantSchema { schema, role } => Action::GrantSchemaAccess {
            schema,
            role: role.unwrap_or(connecting),
        },
        SetupCommand::Publication {
            keyless,
            all_tables,
        } => {
            if all_tables && !preflight.tables.is_empty() {
                return Err(Error::invalid_input(
                    "--all-tables",
                    "give either --tables or --all-tables, not both",
                ));
            }
            if !all_tables && preflight.tables.is_empty() {
                return Err(Error::invalid_input(
                    "--tables",
                    "name the tables to publish, or give --all-tables (a published table without a usable replica identity refuses updates and deletes, so every one is checked first)",
                ));
            }
            let client = connection::connect(&spec).await?;
            let request = tidepool::publication::Request {
                publication: preflight.publication.clone(),
                tables: preflight
                    .tables
                    .iter()
                    .map(|(s, t)| tidepool::publication::TableRef::new(s, t))
                    .collect(),
                choices: keyless.parse()?,
                all_tables,
            };
            let plan = tidepool::publication::plan(&client, &request).await?;
            print_notes(&plan);
            if !dry_run {
                // Before anything is printed as if it ran: the choice is the user's.
                plan.ensure_decided().map_err(|e| {
                    let flag = if all_tables {
                        "add --keyless schema.table=replica-identity-full for each, or use --tables"
                    } else {
                        "add --keyless schema.table=leave-out|replica-identity-full|insert-only for each"
                    };
                    Error::invalid_input("--keyless", format!("{}: {flag}", e.message()))
                })?;
            }
            Action::Publication {
                request,
                statements: plan.statements,
            }
        }
        SetupCommand::CreateSlot => Action::CreateSlot {
            slot: preflight.slot.clone(),
        },
        SetupCommand::DropSlot { confirm } => {
            if !confirm && !dry_run {
                return Err(Error::invalid_input(
                    "--confirm",
                    "dropping a slot loses its consumer's position; add --confirm",
                ));
            }
            Action::DropSlot {
                slot: preflight.slot.clone(),
            }
        }
        SetupCommand::ReplicaIdentityFull { table } => {
            let (schema, table) = tidepool::backfill::parse_table_name(&table)?;
            Action::ReplicaIdentityFull { schema, table }
        }
        SetupCommand::NeonLogicalReplication { confirm } => {
            let project_id = preflight
                .neon_project
                .clone()
                .ok_or_else(|| Error::invalid_input("--neon-project", "name the Neon project"))?;
            if !confirm && !dry_run {
                return Err(Error::invalid_input(
                    "--confirm",
                    "this cannot be undone and restarts the project's computes; add --confirm",
                ));
            }
            Action::NeonEnableLogicalReplication { project_id }
        }
        SetupCommand::NeonCreateRole { role } => {
            let (project_id, branch_id) = neon_branch_of(&preflight)?;
            Action::NeonCreateRole {
                project_id,
                branch_id,
                role,
            }
        }
        SetupCommand::NeonRevealPassword => {
            let (project_id, branch_id) = neon_branch_of(&preflight)?;
            Action::NeonRevealPassword {
                project_id,
                branch_id,
                role: connecting,
            }
        }
        SetupCommand::NeonResetPassword { confirm } => {
            if !confirm && !dry_run {
                return Err(Error::invalid_input(
                    "--confirm",
                    "clients using the current password stop connecting; add --confirm",
                ));
            }
            let (project_id, branch_id) = neon_branch_of(&preflight)?;
            Action::NeonResetPassword {
                project_id,
                branch_id,
                role: connecting,
            }
        }
    };
    let own = run_as.profile.is_none() && run_as.user.is_none();
    if !own && action.is_neon() {
        return Err(Error::invalid_input(
            "--as",
            "a Neon action runs through the Neon API with its key, not as a database role",
        ));
    }
    if let Some(warning) = action.warning() {
        eprintln!("note: {warning}");
    }
    let role = run_as.role(&spec.user)?;
    eprintln!("runs as role {role}; it needs {}", action.needs());
    for line in action.preview() {
        println!("{line}");
    }
    if dry_run {
        return Ok(());
    }
    if let (Some(name), None) = (&target.profile, &target.url) {
        // A saved profile: the app's own fix code runs it and keeps whatever password comes back.
        let profiles = profiles()?;
        let asks = profiles.get(name)?.password == PasswordStorage::AskEachTime;
        let created = match &action {
            Action::CreateReplicationRole { role } | Action::NeonCreateRole { role, .. } => {
                Some(role.clone())
            }
            _ => None,
        };
        let options = tidepool::profile::FixOptions {
            password: if asks && own {
                spec.password.clone()
            } else {
                None
            },
            new_profile_name: save_as,
        };
        profiles
            .run_fix_with(name, action, run_as.resolve()?, options)
            .await?;
        if let Some(role) = created {
            eprintln!("created role {role}; its password is in the keychain with a new profile");
        }
        eprintln!("done");
        return Ok(());
    }
    if let Action::NeonEnableLogicalReplication { project_id } = &action {
        profiles()?
            .neon_client()
            .await?
            .enable_logical_replication(project_id)
            .await?;
        eprintln!("logical replication is on for Neon project {project_id}");
        return Ok(());
    }
    if action.is_neon() {
        // A password Neon returns must land in a profile's keychain entry.
        return Err(Error::invalid_input(
            "--profile",
            "a Neon role action keeps the password with a saved profile",
        ));
    }
    let run_spec = profiles()?.spec_to_run_as(spec.clone(), run_as.resolve()?)?;
    let ran = async { action.run(&connection::connect(&run_spec).await?).await }.await;
    drop(run_spec);
    let password = ran.map_err(|e| action.explain_refusal(e, own, &role))?;
    if let (Some(password), Some(name), Action::CreateReplicationRole { role }) =
        (password, save_as, &action)
    {
        // Only a URL to start from: the new profile is that address, logging in as the new role.
        let draft = ProfileDraft {
            name: name.clone(),
            address: format!("{}:{}", spec.host, spec.port),
            user: role.clone(),
            database: spec.database.clone(),
            sslmode: spec.sslmode,
            sslrootcert: spec.sslrootcert.as_ref().map(|p| p.display().to_string()),
            publication: Some(preflight.publication.clone()),
            slot: Some(preflight.slot.clone()),
            password_storage: PasswordStorage::Keychain,
            ..ProfileDraft::default()
        };
        profiles()?.save(None, draft, Some(password))?;
        eprintln!(
            "created role {role}; its password is in the keychain with the new profile '{name}'"
        );
    }
    eprintln!("done");
    Ok(())
}

async fn neon_command(command: NeonCommand) -> Result<(), Error> {
    let profiles = profiles()?;
    match command {
        NeonCommand::Key => {
            let key = if std::io::stdin().is_terminal() {
                rpassword::prompt_password("Neon API key: ")
                    .map_err(|e| Error::invalid_input("Neon API key", format!("reading it: {e}")))?
            } else {
                let mut line = String::new();
                std::io::stdin().read_line(&mut line).map_err(|e| {
                    Error::invalid_input("Neon API key", format!("reading it: {e}"))
                })?;
                line
            };
            profiles.keychain()?.set_neon_api_key(&Secret::new(key))?;
            eprintln!("the Neon API key is in the keychain");
        }
        NeonCommand::Projects { json } => {
            let neon = profiles.neon_client().await?;
            let mut listed = Vec::new();
            for project in neon.projects().await? {
                let branches = neon.branches(&project.id).await?;
                listed.push((project, branches));
            }
            if json {
                let value: Vec<_> = listed
                    .iter()
                    .map(|(p, b)| serde_json::json!({"project": p, "branches": b}))
                    .collect();
                println!(
                    "{}",
                    serde_json::to_string_pretty(&value).map_err(Error::internal)?
                );
            } else {
                for (project, branches) in &listed {
                    println!("{} ({}, {})", project.id, project.name, project.region_id);
                    for branch in branches {
                        let default = if branch.default { " (default)" } else { "" };
                        println!("  {} {}{default}", branch.id, branch.name);
                    }
                }
            }
        }
        NeonCommand::Link {
            profile,
            project,
            branch,
        } => {
            let link = match (project, branch) {
                (Some(project_id), Some(branch_id)) => tidepool::neon::Link {
                    project_id,
                    branch_id,
                },
                _ => profiles.neon_locate(&profile).await?.ok_or_else(|| {
                    Error::new(
                        ErrorKind::NotFound,
                        "no project this key can see has an endpoint with the profile's host; give --project and --branch",
                    )
                })?,
            };
            profiles.link_neon(&profile, Some(link.clone()))?;
            eprintln!(
                "linked to Neon project {} branch {}",
                link.project_id, link.branch_id
            );
        }
        NeonCommand::Unlink { profile } => {
            profiles.link_neon(&profile, None)?;
            eprintln!("unlinked");
        }
    }
    Ok(())
}

fn export(engine: &str, profile: &str, output: Option<&std::path::Path>) -> Result<(), Error> {
    let exported = tidepool::export::of_profile(&profiles()?, profile, engine.parse()?)?;
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

fn profiles() -> Result<Profiles, Error> {
    Ok(Profiles::open(&profile::data_dir()?))
}

/// The spec for `--url` or `--profile`, with the password found without it ever being an argument.
fn spec_for(target: &Target) -> Result<ConnectionSpec, Error> {
    match (&target.url, &target.profile) {
        (Some(url), _) => spec_from_url(url),
        (None, Some(name)) => {
            let profiles = profiles()?;
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

async fn profile_command(command: ProfileCommand) -> Result<(), Error> {
    let profiles = profiles()?;
    match command {
        ProfileCommand::Add {
            name,
            url,
            publication,
            slot,
            ask_password,
            plain_store,
            ssh,
            ssh_key_file,
            ssh_host_key,
            trust_ssh_host_key,
        } => {
            let fill = profile::autofill(&url)?;
            if fill.password.is_some() {
                return Err(password_in_url());
            }
            let draft = ProfileDraft {
                name,
                publication,
                slot,
                password_storage: if ask_password {
                    PasswordStorage::AskEachTime
                } else {
                    PasswordStorage::Keychain
                },
                encrypt_store: plain_store.then_some(false),
                ssh_address: ssh.clone(),
                ssh_host_key,
                ..fill.draft
            };
            let mut draft = draft;
            if let Some(path) = ssh_key_file {
                let key = std::fs::read_to_string(&path).map_err(|e| {
                    Error::invalid_input(
                        "ssh-key-file",
                        format!("{} could not be read: {e}", path.display()),
                    )
                })?;
                let key = Secret::new(key);
                let passphrase = match std::env::var("TIDEPOOL_SSH_PASSPHRASE") {
                    Ok(p) if !p.is_empty() => Some(Secret::new(p)),
                    _ if tidepool::ssh::check_private_key(&key, None).is_err()
                        && std::io::stdin().is_terminal() =>
                    {
                        let typed = rpassword::prompt_password("SSH key passphrase: ")
                            .map_err(|e| Error::internal(format!("reading the passphrase: {e}")))?;
                        (!typed.is_empty()).then(|| Secret::new(typed))
                    }
                    _ => None,
                };
                draft.ssh_key = Some(key);
                draft.ssh_passphrase = passphrase;
            }
            if trust_ssh_host_key {
                let shown = profiles
                    .ssh_host_key(ssh.as_deref().unwrap_or_default())
                    .await?;
                println!(
                    "accepting the host key of {}: {} ({})",
                    shown.target, shown.fingerprint, shown.openssh
                );
                draft.ssh_host_key = Some(shown.openssh);
            }
            let password = if ask_password {
                None
            } else {
                password_for(&Conninfo::parse(&url)?.into_spec())?
            };
            let view = profiles.save(None, draft, password)?;
            println!(
                "saved profile '{}' ({}): password {}; store {}",
                view.profile.name,
                view.address,
                describe_secret(&view.secret),
                if view.profile.encrypted {
                    "encrypted at rest (key in the OS keychain)"
                } else {
                    "not encrypted"
                }
            );
        }
        ProfileCommand::List { json } => {
            let views = profiles.list()?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&views).map_err(Error::internal)?
                );
            } else if views.is_empty() {
                println!("no profiles; add one with `tidepool profile add --name NAME --url URL`");
            } else {
                for view in views {
                    println!(
                        "{:<24} {}@{}/{}  sslmode={}{}  password {}{}",
                        view.profile.name,
                        view.profile.user,
                        view.address,
                        view.profile.database,
                        view.profile.sslmode,
                        match &view.profile.ssh {
                            Some(ssh) => format!("  via {}", ssh.address),
                            None => String::new(),
                        },
                        describe_secret(&view.secret),
                        if view.profile.untested {
                            " (saved in the app without testing)"
                        } else {
                            ""
                        }
                    );
                }
            }
        }
        ProfileCommand::Remove { name } => {
            println!("{}", profiles.delete(&name)?.describe());
        }
        ProfileCommand::SshHostKey { profile, accept } => {
            let saved = profiles.get(&profile)?;
            let Some(ssh) = saved.ssh else {
                return Err(Error::invalid_input(
                    "profile",
                    format!("profile '{}' connects without SSH", saved.name),
                ));
            };
            let shown = profiles.ssh_host_key(&ssh.address).await?;
            let state = match &ssh.host_key {
                None => "not accepted yet",
                Some(accepted) if tidepool::ssh::same_host_key(accepted, &shown.openssh)? => {
                    "accepted"
                }
                Some(_) => "DIFFERENT from the accepted key",
            };
            println!(
                "{} shows {} ({}): {state}",
                shown.target, shown.fingerprint, shown.openssh
            );
            if accept {
                profiles.accept_ssh_host_key(&saved.id, &shown.openssh)?;
                println!("accepted for profile '{}'", saved.name);
            }
        }
    }
    Ok(())
}

/// What `tidepool capture` takes.
#[derive(Args)]
struct CaptureArgs {
    #[command(flatten)]
    target: Target,
    /// The store folder (default: the profile's own store, the one the app uses).
    #[arg(long)]
    store: Option<PathBuf>,
    /// How long the store keeps changes that are no row's current state, for consumers that fall
    /// behind: off (keep everything, the default) or e.g. 7d, 12h, 30m. Saved with the store.
    #[arg(long, value_name = "DURATION")]
    retention: Option<String>,
    /// Publication to decode with (default: the profile's, else tidepool_publication).
    #[arg(long)]
    publication: Option<String>,
    /// Replication slot (default: the profile's, else tidepool_slot).
    #[arg(long)]
    slot: Option<String>,
    /// Create the slot if it does not exist.
    #[arg(long)]
    create_slot: bool,
    /// Exit once every transaction committed at or before this LSN (X/Y) is stored.
    #[arg(long)]
    stop_at_lsn: Option<String>,
    /// Tables to capture, schema.table,…: their existing rows are backfilled first, in the snapshot of
    /// a new slot, then their changes stream from where the snapshot ends.
    #[arg(long, value_delimiter = ',')]
    tables: Vec<String>,
    /// Capture only new changes of --tables, without backfilling their existing rows.
    #[arg(long)]
    no_backfill: bool,
    /// Name a table's collection: schema.table=name (default schema/table). Repeatable.
    #[arg(long = "collection", value_name = "TABLE=NAME")]
    collections: Vec<String>,
    /// Save and publish: print what it will do (the publication's SQL, the slot, the tables
    /// backfilled), make the publication contain --tables (creating it if missing), create the slot,
    /// backfill and stream.
    #[arg(long)]
    publish: bool,
    /// With --publish: print what it would do and exit; nothing runs.
    #[arg(long, requires = "publish")]
    dry_run: bool,
    /// After a refusal because the slot can no longer send every change (it was dropped, recreated,
    /// advanced or invalidated): create the slot again if needed, record the gap in the store, read
    /// every backfilled table again, and stream on.
    #[arg(long)]
    resync: bool,
    /// With --publish: how each table without a usable replica identity is published.
    #[command(flatten)]
    keyless: Keyless,
    /// Serve the pull API on this address (127.0.0.1:7376 when given without one); webhook
    /// consumers are delivered in any case.
    #[arg(long, value_name = "ADDR", num_args = 0..=1, default_missing_value = tidepool::deliver::pull::DEFAULT_LISTEN)]
    listen: Option<String>,
}

/// A table (schema, name) and the collection name given to it.
type CollectionName = ((String, String), String);

/// `schema.table=name` pairs.
fn collection_names(pairs: &[String]) -> Result<Vec<CollectionName>, Error> {
    pairs
        .iter()
        .map(|pair| {
            let (table, name) = pair.rsplit_once('=').ok_or_else(|| {
                Error::invalid_input("--collection", format!("'{pair}' is not schema.table=name"))
            })?;
            Ok((
                tidepool::backfill::parse_table_name(table)?,
                name.to_string(),
            ))
        })
        .collect()
}

/// The bindings of `--tables`: each named by `--collection`, else by the name `saved` (the store's
/// definition) gives it, which never changes, else by its default name made unique among the tables
/// given and against the names in use.
fn bindings_for(
    tables: &[String],
    no_backfill: bool,
    names: &[String],
    saved: Option<&Definition>,
) -> Result<Vec<Binding>, Error> {
    let names = collection_names(names)?;
    let parsed = tables
        .iter()
        .map(|t| tidepool::backfill::parse_table_name(t))
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

async fn capture(mut args: CaptureArgs) -> Result<(), Error> {
    let store_dir = match (&args.store, &args.target.profile) {
        (Some(dir), _) => dir.clone(),
        (None, Some(profile)) => profiles()?.store_dir(profile)?,
        (None, None) => {
            return Err(Error::invalid_input(
                "--store",
                "give --store, or --profile to use the profile's own store",
            ))
        }
    };
    let store = store_dir;
    if let Some(text) = args.retention.take() {
        let retention = tidepool::retention::parse(&text)?;
        tidepool::retention::set_retention(&mut Store::open(&store)?, retention)?;
        eprintln!(
            "log retention: {}",
            tidepool::retention::describe(retention)
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
        let done = tidepool::continuity::resync(&spec, &store, &slot).await?;
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
    let progress: std::sync::Arc<dyn Fn(&tidepool::backfill::BackfillProgress) + Send + Sync> =
        std::sync::Arc::new(|p| {
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
            eprintln!("pull API on http://{addr} (token: `tidepool api-token`)");
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

async fn binding_command(command: BindingCommand) -> Result<(), Error> {
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
                (None, Some(profile)) => profiles()?.store_dir(profile)?,
                (None, None) => {
                    return Err(Error::invalid_input(
                        "--store",
                        "give --store, or --profile to use the profile's own store",
                    ))
                }
            };
            let mut definition = Definition::load_from(&store)?;
            let (schema, table) = tidepool::backfill::parse_table_name(&table)?;
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
            let (schema, name) = tidepool::backfill::parse_table_name(&table)?;
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
                let statements = tidepool::publication::drop_table_statements(
                    &client,
                    &definition.publication,
                    &tidepool::publication::TableRef::new(&schema, &name),
                )
                .await?;
                if statements.is_empty() {
                    eprintln!(
                        "{schema}.{name} is not in publication {}",
                        tidepool::sql::ident(&definition.publication)
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
fn edit_binding(
    store: &std::path::Path,
    table: &str,
    change: impl FnOnce(&mut Binding),
) -> Result<(), Error> {
    let mut definition = Definition::load_from(store)?;
    let (schema, name) = tidepool::backfill::parse_table_name(table)?;
    let binding = definition
        .bindings
        .iter_mut()
        .find(|b| b.schema == schema && b.table == name)
        .ok_or_else(|| Error::invalid_input("table", format!("{table} is not bound")))?;
    change(binding);
    definition.save(&mut Store::open(store)?)?;
    Ok(())
}

async fn discover(target: &Target, publication: Option<String>, json: bool) -> Result<(), Error> {
    let spec = spec_for(target)?;
    let publication = match (publication, &target.profile) {
        (Some(p), _) => Some(p),
        (None, Some(name)) => Some(profiles()?.get(name)?.publication),
        (None, None) => None,
    };
    let client = connection::connect(&spec).await?;
    let tables = tidepool::discovery::discover(&client, publication.as_deref()).await?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&tables).map_err(Error::internal)?
        );
        return Ok(());
    }
    for t in &tables {
        let key = match t.key_source {
            tidepool::discovery::KeySource::PrimaryKey => {
                format!("primary key ({})", t.key.join(", "))
            }
            tidepool::discovery::KeySource::UniqueIndex => {
                format!(
                    "unique index {} ({})",
                    t.key_index.as_deref().unwrap_or("?"),
                    t.key.join(", ")
                )
            }
            tidepool::discovery::KeySource::None => {
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

fn collections(store: &std::path::Path, json: bool) -> Result<(), Error> {
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

fn preview(
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

fn open_existing_store(dir: &std::path::Path) -> Result<tidepool::store::Store, Error> {
    if !dir.join("tidepool.db").exists() {
        return Err(Error::new(
            ErrorKind::NotFound,
            format!("--store: {} holds no Tidepool store", dir.display()),
        ));
    }
    tidepool::store::Store::open(dir)
}

fn describe_secret(state: &SecretState) -> &'static str {
    match state {
        SecretState::InKeychain => "in the keychain",
        SecretState::MissingFromKeychain => {
            "not in the keychain (give it when editing the profile)"
        }
        SecretState::AskEachTime => "asked each time",
        SecretState::KeychainUnavailable => "unknown: the keychain cannot be opened",
    }
}

fn render_facts(facts: &ServerFacts) -> String {
    let replication = match &facts.replication {
        ReplicationRight::Superuser => "yes (superuser)".to_string(),
        ReplicationRight::Attribute => "yes (REPLICATION attribute)".to_string(),
        ReplicationRight::Membership { role } => {
            format!("yes (member of {role}, which has REPLICATION)")
        }
        ReplicationRight::None => {
            "no: grant it with ALTER ROLE … REPLICATION, or use a role that has it".to_string()
        }
    };
    let wal = if facts.wal_level == "logical" {
        "logical".to_string()
    } else {
        format!(
            "{} (logical replication needs wal_level = logical)",
            facts.wal_level
        )
    };
    format!(
        "server version   {}\nuser             {}\ndatabase         {}\nwal_level        {}\nmay replicate    {}\n\
         encrypted        {}\nround trip       {:.2} ms\n",
        facts.server_version,
        facts.current_user,
        facts.database,
        wal,
        replication,
        if facts.tls { "yes (TLS)" } else { "no" },
        facts.round_trip_ms
    )
}
