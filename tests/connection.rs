//! `test_connection` against real servers: the facts shown after "Test connection", and each failure
//! with the kind the UI matches on.

use std::time::{Duration, Instant};

use tidepool::secrets::Secret;
use tidepool::source::connection::{test_connection, ConnectionSpec, ReplicationRight};
use tidepool::source::tls::SslMode;
use tidepool::ErrorKind;

use crate::harness::{self, TestDb};

#[tokio::test]
async fn facts_are_read_from_the_server() {
    let db = TestDb::new(harness::plain(), "facts");
    let facts = test_connection(&db.spec()).await.unwrap();
    assert!(
        facts.server_version.starts_with("15."),
        "{}",
        facts.server_version
    );
    assert!((150000..160000).contains(&facts.server_version_num));
    assert_eq!(facts.current_user, "postgres");
    assert_eq!(facts.database, db.name);
    assert_eq!(facts.wal_level, "logical");
    assert_eq!(facts.replication, ReplicationRight::Superuser);
    assert!(!facts.tls);
    assert!(
        facts.round_trip_ms > 0.0 && facts.round_trip_ms < 1000.0,
        "{}",
        facts.round_trip_ms
    );
}

#[tokio::test]
async fn a_wrong_password_is_an_authentication_error() {
    let db = TestDb::new(harness::plain(), "wrongpw");
    let mut spec = db.spec();
    spec.password = Some(Secret::new("not-the-password"));
    let err = test_connection(&spec).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Authentication, "{err:?}");
    assert!(
        err.message().contains("password authentication failed"),
        "{}",
        err.message()
    );
    assert!(
        !err.message().contains("not-the-password"),
        "the password leaked into: {}",
        err.message()
    );
}

#[tokio::test]
async fn a_missing_password_is_an_authentication_error() {
    let db = TestDb::new(harness::plain(), "nopw");
    let mut spec = db.spec();
    spec.password = None;
    let err = test_connection(&spec).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Authentication, "{err:?}");
}

#[tokio::test]
async fn an_unreachable_port_is_a_connection_error_within_bounded_time() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut spec = ConnectionSpec::new("127.0.0.1", port, "postgres", "postgres");
    spec.connect_timeout = Duration::from_secs(3);
    let started = Instant::now();
    let err = test_connection(&spec).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Connection, "{err:?}");
    assert!(
        err.message().contains(&format!("127.0.0.1:{port}")),
        "{}",
        err.message()
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_silent_server_is_a_connection_error_after_the_timeout() {
    // Accepts TCP connections and never answers, as a firewall black hole or a hung proxy does.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let mut spec = ConnectionSpec::new("127.0.0.1", port, "postgres", "postgres");
    spec.sslmode = SslMode::Disable;
    spec.connect_timeout = Duration::from_secs(1);
    let started = Instant::now();
    let err = test_connection(&spec).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Connection, "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "took {:?}",
        started.elapsed()
    );
    hold.abort();
}

#[tokio::test]
async fn an_unknown_database_is_not_found() {
    let db = TestDb::new(harness::plain(), "nodb");
    let mut spec = db.spec();
    spec.database = "does not exist".into();
    let err = test_connection(&spec).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err:?}");
    assert!(
        err.message().contains("does not exist"),
        "{}",
        err.message()
    );
}

#[tokio::test]
async fn sslmode_require_against_a_server_without_tls_is_a_tls_error() {
    let db = TestDb::new(harness::plain(), "notls");
    let mut spec = db.spec();
    spec.sslmode = SslMode::Require;
    let err = test_connection(&spec).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Tls, "{err:?}");
    assert!(
        err.message().contains("sslmode=require"),
        "{}",
        err.message()
    );
}

#[tokio::test]
async fn sslmode_prefer_falls_back_to_plain_and_require_encrypts() {
    let plain = TestDb::new(harness::plain(), "prefer");
    let mut spec = plain.spec();
    spec.sslmode = SslMode::Prefer;
    assert!(!test_connection(&spec).await.unwrap().tls);

    let tls = TestDb::new(harness::tls(), "require");
    for mode in [SslMode::Prefer, SslMode::Require] {
        let mut spec = tls.spec();
        spec.sslmode = mode;
        assert!(test_connection(&spec).await.unwrap().tls, "{mode}");
    }
}

#[tokio::test]
async fn a_tls_only_server_refuses_sslmode_disable_clearly() {
    let db = TestDb::new(harness::tls_only(), "hostssl");
    let mut spec = db.spec();
    spec.sslmode = SslMode::Disable;
    let err = test_connection(&spec).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Tls, "{err:?}");
    assert!(
        err.message().contains("use sslmode=require"),
        "{}",
        err.message()
    );
    spec.sslmode = SslMode::Require;
    assert!(test_connection(&spec).await.unwrap().tls);
}

#[tokio::test]
async fn replication_rights_are_reported_with_their_basis() {
    let db = TestDb::new(harness::plain(), "rights");
    let plain = db.role("app", "", "app-pw");
    let facts = test_connection(&plain).await.unwrap();
    assert_eq!(facts.replication, ReplicationRight::None);
    assert!(!facts.replication.allowed());
    assert_eq!(facts.current_user, plain.user);

    let replicator = db.role("cdc", "REPLICATION", "cdc-pw");
    assert_eq!(
        test_connection(&replicator).await.unwrap().replication,
        ReplicationRight::Attribute
    );

    // Neon's roles get REPLICATION through membership in neon_superuser.
    let group = harness::unique("neon_superuser");
    db.sql(&format!(
        "CREATE ROLE {} NOLOGIN REPLICATION;",
        tidepool::source::sql::ident(&group)
    ));
    let member = db.role("member", "", "member-pw");
    db.sql(&format!(
        "GRANT {} TO {};",
        tidepool::source::sql::ident(&group),
        tidepool::source::sql::ident(&member.user)
    ));
    assert_eq!(
        test_connection(&member).await.unwrap().replication,
        ReplicationRight::Membership { role: group }
    );
}
