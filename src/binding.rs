//! Bindings: which source tables a capture stores, under which collection names, and how each one
//! starts (its existing rows backfilled, or only new changes). Together with the publication and the
//! slot they form the capture's definition, which lives in the store next to the data it describes,
//! so the desktop app, the command line and a running capture all read the same one.
//!
//! Invariants:
//! - A definition is validated before it is saved: collection names follow [`validate_collection_name`],
//!   each table is bound once and each collection name is used once (a clash names both tables).
//! - A binding's table is its OID; its schema and table name are the last ones seen, kept current by
//!   the capture. Default names are unique among the tables named together and never reuse a name
//!   already taken ([`unique_collection_names`]).
//! - The definition is what the user asked for; what the capture has done about it (which bindings are
//!   live, which are being backfilled) is the capture's own state, kept apart
//!   ([`crate::capture`]). Editing the definition never touches captured data: a running capture
//!   notices the change at its next transaction boundary and acts on it.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::source::sql;
use crate::store::Store;

/// How a binding's collection starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, ts_rs::TS)]
#[serde(rename_all = "camelCase")]
#[ts(rename = "BindingMode")]
pub enum Mode {
    /// The table's existing rows are read in a snapshot that lines up with the stream, then its changes.
    #[default]
    Full,
    /// Only changes from now on; existing rows are not read.
    OnlyChanges,
}

/// One source table bound to one collection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ts_rs::TS)]
#[serde(rename_all = "camelCase")]
pub struct Binding {
    /// Source schema.
    pub schema: String,
    /// Source table.
    pub table: String,
    /// The collection's name in the store.
    pub collection: String,
    /// How the collection starts.
    #[serde(default)]
    pub mode: Mode,
    /// Raised by one to read the table again (a re-backfill), as Estuary's backfill counter.
    #[serde(default)]
    pub backfill: u32,
    /// The table's identity at the source (`pg_class.oid`, pgoutput's relation id). `schema` and
    /// `table` are its last known name: a renamed table keeps its binding, and a table dropped and
    /// created again under the same name is a different one. Filled in by the capture (from the name,
    /// for definitions saved before OIDs were recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oid: Option<u32>,
}

impl Binding {
    /// A fully backfilled binding under the default collection name.
    pub fn new(schema: &str, table: &str) -> Binding {
        Binding {
            schema: schema.into(),
            table: table.into(),
            collection: default_collection_name(schema, table),
            mode: Mode::Full,
            backfill: 0,
            oid: None,
        }
    }

    /// `"schema"."table"`, for messages and SQL.
    pub fn qualified(&self) -> String {
        format!("{}.{}", sql::ident(&self.schema), sql::ident(&self.table))
    }
}

/// What a capture stores: its publication and slot, and the tables it binds to collections.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ts_rs::TS)]
#[serde(rename_all = "camelCase")]
#[ts(rename = "CaptureDefinition")]
pub struct Definition {
    /// The connection profile the capture reads from, when it was made from one.
    #[serde(default)]
    pub profile: Option<String>,
    /// Publication to decode with.
    pub publication: String,
    /// Slot to stream from.
    pub slot: String,
    /// The bound tables.
    pub bindings: Vec<Binding>,
}

/// Where the definition lives in the store's meta table.
/// The store meta key holding the capture definition.
pub const META_KEY: &str = "definition";

impl Definition {
    /// Checks names: each collection name valid, each table and each collection bound once.
    pub fn validate(&self) -> Result<()> {
        if self.publication.is_empty() {
            return Err(Error::invalid_input("publication", "must not be empty"));
        }
        crate::source::slot::validate_name(&self.slot)?;
        let mut tables = HashSet::new();
        let mut collections: HashMap<&str, &Binding> = HashMap::new();
        for binding in &self.bindings {
            validate_collection_name(&binding.collection)?;
            if !tables.insert((&binding.schema, &binding.table)) {
                return Err(Error::invalid_input(
                    "bindings",
                    format!("{} is bound twice", binding.qualified()),
                ));
            }
            if let Some(other) = collections.insert(&binding.collection, binding) {
                return Err(Error::invalid_input(
                    "collection",
                    format!(
                        "'{}' is the name of two collections, of {} and of {}; each table needs its own: rename one",
                        binding.collection,
                        other.qualified(),
                        binding.qualified()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The binding of `schema.table`, if any.
    pub fn binding(&self, schema: &str, table: &str) -> Option<&Binding> {
        self.bindings
            .iter()
            .find(|b| b.schema == schema && b.table == table)
    }

    /// The definition saved in `store`, if one was.
    pub fn load(store: &Store) -> Result<Option<Definition>> {
        Definition::saved_text(store)?
            .as_deref()
            .map(Definition::parse)
            .transpose()
    }

    /// The saved definition's text as stored (a running capture compares texts to notice edits).
    pub fn saved_text(store: &Store) -> Result<Option<String>> {
        store.meta(META_KEY)
    }

    /// A definition from its saved text.
    pub fn parse(text: &str) -> Result<Definition> {
        serde_json::from_str(text).map_err(|e| {
            Error::internal(format!(
                "store: the saved capture definition is unreadable: {e}"
            ))
        })
    }

    /// Validates and saves the definition in `store` (in a transaction of its own; a running capture
    /// picks it up). Returns the text saved.
    pub fn save(&self, store: &mut Store) -> Result<String> {
        self.validate()?;
        let text = serde_json::to_string(self).map_err(Error::internal)?;
        store.put_meta(META_KEY, &text)?;
        Ok(text)
    }

    /// Loads the definition of the store in `dir`, for editing.
    pub fn load_from(dir: &Path) -> Result<Definition> {
        let store = Store::open(dir)?;
        Definition::load(&store)?.ok_or_else(|| {
            Error::new(
                crate::ErrorKind::NotFound,
                format!(
                    "{} holds no capture definition yet; publish one first (tidepool capture --tables …)",
                    dir.display()
                ),
            )
        })
    }
}

/// Longest collection name accepted.
pub const MAX_COLLECTION_NAME: usize = 512;

/// Collection names are `/`-separated parts of Unicode letters and digits, `-`, `_` and `.` (as
/// Estuary's), so they work as file names, URL paths and keys in every consumer.
pub fn validate_collection_name(name: &str) -> Result<()> {
    let fail = |why: &str| {
        Err(Error::invalid_input(
            "collection",
            format!("'{name}' {why}"),
        ))
    };
    if name.is_empty() {
        return fail("is empty; give the collection a name such as public/orders");
    }
    if name.chars().count() > MAX_COLLECTION_NAME {
        return fail(&format!("is longer than {MAX_COLLECTION_NAME} characters"));
    }
    for part in name.split('/') {
        if part.is_empty() {
            return fail("has an empty part: it must not start or end with '/' or contain '//'");
        }
        if part == "." || part == ".." {
            return fail("has a '.' or '..' part");
        }
        if let Some(bad) = part.chars().find(|c| !allowed(*c)) {
            return fail(&format!(
                "contains {bad:?}; use letters, digits, '-', '_', '.' and '/' between parts"
            ));
        }
    }
    Ok(())
}

fn allowed(c: char) -> bool {
    c.is_alphanumeric() || matches!(c, '-' | '_' | '.')
}

/// `schema/table`, with every character a collection name cannot hold replaced by `_`.
pub fn default_collection_name(schema: &str, table: &str) -> String {
    let part = |s: &str| -> String {
        let cleaned: String = s
            .chars()
            .map(|c| if allowed(c) { c } else { '_' })
            .collect();
        match cleaned.as_str() {
            "" => "_".into(),
            "." | ".." => cleaned.replace('.', "_"),
            _ => cleaned,
        }
    };
    format!("{}/{}", part(schema), part(table))
}

/// Default collection names for `tables` (schema, table), one per table, unique among themselves
/// and against `taken` (names already in use, which never change).
///
/// A table gets [`default_collection_name`] unless that name is taken or shared with another table of
/// `tables`. Of the tables sharing one, the one whose name needed no change (`order_items` beside
/// `"order items"`) keeps it; the others get `_` and eight hex digits of a hash of their exact name
/// (`public/order_items_ef0de76c` for `"order items"`). The suffix depends only on the table's own name, so the same set
/// of tables always maps the same way, whatever order they come in. Should a suffixed name still
/// collide, the error names both tables and asks for one to be given its own name.
pub fn unique_collection_names(
    tables: &[(String, String)],
    taken: &HashSet<String>,
) -> Result<Vec<String>> {
    let plain: Vec<String> = tables
        .iter()
        .map(|(s, t)| default_collection_name(s, t))
        .collect();
    let mut sharing: HashMap<&str, usize> = HashMap::new();
    for name in &plain {
        *sharing.entry(name.as_str()).or_default() += 1;
    }
    let mut chosen: Vec<String> = Vec::with_capacity(tables.len());
    let mut owner: HashMap<String, usize> = HashMap::new();
    for (i, ((schema, table), name)) in tables.iter().zip(&plain).enumerate() {
        let exact = *name == format!("{schema}/{table}");
        let keeps = !taken.contains(name) && (sharing[name.as_str()] == 1 || exact);
        let candidate = if keeps {
            name.clone()
        } else {
            format!("{name}_{:08x}", fnv1a(&format!("{schema}\0{table}")))
        };
        let clash = owner.get(&candidate).copied();
        if taken.contains(&candidate) || clash.is_some() {
            let other = match clash {
                Some(j) => format!(
                    " and {}.{}",
                    sql::ident(&tables[j].0),
                    sql::ident(&tables[j].1)
                ),
                None => " and a collection already in the store".into(),
            };
            return Err(Error::invalid_input(
                "collection",
                format!(
                    "'{candidate}' would be the collection of {}.{}{other}; give one of them its own name (--collection)",
                    sql::ident(schema),
                    sql::ident(table)
                ),
            ));
        }
        owner.insert(candidate.clone(), i);
        chosen.push(candidate);
    }
    Ok(chosen)
}

/// 32-bit FNV-1a: a hash whose value is fixed by its definition, so suffixes never change between
/// builds (the standard library's hasher makes no such promise).
fn fnv1a(text: &str) -> u32 {
    text.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collection_names_are_checked_and_the_message_names_the_field() {
        for good in ["public/orders", "a", "shop.v2/Größe-1_x", "日本/表"] {
            assert!(validate_collection_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "/a",
            "a/",
            "a//b",
            "a/../b",
            "a b",
            "a;b",
            "a\"b",
            &"x".repeat(513),
        ] {
            let err = validate_collection_name(bad).unwrap_err();
            assert!(err.message().starts_with("collection:"), "{bad}: {err}");
        }
    }

    #[test]
    fn default_names_are_always_valid() {
        for (schema, table) in [
            ("public", "t"),
            ("My Schema", "Ta;ble \"x\""),
            ("", ".."),
            ("a/b", "c"),
        ] {
            let name = default_collection_name(schema, table);
            assert!(validate_collection_name(&name).is_ok(), "{name}");
        }
        assert_eq!(
            default_collection_name("My Schema", "Ta;ble \"x\""),
            "My_Schema/Ta_ble__x_"
        );
    }

    proptest::proptest! {
        #[test]
        fn default_names_of_any_table_are_valid(schema in "\\PC{0,20}", table in "\\PC{0,20}") {
            let name = default_collection_name(&schema, &table);
            proptest::prop_assert!(validate_collection_name(&name).is_ok(), "{}", name);
        }
    }

    fn names(tables: &[(&str, &str)], taken: &[&str]) -> Result<Vec<String>> {
        let tables: Vec<(String, String)> = tables
            .iter()
            .map(|(s, t)| (s.to_string(), t.to_string()))
            .collect();
        let taken = taken.iter().map(|t| t.to_string()).collect();
        unique_collection_names(&tables, &taken)
    }

    #[test]
    fn tables_that_would_share_a_default_name_get_unique_stable_ones() {
        let both = names(&[("public", "order items"), ("public", "order_items")], &[]).unwrap();
        assert_eq!(both[1], "public/order_items");
        assert_eq!(both[0], "public/order_items_ef0de76c");
        assert!(
            both[0].starts_with("public/order_items_") && both[0].len() == 27,
            "{both:?}"
        );
        // The same set in another order maps the same way.
        let reversed = names(&[("public", "order_items"), ("public", "order items")], &[]).unwrap();
        assert_eq!(reversed, vec![both[1].clone(), both[0].clone()]);
        // Alone, a table keeps the plain name; a name already taken is never reused.
        assert_eq!(
            names(&[("public", "order items")], &[]).unwrap(),
            vec!["public/order_items"]
        );
        assert_eq!(
            names(&[("public", "order_items")], &["public/order_items"]).unwrap(),
            vec![format!(
                "public/order_items_{:08x}",
                fnv1a("public\0order_items")
            )]
        );
        // Neither exact: both suffixed, differently.
        let two = names(&[("public", "a b"), ("public", "a;b")], &[]).unwrap();
        assert_ne!(two[0], two[1]);
        assert!(two.iter().all(|n| n.starts_with("public/a_b_")));
        for name in both.iter().chain(&two) {
            assert!(validate_collection_name(name).is_ok());
        }
    }

    #[test]
    fn a_suffixed_name_that_still_collides_names_both_tables() {
        let suffixed = names(&[("public", "a b"), ("public", "a_b")], &[]).unwrap()[0].clone();
        let table = suffixed.trim_start_matches("public/").to_string();
        let err = names(
            &[("public", "a b"), ("public", "a_b"), ("public", &table)],
            &[],
        )
        .unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::InvalidInput);
        assert!(
            err.message().contains("\"a b\"") && err.message().contains(&table),
            "{err}"
        );
    }

    #[test]
    fn a_definition_binds_each_table_and_each_name_once() {
        let mut d = Definition {
            profile: None,
            publication: "p".into(),
            slot: "s".into(),
            bindings: vec![Binding::new("public", "a"), Binding::new("public", "b")],
        };
        assert!(d.validate().is_ok());
        d.bindings[1].collection = "public/a".into();
        let err = d.validate().unwrap_err();
        assert!(err.message().contains("two collections"), "{err}");
        assert!(
            err.message().contains("\"public\".\"a\"")
                && err.message().contains("\"public\".\"b\""),
            "{err}"
        );
        d.bindings[1] = Binding::new("public", "a");
        assert!(d.validate().unwrap_err().message().contains("bound twice"));
    }
}
