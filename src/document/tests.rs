//! Golden documents: the exact bytes the row-to-JSON mapping writes for every built-in type, for each
//! operation, with `_meta`, unknown columns and a large value's reference.
//!
//! Why bytes and not parsed JSON: the documents are stored as text, compared by consumers and
//! hashed by nobody else's rules; a faster mapping (fewer copies, other buffers) must give the very
//! same text. The integration tests compare the same values as parsed JSON against a real server
//! (`tests/capture.rs`, `every_type_maps_to_its_documented_json`); these pin the bytes.

use super::*;
use crate::document::large_value::Sink;
use crate::document::value::builtin;

/// `(name, type OID, PostgreSQL's text output under the session's settings)`; `None` is NULL.
const COLUMNS: &[(&str, u32, Option<&str>)] = &[
    ("id", 20, Some("9223372036854775807")),
    ("s", 21, Some("-32768")),
    ("i", 23, Some("2147483647")),
    ("o", 26, Some("4294967295")),
    ("b", 16, Some("t")),
    ("bf", 16, Some("f")),
    ("r", 700, Some("1.5")),
    ("d", 701, Some("0.1")),
    ("f_inf", 701, Some("-Infinity")),
    ("f_nan", 701, Some("NaN")),
    ("n", 1700, Some("123456789012345678901234567890.123456789")),
    ("n_nan", 1700, Some("NaN")),
    ("n_neg", 1700, Some("-0.000100")),
    (
        "tx",
        25,
        Some("héllo \"quoted\" \\ back\nline\ttab\u{1}\u{7f} 😀"),
    ),
    ("vc", 1043, Some("v")),
    ("ch", 1042, Some("ab ")),
    ("nm", 19, Some("pg_class")),
    ("j", 114, Some("{\"a\": [1, 2.5], \"z\": {}}")),
    ("jb", 3802, Some("{\"a\": true, \"b\": null, \"n\": 1e3}")),
    ("by", 17, Some("\\x00ff10")),
    ("by_empty", 17, Some("\\x")),
    ("u", 2950, Some("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")),
    ("dt", 1082, Some("2024-02-29")),
    ("dt_bc", 1082, Some("0044-03-15 BC")),
    ("dt_inf", 1082, Some("infinity")),
    ("tm", 1083, Some("13:45:00.5")),
    ("tmtz", 1266, Some("13:45:00+05:30")),
    ("ts", 1114, Some("2024-01-31 13:45:00.123456")),
    ("tstz", 1184, Some("2024-01-31 11:45:00+00")),
    ("tstz_bc", 1184, Some("0044-03-15 10:00:00+00 BC")),
    ("ts_inf", 1184, Some("-infinity")),
    ("iv", 1186, Some("P1Y2M3DT4H5M6.5S")),
    ("iv_neg", 1186, Some("P-1DT-0.000001S")),
    ("ab", 1000, Some("{t,f,NULL}")),
    ("ai", 1007, Some("{1,NULL,3}")),
    ("an", 1007, Some("{{1,2},{3,4}}")),
    ("ai8", 1016, Some("{-9223372036854775808}")),
    ("af", 1022, Some("{1.5,NaN,-Infinity}")),
    ("anu", 1231, Some("{1.50,NaN}")),
    ("at", 1009, Some("{\"a b\",\"c\\\"d\",NULL,\"NULL\",\"\"}")),
    ("ajb", 3807, Some("{\"{\\\"a\\\": 1}\",NULL}")),
    ("aby", 1001, Some("{\"\\\\x00ff\"}")),
    ("au", 2951, Some("{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}")),
    ("adt", 1182, Some("{2024-02-29,infinity}")),
    ("atstz", 1185, Some("{\"2024-01-31 11:45:00+00\"}")),
    ("aiv", 1187, Some("{P1D,PT0S}")),
    ("mo", 790, Some("$12.34")),
    ("ip", 869, Some("192.168.0.1/24")),
    ("pt", 600, Some("(1,2)")),
    ("bits", 1560, Some("101")),
    ("nul", 25, None),
];

fn relation(key: Vec<usize>) -> Relation {
    Relation {
        collection: "public/all_types".into(),
        source: std::sync::Arc::new(SourceTable {
            schema: "public".into(),
            table: "all \"types\"".into(),
        }),
        columns: COLUMNS
            .iter()
            .map(|(name, oid, _)| {
                ColumnInfo::new(name.to_string(), *oid, builtin(*oid).expect("built-in"))
            })
            .collect(),
        key,
    }
}

fn values() -> Vec<Value> {
    COLUMNS
        .iter()
        .map(|(_, _, text)| match text {
            Some(text) => Value::Text(bytes::Bytes::copy_from_slice(text.as_bytes())),
            None => Value::Null,
        })
        .collect()
}

fn transaction() -> Transaction {
    Transaction {
        final_lsn: Lsn(0x1_6B37_48A0),
        xid: 4242,
        ts_ms: postgres_time_to_unix_ms(760_000_000_123_456),
        commit_time_micros: 760_000_000_123_456,
        skip: false,
        index: 7,
        snapshot: false,
        sources: Vec::new(),
    }
}

/// Takes every large value, names it by its order, and keeps its JSON.
#[derive(Default)]
struct Values(Vec<Vec<u8>>);

impl LargeValues for Values {
    fn put_large_value(&mut self, json: &dyn Fn(&mut Sink<'_>) -> Result<()>) -> Result<String> {
        let mut out = Vec::new();
        json(&mut |piece: &[u8]| {
            out.extend_from_slice(piece);
            Ok(())
        })?;
        self.0.push(out);
        Ok(format!("hash{}", self.0.len()))
    }
}

const INSERT: &str = "{\"id\":9223372036854775807,\"s\":-32768,\"i\":2147483647,\"o\":4294967295,\"b\":true,\"bf\":false,\"r\":1.5,\"d\":0.1,\"f_inf\":\"-Infinity\",\"f_nan\":\"NaN\",\"n\":\"123456789012345678901234567890.123456789\",\"n_nan\":\"NaN\",\"n_neg\":\"-0.000100\",\"tx\":\"héllo \\\"quoted\\\" \\\\ back\\nline\\ttab\\u0001\u{7f} 😀\",\"vc\":\"v\",\"ch\":\"ab \",\"nm\":\"pg_class\",\"j\":{\"a\": [1, 2.5], \"z\": {}},\"jb\":{\"a\": true, \"b\": null, \"n\": 1e3},\"by\":\"AP8Q\",\"by_empty\":\"\",\"u\":\"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11\",\"dt\":\"2024-02-29\",\"dt_bc\":\"-0043-03-15\",\"dt_inf\":\"infinity\",\"tm\":\"13:45:00.5\",\"tmtz\":\"13:45:00+05:30\",\"ts\":\"2024-01-31T13:45:00.123456Z\",\"tstz\":\"2024-01-31T11:45:00Z\",\"tstz_bc\":\"-0043-03-15T10:00:00Z\",\"ts_inf\":\"-infinity\",\"iv\":\"P1Y2M3DT4H5M6.5S\",\"iv_neg\":\"P-1DT-0.000001S\",\"ab\":[true,false,null],\"ai\":[1,null,3],\"an\":[[1,2],[3,4]],\"ai8\":[-9223372036854775808],\"af\":[1.5,\"NaN\",\"-Infinity\"],\"anu\":[\"1.50\",\"NaN\"],\"at\":[\"a b\",\"c\\\"d\",null,\"NULL\",\"\"],\"ajb\":[{\"a\":1},null],\"aby\":[\"AP8=\"],\"au\":[\"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11\"],\"adt\":[\"2024-02-29\",\"infinity\"],\"atstz\":[\"2024-01-31T11:45:00Z\"],\"aiv\":[\"P1D\",\"PT0S\"],\"mo\":\"$12.34\",\"ip\":\"192.168.0.1/24\",\"pt\":\"(1,2)\",\"bits\":\"101\",\"nul\":null,\"_meta\":{\"op\":\"c\",\"source\":{\"schema\":\"public\",\"table\":\"all \\\"types\\\"\",\"lsn\":\"1/6B3748A0\",\"txid\":4242,\"ts_ms\":1706684800123}}}";
const UPDATE: &str = "{\"id\":9223372036854775807,\"s\":-32768,\"i\":2147483647,\"o\":4294967295,\"b\":true,\"bf\":false,\"r\":1.5,\"d\":0.1,\"f_inf\":\"-Infinity\",\"f_nan\":\"NaN\",\"n\":\"123456789012345678901234567890.123456789\",\"n_nan\":\"NaN\",\"n_neg\":\"-0.000100\",\"tx\":null,\"vc\":\"v\",\"nm\":\"pg_class\",\"j\":{\"a\": [1, 2.5], \"z\": {}},\"jb\":{\"a\": true, \"b\": null, \"n\": 1e3},\"by\":\"AP8Q\",\"by_empty\":\"\",\"u\":\"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11\",\"dt\":\"2024-02-29\",\"dt_bc\":\"-0043-03-15\",\"dt_inf\":\"infinity\",\"tm\":\"13:45:00.5\",\"tmtz\":\"13:45:00+05:30\",\"ts\":\"2024-01-31T13:45:00.123456Z\",\"tstz\":\"2024-01-31T11:45:00Z\",\"tstz_bc\":\"-0043-03-15T10:00:00Z\",\"ts_inf\":\"-infinity\",\"iv\":\"P1Y2M3DT4H5M6.5S\",\"iv_neg\":\"P-1DT-0.000001S\",\"ab\":[true,false,null],\"ai\":[1,null,3],\"an\":[[1,2],[3,4]],\"ai8\":[-9223372036854775808],\"af\":[1.5,\"NaN\",\"-Infinity\"],\"anu\":[\"1.50\",\"NaN\"],\"at\":[\"a b\",\"c\\\"d\",null,\"NULL\",\"\"],\"ajb\":[{\"a\":1},null],\"aby\":[\"AP8=\"],\"au\":[\"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11\"],\"adt\":[\"2024-02-29\",\"infinity\"],\"atstz\":[\"2024-01-31T11:45:00Z\"],\"aiv\":[\"P1D\",\"PT0S\"],\"mo\":\"$12.34\",\"ip\":\"192.168.0.1/24\",\"pt\":\"(1,2)\",\"bits\":\"101\",\"nul\":null,\"_meta\":{\"op\":\"u\",\"source\":{\"schema\":\"public\",\"table\":\"all \\\"types\\\"\",\"lsn\":\"1/6B3748A0\",\"txid\":4242,\"ts_ms\":1706684800123,\"snapshot\":true},\"before\":{\"id\":9223372036854775807,\"i\":-1},\"unknown\":[\"ch\"]}}";
const UPDATE_REFS: &str = r#"[{"at":223,"hash":"hash1","path":["tx"]}]"#;
const DELETE: &str = "{\"id\":9223372036854775807,\"tx\":\"héllo \\\"quoted\\\" \\\\ back\\nline\\ttab\\u0001\u{7f} 😀\",\"_meta\":{\"op\":\"d\",\"source\":{\"schema\":\"public\",\"table\":\"all \\\"types\\\"\",\"lsn\":\"1/6B3748A0\",\"txid\":4242,\"ts_ms\":1706684800123}}}";
const TRUNCATE: &str = r#"{"_meta":{"op":"t","source":{"schema":"public","table":"all \"types\"","lsn":"1/6B3748A0","txid":4242,"ts_ms":1706684800123},"truncate":{"cascade":true,"restartIdentity":false}}}"#;

#[test]
fn an_insert_of_every_built_in_type_is_byte_identical_to_its_golden_document() {
    let rel = relation(vec![0]);
    let mut tx = transaction();
    let mut row = write_row(&rel, &values(), Columns::All, None, None, &tx, None).unwrap();
    let m = meta(Op::Create, 16384, &rel, &mut tx, None, &row.unknown);
    let doc = document_of(&mut row, &m, &[]);
    assert_eq!(row.key, "[9223372036854775807]");
    assert!(doc.refs.is_empty());
    assert_eq!(doc.text, INSERT, "\nactual:\n{}\n", doc.text);
}

/// An update that changed the key (so `before` holds the old key), with a value left unchanged in
/// TOAST that nothing knows (named in `_meta.unknown`), one the old row had (REPLICA IDENTITY FULL)
/// and a large value stored apart, in the snapshot of a backfill.
#[test]
fn an_update_with_before_unknown_and_a_large_value_is_byte_identical_to_its_golden_document() {
    let rel = relation(vec![2, 0]);
    let mut tx = transaction();
    tx.snapshot = true;
    let mut old = values();
    old[2] = Value::Text(bytes::Bytes::from_static(b"-1"));
    let old_row = write_row(&rel, &old, Columns::Key, None, None, &tx, None).unwrap();
    let mut new = values();
    new[13] = Value::Text(bytes::Bytes::from(format!(
        "{}\u{e9}\"",
        "x".repeat(70_000)
    )));
    new[14] = Value::UnchangedToast;
    new[15] = Value::UnchangedToast;
    let mut full_old = values();
    full_old[15] = Value::UnchangedToast;
    let mut large = Values::default();
    let mut row = write_row(
        &rel,
        &new,
        Columns::All,
        Some((&full_old, &[])),
        None,
        &tx,
        Some(&mut large),
    )
    .unwrap();
    assert_eq!(old_row.key, "[-1,9223372036854775807]");
    assert_eq!(row.key, "[2147483647,9223372036854775807]");
    assert_eq!(large.0.len(), 1);
    let expected_large = format!("\"{}\u{e9}\\\"\"", "x".repeat(70_000));
    assert!(
        large.0[0] == expected_large.as_bytes(),
        "the large value's JSON"
    );
    let before = format!("{{{}}}", old_row.members);
    let (m, before_at) = meta_at(
        Op::Update,
        16384,
        &rel,
        &mut tx,
        Some(&before),
        &row.unknown,
    );
    assert!(before_at.is_some());
    let doc = document_of(&mut row, &m, &[]);
    assert_eq!(doc.text, UPDATE, "\nactual:\n{}\n", doc.text);
    let refs = doc.refs_text().unwrap_or_default();
    assert_eq!(refs, UPDATE_REFS, "\nactual:\n{refs}\n");
}

#[test]
fn a_delete_by_key_a_keyless_row_and_a_truncate_are_byte_identical_to_their_golden_documents() {
    let rel = relation(vec![0, 13]);
    let mut tx = transaction();
    let mut row = write_row(&rel, &values(), Columns::Key, None, None, &tx, None).unwrap();
    let tx_json = &row.members[row.members.find("\"tx\":").unwrap() + 5..];
    assert_eq!(row.key, format!("[9223372036854775807,{tx_json}]"));
    let m = meta(Op::Delete, 16384, &rel, &mut tx, None, &[]);
    let doc = document_of(&mut row, &m, &[]);
    assert_eq!(doc.text, DELETE, "\nactual:\n{}\n", doc.text);

    // The key does not change the members or `_meta`: a keyless row's document is the insert's.
    let keyless = relation(Vec::new());
    let mut row = write_row(&keyless, &values(), Columns::All, None, None, &tx, None).unwrap();
    assert_eq!(row.key, "[\"1/6B3748A0\",7]");
    let m = meta(Op::Create, 16385, &keyless, &mut tx, None, &row.unknown);
    let doc = document_of(&mut row, &m, &[]);
    assert_eq!(doc.text, INSERT, "\nactual:\n{}\n", doc.text);

    let mut m = meta(Op::Truncate, 16385, &keyless, &mut tx, None, &[]);
    m.pop();
    m.push_str(",\"truncate\":{\"cascade\":true,\"restartIdentity\":false}}");
    let doc = document("", &m);
    assert_eq!(doc, TRUNCATE, "\nactual:\n{doc}\n");
}

/// The capture stores a streamed insert or delete without `_meta.source`; made whole again it must be
/// its golden document, byte for byte, and a backfilled row is never cut.
#[test]
fn a_streamed_insert_and_delete_stored_without_their_source_are_made_whole_byte_identical() {
    let rel = relation(vec![0]);
    let mut tx = transaction();
    let mut row = write_row(&rel, &values(), Columns::All, None, None, &tx, None).unwrap();
    let mut doc = document_with_meta(&mut row, |out, unknown| {
        write_meta_cut(out, Op::Create, 16384, &rel, &mut tx, unknown)
    });
    let cut = doc.source.clone().expect("a streamed insert is cut");
    assert!(!doc.text.contains("\"source\""), "{}", doc.text);
    assert!(
        doc.text.ends_with(",\"_meta\":{\"op\":\"c\"}}"),
        "{}",
        doc.text
    );
    assert_eq!(
        (cut.lsn, cut.txid, cut.ts_ms),
        (tx.final_lsn, tx.xid, tx.ts_ms)
    );
    assert_eq!(cut.whole(&doc.text).unwrap(), INSERT);
    doc.make_whole().unwrap();
    assert_eq!((doc.text.as_str(), doc.source), (INSERT, None));

    let rel = relation(vec![0, 13]);
    let mut row = write_row(&rel, &values(), Columns::Key, None, None, &tx, None).unwrap();
    let doc = document_with_meta(&mut row, |out, _| {
        write_meta_cut(out, Op::Delete, 16384, &rel, &mut tx, &[])
    });
    let cut = doc.source.as_ref().expect("a streamed delete is cut");
    assert_eq!(cut.whole(&doc.text).unwrap(), DELETE);

    // Unknown columns follow the source: they stay in the text, after the cut.
    let unknown = vec!["ch".to_string(), "q\"uote".to_string()];
    let mut whole = String::new();
    write_meta(&mut whole, Op::Create, 16384, &rel, &mut tx, None, &unknown);
    let mut stored = String::new();
    let cut = write_meta_cut(&mut stored, Op::Create, 16384, &rel, &mut tx, &unknown).unwrap();
    assert_eq!(cut.whole(&stored).unwrap(), whole);

    // A cut that is not a place in the text (a damaged store) is refused, never a panic.
    assert_eq!(cut.whole("{\"é\":1}"), None);
    let mut short = Document::from("{}");
    short.source = Some(SourceCut { at: 99, ..cut });
    assert_eq!(short.make_whole(), None);

    // A backfill's row keeps its `"snapshot": true` source in its text.
    let mut snapshot = transaction();
    snapshot.snapshot = true;
    let mut row = write_row(&rel, &values(), Columns::All, None, None, &snapshot, None).unwrap();
    let doc = document_with_meta(&mut row, |out, unknown| {
        write_meta_cut(out, Op::Create, 16384, &rel, &mut snapshot, unknown)
    });
    assert_eq!(doc.source, None);
    assert!(doc.text.contains("\"snapshot\":true}"), "{}", doc.text);
}

/// Making a document whole moves the references after its source along, and only those.
#[test]
fn making_a_cut_document_whole_moves_the_references_after_the_cut() {
    let rel = relation(vec![0]);
    let tx = transaction();
    let text = r#"{"a":null,"_meta":{"op":"u","before":{"b":null}}}"#;
    let at_a = text.find("null").unwrap();
    let at = text.find(",\"before\"").unwrap();
    let at_b = text.rfind("null").unwrap();
    let reference = |at: usize, path: &str| ValueRef {
        at,
        hash: "h".into(),
        path: vec![path.into()],
    };
    let mut doc = Document {
        text: text.to_string(),
        refs: vec![reference(at_a, "a"), reference(at_b, "before")],
        source: Some(SourceCut {
            at,
            table: rel.source.clone(),
            lsn: tx.final_lsn,
            txid: tx.xid,
            ts_ms: tx.ts_ms,
        }),
    };
    doc.make_whole().unwrap();
    assert_eq!(&doc.text[doc.refs[0].at..doc.refs[0].at + 4], "null");
    assert_eq!(doc.refs[0].at, at_a);
    assert_eq!(&doc.text[doc.refs[1].at..doc.refs[1].at + 4], "null");
    assert!(doc.refs[1].at > at_b);
    assert!(
        doc.text
            .starts_with(r#"{"a":null,"_meta":{"op":"u","source":{"schema":"public""#),
        "{}",
        doc.text
    );
}

proptest::proptest! {
    /// The ASCII shortcut takes the same bytes as text, and refuses the same bytes, as the
    /// general UTF-8 check.
    #[test]
    fn values_are_text_exactly_when_they_are_utf8(
        bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..80),
        ascii in "[ -~]{0,80}",
        text in "\\PC{0,40}",
    ) {
        for case in [&bytes[..], ascii.as_bytes(), text.as_bytes()] {
            proptest::prop_assert_eq!(utf8(case), std::str::from_utf8(case).ok());
        }
    }
}

#[test]
fn a_value_that_is_not_utf8_is_refused_and_one_that_is_is_kept() {
    assert_eq!(utf8("café 東京".as_bytes()), Some("café 東京"));
    assert_eq!(utf8(b"plain"), Some("plain"));
    assert_eq!(utf8(b""), Some(""));
    for bad in [
        &b"\xff"[..],
        b"caf\xc3",
        b"ok \xc3\x28",
        b"\xed\xa0\x80 surrogate",
    ] {
        assert_eq!(utf8(bad), None, "{bad:?}");
    }
}
