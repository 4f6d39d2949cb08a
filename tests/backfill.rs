//! The consistent backfill: rows read in the new slot's snapshot, then the stream from its consistent
//! point, under concurrent writes; nothing lost, nothing applied twice.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value as Json};
use tidepool::capture::{run, CaptureOptions};
use tidepool::pgoutput::Lsn;
use tidepool::store::Store;

use crate::capture::data;
use crate::harness::{self, TestDb};

fn options(db: &TestDb, store: &std::path::Path, stop_at: Option<Lsn>) -> CaptureOptions {
    CaptureOptions {
        spec: db.spec(),
        store_dir: store.to_path_buf(),
        publication: "bf_pub".into(),
        slot: db.name.clone(),
        create_slot: true,
        stop_at,
        observer: None,
        backfill: vec![("public".into(), "t".into())],
        backfill_progress: None,
    }
}

fn source_rows(db: &TestDb) -> BTreeMap<i64, Json> {
    db.sql("SELECT json_build_object('id', id, 'version', version) FROM t ORDER BY id;")
        .lines()
        .map(|l| serde_json::from_str::<Json>(l).unwrap())
        .map(|r| (r["id"].as_i64().unwrap(), r))
        .collect()
}

fn stored_rows(store: &std::path::Path) -> BTreeMap<i64, Json> {
    Store::open(store)
        .unwrap()
        .rows("public/t", 10_000_000)
        .unwrap()
        .iter()
        .map(data)
        .map(|r| (r["id"].as_i64().unwrap(), r))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_rows_backfill_under_concurrent_writes_without_gaps_or_doubles() {
    let db = TestDb::new(harness::plain(), "bf_million");
    db.sql("CREATE TABLE t (id int PRIMARY KEY, version int NOT NULL); CREATE PUBLICATION bf_pub FOR TABLE t;
            INSERT INTO t SELECT g, 0 FROM generate_series(1, 1000000) g; ANALYZE t;");
    let store = harness::temp_dir("bf_million");

    // Writers that insert, update and delete all through the backfill and after it.
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..2i32 {
        let spec = db.spec();
        let stop = stop.clone();
        writers.push(tokio::spawn(async move {
            let client = tidepool::connection::connect(&spec).await.unwrap();
            let mut n: i64 = 0;
            let mut next_new = 2_000_000 + w * 1_000_000;
            while !stop.load(Ordering::Relaxed) {
                let id = ((n * 7919 + i64::from(w) * 104_729) % 1_000_000 + 1) as i32;
                let sql = match n % 4 {
                    0 | 1 => format!("UPDATE t SET version = version + 1 WHERE id = {id}"),
                    2 => format!("DELETE FROM t WHERE id = {id}"),
                    _ => {
                        next_new += 1;
                        format!("INSERT INTO t VALUES ({next_new}, 0)")
                    }
                };
                client.batch_execute(&sql).await.unwrap();
                n += 1;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let capture = tokio::spawn(run(options(&db, &store, None)));
    // Let the writers run through the backfill and some streaming after it.
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let backfilled = Store::open(&store)
            .and_then(|s| s.checkpoint())
            .map(|c| c > Lsn(0))
            .unwrap_or(false);
        if backfilled || started.elapsed() > Duration::from_secs(240) {
            break;
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.await.unwrap();
    }
    eprintln!("backfill and writes took {:?}", started.elapsed());
    // Stop the open-ended run and catch up to now from its checkpoint.
    capture.abort();
    let _ = capture.await;
    let mut catch_up = options(&db, &store, Some(db.current_lsn()));
    catch_up.backfill.clear();
    let report = run(catch_up).await.unwrap();
    eprintln!("catch-up stored {} changes", report.changes);

    let expected = source_rows(&db);
    let stored = stored_rows(&store);
    assert_eq!(stored.len(), expected.len());
    let differing: Vec<_> = expected
        .iter()
        .filter(|(id, row)| stored.get(id) != Some(row))
        .take(5)
        .collect();
    assert!(
        differing.is_empty(),
        "rows differ from the source, e.g. {differing:?}"
    );

    // No change twice: each (op, id, version) once; each row backfilled at most once.
    let changes = Store::open(&store)
        .unwrap()
        .changes("public/t", 0, 10_000_000)
        .unwrap();
    let mut seen = HashSet::new();
    let mut backfilled = 0;
    for (_, doc) in &changes {
        let snapshot = doc["_meta"]["source"]["snapshot"] == json!(true);
        backfilled += u64::from(snapshot);
        let identity = json!([snapshot, doc["_meta"]["op"], doc["id"], doc["version"]]).to_string();
        assert!(seen.insert(identity.clone()), "stored twice: {identity}");
    }
    assert!(
        backfilled > 900_000 && backfilled <= 1_000_000,
        "{backfilled} rows backfilled"
    );
    std::fs::remove_dir_all(store).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_backfill_starts_over_cleanly() {
    let db = TestDb::new(harness::plain(), "bf_interrupt");
    db.sql("CREATE TABLE t (id int PRIMARY KEY, version int NOT NULL); CREATE PUBLICATION bf_pub FOR TABLE t;
            INSERT INTO t SELECT g, 0 FROM generate_series(1, 300000) g;");
    let store = harness::temp_dir("bf_interrupt");
    // A capture process killed with SIGKILL once it has read 100k rows of the backfill.
    let url = format!(
        "postgres://postgres@127.0.0.1:{}/{}?sslmode=disable",
        db.cluster.port(),
        db.name
    );
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tidepool"))
        .args([
            "capture",
            "--url",
            &url,
            "--store",
            store.to_str().unwrap(),
            "--publication",
            "bf_pub",
        ])
        .args(["--slot", &db.name, "--tables", "public.t"])
        .env("PGPASSWORD", db.cluster.superuser_password().expose())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut seen = Vec::new();
    for line in std::io::BufRead::lines(stderr) {
        let line = line.unwrap();
        let reached = line.contains("reading 100000 rows");
        seen.push(line);
        if reached {
            break;
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        seen.last()
            .is_some_and(|l| l.contains("reading 100000 rows")),
        "the backfill never reported 100k rows: {seen:?}"
    );
    assert_eq!(
        Store::open(&store).unwrap().checkpoint().unwrap(),
        Lsn(0),
        "the interrupted backfill left a checkpoint"
    );
    db.sql("UPDATE t SET version = 1 WHERE id <= 10;");
    tokio::time::sleep(Duration::from_millis(500)).await;

    let report = run(options(&db, &store, Some(db.current_lsn())))
        .await
        .unwrap();
    assert_eq!(report.backfilled_rows, 300_000);
    assert_eq!(stored_rows(&store), source_rows(&db));
    let info = &Store::open(&store).unwrap().collections().unwrap()[0];
    assert_eq!(
        info.changes, 300_000,
        "the first attempt's rows were not rolled back"
    );
    std::fs::remove_dir_all(store).unwrap();
}

#[tokio::test]
async fn an_existing_slot_is_refused_for_a_backfill_with_the_way_out() {
    let db = TestDb::new(harness::plain(), "bf_existing");
    db.sql("CREATE TABLE t (id int PRIMARY KEY, version int NOT NULL); CREATE PUBLICATION bf_pub FOR TABLE t;");
    db.sql(&format!(
        "SELECT pg_create_logical_replication_slot('{}', 'pgoutput');",
        db.name
    ));
    let store = harness::temp_dir("bf_existing");
    let err = run(options(&db, &store, Some(db.current_lsn())))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), tidepool::ErrorKind::InvalidInput);
    assert!(
        err.message().starts_with("slot:") && err.message().contains("--no-backfill"),
        "{}",
        err.message()
    );

    db.sql("CREATE TABLE unpublished (id int PRIMARY KEY);");
    let mut other = options(&db, &store, None);
    other.backfill = vec![("public".into(), "unpublished".into())];
    let err = run(other).await.unwrap_err();
    assert!(
        err.message()
            .contains("ALTER PUBLICATION \"bf_pub\" ADD TABLE \"public\".\"unpublished\""),
        "{}",
        err.message()
    );
    std::fs::remove_dir_all(store).unwrap();
}
