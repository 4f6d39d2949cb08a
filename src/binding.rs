//! Bindings: which source tables a capture stores, under which collection names, and how each one
//! starts (its existing rows backfilled, or only new changes). Together with the publication and the
//! slot they form the capture's definition, which lives in the store next to the data it describes,
//! so the desktop app, the command line and a running capture all read the same one.
//!
//! Invariants:
//! - A definition is validated before it is saved: collection names follow [`validate_collection_name`],
//!   each table is bound once and each collection name is used once.
//! - The definition is what the user asked for; what the capture has done about it (which bindings are
//!   live, which are being backfilled) is the capture's own state, kept apart
//!   ([`crate::capture`]). Editing the definition never touches captured data: a running capture
//!   notices the change at its next transaction boundary and acts on it.

use std::collections::HashSet;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::sql;
use crate::store::Store;

/// How a binding's collection starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub enum Mode {
    /// The table's existing rows are read in a snapshot that lines up with the stream, then its changes.
    #[default]
    Full,
    /// Only changes from now on; existing rows are not read.
    OnlyChanges,
}

/// One source table bound to one collection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
        }
    }

    /// This binding's table among `discovered`, or a NotFound error naming `field`.
    pub fn discovered_in<'a>(
        &self,
        discovered: &'a [crate::discovery::DiscoveredTable],
        field: &str,
    ) -> Result<&'a crate::discovery::DiscoveredTable> {
        discovered
            .iter()
            .find(|t| t.schema == self.schema && t.table == self.table)
            .ok_or_else(|| {
                Error::new(
                    crate::ErrorKind::NotFound,
                    format!(
                        "{field}: {} is not a table this role can read",
                        self.qualified()
                    ),
                )
            })
    }

    /// `"schema"."table"`, for messages and SQL.
    pub fn qualified(&self) -> String {
        format!("{}.{}", sql::ident(&self.schema), sql::ident(&self.table))
    }
}

/// What a capture stores: its publication and slot, and the tables it binds to collections.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
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
        crate::slot::validate_name(&self.slot)?;
        let mut tables = HashSet::new();
        let mut collections = HashSet::new();
        for binding in &self.bindings {
            validate_collection_name(&binding.collection)?;
            if !tables.insert((&binding.schema, &binding.table)) {
                return Err(Error::invalid_input(
                    "bindings",
                    format!("{} is bound twice", binding.qualified()),
                ));
            }
            if !collections.insert(&binding.collection) {
                return Err(Error::invalid_input(
                    "collection",
                    format!(
                        "'{}' is the name of two collections; each table needs its own",
                        binding.collection
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
        assert!(d
            .validate()
            .unwrap_err()
            .message()
            .contains("two collections"));
        d.bindings[1] = Binding::new("public", "a");
        assert!(d.validate().unwrap_err().message().contains("bound twice"));
    }
}
