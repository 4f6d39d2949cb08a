//! Delivery to applications against real servers: a PostgreSQL capture, webhook receivers (axum on
//! loopback) and pull clients (reqwest) talking to the engine over real HTTP.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use serde_json::{json, Value as Json};
use tidepool::binding::Binding;
use tidepool::capture::{run, CaptureOptions, Flush, Observer};
use tidepool::deliver::consumer::{ConsumerSpec, Destination, Mode, Pull, Start, Webhook};
use tidepool::deliver::ledger::Ledger;
use tidepool::deliver::pull::{PullOptions, DEFAULT_LISTEN};
use tidepool::deliver::{Database, DeliveryOptions};
use tidepool::secrets::{Keychain, Secret, SecretKey};

use crate::harness::{self, TestDb};

/// A database with table `orders` and a store captured from it (backfilled, then streaming).
pub(crate) struct Shop {
    pub(crate) db: TestDb,
    pub(crate) store: std::path::PathBuf,
    pub(crate) commits: tokio::sync::watch::Sender<u64>,
}

impl Shop {
    pub(crate) fn new(prefix: &str, rows: u32) -> Shop {
        let db = TestDb::new(harness::plain(), prefix);
        db.sql(&format!(
            "CREATE TABLE orders (id int PRIMARY KEY, status text NOT NULL, total numeric(10,2) NOT NULL);
             CREATE PUBLICATION shop_pub FOR TABLE orders;
             INSERT INTO orders SELECT g, 'new', g * 10 FROM generate_series(1, {rows}) g;"
        ));
        let store = harness::temp_dir(prefix);
        Shop {
            db,
            store,
            commits: tokio::sync::watch::channel(0).0,
        }
    }

    pub(crate) fn options(
        &self,
        stop_at: Option<tidepool::source::pgoutput::Lsn>,
        backfill: bool,
    ) -> CaptureOptions {
        let commits = self.commits.clone();
        CaptureOptions {
            spec: self.db.spec(),
            store_dir: self.store.clone(),
            publication: "shop_pub".into(),
            slot: self.db.name.clone(),
            create_slot: true,
            stop_at,
            observer: Some(Observer(Arc::new(move |_: &Flush| {
                commits.send_modify(|n| *n += 1);
            }))),
            bindings: if backfill {
                vec![Binding::new("public", "orders")]
            } else {
                Vec::new()
            },
            backfill_progress: None,
        }
    }

    /// Backfills the table and stores everything committed so far.
    pub(crate) async fn backfill(&self) {
        run(self.options(Some(self.db.current_lsn()), true))
            .await
            .expect("backfill");
    }

    /// Stores everything committed so far.
    pub(crate) async fn catch_up(&self) {
        run(self.options(Some(self.db.current_lsn()), false))
            .await
            .expect("capture");
    }

    /// A capture that runs until aborted, waking delivery on each commit.
    pub(crate) fn streaming(&self) -> tokio::task::JoinHandle<()> {
        let options = self.options(None, false);
        tokio::spawn(async move {
            let _ = run(options).await;
        })
    }

    pub(crate) fn database(&self) -> Database {
        Database {
            name: "shop".into(),
            database: self.db.name.clone(),
            hostname: "127.0.0.1".into(),
        }
    }

    pub(crate) fn delivery(&self) -> tokio::task::JoinHandle<()> {
        let options = DeliveryOptions {
            store_dir: self.store.clone(),
            database: self.database(),
            keychain: Some(Keychain::open().expect("the test keychain")),
            wake: self.commits.subscribe(),
        };
        tokio::spawn(async move {
            tidepool::deliver::run(options).await.expect("delivery");
        })
    }

    pub(crate) fn spec(
        &self,
        name: &str,
        mode: Mode,
        start: Start,
        destination: Destination,
    ) -> ConsumerSpec {
        ConsumerSpec {
            name: name.into(),
            collections: vec!["public/orders".into()],
            actions: vec![],
            filter: None,
            mode,
            start,
            group_by: vec![],
            destination,
        }
    }

    pub(crate) fn add(&self, spec: ConsumerSpec) -> tidepool::deliver::Consumer {
        let keychain = Keychain::open().expect("the test keychain");
        tidepool::deliver::add_consumer(&self.store, spec, Some(&keychain), &[], None).expect("add")
    }

    /// Serves the pull API on a free loopback port; returns its base URL.
    pub(crate) async fn pull_api(&self, token: &str) -> (String, tokio::task::JoinHandle<()>) {
        let listener = tidepool::deliver::pull::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let options = PullOptions {
            store_dir: self.store.clone(),
            database: self.database(),
            token: Secret::new(token),
            wake: self.commits.subscribe(),
        };
        let task = tokio::spawn(async move {
            tidepool::deliver::pull::serve(listener, options)
                .await
                .unwrap();
        });
        (base, task)
    }
}

impl Drop for Shop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.store);
    }
}

/// A reqwest client (rustls with the ring provider, as the engine uses).
pub(crate) fn http_client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

pub(crate) fn webhook(url: &str, batch: Option<u32>, max_retries: Option<u32>) -> Destination {
    Destination::Webhook(Webhook {
        url: url.into(),
        headers: BTreeMap::from([("x-team".to_string(), "shop".to_string())]),
        secret_headers: vec![],
        batch_size: batch,
        timeout_ms: 5_000,
        max_retries,
        max_in_flight: 4,
    })
}

/// What a receiver was sent.
#[derive(Default)]
pub(crate) struct Received {
    /// Requests answered so far.
    pub(crate) requests: AtomicUsize,
    /// Requests to fail (HTTP 500) before succeeding.
    fail_first: AtomicUsize,
    /// Fail every request while set.
    pub(crate) failing: std::sync::atomic::AtomicBool,
    /// Accepted messages in arrival order.
    pub(crate) accepted: Mutex<Vec<Json>>,
    /// Request headers and bodies accepted.
    pub(crate) signed: Mutex<Vec<(HeaderMap, Bytes)>>,
    /// How long to wait after recording a request before answering it (a slow receiver).
    answer_after_ms: std::sync::atomic::AtomicU64,
}

/// A webhook receiver on a free loopback port; returns its URL.
pub(crate) async fn receiver(received: Arc<Received>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let app = hook_app(received);
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    url
}

/// The receiver's routes: `/hook` records what it accepts.
fn hook_app(received: Arc<Received>) -> axum::Router {
    axum::Router::new()
        .route(
            "/hook",
            axum::routing::post(
                |axum::extract::State(r): axum::extract::State<Arc<Received>>,
                 headers: HeaderMap,
                 body: Bytes| async move {
                    let n = r.requests.fetch_add(1, Ordering::SeqCst);
                    if n < r.fail_first.load(Ordering::SeqCst) || r.failing.load(Ordering::SeqCst) {
                        return StatusCode::INTERNAL_SERVER_ERROR;
                    }
                    let value: Json = serde_json::from_slice(&body).unwrap();
                    let messages = match value.get("data") {
                        Some(Json::Array(list)) => list.clone(),
                        _ => vec![value],
                    };
                    r.accepted.lock().unwrap().extend(messages);
                    r.signed.lock().unwrap().push((headers, body));
                    let wait = r.answer_after_ms.load(Ordering::SeqCst);
                    if wait > 0 {
                        tokio::time::sleep(Duration::from_millis(wait)).await;
                    }
                    StatusCode::NO_CONTENT
                },
            ),
        )
        .with_state(received)
}

pub(crate) async fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// (action, id, status) of each message.
fn summary(messages: &[Json]) -> Vec<(String, i64, String)> {
    messages
        .iter()
        .map(|m| {
            (
                m["action"].as_str().unwrap().to_string(),
                m["record"]["id"].as_i64().unwrap(),
                m["record"]["status"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_failing_then_succeeding_gets_every_message_once_in_order_per_key_signed() {
    let shop = Shop::new("dl_webhook", 0);
    shop.backfill().await;
    let received = Arc::new(Received::default());
    received.fail_first.store(2, Ordering::SeqCst);
    let url = receiver(received.clone()).await;
    let consumer = shop.add(shop.spec(
        "orders-hook",
        Mode::Changes,
        Start::Now,
        webhook(&url, Some(3), None),
    ));
    // Several transactions touching three keys, interleaved.
    for round in 0..4 {
        let key_1000 = if round == 0 {
            "INSERT INTO orders VALUES (1000, 'paid-0', 5);".to_string()
        } else {
            format!("UPDATE orders SET status = 'paid-{round}' WHERE id = 1000;")
        };
        shop.db.sql(&format!(
            "BEGIN; INSERT INTO orders VALUES ({a}, 'new', 1), ({b}, 'new', 2); {key_1000} COMMIT;",
            a = 10 + round * 2,
            b = 11 + round * 2
        ));
    }
    shop.db.sql("DELETE FROM orders WHERE id = 1000;");
    let capture = shop.streaming();
    let delivery = shop.delivery();
    // 8 inserts, 1 insert + 3 updates + 1 delete of key 1000.
    wait_for("13 messages", Duration::from_secs(60), || {
        received.accepted.lock().unwrap().len() >= 13
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let accepted = received.accepted.lock().unwrap().clone();
    assert_eq!(accepted.len(), 13, "{accepted:#?}");
    assert!(received.requests.load(Ordering::SeqCst) > 2);
    let keys: HashSet<&str> = accepted
        .iter()
        .map(|m| m["metadata"]["idempotency_key"].as_str().unwrap())
        .collect();
    assert_eq!(keys.len(), 13, "each message accepted once");
    // Key 1000's group in commit order.
    let group: Vec<(String, i64, String)> = summary(&accepted)
        .into_iter()
        .filter(|(_, id, _)| *id == 1000)
        .collect();
    let actions: Vec<&str> = group.iter().map(|g| g.0.as_str()).collect();
    assert_eq!(actions, ["insert", "update", "update", "update", "delete"]);
    let statuses: Vec<&str> = group.iter().take(4).map(|g| g.2.as_str()).collect();
    assert_eq!(statuses, ["paid-0", "paid-1", "paid-2", "paid-3"]);
    // Sequin's shape.
    let m = accepted.iter().find(|m| m["action"] == "update").unwrap();
    assert_eq!(m["record"]["total"], json!("5.00"));
    assert_eq!(m["changes"], json!({}));
    assert_eq!(m["metadata"]["table_schema"], json!("public"));
    assert_eq!(m["metadata"]["table_name"], json!("orders"));
    assert_eq!(m["metadata"]["record_pks"], json!(["1000"]));
    assert_eq!(m["metadata"]["consumer"]["id"], json!(consumer.id));
    assert_eq!(m["metadata"]["consumer"]["name"], json!("orders-hook"));
    assert_eq!(m["metadata"]["database"]["database"], json!(shop.db.name));
    assert!(m["metadata"]["commit_lsn"].is_u64());
    assert!(m["metadata"]["commit_timestamp"]
        .as_str()
        .unwrap()
        .ends_with('Z'));
    // Every accepted request verifies with the Standard Webhooks reference library and the secret
    // from the keychain, and carries the configured header.
    let secret = Keychain::open()
        .unwrap()
        .get(&SecretKey::WebhookSecret(consumer.id.clone()))
        .unwrap()
        .expect("a signing secret in the keychain");
    let verifier = standardwebhooks::Webhook::new(secret.expose()).unwrap();
    for (headers, body) in received.signed.lock().unwrap().iter() {
        verifier.verify(body, headers).expect("a valid signature");
        assert_eq!(headers["x-team"], "shop");
        let mut tampered = body.to_vec();
        tampered.push(b' ');
        assert!(verifier.verify(&tampered, headers).is_err());
    }
    // Nothing left queued.
    assert_eq!(
        Ledger::open(&shop.store)
            .unwrap()
            .get("orders-hook")
            .unwrap()
            .pending,
        0
    );
    delivery.abort();
    capture.abort();
    tidepool::deliver::remove_consumer(
        &shop.store,
        "orders-hook",
        Some(&Keychain::open().unwrap()),
    )
    .unwrap();
    assert!(Keychain::open()
        .unwrap()
        .get(&SecretKey::WebhookSecret(consumer.id))
        .unwrap()
        .is_none());
}

/// Requests a receiver got per order id: it fails order 2 and answers order 1 only after 3 s.
#[derive(Default)]
struct PerOrder {
    requests: Mutex<BTreeMap<i64, usize>>,
    accepted: Mutex<BTreeMap<i64, usize>>,
}

async fn slow_one_failing_two(per: Arc<PerOrder>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let app =
        axum::Router::new()
            .route(
                "/hook",
                axum::routing::post(
                    |axum::extract::State(per): axum::extract::State<Arc<PerOrder>>,
                     body: Bytes| async move {
                        let message: Json = serde_json::from_slice(&body).unwrap();
                        let id = message["record"]["id"].as_i64().unwrap();
                        *per.requests.lock().unwrap().entry(id).or_default() += 1;
                        if id == 2 {
                            return StatusCode::INTERNAL_SERVER_ERROR;
                        }
                        if id == 1 {
                            tokio::time::sleep(Duration::from_secs(3)).await;
                        }
                        *per.accepted.lock().unwrap().entry(id).or_default() += 1;
                        StatusCode::NO_CONTENT
                    },
                ),
            )
            .with_state(per);
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    url
}

/// A message parked while an earlier one of another row is still in flight lies above the
/// consumer's position. Skipping it by hand must hold when delivery restarts and reads the log
/// again from that position: it is not sent (and parked) again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_skipped_message_stays_skipped_when_delivery_restarts_below_it() {
    let shop = Shop::new("dl_skip_holds", 0);
    shop.backfill().await;
    let per = Arc::new(PerOrder::default());
    let url = slow_one_failing_two(per.clone()).await;
    let consumer = shop.add(shop.spec(
        "skips",
        Mode::Changes,
        Start::Now,
        webhook(&url, None, Some(0)),
    ));
    shop.db.sql("INSERT INTO orders VALUES (1, 'new', 1);");
    shop.db.sql("INSERT INTO orders VALUES (2, 'new', 2);");
    shop.catch_up().await;
    let delivery = shop.delivery();
    let ledger = Ledger::open(&shop.store).unwrap();
    wait_for("order 2 parked", Duration::from_secs(20), || {
        ledger.get("skips").unwrap().failed == 1
    })
    .await;
    // Order 1 is still in its 3 s request: the position has not passed it, nor order 2.
    assert_eq!(per.accepted.lock().unwrap().get(&1), None);
    assert_eq!(
        Ledger::open(&shop.store)
            .unwrap()
            .skip(&consumer.id, None)
            .unwrap(),
        1
    );
    delivery.abort();
    let _ = delivery.await;

    let delivery = shop.delivery();
    wait_for(
        "order 1 delivered after the restart",
        Duration::from_secs(30),
        || {
            per.accepted
                .lock()
                .unwrap()
                .get(&1)
                .is_some_and(|n| *n >= 1)
        },
    )
    .await;
    wait_for("nothing left to deliver", Duration::from_secs(10), || {
        let c = ledger.get("skips").unwrap();
        c.pending == 0 && c.failed == 0
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        per.requests.lock().unwrap().get(&2).copied(),
        Some(1),
        "the skipped order 2 was sent again after the restart"
    );
    assert_eq!(ledger.get("skips").unwrap().failed, 0);
    delivery.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_past_its_retries_is_parked_and_retry_delivers_it() {
    let shop = Shop::new("dl_parked", 0);
    shop.backfill().await;
    let received = Arc::new(Received::default());
    received.failing.store(true, Ordering::SeqCst);
    let url = receiver(received.clone()).await;
    let consumer = shop.add(shop.spec(
        "parks",
        Mode::Changes,
        Start::Now,
        webhook(&url, None, Some(1)),
    ));
    shop.db.sql("INSERT INTO orders VALUES (1, 'new', 1);");
    shop.catch_up().await;
    let delivery = shop.delivery();
    // Two attempts (the first and one retry a second later), then parked.
    let ledger = Ledger::open(&shop.store).unwrap();
    wait_for("a parked message", Duration::from_secs(20), || {
        ledger.get("parks").unwrap().failed == 1
    })
    .await;
    assert_eq!(received.requests.load(Ordering::SeqCst), 2);
    let parked = ledger.parked(&consumer.id).unwrap();
    assert!(
        parked[0]
            .last_error
            .as_deref()
            .unwrap()
            .contains("HTTP 500"),
        "{parked:?}"
    );
    // The slot never waits for delivery: with the message parked, a later change of the same row
    // is stored and confirmed to PostgreSQL; it waits behind the parked one in its group.
    let confirmed = || -> tidepool::source::pgoutput::Lsn {
        shop.db
            .sql(&format!(
                "SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = '{}';",
                shop.db.name
            ))
            .trim()
            .parse()
            .unwrap()
    };
    let before = confirmed();
    let capture = shop.streaming();
    shop.db
        .sql("UPDATE orders SET status = 'paid' WHERE id = 1;");
    let update_lsn = {
        let mut found = None;
        wait_for("the update stored", Duration::from_secs(10), || {
            let stored = tidepool::store::Store::open(&shop.store)
                .unwrap()
                .latest_changes("public/orders", 1)
                .unwrap();
            if stored[0].1["_meta"]["op"] == json!("u") {
                found = stored[0].1["_meta"]["source"]["lsn"]
                    .as_str()
                    .and_then(|l| l.parse::<tidepool::source::pgoutput::Lsn>().ok());
            }
            found.is_some()
        })
        .await;
        found.unwrap()
    };
    wait_for(
        "the slot confirmed past the update",
        Duration::from_secs(15),
        || confirmed() > update_lsn,
    )
    .await;
    assert!(before < update_lsn);
    capture.abort();
    // Parked messages stay put, and hold back their group.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(received.requests.load(Ordering::SeqCst), 2);
    // Retried by hand (as `tidepool consumer retry` does, from another connection) once the
    // receiver works: delivered, one bare message (batching off).
    received.failing.store(false, Ordering::SeqCst);
    assert_eq!(
        Ledger::open(&shop.store)
            .unwrap()
            .retry(&consumer.id, None)
            .unwrap(),
        1
    );
    wait_for(
        "the retried message and the one behind it",
        Duration::from_secs(10),
        || received.accepted.lock().unwrap().len() >= 2,
    )
    .await;
    let accepted = received.accepted.lock().unwrap().clone();
    assert_eq!(
        summary(&accepted),
        [
            ("insert".to_string(), 1, "new".to_string()),
            ("update".to_string(), 1, "paid".to_string())
        ]
    );
    let body = received.signed.lock().unwrap()[0].1.clone();
    let bare: Json = serde_json::from_slice(&body).unwrap();
    assert!(bare.get("data").is_none() && bare.get("record").is_some());
    wait_for("an empty queue", Duration::from_secs(5), || {
        ledger.get("parks").unwrap().pending == 0 && ledger.get("parks").unwrap().failed == 0
    })
    .await;
    delivery.abort();
}

async fn receive(client: &reqwest::Client, base: &str, consumer: &str, query: &str) -> (u16, Json) {
    let r = client
        .get(format!(
            "{base}/api/http_pull_consumers/{consumer}/receive?{query}"
        ))
        .bearer_auth("pull-token")
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Json::Null))
}

async fn post(client: &reqwest::Client, base: &str, path: &str, body: &str) -> (u16, Json) {
    let r = client
        .post(format!("{base}/api/http_pull_consumers/{path}"))
        .bearer_auth("pull-token")
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Json::Null))
}

fn ack_ids(batch: &Json) -> Vec<String> {
    batch["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["ack_id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_receive_ack_nack_visibility_and_errors() {
    let shop = Shop::new("dl_pull", 0);
    shop.backfill().await;
    let pull = Pull {
        visibility_timeout_ms: 1_000,
        max_ack_pending: 3,
        max_waiting: 1,
    };
    shop.add(shop.spec("puller", Mode::Changes, Start::Now, Destination::Pull(pull)));
    shop.db.sql(
        "INSERT INTO orders VALUES (1, 'new', 1), (2, 'new', 2), (3, 'new', 3), (4, 'new', 4);",
    );
    shop.db
        .sql("UPDATE orders SET status = 'paid' WHERE id = 1;");
    shop.catch_up().await;
    let (base, server) = shop.pull_api("pull-token").await;
    let client = http_client();

    // Authorization, unknown consumers, malformed requests.
    let r = client
        .get(format!("{base}/api/http_pull_consumers/puller/receive"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let r = client
        .get(format!("{base}/api/http_pull_consumers/puller/receive"))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    assert!(r.json::<Json>().await.unwrap()["summary"].is_string());
    let (status, body) = receive(&client, &base, "nobody", "").await;
    assert_eq!(status, 404);
    assert!(body["summary"].as_str().unwrap().contains("nobody"));
    for query in [
        "batch_size=0",
        "batch_size=1001",
        "batch_size=many",
        "wait_for=10",
        "wait_for=1h",
    ] {
        let (status, body) = receive(&client, &base, "puller", query).await;
        assert_eq!(status, 400, "{query}");
        assert!(body["summary"].is_string(), "{query}");
    }
    for (body, want) in [
        ("{", 400),
        ("[]", 400),
        ("{\"ack_ids\": []}", 422),
        ("{\"ack_ids\": [\"x\"]}", 422),
    ] {
        let (status, answer) = post(&client, &base, "puller/ack", body).await;
        assert_eq!(status, want, "{body}");
        assert!(answer["summary"].is_string(), "{body}");
    }
    let (status, _) = post(&client, &base, "puller/receive", "{\"batch_size\": \"x\"}").await;
    assert_eq!(status, 400);

    // A batch of 10: key 1's update stays behind its insert; max_ack_pending caps it at 3.
    let (status, first) = receive(&client, &base, "puller", "batch_size=10").await;
    assert_eq!(status, 200);
    let messages: Vec<Json> = first["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["data"].clone())
        .collect();
    assert_eq!(
        summary(&messages),
        [
            ("insert".to_string(), 1, "new".to_string()),
            ("insert".to_string(), 2, "new".to_string()),
            ("insert".to_string(), 3, "new".to_string())
        ]
    );
    let ids = ack_ids(&first);
    // Acknowledge key 1's insert (twice: fine) and nack key 2's: key 2 comes back at once with the
    // same ack_id, then key 4 (three in flight again: 2, 3 and 4); key 1's update waits for room.
    let (status, ok) = post(
        &client,
        &base,
        "puller/ack",
        &json!({"ack_ids": [ids[0]]}).to_string(),
    )
    .await;
    assert_eq!((status, ok), (200, json!({"success": true})));
    let (status, _) = post(
        &client,
        &base,
        "puller/ack",
        &json!({"ack_ids": [ids[0]]}).to_string(),
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = post(
        &client,
        &base,
        "puller/nack",
        &json!({"ack_ids": [ids[1]]}).to_string(),
    )
    .await;
    assert_eq!(status, 200);
    let (_, second) = receive(&client, &base, "puller", "batch_size=10").await;
    let second_ids = ack_ids(&second);
    let second_msgs: Vec<Json> = second["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["data"].clone())
        .collect();
    assert_eq!(
        summary(&second_msgs),
        [
            ("insert".to_string(), 2, "new".to_string()),
            ("insert".to_string(), 4, "new".to_string())
        ]
    );
    assert_eq!(second_ids[0], ids[1], "a nacked message keeps its ack_id");
    // After the visibility timeout, unacknowledged messages come back with the same ack_ids.
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let (_, third) = receive(&client, &base, "puller", "batch_size=10").await;
    let third_ids: HashSet<String> = ack_ids(&third).into_iter().collect();
    let expected: HashSet<String> = [ids[1].clone(), ids[2].clone(), second_ids[1].clone()].into();
    assert_eq!(
        third_ids, expected,
        "keys 2, 3 and 4 again, with their ack_ids"
    );
    let all: Vec<String> = third_ids.into_iter().collect();
    post(
        &client,
        &base,
        "puller/ack",
        &json!({"ack_ids": all}).to_string(),
    )
    .await;
    let (_, fourth) = receive(&client, &base, "puller", "batch_size=10").await;
    let rest: Vec<Json> = fourth["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["data"].clone())
        .collect();
    assert_eq!(
        summary(&rest),
        [("update".to_string(), 1, "paid".to_string())]
    );
    post(
        &client,
        &base,
        "puller/ack",
        &json!({"ack_ids": ack_ids(&fourth)}).to_string(),
    )
    .await;
    let (_, empty) = receive(&client, &base, "puller", "batch_size=10").await;
    assert_eq!(empty, json!({"data": []}));

    // A long poll answers as soon as a change is committed and stored; a second waiting receive
    // is beyond max_waiting.
    let capture = shop.streaming();
    let waiting = {
        let client = client.clone();
        let base = base.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let (status, body) = receive(&client, &base, "puller", "wait_for=30000").await;
            (status, body, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, body) = receive(&client, &base, "puller", "wait_for=1000").await;
    assert_eq!(status, 429, "{body}");
    tokio::time::sleep(Duration::from_millis(700)).await;
    let committed = Instant::now();
    shop.db.sql("INSERT INTO orders VALUES (99, 'late', 9);");
    let (status, body, waited) = waiting.await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(body["data"][0]["data"]["record"]["id"], json!(99));
    assert!(
        committed.elapsed() < Duration::from_secs(3),
        "answered {:?} after the commit",
        committed.elapsed()
    );
    assert!(waited >= Duration::from_millis(900));
    capture.abort();
    server.abort();
    assert_eq!(DEFAULT_LISTEN, "127.0.0.1:7376");
}

/// Drains a pull consumer, acknowledging everything.
async fn drain(client: &reqwest::Client, base: &str, consumer: &str) -> Vec<Json> {
    let mut out = Vec::new();
    loop {
        let (status, batch) = receive(client, base, consumer, "batch_size=1000").await;
        assert_eq!(status, 200);
        let messages: Vec<Json> = batch["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["data"].clone())
            .collect();
        if messages.is_empty() {
            return out;
        }
        post(
            client,
            base,
            &format!("{consumer}/ack"),
            &json!({"ack_ids": ack_ids(&batch)}).to_string(),
        )
        .await;
        out.extend(messages);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_coalesce_changes_do_not_and_the_beginning_replays_the_backfill_as_read() {
    let shop = Shop::new("dl_modes", 2);
    shop.backfill().await;
    let pull = Destination::Pull(Pull::default());
    shop.add(shop.spec(
        "every-change",
        Mode::Changes,
        Start::Beginning,
        pull.clone(),
    ));
    shop.add(shop.spec("latest-rows", Mode::Rows, Start::Beginning, pull.clone()));
    shop.add(shop.spec("from-now", Mode::Changes, Start::Now, pull.clone()));
    let mut filtered = shop.spec("big-paid", Mode::Changes, Start::Beginning, pull);
    filtered.filter = Some("record.total > 15 && action in [\"update\", \"read\"]".into());
    shop.add(filtered);
    shop.db
        .sql("UPDATE orders SET status = 'paid' WHERE id = 1;");
    shop.db
        .sql("UPDATE orders SET status = 'shipped', total = 30 WHERE id = 1;");
    shop.db.sql("INSERT INTO orders VALUES (3, 'new', 3);");
    shop.db.sql("DELETE FROM orders WHERE id = 3;");
    shop.db.sql("DELETE FROM orders WHERE id = 2;");
    shop.catch_up().await;
    let (base, server) = shop.pull_api("pull-token").await;
    let client = http_client();

    let changes = drain(&client, &base, "every-change").await;
    // Commit order within each key; the backfill's reads first.
    let by_key = |messages: &[Json]| -> BTreeMap<i64, Vec<(String, String)>> {
        let mut groups: BTreeMap<i64, Vec<(String, String)>> = BTreeMap::new();
        for (action, id, status) in summary(messages) {
            groups.entry(id).or_default().push((action, status));
        }
        groups
    };
    let pairs = |list: &[(&str, &str)]| -> Vec<(String, String)> {
        list.iter()
            .map(|(a, s)| (a.to_string(), s.to_string()))
            .collect()
    };
    assert_eq!(
        by_key(&changes),
        BTreeMap::from([
            (
                1,
                pairs(&[("read", "new"), ("update", "paid"), ("update", "shipped")])
            ),
            (2, pairs(&[("read", "new"), ("delete", "")])),
            (3, pairs(&[("insert", "new"), ("delete", "")])),
        ])
    );
    assert_eq!(changes[0]["changes"], Json::Null);
    assert_eq!(changes[0]["metadata"]["record_pks"], json!(["1"]));
    // Reads of one snapshot have distinct keys and indexes.
    assert_ne!(
        changes[0]["metadata"]["idempotency_key"],
        changes[1]["metadata"]["idempotency_key"]
    );
    assert_eq!(changes[1]["metadata"]["commit_idx"], json!(1));

    let rows = drain(&client, &base, "latest-rows").await;
    let mut latest = summary(&rows);
    latest.sort_by_key(|r| r.1);
    assert_eq!(
        latest,
        [
            ("update".to_string(), 1, "shipped".to_string()),
            ("delete".to_string(), 2, "".to_string()),
            ("delete".to_string(), 3, "".to_string()),
        ]
    );

    // Added after the backfill: the changes stored later, no reads.
    let from_now = drain(&client, &base, "from-now").await;
    assert_eq!(from_now.len(), 5);
    assert!(from_now.iter().all(|m| m["action"] != "read"));
    let big = drain(&client, &base, "big-paid").await;
    assert_eq!(
        summary(&big),
        [
            ("read".to_string(), 2, "new".to_string()),
            ("update".to_string(), 1, "shipped".to_string())
        ],
        "total is numeric: compared as a number"
    );

    // Redelivery after a restart carries the same idempotency keys: a new consumer from the
    // beginning sees the same keys for the same changes.
    shop.add(shop.spec(
        "again",
        Mode::Changes,
        Start::Beginning,
        Destination::Pull(Pull::default()),
    ));
    let again = drain(&client, &base, "again").await;
    let keys = |m: &[Json]| -> Vec<Json> {
        m.iter()
            .map(|m| m["metadata"]["idempotency_key"].clone())
            .collect()
    };
    assert_eq!(keys(&again), keys(&changes));
    server.abort();
}

#[tokio::test]
async fn a_bad_filter_is_refused_when_the_consumer_is_saved() {
    let shop = Shop::new("dl_badfilter", 1);
    shop.backfill().await;
    let mut spec = shop.spec(
        "bad",
        Mode::Changes,
        Start::Now,
        Destination::Pull(Pull::default()),
    );
    spec.filter = Some("record.total >".into());
    let e = tidepool::deliver::add_consumer(&shop.store, spec, None, &[], None).unwrap_err();
    assert_eq!(e.kind(), tidepool::ErrorKind::InvalidInput);
    assert!(e.message().starts_with("filter: line 1, column"), "{e}");
    let mut spec = shop.spec(
        "nowhere",
        Mode::Changes,
        Start::Now,
        Destination::Pull(Pull::default()),
    );
    spec.collections = vec!["public/missing".into()];
    let e = tidepool::deliver::add_consumer(&shop.store, spec, None, &[], None).unwrap_err();
    assert_eq!(e.kind(), tidepool::ErrorKind::NotFound);
    assert!(Ledger::open(&shop.store)
        .unwrap()
        .list()
        .unwrap()
        .is_empty());
}

pub(crate) fn tidepool_cli(shop: &Shop) -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_tidepool"));
    command
        .env("PGPASSWORD", shop.db.cluster.superuser_password().expose())
        .env("PGPASSFILE", "/nonexistent");
    command
}

pub(crate) fn cli_ok(command: &mut std::process::Command) -> String {
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// Kills the capture process it holds when dropped (a failed assertion included).
pub(crate) struct Child(pub(crate) std::process::Child);

/// Starts `command` (a `tidepool capture …`) serving the pull API on a port the OS picks, its
/// standard error going to `log`, and returns it with the address it printed. Asking for port 0,
/// rather than finding a free port and passing it on, is what keeps a parallel test from taking
/// the port in between.
pub(crate) fn spawn_listening(
    mut command: std::process::Command,
    log: &std::path::Path,
) -> (Child, String) {
    let child = Child(
        command
            .args(["--listen", "127.0.0.1:0"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap(),
    );
    let started = Instant::now();
    loop {
        let printed = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(after) = printed.split("pull API on http://").nth(1) {
            let addr = after.split_whitespace().next().unwrap_or_default();
            return (child, addr.to_string());
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the capture never served the pull API:\n{printed}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_adds_consumers_keeps_secrets_in_the_keychain_and_serves_the_pull_api() {
    let shop = Shop::new("dl_cli", 2);
    let store = shop.store.to_str().unwrap().to_string();
    let url = format!(
        "postgres://postgres@127.0.0.1:{}/{}?sslmode=disable",
        shop.db.cluster.port(),
        shop.db.name
    );
    let capture_args = [
        "capture",
        "--url",
        &url,
        "--store",
        &store,
        "--publication",
        "shop_pub",
        "--slot",
        &shop.db.name,
    ];
    // Backfill, then stop.
    let lsn = shop.db.current_lsn().to_string();
    cli_ok(tidepool_cli(&shop).args(capture_args).args([
        "--tables",
        "public.orders",
        "--stop-at-lsn",
        &lsn,
    ]));

    cli_ok(tidepool_cli(&shop).args([
        "consumer",
        "add",
        "--store",
        &store,
        "--name",
        "app",
        "--collection",
        "public/orders",
        "--pull",
        "--start",
        "beginning",
    ]));
    // A secret header's value comes from standard input, never an argument.
    let mut add = tidepool_cli(&shop)
        .args([
            "consumer",
            "add",
            "--store",
            &store,
            "--name",
            "hook",
            "--collection",
            "public/orders",
            "--webhook",
            "http://127.0.0.1:9/hook",
            "--secret-header",
            "authorization",
            "--filter",
            "record.total > 10",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut add.stdin.take().unwrap(), b"Bearer s3cret-value\n").unwrap();
    let output = add.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let bad = tidepool_cli(&shop)
        .args([
            "consumer",
            "add",
            "--store",
            &store,
            "--name",
            "bad",
            "--collection",
            "public/orders",
            "--pull",
            "--filter",
            "record.total >",
        ])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("filter: line 1, column"));

    let list: Json = serde_json::from_str(&cli_ok(
        tidepool_cli(&shop).args(["consumer", "list", "--store", &store, "--json"]),
    ))
    .unwrap();
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["app", "hook"]);
    let hook_id = list[1]["id"].as_str().unwrap().to_string();
    let secret =
        cli_ok(tidepool_cli(&shop).args(["consumer", "secret", "--store", &store, "hook"]));
    assert!(secret.trim().starts_with("whsec_"));
    let header = Keychain::open()
        .unwrap()
        .get(&SecretKey::WebhookHeader(
            hook_id.clone(),
            "authorization".into(),
        ))
        .unwrap()
        .unwrap();
    assert_eq!(header.expose(), "Bearer s3cret-value");
    let token = cli_ok(tidepool_cli(&shop).args(["api-token", "--store", &store]))
        .trim()
        .to_string();
    assert_eq!(
        cli_ok(tidepool_cli(&shop).args(["api-token", "--store", &store])).trim(),
        token
    );
    // No secret in any file of the store folder.
    for entry in std::fs::read_dir(&shop.store).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            let bytes = std::fs::read(&path).unwrap();
            for needle in ["s3cret-value", secret.trim(), token.as_str()] {
                assert!(
                    !bytes.windows(needle.len()).any(|w| w == needle.as_bytes()),
                    "{} holds a secret",
                    path.display()
                );
            }
        }
    }

    // `capture --listen` streams and serves the pull API.
    let mut capture = tidepool_cli(&shop);
    capture.args(capture_args);
    let (_capture, listen) = spawn_listening(capture, &shop.store.with_extension("capture.log"));
    let base = format!("http://{listen}");
    let client = http_client();
    let receive_url = format!("{base}/api/http_pull_consumers/app/receive?batch_size=10");
    let started = Instant::now();
    let first = loop {
        if let Ok(r) = client.get(&receive_url).bearer_auth(&token).send().await {
            break r.json::<Json>().await.unwrap();
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the pull API never answered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let reads: Vec<Json> = first["data"]
        .as_array()
        .unwrap_or_else(|| panic!("the first receive answered {first}"))
        .iter()
        .map(|m| m["data"].clone())
        .collect();
    assert_eq!(
        summary(&reads),
        [
            ("read".to_string(), 1, "new".to_string()),
            ("read".to_string(), 2, "new".to_string())
        ]
    );
    let r = client
        .get(&receive_url)
        .bearer_auth("not-the-token")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let ids: Vec<String> = ack_ids(&first);
    let r = client
        .post(format!("{base}/api/http_pull_consumers/app/ack"))
        .bearer_auth(&token)
        .json(&json!({"ack_ids": ids}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<Json>().await.unwrap(), json!({"success": true}));
    let poll = {
        let client = client.clone();
        let token = token.clone();
        let url = format!("{base}/api/http_pull_consumers/app/receive?wait_for=20s");
        tokio::spawn(async move {
            client
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .json::<Json>()
                .await
                .unwrap()
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    shop.db.sql("INSERT INTO orders VALUES (3, 'new', 30);");
    let got = poll.await.unwrap();
    assert_eq!(got["data"][0]["data"]["action"], json!("insert"));
    assert_eq!(got["data"][0]["data"]["record"]["id"], json!(3));

    cli_ok(tidepool_cli(&shop).args(["consumer", "remove", "--store", &store, "hook"]));
    assert!(Keychain::open()
        .unwrap()
        .get(&SecretKey::WebhookHeader(
            hook_id.clone(),
            "authorization".into()
        ))
        .unwrap()
        .is_none());
    let show = tidepool_cli(&shop)
        .args(["consumer", "show", "--store", &store, "hook"])
        .output()
        .unwrap();
    assert!(!show.status.success());
}

/// A webhook receiver that can go down (its port closed, so connections are refused) and come back
/// on the same port.
struct Downable {
    addr: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Downable {
    async fn start(received: Arc<Received>, addr: std::net::SocketAddr) -> Downable {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let app = hook_app(received);
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        Downable {
            addr,
            stop: Some(stop),
            task: Some(task),
        }
    }

    fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// Closes the port and every open connection.
    async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap();
        }
    }
}

/// The slot's `confirmed_flush_lsn`.
fn confirmed_flush(shop: &Shop) -> tidepool::source::pgoutput::Lsn {
    shop.db
        .sql(&format!(
            "SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = '{}';",
            shop.db.name
        ))
        .trim()
        .parse()
        .unwrap()
}

/// The source LSN of the newest change in the store, once it is the change of row `id`.
async fn stored_lsn_of(shop: &Shop, id: i64) -> tidepool::source::pgoutput::Lsn {
    let mut found = None;
    wait_for("the change stored", Duration::from_secs(20), || {
        let latest = tidepool::store::Store::open(&shop.store)
            .unwrap()
            .latest_changes("public/orders", 1)
            .unwrap();
        if latest.first().map(|c| c.1["id"].clone()) == Some(json!(id)) {
            found = latest[0].1["_meta"]["source"]["lsn"]
                .as_str()
                .and_then(|l| l.parse::<tidepool::source::pgoutput::Lsn>().ok());
        }
        found.is_some()
    })
    .await;
    found.unwrap()
}

/// How long the receiver is down: the minute, long enough for six failed attempts of the
/// same messages (1 + 2 + 4 + 8 + 16 s of backoff, the next due at about 63 s).
const OUTAGE: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_down_for_a_minute_gets_everything_when_it_returns_and_the_slot_kept_advancing()
{
    let shop = Shop::new("dl_outage", 0);
    shop.backfill().await;
    let received = Arc::new(Received::default());
    let mut hook = Downable::start(received.clone(), "127.0.0.1:0".parse().unwrap()).await;
    let consumer = shop.add(shop.spec(
        "outage",
        Mode::Changes,
        Start::Now,
        webhook(&hook.url(), Some(10), None),
    ));
    let capture = shop.streaming();
    let delivery = shop.delivery();
    shop.db.sql("INSERT INTO orders VALUES (1, 'new', 1);");
    wait_for("the first message", Duration::from_secs(30), || {
        received.accepted.lock().unwrap().len() == 1
    })
    .await;

    // Down: connections are refused from now on.
    hook.stop().await;
    let down = Instant::now();
    for id in 2..=21 {
        shop.db
            .sql(&format!("INSERT INTO orders VALUES ({id}, 'new', {id});"));
    }
    for n in 1..=5 {
        shop.db.sql(&format!(
            "UPDATE orders SET status = 'paid-{n}' WHERE id = 1;"
        ));
    }
    shop.db.sql("INSERT INTO orders VALUES (22, 'last', 22);");
    // While none of them is delivered, the slot is confirmed past all of them: the source keeps no
    // WAL for the receiver.
    let last = stored_lsn_of(&shop, 22).await;
    wait_for(
        "the slot confirmed past the outage's changes",
        Duration::from_secs(20),
        || confirmed_flush(&shop) > last,
    )
    .await;
    assert_eq!(received.accepted.lock().unwrap().len(), 1);
    let ledger = Ledger::open(&shop.store).unwrap();
    wait_for(
        "the outage's changes queued",
        Duration::from_secs(10),
        || ledger.get("outage").unwrap().pending == 26,
    )
    .await;
    tokio::time::sleep(OUTAGE.saturating_sub(down.elapsed())).await;
    assert_eq!(
        received.accepted.lock().unwrap().len(),
        1,
        "delivered while the receiver was down"
    );
    assert!(confirmed_flush(&shop) > last);

    // Back on the same port: everything arrives, once each, in order per row.
    let _hook = Downable::start(received.clone(), hook.addr).await;
    let back = Instant::now();
    wait_for(
        "every message after the outage",
        Duration::from_secs(150),
        || received.accepted.lock().unwrap().len() >= 27,
    )
    .await;
    eprintln!(
        "delivered {:.1} s after the receiver came back",
        back.elapsed().as_secs_f64()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let accepted = received.accepted.lock().unwrap().clone();
    assert_eq!(accepted.len(), 27, "{accepted:#?}");
    let keys: HashSet<&str> = accepted
        .iter()
        .map(|m| m["metadata"]["idempotency_key"].as_str().unwrap())
        .collect();
    assert_eq!(keys.len(), 27, "each message accepted once");
    let ids: HashSet<i64> = summary(&accepted).iter().map(|m| m.1).collect();
    assert_eq!(ids, (1..=22).collect::<HashSet<i64>>());
    let row_1: Vec<String> = summary(&accepted)
        .into_iter()
        .filter(|m| m.1 == 1)
        .map(|m| m.2)
        .collect();
    assert_eq!(
        row_1,
        ["new", "paid-1", "paid-2", "paid-3", "paid-4", "paid-5"]
    );
    assert!(received.requests.load(Ordering::SeqCst) >= 2);
    assert_eq!(ledger.get(&consumer.id).unwrap().pending, 0);
    delivery.abort();
    capture.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_capture_mid_delivery_loses_nothing_and_repeats_keep_their_key() {
    let shop = Shop::new("dl_kill", 0);
    shop.backfill().await;
    let received = Arc::new(Received::default());
    // Requests are recorded on arrival and answered a second later, so the kill below lands while
    // a request is in flight: its messages arrived and were never acknowledged.
    received.answer_after_ms.store(1000, Ordering::SeqCst);
    let url = receiver(received.clone()).await;
    let mut destination = webhook(&url, Some(10), None);
    if let Destination::Webhook(w) = &mut destination {
        w.max_in_flight = 2;
    }
    shop.add(shop.spec("killed", Mode::Changes, Start::Now, destination));
    for id in 1..=100 {
        shop.db
            .sql(&format!("INSERT INTO orders VALUES ({id}, 'new', {id});"));
    }
    let store = shop.store.to_str().unwrap().to_string();
    let url = format!(
        "postgres://postgres@127.0.0.1:{}/{}?sslmode=disable",
        shop.db.cluster.port(),
        shop.db.name
    );
    let capture = || {
        Child(
            tidepool_cli(&shop)
                .args(["capture", "--url", &url, "--store", &store])
                .args(["--publication", "shop_pub", "--slot", &shop.db.name])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap(),
        )
    };
    let mut first = capture();
    wait_for("some deliveries", Duration::from_secs(60), || {
        received.accepted.lock().unwrap().len() >= 20
    })
    .await;
    first.0.kill().unwrap(); // SIGKILL
    first.0.wait().unwrap();
    let at_kill = received.accepted.lock().unwrap().len();
    assert!(at_kill < 200, "everything was delivered before the kill");
    // Written while Tidepool is dead, and changes of rows some of which were delivered.
    for id in 101..=200 {
        shop.db
            .sql(&format!("INSERT INTO orders VALUES ({id}, 'new', {id});"));
    }
    shop.db
        .sql("UPDATE orders SET status = 'paid' WHERE id IN (1, 2, 3, 150);");
    received.answer_after_ms.store(0, Ordering::SeqCst);
    let _second = capture();
    let all = |accepted: &[Json]| {
        let changes: HashSet<(String, i64)> = summary(accepted)
            .into_iter()
            .map(|(action, id, _)| (action, id))
            .collect();
        changes.len()
    };
    wait_for(
        "every change delivered after the restart",
        Duration::from_secs(120),
        || all(&received.accepted.lock().unwrap()) == 204,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let accepted = received.accepted.lock().unwrap().clone();
    // Every change at least once; a repeat is the same change with the same key.
    let mut keys: BTreeMap<(String, i64), HashSet<String>> = BTreeMap::new();
    for m in &accepted {
        keys.entry((
            m["action"].as_str().unwrap().to_string(),
            m["record"]["id"].as_i64().unwrap(),
        ))
        .or_default()
        .insert(m["metadata"]["idempotency_key"].as_str().unwrap().into());
    }
    assert_eq!(keys.len(), 204);
    for id in 1..=200 {
        assert!(
            keys.contains_key(&("insert".to_string(), id)),
            "insert {id} lost"
        );
    }
    for id in [1, 2, 3, 150] {
        assert!(
            keys.contains_key(&("update".to_string(), id)),
            "update {id} lost"
        );
    }
    for (change, set) in &keys {
        assert_eq!(set.len(), 1, "{change:?} came with different keys: {set:?}");
    }
    // The request in flight at the kill was delivered again after the restart.
    assert!(
        accepted.len() > 204,
        "no message was redelivered after the kill ({at_kill} accepted before it)"
    );
    assert_eq!(
        Ledger::open(&shop.store)
            .unwrap()
            .get("killed")
            .unwrap()
            .pending,
        0
    );
}

/// (op, id, status) of each entry of the store's log.
fn stored_log(shop: &Shop) -> Vec<(String, i64, String)> {
    tidepool::store::Store::open(&shop.store)
        .unwrap()
        .changes("public/orders", 0, 1000)
        .unwrap()
        .into_iter()
        .map(|(_, d)| {
            (
                d["_meta"]["op"].as_str().unwrap().to_string(),
                d["id"].as_i64().unwrap(),
                d["status"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retention_prunes_old_changes_keeps_rows_and_tells_a_consumer_that_fell_behind() {
    let shop = Shop::new("dl_retention", 2);
    shop.backfill().await;
    let (base, _api) = shop.pull_api("pull-token").await;
    let client = http_client();
    let pull = || Destination::Pull(Pull::default());
    shop.add(shop.spec("keeps-up", Mode::Changes, Start::Now, pull()));
    shop.add(shop.spec("late", Mode::Changes, Start::Now, pull()));
    // Each its own transaction: row 1 updated three times, row 2 deleted, row 3 inserted.
    for sql in [
        "UPDATE orders SET status = 'a' WHERE id = 1;",
        "UPDATE orders SET status = 'b' WHERE id = 1;",
        "UPDATE orders SET status = 'c' WHERE id = 1;",
        "DELETE FROM orders WHERE id = 2;",
        "INSERT INTO orders VALUES (3, 'new', 30);",
    ] {
        shop.db.sql(sql);
    }
    shop.catch_up().await;
    assert_eq!(drain(&client, &base, "keeps-up").await.len(), 5);
    let mut store = tidepool::store::Store::open(&shop.store).unwrap();
    assert!(tidepool::store::retention::retention(&store)
        .unwrap()
        .is_none());
    tidepool::store::retention::set_retention(&mut store, Some(Duration::from_secs(2))).unwrap();
    drop(store);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    shop.db.sql("INSERT INTO orders VALUES (4, 'new', 40);");

    // The running capture prunes what is older than two seconds and no row's current state.
    let capture = shop.streaming();
    wait_for(
        "the log pruned and row 4 stored",
        Duration::from_secs(30),
        || {
            let store = tidepool::store::Store::open(&shop.store).unwrap();
            !tidepool::store::retention::pruned(&store)
                .unwrap()
                .is_empty()
                && stored_log(&shop).iter().any(|e| e.1 == 4)
        },
    )
    .await;
    capture.abort();
    let s = |op: &str, id: i64, status: &str| (op.to_string(), id, status.to_string());
    assert_eq!(
        stored_log(&shop),
        [
            s("c", 1, "new"),
            s("c", 2, "new"),
            s("u", 1, "c"),
            s("c", 3, "new"),
            s("c", 4, "new")
        ],
        "the backfill, each row's current change and the newest change are kept"
    );
    let rows = tidepool::store::Store::open(&shop.store)
        .unwrap()
        .rows("public/orders", 10)
        .unwrap();
    let rows: Vec<(i64, &str)> = rows
        .iter()
        .map(|r| (r["id"].as_i64().unwrap(), r["status"].as_str().unwrap()))
        .collect();
    assert_eq!(rows, [(1, "c"), (3, "new"), (4, "new")]);

    // The consumer that read everything before the pruning lost nothing and is told nothing.
    assert_eq!(
        summary(&drain(&client, &base, "keeps-up").await),
        [("insert".to_string(), 4, "new".to_string())]
    );
    let ledger = Ledger::open(&shop.store).unwrap();
    assert!(ledger.get("keeps-up").unwrap().notices.is_empty());
    // The one that had not read them gets what is kept, and is told plainly what it missed.
    assert_eq!(
        summary(&drain(&client, &base, "late").await),
        [
            ("update".to_string(), 1, "c".to_string()),
            ("insert".to_string(), 3, "new".to_string()),
            ("insert".to_string(), 4, "new".to_string())
        ]
    );
    let late = ledger.get("late").unwrap();
    assert_eq!(late.notices.len(), 1, "{:?}", late.notices);
    assert_eq!(late.notices[0].kind, tidepool::ErrorKind::Behind);
    let message = &late.notices[0].message;
    assert!(
        message.contains("consumer 'late' fell behind the store's retention (2s)")
            && message.contains("public/orders up to log position"),
        "{message}"
    );
    // A consumer added now from the beginning starts from the log as kept: nothing to tell.
    shop.add(shop.spec("fresh", Mode::Changes, Start::Beginning, pull()));
    assert_eq!(drain(&client, &base, "fresh").await.len(), 5);
    assert!(ledger.get("fresh").unwrap().notices.is_empty());
    // The command line shows the notice with its kind.
    let store = shop.store.to_str().unwrap().to_string();
    let shown = cli_ok(tidepool_cli(&shop).args(["consumer", "list", "--store", &store]));
    assert!(
        shown.contains("Behind: consumer 'late' fell behind"),
        "{shown}"
    );
    let json: Json = serde_json::from_str(&cli_ok(
        tidepool_cli(&shop).args(["consumer", "show", "--store", &store, "late", "--json"]),
    ))
    .unwrap();
    assert_eq!(json["consumer"]["notices"][0]["kind"], json!("Behind"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_consumer_command_works_on_the_profiles_own_store_and_store_overrides_it() {
    let shop = Shop::new("dl_profile", 2);
    let data = harness::temp_dir("dl_profile_data");
    let data_dir = data.to_str().unwrap().to_string();
    let cli = || {
        let mut command = tidepool_cli(&shop);
        command.env("TIDEPOOL_DATA_DIR", &data_dir);
        command
    };
    let url = format!(
        "postgres://postgres@127.0.0.1:{}/{}?sslmode=disable",
        shop.db.cluster.port(),
        shop.db.name
    );
    cli_ok(
        cli()
            .args(["profile", "add", "--name", "shop", "--url", &url])
            .args(["--publication", "shop_pub", "--slot", &shop.db.name]),
    );
    // The store the app uses for this profile.
    let own = tidepool::app::profile::Profiles::open(&data)
        .store_dir("shop")
        .unwrap();
    let lsn = shop.db.current_lsn().to_string();
    cli_ok(cli().args([
        "capture",
        "--profile",
        "shop",
        "--tables",
        "public.orders",
        "--stop-at-lsn",
        &lsn,
        "--retention",
        "7d",
    ]));
    assert!(
        own.join("tidepool.db").exists(),
        "capture did not use the profile's store"
    );
    assert_eq!(
        tidepool::store::retention::retention(&tidepool::store::Store::open(&own).unwrap())
            .unwrap(),
        Some(Duration::from_secs(7 * 86_400))
    );
    cli_ok(
        cli()
            .args(["consumer", "add", "--profile", "shop", "--name", "app"])
            .args([
                "--collection",
                "public/orders",
                "--pull",
                "--start",
                "beginning",
            ]),
    );
    let list: Json = serde_json::from_str(&cli_ok(cli().args([
        "consumer",
        "list",
        "--profile",
        "shop",
        "--json",
    ])))
    .unwrap();
    assert_eq!(list[0]["name"], json!("app"));
    assert_eq!(Ledger::open(&own).unwrap().list().unwrap().len(), 1);
    let show = cli_ok(cli().args(["consumer", "show", "--profile", "shop", "app"]));
    assert!(show.contains("\"name\": \"app\""), "{show}");
    // --store overrides the profile's store.
    let elsewhere = harness::temp_dir("dl_profile_other");
    let other = cli_ok(
        cli()
            .args(["consumer", "list", "--profile", "shop", "--json"])
            .args(["--store", elsewhere.to_str().unwrap()]),
    );
    assert_eq!(serde_json::from_str::<Json>(&other).unwrap(), json!([]));
    let token = cli_ok(cli().args(["api-token", "--profile", "shop"]))
        .trim()
        .to_string();

    // `capture --profile P --listen ADDR` serves the pull API from the same store.
    let mut capture = cli();
    capture.args(["capture", "--profile", "shop"]);
    let (_capture, listen) = spawn_listening(capture, &elsewhere.with_extension("capture.log"));
    let client = http_client();
    let receive = format!("http://{listen}/api/http_pull_consumers/app/receive?batch_size=10");
    let started = Instant::now();
    let got = loop {
        if let Ok(r) = client.get(&receive).bearer_auth(&token).send().await {
            break r.json::<Json>().await.unwrap();
        }
        assert!(started.elapsed() < Duration::from_secs(30), "no pull API");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(got["data"].as_array().unwrap().len(), 2, "{got}");
    let ids = ack_ids(&got);
    let acked = client
        .post(format!("http://{listen}/api/http_pull_consumers/app/ack"))
        .bearer_auth(&token)
        .json(&json!({ "ack_ids": ids }))
        .send()
        .await
        .unwrap();
    assert_eq!(acked.status().as_u16(), 200);
    cli_ok(cli().args(["consumer", "remove", "--profile", "shop", "app"]));
    assert!(Ledger::open(&own).unwrap().list().unwrap().is_empty());
    let _ = cli().args(["profile", "remove", "shop"]).output();
    let _ = std::fs::remove_dir_all(&data);
    let _ = std::fs::remove_dir_all(&elsewhere);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_resync_consumers_get_every_row_again_as_read_and_are_told_of_the_gap() {
    let shop = Shop::new("dl_resync", 2);
    shop.backfill().await;
    let (base, _api) = shop.pull_api("pull-token").await;
    let client = http_client();
    let pull = || Destination::Pull(Pull::default());
    shop.add(shop.spec("app", Mode::Changes, Start::Now, pull()));
    shop.db.sql("INSERT INTO orders VALUES (3, 'new', 30);");
    shop.catch_up().await;
    assert_eq!(
        summary(&drain(&client, &base, "app").await),
        [("insert".to_string(), 3, "new".to_string())]
    );

    // Behind Tidepool's back: the slot goes, and rows change while nothing captures them.
    shop.db.sql(&format!(
        "SELECT pg_drop_replication_slot('{}');",
        shop.db.name
    ));
    shop.db.sql(
        "UPDATE orders SET status = 'B' WHERE id = 2; DELETE FROM orders WHERE id = 1; INSERT INTO orders VALUES (4, 'new', 40);",
    );
    let err = run(shop.options(Some(shop.db.current_lsn()), false))
        .await
        .expect_err("a dropped slot is a gap");
    assert_eq!(err.kind(), tidepool::ErrorKind::Diverged, "{err}");
    let done = tidepool::source::continuity::resync(&shop.db.spec(), &shop.store, &shop.db.name)
        .await
        .expect("resync");
    assert_eq!(done.gap.rebackfilled, ["public/orders"]);
    shop.db.sql("INSERT INTO orders VALUES (5, 'new', 50);");
    shop.catch_up().await;

    // The consumer gets every row's state after the gap as `read`, and the changes after it; it
    // cannot get the delete made inside the gap, and is told so.
    let got: HashSet<(String, i64, String)> = summary(&drain(&client, &base, "app").await)
        .into_iter()
        .collect();
    let want: HashSet<(String, i64, String)> = [
        ("read", 2, "B"),
        ("read", 3, "new"),
        ("read", 4, "new"),
        ("insert", 5, "new"),
    ]
    .into_iter()
    .map(|(a, id, s)| (a.to_string(), id, s.to_string()))
    .collect();
    assert!(got.is_superset(&want), "{got:?}");
    // Row 5 may also be read by the new snapshot, if it was taken after the insert: nothing else.
    let extra: Vec<_> = got.difference(&want).collect();
    assert!(
        extra.is_empty() || extra == [&("read".to_string(), 5, "new".to_string())],
        "{extra:?}"
    );
    let ledger = Ledger::open(&shop.store).unwrap();
    let app = ledger.get("app").unwrap();
    assert_eq!(app.notices.len(), 1, "{:?}", app.notices);
    assert_eq!(app.notices[0].kind, tidepool::ErrorKind::Diverged);
    let message = &app.notices[0].message;
    assert!(
        message.contains("consumer 'app' crosses a gap in the store's history")
            && message.contains(&done.gap.from)
            && message.contains("The rows of public/orders were read again")
            && message.contains("Deletes made in the gap are not delivered"),
        "{message}"
    );
    // A consumer added after the resync starts after the gap: nothing to tell.
    shop.add(shop.spec("later", Mode::Changes, Start::Now, pull()));
    assert!(drain(&client, &base, "later").await.is_empty());
    assert!(ledger.get("later").unwrap().notices.is_empty());
}
