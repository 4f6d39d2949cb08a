//! "Try it with a demo database": a throwaway local PostgreSQL (a [`Cluster`] from the system's own
//! binaries) with a small shop schema, a trickle of inserts, updates and deletes, and a saved profile
//! pointing at it, so the whole flow (setup, tables, publish, watch) works with no account anywhere.
//!
//! Invariants:
//! - The demo's password is the cluster's random superuser password; like every profile's, it goes to
//!   the keychain and nowhere else.
//! - Nothing outlives the demo: [`Demo::stop`] (and dropping a [`DemoHost`]) stops the trickle, forgets
//!   the profile, its keychain entry and its capture store, and removes the cluster. The cluster itself
//!   also goes when the process exits any other way (see [`crate::app::cluster`]).
//! - A demo profile left by a process that died is replaced at the next start, store included: its
//!   checkpoint belongs to a server that no longer exists.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::app::cluster::{Cluster, ClusterOptions};
use crate::app::profile::{PasswordStorage, ProfileDraft, ProfileView, Profiles};
use crate::error::{Error, Result};
use crate::source::tls::SslMode;

/// The name of the profile the demo fills in.
pub const DEMO_PROFILE: &str = "Demo database";

/// The `application_name` that marks a profile as the demo's, so a person's own profile that happens
/// to be called "Demo database" is never taken for it.
pub const DEMO_APPLICATION_NAME: &str = "tidepool-demo";

/// The demo's database.
pub const DEMO_DATABASE: &str = "demo";

/// The sample schema: three keyed tables that change and one keyless log.
const SCHEMA: &str = "
CREATE SCHEMA shop;
CREATE TABLE shop.customers (
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  name text NOT NULL,
  email text NOT NULL UNIQUE,
  created_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE shop.products (
  sku text PRIMARY KEY,
  title text NOT NULL,
  price numeric(10,2) NOT NULL,
  stock int NOT NULL,
  tags text[] NOT NULL DEFAULT '{}');
CREATE TABLE shop.orders (
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  customer_id bigint NOT NULL REFERENCES shop.customers,
  sku text NOT NULL REFERENCES shop.products,
  quantity int NOT NULL,
  status text NOT NULL DEFAULT 'placed',
  details jsonb,
  placed_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE shop.page_views (
  path text NOT NULL,
  viewed_at timestamptz NOT NULL DEFAULT now());
INSERT INTO shop.customers (name, email)
  SELECT 'Customer ' || g, 'customer' || g || '@example.com' FROM generate_series(1, 50) g;
INSERT INTO shop.products (sku, title, price, stock, tags)
  SELECT 'SKU-' || lpad(g::text, 3, '0'), 'Product ' || g, (g * 3.5)::numeric(10,2), 100 + g,
         ARRAY[(ARRAY['red','green','blue'])[1 + g % 3]]
    FROM generate_series(1, 20) g;
INSERT INTO shop.orders (customer_id, sku, quantity, status, details)
  SELECT 1 + g % 50, 'SKU-' || lpad((1 + g % 20)::text, 3, '0'), 1 + g % 4,
         (ARRAY['placed','shipped','delivered'])[1 + g % 3],
         jsonb_build_object('channel', (ARRAY['web','app','store'])[1 + g % 3])
    FROM generate_series(1, 200) g;
";

/// One tick of the trickle: a new order, an order moving on, a stock change, a page view, and now and
/// then a delivered order deleted.
const TICK: &str = "
INSERT INTO shop.orders (customer_id, sku, quantity, details)
  SELECT (SELECT id FROM shop.customers ORDER BY random() LIMIT 1),
         (SELECT sku FROM shop.products ORDER BY random() LIMIT 1),
         1 + floor(random() * 4)::int,
         jsonb_build_object('channel', (ARRAY['web','app','store'])[1 + floor(random() * 3)::int]);
UPDATE shop.orders SET status = CASE status WHEN 'placed' THEN 'shipped' ELSE 'delivered' END
  WHERE id = (SELECT id FROM shop.orders WHERE status IN ('placed', 'shipped') ORDER BY random() LIMIT 1);
UPDATE shop.products SET stock = greatest(stock - 1, 0)
  WHERE sku = (SELECT sku FROM shop.products ORDER BY random() LIMIT 1);
INSERT INTO shop.page_views (path)
  SELECT '/products/SKU-' || lpad((1 + floor(random() * 20))::int::text, 3, '0');
DELETE FROM shop.orders
  WHERE random() < 0.3
    AND id = (SELECT id FROM shop.orders WHERE status = 'delivered' ORDER BY id LIMIT 1);
";

/// A running demo: the cluster, the trickle and the profile it filled in.
pub struct Demo {
    cluster: Cluster,
    profile_id: String,
    stop: Arc<AtomicBool>,
    trickle: Option<JoinHandle<()>>,
}

impl Demo {
    /// Starts a cluster, loads the sample schema, saves the demo profile (password in the keychain) and
    /// starts writing every `interval`. Blocks for the few seconds `initdb` and start-up take.
    pub fn start(profiles: &Profiles, interval: Duration) -> Result<(Demo, ProfileView)> {
        forget_profile(profiles)?;
        // A demo's slot gets the limit Monitor asks every server to have, so its WAL can never
        // fill the user's disk while the demo is paused.
        let cluster = Cluster::start(ClusterOptions {
            settings: vec![("max_slot_wal_keep_size".into(), "'1GB'".into())],
            ..ClusterOptions::default()
        })
        .map_err(|e| e.context("starting the demo database"))?;
        cluster.psql("postgres", &format!("CREATE DATABASE {DEMO_DATABASE};"))?;
        cluster.psql(DEMO_DATABASE, SCHEMA)?;
        let draft = ProfileDraft {
            name: DEMO_PROFILE.into(),
            address: format!("127.0.0.1:{}", cluster.port()),
            user: "postgres".into(),
            database: DEMO_DATABASE.into(),
            sslmode: SslMode::Disable,
            sslrootcert: None,
            options: None,
            channel_binding: Default::default(),
            publication: None,
            slot: None,
            application_name: Some(DEMO_APPLICATION_NAME.into()),
            password_storage: PasswordStorage::Keychain,
            encrypt_store: None,
            ..ProfileDraft::default()
        };
        let view = profiles.save(None, draft, Some(cluster.superuser_password().clone()))?;
        let stop = Arc::new(AtomicBool::new(false));
        let trickle = {
            let spec = cluster.spec(DEMO_DATABASE);
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("demo-trickle".into())
                .spawn(move || trickle(spec, interval, stop))
                .map_err(|e| Error::internal(format!("starting the demo's writes: {e}")))?
        };
        tracing::info!(port = cluster.port(), "demo database started");
        Ok((
            Demo {
                cluster,
                profile_id: view.profile.id.clone(),
                stop,
                trickle: Some(trickle),
            },
            view,
        ))
    }

    /// The demo profile's id.
    pub fn profile_id(&self) -> &str {
        &self.profile_id
    }

    /// The cluster (its port, `psql` for tests).
    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// Stops the writes, forgets the profile (keychain entry and capture store too) and removes the
    /// cluster. The caller stops the profile's capture first.
    pub fn stop(mut self, profiles: &Profiles) -> Result<Option<crate::app::profile::Removed>> {
        self.halt_trickle();
        let forgotten = forget_profile(profiles);
        self.cluster.stop();
        tracing::info!("demo database removed");
        forgotten
    }

    fn halt_trickle(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(handle) = self.trickle.take() {
            let _ = handle.join();
        }
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        self.halt_trickle();
    }
}

/// Removes a demo profile, its keychain entry and its store, if there is one. A profile of the same
/// name that is not the demo's is left alone, and the demo refuses to start over it.
fn forget_profile(profiles: &Profiles) -> Result<Option<crate::app::profile::Removed>> {
    let Some(found) = profiles
        .list()?
        .into_iter()
        .find(|v| v.profile.name == DEMO_PROFILE)
    else {
        return Ok(None);
    };
    if found.profile.application_name != DEMO_APPLICATION_NAME {
        return Err(Error::invalid_input(
            "name",
            format!("a profile named '{DEMO_PROFILE}' exists and is not the demo's: rename it to try the demo"),
        ));
    }
    profiles.delete(&found.profile.id).map(Some)
}

/// Writes one tick every `interval` until told to stop. A failed tick is logged and the next one tried:
/// the demo's writes are a convenience, not something to stop the app for.
fn trickle(
    spec: crate::source::connection::ConnectionSpec,
    interval: Duration,
    stop: Arc<AtomicBool>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::warn!(error = %e, "the demo's writes could not start");
            return;
        }
    };
    runtime.block_on(async move {
        let mut client = None;
        while !stop.load(Ordering::Relaxed) {
            if client.is_none() {
                client = crate::source::connection::connect(&spec).await.ok();
            }
            if let Some(c) = &client {
                if let Err(e) = c.batch_execute(TICK).await {
                    tracing::warn!(error = %e, "a demo write failed");
                    client = None;
                }
            }
            // Sleep in short steps so a stop is noticed quickly.
            let mut slept = Duration::ZERO;
            while slept < interval && !stop.load(Ordering::Relaxed) {
                let step = Duration::from_millis(50).min(interval - slept);
                tokio::time::sleep(step).await;
                slept += step;
            }
        }
    });
}

/// The desktop app's demo slot: at most one demo at a time, removed when the host is dropped.
#[derive(Default)]
pub struct DemoHost {
    demo: Mutex<Option<Demo>>,
}

impl DemoHost {
    /// Starts the demo (a second call while one runs returns the running one's profile).
    pub fn start(&self, profiles: &Profiles, interval: Duration) -> Result<ProfileView> {
        let mut slot = self.demo.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(demo) = slot.as_ref() {
            return profiles
                .list()?
                .into_iter()
                .find(|v| v.profile.id == demo.profile_id)
                .ok_or_else(|| Error::internal("the demo's profile is gone"));
        }
        let (demo, view) = Demo::start(profiles, interval)?;
        *slot = Some(demo);
        Ok(view)
    }

    /// The running demo's profile id.
    pub fn profile_id(&self) -> Option<String> {
        let slot = self.demo.lock().unwrap_or_else(|p| p.into_inner());
        slot.as_ref().map(|d| d.profile_id.clone())
    }

    /// Stops the demo profile's capture, then removes the running demo, if any.
    pub fn stop(
        &self,
        profiles: &Profiles,
        runs: &crate::app::run::Runs,
    ) -> Result<Option<crate::app::profile::Removed>> {
        let demo = self.demo.lock().unwrap_or_else(|p| p.into_inner()).take();
        match demo {
            Some(demo) => {
                runs.stop(&demo.profile_id, profiles)?;
                demo.stop(profiles)
            }
            None => Ok(None),
        }
    }
}
