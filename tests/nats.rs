//! Delivery to NATS JetStream against a real `nats-server -js` on loopback (Debian's nats-server,
//! started here): every change in the stream exactly once, in commit order per subject, across a
//! replay, a `kill -9` and a server that is down; credentials refused clearly and kept only in the
//! keychain.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value as Json;
use tidepool::app::consumers::ConsumerStore;
use tidepool::deliver::consumer::{Destination, Mode, Nats, NatsAuth, Start};
use tidepool::deliver::ledger::Ledger;
use tidepool::secrets::{Keychain, Secret, SecretKey};
use tidepool::ErrorKind;

use crate::deliver::{tidepool_cli, wait_for, Shop};
use crate::harness;

/// A JetStream server on a loopback port, stopped when dropped; `restart` keeps its port and data.
struct NatsServer {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    token: Option<String>,
    /// With TLS: the authority's PEM file (the server's certificate and key are beside it).
    ca_file: Option<PathBuf>,
}

fn nats_server_binary() -> PathBuf {
    for dir in std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .chain(["/usr/sbin", "/usr/bin"])
    {
        let candidate = PathBuf::from(dir).join("nats-server");
        if candidate.exists() {
            return candidate;
        }
    }
    panic!("nats-server is not installed: script/bootstrap --test installs it (apt-get install nats-server)");
}

impl NatsServer {
    fn start(prefix: &str, token: Option<&str>) -> NatsServer {
        NatsServer::start_with(prefix, token, false)
    }

    /// A server that speaks only TLS, with a certificate for 127.0.0.1 from a test authority.
    fn start_tls(prefix: &str) -> NatsServer {
        NatsServer::start_with(prefix, None, true)
    }

    fn start_with(prefix: &str, token: Option<&str>, tls: bool) -> NatsServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = harness::temp_dir(prefix);
        let ca_file = tls.then(|| {
            let certs =
                tidepool::app::cluster::TestCertificates::generate(&["127.0.0.1".into()]).unwrap();
            std::fs::write(dir.join("server.pem"), &certs.server_cert).unwrap();
            std::fs::write(dir.join("server.key"), &certs.server_key).unwrap();
            std::fs::write(dir.join("ca.pem"), &certs.ca_cert).unwrap();
            dir.join("ca.pem")
        });
        let mut server = NatsServer {
            child: None,
            port,
            dir,
            token: token.map(str::to_string),
            ca_file,
        };
        server.launch();
        server
    }

    fn launch(&mut self) {
        let mut command = Command::new(nats_server_binary());
        command
            .args(["-js", "-a", "127.0.0.1", "-p", &self.port.to_string()])
            .arg("-sd")
            .arg(self.dir.join("js"))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(token) = &self.token {
            // A test server's token; real ones are never arguments (they would show in `ps`).
            command.args(["--auth", token]);
        }
        if self.ca_file.is_some() {
            command
                .arg("--tls")
                .arg("--tlscert")
                .arg(self.dir.join("server.pem"))
                .arg("--tlskey")
                .arg(self.dir.join("server.key"));
        }
        self.child = Some(command.spawn().expect("starting nats-server"));
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "nats-server did not listen on {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The messages of `stream` once it holds at least `count`, read every `poll`, or what it holds
    /// after `tries` reads (the caller's assertions say what was missing).
    async fn messages_once(
        &self,
        stream: &str,
        count: usize,
        tries: usize,
        poll: Duration,
    ) -> Vec<(String, String, Json)> {
        let mut messages = Vec::new();
        for _ in 0..tries {
            messages = self.messages(stream).await;
            if messages.len() >= count {
                break;
            }
            tokio::time::sleep(poll).await;
        }
        messages
    }

    /// How many messages `stream` holds now, in one request (reading them one by one takes long
    /// enough for a publisher to finish meanwhile).
    async fn count(&self, stream: &str) -> u64 {
        let Some(mut stream) = self.stream(stream).await else {
            return 0;
        };
        stream.info().await.unwrap().state.messages
    }

    /// `stream`, through a client of its own, or `None` while it does not exist.
    async fn stream(&self, stream: &str) -> Option<async_nats::jetstream::stream::Stream> {
        let mut options = async_nats::ConnectOptions::new();
        if let Some(token) = &self.token {
            options = options.token(token.clone());
        }
        let client = options.connect(self.url()).await.expect("a test client");
        async_nats::jetstream::new(client)
            .get_stream(stream)
            .await
            .ok()
    }

    /// Every message of `stream`, in stream order: (subject, Nats-Msg-Id, body).
    async fn messages(&self, stream: &str) -> Vec<(String, String, Json)> {
        let Some(mut stream) = self.stream(stream).await else {
            return Vec::new();
        };
        let last = stream.info().await.unwrap().state.last_sequence;
        let mut out = Vec::new();
        for seq in 1..=last {
            let Ok(m) = stream.get_raw_message(seq).await else {
                continue;
            };
            let id = m
                .headers
                .get(async_nats::header::NATS_MESSAGE_ID)
                .map(|v| v.as_str().to_string())
                .unwrap_or_default();
            out.push((
                m.subject.to_string(),
                id,
                serde_json::from_slice(&m.payload).unwrap(),
            ));
        }
        out
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn nats(url: &str, stream: &str) -> Nats {
    Nats {
        url: url.into(),
        stream: Some(stream.into()),
        batch_size: 20,
        ..Nats::default()
    }
}

/// Checks the stream against the changes expected: each exactly once (by change and by
/// `Nats-Msg-Id`), the id equal to the message's `idempotency_key`, on its table's subject, and
/// each subject's messages in commit order. Returns the (action, id) pairs.
fn check_stream(messages: &[(String, String, Json)], db: &str) -> HashSet<(String, i64)> {
    let mut changes = HashSet::new();
    let mut ids = HashSet::new();
    let mut last: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    for (subject, id, body) in messages {
        let action = body["action"].as_str().unwrap();
        assert_eq!(subject, &format!("tidepool.public.orders.{action}"));
        assert_eq!(id, body["metadata"]["idempotency_key"].as_str().unwrap());
        assert_eq!(body["metadata"]["database_name"], Json::from(db));
        assert!(ids.insert(id.clone()), "message id {id} stored twice");
        let change = (action.to_string(), body["record"]["id"].as_i64().unwrap());
        assert!(changes.insert(change.clone()), "{change:?} stored twice");
        let at = (
            body["metadata"]["commit_lsn"].as_u64().unwrap(),
            body["metadata"]["commit_idx"].as_u64().unwrap(),
        );
        if let Some(before) = last.insert(subject.as_str(), at) {
            assert!(before < at, "{subject}: {at:?} after {before:?}");
        }
    }
    changes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_change_reaches_the_stream_once_in_commit_order_per_subject_even_when_published_again(
) {
    let server = NatsServer::start("nats_once", None);
    let shop = Shop::new("nats_once", 0);
    shop.backfill().await;
    let consumer = shop.add(shop.spec(
        "to-nats",
        Mode::Changes,
        Start::Now,
        Destination::Nats(nats(&server.url(), "SHOP")),
    ));
    // The ledger as it is before anything was published: restored below, it is Tidepool killed
    // after publishing everything and before recording a single acknowledgement.
    let ledger_file = tidepool::deliver::ledger::ledger_path(&shop.store);
    let wal = ledger_file.with_extension("db-wal");
    let before = (
        std::fs::read(&ledger_file).unwrap(),
        std::fs::read(&wal).ok(),
    );
    let capture = shop.streaming();
    let delivery = shop.delivery();
    for id in 1..=60 {
        shop.db
            .sql(&format!("INSERT INTO orders VALUES ({id}, 'new', {id});"));
    }
    shop.db.sql(
        "BEGIN; UPDATE orders SET status = 'paid' WHERE id <= 10; DELETE FROM orders WHERE id = 60; COMMIT;",
    );
    let expected = 60 + 10 + 1;
    let messages = server
        .messages_once("SHOP", expected, 600, Duration::from_millis(100))
        .await;
    let changes = check_stream(&messages, &shop.db.name);
    assert_eq!(changes.len(), expected, "{changes:?}");
    assert!(changes.contains(&("delete".to_string(), 60)));
    wait_for("the queue emptied", Duration::from_secs(30), || {
        Ledger::open(&shop.store)
            .unwrap()
            .get(&consumer.id)
            .unwrap()
            .pending
            == 0
    })
    .await;

    // Published again from the start: JetStream drops every repeat by its Nats-Msg-Id.
    let done = Ledger::open(&shop.store)
        .unwrap()
        .get(&consumer.id)
        .unwrap()
        .position;
    delivery.abort();
    let _ = delivery.await;
    // Its workers stop at their next step; SQLite removes the WAL when the last connection closes.
    wait_for("the ledger closed", Duration::from_secs(30), || {
        !wal.exists()
    })
    .await;
    std::fs::write(&ledger_file, &before.0).unwrap();
    match &before.1 {
        Some(bytes) => std::fs::write(&wal, bytes).unwrap(),
        None => {
            let _ = std::fs::remove_file(&wal);
        }
    }
    let _ = std::fs::remove_file(ledger_file.with_extension("db-shm"));
    assert!(
        Ledger::open(&shop.store)
            .unwrap()
            .get(&consumer.id)
            .unwrap()
            .position
            < done
    );
    let delivery = shop.delivery();
    wait_for(
        "everything published again",
        Duration::from_secs(60),
        || {
            let c = Ledger::open(&shop.store)
                .unwrap()
                .get(&consumer.id)
                .unwrap();
            c.pending == 0 && c.position == done
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let again = server.messages("SHOP").await;
    assert_eq!(again.len(), expected, "a repeat was stored");
    assert_eq!(check_stream(&again, &shop.db.name), changes);
    delivery.abort();
    capture.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_server_that_is_down_delays_delivery_and_loses_nothing() {
    let mut server = NatsServer::start("nats_down", None);
    let shop = Shop::new("nats_down", 0);
    shop.backfill().await;
    let consumer = shop.add(shop.spec(
        "to-nats",
        Mode::Changes,
        Start::Now,
        Destination::Nats(nats(&server.url(), "SHOP")),
    ));
    let capture = shop.streaming();
    let delivery = shop.delivery();
    for id in 1..=20 {
        shop.db
            .sql(&format!("INSERT INTO orders VALUES ({id}, 'new', {id});"));
    }
    let first = server
        .messages_once("SHOP", 20, 300, Duration::from_millis(100))
        .await;
    assert_eq!(first.len(), 20);
    server.stop();
    for id in 21..=40 {
        shop.db
            .sql(&format!("INSERT INTO orders VALUES ({id}, 'new', {id});"));
    }
    shop.db
        .sql("UPDATE orders SET status = 'paid' WHERE id = 1;");
    // The changes are stored (the slot moves on) while they wait in the queue.
    wait_for(
        "changes queued while NATS is down",
        Duration::from_secs(30),
        || {
            Ledger::open(&shop.store)
                .unwrap()
                .get(&consumer.id)
                .unwrap()
                .pending
                == 21
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    server.launch();
    let all = server
        .messages_once("SHOP", 41, 900, Duration::from_millis(100))
        .await;
    let changes = check_stream(&all, &shop.db.name);
    assert_eq!(changes.len(), 41);
    assert!(changes.contains(&("update".to_string(), 1)));
    // The consumer's page: the publishes that failed while the server was down, with why, then
    // acknowledged ones; each message counted once in the delivered samples.
    let consumers = tidepool::app::consumers::ConsumerStore::at(&shop.store);
    wait_for(
        "every publish counted in the samples",
        Duration::from_secs(10),
        || {
            consumers
                .activity("to-nats")
                .unwrap()
                .samples
                .iter()
                .map(|s| s.delivered)
                .sum::<u64>()
                == 41
        },
    )
    .await;
    let attempts = consumers.activity("to-nats").unwrap().attempts;
    assert_eq!(attempts[0].error, None, "{attempts:?}");
    assert!(attempts.iter().all(|a| a.status.is_none() && !a.test));
    assert!(
        attempts.iter().any(|a| a
            .error
            .as_deref()
            .is_some_and(|e| e.contains(&server.url()))),
        "{attempts:?}"
    );
    delivery.abort();
    capture.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_tidepool_mid_publish_stores_every_change_in_the_stream_exactly_once() {
    let server = NatsServer::start("nats_kill", None);
    let shop = Shop::new("nats_kill", 0);
    shop.backfill().await;
    let store = shop.store.to_str().unwrap().to_string();
    let added = tidepool_cli(&shop)
        .args(["consumer", "add", "--store", &store, "--name", "to-nats"])
        .args(["--collection", "public/orders", "--nats", &server.url()])
        .args(["--stream", "SHOP", "--publish-batch", "5"])
        .output()
        .unwrap();
    assert!(
        added.status.success(),
        "{}",
        String::from_utf8_lossy(&added.stderr)
    );
    // Enough transactions that the kill lands while they are being published, one each.
    const ROWS: i64 = 1000;
    shop.db.sql(&format!(
        "DO $$ BEGIN FOR i IN 1..{ROWS} LOOP INSERT INTO orders VALUES (i, 'new', i); COMMIT; END LOOP; END $$;"
    ));
    let url = format!(
        "postgres://postgres@127.0.0.1:{}/{}?sslmode=disable",
        shop.db.cluster.port(),
        shop.db.name
    );
    let capture = || {
        crate::deliver::Child(
            tidepool_cli(&shop)
                .args(["capture", "--url", &url, "--store", &store])
                .args(["--publication", "shop_pub", "--slot", &shop.db.name])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        )
    };
    let mut first = capture();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while server.count("SHOP").await < 30 {
        assert!(
            std::time::Instant::now() < deadline,
            "nothing was published"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    first.0.kill().unwrap(); // SIGKILL
    first.0.wait().unwrap();
    let at_kill = server.count("SHOP").await;
    assert!(
        at_kill < ROWS as u64,
        "everything was published before the kill"
    );
    for id in ROWS + 1..=ROWS + 50 {
        shop.db
            .sql(&format!("INSERT INTO orders VALUES ({id}, 'new', {id});"));
    }
    shop.db.sql(&format!(
        "UPDATE orders SET status = 'paid' WHERE id IN (1, 2, 3, {});",
        ROWS + 20
    ));
    let expected = ROWS as usize + 54;
    let _second = capture();
    server
        .messages_once("SHOP", expected, 1200, Duration::from_millis(100))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let all = server.messages("SHOP").await;
    let changes = check_stream(&all, &shop.db.name);
    assert_eq!(changes.len(), expected, "at the kill: {at_kill}");
    assert_eq!(all.len(), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_nats_credentials_are_refused_clearly_and_good_ones_live_only_in_the_keychain() {
    let server = NatsServer::start("nats_auth", Some("s3cret-nats-token"));
    let shop = Shop::new("nats_auth", 1);
    shop.backfill().await;
    let consumers = ConsumerStore::at(&shop.store);
    let mut destination = nats(&server.url(), "SHOP");
    destination.auth = NatsAuth::Token;
    let spec = shop.spec(
        "to-nats",
        Mode::Changes,
        Start::Beginning,
        Destination::Nats(destination),
    );
    let wrong = consumers
        .add_checked(spec.clone(), vec![], Some(Secret::new("not-the-token")))
        .await
        .unwrap_err();
    assert_eq!(wrong.kind(), ErrorKind::Authentication, "{wrong}");
    assert!(
        wrong.message().contains("authorization violation")
            && wrong.message().contains(&server.url()),
        "{wrong}"
    );
    assert!(!wrong.message().contains("not-the-token"), "{wrong}");
    assert!(consumers.list().unwrap().is_empty(), "saved anyway");
    let missing = consumers
        .add_checked(spec.clone(), vec![], None)
        .await
        .unwrap_err();
    assert!(
        missing.message().starts_with("nats-credential:"),
        "{missing}"
    );

    let consumer = consumers
        .add_checked(spec, vec![], Some(Secret::new("s3cret-nats-token")))
        .await
        .unwrap();
    let keychain = Keychain::open().unwrap();
    let key = SecretKey::NatsCredential(consumer.id.clone());
    assert_eq!(
        keychain.get(&key).unwrap().unwrap().expose(),
        "s3cret-nats-token"
    );
    for entry in std::fs::read_dir(&shop.store).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap_or_default();
        assert!(
            !String::from_utf8_lossy(&bytes).contains("s3cret-nats-token"),
            "the credential reached a file"
        );
    }
    // With the right token the backfilled row arrives.
    let capture = shop.streaming();
    let delivery = shop.delivery();
    let messages = server
        .messages_once("SHOP", 1, 300, Duration::from_millis(100))
        .await;
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].2["action"], "read");
    delivery.abort();
    capture.abort();
    consumers.remove("to-nats").unwrap();
    assert!(
        keychain.get(&key).unwrap().is_none(),
        "the credential outlived its consumer"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_server_is_trusted_through_its_authority_and_refused_without_it() {
    let server = NatsServer::start_tls("nats_tls");
    let mut destination = nats(&server.url(), "TLS");
    destination.tls = true;
    // The system's authorities do not know the test one: refused, saying it is TLS.
    let refused = tidepool::deliver::nats::check(&destination, None)
        .await
        .unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::Tls, "{refused}");
    assert!(refused.message().contains(&server.url()), "{refused}");
    destination.ca_file = Some(server.ca_file.clone().unwrap().to_string_lossy().into());
    tidepool::deliver::nats::check(&destination, None)
        .await
        .expect("a TLS connection with the server's authority");

    // TLS required of a server that does not speak it: refused, not sent in the clear.
    let plain = NatsServer::start("nats_plain", None);
    let mut required = nats(&plain.url(), "PLAIN");
    required.tls = true;
    let e = tidepool::deliver::nats::check(&required, None)
        .await
        .unwrap_err();
    assert!(
        matches!(e.kind(), ErrorKind::Tls | ErrorKind::Connection),
        "{e}"
    );
    assert!(e.message().to_lowercase().contains("tls"), "{e}");
}
