//! Capture against real servers: every change arrives once, with the documented document shape.

use serde_json::{json, Value as Json};
use tidepool::capture::{run, CaptureOptions, CaptureReport};
use tidepool::source::pgoutput::Lsn;
use tidepool::store::Store;

use crate::harness::{self, TestDb};

/// A database with its own publication and slot.
pub struct Source {
    pub db: TestDb,
    pub store: std::path::PathBuf,
    /// Slots are cluster-wide: each test's is named after its database.
    pub slot: String,
}

impl Source {
    /// `schema` runs first; then the publication (for all tables) and the slot are created.
    pub fn new(prefix: &str, schema: &str) -> Source {
        Source::on(harness::plain(), prefix, schema)
    }

    /// As [`Source::new`], on a cluster of the caller's (one a test may restart).
    pub fn on(
        cluster: &'static tidepool::app::cluster::Cluster,
        prefix: &str,
        schema: &str,
    ) -> Source {
        let db = TestDb::new(cluster, prefix);
        db.sql(schema);
        let slot = db.name.clone();
        db.sql(&format!("CREATE PUBLICATION tidepool_pub FOR ALL TABLES; SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput');"));
        let store = harness::temp_dir(prefix);
        Source { db, store, slot }
    }

    pub fn options(&self, stop_at: Option<Lsn>) -> CaptureOptions {
        CaptureOptions {
            spec: self.db.spec(),
            store_dir: self.store.clone(),
            publication: "tidepool_pub".into(),
            slot: self.slot.clone(),
            create_slot: false,
            stop_at,
            observer: None,
            bindings: Vec::new(),
            backfill_progress: None,
        }
    }

    /// Captures everything committed so far.
    pub async fn catch_up(&self) -> CaptureReport {
        let now = self.db.current_lsn();
        run(self.options(Some(now))).await.expect("capture")
    }

    pub fn store(&self) -> Store {
        Store::open(&self.store).unwrap()
    }

    pub fn rows(&self, collection: &str) -> Vec<Json> {
        self.store().rows(collection, 1_000_000).unwrap()
    }

    /// The rows stored so far while a capture runs: none until its first change of the collection
    /// has created it.
    pub fn rows_so_far(&self, collection: &str) -> Vec<Json> {
        match self.store().rows(collection, 1_000_000) {
            Ok(rows) => rows,
            Err(e) if e.kind() == tidepool::ErrorKind::NotFound => Vec::new(),
            Err(e) => panic!("reading {collection}: {e}"),
        }
    }

    pub fn changes(&self, collection: &str) -> Vec<Json> {
        self.store()
            .changes(collection, 0, 1_000_000)
            .unwrap()
            .into_iter()
            .map(|(_, d)| d)
            .collect()
    }

    pub fn confirmed_flush(&self) -> Lsn {
        self.db
            .sql(&format!(
                "SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = '{}';",
                self.slot
            ))
            .trim()
            .parse()
            .unwrap()
    }
}

impl Drop for Source {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.store);
        // A slot left behind would pin WAL and use up the cluster's slots.
        let _ = self.db.cluster.psql(
            "postgres",
            &format!("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = '{}' AND NOT active;", self.db.name),
        );
    }
}

/// The document without `_meta`, to compare row contents.
pub fn data(doc: &Json) -> Json {
    let mut doc = doc.clone();
    doc.as_object_mut().unwrap().remove("_meta");
    doc
}

fn ops(changes: &[Json]) -> Vec<&str> {
    changes
        .iter()
        .map(|c| c["_meta"]["op"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn inserts_updates_deletes_and_truncates_arrive_with_their_documents() {
    let source = Source::new(
        "cap_basic",
        "CREATE TABLE a (id int PRIMARY KEY, v text);
         CREATE TABLE b (k1 text, k2 int, n numeric, PRIMARY KEY (k1, k2));",
    );
    source.db.sql(
        "INSERT INTO a VALUES (1, 'x'), (2, 'y');
         UPDATE a SET v = 'z' WHERE id = 1;
         UPDATE a SET id = 3 WHERE id = 2;
         DELETE FROM a WHERE id = 1;
         INSERT INTO b VALUES ('k', 1, 1.50);
         TRUNCATE b;
         INSERT INTO b VALUES ('k', 2, 2);",
    );
    let report = source.catch_up().await;
    assert_eq!(report.transactions, 7);
    assert_eq!(report.changes, 8);

    assert_eq!(
        source.rows("public/a").iter().map(data).collect::<Vec<_>>(),
        vec![json!({"id": 3, "v": "y"})]
    );
    let a = source.changes("public/a");
    assert_eq!(ops(&a), vec!["c", "c", "u", "u", "d"]);
    assert_eq!(data(&a[2]), json!({"id": 1, "v": "z"}));
    // A key change carries the old key as `before`; a delete carries the key.
    assert_eq!(a[3]["_meta"]["before"], json!({"id": 2}));
    assert_eq!(data(&a[3]), json!({"id": 3, "v": "y"}));
    assert_eq!(data(&a[4]), json!({"id": 1}));
    let source_meta = &a[0]["_meta"]["source"];
    assert_eq!(source_meta["schema"], "public");
    assert_eq!(source_meta["table"], "a");
    assert!(source_meta["lsn"].as_str().unwrap().contains('/'));
    assert!(source_meta["txid"].as_u64().unwrap() > 0);
    let ts = source_meta["ts_ms"].as_i64().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    assert!(
        (now - ts).abs() < 600_000,
        "ts_ms {ts} is not close to now {now}"
    );

    let b = source.changes("public/b");
    assert_eq!(ops(&b), vec!["c", "t", "c"]);
    assert_eq!(
        b[1]["_meta"]["truncate"],
        json!({"cascade": false, "restartIdentity": false})
    );
    assert_eq!(
        source.rows("public/b").iter().map(data).collect::<Vec<_>>(),
        vec![json!({"k1": "k", "k2": 2, "n": "2"})]
    );

    let collections = source.store().collections().unwrap();
    let names: Vec<_> = collections
        .iter()
        .map(|c| (c.name.as_str(), c.rows, c.changes))
        .collect();
    assert_eq!(names, vec![("public/a", 1, 5), ("public/b", 1, 3)]);
    assert!(source.confirmed_flush() <= source.store().checkpoint().unwrap());
}

#[tokio::test]
async fn every_type_maps_to_its_documented_json() {
    let source = Source::new(
        "cap_types",
        "CREATE TYPE mood AS ENUM ('sad', 'happy');
         CREATE DOMAIN positive AS int4 CHECK (VALUE > 0);
         CREATE TABLE t (
           id int8 PRIMARY KEY, s int2, i int4, b bool, r real, d double precision, n numeric, n_nan numeric,
           f_inf float8, f_nan float8, tx text, vc varchar(10), ch char(3), j json, jb jsonb, by bytea, u uuid,
           dt date, dt_bc date, dt_inf date, tm time, tmtz timetz, ts timestamp, tstz timestamptz, ts_inf timestamptz,
           iv interval, ai int4[], an int4[][], at text[], m mood, dom positive, ma mood[], mo money, ip inet);",
    );
    source.db.sql(
        r#"INSERT INTO t VALUES (
           9223372036854775807, -32768, 2147483647, true, 1.5, 0.1, 123456789012345678901234567890.123456789, 'NaN',
           '-Infinity', 'NaN', 'héllo "quoted"', 'v', 'ab', '{"a": [1, 2.5]}', '{"b": null, "a": true}', '\x00ff10',
           'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '2024-02-29', '0044-03-15 BC', 'infinity', '13:45:00.5',
           '13:45:00+05:30', '2024-01-31 13:45:00.123456', '2024-01-31 13:45:00+02', '-infinity',
           '1 year 2 mons 3 days 04:05:06.5', '{1,NULL,3}', '{{1,2},{3,4}}', '{"a b","c\"d",NULL}', 'happy', 7,
           '{sad,happy}', 12.34, '192.168.0.1/24');"#,
    );
    source.catch_up().await;
    let rows = source.rows("public/t");
    assert_eq!(
        data(&rows[0]),
        json!({
            "id": 9223372036854775807i64, "s": -32768, "i": 2147483647, "b": true, "r": 1.5, "d": 0.1,
            "n": "123456789012345678901234567890.123456789", "n_nan": "NaN", "f_inf": "-Infinity", "f_nan": "NaN",
            "tx": "héllo \"quoted\"", "vc": "v", "ch": "ab ", "j": {"a": [1, 2.5]}, "jb": {"a": true, "b": null},
            "by": "AP8Q", "u": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "dt": "2024-02-29", "dt_bc": "-0043-03-15",
            "dt_inf": "infinity", "tm": "13:45:00.5", "tmtz": "13:45:00+05:30", "ts": "2024-01-31T13:45:00.123456Z",
            "tstz": "2024-01-31T11:45:00Z", "ts_inf": "-infinity", "iv": "P1Y2M3DT4H5M6.5S", "ai": [1, null, 3],
            "an": [[1, 2], [3, 4]], "at": ["a b", "c\"d", null], "m": "happy", "dom": 7, "ma": ["sad", "happy"],
            "mo": "$12.34", "ip": "192.168.0.1/24"
        })
    );
}

/// A source whose database runs in a +13:45 time zone with day-first dates and verbose intervals:
/// the capture's sessions set their own, so the backfilled row and the streamed one read the same
/// instants, and both match the documented mapping (including years before 1 and infinity).
#[tokio::test]
async fn a_source_in_another_time_zone_and_date_style_gives_the_same_documents() {
    let db = TestDb::new(harness::plain(), "cap_tz");
    db.sql(&format!(
        "ALTER DATABASE {} SET timezone = 'Pacific/Chatham';
         ALTER DATABASE {0} SET datestyle = 'SQL, DMY';
         ALTER DATABASE {0} SET intervalstyle = 'postgres_verbose';",
        tidepool::source::sql::ident(&db.name)
    ));
    // In a new session, so the database's settings apply to the literals too.
    let row = |id: i32| {
        format!(
            "INSERT INTO t VALUES ({id}, '2024-01-31 13:45:00+02', '2024-01-31 13:45:00', '31/01/2024',
             '0044-03-15 10:00:00+00 BC', 'infinity', '-infinity', '1 year 2 mons 3 days 04:05:06.5', '13:45:00+05:30');"
        )
    };
    db.sql(&format!(
        "CREATE TABLE t (id int PRIMARY KEY, tstz timestamptz, ts timestamp, d date, tstz_bc timestamptz,
                         ts_inf timestamp, d_inf date, iv interval, tmtz timetz);
         CREATE PUBLICATION bf_pub FOR TABLE t; {}",
        row(1)
    ));
    assert_eq!(
        db.sql("SELECT current_setting('TimeZone') || ' ' || tstz FROM t;")
            .trim(),
        "Pacific/Chatham 01/02/2024 01:30:00 +1345",
        "the session did not run in the odd settings"
    );
    let store = harness::temp_dir("cap_tz");
    let options = |stop_at| crate::backfill::options(&db, &store, stop_at);
    run(options(Some(db.current_lsn()))).await.unwrap();
    db.sql(&row(2));
    run(options(Some(db.current_lsn()))).await.unwrap();
    let store = Store::open(&store).unwrap();
    let rows = store.rows("public/t", 10).unwrap();
    let expected = |id: i32| {
        json!({
            "id": id, "tstz": "2024-01-31T11:45:00Z", "ts": "2024-01-31T13:45:00Z", "d": "2024-01-31",
            "tstz_bc": "-0043-03-15T10:00:00Z", "ts_inf": "infinity", "d_inf": "-infinity",
            "iv": "P1Y2M3DT4H5M6.5S", "tmtz": "13:45:00+05:30"
        })
    };
    assert_eq!(rows.len(), 2);
    assert_eq!(data(&rows[0]), expected(1), "the backfilled row");
    assert_eq!(data(&rows[1]), expected(2), "the streamed row");
    assert_eq!(rows[0]["_meta"]["source"]["snapshot"], json!(true));
    assert_ne!(rows[1]["_meta"]["source"]["snapshot"], json!(true));
    db.sql(&format!("SELECT pg_drop_replication_slot('{}');", db.name));
}

#[tokio::test]
async fn an_unchanged_toasted_value_keeps_its_stored_value_and_is_never_null() {
    let source = Source::new(
        "cap_toast",
        "CREATE TABLE docs (id int PRIMARY KEY, big text, n int);",
    );
    // Written before the slot existed: the store never saw this row's large value.
    let before_slot = TestDb {
        cluster: source.db.cluster,
        name: source.db.name.clone(),
    };
    before_slot.sql(&format!(
        "SELECT pg_drop_replication_slot('{}');",
        source.slot
    ));
    before_slot.sql("ALTER TABLE docs ALTER COLUMN big SET STORAGE EXTERNAL; INSERT INTO docs VALUES (2, repeat('y', 10000), 0);");
    before_slot.sql(&format!(
        "SELECT pg_create_logical_replication_slot('{}', 'pgoutput');",
        source.slot
    ));
    source
        .db
        .sql("INSERT INTO docs VALUES (1, repeat('x', 10000), 0);");
    source.catch_up().await;
    source
        .db
        .sql("UPDATE docs SET n = 1 WHERE id = 1; UPDATE docs SET n = 1 WHERE id = 2;");
    source.catch_up().await;

    let rows = source.rows("public/docs");
    assert_eq!(
        rows[0]["big"].as_str().unwrap().len(),
        10000,
        "the stored value fills the unchanged TOAST column"
    );
    assert_eq!(rows[0]["n"], 1);
    // Row 2's large value was never seen: it is left out and named, not turned into null.
    assert!(rows[1].get("big").is_none(), "{}", rows[1]);
    assert_eq!(rows[1]["_meta"]["unknown"], json!(["big"]));

    // With REPLICA IDENTITY FULL the old row carries the value.
    source
        .db
        .sql("ALTER TABLE docs REPLICA IDENTITY FULL; UPDATE docs SET n = 2 WHERE id = 2;");
    source.catch_up().await;
    let rows = source.rows("public/docs");
    assert_eq!(
        rows.len(),
        2,
        "REPLICA IDENTITY FULL keeps one row per primary key: {rows:?}"
    );
    assert_eq!(rows[1]["big"].as_str().unwrap().len(), 10000);
    assert!(rows[1]["_meta"].get("unknown").is_none());
}

#[tokio::test]
async fn a_restart_resumes_with_nothing_lost_or_duplicated() {
    let source = Source::new("cap_restart", "CREATE TABLE t (id int PRIMARY KEY, v int);");
    source
        .db
        .sql("INSERT INTO t SELECT g, 0 FROM generate_series(1, 100) g;");
    let first = source.catch_up().await;
    let checkpoint = source.store().checkpoint().unwrap();
    assert!(
        source.confirmed_flush() <= checkpoint,
        "the slot confirmed more than was stored"
    );
    source.db.sql("UPDATE t SET v = 1 WHERE id <= 50; DELETE FROM t WHERE id > 90; INSERT INTO t VALUES (101, 5);");
    let second = source.catch_up().await;
    assert_eq!(first.changes + second.changes, 100 + 50 + 10 + 1);
    assert_eq!(source.changes("public/t").len(), 161);
    let rows = source.rows("public/t");
    assert_eq!(rows.len(), 91);
    assert_eq!(rows.iter().filter(|r| r["v"] == 1).count(), 50);
    // Nothing new: a third run stores nothing and moves only the checkpoint.
    let third = source.catch_up().await;
    assert_eq!(third.changes, 0);
    assert_eq!(source.changes("public/t").len(), 161);
    assert!(source.confirmed_flush() <= source.store().checkpoint().unwrap());
}

#[tokio::test]
async fn an_idle_slot_advances_while_captured_tables_are_quiet() {
    let source = Source::new(
        "cap_idle",
        "CREATE TABLE captured (id int PRIMARY KEY); CREATE TABLE other_db_noise (id int);",
    );
    source
        .db
        .sql("DROP PUBLICATION tidepool_pub; CREATE PUBLICATION tidepool_pub FOR TABLE captured;");
    source.db.sql("INSERT INTO captured VALUES (1);");
    source.catch_up().await;
    let before = source.confirmed_flush();
    // WAL that the publication does not cover.
    source
        .db
        .sql("INSERT INTO other_db_noise SELECT generate_series(1, 1000);");
    let report = source.catch_up().await;
    assert_eq!(report.changes, 0);
    let after = source.confirmed_flush();
    assert!(after > before, "confirmed_flush_lsn stayed at {before}");
    assert!(after <= source.store().checkpoint().unwrap());
}

#[tokio::test]
async fn a_missing_slot_or_publication_is_reported_with_the_fix() {
    let source = Source::new("cap_missing", "CREATE TABLE t (id int PRIMARY KEY);");
    let mut options = source.options(Some(source.db.current_lsn()));
    options.slot = format!("{}_new", source.slot);
    let err = run(options.clone()).await.unwrap_err();
    assert_eq!(err.kind(), tidepool::ErrorKind::NotFound);
    let fix = format!(
        "pg_create_logical_replication_slot('{}', 'pgoutput')",
        options.slot
    );
    assert!(err.message().contains(&fix), "{}", err.message());
    options.create_slot = true;
    run(options.clone()).await.unwrap();
    options.publication = "No Such \"Pub\"".into();
    let err = run(options).await.unwrap_err();
    assert_eq!(err.kind(), tidepool::ErrorKind::NotFound);
    assert!(
        err.message()
            .contains(r#"CREATE PUBLICATION "No Such ""Pub""" FOR TABLE"#),
        "{}",
        err.message()
    );
}

#[test]
fn the_command_line_captures_lists_and_previews() {
    let source = Source::new("cap_cli", "CREATE TABLE t (id int PRIMARY KEY, v text);");
    source
        .db
        .sql("INSERT INTO t VALUES (1, 'a'), (2, 'b'); UPDATE t SET v = 'c' WHERE id = 1;");
    let stop = source.db.current_lsn().to_string();
    let url = format!(
        "postgres://postgres@127.0.0.1:{}/{}?sslmode=disable",
        source.db.cluster.port(),
        source.db.name
    );
    let store = source.store.to_str().unwrap();
    let tidepool = || {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_tidepool"));
        command
            .env(
                "PGPASSWORD",
                source.db.cluster.superuser_password().expose(),
            )
            .env("PGPASSFILE", "/nonexistent");
        command
    };
    let captured = tidepool()
        .args([
            "capture",
            "--url",
            &url,
            "--store",
            store,
            "--publication",
            "tidepool_pub",
            "--slot",
            &source.slot,
            "--stop-at-lsn",
            &stop,
        ])
        .output()
        .unwrap();
    assert!(
        captured.status.success(),
        "{}",
        String::from_utf8_lossy(&captured.stderr)
    );

    let listed = tidepool()
        .args(["collections", "--store", store])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&listed.stdout), "public/t\t2\t3\n");

    let rows = tidepool()
        .args(["preview", "--store", store, "public/t"])
        .output()
        .unwrap();
    let rows: Vec<Json> = String::from_utf8_lossy(&rows.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        rows.iter().map(data).collect::<Vec<_>>(),
        vec![json!({"id": 1, "v": "c"}), json!({"id": 2, "v": "b"})]
    );

    let changes = tidepool()
        .args([
            "preview",
            "--store",
            store,
            "public/t",
            "--changes",
            "--limit",
            "2",
        ])
        .output()
        .unwrap();
    let changes: Vec<Json> = String::from_utf8_lossy(&changes.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(ops(&changes), vec!["c", "c"]);

    let filtered = tidepool()
        .args([
            "preview",
            "--store",
            store,
            "public/t",
            "--changes",
            "--where",
            "id=1",
        ])
        .output()
        .unwrap();
    let filtered: Vec<Json> = String::from_utf8_lossy(&filtered.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(ops(&filtered), vec!["c", "u"]);
    let bad = tidepool()
        .args(["preview", "--store", store, "public/t", "--where", "id"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--where"));

    let missing = tidepool()
        .args(["preview", "--store", store, "public/nope"])
        .output()
        .unwrap();
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr)
        .starts_with("error (NotFound): no collection named 'public/nope'"));
}

#[tokio::test]
async fn a_million_row_transaction_arrives_whole() {
    let source = Source::new(
        "cap_million",
        "CREATE TABLE big (id int PRIMARY KEY, h text);",
    );
    source
        .db
        .sql("INSERT INTO big SELECT g, md5(g::text) FROM generate_series(1, 1000000) g;");
    let started = std::time::Instant::now();
    let report = source.catch_up().await;
    eprintln!("1M-row transaction captured in {:?}", started.elapsed());
    assert_eq!((report.transactions, report.changes), (1, 1_000_000));
    let info = &source.store().collections().unwrap()[0];
    assert_eq!((info.rows, info.changes), (1_000_000, 1_000_000));
    let last = source.store().changes("public/big", 999_999, 1).unwrap();
    assert_eq!(
        data(&last[0].1),
        json!({"id": 1000000, "h": format!("{:x}", md5_of("1000000"))})
    );
}

/// MD5 as PostgreSQL's md5() computes it, to check a value end to end.
fn md5_of(text: &str) -> u128 {
    let out = std::process::Command::new("md5sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    let mut out = out;
    out.stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = out.wait_with_output().unwrap();
    u128::from_str_radix(
        String::from_utf8_lossy(&output.stdout)
            .split_whitespace()
            .next()
            .unwrap(),
        16,
    )
    .unwrap()
}

#[tokio::test]
async fn capture_streams_over_tls_with_verify_full() {
    let db = TestDb::new(harness::tls(), "cap_tls");
    db.sql("CREATE TABLE t (id int PRIMARY KEY); CREATE PUBLICATION tidepool_pub FOR ALL TABLES;");
    db.sql(&format!(
        "SELECT pg_create_logical_replication_slot('{}', 'pgoutput');",
        db.name
    ));
    db.sql("INSERT INTO t VALUES (1), (2);");
    let dir = harness::temp_dir("cap_tls");
    let mut spec = db.spec();
    spec.host = "localhost".into();
    spec.sslmode = tidepool::source::tls::SslMode::VerifyFull;
    spec.sslrootcert = Some(harness::ca_file(db.cluster, &dir));
    let options = CaptureOptions {
        spec,
        store_dir: dir.join("store"),
        publication: "tidepool_pub".into(),
        slot: db.name.clone(),
        create_slot: false,
        stop_at: Some(db.current_lsn()),
        observer: None,
        bindings: Vec::new(),
        backfill_progress: None,
    };
    let report = run(options.clone()).await.unwrap();
    assert_eq!(report.changes, 2);
    // Without the authority, verify-full refuses the server's certificate.
    let mut untrusted = options;
    untrusted.spec.sslrootcert = None;
    untrusted.store_dir = dir.join("other");
    let err = run(untrusted).await.unwrap_err();
    assert_eq!(err.kind(), tidepool::ErrorKind::Tls, "{err:?}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn added_dropped_and_renamed_columns_update_the_collection() {
    let source = Source::new(
        "cap_schema",
        "CREATE TABLE t (id int PRIMARY KEY, a text, b text);",
    );
    source.db.sql("INSERT INTO t VALUES (1, 'a', 'b');");
    source.db.sql("ALTER TABLE t ADD COLUMN c int; ALTER TABLE t DROP COLUMN b; ALTER TABLE t RENAME COLUMN a TO a2;");
    source.db.sql("INSERT INTO t VALUES (2, 'x', 3);");
    source.catch_up().await;
    let changes = source.changes("public/t");
    assert_eq!(data(&changes[0]), json!({"id": 1, "a": "a", "b": "b"}));
    assert_eq!(data(&changes[1]), json!({"id": 2, "a2": "x", "c": 3}));
    let spec = source.store().collection("public/t").unwrap().unwrap();
    let names: Vec<&str> = spec
        .columns
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["id", "a2", "c"]);
    assert_eq!(spec.key, vec!["id"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_replication_connection_is_resumed_from_the_checkpoint() {
    let source = Source::new("cap_reconnect", "CREATE TABLE t (id int PRIMARY KEY);");
    source
        .db
        .sql("INSERT INTO t SELECT generate_series(1, 10);");
    let far = Lsn(u64::MAX);
    let capture = tokio::spawn(run(source.options(Some(far))));
    // Wait until the stream is up and has stored the first rows, then cut it from the server's side.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while source
        .store()
        .collections()
        .map(|c| c.first().map_or(0, |c| c.changes))
        .unwrap_or(0)
        < 10
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the capture never stored the first rows"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let terminated = source.db.sql(&format!(
        "SELECT count(pg_terminate_backend(active_pid)) FROM pg_replication_slots WHERE slot_name = '{}' AND active;",
        source.slot
    ));
    assert_eq!(terminated.trim(), "1");
    source
        .db
        .sql("INSERT INTO t SELECT generate_series(11, 20);");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while source.store().collections().unwrap()[0].changes < 20 {
        assert!(
            std::time::Instant::now() < deadline,
            "the capture did not resume after the connection was cut"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    capture.abort();
    assert_eq!(source.changes("public/t").len(), 20);
    assert_eq!(source.rows("public/t").len(), 20);
}

/// A large transaction is read in bulk (the socket wakes the capture once per 64 KiB, not per
/// message). Once that mode ends the mark must come off the socket, or a small transaction after it
/// would wait for 64 KiB that never come. (That the Commit ends bulk mode is a unit test in
/// `source::replication`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_transaction_after_a_large_one_is_stored_at_once() {
    let source = Source::new(
        "cap_after_bulk",
        "CREATE TABLE t (id int PRIMARY KEY, h text);",
    );
    let capture = tokio::spawn(run(source.options(Some(Lsn(u64::MAX)))));
    let stored = |n: u64| {
        source
            .store()
            .collections()
            .map(|c| c.first().map_or(0, |c| c.changes))
            .unwrap_or(0)
            >= n
    };
    // About 3 MB of pgoutput messages, well past the point where the stream reads in bulk.
    source
        .db
        .sql("INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 50000) g;");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !stored(50_000) {
        assert!(
            std::time::Instant::now() < deadline,
            "the large transaction was not stored"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    source.db.sql("INSERT INTO t VALUES (0, 'small');");
    let inserted = std::time::Instant::now();
    while !stored(50_001) {
        assert!(
            inserted.elapsed() < std::time::Duration::from_secs(3),
            "a one-row transaction after a large one was not stored within 3 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    capture.abort();
    assert_eq!(source.rows("public/t").len(), 50_001);
}
