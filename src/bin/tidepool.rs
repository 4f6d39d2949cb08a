//! The `tidepool` command line: everything the desktop app does, for scripts, headless machines and
//! benchmarks. Each subcommand is a thin wrapper over one engine call.
//!
//! Passwords never travel in arguments: a `--url` that carries one is refused; the password comes from
//! `PGPASSWORD`, the libpq password file, or a prompt on the terminal.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tidepool::connection::{self, ConnectionSpec, ReplicationRight, ServerFacts};
use tidepool::conninfo::Conninfo;
use tidepool::secrets::Secret;
use tidepool::{pgpass, Error, ErrorKind};

#[derive(Parser)]
#[command(name = "tidepool", version, about = "From PostgreSQL to a live, local stream of its changes")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Connects and shows the server's version, the role, wal_level and whether the role may replicate.
    Check {
        /// postgres://user@host[:port]/database[?sslmode=…] — without the password.
        #[arg(long)]
        url: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TIDEPOOL_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let (result, json) = match cli.command {
        Command::Check { url, json } => (check(&url, json).await, json),
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

async fn check(url: &str, json: bool) -> Result<(), Error> {
    let spec = spec_from_url(url)?;
    let facts = connection::test_connection(&spec).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&facts).map_err(Error::internal)?);
    } else {
        print!("{}", render_facts(&facts));
    }
    Ok(())
}

/// Parses `--url` and finds the password without it ever being an argument.
fn spec_from_url(url: &str) -> Result<ConnectionSpec, Error> {
    let mut spec = Conninfo::parse(url)?.into_spec();
    if spec.password.is_some() {
        return Err(Error::invalid_input(
            "--url",
            "contains a password, which would be visible to every process on this machine; remove it and \
             set PGPASSWORD, add it to ~/.pgpass, or type it when asked",
        ));
    }
    spec.password = password_for(&spec)?;
    Ok(spec)
}

fn password_for(spec: &ConnectionSpec) -> Result<Option<Secret>, Error> {
    if let Some(password) = std::env::var_os("PGPASSWORD") {
        let password = password
            .into_string()
            .map_err(|_| Error::invalid_input("PGPASSWORD", "is not valid UTF-8"))?;
        return Ok(Some(Secret::new(password)));
    }
    if let Some(path) = pgpass::default_path() {
        if let Some(password) = pgpass::lookup(&path, &spec.host, spec.port, &spec.database, &spec.user) {
            return Ok(Some(password));
        }
    }
    if std::io::stdin().is_terminal() {
        let prompt = format!("Password for {}@{}: ", spec.user, spec.target());
        let typed = rpassword::prompt_password(prompt)
            .map_err(|e| Error::new(ErrorKind::InvalidInput, format!("reading the password: {e}")))?;
        return Ok((!typed.is_empty()).then(|| Secret::new(typed)));
    }
    Ok(None)
}

fn render_facts(facts: &ServerFacts) -> String {
    let replication = match &facts.replication {
        ReplicationRight::Superuser => "yes (superuser)".to_string(),
        ReplicationRight::Attribute => "yes (REPLICATION attribute)".to_string(),
        ReplicationRight::Membership { role } => format!("yes (member of {role}, which has REPLICATION)"),
        ReplicationRight::None => "no: grant it with ALTER ROLE … REPLICATION, or use a role that has it".to_string(),
    };
    let wal = if facts.wal_level == "logical" {
        "logical".to_string()
    } else {
        format!("{} (logical replication needs wal_level = logical)", facts.wal_level)
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
