//! `tidepool check` and `tidepool setup`: the preflight checks and their fixes, each shown (SQL or
//! Neon API call, and the role it runs as) before it runs. With `--profile`, a fix runs through
//! the engine's `Profiles::run_fix_with`, the app's own code.

use super::*;

/// How each table without a usable replica identity is published: without a choice, publishing
/// such a table would make PostgreSQL refuse every UPDATE and DELETE on it, so it is refused.
#[derive(Args, Clone, Default)]
pub(super) struct Keyless {
    /// schema.table=leave-out|replica-identity-full|insert-only, for a table with no primary key or
    /// replica identity (repeatable).
    #[arg(long = "keyless", value_name = "TABLE=CHOICE")]
    pub(super) choices: Vec<String>,
}

impl Keyless {
    pub(super) fn parse(&self) -> Result<Vec<tidepool::source::publication::Choice>, Error> {
        use tidepool::source::publication::{Choice, Handling};
        self.choices
            .iter()
            .map(|pair| {
                let (table, choice) = pair.rsplit_once('=').ok_or_else(|| {
                    Error::invalid_input(
                        "--keyless",
                        format!("'{pair}' is not schema.table=choice"),
                    )
                })?;
                let (schema, table) = tidepool::capture::backfill::parse_table_name(table)?;
                let handling = match choice {
                    "leave-out" => Handling::LeaveOut,
                    "replica-identity-full" | "full" => Handling::ReplicaIdentityFull,
                    "insert-only" => Handling::InsertOnly,
                    other => {
                        return Err(Error::invalid_input(
                            "--keyless",
                            format!(
                                "'{other}' is not leave-out, replica-identity-full or insert-only"
                            ),
                        ))
                    }
                };
                Ok(Choice {
                    schema,
                    table,
                    handling,
                })
            })
            .collect()
    }
}

/// Prints what a publication plan does with each table that has no usable replica identity.
pub(super) fn print_notes(plan: &tidepool::source::publication::Plan) {
    for note in &plan.notes {
        eprintln!("note: {note}");
    }
}

/// The publication, slot and tables the checks and fixes are about.
#[derive(Args)]
pub(super) struct Scope {
    /// Publication (default: the profile's, else tidepool_publication).
    #[arg(long)]
    pub(super) publication: Option<String>,
    /// Slot (default: the profile's, else tidepool_slot).
    #[arg(long)]
    pub(super) slot: Option<String>,
    /// Tables to capture, schema.table,… (default: the publication's).
    #[arg(long, value_delimiter = ',')]
    pub(super) tables: Vec<String>,
    /// The Neon project the database belongs to (enables the Neon fixes; default: the profile's link).
    #[arg(long)]
    pub(super) neon_project: Option<String>,
    /// The Neon branch (default: the profile's link).
    #[arg(long)]
    pub(super) neon_branch: Option<String>,
}

#[derive(Subcommand)]
pub(super) enum SetupCommand {
    /// ALTER SYSTEM SET wal_level = logical (then restart PostgreSQL).
    WalLevel,
    /// Gives a role REPLICATION.
    GrantReplication {
        /// The role (default: the connecting one).
        #[arg(long)]
        role: Option<String>,
    },
    /// Creates a replication role with a generated password, saved with a new profile in the keychain.
    CreateRole {
        /// The new role.
        #[arg(long)]
        role: String,
        /// The name of the new profile that uses it (with --profile, by default that profile's
        /// name followed by the role in parentheses; with --url, required).
        #[arg(long)]
        save_as: Option<String>,
    },
    /// The three GRANTs of the setup guide for one schema.
    GrantSchema {
        /// The schema.
        #[arg(long)]
        schema: String,
        /// The role (default: the connecting one).
        #[arg(long)]
        role: Option<String>,
    },
    /// Creates the publication or adds exactly --tables to it (never FOR ALL TABLES).
    Publication {
        #[command(flatten)]
        keyless: Keyless,
        /// FOR ALL TABLES instead of --tables; refused while a table without a usable replica
        /// identity has no --keyless schema.table=replica-identity-full.
        #[arg(long)]
        all_tables: bool,
    },
    /// Creates the slot (pgoutput).
    CreateSlot,
    /// Drops the slot: its consumer loses its position.
    DropSlot {
        /// Confirms the slot may go.
        #[arg(long)]
        confirm: bool,
    },
    /// ALTER TABLE … REPLICA IDENTITY FULL.
    ReplicaIdentityFull {
        /// schema.table
        #[arg(long)]
        table: String,
    },
    /// Neon: turns on logical replication for --neon-project (cannot be undone; restarts computes).
    NeonLogicalReplication {
        /// Confirms the restart and that it cannot be undone.
        #[arg(long)]
        confirm: bool,
    },
    /// Neon: creates a role through the API (it may replicate); its password goes to the keychain
    /// with a new profile. Needs --profile linked to a Neon project (or --neon-project/--neon-branch).
    NeonCreateRole {
        /// The new role.
        #[arg(long)]
        role: String,
    },
    /// Neon: reads the profile's role password from the API into the keychain.
    NeonRevealPassword,
    /// Neon: resets the profile's role password; the new one goes to the keychain.
    NeonResetPassword {
        /// Confirms that clients using the old password stop connecting.
        #[arg(long)]
        confirm: bool,
    },
}

/// The Neon project and branch the fix acts on, or an error naming the flags to give.
pub(super) fn neon_branch_of(
    target: &tidepool::source::preflight::Target,
) -> Result<(String, String), Error> {
    match (&target.neon_project, &target.neon_branch) {
        (Some(project), Some(branch)) => Ok((project.clone(), branch.clone())),
        _ => Err(Error::invalid_input(
            "--neon-project",
            "link the profile (`tidepool neon link --profile …`) or give --neon-project and --neon-branch",
        )),
    }
}

/// The preflight target for the command line's scope.
pub(super) fn preflight_target(
    target: &Target,
    spec: &ConnectionSpec,
    scope: &Scope,
) -> Result<tidepool::source::preflight::Target, Error> {
    let (publication, slot) =
        publication_and_slot(target, scope.publication.clone(), scope.slot.clone())?;
    let link = match &target.profile {
        Some(name) => engine()?.profiles().get(name)?.neon,
        None => None,
    };
    Ok(tidepool::source::preflight::Target {
        host: spec.host.clone(),
        publication,
        slot,
        tables: scope
            .tables
            .iter()
            .map(|t| tidepool::capture::backfill::parse_table_name(t))
            .collect::<Result<_, _>>()?,
        neon_project: scope
            .neon_project
            .clone()
            .or_else(|| link.as_ref().map(|l| l.project_id.clone())),
        neon_branch: scope
            .neon_branch
            .clone()
            .or_else(|| link.as_ref().map(|l| l.branch_id.clone())),
        slot_warn_bytes: None,
        // No capture runs in this process, and `check` has no store to ask.
        running_capture: None,
        store_history: None,
    })
}

/// Prints the server's facts and the preflight checklist; returns whether a check failed.
pub(super) async fn check(target: &Target, json: bool, scope: &Scope) -> Result<bool, Error> {
    let spec = spec_for(target)?;
    let preflight = preflight_target(target, &spec, scope)?;
    let facts = connection::test_connection(&spec)
        .await
        .map_err(|e| e.in_neon_project(preflight.neon_project.as_deref()))?;
    let client = connection::connect(&spec).await?;
    let mut checks = tidepool::source::preflight::run(&client, &preflight).await?;
    if let Some(project) = &preflight.neon_project {
        let neon = tokio::task::spawn_blocking(tidepool::source::neon::Client::from_keychain)
            .await
            .map_err(Error::internal)?;
        checks.push(tidepool::source::preflight::neon_ip_allow(neon, project).await);
    }
    let failed = checks
        .iter()
        .any(|c| c.status == tidepool::source::preflight::Status::Fail);
    if json {
        let mut value = serde_json::to_value(&facts).map_err(Error::internal)?;
        value["checks"] = serde_json::to_value(&checks).map_err(Error::internal)?;
        println!(
            "{}",
            serde_json::to_string_pretty(&value).map_err(Error::internal)?
        );
    } else {
        print!("{}", render_facts(&facts));
        println!();
        for c in &checks {
            let mark = match c.status {
                tidepool::source::preflight::Status::Pass => "pass",
                tidepool::source::preflight::Status::Warn => "WARN",
                tidepool::source::preflight::Status::Fail => "FAIL",
                tidepool::source::preflight::Status::Step => "step",
            };
            println!("[{mark}] {}: {}", c.title, c.explanation);
            if let Some(fix) = &c.fix {
                for line in &fix.preview {
                    println!("       fix: {line}");
                }
                for note in fix.plan.iter().flat_map(|p| &p.notes) {
                    println!("       note: {note}");
                }
            }
        }
    }
    Ok(failed)
}

/// `setup`'s `--as` / `--as-user`: who runs the fix, when not the connecting role.
pub(super) struct RunAsFlag {
    pub(super) profile: Option<String>,
    pub(super) user: Option<String>,
}

impl RunAsFlag {
    /// The role the fix runs as, for the preview.
    pub(super) fn role(&self, connecting: &str) -> Result<String, Error> {
        Ok(match (&self.profile, &self.user) {
            (Some(name), _) => engine()?.profiles().get(name)?.user,
            (None, Some(user)) => user.clone(),
            (None, None) => connecting.to_string(),
        })
    }

    /// Resolves it, reading `--as-user`'s password now (never from an argument or the environment).
    pub(super) fn resolve(&self) -> Result<tidepool::source::setup::RunAs, Error> {
        use tidepool::source::setup::RunAs;
        Ok(match (&self.profile, &self.user) {
            (Some(name), _) => RunAs::OtherProfile {
                profile: name.clone(),
            },
            (None, Some(user)) => RunAs::Password {
                user: user.clone(),
                password: read_secret(
                    &format!("Password for role {user}: "),
                    "--as-user password",
                )?,
            },
            (None, None) => RunAs::Profile,
        })
    }
}

/// A secret typed at the terminal (not echoed), or one line of standard input when it is not one.
pub(super) fn read_secret(prompt: &str, what: &str) -> Result<Secret, Error> {
    let text = if std::io::stdin().is_terminal() {
        rpassword::prompt_password(prompt)
            .map_err(|e| Error::invalid_input(what, format!("reading it: {e}")))?
    } else {
        let mut line = String::new();
        std::io::stdin()
            .read_line(&mut line)
            .map_err(|e| Error::invalid_input(what, format!("reading it: {e}")))?;
        line.truncate(line.trim_end_matches(['\r', '\n']).len());
        line
    };
    Ok(Secret::new(text))
}

pub(super) async fn setup(
    target: &Target,
    scope: &Scope,
    dry_run: bool,
    run_as: &RunAsFlag,
    command: SetupCommand,
) -> Result<(), Error> {
    use tidepool::source::setup::Action;
    let spec = spec_for(target)?;
    let preflight = preflight_target(target, &spec, scope)?;
    let connecting = spec.user.clone();
    let mut save_as = None;
    let action = match command {
        SetupCommand::WalLevel => Action::SetWalLevel,
        SetupCommand::GrantReplication { role } => Action::GrantReplication {
            role: role.unwrap_or(connecting),
        },
        SetupCommand::CreateRole {
            role,
            save_as: name,
        } => {
            if name.is_none() && (target.profile.is_none() || target.url.is_some()) {
                // Without a profile to name it after, the new password would have nowhere to go.
                return Err(Error::invalid_input(
                    "--save-as",
                    "name the profile that keeps the new role's password",
                ));
            }
            save_as = name;
            Action::CreateReplicationRole { role }
        }
        SetupCommand::GrantSchema { schema, role } => Action::GrantSchemaAccess {
            schema,
            role: role.unwrap_or(connecting),
        },
        SetupCommand::Publication {
            keyless,
            all_tables,
        } => {
            if all_tables && !preflight.tables.is_empty() {
                return Err(Error::invalid_input(
                    "--all-tables",
                    "give either --tables or --all-tables, not both",
                ));
            }
            if !all_tables && preflight.tables.is_empty() {
                return Err(Error::invalid_input(
                    "--tables",
                    "name the tables to publish, or give --all-tables (a published table without a usable replica identity refuses updates and deletes, so every one is checked first)",
                ));
            }
            let client = connection::connect(&spec).await?;
            let request = tidepool::source::publication::Request {
                publication: preflight.publication.clone(),
                tables: preflight
                    .tables
                    .iter()
                    .map(|(s, t)| tidepool::source::publication::TableRef::new(s, t))
                    .collect(),
                choices: keyless.parse()?,
                all_tables,
            };
            let plan = tidepool::source::publication::plan(&client, &request).await?;
            print_notes(&plan);
            if !dry_run {
                // Before anything is printed as if it ran: the choice is the user's.
                plan.ensure_decided().map_err(|e| {
                    let flag = if all_tables {
                        "add --keyless schema.table=replica-identity-full for each, or use --tables"
                    } else {
                        "add --keyless schema.table=leave-out|replica-identity-full|insert-only for each"
                    };
                    Error::invalid_input("--keyless", format!("{}: {flag}", e.message()))
                })?;
            }
            Action::Publication {
                request,
                statements: plan.statements,
            }
        }
        SetupCommand::CreateSlot => Action::CreateSlot {
            slot: preflight.slot.clone(),
        },
        SetupCommand::DropSlot { confirm } => {
            if !confirm && !dry_run {
                return Err(Error::invalid_input(
                    "--confirm",
                    "dropping a slot loses its consumer's position; add --confirm",
                ));
            }
            Action::DropSlot {
                slot: preflight.slot.clone(),
            }
        }
        SetupCommand::ReplicaIdentityFull { table } => {
            let (schema, table) = tidepool::capture::backfill::parse_table_name(&table)?;
            Action::ReplicaIdentityFull { schema, table }
        }
        SetupCommand::NeonLogicalReplication { confirm } => {
            let project_id = preflight
                .neon_project
                .clone()
                .ok_or_else(|| Error::invalid_input("--neon-project", "name the Neon project"))?;
            if !confirm && !dry_run {
                return Err(Error::invalid_input(
                    "--confirm",
                    "this cannot be undone and restarts the project's computes; add --confirm",
                ));
            }
            Action::NeonEnableLogicalReplication { project_id }
        }
        SetupCommand::NeonCreateRole { role } => {
            let (project_id, branch_id) = neon_branch_of(&preflight)?;
            Action::NeonCreateRole {
                project_id,
                branch_id,
                role,
            }
        }
        SetupCommand::NeonRevealPassword => {
            let (project_id, branch_id) = neon_branch_of(&preflight)?;
            Action::NeonRevealPassword {
                project_id,
                branch_id,
                role: connecting,
            }
        }
        SetupCommand::NeonResetPassword { confirm } => {
            if !confirm && !dry_run {
                return Err(Error::invalid_input(
                    "--confirm",
                    "clients using the current password stop connecting; add --confirm",
                ));
            }
            let (project_id, branch_id) = neon_branch_of(&preflight)?;
            Action::NeonResetPassword {
                project_id,
                branch_id,
                role: connecting,
            }
        }
    };
    let own = run_as.profile.is_none() && run_as.user.is_none();
    if !own && action.is_neon() {
        return Err(Error::invalid_input(
            "--as",
            "a Neon action runs through the Neon API with its key, not as a database role",
        ));
    }
    if let Some(warning) = action.warning() {
        eprintln!("note: {warning}");
    }
    let role = run_as.role(&spec.user)?;
    eprintln!("runs as role {role}; it needs {}", action.needs());
    for line in action.preview() {
        println!("{line}");
    }
    if dry_run {
        return Ok(());
    }
    if let (Some(name), None) = (&target.profile, &target.url) {
        // A saved profile: the app's own fix code runs it and keeps whatever password comes back.
        let engine = engine()?;
        let profiles = engine.profiles();
        let created = match &action {
            Action::CreateReplicationRole { role } | Action::NeonCreateRole { role, .. } => {
                Some(role.clone())
            }
            _ => None,
        };
        let options = tidepool::app::profile::FixOptions {
            // The connection made above: its typed password and its tunnel serve the fix too.
            connection: Some(spec),
            new_profile_name: save_as,
        };
        profiles
            .run_fix_with(name, action, run_as.resolve()?, options)
            .await?;
        if let Some(role) = created {
            eprintln!("created role {role}; its password is in the keychain with a new profile");
        }
        eprintln!("done");
        return Ok(());
    }
    if let Action::NeonEnableLogicalReplication { project_id } = &action {
        engine()?
            .profiles()
            .neon_client()
            .await?
            .enable_logical_replication(project_id)
            .await?;
        eprintln!("logical replication is on for Neon project {project_id}");
        return Ok(());
    }
    if action.is_neon() {
        // A password Neon returns must land in a profile's keychain entry.
        return Err(Error::invalid_input(
            "--profile",
            "a Neon role action keeps the password with a saved profile",
        ));
    }
    let run_spec = engine()?
        .profiles()
        .spec_to_run_as(spec.clone(), run_as.resolve()?)?;
    let ran = async { action.run(&connection::connect(&run_spec).await?).await }.await;
    drop(run_spec);
    let password = ran.map_err(|e| action.explain_refusal(e, own, &role))?;
    if let (Some(password), Some(name), Action::CreateReplicationRole { role }) =
        (password, save_as, &action)
    {
        // Only a URL to start from: the new profile is that address, logging in as the new role.
        let draft = ProfileDraft {
            name: name.clone(),
            address: format!("{}:{}", spec.host, spec.port),
            user: role.clone(),
            database: spec.database.clone(),
            sslmode: spec.sslmode,
            sslrootcert: spec.sslrootcert.as_ref().map(|p| p.display().to_string()),
            publication: Some(preflight.publication.clone()),
            slot: Some(preflight.slot.clone()),
            password_storage: PasswordStorage::Keychain,
            ..ProfileDraft::default()
        };
        engine()?.profiles().save(None, draft, Some(password))?;
        eprintln!(
            "created role {role}; its password is in the keychain with the new profile '{name}'"
        );
    }
    eprintln!("done");
    Ok(())
}

pub(super) fn render_facts(facts: &ServerFacts) -> String {
    let replication = match &facts.replication {
        ReplicationRight::Superuser => "yes (superuser)".to_string(),
        ReplicationRight::Attribute => "yes (REPLICATION attribute)".to_string(),
        ReplicationRight::Membership { role } => {
            format!("yes (member of {role}, which has REPLICATION)")
        }
        ReplicationRight::None => {
            "no: grant it with ALTER ROLE … REPLICATION, or use a role that has it".to_string()
        }
    };
    let wal = if facts.wal_level == "logical" {
        "logical".to_string()
    } else {
        format!(
            "{} (logical replication needs wal_level = logical)",
            facts.wal_level
        )
    };
    format!(
        "server version   {}\nuser             {}\ndatabase         {}\nwal_level        {}\nmay replicate    {}\n\
         encrypted        {}\nround trip       {:.2} ms\n",
        facts.server_version,
        facts.current_user,
        facts.database,
        wal,
        replication,
        if facts.tls { "yes (TLS)" } else { "no" },
        facts.round_trip_ms
    )
}
