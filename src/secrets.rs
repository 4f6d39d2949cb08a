//! Secrets: database passwords and the Neon API key, and the OS keychain that keeps them.
//!
//! Invariants:
//! - A [`Secret`] never leaves the process except to the server it is meant for or to the OS keychain.
//!   Its `Debug` and `Display` are redacted and it does not implement `Serialize`, so it cannot slip into a
//!   log line, an error message, `--json` output or an event sent to the UI. It can be deserialized,
//!   because the UI hands a freshly typed password to the engine. Its bytes are overwritten on drop.
//! - Secrets are stored only in the OS keychain ([`Keychain`]): the Secret Service on Linux, the Keychain
//!   on macOS, the Credential Manager on Windows. When none can be opened the operation fails with
//!   [`ErrorKind::Keychain`]; there is no fallback to a file.
//! - Entries are keyed by a stable id (a profile's id, not its name), so renaming keeps the secret; the
//!   label a person sees in their keychain app names Tidepool and the profile.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use keyring_core::{CredentialStore, Error as KeyringError};
use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result};

/// A password or key whose value is only reachable through [`Secret::expose`].
#[derive(Clone, Default, PartialEq, Eq, Deserialize, ts_rs::TS)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The value, for the one call that has to hand it to a server or the keychain.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether the secret is empty (no password given).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The password's SCRAM-SHA-256 verifier (random salt, 4096 iterations), what `CREATE ROLE …
    /// PASSWORD` stores when given the password itself. Sending this instead keeps the password out of
    /// the statement, and so out of the server's log and every client-side log of the SQL. PostgreSQL
    /// stores it as given; SCRAM and `md5` authentication both accept it.
    pub fn scram_verifier(&self) -> String {
        postgres_protocol::password::scram_sha_256(self.0.as_bytes())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        // Overwrite in place so the value does not linger in freed memory; volatile writes keep the
        // compiler from eliding a store to memory that is about to be freed.
        // SAFETY: writing zero bytes keeps the String valid UTF-8.
        unsafe {
            for byte in self.0.as_bytes_mut() {
                std::ptr::write_volatile(byte, 0);
            }
        }
    }
}

/// `bytes` random bytes from the OS, hex-encoded: generated passwords and stable ids.
pub(crate) fn random_hex(bytes: usize) -> Result<String> {
    use std::io::Read;
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .map_err(|e| Error::internal(format!("reading random bytes: {e}")))?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// The service name every Tidepool entry is stored under (`secret-tool lookup service Tidepool …`).
pub const SERVICE: &str = "Tidepool";

/// Which secret an entry holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretKey {
    /// The database password of the profile with this id.
    ProfilePassword(String),
    /// The Neon API key from Settings.
    NeonApiKey,
    /// The Standard Webhooks signing secret (`whsec_…`) of the consumer with this id.
    WebhookSecret(String),
    /// The value of a secret header (its name, lowercase) of the consumer with this id.
    WebhookHeader(String, String),
    /// The pull API's bearer token for the store of this scope (a profile's id).
    PullApiToken(String),
    /// The NATS credential (token, password, nkey seed or `.creds` content) of the consumer with
    /// this id.
    NatsCredential(String),
    /// The encryption key of the store whose marker names this key id ([`crate::store::encryption`]).
    StoreKey(String),
    /// The SSH private key of the profile with this id ([`crate::source::ssh`]).
    SshKey(String),
    /// The passphrase of that key, if it has one.
    SshPassphrase(String),
}

impl SecretKey {
    /// The entry's user name in the keychain.
    pub fn account(&self) -> String {
        match self {
            SecretKey::ProfilePassword(id) => format!("profile-{id}"),
            SecretKey::NeonApiKey => "neon-api-key".into(),
            SecretKey::WebhookSecret(id) => format!("consumer-{id}-signing-secret"),
            SecretKey::WebhookHeader(id, name) => {
                format!("consumer-{id}-header-{}", name.to_ascii_lowercase())
            }
            SecretKey::PullApiToken(scope) => format!("pull-api-token-{scope}"),
            SecretKey::NatsCredential(id) => format!("consumer-{id}-nats-credential"),
            SecretKey::StoreKey(id) => format!("store-key-{id}"),
            SecretKey::SshKey(id) => format!("profile-{id}-ssh-key"),
            SecretKey::SshPassphrase(id) => format!("profile-{id}-ssh-passphrase"),
        }
    }
}

/// Whether the OS keychain can be used right now, as shown next to each profile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ts_rs::TS)]
#[serde(tag = "state", rename_all = "camelCase")]
pub enum KeychainStatus {
    /// The keychain opened.
    Available {
        /// Which keychain, e.g. "Secret Service".
        backend: String,
    },
    /// The keychain could not be opened; the reason says why.
    Unavailable {
        /// What went wrong, for a person.
        reason: String,
    },
}

/// The OS keychain, or any keyring-core store (tests use the in-memory mock store).
#[derive(Clone)]
pub struct Keychain {
    store: Arc<CredentialStore>,
    backend: &'static str,
}

impl fmt::Debug for Keychain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keychain")
            .field("backend", &self.backend)
            .finish()
    }
}

impl Keychain {
    /// Opens the platform's keychain.
    pub fn open() -> Result<Keychain> {
        let (store, backend) = platform_store().map_err(|e| keychain_unavailable(&e))?;
        Ok(Keychain { store, backend })
    }

    /// A keychain over any keyring-core store.
    pub fn with_store(store: Arc<CredentialStore>, backend: &'static str) -> Keychain {
        Keychain { store, backend }
    }

    /// Whether the platform keychain opens, without touching any entry.
    pub fn status() -> KeychainStatus {
        match Keychain::open() {
            Ok(keychain) => KeychainStatus::Available {
                backend: keychain.backend.to_string(),
            },
            Err(e) => KeychainStatus::Unavailable {
                reason: e.message().to_string(),
            },
        }
    }

    /// Which keychain this is.
    pub fn backend(&self) -> &'static str {
        self.backend
    }

    /// Stores `secret` under `key`, replacing any earlier value. `label` is what a person sees in their
    /// keychain app.
    pub fn set(&self, key: &SecretKey, label: &str, secret: &Secret) -> Result<()> {
        let modifiers = HashMap::from([("label", label)]);
        let modifiers = if self.backend == SECRET_SERVICE {
            Some(&modifiers)
        } else {
            None
        };
        let entry = self
            .store
            .build(SERVICE, &key.account(), modifiers)
            .map_err(|e| keychain_error("opening", &e))?;
        entry
            .set_password(secret.expose())
            .map_err(|e| keychain_error("storing", &e))
    }

    /// The secret under `key`, if there is one.
    pub fn get(&self, key: &SecretKey) -> Result<Option<Secret>> {
        let entry = self
            .store
            .build(SERVICE, &key.account(), None)
            .map_err(|e| keychain_error("opening", &e))?;
        match entry.get_password() {
            Ok(password) => Ok(Some(Secret::new(password))),
            Err(KeyringError::NoEntry) => Ok(None),
            Err(e) => Err(keychain_error("reading", &e)),
        }
    }

    /// Removes the secret under `key`; removing one that is not there is not an error.
    pub fn delete(&self, key: &SecretKey) -> Result<()> {
        let entry = self
            .store
            .build(SERVICE, &key.account(), None)
            .map_err(|e| keychain_error("opening", &e))?;
        match entry.delete_credential() {
            Ok(()) | Err(KeyringError::NoEntry) => Ok(()),
            Err(e) => Err(keychain_error("deleting", &e)),
        }
    }
}

const SECRET_SERVICE: &str = "Secret Service";

/// Whether the Neon API key is in the keychain, as Settings shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ts_rs::TS)]
#[serde(rename_all = "camelCase")]
pub struct NeonKeyStatus {
    /// A key is stored.
    pub stored: bool,
}

impl Keychain {
    /// Stores the Neon API key (Settings). It is checked only for shape here; the Neon client reports a
    /// key Neon refuses.
    pub fn set_neon_api_key(&self, key: &Secret) -> Result<NeonKeyStatus> {
        let value = key.expose().trim();
        if value.is_empty() || value.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(Error::invalid_input(
                "Neon API key",
                "must be one word without spaces (copy it from Neon's Account settings → API keys)",
            ));
        }
        self.set(
            &SecretKey::NeonApiKey,
            "Tidepool: Neon API key",
            &Secret::new(value),
        )?;
        Ok(NeonKeyStatus { stored: true })
    }

    /// Whether the Neon API key is stored.
    pub fn neon_api_key_status(&self) -> Result<NeonKeyStatus> {
        Ok(NeonKeyStatus {
            stored: self.get(&SecretKey::NeonApiKey)?.is_some(),
        })
    }

    /// Removes the Neon API key.
    pub fn remove_neon_api_key(&self) -> Result<NeonKeyStatus> {
        self.delete(&SecretKey::NeonApiKey)?;
        Ok(NeonKeyStatus { stored: false })
    }
}

#[cfg(target_os = "linux")]
fn platform_store() -> std::result::Result<(Arc<CredentialStore>, &'static str), KeyringError> {
    let store: Arc<CredentialStore> = zbus_secret_service_keyring_store::Store::new()?;
    Ok((store, SECRET_SERVICE))
}

#[cfg(target_os = "macos")]
fn platform_store() -> std::result::Result<(Arc<CredentialStore>, &'static str), KeyringError> {
    let store: Arc<CredentialStore> = apple_native_keyring_store::keychain::Store::new()?;
    Ok((store, "macOS Keychain"))
}

#[cfg(target_os = "windows")]
fn platform_store() -> std::result::Result<(Arc<CredentialStore>, &'static str), KeyringError> {
    let store: Arc<CredentialStore> = windows_native_keyring_store::Store::new()?;
    Ok((store, "Windows Credential Manager"))
}

#[cfg(not(any(target_os = "linux", target_os = "macos", target_os = "windows")))]
fn platform_store() -> std::result::Result<(Arc<CredentialStore>, &'static str), KeyringError> {
    Err(KeyringError::NotSupportedByStore(
        "no keychain is supported on this operating system".into(),
    ))
}

/// Renders a keyring error without the payloads that may hold secret bytes (`BadEncoding`,
/// `BadDataFormat` carry the stored blob).
fn describe(e: &KeyringError) -> String {
    match e {
        KeyringError::PlatformFailure(inner) | KeyringError::NoStorageAccess(inner) => {
            inner.to_string()
        }
        KeyringError::BadEncoding(_) => "the stored value is not UTF-8 text".into(),
        KeyringError::BadDataFormat(_, inner) => format!("the stored value is malformed: {inner}"),
        KeyringError::NoEntry => "no such entry".into(),
        KeyringError::Ambiguous(entries) => format!("{} entries match", entries.len()),
        other => other.to_string(),
    }
}

fn keychain_unavailable(e: &KeyringError) -> Error {
    Error::new(
        ErrorKind::Keychain,
        format!(
            "the OS keychain could not be opened ({}). Tidepool keeps passwords only in the keychain, never \
             in a file: unlock or start your keyring (on Linux, a Secret Service such as GNOME Keyring or \
             KWallet), or choose \"ask for the password each time\"",
            describe(e)
        ),
    )
}

fn keychain_error(action: &str, e: &KeyringError) -> Error {
    match e {
        KeyringError::NoStorageAccess(_) => Error::new(
            ErrorKind::Keychain,
            format!(
                "the OS keychain refused access while {action} a secret ({}); is it locked?",
                describe(e)
            ),
        ),
        _ => Error::new(
            ErrorKind::Keychain,
            format!(
                "{action} a secret in the OS keychain failed: {}",
                describe(e)
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mock_keychain() -> Keychain {
        Keychain::with_store(keyring_core::mock::Store::new().unwrap(), "mock")
    }

    #[test]
    fn stores_reads_and_deletes_by_key() {
        let keychain = mock_keychain();
        let key = SecretKey::ProfilePassword("abc".into());
        assert!(keychain.get(&key).unwrap().is_none());
        keychain
            .set(&key, "Tidepool: test", &Secret::new("pw1"))
            .unwrap();
        keychain
            .set(&key, "Tidepool: test", &Secret::new("pw2"))
            .unwrap();
        assert_eq!(keychain.get(&key).unwrap().unwrap().expose(), "pw2");
        assert!(keychain.get(&SecretKey::NeonApiKey).unwrap().is_none());
        keychain.delete(&key).unwrap();
        keychain.delete(&key).unwrap();
        assert!(keychain.get(&key).unwrap().is_none());
    }

    #[test]
    fn errors_never_render_stored_bytes() {
        let err = keychain_error("reading", &KeyringError::BadEncoding(b"hunter2".to_vec()));
        assert_eq!(err.kind(), ErrorKind::Keychain);
        assert!(!err.message().contains("hunter2"));
    }

    #[test]
    fn debug_and_display_are_redacted() {
        let secret = Secret::new("hunter2");
        assert_eq!(format!("{secret:?}"), "Secret(<redacted>)");
        assert_eq!(format!("{secret}"), "<redacted>");
        assert!(!format!("{:?}", Some(&secret)).contains("hunter2"));
        assert_eq!(secret.expose(), "hunter2");
    }

    #[test]
    fn deserializes_from_a_plain_string() {
        let secret: Secret = serde_json::from_str("\"s3cret\"").unwrap();
        assert_eq!(secret.expose(), "s3cret");
    }
}
