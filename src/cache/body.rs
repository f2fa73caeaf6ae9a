//! [`ResponseBody`]: a body served from the cache, or the inner service's body passed
//! through while (when the response is being stored) a bounded copy is taken.

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, StatusCode, header};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use super::background::Background;
use super::fill::reader::{self, FillBudget, QueueReader};
use super::stored::parse_decimal;

/// Receives the complete body of a response being stored, or `None` once the response
/// turned out not storable (too large, failed, trailers).
pub(crate) type OnComplete = Box<dyn FnOnce(Option<Bytes>) + Send>;

/// Called once when the reading of a body being copied has to wait for its client (see
/// [`Tee::stalled`]).
pub(crate) type OnStall = Box<dyn FnOnce() + Send>;

/// What a response declares of its body's length: the body's size hint, narrowed to its
/// `Content-Length` where it has one that hyper would frame it by (not beside
/// `Transfer-Encoding`, which overrides it, RFC 9112 §6.3). `None` when the lengths
/// cannot all hold (two fields that disagree, a field the hint excludes, a field that is
/// no number): no body is then the response its client was framed. A status that has no
/// content (1xx, 204, 304) declares none whatever its fields say (RFC 9110 §8.6, §15.3.5,
/// §15.4.5): hyper frames it empty.
pub(crate) fn declared_size(
    status: StatusCode,
    headers: &HeaderMap,
    mut hint: SizeHint,
) -> Option<SizeHint> {
    if status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
        || headers.contains_key(header::TRANSFER_ENCODING)
    {
        return Some(hint);
    }
    for value in headers.get_all(header::CONTENT_LENGTH) {
        let length = parse_decimal(value.as_bytes())?;
        if length < hint.lower() || hint.upper().is_some_and(|upper| length > upper) {
            return None;
        }
        hint.set_exact(length);
    }
    Some(hint)
}

/// A bounded copy of a body in flight: its first chunk as it came (reference-counted,
/// shared with the client's queue, so a body of one frame is stored without a copy), and
/// from the second on every chunk copied into one buffer. Kept as they came, many small
/// chunks would each pin the buffer they are slices of (hyper's read buffer) and cost a
/// handle besides: many times the entry size limit for a body within it. A body that
/// turns out not storable is [`refuse`](Self::refuse)d; dropping the copy without either
/// (its client went away) stores nothing and says nothing, and requests waiting for the
/// response then elect another leader.
pub(crate) struct Tee {
    first: Bytes,
    /// The first chunk and those after it, once there is a second.
    joined: BytesMut,
    len: usize,
    limit: usize,
    /// The size the body declared at least (within `limit`): room for it is made at once,
    /// and a body that ends short of it is not stored.
    expected: usize,
    /// The length the response declared at most (its `Content-Length`, its body's exact
    /// size hint): a body that runs past it is not the response its client was framed.
    most: Option<u64>,
    on_complete: OnComplete,
    on_stall: Option<OnStall>,
}

impl Tee {
    /// A copy of a body that declared `size_hint` (the body's own hint, bounded by the
    /// response's `Content-Length` where it has one: see [`declared_size`]), or `None`
    /// when it cannot be stored whole (declared past `limit`, or lengths that disagree).
    pub(crate) fn new(
        limit: usize,
        size_hint: Option<&SizeHint>,
        on_complete: OnComplete,
    ) -> Option<Self> {
        let Some(size_hint) = size_hint else {
            tracing::debug!("response declares body lengths that disagree; not stored");
            on_complete(None);
            return None;
        };
        if size_hint.lower() > limit as u64 {
            // Declared larger than we keep: don't even start.
            tracing::debug!(
                declared = size_hint.lower(),
                limit,
                "response body declared over the entry size limit; not stored"
            );
            on_complete(None);
            return None;
        }
        Some(Self {
            first: Bytes::new(),
            joined: BytesMut::new(),
            len: 0,
            limit,
            expected: usize::try_from(size_hint.lower()).unwrap_or(limit),
            most: size_hint.upper(),
            on_complete,
            on_stall: None,
        })
    }

    /// With `on_stall` to call the first time the copy's reading has to wait for its
    /// client.
    pub(crate) fn on_stall(mut self, on_stall: Option<OnStall>) -> Self {
        self.on_stall = on_stall;
        self
    }

    /// Whether [`stalled`](Self::stalled) would still do something.
    pub(crate) fn may_stall(&self) -> bool {
        self.on_stall.is_some()
    }

    /// The reading of the body has to wait for its client (the layer's `fill_buffer` is
    /// spent): what waits for this copy must not wait for that client.
    pub(crate) fn stalled(&mut self) {
        if let Some(on_stall) = self.on_stall.take() {
            on_stall();
        }
    }

    /// Whether the body declared its length exactly (within the limit): it cannot then
    /// outgrow the limit nor end short unnoticed by its own client, so only trailers, a
    /// failure mid-stream (which its client sees too) or the write itself can still keep
    /// it out of the cache.
    pub(crate) fn length_declared(&self) -> bool {
        self.most == Some(self.expected as u64)
    }

    /// Keeps a chunk; a reason when the response can no longer be stored.
    fn push(&mut self, data: &Bytes) -> Option<&'static str> {
        if self.len + data.len() > self.limit {
            return Some("response body over the entry size limit");
        }
        if self
            .most
            .is_some_and(|most| (self.len + data.len()) as u64 > most)
        {
            return Some("response body past its declared length");
        }
        if data.is_empty() {
            return None;
        }
        if self.len == 0 {
            self.first = data.clone();
        } else {
            if self.joined.is_empty() {
                let room = self.expected.clamp(self.len + data.len(), self.limit);
                self.joined.reserve(room);
                self.joined
                    .extend_from_slice(&std::mem::take(&mut self.first));
            }
            self.joined.extend_from_slice(data);
        }
        self.len += data.len();
        None
    }

    /// Copies what `frame` carries; a reason when the response can no longer be stored.
    pub(crate) fn take<E>(
        &mut self,
        frame: Option<&Result<Frame<Bytes>, E>>,
    ) -> Option<&'static str> {
        match frame {
            Some(Ok(frame)) => match frame.data_ref() {
                Some(data) => self.push(data),
                // Trailers are not stored, so neither is the response.
                None => Some("response has trailers"),
            },
            Some(Err(_)) => Some("response body failed mid-stream"),
            None => None,
        }
    }

    /// The body ended: stored if it is as long as it declared (its `Content-Length`, its
    /// exact size hint), refused if it ended short. A body cut short is one its own client
    /// saw fail (hyper ends a connection whose body is short of its length), never a
    /// whole page for the next (RFC 9111 §3.4).
    pub(crate) fn complete(mut self) {
        if self.len < self.expected {
            tracing::debug!(
                len = self.len,
                "response body ended short of its declared length; not stored"
            );
            return self.refuse();
        }
        let body = if self.joined.is_empty() {
            // The common case of a body in one frame (or none): no copy at all.
            std::mem::take(&mut self.first)
        } else {
            std::mem::take(&mut self.joined).freeze()
        };
        (self.on_complete)(Some(body));
    }

    /// The response cannot be stored (`take` gave a reason): nothing to wait for.
    pub(crate) fn refuse(self) {
        (self.on_complete)(None);
    }
}

pin_project! {
    /// The body of every response from the cache layer.
    pub struct ResponseBody<B> {
        #[pin]
        inner: Inner<B>,
    }
}

pin_project! {
    #[project = InnerProj]
    enum Inner<B> {
        // `pinned`: the bytes `data` keeps in memory, more than its own when it is a slice
        // of a larger body (a range).
        Cached { data: Option<Bytes>, pinned: u64 },
        // Filled by a task of its own (see `fill`); the client reads the queue.
        Queued { reader: QueueReader, hint: SizeHint, sent: u64 },
        Live {
            #[pin]
            body: B,
            tee: Option<Tee>,
        },
    }
}

impl<B> ResponseBody<B> {
    /// A body answered from the cache (zero-copy: `data` is a slice of the entry).
    pub(crate) fn cached(data: Bytes) -> Self {
        let len = data.len();
        Self::slice_of(data, len)
    }

    /// A body answered from the cache that is a slice of a stored body of `whole` bytes
    /// (a range), which it keeps in memory until it is read.
    pub(crate) fn slice_of(data: Bytes, whole: usize) -> Self {
        let pinned = whole.max(data.len()) as u64;
        let data = (!data.is_empty()).then_some(data);
        Self {
            inner: Inner::Cached { data, pinned },
        }
    }

    /// An empty body (a HEAD answered from the cache).
    pub(crate) fn empty() -> Self {
        Self {
            inner: Inner::Cached {
                data: None,
                pinned: 0,
            },
        }
    }

    /// The inner service's body, untouched.
    pub(crate) fn passthrough(body: B) -> Self {
        Self {
            inner: Inner::Live { body, tee: None },
        }
    }
}

impl<B> ResponseBody<B> {
    /// The bytes a body answered from the cache keeps in memory until it is read, from the
    /// moment it is made, whether or not its client ever takes them: its own, or those of
    /// the whole stored body when it is a slice of it (a single range). `0` once read, and
    /// for a body streamed from the inner service (what the cache queues of it is bounded
    /// by [`fill_buffer`](crate::cache::MemcacheLayer::fill_buffer)). A server that bounds
    /// what it holds for slow clients counts these.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use http::{Request, Response};
    /// use http_body_util::Full;
    /// use tower::{Layer, Service, ServiceExt};
    /// use tower_memcache::MemcacheLayer;
    /// use tower_memcache::backend::MemoryBackend;
    ///
    /// let origin = tower::service_fn(|_request: Request<Full<bytes::Bytes>>| async {
    ///     let mut response = Response::new(Full::new(bytes::Bytes::from_static(b"hello")));
    ///     response.headers_mut().insert("cache-control", "max-age=60".parse().unwrap());
    ///     Ok::<_, std::convert::Infallible>(response)
    /// });
    /// let layer = MemcacheLayer::new(MemoryBackend::new());
    /// let mut service = layer.layer(origin);
    /// let request = || Request::get("http://site.example/").body(Full::default()).unwrap();
    /// let first = service.ready().await.unwrap().call(request()).await.unwrap();
    /// assert_eq!(first.body().cached_len(), 0); // from the origin
    /// // Stored once read to its end.
    /// http_body_util::BodyExt::collect(first.into_body()).await.unwrap();
    /// layer.background().idle().await;
    /// let hit = service.ready().await.unwrap().call(request()).await.unwrap();
    /// assert_eq!(hit.body().cached_len(), 5);
    /// # }
    /// ```
    pub fn cached_len(&self) -> u64 {
        match &self.inner {
            Inner::Cached { data, pinned } => {
                if data.is_some() {
                    *pinned
                } else {
                    0
                }
            }
            Inner::Queued { .. } | Inner::Live { .. } => 0,
        }
    }

    /// Whether this body may still be copied into the cache as it is read: `false` for a
    /// body from the cache or one passed through untouched (nothing would be stored by
    /// reading it).
    pub(crate) fn is_filling(&self) -> bool {
        match &self.inner {
            Inner::Cached { .. } => false,
            Inner::Queued { .. } => true,
            Inner::Live { tee, .. } => tee.is_some(),
        }
    }
}

impl<B> ResponseBody<B>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Send + 'static,
{
    /// The inner body, copied on its way to the client. A body that is already complete
    /// (empty, or known to end) completes the copy at once, since hyper may never poll it;
    /// any other is read at the origin's pace by a task of its own (see `fill`), so a
    /// slow client never holds up the entry others wait for.
    pub(crate) fn teeing(
        body: B,
        tee: Option<Tee>,
        budget: &Arc<FillBudget>,
        background: &Background,
    ) -> Self {
        let tee = match tee {
            Some(tee) if body.is_end_stream() => {
                tee.complete();
                None
            }
            tee => tee,
        };
        let Some(tee) = tee else {
            return Self::passthrough(body);
        };
        let hint = body.size_hint();
        match reader::start(body, tee, budget, background) {
            Ok(reader) => Self {
                inner: Inner::Queued {
                    reader,
                    hint,
                    sent: 0,
                },
            },
            // No runtime to read on: copy as the client reads.
            Err((body, tee)) => Self {
                inner: Inner::Live {
                    body,
                    tee: Some(tee),
                },
            },
        }
    }
}

impl<B> Body for ResponseBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: 'static,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.project().inner.project() {
            InnerProj::Cached { data, .. } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            InnerProj::Queued { reader, sent, .. } => {
                Poll::Ready(match ready!(reader.queue().poll_frame(cx)) {
                    Some(Ok(frame)) => {
                        *sent += frame.data_ref().map_or(0, |d| d.len() as u64);
                        Some(Ok(frame))
                    }
                    // Only this body's own errors go through its queue, so the downcast
                    // holds; were it ever not to, the body ends instead of panicking.
                    Some(Err(erased)) => erased.downcast::<B::Error>().ok().map(|err| Err(*err)),
                    None => None,
                })
            }
            InnerProj::Live { mut body, tee } => {
                let frame = ready!(body.as_mut().poll_frame(cx));
                if let Some(reason) = tee.as_mut().and_then(|t| t.take(frame.as_ref())) {
                    if let Some(tee) = tee.take() {
                        tee.refuse();
                    }
                    tracing::debug!(reason, "response not stored");
                }
                // Complete on the end of stream, or as soon as the body says it has ended:
                // hyper stops polling a body that reports its end.
                if frame.is_none() || body.is_end_stream() {
                    if let Some(tee) = tee.take() {
                        tee.complete();
                    }
                }
                Poll::Ready(frame)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Cached { data, .. } => data.is_none(),
            Inner::Queued { reader, .. } => reader.queue().is_end_stream(),
            Inner::Live { body, .. } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Cached { data, .. } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            Inner::Queued { hint, sent, .. } => reader::remaining(hint, *sent),
            Inner::Live { body, .. } => body.size_hint(),
        }
    }
}

impl<B> fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.inner {
            Inner::Cached { data, .. } => f
                .debug_struct("ResponseBody::Cached")
                .field("len", &data.as_ref().map_or(0, Bytes::len))
                .finish(),
            Inner::Queued { sent, .. } => f
                .debug_struct("ResponseBody::Queued")
                .field("sent", sent)
                .finish(),
            Inner::Live { tee, .. } => f
                .debug_struct("ResponseBody::Live")
                .field("teeing", &tee.is_some())
                .finish(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(fields: &[(&'static str, &'static str)]) -> HeaderMap {
        fields
            .iter()
            .map(|(name, value)| {
                (
                    http::HeaderName::from_static(name),
                    http::HeaderValue::from_static(value),
                )
            })
            .collect()
    }

    #[test]
    fn declared_size_narrows_the_hint_to_the_content_length() {
        let unknown = SizeHint::new();
        let got = declared_size(
            StatusCode::OK,
            &headers(&[("content-length", "100")]),
            unknown,
        );
        assert_eq!(got.map(|h| h.exact()), Some(Some(100)));
        // Beside Transfer-Encoding the field frames nothing (RFC 9112 §6.3).
        let chunked = headers(&[("content-length", "100"), ("transfer-encoding", "chunked")]);
        assert_eq!(
            declared_size(StatusCode::OK, &chunked, unknown).map(|h| h.exact()),
            Some(None)
        );
        // Lengths that cannot all hold: nothing can be stored.
        let two = headers(&[("content-length", "100"), ("content-length", "50")]);
        assert!(declared_size(StatusCode::OK, &two, unknown).is_none());
        // A 204 or 304 has no content, whatever its Content-Length says.
        let five = headers(&[("content-length", "5")]);
        for status in [StatusCode::NO_CONTENT, StatusCode::NOT_MODIFIED] {
            assert_eq!(
                declared_size(status, &five, SizeHint::with_exact(0)).map(|h| h.exact()),
                Some(Some(0)),
                "{status}"
            );
        }
        assert!(
            declared_size(
                StatusCode::OK,
                &headers(&[("content-length", "1e3")]),
                unknown
            )
            .is_none()
        );
        let field = headers(&[("content-length", "100")]);
        assert!(declared_size(StatusCode::OK, &field, SizeHint::with_exact(50)).is_none());
        assert_eq!(
            declared_size(StatusCode::OK, &field, SizeHint::with_exact(100)).map(|h| h.exact()),
            Some(Some(100))
        );
    }

    #[test]
    fn a_copy_is_stored_only_at_its_declared_length() {
        let stored = Arc::new(std::sync::Mutex::new(Vec::new()));
        let tee = |declared: u64| {
            let stored = Arc::clone(&stored);
            Tee::new(
                1024,
                Some(&SizeHint::with_exact(declared)),
                Box::new(move |body| stored.lock().unwrap().push(body.map(|b| b.len()))),
            )
            .unwrap()
        };
        let data = Bytes::from_static(b"0123456789");
        for declared in [5, 10, 20] {
            let mut copy = tee(declared);
            match copy.take::<()>(Some(&Ok(Frame::data(data.clone())))) {
                Some(_) => copy.refuse(),
                None => copy.complete(),
            }
        }
        assert_eq!(*stored.lock().unwrap(), [None, Some(10), None]);
    }
}
