//! A client's request body on its way to the origin: its progress (for the head timeout),
//! held back or cut once the origin answered before it had the body, and the rest read and
//! dropped so that the client reads the early answer.

use std::error::Error;
use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Response;
use http::header;
use http_body::Body as _;
use http_body_util::{BodyExt, Either, Empty};
use hyper::body::Incoming;
use pin_project_lite::pin_project;

use crate::connections::Activity;

/// The client's request body, or none for a request the cache makes of its own (the whole
/// representation after a range request's miss: see `MemcacheLayer::own_request_body`).
pub(crate) type ProxyRequestBody = Either<Incoming, Empty<Bytes>>;

pin_project! {
    /// A request body on its way to the origin, noting when it last made progress (a
    /// frame or its end) for [`head_in_time`]; without a clock for a request without body.
    pub(crate) struct Upload {
        // Unpin: taken out when dropped (see [`discard_rest`]).
        pub(crate) body: ProxyRequestBody,
        pub(crate) progress: Option<Arc<Progress>>,
        // Whether the rest of a body the upload ended before (an early answer, an origin
        // gone) is read and dropped ([`discard_rest`]): an HTTP/1.x client's. An HTTP/2
        // stream is reset instead (with `NO_ERROR` once its answer is complete, RFC 9113
        // §8.1), which h2 does when it is dropped.
        pub(crate) discards: bool,
    }

    impl PinnedDrop for Upload {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            // A body the client broke has nothing more to read.
            let client_failed = this
                .progress
                .as_ref()
                .is_some_and(|progress| progress.client_failed());
            // No longer waiting for its client, whatever the flag (read after this by
            // `forward`) says.
            if let Some(progress) = this.progress.as_ref() {
                if progress.waits_for_client() {
                    progress.connection.upload_waits(false);
                }
            }
            if *this.discards && !client_failed && !this.body.is_end_stream() {
                let rest = std::mem::replace(this.body, Either::Right(Empty::new()));
                discard_rest(rest);
            }
        }
    }
}

/// How long the rest of an upload the origin no longer takes is read and dropped at most,
/// and how long the client may pause meanwhile (nginx's `lingering_time` and
/// `lingering_timeout`).
const DISCARD_FOR: Duration = Duration::from_secs(30);
const DISCARD_PAUSE: Duration = Duration::from_secs(5);

/// Reads and drops the rest of a client's body that the origin answered (or failed)
/// before it had it ([`DISCARD_FOR`] at most). Most HTTP/1.1 clients (Python's
/// http.client, Go's, a browser's form post) write their whole body before they read the
/// answer: dropped at once, hyper closed the connection with the body unread, the kernel
/// reset it, and the client, its write failed, never read the early 401 or 413 (or 502)
/// waiting for it. Read to its end, the connection goes on to the client's next request
/// (nginx discards such a body too). Nothing of it reaches the origin, whose connection
/// has ended.
pub(crate) fn discard_rest(mut rest: ProxyRequestBody) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    runtime.spawn(async move {
        let drained = async {
            while let Ok(Some(Ok(_))) = tokio::time::timeout(DISCARD_PAUSE, rest.frame()).await {}
        };
        let _ = tokio::time::timeout(DISCARD_FOR, drained).await;
    });
}

/// When an upload last moved: nanoseconds after `base`; whether the client's side of it
/// failed (a malformed chunk, a connection gone mid-body); and whether it now waits for
/// the client (its last poll found nothing to send) rather than for the origin to take
/// more.
pub(crate) struct Progress {
    pub(crate) base: Instant,
    pub(crate) at: AtomicU64,
    pub(crate) client_failed: AtomicBool,
    pub(crate) waits_for_client: AtomicBool,
    /// Whether the origin's answer has ended (see [`Answered`]).
    pub(crate) answered: AtomicBool,
    /// Whether the origin's answer began framed by its length: the rest of the body is
    /// held back until the answer ends, then cut off (see [`Answered`]).
    pub(crate) held: AtomicBool,
    /// Whether a chunked answer began: the rest of the body goes on only while its
    /// client takes it ([`Progress::answer_taken`]).
    pub(crate) streaming: AtomicBool,
    /// Whether the answer's body waits for the origin (its last poll found nothing):
    /// the client has taken everything the proxy read of it.
    pub(crate) taken: AtomicBool,
    /// Bytes of the answer's body passed on to the client.
    pub(crate) passed: AtomicU64,
    /// Bytes of the request's body sent to the origin.
    pub(crate) sent: AtomicU64,
    /// The upload's task, waiting for the client, to wake once the answer ended.
    pub(crate) upload_waker: std::sync::Mutex<Option<std::task::Waker>>,
    /// The client connection's: bytes received and uploads waiting for their client,
    /// which judge a place at the origin held at the client's pace.
    pub(crate) connection: Arc<Activity>,
}

/// Ends an upload the origin answered before it had all of it, once that answer ended
/// (or was dropped unread). An origin that answers early (a body read timeout, a route
/// that reads no body) and then reads on reads the rest as its next request: a client
/// paused mid-body until then, and the rest, sent on, reached the origin as a request of
/// its own, its fields never seen by the proxy (any `Host`, `X-Forwarded-For`, method
/// override): a "pause-based" desync. The connection is marked `close` and never reused,
/// so nothing more is owed to it; a chunked answer (an origin reading and answering at
/// once) keeps the upload going until it ends.
///
/// An answer framed by its length (or by the connection's close) holds the rest of the
/// upload back from its head on ([`Answered::new`]): its origin settled it without the
/// rest of the body. Its end comes only as fast as the client takes it, so a client
/// that read the head and no more (or an HTTP/2 client that opened no window) sent the
/// rest on while the answer, all written at the origin, had not ended at the proxy. Held
/// rather than cut: an error from the upload ends the origin connection, and the answer
/// under way with it. The client's body is read and dropped meanwhile, and after
/// ([`discard_rest`]): most clients read nothing before they have written it all.
///
/// A chunked answer may be an origin's that reads and answers at once (an echo), so it
/// does not hold the upload from its head on; but its end, too, comes only as fast as
/// the client takes it, and a client that stopped reading it (or an HTTP/2 client that
/// keeps its window shut) sent the rest on to an origin that had written the whole
/// answer and read on. So while a chunked answer is under way, the rest of the body goes
/// on only while its client takes the answer ([`Progress::answer_taken`]); otherwise it
/// is held (and cut once the answer ended), which a client that reads as it sends never
/// meets.
pub(crate) struct Answered(Arc<Progress>);

impl Answered {
    /// The guard for `progress`'s upload, answered by `response`.
    pub(crate) fn new<B>(progress: Arc<Progress>, response: &Response<B>) -> Self {
        let flag = if response.headers().contains_key(header::TRANSFER_ENCODING) {
            &progress.streaming
        } else {
            &progress.held
        };
        flag.store(true, Ordering::Release);
        Self(progress)
    }

    /// `bytes` of the answer's body were passed on: the client has yet to take them.
    pub(crate) fn passed(&self, bytes: usize) {
        self.0.taken.store(false, Ordering::Release);
        self.0.passed.fetch_add(bytes as u64, Ordering::AcqRel);
    }

    /// The answer's body waits for the origin: an upload held for its client to take
    /// the answer may go on.
    pub(crate) fn taken(&self) {
        self.0.taken.store(true, Ordering::Release);
        self.0.wake_upload();
    }
}

impl Drop for Answered {
    fn drop(&mut self) {
        self.0.answered.store(true, Ordering::Release);
        self.0.wake_upload();
    }
}

/// How far a chunked answer's body may run ahead of the request body sent, while the
/// upload goes on: an origin that answers as it reads sends back no more than it read (an
/// echo), or little more. Past it, the answer is no answer to the body: an early one,
/// which the proxy is still passing on into the buffers of a client that may not be
/// reading it (hyper's, the socket's: megabytes before the answer stops being polled).
const ANSWER_AHEAD: u64 = 64 * 1024;

/// The error an upload cut off by [`Answered`] ends with.
#[derive(Debug)]
struct AnsweredBeforeUpload;

impl std::fmt::Display for AnsweredBeforeUpload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the origin answered before it had the request body: the rest not sent")
    }
}

impl Error for AnsweredBeforeUpload {}

/// The error an HTTP/2 upload whose client reset its stream before END_STREAM ends with
/// (see [`Upload`]'s `poll_frame`).
#[derive(Debug)]
struct UploadReset;

impl std::fmt::Display for UploadReset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the client reset its stream before the end of the request body")
    }
}

impl Error for UploadReset {}

impl Progress {
    /// Wakes the upload, if it waits for the answer.
    fn wake_upload(&self) {
        let waker = match self.upload_waker.lock() {
            Ok(mut waker) => waker.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Whether the upload may send more while a chunked answer is under way: the client
    /// took everything the proxy read of the answer (its body waits for the origin), and
    /// the answer did not run ahead of the body sent by more than [`ANSWER_AHEAD`].
    fn answer_taken(&self) -> bool {
        self.taken.load(Ordering::Acquire)
            && self.passed.load(Ordering::Acquire)
                <= self
                    .sent
                    .load(Ordering::Acquire)
                    .saturating_add(ANSWER_AHEAD)
    }

    /// Keeps `waker` to wake when the answer ends ([`Answered`]).
    fn wake_on_answer(&self, waker: &std::task::Waker) {
        let mut slot = match self.upload_waker.lock() {
            Ok(slot) => slot,
            Err(poisoned) => poisoned.into_inner(),
        };
        match slot.as_mut() {
            Some(kept) => kept.clone_from(waker),
            None => *slot = Some(waker.clone()),
        }
    }

    fn mark(&self) {
        let elapsed = u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.at.store(elapsed, Ordering::Relaxed);
    }

    pub(crate) fn client_failed(&self) -> bool {
        self.client_failed.load(Ordering::Relaxed)
    }

    pub(crate) fn waits_for_client(&self) -> bool {
        self.waits_for_client.load(Ordering::Relaxed)
    }

    fn last(&self) -> Instant {
        self.base + Duration::from_nanos(self.at.load(Ordering::Relaxed))
    }
}

impl http_body::Body for Upload {
    type Data = Bytes;
    type Error = <ProxyRequestBody as http_body::Body>::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let this = self.project();
        if let Some(progress) = this.progress.as_ref() {
            // Not a byte more once the origin's answer ended (see [`Answered`]): the
            // error ends the connection, already marked `close`.
            if progress.answered.load(Ordering::Acquire) {
                return Poll::Ready(Some(Err(Box::new(AnsweredBeforeUpload))));
            }
            // Nor once an answer framed by its length began: nothing until it ended.
            if progress.held.load(Ordering::Acquire) {
                progress.wake_on_answer(cx.waker());
                if progress.answered.load(Ordering::Acquire) {
                    return Poll::Ready(Some(Err(Box::new(AnsweredBeforeUpload))));
                }
                // The rest is never sent: read and dropped meanwhile, so that a client
                // that writes its whole body before it reads gets to read the answer
                // (held unread, a long answer waited for that client, and the client,
                // its write or its HTTP/2 window shut, for the proxy to take its body).
                while let Poll::Ready(Some(Ok(_))) = Pin::new(&mut *this.body).poll_frame(cx) {}
                return Poll::Pending;
            }
            // While a chunked answer is under way, only as long as its client takes it.
            if progress.streaming.load(Ordering::Acquire) && !progress.answer_taken() {
                progress.wake_on_answer(cx.waker());
                // The answer may have ended, or been taken, before the waker was kept.
                if progress.answered.load(Ordering::Acquire) {
                    return Poll::Ready(Some(Err(Box::new(AnsweredBeforeUpload))));
                }
                if !progress.answer_taken() {
                    return Poll::Pending;
                }
            }
        }
        let polled = match Pin::new(&mut *this.body).poll_frame(cx) {
            // hyper hands an HTTP/2 client's RST_STREAM(NO_ERROR) over as the body's end
            // (RFC 9113 §8.1 gives it that meaning from a server only): ended so, the
            // chunked body sent on was whole to the origin, which took the cut upload
            // for the client's. Only a stream that received END_STREAM has ended (an
            // HTTP/2 client's body is the one that `discards` nothing; an HTTP/1.x body
            // that ends short is hyper's error already).
            Poll::Ready(None) if !*this.discards && !this.body.is_end_stream() => {
                Poll::Ready(Some(Err(Box::new(UploadReset).into())))
            }
            polled => polled,
        };
        if let Some(progress) = this.progress.as_ref() {
            if polled.is_pending() {
                progress.wake_on_answer(cx.waker());
                // The answer may have ended before the waker was kept.
                if progress.answered.load(Ordering::Acquire) {
                    return Poll::Ready(Some(Err(Box::new(AnsweredBeforeUpload))));
                }
            }
            let waits = polled.is_pending();
            if progress.waits_for_client.swap(waits, Ordering::Relaxed) != waits {
                progress.connection.upload_waits(waits);
            }
            if let Poll::Ready(frame) = &polled {
                progress.mark();
                match frame {
                    Some(Ok(frame)) => {
                        let bytes = frame.data_ref().map_or(0, Bytes::len);
                        progress.sent.fetch_add(bytes as u64, Ordering::AcqRel);
                        progress.connection.received(bytes as u64);
                    }
                    Some(Err(_)) => progress.client_failed.store(true, Ordering::Relaxed),
                    None => {}
                }
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// `response`, if its head comes within `timeout` of the request's last progress: its
/// start, or with `progress`, the last frame (or the end) of its body. An upload that
/// takes longer than `timeout` in all is no slow origin (the origin answers once it has
/// the body); one that stops for `timeout` is cut off all the same.
pub(crate) async fn head_in_time<F: Future>(
    response: F,
    timeout: Duration,
    progress: Option<&Progress>,
) -> Option<F::Output> {
    let mut response = pin!(response);
    let mut last = Instant::now();
    loop {
        match tokio::time::timeout_at((last + timeout).into(), response.as_mut()).await {
            Ok(output) => return Some(output),
            Err(_) => match progress.map(Progress::last) {
                Some(moved) if moved > last => last = moved,
                _ => return None,
            },
        }
    }
}
