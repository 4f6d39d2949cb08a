//! A local HTTP/1.1 server that plays Neon's API (there is no internet here), shared by the engine tests
//! and the desktop end-to-end tests (which include this file by path). It records every request —
//! method, path, headers, JSON body — and answers with what the test's handler says, so each test
//! checks the requests the way Neon's API documents them.

use std::sync::{Arc, Mutex};

use serde_json::Value as Json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One request as the stand-in saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    /// `GET`, `POST`, …
    pub method: String,
    /// The path with its query, e.g. `/api/v2/projects`.
    pub path: String,
    /// Every header, in order.
    pub headers: Vec<(String, String)>,
    /// The JSON body, or null.
    pub body: Json,
}

impl Seen {
    /// A header's value (names compared without case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// What the stand-in answers to one request.
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// Extra headers (e.g. `Retry-After`).
    pub headers: Vec<(String, String)>,
    /// JSON body.
    pub body: Json,
}

impl Answer {
    /// A JSON answer without extra headers.
    pub fn json(status: u16, body: Json) -> Answer {
        Answer {
            status,
            headers: vec![],
            body,
        }
    }
}

/// Starts the stand-in on a free loopback port; returns its API base URL (`http://…/api/v2`) and the
/// log of requests. `handler` answers each request (it sees it before it is logged).
pub async fn serve<F>(handler: F) -> (String, Arc<Mutex<Vec<Seen>>>)
where
    F: Fn(&Seen) -> Answer + Send + Sync + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/api/v2", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let handler = Arc::new(handler);
    tokio::spawn(async move {
        loop {
            let Ok((socket, _)) = listener.accept().await else {
                return;
            };
            let log = log.clone();
            let handler = handler.clone();
            tokio::spawn(async move { connection(socket, &*handler, &log).await });
        }
    });
    (base, seen)
}

/// Serves requests on one connection until it closes (reqwest keeps connections alive).
async fn connection<F: Fn(&Seen) -> Answer>(
    mut socket: tokio::net::TcpStream,
    handler: &F,
    log: &Mutex<Vec<Seen>>,
) {
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
        let Some(header_end) = header_end else { return };
        let head = String::from_utf8_lossy(&buffer[..header_end]).into_owned();
        let mut lines = head.split("\r\n");
        let mut request_line = lines.next().unwrap_or("").split(' ');
        let method = request_line.next().unwrap_or("").to_string();
        let path = request_line.next().unwrap_or("").to_string();
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
            match socket.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => body.extend_from_slice(&chunk[..n]),
            }
        }
        let body = if body.is_empty() {
            Json::Null
        } else {
            serde_json::from_slice(&body).unwrap_or(Json::Null)
        };
        let request = Seen {
            method,
            path,
            headers,
            body,
        };
        let answer = handler(&request);
        log.lock().unwrap().push(request);
        let text = answer.body.to_string();
        let mut response = format!(
            "HTTP/1.1 {} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
            answer.status,
            text.len()
        );
        for (name, value) in answer.headers {
            response.push_str(&format!("{name}: {value}\r\n"));
        }
        response.push_str("\r\n");
        response.push_str(&text);
        if socket.write_all(response.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// The project [`backed_by`] plays.
pub const PROJECT: &str = "hidden-cell-763301";
/// Its one branch.
pub const BRANCH: &str = "br-blue-tooth-671580";
/// The endpoint of that branch.
pub const ENDPOINT: &str = "ep-cool-darkness-123456";

/// Neon's API for one project whose branch's compute is a local cluster: creating a role or resetting
/// a password does it on the cluster through `run_sql` (as the superuser), the way Neon does on its
/// computes, so a test can log in with whatever password reached the keychain. Roles it creates join
/// `neon_superuser` (NOLOGIN REPLICATION), as Neon's do. Requests without a bearer key get 401, and
/// the logical-replication PATCH must carry exactly the documented body.
pub async fn backed_by<F>(run_sql: F) -> (String, Arc<Mutex<Vec<Seen>>>)
where
    F: Fn(&str) + Send + Sync + 'static,
{
    backed_by_with_ip_allow(run_sql, Arc::new(Mutex::new(Vec::new()))).await
}

/// [`backed_by`] whose project's IP Allow list (`project.settings.allowed_ips.ips` in
/// `GET /projects/{project_id}`) is `allowed_ips`, which the test may change between requests.
pub async fn backed_by_with_ip_allow<F>(
    run_sql: F,
    allowed_ips: Arc<Mutex<Vec<String>>>,
) -> (String, Arc<Mutex<Vec<Seen>>>)
where
    F: Fn(&str) + Send + Sync + 'static,
{
    use serde_json::json;
    // Tests create it side by side on the shared cluster: one that loses the race to the catalog
    // gets a unique violation rather than duplicate_object.
    run_sql(
        "DO $$ BEGIN CREATE ROLE neon_superuser NOLOGIN REPLICATION; \
         EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$;",
    );
    let passwords = Arc::new(Mutex::new(
        std::collections::HashMap::<String, String>::new(),
    ));
    let known = passwords.clone();
    let running = |id: &str| json!([{"id": id, "action": "apply_config", "status": "running"}]);
    let counter = std::sync::atomic::AtomicU32::new(0);
    let new_password = move || {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        format!("NeonPw{nanos:x}x{n}")
    };
    let quote = |text: &str, mark: char| {
        let doubled = text.replace(mark, &format!("{mark}{mark}"));
        format!("{mark}{doubled}{mark}")
    };
    // Gives `role` a new password on the cluster with `statement` ({role} and {password} filled in,
    // quoted), remembers it for reveal_password, and answers as Neon does: the role with its password
    // and the operation to wait for.
    let set_password = move |role: &str, statement: &str, status: u16, operation: &str| {
        let password = new_password();
        run_sql(
            &statement
                .replace("{role}", &quote(role, '"'))
                .replace("{password}", &quote(&password, '\'')),
        );
        passwords
            .lock()
            .unwrap()
            .insert(role.to_string(), password.clone());
        Answer::json(
            status,
            json!({"role": {"name": role, "password": password}, "operations": running(operation)}),
        )
    };
    serve(move |request| {
        if !request
            .header("authorization")
            .is_some_and(|v| v.starts_with("Bearer ") && v.len() > 7)
        {
            return Answer::json(401, json!({"message": "authentication required"}));
        }
        let path = request.path.strip_prefix("/api/v2/").unwrap_or("");
        let parts: Vec<String> = path
            .split('/')
            .map(|p| percent_encoding::percent_decode_str(p).decode_utf8_lossy().into_owned())
            .collect();
        let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
        match (request.method.as_str(), parts.as_slice()) {
            ("GET", ["projects"]) => Answer::json(
                200,
                json!({"projects": [{"id": PROJECT, "name": "shop", "region_id": "aws-us-east-2"}]}),
            ),
            ("GET", ["projects", PROJECT]) => Answer::json(
                200,
                json!({"project": {
                    "id": PROJECT, "name": "shop", "region_id": "aws-us-east-2",
                    "settings": {
                        "allowed_ips": {
                            "ips": *allowed_ips.lock().unwrap(),
                            "protected_branches_only": false
                        },
                        "enable_logical_replication": true
                    }
                }}),
            ),
            ("GET", ["projects", PROJECT, "branches"]) => Answer::json(
                200,
                json!({"branches": [{"id": BRANCH, "name": "main", "default": true}]}),
            ),
            ("GET", ["projects", PROJECT, "endpoints"]) => Answer::json(
                200,
                json!({"endpoints": [{"id": ENDPOINT, "host": format!("{ENDPOINT}.us-east-2.aws.neon.tech"),
                                      "branch_id": BRANCH, "type": "read_write"}]}),
            ),
            ("PATCH", ["projects", PROJECT])
                if request.body
                    == json!({"project": {"settings": {"enable_logical_replication": true}}}) =>
            {
                Answer::json(
                    200,
                    json!({"project": {"id": PROJECT}, "operations": running("op-config")}),
                )
            }
            ("GET", ["projects", PROJECT, "operations", id]) => Answer::json(
                200,
                json!({"operation": {"id": id, "status": "finished"}}),
            ),
            ("POST", ["projects", PROJECT, "branches", BRANCH, "roles"]) => {
                let Some(role) = request.body["role"]["name"].as_str() else {
                    return Answer::json(400, json!({"message": "role.name is required"}));
                };
                set_password(role, "CREATE ROLE {role} LOGIN PASSWORD {password} IN ROLE neon_superuser;", 201, "op-role")
            }
            ("POST", ["projects", PROJECT, "branches", BRANCH, "roles", role, "reset_password"]) => {
                set_password(role, "ALTER ROLE {role} PASSWORD {password};", 200, "op-reset")
            }
            ("GET", ["projects", PROJECT, "branches", BRANCH, "roles", role, "reveal_password"]) => {
                match known.lock().unwrap().get(*role) {
                    Some(password) => Answer::json(200, json!({"password": password})),
                    None => Answer::json(404, json!({"message": "role not found"})),
                }
            }
            _ => Answer::json(
                404,
                json!({"message": format!("no such resource: {} {}", request.method, request.path)}),
            ),
        }
    })
    .await
}
