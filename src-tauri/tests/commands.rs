//! The command list is written in five places (the `#[tauri::command]` fns, `generate_handler!`,
//! `build.rs`'s `COMMANDS`, the window's capability and the UI's backend module). A command left
//! out of one is refused or unreachable only at run time, in the one screen that calls it; this
//! test fails at once, naming the command and the place.

#[path = "support/command_list.rs"]
mod command_list;

use command_list::Listing;

/// The grants in the capability that are not Tidepool's commands: listening to its events, nothing
/// else (no window, file system or shell API).
const OTHER_GRANTS: &[&str] = &["core:event:allow-listen", "core:event:allow-unlisten"];

#[test]
fn every_command_is_defined_registered_permitted_granted_and_called_alike() {
    let defined = command_list::defined();
    let (granted, other_grants) = command_list::granted();
    let others = [
        command_list::registered(),
        command_list::permitted(),
        granted,
        command_list::called(),
    ];
    assert!(
        defined.names.len() > 10,
        "found only {:?} in {}: the parser no longer reads it",
        defined.names,
        defined.place
    );
    let mut problems = Vec::new();
    for listing in std::iter::once(&defined).chain(&others) {
        for (i, name) in listing.names.iter().enumerate() {
            if listing.names[..i].contains(name) {
                problems.push(format!("{name} is listed twice in {}", listing.place));
            }
        }
    }
    for Listing { place, names } in &others {
        for name in &defined.names {
            if !names.contains(name) {
                problems.push(format!("{name} is missing from {place}"));
            }
        }
        for name in names {
            if !defined.names.contains(name) {
                problems.push(format!(
                    "{name} is in {place} but is not a command in {}",
                    defined.place
                ));
            }
        }
    }
    if other_grants != OTHER_GRANTS {
        problems.push(format!(
            "capabilities/default.json grants {other_grants:?} besides the commands, expected exactly {OTHER_GRANTS:?}"
        ));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
