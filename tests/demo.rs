//! "Try it with a demo database": a throwaway cluster with the sample schema and a trickle of writes,
//! a saved profile whose password is in the keychain, a capture that sees the trickle, and nothing
//! left behind once it stops.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tidepool::app::demo::{Demo, DEMO_PROFILE};
use tidepool::app::preview::{self, PageRequest, View};
use tidepool::app::profile::{Profiles, SecretState};
use tidepool::app::run::{RunState, RunStatus, Runs};
use tidepool::binding::Binding;

use crate::harness::{self, until};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_database_captures_its_trickle_and_leaves_nothing_behind() {
    let dir = harness::temp_dir("demo_profiles");
    let profiles = Profiles::open(&dir);
    let (demo, view) = Demo::start(&profiles, Duration::from_millis(100)).unwrap();
    assert_eq!(view.profile.name, DEMO_PROFILE);
    assert_eq!(view.secret, SecretState::InKeychain);
    let cluster_root = demo.cluster().root().to_path_buf();
    assert!(cluster_root.exists());
    // The demo's rows and server log are the user's alone, like a store.
    let mode = |p: &std::path::Path| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    };
    assert_eq!(mode(&cluster_root), 0o700);
    assert_eq!(mode(&cluster_root.join("server.log")), 0o600);

    // The profile connects with the password from the keychain and sees the sample schema.
    let tables = profiles.discover(DEMO_PROFILE).await.unwrap();
    let names: Vec<String> = tables
        .iter()
        .map(|t| format!("{}.{}", t.schema, t.table))
        .collect();
    for expected in [
        "shop.customers",
        "shop.orders",
        "shop.page_views",
        "shop.products",
    ] {
        assert!(names.contains(&expected.to_string()), "{names:?}");
    }

    // Publish two tables (one keyless) and capture: the backfill, then the trickle's changes.
    let id = view.profile.id.clone();
    profiles
        .publish(
            &id,
            vec![
                Binding::new("shop", "orders"),
                Binding::new("shop", "products"),
            ],
            vec![],
        )
        .await
        .unwrap();
    let runs = Runs::default();
    let seen: Arc<Mutex<Option<RunStatus>>> = Arc::default();
    let last = seen.clone();
    runs.start(
        &profiles,
        &id,
        Arc::new(move |s: &RunStatus| *last.lock().unwrap() = Some(s.clone())),
    )
    .await
    .unwrap();
    until("the backfill and some streamed changes", || {
        seen.lock().unwrap().as_ref().is_some_and(|s| {
            s.state == RunState::Streaming && s.backfills.values().all(|b| b.done) && s.changes > 20
        })
    })
    .await;
    let changes = preview::page(
        &profiles,
        &id,
        "shop/orders",
        &PageRequest::first(View::Changes, 500),
    )
    .unwrap();
    let ops: Vec<&str> = changes
        .documents
        .iter()
        .map(|d| d["_meta"]["op"].as_str().unwrap())
        .collect();
    assert!(ops.contains(&"c") && ops.contains(&"u"), "{ops:?}");
    let rows = preview::page(
        &profiles,
        &id,
        "shop/products",
        &PageRequest::first(View::Rows, 100),
    )
    .unwrap();
    assert_eq!(rows.documents.len(), 20);
    runs.stop(&id, &profiles).unwrap();

    // Stopping removes the cluster, the profile, its keychain entry and its store.
    let store = profiles.store_dir(&id).unwrap();
    assert!(store.exists());
    demo.stop(&profiles).unwrap();
    assert!(!cluster_root.exists(), "the cluster's folder is left");
    assert!(!store.exists(), "the demo's store is left");
    assert!(profiles.list().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_demo_profile_left_by_a_dead_process_is_replaced() {
    let dir = harness::temp_dir("demo_leftover");
    let profiles = Profiles::open(&dir);
    let (first, _) = Demo::start(&profiles, Duration::from_secs(3600)).unwrap();
    let old_port = first.cluster().port();
    // As if the process had died: the cluster goes, the profile stays (only `stop` forgets it).
    drop(first);
    let (second, view) = Demo::start(&profiles, Duration::from_secs(3600)).unwrap();
    let listed = profiles.list().unwrap();
    assert_eq!(listed.len(), 1, "one demo profile");
    assert_ne!(second.cluster().port(), old_port);
    assert_eq!(
        view.address,
        format!("127.0.0.1:{}", second.cluster().port())
    );
    profiles.test(DEMO_PROFILE, None).await.unwrap();
    second.stop(&profiles).unwrap();
}

#[tokio::test]
async fn a_persons_own_profile_named_like_the_demo_is_never_taken_for_it() {
    let dir = harness::temp_dir("demo_namesake");
    let profiles = Profiles::open(&dir);
    let mine = profiles
        .save(
            None,
            tidepool::app::profile::ProfileDraft {
                name: DEMO_PROFILE.into(),
                address: "db.example.com:5432".into(),
                user: "me".into(),
                database: "prod".into(),
                password_storage: tidepool::app::profile::PasswordStorage::AskEachTime,
                ..Default::default()
            },
            None,
        )
        .unwrap();
    let Err(e) = Demo::start(&profiles, Duration::from_secs(3600)) else {
        panic!("the demo started over a person's profile");
    };
    assert_eq!(e.kind(), tidepool::ErrorKind::InvalidInput);
    assert!(e.message().contains("rename it"), "{e}");
    let listed = profiles.list().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].profile.id, mine.profile.id);
    assert_eq!(listed[0].address, "db.example.com:5432");
}
