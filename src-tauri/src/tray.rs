//! The system tray icon: "Keep capturing in the background" minimizes the window, and the tray is
//! where the person still sees that a capture runs (its menu's first line and the tooltip) and can
//! open the window or stop the captures.
//!
//! Invariants: the menu's "Stop capturing" goes through the same engine call as the Capture tab's
//! Stop ([`tidepool::app::run::Runs::stop`], per running capture) and tells the window the same way
//! (`capture-status` events). A tray that cannot be made (no appindicator library, no tray host)
//! is logged and the app runs without it: nothing here may stop the app from starting.

use std::sync::Mutex;
use std::time::Duration;

use tauri::menu::{Menu, MenuItem, PredefinedMenuItem};
use tauri::tray::{TrayIcon, TrayIconBuilder};
use tauri::{AppHandle, Emitter, Manager, Wry};
use tidepool::app::api::Tidepool;
use tidepool::app::run::{RunState, RunStatus};

/// The tray's parts that change with the captures.
struct Tray {
    icon: TrayIcon<Wry>,
    state: MenuItem<Wry>,
    stop: MenuItem<Wry>,
    /// The last line shown, so the tray is touched only when it changes.
    shown: Mutex<String>,
}

/// Makes the tray icon and keeps it up to date (once a second). Logs and returns if the platform
/// has no tray.
pub fn install(app: &AppHandle) {
    // On Linux the appindicator library is loaded at run time, and a missing one panics inside the
    // tray crate: catch that too, so a desktop without a tray still gets its window. Meanwhile a
    // panic goes to the log (with the library's own message) instead of a backtrace on stderr.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|info| {
        tracing::warn!(panic = %info, "making the tray icon");
    }));
    let made = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| build(app)));
    std::panic::set_hook(hook);
    let tray = match made {
        Ok(Ok(tray)) => tray,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "no tray icon: the window stays the only sign of a running capture");
            return;
        }
        Err(_) => {
            tracing::warn!(
                "no tray icon: the appindicator library (libayatana-appindicator3-1) could not be loaded"
            );
            return;
        }
    };
    tracing::info!("tray icon installed");
    app.manage(tray);
    let app = app.clone();
    std::thread::Builder::new()
        .name("tray".into())
        .spawn(move || loop {
            refresh(&app);
            std::thread::sleep(Duration::from_secs(1));
        })
        .map(|_| ())
        .unwrap_or_else(|e| tracing::warn!(error = %e, "the tray will not follow the captures"));
}

fn build(app: &AppHandle) -> tauri::Result<Tray> {
    let state = MenuItem::with_id(app, "state", line(&[]), false, None::<&str>)?;
    let open = MenuItem::with_id(app, "open", "Open Tidepool", true, None::<&str>)?;
    let stop = MenuItem::with_id(app, "stop", "Stop capturing", false, None::<&str>)?;
    let menu = Menu::with_items(
        app,
        &[&state, &PredefinedMenuItem::separator(app)?, &open, &stop],
    )?;
    let mut builder = TrayIconBuilder::with_id("tidepool")
        .tooltip(format!("Tidepool: {}", line(&[])))
        .menu(&menu)
        .on_menu_event(|app, event| match event.id.as_ref() {
            "open" => open_window(app),
            "stop" => stop_captures(app),
            _ => {}
        });
    if let Some(icon) = app.default_window_icon() {
        builder = builder.icon(icon.clone());
    }
    let icon = builder.build(app)?;
    Ok(Tray {
        icon,
        state,
        stop,
        shown: Mutex::new(line(&[])),
    })
}

/// What the tray says about the captures: none, or each running one's profile and state.
fn line(running: &[(String, RunState)]) -> String {
    if running.is_empty() {
        return "No capture running".into();
    }
    let each: Vec<String> = running
        .iter()
        .map(|(name, state)| {
            let state = match state {
                RunState::Starting => "starting",
                RunState::Streaming => "streaming",
                RunState::Failed => "failed",
                RunState::Stopped => "stopped",
            };
            format!("{name} ({state})")
        })
        .collect();
    format!("Capturing {}", each.join(", "))
}

/// The running captures with their profiles' names (the id when the profile is gone).
fn named(app: &AppHandle, running: Vec<RunStatus>) -> Vec<(String, RunState)> {
    let tidepool = app.state::<Tidepool>();
    running
        .into_iter()
        .map(|s| {
            let name = tidepool
                .profiles()
                .get(&s.profile)
                .map_or(s.profile, |p| p.name);
            (name, s.state)
        })
        .collect()
}

fn refresh(app: &AppHandle) {
    let Some(tray) = app.try_state::<Tray>() else {
        return;
    };
    let running = named(app, app.state::<Tidepool>().runs().running());
    let text = line(&running);
    let mut shown = tray.shown.lock().unwrap_or_else(|e| e.into_inner());
    if *shown == text {
        return;
    }
    let _ = tray.state.set_text(&text);
    let _ = tray.stop.set_enabled(!running.is_empty());
    let _ = tray.icon.set_tooltip(Some(format!("Tidepool: {text}")));
    *shown = text;
}

/// "Open Tidepool": the window back from the taskbar, in front.
fn open_window(app: &AppHandle) {
    if let Some(window) = app.get_webview_window("main") {
        let _ = window.unminimize();
        let _ = window.show();
        let _ = window.set_focus();
    }
}

/// "Stop capturing": each running capture stopped as the Capture tab's Stop does (the slot stays),
/// and the window told.
fn stop_captures(app: &AppHandle) {
    let tidepool = app.state::<Tidepool>();
    let (profiles, runs) = (tidepool.profiles(), tidepool.runs());
    for status in runs.running() {
        match runs.stop(&status.profile, profiles) {
            Ok(stopped) => {
                let _ = app.emit("capture-status", &stopped);
            }
            Err(e) => {
                tracing::warn!(profile = %status.profile, error = %e.message(), "stopping from the tray")
            }
        }
    }
    refresh(app);
}
