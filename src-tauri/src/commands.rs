//! The commands the UI may call. Each is one engine call; errors reach the UI as `{kind, message}`.
//! Commands that touch the keychain (blocking D-Bus calls) run off the main thread (`async`).

use std::sync::Arc;
use std::time::Duration;

use tauri::ipc::Channel;
use tauri::{AppHandle, Emitter, State};
use tidepool::app::api::{Tidepool, TrialWebhook};
use tidepool::app::consumers::{ConsumerActivity, ConsumerView, FilterCheck, SecretHeader};
use tidepool::app::export::{Engine, ExportFile};
use tidepool::app::preview::{ExportFormat, Exported, Page, PageRequest, View};
use tidepool::app::profile::{
    Autofill, ProfileDraft, ProfileView, Removed, RevealedSecret, SaveCheck,
};
use tidepool::app::run::{PullAccess, RunStatus, TailEntry};
use tidepool::binding::{Binding, Definition};
use tidepool::capture::PublishPlan;
use tidepool::deliver::consumer::{Action as ConsumerAction, Consumer, ConsumerSpec};
use tidepool::deliver::webhook::TestResult;
use tidepool::secrets::{KeychainStatus, NeonKeyStatus, Secret};
use tidepool::source::connection::ServerFacts;
use tidepool::source::discovery::DiscoveredTable;
use tidepool::source::health::SlotHealth;
use tidepool::source::neon::{Branch, Link, Project};
use tidepool::source::preflight::{Check, Fix};
use tidepool::source::publication::{Choice, Plan, TableRef};
use tidepool::source::setup::{Action, RunAs};
use tidepool::store::CollectionInfo;
use tidepool::Error;

/// Every saved profile with the state of its password.
#[tauri::command(async)]
pub fn list_profiles(tidepool: State<'_, Tidepool>) -> Result<Vec<ProfileView>, Error> {
    tidepool.profiles().list()
}

/// Creates (`id` = null) or updates a profile; a given password goes to the keychain. Tests the
/// connection first and saves nothing if it fails, unless `check` is "withoutTesting".
#[tauri::command]
pub async fn save_profile(
    tidepool: State<'_, Tidepool>,
    id: Option<String>,
    draft: ProfileDraft,
    password: Option<Secret>,
    check: Option<SaveCheck>,
) -> Result<ProfileView, Error> {
    tidepool
        .profiles()
        .save_checked(id, draft, password, check.unwrap_or_default())
        .await
}

/// Deletes a profile, its store and its keychain entries; says what was deleted.
#[tauri::command(async)]
pub fn delete_profile(tidepool: State<'_, Tidepool>, id: String) -> Result<Removed, Error> {
    tidepool.delete_profile(&id)
}

/// "Discard the local copy": deletes the profile's store and its keychain entries and drops its
/// slot, keeping the profile; the way out when an encrypted store's key is lost.
#[tauri::command]
pub async fn discard_store(tidepool: State<'_, Tidepool>, id: String) -> Result<Removed, Error> {
    tidepool.discard_store(&id).await
}

/// "Autofill with URL": the form's fields from a pasted URL or key=value string.
#[tauri::command]
pub fn autofill(text: String) -> Result<Autofill, Error> {
    Tidepool::autofill(&text)
}

/// "Test connection" with the form as it stands; the password typed, else the keychain's.
#[tauri::command]
pub async fn test_connection(
    tidepool: State<'_, Tidepool>,
    id: Option<String>,
    draft: ProfileDraft,
    password: Option<Secret>,
) -> Result<ServerFacts, Error> {
    tidepool.profiles().test_draft(id, draft, password).await
}

/// The SSH bastion's host key (fingerprint and key), read without logging in, for the person to
/// compare and accept before anything goes through it.
#[tauri::command]
pub async fn ssh_host_key(
    tidepool: State<'_, Tidepool>,
    address: String,
) -> Result<tidepool::source::ssh::HostKey, Error> {
    tidepool.profiles().ssh_host_key(&address).await
}

/// Whether the OS keychain opens.
#[tauri::command(async)]
pub fn keychain_status() -> KeychainStatus {
    Tidepool::keychain_status()
}

/// Whether a Neon API key is stored.
#[tauri::command(async)]
pub fn neon_key_status(tidepool: State<'_, Tidepool>) -> Result<NeonKeyStatus, Error> {
    tidepool.neon_key_status()
}

/// Stores the Neon API key in the keychain.
#[tauri::command(async)]
pub fn set_neon_key(tidepool: State<'_, Tidepool>, key: Secret) -> Result<NeonKeyStatus, Error> {
    tidepool.set_neon_key(&key)
}

/// Removes the Neon API key from the keychain.
#[tauri::command(async)]
pub fn remove_neon_key(tidepool: State<'_, Tidepool>) -> Result<NeonKeyStatus, Error> {
    tidepool.remove_neon_key()
}

/// The tables the profile's role can read, as collections (key, JSON Schema, publication membership).
#[tauri::command]
pub async fn discover_tables(
    tidepool: State<'_, Tidepool>,
    id: String,
) -> Result<Vec<DiscoveredTable>, Error> {
    tidepool.profiles().discover(&id).await
}

/// The profile's saved capture definition, if any.
#[tauri::command(async)]
pub fn capture_definition(
    tidepool: State<'_, Tidepool>,
    id: String,
) -> Result<Option<Definition>, Error> {
    tidepool.profiles().capture_definition(&id)
}

/// "Save and publish": saves the bindings and makes the publication contain their tables.
#[tauri::command]
pub async fn publish_capture(
    tidepool: State<'_, Tidepool>,
    id: String,
    bindings: Vec<Binding>,
    choices: Option<Vec<Choice>>,
) -> Result<Vec<String>, Error> {
    tidepool
        .profiles()
        .publish(&id, bindings, choices.unwrap_or_default())
        .await
}

/// What one-click "Save and publish" will do, in order, before anything runs: the publication's
/// statements, the slot, the tables backfilled, the capture started (or, running, updated).
#[tauri::command]
pub async fn plan_save_and_publish(
    tidepool: State<'_, Tidepool>,
    id: String,
    bindings: Vec<Binding>,
    choices: Option<Vec<Choice>>,
) -> Result<PublishPlan, Error> {
    tidepool
        .plan_save_and_publish(&id, bindings, choices.unwrap_or_default())
        .await
}

/// One-click "Save and publish": publishes, saves, and starts the capture (or lets the running one
/// pick up the definition); its status then arrives as `capture-status` events.
#[tauri::command]
pub async fn save_and_publish(
    app: AppHandle,
    tidepool: State<'_, Tidepool>,
    id: String,
    bindings: Vec<Binding>,
    choices: Option<Vec<Choice>>,
) -> Result<RunStatus, Error> {
    tidepool
        .save_and_publish(
            &id,
            bindings,
            choices.unwrap_or_default(),
            status_events(app),
        )
        .await
}

/// What publishing `tables` in the profile's publication would run, with each table that has no
/// usable replica identity and what `choices` do with it; runs nothing.
#[tauri::command]
pub async fn plan_publication(
    tidepool: State<'_, Tidepool>,
    id: String,
    tables: Vec<TableRef>,
    choices: Option<Vec<Choice>>,
) -> Result<Plan, Error> {
    tidepool
        .profiles()
        .plan_publication(&id, tables, choices.unwrap_or_default())
        .await
}

/// The preflight checklist for a profile, each failing check with its fix and that fix's SQL; a slot
/// this app's running capture holds is a pass.
#[tauri::command]
pub async fn preflight(tidepool: State<'_, Tidepool>, id: String) -> Result<Vec<Check>, Error> {
    tidepool.preflight(&id).await
}

/// Runs a fix the user saw and confirmed, as `run_as` (default: the profile's own role). An owner
/// password arrives here once, straight into a `Secret`, and is dropped after the run.
#[tauri::command]
pub async fn run_fix(
    tidepool: State<'_, Tidepool>,
    id: String,
    action: Action,
    run_as: Option<RunAs>,
) -> Result<(), Error> {
    tidepool
        .profiles()
        .run_fix_as(&id, action, run_as.unwrap_or_default())
        .await
}

/// What a fix would run (SQL or the Neon API request) and what to know first, before "Run".
#[tauri::command]
pub fn preview_action(action: Action) -> Fix {
    Tidepool::preview_action(action)
}

/// The Neon projects the stored API key can see.
#[tauri::command]
pub async fn neon_projects(tidepool: State<'_, Tidepool>) -> Result<Vec<Project>, Error> {
    tidepool.profiles().neon_projects().await
}

/// A Neon project's branches.
#[tauri::command]
pub async fn neon_branches(
    tidepool: State<'_, Tidepool>,
    project_id: String,
) -> Result<Vec<Branch>, Error> {
    tidepool.profiles().neon_branches(&project_id).await
}

/// The Neon project and branch that serve the profile's host, if the key can see them.
#[tauri::command]
pub async fn neon_locate(tidepool: State<'_, Tidepool>, id: String) -> Result<Option<Link>, Error> {
    tidepool.profiles().neon_locate(&id).await
}

/// Links the profile to a Neon project and branch, or unlinks it (`link` = null).
#[tauri::command(async)]
pub fn link_neon(
    tidepool: State<'_, Tidepool>,
    id: String,
    link: Option<Link>,
) -> Result<ProfileView, Error> {
    tidepool.profiles().link_neon(&id, link)
}

/// Starts the profile's capture; its status then arrives as `capture-status` events.
#[tauri::command]
pub async fn start_capture(
    app: AppHandle,
    tidepool: State<'_, Tidepool>,
    id: String,
) -> Result<RunStatus, Error> {
    tidepool.start_capture(&id, status_events(app)).await
}

/// Forwards a run's statuses to the window as `capture-status` events.
fn status_events(app: AppHandle) -> tidepool::app::run::StatusListener {
    Arc::new(move |status: &RunStatus| {
        let _ = app.emit("capture-status", status);
    })
}

/// Stops the profile's capture; the slot stays.
#[tauri::command(async)]
pub fn stop_capture(tidepool: State<'_, Tidepool>, id: String) -> Result<RunStatus, Error> {
    tidepool.stop_capture(&id)
}

/// The profile's capture status.
#[tauri::command(async)]
pub fn capture_status(tidepool: State<'_, Tidepool>, id: String) -> Result<RunStatus, Error> {
    tidepool.capture_status(&id)
}

/// The profile's collections with their counts.
#[tauri::command(async)]
pub fn collections(
    tidepool: State<'_, Tidepool>,
    id: String,
) -> Result<Vec<CollectionInfo>, Error> {
    tidepool.collections(&id)
}

/// A page of a collection's rows or change log, optionally filtered.
#[tauri::command(async)]
pub fn collection_page(
    tidepool: State<'_, Tidepool>,
    id: String,
    collection: String,
    request: PageRequest,
) -> Result<Page, Error> {
    tidepool.collection_page(&id, &collection, &request)
}

/// The profile's capture as another engine's file (Estuary Flow's `flow.yaml`, Sequin's
/// `sequin.yaml`), secrets as placeholders.
#[tauri::command(async)]
pub fn export_capture(
    tidepool: State<'_, Tidepool>,
    id: String,
    engine: Engine,
) -> Result<ExportFile, Error> {
    tidepool.export_capture(&id, engine)
}

/// Exports a collection's rows or change log (filtered) to the Downloads folder.
#[tauri::command(async)]
pub fn export_collection(
    tidepool: State<'_, Tidepool>,
    id: String,
    collection: String,
    view: View,
    filter: Option<String>,
    format: ExportFormat,
) -> Result<Exported, Error> {
    tidepool.export_collection(
        &id,
        &collection,
        view,
        filter,
        format,
        &Tidepool::export_dir()?,
    )
}

/// Opens the folder exports go to (Downloads) in the system's file manager. It takes no path, so
/// the window cannot use it to open anything else.
#[tauri::command(async)]
pub fn open_export_folder() -> Result<(), Error> {
    let dir = Tidepool::export_dir()?;
    open::that_detached(&dir)
        .map_err(|e| Error::internal(format!("cannot open {}: {e}", dir.display())))
}

/// Streams a collection's changes after `after` (only those the CEL `filter` matches) through
/// `on_change` as they are stored, until `stop_tail(token)`.
#[allow(clippy::too_many_arguments)]
#[tauri::command]
pub async fn tail_collection(
    tidepool: State<'_, Tidepool>,
    id: String,
    collection: String,
    after: u64,
    filter: Option<String>,
    token: String,
    on_change: Channel<Vec<TailEntry>>,
) -> Result<(), Error> {
    tidepool
        .tail_collection(&id, &collection, after, filter.as_deref(), &token, |page| {
            on_change.send(page).is_ok()
        })
        .await
}

/// Ends a tail.
#[tauri::command]
pub fn stop_tail(tidepool: State<'_, Tidepool>, token: String) {
    tidepool.stop_tail(&token)
}

/// "Try it with a demo database": starts the throwaway server and returns its saved profile.
#[tauri::command(async)]
pub fn start_demo(tidepool: State<'_, Tidepool>) -> Result<ProfileView, Error> {
    tidepool.start_demo(Duration::from_secs(1))
}

/// Removes the demo database, its profile and its capture.
#[tauri::command(async)]
pub fn stop_demo(tidepool: State<'_, Tidepool>) -> Result<Option<Removed>, Error> {
    tidepool.stop_demo()
}

/// The demo's profile id while a demo runs.
#[tauri::command]
pub fn demo_profile(tidepool: State<'_, Tidepool>) -> Option<String> {
    tidepool.demo_profile()
}

/// Stops the capture, drops its slot and empties the local collections (the definition stays).
#[tauri::command]
pub async fn stop_and_drop_slot(
    tidepool: State<'_, Tidepool>,
    id: String,
) -> Result<RunStatus, Error> {
    tidepool.stop_and_drop_slot(&id).await
}

/// "Re-backfill and continue" after a refusal for a gap; status then arrives as `capture-status` events.
#[tauri::command]
pub async fn resync_capture(
    app: AppHandle,
    tidepool: State<'_, Tidepool>,
    id: String,
) -> Result<RunStatus, Error> {
    tidepool.resync_capture(&id, status_events(app)).await
}

/// The health of the profile's slot, with warnings.
#[tauri::command]
pub async fn slot_health(tidepool: State<'_, Tidepool>, id: String) -> Result<SlotHealth, Error> {
    tidepool.slot_health(&id).await
}

/// Closing while capturing, answered: stop every capture (slots stay) and quit.
#[tauri::command]
pub async fn stop_captures_and_quit(
    app: AppHandle,
    tidepool: State<'_, Tidepool>,
) -> Result<(), Error> {
    tidepool.stop_all_captures().await;
    app.exit(0);
    Ok(())
}

/// Closing while capturing, answered: keep capturing with the window minimized.
#[tauri::command]
pub fn keep_capturing_in_background(window: tauri::WebviewWindow) -> Result<(), Error> {
    window
        .minimize()
        .map_err(|e| Error::internal(format!("minimizing the window: {e}")))
}

/// Checks a collection name as the engine will on publish (the Tables screen shows why as you type).
#[tauri::command]
pub fn check_collection_name(name: String) -> Result<(), Error> {
    Tidepool::check_collection_name(&name)
}

/// The profile's consumers with their counts, notices and parked messages.
#[tauri::command(async)]
pub fn list_consumers(
    tidepool: State<'_, Tidepool>,
    id: String,
) -> Result<Vec<ConsumerView>, Error> {
    tidepool.consumers(&id)?.list()
}

/// "Create consumer": saves it in the profile's store once its NATS server (if it has one) took
/// the credential; secret header values and a NATS credential (typed once) and a new signing secret
/// go to the keychain. The running capture starts delivering it within a second.
#[tauri::command]
pub async fn add_consumer(
    tidepool: State<'_, Tidepool>,
    id: String,
    spec: ConsumerSpec,
    secret_headers: Option<Vec<SecretHeader>>,
    credential: Option<Secret>,
) -> Result<Consumer, Error> {
    tidepool
        .consumers(&id)?
        .add_checked(spec, secret_headers.unwrap_or_default(), credential)
        .await
}

/// Deletes a consumer, its queue and its keychain entries (after the window's confirmation).
#[tauri::command(async)]
pub fn remove_consumer(
    tidepool: State<'_, Tidepool>,
    id: String,
    name: String,
) -> Result<Consumer, Error> {
    tidepool.consumers(&id)?.remove(&name)
}

/// "Reveal signing secret": a webhook consumer's `whsec_…` secret, read from the keychain only on
/// this explicit request.
#[tauri::command(async)]
pub fn reveal_signing_secret(
    tidepool: State<'_, Tidepool>,
    id: String,
    name: String,
) -> Result<RevealedSecret, Error> {
    tidepool.consumers(&id)?.reveal_signing_secret(&name)
}

/// "Reveal token" on a pull consumer: the profile's pull API token, read from the keychain (made
/// there the first time) only on this explicit request, with the API's URL and why it does not
/// answer now, if it does not.
#[tauri::command(async)]
pub fn reveal_pull_token(tidepool: State<'_, Tidepool>, id: String) -> Result<PullAccess, Error> {
    tidepool.pull_access(&id)
}

/// "Retry": puts a consumer's parked messages (all, or the one at `seq`) back in its queue.
#[tauri::command(async)]
pub fn retry_consumer(
    tidepool: State<'_, Tidepool>,
    id: String,
    name: String,
    seq: Option<u64>,
) -> Result<u64, Error> {
    tidepool.consumers(&id)?.retry(&name, seq)
}

/// "Skip": drops a consumer's parked messages (all, or the one at `seq`) undelivered.
#[tauri::command(async)]
pub fn skip_consumer(
    tidepool: State<'_, Tidepool>,
    id: String,
    name: String,
    seq: Option<u64>,
) -> Result<u64, Error> {
    tidepool.consumers(&id)?.skip(&name, seq)
}

/// "Check" on a consumer's filter: the refusal with its position, or how many of each
/// collection's newest changes it keeps.
#[tauri::command(async)]
pub fn check_consumer_filter(
    tidepool: State<'_, Tidepool>,
    id: String,
    filter: String,
    collections: Vec<String>,
    actions: Option<Vec<ConsumerAction>>,
) -> Result<FilterCheck, Error> {
    tidepool
        .consumers(&id)?
        .check_filter(&filter, &collections, &actions.unwrap_or_default())
}

/// Pause or Resume on a consumer's page: while paused nothing is delivered and its messages stay
/// queued.
#[tauri::command(async)]
pub fn set_consumer_paused(
    tidepool: State<'_, Tidepool>,
    id: String,
    name: String,
    paused: bool,
) -> Result<Consumer, Error> {
    tidepool.consumers(&id)?.set_paused(&name, paused)
}

/// A consumer's page: its recent requests (status, duration, error) and what it delivered per
/// second with its commit → delivered latency.
#[tauri::command(async)]
pub fn consumer_activity(
    tidepool: State<'_, Tidepool>,
    id: String,
    name: String,
) -> Result<ConsumerActivity, Error> {
    tidepool.consumers(&id)?.activity(&name)
}

/// "Send a test message": one signed request to a webhook consumer's URL, its body marked as a
/// test; the answer is shown, nothing is queued.
#[tauri::command]
pub async fn test_consumer(
    tidepool: State<'_, Tidepool>,
    id: String,
    name: String,
) -> Result<TestResult, Error> {
    tidepool.consumers(&id)?.send_test(&name).await
}

/// "Edit" on a consumer's page: saves its new definition; new secret header values (typed once)
/// go to the keychain, those not retyped stay there.
#[tauri::command(async)]
pub fn edit_consumer(
    tidepool: State<'_, Tidepool>,
    id: String,
    name: String,
    spec: ConsumerSpec,
    secret_headers: Option<Vec<SecretHeader>>,
) -> Result<Consumer, Error> {
    tidepool
        .consumers(&id)?
        .edit(&name, spec, secret_headers.unwrap_or_default())
}

/// "Try a webhook": starts the app's own receiver (on loopback) and a consumer `try-webhook` of
/// every collection delivering to it, so deliveries can be watched with nothing else running.
#[tauri::command]
pub async fn try_webhook(tidepool: State<'_, Tidepool>, id: String) -> Result<TrialWebhook, Error> {
    tidepool.try_webhook(&id).await
}

/// What the "Try a webhook" receiver got, newest first (nothing before it was started).
#[tauri::command]
pub async fn trial_webhook_requests(
    tidepool: State<'_, Tidepool>,
) -> Result<Vec<tidepool::deliver::trial::TrialRequest>, Error> {
    Ok(tidepool.trial_webhook_requests().await)
}
