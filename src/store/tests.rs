//! The store's unit tests: writes, reads, snapshots and filters on a real SQLite file.

use super::*;

fn store() -> (Store, PathBuf) {
    let dir = std::env::temp_dir().join(format!(
        "tidepool-store-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    (Store::open(&dir).unwrap(), dir)
}

fn spec(name: &str) -> CollectionSpec {
    CollectionSpec {
        name: name.into(),
        schema: "public".into(),
        table: "t".into(),
        key: vec!["id".into()],
        columns: Json::Array(vec![]),
    }
}

/// Inserts rows `ids` into `public/t` at LSN 1, each with the document `doc` makes of its id.
fn create_rows(store: &mut Store, ids: std::ops::Range<i64>, doc: impl Fn(i64) -> String) {
    for i in ids {
        store
            .apply(
                "public/t",
                Lsn(1),
                Op::Create,
                &format!("[{i}]"),
                None,
                doc(i),
            )
            .unwrap();
    }
}

/// A collection whose base rows are a snapshot file of ids 1..=n (`id`, `v` = "row {id}").
fn with_snapshot(store: &mut Store, n: i64) {
    use crate::store::snapshot::{SnapshotWriter, SourceColumn};
    store.begin().unwrap();
    store.put_collection(&spec("public/t")).unwrap();
    let mut writer = SnapshotWriter::create(&store.snapshot_dir(), store.key()).unwrap();
    for id in 1..=n {
        writer
            .push(
                &sort_key(&format!("[{id}]")).unwrap(),
                format!("{id}\trow {id}").as_bytes(),
            )
            .unwrap();
    }
    let (file, rows) = writer.finish().unwrap();
    let column = |name: &str, kind| SourceColumn {
        name: name.into(),
        type_oid: 0,
        kind,
    };
    let source = SnapshotSource {
        schema: "public".into(),
        table: "t".into(),
        columns: vec![
            column("id", crate::document::value::Kind::Integer),
            column("v", crate::document::value::Kind::Text),
        ],
        key: vec![0],
        lsn: 100,
        ts_ms: 5,
    };
    store
        .add_snapshot("public/t", &file, rows, &source)
        .unwrap();
    store.commit(Lsn(100)).unwrap();
}

#[test]
fn an_encrypted_store_imports_a_staged_backfill_sealed_with_its_key() {
    let dir = std::env::temp_dir().join(format!("tidepool-store-sealed-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let key = std::sync::Arc::new(StoreKey::generate().unwrap());
    let mut store = Store::open_keyed(&dir, Some(key.clone())).unwrap();
    // Large values the backfill stored: one the store has already, one it takes over, in
    // pieces (each value spans several).
    let [a, b] = ["a", "b"].map(|c| serde_json::to_string(&c.repeat(2_500_000)).unwrap());
    let put = |store: &mut Store, json: &str, lsn| {
        store.begin().unwrap();
        let hash = store
            .put_large_value(&|sink| crate::document::large_value::pieces(json.as_bytes(), sink))
            .unwrap();
        store.commit(Lsn(lsn)).unwrap();
        hash
    };
    let hash_a = put(&mut store, &a, 50);
    let staging_dir = dir.join("backfills").join("one");
    let mut staging = Store::open_keyed(&staging_dir, Some(key.clone())).unwrap();
    with_snapshot(&mut staging, 500);
    assert_eq!(put(&mut staging, &a, 100), hash_a);
    let hash_b = put(&mut staging, &b, 100);
    drop(staging);
    store
        .import_backfill(&staging_dir, &[("public/t".to_string(), true)], &[])
        .unwrap();
    let info = store.collections().unwrap();
    assert_eq!((info[0].rows, info[0].changes), (500, 500));
    for (hash, json) in [(&hash_a, &a), (&hash_b, &b)] {
        let mut out = Vec::new();
        read_value(&store.conn, hash, &mut out).unwrap();
        assert!(
            out == json.as_bytes(),
            "large value {hash} brought in whole"
        );
    }
    let values: i64 = store
        .conn
        .query_row("SELECT count(*) FROM large_values", [], |r| r.get(0))
        .unwrap();
    assert_eq!(values, 2, "a value the store had is not copied again");
    drop(store);
    let err = Store::open_keyed(
        &dir,
        Some(std::sync::Arc::new(StoreKey::generate().unwrap())),
    )
    .err()
    .unwrap();
    assert_eq!(err.kind(), crate::ErrorKind::Locked, "{err}");
    let err = Store::open_keyed(&dir, None).err().unwrap();
    assert_eq!(err.kind(), crate::ErrorKind::Locked, "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_snapshot_is_the_base_rows_and_later_changes_shadow_it() {
    let (mut store, dir) = store();
    with_snapshot(&mut store, 3000);
    assert_eq!(
        store.last_seq("public/t").unwrap(),
        3000,
        "the snapshot's range"
    );
    let doc = |id: i64, v: &str| format!(r#"{{"id":{id},"v":"{v}","_meta":{{"op":"u"}}}}"#);
    store.begin().unwrap();
    store
        .apply(
            "public/t",
            Lsn(200),
            Op::Update,
            "[2]",
            None,
            doc(2, "changed"),
        )
        .unwrap();
    store
        .apply("public/t", Lsn(200), Op::Delete, "[3]", None, r#"{"id":3}"#)
        .unwrap();
    store
        .apply(
            "public/t",
            Lsn(200),
            Op::Create,
            "[5000]",
            None,
            doc(5000, "new"),
        )
        .unwrap();
    store
        .apply(
            "public/t",
            Lsn(200),
            Op::Update,
            "[1500]",
            Some("[1501]"),
            doc(1500, "moved"),
        )
        .unwrap();
    store.commit(Lsn(200)).unwrap();

    assert_eq!(store.last_seq("public/t").unwrap(), 3004);
    let info = &store.collections().unwrap()[0];
    // 3000, less 3 (deleted), plus 5000 (new), less 1501 (moved onto 1500, replacing it).
    assert_eq!((info.rows, info.changes), (2999, 3004));
    assert_eq!(
        info.last_change_ms, None,
        "the test documents carry no ts_ms"
    );

    let first = store.rows_after("public/t", None, 4, None).unwrap();
    let keys: Vec<&str> = first.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        keys,
        ["[1]", "[2]", "[4]", "[5]"],
        "numeric order, 3 deleted"
    );
    assert_eq!(first[0].1["v"], "row 1");
    assert_eq!(first[0].1["_meta"]["source"]["snapshot"], true);
    assert_eq!(first[1].1["v"], "changed");
    let mut all = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = store
            .rows_after("public/t", after.as_deref(), 700, None)
            .unwrap();
        if page.is_empty() {
            break;
        }
        after = page.last().map(|(k, _)| k.clone());
        all.extend(page);
    }
    assert_eq!(all.len(), 2999);
    assert_eq!(all[1498].1["v"], "moved", "1500 replaced by the moved row");
    assert_eq!(all[1499].0, "[1502]", "1501 is gone");
    assert_eq!(all.last().unwrap().0, "[5000]");
    assert_eq!(store.row("public/t", "[7]").unwrap().unwrap()["v"], "row 7");
    assert!(store.row("public/t", "[3]").unwrap().is_none());

    let filter = Filter {
        field: "v".into(),
        value: "row 2999".into(),
        contains: false,
    };
    let found = store
        .rows_after("public/t", None, 10, Some(&filter))
        .unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].0, "[2999]");
    // Filters the file's lines are screened for: a substring of a text column, an integer column,
    // and values the screen must not be trusted with (NULL, what COPY escapes).
    let filter = |field: &str, value: &str, contains| Filter {
        field: field.into(),
        value: value.into(),
        contains,
    };
    let keys = |f: Filter| -> Vec<String> {
        store
            .rows_after("public/t", None, 100, Some(&f))
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect()
    };
    let mut expected = vec!["[299]".to_string()];
    expected.extend((2990..=2999).map(|i| format!("[{i}]")));
    assert_eq!(keys(filter("v", "row 299", true)), expected);
    assert_eq!(keys(filter("id", "2998", false)), ["[2998]"]);
    assert_eq!(
        keys(filter("v", "changed", false)),
        ["[2]"],
        "a shadowing row"
    );
    assert!(keys(filter("v", "null", false)).is_empty());
    assert!(keys(filter("v", "row\t1", true)).is_empty());
    let logged = store
        .changes_matching("public/t", 0, 100, Some(&filter("id", "2998", false)))
        .unwrap();
    assert_eq!(logged.len(), 1);
    assert_eq!(logged[0].0, 2998);
    let newest = store
        .latest_changes_matching("public/t", 5, Some(&filter("v", "row 299", true)))
        .unwrap();
    let seqs: Vec<u64> = newest.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, [2995, 2996, 2997, 2998, 2999]);

    // The log: the snapshot's 3000 documents, then the four changes.
    let head = store.changes("public/t", 0, 2).unwrap();
    assert_eq!((head[0].0, head[0].1["id"].as_i64()), (1, Some(1)));
    let across = store.changes("public/t", 2998, 4).unwrap();
    let seqs: Vec<u64> = across.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, [2999, 3000, 3001, 3002]);
    assert_eq!(across[2].1["v"], "changed");
    let latest = store.latest_changes("public/t", 6).unwrap();
    let seqs: Vec<u64> = latest.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, [2999, 3000, 3001, 3002, 3003, 3004]);
    let snapshot_only = Filter {
        field: "v".into(),
        value: "row 1".into(),
        contains: true,
    };
    let latest = store
        .latest_changes_matching("public/t", 2, Some(&snapshot_only))
        .unwrap();
    let ids: Vec<i64> = latest
        .iter()
        .map(|(_, d)| d["id"].as_i64().unwrap())
        .collect();
    assert_eq!(
        ids,
        [1998, 1999],
        "the newest matches, read backwards through the file"
    );

    // A truncate empties the collection; the log keeps everything.
    store.begin().unwrap();
    store
        .apply("public/t", Lsn(300), Op::Truncate, "", None, "{}")
        .unwrap();
    store.commit(Lsn(300)).unwrap();
    let info = &store.collections().unwrap()[0];
    assert_eq!((info.rows, info.changes), (0, 3005));
    assert!(store
        .rows_after("public/t", None, 10, None)
        .unwrap()
        .is_empty());
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_large_value_is_stored_once_and_every_reader_gets_it_back() {
    let (mut store, dir) = store();
    store.begin().unwrap();
    store.put_collection(&spec("public/t")).unwrap();
    let value = "\"x\"\n".repeat(40_000);
    let json = serde_json::to_string(&value).unwrap();
    let put = |store: &mut Store| {
        store
            .put_large_value(&|sink| crate::document::large_value::pieces(json.as_bytes(), sink))
            .unwrap()
    };
    let hash = put(&mut store);
    assert_eq!(put(&mut store), hash, "the same value, the same hash");
    let doc = |n: i64| {
        let text = format!(r#"{{"id":1,"n":{n},"big":null}}"#);
        let at = text.find("null").unwrap();
        Document {
            text,
            refs: vec![ValueRef {
                at,
                hash: hash.clone(),
                path: vec!["big".into()],
            }],
            source: None,
        }
    };
    store
        .apply("public/t", Lsn(1), Op::Create, "[1]", None, doc(0))
        .unwrap();
    store
        .hold("public/t", Lsn(2), Op::Update, "[1]", None, &doc(1))
        .unwrap();
    store.replay_held("public/t").unwrap();
    store.commit(Lsn(2)).unwrap();
    let values: i64 = store
        .conn
        .query_row("SELECT count(*) FROM large_values", [], |r| r.get(0))
        .unwrap();
    assert_eq!(values, 1);
    let whole = |n: i64| serde_json::json!({"id": 1, "n": n, "big": value});
    let changes = store.changes("public/t", 0, 10).unwrap();
    assert_eq!(changes[0].1, whole(0));
    assert_eq!(changes[1].1, whole(1), "a held change keeps its reference");
    assert_eq!(store.row("public/t", "[1]").unwrap().unwrap(), whole(1));
    let stored = store.row_document("public/t", "[1]").unwrap().unwrap();
    assert_eq!(stored, doc(1), "as stored, without reading the value");
    let filter = |value: &str| Filter {
        field: "big".into(),
        value: value.into(),
        contains: true,
    };
    let found = store
        .changes_matching("public/t", 0, 10, Some(&filter("\"x\"\n\"x")))
        .unwrap();
    assert_eq!(found.len(), 2);
    assert!(store
        .rows_after("public/t", None, 10, Some(&filter("y")))
        .unwrap()
        .is_empty());
    store.forget_capture(&[]).unwrap();
    let values: i64 = store
        .conn
        .query_row("SELECT count(*) FROM large_values", [], |r| r.get(0))
        .unwrap();
    assert_eq!(values, 0, "forgotten with the capture");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn an_uncommitted_snapshot_is_removed_and_a_recorded_one_kept() {
    let (mut store, dir) = store();
    with_snapshot(&mut store, 10);
    let mut stray =
        crate::store::snapshot::SnapshotWriter::create(&store.snapshot_dir(), store.key()).unwrap();
    stray.push(b"x", b"1").unwrap();
    stray.finish().unwrap();
    std::fs::write(store.snapshot_dir().join("half.snap.partial"), b"TPSNAP01").unwrap();
    assert_eq!(std::fs::read_dir(store.snapshot_dir()).unwrap().count(), 3);
    store.remove_unrecorded_snapshots().unwrap();
    assert_eq!(std::fs::read_dir(store.snapshot_dir()).unwrap().count(), 1);
    assert_eq!(store.collections().unwrap()[0].rows, 10);
    store.forget_capture(&[]).unwrap();
    assert_eq!(std::fs::read_dir(store.snapshot_dir()).unwrap().count(), 0);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn rows_are_reduced_by_key_and_the_log_keeps_every_change() {
    let (mut store, dir) = store();
    store.begin().unwrap();
    store.put_collection(&spec("public/t")).unwrap();
    store
        .apply(
            "public/t",
            Lsn(10),
            Op::Create,
            "[1]",
            None,
            r#"{"id":1,"v":"a"}"#,
        )
        .unwrap();
    store
        .apply(
            "public/t",
            Lsn(10),
            Op::Create,
            "[2]",
            None,
            r#"{"id":2,"v":"b"}"#,
        )
        .unwrap();
    store
        .apply(
            "public/t",
            Lsn(10),
            Op::Update,
            "[1]",
            None,
            r#"{"id":1,"v":"c"}"#,
        )
        .unwrap();
    store
        .apply(
            "public/t",
            Lsn(10),
            Op::Update,
            "[3]",
            Some("[2]"),
            r#"{"id":3,"v":"b"}"#,
        )
        .unwrap();
    assert_eq!(store.batch_len(), 4);
    store.commit(Lsn(20)).unwrap();
    assert_eq!(
        store.rows("public/t", 10).unwrap(),
        vec![
            serde_json::json!({"id":1,"v":"c"}),
            serde_json::json!({"id":3,"v":"b"})
        ]
    );
    store.begin().unwrap();
    store
        .apply("public/t", Lsn(30), Op::Delete, "[1]", None, r#"{"id":1}"#)
        .unwrap();
    store.commit(Lsn(40)).unwrap();
    assert_eq!(
        store.collections().unwrap(),
        vec![CollectionInfo {
            name: "public/t".into(),
            rows: 1,
            changes: 5,
            last_change_ms: None,
        }]
    );
    assert_eq!(store.checkpoint().unwrap(), Lsn(40));
    store.begin().unwrap();
    store
        .apply("public/t", Lsn(50), Op::Truncate, "", None, r#"{}"#)
        .unwrap();
    store.commit(Lsn(60)).unwrap();
    assert_eq!(store.collections().unwrap()[0].rows, 0);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn chunked_writes_keep_the_order_of_changes() {
    let (mut store, dir) = store();
    store.begin().unwrap();
    store.put_collection(&spec("public/t")).unwrap();
    create_rows(&mut store, 0..150, |i| format!(r#"{{"id":{i},"v":0}}"#));
    // Within the next chunk: the same key twice, then a delete and a key change that flush it.
    store
        .apply(
            "public/t",
            Lsn(2),
            Op::Update,
            "[7]",
            None,
            r#"{"id":7,"v":1}"#,
        )
        .unwrap();
    store
        .apply(
            "public/t",
            Lsn(2),
            Op::Update,
            "[7]",
            None,
            r#"{"id":7,"v":2}"#,
        )
        .unwrap();
    store
        .apply("public/t", Lsn(2), Op::Delete, "[8]", None, r#"{"id":8}"#)
        .unwrap();
    store
        .apply(
            "public/t",
            Lsn(2),
            Op::Update,
            "[200]",
            Some("[9]"),
            r#"{"id":200,"v":3}"#,
        )
        .unwrap();
    assert_eq!(
        store.row("public/t", "[7]").unwrap().unwrap()["v"],
        2,
        "reads see buffered writes"
    );
    store.commit(Lsn(3)).unwrap();
    let info = &store.collections().unwrap()[0];
    assert_eq!((info.rows, info.changes), (149, 154));
    let changes = store.changes("public/t", 0, 1000).unwrap();
    let seqs: Vec<u64> = changes.iter().map(|(seq, _)| *seq).collect();
    assert_eq!(seqs, (1..=154).collect::<Vec<_>>());
    assert_eq!(changes[151].1, serde_json::json!({"id":7,"v":2}));
    let rows = store.rows("public/t", 1000).unwrap();
    assert!(rows.iter().all(|r| r["id"] != 8 && r["id"] != 9));
    assert!(rows.contains(&serde_json::json!({"id":200,"v":3})));
    // Rows written a chunk at a time are found under their keys, with their own documents.
    for i in [0, 63, 64, 127, 128, 149] {
        assert_eq!(
            store.row("public/t", &format!("[{i}]")).unwrap(),
            Some(serde_json::json!({"id": i, "v": 0})),
            "row [{i}]"
        );
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn an_uncommitted_batch_leaves_nothing_behind_and_the_checkpoint_never_moves_back() {
    let (mut store, dir) = store();
    store.begin().unwrap();
    store.put_collection(&spec("public/t")).unwrap();
    store
        .apply("public/t", Lsn(10), Op::Create, "[1]", None, "{}")
        .unwrap();
    // Dropped without commit: as after a crash.
    drop(store);
    let mut store = Store::open(&dir).unwrap();
    assert!(store.collections().unwrap().is_empty());
    assert_eq!(store.checkpoint().unwrap(), Lsn(0));
    assert!(
        store
            .apply("public/t", Lsn(10), Op::Create, "[1]", None, "{}")
            .is_err(),
        "writes need a batch"
    );
    store.commit(Lsn(100)).unwrap();
    assert!(store.commit(Lsn(50)).is_err());
    assert_eq!(store.checkpoint().unwrap(), Lsn(100));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_chunk_that_fails_part_way_leaves_nothing_of_its_batch() {
    let (mut store, dir) = store();
    store.begin().unwrap();
    store.put_collection(&spec("public/t")).unwrap();
    store.commit(Lsn(1)).unwrap();
    store.begin().unwrap();
    // The log position the chunk's tenth change will take is already used: the chunk's statement
    // fails there, after writing nine.
    store
        .conn
        .execute(
            "INSERT INTO changes (seq, collection, lsn, op, doc) VALUES (?1, 1, 2, 'c', '{}')",
            [store.next_seq + 9],
        )
        .unwrap();
    let written = (1..=write::CHUNK as i64).try_for_each(|i| {
        store.apply(
            "public/t",
            Lsn(2),
            Op::Create,
            &format!("[{i}]"),
            None,
            format!(r#"{{"id":{i}}}"#),
        )
    });
    assert!(written.is_err(), "the chunk's write was expected to fail");
    // The batch is gone, and no commit may store a checkpoint past it until the caller knows.
    assert!(!store.in_batch());
    assert!(store.commit(Lsn(3)).is_err());
    store.rollback().unwrap();
    store.commit(Lsn(3)).unwrap();
    assert!(store.changes("public/t", 0, 100).unwrap().is_empty());
    assert!(store.rows("public/t", 100).unwrap().is_empty());
    assert_eq!(store.checkpoint().unwrap(), Lsn(3));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn pages_of_rows_follow_the_key_and_filters_match_as_the_tail_does() {
    let (mut store, dir) = store();
    store.begin().unwrap();
    store.put_collection(&spec("public/t")).unwrap();
    let docs = [
        (
            "[1]",
            r#"{"id":1,"name":"ada","vip":true,"note":null,"tags":["x"]}"#,
        ),
        ("[2]", r#"{"id":2,"name":"bob","vip":false,"note":"hi"}"#),
        ("[3]", r#"{"id":3,"name":"adam","vip":true}"#),
        ("[4]", r#"{"id":4,"name":"cy","vip":false,"note":"ho"}"#),
    ];
    for (key, doc) in docs {
        store
            .apply("public/t", Lsn(1), Op::Create, key, None, doc.to_string())
            .unwrap();
    }
    store.commit(Lsn(1)).unwrap();

    let first = store.rows_after("public/t", None, 3, None).unwrap();
    let keys: Vec<&str> = first.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["[1]", "[2]", "[3]"]);
    let next = store.rows_after("public/t", Some("[3]"), 3, None).unwrap();
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].1["id"], 4);

    let cases = [
        (
            Filter {
                field: "name".into(),
                value: "ada".into(),
                contains: false,
            },
            vec![1],
        ),
        (
            Filter {
                field: "name".into(),
                value: "ada".into(),
                contains: true,
            },
            vec![1, 3],
        ),
        (
            Filter {
                field: "id".into(),
                value: "2".into(),
                contains: false,
            },
            vec![2],
        ),
        (
            Filter {
                field: "vip".into(),
                value: "true".into(),
                contains: false,
            },
            vec![1, 3],
        ),
        (
            Filter {
                field: "note".into(),
                value: "null".into(),
                contains: false,
            },
            vec![1],
        ),
        (
            Filter {
                field: "tags".into(),
                value: r#"["x"]"#.into(),
                contains: false,
            },
            vec![1],
        ),
        (
            Filter {
                field: "note".into(),
                value: "h".into(),
                contains: true,
            },
            vec![2, 4],
        ),
        (
            Filter {
                field: "absent".into(),
                value: "".into(),
                contains: true,
            },
            vec![],
        ),
    ];
    for (filter, expected) in cases {
        let rows = store
            .rows_after("public/t", None, 10, Some(&filter))
            .unwrap();
        let ids: Vec<i64> = rows
            .iter()
            .map(|(_, d)| d["id"].as_i64().unwrap())
            .collect();
        assert_eq!(ids, expected, "rows for {filter:?}");
        let changes = store
            .changes_matching("public/t", 0, 10, Some(&filter))
            .unwrap();
        let ids: Vec<i64> = changes
            .iter()
            .map(|(_, d)| d["id"].as_i64().unwrap())
            .collect();
        assert_eq!(ids, expected, "changes for {filter:?}");
        // A live tail applies the same rule to each arriving document.
        let tailed: Vec<i64> = docs
            .iter()
            .map(|(_, d)| serde_json::from_str::<Json>(d).unwrap())
            .filter(|d| filter.matches(d))
            .map(|d| d["id"].as_i64().unwrap())
            .collect();
        assert_eq!(tailed, expected, "tail for {filter:?}");
    }
    let bad = Filter {
        field: "a\"b".into(),
        value: "x".into(),
        contains: false,
    };
    let e = store
        .rows_after("public/t", None, 10, Some(&bad))
        .unwrap_err();
    assert_eq!(e.kind(), crate::ErrorKind::InvalidInput);
    assert!(e.message().contains("filter field"), "{e}");
    drop(store);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_new_store_has_16_kib_pages_and_an_older_one_keeps_its_own() {
    let page_size = |dir: &Path| -> i64 {
        Connection::open(dir.join("tidepool.db"))
            .unwrap()
            .query_row("PRAGMA page_size", [], |r| r.get(0))
            .unwrap()
    };
    let (store, dir) = store();
    drop(store);
    assert_eq!(page_size(&dir), 16384);
    std::fs::remove_dir_all(&dir).unwrap();

    // A store created before, with SQLite's default pages, still opens and takes changes.
    std::fs::create_dir_all(&dir).unwrap();
    Connection::open(dir.join("tidepool.db"))
        .unwrap()
        .execute_batch("PRAGMA page_size = 4096; PRAGMA journal_mode = WAL; CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);")
        .unwrap();
    let mut store = Store::open(&dir).unwrap();
    store.begin().unwrap();
    store.put_collection(&spec("public/t")).unwrap();
    create_rows(&mut store, 0..100, |i| format!(r#"{{"id":{i}}}"#));
    store.commit(Lsn(2)).unwrap();
    assert_eq!(store.collections().unwrap()[0].rows, 100);
    drop(store);
    assert_eq!(page_size(&dir), 4096);
    std::fs::remove_dir_all(dir).unwrap();
}

/// A document cut by the capture ([`crate::document::source_meta`]): `{"id":i,"_meta":{"op":…}}` with
/// its source (table `public."we\"ird"`, transaction 77 at `lsn`) left out.
/// `doc` with its source put back, as every reader returns it.
fn whole(doc: &Document) -> Json {
    let mut doc = doc.clone();
    doc.make_whole().unwrap();
    serde_json::from_str(&doc.text).unwrap()
}

fn cut_document(i: i64, op: Op, table: &std::sync::Arc<SourceTable>, lsn: Lsn) -> Document {
    use crate::document::source_meta::SourceCut;
    let text = format!(r#"{{"id":{i},"_meta":{{"op":"{}"}}}}"#, op.code());
    let at = text.len() - 2;
    Document {
        text,
        refs: Vec::new(),
        source: Some(SourceCut {
            at,
            table: table.clone(),
            lsn,
            txid: 77,
            ts_ms: 1_700_000_000_000 + i,
        }),
    }
}

/// Changes stored without `_meta.source` read back whole through every reader (rows, one row, the
/// log, filters on `_meta`, a held change), chunked and one by one; a source table recorded in a
/// rolled-back batch is recorded again, not pointed at.
#[test]
fn changes_stored_without_their_source_read_back_whole_everywhere() {
    let (mut store, dir) = store();
    let weird = std::sync::Arc::new(SourceTable {
        schema: "public".into(),
        table: "we\"ird".into(),
    });
    store.begin().unwrap();
    store.put_collection(&spec("public/t")).unwrap();
    // 70: a chunk of 64 written by the multi-row statement, and 6 written one by one.
    let mut expected = Vec::new();
    for i in 0..70 {
        let doc = cut_document(i, Op::Create, &weird, Lsn(5));
        expected.push(whole(&doc));
        store
            .apply("public/t", Lsn(5), Op::Create, &format!("[{i}]"), None, doc)
            .unwrap();
    }
    // A cut whose LSN is not the change's cannot be rebuilt from it: stored whole instead.
    let mismatched = cut_document(70, Op::Create, &weird, Lsn(4));
    let mismatched_whole = whole(&mismatched);
    store
        .apply("public/t", Lsn(5), Op::Create, "[70]", None, mismatched)
        .unwrap();
    // A delete is written at once, not buffered; the log's last change, its time is read from its column.
    let delete = cut_document(69, Op::Delete, &weird, Lsn(5));
    let delete_whole = whole(&delete);
    store
        .apply("public/t", Lsn(5), Op::Delete, "[69]", None, delete)
        .unwrap();
    store.commit(Lsn(6)).unwrap();

    let cut: i64 = store
        .conn
        .query_row(
            "SELECT count(*) FROM changes WHERE meta_at IS NOT NULL AND instr(doc, 'source') = 0",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        cut, 71,
        "the streamed changes are stored without their source"
    );
    assert_eq!(
        expected[3]["_meta"]["source"],
        serde_json::json!({"schema":"public","table":"we\"ird","lsn":"0/5","txid":77,"ts_ms":1_700_000_000_003_i64})
    );

    let mut rows = expected[..69].to_vec();
    rows.push(mismatched_whole.clone());
    assert_eq!(store.rows("public/t", 100).unwrap(), rows);
    assert_eq!(
        store.row("public/t", "[3]").unwrap(),
        Some(expected[3].clone())
    );
    let log: Vec<Json> = store
        .changes("public/t", 0, 100)
        .unwrap()
        .into_iter()
        .map(|(_, doc)| doc)
        .collect();
    let mut all = expected.clone();
    all.push(mismatched_whole);
    all.push(delete_whole);
    assert_eq!(log, all);
    let on_meta = Filter {
        field: "_meta".into(),
        value: "\"ts_ms\":1700000000007".into(),
        contains: true,
    };
    let found = store
        .changes_matching("public/t", 0, 100, Some(&on_meta))
        .unwrap();
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].1, expected[7]);
    let rows_found = store
        .rows_after("public/t", None, 100, Some(&on_meta))
        .unwrap();
    assert_eq!(rows_found, vec![("[7]".to_string(), expected[7].clone())]);
    let last_change_ms = store.collections().unwrap()[0].last_change_ms;
    assert_eq!(last_change_ms, Some(1_700_000_000_069));

    // A table first seen in a batch that is rolled back is gone with it.
    let other = std::sync::Arc::new(SourceTable {
        schema: "s".into(),
        table: "other".into(),
    });
    store.begin().unwrap();
    store
        .apply(
            "public/t",
            Lsn(7),
            Op::Create,
            "[100]",
            None,
            cut_document(100, Op::Create, &other, Lsn(7)),
        )
        .unwrap();
    store.rollback().unwrap();
    store.begin().unwrap();
    let doc = cut_document(101, Op::Create, &other, Lsn(8));
    let expected_other = whole(&doc);
    store
        .apply("public/t", Lsn(8), Op::Create, "[101]", None, doc)
        .unwrap();
    // A held change is kept whole.
    store
        .hold(
            "public/u",
            Lsn(8),
            Op::Create,
            "[1]",
            None,
            &cut_document(1, Op::Create, &other, Lsn(8)),
        )
        .unwrap();
    store.commit(Lsn(9)).unwrap();
    assert_eq!(
        store.row("public/t", "[101]").unwrap(),
        Some(expected_other)
    );
    let held: String = store
        .conn
        .query_row("SELECT doc FROM held", [], |r| r.get(0))
        .unwrap();
    assert!(
        held.contains(r#""source":{"schema":"s","table":"other","lsn":"0/8""#),
        "{held}"
    );

    // A damaged position is an error that says what is wrong, not a panic.
    store
        .conn
        .execute(
            "UPDATE changes SET meta_at = 9999 WHERE seq = (SELECT max(seq) FROM changes)",
            [],
        )
        .unwrap();
    let err = store.changes("public/t", 0, 1000).unwrap_err();
    assert!(err.to_string().contains("cannot be made whole"), "{err}");
    drop(store);
    std::fs::remove_dir_all(dir).unwrap();
}

/// A chunk of one transaction's inserts into one table binds what its changes share once
/// ([`write::uniform`]): it stores exactly what a chunk binding every value stores, a key written
/// twice in it ends at the later change, and a chunk of changes from many transactions is not
/// taken for a uniform one. Both forms: positions left to SQLite (the chunk follows the log's last
/// change) and positions bound (a snapshot's rows took the positions after it).
#[test]
fn a_uniform_chunk_stores_what_a_mixed_one_does() {
    uniform_chunks(false);
    uniform_chunks(true);
}

fn uniform_chunks(after_snapshot: bool) {
    let (mut store, dir) = store();
    let table = std::sync::Arc::new(SourceTable {
        schema: "public".into(),
        table: "t".into(),
    });
    let chunk = write::CHUNK as i64;
    // Keys apart from the snapshot's (1..=10): every change here is outside it.
    let key_of = |n: i64| format!("[{}]", 1000 + n);
    let base_rows = if after_snapshot {
        with_snapshot(&mut store, 10);
        10
    } else {
        0
    };
    let first_seq = store.next_seq as u64;
    store.begin().unwrap();
    store.put_collection(&spec("public/t")).unwrap();
    let mut expected = Vec::new();
    for i in 0..2 * chunk {
        let mut doc = cut_document(i, Op::Create, &table, Lsn(500));
        if i < chunk {
            // One transaction: one time. The last two changes write keys 0 and 1 again.
            doc.source.as_mut().unwrap().ts_ms = 1_700_000_000_000;
        }
        expected.push(whole(&doc));
        let key = if i < chunk { i % (chunk - 2) } else { i };
        if i == chunk - 1 || i == 2 * chunk - 1 {
            assert_eq!(
                write::uniform(&store.pending),
                i < chunk,
                "the chunk before change {i}"
            );
        }
        store
            .apply("public/t", Lsn(500), Op::Create, &key_of(key), None, doc)
            .unwrap();
    }
    store.commit(Lsn(600)).unwrap();
    let log = store.changes("public/t", first_seq - 1, 1000).unwrap();
    let positions: Vec<u64> = log.iter().map(|(seq, _)| *seq).collect();
    assert_eq!(
        positions,
        (first_seq..first_seq + 2 * chunk as u64).collect::<Vec<_>>()
    );
    let docs: Vec<Json> = log.into_iter().map(|(_, doc)| doc).collect();
    assert_eq!(docs, expected);
    for key in 0..2 * chunk {
        let written_by = match key {
            0 | 1 => Some(chunk - 2 + key),
            k if k < chunk - 2 || k >= chunk => Some(k),
            _ => None,
        };
        assert_eq!(
            store.row("public/t", &key_of(key)).unwrap(),
            written_by.map(|i| expected[i as usize].clone()),
            "row {}",
            key_of(key)
        );
    }
    assert_eq!(
        store.collections().unwrap()[0].rows,
        base_rows + 2 * chunk as u64 - 2
    );
    drop(store);
    std::fs::remove_dir_all(dir).unwrap();
}

/// Positions of `collection`'s changes, straight from the log.
fn logged(store: &Store, collection: &str) -> Vec<u64> {
    let id = store.id_of(collection).unwrap();
    store
        .conn
        .prepare("SELECT seq FROM changes WHERE collection = ?1 ORDER BY seq")
        .unwrap()
        .query_map([id], |r| r.get::<_, i64>(0).map(|s| s as u64))
        .unwrap()
        .collect::<std::result::Result<_, _>>()
        .unwrap()
}

/// `collection`'s runs, in order.
fn runs_of(store: &Store, collection: &str) -> Vec<(i64, i64)> {
    let id = store.id_of(collection).unwrap();
    store
        .conn
        .prepare(
            "SELECT first_seq, last_seq FROM change_runs WHERE collection = ?1 ORDER BY first_seq",
        )
        .unwrap()
        .query_map([id], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<std::result::Result<_, _>>()
        .unwrap()
}

/// Every way of reading one collection's log gives exactly its changes, in order: pages after each
/// position, the newest first, its end and its count; and its runs do not overlap.
fn assert_logs_read_back(store: &Store, names: &[&str]) {
    let infos = store.collections().unwrap();
    for name in names {
        let truth = logged(store, name);
        assert!(!truth.is_empty(), "{name} has changes");
        let seqs = |e: Vec<(u64, Json)>| e.into_iter().map(|(s, _)| s).collect::<Vec<_>>();
        assert_eq!(
            seqs(store.changes(name, 0, 100_000).unwrap()),
            truth,
            "{name}"
        );
        let end = *truth.last().unwrap();
        for after in 0..=end {
            let expected: Vec<u64> = truth
                .iter()
                .copied()
                .filter(|&s| s > after)
                .take(5)
                .collect();
            assert_eq!(
                seqs(store.changes(name, after, 5).unwrap()),
                expected,
                "{name} after {after}"
            );
        }
        for limit in [1, 7, 100_000] {
            let newest = &truth[truth.len().saturating_sub(limit)..];
            assert_eq!(
                seqs(store.latest_changes(name, limit).unwrap()),
                newest,
                "{name}, newest {limit}"
            );
        }
        assert_eq!(store.last_seq(name).unwrap(), end, "{name}");
        let info = infos.iter().find(|i| i.name == *name).unwrap();
        assert_eq!(info.changes, truth.len() as u64, "{name}");
        let runs = runs_of(store, name);
        assert!(
            runs.windows(2).all(|w| w[0].1 < w[1].0),
            "{name}'s runs overlap: {runs:?}"
        );
    }
}

#[test]
fn each_collections_changes_read_back_through_its_runs() {
    let (mut store, dir) = store();
    let names = ["public/a", "public/b", "public/c"];
    store.begin().unwrap();
    for name in names {
        store.put_collection(&spec(name)).unwrap();
    }
    let doc = |i: i64| format!(r#"{{"id":{i}}}"#);
    let apply = |store: &mut Store, name: &str, lsn: u64, op: Op, i: i64| {
        store
            .apply(name, Lsn(lsn), op, &format!("[{i}]"), None, doc(i))
            .unwrap();
    };
    // One transaction's long run of inserts into one table: chunks that share their binds.
    for i in 0..200 {
        apply(&mut store, "public/a", 1, Op::Create, i);
    }
    // Single-row transactions alternating between tables: mixed chunks and the remainder.
    for i in 0..150 {
        apply(
            &mut store,
            names[(i % 2) as usize],
            2 + i as u64,
            Op::Create,
            1000 + i,
        );
    }
    store.commit(Lsn(200)).unwrap();
    // Updates and deletes (written one at a time), in stretches and alternating.
    store.begin().unwrap();
    for i in 0..10 {
        apply(&mut store, "public/c", 300, Op::Update, i);
    }
    for i in 0..20 {
        let op = if i % 3 == 0 { Op::Delete } else { Op::Update };
        apply(&mut store, names[(i % 3) as usize], 301, op, i);
    }
    store.commit(Lsn(301)).unwrap();
    // A rolled-back batch leaves no run behind, and the next one is read right.
    store.begin().unwrap();
    for i in 0..100 {
        apply(&mut store, "public/b", 400, Op::Create, 5000 + i);
    }
    store.rollback().unwrap();
    store.begin().unwrap();
    for i in 0..70 {
        apply(&mut store, "public/c", 401, Op::Create, 6000 + i);
    }
    store.commit(Lsn(401)).unwrap();
    // A run that spans another collection's changes, as a backfill's import may write: readers
    // of either collection skip the other's.
    store.begin().unwrap();
    let a = store.id_of("public/a").unwrap();
    let next = store.next_seq;
    store.cover(a, next, next + 9, 0).unwrap();
    for i in 0..10 {
        apply(
            &mut store,
            names[(i % 2) as usize],
            402,
            Op::Create,
            7000 + i,
        );
    }
    store.commit(Lsn(402)).unwrap();
    assert!(runs_of(&store, "public/a").contains(&(next, next + 9)));
    assert_logs_read_back(&store, &names);

    // A store made before runs had an index instead: opening it builds the runs.
    store
        .conn
        .execute_batch(
            "DROP TABLE change_runs; CREATE INDEX changes_by_collection ON changes (collection, seq);",
        )
        .unwrap();
    drop(store);
    let store = Store::open(&dir).unwrap();
    let index: i64 = store
        .conn
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE name = 'changes_by_collection'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(index, 0, "the index is dropped");
    assert_logs_read_back(&store, &names);
    // Built from the log, one run per stretch of one collection's changes.
    assert_eq!(runs_of(&store, "public/a")[0], (1, 201));
    assert_eq!(
        runs_of(&store, "public/c").last(),
        Some(&(next - 70, next - 1))
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn one_tables_changes_take_one_run_across_batches() {
    let (mut store, dir) = store();
    for batch in 0..3 {
        store.begin().unwrap();
        if batch == 0 {
            store.put_collection(&spec("public/t")).unwrap();
        }
        create_rows(&mut store, batch * 100..batch * 100 + 100, |i| {
            format!(r#"{{"id":{i}}}"#)
        });
        store.commit(Lsn(10 + batch as u64)).unwrap();
    }
    assert_eq!(runs_of(&store, "public/t"), vec![(1, 300)]);
    // Another table's change between two of this one's starts a run for each.
    store.begin().unwrap();
    store.put_collection(&spec("public/u")).unwrap();
    store
        .apply("public/u", Lsn(20), Op::Create, "[1]", None, r#"{"id":1}"#)
        .unwrap();
    create_rows(&mut store, 300..301, |i| format!(r#"{{"id":{i}}}"#));
    store.commit(Lsn(20)).unwrap();
    assert_eq!(runs_of(&store, "public/t"), vec![(1, 300), (302, 302)]);
    assert_eq!(runs_of(&store, "public/u"), vec![(301, 301)]);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn positions_covered_out_of_order_merge_into_one_run() {
    let (mut store, dir) = store();
    store.begin().unwrap();
    store.put_collection(&spec("public/t")).unwrap();
    store.put_collection(&spec("public/u")).unwrap();
    let (id, other) = (
        store.id_of("public/t").unwrap(),
        store.id_of("public/u").unwrap(),
    );
    // Another collection between each stretch keeps them apart.
    store.cover(id, 10, 20, 0).unwrap();
    store.cover(other, 21, 29, 0).unwrap();
    store.cover(id, 30, 40, 0).unwrap();
    store.cover(other, 41, 49, 0).unwrap();
    store.cover(id, 50, 60, 0).unwrap();
    assert_eq!(
        runs_of(&store, "public/t"),
        vec![(10, 20), (30, 40), (50, 60)]
    );
    store.cover(id, 5, 12, 0).unwrap();
    assert_eq!(
        runs_of(&store, "public/t"),
        vec![(5, 20), (30, 40), (50, 60)]
    );
    store.cover(id, 25, 55, 0).unwrap();
    assert_eq!(runs_of(&store, "public/t"), vec![(5, 20), (25, 60)]);
    store.cover(id, 21, 24, 0).unwrap();
    assert_eq!(
        runs_of(&store, "public/t"),
        vec![(5, 20), (21, 24), (25, 60)]
    );
    store.rollback().unwrap();
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn reading_after_a_position_deep_in_one_run_seeks_it() {
    let (mut store, dir) = store();
    store.begin().unwrap();
    store.put_collection(&spec("public/t")).unwrap();
    create_rows(&mut store, 0..20_000, |i| format!(r#"{{"id":{i}}}"#));
    store.commit(Lsn(2)).unwrap();
    assert_eq!(runs_of(&store, "public/t"), vec![(1, 20_000)]);
    let id = store.id_of("public/t").unwrap();
    let f = FilterParams::of(None).unwrap();
    let mut stmt = store.conn.prepare(&read::log_sql(read::AFTER)).unwrap();
    let read = stmt
        .query_map(params![id, 5, 19_990, f.path, f.value, f.contains], |r| {
            r.get::<_, i64>(0)
        })
        .unwrap()
        .collect::<std::result::Result<Vec<_>, _>>()
        .unwrap();
    assert_eq!(read, (19_991..=19_995).collect::<Vec<_>>());
    // A walk from the run's start would take several steps for each of the 19,990 changes before.
    let steps = stmt.get_status(rusqlite::StatementStatus::VmStep);
    assert!(steps < 1_000, "{steps} virtual machine steps for 5 changes");
    drop(stmt);
    drop(store);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn reading_a_collections_log_seeks_its_runs_and_never_sorts() {
    let (store, dir) = store();
    for read in [read::AFTER, read::NEWEST] {
        let sql = read::log_sql(read);
        let mut stmt = store
            .conn
            .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
            .unwrap();
        let mut rows = stmt.raw_query();
        let mut plan = Vec::new();
        while let Some(row) = rows.next().unwrap() {
            plan.push(row.get::<_, String>(3).unwrap());
        }
        let plan = plan.join("\n");
        assert!(!plan.contains("TEMP B-TREE"), "{sql}\n{plan}");
        assert!(
            plan.contains("SEARCH r USING PRIMARY KEY (collection=?"),
            "{plan}"
        );
        assert!(
            plan.contains("SEARCH c USING INTEGER PRIMARY KEY (rowid>? AND rowid<?)"),
            "{plan}"
        );
        assert!(!plan.contains("SCAN"), "{plan}");
    }
    drop(store);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_pruned_run_is_dropped_and_the_counts_stay_exact() {
    let (mut store, dir) = store();
    let doc = |i: i64, ts: i64| format!(r#"{{"id":{i},"_meta":{{"source":{{"ts_ms":{ts}}}}}}}"#);
    let mut write = |name: &str, lsn: u64, ids: std::ops::Range<i64>, ts: i64| {
        store.begin().unwrap();
        if lsn == 1 {
            store.put_collection(&spec("public/a")).unwrap();
            store.put_collection(&spec("public/b")).unwrap();
        }
        for i in ids {
            store
                .apply(
                    name,
                    Lsn(lsn),
                    Op::Create,
                    &format!("[{i}]"),
                    None,
                    doc(i, ts),
                )
                .unwrap();
        }
        store.commit(Lsn(lsn)).unwrap();
    };
    // Transaction 1 is old and every row it wrote was written again: the prune removes it.
    write("public/a", 1, 0..100, 5);
    write("public/b", 2, 0..10, 5);
    write("public/a", 3, 0..100, 5);
    write("public/b", 4, 100..101, 20);
    assert_eq!(runs_of(&store, "public/a"), vec![(1, 100), (111, 210)]);
    let pruned = store.prune_log(10, 10_000, "pruned").unwrap();
    assert_eq!(pruned.removed, 100);
    assert_eq!(runs_of(&store, "public/a"), vec![(111, 210)]);
    assert_logs_read_back(&store, &["public/a", "public/b"]);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_store_made_before_sort_keys_is_moved_to_them_on_open() {
    let (mut store, dir) = store();
    store.begin().unwrap();
    store.put_collection(&spec("public/t")).unwrap();
    create_rows(&mut store, 0..100, |i| format!(r#"{{"id":{i}}}"#));
    store.commit(Lsn(2)).unwrap();
    store
        .conn
        .execute_batch(
            "CREATE TABLE old_rows AS SELECT collection, key, seq FROM rows;
             DROP TABLE rows; ALTER TABLE old_rows RENAME TO rows;",
        )
        .unwrap();
    drop(store);
    let store = Store::open(&dir).unwrap();
    drop(store);
    // The move was committed, not left to roll back with the connection.
    let moved: bool = Connection::open(dir.join("tidepool.db"))
        .unwrap()
        .query_row(
            "SELECT EXISTS (SELECT 1 FROM pragma_table_info('rows') WHERE name = 'skey')",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(moved, "rows have sort keys after the store closed");
    let mut store = Store::open(&dir).unwrap();
    let skeys: i64 = store
        .conn
        .query_row("SELECT count(skey) FROM rows", [], |r| r.get(0))
        .unwrap();
    assert_eq!(skeys, 100);
    assert_eq!(store.collections().unwrap()[0].rows, 100);
    assert_eq!(
        store.row("public/t", "[42]").unwrap(),
        Some(serde_json::json!({"id": 42}))
    );
    drop(store);
    std::fs::remove_dir_all(dir).unwrap();
}
