//! Control-plane HTTP calls of the connector: the discovery document and tokens.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use relay_core::secret::Secret;
use relay_proto::discovery::DiscoveryDocument;
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::error::ConnectorError;

/// Largest control-plane answer accepted.
const MAX_BODY: usize = 1 << 20;
/// Time allowed for one control-plane call.
const CALL_TIMEOUT: Duration = Duration::from_secs(15);

/// A small HTTP client for JSON control-plane calls. Each call opens its own connection
/// (through the proxy and TLS when configured): calls happen once per tunnel (re)connect.
#[derive(Clone)]
pub struct ControlClient {
    dialer: crate::dial::SharedDialer,
}

impl ControlClient {
    pub fn new(dialer: crate::dial::SharedDialer) -> Self {
        ControlClient { dialer }
    }

    /// Fetches the relay's discovery document from its base URL.
    pub async fn discover(&self, relay_url: &str) -> Result<DiscoveryDocument, ConnectorError> {
        let url = format!(
            "{}{}",
            relay_url.trim_end_matches('/'),
            relay_proto::DISCOVERY_PATH
        );
        let request = Request::get(&url)
            .header(header::ACCEPT, "application/json")
            .body(Full::default())
            .map_err(|e| ConnectorError::Protocol(format!("{url}: {e}")))?;
        let (status, body) = self.call(&url, request).await?;
        if status != StatusCode::OK {
            return Err(ConnectorError::Protocol(format!("{url} answered {status}")));
        }
        parse(&url, &body)
    }

    async fn call(
        &self,
        url: &str,
        request: Request<Full<Bytes>>,
    ) -> Result<(StatusCode, Bytes), ConnectorError> {
        let unreachable = |e: String| ConnectorError::Unreachable {
            url: url.to_owned(),
            message: e,
        };
        let response = tokio::time::timeout(CALL_TIMEOUT, self.send(request))
            .await
            .map_err(|_| unreachable("timed out".into()))??;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| unreachable(e.to_string()))?
            .to_bytes();
        Ok((status, body))
    }
}

impl ControlClient {
    /// Sends `request` (absolute URI) on a fresh HTTP/1.1 connection, in origin form.
    async fn send(
        &self,
        mut request: Request<Full<Bytes>>,
    ) -> Result<http::Response<hyper::body::Incoming>, ConnectorError> {
        let uri = request.uri().clone();
        let unreachable = |e: String| ConnectorError::Unreachable {
            url: uri.to_string(),
            message: e,
        };
        let authority = uri
            .authority()
            .ok_or_else(|| unreachable("no host in URL".into()))?
            .clone();
        let stream = self.dialer.dial(&uri).await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        *request.uri_mut() = path
            .parse()
            .map_err(|e: http::uri::InvalidUri| unreachable(e.to_string()))?;
        if let Ok(host) = http::HeaderValue::from_str(authority.as_str()) {
            request.headers_mut().insert(header::HOST, host);
        }
        sender
            .send_request(request)
            .await
            .map_err(|e| unreachable(e.to_string()))
    }
}

fn parse<T: DeserializeOwned>(url: &str, body: &[u8]) -> Result<T, ConnectorError> {
    serde_json::from_slice(body)
        .map_err(|e| ConnectorError::Protocol(format!("{url}: unexpected answer: {e}")))
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    expires_in: u64,
}

#[derive(Deserialize)]
struct TokenError {
    error: String,
    #[serde(default)]
    error_description: Option<String>,
}

/// Obtains and caches the connector's access token (OAuth2 client credentials).
pub struct TokenSource {
    client: ControlClient,
    tenant: String,
    secret: Secret,
    cached: Mutex<Option<(Secret, Instant)>>,
}

impl TokenSource {
    pub fn new(client: ControlClient, tenant: String, secret: Secret) -> Self {
        TokenSource {
            client,
            tenant,
            secret,
            cached: Mutex::new(None),
        }
    }

    /// A token valid for a while yet: the cached one until 80 % of its lifetime has passed,
    /// then a fresh one from `token_endpoint`.
    pub async fn token(&self, token_endpoint: &str) -> Result<Secret, ConnectorError> {
        if let Ok(cached) = self.cached.lock()
            && let Some((token, refresh_at)) = cached.as_ref()
            && Instant::now() < *refresh_at
        {
            return Ok(token.clone());
        }
        let form = serde_urlencoded::to_string([
            ("grant_type", "client_credentials"),
            ("client_id", self.tenant.as_str()),
            ("client_secret", self.secret.expose()),
            ("scope", "connector"),
        ])
        .map_err(|e| ConnectorError::Protocol(e.to_string()))?;
        let request = Request::post(token_endpoint)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::ACCEPT, "application/json")
            .body(Full::new(Bytes::from(form)))
            .map_err(|e| ConnectorError::Protocol(format!("{token_endpoint}: {e}")))?;
        let (status, body) = self.client.call(token_endpoint, request).await?;
        if status != StatusCode::OK {
            let reason = serde_json::from_slice::<TokenError>(&body)
                .map(|e| {
                    format!(
                        "{}{}",
                        e.error,
                        e.error_description
                            .map(|d| format!(": {d}"))
                            .unwrap_or_default()
                    )
                })
                .unwrap_or_else(|_| status.to_string());
            return Err(ConnectorError::Rejected(format!(
                "token endpoint refused the credentials ({reason})"
            )));
        }
        let answer: TokenResponse = parse(token_endpoint, &body)?;
        let token = Secret::new(answer.access_token);
        let refresh_at =
            Instant::now() + Duration::from_secs(answer.expires_in.saturating_mul(4) / 5);
        if let Ok(mut cached) = self.cached.lock() {
            *cached = Some((token.clone(), refresh_at));
        }
        Ok(token)
    }

    /// Forgets the cached token, after the relay rejected it.
    pub fn invalidate(&self) {
        if let Ok(mut cached) = self.cached.lock() {
            *cached = None;
        }
    }
}
