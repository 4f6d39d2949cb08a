//! A test over the engine's own imports: which module of `src/` names which other (`crate::<module>`
//! anywhere outside comments and `#[cfg(test)] mod tests`, so `use` lines and inline paths alike),
//! and whether any of them import each other back, directly or round a loop.
//!
//! No engine module may import one that imports it back. The last knot (the row-to-document mapping
//! that capture, backfill, snapshot and store shared, issue #14) was untied by [`crate::document`];
//! the test keeps it that way, naming the edges of any loop that comes back.
//!
//! Two kinds of folder: a domain folder (`src/store/`, `src/capture/`, `src/deliver/`,
//! `src/document/`) has code in its `mod.rs` and counts as one module, its files being parts of it;
//! a grouping folder (`src/source/`, `src/app/`, listed in [`GROUPS`]) only declares modules, and each
//! of them counts on its own (`source::tls`), so grouping them hides no loop between them.

#![cfg(test)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type Graph = BTreeMap<String, BTreeSet<String>>;

/// The folders that only group modules; each module in them is a node of the graph.
const GROUPS: &[&str] = &["source", "app"];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The modules a file declares (`mod x;` and `pub mod x;`).
fn declared(file: &Path) -> Vec<String> {
    let text =
        std::fs::read_to_string(file).unwrap_or_else(|e| panic!("reading {}: {e}", file.display()));
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            let rest = line
                .strip_prefix("pub mod ")
                .or_else(|| line.strip_prefix("mod "))?;
            rest.strip_suffix(';').map(str::to_string)
        })
        .collect()
}

/// The engine's modules: those declared in `src/lib.rs`, with each grouping folder replaced by the
/// modules it declares (`source::tls`).
fn modules() -> Vec<String> {
    declared(&src().join("lib.rs"))
        .into_iter()
        .flat_map(|module| {
            if GROUPS.contains(&module.as_str()) {
                declared(&src().join(&module).join("mod.rs"))
                    .into_iter()
                    .map(|inner| format!("{module}::{inner}"))
                    .collect()
            } else {
                vec![module]
            }
        })
        .collect()
}

/// A module's source files: `src/<path>.rs`, or every `.rs` file under `src/<path>/`.
fn files(module: &str) -> Vec<PathBuf> {
    let path = module.replace("::", "/");
    let dir = src().join(&path);
    if !dir.is_dir() {
        return vec![src().join(format!("{path}.rs"))];
    }
    let mut found = Vec::new();
    let mut pending = vec![dir];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).expect("reading a module folder") {
            let path = entry.expect("reading a module folder").path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                found.push(path);
            }
        }
    }
    found
}

/// The modules `text` names as `crate::<module>` (for a grouping folder, `crate::<group>::<module>`
/// or `crate::<group>::{<module>, ..}`), leaving out comments and the unit tests.
fn imports(text: &str, modules: &[String]) -> BTreeSet<String> {
    let code = text
        .find("#[cfg(test)]\nmod tests")
        .map_or(text, |at| &text[..at]);
    // Comments out, lines joined: a `use crate::source::{..}` group may span lines. Also cuts a
    // line at a `//` inside a string literal; no `crate::` path follows one today.
    let code: String = code
        .lines()
        .map(|line| line.split("//").next().unwrap_or_default())
        .collect::<Vec<_>>()
        .join(" ");
    let word = |text: &str| -> String {
        text.chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    let mut named = BTreeSet::new();
    for (at, _) in code.match_indices("crate::") {
        let before = code[..at].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let rest = &code[at + "crate::".len()..];
        let name = word(rest);
        if GROUPS.contains(&name.as_str()) {
            let inner = rest[name.len()..].trim_start_matches("::");
            let names: Vec<String> = match inner.strip_prefix('{') {
                Some(group) => top_level_items(group)
                    .into_iter()
                    .map(|part| word(part.trim()))
                    .collect(),
                None => vec![word(inner)],
            };
            for inner in names {
                let module = format!("{name}::{inner}");
                if modules.contains(&module) {
                    named.insert(module);
                }
            }
        } else if modules.contains(&name) {
            named.insert(name);
        }
    }
    named
}

/// The items of a `{..}` group up to its closing brace (`group` starts after the opening one), each
/// with any nested group it carries: `a::{B, C}, d}` gives `a::{B, C}` and ` d`.
fn top_level_items(group: &str) -> Vec<&str> {
    let mut depth = 0usize;
    let mut end = group.len();
    let mut cuts = vec![0];
    for (at, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => {
                end = at;
                break;
            }
            '}' => depth -= 1,
            ',' if depth == 0 => cuts.push(at + 1),
            _ => {}
        }
    }
    cuts.push(end + 1);
    let group = &group[..end];
    cuts.windows(2)
        .map(|w| group[w[0]..(w[1] - 1).min(group.len())].trim_end_matches(','))
        .collect()
}

fn graph() -> Graph {
    let modules = modules();
    assert!(
        modules.len() > 10,
        "found only {modules:?} in src/lib.rs: the parser no longer reads it"
    );
    modules
        .iter()
        .map(|module| {
            let mut edges = BTreeSet::new();
            for file in files(module) {
                let text = std::fs::read_to_string(&file)
                    .unwrap_or_else(|e| panic!("reading {}: {e}", file.display()));
                edges.extend(imports(&text, &modules));
            }
            edges.remove(module);
            (module.clone(), edges)
        })
        .collect()
}

/// The groups of two or more modules that reach each other (strongly connected components).
fn loops(graph: &Graph) -> Vec<BTreeSet<String>> {
    let reach = |from: &String| {
        let mut seen = BTreeSet::new();
        let mut pending = vec![from.clone()];
        while let Some(module) = pending.pop() {
            for next in &graph[&module] {
                if seen.insert(next.clone()) {
                    pending.push(next.clone());
                }
            }
        }
        seen
    };
    let reaches: BTreeMap<&String, BTreeSet<String>> =
        graph.keys().map(|m| (m, reach(m))).collect();
    let mut groups: Vec<BTreeSet<String>> = Vec::new();
    for module in graph.keys() {
        if groups.iter().any(|g| g.contains(module)) {
            continue;
        }
        let group: BTreeSet<String> = graph
            .keys()
            .filter(|other| {
                *other == module
                    || (reaches[module].contains(*other) && reaches[*other].contains(module))
            })
            .cloned()
            .collect();
        if group.len() > 1 {
            groups.push(group);
        }
    }
    groups
}

#[test]
fn no_engine_module_imports_one_that_imports_it_back() {
    let graph = graph();
    let problems: Vec<String> = loops(&graph)
        .iter()
        .map(|group| {
            let edges: Vec<String> = group
                .iter()
                .flat_map(|from| {
                    graph[from]
                        .iter()
                        .filter(|to| group.contains(*to))
                        .map(move |to| format!("{from} → {to}"))
                })
                .collect();
            format!(
                "an import loop: {group:?} import each other ({}); move what they share into a \
                 module that imports neither",
                edges.join(", ")
            )
        })
        .collect();
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The loop finder itself: a loop of three and a chain beside it.
#[test]
fn a_loop_is_found_and_a_chain_is_not() {
    let edge = |from: &str, to: &[&str]| {
        (
            from.to_string(),
            to.iter().map(|t| t.to_string()).collect::<BTreeSet<_>>(),
        )
    };
    let graph: Graph = [
        edge("a", &["b"]),
        edge("b", &["c"]),
        edge("c", &["a", "d"]),
        edge("d", &["e"]),
        edge("e", &[]),
    ]
    .into_iter()
    .collect();
    let found = loops(&graph);
    let expected: BTreeSet<String> = ["a", "b", "c"].iter().map(|m| m.to_string()).collect();
    assert_eq!(found, vec![expected]);
}

/// Paths into a grouping folder name the module inside it, in a `use` group across lines too.
#[test]
fn a_path_into_a_grouping_folder_names_the_module_in_it() {
    let modules: Vec<String> = ["source::tls", "source::ssh", "source::slot", "store"]
        .iter()
        .map(|m| m.to_string())
        .collect();
    let text = "use crate::source::{\n    ssh::{Bastion, Tunnel},\n    tls,\n};\n\
                // crate::source::slot in a comment\n\
                fn f() { crate::store::open(); }\n";
    let named: Vec<String> = imports(text, &modules).into_iter().collect();
    assert_eq!(named, ["source::ssh", "source::tls", "store"]);
}

/// A grouping folder holds no code of its own: were it to, that code would be a module the graph
/// does not see.
#[test]
fn a_grouping_folder_only_declares_modules() {
    for group in GROUPS {
        let file = src().join(group).join("mod.rs");
        let text = std::fs::read_to_string(&file).expect("reading a grouping folder's mod.rs");
        for line in text.lines() {
            let line = line.trim();
            assert!(
                line.is_empty()
                    || line.starts_with("//")
                    || (line.starts_with("pub mod ") && line.ends_with(';')),
                "{} holds more than module declarations: {line}",
                file.display()
            );
        }
        assert!(
            !declared(&file).is_empty(),
            "{} declares no module",
            file.display()
        );
    }
}
