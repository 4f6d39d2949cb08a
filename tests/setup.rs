//! Preflight checks in their pass and fail states, and every fix turning a fail into a pass, against
//! real clusters; hostile names go through the fixes without injecting anything.

use tidepool::source::connection::{connect, ConnectionSpec};
use tidepool::source::preflight::{run, Check, Status, Target};
use tidepool::source::setup::Action;

use crate::harness::{self, TestDb};

fn target(publication: &str, slot: &str, tables: &[(&str, &str)]) -> Target {
    Target {
        host: "127.0.0.1".into(),
        publication: publication.into(),
        slot: slot.into(),
        tables: tables
            .iter()
            .map(|(s, t)| (s.to_string(), t.to_string()))
            .collect(),
        neon_project: None,
        neon_branch: None,
        slot_warn_bytes: None,
        running_capture: None,
        store_history: None,
    }
}

async fn checks(spec: &ConnectionSpec, target: &Target) -> Vec<Check> {
    run(&connect(spec).await.unwrap(), target).await.unwrap()
}

fn find<'a>(checks: &'a [Check], id: &str) -> &'a Check {
    checks
        .iter()
        .find(|c| c.id == id)
        .unwrap_or_else(|| panic!("no check {id} in {checks:#?}"))
}

/// Runs a check's fix as `admin` and returns what it ran.
async fn fix(admin: &ConnectionSpec, check: &Check) -> Vec<String> {
    let fix = check
        .fix
        .as_ref()
        .unwrap_or_else(|| panic!("{} has no fix", check.id));
    fix.action
        .run(&connect(admin).await.unwrap())
        .await
        .unwrap();
    fix.preview.clone()
}

#[tokio::test]
async fn wal_level_replica_fails_with_the_alter_system_fix() {
    let db = TestDb::new(harness::replica(), "setup_wal");
    let t = target("p", "s", &[]);
    let found = checks(&db.spec(), &t).await;
    let wal = find(&found, "wal_level");
    assert_eq!(wal.status, Status::Fail);
    assert!(wal.explanation.contains("'replica'"), "{}", wal.explanation);
    assert_eq!(
        fix(&db.spec(), wal).await,
        vec!["ALTER SYSTEM SET wal_level = logical"]
    );
    // Written for the next restart (the cluster is shared, so it is taken back right away).
    assert_eq!(
        db.sql("SELECT setting FROM pg_file_settings WHERE name = 'wal_level' AND sourcefile LIKE '%postgresql.auto.conf';").trim(),
        "logical"
    );
    db.sql("ALTER SYSTEM RESET wal_level;");

    // On a Neon host without a linked project there is no SQL fix, and the explanation says where to go;
    // linked, the fix is the API call.
    let mut neon = t.clone();
    neon.host = "ep-cool-darkness-123456.us-east-2.aws.neon.tech".into();
    let found = checks(&db.spec(), &neon).await;
    assert!(find(&found, "wal_level").fix.is_none());
    assert!(find(&found, "wal_level").explanation.contains("Neon"));
    neon.neon_project = Some("hidden-cell-763301".into());
    let found = checks(&db.spec(), &neon).await;
    let fix = find(&found, "wal_level").fix.clone().unwrap();
    assert_eq!(
        fix.preview,
        vec![
            r#"PATCH /api/v2/projects/hidden-cell-763301 {"project":{"settings":{"enable_logical_replication":true}}}"#
        ]
    );
    assert!(fix.warning.unwrap().contains("Cannot be undone"));
}

#[tokio::test]
async fn every_fail_turns_into_a_pass_with_its_fix() {
    let db = TestDb::new(harness::plain(), "setup_fix");
    db.sql(
        "CREATE SCHEMA shop;
            CREATE TABLE shop.orders (id int PRIMARY KEY, n int);
            CREATE TABLE shop.log (at timestamptz, line int);
            CREATE TABLE shop.docs (id int PRIMARY KEY, body text);",
    );
    let user = db.role("setup_user", "", "pw");
    let t = target(
        "setup pub",
        &db.name,
        &[("shop", "orders"), ("shop", "log"), ("shop", "docs")],
    );
    let found = checks(&user, &t).await;
    assert_eq!(find(&found, "wal_level").status, Status::Pass);
    assert_eq!(find(&found, "pooler").status, Status::Pass);
    assert_eq!(find(&found, "capacity").status, Status::Pass);
    for id in [
        "replication",
        "grants:shop",
        "publication",
        "replica_identity:shop.log",
    ] {
        assert_eq!(
            find(&found, id).status,
            Status::Fail,
            "{id}: {:?}",
            find(&found, id)
        );
    }
    assert_eq!(
        find(&found, "replica_identity:shop.orders").status,
        Status::Pass
    );
    // Keyed, but a text column can be TOASTed.
    assert_eq!(
        find(&found, "replica_identity:shop.docs").status,
        Status::Warn
    );
    // The missing slot is no failure: the capture's first start creates it, backfilling first.
    let slot = find(&found, "slot");
    assert_eq!(slot.status, Status::Step, "{slot:?}");
    assert!(slot.fix.is_none(), "{slot:?}");

    let admin = db.spec();
    assert_eq!(
        fix(&admin, find(&found, "replication")).await,
        vec![format!("ALTER ROLE \"{}\" WITH REPLICATION", user.user)]
    );
    assert_eq!(fix(&admin, find(&found, "grants:shop")).await.len(), 3);
    // Keyless shop.log would refuse UPDATE and DELETE once published: the publication fix leaves it
    // out of its statements and refuses to run until it is decided (tests/publication.rs has the
    // choices); its own fix, REPLICA IDENTITY FULL, decides it.
    let publication = find(&found, "publication");
    assert_eq!(
        publication.fix.as_ref().unwrap().preview,
        vec![r#"CREATE PUBLICATION "setup pub" FOR TABLE "shop"."orders", "shop"."docs""#]
    );
    assert!(publication
        .fix
        .as_ref()
        .unwrap()
        .action
        .run(&connect(&admin).await.unwrap())
        .await
        .is_err());
    fix(&admin, find(&found, "replica_identity:shop.log")).await;
    fix(&admin, find(&found, "replica_identity:shop.docs")).await;
    let found = checks(&user, &t).await;
    assert_eq!(
        fix(&admin, find(&found, "publication")).await,
        vec![
            r#"CREATE PUBLICATION "setup pub" FOR TABLE "shop"."orders", "shop"."log", "shop"."docs""#
        ]
    );
    let after = checks(&user, &t).await;
    for c in &after {
        let expected = if c.id == "slot" {
            Status::Step
        } else {
            Status::Pass
        };
        assert_eq!(c.status, expected, "{c:#?}");
    }
    // A slot made by hand (`tidepool setup create-slot`, by the user, who may replicate now) passes;
    // its action says it holds WAL from now and that the backfill takes a snapshot of its own.
    let create = Action::CreateSlot {
        slot: db.name.clone(),
    };
    let warning = create.warning().unwrap();
    assert!(
        warning.contains("holding WAL from this moment"),
        "{warning}"
    );
    assert!(warning.contains("a snapshot of its own"), "{warning}");
    create.run(&connect(&user).await.unwrap()).await.unwrap();
    assert_eq!(find(&checks(&user, &t).await, "slot").status, Status::Pass);

    // A table added to the list later is missing from the publication: the fix adds it.
    db.sql("CREATE TABLE shop.extra (id int PRIMARY KEY); GRANT SELECT ON shop.extra TO PUBLIC;");
    let mut more = t.clone();
    more.tables.push(("shop".into(), "extra".into()));
    let found = checks(&user, &more).await;
    assert_eq!(
        fix(&admin, find(&found, "publication")).await,
        vec![r#"ALTER PUBLICATION "setup pub" ADD TABLE "shop"."extra""#]
    );
    assert_eq!(
        find(&checks(&user, &more).await, "publication").status,
        Status::Pass
    );
    db.sql(&format!("SELECT pg_drop_replication_slot('{}');", db.name));
}

#[tokio::test]
async fn foreign_and_stale_slots_are_flagged_with_a_drop_fix() {
    let db = TestDb::new(harness::plain(), "setup_slot");
    // Someone else's slot under our name: another plugin.
    db.sql(&format!(
        "SELECT pg_create_logical_replication_slot('{}', 'test_decoding');",
        db.name
    ));
    let mut t = target("p", &db.name, &[]);
    let found = checks(&db.spec(), &t).await;
    let slot = find(&found, "slot");
    assert_eq!(slot.status, Status::Fail);
    assert!(
        slot.explanation.contains("test_decoding"),
        "{}",
        slot.explanation
    );
    assert_eq!(
        fix(&db.spec(), slot).await,
        vec![format!("SELECT pg_drop_replication_slot('{}')", db.name)]
    );
    assert!(find(&checks(&db.spec(), &t).await, "slot")
        .explanation
        .contains("does not exist"));

    // A stale pgoutput slot that holds back WAL: a warning, with the drop offered.
    db.sql(&format!(
        "SELECT pg_create_logical_replication_slot('{}', 'pgoutput'); CREATE TABLE w (v text);
         INSERT INTO w SELECT repeat('x', 1000) FROM generate_series(1, 2000);",
        db.name
    ));
    t.slot_warn_bytes = Some(1024 * 1024);
    let found = checks(&db.spec(), &t).await;
    let slot = find(&found, "slot");
    assert_eq!(slot.status, Status::Warn, "{slot:#?}");
    assert!(
        slot.explanation.contains("holds back"),
        "{}",
        slot.explanation
    );
    assert!(slot.fix.as_ref().unwrap().warning.is_some());
    fix(&db.spec(), slot).await;
}

/// A missing slot is a step the capture's first start takes (it creates the slot with the snapshot it
/// backfills from), not a failure with a fix that would skip the backfill; once the store has streamed
/// from it, a missing slot was dropped, and that is a failure pointing at the re-backfill.
#[tokio::test]
async fn a_missing_slot_is_a_step_before_the_first_capture_and_a_fail_after_it() {
    let db = TestDb::new(harness::plain(), "setup_noslot");
    let mut t = target("p", &db.name, &[]);
    for history in [None, Some(false)] {
        t.store_history = history;
        let slot = find(&checks(&db.spec(), &t).await, "slot").clone();
        assert_eq!(slot.status, Status::Step, "{history:?}: {slot:?}");
        assert!(slot.fix.is_none(), "{history:?}: {slot:?}");
        assert!(
            slot.explanation.contains("backfilled from first"),
            "{}",
            slot.explanation
        );
    }
    t.store_history = Some(true);
    let slot = find(&checks(&db.spec(), &t).await, "slot").clone();
    assert_eq!(slot.status, Status::Fail, "{slot:?}");
    assert!(
        slot.fix.is_none(),
        "a new slot would not bring the changes back: {slot:?}"
    );
    assert!(
        slot.explanation.contains("Re-backfill and continue"),
        "{}",
        slot.explanation
    );
    // Serialized as the UI reads it.
    assert_eq!(serde_json::to_value(Status::Step).unwrap(), "step");
}

#[tokio::test]
async fn a_pooled_neon_host_fails_with_the_direct_host() {
    let db = TestDb::new(harness::plain(), "setup_pooler");
    let mut t = target("p", "s", &[]);
    t.host = "ep-cool-darkness-123456-pooler.us-east-2.aws.neon.tech".into();
    let found = checks(&db.spec(), &t).await;
    let pooler = find(&found, "pooler");
    assert_eq!(pooler.status, Status::Fail);
    assert!(pooler
        .explanation
        .contains("ep-cool-darkness-123456.us-east-2.aws.neon.tech"));
}

#[tokio::test]
async fn hostile_names_are_quoted_everywhere_and_nothing_is_injected() {
    let db = TestDb::new(harness::plain(), "setup_hostile");
    let schema = "Sales \"Dept\"; DROP TABLE canary; --";
    let table = "Ordér Table";
    // Roles are cluster-wide: a reserved word, made unique per run, with a quote and a space.
    let role_name = format!("select \"{}\"", harness::unique("r"));
    let role = role_name.as_str();
    let publication = "pub'; DROP TABLE canary; --";
    let long = "é".repeat(31); // 62 bytes: near PostgreSQL's 63-byte limit
    db.sql(&format!(
        "CREATE TABLE canary (id int); CREATE SCHEMA {s}; CREATE TABLE {s}.{t} (id int, v text); CREATE TABLE {s}.{l} (id int PRIMARY KEY);",
        s = tidepool::source::sql::ident(schema),
        t = tidepool::source::sql::ident(table),
        l = tidepool::source::sql::ident(&long),
    ));
    let admin_client = connect(&db.spec()).await.unwrap();
    let created = Action::CreateReplicationRole { role: role.into() }
        .run(&admin_client)
        .await
        .unwrap()
        .expect("a generated password");
    assert!(created.expose().len() >= 32);
    Action::GrantSchemaAccess {
        schema: schema.into(),
        role: role.into(),
    }
    .run(&admin_client)
    .await
    .unwrap();
    Action::ReplicaIdentityFull {
        schema: schema.into(),
        table: table.into(),
    }
    .run(&admin_client)
    .await
    .unwrap();
    let request = tidepool::source::publication::Request {
        publication: publication.into(),
        tables: vec![
            tidepool::source::publication::TableRef::new(schema, table),
            tidepool::source::publication::TableRef::new(schema, &long),
        ],
        choices: Vec::new(),
        all_tables: false,
    };
    let statements = tidepool::source::publication::plan(&admin_client, &request)
        .await
        .unwrap()
        .statements;
    Action::Publication {
        request,
        statements,
    }
    .run(&admin_client)
    .await
    .unwrap();

    // The new role logs in with the generated password and passes every check on those tables.
    let mut as_role = db.spec();
    as_role.user = role.into();
    as_role.password = Some(created);
    let t = target(
        publication,
        "hostile_slot",
        &[(schema, table), (schema, &long)],
    );
    let found = checks(&as_role, &t).await;
    for id in ["replication", "publication", "wal_level"] {
        assert_eq!(
            find(&found, id).status,
            Status::Pass,
            "{:?}",
            find(&found, id)
        );
    }
    assert_eq!(
        find(&found, &format!("grants:{schema}")).status,
        Status::Pass
    );
    assert_eq!(
        find(&found, &format!("replica_identity:{schema}.{table}")).status,
        Status::Pass
    );
    assert_eq!(
        db.sql("SELECT count(*) FROM canary;").trim(),
        "0",
        "the canary table is still there"
    );
    db.sql(&format!(
        "DROP PUBLICATION {}; DROP OWNED BY {r}; DROP ROLE {r};",
        tidepool::source::sql::ident(publication),
        r = tidepool::source::sql::ident(role)
    ));
}

#[test]
fn the_command_line_prints_the_checklist_and_dry_runs_fixes() {
    let db = TestDb::new(harness::plain(), "setup_cli");
    db.sql("CREATE TABLE t (id int PRIMARY KEY);");
    let url = format!(
        "postgres://postgres@127.0.0.1:{}/{}?sslmode=disable",
        db.cluster.port(),
        db.name
    );
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_tidepool"))
            .args(args)
            .env("PGPASSWORD", db.cluster.superuser_password().expose())
            .output()
            .unwrap()
    };
    let out = run(&[
        "check",
        "--json",
        "--url",
        &url,
        "--tables",
        "public.t",
        "--publication",
        "cli pub",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let publication = json["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == "publication")
        .unwrap();
    assert_eq!(publication["status"], "fail");
    assert_eq!(
        publication["fix"]["preview"][0],
        r#"CREATE PUBLICATION "cli pub" FOR TABLE "public"."t""#
    );
    let slot = json["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == "slot")
        .unwrap();
    assert_eq!(slot["status"], "step", "{slot}");
    assert!(slot["fix"].is_null(), "{slot}");
    let strict = run(&["check", "--strict", "--url", &url, "--tables", "public.t"]);
    assert_eq!(strict.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&strict.stdout).contains("[FAIL]"));
    assert!(String::from_utf8_lossy(&strict.stdout).contains("[step] Slot"));

    let dry = run(&[
        "setup",
        "--url",
        &url,
        "--tables",
        "public.t",
        "--publication",
        "cli pub",
        "--dry-run",
        "publication",
    ]);
    assert!(dry.status.success());
    assert_eq!(
        String::from_utf8_lossy(&dry.stdout).trim(),
        r#"CREATE PUBLICATION "cli pub" FOR TABLE "public"."t""#
    );
    assert_eq!(
        db.sql("SELECT count(*) FROM pg_publication;").trim(),
        "0",
        "a dry run ran nothing"
    );
    let real = run(&[
        "setup",
        "--url",
        &url,
        "--tables",
        "public.t",
        "--publication",
        "cli pub",
        "publication",
    ]);
    assert!(
        real.status.success(),
        "{}",
        String::from_utf8_lossy(&real.stderr)
    );
    assert_eq!(
        db.sql("SELECT count(*) FROM pg_publication_tables WHERE pubname = 'cli pub';")
            .trim(),
        "1"
    );
    let refused = run(&["setup", "--url", &url, "--slot", "x", "drop-slot"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--confirm"));
}

/// Neon's guides have the database owner run the setup and the replication role only capture: a
/// capture role that owns nothing gets a permission error that says how to run the fix as an owner,
/// and the same fixes run as an owner profile (or with a password entered for the run) leave every
/// check passing for the capture role.
#[tokio::test]
async fn fixes_run_as_the_owner_make_a_capture_role_that_owns_nothing_ready() {
    use tidepool::app::profile::Profiles;
    use tidepool::secrets::Secret;
    use tidepool::source::setup::RunAs;
    use tidepool::ErrorKind;

    crate::profiles::require_keyring_session();
    let db = TestDb::new(harness::plain(), "setup_owner");
    // The owner is no superuser (Neon's neondb_owner is not one either): it owns the schema and its
    // tables and may create in the database.
    let owner = db.role("shop_owner", "", "owner-pw-3141");
    let capture = db.role("cdc_role", "", "capture-pw-2718");
    let o = tidepool::source::sql::ident(&owner.user);
    db.sql(&format!(
        "GRANT CREATE ON DATABASE {db} TO {o};
         CREATE SCHEMA shop AUTHORIZATION {o};
         SET ROLE {o};
         CREATE TABLE shop.orders (id int PRIMARY KEY, n int);
         CREATE TABLE shop.items (id int PRIMARY KEY, qty int);
         RESET ROLE;",
        db = tidepool::source::sql::ident(&db.name)
    ));

    let dir = harness::temp_dir("setup_owner_profiles");
    let profiles = Profiles::open(&dir);
    let save = |name: &str, user: &str, password: &str, database: &str| {
        let mut draft = db.profile_draft(name);
        draft.user = user.into();
        draft.database = database.into();
        profiles
            .save(None, draft, Some(Secret::new(password)))
            .unwrap()
    };
    let capture_profile = save("Capture", &capture.user, "capture-pw-2718", &db.name);
    save("Owner", &owner.user, "owner-pw-3141", &db.name);
    save("Elsewhere", &owner.user, "owner-pw-3141", "postgres");

    let t = target(
        &capture_profile.profile.publication,
        &capture_profile.profile.slot,
        &[("shop", "orders"), ("shop", "items")],
    );
    let found = checks(&capture, &t).await;
    let action = |id: &str| find(&found, id).fix.clone().unwrap().action;
    for id in ["replication", "grants:shop", "publication"] {
        assert_eq!(find(&found, id).status, Status::Fail, "{id}");
        assert!(!find(&found, id).fix.as_ref().unwrap().needs.is_empty());
    }

    // As the capture role itself, each fails for lack of rights, and the message says what to do.
    for id in ["grants:shop", "publication", "replication"] {
        let e = profiles.run_fix("Capture", action(id)).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Permission, "{id}: {e:?}");
        assert!(
            e.message().contains("Run it as the owner instead")
                && e.message().contains("--as <profile>")
                && e.message().contains(action(id).needs()),
            "{id}: {}",
            e.message()
        );
    }

    // A wrong owner password is an authentication error that does not carry the password.
    let e = profiles
        .run_fix_as(
            "Capture",
            action("grants:shop"),
            RunAs::Password {
                user: owner.user.clone(),
                password: Secret::new("wrong-horse-battery-staple"),
            },
        )
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Authentication, "{e:?}");
    assert!(!e.message().contains("wrong-horse-battery-staple"));
    assert!(!format!("{e:?}").contains("wrong-horse-battery-staple"));

    // A profile for another database is refused, naming the field, before anything runs.
    let e = profiles
        .run_fix_as(
            "Capture",
            action("grants:shop"),
            RunAs::OtherProfile {
                profile: "Elsewhere".into(),
            },
        )
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e:?}");
    assert!(e.message().starts_with("database:"), "{}", e.message());

    // A Neon action goes through the API, never as a database role.
    let e = profiles
        .run_fix_as(
            "Capture",
            Action::NeonEnableLogicalReplication {
                project_id: "p".into(),
            },
            RunAs::OtherProfile {
                profile: "Owner".into(),
            },
        )
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e:?}");

    // A role that reads the schema but holds no grant option: PostgreSQL only warns and grants
    // nothing, and the fix says so instead of looking done.
    let reader = db.role("shop_reader", "", "reader-pw-1732");
    db.sql(&format!(
        "GRANT USAGE ON SCHEMA shop TO {r}; GRANT SELECT ON ALL TABLES IN SCHEMA shop TO {r};",
        r = tidepool::source::sql::ident(&reader.user)
    ));
    let e = profiles
        .run_fix_as(
            "Capture",
            action("grants:shop"),
            RunAs::Password {
                user: reader.user.clone(),
                password: Secret::new("reader-pw-1732"),
            },
        )
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Permission, "{e:?}");
    assert!(
        e.message().contains("granted nothing")
            && e.message()
                .contains(&format!("which role '{}' lacks", reader.user)),
        "{}",
        e.message()
    );

    // The owner profile grants the schema and creates the publication.
    let owner_profile = || RunAs::OtherProfile {
        profile: "Owner".into(),
    };
    for id in ["grants:shop", "publication"] {
        profiles
            .run_fix_as("Capture", action(id), owner_profile())
            .await
            .unwrap_or_else(|e| panic!("{id}: {e:?}"));
    }
    // On PostgreSQL 15 only a superuser may give REPLICATION: the owner's error says what it lacks.
    let e = profiles
        .run_fix_as("Capture", action("replication"), owner_profile())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Permission, "{e:?}");
    assert!(
        e.message()
            .contains(&format!("which role '{}' lacks", owner.user)),
        "{}",
        e.message()
    );
    // A superuser's password, entered for this run only.
    let superuser = db.cluster.superuser_password().expose().to_string();
    profiles
        .run_fix_as(
            "Capture",
            action("replication"),
            RunAs::Password {
                user: "postgres".into(),
                password: Secret::new(superuser.clone()),
            },
        )
        .await
        .unwrap();

    // Checked again as the capture role: every check passes (the slot is the capture's first step),
    // with the tables read from the publication the owner created.
    let after = profiles.preflight("Capture", None).await.unwrap();
    assert_eq!(find(&after, "grants:shop").status, Status::Pass);
    for c in &after {
        let expected = if c.id == "slot" {
            Status::Step
        } else {
            Status::Pass
        };
        assert_eq!(c.status, expected, "{c:#?}");
    }
    // The default privileges were the owner's: a table it creates later is readable too.
    db.sql(&format!(
        "SET ROLE {o}; CREATE TABLE shop.later (id int PRIMARY KEY); RESET ROLE;"
    ));
    assert_eq!(
        db.sql(&format!(
            "SELECT has_table_privilege({}, 'shop.later', 'SELECT');",
            tidepool::source::sql::literal(&capture.user)
        ))
        .trim(),
        "t"
    );
    // No password entered or stored reached the profile list.
    let file = std::fs::read_to_string(dir.join("profiles.json")).unwrap();
    for secret in [superuser.as_str(), "owner-pw-3141", "capture-pw-2718"] {
        assert!(!file.contains(secret));
    }
    for name in ["Capture", "Owner", "Elsewhere"] {
        profiles.delete(name).unwrap();
    }
    std::fs::remove_dir_all(dir).unwrap();
}

/// `tidepool setup --as-user <role>` reads the owner's password from standard input (never an
/// argument or the environment) and runs the fix as that role; `--as <profile>` runs it as a saved
/// profile; as the connecting role, the refusal says how to run it as an owner.
#[test]
fn the_command_line_runs_a_fix_as_the_owner() {
    use std::io::Write;
    use tidepool::secrets::Secret;

    crate::profiles::require_keyring_session();
    let db = TestDb::new(harness::plain(), "setup_cli_owner");
    let owner = db.role("cli_owner", "", "cli-owner-pw-1618");
    let capture = db.role("cli_cdc", "", "cli-capture-pw-1414");
    let o = tidepool::source::sql::ident(&owner.user);
    db.sql(&format!(
        "CREATE SCHEMA shop AUTHORIZATION {o};
         SET ROLE {o}; CREATE TABLE shop.orders (id int PRIMARY KEY); RESET ROLE;"
    ));
    let dir = harness::temp_dir("setup_cli_owner");
    let profiles = tidepool::app::profile::Profiles::open(&dir);
    let mut draft = db.profile_draft("Owner");
    draft.user = owner.user.clone();
    profiles
        .save(None, draft, Some(Secret::new("cli-owner-pw-1618")))
        .unwrap();
    let url = format!(
        "postgres://{}@127.0.0.1:{}/{}?sslmode=disable",
        capture.user,
        db.cluster.port(),
        db.name
    );
    let run = |args: &[&str], stdin: &str| {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tidepool"))
            .args(["setup", "--url", &url])
            .args(args)
            .env("PGPASSWORD", "cli-capture-pw-1414")
            .env("TIDEPOOL_DATA_DIR", &dir)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!text.contains("cli-owner-pw-1618"), "{text}");
        (out.status.success(), text)
    };
    let usage = || {
        db.sql(&format!(
            "SELECT has_schema_privilege({}, 'shop', 'USAGE');",
            tidepool::source::sql::literal(&capture.user)
        ))
        .trim()
        .to_string()
    };

    let (ok, text) = run(&["grant-schema", "--schema", "shop"], "");
    assert!(!ok, "{text}");
    assert!(
        text.contains("--as <profile> or --as-user <role>"),
        "{text}"
    );
    assert_eq!(usage(), "f");

    let (ok, text) = run(
        &["--as-user", &owner.user, "grant-schema", "--schema", "shop"],
        "cli-owner-pw-1618\n",
    );
    assert!(ok, "{text}");
    assert!(
        text.contains(&format!("runs as role {}", owner.user)),
        "{text}"
    );
    assert_eq!(usage(), "t");

    let (ok, text) = run(
        &[
            "--as",
            "Owner",
            "replica-identity-full",
            "--table",
            "shop.orders",
        ],
        "",
    );
    assert!(ok, "{text}");
    assert_eq!(
        db.sql("SELECT relreplident FROM pg_class WHERE oid = 'shop.orders'::regclass;")
            .trim(),
        "f"
    );
    profiles.delete("Owner").unwrap();
    std::fs::remove_dir_all(dir).unwrap();
}
