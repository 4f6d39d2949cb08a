//! PostgreSQL's wire protocol as far as a replication session needs it: reach the server (TCP, a Unix
//! socket, or TLS as `sslmode` says), start up with `replication=database`, authenticate (password,
//! MD5, SCRAM-SHA-256), run simple queries, and frame what the server sends.
//!
//! Why our own and not a transport crate: the capture reads the stream from here directly. The socket
//! is read in chunks of [`READ_CHUNK`] into one buffer, and every message handed out is a slice of that
//! buffer: no allocation or copy per message, and no task and channel between the socket and the
//! capture (issue 21's profiles put those at 8–21 % of the capture's CPU per change).
//! postgres-protocol (tokio-postgres' own) supplies the frontend messages, MD5 and SCRAM.
//!
//! Invariants:
//! - Reading and writing are cancel-safe: bytes read stay in `input` until framed, bytes queued stay in
//!   `output` until written, so a future dropped in a `select!` or a timeout loses nothing.
//! - A message longer than [`MAX_FRAME`] is refused before its body is buffered.
//! - No read waits on a receive mark (`SO_RCVLOWAT`) above one byte outside bulk mode
//!   ([`Wire::set_bulk`]), and in bulk mode none waits on it longer than [`BULK_WAIT`].
//! - The password is only ever used to answer the server's challenge: it is in no error and no log.
//! - Framing and parsing never panic on what the server sends: short or malformed messages are
//!   [`WireError::Protocol`].

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

use crate::source::connection::ConnectionSpec;
use crate::source::tls::SslMode;

/// How much the socket is asked for at a time. Large enough that a busy stream costs one read per
/// thousands of small messages; the kernel's socket buffer holds what the server sends beyond it.
pub const READ_CHUNK: usize = 256 * 1024;
/// The largest message accepted: PostgreSQL's own limit for a value is 1 GB, and a row's message
/// carries a little besides.
pub const MAX_FRAME: usize = (1 << 30) + (1 << 20);
/// In bulk mode ([`Wire::set_bulk`]), how much the kernel gathers before it wakes the reader
/// (`SO_RCVLOWAT`).
pub const BULK_LOW_WATER: usize = 64 * 1024;
/// In bulk mode, how long a read waits for [`BULK_LOW_WATER`] before it takes what has come (1–2 ms:
/// tokio's timer rounds up to its next millisecond tick).
pub const BULK_WAIT: std::time::Duration = std::time::Duration::from_millis(1);

/// What went wrong on the wire, for the caller to classify.
#[derive(Debug)]
pub enum WireError {
    /// The socket failed or the server closed it.
    Io(std::io::Error),
    /// TLS could not be set up as `sslmode` asks.
    Tls(String),
    /// Authentication could not proceed (the server's own refusal is [`WireError::Server`]).
    Auth(String),
    /// The server sent an ErrorResponse.
    Server(ServerError),
    /// The server sent something this protocol does not allow here.
    Protocol(String),
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WireError::Io(e) => write!(f, "{e}"),
            WireError::Tls(m) => write!(f, "TLS: {m}"),
            WireError::Auth(m) => write!(f, "authentication: {m}"),
            WireError::Server(e) => write!(f, "{e}"),
            WireError::Protocol(m) => write!(f, "protocol: {m}"),
        }
    }
}

impl From<std::io::Error> for WireError {
    fn from(e: std::io::Error) -> Self {
        WireError::Io(e)
    }
}

/// An ErrorResponse's fields that messages and classification use.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ServerError {
    /// `ERROR`, `FATAL`, … (the non-localized field when the server sends it).
    pub severity: String,
    /// The SQLSTATE.
    pub code: String,
    /// The primary message.
    pub message: String,
    /// The optional detail.
    pub detail: Option<String>,
    /// The optional hint.
    pub hint: Option<String>,
}

impl std::fmt::Display for ServerError {
    /// `SEVERITY: message (SQLSTATE code)`, then the detail and hint when given.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.severity, self.message)?;
        if let Some(detail) = &self.detail {
            write!(f, " ({detail})")?;
        }
        if let Some(hint) = &self.hint {
            write!(f, " Hint: {hint}")?;
        }
        write!(f, " (SQLSTATE {})", self.code)
    }
}

impl ServerError {
    /// Parses an ErrorResponse (or NoticeResponse) body: typed fields, each a NUL-terminated string,
    /// ended by a zero byte.
    pub fn parse(body: &[u8]) -> Result<ServerError, WireError> {
        let mut error = ServerError::default();
        let mut localized_severity = None;
        let mut rest = body;
        loop {
            let (&kind, after) = rest
                .split_first()
                .ok_or_else(|| WireError::Protocol("an ErrorResponse is not terminated".into()))?;
            if kind == 0 {
                break;
            }
            let end = after.iter().position(|&b| b == 0).ok_or_else(|| {
                WireError::Protocol("an ErrorResponse field is not terminated".into())
            })?;
            let value = String::from_utf8_lossy(&after[..end]).into_owned();
            rest = &after[end + 1..];
            match kind {
                b'V' => error.severity = value,
                b'S' => localized_severity = Some(value),
                b'C' => error.code = value,
                b'M' => error.message = value,
                b'D' => error.detail = Some(value),
                b'H' => error.hint = Some(value),
                _ => {}
            }
        }
        if error.severity.is_empty() {
            error.severity = localized_severity.unwrap_or_else(|| "ERROR".into());
        }
        Ok(error)
    }
}

/// One message from the server: its type byte and its body (a slice of the read buffer).
#[derive(Debug)]
pub struct Frame {
    /// The message type.
    pub tag: u8,
    /// The message after its length.
    pub body: Bytes,
}

/// Sets `SO_RCVLOWAT`: the socket reports itself readable once `bytes` are queued (or on an error,
/// the peer closing, or memory pressure: the kernel never waits on a mark it cannot reach).
fn set_receive_low_water(tcp: &TcpStream, bytes: usize) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // SAFETY: the descriptor is the open socket `tcp` borrows for the whole call, and the option
    // value is a c_int that outlives the call, passed with its own size.
    let rc = unsafe {
        libc::setsockopt(
            tcp.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVLOWAT,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The receive mark is above one byte and the socket refused to lower it: a read could wait for
/// bytes that never come, so the session ends instead (and the capture reconnects).
fn mark_stuck() -> WireError {
    WireError::Io(std::io::Error::other(
        "the socket's receive mark could not be set back to one byte",
    ))
}

/// The connection to the server, plain or encrypted.
enum Socket {
    Tcp(TcpStream),
    Unix(UnixStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Socket::Unix(s) => Pin::new(s).poll_read(cx, buf),
            Socket::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Socket::Unix(s) => Pin::new(s).poll_write(cx, buf),
            Socket::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_flush(cx),
            Socket::Unix(s) => Pin::new(s).poll_flush(cx),
            Socket::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Socket::Unix(s) => Pin::new(s).poll_shutdown(cx),
            Socket::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// An authenticated session, ready for queries.
pub struct Wire {
    socket: Socket,
    /// Read and not yet framed.
    input: BytesMut,
    /// Queued and not yet written.
    output: BytesMut,
    /// The length of the message being read, header included, once its header is in.
    pending: usize,
    /// Whether reads should wait for [`BULK_LOW_WATER`] bytes ([`Wire::set_bulk`]).
    bulk: bool,
    /// The socket's `SO_RCVLOWAT` as last set here (1, the kernel's default, until then).
    low_water: usize,
    /// The socket refused `SO_RCVLOWAT` once: bulk mode stays off for this session.
    low_water_refused: bool,
}

/// What a session starts with besides where to connect.
pub struct Startup<'a> {
    /// The server and credentials; TLS and its server name follow its `sslmode` and `host`.
    pub spec: &'a ConnectionSpec,
    /// Where to connect: the host itself, or an SSH tunnel's loopback port.
    pub dial: (String, u16),
    /// Startup parameters besides `user` and `database`.
    pub parameters: &'a [(&'a str, &'a str)],
}

impl Wire {
    /// Connects, negotiates TLS, starts up and authenticates; returns once the server is ready for a
    /// query.
    pub async fn connect(startup: Startup<'_>) -> Result<Wire, WireError> {
        let spec = startup.spec;
        let socket = if spec.host.starts_with('/') {
            // libpq: a host that is a path is the directory of the server's Unix socket; no TLS on it.
            let path = std::path::Path::new(&spec.host).join(format!(".s.PGSQL.{}", spec.port));
            Socket::Unix(UnixStream::connect(path).await?)
        } else {
            let tcp = TcpStream::connect((startup.dial.0.as_str(), startup.dial.1)).await?;
            tcp.set_nodelay(true)?;
            negotiate_tls(tcp, spec).await?
        };
        let mut wire = Wire {
            socket,
            input: BytesMut::with_capacity(READ_CHUNK),
            output: BytesMut::with_capacity(256),
            pending: 0,
            bulk: false,
            low_water: 1,
            low_water_refused: false,
        };
        let mut parameters = vec![
            ("user", spec.user.as_str()),
            ("database", spec.database.as_str()),
            ("client_encoding", "UTF8"),
        ];
        parameters.extend_from_slice(startup.parameters);
        frontend::startup_message(parameters.iter().copied(), &mut wire.output)?;
        wire.flush().await?;
        wire.authenticate(spec).await?;
        Ok(wire)
    }

    /// Answers the server's authentication requests until it is ready for a query.
    async fn authenticate(&mut self, spec: &ConnectionSpec) -> Result<(), WireError> {
        let password = || {
            spec.password
                .as_ref()
                .map(|p| p.expose().as_bytes())
                .ok_or_else(|| {
                    WireError::Auth("the server asks for a password and none is set".into())
                })
        };
        let mut scram: Option<ScramSha256> = None;
        loop {
            let frame = self.read_frame().await?;
            match frame.tag {
                b'R' => {
                    let body = &frame.body[..];
                    let code = be_i32(body, 0)?;
                    match code {
                        0 => {}
                        3 => frontend::password_message(password()?, &mut self.output)?,
                        5 => {
                            let salt: [u8; 4] = body
                                .get(4..8)
                                .and_then(|s| s.try_into().ok())
                                .ok_or_else(|| {
                                    WireError::Protocol("an MD5 request without its salt".into())
                                })?;
                            let hash = postgres_protocol::authentication::md5_hash(
                                spec.user.as_bytes(),
                                password()?,
                                salt,
                            );
                            frontend::password_message(hash.as_bytes(), &mut self.output)?;
                        }
                        10 => {
                            let offered = body[4..]
                                .split(|&b| b == 0)
                                .filter(|m| !m.is_empty())
                                .map(|m| String::from_utf8_lossy(m).into_owned())
                                .collect::<Vec<_>>();
                            if !offered.iter().any(|m| m == SCRAM_SHA_256) {
                                return Err(WireError::Auth(format!(
                                    "the server offers {} and Tidepool speaks SCRAM-SHA-256",
                                    offered.join(", ")
                                )));
                            }
                            // Without channel binding ("n"), which servers that offer it accept.
                            let client =
                                ScramSha256::new(password()?, ChannelBinding::unsupported());
                            frontend::sasl_initial_response(
                                SCRAM_SHA_256,
                                client.message(),
                                &mut self.output,
                            )?;
                            scram = Some(client);
                        }
                        11 | 12 => {
                            let client = scram.as_mut().ok_or_else(|| {
                                WireError::Protocol("a SASL message before SASL began".into())
                            })?;
                            if code == 11 {
                                client
                                    .update(&body[4..])
                                    .map_err(|e| WireError::Auth(format!("SCRAM: {e}")))?;
                                frontend::sasl_response(client.message(), &mut self.output)?;
                            } else {
                                client.finish(&body[4..]).map_err(|e| {
                                    WireError::Auth(format!(
                                        "SCRAM: the server's signature does not verify ({e})"
                                    ))
                                })?;
                            }
                        }
                        other => {
                            return Err(WireError::Auth(format!(
                                "the server asks for authentication method {other}; Tidepool \
                                 answers password, md5 and scram-sha-256"
                            )))
                        }
                    }
                    self.flush().await?;
                }
                b'E' => return Err(WireError::Server(ServerError::parse(&frame.body)?)),
                b'Z' => return Ok(()),
                // ParameterStatus, BackendKeyData, NoticeResponse, NegotiateProtocolVersion.
                _ => {}
            }
        }
    }

    /// Runs a simple query and returns its rows as text (`None` for NULL).
    pub async fn simple_query(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>, WireError> {
        frontend::query(sql, &mut self.output)?;
        self.flush().await?;
        let mut rows = Vec::new();
        let mut failed = None;
        loop {
            let frame = self.read_frame().await?;
            match frame.tag {
                b'D' => rows.push(data_row(&frame.body)?),
                b'E' => failed = Some(ServerError::parse(&frame.body)?),
                b'Z' => {
                    return match failed {
                        Some(e) => Err(WireError::Server(e)),
                        None => Ok(rows),
                    }
                }
                // RowDescription, CommandComplete, EmptyQueryResponse, notices.
                _ => {}
            }
        }
    }

    /// Sends a query that starts COPY BOTH (START_REPLICATION) and returns once the server streams.
    pub async fn start_copy_both(&mut self, sql: &str) -> Result<(), WireError> {
        frontend::query(sql, &mut self.output)?;
        self.flush().await?;
        loop {
            let frame = self.read_frame().await?;
            match frame.tag {
                b'W' => return Ok(()),
                b'E' => return Err(WireError::Server(ServerError::parse(&frame.body)?)),
                b'Z' => {
                    return Err(WireError::Protocol(
                        "the server finished the query without starting to stream".into(),
                    ))
                }
                _ => {}
            }
        }
    }

    /// The next message, reading as needed. Cancel-safe.
    pub async fn read_frame(&mut self) -> Result<Frame, WireError> {
        loop {
            if let Some(frame) = self.frame()? {
                return Ok(frame);
            }
            self.fill().await?;
        }
    }

    /// The next message if it has been read in whole, without reading.
    pub fn frame(&mut self) -> Result<Option<Frame>, WireError> {
        match split_frame(&mut self.input)? {
            Framed::Frame(frame) => {
                self.pending = 0;
                Ok(Some(frame))
            }
            Framed::Need(total) => {
                self.pending = total;
                Ok(None)
            }
        }
    }

    /// Reads what the server has sent, waiting for at least one byte (in bulk mode, for
    /// [`BULK_LOW_WATER`] bytes or [`BULK_WAIT`], whichever comes first). Cancel-safe.
    pub async fn fill(&mut self) -> Result<(), WireError> {
        self.make_room();
        let read = if self.bulk && self.apply_low_water(BULK_LOW_WATER) {
            match tokio::time::timeout(BULK_WAIT, self.socket.read_buf(&mut self.input)).await {
                Ok(read) => read?,
                Err(_) if self.apply_low_water(1) => {
                    // Less came within the wait: the end of a transaction, or a server that sends
                    // slowly. Setting the mark back to one byte wakes the reader at once if anything
                    // at all is there: Linux re-checks readiness when the mark changes
                    // (`tcp_set_rcvlowat`), which the tests below show on the running kernel.
                    self.socket.read_buf(&mut self.input).await?
                }
                // The mark could not be lowered: never wait on it unbounded.
                Err(_) => return Err(mark_stuck()),
            }
        } else {
            if !self.apply_low_water(1) {
                return Err(mark_stuck());
            }
            self.socket.read_buf(&mut self.input).await?
        };
        if read == 0 {
            return Err(WireError::Io(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the server closed the connection",
            )));
        }
        Ok(())
    }

    /// Bulk mode: while the server streams a large transaction, wake the reader once per
    /// [`BULK_LOW_WATER`] bytes rather than once per message. Over loopback or a fast network a
    /// reader that keeps up with the server otherwise reads each message as it is sent, and every
    /// read costs a wake-up, a system call and an acknowledgement to the server (issue 21's profile
    /// put the receive path at 17 % of the capture's CPU). Latency is bounded by [`BULK_WAIT`].
    /// Linux only (the fallback relies on its re-check of readiness when the mark changes); a Unix
    /// socket stays as it is (its readiness ignores the mark). Over TLS the kernel still wakes the
    /// reader per 64 KiB, but rustls hands data back a record (≤ 16 KiB) at a time.
    pub fn set_bulk(&mut self, bulk: bool) {
        self.bulk = bulk && cfg!(target_os = "linux") && !self.low_water_refused;
    }

    /// Sets the socket's `SO_RCVLOWAT` to `bytes` unless it already is; whether it now is. A socket
    /// that refuses the option leaves bulk mode for the session (it is only an economy).
    fn apply_low_water(&mut self, bytes: usize) -> bool {
        if self.low_water == bytes {
            return true;
        }
        let tcp = match &self.socket {
            Socket::Tcp(tcp) => tcp,
            Socket::Tls(tls) => tls.get_ref().0,
            Socket::Unix(_) => {
                self.bulk = false;
                return false;
            }
        };
        match set_receive_low_water(tcp, bytes) {
            Ok(()) => {
                self.low_water = bytes;
                true
            }
            Err(e) => {
                tracing::debug!(error = %e, "SO_RCVLOWAT refused; reading without it");
                self.bulk = false;
                self.low_water_refused = true;
                false
            }
        }
    }

    /// Makes the buffer able to take the message being read in whole, or at least a chunk more.
    /// Messages handed out share the buffer; while the capture still holds some, growing allocates a
    /// new one, else the space they used is reused. After a message far larger than a chunk the buffer
    /// is made small again, so one 100 MB row does not keep 100 MB for the rest of the session.
    fn make_room(&mut self) {
        let want = self.pending.max(self.input.len() + READ_CHUNK / 4);
        if self.input.capacity() > want.max(READ_CHUNK) * 4 {
            let mut smaller = BytesMut::with_capacity(want.max(READ_CHUNK));
            smaller.extend_from_slice(&self.input);
            self.input = smaller;
        } else if self.input.capacity() < want {
            let target = want.max(self.input.len() + READ_CHUNK);
            self.input.reserve(target - self.input.len());
        }
    }

    /// Whether queued messages wait to be written.
    pub fn has_output(&self) -> bool {
        !self.output.is_empty()
    }

    /// Writes what is queued. Cancel-safe: what is not yet written stays queued.
    pub async fn flush(&mut self) -> Result<(), WireError> {
        while self.output.has_remaining() {
            if self.socket.write_buf(&mut self.output).await? == 0 {
                return Err(WireError::Io(std::io::ErrorKind::WriteZero.into()));
            }
        }
        self.socket.flush().await?;
        Ok(())
    }

    /// Queues a CopyData message.
    pub fn queue_copy_data(&mut self, body: &[u8]) {
        self.output.put_u8(b'd');
        self.output.put_u32(4 + body.len() as u32);
        self.output.put_slice(body);
    }

    /// Queues CopyDone: the end of what this side sends in a COPY.
    pub fn queue_copy_done(&mut self) {
        frontend::copy_done(&mut self.output);
    }

    /// Queues Terminate: the server ends the session once it has read what was sent before.
    pub fn queue_terminate(&mut self) {
        frontend::terminate(&mut self.output);
    }
}

/// What [`split_frame`] found at the start of the buffer.
#[derive(Debug)]
pub enum Framed {
    /// A whole message, taken off the buffer.
    Frame(Frame),
    /// The buffer holds part of a message; the whole one is this many bytes, header included.
    Need(usize),
}

/// Takes the first whole message off `input`, or says how long it is. The body shares `input`'s
/// allocation: no copy.
pub fn split_frame(input: &mut BytesMut) -> Result<Framed, WireError> {
    let Some(header) = input.get(..5) else {
        return Ok(Framed::Need(5));
    };
    let tag = header[0];
    let length = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    if length < 4 {
        return Err(WireError::Protocol(format!(
            "a message of type {:?} claims a length of {length}",
            tag as char
        )));
    }
    if length > MAX_FRAME {
        return Err(WireError::Protocol(format!(
            "a message of type {:?} is {length} bytes long, more than the {MAX_FRAME} accepted",
            tag as char
        )));
    }
    if input.len() < 1 + length {
        return Ok(Framed::Need(1 + length));
    }
    input.advance(5);
    let body = input.split_to(length - 4).freeze();
    Ok(Framed::Frame(Frame { tag, body }))
}

/// Asks for TLS as `sslmode` says and sets it up, checking the certificate as far as the mode asks.
async fn negotiate_tls(mut tcp: TcpStream, spec: &ConnectionSpec) -> Result<Socket, WireError> {
    // `allow` tries without TLS first; a replication connection that a server refuses without TLS
    // fails with the server's own message, which says so.
    if matches!(spec.sslmode, SslMode::Disable | SslMode::Allow) {
        return Ok(Socket::Tcp(tcp));
    }
    let mut request = BytesMut::new();
    frontend::ssl_request(&mut request);
    tcp.write_all(&request).await?;
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer).await?;
    match answer[0] {
        b'S' => {}
        b'N' if spec.sslmode == SslMode::Prefer => return Ok(Socket::Tcp(tcp)),
        b'N' => {
            return Err(WireError::Tls(format!(
                "the server does not offer TLS, and sslmode={} requires it",
                spec.sslmode
            )))
        }
        other => {
            return Err(WireError::Protocol(format!(
                "the server answered the TLS request with {:?}",
                other as char
            )))
        }
    }
    let config = crate::source::tls::client_config(spec.sslmode, spec.sslrootcert.as_deref())
        .map_err(|e| WireError::Tls(e.message().to_string()))?;
    // SNI and the name checked are the host's, also through an SSH tunnel (Neon routes by SNI).
    let name = rustls::pki_types::ServerName::try_from(spec.host.clone())
        .map_err(|_| WireError::Tls(format!("'{}' is not a valid server name", spec.host)))?;
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| WireError::Tls(format!("handshake failed: {e}")))?;
    Ok(Socket::Tls(Box::new(tls)))
}

/// A big-endian i32 at `at`, or a protocol error for a short message.
fn be_i32(body: &[u8], at: usize) -> Result<i32, WireError> {
    body.get(at..at + 4)
        .and_then(|b| b.try_into().ok())
        .map(i32::from_be_bytes)
        .ok_or_else(|| WireError::Protocol("a message shorter than its fields".into()))
}

/// A DataRow's columns as text.
pub fn data_row(body: &[u8]) -> Result<Vec<Option<String>>, WireError> {
    let short = || WireError::Protocol("a DataRow shorter than its columns".into());
    let count = body.get(..2).ok_or_else(short)?;
    let count = u16::from_be_bytes([count[0], count[1]]) as usize;
    let mut at = 2;
    let mut row = Vec::with_capacity(count.min(body.len() / 4));
    for _ in 0..count {
        let len = be_i32(body, at)?;
        at += 4;
        if len < 0 {
            row.push(None);
            continue;
        }
        let value = body.get(at..at + len as usize).ok_or_else(short)?;
        row.push(Some(String::from_utf8_lossy(value).into_owned()));
        at += len as usize;
    }
    Ok(row)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A session's reading end over a real loopback TCP connection, and the server's end.
    async fn loopback() -> (Wire, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap());
        let (client, server) = tokio::join!(client, listener.accept());
        let wire = Wire {
            socket: Socket::Tcp(client.unwrap()),
            input: BytesMut::with_capacity(READ_CHUNK),
            output: BytesMut::new(),
            pending: 0,
            bulk: false,
            low_water: 1,
            low_water_refused: false,
        };
        (wire, server.unwrap().0)
    }

    /// Reads once, failing the test if that takes more than `within`.
    async fn fill_within(wire: &mut Wire, within: std::time::Duration) {
        tokio::time::timeout(within, wire.fill())
            .await
            .expect("the read waited for bytes that were already there")
            .unwrap();
    }

    #[tokio::test]
    async fn in_bulk_mode_every_byte_arrives_in_order_and_a_short_tail_is_not_held() {
        let (mut wire, mut server) = loopback().await;
        wire.set_bulk(true);
        // The socket takes the mark: the reads below do wait on it.
        assert!(wire.apply_low_water(BULK_LOW_WATER));
        let sent: Vec<u8> = (0..64 * 4096u32).map(|i| (i % 251) as u8).collect();
        let chunks = sent.clone();
        // Segments that come slower than the mark fills: each read then ends at BULK_WAIT.
        let sending = tokio::spawn(async move {
            for chunk in chunks.chunks(4096) {
                server.write_all(chunk).await.unwrap();
                tokio::time::sleep(std::time::Duration::from_micros(300)).await;
            }
            server
        });
        while wire.input.len() < sent.len() {
            fill_within(&mut wire, std::time::Duration::from_secs(5)).await;
        }
        assert_eq!(&wire.input[..], &sent[..]);
        let mut server = sending.await.unwrap();
        // Less than the mark, and nothing after it (a transaction's last changes): read after
        // BULK_WAIT, not held until more comes.
        server.write_all(b"tail").await.unwrap();
        fill_within(&mut wire, std::time::Duration::from_secs(1)).await;
        assert!(wire.input.ends_with(b"tail"));
    }

    #[tokio::test]
    async fn leaving_bulk_mode_reads_a_few_bytes_as_soon_as_they_come() {
        let (mut wire, mut server) = loopback().await;
        wire.set_bulk(true);
        server.write_all(&[1u8; 2 * BULK_LOW_WATER]).await.unwrap();
        while wire.input.len() < 2 * BULK_LOW_WATER {
            fill_within(&mut wire, std::time::Duration::from_secs(5)).await;
        }
        // The mark as a bulk read leaves it when it does not end on BULK_WAIT.
        assert!(wire.apply_low_water(BULK_LOW_WATER));
        wire.set_bulk(false);
        // A small transaction after a large one: were the mark left on the socket, this read would
        // wait for 64 KiB that never come.
        let reading = tokio::spawn(async move {
            fill_within(&mut wire, std::time::Duration::from_secs(1)).await;
            wire
        });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        server.write_all(b"small").await.unwrap();
        let wire = reading.await.unwrap();
        assert!(wire.input.ends_with(b"small"));
        assert_eq!(wire.low_water, 1);
    }

    #[test]
    fn an_error_response_reads_as_the_server_wrote_it() {
        let body = b"SERROR\0VERROR\0C42704\0Mreplication slot \"x\" does not exist\0\0";
        let e = ServerError::parse(body).unwrap();
        assert_eq!(e.code, "42704");
        assert_eq!(
            e.to_string(),
            "ERROR: replication slot \"x\" does not exist (SQLSTATE 42704)"
        );
        let with_detail = ServerError::parse(b"VFATAL\0C28P01\0Mno\0Dwhy\0Hdo this\0\0").unwrap();
        assert_eq!(
            with_detail.to_string(),
            "FATAL: no (why) Hint: do this (SQLSTATE 28P01)"
        );
    }

    #[test]
    fn messages_are_framed_whole_and_only_whole() {
        let mut input = BytesMut::from(&b"Z\0\0\0\x05Id\0\0\0\x06w"[..]);
        match split_frame(&mut input).unwrap() {
            Framed::Frame(f) => assert_eq!((f.tag, &f.body[..]), (b'Z', &b"I"[..])),
            other => panic!("{other:?}"),
        }
        // Half a CopyData: the whole is 7 bytes and nothing is taken.
        assert!(matches!(split_frame(&mut input).unwrap(), Framed::Need(7)));
        assert_eq!(input.len(), 6);
        input.extend_from_slice(b"!");
        match split_frame(&mut input).unwrap() {
            Framed::Frame(f) => assert_eq!((f.tag, &f.body[..]), (b'd', &b"w!"[..])),
            other => panic!("{other:?}"),
        }
        assert!(input.is_empty());
        assert!(matches!(split_frame(&mut input).unwrap(), Framed::Need(5)));
        for bad in [&b"d\0\0\0\x03"[..], b"d\x7f\xff\xff\xff"] {
            let mut input = BytesMut::from(bad);
            assert!(
                matches!(split_frame(&mut input), Err(WireError::Protocol(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn malformed_server_messages_are_errors_not_panics() {
        for body in [&b""[..], b"C42", b"C42\0", b"\xff"] {
            assert!(ServerError::parse(body).is_err(), "{body:?}");
        }
        for body in [
            &b""[..],
            b"\0",
            b"\0\x01",
            b"\0\x01\0\0\0\x09ab",
            b"\0\x02\xff\xff\xff\xff",
        ] {
            assert!(data_row(body).is_err(), "{body:?}");
        }
        assert_eq!(
            data_row(b"\0\x02\xff\xff\xff\xff\0\0\0\x02ab").unwrap(),
            vec![None, Some("ab".to_string())]
        );
    }
}
