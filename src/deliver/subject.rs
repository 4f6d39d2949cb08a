//! NATS subjects of messages: a template such as `tidepool.{schema}.{table}.{action}` filled in for
//! each message, and the wildcard a stream needs to capture every subject the template can give.
//!
//! Invariants:
//! - A template is checked when its consumer is saved ([`validate_template`]): tokens are not empty,
//!   hold no whitespace and no wildcard, and name only known placeholders.
//! - A rendered subject is always a valid subject: a filled-in value never adds a token (`.`), a
//!   wildcard (`*`, `>`) or whitespace; those characters become `_`, and an empty value is `_`.
//! - [`wildcard`] matches every subject [`render`] gives for the same template, so a stream created
//!   from it captures all of a consumer's messages.

use crate::error::{Error, Result};

/// The names a template may use between braces.
pub const PLACEHOLDERS: [&str; 4] = ["database", "schema", "table", "action"];

/// What a message fills a template with.
#[derive(Debug, Clone, Copy)]
pub struct Values<'a> {
    /// The source database's name.
    pub database: &'a str,
    /// The table's schema.
    pub schema: &'a str,
    /// The table.
    pub table: &'a str,
    /// `insert`, `update`, `delete` or `read`.
    pub action: &'a str,
}

impl Values<'_> {
    fn get(&self, name: &str) -> &str {
        match name {
            "database" => self.database,
            "schema" => self.schema,
            "table" => self.table,
            _ => self.action,
        }
    }
}

fn bad_char(c: char) -> bool {
    c.is_whitespace() || c.is_control() || matches!(c, '.' | '*' | '>')
}

/// Splits a token into literal text and placeholder names, refusing what is not valid.
fn parts(token: &str) -> std::result::Result<Vec<(bool, &str)>, String> {
    let mut out = Vec::new();
    let mut rest = token;
    while !rest.is_empty() {
        if let Some(inner) = rest.strip_prefix('{') {
            let end = inner
                .find('}')
                .ok_or_else(|| format!("'{{' without '}}' in '{token}'"))?;
            let name = &inner[..end];
            if !PLACEHOLDERS.contains(&name) {
                return Err(format!(
                    "unknown placeholder '{{{name}}}': use {}",
                    PLACEHOLDERS.map(|p| format!("{{{p}}}")).join(", ")
                ));
            }
            out.push((true, name));
            rest = &inner[end + 1..];
        } else {
            let end = rest.find('{').unwrap_or(rest.len());
            let literal = &rest[..end];
            if literal.contains('}') {
                return Err(format!("'}}' without '{{' in '{token}'"));
            }
            if let Some(c) = literal.chars().find(|c| bad_char(*c)) {
                return Err(format!(
                    "'{token}' holds {c:?}: a subject token may not hold whitespace or a wildcard"
                ));
            }
            out.push((false, literal));
            rest = &rest[end..];
        }
    }
    Ok(out)
}

/// Checks a subject template; the error names the field (`subject`).
pub fn validate_template(template: &str) -> Result<()> {
    if template.is_empty() {
        return Err(Error::invalid_input(
            "subject",
            "the subject template is empty",
        ));
    }
    for token in template.split('.') {
        if token.is_empty() {
            return Err(Error::invalid_input(
                "subject",
                format!("'{template}' has an empty token (two dots in a row, or a dot at an end)"),
            ));
        }
        parts(token).map_err(|reason| Error::invalid_input("subject", reason))?;
    }
    Ok(())
}

/// A value as it may stand in a subject token.
fn clean(value: &str) -> String {
    if value.is_empty() {
        return "_".into();
    }
    value
        .chars()
        .map(|c| if bad_char(c) { '_' } else { c })
        .collect()
}

/// The subject of one message. The template must have passed [`validate_template`]; a token it
/// cannot parse is kept as it is.
pub fn render(template: &str, values: &Values<'_>) -> String {
    let mut out = String::with_capacity(template.len() + 32);
    for (i, token) in template.split('.').enumerate() {
        if i > 0 {
            out.push('.');
        }
        match parts(token) {
            Ok(parts) => {
                for (placeholder, text) in parts {
                    if placeholder {
                        out.push_str(&clean(values.get(text)));
                    } else {
                        out.push_str(text);
                    }
                }
            }
            Err(_) => out.push_str(token),
        }
    }
    out
}

/// The subject filter that captures every subject of the template: each token with a placeholder
/// becomes `*`.
pub fn wildcard(template: &str) -> String {
    template
        .split('.')
        .map(|t| if t.contains('{') { "*" } else { t })
        .collect::<Vec<_>>()
        .join(".")
}

/// Checks a JetStream stream name (no whitespace, `.`, `*`, `>`, `/` or `\`; at most 255 bytes).
pub fn validate_stream_name(name: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > 255
        || name.chars().any(|c| bad_char(c) || matches!(c, '/' | '\\'))
    {
        return Err(Error::invalid_input(
            "stream",
            format!(
                "'{name}' is not a stream name: 1 to 255 characters without whitespace, '.', '*', '>', '/' or '\\'"
            ),
        ));
    }
    Ok(())
}

/// Whether `subject` matches the subject filter `filter` (`*` one token, `>` the rest).
pub fn matches(filter: &str, subject: &str) -> bool {
    let mut f = filter.split('.');
    let mut s = subject.split('.');
    loop {
        match (f.next(), s.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values<'a>(schema: &'a str, table: &'a str) -> Values<'a> {
        Values {
            database: "app",
            schema,
            table,
            action: "insert",
        }
    }

    #[test]
    fn templates_fill_in_and_values_never_add_tokens_or_wildcards() {
        let t = "tidepool.{schema}.{table}.{action}";
        validate_template(t).unwrap();
        assert_eq!(
            render(t, &values("public", "orders")),
            "tidepool.public.orders.insert"
        );
        // A table named with a dot, a space or a wildcard stays one token.
        assert_eq!(
            render(t, &values("my schema", "a.b>*")),
            "tidepool.my_schema.a_b__.insert"
        );
        assert_eq!(render(t, &values("", "t")), "tidepool._.t.insert");
        assert_eq!(
            render("cdc.{database}_{table}", &values("s", "t")),
            "cdc.app_t"
        );
        assert_eq!(wildcard(t), "tidepool.*.*.*");
        assert_eq!(wildcard("cdc.{database}_{table}"), "cdc.*");
    }

    #[test]
    fn the_wildcard_matches_every_rendered_subject() {
        for t in [
            "tidepool.{schema}.{table}.{action}",
            "a.{table}x.{action}",
            "{database}",
            "fixed.subject",
        ] {
            validate_template(t).unwrap();
            for (schema, table) in [("public", "orders"), ("x.y", "*"), ("", " ")] {
                let subject = render(t, &values(schema, table));
                assert!(matches(&wildcard(t), &subject), "{t} → {subject}");
            }
        }
        assert!(!matches("a.*", "a.b.c"));
        assert!(matches("a.>", "a.b.c"));
    }

    #[test]
    fn bad_templates_and_stream_names_are_refused_with_the_field() {
        for bad in [
            "",
            "a..b",
            ".a",
            "a.",
            "a.{tabel}",
            "a.{table",
            "a.table}",
            "a.*",
            "a.>",
            "a b",
        ] {
            let e = validate_template(bad).unwrap_err();
            assert!(e.message().starts_with("subject:"), "{bad}: {e}");
        }
        validate_stream_name("TIDEPOOL_ORDERS").unwrap();
        for bad in ["", "a.b", "a b", "a*", "a/b"] {
            let e = validate_stream_name(bad).unwrap_err();
            assert!(e.message().starts_with("stream:"), "{bad}: {e}");
        }
    }
}
