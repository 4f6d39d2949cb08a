//! SSH tunnels against a real OpenSSH server (Debian's openssh-server, started here on loopback with
//! keys generated here, public-key login only). The server runs in a mount namespace of its own whose
//! `/etc/hosts` names the harness cluster `db.tunnel.test`: only the bastion can resolve that name,
//! so a profile for it reaches the database through the tunnel or not at all.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tidepool::app::profile::{Profiles, SaveCheck};
use tidepool::secrets::Secret;
use tidepool::store::Store;
use tidepool::ErrorKind;

use crate::harness::{self, TestDb};
use crate::profiles::{files_containing, require_keyring_session};

/// The database's name as only the bastion resolves it.
pub(crate) const TUNNEL_ONLY_HOST: &str = "db.tunnel.test";
/// The client key's passphrase (the key is stored with it, both in the keychain only).
pub(crate) const PASSPHRASE: &str = "correct horse tunnel";

/// An sshd on a loopback port, stopped when dropped.
pub(crate) struct Sshd {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    /// The login (the user the tests run as).
    user: String,
}

fn ssh_keygen(path: &Path, passphrase: &str, comment: &str) {
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", passphrase, "-C", comment, "-f"])
        .arg(path)
        .stdin(Stdio::null())
        .status()
        .expect("running ssh-keygen (package openssh-client)");
    assert!(status.success(), "ssh-keygen failed");
}

/// `ssh-keygen -lf`'s SHA-256 fingerprint of a public key file, as a person would check it.
fn fingerprint(public: &Path) -> String {
    let out = Command::new("ssh-keygen")
        .args(["-l", "-E", "sha256", "-f"])
        .arg(public)
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    text.split_whitespace().nth(1).unwrap().to_string()
}

impl Sshd {
    pub(crate) fn start(prefix: &str) -> Sshd {
        assert!(
            Path::new("/usr/sbin/sshd").exists(),
            "sshd is not installed: script/bootstrap --test installs it (apt-get install openssh-server)"
        );
        assert_eq!(
            unsafe { libc::geteuid() },
            0,
            "the SSH tests need root (CI runs as root): sshd runs in a mount namespace of its own"
        );
        let dir = harness::temp_dir(prefix);
        ssh_keygen(&dir.join("host_key"), "", "bastion");
        ssh_keygen(&dir.join("client_key"), PASSPHRASE, "tidepool-test");
        std::fs::copy(dir.join("client_key.pub"), dir.join("authorized_keys")).unwrap();
        std::fs::write(
            dir.join("hosts"),
            format!("127.0.0.1 localhost\n127.0.0.1 {TUNNEL_ONLY_HOST}\n"),
        )
        .unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        std::fs::write(
            dir.join("sshd_config"),
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\nAuthorizedKeysFile {d}/authorized_keys\n\
                 PasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\n\
                 PermitRootLogin prohibit-password\nStrictModes no\nAllowTcpForwarding yes\nUsePAM no\n\
                 PidFile {d}/sshd.pid\nLogLevel VERBOSE\n",
                d = dir.display()
            ),
        )
        .unwrap();
        // sshd's privilege separation directory, made by its service unit where it is installed.
        std::fs::create_dir_all("/run/sshd").expect("creating /run/sshd (the tests run as root)");
        let user = String::from_utf8(Command::new("id").arg("-un").output().unwrap().stdout)
            .unwrap()
            .trim()
            .to_string();
        let mut sshd = Sshd {
            child: None,
            port,
            dir,
            user,
        };
        sshd.launch();
        sshd
    }

    pub(crate) fn launch(&mut self) {
        let log = std::fs::File::create(self.dir.join("sshd.log")).unwrap();
        // A private mount namespace: the bind mount of /etc/hosts is seen by sshd alone.
        let child = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
            .arg(r#"mount --bind "$1" /etc/hosts && exec /usr/sbin/sshd -D -e -f "$2""#)
            .arg("sh")
            .arg(self.dir.join("hosts"))
            .arg(self.dir.join("sshd_config"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("running unshare and sshd");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "sshd did not listen: {}",
                std::fs::read_to_string(self.dir.join("sshd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the server and every session it serves: each connection has a process of its own
    /// (re-executed with the same configuration file), which outlives the listener.
    pub(crate) fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // The sessions first (they retitle themselves, so they are found by parentage), then the
            // listener.
            for pid in descendants(child.id()) {
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub(crate) fn address(&self) -> String {
        format!("ssh://{}@127.0.0.1:{}", self.user, self.port)
    }

    pub(crate) fn client_key(&self) -> String {
        std::fs::read_to_string(self.dir.join("client_key")).unwrap()
    }

    pub(crate) fn host_key_line(&self) -> String {
        std::fs::read_to_string(self.dir.join("host_key.pub"))
            .unwrap()
            .trim()
            .to_string()
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Every process below `root`, read from /proc.
fn descendants(root: u32) -> Vec<u32> {
    let parents: Vec<(u32, u32)> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // pid (comm) state ppid …; comm may hold spaces and parentheses.
            let after = &stat[stat.rfind(')')? + 2..];
            let ppid = after.split_whitespace().nth(1)?.parse().ok()?;
            Some((pid, ppid))
        })
        .collect();
    let mut found = vec![root];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(
            parents
                .iter()
                .filter(|(_, p)| *p == parent)
                .map(|(c, _)| *c),
        );
        i += 1;
    }
    found.remove(0);
    found
}

/// A profile for the harness database named as only the bastion knows it, through `sshd`.
fn draft(db: &TestDb, sshd: &Sshd, name: &str) -> tidepool::app::profile::ProfileDraft {
    let mut draft = db.profile_draft(name);
    draft.address = format!("{TUNNEL_ONLY_HOST}:{}", db.cluster.port());
    draft.ssh_address = Some(sshd.address());
    draft.ssh_key = Some(Secret::new(sshd.client_key()));
    draft.ssh_passphrase = Some(Secret::new(PASSPHRASE));
    draft.encrypt_store = Some(false);
    draft
}

/// The host key is shown (fingerprint as `ssh-keygen -lf` prints it) and must be accepted before
/// anything goes through; once accepted, the profile checks, publishes, backfills and streams through
/// the tunnel from the command line, with the key and its passphrase in no file; a host key that
/// changed is refused; a bastion that is down is a connection error that names it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_reachable_only_through_a_bastion_is_checked_and_captured_through_the_tunnel() {
    require_keyring_session();
    let db = TestDb::new(harness::plain(), "ssh_tunnel");
    db.sql(
        "CREATE TABLE t (id int PRIMARY KEY, note text);
         INSERT INTO t SELECT g, 'before ' || g FROM generate_series(1, 100) g;",
    );
    let mut sshd = Sshd::start("ssh_tunnel");
    let data = harness::temp_dir("ssh_data");
    let profiles = Profiles::open(&data);
    let password = Some(db.cluster.superuser_password().clone());

    // Without the tunnel the name does not even resolve here.
    let mut direct = db.spec();
    direct.host = TUNNEL_ONLY_HOST.into();
    let err = tidepool::source::connection::test_connection(&direct)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Connection, "{err}");

    // Trust on first use: nothing is saved or sent before the host key is accepted.
    let err = profiles
        .save_checked(
            None,
            draft(&db, &sshd, "via-bastion"),
            password.clone(),
            SaveCheck::TestFirst,
        )
        .await
        .unwrap_err();
    let expected = fingerprint(&sshd.dir.join("host_key.pub"));
    assert_eq!(err.kind(), ErrorKind::HostKey, "{err}");
    assert!(err.message().contains(&expected), "{err}");
    assert!(err.message().contains("not accepted"), "{err}");
    assert!(profiles.list().unwrap().is_empty());
    let shown = profiles.ssh_host_key(&sshd.address()).await.unwrap();
    assert_eq!(shown.fingerprint, expected);
    assert!(
        tidepool::source::ssh::same_host_key(&shown.openssh, &sshd.host_key_line()).unwrap(),
        "{} vs {}",
        shown.openssh,
        sshd.host_key_line()
    );

    let mut accepted = draft(&db, &sshd, "via-bastion");
    accepted.ssh_host_key = Some(shown.openssh.clone());
    let view = profiles
        .save_checked(None, accepted, password.clone(), SaveCheck::TestFirst)
        .await
        .unwrap();
    let facts = profiles.test("via-bastion", None).await.unwrap();
    assert_eq!(facts.database, db.name);
    assert_eq!(facts.wal_level, "logical", "{facts:?}");

    // The command line captures through the same profile: publish, backfill, then stream.
    let tidepool = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_tidepool"))
            .args(args)
            .env("TIDEPOOL_DATA_DIR", &data)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "tidepool {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let until = db.current_lsn().to_string();
    tidepool(&[
        "capture",
        "--profile",
        "via-bastion",
        "--tables",
        "public.t",
        "--publish",
        "--stop-at-lsn",
        &until,
    ]);
    db.sql("INSERT INTO t VALUES (101, 'through the tunnel'); UPDATE t SET note = 'changed' WHERE id = 1;");
    let until = db.current_lsn().to_string();
    tidepool(&[
        "capture",
        "--profile",
        "via-bastion",
        "--stop-at-lsn",
        &until,
    ]);
    let store = Store::open(&data.join("stores").join(&view.profile.id)).unwrap();
    let rows = store.rows("public/t", 1000).unwrap();
    assert_eq!(rows.len(), 101);
    let changes = store.changes("public/t", 0, 1000).unwrap();
    let notes: Vec<String> = changes
        .iter()
        .filter(|(_, doc)| doc["_meta"]["source"]["snapshot"] != serde_json::json!(true))
        .map(|(_, doc)| doc["note"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(notes, vec!["through the tunnel", "changed"], "{changes:?}");
    let listed = tidepool(&["profile", "list"]);
    assert!(
        listed.contains(&format!("via {}", sshd.address())),
        "{listed}"
    );

    // A capture through the tunnel outlives the bastion going away: it reconnects, tunnel and all,
    // once the bastion is back, and the change made meanwhile arrives.
    let profiles_for_spec = profiles.clone();
    let spec = tokio::task::spawn_blocking(move || profiles_for_spec.spec("via-bastion", None))
        .await
        .unwrap()
        .unwrap();
    let resumed_store = harness::temp_dir("ssh_resumed");
    let stored = Arc::new(AtomicU64::new(0));
    let streaming = Arc::new(AtomicU64::new(0));
    let (counter, starts) = (stored.clone(), streaming.clone());
    let capture = tokio::spawn(tidepool::capture::run(tidepool::capture::CaptureOptions {
        spec,
        store_dir: resumed_store.clone(),
        publication: view.profile.publication.clone(),
        slot: format!("{}_again", db.name),
        create_slot: true,
        stop_at: None,
        observer: Some(tidepool::capture::Observer(Arc::new(
            move |f: &tidepool::capture::Flush| {
                starts.fetch_add(1, Ordering::Relaxed);
                counter.fetch_add(f.changes, Ordering::Relaxed);
            },
        ))),
        bindings: vec![tidepool::binding::Binding::new("public", "t")],
        backfill_progress: None,
    }));
    // Waits (90 s at most) until `$done` holds, failing if the capture ends first.
    macro_rules! wait_until {
        ($done:expr, $what:expr) => {{
            let deadline = Instant::now() + Duration::from_secs(90);
            while !$done {
                assert!(
                    !capture.is_finished(),
                    "the capture ended: {:?}",
                    capture.await
                );
                assert!(
                    Instant::now() < deadline,
                    "{} did not happen within 90 s",
                    $what
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }};
    }
    // Once it streams (the backfill is read), a new row can only arrive streamed.
    wait_until!(
        streaming.load(Ordering::Relaxed) > 0,
        "the start of the stream"
    );
    db.sql("INSERT INTO t VALUES (102, 'while the bastion is up');");
    wait_until!(
        stored.load(Ordering::Relaxed) > 0,
        "a change through the tunnel"
    );
    let before = stored.load(Ordering::Relaxed);
    sshd.stop();
    db.sql("INSERT INTO t VALUES (103, 'while the bastion is down');");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !capture.is_finished(),
        "the capture gave up: {:?}",
        capture.await
    );
    assert_eq!(stored.load(Ordering::Relaxed), before);
    sshd.launch();
    wait_until!(
        stored.load(Ordering::Relaxed) > before,
        "the arrival of the change made while the bastion was down"
    );
    capture.abort();
    let _ = capture.await;
    let resumed = Store::open(&resumed_store).unwrap();
    assert!(resumed
        .changes("public/t", 0, 1000)
        .unwrap()
        .iter()
        .any(|(_, doc)| doc["note"] == "while the bastion is down"));
    drop(resumed);
    db.sql(&format!(
        "SELECT pg_drop_replication_slot('{}_again');",
        db.name
    ));
    std::fs::remove_dir_all(&resumed_store).unwrap();

    // The key and its passphrase are in the keychain only.
    let key_body = sshd.client_key();
    let key_line = key_body.lines().nth(1).unwrap();
    assert!(files_containing(&data, key_line).is_empty());
    assert!(files_containing(&data, PASSPHRASE).is_empty());

    // A bastion whose host key changed is refused before anything is sent.
    let other = harness::temp_dir("ssh_other_key");
    ssh_keygen(&other.join("key"), "", "impostor");
    let impostor = std::fs::read_to_string(other.join("key.pub")).unwrap();
    profiles
        .accept_ssh_host_key("via-bastion", &impostor)
        .unwrap();
    let err = profiles.test("via-bastion", None).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::HostKey, "{err}");
    assert!(err.message().contains("changed"), "{err}");
    assert!(err.message().contains(&expected), "{err}");
    let out = Command::new(env!("CARGO_BIN_EXE_tidepool"))
        .args(["profile", "ssh-host-key", "--profile", "via-bastion"])
        .env("TIDEPOOL_DATA_DIR", &data)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&expected) && text.contains("DIFFERENT"),
        "{text}"
    );
    tidepool(&[
        "profile",
        "ssh-host-key",
        "--profile",
        "via-bastion",
        "--accept",
    ]);
    profiles.test("via-bastion", None).await.unwrap();

    // A bastion that is down: a connection error naming it.
    sshd.stop();
    let err = profiles.test("via-bastion", None).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Connection, "{err}");
    assert!(
        err.message().contains(&format!("127.0.0.1:{}", sshd.port)),
        "{err}"
    );

    tidepool(&["profile", "remove", "via-bastion"]);
    std::fs::remove_dir_all(other).unwrap();
    std::fs::remove_dir_all(data).unwrap();
}

/// A key the bastion does not know is refused as an authentication error that says where to add it;
/// a mangled key is refused when it is entered, naming the field and quoting none of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_the_bastion_refuses_is_an_authentication_error_and_a_bad_key_is_refused_on_entry() {
    require_keyring_session();
    let db = TestDb::new(harness::plain(), "ssh_refused");
    let sshd = Sshd::start("ssh_refused");
    let data = harness::temp_dir("ssh_refused_data");
    let profiles = Profiles::open(&data);
    let stranger = harness::temp_dir("ssh_stranger");
    ssh_keygen(&stranger.join("key"), "", "stranger");
    let mut draft = draft(&db, &sshd, "stranger");
    draft.ssh_key = Some(Secret::new(
        std::fs::read_to_string(stranger.join("key")).unwrap(),
    ));
    draft.ssh_passphrase = None;
    draft.ssh_host_key = Some(sshd.host_key_line());
    let err = profiles
        .save_checked(
            None,
            draft.clone(),
            Some(db.cluster.superuser_password().clone()),
            SaveCheck::TestFirst,
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Authentication, "{err}");
    assert!(err.message().contains("authorized_keys"), "{err}");

    // The right key without its passphrase, and a truncated key, are refused on entry.
    let mut locked = draft.clone();
    locked.ssh_key = Some(Secret::new(sshd.client_key()));
    let err = profiles.save(None, locked, None).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    assert!(err.message().contains("passphrase"), "{err}");
    let mut truncated = draft;
    let key = sshd.client_key();
    truncated.ssh_key = Some(Secret::new(&key[..key.len() / 2]));
    let err = profiles.save(None, truncated, None).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    assert!(err.message().contains("SSH private key"), "{err}");
    let body = key.lines().nth(1).unwrap();
    assert!(!err.message().contains(body), "{err}");
    assert!(profiles.list().unwrap().is_empty());
    std::fs::remove_dir_all(stranger).unwrap();
    let _ = std::fs::remove_dir_all(data);
}
