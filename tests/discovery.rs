//! Discovery against a real server: keys (primary, unique-index fallback, none), partitioned tables as
//! one unit, hostile names, privileges, and JSON Schemas that validate the documents actually captured.

use serde_json::Value as Json;
use tidepool::source::connection::connect;
use tidepool::source::discovery::{discover, DiscoveredTable, KeySource};

use crate::capture::Source;

fn find<'a>(tables: &'a [DiscoveredTable], name: &str) -> &'a DiscoveredTable {
    tables
        .iter()
        .find(|t| t.collection.name == name)
        .unwrap_or_else(|| panic!("{name} not discovered"))
}

#[tokio::test]
async fn tables_become_collections_with_keys_schemas_and_sizes() {
    let source = Source::new(
        "disc",
        r#"CREATE TABLE composite (a text, b int, v text, PRIMARY KEY (b, a));
           CREATE TABLE fallback (id int NOT NULL, maybe int, v text);
           CREATE UNIQUE INDEX fallback_maybe ON fallback (maybe);
           CREATE UNIQUE INDEX fallback_z_id ON fallback (id);
           CREATE TABLE keyless (v text);
           CREATE TABLE events (id int, at date, PRIMARY KEY (id, at)) PARTITION BY RANGE (at);
           CREATE TABLE events_2024 PARTITION OF events FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
           CREATE SCHEMA "My Schema";
           CREATE TABLE "My Schema"."Ta;ble ""x""" ("sélect" int PRIMARY KEY, "a/b~c" text);
           CREATE TABLE hidden (id int PRIMARY KEY);
           INSERT INTO composite SELECT g::text, g, 'v' FROM generate_series(1, 100) g;
           ANALYZE composite;"#,
    );
    source.db.sql("DROP PUBLICATION tidepool_pub; CREATE PUBLICATION tidepool_pub FOR TABLE composite, keyless;");
    // A role that may not read `hidden` does not see it.
    let reader = source.db.role("reader", "", "reader-pw");
    source.db.sql(&format!(
        "GRANT USAGE ON SCHEMA public, \"My Schema\" TO {0}; GRANT SELECT ON composite, fallback, keyless, events, \"My Schema\".\"Ta;ble \"\"x\"\"\" TO {0};",
        tidepool::source::sql::ident(&reader.user)
    ));
    let client = connect(&reader).await.unwrap();
    let tables = discover(&client, Some("tidepool_pub")).await.unwrap();
    let names: Vec<&str> = tables.iter().map(|t| t.collection.name.as_str()).collect();
    assert_eq!(
        names,
        vec![
            "My_Schema/Ta_ble__x_",
            "public/composite",
            "public/events",
            "public/fallback",
            "public/keyless"
        ]
    );

    let composite = find(&tables, "public/composite");
    assert_eq!(
        (composite.key.clone(), composite.key_source),
        (
            vec!["b".to_string(), "a".to_string()],
            KeySource::PrimaryKey
        )
    );
    assert_eq!(composite.collection.key, vec!["/b", "/a"]);
    assert_eq!(composite.estimated_rows, Some(100));
    assert!(composite.size_bytes > 0 && composite.in_publication);
    assert_eq!(
        composite.collection.schema["required"],
        serde_json::json!(["b", "a"])
    );
    assert_eq!(
        composite.collection.schema["properties"]["v"]["description"],
        "(source type: nullable text)"
    );
    assert_eq!(
        composite.collection.schema["properties"]["v"]["type"],
        serde_json::json!(["string", "null"])
    );

    // The unique index over a nullable column does not qualify; the one over a NOT NULL column does.
    let fallback = find(&tables, "public/fallback");
    assert_eq!(
        (fallback.key.clone(), fallback.key_source),
        (vec!["id".to_string()], KeySource::UniqueIndex)
    );
    assert_eq!(fallback.key_index.as_deref(), Some("fallback_z_id"));
    assert!(!fallback.in_publication);

    let keyless = find(&tables, "public/keyless");
    assert_eq!(keyless.key_source, KeySource::None);
    assert!(keyless.collection.key.is_empty());

    let events = find(&tables, "public/events");
    assert!(events.partitioned);
    assert!(
        !names.contains(&"public/events_2024"),
        "a partition was listed on its own"
    );

    let hostile = find(&tables, "My_Schema/Ta_ble__x_");
    assert_eq!(hostile.key, vec!["sélect"]);
    assert_eq!(
        hostile.collection.schema["properties"]["a/b~c"]["type"],
        serde_json::json!(["string", "null"])
    );
}

#[tokio::test]
async fn the_discovered_schemas_validate_the_captured_documents() {
    let source = Source::new(
        "disc_validate",
        "CREATE TYPE mood AS ENUM ('sad', 'happy');
         CREATE TABLE t (id int8 PRIMARY KEY, i int4, b bool, r real, d float8, n numeric, tx text, j jsonb,
           by bytea, u uuid, dt date, tm time, ts timestamp, tstz timestamptz, iv interval, ai int4[],
           an int4[][], m mood, mo money);",
    );
    source.db.sql(
        "INSERT INTO t VALUES (1, 2, true, 'NaN', 1.5, 1.25, 'x', '{\"a\": 1}', '\\x01', gen_random_uuid(), '2024-01-01',
           '01:02:03', '2024-01-01 00:00:00', now(), '1 day', '{1,NULL}', '{{1,2},{3,4}}', 'sad', 1);
         INSERT INTO t (id) VALUES (2);
         UPDATE t SET i = 3 WHERE id = 1;
         DELETE FROM t WHERE id = 2;",
    );
    source.catch_up().await;
    let client = connect(&source.db.spec()).await.unwrap();
    let tables = discover(&client, None).await.unwrap();
    let schema = &find(&tables, "public/t").collection.schema;
    let validator = jsonschema::validator_for(schema).expect("a valid JSON Schema");
    let changes = source.changes("public/t");
    assert_eq!(changes.len(), 4);
    for doc in changes.iter().filter(|d| d["_meta"]["op"] != "d") {
        let errors: Vec<String> = validator
            .iter_errors(doc)
            .map(|e| format!("{e} at {}", e.instance_path()))
            .collect();
        assert!(errors.is_empty(), "{doc} does not validate: {errors:?}");
    }
    // A schema must also reject what does not fit: a string where an integer belongs.
    let mut wrong: Json = changes[0].clone();
    wrong["i"] = Json::String("three".into());
    assert!(!validator.is_valid(&wrong));
}

#[test]
fn the_command_line_discovers_as_text_and_json() {
    let source = Source::new(
        "disc_cli",
        "CREATE TABLE t (id int PRIMARY KEY, v text); CREATE TABLE nokey (v text);",
    );
    let url = format!(
        "postgres://postgres@127.0.0.1:{}/{}?sslmode=disable",
        source.db.cluster.port(),
        source.db.name
    );
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_tidepool"))
            .args(args)
            .env(
                "PGPASSWORD",
                source.db.cluster.superuser_password().expose(),
            )
            .output()
            .unwrap()
    };
    let text = run(&["discover", "--url", &url, "--publication", "tidepool_pub"]);
    assert!(
        text.status.success(),
        "{}",
        String::from_utf8_lossy(&text.stderr)
    );
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("public/t\tprimary key (id);"), "{text}");
    assert!(
        text.contains("public/nokey\tno key: captured as changes keyed by position"),
        "{text}"
    );
    let json = run(&["discover", "--url", &url, "--json"]);
    let tables: Json = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(tables[1]["collection"]["key"], serde_json::json!(["/id"]));
    assert_eq!(
        tables[1]["collection"]["schema"]["$schema"],
        "https://json-schema.org/draft/2020-12/schema"
    );
}
