//! The test harness: process-wide throwaway clusters (plain, TLS, TLS-only, `wal_level=replica`) started
//! on first use, and a fresh database per test. The engine's [`Cluster`] stops and removes each cluster
//! when the test binary exits, also after a panic, and the kernel kills the servers if it is killed.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

use tidepool::app::cluster::{Cluster, ClusterOptions};
use tidepool::source::connection::ConnectionSpec;
use tidepool::source::sql;

fn shared(
    cell: &'static OnceLock<Cluster>,
    options: impl FnOnce() -> ClusterOptions,
) -> &'static Cluster {
    cell.get_or_init(|| Cluster::start(options()).expect("starting a throwaway PostgreSQL cluster"))
}

/// A cluster with `wal_level=logical`, no TLS.
pub fn plain() -> &'static Cluster {
    static CELL: OnceLock<Cluster> = OnceLock::new();
    shared(&CELL, ClusterOptions::default)
}

/// A cluster with `wal_level=replica`: a server not ready for logical replication.
pub fn replica() -> &'static Cluster {
    static CELL: OnceLock<Cluster> = OnceLock::new();
    shared(&CELL, || ClusterOptions {
        wal_level: "replica".into(),
        ..Default::default()
    })
}

/// A cluster that keeps at most 1 MB of WAL for a slot (`max_slot_wal_keep_size`), so a test can
/// invalidate one; kept apart so no other test's slot is at risk.
pub fn small_wal() -> &'static Cluster {
    static CELL: OnceLock<Cluster> = OnceLock::new();
    shared(&CELL, || ClusterOptions {
        settings: vec![("max_slot_wal_keep_size".into(), "1MB".into())],
        ..Default::default()
    })
}

/// A cluster that offers TLS with a certificate from its own test authority.
pub fn tls() -> &'static Cluster {
    static CELL: OnceLock<Cluster> = OnceLock::new();
    shared(&CELL, || ClusterOptions {
        tls: true,
        ..Default::default()
    })
}

/// A cluster that refuses unencrypted TCP connections.
pub fn tls_only() -> &'static Cluster {
    static CELL: OnceLock<Cluster> = OnceLock::new();
    shared(&CELL, || ClusterOptions {
        tls: true,
        tls_only: true,
        ..Default::default()
    })
}

/// A TLS cluster whose certificate names only `db.invalid`: its authority is right, its name is not.
pub fn tls_wrong_name() -> &'static Cluster {
    static CELL: OnceLock<Cluster> = OnceLock::new();
    shared(&CELL, || ClusterOptions {
        tls: true,
        tls_names: vec!["db.invalid".into()],
        ..Default::default()
    })
}

/// A folder of a test's own under the system's temp folder, removed by the caller.
pub fn temp_dir(prefix: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "tidepool-test-{}-{}",
        unique(prefix),
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).expect("creating a temp folder");
    dir
}

/// Writes a cluster's test authority to a PEM file in `dir`.
pub fn ca_file(cluster: &Cluster, dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("root.crt");
    std::fs::write(&path, cluster.ca_pem().expect("a TLS cluster")).expect("writing the CA file");
    path
}

/// A unique name for a test's objects (databases, roles), readable in a server log.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!("{prefix}_{}", N.fetch_add(1, Ordering::Relaxed))
}

/// Waits up to 30 s for `ok`, then fails naming `what`.
pub async fn until(what: &str, mut ok: impl FnMut() -> bool) {
    for _ in 0..600 {
        if ok() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

/// Every status a run reported, oldest first.
pub type Statuses = std::sync::Arc<std::sync::Mutex<Vec<tidepool::app::run::RunStatus>>>;

/// Starts profile `id`'s run in `runs` as the app does, and waits until it streams with each of
/// `collections` backfilled; returns what it reported.
pub async fn start_backfilled(
    runs: &tidepool::app::run::Runs,
    profiles: &tidepool::app::profile::Profiles,
    id: &str,
    collections: &[&str],
) -> Statuses {
    let seen: Statuses = Default::default();
    let log = seen.clone();
    runs.start(
        profiles,
        id,
        std::sync::Arc::new(move |s: &tidepool::app::run::RunStatus| {
            log.lock().unwrap().push(s.clone())
        }),
    )
    .await
    .unwrap();
    until("the backfill", || {
        seen.lock().unwrap().iter().any(|s| {
            s.state == tidepool::app::run::RunState::Streaming
                && collections
                    .iter()
                    .all(|c| s.backfills.get(*c).is_some_and(|p| p.done))
        })
    })
    .await;
    seen
}

/// A database of a test's own on `cluster`.
pub struct TestDb {
    pub cluster: &'static Cluster,
    pub name: String,
}

impl TestDb {
    /// Creates a fresh database named after `prefix`.
    pub fn new(cluster: &'static Cluster, prefix: &str) -> TestDb {
        let name = unique(prefix);
        cluster
            .psql(
                "postgres",
                &format!("CREATE DATABASE {};", sql::ident(&name)),
            )
            .expect("CREATE DATABASE");
        TestDb { cluster, name }
    }

    /// A superuser connection spec over TCP with the password.
    pub fn spec(&self) -> ConnectionSpec {
        self.cluster.spec(&self.name)
    }

    /// Runs SQL as the superuser in this database.
    pub fn sql(&self, sql: &str) -> String {
        self.cluster.psql(&self.name, sql).expect("test SQL")
    }

    /// The server's current WAL insert position: every transaction committed so far ends at or before it.
    pub fn current_lsn(&self) -> tidepool::source::pgoutput::Lsn {
        self.sql("SELECT pg_current_wal_lsn();")
            .trim()
            .parse()
            .expect("an LSN")
    }

    /// A profile form for this database as the superuser (password not included), with its own slot
    /// and publication named after the database.
    pub fn profile_draft(&self, name: &str) -> tidepool::app::profile::ProfileDraft {
        tidepool::app::profile::ProfileDraft {
            name: name.into(),
            address: format!("127.0.0.1:{}", self.cluster.port()),
            user: "postgres".into(),
            database: self.name.clone(),
            sslmode: tidepool::source::tls::SslMode::Disable,
            slot: Some(self.name.clone()),
            publication: Some(format!("{}_pub", self.name)),
            ..Default::default()
        }
    }

    /// Creates a login role with `attributes` (e.g. `REPLICATION`) and returns a spec that logs in as it.
    pub fn role(&self, prefix: &str, attributes: &str, password: &str) -> ConnectionSpec {
        let role = unique(prefix);
        self.sql(&format!(
            "CREATE ROLE {} LOGIN {attributes} PASSWORD {};",
            sql::ident(&role),
            sql::literal(password)
        ));
        let mut spec = self.spec();
        spec.user = role;
        spec.password = Some(tidepool::secrets::Secret::new(password));
        spec
    }
}
