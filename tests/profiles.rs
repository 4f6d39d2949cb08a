//! Connection profiles against the real Secret Service (GNOME Keyring in a private D-Bus session, as
//! script/test runs these tests): the password is in the keychain and in no file, connecting with the
//! profile works, and deleting the profile deletes the secret.

use std::path::Path;
use std::process::Command;

use tidepool::app::profile::{PasswordStorage, ProfileDraft, Profiles, SaveCheck, SecretState};
use tidepool::secrets::{Secret, SecretKey, SERVICE};
use tidepool::source::tls::SslMode;
use tidepool::ErrorKind;

use crate::harness::{self, TestDb};

pub(crate) fn require_keyring_session() {
    assert!(
        std::env::var_os("DBUS_SESSION_BUS_ADDRESS").is_some(),
        "these tests use the real Secret Service: run them through script/test, which starts a private D-Bus \
         session with an unlocked GNOME Keyring"
    );
}

/// What `secret-tool` (libsecret's own client) finds for an account, as a person would look it up.
fn secret_tool_lookup(account: &str) -> Option<String> {
    let output = Command::new("secret-tool")
        .args(["lookup", "service", SERVICE, "username", account])
        .output()
        .expect("running secret-tool (package libsecret-tools)");
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Every file under `dir` that contains `needle`.
pub(crate) fn files_containing(dir: &Path, needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(files_containing(&path, needle));
        } else if std::fs::read(&path)
            .is_ok_and(|bytes| bytes.windows(needle.len()).any(|w| w == needle.as_bytes()))
        {
            found.push(path.display().to_string());
        }
    }
    found
}

fn draft(db: &TestDb, name: &str) -> ProfileDraft {
    ProfileDraft {
        name: name.into(),
        address: format!("127.0.0.1:{}", db.cluster.port()),
        user: "postgres".into(),
        database: db.name.clone(),
        sslmode: SslMode::Disable,
        ..Default::default()
    }
}

#[tokio::test]
async fn a_saved_profile_keeps_its_password_in_the_keychain_and_in_no_file() {
    require_keyring_session();
    let db = TestDb::new(harness::plain(), "profile_keychain");
    let dir = harness::temp_dir("profile_data");
    let profiles = Profiles::open(&dir);
    let password = db.cluster.superuser_password().expose().to_string();

    let view = profiles
        .save(
            None,
            draft(&db, "Local dev"),
            Some(Secret::new(password.clone())),
        )
        .unwrap();
    assert_eq!(view.secret, SecretState::InKeychain);
    let account = SecretKey::ProfilePassword(view.profile.id.clone()).account();
    assert_eq!(
        secret_tool_lookup(&account).as_deref(),
        Some(password.as_str())
    );
    assert!(dir.join("profiles.json").exists());
    assert_eq!(files_containing(&dir, &password), Vec::<String>::new());

    let facts = profiles.test("Local dev", None).await.unwrap();
    assert_eq!(facts.database, db.name);

    // A rename keeps the secret (it is keyed by the profile's id).
    profiles
        .save(Some(&view.profile.id), draft(&db, "Renamed"), None)
        .unwrap();
    assert_eq!(
        profiles.test("Renamed", None).await.unwrap().database,
        db.name
    );

    profiles.delete("Renamed").unwrap();
    assert_eq!(secret_tool_lookup(&account), None);
    assert!(profiles.list().unwrap().is_empty());
    std::fs::remove_dir_all(dir).unwrap();
}

/// What `tidepool profile list` prints for the profiles in `dir`.
fn profile_list(dir: &Path) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_tidepool"))
        .args(["profile", "list"])
        .env("TIDEPOOL_DATA_DIR", dir)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The form's Save tests first: a wrong password is refused with the login's error and reaches
/// neither the keychain nor the profile list; saved without testing it is marked untested; the right
/// one clears the mark.
#[tokio::test]
async fn save_checked_stores_only_a_password_that_logged_in_unless_told_not_to_test() {
    require_keyring_session();
    let db = TestDb::new(harness::plain(), "profile_save_checked");
    let dir = harness::temp_dir("profile_save_checked");
    let profiles = Profiles::open(&dir);
    let password = db.cluster.superuser_password().expose().to_string();

    let refused = profiles
        .save_checked(
            None,
            draft(&db, "Checked"),
            Some(Secret::new("not-the-password")),
            SaveCheck::TestFirst,
        )
        .await
        .unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::Authentication, "{refused:?}");
    assert!(profiles.list().unwrap().is_empty());
    assert_eq!(
        files_containing(&dir, "not-the-password"),
        Vec::<String>::new()
    );

    let untested = profiles
        .save_checked(
            None,
            draft(&db, "Checked"),
            Some(Secret::new("not-the-password")),
            SaveCheck::WithoutTesting,
        )
        .await
        .unwrap();
    assert!(untested.profile.untested);
    let id = untested.profile.id.clone();
    assert!(
        profile_list(&dir).contains("(saved in the app without testing)"),
        "{}",
        profile_list(&dir)
    );
    let account = SecretKey::ProfilePassword(id.clone()).account();
    // Saving again with the wrong password in the keychain and none typed is still refused.
    let again = profiles
        .save_checked(
            Some(id.clone()),
            draft(&db, "Checked"),
            None,
            SaveCheck::TestFirst,
        )
        .await
        .unwrap_err();
    assert_eq!(again.kind(), ErrorKind::Authentication, "{again:?}");
    assert!(profiles.get(&id).unwrap().untested);

    let tested = profiles
        .save_checked(
            Some(id.clone()),
            draft(&db, "Checked"),
            Some(Secret::new(password.clone())),
            SaveCheck::TestFirst,
        )
        .await
        .unwrap();
    assert!(!tested.profile.untested);
    assert!(!profile_list(&dir).contains("without testing"));
    assert_eq!(tested.secret, SecretState::InKeychain);
    assert_eq!(
        secret_tool_lookup(&account).as_deref(),
        Some(password.as_str())
    );
    profiles.delete(&id).unwrap();
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn a_password_removed_from_the_keychain_is_reported_not_guessed() {
    require_keyring_session();
    let db = TestDb::new(harness::plain(), "profile_missing");
    let dir = harness::temp_dir("profile_missing");
    let profiles = Profiles::open(&dir);
    let view = profiles
        .save(None, draft(&db, "Gone"), Some(Secret::new("pw")))
        .unwrap();
    let account = SecretKey::ProfilePassword(view.profile.id.clone()).account();
    let status = Command::new("secret-tool")
        .args(["clear", "service", SERVICE, "username", &account])
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(
        profiles.list().unwrap()[0].secret,
        SecretState::MissingFromKeychain
    );
    let err = profiles.test("Gone", None).await.unwrap_err();
    assert_eq!(err.kind(), tidepool::ErrorKind::Keychain);
    assert!(
        err.message().contains("edit the profile"),
        "{}",
        err.message()
    );
    std::fs::remove_dir_all(dir).unwrap();
}

fn tidepool(data_dir: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tidepool"));
    command
        .env("TIDEPOOL_DATA_DIR", data_dir)
        .env_remove("PGPASSWORD")
        .env("PGPASSFILE", "/nonexistent");
    command
}

#[test]
fn the_command_line_saves_uses_and_removes_profiles() {
    require_keyring_session();
    let db = TestDb::new(harness::plain(), "profile_cli");
    let dir = harness::temp_dir("profile_cli");
    let password = db.cluster.superuser_password().expose();
    let url = format!(
        "postgres://postgres@127.0.0.1:{}/{}?sslmode=disable",
        db.cluster.port(),
        db.name
    );

    let added = tidepool(&dir)
        .args(["profile", "add", "--name", "CLI profile", "--url", &url])
        .env("PGPASSWORD", password)
        .output()
        .unwrap();
    assert!(
        added.status.success(),
        "{}",
        String::from_utf8_lossy(&added.stderr)
    );
    assert!(String::from_utf8_lossy(&added.stdout).contains("password in the keychain"));

    // No PGPASSWORD now: the password comes from the keychain.
    let check = tidepool(&dir)
        .args(["check", "--json", "--profile", "cli profile"])
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let facts: serde_json::Value = serde_json::from_slice(&check.stdout).unwrap();
    assert_eq!(facts["database"], db.name.as_str());

    let list = tidepool(&dir)
        .args(["profile", "list", "--json"])
        .output()
        .unwrap();
    let views: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(views[0]["name"], "CLI profile");
    assert_eq!(views[0]["secret"], "inKeychain");
    let account =
        SecretKey::ProfilePassword(views[0]["id"].as_str().unwrap().to_string()).account();
    assert!(secret_tool_lookup(&account).is_some());
    assert_eq!(files_containing(&dir, password), Vec::<String>::new());

    let removed = tidepool(&dir)
        .args(["profile", "remove", "CLI profile"])
        .output()
        .unwrap();
    assert!(
        removed.status.success(),
        "{}",
        String::from_utf8_lossy(&removed.stderr)
    );
    assert_eq!(secret_tool_lookup(&account), None);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn without_a_keychain_nothing_is_saved_and_ask_each_time_still_works() {
    let db = TestDb::new(harness::plain(), "profile_nokeychain");
    let dir = harness::temp_dir("profile_nokeychain");
    let password = db.cluster.superuser_password().expose();
    let url = format!(
        "postgres://postgres@127.0.0.1:{}/{}?sslmode=disable",
        db.cluster.port(),
        db.name
    );
    let no_bus = "unix:path=/nonexistent/tidepool-test-bus";

    let added = tidepool(&dir)
        .args(["profile", "add", "--name", "Nowhere", "--url", &url])
        .env("PGPASSWORD", password)
        .env("DBUS_SESSION_BUS_ADDRESS", no_bus)
        .output()
        .unwrap();
    assert!(!added.status.success());
    let stderr = String::from_utf8_lossy(&added.stderr);
    // The last line is the error; a first start may log before it that the test's 0755 folder was
    // made owner-only.
    let error = stderr.lines().last().unwrap_or_default();
    assert!(error.starts_with("error (Keychain):"), "{stderr}");
    assert!(error.contains("ask for the password each time"), "{stderr}");
    assert_eq!(files_containing(&dir, password), Vec::<String>::new());
    assert!(
        !dir.join("profiles.json").exists(),
        "a profile was saved although its password could not be"
    );

    // Asking each time needs no keychain, but an encrypted store's key does: refused, saying how to
    // keep the rows unencrypted instead, and nothing saved.
    let ask = [
        "profile",
        "add",
        "--name",
        "Asks",
        "--url",
        &url,
        "--ask-password",
    ];
    let added = tidepool(&dir)
        .args(ask)
        .env("DBUS_SESSION_BUS_ADDRESS", no_bus)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&added.stderr);
    assert!(!added.status.success(), "{stderr}");
    let error = stderr.lines().last().unwrap_or_default();
    assert!(error.starts_with("error (Keychain):"), "{stderr}");
    assert!(error.contains("--plain-store"), "{stderr}");
    assert!(!dir.join("profiles.json").exists(), "{stderr}");
    let added = tidepool(&dir)
        .args(ask)
        .arg("--plain-store")
        .env("DBUS_SESSION_BUS_ADDRESS", no_bus)
        .output()
        .unwrap();
    assert!(
        added.status.success(),
        "{}",
        String::from_utf8_lossy(&added.stderr)
    );
    let check = tidepool(&dir)
        .args(["check", "--profile", "Asks"])
        .env("PGPASSWORD", password)
        .env("DBUS_SESSION_BUS_ADDRESS", no_bus)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let profiles = Profiles::open(&dir);
    assert_eq!(
        profiles.get("Asks").unwrap().password,
        PasswordStorage::AskEachTime
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn the_neon_api_key_lives_in_the_keychain_only() {
    require_keyring_session();
    let _key = crate::neon::NEON_KEY
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let keychain = tidepool::secrets::Keychain::open().unwrap();
    let err = keychain
        .set_neon_api_key(&Secret::new("two words"))
        .unwrap_err();
    assert!(
        err.message().starts_with("Neon API key:"),
        "{}",
        err.message()
    );

    assert!(
        keychain
            .set_neon_api_key(&Secret::new("  napi_test_0123456789  "))
            .unwrap()
            .stored
    );
    assert!(keychain.neon_api_key_status().unwrap().stored);
    assert_eq!(
        secret_tool_lookup("neon-api-key").as_deref(),
        Some("napi_test_0123456789")
    );
    assert!(!keychain.remove_neon_api_key().unwrap().stored);
    assert_eq!(secret_tool_lookup("neon-api-key"), None);
}
