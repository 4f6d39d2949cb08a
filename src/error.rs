//! The one error type of the engine.
//!
//! Every failure that can reach a person carries a [`ErrorKind`] that callers (the desktop shell, the
//! command line, tests) match on, and a message written for a person: it names the field or object at
//! fault and, where there is one, what to do next. Nothing matches on message text outside this module.
//!
//! Invariant: a message never contains a secret. Errors from the PostgreSQL driver are rendered from their
//! structured parts (SQLSTATE, server message, detail, hint), which never carry the password.

use std::fmt;

use serde::{Deserialize, Serialize};

/// What went wrong, coarsely enough that a UI can choose what to show and what to offer next.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ts_rs::TS)]
pub enum ErrorKind {
    /// A value given by a person (a form field, a flag, a connection string) is malformed.
    InvalidInput,
    /// The server could not be reached, or the connection broke.
    Connection,
    /// The server refused the credentials.
    Authentication,
    /// TLS could not be negotiated or a certificate check failed.
    Tls,
    /// The role lacks a privilege the operation needs.
    Permission,
    /// A named object (database, table, slot, publication, profile) does not exist.
    NotFound,
    /// The server reported an error not covered by a more specific kind.
    Postgres,
    /// The OS keychain could not be opened or refused an operation.
    Keychain,
    /// The local store could not be written: its disk is full, or its folder refuses writes. Nothing
    /// unstored was confirmed to PostgreSQL; the capture resumes once there is room.
    Storage,
    /// The store can no longer follow its source without a gap: the slot is ahead of the store's
    /// checkpoint, was dropped or invalidated, or belongs to another database system. Streaming on would
    /// silently miss changes; a re-backfill (`tidepool capture --resync`, "Re-backfill and continue")
    /// is the way out.
    Diverged,
    /// An encrypted store cannot be opened: its key is missing from the keychain or does not open it.
    /// The local copy is lost, the source is not; discarding the store and capturing again rebuilds it.
    Locked,
    /// A consumer fell behind the store's log retention: changes it had not read yet were pruned
    /// ([`crate::store::retention`]).
    Behind,
    /// An SSH bastion's host key is not accepted yet, or differs from the one accepted: nothing was
    /// sent through it ([`crate::source::ssh`]).
    HostKey,
    /// Another capture is writing the same store (the app and a `tidepool capture` command on one
    /// profile): the second is refused before it touches anything ([`crate::store::lock`]).
    Busy,
    /// A bug or an unexpected state of the machine (a missing binary).
    Internal,
}

impl ErrorKind {
    /// The kind's name as the UI and `--json` output show it.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidInput => "InvalidInput",
            ErrorKind::Connection => "Connection",
            ErrorKind::Authentication => "Authentication",
            ErrorKind::Tls => "Tls",
            ErrorKind::Permission => "Permission",
            ErrorKind::NotFound => "NotFound",
            ErrorKind::Postgres => "Postgres",
            ErrorKind::Keychain => "Keychain",
            ErrorKind::Storage => "Storage",
            ErrorKind::Diverged => "Diverged",
            ErrorKind::Locked => "Locked",
            ErrorKind::Behind => "Behind",
            ErrorKind::HostKey => "HostKey",
            ErrorKind::Busy => "Busy",
            ErrorKind::Internal => "Internal",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An engine error: a kind to match on and a message for a person.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error, ts_rs::TS)]
#[error("{message}")]
#[ts(rename = "BackendError")]
pub struct Error {
    kind: ErrorKind,
    message: String,
}

/// The engine's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An error of `kind` with a message for a person.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
        }
    }

    /// A malformed value; `field` names what the person has to correct.
    pub fn invalid_input(field: &str, problem: impl fmt::Display) -> Self {
        Error::new(ErrorKind::InvalidInput, format!("{field}: {problem}"))
    }

    /// An unexpected state, with the context it happened in.
    pub fn internal(context: impl fmt::Display) -> Self {
        Error::new(ErrorKind::Internal, context.to_string())
    }

    /// What went wrong, to match on.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The message for a person.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The same error with `context` put in front of its message, keeping its kind.
    pub fn context(self, context: impl fmt::Display) -> Self {
        Error {
            kind: self.kind,
            message: format!("{context}: {}", self.message),
        }
    }

    /// The same error with `advice` (what to do about it) after its message, keeping its kind.
    pub fn with_advice(self, advice: impl fmt::Display) -> Self {
        Error {
            kind: self.kind,
            message: format!("{}; {advice}", self.message),
        }
    }

    /// This error with the Neon project named, when it is a refusal by Neon's IP Allow (what to change
    /// is that project's list); any other error unchanged.
    pub fn in_neon_project(self, project: Option<&str>) -> Self {
        match project {
            Some(project) if self.is_neon_ip_allow_refusal() => Error {
                kind: self.kind,
                message: self.message.replacen(
                    NEON_IP_ALLOW,
                    &format!("Neon's IP Allow of project {project}"),
                    1,
                ),
            },
            _ => self,
        }
    }

    /// The `Permission` error for a connection Neon's proxy refused because of the project's IP Allow
    /// list (`refusal`: what the server said), with what to change. One text for every connection
    /// Tidepool makes: queries, COPY and replication.
    pub(crate) fn neon_ip_allow(target: &str, refusal: &str) -> Self {
        Error::new(
            ErrorKind::Permission,
            format!(
                "{target}: {NEON_IP_ALLOW} refuses this connection: {refusal}. Add the public address Tidepool connects from to the project's list (Neon Console → Project settings → Network security → IP Allow)"
            ),
        )
    }

    /// Whether Neon's proxy refused the connection because of the project's IP Allow list.
    pub fn is_neon_ip_allow_refusal(&self) -> bool {
        self.kind == ErrorKind::Permission && self.message.contains(NEON_IP_ALLOW_REFUSAL)
    }

    /// Classifies an error from the PostgreSQL driver. `target` names the server (host and port) so the
    /// message says where the failure happened.
    pub fn from_postgres(err: &tokio_postgres::Error, target: &str) -> Self {
        use tokio_postgres::error::SqlState;

        if let Some(db) = err.as_db_error() {
            let code = db.code();
            if db.message().contains(NEON_IP_ALLOW_REFUSAL) {
                return Error::neon_ip_allow(
                    target,
                    &format!("{} (SQLSTATE {})", db.message(), code.code()),
                );
            }
            let kind = if *code == SqlState::INVALID_PASSWORD
                || *code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION
            {
                ErrorKind::Authentication
            } else if *code == SqlState::INSUFFICIENT_PRIVILEGE {
                ErrorKind::Permission
            } else if *code == SqlState::INVALID_CATALOG_NAME
                || *code == SqlState::UNDEFINED_TABLE
                || *code == SqlState::UNDEFINED_OBJECT
            {
                ErrorKind::NotFound
            } else if code.code().starts_with("08")
                // The server shutting down, crashed, or starting up: it will take connections
                // again, so this is a lost connection to retry, not a refusal (as the
                // replication client classifies them too).
                || matches!(code.code(), "57P01" | "57P02" | "57P03")
            {
                ErrorKind::Connection
            } else {
                ErrorKind::Postgres
            };
            let mut message = format!("{target}: {} (SQLSTATE {})", db.message(), code.code());
            if let Some(detail) = db.detail() {
                message.push_str(&format!("; {detail}"));
            }
            if let Some(hint) = db.hint() {
                message.push_str(&format!("; hint: {hint}"));
            }
            if kind == ErrorKind::Authentication {
                message.push_str("; check the user name and password");
            }
            return Error::new(kind, message);
        }

        // The driver's error kinds are private; its Display names them. This is the one place that reads
        // it, and the TLS prefix has been stable since tokio-postgres 0.5.
        let rendered = err.to_string();
        let cause = std::error::Error::source(err).map(|s| s.to_string());
        let detail = match &cause {
            Some(cause) if !rendered.contains(cause.as_str()) => format!("{rendered}: {cause}"),
            _ => rendered.clone(),
        };
        if rendered.starts_with("error performing TLS handshake") {
            if let Some(tls) = rustls_cause(err) {
                return Error::new(
                    ErrorKind::Tls,
                    format!("{target}: {}", describe_tls(tls, target)),
                );
            }
            return Error::new(ErrorKind::Tls, format!("{target}: {detail}"));
        }
        if rendered.starts_with("error connecting to server")
            || rendered.starts_with("timeout waiting for server")
            || rendered.starts_with("connection closed")
            || rendered.starts_with("error communicating with the server")
        {
            return Error::new(
                ErrorKind::Connection,
                format!("{target}: {detail}; check the server address and that the server accepts connections"),
            );
        }
        if detail.contains("password missing") {
            return Error::new(
                ErrorKind::Authentication,
                format!("{target}: the server asks for a password and none was given"),
            );
        }
        if rendered.starts_with("error authenticating")
            || rendered.starts_with("authentication error")
        {
            let mut message = format!("{target}: {detail}");
            if detail.contains("channel binding") {
                message.push_str(
                    "; channel_binding=require needs TLS (sslmode=require or stronger) and SCRAM",
                );
            }
            return Error::new(ErrorKind::Authentication, message);
        }
        Error::new(ErrorKind::Postgres, format!("{target}: {detail}"))
    }
}

/// What Neon's proxy says when a project's IP Allow list does not hold the client's address
/// ("This IP address 203.0.113.7 is not allowed to connect to this endpoint. Please add it to the
/// allowed list in the Neon console. …").
pub(crate) const NEON_IP_ALLOW_REFUSAL: &str = "is not allowed to connect to this endpoint";

/// How a refusal by IP Allow is named before the project is known.
const NEON_IP_ALLOW: &str = "Neon's IP Allow";

/// The rustls error behind a driver error. `io::Error::source` skips its own payload, so the walk looks
/// inside each `io::Error` as well.
fn rustls_cause(err: &tokio_postgres::Error) -> Option<&rustls::Error> {
    let mut next: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(err);
    while let Some(current) = next {
        if let Some(tls) = current.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        if let Some(tls) = current
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return Some(tls);
        }
        next = current.source();
    }
    None
}

/// Says which certificate check failed and what to do about it.
fn describe_tls(err: &rustls::Error, target: &str) -> String {
    use rustls::CertificateError as C;
    let host = target.rsplit_once(':').map(|(h, _)| h).unwrap_or(target);
    match err {
        rustls::Error::InvalidCertificate(reason @ (C::UnknownIssuer | C::BadSignature)) => format!(
            "certificate check failed: the server's certificate was not issued by a trusted authority ({reason:?}). \
             Give the authority's certificate as sslrootcert, or use sslmode=require to encrypt without verifying"
        ),
        rustls::Error::InvalidCertificate(C::NotValidForName | C::NotValidForNameContext { .. }) => format!(
            "certificate check failed: the server's certificate does not name the host '{host}' (NotValidForName). \
             Connect by a name the certificate lists, or use sslmode=verify-ca to check only the authority"
        ),
        rustls::Error::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => {
            "certificate check failed: the server's certificate has expired (Expired)".to_string()
        }
        rustls::Error::InvalidCertificate(C::NotValidYet | C::NotValidYetContext { .. }) => {
            "certificate check failed: the server's certificate is not valid yet; check this machine's clock".to_string()
        }
        rustls::Error::InvalidCertificate(other) => format!("certificate check failed: {other:?}"),
        other => format!("TLS handshake failed: {other}"),
    }
}

impl From<std::io::Error> for Error {
    fn from(err: std::io::Error) -> Self {
        if is_disk_full(&err) {
            return Error::new(
                ErrorKind::Storage,
                format!("the disk is full ({err}); free some space and start again"),
            );
        }
        Error::internal(err)
    }
}

/// Whether an I/O error says the disk (or the user's quota) is full.
pub fn is_disk_full(err: &std::io::Error) -> bool {
    matches!(
        err.kind(),
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
    ) || is_enospc(err)
}

// Older kernels' and libraries' ENOSPC may come through without the kind; elsewhere the kinds above
// are the whole test (a raw Windows error code is not an errno).
#[cfg(unix)]
fn is_enospc(err: &std::io::Error) -> bool {
    err.raw_os_error() == Some(libc::ENOSPC)
}

#[cfg(not(unix))]
fn is_enospc(_err: &std::io::Error) -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serializes_as_kind_and_message() {
        let err = Error::invalid_input("server address", "port must be a number from 1 to 65535");
        let json = serde_json::to_value(&err).unwrap();
        assert_eq!(json["kind"], "InvalidInput");
        assert_eq!(
            json["message"],
            "server address: port must be a number from 1 to 65535"
        );
    }

    #[test]
    #[cfg(unix)] // errno values; a raw Windows error code means something else
    fn a_full_disk_is_a_storage_error() {
        let err: Error = std::io::Error::from_raw_os_error(libc::ENOSPC).into();
        assert_eq!(err.kind(), ErrorKind::Storage);
        assert!(err.message().contains("disk is full"), "{}", err.message());
        let other: Error = std::io::Error::from_raw_os_error(libc::EACCES).into();
        assert_eq!(other.kind(), ErrorKind::Internal);
    }

    #[test]
    fn context_keeps_the_kind() {
        let err = Error::new(ErrorKind::NotFound, "no such slot").context("starting capture");
        assert_eq!(err.kind(), ErrorKind::NotFound);
        assert_eq!(err.message(), "starting capture: no such slot");
    }
}
