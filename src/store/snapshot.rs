//! Snapshot files: a backfill's rows, stored once, in the form PostgreSQL sent them (COPY's text
//! lines), sorted by the rows' sort keys ([`crate::store::rowkey`]) with a block index. A backfill writes
//! one file per table instead of a document and an index entry per row in SQLite; the store serves the
//! file's rows as the collection's base rows and as a range of its change log, and rebuilds each row's
//! document on read with the same code the backfill used to build it ([`Rebuild`]), so a document
//! reads the same whichever way it was stored. A field of [`crate::document::large_value::LARGE_VALUE_BYTES`] or
//! more (as COPY wrote it) in a non-key column is the exception: the backfill stores it once in the store, as streamed
//! values are, and its field in the line is its reference (`\L` and the value's hash, which COPY
//! never writes), so reading the row never holds the value unless the reader wants it whole.
//!
//! Invariants:
//! - A file is written under a `.partial` name, fsynced, renamed, and its folder fsynced before the
//!   store records it; the store records it in the transaction that moves the checkpoint, so nothing
//!   is acknowledged to PostgreSQL before the rows are durable, and a crash leaves at most an
//!   unrecorded file, which [`remove_unrecorded`] deletes.
//! - A file is never changed once written. Rows changed later live in the store and shadow the file's.
//! - Keys are unique and ascending in a file; a duplicate key fails the write.
//! - Every reference in a file's lines names a value its store holds: the values are stored in the
//!   batch that records the file (and brought in with it from a backfill's staging store).
//! - Reading never panics on a damaged file: lengths and offsets are checked, errors name the file.
//! - A file of an encrypted store ([`crate::store::encryption`]) is sealed block by block (AES-256-GCM under
//!   the file's own key, block `n` as chunk `n`) and its index as one more chunk bound to the footer,
//!   so no key or row is on disk in the clear and a block moved, swapped or damaged fails to open.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::Write;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::document::copy_text::{parse_stored_line, refs_row};
use crate::document::large_value::{Document, ValueRef};
use crate::document::source_meta::SourceTable;
use crate::document::value::Kind;
use crate::document::Op;
use crate::document::{document_of, meta, write_row, ColumnInfo, Columns, Relation, Transaction};
use crate::error::{Error, Result};
use crate::source::pgoutput::{Lsn, Value};
use crate::store::encryption::{Sealer, StoreKey, SALT_BYTES};

const MAGIC: &[u8; 8] = b"TPSNAP01";
/// The mark of a sealed file; its header continues with the salt its key is derived from.
const SEALED_MAGIC: &[u8; 8] = b"TPSNAPS1";
/// The chunk number the sealed index takes (blocks take 0, 1, …).
const INDEX_CHUNK: u64 = u64::MAX;
const FOOTER: usize = 32;
/// A block is read whole to find a key: small enough to read in a few microseconds.
const BLOCK_BYTES: usize = 16 << 10;
/// Written to the file (and its writeback started) this many bytes at a time, so the final fsync
/// finds little left to write.
const FLUSH_BYTES: usize = 8 << 20;
/// Unsorted rows are sorted in memory this many bytes at a time, then merged from files.
const RUN_BYTES: usize = 64 << 20;

fn io<'a>(path: &'a Path, what: &str) -> impl Fn(std::io::Error) -> Error + 'a {
    let what = what.to_string();
    move |e| Error::internal(format!("snapshot {}: {what}: {e}", path.display()))
}

fn push_varint(mut n: u64, out: &mut Vec<u8>) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// Reads a varint at `*at`, advancing it; `None` when the bytes end or it is too long.
fn read_varint(bytes: &[u8], at: &mut usize) -> Option<u64> {
    let mut n = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *bytes.get(*at)?;
        *at += 1;
        n |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(n);
        }
    }
    None
}

/// Reads a length-prefixed byte range at `*at`.
fn read_slice(bytes: &[u8], at: &mut usize) -> Option<Range<usize>> {
    let len = usize::try_from(read_varint(bytes, at)?).ok()?;
    let start = *at;
    let end = start.checked_add(len)?;
    if end > bytes.len() {
        return None;
    }
    *at = end;
    Some(start..end)
}

struct IndexEntry {
    offset: u64,
    ordinal: u64,
    first: Vec<u8>,
}

/// Appends sorted records to one file and builds its index.
struct Appender {
    path: PathBuf,
    file: File,
    buf: Vec<u8>,
    /// The block being filled; written to `buf` (sealed if `sealer`) when the next block starts.
    block: Vec<u8>,
    sealer: Option<Sealer>,
    /// Bytes handed to the file so far.
    written: u64,
    rows: u64,
    index: Vec<IndexEntry>,
    last: Vec<u8>,
}

impl Appender {
    fn create(path: PathBuf, key: Option<&StoreKey>) -> Result<Appender> {
        let file = crate::owner_only::create(&path).map_err(io(&path, "creating"))?;
        let mut buf = Vec::with_capacity(FLUSH_BYTES + 2 * BLOCK_BYTES);
        let sealer = match key {
            Some(key) => {
                let salt = crate::store::encryption::new_salt()?;
                buf.extend_from_slice(SEALED_MAGIC);
                buf.extend_from_slice(&salt);
                Some(key.file_sealer(&salt))
            }
            None => {
                buf.extend_from_slice(MAGIC);
                None
            }
        };
        Ok(Appender {
            path,
            file,
            buf,
            block: Vec::with_capacity(2 * BLOCK_BYTES),
            sealer,
            written: 0,
            rows: 0,
            index: Vec::new(),
            last: Vec::new(),
        })
    }

    fn offset(&self) -> u64 {
        self.written + self.buf.len() as u64
    }

    fn push(&mut self, skey: &[u8], line: &[u8]) -> Result<()> {
        if self.rows > 0 && skey <= self.last.as_slice() {
            return Err(duplicate_or_unsorted(skey, &self.last));
        }
        if self.index.is_empty() || self.block.len() >= BLOCK_BYTES {
            self.end_block()?;
            self.index.push(IndexEntry {
                offset: self.offset(),
                ordinal: self.rows,
                first: skey.to_vec(),
            });
        }
        push_varint(skey.len() as u64, &mut self.block);
        self.block.extend_from_slice(skey);
        push_varint(line.len() as u64, &mut self.block);
        self.block.extend_from_slice(line);
        self.last.clear();
        self.last.extend_from_slice(skey);
        self.rows += 1;
        Ok(())
    }

    /// Moves the filled block to the output, sealed as chunk `index.len() - 1` if the file is.
    fn end_block(&mut self) -> Result<()> {
        if self.index.is_empty() {
            return Ok(());
        }
        if let Some(sealer) = &self.sealer {
            sealer.seal(self.index.len() as u64 - 1, &[], &mut self.block)?;
        }
        self.buf.extend_from_slice(&self.block);
        self.block.clear();
        if self.buf.len() >= FLUSH_BYTES {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        self.file
            .write_all(&self.buf)
            .map_err(io(&self.path, "writing"))?;
        let from = self.written;
        self.written += self.buf.len() as u64;
        self.buf.clear();
        start_writeback(&self.file, from, self.written - from);
        Ok(())
    }

    /// Writes the index and footer and fsyncs. Returns the rows written.
    fn finish(mut self) -> Result<(PathBuf, u64)> {
        self.end_block()?;
        let index_offset = self.offset();
        let mut footer = Vec::with_capacity(FOOTER);
        footer.extend_from_slice(&index_offset.to_le_bytes());
        footer.extend_from_slice(&self.rows.to_le_bytes());
        footer.extend_from_slice(&(self.index.len() as u64).to_le_bytes());
        let mut index = std::mem::take(&mut self.block);
        for entry in &self.index {
            push_varint(entry.offset, &mut index);
            push_varint(entry.ordinal, &mut index);
            push_varint(entry.first.len() as u64, &mut index);
            index.extend_from_slice(&entry.first);
        }
        match &self.sealer {
            Some(sealer) => {
                sealer.seal(INDEX_CHUNK, &footer, &mut index)?;
                footer.extend_from_slice(SEALED_MAGIC);
            }
            None => footer.extend_from_slice(MAGIC),
        }
        self.buf.extend_from_slice(&index);
        self.buf.extend_from_slice(&footer);
        self.flush()?;
        self.file.sync_all().map_err(io(&self.path, "syncing"))?;
        Ok((self.path, self.rows))
    }
}

fn duplicate_or_unsorted(skey: &[u8], last: &[u8]) -> Error {
    if skey == last {
        Error::invalid_input(
            "key",
            "two rows of the snapshot have the same key: the table's key is not unique",
        )
    } else {
        Error::internal("snapshot: rows reached a sorted run out of order")
    }
}

/// Reads exactly `buf.len()` bytes at `offset`. Positional: readers share one handle, so no read may
/// depend on (or move) a cursor another is using.
#[cfg(unix)]
fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    file.read_exact_at(buf, offset)
}

/// Windows has no `pread`; `seek_read` reads at an offset too, but may read short.
#[cfg(windows)]
fn read_exact_at(file: &File, mut buf: &mut [u8], mut offset: u64) -> std::io::Result<()> {
    use std::os::windows::fs::FileExt;
    while !buf.is_empty() {
        match file.seek_read(buf, offset) {
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => {
                buf = &mut buf[n..];
                offset += n as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Starts writing `len` bytes at `from` back to disk without waiting, so the fsync at the end of a
/// large file does not have the whole file to write.
#[cfg(target_os = "linux")]
fn start_writeback(file: &File, from: u64, len: u64) {
    use std::os::unix::io::AsRawFd;
    // SAFETY: a valid open descriptor; the call only schedules writeback. A failure is harmless:
    // the fsync in `finish` writes whatever is left.
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            from as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

#[cfg(not(target_os = "linux"))]
fn start_writeback(_file: &File, _from: u64, _len: u64) {}

/// Writes one snapshot file from rows in any order. Rows that arrive sorted (a table keyed by a
/// sequence, read with COPY) go straight to the file; otherwise they are sorted in runs of
/// [`RUN_BYTES`] and merged when the file is finished, so memory stays bounded either way.
pub struct SnapshotWriter {
    dir: PathBuf,
    name: String,
    key: Option<std::sync::Arc<StoreKey>>,
    direct: Option<Appender>,
    runs: Vec<PathBuf>,
    arena: Vec<u8>,
    /// (skey, line) ranges in `arena`.
    pending: Vec<(Range<usize>, Range<usize>)>,
}

impl SnapshotWriter {
    /// Starts a file in `dir` (created if needed) under a new name, sealed with `key` if given (the
    /// store's, [`crate::store::Store::key`]); its sorted runs are sealed too.
    pub fn create(dir: &Path, key: Option<std::sync::Arc<StoreKey>>) -> Result<SnapshotWriter> {
        crate::owner_only::create_dir_all(dir).map_err(io(dir, "creating the folder"))?;
        let name = format!("{}.snap", unique_name());
        let direct = Appender::create(dir.join(format!("{name}.partial")), key.as_deref())?;
        Ok(SnapshotWriter {
            dir: dir.to_path_buf(),
            name,
            key,
            direct: Some(direct),
            runs: Vec::new(),
            arena: Vec::new(),
            pending: Vec::new(),
        })
    }

    /// Adds a row: its sort key and its COPY text line (without the newline).
    pub fn push(&mut self, skey: &[u8], line: &[u8]) -> Result<()> {
        if let Some(direct) = &mut self.direct {
            if direct.rows == 0 || skey > direct.last.as_slice() {
                return direct.push(skey, line);
            }
            if skey == direct.last.as_slice() {
                return Err(duplicate_or_unsorted(skey, &direct.last));
            }
            // Out of order: what is written so far is a sorted run of its own.
            let (path, _) = self
                .direct
                .take()
                .map(Appender::finish)
                .transpose()?
                .unzip();
            self.runs.extend(path);
        }
        let s = self.arena.len();
        self.arena.extend_from_slice(skey);
        let l = self.arena.len();
        self.arena.extend_from_slice(line);
        self.pending.push((s..l, l..self.arena.len()));
        if self.arena.len() >= RUN_BYTES {
            self.write_run()?;
        }
        Ok(())
    }

    fn write_run(&mut self) -> Result<()> {
        let arena = &self.arena;
        self.pending
            .sort_unstable_by(|a, b| arena[a.0.clone()].cmp(&arena[b.0.clone()]));
        let path = self.dir.join(format!(
            "{}.run{}.partial",
            self.name.trim_end_matches(".snap"),
            self.runs.len()
        ));
        let mut run = Appender::create(path, self.key.as_deref())?;
        for (skey, line) in &self.pending {
            run.push(&arena[skey.clone()], &arena[line.clone()])?;
        }
        let (path, _) = run.finish()?;
        self.runs.push(path);
        self.arena.clear();
        self.pending.clear();
        Ok(())
    }

    /// Finishes the file: sorted, fsynced, renamed to its final name, the folder fsynced. Returns the
    /// file's name in the folder and its rows.
    pub fn finish(mut self) -> Result<(String, u64)> {
        // Not the direct file's name: that file may be one of the runs being merged.
        let partial = self.dir.join(format!("{}.merged.partial", self.name));
        let (written, rows) = match self.direct.take() {
            Some(direct) => direct.finish()?,
            None => {
                if !self.pending.is_empty() {
                    self.write_run()?;
                }
                let result = merge(&self.runs, partial, self.key.as_deref());
                for run in &self.runs {
                    let _ = std::fs::remove_file(run);
                }
                result?
            }
        };
        let path = self.dir.join(&self.name);
        std::fs::rename(&written, &path).map_err(io(&path, "naming"))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io(&self.dir, "syncing the folder"))?;
        Ok((self.name, rows))
    }
}

/// A name no other file of this process or another has: time, process and a counter.
fn unique_name() -> String {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{nanos:x}-{:x}-{n}", std::process::id())
}

/// Merges sorted runs into one file.
fn merge(runs: &[PathBuf], into: PathBuf, key: Option<&StoreKey>) -> Result<(PathBuf, u64)> {
    struct Head {
        skey: Vec<u8>,
        line: Vec<u8>,
        run: usize,
    }
    impl PartialEq for Head {
        fn eq(&self, other: &Self) -> bool {
            self.skey == other.skey
        }
    }
    impl Eq for Head {}
    impl PartialOrd for Head {
        fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
            Some(self.cmp(other))
        }
    }
    impl Ord for Head {
        // Reversed: BinaryHeap pops the greatest, the merge wants the least key.
        fn cmp(&self, other: &Self) -> Ordering {
            other.skey.cmp(&self.skey)
        }
    }
    let mut readers = runs
        .iter()
        .map(|run| Snapshot::open(run, key).map(|s| s.records_from(0)))
        .collect::<Result<Vec<_>>>()?;
    let mut heap = BinaryHeap::new();
    for (run, reader) in readers.iter_mut().enumerate() {
        if let Some((skey, line)) = reader.next().transpose()? {
            heap.push(Head { skey, line, run });
        }
    }
    let mut out = Appender::create(into, key)?;
    while let Some(head) = heap.pop() {
        out.push(&head.skey, &head.line)?;
        if let Some((skey, line)) = readers[head.run].next().transpose()? {
            heap.push(Head {
                skey,
                line,
                run: head.run,
            });
        }
    }
    out.finish()
}

/// One block of a file, decoded.
pub struct Block {
    data: Vec<u8>,
    records: Vec<(Range<usize>, Range<usize>)>,
    /// The ordinal of the block's first row in the file.
    pub first_ordinal: u64,
}

impl Block {
    /// Rows in the block.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether the block has no rows.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The `i`th row's sort key.
    pub fn skey(&self, i: usize) -> &[u8] {
        &self.data[self.records[i].0.clone()]
    }

    /// The `i`th row's COPY line.
    pub fn line(&self, i: usize) -> &[u8] {
        &self.data[self.records[i].1.clone()]
    }

    /// The line of the row whose sort key is `skey`, if the block has it.
    pub fn get(&self, skey: &[u8]) -> Option<&[u8]> {
        let at = self.position(skey, true);
        (at < self.len() && self.skey(at) == skey).then(|| self.line(at))
    }

    /// The position of the first row whose key is at least (`inclusive`) or above `skey`.
    pub fn position(&self, skey: &[u8], inclusive: bool) -> usize {
        self.records.partition_point(|(k, _)| {
            let k = &self.data[k.clone()];
            if inclusive {
                k < skey
            } else {
                k <= skey
            }
        })
    }
}

/// A finished snapshot file, open for reading.
pub struct Snapshot {
    path: PathBuf,
    file: File,
    sealer: Option<Sealer>,
    rows: u64,
    index: Vec<IndexEntry>,
    data_end: u64,
}

impl Snapshot {
    /// Opens a file and reads its index. `key` is the store's: a sealed file needs it, and a store
    /// with a key accepts only sealed files.
    pub fn open(path: &Path, key: Option<&StoreKey>) -> Result<Snapshot> {
        let damaged = |what: &str| {
            Error::internal(format!(
                "snapshot {} is damaged: {what}; drop the slot and capture again to rebuild it",
                path.display()
            ))
        };
        let file = File::open(path).map_err(io(path, "opening"))?;
        let len = file.metadata().map_err(io(path, "reading"))?.len();
        if len < (MAGIC.len() + FOOTER) as u64 {
            return Err(damaged("too short"));
        }
        let mut head = [0u8; 8];
        read_exact_at(&file, &mut head, 0).map_err(io(path, "reading"))?;
        let (mark, data_start, sealer) = match (&head, key) {
            (MAGIC, None) => (MAGIC, MAGIC.len() as u64, None),
            (SEALED_MAGIC, Some(key)) => {
                let mut salt = [0u8; SALT_BYTES];
                read_exact_at(&file, &mut salt, MAGIC.len() as u64)
                    .map_err(|_| damaged("too short"))?;
                (
                    SEALED_MAGIC,
                    (MAGIC.len() + SALT_BYTES) as u64,
                    Some(key.file_sealer(&salt)),
                )
            }
            (SEALED_MAGIC, None) => {
                return Err(Error::new(
                    crate::ErrorKind::Locked,
                    format!(
                        "snapshot {} is encrypted and was opened without its store's key",
                        path.display()
                    ),
                ))
            }
            (MAGIC, Some(_)) => return Err(damaged("it is not encrypted, but its store is")),
            _ => return Err(damaged("no start mark")),
        };
        let mut footer = [0u8; FOOTER];
        read_exact_at(&file, &mut footer, len - FOOTER as u64).map_err(io(path, "reading"))?;
        let word = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&footer[i * 8..i * 8 + 8]);
            u64::from_le_bytes(b)
        };
        if &footer[24..] != mark {
            return Err(damaged("no end mark"));
        }
        let (index_offset, rows, blocks) = (word(0), word(1), word(2));
        let index_end = len - FOOTER as u64;
        if index_offset < data_start || index_offset > index_end {
            return Err(damaged("the index is out of place"));
        }
        let mut raw = vec![0u8; (index_end - index_offset) as usize];
        read_exact_at(&file, &mut raw, index_offset).map_err(io(path, "reading"))?;
        if let Some(sealer) = &sealer {
            sealer.open(INDEX_CHUNK, &footer[..24], &mut raw).ok_or_else(|| {
                Error::new(
                    crate::ErrorKind::Locked,
                    format!(
                        "snapshot {} does not open with its store's key: the key was replaced, or the file is damaged",
                        path.display()
                    ),
                )
            })?;
        }
        let mut index = Vec::with_capacity(blocks.min(1 << 20) as usize);
        let mut at = 0;
        for _ in 0..blocks {
            let entry = (|| {
                let offset = read_varint(&raw, &mut at)?;
                let ordinal = read_varint(&raw, &mut at)?;
                let first = raw[read_slice(&raw, &mut at)?].to_vec();
                Some(IndexEntry {
                    offset,
                    ordinal,
                    first,
                })
            })()
            .ok_or_else(|| damaged("the index ends early"))?;
            let ordered = index.last().is_none_or(|p: &IndexEntry| {
                p.offset < entry.offset && p.ordinal < entry.ordinal && p.first < entry.first
            });
            if !ordered
                || entry.offset < data_start
                || entry.offset >= index_offset
                || entry.ordinal >= rows
            {
                return Err(damaged("the index is out of order"));
            }
            index.push(entry);
        }
        if (rows > 0) == index.is_empty() {
            return Err(damaged("rows without blocks"));
        }
        Ok(Snapshot {
            path: path.to_path_buf(),
            file,
            sealer,
            rows,
            index,
            data_end: index_offset,
        })
    }

    /// Rows in the file.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Blocks in the file.
    pub fn blocks(&self) -> usize {
        self.index.len()
    }

    /// Reads and decodes block `i`.
    pub fn block(&self, i: usize) -> Result<Block> {
        let entry = self
            .index
            .get(i)
            .ok_or_else(|| Error::internal(format!("snapshot: no block {i}")))?;
        let end = self.index.get(i + 1).map_or(self.data_end, |e| e.offset);
        let mut data = vec![0u8; (end - entry.offset) as usize];
        read_exact_at(&self.file, &mut data, entry.offset).map_err(io(&self.path, "reading"))?;
        if let Some(sealer) = &self.sealer {
            sealer.open(i as u64, &[], &mut data).ok_or_else(|| {
                Error::internal(format!(
                    "snapshot {} is damaged: block {i} does not open with its key",
                    self.path.display()
                ))
            })?;
        }
        let expected = self
            .index
            .get(i + 1)
            .map_or(self.rows, |e| e.ordinal)
            .saturating_sub(entry.ordinal);
        let mut records = Vec::with_capacity((expected as usize).min(data.len() / 2));
        let mut at = 0;
        while at < data.len() {
            let record =
                read_slice(&data, &mut at).and_then(|k| Some((k, read_slice(&data, &mut at)?)));
            match record {
                Some(record) => records.push(record),
                None => {
                    return Err(Error::internal(format!(
                        "snapshot {} is damaged: block {i} ends in the middle of a row",
                        self.path.display()
                    )))
                }
            }
        }
        if records.len() as u64 != expected {
            return Err(Error::internal(format!(
                "snapshot {} is damaged: block {i} holds {} rows, its index says {expected}",
                self.path.display(),
                records.len()
            )));
        }
        Ok(Block {
            data,
            records,
            first_ordinal: entry.ordinal,
        })
    }

    /// The block that holds `skey` if any row does, else the block before the first greater key.
    pub fn block_of_key(&self, skey: &[u8]) -> usize {
        self.index
            .partition_point(|e| e.first.as_slice() <= skey)
            .saturating_sub(1)
    }

    /// The block that holds the row at `ordinal`.
    pub fn block_of_ordinal(&self, ordinal: u64) -> usize {
        self.index
            .partition_point(|e| e.ordinal <= ordinal)
            .saturating_sub(1)
    }

    /// The line of the row whose sort key is `skey`.
    pub fn get(&self, skey: &[u8]) -> Result<Option<Vec<u8>>> {
        if self.index.is_empty() {
            return Ok(None);
        }
        let block = self.block(self.block_of_key(skey))?;
        Ok(block.get(skey).map(<[u8]>::to_vec))
    }

    /// The rows from `ordinal` on, in order.
    pub fn records_from(self, ordinal: u64) -> Records {
        let block = self.block_of_ordinal(ordinal);
        Records {
            snapshot: self,
            block,
            current: None,
            at: 0,
            skip_to: ordinal,
        }
    }
}

/// The rows of a file in key order, read a block at a time.
pub struct Records {
    snapshot: Snapshot,
    block: usize,
    current: Option<Block>,
    at: usize,
    skip_to: u64,
}

impl Iterator for Records {
    type Item = Result<(Vec<u8>, Vec<u8>)>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(block) = &self.current {
                if self.at < block.len() {
                    let item = (block.skey(self.at).to_vec(), block.line(self.at).to_vec());
                    self.at += 1;
                    return Some(Ok(item));
                }
                self.current = None;
                self.block += 1;
            }
            if self.block >= self.snapshot.blocks() {
                return None;
            }
            match self.snapshot.block(self.block) {
                Ok(block) => {
                    self.at = self.skip_to.saturating_sub(block.first_ordinal) as usize;
                    self.current = Some(block);
                }
                Err(e) => {
                    self.block = usize::MAX;
                    return Some(Err(e));
                }
            }
        }
    }
}

/// Deletes files in `dir` that the store does not record (`keep`): leftovers of a write that a crash
/// interrupted before the store recorded it.
pub fn remove_unrecorded(dir: &Path, keep: &[String]) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !keep.contains(&name) {
            std::fs::remove_file(entry.path()).map_err(io(&entry.path(), "removing"))?;
        }
    }
    Ok(())
}

/// What a file's documents are rebuilt from: the table as the backfill read it, and the snapshot's
/// place in the stream. Stored with the file's record in the store.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotSource {
    /// Source schema.
    pub schema: String,
    /// Source table.
    pub table: String,
    /// Columns in COPY's order.
    pub columns: Vec<SourceColumn>,
    /// Positions of the key columns, in key order.
    pub key: Vec<usize>,
    /// The snapshot's consistent point.
    pub lsn: u64,
    /// When the rows were read, Unix milliseconds (`_meta.source.ts_ms`).
    pub ts_ms: i64,
}

/// A column of a [`SnapshotSource`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SourceColumn {
    /// Name.
    pub name: String,
    /// Type OID.
    pub type_oid: u32,
    /// How its values become JSON.
    pub kind: Kind,
}

impl SnapshotSource {
    pub(crate) fn of(rel: &Relation, lsn: Lsn, ts_ms: i64) -> SnapshotSource {
        SnapshotSource {
            schema: rel.source.schema.clone(),
            table: rel.source.table.clone(),
            columns: rel
                .columns
                .iter()
                .map(|c| SourceColumn {
                    name: c.name.clone(),
                    type_oid: c.type_oid,
                    kind: c.kind.clone(),
                })
                .collect(),
            key: rel.key.clone(),
            lsn: lsn.0,
            ts_ms,
        }
    }
}

/// Builds the documents of a file's rows, exactly as the backfill builds a row's document.
pub struct Rebuild {
    rel: Relation,
    meta: String,
    values: Vec<Value>,
    refs: Vec<ValueRef>,
    /// Only `write_row`'s keyless-table key reads it; snapshot files hold keyed tables.
    tx: Transaction,
}

impl Rebuild {
    /// The rebuilder for `collection`'s rows described by `source`.
    pub fn new(collection: &str, source: &SnapshotSource) -> Rebuild {
        let rel = Relation {
            collection: collection.to_string(),
            source: std::sync::Arc::new(SourceTable {
                schema: source.schema.clone(),
                table: source.table.clone(),
            }),
            columns: source
                .columns
                .iter()
                .map(|c| ColumnInfo::new(c.name.clone(), c.type_oid, c.kind.clone()))
                .collect(),
            key: source.key.clone(),
        };
        let mut tx = snapshot_transaction(Lsn(source.lsn), source.ts_ms);
        let meta = meta(Op::Create, 0, &rel, &mut tx, None, &[]);
        Rebuild {
            rel,
            meta,
            values: Vec::new(),
            refs: Vec::new(),
            tx,
        }
    }

    /// The document of one row, given its line: large values left as references
    /// ([`crate::document::large_value::splice`] puts them in).
    pub fn document(&mut self, line: &[u8]) -> Result<Document> {
        parse_stored_line(line, &self.rel, &mut self.values, &mut self.refs)
            .map_err(|e| Error::internal(format!("{}: {e}", self.rel.collection)))?;
        let mut row = write_row(
            &self.rel,
            &self.values,
            Columns::All,
            None,
            refs_row(&self.refs).as_ref(),
            &self.tx,
            None,
        )?;
        Ok(document_of(&mut row, &self.meta, &[]))
    }
}

/// The transaction a snapshot's rows are described as being part of.
pub(crate) fn snapshot_transaction(lsn: Lsn, ts_ms: i64) -> Transaction {
    Transaction {
        final_lsn: lsn,
        xid: 0,
        ts_ms,
        commit_time_micros: 0,
        skip: false,
        index: 0,
        snapshot: true,
        sources: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct TestDir(PathBuf);
    impl TestDir {
        fn path(&self) -> &Path {
            &self.0
        }
    }
    impl Drop for TestDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    fn tempdir() -> TestDir {
        let dir = std::env::temp_dir().join(format!("tidepool-snapshot-test-{}", unique_name()));
        std::fs::create_dir_all(&dir).unwrap();
        TestDir(dir)
    }

    fn skey(n: i64) -> Vec<u8> {
        crate::store::rowkey::sort_key(&format!("[{n}]")).unwrap()
    }

    /// Every test runs on a plain file and on a sealed one.
    fn keys() -> [Option<std::sync::Arc<StoreKey>>; 2] {
        [
            None,
            Some(std::sync::Arc::new(StoreKey::generate().unwrap())),
        ]
    }

    fn read_all(dir: &Path, name: &str, key: Option<&StoreKey>) -> Vec<(Vec<u8>, Vec<u8>)> {
        Snapshot::open(&dir.join(name), key)
            .unwrap()
            .records_from(0)
            .collect::<Result<Vec<_>>>()
            .unwrap()
    }

    #[test]
    fn sorted_rows_go_straight_to_the_file_and_read_back_by_key_and_position() {
        for key in keys() {
            let dir = tempdir();
            let mut w = SnapshotWriter::create(dir.path(), key.clone()).unwrap();
            for n in 0..20_000 {
                w.push(&skey(n), format!("{n}\trow {n}").as_bytes())
                    .unwrap();
            }
            let (name, rows) = w.finish().unwrap();
            assert_eq!(rows, 20_000);
            assert_eq!(
                std::fs::read_dir(dir.path()).unwrap().count(),
                1,
                "no partial file left"
            );
            let s = Snapshot::open(&dir.path().join(&name), key.as_deref()).unwrap();
            assert!(s.blocks() > 10);
            assert_eq!(s.get(&skey(12_345)).unwrap().unwrap(), b"12345\trow 12345");
            assert_eq!(s.get(&skey(20_000)).unwrap(), None);
            let from: Vec<_> = s.records_from(19_998).map(|r| r.unwrap().1).collect();
            assert_eq!(
                from,
                vec![b"19998\trow 19998".to_vec(), b"19999\trow 19999".to_vec()]
            );
        }
    }

    #[test]
    fn unsorted_rows_are_sorted_and_duplicates_refused() {
        for key in keys() {
            let dir = tempdir();
            let mut w = SnapshotWriter::create(dir.path(), key.clone()).unwrap();
            let order: Vec<i64> = (0..5000).map(|i| (i * 7919) % 5000).collect();
            for n in &order {
                w.push(&skey(*n), n.to_string().as_bytes()).unwrap();
            }
            let (name, rows) = w.finish().unwrap();
            assert_eq!(rows, 5000);
            let lines: Vec<i64> = read_all(dir.path(), &name, key.as_deref())
                .into_iter()
                .map(|(_, l)| String::from_utf8(l).unwrap().parse().unwrap())
                .collect();
            assert_eq!(lines, (0..5000).collect::<Vec<_>>());
            assert_eq!(
                std::fs::read_dir(dir.path()).unwrap().count(),
                1,
                "runs removed"
            );

            let mut w = SnapshotWriter::create(dir.path(), key.clone()).unwrap();
            for n in [1, 5, 3, 5] {
                w.push(&skey(n), b"x").unwrap_or(());
            }
            let err = w.finish().unwrap_err();
            assert!(err.message().contains("same key"), "{err}");
        }
    }

    #[test]
    fn a_damaged_file_is_an_error_not_a_panic() {
        for key in keys() {
            let dir = tempdir();
            let mut w = SnapshotWriter::create(dir.path(), key.clone()).unwrap();
            for n in 0..3000 {
                w.push(&skey(n), b"some line").unwrap();
            }
            let (name, _) = w.finish().unwrap();
            let path = dir.path().join(name);
            let good = std::fs::read(&path).unwrap();
            let mut rng = 0x2545F4914F6CDD1Du64;
            for round in 0..300 {
                let mut bad = good.clone();
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                match round % 3 {
                    0 => bad.truncate((rng as usize) % good.len()),
                    _ => {
                        let at = (rng as usize) % good.len();
                        bad[at] ^= (rng >> 32) as u8 | 1;
                    }
                }
                std::fs::write(&path, &bad).unwrap();
                if let Ok(s) = Snapshot::open(&path, key.as_deref()) {
                    let _ = s.get(&skey(1500));
                    let _ = s.records_from(0).collect::<Vec<_>>();
                }
            }
        }
    }

    #[test]
    fn a_sealed_file_holds_no_row_in_the_clear_and_opens_only_with_its_key() {
        let dir = tempdir();
        let key = std::sync::Arc::new(StoreKey::generate().unwrap());
        // Out of order, so sorted runs are written and merged: they are sealed too.
        let mut w = SnapshotWriter::create(dir.path(), Some(key.clone())).unwrap();
        for n in (0..3000).rev() {
            w.push(&skey(n), format!("{n}\tsecret-{n}@example.com").as_bytes())
                .unwrap();
        }
        let (name, _) = w.finish().unwrap();
        let path = dir.path().join(&name);
        let bytes = std::fs::read(&path).unwrap();
        assert!(
            !bytes.windows(7).any(|w| w == b"secret-"),
            "a row is in the clear"
        );
        assert!(
            !bytes.windows(11).any(|w| w == b"example.com"),
            "a row is in the clear"
        );
        let rows = read_all(dir.path(), &name, Some(&key));
        assert_eq!(rows.len(), 3000);
        assert_eq!(rows[7].1, b"7\tsecret-7@example.com");

        let other = StoreKey::generate().unwrap();
        let err = Snapshot::open(&path, Some(&other)).err().unwrap();
        assert_eq!(err.kind(), crate::ErrorKind::Locked, "{err}");
        let err = Snapshot::open(&path, None).err().unwrap();
        assert_eq!(err.kind(), crate::ErrorKind::Locked, "{err}");

        let mut plain = SnapshotWriter::create(dir.path(), None).unwrap();
        plain.push(&skey(1), b"1\tx").unwrap();
        let (plain, _) = plain.finish().unwrap();
        let err = Snapshot::open(&dir.path().join(plain), Some(&key))
            .err()
            .unwrap();
        assert!(err.message().contains("not encrypted"), "{err}");
    }
}
