//! Captured rows stay private on the machine: every folder and file a capture, a preview export and a
//! profile save create is owner-only (`0700` / `0600`) under an ordinary `022` umask, and an older
//! store or data dir that other accounts could read is tightened when it is opened, with a log line.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tidepool::app::preview::{self, View};
use tidepool::app::profile::Profiles;
use tidepool::app::run::{RunState, RunStatus, Runs};
use tidepool::binding::Binding;
use tidepool::store::snapshot::SnapshotWriter;
use tidepool::store::Store;

use crate::harness::{self, TestDb};

/// The usual umask, under which files are created `0644` and folders `0755` unless asked otherwise.
/// A stricter one inherited from the environment would hide a missing mode. Process-wide, but the
/// other tests create nothing whose mode they check.
fn ordinary_umask() {
    // SAFETY: umask only swaps the process's file-creation mask.
    unsafe {
        libc::umask(0o022);
    }
}

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap()
        .permissions()
        .mode()
        & 0o777
}

/// Every folder and file under `root` (itself included), with its permission bits. The capture runs
/// meanwhile, so a file listed can be gone when it is looked at (SQLite removes a database's -wal and
/// -shm files when its last connection closes): such a file is skipped, every file still there is
/// checked.
fn walk(root: &Path) -> Vec<(PathBuf, bool, u32)> {
    let gone = |e: &std::io::Error| e.kind() == std::io::ErrorKind::NotFound;
    let meta = match std::fs::symlink_metadata(root) {
        Ok(meta) => meta,
        Err(e) if gone(&e) => return Vec::new(),
        Err(e) => panic!("{}: {e}", root.display()),
    };
    let mut out = vec![(
        root.to_path_buf(),
        meta.is_dir(),
        meta.permissions().mode() & 0o777,
    )];
    if !meta.is_dir() {
        return out;
    }
    let entries = match std::fs::read_dir(root) {
        Ok(entries) => entries,
        Err(e) if gone(&e) => return Vec::new(),
        Err(e) => panic!("{}: {e}", root.display()),
    };
    for entry in entries {
        match entry {
            Ok(entry) => out.extend(walk(&entry.path())),
            Err(e) if gone(&e) => {}
            Err(e) => panic!("{}: {e}", root.display()),
        }
    }
    out
}

fn assert_owner_only(root: &Path) -> Vec<PathBuf> {
    let all = walk(root);
    let loose: Vec<String> = all
        .iter()
        .filter(|(_, dir, mode)| *mode != if *dir { 0o700 } else { 0o600 })
        .map(|(p, _, mode)| format!("{} {mode:04o}", p.display()))
        .collect();
    assert!(loose.is_empty(), "not owner-only: {loose:#?}");
    all.into_iter().map(|(p, _, _)| p).collect()
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Makes a tree readable by everyone, as an older Tidepool left it.
fn loosen(root: &Path) {
    for (path, dir, _) in walk(root) {
        chmod(&path, if dir { 0o755 } else { 0o644 });
    }
}

async fn until(what: &str, mut ok: impl FnMut() -> bool) {
    for _ in 0..400 {
        if ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

/// What `owner_only` logs anywhere in the process (its "made owner-only" warnings). A capture works on
/// tokio's threads, so this listens process-wide; a test with its own thread-local subscriber is not
/// heard here.
fn tightening_log() -> &'static Captured {
    static LOG: OnceLock<Captured> = OnceLock::new();
    LOG.get_or_init(|| {
        let log = Captured::default();
        let writer = log.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .with_env_filter(tracing_subscriber::EnvFilter::new(
                "tidepool::owner_only=warn",
            ))
            .finish();
        tracing::subscriber::set_global_default(subscriber)
            .expect("no other process-wide subscriber in the engine tests");
        log
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everything_a_capture_an_export_and_a_profile_save_create_is_owner_only() {
    ordinary_umask();
    let tightened = tightening_log();
    let db = TestDb::new(harness::plain(), "owner_only");
    db.sql(
        "CREATE TABLE people (id int PRIMARY KEY, email text);
         INSERT INTO people SELECT g, 'person' || g || '@example.com' FROM generate_series(1, 50) g;",
    );
    let base = harness::temp_dir("owner_only");
    // Not there yet: Tidepool creates the data dir itself.
    let data = base.join("tidepool-data");
    let profiles = Profiles::open(&data);
    let id = profiles
        .save(
            None,
            db.profile_draft("Private"),
            Some(db.cluster.superuser_password().clone()),
        )
        .unwrap()
        .profile
        .id;
    profiles
        .publish(&id, vec![Binding::new("public", "people")], Vec::new())
        .await
        .unwrap();
    let runs = Runs::default();
    let seen: Arc<Mutex<Option<RunStatus>>> = Arc::default();
    let last = seen.clone();
    runs.start(
        &profiles,
        &id,
        Arc::new(move |s: &RunStatus| *last.lock().unwrap() = Some(s.clone())),
    )
    .await
    .unwrap();
    until("the backfill", || {
        seen.lock().unwrap().as_ref().is_some_and(|s| {
            s.state == RunState::Streaming
                && s.backfills.get("public/people").is_some_and(|b| b.done)
        })
    })
    .await;
    db.sql("UPDATE people SET email = 'changed@example.com' WHERE id = 7;");
    let collections = || {
        preview::collections(&profiles, &id)
            .unwrap()
            .into_iter()
            .map(|c| (c.name, c.rows, c.changes))
            .collect::<Vec<_>>()
    };
    until("the streamed update", || {
        collections() == [("public/people".to_string(), 50, 51)]
    })
    .await;

    // A table added while the capture streams is backfilled into a staging store of its own (in
    // `backfills/`), whose snapshot file is then moved into the store's.
    db.sql(
        "CREATE TABLE orders (id int PRIMARY KEY, note text);
         INSERT INTO orders SELECT g, 'order ' || g FROM generate_series(1, 20) g;",
    );
    profiles
        .publish(
            &id,
            vec![
                Binding::new("public", "people"),
                Binding::new("public", "orders"),
            ],
            Vec::new(),
        )
        .await
        .unwrap();
    until("the staged backfill brought in", || {
        collections().contains(&("public/orders".to_string(), 20, 20))
    })
    .await;

    // An export into a folder that does not exist yet.
    let exports = base.join("exports").join("private");
    let exported = preview::export(
        &profiles,
        &id,
        "public/people",
        View::Rows,
        None,
        preview::ExportFormat::Csv,
        &exports,
    )
    .unwrap();
    assert_eq!(exported.documents, 50);

    // While the capture runs, so that SQLite's -wal and -shm files are there to be checked.
    let store = profiles.store_dir(&id).unwrap();
    let files = assert_owner_only(&data);
    for expected in [
        data.join("profiles.json"),
        data.join("stores"),
        store.join("tidepool.db"),
        store.join("tidepool.db-wal"),
        store.join("tidepool.db-shm"),
        store.join("snapshots"),
        // The backfill's staging stores live here until they are brought in.
        store.join("backfills"),
    ] {
        assert!(
            files.contains(&expected),
            "{} is missing",
            expected.display()
        );
    }
    let snapshots: Vec<&PathBuf> = files
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "snap"))
        .collect();
    assert_eq!(
        snapshots.len(),
        2,
        "the keyed tables' snapshot files: {files:?}"
    );
    assert_eq!(
        assert_owner_only(&base.join("exports")),
        vec![base.join("exports"), exports.clone(), exported.path.clone()]
    );

    runs.stop(&id, &profiles).unwrap();
    assert_owner_only(&data);
    // Created owner-only, not made so afterwards: opening a store or the data dir again (each page
    // of a preview does) found nothing to tighten.
    let log = tightened.text();
    assert!(
        !log.contains(&base.display().to_string()),
        "created readable by others, tightened later: {log}"
    );
    profiles.delete(&id).unwrap();
    std::fs::remove_dir_all(&base).unwrap();
}

/// A writer the test reads back: the log lines of what was tightened.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }

    fn take(&self) -> String {
        String::from_utf8(std::mem::take(&mut *self.0.lock().unwrap())).unwrap()
    }
}

#[test]
fn a_store_and_data_dir_others_can_read_are_made_owner_only_on_open_with_a_log_line() {
    ordinary_umask();
    let base = harness::temp_dir("owner_only_old");
    let data = base.join("data");
    let store_dir = data.join("stores").join("old");
    {
        let store = Store::open(&store_dir).unwrap();
        let mut writer = SnapshotWriter::create(&store.snapshot_dir(), store.key()).unwrap();
        writer.push(b"\x01", b"1\tsecret@example.com").unwrap();
        writer.finish().unwrap();
        // As after a crash: the connection is never closed, so -wal and -shm stay beside the database.
        std::mem::forget(store);
    }
    std::fs::write(data.join("profiles.json"), r#"{"version":1,"profiles":[]}"#).unwrap();
    // A file of the user's own in a data dir they chose: not Tidepool's to change.
    std::fs::write(data.join("notes.txt"), "mine").unwrap();
    loosen(&data);
    for name in ["tidepool.db", "tidepool.db-wal", "tidepool.db-shm"] {
        assert_eq!(mode(&store_dir.join(name)), 0o644, "{name}");
    }

    let log = Captured::default();
    let writer = log.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        // On start: the data dir, the profile list and every store in it.
        let profiles = Profiles::open(&data);
        assert!(profiles.list().unwrap().is_empty());
        let line = log.take();
        assert_eq!(line.lines().count(), 1, "{line}");
        assert!(line.contains("made owner-only"), "{line}");
        for tightened in [
            data.join("profiles.json"),
            store_dir.join("tidepool.db-wal"),
        ] {
            assert!(
                line.contains(&format!("{} (was 0644)", tightened.display())),
                "{line}"
            );
        }
        let mut all = walk(&data);
        all.retain(|(p, _, _)| *p != data.join("notes.txt"));
        for (path, dir, mode) in all {
            assert_eq!(mode, if dir { 0o700 } else { 0o600 }, "{}", path.display());
        }
        assert_eq!(mode(&data.join("notes.txt")), 0o644);

        // On opening a store (the command line's --store may be anywhere).
        loosen(&store_dir);
        let store = Store::open(&store_dir).unwrap();
        assert!(store.collections().unwrap().is_empty());
        let line = log.take();
        assert_eq!(line.lines().count(), 1, "{line}");
        assert!(
            line.contains(&format!(
                "{} (was 0644)",
                store_dir.join("tidepool.db").display()
            )),
            "{line}"
        );
        assert!(
            line.contains(&format!(
                "{} (was 0755)",
                store_dir.join("snapshots").display()
            )),
            "{line}"
        );
        assert_owner_only(&store_dir);
        drop(store);
        // Nothing left to tighten: nothing logged.
        drop(Store::open(&store_dir).unwrap());
        assert_eq!(log.take(), "");
    });
    std::fs::remove_dir_all(&base).unwrap();
}
