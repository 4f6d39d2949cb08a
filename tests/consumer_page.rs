//! What a consumer's page relies on, against real servers: a PostgreSQL capture, webhook receivers
//! on loopback, the real keychain. Pause and resume, the recorded attempts (a failing receiver then
//! a working one), throughput samples, a signed test message, and an edit taking effect.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tidepool::app::consumers::ConsumerStore;
use tidepool::deliver::consumer::{Destination, Mode, Pull, Start};
use tidepool::secrets::{Keychain, SecretKey};

use crate::deliver::{receiver, wait_for, webhook, Received, Shop};

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempts_show_the_failure_then_2xx_and_a_paused_consumer_keeps_its_messages_queued() {
    let shop = Shop::new("cp_pause", 0);
    shop.backfill().await;
    let received = Arc::new(Received::default());
    received.failing.store(true, Ordering::SeqCst);
    let url = receiver(received.clone()).await;
    shop.add(shop.spec(
        "paged",
        Mode::Changes,
        Start::Now,
        webhook(&url, Some(10), None),
    ));
    let consumers = ConsumerStore::at(&shop.store);
    let delivery = shop.delivery();
    shop.db.sql("INSERT INTO orders VALUES (1, 'new', 1);");
    shop.catch_up().await;

    // The receiver answers 500: the attempt is recorded with its status and error.
    wait_for("a failed attempt", Duration::from_secs(15), || {
        let a = consumers.activity("paged").unwrap().attempts;
        !a.is_empty()
    })
    .await;
    let failed = consumers.activity("paged").unwrap().attempts[0].clone();
    assert_eq!(failed.status, Some(500), "{failed:?}");
    assert_eq!(failed.messages, 1);
    assert!(
        failed.error.as_deref().unwrap().contains("HTTP 500"),
        "{failed:?}"
    );
    assert!(!failed.test);
    assert!(consumers.activity("paged").unwrap().samples.is_empty());

    // The receiver works again: the retry is delivered and recorded as 2xx, newest first, with
    // the failure after it; the second's sample counts it with its commit → delivered latency.
    received.failing.store(false, Ordering::SeqCst);
    wait_for("the retried delivery", Duration::from_secs(15), || {
        received.accepted.lock().unwrap().len() == 1
    })
    .await;
    wait_for("the 2xx attempt recorded", Duration::from_secs(5), || {
        consumers.activity("paged").unwrap().attempts[0].status == Some(204)
    })
    .await;
    let activity = consumers.activity("paged").unwrap();
    let statuses: Vec<Option<u16>> = activity.attempts.iter().map(|a| a.status).collect();
    assert_eq!(statuses.first(), Some(&Some(204)), "{statuses:?}");
    assert_eq!(statuses.last(), Some(&Some(500)), "{statuses:?}");
    assert_eq!(activity.attempts[0].error, None);
    let delivered: u64 = activity.samples.iter().map(|s| s.delivered).sum();
    assert_eq!(delivered, 1, "{:?}", activity.samples);
    // Committed before the first (failed) attempt, delivered after it and its retry delay.
    assert!(
        activity.samples[0].latency_max_ms >= 500,
        "{:?}",
        activity.samples
    );
    assert!(activity.now_ms / 1000 >= activity.samples[0].second);

    // Paused: a new change is stored (the slot confirmed past it) and queued, never sent.
    let paused = consumers.set_paused("paged", true).unwrap();
    assert!(paused.paused);
    shop.db.sql("INSERT INTO orders VALUES (2, 'new', 2);");
    let inserted = shop.db.current_lsn();
    shop.catch_up().await;
    assert!(confirmed_flush(&shop) >= inserted);
    wait_for("the change queued", Duration::from_secs(10), || {
        consumers.get("paged").unwrap().consumer.pending == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(received.accepted.lock().unwrap().len(), 1);
    assert_eq!(consumers.get("paged").unwrap().consumer.pending, 1);
    assert!(consumers.list().unwrap()[0].consumer.paused);

    // Resumed: delivered within a few seconds.
    assert!(!consumers.set_paused("paged", false).unwrap().paused);
    wait_for(
        "the queued change delivered",
        Duration::from_secs(10),
        || received.accepted.lock().unwrap().len() == 2,
    )
    .await;
    assert_eq!(
        received.accepted.lock().unwrap()[1]["record"]["id"],
        serde_json::json!(2)
    );
    wait_for("an empty queue", Duration::from_secs(5), || {
        consumers.get("paged").unwrap().consumer.pending == 0
    })
    .await;
    delivery.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_test_message_is_signed_like_a_delivery_and_an_edit_takes_effect() {
    let shop = Shop::new("cp_edit", 0);
    shop.backfill().await;
    let first = Arc::new(Received::default());
    let first_url = receiver(first.clone()).await;
    let consumer = shop.add(shop.spec(
        "edited",
        Mode::Changes,
        Start::Now,
        webhook(&first_url, Some(10), None),
    ));
    let consumers = ConsumerStore::at(&shop.store);
    let delivery = shop.delivery();

    // The test message: signed with the consumer's secret, marked as a test, nothing queued.
    let result = consumers.send_test("edited").await.unwrap();
    assert_eq!(result.attempt.status, Some(204), "{result:?}");
    assert!(result.attempt.test && result.attempt.error.is_none());
    assert!(result.webhook_id.starts_with("msg_test_"));
    let (headers, body) = first.signed.lock().unwrap()[0].clone();
    let secret = Keychain::open()
        .unwrap()
        .get(&SecretKey::WebhookSecret(consumer.id.clone()))
        .unwrap()
        .unwrap();
    let verifier = standardwebhooks::Webhook::new(secret.expose()).unwrap();
    verifier
        .verify(&body, &headers)
        .expect("the test message's signature verifies");
    assert_eq!(headers["x-team"], "shop");
    let sent: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(sent["data"][0]["test"], serde_json::json!(true));
    assert_eq!(sent["data"][0]["action"], serde_json::json!("test"));
    assert_eq!(
        sent["data"][0]["metadata"]["consumer"]["name"],
        serde_json::json!("edited")
    );
    let after = consumers.get("edited").unwrap().consumer;
    assert_eq!((after.pending, after.failed), (0, 0));
    let attempts = consumers.activity("edited").unwrap().attempts;
    assert_eq!(attempts.len(), 1);
    assert!(attempts[0].test && attempts[0].status == Some(204));
    // A receiver that is down: the result says why, with no status.
    let down = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/hook", l.local_addr().unwrap())
    };
    let mut spec = consumers.get("edited").unwrap().consumer.spec;
    let Destination::Webhook(w) = &mut spec.destination else {
        unreachable!()
    };
    w.url = down.clone();
    consumers.edit("edited", spec, vec![]).unwrap();
    let failed = consumers.send_test("edited").await.unwrap();
    assert_eq!(failed.attempt.status, None);
    assert!(
        failed.attempt.error.as_deref().unwrap().contains(&down),
        "{failed:?}"
    );

    // An edit: another URL, header, batch size and a filter; delivery uses them.
    let second = Arc::new(Received::default());
    let second_url = receiver(second.clone()).await;
    let mut spec = consumers.get("edited").unwrap().consumer.spec;
    spec.filter = Some(r#"record.status == "paid""#.into());
    let Destination::Webhook(w) = &mut spec.destination else {
        unreachable!()
    };
    w.url = second_url.clone();
    w.headers.insert("x-team".into(), "ops".into());
    w.batch_size = None;
    let edited = consumers.edit("edited", spec.clone(), vec![]).unwrap();
    assert_eq!(edited.spec, spec);
    // What cannot change is refused, naming the field.
    let mut renamed = spec.clone();
    renamed.collections = vec!["public/other".into()];
    let refused = consumers.edit("edited", renamed, vec![]).unwrap_err();
    assert_eq!(refused.kind(), tidepool::ErrorKind::InvalidInput);
    assert!(refused.message().starts_with("collections:"), "{refused}");
    let bad_filter = {
        let mut s = spec.clone();
        s.filter = Some("record.status ==".into());
        consumers.edit("edited", s, vec![]).unwrap_err()
    };
    assert!(bad_filter.message().contains("filter"), "{bad_filter}");
    assert_eq!(consumers.get("edited").unwrap().consumer.spec, spec);

    // The running worker was started with the old definition: it is restarted within a second.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    shop.db
        .sql("INSERT INTO orders VALUES (3, 'new', 3), (4, 'paid', 4);");
    shop.catch_up().await;
    wait_for(
        "the paid order at the new URL",
        Duration::from_secs(15),
        || !second.accepted.lock().unwrap().is_empty(),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let accepted = second.accepted.lock().unwrap().clone();
    assert_eq!(accepted.len(), 1, "{accepted:?}");
    assert_eq!(accepted[0]["record"]["id"], serde_json::json!(4));
    let (headers, body) = second.signed.lock().unwrap()[0].clone();
    assert_eq!(headers["x-team"], "ops");
    let bare: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert!(bare.get("data").is_none(), "one bare message per request");
    assert_eq!(first.accepted.lock().unwrap().len(), 1, "only the test");

    // Only a webhook can be sent a test message.
    shop.add(shop.spec(
        "pulled",
        Mode::Changes,
        Start::Now,
        Destination::Pull(Pull::default()),
    ));
    let refused = consumers.send_test("pulled").await.unwrap_err();
    assert_eq!(refused.kind(), tidepool::ErrorKind::InvalidInput);
    delivery.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn try_a_webhook_delivers_to_the_apps_own_receiver_which_verifies_the_signatures() {
    let shop = Shop::new("cp_trial", 1);
    shop.backfill().await;
    let consumers = ConsumerStore::at(&shop.store);
    let receiver = tidepool::deliver::trial::TrialReceiver::start()
        .await
        .unwrap();
    assert!(receiver.url().starts_with("http://127.0.0.1:"));
    let (consumer, secret) = consumers.try_webhook(receiver.url()).unwrap();
    assert_eq!(consumer.spec.name, tidepool::app::consumers::TRY_WEBHOOK);
    assert_eq!(consumer.spec.collections, ["public/orders"]);
    receiver.add_secret(secret);
    let delivery = shop.delivery();
    shop.db.sql(
        "INSERT INTO orders VALUES (2, 'new', 2); UPDATE orders SET status = 'paid' WHERE id = 1;",
    );
    shop.catch_up().await;
    wait_for(
        "the trial receiver's requests",
        Duration::from_secs(15),
        || {
            receiver
                .received()
                .iter()
                .map(|r| r.messages)
                .sum::<usize>()
                == 2
        },
    )
    .await;
    let got = receiver.received();
    assert!(got.iter().all(|r| r.verified), "{got:?}");
    let mut summary: Vec<String> = got.iter().flat_map(|r| r.summary.clone()).collect();
    summary.sort();
    assert_eq!(summary, ["insert public.orders", "update public.orders"]);
    assert!(got[0].body.contains("\"record\""), "{}", got[0].body);
    // Tried again after the app restarted (a new receiver, another port): the same consumer,
    // pointed at it.
    let again = tidepool::deliver::trial::TrialReceiver::start()
        .await
        .unwrap();
    let (moved, _) = consumers.try_webhook(again.url()).unwrap();
    assert_eq!(moved.id, consumer.id);
    let Destination::Webhook(w) = &moved.spec.destination else {
        unreachable!()
    };
    assert_eq!(w.url, again.url());
    // A request not signed with the consumer's secret is shown as not verified.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
        .post(again.url())
        .header("webhook-id", "msg_forged")
        .header("webhook-timestamp", "1")
        .header("webhook-signature", "v1,AAAA")
        .body(r#"{"action":"insert"}"#)
        .send()
        .await
        .unwrap();
    let forged = again.received();
    assert_eq!(forged.len(), 1);
    assert!(!forged[0].verified);
    assert_eq!(forged[0].webhook_id, "msg_forged");
    delivery.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_pauses_resumes_tests_and_edits_a_consumer() {
    use crate::deliver::{cli_ok, tidepool_cli};
    use std::io::Write;
    let shop = Shop::new("cp_cli", 0);
    shop.backfill().await;
    let store = shop.store.to_str().unwrap().to_string();
    let received = Arc::new(Received::default());
    let url = receiver(received.clone()).await;
    let consumer = shop.add(shop.spec(
        "cli-hook",
        Mode::Changes,
        Start::Now,
        webhook(&url, Some(10), None),
    ));
    let show = || -> serde_json::Value {
        let out = cli_ok(
            tidepool_cli(&shop).args(["consumer", "show", "--store", &store, "cli-hook", "--json"]),
        );
        serde_json::from_str::<serde_json::Value>(&out).unwrap()["consumer"].clone()
    };
    assert_eq!(show()["paused"], serde_json::json!(false));
    cli_ok(tidepool_cli(&shop).args(["consumer", "pause", "--store", &store, "cli-hook"]));
    assert_eq!(show()["paused"], serde_json::json!(true));
    cli_ok(tidepool_cli(&shop).args(["consumer", "resume", "--store", &store, "cli-hook"]));
    assert_eq!(show()["paused"], serde_json::json!(false));

    // test: one signed request, its answer printed.
    let out = cli_ok(
        tidepool_cli(&shop).args(["consumer", "test", "--store", &store, "cli-hook", "--json"]),
    );
    let result: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(result["status"], serde_json::json!(204), "{result}");
    assert_eq!(result["test"], serde_json::json!(true));
    assert_eq!(received.signed.lock().unwrap().len(), 1);

    // edit: the URL, a header, a filter, batching off, retries, and a secret header read from
    // standard input into the keychain.
    let down = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/hook", l.local_addr().unwrap())
    };
    let mut edit = tidepool_cli(&shop)
        .args([
            "consumer",
            "edit",
            "--store",
            &store,
            "cli-hook",
            "--webhook",
            &down,
            "--header",
            "x-team=ops",
            "--filter",
            r#"record.status == "paid""#,
            "--no-batch",
            "--max-retries",
            "2",
            "--secret-header",
            "x-api-key",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    edit.stdin.take().unwrap().write_all(b"k-9\n").unwrap();
    let output = edit.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let edited = show();
    assert_eq!(edited["destination"]["url"], serde_json::json!(down));
    assert_eq!(
        edited["destination"]["headers"]["x-team"],
        serde_json::json!("ops")
    );
    assert_eq!(
        edited["destination"]["secretHeaders"],
        serde_json::json!(["x-api-key"])
    );
    assert_eq!(edited["destination"]["batchSize"], serde_json::Value::Null);
    assert_eq!(edited["destination"]["maxRetries"], serde_json::json!(2));
    assert_eq!(
        edited["filter"],
        serde_json::json!(r#"record.status == "paid""#)
    );
    let value = Keychain::open()
        .unwrap()
        .get(&SecretKey::WebhookHeader(
            consumer.id.clone(),
            "x-api-key".into(),
        ))
        .unwrap()
        .expect("the secret header in the keychain");
    assert_eq!(value.expose(), "k-9");
    assert!(!String::from_utf8_lossy(&output.stderr).contains("k-9"));

    // A test to a receiver that is down fails, saying why; a pull-only flag is refused by name.
    let failed = tidepool_cli(&shop)
        .args(["consumer", "test", "--store", &store, "cli-hook"])
        .output()
        .unwrap();
    assert!(!failed.status.success());
    let said = String::from_utf8_lossy(&failed.stderr);
    assert!(
        said.contains("cannot connect") && said.contains(&down),
        "{said}"
    );
    let refused = tidepool_cli(&shop)
        .args([
            "consumer",
            "edit",
            "--store",
            &store,
            "cli-hook",
            "--visibility-timeout-ms",
            "5",
        ])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("visibility-timeout-ms"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    // Removing the secret header takes its value out of the keychain.
    cli_ok(tidepool_cli(&shop).args([
        "consumer",
        "edit",
        "--store",
        &store,
        "cli-hook",
        "--remove-header",
        "x-api-key",
    ]));
    assert!(Keychain::open()
        .unwrap()
        .get(&SecretKey::WebhookHeader(consumer.id, "x-api-key".into()))
        .unwrap()
        .is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulled_messages_count_in_the_delivered_samples_once_acknowledged_and_a_paused_pull_consumer_hands_out_nothing(
) {
    let shop = Shop::new("cp_pull", 0);
    shop.backfill().await;
    shop.add(shop.spec(
        "pulled",
        Mode::Changes,
        Start::Now,
        Destination::Pull(Pull::default()),
    ));
    let consumers = ConsumerStore::at(&shop.store);
    let (base, api) = shop.pull_api("tp_page").await;
    shop.db
        .sql("INSERT INTO orders VALUES (1, 'new', 1), (2, 'new', 2);");
    shop.catch_up().await;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();
    let receive = |query: &'static str| {
        let http = http.clone();
        let url = format!("{base}/api/http_pull_consumers/pulled/receive?{query}");
        async move {
            let answer: serde_json::Value = http
                .get(url)
                .bearer_auth("tp_page")
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            answer["data"].as_array().unwrap().clone()
        }
    };
    // Paused: a receive waits out its time and gets nothing.
    consumers.set_paused("pulled", true).unwrap();
    assert!(receive("batch_size=10&wait_for=1000").await.is_empty());
    consumers.set_paused("pulled", false).unwrap();
    let got = receive("batch_size=10&wait_for=5000").await;
    assert_eq!(got.len(), 2);
    assert!(consumers.activity("pulled").unwrap().samples.is_empty());
    let ack_ids: Vec<&str> = got.iter().map(|m| m["ack_id"].as_str().unwrap()).collect();
    let acked = http
        .post(format!("{base}/api/http_pull_consumers/pulled/ack"))
        .bearer_auth("tp_page")
        .json(&serde_json::json!({ "ack_ids": ack_ids }))
        .send()
        .await
        .unwrap();
    assert_eq!(acked.status().as_u16(), 200);
    // Acknowledged again: counted once.
    http.post(format!("{base}/api/http_pull_consumers/pulled/ack"))
        .bearer_auth("tp_page")
        .json(&serde_json::json!({ "ack_ids": ack_ids }))
        .send()
        .await
        .unwrap();
    let samples = consumers.activity("pulled").unwrap().samples;
    assert_eq!(
        samples.iter().map(|s| s.delivered).sum::<u64>(),
        2,
        "{samples:?}"
    );
    assert!(samples.iter().all(|s| s.latency_max_ms > 0), "{samples:?}");
    api.abort();
}
