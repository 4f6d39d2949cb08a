//! The torture suite: a fault applied over and over while a mixed insert/update/delete workload runs,
//! each case ending with the same checks. The current rows equal the source table; the change log
//! holds each source change exactly once; a webhook consumer received every stored change at least
//! once, and each `idempotency_key` names one change (so de-duplicating on it leaves each once).
//!
//! Short mode (the default, inside `script/test`) applies each fault a few times; long mode
//! (`TIDEPOOL_TORTURE=long`, run by `script/torture --long`) many times over a longer workload.
//! Each case prints its seed; `TIDEPOOL_TORTURE_SEED` replays it. docs/reliability.md holds the
//! figures of the last long run.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value as Json};
use tidepool::app::cluster::{Cluster, ClusterOptions, Shutdown};
use tidepool::capture::run;
use tidepool::deliver::consumer::{ConsumerSpec, Mode, Start};
use tidepool::deliver::{Database, DeliveryOptions};
use tidepool::secrets::Keychain;

use crate::capture::{data, Source};
use crate::deliver::{receiver, webhook, Received};

/// A small xorshift generator: reproducible from the printed seed, no dependency.
pub(crate) struct Random(pub(crate) u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// One case at a time: each drives a workload as fast as the machine allows, and the engine suite
/// runs its other tests beside them.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Whether the long mode was asked for.
pub(crate) fn long() -> bool {
    std::env::var("TIDEPOOL_TORTURE").as_deref() == Ok("long")
}

/// How many times a case applies its fault, and how long its workload runs: `short` in the test
/// command, `long` in long mode.
fn scale(short: (usize, u64), long_mode: (usize, u64)) -> (usize, Duration) {
    let (n, secs) = if long() { long_mode } else { short };
    (n, Duration::from_secs(secs))
}

/// The case's seed, printed so a failure can be replayed.
fn seed(case: &str) -> u64 {
    let seed = std::env::var("TIDEPOOL_TORTURE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("torture {case}: seed {seed} (replay with TIDEPOOL_TORTURE_SEED={seed})");
    seed
}

/// Lets a fault pause the workload between transactions (a restart of the server must not cut a
/// COMMIT whose outcome the count would then not know).
#[derive(Default)]
struct Gate(tokio::sync::RwLock<()>);

/// The mixed workload on table `t`: single-row statements and small multi-statement transactions
/// (some rows large enough to be TOASTed, so updates send them unchanged), for `duration`.
/// Returns how many changes were committed. It reconnects when its connection was closed while the
/// gate was shut.
async fn workload(
    spec: tidepool::source::connection::ConnectionSpec,
    seed: u64,
    duration: Duration,
    gate: Arc<Gate>,
) -> u64 {
    let mut client = tidepool::source::connection::connect(&spec).await.unwrap();
    let mut random = Random(seed);
    let mut live: Vec<i32> = Vec::new();
    let mut next_id = 1;
    let mut changes = 0u64;
    let deadline = Instant::now() + duration;
    while Instant::now() < deadline {
        let _open = gate.0.read().await;
        if client.is_closed() {
            client = tidepool::source::connection::connect(&spec).await.unwrap();
        }
        let statements = if random.below(5) == 0 { 3 } else { 1 };
        let mut sql = String::from("BEGIN;");
        let mut planned = live.clone();
        let mut planned_next = next_id;
        for _ in 0..statements {
            let choice = if planned.is_empty() {
                0
            } else {
                random.below(10)
            };
            match choice {
                0..=3 => {
                    let size = if random.below(4) == 0 { 5000 } else { 20 };
                    sql.push_str(&format!(
                        "INSERT INTO t VALUES ({planned_next}, 1, repeat(md5('{planned_next}'), {size} / 32 + 1));"
                    ));
                    planned.push(planned_next);
                    planned_next += 1;
                }
                4..=7 => {
                    let id = planned[random.below(planned.len() as u64) as usize];
                    sql.push_str(&format!(
                        "UPDATE t SET version = version + 1 WHERE id = {id};"
                    ));
                }
                _ => {
                    let id = planned.swap_remove(random.below(planned.len() as u64) as usize);
                    sql.push_str(&format!("DELETE FROM t WHERE id = {id};"));
                }
            }
        }
        sql.push_str("COMMIT;");
        if let Err(e) = client.batch_execute(&sql).await {
            // Only a connection the server closed while the gate was shut (a restart) fails here,
            // and it failed before the transaction began: nothing of it committed. Again, anew.
            assert!(client.is_closed(), "the workload failed: {e}");
            client = tidepool::source::connection::connect(&spec).await.unwrap();
            client.batch_execute(&sql).await.unwrap();
        }
        live = planned;
        next_id = planned_next;
        changes += statements as u64;
        if !long() {
            // Inside the whole engine suite, a workload at full speed starves the tests that
            // share the machine and the cluster; a few hundred transactions a second still give
            // every fault changes in flight.
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    changes
}

/// The checks every case ends with, once the store has caught up with the source.
async fn verify(source: &Source, total_changes: u64, received: Option<&Received>) {
    verify_columns(source, total_changes, received, false).await
}

/// [`verify`], comparing only the workload's columns (`id`, `version`, `payload`) of each row when
/// `workload_columns_only`: after DDL, a stored document keeps a column added or dropped since its
/// row last changed, as every log-based capture does.
async fn verify_columns(
    source: &Source,
    total_changes: u64,
    received: Option<&Received>,
    workload_columns_only: bool,
) {
    // The capture the case aborted may still hold the slot until the server notices its socket
    // closed (through the proxy, after its next read).
    let started = Instant::now();
    while source
        .db
        .sql(&format!(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{}' AND active;",
            source.slot
        ))
        .trim()
        != "0"
    {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the slot stayed active after the capture stopped"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    source.catch_up().await;
    // Each source change is in the log exactly once.
    let changes = source.changes("public/t");
    let identity = |change: &Json| match change["_meta"]["op"].as_str().unwrap() {
        "d" => json!(["d", change["id"]]).to_string(),
        op => json!([op, change["id"], change["version"]]).to_string(),
    };
    let mut seen = HashSet::new();
    for change in &changes {
        let id = identity(change);
        assert!(seen.insert(id.clone()), "stored twice: {id}");
    }
    assert_eq!(
        changes.len() as u64,
        total_changes,
        "the change log holds {} of {total_changes} changes",
        changes.len()
    );
    // The current rows equal the source table exactly.
    let source_rows: BTreeMap<i64, Json> = source
        .db
        .sql("SELECT json_build_object('id', id, 'version', version, 'payload', payload) FROM t ORDER BY id;")
        .lines()
        .map(|l| serde_json::from_str::<Json>(l).unwrap())
        .map(|r| (r["id"].as_i64().unwrap(), r))
        .collect();
    let stored_rows: BTreeMap<i64, Json> = source
        .rows("public/t")
        .iter()
        .map(data)
        .map(|r| match workload_columns_only {
            true => json!({"id": r["id"], "version": r["version"], "payload": r["payload"]}),
            false => r,
        })
        .map(|r| (r["id"].as_i64().unwrap(), r))
        .collect();
    assert_eq!(stored_rows.len(), source_rows.len());
    for (id, row) in &source_rows {
        assert_eq!(stored_rows.get(id), Some(row), "row {id} differs");
    }
    assert!(source.confirmed_flush() <= source.store().checkpoint().unwrap());

    // The consumer: every change at least once, each idempotency_key one change.
    let Some(received) = received else {
        return;
    };
    let message_identity = |m: &Json| match m["action"].as_str().unwrap() {
        "delete" => json!(["d", m["record"]["id"]]).to_string(),
        "insert" => json!(["c", m["record"]["id"], m["record"]["version"]]).to_string(),
        _ => json!(["u", m["record"]["id"], m["record"]["version"]]).to_string(),
    };
    let started = Instant::now();
    loop {
        let accepted = received.accepted.lock().unwrap().clone();
        let got: HashSet<String> = accepted.iter().map(message_identity).collect();
        if seen.is_subset(&got) {
            let mut keys: HashMap<String, String> = HashMap::new();
            for m in &accepted {
                let key = m["metadata"]["idempotency_key"]
                    .as_str()
                    .unwrap()
                    .to_string();
                let change = message_identity(m);
                let first = keys.entry(key.clone()).or_insert_with(|| change.clone());
                assert_eq!(first, &change, "idempotency_key {key} names two changes");
            }
            assert_eq!(keys.len(), seen.len(), "after de-duplication");
            eprintln!(
                "consumer: {} messages for {} changes ({} repeats, harmless by their key)",
                accepted.len(),
                seen.len(),
                accepted.len() - seen.len()
            );
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the consumer is missing {} changes, e.g. {:?}",
            seen.difference(&got).count(),
            seen.difference(&got).next()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Watches the one invariant a final check cannot see: the slot's `confirmed_flush_lsn` is never
/// past the store's checkpoint, at any moment. It reads the slot first and the checkpoint after, so
/// a sample where the first is ahead proves the slot was confirmed past what was stored then (the
/// checkpoint only grows). A confirmation sent before its batch is stored shows here for as long as
/// the store commit takes, even when no fault lands in that window.
struct Watchdog {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<(u64, u64, Option<String>)>,
}

impl Watchdog {
    fn start(source: &Source) -> Watchdog {
        let stop = Arc::new(AtomicBool::new(false));
        let (spec, dir, slot, flag) = (
            source.db.spec(),
            source.store.clone(),
            source.slot.clone(),
            stop.clone(),
        );
        let task = tokio::spawn(async move {
            let store = tidepool::store::Store::open(&dir).expect("the store to watch");
            let mut client: Option<tokio_postgres::Client> = None;
            let (mut samples, mut violations, mut first) = (0u64, 0u64, None);
            while !flag.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(3)).await;
                // The server may be restarting: a failed read is a skipped sample.
                if client.as_ref().is_none_or(|c| c.is_closed()) {
                    client = tidepool::source::connection::connect(&spec).await.ok();
                }
                let Some(c) = &client else { continue };
                let Ok(row) = c
                    .query_opt(
                        "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
                        &[&slot],
                    )
                    .await
                else {
                    continue;
                };
                let Some(confirmed) = row.and_then(|r| r.get::<_, Option<String>>(0)) else {
                    continue;
                };
                let confirmed: tidepool::source::pgoutput::Lsn = confirmed.parse().unwrap();
                let Ok(checkpoint) = store.checkpoint() else {
                    continue;
                };
                samples += 1;
                if confirmed > checkpoint {
                    violations += 1;
                    first.get_or_insert_with(|| {
                        format!("confirmed_flush_lsn {confirmed} while the store's checkpoint was {checkpoint}")
                    });
                }
            }
            (samples, violations, first)
        });
        Watchdog { stop, task }
    }

    /// Stops watching and fails the case if the slot was ever confirmed past the store.
    async fn finish(self) {
        self.stop.store(true, Ordering::SeqCst);
        let (samples, violations, first) = self.task.await.expect("the watchdog");
        assert!(
            violations == 0,
            "the slot was confirmed past what the store held ({violations} of {samples} samples), first: {}",
            first.unwrap_or_default()
        );
        assert!(samples > 100, "the watchdog took only {samples} samples");
        eprintln!("watchdog: {samples} samples, confirmed_flush_lsn never past the checkpoint");
    }
}

/// A webhook consumer of `public/t` from the beginning, with its receiver. The capture must have
/// stored the collection first.
async fn consumer(source: &Source) -> Arc<Received> {
    let received = Arc::new(Received::default());
    let url = receiver(received.clone()).await;
    let spec = ConsumerSpec {
        name: "torture".into(),
        collections: vec!["public/t".into()],
        actions: vec![],
        filter: None,
        mode: Mode::Changes,
        start: Start::Beginning,
        group_by: vec![],
        destination: webhook(&url, Some(50), None),
    };
    let keychain = Keychain::open().expect("the test keychain");
    tidepool::deliver::add_consumer(&source.store, spec, Some(&keychain), &[], None)
        .expect("adding the consumer");
    received
}

/// What the in-process cases run while their fault strikes: a webhook consumer of `public/t` from
/// the beginning, the watchdog, the capture (through `port` when given, e.g. a proxy's), delivery,
/// and the workload.
struct Streaming {
    received: Arc<Received>,
    watchdog: Watchdog,
    capture: tokio::task::JoinHandle<tidepool::Result<tidepool::capture::CaptureReport>>,
    delivery: tokio::task::JoinHandle<()>,
    workload: tokio::task::JoinHandle<u64>,
}

impl Streaming {
    async fn start(
        source: &Source,
        seed: u64,
        duration: Duration,
        gate: Arc<Gate>,
        port: Option<u16>,
    ) -> Streaming {
        let received = consumer(source).await;
        let watchdog = Watchdog::start(source);
        let mut options = source.options(None);
        if let Some(port) = port {
            options.spec.port = port;
        }
        let capture = tokio::spawn(run(options));
        let delivery = delivery(source);
        let workload = tokio::spawn(workload(source.db.spec(), seed, duration, gate));
        Streaming {
            received,
            watchdog,
            capture,
            delivery,
            workload,
        }
    }

    /// Whether the workload has ended.
    fn workload_done(&self) -> bool {
        self.workload.is_finished()
    }

    /// Waits for the workload, fails if the capture gave up, stops it, and returns how many changes
    /// the source committed (the case's first row included).
    async fn stop(&mut self) -> u64 {
        let total = (&mut self.workload).await.unwrap() + FIRST;
        assert!(
            !self.capture.is_finished(),
            "the capture gave up: {:?}",
            (&mut self.capture).await
        );
        // Cancelled and gone before anything else opens the store: an abort only asks, and a capture
        // still finishing a store commit on the other worker would race the next one's positions.
        self.capture.abort();
        let _ = (&mut self.capture).await;
        total
    }

    /// The watchdog's verdict, then the checks every case ends with ([`verify_columns`]).
    async fn check(self, source: &Source, total: u64, workload_columns_only: bool) {
        self.watchdog.finish().await;
        verify_columns(source, total, Some(&self.received), workload_columns_only).await;
        self.delivery.abort();
    }
}

/// Delivery beside an in-process capture.
fn delivery(source: &Source) -> tokio::task::JoinHandle<()> {
    let options = DeliveryOptions {
        store_dir: source.store.clone(),
        database: Database {
            name: "torture".into(),
            database: source.db.name.clone(),
            hostname: "127.0.0.1".into(),
        },
        keychain: Some(Keychain::open().expect("the test keychain")),
        // Never bumped: delivery re-reads the store every second.
        wake: tokio::sync::watch::channel(0).1,
    };
    tokio::spawn(async move {
        tidepool::deliver::run(options).await.expect("delivery");
    })
}

/// A `tidepool capture` process on the case's store and slot (it delivers to consumers too).
fn capture_process(source: &Source) -> std::process::Child {
    capture_command(source).spawn().unwrap()
}

/// The command [`capture_process`] starts.
fn capture_command(source: &Source) -> Command {
    let url = format!(
        "postgres://postgres@127.0.0.1:{}/{}?sslmode=disable",
        source.db.cluster.port(),
        source.db.name
    );
    let mut command = Command::new(env!("CARGO_BIN_EXE_tidepool"));
    command
        .args(["capture", "--url", &url, "--store"])
        .arg(&source.store)
        .args(["--publication", "tidepool_pub", "--slot", &source.slot])
        .env(
            "PGPASSWORD",
            source.db.cluster.superuser_password().expose(),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    command
}

fn source(cluster: &'static Cluster, prefix: &str) -> Source {
    let source = Source::on(
        cluster,
        prefix,
        "CREATE TABLE t (id int PRIMARY KEY, version int NOT NULL, payload text);",
    );
    // The collection exists once a first change is stored; the consumer is added then.
    source.db.sql("INSERT INTO t VALUES (0, 1, 'first');");
    source
}

/// Each case's first change (row 0), counted with the workload's.
const FIRST: u64 = 1;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_capture_at_random_moments_loses_and_doubles_nothing() {
    let (kills_wanted, duration) = scale((5, 8), (20, 40));
    let seed = seed("kill -9");
    let _turn = ONE_AT_A_TIME.lock().await;
    let source = source(crate::harness::plain(), "torture_kill");
    source.catch_up().await;
    let received = consumer(&source).await;
    let watchdog = Watchdog::start(&source);
    let spec = source.db.spec();
    let workload = tokio::spawn(workload(spec, seed, duration, Arc::default()));
    // Capture processes (delivering to the consumer too) killed with SIGKILL at random moments.
    let mut random = Random(seed.rotate_left(17) | 1);
    let mut kills = 0;
    while !workload.is_finished() || kills < kills_wanted {
        let mut child = capture_process(&source);
        tokio::time::sleep(Duration::from_millis(150 + random.below(700))).await;
        child.kill().unwrap();
        child.wait().unwrap();
        kills += 1;
    }
    let total = workload.await.unwrap() + FIRST;
    assert!(kills >= kills_wanted, "only {kills} kills happened");
    eprintln!("torture kill -9: {total} changes, {kills} kills");
    // What was queued and not acknowledged at the last kill goes out now.
    let delivery = delivery(&source);
    watchdog.finish().await;
    verify(&source, total, Some(&received)).await;
    delivery.abort();
}

/// The case that catches a confirmation sent before its batch is stored: the store's disk is slow
/// (every `fsync` and `fdatasync` of the capture process takes 250 ms, through an `LD_PRELOAD`
/// shim), so each batch spends a quarter of a second between arriving whole and being durable. The
/// watchdog samples the slot against the store throughout, and `kill -9` lands mid-commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_disk_and_kill_9_never_see_the_slot_confirmed_before_the_store() {
    let (kills_wanted, duration) = scale((4, 10), (20, 60));
    let seed = seed("slow disk, kill -9");
    let _turn = ONE_AT_A_TIME.lock().await;
    let source = source(crate::harness::plain(), "torture_slow_disk");
    source.catch_up().await;
    let watchdog = Watchdog::start(&source);
    let workload = tokio::spawn(workload(source.db.spec(), seed, duration, Arc::default()));
    let shim = slow_fsync_shim();
    let mut random = Random(seed.rotate_left(29) | 1);
    let mut kills = 0;
    while !workload.is_finished() || kills < kills_wanted {
        let mut command = capture_command(&source);
        command
            .env("LD_PRELOAD", &shim)
            .env("TORTURE_FSYNC_DELAY_MS", "250");
        let mut child = command.spawn().unwrap();
        // Up long enough for a status update or two (one a second), then killed.
        tokio::time::sleep(Duration::from_millis(800 + random.below(1700))).await;
        child.kill().unwrap();
        child.wait().unwrap();
        kills += 1;
    }
    let total = workload.await.unwrap() + FIRST;
    eprintln!("torture slow disk: {total} changes, {kills} kills");
    watchdog.finish().await;
    verify(&source, total, None).await;
}

/// A shared library that delays `fsync` and `fdatasync` by `TORTURE_FSYNC_DELAY_MS`: a slow disk for
/// the process it is preloaded into. Built once per test run with the system's C compiler (the one
/// Rust links with).
fn slow_fsync_shim() -> std::path::PathBuf {
    static SHIM: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    SHIM.get_or_init(|| {
        let dir = crate::harness::temp_dir("slow_fsync");
        let source = dir.join("slow_fsync.c");
        std::fs::write(
            &source,
            r#"
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <time.h>
static void slow(void) {
    const char *v = getenv("TORTURE_FSYNC_DELAY_MS");
    long ms = v ? atol(v) : 0;
    struct timespec t = { ms / 1000, (ms % 1000) * 1000000L };
    nanosleep(&t, 0);
}
int fsync(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int)) dlsym(RTLD_NEXT, "fsync");
    slow();
    return real(fd);
}
int fdatasync(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int)) dlsym(RTLD_NEXT, "fdatasync");
    slow();
    return real(fd);
}
"#,
        )
        .unwrap();
        let shim = dir.join("slow_fsync.so");
        let built = Command::new("cc")
            .args(["-shared", "-fPIC", "-O2", "-o"])
            .arg(&shim)
            .arg(&source)
            .arg("-ldl")
            .output()
            .expect("the C compiler (cc, from build-essential)");
        assert!(
            built.status.success(),
            "{}",
            String::from_utf8_lossy(&built.stderr)
        );
        shim
    })
    .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_walsender_terminated_again_and_again_loses_and_doubles_nothing() {
    let (terminations_wanted, duration) = scale((4, 6), (30, 40));
    let seed = seed("walsender terminated");
    let _turn = ONE_AT_A_TIME.lock().await;
    let source = source(crate::harness::plain(), "torture_walsender");
    source.catch_up().await;
    let mut streaming = Streaming::start(&source, seed, duration, Arc::default(), None).await;
    let mut random = Random(seed.rotate_left(11) | 1);
    let mut terminations = 0;
    let started = Instant::now();
    // Past the workload too, until enough terminations landed (a reconnect takes a moment).
    while !streaming.workload_done()
        || (terminations < terminations_wanted && started.elapsed() < Duration::from_secs(120))
    {
        tokio::time::sleep(Duration::from_millis(300 + random.below(600))).await;
        let n = source.db.sql(&format!(
            "SELECT count(pg_terminate_backend(active_pid)) FROM pg_replication_slots WHERE slot_name = '{}' AND active;",
            source.slot
        ));
        terminations += n.trim().parse::<usize>().unwrap_or(0);
    }
    let total = streaming.stop().await;
    assert!(
        terminations >= terminations_wanted,
        "only {terminations} terminations happened"
    );
    eprintln!("torture walsender: {total} changes, {terminations} terminations");
    streaming.check(&source, total, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarted_fast_and_immediate_mid_stream_loses_and_doubles_nothing() {
    let (restarts_wanted, duration) = scale((2, 8), (10, 60));
    let seed = seed("postgres restarted");
    let _turn = ONE_AT_A_TIME.lock().await;
    // A cluster of its own: restarting the shared one would cut every other test.
    let cluster: &'static Cluster = Box::leak(Box::new(
        Cluster::start(ClusterOptions::default()).expect("a cluster to restart"),
    ));
    let source = source(cluster, "torture_restart");
    source.catch_up().await;
    let gate: Arc<Gate> = Arc::default();
    let mut streaming = Streaming::start(&source, seed, duration, gate.clone(), None).await;
    let mut random = Random(seed.rotate_left(5) | 1);
    let mut restarts = 0;
    while !streaming.workload_done() || restarts < restarts_wanted {
        tokio::time::sleep(Duration::from_millis(800 + random.below(1200))).await;
        let shutdown = if restarts % 2 == 0 {
            Shutdown::Fast
        } else {
            Shutdown::Immediate
        };
        let _closed = gate.0.write().await;
        tokio::task::block_in_place(|| cluster.restart(shutdown)).expect("restarting PostgreSQL");
        restarts += 1;
    }
    let total = streaming.stop().await;
    assert!(
        restarts >= restarts_wanted,
        "only {restarts} restarts happened"
    );
    eprintln!("torture restart: {total} changes, {restarts} restarts (fast and immediate)");
    streaming.check(&source, total, false).await;
    drop(source);
    cluster.stop();
}

/// DDL while the workload runs: columns added (with defaults), renamed, retyped and dropped, the
/// workload's own `version` column widened to bigint (a table rewrite), the replica identity switched
/// between full and default, and the table renamed away and back, each in its own transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ddl_mid_stream_loses_and_doubles_nothing() {
    let (statements_wanted, duration) = scale((8, 8), (60, 60));
    let seed = seed("DDL mid-stream");
    let _turn = ONE_AT_A_TIME.lock().await;
    let source = source(crate::harness::plain(), "torture_ddl");
    source.catch_up().await;
    let mut streaming = Streaming::start(&source, seed, duration, Arc::default(), None).await;
    let client = tidepool::source::connection::connect(&source.db.spec())
        .await
        .unwrap();
    let mut random = Random(seed.rotate_left(37) | 1);
    // Extra columns now in the table, by name, and whether each is text yet.
    let mut extras: Vec<(String, bool)> = Vec::new();
    let (mut statements, mut next, mut widened) = (0, 0, false);
    while !streaming.workload_done() || statements < statements_wanted {
        tokio::time::sleep(Duration::from_millis(300 + random.below(600))).await;
        let ddl = match random.below(8) {
            0 | 1 if extras.len() < 4 => {
                next += 1;
                extras.push((format!("extra_{next}"), false));
                format!("ALTER TABLE t ADD COLUMN extra_{next} int DEFAULT {next}")
            }
            2 if !extras.is_empty() => {
                let at = random.below(extras.len() as u64) as usize;
                next += 1;
                let old = std::mem::replace(&mut extras[at].0, format!("renamed_{next}"));
                format!("ALTER TABLE t RENAME COLUMN {old} TO renamed_{next}")
            }
            3 if extras.iter().any(|(_, text)| !text) => {
                let at = extras.iter().position(|(_, text)| !text).unwrap();
                extras[at].1 = true;
                format!(
                    "ALTER TABLE t ALTER COLUMN {} TYPE text USING 'was ' || {0}",
                    extras[at].0
                )
            }
            4 if !extras.is_empty() => {
                let (name, _) = extras.swap_remove(random.below(extras.len() as u64) as usize);
                format!("ALTER TABLE t DROP COLUMN {name}")
            }
            5 if !widened => {
                widened = true;
                "ALTER TABLE t ALTER COLUMN version TYPE bigint".to_string()
            }
            6 => match random.below(2) {
                0 => "ALTER TABLE t REPLICA IDENTITY FULL".to_string(),
                _ => "ALTER TABLE t REPLICA IDENTITY DEFAULT".to_string(),
            },
            _ => "BEGIN; ALTER TABLE t RENAME TO t_away; ALTER TABLE t_away RENAME TO t; COMMIT"
                .to_string(),
        };
        client.batch_execute(&ddl).await.unwrap();
        statements += 1;
    }
    let total = streaming.stop().await;
    eprintln!("torture DDL: {total} changes, {statements} DDL statements");
    streaming.check(&source, total, true).await;
}

/// The publication altered while the capture streams: three other tables removed from it and added
/// back again and again, while all four tables change. Each ALTER makes pgoutput send its relations
/// anew; each removal of a table the capture follows (it has no definition: every published table)
/// is a notice, and each return reads that table's collection again alongside the stream. `t` keeps
/// every change exactly once, and each side table's collection ends equal to its table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_publication_altered_mid_stream_loses_and_doubles_nothing() {
    const SIDES: [&str; 3] = ["side_1", "side_2", "side_3"];
    let (alters_wanted, duration) = scale((6, 10), (40, 60));
    let seed = seed("publication altered");
    let _turn = ONE_AT_A_TIME.lock().await;
    let source = Source::on(
        crate::harness::plain(),
        "torture_pub",
        "CREATE TABLE t (id int PRIMARY KEY, version int NOT NULL, payload text);
         CREATE TABLE side_1 (id int PRIMARY KEY, n int NOT NULL);
         CREATE TABLE side_2 (id int PRIMARY KEY, n int NOT NULL);
         CREATE TABLE side_3 (id int PRIMARY KEY, n int NOT NULL);",
    );
    // A publication of listed tables (one FOR ALL TABLES cannot lose one), and a slot made after it:
    // pgoutput reads the publication as of each change it decodes.
    source.db.sql(&format!(
        "SELECT pg_drop_replication_slot('{slot}'); DROP PUBLICATION tidepool_pub;
         CREATE PUBLICATION tidepool_pub FOR TABLE t, side_1, side_2, side_3;
         SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput');
         INSERT INTO t VALUES (0, 1, 'first');
         INSERT INTO side_1 VALUES (0, 0); INSERT INTO side_2 VALUES (0, 0); INSERT INTO side_3 VALUES (0, 0);",
        slot = source.slot
    ));
    source.catch_up().await;
    let mut streaming = Streaming::start(&source, seed, duration, Arc::default(), None).await;
    // The side tables change throughout, in the publication or not.
    let sides = {
        let spec = source.db.spec();
        let mut random = Random(seed.rotate_left(41) | 1);
        tokio::spawn(async move {
            let client = tidepool::source::connection::connect(&spec).await.unwrap();
            let deadline = Instant::now() + duration;
            let mut next = 1;
            while Instant::now() < deadline {
                let side = SIDES[random.below(3) as usize];
                let sql = match random.below(3) {
                    0 => format!("INSERT INTO {side} VALUES ({next}, 0)"),
                    1 => format!(
                        "UPDATE {side} SET n = n + 1 WHERE id = (SELECT max(id) FROM {side})"
                    ),
                    _ => format!(
                        "DELETE FROM {side} WHERE id = (SELECT min(id) FROM {side} WHERE id > 0)"
                    ),
                };
                next += 1;
                client.batch_execute(&sql).await.unwrap();
                tokio::time::sleep(Duration::from_millis(5 + random.below(10))).await;
            }
        })
    };
    let client = tidepool::source::connection::connect(&source.db.spec())
        .await
        .unwrap();
    let mut random = Random(seed.rotate_left(29) | 1);
    let mut published = [true; 3];
    let mut alters = 0;
    while !streaming.workload_done() || alters < alters_wanted {
        tokio::time::sleep(Duration::from_millis(300 + random.below(600))).await;
        let at = random.below(3) as usize;
        let verb = if published[at] { "DROP" } else { "ADD" };
        client
            .batch_execute(&format!(
                "ALTER PUBLICATION tidepool_pub {verb} TABLE {}",
                SIDES[at]
            ))
            .await
            .unwrap();
        published[at] = !published[at];
        alters += 1;
    }
    sides.await.unwrap();
    // All back in: the final catch-up reads again whichever left last.
    for (at, side) in SIDES.iter().enumerate() {
        if !published[at] {
            client
                .batch_execute(&format!("ALTER PUBLICATION tidepool_pub ADD TABLE {side}"))
                .await
                .unwrap();
        }
    }
    let total = streaming.stop().await;
    eprintln!("torture publication: {total} changes, {alters} ALTER PUBLICATION statements");
    streaming.check(&source, total, false).await;
    for side in SIDES {
        let table: BTreeMap<i64, i64> = source
            .db
            .sql(&format!("SELECT id, n FROM {side} ORDER BY id;"))
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let (id, n) = l.split_once('|').unwrap();
                (id.trim().parse().unwrap(), n.trim().parse().unwrap())
            })
            .collect();
        let stored: BTreeMap<i64, i64> = source
            .rows(&format!("public/{side}"))
            .iter()
            .map(data)
            .map(|r| (r["id"].as_i64().unwrap(), r["n"].as_i64().unwrap()))
            .collect();
        assert_eq!(
            stored, table,
            "collection public/{side} differs from its table"
        );
    }
}

/// PostgreSQL restarted (fast and immediate, alternately) while the first backfill of a table reads
/// it under concurrent updates: the capture starts the backfill over and ends with the source's rows,
/// each stream change once, and each row backfilled at most once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarted_mid_backfill_ends_equal_to_the_source() {
    let (restarts_wanted, rows) = if long() { (6, 1_000_000) } else { (2, 100_000) };
    let seed = seed("postgres restarted mid-backfill");
    let _turn = ONE_AT_A_TIME.lock().await;
    let cluster: &'static Cluster = Box::leak(Box::new(
        Cluster::start(ClusterOptions::default()).expect("a cluster to restart"),
    ));
    let db = crate::harness::TestDb::new(cluster, "torture_backfill");
    db.sql(&format!(
        "CREATE TABLE t (id int PRIMARY KEY, version int NOT NULL); CREATE PUBLICATION bf_pub FOR TABLE t;
         INSERT INTO t SELECT g, 0 FROM generate_series(1, {rows}) g;"
    ));
    let store = crate::harness::temp_dir("torture_backfill");
    let options = |stop_at| crate::backfill::options(&db, &store, stop_at);
    let capture = tokio::spawn(run(options(None)));
    // Updates of random rows all along, paused while the server restarts.
    let gate: Arc<Gate> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (spec, gate, stop) = (db.spec(), gate.clone(), stop.clone());
        let mut random = Random(seed);
        tokio::spawn(async move {
            let mut client = tidepool::source::connection::connect(&spec).await.unwrap();
            while !stop.load(Ordering::SeqCst) {
                let _open = gate.0.read().await;
                if client.is_closed() {
                    client = tidepool::source::connection::connect(&spec).await.unwrap();
                }
                let id = 1 + random.below(rows) as i32;
                let sql = format!("UPDATE t SET version = version + 1 WHERE id = {id}");
                if client.batch_execute(&sql).await.is_err() {
                    // Closed while the gate was shut: nothing of it committed; again, anew.
                    client = tidepool::source::connection::connect(&spec).await.unwrap();
                    client.batch_execute(&sql).await.unwrap();
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    let mut random = Random(seed.rotate_left(41) | 1);
    for restart in 0..restarts_wanted {
        // Into the backfill: each restart lands while its rows are being read.
        tokio::time::sleep(Duration::from_millis(400 + random.below(800))).await;
        let shutdown = if restart % 2 == 0 {
            Shutdown::Fast
        } else {
            Shutdown::Immediate
        };
        let _closed = gate.0.write().await;
        tokio::task::block_in_place(|| cluster.restart(shutdown)).expect("restarting PostgreSQL");
    }
    // Until the backfill is done, or the capture gave up.
    let live = crate::backfill::wait_until_live(&store, "t", 0);
    tokio::pin!(live);
    let mut capture = capture;
    tokio::select! {
        _ = &mut live => {}
        ended = &mut capture => panic!("the capture gave up mid-backfill: {ended:?}"),
    }
    stop.store(true, Ordering::SeqCst);
    writer.await.unwrap();
    assert!(
        !capture.is_finished(),
        "the capture gave up: {:?}",
        capture.await
    );
    capture.abort();
    let _ = capture.await;
    let mut catch_up = options(Some(db.current_lsn()));
    catch_up.bindings.clear();
    run(catch_up).await.expect("catching up");
    crate::backfill::assert_same_rows(
        &crate::backfill::collection_rows(&store, "public/t"),
        &crate::backfill::table_rows(&db, "t"),
    );
    let backfilled = crate::backfill::assert_no_change_twice(&store, "public/t");
    assert!(backfilled <= rows, "{backfilled} rows backfilled of {rows}");
    eprintln!("torture restart mid-backfill: {rows} rows, {restarts_wanted} restarts, {backfilled} backfilled");
    drop(db);
    cluster.stop();
}

/// A TCP proxy between the capture and PostgreSQL that the test can cut (every connection reset)
/// or stall (nothing forwarded until released).
struct Proxy {
    port: u16,
    cuts: Arc<AtomicUsize>,
    stalled: Arc<AtomicBool>,
}

impl Proxy {
    async fn start(target: u16) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let cuts = Arc::new(AtomicUsize::new(0));
        let stalled = Arc::new(AtomicBool::new(false));
        let (c, s) = (cuts.clone(), stalled.clone());
        tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let (cuts, stalled) = (c.clone(), s.clone());
                tokio::spawn(async move {
                    let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await
                    else {
                        return;
                    };
                    let generation = cuts.load(Ordering::SeqCst);
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    let pipe =
                        |mut from: tokio::net::tcp::OwnedReadHalf,
                         mut to: tokio::net::tcp::OwnedWriteHalf| {
                            let (cuts, stalled) = (cuts.clone(), stalled.clone());
                            async move {
                                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                                let mut buf = vec![0u8; 64 * 1024];
                                loop {
                                    let n = tokio::select! {
                                        r = from.read(&mut buf) => match r { Ok(0) | Err(_) => return, Ok(n) => n },
                                        _ = tokio::time::sleep(Duration::from_millis(50)) => 0,
                                    };
                                    if cuts.load(Ordering::SeqCst) != generation {
                                        return;
                                    }
                                    while stalled.load(Ordering::SeqCst) {
                                        tokio::time::sleep(Duration::from_millis(20)).await;
                                    }
                                    if n > 0 && to.write_all(&buf[..n]).await.is_err() {
                                        return;
                                    }
                                }
                            }
                        };
                    // Either direction ending (or a cut) drops both halves: the connection resets.
                    tokio::select! {
                        _ = pipe(cr, sw) => {}
                        _ = pipe(sr, cw) => {}
                    }
                });
            }
        });
        Proxy {
            port,
            cuts,
            stalled,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_cut_and_stalled_by_a_proxy_lose_and_double_nothing() {
    let (faults_wanted, duration) = scale((4, 8), (25, 60));
    let seed = seed("proxy cut and stall");
    let _turn = ONE_AT_A_TIME.lock().await;
    let source = source(crate::harness::plain(), "torture_proxy");
    source.catch_up().await;
    let proxy = Proxy::start(source.db.cluster.port()).await;
    let mut streaming =
        Streaming::start(&source, seed, duration, Arc::default(), Some(proxy.port)).await;
    let mut random = Random(seed.rotate_left(23) | 1);
    let (mut cuts, mut stalls) = (0, 0);
    while !streaming.workload_done() || cuts + stalls < faults_wanted {
        tokio::time::sleep(Duration::from_millis(400 + random.below(800))).await;
        if random.below(3) == 0 {
            // A stall shorter than the capture's timeouts: it must ride it out.
            proxy.stalled.store(true, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(500 + random.below(1500))).await;
            proxy.stalled.store(false, Ordering::SeqCst);
            stalls += 1;
        } else {
            proxy.cuts.fetch_add(1, Ordering::SeqCst);
            cuts += 1;
        }
    }
    let total = streaming.stop().await;
    assert!(
        cuts + stalls >= faults_wanted,
        "only {cuts} cuts and {stalls} stalls"
    );
    eprintln!("torture proxy: {total} changes, {cuts} cuts, {stalls} stalls");
    streaming.check(&source, total, false).await;
}
