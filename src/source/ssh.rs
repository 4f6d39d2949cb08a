//! Reaching a database through an SSH bastion (Estuary's `networkTunnel.sshForwarding`): a profile
//! names `ssh://user@bastion[:port]`, a private key and the bastion's host key, and every connection
//! Tidepool makes to that database (queries, COPY, replication) travels in a `direct-tcpip` channel of
//! one SSH session.
//!
//! Why a loopback listener: the replication transport dials a host and port itself, so the tunnel
//! offers one on `127.0.0.1` (an ephemeral port, as `ssh -L` and Estuary's connectors do) and carries
//! each accepted connection to the database's host and port, as the bastion resolves them. TLS still
//! names the database's own host ([`crate::source::connection`]), so `verify-full` checks the real server.
//!
//! Invariants:
//! - The bastion's host key is checked before anything is sent: a profile without an accepted key gets a
//!   `HostKey` error showing the key's fingerprint (accepted on first use, by a person), and a key that
//!   differs from the accepted one is refused, never accepted silently.
//! - The private key and its passphrase are [`Secret`]s read from the keychain: they reach no file, log
//!   line or error message.
//! - A session that has ended (the bastion restarted, the network broke) is opened again by the next
//!   connection, so a capture that reconnects also reconnects its tunnel.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::client;
use russh::keys::{HashAlg, PrivateKeyWithHashAlg, PublicKey};
use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result};
use crate::secrets::Secret;

/// The port SSH servers listen on unless told otherwise.
pub const DEFAULT_SSH_PORT: u16 = 22;

/// Where the bastion is and who logs in: `ssh://user@host[:port]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SshEndpoint {
    /// The login on the bastion.
    pub user: String,
    /// The bastion's host name or address.
    pub host: String,
    /// The bastion's SSH port.
    pub port: u16,
}

impl SshEndpoint {
    /// Parses `ssh://user@host[:port]` (the `ssh://` may be left out; IPv6 hosts in brackets).
    pub fn parse(text: &str) -> Result<SshEndpoint> {
        const FIELD: &str = "SSH address";
        let text = text.trim();
        let rest = text.strip_prefix("ssh://").unwrap_or(text);
        if rest.is_empty() {
            return Err(Error::invalid_input(FIELD, "is empty"));
        }
        if rest.contains("://") {
            return Err(Error::invalid_input(
                FIELD,
                "write it as ssh://user@host[:port]",
            ));
        }
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let Some((user, address)) = rest.rsplit_once('@') else {
            return Err(Error::invalid_input(
                FIELD,
                "names no user: write it as ssh://user@host[:port]",
            ));
        };
        if user.is_empty() || user.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(Error::invalid_input(
                FIELD,
                "the user before '@' is empty or contains white space",
            ));
        }
        if address.contains('/') || address.contains('?') {
            return Err(Error::invalid_input(
                FIELD,
                "takes no path or options: write it as ssh://user@host[:port]",
            ));
        }
        let (host, port) = crate::source::address::split_host_port(address, DEFAULT_SSH_PORT)
            .map_err(|reason| Error::invalid_input(FIELD, reason))?;
        Ok(SshEndpoint {
            user: user.to_string(),
            host,
            port,
        })
    }

    /// `ssh://user@host:port`, as shown and saved.
    pub fn url(&self) -> String {
        format!("ssh://{}@{}", self.user, self.target())
    }

    /// `host:port` (IPv6 in brackets).
    pub fn target(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// A bastion's host key as a person is shown it before accepting it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ts_rs::TS)]
#[serde(rename_all = "camelCase")]
pub struct HostKey {
    /// The bastion, `host:port`.
    pub target: String,
    /// The key in OpenSSH's one-line form (`ssh-ed25519 AAAA…`), as saved in the profile.
    pub openssh: String,
    /// Its SHA-256 fingerprint as `ssh-keygen -lf` prints it (`SHA256:…`).
    pub fingerprint: String,
}

impl HostKey {
    fn of(target: String, key: &PublicKey) -> HostKey {
        HostKey {
            target,
            openssh: key.to_openssh().unwrap_or_default(),
            fingerprint: key.fingerprint(HashAlg::Sha256).to_string(),
        }
    }
}

/// Parses a saved host key (`algorithm base64 [comment]`).
pub fn parse_host_key(text: &str) -> Result<PublicKey> {
    PublicKey::from_openssh(text.trim()).map_err(|e| {
        Error::invalid_input("SSH host key", format!("is not an OpenSSH public key: {e}"))
    })
}

/// Whether two saved host keys are the same key (comments aside).
pub fn same_host_key(a: &str, b: &str) -> Result<bool> {
    Ok(parse_host_key(a)?.key_data() == parse_host_key(b)?.key_data())
}

/// The private key, checked now so a wrong passphrase or a mangled paste is refused when it is
/// entered, not at the first connection. Only the error's reason is shown, never the key.
pub fn check_private_key(key: &Secret, passphrase: Option<&Secret>) -> Result<()> {
    decode_key(key, passphrase).map(|_| ())
}

fn decode_key(key: &Secret, passphrase: Option<&Secret>) -> Result<russh::keys::PrivateKey> {
    russh::keys::decode_secret_key(key.expose(), passphrase.map(Secret::expose)).map_err(|e| {
        let reason = match e {
            russh::keys::Error::KeyIsEncrypted => {
                "is protected by a passphrase: enter it too".to_string()
            }
            russh::keys::Error::KeyIsCorrupt => {
                "could not be read: paste the whole private key file, or check its passphrase"
                    .to_string()
            }
            // Other reasons are not shown: some quote parts of what they could not read.
            _ => "could not be read: paste the whole private key file (OpenSSH or PEM) and check its passphrase".to_string(),
        };
        Error::invalid_input("SSH private key", reason)
    })
}

/// What the handler saw of the bastion: its key, and whether it matched the accepted one.
#[derive(Default)]
struct Seen {
    key: Option<PublicKey>,
}

struct Checker {
    accepted: Option<PublicKey>,
    seen: Arc<Mutex<Seen>>,
}

impl client::Handler for Checker {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        server_public_key: &PublicKey,
    ) -> std::result::Result<bool, Self::Error> {
        self.seen.lock().expect("not poisoned").key = Some(server_public_key.clone());
        // Compared by algorithm and key data; a comment is not part of a key.
        Ok(self
            .accepted
            .as_ref()
            .is_some_and(|a| a.key_data() == server_public_key.key_data()))
    }
}

fn ssh_config() -> Arc<client::Config> {
    Arc::new(client::Config {
        inactivity_timeout: None,
        // Keepalives notice a bastion that went away while the capture idles.
        keepalive_interval: Some(Duration::from_secs(15)),
        keepalive_max: 3,
        nodelay: true,
        ..client::Config::default()
    })
}

/// Connects to the bastion and reads its host key without logging in: what a person is shown before
/// accepting it.
pub async fn fetch_host_key(endpoint: &SshEndpoint, timeout: Duration) -> Result<HostKey> {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let checker = Checker {
        accepted: None,
        seen: seen.clone(),
    };
    let target = endpoint.target();
    let attempt = client::connect(
        ssh_config(),
        (endpoint.host.as_str(), endpoint.port),
        checker,
    );
    let outcome = tokio::time::timeout(timeout, attempt).await;
    let key = seen.lock().expect("not poisoned").key.take();
    match (key, outcome) {
        (Some(key), _) => Ok(HostKey::of(target, &key)),
        (None, Err(_)) => Err(no_answer(&target, timeout)),
        (None, Ok(Err(e))) => Err(connection_error(&target, e)),
        (None, Ok(Ok(_))) => Err(Error::internal(format!(
            "{target}: the SSH server showed no host key"
        ))),
    }
}

/// How a profile reaches its database through a bastion: everything needed to open the session.
pub struct TunnelSettings {
    /// The bastion and the login.
    pub endpoint: SshEndpoint,
    /// The private key (OpenSSH or PEM text), from the keychain.
    pub key: Secret,
    /// Its passphrase, from the keychain, if it has one.
    pub passphrase: Option<Secret>,
    /// The accepted host key (`algorithm base64`), if a person accepted one.
    pub host_key: Option<String>,
    /// The database's host and port, as the bastion reaches them.
    pub database: (String, u16),
    /// Bounds reaching the bastion, the key exchange and the login.
    pub timeout: Duration,
}

/// One SSH session to a bastion and the loopback port that carries connections through it. Shared by
/// every connection of a [`crate::source::connection::ConnectionSpec`] (cloned specs share it); dropping the
/// last clone closes the session and the port.
pub struct Tunnel {
    settings: TunnelSettings,
    live: tokio::sync::Mutex<Option<Live>>,
}

struct Live {
    session: Arc<client::Handle<Checker>>,
    local: SocketAddr,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for Live {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl std::fmt::Debug for Tunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tunnel")
            .field("via", &self.settings.endpoint.url())
            .field("to", &self.settings.database)
            .finish_non_exhaustive()
    }
}

impl Tunnel {
    /// A tunnel that opens its session at the first connection.
    pub fn new(settings: TunnelSettings) -> Arc<Tunnel> {
        Arc::new(Tunnel {
            settings,
            live: tokio::sync::Mutex::new(None),
        })
    }

    /// The bastion, as `ssh://user@host:port`.
    pub fn via(&self) -> String {
        self.settings.endpoint.url()
    }

    /// The loopback address to dial for the database: the session is opened (or opened again, if it
    /// ended) first.
    pub async fn local_addr(&self) -> Result<SocketAddr> {
        let mut live = self.live.lock().await;
        if let Some(current) = live.as_ref() {
            if !current.session.is_closed() && !current.accept.is_finished() {
                return Ok(current.local);
            }
            tracing::warn!(via = %self.via(), "the SSH session ended; opening it again");
        }
        let opened = self.open().await?;
        let local = opened.local;
        *live = Some(opened);
        Ok(local)
    }

    /// Whether the session is open now (for the app's state line).
    pub async fn is_open(&self) -> bool {
        self.live
            .lock()
            .await
            .as_ref()
            .is_some_and(|l| !l.session.is_closed())
    }

    async fn open(&self) -> Result<Live> {
        let settings = &self.settings;
        let endpoint = &settings.endpoint;
        let target = endpoint.target();
        let accepted = match &settings.host_key {
            Some(text) => Some(parse_host_key(text)?),
            None => None,
        };
        let key = decode_key(&settings.key, settings.passphrase.as_ref())?;
        let seen = Arc::new(Mutex::new(Seen::default()));
        let checker = Checker {
            accepted: accepted.clone(),
            seen: seen.clone(),
        };
        let connect = async {
            let mut session = client::connect(
                ssh_config(),
                (endpoint.host.as_str(), endpoint.port),
                checker,
            )
            .await?;
            let hash = session.best_supported_rsa_hash().await?.flatten();
            let auth = session
                .authenticate_publickey(
                    endpoint.user.clone(),
                    PrivateKeyWithHashAlg::new(Arc::new(key), hash),
                )
                .await?;
            Ok::<_, russh::Error>((session, auth.success()))
        };
        let outcome = tokio::time::timeout(settings.timeout, connect).await;
        let seen_key = seen.lock().expect("not poisoned").key.take();
        let (session, authenticated) = match outcome {
            Err(_) => return Err(no_answer(&target, settings.timeout)),
            Ok(Ok(pair)) => pair,
            Ok(Err(russh::Error::UnknownKey)) => {
                let Some(shown) = seen_key else {
                    return Err(Error::new(
                        ErrorKind::HostKey,
                        format!("{target}: the SSH server's host key was refused"),
                    ));
                };
                let shown = HostKey::of(target.clone(), &shown);
                return Err(match accepted {
                    None => Error::new(
                        ErrorKind::HostKey,
                        format!(
                            "{target}: the SSH server's host key is not accepted yet. Its fingerprint is {} ({}): compare it with `ssh-keygen -lf` on the bastion's key, then accept it (\"Trust this host key\" in the app, `tidepool profile ssh-host-key --accept` on the command line)",
                            shown.fingerprint,
                            shown.openssh.split(' ').next().unwrap_or("key")
                        ),
                    ),
                    Some(accepted) => Error::new(
                        ErrorKind::HostKey,
                        format!(
                            "{target}: the SSH server's host key changed: it shows {}, and the accepted key is {}. Someone may be in the middle, or the bastion was rebuilt; nothing was sent. Accept the new key only after checking it with the bastion's owner",
                            shown.fingerprint,
                            accepted.fingerprint(HashAlg::Sha256)
                        ),
                    ),
                });
            }
            Ok(Err(e)) => return Err(connection_error(&target, e)),
        };
        if !authenticated {
            return Err(Error::new(
                ErrorKind::Authentication,
                format!(
                    "{target}: the SSH server refused the private key for user '{}': add its public key to ~{}/.ssh/authorized_keys on the bastion",
                    endpoint.user, endpoint.user
                ),
            ));
        }
        let session = Arc::new(session);
        let listener = tokio::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))
            .await
            .map_err(|e| {
                Error::new(
                    ErrorKind::Connection,
                    format!("opening the SSH tunnel's loopback port: {e}"),
                )
            })?;
        let local = listener.local_addr().map_err(|e| {
            Error::new(
                ErrorKind::Connection,
                format!("reading the SSH tunnel's loopback port: {e}"),
            )
        })?;
        let (host, port) = settings.database.clone();
        let carrier = session.clone();
        let via = endpoint.url();
        let accept = tokio::spawn(async move {
            loop {
                let (mut socket, from) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        tracing::warn!(error = %e, "the SSH tunnel's loopback port failed");
                        return;
                    }
                };
                let session = carrier.clone();
                let (host, via) = (host.clone(), via.clone());
                tokio::spawn(async move {
                    let channel = match session
                        .channel_open_direct_tcpip(
                            host.clone(),
                            u32::from(port),
                            from.ip().to_string(),
                            u32::from(from.port()),
                        )
                        .await
                    {
                        Ok(channel) => channel,
                        Err(e) => {
                            // The client sees its connection close; say why here.
                            tracing::warn!(%via, database = %format!("{host}:{port}"), error = %e, "the SSH server would not open a channel to the database");
                            return;
                        }
                    };
                    let mut stream = channel.into_stream();
                    let _ = tokio::io::copy_bidirectional(&mut socket, &mut stream).await;
                });
            }
        });
        tracing::info!(via = %endpoint.url(), %local, "SSH tunnel open");
        Ok(Live {
            session,
            local,
            accept,
        })
    }
}

fn no_answer(target: &str, timeout: Duration) -> Error {
    Error::new(
        ErrorKind::Connection,
        format!(
            "{target}: the SSH server did not answer within {} s; check the SSH address and any firewall",
            timeout.as_secs()
        ),
    )
}

fn connection_error(target: &str, e: russh::Error) -> Error {
    let kind = match e {
        russh::Error::NotAuthenticated | russh::Error::NoAuthMethod => ErrorKind::Authentication,
        _ => ErrorKind::Connection,
    };
    Error::new(kind, format!("{target}: SSH: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssh_addresses_parse_with_and_without_scheme_and_port() {
        let cases = [
            (
                "ssh://ops@bastion.example.com",
                ("ops", "bastion.example.com", 22),
            ),
            (
                "ssh://ops@bastion.example.com:2222",
                ("ops", "bastion.example.com", 2222),
            ),
            ("ops@10.0.0.5:22", ("ops", "10.0.0.5", 22)),
            ("ssh://ops@[::1]:2200/", ("ops", "::1", 2200)),
        ];
        for (text, (user, host, port)) in cases {
            let parsed = SshEndpoint::parse(text).unwrap();
            assert_eq!(
                (parsed.user.as_str(), parsed.host.as_str(), parsed.port),
                (user, host, port),
                "{text}"
            );
        }
        assert_eq!(
            SshEndpoint::parse("ops@[::1]:2200").unwrap().url(),
            "ssh://ops@[::1]:2200"
        );
    }

    #[test]
    fn bad_ssh_addresses_name_the_field() {
        for text in [
            "",
            "bastion.example.com",
            "@bastion",
            "ssh://ops@",
            "ssh://ops@host:0",
            "ssh://ops@host:99999",
            "https://ops@host",
            "ssh://ops@host/path",
            "ssh://o ps@host",
        ] {
            let err = SshEndpoint::parse(text).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidInput, "{text}");
            assert!(
                err.message().contains("SSH address"),
                "{text}: {}",
                err.message()
            );
        }
    }

    #[test]
    fn a_mangled_private_key_is_refused_without_echoing_it() {
        let key = Secret::new("-----BEGIN OPENSSH PRIVATE KEY-----\nbm90IGEga2V5\n-----END OPENSSH PRIVATE KEY-----\n");
        let err = check_private_key(&key, None).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        assert!(
            err.message().contains("SSH private key"),
            "{}",
            err.message()
        );
        assert!(!err.message().contains("bm90IGEga2V5"), "{}", err.message());
    }

    #[test]
    fn host_keys_parse_and_bad_ones_name_the_field() {
        let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl comment";
        let parsed = parse_host_key(key).unwrap();
        assert!(parsed
            .fingerprint(HashAlg::Sha256)
            .to_string()
            .starts_with("SHA256:"));
        let err = parse_host_key("ssh-ed25519 nonsense").unwrap_err();
        assert!(err.message().contains("SSH host key"), "{}", err.message());
    }
}
