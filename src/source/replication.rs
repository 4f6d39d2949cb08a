//! The replication connection: `replication=database`, START_REPLICATION with pgoutput, keepalives and
//! standby status updates, over TLS when the profile asks for it.
//!
//! The transport is pgwire-replication 0.5 (tokio-postgres has no streaming-replication protocol). This
//! module is the only place that knows it, so it can be replaced: the rest of the engine sees
//! [`Event`]s and calls [`Stream::confirm`].
//!
//! Invariants:
//! - The position reported to the server (write = flush = apply) is only ever what [`Stream::confirm`]
//!   was given, i.e. what the capture has durably stored; it starts at the stored checkpoint.
//! - Keepalives that ask for a reply are answered by the transport with that same confirmed position.
//! - The session pins every setting that text output depends on ([`crate::document::value::SESSION_OPTIONS`]).
//! - The password goes only to the server; the transport's config (which derives `Debug` with the
//!   password in it) is never logged.
//! - What is read ahead of the capture is bounded in bytes, not only in events: a relay task takes
//!   events from the transport (whose own buffer holds one) only while the events handed out and not
//!   yet done with weigh at most [`READ_AHEAD_BYTES`]. A 100 MiB row is then the only one in memory
//!   while it is stored, instead of the next ones being read behind it. Once full, the relay reads
//!   again only when they have fallen to half of that, so it and the transport run in bursts instead
//!   of waking each other for every event the capture is done with.

use std::time::Duration;

use pgwire_replication::{ReplicationClient, ReplicationConfig, ReplicationEvent, TlsConfig};

use crate::error::{Error, ErrorKind, Result};
use crate::source::connection::ConnectionSpec;
use crate::source::pgoutput::Lsn;
use crate::source::sql;
use crate::source::tls::SslMode;

/// What the replication stream delivers.
#[derive(Debug)]
pub enum Event {
    /// A transaction begins (its Begin message: the commit record's LSN, commit time, xid).
    Begin {
        final_lsn: Lsn,
        commit_time_micros: i64,
        xid: u32,
    },
    /// A pgoutput message other than Begin and Commit.
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

/// How much the relay reads ahead of the capture (a message counts its bytes plus [`EVENT_COST`]).
pub const READ_AHEAD_BYTES: usize = 8 * 1024 * 1024;
/// What an event counts for besides its bytes, so the number of small events read ahead is bounded too.
const EVENT_COST: usize = 64;

/// The events read ahead and not yet done with, in bytes, and a wake-up for the relay when that falls.
#[derive(Default)]
struct ReadAhead {
    bytes: std::sync::atomic::AtomicUsize,
    released: tokio::sync::Notify,
}

/// Once the read-ahead is full, the relay waits until it falls to this before reading again: it then
/// moves events in bursts of thousands instead of waking (and waking the transport) for every event
/// the capture is done with, which cost the capture's core about as much as decoding the event.
const RESUME_BYTES: usize = READ_AHEAD_BYTES / 2;

impl ReadAhead {
    fn release(&self, cost: usize) {
        if cost > 0 {
            let before = self
                .bytes
                .fetch_sub(cost, std::sync::atomic::Ordering::AcqRel);
            // Only the release that crosses the resume mark wakes the relay (a wake-up while it is
            // not waiting is kept for its next wait, so none is lost).
            if before > RESUME_BYTES && before - cost <= RESUME_BYTES {
                self.released.notify_one();
            }
        }
    }
}

/// What the relay passes on: an event, the end of the stream, or the transport's error.
type Relayed = Result<Option<Event>>;

/// An open replication stream.
pub struct Stream {
    events: tokio::sync::mpsc::UnboundedReceiver<(Relayed, usize)>,
    read_ahead: std::sync::Arc<ReadAhead>,
    /// The cost of the event handed out last, released when the next one is asked for.
    holding: usize,
    confirmed: tokio::sync::watch::Sender<Lsn>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    relay: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Stream {
    /// A stream dropped without [`Stream::stop`] (an error ended the capture) takes the relay, and
    /// with it the connection, down.
    fn drop(&mut self) {
        if let Some(relay) = &self.relay {
            relay.abort();
        }
    }
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

/// How often the transport tells the server the confirmed position. Short, because a stopping
/// capture waits for the last position to be sent ([`shutdown_confirmed`]): at 1 s, that wait was up
/// to a second of every `--stop-at-lsn` run (docs/benchmarks.md, "Capture CPU (issue 21)"), and the
/// slot's `confirmed_flush_lsn` trailed the store by as much. Ten small messages a second cost nothing.
const STATUS_INTERVAL: Duration = Duration::from_millis(100);

/// `dial` is where to connect ([`ConnectionSpec::dial`]): the host itself, or an SSH tunnel's loopback
/// port, in which case TLS is still told the host's name.
fn config(options: &StreamOptions<'_>, dial: (String, u16)) -> ReplicationConfig {
    // pgwire-replication enables both of rustls' crypto providers; choose one for the process.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let spec = options.spec;
    let tls = match spec.sslmode {
        SslMode::Disable | SslMode::Allow => TlsConfig::disabled(),
        SslMode::Prefer => TlsConfig {
            mode: pgwire_replication::SslMode::Prefer,
            ..TlsConfig::disabled()
        },
        SslMode::Require => TlsConfig::require(),
        SslMode::VerifyCa => TlsConfig::verify_ca(spec.sslrootcert.clone()),
        SslMode::VerifyFull => {
            TlsConfig::verify_full(spec.sslrootcert.clone()).with_sni_hostname(&spec.host)
        }
    };
    let tls = if spec.tunnel.is_some() && tls.mode != pgwire_replication::SslMode::Disable {
        tls.with_sni_hostname(&spec.host)
    } else {
        tls
    };
    let mut session_options = crate::document::value::SESSION_OPTIONS.to_string();
    if let Some(extra) = &spec.options {
        session_options = format!("{extra} {session_options}");
    }
    ReplicationConfig::new(
        &dial.0,
        &spec.user,
        spec.password
            .as_ref()
            .map(|p| p.expose().to_string())
            .unwrap_or_default(),
        &spec.database,
        options.slot,
        // publication_names is parsed as a list of identifiers: quote each.
        options
            .publications
            .iter()
            .map(|p| sql::ident(p))
            .collect::<Vec<_>>()
            .join(","),
    )
    .with_port(dial.1)
    .with_tls(tls)
    .with_start_lsn(pgwire_replication::Lsn(options.start.0))
    .with_ack_lsn(pgwire_replication::Lsn(options.start.0))
    .with_status_interval(STATUS_INTERVAL)
    // The relay bounds what is read ahead in bytes; the transport's own buffer only hands over.
    .with_buffer_size(1)
    .with_options(session_options)
    .with_application_name(&spec.application_name)
}

impl Stream {
    /// Connects, authenticates and starts streaming.
    pub async fn start(options: StreamOptions<'_>) -> Result<Stream> {
        let spec = options.spec;
        spec.validate()?;
        let target = spec.target();
        let dial = spec.dial().await?;
        let connect = ReplicationClient::connect(config(&options, dial));
        let client = match tokio::time::timeout(
            spec.connect_timeout.saturating_add(Duration::from_secs(2)),
            connect,
        )
        .await
        {
            Ok(Ok(client)) => client,
            Ok(Err(e)) => return Err(transport_error(&target, options.slot, e)),
            Err(_) => {
                return Err(Error::new(
                    ErrorKind::Connection,
                    format!(
                        "{target}: the replication connection did not start within {} s",
                        spec.connect_timeout.as_secs()
                    ),
                ))
            }
        };
        let read_ahead = std::sync::Arc::new(ReadAhead::default());
        let (events_tx, events) = tokio::sync::mpsc::unbounded_channel();
        let (confirmed, confirmed_rx) = tokio::sync::watch::channel(options.start);
        let (stop, stop_rx) = tokio::sync::oneshot::channel();
        let relay = tokio::spawn(relay(
            client,
            target,
            read_ahead.clone(),
            events_tx,
            confirmed_rx,
            stop_rx,
        ));
        Ok(Stream {
            events,
            read_ahead,
            holding: 0,
            confirmed,
            stop: Some(stop),
            relay: Some(relay),
        })
    }

    /// The next event, or `None` when the server ended the stream. Cancel-safe. The event handed out
    /// before is done with once this is called.
    pub async fn next(&mut self) -> Result<Option<Event>> {
        self.read_ahead.release(std::mem::take(&mut self.holding));
        match self.events.recv().await {
            Some((relayed, cost)) => {
                self.holding = cost;
                relayed
            }
            // The relay ended after passing on the end or an error.
            None => Ok(None),
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
        self.confirmed.send_replace(lsn);
    }

    /// Ends the stream cleanly, once the server has been sent the last confirmed position (see
    /// [`shutdown_confirmed`]).
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(relay) = self.relay.take() {
            let _ = relay.await;
        }
    }
}

/// Moves events from the transport to the stream while what is read ahead stays within
/// [`READ_AHEAD_BYTES`], passes confirmations on, and shuts the transport down when asked.
async fn relay(
    mut client: ReplicationClient,
    target: String,
    read_ahead: std::sync::Arc<ReadAhead>,
    events: tokio::sync::mpsc::UnboundedSender<(Relayed, usize)>,
    mut confirmed: tokio::sync::watch::Receiver<Lsn>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    use std::sync::atomic::Ordering;
    // Whether the read-ahead filled up and the relay waits for it to fall to RESUME_BYTES.
    let mut waiting = false;
    let confirm = |client: &ReplicationClient,
                   confirmed: &mut tokio::sync::watch::Receiver<Lsn>| {
        let lsn = *confirmed.borrow_and_update();
        client.update_applied_lsn(pgwire_replication::Lsn(lsn.0));
    };
    loop {
        // Checked on every turn, so a busy stream cannot hold confirmations or the stop back.
        if confirmed.has_changed().unwrap_or(false) {
            confirm(&client, &mut confirmed);
        }
        match stop.try_recv() {
            Ok(()) => {
                if confirmed.has_changed().unwrap_or(false) {
                    confirm(&client, &mut confirmed);
                }
                let last = *confirmed.borrow();
                shutdown_confirmed(&mut client, last).await;
                return;
            }
            Err(tokio::sync::oneshot::error::TryRecvError::Closed) => return,
            Err(tokio::sync::oneshot::error::TryRecvError::Empty) => {}
        }
        let read = read_ahead.bytes.load(Ordering::Acquire);
        // Full at READ_AHEAD_BYTES; after that, room again only from RESUME_BYTES down.
        let room = if waiting {
            read <= RESUME_BYTES
        } else {
            read <= READ_AHEAD_BYTES
        };
        waiting = !room;
        tokio::select! {
            biased;
            received = client.recv(), if room => {
                let relayed = received
                    .map_err(|e| transport_error(&target, "", e))
                    .map(|event| event.and_then(translate));
                let ended = !matches!(relayed, Ok(Some(_)));
                let cost = match &relayed {
                    Ok(Some(Event::Data(bytes))) => EVENT_COST + bytes.len(),
                    _ => EVENT_COST,
                };
                read_ahead.bytes.fetch_add(cost, Ordering::AcqRel);
                if events.send((relayed, cost)).is_err() || ended {
                    return;
                }
            }
            changed = confirmed.changed() => {
                if changed.is_err() {
                    return;
                }
                confirm(&client, &mut confirmed);
            }
            _ = read_ahead.released.notified(), if !room => {}
            _ = &mut stop => {
                if confirmed.has_changed().unwrap_or(false) {
                    confirm(&client, &mut confirmed);
                }
                let last = *confirmed.borrow();
                shutdown_confirmed(&mut client, last).await;
                return;
            }
        }
    }
}

/// Shuts the transport down once the server has been sent `last` (bounded by a few status
/// intervals). The transport sends positions on its status interval and its shutdown sends none, so
/// without the wait a run that stops right after storing (`--stop-at-lsn`) would leave the slot one
/// run behind and the server would keep that run's WAL until the next start.
async fn shutdown_confirmed(client: &mut ReplicationClient, last: Lsn) {
    let metrics = client.metrics();
    let deadline = tokio::time::Instant::now() + STATUS_INTERVAL * 3;
    while metrics.last_applied_lsn().as_u64() < last.0
        && tokio::time::Instant::now() < deadline
        && client.is_running()
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _ = client.shutdown().await;
}

/// The transport's event as the capture sees it; `None` for the end of the stream.
fn translate(event: ReplicationEvent) -> Option<Event> {
    Some(match event {
        ReplicationEvent::Begin {
            final_lsn,
            xid,
            commit_time_micros,
        } => Event::Begin {
            final_lsn: Lsn(final_lsn.0),
            commit_time_micros,
            xid,
        },
        ReplicationEvent::XLogData { data, .. } => Event::Data(data),
        ReplicationEvent::Commit {
            lsn,
            end_lsn,
            commit_time_micros,
        } => Event::Commit {
            commit_lsn: Lsn(lsn.0),
            end_lsn: Lsn(end_lsn.0),
            commit_time_micros,
        },
        ReplicationEvent::KeepAlive { wal_end, .. } => Event::KeepAlive {
            wal_end: Lsn(wal_end.0),
        },
        ReplicationEvent::Message { lsn, prefix, .. } => Event::Message {
            lsn: Lsn(lsn.0),
            prefix,
        },
        ReplicationEvent::StoppedAt { .. } => return None,
    })
}

/// A replication session that created a slot with an exported snapshot. The snapshot stays valid
/// until the session ends, so keep it open until every table has been read in it.
pub struct SnapshotSession {
    client: ReplicationClient,
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
        spec.validate()?;
        let target = spec.target();
        let options = StreamOptions {
            spec,
            slot,
            publications: &[String::new()],
            start: Lsn(0),
        };
        let dial = spec.dial().await?;
        let mut client = ReplicationClient::connect_gated(config(&options, dial))
            .await
            .map_err(|e| transport_error(&target, slot, e))?;
        let rows = client
            .simple_query(&format!(
                "CREATE_REPLICATION_SLOT {}{} LOGICAL pgoutput (SNAPSHOT 'export')",
                sql::ident(slot),
                if temporary { " TEMPORARY" } else { "" }
            ))
            .await
            .map_err(|e| transport_error(&target, "", e))?;
        let field = |i: usize| -> Result<String> {
            rows.first()
                .and_then(|row| row.get(i).cloned().flatten())
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .ok_or_else(|| Error::internal("CREATE_REPLICATION_SLOT returned no row"))
        };
        let consistent_point: Lsn = field(1)?.parse()?;
        let snapshot = field(2)?;
        Ok(SnapshotSession {
            client,
            consistent_point,
            snapshot,
        })
    }

    /// Ends the session; the snapshot is released, the slot stays. The session never started
    /// streaming, so there is nothing to drain: the transport's graceful shutdown would wait for a stream
    /// that never comes, so the connection is closed instead (see `Drop`).
    pub async fn close(self) {
        drop(self);
    }
}

impl Drop for SnapshotSession {
    /// An interrupted backfill must not leave the session (and its open transaction) behind: the next
    /// CREATE_REPLICATION_SLOT would wait for that transaction forever. Cancelling the transport's task
    /// closes the connection, and the server ends the session.
    fn drop(&mut self) {
        self.client.abort();
    }
}

/// Classifies a transport error by its variant and, for server errors, by SQLSTATE (the transport
/// renders server errors as "message (SQLSTATE xxxxx)").
fn transport_error(target: &str, slot: &str, e: pgwire_replication::PgWireError) -> Error {
    use pgwire_replication::PgWireError as E;
    let text = e.to_string();
    // Neon's proxy refuses a replication connection for IP Allow as it refuses any other.
    if text.contains(crate::error::NEON_IP_ALLOW_REFUSAL) {
        return Error::neon_ip_allow(&format!("{target}: replication"), &text);
    }
    let sqlstate = text
        .rsplit_once("(SQLSTATE ")
        .and_then(|(_, rest)| rest.strip_suffix(')'))
        .map(str::to_string);
    let kind = match (&e, sqlstate.as_deref()) {
        (E::Io(_), _) | (E::Task(_), _) => ErrorKind::Connection,
        // The worker ended while the relay was not waiting for it (it was passing a confirmation
        // on), so its reason is gone: treat it as a lost connection, which restarts from the
        // checkpoint and meets any lasting cause again at the start.
        (E::Internal(m), _) if m.contains("already joined") => ErrorKind::Connection,
        (E::Auth(_), _) => ErrorKind::Authentication,
        (E::Tls(_), _) => ErrorKind::Tls,
        (E::Server(_), Some("28P01" | "28000")) => ErrorKind::Authentication,
        (E::Server(_), Some("42501")) => ErrorKind::Permission,
        (E::Server(_), Some("42704" | "3D000")) => ErrorKind::NotFound,
        (E::Server(_), Some(code)) if code.starts_with("08") || code.starts_with("57") => {
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
    if sqlstate.as_deref() == Some("55006") {
        message.push_str(
            "; another client is streaming from this slot (a slot serves one consumer at a time)",
        );
    }
    Error::new(kind, message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgwire_replication::PgWireError;

    #[test]
    fn a_replication_connection_refused_by_neons_ip_allow_says_so_and_what_to_change() {
        let refusal =
            "ERROR: This IP address 203.0.113.7 is not allowed to connect to this endpoint. \
                       Please add it to the allowed list in the Neon console. (SQLSTATE 08004)";
        for e in [
            PgWireError::Server(refusal.into()),
            PgWireError::Auth(refusal.into()),
        ] {
            let err = transport_error("ep-x.neon.tech:5432", "tidepool", e)
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
        let other = transport_error(
            "h:5432",
            "",
            PgWireError::Server("ERROR: permission denied (SQLSTATE 42501)".into()),
        );
        assert!(!other.is_neon_ip_allow_refusal(), "{other}");
    }
}
