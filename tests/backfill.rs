//! The consistent backfill: rows read in the new slot's snapshot, then the stream from its consistent
//! point, under concurrent writes; nothing lost, nothing applied twice.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value as Json};
use tidepool::binding::Binding;
use tidepool::capture::{run, CaptureOptions};
use tidepool::source::pgoutput::Lsn;
use tidepool::store::Store;

use crate::capture::data;
use crate::harness::{self, TestDb};

/// A capture of `public.t` through `bf_pub` into `store`, creating the slot (named after the
/// database) with the snapshot its backfill reads.
pub(crate) fn options(
    db: &TestDb,
    store: &std::path::Path,
    stop_at: Option<Lsn>,
) -> CaptureOptions {
    CaptureOptions {
        spec: db.spec(),
        store_dir: store.to_path_buf(),
        publication: "bf_pub".into(),
        slot: db.name.clone(),
        create_slot: true,
        stop_at,
        observer: None,
        bindings: vec![Binding::new("public", "t")],
        backfill_progress: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_rows_backfill_under_concurrent_writes_without_gaps_or_doubles() {
    let db = TestDb::new(harness::plain(), "bf_million");
    db.sql("CREATE TABLE t (id int PRIMARY KEY, version int NOT NULL); CREATE PUBLICATION bf_pub FOR TABLE t;
            INSERT INTO t SELECT g, 0 FROM generate_series(1, 1000000) g; ANALYZE t;");
    let store = harness::temp_dir("bf_million");

    // Writers that insert, update and delete all through the backfill and after it.
    let stop = Arc::new(AtomicBool::new(false));
    let running = writers(&db, "t", 1_000_000, 2_000_000, &stop);
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
    for writer in running {
        writer.await.unwrap();
    }
    eprintln!("backfill and writes took {:?}", started.elapsed());
    // Stop the open-ended run and catch up to now from its checkpoint.
    capture.abort();
    let _ = capture.await;
    let mut catch_up = options(&db, &store, Some(db.current_lsn()));
    catch_up.bindings.clear();
    let report = run(catch_up).await.unwrap();
    eprintln!("catch-up stored {} changes", report.changes);

    assert_same_rows(&collection_rows(&store, "public/t"), &table_rows(&db, "t"));

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
    assert_same_rows(&collection_rows(&store, "public/t"), &table_rows(&db, "t"));
    let info = &Store::open(&store).unwrap().collections().unwrap()[0];
    assert_eq!(
        info.changes, 300_000,
        "the first attempt's rows were not rolled back"
    );
    std::fs::remove_dir_all(store).unwrap();
}

/// Sequin's guide creates the slot first (`pg_create_logical_replication_slot`) and then names it. Its
/// snapshot is gone by then, so a first capture on it reads the tables in a snapshot of its own (a
/// temporary slot at a transaction boundary), alongside the stream from the person's slot. Under
/// writes from before the capture starts until after its backfill, it ends equal to the source, with
/// every change once and every row backfilled at most once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_created_by_hand_backfills_in_a_snapshot_of_its_own_without_gaps_or_doubles() {
    let db = TestDb::new(harness::plain(), "bf_by_hand");
    db.sql(
        "CREATE TABLE t (id int PRIMARY KEY, version int NOT NULL); CREATE PUBLICATION bf_pub FOR TABLE t;
         INSERT INTO t SELECT g, 0 FROM generate_series(1, 50000) g;",
    );
    db.sql(&format!(
        "SELECT pg_create_logical_replication_slot('{}', 'pgoutput');",
        db.name
    ));
    let store = harness::temp_dir("bf_by_hand");
    let stop = Arc::new(AtomicBool::new(false));
    let running = writers(&db, "t", 50_000, 2_000_000, &stop);
    // Changes between the slot's creation and the capture's snapshot, then through the backfill.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut first = options(&db, &store, None);
    first.create_slot = false;
    // The writers go on until the backfill has read the table in its snapshot, and a while after:
    // those later writes can only arrive streamed. The capture is stopped only once it has stored
    // past the last write, so its backfill is in the store, not read again by the next run. (A
    // fixed sleep let a loaded machine stop it mid-backfill: the next run read the table again after
    // the writes, and nothing was left to stream.)
    let read = Arc::new(AtomicBool::new(false));
    let stored = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (seen, checkpoint) = (read.clone(), stored.clone());
    first.backfill_progress = Some(Arc::new(
        move |p: &tidepool::capture::backfill::BackfillProgress| {
            if p.done {
                seen.store(true, Ordering::Relaxed);
            }
        },
    ));
    first.observer = Some(tidepool::capture::Observer(Arc::new(
        move |f: &tidepool::capture::Flush| {
            checkpoint.fetch_max(f.checkpoint.0, Ordering::Relaxed);
        },
    )));
    let capture = tokio::spawn(run(first));
    let mut capture = capture;
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    capturing_until(&mut capture, deadline, "the backfill's read", || {
        read.load(Ordering::Relaxed)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    for writer in running {
        writer.await.unwrap();
    }
    let last_write = db.current_lsn().0;
    capturing_until(
        &mut capture,
        deadline,
        "storing past the last write",
        || stored.load(Ordering::Relaxed) >= last_write,
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !capture.is_finished(),
        "the capture ended: {:?}",
        capture.await
    );
    capture.abort();
    let _ = capture.await;
    let report = run(options(&db, &store, Some(db.current_lsn())))
        .await
        .unwrap();
    assert!(report.notices.is_empty(), "{:?}", report.notices);
    assert_same_rows(&collection_rows(&store, "public/t"), &table_rows(&db, "t"));
    let changes = Store::open(&store)
        .unwrap()
        .changes("public/t", 0, 10_000_000)
        .unwrap();
    let mut seen = HashSet::new();
    let (mut backfilled, mut streamed) = (0, 0);
    for (_, doc) in &changes {
        let snapshot = doc["_meta"]["source"]["snapshot"] == json!(true);
        if snapshot {
            backfilled += 1;
        } else {
            streamed += 1;
        }
        let identity = json!([snapshot, doc["_meta"]["op"], doc["id"], doc["version"]]).to_string();
        assert!(seen.insert(identity.clone()), "stored twice: {identity}");
    }
    assert!(backfilled > 40_000, "{backfilled} rows backfilled");
    assert!(
        streamed > 0,
        "no streamed change: the writes were not captured"
    );
    // The stream came from the person's slot, which the capture confirmed; the snapshot's temporary
    // slot goes with its session (the server ends it a moment after the connection closes).
    let slots = || {
        db.sql(&format!(
            "SELECT slot_name, confirmed_flush_lsn IS NOT NULL FROM pg_replication_slots WHERE database = '{}' ORDER BY 1;",
            db.name
        ))
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while slots().trim() != format!("{}|t", db.name) && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let slots = slots();
    assert_eq!(slots.trim(), format!("{}|t", db.name), "{slots}");
    assert!(db.current_lsn() >= Store::open(&store).unwrap().checkpoint().unwrap());

    // A table outside the publication is refused with the statement that adds it.
    db.sql("CREATE TABLE unpublished (id int PRIMARY KEY);");
    let mut other = options(&db, &store, None);
    other.bindings = vec![Binding::new("public", "unpublished")];
    let err = run(other).await.unwrap_err();
    assert!(
        err.message()
            .contains("ALTER PUBLICATION \"bf_pub\" ADD TABLE \"public\".\"unpublished\""),
        "{}",
        err.message()
    );
    std::fs::remove_dir_all(store).unwrap();
}

/// How long each writer pauses between statements. Paced, not flat out: two tests of a running
/// capture run side by side in this binary, each with four writers, against a debug build of the
/// capture. Unpaced, on a slower machine of the project's kind, the writers outran the captures and a
/// backfill never reached its snapshot point within four minutes. Paced, each writer still commits
/// hundreds of changes a second while a table is read.
const WRITER_PAUSE: Duration = Duration::from_millis(2);

/// Writers that insert, update and delete rows of `table` (ids 1..=rows, new ids above `base`) until
/// `stop` is set, each pausing [`WRITER_PAUSE`] between statements.
fn writers(
    db: &TestDb,
    table: &'static str,
    rows: i64,
    base: i64,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..2i64)
        .map(|w| {
            let spec = db.spec();
            let stop = stop.clone();
            tokio::spawn(async move {
                let client = tidepool::source::connection::connect(&spec).await.unwrap();
                let mut n: i64 = 0;
                let mut next_new = base + w * 1_000_000;
                while !stop.load(Ordering::Relaxed) {
                    let id = (n * 7919 + w * 104_729) % rows + 1;
                    let sql = match n % 4 {
                        0 | 1 => {
                            format!("UPDATE {table} SET version = version + 1 WHERE id = {id}")
                        }
                        2 => format!("DELETE FROM {table} WHERE id = {id}"),
                        _ => {
                            next_new += 1;
                            format!("INSERT INTO {table} VALUES ({next_new}, 0)")
                        }
                    };
                    client.batch_execute(&sql).await.unwrap();
                    n += 1;
                    tokio::time::sleep(WRITER_PAUSE).await;
                }
            })
        })
        .collect()
}

pub(crate) fn table_rows(db: &TestDb, table: &str) -> BTreeMap<i64, Json> {
    db.sql(&format!(
        "SELECT json_build_object('id', id, 'version', version) FROM {table} ORDER BY id;"
    ))
    .lines()
    .map(|l| serde_json::from_str::<Json>(l).unwrap())
    .map(|r| (r["id"].as_i64().unwrap(), r))
    .collect()
}

/// The stored rows equal the source's, or the first differences are shown (not whole tables).
pub(crate) fn assert_same_rows(stored: &BTreeMap<i64, Json>, source: &BTreeMap<i64, Json>) {
    let differing: Vec<_> = source
        .keys()
        .chain(stored.keys())
        .filter(|id| stored.get(id) != source.get(id))
        .take(5)
        .map(|id| (id, stored.get(id), source.get(id)))
        .collect();
    assert!(
        differing.is_empty(),
        "{} stored rows, {} in the source; (id, stored, source) e.g. {differing:?}",
        stored.len(),
        source.len()
    );
}

pub(crate) fn collection_rows(store: &std::path::Path, collection: &str) -> BTreeMap<i64, Json> {
    Store::open(store)
        .unwrap()
        .rows(collection, 10_000_000)
        .unwrap()
        .iter()
        .map(data)
        .map(|r| (r["id"].as_i64().unwrap(), r))
        .collect()
}

/// Every stream change (not a backfill document) of `collection` once, and the number of backfill
/// documents.
pub(crate) fn assert_no_change_twice(store: &std::path::Path, collection: &str) -> u64 {
    let changes = Store::open(store)
        .unwrap()
        .changes(collection, 0, 10_000_000)
        .unwrap();
    let mut seen = HashSet::new();
    let mut backfilled = 0;
    for (_, doc) in &changes {
        if doc["_meta"]["source"]["snapshot"] == json!(true) {
            backfilled += 1;
            continue;
        }
        let identity = json!([doc["_meta"]["op"], doc["id"], doc["version"]]).to_string();
        assert!(seen.insert(identity.clone()), "stored twice: {identity}");
    }
    backfilled
}

/// Lets the writers run a second more, stops them and the running capture, then catches up to now
/// from the store's checkpoint with the saved definition.
async fn stop_and_catch_up(
    db: &TestDb,
    store: &std::path::Path,
    stop: &AtomicBool,
    running: Vec<tokio::task::JoinHandle<()>>,
    capture: tokio::task::JoinHandle<tidepool::Result<tidepool::capture::CaptureReport>>,
) {
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    for writer in running {
        writer.await.unwrap();
    }
    capture.abort();
    let _ = capture.await;
    let mut catch_up = options(db, store, Some(db.current_lsn()));
    catch_up.bindings.clear();
    run(catch_up).await.unwrap();
}

/// Waits until the running capture's state lists every binding as live (no backfill in flight),
/// with `table` among them.
pub(crate) async fn wait_until_live(store: &std::path::Path, table: &str, backfill: u32) {
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let state: Option<Json> = Store::open(store)
            .unwrap()
            .meta("bindings_state")
            .unwrap()
            .map(|t| serde_json::from_str(&t).unwrap());
        if let Some(Json::Array(states)) = &state {
            let live = states.iter().all(|s| s["backfilling"].is_null());
            let there = states
                .iter()
                .any(|s| s["table"] == json!(table) && s["backfill"] == json!(backfill));
            if live && there {
                return;
            }
        }
        assert!(Instant::now() < deadline, "never live: {state:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_added_to_a_running_capture_arrives_without_gaps_or_doubles() {
    let db = TestDb::new(harness::plain(), "bf_add");
    db.sql(
        "CREATE TABLE a (id int PRIMARY KEY, version int NOT NULL);
            CREATE TABLE b (id int PRIMARY KEY, version int NOT NULL);
            CREATE PUBLICATION bf_pub FOR TABLE a;
            INSERT INTO a SELECT g, 0 FROM generate_series(1, 20000) g;
            INSERT INTO b SELECT g, 0 FROM generate_series(1, 300000) g; ANALYZE;",
    );
    let store = harness::temp_dir("bf_add");
    let stop = Arc::new(AtomicBool::new(false));
    let mut running = writers(&db, "a", 20_000, 100_000, &stop);
    running.extend(writers(&db, "b", 300_000, 2_000_000, &stop));

    let mut first = options(&db, &store, None);
    first.bindings = vec![Binding::new("public", "a")];
    let capture = tokio::spawn(run(first));
    wait_until_live(&store, "a", 0).await;

    // Bind b under another name while a streams and both tables are written to.
    let mut definition = tidepool::binding::Definition::load_from(&store).unwrap();
    let mut b = Binding::new("public", "b");
    b.collection = "shop/things".into();
    definition.bindings.push(b);
    let ran = tidepool::capture::publish(&db.spec(), &store, &definition)
        .await
        .unwrap();
    assert_eq!(
        ran,
        vec!["ALTER PUBLICATION \"bf_pub\" ADD TABLE \"public\".\"b\""]
    );
    wait_until_live(&store, "b", 0).await;
    assert!(!capture.is_finished(), "the capture stopped: {capture:?}");
    stop_and_catch_up(&db, &store, &stop, running, capture).await;

    assert_same_rows(&collection_rows(&store, "public/a"), &table_rows(&db, "a"));
    assert_same_rows(
        &collection_rows(&store, "shop/things"),
        &table_rows(&db, "b"),
    );
    assert_no_change_twice(&store, "public/a");
    let backfilled = assert_no_change_twice(&store, "shop/things");
    assert!(
        backfilled > 250_000 && backfilled <= 300_000,
        "{backfilled} rows of b backfilled"
    );
    std::fs::remove_dir_all(store).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_backfilled_again_while_capturing_ends_equal_to_the_source() {
    let db = TestDb::new(harness::plain(), "bf_again");
    db.sql(
        "CREATE TABLE a (id int PRIMARY KEY, version int NOT NULL);
            CREATE TABLE b (id int PRIMARY KEY, version int NOT NULL);
            CREATE PUBLICATION bf_pub FOR TABLE a, b;
            INSERT INTO a SELECT g, 0 FROM generate_series(1, 200000) g;
            INSERT INTO b SELECT g, 0 FROM generate_series(1, 5000) g; ANALYZE;",
    );
    let store = harness::temp_dir("bf_again");
    let stop = Arc::new(AtomicBool::new(false));
    let mut running = writers(&db, "a", 200_000, 1_000_000, &stop);
    running.extend(writers(&db, "b", 5_000, 100_000, &stop));
    let mut first = options(&db, &store, None);
    first.bindings = vec![Binding::new("public", "a"), Binding::new("public", "b")];
    let capture = tokio::spawn(run(first));
    wait_until_live(&store, "a", 0).await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    // What a user's "backfill again" does: raise the counter in the saved definition.
    let mut definition = tidepool::binding::Definition::load_from(&store).unwrap();
    definition.bindings[0].backfill += 1;
    definition.save(&mut Store::open(&store).unwrap()).unwrap();
    wait_until_live(&store, "a", 1).await;
    stop_and_catch_up(&db, &store, &stop, running, capture).await;

    assert_same_rows(&collection_rows(&store, "public/a"), &table_rows(&db, "a"));
    assert_same_rows(&collection_rows(&store, "public/b"), &table_rows(&db, "b"));
    assert_no_change_twice(&store, "public/b");
    let backfilled = assert_no_change_twice(&store, "public/a");
    assert!(
        backfilled > 350_000 && backfilled <= 400_000,
        "{backfilled} backfill documents for two reads of a"
    );
    std::fs::remove_dir_all(store).unwrap();
}

#[tokio::test]
async fn save_and_publish_creates_the_publication_and_slot_with_renames_and_per_table_modes() {
    let db = TestDb::new(harness::plain(), "bf_publish");
    db.sql(
        "CREATE TABLE a (id int PRIMARY KEY, version int NOT NULL);
            CREATE TABLE \"B table\" (id int PRIMARY KEY, version int NOT NULL);
            INSERT INTO a SELECT g, 0 FROM generate_series(1, 10) g;
            INSERT INTO \"B table\" SELECT g, 0 FROM generate_series(1, 10) g;",
    );
    let store = harness::temp_dir("bf_publish");
    let mut alpha = Binding::new("public", "a");
    alpha.collection = "shop/alpha".into();
    let mut b = Binding::new("public", "B table");
    b.mode = tidepool::binding::Mode::OnlyChanges;
    let mut definition = tidepool::binding::Definition {
        profile: None,
        publication: "new pub".into(),
        slot: db.name.clone(),
        bindings: vec![alpha, b],
    };
    assert_eq!(definition.bindings[1].collection, "public/B_table");

    // A bad name is refused before anything runs, naming the field.
    definition.bindings[0].collection = "shop alpha".into();
    let err = tidepool::capture::publish(&db.spec(), &store, &definition)
        .await
        .unwrap_err();
    assert!(
        err.message().starts_with("collection: 'shop alpha'"),
        "{err}"
    );
    assert_eq!(db.sql("SELECT count(*) FROM pg_publication;").trim(), "0");
    definition.bindings[0].collection = "shop/alpha".into();

    let ran = tidepool::capture::publish(&db.spec(), &store, &definition)
        .await
        .unwrap();
    assert_eq!(
        ran,
        vec!["CREATE PUBLICATION \"new pub\" FOR TABLE \"public\".\"a\", \"public\".\"B table\""]
    );
    // Publishing again has nothing left to do.
    assert!(tidepool::capture::publish(&db.spec(), &store, &definition)
        .await
        .unwrap()
        .is_empty());

    // The capture starts from the saved definition: the slot is created, a is backfilled, B is not.
    let mut start = options(&db, &store, Some(db.current_lsn()));
    start.publication = "new pub".into();
    start.bindings.clear();
    let report = run(start.clone()).await.unwrap();
    assert_eq!(report.backfilled_rows, 10);
    assert!(
        db.sql(&format!(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{}';",
            db.name
        ))
        .trim()
            == "1"
    );
    db.sql("INSERT INTO a VALUES (11, 0); INSERT INTO \"B table\" VALUES (11, 0);");
    start.stop_at = Some(db.current_lsn());
    run(start.clone()).await.unwrap();
    assert_eq!(collection_rows(&store, "shop/alpha").len(), 11);
    assert_eq!(
        collection_rows(&store, "public/B_table")
            .keys()
            .copied()
            .collect::<Vec<_>>(),
        vec![11],
        "only new changes of B"
    );

    // Renaming a published collection keeps its rows and history.
    let mut saved = tidepool::binding::Definition::load_from(&store).unwrap();
    saved.bindings[0].collection = "shop/a2".into();
    saved.save(&mut Store::open(&store).unwrap()).unwrap();
    db.sql("UPDATE a SET version = 5 WHERE id = 1;");
    start.stop_at = Some(db.current_lsn());
    run(start).await.unwrap();
    let renamed = collection_rows(&store, "shop/a2");
    assert_eq!(renamed.len(), 11);
    assert_eq!(renamed[&1]["version"], json!(5));
    let names: Vec<String> = Store::open(&store)
        .unwrap()
        .collections()
        .unwrap()
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert_eq!(names, vec!["public/B_table", "shop/a2"]);
    std::fs::remove_dir_all(store).unwrap();
}

#[test]
fn the_command_line_publishes_and_edits_bindings() {
    let db = TestDb::new(harness::plain(), "bf_cli");
    db.sql("CREATE TABLE t (id int PRIMARY KEY, version int NOT NULL); INSERT INTO t VALUES (1, 0), (2, 0);");
    let store = harness::temp_dir("bf_cli");
    let url = format!(
        "postgres://postgres@127.0.0.1:{}/{}?sslmode=disable",
        db.cluster.port(),
        db.name
    );
    let tidepool = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tidepool"))
            .args(args)
            .env("PGPASSWORD", db.cluster.superuser_password().expose())
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let store_arg = store.to_str().unwrap();
    let publish = |more: &[&str]| {
        let mut args = vec![
            "capture",
            "--url",
            &url,
            "--store",
            store_arg,
            "--publication",
            "cli_pub",
            "--slot",
            &db.name,
            "--tables",
            "public.t",
            "--collection",
            "public.t=shop/t",
            "--publish",
        ];
        args.extend_from_slice(more);
        tidepool(&args)
    };
    // --dry-run prints what Save and publish will do, in order, and runs none of it.
    let (ok, _, err) = publish(&["--dry-run"]);
    assert!(ok, "{err}");
    let plan: Vec<&str> = err
        .lines()
        .skip_while(|l| *l != "save and publish will:")
        .collect();
    assert_eq!(
        plan,
        vec![
            "save and publish will:",
            "  1. Update the publication \"cli_pub\": CREATE PUBLICATION \"cli_pub\" FOR TABLE \"public\".\"t\".",
            "  2. Save the capture definition (1 table).",
            &format!("  3. Create the slot \"{}\" with an exported snapshot.", db.name),
            "  4. Backfill \"public\".\"t\" in that snapshot.",
            "  5. Start the capture: it streams every change from the slot.",
        ],
        "{err}"
    );
    assert_eq!(
        db.sql(&format!(
            "SELECT (SELECT count(*) FROM pg_publication WHERE pubname = 'cli_pub') + (SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{}');",
            db.name
        ))
        .trim(),
        "0",
        "a dry run creates nothing"
    );
    let lsn = db.current_lsn().to_string();
    let (ok, _, err) = publish(&["--stop-at-lsn", &lsn]);
    assert!(ok, "{err}");
    assert!(err.contains("save and publish will:"), "{err}");
    assert!(
        err.contains("ran: CREATE PUBLICATION \"cli_pub\" FOR TABLE \"public\".\"t\""),
        "{err}"
    );
    assert_eq!(collection_rows(&store, "shop/t").len(), 2);

    let (ok, out, err) = tidepool(&["binding", "backfill", "--store", store_arg, "public.t"]);
    assert!(ok, "{err}");
    let (ok, out_json, _) = tidepool(&["binding", "list", "--store", store_arg, "--json"]);
    assert!(ok, "{out}");
    let listed: Json = serde_json::from_str(&out_json).unwrap();
    assert_eq!(listed["bindings"][0]["collection"], json!("shop/t"));
    assert_eq!(listed["bindings"][0]["backfill"], json!(1));

    let (ok, _, err) = tidepool(&[
        "binding", "rename", "--store", store_arg, "public.t", "bad name",
    ]);
    assert!(!ok);
    assert!(err.contains("collection: 'bad name'"), "{err}");
    let (ok, _, err) = tidepool(&["binding", "backfill", "--store", store_arg, "public.nope"]);
    assert!(
        !ok && err.contains("table: public.nope is not bound"),
        "{err}"
    );
    std::fs::remove_dir_all(store).unwrap();
}

#[test]
fn the_command_line_uses_the_profile_s_store_and_drops_a_removed_table_from_the_publication() {
    crate::profiles::require_keyring_session();
    let db = TestDb::new(harness::plain(), "bf_profile_cli");
    db.sql(
        "CREATE TABLE t (id int PRIMARY KEY, version int NOT NULL); INSERT INTO t VALUES (1, 0), (2, 0);
         CREATE TABLE \"U x\" (id int PRIMARY KEY, version int NOT NULL); INSERT INTO \"U x\" VALUES (1, 0);",
    );
    let dir = harness::temp_dir("bf_profile_cli");
    let url = format!(
        "postgres://postgres@127.0.0.1:{}/{}?sslmode=disable",
        db.cluster.port(),
        db.name
    );
    let tidepool = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tidepool"))
            .args(args)
            .env("TIDEPOOL_DATA_DIR", &dir)
            .env("PGPASSWORD", db.cluster.superuser_password().expose())
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, _, err) = tidepool(&[
        "profile",
        "add",
        "--name",
        "P",
        "--url",
        &url,
        "--publication",
        "p cli",
        "--slot",
        &db.name,
        "--plain-store",
    ]);
    assert!(ok, "{err}");
    let lsn = db.current_lsn().to_string();
    let (ok, _, err) = tidepool(&[
        "capture",
        "--profile",
        "P",
        "--tables",
        "public.t,public.U x",
        "--publish",
        "--stop-at-lsn",
        &lsn,
    ]);
    assert!(ok, "{err}");
    // No --store anywhere: every command reads the profile's own store, the one the app uses.
    let store = tidepool::app::profile::Profiles::open(&dir)
        .store_dir("P")
        .unwrap();
    assert_eq!(collection_rows(&store, "public/t").len(), 2);
    let (ok, out, err) = tidepool(&["collections", "--profile", "P", "--json"]);
    assert!(ok, "{err}");
    let listed: Json = serde_json::from_str(&out).unwrap();
    let mut names: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, vec!["public/U_x", "public/t"], "{out}");
    let (ok, out, err) = tidepool(&["preview", "--profile", "P", "public/t"]);
    assert!(ok, "{err}");
    assert_eq!(out.lines().count(), 2, "{out}");
    // --store overrides the profile's.
    let elsewhere = harness::temp_dir("bf_profile_cli_other");
    let (ok, _, err) = tidepool(&[
        "collections",
        "--profile",
        "P",
        "--store",
        elsewhere.to_str().unwrap(),
    ]);
    assert!(!ok, "an empty folder is not the profile's store");
    assert!(err.contains(elsewhere.to_str().unwrap()), "{err}");

    let published = || {
        db.sql("SELECT tablename FROM pg_publication_tables WHERE pubname = 'p cli' ORDER BY 1;")
            .lines()
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let bound = || {
        let (ok, out, err) = tidepool(&["binding", "list", "--profile", "P", "--json"]);
        assert!(ok, "{err}");
        let listed: Json = serde_json::from_str(&out).unwrap();
        listed["bindings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["table"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(published(), vec!["U x", "t"]);
    assert_eq!(bound(), vec!["t", "U x"]);
    // The dry run prints the statement, quoted, and changes nothing.
    let drop = r#"ALTER PUBLICATION "p cli" DROP TABLE "public"."U x""#;
    let (ok, out, err) = tidepool(&[
        "binding",
        "remove",
        "--profile",
        "P",
        "public.U x",
        "--drop-from-publication",
        "--dry-run",
    ]);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), drop);
    assert_eq!(published(), vec!["U x", "t"]);
    assert_eq!(bound(), vec!["t", "U x"]);
    // Without the profile there is no connection to alter the publication with.
    let (ok, _, err) = tidepool(&[
        "binding",
        "remove",
        "--store",
        store.to_str().unwrap(),
        "public.U x",
        "--drop-from-publication",
    ]);
    assert!(!ok && err.contains("--profile"), "{err}");
    assert_eq!(bound(), vec!["t", "U x"]);
    // For real: printed, then run; the binding and the publication's table are gone, the rest stays.
    let (ok, out, err) = tidepool(&[
        "binding",
        "remove",
        "--profile",
        "P",
        "public.U x",
        "--drop-from-publication",
    ]);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), drop);
    assert_eq!(published(), vec!["t"]);
    assert_eq!(bound(), vec!["t"]);
    // A plain remove leaves the publication alone.
    let (ok, out, err) = tidepool(&["binding", "remove", "--profile", "P", "public.t"]);
    assert!(ok, "{err}");
    assert!(out.trim().is_empty(), "{out}");
    assert_eq!(published(), vec!["t"]);

    db.sql(&format!("SELECT pg_drop_replication_slot('{}');", db.name));
    let (ok, _, err) = tidepool(&["profile", "remove", "P"]);
    assert!(ok, "{err}");
    std::fs::remove_dir_all(dir).unwrap();
    std::fs::remove_dir_all(elsewhere).unwrap();
}

/// Waits until `done`, failing if the `capture` ends first or `deadline` passes.
async fn capturing_until(
    capture: &mut tokio::task::JoinHandle<tidepool::Result<tidepool::capture::CaptureReport>>,
    deadline: std::time::Instant,
    what: &str,
    done: impl Fn() -> bool,
) {
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "{what} did not happen within 180 s"
        );
        if capture.is_finished() {
            panic!("the capture ended: {:?}", capture.await);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
