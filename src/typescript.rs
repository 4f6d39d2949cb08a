//! The TypeScript declarations of the types that cross the desktop shell, generated from the Rust
//! types themselves (with ts-rs, which reads their serde attributes), so the UI's copy cannot drift
//! from what serde sends and accepts.
//!
//! The UI imports them from one committed file, [`GENERATED_FILE`]. This module renders the engine's
//! part of it; the shell adds its own few types in a section after it (`tidepool_desktop::typescript`,
//! checked by `src-tauri/tests/typescript.rs`).
//! A test on each side fails when the committed file differs from what the Rust types render, and
//! rewrites it when [`WRITE_VAR`] is set.
//!
//! Integers are declared `number` whatever their width: serde_json writes a `u64` as a plain JSON
//! number, which `JSON.parse` reads into a `number` (past 2^53 with lost precision), never a `bigint`.

use std::any::TypeId;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::PathBuf;

use ts_rs::{Config, TypeVisitor, TS};

/// The committed file, relative to the repository's root.
pub const GENERATED_FILE: &str = "ui/src/lib/generated.ts";

/// Set to `1` to rewrite [`GENERATED_FILE`] instead of comparing it.
pub const WRITE_VAR: &str = "TIDEPOOL_WRITE_TYPES";

/// The command that regenerates the whole file (the shell's test renders the engine's part too).
pub const REGENERATE: &str =
    "TIDEPOOL_WRITE_TYPES=1 cargo test -p tidepool-desktop --test typescript";

/// The command that regenerates the engine's part alone, without building the shell.
pub const REGENERATE_ENGINE: &str =
    "TIDEPOOL_WRITE_TYPES=1 cargo test -p tidepool --lib typescript";

/// What starts each section after the engine's; the engine's check stops there.
const SECTION_MARK: &str = "// ─── ";

/// [`GENERATED_FILE`] in this checkout.
pub fn generated_file() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(GENERATED_FILE)
}

/// TypeScript declarations collected from Rust types, each with the types it names, in sections.
pub struct Declarations {
    config: Config,
    seen: HashSet<TypeId>,
    /// The Rust paths of the declared types (`tidepool::app::profile::ProfileView`).
    rust_paths: BTreeSet<String>,
    /// Each section's title (none for the first) and its declarations by TypeScript name.
    sections: Vec<(Option<String>, BTreeMap<String, String>)>,
}

impl Default for Declarations {
    fn default() -> Self {
        Declarations {
            config: Config::new().with_large_int("number"),
            seen: HashSet::new(),
            rust_paths: BTreeSet::new(),
            sections: vec![(None, BTreeMap::new())],
        }
    }
}

impl Declarations {
    /// Declares `T` and every type it names that is not declared yet, in the current section.
    pub fn add<T: TS + 'static + ?Sized>(&mut self) -> &mut Self {
        self.visit::<T>();
        self
    }

    /// Starts a section: what is added from now on is declared under `title`, after what came before.
    pub fn section(&mut self, title: &str) -> &mut Self {
        self.sections
            .push((Some(title.to_string()), BTreeMap::new()));
        self
    }

    /// Whether a Rust type whose path ends in `::{name}` is declared: how the shell's test finds
    /// a command whose argument or answer type was never added, so has no TypeScript twin.
    pub fn declares_rust_type(&self, name: &str) -> bool {
        let suffix = format!("::{name}");
        self.rust_paths.iter().any(|path| path.ends_with(&suffix))
    }

    /// The file's text: the header, then each section's declarations in name order.
    pub fn render(&self) -> String {
        let mut out = format!(
            "// Generated from the Rust transport types by ts-rs: do not edit by hand.\n\
             // Regenerate with `{REGENERATE}`\n\
             // (the engine's part alone: `{REGENERATE_ENGINE}`).\n\
             // Hand-written UI types, constants and guards live in types.ts, which re-exports these.\n"
        );
        for (title, declarations) in &self.sections {
            if let Some(title) = title {
                out.push_str(&format!("\n{SECTION_MARK}{title}\n"));
            }
            for declaration in declarations.values() {
                out.push('\n');
                out.push_str(declaration);
                out.push('\n');
            }
        }
        out
    }

    /// Compares the committed file with [`Declarations::render`], or rewrites it when [`WRITE_VAR`]
    /// is set. `whole` says whether these declarations are the whole file; when not (the engine's
    /// own check), the file may go on with further sections, which a rewrite keeps.
    pub fn check_file(&self, whole: bool) -> Result<(), String> {
        let path = generated_file();
        let rendered = self.render();
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        let rest = if whole {
            ""
        } else {
            committed
                .find(&format!("\n{SECTION_MARK}"))
                .map_or("", |at| &committed[at..])
        };
        let expected = format!("{rendered}{rest}");
        if committed == expected {
            return Ok(());
        }
        if std::env::var(WRITE_VAR).is_ok_and(|v| v == "1") {
            return std::fs::write(&path, expected)
                .map_err(|e| format!("writing {}: {e}", path.display()));
        }
        let (line, want, have) = first_difference(&expected, &committed);
        Err(format!(
            "{GENERATED_FILE} is not what the Rust transport types generate (line {line}: the types \
             give {want:?}, the file has {have:?}).\nRegenerate it with `{REGENERATE}` (the engine's \
             part alone: `{REGENERATE_ENGINE}`), then fix what the UI's type check finds, and commit it."
        ))
    }

    fn visit<T: TS + 'static + ?Sized>(&mut self) {
        // Primitives and containers have no declaration of their own (no output path); what they
        // contain is visited through their generics.
        if T::output_path().is_none() || !self.seen.insert(TypeId::of::<T>()) {
            return;
        }
        self.rust_paths
            .insert(std::any::type_name::<T>().to_string());
        let docs = T::docs().unwrap_or_default();
        let declaration = format!("{docs}export {}", layout(&T::decl(&self.config)));
        let name = T::ident(&self.config);
        let previous = self.sections.iter().find_map(|(_, d)| d.get(&name));
        assert!(
            previous.is_none_or(|p| *p == declaration),
            "two Rust types are declared as {name} in TypeScript: give one a #[ts(rename = \"…\")]"
        );
        if let Some((_, current)) = self.sections.last_mut() {
            current.insert(name, declaration);
        }
        T::visit_dependencies(&mut Visitor(self));
    }
}

struct Visitor<'a>(&'a mut Declarations);

impl TypeVisitor for Visitor<'_> {
    fn visit<T: TS + 'static + ?Sized>(&mut self) {
        self.0.visit::<T>();
    }
}

/// Lays out one declaration, which ts-rs gives on one line with its members' docs inline, for a
/// person to read: an object whose members carry docs gets one member per line, and a union that
/// has such objects or is long gets one variant per line.
fn layout(declaration: &str) -> String {
    let Some((head, body)) = declaration.split_once(" = ") else {
        return declaration.to_string();
    };
    let body = body.trim_end().strip_suffix(';').unwrap_or(body);
    let variants = split_union(body);
    if variants.len() > 1 && (body.contains("/**") || declaration.len() > 100) {
        let mut out = format!("{head} =");
        for variant in variants {
            out.push_str("\n  | ");
            out.push_str(&render(&parse(&mut variant.trim().chars().peekable()), 1));
        }
        out.push(';');
        out
    } else {
        let body = render(&parse(&mut body.chars().peekable()), 0);
        format!("{head} = {body};")
    }
}

/// A declaration's body as ts-rs writes it: text, string literals, doc comments and objects.
enum Node {
    Text(String),
    Str(String),
    Comment(String),
    Object(Vec<Node>),
}

/// Reads nodes up to the end or the `}` that closes the object being read.
fn parse(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> Vec<Node> {
    let mut nodes = Vec::new();
    let mut text = String::new();
    let flush = |text: &mut String, nodes: &mut Vec<Node>| {
        if !text.is_empty() {
            nodes.push(Node::Text(std::mem::take(text)));
        }
    };
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                flush(&mut text, &mut nodes);
                let mut literal = String::from('"');
                while let Some(c) = chars.next() {
                    literal.push(c);
                    if c == '\\' {
                        literal.extend(chars.next());
                    } else if c == '"' {
                        break;
                    }
                }
                nodes.push(Node::Str(literal));
            }
            '/' if chars.peek() == Some(&'*') => {
                flush(&mut text, &mut nodes);
                let mut comment = String::from('/');
                for c in chars.by_ref() {
                    comment.push(c);
                    if comment.len() > 3 && comment.ends_with("*/") {
                        break;
                    }
                }
                nodes.push(Node::Comment(comment));
            }
            '{' => {
                flush(&mut text, &mut nodes);
                nodes.push(Node::Object(parse(chars)));
            }
            '}' => break,
            '\n' => text.push(' '),
            c => text.push(c),
        }
    }
    flush(&mut text, &mut nodes);
    nodes
}

/// Writes `nodes` at `indent` (in steps of two spaces): an object with doc comments among its
/// members one member per line, any other object inline.
fn render(nodes: &[Node], indent: usize) -> String {
    let mut out = String::new();
    for node in nodes {
        match node {
            Node::Text(text) | Node::Str(text) | Node::Comment(text) => out.push_str(text),
            Node::Object(members) if members.iter().any(|m| matches!(m, Node::Comment(_))) => {
                out.push_str(&render_members(members, indent));
            }
            Node::Object(members) => {
                out.push('{');
                out.push_str(&render(members, indent));
                out.push('}');
            }
        }
    }
    out
}

/// An object one member per line, each after its doc comment, closed at `indent`.
fn render_members(members: &[Node], indent: usize) -> String {
    let pad = "  ".repeat(indent + 1);
    let mut lines: Vec<String> = Vec::new();
    let mut line = String::new();
    let flush = |line: &mut String, lines: &mut Vec<String>| {
        let member = line.split_whitespace().collect::<Vec<_>>().join(" ");
        if !member.is_empty() {
            lines.push(format!("{pad}{member}"));
        }
        line.clear();
    };
    for member in members {
        match member {
            Node::Text(text) => {
                for c in text.chars() {
                    line.push(c);
                    if c == ',' {
                        flush(&mut line, &mut lines);
                    }
                }
            }
            Node::Str(text) => line.push_str(text),
            Node::Object(_) => line.push_str(&render(std::slice::from_ref(member), indent + 1)),
            Node::Comment(comment) => {
                flush(&mut line, &mut lines);
                for (i, text) in comment.lines().map(str::trim).enumerate() {
                    let space = if i == 0 { "" } else { " " };
                    lines.push(format!("{pad}{space}{text}"));
                }
            }
        }
    }
    flush(&mut line, &mut lines);
    format!("{{\n{}\n{}}}", lines.join("\n"), "  ".repeat(indent))
}

/// `body`'s union variants: split at each `|` outside brackets, strings and comments.
fn split_union(body: &str) -> Vec<&str> {
    let mut variants = Vec::new();
    let (mut depth, mut start) = (0usize, 0);
    let mut in_string = false;
    let mut in_comment = false;
    let bytes = body.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        if in_comment {
            in_comment = !(b == b'/' && i > 0 && bytes[i - 1] == b'*');
        } else if in_string {
            in_string = !(b == b'"' && bytes[i - 1] != b'\\');
        } else {
            match b {
                b'"' => in_string = true,
                b'/' if bytes.get(i + 1) == Some(&b'*') => in_comment = true,
                b'{' | b'<' | b'(' | b'[' => depth += 1,
                b'}' | b'>' | b')' | b']' => depth = depth.saturating_sub(1),
                b'|' if depth == 0 => {
                    variants.push(&body[start..i]);
                    start = i + 1;
                }
                _ => {}
            }
        }
    }
    variants.push(&body[start..]);
    variants
}

/// The first line where `expected` and `committed` differ (1-based), and both lines there.
fn first_difference(expected: &str, committed: &str) -> (usize, String, String) {
    let mut want = expected.lines();
    let mut have = committed.lines();
    let mut line = 1;
    loop {
        match (want.next(), have.next()) {
            (Some(w), Some(h)) if w == h => line += 1,
            (None, None) => return (line, String::new(), String::new()),
            (w, h) => {
                let show = |l: Option<&str>| l.map_or("<end of file>".to_string(), str::to_string);
                return (line, show(w), show(h));
            }
        }
    }
}

/// Every engine type that crosses the shell: the arguments and results of the shell's commands
/// (`src-tauri/src/commands.rs`), what it emits (`capture-status`, a tail's changes) and the error
/// every command may fail with. The types they name come along.
pub fn engine() -> Declarations {
    use crate::app::{api, consumers, export, preview, profile, run};
    use crate::source::{connection, discovery, health, neon, preflight, publication, setup, ssh};
    use crate::{binding, capture, deliver, secrets, store};
    let mut d = Declarations::default();
    d.add::<crate::Error>()
        // Profiles, the keychain and Neon.
        .add::<profile::ProfileView>()
        .add::<profile::ProfileDraft>()
        .add::<profile::SaveCheck>()
        .add::<profile::Removed>()
        .add::<profile::Autofill>()
        .add::<profile::RevealedSecret>()
        .add::<secrets::Secret>()
        .add::<secrets::KeychainStatus>()
        .add::<secrets::NeonKeyStatus>()
        .add::<connection::ServerFacts>()
        .add::<ssh::HostKey>()
        .add::<neon::Project>()
        .add::<neon::Branch>()
        .add::<neon::Link>()
        // Tables, publication and setup.
        .add::<discovery::DiscoveredTable>()
        .add::<binding::Definition>()
        .add::<binding::Binding>()
        .add::<publication::Choice>()
        .add::<publication::TableRef>()
        .add::<publication::Plan>()
        .add::<capture::PublishPlan>()
        .add::<preflight::Check>()
        .add::<preflight::Fix>()
        .add::<setup::Action>()
        .add::<setup::RunAs>()
        // The capture and its collections.
        .add::<run::RunStatus>()
        .add::<run::TailEntry>()
        .add::<store::CollectionInfo>()
        .add::<preview::PageRequest>()
        .add::<preview::Page>()
        .add::<preview::View>()
        .add::<preview::ExportFormat>()
        .add::<preview::Exported>()
        .add::<export::Engine>()
        .add::<export::ExportFile>()
        .add::<health::SlotHealth>()
        // Consumers.
        .add::<consumers::ConsumerView>()
        .add::<consumers::ConsumerActivity>()
        .add::<consumers::SecretHeader>()
        .add::<consumers::FilterCheck>()
        .add::<deliver::consumer::ConsumerSpec>()
        .add::<deliver::consumer::Consumer>()
        .add::<deliver::consumer::Action>()
        .add::<deliver::webhook::TestResult>()
        .add::<deliver::trial::TrialRequest>()
        .add::<api::TrialWebhook>()
        .add::<run::PullAccess>();
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The committed file's engine part is what the engine's types render (the shell's test checks
    /// the whole file, its own types included).
    #[test]
    fn generated_file_matches_the_engine_types() {
        if let Err(message) = engine().check_file(false) {
            panic!("{message}");
        }
    }

    #[test]
    fn large_integers_are_numbers_as_serde_json_writes_them() {
        let page = engine().render();
        assert!(!page.contains("bigint"), "{page}");
    }

    #[test]
    fn layout_puts_documented_members_on_their_own_lines() {
        let one_line = "type A = { \"kind\": \"b\", \n/**\n * The c, e.g. `{x}`.\n */\nc: Array<{ d: string, }>, e: string | null, };";
        assert_eq!(
            layout(one_line),
            "type A = {\n  \"kind\": \"b\",\n  /**\n   * The c, e.g. `{x}`.\n   */\n  c: Array<{ d: string, }>,\n  e: string | null,\n};"
        );
        let union = "type U = { \"k\": \"a\" } | { \"k\": \"b\", \n/**\n * Why | not.\n */\nwhy: string, };";
        assert_eq!(
            layout(union),
            "type U =\n  | { \"k\": \"a\" }\n  | {\n    \"k\": \"b\",\n    /**\n     * Why | not.\n     */\n    why: string,\n  };"
        );
        assert_eq!(layout("type S = \"a\" | \"b\";"), "type S = \"a\" | \"b\";");
    }

    #[test]
    fn first_difference_names_the_line() {
        assert_eq!(
            first_difference("a\nb\nc\n", "a\nx\nc\n"),
            (2, "b".to_string(), "x".to_string())
        );
        assert_eq!(
            first_difference("a\nb\n", "a\n"),
            (2, "b".to_string(), "<end of file>".to_string())
        );
    }
}
