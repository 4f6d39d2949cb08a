//! The Collections preview against a real capture: the change log's commit LSN, transaction and time,
//! what an update changed as far as PostgreSQL said (REPLICA IDENTITY FULL, a key change, neither),
//! the consumers' CEL filter over stored documents and the live tail, sorting rows by a column, and
//! export names with a readable date.

use std::sync::{Arc, Mutex};

use serde_json::{json, Value as Json};
use tidepool::app::preview::{self, BeforeImage, FieldChange, PageRequest, Sort, View};
use tidepool::app::profile::Profiles;
use tidepool::app::run::{RunStatus, Runs, TailEntry};
use tidepool::binding::Binding;

use crate::harness::{self, until, TestDb};

fn ids(page: &preview::Page) -> Vec<i64> {
    page.documents
        .iter()
        .map(|d| d["id"].as_i64().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_preview_shows_commits_and_what_changed_filters_sorts_and_exports() {
    let db = TestDb::new(harness::plain(), "preview");
    db.sql(
        "CREATE TABLE orders (id int PRIMARY KEY, status text, total numeric, qty int);
         ALTER TABLE orders REPLICA IDENTITY FULL;
         INSERT INTO orders SELECT g, CASE WHEN g % 2 = 0 THEN 'new' ELSE 'shipped' END, g * 25, 10 - g
           FROM generate_series(1, 8) g;
         CREATE TABLE notes (id int PRIMARY KEY, body text);
         INSERT INTO notes VALUES (1, 'a'), (2, 'b');",
    );
    let profiles = Profiles::open(&harness::temp_dir("preview_profiles"));
    let id = profiles
        .save(
            None,
            db.profile_draft("Preview"),
            Some(db.cluster.superuser_password().clone()),
        )
        .unwrap()
        .profile
        .id;
    profiles
        .publish(
            &id,
            vec![
                Binding::new("public", "orders"),
                Binding::new("public", "notes"),
            ],
            vec![],
        )
        .await
        .unwrap();
    let runs = Runs::default();
    let seen: Arc<Mutex<Option<RunStatus>>> = Arc::default();
    let log = seen.clone();
    runs.start(
        &profiles,
        &id,
        Arc::new(move |s: &RunStatus| *log.lock().unwrap() = Some(s.clone())),
    )
    .await
    .unwrap();
    until("both backfills", || {
        seen.lock()
            .unwrap()
            .as_ref()
            .is_some_and(|s| s.backfills.len() == 2 && s.backfills.values().all(|b| b.done))
    })
    .await;

    let before_commit = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let xid: u64 = db
        .sql(
            "BEGIN;
             UPDATE orders SET status = 'shipped', total = 120.50 WHERE id = 2;
             SELECT txid_current();
             COMMIT;",
        )
        .trim()
        .parse()
        .unwrap();
    db.sql("UPDATE notes SET body = 'changed' WHERE id = 1;");
    db.sql("UPDATE notes SET id = 3 WHERE id = 2;");
    let end = db.current_lsn();
    let latest = |collection: &str, filter: Option<&str>| {
        preview::page(
            &profiles,
            &id,
            collection,
            &PageRequest {
                filter: filter.map(str::to_string),
                ..PageRequest::first(View::Changes, 100)
            },
        )
    };
    until("the three updates", || {
        latest("public/notes", None).unwrap().changes.len() == 4
            && latest("public/orders", None).unwrap().changes.len() == 9
    })
    .await;

    // The change log: one info per document. Backfilled rows are marked, with no transaction.
    let orders = latest("public/orders", None).unwrap();
    assert_eq!(orders.changes.len(), orders.documents.len());
    assert!(orders.changes[..8]
        .iter()
        .all(|c| c.snapshot && c.xid.is_none() && c.op == "c"));
    let update = &orders.changes[8];
    assert_eq!(update.op, "u");
    assert!(!update.snapshot);
    assert_eq!(update.xid, Some(xid), "the source transaction's id");
    let lsn: tidepool::source::pgoutput::Lsn = update.lsn.as_deref().unwrap().parse().unwrap();
    assert!(lsn.0 > 0 && lsn <= end, "{lsn} after {end}");
    let committed = update.committed_ms.unwrap();
    assert!(
        committed >= before_commit - 1_000 && committed <= before_commit + 60_000,
        "{committed} vs {before_commit}"
    );
    // REPLICA IDENTITY FULL: the whole previous row, so exactly the changed columns, old → new.
    let diff = update.update.as_ref().unwrap();
    assert_eq!(diff.before, BeforeImage::Full);
    assert_eq!(
        diff.fields,
        vec![
            FieldChange {
                name: "status".into(),
                before: Some(json!("new")),
                after: Some(json!("shipped")),
            },
            FieldChange {
                name: "total".into(),
                before: Some(json!("50")),
                after: Some(json!("120.50")),
            },
        ]
    );
    // The default identity: the previous row is not known, and no change is made up; a key change
    // carries the old key, so the key's change is known and nothing else.
    let notes = latest("public/notes", None).unwrap();
    let body = notes.changes[2].update.as_ref().unwrap();
    assert_eq!(body.before, BeforeImage::Unknown);
    assert!(body.fields.is_empty());
    let key = notes.changes[3].update.as_ref().unwrap();
    assert_eq!(key.before, BeforeImage::Key);
    assert_eq!(
        key.fields,
        vec![FieldChange {
            name: "id".into(),
            before: Some(json!(2)),
            after: Some(json!(3)),
        }]
    );
    assert_ne!(notes.changes[2].xid, notes.changes[3].xid);

    // A filter of two conditions in the consumers' CEL, numeric columns compared as numbers.
    let rows = |filter: Option<&str>, sort: Option<Sort>, offset: usize, limit: usize| {
        preview::page(
            &profiles,
            &id,
            "public/orders",
            &PageRequest {
                filter: filter.map(str::to_string),
                sort,
                offset,
                ..PageRequest::first(View::Rows, limit)
            },
        )
    };
    let shipped_big = "record.status == \"shipped\" && record.total > 100";
    assert_eq!(
        ids(&rows(Some(shipped_big), None, 0, 100).unwrap()),
        [2, 5, 7]
    );
    // Paged by key: the cursor is the last row read, so the next page goes on from there.
    let first = rows(Some(shipped_big), None, 0, 2).unwrap();
    assert_eq!(ids(&first), [2, 5]);
    assert!(first.has_more);
    let next = preview::page(
        &profiles,
        &id,
        "public/orders",
        &PageRequest {
            filter: Some(shipped_big.into()),
            after_key: first.last_key.clone(),
            ..PageRequest::first(View::Rows, 2)
        },
    )
    .unwrap();
    assert_eq!(ids(&next), [7]);
    assert!(!next.has_more);
    // The change log filtered by what the change did and to which row.
    let updates = latest(
        "public/orders",
        Some("action == \"update\" && record.id == 2"),
    )
    .unwrap();
    assert_eq!(ids(&updates), [2]);
    assert_eq!(updates.changes[0].xid, Some(xid));
    // A quoted number is not silently another value: refused, at the literal, before any read.
    let e = rows(Some("record.id > 0 && record.qty == \"3\""), None, 0, 10).unwrap_err();
    assert_eq!(e.kind(), tidepool::ErrorKind::InvalidInput, "{e}");
    assert!(
        e.message()
            .contains("line 1, column 32: 'qty' is a number but \"3\" is text"),
        "{e}"
    );
    let e = rows(Some("record.id = 2"), None, 0, 10).unwrap_err();
    assert!(e.message().contains("line 1, column 11"), "{e}");

    // Sorted by a column in the engine: numeric as numbers (120.50 between 100 and 125), pages by
    // offset, a filter applied first.
    let by_total = |descending| {
        Some(Sort {
            column: "total".into(),
            descending,
        })
    };
    let top = rows(None, by_total(true), 0, 3).unwrap();
    assert_eq!(ids(&top), [8, 7, 6]);
    assert!(top.has_more);
    assert_eq!(ids(&rows(None, by_total(true), 3, 3).unwrap()), [5, 2, 4]);
    let tail_page = rows(None, by_total(true), 6, 3).unwrap();
    assert_eq!(ids(&tail_page), [3, 1]);
    assert!(!tail_page.has_more);
    assert_eq!(
        ids(&rows(Some(shipped_big), by_total(false), 0, 10).unwrap()),
        [2, 5, 7]
    );
    let e = rows(
        None,
        Some(Sort {
            column: "nope".into(),
            descending: false,
        }),
        0,
        10,
    )
    .unwrap_err();
    assert!(e.message().contains("'nope' is not a column"), "{e}");

    // The live tail is filtered in the engine: only the matching change arrives.
    let bad = runs
        .tail(
            &profiles,
            &id,
            "public/orders",
            0,
            Some("record.id == \"1\""),
            "bad",
            |_| true,
        )
        .await
        .unwrap_err();
    assert!(bad.message().contains("'id' is a number"), "{bad}");
    let tailed: Arc<Mutex<Vec<TailEntry>>> = Arc::default();
    let tail = {
        let (runs, profiles, id, tailed) =
            (runs.clone(), profiles.clone(), id.clone(), tailed.clone());
        let after = orders.last_seq;
        tokio::spawn(async move {
            runs.tail(
                &profiles,
                &id,
                "public/orders",
                after,
                Some("record.status == \"gone\" && record.qty > 5"),
                "t",
                move |page| {
                    tailed.lock().unwrap().extend(page);
                    true
                },
            )
            .await
        })
    };
    db.sql("UPDATE orders SET status = 'gone' WHERE id = 1;");
    db.sql("UPDATE orders SET status = 'gone' WHERE id = 8;"); // qty 2: not matched
    db.sql("UPDATE orders SET status = 'kept' WHERE id = 3;");
    db.sql("UPDATE orders SET status = 'gone' WHERE id = 4;");
    until("the two matching changes in the tail", || {
        tailed.lock().unwrap().len() >= 2
    })
    .await;
    // Give a wrongly passed change time to arrive, then check there is none.
    until("the last update stored", || {
        latest("public/orders", None).unwrap().changes.len() == 13
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    runs.stop_tail("t");
    tail.await.unwrap().unwrap();
    let got: Vec<(Json, Option<BeforeImage>)> = tailed
        .lock()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e.doc["id"].clone(),
                e.info.update.as_ref().map(|u| u.before),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            (json!(1), Some(BeforeImage::Full)),
            (json!(4), Some(BeforeImage::Full))
        ]
    );

    // Exports are named with a readable local date and never overwrite each other.
    let out = harness::temp_dir("preview_exports");
    let one = preview::export(
        &profiles,
        &id,
        "public/orders",
        View::Changes,
        Some("action == \"update\"".into()),
        preview::ExportFormat::Jsonl,
        &out,
    )
    .unwrap();
    assert_eq!(one.documents, 5);
    let two = preview::export(
        &profiles,
        &id,
        "public/orders",
        View::Changes,
        Some("action == \"update\"".into()),
        preview::ExportFormat::Jsonl,
        &out,
    )
    .unwrap();
    assert_ne!(one.path, two.path);
    for exported in [&one, &two] {
        let name = exported.path.file_name().unwrap().to_str().unwrap();
        let stem = name.strip_prefix("public_orders-changes-").unwrap();
        let date: String = stem.chars().take(15).collect();
        assert!(
            chrono::NaiveDateTime::parse_from_str(&format!("{date}00"), "%Y-%m-%d-%H%M%S").is_ok(),
            "{name}"
        );
        assert!(name.ends_with(".jsonl"), "{name}");
        assert_eq!(
            std::fs::read_to_string(&exported.path)
                .unwrap()
                .lines()
                .count(),
            5
        );
    }
    runs.stop(&id, &profiles).unwrap();
}
