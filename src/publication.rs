//! Publications: which tables' changes the slot's pgoutput sends. A capture's publication must
//! contain every bound table; this module reads what it contains and plans the statements that make
//! it so, so they can be shown before they run.
//!
//! Invariants: every identifier in a planned statement is quoted by [`crate::sql::ident`]; a plan
//! only adds (it never removes a table someone else may rely on); partitioned tables are published
//! through their root (`publish_via_partition_root`), so their changes arrive as the table the user
//! picked rather than as its partitions.

use serde::Serialize;
use tokio_postgres::Client;

use crate::error::{Error, Result};
use crate::sql;

/// A publication as the server has it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PublicationInfo {
    /// Name.
    pub name: String,
    /// `FOR ALL TABLES`.
    pub all_tables: bool,
    /// Whether partitions publish as their root.
    pub via_root: bool,
    /// Published tables (schema, table), as listed in `pg_publication_rel` (not expanded).
    pub tables: Vec<(String, String)>,
}

/// Reads a publication, if it exists.
pub async fn find(client: &Client, name: &str) -> Result<Option<PublicationInfo>> {
    let Some(row) = client
        .query_opt(
            "SELECT puballtables, pubviaroot FROM pg_publication WHERE pubname = $1",
            &[&name],
        )
        .await
        .map_err(|e| Error::from_postgres(&e, "reading pg_publication"))?
    else {
        return Ok(None);
    };
    let tables = client
        .query(
            "SELECT n.nspname::text, c.relname::text
               FROM pg_publication p
               JOIN pg_publication_rel pr ON pr.prpubid = p.oid
               JOIN pg_class c ON c.oid = pr.prrelid
               JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE p.pubname = $1 ORDER BY 1, 2",
            &[&name],
        )
        .await
        .map_err(|e| Error::from_postgres(&e, "reading pg_publication_rel"))?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    Ok(Some(PublicationInfo {
        name: name.to_string(),
        all_tables: row.get(0),
        via_root: row.get(1),
        tables,
    }))
}

/// The statements that make publication `name` exist and contain `tables` (schema, table, whether
/// partitioned); empty when it does already.
pub async fn plan(
    client: &Client,
    name: &str,
    tables: &[(String, String, bool)],
) -> Result<Vec<String>> {
    Ok(statements(find(client, name).await?.as_ref(), name, tables))
}

/// [`plan`] for a publication already read (`None`: it does not exist).
pub fn statements(
    existing: Option<&PublicationInfo>,
    name: &str,
    tables: &[(String, String, bool)],
) -> Vec<String> {
    let partitioned = tables.iter().any(|(_, _, p)| *p);
    let qualified = |(schema, table, _): &(String, String, bool)| {
        format!("{}.{}", sql::ident(schema), sql::ident(table))
    };
    let mut statements = Vec::new();
    match existing {
        None => {
            if tables.is_empty() {
                return statements;
            }
            let list: Vec<String> = tables.iter().map(qualified).collect();
            statements.push(format!(
                "CREATE PUBLICATION {} FOR TABLE {}{}",
                sql::ident(name),
                list.join(", "),
                if partitioned {
                    " WITH (publish_via_partition_root = true)"
                } else {
                    ""
                }
            ));
        }
        Some(info) => {
            if info.all_tables {
                // Every table is published already.
            } else {
                let missing: Vec<String> = tables
                    .iter()
                    .filter(|(s, t, _)| !info.tables.iter().any(|(ps, pt)| ps == s && pt == t))
                    .map(qualified)
                    .collect();
                if !missing.is_empty() {
                    statements.push(format!(
                        "ALTER PUBLICATION {} ADD TABLE {}",
                        sql::ident(name),
                        missing.join(", ")
                    ));
                }
            }
            if partitioned && !info.via_root {
                statements.push(format!(
                    "ALTER PUBLICATION {} SET (publish_via_partition_root = true)",
                    sql::ident(name)
                ));
            }
        }
    }
    statements
}

/// `tables` with whether each is partitioned, as [`plan`] takes them; a table that does not exist is
/// an error naming `field`.
pub async fn with_partitioning(
    client: &Client,
    tables: &[(String, String)],
    field: &str,
) -> Result<Vec<(String, String, bool)>> {
    let mut out = Vec::with_capacity(tables.len());
    for (schema, table) in tables {
        let partitioned = client
            .query_opt(
                "SELECT c.relkind = 'p' FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                  WHERE n.nspname = $1 AND c.relname = $2",
                &[schema, table],
            )
            .await
            .map_err(|e| Error::from_postgres(&e, "reading pg_class"))?
            .map(|r| r.get::<_, bool>(0))
            .ok_or_else(|| {
                Error::new(
                    crate::ErrorKind::NotFound,
                    format!(
                        "{field}: {}.{} does not exist",
                        sql::ident(schema),
                        sql::ident(table)
                    ),
                )
            })?;
        out.push((schema.clone(), table.clone(), partitioned));
    }
    Ok(out)
}

/// Runs planned statements in one transaction.
pub async fn apply(client: &Client, statements: &[String]) -> Result<()> {
    if statements.is_empty() {
        return Ok(());
    }
    let script = format!("BEGIN; {}; COMMIT;", statements.join("; "));
    if let Err(e) = client.batch_execute(&script).await {
        let _ = client.batch_execute("ROLLBACK").await;
        return Err(Error::from_postgres(
            &e,
            &format!("running {}", statements.join("; ")),
        ));
    }
    Ok(())
}
