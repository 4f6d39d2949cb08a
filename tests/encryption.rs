//! Captured rows encrypted at rest: a new profile's store (its database, the consumers' queue, the
//! snapshot files and the backfill staging stores) holds none of the captured values in its bytes;
//! the app and the command line read them back through the key in the OS keychain; a wrong or missing
//! key is a `Locked` error naming the way out; removing the profile deletes the store and every
//! keychain entry it had.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tidepool::app::preview;
use tidepool::app::profile::{ProfileDraft, Profiles};
use tidepool::app::run::{RunState, RunStatus, Runs};
use tidepool::binding::Binding;
use tidepool::deliver::consumer::{ConsumerSpec, Destination, Mode, Start, Webhook};
use tidepool::secrets::{Keychain, Secret, SecretKey};
use tidepool::store::encryption;
use tidepool::ErrorKind;

use crate::harness::{self, until, TestDb};

/// Every file under `root`.
fn files(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(root).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// The files under `root` whose raw bytes contain `needle`.
fn holding(root: &Path, needle: &[u8]) -> Vec<PathBuf> {
    files(root)
        .into_iter()
        .filter(|p| {
            std::fs::read(p)
                .map(|b| b.windows(needle.len()).any(|w| w == needle))
                .unwrap_or(false)
        })
        .collect()
}

fn tidepool(data: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tidepool"));
    command
        .env("TIDEPOOL_DATA_DIR", data)
        .env_remove("PGPASSWORD")
        .env("PGPASSFILE", "/nonexistent");
    command
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_profiles_store_holds_no_captured_value_in_the_clear_and_opens_only_with_its_key() {
    let db = TestDb::new(harness::plain(), "encrypted");
    // Values no file name, schema or log line contains: only a captured row can put them on disk.
    db.sql(
        "CREATE TABLE people (id int PRIMARY KEY, email text, note text);
         INSERT INTO people SELECT g, 'needle' || g || '@secret.example', repeat('haystack', 50)
           FROM generate_series(1, 3000) g;",
    );
    let base = harness::temp_dir("encryption");
    let data = base.join("data");
    let keychain = Keychain::open().expect("the test keychain");
    let profiles = Profiles::open(&data);
    let view = profiles
        .save(
            None,
            db.profile_draft("Secret"),
            Some(db.cluster.superuser_password().clone()),
        )
        .unwrap();
    assert!(
        view.profile.encrypted,
        "new profiles are encrypted by default"
    );
    let id = view.profile.id;
    let store = profiles.store_dir(&id).unwrap();
    let marker = encryption::marker(&store).unwrap().expect("the marker");
    let key_entry = SecretKey::StoreKey(marker.key_id.clone());
    assert!(
        keychain.get(&key_entry).unwrap().is_some(),
        "the key is in the keychain"
    );

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
    // A consumer whose receiver is down: its queue holds messages, copies of rows.
    tidepool::deliver::add_consumer(
        &store,
        ConsumerSpec {
            name: "down".into(),
            collections: vec!["public/people".into()],
            actions: vec![],
            filter: None,
            mode: Mode::Changes,
            start: Start::Beginning,
            group_by: vec![],
            destination: Destination::Webhook(Webhook {
                url: "http://127.0.0.1:9/down".into(),
                headers: Default::default(),
                secret_headers: vec!["authorization".into()],
                batch_size: Some(10),
                timeout_ms: 500,
                max_retries: None,
                max_in_flight: 1,
            }),
        },
        Some(&keychain),
        &[("authorization".into(), Secret::new("Bearer hunter2"))],
        None,
    )
    .unwrap();
    db.sql("UPDATE people SET email = 'streamed-needle@secret.example' WHERE id = 7;");
    // A table added while streaming is backfilled into a staging store inside the store's folder.
    db.sql(
        "CREATE TABLE orders (id int PRIMARY KEY, note text);
         INSERT INTO orders SELECT g, 'staged-needle ' || g FROM generate_series(1, 200) g;",
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
    let collections = || {
        preview::collections(&profiles, &id)
            .unwrap()
            .into_iter()
            .map(|c| (c.name, c.rows, c.changes))
            .collect::<Vec<_>>()
    };
    until("the staged backfill and the update", || {
        let now = collections();
        now.contains(&("public/orders".to_string(), 200, 200))
            && now.contains(&("public/people".to_string(), 3000, 3001))
    })
    .await;
    let ledger = tidepool::deliver::ledger::ledger_path(&store);
    until("messages queued for the consumer", || {
        std::fs::metadata(&ledger).is_ok_and(|m| m.len() > 0)
            && tidepool::deliver::ledger::Ledger::open(&store)
                .unwrap()
                .list()
                .unwrap()
                .iter()
                .any(|c| c.position > 0)
    })
    .await;

    // While the capture runs (its -wal files hold the newest pages) and after it stops.
    for moment in ["running", "stopped"] {
        for needle in [
            &b"needle1@secret.example"[..],
            b"streamed-needle",
            b"staged-needle",
            b"haystackhaystack",
        ] {
            let found = holding(&data, needle);
            assert!(
                found.is_empty(),
                "{} in the clear while {moment}: {found:?}",
                String::from_utf8_lossy(needle)
            );
        }
        if moment == "running" {
            runs.stop(&id, &profiles).unwrap();
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    // And owner-only, with a consumer's queue and the marker beside the store.
    let loose: Vec<String> = files(&data)
        .into_iter()
        .filter_map(|p| {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
            let folder = std::fs::metadata(p.parent().unwrap())
                .unwrap()
                .permissions()
                .mode()
                & 0o777;
            (mode != 0o600 || folder != 0o700)
                .then(|| format!("{} {mode:o} in {folder:o}", p.display()))
        })
        .collect();
    assert!(loose.is_empty(), "not owner-only: {loose:?}");
    let names: Vec<String> = files(&store)
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().any(|n| n.ends_with(".snap")), "{names:?}");
    assert!(names.contains(&"consumers.db".to_string()), "{names:?}");

    // The command line, another process, reads through the key in the OS keychain.
    let out = tidepool(&data)
        .args(["preview", "--store"])
        .arg(&store)
        .args(["public/people", "--where", "id=7"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("streamed-needle@secret.example"),
        "{stdout}"
    );

    // A wrong key: SQLCipher refuses it, and the command says so and what to do.
    let saved = keychain.get(&key_entry).unwrap().unwrap();
    let wrong = Secret::new("ab".repeat(32));
    keychain.set(&key_entry, "Tidepool: test", &wrong).unwrap();
    let out = tidepool(&data)
        .args(["preview", "--store"])
        .arg(&store)
        .arg("public/people")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let said = format!("{stdout}{stderr}");
    assert!(said.contains("error (Locked)"), "{said}");
    assert!(said.contains("discard-store"), "{said}");
    assert!(
        !said.contains(&"ab".repeat(32)),
        "the key reached the output"
    );
    // A missing key.
    keychain.delete(&key_entry).unwrap();
    let out = tidepool(&data)
        .args(["preview", "--store"])
        .arg(&store)
        .arg("public/people")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("error (Locked)"), "{stderr}");
    assert!(stderr.contains("not in the OS keychain"), "{stderr}");
    keychain.set(&key_entry, "Tidepool: test", &saved).unwrap();

    // Removing the profile deletes the store, its key and every secret that belonged to it, and
    // says so.
    let consumer_id = tidepool::deliver::ledger::Ledger::open(&store)
        .unwrap()
        .get("down")
        .unwrap()
        .id;
    let removed = runs.delete_profile(&profiles, &id).unwrap();
    assert!(removed.profile_removed);
    assert_eq!(removed.store.as_deref(), Some(store.as_path()));
    for entry in [
        "database password",
        "store key",
        "header authorization of consumer 'down'",
    ] {
        assert!(
            removed.keychain_entries.iter().any(|e| e == entry),
            "{entry} not in {:?}",
            removed.keychain_entries
        );
    }
    assert!(!store.exists());
    for gone in [
        key_entry,
        SecretKey::ProfilePassword(id.clone()),
        SecretKey::WebhookSecret(consumer_id.clone()),
        SecretKey::WebhookHeader(consumer_id, "authorization".into()),
    ] {
        assert!(
            keychain.get(&gone).unwrap().is_none(),
            "{gone:?} left in the keychain"
        );
    }
    assert!(
        removed.describe().contains("local store"),
        "{}",
        removed.describe()
    );
    std::fs::remove_dir_all(&base).unwrap();
}

/// Runs `tidepool capture` of profile "Lost" into `store` up to what `db` has committed.
fn capture_to_now(data: &Path, db: &TestDb, store: &Path) {
    let out = tidepool(data)
        .args(["capture", "--profile", "Lost", "--create-slot", "--store"])
        .arg(store)
        .arg("--stop-at-lsn")
        .arg(db.current_lsn().to_string())
        .env("PGPASSWORD", db.cluster.superuser_password().expose())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_key_is_a_locked_error_and_discarding_the_local_copy_captures_again_under_a_new_key()
{
    let db = TestDb::new(harness::plain(), "key_lost");
    db.sql(
        "CREATE TABLE t (id int PRIMARY KEY, v text);
         INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 10) g;",
    );
    let base = harness::temp_dir("key_lost");
    let data = base.join("data");
    let keychain = Keychain::open().expect("the test keychain");
    let profiles = Profiles::open(&data);
    let draft = || db.profile_draft("Lost");
    let id = profiles
        .save(None, draft(), Some(db.cluster.superuser_password().clone()))
        .unwrap()
        .profile
        .id;
    profiles
        .publish(&id, vec![Binding::new("public", "t")], Vec::new())
        .await
        .unwrap();
    let store = profiles.store_dir(&id).unwrap();
    capture_to_now(&data, &db, &store);

    // Turning encryption off for a store that holds rows is refused: they cannot be decrypted in
    // place without leaving a plain copy behind unasked.
    let err = profiles
        .save(
            Some(&id),
            ProfileDraft {
                encrypt_store: Some(false),
                ..draft()
            },
            None,
        )
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(err.message().contains("discard-store"), "{}", err.message());

    let old = encryption::marker(&store).unwrap().unwrap();
    keychain
        .delete(&SecretKey::StoreKey(old.key_id.clone()))
        .unwrap();
    let out = tidepool(&data)
        .args(["collections", "--store"])
        .arg(&store)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("error (Locked)"), "{stderr}");

    let out = tidepool(&data)
        .args(["discard-store", "--profile", "Lost"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "refused without --yes");
    assert!(store.join("tidepool.db").exists());
    let out = tidepool(&data)
        .args(["discard-store", "--profile", "Lost", "--yes"])
        .env("PGPASSWORD", db.cluster.superuser_password().expose())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("local store"), "{stdout}");
    assert!(stdout.contains("replication slot"), "{stdout}");
    assert_eq!(
        db.sql(&format!(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{}'",
            db.name
        ))
        .trim(),
        "0",
        "the slot went with the store: a new store needs a new slot for its consistent backfill"
    );
    let new = encryption::marker(&store)
        .unwrap()
        .expect("a new key for the new store");
    assert_ne!(new.key_id, old.key_id);
    assert!(!store.join("tidepool.db").exists());

    // The profile captures again from its slot: the definition is published again, rows backfilled.
    profiles
        .publish(&id, vec![Binding::new("public", "t")], Vec::new())
        .await
        .unwrap();
    db.sql("INSERT INTO t VALUES (11, 'after');");
    capture_to_now(&data, &db, &store);
    let rows = preview::collections(&profiles, &id).unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].rows, 11);

    // A store folder deleted by hand: the profile's next use gives the new folder a key before
    // anything can create a plain store in it.
    std::fs::remove_dir_all(&store).unwrap();
    let again = profiles.store_dir(&id).unwrap();
    assert!(encryption::marker(&again).unwrap().is_some());
    profiles.delete(&id).unwrap();
    std::fs::remove_dir_all(&base).unwrap();
}
