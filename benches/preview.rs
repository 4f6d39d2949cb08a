//! Preview benchmark: how long the Collections screen waits for a page of a 1M-document collection,
//! engine side (the `collection_page` command's call: open the store, read, parse the documents), next
//! to the physical limit: the same page read straight from SQLite as text, nothing parsed.
//!
//! Pages measured: the first rows (key order), rows deep in the collection (after a key cursor), the
//! newest changes, and the same filtered by a field value (which scans). Each is the median of 20 runs.
//!
//! Twice: a collection whose rows all came as changes (SQLite only), and one backfilled into a snapshot
//! file (how a keyed table's backfill is stored) with 10% of its rows changed since. For the snapshot
//! the limit is reading the file's blocks that hold the page, lines not turned into documents.
//! Run: `cargo bench --bench preview` (`TIDEPOOL_BENCH_DOCS` changes the 1M).

use std::time::{Duration, Instant};

use tidepool::app::preview::{self, PageRequest, View};
use tidepool::app::profile::{PasswordStorage, ProfileDraft, Profiles};
use tidepool::document::value::Kind;
use tidepool::source::pgoutput::Lsn;
use tidepool::store::snapshot::{Snapshot, SnapshotSource, SnapshotWriter, SourceColumn};
use tidepool::store::{CollectionSpec, Op, Store};

const PAGE: usize = 500;
const RUNS: usize = 20;

fn median(mut f: impl FnMut()) -> Duration {
    let mut times: Vec<Duration> = (0..RUNS)
        .map(|_| {
            let started = Instant::now();
            f();
            started.elapsed()
        })
        .collect();
    times.sort();
    times[RUNS / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

/// A table row: the case, Tidepool's time, the limit's, and their ratio.
fn print_row(name: &str, ours: Duration, limit: Duration) {
    println!(
        "| {name} | {} | {} | {:.2}× |",
        ms(ours),
        ms(limit),
        limit.as_secs_f64() / ours.as_secs_f64()
    );
}

fn main() {
    let docs: u64 = std::env::var("TIDEPOOL_BENCH_DOCS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let dir = std::env::temp_dir().join(format!("tidepool-bench-preview-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let profiles = Profiles::open(&dir);
    let id = profiles
        .save(
            None,
            ProfileDraft {
                name: "bench".into(),
                address: "127.0.0.1:5432".into(),
                user: "u".into(),
                database: "d".into(),
                password_storage: PasswordStorage::AskEachTime,
                ..Default::default()
            },
            None,
        )
        .unwrap()
        .profile
        .id;
    let store_dir = profiles.store_dir(&id).unwrap();

    // A collection shaped like a captured table: 1M inserts, then 10% of them updated.
    let started = Instant::now();
    let mut store = Store::open(&store_dir).unwrap();
    store.begin().unwrap();
    store
        .put_collection(&CollectionSpec {
            name: "public/customers".into(),
            schema: "public".into(),
            table: "customers".into(),
            key: vec!["id".into()],
            columns: serde_json::json!([
                {"name": "id", "typeOid": 20}, {"name": "name", "typeOid": 25},
                {"name": "email", "typeOid": 25}, {"name": "score", "typeOid": 23},
                {"name": "created_at", "typeOid": 1184}
            ]),
        })
        .unwrap();
    let doc = |i: u64, op: &str, snapshot: bool| {
        format!(
            r#"{{"id":{i},"name":"customer {i}","email":"customer{i}@example.com","score":{},"created_at":"2026-01-01T00:00:00Z","_meta":{{"op":"{op}","source":{{"schema":"public","table":"customers","snapshot":{snapshot},"lsn":"0/16B3748"}}}}}}"#,
            i % 1000
        )
    };
    // Every tenth row updated, in the open batch.
    let update_every_tenth = |store: &mut Store, collection: &str, lsn: Lsn| {
        for i in (1..=docs).step_by(10) {
            store
                .apply(
                    collection,
                    lsn,
                    Op::Update,
                    &format!("[{i}]"),
                    None,
                    doc(i, "u", false),
                )
                .unwrap();
        }
    };
    for i in 1..=docs {
        store
            .apply(
                "public/customers",
                Lsn(1),
                Op::Create,
                &format!("[{i}]"),
                None,
                doc(i, "c", true),
            )
            .unwrap();
        if i % 100_000 == 0 {
            store.commit(Lsn(1)).unwrap();
            store.begin().unwrap();
        }
    }
    update_every_tenth(&mut store, "public/customers", Lsn(2));
    store.commit(Lsn(2)).unwrap();

    // The same rows backfilled into a snapshot file, then 10% of them updated.
    store.begin().unwrap();
    store
        .put_collection(&CollectionSpec {
            name: "public/orders".into(),
            table: "orders".into(),
            ..store.collection("public/customers").unwrap().unwrap()
        })
        .unwrap();
    let mut writer = SnapshotWriter::create(&store.snapshot_dir(), store.key()).unwrap();
    for i in 1..=docs {
        let line = format!(
            "{i}\tcustomer {i}\tcustomer{i}@example.com\t{}\t2026-01-01 00:00:00+00",
            i % 1000
        );
        writer
            .push(
                &tidepool::store::rowkey::sort_key(&format!("[{i}]")).unwrap(),
                line.as_bytes(),
            )
            .unwrap();
    }
    let (file, rows) = writer.finish().unwrap();
    let column = |name: &str, type_oid: u32, kind| SourceColumn {
        name: name.into(),
        type_oid,
        kind,
    };
    store
        .add_snapshot(
            "public/orders",
            &file,
            rows,
            &SnapshotSource {
                schema: "public".into(),
                table: "orders".into(),
                columns: vec![
                    column("id", 20, Kind::Integer),
                    column("name", 25, Kind::Text),
                    column("email", 25, Kind::Text),
                    column("score", 23, Kind::Integer),
                    column("created_at", 1184, Kind::TimestampTz),
                ],
                key: vec![0],
                lsn: 3,
                ts_ms: 0,
            },
        )
        .unwrap();
    store.commit(Lsn(3)).unwrap();
    store.begin().unwrap();
    update_every_tenth(&mut store, "public/orders", Lsn(4));
    store.commit(Lsn(4)).unwrap();
    let snapshot_file = store.snapshot_dir().join(&file);
    drop(store);
    let total_changes = docs + docs.div_ceil(10);
    eprintln!(
        "{docs} rows / {total_changes} changes written in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let page = |collection: &str, request: &PageRequest| {
        let page = preview::page(&profiles, &id, collection, request).unwrap();
        assert!(!page.documents.is_empty());
        page
    };
    let middle = format!("[{}]", docs / 2);
    let rare_email = format!("customer{}@example.com", docs / 3);
    // The preview's filter is the consumers' CEL, evaluated over each document's message.
    let rare = format!("record.email == \"{rare_email}\"");
    let cases: Vec<(&str, PageRequest, &str)> = vec![
        (
            "first rows",
            PageRequest::first(View::Rows, PAGE),
            "SELECT c.doc FROM rows r JOIN changes c ON c.seq = r.seq WHERE r.collection = 1 ORDER BY r.skey LIMIT 500",
        ),
        (
            "rows after a key in the middle",
            PageRequest {
                after_key: Some(middle.clone()),
                ..PageRequest::first(View::Rows, PAGE)
            },
            "SELECT c.doc FROM rows r JOIN changes c ON c.seq = r.seq WHERE r.collection = 1 AND r.skey > ?1 ORDER BY r.skey LIMIT 500",
        ),
        (
            "newest changes",
            PageRequest::first(View::Changes, PAGE),
            "SELECT doc FROM changes WHERE collection = 1 ORDER BY seq DESC LIMIT 500",
        ),
        (
            "rows filtered by a field (scan)",
            PageRequest {
                filter: Some(rare.clone()),
                ..PageRequest::first(View::Rows, PAGE)
            },
            "SELECT c.doc FROM rows r JOIN changes c ON c.seq = r.seq WHERE r.collection = 1 AND json_extract(c.doc, '$.email') = ?1 ORDER BY r.skey LIMIT 500",
        ),
    ];
    let raw = rusqlite::Connection::open(store_dir.join("tidepool.db")).unwrap();
    println!("| {docs} documents, page of {PAGE} | Tidepool (collection_page) | SQLite text only (limit) | ratio limit ÷ Tidepool |");
    println!("|---|---|---|---|");
    for (name, request, sql) in cases {
        let ours = median(|| {
            page("public/customers", &request);
        });
        let param = match name {
            "rows after a key in the middle" => Some(rusqlite::types::Value::Blob(
                tidepool::store::rowkey::sort_key(&middle).unwrap(),
            )),
            "rows filtered by a field (scan)" => {
                Some(rusqlite::types::Value::Text(rare_email.clone()))
            }
            _ => None,
        };
        let limit = median(|| {
            let mut stmt = raw.prepare_cached(sql).unwrap();
            let rows: Vec<String> = match &param {
                Some(p) => stmt
                    .query_map([p], |r| r.get(0))
                    .unwrap()
                    .map(Result::unwrap)
                    .collect(),
                None => stmt
                    .query_map([], |r| r.get(0))
                    .unwrap()
                    .map(Result::unwrap)
                    .collect(),
            };
            assert!(!rows.is_empty());
        });
        print_row(name, ours, limit);
    }

    // The snapshot-backed collection. Its limit: the file's blocks that hold the page, read and split
    // into lines (for the filter, every block), nothing turned into a document. (Its newest changes
    // are the updates, in SQLite: the first table's case covers them.)
    println!();
    println!("| snapshot + 10% changed, page of {PAGE} | Tidepool (collection_page) | snapshot lines only (limit) | ratio limit ÷ Tidepool |");
    println!("|---|---|---|---|");
    let lines = |from_ordinal: u64, all: bool| {
        let file = Snapshot::open(&snapshot_file, None).unwrap();
        let mut b = file.block_of_ordinal(from_ordinal);
        let mut read = 0;
        while b < file.blocks() && (all || read < PAGE) {
            let block = file.block(b).unwrap();
            for i in 0..block.len() {
                std::hint::black_box(block.line(i));
                read += 1;
            }
            b += 1;
        }
        assert!(read > 0);
    };
    let snapshot_cases: Vec<(&str, PageRequest, u64, bool)> = vec![
        ("first rows", PageRequest::first(View::Rows, PAGE), 0, false),
        (
            "rows after a key in the middle",
            PageRequest {
                after_key: Some(middle.clone()),
                ..PageRequest::first(View::Rows, PAGE)
            },
            docs / 2,
            false,
        ),
        (
            "rows filtered by a field (scan)",
            PageRequest {
                filter: Some(rare.clone()),
                ..PageRequest::first(View::Rows, PAGE)
            },
            0,
            true,
        ),
    ];
    for (name, request, from, all) in snapshot_cases {
        let ours = median(|| {
            page("public/orders", &request);
        });
        let limit = median(|| lines(from, all));
        print_row(name, ours, limit);
    }
    let counts = median(|| {
        preview::collections(&profiles, &id).unwrap();
    });
    println!("| collections with counts | {} | | |", ms(counts));
    let _ = std::fs::remove_dir_all(&dir);
}
