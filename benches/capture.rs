//! Capture benchmarks against the physical limit, in one run, on one cluster:
//!
//! 1. Throughput: `pg_recvlogical -f /dev/null` drains one slot, Tidepool (documents stored durably in
//!    SQLite) drains an identical slot created at the same moment. Workloads: one 1M-row transaction;
//!    100k single-row transactions. Reported as changes/s and the ratio Tidepool ÷ pg_recvlogical.
//! 2. Peak memory (max RSS) of the `tidepool capture` process while it stores the 1M-row transaction.
//! 3. Commit-to-stored latency at a steady 1,000 transactions/s: from the source commit (the Begin
//!    message's commit time) to the store commit returning, p50 and p99.
//!
//! Run: `cargo bench --bench capture` (release build). Figures go to stdout as a Markdown table.

mod support;

use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tidepool::app::cluster::Cluster;
use tidepool::capture::{run, CaptureOptions, Observer};
use tidepool::source::pgoutput::Lsn;

struct Bench {
    cluster: Cluster,
    db: &'static str,
}

impl Bench {
    fn sql(&self, sql: &str) -> String {
        self.cluster.psql(self.db, sql).expect("benchmark SQL")
    }

    fn current_lsn(&self) -> Lsn {
        self.sql("SELECT pg_current_wal_lsn();")
            .trim()
            .parse()
            .unwrap()
    }

    fn create_slots(&self, names: &[&str]) {
        for name in names {
            self.sql(&format!(
                "SELECT pg_create_logical_replication_slot('{name}', 'pgoutput');"
            ));
        }
    }

    /// Seconds `pg_recvlogical` takes to drain `slot` to /dev/null up to `end`.
    fn pg_recvlogical(&self, slot: &str, end: Lsn) -> f64 {
        let started = Instant::now();
        let status = Command::new(self.cluster.bin_dir().join("pg_recvlogical"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.cluster.port().to_string(),
                "-U",
                "postgres",
                "-d",
                self.db,
            ])
            .args(["--slot", slot, "--start", "--no-loop", "-f", "/dev/null"])
            .args([
                "--endpos",
                &end.to_string(),
                "-o",
                "proto_version=1",
                "-o",
                "publication_names=bench_pub",
            ])
            .env("PGPASSWORD", self.cluster.superuser_password().expose())
            .stdout(Stdio::null())
            .status()
            .expect("running pg_recvlogical");
        assert!(status.success(), "pg_recvlogical failed");
        started.elapsed().as_secs_f64()
    }

    /// Seconds and peak RSS (MiB) of `tidepool capture` storing `slot` up to `end` in a fresh store.
    fn tidepool(&self, slot: &str, end: Lsn) -> (f64, f64) {
        let store =
            std::env::temp_dir().join(format!("tidepool-bench-{slot}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&store);
        let url = format!(
            "postgres://postgres@127.0.0.1:{}/{}?sslmode=disable",
            self.cluster.port(),
            self.db
        );
        let started = Instant::now();
        // Reaped by wait_with_rusage (wait4), which also reads its peak RSS.
        #[allow(clippy::zombie_processes)]
        let child = Command::new(env!("CARGO_BIN_EXE_tidepool"))
            .args([
                "capture",
                "--url",
                &url,
                "--store",
                store.to_str().unwrap(),
                "--publication",
                "bench_pub",
            ])
            .args(["--slot", slot, "--stop-at-lsn", &end.to_string()])
            .env("PGPASSWORD", self.cluster.superuser_password().expose())
            .stdout(Stdio::null())
            .spawn()
            .expect("running tidepool capture");
        let (status, max_rss_kib) = support::wait_with_rusage(child.id() as i32);
        let seconds = started.elapsed().as_secs_f64();
        assert_eq!(status, 0, "tidepool capture failed");
        let _ = std::fs::remove_dir_all(&store);
        (seconds, max_rss_kib as f64 / 1024.0)
    }
}

struct Row {
    workload: &'static str,
    changes: u64,
    limit_secs: f64,
    tidepool_secs: f64,
    rss_mib: f64,
}

fn throughput(bench: &Bench, workload: &'static str, table: &str, sql: &str, changes: u64) -> Row {
    let (limit_slot, tidepool_slot) = (format!("{table}_limit"), format!("{table}_tidepool"));
    bench.create_slots(&[&limit_slot, &tidepool_slot]);
    let started = Instant::now();
    bench.sql(sql);
    eprintln!(
        "{workload}: workload written in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let end = bench.current_lsn();
    let limit_secs = bench.pg_recvlogical(&limit_slot, end);
    let (tidepool_secs, rss_mib) = bench.tidepool(&tidepool_slot, end);
    bench.sql(&format!("SELECT pg_drop_replication_slot('{limit_slot}'); SELECT pg_drop_replication_slot('{tidepool_slot}');"));
    Row {
        workload,
        changes,
        limit_secs,
        tidepool_secs,
        rss_mib,
    }
}

async fn latency(bench: &Bench) -> (f64, f64, usize) {
    bench.sql("CREATE TABLE lat (id bigserial PRIMARY KEY, v text); ALTER PUBLICATION bench_pub ADD TABLE lat;");
    bench.create_slots(&["lat_tidepool"]);
    let store = std::env::temp_dir().join(format!("tidepool-bench-latency-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&store);
    let latencies = Arc::new(Mutex::new(Vec::<i64>::new()));
    let sink = latencies.clone();
    let observer = Observer(Arc::new(move |flush| {
        let mut sink = sink.lock().unwrap();
        sink.extend(
            flush
                .commit_times_micros
                .iter()
                .map(|c| flush.stored_at_micros - c),
        );
    }));
    let mut spec = bench.cluster.spec(bench.db);
    spec.application_name = "tidepool-bench".into();
    let options = CaptureOptions {
        spec: spec.clone(),
        store_dir: store.clone(),
        publication: "bench_pub".into(),
        slot: "lat_tidepool".into(),
        create_slot: false,
        stop_at: None,
        observer: Some(observer),
        bindings: Vec::new(),
        backfill_progress: None,
    };
    let capture = tokio::spawn(run(options));
    tokio::time::sleep(Duration::from_secs(1)).await;

    // A steady 1,000 single-row transactions per second for 10 s.
    let writer = tidepool::source::connection::connect(&spec).await.unwrap();
    let insert = writer
        .prepare("INSERT INTO lat (v) VALUES ($1)")
        .await
        .unwrap();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for i in 0..10_000 {
        tick.tick().await;
        writer
            .execute(&insert, &[&format!("row {i}")])
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    capture.abort();
    let _ = std::fs::remove_dir_all(&store);
    let mut latencies = latencies.lock().unwrap().clone();
    latencies.sort_unstable();
    let pick = |q: f64| latencies[((latencies.len() as f64 - 1.0) * q) as usize] as f64 / 1000.0;
    (pick(0.5), pick(0.99), latencies.len())
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let cluster = support::cluster();
    let bench = Bench {
        cluster,
        db: "bench",
    };
    bench.sql(
        "CREATE TABLE big (id int PRIMARY KEY, h text);
         CREATE TABLE small (id bigserial PRIMARY KEY, h text);
         CREATE PUBLICATION bench_pub FOR TABLE big, small;",
    );

    let rows = vec![
        throughput(&bench, "one 1M-row transaction", "big", "INSERT INTO big SELECT g, md5(g::text) FROM generate_series(1, 1000000) g;", 1_000_000),
        throughput(
            &bench,
            "100k single-row transactions",
            "small",
            "DO $$ BEGIN FOR i IN 1..100000 LOOP INSERT INTO small (h) VALUES (md5(i::text)); COMMIT; END LOOP; END $$;",
            100_000,
        ),
    ];
    let (p50, p99, samples) = runtime.block_on(latency(&bench));

    println!("| workload | pg_recvlogical → /dev/null | Tidepool → SQLite (durable) | ratio | Tidepool peak RSS |");
    println!("|---|---|---|---|---|");
    for row in &rows {
        let limit = row.changes as f64 / row.limit_secs;
        let ours = row.changes as f64 / row.tidepool_secs;
        println!(
            "| {} | {:.0} changes/s ({:.2} s) | {:.0} changes/s ({:.2} s) | {:.2}× | {:.0} MiB |",
            row.workload,
            limit,
            row.limit_secs,
            ours,
            row.tidepool_secs,
            ours / limit,
            row.rss_mib
        );
    }
    println!();
    println!("Commit-to-stored latency at 1,000 transactions/s ({samples} transactions): p50 {p50:.2} ms, p99 {p99:.2} ms");
}
