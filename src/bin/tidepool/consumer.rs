//! `tidepool consumer …` and `tidepool api-token`: consumers of a profile's store (or `--store`),
//! each a thin wrapper over [`tidepool::deliver`].
//!
//! Secrets never travel in arguments: secret header values are read from standard input (one line
//! per `--secret-header`, in order) or a prompt, as is a NATS credential (standard input whole, for
//! a `.creds` file's content); the signing secret and the API token are printed only by the
//! commands that exist to print them.

use std::collections::BTreeMap;
use std::io::{BufRead, IsTerminal, Read};
use std::path::PathBuf;

use clap::{Args, Subcommand};
use tidepool::app::consumers::{ConsumerStore, ConsumerView, SecretHeader};
use tidepool::deliver::consumer::{
    Action, ConsumerSpec, Destination, Mode, Nats, NatsAuth, Pull, Start, Webhook,
    DEFAULT_NATS_SUBJECT,
};
use tidepool::secrets::{Keychain, Secret};
use tidepool::Error;

/// Which store: a profile's own, or a folder.
#[derive(Args, Clone)]
pub struct StoreArg {
    /// The saved profile whose store it is.
    #[arg(long)]
    pub profile: Option<String>,
    /// The store folder (overrides the profile's).
    #[arg(long)]
    pub store: Option<PathBuf>,
}

impl StoreArg {
    /// The store folder.
    pub fn dir(&self) -> Result<PathBuf, Error> {
        if let Some(dir) = &self.store {
            return Ok(dir.clone());
        }
        let profile = self
            .profile
            .as_deref()
            .ok_or_else(|| Error::invalid_input("--profile", "give --profile or --store"))?;
        crate::engine()?.profiles().store_dir(profile)
    }

    /// The consumers of that store: through the engine for a profile (as the app opens them),
    /// else of the folder.
    pub fn consumers(&self) -> Result<ConsumerStore, Error> {
        match (&self.store, &self.profile) {
            (None, Some(profile)) => crate::engine()?.consumers(profile),
            _ => Ok(ConsumerStore::at(&self.dir()?)),
        }
    }
}

/// `tidepool consumer …`.
#[derive(Subcommand)]
pub enum ConsumerCommand {
    /// Saves a consumer: what it delivers and where (a webhook, the pull API or NATS JetStream).
    Add(Box<AddArgs>),
    /// Lists the consumers.
    List {
        #[command(flatten)]
        store: StoreArg,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// A consumer's definition, queue and parked messages.
    Show {
        #[command(flatten)]
        store: StoreArg,
        /// The consumer's name or id.
        name: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Removes a consumer, its queue and its keychain entries.
    Remove {
        #[command(flatten)]
        store: StoreArg,
        /// The consumer's name or id.
        name: String,
    },
    /// Puts parked messages (all, or the one at --seq) back in the queue.
    Retry {
        #[command(flatten)]
        store: StoreArg,
        /// The consumer's name or id.
        name: String,
        /// Only the message at this log position.
        #[arg(long)]
        seq: Option<u64>,
    },
    /// Drops parked messages (all, or the one at --seq) without delivering them.
    Skip {
        #[command(flatten)]
        store: StoreArg,
        /// The consumer's name or id.
        name: String,
        /// Only the message at this log position.
        #[arg(long)]
        seq: Option<u64>,
    },
    /// Prints a webhook consumer's signing secret (whsec_…), for the receiver's verification.
    Secret {
        #[command(flatten)]
        store: StoreArg,
        /// The consumer's name or id.
        name: String,
    },
    /// Stops delivering (its messages stay queued) until `consumer resume`.
    Pause {
        #[command(flatten)]
        store: StoreArg,
        /// The consumer's name or id.
        name: String,
    },
    /// Delivers again after `consumer pause`.
    Resume {
        #[command(flatten)]
        store: StoreArg,
        /// The consumer's name or id.
        name: String,
    },
    /// Sends a webhook consumer's URL one signed request whose body is marked as a test.
    Test {
        #[command(flatten)]
        store: StoreArg,
        /// The consumer's name or id.
        name: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Changes a consumer's destination settings, actions or filter.
    Edit(Box<EditArgs>),
}

/// What `tidepool consumer edit` takes: only what is given changes.
#[derive(Args)]
pub struct EditArgs {
    #[command(flatten)]
    store: StoreArg,
    /// The consumer's name or id.
    name: String,
    /// Actions to deliver: insert,update,delete,read (empty: all).
    #[arg(long)]
    actions: Option<String>,
    /// A new filter, a CEL expression over record, changes, action and metadata.
    #[arg(long, conflicts_with = "no_filter")]
    filter: Option<String>,
    /// Deliver every change (drop the filter).
    #[arg(long)]
    no_filter: bool,
    /// A webhook's new URL.
    #[arg(long)]
    webhook: Option<String>,
    /// Sets a header sent with every request, K=V (repeatable).
    #[arg(long = "header", value_name = "K=V")]
    headers: Vec<String>,
    /// Sets a secret header (repeatable); values come from standard input or a prompt.
    #[arg(long = "secret-header", value_name = "K")]
    secret_headers: Vec<String>,
    /// Removes a header, plain or secret (repeatable).
    #[arg(long = "remove-header", value_name = "K")]
    remove_headers: Vec<String>,
    /// Messages per request, in {"data": [...]}.
    #[arg(long, conflicts_with = "no_batch")]
    batch_size: Option<u32>,
    /// One bare message per request instead of {"data": [...]}.
    #[arg(long)]
    no_batch: bool,
    /// Request timeout in milliseconds (a webhook), or publish acknowledgement timeout (NATS).
    #[arg(long)]
    timeout_ms: Option<u64>,
    /// Failed attempts after which a message is parked.
    #[arg(long, conflicts_with = "retry_forever")]
    max_retries: Option<u32>,
    /// Never park a message: retry it forever.
    #[arg(long)]
    retry_forever: bool,
    /// Requests under way at once.
    #[arg(long)]
    max_in_flight: Option<u32>,
    /// How long a pulled message stays invisible unless acknowledged.
    #[arg(long)]
    visibility_timeout_ms: Option<u64>,
    /// Most pulled messages not acknowledged at once.
    #[arg(long)]
    max_ack_pending: Option<u32>,
}

/// What `tidepool consumer add` takes.
#[derive(Args)]
pub struct AddArgs {
    #[command(flatten)]
    store: StoreArg,
    /// The consumer's name.
    #[arg(long)]
    name: String,
    /// A collection to deliver (repeatable), e.g. public/orders.
    #[arg(long = "collection", required = true)]
    collections: Vec<String>,
    /// changes (every change) or rows (the latest state of each key).
    #[arg(long, default_value = "changes")]
    mode: String,
    /// Actions to deliver: insert,update,delete,read (default all).
    #[arg(long)]
    actions: Option<String>,
    /// A CEL expression over record, changes, action and metadata.
    #[arg(long)]
    filter: Option<String>,
    /// now (what is stored later) or beginning (the stored history, backfill included).
    #[arg(long, default_value = "now")]
    start: String,
    /// Columns that group messages (default the row's key).
    #[arg(long, value_delimiter = ',')]
    group_by: Vec<String>,
    /// Deliver by POST to this URL.
    #[arg(long, conflicts_with = "pull")]
    webhook: Option<String>,
    /// A header sent with every request, K=V (repeatable).
    #[arg(long = "header", value_name = "K=V", requires = "webhook")]
    headers: Vec<String>,
    /// A header whose value is secret (repeatable); values come from standard input or a prompt.
    #[arg(long = "secret-header", value_name = "K", requires = "webhook")]
    secret_headers: Vec<String>,
    /// Messages per request, in {"data": [...]} (default 1).
    #[arg(long, requires = "webhook")]
    batch_size: Option<u32>,
    /// One bare message per request instead of {"data": [...]}.
    #[arg(long, requires = "webhook", conflicts_with = "batch_size")]
    no_batch: bool,
    /// Request timeout in milliseconds.
    #[arg(long, default_value_t = 30_000, requires = "webhook")]
    timeout_ms: u64,
    /// Failed attempts after which a message is parked (default: retry forever); webhook or NATS.
    #[arg(long)]
    max_retries: Option<u32>,
    /// Requests under way at once.
    #[arg(long, default_value_t = 10, requires = "webhook")]
    max_in_flight: u32,
    /// Deliver through the pull API.
    #[arg(long, conflicts_with = "nats")]
    pull: bool,
    /// Publish to NATS JetStream at this server (nats://host:port or tls://host:port).
    #[arg(long, conflicts_with = "webhook")]
    nats: Option<String>,
    /// The subject of each message, with {database}, {schema}, {table} and {action} filled in.
    #[arg(long, default_value = DEFAULT_NATS_SUBJECT, requires = "nats")]
    subject: String,
    /// A stream to create if it is missing, capturing every subject of the template.
    #[arg(long, requires = "nats")]
    stream: Option<String>,
    /// none, token, user=NAME (a password), nkey (a seed) or creds (a .creds file's content); the
    /// secret comes from standard input or a prompt.
    #[arg(long, default_value = "none", requires = "nats")]
    nats_auth: String,
    /// Refuse a NATS connection that is not TLS.
    #[arg(long, requires = "nats")]
    nats_tls: bool,
    /// A PEM file of the authority that signed the NATS server's certificate.
    #[arg(long, requires = "nats")]
    nats_ca_file: Option<String>,
    /// How long a publish acknowledgement may take, in milliseconds.
    #[arg(long, default_value_t = 5_000, requires = "nats")]
    ack_timeout_ms: u64,
    /// Messages published before their acknowledgements are awaited.
    #[arg(long, default_value_t = 100, requires = "nats")]
    publish_batch: u32,
    /// How long a received message stays invisible unless acknowledged.
    #[arg(long, default_value_t = 30_000, requires = "pull")]
    visibility_timeout_ms: u64,
    /// Most messages received and not acknowledged at once.
    #[arg(long, default_value_t = 10_000, requires = "pull")]
    max_ack_pending: u32,
    /// Most receive requests waiting at once (more are answered 429).
    #[arg(long, default_value_t = 20, requires = "pull")]
    max_waiting: u32,
}

/// A consumer's notices, one line each, with their kind (as `--json` gives them).
fn print_notices(consumer: &tidepool::deliver::Consumer) {
    for n in &consumer.notices {
        println!("  {}: {}", n.kind.as_str(), n.message);
    }
}

fn keychain() -> Result<Keychain, Error> {
    Keychain::open()
}

/// Runs a consumer command; `json` output where asked.
pub fn run(command: ConsumerCommand) -> Result<(), Error> {
    match command {
        ConsumerCommand::Add(args) => add(*args),
        ConsumerCommand::List { store, json } => {
            let consumers = store.consumers()?.list()?;
            if json {
                let consumers: Vec<_> = consumers.into_iter().map(|v| v.consumer).collect();
                println!(
                    "{}",
                    serde_json::to_string_pretty(&consumers).unwrap_or_default()
                );
            } else if consumers.is_empty() {
                println!("no consumers");
            } else {
                for ConsumerView { consumer: c, .. } in consumers {
                    let kind = match &c.spec.destination {
                        Destination::Webhook(w) => format!("webhook {}", w.url),
                        Destination::Pull(_) => "pull".to_string(),
                        Destination::Nats(n) => format!("nats {} {}", n.url, n.subject),
                    };
                    println!(
                        "{}\t{}\t{}\tqueued {}\tparked {}",
                        c.spec.name,
                        c.spec.collections.join(","),
                        kind,
                        c.pending,
                        c.failed
                    );
                    print_notices(&c);
                }
            }
            Ok(())
        }
        ConsumerCommand::Show { store, name, json } => {
            let ConsumerView { consumer, parked } = store.consumers()?.get(&name)?;
            let view = serde_json::json!({"consumer": consumer, "parked": parked});
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&view).unwrap_or_default()
                );
            } else {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&consumer).unwrap_or_default()
                );
                for p in parked {
                    println!(
                        "parked: seq {} after {} attempts: {}",
                        p.seq,
                        p.attempts,
                        p.last_error.unwrap_or_default()
                    );
                }
                print_notices(&consumer);
            }
            Ok(())
        }
        ConsumerCommand::Remove { store, name } => {
            let removed = store.consumers()?.remove(&name)?;
            eprintln!("removed consumer '{}'", removed.spec.name);
            Ok(())
        }
        ConsumerCommand::Retry { store, name, seq } => {
            let n = store.consumers()?.retry(&name, seq)?;
            eprintln!("{n} parked message(s) queued again");
            Ok(())
        }
        ConsumerCommand::Skip { store, name, seq } => {
            let n = store.consumers()?.skip(&name, seq)?;
            eprintln!("{n} parked message(s) skipped");
            Ok(())
        }
        ConsumerCommand::Secret { store, name } => {
            let secret = store.consumers()?.signing_secret(&name)?;
            println!("{}", secret.expose());
            Ok(())
        }
        ConsumerCommand::Pause { store, name } => {
            let c = store.consumers()?.set_paused(&name, true)?;
            eprintln!(
                "consumer '{}' paused: {} message(s) queued stay queued",
                c.spec.name, c.pending
            );
            Ok(())
        }
        ConsumerCommand::Resume { store, name } => {
            let c = store.consumers()?.set_paused(&name, false)?;
            eprintln!("consumer '{}' delivers again", c.spec.name);
            Ok(())
        }
        ConsumerCommand::Test { store, name, json } => {
            let consumers = store.consumers()?;
            let result = tokio::task::block_in_place(|| {
                tokio::runtime::Handle::current().block_on(consumers.send_test(&name))
            })?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&result).unwrap_or_default()
                );
            }
            let took = result.attempt.duration_ms;
            match (&result.attempt.error, result.attempt.status) {
                (None, status) => {
                    eprintln!(
                        "test message {} answered HTTP {} in {took} ms",
                        result.webhook_id,
                        status.unwrap_or_default()
                    );
                    Ok(())
                }
                (Some(error), _) => Err(Error::new(
                    tidepool::ErrorKind::Connection,
                    format!(
                        "test message {} failed after {took} ms: {error}",
                        result.webhook_id
                    ),
                )),
            }
        }
        ConsumerCommand::Edit(args) => edit(*args),
    }
}

fn edit(args: EditArgs) -> Result<(), Error> {
    let consumers = args.store.consumers()?;
    let mut spec = consumers.get(&args.name)?.consumer.spec;
    if let Some(actions) = &args.actions {
        spec.actions = Action::parse_list(actions)?;
    }
    if args.no_filter {
        spec.filter = None;
    } else if let Some(filter) = &args.filter {
        spec.filter = Some(filter.clone());
    }
    let retries = |current: Option<u32>| {
        if args.retry_forever {
            None
        } else {
            args.max_retries.or(current)
        }
    };
    let not_for = |flag: &str, kind: &str| {
        Error::invalid_input(flag, format!("'{}' is a {kind} consumer", args.name))
    };
    let webhook_flags = args.webhook.is_some()
        || !args.headers.is_empty()
        || !args.secret_headers.is_empty()
        || !args.remove_headers.is_empty()
        || args.batch_size.is_some()
        || args.no_batch
        || args.max_in_flight.is_some();
    let pull_flags = args.visibility_timeout_ms.is_some() || args.max_ack_pending.is_some();
    match &mut spec.destination {
        Destination::Webhook(w) => {
            if pull_flags {
                return Err(not_for("visibility-timeout-ms", "webhook"));
            }
            if let Some(url) = &args.webhook {
                w.url = url.clone();
            }
            for name in &args.remove_headers {
                w.headers.retain(|k, _| !k.eq_ignore_ascii_case(name));
                w.secret_headers.retain(|k| !k.eq_ignore_ascii_case(name));
            }
            for pair in &args.headers {
                let (k, v) = pair.split_once('=').ok_or_else(|| {
                    Error::invalid_input("header", format!("'{pair}' is not K=V"))
                })?;
                let k = k.trim().to_string();
                w.secret_headers.retain(|s| !s.eq_ignore_ascii_case(&k));
                w.headers.insert(k, v.trim().to_string());
            }
            for name in &args.secret_headers {
                w.headers.retain(|k, _| !k.eq_ignore_ascii_case(name));
                if !w
                    .secret_headers
                    .iter()
                    .any(|s| s.eq_ignore_ascii_case(name))
                {
                    w.secret_headers.push(name.clone());
                }
            }
            if args.no_batch {
                w.batch_size = None;
            } else if let Some(n) = args.batch_size {
                w.batch_size = Some(n);
            }
            if let Some(t) = args.timeout_ms {
                w.timeout_ms = t;
            }
            if let Some(n) = args.max_in_flight {
                w.max_in_flight = n;
            }
            w.max_retries = retries(w.max_retries);
        }
        Destination::Pull(p) => {
            if webhook_flags || args.timeout_ms.is_some() {
                return Err(not_for("webhook", "pull"));
            }
            if let Some(v) = args.visibility_timeout_ms {
                p.visibility_timeout_ms = v;
            }
            if let Some(n) = args.max_ack_pending {
                p.max_ack_pending = n;
            }
        }
        Destination::Nats(n) => {
            if webhook_flags || pull_flags {
                return Err(not_for("webhook", "NATS"));
            }
            if let Some(t) = args.timeout_ms {
                n.timeout_ms = t;
            }
            n.max_retries = retries(n.max_retries);
        }
    }
    spec.validate()?;
    let secret_values = read_secret_headers(&args.secret_headers)?;
    let consumer = consumers.edit(&args.name, spec, secret_values)?;
    eprintln!(
        "saved consumer '{}': a running delivery uses it within a second",
        consumer.spec.name
    );
    Ok(())
}

/// `tidepool api-token`: prints the pull API's bearer token (made on first use).
pub fn api_token(store: &StoreArg) -> Result<(), Error> {
    let token = tidepool::deliver::pull::api_token(&store.dir()?, &keychain()?)?;
    println!("{}", token.expose());
    Ok(())
}

fn add(args: AddArgs) -> Result<(), Error> {
    let dir = args.store.dir()?;
    // How the printed commands name this store, as it was named here.
    let store_flag = match (&args.store.store, &args.store.profile) {
        (Some(path), _) => format!("--store {}", path.display()),
        (None, Some(profile)) => format!("--profile {profile}"),
        (None, None) => String::new(),
    };
    let mode = match args.mode.as_str() {
        "changes" => Mode::Changes,
        "rows" => Mode::Rows,
        other => {
            return Err(Error::invalid_input(
                "mode",
                format!("'{other}' is not a mode: use changes or rows"),
            ))
        }
    };
    let start = match args.start.as_str() {
        "now" => Start::Now,
        "beginning" => Start::Beginning,
        other => {
            return Err(Error::invalid_input(
                "start",
                format!("'{other}' is not a start: use now or beginning"),
            ))
        }
    };
    let destination = match (&args.webhook, args.pull) {
        (Some(url), false) => {
            let mut headers = BTreeMap::new();
            for pair in &args.headers {
                let (k, v) = pair.split_once('=').ok_or_else(|| {
                    Error::invalid_input("header", format!("'{pair}' is not K=V"))
                })?;
                headers.insert(k.trim().to_string(), v.trim().to_string());
            }
            Destination::Webhook(Webhook {
                url: url.clone(),
                headers,
                secret_headers: args.secret_headers.clone(),
                batch_size: if args.no_batch {
                    None
                } else {
                    Some(args.batch_size.unwrap_or(1))
                },
                timeout_ms: args.timeout_ms,
                max_retries: args.max_retries,
                max_in_flight: args.max_in_flight,
            })
        }
        (None, true) => Destination::Pull(Pull {
            visibility_timeout_ms: args.visibility_timeout_ms,
            max_ack_pending: args.max_ack_pending,
            max_waiting: args.max_waiting,
        }),
        (None, false) if args.nats.is_some() => Destination::Nats(Nats {
            url: args.nats.clone().unwrap_or_default(),
            subject: args.subject.clone(),
            stream: args.stream.clone(),
            auth: parse_nats_auth(&args.nats_auth)?,
            tls: args.nats_tls,
            ca_file: args.nats_ca_file.clone(),
            timeout_ms: args.ack_timeout_ms,
            batch_size: args.publish_batch,
            max_retries: args.max_retries,
        }),
        _ => {
            return Err(Error::invalid_input(
                "destination",
                "give --webhook URL, --pull or --nats URL",
            ))
        }
    };
    let spec = ConsumerSpec {
        name: args.name,
        collections: args.collections,
        actions: args
            .actions
            .as_deref()
            .map(Action::parse_list)
            .transpose()?
            .unwrap_or_default(),
        filter: args.filter,
        mode,
        start,
        group_by: args.group_by,
        destination,
    };
    spec.validate()?;
    let secret_values = read_secret_headers(&args.secret_headers)?;
    let credential = match &spec.destination {
        Destination::Nats(n) if n.auth.needs_secret() => Some(read_credential(&n.auth)?),
        _ => None,
    };
    let consumer = tokio::task::block_in_place(|| {
        tokio::runtime::Handle::current().block_on(ConsumerStore::at(&dir).add_checked(
            spec,
            secret_values,
            credential,
        ))
    })?;
    eprintln!(
        "saved consumer '{}' ({}), starting after log position {}",
        consumer.spec.name, consumer.id, consumer.position
    );
    if let Destination::Pull(_) = consumer.spec.destination {
        eprintln!(
            "pull it with the token from `tidepool api-token {store_flag}` while `tidepool capture {store_flag} --listen` runs"
        );
    } else if let Destination::Nats(n) = &consumer.spec.destination {
        eprintln!(
            "published to {} on subjects {} while `tidepool capture {store_flag}` runs",
            n.url,
            tidepool::deliver::subject::wildcard(&n.subject)
        );
    } else {
        eprintln!(
            "its signing secret: `tidepool consumer secret {} {}`",
            store_flag, consumer.spec.name
        );
    }
    Ok(())
}

/// One value per secret header: a line each from standard input, or a prompt on a terminal.
fn read_secret_headers(names: &[String]) -> Result<Vec<SecretHeader>, Error> {
    let mut out = Vec::new();
    let stdin = std::io::stdin();
    let terminal = stdin.is_terminal();
    let mut lines = stdin.lock().lines();
    for name in names {
        let value = if terminal {
            rpassword::prompt_password(format!("value of header {name}: "))
                .map_err(|e| Error::invalid_input("secret-header", format!("reading it: {e}")))?
        } else {
            lines
                .next()
                .transpose()
                .map_err(|e| Error::invalid_input("secret-header", format!("reading it: {e}")))?
                .ok_or_else(|| {
                    Error::invalid_input(
                        "secret-header",
                        format!("no value for '{name}' on standard input (one line per header)"),
                    )
                })?
        };
        let value = value.trim_end_matches(['\r', '\n']).to_string();
        if value.is_empty() {
            return Err(Error::invalid_input(
                "secret-header",
                format!("the value of '{name}' is empty"),
            ));
        }
        out.push(SecretHeader {
            name: name.clone(),
            value: Secret::new(value),
        });
    }
    Ok(out)
}

/// `--nats-auth`: none, token, user=NAME, nkey or creds.
fn parse_nats_auth(text: &str) -> Result<NatsAuth, Error> {
    Ok(match text {
        "none" => NatsAuth::None,
        "token" => NatsAuth::Token,
        "nkey" => NatsAuth::Nkey,
        "creds" => NatsAuth::Creds,
        other => match other.strip_prefix("user=") {
            Some(user) => NatsAuth::UserPassword {
                user: user.to_string(),
            },
            None => {
                return Err(Error::invalid_input(
                    "nats-auth",
                    format!("'{other}' is not one of none, token, user=NAME, nkey, creds"),
                ))
            }
        },
    })
}

/// The NATS credential: a prompt on a terminal, else all of standard input (a `.creds` file is
/// several lines).
fn read_credential(auth: &NatsAuth) -> Result<Secret, Error> {
    let what = match auth {
        NatsAuth::Token => "token",
        NatsAuth::UserPassword { .. } => "password",
        NatsAuth::Nkey => "nkey seed",
        _ => ".creds content",
    };
    let stdin = std::io::stdin();
    let text = if stdin.is_terminal() {
        if matches!(auth, NatsAuth::Creds) {
            return Err(Error::invalid_input(
                "nats-credential",
                "give the .creds file on standard input: tidepool consumer add … --nats-auth creds < user.creds",
            ));
        }
        rpassword::prompt_password(format!("NATS {what}: "))
            .map_err(|e| Error::invalid_input("nats-credential", format!("reading it: {e}")))?
    } else {
        let mut text = String::new();
        stdin
            .lock()
            .read_to_string(&mut text)
            .map_err(|e| Error::invalid_input("nats-credential", format!("reading it: {e}")))?;
        text
    };
    let text = if matches!(auth, NatsAuth::Creds) {
        text
    } else {
        text.trim().to_string()
    };
    if text.trim().is_empty() {
        return Err(Error::invalid_input(
            "nats-credential",
            format!("the NATS {what} is empty"),
        ));
    }
    Ok(Secret::new(text))
}
