//! The store never silently diverges from its source: a slot that cannot send every change after the
//! checkpoint is refused with `Diverged` (dropped, recreated, invalidated, another database), a resync
//! records the gap and re-reads the tables, and faults around the store (a full disk, hostile input,
//! the final confirmation) end with the store equal to the source or a clear error.

use std::collections::BTreeMap;

use serde_json::Value as Json;
use tidepool::binding::Binding;
use tidepool::capture::run;
use tidepool::source::continuity;
use tidepool::ErrorKind;

use crate::capture::Source;
use crate::harness::{self, TestDb};

/// The source table's rows as id → v.
fn source_rows(db: &TestDb) -> BTreeMap<i64, String> {
    table_rows(db, "t")
}

/// Table `table`'s rows as id → v.
fn table_rows(db: &TestDb, table: &str) -> BTreeMap<i64, String> {
    db.sql(&format!("SELECT id, v FROM {table} ORDER BY id;"))
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let (id, v) = l.split_once('|').expect("id|v");
            (id.trim().parse().unwrap(), v.trim().to_string())
        })
        .collect()
}

/// The collection's current rows as id → v.
fn store_rows(source: &Source, collection: &str) -> BTreeMap<i64, String> {
    source
        .rows(collection)
        .into_iter()
        .map(|d| {
            (
                d["id"].as_i64().expect("an integer id"),
                d["v"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// A source whose table `t` is bound with a backfill, the slot created by the capture's snapshot.
async fn backfilled_source(prefix: &str) -> Source {
    let source = Source::new(
        prefix,
        "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'a'), (2, 'b');",
    );
    source.db.sql(&format!(
        "SELECT pg_drop_replication_slot('{}');",
        source.slot
    ));
    let mut options = source.options(Some(source.db.current_lsn()));
    options.bindings = vec![Binding::new("public", "t")];
    options.create_slot = true;
    let report = run(options).await.expect("the first capture");
    assert_eq!(report.backfilled_rows, 2);
    source
}

#[tokio::test]
async fn a_slot_dropped_and_created_again_is_refused_and_resync_closes_the_gap() {
    let source = backfilled_source("cont_recreated").await;
    source.db.sql("INSERT INTO t VALUES (3, 'c');");
    source.catch_up().await;
    assert_eq!(store_rows(&source, "public/t"), source_rows(&source.db));

    // Behind Tidepool's back: the slot goes, rows change, and the slot comes back.
    source.db.sql(&format!(
        "SELECT pg_drop_replication_slot('{}');",
        source.slot
    ));
    source
        .db
        .sql("UPDATE t SET v = 'B' WHERE id = 2; DELETE FROM t WHERE id = 1; INSERT INTO t VALUES (4, 'd');");
    let before = store_rows(&source, "public/t");

    // Missing: refused even with create_slot, and no slot is created behind the person's back.
    let mut options = source.options(Some(source.db.current_lsn()));
    options.create_slot = true;
    let err = run(options).await.expect_err("a missing slot is a gap");
    assert_eq!(err.kind(), ErrorKind::Diverged, "{err}");
    assert!(err.message().contains("no longer exists"), "{err}");
    assert!(err.message().contains("--resync"), "{err}");
    assert!(
        source
            .db
            .sql(&format!(
                "SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{}';",
                source.slot
            ))
            .trim()
            == "0",
        "the refusal created the slot"
    );

    // Created again by hand (as the old advice said): ahead of the store, refused.
    source.db.sql(&format!(
        "SELECT pg_create_logical_replication_slot('{}', 'pgoutput');",
        source.slot
    ));
    source.db.sql("INSERT INTO t VALUES (5, 'e');");
    let mut options = source.options(Some(source.db.current_lsn()));
    options.create_slot = true;
    let err = run(options).await.expect_err("a recreated slot is a gap");
    assert_eq!(err.kind(), ErrorKind::Diverged, "{err}");
    assert!(
        err.message().contains("past the store's checkpoint"),
        "{err}"
    );
    assert_eq!(
        store_rows(&source, "public/t"),
        before,
        "a refusal stores nothing"
    );

    // The way out: the gap is recorded, t is read again, and the stream goes on.
    let done = continuity::resync(&source.db.spec(), &source.store, &source.slot)
        .await
        .expect("resync");
    assert!(!done.slot_created);
    assert_eq!(done.gap.rebackfilled, vec!["public/t".to_string()]);
    assert!(done.gap.reason.contains("past the store's checkpoint"));
    source.db.sql("INSERT INTO t VALUES (6, 'f');");
    source.catch_up().await;
    assert_eq!(store_rows(&source, "public/t"), source_rows(&source.db));
    let gaps = continuity::gaps(&source.store()).unwrap();
    assert_eq!(gaps.len(), 1);
    assert_eq!(gaps[0], done.gap);
    // The changes after the new slot's start are in the log once each.
    let logged: Vec<Json> = source
        .changes("public/t")
        .into_iter()
        .filter(|d| d["id"] == 6 || d["id"] == 5)
        .filter(|d| d["_meta"]["source"]["snapshot"] != true)
        .collect();
    assert_eq!(logged.len(), 2, "{logged:?}");

    // Nothing is lost any more: a second resync has nothing to do.
    let err = continuity::resync(&source.db.spec(), &source.store, &source.slot)
        .await
        .expect_err("nothing to resync");
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(err.message().starts_with("resync:"), "{err}");
}

#[tokio::test]
async fn resync_creates_a_missing_slot() {
    let source = backfilled_source("cont_missing").await;
    source.db.sql(&format!(
        "SELECT pg_drop_replication_slot('{}');",
        source.slot
    ));
    source
        .db
        .sql("DELETE FROM t WHERE id = 2; INSERT INTO t VALUES (7, 'g');");
    let done = continuity::resync(&source.db.spec(), &source.store, &source.slot)
        .await
        .expect("resync");
    assert!(done.slot_created);
    assert!(done.gap.reason.contains("no longer exists"));
    source.catch_up().await;
    assert_eq!(store_rows(&source, "public/t"), source_rows(&source.db));
}

#[tokio::test]
async fn a_store_is_refused_against_another_database() {
    let source = backfilled_source("cont_otherdb").await;
    let other = TestDb::new(harness::plain(), "cont_otherdb_b");
    other.sql("CREATE TABLE t (id int PRIMARY KEY, v text); CREATE PUBLICATION tidepool_pub FOR ALL TABLES;");
    let slot = other.name.clone();
    other.sql(&format!(
        "SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput');"
    ));
    let mut options = source.options(Some(other.current_lsn()));
    options.spec = other.spec();
    options.slot = slot;
    let err = run(options).await.expect_err("another database");
    assert_eq!(err.kind(), ErrorKind::Diverged, "{err}");
    assert!(err.message().contains(&source.db.name), "{err}");
}

#[tokio::test]
async fn a_slot_invalidated_while_the_capture_runs_is_named_as_such() {
    let db = TestDb::new(harness::small_wal(), "cont_invalid");
    db.sql("CREATE TABLE t (id int PRIMARY KEY, v text); CREATE PUBLICATION tidepool_pub FOR ALL TABLES;");
    let slot = db.name.clone();
    db.sql(&format!(
        "SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput');"
    ));
    let store = harness::temp_dir("cont_invalid");
    let options = tidepool::capture::CaptureOptions {
        spec: db.spec(),
        store_dir: store.clone(),
        publication: "tidepool_pub".into(),
        slot: slot.clone(),
        create_slot: false,
        stop_at: None,
        observer: None,
        bindings: Vec::new(),
        backfill_progress: None,
    };
    db.sql("INSERT INTO t VALUES (1, 'a');");
    let capture = tokio::spawn(run(options));
    // An open transaction holds the slot's restart_lsn back while the capture keeps up.
    let (holder, connection) = tokio_postgres::connect(
        &format!(
            "host=127.0.0.1 port={} user=postgres password={} dbname={}",
            db.cluster.port(),
            db.cluster.superuser_password().expose(),
            db.name
        ),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    holder
        .batch_execute("BEGIN; INSERT INTO t VALUES (2, 'held');")
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    // Past max_slot_wal_keep_size (1 MB): four segment switches, then a checkpoint invalidates it.
    for i in 0..4 {
        db.sql(&format!(
            "INSERT INTO t VALUES ({}, 'x'); SELECT pg_switch_wal();",
            10 + i
        ));
    }
    db.sql("CHECKPOINT;");
    let status = db.sql(&format!(
        "SELECT wal_status FROM pg_replication_slots WHERE slot_name = '{slot}';"
    ));
    assert_eq!(
        status.trim(),
        "lost",
        "the test did not invalidate the slot"
    );
    let err = tokio::time::timeout(std::time::Duration::from_secs(60), capture)
        .await
        .expect("the capture ends")
        .unwrap()
        .expect_err("an invalidated slot ends the capture");
    assert_eq!(err.kind(), ErrorKind::Diverged, "{err}");
    assert!(err.message().contains("invalidated"), "{err}");
    drop(holder);
    let _ = std::fs::remove_dir_all(&store);
}

/// A bound table that leaves the publication while the capture runs is never a silent gap (pgoutput
/// just stops sending its changes): the capture stops with `Diverged`, naming the table, the statement
/// that puts it back and what a re-backfill will do, and is refused the same way while the table is
/// out. Back in, the next start reads it again, and both collections equal their tables.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bound_table_leaving_the_publication_stops_the_capture_and_is_read_again_when_back() {
    let db = TestDb::new(harness::plain(), "cont_unpub");
    db.sql(
        "CREATE TABLE t (id int PRIMARY KEY, v text); CREATE TABLE u (id int PRIMARY KEY, v text);
         INSERT INTO t VALUES (1, 'a'); INSERT INTO u VALUES (1, 'a'), (2, 'b');
         CREATE PUBLICATION tidepool_pub FOR TABLE t, u;",
    );
    let source = Source {
        slot: db.name.clone(),
        store: harness::temp_dir("cont_unpub"),
        db,
    };
    let options = |stop_at| {
        let mut options = source.options(stop_at);
        options.create_slot = true;
        options.bindings = vec![Binding::new("public", "t"), Binding::new("public", "u")];
        options
    };
    run(options(Some(source.db.current_lsn())))
        .await
        .expect("the first capture");

    // Streaming: u leaves the publication while both tables change.
    let capture = tokio::spawn(run(options(None)));
    source
        .db
        .sql("INSERT INTO u VALUES (3, 'c'); INSERT INTO t VALUES (2, 'b');");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while store_rows(&source, "public/u").len() < 3 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(store_rows(&source, "public/u"), table_rows(&source.db, "u"));
    source
        .db
        .sql("ALTER PUBLICATION tidepool_pub DROP TABLE u;");
    source.db.sql(
        "UPDATE u SET v = 'B' WHERE id = 2; DELETE FROM u WHERE id = 1; INSERT INTO t VALUES (3, 'c');",
    );
    let err = tokio::time::timeout(std::time::Duration::from_secs(30), capture)
        .await
        .expect("the capture notices within its poll")
        .unwrap()
        .expect_err("a bound table out of the publication ends the capture");
    assert_eq!(err.kind(), ErrorKind::Diverged, "{err}");
    for said in [
        "\"public\".\"u\" left publication \"tidepool_pub\"",
        "ALTER PUBLICATION \"tidepool_pub\" ADD TABLE \"public\".\"u\"",
        "collection public/u is then read again from the table (a re-backfill)",
    ] {
        assert!(err.message().contains(said), "{said} not in: {err}");
    }

    // Started again while u is still out: refused the same way, not streamed past the gap.
    let err = run(options(Some(source.db.current_lsn())))
        .await
        .expect_err("still out of the publication");
    assert_eq!(err.kind(), ErrorKind::Diverged, "{err}");
    assert!(err.message().contains("left publication"), "{err}");

    // Back in: the next start reads u again (its changes while out are in the new rows), and the
    // stream goes on for both.
    source.db.sql(
        "ALTER PUBLICATION tidepool_pub ADD TABLE u; UPDATE u SET v = 'C' WHERE id = 3; INSERT INTO t VALUES (4, 'd');",
    );
    let report = run(options(Some(source.db.current_lsn())))
        .await
        .expect("the capture after u is back");
    assert!(
        report
            .notices
            .iter()
            .any(|n| n.contains("\"public\".\"u\" is in publication \"tidepool_pub\" again")),
        "{:?}",
        report.notices
    );
    assert_eq!(store_rows(&source, "public/u"), table_rows(&source.db, "u"));
    assert_eq!(store_rows(&source, "public/t"), source_rows(&source.db));
    // Once read again, the next start streams on without a word about u.
    source.db.sql("UPDATE u SET v = 'D' WHERE id = 2;");
    let report = run(options(Some(source.db.current_lsn())))
        .await
        .expect("a later capture");
    assert!(report.notices.is_empty(), "{:?}", report.notices);
    assert_eq!(store_rows(&source, "public/u"), table_rows(&source.db, "u"));
}

#[tokio::test]
async fn a_stop_at_lsn_run_confirms_its_last_checkpoint_before_exiting() {
    let source = Source::new(
        "cont_confirm",
        "CREATE TABLE t (id int PRIMARY KEY, v text);",
    );
    source.db.sql("INSERT INTO t VALUES (1, 'a');");
    source.catch_up().await;
    let checkpoint = source.store().checkpoint().unwrap();
    assert_eq!(
        source.confirmed_flush(),
        checkpoint,
        "the slot was left behind the stored checkpoint"
    );
}

#[tokio::test]
async fn bad_slot_names_are_refused_naming_the_slot() {
    let source = Source::new("cont_slotname", "CREATE TABLE t (id int PRIMARY KEY);");
    for bad in ["MySlot", "my slot", "slöt", &"s".repeat(64), ""] {
        let mut options = source.options(None);
        options.slot = bad.to_string();
        let err = run(options).await.expect_err(bad);
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{bad}: {err}");
        assert!(err.message().starts_with("slot:"), "{bad}: {err}");
    }
}

/// A field's name and how to spoil it.
type Spoiler = (
    &'static str,
    Box<dyn Fn(&mut tidepool::source::connection::ConnectionSpec)>,
);

#[tokio::test]
async fn hostile_connection_values_are_refused_naming_the_field() {
    let db = TestDb::new(harness::plain(), "cont_hostile");
    let cases: Vec<Spoiler> = vec![
        ("user", Box::new(|s| s.user = "u\0x".into())),
        ("dbname", Box::new(|s| s.database = "d\0b".into())),
        (
            "application_name",
            Box::new(|s| s.application_name = "a\0b".into()),
        ),
        ("dbname", Box::new(|s| s.database = "d".repeat(100_000))),
        ("user", Box::new(|s| s.user = "u".repeat(64))),
        (
            "connect_timeout",
            Box::new(|s| s.connect_timeout = std::time::Duration::from_secs(u64::MAX)),
        ),
    ];
    for (field, change) in cases {
        let mut spec = db.spec();
        change(&mut spec);
        let err = tidepool::source::connection::connect(&spec)
            .await
            .expect_err(field);
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{field}: {err}");
        assert!(err.message().starts_with(&format!("{field}:")), "{err}");
    }
}

#[tokio::test]
async fn a_full_disk_stops_the_capture_with_a_storage_error_and_it_resumes_with_room() {
    let source = Source::new("cont_full", "CREATE TABLE t (id int PRIMARY KEY, v text);");
    let mount = harness::temp_dir("cont_full_mnt");
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=3m,mode=0700", "tmpfs"])
        .arg(&mount)
        .status()
        .expect("running mount");
    assert!(
        mounted.success(),
        "mounting a small tmpfs for the store failed: this test needs root (CI runs as root)"
    );
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _unmount = Unmount(mount.clone());
    let store = mount.join("store");
    source
        .db
        .sql("INSERT INTO t SELECT i, repeat(md5(i::text), 64) FROM generate_series(1, 4000) i;");
    let mut options = source.options(Some(source.db.current_lsn()));
    options.store_dir = store.clone();
    let err = run(options.clone()).await.expect_err("the disk is full");
    assert_eq!(err.kind(), ErrorKind::Storage, "{err}");
    assert!(err.message().contains("disk"), "{err}");
    assert!(
        err.message().contains(&store.display().to_string()),
        "{err}"
    );
    assert!(!err.message().contains("rolling back"), "{err}");
    // Nothing unstored was confirmed.
    let checkpoint = tidepool::store::Store::open(&store)
        .ok()
        .and_then(|s| s.checkpoint().ok())
        .unwrap_or(tidepool::source::pgoutput::Lsn(0));
    assert!(source.confirmed_flush() <= checkpoint);

    let grown = std::process::Command::new("mount")
        .args(["-o", "remount,size=64m"])
        .arg(&mount)
        .status()
        .unwrap();
    assert!(grown.success());
    run(options).await.expect("the capture resumes with room");
    let stored = tidepool::store::Store::open(&store)
        .unwrap()
        .rows("public/t", 1_000_000)
        .unwrap();
    assert_eq!(stored.len(), 4000);
}
