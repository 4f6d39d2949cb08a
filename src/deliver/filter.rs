//! Consumer filters in the Common Expression Language (CEL, the cel-rust project's `cel` crate), evaluated
//! over a message's `record`, `changes`, `action` and `metadata`.
//!
//! Invariants:
//! - An expression that does not parse, or that names anything but those four variables, is refused
//!   when it is compiled, with the line, column and reason, as an `InvalidInput` error on `filter`.
//! - The values a filter sees are the message's own, except that a numeric column's value (kept as a
//!   string in documents so no digit is lost) is a number, so `record.total > 100` compares numbers.
//! - Evaluation never panics and never fails a delivery: an expression that errors on a message
//!   (a missing field, a type mismatch) or does not yield a boolean does not match it.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use cel::objects::{Key, Map};
use cel::{Context, ExecutionError, Program, Value};
use serde_json::{json, Value as Json};

use crate::error::{Error, Result};

/// The variables a filter may use.
const VARIABLES: [&str; 4] = ["record", "changes", "action", "metadata"];

/// A compiled filter.
pub struct Filter {
    program: Program,
    source: String,
}

impl std::fmt::Debug for Filter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Filter").field(&self.source).finish()
    }
}

impl Filter {
    /// Compiles `source`, refusing a bad expression with its position and reason.
    pub fn compile(source: &str) -> Result<Filter> {
        if source.trim().is_empty() {
            return Err(Error::invalid_input("filter", "the expression is empty"));
        }
        // The parser recurses per nesting level; bound the input so no expression can exhaust the stack.
        if source.len() > 10_000 || nesting(source) > 64 {
            return Err(Error::invalid_input(
                "filter",
                "the expression is too long or too deeply nested (at most 10,000 characters and 64 levels)",
            ));
        }
        // Inputs that visibly end early are told here in plain words. The parser of
        // `cel-interpreter` 0.10 panicked on many of them (48 of 272 prefixes of the test
        // expressions); `cel` 0.12 returns errors for all of them. It is generated code, so a panic
        // is still caught rather than trusted away (the `filter` fuzz target looks for one).
        let end = end_position(source);
        if let Some(why) = incomplete(source) {
            return Err(Error::invalid_input(
                "filter",
                format!("line {}, column {}: {why}", end.0, end.1),
            ));
        }
        let program = std::panic::catch_unwind(|| Program::compile(source))
            .map_err(|_| {
                Error::invalid_input(
                    "filter",
                    format!(
                        "line {}, column {}: the expression ends before it is complete",
                        end.0, end.1
                    ),
                )
            })?
            .map_err(|errors| {
                let detail = errors
                    .errors
                    .first()
                    .map(|e| format!("line {}, column {}: {}", e.pos.0, e.pos.1, e.msg))
                    .unwrap_or_else(|| "the expression cannot be parsed".into());
                Error::invalid_input("filter", detail)
            })?;
        let filter = Filter {
            program,
            source: source.to_string(),
        };
        // A trial run over an empty insert finds names that are not variables (parsing cannot tell a
        // variable from a comprehension's own).
        let trial = json!({"record": {}, "changes": null, "action": "insert", "metadata": {}});
        if let Err(ExecutionError::UndeclaredReference(name)) = filter.evaluate(&trial, &[]) {
            return Err(Error::invalid_input(
                "filter",
                format!(
                    "'{name}' is not known: use {}",
                    VARIABLES.map(|v| format!("'{v}'")).join(", ")
                ),
            ));
        }
        Ok(filter)
    }

    /// The expression as given.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The parsed expression, for checks a caller makes beyond parsing (the preview's literal types).
    pub fn expression(&self) -> &cel::IdedExpr {
        self.program.expression()
    }

    /// Whether `message` (`{record, changes, action, metadata}`) matches; `numeric` names the
    /// collection's numeric columns.
    pub fn matches(&self, message: &Json, numeric: &HashSet<String>) -> bool {
        let names: Vec<&str> = numeric.iter().map(String::as_str).collect();
        matches!(self.evaluate(message, &names), Ok(Value::Bool(true)))
    }

    fn evaluate(&self, message: &Json, numeric: &[&str]) -> Result<Value, ExecutionError> {
        let mut context = Context::default();
        for name in VARIABLES {
            let mut value = message.get(name).cloned().unwrap_or(Json::Null);
            if matches!(name, "record" | "changes") && !numeric.is_empty() {
                as_numbers(&mut value, numeric);
            }
            context.add_variable_from_value(name, cel_value(&value));
        }
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.program.execute(&context)
        }))
        .unwrap_or_else(|_| {
            Err(ExecutionError::function_error(
                "filter",
                "evaluation failed",
            ))
        })
    }
}

/// Line and column (1-based) just past the end of `source`.
fn end_position(source: &str) -> (usize, usize) {
    let line = source.matches('\n').count() + 1;
    let column = source.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// Why `source` ends before an expression is complete, if it visibly does: inside a string, or
/// right after an operator.
fn incomplete(source: &str) -> Option<&'static str> {
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for c in source.chars() {
        match quote {
            Some(q) => {
                if escaped {
                    escaped = false;
                } else if c == '\\' {
                    escaped = true;
                } else if c == q {
                    quote = None;
                }
            }
            None if c == '"' || c == '\'' => quote = Some(c),
            None => {}
        }
    }
    if quote.is_some() {
        return Some("a string is not closed");
    }
    let last = source.trim_end().chars().last()?;
    matches!(
        last,
        '+' | '-' | '*' | '/' | '%' | '<' | '>' | '=' | '!' | '&' | '|' | '?' | ':' | ',' | '.'
    )
    .then_some("the expression ends after an operator, without its operand")
}

/// A JSON value as CEL sees it: integers as `int` (as CEL literals are), so `record.qty + 1`
/// type-checks; integers beyond `i64` as `uint`; other numbers as `double`.
fn cel_value(value: &Json) -> Value {
    match value {
        Json::Null => Value::Null,
        Json::Bool(b) => Value::Bool(*b),
        Json::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Value::Int(i),
            (None, Some(u)) => Value::UInt(u),
            _ => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Json::String(s) => Value::String(Arc::new(s.clone())),
        Json::Array(items) => Value::List(Arc::new(items.iter().map(cel_value).collect())),
        Json::Object(map) => {
            let entries: HashMap<Key, Value> = map
                .iter()
                .map(|(k, v)| (Key::String(Arc::new(k.clone())), cel_value(v)))
                .collect();
            Value::Map(Map {
                map: Arc::new(entries),
            })
        }
    }
}

/// The deepest nesting of brackets in `source`, a bound on the parser's recursion.
fn nesting(source: &str) -> usize {
    let (mut depth, mut max) = (0usize, 0usize);
    for c in source.chars() {
        match c {
            '(' | '[' | '{' => {
                depth += 1;
                max = max.max(depth);
            }
            ')' | ']' | '}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    // Chains of unary operators recurse too.
    max.max(unary_run(source))
}

/// The longest run of `!` and `-` (spaces between them allowed).
fn unary_run(source: &str) -> usize {
    let mut run = 0;
    let mut max = 0;
    for c in source.chars() {
        if c == '!' || c == '-' {
            run += 1;
            max = max.max(run);
        } else if !c.is_whitespace() {
            run = 0;
        }
    }
    max
}

/// Replaces the numeric columns' string values in an object with numbers.
fn as_numbers(value: &mut Json, numeric: &[&str]) {
    let Json::Object(map) = value else { return };
    for name in numeric {
        if let Some(v) = map.get_mut(*name) {
            if let Some(n) = v.as_str().and_then(|s| s.parse::<f64>().ok()) {
                if let Some(number) = serde_json::Number::from_f64(n) {
                    *v = Json::Number(number);
                }
            }
        }
    }
}

/// The names of a collection's numeric columns (`numeric`, type oid 1700), from its description.
pub fn numeric_columns(columns: &Json) -> HashSet<String> {
    columns
        .as_array()
        .map(|cols| {
            cols.iter()
                .filter(|c| c.get("typeOid").and_then(Json::as_u64) == Some(1700))
                .filter_map(|c| c.get("name").and_then(Json::as_str).map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message() -> Json {
        json!({
            "record": {
                "id": 7, "status": "shipped", "total": "120.50", "qty": 3, "vip": true,
                "note": null, "created_at": "2026-03-01T10:00:00Z", "tags": ["vip", "eu"],
                "attrs": {"color": "red", "size": 42}, "ratio": 0.25, "big": 9007199254740993i64
            },
            "changes": {"status": "pending", "total": "99.00"},
            "action": "update",
            "metadata": {"table_schema": "public", "table_name": "orders", "commit_lsn": 123}
        })
    }

    fn numeric() -> HashSet<String> {
        ["total".to_string()].into_iter().collect()
    }

    fn check(expr: &str) -> bool {
        Filter::compile(expr)
            .unwrap_or_else(|e| panic!("{expr}: {e}"))
            .matches(&message(), &numeric())
    }

    #[test]
    fn every_operator_over_the_main_types() {
        let cases: &[(&str, bool)] = &[
            // equality and comparison on integers
            ("record.id == 7", true),
            ("record.id != 7", false),
            ("record.id < 8", true),
            ("record.id <= 7", true),
            ("record.id > 7", false),
            ("record.id >= 7", true),
            ("record.big == 9007199254740993", true),
            // arithmetic
            ("record.qty + 1 == 4", true),
            ("record.qty - 1 == 2", true),
            ("record.qty * 2 == 6", true),
            ("record.qty / 2 == 1", true),
            ("record.qty % 2 == 1", true),
            ("-record.qty == -3", true),
            // numeric strings compared as numbers (a numeric column), in both positions
            ("record.total > 100", true),
            ("record.total > 120.5", false),
            ("record.total == 120.5", true),
            ("100 < record.total", true),
            ("changes.total < record.total", true),
            // doubles
            ("record.ratio < 0.5", true),
            ("record.ratio * 4.0 == 1.0", true),
            // text
            ("record.status == \"shipped\"", true),
            ("record.status != \"shipped\"", false),
            ("record.status < \"t\"", true),
            ("record.status + \"!\" == \"shipped!\"", true),
            ("record.status.startsWith(\"ship\")", true),
            ("record.status.endsWith(\"ped\")", true),
            ("record.status.contains(\"hip\")", true),
            ("record.status.matches(\"^s.*d$\")", true),
            ("size(record.status) == 7", true),
            // booleans and logic
            ("record.vip", true),
            ("!record.vip", false),
            ("record.vip && record.id == 7", true),
            ("record.vip && record.id == 8", false),
            ("!record.vip || record.id == 7", true),
            ("record.vip ? record.id == 7 : false", true),
            // null
            ("record.note == null", true),
            ("record.status != null", true),
            // membership and lists
            ("action in [\"insert\", \"update\"]", true),
            ("action in [\"delete\"]", false),
            ("\"vip\" in record.tags", true),
            ("record.tags.exists(t, t == \"vip\")", true),
            ("record.tags.all(t, t == \"vip\")", false),
            ("record.tags.exists_one(t, t == \"eu\")", true),
            ("record.tags.filter(t, t != \"vip\") == [\"eu\"]", true),
            ("record.tags.map(t, t + \"!\")[0] == \"vip!\"", true),
            ("size(record.tags) == 2", true),
            ("record.tags[1] == \"eu\"", true),
            // maps (jsonb)
            ("record.attrs.color == \"red\"", true),
            ("record.attrs[\"size\"] == 42", true),
            ("\"color\" in record.attrs", true),
            ("has(record.attrs.color)", true),
            ("has(record.attrs.weight)", false),
            // presence of a changed column
            ("has(changes.status)", true),
            ("has(changes.email)", false),
            // timestamps
            (
                "timestamp(record.created_at) > timestamp(\"2026-01-01T00:00:00Z\")",
                true,
            ),
            (
                "timestamp(record.created_at) < timestamp(\"2026-01-01T00:00:00Z\")",
                false,
            ),
            // metadata
            (
                "metadata.table_name == \"orders\" && metadata.commit_lsn > 100",
                true,
            ),
            // a runtime error does not match
            ("record.missing == 1", false),
            ("record.status > 3", false),
            // a non-boolean does not match
            ("record.id", false),
        ];
        for (expr, want) in cases {
            assert_eq!(check(expr), *want, "{expr}");
        }
    }

    #[test]
    fn inserts_have_no_changes() {
        let f = Filter::compile("has(changes.status)").unwrap();
        let insert =
            json!({"record": {"status": "x"}, "changes": null, "action": "insert", "metadata": {}});
        assert!(!f.matches(&insert, &HashSet::new()));
        let f = Filter::compile("changes == null").unwrap();
        assert!(f.matches(&insert, &HashSet::new()));
    }

    #[test]
    fn a_numeric_string_stays_a_string_elsewhere() {
        // `status` is not a numeric column: it is compared as text.
        let f = Filter::compile("record.code == \"010\"").unwrap();
        let msg =
            json!({"record": {"code": "010"}, "changes": null, "action": "insert", "metadata": {}});
        assert!(f.matches(&msg, &numeric()));
    }

    #[test]
    fn bad_expressions_are_refused_with_position_and_reason() {
        for (expr, needle) in [
            ("record.total > ", "line 1, column 16"),
            (
                "record.status == \"shipped",
                "line 1, column 26: a string is not closed",
            ),
            ("record.id = 7", "line 1, column 11"),
            ("(record.id == 7", "line 1, column 16: Syntax error"),
            (
                "record.status == 'a' &&",
                "line 1, column 24: the expression ends after an operator",
            ),
            ("a ? b", "line 1"),
            ("-", "line 1, column 2"),
            ("rec.id == 7", "'rec' is not known"),
            ("", "empty"),
        ] {
            let e = Filter::compile(expr).unwrap_err();
            assert_eq!(e.kind(), crate::ErrorKind::InvalidInput, "{expr}");
            assert!(e.message().starts_with("filter: "), "{expr}: {e}");
            assert!(e.message().contains(needle), "{expr}: {e}");
        }
        let deep = format!("{}1{}", "(".repeat(500), ")".repeat(500));
        assert!(Filter::compile(&deep).is_err());
        let bangs = format!("{}true", "!".repeat(5000));
        assert!(Filter::compile(&bangs).is_err());
    }

    #[test]
    fn the_parser_refuses_every_truncated_expression_without_panicking() {
        // cel-interpreter 0.10 panicked on 48 of these prefixes (the empty one included).
        for expr in [
            r#"record.status == "shipped" && record.total > 100"#,
            r#"action in ["insert", "update"]"#,
            r#"record.tags.exists(t, t == "vip")"#,
            r#"metadata.table_name.startsWith("ord") ? 1 : 2"#,
        ] {
            for end in (0..=expr.len()).filter(|e| expr.is_char_boundary(*e)) {
                let prefix = &expr[..end];
                assert!(
                    std::panic::catch_unwind(|| {
                        let _ = Program::compile(prefix);
                    })
                    .is_ok(),
                    "the parser panicked on {prefix:?}"
                );
            }
        }
    }

    #[test]
    fn numeric_columns_come_from_the_description() {
        let cols = json!([{"name": "id", "typeOid": 23}, {"name": "total", "typeOid": 1700}]);
        assert_eq!(numeric_columns(&cols), numeric());
    }
}
