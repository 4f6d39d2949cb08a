//! Webhook delivery (HTTP push): messages POSTed to the consumer's URL, signed by the Standard
//! Webhooks specification, retried with exponential backoff, parked after the last retry.
//!
//! In changes mode messages go from the store's log straight into requests (a [`Window`] of those
//! read past the consumer's position), never copied into the ledger's queue: copying, marking in
//! flight and deleting each message cost three times the capture's CPU per change. A message gets
//! a queue row only when its request fails, or when its group has a queued message it must wait
//! behind; the queue then retries, parks and releases it as before. Rows mode (whose coalescing
//! works on queued rows) and a paused consumer read the log into the queue.
//!
//! Invariants:
//! - A message is settled only after a 2xx answer to a request that carried it, or once it has a
//!   queue row; anything else (another status, a transport error, the timeout) is a failed attempt
//!   of every message in it. The consumer's position moves past a message only once it and every
//!   message before it are settled, so a crash or a restart sends again what was not, with the
//!   same ack id and `webhook-id`.
//! - At most one message per group is in flight (from the queue only a group's oldest message, and
//!   only while no message of the group is in flight or parked; from the log only a group's oldest,
//!   while none of the group is in a request or queued), so each group is delivered in commit order
//!   and a failing message holds back only its own group.
//! - Retries wait 1 s doubling per failure, ±15 % jitter, at most 10 minutes.
//! - The signing secret and secret header values are read from the keychain when the worker starts
//!   and are sent only to the consumer's URL; errors name the URL and status, never a header value.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;

use serde_json::value::RawValue;

use crate::deliver::consumer::{Consumer, Destination, Mode, Webhook};
use crate::deliver::feed::{queue_limit, Feeder, PAGE};
use crate::deliver::ledger::{ack_id_of, Attempt, Claimed, Failure, Ledger, Row};
use crate::deliver::message::{commit_ms, Message};
use crate::deliver::{now_ms, on_blocking_thread, Context};
use crate::error::{Error, Result};
use crate::secrets::{Keychain, Secret, SecretKey};

/// The first retry delay.
const FIRST_RETRY_MS: f64 = 1000.0;
/// The longest retry delay.
const MAX_RETRY_MS: f64 = 600_000.0;

/// The delay before the next attempt of a message that has failed `failures` times (1 or more):
/// 1 s doubling, capped at 10 minutes, times a jitter factor `jitter` in [-1, 1] scaled to ±15 %.
pub fn backoff_ms(failures: u32, jitter: f64) -> u64 {
    let base =
        (FIRST_RETRY_MS * 2f64.powi(failures.saturating_sub(1).min(30) as i32)).min(MAX_RETRY_MS);
    (base * (1.0 + 0.15 * jitter.clamp(-1.0, 1.0))).round() as u64
}

/// A number in [-1, 1] from the OS's randomness (std's hasher keys).
pub(crate) fn jitter() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(now_ms() as u64);
    (h.finish() as f64 / u64::MAX as f64) * 2.0 - 1.0
}

/// A new signing secret: `whsec_` and 32 random bytes in base64.
pub fn new_signing_secret() -> Result<Secret> {
    use base64::Engine as _;
    let hex = crate::secrets::random_hex(32)?;
    let bytes: Vec<u8> = (0..32)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap_or(0))
        .collect();
    Ok(Secret::new(format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )))
}

/// The `webhook-signature` header value for a request.
pub fn signature(secret: &Secret, id: &str, timestamp: i64, body: &[u8]) -> Result<String> {
    standardwebhooks::Webhook::new(secret.expose())
        .and_then(|w| w.sign(id, timestamp, body))
        .map_err(|e| Error::invalid_input("consumer secret", format!("cannot sign: {e}")))
}

/// What a request needs besides its messages.
pub(crate) struct Target {
    url: String,
    headers: reqwest::header::HeaderMap,
    secret: Secret,
    batch: bool,
    timeout: Duration,
}

impl Target {
    /// Reads the consumer's signing secret and secret header values from `keychain`.
    pub(crate) fn new(keychain: Option<&Keychain>, id: &str, webhook: &Webhook) -> Result<Target> {
        let mut headers = reqwest::header::HeaderMap::new();
        let header = |name: &str, value: &str| -> Result<_> {
            Ok((
                reqwest::header::HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                    Error::invalid_input("header", format!("'{name}' is not a header name"))
                })?,
                reqwest::header::HeaderValue::from_str(value).map_err(|_| {
                    Error::invalid_input("header", format!("the value of '{name}' is not valid"))
                })?,
            ))
        };
        for (name, value) in &webhook.headers {
            let (n, v) = header(name, value)?;
            headers.insert(n, v);
        }
        // Never send unsigned: a receiver that verifies would reject every request, one that does
        // not would be told nothing. Without the keychain or the secret the worker stops and says so.
        let keychain = keychain.ok_or_else(|| {
            Error::new(
                crate::ErrorKind::Keychain,
                "the OS keychain cannot be opened: webhook requests cannot be signed",
            )
        })?;
        for name in &webhook.secret_headers {
            let value = keychain
                .get(&SecretKey::WebhookHeader(id.to_string(), name.clone()))?
                .ok_or_else(|| {
                    Error::new(
                        crate::ErrorKind::Keychain,
                        format!("the value of secret header '{name}' is not in the keychain"),
                    )
                })?;
            let (n, mut v) = header(name, value.expose())?;
            v.set_sensitive(true);
            headers.insert(n, v);
        }
        let secret = keychain
            .get(&SecretKey::WebhookSecret(id.to_string()))?
            .ok_or_else(|| {
                Error::new(
                    crate::ErrorKind::Keychain,
                    "the consumer's signing secret is not in the keychain",
                )
            })?;
        Ok(Target {
            url: webhook.url.clone(),
            headers,
            secret,
            batch: webhook.batch_size.is_some(),
            timeout: Duration::from_millis(webhook.timeout_ms),
        })
    }

    /// Sends one request of queued messages; `Ok` on a 2xx, else the reason; with the HTTP status
    /// if one was answered.
    async fn send(
        &self,
        client: &reqwest::Client,
        batch: &[Claimed],
    ) -> (Option<u16>, Result<(), String>) {
        // The queued JSON texts are spliced in as they are.
        let body = if self.batch {
            #[derive(serde::Serialize)]
            struct Batch<'a> {
                data: Vec<&'a serde_json::value::RawValue>,
            }
            match serde_json::to_string(&Batch {
                data: batch.iter().map(|m| &*m.body).collect(),
            }) {
                Ok(body) => body,
                Err(e) => return (None, Err(format!("encoding the request: {e}"))),
            }
        } else {
            batch
                .first()
                .map(|m| m.body.get().to_string())
                .unwrap_or_default()
        };
        // The id is the same on every attempt of the same messages (receivers may dedupe on it; each
        // message also carries its idempotency_key).
        let id = match batch {
            [one] => format!("msg_{}", one.ack_id),
            [first, ..] => format!("msg_{}_{}", first.ack_id, batch.len()),
            [] => return (None, Ok(())),
        };
        self.post(client, id, body).await
    }

    /// POSTs `body` signed under webhook id `id`.
    pub(crate) async fn post(
        &self,
        client: &reqwest::Client,
        id: String,
        body: String,
    ) -> (Option<u16>, Result<(), String>) {
        let timestamp = now_ms() / 1000;
        let mut request = client
            .post(&self.url)
            .timeout(self.timeout)
            .headers(self.headers.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("webhook-id", &id)
            .header("webhook-timestamp", timestamp.to_string());
        let signature = match signature(&self.secret, &id, timestamp, body.as_bytes()) {
            Ok(s) => s,
            Err(e) => return (None, Err(e.message().to_string())),
        };
        request = request.header("webhook-signature", signature);
        match request.body(body).send().await {
            Ok(response) if response.status().is_success() => {
                (Some(response.status().as_u16()), Ok(()))
            }
            Ok(response) => {
                let status = response.status();
                let text = response.text().await.unwrap_or_default();
                let text: String = text.chars().take(200).collect();
                (
                    Some(status.as_u16()),
                    Err(format!("{} answered HTTP {status}: {text}", self.url)),
                )
            }
            Err(e) if e.is_timeout() => (
                None,
                Err(format!(
                    "{} did not answer within {} ms",
                    self.url,
                    self.timeout.as_millis()
                )),
            ),
            Err(e) => (None, Err(format!("{}: {}", self.url, transport_error(&e)))),
        }
    }

    /// Whether requests carry `{"data": [...]}` rather than one bare message.
    pub(crate) fn batched(&self) -> bool {
        self.batch
    }
}

/// A transport error without the URL's query or any header (reqwest's Display may include the URL).
fn transport_error(e: &reqwest::Error) -> String {
    let mut text = if e.is_connect() {
        "cannot connect".to_string()
    } else {
        "the request failed".to_string()
    };
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text = format!("{text}: {s}");
        source = s.source();
    }
    text
}

/// Delivers one webhook consumer's messages until the task is aborted or the consumer is removed.
pub(crate) async fn run(context: Arc<Context>, consumer_id: String) -> Result<()> {
    let ledger_dir = context.store_dir.clone();
    let mut ledger = Ledger::open(&ledger_dir)?;
    let consumer = Arc::new(ledger.get(&consumer_id)?);
    let Destination::Webhook(webhook) = consumer.spec.destination.clone() else {
        return Ok(());
    };
    let target = Arc::new(Target::new(
        context.keychain.as_ref(),
        &consumer.id,
        &webhook,
    )?);
    // What an earlier worker (killed, or stopped and restarted) had in flight goes first, now.
    let released = ledger.release_claims(&consumer.id)?;
    if released > 0 {
        tracing::info!(consumer = %consumer.spec.name, released, "redelivering what was in flight when delivery last stopped");
    }
    let feeder = Feeder::new(context.store_dir.clone(), context.database.clone());
    let mut state = Worker {
        ledger,
        feeder,
        window: Window::at(consumer.position),
    };
    let mut wake = context.wake.clone();
    let batch_size = webhook.batch_size.unwrap_or(1) as usize;
    // A request in flight holds its messages this long past its timeout before they are offered
    // again (only after a crash: a finished request always settles them).
    let hold_ms = webhook.timeout_ms + 5_000;
    let mut in_flight: JoinSet<Outcome> = JoinSet::new();
    // Requests that have finished and are not yet settled in the ledger.
    let mut finished: Vec<Outcome> = Vec::new();
    let capacity = webhook.max_in_flight as usize;
    loop {
        wake.borrow_and_update();
        while let Some(done) = in_flight.try_join_next() {
            finished.push(done.map_err(request_task_lost)?);
        }
        let room = capacity.saturating_sub(in_flight.len());
        // The round's SQLite work runs on a blocking thread, so requests in flight and the
        // capture's tasks are never held up by it.
        let rules = Rules {
            consumer: consumer.clone(),
            max_retries: webhook.max_retries,
            room,
            batch_size,
            hold_ms,
        };
        let settle = std::mem::take(&mut finished);
        let (back, round) = on_blocking_thread(state, "webhook delivery", move |state| {
            rules.round(state, settle)
        })
        .await?;
        state = back;
        let round = round?;
        let Some((batches, next)) = round else {
            return Ok(());
        };
        for batch in batches {
            let target = target.clone();
            let client = context.client.clone();
            in_flight.spawn(async move {
                let failures = batch.messages.iter().map(|m| m.attempts).max().unwrap_or(0);
                let at_ms = now_ms();
                let started = std::time::Instant::now();
                let (status, outcome) = target.send(&client, &batch.messages).await;
                let attempt = Attempt {
                    at_ms,
                    messages: batch.messages.len() as u32,
                    status,
                    error: outcome.as_ref().err().cloned(),
                    duration_ms: started.elapsed().as_millis() as u64,
                    test: false,
                };
                Outcome {
                    batch,
                    failures,
                    outcome,
                    attempt,
                }
            });
        }
        let pause = next
            .map(|at| Duration::from_millis((at - now_ms()).clamp(0, 1000) as u64))
            .unwrap_or(Duration::from_secs(1));
        tokio::select! {
            Some(done) = in_flight.join_next(), if !in_flight.is_empty() => {
                finished.push(done.map_err(request_task_lost)?)
            }
            // Once the capture is gone (its sender dropped) this branch is disabled, and what is
            // stored is re-read after `pause`; a finished request is never held up by the wait.
            Ok(()) = wake.changed() => {}
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

/// A request task that ended without an outcome (it panicked): its messages would stay marked as
/// sending for good, so the worker fails instead, and its restart reads them from the log again.
fn request_task_lost(e: tokio::task::JoinError) -> Error {
    Error::internal(format!("a webhook request ended without an answer: {e}"))
}

/// A worker's state, moved onto a blocking thread for each round.
struct Worker {
    ledger: Ledger,
    feeder: Feeder,
    window: Window,
}

/// Where a request's messages came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// Queue rows: retries, messages held behind them, rows mode, what was read while paused.
    Queue,
    /// Straight from the log, through the [`Window`] of this epoch.
    Log(u64),
}

/// The messages of one request.
struct Batch {
    messages: Vec<Claimed>,
    /// Each message's commit time (Unix ms), for its latency.
    commits: Vec<Option<i64>>,
    source: Source,
}

/// Where a message read from the log (and not queued) is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Not sent yet.
    Waiting,
    /// In a request.
    Sending,
    /// Acknowledged, or given a queue row (failed, or held behind its group).
    Settled,
}

/// A message read from the log past the consumer's position, not queued.
struct Pending {
    seq: u64,
    group: String,
    ack_id: String,
    commit_ms: Option<i64>,
    /// Its JSON text while it waits (it travels with its request, and comes back with the outcome).
    body: Option<Box<RawValue>>,
    state: State,
}

impl Pending {
    fn new(consumer_id: &str, seq: u64, message: Message) -> Result<Pending> {
        // Every built message has a key; the position is a stand-in that is at least stable.
        let ack_id = match message.idempotency_key() {
            Some(key) => ack_id_of(consumer_id, key),
            None => ack_id_of(consumer_id, &format!("seq:{seq}")),
        };
        let commit_ms = message.commit_ms();
        let body = serde_json::value::to_raw_value(&message.body)
            .map_err(|e| Error::internal(format!("encoding a message: {e}")))?;
        Ok(Pending {
            seq,
            group: message.group,
            ack_id,
            commit_ms,
            body: Some(body),
            state: State::Waiting,
        })
    }
}

/// The messages a changes-mode worker delivers straight from the log, without copying them into
/// the queue: those read past the consumer's durable position, in log order.
///
/// The durable position only moves past a message once it is settled (acknowledged, or given a
/// queue row), in the ledger transaction that settles it: after a crash everything unsettled is
/// read from the log again, with the same ack id ([`ack_id_of`]).
struct Window {
    pending: VecDeque<Pending>,
    /// The last log position read into it.
    read_to: u64,
    /// The consumer's position as last written or read.
    position: u64,
    /// Bumped when the window is dropped because the log restarted: outcomes of older requests
    /// name positions of the old log.
    epoch: u64,
}

impl Window {
    fn at(position: u64) -> Window {
        Window {
            pending: VecDeque::new(),
            read_to: position,
            position,
            epoch: 0,
        }
    }

    fn get(&self, seq: u64) -> Option<&Pending> {
        let i = self.pending.binary_search_by_key(&seq, |p| p.seq).ok()?;
        self.pending.get(i)
    }

    fn settle(&mut self, seq: u64) {
        if let Ok(i) = self.pending.binary_search_by_key(&seq, |p| p.seq) {
            self.pending[i].state = State::Settled;
            self.pending[i].body = None;
        }
    }

    /// Follows the stored position: an empty window starts where it is (it moved when a paused
    /// consumer's messages were queued); one that went back means the log was emptied and
    /// restarted, so what the window holds is of the old log and is dropped.
    fn sync(&mut self, position: u64, consumer: &str) {
        if !self.pending.is_empty() && position >= self.position {
            return;
        }
        if !self.pending.is_empty() {
            tracing::warn!(
                consumer,
                dropped = self.pending.len(),
                "the store's log restarted: reading it again from its start"
            );
            self.pending.clear();
            self.epoch += 1;
        }
        self.read_to = position;
        self.position = position;
    }

    fn sending(&self) -> bool {
        self.pending.iter().any(|p| p.state == State::Sending)
    }

    /// Gives the waiting messages whose group is in `groups` (all, without) a queue row, where
    /// they wait behind their group's queued messages.
    fn hold(
        &mut self,
        ledger: &mut Ledger,
        id: &str,
        groups: Option<&HashSet<String>>,
    ) -> Result<()> {
        if groups.is_some_and(|g| g.is_empty()) {
            return Ok(());
        }
        let rows: Vec<Row<'_>> = self
            .pending
            .iter()
            .filter(|p| p.state == State::Waiting)
            .filter(|p| groups.is_none_or(|g| g.contains(&p.group)))
            .filter_map(|p| {
                Some(Row {
                    seq: p.seq,
                    group: &p.group,
                    ack_id: &p.ack_id,
                    body: p.body.as_ref()?.get(),
                })
            })
            .collect();
        if rows.is_empty() {
            return Ok(());
        }
        let seqs: Vec<u64> = rows.iter().map(|r| r.seq).collect();
        ledger.hold(id, &rows, None)?;
        for seq in seqs {
            self.settle(seq);
        }
        Ok(())
    }

    /// Up to `room` requests of up to `batch_size` waiting messages, oldest first, each the oldest
    /// of its group with none of the group in a request.
    fn claim(&mut self, room: usize, batch_size: usize) -> Vec<Batch> {
        let mut picked: Vec<usize> = Vec::new();
        {
            // Scanning in log order: a group's message in a request, or waiting and not picked,
            // comes before every later one of the group, so those are skipped.
            let mut seen: HashSet<&str> = HashSet::new();
            for (i, p) in self.pending.iter().enumerate() {
                if picked.len() >= room * batch_size {
                    break;
                }
                match p.state {
                    State::Settled => {}
                    State::Sending => {
                        seen.insert(&p.group);
                    }
                    State::Waiting => {
                        if seen.insert(&p.group) {
                            picked.push(i);
                        }
                    }
                }
            }
        }
        let mut batches = Vec::new();
        for chunk in picked.chunks(batch_size.max(1)) {
            let mut messages = Vec::with_capacity(chunk.len());
            let mut commits = Vec::with_capacity(chunk.len());
            for &i in chunk {
                let p = &mut self.pending[i];
                let Some(body) = p.body.take() else {
                    continue;
                };
                p.state = State::Sending;
                messages.push(Claimed {
                    seq: p.seq,
                    ack_id: p.ack_id.clone(),
                    body,
                    attempts: 0,
                });
                commits.push(p.commit_ms);
            }
            batches.push(Batch {
                messages,
                commits,
                source: Source::Log(self.epoch),
            });
        }
        batches
    }

    /// Moves the stored position past the settled messages at the front.
    fn advance(&mut self, ledger: &mut Ledger, id: &str) -> Result<()> {
        while self
            .pending
            .front()
            .is_some_and(|p| p.state == State::Settled)
        {
            self.pending.pop_front();
        }
        let to = self.pending.front().map_or(self.read_to, |p| p.seq - 1);
        if to > self.position {
            ledger.advance(id, to)?;
            self.position = to;
        }
        Ok(())
    }
}

/// What a round needs to know of its consumer.
struct Rules {
    consumer: Arc<Consumer>,
    max_retries: Option<u32>,
    /// Requests that may start now.
    room: usize,
    batch_size: usize,
    hold_ms: u64,
}

impl Rules {
    /// One round, in one ledger transaction: settles what finished, reads the log and claims up to
    /// `room` batches; `None` once the consumer was removed. With the batches, when the next
    /// message held back by a retry delay is due, if nothing more could be claimed from the queue.
    ///
    /// In changes mode (not paused) messages go straight from the log into requests; the queue
    /// holds only those that failed and those waiting behind them in their group. In rows mode,
    /// and while paused, the log is read into the queue as before (coalescing needs the rows).
    #[allow(clippy::type_complexity)]
    fn round(
        &self,
        worker: &mut Worker,
        finished: Vec<Outcome>,
    ) -> Result<Option<(Vec<Batch>, Option<i64>)>> {
        let consumer = &self.consumer;
        let id = consumer.id.as_str();
        let Worker {
            ledger,
            feeder,
            window,
        } = worker;
        ledger.round(|ledger| {
            // A removed consumer gets no rows for what finished meanwhile.
            if !ledger.exists(id)? {
                return Ok(None);
            }
            // The window follows the log before finished requests are settled: a request of a
            // log emptied since must be seen as stale, not settled at a position the new log
            // reuses.
            let definition = feeder.definition(ledger, id)?;
            window.sync(definition.position, &consumer.spec.name);
            for outcome in finished {
                self.settle(ledger, window, outcome)?;
            }
            let paused = ledger.paused(id)?;
            if paused || consumer.spec.mode == Mode::Rows {
                // What the window still waits to send is queued (once nothing of it is in a
                // request, so no group gets a queued message while one is in flight), and the
                // log is read into the queue.
                if !window.sending() {
                    window.hold(ledger, id, None)?;
                }
                window.advance(ledger, id)?;
                if window.pending.is_empty() {
                    while feeder.feed(ledger, id, now_ms())? == PAGE {}
                }
                // Paused: settled and read, nothing claimed; resuming is seen within a second.
                if paused {
                    return Ok(Some((Vec::new(), None)));
                }
                let (batches, short) = self.claim_queue(ledger, self.room)?;
                let next = if short {
                    ledger.next_due(id, now_ms())?
                } else {
                    None
                };
                return Ok(Some((batches, next)));
            }
            // A message whose group has a queued message (a failure, or one held behind it)
            // waits behind it in the queue.
            let groups = ledger.queued_groups(id)?;
            window.hold(ledger, id, Some(&groups))?;
            let limit = queue_limit(&consumer.spec) as usize;
            let queued = ledger.queued(id)? as usize;
            loop {
                // Reading waits until a whole page fits, as the queue's does.
                let held = window.pending.len() + queued;
                if held > 0 && held + PAGE > limit {
                    break;
                }
                let Some(page) = feeder.read(ledger, &definition, window.read_to, now_ms())? else {
                    break;
                };
                // Settled from the queue while the position was below them (delivered, or
                // skipped by hand): not sent again.
                let settled = ledger.settled_between(id, window.read_to, page.last)?;
                for (seq, message) in page.messages {
                    let mut pending = Pending::new(id, seq, message)?;
                    if settled.contains(&seq) {
                        pending.state = State::Settled;
                        pending.body = None;
                    }
                    window.pending.push_back(pending);
                }
                window.read_to = page.last;
                if page.read < PAGE {
                    break;
                }
            }
            window.hold(ledger, id, Some(&groups))?;
            // Retries and held-back messages first: they are older than the window's.
            let (mut batches, short) = self.claim_queue(ledger, self.room)?;
            let room = self.room.saturating_sub(batches.len());
            if room > 0 {
                batches.extend(window.claim(room, self.batch_size));
            }
            window.advance(ledger, id)?;
            let next = if short {
                ledger.next_due(id, now_ms())?
            } else {
                None
            };
            Ok(Some((batches, next)))
        })
    }

    /// Up to `room` batches from the queue, and whether the last was short (the queue has no more
    /// that can go now).
    fn claim_queue(&self, ledger: &mut Ledger, room: usize) -> Result<(Vec<Batch>, bool)> {
        let mut batches = Vec::new();
        let mut short = false;
        while batches.len() < room {
            let messages = ledger.claim(
                &self.consumer.id,
                now_ms(),
                self.batch_size,
                self.hold_ms,
                None,
            )?;
            short = messages.len() < self.batch_size;
            if messages.is_empty() {
                break;
            }
            let commits = messages.iter().map(|m| commit_ms(m.body.get())).collect();
            batches.push(Batch {
                messages,
                commits,
                source: Source::Queue,
            });
        }
        Ok((batches, short))
    }

    /// Records a finished request: its attempt, then its messages acknowledged (removed from the
    /// queue, or settled in the window) or failed (a retry delay or parked; a message from the
    /// log gets its queue row now).
    fn settle(&self, ledger: &mut Ledger, window: &mut Window, finished: Outcome) -> Result<()> {
        let consumer = &self.consumer;
        let Outcome {
            batch,
            failures,
            outcome,
            attempt,
        } = finished;
        ledger.record_attempt(&consumer.id, &attempt)?;
        let seqs: Vec<u64> = batch.messages.iter().map(|m| m.seq).collect();
        // A request of an older window names positions of a log that was emptied since.
        let current = match batch.source {
            Source::Queue => true,
            Source::Log(epoch) => epoch == window.epoch,
        };
        match outcome {
            Ok(()) => {
                match batch.source {
                    Source::Queue => ledger.delivered(&consumer.id, &seqs)?,
                    Source::Log(_) if current => {
                        for seq in &seqs {
                            window.settle(*seq);
                        }
                    }
                    Source::Log(_) => {}
                }
                let done = attempt.at_ms + attempt.duration_ms as i64;
                let latencies: Vec<u64> = batch
                    .commits
                    .iter()
                    .flatten()
                    .map(|commit| (done - commit).max(0) as u64)
                    .collect();
                ledger.record_delivered(&consumer.id, done, &latencies)?;
            }
            Err(reason) => {
                let delay = backoff_ms(failures + 1, jitter());
                tracing::warn!(consumer = %consumer.spec.name, messages = seqs.len(), retry_in_ms = delay, "webhook delivery failed: {reason}");
                let retry_at_ms = now_ms() + delay as i64;
                match batch.source {
                    Source::Queue => ledger.attempt_failed(
                        &consumer.id,
                        &seqs,
                        &reason,
                        retry_at_ms,
                        self.max_retries,
                    )?,
                    Source::Log(_) if current => {
                        let rows: Vec<Row<'_>> = batch
                            .messages
                            .iter()
                            .filter_map(|m| {
                                Some(Row {
                                    seq: m.seq,
                                    group: &window.get(m.seq)?.group,
                                    ack_id: &m.ack_id,
                                    body: m.body.get(),
                                })
                            })
                            .collect();
                        ledger.hold(
                            &consumer.id,
                            &rows,
                            Some(Failure {
                                error: &reason,
                                retry_at_ms,
                                max_retries: self.max_retries,
                            }),
                        )?;
                        for seq in &seqs {
                            window.settle(*seq);
                        }
                    }
                    Source::Log(_) => {}
                }
            }
        }
        Ok(())
    }
}

/// A finished request.
struct Outcome {
    batch: Batch,
    /// The most failures any of its messages had before it.
    failures: u32,
    outcome: Result<(), String>,
    /// As the consumer's page lists it.
    attempt: Attempt,
}

/// What "Send a test message" got back.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, ts_rs::TS)]
#[serde(rename_all = "camelCase")]
#[ts(rename = "TestMessageResult")]
pub struct TestResult {
    /// The webhook id it was signed under (`msg_test_…`).
    pub webhook_id: String,
    /// The body sent, as the receiver got it.
    pub body: String,
    /// As it is listed among the consumer's recent attempts.
    #[serde(flatten)]
    pub attempt: Attempt,
}

/// Sends one request signed like every delivery, whose body is marked as a test (`"test": true`,
/// action `test`, no record), to the consumer's URL; records it among its attempts (not as a
/// change: nothing is queued or acknowledged).
pub async fn send_test(
    store_dir: &std::path::Path,
    keychain: Option<&Keychain>,
    consumer: &Consumer,
) -> Result<TestResult> {
    let Destination::Webhook(webhook) = &consumer.spec.destination else {
        return Err(Error::invalid_input(
            "name",
            format!(
                "'{}' is not a webhook consumer: only a webhook can be sent a test message",
                consumer.spec.name
            ),
        ));
    };
    let target = Target::new(keychain, &consumer.id, webhook)?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .user_agent(concat!("tidepool/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| Error::internal(format!("building the HTTP client: {e}")))?;
    let at_ms = now_ms();
    let message = serde_json::json!({
        "test": true,
        "record": {},
        "changes": null,
        "action": "test",
        "metadata": {
            "test": true,
            "note": "A test message from Tidepool: not a change, nothing to store.",
            "commit_timestamp": chrono::DateTime::from_timestamp_millis(at_ms)
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
            "consumer": {"id": consumer.id, "name": consumer.spec.name},
        },
    });
    let body = if target.batched() {
        serde_json::json!({ "data": [message] })
    } else {
        message
    }
    .to_string();
    let webhook_id = format!("msg_test_{}", crate::deliver::consumer::new_uuid()?);
    let started = std::time::Instant::now();
    let (status, outcome) = target.post(&client, webhook_id.clone(), body.clone()).await;
    let attempt = Attempt {
        at_ms,
        messages: 0,
        status,
        error: outcome.err(),
        duration_ms: started.elapsed().as_millis() as u64,
        test: true,
    };
    let store_dir = store_dir.to_path_buf();
    let (id, recorded) = (consumer.id.clone(), attempt.clone());
    tokio::task::spawn_blocking(move || Ledger::open(&store_dir)?.record_attempt(&id, &recorded))
        .await
        .map_err(|e| Error::internal(format!("recording a test message: {e}")))??;
    Ok(TestResult {
        webhook_id,
        body,
        attempt,
    })
}

/// Headers sent on every request, for `tidepool consumer show` (secret ones by name only).
pub fn describe_headers(webhook: &Webhook) -> BTreeMap<String, String> {
    let mut out = webhook.headers.clone();
    for name in &webhook.secret_headers {
        out.insert(name.clone(), "(in the keychain)".into());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(group: &str, key: &str) -> Message {
        Message {
            body: serde_json::json!({"metadata": {
                "idempotency_key": key,
                "commit_timestamp": "2026-01-01T00:00:00.000Z"
            }}),
            action: crate::deliver::Action::Insert,
            group: group.into(),
        }
    }

    #[test]
    fn the_window_sends_one_per_group_in_log_order_and_moves_the_position_past_what_settled() {
        let dir = std::env::temp_dir().join(format!("tidepool-window-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut ledger = Ledger::open(&dir).unwrap();
        let mut window = Window::at(10);
        for (seq, group) in [(11, "a"), (12, "b"), (13, "a"), (15, "c")] {
            window
                .pending
                .push_back(Pending::new("c1", seq, message(group, &format!("k{seq}"))).unwrap());
        }
        window.read_to = 16;
        let batches = window.claim(2, 2);
        let sent: Vec<Vec<u64>> = batches
            .iter()
            .map(|b| b.messages.iter().map(|m| m.seq).collect())
            .collect();
        assert_eq!(sent, [vec![11, 12], vec![15]], "13 waits behind 11");
        assert_eq!(batches[0].commits[0], Some(1_767_225_600_000));
        // The ack id is a function of the consumer and the key: the same when read again.
        assert_eq!(batches[0].messages[0].ack_id, ack_id_of("c1", "k11"));
        assert_ne!(ack_id_of("c1", "k11"), ack_id_of("c2", "k11"));
        assert!(window.claim(2, 2).is_empty(), "13's group is in flight");
        // 12 acknowledged: 11 is not, so the position stays.
        window.settle(12);
        window.advance(&mut ledger, "c1").unwrap();
        assert_eq!(window.position, 10);
        window.settle(11);
        window.advance(&mut ledger, "c1").unwrap();
        assert_eq!(window.position, 12);
        // 13 is held behind a queued message of its group; 15 is settled: the position passes 16.
        let groups: HashSet<String> = ["a".to_string()].into();
        window.hold(&mut ledger, "c1", Some(&groups)).unwrap();
        window.settle(15);
        window.advance(&mut ledger, "c1").unwrap();
        assert!(window.pending.is_empty());
        assert_eq!(window.position, 16);
        // A log emptied and restarted drops the window and starts it over.
        window
            .pending
            .push_back(Pending::new("c1", 17, message("d", "k17")).unwrap());
        window.sync(0, "c1");
        assert!(window.pending.is_empty());
        assert_eq!((window.read_to, window.epoch), (0, 1));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn backoff_doubles_from_one_second_with_jitter_and_a_cap() {
        assert_eq!(backoff_ms(1, 0.0), 1000);
        assert_eq!(backoff_ms(2, 0.0), 2000);
        assert_eq!(backoff_ms(5, 0.0), 16_000);
        assert_eq!(backoff_ms(11, 0.0), 600_000);
        assert_eq!(backoff_ms(40, 0.0), 600_000);
        assert_eq!(backoff_ms(1, 1.0), 1150);
        assert_eq!(backoff_ms(1, -1.0), 850);
        for _ in 0..100 {
            let j = jitter();
            assert!((-1.0..=1.0).contains(&j));
        }
    }

    #[test]
    fn signatures_follow_the_standard_webhooks_algorithm() {
        use base64::Engine as _;
        let secret = new_signing_secret().unwrap();
        assert!(secret.expose().starts_with("whsec_"));
        let body = br#"{"data":[]}"#;
        let sig = signature(&secret, "msg_1", 1_700_000_000, body).unwrap();
        // The specification: base64(HMAC-SHA256(key = base64-decoded secret, "id.timestamp.body")).
        let key = base64::engine::general_purpose::STANDARD
            .decode(secret.expose().trim_start_matches("whsec_"))
            .unwrap();
        let mac = hmac_sha256::HMAC::mac(b"msg_1.1700000000.{\"data\":[]}", &key);
        assert_eq!(
            sig,
            format!(
                "v1,{}",
                base64::engine::general_purpose::STANDARD.encode(mac)
            )
        );
        // The specification's published test vector.
        let vector = Secret::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
        assert_eq!(
            signature(
                &vector,
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1614265330,
                br#"{"test": 2432232314}"#
            )
            .unwrap(),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }
}
