//! The pull API, on Sequin's paths and with its shapes: `GET|POST
//! /api/http_pull_consumers/{id_or_name}/receive`, `POST …/ack`, `POST …/nack`.
//!
//! Invariants:
//! - Every request carries the store's bearer token (kept in the keychain); otherwise 401 and
//!   nothing else is said. The server binds 127.0.0.1:7376 unless told otherwise.
//! - One server answers for any number of stores ([`PullStores`]): the token selects the store,
//!   then the path the consumer in it. The desktop app keeps one such server ([`PullHost`]) for
//!   all its running captures; `tidepool capture --listen` serves its one store the same way.
//! - Request parsing never panics: a malformed query or body is a 400 with a `summary`, an invalid
//!   ack id list a 422, an unknown consumer a 404, a receive beyond `max_waiting` a 429.
//! - A received message is invisible for the consumer's visibility timeout, then offered again with
//!   the same `ack_id` unless acknowledged; nack offers it again at once. Never two messages of one
//!   group in flight or in one batch; never more than `max_ack_pending` in flight.
//! - A long poll (`wait_for`) answers as soon as a message exists: it wakes on each store commit.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::deliver::consumer::{is_uuid, Consumer, Destination, Pull};
use crate::deliver::feed::{Feeder, PAGE};
use crate::deliver::ledger::Ledger;
use crate::deliver::message::Database;
use crate::deliver::now_ms;
use crate::error::{Error, Result};
use crate::secrets::Secret;

/// Sequin's port.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7376";

/// What the pull API serves.
#[derive(Debug)]
pub struct PullOptions {
    /// The capture's store folder.
    pub store_dir: std::path::PathBuf,
    /// The source, as messages name it.
    pub database: Database,
    /// The bearer token every request must carry.
    pub token: Secret,
    /// Bumped after each store commit.
    pub wake: tokio::sync::watch::Receiver<u64>,
}

/// One store the server answers for: its consumers' ledger and feeder, its token, its commits.
struct Served {
    ledger: Mutex<Ledger>,
    feeder: Mutex<Feeder>,
    token: Secret,
    wake: tokio::sync::watch::Receiver<u64>,
    waiting: Mutex<HashMap<String, u32>>,
}

/// The stores one pull server answers for, each chosen by its own bearer token: the request's
/// token selects the store, then the path's `{id_or_name}` the consumer within it, so Sequin's
/// paths stay as they are however many captures run. Cloning shares the same set.
#[derive(Clone, Default)]
pub struct PullStores {
    routes: Arc<Mutex<HashMap<String, Arc<Served>>>>,
}

impl std::fmt::Debug for PullStores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PullStores")
            .field("stores", &lock(&self.routes).len())
            .finish()
    }
}

impl PullStores {
    /// Serves the store of `options` under `key` (replacing what `key` served), opening its ledger.
    pub fn insert(&self, key: &str, options: PullOptions) -> Result<()> {
        let served = Arc::new(Served {
            ledger: Mutex::new(Ledger::open(&options.store_dir)?),
            feeder: Mutex::new(Feeder::new(options.store_dir, options.database)),
            token: options.token,
            wake: options.wake,
            waiting: Mutex::new(HashMap::new()),
        });
        lock(&self.routes).insert(key.to_string(), served);
        Ok(())
    }

    /// Stops serving what `key` served; its token is refused from now on.
    pub fn remove(&self, key: &str) {
        lock(&self.routes).remove(key);
    }

    /// Whether no store is served.
    pub fn is_empty(&self) -> bool {
        lock(&self.routes).is_empty()
    }

    /// The store whose token is `given`. Every token is compared, each in constant time, so the
    /// answer's timing says nothing about how much of any token matched.
    fn select(&self, given: &str) -> Option<Arc<Served>> {
        let routes = lock(&self.routes);
        let mut found = None;
        for served in routes.values() {
            if same_token(given, served.token.expose()) && found.is_none() {
                found = Some(served.clone());
            }
        }
        found
    }
}

/// Compares a given token with a kept one in time that depends only on their lengths; an empty
/// kept token matches nothing.
fn same_token(given: &str, want: &str) -> bool {
    !want.is_empty()
        && given.len() == want.len()
        && given
            .bytes()
            .zip(want.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// An API error as Sequin answers it.
struct Refusal(StatusCode, Value);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        (self.0, Json(self.1)).into_response()
    }
}

fn refuse(status: StatusCode, summary: impl Into<String>) -> Refusal {
    Refusal(status, json!({"summary": summary.into()}))
}

fn internal(e: Error) -> Refusal {
    tracing::error!("pull API: {e}");
    refuse(StatusCode::INTERNAL_SERVER_ERROR, e.message().to_string())
}

/// Binds the pull API's address; the error names `--listen`.
pub async fn bind(addr: &str) -> Result<tokio::net::TcpListener> {
    let at: SocketAddr = addr.parse().map_err(|e| {
        Error::invalid_input(
            "--listen",
            format!("'{addr}' is not an address and port: {e}"),
        )
    })?;
    tokio::net::TcpListener::bind(at)
        .await
        .map_err(|e| Error::invalid_input("--listen", format!("cannot listen on {at}: {e}")))
}

/// Serves the pull API for one store on `listener` until the future is dropped
/// (`tidepool capture --listen`).
pub async fn serve(listener: tokio::net::TcpListener, options: PullOptions) -> Result<()> {
    let stores = PullStores::default();
    stores.insert("store", options)?;
    serve_stores(listener, stores).await
}

/// Serves the pull API for every store in `stores` (as it changes) on `listener` until the future
/// is dropped.
pub async fn serve_stores(listener: tokio::net::TcpListener, stores: PullStores) -> Result<()> {
    let app = Router::new()
        .route(
            "/api/http_pull_consumers/{consumer}/receive",
            get(receive).post(receive),
        )
        .route("/api/http_pull_consumers/{consumer}/ack", post(ack))
        .route("/api/http_pull_consumers/{consumer}/nack", post(nack))
        .fallback(|| async { refuse(StatusCode::NOT_FOUND, "no such endpoint") })
        .with_state(stores);
    axum::serve(listener, app)
        .await
        .map_err(|e| Error::internal(format!("pull API: {e}")))
}

/// Where the desktop app's pull server listens: `TIDEPOOL_PULL_LISTEN` if set, else Sequin's port
/// on loopback.
pub fn app_listen() -> String {
    std::env::var("TIDEPOOL_PULL_LISTEN")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_LISTEN.to_string())
}

/// Whether the app's pull server is up, as the Consumers tab shows it.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PullServing {
    /// Where it listens (or would): `127.0.0.1:7376`.
    pub address: String,
    /// Whether it is listening now (it is while at least one capture runs and the bind worked).
    pub serving: bool,
    /// Why it could not listen, with what to do.
    pub error: Option<Error>,
}

struct HostState {
    listen: String,
    stores: PullStores,
    /// The server task and the address it is bound to.
    server: Option<(tokio::task::JoinHandle<()>, SocketAddr)>,
    error: Option<Error>,
    next_route: u64,
}

/// The desktop app's one pull server for all its running captures: bound when the first store is
/// served, released when the last one goes, so a `tidepool capture --listen` can take the port
/// while the app captures nothing. A port already taken never stops a capture: the error is kept
/// for the window to show, and the next store served tries again.
#[derive(Clone)]
pub struct PullHost {
    state: Arc<Mutex<HostState>>,
}

impl std::fmt::Debug for PullHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PullHost").finish_non_exhaustive()
    }
}

/// A store served by a [`PullHost`], until dropped.
#[derive(Debug)]
pub struct PullRoute {
    host: PullHost,
    key: String,
}

impl Drop for PullRoute {
    fn drop(&mut self) {
        let mut state = lock(&self.host.state);
        state.stores.remove(&self.key);
        if state.stores.is_empty() {
            if let Some((server, _)) = state.server.take() {
                server.abort();
            }
            state.error = None;
        }
    }
}

impl PullHost {
    /// A host that will listen on `listen` (an address and port) once a store is served.
    pub fn new(listen: impl Into<String>) -> PullHost {
        PullHost {
            state: Arc::new(Mutex::new(HostState {
                listen: listen.into(),
                stores: PullStores::default(),
                server: None,
                error: None,
                next_route: 0,
            })),
        }
    }

    /// Serves the store of `options` until the returned route is dropped, binding the server first
    /// if it is not listening. Fails only when the store's ledger cannot be opened; a bind that
    /// fails is kept in [`PullHost::serving`] (and logged), and the route stays, so the store is
    /// served once a later call binds. Needs a Tokio runtime.
    pub fn serve(&self, options: PullOptions) -> Result<PullRoute> {
        let mut state = lock(&self.state);
        let key = format!("route-{}", state.next_route);
        state.next_route += 1;
        state.stores.insert(&key, options)?;
        let route = PullRoute {
            host: self.clone(),
            key,
        };
        if state.server.as_ref().is_some_and(|(s, _)| s.is_finished()) {
            state.server = None;
        }
        if state.server.is_none() {
            match bind_now(&state.listen) {
                Ok((listener, at)) => {
                    let stores = state.stores.clone();
                    let server = tokio::spawn(async move {
                        if let Err(e) = serve_stores(listener, stores).await {
                            tracing::error!("{e}");
                        }
                    });
                    tracing::info!(address = %at, "pull API listening");
                    state.server = Some((server, at));
                    state.error = None;
                }
                Err(e) => {
                    tracing::warn!("{e}");
                    state.error = Some(e);
                }
            }
        }
        Ok(route)
    }

    /// Whether the server listens, where, and why not.
    pub fn serving(&self) -> PullServing {
        let state = lock(&self.state);
        match &state.server {
            Some((server, at)) if !server.is_finished() => PullServing {
                address: at.to_string(),
                serving: true,
                error: None,
            },
            _ => PullServing {
                address: state.listen.clone(),
                serving: false,
                error: state.error.clone(),
            },
        }
    }
}

/// Binds `addr` at once (no await, so it can happen under the host's lock).
fn bind_now(addr: &str) -> Result<(tokio::net::TcpListener, SocketAddr)> {
    let at: SocketAddr = addr.parse().map_err(|e| {
        Error::invalid_input(
            "TIDEPOOL_PULL_LISTEN",
            format!("'{addr}' is not an address and port: {e}"),
        )
    })?;
    let taken = |e: std::io::Error| {
        Error::invalid_input(
            "pull API",
            format!(
                "cannot listen on {at}: {e}. Another Tidepool app or a `tidepool capture --listen` \
                 probably serves it: stop that one, then stop and start this capture (webhooks are \
                 delivered meanwhile)"
            ),
        )
    };
    let std_listener = std::net::TcpListener::bind(at).map_err(taken)?;
    std_listener.set_nonblocking(true).map_err(taken)?;
    let bound = std_listener.local_addr().map_err(taken)?;
    let listener = tokio::net::TcpListener::from_std(std_listener).map_err(taken)?;
    Ok((listener, bound))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Selects the store by the bearer token (compared in constant time) and finds the pull consumer
/// in it.
fn admit(
    stores: &PullStores,
    headers: &HeaderMap,
    consumer: &str,
) -> Result<(Arc<Served>, Consumer, Pull), Refusal> {
    let given = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .unwrap_or("");
    let Some(shared) = stores.select(given) else {
        return Err(refuse(
            StatusCode::UNAUTHORIZED,
            "a valid bearer token is required (tidepool api-token prints it)",
        ));
    };
    let found = lock(&shared.ledger).get(consumer);
    match found {
        Ok(c) => match c.spec.destination.clone() {
            Destination::Pull(p) => Ok((shared, c, p)),
            Destination::Webhook(_) => Err(refuse(
                StatusCode::NOT_FOUND,
                format!("consumer '{consumer}' delivers by webhook, not by pull"),
            )),
            Destination::Nats(_) => Err(refuse(
                StatusCode::NOT_FOUND,
                format!("consumer '{consumer}' publishes to NATS JetStream, not by pull"),
            )),
        },
        Err(e) if e.kind() == crate::ErrorKind::NotFound => Err(refuse(
            StatusCode::NOT_FOUND,
            format!("no consumer with id or name '{consumer}'"),
        )),
        Err(e) => Err(internal(e)),
    }
}

/// `receive`'s parameters from the query string and a JSON body.
#[derive(Debug, PartialEq)]
struct ReceiveParams {
    batch_size: usize,
    wait_for: Option<Duration>,
}

fn parse_receive(query: Option<&str>, body: &[u8]) -> Result<ReceiveParams, String> {
    let mut fields: HashMap<String, Value> = HashMap::new();
    if let Some(q) = query.filter(|q| !q.is_empty()) {
        for pair in q.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let decode = |s: &str| {
                percent_encoding::percent_decode_str(&s.replace('+', " "))
                    .decode_utf8()
                    .map(|c| c.into_owned())
                    .map_err(|_| "the query string is not UTF-8".to_string())
            };
            fields.insert(decode(k)?, Value::String(decode(v)?));
        }
    }
    if !body.iter().all(u8::is_ascii_whitespace) {
        match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(map)) => fields.extend(map),
            Ok(_) => return Err("the body must be a JSON object".into()),
            Err(e) => return Err(format!("the body is not JSON: {e}")),
        }
    }
    let size = fields
        .get("batch_size")
        .or_else(|| fields.get("max_batch_size"));
    let batch_size = match size {
        None | Some(Value::Null) => 1,
        Some(v) => {
            let n = match v {
                Value::Number(n) => n.as_u64(),
                Value::String(s) => s.trim().parse::<u64>().ok(),
                _ => None,
            };
            match n {
                Some(n @ 1..=1000) => n as usize,
                _ => {
                    return Err(format!(
                        "batch_size must be an integer from 1 to 1000, not {v}"
                    ))
                }
            }
        }
    };
    let wait_for = match fields.get("wait_for") {
        None | Some(Value::Null) => None,
        Some(v) => {
            let ms = match v {
                Value::Number(n) => n.as_u64(),
                Value::String(s) => duration_ms(s.trim()),
                _ => None,
            };
            match ms {
                Some(ms @ 500..=300_000) => Some(Duration::from_millis(ms)),
                _ => {
                    return Err(format!(
                        "wait_for must be 500 to 300000 milliseconds (or like \"60s\", \"5m\"), not {v}"
                    ))
                }
            }
        }
    };
    Ok(ReceiveParams {
        batch_size,
        wait_for,
    })
}

/// `"1000"`, `"1000ms"`, `"60s"`, `"5m"` in milliseconds.
fn duration_ms(text: &str) -> Option<u64> {
    let (number, unit) = if let Some(n) = text.strip_suffix("ms") {
        (n, 1)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1000)
    } else if let Some(n) = text.strip_suffix('m') {
        (n, 60_000)
    } else {
        (text, 1)
    };
    number.trim().parse::<u64>().ok()?.checked_mul(unit)
}

/// Counts a waiting receive for as long as it lives.
struct Waiting<'a> {
    shared: &'a Served,
    consumer: String,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut waiting = lock(&self.shared.waiting);
        if let Some(n) = waiting.get_mut(&self.consumer) {
            *n = n.saturating_sub(1);
        }
    }
}

/// A receive answer: `{"data": [{"ack_id", "data"}]}`.
#[derive(serde::Serialize)]
struct Received {
    data: Vec<Delivered>,
}

/// One message handed out by a receive.
#[derive(serde::Serialize)]
struct Delivered {
    ack_id: String,
    data: Box<serde_json::value::RawValue>,
}

async fn receive(
    State(stores): State<PullStores>,
    Path(consumer): Path<String>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Result<Json<Received>, Refusal> {
    let (shared, consumer, pull) = admit(&stores, &headers, &consumer)?;
    let params = parse_receive(query.as_deref(), &body)
        .map_err(|summary| refuse(StatusCode::BAD_REQUEST, summary))?;
    let _waiting = match params.wait_for {
        Some(_) => {
            let mut waiting = lock(&shared.waiting);
            let n = waiting.entry(consumer.id.clone()).or_insert(0);
            if *n >= pull.max_waiting {
                return Err(refuse(
                    StatusCode::TOO_MANY_REQUESTS,
                    format!(
                        "{} receive requests are waiting already (max_waiting)",
                        pull.max_waiting
                    ),
                ));
            }
            *n += 1;
            Some(Waiting {
                shared: &shared,
                consumer: consumer.id.clone(),
            })
        }
        None => None,
    };
    let deadline = Instant::now() + params.wait_for.unwrap_or_default();
    let mut wake = shared.wake.clone();
    loop {
        wake.borrow_and_update();
        let claimed = {
            let shared = shared.clone();
            let id = consumer.id.clone();
            let size = params.batch_size;
            tokio::task::spawn_blocking(move || -> Result<_> {
                let mut ledger = lock(&shared.ledger);
                let mut feeder = lock(&shared.feeder);
                // Feeding and claiming in one IMMEDIATE transaction: one commit for the request
                // instead of one per step (each step alone is IMMEDIATE too, see the ledger's `Step`).
                ledger.round(|ledger| {
                    while feeder.feed(ledger, &id, now_ms())? == PAGE {}
                    // A paused consumer hands nothing out; a long poll waits for its resume.
                    if ledger.paused(&id)? {
                        return Ok(Vec::new());
                    }
                    ledger.claim(
                        &id,
                        now_ms(),
                        size,
                        pull.visibility_timeout_ms,
                        Some(u64::from(pull.max_ack_pending)),
                    )
                })
            })
            .await
            .map_err(|e| internal(Error::internal(format!("receive: {e}"))))?
            .map_err(internal)?
        };
        let now = Instant::now();
        if !claimed.is_empty() || now >= deadline {
            // The queued JSON texts are spliced in as they are.
            return Ok(Json(Received {
                data: claimed
                    .into_iter()
                    .map(|m| Delivered {
                        ack_id: m.ack_id,
                        data: m.body,
                    })
                    .collect(),
            }));
        }
        // Woken by a store commit in this process; otherwise re-read soon (another process, or a
        // message whose visibility timeout ends).
        let pause = (deadline - now).min(Duration::from_millis(250));
        tokio::select! {
            // Disabled once the capture is gone, so a long poll never spins on a closed channel.
            Ok(()) = wake.changed() => {}
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

/// What the pull API reads from a request before it touches the store, or the `summary` it refuses
/// it with.
#[derive(Debug)]
pub struct ParsedRequest {
    /// `receive`'s batch size and wait, from its query string and body.
    pub receive: std::result::Result<(usize, Option<Duration>), String>,
    /// An ack or nack body's ack ids.
    pub ack_ids: std::result::Result<Vec<String>, String>,
}

/// Runs the handlers' request parsers on raw input, for the fuzz target
/// (`fuzz/fuzz_targets/pull_request.rs`): they never panic, and refuse with a summary.
pub fn parse_request(query: Option<&str>, body: &[u8]) -> ParsedRequest {
    ParsedRequest {
        receive: parse_receive(query, body).map(|p| (p.batch_size, p.wait_for)),
        ack_ids: parse_ack_ids(body).map_err(|Refusal(_, summary)| {
            summary["summary"].as_str().unwrap_or_default().to_string()
        }),
    }
}

/// The `ack_ids` of an ack or nack body.
fn parse_ack_ids(body: &[u8]) -> Result<Vec<String>, Refusal> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        refuse(
            StatusCode::BAD_REQUEST,
            format!("the body must be JSON like {{\"ack_ids\": [\"…\"]}}: {e}"),
        )
    })?;
    let Some(list) = value.get("ack_ids").and_then(Value::as_array) else {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "the body must hold \"ack_ids\", a list of ack ids",
        ));
    };
    let invalid = |why: &str| {
        Refusal(
            StatusCode::UNPROCESSABLE_ENTITY,
            json!({"summary": format!("ack_ids: {why}"), "validation_errors": {"ack_ids": [why]}}),
        )
    };
    if list.is_empty() {
        return Err(invalid("must not be empty"));
    }
    list.iter()
        .map(|v| match v.as_str() {
            Some(s) if is_uuid(s) => Ok(s.to_ascii_lowercase()),
            _ => Err(invalid("each must be a UUID string")),
        })
        .collect()
}

async fn ack(
    State(stores): State<PullStores>,
    Path(consumer): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, Refusal> {
    settle(stores, consumer, headers, body, true).await
}

async fn nack(
    State(stores): State<PullStores>,
    Path(consumer): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, Refusal> {
    settle(stores, consumer, headers, body, false).await
}

async fn settle(
    stores: PullStores,
    consumer: String,
    headers: HeaderMap,
    body: Bytes,
    ack: bool,
) -> Result<Json<Value>, Refusal> {
    let (shared, consumer, _) = admit(&stores, &headers, &consumer)?;
    let ids = parse_ack_ids(&body)?;
    tokio::task::spawn_blocking(move || {
        let mut ledger = lock(&shared.ledger);
        // One IMMEDIATE transaction, as in `receive`.
        ledger.round(|ledger| {
            if ack {
                ledger.ack(&consumer.id, &ids)
            } else {
                ledger.nack(&consumer.id, &ids)
            }
        })
    })
    .await
    .map_err(|e| internal(Error::internal(format!("ack: {e}"))))?
    .map_err(internal)?;
    Ok(Json(json!({"success": true})))
}

/// The pull API's bearer token for the store in `store_dir`, from the keychain; one is made and
/// stored there the first time.
pub fn api_token(
    store_dir: &std::path::Path,
    keychain: &crate::secrets::Keychain,
) -> Result<Secret> {
    let key = crate::secrets::SecretKey::PullApiToken(Ledger::open(store_dir)?.store_id()?);
    if let Some(token) = keychain.get(&key)? {
        return Ok(token);
    }
    let token = Secret::new(format!("tp_{}", crate::secrets::random_hex(32)?));
    keychain.set(
        &key,
        &format!("Tidepool pull API token ({})", store_dir.display()),
        &token,
    )?;
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fuzzed_entry_point_gives_the_handlers_answers_and_summaries() {
        let parsed = parse_request(Some("batch_size=0"), b"");
        assert!(parsed.receive.unwrap_err().contains("batch_size"));
        assert!(parsed.ack_ids.unwrap_err().contains("ack_ids"));
        let parsed = parse_request(
            None,
            br#"{"ack_ids": ["6f1c1b7e-2b4f-4b8a-9d43-1a2b3c4d5e6f"], "wait_for": "5s"}"#,
        );
        assert_eq!(parsed.receive.unwrap(), (1, Some(Duration::from_secs(5))));
        assert_eq!(
            parsed.ack_ids.unwrap(),
            vec!["6f1c1b7e-2b4f-4b8a-9d43-1a2b3c4d5e6f"]
        );
        let refused = parse_request(None, br#"{"ack_ids": ["a"]}"#).ack_ids;
        assert!(refused.unwrap_err().contains("UUID"));
    }

    #[test]
    fn receive_parameters_are_parsed_as_sequin_takes_them() {
        assert_eq!(
            parse_receive(None, b"").unwrap(),
            ReceiveParams {
                batch_size: 1,
                wait_for: None
            }
        );
        let p = parse_receive(Some("batch_size=10&wait_for=60s"), b"").unwrap();
        assert_eq!(p.batch_size, 10);
        assert_eq!(p.wait_for, Some(Duration::from_secs(60)));
        let p = parse_receive(None, br#"{"max_batch_size": 1000, "wait_for": 500}"#).unwrap();
        assert_eq!(
            (p.batch_size, p.wait_for),
            (1000, Some(Duration::from_millis(500)))
        );
        assert_eq!(
            parse_receive(Some("wait_for=5m"), b"").unwrap().wait_for,
            Some(Duration::from_secs(300))
        );
        assert_eq!(
            parse_receive(Some("wait_for=1000ms"), b"")
                .unwrap()
                .wait_for,
            Some(Duration::from_secs(1))
        );
        for (q, b) in [
            ("batch_size=0", ""),
            ("batch_size=1001", ""),
            ("batch_size=x", ""),
            ("wait_for=499", ""),
            ("wait_for=6m", ""),
            ("wait_for=99999999999999999999s", ""),
            ("", "[1]"),
            ("", "{\"batch_size\": -1}"),
            ("", "{not json"),
            ("batch_size=%ff", ""),
        ] {
            assert!(parse_receive(Some(q), b.as_bytes()).is_err(), "{q} {b}");
        }
    }

    #[test]
    fn ack_bodies_are_checked() {
        let id = crate::deliver::consumer::new_uuid().unwrap();
        assert_eq!(
            parse_ack_ids(format!("{{\"ack_ids\": [\"{id}\"]}}").as_bytes())
                .ok()
                .unwrap(),
            vec![id]
        );
        for (body, status) in [
            ("", 400),
            ("{", 400),
            ("{}", 400),
            ("{\"ack_ids\": 3}", 400),
            ("{\"ack_ids\": []}", 422),
            ("{\"ack_ids\": [\"nope\"]}", 422),
            ("{\"ack_ids\": [7]}", 422),
        ] {
            match parse_ack_ids(body.as_bytes()) {
                Err(Refusal(s, v)) => {
                    assert_eq!(s.as_u16(), status, "{body}");
                    assert!(v["summary"].is_string());
                }
                Ok(_) => panic!("{body} accepted"),
            }
        }
    }
}
