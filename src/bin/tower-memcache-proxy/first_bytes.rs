//! A deadline on a connection's first bytes. hyper tells HTTP/1 from HTTP/2 by them
//! (the HTTP/2 preface) with no timeout of its own, before its HTTP/1 header timeout
//! starts: a client that connects and sends nothing, or the preface's first bytes only,
//! would hold the connection forever.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// What hyper reads to choose the protocol.
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// `io` whose reads fail with `TimedOut` when its client has not sent enough to choose a
/// protocol within the deadline; then a plain pass-through.
pub(crate) struct FirstBytes<T> {
    io: T,
    /// Until the bytes read differ from the preface, or hold all of it.
    deadline: Option<Pin<Box<Sleep>>>,
    /// How many bytes read so far match the preface.
    matched: usize,
}

impl<T> FirstBytes<T> {
    pub(crate) fn new(io: T, within: Duration) -> Self {
        Self {
            io,
            deadline: Some(Box::pin(tokio::time::sleep(within))),
            matched: 0,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for FirstBytes<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        let Some(deadline) = &mut this.deadline else {
            return polled;
        };
        if let Poll::Ready(Ok(())) = &polled {
            let read = &buf.filled()[before..];
            let expected = &H2_PREFACE[this.matched..];
            let common = read
                .iter()
                .zip(expected)
                .take_while(|(a, b)| a == b)
                .count();
            this.matched += common;
            // A byte off the preface (HTTP/1), the whole preface (HTTP/2), or the end of
            // the stream: hyper's own timeouts, or none needed, from here on.
            if common < read.len() || this.matched == H2_PREFACE.len() || read.is_empty() {
                this.deadline = None;
            }
            return polled;
        }
        if polled.is_pending() && deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no request in time",
            )));
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for FirstBytes<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}
