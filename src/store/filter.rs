//! The preview's field filter: one rule ([`Filter::matches`]) for the live tail and its SQL form for
//! the store's queries, which must agree (the store's tests check both on the same documents).

use super::*;

/// Documents whose top-level `field` reads as `value`: a string as itself, a number in its JSON form,
/// `true`, `false`, `null`, an object or array as its JSON text. With `contains`, that text contains
/// `value` instead of equalling it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Filter {
    /// A top-level field (a column name, or `_meta`).
    pub field: String,
    /// The text to compare with.
    pub value: String,
    /// Substring match instead of equality.
    #[serde(default)]
    pub contains: bool,
}

impl Filter {
    /// Whether a document matches, by the same rule the store's queries apply (for live tails).
    pub fn matches(&self, doc: &Json) -> bool {
        let Some(value) = doc.get(&self.field) else {
            return false;
        };
        let text = match value {
            Json::String(s) => s.clone(),
            other => other.to_string(),
        };
        if self.contains {
            text.contains(&self.value)
        } else {
            text == self.value
        }
    }
}

/// The field at ?4 of a change's whole document as text, by [`Filter::matches`]'s rule. A document
/// with large values has the field read in Rust (`tidepool_field`), by the rule the live tails apply.
macro_rules! field_sql {
    () => {
        concat!(
            "CASE WHEN c.refs IS NOT NULL THEN tidepool_field(",
            doc_sql!(),
            ", c.refs, ?4)
                 ELSE CASE json_type(",
            doc_sql!(),
            ", ?4) WHEN 'true' THEN 'true' WHEN 'false' THEN 'false' WHEN 'null' THEN 'null'
                 ELSE CAST(json_extract(",
            doc_sql!(),
            ", ?4) AS TEXT) END END"
        )
    };
}

/// A filter as statement parameters ?4 (JSON path, NULL for none), ?5 (value), ?6 (contains).
pub(super) struct FilterParams {
    pub(super) path: Option<String>,
    pub(super) value: Option<String>,
    pub(super) contains: bool,
}

impl FilterParams {
    /// The condition on a change's whole document ([`doc_sql!`], so the query joins [`SOURCE_JOIN`]),
    /// matching [`Filter::matches`]: the field's text ([`field_sql!`]) contains or equals ?5.
    pub(super) const SQL: &'static str = concat!(
        "(?4 IS NULL OR (CASE WHEN ?6 THEN instr(",
        field_sql!(),
        ", ?5) > 0 ELSE ",
        field_sql!(),
        " = ?5 END))"
    );

    pub(super) fn of(filter: Option<&Filter>) -> Result<FilterParams> {
        let Some(f) = filter else {
            return Ok(FilterParams {
                path: None,
                value: None,
                contains: false,
            });
        };
        // SQLite's JSON paths quote a key in double quotes and have no escape for one inside it.
        if f.field.is_empty() || f.field.contains('"') {
            return Err(Error::invalid_input(
                "filter field",
                format!(
                    "'{}' cannot be filtered on: give a column name without double quotes",
                    f.field
                ),
            ));
        }
        Ok(FilterParams {
            path: Some(format!("$.\"{}\"", f.field)),
            value: Some(f.value.clone()),
            contains: f.contains,
        })
    }
}
