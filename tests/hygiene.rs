//! Secret hygiene over a whole session, the way a person would use Tidepool from the command line
//! (which shares the engine, the data folder and the keychain with the app): an owner profile with a
//! password, a capture role created by Setup with a generated password, a fix run as a table's owner
//! whose password is typed for that run only, a Neon API key used against
//! the (stand-in) Neon API, a webhook consumer with a secret header and its signing secret, a pull
//! consumer with the API token, and a capture that delivers to both, all through an SSH bastion
//! whose private key has a passphrase. Then every place a secret could
//! have leaked is searched for each one: every file of the data folder, everything the processes
//! printed at debug level, the server's log with every statement logged, and the command line and
//! environment of the running capture. Zero hits.
//!
//! Not covered here: the webview's storage (the desktop end-to-end suite searches the app's data
//! folder, which holds it, for the password it typed).

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tidepool::app::profile::{ProfileDraft, Profiles};
use tidepool::secrets::{Keychain, Secret, SecretKey};

use crate::harness::{self, TestDb};

/// A `tidepool` command on `data_dir`, logging at debug level, with no password in its environment.
fn tidepool(data_dir: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tidepool"));
    command
        .env("TIDEPOOL_DATA_DIR", data_dir)
        .env("TIDEPOOL_LOG", "debug")
        .env_remove("PGPASSWORD")
        .env("PGPASSFILE", "/nonexistent");
    command
}

/// Runs a command (with `input` on its standard input), keeps everything it printed in `printed`, and
/// returns its standard output; fails the test if it failed.
fn run(command: &mut Command, input: Option<&str>, printed: &mut Vec<u8>) -> String {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    if let Some(input) = input {
        std::io::Write::write_all(&mut stdin, input.as_bytes()).unwrap();
    }
    drop(stdin);
    let output = child.wait_with_output().unwrap();
    printed.extend_from_slice(&output.stdout);
    printed.extend_from_slice(&output.stderr);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// A value no other test uses, long enough that a hit cannot be chance.
fn fresh(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{prefix}{}{nanos:x}", harness::unique("s"))
}

/// Every file under `dir`.
fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[allow(clippy::await_holding_lock)] // one keychain entry: tests take turns, each on its own runtime
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_of_a_whole_session_reaches_a_file_a_log_or_a_process() {
    assert!(
        std::env::var_os("DBUS_SESSION_BUS_ADDRESS").is_some(),
        "this test uses the real Secret Service: run it through script/keyring-session"
    );
    // The Neon key's keychain entry is one for the whole machine.
    let _neon = crate::neon::NEON_KEY
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let db = TestDb::new(harness::plain(), "hygiene");
    let dir = harness::temp_dir("hygiene");
    let unique = harness::unique("hyg");
    let mut printed = Vec::new();
    // Every statement of this database goes to the server's log, as a cautious DBA may have it.
    db.sql(&format!(
        "ALTER DATABASE {} SET log_statement = 'all';
         CREATE TABLE orders (id int PRIMARY KEY, note text);
         INSERT INTO orders VALUES (1, 'before');
         CREATE PUBLICATION {unique} FOR TABLE orders;",
        tidepool::source::sql::ident(&db.name)
    ));

    // The owner's profile, saved as the app saves it: the password, the SSH key and its passphrase go
    // to the keychain. The database is reachable only through the bastion, so every later command
    // goes through the tunnel.
    let sshd = crate::ssh::Sshd::start("hygiene_sshd");
    let ssh_key = sshd.client_key();
    let owner_password = db.cluster.superuser_password().expose().to_string();
    Profiles::open(&dir)
        .save(
            None,
            ProfileDraft {
                name: "Owner".into(),
                address: format!("{}:{}", crate::ssh::TUNNEL_ONLY_HOST, db.cluster.port()),
                user: "postgres".into(),
                database: db.name.clone(),
                publication: Some(unique.clone()),
                slot: Some(unique.clone()),
                ssh_address: Some(sshd.address()),
                ssh_host_key: Some(sshd.host_key_line()),
                ssh_key: Some(Secret::new(ssh_key.clone())),
                ssh_passphrase: Some(Secret::new(crate::ssh::PASSPHRASE)),
                ..Default::default()
            },
            Some(Secret::new(owner_password.clone())),
        )
        .unwrap();

    // Setup creates the capture role with a generated password, kept with a new profile.
    let role = format!("{unique}_capture");
    run(
        tidepool(&dir).args([
            "setup",
            "--profile",
            "Owner",
            "create-role",
            "--role",
            &role,
            "--save-as",
            "Capture",
        ]),
        None,
        &mut printed,
    );
    db.sql(&format!(
        "GRANT SELECT ON orders TO {};",
        tidepool::source::sql::ident(&role)
    ));
    let profiles = Profiles::open(&dir);
    let capture = profiles.get("Capture").unwrap();
    // The command line keeps a new role the way the app does: same bastion, same publication.
    assert_eq!(capture.user, role);
    assert_eq!(capture.publication, unique);
    assert_eq!(
        capture.ssh.as_ref().map(|s| s.address.clone()),
        Some(sshd.address())
    );
    let capture_id = capture.id;
    let role_password = Keychain::open()
        .unwrap()
        .get(&SecretKey::ProfilePassword(capture_id))
        .unwrap()
        .expect("the generated password in the keychain")
        .expose()
        .to_string();

    // A fix run as the table's owner, whose password is typed on standard input for this run only
    // (the role made with its SCRAM verifier, so not even that statement names the password).
    let entered = fresh("ownerpw_");
    let table_owner = format!("{unique}_owner");
    db.sql(&format!(
        "CREATE ROLE {owner} LOGIN PASSWORD {verifier}; ALTER TABLE orders OWNER TO {owner};",
        owner = tidepool::source::sql::ident(&table_owner),
        verifier = tidepool::source::sql::literal(&Secret::new(entered.clone()).scram_verifier())
    ));
    run(
        tidepool(&dir).args([
            "setup",
            "--profile",
            "Capture",
            "--as-user",
            &table_owner,
            "replica-identity-full",
            "--table",
            "public.orders",
        ]),
        Some(&format!("{entered}\n")),
        &mut printed,
    );
    assert_eq!(
        db.sql("SELECT relreplident FROM pg_class WHERE oid = 'orders'::regclass;")
            .trim(),
        "f"
    );

    // The Neon API key, typed on standard input and used against the API.
    let neon_key = fresh("napi_");
    let (neon_url, neon_seen) = crate::neon_api::serve(|seen| {
        let body = if seen.path.contains("/branches") {
            serde_json::json!({"branches": [{"id": "br-one", "name": "main", "default": true}]})
        } else {
            serde_json::json!({"projects": [{"id": "p-one", "name": "shop", "region_id": "aws-us-east-2"}]})
        };
        crate::neon_api::Answer::json(200, body)
    })
    .await;
    run(
        tidepool(&dir).args(["neon", "key"]),
        Some(&format!("{neon_key}\n")),
        &mut printed,
    );
    let projects = run(
        tidepool(&dir)
            .env("TIDEPOOL_NEON_API_URL", &neon_url)
            .args(["neon", "projects", "--json"]),
        None,
        &mut printed,
    );
    assert!(projects.contains("p-one"), "{projects}");
    assert!(neon_seen
        .lock()
        .unwrap()
        .iter()
        .all(|s| s.header("authorization") == Some(&format!("Bearer {neon_key}"))));

    // The first capture, as the new role: the slot, the backfill, then it stops.
    let lsn = db.current_lsn().to_string();
    run(
        tidepool(&dir).args([
            "capture",
            "--profile",
            "Capture",
            "--tables",
            "public.orders",
            "--create-slot",
            "--stop-at-lsn",
            &lsn,
        ]),
        None,
        &mut printed,
    );

    // A webhook consumer with a secret header, and a pull consumer.
    let header_value = fresh("Bearer hdr-");
    let received = Arc::new(crate::deliver::Received::default());
    let hook = crate::deliver::receiver(received.clone()).await;
    let consumer = |name: &str| {
        let mut command = tidepool(&dir);
        command.args([
            "consumer",
            "add",
            "--profile",
            "Capture",
            "--name",
            name,
            "--collection",
            "public/orders",
            "--start",
            "beginning",
        ]);
        command
    };
    run(
        consumer("hook").args(["--webhook", &hook, "--secret-header", "authorization"]),
        Some(&format!("{header_value}\n")),
        &mut printed,
    );
    run(consumer("app").arg("--pull"), None, &mut printed);
    let signing = run(
        tidepool(&dir).args(["consumer", "secret", "--profile", "Capture", "hook"]),
        None,
        &mut printed,
    )
    .trim()
    .to_string();
    let token = run(
        tidepool(&dir).args(["api-token", "--profile", "Capture"]),
        None,
        &mut printed,
    )
    .trim()
    .to_string();
    assert!(signing.starts_with("whsec_"), "{signing}");
    // Printing a secret on request is the one place it may appear: only the later output is searched
    // for these two.
    let printed_before_capture = printed.len();

    // The capture again: stream, deliver, serve the pull API.
    let log = dir.with_extension("capture.log");
    let mut command = tidepool(&dir);
    command.args(["capture", "--profile", "Capture"]);
    let (mut capture, listen) = crate::deliver::spawn_listening(command, &log);
    let pid = capture.0.id();
    db.sql("INSERT INTO orders VALUES (2, 'after');");
    let client = crate::deliver::http_client();
    let receive = format!("http://{listen}/api/http_pull_consumers/app/receive?batch_size=10");
    let started = Instant::now();
    let pulled = loop {
        if let Ok(r) = client.get(&receive).bearer_auth(&token).send().await {
            let body: serde_json::Value = r.json().await.unwrap();
            let data = body["data"].as_array().unwrap_or_else(|| {
                panic!(
                    "the pull API answered {body}; the capture's log:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                )
            });
            if !data.is_empty() {
                break body;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the pull API never delivered"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(pulled.to_string().contains("before"), "{pulled}");
    while received.accepted.lock().unwrap().len() < 2 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the webhook never received both rows"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(received
        .signed
        .lock()
        .unwrap()
        .iter()
        .all(
            |(headers, _)| headers.get("authorization").and_then(|v| v.to_str().ok())
                == Some(header_value.as_str())
        ));
    // The running capture's command line and environment.
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    // A graceful stop, so its last words are in the log too.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let stopped = Instant::now();
    while capture.0.try_wait().unwrap().is_none() {
        assert!(stopped.elapsed() < Duration::from_secs(30), "no stop");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let capture_log = std::fs::read(&log).unwrap();
    assert!(
        contains(&capture_log, "DEBUG"),
        "the capture logged nothing at debug level"
    );
    // A failure's output too: the role's password changed behind the profile's back.
    db.sql(&format!(
        "ALTER ROLE {} PASSWORD NULL;",
        tidepool::source::sql::ident(&role)
    ));
    let refused = tidepool(&dir)
        .args(["check", "--profile", "Capture"])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    printed.extend_from_slice(&refused.stdout);
    printed.extend_from_slice(&refused.stderr);
    let server_log = std::fs::read(db.cluster.root().join("server.log")).unwrap();
    assert!(
        contains(&server_log, &format!("ALTER ROLE \"{role}\" PASSWORD NULL")),
        "the server did not log this database's statements"
    );

    // The capture profile's store is encrypted; its key lives in the keychain only.
    let marker = walk(&dir)
        .into_iter()
        .find(|p| p.ends_with(tidepool::store::encryption::MARKER))
        .expect("an encrypted store");
    let key_id = tidepool::store::encryption::marker(marker.parent().unwrap())
        .unwrap()
        .unwrap()
        .key_id;
    let store_key = Keychain::open()
        .unwrap()
        .get(&SecretKey::StoreKey(key_id))
        .unwrap()
        .expect("the store key in the keychain")
        .expose()
        .to_string();

    // The private key's body, line by line (its first and last lines are its armour, not secret).
    let key_lines: Vec<&str> = ssh_key
        .lines()
        .filter(|l| !l.starts_with("-----") && l.len() >= 24)
        .collect();
    assert!(!key_lines.is_empty());
    let mut secrets = vec![
        ("the store's encryption key", store_key.as_str()),
        ("the SSH key's passphrase", crate::ssh::PASSPHRASE),
        ("the owner's password", owner_password.as_str()),
        ("the capture role's generated password", &role_password),
        ("an owner's password entered for one fix", &entered),
        ("the Neon API key", &neon_key),
        ("the webhook's secret header", &header_value),
        ("the webhook signing secret", &signing),
        ("the pull API token", &token),
    ];
    for line in &key_lines {
        secrets.push(("a line of the SSH private key", *line));
    }
    for (what, secret) in secrets {
        assert_eq!(
            crate::profiles::files_containing(&dir, secret),
            Vec::<String>::new(),
            "{what} in the data folder"
        );
        let printed_searched = if secret == signing || secret == token {
            &printed[printed_before_capture..]
        } else {
            &printed[..]
        };
        assert!(
            !contains(printed_searched, secret),
            "{what} in a command's output"
        );
        assert!(
            !contains(&capture_log, secret),
            "{what} in the capture's log"
        );
        assert!(!contains(&server_log, secret), "{what} in the server's log");
        assert!(
            !contains(&cmdline, secret),
            "{what} in the capture's arguments"
        );
        assert!(
            !contains(&environ, secret),
            "{what} in the capture's environment"
        );
    }

    // Removing the profiles removes their keychain entries.
    drop(capture);
    db.sql(&format!(
        "SELECT pg_drop_replication_slot('{unique}'); DROP OWNED BY {r}; DROP ROLE {r};",
        r = tidepool::source::sql::ident(&role)
    ));
    let _ = Keychain::open().unwrap().remove_neon_api_key();
    for profile in ["Capture", "Owner"] {
        run(
            tidepool(&dir).args(["profile", "remove", profile]),
            None,
            &mut Vec::new(),
        );
    }
    let _ = std::fs::remove_file(&log);
    std::fs::remove_dir_all(&dir).unwrap();
}
