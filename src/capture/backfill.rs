//! The initial backfill: the existing rows of the selected tables, read in the snapshot that the
//! capture's slot exported when it was created, so streaming from the slot's consistent point continues
//! exactly where the snapshot ends: no change is lost or applied twice.
//!
//! Rows are read with `COPY … TO STDOUT` (text format: the same text output pgoutput sends, so a row
//! gives the same document either way). A keyed table's rows go, as PostgreSQL sent them, into a
//! snapshot file sorted by key ([`crate::store::snapshot`]) that the store records in the open batch; only
//! the key is parsed per row, and documents are built when read. A table without a key is stored
//! document by document in the log, keyed by position. Memory stays bounded: rows stream to the file
//! (or, when they arrive out of key order, to sorted runs of bounded size). A row holding a large value
//! ([`crate::document::large_value`]) is the one that COPY delivers whole: its large fields are turned into JSON
//! and stored a piece at a time, straight from the line, and the row is kept with references to them,
//! so the value is held once, as it arrived.
//!
//! Invariants:
//! - Every table is read in the one exported snapshot, inside one REPEATABLE READ transaction.
//! - The backfill's documents and the checkpoint (the consistent point) are committed together by the
//!   caller; an interrupted backfill leaves nothing behind, and the next run starts it over with a new
//!   slot and snapshot (the slot it created is recorded in the store so it can be replaced).

use std::time::Instant;

use futures_util::StreamExt;
use serde::Serialize;

use crate::binding::Binding;
use crate::document::copy_text::{
    parse_copy_line, parse_stored_line, refs_row, write_copy_field_json, REF_MARK,
};
use crate::document::large_value::{ValueRef, LARGE_VALUE_BYTES};
use crate::document::source_meta::SourceTable;
use crate::document::{
    document_of, meta, now_postgres_micros, postgres_time_to_unix_ms, write_row, ColumnInfo,
    Columns, Relation, Transaction,
};
use crate::error::{Error, Result};
use crate::source::connection::{connect, ConnectionSpec};
use crate::source::discovery::{discover, kind_of, DiscoveredTable};
use crate::source::pgoutput::{Lsn, Value};
use crate::source::sql;
use crate::store::snapshot::{SnapshotSource, SnapshotWriter};
use crate::store::{Op, Store};

/// How far a table's backfill is.
#[derive(Debug, Clone, PartialEq, Serialize, ts_rs::TS)]
#[serde(rename_all = "camelCase")]
pub struct BackfillProgress {
    /// The collection, `schema/table`.
    pub collection: String,
    /// Rows read so far.
    pub rows: u64,
    /// The planner's estimate of the table's rows, when it has one.
    pub estimated_rows: Option<i64>,
    /// Rows per second so far.
    pub rows_per_second: f64,
    /// Seconds left at this rate, when the estimate allows saying.
    pub seconds_left: Option<f64>,
    /// Whether the table is done.
    pub done: bool,
}

/// Parses a `schema.table` name as `--tables` gives it (a quoted part may contain dots).
pub fn parse_table_name(name: &str) -> Result<(String, String)> {
    let mut parts = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    let mut chars = name.trim().chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                chars.next();
                current.push('"');
            }
            '"' => quoted = !quoted,
            '.' if !quoted => parts.push(std::mem::take(&mut current)),
            c => current.push(c),
        }
    }
    parts.push(current);
    match parts.as_slice() {
        [schema, table] if !schema.is_empty() && !table.is_empty() && !quoted => {
            Ok((schema.clone(), table.clone()))
        }
        [table] if !table.is_empty() && !quoted => Ok(("public".into(), table.clone())),
        _ => Err(Error::invalid_input(
            "--tables",
            format!(
                "'{name}' is not schema.table (quote names that contain dots: \"my.schema\".t)"
            ),
        )),
    }
}

/// Reads `tables` in `snapshot` into the store's open batch. Returns the rows written.
///
/// Each table comes with whether it was read before (a re-backfill). Such a table missing from the
/// snapshot was dropped after it was bound and before the snapshot: it has no rows to read, so it is
/// left out of the staging store, and bringing the backfill in empties its collection. A table never
/// read before that is missing is an error naming it.
pub async fn run(
    spec: &ConnectionSpec,
    store: &mut Store,
    tables: &[(Binding, bool)],
    snapshot: &str,
    consistent_point: Lsn,
    progress: &mut (dyn FnMut(&BackfillProgress) + Send),
) -> Result<u64> {
    let mut spec = spec.clone();
    spec.options = Some(format!(
        "{} {}",
        spec.options.clone().unwrap_or_default(),
        crate::document::value::SESSION_OPTIONS
    ));
    let client = connect(&spec).await?;
    let target = spec.target();
    client
        .batch_execute(&format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT {};",
            sql::literal(snapshot)
        ))
        .await
        .map_err(|e| Error::from_postgres(&e, &target))?;
    let discovered = discover(&client, None).await?;
    store.remove_unrecorded_snapshots()?;
    store.begin()?;
    let mut total = 0;
    for (relid, (binding, read_before)) in tables.iter().enumerate() {
        let found = match crate::source::discovery::bound_table(&discovered, binding, "--tables") {
            Ok(found) => found,
            Err(_) if *read_before => {
                tracing::info!(table = %binding.qualified(), "dropped before its snapshot; nothing to read");
                continue;
            }
            Err(e) => return Err(e),
        };
        total += copy_table(
            &client,
            store,
            found,
            &binding.collection,
            relid as u32,
            consistent_point,
            progress,
        )
        .await?;
    }
    client
        .batch_execute("COMMIT")
        .await
        .map_err(|e| Error::from_postgres(&e, &target))?;
    Ok(total)
}

async fn copy_table(
    client: &tokio_postgres::Client,
    store: &mut Store,
    found: &DiscoveredTable,
    collection: &str,
    relid: u32,
    consistent_point: Lsn,
    progress: &mut (dyn FnMut(&BackfillProgress) + Send),
) -> Result<u64> {
    let mut columns = Vec::with_capacity(found.columns.len());
    for column in &found.columns {
        columns.push(ColumnInfo::new(
            column.name.clone(),
            column.type_oid,
            kind_of(client, column.type_oid).await?,
        ));
    }
    let key = found
        .key
        .iter()
        .filter_map(|k| found.columns.iter().position(|c| &c.name == k))
        .collect();
    let rel = Relation {
        collection: collection.to_string(),
        source: std::sync::Arc::new(SourceTable {
            schema: found.schema.clone(),
            table: found.table.clone(),
        }),
        columns,
        key,
    };
    store.put_collection(&rel.spec())?;
    let now = now_postgres_micros();
    let mut tx = Transaction {
        final_lsn: consistent_point,
        xid: 0,
        ts_ms: postgres_time_to_unix_ms(now),
        commit_time_micros: now,
        skip: false,
        index: 0,
        snapshot: true,
        sources: Vec::new(),
    };
    let list = found
        .columns
        .iter()
        .map(|c| sql::ident(&c.name))
        .collect::<Vec<_>>()
        .join(", ");
    let qualified = format!("{}.{}", sql::ident(&found.schema), sql::ident(&found.table));
    // A partitioned table cannot be COPY's source itself; a query over it reads every partition.
    let copy = if found.partitioned {
        format!("COPY (SELECT {list} FROM {qualified}) TO STDOUT")
    } else {
        format!("COPY {qualified} ({list}) TO STDOUT")
    };
    let stream = client
        .copy_out(copy.as_str())
        .await
        .map_err(|e| Error::from_postgres(&e, &qualified))?;
    futures_util::pin_mut!(stream);
    let started = Instant::now();
    let mut pending: Vec<u8> = Vec::new();
    let mut values: Vec<Value> = Vec::with_capacity(found.columns.len());
    let report = |rows: u64, done: bool, progress: &mut (dyn FnMut(&BackfillProgress) + Send)| {
        let rate = rows as f64 / started.elapsed().as_secs_f64().max(1e-3);
        let seconds_left = found
            .estimated_rows
            .filter(|_| rate > 0.0 && !done)
            .map(|est| (est as f64 - rows as f64).max(0.0) / rate);
        progress(&BackfillProgress {
            collection: collection.to_string(),
            rows,
            estimated_rows: found.estimated_rows,
            rows_per_second: rate,
            seconds_left,
            done,
        });
    };
    report(0, false, progress);
    let mut snapshot = if rel.key.is_empty() {
        None
    } else {
        Some(SnapshotWriter::create(&store.snapshot_dir(), store.key())?)
    };
    let mut key = KeyReader::new(&rel);
    let meta = meta(Op::Create, relid, &rel, &mut tx, None, &[]);
    let mut refs: Vec<ValueRef> = Vec::new();
    let mut row = |line: &[u8], tx: &mut Transaction| -> Result<()> {
        // A large value is stored once, apart, and the line keeps its reference: the row is never
        // held whole again, and a later update that leaves the value unchanged refers to it.
        let reduced = if line.len() >= LARGE_VALUE_BYTES {
            store_large_fields(store, &rel, line)?
        } else {
            None
        };
        let line = reduced.as_deref().unwrap_or(line);
        // Rows are stored as PostgreSQL sent them and their documents built on read, so the first
        // rows are built now: a column the mapping cannot read fails the backfill at once.
        let check = tx.index < CHECKED_ROWS || snapshot.is_none();
        let built = if check {
            parse_stored_line(line, &rel, &mut values, &mut refs)
                .map_err(|e| Error::internal(format!("{qualified}: {e}")))?;
            Some(write_row(
                &rel,
                &values,
                Columns::All,
                None,
                refs_row(&refs).as_ref(),
                tx,
                None,
            )?)
        } else {
            None
        };
        match &mut snapshot {
            Some(writer) => {
                std::str::from_utf8(line).map_err(|_| {
                    Error::internal(format!("{qualified}: a row is not UTF-8 text"))
                })?;
                let skey = key
                    .sort_key(line)
                    .map_err(|e| Error::internal(format!("{qualified}: {e}")))?;
                if let Some(built) = &built {
                    if crate::store::rowkey::sort_key(&built.key)? != skey {
                        return Err(Error::internal(format!(
                            "{qualified}: the key read from COPY differs from the document's"
                        )));
                    }
                }
                writer.push(skey, line)?;
            }
            None => {
                let mut built = built.expect("built for tables stored in the log");
                let doc = document_of(&mut built, &meta, &[]);
                store.apply(
                    &rel.collection,
                    consistent_point,
                    Op::Create,
                    &built.key,
                    None,
                    doc,
                )?;
            }
        }
        tx.index += 1;
        if tx.index.is_multiple_of(100_000) {
            report(tx.index, false, progress);
        }
        Ok(())
    };
    let mut chunks = 0u32;
    while let Some(chunk) = stream.next().await {
        // COPY's stream is usually ready: without this the loop would never yield, hogging its worker
        // thread and ignoring cancellation until the whole table is read.
        chunks = chunks.wrapping_add(1);
        if chunks.is_multiple_of(64) {
            tokio::task::consume_budget().await;
        }
        let chunk = chunk.map_err(|e| Error::from_postgres(&e, &qualified))?;
        // PostgreSQL sends a row per message; a row split across messages is joined in `pending`.
        let mut rest: &[u8] = &chunk;
        if !pending.is_empty() {
            match memchr::memchr(b'\n', rest) {
                Some(end) => {
                    pending.extend_from_slice(&rest[..end]);
                    row(&pending, &mut tx)?;
                    pending.clear();
                    rest = &rest[end + 1..];
                }
                None => {
                    pending.extend_from_slice(rest);
                    continue;
                }
            }
        }
        while let Some(end) = memchr::memchr(b'\n', rest) {
            row(&rest[..end], &mut tx)?;
            rest = &rest[end + 1..];
        }
        pending.extend_from_slice(rest);
    }
    if !pending.is_empty() {
        return Err(Error::internal(format!(
            "{qualified}: COPY ended in the middle of a row"
        )));
    }
    if let Some(writer) = snapshot {
        let (file, rows) = writer.finish()?;
        store.add_snapshot(
            &rel.collection,
            &file,
            rows,
            &SnapshotSource::of(&rel, consistent_point, tx.ts_ms),
        )?;
    }
    report(tx.index, true, progress);
    Ok(tx.index)
}

/// Rows of a keyed table whose documents are built while copying, to check the column mapping.
const CHECKED_ROWS: u64 = 1000;

/// Reads a row's sort key straight from its COPY line: the key columns' fields, as JSON, encoded as
/// [`crate::store::rowkey`] does, without building the document.
struct KeyReader {
    /// (field position, kind) of the key columns, in key order.
    key: Vec<(usize, crate::document::value::Kind)>,
    /// The last field a key needs: a line is split no further.
    last: usize,
    fields: Vec<(usize, usize)>,
    json: String,
    value: Vec<Value>,
    out: Vec<u8>,
}

impl KeyReader {
    fn new(rel: &Relation) -> KeyReader {
        KeyReader {
            key: rel
                .key
                .iter()
                .map(|&i| (i, rel.columns[i].kind.clone()))
                .collect(),
            last: rel.key.iter().copied().max().unwrap_or(0),
            fields: Vec::new(),
            json: String::new(),
            value: Vec::new(),
            out: Vec::new(),
        }
    }

    fn sort_key(&mut self, line: &[u8]) -> std::result::Result<&[u8], String> {
        self.fields.clear();
        let mut start = 0;
        for end in memchr::memchr_iter(b'\t', line).chain(std::iter::once(line.len())) {
            self.fields.push((start, end));
            if self.fields.len() > self.last {
                break;
            }
            start = end + 1;
        }
        self.out.clear();
        for (i, kind) in &self.key {
            let &(s, e) = self
                .fields
                .get(*i)
                .ok_or("a row has fewer fields than the table has columns")?;
            let field = &line[s..e];
            // The common key, an integer: its sort key straight from the digits PostgreSQL printed.
            if *kind == crate::document::value::Kind::Integer {
                if let Some(n) = std::str::from_utf8(field)
                    .ok()
                    .and_then(crate::store::rowkey::integer)
                {
                    crate::store::rowkey::push_integer(n, &mut self.out);
                    continue;
                }
            }
            self.json.clear();
            if field == b"\\N" {
                self.json.push_str("null");
            } else if !field.contains(&b'\\') {
                let text = std::str::from_utf8(field).map_err(|_| "a key is not UTF-8 text")?;
                kind.write_json(text, &mut self.json)
                    .map_err(|e| e.to_string())?;
            } else {
                parse_copy_line(field, &mut self.value)?;
                let Some(Value::Text(bytes)) = self.value.first() else {
                    return Err("a key field could not be read".into());
                };
                let text = std::str::from_utf8(bytes).map_err(|_| "a key is not UTF-8 text")?;
                kind.write_json(text, &mut self.json)
                    .map_err(|e| e.to_string())?;
            }
            crate::store::rowkey::push_element(&self.json, &mut self.out);
        }
        Ok(&self.out)
    }
}

/// A line as a snapshot file keeps it: every field of a non-key column that is at least
/// [`LARGE_VALUE_BYTES`] long is stored in `store` once ([`Store::put_large_value`]) and replaced by
/// its reference. `None` when no field is that long (the line is kept as it is).
fn store_large_fields(store: &mut Store, rel: &Relation, line: &[u8]) -> Result<Option<Vec<u8>>> {
    let mut out: Option<Vec<u8>> = None;
    let mut start = 0;
    for (i, end) in memchr::memchr_iter(b'\t', line)
        .chain(std::iter::once(line.len()))
        .enumerate()
    {
        let field = &line[start..end];
        let large = field.len() >= LARGE_VALUE_BYTES && !rel.key.contains(&i) && field != b"\\N";
        match (large, rel.columns.get(i)) {
            (true, Some(column)) => {
                let hash = store
                    .put_large_value(&|sink| write_copy_field_json(&column.kind, field, sink))
                    .map_err(|e| {
                        Error::new(
                            e.kind(),
                            format!("{} column {}: {}", rel.collection, column.name, e.message()),
                        )
                    })?;
                let out = out.get_or_insert_with(|| line[..start].to_vec());
                out.extend_from_slice(REF_MARK);
                out.extend_from_slice(hash.as_bytes());
            }
            _ => {
                if let Some(out) = &mut out {
                    out.extend_from_slice(field);
                }
            }
        }
        if end < line.len() {
            if let Some(out) = &mut out {
                out.push(b'\t');
            }
        }
        start = end + 1;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integer_keys_read_from_copy_match_the_key_mapping() {
        for text in [
            "0",
            "7",
            "-7",
            "9223372036854775807",
            "-9223372036854775808",
            "1000",
        ] {
            let mut json = String::new();
            crate::document::value::Kind::Integer
                .write_json(text, &mut json)
                .unwrap();
            let mut expected = Vec::new();
            crate::store::rowkey::push_element(&json, &mut expected);
            let n = crate::store::rowkey::integer(text).unwrap();
            let mut got = Vec::new();
            crate::store::rowkey::push_integer(n, &mut got);
            assert_eq!(got, expected, "{text}");
        }
        for other in [
            "",
            "-",
            "-0",
            "01",
            "9223372036854775808",
            "1e3",
            "+1",
            "１",
        ] {
            assert_eq!(crate::store::rowkey::integer(other), None, "{other}");
        }
    }

    #[test]
    fn table_names_take_schema_quotes_and_dots() {
        assert_eq!(
            parse_table_name("public.t").unwrap(),
            ("public".into(), "t".into())
        );
        assert_eq!(
            parse_table_name("t").unwrap(),
            ("public".into(), "t".into())
        );
        assert_eq!(
            parse_table_name(r#""my.schema"."Ta""ble""#).unwrap(),
            ("my.schema".into(), "Ta\"ble".into())
        );
        for bad in ["a.b.c", "", ".t", "\"open.t"] {
            assert!(
                parse_table_name(bad)
                    .unwrap_err()
                    .message()
                    .starts_with("--tables:"),
                "{bad}"
            );
        }
    }
}
