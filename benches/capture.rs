//! Capture benchmarks against the physical limit, in one run, on one cluster:
//!
//! 1. Throughput and CPU: `pg_recvlogical -f /dev/null` drains one slot, Tidepool (documents stored
//!    durably in SQLite) drains an identical slot created at the same moment. Workloads: one 1M-row
//!    transaction; 100k single-row transactions; 200k rows of a wide table (30 columns of mixed
//!    types) in one transaction; 20k rows with a 10 KB text column in one transaction. Reported as
//!    changes/s, the wall ratio Tidepool ÷ pg_recvlogical, and each process's own CPU per change
//!    (user + system from `wait4`: unlike wall time, it barely moves with the machine's load).
//! 2. Peak memory (max RSS) of the `tidepool capture` process for each workload.
//! 3. Commit-to-stored latency at a steady 1,000 transactions/s: from the source commit (the Begin
//!    message's commit time) to the store commit returning, p50 and p99.
//!
//! Run: `cargo bench --bench capture` (release build). Figures go to stdout as a Markdown table.
//! `TIDEPOOL_BENCH_ONLY=big,wide` runs only the named workloads (`big`, `small`, `wide`, `text10k`,
//! `latency`), for quicker before/after comparisons of one step. `TIDEPOOL_BENCH_PERF=DIR` records a
//! `perf` profile of each `tidepool capture` run into `DIR/<slot>.perf.data`; `TIDEPOOL_BENCH_STAT=DIR`
//! counts its reads, wake-ups and page writes (`perf stat` on [`SYSCALLS`]) into `DIR/<slot>.stat`.
//! `TIDEPOOL_BENCH_CALLGRIND=DIR` runs both processes under `valgrind --tool=callgrind` (output in
//! `DIR/<slot>.callgrind`) and adds the instructions each executes per change: unlike seconds, the
//! count repeats from run to run (this machine kind has no hardware counters for `perf stat`), so a
//! step of a few percent shows. Their seconds are then valgrind's, not theirs.

mod support;

use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tidepool::app::cluster::Cluster;
use tidepool::capture::{run, CaptureOptions, Observer};
use tidepool::source::pgoutput::Lsn;

/// The system calls `TIDEPOOL_BENCH_STAT` counts: socket reads and the waits before them, page writes
/// and syncs, and the receive mark's changes (bulk mode).
const SYSCALLS: &str = "syscalls:sys_enter_recvfrom,syscalls:sys_enter_epoll_wait,\
    syscalls:sys_enter_pwrite64,syscalls:sys_enter_fsync,syscalls:sys_enter_fdatasync,\
    syscalls:sys_enter_setsockopt,task-clock";

struct Bench {
    cluster: Cluster,
    db: &'static str,
}

/// `program` as it is to run: under callgrind, writing to `DIR/<slot>.callgrind`, when
/// `TIDEPOOL_BENCH_CALLGRIND=DIR` is set.
fn counted(program: &std::path::Path, slot: &str) -> (Command, Option<std::path::PathBuf>) {
    match std::env::var_os("TIDEPOOL_BENCH_CALLGRIND") {
        Some(dir) => {
            let out = std::path::Path::new(&dir).join(format!("{slot}.callgrind"));
            let mut valgrind = Command::new("valgrind");
            valgrind
                .args(["--tool=callgrind", "-q"])
                .arg(format!("--callgrind-out-file={}", out.display()))
                .arg(program);
            (valgrind, Some(out))
        }
        None => (Command::new(program), None),
    }
}

/// The instructions a callgrind run counted (its `summary:` line).
fn instructions(out: &std::path::Path) -> u64 {
    let text = std::fs::read_to_string(out).expect("reading callgrind's output");
    text.lines()
        .find_map(|l| l.strip_prefix("summary: "))
        .and_then(|n| n.split_whitespace().next()?.parse().ok())
        .expect("callgrind's output has a summary line")
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

    /// Seconds and CPU seconds `pg_recvlogical` takes to drain `slot` to /dev/null up to `end`, and
    /// the instructions it executed when counted ([`counted`]).
    fn pg_recvlogical(&self, slot: &str, end: Lsn) -> (f64, f64, Option<u64>) {
        let started = Instant::now();
        let (mut command, counted_in) =
            counted(&self.cluster.bin_dir().join("pg_recvlogical"), slot);
        // Reaped by wait_with_rusage (wait4), which also reads its CPU time.
        #[allow(clippy::zombie_processes)]
        let child = command
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
            .spawn()
            .expect("running pg_recvlogical");
        let (status, _, cpu_secs) = support::wait_with_rusage(child.id() as i32);
        assert_eq!(status, 0, "pg_recvlogical failed");
        (
            started.elapsed().as_secs_f64(),
            cpu_secs,
            counted_in.as_deref().map(instructions),
        )
    }

    /// Seconds, CPU seconds, peak RSS (MiB) and, when counted ([`counted`]), instructions of
    /// `tidepool capture` storing `slot` up to `end` in a
    /// fresh store.
    fn tidepool(&self, slot: &str, end: Lsn) -> (f64, f64, f64, Option<u64>) {
        let store =
            std::env::temp_dir().join(format!("tidepool-bench-{slot}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&store);
        let url = format!(
            "postgres://postgres@127.0.0.1:{}/{}?sslmode=disable",
            self.cluster.port(),
            self.db
        );
        let started = Instant::now();
        let mut counted_in = None;
        let mut command = match std::env::var_os("TIDEPOOL_BENCH_PERF") {
            // A profile of where the capture's CPU goes (perf's software clock, so it works in a VM);
            // its CPU figures then include perf's own.
            Some(dir) => {
                let mut perf = Command::new("perf");
                perf.args(["record", "-q", "-F", "2000", "-e", "cpu-clock", "-o"])
                    .arg(std::path::Path::new(&dir).join(format!("{slot}.perf.data")))
                    .arg("--")
                    .arg(env!("CARGO_BIN_EXE_tidepool"));
                perf
            }
            None => match std::env::var_os("TIDEPOOL_BENCH_STAT") {
                Some(dir) => {
                    let mut perf = Command::new("perf");
                    perf.args(["stat", "-e", SYSCALLS, "-o"])
                        .arg(std::path::Path::new(&dir).join(format!("{slot}.stat")))
                        .arg("--")
                        .arg(env!("CARGO_BIN_EXE_tidepool"));
                    perf
                }
                None => {
                    let (command, out) =
                        counted(std::path::Path::new(env!("CARGO_BIN_EXE_tidepool")), slot);
                    counted_in = out;
                    command
                }
            },
        };
        // Reaped by wait_with_rusage (wait4), which also reads its peak RSS and CPU time.
        #[allow(clippy::zombie_processes)]
        let child = command
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
        let (status, max_rss_kib, cpu_secs) = support::wait_with_rusage(child.id() as i32);
        let seconds = started.elapsed().as_secs_f64();
        assert_eq!(status, 0, "tidepool capture failed");
        let _ = std::fs::remove_dir_all(&store);
        (
            seconds,
            cpu_secs,
            max_rss_kib as f64 / 1024.0,
            counted_in.as_deref().map(instructions),
        )
    }
}

struct Row {
    workload: &'static str,
    changes: u64,
    limit_secs: f64,
    limit_cpu_secs: f64,
    tidepool_secs: f64,
    tidepool_cpu_secs: f64,
    rss_mib: f64,
    /// Instructions executed by pg_recvlogical and by Tidepool, when counted ([`counted`]).
    instructions: Option<(u64, u64)>,
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
    let (limit_secs, limit_cpu_secs, limit_ir) = bench.pg_recvlogical(&limit_slot, end);
    let (tidepool_secs, tidepool_cpu_secs, rss_mib, tidepool_ir) =
        bench.tidepool(&tidepool_slot, end);
    bench.sql(&format!("SELECT pg_drop_replication_slot('{limit_slot}'); SELECT pg_drop_replication_slot('{tidepool_slot}');"));
    Row {
        workload,
        changes,
        limit_secs,
        limit_cpu_secs,
        tidepool_secs,
        tidepool_cpu_secs,
        rss_mib,
        instructions: limit_ir.zip(tidepool_ir),
    }
}

/// Whether the workload `name` is to run (`TIDEPOOL_BENCH_ONLY` unset, or naming it).
fn selected(name: &str) -> bool {
    match std::env::var("TIDEPOOL_BENCH_ONLY") {
        Ok(only) => only.split(',').any(|n| n.trim() == name),
        Err(_) => true,
    }
}

/// 30 columns of mixed types: the JSON of every common mapping, per row.
const WIDE_TABLE: &str = "CREATE TABLE wide (
    id int PRIMARY KEY, i2 int2, i4 int4, i8 int8, nu numeric, nu2 numeric(12,2), r real, d float8,
    b bool, t text, vc varchar(40), ch char(8), dt date, tm time, tmtz timetz, ts timestamp,
    tstz timestamptz, iv interval, u uuid, jb jsonb, js json, by bytea, ai int4[], at text[],
    ip inet, mo money, t2 text, i8b int8, b2 bool, tstz2 timestamptz);";

const WIDE_ROWS: &str = "INSERT INTO wide SELECT g, (g % 30000)::int2, g * 7, g::int8 * 1000003,
    g::numeric / 7, (g % 100000)::numeric(12,2) / 3, g::real / 3, g::float8 / 7, g % 2 = 0,
    md5(g::text), 'name ' || g, 'c' || (g % 1000), date '2024-01-01' + g % 1000,
    time '00:00' + g * interval '1 ms', timetz '12:00+02', timestamp '2024-01-01' + g * interval '1 s',
    timestamptz '2024-01-01 00:00+00' + g * interval '1 ms', make_interval(secs => g),
    md5(g::text)::uuid, jsonb_build_object('a', g, 'b', md5(g::text), 'c', jsonb_build_array(1, 2.5, true)),
    json_build_object('x', g), decode(md5(g::text), 'hex'), ARRAY[g, g + 1, g + 2],
    ARRAY['a' || g, 'b \"q\"'], '10.0.0.1/24'::inet, (g % 10000)::numeric::money,
    repeat('x', g % 50), -g, g % 3 = 0, timestamptz '2000-01-01 00:00+00' - g * interval '1 day'
    FROM generate_series(1, 200000) g;";

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
    if std::env::var_os("TIDEPOOL_BENCH_CALLGRIND").is_some() {
        // Under valgrind a client answers the server's keepalives minutes late: the walsender
        // would take it for dead and end the stream.
        bench.sql("ALTER SYSTEM SET wal_sender_timeout = 0; SELECT pg_reload_conf();");
    }
    bench.sql(&format!(
        "CREATE TABLE big (id int PRIMARY KEY, h text);
         CREATE TABLE small (id bigserial PRIMARY KEY, h text);
         {WIDE_TABLE}
         CREATE TABLE text10k (id int PRIMARY KEY, body text);
         CREATE PUBLICATION bench_pub FOR TABLE big, small, wide, text10k;"
    ));

    let mut rows = Vec::new();
    if selected("big") {
        rows.push(throughput(
            &bench,
            "one 1M-row transaction",
            "big",
            "INSERT INTO big SELECT g, md5(g::text) FROM generate_series(1, 1000000) g;",
            1_000_000,
        ));
    }
    if selected("small") {
        rows.push(throughput(
            &bench,
            "100k single-row transactions",
            "small",
            "DO $$ BEGIN FOR i IN 1..100000 LOOP INSERT INTO small (h) VALUES (md5(i::text)); COMMIT; END LOOP; END $$;",
            100_000,
        ));
    }
    if selected("wide") {
        rows.push(throughput(
            &bench,
            "200k rows × 30 mixed columns, one transaction",
            "wide",
            WIDE_ROWS,
            200_000,
        ));
    }
    if selected("text10k") {
        // 320 × 32 hex digits: 10,240 bytes, below the large-value threshold, so stored inline.
        rows.push(throughput(
            &bench,
            "20k rows with a 10 KB text, one transaction",
            "text10k",
            "INSERT INTO text10k SELECT g, repeat(md5(g::text), 320) FROM generate_series(1, 20000) g;",
            20_000,
        ));
    }
    let latency = selected("latency").then(|| runtime.block_on(latency(&bench)));

    println!("| workload | pg_recvlogical → /dev/null | CPU/change | Tidepool → SQLite (durable) | CPU/change | wall ratio | Tidepool peak RSS |");
    println!("|---|---|---|---|---|---|---|");
    for row in &rows {
        let limit = row.changes as f64 / row.limit_secs;
        let ours = row.changes as f64 / row.tidepool_secs;
        let micros_per_change = |cpu_secs: f64| cpu_secs * 1e6 / row.changes as f64;
        println!(
            "| {} | {:.0} changes/s ({:.2} s) | {:.2} µs | {:.0} changes/s ({:.2} s) | **{:.2} µs** | **{:.2}×** | {:.0} MiB |",
            row.workload,
            limit,
            row.limit_secs,
            micros_per_change(row.limit_cpu_secs),
            ours,
            row.tidepool_secs,
            micros_per_change(row.tidepool_cpu_secs),
            ours / limit,
            row.rss_mib
        );
    }
    if rows.iter().any(|r| r.instructions.is_some()) {
        println!();
        println!("| workload | pg_recvlogical instructions/change | Tidepool instructions/change | ratio |");
        println!("|---|---|---|---|");
        for row in &rows {
            if let Some((limit, ours)) = row.instructions {
                let per_change = |n: u64| n as f64 / row.changes as f64;
                println!(
                    "| {} | {:.0} | **{:.0}** | {:.2}× |",
                    row.workload,
                    per_change(limit),
                    per_change(ours),
                    ours as f64 / limit as f64
                );
            }
        }
    }
    if let Some((p50, p99, samples)) = latency {
        println!();
        println!("Commit-to-stored latency at 1,000 transactions/s ({samples} transactions): p50 {p50:.2} ms, p99 {p99:.2} ms");
    }
}
