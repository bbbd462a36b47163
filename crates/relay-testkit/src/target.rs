//! A stand-in for a service inside the private network.
//!
//! Routes: `/status/{code}`, `/delay/{ms}`, `/bytes/{n}` (n pattern bytes, streamed),
//! `/sha256` (answers `{len} {sha256}` of the request body), `/inspect` (JSON of method, URI,
//! headers and body), `/redirect` (302 to `/inspect`), `/cookies` (two `Set-Cookie`),
//! `/hang` (never answers; counts starts and cancellations).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use crate::client::{PatternBody, digest};

type Body = BoxBody<Bytes, std::io::Error>;

/// Counters a test can read.
#[derive(Default)]
pub struct Counters {
    pub requests: AtomicUsize,
    pub hang_started: AtomicUsize,
    pub hang_cancelled: AtomicUsize,
    /// `/delay` calls running now, and the most at once.
    pub delay_inflight: AtomicUsize,
    pub delay_max_inflight: AtomicUsize,
}

struct InflightGuard(Arc<Counters>);

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.delay_inflight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A running test target; stops when dropped.
pub struct TestTarget {
    pub addr: SocketAddr,
    pub counters: Arc<Counters>,
    task: tokio::task::JoinHandle<()>,
}

impl TestTarget {
    pub async fn start() -> TestTarget {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(listener)
    }

    pub fn serve(listener: TcpListener) -> TestTarget {
        let addr = listener.local_addr().unwrap();
        let counters = Arc::new(Counters::default());
        let shared = counters.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let counters = shared.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let counters = counters.clone();
                        async move { Ok::<_, Infallible>(route(req, &counters).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        TestTarget {
            addr,
            counters,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for TestTarget {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).map_err(|e| match e {}).boxed()
}

fn reply(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r
}

struct HangGuard(Arc<Counters>);

impl Drop for HangGuard {
    fn drop(&mut self) {
        self.0.hang_cancelled.fetch_add(1, Ordering::SeqCst);
    }
}

async fn route(req: Request<Incoming>, counters: &Arc<Counters>) -> Response<Body> {
    counters.requests.fetch_add(1, Ordering::SeqCst);
    let path = req.uri().path().to_owned();
    let mut segments = path.trim_start_matches('/').splitn(2, '/');
    let first = segments.next().unwrap_or("");
    let arg = segments.next().unwrap_or("");
    match first {
        "status" => {
            let code = arg
                .parse()
                .ok()
                .and_then(|c| StatusCode::from_u16(c).ok())
                .unwrap_or(StatusCode::BAD_REQUEST);
            reply(code, format!("status {}", code.as_u16()))
        }
        "delay" => {
            let ms = arg.parse().unwrap_or(0);
            let now = counters.delay_inflight.fetch_add(1, Ordering::SeqCst) + 1;
            counters.delay_max_inflight.fetch_max(now, Ordering::SeqCst);
            let _guard = InflightGuard(counters.clone());
            tokio::time::sleep(Duration::from_millis(ms)).await;
            reply(StatusCode::OK, "late")
        }
        "bytes" => {
            let n: u64 = arg.parse().unwrap_or(0);
            let mut r = Response::new(PatternBody::new(n).boxed());
            r.headers_mut().insert(header::CONTENT_LENGTH, n.into());
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                "application/octet-stream".parse().unwrap(),
            );
            r
        }
        "sha256" => match digest(req.into_body()).await {
            Ok((len, sha)) => reply(StatusCode::OK, format!("{len} {sha}")),
            Err(e) => reply(StatusCode::BAD_REQUEST, e.to_string()),
        },
        "inspect" => {
            let method = req.method().to_string();
            let uri = req.uri().to_string();
            let headers: Vec<(String, String)> = req
                .headers()
                .iter()
                .map(|(k, v)| {
                    (
                        k.to_string(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect();
            let body = req
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let json = serde_json::json!({
                "method": method,
                "uri": uri,
                "headers": headers,
                "body": String::from_utf8_lossy(&body),
            });
            let mut r = reply(StatusCode::OK, json.to_string());
            r.headers_mut()
                .insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
            r
        }
        "redirect" => {
            let mut r = reply(StatusCode::FOUND, "moved");
            r.headers_mut()
                .insert(header::LOCATION, "/inspect".parse().unwrap());
            r
        }
        "cookies" => {
            let mut r = reply(StatusCode::OK, "cookies");
            r.headers_mut()
                .append(header::SET_COOKIE, "a=1; Path=/".parse().unwrap());
            r.headers_mut()
                .append(header::SET_COOKIE, "b=2; HttpOnly".parse().unwrap());
            r
        }
        "hang" => {
            counters.hang_started.fetch_add(1, Ordering::SeqCst);
            let _guard = HangGuard(counters.clone());
            std::future::pending::<()>().await;
            reply(StatusCode::OK, "never")
        }
        _ => reply(StatusCode::NOT_FOUND, "no such test route"),
    }
}
