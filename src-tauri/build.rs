//! Every command the UI may call is listed here, so Tauri generates one `allow-<command>` permission
//! per command; `capabilities/default.json` grants exactly those (plus listening to events), and the
//! window can reach nothing else. Keep this list, `generate_handler!` in lib.rs, the capability and
//! the UI's backend module the same: a command missing here is refused at run time, and
//! `tests/commands.rs` fails naming it.

const COMMANDS: &[&str] = &[
    "list_profiles",
    "save_profile",
    "delete_profile",
    "discard_store",
    "autofill",
    "test_connection",
    "ssh_host_key",
    "keychain_status",
    "neon_key_status",
    "set_neon_key",
    "remove_neon_key",
    "discover_tables",
    "capture_definition",
    "publish_capture",
    "plan_publication",
    "plan_save_and_publish",
    "save_and_publish",
    "preflight",
    "run_fix",
    "preview_action",
    "neon_projects",
    "neon_branches",
    "neon_locate",
    "link_neon",
    "start_capture",
    "stop_capture",
    "capture_status",
    "collections",
    "collection_page",
    "export_collection",
    "open_export_folder",
    "tail_collection",
    "stop_tail",
    "start_demo",
    "stop_demo",
    "demo_profile",
    "stop_and_drop_slot",
    "resync_capture",
    "slot_health",
    "stop_captures_and_quit",
    "keep_capturing_in_background",
    "check_collection_name",
    "export_capture",
    "list_consumers",
    "add_consumer",
    "remove_consumer",
    "reveal_signing_secret",
    "reveal_pull_token",
    "retry_consumer",
    "skip_consumer",
    "check_consumer_filter",
    "set_consumer_paused",
    "consumer_activity",
    "test_consumer",
    "edit_consumer",
    "try_webhook",
    "trial_webhook_requests",
];

fn main() {
    tauri_build::try_build(
        tauri_build::Attributes::new()
            .app_manifest(tauri_build::AppManifest::new().commands(COMMANDS)),
    )
    .expect("tauri-build failed");
}
