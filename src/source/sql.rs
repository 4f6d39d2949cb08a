//! Quoting of SQL identifiers and literals.
//!
//! Invariant: every name or value that Tidepool puts into SQL text goes through [`ident`] or [`literal`];
//! nothing is pasted. Both follow PostgreSQL's rules (`quote_ident`, `quote_literal`), so names with
//! quotes, spaces, upper case, `;`, reserved words or non-ASCII characters stay exactly what they are.

/// Quotes an identifier: always double-quoted, with embedded double quotes doubled.
pub fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Quotes a string literal: single-quoted with embedded quotes doubled; an `E''` literal when it holds a
/// backslash, so the meaning does not depend on `standard_conforming_strings`.
pub fn literal(value: &str) -> String {
    if value.contains('\\') {
        format!("E'{}'", value.replace('\\', "\\\\").replace('\'', "''"))
    } else {
        format!("'{}'", value.replace('\'', "''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_always_quoted() {
        assert_eq!(ident("orders"), "\"orders\"");
        assert_eq!(ident("My \"Table\"; DROP"), "\"My \"\"Table\"\"; DROP\"");
        assert_eq!(ident("sélect"), "\"sélect\"");
    }

    #[test]
    fn literals_escape_quotes_and_backslashes() {
        assert_eq!(literal("it's"), "'it''s'");
        assert_eq!(literal("a\\b'c"), "E'a\\\\b''c'");
    }
}
