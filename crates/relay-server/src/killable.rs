//! A tunnel's byte stream that the relay can cut.
//!
//! hyper drives an HTTP/2 client connection from a task of its own that stays alive while
//! any stream is open, so dropping the connection handle does not end requests in flight.
//! A tunnel whose credentials went away must stop at once: [`Killable`] fails every read
//! and write once its token is cancelled, which ends the HTTP/2 connection and with it every
//! stream (their clients get `502`).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper::rt::{Read, ReadBufCursor, Write};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

///
/// The hot path costs one atomic load per read or write; the kill's waker is registered only
/// when a read has to wait (where the connection's task parks anyway).
pub struct Killable<T> {
    inner: T,
    kill: CancellationToken,
    killed: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl<T> Killable<T> {
    pub fn new(inner: T, kill: CancellationToken) -> Self {
        Killable {
            inner,
            killed: Box::pin(kill.clone().cancelled_owned()),
            kill,
        }
    }

    fn check(&self) -> io::Result<()> {
        if self.kill.is_cancelled() {
            Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "tunnel closed by the relay",
            ))
        } else {
            Ok(())
        }
    }
}

impl<T: Read + Unpin> Read for Killable<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.check()?;
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            // An idle connection waits here: make the kill wake it.
            Poll::Pending => match this.killed.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(this.check()),
                Poll::Pending => Poll::Pending,
            },
            ready => ready,
        }
    }
}

impl<T: Write + Unpin> Write for Killable<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.check()?;
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.check()?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.check()?;
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }
}
