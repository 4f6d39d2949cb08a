//! The commands the UI may call. Each is one engine call; errors reach the UI as `{kind, message}`.
//! Commands that touch the keychain (blocking D-Bus calls) run off the main thread (`async`).

use std::sync::Arc;
use std::time::Duration;

use tauri::ipc::Channel;
use tauri::{AppHandle, Emitter, State};
use tidepool::binding::{Binding, Definition};
use tidepool::capture::PublishPlan;
use tidepool::connection::ServerFacts;
use tidepool::consumers::{
    ConsumerActivity, ConsumerStore, ConsumerView, FilterCheck, SecretHeader,
};
use tidepool::deliver::consumer::{Action as ConsumerAction, Consumer, ConsumerSpec};
use tidepool::deliver::webhook::TestResult;
use tidepool::demo::DemoHost;
use tidepool::discovery::DiscoveredTable;
use tidepool::export::{Engine, ExportFile};
use tidepool::health::SlotHealth;
use tidepool::neon::{Branch, Link, Project};
use tidepool::preflight::{Check, Fix};
use tidepool::preview::{ExportFormat, Exported, Page, PageRequest, View};
use tidepool::profile::{
    self, Autofill, ProfileDraft, ProfileView, Profiles, Removed, RevealedSecret, SaveCheck,
};
use tidepool::publication::{Choice, Plan, TableRef};
use tidepool::run::{PullAccess, RunStatus, Runs, TailEntry};
use tidepool::secrets::{Keychain, KeychainStatus, NeonKeyStatus, Secret};
use tidepool::setup::{Action, RunAs};
use tidepool::store::CollectionInfo;
use tidepool::Error;

/// Every saved profile with the state of its password.
#[tauri::command(async)]
pub fn list_profiles(profiles: State<'_, Profiles>) -> Result<Vec<ProfileView>, Error> {
    profiles.list()
}

/// Creates (`id` = null) or updates a profile; a given password goes to the keychain. Tests the
/// connection first and saves nothing if it fails, unless `check` is "withoutTesting".
#[tauri::command]
pub async fn save_profile(
    profiles: State<'_, Profiles>,
    id: Option<String>,
    draft: ProfileDraft,
    password: Option<Secret>,
    check: Option<SaveCheck>,
) -> Result<ProfileView, Error> {
    profiles
        .save_checked(id, draft, password, check.unwrap_or_default())
        .await
}

/// Deletes a profile, its store and its keychain entries; says what was deleted.
#[tauri::command(async)]
pub fn delete_profile(
    profiles: State<'_, Profiles>,
    runs: State<'_, Runs>,
    id: String,
) -> Result<Removed, Error> {
    runs.delete_profile(&profiles, &id)
}

/// "Discard the local copy": deletes the profile's store and its keychain entries and drops its
/// slot, keeping the profile; the way out when an encrypted store's key is lost.
#[tauri::command]
pub async fn discard_store(
    profiles: State<'_, Profiles>,
    runs: State<'_, Runs>,
    id: String,
) -> Result<Removed, Error> {
    runs.discard_store(&profiles, &id).await
}

/// "Autofill with URL": the form's fields from a pasted URL or key=value string.
#[tauri::command]
pub fn autofill(text: String) -> Result<Autofill, Error> {
    profile::autofill(&text)
}

/// "Test connection" with the form as it stands; the password typed, else the keychain's.
#[tauri::command]
pub async fn test_connection(
    profiles: State<'_, Profiles>,
    id: Option<String>,
    draft: ProfileDraft,
    password: Option<Secret>,
) -> Result<ServerFacts, Error> {
    profiles.test_draft(id, draft, password).await
}

/// The SSH bastion's host key (fingerprint and key), read without logging in, for the person to
/// compare and accept before anything goes through it.
#[tauri::command]
pub async fn ssh_host_key(
    profiles: State<'_, Profiles>,
    address: String,
) -> Result<tidepool::ssh::HostKey, Error> {
    profiles.ssh_host_key(&address).await
}

/// Whether the OS keychain opens.
#[tauri::command(async)]
pub fn keychain_status() -> KeychainStatus {
    Keychain::status()
}

/// Whether a Neon API key is stored.
#[tauri::command(async)]
pub fn neon_key_status(profiles: State<'_, Profiles>) -> Result<NeonKeyStatus, Error> {
    profiles.keychain()?.neon_api_key_status()
}

/// Stores the Neon API key in the keychain.
#[tauri::command(async)]
pub fn set_neon_key(profiles: State<'_, Profiles>, key: Secret) -> Result<NeonKeyStatus, Error> {
    profiles.keychain()?.set_neon_api_key(&key)
}

/// Removes the Neon API key from the keychain.
#[tauri::command(async)]
pub fn remove_neon_key(profiles: State<'_, Profiles>) -> Result<NeonKeyStatus, Error> {
    profiles.keychain()?.remove_neon_api_key()
}

/// The tables the profile's role can read, as collections (key, JSON Schema, publication membership).
#[tauri::command]
pub async fn discover_tables(
    profiles: State<'_, Profiles>,
    id: String,
) -> Result<Vec<DiscoveredTable>, Error> {
    profiles.discover(&id).await
}

/// The profile's saved capture definition, if any.
#[tauri::command(async)]
pub fn capture_definition(
    profiles: State<'_, Profiles>,
    id: String,
) -> Result<Option<Definition>, Error> {
    profiles.capture_definition(&id)
}

/// "Save and publish": saves the bindings and makes the publication contain their tables.
#[tauri::command]
pub async fn publish_capture(
    profiles: State<'_, Profiles>,
    id: String,
    bindings: Vec<Binding>,
    choices: Option<Vec<Choice>>,
) -> Result<Vec<String>, Error> {
    profiles
        .publish(&id, bindings, choices.unwrap_or_default())
        .await
}

/// What one-click "Save and publish" will do, in order, before anything runs: the publication's
/// statements, the slot, the tables backfilled, the capture started (or, running, updated).
#[tauri::command]
pub async fn plan_save_and_publish(
    profiles: State<'_, Profiles>,
    runs: State<'_, Runs>,
    id: String,
    bindings: Vec<Binding>,
    choices: Option<Vec<Choice>>,
) -> Result<PublishPlan, Error> {
    runs.plan_publish(&profiles, &id, bindings, choices.unwrap_or_default())
        .await
}

/// One-click "Save and publish": publishes, saves, and starts the capture (or lets the running one
/// pick up the definition); its status then arrives as `capture-status` events.
#[tauri::command]
pub async fn save_and_publish(
    app: AppHandle,
    profiles: State<'_, Profiles>,
    runs: State<'_, Runs>,
    id: String,
    bindings: Vec<Binding>,
    choices: Option<Vec<Choice>>,
) -> Result<RunStatus, Error> {
    runs.save_and_publish(
        &profiles,
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
    profiles: State<'_, Profiles>,
    id: String,
    tables: Vec<TableRef>,
    choices: Option<Vec<Choice>>,
) -> Result<Plan, Error> {
    profiles
        .plan_publication(&id, tables, choices.unwrap_or_default())
        .await
}

/// The preflight checklist for a profile, each failing check with its fix and that fix's SQL; a slot
/// this app's running capture holds is a pass.
#[tauri::command]
pub async fn preflight(
    profiles: State<'_, Profiles>,
    runs: State<'_, Runs>,
    id: String,
) -> Result<Vec<Check>, Error> {
    runs.preflight(&profiles, &id).await
}

/// Runs a fix the user saw and confirmed, as `run_as` (default: the profile's own role). An owner
/// password arrives here once, straight into a `Secret`, and is dropped after the run.
#[tauri::command]
pub async fn run_fix(
    profiles: State<'_, Profiles>,
    id: String,
    action: Action,
    run_as: Option<RunAs>,
) -> Result<(), Error> {
    profiles
        .run_fix_as(&id, action, run_as.unwrap_or_default())
        .await
}

/// What a fix would run (SQL or the Neon API request) and what to know first, before "Run".
#[tauri::command]
pub fn preview_action(action: Action) -> Fix {
    Fix::of(action)
}

/// The Neon projects the stored API key can see.
#[tauri::command]
pub async fn neon_projects(profiles: State<'_, Profiles>) -> Result<Vec<Project>, Error> {
    profiles.neon_projects().await
}

/// A Neon project's branches.
#[tauri::command]
pub async fn neon_branches(
    profiles: State<'_, Profiles>,
    project_id: String,
) -> Result<Vec<Branch>, Error> {
    profiles.neon_branches(&project_id).await
}

/// The Neon project and branch that serve the profile's host, if the key can see them.
#[tauri::command]
pub async fn neon_locate(profiles: State<'_, Profiles>, id: String) -> Result<Option<Link>, Error> {
    profiles.neon_locate(&id).await
}

/// Links the profile to a Neon project and branch, or unlinks it (`link` = null).
#[tauri::command(async)]
pub fn link_neon(
    profiles: State<'_, Profiles>,
    id: String,
    link: Option<Link>,
) -> Result<ProfileView, Error> {
    profiles.link_neon(&id, link)
}

/// Starts the profile's capture; its status then arrives as `capture-status` events.
#[tauri::command]
pub async fn start_capture(
    app: AppHandle,
    profiles: State<'_, Profiles>,
    runs: State<'_, Runs>,
    id: String,
) -> Result<RunStatus, Error> {
    runs.start(&profiles, &id, status_events(app)).await
}

/// Forwards a run's statuses to the window as `capture-status` events.
fn status_events(app: AppHandle) -> tidepool::run::StatusListener {
    Arc::new(move |status: &RunStatus| {
        let _ = app.emit("capture-status", status);
    })
}

/// Stops the profile's capture; the slot stays.
#[tauri::command(async)]
pub fn stop_capture(
    profiles: State<'_, Profiles>,
    runs: State<'_, Runs>,
    id: String,
) -> Result<RunStatus, Error> {
    runs.stop(&id, &profiles)
}

/// The profile's capture status.
#[tauri::command(async)]
pub fn capture_status(
    profiles: State<'_, Profiles>,
    runs: State<'_, Runs>,
    id: String,
) -> Result<RunStatus, Error> {
    runs.status(&id, &profiles)
}

/// The profile's collections with their counts.
#[tauri::command(async)]
pub fn collections(
    profiles: State<'_, Profiles>,
    id: String,
) -> Result<Vec<CollectionInfo>, Error> {
    tidepool::preview::collections(&profiles, &id)
}

/// A page of a collection's rows or change log, optionally filtered.
#[tauri::command(async)]
pub fn collection_page(
    profiles: State<'_, Profiles>,
    id: String,
    collection: String,
    request: PageRequest,
) -> Result<Page, Error> {
    tidepool::preview::page(&profiles, &id, &collection, &request)
}

/// The profile's capture as another engine's file (Estuary Flow's `flow.yaml`, Sequin's
/// `sequin.yaml`), secrets as placeholders.
#[tauri::command(async)]
pub fn export_capture(
    profiles: State<'_, Profiles>,
    id: String,
    engine: Engine,
) -> Result<ExportFile, Error> {
    tidepool::export::of_profile(&profiles, &id, engine)
}

/// Exports a collection's rows or change log (filtered) to the Downloads folder.
#[tauri::command(async)]
pub fn export_collection(
    profiles: State<'_, Profiles>,
    id: String,
    collection: String,
    view: View,
    filter: Option<String>,
    format: ExportFormat,
) -> Result<Exported, Error> {
    tidepool::preview::export(
        &profiles,
        &id,
        &collection,
        view,
        filter,
        format,
        &tidepool::preview::default_export_dir()?,
    )
}

/// Opens the folder exports go to (Downloads) in the system's file manager. It takes no path, so
/// the window cannot use it to open anything else.
#[tauri::command(async)]
pub fn open_export_folder() -> Result<(), Error> {
    let dir = tidepool::preview::default_export_dir()?;
    open::that_detached(&dir)
        .map_err(|e| Error::internal(format!("cannot open {}: {e}", dir.display())))
}

/// Streams a collection's changes after `after` (only those the CEL `filter` matches) through
/// `on_change` as they are stored, until `stop_tail(token)`.
#[allow(clippy::too_many_arguments)]
#[tauri::command]
pub async fn tail_collection(
    profiles: State<'_, Profiles>,
    runs: State<'_, Runs>,
    id: String,
    collection: String,
    after: u64,
    filter: Option<String>,
    token: String,
    on_change: Channel<Vec<TailEntry>>,
) -> Result<(), Error> {
    runs.tail(
        &profiles,
        &id,
        &collection,
        after,
        filter.as_deref(),
        &token,
        |page| on_change.send(page).is_ok(),
    )
    .await
}

/// Ends a tail.
#[tauri::command]
pub fn stop_tail(runs: State<'_, Runs>, token: String) {
    runs.stop_tail(&token)
}

/// "Try it with a demo database": starts the throwaway server and returns its saved profile.
#[tauri::command(async)]
pub fn start_demo(
    profiles: State<'_, Profiles>,
    demo: State<'_, DemoHost>,
) -> Result<ProfileView, Error> {
    demo.start(&profiles, Duration::from_secs(1))
}

/// Removes the demo database, its profile and its capture.
#[tauri::command(async)]
pub fn stop_demo(
    profiles: State<'_, Profiles>,
    runs: State<'_, Runs>,
    demo: State<'_, DemoHost>,
) -> Result<Option<Removed>, Error> {
    demo.stop(&profiles, &runs)
}

/// The demo's profile id while a demo runs.
#[tauri::command]
pub fn demo_profile(demo: State<'_, DemoHost>) -> Option<String> {
    demo.profile_id()
}

/// Stops the capture, drops its slot and empties the local collections (the definition stays).
#[tauri::command]
pub async fn stop_and_drop_slot(
    profiles: State<'_, Profiles>,
    runs: State<'_, Runs>,
    id: String,
) -> Result<RunStatus, Error> {
    runs.stop_and_drop_slot(&id, &profiles).await
}

/// "Re-backfill and continue" after a refusal for a gap; status then arrives as `capture-status` events.
#[tauri::command]
pub async fn resync_capture(
    app: AppHandle,
    profiles: State<'_, Profiles>,
    runs: State<'_, Runs>,
    id: String,
) -> Result<RunStatus, Error> {
    runs.resync(&profiles, &id, status_events(app)).await
}

/// The health of the profile's slot, with warnings.
#[tauri::command]
pub async fn slot_health(profiles: State<'_, Profiles>, id: String) -> Result<SlotHealth, Error> {
    tidepool::health::slot(&profiles, &id).await
}

/// Closing while capturing, answered: stop every capture (slots stay) and quit.
#[tauri::command]
pub async fn stop_captures_and_quit(app: AppHandle, runs: State<'_, Runs>) -> Result<(), Error> {
    runs.stop_all().await;
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
    tidepool::binding::validate_collection_name(&name)
}

/// The profile's consumers with their counts, notices and parked messages.
#[tauri::command(async)]
pub fn list_consumers(
    profiles: State<'_, Profiles>,
    id: String,
) -> Result<Vec<ConsumerView>, Error> {
    ConsumerStore::of_profile(&profiles, &id)?.list()
}

/// "Create consumer": saves it in the profile's store once its NATS server (if it has one) took
/// the credential; secret header values and a NATS credential (typed once) and a new signing secret
/// go to the keychain. The running capture starts delivering it within a second.
#[tauri::command]
pub async fn add_consumer(
    profiles: State<'_, Profiles>,
    id: String,
    spec: ConsumerSpec,
    secret_headers: Option<Vec<SecretHeader>>,
    credential: Option<Secret>,
) -> Result<Consumer, Error> {
    ConsumerStore::of_profile(&profiles, &id)?
        .add_checked(spec, secret_headers.unwrap_or_default(), credential)
        .await
}

/// Deletes a consumer, its queue and its keychain entries (after the window's confirmation).
#[tauri::command(async)]
pub fn remove_consumer(
    profiles: State<'_, Profiles>,
    id: String,
    name: String,
) -> Result<Consumer, Error> {
    ConsumerStore::of_profile(&profiles, &id)?.remove(&name)
}

/// "Reveal signing secret": a webhook consumer's `whsec_…` secret, read from the keychain only on
/// this explicit request.
#[tauri::command(async)]
pub fn reveal_signing_secret(
    profiles: State<'_, Profiles>,
    id: String,
    name: String,
) -> Result<RevealedSecret, Error> {
    ConsumerStore::of_profile(&profiles, &id)?.reveal_signing_secret(&name)
}

/// "Reveal token" on a pull consumer: the profile's pull API token, read from the keychain (made
/// there the first time) only on this explicit request, with the API's URL and why it does not
/// answer now, if it does not.
#[tauri::command(async)]
pub fn reveal_pull_token(
    profiles: State<'_, Profiles>,
    runs: State<'_, Runs>,
    id: String,
) -> Result<PullAccess, Error> {
    runs.pull_access(&profiles, &id)
}

/// "Retry": puts a consumer's parked messages (all, or the one at `seq`) back in its queue.
#[tauri::command(async)]
pub fn retry_consumer(
    profiles: State<'_, Profiles>,
    id: String,
    name: String,
    seq: Option<u64>,
) -> Result<u64, Error> {
    ConsumerStore::of_profile(&profiles, &id)?.retry(&name, seq)
}

/// "Skip": drops a consumer's parked messages (all, or the one at `seq`) undelivered.
#[tauri::command(async)]
pub fn skip_consumer(
    profiles: State<'_, Profiles>,
    id: String,
    name: String,
    seq: Option<u64>,
) -> Result<u64, Error> {
    ConsumerStore::of_profile(&profiles, &id)?.skip(&name, seq)
}

/// "Check" on a consumer's filter: the refusal with its position, or how many of each
/// collection's newest changes it keeps.
#[tauri::command(async)]
pub fn check_consumer_filter(
    profiles: State<'_, Profiles>,
    id: String,
    filter: String,
    collections: Vec<String>,
    actions: Option<Vec<ConsumerAction>>,
) -> Result<FilterCheck, Error> {
    ConsumerStore::of_profile(&profiles, &id)?.check_filter(
        &filter,
        &collections,
        &actions.unwrap_or_default(),
    )
}

/// Pause or Resume on a consumer's page: while paused nothing is delivered and its messages stay
/// queued.
#[tauri::command(async)]
pub fn set_consumer_paused(
    profiles: State<'_, Profiles>,
    id: String,
    name: String,
    paused: bool,
) -> Result<Consumer, Error> {
    ConsumerStore::of_profile(&profiles, &id)?.set_paused(&name, paused)
}

/// A consumer's page: its recent requests (status, duration, error) and what it delivered per
/// second with its commit → delivered latency.
#[tauri::command(async)]
pub fn consumer_activity(
    profiles: State<'_, Profiles>,
    id: String,
    name: String,
) -> Result<ConsumerActivity, Error> {
    ConsumerStore::of_profile(&profiles, &id)?.activity(&name)
}

/// "Send a test message": one signed request to a webhook consumer's URL, its body marked as a
/// test; the answer is shown, nothing is queued.
#[tauri::command]
pub async fn test_consumer(
    profiles: State<'_, Profiles>,
    id: String,
    name: String,
) -> Result<TestResult, Error> {
    ConsumerStore::of_profile(&profiles, &id)?
        .send_test(&name)
        .await
}

/// "Edit" on a consumer's page: saves its new definition; new secret header values (typed once)
/// go to the keychain, those not retyped stay there.
#[tauri::command(async)]
pub fn edit_consumer(
    profiles: State<'_, Profiles>,
    id: String,
    name: String,
    spec: ConsumerSpec,
    secret_headers: Option<Vec<SecretHeader>>,
) -> Result<Consumer, Error> {
    ConsumerStore::of_profile(&profiles, &id)?.edit(&name, spec, secret_headers.unwrap_or_default())
}

/// The app's "Try a webhook" receiver, started the first time it is asked for.
#[derive(Default)]
pub struct TrialHost(tauri::async_runtime::Mutex<Option<tidepool::deliver::trial::TrialReceiver>>);

/// What "Try a webhook" made: the receiver's URL and the consumer pointed at it.
#[derive(serde::Serialize, ts_rs::TS)]
#[serde(rename_all = "camelCase")]
pub struct TrialWebhook {
    url: String,
    consumer: Consumer,
}

/// "Try a webhook": starts the app's own receiver (on loopback) and a consumer `try-webhook` of
/// every collection delivering to it, so deliveries can be watched with nothing else running.
#[tauri::command]
pub async fn try_webhook(
    profiles: State<'_, Profiles>,
    trial: State<'_, TrialHost>,
    id: String,
) -> Result<TrialWebhook, Error> {
    let mut receiver = trial.0.lock().await;
    if receiver.is_none() {
        *receiver = Some(tidepool::deliver::trial::TrialReceiver::start().await?);
    }
    let Some(receiver) = receiver.as_ref() else {
        return Err(Error::internal("the trial webhook receiver did not start"));
    };
    let url = receiver.url().to_string();
    let consumers = ConsumerStore::of_profile(&profiles, &id)?;
    let (consumer, secret) =
        tauri::async_runtime::spawn_blocking(move || consumers.try_webhook(&url))
            .await
            .map_err(|e| Error::internal(format!("try a webhook: {e}")))??;
    receiver.add_secret(secret);
    Ok(TrialWebhook {
        url: receiver.url().to_string(),
        consumer,
    })
}

/// What the "Try a webhook" receiver got, newest first (nothing before it was started).
#[tauri::command]
pub async fn trial_webhook_requests(
    trial: State<'_, TrialHost>,
) -> Result<Vec<tidepool::deliver::trial::TrialRequest>, Error> {
    Ok(trial
        .0
        .lock()
        .await
        .as_ref()
        .map(|r| r.received())
        .unwrap_or_default())
}
