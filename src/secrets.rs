//! Secrets: database passwords and API keys.
//!
//! Invariant: a [`Secret`] never leaves the process except to the server it is meant for (or, once issue
//! "Connection profiles" lands, to the OS keychain). Its `Debug` and `Display` are redacted and it does not
//! implement `Serialize`, so it cannot slip into a log line, an error message, `--json` output or an event
//! sent to the UI. It can be deserialized, because the UI hands a freshly typed password to the engine.
//! The bytes are overwritten when the value is dropped.

use std::fmt;

use serde::Deserialize;

/// A password or key whose value is only reachable through [`Secret::expose`].
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
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

#[cfg(test)]
mod tests {
    use super::*;

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
