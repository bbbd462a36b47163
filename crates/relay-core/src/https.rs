//! An HTTP client connector that speaks TLS to `https://` URLs, for the services' outbound
//! HTTP calls: JWKS fetches by the relay and the management API, and the connector's calls to
//! its targets.

use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use http::Uri;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::tls::TlsError;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Connects `http://` URLs over TCP and `https://` URLs over TLS, verified against
/// `ca_file` or the system roots.
#[derive(Clone)]
pub struct HttpsConnector {
    http: HttpConnector,
    /// The TLS client: built at once from a `ca_file`, from the system roots on the first
    /// `https://` call (plain-HTTP users never read the system store). A failure (no system
    /// roots) is kept and fails only the `https://` calls, with its reason.
    tls: Arc<OnceLock<Result<TlsConnector, String>>>,
}

impl HttpsConnector {
    /// Trusts `ca_file` when given (read now: an unreadable file is an error here), else the
    /// system roots (`SSL_CERT_FILE` honoured), read on the first `https://` call.
    pub fn new(ca_file: Option<&Path>) -> Result<HttpsConnector, TlsError> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_keepalive(Some(std::time::Duration::from_secs(60)));
        let tls = OnceLock::new();
        if let Some(path) = ca_file {
            let _ = tls.set(Ok(crate::tls::client_connector(Some(path))?));
        }
        Ok(HttpsConnector {
            http,
            tls: Arc::new(tls),
        })
    }

    fn tls(&self) -> Result<TlsConnector, String> {
        self.tls
            .get_or_init(|| crate::tls::client_connector(None).map_err(|e| e.to_string()))
            .clone()
    }
}

/// A connection made by [`HttpsConnector`].
pub enum MaybeHttps {
    Plain(TokioIo<TcpStream>),
    Tls(Box<TokioIo<TlsStream<TcpStream>>>),
}

impl tower_service::Service<Uri> for HttpsConnector {
    type Response = MaybeHttps;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<MaybeHttps, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.http.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let https = uri.scheme_str() == Some("https");
        let host = uri.host().unwrap_or_default().to_owned();
        let tls = https.then(|| self.tls());
        let connecting = self.http.call(uri);
        Box::pin(async move {
            let Some(tls) = tls else {
                return Ok(MaybeHttps::Plain(connecting.await?));
            };
            let tls = tls?;
            let tcp = connecting.await?;
            // `[::1]` in a URI is `::1` as a server name.
            let name = ServerName::try_from(host.trim_start_matches('[').trim_end_matches(']'))?
                .to_owned();
            let stream = tls.connect(name, tcp.into_inner()).await?;
            Ok(MaybeHttps::Tls(Box::new(TokioIo::new(stream))))
        })
    }
}

impl Connection for MaybeHttps {
    fn connected(&self) -> Connected {
        match self {
            MaybeHttps::Plain(io) => io.connected(),
            MaybeHttps::Tls(io) => io.inner().get_ref().0.connected(),
        }
    }
}

impl Read for MaybeHttps {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeHttps::Plain(io) => Pin::new(io).poll_read(cx, buf),
            MaybeHttps::Tls(io) => Pin::new(io.as_mut()).poll_read(cx, buf),
        }
    }
}

impl Write for MaybeHttps {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeHttps::Plain(io) => Pin::new(io).poll_write(cx, buf),
            MaybeHttps::Tls(io) => Pin::new(io.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeHttps::Plain(io) => Pin::new(io).poll_flush(cx),
            MaybeHttps::Tls(io) => Pin::new(io.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeHttps::Plain(io) => Pin::new(io).poll_shutdown(cx),
            MaybeHttps::Tls(io) => Pin::new(io.as_mut()).poll_shutdown(cx),
        }
    }
}

/// An HTTP/1.1 client over [`HttpsConnector`].
pub fn client<B>(
    ca_file: Option<&Path>,
) -> Result<hyper_util::client::legacy::Client<HttpsConnector, B>, TlsError>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
{
    let connector = HttpsConnector::new(ca_file)?;
    Ok(
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(connector),
    )
}
