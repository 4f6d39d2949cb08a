//! Captures running inside one process (the desktop app): start and stop a profile's capture, follow
//! its state (backfill progress per table, throughput, lag, last commit), and tail a collection as new
//! changes are stored.
//!
//! Invariants:
//! - A run is [`crate::capture::run`] on a task; stopping aborts that task. That is safe at any point:
//!   nothing is acknowledged to PostgreSQL before it is durable in the store, an open store batch is
//!   rolled back, and the slot stays, so the next start resumes from the checkpoint (WAL is retained
//!   meanwhile: the UI says so).
//! - One run per profile at a time.
//! - Webhook delivery ([`crate::deliver`]) runs beside each capture, reading its store and woken by
//!   its commits; it never delays the capture, and stopping the capture stops it.
//! - One pull API server ([`crate::deliver::pull::PullHost`]) answers for every running capture's
//!   store, each chosen by its own token; it listens while at least one capture runs. A port taken
//!   never stops a capture: the error is kept for the Consumers tab ([`Runs::pull_access`]).
//! - Each run connects under an `application_name` of its own (`run_application_name`: the
//!   profile's, then this process's id and the run's number), so the Setup checks can tell a slot this
//!   process's capture holds from one held by anybody else ([`Runs::preflight`]).
//! - A tail reads only what a store commit made durable, in log order, after the position it was given:
//!   it never shows a change twice or skips one. It wakes on each store commit of the profile's run
//!   (no polling), and ends when told to or when its receiver is gone.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::Serialize;
use serde_json::Value as Json;

use crate::app::profile::{Profiles, RevealedSecret};
use crate::capture::backfill::BackfillProgress;
use crate::capture::{CaptureOptions, Flush, Observer};
use crate::deliver::pull::{PullHost, PullRoute, PullServing};
use crate::error::{Error, ErrorKind, Result};
use crate::store::Store;

/// Where a run stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ts_rs::TS)]
#[serde(rename_all = "camelCase")]
pub enum RunState {
    /// Not running.
    Stopped,
    /// Connecting, creating the slot, or backfilling before the stream starts.
    Starting,
    /// Streaming changes (backfills of added tables may run alongside).
    Streaming,
    /// Ended with an error (see `error`).
    Failed,
}

/// A run's state, as the Capture screen shows it.
#[derive(Debug, Clone, Serialize, ts_rs::TS)]
#[serde(rename_all = "camelCase")]
pub struct RunStatus {
    /// The profile.
    pub profile: String,
    /// Where it stands.
    pub state: RunState,
    /// Per collection, its backfill's progress (kept when done, so the screen shows 100%).
    pub backfills: BTreeMap<String, BackfillProgress>,
    /// Changes stored by this run.
    pub changes: u64,
    /// Store commits by this run.
    pub commits: u64,
    /// The store's checkpoint: everything up to it is durable and confirmed to PostgreSQL.
    pub checkpoint: String,
    /// Changes per second over the last store commits (about the last 10 s).
    pub changes_per_second: f64,
    /// Commit-to-stored delay of the newest transaction, in milliseconds.
    pub lag_ms: Option<f64>,
    /// Commit time of the newest stored transaction (microseconds since 2000-01-01, the server's clock).
    pub last_commit_micros: Option<i64>,
    /// Why it failed.
    pub error: Option<Error>,
}

impl RunStatus {
    fn stopped(profile: &str) -> RunStatus {
        RunStatus {
            profile: profile.to_string(),
            state: RunState::Stopped,
            backfills: BTreeMap::new(),
            changes: 0,
            commits: 0,
            checkpoint: String::new(),
            changes_per_second: 0.0,
            lag_ms: None,
            last_commit_micros: None,
            error: None,
        }
    }
}

/// The throughput figure is the changes stored over this many seconds.
const RATE_WINDOW_SECS: f64 = 10.0;

/// Told of every status change (the desktop forwards it to the window).
pub type StatusListener = Arc<dyn Fn(&RunStatus) + Send + Sync>;

struct Running {
    task: tokio::task::JoinHandle<()>,
    /// The `application_name` every connection of this run carries.
    application_name: String,
    /// Webhook delivery from the run's store ([`crate::deliver::run`]), stopped with the capture.
    delivery: tokio::task::JoinHandle<()>,
    /// The store served by the pull API, until this run is dropped.
    _pull: Option<PullRoute>,
}

impl Running {
    fn abort(&self) {
        self.task.abort();
        self.delivery.abort();
    }
}

#[derive(Default)]
struct Shared {
    runs: HashMap<String, Running>,
    status: HashMap<String, Arc<Mutex<RunStatus>>>,
    /// Per profile, a counter bumped by each store commit; tails wait on it.
    commits: HashMap<String, tokio::sync::watch::Sender<u64>>,
    tails: HashMap<String, tokio::sync::watch::Sender<bool>>,
}

/// The captures running in this process.
#[derive(Clone)]
pub struct Runs {
    shared: Arc<Mutex<Shared>>,
    pull: PullHost,
}

impl Default for Runs {
    /// Runs whose pull API listens on [`crate::deliver::pull::app_listen`].
    fn default() -> Runs {
        Runs::with_pull_listen(crate::deliver::pull::app_listen())
    }
}

/// What the Consumers tab needs to pull a profile's consumers: the token, revealed because a
/// person clicked "Reveal token", and where and whether the API answers.
#[derive(Debug, Serialize, ts_rs::TS)]
#[serde(rename_all = "camelCase")]
pub struct PullAccess {
    /// The store's bearer token.
    pub token: RevealedSecret,
    /// The API's base URL, `http://127.0.0.1:7376`.
    pub base_url: String,
    /// Whether the API answers for this profile now: its capture runs and the server listens.
    pub serving: bool,
    /// Why it does not, and what to do.
    pub problem: Option<String>,
}

impl std::fmt::Debug for Runs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runs").finish_non_exhaustive()
    }
}

impl Runs {
    /// Runs whose one pull API server listens on `listen` (an address and port; port 0 picks one)
    /// while any capture runs.
    pub fn with_pull_listen(listen: impl Into<String>) -> Runs {
        Runs {
            shared: Arc::default(),
            pull: PullHost::new(listen),
        }
    }

    /// Whether the pull API server listens, where, and why not.
    pub fn pull_serving(&self) -> PullServing {
        self.pull.serving()
    }

    /// "Reveal token": the profile's pull API token (made and kept in the keychain the first time),
    /// with the URL to pull from and, when the API does not answer for it now, why.
    pub fn pull_access(&self, profiles: &Profiles, id_or_name: &str) -> Result<PullAccess> {
        let profile = profiles.get(id_or_name)?;
        let token = crate::app::consumers::ConsumerStore::of_profile(profiles, &profile.id)?
            .reveal_pull_token()?;
        let serving = self.pull.serving();
        let running = self.is_running(&profile.id);
        let problem = match (&serving.error, running) {
            (Some(e), _) => Some(e.message().to_string()),
            (None, false) => Some(format!(
                "the pull API answers for '{}' while its capture runs: start it on the Capture tab",
                profile.name
            )),
            (None, true) if !serving.serving => {
                Some("the pull API is not listening: stop and start this capture".to_string())
            }
            (None, true) => None,
        };
        Ok(PullAccess {
            token,
            base_url: format!("http://{}", serving.address),
            serving: running && serving.serving,
            problem,
        })
    }

    /// Serves the profile's store on the pull API; without a keychain or a readable ledger it is
    /// not served (logged; the Consumers tab says why when the token is revealed).
    async fn serve_pull(
        &self,
        profiles: &Profiles,
        id: &str,
        database: crate::deliver::Database,
    ) -> Option<PullRoute> {
        let store_dir = profiles.store_dir(id).ok()?;
        let keychain = profiles.given_keychain();
        let dir = store_dir.clone();
        let token = tokio::task::spawn_blocking(move || {
            let keychain = match keychain {
                Some(k) => k,
                None => crate::secrets::Keychain::open()?,
            };
            crate::deliver::pull::api_token(&dir, &keychain)
        })
        .await
        .map_err(|e| Error::internal(format!("reading the pull API token: {e}")))
        .and_then(|r| r);
        let served = token.and_then(|token| {
            self.pull.serve(crate::deliver::pull::PullOptions {
                store_dir,
                database,
                token,
                wake: self.commits_of(id).subscribe(),
            })
        });
        match served {
            Ok(route) => Some(route),
            Err(e) => {
                tracing::warn!(profile = %id, "the pull API does not serve this capture: {e}");
                None
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn commits_of(&self, profile: &str) -> tokio::sync::watch::Sender<u64> {
        self.lock()
            .commits
            .entry(profile.to_string())
            .or_insert_with(|| tokio::sync::watch::channel(0).0)
            .clone()
    }

    /// The `application_name` of the profile's capture while it runs here.
    fn running_capture(&self, id: &str) -> Option<String> {
        self.lock()
            .runs
            .get(id)
            .filter(|r| !r.task.is_finished())
            .map(|r| r.application_name.clone())
    }

    /// The Setup checklist of the profile ([`Profiles::preflight`]), knowing this process's captures:
    /// a slot held by the profile's running capture here is a pass, not a slot in use by someone else.
    pub async fn preflight(
        &self,
        profiles: &Profiles,
        id_or_name: &str,
    ) -> Result<Vec<crate::source::preflight::Check>> {
        let id = profiles.get(id_or_name)?.id;
        profiles.preflight(&id, self.running_capture(&id)).await
    }

    /// Whether the profile's capture task is running.
    fn is_running(&self, id: &str) -> bool {
        self.lock()
            .runs
            .get(id)
            .is_some_and(|r| !r.task.is_finished())
    }

    /// What [`Runs::save_and_publish`] will do, in order, before anything runs: the publication's
    /// statements, the slot, the tables backfilled, and whether the capture starts or, running
    /// already, picks up the new definition.
    pub async fn plan_publish(
        &self,
        profiles: &Profiles,
        id_or_name: &str,
        bindings: Vec<crate::binding::Binding>,
        choices: Vec<crate::source::publication::Choice>,
    ) -> Result<crate::capture::PublishPlan> {
        let profile = profiles.get(id_or_name)?;
        let definition = publish_definition(&profile, bindings)?;
        let spec = profiles.spec_blocking(&profile.id, None).await?;
        crate::capture::plan_publish(
            &spec,
            &profiles.store_dir(&profile.id)?,
            &definition,
            &choices,
            self.is_running(&profile.id),
        )
        .await
    }

    /// One-click "Save and publish": makes the publication contain the bound tables and saves the
    /// definition ([`Profiles::publish`]), then starts the capture, which creates the slot and
    /// backfills. A capture running already is not started again: it picks up the saved definition
    /// and backfills the tables new to it alongside the stream, so a profile never has two captures.
    pub async fn save_and_publish(
        &self,
        profiles: &Profiles,
        id_or_name: &str,
        bindings: Vec<crate::binding::Binding>,
        choices: Vec<crate::source::publication::Choice>,
        listener: StatusListener,
    ) -> Result<RunStatus> {
        let id = profiles.get(id_or_name)?.id;
        profiles.publish(&id, bindings, choices).await?;
        if self.is_running(&id) {
            return self.status(&id, profiles);
        }
        self.start(profiles, &id, listener).await
    }

    /// Starts the profile's capture (its saved definition, creating the slot if missing); `listener`
    /// hears every status change. Starting a running capture is an error.
    pub async fn start(
        &self,
        profiles: &Profiles,
        id_or_name: &str,
        listener: StatusListener,
    ) -> Result<RunStatus> {
        let profile = profiles.get(id_or_name)?;
        let id = profile.id.clone();
        if self.is_running(&id) {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!("the capture of '{}' is running already", profile.name),
            ));
        }
        if profiles.capture_definition(&id)?.is_none() {
            return Err(Error::invalid_input(
                "tables",
                "nothing to capture yet: select tables and \"Save and publish\" first",
            ));
        }
        let mut spec = profiles.spec_blocking(&id, None).await?;
        spec.application_name = run_application_name(&spec.application_name);
        let application_name = spec.application_name.clone();
        let status = Arc::new(Mutex::new(RunStatus {
            state: RunState::Starting,
            ..RunStatus::stopped(&id)
        }));
        let notify = {
            let status = status.clone();
            let listener = listener.clone();
            move |change: &dyn Fn(&mut RunStatus)| {
                let snapshot = {
                    let mut s = status.lock().unwrap_or_else(|e| e.into_inner());
                    change(&mut s);
                    s.clone()
                };
                listener(&snapshot);
            }
        };
        let notify = Arc::new(notify);
        let commits = self.commits_of(&id);
        let window: Arc<Mutex<Vec<(Instant, u64)>>> = Arc::default();
        // Changes per second over the last 10 s, counting `added` changes stored now.
        let rate_with = {
            let window = window.clone();
            move |added: Option<u64>| {
                let now = Instant::now();
                let mut window = window.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(n) = added {
                    window.push((now, n));
                }
                window.retain(|(at, _)| now.duration_since(*at).as_secs_f64() <= RATE_WINDOW_SECS);
                let total: u64 = window.iter().map(|(_, n)| n).sum();
                let span = window.first().map_or(1.0, |(first, _)| {
                    now.duration_since(*first).as_secs_f64().max(1.0)
                });
                total as f64 / span
            }
        };
        let observer = {
            let notify = notify.clone();
            let rate_with = rate_with.clone();
            Observer(Arc::new(move |flush: &Flush| {
                let rate = rate_with(Some(flush.changes));
                let newest = flush.commit_times_micros.iter().max().copied();
                notify(&|s: &mut RunStatus| {
                    s.state = RunState::Streaming;
                    s.changes += flush.changes;
                    if flush.changes > 0 {
                        s.commits += 1;
                    }
                    s.checkpoint = flush.checkpoint.to_string();
                    s.changes_per_second = rate;
                    if let Some(commit) = newest {
                        s.last_commit_micros = Some(commit);
                        s.lag_ms = Some((flush.stored_at_micros - commit).max(0) as f64 / 1000.0);
                    }
                });
                commits.send_modify(|n| *n += 1);
            }))
        };
        let progress = {
            let notify = notify.clone();
            Arc::new(move |p: &BackfillProgress| {
                notify(&|s: &mut RunStatus| {
                    s.backfills.insert(p.collection.clone(), p.clone());
                })
            })
        };
        let options = CaptureOptions {
            spec,
            store_dir: profiles.store_dir(&id)?,
            publication: profile.publication.clone(),
            slot: profile.slot.clone(),
            create_slot: true,
            stop_at: None,
            observer: Some(observer),
            bindings: Vec::new(),
            backfill_progress: Some(progress),
        };
        let task = {
            let notify = notify.clone();
            tokio::spawn(async move {
                // A status every second while streaming, so a quiet stream's rate falls to zero and
                // the Monitor's charts have a point per second.
                let run = crate::capture::run(options);
                tokio::pin!(run);
                let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
                let outcome = loop {
                    tokio::select! {
                        outcome = &mut run => break outcome,
                        _ = tick.tick() => {
                            let rate = rate_with(None);
                            notify(&|s: &mut RunStatus| {
                                if s.state == RunState::Streaming {
                                    s.changes_per_second = rate;
                                }
                            });
                        }
                    }
                };
                notify(&|s: &mut RunStatus| match &outcome {
                    Ok(_) => s.state = RunState::Stopped,
                    Err(e) => {
                        s.state = RunState::Failed;
                        s.error = Some(e.clone());
                    }
                });
            })
        };
        let database = crate::deliver::Database {
            name: profile.name.clone(),
            database: profile.database.clone(),
            hostname: profile.host.clone(),
        };
        let pull = self.serve_pull(profiles, &id, database.clone()).await;
        // Delivery reads the store beside the capture, woken by each of its commits; it never
        // delays the capture (see crate::deliver).
        let delivery = {
            let options = crate::deliver::DeliveryOptions {
                store_dir: profiles.store_dir(&id)?,
                database,
                keychain: crate::secrets::Keychain::open().ok(),
                wake: self.commits_of(&id).subscribe(),
            };
            let name = profile.name.clone();
            tokio::spawn(async move {
                if let Err(e) = crate::deliver::run(options).await {
                    tracing::error!(profile = %name, "delivery stopped: {e}");
                }
            })
        };
        let snapshot = status.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mut shared = self.lock();
        let replaced = shared.runs.insert(
            id.clone(),
            Running {
                task,
                application_name,
                delivery,
                _pull: pull,
            },
        );
        shared.status.insert(id, status);
        drop(shared);
        // A run that ended by itself (failed) left its delivery running: it goes now, and its
        // pull route with it (the new run's route serves the same store).
        if let Some(old) = replaced {
            old.abort();
        }
        Ok(snapshot)
    }

    /// "Re-backfill and continue", after the capture was refused because its store can no longer
    /// follow the source without a gap ([`ErrorKind::Diverged`]): records the gap, raises the backfill
    /// of every backfilled table (see [`crate::source::continuity::resync`]), and starts the capture.
    pub async fn resync(
        &self,
        profiles: &Profiles,
        id_or_name: &str,
        listener: StatusListener,
    ) -> Result<RunStatus> {
        let profile = profiles.get(id_or_name)?;
        if self.is_running(&profile.id) {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "the capture of '{}' is running: pause it first",
                    profile.name
                ),
            ));
        }
        let spec = profiles.spec_blocking(&profile.id, None).await?;
        crate::source::continuity::resync(&spec, &profiles.store_dir(&profile.id)?, &profile.slot)
            .await?;
        self.start(profiles, &profile.id, listener).await
    }

    fn refuse_while_running(
        &self,
        profile: &crate::app::profile::Profile,
        what: &str,
    ) -> Result<()> {
        if self.is_running(&profile.id) {
            return Err(Error::invalid_input(
                "profile",
                format!(
                    "the capture of '{}' is running: stop it before you {what}",
                    profile.name
                ),
            ));
        }
        Ok(())
    }

    /// Removes a profile with its store and keychain entries ([`Profiles::delete`]), refused while
    /// its capture runs.
    pub fn delete_profile(
        &self,
        profiles: &Profiles,
        id_or_name: &str,
    ) -> Result<crate::app::profile::Removed> {
        let profile = profiles.get(id_or_name)?;
        self.refuse_while_running(&profile, "remove the profile")?;
        let removed = profiles.delete(&profile.id)?;
        self.lock().status.remove(&profile.id);
        Ok(removed)
    }

    /// Discards the profile's local copy ([`Profiles::discard_store`]) and drops its slot, refused
    /// while its capture runs: the way out of a store whose key is lost. The slot goes because a
    /// new store starts with a consistent backfill, which needs a slot created with its snapshot;
    /// nothing else on the source is touched. Nothing is deleted when the slot cannot be dropped.
    pub async fn discard_store(
        &self,
        profiles: &Profiles,
        id_or_name: &str,
    ) -> Result<crate::app::profile::Removed> {
        let profile = profiles.get(id_or_name)?;
        self.refuse_while_running(&profile, "discard its local copy")?;
        let spec = profiles.spec_blocking(&profile.id, None).await?;
        let client = crate::source::connection::connect(&spec)
            .await
            .map_err(|e| e.context("the local copy was kept: its slot must be dropped with it"))?;
        let dropped = crate::source::slot::drop_released(&client, &profile.slot).await?;
        let mut removed = profiles.discard_store(&profile.id)?;
        removed.slot_dropped = dropped.then(|| profile.slot.clone());
        self.lock().status.remove(&profile.id);
        Ok(removed)
    }

    /// Stops the profile's capture. The slot stays (the server keeps WAL for it until the next start).
    pub fn stop(&self, id_or_name: &str, profiles: &Profiles) -> Result<RunStatus> {
        let id = profiles.get(id_or_name)?.id;
        let mut shared = self.lock();
        if let Some(run) = shared.runs.remove(&id) {
            run.abort();
        }
        let status = shared
            .status
            .get(&id)
            .map(|s| {
                let mut s = s.lock().unwrap_or_else(|e| e.into_inner());
                if s.state != RunState::Failed {
                    s.state = RunState::Stopped;
                }
                s.clone()
            })
            .unwrap_or_else(|| RunStatus::stopped(&id));
        Ok(status)
    }

    /// "Stop and drop the slot": stops the capture, drops its slot so the server frees the WAL it
    /// holds, and empties the local store but for the capture definition: without the slot its
    /// checkpoint means nothing, so the next start backfills again from a new snapshot.
    pub async fn stop_and_drop_slot(
        &self,
        id_or_name: &str,
        profiles: &Profiles,
    ) -> Result<RunStatus> {
        let profile = profiles.get(id_or_name)?;
        let running = self.lock().runs.remove(&profile.id);
        if let Some(run) = running {
            run.abort();
            // Wait until the task is gone, so its connections are closed before the slot is dropped.
            let _ = run.task.await;
        }
        let spec = profiles.spec_blocking(&profile.id, None).await?;
        let client = crate::source::connection::connect(&spec).await?;
        crate::source::slot::drop_released(&client, &profile.slot).await?;
        let store_dir = profiles.store_dir(&profile.id)?;
        if let Some(mut store) = Store::open_existing(&store_dir)? {
            // The definition and the retention are the person's settings, not capture state.
            store.forget_capture(&[
                crate::binding::META_KEY,
                crate::store::retention::RETENTION_KEY,
            ])?;
            crate::deliver::log_restarted(&store_dir)?;
        }
        let mut shared = self.lock();
        shared.status.remove(&profile.id);
        tracing::info!(profile = %profile.name, slot = %profile.slot, "capture stopped and slot dropped");
        Ok(RunStatus::stopped(&profile.id))
    }

    /// The profile's capture status (stopped when it never ran here).
    pub fn status(&self, id_or_name: &str, profiles: &Profiles) -> Result<RunStatus> {
        let id = profiles.get(id_or_name)?.id;
        let shared = self.lock();
        Ok(shared
            .status
            .get(&id)
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).clone())
            .unwrap_or_else(|| RunStatus::stopped(&id)))
    }

    /// Stops every capture (slots stay), waiting until each task is gone so its last store commit and
    /// confirmation are settled before the process exits.
    pub async fn stop_all(&self) {
        let running: Vec<(String, Running)> = self.lock().runs.drain().collect();
        for (id, run) in running {
            run.abort();
            let _ = run.delivery.await;
            let _ = run.task.await;
            if let Some(status) = self.lock().status.get(&id) {
                let mut s = status.lock().unwrap_or_else(|e| e.into_inner());
                if s.state != RunState::Failed {
                    s.state = RunState::Stopped;
                }
            }
        }
    }

    /// Whether any capture is running (the window asks before closing).
    pub fn any_running(&self) -> bool {
        self.lock().runs.values().any(|r| !r.task.is_finished())
    }

    /// The status of each capture running now, ordered by profile id (the desktop's tray icon
    /// shows them while the window is minimized).
    pub fn running(&self) -> Vec<RunStatus> {
        let shared = self.lock();
        let mut running: Vec<RunStatus> = shared
            .runs
            .iter()
            .filter(|(_, run)| !run.task.is_finished())
            .map(|(id, _)| {
                shared
                    .status
                    .get(id)
                    .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).clone())
                    .unwrap_or_else(|| RunStatus::stopped(id))
            })
            .collect();
        running.sort_by(|a, b| a.profile.cmp(&b.profile));
        running
    }

    /// Sends `collection`'s changes after log position `after` to `send`, then every change as store
    /// commits make it durable, until [`Runs::stop_tail`] with `token` or until `send` returns false.
    /// With `filter` (a CEL expression, as the preview's), only the changes it matches are sent; it is
    /// checked before anything is sent, so a bad expression is an error, not an empty tail.
    #[allow(clippy::too_many_arguments)]
    pub async fn tail(
        &self,
        profiles: &Profiles,
        id_or_name: &str,
        collection: &str,
        after: u64,
        filter: Option<&str>,
        token: &str,
        send: impl Fn(Vec<TailEntry>) -> bool,
    ) -> Result<()> {
        let id = profiles.get(id_or_name)?.id;
        let dir = profiles.store_dir(&id)?;
        let filter = filter.filter(|f| !f.trim().is_empty()).map(str::to_string);
        if let Some(source) = &filter {
            compile_filter(&dir, collection, source).await?;
        }
        let mut commits = self.commits_of(&id).subscribe();
        let (stop_tx, mut stop) = tokio::sync::watch::channel(false);
        self.lock().tails.insert(token.to_string(), stop_tx);
        let result = async {
            let mut after = after;
            loop {
                commits.borrow_and_update();
                loop {
                    let (page, scanned) =
                        read_changes(&dir, collection, after, filter.clone()).await?;
                    let Some(last) = scanned else { break };
                    after = last.0;
                    let full = last.1;
                    if !page.is_empty() && !send(page) {
                        return Ok(());
                    }
                    if !full {
                        break;
                    }
                }
                tokio::select! {
                    changed = commits.changed() => if changed.is_err() { return Ok(()) },
                    _ = stop.changed() => return Ok(()),
                }
            }
        }
        .await;
        self.lock().tails.remove(token);
        result
    }

    /// Ends the tail started with `token`.
    pub fn stop_tail(&self, token: &str) {
        if let Some(stop) = self.lock().tails.remove(token) {
            let _ = stop.send(true);
        }
    }
}

/// PostgreSQL keeps at most this many bytes of an `application_name` (NAMEDATALEN - 1).
const APPLICATION_NAME_BYTES: usize = 63;

/// A run's own `application_name`: `base` (the profile's), then `capture <process id>.<run number>`.
/// The server shows it exactly as given: only printable ASCII is kept from `base` (PostgreSQL
/// replaces anything else), and `base` is shortened so the whole fits in 63 bytes (it truncates
/// longer ones), so the suffix that makes it unique always survives.
fn run_application_name(base: &str) -> String {
    static RUNS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let run = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
    let suffix = format!("capture {}.{run}", std::process::id());
    let room = APPLICATION_NAME_BYTES.saturating_sub(suffix.len() + 1);
    let base: String = base
        .chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .take(room)
        .collect();
    let base = base.trim();
    if base.is_empty() {
        suffix
    } else {
        format!("{base} {suffix}")
    }
}

/// Most entries a tail sends at once.
const TAIL_PAGE: usize = 500;

/// One change in a tail: its log position, document, and what the change was.
#[derive(Debug, Clone, Serialize, ts_rs::TS)]
#[serde(rename_all = "camelCase")]
pub struct TailEntry {
    /// Position in the store's log.
    pub seq: u64,
    /// The change document.
    #[ts(type = "Record<string, unknown>")]
    pub doc: Json,
    /// Its commit LSN, transaction, time and, for an update, what changed (as a page's `changes`).
    pub info: crate::app::preview::ChangeInfo,
}

/// Refuses a filter that does not compile for `collection` (nothing to check before it exists).
async fn compile_filter(dir: &std::path::Path, collection: &str, source: &str) -> Result<()> {
    let dir = dir.to_path_buf();
    let collection = collection.to_string();
    let source = source.to_string();
    tokio::task::spawn_blocking(move || {
        let Some(store) = crate::store::Store::open_existing(&dir)? else {
            return Ok(());
        };
        if let Some(spec) = store.collection(&collection)? {
            crate::app::preview_filter::PreviewFilter::compile(&source, &spec)?;
        }
        Ok(())
    })
    .await
    .map_err(|e| Error::internal(format!("reading the store: {e}")))?
}

/// The next page of the log after `after`, only the entries `filter` matches; with the position of
/// the last entry read and whether the page was full (`None` when nothing was read).
async fn read_changes(
    dir: &std::path::Path,
    collection: &str,
    after: u64,
    filter: Option<String>,
) -> Result<(Vec<TailEntry>, Option<(u64, bool)>)> {
    let dir = dir.to_path_buf();
    let collection = collection.to_string();
    tokio::task::spawn_blocking(move || {
        let Some(store) = crate::store::Store::open_existing(&dir)? else {
            return Ok((Vec::new(), None));
        };
        let Some(spec) = store.collection(&collection)? else {
            return Ok((Vec::new(), None));
        };
        // Compiled per page: a page is read only after a commit, and the collection's columns (which
        // the filter's checks use) may have changed since the last one.
        let filter = filter
            .map(|f| crate::app::preview_filter::PreviewFilter::compile(&f, &spec))
            .transpose()?;
        let page = store.changes(&collection, after, TAIL_PAGE)?;
        let scanned = page.last().map(|(seq, _)| (*seq, page.len() == TAIL_PAGE));
        let entries = page
            .into_iter()
            .filter(|(seq, doc)| filter.as_ref().is_none_or(|f| f.matches(*seq, doc)))
            .map(|(seq, doc)| TailEntry {
                info: crate::app::preview::ChangeInfo::of(seq, &doc, &spec),
                seq,
                doc,
            })
            .collect();
        Ok((entries, scanned))
    })
    .await
    .map_err(|e| Error::internal(format!("reading the store: {e}")))?
}

/// The definition "Save and publish" saves for `profile`: its publication and slot with `bindings`.
fn publish_definition(
    profile: &crate::app::profile::Profile,
    bindings: Vec<crate::binding::Binding>,
) -> Result<crate::binding::Definition> {
    if bindings.is_empty() {
        return Err(Error::invalid_input(
            "bindings",
            "select at least one table",
        ));
    }
    Ok(crate::binding::Definition {
        profile: Some(profile.id.clone()),
        publication: profile.publication.clone(),
        slot: profile.slot.clone(),
        bindings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_run_has_an_application_name_the_server_keeps_as_it_is() {
        let own = format!("capture {}.", std::process::id());
        let first = run_application_name("tidepool");
        let second = run_application_name("tidepool");
        assert_ne!(first, second, "two runs share a name");
        assert!(first.starts_with(&format!("tidepool {own}")), "{first}");
        // Too long, and not ASCII: shortened and cleaned so the unique end is what PostgreSQL stores.
        let odd = run_application_name(&format!("é{}\t{}", "x".repeat(80), "y"));
        assert!(odd.len() <= APPLICATION_NAME_BYTES, "{odd}");
        assert!(
            odd.chars().all(|c| c.is_ascii_graphic() || c == ' '),
            "{odd}"
        );
        assert!(odd.starts_with("xxxx") && odd.contains(&own), "{odd}");
        assert!(run_application_name("  ").starts_with(&own));
    }
}
