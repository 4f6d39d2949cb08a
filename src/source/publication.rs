//! Publications: which tables' changes the slot's pgoutput sends. A capture's publication must
//! contain every bound table; this module reads what it contains and plans the statements that make
//! it so, so they can be shown before they run.
//!
//! Publishing can break the source: once a publication that publishes updates or deletes covers a
//! table without a usable replica identity (no primary key under REPLICA IDENTITY DEFAULT, REPLICA
//! IDENTITY NOTHING, or USING INDEX on an index that is gone), PostgreSQL refuses every UPDATE and
//! DELETE on it, in the user's own application. A [`Plan`] names every such table as a [`Hazard`]
//! before anything runs, and each is handled only as the user chose ([`Handling`]).
//!
//! Invariants:
//! - every identifier in a planned statement is quoted by [`crate::source::sql::ident`];
//! - a plan publishes exactly the tables asked for, or `FOR ALL TABLES` only when asked
//!   ([`Request::all_tables`]) and after the same check over every table it would cover (there a
//!   keyless table can only be given REPLICA IDENTITY FULL), and only adds, except a
//!   table whose writes are refused now, which leaves the publication only when the user asked so;
//! - outside a plan, a table leaves a publication only by name ([`drop_table_statements`], for
//!   `binding remove --drop-from-publication`), which can never make PostgreSQL refuse a write;
//! - [`apply`] refuses a plan with a hazard the user has not decided, and refuses to commit when,
//!   after its statements, any table's UPDATE or DELETE would be refused that was accepted before
//!   (checked in the same transaction, so a race with a concurrent `ALTER TABLE` cannot slip by);
//! - "insert-only" tables go to a companion publication ([`insert_only_name`]) created with
//!   `publish = 'insert'` (the option is per publication in PostgreSQL 15), which the capture
//!   streams together with its own;
//! - partitioned tables are published through their root (`publish_via_partition_root`), so their
//!   changes arrive as the table the user picked rather than as its partitions.

use serde::{Deserialize, Serialize};
use tokio_postgres::Client;

use crate::error::{Error, ErrorKind, Result};
use crate::source::sql;

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
    /// Whether it publishes updates or deletes (then a covered table needs a replica identity).
    pub updates_or_deletes: bool,
    /// Published tables (schema, table), as listed in `pg_publication_rel` (not expanded).
    pub tables: Vec<(String, String)>,
}

/// Reads a publication, if it exists.
pub async fn find(client: &Client, name: &str) -> Result<Option<PublicationInfo>> {
    let Some(row) = client
        .query_opt(
            "SELECT puballtables, pubviaroot, pubupdate OR pubdelete FROM pg_publication WHERE pubname = $1",
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
        updates_or_deletes: row.get(2),
        tables,
    }))
}

/// The companion publication that carries a capture's insert-only tables: `<publication>_insert_only`.
pub fn insert_only_name(publication: &str) -> Result<String> {
    let name = format!("{publication}_insert_only");
    // NAMEDATALEN - 1: PostgreSQL would silently truncate a longer name.
    if name.len() > 63 {
        return Err(Error::invalid_input(
            "publication",
            format!(
                "{} is too long to have an insert-only companion ({} bytes; at most 63)",
                sql::ident(publication),
                name.len()
            ),
        ));
    }
    Ok(name)
}

/// The publications a capture of `publication` decodes with: it, and its insert-only companion when
/// that exists.
pub async fn streamed(client: &Client, publication: &str) -> Result<Vec<String>> {
    let mut names = vec![publication.to_string()];
    if let Ok(companion) = insert_only_name(publication) {
        if find(client, &companion).await?.is_some() {
            names.push(companion);
        }
    }
    Ok(names)
}

/// A table, by schema and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, ts_rs::TS)]
#[serde(rename_all = "camelCase")]
pub struct TableRef {
    /// Schema.
    pub schema: String,
    /// Table.
    pub table: String,
}

impl TableRef {
    /// A table reference.
    pub fn new(schema: &str, table: &str) -> TableRef {
        TableRef {
            schema: schema.into(),
            table: table.into(),
        }
    }

    /// `"schema"."table"`, quoted for SQL.
    pub fn quoted_name(&self) -> String {
        self.quoted()
    }

    fn quoted(&self) -> String {
        format!("{}.{}", sql::ident(&self.schema), sql::ident(&self.table))
    }
}

/// How a table that would make PostgreSQL refuse its UPDATEs and DELETEs once published is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ts_rs::TS)]
#[serde(rename_all = "camelCase")]
pub enum Handling {
    /// Not published (the safe default); its changes are not captured. A table whose writes are
    /// refused now because this publication covers it is dropped from it.
    LeaveOut,
    /// `ALTER TABLE … REPLICA IDENTITY FULL` first (every update and delete then logs the whole old
    /// row), then published with its updates and deletes.
    ReplicaIdentityFull,
    /// Published in the insert-only companion publication: its inserts are captured, its updates and
    /// deletes are neither refused nor captured.
    InsertOnly,
}

/// The user's decision for one table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ts_rs::TS)]
#[serde(rename_all = "camelCase")]
pub struct Choice {
    /// Schema.
    pub schema: String,
    /// Table.
    pub table: String,
    /// What to do with it.
    pub handling: Handling,
}

/// What to publish: the tables the user picked and how each hazardous one is handled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ts_rs::TS)]
#[serde(rename_all = "camelCase")]
#[ts(rename = "PublicationRequest")]
pub struct Request {
    /// The capture's publication.
    pub publication: String,
    /// The tables to publish.
    pub tables: Vec<TableRef>,
    /// Decisions for the tables that have no usable replica identity.
    #[serde(default)]
    pub choices: Vec<Choice>,
    /// `FOR ALL TABLES` instead of `tables` (`setup publication --all-tables`): every table the
    /// publication would cover is checked for a usable replica identity first ([`plan`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub all_tables: bool,
}

impl Request {
    fn choice(&self, table: &TableRef) -> Option<Handling> {
        self.choices
            .iter()
            .find(|c| c.schema == table.schema && c.table == table.table)
            .map(|c| c.handling)
    }
}

/// A table that has no usable replica identity (itself or one of its partitions).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ts_rs::TS)]
#[serde(rename_all = "camelCase")]
pub struct Hazard {
    /// The table asked for.
    pub table: TableRef,
    /// Why, e.g. "no primary key and REPLICA IDENTITY DEFAULT".
    pub reason: String,
    /// The relations without identity: the table, or its partitions.
    pub relations: Vec<TableRef>,
    /// A publication that publishes updates or deletes covers it already: PostgreSQL refuses its
    /// UPDATEs and DELETEs now.
    pub refused_now: bool,
    /// The handlings that do what they say for this table.
    pub options: Vec<Handling>,
    /// The user's choice, when made.
    pub handling: Option<Handling>,
}

/// What publishing a [`Request`] takes, for the preview: the statements, every hazard, and in words
/// what happens to each hazardous table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ts_rs::TS)]
#[serde(rename_all = "camelCase")]
#[ts(rename = "PublicationPlan")]
pub struct Plan {
    /// The request it was made for.
    pub request: Request,
    /// The statements, run in one transaction by [`apply`].
    pub statements: Vec<String>,
    /// Tables without a usable replica identity among those asked for.
    pub hazards: Vec<Hazard>,
    /// One sentence per hazardous table: what the statements do with it.
    pub notes: Vec<String>,
}

impl Plan {
    /// Hazards that would make PostgreSQL refuse writes that it accepts now and that the user has
    /// not decided: [`apply`] refuses the plan while there is one.
    pub fn undecided(&self) -> Vec<&Hazard> {
        self.hazards
            .iter()
            .filter(|h| !h.refused_now && h.handling.is_none())
            .collect()
    }

    /// An error naming each undecided table and the choices, or `Ok` when every hazard is decided.
    pub fn ensure_decided(&self) -> Result<()> {
        let undecided = self.undecided();
        if undecided.is_empty() {
            return Ok(());
        }
        let tables: Vec<String> = undecided
            .iter()
            .map(|h| format!("{} ({})", h.table.quoted(), h.reason))
            .collect();
        if self.request.all_tables {
            return Err(Error::invalid_input(
                "choices",
                format!(
                    "a FOR ALL TABLES publication would make PostgreSQL refuse every UPDATE and DELETE on {} in your application; choose for each: set REPLICA IDENTITY FULL, or publish the tables by name instead (then a table can be left out or publish its inserts only)",
                    tables.join(", ")
                ),
            ));
        }
        Err(Error::invalid_input(
            "choices",
            format!(
                "publishing {} would make PostgreSQL refuse every UPDATE and DELETE on it in your application; choose for each: leave it out, set REPLICA IDENTITY FULL, or publish its inserts only",
                tables.join(", ")
            ),
        ))
    }
}

/// Why a relation with replica identity `identity` and these indexes is not safe to publish with
/// updates or deletes, or `None` when it is.
fn identity_gap(identity: &str, primary: bool, identity_index: bool) -> Option<&'static str> {
    match identity {
        "f" => None,
        "d" if primary => None,
        "d" => Some("no primary key and REPLICA IDENTITY DEFAULT"),
        "n" => Some("REPLICA IDENTITY NOTHING"),
        "i" if identity_index => None,
        "i" => Some("REPLICA IDENTITY USING INDEX names an index that no longer exists"),
        _ => None,
    }
}

/// Per relation kind 'r' in the table's partition tree (`pg_partition_tree` lists nothing for a
/// table that is not partitioned, so the table itself is added): whether
/// it has a usable replica identity. An immediate primary key is what DEFAULT uses.
const LEAVES_SQL: &str = "
WITH rel AS (SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = $1 AND c.relname = $2),
     tree AS (SELECT oid AS relid, 0 AS level FROM rel
              UNION SELECT t.relid, t.level FROM rel, pg_partition_tree(rel.oid) t)
SELECT n.nspname::text, c.relname::text, c.relreplident::text,
       EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary AND i.indimmediate),
       EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisreplident)
  FROM tree
  JOIN pg_class c ON c.oid = tree.relid
  JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind = 'r'
 ORDER BY tree.level, 1, 2";

/// Every relation whose UPDATE or DELETE PostgreSQL refuses now: covered (itself or through an
/// ancestor) by a publication that publishes updates or deletes, without a usable replica identity.
const REFUSED_SQL: &str = "
SELECT DISTINCT n.nspname::text, c.relname::text
  FROM pg_publication p
 CROSS JOIN LATERAL pg_get_publication_tables(p.pubname::text) g
 CROSS JOIN LATERAL (SELECT g.relid UNION SELECT relid FROM pg_partition_tree(g.relid)) t(relid)
  JOIN pg_class c ON c.oid = t.relid
  JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE (p.pubupdate OR p.pubdelete) AND c.relkind = 'r' AND p.pubname <> ALL($1::text[])
   AND NOT (c.relreplident = 'f'
        OR (c.relreplident = 'd' AND EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary AND i.indimmediate))
        OR (c.relreplident = 'i' AND EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisreplident)))
 ORDER BY 1, 2";

/// The tables whose UPDATE and DELETE PostgreSQL refuses now because a publication covers them.
pub async fn refused_now(client: &Client) -> Result<Vec<TableRef>> {
    refused_except(client, &[]).await
}

/// [`refused_now`] counting only publications not named in `except`.
async fn refused_except(client: &Client, except: &[&str]) -> Result<Vec<TableRef>> {
    Ok(client
        .query(REFUSED_SQL, &[&except])
        .await
        .map_err(|e| Error::from_postgres(&e, "reading which tables' writes are refused"))?
        .iter()
        .map(|r| TableRef {
            schema: r.get(0),
            table: r.get(1),
        })
        .collect())
}

struct Facts {
    partitioned: bool,
    gaps: Vec<(TableRef, &'static str)>,
}

async fn facts(client: &Client, table: &TableRef, field: &str) -> Result<Facts> {
    let partitioned = client
        .query_opt(
            "SELECT c.relkind = 'p' FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')",
            &[&table.schema, &table.table],
        )
        .await
        .map_err(|e| Error::from_postgres(&e, "reading pg_class"))?
        .map(|r| r.get::<_, bool>(0))
        .ok_or_else(|| {
            Error::new(
                ErrorKind::NotFound,
                format!("{field}: {} does not exist", table.quoted()),
            )
        })?;
    let gaps = client
        .query(LEAVES_SQL, &[&table.schema, &table.table])
        .await
        .map_err(|e| {
            Error::from_postgres(
                &e,
                &format!("reading the replica identity of {}", table.quoted()),
            )
        })?
        .iter()
        .filter_map(|r| {
            identity_gap(r.get::<_, String>(2).as_str(), r.get(3), r.get(4)).map(|why| {
                (
                    TableRef {
                        schema: r.get(0),
                        table: r.get(1),
                    },
                    why,
                )
            })
        })
        .collect();
    Ok(Facts { partitioned, gaps })
}

/// Plans publishing `request` on the server as it is now: reads the publication, its insert-only
/// companion, and each table's replica identity. Tables without a usable identity become hazards
/// (with the user's choice from the request, if any); undecided ones are left out of the statements,
/// and [`apply`] refuses the plan until they are decided.
pub async fn plan(client: &Client, request: &Request) -> Result<Plan> {
    if request.publication.is_empty() {
        return Err(Error::invalid_input("publication", "must not be empty"));
    }
    if request.all_tables {
        return plan_all_tables(client, request).await;
    }
    let existing = find(client, &request.publication).await?;
    let companion_name = insert_only_name(&request.publication)?;
    let companion = find(client, &companion_name).await?;
    let refused = refused_now(client).await?;
    let refused_elsewhere = refused_except(client, &[request.publication.as_str()]).await?;
    let in_main = |t: &TableRef| {
        existing.as_ref().is_some_and(|p| {
            p.tables
                .iter()
                .any(|(s, n)| *s == t.schema && *n == t.table)
        })
    };

    let mut main: Vec<(TableRef, bool)> = Vec::new();
    let mut insert_only: Vec<(TableRef, bool)> = Vec::new();
    let mut drop_from_main: Vec<TableRef> = Vec::new();
    let mut identity: Vec<String> = Vec::new();
    let mut hazards = Vec::new();
    let mut notes = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for table in &request.tables {
        if !seen.insert(table.clone()) {
            continue;
        }
        let facts = facts(client, table, "tables").await?;
        if facts.gaps.is_empty() {
            main.push((table.clone(), facts.partitioned));
            continue;
        }
        let refused_now = facts.gaps.iter().any(|(r, _)| refused.contains(r));
        // Refused now: only this publication's own listing can be undone from here (FOR ALL TABLES
        // and other publications are not this plan's to change).
        let ours_alone = refused_now
            && in_main(table)
            && !facts
                .gaps
                .iter()
                .any(|(r, _)| refused_elsewhere.contains(r));
        let options = if !refused_now || ours_alone {
            vec![
                Handling::LeaveOut,
                Handling::ReplicaIdentityFull,
                Handling::InsertOnly,
            ]
        } else {
            vec![Handling::ReplicaIdentityFull]
        };
        // A table in the insert-only companion was decided on an earlier run.
        let handling = request.choice(table).or_else(|| {
            companion
                .as_ref()
                .is_some_and(|c| {
                    c.tables
                        .iter()
                        .any(|(s, n)| *s == table.schema && *n == table.table)
                })
                .then_some(Handling::InsertOnly)
        });
        if let Some(h) = handling {
            if !options.contains(&h) {
                return Err(Error::invalid_input(
                    "choices",
                    format!(
                        "{}: only REPLICA IDENTITY FULL makes its writes accepted again, because a publication Tidepool does not manage here (FOR ALL TABLES or another one) covers it",
                        table.quoted()
                    ),
                ));
            }
        }
        let reason = facts.gaps[0].1.to_string();
        let partitions = if facts.gaps.iter().any(|(r, _)| r != table) {
            format!(
                " (partition(s) {})",
                facts
                    .gaps
                    .iter()
                    .map(|(r, _)| r.quoted())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        } else {
            String::new()
        };
        let name = table.quoted();
        match handling {
            Some(Handling::ReplicaIdentityFull) => {
                for (relation, _) in &facts.gaps {
                    identity.push(format!(
                        "ALTER TABLE {} REPLICA IDENTITY FULL",
                        relation.quoted()
                    ));
                }
                main.push((table.clone(), facts.partitioned));
                notes.push(format!("{name}{partitions}: {reason}. REPLICA IDENTITY FULL is set first, so its UPDATEs and DELETEs keep working and their changes are captured with the whole old row."));
            }
            Some(Handling::InsertOnly) => {
                if in_main(table) {
                    drop_from_main.push(table.clone());
                }
                insert_only.push((table.clone(), facts.partitioned));
                notes.push(format!("{name}{partitions}: {reason}. Published in {} with publish = 'insert' (the option applies to a whole publication): its inserts are captured; its UPDATEs and DELETEs keep working and are not captured.", sql::ident(&companion_name)));
            }
            Some(Handling::LeaveOut) => {
                if refused_now {
                    drop_from_main.push(table.clone());
                    notes.push(format!("{name}{partitions}: {reason}. Dropped from {}, so PostgreSQL accepts its UPDATEs and DELETEs again; its changes are not captured.", sql::ident(&request.publication)));
                } else {
                    notes.push(format!("{name}{partitions}: {reason}. Left out: not published, its writes keep working, its changes are not captured."));
                }
            }
            None if refused_now => {
                // Already refused whatever this plan does: publishing it here adds no harm.
                main.push((table.clone(), facts.partitioned));
                notes.push(format!("{name}{partitions}: {reason}, and a publication covers it already: PostgreSQL is refusing its UPDATEs and DELETEs now. Set REPLICA IDENTITY FULL to accept them again."))
            }
            None => notes.push(format!("{name}{partitions}: {reason}. Publishing it with updates and deletes would make PostgreSQL refuse every UPDATE and DELETE on it; choose: leave it out (default), REPLICA IDENTITY FULL, or inserts only.")),
        }
        hazards.push(Hazard {
            table: table.clone(),
            reason,
            relations: facts.gaps.iter().map(|(r, _)| r.clone()).collect(),
            refused_now,
            options,
            handling,
        });
    }

    let mut statements = identity;
    let name = sql::ident(&request.publication);
    for table in &drop_from_main {
        statements.push(format!(
            "ALTER PUBLICATION {name} DROP TABLE {}",
            table.quoted()
        ));
    }
    let main_list: Vec<(TableRef, bool)> = main
        .into_iter()
        .filter(|(t, _)| !drop_from_main.contains(t))
        .collect();
    statements.extend(statements_for(
        existing.as_ref(),
        &request.publication,
        &main_list,
        None,
        // The capture needs its publication to exist even when every table went elsewhere.
        !insert_only.is_empty(),
    ));
    if !insert_only.is_empty() {
        if let Some(info) = &companion {
            if info.updates_or_deletes || info.all_tables {
                return Err(Error::invalid_input(
                    "publication",
                    format!(
                        "{} exists but is not an insert-only publication of tables; Tidepool keeps insert-only tables there, so drop or rename it first",
                        sql::ident(&companion_name)
                    ),
                ));
            }
        }
        statements.extend(statements_for(
            companion.as_ref(),
            &companion_name,
            &insert_only,
            Some("publish = 'insert'"),
            false,
        ));
    }
    Ok(Plan {
        request: request.clone(),
        statements,
        hazards,
        notes,
    })
}

/// The statements that make publication `name` exist (when `create_empty` or there are tables) and
/// contain `tables`, created `WITH (with)` when given.
fn statements_for(
    existing: Option<&PublicationInfo>,
    name: &str,
    tables: &[(TableRef, bool)],
    with: Option<&str>,
    create_empty: bool,
) -> Vec<String> {
    let partitioned = tables.iter().any(|(_, p)| *p);
    let mut statements = Vec::new();
    let ident = sql::ident(name);
    match existing {
        None => {
            if tables.is_empty() && !create_empty {
                return statements;
            }
            let mut options: Vec<&str> = with.into_iter().collect();
            if partitioned {
                options.push("publish_via_partition_root = true");
            }
            let list: Vec<String> = tables.iter().map(|(t, _)| t.quoted()).collect();
            statements.push(format!(
                "CREATE PUBLICATION {ident}{}{}",
                if list.is_empty() {
                    String::new()
                } else {
                    format!(" FOR TABLE {}", list.join(", "))
                },
                if options.is_empty() {
                    String::new()
                } else {
                    format!(" WITH ({})", options.join(", "))
                }
            ));
        }
        Some(info) => {
            if !info.all_tables {
                let missing: Vec<String> = tables
                    .iter()
                    .filter(|(t, _)| {
                        !info
                            .tables
                            .iter()
                            .any(|(s, n)| *s == t.schema && *n == t.table)
                    })
                    .map(|(t, _)| t.quoted())
                    .collect();
                if !missing.is_empty() {
                    statements.push(format!(
                        "ALTER PUBLICATION {ident} ADD TABLE {}",
                        missing.join(", ")
                    ));
                }
            }
            if partitioned && !info.via_root {
                statements.push(format!(
                    "ALTER PUBLICATION {ident} SET (publish_via_partition_root = true)"
                ));
            }
        }
    }
    statements
}

/// Every table a `FOR ALL TABLES` publication covers: permanent ordinary and partitioned tables
/// (partitions through their root) outside the system schemas.
const ALL_TABLES_SQL: &str = "
SELECT n.nspname::text, c.relname::text
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition AND c.relpersistence = 'p'
   AND n.nspname NOT IN ('pg_catalog', 'information_schema')
   AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%'
 ORDER BY 1, 2";

/// [`plan`] for `FOR ALL TABLES`. Such a publication covers every table, now and later, so a table
/// cannot be left out or published inserts-only: each table without a usable replica identity must be
/// given REPLICA IDENTITY FULL (chosen explicitly), or the plan stays undecided and [`apply`] refuses
/// it; [`apply`]'s check in the same transaction also catches a keyless table created meanwhile.
/// An existing publication with a table list is refused: PostgreSQL cannot turn it into one for all
/// tables, and dropping it under a capture would break the slot's decoding.
async fn plan_all_tables(client: &Client, request: &Request) -> Result<Plan> {
    let existing = find(client, &request.publication).await?;
    if let Some(info) = existing.as_ref().filter(|p| !p.all_tables) {
        return Err(Error::invalid_input(
            "--all-tables",
            format!(
                "publication {} exists with a list of {} table(s); PostgreSQL cannot turn it into FOR ALL TABLES: keep publishing by name (--tables), or use another publication name",
                sql::ident(&info.name),
                info.tables.len()
            ),
        ));
    }
    let refused = refused_now(client).await?;
    let tables: Vec<TableRef> = client
        .query(ALL_TABLES_SQL, &[])
        .await
        .map_err(|e| Error::from_postgres(&e, "listing the tables FOR ALL TABLES covers"))?
        .iter()
        .map(|r| TableRef {
            schema: r.get(0),
            table: r.get(1),
        })
        .collect();
    let mut partitioned_any = false;
    let mut identity = Vec::new();
    let mut hazards = Vec::new();
    let mut notes = Vec::new();
    for table in &tables {
        let facts = facts(client, table, "tables").await?;
        partitioned_any |= facts.partitioned;
        if facts.gaps.is_empty() {
            continue;
        }
        let refused_now = facts.gaps.iter().any(|(r, _)| refused.contains(r));
        let handling = request.choice(table);
        match handling {
            Some(Handling::ReplicaIdentityFull) => {
                for (relation, _) in &facts.gaps {
                    identity.push(format!(
                        "ALTER TABLE {} REPLICA IDENTITY FULL",
                        relation.quoted()
                    ));
                }
                notes.push(format!(
                    "{}: REPLICA IDENTITY FULL first, then published with the rest",
                    table.quoted()
                ));
            }
            Some(_) => {
                return Err(Error::invalid_input(
                    "choices",
                    format!(
                        "{}: a FOR ALL TABLES publication covers every table, so it cannot be left out or published inserts-only; choose replica-identity-full, or publish the tables by name (--tables)",
                        table.quoted()
                    ),
                ))
            }
            None => notes.push(format!(
                "{} ({}): FOR ALL TABLES would make PostgreSQL refuse its UPDATE and DELETE; choose replica-identity-full for it, or publish the tables by name (--tables) to leave it out or publish its inserts only",
                table.quoted(),
                facts.gaps[0].1
            )),
        }
        hazards.push(Hazard {
            table: table.clone(),
            reason: facts.gaps[0].1.to_string(),
            relations: facts.gaps.iter().map(|(r, _)| r.clone()).collect(),
            refused_now,
            options: vec![Handling::ReplicaIdentityFull],
            handling,
        });
    }
    let ident = sql::ident(&request.publication);
    let mut statements = identity;
    match &existing {
        None if partitioned_any => statements.push(format!(
            "CREATE PUBLICATION {ident} FOR ALL TABLES WITH (publish_via_partition_root = true)"
        )),
        None => statements.push(format!("CREATE PUBLICATION {ident} FOR ALL TABLES")),
        Some(info) if partitioned_any && !info.via_root => statements.push(format!(
            "ALTER PUBLICATION {ident} SET (publish_via_partition_root = true)"
        )),
        Some(_) => {}
    }
    Ok(Plan {
        request: request.clone(),
        statements,
        hazards,
        notes,
    })
}

/// The statements that take `table` out of a capture's publication and its insert-only companion:
/// one `ALTER PUBLICATION … DROP TABLE …` per publication that lists it. Dropping never makes
/// PostgreSQL refuse a write, so there is nothing to decide. A `FOR ALL TABLES` publication cannot
/// drop one table: that is an error saying so.
pub async fn drop_table_statements(
    client: &Client,
    publication: &str,
    table: &TableRef,
) -> Result<Vec<String>> {
    let mut statements = Vec::new();
    for name in streamed(client, publication).await? {
        let Some(info) = find(client, &name).await? else {
            continue;
        };
        if info.all_tables {
            return Err(Error::invalid_input(
                "--drop-from-publication",
                format!(
                    "{} is FOR ALL TABLES: it cannot drop {}; recreate it with the tables to publish (`tidepool setup … publication --tables …`)",
                    sql::ident(&name),
                    table.quoted()
                ),
            ));
        }
        if info
            .tables
            .iter()
            .any(|(s, t)| *s == table.schema && *t == table.table)
        {
            statements.push(format!(
                "ALTER PUBLICATION {} DROP TABLE {}",
                sql::ident(&name),
                table.quoted()
            ));
        }
    }
    Ok(statements)
}

/// "Save and publish"'s part on the server: plans publishing the bound `tables` with `choices` and
/// runs it. A bound table must be captured, so leaving one out is refused (unselect it instead), as is
/// a table without a usable replica identity that has no choice.
pub async fn publish_bound(
    client: &Client,
    publication: &str,
    tables: &[TableRef],
    choices: &[Choice],
) -> Result<Plan> {
    let request = Request {
        publication: publication.to_string(),
        tables: tables.to_vec(),
        choices: choices.to_vec(),
        all_tables: false,
    };
    let plan = plan(client, &request).await?;
    if let Some(left) = plan
        .hazards
        .iter()
        .find(|h| h.handling == Some(Handling::LeaveOut))
    {
        return Err(Error::invalid_input(
            "choices",
            format!(
                "{} is selected for capture, so it cannot be left out of the publication: unselect it, or choose REPLICA IDENTITY FULL or inserts only",
                left.table.quoted()
            ),
        ));
    }
    apply(client, &plan).await?;
    Ok(plan)
}

/// Runs a plan's statements in one transaction. Refuses a plan with an undecided hazard, and rolls
/// back when, after the statements, PostgreSQL would refuse UPDATE or DELETE on a table where it
/// accepted them before.
pub async fn apply(client: &Client, plan: &Plan) -> Result<()> {
    plan.ensure_decided()?;
    if plan.statements.is_empty() {
        return Ok(());
    }
    let running = |e: tokio_postgres::Error| {
        Error::from_postgres(&e, &format!("running {}", plan.statements.join("; ")))
    };
    client.batch_execute("BEGIN").await.map_err(running)?;
    let outcome = async {
        let before = refused_now(client).await?;
        client
            .batch_execute(&plan.statements.join("; "))
            .await
            .map_err(running)?;
        let newly: Vec<String> = refused_now(client)
            .await?
            .into_iter()
            .filter(|t| !before.contains(t))
            .map(|t| t.quoted())
            .collect();
        if !newly.is_empty() {
            return Err(Error::invalid_input(
                "choices",
                format!(
                    "nothing was changed: after these statements PostgreSQL would refuse UPDATE and DELETE on {} (no usable replica identity); the server changed since the plan was made, plan again",
                    newly.join(", ")
                ),
            ));
        }
        client.batch_execute("COMMIT").await.map_err(running)
    }
    .await;
    if outcome.is_err() {
        let _ = client.batch_execute("ROLLBACK").await;
    }
    outcome
}

/// Plans `request` again and runs it, provided the statements are the ones `previewed` (what the user
/// saw); a server that changed in between is an error asking to look again.
pub async fn apply_previewed(
    client: &Client,
    request: &Request,
    previewed: &[String],
) -> Result<Plan> {
    let plan = plan(client, request).await?;
    plan.ensure_decided()?;
    if plan.statements != previewed {
        return Err(Error::invalid_input(
            "statements",
            format!(
                "the server changed since the preview; it would now run: {}. Look at the new preview and run it again",
                if plan.statements.is_empty() { "nothing".to_string() } else { plan.statements.join("; ") }
            ),
        ));
    }
    apply(client, &plan).await?;
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_gaps_name_each_way_writes_get_refused() {
        assert_eq!(identity_gap("d", true, false), None);
        assert_eq!(identity_gap("f", false, false), None);
        assert_eq!(identity_gap("i", false, true), None);
        assert!(identity_gap("d", false, false)
            .unwrap()
            .contains("no primary key"));
        assert!(identity_gap("n", true, false).unwrap().contains("NOTHING"));
        assert!(identity_gap("i", true, false)
            .unwrap()
            .contains("no longer exists"));
    }

    #[test]
    fn a_new_publication_lists_exactly_its_tables_and_quotes_them() {
        let t = |s: &str, n: &str, p| (TableRef::new(s, n), p);
        assert_eq!(
            statements_for(
                None,
                "p\"x",
                &[t("a b", "c", false), t("s", "parted", true)],
                None,
                false
            ),
            vec![
                r#"CREATE PUBLICATION "p""x" FOR TABLE "a b"."c", "s"."parted" WITH (publish_via_partition_root = true)"#
            ]
        );
        assert_eq!(
            statements_for(
                None,
                "p_insert_only",
                &[t("s", "log", false)],
                Some("publish = 'insert'"),
                false
            ),
            vec![
                r#"CREATE PUBLICATION "p_insert_only" FOR TABLE "s"."log" WITH (publish = 'insert')"#
            ]
        );
        assert_eq!(
            statements_for(None, "p", &[], None, true),
            vec![r#"CREATE PUBLICATION "p""#]
        );
        assert!(statements_for(None, "p", &[], None, false).is_empty());
    }

    #[test]
    fn the_companion_name_is_refused_rather_than_truncated() {
        assert_eq!(insert_only_name("pub").unwrap(), "pub_insert_only");
        assert!(insert_only_name(&"p".repeat(52)).is_err());
    }
}
