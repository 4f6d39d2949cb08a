//! Owner-only files and folders. Tidepool copies production rows onto a laptop; whatever holds them
//! (the data directory, stores, SQLite files, snapshot files, exports, logs, the demo's cluster) must
//! not be readable by the machine's other accounts. Every file or folder Tidepool creates goes
//! through this module.
//!
//! Invariants (Unix):
//! - A folder created here is `0700` and a file `0600`, whatever the process's umask: the mode is
//!   asked for at creation and set again on the open handle if the umask took bits away.
//! - [`tighten`] takes the group and other bits off Tidepool's existing files (so folders become `0700` and
//!   files `0600` at most) and says in one log line what it changed, so an older install or a copy
//!   made with a loose umask is fixed on open. It follows no symbolic link inside the tree and never
//!   adds a permission.
//! - SQLite creates a database's `-wal`, `-shm` and `-journal` files with the database file's mode,
//!   so [`create_keep`] makes the database file `0600` before SQLite opens it.
//!
//! Elsewhere (Windows) files go where the platform keeps per-user data (`%APPDATA%`, whose ACL grants
//! only the user, the administrators and SYSTEM); these functions create files and folders with the
//! platform's defaults and [`tighten`] changes nothing.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

/// Mode of a folder Tidepool creates (Unix).
pub const FOLDER_MODE: u32 = 0o700;
/// Mode of a file Tidepool creates (Unix).
pub const FILE_MODE: u32 = 0o600;

/// Creates `dir` and its missing parents, each owner-only. Folders that already exist are left as
/// they are (a parent may be the user's own, such as Downloads); use [`tighten`] on Tidepool's own.
pub fn create_dir_all(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        if dir.is_dir() {
            return Ok(());
        }
        // The parents that are missing now are the ones this call creates.
        let mut created: Vec<&Path> = dir.ancestors().take_while(|p| !p.exists()).collect();
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(FOLDER_MODE)
            .create(dir)?;
        // The umask may have removed owner bits from the mode asked for.
        created.retain(|p| !p.as_os_str().is_empty());
        for folder in created {
            let mode = std::fs::symlink_metadata(folder)?.permissions().mode() & 0o777;
            if mode != FOLDER_MODE {
                std::fs::set_permissions(folder, std::fs::Permissions::from_mode(FOLDER_MODE))?;
            }
        }
        Ok(())
    }
    #[cfg(not(unix))]
    {
        std::fs::create_dir_all(dir)
    }
}

/// Creates (or truncates) the file at `path` for writing, owner-only.
pub fn create(path: &Path) -> io::Result<File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    open_owner_only(&mut options, path)
}

/// Creates the file at `path` empty and owner-only if it does not exist, and makes an existing one
/// owner-only; its content is kept. Used for the SQLite database before SQLite opens it, so the
/// journal files SQLite creates beside it get the same mode.
pub fn create_keep(path: &Path) -> io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(false);
    open_owner_only(&mut options, path).map(drop)
}

fn open_owner_only(options: &mut std::fs::OpenOptions, path: &Path) -> io::Result<File> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let file = options.mode(FILE_MODE).open(path)?;
        // The mode only applies to a new file, and the umask may have removed bits from it.
        if file.metadata()?.permissions().mode() & 0o777 != FILE_MODE {
            file.set_permissions(std::fs::Permissions::from_mode(FILE_MODE))?;
        }
        Ok(file)
    }
    #[cfg(not(unix))]
    {
        options.open(path)
    }
}

/// Makes the process's umask `077`, so files and folders that code outside Tidepool's control
/// creates (a log appender's daily file, a plugin's state file, the web view's caches) are owner-only
/// too. For a program's start, before it starts threads; Tidepool's own files do not depend on it.
pub fn restrict_umask() {
    #[cfg(unix)]
    // SAFETY: umask only swaps the process's file-creation mask; it cannot fail.
    unsafe {
        libc::umask(0o077);
    }
}

/// What [`tighten`] changed: each path with the mode it had.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Tightened {
    /// Paths made owner-only, with their previous permission bits.
    pub changed: Vec<(PathBuf, u32)>,
    /// Paths that could not be changed (another account owns them), with the reason.
    pub failed: Vec<(PathBuf, String)>,
}

/// Makes `folder` itself and the entries `names` in it (each with everything under it) owner-only by
/// taking away group and other permissions, logging one line that names what it changed (and one for
/// what it could not). The owner's bits are kept. Only the named entries are touched, so a folder the
/// user chose (`--store`, `TIDEPOOL_DATA_DIR`) keeps whatever else it holds as it was. Missing paths
/// are not an error: there is nothing to protect yet.
pub fn tighten(folder: &Path, names: &[&str]) -> Tightened {
    let mut result = Tightened::default();
    #[cfg(unix)]
    {
        // The folder may be a link the user chose; inside it, links are not followed, so nothing
        // outside it is changed.
        walk(folder, std::fs::metadata(folder), false, &mut result);
        for name in names {
            let path = folder.join(name);
            let meta = std::fs::symlink_metadata(&path);
            walk(&path, meta, true, &mut result);
        }
    }
    #[cfg(not(unix))]
    let _ = names;
    if !result.changed.is_empty() {
        let list: Vec<String> = result
            .changed
            .iter()
            .map(|(p, mode)| format!("{} (was {mode:04o})", p.display()))
            .collect();
        tracing::warn!(
            folder = %folder.display(),
            "other accounts could read Tidepool's files; made owner-only: {}",
            list.join(", ")
        );
    }
    if !result.failed.is_empty() {
        let list: Vec<String> = result
            .failed
            .iter()
            .map(|(p, e)| format!("{}: {e}", p.display()))
            .collect();
        tracing::warn!(
            folder = %folder.display(),
            "could not make these owner-only; other accounts may read them: {}",
            list.join(", ")
        );
    }
    result
}

#[cfg(unix)]
fn walk(path: &Path, meta: io::Result<std::fs::Metadata>, deep: bool, result: &mut Tightened) {
    use std::os::unix::fs::PermissionsExt;
    let meta = match meta {
        Ok(meta) => meta,
        // Not there (yet), or removed meanwhile (a finished backfill's staging folder).
        Err(e) if e.kind() == io::ErrorKind::NotFound => return,
        Err(e) => {
            result.failed.push((path.to_path_buf(), e.to_string()));
            return;
        }
    };
    let kind = meta.file_type();
    if !kind.is_dir() && !kind.is_file() {
        // Links, sockets, pipes: they hold no data.
        return;
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        match std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & 0o700)) {
            Ok(()) => result.changed.push((path.to_path_buf(), mode)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return,
            Err(e) => result.failed.push((path.to_path_buf(), e.to_string())),
        }
    }
    if deep && kind.is_dir() {
        let entries = match std::fs::read_dir(path) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return,
            Err(e) => {
                result.failed.push((path.to_path_buf(), e.to_string()));
                return;
            }
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let meta = std::fs::symlink_metadata(&path);
            walk(&path, meta, true, result);
        }
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    fn temp(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("tidepool-owner-only-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn created_folders_and_files_are_owner_only_and_existing_parents_are_left_alone() {
        let base = temp("create");
        std::fs::create_dir_all(&base).unwrap();
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o755)).unwrap();
        let deep = base.join("a").join("b");
        create_dir_all(&deep).unwrap();
        assert_eq!(
            mode(&base),
            0o755,
            "an existing parent is not ours to change"
        );
        assert_eq!(mode(&base.join("a")), 0o700);
        assert_eq!(mode(&deep), 0o700);

        let file = deep.join("f");
        std::fs::write(&file, b"old").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        create_keep(&file).unwrap();
        assert_eq!(mode(&file), 0o600);
        assert_eq!(
            std::fs::read(&file).unwrap(),
            b"old",
            "create_keep keeps content"
        );
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666)).unwrap();
        drop(create(&file).unwrap());
        assert_eq!(mode(&file), 0o600);
        assert!(std::fs::read(&file).unwrap().is_empty(), "create truncates");
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn tighten_removes_group_and_other_bits_and_reports_each_path() {
        let base = temp("tighten");
        std::fs::create_dir_all(base.join("sub")).unwrap();
        std::fs::write(base.join("sub").join("data"), b"x").unwrap();
        std::fs::write(base.join("private"), b"x").unwrap();
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(base.join("sub"), std::fs::Permissions::from_mode(0o775)).unwrap();
        std::fs::set_permissions(
            base.join("sub").join("data"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        std::fs::set_permissions(base.join("private"), std::fs::Permissions::from_mode(0o400))
            .unwrap();
        std::fs::write(base.join("not-ours"), b"x").unwrap();
        std::fs::set_permissions(
            base.join("not-ours"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        let outside = temp("tighten-outside");
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::set_permissions(&outside, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::symlink(&outside, base.join("sub").join("link")).unwrap();

        let names = ["sub", "private", "missing"];
        let t = tighten(&base, &names);
        let mut changed: Vec<(PathBuf, u32)> = t.changed;
        changed.sort();
        assert_eq!(
            changed,
            vec![
                (base.clone(), 0o755),
                (base.join("sub"), 0o775),
                (base.join("sub").join("data"), 0o644),
            ]
        );
        assert!(t.failed.is_empty(), "{:?}", t.failed);
        assert_eq!(mode(&base), 0o700);
        assert_eq!(mode(&base.join("sub")), 0o700);
        assert_eq!(mode(&base.join("sub").join("data")), 0o600);
        assert_eq!(mode(&base.join("private")), 0o400, "no permission is added");
        assert_eq!(
            mode(&base.join("not-ours")),
            0o644,
            "only the named entries are touched"
        );
        assert_eq!(
            mode(&outside),
            0o755,
            "a link inside the tree is not followed"
        );
        assert_eq!(
            tighten(&base, &names),
            Tightened::default(),
            "a second pass changes nothing"
        );
        assert_eq!(tighten(&base.join("missing"), &[]), Tightened::default());
        std::fs::remove_dir_all(&base).unwrap();
        std::fs::remove_dir_all(&outside).unwrap();
    }
}
