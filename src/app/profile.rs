//! Saved connection profiles: Estuary Flow's connection fields, kept in `profiles.json` in Tidepool's
//! data directory, with the password in the OS keychain.
//!
//! Invariants:
//! - `profiles.json` never holds a password; a profile's password is in the keychain under the
//!   profile's stable id (so a rename keeps it), or is asked for each time.
//! - Deleting a profile deletes its keychain entry first; if the keychain cannot be reached the profile
//!   stays, so no secret is orphaned.
//! - The file is replaced atomically (write, fsync, rename), so a crash leaves the old or the new list.
//! - The data dir and the file are owner-only ([`crate::owner_only`]), tightened on open if not.
//! - Names are unique (ignoring case); every field error names the field.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result};
use crate::secrets::{Keychain, Secret, SecretKey};
use crate::source::connection::{
    parse_address, test_connection, ChannelBinding, ConnectionSpec, ServerFacts,
};
use crate::source::conninfo::{Advice, Conninfo};
use crate::source::tls::SslMode;

/// The publication a new profile uses unless told otherwise.
pub const DEFAULT_PUBLICATION: &str = "tidepool_publication";
/// The replication slot a new profile uses unless told otherwise.
pub const DEFAULT_SLOT: &str = "tidepool_slot";

/// Where a profile's password lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, ts_rs::TS)]
#[serde(rename_all = "camelCase")]
pub enum PasswordStorage {
    /// In the OS keychain.
    #[default]
    Keychain,
    /// Nowhere: asked for each time it is needed.
    AskEachTime,
}

/// A saved profile, as stored (no password).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ts_rs::TS)]
#[serde(rename_all = "camelCase")]
pub struct Profile {
    /// Stable id; keys the keychain entry.
    pub id: String,
    /// Name shown in lists; unique.
    pub name: String,
    /// Host name, IP address or socket directory.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Role to log in as.
    pub user: String,
    /// Database.
    pub database: String,
    /// TLS policy.
    pub sslmode: SslMode,
    /// Trusted authorities for verify-ca / verify-full.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sslrootcert: Option<PathBuf>,
    /// Server options (Neon: `endpoint=<id>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub options: Option<String>,
    /// SCRAM channel binding.
    #[serde(default)]
    pub channel_binding: ChannelBinding,
    /// Publication to capture from.
    pub publication: String,
    /// Replication slot to stream from.
    pub slot: String,
    /// `application_name` shown in `pg_stat_activity`.
    pub application_name: String,
    /// Where the password lives.
    pub password: PasswordStorage,
    /// The Neon project and branch the database lives in, when linked (enables the Neon fixes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub neon: Option<crate::source::neon::Link>,
    /// The SSH bastion the database is reached through, if any; its private key is in the keychain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh: Option<SshProfile>,
    /// Whether the profile's store is encrypted at rest ([`crate::store::encryption`]). Profiles saved
    /// before encryption existed have plain stores.
    #[serde(default)]
    pub encrypted: bool,
    /// Saved with "Save without testing": its settings and password have not logged in since they
    /// were saved, so nothing shows them as good. Cleared by a save that tests first
    /// ([`Profiles::save_checked`]) or that brings a new password from a source that made it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub untested: bool,
}

/// Whether a new profile's store is encrypted unless the person says otherwise. The cost is
/// measured in `benches/capture.rs` (docs/benchmarks.md).
pub const ENCRYPT_BY_DEFAULT: bool = true;

/// How a profile reaches its database through an SSH bastion ([`crate::source::ssh`]). The private key and
/// its passphrase are keychain entries of the profile, never fields here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ts_rs::TS)]
#[serde(rename_all = "camelCase")]
pub struct SshProfile {
    /// `ssh://user@host:port`.
    pub address: String,
    /// The bastion's host key a person accepted (`algorithm base64`), if one was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_key: Option<String>,
}

/// What removing a profile or discarding its store deleted, for the person who asked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ts_rs::TS)]
#[serde(rename_all = "camelCase")]
pub struct Removed {
    /// The profile's name.
    pub profile: String,
    /// Whether the profile itself was removed (not only its store).
    pub profile_removed: bool,
    /// The store folder deleted (captured rows, change log, snapshots, consumers), if there was one.
    pub store: Option<PathBuf>,
    /// The keychain entries deleted, described for a person ("database password", "store key", …).
    pub keychain_entries: Vec<String>,
    /// The replication slot dropped with a discarded store, if there was one.
    pub slot_dropped: Option<String>,
}

impl Removed {
    /// One sentence saying what was deleted.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if self.profile_removed {
            parts.push(format!("profile '{}'", self.profile));
        }
        if let Some(store) = &self.store {
            parts.push(format!("its local store {}", store.display()));
        }
        if let Some(slot) = &self.slot_dropped {
            parts.push(format!(
                "replication slot {slot} on the source (the next capture creates it again)"
            ));
        }
        if !self.keychain_entries.is_empty() {
            parts.push(format!(
                "from the keychain: {}",
                self.keychain_entries.join(", ")
            ));
        }
        if parts.is_empty() {
            format!("nothing of '{}' was stored", self.profile)
        } else {
            format!("deleted {}", parts.join("; "))
        }
    }
}

impl Profile {
    /// `host:port` for display.
    pub fn address(&self) -> String {
        self.spec_without_password().target()
    }

    fn spec_without_password(&self) -> ConnectionSpec {
        let mut spec = ConnectionSpec::new(&self.host, self.port, &self.user, &self.database);
        spec.sslmode = self.sslmode;
        spec.sslrootcert = self.sslrootcert.clone();
        spec.options = self.options.clone();
        spec.channel_binding = self.channel_binding;
        spec.application_name = self.application_name.clone();
        spec
    }

    fn keychain_label(&self) -> String {
        format!(
            "Tidepool: database password for {}@{}/{}",
            self.user,
            self.address(),
            self.database
        )
    }
}

/// A profile as the form (or `tidepool profile add`) gives it: the fields a person fills in.
#[derive(Debug, Clone, Default, Deserialize, Serialize, ts_rs::TS)]
#[serde(rename_all = "camelCase", default)]
pub struct ProfileDraft {
    /// Name.
    pub name: String,
    /// `host[:port]`.
    pub address: String,
    /// Role.
    pub user: String,
    /// Database.
    pub database: String,
    /// TLS policy.
    pub sslmode: SslMode,
    /// Root certificate file, or empty.
    pub sslrootcert: Option<String>,
    /// Server options, or empty.
    pub options: Option<String>,
    /// Channel binding.
    pub channel_binding: ChannelBinding,
    /// Publication, or empty for the default.
    pub publication: Option<String>,
    /// Slot, or empty for the default.
    pub slot: Option<String>,
    /// Application name, or empty for `tidepool`.
    pub application_name: Option<String>,
    /// Where the password goes.
    pub password_storage: PasswordStorage,
    /// Whether the store is encrypted at rest; unset keeps the profile's choice, or for a new
    /// profile [`ENCRYPT_BY_DEFAULT`].
    pub encrypt_store: Option<bool>,
    /// The SSH bastion (`ssh://user@host[:port]`), or empty to connect directly.
    pub ssh_address: Option<String>,
    /// The bastion's host key the person accepted (`algorithm base64`); unset keeps the saved one
    /// while the address stays the same.
    pub ssh_host_key: Option<String>,
    /// A new SSH private key (OpenSSH or PEM text), only on its way to the keychain: never shown
    /// back, never written to a file.
    #[serde(skip_serializing)]
    #[ts(optional = nullable)]
    pub ssh_key: Option<Secret>,
    /// The new key's passphrase, if it has one; same path as the key.
    #[serde(skip_serializing)]
    #[ts(optional = nullable)]
    pub ssh_passphrase: Option<Secret>,
}

/// What "Autofill with URL" gives back: the form's fields, the password that was in the pasted string
/// (only so the form's password field can be filled; it is stored only on save), and advice.
#[derive(Debug, Serialize, ts_rs::TS)]
#[serde(rename_all = "camelCase")]
pub struct Autofill {
    /// The fields, ready for the form.
    pub draft: ProfileDraft,
    /// The password found in the pasted string, handed back to the form it came from.
    pub password: Option<RevealedSecret>,
    /// E.g. a Neon `-pooler` host, with the direct host to switch to.
    pub advice: Vec<Advice>,
}

/// A secret deliberately handed to the UI: the password Autofill found in the string the UI just
/// supplied, or a consumer's signing secret or the pull API token a person asked to see
/// ([`crate::app::consumers::ConsumerStore::reveal_signing_secret`],
/// [`crate::app::consumers::ConsumerStore::reveal_pull_token`]). Any other path keeps [`Secret`],
/// which cannot be serialized.
#[derive(ts_rs::TS)]
pub struct RevealedSecret(Secret);

impl RevealedSecret {
    /// Marks `secret` as one a person asked to see.
    pub(crate) fn new(secret: Secret) -> RevealedSecret {
        RevealedSecret(secret)
    }
}

impl Serialize for RevealedSecret {
    fn serialize<S: serde::Serializer>(
        &self,
        serializer: S,
    ) -> std::result::Result<S::Ok, S::Error> {
        serializer.serialize_str(self.0.expose())
    }
}

impl std::fmt::Debug for RevealedSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RevealedSecret(<redacted>)")
    }
}

/// Parses a pasted URL or `key=value` string into the form's fields.
pub fn autofill(text: &str) -> Result<Autofill> {
    let info = Conninfo::parse(text)?;
    let advice = info.advice();
    let password = info.password.clone().map(RevealedSecret);
    let spec = info.into_spec();
    let draft = ProfileDraft {
        name: String::new(),
        address: spec.target(),
        user: spec.user,
        database: spec.database,
        sslmode: spec.sslmode,
        sslrootcert: spec.sslrootcert.map(|p| p.to_string_lossy().into_owned()),
        options: spec.options,
        channel_binding: spec.channel_binding,
        publication: None,
        slot: None,
        application_name: Some(spec.application_name),
        password_storage: PasswordStorage::Keychain,
        encrypt_store: None,
        ..ProfileDraft::default()
    };
    Ok(Autofill {
        draft,
        password,
        advice,
    })
}

/// What the form's Save does before it stores anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, ts_rs::TS)]
#[serde(rename_all = "camelCase")]
pub enum SaveCheck {
    /// Log in with the form's values first and store nothing if that fails (as Estuary Flow and
    /// Sequin do on save): a wrong password never reaches the keychain.
    #[default]
    TestFirst,
    /// Store the values as typed, marked [`Profile::untested`], when the person chose so (a server
    /// not reachable from here yet).
    WithoutTesting,
}

/// Whether a profile's password can be had without asking, as shown next to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ts_rs::TS)]
#[serde(rename_all = "camelCase")]
pub enum SecretState {
    /// The keychain holds the password.
    InKeychain,
    /// The profile says keychain, but there is no entry (deleted outside Tidepool, or never given).
    MissingFromKeychain,
    /// The profile asks each time.
    AskEachTime,
    /// The keychain could not be opened.
    KeychainUnavailable,
}

/// A profile with the state of its secret.
#[derive(Debug, Clone, Serialize, ts_rs::TS)]
#[serde(rename_all = "camelCase")]
pub struct ProfileView {
    /// The profile.
    #[serde(flatten)]
    pub profile: Profile,
    /// `host:port`.
    pub address: String,
    /// Where its password stands.
    pub secret: SecretState,
}

/// Where the keychain comes from: the OS (opened on each use, so unlocking it later works) or a given
/// one (tests).
#[derive(Debug, Clone)]
enum KeychainSource {
    Platform,
    Given(Keychain),
}

/// The saved profiles in one data directory.
#[derive(Debug, Clone)]
pub struct Profiles {
    file: PathBuf,
    keychain: KeychainSource,
    neon_api: Option<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct ProfileFile {
    version: u32,
    profiles: Vec<Profile>,
}

impl Profiles {
    /// The profiles in `data_dir`, with the OS keychain. The data dir, the profile list and every
    /// store in it are made owner-only ([`crate::owner_only`]) if they are not.
    pub fn open(data_dir: &Path) -> Profiles {
        tighten_data_dir(data_dir);
        Profiles {
            file: data_dir.join("profiles.json"),
            keychain: KeychainSource::Platform,
            neon_api: None,
        }
    }

    /// The profiles in `data_dir`, with a given keychain.
    pub fn with_keychain(data_dir: &Path, keychain: Keychain) -> Profiles {
        tighten_data_dir(data_dir);
        Profiles {
            file: data_dir.join("profiles.json"),
            keychain: KeychainSource::Given(keychain),
            neon_api: None,
        }
    }

    /// The same profiles, talking to the Neon API at `base` (a stand-in in tests) instead of
    /// `TIDEPOOL_NEON_API_URL` or Neon's own.
    pub fn with_neon_api(mut self, base: &str) -> Profiles {
        self.neon_api = Some(base.to_string());
        self
    }

    /// The keychain these profiles were opened with, if one was given (not the OS's).
    pub(crate) fn given_keychain(&self) -> Option<Keychain> {
        match &self.keychain {
            KeychainSource::Platform => None,
            KeychainSource::Given(keychain) => Some(keychain.clone()),
        }
    }

    /// The keychain these profiles were given (the platform's unless a test gave its own): every
    /// secret the app or the command line stores goes through it.
    pub fn keychain(&self) -> Result<Keychain> {
        match &self.keychain {
            KeychainSource::Platform => Keychain::open(),
            KeychainSource::Given(keychain) => Ok(keychain.clone()),
        }
    }

    fn load(&self) -> Result<ProfileFile> {
        match std::fs::read(&self.file) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                Error::internal(format!(
                    "{} is not a valid profile list: {e}",
                    self.file.display()
                ))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ProfileFile {
                version: 1,
                profiles: vec![],
            }),
            Err(e) => Err(Error::internal(format!(
                "reading {}: {e}",
                self.file.display()
            ))),
        }
    }

    fn store(&self, file: &ProfileFile) -> Result<()> {
        let dir = self
            .file
            .parent()
            .ok_or_else(|| Error::internal("the profile file has no folder"))?;
        crate::owner_only::create_dir_all(dir)
            .map_err(|e| Error::internal(format!("creating {}: {e}", dir.display())))?;
        let json = serde_json::to_vec_pretty(file).map_err(Error::internal)?;
        write_atomically(&self.file, &json)
    }

    /// Every profile, each with the state of its secret.
    pub fn list(&self) -> Result<Vec<ProfileView>> {
        let profiles = self.load()?.profiles;
        let keychain = if profiles
            .iter()
            .any(|p| p.password == PasswordStorage::Keychain)
        {
            self.keychain().ok()
        } else {
            None
        };
        Ok(profiles
            .into_iter()
            .map(|profile| {
                let secret = match (profile.password, &keychain) {
                    (PasswordStorage::AskEachTime, _) => SecretState::AskEachTime,
                    (PasswordStorage::Keychain, None) => SecretState::KeychainUnavailable,
                    (PasswordStorage::Keychain, Some(keychain)) => {
                        match keychain.get(&SecretKey::ProfilePassword(profile.id.clone())) {
                            Ok(Some(_)) => SecretState::InKeychain,
                            Ok(None) => SecretState::MissingFromKeychain,
                            Err(_) => SecretState::KeychainUnavailable,
                        }
                    }
                };
                ProfileView {
                    address: profile.address(),
                    profile,
                    secret,
                }
            })
            .collect())
    }

    /// The profile with this id or name.
    pub fn get(&self, id_or_name: &str) -> Result<Profile> {
        self.load()?
            .profiles
            .into_iter()
            .find(|p| p.id == id_or_name || p.name.eq_ignore_ascii_case(id_or_name))
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::NotFound,
                    format!("no profile named '{id_or_name}'"),
                )
            })
    }

    /// Creates (`id` = None) or updates a profile. A given password goes to the keychain when the
    /// profile keeps it there; switching to "ask each time" removes the stored one. Nothing is
    /// tested: for callers whose password comes from what made it (the demo, a created role, a
    /// reset); the form saves through [`Profiles::save_checked`].
    pub fn save(
        &self,
        id: Option<&str>,
        draft: ProfileDraft,
        password: Option<Secret>,
    ) -> Result<ProfileView> {
        self.save_marked(id, draft, password, None)
    }

    /// The form's Save: with [`SaveCheck::TestFirst`], connects with the form's values (the typed
    /// password, else the keychain's for a saved profile) and stores nothing if the login fails,
    /// returning the test's error; with [`SaveCheck::WithoutTesting`], stores them marked
    /// [`Profile::untested`].
    pub async fn save_checked(
        &self,
        id: Option<String>,
        draft: ProfileDraft,
        password: Option<Secret>,
        check: SaveCheck,
    ) -> Result<ProfileView> {
        // The form's own mistakes (an empty name, a bad slot name) come before the network's.
        validate(id.clone().unwrap_or_default(), draft.clone())?;
        let untested = match check {
            SaveCheck::TestFirst => {
                self.test_draft(id.clone(), draft.clone(), password.clone())
                    .await?;
                false
            }
            SaveCheck::WithoutTesting => true,
        };
        let profiles = self.clone();
        tokio::task::spawn_blocking(move || {
            profiles.save_marked(id.as_deref(), draft, password, Some(untested))
        })
        .await
        .map_err(|e| Error::internal(format!("saving the profile: {e}")))?
    }

    /// [`Profiles::save`] with the untested mark: `Some` sets it; `None` clears it when a new
    /// password is given and otherwise keeps the profile's (the password that was not tested stays).
    fn save_marked(
        &self,
        id: Option<&str>,
        draft: ProfileDraft,
        password: Option<Secret>,
        untested: Option<bool>,
    ) -> Result<ProfileView> {
        let mut file = self.load()?;
        let existing =
            match id {
                Some(id) => Some(file.profiles.iter().position(|p| p.id == id).ok_or_else(
                    || Error::new(ErrorKind::NotFound, format!("no profile with id '{id}'")),
                )?),
                None => None,
            };
        let profile_id = match existing {
            Some(index) => file.profiles[index].id.clone(),
            None => new_id()?,
        };
        let keep_encryption = draft.encrypt_store.is_none();
        let ssh_key = draft.ssh_key.clone().filter(|k| !k.is_empty());
        let ssh_passphrase = draft.ssh_passphrase.clone().filter(|p| !p.is_empty());
        let mut profile = validate(profile_id, draft)?;
        if let Some(i) = existing {
            keep_accepted_host_key(&mut profile, &file.profiles[i]);
        }
        // The form does not carry the Neon link; editing the connection keeps it.
        profile.neon = existing.and_then(|i| file.profiles[i].neon.clone());
        if let (true, Some(i)) = (keep_encryption, existing) {
            profile.encrypted = file.profiles[i].encrypted;
        }
        let new_password = password.as_ref().is_some_and(|p| !p.is_empty());
        profile.untested = untested.unwrap_or_else(|| {
            !new_password && existing.is_some_and(|i| file.profiles[i].untested)
        });
        if file
            .profiles
            .iter()
            .any(|p| p.id != profile.id && p.name.eq_ignore_ascii_case(&profile.name))
        {
            return Err(Error::invalid_input(
                "name",
                format!("a profile named '{}' exists already", profile.name),
            ));
        }

        // The password's keychain first (its error says what to choose instead), then the store's key,
        // before the password is stored: a refusal here leaves nothing behind.
        if profile.password == PasswordStorage::Keychain
            && password.as_ref().is_some_and(|p| !p.is_empty())
        {
            self.keychain()?;
        }
        if profile.ssh.is_some() && ssh_key.is_some() {
            self.keychain()?;
        }
        self.apply_encryption(&profile)?;
        self.store_ssh_secrets(
            &profile,
            existing.and_then(|i| file.profiles[i].ssh.as_ref()),
            ssh_key,
            ssh_passphrase,
        )?;
        let key = SecretKey::ProfilePassword(profile.id.clone());
        match profile.password {
            PasswordStorage::Keychain => {
                if let Some(password) = password.filter(|p| !p.is_empty()) {
                    self.keychain()?
                        .set(&key, &profile.keychain_label(), &password)?;
                }
            }
            PasswordStorage::AskEachTime => {
                if existing.is_some_and(|i| file.profiles[i].password == PasswordStorage::Keychain)
                {
                    self.keychain()?.delete(&key)?;
                }
            }
        }
        match existing {
            Some(index) => file.profiles[index] = profile.clone(),
            None => file.profiles.push(profile.clone()),
        }
        file.version = 1;
        self.store(&file)?;
        tracing::info!(profile = %profile.name, "profile saved");
        let view = self
            .list()?
            .into_iter()
            .find(|v| v.profile.id == profile.id);
        view.ok_or_else(|| Error::internal("the saved profile vanished"))
    }

    /// Keeps the SSH private key and passphrase in the keychain: a new key replaces the old one (and a
    /// key given without a passphrase removes the old passphrase); a profile that no longer uses SSH
    /// leaves no key behind.
    fn store_ssh_secrets(
        &self,
        profile: &Profile,
        before: Option<&SshProfile>,
        key: Option<Secret>,
        passphrase: Option<Secret>,
    ) -> Result<()> {
        let key_entry = SecretKey::SshKey(profile.id.clone());
        let passphrase_entry = SecretKey::SshPassphrase(profile.id.clone());
        match (&profile.ssh, key) {
            (Some(ssh), Some(key)) => {
                let keychain = self.keychain()?;
                keychain.set(
                    &key_entry,
                    &format!("Tidepool: SSH private key for {}", ssh.address),
                    &key,
                )?;
                match passphrase {
                    Some(passphrase) => keychain.set(
                        &passphrase_entry,
                        &format!("Tidepool: SSH key passphrase for {}", ssh.address),
                        &passphrase,
                    )?,
                    None => keychain.delete(&passphrase_entry)?,
                }
            }
            (None, _) if before.is_some() => {
                let keychain = self.keychain()?;
                keychain.delete(&key_entry)?;
                keychain.delete(&passphrase_entry)?;
            }
            _ => {}
        }
        Ok(())
    }

    /// The tunnel a profile's connections go through, if it names a bastion: the key (and passphrase)
    /// given, else the keychain's. Reads the keychain (blocking).
    fn tunnel_for(
        &self,
        profile: &Profile,
        spec: &ConnectionSpec,
        given: Option<(Secret, Option<Secret>)>,
    ) -> Result<Option<std::sync::Arc<crate::source::ssh::Tunnel>>> {
        let Some(ssh) = &profile.ssh else {
            return Ok(None);
        };
        let (key, passphrase) = match given {
            Some(given) => given,
            None => {
                let keychain = self.keychain()?;
                let Some(key) = keychain.get(&SecretKey::SshKey(profile.id.clone()))? else {
                    return Err(Error::new(
                        ErrorKind::Keychain,
                        format!(
                            "the keychain has no SSH private key for profile '{}'; edit the profile to enter it",
                            profile.name
                        ),
                    ));
                };
                (
                    key,
                    keychain.get(&SecretKey::SshPassphrase(profile.id.clone()))?,
                )
            }
        };
        Ok(Some(crate::source::ssh::Tunnel::new(
            crate::source::ssh::TunnelSettings {
                endpoint: crate::source::ssh::SshEndpoint::parse(&ssh.address)?,
                key,
                passphrase,
                host_key: ssh.host_key.clone(),
                database: (spec.host.clone(), spec.port),
                timeout: spec.connect_timeout,
            },
        )))
    }

    /// Gives the profile `to` the SSH private key (and passphrase) of the profile `from`: a profile
    /// Setup makes for a new role of the same database goes through the same bastion.
    pub fn copy_ssh_key(&self, from: &str, to: &str) -> Result<()> {
        let (from, to) = (self.get(from)?, self.get(to)?);
        let (Some(_), Some(_)) = (&from.ssh, &to.ssh) else {
            return Ok(());
        };
        let keychain = self.keychain()?;
        let Some(key) = keychain.get(&SecretKey::SshKey(from.id.clone()))? else {
            return Ok(());
        };
        let passphrase = keychain.get(&SecretKey::SshPassphrase(from.id.clone()))?;
        self.store_ssh_secrets(&to, to.ssh.as_ref(), Some(key), passphrase)
    }

    /// The SSH bastion's host key, read without logging in, for a person to compare and accept
    /// before the first connection through it.
    pub async fn ssh_host_key(&self, address: &str) -> Result<crate::source::ssh::HostKey> {
        let endpoint = crate::source::ssh::SshEndpoint::parse(address)?;
        crate::source::ssh::fetch_host_key(
            &endpoint,
            crate::source::connection::DEFAULT_CONNECT_TIMEOUT,
        )
        .await
    }

    /// Saves `host_key` (`algorithm base64`, as [`Profiles::ssh_host_key`] showed it) as the accepted
    /// host key of the profile's bastion.
    pub fn accept_ssh_host_key(&self, id_or_name: &str, host_key: &str) -> Result<ProfileView> {
        let id = self.get(id_or_name)?.id;
        let accepted = crate::source::ssh::parse_host_key(host_key)?
            .to_openssh()
            .map_err(|e| Error::invalid_input("SSH host key", e.to_string()))?;
        let mut file = self.load()?;
        let profile = file
            .profiles
            .iter_mut()
            .find(|p| p.id == id)
            .ok_or_else(|| Error::new(ErrorKind::NotFound, format!("no profile with id '{id}'")))?;
        let Some(ssh) = profile.ssh.as_mut() else {
            return Err(Error::invalid_input(
                "profile",
                format!("profile '{}' connects without SSH", profile.name),
            ));
        };
        ssh.host_key = Some(accepted);
        tracing::info!(profile = %profile.name, via = %ssh.address, "SSH host key accepted");
        self.store(&file)?;
        self.list()?
            .into_iter()
            .find(|v| v.profile.id == id)
            .ok_or_else(|| Error::internal("the saved profile vanished"))
    }

    /// Makes the profile's store folder match its encryption choice. A folder that holds no store yet
    /// gets a key (or loses it); a store that already holds rows keeps what it is, and changing it is
    /// refused: its rows cannot be re-encrypted in place, so the person discards it and captures again.
    fn apply_encryption(&self, profile: &Profile) -> Result<()> {
        let dir = self.store_dir_of(&profile.id);
        let marked = crate::store::encryption::marker(&dir)?.is_some();
        if marked == profile.encrypted {
            return Ok(());
        }
        if dir.join("tidepool.db").exists() {
            let now = if marked {
                "is encrypted"
            } else {
                "is not encrypted"
            };
            return Err(Error::invalid_input(
                "encrypt store",
                format!(
                    "the profile's store in {} {now} and already holds captured rows; discard the local copy (`tidepool discard-store --profile {} --yes`) first, then capture again",
                    dir.display(),
                    profile.name
                ),
            ));
        }
        let keychain = self.keychain().map_err(|_| {
            Error::new(
                ErrorKind::Keychain,
                "the store is encrypted with a key kept only in the OS keychain, which could not be opened: \
                 start or unlock your keyring (on Linux, a Secret Service such as GNOME Keyring or KWallet), or \
                 keep this profile's captured rows unencrypted (clear \"Encrypt the captured rows on this \
                 machine\"; `--plain-store` on the command line)",
            )
        })?;
        if profile.encrypted {
            crate::store::encryption::create(&dir, &keychain)?;
        } else {
            crate::store::encryption::forget(&dir, &keychain)?;
            let _ = std::fs::remove_file(dir.join(crate::store::encryption::MARKER));
        }
        Ok(())
    }

    /// Deletes a profile, its store (captured rows, snapshots, consumers) and every keychain entry
    /// it had: its password, the store's key, its consumers' secrets and its pull API token. The
    /// caller makes sure no capture of it runs ([`crate::app::run::Runs::delete_profile`]).
    pub fn delete(&self, id_or_name: &str) -> Result<Removed> {
        let profile = self.get(id_or_name)?;
        let mut removed = self.discard(&profile)?;
        if profile.password == PasswordStorage::Keychain {
            self.keychain()
                .map_err(|e| {
                    e.context(
                        "the profile was kept so its password is not left behind in the keychain",
                    )
                })?
                .delete(&SecretKey::ProfilePassword(profile.id.clone()))?;
            removed
                .keychain_entries
                .insert(0, "database password".into());
        }
        if profile.ssh.is_some() {
            let keychain = self.keychain().map_err(|e| {
                e.context("the profile was kept so its SSH key is not left behind in the keychain")
            })?;
            keychain.delete(&SecretKey::SshKey(profile.id.clone()))?;
            keychain.delete(&SecretKey::SshPassphrase(profile.id.clone()))?;
            removed.keychain_entries.push("SSH private key".into());
        }
        let mut file = self.load()?;
        file.profiles.retain(|p| p.id != profile.id);
        self.store(&file)?;
        removed.profile_removed = true;
        tracing::info!(profile = %profile.name, "{}", removed.describe());
        Ok(removed)
    }

    /// Discards the profile's local copy: its store folder and the keychain entries that belong to
    /// it. The source is untouched (its slot is [`crate::app::run::Runs::discard_store`]'s to drop); the
    /// next capture backfills again. An encrypted profile gets a
    /// new key for the new store. The way out of a store whose key is lost. The caller makes sure no
    /// capture of it runs ([`crate::app::run::Runs::discard_store`]).
    pub fn discard_store(&self, id_or_name: &str) -> Result<Removed> {
        let profile = self.get(id_or_name)?;
        let removed = self.discard(&profile)?;
        self.apply_encryption(&profile)?;
        tracing::info!(profile = %profile.name, "{}", removed.describe());
        Ok(removed)
    }

    fn discard(&self, profile: &Profile) -> Result<Removed> {
        let dir = self.store_dir_of(&profile.id);
        let mut removed = Removed {
            profile: profile.name.clone(),
            profile_removed: false,
            store: None,
            keychain_entries: Vec::new(),
            slot_dropped: None,
        };
        if !dir.exists() {
            return Ok(removed);
        }
        let keychain = || {
            self.keychain().map_err(|e| {
                e.context("the store was kept so its keychain entries are not left behind")
            })
        };
        if crate::deliver::ledger::ledger_path(&dir).exists() {
            let keychain = keychain()?;
            // A store whose key is lost cannot list its consumers: their secrets are named by ids
            // only the ledger holds, so they stay; say so rather than fail the removal.
            match crate::deliver::forget_secrets(&dir, &keychain) {
                Ok(entries) => removed.keychain_entries.extend(entries),
                Err(e) if e.kind() == ErrorKind::Locked => {
                    tracing::warn!(store = %dir.display(), "the store's key is lost: its consumers' keychain entries (\"consumer-…\") are left for you to delete")
                }
                Err(e) => return Err(e),
            }
        }
        if crate::store::encryption::marker(&dir)?.is_some() {
            crate::store::encryption::forget(&dir, &keychain()?)?;
            removed.keychain_entries.push("store key".into());
        }
        std::fs::remove_dir_all(&dir).map_err(|e| {
            Error::new(
                ErrorKind::Storage,
                format!("deleting the store {}: {e}", dir.display()),
            )
        })?;
        removed.store = Some(dir);
        Ok(removed)
    }

    /// A connection spec for the profile: the password from `typed` if given, else from the keychain.
    pub fn spec(&self, id_or_name: &str, typed: Option<Secret>) -> Result<ConnectionSpec> {
        let profile = self.get(id_or_name)?;
        let mut spec = profile.spec_without_password();
        spec.tunnel = self.tunnel_for(&profile, &spec, None)?;
        spec.password = match typed.filter(|p| !p.is_empty()) {
            Some(password) => Some(password),
            None if profile.password == PasswordStorage::Keychain => {
                let found = self
                    .keychain()?
                    .get(&SecretKey::ProfilePassword(profile.id.clone()))?;
                if found.is_none() {
                    return Err(Error::new(
                        ErrorKind::Keychain,
                        format!("the keychain has no password for profile '{}'; edit the profile to enter it", profile.name),
                    ));
                }
                found
            }
            None => None,
        };
        Ok(spec)
    }

    /// The connection spec to run a fix with on the database `base` points at: `base` itself for
    /// [`RunAs::Profile`](crate::source::setup::RunAs::Profile); another saved profile's (its password from
    /// the keychain), refused unless it is for the same host, port and database; or `base`'s server
    /// and TLS settings with the entered role and password. Reads the keychain (blocking).
    pub fn spec_to_run_as(
        &self,
        base: ConnectionSpec,
        run_as: crate::source::setup::RunAs,
    ) -> Result<ConnectionSpec> {
        use crate::source::setup::RunAs;
        match run_as {
            RunAs::Profile => Ok(base),
            RunAs::OtherProfile { profile } => {
                let other = self.get(&profile)?;
                let differs = if !other.host.eq_ignore_ascii_case(&base.host) {
                    Some(("host", other.host.clone(), base.host.clone()))
                } else if other.port != base.port {
                    Some(("port", other.port.to_string(), base.port.to_string()))
                } else if other.database != base.database {
                    Some(("database", other.database.clone(), base.database.clone()))
                } else {
                    None
                };
                if let Some((field, theirs, ours)) = differs {
                    return Err(Error::invalid_input(
                        field,
                        format!(
                            "profile '{}' connects to {field} '{theirs}', and the fix is for {field} '{ours}': run it as a profile for the same server and database",
                            other.name
                        ),
                    ));
                }
                let mut spec = self.spec(&other.id, None)?;
                // The same database: reached the way `base` reaches it unless the other profile
                // names a bastion of its own.
                if spec.tunnel.is_none() {
                    spec.tunnel = base.tunnel.clone();
                }
                if spec.password.is_none() && other.password == PasswordStorage::AskEachTime {
                    return Err(Error::new(
                        ErrorKind::Authentication,
                        format!(
                            "profile '{}' keeps no password (it asks each time): run the fix with its role's password instead",
                            other.name
                        ),
                    ));
                }
                Ok(spec)
            }
            RunAs::Password { user, password } => {
                let user = user.trim().to_string();
                if user.is_empty() {
                    return Err(Error::invalid_input(
                        "user",
                        "name the role to run the fix as",
                    ));
                }
                if password.is_empty() {
                    return Err(Error::invalid_input(
                        "password",
                        format!("enter the password of role '{user}'"),
                    ));
                }
                let mut spec = base;
                spec.user = user;
                spec.password = Some(password);
                Ok(spec)
            }
        }
    }

    /// Connects with the form's values as they stand (saved or not) and reads the server's facts. The
    /// password is the typed one, else, for a saved profile that keeps it there, the keychain's.
    pub async fn test_draft(
        &self,
        id: Option<String>,
        mut draft: ProfileDraft,
        typed: Option<Secret>,
    ) -> Result<ServerFacts> {
        if draft.name.trim().is_empty() {
            draft.name = "unsaved connection".into();
        }
        let given_key = draft
            .ssh_key
            .clone()
            .filter(|k| !k.is_empty())
            .map(|key| (key, draft.ssh_passphrase.clone().filter(|p| !p.is_empty())));
        let mut profile = validate(id.clone().unwrap_or_default(), draft)?;
        let mut spec = profile.spec_without_password();
        if profile.ssh.is_some() {
            // A saved profile's accepted host key and keychain key count for the form as it stands.
            if let Some(saved) = id.as_deref().and_then(|id| self.get(id).ok()) {
                profile.id = saved.id.clone();
                keep_accepted_host_key(&mut profile, &saved);
            }
            let profiles = self.clone();
            let (for_tunnel, base) = (profile.clone(), spec.clone());
            spec.tunnel = tokio::task::spawn_blocking(move || {
                profiles.tunnel_for(&for_tunnel, &base, given_key)
            })
            .await
            .map_err(|e| Error::internal(format!("reading the keychain: {e}")))??;
        }
        spec.password = match (typed.filter(|p| !p.is_empty()), id) {
            (Some(password), _) => Some(password),
            (None, Some(id)) if profile.password == PasswordStorage::Keychain => {
                let profiles = self.clone();
                tokio::task::spawn_blocking(move || {
                    profiles.keychain()?.get(&SecretKey::ProfilePassword(id))
                })
                .await
                .map_err(|e| Error::internal(format!("reading the keychain: {e}")))??
            }
            _ => None,
        };
        test_connection(&spec).await
    }

    /// Connects with a saved profile and reads the server's facts.
    pub async fn test(&self, id_or_name: &str, typed: Option<Secret>) -> Result<ServerFacts> {
        test_connection(&self.spec_blocking(id_or_name, typed).await?).await
    }

    /// [`Profiles::spec`] off the async workers: the keychain's D-Bus calls block.
    pub(crate) async fn spec_blocking(
        &self,
        id_or_name: &str,
        typed: Option<Secret>,
    ) -> Result<ConnectionSpec> {
        let profiles = self.clone();
        let name = id_or_name.to_string();
        tokio::task::spawn_blocking(move || profiles.spec(&name, typed))
            .await
            .map_err(|e| Error::internal(format!("reading the keychain: {e}")))?
    }

    /// The store folder of the profile's capture: `stores/<profile id>` next to `profiles.json`. An
    /// encrypted profile's folder always has its key before a store can be created in it. With a given
    /// keychain (not the OS's), the key is read from it here, so opening the store finds it
    /// ([`crate::store::encryption::unlock`]).
    pub fn store_dir(&self, id_or_name: &str) -> Result<PathBuf> {
        let profile = self.get(id_or_name)?;
        let dir = self.store_dir_of(&profile.id);
        // An encrypted profile whose store folder was deleted by hand gets a new key before anything
        // can create a plain store there.
        self.apply_encryption(&profile)?;
        if let KeychainSource::Given(keychain) = &self.keychain {
            crate::store::encryption::unlock(&dir, keychain)?;
        }
        Ok(dir)
    }

    fn store_dir_of(&self, id: &str) -> PathBuf {
        let base = self.file.parent().unwrap_or(Path::new("."));
        base.join("stores").join(id)
    }

    /// The tables the profile's role can read, as collections, marked by the profile's publication.
    pub async fn discover(
        &self,
        id_or_name: &str,
    ) -> Result<Vec<crate::source::discovery::DiscoveredTable>> {
        let profile = self.get(id_or_name)?;
        let spec = self.spec_blocking(id_or_name, None).await?;
        let client = crate::source::connection::connect(&spec).await?;
        crate::source::discovery::discover(&client, Some(&profile.publication)).await
    }

    /// The profile's saved capture definition, if it has one.
    pub fn capture_definition(
        &self,
        id_or_name: &str,
    ) -> Result<Option<crate::binding::Definition>> {
        match crate::store::Store::open_existing(&self.store_dir(id_or_name)?)? {
            Some(store) => crate::binding::Definition::load(&store),
            None => Ok(None),
        }
    }

    /// The preflight checklist for the profile: its publication and slot, and the tables of its saved
    /// capture (else the publication's). The checks know what the store knows (whether the capture has
    /// streamed from the slot), and `running_capture` names the `application_name` of the profile's
    /// capture when one runs in this process ([`crate::app::run::Runs::preflight`] passes it), so a slot that
    /// capture holds is a pass.
    pub async fn preflight(
        &self,
        id_or_name: &str,
        running_capture: Option<String>,
    ) -> Result<Vec<crate::source::preflight::Check>> {
        let profile = self.get(id_or_name)?;
        let spec = self.spec_blocking(id_or_name, None).await?;
        let (tables, store_history) =
            match crate::store::Store::open_existing(&self.store_dir(id_or_name)?)? {
                Some(store) => {
                    let tables = crate::binding::Definition::load(&store)?
                        .map(|d| {
                            d.bindings
                                .into_iter()
                                .map(|b| (b.schema, b.table))
                                .collect()
                        })
                        .unwrap_or_default();
                    (
                        tables,
                        store.checkpoint()? > crate::source::pgoutput::Lsn(0),
                    )
                }
                None => (Vec::new(), false),
            };
        let target = crate::source::preflight::Target {
            host: profile.host.clone(),
            publication: profile.publication.clone(),
            slot: profile.slot.clone(),
            tables,
            neon_project: profile.neon.as_ref().map(|l| l.project_id.clone()),
            neon_branch: profile.neon.as_ref().map(|l| l.branch_id.clone()),
            slot_warn_bytes: None,
            running_capture,
            store_history: Some(store_history),
        };
        let client = crate::source::connection::connect(&spec)
            .await
            .map_err(|e| e.in_neon_project(target.neon_project.as_deref()))?;
        let mut checks = crate::source::preflight::run(&client, &target).await?;
        if let Some(project) = &target.neon_project {
            checks.push(
                crate::source::preflight::neon_ip_allow(self.neon_client().await, project).await,
            );
        }
        Ok(checks)
    }

    /// Runs a fix the user confirmed as the profile's own role: [`Profiles::run_fix_as`] with
    /// [`RunAs::Profile`](crate::source::setup::RunAs::Profile).
    pub async fn run_fix(
        &self,
        id_or_name: &str,
        action: crate::source::setup::Action,
    ) -> Result<()> {
        self.run_fix_as(id_or_name, action, crate::source::setup::RunAs::Profile)
            .await
    }

    /// Runs a fix the user confirmed: SQL as `run_as` (the profile's role, another saved profile for
    /// the same database, or a role whose password was entered for this run), a Neon action through
    /// the Neon API with the key in the keychain. A password that comes back never reaches the
    /// caller: a new role's goes to the keychain with a new profile for it (named after the role,
    /// linked like this one); a revealed or reset one replaces this profile's password in the
    /// keychain. A permission error as the profile's own role says the fix can run as an owner.
    pub async fn run_fix_as(
        &self,
        id_or_name: &str,
        action: crate::source::setup::Action,
        run_as: crate::source::setup::RunAs,
    ) -> Result<()> {
        self.run_fix_with(id_or_name, action, run_as, FixOptions::default())
            .await
    }

    /// [`Profiles::run_fix_as`] with what the command line adds: the profile's connection it
    /// already made (with the password of a profile that asks for it each time, and its tunnel
    /// open), and the name of the profile a new role is saved with. The app and the command line
    /// run every fix through here, so a role they create is kept the same way.
    pub async fn run_fix_with(
        &self,
        id_or_name: &str,
        action: crate::source::setup::Action,
        run_as: crate::source::setup::RunAs,
        options: FixOptions,
    ) -> Result<()> {
        use crate::source::setup::{Action, RunAs};
        let FixOptions {
            connection,
            new_profile_name,
        } = options;
        let profile = self.get(id_or_name)?;
        if action.is_neon() && !matches!(run_as, RunAs::Profile) {
            return Err(Error::invalid_input(
                "run as",
                "a Neon action runs through the Neon API with its key, not as a database role",
            ));
        }
        let password = if action.is_neon() {
            if let Action::NeonRevealPassword { role, .. }
            | Action::NeonResetPassword { role, .. } = &action
            {
                if role != &profile.user {
                    return Err(Error::invalid_input(
                        "role",
                        format!(
                            "the profile logs in as '{}', not '{role}': only its own password is kept",
                            profile.user
                        ),
                    ));
                }
            }
            action.run_neon(&self.neon_client().await?).await?
        } else {
            let own = matches!(run_as, RunAs::Profile);
            let spec = match (run_as, connection) {
                (RunAs::Profile, Some(made)) => made,
                (RunAs::Profile, None) => self.spec_blocking(id_or_name, None).await?,
                (other, made) => {
                    let profiles = self.clone();
                    let for_tunnel = profile.clone();
                    tokio::task::spawn_blocking(move || {
                        // The owner's connection goes through the profile's bastion too.
                        let base = match made {
                            Some(mut made) => {
                                made.password = None;
                                made
                            }
                            None => {
                                let mut base = for_tunnel.spec_without_password();
                                base.tunnel = profiles.tunnel_for(&for_tunnel, &base, None)?;
                                base
                            }
                        };
                        profiles.spec_to_run_as(base, other)
                    })
                    .await
                    .map_err(|e| Error::internal(format!("reading the keychain: {e}")))??
                }
            };
            let user = spec.user.clone();
            let ran = async {
                action
                    .run(&crate::source::connection::connect(&spec).await?)
                    .await
            }
            .await;
            drop(spec);
            ran.map_err(|e| action.explain_refusal(e, own, &user))?
        };
        let Some(password) = password else {
            return Ok(());
        };
        let profiles = self.clone();
        match &action {
            Action::CreateReplicationRole { role } | Action::NeonCreateRole { role, .. } => {
                let mut draft = draft_of(&profile);
                draft.name =
                    new_profile_name.unwrap_or_else(|| format!("{} ({role})", profile.name));
                draft.user = role.clone();
                let link = profile.neon.clone();
                tokio::task::spawn_blocking(move || {
                    let view = profiles.save(None, draft, Some(password))?;
                    profiles.copy_ssh_key(&profile.id, &view.profile.id)?;
                    profiles.link_neon(&view.profile.id, link)
                })
                .await
                .map_err(|e| Error::internal(format!("writing the keychain: {e}")))??;
            }
            _ => {
                let key = SecretKey::ProfilePassword(profile.id.clone());
                let label = profile.keychain_label();
                tokio::task::spawn_blocking(move || {
                    profiles.keychain()?.set(&key, &label, &password)
                })
                .await
                .map_err(|e| Error::internal(format!("writing the keychain: {e}")))??;
                if profile.password == PasswordStorage::AskEachTime {
                    let mut draft = draft_of(&profile);
                    draft.password_storage = PasswordStorage::Keychain;
                    let profiles = self.clone();
                    let id = profile.id.clone();
                    tokio::task::spawn_blocking(move || profiles.save(Some(&id), draft, None))
                        .await
                        .map_err(|e| Error::internal(format!("saving the profile: {e}")))??;
                }
            }
        }
        Ok(())
    }

    /// Links the profile to a Neon project and branch (or unlinks it with `None`).
    pub fn link_neon(
        &self,
        id_or_name: &str,
        link: Option<crate::source::neon::Link>,
    ) -> Result<ProfileView> {
        let profile = self.get(id_or_name)?;
        if let Some(link) = &link {
            for (field, value) in [
                ("projectId", &link.project_id),
                ("branchId", &link.branch_id),
            ] {
                if value.trim().is_empty() || value.chars().any(char::is_control) {
                    return Err(Error::invalid_input(
                        field,
                        "name a Neon project and branch",
                    ));
                }
            }
        }
        let mut file = self.load()?;
        for p in file.profiles.iter_mut().filter(|p| p.id == profile.id) {
            p.neon = link.clone();
        }
        self.store(&file)?;
        self.list()?
            .into_iter()
            .find(|v| v.profile.id == profile.id)
            .ok_or_else(|| Error::internal("the linked profile vanished"))
    }

    /// A Neon API client with the key from this keychain (read off the async workers).
    pub async fn neon_client(&self) -> Result<crate::source::neon::Client> {
        let profiles = self.clone();
        tokio::task::spawn_blocking(move || {
            crate::source::neon::Client::with_keychain(
                &profiles.keychain()?,
                profiles.neon_api.as_deref(),
            )
        })
        .await
        .map_err(|e| Error::internal(format!("reading the keychain: {e}")))?
    }

    /// The Neon projects the stored API key can see.
    pub async fn neon_projects(&self) -> Result<Vec<crate::source::neon::Project>> {
        self.neon_client().await?.projects().await
    }

    /// A Neon project's branches.
    pub async fn neon_branches(
        &self,
        project_id: &str,
    ) -> Result<Vec<crate::source::neon::Branch>> {
        self.neon_client().await?.branches(project_id).await
    }

    /// The Neon project and branch whose endpoint serves the profile's host, if the key can see one.
    pub async fn neon_locate(&self, id_or_name: &str) -> Result<Option<crate::source::neon::Link>> {
        let profile = self.get(id_or_name)?;
        self.neon_client().await?.locate(&profile.host).await
    }

    /// What publishing `tables` in the profile's publication would run, with each table that has no
    /// usable replica identity and what `choices` do with it (nothing runs).
    pub async fn plan_publication(
        &self,
        id_or_name: &str,
        tables: Vec<crate::source::publication::TableRef>,
        choices: Vec<crate::source::publication::Choice>,
    ) -> Result<crate::source::publication::Plan> {
        let profile = self.get(id_or_name)?;
        let spec = self.spec_blocking(id_or_name, None).await?;
        let client = crate::source::connection::connect(&spec).await?;
        crate::source::publication::plan(
            &client,
            &crate::source::publication::Request {
                publication: profile.publication.clone(),
                tables,
                choices,
                all_tables: false,
            },
        )
        .await
    }

    /// "Save and publish" for the profile: its publication and slot with `bindings`, each bound table
    /// without a usable replica identity handled as `choices` say (refused without one). Returns the
    /// statements it ran to make the publication contain the tables.
    pub async fn publish(
        &self,
        id_or_name: &str,
        bindings: Vec<crate::binding::Binding>,
        choices: Vec<crate::source::publication::Choice>,
    ) -> Result<Vec<String>> {
        let profile = self.get(id_or_name)?;
        if bindings.is_empty() {
            return Err(Error::invalid_input(
                "bindings",
                "select at least one table",
            ));
        }
        let definition = crate::binding::Definition {
            profile: Some(profile.id.clone()),
            publication: profile.publication.clone(),
            slot: profile.slot.clone(),
            bindings,
        };
        let spec = self.spec_blocking(id_or_name, None).await?;
        crate::capture::publish_with(&spec, &self.store_dir(id_or_name)?, &definition, &choices)
            .await
    }
}

/// What a caller may add to a confirmed fix ([`Profiles::run_fix_with`]).
#[derive(Debug, Default)]
pub struct FixOptions {
    /// The profile's connection as the caller already made it ([`Profiles::spec`], with a typed
    /// password if the profile asks each time): the fix runs over it, and an owner's connection
    /// shares its tunnel, instead of opening another.
    pub connection: Option<ConnectionSpec>,
    /// The name of the profile saved for a role the fix creates; by default the source profile's
    /// name followed by the role in parentheses.
    pub new_profile_name: Option<String>,
}

/// A saved profile as a form would show it.
fn draft_of(profile: &Profile) -> ProfileDraft {
    ProfileDraft {
        name: profile.name.clone(),
        address: profile.address(),
        user: profile.user.clone(),
        database: profile.database.clone(),
        sslmode: profile.sslmode,
        sslrootcert: profile
            .sslrootcert
            .as_ref()
            .map(|p| p.display().to_string()),
        options: profile.options.clone(),
        channel_binding: profile.channel_binding,
        publication: Some(profile.publication.clone()),
        slot: Some(profile.slot.clone()),
        application_name: Some(profile.application_name.clone()),
        password_storage: PasswordStorage::Keychain,
        encrypt_store: Some(profile.encrypted),
        ssh_address: profile.ssh.as_ref().map(|s| s.address.clone()),
        ssh_host_key: profile.ssh.as_ref().and_then(|s| s.host_key.clone()),
        ssh_key: None,
        ssh_passphrase: None,
    }
}

/// An accepted host key stays with its bastion: `profile` (as edited) keeps `saved`'s accepted key
/// when it names the same bastion and brings none of its own; a new address is a new host to accept.
fn keep_accepted_host_key(profile: &mut Profile, saved: &Profile) {
    if let (Some(ssh), Some(before)) = (profile.ssh.as_mut(), saved.ssh.as_ref()) {
        if ssh.host_key.is_none() && before.address == ssh.address {
            ssh.host_key = before.host_key.clone();
        }
    }
}

fn validate(id: String, draft: ProfileDraft) -> Result<Profile> {
    let name = draft.name.trim().to_string();
    if name.is_empty() {
        return Err(Error::invalid_input("name", "is empty"));
    }
    if name.chars().count() > 64 || name.chars().any(char::is_control) {
        return Err(Error::invalid_input(
            "name",
            "must be at most 64 characters, without control characters",
        ));
    }
    let (host, port) = parse_address(&draft.address)?;
    let user = draft.user.trim().to_string();
    if user.is_empty() {
        return Err(Error::invalid_input("user", "is empty"));
    }
    let database = draft.database.trim().to_string();
    if database.is_empty() {
        return Err(Error::invalid_input("database", "is empty"));
    }
    let optional = |value: Option<String>| {
        value
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    let publication = optional(draft.publication).unwrap_or_else(|| DEFAULT_PUBLICATION.into());
    if publication.len() > 63 {
        return Err(Error::invalid_input(
            "publication",
            "is longer than PostgreSQL's 63-byte limit for names",
        ));
    }
    let slot = optional(draft.slot).unwrap_or_else(|| DEFAULT_SLOT.into());
    if slot.len() > 63
        || !slot
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    {
        return Err(Error::invalid_input(
            "slot",
            "may contain only lower-case letters, digits and underscores, at most 63 (PostgreSQL's rule for slot names)",
        ));
    }
    let sslrootcert = optional(draft.sslrootcert).map(PathBuf::from);
    if let Some(path) = &sslrootcert {
        if !path.is_file() {
            return Err(Error::invalid_input(
                "sslrootcert",
                format!("{} is not a file", path.display()),
            ));
        }
    }
    let ssh = match optional(draft.ssh_address) {
        None => None,
        Some(address) => {
            let endpoint = crate::source::ssh::SshEndpoint::parse(&address)?;
            if host.starts_with('/') {
                return Err(Error::invalid_input(
                    "server address",
                    "is a Unix socket directory, which an SSH tunnel cannot reach: give the database's host name as the bastion sees it",
                ));
            }
            let host_key = match optional(draft.ssh_host_key) {
                Some(key) => Some(
                    crate::source::ssh::parse_host_key(&key)?
                        .to_openssh()
                        .map_err(|e| Error::invalid_input("SSH host key", e.to_string()))?,
                ),
                None => None,
            };
            Some(SshProfile {
                address: endpoint.url(),
                host_key,
            })
        }
    };
    if let Some(key) = draft.ssh_key.as_ref().filter(|k| !k.is_empty()) {
        crate::source::ssh::check_private_key(
            key,
            draft.ssh_passphrase.as_ref().filter(|p| !p.is_empty()),
        )?;
    }
    Ok(Profile {
        id,
        name,
        host,
        port,
        user,
        database,
        sslmode: draft.sslmode,
        sslrootcert,
        options: optional(draft.options),
        channel_binding: draft.channel_binding,
        publication,
        slot,
        application_name: optional(draft.application_name).unwrap_or_else(|| "tidepool".into()),
        password: draft.password_storage,
        neon: None,
        ssh,
        encrypted: draft.encrypt_store.unwrap_or(ENCRYPT_BY_DEFAULT),
        untested: false,
    })
}

/// Takes other accounts' access away from what Tidepool keeps in the data dir: the profile list (and
/// its temporary file) and the stores of captured rows.
fn tighten_data_dir(data_dir: &Path) {
    crate::owner_only::tighten(data_dir, &["profiles.json", "profiles.tmp", "stores"]);
}

fn new_id() -> Result<String> {
    crate::secrets::random_hex(8)
}

/// Replaces `path` with `bytes` so that a crash leaves either the old or the new content.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let write = || -> std::io::Result<()> {
        let mut file = crate::owner_only::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    };
    write().map_err(|e| Error::internal(format!("writing {}: {e}", path.display())))
}

/// Tidepool's data directory: `TIDEPOOL_DATA_DIR`, else the platform's data folder (on Linux
/// `~/.local/share/dev.tidepool.desktop`, the desktop app's own data dir, so the app and the command
/// line share profiles).
pub fn data_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("TIDEPOOL_DATA_DIR") {
        return Ok(PathBuf::from(dir));
    }
    dirs::data_dir()
        .map(|dir| dir.join("dev.tidepool.desktop"))
        .ok_or_else(|| Error::internal("no data folder: set HOME or TIDEPOOL_DATA_DIR"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profiles() -> (Profiles, Keychain, PathBuf) {
        let dir = std::env::temp_dir().join(format!("tidepool-profiles-{}", new_id().unwrap()));
        let keychain = Keychain::with_store(keyring_core::mock::Store::new().unwrap(), "mock");
        (
            Profiles::with_keychain(&dir, keychain.clone()),
            keychain,
            dir,
        )
    }

    fn draft(name: &str) -> ProfileDraft {
        ProfileDraft {
            name: name.into(),
            address: "db.example.com:6543".into(),
            user: "cdc_role".into(),
            database: "app".into(),
            sslmode: SslMode::Require,
            ..Default::default()
        }
    }

    #[test]
    fn save_keeps_the_password_in_the_keychain_and_out_of_the_file() {
        let (profiles, keychain, dir) = profiles();
        let view = profiles
            .save(None, draft("Prod"), Some(Secret::new("s3cr3t-pw")))
            .unwrap();
        assert_eq!(view.secret, SecretState::InKeychain);
        assert_eq!(view.profile.publication, DEFAULT_PUBLICATION);
        let file = std::fs::read_to_string(dir.join("profiles.json")).unwrap();
        assert!(!file.contains("s3cr3t-pw"));
        let key = SecretKey::ProfilePassword(view.profile.id.clone());
        assert_eq!(keychain.get(&key).unwrap().unwrap().expose(), "s3cr3t-pw");
        assert_eq!(
            profiles
                .spec("prod", None)
                .unwrap()
                .password
                .unwrap()
                .expose(),
            "s3cr3t-pw"
        );

        // Renaming keeps the secret; deleting removes it.
        let mut renamed = draft("Production");
        renamed.publication = Some("My Pub".into());
        let view = profiles
            .save(Some(&view.profile.id), renamed, None)
            .unwrap();
        assert_eq!(view.secret, SecretState::InKeychain);
        assert!(profiles.get("Prod").is_err());
        profiles.delete("Production").unwrap();
        assert!(keychain.get(&key).unwrap().is_none());
        assert!(profiles.list().unwrap().is_empty());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn ask_each_time_stores_nothing_and_switching_to_it_removes_the_secret() {
        let (profiles, keychain, dir) = profiles();
        let view = profiles
            .save(None, draft("Staging"), Some(Secret::new("pw")))
            .unwrap();
        let key = SecretKey::ProfilePassword(view.profile.id.clone());
        let mut ask = draft("Staging");
        ask.password_storage = PasswordStorage::AskEachTime;
        let view = profiles
            .save(Some(&view.profile.id), ask, Some(Secret::new("ignored")))
            .unwrap();
        assert_eq!(view.secret, SecretState::AskEachTime);
        assert!(keychain.get(&key).unwrap().is_none());
        assert!(profiles.spec("Staging", None).unwrap().password.is_none());
        assert_eq!(
            profiles
                .spec("Staging", Some(Secret::new("typed")))
                .unwrap()
                .password
                .unwrap()
                .expose(),
            "typed"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn invalid_drafts_name_the_field() {
        let (profiles, _, dir) = profiles();
        profiles.save(None, draft("Taken"), None).unwrap();
        type Edit = Box<dyn Fn(&mut ProfileDraft)>;
        let cases: Vec<(Edit, &str)> = vec![
            (Box::new(|d| d.name = " ".into()), "name"),
            (Box::new(|d| d.name = "taken".into()), "name"),
            (Box::new(|d| d.name = "x".repeat(65)), "name"),
            (Box::new(|d| d.address = "h:0".into()), "server address"),
            (Box::new(|d| d.user = "".into()), "user"),
            (Box::new(|d| d.database = "".into()), "database"),
            (Box::new(|d| d.slot = Some("Bad-Slot".into())), "slot"),
            (
                Box::new(|d| d.publication = Some("p".repeat(64))),
                "publication",
            ),
            (
                Box::new(|d| d.sslrootcert = Some("/nonexistent/ca.pem".into())),
                "sslrootcert",
            ),
        ];
        for (change, field) in cases {
            let mut d = draft("New");
            change(&mut d);
            let err = profiles.save(None, d, None).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidInput);
            assert!(
                err.message().starts_with(&format!("{field}:")),
                "{field}: {}",
                err.message()
            );
        }
        assert_eq!(profiles.list().unwrap().len(), 1);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn autofill_fills_the_form_and_flags_neon_poolers() {
        let fill = autofill(
            "postgresql://neondb_owner:AbC123dEf@ep-cool-darkness-123456-pooler.us-east-2.aws.neon.tech/neondb?sslmode=require",
        )
        .unwrap();
        assert_eq!(
            fill.draft.address,
            "ep-cool-darkness-123456-pooler.us-east-2.aws.neon.tech:5432"
        );
        assert_eq!(fill.draft.user, "neondb_owner");
        assert_eq!(fill.draft.database, "neondb");
        assert_eq!(fill.draft.sslmode, SslMode::Require);
        assert_eq!(fill.advice.len(), 1);
        let json = serde_json::to_value(&fill).unwrap();
        assert_eq!(json["password"], "AbC123dEf");
        assert_eq!(
            json["advice"][0]["directHost"],
            "ep-cool-darkness-123456.us-east-2.aws.neon.tech"
        );
        assert!(!format!("{fill:?}").contains("AbC123dEf"));
    }
}
