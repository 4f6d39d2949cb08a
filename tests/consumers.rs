//! Consumers managed as the desktop app manages them ([`tidepool::app::consumers::ConsumerStore`] keyed by
//! a profile), delivering from the profile's own run: a real capture of a harness database, a real
//! webhook receiver (axum on loopback), the real keychain.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use serde_json::Value as Json;
use tidepool::app::consumers::{ConsumerStore, SecretHeader};
use tidepool::app::profile::Profiles;
use tidepool::app::run::Runs;
use tidepool::binding::Binding;
use tidepool::deliver::consumer::{Action, ConsumerSpec, Destination, Mode, Start, Webhook};
use tidepool::secrets::{Keychain, Secret, SecretKey};

use crate::harness::{self, until, TestDb};

/// Requests a receiver accepted: headers and body.
type Requests = Arc<Mutex<Vec<(HeaderMap, Bytes)>>>;

/// A webhook receiver on a free loopback port that accepts everything (answers 500 while `failing`
/// is set); returns its URL.
async fn receiver(requests: Requests, failing: Arc<AtomicBool>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let app = axum::Router::new()
        .route(
            "/hook",
            axum::routing::post(
                |axum::extract::State((r, failing)): axum::extract::State<(
                    Requests,
                    Arc<AtomicBool>,
                )>,
                 headers: HeaderMap,
                 body: Bytes| async move {
                    if failing.load(Ordering::SeqCst) {
                        return StatusCode::INTERNAL_SERVER_ERROR;
                    }
                    r.lock().unwrap().push((headers, body));
                    StatusCode::NO_CONTENT
                },
            ),
        )
        .with_state((requests, failing));
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_added_to_a_profile_delivers_from_its_run_and_is_removed_with_its_secrets() {
    let db = TestDb::new(harness::plain(), "consumers_app");
    db.sql(
        "CREATE TABLE orders (id int PRIMARY KEY, status text NOT NULL, total numeric(10,2) NOT NULL);
         INSERT INTO orders VALUES (1, 'new', 10), (2, 'paid', 20);",
    );
    let dir = harness::temp_dir("consumers_app_profiles");
    let profiles = Profiles::open(&dir);
    let id = profiles
        .save(
            None,
            db.profile_draft("Shop"),
            Some(db.cluster.superuser_password().clone()),
        )
        .unwrap()
        .profile
        .id;
    let consumers = ConsumerStore::of_profile(&profiles, &id).unwrap();
    assert!(
        consumers.list().unwrap().is_empty(),
        "none before a capture"
    );
    let early = consumers
        .add(
            spec("too-early", "http://127.0.0.1:9/hook", vec![]),
            vec![],
            None,
        )
        .unwrap_err();
    assert_eq!(early.kind(), tidepool::ErrorKind::NotFound, "{early}");

    profiles
        .publish(&id, vec![Binding::new("public", "orders")], vec![])
        .await
        .unwrap();
    let runs = Runs::default();
    let _seen = harness::start_backfilled(&runs, &profiles, &id, &["public/orders"]).await;

    // "Check" on the filter: refused with its position, or tried on the stored changes.
    let bad = consumers
        .check_filter("record.status ==", &["public/orders".into()], &[])
        .unwrap();
    let problem = bad.problem.expect("a refusal");
    assert_eq!(problem.line, Some(1), "{problem:?}");
    assert!(problem.column.is_some(), "{problem:?}");
    let good = consumers
        .check_filter(
            r#"record.status == "paid" || record.total > 15"#,
            &["public/orders".into()],
            &[Action::Read],
        )
        .unwrap();
    assert_eq!(good.problem, None);
    assert_eq!(good.preview.len(), 1);
    assert_eq!((good.preview[0].tried, good.preview[0].kept), (2, 1));
    // Messages name the profile's database, as delivered ones do.
    let named = consumers
        .check_filter(
            &format!("metadata.database.database == {:?}", db.name),
            &["public/orders".into()],
            &[],
        )
        .unwrap();
    assert_eq!((named.preview[0].tried, named.preview[0].kept), (2, 2));

    // A secret header needs its value.
    let missing = consumers
        .add(
            spec("orders-hook", "http://127.0.0.1:9/hook", vec!["x-api-key"]),
            vec![],
            None,
        )
        .unwrap_err();
    assert!(missing.message().starts_with("secret-header:"), "{missing}");

    let requests: Requests = Arc::default();
    let url = receiver(requests.clone(), Arc::default()).await;
    let mut hook = spec("orders-hook", &url, vec!["x-api-key"]);
    hook.filter = Some(r#"record.status == "paid""#.into());
    let consumer = consumers
        .add(
            hook,
            vec![SecretHeader {
                name: "x-api-key".into(),
                value: Secret::new("k-123"),
            }],
            None,
        )
        .unwrap();
    db.sql("INSERT INTO orders VALUES (3, 'paid', 30), (4, 'new', 40);");
    db.sql("UPDATE orders SET status = 'paid' WHERE id = 4;");
    until("two paid changes at the receiver", || {
        requests.lock().unwrap().len() >= 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Revealed on request, as the window receives it: a JSON string.
    let revealed = consumers.reveal_signing_secret("orders-hook").unwrap();
    let secret: String = serde_json::from_value(serde_json::to_value(&revealed).unwrap()).unwrap();
    assert!(secret.starts_with("whsec_"), "a Standard Webhooks secret");
    assert!(
        !format!("{revealed:?}").contains(&secret),
        "Debug is redacted"
    );
    let verifier = standardwebhooks::Webhook::new(&secret).unwrap();
    let mut delivered = Vec::new();
    for (headers, body) in requests.lock().unwrap().iter() {
        verifier.verify(body, headers).expect("a valid signature");
        assert_eq!(headers["x-api-key"], "k-123");
        let message: Json = serde_json::from_slice(body).unwrap();
        delivered.push((
            message["action"].as_str().unwrap().to_string(),
            message["record"]["id"].as_i64().unwrap(),
        ));
    }
    // Two keys, two groups: their order between each other is free.
    delivered.sort_by_key(|d| d.1);
    assert_eq!(
        delivered,
        [("insert".to_string(), 3), ("update".to_string(), 4)],
        "only the paid changes after the consumer was added"
    );

    // The list shows it with its counts, secret header names only.
    let list = consumers.list().unwrap();
    assert_eq!(list.len(), 1);
    let view = &list[0];
    assert_eq!(view.consumer.spec.name, "orders-hook");
    assert_eq!((view.consumer.pending, view.consumer.failed), (0, 0));
    assert!(view.parked.is_empty());
    let shown = serde_json::to_string(view).unwrap();
    assert!(
        shown.contains("\"secretHeaders\":[\"x-api-key\"]"),
        "{shown}"
    );
    assert!(
        !shown.contains("k-123") && !shown.contains(&secret),
        "{shown}"
    );

    // Removing it deletes its keychain entries.
    let keychain = Keychain::open().unwrap();
    let secret_key = SecretKey::WebhookSecret(consumer.id.clone());
    let header_key = SecretKey::WebhookHeader(consumer.id.clone(), "x-api-key".into());
    assert!(keychain.get(&header_key).unwrap().is_some());
    consumers.remove("orders-hook").unwrap();
    assert!(keychain.get(&secret_key).unwrap().is_none());
    assert!(keychain.get(&header_key).unwrap().is_none());
    assert!(consumers.list().unwrap().is_empty());
    let gone = consumers.reveal_signing_secret("orders-hook").unwrap_err();
    assert_eq!(gone.kind(), tidepool::ErrorKind::NotFound, "{gone}");

    // A message past its retries is parked with its last error, shown in the list; Retry delivers
    // it once the receiver is back, Skip drops the next one.
    let parked_requests: Requests = Arc::default();
    let failing = Arc::new(AtomicBool::new(true));
    let parked_url = receiver(parked_requests.clone(), failing.clone()).await;
    let mut parking = spec("parked-hook", &parked_url, vec![]);
    if let Destination::Webhook(w) = &mut parking.destination {
        w.max_retries = Some(0);
    }
    consumers.add(parking, vec![], None).unwrap();
    let parked_view = || consumers.get("parked-hook").unwrap();
    db.sql("INSERT INTO orders VALUES (5, 'new', 50);");
    until("the first message parked", || {
        parked_view().consumer.failed == 1
    })
    .await;
    let view = parked_view();
    assert_eq!(view.parked.len(), 1);
    assert_eq!(view.parked[0].message["record"]["id"], 5);
    let why = view.parked[0].last_error.clone().unwrap_or_default();
    assert!(why.contains("500"), "{why}");
    failing.store(false, Ordering::SeqCst);
    assert_eq!(consumers.retry("parked-hook", None).unwrap(), 1);
    until("the retried message delivered", || {
        parked_requests.lock().unwrap().len() == 1
    })
    .await;
    until("nothing pending", || {
        let c = parked_view().consumer;
        (c.pending, c.failed) == (0, 0)
    })
    .await;
    failing.store(true, Ordering::SeqCst);
    db.sql("INSERT INTO orders VALUES (6, 'new', 60);");
    until("the second message parked", || {
        parked_view().consumer.failed == 1
    })
    .await;
    assert_eq!(consumers.skip("parked-hook", None).unwrap(), 1);
    let view = parked_view();
    assert_eq!((view.consumer.pending, view.consumer.failed), (0, 0));
    assert!(view.parked.is_empty());
    // With the receiver answering again, a skipped message would arrive within a round or two.
    failing.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert_eq!(
        parked_requests.lock().unwrap().len(),
        1,
        "the skipped one never arrives"
    );
    consumers.remove("parked-hook").unwrap();

    runs.stop(&id, &profiles).unwrap();
    runs.delete_profile(&profiles, &id).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

fn spec(name: &str, url: &str, secret_headers: Vec<&str>) -> ConsumerSpec {
    ConsumerSpec {
        name: name.into(),
        collections: vec!["public/orders".into()],
        actions: vec![],
        filter: None,
        mode: Mode::Changes,
        start: Start::Now,
        group_by: vec![],
        destination: Destination::Webhook(Webhook {
            url: url.into(),
            headers: Default::default(),
            secret_headers: secret_headers.into_iter().map(String::from).collect(),
            batch_size: None,
            timeout_ms: 5_000,
            max_retries: None,
            max_in_flight: 4,
        }),
    }
}
