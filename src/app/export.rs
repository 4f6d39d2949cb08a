//! Export: the capture handed to the engines Neon's guides send people to when one laptop is not
//! enough, without redoing the setup. Estuary Flow gets a `flow.yaml` (its PostgreSQL capture, its
//! bindings, and a collection per table with its key and schema), Sequin a `sequin.yaml` (the
//! database, and the consumers as sinks).
//!
//! Invariants:
//! - No secret is written. The database password and secret header values are placeholders the user
//!   fills in (`${VAR}` for Sequin, which interpolates them; a marked string for Estuary, whose
//!   `flowctl` encrypts secrets at publish).
//! - The other engine never gets Tidepool's slot: two readers of one slot would each confirm what the
//!   other has not read, and changes would be lost to one of them. It gets a slot of its own.
//! - Every field written is one the other engine accepts (the field lists of Estuary's `models` crate
//!   and `source-postgres`, and of Sequin's config reference); what it cannot express (a CEL filter,
//!   the rows mode, signing) is said in a comment at the top of the file, with what it does
//!   differently.

use serde::Serialize;
use serde_json::{json, Map, Value as Json};

use crate::app::profile::Profile;
use crate::binding::Definition;
use crate::deliver::consumer::{Action, ConsumerSpec, Destination, Mode};
use crate::error::{Error, Result};
use crate::store::CollectionSpec;

/// The engine an export is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, Serialize, ts_rs::TS)]
#[serde(rename_all = "camelCase")]
pub enum Engine {
    /// Estuary Flow (`flow.yaml`).
    Estuary,
    /// Sequin (`sequin.yaml`).
    Sequin,
}

impl std::str::FromStr for Engine {
    type Err = Error;

    fn from_str(s: &str) -> Result<Engine> {
        match s {
            "estuary" | "flow" => Ok(Engine::Estuary),
            "sequin" => Ok(Engine::Sequin),
            other => Err(Error::invalid_input(
                "engine",
                format!("'{other}' is not an engine Tidepool exports to: use estuary or sequin"),
            )),
        }
    }
}

/// An export, ready to be saved or shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ts_rs::TS)]
#[serde(rename_all = "camelCase")]
pub struct ExportFile {
    /// The engine it is for.
    pub engine: Engine,
    /// The file name the engine expects (`flow.yaml`, `sequin.yaml`).
    pub file_name: String,
    /// The file's text: comments first, then the YAML.
    pub text: String,
}

/// What a capture is made of, as the exports read it.
#[derive(Debug, Clone)]
pub struct Capture<'a> {
    /// The profile it reads from.
    pub profile: &'a Profile,
    /// Its saved definition (publication, slot, bindings).
    pub definition: &'a Definition,
    /// Its collections as the store knows them (key and columns); a binding whose collection has not
    /// been stored yet has none.
    pub collections: &'a [CollectionSpec],
    /// Its consumers.
    pub consumers: &'a [ConsumerSpec],
}

/// The password placeholder in a `flow.yaml`: visibly not a password, and refused by the server if
/// published unchanged.
pub const ESTUARY_PASSWORD_PLACEHOLDER: &str = "REPLACE-WITH-THE-PASSWORD";

/// The slot Estuary's capture gets (its default), unless that is Tidepool's own.
const ESTUARY_SLOT: &str = "flow_slot";
/// The slot Sequin's database gets (the name its guide uses), unless that is Tidepool's own.
const SEQUIN_SLOT: &str = "sequin_slot";

/// A slot name for another engine: `preferred`, unless Tidepool's slot has that name.
fn other_slot(preferred: &str, ours: &str) -> String {
    if preferred == ours {
        format!("{preferred}_2")
    } else {
        preferred.to_string()
    }
}

/// The export of profile `id_or_name`'s capture for `engine`: its saved definition, the collections
/// its store holds and its consumers. What the app's Export buttons and `tidepool export` call.
pub fn of_profile(
    profiles: &crate::app::profile::Profiles,
    id_or_name: &str,
    engine: Engine,
) -> Result<ExportFile> {
    let profile = profiles.get(id_or_name)?;
    let store_dir = profiles.store_dir(id_or_name)?;
    let Some(store) = crate::store::Store::open_existing(&store_dir)? else {
        return Err(Error::invalid_input(
            "profile",
            format!(
                "profile '{}' has not captured yet: pick tables and publish before exporting",
                profile.name
            ),
        ));
    };
    let definition = Definition::load(&store)?.ok_or_else(|| {
        Error::invalid_input(
            "profile",
            format!(
                "profile '{}' has no saved capture: pick tables and publish before exporting",
                profile.name
            ),
        )
    })?;
    let mut collections = Vec::new();
    for binding in &definition.bindings {
        collections.extend(store.collection(&binding.collection)?);
    }
    drop(store);
    let consumers: Vec<ConsumerSpec> =
        crate::app::consumers::ConsumerStore::of_profile(profiles, id_or_name)?
            .list()?
            .into_iter()
            .map(|view| view.consumer.spec)
            .collect();
    export(
        &Capture {
            profile: &profile,
            definition: &definition,
            collections: &collections,
            consumers: &consumers,
        },
        engine,
    )
}

/// The export of `capture` for `engine`.
pub fn export(capture: &Capture<'_>, engine: Engine) -> Result<ExportFile> {
    if capture.definition.bindings.is_empty() {
        return Err(Error::invalid_input(
            "profile",
            format!(
                "profile '{}' captures no table yet: pick tables and publish before exporting",
                capture.profile.name
            ),
        ));
    }
    let (file_name, text) = match engine {
        Engine::Estuary => ("flow.yaml", estuary(capture)?),
        Engine::Sequin => ("sequin.yaml", sequin(capture)?),
    };
    Ok(ExportFile {
        engine,
        file_name: file_name.into(),
        text,
    })
}

/// YAML text of `value`, after `comments` (each line prefixed with `# `).
fn yaml(comments: &[String], value: &Json) -> Result<String> {
    let body = serde_norway::to_string(value)
        .map_err(|e| Error::internal(format!("export: writing YAML: {e}")))?;
    let mut text = String::new();
    for line in comments {
        if line.is_empty() {
            text.push_str("#\n");
        } else {
            text.push_str("# ");
            text.push_str(line);
            text.push('\n');
        }
    }
    text.push_str(&body);
    Ok(text)
}

/// An Estuary catalog name made of `name`'s parts: Flow allows letters, digits, `-`, `_` and `.`
/// between slashes, so anything else becomes `_`.
fn flow_name(name: &str) -> String {
    name.split('/')
        .map(|part| {
            part.chars()
                .map(|c| {
                    if c.is_alphanumeric() || matches!(c, '-' | '_' | '.') {
                        c
                    } else {
                        '_'
                    }
                })
                .collect::<String>()
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// The collection's schema and key for Estuary, or why it is left to `flowctl discover`.
fn flow_collection(spec: &CollectionSpec) -> std::result::Result<Json, String> {
    if spec.key.is_empty() {
        return Err("it has no key (Estuary keys it by its own rule)".into());
    }
    let mut properties = Map::new();
    let columns = spec.columns.as_array().cloned().unwrap_or_default();
    for column in &columns {
        let Some(name) = column.get("name").and_then(Json::as_str) else {
            continue;
        };
        let oid = column.get("typeOid").and_then(Json::as_u64).unwrap_or(0) as u32;
        let mut schema = crate::document::value::builtin(oid)
            .map(|kind| crate::source::discovery::value_schema(&kind))
            .unwrap_or_else(|| json!({}));
        let is_key = spec.key.iter().any(|k| k == name);
        if is_key {
            // Estuary allows only integer, string or boolean key locations.
            let ok = matches!(
                schema.get("type").and_then(Json::as_str),
                Some("integer" | "string" | "boolean")
            );
            if !ok {
                return Err(format!(
                    "its key column '{name}' is of a type Estuary cannot key on (only integers, strings and booleans)"
                ));
            }
        } else {
            // Whether the column is nullable is not stored: allow null.
            schema = crate::source::discovery::or_null(schema);
        }
        properties.insert(name.to_string(), schema);
    }
    for key in &spec.key {
        if !properties.contains_key(key) {
            return Err(format!("its key column '{key}' is not among its columns"));
        }
    }
    Ok(json!({
        "key": spec.key.iter().map(|k| crate::source::discovery::pointer(k)).collect::<Vec<_>>(),
        "schema": {
            "type": "object",
            "properties": properties,
            "required": spec.key,
        },
    }))
}

fn estuary(capture: &Capture<'_>) -> Result<String> {
    let profile = capture.profile;
    let definition = capture.definition;
    let prefix = format!("yourTenant/{}", flow_name(&profile.name));
    let slot = other_slot(ESTUARY_SLOT, &definition.slot);
    let mut bindings = Vec::new();
    let mut collections = Map::new();
    let mut left_out = Vec::new();
    for binding in &definition.bindings {
        let target = format!("{prefix}/{}", flow_name(&binding.collection));
        bindings.push(json!({
            "resource": {"namespace": binding.schema, "stream": binding.table},
            "target": target,
        }));
        let spec = capture
            .collections
            .iter()
            .find(|c| c.name == binding.collection);
        match spec.map(flow_collection) {
            Some(Ok(collection)) => {
                collections.insert(target, collection);
            }
            Some(Err(why)) => left_out.push(format!("{target}: {why}")),
            None => left_out.push(format!("{target}: Tidepool has not stored it yet")),
        }
    }
    let mut comments = vec![
        format!(
            "Estuary Flow catalog exported by Tidepool from profile '{}' ({}/{}).",
            profile.name, profile.host, profile.database
        ),
        String::new(),
        "Before `flowctl catalog publish`:".into(),
        format!("- Replace the prefix '{prefix}' with one your Estuary tenant owns."),
        format!(
            "- Replace the password placeholder with {}'s password (flowctl encrypts it at publish).",
            profile.user
        ),
        "- Estuary's servers must reach the database: allow their IP addresses (on Neon: IP Allow).".into(),
        String::new(),
        "What Estuary does differently from Tidepool:".into(),
        format!(
            "- It reads from a slot of its own, '{slot}', never Tidepool's ('{}'): both can run at once.",
            definition.slot
        ),
        format!(
            "- It backfills every table again itself, and keeps a watermarks table \
             (public.flow_watermarks) that must be writable and in the publication '{}'.",
            definition.publication
        ),
        "- Collection schemas here come from the column types Tidepool stored; `flowctl discover` \
         refines them (nullability, descriptions)."
            .into(),
    ];
    if !left_out.is_empty() {
        comments.push(String::new());
        comments.push(
            "Bound here, with the collection left to `flowctl discover` (run it before publishing):"
                .into(),
        );
        comments.extend(left_out.into_iter().map(|l| format!("- {l}")));
    }
    let address = format!("{}:{}", profile.host, profile.port);
    let catalog = json!({
        "captures": {
            format!("{prefix}/source-postgres"): {
                "endpoint": {
                    "connector": {
                        "image": "ghcr.io/estuary/source-postgres:v3",
                        "config": {
                            "address": address,
                            "user": profile.user,
                            "database": profile.database,
                            "credentials": {
                                "auth_type": "UserPassword",
                                "password": ESTUARY_PASSWORD_PLACEHOLDER,
                            },
                            "advanced": {
                                "publicationName": definition.publication,
                                "slotName": slot,
                                "sslmode": profile.sslmode.as_str(),
                            },
                        },
                    },
                },
                "bindings": bindings,
            },
        },
        "collections": collections,
    });
    yaml(&comments, &catalog)
}

/// An environment variable name made of `parts` (upper case, `_` for anything else).
fn env_name(parts: &[&str]) -> String {
    let joined = parts.join("_");
    let mut name: String = joined
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    if name.starts_with(|c: char| c.is_ascii_digit()) {
        name.insert(0, '_');
    }
    name
}

fn sequin(capture: &Capture<'_>) -> Result<String> {
    let profile = capture.profile;
    let definition = capture.definition;
    let slot = other_slot(SEQUIN_SLOT, &definition.slot);
    let password_variable = env_name(&[&profile.name, "password"]);
    let password = format!("${{{password_variable}}}");
    let table_of = |collection: &str| -> Option<String> {
        definition
            .bindings
            .iter()
            .find(|b| b.collection == collection)
            .map(|b| format!("{}.{}", b.schema, b.table))
    };
    let mut endpoints = Vec::new();
    let mut sinks = Vec::new();
    let mut variables = vec![password_variable];
    let mut differences = Vec::new();
    for consumer in capture.consumers {
        let tables: Vec<String> = consumer
            .collections
            .iter()
            .filter_map(|c| table_of(c))
            .collect();
        let mut sink = Map::new();
        sink.insert("name".into(), json!(consumer.name));
        sink.insert("database".into(), json!(profile.name));
        sink.insert("source".into(), json!({"include_tables": tables}));
        // Sequin delivers backfilled rows by its own backfill, not as a chosen action.
        let actions: Vec<&str> = consumer
            .actions
            .iter()
            .filter(|a| **a != Action::Read)
            .map(|a| a.as_str())
            .collect();
        if !actions.is_empty() {
            sink.insert("actions".into(), json!(actions));
        }
        if let Some(filter) = &consumer.filter {
            differences.push(format!(
                "- Sink '{}': Tidepool's CEL filter `{filter}` is not exported. Sequin filters with \
                 a filter function (`functions:`, Elixir); write one that keeps the same messages.",
                consumer.name
            ));
        }
        if consumer.mode == Mode::Rows {
            differences.push(format!(
                "- Sink '{}': Tidepool's rows mode (latest state per key) is not exported; Sequin \
                 delivers every change.",
                consumer.name
            ));
        }
        match &consumer.destination {
            Destination::Webhook(webhook) => {
                let endpoint = format!("{}-endpoint", consumer.name);
                let mut http = Map::new();
                http.insert("name".into(), json!(endpoint));
                http.insert("url".into(), json!(webhook.url));
                if !webhook.headers.is_empty() {
                    http.insert("headers".into(), json!(webhook.headers));
                }
                if !webhook.secret_headers.is_empty() {
                    let mut encrypted = Map::new();
                    for name in &webhook.secret_headers {
                        let variable = env_name(&[&consumer.name, name]);
                        encrypted.insert(name.clone(), json!(format!("${{{variable}}}")));
                        variables.push(variable);
                    }
                    http.insert("encrypted_headers".into(), Json::Object(encrypted));
                }
                endpoints.push(Json::Object(http));
                if let Some(size) = webhook.batch_size {
                    sink.insert("batch_size".into(), json!(size));
                }
                if let Some(retries) = webhook.max_retries {
                    sink.insert("max_retry_count".into(), json!(retries));
                }
                sink.insert(
                    "destination".into(),
                    json!({
                        "type": "webhook",
                        "http_endpoint": endpoint,
                        "batch": webhook.batch_size.is_some(),
                    }),
                );
                differences.push(format!(
                    "- Sink '{}': Sequin does not sign requests; receivers that verify Tidepool's \
                     Standard Webhooks signature must stop checking it.",
                    consumer.name
                ));
            }
            Destination::Nats(nats) => {
                // Sequin's NATS sink publishes to subjects of its own naming and its YAML fields are
                // not in the reference this export is checked against: listed, not guessed.
                differences.push(format!(
                    "- Consumer '{}' (NATS JetStream, {} on subjects {}) is not exported: add a NATS \
                     sink in Sequin's console. Sequin publishes to subjects of its own naming.",
                    consumer.name, nats.url, nats.subject
                ));
                continue;
            }
            Destination::Pull(_) => {
                sink.insert("destination".into(), json!({"type": "sequin_stream"}));
                differences.push(format!(
                    "- Sink '{}': pulled from Sequin's own server with a Sequin API token; its \
                     visibility timeout (ack_wait_ms) is set in Sequin's console, not here.",
                    consumer.name
                ));
            }
        }
        sinks.push(Json::Object(sink));
    }
    let mut comments = vec![
        format!(
            "Sequin configuration exported by Tidepool from profile '{}' ({}/{}).",
            profile.name, profile.host, profile.database
        ),
        String::new(),
        format!(
            "Secrets are ${{VAR}} placeholders Sequin reads from its environment: set {} before `sequin config apply`.",
            variables.join(", ")
        ),
        String::new(),
        "What Sequin does differently from Tidepool:".into(),
        format!(
            "- It reads from a slot of its own, '{slot}' (created if missing), never Tidepool's ('{}'). \
             It advances that slot only as far as its oldest undelivered message, so a sink that is \
             down holds WAL on the database.",
            definition.slot
        ),
        "- It backfills tables itself, per sink, when asked in its console.".into(),
        "- Unchanged TOAST values arrive as the string \"unchanged_toast\" unless the table has \
         REPLICA IDENTITY FULL; Tidepool fills them from its store."
            .into(),
        "- It names tables by schema and table; Tidepool's collection names are not used.".into(),
        format!(
            "- The database connects with TLS as Sequin sets it; Tidepool used sslmode={}.",
            profile.sslmode.as_str()
        ),
    ];
    comments.extend(differences);
    let mut config = Map::new();
    config.insert(
        "databases".into(),
        json!([{
            "name": profile.name,
            "hostname": profile.host,
            "port": profile.port,
            "database": profile.database,
            "username": profile.user,
            "password": password,
            "slot": {"name": slot, "create_if_not_exists": true},
            "publication": {"name": definition.publication, "create_if_not_exists": false},
        }]),
    );
    if !endpoints.is_empty() {
        config.insert("http_endpoints".into(), Json::Array(endpoints));
    }
    if !sinks.is_empty() {
        config.insert("sinks".into(), Json::Array(sinks));
    }
    yaml(&comments, &Json::Object(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_made_acceptable_to_each_engine() {
        assert_eq!(flow_name("public/order items"), "public/order_items");
        assert_eq!(env_name(&["prod db", "password"]), "PROD_DB_PASSWORD");
        assert_eq!(env_name(&["1st", "x-key"]), "_1ST_X_KEY");
        assert_eq!(other_slot("flow_slot", "flow_slot"), "flow_slot_2");
        assert_eq!(other_slot("flow_slot", "tidepool_slot"), "flow_slot");
        assert!("kafka".parse::<Engine>().is_err());
    }
}
