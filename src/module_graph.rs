//! A test over the engine's own imports: which top-level module of `src/` names which other
//! (`crate::<module>` anywhere outside comments and `#[cfg(test)] mod tests`, so `use` lines and
//! inline paths alike), and whether any of them import each other back, directly or round a loop.
//!
//! No engine module may import one that imports it back. Today one knot breaks that rule (issue
//! #14: the row-to-document mapping that capture, backfill, snapshot and store share, and the
//! modules pulled in with them); it is written out in [`KNOWN_LOOP`] so that no new loop can land
//! and the knot cannot grow. Untying it shrinks the list; the test then asks for the list to shrink.
//! A module in a folder (`src/deliver/`) counts as its folder.

#![cfg(test)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The modules that import each other round a loop today. Only modules from this list may be in a
/// loop, all in this one, and each of them must still be in it.
const KNOWN_LOOP: &[&str] = &[
    "backfill",
    "binding",
    "capture",
    "continuity",
    "discovery",
    "retention",
    "snapshot",
    "store",
];

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
fn no_engine_module_imports_one_that_imports_it_back_beyond_the_known_loop() {
    let graph = graph();
    let known: BTreeSet<String> = KNOWN_LOOP.iter().map(|m| m.to_string()).collect();
    let mut problems = Vec::new();
    let groups = loops(&graph);
    for group in &groups {
        if !group.is_subset(&known) || groups.len() > 1 {
            let edges: Vec<String> = group
                .iter()
                .flat_map(|from| {
                    graph[from]
                        .iter()
                        .filter(|to| group.contains(*to))
                        .map(move |to| format!("{from} → {to}"))
                })
                .collect();
            problems.push(format!(
                "a new import loop: {group:?} import each other ({}); break it instead of \
                 widening KNOWN_LOOP",
                edges.join(", ")
            ));
        }
    }
    let looping: BTreeSet<String> = groups.iter().flatten().cloned().collect();
    for module in known.difference(&looping) {
        problems.push(format!(
            "{module} is no longer in an import loop: take it out of KNOWN_LOOP in src/module_graph.rs"
        ));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
