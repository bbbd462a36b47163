//! Targets: where relayed requests go inside the private network.
//!
//! A request arriving on the tunnel as `/{target}/{rest}?{query}` is sent to the target's base
//! URL with `/{rest}` appended. The built-in `ping` answers `PONG`, `echo` returns the request
//! body with its content type; both exist so a fresh installation can be checked end to end.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use relay_core::https::HttpsConnector;
use relay_proto::headers;

use crate::config::TargetConfig;
use crate::forwarding::add_forwarding_headers;
use crate::redirect::{Hop, RedirectRules, origin};

/// Body of every response the connector sends back through the tunnel.
pub type ResponseBody = BoxBody<Bytes, hyper::Error>;

/// Most redirect hops followed for a target with `follow_redirects`.
const MAX_REDIRECTS: usize = 10;

/// The targets of one connector, looked up case-insensitively.
pub struct Targets {
    by_name: HashMap<String, Target>,
    builtins: bool,
}

/// Plain HTTP, or HTTPS verified against the system roots or the target's `ca_file`.
type TargetClient = Client<HttpsConnector, ResponseBody>;

struct Target {
    base: Uri,
    host: HeaderValue,
    timeout: Duration,
    follow_redirects: bool,
    redirects: RedirectRules,
    /// `%2F` and `%25` in the path: refused or passed.
    slashes: relay_proto::path::EncodedSlashes,
    /// Keep the client's own `Forwarded`/`X-Forwarded-*`/`X-Real-IP`.
    trust_client_forwarded: bool,
    /// Shared by all targets without a `ca_file`; a target with one has its own.
    client: TargetClient,
}

impl Targets {
    /// Builds the target table; URLs were checked by `Config::validate`.
    pub fn new(
        config: &std::collections::BTreeMap<String, TargetConfig>,
        builtins: bool,
    ) -> Result<Self, String> {
        let client = |ca_file: Option<&std::path::Path>| {
            HttpsConnector::new(ca_file).map(|connector| {
                Client::builder(TokioExecutor::new())
                    .pool_idle_timeout(Duration::from_secs(90))
                    .pool_max_idle_per_host(256)
                    .build(connector)
            })
        };
        let shared = client(None).map_err(|e| format!("TLS client: {e}"))?;
        let mut by_name = HashMap::new();
        for (name, target) in config {
            let base: Uri = target
                .url
                .parse()
                .map_err(|e| format!("targets.{name}.url: {e}"))?;
            let authority = base
                .authority()
                .ok_or_else(|| format!("targets.{name}.url: no host"))?;
            let host = HeaderValue::from_str(authority.as_str())
                .map_err(|e| format!("targets.{name}.url: {e}"))?;
            let client = match &target.ca_file {
                Some(path) => {
                    client(Some(path)).map_err(|e| format!("targets.{name}.ca_file: {e}"))?
                }
                None => shared.clone(),
            };
            let redirect_origins = target
                .redirect_origins
                .iter()
                .map(|o| {
                    o.parse::<Uri>()
                        .ok()
                        .and_then(|u| origin(&u))
                        .ok_or_else(|| {
                            format!(
                                "targets.{name}.redirect_origins: `{o}` is not an http(s) origin"
                            )
                        })
                })
                .collect::<Result<_, _>>()?;
            by_name.insert(
                name.to_ascii_lowercase(),
                Target {
                    redirects: RedirectRules::new(
                        base.clone(),
                        redirect_origins,
                        target.encoded_slashes,
                    ),
                    base,
                    host,
                    timeout: target.timeout,
                    follow_redirects: target.follow_redirects,
                    slashes: target.encoded_slashes,
                    trust_client_forwarded: target.trust_client_forwarded,
                    client,
                },
            );
        }
        Ok(Targets { by_name, builtins })
    }

    /// Answers one relayed request. `name` is the target segment, `rest` the remaining path
    /// and query (starting with `/`, possibly just `/`).
    pub async fn call(
        &self,
        name: &str,
        rest: &str,
        req: Request<Incoming>,
    ) -> Response<ResponseBody> {
        let trace = req.headers().contains_key(headers::TRACE);
        let started = Instant::now();
        let lower = name.to_ascii_lowercase();
        let mut response = match self.by_name.get(&lower) {
            Some(target) => self.forward(target, rest, req).await,
            None if self.builtins && lower == "ping" => text(StatusCode::OK, "PONG"),
            None if self.builtins && lower == "echo" => echo(req),
            None => relay_error(
                StatusCode::NOT_FOUND,
                "target-unknown",
                format!("target '{name}' is not configured at this connector"),
            ),
        };
        if trace && let Ok(v) = HeaderValue::from_str(&started.elapsed().as_millis().to_string()) {
            response.headers_mut().insert(headers::TARGET_DURATION, v);
        }
        response
    }

    async fn forward(
        &self,
        target: &Target,
        rest: &str,
        req: Request<Incoming>,
    ) -> Response<ResponseBody> {
        let path = rest.split_once('?').map_or(rest, |(path, _)| path);
        // The relay refuses what no target may get; only the connector knows this target's
        // policy for `%2F` and `%25`, and it never trusts the relay alone.
        if let Err(e) = relay_proto::path::check_rest_with(path, target.slashes) {
            let reason = if relay_proto::path::check_rest_lenient(path).is_ok() {
                format!(
                    "{} (this target has encoded_slashes = \"reject\")",
                    e.reason()
                )
            } else {
                e.reason().to_owned()
            };
            return relay_error(StatusCode::BAD_REQUEST, "path-invalid", reason);
        }
        let (mut parts, body) = req.into_parts();
        let mut uri = match join(&target.base, rest) {
            Ok(uri) => uri,
            Err(e) => return relay_error(StatusCode::BAD_REQUEST, "bad-path", e),
        };
        add_forwarding_headers(&mut parts.headers, target.trust_client_forwarded);
        let request_id = parts.headers.get(headers::REQUEST_ID).cloned();
        let request_id = request_id
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-");
        let ack_url = parts.headers.remove(headers::ACKNOWLEDGE_URL);
        headers::strip_relay_headers(&mut parts.headers);
        if let Some(url) = ack_url {
            // Manual acknowledge mode: the target acknowledges through the relay itself.
            parts.headers.insert(headers::ACKNOWLEDGE_URL, url);
        }
        headers::strip_hop_by_hop(&mut parts.headers);
        parts.headers.insert(header::HOST, target.host.clone());
        let follow = target.follow_redirects && matches!(parts.method, Method::GET | Method::HEAD);
        // The target's timeout counts from the end of the request body: a big upload to a
        // target that answers right after it is not cut by it.
        let ended = Arc::new(BodyEnd::default());
        if http_body::Body::is_end_stream(&body) {
            ended.finish();
        }
        let mut body = Some(
            EndWatched {
                inner: body.boxed(),
                end: ended.clone(),
            }
            .boxed(),
        );
        for _ in 0..=MAX_REDIRECTS {
            let mut out = Request::builder()
                .method(parts.method.clone())
                .uri(uri.clone())
                .body(
                    body.take()
                        .unwrap_or_else(|| Empty::new().map_err(never).boxed()),
                )
                .unwrap_or_default();
            // Only a redirect-following call needs the headers again.
            *out.headers_mut() = if follow {
                parts.headers.clone()
            } else {
                std::mem::take(&mut parts.headers)
            };
            let response = match after_body(target.client.request(out), &ended, target.timeout)
                .await
            {
                Err(_) => {
                    tracing::info!(request_id, uri = %without_query(&uri), timeout = ?target.timeout, "Target timed out.");
                    return relay_error(
                        StatusCode::GATEWAY_TIMEOUT,
                        "target-timeout",
                        format!(
                            "target did not answer within {}",
                            humantime_secs(target.timeout)
                        ),
                    );
                }
                Ok(Err(e)) => {
                    tracing::info!(request_id, uri = %without_query(&uri), error = %relay_core::error_chain(&e), "Target call failed.");
                    let reason = if e.is_connect() {
                        "target unreachable"
                    } else {
                        "target failed"
                    };
                    return relay_error(
                        StatusCode::BAD_GATEWAY,
                        "target-unreachable",
                        reason.to_owned(),
                    );
                }
                Ok(Ok(response)) => response,
            };
            // Later hops (GET and HEAD) carry no body.
            ended.finish();
            match redirect_location(follow, &response)
                .and_then(|l| target.redirects.follow(&uri, l))
            {
                Some(Hop {
                    uri: next,
                    to_target,
                }) => {
                    if !to_target {
                        // The client's credentials were meant for the target alone.
                        for name in [
                            header::AUTHORIZATION,
                            header::COOKIE,
                            header::PROXY_AUTHORIZATION,
                        ] {
                            parts.headers.remove(name);
                        }
                    }
                    if next.authority() != uri.authority()
                        && let Some(host) = next
                            .authority()
                            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
                    {
                        parts.headers.insert(header::HOST, host);
                    }
                    uri = next;
                }
                None => {
                    let (mut parts, body) = response.into_parts();
                    headers::strip_hop_by_hop(&mut parts.headers);
                    headers::strip_relay_headers(&mut parts.headers);
                    return Response::from_parts(parts, body.boxed());
                }
            }
        }
        relay_error(
            StatusCode::BAD_GATEWAY,
            "too-many-redirects",
            "target redirected too often".into(),
        )
    }
}

/// Whether a request body was read to its end (or failed), for the target timeout.
#[derive(Default)]
struct BodyEnd {
    done: std::sync::atomic::AtomicBool,
    notify: tokio::sync::Notify,
}

impl BodyEnd {
    fn finish(&self) {
        self.done.store(true, std::sync::atomic::Ordering::Release);
        self.notify.notify_waiters();
    }

    async fn wait(&self) {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.done.load(std::sync::atomic::Ordering::Acquire) {
                return;
            }
            notified.await;
        }
    }
}

/// A body that marks its [`BodyEnd`] once it ended or failed.
struct EndWatched {
    inner: http_body_util::combinators::BoxBody<Bytes, hyper::Error>,
    end: Arc<BodyEnd>,
}

impl http_body::Body for EndWatched {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, hyper::Error>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            std::task::Poll::Ready(None | Some(Err(_))) => self.end.finish(),
            std::task::Poll::Ready(Some(Ok(_))) if self.inner.is_end_stream() => {
                self.end.finish();
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// `call`, given `timeout` from the moment the request body ended (the body's own stalls
/// are bounded by the relay's `body_idle_timeout`).
async fn after_body<F: std::future::Future>(
    call: F,
    ended: &BodyEnd,
    timeout: Duration,
) -> Result<F::Output, tokio::time::error::Elapsed> {
    let mut call = std::pin::pin!(call);
    tokio::select! {
        output = call.as_mut() => return Ok(output),
        () = ended.wait() => {}
    }
    tokio::time::timeout(timeout, call).await
}

/// `uri` for logs: scheme, host and path; the query (which may carry tokens) left out.
fn without_query(uri: &Uri) -> String {
    format!(
        "{}://{}{}",
        uri.scheme_str().unwrap_or("http"),
        uri.authority()
            .map_or(String::new(), |a| match a.port_u16() {
                Some(port) => format!("{}:{port}", a.host()),
                None => a.host().to_owned(),
            }),
        uri.path()
    )
}

fn never(e: std::convert::Infallible) -> hyper::Error {
    match e {}
}

fn humantime_secs(d: Duration) -> String {
    format!("{}s", d.as_secs_f64())
}

/// `base` + `rest`, keeping the base path: `http://h/base` + `/x?q` = `http://h/base/x?q`.
fn join(base: &Uri, rest: &str) -> Result<Uri, String> {
    let base_path = base.path().trim_end_matches('/');
    let rest = if rest.starts_with('/') || rest.starts_with('?') {
        rest.to_owned()
    } else {
        format!("/{rest}")
    };
    let mut path = format!("{base_path}{rest}");
    if path.is_empty() || path.starts_with('?') {
        path.insert(0, '/');
    }
    let mut parts = base.clone().into_parts();
    parts.path_and_query = Some(path.parse().map_err(|e| format!("invalid path: {e}"))?);
    Uri::from_parts(parts).map_err(|e| format!("invalid path: {e}"))
}

/// The `Location` of a redirect the target answered, when redirects are followed.
fn redirect_location(follow: bool, response: &Response<Incoming>) -> Option<&str> {
    if !follow || !response.status().is_redirection() {
        return None;
    }
    response.headers().get(header::LOCATION)?.to_str().ok()
}

fn echo(req: Request<Incoming>) -> Response<ResponseBody> {
    let content_type = req.headers().get(header::CONTENT_TYPE).cloned();
    let mut response = Response::new(req.into_body().boxed());
    if let Some(ct) = content_type {
        response.headers_mut().insert(header::CONTENT_TYPE, ct);
    }
    response
}

fn text(status: StatusCode, body: &'static str) -> Response<ResponseBody> {
    let mut response = Response::new(
        Full::new(Bytes::from_static(body.as_bytes()))
            .map_err(never)
            .boxed(),
    );
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// A response the connector makes itself, marked with `x-relay-error` so the server can
/// tell it from a target's answer.
pub fn relay_error(
    status: StatusCode,
    code: &'static str,
    message: String,
) -> Response<ResponseBody> {
    let mut response = Response::new(
        Full::new(Bytes::from(message + "\n"))
            .map_err(never)
            .boxed(),
    );
    *response.status_mut() = status;
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(headers::RELAY_ERROR, HeaderValue::from_static(code));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_keeps_base_path_and_query() {
        let base: Uri = "http://h:8080/base".parse().expect("uri");
        assert_eq!(
            join(&base, "/x/y?q=1").expect("joins").to_string(),
            "http://h:8080/base/x/y?q=1"
        );
        assert_eq!(
            join(&base, "/").expect("joins").to_string(),
            "http://h:8080/base/"
        );
        let root: Uri = "http://h".parse().expect("uri");
        assert_eq!(join(&root, "/").expect("joins").to_string(), "http://h/");
        assert_eq!(
            join(&root, "?a=b").expect("joins").to_string(),
            "http://h/?a=b"
        );
    }
}
