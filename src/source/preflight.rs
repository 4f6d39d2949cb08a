//! Preflight: everything a capture needs from the server, checked before it starts, each with a status,
//! an explanation and, where one exists, the fix ([`crate::source::setup::Action`]) that turns it into a pass.
//!
//! Invariants:
//! - Checks only read (catalog queries and settings); nothing here changes the server. Fixes run only
//!   through [`crate::source::setup::Action::run`], after the user saw their preview.
//! - Checks know Tidepool's own state ([`Target::running_capture`], [`Target::store_history`]): a slot
//!   held by this process's own capture is a pass, and a slot the capture's first start will create
//!   (with the snapshot it backfills from) is a [`Status::Step`], never a failure whose fix would skip
//!   that backfill.

use serde::Serialize;
use tokio_postgres::Client;

use crate::error::{Error, Result};
use crate::source::connection::ReplicationRight;
use crate::source::setup::Action;
use crate::source::sql::ident;

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ts_rs::TS)]
#[serde(rename_all = "camelCase")]
#[ts(rename = "CheckStatus")]
pub enum Status {
    /// Nothing to do.
    Pass,
    /// Works, but deserves attention.
    Warn,
    /// The capture cannot work until it is fixed.
    Fail,
    /// Not there yet, and nothing to fix: Tidepool does it itself at the right moment (the capture's
    /// first start creates the slot, with the snapshot it backfills from).
    Step,
}

/// One check's outcome.
#[derive(Debug, Clone, PartialEq, Serialize, ts_rs::TS)]
#[serde(rename_all = "camelCase")]
#[ts(rename = "PreflightCheck")]
pub struct Check {
    /// Stable id, e.g. `wal_level`, `grants:public`, `replica_identity:public.t`.
    pub id: String,
    /// What is checked, for a person.
    pub title: String,
    /// How it came out.
    pub status: Status,
    /// What was found and why it matters.
    pub explanation: String,
    /// The fix, when there is one.
    pub fix: Option<Fix>,
}

/// A fix with what it would run.
#[derive(Debug, Clone, PartialEq, Serialize, ts_rs::TS)]
#[serde(rename_all = "camelCase")]
pub struct Fix {
    /// The action to run once confirmed.
    pub action: Action,
    /// The exact SQL or HTTP request.
    pub preview: Vec<String>,
    /// What to know before confirming.
    pub warning: Option<String>,
    /// The rights the role that runs it needs ([`Action::needs`]): when the profile's own role
    /// lacks them, the fix can run as an owner ([`crate::source::setup::RunAs`]).
    pub needs: String,
    /// For the publication fix: the plan, with each table that has no usable replica identity and
    /// the choices for it (the UI asks before "Run").
    #[serde(skip_serializing_if = "Option::is_none")]
    #[ts(optional)]
    pub plan: Option<crate::source::publication::Plan>,
}

impl Fix {
    /// The action with its preview and warning, as the UI shows it before "Run".
    pub fn of(action: Action) -> Fix {
        Fix {
            preview: action.preview(),
            warning: action.warning().map(str::to_string),
            needs: action.needs().to_string(),
            action,
            plan: None,
        }
    }
}

/// What to check against.
#[derive(Debug, Clone, Default)]
pub struct Target {
    /// The server's host, to spot a Neon pooled host.
    pub host: String,
    /// The capture's publication.
    pub publication: String,
    /// The capture's slot.
    pub slot: String,
    /// The tables to capture; empty means the publication's tables.
    pub tables: Vec<(String, String)>,
    /// The Neon project the profile is linked to, if any.
    pub neon_project: Option<String>,
    /// The Neon branch the profile is linked to, if any (a role is created on a branch).
    pub neon_branch: Option<String>,
    /// Retained WAL above which the slot check warns (default [`LAG_WARN_BYTES`]).
    pub slot_warn_bytes: Option<i64>,
    /// The `application_name` of this target's capture when it runs in this process (each run of
    /// [`crate::app::run::Runs`] has its own): a slot held by a connection of that name is Tidepool's own
    /// capture, not a conflict. `None` where no capture runs in-process (the command line).
    pub running_capture: Option<String>,
    /// Whether the capture's store has streamed from the slot already (a checkpoint is stored): then a
    /// missing slot was dropped behind its back, rather than one its first start will create. `None`
    /// when unknown (the command line checks without a store).
    pub store_history: Option<bool>,
}

/// The role the Neon fix creates for replication.
pub const NEON_REPLICATION_ROLE: &str = "tidepool_cdc";

/// Retained WAL above which the slot check warns (bytes).
pub const LAG_WARN_BYTES: i64 = 1 << 30;

fn check(id: &str, title: &str, status: Status, explanation: String, fix: Option<Action>) -> Check {
    Check {
        id: id.into(),
        title: title.into(),
        status,
        explanation,
        fix: fix.map(Fix::of),
    }
}

pub(crate) fn is_neon(host: &str) -> bool {
    let host = host.to_ascii_lowercase();
    host.ends_with(".neon.tech") || host.ends_with(".neon.build")
}

/// The IP Allow check for a profile linked to Neon `project`: Neon's proxy refuses connections from
/// any address outside a non-empty list, and this machine's public address cannot be known from here,
/// so a list is a warning that shows it and says what to add; an empty list passes.
pub fn ip_allow(project: &str, allowed: &crate::source::neon::AllowedIps) -> Check {
    if allowed.ips.is_empty() {
        return check(
            "neon_ip_allow",
            "Neon IP Allow",
            Status::Pass,
            format!("Neon project {project} takes connections from any address (its IP Allow list is empty)."),
            None,
        );
    }
    let scope = if allowed.protected_branches_only || allowed.primary_branch_only {
        " on its protected branches"
    } else {
        ""
    };
    check(
        "neon_ip_allow",
        "Neon IP Allow",
        Status::Warn,
        format!(
            "Neon project {project} restricts connections{scope} to these addresses (IP Allow): {}. \
             If Tidepool's connections are refused (\"This IP address … is not allowed to connect to this endpoint\"), \
             add the public address Tidepool connects from to the list: Neon Console → Project settings → Network security → IP Allow.",
            allowed.ips.join(", ")
        ),
        None,
    )
}

/// [`ip_allow`] with the settings read through the Neon API; when they cannot be read (no API key,
/// an API error) the check says why and warns, since the list is then unknown.
pub async fn neon_ip_allow(neon: Result<crate::source::neon::Client>, project: &str) -> Check {
    let mut client = match neon {
        Ok(client) => client,
        Err(e) => return unknown_ip_allow(project, &e),
    };
    // A preflight waits for this answer: one retry, not the full back-off of a fix.
    client.attempts = client.attempts.min(2);
    match client.allowed_ips(project).await {
        Ok(allowed) => ip_allow(project, &allowed),
        Err(e) => unknown_ip_allow(project, &e),
    }
}

fn unknown_ip_allow(project: &str, e: &Error) -> Check {
    check(
        "neon_ip_allow",
        "Neon IP Allow",
        Status::Warn,
        format!("Could not read the IP Allow settings of Neon project {project} ({e}); if the project restricts connections by address, the address Tidepool connects from must be on its list."),
        None,
    )
}

/// Runs every check.
pub async fn run(client: &Client, target: &Target) -> Result<Vec<Check>> {
    let q = |e: tokio_postgres::Error| Error::from_postgres(&e, "running the preflight checks");
    let mut checks = Vec::new();

    // A Neon pooled host cannot carry replication.
    if let Some(crate::source::conninfo::Advice::NeonPooler { direct_host, .. }) =
        crate::source::conninfo::neon_pooler(&target.host)
    {
        checks.push(check(
            "pooler",
            "Direct (not pooled) connection",
            Status::Fail,
            format!("{} is Neon's connection pooler (PgBouncer in transaction mode), which cannot carry logical replication; use the direct host {direct_host} in the profile", target.host),
            None,
        ));
    } else {
        checks.push(check(
            "pooler",
            "Direct (not pooled) connection",
            Status::Pass,
            "The host is a direct connection.".into(),
            None,
        ));
    }

    let row = client
        .query_one(
            concat!(
                "SELECT current_setting('wal_level'), current_user::text, ",
                crate::source::connection::replication_columns!(),
                ",
                    current_setting('max_replication_slots')::int,
                    (SELECT count(*) FROM pg_replication_slots)::int,
                    current_setting('max_wal_senders')::int,
                    (SELECT count(*) FROM pg_stat_replication)::int,
                    current_database()::text
               FROM pg_roles r WHERE r.rolname = current_user"
            ),
            &[],
        )
        .await
        .map_err(q)?;
    let wal_level: String = row.get(0);
    let user: String = row.get(1);
    let replication = ReplicationRight::from_columns(&row, 2);
    let (max_slots, used_slots, max_senders, used_senders): (i32, i32, i32, i32) =
        (row.get(5), row.get(6), row.get(7), row.get(8));
    let database: String = row.get(9);
    let neon = is_neon(&target.host) || target.neon_project.is_some();

    // wal_level
    if wal_level == "logical" {
        checks.push(check(
            "wal_level",
            "wal_level is logical",
            Status::Pass,
            "Logical decoding is on.".into(),
            None,
        ));
    } else {
        let fix = match (&target.neon_project, neon) {
            (Some(project), _) => Some(Action::NeonEnableLogicalReplication {
                project_id: project.clone(),
            }),
            (None, true) => None,
            (None, false) => Some(Action::SetWalLevel),
        };
        let explanation = if neon && target.neon_project.is_none() {
            format!("wal_level is '{wal_level}'. On Neon, logical replication is turned on for the project: link the profile to its Neon project (Settings needs a Neon API key) to do it from here, or use Project settings → Logical replication in the Neon Console.")
        } else {
            format!("wal_level is '{wal_level}'; logical decoding needs 'logical'.")
        };
        checks.push(check(
            "wal_level",
            "wal_level is logical",
            Status::Fail,
            explanation,
            fix,
        ));
    }

    // Replication right. On Neon nobody is superuser; a role made through its API belongs to
    // neon_superuser, which has REPLICATION.
    match &replication {
        ReplicationRight::None if neon => {
            let fix = match (&target.neon_project, &target.neon_branch) {
                (Some(project_id), Some(branch_id)) => Some(Action::NeonCreateRole {
                    project_id: project_id.clone(),
                    branch_id: branch_id.clone(),
                    role: NEON_REPLICATION_ROLE.into(),
                }),
                _ => None,
            };
            let how = if fix.is_some() {
                "Create a role through the Neon API (it belongs to neon_superuser, which has REPLICATION); Tidepool saves a profile for it."
            } else {
                "Link the profile to its Neon project to create one from here, or create a role in the Neon Console (Roles → Add role): roles made there belong to neon_superuser, which has REPLICATION."
            };
            checks.push(check(
                "replication",
                "The role may replicate",
                Status::Fail,
                format!("Role {} was created with SQL, so it is not in neon_superuser and may not replicate. {how}", ident(&user)),
                fix,
            ))
        }
        ReplicationRight::None => checks.push(check(
            "replication",
            "The role may replicate",
            Status::Fail,
            format!("Role {} has neither REPLICATION nor superuser, nor membership in a role with REPLICATION. Give it REPLICATION (needs a superuser), or create a dedicated replication role and use it in the profile.", ident(&user)),
            Some(Action::GrantReplication { role: user.clone() }),
        )),
        right => checks.push(check(
            "replication",
            "The role may replicate",
            Status::Pass,
            match right {
                ReplicationRight::Superuser => "The role is a superuser.".into(),
                ReplicationRight::Attribute => "The role has REPLICATION.".into(),
                ReplicationRight::Membership { role } => format!("The role is a member of {}, which has REPLICATION.", ident(role)),
                ReplicationRight::None => unreachable!("matched above"),
            },
            None,
        )),
    }

    // Slot and sender room
    let slot_row = client
        .query_opt(
            "SELECT plugin::text, database::text, active, active_pid, wal_status,
                    pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint,
                    pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint,
                    (SELECT a.application_name::text FROM pg_stat_activity a WHERE a.pid = s.active_pid)
               FROM pg_replication_slots s WHERE slot_name = $1",
            &[&target.slot],
        )
        .await
        .map_err(q)?;
    let free_slots = max_slots - used_slots;
    let free_senders = max_senders - used_senders;
    let (status, explanation) = if (slot_row.is_none() && free_slots <= 0) || free_senders <= 0 {
        (Status::Fail, format!("{used_slots} of max_replication_slots = {max_slots} slots and {used_senders} of max_wal_senders = {max_senders} senders are in use: there is no room for this capture. Drop unused slots or raise the settings (restart needed)."))
    } else if free_slots <= 1 || free_senders <= 1 {
        (Status::Warn, format!("{used_slots} of {max_slots} slots and {used_senders} of {max_senders} WAL senders are in use: a backfill added later needs one more temporary slot."))
    } else {
        (Status::Pass, format!("{used_slots} of {max_slots} slots and {used_senders} of {max_senders} WAL senders are in use."))
    };
    checks.push(check(
        "capacity",
        "Room for a slot and a WAL sender",
        status,
        explanation,
        None,
    ));

    // Tables: the given ones, else the publication's (and its insert-only companion's).
    let companion =
        crate::source::publication::insert_only_name(&target.publication).unwrap_or_default();
    let tables: Vec<(String, String)> = if target.tables.is_empty() {
        client
            .query(
                "SELECT DISTINCT schemaname::text, tablename::text FROM pg_publication_tables WHERE pubname IN ($1, $2) ORDER BY 1, 2",
                &[&target.publication, &companion],
            )
            .await
            .map_err(q)?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect()
    } else {
        target.tables.clone()
    };

    // Grants per schema
    let mut schemas: Vec<&str> = tables.iter().map(|(s, _)| s.as_str()).collect();
    schemas.sort_unstable();
    schemas.dedup();
    for schema in schemas {
        let in_schema: Vec<&str> = tables
            .iter()
            .filter(|(s, _)| s == schema)
            .map(|(_, t)| t.as_str())
            .collect();
        let grants = |e| {
            Error::from_postgres(
                &e,
                &format!("checking the grants on schema {}", ident(schema)),
            )
        };
        let usage: bool = client
            .query_one("SELECT has_schema_privilege($1::text, 'USAGE')", &[&schema])
            .await
            .map_err(grants)?
            .get(0);
        // Without USAGE, asking about a table in the schema is itself refused.
        let unreadable: Vec<String> = if usage {
            client
                .query_one(
                    "SELECT ARRAY(SELECT t FROM unnest($2::text[]) t
                                   WHERE NOT has_table_privilege(format('%I.%I', $1::text, t), 'SELECT'))",
                    &[&schema, &in_schema],
                )
                .await
                .map_err(grants)?
                .get(0)
        } else {
            Vec::new()
        };
        let id = format!("grants:{schema}");
        let title = format!("The role can read schema {}", ident(schema));
        if usage && unreadable.is_empty() {
            checks.push(check(
                &id,
                &title,
                Status::Pass,
                format!(
                    "USAGE on the schema and SELECT on its {} selected table(s).",
                    in_schema.len()
                ),
                None,
            ));
        } else {
            let what = if !usage {
                "has no USAGE on the schema".to_string()
            } else {
                format!(
                    "cannot SELECT from {}",
                    unreadable
                        .iter()
                        .map(|t| ident(t))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            };
            checks.push(check(
                &id,
                &title,
                Status::Fail,
                format!(
                    "Role {} {what}; the backfill reads the tables with this role.",
                    ident(&user)
                ),
                Some(Action::GrantSchemaAccess {
                    schema: schema.into(),
                    role: user.clone(),
                }),
            ));
        }
    }

    // Publication: exactly the tables asked for, never FOR ALL TABLES; a table whose writes
    // publishing would break is a choice the user makes in the fix (left out until then).
    let title = format!(
        "Publication {} exists with the tables",
        ident(&target.publication)
    );
    let exists = crate::source::publication::find(client, &target.publication)
        .await?
        .is_some();
    if tables.is_empty() {
        let explanation = if exists {
            format!("Publication {} publishes no table yet. Pick the tables to capture in Tables (Save and publish adds them), or pick them here with Fix.", ident(&target.publication))
        } else {
            format!("Publication {} does not exist; pgoutput sends only what a publication names. Pick the tables to capture in Tables (Save and publish creates it), or pick them here with Fix. Tidepool never publishes every table: a published table without a primary key would refuse updates and deletes.", ident(&target.publication))
        };
        checks.push(check(
            "publication",
            &title,
            Status::Fail,
            explanation,
            Some(Action::Publication {
                request: crate::source::publication::Request {
                    publication: target.publication.clone(),
                    tables: Vec::new(),
                    choices: Vec::new(),
                    all_tables: false,
                },
                statements: Vec::new(),
            }),
        ));
    } else {
        let request = crate::source::publication::Request {
            publication: target.publication.clone(),
            tables: tables
                .iter()
                .map(|(s, t)| crate::source::publication::TableRef::new(s, t))
                .collect(),
            choices: Vec::new(),
            all_tables: false,
        };
        let plan = crate::source::publication::plan(client, &request).await?;
        let undecided = plan.undecided().len();
        if exists && plan.statements.is_empty() && undecided == 0 {
            checks.push(check(
                "publication",
                &title,
                Status::Pass,
                format!("It publishes all {} table(s).", tables.len()),
                None,
            ));
        } else {
            let mut explanation = if !exists {
                format!(
                    "Publication {} does not exist; pgoutput sends only what a publication names.",
                    ident(&target.publication)
                )
            } else {
                "Some selected tables are not in the publication (or partitioned tables are not published through their root), so their changes would not arrive.".to_string()
            };
            if undecided > 0 {
                explanation.push_str(&format!(" {undecided} table(s) have no primary key or replica identity: publishing them as they are would make PostgreSQL refuse every UPDATE and DELETE on them, so the fix asks how to handle each (left out until you choose)."));
            }
            let mut fix = Fix::of(Action::Publication {
                request,
                statements: plan.statements.clone(),
            });
            fix.plan = Some(plan);
            checks.push(Check {
                id: "publication".into(),
                title,
                status: Status::Fail,
                explanation,
                fix: Some(fix),
            });
        }
    }

    // Slot
    let slot_title = format!("Slot {} is ready", ident(&target.slot));
    match slot_row {
        // A store that streamed from the slot cannot go on without it; creating another would not
        // bring back the changes in between (the capture refuses it as diverged).
        None if target.store_history == Some(true) => checks.push(check("slot", &slot_title, Status::Fail,
            format!("Slot {} no longer exists, but the capture has streamed from it: it was dropped (by hand, or by Neon after a long pause), and the changes made since the capture last ran are gone with it. Start the capture: it is refused as diverged, and \"Re-backfill and continue\" on the Capture tab then creates the slot again and backfills every table.", ident(&target.slot)),
            None)),
        // Not a failure: the capture's first start creates it with an exported snapshot and backfills
        // the tables in that snapshot. Creating it beforehand only holds WAL sooner, so no fix is
        // offered here.
        None => checks.push(check("slot", &slot_title, Status::Step,
            format!("Slot {} does not exist yet: it is created when the capture first starts (after Save and publish), with a snapshot that the selected tables are backfilled from first. Nothing to do here.", ident(&target.slot)),
            None)),
        Some(r) => {
            let plugin: String = r.get(0);
            let slot_db: Option<String> = r.get(1);
            let active: bool = r.get(2);
            let pid: Option<i32> = r.get(3);
            let wal_status: Option<String> = r.get(4);
            let retained: Option<i64> = r.get(5);
            let lag: Option<i64> = r.get(6);
            let holder: Option<String> = r.get(7);
            let pid = pid.map_or("?".into(), |p| p.to_string());
            let mib = |b: i64| b as f64 / 1_048_576.0;
            // Tidepool's own capture in this process holds it: the name is unique to that run.
            let own = active
                && target.running_capture.is_some()
                && holder.as_deref() == target.running_capture.as_deref();
            let drop = Some(Action::DropSlot { slot: target.slot.clone() });
            if plugin != "pgoutput" || slot_db.as_deref() != Some(database.as_str()) {
                checks.push(check("slot", &slot_title, Status::Fail,
                    format!("Slot {} uses plugin '{plugin}' on database '{}'; Tidepool needs pgoutput on '{database}'. It belongs to something else: choose another slot name, or drop it if it is stale.", ident(&target.slot), slot_db.unwrap_or_default()), drop));
            } else if wal_status.as_deref() == Some("lost") {
                checks.push(check("slot", &slot_title, Status::Fail,
                    format!("Slot {} was invalidated (wal_status = lost): the WAL it needed is gone. Drop it; the next Save and publish backfills again.", ident(&target.slot)), drop));
            } else if own {
                checks.push(check("slot", &slot_title, Status::Pass,
                    format!("In use by this app's capture (server process {pid}): pgoutput on '{database}', wal_status {}, {:.1} MiB of WAL retained.", wal_status.unwrap_or_else(|| "?".into()), mib(retained.unwrap_or(0))), None));
            } else if active {
                let by = holder
                    .filter(|name| !name.is_empty())
                    .map(|name| format!(" (application_name {})", crate::source::sql::literal(&name)))
                    .unwrap_or_default();
                checks.push(check("slot", &slot_title, Status::Fail,
                    format!("Slot {} is in use by server process {pid}{by}, which is not this app's capture: a slot serves one consumer at a time. Stop the other consumer (another Tidepool window or `tidepool capture` included), or choose another slot name.", ident(&target.slot)), None));
            } else {
                let retained = retained.unwrap_or(0);
                let lag = lag.unwrap_or(0);
                if retained > target.slot_warn_bytes.unwrap_or(LAG_WARN_BYTES) {
                    checks.push(check("slot", &slot_title, Status::Warn,
                        format!("Slot {} holds back {:.0} MiB of WAL ({:.0} MiB not yet confirmed). WAL piles up on the server until the capture catches up; on Neon an inactive slot is removed after a while. Start the capture, or drop the slot if it is stale.", ident(&target.slot), mib(retained), mib(lag)), drop));
                } else {
                    checks.push(check("slot", &slot_title, Status::Pass,
                        format!("pgoutput on '{database}', not in use, wal_status {}, {:.1} MiB of WAL retained.", wal_status.unwrap_or_else(|| "?".into()), mib(retained)), None));
                }
            }
        }
    }

    // Keys, replica identity, TOAST
    let refused = crate::source::publication::refused_now(client).await?;
    let insert_only: Vec<crate::source::publication::TableRef> =
        match crate::source::publication::find(client, &companion).await? {
            Some(info) if !info.updates_or_deletes => info
                .tables
                .iter()
                .map(|(s, t)| crate::source::publication::TableRef::new(s, t))
                .collect(),
            _ => Vec::new(),
        };
    for (schema, table) in &tables {
        let r = client
            .query_one(
                "SELECT c.relreplident::text,
                        EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary),
                        EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisreplident),
                        ARRAY(SELECT a.attname::text FROM pg_attribute a JOIN pg_type ty ON ty.oid = a.atttypid
                               WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND ty.typstorage <> 'p'
                               ORDER BY a.attnum)
                   FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                  WHERE n.nspname = $1 AND c.relname = $2",
                &[schema, table],
            )
            .await
            .map_err(q)?;
        let identity: String = r.get(0);
        let primary: bool = r.get(1);
        let identity_index: bool = r.get(2);
        let toastable: Vec<String> = r.get(3);
        let id = format!("replica_identity:{schema}.{table}");
        let title = format!("{}.{} identifies its rows", ident(schema), ident(table));
        let fix = Some(Action::ReplicaIdentityFull {
            schema: schema.clone(),
            table: table.clone(),
        });
        let keyed = (identity == "d" && primary) || (identity == "i" && identity_index);
        let relation = crate::source::publication::TableRef::new(schema, table);
        if refused.contains(&relation) {
            checks.push(check(&id, &title, Status::Fail,
                format!("PostgreSQL is refusing every UPDATE and DELETE on this table now: a publication that publishes updates and deletes covers it, and it has no primary key or usable replica identity (your application gets \"cannot update table {} because it does not have a replica identity and publishes updates\"). Fix: set REPLICA IDENTITY FULL (below), add a primary key, take it out of the publication (ALTER PUBLICATION … DROP TABLE {}), or publish only its inserts (the publication fix, inserts only).", ident(table), relation.quoted_name()),
                fix));
        } else if identity == "f" {
            checks.push(check(
                &id,
                &title,
                Status::Pass,
                "REPLICA IDENTITY FULL: updates and deletes carry the whole old row.".into(),
                None,
            ));
        } else if !keyed && insert_only.contains(&relation) {
            checks.push(check(&id, &title, Status::Warn,
                format!("No primary key or replica identity; published inserts-only (in {}): its UPDATEs and DELETEs keep working and are not captured. Set REPLICA IDENTITY FULL to capture them too.", ident(&companion)), fix));
        } else if !keyed {
            checks.push(check(&id, &title, Status::Fail,
                "No primary key and no replica identity index: publishing it with its updates and deletes would make PostgreSQL refuse every UPDATE and DELETE on it, and its changes cannot be reduced to rows. Add a primary key or set REPLICA IDENTITY FULL; or publish only its inserts, or leave it out (the publication fix asks).".into(), fix));
        } else if !toastable.is_empty() {
            checks.push(check(&id, &title, Status::Warn,
                format!("Keyed, but column(s) {} can be TOASTed: an update that leaves a large value unchanged does not carry it in the WAL. Tidepool fills it from the stored row; REPLICA IDENTITY FULL makes the WAL carry it.", toastable.iter().map(|c| ident(c)).collect::<Vec<_>>().join(", ")), fix));
        } else {
            checks.push(check(
                &id,
                &title,
                Status::Pass,
                "Keyed by its primary key (or replica identity index).".into(),
                None,
            ));
        }
    }
    Ok(checks)
}
