//! `tidepool profile`: saved connection profiles; their secrets go to the keychain, never an argument.

use super::*;

#[derive(Subcommand)]
pub(super) enum ProfileCommand {
    /// Saves a profile; its password (from PGPASSWORD, ~/.pgpass or a prompt) goes to the OS keychain.
    Add {
        /// The profile's name.
        #[arg(long)]
        name: String,
        /// A postgres:// URL or key=value string, without the password.
        #[arg(long)]
        url: String,
        /// Publication to capture from (default tidepool_publication).
        #[arg(long)]
        publication: Option<String>,
        /// Replication slot (default tidepool_slot).
        #[arg(long)]
        slot: Option<String>,
        /// Store no password; ask for it each time.
        #[arg(long)]
        ask_password: bool,
        /// Keep the captured rows unencrypted on disk (stores are encrypted at rest by default,
        /// with a key kept in the OS keychain).
        #[arg(long)]
        plain_store: bool,
        /// Reach the database through this SSH bastion, `ssh://user@host[:port]`; the URL's host is
        /// the database as the bastion sees it.
        #[arg(long, value_name = "SSH_URL")]
        ssh: Option<String>,
        /// The private key to log in to the bastion with. It is read once into the OS keychain; its
        /// passphrase, if any, from TIDEPOOL_SSH_PASSPHRASE or a prompt.
        #[arg(long, value_name = "PATH", requires = "ssh")]
        ssh_key_file: Option<PathBuf>,
        /// The bastion's host key (`ssh-ed25519 AAAA…`, a line of its known_hosts without the host).
        #[arg(
            long,
            value_name = "KEY",
            requires = "ssh",
            conflicts_with = "trust_ssh_host_key"
        )]
        ssh_host_key: Option<String>,
        /// Accept the host key the bastion shows now (its fingerprint is printed): trust on first use.
        #[arg(long, requires = "ssh")]
        trust_ssh_host_key: bool,
    },
    /// Shows the SSH bastion's host key of a profile, and with --accept saves it as the accepted one.
    SshHostKey {
        /// The profile's name.
        #[arg(long)]
        profile: String,
        /// Accept the key shown (after comparing its fingerprint with the bastion's).
        #[arg(long)]
        accept: bool,
    },
    /// Lists the saved profiles and whether the keychain holds each one's password.
    List {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Deletes a profile, its local store (captured rows, snapshots, consumers) and its keychain
    /// entries (password, store key, consumers' secrets, pull API token).
    Remove {
        /// The profile's name.
        name: String,
    },
}

pub(super) async fn profile_command(command: ProfileCommand) -> Result<(), Error> {
    let engine = engine()?;
    let profiles = engine.profiles();
    match command {
        ProfileCommand::Add {
            name,
            url,
            publication,
            slot,
            ask_password,
            plain_store,
            ssh,
            ssh_key_file,
            ssh_host_key,
            trust_ssh_host_key,
        } => {
            let fill = Tidepool::autofill(&url)?;
            if fill.password.is_some() {
                return Err(password_in_url());
            }
            let draft = ProfileDraft {
                name,
                publication,
                slot,
                password_storage: if ask_password {
                    PasswordStorage::AskEachTime
                } else {
                    PasswordStorage::Keychain
                },
                encrypt_store: plain_store.then_some(false),
                ssh_address: ssh.clone(),
                ssh_host_key,
                ..fill.draft
            };
            let mut draft = draft;
            if let Some(path) = ssh_key_file {
                let key = std::fs::read_to_string(&path).map_err(|e| {
                    Error::invalid_input(
                        "ssh-key-file",
                        format!("{} could not be read: {e}", path.display()),
                    )
                })?;
                let key = Secret::new(key);
                let passphrase = match std::env::var("TIDEPOOL_SSH_PASSPHRASE") {
                    Ok(p) if !p.is_empty() => Some(Secret::new(p)),
                    _ if tidepool::source::ssh::check_private_key(&key, None).is_err()
                        && std::io::stdin().is_terminal() =>
                    {
                        let typed = rpassword::prompt_password("SSH key passphrase: ")
                            .map_err(|e| Error::internal(format!("reading the passphrase: {e}")))?;
                        (!typed.is_empty()).then(|| Secret::new(typed))
                    }
                    _ => None,
                };
                draft.ssh_key = Some(key);
                draft.ssh_passphrase = passphrase;
            }
            if trust_ssh_host_key {
                let shown = profiles
                    .ssh_host_key(ssh.as_deref().unwrap_or_default())
                    .await?;
                println!(
                    "accepting the host key of {}: {} ({})",
                    shown.target, shown.fingerprint, shown.openssh
                );
                draft.ssh_host_key = Some(shown.openssh);
            }
            let password = if ask_password {
                None
            } else {
                password_for(&Conninfo::parse(&url)?.into_spec())?
            };
            let view = profiles.save(None, draft, password)?;
            println!(
                "saved profile '{}' ({}): password {}; store {}",
                view.profile.name,
                view.address,
                describe_secret(&view.secret),
                if view.profile.encrypted {
                    "encrypted at rest (key in the OS keychain)"
                } else {
                    "not encrypted"
                }
            );
        }
        ProfileCommand::List { json } => {
            let views = profiles.list()?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&views).map_err(Error::internal)?
                );
            } else if views.is_empty() {
                println!("no profiles; add one with `tidepool profile add --name NAME --url URL`");
            } else {
                for view in views {
                    println!(
                        "{:<24} {}@{}/{}  sslmode={}{}  password {}{}",
                        view.profile.name,
                        view.profile.user,
                        view.address,
                        view.profile.database,
                        view.profile.sslmode,
                        match &view.profile.ssh {
                            Some(ssh) => format!("  via {}", ssh.address),
                            None => String::new(),
                        },
                        describe_secret(&view.secret),
                        if view.profile.untested {
                            " (saved in the app without testing)"
                        } else {
                            ""
                        }
                    );
                }
            }
        }
        ProfileCommand::Remove { name } => {
            println!("{}", profiles.delete(&name)?.describe());
        }
        ProfileCommand::SshHostKey { profile, accept } => {
            let saved = profiles.get(&profile)?;
            let Some(ssh) = saved.ssh else {
                return Err(Error::invalid_input(
                    "profile",
                    format!("profile '{}' connects without SSH", saved.name),
                ));
            };
            let shown = profiles.ssh_host_key(&ssh.address).await?;
            let state = match &ssh.host_key {
                None => "not accepted yet",
                Some(accepted)
                    if tidepool::source::ssh::same_host_key(accepted, &shown.openssh)? =>
                {
                    "accepted"
                }
                Some(_) => "DIFFERENT from the accepted key",
            };
            println!(
                "{} shows {} ({}): {state}",
                shown.target, shown.fingerprint, shown.openssh
            );
            if accept {
                profiles.accept_ssh_host_key(&saved.id, &shown.openssh)?;
                println!("accepted for profile '{}'", saved.name);
            }
        }
    }
    Ok(())
}

pub(super) fn describe_secret(state: &SecretState) -> &'static str {
    match state {
        SecretState::InKeychain => "in the keychain",
        SecretState::MissingFromKeychain => {
            "not in the keychain (give it when editing the profile)"
        }
        SecretState::AskEachTime => "asked each time",
        SecretState::KeychainUnavailable => "unknown: the keychain cannot be opened",
    }
}
