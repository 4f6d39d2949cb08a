//! Delivery: every stored change to the user's applications, by webhook, a Sequin-compatible pull
//! API or NATS JetStream, from Tidepool's own store rather than from the replication slot.
//!
//! The parts: a consumer's definition ([`consumer`]), its durable queue and position ([`ledger`],
//! a file of its own next to the change store), the messages ([`message`], Sequin's shape), filters
//! ([`filter`], CEL), reading the log into queues ([`feed`]), HTTP push ([`webhook`]) and pull
//! ([`pull`]), and publishing to JetStream ([`nats`], subjects from [`subject`]). [`trial`] is a
//! receiver inside the app for trying a webhook offline.
//!
//! Invariants:
//! - Delivery only reads the change store; it never holds its write lock, and nothing in the
//!   capture waits for it. A consumer that is down costs local disk (the store's log), never WAL on
//!   the source: the slot is confirmed as soon as changes are stored.
//! - Delivery is at least once: a message leaves its queue only when acknowledged (a webhook
//!   consumer in changes mode sends from the log, and its position passes a message only once it
//!   is acknowledged or queued), and every message carries an `idempotency_key` that is the same on
//!   every redelivery.
//! - [`run`] wakes on each store commit it is told of (no polling needed for a capture in the same
//!   process) and re-reads once a second for what another process changed (a consumer added, a
//!   parked message retried from the command line).

pub mod consumer;
pub mod feed;
pub mod filter;
pub mod ledger;
pub mod message;
pub mod nats;
pub mod pull;
pub mod subject;
pub mod trial;
pub mod webhook;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::deliver::consumer::{ConsumerSpec, Destination, Start};
use crate::deliver::ledger::Ledger;
use crate::error::{Error, Result};
use crate::secrets::Keychain;
use crate::store::Store;

pub use consumer::{Action, Consumer, Mode};
pub use message::Database;

/// Unix time in milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Runs `f` on a blocking thread with a worker's state moved in and back out: a delivery round's
/// SQLite work never holds up requests in flight or the capture's tasks. `what` names the worker in
/// an error.
pub(crate) async fn on_blocking_thread<S, T>(
    state: S,
    what: &'static str,
    f: impl FnOnce(&mut S) -> T + Send + 'static,
) -> Result<(S, T)>
where
    S: Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(move || {
        let mut state = state;
        let out = f(&mut state);
        (state, out)
    })
    .await
    .map_err(|e| Error::internal(format!("{what}: {e}")))
}

/// What delivery needs to run next to a capture.
#[derive(Debug, Clone)]
pub struct DeliveryOptions {
    /// The capture's store folder.
    pub store_dir: PathBuf,
    /// The source, as messages name it.
    pub database: Database,
    /// Where the signing secrets and secret headers are; without one, webhook consumers do not
    /// deliver (requests are never sent unsigned).
    pub keychain: Option<Keychain>,
    /// Bumped after each store commit (see [`crate::capture::Observer`]).
    pub wake: tokio::sync::watch::Receiver<u64>,
}

/// Shared by the delivery tasks of one store.
pub(crate) struct Context {
    pub(crate) store_dir: PathBuf,
    pub(crate) database: Database,
    pub(crate) keychain: Option<Keychain>,
    pub(crate) wake: tokio::sync::watch::Receiver<u64>,
    pub(crate) client: reqwest::Client,
}

impl Context {
    fn new(options: DeliveryOptions) -> Result<Context> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .user_agent(concat!("tidepool/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::internal(format!("building the HTTP client: {e}")))?;
        Ok(Context {
            store_dir: options.store_dir,
            database: options.database,
            keychain: options.keychain,
            wake: options.wake,
            client,
        })
    }
}

/// Runs every webhook and NATS consumer of the store until the returned future is dropped (a task abort).
/// Consumers added or removed meanwhile are started or stopped within a second. A consumer whose
/// worker fails (its keychain entry missing, the ledger unreadable) is restarted after a pause.
pub async fn run(options: DeliveryOptions) -> Result<()> {
    let context = Arc::new(Context::new(options)?);
    // Each worker with the definition it was started with: an edited consumer's worker is
    // restarted with the new one (what it had in flight is offered again at its start).
    let mut workers: HashMap<String, (ConsumerSpec, tokio::task::JoinHandle<()>)> = HashMap::new();
    let ledger = Ledger::open(&context.store_dir)?;
    /// Aborts the workers when `run` is dropped.
    struct Workers<'a>(&'a mut HashMap<String, (ConsumerSpec, tokio::task::JoinHandle<()>)>);
    impl Drop for Workers<'_> {
        fn drop(&mut self) {
            for (_, (_, w)) in self.0.drain() {
                w.abort();
            }
        }
    }
    let workers = Workers(&mut workers);
    loop {
        let consumers = ledger.list()?;
        workers.0.retain(|id, (spec, w)| {
            let keep = consumers.iter().any(|c| &c.id == id && &c.spec == spec) && !w.is_finished();
            if !keep {
                w.abort();
            }
            keep
        });
        for consumer in consumers {
            if workers.0.contains_key(&consumer.id) {
                continue;
            }
            let context = context.clone();
            let id = consumer.id.clone();
            let name = consumer.spec.name.clone();
            let worker = match consumer.spec.destination.clone() {
                Destination::Webhook(_) => tokio::spawn(async move {
                    if let Err(e) = webhook::run(context, id).await {
                        tracing::error!(consumer = %name, "webhook delivery stopped: {e}");
                        // Restarted by the next round after this pause.
                        tokio::time::sleep(Duration::from_secs(5)).await;
                    }
                }),
                Destination::Nats(_) => tokio::spawn(async move {
                    if let Err(e) = nats::run(context, id).await {
                        tracing::error!(consumer = %name, "NATS delivery stopped: {e}");
                        tokio::time::sleep(Duration::from_secs(5)).await;
                    }
                }),
                // Served by the pull API when asked.
                Destination::Pull(_) => continue,
            };
            workers
                .0
                .insert(consumer.id.clone(), (consumer.spec.clone(), worker));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Whether a NATS consumer's credential was given when its authentication needs one (and only
/// then); the error names the field.
pub fn check_credential(
    spec: &ConsumerSpec,
    credential: Option<&crate::secrets::Secret>,
) -> Result<()> {
    if let Destination::Nats(n) = &spec.destination {
        match (n.auth.needs_secret(), credential) {
            (true, None) => {
                return Err(Error::invalid_input(
                    "nats-credential",
                    "the consumer's NATS credential is missing",
                ))
            }
            (true, Some(c)) if c.is_empty() => {
                return Err(Error::invalid_input(
                    "nats-credential",
                    "the consumer's NATS credential is empty",
                ))
            }
            (false, Some(_)) => {
                return Err(Error::invalid_input(
                    "nats-credential",
                    "a credential was given but the consumer's NATS authentication is 'none'",
                ))
            }
            _ => {}
        }
    }
    Ok(())
}

/// Saves a new consumer in the store in `store_dir`. Its collections must be in the store; it
/// starts after what is stored now, or at the beginning of the log. A webhook consumer gets a new
/// signing secret in `keychain`, and `secret_headers` (name, value) go there too; a NATS
/// consumer's `credential` goes there (it needs one unless its server takes no credentials).
pub fn add_consumer(
    store_dir: &std::path::Path,
    spec: ConsumerSpec,
    keychain: Option<&Keychain>,
    secret_headers: &[(String, crate::secrets::Secret)],
    credential: Option<&crate::secrets::Secret>,
) -> Result<Consumer> {
    spec.validate()?;
    check_credential(&spec, credential)?;
    let store = Store::open_existing(store_dir)?.ok_or_else(|| {
        Error::new(
            crate::ErrorKind::NotFound,
            format!(
                "no store in {}: start the capture first, so its collections exist",
                store_dir.display()
            ),
        )
    })?;
    let mut position = 0;
    for name in &spec.collections {
        if store.collection(name)?.is_none() {
            return Err(Error::new(
                crate::ErrorKind::NotFound,
                format!(
                    "collection: no collection named '{name}' in {}",
                    store_dir.display()
                ),
            ));
        }
        if spec.start == Start::Now {
            position = position.max(store.last_seq(name)?);
        }
    }
    if spec.start == Start::Now {
        // After everything stored, so nothing recorded before it (a gap) concerns it.
        position = position.max(store.log_end());
    }
    let mut ledger = Ledger::open(store_dir)?;
    let consumer = ledger.add(spec, position)?;
    if consumer.spec.start == Start::Beginning {
        // It starts from the log as kept now: what was pruned before is not its loss.
        let pruned = crate::store::retention::pruned(&store)?;
        if !pruned.is_empty() {
            if let Err(e) = ledger.set_start_pruned(&consumer.id, &pruned) {
                let _ = ledger.remove(&consumer.id);
                return Err(e);
            }
        }
    }
    if let Destination::Webhook(w) = &consumer.spec.destination {
        let stored = (|| -> Result<()> {
            let keychain = keychain.ok_or_else(|| {
                Error::new(
                    crate::ErrorKind::Keychain,
                    "a webhook consumer's signing secret needs the OS keychain",
                )
            })?;
            let label = format!("Tidepool consumer {}", consumer.spec.name);
            keychain.set(
                &crate::secrets::SecretKey::WebhookSecret(consumer.id.clone()),
                &format!("{label}: signing secret"),
                &webhook::new_signing_secret()?,
            )?;
            for (name, value) in secret_headers {
                if !w
                    .secret_headers
                    .iter()
                    .any(|h| h.eq_ignore_ascii_case(name))
                {
                    return Err(Error::invalid_input(
                        "secret-header",
                        format!("'{name}' is not one of the consumer's secret headers"),
                    ));
                }
                keychain.set(
                    &crate::secrets::SecretKey::WebhookHeader(consumer.id.clone(), name.clone()),
                    &format!("{label}: header {name}"),
                    value,
                )?;
            }
            Ok(())
        })();
        if let Err(e) = stored {
            let _ = ledger.remove(&consumer.id);
            return Err(e);
        }
    }
    if let (Destination::Nats(_), Some(credential)) = (&consumer.spec.destination, credential) {
        let stored = keychain
            .ok_or_else(|| {
                Error::new(
                    crate::ErrorKind::Keychain,
                    "a NATS consumer's credential needs the OS keychain",
                )
            })
            .and_then(|keychain| {
                keychain.set(
                    &crate::secrets::SecretKey::NatsCredential(consumer.id.clone()),
                    &format!("Tidepool consumer {}: NATS credential", consumer.spec.name),
                    credential,
                )
            });
        if let Err(e) = stored {
            let _ = ledger.remove(&consumer.id);
            return Err(e);
        }
    }
    Ok(consumer)
}

/// The keychain entries of a consumer, for removing them with it.
fn secret_keys(consumer: &Consumer) -> Vec<(crate::secrets::SecretKey, String)> {
    use crate::secrets::SecretKey;
    let name = &consumer.spec.name;
    match &consumer.spec.destination {
        Destination::Webhook(w) => {
            let mut keys = vec![(
                SecretKey::WebhookSecret(consumer.id.clone()),
                format!("signing secret of consumer '{name}'"),
            )];
            for header in &w.secret_headers {
                keys.push((
                    SecretKey::WebhookHeader(consumer.id.clone(), header.clone()),
                    format!("header {header} of consumer '{name}'"),
                ));
            }
            keys
        }
        Destination::Nats(n) if n.auth.needs_secret() => vec![(
            SecretKey::NatsCredential(consumer.id.clone()),
            format!("NATS credential of consumer '{name}'"),
        )],
        Destination::Nats(_) | Destination::Pull(_) => vec![],
    }
}

/// Whether removing the consumer must reach the keychain.
pub fn has_secrets(consumer: &Consumer) -> bool {
    !secret_keys(consumer).is_empty()
}

/// Deletes the keychain entries of every consumer of the store in `store_dir` and its pull API
/// token, before the store itself is deleted; returns them described for a person.
pub fn forget_secrets(store_dir: &std::path::Path, keychain: &Keychain) -> Result<Vec<String>> {
    let mut ledger = Ledger::open(store_dir)?;
    let mut forgotten = Vec::new();
    for consumer in ledger.list()? {
        for (key, described) in secret_keys(&consumer) {
            keychain.delete(&key)?;
            forgotten.push(described);
        }
    }
    let token = crate::secrets::SecretKey::PullApiToken(ledger.store_id()?);
    if keychain.get(&token)?.is_some() {
        keychain.delete(&token)?;
        forgotten.push("pull API token".into());
    }
    Ok(forgotten)
}

/// Removes a consumer, its queue and its keychain entries.
pub fn remove_consumer(
    store_dir: &std::path::Path,
    id_or_name: &str,
    keychain: Option<&Keychain>,
) -> Result<Consumer> {
    let mut ledger = Ledger::open(store_dir)?;
    let consumer = ledger.get(id_or_name)?;
    if let Some(keychain) = keychain {
        for (key, _) in secret_keys(&consumer) {
            keychain.delete(&key)?;
        }
    }
    ledger.remove(&consumer.id)
}

/// After the store's log was emptied (the slot dropped, [`Store::forget_capture`]): positions start
/// again at 1, so every consumer reads the new log from its start (the next backfill as `read`),
/// and is told why. Messages already queued stay queued.
pub fn log_restarted(store_dir: &std::path::Path) -> Result<()> {
    if !ledger::ledger_path(store_dir).exists() {
        return Ok(());
    }
    let mut ledger = Ledger::open(store_dir)?;
    ledger.rewind_all()?;
    let at_ms = now_ms();
    for consumer in ledger.list()? {
        let message = format!(
            "consumer '{}': the slot was dropped and the store emptied, so changes made on the source until the next capture \
             starts are not captured. It reads the store again from its start: the next backfill's rows arrive as `read` messages.",
            consumer.spec.name
        );
        tracing::warn!(consumer = %consumer.spec.name, "{message}");
        ledger.notify(
            &consumer.id,
            &format!("restarted:{at_ms}"),
            consumer::Notice {
                kind: crate::ErrorKind::Diverged,
                message,
                at_ms,
            },
        )?;
    }
    Ok(())
}
