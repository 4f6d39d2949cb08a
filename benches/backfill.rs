//! Backfill benchmark against the physical limit, in one run, on one table:
//!
//! - the limit: `psql -c "COPY t TO STDOUT (FORMAT binary)" > /dev/null`, the fastest way PostgreSQL
//!   hands out a table's rows;
//! - Tidepool: `tidepool capture --tables public.t --stop-at-lsn …` into a fresh store: the slot
//!   created with its snapshot, the table read with COPY in that snapshot, a JSON document built for
//!   every row and committed durably (SQLite, WAL, `synchronous=FULL`), then the stream caught up.
//!
//! Reported: rows/s of both, the ratio Tidepool ÷ limit, and the Tidepool process's peak RSS.
//! Run: `cargo bench --bench backfill` (release build; `TIDEPOOL_BENCH_ROWS` changes the 5M rows).

mod support;

use std::process::{Command, Stdio};
use std::time::Instant;

fn main() {
    let rows: u64 = std::env::var("TIDEPOOL_BENCH_ROWS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(5_000_000);
    let cluster = support::cluster();
    let sql = |s: &str| cluster.psql("bench", s).expect("benchmark SQL");
    let started = Instant::now();
    sql(&format!(
        "CREATE TABLE t (id bigint PRIMARY KEY, h text NOT NULL, n int, at timestamptz NOT NULL);
         INSERT INTO t SELECT g, md5(g::text), (g % 1000)::int, '2026-01-01'::timestamptz + g * interval '1 second'
           FROM generate_series(1, {rows}) g;
         VACUUM ANALYZE t;
         CREATE PUBLICATION bench_pub FOR TABLE t;"
    ));
    eprintln!(
        "{rows} rows written in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let password = cluster.superuser_password();

    // The limit, twice: the first run warms the cache for both sides.
    let mut limit_secs = f64::MAX;
    for _ in 0..2 {
        let started = Instant::now();
        let status = Command::new(cluster.bin_dir().join("psql"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &cluster.port().to_string(),
                "-U",
                "postgres",
                "-d",
                "bench",
            ])
            .args(["-X", "-q", "-c", "COPY t TO STDOUT (FORMAT binary)"])
            .env("PGPASSWORD", password.expose())
            .stdout(Stdio::null())
            .status()
            .expect("running psql");
        assert!(status.success(), "psql COPY failed");
        limit_secs = limit_secs.min(started.elapsed().as_secs_f64());
    }

    let store =
        std::env::temp_dir().join(format!("tidepool-bench-backfill-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&store);
    let end = sql("SELECT pg_current_wal_lsn();").trim().to_string();
    let url = format!(
        "postgres://postgres@127.0.0.1:{}/bench?sslmode=disable",
        cluster.port()
    );
    let started = Instant::now();
    // Reaped by wait_with_rusage (wait4), which also reads its peak RSS.
    #[allow(clippy::zombie_processes)]
    let child = Command::new(env!("CARGO_BIN_EXE_tidepool"))
        .args(["capture", "--url", &url, "--store", store.to_str().unwrap()])
        .args(["--publication", "bench_pub", "--slot", "bench_backfill"])
        .args(["--tables", "public.t", "--stop-at-lsn", &end])
        .env("PGPASSWORD", password.expose())
        .stdout(Stdio::null())
        .stderr(if std::env::var_os("TIDEPOOL_BENCH_LOG").is_some() {
            Stdio::inherit()
        } else {
            Stdio::null()
        })
        .spawn()
        .expect("running tidepool capture");
    let (status, max_rss_kib, _) = support::wait_with_rusage(child.id() as i32);
    let tidepool_secs = started.elapsed().as_secs_f64();
    assert_eq!(status, 0, "tidepool capture failed");
    let stored = tidepool::store::Store::open(&store)
        .unwrap()
        .collections()
        .unwrap();
    assert_eq!(stored[0].rows, rows, "every row stored");
    let _ = std::fs::remove_dir_all(&store);

    let limit = rows as f64 / limit_secs;
    let ours = rows as f64 / tidepool_secs;
    println!("| table | psql COPY (binary) → /dev/null | Tidepool backfill → store (durable) | ratio | Tidepool peak RSS |");
    println!("|---|---|---|---|---|");
    println!(
        "| {rows} rows | {limit:.0} rows/s ({limit_secs:.2} s) | {ours:.0} rows/s ({tidepool_secs:.2} s) | {:.2}× | {:.0} MiB |",
        ours / limit,
        max_rss_kib as f64 / 1024.0
    );
}
