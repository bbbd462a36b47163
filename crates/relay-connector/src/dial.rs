//! Outbound connections to relays and the token service: plain TCP or TLS (rustls, system
//! roots or `ca_file`), directly or through an HTTP proxy with `CONNECT`.
//!
//! The proxy comes from `proxy` in the configuration, else from `HTTPS_PROXY` (for
//! `https://` URLs) or `HTTP_PROXY` (for `http://` URLs), upper or lower case. `NO_PROXY`
//! lists hosts reached directly: `*`, exact names or IPs, and domain suffixes
//! (`example.com` and `.example.com` both match `a.example.com`). Plain `http://` URLs go
//! through the proxy with `CONNECT` too, since the tunnel is a long-lived upgraded stream.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use http::Uri;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::ServerName;

use crate::error::ConnectorError;

/// A byte stream to a relay or the token service.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}
pub type Stream = Pin<Box<dyn Io>>;

/// Time allowed to connect, pass the proxy and finish the TLS handshake.
const DIAL_TIMEOUT: Duration = Duration::from_secs(15);
/// Largest proxy answer head accepted.
const MAX_PROXY_HEAD: usize = 8 * 1024;

/// `http://[user:pass@]host:port` of a proxy.
#[derive(Debug, Clone)]
pub struct ProxyUrl {
    host: String,
    port: u16,
    /// `Proxy-Authorization` value, from the URL's user info.
    auth: Option<String>,
}

impl ProxyUrl {
    pub fn parse(raw: &str) -> Result<ProxyUrl, String> {
        let with_scheme = if raw.contains("://") {
            raw.to_owned()
        } else {
            format!("http://{raw}")
        };
        let uri: Uri = with_scheme
            .parse()
            .map_err(|e| format!("`{raw}` is not a proxy URL: {e}"))?;
        if uri.scheme_str() != Some("http") {
            return Err(format!("`{raw}`: only http:// proxies are supported"));
        }
        let authority = uri
            .authority()
            .ok_or_else(|| format!("`{raw}` has no host"))?;
        let auth = authority.as_str().rsplit_once('@').map(|(userinfo, _)| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(percent_decode(userinfo))
            )
        });
        Ok(ProxyUrl {
            host: authority.host().to_owned(),
            port: authority.port_u16().unwrap_or(80),
            auth,
        })
    }
}

fn percent_decode(s: &str) -> Vec<u8> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(hex) = s.get(i + 1..i + 3)
            && let Ok(b) = u8::from_str_radix(hex, 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

/// Which proxy, if any, each URL goes through.
#[derive(Debug, Clone, Default)]
pub struct ProxyRules {
    http: Option<ProxyUrl>,
    https: Option<ProxyUrl>,
    no_proxy: Vec<String>,
}

impl ProxyRules {
    /// From `configured` (the `proxy` key) and the process environment.
    pub fn from_env(configured: Option<&str>) -> Result<ProxyRules, String> {
        Self::from_lookup(configured, |name| {
            std::env::var(name)
                .ok()
                .or_else(|| std::env::var(name.to_ascii_lowercase()).ok())
                .filter(|v| !v.trim().is_empty())
        })
    }

    fn from_lookup(
        configured: Option<&str>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<ProxyRules, String> {
        let no_proxy = env("NO_PROXY")
            .map(|v| {
                v.split(',')
                    .map(|s| s.trim().to_ascii_lowercase())
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        let (http, https) = match configured {
            Some("none") => (None, None),
            Some(url) => {
                let p = ProxyUrl::parse(url)?;
                (Some(p.clone()), Some(p))
            }
            None => (
                env("HTTP_PROXY").map(|u| ProxyUrl::parse(&u)).transpose()?,
                env("HTTPS_PROXY")
                    .map(|u| ProxyUrl::parse(&u))
                    .transpose()?,
            ),
        };
        Ok(ProxyRules {
            http,
            https,
            no_proxy,
        })
    }

    fn for_target(&self, https: bool, host: &str) -> Option<&ProxyUrl> {
        let proxy = if https { &self.https } else { &self.http }.as_ref()?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        let bypass = self.no_proxy.iter().any(|entry| {
            let entry = entry
                .rsplit_once(':')
                .filter(|(_, port)| {
                    port.chars().all(|c| c.is_ascii_digit()) && !entry.starts_with('[')
                })
                .map_or(entry.as_str(), |(h, _)| h);
            let entry = entry.trim_start_matches('[').trim_end_matches(']');
            entry == "*"
                || host == entry.trim_start_matches('.')
                || host.ends_with(&format!(".{}", entry.trim_start_matches('.')))
        });
        (!bypass).then_some(proxy)
    }
}

/// Opens connections to relay and identity URLs.
pub struct Dialer {
    proxies: ProxyRules,
    tls: Option<TlsConnector>,
    tls_error: Option<String>,
}

impl Dialer {
    /// `ca_file` is read now; without it the system roots are loaded. A TLS set-up error is
    /// kept and reported when an `https://` URL is dialled, so plain-HTTP set-ups never fail
    /// on a broken system store.
    pub fn new(
        ca_file: Option<&std::path::Path>,
        proxy: Option<&str>,
    ) -> Result<Dialer, ConnectorError> {
        let proxies = ProxyRules::from_env(proxy)
            .map_err(|m| relay_core::config::ConfigError::key("proxy", m))?;
        let (tls, tls_error) = match relay_core::tls::client_connector(ca_file) {
            Ok(tls) => (Some(tls), None),
            Err(e) if ca_file.is_some() => {
                return Err(relay_core::config::ConfigError::key("ca_file", e.to_string()).into());
            }
            Err(e) => (None, Some(e.to_string())),
        };
        Ok(Dialer {
            proxies,
            tls,
            tls_error,
        })
    }

    /// Connects to the host of `uri` (through the proxy when one applies) and, for
    /// `https://`, completes the TLS handshake.
    pub async fn dial(&self, uri: &Uri) -> Result<Stream, ConnectorError> {
        let unreachable = |message: String| ConnectorError::Unreachable {
            url: uri.to_string(),
            message,
        };
        tokio::time::timeout(DIAL_TIMEOUT, self.dial_inner(uri))
            .await
            .map_err(|_| unreachable("timed out".into()))?
            .map_err(unreachable)
    }

    async fn dial_inner(&self, uri: &Uri) -> Result<Stream, String> {
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            other => return Err(format!("unsupported scheme {other:?}")),
        };
        let host = uri.host().ok_or("no host")?;
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let bare_host = host.trim_start_matches('[').trim_end_matches(']');
        let tcp = match self.proxies.for_target(https, host) {
            Some(proxy) => {
                let tcp = TcpStream::connect((proxy.host.as_str(), proxy.port))
                    .await
                    .map_err(|e| format!("proxy {}:{}: {e}", proxy.host, proxy.port))?;
                connect_through(tcp, proxy, host, port).await?
            }
            None => TcpStream::connect((bare_host, port))
                .await
                .map_err(|e| e.to_string())?,
        };
        let _ = tcp.set_nodelay(true);
        if !https {
            return Ok(Box::pin(tcp));
        }
        let Some(tls) = &self.tls else {
            return Err(self
                .tls_error
                .clone()
                .unwrap_or_else(|| "TLS unavailable".into()));
        };
        let name = ServerName::try_from(bare_host.to_owned())
            .map_err(|e| format!("`{bare_host}` is not a TLS server name: {e}"))?;
        let stream = tls
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        Ok(Box::pin(stream))
    }
}

/// `CONNECT host:port` on a fresh proxy connection; returns it once the proxy answered 2xx.
async fn connect_through(
    mut tcp: TcpStream,
    proxy: &ProxyUrl,
    host: &str,
    port: u16,
) -> Result<TcpStream, String> {
    let target = format!("{host}:{port}");
    let mut head = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
    if let Some(auth) = &proxy.auth {
        head.push_str(&format!("Proxy-Authorization: {auth}\r\n"));
    }
    head.push_str("\r\n");
    tcp.write_all(head.as_bytes())
        .await
        .map_err(|e| format!("proxy: {e}"))?;
    // Read byte-wise up to the end of the head, so nothing after it is consumed.
    let mut answer = Vec::with_capacity(256);
    let mut byte = [0u8; 1];
    while !answer.ends_with(b"\r\n\r\n") {
        if answer.len() >= MAX_PROXY_HEAD {
            return Err("proxy: answer head too long".into());
        }
        let n = tcp
            .read(&mut byte)
            .await
            .map_err(|e| format!("proxy: {e}"))?;
        if n == 0 {
            return Err("proxy closed the connection".into());
        }
        answer.push(byte[0]);
    }
    let status_line = String::from_utf8_lossy(&answer);
    let status_line = status_line.lines().next().unwrap_or_default();
    let code = status_line.split_whitespace().nth(1).unwrap_or_default();
    if !code.starts_with('2') {
        return Err(format!("proxy refused CONNECT {target}: {status_line}"));
    }
    Ok(tcp)
}

/// Shared by the control client and the tunnels.
pub type SharedDialer = Arc<Dialer>;

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(configured: Option<&str>, env: &[(&str, &str)]) -> ProxyRules {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        ProxyRules::from_lookup(configured, |name| {
            env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
        })
        .expect("rules")
    }

    #[test]
    fn environment_proxies_by_scheme_and_no_proxy() {
        let r = rules(
            None,
            &[
                ("HTTPS_PROXY", "http://proxy:3128"),
                ("NO_PROXY", "localhost, .internal,10.0.0.1,example.org:443"),
            ],
        );
        assert_eq!(
            r.for_target(true, "relay.example.com").map(|p| p.port),
            Some(3128)
        );
        assert!(
            r.for_target(false, "relay.example.com").is_none(),
            "no HTTP_PROXY"
        );
        assert!(r.for_target(true, "localhost").is_none());
        assert!(r.for_target(true, "relay.internal").is_none());
        assert!(r.for_target(true, "internal").is_none());
        assert!(r.for_target(true, "10.0.0.1").is_none());
        assert!(r.for_target(true, "a.example.org").is_none());
        assert!(r.for_target(true, "notinternal").is_some());
    }

    #[test]
    fn configured_proxy_wins_and_none_disables() {
        let env = [("HTTPS_PROXY", "http://env:1"), ("NO_PROXY", "*")];
        let r = rules(Some("http://u:p%40ss@cfg:8080"), &env[..1]);
        let p = r.for_target(false, "relay").expect("proxied");
        assert_eq!((p.host.as_str(), p.port), ("cfg", 8080));
        let expected = base64::engine::general_purpose::STANDARD.encode("u:p@ss");
        assert_eq!(
            p.auth.as_deref(),
            Some(format!("Basic {expected}").as_str())
        );
        assert!(
            rules(Some("none"), &env[..1])
                .for_target(true, "relay")
                .is_none()
        );
        assert!(rules(None, &env).for_target(true, "relay").is_none());
    }

    #[test]
    fn proxy_urls_are_checked() {
        assert!(ProxyUrl::parse("proxy:3128").is_ok());
        assert!(ProxyUrl::parse("https://proxy:3128").is_err());
        assert!(ProxyUrl::parse("http://").is_err());
    }
}
