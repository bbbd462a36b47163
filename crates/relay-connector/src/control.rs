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

/// An access token and when to replace it.
#[derive(Clone)]
pub struct Token {
    pub secret: Secret,
    /// 80 % of its lifetime: a tunnel opened with it renews itself then (make-before-break),
    /// well before the relay cuts it at the expiry.
    pub refresh_at: Instant,
    /// When it expires (by this machine's clock, from `expires_in`).
    pub expires_at: Instant,
}

/// Obtains and caches the connector's access token (OAuth2 client credentials).
pub struct TokenSource {
    client: ControlClient,
    tenant: String,
    secret: Secret,
    cached: Mutex<Option<Token>>,
    /// Held while a token is being fetched: tunnels that open together (several per relay,
    /// several relays) share one token request, so the token service checks the secret
    /// (argon2id: 19 MiB and tens of milliseconds of CPU) once, not once per tunnel.
    fetching: tokio::sync::Mutex<()>,
}

impl TokenSource {
    pub fn new(client: ControlClient, tenant: String, secret: Secret) -> Self {
        TokenSource {
            client,
            tenant,
            secret,
            cached: Mutex::new(None),
            fetching: tokio::sync::Mutex::new(()),
        }
    }

    /// A token valid for a while yet: the cached one until 80 % of its lifetime has passed,
    /// then a fresh one from `token_endpoint`.
    pub async fn token(&self, token_endpoint: &str) -> Result<Token, ConnectorError> {
        if let Some(token) = self.fresh() {
            return Ok(token);
        }
        let _fetching = self.fetching.lock().await;
        // Fetched by another tunnel while this one waited.
        if let Some(token) = self.fresh() {
            return Ok(token);
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
        let now = Instant::now();
        let lifetime_ms = answer.expires_in.saturating_mul(1000);
        let token = Token {
            secret: Secret::new(answer.access_token),
            refresh_at: now + Duration::from_millis(lifetime_ms.saturating_mul(4) / 5),
            expires_at: now + Duration::from_millis(lifetime_ms),
        };
        if let Ok(mut cached) = self.cached.lock() {
            *cached = Some(token.clone());
        }
        Ok(token)
    }

    /// The cached token, unless 80 % of its lifetime has passed.
    fn fresh(&self) -> Option<Token> {
        let cached = self.cached.lock().ok()?;
        let token = cached.as_ref()?;
        (Instant::now() < token.refresh_at).then(|| token.clone())
    }

    /// Forgets the cached token, after the relay rejected it.
    pub fn invalidate(&self) {
        if let Ok(mut cached) = self.cached.lock() {
            *cached = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// A token endpoint that counts its calls and answers each after a pause, so that callers
    /// arriving together overlap with the first call.
    async fn slow_token_endpoint(calls: Arc<AtomicUsize>) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let calls = calls.clone();
                let service = hyper::service::service_fn(move |_request| {
                    let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
                    async move {
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        let body = format!(r#"{{"access_token":"token-{n}","expires_in":3600}}"#);
                        Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                            Bytes::from(body),
                        )))
                    }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service),
                );
            }
        });
        format!("http://{addr}/connect/token")
    }

    #[tokio::test]
    async fn tunnels_opening_together_share_one_token_request() {
        let calls = Arc::new(AtomicUsize::new(0));
        let endpoint = slow_token_endpoint(calls.clone()).await;
        let dialer = Arc::new(crate::dial::Dialer::new(None, None).expect("dialer"));
        let source = Arc::new(TokenSource::new(
            ControlClient::new(dialer),
            "acme".into(),
            Secret::new("secret"),
        ));
        let tunnels: Vec<_> = (0..4)
            .map(|_| {
                let (source, endpoint) = (source.clone(), endpoint.clone());
                tokio::spawn(async move {
                    source
                        .token(&endpoint)
                        .await
                        .map(|t| t.secret.expose().to_owned())
                })
            })
            .collect();
        for tunnel in tunnels {
            assert_eq!(tunnel.await.expect("task").expect("token"), "token-1");
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1, "one token request");
        source.invalidate();
        let renewed = source.token(&endpoint).await.expect("token");
        assert_eq!(renewed.secret.expose(), "token-2");
    }
}
