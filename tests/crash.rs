//! The crash test: `kill -9` the capture at random moments during a mixed insert/update/delete workload,
//! restart it, many times. At the end the current rows equal the source table exactly, and the change log
//! holds each source change exactly once.

use std::collections::{BTreeMap, HashSet};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value as Json};

use crate::capture::{data, Source};

/// A small xorshift generator: reproducible from the printed seed, no dependency.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_random_moments_loses_and_doubles_nothing() {
    let seed = std::env::var("TIDEPOOL_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("crash test seed: {seed} (rerun with TIDEPOOL_CRASH_SEED={seed})");
    let source = Source::new(
        "crash",
        "CREATE TABLE t (id int PRIMARY KEY, version int NOT NULL, payload text);",
    );
    let spec = source.db.spec();

    // The workload: single-row statements and small multi-statement transactions, counted exactly.
    let workload = tokio::spawn(async move {
        let client = tidepool::connection::connect(&spec).await.unwrap();
        let mut random = Random(seed);
        let mut live: Vec<i32> = Vec::new();
        let mut next_id = 1;
        let mut changes = 0u64;
        let deadline = Instant::now() + Duration::from_secs(8);
        while Instant::now() < deadline {
            let statements = if random.below(5) == 0 { 3 } else { 1 };
            let mut sql = String::from("BEGIN;");
            for _ in 0..statements {
                let choice = if live.is_empty() { 0 } else { random.below(10) };
                match choice {
                    0..=3 => {
                        // Some payloads are large enough to be TOASTed, so updates send them as unchanged.
                        let size = if random.below(4) == 0 { 5000 } else { 20 };
                        sql.push_str(&format!("INSERT INTO t VALUES ({next_id}, 1, repeat(md5('{next_id}'), {size} / 32 + 1));"));
                        live.push(next_id);
                        next_id += 1;
                    }
                    4..=7 => {
                        let id = live[random.below(live.len() as u64) as usize];
                        sql.push_str(&format!(
                            "UPDATE t SET version = version + 1 WHERE id = {id};"
                        ));
                    }
                    _ => {
                        let id = live.swap_remove(random.below(live.len() as u64) as usize);
                        sql.push_str(&format!("DELETE FROM t WHERE id = {id};"));
                    }
                }
            }
            sql.push_str("COMMIT;");
            client.batch_execute(&sql).await.unwrap();
            changes += statements as u64;
        }
        changes
    });

    // Capture processes killed with SIGKILL at random moments, over and over.
    let url = format!(
        "postgres://postgres@127.0.0.1:{}/{}?sslmode=disable",
        source.db.cluster.port(),
        source.db.name
    );
    let mut random = Random(seed.rotate_left(17) | 1);
    let mut kills = 0;
    while !workload.is_finished() {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tidepool"))
            .args([
                "capture",
                "--url",
                &url,
                "--store",
                source.store.to_str().unwrap(),
            ])
            .args(["--publication", "tidepool_pub", "--slot", &source.slot])
            .env(
                "PGPASSWORD",
                source.db.cluster.superuser_password().expose(),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        tokio::time::sleep(Duration::from_millis(150 + random.below(700))).await;
        child.kill().unwrap();
        child.wait().unwrap();
        kills += 1;
    }
    let total_changes = workload.await.unwrap();
    assert!(kills >= 5, "only {kills} kills happened");
    let report = source.catch_up().await;
    eprintln!(
        "{total_changes} source changes, {kills} kills; the final run stored {} and skipped {}",
        report.changes, report.skipped_transactions
    );

    // Each source change is in the log exactly once.
    let changes = source.changes("public/t");
    let mut seen = HashSet::new();
    for change in &changes {
        let identity = match change["_meta"]["op"].as_str().unwrap() {
            "d" => json!(["d", change["id"]]),
            op => json!([op, change["id"], change["version"]]),
        };
        assert!(
            seen.insert(identity.to_string()),
            "stored twice: {identity}"
        );
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
        .map(|r| (r["id"].as_i64().unwrap(), r))
        .collect();
    assert_eq!(stored_rows.len(), source_rows.len());
    for (id, row) in &source_rows {
        assert_eq!(stored_rows.get(id), Some(row), "row {id} differs");
    }
    assert!(source.confirmed_flush() <= source.store().checkpoint().unwrap());
}
