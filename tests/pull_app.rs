//! The desktop app's one pull API server ([`tidepool::app::run::Runs`]): two profiles capture at once,
//! each store chosen by its own token on the same port, with Sequin's paths unchanged; a long poll
//! answers as soon as a row is inserted; a port already taken leaves the captures running and says
//! why. Real captures of harness databases, real HTTP (reqwest), the real keychain.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value as Json;
use tidepool::app::consumers::ConsumerStore;
use tidepool::app::profile::Profiles;
use tidepool::app::run::{RunState, Runs};
use tidepool::binding::Binding;
use tidepool::deliver::consumer::{ConsumerSpec, Destination, Mode, Pull, Start};

use crate::harness::{self, until, TestDb};

/// A profile capturing `orders` of its own database.
struct Shop {
    db: TestDb,
    id: String,
    seen: harness::Statuses,
}

impl Shop {
    async fn new(profiles: &Profiles, prefix: &str, name: &str) -> Shop {
        let db = TestDb::new(harness::plain(), prefix);
        db.sql(
            "CREATE TABLE orders (id int PRIMARY KEY, status text NOT NULL);
             INSERT INTO orders VALUES (100, 'old');",
        );
        let id = profiles
            .save(
                None,
                db.profile_draft(name),
                Some(db.cluster.superuser_password().clone()),
            )
            .unwrap()
            .profile
            .id;
        profiles
            .publish(&id, vec![Binding::new("public", "orders")], vec![])
            .await
            .unwrap();
        Shop {
            db,
            id,
            seen: Arc::default(),
        }
    }

    /// Starts its capture in `runs` and waits until it streams after its backfill.
    async fn start(&mut self, runs: &Runs, profiles: &Profiles) {
        self.seen = harness::start_backfilled(runs, profiles, &self.id, &["public/orders"]).await;
    }
}

fn pull_spec(name: &str) -> ConsumerSpec {
    ConsumerSpec {
        name: name.into(),
        collections: vec!["public/orders".into()],
        actions: vec![],
        filter: None,
        mode: Mode::Changes,
        start: Start::Now,
        group_by: vec![],
        destination: Destination::Pull(Pull::default()),
    }
}

/// "Reveal token" as the window gets it: the token, the base URL, whether it answers, why not.
fn access(runs: &Runs, profiles: &Profiles, id: &str) -> Json {
    serde_json::to_value(runs.pull_access(profiles, id).unwrap()).unwrap()
}

async fn receive(base: &str, token: Option<&str>, query: &str) -> (u16, Json) {
    let request = reqwest::Client::new().get(format!(
        "{base}/api/http_pull_consumers/orders-pull/receive?{query}"
    ));
    let request = match token {
        Some(t) => request.bearer_auth(t),
        None => request,
    };
    let r = request.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Json::Null))
}

async fn ack(base: &str, token: &str, batch: &Json) -> (u16, Json) {
    let ids: Vec<&str> = batch["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["ack_id"].as_str().unwrap())
        .collect();
    let r = reqwest::Client::new()
        .post(format!("{base}/api/http_pull_consumers/orders-pull/ack"))
        .bearer_auth(token)
        .json(&serde_json::json!({ "ack_ids": ids }))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Json::Null))
}

/// The ids of the rows in a receive's answer.
fn ids(batch: &Json) -> Vec<i64> {
    batch["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["data"]["record"]["id"].as_i64().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_running_captures_are_pulled_from_one_server_each_with_its_own_token() {
    let dir = harness::temp_dir("pull_app_profiles");
    let profiles = Profiles::open(&dir);
    let mut a = Shop::new(&profiles, "pull_app_a", "ShopA").await;
    let mut b = Shop::new(&profiles, "pull_app_b", "ShopB").await;
    let runs = Runs::with_pull_listen("127.0.0.1:0");
    assert!(!runs.pull_serving().serving, "nothing served before a run");
    a.start(&runs, &profiles).await;
    b.start(&runs, &profiles).await;
    let serving = runs.pull_serving();
    assert!(serving.serving, "{serving:?}");
    let base = format!("http://{}", serving.address);

    // The same consumer name in both stores: the token tells them apart.
    for shop in [&a, &b] {
        ConsumerStore::of_profile(&profiles, &shop.id)
            .unwrap()
            .add(pull_spec("orders-pull"), vec![], None)
            .unwrap();
    }
    let (token_a, token_b) = {
        let (x, y) = (
            access(&runs, &profiles, &a.id),
            access(&runs, &profiles, &b.id),
        );
        for one in [&x, &y] {
            assert_eq!(one["baseUrl"], base.as_str(), "{one}");
            assert_eq!(one["serving"], true, "{one}");
            assert_eq!(one["problem"], Json::Null, "{one}");
        }
        (
            x["token"].as_str().unwrap().to_string(),
            y["token"].as_str().unwrap().to_string(),
        )
    };
    assert_ne!(token_a, token_b);
    // Revealing again reads the same token from the keychain.
    assert_eq!(
        ConsumerStore::of_profile(&profiles, &a.id)
            .unwrap()
            .pull_token()
            .unwrap()
            .expose(),
        token_a
    );

    a.db.sql("INSERT INTO orders VALUES (1, 'a');");
    b.db.sql("INSERT INTO orders VALUES (2, 'b');");
    for (token, row, name) in [(&token_a, 1, "ShopA"), (&token_b, 2, "ShopB")] {
        let (status, batch) = receive(&base, Some(token), "batch_size=10&wait_for=20000").await;
        assert_eq!(status, 200, "{batch}");
        assert_eq!(ids(&batch), vec![row], "{batch}");
        assert_eq!(batch["data"][0]["data"]["action"], "insert");
        assert_eq!(
            batch["data"][0]["data"]["metadata"]["database"]["name"],
            name
        );
        let (status, answer) = ack(&base, token, &batch).await;
        assert_eq!(
            (status, &answer),
            (200, &serde_json::json!({"success": true}))
        );
        let (_, after) = receive(&base, Some(token), "batch_size=10").await;
        assert_eq!(ids(&after), Vec::<i64>::new(), "acked: {after}");
    }

    // A wrong or missing token is refused.
    for token in [Some("tp_wrong"), Some(""), None] {
        let (status, answer) = receive(&base, token, "").await;
        assert_eq!(status, 401, "{token:?}: {answer}");
        assert!(answer["summary"].is_string());
    }
    // A token is not a key to the other store's consumers by another route: B's token sees only
    // B's queue (A's new row is not in it).
    a.db.sql("INSERT INTO orders VALUES (3, 'a');");
    let (_, only_b) = receive(&base, Some(&token_b), "batch_size=10&wait_for=1000").await;
    assert_eq!(ids(&only_b), Vec::<i64>::new(), "{only_b}");
    let (_, three) = receive(&base, Some(&token_a), "batch_size=10&wait_for=20000").await;
    assert_eq!(ids(&three), vec![3]);
    ack(&base, &token_a, &three).await;

    // A long poll answers as soon as a row is committed, long before its wait ends.
    let poll = {
        let (base, token) = (base.clone(), token_b.clone());
        tokio::spawn(async move {
            let answer = receive(&base, Some(&token), "batch_size=10&wait_for=60000").await;
            (answer, Instant::now())
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!poll.is_finished(), "the long poll waits for a change");
    b.db.sql("INSERT INTO orders VALUES (4, 'b');");
    let inserted = Instant::now();
    let ((status, batch), answered) = tokio::time::timeout(Duration::from_secs(10), poll)
        .await
        .expect("the long poll answers within 10 s of the insert")
        .unwrap();
    assert_eq!((status, ids(&batch)), (200, vec![4]), "{batch}");
    assert!(answered.duration_since(inserted) < Duration::from_secs(5));

    // A stopped capture's store is no longer served; the other one still is.
    runs.stop(&a.id, &profiles).unwrap();
    let (status, _) = receive(&base, Some(&token_a), "").await;
    assert_eq!(status, 401);
    let stopped = access(&runs, &profiles, &a.id);
    assert_eq!(stopped["serving"], false);
    assert!(
        stopped["problem"]
            .as_str()
            .unwrap()
            .contains("capture runs"),
        "{stopped}"
    );
    let (status, _) = receive(&base, Some(&token_b), "").await;
    assert_eq!(status, 200);
    // With the last capture stopped the port is released.
    runs.stop_all().await;
    assert!(!runs.pull_serving().serving);
    until("the port released", || {
        std::net::TcpListener::bind(serving.address.as_str()).is_ok()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_port_leaves_the_capture_running_and_says_why() {
    let dir = harness::temp_dir("pull_app_taken_profiles");
    let profiles = Profiles::open(&dir);
    let mut shop = Shop::new(&profiles, "pull_app_taken", "Taken").await;
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = holder.local_addr().unwrap().to_string();
    let runs = Runs::with_pull_listen(taken.clone());
    shop.start(&runs, &profiles).await;
    ConsumerStore::of_profile(&profiles, &shop.id)
        .unwrap()
        .add(pull_spec("orders-pull"), vec![], None)
        .unwrap();
    let serving = runs.pull_serving();
    assert!(!serving.serving);
    let error = serving.error.expect("the bind error");
    assert!(error.message().contains(&taken), "{error}");
    assert!(error.message().contains("--listen"), "{error}");
    let told = access(&runs, &profiles, &shop.id);
    assert_eq!(told["serving"], false);
    assert!(told["token"].as_str().unwrap().starts_with("tp_"));
    assert!(
        told["problem"]
            .as_str()
            .unwrap()
            .contains("cannot listen on"),
        "{told}"
    );
    // The capture goes on storing changes.
    shop.db.sql("INSERT INTO orders VALUES (1, 'new');");
    let seen = shop.seen.clone();
    until("the insert stored", || {
        seen.lock()
            .unwrap()
            .iter()
            .any(|s| s.state == RunState::Streaming && s.changes >= 1)
    })
    .await;
    runs.stop_all().await;
    drop(holder);
}
