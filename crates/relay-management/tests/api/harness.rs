//! A migrated database per test (SQLite file, or a fresh PostgreSQL database at
//! `RELAY_TEST_POSTGRES_URL`, skipped unless `RELAY_REQUIRE_POSTGRES=1`), the identity
//! service and the management API in process on port 0, and a small JSON client.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use relay_store::Store;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

pub enum Db {
    Sqlite,
    Postgres,
}

enum Cleanup {
    Dir(PathBuf),
    Postgres { admin_url: String, database: String },
}

pub struct Stack {
    pub store: Store,
    /// The database's URL, for [`Stack::sql`].
    url: String,
    pub api: SocketAddr,
    pub identity: SocketAddr,
    shutdown: CancellationToken,
    cleanup: Cleanup,
    client: Client<HttpConnector, Full<Bytes>>,
}

fn suffix() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

impl Stack {
    /// `None` when PostgreSQL is wanted but unreachable (and not required).
    pub async fn start(db: Db) -> Option<Stack> {
        let (url, cleanup) = match db {
            Db::Sqlite => {
                let dir = std::env::temp_dir().join(format!("relay-mgmt-test-{}", suffix()));
                let url = format!("sqlite://{}", dir.join("relay.db").display());
                (url, Cleanup::Dir(dir))
            }
            Db::Postgres => {
                let admin_url = std::env::var("RELAY_TEST_POSTGRES_URL")
                    .unwrap_or_else(|_| DEFAULT_POSTGRES_URL.to_owned());
                let connected = tokio::time::timeout(
                    Duration::from_secs(5),
                    AsyncPgConnection::establish(&admin_url),
                )
                .await;
                let mut admin = match connected {
                    Ok(Ok(c)) => c,
                    other => {
                        let why = match other {
                            Ok(Err(e)) => e.to_string(),
                            _ => "timed out".to_owned(),
                        };
                        let message = format!(
                            "PostgreSQL not reachable at {} ({why}): start PostgreSQL or set RELAY_TEST_POSTGRES_URL",
                            relay_store::redact_url(&admin_url)
                        );
                        if std::env::var("RELAY_REQUIRE_POSTGRES").is_ok_and(|v| v == "1") {
                            panic!("{message} (required because RELAY_REQUIRE_POSTGRES=1)");
                        }
                        eprintln!("skipping PostgreSQL test: {message}");
                        return None;
                    }
                };
                let database = format!("relay_mgmt_test_{}", suffix());
                diesel::sql_query(format!("CREATE DATABASE {database}"))
                    .execute(&mut admin)
                    .await
                    .unwrap();
                let base = admin_url
                    .rsplit_once('/')
                    .map_or(admin_url.as_str(), |(b, _)| b);
                let url = format!("{base}/{database}");
                (
                    url,
                    Cleanup::Postgres {
                        admin_url,
                        database,
                    },
                )
            }
        };
        let store = Store::connect(&url).await.unwrap();
        let db_url = url.clone();
        store.migrate().await.unwrap();
        let shutdown = CancellationToken::new();
        let id_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let identity = id_listener.local_addr().unwrap();
        let mut id_config = relay_identity::Config::with_database_url(url.clone());
        id_config.listen.public = identity;
        tokio::spawn(relay_identity::serve(
            id_config,
            store.clone(),
            id_listener,
            shutdown.clone(),
        ));
        let api_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let api = api_listener.local_addr().unwrap();
        let mut config = relay_management::Config::with_database_url(url);
        config.identity.authority = format!("http://{identity}");
        tokio::spawn(relay_management::serve(
            config,
            store.clone(),
            api_listener,
            shutdown.clone(),
        ));
        let stack = Stack {
            store,
            url: db_url,
            api,
            identity,
            shutdown,
            cleanup,
            client: Client::builder(TokioExecutor::new()).build(HttpConnector::new()),
        };
        let discovery = format!("http://{identity}/.well-known/openid-configuration");
        relay_testkit::wait::until(Duration::from_secs(30), "identity up", || async {
            let r = stack.client.get(discovery.parse().unwrap()).await.ok()?;
            r.status().is_success().then_some(())
        })
        .await;
        Some(stack)
    }

    /// Runs `statement` on the database through a connection of its own (not the store's
    /// pool): what another tool or a failure does behind the services' backs.
    pub async fn sql(&self, statement: &str) {
        let statement = statement.to_owned();
        if let Some(path) = self.url.strip_prefix("sqlite://") {
            let path = path.to_owned();
            tokio::task::spawn_blocking(move || {
                use diesel::Connection;
                let mut conn = diesel::SqliteConnection::establish(&path).unwrap();
                diesel::RunQueryDsl::execute(diesel::sql_query(statement), &mut conn).unwrap();
            })
            .await
            .unwrap();
        } else {
            let mut conn = AsyncPgConnection::establish(&self.url).await.unwrap();
            diesel::sql_query(statement)
                .execute(&mut conn)
                .await
                .unwrap();
        }
    }

    /// A management client with `scopes` (and tenant scope) and a token for `scopes`.
    pub async fn token(&self, name: &str, scopes: &str, tenant: Option<&str>) -> String {
        let tenant_id = match tenant {
            Some(t) => Some(self.store.tenant_by_name(t).await.unwrap().unwrap().id),
            None => None,
        };
        let (_, secret) = self
            .store
            .create_management_client(name, scopes, tenant_id.as_deref())
            .await
            .unwrap();
        let (status, body) = self.token_request(name, &secret, scopes).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["access_token"].as_str().unwrap().to_owned()
    }

    /// `POST /connect/token` with client credentials in the form.
    pub async fn token_request(&self, id: &str, secret: &str, scope: &str) -> (StatusCode, Value) {
        let form = serde_urlencoded::to_string([
            ("grant_type", "client_credentials"),
            ("client_id", id),
            ("client_secret", secret),
            ("scope", scope),
        ])
        .unwrap();
        let req = Request::post(format!("http://{}/connect/token", self.identity))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Full::new(Bytes::from(form)))
            .unwrap();
        let (status, _, body) = self.send(req).await;
        (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
    }

    pub async fn send(&self, req: Request<Full<Bytes>>) -> (StatusCode, hyper::HeaderMap, Bytes) {
        let response = self.client.request(req).await.unwrap();
        let (parts, body) = response.into_parts();
        (
            parts.status,
            parts.headers,
            body.collect().await.unwrap().to_bytes(),
        )
    }

    /// Calls the API with `Authorization: {auth}` (if any) and a JSON body (if any).
    pub async fn call_raw(
        &self,
        method: Method,
        path: &str,
        auth: Option<&str>,
        body: Option<Bytes>,
    ) -> (StatusCode, Value) {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.api));
        if let Some(auth) = auth {
            req = req.header("authorization", auth);
        }
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        let (status, _, bytes) = self
            .send(req.body(Full::new(body.unwrap_or_default())).unwrap())
            .await;
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let auth = format!("Bearer {token}");
        self.call_raw(
            method,
            path,
            Some(&auth),
            body.map(|b| Bytes::from(b.to_string())),
        )
        .await
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.shutdown.cancel();
        match &self.cleanup {
            Cleanup::Dir(dir) => {
                let _ = std::fs::remove_dir_all(dir);
            }
            Cleanup::Postgres {
                admin_url,
                database,
            } => {
                let (admin_url, database) = (admin_url.clone(), database.clone());
                let _ = std::thread::spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .unwrap();
                    rt.block_on(async {
                        if let Ok(mut admin) = AsyncPgConnection::establish(&admin_url).await {
                            let _ = diesel::sql_query(format!(
                                "DROP DATABASE IF EXISTS {database} WITH (FORCE)"
                            ))
                            .execute(&mut admin)
                            .await;
                        }
                    });
                })
                .join();
            }
        }
    }
}
