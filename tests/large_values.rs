//! A 100 MiB value through the capture, streamed or backfilled, and a transaction of millions of rows:
//! the `tidepool capture` process stays under 200 MiB peak memory, an unchanged value is stored once
//! however many changes carry it, and every reader still gets whole documents.

use std::process::{Command, Stdio};

use serde_json::{json, Value as Json};
use sha2::Digest;
use tidepool::store::Filter;

use crate::capture::Source;

/// The value's length: 3,276,800 md5 digests (barely compressible, so TOAST cannot shrink the WAL
/// much) after a prefix holding characters JSON escapes.
const PREFIX: &str = "\"quoted\"\n";
const DIGESTS: usize = 3_276_800;
const VALUE_BYTES: usize = PREFIX.len() + 32 * DIGESTS;
const PEAK_LIMIT_MIB: f64 = 200.0;

fn sha256_hex(text: &str) -> String {
    sha2::Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Runs `tidepool capture` in a child process up to `stop_at`, with `extra` arguments; returns its
/// peak RSS in MiB.
///
/// The peak is the child's own VmHWM, read from /proc while it runs (it only rises, so the last
/// reading before the exit holds all but the final milliseconds). Not wait4's ru_maxrss: Linux
/// carries the high-water mark of the memory a child was spawned with over its exec, and a child
/// spawned (vfork) by this test binary starts in the binary's memory, which the tests running beside
/// this one inflate by gigabytes.
fn capture_in_child(
    source: &Source,
    stop_at: tidepool::source::pgoutput::Lsn,
    extra: &[&str],
) -> f64 {
    let url = format!(
        "postgres://postgres@127.0.0.1:{}/{}?sslmode=disable",
        source.db.cluster.port(),
        source.db.name
    );
    let log = source.store.with_extension("log");
    // Reaped by wait4 below.
    #[allow(clippy::zombie_processes)]
    let child = Command::new(env!("CARGO_BIN_EXE_tidepool"))
        .args(["capture", "--url", &url, "--store"])
        .arg(&source.store)
        .args(["--publication", "tidepool_pub", "--slot", &source.slot])
        .args(["--stop-at-lsn", &stop_at.to_string()])
        .args(extra)
        .env(
            "PGPASSWORD",
            source.db.cluster.superuser_password().expose(),
        )
        .env_remove("PGPASSFILE")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("running tidepool capture");
    let pid = child.id() as i32;
    let status_file = format!("/proc/{pid}/status");
    let mut peak_kib = 0u64;
    let mut status = 0;
    // SAFETY: all zeroes is a valid rusage.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // Absent once the child has exited (a zombie has no memory left to report).
        let hwm = std::fs::read_to_string(&status_file).ok().and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        });
        if let Some(hwm) = hwm {
            peak_kib = peak_kib.max(hwm);
        }
        // SAFETY: our own child, with valid out-pointers.
        let waited = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
        assert!(waited >= 0, "wait4 failed");
        if waited == pid {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    let stderr = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_file(&log);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "tidepool capture failed: {stderr}"
    );
    assert!(peak_kib > 0, "no memory reading of tidepool capture");
    eprintln!(
        "capture: VmHWM {:.1} MiB; wait4's ru_maxrss {:.1} MiB (counts this binary's memory at the spawn)",
        peak_kib as f64 / 1024.0,
        usage.ru_maxrss as f64 / 1024.0
    );
    peak_kib as f64 / 1024.0
}

/// The store's files on disk: the database and its write-ahead log, snapshot files, everything in
/// the store's folder.
fn store_bytes(source: &Source) -> u64 {
    fn bytes(dir: &std::path::Path) -> u64 {
        std::fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| {
                let meta = e.metadata().unwrap();
                if meta.is_dir() {
                    bytes(&e.path())
                } else {
                    meta.len()
                }
            })
            .sum()
    }
    bytes(&source.store)
}

/// The document with its large value replaced by the value's hash, after checking the value is there.
fn with_value_hashed(doc: &Json, field: &str, expected_hash: &str) -> Json {
    let mut doc = doc.clone();
    let value = doc[field]
        .as_str()
        .unwrap_or_else(|| panic!("{field} is missing"));
    assert_eq!(value.len(), VALUE_BYTES, "{field}'s length");
    assert_eq!(sha256_hex(value), expected_hash, "{field}'s content");
    doc[field] = json!("<value>");
    doc
}

async fn large_value_is_captured_in_bounded_memory_and_stored_once(
    prefix: &str,
    full: bool,
    peak_limit_mib: Option<f64>,
) {
    let source = Source::new(
        prefix,
        "CREATE TABLE docs (id int PRIMARY KEY, n int, big text);",
    );
    if full {
        source.db.sql("ALTER TABLE docs REPLICA IDENTITY FULL;");
    }
    source.db.sql(&format!(
        "INSERT INTO docs SELECT 1, 0, E'\\\"quoted\\\"\\n' || string_agg(md5(g::text), '' ORDER BY g)
           FROM generate_series(1, {DIGESTS}) g;
         UPDATE docs SET n = 1 WHERE id = 1;
         UPDATE docs SET n = 2 WHERE id = 1;"
    ));
    let expected = source
        .db
        .sql("SELECT encode(sha256(convert_to(big, 'UTF8')), 'hex') FROM docs;")
        .trim()
        .to_string();
    let stop_at = source.db.current_lsn();

    let peak = capture_in_child(&source, stop_at, &[]);
    let stored = store_bytes(&source);
    eprintln!(
        "{prefix}: peak RSS {peak:.1} MiB, store {:.1} MiB for a {:.1} MiB value",
        stored as f64 / 1048576.0,
        VALUE_BYTES as f64 / 1048576.0
    );
    if let Some(limit) = peak_limit_mib {
        assert!(peak < limit, "the capture peaked at {peak:.1} MiB");
    }
    assert!(
        (stored as f64) < 1.5 * VALUE_BYTES as f64,
        "the store takes {stored} bytes for one {VALUE_BYTES}-byte value"
    );

    // Every reader gets whole documents.
    let changes = source.changes("public/docs");
    assert_eq!(changes.len(), 3);
    for (i, change) in changes.iter().enumerate() {
        let mut doc = with_value_hashed(change, "big", &expected);
        let meta = doc.as_object_mut().unwrap().remove("_meta").unwrap();
        assert_eq!(doc, json!({"id": 1, "n": i, "big": "<value>"}));
        assert_eq!(meta["op"], if i == 0 { "c" } else { "u" });
        assert!(meta.get("unknown").is_none(), "{meta}");
        if full && i > 0 {
            let before = with_value_hashed(&meta["before"], "big", &expected);
            assert_eq!(before, json!({"id": 1, "n": i - 1, "big": "<value>"}));
        }
    }
    let store = source.store();
    let rows = store.rows("public/docs", 10).unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0], changes[2], "the row is the last change");
    let page = store.rows_after("public/docs", None, 10, None).unwrap();
    assert_eq!((page[0].0.as_str(), &page[0].1), ("[1]", &changes[2]));
    // Filters read the value too, on the store's side.
    let filter = |field: &str, value: &str, contains| Filter {
        field: field.into(),
        value: value.into(),
        contains,
    };
    let found = store
        .changes_matching(
            "public/docs",
            0,
            10,
            Some(&filter("big", "\"quoted\"\n", true)),
        )
        .unwrap();
    assert_eq!(found.len(), 3, "a substring of the large value");
    let found = store
        .rows_after(
            "public/docs",
            None,
            10,
            Some(&filter("big", "not in it", true)),
        )
        .unwrap();
    assert!(found.is_empty());
    let found = store
        .latest_changes_matching("public/docs", 10, Some(&filter("n", "1", false)))
        .unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].1, changes[1]);
    if full {
        let found = store
            .changes_matching("public/docs", 0, 10, Some(&filter("_meta", "quoted", true)))
            .unwrap();
        assert_eq!(found.len(), 2, "the old rows' values in _meta.before");
    }
}

#[tokio::test]
async fn a_100_mib_value_updated_twice_is_captured_in_bounded_memory_and_stored_once() {
    large_value_is_captured_in_bounded_memory_and_stored_once(
        "large_default",
        false,
        Some(PEAK_LIMIT_MIB),
    )
    .await;
}

#[tokio::test]
async fn a_100_mib_value_with_replica_identity_full_is_captured_in_bounded_memory_and_stored_once()
{
    // Each update's message carries the old value too: the stream must not read the next ones
    // while one is stored.
    large_value_is_captured_in_bounded_memory_and_stored_once(
        "large_full",
        true,
        Some(PEAK_LIMIT_MIB),
    )
    .await;
}

/// The value backfilled (`capture --tables`), then updated twice with only another column changed:
/// both runs stay under the peak bound, the value is stored once, and readers get it back in the
/// snapshot's document and in both updates.
async fn large_value_backfilled_then_updated(prefix: &str, full: bool) {
    let identity = if full {
        "ALTER TABLE docs REPLICA IDENTITY FULL;"
    } else {
        ""
    };
    let source = Source::new(
        prefix,
        &format!(
            "CREATE TABLE docs (id int PRIMARY KEY, n int, big text); {identity}
             INSERT INTO docs SELECT 1, 0, E'\\\"quoted\\\"\\n' || string_agg(md5(g::text), '' ORDER BY g)
               FROM generate_series(1, {DIGESTS}) g;"
        ),
    );
    // The backfill creates its slot with its snapshot.
    source.db.sql(&format!(
        "SELECT pg_drop_replication_slot('{}');",
        source.slot
    ));
    let expected = source
        .db
        .sql("SELECT encode(sha256(convert_to(big, 'UTF8')), 'hex') FROM docs;")
        .trim()
        .to_string();
    let tables = ["--tables", "public.docs"];

    let backfill_peak = capture_in_child(&source, source.db.current_lsn(), &tables);
    let stored = store_bytes(&source);
    eprintln!(
        "{prefix}: backfill peak RSS {backfill_peak:.1} MiB, store {:.1} MiB",
        stored as f64 / 1048576.0
    );
    let changes = source.changes("public/docs");
    assert_eq!(changes.len(), 1);
    let doc = with_value_hashed(&changes[0], "big", &expected);
    assert_eq!(doc["_meta"]["op"], "c");
    assert_eq!(doc["_meta"]["source"]["snapshot"], true);

    source.db.sql(
        "UPDATE docs SET n = 1 WHERE id = 1;
         UPDATE docs SET n = 2 WHERE id = 1;",
    );
    let update_peak = capture_in_child(&source, source.db.current_lsn(), &tables);
    let stored = store_bytes(&source);
    eprintln!(
        "{prefix}: updates peak RSS {update_peak:.1} MiB, store {:.1} MiB for a {:.1} MiB value",
        stored as f64 / 1048576.0,
        VALUE_BYTES as f64 / 1048576.0
    );
    assert!(
        backfill_peak < PEAK_LIMIT_MIB,
        "the backfill peaked at {backfill_peak:.1} MiB"
    );
    assert!(
        update_peak < PEAK_LIMIT_MIB,
        "the updates after the backfill peaked at {update_peak:.1} MiB"
    );
    assert!(
        (stored as f64) < 1.5 * VALUE_BYTES as f64,
        "the store takes {stored} bytes for one {VALUE_BYTES}-byte value"
    );

    let changes = source.changes("public/docs");
    assert_eq!(changes.len(), 3);
    for (i, change) in changes.iter().enumerate() {
        let mut doc = with_value_hashed(change, "big", &expected);
        let meta = doc.as_object_mut().unwrap().remove("_meta").unwrap();
        assert_eq!(doc, json!({"id": 1, "n": i, "big": "<value>"}));
        assert_eq!(meta["op"], if i == 0 { "c" } else { "u" });
        assert!(meta.get("unknown").is_none(), "{meta}");
        if full && i > 0 {
            let before = with_value_hashed(&meta["before"], "big", &expected);
            assert_eq!(before, json!({"id": 1, "n": i - 1, "big": "<value>"}));
        }
    }
    let store = source.store();
    let rows = store.rows("public/docs", 10).unwrap();
    assert_eq!(rows, vec![changes[2].clone()], "the row is the last change");
    // Filters over the snapshot's row read the value too: a substring the line screen cannot see.
    let filter = |field: &str, value: &str| Filter {
        field: field.into(),
        value: value.into(),
        contains: true,
    };
    let digest = source.db.sql("SELECT md5('77');").trim().to_string();
    let found = store
        .changes_matching("public/docs", 0, 10, Some(&filter("big", &digest)))
        .unwrap();
    assert_eq!(
        found.len(),
        3,
        "a substring of the large value in every change"
    );
    let found = store
        .changes_matching("public/docs", 0, 10, Some(&filter("big", "not in it")))
        .unwrap();
    assert!(found.is_empty());
}

#[tokio::test]
async fn a_backfilled_100_mib_value_and_the_updates_after_it_stay_in_bounded_memory() {
    large_value_backfilled_then_updated("large_backfill", false).await;
}

#[tokio::test]
async fn a_backfilled_100_mib_value_with_replica_identity_full_stays_in_bounded_memory() {
    large_value_backfilled_then_updated("large_backfill_full", true).await;
}

/// A transaction of millions of rows (5M in the torture suite's long mode, `script/torture --long`;
/// 500k otherwise) arrives whole and once, and the capture stays under the 200 MiB memory goal while
/// it does: the server decodes it to disk, and the capture writes it row by row into one store batch
/// that commits with the transaction's end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_of_millions_of_rows_is_captured_whole_in_bounded_memory() {
    let rows: u64 = if crate::torture::long() {
        5_000_000
    } else {
        500_000
    };
    let source = Source::new(
        "lv_huge_tx",
        "CREATE TABLE big (id int PRIMARY KEY, h text);",
    );
    source.db.sql(&format!(
        "INSERT INTO big SELECT g, md5(g::text) FROM generate_series(1, {rows}) g;"
    ));
    let started = std::time::Instant::now();
    let peak = capture_in_child(&source, source.db.current_lsn(), &[]);
    eprintln!(
        "a {rows}-row transaction: captured in {:.1?}, peak RSS {peak:.1} MiB",
        started.elapsed()
    );
    let info = &source.store().collections().unwrap()[0];
    assert_eq!((info.rows, info.changes), (rows, rows));
    let last = source.store().changes("public/big", rows - 1, 1).unwrap();
    assert_eq!(last[0].1["id"], json!(rows));
    assert!(peak < 200.0, "the capture peaked at {peak:.1} MiB");
    let _ = std::fs::remove_dir_all(&source.store);
}
