//! A throwaway PostgreSQL cluster started from the system's own binaries.
//!
//! The tests start their servers with it, and the desktop app's "Try it with a demo database" will too:
//! a data directory in a temporary folder, a free loopback port, `wal_level=logical`, and a superuser
//! whose random password is required for TCP logins (local socket logins are trusted, for administration).
//!
//! Invariants:
//! - Nothing outlives its owner. The server is stopped and its folder removed when the [`Cluster`] is
//!   dropped, when the process exits normally (an `atexit` hook, which also covers a panicking test), and
//!   the server is killed by the kernel when the process dies any other way (`PR_SET_PDEATHSIG`, set after
//!   dropping privileges so it survives `exec`). Folders left by a killed process are swept at the next
//!   start.
//! - Run as root, `initdb` and `postgres` refuse to start: they run as the `postgres` system user, which
//!   owns the folder.
//! - The superuser password never reaches a file or a process argument: it is set over the local socket.
//! - The folder is owner-only ([`crate::owner_only`]): other accounts can read neither the data nor the
//!   log, nor reach the trusted local socket.
//! - Linux only, said at compile time: the parent-death signal that stops the server when the app is
//!   killed is Linux's own (`prctl`); macOS and Windows would need another way (a kqueue watch, a job
//!   object), and without one a killed app would leave its server running.

#[cfg(not(target_os = "linux"))]
compile_error!(
    "src/app/cluster.rs (the demo database and the tests' PostgreSQL servers) supports Linux only; \
     see README.md, Platforms"
);

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Once, Weak};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::secrets::{random_hex, Secret};
use crate::source::connection::ConnectionSpec;
use crate::source::sql;
use crate::source::tls::SslMode;

/// How a cluster is configured.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// `wal_level`: `logical` for capture, `replica` to show a server that is not ready.
    pub wal_level: String,
    /// Serve TLS with a certificate signed by a fresh test authority.
    pub tls: bool,
    /// Refuse unencrypted TCP connections (`hostssl` lines only).
    pub tls_only: bool,
    /// The names and addresses the server certificate is valid for.
    pub tls_names: Vec<String>,
    /// Extra `postgresql.conf` settings.
    pub settings: Vec<(String, String)>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            wal_level: "logical".into(),
            tls: false,
            tls_only: false,
            tls_names: vec!["localhost".into(), "127.0.0.1".into()],
            settings: Vec::new(),
        }
    }
}

/// How [`Cluster::restart`] stops the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shutdown {
    /// `pg_ctl stop -m fast`: sessions are ended, a checkpoint is written.
    Fast,
    /// `pg_ctl stop -m immediate`: every process quits at once; start-up replays the WAL.
    Immediate,
}

/// A running throwaway cluster.
pub struct Cluster {
    inner: Arc<Inner>,
}

struct Inner {
    root: PathBuf,
    bin: PathBuf,
    port: u16,
    password: Secret,
    ca_pem: Option<String>,
    server: Mutex<Option<Server>>,
}

struct Server {
    pid: i32,
    keeper: std::thread::JoinHandle<()>,
}

const PREFIX: &str = "tidepool-cluster-";
const SUPERUSER: &str = "postgres";

static LIVE: Mutex<Vec<Weak<Inner>>> = Mutex::new(Vec::new());
static AT_EXIT: Once = Once::new();
static SEQUENCE: AtomicU32 = AtomicU32::new(0);

extern "C" fn stop_live_clusters() {
    let live = match LIVE.lock() {
        Ok(live) => live.clone(),
        Err(poisoned) => poisoned.into_inner().clone(),
    };
    for inner in live.iter().filter_map(Weak::upgrade) {
        inner.stop();
    }
}

impl Cluster {
    /// Creates and starts a cluster; blocks for the ~2 s that `initdb` and start-up take.
    pub fn start(options: ClusterOptions) -> Result<Cluster> {
        let bin = server_binaries()?;
        sweep_abandoned();
        let owner = ServerUser::detect()?;
        let root = std::env::temp_dir().join(format!(
            "{PREFIX}{}-{}",
            std::process::id(),
            SEQUENCE.fetch_add(1, Ordering::Relaxed)
        ));
        if root.exists() {
            std::fs::remove_dir_all(&root)?;
        }
        // The demo's rows and the server's log are nobody else's business.
        crate::owner_only::create_dir_all(&root)?;
        owner.chown(&root)?;
        let data = root.join("data");

        run(owner.command(&bin.join("initdb"), &root).args([
            "-D",
            path_str(&data)?,
            "-U",
            SUPERUSER,
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "-E",
            "UTF8",
            "--locale=C.UTF-8",
            "-N",
        ]))
        .map_err(|e| e.context("initdb"))?;

        let port = free_port()?;
        let mut conf = format!(
            "\n# tidepool throwaway cluster\nlisten_addresses = '127.0.0.1'\nport = {port}\n\
             unix_socket_directories = '{}'\nwal_level = {}\nmax_replication_slots = 64\n\
             max_wal_senders = 32\nfsync = off\nfull_page_writes = off\nsynchronous_commit = on\n",
            path_str(&root)?,
            options.wal_level
        );
        let mut ca_pem = None;
        if options.tls || options.tls_only {
            let material = TestCertificates::generate(&options.tls_names)?;
            for (name, pem) in [
                ("server.crt", &material.server_cert),
                ("server.key", &material.server_key),
            ] {
                let path = data.join(name);
                // PostgreSQL refuses a key others can read.
                crate::owner_only::create(&path)?.write_all(pem.as_bytes())?;
                owner.chown(&path)?;
            }
            conf.push_str("ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n");
            ca_pem = Some(material.ca_cert);
        }
        for (key, value) in &options.settings {
            conf.push_str(&format!("{key} = {value}\n"));
        }
        append(&data.join("postgresql.conf"), &conf)?;
        if options.tls_only {
            let hba_path = data.join("pg_hba.conf");
            let hba = std::fs::read_to_string(&hba_path)?;
            let hba: String = hba
                .lines()
                .map(|line| match line.strip_prefix("host ") {
                    Some(rest) => format!("hostssl {rest}\n"),
                    None => format!("{line}\n"),
                })
                .collect();
            std::fs::write(&hba_path, hba)?;
        }

        let inner = Arc::new(Inner {
            root: root.clone(),
            bin: bin.clone(),
            port,
            password: Secret::new(random_hex(18)?),
            ca_pem,
            server: Mutex::new(None),
        });
        // Registered before the server starts, so an exit during start-up still cleans up.
        {
            let mut live = LIVE.lock().unwrap_or_else(|p| p.into_inner());
            live.retain(|w| w.strong_count() > 0);
            live.push(Arc::downgrade(&inner));
        }
        AT_EXIT.call_once(|| {
            // SAFETY: registering a plain extern "C" function with no captured state.
            unsafe { libc::atexit(stop_live_clusters) };
        });
        let cluster = Cluster { inner };

        let log = crate::owner_only::create(&root.join("server.log"))?;
        owner.chown(&root.join("server.log"))?;
        drop(log);
        cluster.launch(&owner)?;
        cluster.psql(
            "postgres",
            &format!(
                "ALTER ROLE {} PASSWORD {};",
                sql::ident(SUPERUSER),
                // The verifier, not the password: the server logs statements it is told to.
                sql::literal(&cluster.inner.password.scram_verifier())
            ),
        )?;
        Ok(cluster)
    }

    /// The TCP port the server listens on (on 127.0.0.1).
    pub fn port(&self) -> u16 {
        self.inner.port
    }

    /// The folder holding the data directory, the Unix socket and the server log.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// The folder of the server's binaries (`pg_recvlogical`, `pgbench`, `psql`).
    pub fn bin_dir(&self) -> &Path {
        &self.inner.bin
    }

    /// The test authority's certificate (PEM), when the cluster serves TLS.
    pub fn ca_pem(&self) -> Option<&str> {
        self.inner.ca_pem.as_deref()
    }

    /// The superuser's password.
    pub fn superuser_password(&self) -> &Secret {
        &self.inner.password
    }

    /// A TCP connection spec for the superuser on `database`, with its password.
    pub fn spec(&self, database: &str) -> ConnectionSpec {
        let mut spec = ConnectionSpec::new("127.0.0.1", self.inner.port, SUPERUSER, database);
        spec.password = Some(self.inner.password.clone());
        spec.sslmode = SslMode::Disable;
        spec
    }

    /// A spec for the superuser over the Unix socket (trusted, no password): for administration.
    pub fn admin_spec(&self, database: &str) -> ConnectionSpec {
        let mut spec = ConnectionSpec::new(
            self.inner.root.to_string_lossy(),
            self.inner.port,
            SUPERUSER,
            database,
        );
        spec.sslmode = SslMode::Disable;
        spec
    }

    /// Runs SQL through `psql` over the local socket, stopping at the first error. The SQL goes through
    /// standard input, never the command line.
    pub fn psql(&self, database: &str, sql: &str) -> Result<String> {
        let mut child = Command::new(self.inner.bin.join("psql"))
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(&self.inner.root)
            .args([
                "-p",
                &self.inner.port.to_string(),
                "-U",
                SUPERUSER,
                "-d",
                database,
                "-f",
                "-",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| Error::internal(format!("starting psql: {e}")))?;
        child
            .stdin
            .take()
            .expect("stdin is piped")
            .write_all(sql.as_bytes())
            .map_err(|e| Error::internal(format!("writing to psql: {e}")))?;
        let output = child.wait_with_output()?;
        if !output.status.success() {
            return Err(Error::internal(format!(
                "psql on {database}: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            )));
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Starts the server on the cluster's data folder, its output appended to `server.log`.
    fn launch(&self, owner: &ServerUser) -> Result<()> {
        let root = &self.inner.root;
        let data = root.join("data");
        let log = std::fs::OpenOptions::new()
            .append(true)
            .open(root.join("server.log"))?;
        let mut postgres = owner.command(&self.inner.bin.join("postgres"), root);
        postgres
            .args(["-D", path_str(&data)?])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        self.inner.spawn_server(postgres)?;
        self.wait_until_ready(&data)
    }

    /// Stops the server as `shutdown` says and starts it again on the same data and port (the
    /// torture tests restart it under a running capture).
    pub fn restart(&self, shutdown: Shutdown) -> Result<()> {
        let server = self
            .inner
            .server
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(server) = server {
            let signal = match shutdown {
                Shutdown::Fast => nix::sys::signal::SIGINT,
                Shutdown::Immediate => nix::sys::signal::SIGQUIT,
            };
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(server.pid), signal);
            let _ = server.keeper.join();
        }
        self.launch(&ServerUser::detect()?)
    }

    /// Stops the server and removes its folder. Idempotent; also done on drop and at exit.
    pub fn stop(&self) {
        self.inner.stop();
    }

    fn wait_until_ready(&self, data: &Path) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let pid_file = data.join("postmaster.pid");
        loop {
            // The last line of postmaster.pid reads "ready" once the server accepts connections.
            if let Ok(text) = std::fs::read_to_string(&pid_file) {
                if text.lines().nth(7).map(str::trim) == Some("ready") {
                    return Ok(());
                }
            }
            if !self.inner.running() {
                let log =
                    std::fs::read_to_string(self.inner.root.join("server.log")).unwrap_or_default();
                return Err(Error::internal(format!(
                    "the PostgreSQL server exited during start-up:\n{log}"
                )));
            }
            if Instant::now() > deadline {
                return Err(Error::internal(
                    "the PostgreSQL server did not become ready within 60 s",
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.inner.stop();
    }
}

impl Inner {
    fn spawn_server(&self, mut command: Command) -> Result<()> {
        // SAFETY: prctl is async-signal-safe. It runs in the child after the uid change (std applies
        // uid/gid before pre_exec closures), so the kernel keeps the setting across exec.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGQUIT) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        // The parent-death signal fires when the *thread* that forked exits, so the server is forked by a
        // thread that lives exactly as long as the server: it waits for it.
        let (tx, rx) = std::sync::mpsc::channel();
        let keeper = std::thread::Builder::new()
            .name("postgres-keeper".into())
            .spawn(move || match command.spawn() {
                Ok(mut child) => {
                    let _ = tx.send(Ok(child.id() as i32));
                    let _ = child.wait();
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                }
            })?;
        let pid = rx
            .recv()
            .map_err(|_| Error::internal("the thread starting postgres died"))?
            .map_err(|e| Error::internal(format!("starting postgres: {e}")))?;
        *self.server.lock().unwrap_or_else(|p| p.into_inner()) = Some(Server { pid, keeper });
        Ok(())
    }

    fn running(&self) -> bool {
        let server = self.server.lock().unwrap_or_else(|p| p.into_inner());
        server.as_ref().is_some_and(|s| !s.keeper.is_finished())
    }

    fn stop(&self) {
        let server = self.server.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(server) = server {
            if !server.keeper.is_finished() {
                // Immediate shutdown: a throwaway cluster has nothing worth a checkpoint.
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(server.pid),
                    nix::sys::signal::SIGQUIT,
                );
            }
            let _ = server.keeper.join();
        }
        if self.root.exists() {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }
}

/// The user the server runs as: `postgres` when we are root, ourselves otherwise.
struct ServerUser {
    ids: Option<(u32, u32)>,
}

impl ServerUser {
    fn detect() -> Result<ServerUser> {
        if !nix::unistd::geteuid().is_root() {
            return Ok(ServerUser { ids: None });
        }
        let user = nix::unistd::User::from_name("postgres")
            .map_err(|e| Error::internal(format!("looking up the postgres user: {e}")))?
            .ok_or_else(|| {
                Error::internal("running as root needs the 'postgres' system user; install the postgresql package")
            })?;
        Ok(ServerUser {
            ids: Some((user.uid.as_raw(), user.gid.as_raw())),
        })
    }

    fn command(&self, program: &Path, cwd: &Path) -> Command {
        let mut command = Command::new(program);
        command.current_dir(cwd).env("LC_ALL", "C.UTF-8");
        if let Some((uid, gid)) = self.ids {
            command.uid(uid).gid(gid);
        }
        command
    }

    fn chown(&self, path: &Path) -> Result<()> {
        if let Some((uid, gid)) = self.ids {
            std::os::unix::fs::chown(path, Some(uid), Some(gid))?;
        }
        Ok(())
    }
}

/// Finds the newest installed server's binaries (`TIDEPOOL_PG_BIN` overrides).
pub fn server_binaries() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("TIDEPOOL_PG_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            bin.join("postgres").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin).ok_or_else(|| {
        Error::internal(
            "no PostgreSQL server found under /usr/lib/postgresql; install it with \
             `apt-get install postgresql` (or set TIDEPOOL_PG_BIN to its bin folder)",
        )
    })
}

/// Removes clusters whose owning process is gone (it was killed before it could clean up).
fn sweep_abandoned() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(PREFIX)) else {
            continue;
        };
        let Some(owner) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if Path::new(&format!("/proc/{owner}")).exists() {
            continue;
        }
        let pid_file = entry.path().join("data/postmaster.pid");
        if let Some(pid) = std::fs::read_to_string(pid_file)
            .ok()
            .and_then(|t| t.lines().next().and_then(|l| l.trim().parse::<i32>().ok()))
        {
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGQUIT);
        }
        let _ = std::fs::remove_dir_all(entry.path());
    }
}

fn run(command: &mut Command) -> Result<()> {
    let output = command
        .output()
        .map_err(|e| Error::internal(format!("starting {command:?}: {e}")))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(Error::internal(format!(
            "{} exited with {}: {}",
            command.get_program().to_string_lossy(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )))
    }
}

fn append(path: &Path, text: &str) -> Result<()> {
    let mut file = std::fs::OpenOptions::new().append(true).open(path)?;
    file.write_all(text.as_bytes())?;
    Ok(())
}

fn path_str(path: &Path) -> Result<&str> {
    path.to_str()
        .ok_or_else(|| Error::internal(format!("{} is not valid UTF-8", path.display())))
}

fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// A test certificate authority and a server certificate it signed for the given names (PEM): for
/// the test clusters, and for other servers the tests start (nats-server).
pub struct TestCertificates {
    /// The authority's certificate.
    pub ca_cert: String,
    /// The server's certificate.
    pub server_cert: String,
    /// The server's private key.
    pub server_key: String,
}

impl TestCertificates {
    /// A new authority and a certificate for `names` (host names or IP addresses).
    pub fn generate(names: &[String]) -> Result<TestCertificates> {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
        let tls_error =
            |e: rcgen::Error| Error::internal(format!("generating test certificates: {e}"));

        let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(tls_error)?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // A name of its own per cluster, as two real authorities would have.
        ca_params.distinguished_name.push(
            DnType::CommonName,
            format!("Tidepool test authority {}", random_hex(4)?),
        );
        let ca_key = KeyPair::generate().map_err(tls_error)?;
        let ca_cert = ca_params.self_signed(&ca_key).map_err(tls_error)?;

        let mut params = CertificateParams::new(names.to_vec()).map_err(tls_error)?;
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().map_or("localhost", String::as_str),
        );
        let key = KeyPair::generate().map_err(tls_error)?;
        let issuer = Issuer::new(ca_params, ca_key);
        let cert = params.signed_by(&key, &issuer).map_err(tls_error)?;
        Ok(TestCertificates {
            ca_cert: ca_cert.pem(),
            server_cert: cert.pem(),
            server_key: key.serialize_pem(),
        })
    }
}
