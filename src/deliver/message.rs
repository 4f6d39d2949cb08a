//! Messages shaped as Sequin's code shapes them (`{record, changes, action, metadata}`), built from a
//! stored change document.
//!
//! Invariants:
//! - `record` is the document without `_meta`; unchanged TOAST values are as the store filled them
//!   (never a placeholder string).
//! - `changes` holds, for an update whose old row the WAL carried, the old value of every column that
//!   changed; `{}` for an update without an old row; `null` for insert, delete and read.
//! - `idempotency_key` is a function of the change's place in the source (commit LSN and index in
//!   its transaction; for a backfilled row, the snapshot's LSN, collection and ordinal), so it is the
//!   same on every redelivery and after any restart.
//! - A message's group is the collection and the row's key (or the chosen columns), so at most one
//!   message of a row is in flight; a row without a key is a group of its own.

use base64::Engine as _;
use serde_json::{json, Map, Value as Json};

use crate::deliver::consumer::Action;
use crate::error::{Error, Result};
use crate::source::pgoutput::Lsn;
use crate::store::CollectionSpec;

/// The source database, as `metadata.database` names it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Database {
    /// The profile's name.
    pub name: String,
    /// The database.
    pub database: String,
    /// The host.
    pub hostname: String,
}

/// A message ready to queue.
#[derive(Debug, Clone)]
pub struct Message {
    /// The message as delivered.
    pub body: Json,
    /// What it did.
    pub action: Action,
    /// Its delivery group.
    pub group: String,
}

impl Message {
    /// Its `metadata.idempotency_key`: what its ack id is made from ([`crate::deliver::ledger::ack_id_of`]).
    pub fn idempotency_key(&self) -> Option<&str> {
        self.body["metadata"]["idempotency_key"].as_str()
    }

    /// Its `metadata.commit_timestamp` in Unix ms, for its commit → delivered latency.
    pub fn commit_ms(&self) -> Option<i64> {
        self.body["metadata"]["commit_timestamp"]
            .as_str()
            .and_then(rfc3339_ms)
    }
}

/// Where a stored change sits in what wrote it.
#[derive(Debug, Clone, Copy)]
pub struct Place {
    /// Its position in the store's log.
    pub seq: u64,
    /// Its index in its source transaction, or in its snapshot for a backfilled row.
    pub index: u64,
}

/// The message of a stored change; `None` for what Sequin does not deliver (a truncate).
///
/// Takes the document by value: its columns become the message's `record` as they are, moved
/// rather than copied (the document is read once, and copying every value was most of the cost of
/// building a message).
pub fn build(
    doc: Json,
    place: Place,
    collection: &CollectionSpec,
    consumer: (&str, &str),
    database: &Database,
    group_by: &[String],
) -> Result<Option<Message>> {
    let Json::Object(mut record) = doc else {
        return Err(Error::internal(format!(
            "store: change {} of {} is not an object",
            place.seq, collection.name
        )));
    };
    let meta = record.remove("_meta").unwrap_or(Json::Null);
    let source = meta.get("source").unwrap_or(&Json::Null);
    let snapshot = source.get("snapshot").and_then(Json::as_bool) == Some(true);
    let action = match meta.get("op").and_then(Json::as_str) {
        Some("c") if snapshot => Action::Read,
        Some("c") => Action::Insert,
        Some("u") => Action::Update,
        Some("d") => Action::Delete,
        _ => return Ok(None),
    };
    let changes = match action {
        Action::Update => {
            let mut changed = Map::new();
            if let Some(Json::Object(before)) = meta.get("before") {
                for (name, old) in before {
                    if record.get(name).is_some_and(|new| new != old) {
                        changed.insert(name.clone(), old.clone());
                    }
                }
            }
            Json::Object(changed)
        }
        _ => Json::Null,
    };
    let lsn: Lsn = source
        .get("lsn")
        .and_then(Json::as_str)
        .unwrap_or("0/0")
        .parse()
        .unwrap_or(Lsn(0));
    let ts_ms = source.get("ts_ms").and_then(Json::as_i64).unwrap_or(0);
    let commit_timestamp = chrono::DateTime::from_timestamp_millis(ts_ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let identity = if snapshot {
        format!("{}:{}:{}", lsn.0, collection.name, place.index)
    } else {
        format!("{}:{}", lsn.0, place.index)
    };
    let idempotency_key = base64::engine::general_purpose::STANDARD.encode(identity);
    let record_pks: Vec<String> = collection
        .key
        .iter()
        .map(|k| text_of(record.get(k).unwrap_or(&Json::Null)))
        .collect();
    let group = if !group_by.is_empty() {
        let values: Vec<&Json> = group_by
            .iter()
            .map(|c| record.get(c).unwrap_or(&Json::Null))
            .collect();
        format!("{}\n{}", collection.name, json!(values))
    } else if collection.key.is_empty() {
        format!("{}\n#{}", collection.name, idempotency_key)
    } else {
        format!("{}\n{}", collection.name, json!(record_pks))
    };
    let body = json!({
        "record": Json::Object(record),
        "changes": changes,
        "action": action.as_str(),
        "metadata": {
            "table_schema": collection.schema,
            "table_name": collection.table,
            "commit_timestamp": commit_timestamp,
            "commit_lsn": lsn.0,
            "commit_idx": place.index,
            "database_name": database.database,
            "idempotency_key": idempotency_key,
            "record_pks": record_pks,
            "transaction_annotations": null,
            "enrichment": null,
            "consumer": {"id": consumer.0, "name": consumer.1, "annotations": {}},
            "database": {
                "name": database.name,
                "database": database.database,
                "hostname": database.hostname,
                "annotations": {}
            }
        }
    });
    Ok(Some(Message {
        body,
        action,
        group,
    }))
}

/// A key value as Sequin's `record_pks` gives it: text as itself, anything else as its JSON.
fn text_of(value: &Json) -> String {
    match value {
        Json::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A message's `metadata.commit_timestamp` (JSON text, as queued) in Unix ms, for its commit →
/// delivered latency.
pub(crate) fn commit_ms(body: &str) -> Option<i64> {
    #[derive(serde::Deserialize)]
    struct Meta<'a> {
        #[serde(borrow)]
        commit_timestamp: &'a str,
    }
    #[derive(serde::Deserialize)]
    struct Body<'a> {
        #[serde(borrow)]
        metadata: Meta<'a>,
    }
    let body: Body = serde_json::from_str(body).ok()?;
    rfc3339_ms(body.metadata.commit_timestamp)
}

fn rfc3339_ms(timestamp: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(timestamp)
        .ok()
        .map(|t| t.timestamp_millis())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn orders() -> CollectionSpec {
        CollectionSpec {
            name: "public/orders".into(),
            schema: "public".into(),
            table: "orders".into(),
            key: vec!["id".into()],
            columns: json!([]),
        }
    }

    fn db() -> Database {
        Database {
            name: "prod".into(),
            database: "app".into(),
            hostname: "db.example.com".into(),
        }
    }

    #[test]
    fn an_update_carries_the_old_values_of_changed_columns() {
        let doc = json!({"id": 1, "status": "shipped", "total": "10.00", "_meta": {"op": "u",
            "source": {"schema": "public", "table": "orders", "lsn": "0/16B3748", "txid": 7, "ts_ms": 1767225600123i64},
            "before": {"id": 1, "status": "new", "total": "10.00"}}});
        let m = build(
            doc.clone(),
            Place { seq: 9, index: 2 },
            &orders(),
            ("c-id", "c"),
            &db(),
            &[],
        )
        .unwrap()
        .unwrap();
        assert_eq!(m.action, Action::Update);
        assert_eq!(
            m.body["record"],
            json!({"id": 1, "status": "shipped", "total": "10.00"})
        );
        assert_eq!(m.body["changes"], json!({"status": "new"}));
        let meta = &m.body["metadata"];
        assert_eq!(meta["commit_lsn"], json!(0x16B3748u64));
        assert_eq!(meta["commit_idx"], json!(2));
        assert_eq!(meta["commit_timestamp"], json!("2026-01-01T00:00:00.123Z"));
        assert_eq!(meta["record_pks"], json!(["1"]));
        assert_eq!(meta["consumer"]["name"], json!("c"));
        assert_eq!(meta["database"]["hostname"], json!("db.example.com"));
        assert_eq!(m.group, "public/orders\n[\"1\"]");
        // The same change gives the same key; another index another.
        let again = build(
            doc.clone(),
            Place { seq: 99, index: 2 },
            &orders(),
            ("c-id", "c"),
            &db(),
            &[],
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            again.body["metadata"]["idempotency_key"],
            meta["idempotency_key"]
        );
        let other = build(
            doc.clone(),
            Place { seq: 9, index: 3 },
            &orders(),
            ("c-id", "c"),
            &db(),
            &[],
        )
        .unwrap()
        .unwrap();
        assert_ne!(
            other.body["metadata"]["idempotency_key"],
            meta["idempotency_key"]
        );
    }

    #[test]
    fn backfilled_rows_are_reads_and_truncates_are_not_messages() {
        let doc = json!({"id": 2, "_meta": {"op": "c", "source": {"schema": "public", "table": "orders",
            "lsn": "0/10", "txid": 0, "ts_ms": 0, "snapshot": true}}});
        let m = build(
            doc.clone(),
            Place { seq: 1, index: 0 },
            &orders(),
            ("i", "n"),
            &db(),
            &[],
        )
        .unwrap()
        .unwrap();
        assert_eq!(m.action, Action::Read);
        assert_eq!(m.body["changes"], Json::Null);
        let t = json!({"_meta": {"op": "t", "source": {"lsn": "0/10"}}});
        assert!(build(
            t,
            Place { seq: 2, index: 0 },
            &orders(),
            ("i", "n"),
            &db(),
            &[]
        )
        .unwrap()
        .is_none());
        let grouped = build(
            doc,
            Place { seq: 1, index: 0 },
            &orders(),
            ("i", "n"),
            &db(),
            &["id".into()],
        )
        .unwrap()
        .unwrap();
        assert_eq!(grouped.group, "public/orders\n[2]");
    }
}
