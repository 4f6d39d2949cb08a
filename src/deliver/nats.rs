//! NATS JetStream delivery: queued messages published to a stream, one subject per table and
//! action (a template), each with its `idempotency_key` as `Nats-Msg-Id`.
//!
//! Invariants:
//! - A message leaves the queue only after JetStream acknowledged it (the publish acknowledgement,
//!   which the server sends once the stream has stored it). A refused publish, a timeout, a lost
//!   connection or bad credentials are failed attempts, retried after a delay and parked after the
//!   last retry, like a webhook's.
//! - Every publish carries `Nats-Msg-Id` = the message's `idempotency_key`, the same on every
//!   attempt and after any restart: a message published again (its acknowledgement lost, or
//!   Tidepool killed after the publish) is dropped by the stream's de-duplication within its
//!   duplicate window. Retry delays here stop at [`MAX_RETRY_MS`], well inside the default window
//!   (2 minutes), so a retry is not stored twice.
//! - In changes mode a message's group is its subject ([`crate::deliver::feed`]), and a group's
//!   messages are published in log order on one connection, the next batch only after the last one
//!   settled; a failed message holds back its subject until it is delivered, skipped or retried.
//!   So each subject receives its changes in commit order.
//! - The credential is read from the keychain when the worker starts and goes only to the server.
//!   Errors name the server and the subject, never the credential.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::Deserialize;

use crate::deliver::consumer::{Consumer, Destination, Nats, NatsAuth};
use crate::deliver::feed::{Feeder, PAGE};
use crate::deliver::ledger::{Attempt, Claimed, Ledger};
use crate::deliver::message::commit_ms;
use crate::deliver::subject::{render, wildcard, Values};
use crate::deliver::{now_ms, on_blocking_thread, Context};
use crate::error::{Error, ErrorKind, Result};
use crate::secrets::{Secret, SecretKey};

/// The longest retry delay: inside JetStream's default duplicate window of two minutes.
pub const MAX_RETRY_MS: u64 = 60_000;

/// The delay before the next attempt of a message that failed `failures` times: the webhook's
/// backoff (1 s doubling, ±15 %), capped at [`MAX_RETRY_MS`].
pub fn backoff_ms(failures: u32, jitter: f64) -> u64 {
    crate::deliver::webhook::backoff_ms(failures, jitter).min(MAX_RETRY_MS)
}

/// What a message's subject and de-duplication id are made of, read from its queued body.
#[derive(Deserialize)]
struct Head<'a> {
    #[serde(borrow)]
    action: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    metadata: Metadata<'a>,
}

#[derive(Deserialize)]
struct Metadata<'a> {
    #[serde(borrow)]
    table_schema: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    table_name: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    database_name: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    idempotency_key: std::borrow::Cow<'a, str>,
}

/// The subject and `Nats-Msg-Id` of a queued message.
pub fn subject_and_id(template: &str, body: &str) -> Result<(String, String)> {
    let head: Head = serde_json::from_str(body)
        .map_err(|e| Error::internal(format!("consumers: a queued message: {e}")))?;
    let subject = render(
        template,
        &Values {
            database: &head.metadata.database_name,
            schema: &head.metadata.table_schema,
            table: &head.metadata.table_name,
            action: &head.action,
        },
    );
    Ok((subject, head.metadata.idempotency_key.into_owned()))
}

/// The server list, for messages (never with credentials: [`Nats`] refuses URLs that carry them).
fn servers(nats: &Nats) -> Vec<String> {
    nats.url.split(',').map(|s| s.trim().to_string()).collect()
}

/// Connects to the consumer's server with its credential; the error says what to do.
pub async fn connect(nats: &Nats, credential: Option<&Secret>) -> Result<async_nats::Client> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut options = async_nats::ConnectOptions::new()
        .name(concat!("tidepool/", env!("CARGO_PKG_VERSION")))
        .connection_timeout(Duration::from_millis(nats.timeout_ms.max(1000)))
        .require_tls(nats.tls);
    if let Some(file) = &nats.ca_file {
        options = options.add_root_certificates(file.into());
    }
    let secret = || {
        credential.map(|s| s.expose().to_string()).ok_or_else(|| {
            Error::new(
                ErrorKind::Keychain,
                "the consumer's NATS credential is not in the keychain",
            )
        })
    };
    options = match &nats.auth {
        NatsAuth::None => options,
        NatsAuth::Token => options.token(secret()?),
        NatsAuth::UserPassword { user } => options.user_and_password(user.clone(), secret()?),
        NatsAuth::Nkey => options.nkey(secret()?.trim().to_string()),
        NatsAuth::Creds => options.credentials(&secret()?).map_err(|_| {
            // The parser's message may quote the content; say only what is wrong.
            Error::invalid_input(
                "nats-credentials",
                "the credentials are not the content of a .creds file (a user JWT and an nkey seed)",
            )
        })?,
    };
    let list = servers(nats);
    let addrs: Vec<async_nats::ServerAddr> = list
        .iter()
        .map(|s| {
            s.parse()
                .map_err(|e| Error::invalid_input("nats-url", format!("'{s}': {e}")))
        })
        .collect::<Result<_>>()?;
    options.connect(addrs).await.map_err(|e| {
        use async_nats::ConnectErrorKind as K;
        // A certificate the client refuses arrives as an I/O error carrying rustls' reason.
        let text = e.to_string();
        let tls_failed = ["certificate", "TLS", "tls", "corrupt message", "handshake"]
            .iter()
            .any(|marker| text.contains(marker));
        let (kind, hint) = match e.kind() {
            K::Io if tls_failed => (
                ErrorKind::Tls,
                "TLS failed: check that the server speaks TLS and that its certificate's authority is trusted (--nats-ca-file)",
            ),
            K::AuthorizationViolation | K::Authentication => (
                ErrorKind::Authentication,
                "the server refused the consumer's credentials: check the token, user and password, nkey or .creds content",
            ),
            K::Tls => (
                ErrorKind::Tls,
                "TLS failed: check that the server speaks TLS and that its certificate's authority is trusted (--nats-ca-file)",
            ),
            _ => (
                ErrorKind::Connection,
                "check that nats-server is running there (with -js) and reachable",
            ),
        };
        Error::new(kind, format!("{}: {e}: {hint}", list.join(",")))
    })
}

/// Creates the consumer's stream when it names one that does not exist, capturing every subject
/// of its template, with JetStream's default duplicate window (2 minutes).
pub async fn ensure_stream(client: &async_nats::Client, nats: &Nats) -> Result<()> {
    let Some(name) = &nats.stream else {
        return Ok(());
    };
    let js = async_nats::jetstream::new(client.clone());
    js.get_or_create_stream(async_nats::jetstream::stream::Config {
        name: name.clone(),
        subjects: vec![wildcard(&nats.subject)],
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    })
    .await
    .map_err(|e| {
        Error::new(
            ErrorKind::Connection,
            format!(
                "{}: cannot find or create stream '{name}' for subjects '{}': {e}",
                nats.url,
                wildcard(&nats.subject)
            ),
        )
    })?;
    Ok(())
}

/// Connects, with the stream made if the consumer names one: what a worker does first.
async fn open(nats: &Nats, credential: Option<&Secret>) -> Result<async_nats::jetstream::Context> {
    let client = connect(nats, credential).await?;
    ensure_stream(&client, nats).await?;
    let mut js = async_nats::jetstream::new(client);
    js.set_timeout(Duration::from_millis(nats.timeout_ms));
    Ok(js)
}

/// What saving a consumer checks, so that a wrong address or credential is refused at once: it
/// connects, and makes the stream if the consumer names one.
pub async fn check(nats: &Nats, credential: Option<&Secret>) -> Result<()> {
    let js = open(nats, credential).await?;
    // An error here means the server went away just now; the worker will say so.
    let _ = js.client().flush().await;
    Ok(())
}

/// A publish that settled: the message's log position, its failures before, and the outcome.
type Outcome = (u64, u32, Result<(), String>);

/// Publishes a batch in order, then awaits the acknowledgements in order.
async fn publish(
    js: &async_nats::jetstream::Context,
    nats: &Nats,
    batch: Vec<Claimed>,
) -> Vec<Outcome> {
    let mut pending = Vec::with_capacity(batch.len());
    let mut out = Vec::with_capacity(batch.len());
    let mut stopped: Option<String> = None;
    for message in batch {
        if let Some(reason) = &stopped {
            // Not sent: what follows a publish that could not even be sent waits for it.
            out.push((message.seq, message.attempts, Err(reason.clone())));
            continue;
        }
        let (subject, id) = match subject_and_id(&nats.subject, message.body.get()) {
            Ok(parts) => parts,
            Err(e) => {
                out.push((message.seq, message.attempts, Err(e.message().to_string())));
                continue;
            }
        };
        let payload = Bytes::from(message.body.get().to_string());
        let publish = async_nats::jetstream::message::PublishMessage::build()
            .payload(payload)
            .message_id(&id);
        match js.send_publish(subject.clone(), publish).await {
            Ok(ack) => pending.push((message.seq, message.attempts, subject, ack)),
            Err(e) => {
                let reason = format!("{}: publishing to '{subject}': {e}", nats.url);
                out.push((message.seq, message.attempts, Err(reason.clone())));
                stopped = Some(reason);
            }
        }
    }
    for (seq, attempts, subject, ack) in pending {
        let outcome = match ack.await {
            Ok(_) => Ok(()),
            Err(e) => Err(match e.kind() {
                async_nats::jetstream::context::PublishErrorKind::StreamNotFound => format!(
                    "{}: no JetStream stream captures subject '{subject}': create one (nats stream add --subjects '{}') or give the consumer a stream to create",
                    nats.url,
                    wildcard(&nats.subject)
                ),
                _ => format!("{}: publishing to '{subject}': {e}", nats.url),
            }),
        };
        out.push((seq, attempts, outcome));
    }
    out
}

/// Delivers one NATS consumer's messages until the task is aborted or the consumer is removed.
pub(crate) async fn run(context: Arc<Context>, consumer_id: String) -> Result<()> {
    let mut ledger = Ledger::open(&context.store_dir)?;
    let consumer = Arc::new(ledger.get(&consumer_id)?);
    let Destination::Nats(nats) = consumer.spec.destination.clone() else {
        return Ok(());
    };
    let credential = if nats.auth.needs_secret() {
        let keychain = context.keychain.as_ref().ok_or_else(|| {
            Error::new(
                ErrorKind::Keychain,
                "the OS keychain cannot be opened: the NATS credential cannot be read",
            )
        })?;
        Some(
            keychain
                .get(&SecretKey::NatsCredential(consumer.id.clone()))?
                .ok_or_else(|| {
                    Error::new(
                        ErrorKind::Keychain,
                        "the consumer's NATS credential is not in the keychain",
                    )
                })?,
        )
    } else {
        None
    };
    // What an earlier worker had in flight goes first: published again, it is de-duplicated.
    let released = ledger.release_claims(&consumer.id)?;
    if released > 0 {
        tracing::info!(consumer = %consumer.spec.name, released, "publishing again what was in flight when delivery last stopped");
    }
    let feeder = Feeder::new(context.store_dir.clone(), context.database.clone());
    let mut state = (ledger, feeder);
    let mut wake = context.wake.clone();
    let hold_ms = nats.timeout_ms + 5_000;
    let mut jetstream: Option<async_nats::jetstream::Context> = None;
    let mut settle: Vec<Outcome> = Vec::new();
    // The last batch as the consumer's page lists it, with its messages' latencies.
    let mut record: Option<(Attempt, Vec<u64>)> = None;
    loop {
        wake.borrow_and_update();
        let round = Round {
            consumer: consumer.clone(),
            max_retries: nats.max_retries,
            batch_size: nats.batch_size as usize,
            hold_ms,
        };
        let finished = std::mem::take(&mut settle);
        let recorded = record.take();
        let (back, result) = on_blocking_thread(state, "NATS delivery", move |state| {
            round.run(state, finished, recorded)
        })
        .await?;
        state = back;
        let Some((batch, next)) = result? else {
            return Ok(());
        };
        if !batch.is_empty() {
            let at_ms = now_ms();
            let started = std::time::Instant::now();
            let count = batch.len() as u32;
            let commits: std::collections::HashMap<u64, Option<i64>> = batch
                .iter()
                .map(|m| (m.seq, commit_ms(m.body.get())))
                .collect();
            if jetstream.is_none() {
                match open(&nats, credential.as_ref()).await {
                    Ok(js) => jetstream = Some(js),
                    Err(e) => settle = failed_all(&batch, e.message()),
                }
            }
            if let Some(js) = &jetstream {
                settle = publish(js, &nats, batch).await;
                if settle.iter().any(|(_, _, o)| o.is_err())
                    && js.client().connection_state() != async_nats::connection::State::Connected
                {
                    // Connected again from scratch next time, so an answer is prompt and clear.
                    jetstream = None;
                }
            }
            let duration_ms = started.elapsed().as_millis() as u64;
            let done = at_ms + duration_ms as i64;
            let latencies = settle
                .iter()
                .filter(|(_, _, o)| o.is_ok())
                .filter_map(|(seq, _, _)| commits.get(seq).copied().flatten())
                .map(|commit| (done - commit).max(0) as u64)
                .collect();
            record = Some((
                Attempt {
                    at_ms,
                    messages: count,
                    // JetStream acknowledges a publish; there is no HTTP status.
                    status: None,
                    error: settle
                        .iter()
                        .find_map(|(_, _, o)| o.as_ref().err().cloned()),
                    duration_ms,
                    test: false,
                },
                latencies,
            ));
            // Settled by the next round at once.
            continue;
        }
        let pause = next
            .map(|at| Duration::from_millis((at - now_ms()).clamp(0, 1000) as u64))
            .unwrap_or(Duration::from_secs(1));
        tokio::select! {
            Ok(()) = wake.changed() => {}
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

fn failed_all(batch: &[Claimed], reason: &str) -> Vec<Outcome> {
    batch
        .iter()
        .map(|m| (m.seq, m.attempts, Err(reason.to_string())))
        .collect()
}

/// What a round needs to know of its consumer.
struct Round {
    consumer: Arc<Consumer>,
    max_retries: Option<u32>,
    batch_size: usize,
    hold_ms: u64,
}

impl Round {
    /// One round, in one ledger transaction: settles the last batch, reads the log into the queue
    /// and claims the next batch; `None` once the consumer was removed. With an empty batch, when
    /// the next message held back by a retry delay is due.
    #[allow(clippy::type_complexity)]
    fn run(
        &self,
        (ledger, feeder): &mut (Ledger, Feeder),
        finished: Vec<Outcome>,
        recorded: Option<(Attempt, Vec<u64>)>,
    ) -> Result<Option<(Vec<Claimed>, Option<i64>)>> {
        let consumer = &self.consumer;
        ledger.round(|ledger| {
            if let Some((attempt, latencies)) = recorded {
                ledger.record_attempt(&consumer.id, &attempt)?;
                let done = attempt.at_ms + attempt.duration_ms as i64;
                ledger.record_delivered(&consumer.id, done, &latencies)?;
            }
            let delivered: Vec<u64> = finished
                .iter()
                .filter(|(_, _, o)| o.is_ok())
                .map(|(seq, _, _)| *seq)
                .collect();
            ledger.delivered(&consumer.id, &delivered)?;
            let mut logged = false;
            for (seq, failures, outcome) in &finished {
                if let Err(reason) = outcome {
                    let delay = backoff_ms(failures + 1, crate::deliver::webhook::jitter());
                    if !logged {
                        tracing::warn!(consumer = %consumer.spec.name, retry_in_ms = delay, "NATS delivery failed: {reason}");
                        logged = true;
                    }
                    ledger.attempt_failed(
                        &consumer.id,
                        &[*seq],
                        reason,
                        now_ms() + delay as i64,
                        self.max_retries,
                    )?;
                }
            }
            if !ledger.exists(&consumer.id)? {
                return Ok(None);
            }
            while feeder.feed(ledger, &consumer.id, now_ms())? == PAGE {}
            // Paused: settled and read, nothing claimed; resuming is seen within a second.
            if ledger.paused(&consumer.id)? {
                return Ok(Some((Vec::new(), None)));
            }
            let batch = ledger.claim_runs(&consumer.id, now_ms(), self.batch_size, self.hold_ms)?;
            let next = if batch.is_empty() {
                ledger.next_due(&consumer.id, now_ms())?
            } else {
                None
            };
            Ok(Some((batch, next)))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_and_ids_come_from_the_queued_message() {
        let body = r#"{"record":{"id":1},"changes":null,"action":"insert","metadata":{"table_schema":"public",
            "table_name":"order items","commit_lsn":1,"database_name":"app","idempotency_key":"MTox"}}"#;
        let (subject, id) =
            subject_and_id("tidepool.{database}.{schema}.{table}.{action}", body).unwrap();
        assert_eq!(subject, "tidepool.app.public.order_items.insert");
        assert_eq!(id, "MTox");
        assert!(subject_and_id("x", "{").is_err());
        assert!(subject_and_id("x", r#"{"action":"insert"}"#).is_err());
    }

    #[test]
    fn retries_stay_inside_the_duplicate_window() {
        assert_eq!(backoff_ms(1, 0.0), 1000);
        assert_eq!(backoff_ms(30, 1.0), MAX_RETRY_MS);
        const { assert!(MAX_RETRY_MS < 120_000) };
    }
}
