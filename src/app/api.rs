//! The one engine API: [`Tidepool`], the value the desktop shell holds as its only state and the
//! command line opens too. It owns the saved profiles (and the preflight, fixes, discovery, publish
//! and Neon actions on them), the captures running in this process, the demo database and the
//! "Try a webhook" receiver, so a command is one call on it and no front end pairs them up itself.
//!
//! Invariants:
//! - One `Tidepool` per data folder and process: its [`Runs`] is the only writer of the profiles'
//!   stores here (the store lock refuses a second process).
//! - The demo and the trial receiver live as long as it does; [`Tidepool::shut_down`] removes the
//!   demo database, which exists only for the app's lifetime.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use crate::app::consumers::ConsumerStore;
use crate::app::demo::DemoHost;
use crate::app::export::{Engine, ExportFile};
use crate::app::preview::{self, ExportFormat, Exported, Page, PageRequest, View};
use crate::app::profile::{Autofill, ProfileView, Profiles, Removed};
use crate::app::run::{PullAccess, RunStatus, Runs, StatusListener, TailEntry};
use crate::binding::Binding;
use crate::capture::PublishPlan;
use crate::deliver::consumer::Consumer;
use crate::deliver::trial::{TrialReceiver, TrialRequest};
use crate::error::{Error, Result};
use crate::secrets::{Keychain, KeychainStatus, NeonKeyStatus, Secret};
use crate::source::health::SlotHealth;
use crate::source::preflight::{Check, Fix};
use crate::source::publication::Choice;
use crate::source::setup::Action;
use crate::store::CollectionInfo;

/// Tidepool's engine as the app and the command line hold it.
pub struct Tidepool {
    profiles: Profiles,
    runs: Runs,
    demo: DemoHost,
    trial: tokio::sync::Mutex<Option<TrialReceiver>>,
}

/// What "Try a webhook" made: the receiver's URL and the consumer pointed at it.
#[derive(Debug, Clone, Serialize, ts_rs::TS)]
#[serde(rename_all = "camelCase")]
pub struct TrialWebhook {
    /// The receiver's URL, on loopback.
    pub url: String,
    /// The consumer `try-webhook`, delivering every collection to that URL.
    pub consumer: Consumer,
}

impl Tidepool {
    /// The engine over the profiles saved in `data_dir`, with the OS keychain.
    pub fn open(data_dir: &Path) -> Tidepool {
        Tidepool::with(Profiles::open(data_dir), Runs::default())
    }

    /// The engine over given parts (tests give their own keychain or Neon API; the command line
    /// its pull API address).
    pub fn with(profiles: Profiles, runs: Runs) -> Tidepool {
        Tidepool {
            profiles,
            runs,
            demo: DemoHost::default(),
            trial: tokio::sync::Mutex::new(None),
        }
    }

    /// The saved profiles and the actions on one: test, preflight, fixes, discovery, Neon.
    pub fn profiles(&self) -> &Profiles {
        &self.profiles
    }

    /// The captures running in this process and their live tails.
    pub fn runs(&self) -> &Runs {
        &self.runs
    }

    /// Deletes a profile, its store and its keychain entries, stopping its capture first.
    pub fn delete_profile(&self, id: &str) -> Result<Removed> {
        self.runs.delete_profile(&self.profiles, id)
    }

    /// "Discard the local copy": the store and its keychain entries go and the slot is dropped;
    /// the profile stays.
    pub async fn discard_store(&self, id: &str) -> Result<Removed> {
        self.runs.discard_store(&self.profiles, id).await
    }

    /// "Try it with a demo database": starts the throwaway server (or returns the running one's
    /// profile).
    pub fn start_demo(&self, interval: Duration) -> Result<ProfileView> {
        self.demo.start(&self.profiles, interval)
    }

    /// Removes the demo database, its profile and its capture, if a demo runs.
    pub fn stop_demo(&self) -> Result<Option<Removed>> {
        self.demo.stop(&self.profiles, &self.runs)
    }

    /// The demo's profile id while a demo runs.
    pub fn demo_profile(&self) -> Option<String> {
        self.demo.profile_id()
    }

    /// "Try a webhook": starts the app's own receiver (on loopback, once) and a consumer
    /// `try-webhook` of every collection of the profile delivering to it, so deliveries can be
    /// watched with nothing else running.
    pub async fn try_webhook(&self, id: &str) -> Result<TrialWebhook> {
        let mut receiver = self.trial.lock().await;
        if receiver.is_none() {
            *receiver = Some(TrialReceiver::start().await?);
        }
        let Some(receiver) = receiver.as_ref() else {
            return Err(Error::internal("the trial webhook receiver did not start"));
        };
        let url = receiver.url().to_string();
        let consumers = ConsumerStore::of_profile(&self.profiles, id)?;
        let (consumer, secret) = tokio::task::spawn_blocking(move || consumers.try_webhook(&url))
            .await
            .map_err(|e| Error::internal(format!("try a webhook: {e}")))??;
        receiver.add_secret(secret);
        Ok(TrialWebhook {
            url: receiver.url().to_string(),
            consumer,
        })
    }

    /// What the "Try a webhook" receiver got, newest first (nothing before it was started).
    pub async fn trial_webhook_requests(&self) -> Vec<TrialRequest> {
        self.trial
            .lock()
            .await
            .as_ref()
            .map(|r| r.received())
            .unwrap_or_default()
    }

    /// "Autofill with URL": the form's fields from a pasted URL or key=value string.
    pub fn autofill(text: &str) -> Result<Autofill> {
        crate::app::profile::autofill(text)
    }

    /// Whether the OS keychain opens.
    pub fn keychain_status() -> KeychainStatus {
        Keychain::status()
    }

    /// Whether a Neon API key is stored, in the keychain this engine was given.
    pub fn neon_key_status(&self) -> Result<NeonKeyStatus> {
        self.profiles.keychain()?.neon_api_key_status()
    }

    /// Stores the Neon API key in the keychain this engine was given.
    pub fn set_neon_key(&self, key: &Secret) -> Result<NeonKeyStatus> {
        self.profiles.keychain()?.set_neon_api_key(key)
    }

    /// Removes the Neon API key from the keychain this engine was given.
    pub fn remove_neon_key(&self) -> Result<NeonKeyStatus> {
        self.profiles.keychain()?.remove_neon_api_key()
    }

    /// What a fix would run (SQL or the Neon API request) and what to know first, before "Run".
    pub fn preview_action(action: Action) -> Fix {
        Fix::of(action)
    }

    /// Checks a collection name as publishing will.
    pub fn check_collection_name(name: &str) -> Result<()> {
        crate::binding::validate_collection_name(name)
    }

    /// The preflight checklist for a profile; a slot this engine's running capture holds is a pass.
    pub async fn preflight(&self, id: &str) -> Result<Vec<Check>> {
        self.runs.preflight(&self.profiles, id).await
    }

    /// What "Save and publish" will do, in order, before anything runs.
    pub async fn plan_save_and_publish(
        &self,
        id: &str,
        bindings: Vec<Binding>,
        choices: Vec<Choice>,
    ) -> Result<PublishPlan> {
        self.runs
            .plan_publish(&self.profiles, id, bindings, choices)
            .await
    }

    /// "Save and publish": publishes, saves, and starts the capture (or lets the running one pick
    /// up the definition); later statuses go to `listener`.
    pub async fn save_and_publish(
        &self,
        id: &str,
        bindings: Vec<Binding>,
        choices: Vec<Choice>,
        listener: StatusListener,
    ) -> Result<RunStatus> {
        self.runs
            .save_and_publish(&self.profiles, id, bindings, choices, listener)
            .await
    }

    /// Starts the profile's capture; later statuses go to `listener`.
    pub async fn start_capture(&self, id: &str, listener: StatusListener) -> Result<RunStatus> {
        self.runs.start(&self.profiles, id, listener).await
    }

    /// Stops the profile's capture; the slot stays.
    pub fn stop_capture(&self, id: &str) -> Result<RunStatus> {
        self.runs.stop(id, &self.profiles)
    }

    /// The profile's capture status.
    pub fn capture_status(&self, id: &str) -> Result<RunStatus> {
        self.runs.status(id, &self.profiles)
    }

    /// "Re-backfill and continue" after a refusal for a gap; later statuses go to `listener`.
    pub async fn resync_capture(&self, id: &str, listener: StatusListener) -> Result<RunStatus> {
        self.runs.resync(&self.profiles, id, listener).await
    }

    /// Stops the capture, drops its slot and empties the local collections (the definition stays).
    pub async fn stop_and_drop_slot(&self, id: &str) -> Result<RunStatus> {
        self.runs.stop_and_drop_slot(id, &self.profiles).await
    }

    /// Stops every capture of this engine (slots stay).
    pub async fn stop_all_captures(&self) {
        self.runs.stop_all().await
    }

    /// The health of the profile's slot, with warnings.
    pub async fn slot_health(&self, id: &str) -> Result<SlotHealth> {
        crate::source::health::slot(&self.profiles, id).await
    }

    /// The profile's collections with their counts (none before the first capture).
    pub fn collections(&self, id: &str) -> Result<Vec<CollectionInfo>> {
        preview::collections(&self.profiles, id)
    }

    /// A page of a collection's rows or change log, optionally filtered.
    pub fn collection_page(
        &self,
        id: &str,
        collection: &str,
        request: &PageRequest,
    ) -> Result<Page> {
        preview::page(&self.profiles, id, collection, request)
    }

    /// Streams a collection's changes after `after` (only those `filter` keeps) through `send`
    /// as they are stored, until [`Tidepool::stop_tail`] with `token` or `send` returns false.
    #[allow(clippy::too_many_arguments)]
    pub async fn tail_collection(
        &self,
        id: &str,
        collection: &str,
        after: u64,
        filter: Option<&str>,
        token: &str,
        send: impl Fn(Vec<TailEntry>) -> bool,
    ) -> Result<()> {
        self.runs
            .tail(&self.profiles, id, collection, after, filter, token, send)
            .await
    }

    /// Ends a tail.
    pub fn stop_tail(&self, token: &str) {
        self.runs.stop_tail(token)
    }

    /// Where exports go: the user's Downloads folder.
    pub fn export_dir() -> Result<PathBuf> {
        preview::default_export_dir()
    }

    /// Exports a collection's rows or change log (filtered) to a new file in `dir`.
    pub fn export_collection(
        &self,
        id: &str,
        collection: &str,
        view: View,
        filter: Option<String>,
        format: ExportFormat,
        dir: &Path,
    ) -> Result<Exported> {
        preview::export(&self.profiles, id, collection, view, filter, format, dir)
    }

    /// The profile's capture as another engine's file (`flow.yaml`, `sequin.yaml`).
    pub fn export_capture(&self, id: &str, engine: Engine) -> Result<ExportFile> {
        crate::app::export::of_profile(&self.profiles, id, engine)
    }

    /// The consumers of the profile's store, with the keychain this engine was given.
    pub fn consumers(&self, id: &str) -> Result<ConsumerStore> {
        ConsumerStore::of_profile(&self.profiles, id)
    }

    /// A pull consumer's access: the profile's pull API token (made the first time), the API's URL
    /// and why it does not answer now, if it does not.
    pub fn pull_access(&self, id: &str) -> Result<PullAccess> {
        self.runs.pull_access(&self.profiles, id)
    }

    /// What the app does as it exits: the demo database, which lives only as long as the app,
    /// goes.
    pub fn shut_down(&self) -> Result<Option<Removed>> {
        self.stop_demo()
    }
}
