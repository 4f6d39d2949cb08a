//! Delivery benchmarks, in one run, on one cluster, to a webhook receiver on loopback (axum):
//!
//! 1. Throughput: the capture rate of 100k single-row transactions (slot → store, durable) against
//!    the webhook delivery rate of the same stored changes (store → signed POSTs of 100
//!    messages, 10 in flight → acknowledged). Reported as messages/s and delivery ÷ capture.
//!    Then the same stored changes published to NATS JetStream (a `nats-server -js` started here,
//!    batches of 100 publishes before their acknowledgements are awaited), reported the same way.
//! 2. Commit-to-delivered latency at a steady 1,000 transactions/s with the capture and delivery
//!    running side by side: from the writer's commit returning to the receiver holding the
//!    message, p50 and p99.
//!
//! Run: `cargo bench --bench delivery` (release build). Figures go to stdout as Markdown.

// Only the cluster is used here; the rest serves the other benchmarks.
#[allow(dead_code)]
mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::StatusCode;
use serde_json::Value as Json;
use tidepool::capture::{run, CaptureOptions, Flush, Observer};
use tidepool::deliver::consumer::{ConsumerSpec, Destination, Mode, Nats, Start, Webhook};
use tidepool::deliver::{Database, DeliveryOptions};
use tidepool::secrets::Keychain;

/// Record ids as the receiver got them, with when.
#[derive(Default)]
struct Receiver {
    count: AtomicUsize,
    arrivals: Mutex<HashMap<i64, Instant>>,
}

async fn receiver(state: Arc<Receiver>) -> String {
    let app = axum::Router::new()
        .route(
            "/hook",
            axum::routing::post(
                |axum::extract::State(r): axum::extract::State<Arc<Receiver>>, body: Bytes| async move {
                    let now = Instant::now();
                    let value: Json = serde_json::from_slice(&body).unwrap_or(Json::Null);
                    let messages = value["data"].as_array().cloned().unwrap_or_default();
                    let mut arrivals = r.arrivals.lock().unwrap();
                    for m in &messages {
                        if let Some(id) = m["record"]["id"].as_i64() {
                            arrivals.insert(id, now);
                        }
                    }
                    r.count.fetch_add(messages.len(), Ordering::SeqCst);
                    StatusCode::NO_CONTENT
                },
            ),
        )
        .with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    url
}

fn capture_options(
    cluster: &tidepool::app::cluster::Cluster,
    store: &std::path::Path,
    slot: &str,
    stop_at: Option<tidepool::source::pgoutput::Lsn>,
    commits: tokio::sync::watch::Sender<u64>,
) -> CaptureOptions {
    CaptureOptions {
        spec: cluster.spec("bench"),
        store_dir: store.to_path_buf(),
        publication: "bench_pub".into(),
        slot: slot.into(),
        create_slot: false,
        stop_at,
        observer: Some(Observer(Arc::new(move |_: &Flush| {
            commits.send_modify(|n| *n += 1);
        }))),
        bindings: Vec::new(),
        backfill_progress: None,
    }
}

fn consumer(url: &str, start: Start) -> ConsumerSpec {
    ConsumerSpec {
        name: "bench".into(),
        collections: vec!["public/t".into()],
        actions: vec![],
        filter: None,
        mode: Mode::Changes,
        start,
        group_by: vec![],
        destination: Destination::Webhook(Webhook {
            url: url.into(),
            headers: Default::default(),
            secret_headers: vec![],
            batch_size: Some(100),
            timeout_ms: 30_000,
            max_retries: None,
            max_in_flight: 10,
        }),
    }
}

fn delivery(
    store: &std::path::Path,
    keychain: &Keychain,
    wake: tokio::sync::watch::Receiver<u64>,
) -> tokio::task::JoinHandle<()> {
    let options = DeliveryOptions {
        store_dir: store.to_path_buf(),
        database: Database {
            name: "bench".into(),
            database: "bench".into(),
            hostname: "127.0.0.1".into(),
        },
        keychain: Some(keychain.clone()),
        wake,
    };
    tokio::spawn(async move {
        tidepool::deliver::run(options).await.unwrap();
    })
}

/// CPU time (user + system) this process has used: unlike wall time, it hardly moves when other
/// work shares the machine.
fn cpu() -> Duration {
    // SAFETY: getrusage only writes the struct it is given.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let time = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    time(usage.ru_utime) + time(usage.ru_stime)
}

/// One phase's figures: messages per second, and CPU microseconds per message.
struct Rate {
    per_second: f64,
    cpu_us: f64,
}

fn sql(cluster: &tidepool::app::cluster::Cluster, sql: &str) -> String {
    cluster.psql("bench", sql).expect("benchmark SQL")
}

/// A `nats-server -js` on a free loopback port, killed when dropped; `None` if it is not installed.
struct NatsServer(std::process::Child, u16, std::path::PathBuf);

impl NatsServer {
    fn start() -> Option<NatsServer> {
        let binary = ["/usr/sbin/nats-server", "/usr/bin/nats-server"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        let dir = std::env::temp_dir().join(format!("tidepool-bench-nats-{}", std::process::id()));
        let child = std::process::Command::new(binary)
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string()])
            .arg("-sd")
            .arg(&dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .ok()?;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(NatsServer(child, port, dir))
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        let _ = std::fs::remove_dir_all(&self.2);
    }
}

/// The JetStream delivery rate of the `n` changes stored in `store`, by a second consumer.
async fn nats_throughput(
    store: &std::path::Path,
    keychain: &Keychain,
    wake: tokio::sync::watch::Receiver<u64>,
    n: u64,
) -> Option<Rate> {
    let server = NatsServer::start()?;
    let url = format!("nats://127.0.0.1:{}", server.1);
    let mut spec = consumer("http://127.0.0.1:9/unused", Start::Beginning);
    spec.name = "bench-nats".into();
    spec.destination = Destination::Nats(Nats {
        url: url.clone(),
        stream: Some("BENCH".into()),
        batch_size: 100,
        ..Nats::default()
    });
    tidepool::deliver::add_consumer(store, spec, Some(keychain), &[], None).unwrap();
    let client = async_nats::connect(&url).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let started = Instant::now();
    let cpu_started = cpu();
    let task = delivery(store, keychain, wake);
    loop {
        if let Ok(mut stream) = js.get_stream("BENCH").await {
            if stream.info().await.map(|i| i.state.messages).unwrap_or(0) >= n {
                break;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "JetStream delivery did not finish"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    let cpu_used = (cpu() - cpu_started).as_secs_f64();
    task.abort();
    let _ = task.await;
    Some(Rate {
        per_second: n as f64 / secs,
        cpu_us: cpu_used * 1e6 / n as f64,
    })
}

/// The capture's, the webhook delivery's and the JetStream delivery's rates for `n` single-row
/// transactions (JetStream's `None` without nats-server).
async fn throughput(
    cluster: &tidepool::app::cluster::Cluster,
    keychain: &Keychain,
    n: u64,
) -> (Rate, Rate, Option<Rate>) {
    let store =
        std::env::temp_dir().join(format!("tidepool-bench-delivery-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&store);
    sql(
        cluster,
        "SELECT pg_create_logical_replication_slot('deliver_tp', 'pgoutput');",
    );
    sql(
        cluster,
        &format!("DO $$ BEGIN FOR i IN 1..{n} LOOP INSERT INTO t (v) VALUES (md5(i::text)); COMMIT; END LOOP; END $$;"),
    );
    let end: tidepool::source::pgoutput::Lsn = sql(cluster, "SELECT pg_current_wal_lsn();")
        .trim()
        .parse()
        .unwrap();
    let (commits, wake) = tokio::sync::watch::channel(0);
    let started = Instant::now();
    let cpu_started = cpu();
    run(capture_options(
        cluster,
        &store,
        "deliver_tp",
        Some(end),
        commits,
    ))
    .await
    .unwrap();
    let capture_secs = started.elapsed().as_secs_f64();
    let capture_cpu = (cpu() - cpu_started).as_secs_f64();

    let received = Arc::new(Receiver::default());
    let url = receiver(received.clone()).await;
    tidepool::deliver::add_consumer(
        &store,
        consumer(&url, Start::Beginning),
        Some(keychain),
        &[],
        None,
    )
    .unwrap();
    let started = Instant::now();
    let cpu_started = cpu();
    let task = delivery(&store, keychain, wake.clone());
    while (received.count.load(Ordering::SeqCst) as u64) < n {
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "delivery did not finish"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let deliver_secs = started.elapsed().as_secs_f64();
    let deliver_cpu = (cpu() - cpu_started).as_secs_f64();
    task.abort();
    let _ = task.await;
    tidepool::deliver::remove_consumer(&store, "bench", Some(keychain)).unwrap();
    let nats = nats_throughput(&store, keychain, wake, n).await;
    let _ = std::fs::remove_dir_all(&store);
    sql(cluster, "SELECT pg_drop_replication_slot('deliver_tp');");
    let rate = |secs: f64, cpu: f64| Rate {
        per_second: n as f64 / secs,
        cpu_us: cpu * 1e6 / n as f64,
    };
    (
        rate(capture_secs, capture_cpu),
        rate(deliver_secs, deliver_cpu),
        nats,
    )
}

/// (p50 ms, p99 ms, samples, transactions/s reached) from commit to delivered, 10,000
/// transactions at (up to) 1,000 per second.
async fn latency(
    cluster: &tidepool::app::cluster::Cluster,
    keychain: &Keychain,
) -> (f64, f64, usize, f64) {
    let store = std::env::temp_dir().join(format!(
        "tidepool-bench-delivery-lat-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&store);
    sql(
        cluster,
        "SELECT pg_create_logical_replication_slot('deliver_lat', 'pgoutput');",
    );
    let (commits, wake) = tokio::sync::watch::channel(0);
    // Store what is there (creates the collection), then stream.
    let now: tidepool::source::pgoutput::Lsn = sql(
        cluster,
        "INSERT INTO t (v) VALUES ('start'); SELECT pg_current_wal_lsn();",
    )
    .lines()
    .last()
    .unwrap()
    .trim()
    .parse()
    .unwrap();
    run(capture_options(
        cluster,
        &store,
        "deliver_lat",
        Some(now),
        commits.clone(),
    ))
    .await
    .unwrap();
    let received = Arc::new(Receiver::default());
    let url = receiver(received.clone()).await;
    tidepool::deliver::add_consumer(
        &store,
        consumer(&url, Start::Now),
        Some(keychain),
        &[],
        None,
    )
    .unwrap();
    let capture = tokio::spawn(run(capture_options(
        cluster,
        &store,
        "deliver_lat",
        None,
        commits,
    )));
    let task = delivery(&store, keychain, wake);
    tokio::time::sleep(Duration::from_secs(1)).await;

    let writer = tidepool::source::connection::connect(&cluster.spec("bench"))
        .await
        .unwrap();
    let insert = writer
        .prepare("INSERT INTO t (v) VALUES ($1) RETURNING id")
        .await
        .unwrap();
    let mut committed: HashMap<i64, Instant> = HashMap::new();
    let writing = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for i in 0..10_000 {
        tick.tick().await;
        let row = writer
            .query_one(&insert, &[&format!("row {i}")])
            .await
            .unwrap();
        committed.insert(row.get(0), Instant::now());
    }
    // Each commit waits for the one before, so on a busy machine the writer can fall short of
    // 1,000/s: report what it reached.
    let rate = committed.len() as f64 / writing.elapsed().as_secs_f64();
    let started = Instant::now();
    while received.arrivals.lock().unwrap().len() < committed.len()
        && started.elapsed() < Duration::from_secs(30)
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    task.abort();
    capture.abort();
    let arrivals = received.arrivals.lock().unwrap().clone();
    let mut latencies: Vec<f64> = committed
        .iter()
        .filter_map(|(id, at)| {
            arrivals
                .get(id)
                .map(|got| got.saturating_duration_since(*at).as_secs_f64() * 1000.0)
        })
        .collect();
    assert_eq!(latencies.len(), committed.len(), "every message delivered");
    latencies.sort_by(f64::total_cmp);
    let pick = |q: f64| latencies[((latencies.len() as f64 - 1.0) * q) as usize];
    let _ = std::fs::remove_dir_all(&store);
    (pick(0.5), pick(0.99), latencies.len(), rate)
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cluster = support::cluster();
    sql(&cluster, "CREATE TABLE t (id bigserial PRIMARY KEY, v text); CREATE PUBLICATION bench_pub FOR TABLE t;");
    // The engine's webhook secrets live in the OS keychain; an in-memory store keeps the benchmark
    // free of a desktop session.
    let keychain = Keychain::with_store(keyring_core::mock::Store::new().unwrap(), "mock");
    let n = 100_000;
    let (capture, delivery, nats) = runtime.block_on(throughput(&cluster, &keychain, n));
    sql(&cluster, "TRUNCATE t;");
    let (p50, p99, samples, rate) = runtime.block_on(latency(&cluster, &keychain));
    println!("| workload | capture (slot → store) | webhook delivery (store → receiver, batches of 100) | ratio |");
    println!("|---|---|---|---|");
    println!(
        "| {n} single-row transactions | {:.0} changes/s | {:.0} messages/s | {:.2}× |",
        capture.per_second,
        delivery.per_second,
        delivery.per_second / capture.per_second
    );
    println!(
        "| CPU per message, this process (the walsender not counted; the receiver counted with delivery) | {:.1} µs | {:.1} µs | {:.2}× the capture's |",
        capture.cpu_us,
        delivery.cpu_us,
        delivery.cpu_us / capture.cpu_us
    );
    match nats {
        Some(nats) => {
            println!(
                "| {n} single-row transactions, NATS JetStream (store → stream, acknowledged, batches of 100) | {:.0} changes/s | {:.0} messages/s | {:.2}× |",
                capture.per_second,
                nats.per_second,
                nats.per_second / capture.per_second
            );
            println!(
                "| CPU per message, JetStream delivery (nats-server not counted) | {:.1} µs | {:.1} µs | {:.2}× the capture's |",
                capture.cpu_us,
                nats.cpu_us,
                nats.cpu_us / capture.cpu_us
            );
        }
        None => println!("| NATS JetStream | nats-server is not installed: row skipped | | |"),
    }
    println!();
    println!("Commit-to-delivered latency, {samples} single-row transactions at {rate:.0}/s (goal 1,000/s): p50 {p50:.2} ms, p99 {p99:.2} ms");
}
