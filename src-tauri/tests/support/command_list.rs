//! The shell's command names as each of the five places that must agree writes them: the
//! `#[tauri::command]` functions in `src/commands.rs`, `generate_handler!` in `src/lib.rs`,
//! `COMMANDS` in `build.rs` (one permission each), the window's capability
//! (`capabilities/default.json`) and the UI's calls (`ui/src/lib/backend/index.ts`). Read from the
//! sources as text, so a test needs no window and no build of the UI.

use std::path::PathBuf;

/// One place's list of command names, in the order written there.
pub struct Listing {
    /// The file and construct the names were read from, for the failure message.
    pub place: &'static str,
    pub names: Vec<String>,
}

fn read(relative: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// The text between `start` (exclusive) and the first `end` after it.
fn between<'a>(text: &'a str, start: &str, end: &str, place: &str) -> &'a str {
    let from = text
        .find(start)
        .unwrap_or_else(|| panic!("{place}: `{start}` not found"))
        + start.len();
    let to = text[from..]
        .find(end)
        .unwrap_or_else(|| panic!("{place}: no `{end}` after `{start}`"));
    &text[from..from + to]
}

/// Every string literal in `text`, in order (no escapes occur in command names).
fn quoted(text: &str) -> Vec<String> {
    text.split('"')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

/// The functions marked `#[tauri::command]` (with or without options) in `src/commands.rs`.
pub fn defined() -> Listing {
    let text = read("src/commands.rs");
    let names = text
        .split("#[tauri::command")
        .skip(1)
        .map(|after| {
            let fn_at = after
                .find("fn ")
                .expect("src/commands.rs: a #[tauri::command] with no fn after it");
            after[fn_at + 3..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect()
        })
        .collect();
    Listing {
        place: "src/commands.rs (#[tauri::command] fns)",
        names,
    }
}

/// The handlers registered with `generate_handler!` in `src/lib.rs`.
pub fn registered() -> Listing {
    let text = read("src/lib.rs");
    let inside = between(&text, "generate_handler![", "]", "src/lib.rs");
    let names = inside
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.rsplit("::").next().unwrap_or(s).to_string())
        .collect();
    Listing {
        place: "src/lib.rs (generate_handler!)",
        names,
    }
}

/// `COMMANDS` in `build.rs`: the commands Tauri makes an `allow-<command>` permission for.
pub fn permitted() -> Listing {
    let text = read("build.rs");
    let inside = between(&text, "const COMMANDS: &[&str] = &[", "];", "build.rs");
    Listing {
        place: "build.rs (COMMANDS)",
        names: quoted(inside),
    }
}

/// The window capability's grants, as command names (`allow-stop-tail` is `stop_tail`), and every
/// grant that is not one of Tidepool's commands.
pub fn granted() -> (Listing, Vec<String>) {
    let text = read("capabilities/default.json");
    let json: serde_json::Value =
        serde_json::from_str(&text).expect("capabilities/default.json is not JSON");
    let permissions = json["permissions"]
        .as_array()
        .expect("capabilities/default.json: no permissions array");
    let mut names = Vec::new();
    let mut others = Vec::new();
    for permission in permissions {
        // A grant with scopes is an object whose `identifier` names the permission.
        let id = permission
            .as_str()
            .or_else(|| permission["identifier"].as_str())
            .unwrap_or_default();
        match id.strip_prefix("allow-") {
            Some(command) => names.push(command.replace('-', "_")),
            None => others.push(id.to_string()),
        }
    }
    let listing = Listing {
        place: "capabilities/default.json (allow-*)",
        names,
    };
    (listing, others)
}

/// The command names the UI passes to `call<T>("…", …)` in `ui/src/lib/backend/index.ts`, each once
/// (the UI may call one command from two places).
pub fn called() -> Listing {
    let text = read("../ui/src/lib/backend/index.ts");
    let mut names: Vec<String> = Vec::new();
    for after in text.split("call<").skip(1) {
        // `call<T>(command: string, …)` itself is the one `call<…>(` not followed by a name.
        let Some(name) = after
            .find(">(")
            .and_then(|close| after[close + 2..].strip_prefix('"'))
            .and_then(|rest| rest.split('"').next())
        else {
            continue;
        };
        if !names.iter().any(|n| n == name) {
            names.push(name.to_string());
        }
    }
    Listing {
        place: "ui/src/lib/backend/index.ts (call<…>(\"…\"))",
        names,
    }
}
