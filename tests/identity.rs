//! Table identity under DDL: two tables whose default names collide, a table renamed, a table dropped
//! and created again, a key column whose type changed. In each the store must end equal to the
//! source (rows and change log) and the capture must say what it did.

use serde_json::{json, Value as Json};
use tidepool::binding::{Binding, Definition, Mode};
use tidepool::capture::{run, CaptureReport};

use crate::capture::{data, Source};

fn ops(changes: &[Json]) -> Vec<&str> {
    changes
        .iter()
        .map(|c| c["_meta"]["op"].as_str().unwrap())
        .collect()
}

fn contents(docs: &[Json]) -> Vec<Json> {
    docs.iter().map(data).collect()
}

/// Captures everything committed so far with `bindings` as the definition.
async fn catch_up_with(source: &Source, bindings: Vec<Binding>) -> CaptureReport {
    let mut options = source.options(Some(source.db.current_lsn()));
    options.bindings = bindings;
    run(options).await.expect("capture")
}

fn only_changes(schema: &str, table: &str) -> Binding {
    Binding {
        mode: Mode::OnlyChanges,
        ..Binding::new(schema, table)
    }
}

fn table_oid(source: &Source, table: &str) -> u32 {
    source
        .db
        .sql(&format!("SELECT '{table}'::regclass::oid;"))
        .trim()
        .parse()
        .unwrap()
}

fn assert_notice(report: &CaptureReport, parts: &[&str]) {
    assert!(
        report
            .notices
            .iter()
            .any(|n| parts.iter().all(|p| n.contains(p))),
        "no notice with {parts:?} in {:?}",
        report.notices
    );
}

#[tokio::test]
async fn two_tables_whose_default_names_collide_get_collections_of_their_own() {
    let source = Source::new(
        "id_collide",
        r#"CREATE TABLE "order items" (id int PRIMARY KEY, v text);
           CREATE TABLE order_items (id int PRIMARY KEY, v text);"#,
    );
    // Discovery shows the names the capture will use.
    let client = tidepool::source::connection::connect(&source.db.spec())
        .await
        .unwrap();
    let tables = tidepool::source::discovery::discover(&client, Some("tidepool_pub"))
        .await
        .unwrap();
    let name_of = |table: &str| {
        tables
            .iter()
            .find(|t| t.table == table)
            .unwrap()
            .collection
            .name
            .clone()
    };
    let plain = name_of("order_items");
    let spaced = name_of("order items");
    assert_eq!(plain, "public/order_items");
    assert!(spaced.starts_with("public/order_items_"), "{spaced}");

    source.db.sql(
        r#"INSERT INTO "order items" VALUES (1, 'spaced'), (2, 'spaced');
           INSERT INTO order_items VALUES (1, 'plain');
           DELETE FROM "order items" WHERE id = 1;"#,
    );
    source.catch_up().await;
    assert_eq!(
        contents(&source.rows(&plain)),
        vec![json!({"id": 1, "v": "plain"})]
    );
    assert_eq!(
        contents(&source.rows(&spaced)),
        vec![json!({"id": 2, "v": "spaced"})]
    );
    assert_eq!(ops(&source.changes(&spaced)), vec!["c", "c", "d"]);
    assert_eq!(ops(&source.changes(&plain)), vec!["c"]);

    // A third table of the same default name later: the names in use stay, it gets its own.
    source.db.sql(
        r#"CREATE TABLE "order;items" (id int PRIMARY KEY, v text);
           INSERT INTO "order;items" VALUES (1, 'semicolon');
           INSERT INTO order_items VALUES (2, 'plain');
           UPDATE "order items" SET v = 'spaced again' WHERE id = 2;"#,
    );
    source.catch_up().await;
    assert_eq!(
        contents(&source.rows(&plain)),
        vec![
            json!({"id": 1, "v": "plain"}),
            json!({"id": 2, "v": "plain"})
        ]
    );
    assert_eq!(
        contents(&source.rows(&spaced)),
        vec![json!({"id": 2, "v": "spaced again"})]
    );
    let names: Vec<String> = source
        .store()
        .collections()
        .unwrap()
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert_eq!(names.len(), 3, "{names:?}");
    let third = names
        .iter()
        .find(|n| **n != plain && **n != spaced)
        .unwrap();
    assert_eq!(
        contents(&source.rows(third)),
        vec![json!({"id": 1, "v": "semicolon"})]
    );

    // Bound by hand under one name, the definition is refused, naming both tables.
    let mut a = Binding::new("public", "order items");
    a.collection = "shop/items".into();
    let mut b = Binding::new("public", "order_items");
    b.collection = "shop/items".into();
    let mut options = source.options(None);
    options.bindings = vec![a, b];
    let err = run(options).await.unwrap_err();
    assert_eq!(err.kind(), tidepool::ErrorKind::InvalidInput);
    assert!(
        err.message().contains(r#""public"."order items""#)
            && err.message().contains(r#""public"."order_items""#),
        "{err}"
    );
}

#[tokio::test]
async fn a_renamed_table_keeps_its_collection_and_the_capture_says_so() {
    // Bound by name (--tables), and without a definition (everything published).
    for bound in [true, false] {
        let source = Source::new(
            if bound { "id_rename_b" } else { "id_rename" },
            "CREATE TABLE ev (id int PRIMARY KEY, v text);",
        );
        let bindings = if bound {
            vec![only_changes("public", "ev")]
        } else {
            Vec::new()
        };
        let oid = table_oid(&source, "ev");
        source.db.sql("INSERT INTO ev VALUES (1, 'a'), (2, 'b');");
        catch_up_with(&source, bindings).await;
        // Another table takes the old name, and changes before the renamed one does.
        source.db.sql(
            "ALTER TABLE ev RENAME TO ev2;
             CREATE TABLE ev (id int PRIMARY KEY, v text);
             INSERT INTO ev VALUES (9, 'another table');
             INSERT INTO ev2 VALUES (3, 'c');
             UPDATE ev2 SET v = 'B' WHERE id = 2;
             DELETE FROM ev2 WHERE id = 1;",
        );
        let report = source.catch_up().await;
        assert_notice(
            &report,
            &[
                r#""public"."ev" was renamed to "public"."ev2""#,
                "public/ev keeps it",
            ],
        );
        assert_eq!(
            contents(&source.rows("public/ev")),
            vec![json!({"id": 2, "v": "B"}), json!({"id": 3, "v": "c"})]
        );
        let changes = source.changes("public/ev");
        assert_eq!(ops(&changes), vec!["c", "c", "c", "u", "d"]);
        assert_eq!(changes[4]["_meta"]["source"]["table"], "ev2");
        let store = source.store();
        let names: Vec<String> = store
            .collections()
            .unwrap()
            .into_iter()
            .map(|c| c.name)
            .collect();
        if bound {
            // The new table is not bound.
            assert_eq!(names, vec!["public/ev"]);
        } else {
            // The new table is a new collection, under a name of its own.
            assert_eq!(names.len(), 2, "{names:?}");
            assert!(names[1].starts_with("public/ev_"), "{names:?}");
            assert_eq!(
                contents(&source.rows(&names[1])),
                vec![json!({"id": 9, "v": "another table"})]
            );
        }
        assert_eq!(store.collection("public/ev").unwrap().unwrap().table, "ev2");
        if bound {
            let definition = Definition::load(&store).unwrap().unwrap();
            assert_eq!(definition.bindings[0].table, "ev2");
            assert_eq!(definition.bindings[0].collection, "public/ev");
            assert_eq!(definition.bindings[0].oid, Some(oid));
        }
        // Later changes keep arriving, with nothing more to say.
        source.db.sql("INSERT INTO ev2 VALUES (4, 'd');");
        let report = source.catch_up().await;
        assert!(report.notices.is_empty(), "{:?}", report.notices);
        assert_eq!(source.rows("public/ev").len(), 3);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_dropped_and_created_again_is_read_again_and_the_capture_says_so() {
    let source = Source::new(
        "id_recreate",
        "CREATE TABLE ev (id int PRIMARY KEY, v text); CREATE TABLE other (id int PRIMARY KEY);",
    );
    let bindings = vec![
        only_changes("public", "ev"),
        only_changes("public", "other"),
    ];
    let old_oid = table_oid(&source, "ev");
    source.db.sql(
        "INSERT INTO ev VALUES (1, 'old'), (2, 'old');
         INSERT INTO other VALUES (1);",
    );
    catch_up_with(&source, bindings).await;
    assert_eq!(source.rows("public/ev").len(), 2);
    source.db.sql(
        "DROP TABLE ev;
         CREATE TABLE ev (id int PRIMARY KEY, v text);
         INSERT INTO ev VALUES (2, 'new'), (3, 'new');
         UPDATE ev SET v = 'newer' WHERE id = 3;
         INSERT INTO other VALUES (2);",
    );
    let new_oid = table_oid(&source, "ev");
    assert_ne!(old_oid, new_oid);
    let report = source.catch_up().await;
    assert_notice(
        &report,
        &[
            r#""public"."ev" was dropped and created again"#,
            &format!("OID {old_oid} is now {new_oid}"),
            "public/ev",
            "re-backfill",
        ],
    );
    // The old table's rows are gone; the new table's are the current rows.
    let source_rows = json!([{"id": 2, "v": "new"}, {"id": 3, "v": "newer"}]);
    assert_eq!(
        Json::Array(contents(&source.rows("public/ev"))),
        source_rows
    );
    // The log: the old table's changes, then the new one's up to the re-backfill's snapshot, then
    // the snapshot's rows.
    let changes = source.changes("public/ev");
    let snapshot: Vec<Json> = changes
        .iter()
        .filter(|c| c["_meta"]["source"]["snapshot"] == json!(true))
        .map(data)
        .collect();
    assert_eq!(Json::Array(snapshot), source_rows);
    assert_eq!(ops(&changes[..2]), vec!["c", "c"]);
    assert_eq!(data(&changes[0]), json!({"id": 1, "v": "old"}));
    // The other binding went on undisturbed, once each.
    assert_eq!(
        contents(&source.rows("public/other")),
        vec![json!({"id": 1}), json!({"id": 2})]
    );
    assert_eq!(ops(&source.changes("public/other")), vec!["c", "c"]);
    let definition = Definition::load(&source.store()).unwrap().unwrap();
    assert_eq!(definition.bindings[0].oid, Some(new_oid));

    // Live again: later changes of the new table arrive as usual.
    source
        .db
        .sql("DELETE FROM ev WHERE id = 2; INSERT INTO ev VALUES (4, 'later');");
    let report = source.catch_up().await;
    assert!(report.notices.is_empty(), "{:?}", report.notices);
    assert_eq!(
        contents(&source.rows("public/ev")),
        vec![
            json!({"id": 3, "v": "newer"}),
            json!({"id": 4, "v": "later"})
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_column_whose_type_changed_does_not_leave_rows_under_old_keys() {
    let source = Source::new(
        "id_keytype",
        "CREATE TABLE t (id int PRIMARY KEY, v text); CREATE TABLE n (id int8 PRIMARY KEY);",
    );
    source.db.sql(
        "INSERT INTO t VALUES (1, 'a'), (2, 'b'), (3, 'c');
         INSERT INTO n VALUES (1);",
    );
    source.catch_up().await;
    source.db.sql(
        "ALTER TABLE t ALTER id TYPE text;
         UPDATE t SET v = 'A' WHERE id = '1';
         DELETE FROM t WHERE id = '2';
         INSERT INTO t VALUES ('x', 'new');
         ALTER TABLE n ALTER id TYPE int4;
         INSERT INTO n VALUES (2);",
    );
    let report = source.catch_up().await;
    assert_notice(
        &report,
        &[
            r#"key column "id" changed type"#,
            r#""public"."t""#,
            "re-backfill",
        ],
    );
    // An integer key that stays an integer (int8 to int4) keeps its keys: nothing to read again.
    assert!(
        !report.notices.iter().any(|n| n.contains(r#""public"."n""#)),
        "{:?}",
        report.notices
    );
    assert_eq!(
        contents(&source.rows("public/t")),
        vec![
            json!({"id": "1", "v": "A"}),
            json!({"id": "3", "v": "c"}),
            json!({"id": "x", "v": "new"})
        ]
    );
    assert_eq!(
        contents(&source.rows("public/n")),
        vec![json!({"id": 1}), json!({"id": 2})]
    );
    // A delete after the change removes the row whatever type it was stored under.
    source.db.sql("DELETE FROM t WHERE id = '3';");
    source.catch_up().await;
    assert_eq!(
        contents(&source.rows("public/t")),
        vec![json!({"id": "1", "v": "A"}), json!({"id": "x", "v": "new"})]
    );
    let changes = source.changes("public/t");
    assert_eq!(ops(&changes[..3]), vec!["c", "c", "c"]);
    assert_eq!(changes.last().unwrap()["_meta"]["op"], "d");
    assert_eq!(data(changes.last().unwrap()), json!({"id": "3"}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_dropped_and_created_again_while_stopped_is_read_again_even_if_it_never_changes() {
    // Without a definition: every published table, bound on first sight.
    let source = Source::new(
        "id_recreate_stopped",
        "CREATE TABLE ev (id int PRIMARY KEY, v text);",
    );
    source
        .db
        .sql("INSERT INTO ev VALUES (1, 'old'), (2, 'old');");
    source.catch_up().await;
    assert_eq!(source.rows("public/ev").len(), 2);
    let old_oid = table_oid(&source, "ev");
    // Dropped and created again while no capture runs; the new table has no change to announce it.
    source.db.sql(
        "DROP TABLE ev;
         CREATE TABLE ev (id int PRIMARY KEY, v text);",
    );
    let new_oid = table_oid(&source, "ev");
    let report = source.catch_up().await;
    assert_notice(
        &report,
        &[
            r#""public"."ev" was dropped and created again while the capture was stopped"#,
            &format!("OID {old_oid} is now {new_oid}"),
            "re-backfill",
        ],
    );
    assert_eq!(source.rows("public/ev"), Vec::<Json>::new());
    // From then on the new table is the collection's.
    source.db.sql("INSERT INTO ev VALUES (2, 'new');");
    let report = source.catch_up().await;
    assert!(report.notices.is_empty(), "{:?}", report.notices);
    assert_eq!(
        contents(&source.rows("public/ev")),
        vec![json!({"id": 2, "v": "new"})]
    );
}

#[test]
fn the_command_line_names_colliding_tables_apart_and_keeps_saved_names() {
    let source = Source::new(
        "id_cli_names",
        r#"CREATE TABLE "order items" (id int PRIMARY KEY); CREATE TABLE order_items (id int PRIMARY KEY);"#,
    );
    let url = format!(
        "postgres://postgres@127.0.0.1:{}/{}?sslmode=disable",
        source.db.cluster.port(),
        source.db.name
    );
    let store = source.store.to_str().unwrap();
    let tidepool = |args: &[&str]| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_tidepool"))
            .args(args)
            .env(
                "PGPASSWORD",
                source.db.cluster.superuser_password().expose(),
            )
            .env("PGPASSFILE", "/nonexistent")
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    };
    let capture = |tables: &str| {
        let stop = source.db.current_lsn().to_string();
        tidepool(&[
            "capture",
            "--url",
            &url,
            "--store",
            store,
            "--publication",
            "tidepool_pub",
            "--slot",
            &source.slot,
            "--no-backfill",
            "--tables",
            tables,
            "--stop-at-lsn",
            &stop,
        ]);
    };
    let collections = || -> Vec<(String, String)> {
        let listed: Json =
            serde_json::from_str(&tidepool(&["binding", "list", "--store", store, "--json"]))
                .unwrap();
        listed["bindings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| {
                (
                    b["table"].as_str().unwrap().to_string(),
                    b["collection"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    capture(r#"public."order items",public.order_items"#);
    assert_eq!(
        collections(),
        vec![
            ("order items".into(), "public/order_items_ef0de76c".into()),
            ("order_items".into(), "public/order_items".into())
        ]
    );
    // Captured again with one of them: its saved name stays.
    capture(r#"public."order items""#);
    assert_eq!(
        collections(),
        vec![("order items".into(), "public/order_items_ef0de76c".into())]
    );
}

/// Polls until `done` holds (or fails after a minute).
async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let started = std::time::Instant::now();
    while !done() {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(60),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_dropped_and_created_again_twice_while_capturing_ends_with_the_last_ones_rows() {
    let source = Source::new(
        "id_recreate_live",
        "CREATE TABLE ev (id int PRIMARY KEY, v text); CREATE TABLE other (id int PRIMARY KEY);
         INSERT INTO ev VALUES (1, 'first'), (2, 'first');",
    );
    let mut options = source.options(None);
    options.bindings = vec![
        only_changes("public", "ev"),
        only_changes("public", "other"),
    ];
    let streaming = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seen = streaming.clone();
    options.observer = Some(tidepool::capture::Observer(std::sync::Arc::new(
        move |_| seen.store(true, std::sync::atomic::Ordering::SeqCst),
    )));
    let capture = tokio::spawn(run(options));
    wait_until("the stream", || {
        streaming.load(std::sync::atomic::Ordering::SeqCst)
    })
    .await;
    source.db.sql(
        "INSERT INTO ev VALUES (3, 'first');
         DROP TABLE ev;
         CREATE TABLE ev (id int PRIMARY KEY, v text);
         INSERT INTO ev VALUES (3, 'second'), (4, 'second');
         DROP TABLE ev;
         CREATE TABLE ev (id int PRIMARY KEY, v text);
         INSERT INTO ev VALUES (4, 'third'), (5, 'third');
         UPDATE ev SET v = 'third, updated' WHERE id = 5;
         INSERT INTO other VALUES (1);",
    );
    let last_oid = table_oid(&source, "ev");
    let expected = vec![
        json!({"id": 4, "v": "third"}),
        json!({"id": 5, "v": "third, updated"}),
    ];
    // Polled while the capture runs: a collection exists once its first change is stored.
    wait_until("the last table's rows", || {
        contents(&source.rows_so_far("public/ev")) == expected
            && source.rows_so_far("public/other").len() == 1
    })
    .await;
    // Nothing more is on its way: the binding is live, following the last table.
    source.db.sql("INSERT INTO ev VALUES (6, 'third');");
    wait_until("a later change", || {
        source.rows_so_far("public/ev").len() == 3
    })
    .await;
    capture.abort();
    let _ = capture.await;
    let changes = source.changes("public/ev");
    // The first table's change, then the later tables' as the stream had them, then the snapshot.
    assert_eq!(data(&changes[0]), json!({"id": 3, "v": "first"}));
    let snapshot: Vec<Json> = changes
        .iter()
        .filter(|c| c["_meta"]["source"]["snapshot"] == json!(true))
        .map(data)
        .collect();
    assert_eq!(snapshot, expected);
    assert_eq!(
        data(changes.last().unwrap()),
        json!({"id": 6, "v": "third"})
    );
    let definition = Definition::load(&source.store()).unwrap().unwrap();
    assert_eq!(definition.bindings[0].oid, Some(last_oid));
    assert_eq!(ops(&source.changes("public/other")), vec!["c"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staging_stores_left_by_an_interrupted_backfill_are_removed_when_the_capture_starts_again()
{
    let source = Source::new(
        "stale_staging",
        "CREATE TABLE ev (id int PRIMARY KEY, v text);",
    );
    source.db.sql("INSERT INTO ev VALUES (1, 'a');");
    source.catch_up().await;
    // What a capture stopped or killed during a backfill beside the stream leaves: its staging
    // store, under a name no later run uses.
    let stale = source
        .store
        .join("backfills")
        .join("tidepool_backfill_0123456789ab");
    std::fs::create_dir_all(&stale).unwrap();
    std::fs::write(stale.join("tidepool.db"), vec![7u8; 1 << 20]).unwrap();
    std::fs::write(stale.join("tidepool.db-wal"), vec![7u8; 1 << 16]).unwrap();
    source.db.sql("INSERT INTO ev VALUES (2, 'b');");
    source.catch_up().await;
    assert!(!stale.exists(), "the stale staging store is still there");
    assert_eq!(
        contents(&source.rows("public/ev")),
        vec![json!({"id": 1, "v": "a"}), json!({"id": 2, "v": "b"})]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_dropped_again_before_its_rebackfill_reads_it_is_emptied_and_follows_the_next_table(
) {
    let source = Source::new(
        "id_gone_before_read",
        "CREATE TABLE ev (id int PRIMARY KEY, v text);",
    );
    let bindings = vec![only_changes("public", "ev")];
    source
        .db
        .sql("INSERT INTO ev VALUES (1, 'old'), (2, 'old');");
    catch_up_with(&source, bindings).await;
    assert_eq!(source.rows("public/ev").len(), 2);
    // One transaction: when the stream meets the second table, no table of the name exists, so
    // the re-backfill's snapshot has none to read.
    source.db.sql(
        "BEGIN;
         DROP TABLE ev;
         CREATE TABLE ev (id int PRIMARY KEY, v text);
         INSERT INTO ev VALUES (2, 'second'), (3, 'second');
         DROP TABLE ev;
         COMMIT;",
    );
    let report = source.catch_up().await;
    assert_notice(&report, &["public/ev", "re-backfill"]);
    // The table is gone: none of its rows is current, and the log keeps what happened.
    assert!(
        source.rows("public/ev").is_empty(),
        "{:?}",
        source.rows("public/ev")
    );
    let changes = source.changes("public/ev");
    assert_eq!(
        contents(&changes),
        vec![
            json!({"id": 1, "v": "old"}),
            json!({"id": 2, "v": "old"}),
            json!({"id": 2, "v": "second"}),
            json!({"id": 3, "v": "second"}),
        ]
    );
    // The next table of the name is the collection's, with no second re-backfill.
    source.db.sql(
        "CREATE TABLE ev (id int PRIMARY KEY, v text);
         INSERT INTO ev VALUES (9, 'next');",
    );
    let report = source.catch_up().await;
    assert!(report.notices.is_empty(), "{:?}", report.notices);
    assert_eq!(
        contents(&source.rows("public/ev")),
        vec![json!({"id": 9, "v": "next"})]
    );
    let definition = Definition::load(&source.store()).unwrap().unwrap();
    assert_eq!(definition.bindings[0].oid, Some(table_oid(&source, "ev")));
}
