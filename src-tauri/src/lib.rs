//! Tidepool's desktop shell. Deliberately thin: every `#[tauri::command]` delegates to one engine call,
//! so everything the window can do can also be tested without it and done from the `tidepool` command
//! line. Errors reach the UI as the engine's `{kind, message}`.
//!
//! Invariant: nothing here logs or returns a password; the form's password arrives as a
//! [`tidepool::secrets::Secret`] and is only handed to the engine.

mod commands;
mod tray;

use tauri::{Emitter, Manager};
use tidepool::app::api::Tidepool;

/// What the app keeps in the data dir beside the engine's files: tightened at start.
const APP_ENTRIES: &[&str] = &["window-state.json", "logs"];

/// The UI's TypeScript transport types (`ui/src/lib/generated.ts`; `tests/typescript.rs` checks the
/// committed file against it). Every command returns an engine type today; a type only the shell
/// could name would be added here, in a section after the engine's.
pub fn typescript() -> tidepool::typescript::Declarations {
    tidepool::typescript::engine()
}

/// Starts the app: logging to a file in the app's log folder, then the main window.
pub fn run() {
    if let Err(message) = display_available() {
        eprintln!("{message}");
        std::process::exit(2);
    }
    // Before any thread starts: what the log appender, the window-state plugin and the web view
    // create is owner-only too, like the engine's own files.
    tidepool::owner_only::restrict_umask();
    // The engine's data dir (TIDEPOOL_DATA_DIR, else the platform's, the same as Tauri's app data dir),
    // so the app and the `tidepool` command line share profiles.
    let data_dir = match tidepool::app::profile::data_dir() {
        Ok(dir) => dir,
        Err(e) => {
            eprintln!("Tidepool cannot start: {}", e.message());
            std::process::exit(2);
        }
    };
    // Logging starts first so that tightening an older install's files is in the log.
    let log_dir = data_dir.join("logs");
    if let Err(e) = tidepool::owner_only::create_dir_all(&log_dir) {
        eprintln!("Tidepool cannot start: creating {}: {e}", log_dir.display());
        std::process::exit(2);
    }
    init_logging(&log_dir);
    tidepool::owner_only::tighten(&data_dir, APP_ENTRIES);
    tauri::Builder::default()
        // The window reopens at the size and place it was left (saved on exit and on each resize).
        // An absolute file name replaces the plugin's folder: the state lives in the data dir with
        // everything else Tidepool keeps.
        .plugin(
            tauri_plugin_window_state::Builder::default()
                .with_filename(data_dir.join("window-state.json").to_string_lossy())
                .build(),
        )
        .on_window_event(|window, event| match event {
            // Closing while capturing asks first: keep capturing in the background, or stop.
            tauri::WindowEvent::CloseRequested { api, .. }
                if window.state::<Tidepool>().runs().any_running() =>
            {
                api.prevent_close();
                let _ = window.emit("close-requested", ());
            }
            tauri::WindowEvent::Resized(_) => {
                use tauri_plugin_window_state::{AppHandleExt, StateFlags};
                let _ = window.app_handle().save_window_state(StateFlags::all());
            }
            _ => {}
        })
        // The engine is the shell's only state: every command is one call on it.
        .manage(Tidepool::open(&data_dir))
        .setup(move |app| {
            tracing::info!(version = env!("CARGO_PKG_VERSION"), data_dir = %data_dir.display(), "Tidepool started");
            // While the window is minimized, the tray shows that a capture runs.
            tray::install(app.handle());
            Ok(())
        })
        .invoke_handler(tauri::generate_handler![
            commands::list_profiles,
            commands::save_profile,
            commands::delete_profile,
            commands::discard_store,
            commands::autofill,
            commands::test_connection,
            commands::ssh_host_key,
            commands::keychain_status,
            commands::neon_key_status,
            commands::set_neon_key,
            commands::remove_neon_key,
            commands::discover_tables,
            commands::capture_definition,
            commands::publish_capture,
            commands::plan_publication,
            commands::plan_save_and_publish,
            commands::save_and_publish,
            commands::preflight,
            commands::run_fix,
            commands::preview_action,
            commands::neon_projects,
            commands::neon_branches,
            commands::neon_locate,
            commands::link_neon,
            commands::start_capture,
            commands::stop_capture,
            commands::capture_status,
            commands::collections,
            commands::collection_page,
            commands::export_collection,
            commands::open_export_folder,
            commands::tail_collection,
            commands::stop_tail,
            commands::start_demo,
            commands::stop_demo,
            commands::demo_profile,
            commands::stop_and_drop_slot,
            commands::resync_capture,
            commands::slot_health,
            commands::stop_captures_and_quit,
            commands::keep_capturing_in_background,
            commands::check_collection_name,
            commands::export_capture,
            commands::list_consumers,
            commands::add_consumer,
            commands::remove_consumer,
            commands::reveal_signing_secret,
            commands::reveal_pull_token,
            commands::retry_consumer,
            commands::skip_consumer,
            commands::check_consumer_filter,
            commands::set_consumer_paused,
            commands::consumer_activity,
            commands::test_consumer,
            commands::edit_consumer,
            commands::try_webhook,
            commands::trial_webhook_requests,
        ])
        .build(tauri::generate_context!())
        .expect("the Tauri runtime failed to start")
        .run(|app, event| {
            if let tauri::RunEvent::Exit = event {
                // The demo database lives only as long as the app.
                if let Err(e) = app.state::<Tidepool>().shut_down() {
                    tracing::warn!(error = %e.message(), "removing the demo database at exit");
                }
            }
        });
}

fn init_logging(dir: &std::path::Path) {
    let file = tracing_appender::rolling::daily(dir, "tidepool.log");
    let filter = tracing_subscriber::EnvFilter::try_from_env("TIDEPOOL_LOG")
        .unwrap_or_else(|_| "info".into());
    // A second initialisation (tests that build the app twice) keeps the first subscriber.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(file)
        .try_init();
}

/// On Linux, GTK aborts with an opaque message when there is no display; say what to do instead.
fn display_available() -> Result<(), String> {
    if !cfg!(target_os = "linux") {
        return Ok(());
    }
    let set = |name: &str| std::env::var_os(name).is_some_and(|v| !v.is_empty());
    if set("DISPLAY") || set("WAYLAND_DISPLAY") {
        Ok(())
    } else {
        Err("Tidepool is a desktop app and found no display (neither DISPLAY nor WAYLAND_DISPLAY is set).\n\
             Start it from a graphical session, or under a virtual display: xvfb-run -a tidepool-desktop.\n\
             Everything it does is also available without a window: run `tidepool --help`."
            .to_string())
    }
}
