//! The Neon API client against a local server that plays Neon's API (there is no internet here): it
//! checks the method, path, headers and JSON body of every request and answers as Neon documents,
//! including its error statuses.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value as Json};
use tidepool::neon::Client;
use tidepool::secrets::Secret;
use tidepool::ErrorKind;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One request as the stand-in saw it.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Json,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Answers: (status, extra headers, body) per request, in order.
type Script = Vec<(u16, Vec<(&'static str, &'static str)>, Json)>;

/// A one-connection-at-a-time HTTP/1.1 stand-in for Neon's API that records what it was sent.
async fn stand_in(script: Script) -> (String, Arc<Mutex<Vec<Seen>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/api/v2", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        let mut script = script.into_iter();
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            // Serve requests on this connection until it closes (reqwest keeps it alive).
            loop {
                let mut buffer = Vec::new();
                let mut chunk = [0u8; 4096];
                let header_end = loop {
                    if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                        break Some(end);
                    }
                    match socket.read(&mut chunk).await {
                        Ok(0) | Err(_) => break None,
                        Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                    }
                };
                let Some(header_end) = header_end else { break };
                let head = String::from_utf8_lossy(&buffer[..header_end]).into_owned();
                let mut lines = head.split("\r\n");
                let mut request_line = lines.next().unwrap().split(' ');
                let method = request_line.next().unwrap().to_string();
                let path = request_line.next().unwrap().to_string();
                let headers: Vec<(String, String)> = lines
                    .filter_map(|l| l.split_once(':'))
                    .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
                    .collect();
                let length: usize = headers
                    .iter()
                    .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
                    .and_then(|(_, v)| v.parse().ok())
                    .unwrap_or(0);
                let mut body = buffer[header_end + 4..].to_vec();
                while body.len() < length {
                    let n = socket.read(&mut chunk).await.unwrap();
                    body.extend_from_slice(&chunk[..n]);
                }
                let body = if body.is_empty() {
                    Json::Null
                } else {
                    serde_json::from_slice(&body).unwrap()
                };
                log.lock().unwrap().push(Seen {
                    method,
                    path,
                    headers,
                    body,
                });
                let (status, extra, answer) = script.next().unwrap_or((
                    500,
                    vec![],
                    json!({"message": "the stand-in ran out of answers"}),
                ));
                let text = answer.to_string();
                let mut response = format!(
                    "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
                    text.len()
                );
                for (name, value) in extra {
                    response.push_str(&format!("{name}: {value}\r\n"));
                }
                response.push_str("\r\n");
                response.push_str(&text);
                if socket.write_all(response.as_bytes()).await.is_err() {
                    break;
                }
            }
        }
    });
    (base, seen)
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
