//! A real identity service on 127.0.0.1:0 over a fresh SQLite file, and an HTTP client.
#![allow(dead_code)] // each test binary uses a different subset

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::http::{HeaderMap, Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use relay_identity::{Config, IdentityError};
use relay_store::{NewTenant, Store, Tenant};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> Self {
        let path =
            std::env::temp_dir().join(format!("relay-identity-test-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&path).expect("create temp dir");
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub json: serde_json::Value,
}

/// A migrated SQLite store with tenant `Acme` and one secret.
pub struct Seed {
    pub url: String,
    pub store: Store,
    pub tenant: Tenant,
    pub secret: String,
    dir: Arc<TempDir>,
}

impl Seed {
    pub async fn new() -> Self {
        let dir = TempDir::new();
        let url = format!("sqlite://{}", dir.0.join("relay.db").display());
        let store = Store::connect(&url).await.expect("connect");
        store.migrate().await.expect("migrate");
        let tenant = store
            .create_tenant(NewTenant {
                name: "Acme".into(),
                ..NewTenant::default()
            })
            .await
            .expect("tenant");
        let (_, secret) = store
            .create_secret(&tenant.id, None, relay_store::CredentialScope::Connector)
            .await
            .expect("secret");
        Self {
            url,
            store,
            tenant,
            secret,
            dir: Arc::new(dir),
        }
    }
}

pub struct TestIdentity {
    pub base: String,
    pub store: Store,
    pub tenant: Tenant,
    pub secret: String,
    pub shutdown: CancellationToken,
    pub task: JoinHandle<Result<(), IdentityError>>,
    client: Client<HttpConnector, Full<Bytes>>,
    _dir: Arc<TempDir>,
}

impl TestIdentity {
    /// A service over a fresh [`Seed`].
    pub async fn start() -> Self {
        Self::serve(&Seed::new().await).await
    }

    /// A service (one "node") over the seeded database, on a fresh port.
    pub async fn serve(seed: &Seed) -> Self {
        Self::serve_with(seed, |_| {}).await
    }

    /// As [`Self::serve`], with the default configuration changed by `adjust`.
    pub async fn serve_with(seed: &Seed, adjust: impl FnOnce(&mut Config)) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut config = Config::with_database_url(seed.url.clone());
        adjust(&mut config);
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(relay_identity::serve(
            config,
            seed.store.clone(),
            listener,
            shutdown.clone(),
        ));
        Self {
            base: format!("http://{addr}"),
            store: seed.store.clone(),
            tenant: seed.tenant.clone(),
            secret: seed.secret.clone(),
            shutdown,
            task,
            client: Client::builder(TokioExecutor::new()).build_http(),
            _dir: seed.dir.clone(),
        }
    }

    /// `POST /connect/token` with a form body, from the local address `source` (any
    /// 127.0.0.0/8 address works on Linux loopback), on a connection of its own.
    pub async fn token_from(&self, source: std::net::IpAddr, form: &str) -> Answer {
        let mut connector = HttpConnector::new();
        connector.set_local_address(Some(source));
        let client = Client::builder(TokioExecutor::new()).build(connector);
        let request = Request::builder()
            .method(Method::POST)
            .uri(format!("{}/connect/token", self.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Full::new(Bytes::from(form.to_owned())))
            .expect("request");
        answer_of(&client, request).await
    }

    pub async fn request(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Answer {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request
            .body(Full::new(Bytes::from(body.to_owned())))
            .expect("request");
        answer_of(&self.client, request).await
    }

    pub async fn get(&self, path: &str) -> Answer {
        self.request(Method::GET, path, &[], "").await
    }

    /// `POST /connect/token` with a form body.
    pub async fn token(&self, form: &str) -> Answer {
        let form_type = [("content-type", "application/x-www-form-urlencoded")];
        self.request(Method::POST, "/connect/token", &form_type, form)
            .await
    }

    /// `POST /connect/token` with HTTP Basic client authentication.
    pub async fn token_basic(&self, id: &str, secret: &str, form: &str) -> Answer {
        let auth = format!("Basic {}", STANDARD.encode(format!("{id}:{secret}")));
        let headers = [
            ("content-type", "application/x-www-form-urlencoded"),
            ("authorization", auth.as_str()),
        ];
        self.request(Method::POST, "/connect/token", &headers, form)
            .await
    }

    pub fn form(&self, client_id: &str, secret: &str) -> String {
        format!("grant_type=client_credentials&client_id={client_id}&client_secret={secret}")
    }
}

async fn answer_of(
    client: &Client<HttpConnector, Full<Bytes>>,
    request: Request<Full<Bytes>>,
) -> Answer {
    let response = tokio::time::timeout(Duration::from_secs(30), client.request(request))
        .await
        .expect("answer within 30 s")
        .expect("response");
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.expect("body").to_bytes();
    let json = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
        serde_json::Value::String(String::from_utf8_lossy(&bytes).into_owned())
    });
    Answer {
        status: parts.status,
        headers: parts.headers,
        json,
    }
}

/// The claims of a JWT (not verified: the tests check what was issued).
pub fn token_claims(token: &str) -> serde_json::Value {
    let payload = token.split('.').nth(1).expect("payload segment");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).expect("base64url")).expect("json")
}

/// The `kid` of a JWT's header.
pub fn token_kid(token: &str) -> String {
    let header = token.split('.').next().expect("header segment");
    let header: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).expect("base64url")).expect("json");
    header["kid"].as_str().expect("kid").to_owned()
}
