//! A consumer's definition: which collections, actions and filter, which mode, where it starts, and
//! where its messages go (a webhook, the pull API or a NATS JetStream stream).
//!
//! Invariants:
//! - A definition is validated as a whole before it is saved ([`ConsumerSpec::validate`]): a name of
//!   letters, digits, `-`, `_`, `.`; at least one collection; a filter that compiles (refused with its
//!   position and reason); numbers within the documented ranges; a webhook URL that is http(s); a
//!   NATS URL that is nats:// or tls:// and a subject template that renders a valid subject.
//! - No secret is part of a definition: secret header *names* are, their values, the signing secret
//!   and a NATS credential live only in the OS keychain ([`crate::secrets::SecretKey`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// What a change did, as Sequin names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ts_rs::TS)]
#[serde(rename_all = "lowercase")]
#[ts(rename = "ConsumerAction")]
pub enum Action {
    /// A row inserted.
    Insert,
    /// A row updated.
    Update,
    /// A row deleted.
    Delete,
    /// A row read by a backfill.
    Read,
}

impl Action {
    /// Sequin's name of the action.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Insert => "insert",
            Action::Update => "update",
            Action::Delete => "delete",
            Action::Read => "read",
        }
    }

    /// Every action, the default of a consumer.
    pub const ALL: [Action; 4] = [Action::Insert, Action::Update, Action::Delete, Action::Read];

    /// Parses a comma-separated list (`insert,update`).
    pub fn parse_list(text: &str) -> Result<Vec<Action>> {
        let mut out = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let action = match part {
                "insert" => Action::Insert,
                "update" => Action::Update,
                "delete" => Action::Delete,
                "read" => Action::Read,
                other => {
                    return Err(Error::invalid_input(
                        "actions",
                        format!("'{other}' is not an action: use insert, update, delete or read"),
                    ))
                }
            };
            if !out.contains(&action) {
                out.push(action);
            }
        }
        Ok(out)
    }
}

/// Every change, or the latest state of each row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ts_rs::TS)]
#[serde(rename_all = "lowercase")]
#[ts(rename = "ConsumerMode")]
pub enum Mode {
    /// Every change, in commit order per group.
    #[default]
    Changes,
    /// The latest state of each key: changes to a key not yet delivered replace each other; a delete
    /// is delivered as `delete`.
    Rows,
}

/// Where a new consumer starts in the store's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ts_rs::TS)]
#[serde(rename_all = "lowercase")]
#[ts(rename = "ConsumerStart")]
pub enum Start {
    /// After everything stored when the consumer is added.
    #[default]
    Now,
    /// From the beginning of the stored history, backfilled rows (as `read`) included.
    Beginning,
}

/// An HTTP endpoint that receives messages by POST.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ts_rs::TS)]
#[serde(rename_all = "camelCase")]
#[ts(rename = "WebhookDestination")]
pub struct Webhook {
    /// `http://` or `https://` URL.
    pub url: String,
    /// Headers sent with every request (not secret).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Names of headers whose values are in the keychain.
    #[serde(default)]
    pub secret_headers: Vec<String>,
    /// Messages per request; `None` sends one bare message per request (no `{"data": [...]}`).
    pub batch_size: Option<u32>,
    /// How long a request may take before it counts as failed.
    pub timeout_ms: u64,
    /// Failed attempts after which a message is parked; `None` retries forever.
    pub max_retries: Option<u32>,
    /// Requests under way at once (each to a different set of groups).
    pub max_in_flight: u32,
}

/// Messages fetched by the application through the pull API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ts_rs::TS)]
#[serde(rename_all = "camelCase")]
#[ts(rename = "PullDestination")]
pub struct Pull {
    /// How long a received message stays invisible before it is offered again unless acknowledged.
    pub visibility_timeout_ms: u64,
    /// Most messages received and not yet acknowledged at once.
    pub max_ack_pending: u32,
    /// Most receive requests waiting at once; more are answered 429.
    pub max_waiting: u32,
}

impl Default for Pull {
    fn default() -> Self {
        Pull {
            visibility_timeout_ms: 30_000,
            max_ack_pending: 10_000,
            max_waiting: 20,
        }
    }
}

/// How Tidepool proves who it is to a NATS server. The secret itself (token, password, the seed of
/// an nkey, or a `.creds` file's content) is in the keychain, never here.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, ts_rs::TS)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum NatsAuth {
    /// No credentials.
    #[default]
    None,
    /// A token (`authorization { token: … }`).
    Token,
    /// A user name and a password (the password is the secret).
    #[serde(rename_all = "camelCase")]
    UserPassword {
        /// The user name (not secret).
        user: String,
    },
    /// An nkey seed (`SU…`).
    Nkey,
    /// The content of a `.creds` file (a user JWT and its nkey seed), as `nsc` writes it.
    Creds,
}

impl NatsAuth {
    /// Whether a secret must be in the keychain for it.
    pub fn needs_secret(&self) -> bool {
        !matches!(self, NatsAuth::None)
    }
}

/// A NATS JetStream stream that receives each message on a subject of its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ts_rs::TS)]
#[serde(rename_all = "camelCase")]
#[ts(rename = "NatsDestination")]
pub struct Nats {
    /// The server, `nats://host:port` or `tls://host:port` (several separated by commas).
    pub url: String,
    /// The subject of each message: text with `{database}`, `{schema}`, `{table}` and `{action}`
    /// filled in (see [`crate::deliver::subject`]).
    pub subject: String,
    /// A stream Tidepool creates if it is missing, capturing every subject the template gives;
    /// `None` means a stream the user made must capture them.
    #[serde(default)]
    pub stream: Option<String>,
    /// Credentials.
    #[serde(default)]
    pub auth: NatsAuth,
    /// Refuse a connection that is not TLS (a `tls://` URL implies it).
    #[serde(default)]
    pub tls: bool,
    /// A PEM file of the authority that signed the server's certificate, trusted besides the
    /// system's (as libpq's `sslrootcert`).
    #[serde(default)]
    pub ca_file: Option<String>,
    /// How long a publish acknowledgement may take before the message counts as failed.
    pub timeout_ms: u64,
    /// Messages published before their acknowledgements are awaited.
    pub batch_size: u32,
    /// Failed attempts after which a message is parked; `None` retries forever.
    pub max_retries: Option<u32>,
}

/// The default subject template.
pub const DEFAULT_NATS_SUBJECT: &str = "tidepool.{schema}.{table}.{action}";

impl Default for Nats {
    fn default() -> Self {
        Nats {
            url: "nats://127.0.0.1:4222".into(),
            subject: DEFAULT_NATS_SUBJECT.into(),
            stream: None,
            auth: NatsAuth::None,
            tls: false,
            ca_file: None,
            timeout_ms: 5_000,
            batch_size: 100,
            max_retries: None,
        }
    }
}

/// Where messages go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ts_rs::TS)]
#[serde(rename_all = "camelCase", tag = "type")]
#[ts(rename = "ConsumerDestination")]
pub enum Destination {
    /// HTTP push.
    Webhook(Webhook),
    /// HTTP pull.
    Pull(Pull),
    /// Publish to NATS JetStream.
    Nats(Nats),
}

/// A consumer as a person defines it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ts_rs::TS)]
#[serde(rename_all = "camelCase")]
pub struct ConsumerSpec {
    /// Unique name in the store.
    pub name: String,
    /// Collections of the capture it delivers.
    pub collections: Vec<String>,
    /// Actions delivered; empty means all.
    #[serde(default)]
    pub actions: Vec<Action>,
    /// A CEL expression over `record`, `changes`, `action` and `metadata`.
    #[serde(default)]
    pub filter: Option<String>,
    /// Changes or rows.
    #[serde(default)]
    pub mode: Mode,
    /// Where it starts.
    #[serde(default)]
    pub start: Start,
    /// Columns that group messages (one in flight per group, commit order within it); empty means
    /// the row's key.
    #[serde(default)]
    pub group_by: Vec<String>,
    /// Where messages go.
    pub destination: Destination,
}

/// A saved consumer: its definition, its id and where it stands.
#[derive(Debug, Clone, PartialEq, Serialize, ts_rs::TS)]
#[serde(rename_all = "camelCase")]
pub struct Consumer {
    /// Stable id (a UUID), in every message's `metadata.consumer.id`.
    pub id: String,
    /// The definition.
    #[serde(flatten)]
    pub spec: ConsumerSpec,
    /// The last log position read into its queue.
    pub position: u64,
    /// Messages waiting or in flight.
    pub pending: u64,
    /// Messages parked after their last retry.
    pub failed: u64,
    /// What its user must know: changes it missed (fell behind the retention) or a gap in the
    /// store's history it is crossing.
    pub notices: Vec<Notice>,
    /// Paused by hand: nothing is delivered until it is resumed; its messages stay queued.
    pub paused: bool,
}

/// Something a consumer's user must know about what it delivers, kept until the consumer is removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ts_rs::TS)]
#[serde(rename_all = "camelCase")]
#[ts(rename = "ConsumerNotice")]
pub struct Notice {
    /// [`crate::ErrorKind::Behind`]: changes it had not read were pruned;
    /// [`crate::ErrorKind::Diverged`]: the store's history has a gap it crosses.
    pub kind: crate::ErrorKind,
    /// What happened and what it means for the messages, naming the consumer.
    pub message: String,
    /// When it was recorded (Unix milliseconds).
    pub at_ms: i64,
}

impl ConsumerSpec {
    /// Whether it delivers `action`.
    pub fn wants(&self, action: Action) -> bool {
        self.actions.is_empty() || self.actions.contains(&action)
    }

    /// Checks the whole definition; the error names the field at fault.
    pub fn validate(&self) -> Result<()> {
        validate_name(&self.name)?;
        if self.collections.is_empty() {
            return Err(Error::invalid_input(
                "collection",
                "a consumer needs at least one collection",
            ));
        }
        if let Some(filter) = &self.filter {
            crate::deliver::filter::Filter::compile(filter)?;
        }
        for column in &self.group_by {
            if column.is_empty() {
                return Err(Error::invalid_input("group-by", "a column name is empty"));
            }
        }
        match &self.destination {
            Destination::Webhook(w) => {
                let url = reqwest::Url::parse(&w.url)
                    .map_err(|e| Error::invalid_input("webhook", format!("'{}': {e}", w.url)))?;
                if !matches!(url.scheme(), "http" | "https") {
                    return Err(Error::invalid_input(
                        "webhook",
                        format!("'{}' is not an http or https URL", w.url),
                    ));
                }
                if let Some(n) = w.batch_size {
                    if !(1..=1000).contains(&n) {
                        return Err(Error::invalid_input(
                            "batch-size",
                            format!("{n} is out of range: 1 to 1000"),
                        ));
                    }
                }
                if !(100..=600_000).contains(&w.timeout_ms) {
                    return Err(Error::invalid_input(
                        "timeout-ms",
                        format!("{} is out of range: 100 to 600000", w.timeout_ms),
                    ));
                }
                if !(1..=1000).contains(&w.max_in_flight) {
                    return Err(Error::invalid_input(
                        "max-in-flight",
                        format!("{} is out of range: 1 to 1000", w.max_in_flight),
                    ));
                }
                for name in w.headers.keys().chain(&w.secret_headers) {
                    if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
                        return Err(Error::invalid_input(
                            "header",
                            format!("'{name}' is not a valid header name"),
                        ));
                    }
                }
                for (name, value) in &w.headers {
                    if reqwest::header::HeaderValue::from_str(value).is_err() {
                        return Err(Error::invalid_input(
                            "header",
                            format!("the value of '{name}' is not a valid header value"),
                        ));
                    }
                }
            }
            Destination::Pull(p) => {
                if !(500..=3_600_000).contains(&p.visibility_timeout_ms) {
                    return Err(Error::invalid_input(
                        "visibility-timeout-ms",
                        format!(
                            "{} is out of range: 500 to 3600000",
                            p.visibility_timeout_ms
                        ),
                    ));
                }
                if p.max_ack_pending == 0 {
                    return Err(Error::invalid_input(
                        "max-ack-pending",
                        "must be at least 1",
                    ));
                }
                if p.max_waiting == 0 {
                    return Err(Error::invalid_input("max-waiting", "must be at least 1"));
                }
            }
            Destination::Nats(n) => n.validate()?,
        }
        Ok(())
    }
}

impl Nats {
    fn validate(&self) -> Result<()> {
        if self.url.trim().is_empty() {
            return Err(Error::invalid_input("nats-url", "the server URL is empty"));
        }
        for server in self.url.split(',').map(str::trim) {
            let parsed = reqwest::Url::parse(server)
                .map_err(|e| Error::invalid_input("nats-url", format!("'{server}': {e}")))?;
            if !matches!(parsed.scheme(), "nats" | "tls") || parsed.host_str().is_none() {
                return Err(Error::invalid_input(
                    "nats-url",
                    format!("'{server}' is not a nats://host:port or tls://host:port URL"),
                ));
            }
            if !parsed.username().is_empty() || parsed.password().is_some() {
                // A credential in the URL would be saved in the definition, outside the keychain.
                return Err(Error::invalid_input(
                    "nats-url",
                    format!(
                        "'{}' carries credentials: give them as the consumer's NATS credentials, which go to the keychain",
                        parsed.host_str().unwrap_or_default()
                    ),
                ));
            }
        }
        crate::deliver::subject::validate_template(&self.subject)?;
        if let Some(stream) = &self.stream {
            crate::deliver::subject::validate_stream_name(stream)?;
        }
        if let Some(file) = &self.ca_file {
            if !std::path::Path::new(file).is_file() {
                return Err(Error::invalid_input(
                    "nats-ca-file",
                    format!("{file} is not a file"),
                ));
            }
        }
        if let NatsAuth::UserPassword { user } = &self.auth {
            if user.is_empty() {
                return Err(Error::invalid_input("nats-user", "the user name is empty"));
            }
        }
        if !(100..=600_000).contains(&self.timeout_ms) {
            return Err(Error::invalid_input(
                "timeout-ms",
                format!("{} is out of range: 100 to 600000", self.timeout_ms),
            ));
        }
        if !(1..=1000).contains(&self.batch_size) {
            return Err(Error::invalid_input(
                "batch-size",
                format!("{} is out of range: 1 to 1000", self.batch_size),
            ));
        }
        Ok(())
    }
}

/// A consumer name: 1 to 100 letters, digits, `-`, `_` or `.`; not a UUID (ids and names share the
/// pull API's path).
pub fn validate_name(name: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > 100
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(Error::invalid_input(
            "name",
            format!("'{name}' must be 1 to 100 letters, digits, '-', '_' or '.'"),
        ));
    }
    if is_uuid(name) {
        return Err(Error::invalid_input(
            "name",
            format!("'{name}' looks like a consumer id; choose another name"),
        ));
    }
    Ok(())
}

/// Whether `text` is a UUID in its hyphenated form.
pub fn is_uuid(text: &str) -> bool {
    let b = text.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// A random (version 4) UUID, from the OS's randomness (one `getrandom` call: ack ids are made
/// for every queued message).
pub fn new_uuid() -> Result<String> {
    use ring::rand::SecureRandom as _;
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| Error::internal("reading random bytes for an id"))?;
    Ok(uuid::Builder::from_random_bytes(bytes)
        .into_uuid()
        .hyphenated()
        .to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pull(name: &str) -> ConsumerSpec {
        ConsumerSpec {
            name: name.into(),
            collections: vec!["public/orders".into()],
            actions: vec![],
            filter: None,
            mode: Mode::Changes,
            start: Start::Now,
            group_by: vec![],
            destination: Destination::Pull(Pull::default()),
        }
    }

    #[test]
    fn names_and_ids_are_told_apart() {
        assert!(pull("orders-to-app").validate().is_ok());
        let e = pull("bad name").validate().unwrap_err();
        assert!(e.message().starts_with("name:"), "{e}");
        let id = new_uuid().unwrap();
        assert!(is_uuid(&id), "{id}");
        assert_eq!(&id[14..15], "4");
        assert!(pull(&id).validate().is_err());
        assert_ne!(new_uuid().unwrap(), id);
    }

    #[test]
    fn a_bad_filter_is_refused_with_its_field() {
        let mut spec = pull("x");
        spec.filter = Some("record.total > ".into());
        let e = spec.validate().unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::InvalidInput);
        assert!(e.message().starts_with("filter:"), "{e}");
    }

    #[test]
    fn webhook_settings_are_checked() {
        let mut spec = pull("x");
        spec.destination = Destination::Webhook(Webhook {
            url: "ftp://example.com".into(),
            headers: BTreeMap::new(),
            secret_headers: vec![],
            batch_size: Some(10),
            timeout_ms: 5000,
            max_retries: None,
            max_in_flight: 4,
        });
        assert!(spec
            .validate()
            .unwrap_err()
            .message()
            .starts_with("webhook:"));
        if let Destination::Webhook(w) = &mut spec.destination {
            w.url = "http://127.0.0.1:9/hook".into();
            w.batch_size = Some(0);
        }
        assert!(spec
            .validate()
            .unwrap_err()
            .message()
            .starts_with("batch-size:"));
        assert_eq!(
            Action::parse_list("insert, read").unwrap(),
            vec![Action::Insert, Action::Read]
        );
        assert!(Action::parse_list("upsert").is_err());
    }
}
