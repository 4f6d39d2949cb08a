//! `tidepool neon`: the Neon API key (kept in the keychain the profiles use) and the projects and
//! branches it can see.

use super::*;

#[derive(Subcommand)]
pub(super) enum NeonCommand {
    /// Stores the Neon API key in the OS keychain, read from standard input (never an argument).
    Key,
    /// Lists the projects the key can see, with their branches.
    Projects {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Links a profile to its Neon project and branch (found from its host unless given).
    Link {
        /// The profile's name.
        #[arg(long)]
        profile: String,
        /// The project id.
        #[arg(long, requires = "branch")]
        project: Option<String>,
        /// The branch id.
        #[arg(long, requires = "project")]
        branch: Option<String>,
    },
    /// Removes a profile's Neon link.
    Unlink {
        /// The profile's name.
        #[arg(long)]
        profile: String,
    },
}

pub(super) async fn neon_command(command: NeonCommand) -> Result<(), Error> {
    let engine = engine()?;
    let profiles = engine.profiles();
    match command {
        NeonCommand::Key => {
            let key = if std::io::stdin().is_terminal() {
                rpassword::prompt_password("Neon API key: ")
                    .map_err(|e| Error::invalid_input("Neon API key", format!("reading it: {e}")))?
            } else {
                let mut line = String::new();
                std::io::stdin().read_line(&mut line).map_err(|e| {
                    Error::invalid_input("Neon API key", format!("reading it: {e}"))
                })?;
                line
            };
            profiles.keychain()?.set_neon_api_key(&Secret::new(key))?;
            eprintln!("the Neon API key is in the keychain");
        }
        NeonCommand::Projects { json } => {
            let neon = profiles.neon_client().await?;
            let mut listed = Vec::new();
            for project in neon.projects().await? {
                let branches = neon.branches(&project.id).await?;
                listed.push((project, branches));
            }
            if json {
                let value: Vec<_> = listed
                    .iter()
                    .map(|(p, b)| serde_json::json!({"project": p, "branches": b}))
                    .collect();
                println!(
                    "{}",
                    serde_json::to_string_pretty(&value).map_err(Error::internal)?
                );
            } else {
                for (project, branches) in &listed {
                    println!("{} ({}, {})", project.id, project.name, project.region_id);
                    for branch in branches {
                        let default = if branch.default { " (default)" } else { "" };
                        println!("  {} {}{default}", branch.id, branch.name);
                    }
                }
            }
        }
        NeonCommand::Link {
            profile,
            project,
            branch,
        } => {
            let link = match (project, branch) {
                (Some(project_id), Some(branch_id)) => tidepool::source::neon::Link {
                    project_id,
                    branch_id,
                },
                _ => profiles.neon_locate(&profile).await?.ok_or_else(|| {
                    Error::new(
                        ErrorKind::NotFound,
                        "no project this key can see has an endpoint with the profile's host; give --project and --branch",
                    )
                })?,
            };
            profiles.link_neon(&profile, Some(link.clone()))?;
            eprintln!(
                "linked to Neon project {} branch {}",
                link.project_id, link.branch_id
            );
        }
        NeonCommand::Unlink { profile } => {
            profiles.link_neon(&profile, None)?;
            eprintln!("unlinked");
        }
    }
    Ok(())
}
