//! Passwords from a libpq password file (`~/.pgpass`, or the file named by `PGPASSFILE`).
//!
//! The command line reads it so a password never has to travel in an argument. Rules are libpq's: lines
//! `hostname:port:database:username:password`, `*` matches anything, `\:` and `\\` escape, `#` starts a
//! comment, the first matching line wins, and on Unix a file that group or others can read is ignored
//! (with a warning), exactly as libpq does. On Windows libpq reads `%APPDATA%\postgresql\pgpass.conf`
//! and checks no permissions (the folder is the user's own); so does this module.

use std::path::{Path, PathBuf};

use crate::secrets::Secret;

/// The password file libpq would read: `PGPASSFILE`, else `~/.pgpass` (Windows:
/// `%APPDATA%\postgresql\pgpass.conf`).
pub fn default_path() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("PGPASSFILE") {
        return Some(PathBuf::from(path));
    }
    users_file()
}

#[cfg(not(windows))]
fn users_file() -> Option<PathBuf> {
    std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".pgpass"))
}

#[cfg(windows)]
fn users_file() -> Option<PathBuf> {
    std::env::var_os("APPDATA").map(|dir| PathBuf::from(dir).join("postgresql").join("pgpass.conf"))
}

/// Looks up the password for a connection in the file at `path`.
pub fn lookup(path: &Path, host: &str, port: u16, database: &str, user: &str) -> Option<Secret> {
    if others_may_read(path)? {
        tracing::warn!(file = %path.display(), "password file has group or world access; ignoring it (chmod 0600)");
        return None;
    }
    let text = std::fs::read_to_string(path).ok()?;
    find(&text, host, port, database, user)
}

/// Whether group or others have any access to the file (`None` if it cannot be read at all).
#[cfg(unix)]
fn others_may_read(path: &Path) -> Option<bool> {
    use std::os::unix::fs::PermissionsExt;
    Some(std::fs::metadata(path).ok()?.permissions().mode() & 0o077 != 0)
}

/// libpq makes no permission check off Unix: the file lives in the user's own profile folder.
#[cfg(not(unix))]
fn others_may_read(path: &Path) -> Option<bool> {
    std::fs::metadata(path).ok().map(|_| false)
}

/// The first matching entry of a password file's text.
pub fn find(text: &str, host: &str, port: u16, database: &str, user: &str) -> Option<Secret> {
    let port = port.to_string();
    // libpq matches a Unix-socket connection against the entry "localhost".
    let host = if host.starts_with('/') {
        "localhost"
    } else {
        host
    };
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty())
        .find_map(|line| {
            let fields = split_fields(line);
            let [h, p, d, u, password] = <[String; 5]>::try_from(fields).ok()?;
            let matches = |pattern: &str, value: &str| pattern == "*" || pattern == value;
            (matches(&h, host) && matches(&p, &port) && matches(&d, database) && matches(&u, user))
                .then(|| Secret::new(password))
        })
}

fn split_fields(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(next) = chars.next() {
                    fields.last_mut().expect("never empty").push(next);
                }
            }
            // The password is the rest of the line, colons included, once four fields are complete.
            ':' if fields.len() < 5 => fields.push(String::new()),
            c => fields.last_mut().expect("never empty").push(c),
        }
    }
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "\
# comment
db.example.com:5432:app:alice:first
*:*:*:bob:with\\:colon
127.0.0.1:6000:*:*:any:thing
";

    #[test]
    fn first_matching_line_wins_with_wildcards_and_escapes() {
        let get = |h, p, d, u| find(FILE, h, p, d, u).map(|s| s.expose().to_string());
        assert_eq!(
            get("db.example.com", 5432, "app", "alice").as_deref(),
            Some("first")
        );
        assert_eq!(get("db.example.com", 5433, "app", "alice"), None);
        assert_eq!(get("other", 1, "x", "bob").as_deref(), Some("with:colon"));
        assert_eq!(
            get("127.0.0.1", 6000, "d", "carol").as_deref(),
            Some("any:thing")
        );
    }

    #[test]
    #[cfg(unix)] // file modes; libpq checks none off Unix
    fn group_readable_files_are_ignored() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("tidepool-pgpass-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("pgpass");
        std::fs::write(&path, "*:*:*:*:pw\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(lookup(&path, "h", 1, "d", "u").is_none());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(lookup(&path, "h", 1, "d", "u").unwrap().expose(), "pw");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
