//! A test over the engine's own imports: which top-level module of `src/` names which other
//! (`crate::<module>` anywhere outside comments and `#[cfg(test)] mod tests`, so `use` lines and
//! inline paths alike), and whether any of them import each other back, directly or round a loop.
//!
//! No engine module may import one that imports it back. The last knot (the row-to-document mapping
//! that capture, backfill, snapshot and store shared, issue #14) was untied by [`crate::document`];
//! the test keeps it that way, naming the edges of any loop that comes back. A module in a folder
//! (`src/deliver/`, `src/document/`) counts as its folder.

#![cfg(test)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type Graph = BTreeMap<String, BTreeSet<String>>;

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The top-level modules declared in `src/lib.rs`.
fn modules() -> Vec<String> {
    let lib = std::fs::read_to_string(src().join("lib.rs")).expect("reading src/lib.rs");
    lib.lines()
        .filter_map(|line| {
            let line = line.trim();
            let rest = line
                .strip_prefix("pub mod ")
                .or_else(|| line.strip_prefix("mod "))?;
            rest.strip_suffix(';').map(str::to_string)
        })
        .collect()
}

/// A module's source files: `src/<name>.rs`, or every `.rs` file under `src/<name>/`.
fn files(module: &str) -> Vec<PathBuf> {
    let dir = src().join(module);
    if !dir.is_dir() {
        return vec![src().join(format!("{module}.rs"))];
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

/// The modules `text` names as `crate::<module>`, leaving out comments and the unit tests.
fn imports(text: &str, modules: &[String]) -> BTreeSet<String> {
    let code = text
        .find("#[cfg(test)]\nmod tests")
        .map_or(text, |at| &text[..at]);
    let mut named = BTreeSet::new();
    for line in code.lines() {
        // Also cuts a line at a `//` inside a string literal; no `crate::` path follows one today.
        let line = line.split("//").next().unwrap_or_default();
        for (at, _) in line.match_indices("crate::") {
            let before = line[..at].chars().next_back();
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                continue;
            }
            let name: String = line[at + "crate::".len()..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if modules.contains(&name) {
                named.insert(name);
            }
        }
    }
    named
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
