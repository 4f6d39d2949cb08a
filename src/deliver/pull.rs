//! The pull API, on Sequin's paths and with its shapes: `GET|POST
//! /api/http_pull_consumers/{id_or_name}/receive`, `POST …/ack`, `POST …/nack`.
//!
//! Invariants:
//! - Every request carries the store's bearer token (kept in the keychain); otherwise 401 and
//!   nothing else is said. The server binds 127.0.0.1:7376 unless told otherwise.
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

struct Shared {
    ledger: Mutex<Ledger>,
    feeder: Mutex<Feeder>,
    token: Secret,
    wake: tokio::sync::watch::Receiver<u64>,
    waiting: Mutex<HashMap<String, u32>>,
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

/// Serves the pull API on `listener` until the future is dropped.
pub async fn serve(listener: tokio::net::TcpListener, options: PullOptions) -> Result<()> {
    let shared = Arc::new(Shared {
        ledger: Mutex::new(Ledger::open(&options.store_dir)?),
        feeder: Mutex::new(Feeder::new(options.store_dir.clone(), options.database)),
        token: options.token,
        wake: options.wake,
        waiting: Mutex::new(HashMap::new()),
    });
    let app = Router::new()
        .route(
            "/api/http_pull_consumers/{consumer}/receive",
            get(receive).post(receive),
        )
        .route("/api/http_pull_consumers/{consumer}/ack", post(ack))
        .route("/api/http_pull_consumers/{consumer}/nack", post(nack))
        .fallback(|| async { refuse(StatusCode::NOT_FOUND, "no such endpoint") })
        .with_state(shared);
    axum::serve(listener, app)
        .await
        .map_err(|e| Error::internal(format!("pull API: {e}")))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Checks the bearer token (in constant time) and finds the pull consumer.
fn admit(
    shared: &Shared,
    headers: &HeaderMap,
    consumer: &str,
) -> Result<(Consumer, Pull), Refusal> {
    let given = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .unwrap_or("");
    let want = shared.token.expose().as_bytes();
    let same = given.len() == want.len()
        && given
            .bytes()
            .zip(want.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if !same || want.is_empty() {
        return Err(refuse(
            StatusCode::UNAUTHORIZED,
            "a valid bearer token is required (tidepool api-token prints it)",
        ));
    }
    let found = lock(&shared.ledger).get(consumer);
    match found {
        Ok(c) => match c.spec.destination.clone() {
            Destination::Pull(p) => Ok((c, p)),
            Destination::Webhook(_) => Err(refuse(
                StatusCode::NOT_FOUND,
                format!("consumer '{consumer}' delivers by webhook, not by pull"),
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
    shared: &'a Shared,
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
    State(shared): State<Arc<Shared>>,
    Path(consumer): Path<String>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Result<Json<Received>, Refusal> {
    let (consumer, pull) = admit(&shared, &headers, &consumer)?;
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
                while feeder.feed(&mut ledger, &id, now_ms())? == PAGE {}
                ledger.claim(
                    &id,
                    now_ms(),
                    size,
                    pull.visibility_timeout_ms,
                    Some(u64::from(pull.max_ack_pending)),
                )
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
    State(shared): State<Arc<Shared>>,
    Path(consumer): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, Refusal> {
    settle(shared, consumer, headers, body, true).await
}

async fn nack(
    State(shared): State<Arc<Shared>>,
    Path(consumer): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, Refusal> {
    settle(shared, consumer, headers, body, false).await
}

async fn settle(
    shared: Arc<Shared>,
    consumer: String,
    headers: HeaderMap,
    body: Bytes,
    ack: bool,
) -> Result<Json<Value>, Refusal> {
    let (consumer, _) = admit(&shared, &headers, &consumer)?;
    let ids = parse_ack_ids(&body)?;
    tokio::task::spawn_blocking(move || {
        let mut ledger = lock(&shared.ledger);
        if ack {
            ledger.ack(&consumer.id, &ids)
        } else {
            ledger.nack(&consumer.id, &ids)
        }
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
