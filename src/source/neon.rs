//! The Neon API client (v2): projects, branches and endpoints to link a profile to; turning on logical
//! replication; creating a role and revealing or resetting its password; waiting for the operations a
//! call starts.
//!
//! Invariants:
//! - The API key comes from the keychain as a [`Secret`] and is sent only in the Authorization header;
//!   it never reaches an error message or a log line (reqwest's errors carry the URL, never headers).
//! - Passwords Neon returns are handed back as [`Secret`]s for the caller to put in the keychain.
//! - Retries follow Neon's documentation: 423 (the project has running operations) and 429 (rate
//!   limited) are retried after a pause (Retry-After when given); 5xx only for reads, which are safe to
//!   repeat. Everything else becomes an [`Error`] with a kind and a message that says what to do.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value as Json};

use crate::error::{Error, ErrorKind, Result};
use crate::secrets::Secret;

/// Neon's public API.
pub const DEFAULT_BASE_URL: &str = "https://console.neon.tech/api/v2";

/// A Neon project.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ts_rs::TS)]
#[serde(rename_all = "camelCase")]
#[ts(rename = "NeonProject")]
pub struct Project {
    /// e.g. `hidden-cell-763301`.
    pub id: String,
    /// Display name.
    pub name: String,
    /// e.g. `aws-us-east-2`.
    #[serde(default, alias = "region_id")]
    pub region_id: String,
}

/// A branch of a project.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ts_rs::TS)]
#[serde(rename_all = "camelCase")]
#[ts(rename = "NeonBranch")]
pub struct Branch {
    /// e.g. `br-blue-tooth-671580`.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Whether it is the project's default branch.
    #[serde(default, alias = "default")]
    pub default: bool,
}

/// A compute endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    /// e.g. `ep-cool-darkness-123456`.
    pub id: String,
    /// Its direct host.
    pub host: String,
    /// The branch it serves.
    #[serde(alias = "branch_id")]
    pub branch_id: String,
    /// `read_write` or `read_only`.
    #[serde(default, rename = "type")]
    pub kind: String,
}

/// The Neon project and branch a profile's database lives in: what the Neon fixes act on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ts_rs::TS)]
#[serde(rename_all = "camelCase")]
#[ts(rename = "NeonLink")]
pub struct Link {
    /// The project, e.g. `hidden-cell-763301`.
    pub project_id: String,
    /// The branch, e.g. `br-blue-tooth-671580`.
    pub branch_id: String,
}

/// The endpoint id a Neon host names: its first label without `-pooler`
/// (`ep-cool-darkness-123456-pooler.us-east-2.aws.neon.tech` → `ep-cool-darkness-123456`).
pub fn endpoint_of_host(host: &str) -> Option<String> {
    let first = host.split('.').next()?.to_ascii_lowercase();
    let id = first.strip_suffix("-pooler").unwrap_or(&first);
    id.starts_with("ep-").then(|| id.to_string())
}

/// A project's IP Allow settings (`project.settings.allowed_ips` in `GET /projects/{project_id}`):
/// when `ips` is non-empty, Neon's proxy refuses connections from any other address.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AllowedIps {
    /// Addresses, ranges (`a-b`) and CIDR blocks, as the project lists them.
    #[serde(default)]
    pub ips: Vec<String>,
    /// The list applies to protected branches only (other branches take any address).
    #[serde(default, alias = "protected_branches_only")]
    pub protected_branches_only: bool,
    /// The older name of the same restriction: the list applies to the primary (default) branch only.
    #[serde(default, alias = "primary_branch_only")]
    pub primary_branch_only: bool,
}

/// The JSON body that turns on logical replication.
pub fn enable_logical_replication_body() -> Json {
    json!({"project": {"settings": {"enable_logical_replication": true}}})
}

/// A Neon API client with one API key.
pub struct Client {
    http: reqwest::Client,
    base: String,
    key: Secret,
    /// The first pause before a retry (doubles each time).
    pub retry_pause: Duration,
    /// Most attempts per request.
    pub attempts: u32,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("neon::Client")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client for `base` (normally [`DEFAULT_BASE_URL`]).
    pub fn new(base: &str, key: Secret) -> Result<Client> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .user_agent(concat!("tidepool/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::internal(format!("building the HTTP client: {e}")))?;
        Ok(Client {
            http,
            base: base.trim_end_matches('/').to_string(),
            key,
            retry_pause: Duration::from_secs(1),
            attempts: 6,
        })
    }

    /// A client with the API key from the keychain, for Neon's API (or the one `TIDEPOOL_NEON_API_URL`
    /// names, e.g. a local stand-in).
    pub fn from_keychain() -> Result<Client> {
        Client::with_keychain(&crate::secrets::Keychain::open()?, None)
    }

    /// [`Client::from_keychain`] with a given keychain, for `base` if given.
    pub fn with_keychain(
        keychain: &crate::secrets::Keychain,
        base: Option<&str>,
    ) -> Result<Client> {
        let key = keychain
            .get(&crate::secrets::SecretKey::NeonApiKey)?
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::Keychain,
                    "no Neon API key is stored: add one in Settings (or `tidepool neon key`)",
                )
            })?;
        let base = match base {
            Some(base) => base.to_string(),
            None => {
                std::env::var("TIDEPOOL_NEON_API_URL").unwrap_or_else(|_| DEFAULT_BASE_URL.into())
            }
        };
        Client::new(&base, key)
    }

    /// Every project the key can see.
    pub async fn projects(&self) -> Result<Vec<Project>> {
        self.list("/projects", "projects").await
    }

    /// A project's branches.
    pub async fn branches(&self, project: &str) -> Result<Vec<Branch>> {
        self.list(
            &format!("/projects/{}/branches", segment(project)),
            "branches",
        )
        .await
    }

    /// A project's compute endpoints.
    pub async fn endpoints(&self, project: &str) -> Result<Vec<Endpoint>> {
        self.list(
            &format!("/projects/{}/endpoints", segment(project)),
            "endpoints",
        )
        .await
    }

    /// The project and branch whose endpoint serves `host` (direct or pooled), looked up across every
    /// project the key can see; `None` when no endpoint has that host's id.
    pub async fn locate(&self, host: &str) -> Result<Option<Link>> {
        let Some(endpoint) = endpoint_of_host(host) else {
            return Ok(None);
        };
        for project in self.projects().await? {
            if let Some(found) = self
                .endpoints(&project.id)
                .await?
                .into_iter()
                .find(|e| e.id.eq_ignore_ascii_case(&endpoint))
            {
                return Ok(Some(Link {
                    project_id: project.id,
                    branch_id: found.branch_id,
                }));
            }
        }
        Ok(None)
    }

    /// The project's IP Allow settings; a project without any (no `allowed_ips`) allows every address.
    pub async fn allowed_ips(&self, project: &str) -> Result<AllowedIps> {
        let mut body = self
            .call(
                reqwest::Method::GET,
                &format!("/projects/{}", segment(project)),
                None,
            )
            .await?;
        let settings = body["project"]["settings"]["allowed_ips"].take();
        if settings.is_null() {
            return Ok(AllowedIps::default());
        }
        serde_json::from_value(settings).map_err(|e| {
            Error::internal(format!(
                "Neon API: unexpected 'project.settings.allowed_ips' for project {project}: {e}"
            ))
        })
    }

    /// GETs `path` and reads the list in the answer's `name` member.
    async fn list<T: serde::de::DeserializeOwned>(&self, path: &str, name: &str) -> Result<T> {
        field(self.call(reqwest::Method::GET, path, None).await?, name)
    }

    /// Turns on logical replication (cannot be undone; restarts the project's computes) and waits for
    /// the operations it starts.
    pub async fn enable_logical_replication(&self, project: &str) -> Result<()> {
        let body = self
            .call(
                reqwest::Method::PATCH,
                &format!("/projects/{}", segment(project)),
                Some(enable_logical_replication_body()),
            )
            .await?;
        self.wait_for_operations(project, &body).await
    }

    /// Creates a role on a branch; Neon returns its password once.
    pub async fn create_role(&self, project: &str, branch: &str, role: &str) -> Result<Secret> {
        let body = self
            .call(
                reqwest::Method::POST,
                &format!(
                    "/projects/{}/branches/{}/roles",
                    segment(project),
                    segment(branch)
                ),
                Some(json!({"role": {"name": role}})),
            )
            .await?;
        self.wait_for_operations(project, &body).await?;
        password_of(&body["role"]["password"])
    }

    /// A role's current password.
    pub async fn reveal_password(&self, project: &str, branch: &str, role: &str) -> Result<Secret> {
        let body = self
            .call(
                reqwest::Method::GET,
                &format!(
                    "/projects/{}/branches/{}/roles/{}/reveal_password",
                    segment(project),
                    segment(branch),
                    segment(role)
                ),
                None,
            )
            .await?;
        password_of(&body["password"])
    }

    /// Gives a role a new password and returns it.
    pub async fn reset_password(&self, project: &str, branch: &str, role: &str) -> Result<Secret> {
        let body = self
            .call(
                reqwest::Method::POST,
                &format!(
                    "/projects/{}/branches/{}/roles/{}/reset_password",
                    segment(project),
                    segment(branch),
                    segment(role)
                ),
                None,
            )
            .await?;
        self.wait_for_operations(project, &body).await?;
        password_of(&body["role"]["password"])
    }

    /// Polls each operation a response lists until it has finished; a failed one is an error.
    pub async fn wait_for_operations(&self, project: &str, response: &Json) -> Result<()> {
        let Some(operations) = response["operations"].as_array() else {
            return Ok(());
        };
        for operation in operations {
            let Some(id) = operation["id"].as_str() else {
                continue;
            };
            let mut status = operation["status"].as_str().unwrap_or("").to_string();
            let deadline = std::time::Instant::now() + Duration::from_secs(300);
            while !matches!(status.as_str(), "finished" | "skipped") {
                if matches!(status.as_str(), "failed" | "error" | "cancelled") {
                    return Err(Error::new(
                        ErrorKind::Postgres,
                        format!(
                            "Neon operation {id} ({}) ended as '{status}'",
                            operation["action"].as_str().unwrap_or("?")
                        ),
                    ));
                }
                if std::time::Instant::now() > deadline {
                    return Err(Error::new(
                        ErrorKind::Connection,
                        format!("Neon operation {id} did not finish within 5 minutes (last status '{status}')"),
                    ));
                }
                tokio::time::sleep(self.retry_pause).await;
                let body = self
                    .call(
                        reqwest::Method::GET,
                        &format!("/projects/{}/operations/{}", segment(project), segment(id)),
                        None,
                    )
                    .await?;
                status = body["operation"]["status"]
                    .as_str()
                    .unwrap_or("")
                    .to_string();
            }
        }
        Ok(())
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Json>) -> Result<Json> {
        let url = format!("{}{path}", self.base);
        let safe_to_repeat = method == reqwest::Method::GET;
        let mut pause = self.retry_pause;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut request = self
                .http
                .request(method.clone(), &url)
                .bearer_auth(self.key.expose())
                .header(reqwest::header::ACCEPT, "application/json");
            if let Some(body) = &body {
                request = request.json(body);
            }
            let response = match request.send().await {
                Ok(response) => response,
                Err(e) if safe_to_repeat && attempt < self.attempts => {
                    tracing::warn!(error = %e.without_url(), "Neon API unreachable; retrying");
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                    continue;
                }
                Err(e) => {
                    return Err(Error::new(
                        ErrorKind::Connection,
                        format!("Neon API {method} {path}: {}", e.without_url()),
                    ))
                }
            };
            let status = response.status().as_u16();
            let retry_after = response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
                .map(Duration::from_secs);
            let text = response.text().await.unwrap_or_default();
            if (200..300).contains(&status) {
                return serde_json::from_str(&text).or_else(|_| {
                    if text.is_empty() {
                        Ok(Json::Null)
                    } else {
                        Err(Error::internal(format!(
                            "Neon API {method} {path}: the answer is not JSON"
                        )))
                    }
                });
            }
            let retryable = status == 423 || status == 429 || (status >= 500 && safe_to_repeat);
            if retryable && attempt < self.attempts {
                let wait = retry_after.unwrap_or(pause).min(Duration::from_secs(60));
                tracing::warn!(status, ?wait, "Neon API asked to retry");
                tokio::time::sleep(wait).await;
                pause *= 2;
                continue;
            }
            return Err(api_error(&method, path, status, &text));
        }
    }
}

/// A path segment, percent-encoded (ids and role names come from users and from Neon).
pub fn segment(part: &str) -> String {
    /// Everything but RFC 3986's unreserved characters.
    const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(part, SEGMENT).to_string()
}

fn field<T: serde::de::DeserializeOwned>(mut body: Json, name: &str) -> Result<T> {
    serde_json::from_value(body[name].take())
        .map_err(|e| Error::internal(format!("Neon API: unexpected '{name}' in the answer: {e}")))
}

fn password_of(value: &Json) -> Result<Secret> {
    value
        .as_str()
        .map(Secret::new)
        .ok_or_else(|| Error::internal("Neon API: the answer has no password"))
}

/// Neon's error body is `{"code": …, "message": …}`; the status says what kind of problem it is.
fn api_error(method: &reqwest::Method, path: &str, status: u16, body: &str) -> Error {
    let message = serde_json::from_str::<Json>(body)
        .ok()
        .and_then(|b| b["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| body.chars().take(200).collect());
    let (kind, advice) = match status {
        401 => (
            ErrorKind::Authentication,
            "the Neon API key was refused: create a new key in the Neon Console (Account settings → API keys) and save it in Settings",
        ),
        403 => (ErrorKind::Permission, "this API key may not do that"),
        404 => (
            ErrorKind::NotFound,
            "check the project, branch or role: it does not exist for this API key",
        ),
        409 => (ErrorKind::InvalidInput, "it exists already or conflicts with the current state"),
        423 => (
            ErrorKind::Postgres,
            "the project is busy with other operations; try again in a minute",
        ),
        429 => (ErrorKind::Connection, "Neon is rate-limiting this key; try again in a minute"),
        500..=599 => (ErrorKind::Connection, "Neon had a server error; try again later"),
        _ => (ErrorKind::Internal, "unexpected answer"),
    };
    Error::new(
        kind,
        format!("Neon API {method} {path} answered {status}: {message} ({advice})"),
    )
}
