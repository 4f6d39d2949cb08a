//! Desktop end-to-end tests: the real app (UI built in, `custom-protocol`) in a real window, driven
//! through tauri-driver and WebKitWebDriver, against a real PostgreSQL cluster.
//!
//! Needs a display (the test command runs Xvfb) and `tauri-driver` (on PATH or in `TAURI_DRIVER`).
//! Screenshots of the window after each case go to `artifacts/e2e/` (or `TIDEPOOL_ARTIFACTS`).

use std::path::PathBuf;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use tidepool::cluster::{Cluster, ClusterOptions};

/// One app window at a time: tauri-driver and WebKitWebDriver serve one session.
static SERIAL: Mutex<()> = Mutex::new(());

fn cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(|| Cluster::start(ClusterOptions::default()).expect("starting PostgreSQL"))
}

fn artifacts() -> PathBuf {
    let dir = std::env::var_os("TIDEPOOL_ARTIFACTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../artifacts"))
        .join("e2e");
    std::fs::create_dir_all(&dir).expect("creating the artifacts folder");
    dir
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A running tauri-driver in a process group of its own. Stopped with SIGTERM first (SIGKILL would leave
/// WebKitWebDriver on its port), then the whole group is killed: WebKitWebDriver does not take the app
/// down with it, and a failed test must not leave a window behind.
struct Driver {
    child: Child,
    port: u16,
}

impl Driver {
    fn start() -> Driver {
        assert!(
            std::env::var_os("DISPLAY").is_some() || std::env::var_os("WAYLAND_DISPLAY").is_some(),
            "the desktop end-to-end tests need a display: run them through the README's test command, \
             which starts Xvfb"
        );
        let program = std::env::var_os("TAURI_DRIVER").unwrap_or_else(|| "tauri-driver".into());
        let port = free_port();
        let child = Command::new(&program)
            .args(["--port", &port.to_string(), "--native-port", &free_port().to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {program:?} (install it with `cargo install tauri-driver`): {e}"));
        Driver { child, port }
    }

    async fn session(&self) -> Client {
        // fantoccini's rustls build enables two crypto providers; the session is plain HTTP on loopback,
        // so which one is installed does not matter, only that one is.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut capabilities = serde_json::Map::new();
        capabilities.insert("browserName".into(), "wry".into());
        capabilities.insert(
            "tauri:options".into(),
            serde_json::json!({ "application": env!("CARGO_BIN_EXE_tidepool-desktop") }),
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match ClientBuilder::rustls()
                .expect("rustls")
                .capabilities(capabilities.clone())
                .connect(&format!("http://127.0.0.1:{}", self.port))
                .await
            {
                Ok(client) => return client,
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(e) => panic!("no WebDriver session within 30 s: {e}"),
            }
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        use nix::sys::signal::{kill, killpg, Signal};
        let group = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = kill(group, Signal::SIGTERM);
        let _ = self.child.wait();
        let _ = killpg(group, Signal::SIGKILL);
    }
}

fn by_test_id(id: &str) -> String {
    format!("[data-testid=\"{id}\"]")
}

async fn fill(client: &Client, id: &str, value: &str) {
    let field = client
        .wait()
        .at_most(Duration::from_secs(20))
        .for_element(Locator::Css(&by_test_id(id)))
        .await
        .unwrap_or_else(|e| panic!("waiting for field {id}: {e:?}"));
    field.clear().await.unwrap_or_else(|e| panic!("clearing {id}: {e:?}"));
    field.send_keys(value).await.unwrap_or_else(|e| panic!("typing into {id}: {e:?}"));
}

async fn text_of(client: &Client, id: &str) -> String {
    let element = client
        .wait()
        .at_most(Duration::from_secs(20))
        .for_element(Locator::Css(&by_test_id(id)))
        .await
        .unwrap_or_else(|e| panic!("waiting for {id}: {e}"));
    element.text().await.unwrap()
}

async fn screenshot(client: &Client, name: &str) {
    let png = client.screenshot().await.expect("screenshot");
    std::fs::write(artifacts().join(format!("{name}.png")), png).expect("writing the screenshot");
}

async fn fill_connection_form(client: &Client, password: &str, database: &str) {
    fill(client, "address", &format!("127.0.0.1:{}", cluster().port())).await;
    fill(client, "user", "postgres").await;
    fill(client, "password", password).await;
    fill(client, "database", database).await;
    client.find(Locator::Css(&by_test_id("test-connection"))).await.unwrap().click().await.unwrap();
}

fn fresh_database(name: &str) -> String {
    cluster().psql("postgres", &format!("CREATE DATABASE {};", tidepool::sql::ident(name))).unwrap();
    name.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_connection_shows_the_servers_facts() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let database = fresh_database("e2e_facts");
    let driver = Driver::start();
    let client = driver.session().await;

    let password = cluster().superuser_password().expose().to_string();
    fill_connection_form(&client, &password, &database).await;
    let version = text_of(&client, "fact-server-version").await;
    let wal_level = text_of(&client, "fact-wal-level").await;
    let db = text_of(&client, "fact-database").await;
    screenshot(&client, "connection-facts").await;
    client.close().await.unwrap();

    assert!(version.starts_with("15."), "server version shown: {version}");
    assert_eq!(wal_level, "logical");
    assert_eq!(db, database);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_shows_an_authentication_error() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let database = fresh_database("e2e_wrong_password");
    let driver = Driver::start();
    let client = driver.session().await;

    fill_connection_form(&client, "definitely-wrong", &database).await;
    let kind = text_of(&client, "connection-error-kind").await;
    let message = text_of(&client, "connection-error-message").await;
    let page = client.source().await.unwrap();
    screenshot(&client, "connection-wrong-password").await;
    client.close().await.unwrap();

    assert_eq!(kind, "Authentication");
    assert!(message.contains("password authentication failed"), "{message}");
    assert!(!page.contains("definitely-wrong"), "the typed password is in the page's markup");
}
