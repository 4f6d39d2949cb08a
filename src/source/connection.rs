//! Connecting to PostgreSQL and reading the facts a person needs before anything else: which server,
//! as whom, whether logical decoding is on, and whether this role may replicate.
//!
//! A [`ConnectionSpec`] is what the engine connects with; it comes from a connection string
//! ([`crate::source::conninfo`]) or a profile ([`crate::app::profile`]). The password travels inside it as a [`Secret`]
//! and goes nowhere but to the server.
//!
//! Invariants: the host name, not a resolved address, is what TLS sees (SNI and name checks need it); a
//! connection attempt is bounded by [`ConnectionSpec::connect_timeout`]; nothing here writes to the server.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio_postgres::config::SslMode as DriverSslMode;
use tokio_postgres::{Client, Config, NoTls};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::error::{Error, ErrorKind, Result};
use crate::secrets::Secret;
use crate::source::tls::{client_config, SslMode};

/// The port PostgreSQL listens on unless told otherwise.
pub const DEFAULT_PORT: u16 = 5432;

/// How long to wait for a server to answer before giving up.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest `connect_timeout` accepted.
pub const MAX_CONNECT_TIMEOUT: Duration = Duration::from_secs(3600);
/// PostgreSQL's longest name (NAMEDATALEN - 1).
const MAX_NAME_BYTES: usize = 63;

/// Everything needed to open a connection.
#[derive(Debug, Clone)]
pub struct ConnectionSpec {
    /// Host name, IP address, or the directory of a Unix socket (starting with `/`).
    pub host: String,
    /// TCP port (also the suffix of the Unix socket's file name).
    pub port: u16,
    /// Role to log in as.
    pub user: String,
    /// Password, if the server asks for one.
    pub password: Option<Secret>,
    /// Database to connect to.
    pub database: String,
    /// TLS policy.
    pub sslmode: SslMode,
    /// PEM file of trusted certificate authorities for `verify-ca` / `verify-full`.
    pub sslrootcert: Option<PathBuf>,
    /// Shown in `pg_stat_activity.application_name`.
    pub application_name: String,
    /// Upper bound for reaching the server and logging in.
    pub connect_timeout: Duration,
    /// Server options sent at start-up (libpq `options`; Neon accepts `endpoint=<id>` here).
    pub options: Option<String>,
    /// SCRAM channel binding policy.
    pub channel_binding: ChannelBinding,
    /// The SSH bastion every connection goes through, if the database is reached that way. Clones of
    /// a spec share one session.
    pub tunnel: Option<std::sync::Arc<crate::source::ssh::Tunnel>>,
}

/// libpq's `channel_binding`: whether SCRAM authentication binds to the TLS channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ts_rs::TS)]
#[serde(rename_all = "lowercase")]
pub enum ChannelBinding {
    /// Never bind.
    Disable,
    /// Bind when the server and the channel allow it.
    #[default]
    Prefer,
    /// Refuse to authenticate without binding.
    Require,
}

impl std::str::FromStr for ChannelBinding {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "disable" => Ok(ChannelBinding::Disable),
            "prefer" => Ok(ChannelBinding::Prefer),
            "require" => Ok(ChannelBinding::Require),
            other => Err(Error::invalid_input(
                "channel_binding",
                format!("'{other}' is not one of disable, prefer, require"),
            )),
        }
    }
}

impl ConnectionSpec {
    /// A spec with Tidepool's defaults for everything but the server, user and database.
    pub fn new(
        host: impl Into<String>,
        port: u16,
        user: impl Into<String>,
        database: impl Into<String>,
    ) -> Self {
        ConnectionSpec {
            host: host.into(),
            port,
            user: user.into(),
            password: None,
            database: database.into(),
            sslmode: SslMode::default(),
            sslrootcert: None,
            application_name: "tidepool".into(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            options: None,
            channel_binding: ChannelBinding::default(),
            tunnel: None,
        }
    }

    /// Where to dial for this database: its own host and port, or the loopback port of its SSH
    /// tunnel (opened, or opened again, now). TLS and messages keep naming [`ConnectionSpec::host`].
    pub async fn dial(&self) -> Result<(String, u16)> {
        match &self.tunnel {
            None => Ok((self.host.clone(), self.port)),
            Some(tunnel) => {
                let local = tunnel.local_addr().await?;
                Ok((local.ip().to_string(), local.port()))
            }
        }
    }

    /// Checks what a server would otherwise refuse with an error that names no field, or take
    /// silently as something else: a NUL byte anywhere (the startup message is NUL-terminated), a user or
    /// database name longer than PostgreSQL's 63-byte limit (the server would truncate it and log in
    /// to another name), oversized values, and a `connect_timeout` beyond an hour.
    pub fn validate(&self) -> Result<()> {
        let fields: [(&str, &str, usize); 5] = [
            ("host", &self.host, 1024),
            ("user", &self.user, MAX_NAME_BYTES),
            ("dbname", &self.database, MAX_NAME_BYTES),
            ("application_name", &self.application_name, 1024),
            ("options", self.options.as_deref().unwrap_or(""), 4096),
        ];
        for (field, value, max) in fields {
            if value.contains('\0') {
                return Err(Error::invalid_input(field, "contains a NUL byte (%00)"));
            }
            if value.len() > max {
                let why = if max == MAX_NAME_BYTES {
                    "; PostgreSQL names are at most 63 bytes"
                } else {
                    ""
                };
                return Err(Error::invalid_input(
                    field,
                    format!("is {} bytes long, more than {max}{why}", value.len()),
                ));
            }
        }
        if self.tunnel.is_some() && self.host.starts_with('/') {
            return Err(Error::invalid_input(
                "host",
                "is a Unix socket directory, which an SSH tunnel cannot reach: give the database's host name as the bastion sees it",
            ));
        }
        if self.connect_timeout > MAX_CONNECT_TIMEOUT {
            return Err(Error::invalid_input(
                "connect_timeout",
                format!(
                    "{} s is more than the {} s Tidepool waits at most",
                    self.connect_timeout.as_secs(),
                    MAX_CONNECT_TIMEOUT.as_secs()
                ),
            ));
        }
        Ok(())
    }

    /// `host:port` as shown in messages (IPv6 addresses in brackets).
    pub fn target(&self) -> String {
        if self.host.contains(':') && !self.host.starts_with('/') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    fn driver_config(&self, sslmode: DriverSslMode, dial: &(String, u16)) -> Config {
        let mut config = Config::new();
        config.host(&self.host);
        // Through a tunnel the driver dials its loopback port, and TLS still checks the host's name.
        if let Ok(address) = dial.0.parse::<std::net::IpAddr>() {
            if self.tunnel.is_some() {
                config.hostaddr(address);
            }
        }
        config
            .port(dial.1)
            .user(&self.user)
            .dbname(&self.database)
            .application_name(&self.application_name)
            .connect_timeout(self.connect_timeout)
            .keepalives(true)
            .ssl_mode(sslmode)
            .channel_binding(match self.channel_binding {
                ChannelBinding::Disable => tokio_postgres::config::ChannelBinding::Disable,
                ChannelBinding::Prefer => tokio_postgres::config::ChannelBinding::Prefer,
                ChannelBinding::Require => tokio_postgres::config::ChannelBinding::Require,
            });
        if let Some(options) = &self.options {
            config.options(options);
        }
        if let Some(password) = &self.password {
            config.password(password.expose());
        }
        config
    }
}

/// Splits a server address `host[:port]` (`[::1]:5432` for IPv6; a bare IPv6 address has no port).
pub fn parse_address(address: &str) -> Result<(String, u16)> {
    const FIELD: &str = "server address";
    let address = address.trim();
    if address.contains("://") {
        return Err(Error::invalid_input(
            FIELD,
            "is a URL; use Autofill with URL, or give host[:port]",
        ));
    }
    crate::source::address::split_host_port(address, DEFAULT_PORT)
        .map_err(|reason| Error::invalid_input(FIELD, reason))
}

/// Opens an ordinary (non-replication) connection. The connection's I/O runs on a spawned task that ends
/// when the returned client is dropped.
pub async fn connect(spec: &ConnectionSpec) -> Result<Client> {
    spec.validate()?;
    let target = spec.target();
    match spec.sslmode {
        SslMode::Disable => connect_with(spec, DriverSslMode::Disable, &target).await,
        SslMode::Allow => match connect_with(spec, DriverSslMode::Disable, &target).await {
            Ok(client) => Ok(client),
            Err(_) => connect_with(spec, DriverSslMode::Require, &target).await,
        },
        SslMode::Prefer => connect_with(spec, DriverSslMode::Prefer, &target).await,
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
            connect_with(spec, DriverSslMode::Require, &target).await
        }
    }
}

async fn connect_with(
    spec: &ConnectionSpec,
    sslmode: DriverSslMode,
    target: &str,
) -> Result<Client> {
    let attempt = async {
        let dial = spec.dial().await?;
        let config = spec.driver_config(sslmode, &dial);
        if sslmode == DriverSslMode::Disable {
            let (client, connection) = config.connect(NoTls).await?;
            tokio::spawn(drive(connection, target.to_string()));
            Ok(client)
        } else {
            let tls =
                MakeRustlsConnect::new(client_config(spec.sslmode, spec.sslrootcert.as_deref())?);
            let (client, connection) = config.connect(tls).await?;
            tokio::spawn(drive(connection, target.to_string()));
            Ok(client)
        }
    };
    // The driver's own timeout covers reaching the socket; this one also bounds the TLS handshake and the
    // login, so a server that accepts and then says nothing cannot hang the caller.
    match tokio::time::timeout(spec.connect_timeout.saturating_add(Duration::from_secs(1)), attempt).await {
        Ok(result) => result.map_err(|e: ConnectError| e.into_error(target, spec.sslmode)),
        Err(_) => Err(Error::new(
            ErrorKind::Connection,
            format!(
                "{target}: no answer within {} s; check the server address, the port and any firewall",
                spec.connect_timeout.as_secs()
            ),
        )),
    }
}

enum ConnectError {
    Driver(tokio_postgres::Error),
    Engine(Error),
}

impl From<tokio_postgres::Error> for ConnectError {
    fn from(e: tokio_postgres::Error) -> Self {
        ConnectError::Driver(e)
    }
}

impl From<Error> for ConnectError {
    fn from(e: Error) -> Self {
        ConnectError::Engine(e)
    }
}

impl ConnectError {
    fn into_error(self, target: &str, sslmode: SslMode) -> Error {
        match self {
            ConnectError::Engine(e) => e,
            ConnectError::Driver(e) => {
                let err = Error::from_postgres(&e, target);
                if err.kind() == ErrorKind::Tls
                    && sslmode.requires_tls()
                    && err.message().contains("does not support TLS")
                {
                    Error::new(
                        ErrorKind::Tls,
                        format!(
                            "{} (sslmode={sslmode} needs an encrypted connection)",
                            err.message()
                        ),
                    )
                } else if err.kind() == ErrorKind::Authentication
                    && err.message().contains("no encryption")
                    && !sslmode.requires_tls()
                {
                    Error::new(
                        ErrorKind::Tls,
                        format!("{}; the server only accepts encrypted connections: use sslmode=require", err.message()),
                    )
                } else {
                    err
                }
            }
        }
    }
}

async fn drive<S, T>(connection: tokio_postgres::Connection<S, T>, target: String)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    if let Err(e) = connection.await {
        tracing::debug!(target = %target, error = %e, "connection ended with an error");
    }
}

/// On what grounds the role may open a replication connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ts_rs::TS)]
#[serde(tag = "basis", rename_all = "camelCase")]
pub enum ReplicationRight {
    /// The role is a superuser.
    Superuser,
    /// The role has the REPLICATION attribute itself.
    Attribute,
    /// The role is a member of a role with REPLICATION, as Neon's roles are of `neon_superuser`.
    Membership {
        /// The role that has REPLICATION.
        role: String,
    },
    /// The role may not replicate.
    None,
}

impl ReplicationRight {
    /// Reads the [`replication_columns!`] starting at column `first` of `row`.
    pub(crate) fn from_columns(row: &tokio_postgres::Row, first: usize) -> ReplicationRight {
        if row.get::<_, bool>(first) {
            ReplicationRight::Superuser
        } else if row.get::<_, bool>(first + 1) {
            ReplicationRight::Attribute
        } else if let Some(role) = row.get::<_, Option<String>>(first + 2) {
            ReplicationRight::Membership { role }
        } else {
            ReplicationRight::None
        }
    }

    /// Whether the role may replicate on any grounds.
    pub fn allowed(&self) -> bool {
        !matches!(self, ReplicationRight::None)
    }
}

/// What [`test_connection`] learns about a server.
#[derive(Debug, Clone, Serialize, ts_rs::TS)]
#[serde(rename_all = "camelCase")]
pub struct ServerFacts {
    /// `server_version`, e.g. `15.18 (Debian 15.18-0+deb12u1)`.
    pub server_version: String,
    /// `server_version_num`, e.g. 150018.
    pub server_version_num: i32,
    /// The role the session runs as.
    pub current_user: String,
    /// The database connected to.
    pub database: String,
    /// `wal_level`; logical decoding needs `logical`.
    pub wal_level: String,
    /// Whether, and why, the role may replicate.
    pub replication: ReplicationRight,
    /// Whether the session is encrypted.
    pub tls: bool,
    /// Time for one `SELECT 1` round trip, in milliseconds.
    pub round_trip_ms: f64,
}

/// The three columns [`ReplicationRight::from_columns`] reads, over `pg_roles r` of the current user:
/// superuser, REPLICATION, and the first role with REPLICATION it is a member of.
macro_rules! replication_columns {
    () => {
        "r.rolsuper, r.rolreplication,
       (SELECT g.rolname::text FROM pg_roles g
         WHERE g.rolreplication AND g.oid <> r.oid AND pg_has_role(r.oid, g.oid, 'MEMBER')
         ORDER BY g.rolname LIMIT 1)"
    };
}

pub(crate) use replication_columns;

const FACTS_SQL: &str = concat!(
    "SELECT current_setting('server_version'),
       current_setting('server_version_num')::int4,
       current_user::text,
       current_database()::text,
       current_setting('wal_level'),
       ",
    replication_columns!(),
    ",
       COALESCE((SELECT s.ssl FROM pg_stat_ssl s WHERE s.pid = pg_backend_pid()), false)
  FROM pg_roles r
 WHERE r.rolname = current_user"
);

/// Connects and reads the facts shown after "Test connection".
pub async fn test_connection(spec: &ConnectionSpec) -> Result<ServerFacts> {
    let client = connect(spec).await?;
    let target = spec.target();
    let started = Instant::now();
    client
        .simple_query("SELECT 1")
        .await
        .map_err(|e| Error::from_postgres(&e, &target))?;
    let round_trip = started.elapsed();
    let row = client
        .query_one(FACTS_SQL, &[])
        .await
        .map_err(|e| Error::from_postgres(&e, &target))?;
    let replication = ReplicationRight::from_columns(&row, 5);
    Ok(ServerFacts {
        server_version: row.get(0),
        server_version_num: row.get(1),
        current_user: row.get(2),
        database: row.get(3),
        wal_level: row.get(4),
        replication,
        tls: row.get(8),
        round_trip_ms: round_trip.as_secs_f64() * 1000.0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_split_into_host_and_port() {
        let cases: &[(&str, (&str, u16))] = &[
            ("localhost", ("localhost", 5432)),
            ("db.example.com:6543", ("db.example.com", 6543)),
            ("127.0.0.1:5433", ("127.0.0.1", 5433)),
            ("[::1]:5434", ("::1", 5434)),
            ("[::1]", ("::1", 5432)),
            ("::1", ("::1", 5432)),
            (
                " ep-cool-darkness-123456.us-east-2.aws.neon.tech:5432 ",
                ("ep-cool-darkness-123456.us-east-2.aws.neon.tech", 5432),
            ),
        ];
        for (input, (host, port)) in cases {
            assert_eq!(
                parse_address(input).unwrap(),
                (host.to_string(), *port),
                "{input}"
            );
        }
    }

    /// Neon's proxy refuses an address outside a project's IP Allow list with an ErrorResponse during
    /// start-up; a loopback listener answers the startup message with exactly that.
    #[tokio::test]
    async fn a_neon_ip_allow_refusal_names_ip_allow_and_the_project() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let length = socket.read_i32().await.unwrap();
            let mut startup = vec![0; length as usize - 4];
            socket.read_exact(&mut startup).await.unwrap();
            let mut fields = Vec::new();
            for (code, value) in [
                (b'S', "ERROR"),
                (b'V', "ERROR"),
                (b'C', "XX000"),
                (b'M', "This IP address 203.0.113.7 is not allowed to connect to this endpoint. Please add it to the allowed list in the Neon console. Make sure to check for IPv4 or IPv6 addresses."),
            ] {
                fields.push(code);
                fields.extend_from_slice(value.as_bytes());
                fields.push(0);
            }
            fields.push(0);
            let mut message = vec![b'E'];
            message.extend_from_slice(&(fields.len() as i32 + 4).to_be_bytes());
            message.extend_from_slice(&fields);
            socket.write_all(&message).await.unwrap();
        });
        let mut spec = ConnectionSpec::new("127.0.0.1", port, "cdc_role", "neondb");
        spec.sslmode = SslMode::Disable;
        let err = connect(&spec).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Permission, "{}", err.message());
        assert!(err.is_neon_ip_allow_refusal());
        assert!(
            err.message()
                .contains("Neon's IP Allow refuses this connection")
                && err.message().contains("203.0.113.7")
                && err
                    .message()
                    .contains("Add the public address Tidepool connects from"),
            "{}",
            err.message()
        );
        let named = err.in_neon_project(Some("hidden-cell-763301"));
        assert!(
            named
                .message()
                .contains("Neon's IP Allow of project hidden-cell-763301 refuses this connection"),
            "{}",
            named.message()
        );
        assert_eq!(named.kind(), ErrorKind::Permission);

        // Any other error is left as it was.
        let other = Error::new(ErrorKind::Permission, "permission denied for table t");
        assert!(!other.is_neon_ip_allow_refusal());
        assert_eq!(other.clone().in_neon_project(Some("p")), other);
    }

    #[test]
    fn bad_addresses_name_the_field() {
        for input in [
            "",
            "host:0",
            "host:65536",
            "host:abc",
            ":5432",
            "[::1",
            "[nothex]:1",
            "a b",
            "1:2:3:x",
            "postgres://h/db",
        ] {
            let err = parse_address(input).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidInput, "{input}");
            assert!(
                err.message().starts_with("server address:"),
                "{input}: {}",
                err.message()
            );
        }
    }
}
