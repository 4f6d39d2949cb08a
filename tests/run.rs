//! Captures run inside the process, as the desktop app runs them: start from a saved definition, the
//! backfill's progress reaching 100%, a tail that receives each change once as it is stored, and a stop
//! that keeps the slot so the next start resumes without duplicates.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value as Json;
use tidepool::app::preview::{self, PageRequest, View};
use tidepool::app::profile::{ProfileDraft, Profiles};
use tidepool::app::run::{RunState, RunStatus, Runs, TailEntry};
use tidepool::binding::Binding;

use crate::harness::{self, TestDb};

/// Waits up to 20 s for `ok`.
async fn until(what: &str, mut ok: impl FnMut() -> bool) {
    for _ in 0..400 {
        if ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

/// A database with table `items` (rows 1 to 3) and a saved profile `name` for it (password in the
/// profiles' keychain; slot named after the database), in profiles of their own.
fn items_profile(prefix: &str, name: &str) -> (TestDb, Profiles, String) {
    let db = TestDb::new(harness::plain(), prefix);
    db.sql(
        "CREATE TABLE items (id int PRIMARY KEY, name text);
         INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 3) g;",
    );
    let profiles = Profiles::open(&harness::temp_dir(&format!("{prefix}_profiles")));
    let draft = ProfileDraft {
        name: name.into(),
        address: format!("127.0.0.1:{}", db.cluster.port()),
        user: "postgres".into(),
        database: db.name.clone(),
        sslmode: tidepool::source::tls::SslMode::Disable,
        slot: Some(db.name.clone()),
        publication: Some(format!("{}_pub", db.name)),
        ..Default::default()
    };
    let id = profiles
        .save(None, draft, Some(db.cluster.superuser_password().clone()))
        .unwrap()
        .profile
        .id;
    (db, profiles, id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_backfills_streams_tails_and_resumes_after_a_stop() {
    let (db, profiles, id) = items_profile("run", "Run");
    let runs = Runs::default();
    let e = runs
        .start(&profiles, &id, Arc::new(|_| {}))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), tidepool::ErrorKind::InvalidInput, "{e}");

    profiles
        .publish(&id, vec![Binding::new("public", "items")], vec![])
        .await
        .unwrap();
    let seen: Arc<Mutex<Vec<RunStatus>>> = Arc::default();
    let log = seen.clone();
    runs.start(
        &profiles,
        &id,
        Arc::new(move |s: &RunStatus| log.lock().unwrap().push(s.clone())),
    )
    .await
    .unwrap();
    assert!(runs.any_running());
    // Streaming is reported once the stream starts, before any change arrives.
    until("the streaming state", || {
        seen.lock()
            .unwrap()
            .iter()
            .any(|s| s.state == RunState::Streaming && s.changes == 0)
    })
    .await;
    until("the backfill's 100%", || {
        seen.lock().unwrap().iter().any(|s| {
            s.backfills
                .get("public/items")
                .is_some_and(|p| p.done && p.rows == 3)
        })
    })
    .await;
    // The tray's list: this capture, streaming.
    let running = runs.running();
    assert_eq!(running.len(), 1);
    assert_eq!(running[0].profile, id);
    assert_eq!(running[0].state, RunState::Streaming);

    // A tail from the start: the three snapshot documents, then each change once, as it is stored.
    let tailed: Arc<Mutex<Vec<TailEntry>>> = Arc::default();
    let tail = {
        let runs = runs.clone();
        let profiles = profiles.clone();
        let id = id.clone();
        let tailed = tailed.clone();
        tokio::spawn(async move {
            runs.tail(&profiles, &id, "public/items", 0, None, "t1", move |page| {
                tailed.lock().unwrap().extend(page);
                true
            })
            .await
        })
    };
    let ops = |tailed: &Arc<Mutex<Vec<TailEntry>>>| -> Vec<String> {
        tailed
            .lock()
            .unwrap()
            .iter()
            .map(|e| e.doc["_meta"]["op"].as_str().unwrap_or("?").to_string())
            .collect()
    };
    until("the snapshot in the tail", || {
        tailed.lock().unwrap().len() == 3
    })
    .await;
    db.sql("INSERT INTO items VALUES (4, 'new');");
    until("the insert in the tail", || {
        tailed.lock().unwrap().len() == 4
    })
    .await;
    db.sql("UPDATE items SET name = 'renamed' WHERE id = 4;");
    db.sql("DELETE FROM items WHERE id = 1;");
    until("the update and delete", || {
        tailed.lock().unwrap().len() == 6
    })
    .await;
    assert_eq!(&ops(&tailed)[3..], ["c", "u", "d"]);
    let seqs: Vec<u64> = tailed.lock().unwrap().iter().map(|e| e.seq).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    assert_eq!(tailed.lock().unwrap()[4].doc["name"], Json::from("renamed"));
    runs.stop_tail("t1");
    tail.await.unwrap().unwrap();

    let status = runs.status(&id, &profiles).unwrap();
    assert_eq!(status.state, RunState::Streaming);
    assert!(status.changes >= 3, "{status:?}");
    assert!(status.lag_ms.is_some());

    // Rows are reduced by key; the log keeps everything, newest last.
    let rows = preview::page(
        &profiles,
        &id,
        "public/items",
        &PageRequest::first(View::Rows, 100),
    )
    .unwrap();
    let ids: Vec<i64> = rows
        .documents
        .iter()
        .map(|d| d["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, vec![2, 3, 4]);
    assert_eq!(
        rows.last_seq,
        *seqs.last().unwrap(),
        "a tail after the rows page starts at the log's end"
    );
    let latest = preview::page(
        &profiles,
        &id,
        "public/items",
        &PageRequest::first(View::Changes, 2),
    )
    .unwrap();
    assert_eq!(latest.documents.len(), 2);
    assert_eq!(latest.documents[1]["_meta"]["op"], "d");
    assert_eq!(latest.last_seq, *seqs.last().unwrap());

    // The collection says when its newest change happened at the source: the delete, just now.
    let last = preview::collections(&profiles, &id).unwrap()[0]
        .last_change_ms
        .expect("a last change time");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    assert!((now - last).abs() < 60_000, "last change {last}, now {now}");

    // Exports: the whole view, filtered, complete files only.
    let out = harness::temp_dir("run_export");
    let rows = preview::export(
        &profiles,
        &id,
        "public/items",
        View::Rows,
        None,
        preview::ExportFormat::Jsonl,
        &out,
    )
    .unwrap();
    assert_eq!(rows.documents, 3);
    let lines: Vec<Json> = std::fs::read_to_string(&rows.path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let names: Vec<&str> = lines.iter().map(|d| d["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["item 2", "item 3", "renamed"]);
    let changes = preview::export(
        &profiles,
        &id,
        "public/items",
        View::Changes,
        Some("record.id == 4".into()),
        preview::ExportFormat::Csv,
        &out,
    )
    .unwrap();
    assert!(changes.path.extension().is_some_and(|e| e == "csv"));
    assert_eq!(
        std::fs::read_to_string(&changes.path).unwrap(),
        "op,id,name\nc,4,new\nu,4,renamed\n"
    );
    let left: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".partial"))
        .collect();
    assert!(left.is_empty(), "{left:?}");

    // Stopping keeps the slot; changes made meanwhile arrive after the next start, once.
    let stopped = runs.stop(&id, &profiles).unwrap();
    assert_eq!(stopped.state, RunState::Stopped);
    assert!(runs.running().is_empty());
    assert_eq!(
        db.sql(&format!(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{}';",
            db.name
        ))
        .trim(),
        "1"
    );
    db.sql("INSERT INTO items VALUES (5, 'while stopped');");
    runs.start(&profiles, &id, Arc::new(|_| {})).await.unwrap();
    let changes = || preview::collections(&profiles, &id).unwrap()[0].changes;
    until("the change made while stopped", || changes() == 7).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(changes(), 7, "a change was stored twice");
    runs.stop(&id, &profiles).unwrap();
    for p in profiles.list().unwrap() {
        profiles.delete(&p.profile.id).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_and_drop_frees_the_slot_and_the_next_start_backfills_afresh() {
    let (db, profiles, id) = items_profile("run_drop", "Drop");
    profiles
        .publish(&id, vec![Binding::new("public", "items")], vec![])
        .await
        .unwrap();
    let runs = Runs::default();
    runs.start(&profiles, &id, Arc::new(|_| {})).await.unwrap();
    let changes = || {
        preview::collections(&profiles, &id)
            .unwrap()
            .first()
            .map_or(0, |c| c.changes)
    };
    db.sql("INSERT INTO items VALUES (4, 'streamed');");
    until("the streamed insert", || changes() == 4).await;

    // Health while streaming: the slot exists, is consumed, and the checkpoint's time is known.
    let health = tidepool::source::health::slot(&profiles, &id)
        .await
        .unwrap();
    assert!(health.exists && health.active, "{health:?}");
    assert_eq!(health.wal_status.as_deref(), Some("reserved"));
    assert!(health.last_progress_unix_ms.is_some());
    // The shared test cluster keeps max_slot_wal_keep_size unlimited: the one thing to say, with
    // the fix that limits it.
    let said: Vec<_> = health.warnings.iter().map(|w| w.id).collect();
    assert_eq!(said, vec!["unlimitedWal"], "{:?}", health.warnings);

    // Paused: the slot stays, inactive, and keeps the WAL written meanwhile.
    runs.stop(&id, &profiles).unwrap();
    db.sql("INSERT INTO items SELECT g, repeat('x', 1000) FROM generate_series(100, 2000) g;");
    let mut paused = tidepool::source::health::slot(&profiles, &id)
        .await
        .unwrap();
    for _ in 0..100 {
        if !paused.active {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        paused = tidepool::source::health::slot(&profiles, &id)
            .await
            .unwrap();
    }
    assert!(paused.exists && !paused.active, "{paused:?}");
    assert!(paused.unconfirmed_bytes.unwrap() > 1_000_000, "{paused:?}");

    // Stop and drop: the slot is gone, the store keeps only the definition.
    runs.stop_and_drop_slot(&id, &profiles).await.unwrap();
    assert_eq!(
        db.sql(&format!(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{}';",
            db.name
        ))
        .trim(),
        "0"
    );
    assert!(preview::collections(&profiles, &id).unwrap().is_empty());
    assert!(profiles.capture_definition(&id).unwrap().is_some());
    let dropped = tidepool::source::health::slot(&profiles, &id)
        .await
        .unwrap();
    assert!(!dropped.exists);
    assert!(
        dropped.warnings.is_empty(),
        "a deliberate drop is not a danger: {:?}",
        dropped.warnings
    );

    // The next start backfills the table as it is now: every row once, nothing from before.
    runs.start(&profiles, &id, Arc::new(|_| {})).await.unwrap();
    let rows = || {
        preview::collections(&profiles, &id)
            .unwrap()
            .first()
            .map_or(0, |c| c.rows)
    };
    until("the new backfill", || rows() == 1905).await;
    assert_eq!(changes(), 1905, "the log holds the new backfill only");
    runs.stop(&id, &profiles).unwrap();
    for p in profiles.list().unwrap() {
        profiles.delete(&p.profile.id).unwrap();
    }
}

/// Setup's slot check knows Tidepool's own state. Before the first start the missing slot is a step
/// (the start creates it and backfills first); while the app's own capture holds it, a pass; held by a
/// consumer that is not this app's capture (here: a second app's view, which runs no capture), a
/// fail; dropped behind the back of a store that streamed from it, a fail pointing at the re-backfill;
/// after "Stop and drop the slot", a step again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_passes_the_slot_this_apps_capture_holds_and_steps_the_one_its_start_creates() {
    use tidepool::source::preflight::{Check, Status};

    let (db, profiles, id) = items_profile("run_setup", "Setup");
    let runs = Runs::with_pull_listen("127.0.0.1:0");
    let slot_of = |checks: Vec<Check>| checks.into_iter().find(|c| c.id == "slot").unwrap();

    let before = slot_of(runs.preflight(&profiles, &id).await.unwrap());
    assert_eq!(before.status, Status::Step, "{before:?}");
    assert!(before.fix.is_none(), "{before:?}");
    profiles
        .publish(&id, vec![Binding::new("public", "items")], vec![])
        .await
        .unwrap();
    let published = slot_of(runs.preflight(&profiles, &id).await.unwrap());
    assert_eq!(published.status, Status::Step, "{published:?}");

    runs.start(&profiles, &id, Arc::new(|_| {})).await.unwrap();
    let changes = || {
        preview::collections(&profiles, &id)
            .unwrap()
            .first()
            .map_or(0, |c| c.changes)
    };
    db.sql("INSERT INTO items VALUES (4, 'streamed');");
    until("the streamed insert", || changes() == 4).await;
    // The server shows the slot held by a connection named after this run. (The insert may have
    // landed in the backfill's snapshot, stored before the stream holds the slot: wait for it.)
    let holder = || {
        db.sql(&format!(
            "SELECT a.application_name FROM pg_replication_slots s JOIN pg_stat_activity a ON a.pid = s.active_pid
              WHERE s.slot_name = '{}';",
            db.name
        ))
    };
    until("the stream to hold the slot", || {
        !holder().trim().is_empty()
    })
    .await;
    let holder = holder();
    assert!(holder.trim().starts_with("tidepool capture "), "{holder:?}");
    let held = slot_of(runs.preflight(&profiles, &id).await.unwrap());
    assert_eq!(held.status, Status::Pass, "{held:?}");
    assert!(
        held.explanation.contains("this app's capture"),
        "{}",
        held.explanation
    );
    // Another app on the same profiles (it runs no capture) sees a consumer that is not its own.
    let elsewhere = Runs::with_pull_listen("127.0.0.1:0");
    let other = slot_of(elsewhere.preflight(&profiles, &id).await.unwrap());
    assert_eq!(other.status, Status::Fail, "{other:?}");
    assert!(
        other.explanation.contains("not this app's capture")
            && other.explanation.contains(holder.trim()),
        "{}",
        other.explanation
    );

    // Paused: the slot waits, released, for the next start.
    runs.stop(&id, &profiles).unwrap();
    let released = format!(
        "SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{}' AND NOT active;",
        db.name
    );
    until("the slot released", || db.sql(&released).trim() == "1").await;
    let paused = slot_of(runs.preflight(&profiles, &id).await.unwrap());
    assert_eq!(paused.status, Status::Pass, "{paused:?}");
    assert!(
        paused.explanation.contains("not in use"),
        "{}",
        paused.explanation
    );

    // Dropped behind the store's back after it streamed: a new slot would not bring the changes back.
    db.sql(&format!("SELECT pg_drop_replication_slot('{}');", db.name));
    let dropped = slot_of(runs.preflight(&profiles, &id).await.unwrap());
    assert_eq!(dropped.status, Status::Fail, "{dropped:?}");
    assert!(dropped.fix.is_none(), "{dropped:?}");
    assert!(
        dropped.explanation.contains("Re-backfill and continue"),
        "{}",
        dropped.explanation
    );

    // "Stop and drop the slot" empties the store: the next start creates the slot and backfills.
    runs.stop_and_drop_slot(&id, &profiles).await.unwrap();
    let fresh = slot_of(runs.preflight(&profiles, &id).await.unwrap());
    assert_eq!(fresh.status, Status::Step, "{fresh:?}");
    for p in profiles.list().unwrap() {
        profiles.delete(&p.profile.id).unwrap();
    }
}

/// One-click "Save and publish": its plan says what will run before anything does (the publication's
/// statements, the slot created with a snapshot, the table backfilled, the capture started); one call
/// from a fresh profile creates the publication and the slot, backfills and streams. A second call
/// that adds a table while the capture runs is planned as such and backfills that table in the
/// running capture: no second capture starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn save_and_publish_plans_then_creates_publishes_backfills_and_streams_in_one_call() {
    let (db, profiles, id) = items_profile("run_publish", "Publish");
    db.sql(
        "CREATE TABLE parts (id int PRIMARY KEY, label text);
         INSERT INTO parts SELECT g, 'part ' || g FROM generate_series(1, 5) g;",
    );
    let publication = format!("{}_pub", db.name);
    let count = |what: &str| db.sql(what).trim().to_string();
    let runs = Runs::default();

    let plan = runs
        .plan_publish(
            &profiles,
            &id,
            vec![Binding::new("public", "items")],
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(
        plan.publication.statements,
        vec![format!(
            "CREATE PUBLICATION \"{publication}\" FOR TABLE \"public\".\"items\""
        )]
    );
    assert!(!plan.slot_exists && !plan.running, "{plan:?}");
    assert_eq!(plan.backfills, vec!["\"public\".\"items\"".to_string()]);
    assert_eq!(plan.steps.len(), 5, "{:?}", plan.steps);
    assert!(
        plan.steps[0].contains("CREATE PUBLICATION"),
        "{:?}",
        plan.steps
    );
    assert!(
        plan.steps[2].contains("Create the slot"),
        "{:?}",
        plan.steps
    );
    assert!(
        plan.steps[3].contains("Backfill \"public\".\"items\""),
        "{:?}",
        plan.steps
    );
    assert!(
        plan.steps[4].contains("Start the capture"),
        "{:?}",
        plan.steps
    );
    // Planning ran nothing.
    assert_eq!(
        count(&format!(
            "SELECT count(*) FROM pg_publication WHERE pubname = '{publication}';"
        )),
        "0"
    );

    let seen: Arc<Mutex<Vec<RunStatus>>> = Arc::default();
    let log = seen.clone();
    runs.save_and_publish(
        &profiles,
        &id,
        vec![Binding::new("public", "items")],
        vec![],
        Arc::new(move |s: &RunStatus| log.lock().unwrap().push(s.clone())),
    )
    .await
    .unwrap();
    assert_eq!(
        count(&format!("SELECT count(*) FROM pg_publication_tables WHERE pubname = '{publication}' AND tablename = 'items';")),
        "1"
    );
    until("the backfill's 100%", || {
        seen.lock().unwrap().iter().any(|s| {
            s.backfills
                .get("public/items")
                .is_some_and(|p| p.done && p.rows == 3)
        })
    })
    .await;
    assert_eq!(
        count(&format!(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{}';",
            db.name
        )),
        "1"
    );
    let changes_of = |name: &str| {
        preview::collections(&profiles, &id)
            .unwrap()
            .iter()
            .find(|c| c.name == name)
            .map_or(0, |c| c.changes)
    };
    db.sql("INSERT INTO items VALUES (4, 'streamed');");
    until("the streamed insert", || changes_of("public/items") == 4).await;
    let active_pid = format!(
        "SELECT active_pid FROM pg_replication_slots WHERE slot_name = '{}';",
        db.name
    );
    let streaming_pid = count(&active_pid);
    assert!(!streaming_pid.is_empty(), "the slot is streamed from");

    // A table added while the capture runs: planned without a new slot or a second start.
    let both = vec![
        Binding::new("public", "items"),
        Binding::new("public", "parts"),
    ];
    let plan = runs
        .plan_publish(&profiles, &id, both.clone(), vec![])
        .await
        .unwrap();
    assert_eq!(
        plan.publication.statements,
        vec![format!(
            "ALTER PUBLICATION \"{publication}\" ADD TABLE \"public\".\"parts\""
        )]
    );
    assert!(plan.slot_exists && plan.running, "{plan:?}");
    assert_eq!(plan.backfills, vec!["\"public\".\"parts\"".to_string()]);
    assert!(
        plan.steps.iter().all(|s| !s.contains("Start the capture")),
        "{:?}",
        plan.steps
    );
    let status = runs
        .save_and_publish(&profiles, &id, both, vec![], Arc::new(|_| {}))
        .await
        .unwrap();
    assert_eq!(status.state, RunState::Streaming);
    until("the added table's backfill", || {
        changes_of("public/parts") == 5
    })
    .await;
    db.sql("INSERT INTO parts VALUES (6, 'streamed');");
    until("the added table's insert", || {
        changes_of("public/parts") == 6
    })
    .await;
    // One capture, the same one: the walsender on the slot is the one from before, and the first
    // run's status saw both backfills.
    assert_eq!(runs.running().len(), 1);
    assert_eq!(count(&active_pid), streaming_pid);
    until(
        "the added table's backfill in the first run's status",
        || {
            seen.lock().unwrap().iter().any(|s| {
                s.backfills
                    .get("public/parts")
                    .is_some_and(|p| p.done && p.rows == 5)
            })
        },
    )
    .await;
    assert_eq!(changes_of("public/items"), 4, "nothing of items read twice");
    runs.stop(&id, &profiles).unwrap();
    for p in profiles.list().unwrap() {
        profiles.delete(&p.profile.id).unwrap();
    }
}
