//! Export to Estuary Flow and Sequin ([`tidepool::app::export`]) from a profile that really captured: the
//! files parse, use only fields the other engine accepts, give it a slot of its own, carry no
//! secret, and Estuary's collection schemas accept every document Tidepool stored.

use std::collections::BTreeMap;

use serde_json::Value as Json;
use tidepool::app::consumers::{ConsumerStore, SecretHeader};
use tidepool::app::export::{of_profile, Engine, ESTUARY_PASSWORD_PLACEHOLDER};
use tidepool::app::profile::Profiles;
use tidepool::app::run::Runs;
use tidepool::binding::Binding;
use tidepool::deliver::consumer::{Action, ConsumerSpec, Destination, Mode, Pull, Start, Webhook};
use tidepool::secrets::Secret;

use crate::harness::{self, TestDb};

/// Fields of `source-postgres`'s endpoint config and of its `advanced` section (estuary/connectors),
/// and the top-level fields of a `flow.yaml` capture and collection (estuary/flow `models`).
const ESTUARY_CONFIG: &[&str] = &[
    "address",
    "user",
    "database",
    "credentials",
    "networkTunnel",
    "advanced",
];
const ESTUARY_ADVANCED: &[&str] = &[
    "publicationName",
    "slotName",
    "watermarksTable",
    "sslmode",
    "backfill_chunk_size",
    "skip_backfills",
];
const ESTUARY_CAPTURE: &[&str] = &["endpoint", "bindings", "autoDiscover", "interval", "shards"];
const ESTUARY_COLLECTION: &[&str] = &["key", "schema", "writeSchema", "readSchema", "projections"];

/// Fields of Sequin's `sequin.yaml` (its config reference).
const SEQUIN_TOP: &[&str] = &[
    "account",
    "api_tokens",
    "databases",
    "http_endpoints",
    "functions",
    "sinks",
];
const SEQUIN_DATABASE: &[&str] = &[
    "name",
    "hostname",
    "port",
    "database",
    "username",
    "password",
    "slot",
    "publication",
];
const SEQUIN_ENDPOINT: &[&str] = &["name", "url", "headers", "encrypted_headers"];
const SEQUIN_SINK: &[&str] = &[
    "name",
    "database",
    "source",
    "actions",
    "filter",
    "batch_size",
    "max_retry_count",
    "destination",
];

fn keys_within(value: &Json, allowed: &[&str], what: &str) {
    let map = value
        .as_object()
        .unwrap_or_else(|| panic!("{what} is not a map: {value}"));
    for key in map.keys() {
        assert!(
            allowed.contains(&key.as_str()),
            "{what} has a field the engine refuses: {key}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capture_exports_to_estuary_and_sequin_without_secrets_or_its_slot() {
    let db = TestDb::new(harness::plain(), "export");
    db.sql(
        "CREATE TABLE orders (id int PRIMARY KEY, status text NOT NULL, total numeric(10,2),
                              placed timestamptz, tags text[], ratio float8);
         INSERT INTO orders VALUES (1, 'new', 10, now(), '{a,b}', 0.5), (2, 'paid', NULL, NULL, NULL, NULL);
         CREATE TABLE events (at timestamptz, what text);
         ALTER TABLE events REPLICA IDENTITY FULL;
         INSERT INTO events VALUES (now(), 'started');",
    );
    let dir = harness::temp_dir("export_profiles");
    let profiles = Profiles::open(&dir);
    let password = db.cluster.superuser_password().clone();
    let id = profiles
        .save(None, db.profile_draft("Shop Prod"), Some(password.clone()))
        .unwrap()
        .profile
        .id;
    let unpublished = of_profile(&profiles, &id, Engine::Estuary).unwrap_err();
    assert_eq!(unpublished.kind(), tidepool::ErrorKind::InvalidInput);
    assert!(unpublished.message().contains("publish"), "{unpublished}");

    let mut renamed = Binding::new("public", "orders");
    renamed.collection = "shop/orders".into();
    profiles
        .publish(&id, vec![renamed, Binding::new("public", "events")], vec![])
        .await
        .unwrap();
    let runs = Runs::default();
    harness::start_backfilled(&runs, &profiles, &id, &["shop/orders", "public/events"]).await;

    let consumers = ConsumerStore::of_profile(&profiles, &id).unwrap();
    let header_value = "Bearer never-in-an-export-7f3a";
    consumers
        .add(
            ConsumerSpec {
                name: "orders-hook".into(),
                collections: vec!["shop/orders".into()],
                actions: vec![Action::Insert, Action::Update, Action::Read],
                filter: Some("record.status == \"paid\"".into()),
                mode: Mode::Changes,
                start: Start::Now,
                group_by: vec![],
                destination: Destination::Webhook(Webhook {
                    url: "http://127.0.0.1:9/hook".into(),
                    headers: BTreeMap::from([("X-Team".to_string(), "ops".to_string())]),
                    secret_headers: vec!["Authorization".into()],
                    batch_size: Some(10),
                    timeout_ms: 5_000,
                    max_retries: Some(5),
                    max_in_flight: 2,
                }),
            },
            vec![SecretHeader {
                name: "Authorization".into(),
                value: Secret::new(header_value),
            }],
            None,
        )
        .unwrap();
    consumers
        .add(
            ConsumerSpec {
                name: "events-pull".into(),
                collections: vec!["public/events".into()],
                actions: vec![],
                filter: None,
                mode: Mode::Rows,
                start: Start::Beginning,
                group_by: vec![],
                destination: Destination::Pull(Pull::default()),
            },
            vec![],
            None,
        )
        .unwrap();
    let profile = profiles.get(&id).unwrap();

    // Estuary Flow.
    let flow = of_profile(&profiles, &id, Engine::Estuary).unwrap();
    assert_eq!(flow.file_name, "flow.yaml");
    std::fs::write("/tmp/flow.yaml", &flow.text).unwrap();
    assert!(!flow.text.contains(password.expose()), "no password");
    let catalog: Json = serde_norway::from_str(&flow.text).expect("flow.yaml parses");
    keys_within(&catalog, &["captures", "collections"], "the catalog");
    let captures = catalog["captures"].as_object().unwrap();
    assert_eq!(captures.len(), 1);
    let (capture_name, capture) = captures.iter().next().unwrap();
    assert!(capture_name.ends_with("/source-postgres"), "{capture_name}");
    keys_within(capture, ESTUARY_CAPTURE, "the capture");
    let connector = &capture["endpoint"]["connector"];
    assert_eq!(connector["image"], "ghcr.io/estuary/source-postgres:v3");
    let config = &connector["config"];
    keys_within(config, ESTUARY_CONFIG, "the endpoint config");
    keys_within(&config["advanced"], ESTUARY_ADVANCED, "advanced");
    assert_eq!(
        config["address"],
        format!("{}:{}", profile.host, profile.port)
    );
    assert_eq!(config["user"], profile.user.as_str());
    assert_eq!(config["credentials"]["auth_type"], "UserPassword");
    assert_eq!(
        config["credentials"]["password"],
        ESTUARY_PASSWORD_PLACEHOLDER
    );
    assert_eq!(
        config["advanced"]["publicationName"],
        profile.publication.as_str()
    );
    assert_ne!(
        config["advanced"]["slotName"],
        profile.slot.as_str(),
        "never Tidepool's own slot"
    );
    let bindings = capture["bindings"].as_array().unwrap();
    let targets: BTreeMap<String, String> = bindings
        .iter()
        .map(|b| {
            (
                format!(
                    "{}.{}",
                    b["resource"]["namespace"].as_str().unwrap(),
                    b["resource"]["stream"].as_str().unwrap()
                ),
                b["target"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(
        targets["public.orders"].ends_with("/shop/orders"),
        "renamed: {targets:?}"
    );
    assert!(
        targets["public.events"].ends_with("/public/events"),
        "{targets:?}"
    );
    // The keyed collection with its key and schema; the keyless one is left to `flowctl discover`
    // and said so.
    let collections = catalog["collections"].as_object().unwrap();
    let orders = &collections[&targets["public.orders"]];
    keys_within(orders, ESTUARY_COLLECTION, "a collection");
    assert_eq!(orders["key"], serde_json::json!(["/id"]));
    assert_eq!(orders["schema"]["required"], serde_json::json!(["id"]));
    assert_eq!(orders["schema"]["properties"]["id"]["type"], "integer");
    assert!(!collections.contains_key(&targets["public.events"]));
    assert!(
        flow.text
            .contains(&format!("{}: it has no key", targets["public.events"])),
        "{}",
        flow.text
    );
    assert!(flow.text.contains("slot of its own"), "{}", flow.text);
    // Every document Tidepool stored for the collection is valid under the exported schema.
    let validator = jsonschema::validator_for(&orders["schema"]).expect("a valid JSON Schema");
    let store = tidepool::store::Store::open_existing(&profiles.store_dir(&id).unwrap())
        .unwrap()
        .unwrap();
    let rows = store.rows("shop/orders", 100).unwrap();
    assert_eq!(rows.len(), 2);
    for row in &rows {
        let errors: Vec<String> = validator.iter_errors(row).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{row} is refused: {errors:?}");
    }
    drop(store);

    // Sequin.
    let sequin = of_profile(&profiles, &id, Engine::Sequin).unwrap();
    assert_eq!(sequin.file_name, "sequin.yaml");
    std::fs::write("/tmp/sequin.yaml", &sequin.text).unwrap();
    for secret in [password.expose(), header_value] {
        assert!(!sequin.text.contains(secret), "a secret in sequin.yaml");
    }
    let config: Json = serde_norway::from_str(&sequin.text).expect("sequin.yaml parses");
    keys_within(&config, SEQUIN_TOP, "sequin.yaml");
    let database = &config["databases"][0];
    keys_within(database, SEQUIN_DATABASE, "a database");
    assert_eq!(database["name"], "Shop Prod");
    assert_eq!(database["password"], "${SHOP_PROD_PASSWORD}");
    assert_ne!(database["slot"]["name"], profile.slot.as_str());
    assert_eq!(database["slot"]["create_if_not_exists"], true);
    assert_eq!(
        database["publication"]["name"],
        profile.publication.as_str()
    );
    let endpoint = &config["http_endpoints"][0];
    keys_within(endpoint, SEQUIN_ENDPOINT, "an http endpoint");
    assert_eq!(endpoint["url"], "http://127.0.0.1:9/hook");
    assert_eq!(endpoint["headers"]["X-Team"], "ops");
    assert_eq!(
        endpoint["encrypted_headers"]["Authorization"],
        "${ORDERS_HOOK_AUTHORIZATION}"
    );
    let sinks = config["sinks"].as_array().unwrap();
    assert_eq!(sinks.len(), 2);
    for sink in sinks {
        keys_within(sink, SEQUIN_SINK, "a sink");
    }
    let hook = sinks.iter().find(|s| s["name"] == "orders-hook").unwrap();
    assert_eq!(
        hook["source"]["include_tables"],
        serde_json::json!(["public.orders"])
    );
    assert_eq!(hook["actions"], serde_json::json!(["insert", "update"]));
    assert_eq!(hook["batch_size"], 10);
    assert_eq!(hook["max_retry_count"], 5);
    assert_eq!(hook["destination"]["type"], "webhook");
    assert_eq!(hook["destination"]["http_endpoint"], endpoint["name"]);
    let pull = sinks.iter().find(|s| s["name"] == "events-pull").unwrap();
    assert_eq!(pull["destination"]["type"], "sequin_stream");
    // What Sequin cannot express is said, not dropped silently.
    for said in [
        "record.status == \"paid\"",
        "rows mode",
        "does not sign",
        "unchanged_toast",
    ] {
        assert!(
            sequin.text.contains(said),
            "{said} not said:\n{}",
            sequin.text
        );
    }

    // The command line writes the same file.
    let output = dir.join("sequin.yaml");
    let cli = std::process::Command::new(env!("CARGO_BIN_EXE_tidepool"))
        .args(["export", "sequin", "--profile", "Shop Prod", "--output"])
        .arg(&output)
        .env("TIDEPOOL_DATA_DIR", &dir)
        .output()
        .unwrap();
    assert!(
        cli.status.success(),
        "{}",
        String::from_utf8_lossy(&cli.stderr)
    );
    assert_eq!(std::fs::read_to_string(&output).unwrap(), sequin.text);
    let unknown = std::process::Command::new(env!("CARGO_BIN_EXE_tidepool"))
        .args(["export", "kafka", "--profile", "Shop Prod"])
        .env("TIDEPOOL_DATA_DIR", &dir)
        .output()
        .unwrap();
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("use estuary or sequin"));

    runs.stop_all().await;
}
