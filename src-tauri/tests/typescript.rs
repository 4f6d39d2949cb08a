//! The UI imports every type that crosses the shell from `ui/src/lib/generated.ts`. This test fails
//! when that committed file is not what the Rust types render (the engine's and the shell's own), so
//! a changed field reaches the UI's type check instead of a screen at run time. With
//! `TIDEPOOL_WRITE_TYPES=1` it rewrites the file instead.

#[test]
fn generated_file_matches_the_rust_types() {
    if let Err(message) = tidepool_desktop::typescript().check_file(true) {
        panic!("{message}");
    }
}

/// Rust types of the shell itself or of the IPC, which the UI never sees as data.
const NOT_TRANSPORT: &[&str] = &[
    "State",
    "Tidepool",
    "AppHandle",
    "WebviewWindow",
    "Channel",
    "Result",
    "Option",
    "Vec",
    "String",
];

/// Every type a command takes or answers has a generated TypeScript twin: a new command whose type
/// was never added to `typescript()` would otherwise pass the drift test above while the UI typed
/// its shape by hand.
#[test]
fn every_type_a_command_takes_or_answers_is_generated() {
    let source = include_str!("../src/commands.rs");
    let aliases = use_aliases(source);
    let mut named = std::collections::BTreeSet::new();
    for signature in command_signatures(source) {
        for ident in type_idents(&signature) {
            if !NOT_TRANSPORT.contains(&ident.as_str()) {
                named.insert(aliases.get(&ident).cloned().unwrap_or(ident));
            }
        }
    }
    // The parse itself is checked: the commands name a few dozen types, among them these.
    assert!(
        named.len() > 30,
        "only {} types found: {named:?}",
        named.len()
    );
    for known in [
        "ProfileView",
        "ConsumerSpec",
        "Action",
        "TrialRequest",
        "HostKey",
    ] {
        assert!(named.contains(known), "{known} not found in {named:?}");
    }
    let declarations = tidepool_desktop::typescript();
    let missing: Vec<_> = named
        .iter()
        .filter(|name| !declarations.declares_rust_type(name))
        .collect();
    assert!(
        missing.is_empty(),
        "commands.rs takes or answers {missing:?}, which typescript() does not declare: add them \
         to tidepool::typescript::engine() (or the shell's typescript()) and regenerate"
    );
}

/// `Alias` → `Original` for each `Original as Alias` in the file's `use` lines.
fn use_aliases(source: &str) -> std::collections::HashMap<String, String> {
    let mut aliases = std::collections::HashMap::new();
    for statement in source.split(';') {
        let Some(at) = statement.find("use ") else {
            continue;
        };
        for item in statement[at + 4..].split([',', '{', '}']) {
            let words: Vec<&str> = item.split_whitespace().collect();
            if let [original, "as", alias] = words[..] {
                let original = original.rsplit("::").next().unwrap_or(original);
                aliases.insert(alias.to_string(), original.to_string());
            }
        }
    }
    aliases
}

/// The text from each `#[tauri::command]` function's `fn` to its body's `{`: parameters and answer.
fn command_signatures(source: &str) -> Vec<String> {
    let mut signatures = Vec::new();
    let mut rest = source;
    while let Some(at) = rest.find("#[tauri::command") {
        rest = &rest[at..];
        let Some(fn_at) = rest.find("fn ") else { break };
        let Some(body_at) = rest[fn_at..].find('{') else {
            break;
        };
        signatures.push(rest[fn_at..fn_at + body_at].to_string());
        rest = &rest[fn_at + body_at..];
    }
    signatures
}

/// The capitalised identifiers in a signature (types; a path's last segment).
fn type_idents(signature: &str) -> Vec<String> {
    signature
        .split(|c: char| !(c.is_alphanumeric() || c == '_'))
        .filter(|word| word.starts_with(|c: char| c.is_ascii_uppercase()))
        .map(str::to_string)
        .collect()
}
