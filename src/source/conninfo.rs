//! libpq connection strings: `postgres://` / `postgresql://` URLs and `key=value` strings, as pasted into
//! "Autofill with URL" or given to `--url`.
//!
//! The rules are libpq's (PostgreSQL docs, "Connection Strings"): percent-decoding of every URL part,
//! `[v6]` hosts, query parameters with libpq's keyword names, single-quoted `key='value'` with `\'` and
//! `\\` escapes. Every error names the keyword or URL part at fault. The parser never panics, whatever it
//! is given (a property test holds it to that).
//!
//! Invariant: a password found in the string is only ever held as a [`Secret`].

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::secrets::Secret;
use crate::source::connection::{ChannelBinding, ConnectionSpec, DEFAULT_PORT};
use crate::source::tls::SslMode;

/// What a connection string says; `None` where it says nothing (libpq's defaults then apply).
#[derive(Debug, Clone, Default)]
pub struct Conninfo {
    /// `host`: a name, an IP address, or a Unix-socket directory.
    pub host: Option<String>,
    /// `port`.
    pub port: Option<u16>,
    /// `user`.
    pub user: Option<String>,
    /// `password`.
    pub password: Option<Secret>,
    /// `dbname`.
    pub dbname: Option<String>,
    /// `sslmode`.
    pub sslmode: Option<SslMode>,
    /// `sslrootcert`: a PEM file of trusted authorities.
    pub sslrootcert: Option<PathBuf>,
    /// `options`: command-line options sent to the server (Neon uses `endpoint=<id>`).
    pub options: Option<String>,
    /// `channel_binding`.
    pub channel_binding: Option<ChannelBinding>,
    /// `application_name`.
    pub application_name: Option<String>,
    /// `connect_timeout` in seconds.
    pub connect_timeout: Option<u64>,
}

/// Something worth telling the person about a parsed connection string.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ts_rs::TS)]
#[serde(
    tag = "kind",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum Advice {
    /// A Neon pooled (`-pooler`) host: PgBouncer in transaction mode cannot carry logical replication.
    NeonPooler {
        /// The host as given.
        pooled_host: String,
        /// The same endpoint's direct host.
        direct_host: String,
    },
}

/// The scheme of a URL that is not PostgreSQL's (`mysql://…`): the input must start with one (a letter,
/// then letters, digits, `+`, `-` or `.`), so `://` inside a keyword's quoted value is not mistaken for
/// one.
fn other_scheme(input: &str) -> Option<&str> {
    let (scheme, _) = input.split_once("://")?;
    let mut chars = scheme.chars();
    let first = chars.next()?;
    (first.is_ascii_alphabetic() && chars.all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c)))
        .then_some(scheme)
}

impl Conninfo {
    /// Parses a URL or a `key=value` string, also as a `psql` command line gives it (`psql
    /// 'postgresql://…'`, as Neon's console copies it).
    pub fn parse(input: &str) -> Result<Conninfo> {
        let input = strip_psql(input.trim());
        if input.is_empty() {
            return Err(Error::invalid_input("connection string", "is empty"));
        }
        let lower = input.get(..13).unwrap_or(input).to_ascii_lowercase();
        if lower.starts_with("postgresql://") || lower.starts_with("postgres://") {
            parse_url(input)
        } else if let Some(scheme) = other_scheme(input) {
            Err(Error::invalid_input(
                "connection string",
                format!("scheme '{scheme}://' is not postgres:// or postgresql://"),
            ))
        } else if input.contains('=') {
            parse_keywords(input)
        } else {
            Err(Error::invalid_input(
                "connection string",
                "is neither a postgres:// URL nor key=value pairs (e.g. host=… dbname=…)",
            ))
        }
    }

    /// The Neon advice for this host, if any.
    pub fn advice(&self) -> Vec<Advice> {
        self.host
            .as_deref()
            .and_then(neon_pooler)
            .into_iter()
            .collect()
    }

    /// A spec with libpq's defaults for what the string leaves out (`user` and `dbname` default to
    /// `postgres` here, not to the OS user, because a desktop app's OS user means nothing to the server).
    pub fn into_spec(self) -> ConnectionSpec {
        let user = self.user.unwrap_or_else(|| "postgres".into());
        let database = self.dbname.unwrap_or_else(|| user.clone());
        let mut spec = ConnectionSpec::new(
            self.host.unwrap_or_else(|| "localhost".into()),
            self.port.unwrap_or(DEFAULT_PORT),
            user,
            database,
        );
        spec.password = self.password;
        if let Some(mode) = self.sslmode {
            spec.sslmode = mode;
        }
        spec.sslrootcert = self.sslrootcert;
        spec.options = self.options;
        if let Some(binding) = self.channel_binding {
            spec.channel_binding = binding;
        }
        if let Some(name) = self.application_name {
            spec.application_name = name;
        }
        if let Some(secs) = self.connect_timeout {
            spec.connect_timeout = Duration::from_secs(secs.max(2));
        }
        spec
    }

    fn set(&mut self, keyword: &str, value: String) -> Result<()> {
        if value.contains('\0') {
            return Err(Error::invalid_input(keyword, "contains a NUL byte (%00)"));
        }
        match keyword {
            "host" => {
                if value.contains(',') {
                    return Err(Error::invalid_input(
                        "host",
                        "several hosts are not supported; give the primary's host",
                    ));
                }
                self.host = non_empty(value);
            }
            "hostaddr" => {
                value.parse::<std::net::IpAddr>().map_err(|_| {
                    Error::invalid_input("hostaddr", format!("'{value}' is not an IP address"))
                })?;
                // With TLS the host name matters (SNI, name checks); hostaddr only fills a missing host.
                if self.host.is_none() {
                    self.host = Some(value);
                }
            }
            "port" => self.port = Some(parse_port(&value)?),
            "user" => self.user = non_empty(value),
            "password" => self.password = Some(Secret::new(value)),
            "dbname" => self.dbname = non_empty(value),
            "sslmode" => self.sslmode = Some(value.parse()?),
            "sslrootcert" => self.sslrootcert = non_empty(value).map(PathBuf::from),
            "options" => self.options = non_empty(value),
            "channel_binding" => self.channel_binding = Some(value.parse()?),
            "application_name" => self.application_name = Some(value),
            "connect_timeout" => {
                let secs = value.trim().parse::<u64>().map_err(|_| {
                    Error::invalid_input(
                        "connect_timeout",
                        format!("'{value}' is not a whole number of seconds"),
                    )
                })?;
                if secs > crate::source::connection::MAX_CONNECT_TIMEOUT.as_secs() {
                    return Err(Error::invalid_input(
                        "connect_timeout",
                        format!(
                            "{secs} s is more than the {} s Tidepool waits at most",
                            crate::source::connection::MAX_CONNECT_TIMEOUT.as_secs()
                        ),
                    ));
                }
                self.connect_timeout = Some(secs);
            }
            // Accepted and without effect here: they choose among several hosts or tune the client.
            "target_session_attrs"
            | "load_balance_hosts"
            | "keepalives"
            | "keepalives_idle"
            | "gssencmode"
            | "fallback_application_name"
            | "client_encoding"
            | "sslcompression" => {}
            "sslcert" | "sslkey" | "sslpassword" => {
                return Err(Error::invalid_input(
                    keyword,
                    "client certificates are not supported yet",
                ));
            }
            "service"
            | "passfile"
            | "requiressl"
            | "krbsrvname"
            | "gsslib"
            | "sslcrl"
            | "sslcrldir"
            | "sslsni"
            | "ssl_min_protocol_version"
            | "ssl_max_protocol_version"
            | "requirepeer"
            | "replication" => {
                return Err(Error::invalid_input(
                    keyword,
                    "is not supported by Tidepool",
                ));
            }
            other => {
                let hint = nearest_keyword(other)
                    .map(|k| format!(": did you mean '{k}'?"))
                    .unwrap_or_default();
                return Err(Error::invalid_input(
                    "connection string",
                    format!("unknown keyword '{other}'{hint}"),
                ));
            }
        }
        Ok(())
    }
}

/// Every keyword this parser knows (used, accepted without effect, or refused with a reason): what
/// a misspelt one is compared with.
const KEYWORDS: &[&str] = &[
    "host",
    "hostaddr",
    "port",
    "user",
    "password",
    "dbname",
    "sslmode",
    "sslrootcert",
    "options",
    "channel_binding",
    "application_name",
    "connect_timeout",
    "target_session_attrs",
    "load_balance_hosts",
    "keepalives",
    "keepalives_idle",
    "gssencmode",
    "fallback_application_name",
    "client_encoding",
    "sslcompression",
    "sslcert",
    "sslkey",
    "sslpassword",
    "service",
    "passfile",
    "requiressl",
    "krbsrvname",
    "gsslib",
    "sslcrl",
    "sslcrldir",
    "sslsni",
    "ssl_min_protocol_version",
    "ssl_max_protocol_version",
    "requirepeer",
    "replication",
];

/// The known keyword within two edits of `word` (at most a third of its length), if one is
/// nearest: `sslmod` → `sslmode`, `dbnme` → `dbname`.
fn nearest_keyword(word: &str) -> Option<&'static str> {
    let word = word.to_ascii_lowercase();
    let limit = 2.min(word.chars().count() / 3).max(1);
    let mut best: Option<(usize, &'static str)> = None;
    for keyword in KEYWORDS {
        let d = edit_distance(&word, keyword);
        if d <= limit && best.is_none_or(|(b, _)| d < b) {
            best = Some((d, keyword));
        }
    }
    best.map(|(_, k)| k)
}

/// Levenshtein distance (insertions, deletions, substitutions), over characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            current[j + 1] = (previous[j] + usize::from(ca != *cb))
                .min(previous[j + 1] + 1)
                .min(current[j] + 1);
        }
        previous = current;
    }
    previous[b.len()]
}

/// The connection string inside a `psql` command line: `psql 'postgresql://…'`, `psql "…"` or
/// `psql postgresql://…` (what Neon's console and many guides copy). Anything else is as given.
fn strip_psql(input: &str) -> &str {
    let Some(rest) = input.strip_prefix("psql") else {
        return input;
    };
    if !rest.starts_with(char::is_whitespace) {
        return input;
    }
    let rest = rest.trim();
    for quote in ['\'', '"'] {
        if let Some(inner) = rest.strip_prefix(quote).and_then(|r| r.strip_suffix(quote)) {
            return inner.trim();
        }
    }
    rest
}

fn non_empty(value: String) -> Option<String> {
    (!value.is_empty()).then_some(value)
}

fn parse_port(value: &str) -> Result<u16> {
    match value.trim().parse::<u16>() {
        Ok(port) if port > 0 => Ok(port),
        _ => Err(Error::invalid_input(
            "port",
            format!("'{value}' is not a number from 1 to 65535"),
        )),
    }
}

fn decode(part: &str, raw: &str) -> Result<String> {
    // libpq refuses a '%' not followed by two hex digits; taking it literally would log in as (or
    // connect to) a name the person never meant.
    let bytes = raw.as_bytes();
    for (at, _) in raw.match_indices('%') {
        let hex = bytes.get(at + 1..at + 3);
        if !hex.is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) {
            return Err(Error::invalid_input(
                part,
                format!(
                    "'{}' is not a valid percent-encoded byte (use %25 for a '%')",
                    String::from_utf8_lossy(&bytes[at..(at + 3).min(bytes.len())])
                ),
            ));
        }
    }
    let decoded = percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| Error::invalid_input(part, "is not valid UTF-8 after percent-decoding"))?;
    if decoded.contains('\0') {
        return Err(Error::invalid_input(part, "contains a NUL byte (%00)"));
    }
    Ok(decoded)
}

fn parse_url(input: &str) -> Result<Conninfo> {
    let rest = input
        .split_once("://")
        .map(|(_, rest)| rest)
        .unwrap_or_default();
    if rest.contains('#') {
        return Err(Error::invalid_input(
            "connection URL",
            "a '#' must be percent-encoded as %23",
        ));
    }
    let (before_query, query) = match rest.split_once('?') {
        Some((before, query)) => (before, Some(query)),
        None => (rest, None),
    };
    let (authority, path) = match before_query.split_once('/') {
        Some((authority, path)) => (authority, Some(path)),
        None => (before_query, None),
    };
    let mut info = Conninfo::default();
    // The user part ends at the last '@': an unencoded '@' in a password is a common paste.
    let hostport = match authority.rsplit_once('@') {
        Some((userinfo, hostport)) => {
            let (user, password) = match userinfo.split_once(':') {
                Some((user, password)) => (user, Some(password)),
                None => (userinfo, None),
            };
            info.user = non_empty(decode("user", user)?);
            if let Some(password) = password {
                info.password = Some(Secret::new(decode("password", password)?));
            }
            hostport
        }
        None => authority,
    };
    if hostport.contains(',') {
        return Err(Error::invalid_input(
            "host",
            "several hosts are not supported; give the primary's host",
        ));
    }
    if let Some(bracketed) = hostport.strip_prefix('[') {
        let (host, after) = bracketed
            .split_once(']')
            .ok_or_else(|| Error::invalid_input("host", "'[' without a closing ']'"))?;
        host.parse::<std::net::Ipv6Addr>().map_err(|_| {
            Error::invalid_input("host", format!("'{host}' is not an IPv6 address"))
        })?;
        info.host = Some(host.to_string());
        match after {
            "" => {}
            _ => match after.strip_prefix(':') {
                Some(port) => info.port = Some(parse_port(port)?),
                None => {
                    return Err(Error::invalid_input(
                        "host",
                        format!("unexpected '{after}' after ']'"),
                    ))
                }
            },
        }
    } else {
        let (host, port) = match hostport.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (hostport, None),
        };
        let host = decode("host", host)?;
        if host
            .chars()
            .any(|c| c.is_whitespace() || c == '@' || c == ':')
        {
            return Err(Error::invalid_input(
                "host",
                format!("'{host}' is not a host name"),
            ));
        }
        info.host = non_empty(host);
        if let Some(port) = port {
            if !port.is_empty() {
                info.port = Some(parse_port(port)?);
            }
        }
    }
    if let Some(path) = path {
        info.dbname = non_empty(decode("dbname", path)?);
    }
    if let Some(query) = query {
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').ok_or_else(|| {
                Error::invalid_input(
                    "connection URL",
                    format!("query parameter '{pair}' has no '='"),
                )
            })?;
            let key = decode("connection URL", key)?;
            let value = decode(&key, value)?;
            info.set(&key, value)?;
        }
    }
    Ok(info)
}

fn parse_keywords(input: &str) -> Result<Conninfo> {
    let mut info = Conninfo::default();
    let mut chars = input.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(info);
        }
        let mut keyword = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            keyword.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(Error::invalid_input(
                "connection string",
                format!("missing '=' after '{keyword}'"),
            ));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    Some('\\') => match chars.next() {
                        Some(c) => value.push(c),
                        None => break,
                    },
                    Some('\'') => {
                        if chars.peek().is_some_and(|c| !c.is_whitespace()) {
                            return Err(Error::invalid_input(
                                &keyword,
                                "a quoted value must be followed by a space",
                            ));
                        }
                        info.set(&keyword, value)?;
                        break;
                    }
                    Some(c) => value.push(c),
                    None => {
                        return Err(Error::invalid_input(
                            &keyword,
                            "the quoted value has no closing quote",
                        ));
                    }
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    if let Some(escaped) = chars.next() {
                        value.push(escaped);
                    }
                } else {
                    value.push(c);
                }
            }
            info.set(&keyword, value)?;
        }
    }
}

/// For a Neon pooled host (`ep-…-pooler.region.aws.neon.tech`), the direct host.
pub fn neon_pooler(host: &str) -> Option<Advice> {
    let (first, rest) = host.split_once('.')?;
    let endpoint = first.strip_suffix("-pooler")?;
    let lower = rest.to_ascii_lowercase();
    (lower.ends_with("neon.tech") || lower.ends_with("neon.build")).then(|| Advice::NeonPooler {
        pooled_host: host.to_string(),
        direct_host: format!("{endpoint}.{rest}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    /// What a parse should give: the fields that matter, or the field an error must name.
    enum Expect {
        Ok {
            host: Option<&'static str>,
            port: Option<u16>,
            user: Option<&'static str>,
            password: Option<&'static str>,
            db: Option<&'static str>,
        },
        Sslmode(SslMode),
        Options(&'static str),
        Err(&'static str),
    }
    use Expect::*;

    fn ok(
        host: Option<&'static str>,
        port: Option<u16>,
        user: Option<&'static str>,
        password: Option<&'static str>,
        db: Option<&'static str>,
    ) -> Expect {
        Ok {
            host,
            port,
            user,
            password,
            db,
        }
    }

    #[test]
    fn connection_strings_parse_or_name_the_field_at_fault() {
        let cases: Vec<(&str, Expect)> = vec![
            (
                "postgres://u:p@h:5433/db",
                ok(Some("h"), Some(5433), Some("u"), Some("p"), Some("db")),
            ),
            (
                "postgresql://u@h/db",
                ok(Some("h"), None, Some("u"), None, Some("db")),
            ),
            (
                "POSTGRES://u@h/db",
                ok(Some("h"), None, Some("u"), None, Some("db")),
            ),
            ("postgres://h", ok(Some("h"), None, None, None, None)),
            ("postgres://", ok(None, None, None, None, None)),
            (
                "postgres://u%40corp:p%3Aw%2Fd@h/my%20db",
                ok(
                    Some("h"),
                    None,
                    Some("u@corp"),
                    Some("p:w/d"),
                    Some("my db"),
                ),
            ),
            (
                "postgres://u:p@ss@h/db",
                ok(Some("h"), None, Some("u"), Some("p@ss"), Some("db")),
            ),
            (
                "postgres://u:@h/db",
                ok(Some("h"), None, Some("u"), Some(""), Some("db")),
            ),
            (
                "postgres://[::1]:6000/db",
                ok(Some("::1"), Some(6000), None, None, Some("db")),
            ),
            (
                "postgres://[2001:db8::1]/db",
                ok(Some("2001:db8::1"), None, None, None, Some("db")),
            ),
            (
                "postgres://%2Fvar%2Frun%2Fpostgresql/db",
                ok(Some("/var/run/postgresql"), None, None, None, Some("db")),
            ),
            (
                "postgres:///db?host=/tmp&port=5499",
                ok(Some("/tmp"), Some(5499), None, None, Some("db")),
            ),
            (
                "postgres://h/db?user=a&password=b",
                ok(Some("h"), None, Some("a"), Some("b"), Some("db")),
            ),
            (
                "postgres://h/db?sslmode=verify-full",
                Sslmode(SslMode::VerifyFull),
            ),
            (
                "postgres://h/db?sslmode=verify-ca&sslrootcert=/etc/ca.pem",
                Sslmode(SslMode::VerifyCa),
            ),
            (
                "postgres://h/db?options=endpoint%3Dep-cool-123",
                Options("endpoint=ep-cool-123"),
            ),
            (
                "postgres://h/db?channel_binding=require&application_name=x&connect_timeout=5",
                ok(Some("h"), None, None, None, Some("db")),
            ),
            (
                "host=h port=5433 user=u password=p dbname=db",
                ok(Some("h"), Some(5433), Some("u"), Some("p"), Some("db")),
            ),
            (
                "host = h  dbname = 'my db'",
                ok(Some("h"), None, None, None, Some("my db")),
            ),
            (
                r"password='it\'s \\ x' host=h",
                ok(Some("h"), None, None, Some(r"it's \ x"), None),
            ),
            (
                "password='' host=h",
                ok(Some("h"), None, None, Some(""), None),
            ),
            (
                "hostaddr=127.0.0.1 dbname=d",
                ok(Some("127.0.0.1"), None, None, None, Some("d")),
            ),
            ("host=h sslmode=require", Sslmode(SslMode::Require)),
            ("   ", Err("connection string")),
            ("mysql://h/db", Err("connection string")),
            // A quoted value may hold "://": still key=value pairs, not a URL of another scheme.
            (
                "application_name='://' host=h dbname=d",
                ok(Some("h"), None, None, None, Some("d")),
            ),
            ("just some words", Err("connection string")),
            ("postgres://h:99999/db", Err("port")),
            ("postgres://h:0/db", Err("port")),
            ("postgres://h:x/db", Err("port")),
            ("postgres://h1,h2/db", Err("host")),
            ("postgres://[::1/db", Err("host")),
            ("postgres://[nothex]/db", Err("host")),
            ("postgres://[::1]x/db", Err("host")),
            ("postgres://h/db?sslmode=verify", Err("sslmode")),
            (
                "postgres://h/db?channel_binding=maybe",
                Err("channel_binding"),
            ),
            (
                "postgres://h/db?connect_timeout=soon",
                Err("connect_timeout"),
            ),
            ("postgres://h/db?frobnicate=1", Err("connection string")),
            ("postgres://u%ZZ@h/db", Err("user")),
            ("postgres://u@h/d%", Err("dbname")),
            ("postgres://u@h/d%4", Err("dbname")),
            ("postgres://u@h/d%é", Err("dbname")),
            ("postgres://u%00x@h/db", Err("user")),
            ("postgres://u@h/d%00b", Err("dbname")),
            (
                "postgres://u@h/db?application_name=a%00b",
                Err("application_name"),
            ),
            ("host=h application_name=a\0b", Err("application_name")),
            (
                "postgres://h/db?connect_timeout=18446744073709551615",
                Err("connect_timeout"),
            ),
            (
                "postgres://h/db?connect_timeout=3601",
                Err("connect_timeout"),
            ),
            ("postgres://h/db?sslmode", Err("connection URL")),
            ("postgres://h/db#frag", Err("connection URL")),
            ("postgres://h/%FF", Err("dbname")),
            ("postgres://%FF@h/db", Err("user")),
            ("postgres://h/db?sslcert=/c.pem", Err("sslcert")),
            ("host=h dbname", Err("connection string")),
            ("host='h", Err("host")),
            ("host='h'dbname=x", Err("host")),
            ("port=abc", Err("port")),
            ("host=a,b", Err("host")),
            ("hostaddr=not-an-ip", Err("hostaddr")),
            ("service=prod", Err("service")),
            ("color=blue", Err("connection string")),
        ];
        assert!(cases.len() >= 30);
        for (input, expect) in cases {
            let result = Conninfo::parse(input);
            match expect {
                Ok {
                    host,
                    port,
                    user,
                    password,
                    db,
                } => {
                    let info = result.unwrap_or_else(|e| panic!("{input:?}: {}", e.message()));
                    assert_eq!(info.host.as_deref(), host, "{input:?} host");
                    assert_eq!(info.port, port, "{input:?} port");
                    assert_eq!(info.user.as_deref(), user, "{input:?} user");
                    assert_eq!(
                        info.password.as_ref().map(|p| p.expose()),
                        password,
                        "{input:?} password"
                    );
                    assert_eq!(info.dbname.as_deref(), db, "{input:?} dbname");
                }
                Sslmode(mode) => assert_eq!(result.unwrap().sslmode, Some(mode), "{input:?}"),
                Options(options) => assert_eq!(
                    result.unwrap().options.as_deref(),
                    Some(options),
                    "{input:?}"
                ),
                Err(field) => {
                    let err = result.expect_err(input);
                    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{input:?}");
                    assert!(
                        err.message().starts_with(&format!("{field}:")),
                        "{input:?}: {}",
                        err.message()
                    );
                }
            }
        }
    }

    #[test]
    fn errors_never_contain_the_password() {
        for input in [
            "postgres://u:hunter2@h:bad/db",
            "password=hunter2 port=bad",
            "password='hunter2",
        ] {
            let err = Conninfo::parse(input).unwrap_err();
            assert!(
                !err.message().contains("hunter2"),
                "{input}: {}",
                err.message()
            );
        }
    }

    #[test]
    fn neon_pooled_hosts_are_flagged_with_the_direct_host() {
        let info = Conninfo::parse(
            "postgresql://neondb_owner:AbC123dEf@ep-cool-darkness-123456-pooler.us-east-2.aws.neon.tech/neondb?sslmode=require",
        )
        .unwrap();
        assert_eq!(
            info.advice(),
            vec![Advice::NeonPooler {
                pooled_host: "ep-cool-darkness-123456-pooler.us-east-2.aws.neon.tech".into(),
                direct_host: "ep-cool-darkness-123456.us-east-2.aws.neon.tech".into(),
            }]
        );
        assert!(
            Conninfo::parse("postgres://ep-cool-darkness-123456.us-east-2.aws.neon.tech/db")
                .unwrap()
                .advice()
                .is_empty()
        );
        assert!(neon_pooler("my-pooler.example.com").is_none());
    }

    #[test]
    fn defaults_follow_libpq_where_they_mean_something_here() {
        let spec = Conninfo::parse("postgres://alice@h").unwrap().into_spec();
        assert_eq!(
            (spec.user.as_str(), spec.database.as_str(), spec.port),
            ("alice", "alice", 5432)
        );
        assert_eq!(spec.sslmode, SslMode::Prefer);
    }

    #[test]
    fn a_psql_command_line_is_accepted_as_neon_copies_it() {
        let neon = "psql 'postgresql://alex:AbC123dEf@ep-cool-darkness-123456.us-east-2.aws.neon.tech/dbname?sslmode=require&channel_binding=require'";
        let info = Conninfo::parse(neon).unwrap();
        assert_eq!(
            info.host.as_deref(),
            Some("ep-cool-darkness-123456.us-east-2.aws.neon.tech")
        );
        assert_eq!(info.user.as_deref(), Some("alex"));
        assert_eq!(info.dbname.as_deref(), Some("dbname"));
        assert_eq!(
            info.password.as_ref().map(|p| p.expose()),
            Some("AbC123dEf")
        );
        for form in [
            "psql \"host=h dbname=d\"",
            "  psql   postgres://u@h/d  ",
            "psql 'host=h dbname=d'",
        ] {
            let info = Conninfo::parse(form).unwrap_or_else(|e| panic!("{form}: {e}"));
            assert_eq!(info.host.as_deref(), Some("h"), "{form}");
        }
        // Only the command's own name, followed by a space, is taken off.
        assert!(Conninfo::parse("psqlx postgres://h/d").is_err());
        assert!(Conninfo::parse("psql").is_err());
    }

    #[test]
    fn a_misspelt_keyword_gets_a_suggestion() {
        for (typo, meant) in [
            ("sslmod", "sslmode"),
            ("SSLMODE2", "sslmode"),
            ("dbnme", "dbname"),
            ("passwrd", "password"),
            ("hostt", "host"),
            ("chanel_binding", "channel_binding"),
        ] {
            let e = Conninfo::parse(&format!("host=h {typo}=x")).unwrap_err();
            assert_eq!(
                e.message(),
                format!("connection string: unknown keyword '{typo}': did you mean '{meant}'?"),
                "{typo}"
            );
        }
        // Nothing near: no guess.
        let e = Conninfo::parse("host=h colour=blue").unwrap_err();
        assert_eq!(e.message(), "connection string: unknown keyword 'colour'");
    }

    proptest::proptest! {
        #[test]
        fn the_parser_never_panics(input in "\\PC{0,80}") {
            let _ = Conninfo::parse(&input);
        }

        #[test]
        fn url_shaped_input_never_panics(
            user in "[a-z%@:]{0,6}", host in "[a-z0-9.:\\[\\]%,]{0,12}", port in "[0-9a-z]{0,6}",
            db in "[a-z%/]{0,6}", query in "[a-z=&%_]{0,16}"
        ) {
            let _ = Conninfo::parse(&format!("postgres://{user}@{host}:{port}/{db}?{query}"));
        }

        #[test]
        fn keyword_values_round_trip_through_quoting(value in "\\PC{0,24}") {
            let quoted = value.replace('\\', "\\\\").replace('\'', "\\'");
            let info = Conninfo::parse(&format!("application_name='{quoted}' host=h")).unwrap();
            proptest::prop_assert_eq!(info.application_name.as_deref(), Some(value.as_str()));
        }
    }
}
