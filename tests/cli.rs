//! The `tidepool check` command: the same facts as the form, as text or JSON; passwords never in argv.

use std::process::Command;

use crate::harness::{self, TestDb};

fn tidepool() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tidepool"));
    command
        .env_remove("PGPASSWORD")
        .env("PGPASSFILE", "/nonexistent");
    command
}

fn url(db: &TestDb) -> String {
    format!(
        "postgres://postgres@127.0.0.1:{}/{}?sslmode=disable",
        db.cluster.port(),
        db.name
    )
}

#[test]
fn check_prints_json_facts_with_the_password_from_the_environment() {
    let db = TestDb::new(harness::plain(), "cli_json");
    let output = tidepool()
        .args(["check", "--json", "--url", &url(&db)])
        .env("PGPASSWORD", db.cluster.superuser_password().expose())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let facts: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(facts["walLevel"], "logical");
    assert_eq!(facts["database"], db.name.as_str());
    assert_eq!(facts["replication"]["basis"], "superuser");
    assert!(facts["serverVersion"].as_str().unwrap().starts_with("15."));
}

#[test]
fn check_reads_the_password_file() {
    let db = TestDb::new(harness::plain(), "cli_pgpass");
    let dir = tempdir("pgpass");
    let file = dir.join("pgpass");
    std::fs::write(
        &file,
        format!(
            "127.0.0.1:{}:{}:postgres:{}\n",
            db.cluster.port(),
            db.name,
            db.cluster.superuser_password().expose()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let output = tidepool()
        .args(["check", "--url", &url(&db)])
        .env("PGPASSFILE", &file)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(text.contains("wal_level        logical"), "{text}");
    assert!(text.contains("may replicate    yes (superuser)"), "{text}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn check_refuses_a_password_in_the_url_and_reports_the_kind() {
    let output = tidepool()
        .args([
            "check",
            "--json",
            "--url",
            "postgres://u:secret@127.0.0.1:1/db",
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let error: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(error["error"]["kind"], "InvalidInput");
    let message = error["error"]["message"].as_str().unwrap();
    assert!(message.starts_with("--url:"), "{message}");
    assert!(!message.contains("secret"), "{message}");
}

#[test]
fn check_reports_a_wrong_password_as_authentication() {
    let db = TestDb::new(harness::plain(), "cli_auth");
    let output = tidepool()
        .args(["check", "--url", &url(&db)])
        .env("PGPASSWORD", "wrong")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.starts_with("error (Authentication):"), "{stderr}");
}

/// `tidepool capture` of `source`'s table into its store, the password in the environment.
fn capture_of(source: &crate::capture::Source) -> Command {
    let mut command = tidepool();
    command
        .args([
            "capture",
            "--url",
            &url(&source.db),
            "--store",
            &source.store.display().to_string(),
            "--publication",
            "tidepool_pub",
            "--slot",
            &source.slot,
        ])
        .env(
            "PGPASSWORD",
            source.db.cluster.superuser_password().expose(),
        );
    command
}

fn tempdir(prefix: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("tidepool-test-{prefix}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn a_huge_connect_timeout_is_refused_naming_it_instead_of_panicking() {
    let output = tidepool()
        .args([
            "check",
            "--url",
            "postgres://u@127.0.0.1:1/db?connect_timeout=18446744073709551615",
        ])
        .env("PGPASSWORD", "x")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1), "a panic exits 101");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.starts_with("error (InvalidInput): connect_timeout:"),
        "{stderr}"
    );
}

#[tokio::test]
async fn logs_carry_no_colour_escapes_and_preview_stops_quietly_at_a_closed_pipe() {
    use std::io::BufRead;
    let source =
        crate::capture::Source::new("cli_pipe", "CREATE TABLE t (id int PRIMARY KEY, v text);");
    source
        .db
        .sql("INSERT INTO t SELECT i, repeat('x', 100) FROM generate_series(1, 5000) i;");
    // Info lines through the log writer: a pipe gets plain text.
    let output = capture_of(&source)
        .args(["--stop-at-lsn", &source.db.current_lsn().to_string()])
        .env("TIDEPOOL_LOG", "tidepool=debug")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("DEBUG"), "no log line to check: {stderr}");
    assert!(
        !stderr.contains('\u{1b}'),
        "colour escapes in a pipe: {stderr:?}"
    );

    // `tidepool preview … | head -1`: the reader leaves after one line.
    let mut child = tidepool()
        .args([
            "preview",
            "--store",
            &source.store.display().to_string(),
            "public/t",
            "--limit",
            "5000",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.contains("\"id\":1"), "{first}");
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// One writer per store: while a `tidepool capture` runs, a second capture of the same store is
/// refused up front (Busy, naming the process), and the running one is undisturbed. Killed with
/// SIGKILL, the first leaves no lock behind: the next capture runs and stores every change once.
#[tokio::test]
async fn a_second_capture_of_one_store_is_refused_and_a_killed_one_leaves_no_lock() {
    let source = crate::capture::Source::new(
        "cli_one_writer",
        "CREATE TABLE t (id int PRIMARY KEY, v text);",
    );
    source.db.sql("INSERT INTO t VALUES (1, 'one');");
    let capture = |stop_at: Option<String>| {
        let mut command = capture_of(&source);
        if let Some(lsn) = stop_at {
            command.args(["--stop-at-lsn", &lsn]);
        }
        command
    };
    let mut first = capture(None)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    harness::until("the first capture stores row 1", || {
        source.rows_so_far("public/t").len() == 1
    })
    .await;

    let second = capture(Some(source.db.current_lsn().to_string()))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "{stderr}");
    assert!(stderr.contains("error (Busy)"), "{stderr}");
    assert!(
        stderr.contains(&format!("by process {}", first.id())),
        "{stderr}"
    );

    // The first is still capturing.
    source.db.sql("INSERT INTO t VALUES (2, 'two');");
    harness::until("the first capture stores row 2", || {
        source.rows_so_far("public/t").len() == 2
    })
    .await;

    first.kill().unwrap();
    first.wait().unwrap();
    source.db.sql("INSERT INTO t VALUES (3, 'three');");
    let third = capture(Some(source.db.current_lsn().to_string()))
        .output()
        .unwrap();
    assert!(
        third.status.success(),
        "{}",
        String::from_utf8_lossy(&third.stderr)
    );
    let ids: Vec<i64> = source
        .changes("public/t")
        .iter()
        .map(|d| d["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, [1, 2, 3], "each change once");
}
