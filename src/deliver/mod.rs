//! Delivery: every stored change to the user's applications, by webhook or a Sequin-compatible pull
//! API, from Tidepool's own store rather than from the replication slot.
//!
//! The parts: a consumer's definition ([`consumer`]), its durable queue and position ([`ledger`],
//! a file of its own next to the change store), the messages ([`message`], Sequin's shape), filters
//! ([`filter`], CEL), reading the log into queues ([`feed`]), HTTP push ([`webhook`]) and pull
//! ([`pull`]).
//!
//! Invariants:
//! - Delivery only reads the change store; it never holds its write lock, and nothing in the
//!   capture waits for it. A consumer that is down costs local disk (the store's log), never WAL on
//!   the source: the slot is confirmed as soon as changes are stored.
//! - Delivery is at least once: a message leaves its queue only when acknowledged, and every message
//!   carries an `idempotency_key` that is the same on every redelivery.
//! - [`run`] wakes on each store commit it is told of (no polling needed for a capture in the same
//!   process) and re-reads once a second for what another process changed (a consumer added, a
//!   parked message retried from the command line).

pub mod consumer;
pub mod feed;
pub mod filter;
pub mod ledger;
pub mod message;
pub mod pull;
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

/// Runs every webhook consumer of the store until the returned future is dropped (a task abort).
/// Consumers added or removed meanwhile are started or stopped within a second. A consumer whose
/// worker fails (its keychain entry missing, the ledger unreadable) is restarted after a pause.
pub async fn run(options: DeliveryOptions) -> Result<()> {
    let context = Arc::new(Context::new(options)?);
    let mut workers: HashMap<String, tokio::task::JoinHandle<()>> = HashMap::new();
    let ledger = Ledger::open(&context.store_dir)?;
    /// Aborts the workers when `run` is dropped.
    struct Workers<'a>(&'a mut HashMap<String, tokio::task::JoinHandle<()>>);
    impl Drop for Workers<'_> {
        fn drop(&mut self) {
            for (_, w) in self.0.drain() {
                w.abort();
            }
        }
    }
    let workers = Workers(&mut workers);
    loop {
        let consumers = ledger.list()?;
        workers.0.retain(|id, w| {
            let keep = consumers.iter().any(|c| &c.id == id) && !w.is_finished();
            if !keep {
                w.abort();
            }
            keep
        });
        for consumer in consumers {
            if !matches!(consumer.spec.destination, Destination::Webhook(_))
                || workers.0.contains_key(&consumer.id)
            {
                continue;
            }
            let context = context.clone();
            let id = consumer.id.clone();
            let name = consumer.spec.name.clone();
            workers.0.insert(
                consumer.id.clone(),
                tokio::spawn(async move {
                    if let Err(e) = webhook::run(context, id).await {
                        tracing::error!(consumer = %name, "webhook delivery stopped: {e}");
                        // Restarted by the next round after this pause.
                        tokio::time::sleep(Duration::from_secs(5)).await;
                    }
                }),
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Saves a new consumer in the store in `store_dir`. Its collections must be in the store; it
/// starts after what is stored now, or at the beginning of the log. A webhook consumer gets a new
/// signing secret in `keychain`, and `secret_headers` (name, value) go there too.
pub fn add_consumer(
    store_dir: &std::path::Path,
    spec: ConsumerSpec,
    keychain: Option<&Keychain>,
    secret_headers: &[(String, crate::secrets::Secret)],
) -> Result<Consumer> {
    spec.validate()?;
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
        let pruned = crate::retention::pruned(&store)?;
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
    Ok(consumer)
}

/// Deletes the keychain entries of every consumer of the store in `store_dir` and its pull API
/// token, before the store itself is deleted; returns them described for a person.
pub fn forget_secrets(store_dir: &std::path::Path, keychain: &Keychain) -> Result<Vec<String>> {
    let mut ledger = Ledger::open(store_dir)?;
    let mut forgotten = Vec::new();
    for consumer in ledger.list()? {
        if let Destination::Webhook(w) = &consumer.spec.destination {
            keychain.delete(&crate::secrets::SecretKey::WebhookSecret(
                consumer.id.clone(),
            ))?;
            forgotten.push(format!(
                "signing secret of consumer '{}'",
                consumer.spec.name
            ));
            for name in &w.secret_headers {
                keychain.delete(&crate::secrets::SecretKey::WebhookHeader(
                    consumer.id.clone(),
                    name.clone(),
                ))?;
                forgotten.push(format!(
                    "header {name} of consumer '{}'",
                    consumer.spec.name
                ));
            }
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
    if let (Destination::Webhook(w), Some(keychain)) = (&consumer.spec.destination, keychain) {
        keychain.delete(&crate::secrets::SecretKey::WebhookSecret(
            consumer.id.clone(),
        ))?;
        for name in &w.secret_headers {
            keychain.delete(&crate::secrets::SecretKey::WebhookHeader(
                consumer.id.clone(),
                name.clone(),
            ))?;
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
