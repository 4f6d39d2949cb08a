//! The Neon API client against a local server that plays Neon's API (there is no internet here): it
//! checks the method, path, headers and JSON body of every request and answers as Neon documents,
//! including its error statuses.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value as Json};
use tidepool::secrets::Secret;
use tidepool::source::neon::Client;
use tidepool::ErrorKind;

use crate::neon_api::{serve, Answer, Seen, BRANCH, PROJECT};

/// Answers: (status, extra headers, body) per request, in order.
type Script = Vec<(u16, Vec<(&'static str, &'static str)>, Json)>;

/// A stand-in that answers `script` in order and records what it was sent.
async fn stand_in(script: Script) -> (String, Arc<Mutex<Vec<Seen>>>) {
    let script = Mutex::new(script.into_iter());
    serve(move |_| {
        let (status, extra, body) = script.lock().unwrap().next().unwrap_or((
            500,
            vec![],
            json!({"message": "the stand-in ran out of answers"}),
        ));
        Answer {
            status,
            headers: extra
                .into_iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
            body,
        }
    })
    .await
}

fn client(base: &str) -> Client {
    let mut client = Client::new(base, Secret::new("napi_test_key")).unwrap();
    client.retry_pause = Duration::from_millis(10);
    client
}

#[tokio::test]
async fn lists_projects_branches_and_endpoints_with_the_key_as_bearer() {
    let (base, seen) = stand_in(vec![
        (200, vec![], json!({"projects": [{"id": "hidden-cell-763301", "name": "shop", "region_id": "aws-us-east-2"}], "pagination": {}})),
        (200, vec![], json!({"branches": [{"id": "br-blue-tooth-671580", "name": "main", "default": true}]})),
        (200, vec![], json!({"endpoints": [{"id": "ep-cool-darkness-123456", "host": "ep-cool-darkness-123456.us-east-2.aws.neon.tech", "branch_id": "br-blue-tooth-671580", "type": "read_write"}]})),
    ])
    .await;
    let neon = client(&base);
    let projects = neon.projects().await.unwrap();
    assert_eq!(projects[0].id, "hidden-cell-763301");
    assert_eq!(projects[0].region_id, "aws-us-east-2");
    let branches = neon.branches("hidden-cell-763301").await.unwrap();
    assert!(branches[0].default);
    let endpoints = neon.endpoints("hidden-cell-763301").await.unwrap();
    assert_eq!(
        endpoints[0].host,
        "ep-cool-darkness-123456.us-east-2.aws.neon.tech"
    );
    let seen = seen.lock().unwrap().clone();
    let paths: Vec<(&str, &str)> = seen
        .iter()
        .map(|s| (s.method.as_str(), s.path.as_str()))
        .collect();
    assert_eq!(
        paths,
        vec![
            ("GET", "/api/v2/projects"),
            ("GET", "/api/v2/projects/hidden-cell-763301/branches"),
            ("GET", "/api/v2/projects/hidden-cell-763301/endpoints"),
        ]
    );
    for s in &seen {
        assert_eq!(s.header("authorization"), Some("Bearer napi_test_key"));
        assert_eq!(s.header("accept"), Some("application/json"));
    }
}

#[tokio::test]
async fn enabling_logical_replication_patches_the_project_and_waits_for_its_operations() {
    let (base, seen) = stand_in(vec![
        // 423: the project is busy; Neon's docs say retry.
        (423, vec![], json!({"code": "", "message": "project already has running operations"})),
        (200, vec![], json!({"project": {"id": "p1"}, "operations": [{"id": "op-1", "action": "apply_config", "status": "running"}]})),
        (200, vec![], json!({"operation": {"id": "op-1", "status": "running"}})),
        (200, vec![], json!({"operation": {"id": "op-1", "status": "finished"}})),
    ])
    .await;
    client(&base)
        .enable_logical_replication("p1")
        .await
        .unwrap();
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 4);
    for patch in &seen[..2] {
        assert_eq!(
            (patch.method.as_str(), patch.path.as_str()),
            ("PATCH", "/api/v2/projects/p1")
        );
        assert_eq!(patch.header("content-type"), Some("application/json"));
        assert_eq!(
            patch.body,
            json!({"project": {"settings": {"enable_logical_replication": true}}})
        );
    }
    assert_eq!(seen[3].path, "/api/v2/projects/p1/operations/op-1");
}

#[tokio::test]
async fn roles_are_created_revealed_and_reset_with_their_passwords_returned_as_secrets() {
    let (base, seen) = stand_in(vec![
        (201, vec![], json!({"role": {"name": "cdc role", "password": "AbC123dEf"}, "operations": [{"id": "op-2", "status": "finished"}]})),
        (200, vec![], json!({"password": "AbC123dEf"})),
        (200, vec![], json!({"role": {"name": "cdc role", "password": "NeW456"}, "operations": []})),
    ])
    .await;
    let neon = client(&base);
    let created = neon.create_role("p1", "br-1", "cdc role").await.unwrap();
    assert_eq!(created.expose(), "AbC123dEf");
    assert!(
        !format!("{created:?}").contains("AbC123dEf"),
        "a password in Debug output"
    );
    assert_eq!(
        neon.reveal_password("p1", "br-1", "cdc role")
            .await
            .unwrap()
            .expose(),
        "AbC123dEf"
    );
    assert_eq!(
        neon.reset_password("p1", "br-1", "cdc role")
            .await
            .unwrap()
            .expose(),
        "NeW456"
    );
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        (seen[0].method.as_str(), seen[0].path.as_str()),
        ("POST", "/api/v2/projects/p1/branches/br-1/roles")
    );
    assert_eq!(seen[0].body, json!({"role": {"name": "cdc role"}}));
    assert_eq!(
        seen[1].path,
        "/api/v2/projects/p1/branches/br-1/roles/cdc%20role/reveal_password"
    );
    assert_eq!(
        (seen[2].method.as_str(), seen[2].path.as_str()),
        (
            "POST",
            "/api/v2/projects/p1/branches/br-1/roles/cdc%20role/reset_password"
        )
    );
}

#[tokio::test]
async fn neon_errors_become_clear_messages_and_only_safe_requests_are_retried() {
    let (base, seen) = stand_in(vec![
        (
            401,
            vec![],
            json!({"code": "", "message": "authentication required"}),
        ),
        (
            404,
            vec![],
            json!({"code": "", "message": "project not found"}),
        ),
        (
            409,
            vec![],
            json!({"code": "", "message": "role already exists"}),
        ),
        (
            429,
            vec![("Retry-After", "0")],
            json!({"message": "too many requests"}),
        ),
        (200, vec![], json!({"projects": []})),
        // A 5xx on a write is not repeated: it may have been applied.
        (503, vec![], json!({"message": "unavailable"})),
        // A 5xx on a read is.
        (502, vec![], json!({"message": "bad gateway"})),
        (200, vec![], json!({"branches": []})),
    ])
    .await;
    let neon = client(&base);
    let e = neon.projects().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Authentication);
    assert!(
        e.message().contains("401") && e.message().contains("API key"),
        "{e}"
    );
    assert!(
        !e.message().contains("napi_test_key"),
        "the key leaked: {e}"
    );
    let e = neon.branches("nope").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    assert!(e.message().contains("project not found"), "{e}");
    let e = neon.create_role("p1", "br-1", "cdc").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    assert!(e.message().contains("role already exists"), "{e}");
    assert!(neon.projects().await.unwrap().is_empty(), "429 then 200");
    let e = neon.enable_logical_replication("p1").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Connection);
    assert!(
        neon.branches("p1").await.unwrap().is_empty(),
        "502 then 200"
    );
    assert_eq!(seen.lock().unwrap().len(), 8);
}

/// The Neon API key is one keychain entry: tests that store it take turns.
pub(crate) static NEON_KEY: Mutex<()> = Mutex::new(());

#[tokio::test]
async fn locating_a_host_finds_its_project_and_branch_through_the_endpoints() {
    let (base, seen) = serve(|request| match request.path.as_str() {
        "/api/v2/projects" => Answer::json(
            200,
            json!({"projects": [{"id": "p-one", "name": "a"}, {"id": "p-two", "name": "b"}]}),
        ),
        "/api/v2/projects/p-one/endpoints" => Answer::json(
            200,
            json!({"endpoints": [{"id": "ep-other-1", "host": "ep-other-1.eu-central-1.aws.neon.tech", "branch_id": "br-x"}]}),
        ),
        "/api/v2/projects/p-two/endpoints" => Answer::json(
            200,
            json!({"endpoints": [{"id": "ep-cool-darkness-123456", "host": "ep-cool-darkness-123456.us-east-2.aws.neon.tech", "branch_id": "br-dev"}]}),
        ),
        _ => Answer::json(404, json!({"message": "not found"})),
    })
    .await;
    let neon = client(&base);
    assert_eq!(
        neon.locate("ep-cool-darkness-123456-pooler.us-east-2.aws.neon.tech")
            .await
            .unwrap(),
        Some(tidepool::source::neon::Link {
            project_id: "p-two".into(),
            branch_id: "br-dev".into()
        })
    );
    assert_eq!(neon.locate("db.example.com").await.unwrap(), None);
    assert_eq!(
        neon.locate("ep-gone-1.us-east-2.aws.neon.tech")
            .await
            .unwrap(),
        None
    );
    // A host that names no endpoint costs no request.
    assert_eq!(seen.lock().unwrap().len(), 6);
}

#[tokio::test]
#[allow(clippy::await_holding_lock)] // one keychain entry: tests take turns, each on its own runtime
async fn a_linked_profile_runs_neon_fixes_and_keeps_returned_passwords_in_the_keychain() {
    use tidepool::app::profile::{ProfileDraft, Profiles};
    use tidepool::secrets::{Keychain, SecretKey};
    use tidepool::source::preflight::Status;
    let db: &'static _ = Box::leak(Box::new(crate::harness::TestDb::new(
        crate::harness::plain(),
        "neon_fix",
    )));
    let app = db.role("neon_app", "", "old-password");
    let (base, seen) = crate::neon_api::backed_by(move |sql| {
        db.sql(sql);
    })
    .await;
    let dir = crate::harness::temp_dir("neon_profiles");
    let profiles = Profiles::open(&dir).with_neon_api(&base);
    let draft = ProfileDraft {
        name: "Shop".into(),
        address: format!("127.0.0.1:{}", db.cluster.port()),
        user: app.user.clone(),
        database: db.name.clone(),
        sslmode: tidepool::source::tls::SslMode::Disable,
        ..Default::default()
    };
    let shop = profiles
        .save(None, draft.clone(), Some(Secret::new("old-password")))
        .unwrap()
        .profile;
    let link = tidepool::source::neon::Link {
        project_id: PROJECT.into(),
        branch_id: BRANCH.into(),
    };
    let linked = profiles.link_neon("Shop", Some(link.clone())).unwrap();
    assert_eq!(linked.profile.neon, Some(link.clone()));
    // Editing the connection keeps the link.
    profiles.save(Some(&shop.id), draft, None).unwrap();
    assert_eq!(profiles.get("Shop").unwrap().neon, Some(link.clone()));

    let _key = NEON_KEY.lock().unwrap_or_else(|e| e.into_inner());
    Keychain::open()
        .unwrap()
        .set_neon_api_key(&Secret::new("napi_profile_key"))
        .unwrap();

    // The role was made with SQL: on a Neon-linked profile the fix is a role made through the API.
    let checks = profiles.preflight("Shop", None).await.unwrap();
    let replication = checks.iter().find(|c| c.id == "replication").unwrap();
    assert_eq!(replication.status, Status::Fail);
    let fix = replication.fix.clone().expect("a Neon fix");
    assert_eq!(
        fix.preview,
        vec![format!(
            r#"POST /api/v2/projects/{PROJECT}/branches/{BRANCH}/roles {{"role":{{"name":"tidepool_cdc"}}}}"#
        )]
    );
    profiles.run_fix("Shop", fix.action).await.unwrap();
    // Its password went from Neon's answer to the keychain, with a new profile linked like this one.
    let created = profiles.get("Shop (tidepool_cdc)").unwrap();
    assert_eq!(created.user, "tidepool_cdc");
    assert_eq!(created.neon, Some(link.clone()));
    let checks = profiles
        .preflight("Shop (tidepool_cdc)", None)
        .await
        .unwrap();
    let replication = checks.iter().find(|c| c.id == "replication").unwrap();
    assert_eq!(
        replication.status,
        Status::Pass,
        "{}",
        replication.explanation
    );

    // Reset: the new password replaces the profile's in the keychain, and logging in works with it.
    let reset = tidepool::source::setup::Action::NeonResetPassword {
        project_id: link.project_id.clone(),
        branch_id: link.branch_id.clone(),
        role: app.user.clone(),
    };
    profiles.run_fix("Shop", reset).await.unwrap();
    let stored = Keychain::open()
        .unwrap()
        .get(&SecretKey::ProfilePassword(shop.id.clone()))
        .unwrap()
        .unwrap();
    assert!(stored.expose().starts_with("NeonPw"));
    assert!(profiles.test("Shop", None).await.is_ok());
    let mut old = app.clone();
    old.password = Some(Secret::new("old-password"));
    assert!(tidepool::source::connection::connect(&old).await.is_err());
    assert!(
        crate::profiles::files_containing(&dir, stored.expose()).is_empty(),
        "a password reached a file"
    );

    // The command line uses the profile's link too, and --dry-run sends nothing.
    let before = seen.lock().unwrap().len();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tidepool"))
        .env("TIDEPOOL_DATA_DIR", &dir)
        .args([
            "setup",
            "--profile",
            "Shop",
            "--dry-run",
            "neon-reset-password",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!(
            "POST /api/v2/projects/{PROJECT}/branches/{BRANCH}/roles/{}/reset_password",
            app.user
        )
    );
    assert_eq!(seen.lock().unwrap().len(), before);

    // Only the profile's own role's password is kept.
    let other = tidepool::source::setup::Action::NeonRevealPassword {
        project_id: link.project_id.clone(),
        branch_id: link.branch_id.clone(),
        role: "someone_else".into(),
    };
    let e = profiles.run_fix("Shop", other).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    assert!(e.message().starts_with("role:"), "{e}");

    Keychain::open().unwrap().remove_neon_api_key().unwrap();
    let seen = seen.lock().unwrap().clone();
    let requests: Vec<String> = seen
        .iter()
        .map(|s| format!("{} {}", s.method, s.path))
        .collect();
    assert_eq!(
        requests,
        vec![
            // Each preflight of a linked profile reads the project's IP Allow settings.
            format!("GET /api/v2/projects/{PROJECT}"),
            format!("POST /api/v2/projects/{PROJECT}/branches/{BRANCH}/roles"),
            format!("GET /api/v2/projects/{PROJECT}/operations/op-role"),
            format!("GET /api/v2/projects/{PROJECT}"),
            format!(
                "POST /api/v2/projects/{PROJECT}/branches/{BRANCH}/roles/{}/reset_password",
                app.user
            ),
            format!("GET /api/v2/projects/{PROJECT}/operations/op-reset"),
        ]
    );
    assert!(seen
        .iter()
        .all(|s| s.header("authorization") == Some("Bearer napi_profile_key")));
    for p in profiles.list().unwrap() {
        profiles.delete(&p.profile.id).unwrap();
    }
}

#[tokio::test]
#[allow(clippy::await_holding_lock)] // one keychain entry: tests take turns, each on its own runtime
async fn a_linked_profile_s_preflight_warns_about_neon_ip_allow_with_the_list() {
    use tidepool::app::profile::{ProfileDraft, Profiles};
    use tidepool::secrets::Keychain;
    use tidepool::source::preflight::Status;
    let db: &'static _ = Box::leak(Box::new(crate::harness::TestDb::new(
        crate::harness::plain(),
        "neon_ip_allow",
    )));
    let app = db.role("neon_ip_app", "", "ip-allow-password");
    let allowed = Arc::new(Mutex::new(vec![
        "203.0.113.0/24".to_string(),
        "198.51.100.7".to_string(),
        "192.0.2.10-192.0.2.20".to_string(),
    ]));
    let (base, seen) = crate::neon_api::backed_by_with_ip_allow(
        move |sql| {
            db.sql(sql);
        },
        allowed.clone(),
    )
    .await;
    let dir = crate::harness::temp_dir("neon_ip_allow_profiles");
    let profiles = Profiles::open(&dir).with_neon_api(&base);
    let draft = ProfileDraft {
        name: "Allow".into(),
        address: format!("127.0.0.1:{}", db.cluster.port()),
        user: app.user.clone(),
        database: db.name.clone(),
        sslmode: tidepool::source::tls::SslMode::Disable,
        ..Default::default()
    };
    profiles
        .save(None, draft, Some(Secret::new("ip-allow-password")))
        .unwrap();

    // Not linked: no IP Allow check and no request.
    let checks = profiles.preflight("Allow", None).await.unwrap();
    assert!(checks.iter().all(|c| c.id != "neon_ip_allow"));
    assert!(seen.lock().unwrap().is_empty());

    profiles
        .link_neon(
            "Allow",
            Some(tidepool::source::neon::Link {
                project_id: PROJECT.into(),
                branch_id: BRANCH.into(),
            }),
        )
        .unwrap();
    let _key = NEON_KEY.lock().unwrap_or_else(|e| e.into_inner());
    Keychain::open()
        .unwrap()
        .set_neon_api_key(&Secret::new("napi_ip_allow_key"))
        .unwrap();

    // A non-empty list: a warning that shows the list and says what to add.
    let checks = profiles.preflight("Allow", None).await.unwrap();
    let ip = checks.iter().find(|c| c.id == "neon_ip_allow").unwrap();
    assert_eq!(ip.status, Status::Warn, "{}", ip.explanation);
    assert!(
        ip.explanation.contains(&format!(
            "Neon project {PROJECT} restricts connections to these addresses (IP Allow): \
             203.0.113.0/24, 198.51.100.7, 192.0.2.10-192.0.2.20"
        )) && ip
            .explanation
            .contains("add the public address Tidepool connects from to the list"),
        "{}",
        ip.explanation
    );
    assert!(ip.fix.is_none());
    // The check is in the JSON the Setup tab renders like every other check.
    let json = serde_json::to_value(ip).unwrap();
    assert_eq!(json["status"], "warn");
    assert_eq!(json["title"], "Neon IP Allow");

    // An empty list: the check passes.
    allowed.lock().unwrap().clear();
    let checks = profiles.preflight("Allow", None).await.unwrap();
    let ip = checks.iter().find(|c| c.id == "neon_ip_allow").unwrap();
    assert_eq!(ip.status, Status::Pass, "{}", ip.explanation);
    assert!(ip.explanation.contains("IP Allow list is empty"));

    // Without an API key the list is unknown: a warning that says why, and the rest still runs.
    Keychain::open().unwrap().remove_neon_api_key().unwrap();
    let checks = profiles.preflight("Allow", None).await.unwrap();
    let ip = checks.iter().find(|c| c.id == "neon_ip_allow").unwrap();
    assert_eq!(ip.status, Status::Warn);
    assert!(
        ip.explanation
            .contains("Could not read the IP Allow settings")
            && ip.explanation.contains("no Neon API key is stored"),
        "{}",
        ip.explanation
    );
    assert!(checks.iter().any(|c| c.id == "wal_level"));

    let seen = seen.lock().unwrap().clone();
    let requests: Vec<String> = seen
        .iter()
        .map(|s| format!("{} {}", s.method, s.path))
        .collect();
    assert_eq!(
        requests,
        vec![format!("GET /api/v2/projects/{PROJECT}"); 2],
        "one documented GET per preflight with a key"
    );
    assert!(seen
        .iter()
        .all(|s| s.header("authorization") == Some("Bearer napi_ip_allow_key")));
    for p in profiles.list().unwrap() {
        profiles.delete(&p.profile.id).unwrap();
    }
}
