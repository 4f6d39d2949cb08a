//! What encryption at rest costs, in one run, on one cluster: the same work stored by `tidepool
//! capture` into a plain store and into an encrypted one (SQLCipher databases, AES-256-GCM snapshot
//! blocks, the key from the OS keychain), each in its own process so its peak RSS is its own.
//!
//! 1. Capture: one 500k-row transaction, and 50k single-row transactions, each drained from two slots
//!    created at the same moment (the order of plain and encrypted alternates between workloads).
//! 2. Backfill: a 1M-row table read into each store (a new slot each, `--create-slot`).
//!
//! Reported as seconds, the ratio encrypted ÷ plain (goal ≤ 1.15) and both peak RSS figures.
//!
//! Run: `script/keyring-session cargo bench --bench encryption` (release build; the encrypted store's
//! key lives in the Secret Service that script starts).

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use tidepool::app::cluster::Cluster;
use tidepool::secrets::Keychain;

struct Bench {
    cluster: Cluster,
    keychain: Keychain,
}

impl Bench {
    fn sql(&self, sql: &str) -> String {
        self.cluster.psql("bench", sql).expect("benchmark SQL")
    }

    fn current_lsn(&self) -> String {
        self.sql("SELECT pg_current_wal_lsn();").trim().to_string()
    }

    /// A fresh store folder, encrypted or not.
    fn store(&self, name: &str, encrypted: bool) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("tidepool-bench-enc-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        if encrypted {
            tidepool::store::encryption::create(&dir, &self.keychain)
                .expect("an encrypted store folder");
        }
        dir
    }

    /// Seconds and peak RSS (MiB) of `tidepool capture` with `args` into `store`.
    fn capture(&self, store: &Path, publication: &str, args: &[&str]) -> (f64, f64) {
        let url = format!(
            "postgres://postgres@127.0.0.1:{}/bench?sslmode=disable",
            self.cluster.port()
        );
        let started = Instant::now();
        // Reaped by wait_with_rusage (wait4), which also reads its peak RSS.
        #[allow(clippy::zombie_processes)]
        let child = Command::new(env!("CARGO_BIN_EXE_tidepool"))
            .args([
                "capture",
                "--url",
                &url,
                "--publication",
                publication,
                "--store",
            ])
            .arg(store)
            .args(args)
            .env("PGPASSWORD", self.cluster.superuser_password().expose())
            .stdout(Stdio::null())
            .spawn()
            .expect("running tidepool capture");
        let (status, max_rss_kib, _) = support::wait_with_rusage(child.id() as i32);
        let seconds = started.elapsed().as_secs_f64();
        assert_eq!(status, 0, "tidepool capture failed");
        (seconds, max_rss_kib as f64 / 1024.0)
    }

    fn forget(&self, store: &Path) {
        let _ = tidepool::store::encryption::forget(store, &self.keychain);
        let _ = std::fs::remove_dir_all(store);
    }
}

struct Row {
    workload: &'static str,
    plain: (f64, f64),
    sealed: (f64, f64),
}

/// The same stream stored plain and encrypted, from two slots created before `sql` ran.
fn stream(
    bench: &Bench,
    workload: &'static str,
    table: &str,
    sql: &str,
    sealed_first: bool,
) -> Row {
    let slots = [format!("{table}_plain"), format!("{table}_sealed")];
    for slot in &slots {
        bench.sql(&format!(
            "SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput');"
        ));
    }
    bench.sql(sql);
    let end = bench.current_lsn();
    let run = |encrypted: bool| {
        let slot = &slots[usize::from(encrypted)];
        let store = bench.store(slot, encrypted);
        let result = bench.capture(
            &store,
            "bench_pub",
            &["--slot", slot, "--stop-at-lsn", &end],
        );
        bench.forget(&store);
        eprintln!(
            "{workload}, encrypted {encrypted}: {:.2} s, {:.0} MiB",
            result.0, result.1
        );
        result
    };
    let (plain, sealed) = if sealed_first {
        let sealed = run(true);
        (run(false), sealed)
    } else {
        let plain = run(false);
        (plain, run(true))
    };
    for slot in &slots {
        bench.sql(&format!("SELECT pg_drop_replication_slot('{slot}');"));
    }
    Row {
        workload,
        plain,
        sealed,
    }
}

/// A table backfilled into each store (each capture creates its slot with a snapshot).
fn backfill(bench: &Bench, workload: &'static str) -> Row {
    let end = bench.current_lsn();
    let run = |encrypted: bool| {
        let slot = if encrypted { "bf_sealed" } else { "bf_plain" };
        let store = bench.store(slot, encrypted);
        let result = bench.capture(
            &store,
            "bf_pub",
            &[
                "--slot",
                slot,
                "--create-slot",
                "--tables",
                "public.bf",
                "--stop-at-lsn",
                &end,
            ],
        );
        bench.forget(&store);
        bench.sql(&format!("SELECT pg_drop_replication_slot('{slot}');"));
        eprintln!(
            "{workload}, encrypted {encrypted}: {:.2} s, {:.0} MiB",
            result.0, result.1
        );
        result
    };
    let plain = run(false);
    let sealed = run(true);
    Row {
        workload,
        plain,
        sealed,
    }
}

fn main() {
    let keychain = Keychain::open().expect(
        "the OS keychain (run under script/keyring-session): the encrypted store's key lives there",
    );
    let bench = Bench {
        cluster: support::cluster(),
        keychain,
    };
    bench.sql(
        "CREATE TABLE big (id int PRIMARY KEY, h text, note text);
         CREATE TABLE small (id bigserial PRIMARY KEY, h text);
         CREATE TABLE bf (id int PRIMARY KEY, h text, note text);
         INSERT INTO bf SELECT g, md5(g::text), 'customer ' || g || ' <c' || g || '@example.com>' FROM generate_series(1, 1000000) g;
         CREATE PUBLICATION bench_pub FOR TABLE big, small;
         CREATE PUBLICATION bf_pub FOR TABLE bf;",
    );
    let rows = [
        stream(
            &bench,
            "capture: one 500k-row transaction",
            "big",
            "INSERT INTO big SELECT g, md5(g::text), 'customer ' || g FROM generate_series(1, 500000) g;",
            false,
        ),
        stream(
            &bench,
            "capture: 50k single-row transactions",
            "small",
            "DO $$ BEGIN FOR i IN 1..50000 LOOP INSERT INTO small (h) VALUES (md5(i::text)); COMMIT; END LOOP; END $$;",
            true,
        ),
        backfill(&bench, "backfill: 1M-row table"),
    ];
    println!("| workload | plain | encrypted | ratio encrypted ÷ plain | peak RSS plain | peak RSS encrypted |");
    println!("|---|---|---|---|---|---|");
    for row in &rows {
        println!(
            "| {} | {:.2} s | {:.2} s | {:.2} | {:.0} MiB | {:.0} MiB |",
            row.workload,
            row.plain.0,
            row.sealed.0,
            row.sealed.0 / row.plain.0,
            row.plain.1,
            row.sealed.1
        );
    }
}
