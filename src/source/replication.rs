//! The replication connection: `replication=database`, START_REPLICATION with pgoutput, keepalives and
//! standby status updates, over TLS when the profile asks for it.
//!
//! The stream is read on the capture's own task, straight from the socket ([`crate::source::wire`]):
//! [`Stream::next`] frames the next message from the read buffer and reads the socket only when the
//! buffer holds no whole message. There is no task or channel between the socket and the capture, so
//! a change costs no hand-over, and what is read ahead is bounded by the buffer
//! ([`crate::source::wire::READ_CHUNK`], or the one message being read) and the kernel's socket buffer,
//! which is where the server then waits.
//!
//! Invariants:
//! - The position reported to the server (write = flush = apply) is only ever what [`Stream::confirm`]
//!   was given, i.e. what the capture has durably stored; it starts at the stored checkpoint.
//! - Keepalives that ask for a reply are answered with that same confirmed position.
//! - Only a transaction past [`BULK_AFTER`] bytes is read in bulk ([`Wire::set_bulk`]), and its
//!   Commit ends bulk mode: a small transaction is read as soon as its first byte arrives.
//! - A confirmed position is sent within [`STATUS_INTERVAL`] while the stream waits for the server, and
//!   at the latest at the next read while it is busy; [`Stream::stop`] sends the last one and returns
//!   once the server has read it.
//! - The session pins every setting that text output depends on ([`crate::document::value::SESSION_OPTIONS`]).
//! - The password goes only to the server.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Buf;

use crate::error::{Error, ErrorKind, Result};
use crate::source::connection::ConnectionSpec;
use crate::source::pgoutput::{self, Lsn};
use crate::source::sql;
use crate::source::wire::{Frame, ServerError, Startup, Wire, WireError};

/// What the replication stream delivers.
#[derive(Debug)]
pub enum Event {
    /// A transaction begins (its Begin message: the commit record's LSN, commit time, xid).
    Begin {
        final_lsn: Lsn,
        commit_time_micros: i64,
        xid: u32,
    },
    /// A pgoutput message other than Begin, Commit and Message (a slice of the read buffer).
    Data(bytes::Bytes),
    /// The transaction commits; `end_lsn` is where the next one can start.
    Commit {
        commit_lsn: Lsn,
        end_lsn: Lsn,
        commit_time_micros: i64,
    },
    /// The server's position while there is nothing to send.
    KeepAlive { wal_end: Lsn },
    /// A `pg_logical_emit_message` message.
    Message { lsn: Lsn, prefix: String },
}

/// How often a newly confirmed position is sent to the server. Short, because the slot's
/// `confirmed_flush_lsn` trails the store by as much, and ten small messages a second cost nothing.
const STATUS_INTERVAL: Duration = Duration::from_millis(100);

/// How much of one transaction the server sends before the stream reads in bulk
/// ([`Wire::set_bulk`]): past this the transaction is large, and waiting up to
/// [`crate::source::wire::BULK_WAIT`] at its end is small beside how long it takes to arrive.
const BULK_AFTER: usize = 1 << 20;

/// Decides when the stream reads in bulk: from [`BULK_AFTER`] bytes into a transaction to its Commit.
#[derive(Debug, Default)]
struct Bulk {
    /// How many bytes of changes the open transaction has brought so far.
    tx_bytes: usize,
}

impl Bulk {
    /// Whether bulk mode starts (`Some(true)`) or ends (`Some(false)`) with `event`.
    fn after(&mut self, event: &Event) -> Option<bool> {
        match event {
            Event::Begin { .. } => {
                self.tx_bytes = 0;
                None
            }
            Event::Data(data) => {
                let before = self.tx_bytes;
                self.tx_bytes = before.saturating_add(data.len());
                (before < BULK_AFTER && self.tx_bytes >= BULK_AFTER).then_some(true)
            }
            Event::Commit { .. } => Some(false),
            _ => None,
        }
    }
}

/// How long [`Stream::stop`] waits for the server to acknowledge the end of the stream.
const STOP_WAIT: Duration = Duration::from_secs(2);

/// The XLogData header before the pgoutput message: `w`, start, end and send time.
const XLOG_DATA_HEADER: usize = 1 + 8 + 8 + 8;
/// A primary keepalive: `k`, the server's end of WAL, its time, and whether it asks for a reply.
const KEEPALIVE_LEN: usize = 1 + 8 + 8 + 1;

/// An open replication stream.
pub struct Stream {
    wire: Wire,
    target: String,
    /// What the capture has durably stored ([`Stream::confirm`]).
    confirmed: AtomicU64,
    /// The position last sent to the server.
    sent: u64,
    /// When a position was last sent.
    sent_at: tokio::time::Instant,
    /// The server ended the stream.
    ended: bool,
    /// When to read in bulk.
    bulk: Bulk,
}

/// Where and what to stream.
pub struct StreamOptions<'a> {
    /// The server and credentials.
    pub spec: &'a ConnectionSpec,
    /// Slot to stream from.
    pub slot: &'a str,
    /// Publications to decode with (the capture's and, when it exists, its insert-only companion).
    pub publications: &'a [String],
    /// Where to start: the stored checkpoint (`0/0` starts at the slot's `confirmed_flush_lsn`).
    pub start: Lsn,
}

/// Connects a replication session (`replication=database`) within the profile's connect timeout.
async fn open(spec: &ConnectionSpec, slot: &str) -> Result<Wire> {
    spec.validate()?;
    let target = spec.target();
    let dial = spec.dial().await?;
    let mut session_options = crate::document::value::SESSION_OPTIONS.to_string();
    if let Some(extra) = &spec.options {
        session_options = format!("{extra} {session_options}");
    }
    let parameters = [
        ("replication", "database"),
        ("application_name", spec.application_name.as_str()),
        ("options", session_options.as_str()),
    ];
    let connect = Wire::connect(Startup {
        spec,
        dial,
        parameters: &parameters,
    });
    match tokio::time::timeout(
        spec.connect_timeout.saturating_add(Duration::from_secs(2)),
        connect,
    )
    .await
    {
        Ok(Ok(wire)) => Ok(wire),
        Ok(Err(e)) => Err(wire_error(&target, slot, e)),
        Err(_) => Err(Error::new(
            ErrorKind::Connection,
            format!(
                "{target}: the replication connection did not start within {} s",
                spec.connect_timeout.as_secs()
            ),
        )),
    }
}

impl Stream {
    /// Connects, authenticates and starts streaming.
    pub async fn start(options: StreamOptions<'_>) -> Result<Stream> {
        let target = options.spec.target();
        let mut wire = open(options.spec, options.slot).await?;
        // publication_names is parsed as a list of identifiers: quote each, then the list as a literal.
        let publications = options
            .publications
            .iter()
            .map(|p| sql::ident(p))
            .collect::<Vec<_>>()
            .join(",");
        let command = format!(
            "START_REPLICATION SLOT {} LOGICAL {} (proto_version '1', publication_names {}, messages 'true')",
            sql::ident(options.slot),
            options.start,
            sql::literal(&publications)
        );
        wire.start_copy_both(&command)
            .await
            .map_err(|e| wire_error(&target, options.slot, e))?;
        Ok(Stream {
            wire,
            target,
            confirmed: AtomicU64::new(options.start.0),
            sent: options.start.0,
            sent_at: tokio::time::Instant::now(),
            ended: false,
            bulk: Bulk::default(),
        })
    }

    /// The next event, or `None` when the server ended the stream. Cancel-safe.
    pub async fn next(&mut self) -> Result<Option<Event>> {
        loop {
            if self.ended {
                return Ok(None);
            }
            if self.wire.has_output() {
                self.wire.flush().await.map_err(|e| self.error(e))?;
            }
            match self.wire.frame().map_err(|e| self.error(e))? {
                Some(frame) => {
                    if let Some(event) = self.event(frame)? {
                        return Ok(Some(event));
                    }
                }
                None => self.wait().await?,
            }
        }
    }

    /// The next event if one is already waiting, without waiting for one.
    pub async fn next_ready(&mut self) -> Result<Option<Event>> {
        use futures_util::FutureExt;
        match self.next().now_or_never() {
            Some(result) => result,
            None => Ok(None),
        }
    }

    /// Reports `lsn` as written, flushed and applied: call only once everything up to it is stored.
    pub fn confirm(&self, lsn: Lsn) {
        self.confirmed.store(lsn.0, Ordering::Release);
    }

    /// Ends the stream cleanly: sends the last confirmed position, ends the copy, and waits (within
    /// [`STOP_WAIT`]) until the server is ready for a query again. By then it has read the position, so
    /// the slot's `confirmed_flush_lsn` is the store's checkpoint, and it has released the slot, so a
    /// stream started right after this (a re-backfill restarts the stream) is not refused with "slot
    /// is active" (55006): the server sends its own CopyDone before it releases the slot, and
    /// ReadyForQuery after.
    pub async fn stop(mut self) {
        let last = self.confirmed.load(Ordering::Acquire);
        self.queue_status(last, false);
        self.wire.queue_copy_done();
        let wire = &mut self.wire;
        let ended = async {
            wire.flush().await?;
            loop {
                let frame = wire.read_frame().await?;
                if frame.tag == b'Z' {
                    return Ok::<_, WireError>(());
                }
            }
        };
        let _ = tokio::time::timeout(STOP_WAIT, ended).await;
        self.wire.queue_terminate();
        let _ = tokio::time::timeout(STOP_WAIT, self.wire.flush()).await;
    }

    /// Reads more from the server, first sending a confirmed position that is due; while one is
    /// confirmed and not yet sent, waits no longer than until it is due.
    async fn wait(&mut self) -> Result<()> {
        let confirmed = self.confirmed.load(Ordering::Acquire);
        let due = (confirmed > self.sent).then_some(self.sent_at + STATUS_INTERVAL);
        if due.is_some_and(|due| tokio::time::Instant::now() >= due) {
            self.queue_status(confirmed, false);
            self.wire.flush().await.map_err(|e| self.error(e))?;
            return Ok(());
        }
        let read = match due {
            None => self.wire.fill().await,
            Some(due) => tokio::select! {
                biased;
                read = self.wire.fill() => read,
                _ = tokio::time::sleep_until(due) => Ok(()),
            },
        };
        read.map_err(|e| self.error(e))
    }

    /// The event a message from the server carries, if any.
    fn event(&mut self, frame: Frame) -> Result<Option<Event>> {
        match frame.tag {
            b'd' => {
                let (event, reply) = copy_data(frame.body).map_err(|e| self.error(e))?;
                if let Some(bulk) = self.bulk.after(&event) {
                    self.wire.set_bulk(bulk);
                }
                if reply {
                    let confirmed = self.confirmed.load(Ordering::Acquire);
                    self.queue_status(confirmed, false);
                }
                Ok(Some(event))
            }
            b'E' => {
                let e = ServerError::parse(&frame.body).map_err(|e| self.error(e))?;
                Err(self.error(WireError::Server(e)))
            }
            b'c' => {
                self.ended = true;
                Ok(None)
            }
            // NoticeResponse, ParameterStatus.
            _ => Ok(None),
        }
    }

    /// Queues a standby status update reporting `lsn` as written, flushed and applied.
    fn queue_status(&mut self, lsn: u64, reply: bool) {
        let mut body = [0u8; 34];
        body[0] = b'r';
        for at in [1, 9, 17] {
            body[at..at + 8].copy_from_slice(&lsn.to_be_bytes());
        }
        body[25..33].copy_from_slice(&crate::document::now_postgres_micros().to_be_bytes());
        body[33] = u8::from(reply);
        self.wire.queue_copy_data(&body);
        self.sent = lsn;
        self.sent_at = tokio::time::Instant::now();
    }

    fn error(&self, e: WireError) -> Error {
        wire_error(&self.target, "", e)
    }
}

/// What a CopyData message of the stream carries, and whether the server asks for a reply now.
/// XLogData (`w`) carries a pgoutput message: Begin, Commit and Message become their events, any
/// other is handed on as [`Event::Data`], a slice of `body` without its header. A primary keepalive
/// (`k`) is the server's position.
pub fn copy_data(mut body: bytes::Bytes) -> std::result::Result<(Event, bool), WireError> {
    match body.first() {
        Some(b'w') if body.len() >= XLOG_DATA_HEADER => {
            // Advancing a shared slice moves its start; no count is touched.
            body.advance(XLOG_DATA_HEADER);
            let event = match body.first() {
                Some(b'B' | b'C' | b'M') => boundary(&body)?,
                _ => Event::Data(body),
            };
            Ok((event, false))
        }
        Some(b'k') if body.len() >= KEEPALIVE_LEN => {
            let mut fields = &body[1..];
            let wal_end = Lsn(fields.get_u64());
            let _server_time = fields.get_i64();
            let reply = fields.get_u8() != 0;
            Ok((Event::KeepAlive { wal_end }, reply))
        }
        _ => Err(WireError::Protocol(format!(
            "a replication message of type {:?} and {} bytes",
            body.first().map(|&b| b as char),
            body.len()
        ))),
    }
}

/// A Begin, Commit or Message as the capture sees it.
fn boundary(data: &[u8]) -> std::result::Result<Event, WireError> {
    let message = pgoutput::decode(data, pgoutput::Context::default())
        .map_err(|e| WireError::Protocol(format!("decoding pgoutput: {e}")))?;
    Ok(match message {
        pgoutput::Message::Begin {
            final_lsn,
            commit_time,
            xid,
        } => Event::Begin {
            final_lsn,
            commit_time_micros: commit_time,
            xid,
        },
        pgoutput::Message::Commit {
            commit_lsn,
            end_lsn,
            commit_time,
            ..
        } => Event::Commit {
            commit_lsn,
            end_lsn,
            commit_time_micros: commit_time,
        },
        pgoutput::Message::Message { lsn, prefix, .. } => Event::Message { lsn, prefix },
        other => {
            return Err(WireError::Protocol(format!(
                "pgoutput: {other:?} taken for a boundary"
            )))
        }
    })
}

/// A replication session that created a slot with an exported snapshot. The snapshot stays valid
/// until the session ends, so keep it open until every table has been read in it. Dropping it closes
/// the connection, and the server ends the session and releases the snapshot: an interrupted backfill
/// must not leave the session (and its open transaction) behind, or the next CREATE_REPLICATION_SLOT
/// would wait for that transaction forever.
pub struct SnapshotSession {
    _wire: Wire,
    /// Where streaming from the new slot starts: the snapshot sees exactly the transactions before it.
    pub consistent_point: Lsn,
    /// The snapshot's name, for `SET TRANSACTION SNAPSHOT`.
    pub snapshot: String,
}

impl SnapshotSession {
    /// Creates `slot` (pgoutput) and exports its snapshot. A `temporary` slot exists only as long as
    /// this session (a backfill added to a running capture needs its snapshot, not its stream).
    pub async fn create(
        spec: &ConnectionSpec,
        slot: &str,
        temporary: bool,
    ) -> Result<SnapshotSession> {
        let target = spec.target();
        let mut wire = open(spec, slot).await?;
        let rows = wire
            .simple_query(&format!(
                "CREATE_REPLICATION_SLOT {}{} LOGICAL pgoutput (SNAPSHOT 'export')",
                sql::ident(slot),
                if temporary { " TEMPORARY" } else { "" }
            ))
            .await
            .map_err(|e| wire_error(&target, "", e))?;
        let field = |i: usize| -> Result<String> {
            rows.first()
                .and_then(|row| row.get(i).cloned().flatten())
                .ok_or_else(|| Error::internal("CREATE_REPLICATION_SLOT returned no row"))
        };
        let consistent_point: Lsn = field(1)?.parse()?;
        let snapshot = field(2)?;
        Ok(SnapshotSession {
            _wire: wire,
            consistent_point,
            snapshot,
        })
    }

    /// Ends the session; the snapshot is released, the slot stays.
    pub async fn close(self) {
        drop(self);
    }
}

/// Classifies a wire error by its variant and, for server errors, by SQLSTATE.
fn wire_error(target: &str, slot: &str, e: WireError) -> Error {
    let text = e.to_string();
    // Neon's proxy refuses a replication connection for IP Allow as it refuses any other.
    if text.contains(crate::error::NEON_IP_ALLOW_REFUSAL) {
        return Error::neon_ip_allow(&format!("{target}: replication"), &text);
    }
    let sqlstate = match &e {
        WireError::Server(s) => Some(s.code.as_str()),
        _ => None,
    };
    let kind = match (&e, sqlstate) {
        (WireError::Io(_), _) => ErrorKind::Connection,
        (WireError::Auth(_), _) => ErrorKind::Authentication,
        (WireError::Tls(_), _) => ErrorKind::Tls,
        (_, Some("28P01" | "28000")) => ErrorKind::Authentication,
        (_, Some("42501")) => ErrorKind::Permission,
        (_, Some("42704" | "3D000")) => ErrorKind::NotFound,
        (_, Some(code)) if code.starts_with("08") || code.starts_with("57") => {
            ErrorKind::Connection
        }
        _ => ErrorKind::Postgres,
    };
    let mut message = format!("{target}: replication: {text}");
    if kind == ErrorKind::NotFound && !slot.is_empty() {
        message.push_str(&format!(
            "; create the slot with `tidepool capture … --create-slot` or SELECT pg_create_logical_replication_slot({}, 'pgoutput')",
            sql::literal(slot)
        ));
    }
    // 55006 object_in_use: "replication slot … is active for PID …".
    if sqlstate == Some("55006") {
        message.push_str(
            "; another client is streaming from this slot (a slot serves one consumer at a time)",
        );
    }
    Error::new(kind, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A CopyData body of XLogData around a pgoutput message.
    fn xlog_data(message: &[u8]) -> bytes::Bytes {
        let mut body = vec![b'w'];
        body.extend_from_slice(&[0; 24]);
        body.extend_from_slice(message);
        body.into()
    }

    #[test]
    fn bulk_reads_start_past_a_mebibyte_of_one_transaction_and_end_at_its_commit() {
        let begin = || Event::Begin {
            final_lsn: Lsn(1),
            commit_time_micros: 0,
            xid: 1,
        };
        let commit = || Event::Commit {
            commit_lsn: Lsn(1),
            end_lsn: Lsn(2),
            commit_time_micros: 0,
        };
        let data = |n: usize| Event::Data(bytes::Bytes::from(vec![b'I'; n]));
        let mut bulk = Bulk::default();
        assert_eq!(bulk.after(&begin()), None);
        assert_eq!(bulk.after(&data(BULK_AFTER - 1)), None);
        assert_eq!(bulk.after(&data(1)), Some(true));
        assert_eq!(bulk.after(&data(BULK_AFTER)), None, "already in bulk");
        assert_eq!(bulk.after(&commit()), Some(false));
        // The next transaction counts from zero: its first bytes are read one by one again.
        assert_eq!(bulk.after(&begin()), None);
        assert_eq!(bulk.after(&data(BULK_AFTER / 2)), None);
        assert_eq!(bulk.after(&commit()), Some(false));
    }

    #[test]
    fn copy_data_becomes_the_capture_s_events() {
        let begin = pgoutput::encode(
            &pgoutput::Message::Begin {
                final_lsn: Lsn(0x1_0000_0010),
                commit_time: 42,
                xid: 7,
            },
            pgoutput::Context::default(),
        );
        match copy_data(xlog_data(&begin)).unwrap() {
            (
                Event::Begin {
                    final_lsn,
                    commit_time_micros: 42,
                    xid: 7,
                },
                false,
            ) => assert_eq!(final_lsn, Lsn(0x1_0000_0010)),
            other => panic!("{other:?}"),
        }
        // Any other message is handed on as it came, without the XLogData header.
        match copy_data(xlog_data(b"I\0\0\0\x01N")).unwrap() {
            (Event::Data(data), false) => assert_eq!(&data[..], b"I\0\0\0\x01N"),
            other => panic!("{other:?}"),
        }
        let mut keepalive = vec![b'k'];
        keepalive.extend_from_slice(&0x2_0000_0001u64.to_be_bytes());
        keepalive.extend_from_slice(&0i64.to_be_bytes());
        for (flag, asks) in [(0u8, false), (1, true), (9, true)] {
            let mut body = keepalive.clone();
            body.push(flag);
            match copy_data(body.into()).unwrap() {
                (Event::KeepAlive { wal_end }, reply) => {
                    assert_eq!((wal_end, reply), (Lsn(0x2_0000_0001), asks))
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn short_or_unknown_copy_data_is_a_protocol_error() {
        let short_begin = xlog_data(b"B\0\0");
        let short_keepalive = bytes::Bytes::from_static(b"k\0\0\0\0\0\0\0\x01");
        for body in [
            bytes::Bytes::new(),
            bytes::Bytes::from_static(b"w\0\0"),
            short_keepalive,
            short_begin,
            bytes::Bytes::from_static(b"x"),
        ] {
            assert!(
                matches!(copy_data(body.clone()), Err(WireError::Protocol(_))),
                "{body:?}"
            );
        }
    }

    #[test]
    fn a_replication_connection_refused_by_neons_ip_allow_says_so_and_what_to_change() {
        let refusal = "This IP address 203.0.113.7 is not allowed to connect to this endpoint. \
                       Please add it to the allowed list in the Neon console.";
        let server = ServerError {
            severity: "ERROR".into(),
            code: "08004".into(),
            message: refusal.into(),
            ..ServerError::default()
        };
        for e in [WireError::Server(server), WireError::Auth(refusal.into())] {
            let err = wire_error("ep-x.neon.tech:5432", "tidepool", e)
                .in_neon_project(Some("calm-sun-123"));
            assert_eq!(err.kind(), ErrorKind::Permission, "{err}");
            assert!(err.is_neon_ip_allow_refusal(), "{err}");
            assert!(
                err.message()
                    .contains("Neon's IP Allow of project calm-sun-123 refuses this connection"),
                "{err}"
            );
            assert!(err.message().contains("203.0.113.7"), "{err}");
        }
        // Any other server refusal keeps its own kind.
        let other = wire_error(
            "h:5432",
            "",
            WireError::Server(ServerError {
                severity: "ERROR".into(),
                code: "42501".into(),
                message: "permission denied".into(),
                ..ServerError::default()
            }),
        );
        assert!(!other.is_neon_ip_allow_refusal(), "{other}");
        assert_eq!(other.kind(), ErrorKind::Permission);
    }
}
