//! Fetching JSON documents from the authority.
//!
//! The HTTP client sits behind [`FetchJson`] so that [`crate::Validator`] stays one
//! concrete type whatever connector (plain HTTP today, HTTPS later) the caller plugs in.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, Uri, header};
use http_body_util::{BodyExt as _, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::Connect;
use serde::de::DeserializeOwned;

/// Largest discovery document or JWKS we read.
const MAX_BODY: usize = 1024 * 1024;
/// Deadline for one whole request, body included.
const TIMEOUT: Duration = Duration::from_secs(10);

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Issues a GET and returns the body of a `200` answer; errors are log-safe strings.
pub(crate) trait FetchJson: Send + Sync + 'static {
    fn get(&self, uri: Uri) -> BoxFuture<'_, Result<Bytes, String>>;
}

/// [`FetchJson`] over hyper-util's pooled legacy client.
pub(crate) struct HyperFetcher<C> {
    pub(crate) client: Client<C, Empty<Bytes>>,
}

impl<C> FetchJson for HyperFetcher<C>
where
    C: Connect + Clone + Send + Sync + 'static,
{
    fn get(&self, uri: Uri) -> BoxFuture<'_, Result<Bytes, String>> {
        Box::pin(async move {
            match tokio::time::timeout(TIMEOUT, self.get_inner(&uri)).await {
                Ok(result) => result,
                Err(_) => Err(format!("GET {uri} timed out after {TIMEOUT:?}")),
            }
        })
    }
}

impl<C> HyperFetcher<C>
where
    C: Connect + Clone + Send + Sync + 'static,
{
    async fn get_inner(&self, uri: &Uri) -> Result<Bytes, String> {
        let request = Request::get(uri.clone())
            .header(header::ACCEPT, "application/json")
            .body(Empty::new())
            .map_err(|e| format!("GET {uri}: {e}"))?;
        let response = self
            .client
            .request(request)
            .await
            .map_err(|e| format!("GET {uri}: {e}"))?;
        if response.status() != StatusCode::OK {
            return Err(format!("GET {uri}: status {}", response.status()));
        }
        let body = Limited::new(response.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| format!("GET {uri}: reading body: {e}"))?;
        Ok(body.to_bytes())
    }
}

/// Fetches `uri` and parses it as JSON.
pub(crate) async fn get_json<T: DeserializeOwned>(
    fetcher: &dyn FetchJson,
    uri: Uri,
) -> Result<T, String> {
    let shown = uri.to_string();
    let body = fetcher.get(uri).await?;
    serde_json::from_slice(&body).map_err(|e| format!("GET {shown}: invalid JSON: {e}"))
}
