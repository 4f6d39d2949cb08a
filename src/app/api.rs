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

use std::path::Path;
use std::time::Duration;

use serde::Serialize;

use crate::app::consumers::ConsumerStore;
use crate::app::demo::DemoHost;
use crate::app::profile::{ProfileView, Profiles, Removed};
use crate::app::run::Runs;
use crate::deliver::consumer::Consumer;
use crate::deliver::trial::{TrialReceiver, TrialRequest};
use crate::error::{Error, Result};

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

    /// What the app does as it exits: the demo database, which lives only as long as the app,
    /// goes.
    pub fn shut_down(&self) -> Result<Option<Removed>> {
        self.stop_demo()
    }
}
