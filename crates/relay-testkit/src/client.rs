//! A plain HTTP client for tests, and deterministic byte streams with their SHA-256.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use sha2::{Digest, Sha256};

pub type TestBody = BoxBody<Bytes, std::io::Error>;

/// A pooled HTTP/1.1 client.
pub fn client() -> Client<HttpConnector, TestBody> {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new()).build(connector)
}

pub fn full(bytes: impl Into<Bytes>) -> TestBody {
    Full::new(bytes.into()).map_err(|e| match e {}).boxed()
}

/// A whole answer.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Sends a request and collects the whole answer.
pub async fn send(req: Request<TestBody>) -> Answer {
    let response = client().request(req).await.expect("request sent");
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("body read").to_bytes();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

pub async fn get(url: &str) -> Answer {
    send(Request::get(url).body(full(Bytes::new())).unwrap()).await
}

pub async fn post(url: &str, body: impl Into<Bytes>) -> Answer {
    send(
        Request::builder()
            .method(Method::POST)
            .uri(url)
            .body(full(body))
            .unwrap(),
    )
    .await
}

/// Byte `i` of every test pattern.
fn pattern_byte(i: u64) -> u8 {
    (i % 251) as u8 ^ ((i >> 12) as u8)
}

/// SHA-256 (hex) of the first `len` pattern bytes.
pub fn pattern_sha256(len: u64) -> String {
    let mut hasher = Sha256::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let mut i = 0;
    while i < len {
        let n = chunk.len().min((len - i) as usize);
        for (j, b) in chunk[..n].iter_mut().enumerate() {
            *b = pattern_byte(i + j as u64);
        }
        hasher.update(&chunk[..n]);
        i += n as u64;
    }
    hex(&hasher.finalize())
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A body of `len` pattern bytes produced on the fly, in 64 KiB chunks.
pub struct PatternBody {
    next: u64,
    len: u64,
}

impl PatternBody {
    pub fn new(len: u64) -> Self {
        PatternBody { next: 0, len }
    }
}

impl Body for PatternBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        if self.next >= self.len {
            return Poll::Ready(None);
        }
        let n = (64 * 1024).min(self.len - self.next);
        let start = self.next;
        let chunk: Vec<u8> = (start..start + n).map(pattern_byte).collect();
        self.next += n;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(chunk)))))
    }

    fn is_end_stream(&self) -> bool {
        self.next >= self.len
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.len - self.next)
    }
}

/// Reads a body to its end, returning its length and SHA-256 without keeping it.
pub async fn digest<B>(mut body: B) -> Result<(u64, String), B::Error>
where
    B: Body<Data = Bytes> + Unpin,
{
    let mut hasher = Sha256::new();
    let mut len = 0u64;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            len += data.len() as u64;
            hasher.update(&data);
        }
    }
    Ok((len, hex(&hasher.finalize())))
}
