//! Publishing never makes the source refuse writes: on a database with tables that have no usable
//! replica identity (no primary key, REPLICA IDENTITY NOTHING, USING INDEX on a dropped index), every
//! fix Setup offers, "Save and publish" and `tidepool setup publication` leave UPDATE and DELETE on
//! them working (checked in PostgreSQL); a plan without a choice is refused; each choice does what it
//! says.

use tidepool::binding::{Binding, Definition};
use tidepool::capture::CaptureOptions;
use tidepool::source::connection::connect;
use tidepool::source::preflight::{run, Check, Status, Target};
use tidepool::source::publication::{Choice, Handling, Plan, Request, TableRef};
use tidepool::source::setup::Action;
use tidepool::ErrorKind;

use crate::harness::{self, TestDb};

/// Keyed orders, and three tables whose UPDATE and DELETE PostgreSQL would refuse once published
/// with updates and deletes, each with a row.
const SCHEMA: &str = "
CREATE SCHEMA shop;
CREATE TABLE shop.orders (id int PRIMARY KEY, n int);
CREATE TABLE shop.page_views (path text NOT NULL, n int);
CREATE TABLE shop.ledger (id int PRIMARY KEY, n int);
ALTER TABLE shop.ledger REPLICA IDENTITY NOTHING;
CREATE TABLE shop.tagged (id int NOT NULL, n int);
CREATE UNIQUE INDEX tagged_id ON shop.tagged (id);
ALTER TABLE shop.tagged REPLICA IDENTITY USING INDEX tagged_id;
DROP INDEX shop.tagged_id;
INSERT INTO shop.orders VALUES (1, 0);
INSERT INTO shop.page_views VALUES ('/a', 0), ('/b', 0);
INSERT INTO shop.ledger VALUES (1, 0), (2, 0);
INSERT INTO shop.tagged VALUES (1, 0), (2, 0);
";

const HAZARDOUS: [&str; 3] = ["page_views", "ledger", "tagged"];

fn all_tables() -> Vec<TableRef> {
    ["orders", "page_views", "ledger", "tagged"]
        .iter()
        .map(|t| TableRef::new("shop", t))
        .collect()
}

fn target(publication: &str, tables: &[TableRef]) -> Target {
    Target {
        host: "127.0.0.1".into(),
        publication: publication.into(),
        slot: "unused_slot".into(),
        tables: tables
            .iter()
            .map(|t| (t.schema.clone(), t.table.clone()))
            .collect(),
        neon_project: None,
        neon_branch: None,
        slot_warn_bytes: None,
        running_capture: None,
        store_history: None,
    }
}

fn find<'a>(checks: &'a [Check], id: &str) -> &'a Check {
    checks
        .iter()
        .find(|c| c.id == id)
        .unwrap_or_else(|| panic!("no check {id} in {checks:#?}"))
}

/// An UPDATE and a DELETE of a real row of `shop.<table>` succeed (PostgreSQL checks the replica
/// identity at execution, so a refused table fails here exactly as the user's application would).
fn assert_writes_accepted(db: &TestDb, table: &str) {
    let table = format!("shop.{table}");
    let outcome = db.cluster.psql(
        &db.name,
        &format!(
            "BEGIN; UPDATE {table} SET n = n + 1; DELETE FROM {table} WHERE ctid = (SELECT min(ctid) FROM {table}); ROLLBACK;"
        ),
    );
    assert!(
        outcome.is_ok(),
        "UPDATE/DELETE on {table} refused: {outcome:?}"
    );
}

fn assert_every_write_accepted(db: &TestDb) {
    for table in ["orders", "page_views", "ledger", "tagged"] {
        assert_writes_accepted(db, table);
    }
}

fn choose(handling: Handling) -> Vec<Choice> {
    HAZARDOUS
        .iter()
        .map(|t| Choice {
            schema: "shop".into(),
            table: t.to_string(),
            handling,
        })
        .collect()
}

fn published(db: &TestDb, publication: &str) -> Vec<String> {
    db.sql(&format!(
        "SELECT tablename FROM pg_publication_tables WHERE pubname = '{publication}' ORDER BY 1;"
    ))
    .lines()
    .map(str::to_string)
    .collect()
}

#[tokio::test]
async fn the_publication_fix_asks_first_and_refuses_a_plan_that_would_break_writes() {
    let db = TestDb::new(harness::plain(), "pub_refuse");
    db.sql(SCHEMA);
    // The harness's assumption about PostgreSQL: a dropped identity index leaves USING INDEX behind.
    assert_eq!(
        db.sql("SELECT relreplident FROM pg_class WHERE relname = 'tagged';")
            .trim(),
        "i"
    );
    let admin = connect(&db.spec()).await.unwrap();

    // Nothing picked: the fix asks for tables; it never runs FOR ALL TABLES.
    let checks = run(&admin, &target("shop pub", &[])).await.unwrap();
    let publication = find(&checks, "publication");
    assert_eq!(publication.status, Status::Fail);
    let fix = publication.fix.as_ref().unwrap();
    assert!(fix.preview.is_empty(), "{:?}", fix.preview);
    assert!(publication.explanation.contains("Pick the tables"));
    let err = fix.action.run(&admin).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(err.message().starts_with("tables:"), "{err}");

    // Every table picked: the plan names each table without identity, why, and leaves it out of
    // the statements until the user chooses.
    let checks = run(&admin, &target("shop pub", &all_tables()))
        .await
        .unwrap();
    let publication = find(&checks, "publication");
    assert_eq!(publication.status, Status::Fail);
    assert!(
        publication
            .explanation
            .contains("3 table(s) have no primary key"),
        "{}",
        publication.explanation
    );
    let fix = publication.fix.as_ref().unwrap();
    let plan = fix
        .plan
        .as_ref()
        .expect("the publication fix carries its plan");
    assert_eq!(
        plan.statements,
        vec![r#"CREATE PUBLICATION "shop pub" FOR TABLE "shop"."orders""#]
    );
    assert_eq!(fix.preview, plan.statements);
    let reasons: Vec<(&str, &str)> = plan
        .hazards
        .iter()
        .map(|h| (h.table.table.as_str(), h.reason.as_str()))
        .collect();
    assert_eq!(
        reasons,
        vec![
            ("page_views", "no primary key and REPLICA IDENTITY DEFAULT"),
            ("ledger", "REPLICA IDENTITY NOTHING"),
            (
                "tagged",
                "REPLICA IDENTITY USING INDEX names an index that no longer exists"
            ),
        ]
    );
    for hazard in &plan.hazards {
        assert!(!hazard.refused_now);
        assert_eq!(hazard.handling, None);
        assert_eq!(
            hazard.options,
            vec![
                Handling::LeaveOut,
                Handling::ReplicaIdentityFull,
                Handling::InsertOnly
            ]
        );
    }
    // Run without a choice: refused, nothing created.
    let err = fix.action.run(&admin).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(err.message().contains("\"shop\".\"page_views\""), "{err}");
    assert!(
        err.message().contains("refuse every UPDATE and DELETE"),
        "{err}"
    );
    assert_eq!(db.sql("SELECT count(*) FROM pg_publication;").trim(), "0");
    assert_every_write_accepted(&db);

    // A statement list the user did not see is refused too (the engine plans again and compares).
    let request = Request {
        publication: "shop pub".into(),
        tables: all_tables(),
        choices: choose(Handling::LeaveOut),
        all_tables: false,
    };
    let forged = Action::Publication {
        request: request.clone(),
        statements: vec![r#"CREATE PUBLICATION "shop pub" FOR ALL TABLES"#.into()],
    };
    let err = forged.run(&admin).await.unwrap_err();
    assert!(err.message().contains("changed since the preview"), "{err}");
    assert_eq!(db.sql("SELECT count(*) FROM pg_publication;").trim(), "0");

    // The last line of defence: a plan whose statements would break writes is rolled back even when
    // it claims no hazard (as when a key is dropped between planning and running).
    let sneaky = Plan {
        request,
        statements: vec![r#"CREATE PUBLICATION "shop pub" FOR TABLE "shop"."page_views""#.into()],
        hazards: Vec::new(),
        notes: Vec::new(),
    };
    let err = tidepool::source::publication::apply(&admin, &sneaky)
        .await
        .unwrap_err();
    assert!(err.message().contains("\"shop\".\"page_views\""), "{err}");
    assert_eq!(db.sql("SELECT count(*) FROM pg_publication;").trim(), "0");
    assert_every_write_accepted(&db);
}

#[tokio::test]
async fn each_choice_does_what_it_says_and_writes_keep_working() {
    for handling in [
        Handling::LeaveOut,
        Handling::ReplicaIdentityFull,
        Handling::InsertOnly,
    ] {
        let db = TestDb::new(harness::plain(), "pub_choice");
        db.sql(SCHEMA);
        let admin = connect(&db.spec()).await.unwrap();
        let request = Request {
            publication: "shop pub".into(),
            tables: all_tables(),
            choices: choose(handling),
            all_tables: false,
        };
        let plan = tidepool::source::publication::plan(&admin, &request)
            .await
            .unwrap();
        assert!(plan.undecided().is_empty());
        assert_eq!(plan.notes.len(), 3, "{:?}", plan.notes);
        // What the user confirms is what runs.
        Action::Publication {
            request: request.clone(),
            statements: plan.statements.clone(),
        }
        .run(&admin)
        .await
        .unwrap();
        assert_every_write_accepted(&db);
        let identities = db.sql(
            "SELECT string_agg(relreplident::text, '' ORDER BY relname) FROM pg_class
              WHERE relname IN ('page_views', 'ledger', 'tagged');",
        );
        let companion = "shop pub_insert_only";
        match handling {
            Handling::LeaveOut => {
                assert_eq!(
                    plan.statements,
                    vec![r#"CREATE PUBLICATION "shop pub" FOR TABLE "shop"."orders""#]
                );
                assert_eq!(published(&db, "shop pub"), vec!["orders"]);
                assert_eq!(identities.trim(), "ndi", "identities untouched");
            }
            Handling::ReplicaIdentityFull => {
                assert_eq!(
                    plan.statements,
                    vec![
                        r#"ALTER TABLE "shop"."page_views" REPLICA IDENTITY FULL"#,
                        r#"ALTER TABLE "shop"."ledger" REPLICA IDENTITY FULL"#,
                        r#"ALTER TABLE "shop"."tagged" REPLICA IDENTITY FULL"#,
                        r#"CREATE PUBLICATION "shop pub" FOR TABLE "shop"."orders", "shop"."page_views", "shop"."ledger", "shop"."tagged""#,
                    ]
                );
                assert_eq!(
                    published(&db, "shop pub"),
                    vec!["ledger", "orders", "page_views", "tagged"]
                );
                assert_eq!(identities.trim(), "fff");
            }
            Handling::InsertOnly => {
                assert_eq!(
                    plan.statements,
                    vec![
                        r#"CREATE PUBLICATION "shop pub" FOR TABLE "shop"."orders""#,
                        r#"CREATE PUBLICATION "shop pub_insert_only" FOR TABLE "shop"."page_views", "shop"."ledger", "shop"."tagged" WITH (publish = 'insert')"#,
                    ]
                );
                assert!(
                    plan.notes[0].contains("publish = 'insert'"),
                    "{}",
                    plan.notes[0]
                );
                assert_eq!(published(&db, "shop pub"), vec!["orders"]);
                assert_eq!(
                    published(&db, companion),
                    vec!["ledger", "page_views", "tagged"]
                );
                assert_eq!(
                    db.sql(&format!("SELECT pubinsert, pubupdate, pubdelete, pubtruncate FROM pg_publication WHERE pubname = '{companion}';")).trim(),
                    "t|f|f|f"
                );
                assert_eq!(identities.trim(), "ndi", "identities untouched");
            }
        }
        // Checked again, the setup passes: the choices persist in the server's state (an insert-only
        // table is in the companion; a left-out one is simply not asked for again).
        let asked: Vec<TableRef> = match handling {
            Handling::LeaveOut => vec![TableRef::new("shop", "orders")],
            _ => all_tables(),
        };
        let checks = run(&admin, &target("shop pub", &asked)).await.unwrap();
        assert_eq!(
            find(&checks, "publication").status,
            Status::Pass,
            "{handling:?}: {:#?}",
            find(&checks, "publication")
        );
    }
}

#[tokio::test]
async fn a_keyless_table_already_published_is_a_fail_whose_fixes_restore_writes() {
    let db = TestDb::new(harness::plain(), "pub_broken");
    db.sql(SCHEMA);
    // The user's own publication covers page_views: PostgreSQL refuses its writes now.
    db.sql("CREATE PUBLICATION mine FOR TABLE shop.orders, shop.page_views;");
    assert!(db
        .cluster
        .psql(&db.name, "UPDATE shop.page_views SET n = 1;")
        .unwrap_err()
        .message()
        .contains("does not have a replica identity"));
    let admin = connect(&db.spec()).await.unwrap();
    let checks = run(&admin, &target("mine", &[])).await.unwrap();
    let identity = find(&checks, "replica_identity:shop.page_views");
    assert_eq!(identity.status, Status::Fail);
    assert!(
        identity
            .explanation
            .contains("refusing every UPDATE and DELETE on this table now"),
        "{}",
        identity.explanation
    );
    assert!(identity.explanation.contains("DROP TABLE"));

    // Leaving it out of the publication that covers it (the plan offers it: the publication is ours).
    let request = Request {
        publication: "mine".into(),
        tables: vec![
            TableRef::new("shop", "orders"),
            TableRef::new("shop", "page_views"),
        ],
        choices: vec![],
        all_tables: false,
    };
    let plan = tidepool::source::publication::plan(&admin, &request)
        .await
        .unwrap();
    assert!(plan.hazards[0].refused_now);
    assert!(plan.notes[0].contains("refusing its UPDATEs and DELETEs now"));
    let mut leave = request.clone();
    leave.choices = vec![Choice {
        schema: "shop".into(),
        table: "page_views".into(),
        handling: Handling::LeaveOut,
    }];
    let plan = tidepool::source::publication::plan(&admin, &leave)
        .await
        .unwrap();
    assert_eq!(
        plan.statements,
        vec![r#"ALTER PUBLICATION "mine" DROP TABLE "shop"."page_views""#]
    );
    tidepool::source::publication::apply(&admin, &plan)
        .await
        .unwrap();
    assert_every_write_accepted(&db);

    // Covered by FOR ALL TABLES (not a list Tidepool can take it out of): only REPLICA IDENTITY FULL
    // is offered, and the check's fix sets it.
    db.sql("CREATE PUBLICATION everything FOR ALL TABLES;");
    assert!(db
        .cluster
        .psql(&db.name, "DELETE FROM shop.ledger;")
        .is_err());
    let mut all = request.clone();
    all.publication = "everything".into();
    all.tables = vec![TableRef::new("shop", "ledger")];
    let plan = tidepool::source::publication::plan(&admin, &all)
        .await
        .unwrap();
    assert_eq!(plan.hazards[0].options, vec![Handling::ReplicaIdentityFull]);
    all.choices = vec![Choice {
        schema: "shop".into(),
        table: "ledger".into(),
        handling: Handling::LeaveOut,
    }];
    assert!(tidepool::source::publication::plan(&admin, &all)
        .await
        .is_err());
    let checks = run(&admin, &target("everything", &[])).await.unwrap();
    for table in HAZARDOUS {
        let check = find(&checks, &format!("replica_identity:shop.{table}"));
        assert_eq!(check.status, Status::Fail, "{check:#?}");
        check
            .fix
            .as_ref()
            .unwrap()
            .action
            .run(&admin)
            .await
            .unwrap();
    }
    assert_every_write_accepted(&db);
    db.sql("DROP PUBLICATION everything; DROP PUBLICATION mine;");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn save_and_publish_refuses_a_keyless_table_without_a_choice_and_captures_its_inserts_only() {
    let db = TestDb::new(harness::plain(), "pub_save");
    db.sql(SCHEMA);
    let store = harness::temp_dir("pub_save");
    let definition = Definition {
        profile: None,
        publication: "save pub".into(),
        slot: db.name.clone(),
        bindings: vec![
            Binding::new("shop", "orders"),
            Binding::new("shop", "page_views"),
        ],
    };
    // No choice: refused, nothing created, nothing saved.
    let err = tidepool::capture::publish(&db.spec(), &store, &definition)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(err.message().contains("\"shop\".\"page_views\""), "{err}");
    assert_eq!(db.sql("SELECT count(*) FROM pg_publication;").trim(), "0");
    let saved = tidepool::store::Store::open_existing(&store)
        .unwrap()
        .map(|s| Definition::load(&s).unwrap());
    assert!(saved.flatten().is_none(), "a refused publish saved nothing");
    // Leaving out a table that is selected for capture is refused: unselect it instead.
    let leave = vec![Choice {
        schema: "shop".into(),
        table: "page_views".into(),
        handling: Handling::LeaveOut,
    }];
    let err = tidepool::capture::publish_with(&db.spec(), &store, &definition, &leave)
        .await
        .unwrap_err();
    assert!(err.message().contains("unselect it"), "{err}");
    assert_eq!(db.sql("SELECT count(*) FROM pg_publication;").trim(), "0");

    let inserts = vec![Choice {
        schema: "shop".into(),
        table: "page_views".into(),
        handling: Handling::InsertOnly,
    }];
    let ran = tidepool::capture::publish_with(&db.spec(), &store, &definition, &inserts)
        .await
        .unwrap();
    assert_eq!(
        ran,
        vec![
            r#"CREATE PUBLICATION "save pub" FOR TABLE "shop"."orders""#,
            r#"CREATE PUBLICATION "save pub_insert_only" FOR TABLE "shop"."page_views" WITH (publish = 'insert')"#,
        ]
    );
    assert_every_write_accepted(&db);
    // Publishing again has nothing left to do (the companion remembers the choice).
    assert!(tidepool::capture::publish(&db.spec(), &store, &definition)
        .await
        .unwrap()
        .is_empty());

    // The capture decodes the companion too: page_views' inserts arrive, its updates and deletes
    // run in PostgreSQL and are not captured.
    let options = CaptureOptions {
        spec: db.spec(),
        store_dir: store.clone(),
        publication: "save pub".into(),
        slot: db.name.clone(),
        create_slot: true,
        stop_at: None,
        observer: None,
        bindings: vec![],
        backfill_progress: None,
    };
    tidepool::capture::run(CaptureOptions {
        stop_at: Some(db.current_lsn()),
        ..options.clone()
    })
    .await
    .unwrap();
    db.sql(
        "INSERT INTO shop.page_views VALUES ('/c', 7);
         UPDATE shop.page_views SET n = 9 WHERE path = '/a';
         DELETE FROM shop.page_views WHERE path = '/b';
         INSERT INTO shop.orders VALUES (2, 0); UPDATE shop.orders SET n = 5 WHERE id = 2;",
    );
    tidepool::capture::run(CaptureOptions {
        stop_at: Some(db.current_lsn()),
        ..options
    })
    .await
    .unwrap();
    let stored = tidepool::store::Store::open(&store).unwrap();
    let views: Vec<(String, String)> = stored
        .changes("shop/page_views", 0, 100)
        .unwrap()
        .into_iter()
        .filter(|(_, d)| d["_meta"]["source"]["snapshot"] != true)
        .map(|(_, d)| {
            (
                d["_meta"]["op"].as_str().unwrap().to_string(),
                d["path"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(views, vec![("c".to_string(), "/c".to_string())]);
    let orders: Vec<String> = stored
        .changes("shop/orders", 0, 100)
        .unwrap()
        .into_iter()
        .filter(|(_, d)| d["_meta"]["source"]["snapshot"] != true)
        .map(|(_, d)| d["_meta"]["op"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(orders, vec!["c", "u"]);
    db.sql(&format!("SELECT pg_drop_replication_slot('{}');", db.name));
    std::fs::remove_dir_all(store).unwrap();
}

#[test]
fn the_command_line_requires_tables_and_a_choice_for_each_keyless_one() {
    let db = TestDb::new(harness::plain(), "pub_cli");
    db.sql(SCHEMA);
    let url = format!(
        "postgres://postgres@127.0.0.1:{}/{}?sslmode=disable",
        db.cluster.port(),
        db.name
    );
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tidepool"))
            .args(["setup", "--url", &url, "--publication", "cli pub"])
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
    // No tables: refused (never FOR ALL TABLES).
    let (ok, _, err) = run(&["publication"]);
    assert!(!ok && err.contains("--tables"), "{err}");
    // A keyless table without a choice: the dry run says why; the real run refuses.
    let tables = "shop.orders,shop.page_views";
    let (ok, out, err) = run(&["--tables", tables, "--dry-run", "publication"]);
    assert!(ok, "{err}");
    assert_eq!(
        out.trim(),
        r#"CREATE PUBLICATION "cli pub" FOR TABLE "shop"."orders""#
    );
    assert!(
        err.contains("would make PostgreSQL refuse every UPDATE and DELETE"),
        "{err}"
    );
    let (ok, _, err) = run(&["--tables", tables, "publication"]);
    assert!(!ok, "ran without a choice");
    assert!(err.contains("--keyless"), "{err}");
    assert_eq!(db.sql("SELECT count(*) FROM pg_publication;").trim(), "0");
    // With a choice it runs, and writes keep working.
    let (ok, out, err) = run(&[
        "--tables",
        tables,
        "publication",
        "--keyless",
        "shop.page_views=replica-identity-full",
    ]);
    assert!(ok, "{err}");
    assert_eq!(
        out.trim(),
        "ALTER TABLE \"shop\".\"page_views\" REPLICA IDENTITY FULL\nCREATE PUBLICATION \"cli pub\" FOR TABLE \"shop\".\"orders\", \"shop\".\"page_views\""
    );
    assert_every_write_accepted(&db);
    assert_eq!(published(&db, "cli pub"), vec!["orders", "page_views"]);
    let (ok, _, err) = run(&[
        "--tables",
        "shop.ledger",
        "publication",
        "--keyless",
        "shop.ledger=sometimes",
    ]);
    assert!(!ok && err.contains("'sometimes'"), "{err}");
}

#[test]
fn all_tables_is_checked_for_keyless_tables_first_and_previewed() {
    let db = TestDb::new(harness::plain(), "pub_all");
    db.sql(SCHEMA);
    let url = format!(
        "postgres://postgres@127.0.0.1:{}/{}?sslmode=disable",
        db.cluster.port(),
        db.name
    );
    let run = |publication: &str, args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tidepool"))
            .args(["setup", "--url", &url, "--publication", publication])
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
    let publications = || {
        db.sql("SELECT count(*) FROM pg_publication;")
            .trim()
            .to_string()
    };
    // The dry run shows the statement and names every keyless table.
    let (ok, out, err) = run("all pub", &["--dry-run", "publication", "--all-tables"]);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), r#"CREATE PUBLICATION "all pub" FOR ALL TABLES"#);
    for table in HAZARDOUS {
        assert!(
            err.contains(&format!("\"shop\".\"{table}\""))
                && err.contains("FOR ALL TABLES would make PostgreSQL refuse"),
            "{table}: {err}"
        );
    }
    // Without a choice the real run is refused with the list and the choices; nothing changes.
    let (ok, _, err) = run("all pub", &["publication", "--all-tables"]);
    assert!(!ok, "ran without a choice");
    assert!(
        err.contains("--keyless")
            && err
                .contains("\"shop\".\"page_views\" (no primary key and REPLICA IDENTITY DEFAULT)")
            && err.contains("\"shop\".\"ledger\" (REPLICA IDENTITY NOTHING)")
            && err.contains("\"shop\".\"tagged\"")
            && err.contains("set REPLICA IDENTITY FULL, or publish the tables by name"),
        "{err}"
    );
    assert_eq!(publications(), "0");
    assert_every_write_accepted(&db);
    // FOR ALL TABLES cannot leave a table out, and --tables with --all-tables is refused.
    let (ok, _, err) = run(
        "all pub",
        &[
            "publication",
            "--all-tables",
            "--keyless",
            "shop.page_views=leave-out",
        ],
    );
    assert!(!ok && err.contains("cannot be left out"), "{err}");
    let (ok, _, err) = run(
        "all pub",
        &["--tables", "shop.orders", "publication", "--all-tables"],
    );
    assert!(!ok && err.contains("not both"), "{err}");
    assert_eq!(publications(), "0");
    // With replica-identity-full for each it runs, printed first, and every write still works.
    let (ok, out, err) = run(
        "all pub",
        &[
            "publication",
            "--all-tables",
            "--keyless",
            "shop.page_views=replica-identity-full",
            "--keyless",
            "shop.ledger=replica-identity-full",
            "--keyless",
            "shop.tagged=replica-identity-full",
        ],
    );
    assert!(ok, "{err}");
    assert_eq!(
        out.trim(),
        "ALTER TABLE \"shop\".\"ledger\" REPLICA IDENTITY FULL\n\
         ALTER TABLE \"shop\".\"page_views\" REPLICA IDENTITY FULL\n\
         ALTER TABLE \"shop\".\"tagged\" REPLICA IDENTITY FULL\n\
         CREATE PUBLICATION \"all pub\" FOR ALL TABLES"
    );
    assert_eq!(
        db.sql("SELECT puballtables FROM pg_publication WHERE pubname = 'all pub';")
            .trim(),
        "t"
    );
    assert_every_write_accepted(&db);
    // A publication with a table list cannot become FOR ALL TABLES.
    let (ok, _, err) = run("listed", &["--tables", "shop.orders", "publication"]);
    assert!(ok, "{err}");
    let (ok, _, err) = run("listed", &["publication", "--all-tables"]);
    assert!(
        !ok && err.contains("cannot turn it into FOR ALL TABLES"),
        "{err}"
    );
}
