//! Discovery: the tables a role can read, each as a collection spec with a key and a JSON Schema.
//!
//! Rules follow Estuary Flow's PostgreSQL capture, which users know:
//! - every ordinary or partitioned table the role may SELECT, outside the system schemas; a partitioned
//!   table is one unit (its partitions are not listed separately);
//! - the key is the primary key; else the first unique index (by name) over non-null columns without
//!   expressions or predicates; else none (captured keyed by change position);
//! - the collection name defaults to `schema/table`, made unique among the tables listed
//!   ([`crate::binding::unique_collection_names`]: `"order items"` beside `order_items` gets a suffix);
//! - the JSON Schema (draft 2020-12) follows the capture's value mapping ([`crate::document::value`]), each
//!   property describes its source type ("(source type: non-nullable int4)"), and only key columns are
//!   `required`.
//!
//! Invariant: discovery only reads the catalog; names are passed as parameters, never pasted.

use serde::Serialize;
use serde_json::{json, Map, Value as Json};
use tokio_postgres::Client;

use crate::document::value::{builtin, Kind};
use crate::error::{Error, Result};

/// A discovered column.
#[derive(Debug, Clone, PartialEq, Serialize, ts_rs::TS)]
#[serde(rename_all = "camelCase")]
pub struct DiscoveredColumn {
    /// Name.
    pub name: String,
    /// Type OID.
    pub type_oid: u32,
    /// `format_type()`, e.g. `character varying(10)`.
    pub type_name: String,
    /// Whether NULL is allowed.
    pub nullable: bool,
}

/// Where a table's key comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ts_rs::TS)]
#[serde(rename_all = "camelCase")]
pub enum KeySource {
    /// The primary key.
    PrimaryKey,
    /// A unique index over non-null columns.
    UniqueIndex,
    /// No usable key: changes are keyed by their position in the stream.
    None,
}

/// A table as a collection.
#[derive(Debug, Clone, PartialEq, Serialize, ts_rs::TS)]
#[serde(rename_all = "camelCase")]
pub struct DiscoveredTable {
    /// The table's identity (`pg_class.oid`), which a rename keeps.
    pub oid: u32,
    /// Schema.
    pub schema: String,
    /// Table.
    pub table: String,
    /// Whether it is a partitioned table (captured as one unit).
    pub partitioned: bool,
    /// Columns in order.
    pub columns: Vec<DiscoveredColumn>,
    /// Key columns in key order.
    pub key: Vec<String>,
    /// Where the key comes from.
    pub key_source: KeySource,
    /// The unique index used as key, when it is one.
    pub key_index: Option<String>,
    /// `default`, `nothing`, `full` or `index`.
    pub replica_identity: String,
    /// Estimated rows (`reltuples`), when the table was analyzed.
    pub estimated_rows: Option<i64>,
    /// Total size on disk in bytes, with indexes and TOAST.
    pub size_bytes: i64,
    /// Whether the publication given to discovery publishes it.
    pub in_publication: bool,
    /// The collection: default name, key pointers, JSON Schema.
    pub collection: CollectionDraft,
}

/// A collection as discovery proposes it.
#[derive(Debug, Clone, PartialEq, Serialize, ts_rs::TS)]
#[serde(rename_all = "camelCase")]
pub struct CollectionDraft {
    /// `schema/table`.
    pub name: String,
    /// JSON pointers of the key, e.g. `["/id"]`; empty when the table has no usable key.
    pub key: Vec<String>,
    /// JSON Schema (draft 2020-12) of the documents.
    #[ts(type = "unknown")]
    pub schema: Json,
}

const TABLES_SQL: &str = "
SELECT c.oid, n.nspname::text, c.relname::text, c.relkind = 'p',
       CASE c.relreplident WHEN 'd' THEN 'default' WHEN 'n' THEN 'nothing' WHEN 'f' THEN 'full' ELSE 'index' END,
       CASE WHEN c.reltuples < 0 THEN NULL ELSE c.reltuples::int8 END,
       pg_total_relation_size(c.oid),
       EXISTS (SELECT 1 FROM pg_publication_tables pt
                WHERE pt.pubname = $1 AND pt.schemaname = n.nspname AND pt.tablename = c.relname)
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition
   AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
   AND n.nspname NOT LIKE 'pg_temp_%' AND n.nspname NOT LIKE 'pg_toast_temp_%'
   AND has_table_privilege(c.oid, 'SELECT')
 ORDER BY n.nspname, c.relname";

const COLUMNS_SQL: &str = "
SELECT a.attrelid, a.attname::text, a.atttypid, format_type(a.atttypid, a.atttypmod), NOT a.attnotnull
  FROM pg_attribute a
 WHERE a.attrelid = ANY($1) AND a.attnum > 0 AND NOT a.attisdropped
 ORDER BY a.attrelid, a.attnum";

/// Primary keys first, then unique indexes over non-null plain columns, each by name; key columns in
/// index order.
const KEYS_SQL: &str = "
SELECT i.indrelid, i.indisprimary, ic.relname::text,
       array_agg(a.attname::text ORDER BY k.ord) AS columns,
       bool_and(a.attnotnull) AS all_not_null
  FROM pg_index i
  JOIN pg_class ic ON ic.oid = i.indexrelid
  JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) ON true
  JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
 WHERE i.indrelid = ANY($1) AND i.indisunique AND i.indexprs IS NULL AND i.indpred IS NULL
   AND k.ord <= i.indnkeyatts
 GROUP BY i.indrelid, i.indisprimary, ic.relname
 ORDER BY i.indrelid, i.indisprimary DESC, ic.relname";

/// A table's key columns, as discovery picks them (the primary key, else the first unique index over
/// non-null columns); empty when it has neither.
pub async fn key_of(client: &Client, relid: u32) -> Result<Vec<String>> {
    let rows = client
        .query(KEYS_SQL, &[&vec![relid]])
        .await
        .map_err(|e| Error::from_postgres(&e, "discovery"))?;
    Ok(rows
        .iter()
        .find(|r| r.get::<_, bool>(1) || r.get::<_, Option<bool>>(4).unwrap_or(false))
        .map(|r| r.get::<_, Vec<String>>(3))
        .unwrap_or_default())
}

/// Discovers every readable table; `publication` (if given) marks which it publishes.
pub async fn discover(client: &Client, publication: Option<&str>) -> Result<Vec<DiscoveredTable>> {
    let target = "discovery";
    let publication = publication.unwrap_or("");
    let tables = client
        .query(TABLES_SQL, &[&publication])
        .await
        .map_err(|e| Error::from_postgres(&e, target))?;
    let oids: Vec<u32> = tables.iter().map(|r| r.get(0)).collect();
    let columns = client
        .query(COLUMNS_SQL, &[&oids])
        .await
        .map_err(|e| Error::from_postgres(&e, target))?;
    let keys = client
        .query(KEYS_SQL, &[&oids])
        .await
        .map_err(|e| Error::from_postgres(&e, target))?;

    let mut discovered = Vec::with_capacity(tables.len());
    for row in tables {
        let oid: u32 = row.get(0);
        let schema: String = row.get(1);
        let table: String = row.get(2);
        let table_columns: Vec<DiscoveredColumn> = columns
            .iter()
            .filter(|c| c.get::<_, u32>(0) == oid)
            .map(|c| DiscoveredColumn {
                name: c.get(1),
                type_oid: c.get(2),
                type_name: c.get(3),
                nullable: c.get(4),
            })
            .collect();
        let candidate = keys
            .iter()
            .filter(|k| k.get::<_, u32>(0) == oid)
            .find(|k| k.get::<_, bool>(1) || k.get::<_, Option<bool>>(4).unwrap_or(false));
        let (key, key_source, key_index) = match candidate {
            Some(k) if k.get::<_, bool>(1) => {
                (k.get::<_, Vec<String>>(3), KeySource::PrimaryKey, None)
            }
            Some(k) => (
                k.get::<_, Vec<String>>(3),
                KeySource::UniqueIndex,
                Some(k.get::<_, String>(2)),
            ),
            None => (Vec::new(), KeySource::None, None),
        };
        let mut kinds = Vec::with_capacity(table_columns.len());
        for column in &table_columns {
            kinds.push(kind_of(client, column.type_oid).await?);
        }
        let schema_json = json_schema(&schema, &table, &table_columns, &kinds, &key);
        let collection = CollectionDraft {
            name: crate::binding::default_collection_name(&schema, &table),
            key: key.iter().map(|k| pointer(k)).collect(),
            schema: schema_json,
        };
        discovered.push(DiscoveredTable {
            oid,
            schema,
            table,
            partitioned: row.get(3),
            columns: table_columns,
            key,
            key_source,
            key_index,
            replica_identity: row.get(4),
            estimated_rows: row.get(5),
            size_bytes: row.get(6),
            in_publication: row.get(7),
            collection,
        });
    }
    let names: Vec<(String, String)> = discovered
        .iter()
        .map(|t| (t.schema.clone(), t.table.clone()))
        .collect();
    // Should even the suffixed names collide (a table named like another's suffixed name), the plain
    // names stay and saving such a definition is refused, naming both tables.
    if let Ok(unique) = crate::binding::unique_collection_names(&names, &Default::default()) {
        for (table, name) in discovered.iter_mut().zip(unique) {
            table.collection.name = name;
        }
    }
    Ok(discovered)
}

/// Every table discovery lists (OID, schema, name), without their columns: the set default
/// collection names are made unique in.
pub async fn readable_tables(client: &Client) -> Result<Vec<(u32, String, String)>> {
    let rows = client
        .query(TABLES_SQL, &[&""])
        .await
        .map_err(|e| Error::from_postgres(&e, "discovery"))?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect())
}

/// A type's value mapping, resolving domains, enums and arrays through the catalog.
pub async fn kind_of(client: &Client, oid: u32) -> Result<Kind> {
    let mut current = oid;
    let mut wrappers: Vec<char> = Vec::new();
    let kind = loop {
        if let Some(kind) = builtin(current) {
            break kind;
        }
        if wrappers.len() > 16 {
            break Kind::Text;
        }
        let row = client
            .query_opt("SELECT typtype::text, typbasetype, typelem, typdelim::text, typcategory::text FROM pg_type WHERE oid = $1", &[&current])
            .await
            .map_err(|e| Error::from_postgres(&e, "reading pg_type"))?;
        let Some(row) = row else { break Kind::Text };
        let (typtype, base, elem, delim, category): (String, u32, u32, String, String) =
            (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
        if typtype == "d" {
            current = base;
        } else if category == "A" && elem != 0 {
            wrappers.push(delim.chars().next().unwrap_or(','));
            current = elem;
        } else {
            break Kind::Text;
        }
    };
    Ok(wrappers
        .into_iter()
        .rev()
        .fold(kind, |element, delimiter| Kind::Array {
            element: Box::new(element),
            delimiter,
        }))
}

/// The JSON pointer to top-level property `column` (as a collection key names it).
pub fn pointer(column: &str) -> String {
    format!("/{}", pointer_escape(column))
}

/// RFC 6901 escaping of one pointer token.
fn pointer_escape(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

/// `schema` with `null` allowed as well (a schema without a `type`, such as JSON's, allows it
/// already).
pub fn or_null(mut schema: Json) -> Json {
    match schema.get("type").cloned() {
        Some(Json::String(t)) => schema["type"] = json!([t, "null"]),
        Some(Json::Array(mut types)) => {
            types.push(json!("null"));
            schema["type"] = Json::Array(types);
        }
        _ => {}
    }
    schema
}

/// The JSON Schema of one value of `kind` (without nullability).
pub fn value_schema(kind: &Kind) -> Json {
    match kind {
        Kind::Bool => json!({"type": "boolean"}),
        Kind::Integer => json!({"type": "integer"}),
        // Finite values are numbers; NaN and ±Infinity are strings.
        Kind::Float => json!({"type": ["number", "string"]}),
        Kind::Numeric => json!({"type": "string", "format": "number"}),
        Kind::Text => json!({"type": "string"}),
        Kind::Json => json!({}),
        Kind::Bytea => json!({"type": "string", "contentEncoding": "base64"}),
        Kind::Uuid => json!({"type": "string", "format": "uuid"}),
        Kind::Date => json!({"type": "string", "format": "date"}),
        Kind::Time | Kind::TimeTz => json!({"type": "string", "format": "time"}),
        Kind::Timestamp | Kind::TimestampTz => json!({"type": "string", "format": "date-time"}),
        Kind::Interval => json!({"type": "string", "format": "duration"}),
        // Elements may be NULL, and multi-dimensional arrays nest.
        Kind::Array { element, .. } => {
            json!({"type": "array", "items": {"anyOf": [value_schema(element), {"type": "array"}, {"type": "null"}]}})
        }
    }
}

fn json_schema(
    schema: &str,
    table: &str,
    columns: &[DiscoveredColumn],
    kinds: &[Kind],
    key: &[String],
) -> Json {
    let mut properties = Map::new();
    for (column, kind) in columns.iter().zip(kinds) {
        let mut property = value_schema(kind);
        let is_key = key.contains(&column.name);
        if column.nullable && !is_key {
            property = or_null(property);
        }
        let nullability = if column.nullable {
            "nullable"
        } else {
            "non-nullable"
        };
        property["description"] =
            json!(format!("(source type: {nullability} {})", column.type_name));
        properties.insert(column.name.clone(), property);
    }
    properties.insert(
        "_meta".into(),
        json!({
            "type": "object",
            "properties": {
                "op": {"enum": ["c", "u", "d", "t"], "description": "c: insert or backfill, u: update, d: delete, t: truncate"},
                "source": {"type": "object", "required": ["schema", "table"]},
                "before": {"type": "object"},
                "unknown": {"type": "array", "items": {"type": "string"}, "description": "columns whose unchanged TOAST value was not known"}
            },
            "required": ["op", "source"]
        }),
    );
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": format!("{schema}/{table}"),
        "type": "object",
        "properties": properties,
        "required": key,
    })
}

/// `binding`'s table among `discovered`, or a NotFound error naming `field`.
pub fn bound_table<'a>(
    discovered: &'a [DiscoveredTable],
    binding: &crate::binding::Binding,
    field: &str,
) -> Result<&'a DiscoveredTable> {
    discovered
        .iter()
        .find(|t| t.schema == binding.schema && t.table == binding.table)
        .ok_or_else(|| {
            Error::new(
                crate::ErrorKind::NotFound,
                format!(
                    "{field}: {} is not a table this role can read",
                    binding.qualified()
                ),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pointers_escape_slashes_and_tildes() {
        assert_eq!(pointer_escape("a/b~c"), "a~1b~0c");
    }

    #[test]
    fn nullable_columns_allow_null_and_keys_are_required() {
        let columns = vec![
            DiscoveredColumn {
                name: "id".into(),
                type_oid: 23,
                type_name: "integer".into(),
                nullable: false,
            },
            DiscoveredColumn {
                name: "r".into(),
                type_oid: 701,
                type_name: "double precision".into(),
                nullable: true,
            },
        ];
        let schema = json_schema(
            "public",
            "t",
            &columns,
            &[Kind::Integer, Kind::Float],
            &["id".into()],
        );
        assert_eq!(schema["required"], json!(["id"]));
        assert_eq!(schema["properties"]["id"]["type"], "integer");
        assert_eq!(
            schema["properties"]["r"]["type"],
            json!(["number", "string", "null"])
        );
        assert_eq!(
            schema["properties"]["id"]["description"],
            "(source type: non-nullable integer)"
        );
    }
}
