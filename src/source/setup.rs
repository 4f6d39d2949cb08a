//! Setup actions: the fixes preflight offers, each able to say exactly what it would run (SQL, or the
//! Neon API request) before it runs it.
//!
//! Invariants:
//! - [`Action::preview`] and [`Action::run`] come from the same statements, so what the user confirmed is
//!   what runs. Every identifier is quoted by [`crate::source::sql::ident`] and every literal by
//!   [`crate::source::sql::literal`]; nothing the user typed is pasted into SQL.
//! - A generated password is never part of a preview: the preview shows a placeholder, and the password
//!   goes from the generator straight into the OS keychain. The server is sent only its SCRAM-SHA-256
//!   verifier (as psql's `\password` does), so the password is in no statement the server may log
//!   (`log_statement`), no client debug log, and no error.
//! - Nothing is dropped without an explicit action that names it ([`Action::DropSlot`]).
//! - Each action says which rights it needs ([`Action::needs`]), and a SQL action can run as a role
//!   other than the profile's ([`RunAs`]): the guides have the database owner run the setup and the
//!   replication role only capture. An owner password entered for one run stays a [`Secret`] and is
//!   dropped after it.

use serde::{Deserialize, Serialize};
use tokio_postgres::Client;

use crate::error::{Error, Result};
use crate::secrets::Secret;
use crate::source::sql::{ident, literal};

/// A fix preflight can offer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ts_rs::TS)]
#[serde(
    tag = "action",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
#[ts(rename = "SetupAction")]
pub enum Action {
    /// `ALTER SYSTEM SET wal_level = logical` (takes effect after a restart).
    SetWalLevel,
    /// Gives an existing role the REPLICATION attribute.
    GrantReplication {
        /// The role.
        role: String,
    },
    /// Creates a login role with REPLICATION and a generated password (kept in the keychain).
    CreateReplicationRole {
        /// The new role.
        role: String,
    },
    /// The guide's three GRANTs for one schema.
    GrantSchemaAccess {
        /// The schema.
        schema: String,
        /// The role to grant to.
        role: String,
    },
    /// Creates the publication or adds tables to it: exactly the tables of `request`, each table
    /// without a usable replica identity handled as the request says. Running it plans again and
    /// refuses when the server would now run anything but `statements` (what the user saw), or when
    /// a table's writes would be refused.
    Publication {
        /// The tables and the choices.
        request: crate::source::publication::Request,
        /// The statements previewed (from [`crate::source::publication::plan`]).
        statements: Vec<String>,
    },
    /// Creates a pgoutput slot.
    CreateSlot {
        /// The slot.
        slot: String,
    },
    /// Drops a slot (after the user confirmed it is stale or foreign).
    DropSlot {
        /// The slot.
        slot: String,
    },
    /// `ALTER TABLE … REPLICA IDENTITY FULL`.
    ReplicaIdentityFull {
        /// Schema.
        schema: String,
        /// Table.
        table: String,
    },
    /// Neon: turns on logical replication for the project (cannot be undone; restarts its computes).
    NeonEnableLogicalReplication {
        /// The Neon project.
        project_id: String,
    },
    /// Neon: creates a role through the API (such roles belong to `neon_superuser`, which has
    /// REPLICATION); Neon returns its password once, and it goes to the keychain with a new profile.
    NeonCreateRole {
        /// The Neon project.
        project_id: String,
        /// The branch.
        branch_id: String,
        /// The new role.
        role: String,
    },
    /// Neon: reads a role's password into the keychain (for a profile whose password is missing).
    NeonRevealPassword {
        /// The Neon project.
        project_id: String,
        /// The branch.
        branch_id: String,
        /// The role (the profile's user).
        role: String,
    },
    /// Neon: gives a role a new password, kept in the keychain; clients using the old one stop working.
    NeonResetPassword {
        /// The Neon project.
        project_id: String,
        /// The branch.
        branch_id: String,
        /// The role (the profile's user).
        role: String,
    },
}

/// Who runs a SQL fix. The statements are the same whoever runs them; only the login differs.
#[derive(Debug, Clone, Default, Deserialize, ts_rs::TS)]
#[serde(
    tag = "kind",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum RunAs {
    /// The profile's own role (the capture role).
    #[default]
    Profile,
    /// Another saved profile, typically the database owner's, for the same host, port and database.
    OtherProfile {
        /// Its id or name.
        profile: String,
    },
    /// A role whose password is entered for this one run and not kept; it logs in with the
    /// profile's host, port, database and TLS settings.
    Password {
        /// The role.
        user: String,
        /// Its password, dropped after the run.
        password: Secret,
    },
}

/// Where a generated password goes in a preview.
pub const PASSWORD_PLACEHOLDER: &str = "'<generated password, stored in the OS keychain>'";

impl Action {
    /// Whether it goes through the Neon API rather than SQL.
    pub fn is_neon(&self) -> bool {
        matches!(
            self,
            Action::NeonEnableLogicalReplication { .. }
                | Action::NeonCreateRole { .. }
                | Action::NeonRevealPassword { .. }
                | Action::NeonResetPassword { .. }
        )
    }

    /// What it would run, as SQL statements or one HTTP request line with its JSON body.
    pub fn preview(&self) -> Vec<String> {
        let role_path = |project: &str, branch: &str| {
            format!(
                "/api/v2/projects/{}/branches/{}/roles",
                crate::source::neon::segment(project),
                crate::source::neon::segment(branch)
            )
        };
        match self {
            Action::NeonEnableLogicalReplication { project_id } => vec![format!(
                "PATCH /api/v2/projects/{} {}",
                crate::source::neon::segment(project_id),
                crate::source::neon::enable_logical_replication_body()
            )],
            Action::NeonCreateRole {
                project_id,
                branch_id,
                role,
            } => vec![format!(
                "POST {} {}",
                role_path(project_id, branch_id),
                serde_json::json!({"role": {"name": role}})
            )],
            Action::NeonRevealPassword {
                project_id,
                branch_id,
                role,
            } => vec![format!(
                "GET {}/{}/reveal_password",
                role_path(project_id, branch_id),
                crate::source::neon::segment(role)
            )],
            Action::NeonResetPassword {
                project_id,
                branch_id,
                role,
            } => vec![format!(
                "POST {}/{}/reset_password",
                role_path(project_id, branch_id),
                crate::source::neon::segment(role)
            )],
            Action::CreateReplicationRole { role } => vec![format!(
                "CREATE ROLE {} WITH LOGIN REPLICATION PASSWORD {PASSWORD_PLACEHOLDER}",
                ident(role)
            )],
            other => other.statements(),
        }
    }

    /// The rights the role that runs it needs (PostgreSQL 15's rules; where a later version or Neon
    /// differs, that too), for a person choosing who runs it.
    pub fn needs(&self) -> &'static str {
        match self {
            Action::SetWalLevel => {
                "a superuser (or a role granted ALTER SYSTEM on wal_level)"
            }
            Action::GrantReplication { .. } => {
                "a superuser (PostgreSQL 16 and later: CREATEROLE with ADMIN OPTION on the role, and \
                 REPLICATION itself; on Neon, the database owner)"
            }
            Action::CreateReplicationRole { .. } => {
                "a superuser (PostgreSQL 16 and later: CREATEROLE and REPLICATION; on Neon, the \
                 database owner)"
            }
            Action::GrantSchemaAccess { .. } => {
                "the owner of the schema and of its tables (or a superuser); the default privileges \
                 it sets cover the tables that role creates later"
            }
            Action::Publication { .. } => {
                "the owner of the tables, with CREATE on the database (or a superuser); adding to an \
                 existing publication, its owner too"
            }
            Action::CreateSlot { .. } | Action::DropSlot { .. } => {
                "REPLICATION (or a superuser)"
            }
            Action::ReplicaIdentityFull { .. } => "the owner of the table (or a superuser)",
            Action::NeonEnableLogicalReplication { .. }
            | Action::NeonCreateRole { .. }
            | Action::NeonRevealPassword { .. }
            | Action::NeonResetPassword { .. } => {
                "a Neon API key with access to the project (kept in the OS keychain)"
            }
        }
    }

    /// `err` from running this action as role `user`, with what to do when it is a refusal for lack
    /// of rights: as the profile's own role (`own`), run it as an owner; as another role, which
    /// rights that role lacks. Any other error unchanged.
    pub fn explain_refusal(&self, err: Error, own: bool, user: &str) -> Error {
        if err.kind() != crate::error::ErrorKind::Permission {
            err
        } else if own {
            err.with_advice(format!(
                "this fix needs {}. Run it as the owner instead: as another saved profile (typically \
                 the database owner's) or with the owner's password, entered once and not kept \
                 (command line: --as <profile> or --as-user <role>)",
                self.needs()
            ))
        } else {
            err.with_advice(format!(
                "this fix needs {}, which role '{user}' lacks",
                self.needs()
            ))
        }
    }

    /// What needs confirming beyond the statements themselves.
    pub fn warning(&self) -> Option<&'static str> {
        match self {
            Action::SetWalLevel => Some("Takes effect only after PostgreSQL restarts; needs a superuser."),
            Action::NeonEnableLogicalReplication { .. } => Some(
                "Cannot be undone: wal_level becomes logical for every database of the project, and all of \
                 its computes restart, dropping open connections.",
            ),
            Action::NeonResetPassword { .. } => Some(
                "Every client that uses the role's current password stops connecting until it gets the new \
                 one (Tidepool keeps the new one in the OS keychain).",
            ),
            Action::NeonCreateRole { .. } => Some(
                "The role's password is shown by Neon only once: Tidepool puts it straight into the OS \
                 keychain with a new profile for the role.",
            ),
            Action::CreateSlot { .. } => Some(
                "Creates the slot now, holding WAL from this moment until a capture reads it. A capture's first \
                 start creates the slot itself, with the snapshot it backfills from; on a slot created \
                 beforehand it reads the tables in a snapshot of its own instead, alongside the stream.",
            ),
            Action::DropSlot { .. } => Some(
                "Whoever streams from this slot loses their position: they must start over with a new backfill.",
            ),
            Action::ReplicaIdentityFull { .. } => Some(
                "Every update and delete then writes the whole old row to the WAL: more WAL, more network, \
                 in exchange for complete before-images and unchanged TOAST values.",
            ),
            _ => None,
        }
    }

    fn statements(&self) -> Vec<String> {
        match self {
            Action::SetWalLevel => vec!["ALTER SYSTEM SET wal_level = logical".into()],
            Action::GrantReplication { role } => {
                vec![format!("ALTER ROLE {} WITH REPLICATION", ident(role))]
            }
            Action::GrantSchemaAccess { schema, role } => vec![
                format!("GRANT USAGE ON SCHEMA {} TO {}", ident(schema), ident(role)),
                format!(
                    "GRANT SELECT ON ALL TABLES IN SCHEMA {} TO {}",
                    ident(schema),
                    ident(role)
                ),
                format!(
                    "ALTER DEFAULT PRIVILEGES IN SCHEMA {} GRANT SELECT ON TABLES TO {}",
                    ident(schema),
                    ident(role)
                ),
            ],
            Action::Publication { statements, .. } => statements.clone(),
            Action::CreateSlot { slot } => vec![format!(
                "SELECT pg_create_logical_replication_slot({}, 'pgoutput')",
                literal(slot)
            )],
            Action::DropSlot { slot } => {
                vec![format!(
                    "SELECT pg_drop_replication_slot({})",
                    literal(slot)
                )]
            }
            Action::ReplicaIdentityFull { schema, table } => vec![format!(
                "ALTER TABLE {}.{} REPLICA IDENTITY FULL",
                ident(schema),
                ident(table)
            )],
            Action::CreateReplicationRole { .. }
            | Action::NeonEnableLogicalReplication { .. }
            | Action::NeonCreateRole { .. }
            | Action::NeonRevealPassword { .. }
            | Action::NeonResetPassword { .. } => Vec::new(),
        }
    }

    /// Runs a SQL action on `client`. A new role's password is generated here and returned, for the
    /// caller to put in the keychain; Neon actions go through [`crate::source::neon::Client`] instead.
    pub async fn run(&self, client: &Client) -> Result<Option<Secret>> {
        let (statements, password) = match self {
            neon if neon.is_neon() => {
                return Err(Error::invalid_input(
                    "action",
                    "a Neon action runs through the Neon API, not SQL",
                ))
            }
            Action::CreateReplicationRole { role } => {
                let password = Secret::new(crate::secrets::random_hex(24)?);
                let statement = format!(
                    "CREATE ROLE {} WITH LOGIN REPLICATION PASSWORD {}",
                    ident(role),
                    literal(&password.scram_verifier())
                );
                (vec![statement], Some(password))
            }
            Action::Publication {
                request,
                statements,
            } => {
                if request.tables.is_empty() && !request.all_tables {
                    return Err(Error::invalid_input(
                        "tables",
                        "pick the tables to publish first",
                    ));
                }
                crate::source::publication::apply_previewed(client, request, statements).await?;
                return Ok(None);
            }
            other => (other.statements(), None),
        };
        for statement in &statements {
            client.batch_execute(statement).await.map_err(|e| {
                // The statement is named only when it carries no password.
                let what = if password.is_some() {
                    "creating the replication role".to_string()
                } else {
                    statement.clone()
                };
                Error::from_postgres(&e, &what)
            })?;
        }
        if let Action::GrantSchemaAccess { schema, role } = self {
            granted(client, schema, role).await?;
        }
        Ok(password)
    }

    /// Runs a Neon action through the API. A password Neon hands back (a new role's, a revealed or
    /// reset one) is returned for the caller to put in the keychain.
    pub async fn run_neon(&self, neon: &crate::source::neon::Client) -> Result<Option<Secret>> {
        match self {
            Action::NeonEnableLogicalReplication { project_id } => {
                neon.enable_logical_replication(project_id).await?;
                Ok(None)
            }
            Action::NeonCreateRole {
                project_id,
                branch_id,
                role,
            } => Ok(Some(neon.create_role(project_id, branch_id, role).await?)),
            Action::NeonRevealPassword {
                project_id,
                branch_id,
                role,
            } => Ok(Some(
                neon.reveal_password(project_id, branch_id, role).await?,
            )),
            Action::NeonResetPassword {
                project_id,
                branch_id,
                role,
            } => Ok(Some(
                neon.reset_password(project_id, branch_id, role).await?,
            )),
            _ => Err(Error::invalid_input(
                "action",
                "a SQL action runs on the database, not through the Neon API",
            )),
        }
    }
}

/// Whether `role` can now use `schema` and read its tables. A GRANT by a role that holds a right
/// without its grant option only warns ("no privileges were granted") and succeeds, so a fix run as
/// the wrong "owner" would otherwise look done.
async fn granted(client: &Client, schema: &str, role: &str) -> Result<()> {
    let row = client
        .query_one(
            "SELECT has_schema_privilege($2::text::name, n.oid, 'USAGE'),
                    ARRAY(SELECT c.relname::text FROM pg_class c
                           WHERE c.relnamespace = n.oid AND c.relkind IN ('r', 'p')
                             AND NOT has_table_privilege($2::text::name, c.oid, 'SELECT')
                           ORDER BY 1)
               FROM pg_namespace n WHERE n.nspname = $1",
            &[&schema, &role],
        )
        .await
        .map_err(|e| {
            Error::from_postgres(
                &e,
                &format!("checking the grants on schema {}", ident(schema)),
            )
        })?;
    let usage: bool = row.get(0);
    let unreadable: Vec<String> = row.get(1);
    if usage && unreadable.is_empty() {
        return Ok(());
    }
    let what = if usage {
        format!(
            "cannot SELECT from {}",
            unreadable
                .iter()
                .map(|t| ident(t))
                .collect::<Vec<_>>()
                .join(", ")
        )
    } else {
        "has no USAGE on it".to_string()
    };
    Err(Error::new(
        crate::error::ErrorKind::Permission,
        format!(
            "schema {}: the grants ran, but role {} still {what}: PostgreSQL granted nothing it only warned about, because the role that ran them neither owns these objects nor holds the rights WITH GRANT OPTION",
            ident(schema),
            ident(role)
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn previews_quote_every_name_and_never_show_a_password() {
        let hostile = "we\"ird; DROP TABLE x; --";
        let grant = Action::GrantSchemaAccess {
            schema: "Sales Dept".into(),
            role: hostile.into(),
        };
        assert_eq!(
            grant.preview(),
            vec![
                "GRANT USAGE ON SCHEMA \"Sales Dept\" TO \"we\"\"ird; DROP TABLE x; --\"",
                "GRANT SELECT ON ALL TABLES IN SCHEMA \"Sales Dept\" TO \"we\"\"ird; DROP TABLE x; --\"",
                "ALTER DEFAULT PRIVILEGES IN SCHEMA \"Sales Dept\" GRANT SELECT ON TABLES TO \"we\"\"ird; DROP TABLE x; --\"",
            ]
        );
        let slot = Action::CreateSlot {
            slot: "o'brien".into(),
        };
        assert_eq!(
            slot.preview(),
            vec!["SELECT pg_create_logical_replication_slot('o''brien', 'pgoutput')"]
        );
        let role = Action::CreateReplicationRole { role: "cdc".into() };
        assert_eq!(
            role.preview(),
            vec![format!(
                "CREATE ROLE \"cdc\" WITH LOGIN REPLICATION PASSWORD {PASSWORD_PLACEHOLDER}"
            )]
        );
    }

    #[test]
    fn run_as_travels_as_tagged_json_and_never_shows_the_password() {
        let run_as: RunAs = serde_json::from_str(
            r#"{"kind":"password","user":"neondb_owner","password":"hunter2-owner"}"#,
        )
        .unwrap();
        assert!(matches!(&run_as, RunAs::Password { user, .. } if user == "neondb_owner"));
        assert!(!format!("{run_as:?}").contains("hunter2-owner"));
        let other: RunAs =
            serde_json::from_str(r#"{"kind":"otherProfile","profile":"Owner"}"#).unwrap();
        assert!(matches!(other, RunAs::OtherProfile { profile } if profile == "Owner"));
        assert!(matches!(
            serde_json::from_str::<RunAs>(r#"{"kind":"profile"}"#).unwrap(),
            RunAs::Profile
        ));
    }

    #[test]
    fn actions_travel_as_tagged_json() {
        let action: Action = serde_json::from_str(
            r#"{"action":"replicaIdentityFull","schema":"public","table":"t"}"#,
        )
        .unwrap();
        assert_eq!(
            action,
            Action::ReplicaIdentityFull {
                schema: "public".into(),
                table: "t".into()
            }
        );
        assert!(action.warning().is_some());
    }
}
