//! The Collections preview's filter: the consumers' CEL language (`deliver::filter`), over the message
//! a consumer would receive for a stored change, so an expression tried in the preview means the same
//! in a consumer's form.
//!
//! Invariants:
//! - An expression is refused before any document is read when it does not parse, names anything but
//!   `record`, `changes`, `action` and `metadata`, or compares a column with a literal of another type
//!   (`record.qty == "3"` on an integer column, `record.name == 3` on a text one). CEL's equality between
//!   different types is silently false, so such a filter would quietly match nothing; the refusal says
//!   where the literal is and how to write it (`line L, column C: …`, the consumer form's format).
//! - A document matches exactly when the consumer filter matches its message; an evaluation error (a
//!   missing field) does not match, as in delivery. The stored documents and the live tail are both
//!   filtered here, in the engine: there is no second copy of the rule.

use std::collections::HashSet;

use cel::common::ast::{operators, Expr};
use cel::common::value::CelVal;
use cel::IdedExpr;
use serde_json::Value as Json;

use crate::deliver::filter::{numeric_columns, Filter};
use crate::deliver::message::{build, Database, Place};
use crate::document::value::Kind;
use crate::error::{Error, Result};
use crate::store::CollectionSpec;

/// A compiled preview filter for one collection.
#[derive(Debug)]
pub struct PreviewFilter {
    filter: Filter,
    spec: CollectionSpec,
    numeric: HashSet<String>,
}

impl PreviewFilter {
    /// Compiles `source` for `spec`'s documents, refusing a bad expression (see the module's doc).
    pub fn compile(source: &str, spec: &CollectionSpec) -> Result<PreviewFilter> {
        let filter = Filter::compile(source)?;
        check_literals(filter.expression(), source, spec)?;
        Ok(PreviewFilter {
            numeric: numeric_columns(&spec.columns),
            filter,
            spec: spec.clone(),
        })
    }

    /// Whether the stored change `doc` (at log position `seq`) matches.
    pub fn matches(&self, seq: u64, doc: &Json) -> bool {
        let place = Place { seq, index: 0 };
        // A preview tries a few dozen documents; the copy is nothing beside evaluating the filter.
        match build(
            doc.clone(),
            place,
            &self.spec,
            ("", "preview"),
            &Database::default(),
            &[],
        ) {
            Ok(Some(message)) => self.filter.matches(&message.body, &self.numeric),
            // A truncate has no message (delivery sends none), and a document that is not an object
            // cannot match anything.
            _ => false,
        }
    }
}

/// What a column's values are in a filter: numbers, booleans or text (`None`: anything, e.g. JSON).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    Number,
    Bool,
    Text,
}

fn shape_of(type_oid: u32) -> Option<Shape> {
    match crate::document::value::builtin(type_oid)? {
        Kind::Integer | Kind::Float | Kind::Numeric => Some(Shape::Number),
        Kind::Bool => Some(Shape::Bool),
        Kind::Json | Kind::Array { .. } => None,
        _ => Some(Shape::Text),
    }
}

const COMPARISONS: [&str; 6] = [
    operators::EQUALS,
    operators::NOT_EQUALS,
    operators::LESS,
    operators::LESS_EQUALS,
    operators::GREATER,
    operators::GREATER_EQUALS,
];

/// Refuses a comparison of a column (`record.c`, `changes.c`) with a literal of another shape.
fn check_literals(expr: &IdedExpr, source: &str, spec: &CollectionSpec) -> Result<()> {
    let columns: Vec<(String, Option<Shape>)> = spec
        .columns
        .as_array()
        .map(|cols| {
            cols.iter()
                .filter_map(|c| {
                    let name = c.get("name")?.as_str()?.to_string();
                    let oid = c.get("typeOid").and_then(Json::as_u64).unwrap_or(0) as u32;
                    Some((name, shape_of(oid)))
                })
                .collect()
        })
        .unwrap_or_default();
    let shape = |e: &IdedExpr| -> Option<(String, Shape)> {
        let Expr::Select(select) = &e.expr else {
            return None;
        };
        let Expr::Ident(var) = &select.operand.expr else {
            return None;
        };
        if var != "record" && var != "changes" {
            return None;
        }
        let (name, shape) = columns.iter().find(|(n, _)| *n == select.field)?;
        Some((name.clone(), (*shape)?))
    };
    let mut stack = vec![expr];
    while let Some(e) = stack.pop() {
        match &e.expr {
            Expr::Call(call) => {
                if COMPARISONS.contains(&call.func_name.as_str()) && call.args.len() == 2 {
                    for (column, other) in [
                        (&call.args[0], &call.args[1]),
                        (&call.args[1], &call.args[0]),
                    ] {
                        if let (Some((name, want)), Expr::Literal(literal)) =
                            (shape(column), &other.expr)
                        {
                            mismatch(&name, want, literal, source)?;
                        }
                    }
                }
                stack.extend(call.target.as_deref());
                stack.extend(call.args.iter());
            }
            Expr::Select(select) => stack.push(&select.operand),
            Expr::List(list) => stack.extend(list.elements.iter()),
            Expr::Comprehension(c) => {
                stack.push(&c.iter_range);
                stack.push(&c.loop_step);
                stack.push(&c.result);
            }
            _ => {}
        }
    }
    Ok(())
}

/// The refusal of `literal` compared with column `name` of shape `want`, if they differ.
fn mismatch(name: &str, want: Shape, literal: &CelVal, source: &str) -> Result<()> {
    let (got, text, hint) = match literal {
        CelVal::String(s) => (
            Shape::Text,
            format!("{s:?}"),
            match want {
                Shape::Number => format!("write {s} without quotes"),
                Shape::Bool => "write true or false without quotes".to_string(),
                Shape::Text => String::new(),
            },
        ),
        CelVal::Int(i) => (Shape::Number, i.to_string(), format!("write \"{i}\"")),
        CelVal::UInt(u) => (Shape::Number, u.to_string(), format!("write \"{u}\"")),
        CelVal::Double(d) => (Shape::Number, d.to_string(), format!("write \"{d}\"")),
        CelVal::Boolean(b) => (Shape::Bool, b.to_string(), format!("write \"{b}\"")),
        // null, and anything else, compares with every column.
        _ => return Ok(()),
    };
    if got == want {
        return Ok(());
    }
    let what = |s: Shape| match s {
        Shape::Number => "a number",
        Shape::Bool => "a boolean",
        Shape::Text => "text",
    };
    let (line, column) = position_of(literal, source).unwrap_or((1, 1));
    Err(Error::invalid_input(
        "filter",
        format!(
            "line {line}, column {column}: '{name}' is {} but {text} is {}, so they are never equal: {hint}",
            what(want),
            what(got)
        ),
    ))
}

/// Where `literal` is written in `source` (line and column, 1-based): the first token that spells it.
fn position_of(literal: &CelVal, source: &str) -> Option<(usize, usize)> {
    let tokens = tokens(source);
    let at = tokens.iter().find_map(|(at, token)| {
        let same = match (literal, token) {
            (CelVal::String(s), Token::Text(t)) => s == t,
            (CelVal::Int(i), Token::Word(w)) => w.parse::<i64>().ok() == Some(*i),
            (CelVal::UInt(u), Token::Word(w)) => {
                w.trim_end_matches(['u', 'U']).parse::<u64>().ok() == Some(*u)
            }
            (CelVal::Double(d), Token::Word(w)) => w.parse::<f64>().ok() == Some(*d),
            (CelVal::Boolean(b), Token::Word(w)) => *w == b.to_string(),
            _ => false,
        };
        same.then_some(*at)
    })?;
    let before = &source[..at];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    Some((line, column))
}

enum Token {
    /// A quoted string's content (escapes kept as written; enough to find plain literals).
    Text(String),
    /// A run of letters, digits, `.` and `_` (identifiers, numbers, keywords).
    Word(String),
}

/// The strings and words of `source` with their byte offsets.
fn tokens(source: &str) -> Vec<(usize, Token)> {
    let mut out = Vec::new();
    let mut chars = source.char_indices().peekable();
    while let Some((at, c)) = chars.next() {
        if c == '"' || c == '\'' {
            let mut text = String::new();
            let mut escaped = false;
            for (_, d) in chars.by_ref() {
                if escaped {
                    text.push(d);
                    escaped = false;
                } else if d == '\\' {
                    escaped = true;
                } else if d == c {
                    break;
                } else {
                    text.push(d);
                }
            }
            out.push((at, Token::Text(text)));
        } else if c.is_alphanumeric() || c == '_' {
            let mut word = c.to_string();
            while let Some(&(_, d)) = chars.peek() {
                // A number's decimal point belongs to it; a field access's dot starts a new word.
                let digit_dot = d == '.' && word.chars().all(|w| w.is_ascii_digit());
                if d.is_alphanumeric() || d == '_' || digit_dot {
                    word.push(d);
                    chars.next();
                } else {
                    break;
                }
            }
            out.push((at, Token::Word(word)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec() -> CollectionSpec {
        CollectionSpec {
            name: "public/orders".into(),
            schema: "public".into(),
            table: "orders".into(),
            key: vec!["id".into()],
            columns: json!([
                {"name": "id", "typeOid": 23},
                {"name": "status", "typeOid": 25},
                {"name": "total", "typeOid": 1700},
                {"name": "paid", "typeOid": 16},
                {"name": "attrs", "typeOid": 3802}
            ]),
        }
    }

    fn doc(id: i64, status: &str, total: &str, op: &str) -> Json {
        json!({"id": id, "status": status, "total": total, "paid": false, "attrs": {"n": 1},
               "_meta": {"op": op, "source": {"schema": "public", "table": "orders", "lsn": "0/10", "txid": 5, "ts_ms": 1}}})
    }

    #[test]
    fn two_conditions_over_a_change_and_its_numeric_columns() {
        let f = PreviewFilter::compile(
            "record.status == \"shipped\" && record.total > 100",
            &spec(),
        )
        .unwrap();
        assert!(f.matches(1, &doc(1, "shipped", "120.50", "c")));
        assert!(!f.matches(2, &doc(2, "shipped", "99.00", "c")));
        assert!(!f.matches(3, &doc(3, "new", "120.50", "c")));
        let f = PreviewFilter::compile("action == \"update\" && record.id == 3", &spec()).unwrap();
        assert!(f.matches(4, &doc(3, "x", "1", "u")));
        assert!(!f.matches(5, &doc(3, "x", "1", "c")));
        // A truncate has no message: it matches nothing, not even `true`.
        let t = PreviewFilter::compile("true", &spec()).unwrap();
        assert!(!t.matches(6, &json!({"_meta": {"op": "t", "source": {}}})));
    }

    #[test]
    fn a_quoted_number_is_refused_where_it_would_silently_match_nothing() {
        for (expr, needle) in [
            (
                "record.status == \"a\" && record.id == \"3\"",
                "line 1, column 38: 'id' is a number but \"3\" is text, so they are never equal: write 3 without quotes",
            ),
            (
                "record.status == 3",
                "line 1, column 18: 'status' is text but 3 is a number",
            ),
            ("\n  3.5 < record.status", "line 2, column 3: 'status' is text"),
            ("record.paid == 'true'", "'paid' is a boolean but \"true\" is text"),
            ("changes.total != \"7\"", "'total' is a number"),
        ] {
            let e = PreviewFilter::compile(expr, &spec()).unwrap_err();
            assert_eq!(e.kind(), crate::ErrorKind::InvalidInput, "{expr}");
            assert!(e.message().contains(needle), "{expr}: {e}");
        }
        // Same types, null, JSON columns and non-literals pass.
        for ok in [
            "record.id == 3",
            "record.total >= 2.5",
            "record.status == \"3\"",
            "record.status == null",
            "record.attrs.n == \"1\"",
            "record.id == record.total",
            "record.paid == false",
        ] {
            PreviewFilter::compile(ok, &spec()).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        // Parse errors keep the consumer form's position format.
        let e = PreviewFilter::compile("record.id = 7", &spec()).unwrap_err();
        assert!(e.message().contains("line 1, column 11"), "{e}");
    }
}
