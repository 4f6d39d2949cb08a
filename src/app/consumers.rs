//! The consumers of one capture's store as a person manages them: the desktop app's Consumers tab
//! and the `tidepool consumer` commands both call [`ConsumerStore`], so the two cannot drift apart.
//! It is a thin layer over [`crate::deliver`]: it finds the profile's store (the same folder its
//! runs capture into), opens the keychain the profile uses, and shapes what a screen shows.
//!
//! Invariants:
//! - Secrets go one way. Secret header values arrive as [`Secret`] and go straight to the keychain;
//!   the signing secret and the pull API token leave it only through
//!   [`ConsumerStore::reveal_signing_secret`] and [`ConsumerStore::reveal_pull_token`], the calls
//!   made for a person who asked to see them.
//! - Reading never creates anything: listing the consumers of a profile that never captured is an
//!   empty list, not a new ledger file.
//! - Every error names the field or consumer at fault ([`crate::ErrorKind`] + message).

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::app::profile::{Profiles, RevealedSecret};
use crate::deliver::consumer::{Action, Consumer, ConsumerSpec, Destination};
use crate::deliver::filter::{numeric_columns, Filter};
use crate::deliver::ledger::{ledger_path, Attempt, Ledger, Parked, Sample};
use crate::deliver::message::{build, Database, Place};
use crate::deliver::webhook::TestResult;
use crate::error::{Error, ErrorKind, Result};
use crate::secrets::{Keychain, Secret, SecretKey};
use crate::store::Store;

/// Parked messages [`ConsumerStore::list`] returns per consumer (the oldest); `failed` counts them
/// all. A screen that reads the list every few seconds stays small when thousands are parked.
pub const PARKED_LISTED: usize = 20;

/// How many of a collection's newest changes a filter check tries the filter on.
pub const FILTER_PREVIEW_CHANGES: usize = 100;

/// A consumer as the Consumers tab and `tidepool consumer show --json` show it: its definition
/// (secret header names only), where it stands and its parked messages.
#[derive(Debug, Clone, PartialEq, Serialize, ts_rs::TS)]
#[serde(rename_all = "camelCase")]
pub struct ConsumerView {
    /// Definition, id, position, pending and failed counts, notices.
    #[serde(flatten)]
    pub consumer: Consumer,
    /// Messages parked after their last retry, each with its last error.
    pub parked: Vec<Parked>,
}

/// The name of the consumer "Try a webhook" makes.
pub const TRY_WEBHOOK: &str = "try-webhook";

/// Seconds of samples [`ConsumerStore::activity`] returns: the span a consumer's page charts.
pub const ACTIVITY_SECONDS: i64 = 300;

/// What a consumer's page shows besides its definition: its recent requests and what it delivered
/// per second.
#[derive(Debug, Clone, PartialEq, Serialize, ts_rs::TS)]
#[serde(rename_all = "camelCase")]
pub struct ConsumerActivity {
    /// Its last requests (at most [`crate::deliver::ledger::ATTEMPTS_KEPT`]), newest first.
    pub attempts: Vec<Attempt>,
    /// Per second of the last [`ACTIVITY_SECONDS`] in which it delivered something, oldest first.
    pub samples: Vec<Sample>,
    /// When this was read (Unix ms), so a chart's time axis ends now.
    pub now_ms: i64,
}

/// A secret header's value as typed once in the form, on its way to the keychain.
#[derive(Debug, Clone, serde::Deserialize, ts_rs::TS)]
#[serde(rename_all = "camelCase")]
#[ts(rename = "SecretHeaderValue")]
pub struct SecretHeader {
    /// The header's name (one of the webhook's `secretHeaders`).
    pub name: String,
    /// Its value.
    pub value: Secret,
}

/// Where an expression went wrong, as the filter field shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ts_rs::TS)]
#[serde(rename_all = "camelCase")]
pub struct FilterProblem {
    /// The reason, with its position (`filter: line 1, column 16: …`), as saving would refuse it.
    pub message: String,
    /// 1-based line of the position, when the reason has one.
    pub line: Option<u32>,
    /// 1-based column of the position, when the reason has one.
    pub column: Option<u32>,
}

/// How a filter fares on one collection's newest changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ts_rs::TS)]
#[serde(rename_all = "camelCase")]
pub struct FilterPreview {
    /// The collection.
    pub collection: String,
    /// Changes tried: its newest, at most [`FILTER_PREVIEW_CHANGES`], of the chosen actions.
    pub tried: u64,
    /// How many of them the filter keeps.
    pub kept: u64,
}

/// The answer to "Check" on a filter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ts_rs::TS)]
#[serde(rename_all = "camelCase")]
pub struct FilterCheck {
    /// Why the expression is refused; none when it compiles.
    pub problem: Option<FilterProblem>,
    /// For a valid expression, per chosen collection in the store.
    pub preview: Vec<FilterPreview>,
}

/// The consumers of one store, with the keychain their secrets are in.
#[derive(Debug, Clone)]
pub struct ConsumerStore {
    dir: PathBuf,
    /// A given keychain (tests, a profile opened with one); else the OS's, opened on use so that a
    /// keychain unlocked later works.
    keychain: Option<Keychain>,
    /// The source as messages name it (`metadata.database`), for the filter check.
    database: Database,
}

impl ConsumerStore {
    /// The consumers of the profile's store: the folder its runs capture into.
    pub fn of_profile(profiles: &Profiles, id_or_name: &str) -> Result<ConsumerStore> {
        let profile = profiles.get(id_or_name)?;
        Ok(ConsumerStore {
            dir: profiles.store_dir(&profile.id)?,
            keychain: profiles.given_keychain(),
            // As the profile's run names it to delivery (crate::app::run).
            database: Database {
                name: profile.name,
                database: profile.database,
                hostname: profile.host,
            },
        })
    }

    /// The consumers of the store in `dir` (`tidepool consumer --store`), secrets in the OS keychain.
    pub fn at(dir: &Path) -> ConsumerStore {
        ConsumerStore {
            dir: dir.to_path_buf(),
            keychain: None,
            database: Database::default(),
        }
    }

    /// The store folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn keychain(&self) -> Result<Keychain> {
        match &self.keychain {
            Some(k) => Ok(k.clone()),
            None => Keychain::open(),
        }
    }

    /// The ledger, if consumers were ever added here.
    fn ledger(&self) -> Result<Option<Ledger>> {
        if ledger_path(&self.dir).exists() {
            Ledger::open(&self.dir).map(Some)
        } else {
            Ok(None)
        }
    }

    fn existing_ledger(&self, id_or_name: &str) -> Result<Ledger> {
        self.ledger()?.ok_or_else(|| no_consumer(id_or_name))
    }

    /// Every consumer with its counts and its oldest [`PARKED_LISTED`] parked messages, in the
    /// order they were added.
    pub fn list(&self) -> Result<Vec<ConsumerView>> {
        let Some(ledger) = self.ledger()? else {
            return Ok(Vec::new());
        };
        ledger
            .list()?
            .into_iter()
            .map(|consumer| {
                let mut parked = ledger.parked(&consumer.id)?;
                parked.truncate(PARKED_LISTED);
                Ok(ConsumerView { consumer, parked })
            })
            .collect()
    }

    /// One consumer by name or id, with every parked message.
    pub fn get(&self, id_or_name: &str) -> Result<ConsumerView> {
        let ledger = self.existing_ledger(id_or_name)?;
        let consumer = ledger.get(id_or_name)?;
        let parked = ledger.parked(&consumer.id)?;
        Ok(ConsumerView { consumer, parked })
    }

    /// Saves a new consumer (see [`crate::deliver::add_consumer`]): a webhook consumer gets a new
    /// signing secret in the keychain, and each secret header's value goes there too, as does a
    /// NATS consumer's `credential`. Every secret header named in the definition needs its value.
    pub fn add(
        &self,
        spec: ConsumerSpec,
        secret_headers: Vec<SecretHeader>,
        credential: Option<Secret>,
    ) -> Result<Consumer> {
        spec.validate()?;
        let keychain = match &spec.destination {
            Destination::Webhook(w) => {
                for name in &w.secret_headers {
                    let given = secret_headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case(name));
                    if given.is_none_or(|h| h.value.is_empty()) {
                        return Err(Error::invalid_input(
                            "secret-header",
                            format!("the value of '{name}' is empty"),
                        ));
                    }
                }
                Some(self.keychain()?)
            }
            Destination::Nats(n) if n.auth.needs_secret() => Some(self.keychain()?),
            Destination::Nats(_) | Destination::Pull(_) => None,
        };
        let values: Vec<(String, Secret)> = secret_headers
            .into_iter()
            .map(|h| (h.name, h.value))
            .collect();
        crate::deliver::add_consumer(
            &self.dir,
            spec,
            keychain.as_ref(),
            &values,
            credential.as_ref(),
        )
    }

    /// [`Self::add`] once [`Self::check_destination`] passed: what "Create consumer" and `tidepool
    /// consumer add` call, so a wrong server or credential is refused before anything is saved.
    pub async fn add_checked(
        &self,
        spec: ConsumerSpec,
        secret_headers: Vec<SecretHeader>,
        credential: Option<Secret>,
    ) -> Result<Consumer> {
        spec.validate()?;
        crate::deliver::check_credential(&spec, credential.as_ref())?;
        Self::check_destination(&spec, credential.as_ref()).await?;
        self.add(spec, secret_headers, credential)
    }

    /// Connects to a NATS consumer's server with the credential it would be saved with (and makes
    /// its stream if it names one), so that a wrong address or credential is refused before it is
    /// saved; nothing to check for other destinations.
    pub async fn check_destination(spec: &ConsumerSpec, credential: Option<&Secret>) -> Result<()> {
        match &spec.destination {
            Destination::Nats(n) => crate::deliver::nats::check(n, credential).await,
            Destination::Webhook(_) | Destination::Pull(_) => Ok(()),
        }
    }

    /// Removes a consumer, its queue and its keychain entries (signing secret, secret headers,
    /// NATS credential).
    pub fn remove(&self, id_or_name: &str) -> Result<Consumer> {
        let ledger = self.existing_ledger(id_or_name)?;
        let consumer = ledger.get(id_or_name)?;
        drop(ledger);
        // Its entries must go with it; a pull consumer has none.
        let keychain = if crate::deliver::has_secrets(&consumer) {
            Some(self.keychain()?)
        } else {
            None
        };
        crate::deliver::remove_consumer(&self.dir, &consumer.id, keychain.as_ref())
    }

    /// A webhook consumer's signing secret (`whsec_…`), from the keychain.
    pub fn signing_secret(&self, id_or_name: &str) -> Result<Secret> {
        let consumer = self.existing_ledger(id_or_name)?.get(id_or_name)?;
        if !matches!(consumer.spec.destination, Destination::Webhook(_)) {
            return Err(Error::invalid_input(
                "name",
                format!("'{id_or_name}' is a pull consumer: it has no signing secret"),
            ));
        }
        self.keychain()?
            .get(&SecretKey::WebhookSecret(consumer.id.clone()))?
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::NotFound,
                    format!(
                        "the signing secret of '{}' is not in the keychain",
                        consumer.spec.name
                    ),
                )
            })
    }

    /// "Reveal signing secret": the one path by which it reaches the window, on a person's request.
    pub fn reveal_signing_secret(&self, id_or_name: &str) -> Result<RevealedSecret> {
        self.signing_secret(id_or_name).map(RevealedSecret::new)
    }

    /// The store's pull API token, from the keychain; made and kept there the first time (see
    /// [`crate::deliver::pull::api_token`]). Refused before any consumer was added here, so it
    /// never creates a ledger for a profile that has none.
    pub fn pull_token(&self) -> Result<Secret> {
        if !ledger_path(&self.dir).exists() {
            return Err(Error::new(
                ErrorKind::NotFound,
                format!(
                    "no consumers in {} yet: create a pull consumer first",
                    self.dir.display()
                ),
            ));
        }
        crate::deliver::pull::api_token(&self.dir, &self.keychain()?)
    }

    /// "Reveal token": the one path by which the pull API token reaches the window.
    pub fn reveal_pull_token(&self) -> Result<RevealedSecret> {
        self.pull_token().map(RevealedSecret::new)
    }

    /// Puts parked messages (all, or the one at `seq`) back in the queue; returns how many.
    pub fn retry(&self, id_or_name: &str, seq: Option<u64>) -> Result<u64> {
        let mut ledger = self.existing_ledger(id_or_name)?;
        let id = ledger.get(id_or_name)?.id;
        ledger.retry(&id, seq)
    }

    /// Drops parked messages (all, or the one at `seq`) undelivered; returns how many.
    pub fn skip(&self, id_or_name: &str, seq: Option<u64>) -> Result<u64> {
        let mut ledger = self.existing_ledger(id_or_name)?;
        let id = ledger.get(id_or_name)?.id;
        ledger.skip(&id, seq)
    }

    /// Pauses (`true`) or resumes a consumer: while paused its worker delivers nothing and the
    /// pull API hands nothing out; its messages stay queued and the log is still read into its
    /// queue. Delivery reads the local store, so a paused consumer never holds the slot.
    pub fn set_paused(&self, id_or_name: &str, paused: bool) -> Result<Consumer> {
        let mut ledger = self.existing_ledger(id_or_name)?;
        let id = ledger.get(id_or_name)?.id;
        ledger.set_paused(&id, paused)?;
        ledger.get(&id)
    }

    /// A consumer's recent requests and its delivered-per-second samples.
    pub fn activity(&self, id_or_name: &str) -> Result<ConsumerActivity> {
        let ledger = self.existing_ledger(id_or_name)?;
        let id = ledger.get(id_or_name)?.id;
        let now_ms = crate::deliver::now_ms();
        Ok(ConsumerActivity {
            attempts: ledger.attempts(&id)?,
            samples: ledger.samples(&id, now_ms / 1000 - ACTIVITY_SECONDS)?,
            now_ms,
        })
    }

    /// "Send a test message": one request to a webhook consumer's URL, signed like every
    /// delivery, with a body marked as a test; recorded among its attempts, never queued.
    pub async fn send_test(&self, id_or_name: &str) -> Result<TestResult> {
        let consumer = self.existing_ledger(id_or_name)?.get(id_or_name)?;
        let keychain = self.keychain()?;
        crate::deliver::webhook::send_test(&self.dir, Some(&keychain), &consumer).await
    }

    /// Replaces a consumer's definition with `spec`: a webhook's URL, headers, timeout, batch
    /// size, retries, in-flight limit; the actions and filter; a NATS server's subject, stream,
    /// limits; a pull consumer's limits. Its name, collections, mode, start, grouping,
    /// destination kind and NATS authentication stay (refused, naming the field). A secret header
    /// new to the definition needs its value in `secret_headers`; one already there keeps its
    /// value unless a new one is given; one dropped from the definition leaves the keychain. The
    /// running delivery picks the new definition up within a second (what it had in flight is
    /// offered again); messages already queued keep their body.
    pub fn edit(
        &self,
        id_or_name: &str,
        spec: ConsumerSpec,
        secret_headers: Vec<SecretHeader>,
    ) -> Result<Consumer> {
        let mut ledger = self.existing_ledger(id_or_name)?;
        let current = ledger.get(id_or_name)?;
        spec.validate()?;
        let old = &current.spec;
        let fixed = |field: &str, same: bool| -> Result<()> {
            if same {
                Ok(())
            } else {
                Err(Error::invalid_input(
                    field,
                    format!(
                        "the {field} of '{}' cannot be changed: create a new consumer instead",
                        old.name
                    ),
                ))
            }
        };
        fixed("name", spec.name == old.name)?;
        fixed("collections", spec.collections == old.collections)?;
        fixed("mode", spec.mode == old.mode)?;
        fixed("start", spec.start == old.start)?;
        fixed("group-by", spec.group_by == old.group_by)?;
        let mut dropped = Vec::new();
        match (&old.destination, &spec.destination) {
            (Destination::Webhook(before), Destination::Webhook(after)) => {
                for given in &secret_headers {
                    if !after
                        .secret_headers
                        .iter()
                        .any(|h| h.eq_ignore_ascii_case(&given.name))
                    {
                        return Err(Error::invalid_input(
                            "secret-header",
                            format!(
                                "'{}' is not one of the consumer's secret headers",
                                given.name
                            ),
                        ));
                    }
                    if given.value.is_empty() {
                        return Err(Error::invalid_input(
                            "secret-header",
                            format!("the value of '{}' is empty", given.name),
                        ));
                    }
                }
                for name in &after.secret_headers {
                    let kept = before.secret_headers.iter().any(|h| h == name);
                    let given = secret_headers
                        .iter()
                        .any(|h| h.name.eq_ignore_ascii_case(name));
                    if !kept && !given {
                        return Err(Error::invalid_input(
                            "secret-header",
                            format!("the value of '{name}' is empty"),
                        ));
                    }
                }
                dropped = before
                    .secret_headers
                    .iter()
                    .filter(|h| !after.secret_headers.contains(h))
                    .cloned()
                    .collect();
            }
            (Destination::Nats(before), Destination::Nats(after)) => {
                fixed("nats-auth", before.auth == after.auth)?;
            }
            (Destination::Pull(_), Destination::Pull(_)) => {}
            _ => fixed("destination", false)?,
        }
        if !secret_headers.is_empty() || !dropped.is_empty() {
            let keychain = self.keychain()?;
            let label = format!("Tidepool consumer {}", old.name);
            for h in &secret_headers {
                // Stored under the name as the definition spells it, which delivery reads.
                let name = match &spec.destination {
                    Destination::Webhook(w) => w
                        .secret_headers
                        .iter()
                        .find(|n| n.eq_ignore_ascii_case(&h.name))
                        .cloned()
                        .unwrap_or_else(|| h.name.clone()),
                    _ => h.name.clone(),
                };
                keychain.set(
                    &SecretKey::WebhookHeader(current.id.clone(), name.clone()),
                    &format!("{label}: header {name}"),
                    &h.value,
                )?;
            }
            ledger.set_spec(&current.id, &spec)?;
            for name in dropped {
                keychain.delete(&SecretKey::WebhookHeader(current.id.clone(), name))?;
            }
        } else {
            ledger.set_spec(&current.id, &spec)?;
        }
        ledger.get(&current.id)
    }

    /// "Try a webhook": the consumer [`TRY_WEBHOOK`] delivering every collection of the store, from
    /// now, in batches of 10, to `url` (the app's own trial receiver). Made the first time; after
    /// that pointed at `url` if the receiver moved (a new app start). Returns it with its signing
    /// secret, for the receiver to check signatures with.
    pub fn try_webhook(&self, url: &str) -> Result<(Consumer, Secret)> {
        let existing = match self.ledger()? {
            Some(ledger) => ledger
                .list()?
                .into_iter()
                .find(|c| c.spec.name == TRY_WEBHOOK),
            None => None,
        };
        let consumer = match existing {
            Some(c) => match &c.spec.destination {
                Destination::Webhook(w) if w.url == url => c,
                Destination::Webhook(w) => {
                    let mut spec = c.spec.clone();
                    spec.destination = Destination::Webhook(crate::deliver::consumer::Webhook {
                        url: url.to_string(),
                        ..w.clone()
                    });
                    self.edit(TRY_WEBHOOK, spec, Vec::new())?
                }
                _ => {
                    return Err(Error::invalid_input(
                        "name",
                        format!("a consumer named '{TRY_WEBHOOK}' exists and is not a webhook"),
                    ))
                }
            },
            None => {
                let collections: Vec<String> = Store::open_existing(&self.dir)?
                    .map(|store| store.collections())
                    .transpose()?
                    .unwrap_or_default()
                    .into_iter()
                    .map(|c| c.name)
                    .collect();
                if collections.is_empty() {
                    return Err(Error::new(
                        ErrorKind::NotFound,
                        "no collections yet: start the capture first, then try a webhook",
                    ));
                }
                self.add(
                    ConsumerSpec {
                        name: TRY_WEBHOOK.into(),
                        collections,
                        actions: Vec::new(),
                        filter: None,
                        mode: crate::deliver::Mode::Changes,
                        start: crate::deliver::consumer::Start::Now,
                        group_by: Vec::new(),
                        destination: Destination::Webhook(crate::deliver::consumer::Webhook {
                            url: url.to_string(),
                            headers: Default::default(),
                            secret_headers: Vec::new(),
                            batch_size: Some(10),
                            timeout_ms: 5_000,
                            max_retries: None,
                            max_in_flight: 4,
                        }),
                    },
                    Vec::new(),
                    None,
                )?
            }
        };
        let secret = self.signing_secret(&consumer.id)?;
        Ok((consumer, secret))
    }

    /// Checks `filter` as saving a consumer would; when it compiles, tries it on the newest changes
    /// (of `actions`, all when empty) of each of `collections` already in the store.
    pub fn check_filter(
        &self,
        filter: &str,
        collections: &[String],
        actions: &[Action],
    ) -> Result<FilterCheck> {
        let compiled = match Filter::compile(filter) {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::InvalidInput => {
                return Ok(FilterCheck {
                    problem: Some(problem_of(e.message())),
                    preview: Vec::new(),
                })
            }
            Err(e) => return Err(e),
        };
        let mut preview = Vec::new();
        let Some(store) = Store::open_existing(&self.dir)? else {
            return Ok(FilterCheck {
                problem: None,
                preview,
            });
        };
        // The messages are built as delivery builds them, for a consumer not saved yet.
        for name in collections {
            let Some(spec) = store.collection(name)? else {
                continue;
            };
            let numeric = numeric_columns(&spec.columns);
            let (mut tried, mut kept) = (0, 0);
            for (seq, doc) in store.latest_changes(name, FILTER_PREVIEW_CHANGES)? {
                let place = Place { seq, index: 0 };
                let Some(message) = build(doc, place, &spec, ("", "preview"), &self.database, &[])?
                else {
                    continue;
                };
                if !actions.is_empty() && !actions.contains(&message.action) {
                    continue;
                }
                tried += 1;
                if compiled.matches(&message.body, &numeric) {
                    kept += 1;
                }
            }
            preview.push(FilterPreview {
                collection: name.clone(),
                tried,
                kept,
            });
        }
        Ok(FilterCheck {
            problem: None,
            preview,
        })
    }
}

fn no_consumer(id_or_name: &str) -> Error {
    Error::new(
        ErrorKind::NotFound,
        format!("no consumer named '{id_or_name}'"),
    )
}

/// The position in a filter error (`filter: line L, column C: reason`, as [`Filter::compile`]
/// words every positioned refusal).
fn problem_of(message: &str) -> FilterProblem {
    let position = message
        .split_once("line ")
        .and_then(|(_, rest)| rest.split_once(", column "))
        .and_then(|(line, rest)| {
            let column: String = rest.chars().take_while(char::is_ascii_digit).collect();
            Some((line.parse().ok()?, column.parse().ok()?))
        });
    FilterProblem {
        message: message.to_string(),
        line: position.map(|p: (u32, u32)| p.0),
        column: position.map(|p| p.1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_filter_is_told_with_its_position_and_reading_creates_nothing() {
        let dir = std::env::temp_dir().join(format!("tidepool-consumers-{}", std::process::id()));
        let store = ConsumerStore::at(&dir);
        let check = store
            .check_filter("record.total > ", &["public/orders".into()], &[])
            .unwrap();
        let problem = check.problem.expect("refused");
        assert!(
            problem.message.starts_with("filter: line 1, column"),
            "{problem:?}"
        );
        assert_eq!(problem.line, Some(1));
        assert!(problem.column.is_some_and(|c| c >= 14), "{problem:?}");
        let ok = store
            .check_filter("record.total > 100", &["public/orders".into()], &[])
            .unwrap();
        assert_eq!(ok.problem, None);
        assert!(ok.preview.is_empty());
        assert_eq!(
            problem_of("filter: 'x' is not known").line,
            None,
            "no position"
        );
        assert!(store.list().unwrap().is_empty());
        let e = store.remove("nope").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound);
        assert!(
            !dir.exists(),
            "listing or checking created {}",
            dir.display()
        );
    }
}
