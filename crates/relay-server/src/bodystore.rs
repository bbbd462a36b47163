//! The body store: a directory (a shared volume in multi-node set-ups) holding bodies that
//! are too large to travel inline in a broker message, and spooled `queue`-mode bodies.
//!
//! Bodies are streamed to and from files, never held whole in memory. Every file is deleted
//! after use; [`BodyStore::sweep`] removes orphans (a node died between write and use).

use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use futures_util::TryStreamExt;
use http_body::{Body, Frame};
use http_body_util::{BodyExt, StreamBody};
use relay_bus::BodyRef;
use tokio::io::AsyncWriteExt;
use tokio_util::io::ReaderStream;

use crate::registry::{BoxError, TunnelBody};

#[derive(Clone)]
pub struct BodyStore {
    dir: PathBuf,
}

/// Why a body could not be stored.
#[derive(Debug, thiserror::Error)]
pub enum StoreBodyError {
    /// The body's own stream failed (client or connector went away, or a limit tripped).
    #[error("body stream failed: {0}")]
    Source(BoxError),
    #[error("body store: {0}")]
    Io(#[from] std::io::Error),
}

impl BodyStore {
    pub fn new(dir: PathBuf) -> Self {
        BodyStore { dir }
    }

    fn path(&self, key: &str) -> Option<PathBuf> {
        let safe = !key.is_empty()
            && key.len() <= 128
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
            && !key.starts_with('.');
        safe.then(|| self.dir.join(key))
    }

    /// Reads `body`; keeps it inline when it ends within `inline_limit` bytes, otherwise
    /// streams all of it to the file `key` (memory stays bounded by `inline_limit`).
    pub async fn inline_or_store<B>(
        &self,
        mut body: B,
        inline_limit: usize,
        key: &str,
    ) -> Result<BodyRef, StoreBodyError>
    where
        B: Body<Data = Bytes> + Unpin,
        B::Error: Into<BoxError>,
    {
        let mut head = BytesMut::new();
        loop {
            match body.frame().await {
                None => {
                    return Ok(if head.is_empty() {
                        BodyRef::Empty
                    } else {
                        BodyRef::Inline(head.freeze())
                    });
                }
                Some(Err(e)) => return Err(StoreBodyError::Source(e.into())),
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        head.extend_from_slice(&data);
                        if head.len() > inline_limit {
                            break;
                        }
                    }
                }
            }
        }
        let path = self
            .path(key)
            .ok_or_else(|| std::io::Error::other("invalid body key"))?;
        let result = async {
            let mut file = relay_core::files::private_write_options()
                .open(&path)
                .await?;
            file.write_all(&head).await?;
            let mut len = head.len() as u64;
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| StoreBodyError::Source(e.into()))?;
                if let Ok(data) = frame.into_data() {
                    file.write_all(&data).await?;
                    len += data.len() as u64;
                }
            }
            file.flush().await?;
            Ok::<u64, StoreBodyError>(len)
        }
        .await;
        match result {
            Ok(len) => Ok(BodyRef::Stored {
                key: key.to_owned(),
                len,
            }),
            Err(e) => {
                let _ = tokio::fs::remove_file(&path).await;
                Err(e)
            }
        }
    }

    /// A streaming body for `body`; a stored file is deleted once read to the end or
    /// dropped when `consume` is true.
    pub async fn open(&self, body: &BodyRef, consume: bool) -> std::io::Result<TunnelBody> {
        match body {
            BodyRef::Empty => Ok(http_body_util::Empty::new().map_err(|e| match e {}).boxed()),
            BodyRef::Inline(bytes) => Ok(http_body_util::Full::new(bytes.clone())
                .map_err(|e| match e {})
                .boxed()),
            BodyRef::Stored { key, .. } => {
                let path = self
                    .path(key)
                    .ok_or_else(|| std::io::Error::other("invalid body key"))?;
                let file = tokio::fs::File::open(&path).await?;
                let stream = ReaderStream::with_capacity(file, 256 * 1024)
                    .map_ok(Frame::data)
                    .map_err(|e| Box::new(e) as BoxError);
                let body = StreamBody::new(stream);
                Ok(DeleteOnDrop {
                    inner: body,
                    path: consume.then_some(path),
                }
                .boxed())
            }
        }
    }

    /// Deletes a stored body (no-op for inline ones).
    pub async fn remove(&self, body: &BodyRef) {
        if let BodyRef::Stored { key, .. } = body
            && let Some(path) = self.path(key)
        {
            let _ = tokio::fs::remove_file(path).await;
        }
    }

    /// Removes files older than `max_age`; returns how many.
    pub async fn sweep(&self, max_age: Duration) -> usize {
        let Ok(mut dir) = tokio::fs::read_dir(&self.dir).await else {
            return 0;
        };
        let mut removed = 0;
        while let Ok(Some(entry)) = dir.next_entry().await {
            let old = entry
                .metadata()
                .await
                .ok()
                .and_then(|m| m.modified().ok())
                .and_then(|t| SystemTime::now().duration_since(t).ok())
                .is_some_and(|age| age > max_age);
            if old && tokio::fs::remove_file(entry.path()).await.is_ok() {
                removed += 1;
            }
        }
        removed
    }
}

/// A body that deletes its backing file when dropped (after being read, or abandoned).
struct DeleteOnDrop<B> {
    inner: B,
    path: Option<PathBuf>,
}

impl<B: Body + Unpin> Body for DeleteOnDrop<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Drop for DeleteOnDrop<B> {
    fn drop(&mut self) {
        if let Some(path) = self.path.take() {
            // Unlinking an open file is fine on Unix; the reader keeps its handle.
            let _ = std::fs::remove_file(path);
        }
    }
}
