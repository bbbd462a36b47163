//! The management API client: authentication (API key, client credentials, cached login
//! token), JSON calls, and the mapping of answers to exit codes.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode, header};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use crate::{Cli, UsageError};

const CALL_TIMEOUT: Duration = Duration::from_secs(30);
const SCOPES: &str = "management:read management:write";

/// A failed API call (or token request), classified for the exit code.
#[derive(Debug)]
pub struct RemoteError {
    pub status: Option<StatusCode>,
    pub message: String,
}

impl std::fmt::Display for RemoteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.status {
            Some(s) => write!(f, "{} ({s})", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for RemoteError {}

impl RemoteError {
    pub fn exit_code(&self) -> u8 {
        match self.status.map(|s| s.as_u16()) {
            Some(401 | 403) => crate::EXIT_AUTH,
            Some(404) => crate::EXIT_NOT_FOUND,
            Some(409) => crate::EXIT_CONFLICT,
            Some(400 | 422) => crate::EXIT_USAGE,
            _ => crate::EXIT_SERVER,
        }
    }

    fn auth(message: impl Into<String>) -> Self {
        Self {
            status: Some(StatusCode::UNAUTHORIZED),
            message: message.into(),
        }
    }

    fn unreachable(message: impl Into<String>) -> Self {
        Self {
            status: None,
            message: message.into(),
        }
    }
}

pub struct Api {
    base: String,
    auth: String,
    client: Client<HttpConnector, Full<Bytes>>,
}

fn http_client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

async fn send(
    client: &Client<HttpConnector, Full<Bytes>>,
    req: Request<Full<Bytes>>,
) -> Result<(StatusCode, Bytes), RemoteError> {
    let uri = req.uri().to_string();
    let response = tokio::time::timeout(CALL_TIMEOUT, client.request(req))
        .await
        .map_err(|_| RemoteError::unreachable(format!("{uri}: timed out")))?
        .map_err(|e| RemoteError::unreachable(format!("{uri}: {e}")))?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| RemoteError::unreachable(format!("{uri}: {e}")))?
        .to_bytes();
    Ok((status, body))
}

/// Where `login` keeps its token: `$XDG_CONFIG_HOME/relayctl/token.json` (or `~/.config`).
pub fn token_cache_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("relayctl").join("token.json"))
}

fn base_url(cli: &Cli) -> anyhow::Result<String> {
    let url = cli.management_url.as_deref().ok_or_else(|| {
        UsageError("this command needs --management-url (or RELAYCTL_MANAGEMENT_URL)".into())
    })?;
    if !url.starts_with("http://") {
        return Err(UsageError(format!(
            "--management-url {url}: only http:// URLs are supported"
        ))
        .into());
    }
    Ok(url.trim_end_matches('/').to_owned())
}

/// A token for the client credentials of `cli` (asks for read+write, falls back to read).
async fn fetch_token(cli: &Cli, base: &str) -> anyhow::Result<(String, i64)> {
    let (Some(id), Some(secret)) = (&cli.client_id, &cli.client_secret) else {
        return Err(UsageError(
            "set --client-id and --client-secret (or RELAYCTL_CLIENT_ID / RELAYCTL_CLIENT_SECRET)"
                .into(),
        )
        .into());
    };
    let client = http_client();
    let token_url = match &cli.token_url {
        Some(url) => url.clone(),
        None => {
            let req = Request::get(format!("{base}/management/openapi.json"))
                .body(Full::default())
                .context("building request")?;
            let (status, body) = send(&client, req).await?;
            if !status.is_success() {
                return Err(RemoteError {
                    status: Some(status),
                    message: "reading the OpenAPI document".into(),
                }
                .into());
            }
            let doc: Value =
                serde_json::from_slice(&body).context("parsing the OpenAPI document")?;
            doc["components"]["securitySchemes"]["oauth2"]["flows"]["clientCredentials"]["tokenUrl"]
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| UsageError("the API names no token URL; pass --token-url".into()))?
        }
    };
    for scope in [SCOPES, "management:read"] {
        let form = serde_urlencoded::to_string([
            ("grant_type", "client_credentials"),
            ("client_id", id.as_str()),
            ("client_secret", secret.as_str()),
            ("scope", scope),
        ])
        .context("encoding the token request")?;
        let req = Request::post(&token_url)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Full::new(Bytes::from(form)))
            .context("building the token request")?;
        let (status, body) = send(&client, req).await?;
        let answer: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        if status.is_success() {
            let token = answer["access_token"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let expires_in = answer["expires_in"].as_i64().unwrap_or(300);
            return Ok((token, relay_store::now_ms() + expires_in * 1000));
        }
        if answer["error"] == "invalid_scope" && scope == SCOPES {
            continue;
        }
        let code = answer["error"].as_str().unwrap_or("error");
        return Err(match status.as_u16() {
            400 | 401 | 403 => RemoteError::auth(format!("token request refused: {code}")),
            _ => RemoteError {
                status: Some(status),
                message: format!("token request failed: {code}"),
            },
        }
        .into());
    }
    Err(RemoteError::auth("token request refused: invalid_scope").into())
}

/// `relayctl login`: fetches a token and caches it (file mode 0600).
pub async fn login(cli: &Cli) -> anyhow::Result<()> {
    let base = base_url(cli)?;
    let (token, expires_at) = fetch_token(cli, &base).await?;
    let path =
        token_cache_path().ok_or_else(|| UsageError("set XDG_CONFIG_HOME or HOME".into()))?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let cached = serde_json::json!({"management_url": base, "access_token": token, "expires_at": expires_at});
    write_private(&path, &cached.to_string())
        .with_context(|| format!("writing {}", path.display()))?;
    eprintln!(
        "Logged in to {base}; token cached in {} until {}.",
        path.display(),
        crate::output::time(expires_at)
    );
    Ok(())
}

fn write_private(path: &std::path::Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)?.write_all(contents.as_bytes())
}

fn cached_token(base: &str) -> Option<String> {
    let text = std::fs::read_to_string(token_cache_path()?).ok()?;
    let cached: Value = serde_json::from_str(&text).ok()?;
    let fresh = cached["expires_at"].as_i64()? > relay_store::now_ms() + 10_000;
    (cached["management_url"] == base && fresh)
        .then(|| cached["access_token"].as_str().map(str::to_owned))?
}

impl Api {
    /// Authenticates as configured: API key, else client credentials, else the cached token.
    pub async fn connect(cli: &Cli) -> anyhow::Result<Api> {
        let base = base_url(cli)?;
        let auth = if let Some(key) = &cli.api_key {
            format!("ApiKey {key}")
        } else if cli.client_id.is_some() || cli.client_secret.is_some() {
            format!("Bearer {}", fetch_token(cli, &base).await?.0)
        } else if let Some(token) = cached_token(&base) {
            format!("Bearer {token}")
        } else {
            return Err(RemoteError::auth(
                "no credentials: run `relayctl login` with --client-id/--client-secret, or set RELAYCTL_API_KEY",
            )
            .into());
        };
        Ok(Api {
            base,
            auth,
            client: http_client(),
        })
    }

    /// Calls `path` and returns the JSON answer (`Null` for empty bodies); non-2xx answers
    /// become [`RemoteError`]s with the API's message.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header(header::AUTHORIZATION, &self.auth)
            .header(header::ACCEPT, "application/json");
        if body.is_some() {
            req = req.header(header::CONTENT_TYPE, "application/json");
        }
        let payload = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        let req = req.body(Full::new(payload)).context("building request")?;
        let (status, bytes) = send(&self.client, req).await?;
        let value: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or(Value::Null)
        };
        if status.is_success() {
            return Ok(value);
        }
        let mut message = value["message"]
            .as_str()
            .unwrap_or("request failed")
            .to_owned();
        if let Some(field) = value["field"].as_str() {
            message = format!("{field}: {message}");
        }
        Err(RemoteError {
            status: Some(status),
            message,
        }
        .into())
    }
}
