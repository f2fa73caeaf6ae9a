//! The proxy's connections to its origin, and what each has answered: the one fact the
//! retry of a request an origin closed a connection under depends on.
//!
//! A request sent on a kept-alive connection just as the origin's idle timeout closed it
//! got nothing back, and is sent once more ([`forward`](mod@crate::forward)). A request
//! on a fresh connection that the origin closed unanswered, or one whose answer had
//! begun, is no such race: the origin took it and failed on it (a handler crashing its
//! worker on it: a "query of death"), and sending it again cost the origin a second
//! failure per request an attacker sent. hyper tells neither apart ("connection closed
//! before message completed" either way), so the connector counts, per connection, the
//! answers begun.
//!
//! A connection can also be kept from the pool once an answer on it showed that the
//! origin may frame it otherwise than hyper read it ([`Carriers`]).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll};

use http::{Extensions, HeaderMap, Request, StatusCode, Uri, header};
use hyper_util::client::legacy::connect::{
    CaptureConnection, Connected, Connection, HttpConnector, capture_connection,
};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tower::Service;

use crate::request_writes::RequestWrites;
use crate::response_heads::ResponseHeads;

/// No byte of an answer read since the current request's first byte was written.
const UNANSWERED: u8 = 0;
/// Bytes of an answer read since then.
const ANSWERING: u8 = 1;
/// Unanswered, on a connection that answered an earlier request: kept alive.
const KEPT_ALIVE_UNANSWERED: u8 = 2;

/// Where a connection is in its exchanges; one request at a time (HTTP/1.1, no
/// pipelining), so a write after bytes were read starts the next request.
#[derive(Debug)]
pub(crate) struct Exchanges(AtomicU8);

impl Default for Exchanges {
    fn default() -> Self {
        Self(AtomicU8::new(UNANSWERED))
    }
}

impl Exchanges {
    fn wrote(&self) {
        // Relaxed: one task drives the connection, and the error that is read with this
        // state reaches the request's task through a channel.
        if self.0.load(Ordering::Relaxed) == ANSWERING {
            self.0.store(KEPT_ALIVE_UNANSWERED, Ordering::Relaxed);
        }
    }

    fn read(&self) {
        self.0.store(ANSWERING, Ordering::Relaxed);
    }

    /// Whether the connection had answered an earlier request and sent nothing of the
    /// answer to the one under way (or last under way).
    fn kept_alive_unanswered(&self) -> bool {
        self.0.load(Ordering::Relaxed) == KEPT_ALIVE_UNANSWERED
    }
}

/// Whether a request failed on a kept-alive connection that sent nothing of its answer,
/// as the connection that carried it told (`connect_info`, from hyper's error).
pub(crate) fn kept_alive_unanswered(connection: Option<&Connected>) -> bool {
    let Some(connection) = connection else {
        return false;
    };
    let mut extras = Extensions::new();
    connection.get_extras(&mut extras);
    extras
        .get::<Arc<Exchanges>>()
        .is_some_and(|exchanges| exchanges.kept_alive_unanswered())
}

/// The connections a request (and its one retry) went out on.
#[derive(Default)]
pub(crate) struct Carriers(Vec<CaptureConnection>);

impl Carriers {
    /// Notes the connection `request` will go out on; it is retired at once if an
    /// informational answer on it is [`framed_two_ways`] (hyper skips those unseen).
    pub(crate) fn note<B>(&mut self, request: &mut Request<B>) {
        let captured = capture_connection(request);
        let carrier = captured.clone();
        hyper::ext::on_informational(request, move |informational| {
            if framed_two_ways(informational.status(), informational.headers()) {
                tracing::warn!(status = %informational.status(), "upstream framed an informational response with a body: its connection is not used again");
                retire(&carrier);
            }
        });
        self.0.push(captured);
    }

    /// Keeps every connection noted from the pool: each is closed once its answer ended.
    /// For an answer whose framing the origin may read otherwise than hyper did: what the
    /// origin still sends of it must never be read as the next request's answer.
    pub(crate) fn retire(&self) {
        self.0.iter().for_each(retire);
    }
}

fn retire(captured: &CaptureConnection) {
    if let Some(connected) = captured.connection_metadata().as_ref() {
        connected.poison();
    }
}

/// Whether a response head frames a body in a way other than the one hyper read it by,
/// so that the origin may go on sending it: `Content-Length` beside `Transfer-Encoding`
/// (RFC 9112 §6.3: "might indicate an attempt to perform ... response splitting"; a page
/// that names `Transfer-Encoding` itself, on a server that frames it by its length), or a
/// 1xx or 204 with a length other than 0 or a transfer coding, which neither carries
/// (RFC 9110 §8.6, RFC 9112 §6.1; a server that frames a page's 204 or 103 by the page's
/// own length, as gunicorn does, sends the body after it). hyper ends a 1xx or a 204 at
/// its head, and a chunked body at its last chunk. A HEAD's or a 304's length is the
/// representation's, no sign.
pub(crate) fn framed_two_ways(status: StatusCode, headers: &HeaderMap) -> bool {
    let chunked = headers.contains_key(header::TRANSFER_ENCODING);
    let mut lengths = headers.get_all(header::CONTENT_LENGTH).iter();
    if status.is_informational() || status == StatusCode::NO_CONTENT {
        return chunked || lengths.any(|length| length.as_bytes() != b"0");
    }
    chunked && lengths.next().is_some()
}

/// hyper's connector, whose connections count their exchanges ([`Exchanges`]).
#[derive(Clone)]
pub(crate) struct OriginConnector(pub(crate) HttpConnector);

type Connecting = Pin<Box<dyn Future<Output = Result<TokioIo<Counted>, crate::BoxError>> + Send>>;

impl Service<Uri> for OriginConnector {
    type Response = TokioIo<Counted>;
    type Error = crate::BoxError;
    type Future = Connecting;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connecting = self.0.call(uri);
        Box::pin(async move {
            let stream = connecting.await?.into_inner();
            Ok(TokioIo::new(Counted {
                stream,
                exchanges: Arc::default(),
                heads: ResponseHeads::default(),
                requests: RequestWrites::default(),
                released: Vec::new(),
                read_since_write: false,
            }))
        })
    }
}

/// An origin connection that keeps its [`Exchanges`], and hands hyper the response
/// heads it reads whole, closing the connection after one that frames a body otherwise
/// than hyper reads it ([`ResponseHeads`]).
pub(crate) struct Counted {
    stream: TcpStream,
    exchanges: Arc<Exchanges>,
    heads: ResponseHeads,
    /// Where the request being written stands.
    requests: RequestWrites,
    /// Read and held, for hyper to read next.
    released: Vec<u8>,
    /// Bytes read since the last write that could start a request: the next such write
    /// starts another exchange.
    read_since_write: bool,
}

impl Counted {
    /// A write beginning with `first` is about to go out.
    fn wrote(&mut self, first: &[u8]) -> io::Result<()> {
        // Where the request written stands is no longer known: no byte more goes out, and
        // hyper drops the connection, rather than a guess made of where an answer starts.
        if self.requests.lost() {
            return Err(lost_request());
        }
        self.exchanges.wrote();
        // The rest of a request written as its answer arrives starts no exchange, however
        // it starts (an upload holding a request line): its answer's body is no head.
        if self.requests.at_start() && std::mem::take(&mut self.read_since_write) {
            self.heads.wrote_after_read(first);
        }
        Ok(())
    }
}

/// The error of a connection whose request left the framing the proxy follows.
fn lost_request() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        "a request written to the origin left the framing the proxy follows",
    )
}

impl Connection for Counted {
    fn connected(&self) -> Connected {
        self.stream.connected().extra(Arc::clone(&self.exchanges))
    }
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if !this.released.is_empty() {
                let handed = this.released.len().min(buf.remaining());
                buf.put_slice(&this.released[..handed]);
                this.released.drain(..handed);
                return Poll::Ready(Ok(()));
            }
            let before = buf.filled().len();
            std::task::ready!(Pin::new(&mut this.stream).poll_read(cx, buf))?;
            if buf.filled().len() == before {
                // The end: what is held first, as it is.
                this.released = this.heads.ended();
                if this.released.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            this.exchanges.read();
            this.read_since_write = true;
            if !this.heads.watching() {
                return Poll::Ready(Ok(()));
            }
            // Taken back from hyper's buffer until the head is whole: once hyper has
            // parsed a bodiless answer's head, its connection may be back in the pool.
            let read = buf.filled()[before..].to_vec();
            buf.set_filled(before);
            this.released = this.heads.read(&read);
        }
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        this.wrote(buf)?;
        let polled = Pin::new(&mut this.stream).poll_write(cx, buf);
        if let Poll::Ready(Ok(written)) = polled {
            this.requests.wrote(buf.get(..written).unwrap_or(buf));
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let first = bufs
            .iter()
            .find(|buf| !buf.is_empty())
            .map_or(&[][..], |buf| &**buf);
        this.wrote(first)?;
        let polled = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(written)) = polled {
            // Every byte that went out, across the buffers: a chunk's size line and data
            // are buffers apart, and a write may end between them.
            let mut left = written;
            for buf in bufs {
                let taken = left.min(buf.len());
                this.requests.wrote(&buf[..taken]);
                left -= taken;
                if left == 0 {
                    break;
                }
            }
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // A request lost by its last write fails its own exchange here (hyper flushes
        // each request it writes), rather than its connection going back to the pool
        // and the next request on it, anyone's, failing at its first write (review TB).
        if self.requests.lost() {
            return Poll::Ready(Err(lost_request()));
        }
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_heads_that_frame_a_body_two_ways_keep_their_connection_from_the_pool() {
        let head = |fields: &[(&str, &str)]| {
            let mut headers = HeaderMap::new();
            for (name, value) in fields {
                headers.append(
                    http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                    http::HeaderValue::from_str(value).unwrap(),
                );
            }
            headers
        };
        let (ok, empty, unchanged, hints) = (
            StatusCode::OK,
            StatusCode::NO_CONTENT,
            StatusCode::NOT_MODIFIED,
            StatusCode::from_u16(103).unwrap(),
        );
        let length = head(&[("content-length", "5")]);
        let chunked = head(&[("transfer-encoding", "chunked")]);
        let both = head(&[("content-length", "5"), ("transfer-encoding", "chunked")]);
        let zero = head(&[("content-length", "0")]);
        for (status, headers, two_ways) in [
            (ok, &length, false),
            (ok, &chunked, false),
            (ok, &both, true),
            (unchanged, &length, false),
            (unchanged, &both, true),
            (empty, &zero, false),
            (empty, &HeaderMap::new(), false),
            (empty, &length, true),
            (empty, &chunked, true),
            (hints, &HeaderMap::new(), false),
            (hints, &length, true),
            (hints, &chunked, true),
        ] {
            assert_eq!(
                framed_two_ways(status, headers),
                two_ways,
                "{status} {headers:?}"
            );
        }
    }

    /// A request that left the framing followed once written whole (its last write): the
    /// flush that ends its writing fails, so that its own exchange ends with the
    /// connection, rather than the connection going back to the pool and failing the next
    /// request sent on it, another client's (review TB).
    #[tokio::test]
    async fn a_request_lost_by_its_last_write_fails_its_own_flush() {
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let stream = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let _origin = listener.accept().await.unwrap();
        let mut counted = Counted {
            stream,
            exchanges: Arc::default(),
            heads: ResponseHeads::default(),
            requests: RequestWrites::default(),
            released: Vec::new(),
            read_since_write: false,
        };
        counted
            .write_all(b"GET / HTTP/1.1\r\nhost: origin\r\n\r\n")
            .await
            .unwrap();
        counted.flush().await.unwrap();
        // A framing the watch does not follow, on a bodiless request.
        counted
            .write_all(b"GET / HTTP/1.1\r\ntransfer-encoding: gzip\r\n\r\n")
            .await
            .unwrap();
        assert!(counted.flush().await.is_err(), "the lost request's flush");
    }

    #[test]
    fn only_a_request_after_an_answer_with_none_of_its_own_is_kept_alive_unanswered() {
        let exchanges = Exchanges::default();
        // A fresh connection's request, unanswered.
        exchanges.wrote();
        assert!(!exchanges.kept_alive_unanswered());
        // Answered; the next request goes out (in two writes), unanswered.
        exchanges.read();
        exchanges.wrote();
        exchanges.wrote();
        assert!(exchanges.kept_alive_unanswered());
        // Its answer begun.
        exchanges.read();
        assert!(!exchanges.kept_alive_unanswered());
    }
}
