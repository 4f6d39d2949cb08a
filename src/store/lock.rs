//! One writer per store. A store's change log is numbered by the capture that appends to it; two
//! captures appending to one store (the app and a `tidepool capture` on the same profile, or two
//! commands) would number the same positions twice. SQLite refuses the second write, so nothing is
//! lost or confirmed twice, but the capture then stops with an internal error in the middle of its
//! work. This lock refuses the second writer up front, with an error that says who holds the store.
//!
//! Invariants:
//! - A capture (and a resync, which rewrites the checkpoint and the backfill marks) holds the lock
//!   for as long as it may write the store; readers (preview, delivery, export) never take it.
//! - The lock is the operating system's advisory file lock (`flock`) on `capture.lock` in the store
//!   folder: it goes with the process, so a capture that was killed never leaves a store locked.
//!   (Unix only; elsewhere the app's one capture per profile is the only guard.)
//! - The file holds the holder's process id, for the error message only; the lock, not the file's
//!   content, decides.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use crate::error::{Error, ErrorKind, Result};

/// The lock file's name inside a store folder.
pub const LOCK_FILE: &str = "capture.lock";

/// The held lock on a store folder; released when dropped (or when the process ends).
#[derive(Debug)]
pub struct StoreLock {
    _file: File,
}

/// How long a writer waits for one in this process to let go: a capture that was just stopped is
/// dropped by its runtime a moment after the stop returns.
const SAME_PROCESS_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Who holds a store that could not be taken: the process id its lock file names, if any.
struct Holder(Option<String>);

impl Holder {
    fn is_this_process(&self) -> bool {
        self.0.as_deref() == Some(std::process::id().to_string().as_str())
    }

    fn busy(&self, dir: &Path) -> Error {
        let by = match &self.0 {
            None => String::new(),
            Some(_) if self.is_this_process() => " by this app".to_string(),
            Some(pid) => format!(" by process {pid}"),
        };
        Error::new(
            ErrorKind::Busy,
            format!(
                "the store at {} is being written{by}: another capture of this profile \
                 is running (in the app or a `tidepool capture` command); stop it first",
                dir.display()
            ),
        )
    }
}

impl StoreLock {
    /// [`StoreLock::acquire`], waiting a few seconds while the holder is this process (a capture
    /// stopped just before, still being dropped); another process's capture is refused at once.
    pub async fn acquire_soon(dir: &Path) -> Result<StoreLock> {
        let deadline = std::time::Instant::now() + SAME_PROCESS_GRACE;
        loop {
            match StoreLock::try_acquire(dir)? {
                Ok(lock) => return Ok(lock),
                Err(holder) if holder.is_this_process() && std::time::Instant::now() < deadline => {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
                Err(holder) => return Err(holder.busy(dir)),
            }
        }
    }

    /// Takes the store in `dir` for writing, creating the folder if needed. Fails with [`ErrorKind::Busy`] while another capture or
    /// resync holds it, in this process or another.
    pub fn acquire(dir: &Path) -> Result<StoreLock> {
        StoreLock::try_acquire(dir)?.map_err(|holder| holder.busy(dir))
    }

    /// The lock, or who holds it; an error only when the folder or the file cannot be used.
    fn try_acquire(dir: &Path) -> Result<std::result::Result<StoreLock, Holder>> {
        crate::owner_only::create_dir_all(dir).map_err(|e| {
            Error::invalid_input("--store", format!("cannot create {}: {e}", dir.display()))
        })?;
        let path = dir.join(LOCK_FILE);
        let storage =
            |e: std::io::Error| Error::new(ErrorKind::Storage, format!("{}: {e}", path.display()));
        crate::owner_only::create_keep(&path).map_err(storage)?;
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(storage)?;
        let locked = try_lock(&file).map_err(|e| {
            Error::new(
                ErrorKind::Storage,
                format!("locking {}: {e}", path.display()),
            )
        })?;
        if !locked {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            return Ok(Err(Holder(
                (!holder.is_empty()).then(|| holder.to_string()),
            )));
        }
        let pid = std::process::id().to_string();
        file.set_len(0)
            .and_then(|()| file.seek(SeekFrom::Start(0)))
            .and_then(|_| file.write_all(pid.as_bytes()))
            .map_err(storage)?;
        Ok(Ok(StoreLock { _file: file }))
    }
}

/// Takes `file`'s exclusive advisory lock without waiting: `false` while another open file holds
/// it. (`File::try_lock` does this from Rust 1.89; the crate builds on 1.85.)
#[cfg(unix)]
fn try_lock(file: &File) -> std::io::Result<bool> {
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a descriptor this `File` owns for the whole call.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    if e.kind() == std::io::ErrorKind::WouldBlock {
        Ok(false)
    } else {
        Err(e)
    }
}

/// Elsewhere the folder is not locked: one writer per store is then the app's own rule (it runs one
/// capture per profile), not the operating system's.
#[cfg(not(unix))]
fn try_lock(_file: &File) -> std::io::Result<bool> {
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "tidepool-store-lock-{name}-{}",
            crate::secrets::random_hex(6).unwrap()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[cfg(unix)]
    #[test]
    fn a_second_writer_is_refused_until_the_first_is_gone() {
        let store = scratch("second").join("store");
        let first = StoreLock::acquire(&store).unwrap();
        let e = StoreLock::acquire(&store).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Busy);
        assert!(e.message().contains("by this app"), "{e}");
        assert!(e.message().contains("stop it first"), "{e}");
        drop(first);
        let again = StoreLock::acquire(&store).unwrap();
        // Held in this process, released a moment later: the next writer waits for it.
        let release = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(300));
            drop(again);
        });
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        runtime.block_on(StoreLock::acquire_soon(&store)).unwrap();
        release.join().unwrap();
        let _ = std::fs::remove_dir_all(store.parent().unwrap());
    }

    #[cfg(unix)]
    #[test]
    fn the_lock_file_is_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = scratch("mode");
        let _lock = StoreLock::acquire(&dir).unwrap();
        let mode = std::fs::metadata(dir.join(LOCK_FILE))
            .unwrap()
            .permissions()
            .mode();
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(mode & 0o077, 0, "{mode:o}");
    }
}
