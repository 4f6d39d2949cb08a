//! "Try a webhook": a receiver inside the app, on loopback, that shows what a webhook consumer
//! sends, so the whole flow (a consumer, its deliveries, their signatures) can be tried offline
//! with nothing else running.
//!
//! Invariants:
//! - It listens on 127.0.0.1 only, on a port the OS picks, and stops when dropped.
//! - It keeps only the last [`TRIAL_KEPT`] requests, in memory: it is a window on deliveries, not a
//!   store.
//! - Every request is checked against the consumers' signing secrets as a receiver would (Standard
//!   Webhooks); they are held in memory only and never shown.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use serde::Serialize;

use crate::deliver::now_ms;
use crate::error::{Error, Result};
use crate::secrets::Secret;

/// Requests the trial receiver keeps (the newest).
pub const TRIAL_KEPT: usize = 50;

/// The longest body kept per request; a longer one is cut (and says so).
const BODY_KEPT: usize = 16 * 1024;

/// A request the trial receiver got.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ts_rs::TS)]
#[serde(rename_all = "camelCase")]
pub struct TrialRequest {
    /// When it arrived (Unix ms).
    pub at_ms: i64,
    /// Its `webhook-id`.
    pub webhook_id: String,
    /// Whether its `webhook-signature` verifies with a trying consumer's signing secret.
    pub verified: bool,
    /// Messages in it (`data`'s length, or 1 for a bare message).
    pub messages: usize,
    /// Each message's action and table (`insert public.orders`), or `test`.
    pub summary: Vec<String>,
    /// The body, pretty-printed, cut at 16 KiB.
    pub body: String,
}

#[derive(Default)]
struct Shared {
    requests: Mutex<VecDeque<TrialRequest>>,
    /// The signing secrets of the consumers pointed at it (one per profile that tried it).
    secrets: Mutex<Vec<Secret>>,
}

/// The running receiver.
pub struct TrialReceiver {
    url: String,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for TrialReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrialReceiver")
            .field("url", &self.url)
            .finish()
    }
}

impl Drop for TrialReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TrialReceiver {
    /// Starts listening on a free loopback port (inside a Tokio runtime).
    pub async fn start() -> Result<TrialReceiver> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| Error::internal(format!("the trial webhook receiver: {e}")))?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::internal(format!("the trial webhook receiver: {e}")))?;
        let shared = Arc::new(Shared::default());
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(receive))
            .with_state(shared.clone());
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!("the trial webhook receiver stopped: {e}");
            }
        });
        Ok(TrialReceiver {
            url: format!("http://{addr}/hook"),
            shared,
            task,
        })
    }

    /// Where it listens.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A signing secret requests are checked against (a request verifies if any secret added
    /// verifies it).
    pub fn add_secret(&self, secret: Secret) {
        let mut secrets = lock(&self.shared.secrets);
        if !secrets.iter().any(|s| s.expose() == secret.expose()) {
            secrets.push(secret);
        }
    }

    /// What arrived, newest first.
    pub fn received(&self) -> Vec<TrialRequest> {
        lock(&self.shared.requests).iter().rev().cloned().collect()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

async fn receive(
    axum::extract::State(shared): axum::extract::State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let verified = lock(&shared.secrets).iter().any(|secret| {
        standardwebhooks::Webhook::new(secret.expose())
            .and_then(|w| w.verify(&body, &headers))
            .is_ok()
    });
    let value: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let messages = match value.get("data") {
        Some(serde_json::Value::Array(list)) => list.clone(),
        _ => vec![value.clone()],
    };
    let summary = messages
        .iter()
        .map(|m| {
            let action = m["action"].as_str().unwrap_or("?");
            match (
                m["metadata"]["table_schema"].as_str(),
                m["metadata"]["table_name"].as_str(),
            ) {
                (Some(schema), Some(table)) => format!("{action} {schema}.{table}"),
                _ => action.to_string(),
            }
        })
        .collect();
    let mut text = serde_json::to_string_pretty(&value)
        .unwrap_or_else(|_| String::from_utf8_lossy(&body).into_owned());
    if text.len() > BODY_KEPT {
        let mut cut = BODY_KEPT;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push_str("\n… (cut)");
    }
    let request = TrialRequest {
        at_ms: now_ms(),
        webhook_id: headers
            .get("webhook-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string(),
        verified,
        messages: messages.len(),
        summary,
        body: text,
    };
    let mut requests = lock(&shared.requests);
    requests.push_back(request);
    while requests.len() > TRIAL_KEPT {
        requests.pop_front();
    }
    StatusCode::NO_CONTENT
}
