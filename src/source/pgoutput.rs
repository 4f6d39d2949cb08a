//! The pgoutput logical replication protocol: bytes ↔ typed messages, for protocol versions 1 to 4.
//!
//! Message layouts follow PostgreSQL's "Logical Replication Message Formats". Some layouts depend on
//! context: inside a streamed transaction (between Stream Start and Stream Stop, version 2+) the data
//! messages carry the transaction id first, and with parallel streaming (version 4) Stream Abort carries
//! the abort LSN and time. [`Decoder`] tracks the stream state itself; [`Context`] states it explicitly.
//!
//! Invariant: decoding never panics and never reads past the input. Every length is checked, every
//! count is bounded by the bytes that remain, and every failure is a typed [`DecodeError`]. A fuzz target
//! (`fuzz/fuzz_targets/pgoutput.rs`) and property tests (encode → decode round trips; arbitrary bytes)
//! hold it to that.

use std::fmt;

/// A position in the write-ahead log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl std::str::FromStr for Lsn {
    type Err = crate::Error;

    /// Parses PostgreSQL's `X/Y` notation.
    fn from_str(s: &str) -> crate::Result<Lsn> {
        let bad = || {
            crate::Error::invalid_input(
                "LSN",
                format!("'{s}' is not of the form X/Y in hexadecimal, e.g. 0/16B3748"),
            )
        };
        let (high, low) = s.trim().split_once('/').ok_or_else(bad)?;
        let high = u32::from_str_radix(high, 16).map_err(|_| bad())?;
        let low = u32::from_str_radix(low, 16).map_err(|_| bad())?;
        Ok(Lsn((u64::from(high) << 32) | u64::from(low)))
    }
}

/// LSNs travel as PostgreSQL writes them, `X/Y`.
impl serde::Serialize for Lsn {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Lsn {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Lsn, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Decoding context that the bytes alone do not carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Context {
    /// Inside Stream Start … Stream Stop: data messages begin with the transaction id.
    pub in_stream: bool,
    /// Streaming in parallel mode (protocol version 4): Stream Abort carries the abort LSN and time.
    pub parallel_abort_info: bool,
}

/// One column of a Relation message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// Part of the replica identity (the key).
    pub key: bool,
    /// Column name.
    pub name: String,
    /// Type OID.
    pub type_oid: u32,
    /// Type modifier (`atttypmod`).
    pub type_modifier: i32,
}

/// A value in a tuple.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// SQL NULL.
    Null,
    /// An unchanged TOASTed value, not sent: it is *not* NULL.
    UnchangedToast,
    /// The type's text output: a slice of the message when it was decoded with
    /// [`Decoder::decode_shared`], so a large value is not copied.
    Text(bytes::Bytes),
    /// The type's binary send output (`binary 'true'`).
    Binary(bytes::Bytes),
}

/// Which old row an Update or Delete carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OldKind {
    /// Only the replica identity's key columns ('K').
    Key,
    /// The whole old row, under REPLICA IDENTITY FULL ('O').
    Full,
}

/// A pgoutput message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Begin of a transaction (sent at its commit, with protocol version 1).
    Begin {
        final_lsn: Lsn,
        commit_time: i64,
        xid: u32,
    },
    /// A `pg_logical_emit_message` message.
    Message {
        xid: Option<u32>,
        transactional: bool,
        lsn: Lsn,
        prefix: String,
        content: Vec<u8>,
    },
    /// Commit of a transaction.
    Commit {
        flags: u8,
        commit_lsn: Lsn,
        end_lsn: Lsn,
        commit_time: i64,
    },
    /// The origin of a transaction replicated from elsewhere.
    Origin { commit_lsn: Lsn, name: String },
    /// A table's description; replaces any earlier one for the same relid.
    Relation {
        xid: Option<u32>,
        relid: u32,
        namespace: String,
        name: String,
        replica_identity: u8,
        columns: Vec<Column>,
    },
    /// A non-built-in type's name.
    Type {
        xid: Option<u32>,
        oid: u32,
        namespace: String,
        name: String,
    },
    /// A new row.
    Insert {
        xid: Option<u32>,
        relid: u32,
        new: Vec<Value>,
    },
    /// A changed row, with the old key or row when the WAL carries it.
    Update {
        xid: Option<u32>,
        relid: u32,
        old: Option<(OldKind, Vec<Value>)>,
        new: Vec<Value>,
    },
    /// A removed row: its key, or the whole old row under REPLICA IDENTITY FULL.
    Delete {
        xid: Option<u32>,
        relid: u32,
        old_kind: OldKind,
        old: Vec<Value>,
    },
    /// TRUNCATE of one or more tables.
    Truncate {
        xid: Option<u32>,
        options: u8,
        relids: Vec<u32>,
    },
    /// Start of a streamed chunk of an in-progress transaction (version 2+).
    StreamStart { xid: u32, first_segment: bool },
    /// End of a streamed chunk.
    StreamStop,
    /// Commit of a streamed transaction.
    StreamCommit {
        xid: u32,
        flags: u8,
        commit_lsn: Lsn,
        end_lsn: Lsn,
        commit_time: i64,
    },
    /// Abort of a streamed (sub)transaction; the LSN and time only with parallel streaming.
    StreamAbort {
        xid: u32,
        subxid: u32,
        abort: Option<(Lsn, i64)>,
    },
    /// Begin of a prepared transaction (version 3+).
    BeginPrepare {
        prepare_lsn: Lsn,
        end_lsn: Lsn,
        prepare_time: i64,
        xid: u32,
        gid: String,
    },
    /// PREPARE TRANSACTION.
    Prepare {
        flags: u8,
        prepare_lsn: Lsn,
        end_lsn: Lsn,
        prepare_time: i64,
        xid: u32,
        gid: String,
    },
    /// COMMIT PREPARED.
    CommitPrepared {
        flags: u8,
        commit_lsn: Lsn,
        end_lsn: Lsn,
        commit_time: i64,
        xid: u32,
        gid: String,
    },
    /// ROLLBACK PREPARED.
    RollbackPrepared {
        flags: u8,
        prepare_end_lsn: Lsn,
        rollback_end_lsn: Lsn,
        prepare_time: i64,
        rollback_time: i64,
        xid: u32,
        gid: String,
    },
    /// PREPARE of a streamed transaction.
    StreamPrepare {
        flags: u8,
        prepare_lsn: Lsn,
        end_lsn: Lsn,
        prepare_time: i64,
        xid: u32,
        gid: String,
    },
}

/// Why bytes are not a valid pgoutput message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The input is empty.
    #[error("empty message")]
    Empty,
    /// The first byte is no known message type.
    #[error("unknown message type {0:#04x}")]
    UnknownTag(u8),
    /// The message ended early.
    #[error("message {tag:?} ended at byte {at}, {needed} more bytes needed")]
    Truncated { tag: char, at: usize, needed: usize },
    /// A string has no terminating NUL byte.
    #[error("message {tag:?}: unterminated string at byte {at}")]
    UnterminatedString { tag: char, at: usize },
    /// A string is not UTF-8.
    #[error("message {tag:?}: string at byte {at} is not UTF-8")]
    InvalidUtf8 { tag: char, at: usize },
    /// A tuple column has an unknown kind byte.
    #[error("message {tag:?}: unknown tuple value kind {kind:#04x} at byte {at}")]
    UnknownValueKind { tag: char, kind: u8, at: usize },
    /// A length or count is negative or larger than the bytes that remain.
    #[error("message {tag:?}: invalid length {length} at byte {at}")]
    InvalidLength { tag: char, length: i64, at: usize },
    /// An Update's or Delete's marker byte is not 'K', 'O' or 'N'.
    #[error("message {tag:?}: unexpected marker {marker:#04x} at byte {at}")]
    UnexpectedMarker { tag: char, marker: u8, at: usize },
    /// Bytes remain after a complete message.
    #[error("message {tag:?}: {extra} unexpected bytes after the message")]
    TrailingBytes { tag: char, extra: usize },
}

/// A decoder that follows Stream Start / Stream Stop so data messages decode in the right layout.
#[derive(Debug, Clone, Default)]
pub struct Decoder {
    context: Context,
}

impl Decoder {
    /// A decoder for protocol `version` (1–4).
    pub fn new(version: u32) -> Decoder {
        Decoder {
            context: Context {
                in_stream: false,
                parallel_abort_info: version >= 4,
            },
        }
    }

    /// Decodes one message and updates the stream state.
    pub fn decode(&mut self, bytes: &[u8]) -> Result<Message, DecodeError> {
        self.track(decode(bytes, self.context)?)
    }

    /// Decodes one message whose values share `bytes` instead of copying it (a 100 MiB value is held
    /// once, not twice), and updates the stream state.
    pub fn decode_shared(&mut self, bytes: &bytes::Bytes) -> Result<Message, DecodeError> {
        self.track(decode_in(bytes, Some(bytes), self.context)?)
    }

    fn track(&mut self, message: Message) -> Result<Message, DecodeError> {
        match message {
            Message::StreamStart { .. } => self.context.in_stream = true,
            Message::StreamStop => self.context.in_stream = false,
            _ => {}
        }
        Ok(message)
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    /// The same bytes, shared, to slice values from instead of copying them.
    shared: Option<&'a bytes::Bytes>,
    at: usize,
    tag: char,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let remaining = self.bytes.len() - self.at;
        if n > remaining {
            return Err(DecodeError::Truncated {
                tag: self.tag,
                at: self.at,
                needed: n - remaining,
            });
        }
        let slice = &self.bytes[self.at..self.at + n];
        self.at += n;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }

    fn i16(&mut self) -> Result<i16, DecodeError> {
        Ok(i16::from_be_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn i32(&mut self) -> Result<i32, DecodeError> {
        Ok(i32::from_be_bytes(self.array()?))
    }

    fn i64(&mut self) -> Result<i64, DecodeError> {
        Ok(i64::from_be_bytes(self.array()?))
    }

    fn lsn(&mut self) -> Result<Lsn, DecodeError> {
        Ok(Lsn(u64::from_be_bytes(self.array()?)))
    }

    fn string(&mut self) -> Result<String, DecodeError> {
        let start = self.at;
        let rest = &self.bytes[self.at..];
        let end = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or(DecodeError::UnterminatedString {
                tag: self.tag,
                at: start,
            })?;
        let text = std::str::from_utf8(&rest[..end]).map_err(|_| DecodeError::InvalidUtf8 {
            tag: self.tag,
            at: start,
        })?;
        self.at += end + 1;
        Ok(text.to_string())
    }

    /// A count that cannot exceed what `min_bytes_each` items could fill in the rest of the input.
    fn count(&mut self, raw: i64, min_bytes_each: usize) -> Result<usize, DecodeError> {
        let remaining = self.bytes.len() - self.at;
        match usize::try_from(raw) {
            Ok(n) if n.saturating_mul(min_bytes_each) <= remaining => Ok(n),
            _ => Err(DecodeError::InvalidLength {
                tag: self.tag,
                length: raw,
                at: self.at,
            }),
        }
    }

    fn xid_if(&mut self, present: bool) -> Result<Option<u32>, DecodeError> {
        if present {
            self.u32().map(Some)
        } else {
            Ok(None)
        }
    }

    fn tuple(&mut self) -> Result<Vec<Value>, DecodeError> {
        let raw = i64::from(self.i16()?);
        let n = self.count(raw, 1)?;
        let mut values = Vec::with_capacity(n);
        for _ in 0..n {
            let at = self.at;
            let value = match self.u8()? {
                b'n' => Value::Null,
                b'u' => Value::UnchangedToast,
                kind @ (b't' | b'b') => {
                    let raw = i64::from(self.i32()?);
                    let len = self.count(raw, 1)?;
                    let start = self.at;
                    let data = self.take(len)?;
                    let data = match self.shared {
                        Some(shared) => shared.slice(start..start + len),
                        None => bytes::Bytes::copy_from_slice(data),
                    };
                    if kind == b't' {
                        Value::Text(data)
                    } else {
                        Value::Binary(data)
                    }
                }
                kind => {
                    return Err(DecodeError::UnknownValueKind {
                        tag: self.tag,
                        kind,
                        at,
                    })
                }
            };
            values.push(value);
        }
        Ok(values)
    }

    fn old_kind(&mut self) -> Result<OldKind, DecodeError> {
        let at = self.at;
        match self.u8()? {
            b'K' => Ok(OldKind::Key),
            b'O' => Ok(OldKind::Full),
            marker => Err(DecodeError::UnexpectedMarker {
                tag: self.tag,
                marker,
                at,
            }),
        }
    }

    fn expect_new(&mut self) -> Result<(), DecodeError> {
        let at = self.at;
        match self.u8()? {
            b'N' => Ok(()),
            marker => Err(DecodeError::UnexpectedMarker {
                tag: self.tag,
                marker,
                at,
            }),
        }
    }
}

/// Decodes one pgoutput message in the given context.
pub fn decode(bytes: &[u8], context: Context) -> Result<Message, DecodeError> {
    decode_in(bytes, None, context)
}

fn decode_in(
    bytes: &[u8],
    shared: Option<&bytes::Bytes>,
    context: Context,
) -> Result<Message, DecodeError> {
    let (&tag_byte, _) = bytes.split_first().ok_or(DecodeError::Empty)?;
    let mut r = Reader {
        bytes,
        shared,
        at: 1,
        tag: tag_byte as char,
    };
    let streamed = context.in_stream;
    let message = match tag_byte {
        b'B' => Message::Begin {
            final_lsn: r.lsn()?,
            commit_time: r.i64()?,
            xid: r.u32()?,
        },
        b'M' => {
            let xid = r.xid_if(streamed)?;
            let transactional = r.u8()? & 1 == 1;
            let lsn = r.lsn()?;
            let prefix = r.string()?;
            let raw = i64::from(r.i32()?);
            let len = r.count(raw, 1)?;
            Message::Message {
                xid,
                transactional,
                lsn,
                prefix,
                content: r.take(len)?.to_vec(),
            }
        }
        b'C' => Message::Commit {
            flags: r.u8()?,
            commit_lsn: r.lsn()?,
            end_lsn: r.lsn()?,
            commit_time: r.i64()?,
        },
        b'O' => Message::Origin {
            commit_lsn: r.lsn()?,
            name: r.string()?,
        },
        b'R' => {
            let xid = r.xid_if(streamed)?;
            let relid = r.u32()?;
            let namespace = r.string()?;
            let name = r.string()?;
            let replica_identity = r.u8()?;
            let raw = i64::from(r.i16()?);
            // Each column takes at least flags (1) + name NUL (1) + type (4) + modifier (4) bytes.
            let n = r.count(raw, 10)?;
            let mut columns = Vec::with_capacity(n);
            for _ in 0..n {
                columns.push(Column {
                    key: r.u8()? & 1 == 1,
                    name: r.string()?,
                    type_oid: r.u32()?,
                    type_modifier: r.i32()?,
                });
            }
            Message::Relation {
                xid,
                relid,
                namespace,
                name,
                replica_identity,
                columns,
            }
        }
        b'Y' => Message::Type {
            xid: r.xid_if(streamed)?,
            oid: r.u32()?,
            namespace: r.string()?,
            name: r.string()?,
        },
        b'I' => {
            let xid = r.xid_if(streamed)?;
            let relid = r.u32()?;
            r.expect_new()?;
            Message::Insert {
                xid,
                relid,
                new: r.tuple()?,
            }
        }
        b'U' => {
            let xid = r.xid_if(streamed)?;
            let relid = r.u32()?;
            let at = r.at;
            let old = match r.u8()? {
                b'N' => None,
                marker @ (b'K' | b'O') => {
                    let kind = if marker == b'K' {
                        OldKind::Key
                    } else {
                        OldKind::Full
                    };
                    let old = r.tuple()?;
                    r.expect_new()?;
                    Some((kind, old))
                }
                marker => {
                    return Err(DecodeError::UnexpectedMarker {
                        tag: 'U',
                        marker,
                        at,
                    })
                }
            };
            Message::Update {
                xid,
                relid,
                old,
                new: r.tuple()?,
            }
        }
        b'D' => {
            let xid = r.xid_if(streamed)?;
            let relid = r.u32()?;
            let old_kind = r.old_kind()?;
            Message::Delete {
                xid,
                relid,
                old_kind,
                old: r.tuple()?,
            }
        }
        b'T' => {
            let xid = r.xid_if(streamed)?;
            let raw = i64::from(r.i32()?);
            let options = r.u8()?;
            let n = r.count(raw, 4)?;
            let mut relids = Vec::with_capacity(n);
            for _ in 0..n {
                relids.push(r.u32()?);
            }
            Message::Truncate {
                xid,
                options,
                relids,
            }
        }
        b'S' => Message::StreamStart {
            xid: r.u32()?,
            first_segment: r.u8()? == 1,
        },
        b'E' => Message::StreamStop,
        b'c' => Message::StreamCommit {
            xid: r.u32()?,
            flags: r.u8()?,
            commit_lsn: r.lsn()?,
            end_lsn: r.lsn()?,
            commit_time: r.i64()?,
        },
        b'A' => {
            let xid = r.u32()?;
            let subxid = r.u32()?;
            let abort = if context.parallel_abort_info {
                Some((r.lsn()?, r.i64()?))
            } else {
                None
            };
            Message::StreamAbort { xid, subxid, abort }
        }
        b'b' => Message::BeginPrepare {
            prepare_lsn: r.lsn()?,
            end_lsn: r.lsn()?,
            prepare_time: r.i64()?,
            xid: r.u32()?,
            gid: r.string()?,
        },
        b'P' => Message::Prepare {
            flags: r.u8()?,
            prepare_lsn: r.lsn()?,
            end_lsn: r.lsn()?,
            prepare_time: r.i64()?,
            xid: r.u32()?,
            gid: r.string()?,
        },
        b'K' => Message::CommitPrepared {
            flags: r.u8()?,
            commit_lsn: r.lsn()?,
            end_lsn: r.lsn()?,
            commit_time: r.i64()?,
            xid: r.u32()?,
            gid: r.string()?,
        },
        b'r' => Message::RollbackPrepared {
            flags: r.u8()?,
            prepare_end_lsn: r.lsn()?,
            rollback_end_lsn: r.lsn()?,
            prepare_time: r.i64()?,
            rollback_time: r.i64()?,
            xid: r.u32()?,
            gid: r.string()?,
        },
        b'p' => Message::StreamPrepare {
            flags: r.u8()?,
            prepare_lsn: r.lsn()?,
            end_lsn: r.lsn()?,
            prepare_time: r.i64()?,
            xid: r.u32()?,
            gid: r.string()?,
        },
        other => return Err(DecodeError::UnknownTag(other)),
    };
    let extra = bytes.len() - r.at;
    if extra > 0 {
        return Err(DecodeError::TrailingBytes { tag: r.tag, extra });
    }
    Ok(message)
}

/// Encodes a message as the server would send it in `context`: the inverse of [`decode`], used by the
/// property tests, the fuzz corpus and test servers.
pub fn encode(message: &Message, context: Context) -> Vec<u8> {
    let mut out = Vec::new();
    let xid = |out: &mut Vec<u8>, xid: &Option<u32>| {
        if context.in_stream {
            out.extend_from_slice(&xid.unwrap_or(0).to_be_bytes());
        }
    };
    let string = |out: &mut Vec<u8>, s: &str| {
        out.extend_from_slice(s.as_bytes());
        out.push(0);
    };
    let tuple = |out: &mut Vec<u8>, values: &[Value]| {
        out.extend_from_slice(&(values.len() as i16).to_be_bytes());
        for value in values {
            match value {
                Value::Null => out.push(b'n'),
                Value::UnchangedToast => out.push(b'u'),
                Value::Text(data) | Value::Binary(data) => {
                    out.push(if matches!(value, Value::Text(_)) {
                        b't'
                    } else {
                        b'b'
                    });
                    out.extend_from_slice(&(data.len() as i32).to_be_bytes());
                    out.extend_from_slice(data);
                }
            }
        }
    };
    let lsn = |out: &mut Vec<u8>, lsn: &Lsn| out.extend_from_slice(&lsn.0.to_be_bytes());
    match message {
        Message::Begin {
            final_lsn,
            commit_time,
            xid,
        } => {
            out.push(b'B');
            lsn(&mut out, final_lsn);
            out.extend_from_slice(&commit_time.to_be_bytes());
            out.extend_from_slice(&xid.to_be_bytes());
        }
        Message::Message {
            xid: x,
            transactional,
            lsn: l,
            prefix,
            content,
        } => {
            out.push(b'M');
            xid(&mut out, x);
            out.push(u8::from(*transactional));
            lsn(&mut out, l);
            string(&mut out, prefix);
            out.extend_from_slice(&(content.len() as i32).to_be_bytes());
            out.extend_from_slice(content);
        }
        Message::Commit {
            flags,
            commit_lsn,
            end_lsn,
            commit_time,
        } => {
            out.push(b'C');
            out.push(*flags);
            lsn(&mut out, commit_lsn);
            lsn(&mut out, end_lsn);
            out.extend_from_slice(&commit_time.to_be_bytes());
        }
        Message::Origin { commit_lsn, name } => {
            out.push(b'O');
            lsn(&mut out, commit_lsn);
            string(&mut out, name);
        }
        Message::Relation {
            xid: x,
            relid,
            namespace,
            name,
            replica_identity,
            columns,
        } => {
            out.push(b'R');
            xid(&mut out, x);
            out.extend_from_slice(&relid.to_be_bytes());
            string(&mut out, namespace);
            string(&mut out, name);
            out.push(*replica_identity);
            out.extend_from_slice(&(columns.len() as i16).to_be_bytes());
            for column in columns {
                out.push(u8::from(column.key));
                string(&mut out, &column.name);
                out.extend_from_slice(&column.type_oid.to_be_bytes());
                out.extend_from_slice(&column.type_modifier.to_be_bytes());
            }
        }
        Message::Type {
            xid: x,
            oid,
            namespace,
            name,
        } => {
            out.push(b'Y');
            xid(&mut out, x);
            out.extend_from_slice(&oid.to_be_bytes());
            string(&mut out, namespace);
            string(&mut out, name);
        }
        Message::Insert { xid: x, relid, new } => {
            out.push(b'I');
            xid(&mut out, x);
            out.extend_from_slice(&relid.to_be_bytes());
            out.push(b'N');
            tuple(&mut out, new);
        }
        Message::Update {
            xid: x,
            relid,
            old,
            new,
        } => {
            out.push(b'U');
            xid(&mut out, x);
            out.extend_from_slice(&relid.to_be_bytes());
            if let Some((kind, old)) = old {
                out.push(if *kind == OldKind::Key { b'K' } else { b'O' });
                tuple(&mut out, old);
            }
            out.push(b'N');
            tuple(&mut out, new);
        }
        Message::Delete {
            xid: x,
            relid,
            old_kind,
            old,
        } => {
            out.push(b'D');
            xid(&mut out, x);
            out.extend_from_slice(&relid.to_be_bytes());
            out.push(if *old_kind == OldKind::Key {
                b'K'
            } else {
                b'O'
            });
            tuple(&mut out, old);
        }
        Message::Truncate {
            xid: x,
            options,
            relids,
        } => {
            out.push(b'T');
            xid(&mut out, x);
            out.extend_from_slice(&(relids.len() as i32).to_be_bytes());
            out.push(*options);
            for relid in relids {
                out.extend_from_slice(&relid.to_be_bytes());
            }
        }
        Message::StreamStart { xid, first_segment } => {
            out.push(b'S');
            out.extend_from_slice(&xid.to_be_bytes());
            out.push(u8::from(*first_segment));
        }
        Message::StreamStop => out.push(b'E'),
        Message::StreamCommit {
            xid,
            flags,
            commit_lsn,
            end_lsn,
            commit_time,
        } => {
            out.push(b'c');
            out.extend_from_slice(&xid.to_be_bytes());
            out.push(*flags);
            lsn(&mut out, commit_lsn);
            lsn(&mut out, end_lsn);
            out.extend_from_slice(&commit_time.to_be_bytes());
        }
        Message::StreamAbort { xid, subxid, abort } => {
            out.push(b'A');
            out.extend_from_slice(&xid.to_be_bytes());
            out.extend_from_slice(&subxid.to_be_bytes());
            if context.parallel_abort_info {
                let (l, t) = abort.unwrap_or((Lsn(0), 0));
                lsn(&mut out, &l);
                out.extend_from_slice(&t.to_be_bytes());
            }
        }
        Message::BeginPrepare {
            prepare_lsn,
            end_lsn,
            prepare_time,
            xid,
            gid,
        } => {
            out.push(b'b');
            lsn(&mut out, prepare_lsn);
            lsn(&mut out, end_lsn);
            out.extend_from_slice(&prepare_time.to_be_bytes());
            out.extend_from_slice(&xid.to_be_bytes());
            string(&mut out, gid);
        }
        Message::Prepare {
            flags,
            prepare_lsn,
            end_lsn,
            prepare_time,
            xid,
            gid,
        }
        | Message::StreamPrepare {
            flags,
            prepare_lsn,
            end_lsn,
            prepare_time,
            xid,
            gid,
        } => {
            out.push(if matches!(message, Message::Prepare { .. }) {
                b'P'
            } else {
                b'p'
            });
            out.push(*flags);
            lsn(&mut out, prepare_lsn);
            lsn(&mut out, end_lsn);
            out.extend_from_slice(&prepare_time.to_be_bytes());
            out.extend_from_slice(&xid.to_be_bytes());
            string(&mut out, gid);
        }
        Message::CommitPrepared {
            flags,
            commit_lsn,
            end_lsn,
            commit_time,
            xid,
            gid,
        } => {
            out.push(b'K');
            out.push(*flags);
            lsn(&mut out, commit_lsn);
            lsn(&mut out, end_lsn);
            out.extend_from_slice(&commit_time.to_be_bytes());
            out.extend_from_slice(&xid.to_be_bytes());
            string(&mut out, gid);
        }
        Message::RollbackPrepared {
            flags,
            prepare_end_lsn,
            rollback_end_lsn,
            prepare_time,
            rollback_time,
            xid,
            gid,
        } => {
            out.push(b'r');
            out.push(*flags);
            lsn(&mut out, prepare_end_lsn);
            lsn(&mut out, rollback_end_lsn);
            out.extend_from_slice(&prepare_time.to_be_bytes());
            out.extend_from_slice(&rollback_time.to_be_bytes());
            out.extend_from_slice(&xid.to_be_bytes());
            string(&mut out, gid);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn text() -> impl Strategy<Value = String> {
        "[^\u{0}]{0,12}"
    }

    fn value() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            Just(Value::UnchangedToast),
            proptest::collection::vec(any::<u8>(), 0..16).prop_map(|v| Value::Text(v.into())),
            proptest::collection::vec(any::<u8>(), 0..16).prop_map(|v| Value::Binary(v.into())),
        ]
    }

    fn tuple() -> impl Strategy<Value = Vec<Value>> {
        proptest::collection::vec(value(), 0..6)
    }

    fn lsn() -> impl Strategy<Value = Lsn> {
        any::<u64>().prop_map(Lsn)
    }

    fn old_kind() -> impl Strategy<Value = OldKind> {
        prop_oneof![Just(OldKind::Key), Just(OldKind::Full)]
    }

    /// Any message, with an xid exactly where the context puts one.
    fn message(context: Context) -> impl Strategy<Value = Message> {
        let xid = move || {
            if context.in_stream {
                any::<u32>().prop_map(Some).boxed()
            } else {
                Just(None).boxed()
            }
        };
        let abort = move || {
            if context.parallel_abort_info {
                (lsn(), any::<i64>()).prop_map(Some).boxed()
            } else {
                Just(None).boxed()
            }
        };
        let column = (any::<bool>(), text(), any::<u32>(), any::<i32>()).prop_map(
            |(key, name, type_oid, type_modifier)| Column {
                key,
                name,
                type_oid,
                type_modifier,
            },
        );
        prop_oneof![
            (lsn(), any::<i64>(), any::<u32>()).prop_map(|(final_lsn, commit_time, xid)| {
                Message::Begin {
                    final_lsn,
                    commit_time,
                    xid,
                }
            }),
            (
                xid(),
                any::<bool>(),
                lsn(),
                text(),
                proptest::collection::vec(any::<u8>(), 0..16)
            )
                .prop_map(|(xid, transactional, lsn, prefix, content)| {
                    Message::Message {
                        xid,
                        transactional,
                        lsn,
                        prefix,
                        content,
                    }
                }),
            (any::<u8>(), lsn(), lsn(), any::<i64>()).prop_map(
                |(flags, commit_lsn, end_lsn, commit_time)| Message::Commit {
                    flags,
                    commit_lsn,
                    end_lsn,
                    commit_time
                }
            ),
            (lsn(), text()).prop_map(|(commit_lsn, name)| Message::Origin { commit_lsn, name }),
            (
                xid(),
                any::<u32>(),
                text(),
                text(),
                any::<u8>(),
                proptest::collection::vec(column, 0..5)
            )
                .prop_map(
                    |(xid, relid, namespace, name, replica_identity, columns)| Message::Relation {
                        xid,
                        relid,
                        namespace,
                        name,
                        replica_identity,
                        columns
                    }
                ),
            (xid(), any::<u32>(), text(), text()).prop_map(|(xid, oid, namespace, name)| {
                Message::Type {
                    xid,
                    oid,
                    namespace,
                    name,
                }
            }),
            (xid(), any::<u32>(), tuple()).prop_map(|(xid, relid, new)| Message::Insert {
                xid,
                relid,
                new
            }),
            (
                xid(),
                any::<u32>(),
                proptest::option::of((old_kind(), tuple())),
                tuple()
            )
                .prop_map(|(xid, relid, old, new)| Message::Update {
                    xid,
                    relid,
                    old,
                    new
                }),
            (xid(), any::<u32>(), old_kind(), tuple()).prop_map(|(xid, relid, old_kind, old)| {
                Message::Delete {
                    xid,
                    relid,
                    old_kind,
                    old,
                }
            }),
            (
                xid(),
                any::<u8>(),
                proptest::collection::vec(any::<u32>(), 0..5)
            )
                .prop_map(|(xid, options, relids)| Message::Truncate {
                    xid,
                    options,
                    relids
                }),
            (any::<u32>(), any::<bool>())
                .prop_map(|(xid, first_segment)| Message::StreamStart { xid, first_segment }),
            Just(Message::StreamStop),
            (any::<u32>(), any::<u8>(), lsn(), lsn(), any::<i64>()).prop_map(
                |(xid, flags, commit_lsn, end_lsn, commit_time)| {
                    Message::StreamCommit {
                        xid,
                        flags,
                        commit_lsn,
                        end_lsn,
                        commit_time,
                    }
                }
            ),
            (any::<u32>(), any::<u32>(), abort())
                .prop_map(|(xid, subxid, abort)| Message::StreamAbort { xid, subxid, abort }),
            (lsn(), lsn(), any::<i64>(), any::<u32>(), text()).prop_map(
                |(prepare_lsn, end_lsn, prepare_time, xid, gid)| {
                    Message::BeginPrepare {
                        prepare_lsn,
                        end_lsn,
                        prepare_time,
                        xid,
                        gid,
                    }
                }
            ),
            (
                any::<u8>(),
                lsn(),
                lsn(),
                any::<i64>(),
                any::<u32>(),
                text()
            )
                .prop_map(|(flags, prepare_lsn, end_lsn, prepare_time, xid, gid)| {
                    Message::Prepare {
                        flags,
                        prepare_lsn,
                        end_lsn,
                        prepare_time,
                        xid,
                        gid,
                    }
                }),
            (
                any::<u8>(),
                lsn(),
                lsn(),
                any::<i64>(),
                any::<u32>(),
                text()
            )
                .prop_map(|(flags, commit_lsn, end_lsn, commit_time, xid, gid)| {
                    Message::CommitPrepared {
                        flags,
                        commit_lsn,
                        end_lsn,
                        commit_time,
                        xid,
                        gid,
                    }
                }),
            (
                any::<u8>(),
                lsn(),
                lsn(),
                any::<i64>(),
                any::<i64>(),
                any::<u32>(),
                text()
            )
                .prop_map(
                    |(
                        flags,
                        prepare_end_lsn,
                        rollback_end_lsn,
                        prepare_time,
                        rollback_time,
                        xid,
                        gid,
                    )| Message::RollbackPrepared {
                        flags,
                        prepare_end_lsn,
                        rollback_end_lsn,
                        prepare_time,
                        rollback_time,
                        xid,
                        gid
                    }
                ),
            (
                any::<u8>(),
                lsn(),
                lsn(),
                any::<i64>(),
                any::<u32>(),
                text()
            )
                .prop_map(|(flags, prepare_lsn, end_lsn, prepare_time, xid, gid)| {
                    Message::StreamPrepare {
                        flags,
                        prepare_lsn,
                        end_lsn,
                        prepare_time,
                        xid,
                        gid,
                    }
                }),
        ]
    }

    fn contexts() -> impl Strategy<Value = Context> {
        (any::<bool>(), any::<bool>()).prop_map(|(in_stream, parallel_abort_info)| Context {
            in_stream,
            parallel_abort_info,
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn every_message_round_trips((context, message) in contexts().prop_flat_map(|c| (Just(c), message(c)))) {
            let bytes = encode(&message, context);
            prop_assert_eq!(decode(&bytes, context), Ok(message));
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64), context in contexts()) {
            let _ = decode(&bytes, context);
            let shared = bytes::Bytes::from(bytes.clone());
            prop_assert_eq!(decode_in(&shared, Some(&shared), context), decode(&bytes, context));
        }

        #[test]
        fn slicing_values_decodes_what_copying_them_does(
            (context, message) in contexts().prop_flat_map(|c| (Just(c), message(c)))
        ) {
            let bytes = bytes::Bytes::from(encode(&message, context));
            prop_assert_eq!(decode_in(&bytes, Some(&bytes), context), Ok(message));
        }

        #[test]
        fn every_truncation_of_a_valid_message_is_an_error(
            (context, message) in contexts().prop_flat_map(|c| (Just(c), message(c))),
            cut in any::<prop::sample::Index>()
        ) {
            let bytes = encode(&message, context);
            let len = cut.index(bytes.len());
            if len < bytes.len() {
                prop_assert!(decode(&bytes[..len], context).is_err());
            }
        }
    }

    #[test]
    fn a_huge_column_count_is_rejected_before_allocating() {
        let mut bytes = vec![b'I', 0, 0, 0, 1, b'N'];
        bytes.extend_from_slice(&i16::MAX.to_be_bytes());
        assert!(matches!(
            decode(&bytes, Context::default()),
            Err(DecodeError::InvalidLength { tag: 'I', .. })
        ));
        let mut bytes = vec![b'I', 0, 0, 0, 1, b'N', 0, 1, b't'];
        bytes.extend_from_slice(&(-5i32).to_be_bytes());
        assert!(matches!(
            decode(&bytes, Context::default()),
            Err(DecodeError::InvalidLength { length: -5, .. })
        ));
    }

    #[test]
    fn the_decoder_follows_stream_boundaries() {
        let mut decoder = Decoder::new(2);
        let streamed = Context {
            in_stream: true,
            parallel_abort_info: false,
        };
        let insert = Message::Insert {
            xid: Some(7),
            relid: 1,
            new: vec![Value::Text(bytes::Bytes::from_static(b"1"))],
        };
        decoder
            .decode(&encode(
                &Message::StreamStart {
                    xid: 7,
                    first_segment: true,
                },
                Context::default(),
            ))
            .unwrap();
        assert_eq!(decoder.decode(&encode(&insert, streamed)).unwrap(), insert);
        decoder.decode(b"E").unwrap();
        let plain = Message::Insert {
            xid: None,
            relid: 1,
            new: vec![Value::Null],
        };
        assert_eq!(
            decoder.decode(&encode(&plain, Context::default())).unwrap(),
            plain
        );
    }

    #[test]
    fn lsns_print_and_parse_as_postgres_does() {
        assert_eq!(Lsn(0x016B_3748).to_string(), "0/16B3748");
        assert_eq!("16/B374D848".parse::<Lsn>().unwrap(), Lsn(0x16_B374_D848));
        assert!("16B3748".parse::<Lsn>().is_err());
    }
}
