//! Forwarding to the origin: the request as the origin sees it (target, `Host`, forwarding
//! headers, hop-by-hop headers dropped), the pooled client, and the 400, 502 and 504 the
//! proxy answers itself.

use std::convert::Infallible;
use std::error::Error;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::{self, TryFutureExt};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme, Uri};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::Body as _;
use http_body_util::{BodyExt, Either, Empty, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use pin_project_lite::pin_project;
use tokio::sync::OwnedSemaphorePermit;
use tower::Service;
use tower_memcache::cache::{
    InvalidTarget, OriginUnreachable, RequestTarget, decides_caching, is_hop_by_hop,
};

use crate::origin_connection::{OriginConnector, kept_alive_unanswered};
use crate::upstream_limit::UpstreamLimit;

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Request headers that tell an origin where a request came from, what it "really"
/// asked for, or what the proxy in front does for it. Clients' copies never reach the
/// origin (see the crate docs), in any spelling a CGI-style gateway reads as theirs
/// ([`cgi_spelling_of`]): the first four are replaced by the proxy's own values, the
/// rest dropped.
const FORWARDING: [HeaderName; 57] = [
    header::FORWARDED,
    X_FORWARDED_FOR,
    X_FORWARDED_HOST,
    X_FORWARDED_PROTO,
    HeaderName::from_static("x-forwarded-port"),
    HeaderName::from_static("x-forwarded-prefix"),
    HeaderName::from_static("x-forwarded-server"),
    HeaderName::from_static("x-forwarded-scheme"),
    HeaderName::from_static("x-forwarded-ssl"),
    HeaderName::from_static("front-end-https"),
    HeaderName::from_static("x-url-scheme"),
    HeaderName::from_static("x-real-ip"),
    HeaderName::from_static("true-client-ip"),
    HeaderName::from_static("x-client-ip"),
    HeaderName::from_static("x-original-url"),
    HeaderName::from_static("x-rewrite-url"),
    HeaderName::from_static("x-original-host"),
    HeaderName::from_static("x-host"),
    // Traefik's, nginx auth_request's, ASP.NET's and others' names for the same things.
    HeaderName::from_static("x-forwarded-uri"),
    HeaderName::from_static("x-forwarded-path"),
    HeaderName::from_static("x-original-uri"),
    HeaderName::from_static("x-http-host-override"),
    HeaderName::from_static("x-original-for"),
    HeaderName::from_static("x-original-proto"),
    // The client-address fields PHP's common "real client IP" helpers read before or
    // beside `X-Forwarded-For` (`HTTP_CLIENT_IP` first; Rails' `RemoteIp` reads it too),
    // and the CDNs' own: a client's `Client-IP: 10.0.0.1` was an internal address to such
    // an origin (review RT).
    HeaderName::from_static("client-ip"),
    HeaderName::from_static("x-cluster-client-ip"),
    HeaderName::from_static("x-forwarded"),
    HeaderName::from_static("forwarded-for"),
    HeaderName::from_static("cf-connecting-ip"),
    HeaderName::from_static("fastly-client-ip"),
    // And the ones hand-written "client IP" code and WAF allow-lists read (Exchange's
    // `X-Originating-IP` among them): read as the client's address, sent by the client.
    HeaderName::from_static("x-originating-ip"),
    HeaderName::from_static("x-remote-ip"),
    HeaderName::from_static("x-remote-addr"),
    HeaderName::from_static("x-proxyuser-ip"),
    // No HTTP field: to a CGI-style origin it is `HTTP_PROXY`, which its HTTP clients
    // have taken for their own proxy ("httpoxy"), fetching a page's parts through the
    // client's server.
    HeaderName::from_static("proxy"),
    // Where the application is mounted and which scheme the client used, by other
    // servers' names: gunicorn takes a `SCRIPT_NAME` field (this name's `_` spelling,
    // passed with `--underscores-in-headers`) as the mount point every link and route
    // follows, and `X-Forwarded-Protocol: ssl` as `https`; Tornado reads `X-Scheme` before
    // `X-Forwarded-Proto`; WSGI's "reverse proxied" recipe reads `X-Script-Name`. A
    // client's copy had the page's links stored pointing elsewhere (review RY).
    HeaderName::from_static("script-name"),
    HeaderName::from_static("x-script-name"),
    HeaderName::from_static("x-scheme"),
    HeaderName::from_static("x-forwarded-protocol"),
    // Work the origin leaves to the proxy in front on the proxy's word, which this proxy
    // does not do: send a file itself (Rack::Sendfile, in Rails' default stack, takes
    // `X-Sendfile-Type` and `X-Accel-Mapping` from the request when the application set
    // none: CVE-2025-61780) and expand edge side includes (`Surrogate-Capability`, as
    // Symfony reads it). A client's copy had an empty body (and the file's path), or the
    // page's raw `<esi:include>` tags, stored for everyone.
    HeaderName::from_static("x-sendfile-type"),
    HeaderName::from_static("x-accel-mapping"),
    HeaderName::from_static("surrogate-capability"),
    // The client certificate, or the verdict on it, as a TLS terminator in front passes
    // them on: ASP.NET Core's certificate forwarding and Azure's, Envoy's, Traefik's, the
    // nginx recipes' and Tomcat SSLValve's (`ssl_client_cert`) names. This proxy speaks no
    // TLS, so a client's copy is forged; an origin signing the client in by it answered
    // that user's page with no credential the cache knows of, stored for everyone.
    HeaderName::from_static("x-client-cert"),
    HeaderName::from_static("x-arr-clientcert"),
    HeaderName::from_static("x-forwarded-client-cert"),
    HeaderName::from_static("x-forwarded-tls-client-cert"),
    HeaderName::from_static("x-forwarded-tls-client-cert-info"),
    HeaderName::from_static("x-ssl-cert"),
    HeaderName::from_static("x-ssl-client-cert"),
    HeaderName::from_static("x-ssl-client-verify"),
    HeaderName::from_static("x-ssl-client-dn"),
    HeaderName::from_static("x-ssl-client-s-dn"),
    HeaderName::from_static("x-client-verify"),
    HeaderName::from_static("x-client-dn"),
    HeaderName::from_static("ssl-client-cert"),
    HeaderName::from_static("ssl-client-verify"),
    HeaderName::from_static("ssl-client-s-dn"),
];

/// Headers that make some frameworks run another method's handler; dropped from GET and
/// HEAD, whose answers are stored under the GET's key (in every spelling, as above).
const METHOD_OVERRIDES: [HeaderName; 3] = [
    HeaderName::from_static("x-http-method-override"),
    HeaderName::from_static("x-http-method"),
    HeaderName::from_static("x-method-override"),
];

/// The most an origin's response head may take (hyper's read buffer, which also bounds
/// each read of a body): as much as a client's request head (nginx's proxy_buffer_size is
/// 4 or 8 KiB).
const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// What the forwarding service knows: where the origin is and a pooled client to it.
pub(crate) struct Upstream {
    client: Client<OriginConnector, Upload>,
    authority: Authority,
    /// The authority as a `Host` value, for `--upstream-host`.
    host_value: HeaderValue,
    upstream_host: bool,
    /// How long the origin may take to send its response head once the request is sent,
    /// or the next frame of its body, and a request body to make progress
    /// (`--upstream-timeout`).
    head_timeout: Duration,
    /// Places for requests under way at the origin, shared by every worker
    /// (`--upstream-max-connections`).
    limit: Arc<UpstreamLimit>,
    /// `--targeted-cache-control`: fields the cache decides by, whatever their names
    /// ([`decides_caching`]).
    targeted: Vec<HeaderName>,
}

/// The origin's body, or a short body the proxy made up (502, 504).
pub(crate) type ProxyBody = Either<Download, Full<Bytes>>;

pin_project! {
    /// The origin's response body, cut off (an error: never stored, never complete to a
    /// client) once the proxy has waited `--upstream-timeout` for its next frame (nginx's
    /// `proxy_read_timeout`). Only the time spent waiting for the origin counts, not the
    /// time the body waits for a slow client to take what it sent.
    pub(crate) struct Download {
        #[pin]
        body: Incoming,
        #[pin]
        stalled: tokio::time::Sleep,
        timeout: Duration,
        waiting: bool,
        // The request's place at the origin (`--upstream-max-connections`): given back
        // once the body ended, not when the response is dropped, which a cache fill may
        // do later.
        place: Option<OwnedSemaphorePermit>,
        // Ends the request's upload, if one is still under way, once this answer ended
        // (or was dropped): see [`Answered`].
        answered: Option<Answered>,
    }
}

impl Download {
    fn new(
        body: Incoming,
        timeout: Duration,
        place: OwnedSemaphorePermit,
        answered: Option<Answered>,
    ) -> Self {
        Self {
            body,
            // Armed when a wait starts.
            stalled: tokio::time::sleep(timeout),
            timeout,
            waiting: false,
            place: Some(place),
            answered,
        }
    }
}

/// The error a [`Download`] that stopped ends with.
#[derive(Debug)]
struct OriginStalled;

impl std::fmt::Display for OriginStalled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the origin sent nothing of its response body for --upstream-timeout")
    }
}

impl Error for OriginStalled {}

impl http_body::Body for Download {
    type Data = Bytes;
    type Error = Box<dyn Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let mut this = self.project();
        if let Poll::Ready(frame) = this.body.poll_frame(cx) {
            *this.waiting = false;
            match &frame {
                Some(Ok(frame)) => {
                    if let Some(answered) = this.answered.as_ref() {
                        answered.passed(frame.data_ref().map_or(0, Bytes::len));
                    }
                }
                _ => {
                    this.place.take();
                    this.answered.take();
                }
            }
            return Poll::Ready(frame.map(|frame| frame.map_err(Into::into)));
        }
        if !*this.waiting {
            *this.waiting = true;
            let deadline = tokio::time::Instant::now() + *this.timeout;
            this.stalled.as_mut().reset(deadline);
            // Everything read of the answer was taken: the client keeps up with it.
            if let Some(answered) = this.answered.as_ref() {
                answered.taken();
            }
        }
        if this.stalled.poll(cx).is_ready() {
            this.place.take();
            this.answered.take();
            tracing::warn!("upstream stopped sending a response body: cut off");
            return Poll::Ready(Some(Err(Box::new(OriginStalled))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// The client's request body, or none for a request the cache makes of its own (the whole
/// representation after a range request's miss: see `MemcacheLayer::own_request_body`).
pub(crate) type ProxyRequestBody = Either<Incoming, Empty<Bytes>>;

pin_project! {
    /// A request body on its way to the origin, noting when it last made progress (a
    /// frame or its end) for [`head_in_time`]; without a clock for a request without body.
    pub(crate) struct Upload {
        // Unpin: taken out when dropped (see [`discard_rest`]).
        body: ProxyRequestBody,
        progress: Option<Arc<Progress>>,
        // Whether the rest of a body the upload ended before (an early answer, an origin
        // gone) is read and dropped ([`discard_rest`]): an HTTP/1.x client's. An HTTP/2
        // stream is reset instead (with `NO_ERROR` once its answer is complete, RFC 9113
        // §8.1), which h2 does when it is dropped.
        discards: bool,
    }

    impl PinnedDrop for Upload {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            // A body the client broke has nothing more to read.
            let client_failed = this
                .progress
                .as_ref()
                .is_some_and(|progress| progress.client_failed());
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
fn discard_rest(mut rest: ProxyRequestBody) {
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
struct Progress {
    base: Instant,
    at: AtomicU64,
    client_failed: AtomicBool,
    waits_for_client: AtomicBool,
    /// Whether the origin's answer has ended (see [`Answered`]).
    answered: AtomicBool,
    /// Whether the origin's answer began framed by its length: the rest of the body is
    /// held back until the answer ends, then cut off (see [`Answered`]).
    held: AtomicBool,
    /// Whether a chunked answer began: the rest of the body goes on only while its
    /// client takes it ([`Progress::answer_taken`]).
    streaming: AtomicBool,
    /// Whether the answer's body waits for the origin (its last poll found nothing):
    /// the client has taken everything the proxy read of it.
    taken: AtomicBool,
    /// Bytes of the answer's body passed on to the client.
    passed: AtomicU64,
    /// Bytes of the request's body sent to the origin.
    sent: AtomicU64,
    /// The upload's task, waiting for the client, to wake once the answer ended.
    upload_waker: std::sync::Mutex<Option<std::task::Waker>>,
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
struct Answered(Arc<Progress>);

impl Answered {
    /// The guard for `progress`'s upload, answered by `response`.
    fn new<B>(progress: Arc<Progress>, response: &Response<B>) -> Self {
        let flag = if response.headers().contains_key(header::TRANSFER_ENCODING) {
            &progress.streaming
        } else {
            &progress.held
        };
        flag.store(true, Ordering::Release);
        Self(progress)
    }

    /// `bytes` of the answer's body were passed on: the client has yet to take them.
    fn passed(&self, bytes: usize) {
        self.0.taken.store(false, Ordering::Release);
        self.0.passed.fetch_add(bytes as u64, Ordering::AcqRel);
    }

    /// The answer's body waits for the origin: an upload held for its client to take
    /// the answer may go on.
    fn taken(&self) {
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

    fn client_failed(&self) -> bool {
        self.client_failed.load(Ordering::Relaxed)
    }

    fn waits_for_client(&self) -> bool {
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
            progress
                .waits_for_client
                .store(polled.is_pending(), Ordering::Relaxed);
            if let Poll::Ready(frame) = &polled {
                progress.mark();
                match frame {
                    Some(Ok(frame)) => {
                        let bytes = frame.data_ref().map_or(0, Bytes::len);
                        progress.sent.fetch_add(bytes as u64, Ordering::AcqRel);
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
async fn head_in_time<F: Future>(
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

/// The inner service: forwards one request to the origin. Never fails: trouble with the
/// origin is a 502 or 504 response.
pub(crate) async fn forward(
    upstream: Arc<Upstream>,
    client: Arc<PeerFields>,
    mut request: Request<ProxyRequestBody>,
) -> Result<Response<ProxyBody>, Infallible> {
    // `ValidTarget` lets only valid targets through; checked again rather than trusted.
    let target = match RequestTarget::from_parts("http", request.uri(), request.headers()) {
        Ok(target) => target,
        Err(invalid) => return Ok(refused(invalid).map(Either::Right)),
    };
    let client_host = match target.authority() {
        "" => None,
        authority => HeaderValue::from_str(authority).ok(),
    };
    let path_and_query = request
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    let uri = Uri::builder()
        .scheme(Scheme::HTTP)
        .authority(upstream.authority.clone())
        .path_and_query(path_and_query)
        .build();
    *request.uri_mut() = match uri {
        Ok(uri) => uri,
        Err(err) => {
            tracing::debug!(error = %err, "request target not forwardable");
            return Ok(made_up(StatusCode::BAD_REQUEST, "400 Bad Request\n"));
        }
    };
    // The pool speaks HTTP/1.1 to the origin whatever the client spoke; `Via` says what
    // the client spoke.
    let received = request.version();
    *request.version_mut() = Version::HTTP_11;

    let carries_body = !request.body().is_end_stream();
    let headers = request.headers_mut();
    strip_hop_by_hop(headers, |_| false);
    // The proxy meets a `100-continue` expectation itself (hyper sends `100 Continue` once
    // the upload starts), so the body follows at once. An origin told of it that answered
    // in place of a 100 (a 401) took it that no body would come, and read the body as its
    // next request, one the proxy never saw. nginx clears `Expect` towards its upstreams.
    headers.remove(header::EXPECT);
    // Gone since `as_forwarded`, before the cache; made sure of rather than trusted.
    remove_spellings(headers, &FORWARDING);
    set_forwarding(headers, &client, client_host.as_ref());
    // RFC 9110 §7.6.3: a gateway MUST send `Via` in each inbound request, after any the
    // request carries (a line of its own reads as the list's last member).
    headers.append(header::VIA, via(received));
    if upstream.upstream_host {
        headers.insert(header::HOST, upstream.host_value.clone());
    } else if let Some(host) = client_host {
        headers.insert(header::HOST, host);
    }
    // No client host at all (HTTP/1.0): the client pool fills in the upstream's.
    // A connection that carried a request body is not used again: an origin that answers
    // without reading the body (a static or redirect handler: "CL.0" desync) reads it as
    // the next request, and its answer, once the pool had sent the next client's request,
    // answered that one (and was stored under its key).
    if carries_body {
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }

    let method = request.method().clone();
    let progress = carries_body.then(|| {
        Arc::new(Progress {
            base: Instant::now(),
            at: AtomicU64::new(0),
            client_failed: AtomicBool::new(false),
            waits_for_client: AtomicBool::new(false),
            answered: AtomicBool::new(false),
            held: AtomicBool::new(false),
            streaming: AtomicBool::new(false),
            taken: AtomicBool::new(false),
            passed: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            upload_waker: std::sync::Mutex::new(None),
        })
    });
    // A copy to send again, for a safe request without body only (misses only: hits never
    // get here).
    let again = (!carries_body && method.is_safe()).then(|| bodiless_copy(&request));
    let request = request.map(|body| Upload {
        body,
        progress: progress.clone(),
        discards: received != Version::HTTP_2,
    });
    let place = match upstream.limit.admit().await {
        Ok(place) => place,
        Err(refused) => {
            tracing::warn!(%method, upstream = %upstream.authority, reason = refused.as_str(), "no place at the origin (--upstream-max-connections): 503");
            return Ok(unreachable(
                StatusCode::SERVICE_UNAVAILABLE,
                "503 Service Unavailable\n",
            ));
        }
    };
    let response = async {
        match upstream.client.request(request).await {
            // A kept-alive connection the origin closed as the request arrived (its idle
            // timeout, Node's 5 s or gunicorn's 2 s, firing first): no answer was begun, and
            // a 502 for it was every such race (and, marked unreachable, a stale entry for
            // it). nginx sends such a request again too. Once: a second close is an answer.
            // Not on a fresh connection, nor once an answer began: the origin took that
            // request and failed on it, and would fail twice per request (a handler that
            // crashes its worker).
            Err(err) if closed_unanswered(&err) && kept_alive_unanswered(err.connect_info()) => {
                match again {
                    Some(again) => {
                        tracing::debug!(%method, upstream = %upstream.authority, "upstream closed a connection without answering: sent again");
                        upstream.client.request(again).await
                    }
                    None => Err(err),
                }
            }
            answered => answered,
        }
    };
    match head_in_time(response, upstream.head_timeout, progress.as_deref()).await {
        Some(Ok(mut response)) => {
            // Dropped with this answer, or kept by its body until it ends.
            let answered = progress
                .clone()
                .map(|progress| Answered::new(progress, &response));
            // hyper skips 100 and 102–199; a 101 switched protocols for a request that
            // asked for none (hop-by-hop `Upgrade` never reaches the origin): passed on, it
            // told the client its connection had switched, and hyper then dropped the
            // client's connection, requests pipelined behind included (nginx: 502).
            if response.status().is_informational() {
                tracing::warn!(%method, upstream = %upstream.authority, status = %response.status(), "upstream switched protocols unasked");
                return Ok(made_up(StatusCode::BAD_GATEWAY, "502 Bad Gateway\n"));
            }
            // hyper checks its buffer's bound between reads only, and one read takes it
            // well past (a 100 KiB head passed): the bound counted here, as the fields.
            if head_size(response.headers()) > MAX_RESPONSE_HEAD {
                tracing::warn!(%method, upstream = %upstream.authority, "upstream sent too big a response head");
                // As hyper's own refusal of a larger head: a stale entry may stand in.
                return Ok(unreachable(StatusCode::BAD_GATEWAY, "502 Bad Gateway\n"));
            }
            // Our own version towards the client, whatever the origin spoke (hyper still
            // answers HTTP/1.0 clients in 1.0). An origin's `HTTP/1.0` passed on (and
            // stored, and replayed on hits) would make HTTP/1.1 clients close the
            // connection after every response.
            *response.version_mut() = Version::HTTP_11;
            // RFC 9112 §6.3: `Transfer-Encoding` overrides `Content-Length` (hyper read
            // the body chunked), and an intermediary "MUST first remove the received
            // Content-Length field" before forwarding. Kept beside the whole body once
            // `Transfer-Encoding` (hop-by-hop) is gone, it framed the client's copy short
            // and, stored, every hit: the rest of the body read as the next response.
            if response.headers().contains_key(header::TRANSFER_ENCODING) {
                if !only_chunked(response.headers()) {
                    tracing::warn!(%method, upstream = %upstream.authority, "upstream sent a transfer coding other than one chunking");
                    return Ok(made_up(StatusCode::BAD_GATEWAY, "502 Bad Gateway\n"));
                }
                response.headers_mut().remove(header::CONTENT_LENGTH);
            }
            let targeted = &upstream.targeted;
            strip_hop_by_hop(response.headers_mut(), |name| {
                kept_from_connection(name) || targeted.contains(name)
            });
            let timeout = upstream.head_timeout;
            Ok(response.map(|body| Either::Left(Download::new(body, timeout, place, answered))))
        }
        // The client's upload broke (hyper's request fails with it): the client's fault,
        // not the origin's. Blamed on the origin (a 502, a warning, a stale entry's
        // stand-in), any client could fill the log and the error figures with origin
        // failures that never were.
        Some(Err(err))
            if progress
                .as_ref()
                .is_some_and(|progress| progress.client_failed()) =>
        {
            tracing::debug!(%method, error = %error_chain(&err), "the client's request body failed: 400");
            Ok(made_up(StatusCode::BAD_REQUEST, "400 Bad Request\n"))
        }
        Some(Err(err)) => {
            tracing::warn!(%method, upstream = %upstream.authority, error = %error_chain(&err), "upstream request failed");
            Ok(unreachable(StatusCode::BAD_GATEWAY, "502 Bad Gateway\n"))
        }
        // The upload paused for the whole timeout on the client's side: its fault, as
        // nginx's `client_body_timeout` answers it.
        None if progress
            .as_ref()
            .is_some_and(|progress| progress.waits_for_client()) =>
        {
            tracing::debug!(%method, "the client's request body paused too long: 408");
            Ok(made_up(
                StatusCode::REQUEST_TIMEOUT,
                "408 Request Timeout\n",
            ))
        }
        None => {
            tracing::warn!(%method, upstream = %upstream.authority, "upstream sent no response in time");
            Ok(unreachable(
                StatusCode::GATEWAY_TIMEOUT,
                "504 Gateway Timeout\n",
            ))
        }
    }
}

/// What a head's fields take on the wire (`name: value` and CRLF each).
fn head_size(headers: &HeaderMap) -> usize {
    headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum()
}

/// `request` without its body, to send again ([`closed_unanswered`]).
fn bodiless_copy(request: &Request<ProxyRequestBody>) -> Request<Upload> {
    let mut copy = Request::new(Upload {
        body: Either::Right(Empty::new()),
        progress: None,
        discards: false,
    });
    *copy.method_mut() = request.method().clone();
    *copy.uri_mut() = request.uri().clone();
    *copy.version_mut() = request.version();
    *copy.headers_mut() = request.headers().clone();
    copy
}

/// Whether the origin closed the connection before a whole response head came: hyper's
/// "connection closed before message completed".
fn closed_unanswered(err: &(dyn Error + 'static)) -> bool {
    let mut source = Some(err);
    while let Some(err) = source {
        if err
            .downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_incomplete_message)
        {
            return true;
        }
        source = err.source();
    }
    false
}

/// Whether hyper undid every transfer coding the response names, so that the body it
/// hands over is the representation: `chunked` once, as the last coding (or none, the
/// obsolete `identity` aside). Another coding (`gzip, chunked`) is left on the body, and
/// so is a second chunking (`chunked, chunked`), or all of the framing when `chunked` is
/// not last (`chunked, identity`: hyper then reads to the connection's close); dropping
/// the hop-by-hop field would pass that on, and store it, as if it were the
/// representation. Such a response is a 502, as nginx makes it ("upstream sent unknown
/// Transfer-Encoding").
fn only_chunked(headers: &HeaderMap) -> bool {
    let (mut chunked, mut last_chunked) = (0usize, false);
    for value in headers.get_all(header::TRANSFER_ENCODING) {
        let Ok(codings) = value.to_str() else {
            return false;
        };
        for coding in codings.split(',').map(str::trim) {
            if coding.eq_ignore_ascii_case("chunked") {
                chunked += 1;
                last_chunked = true;
            } else if coding.eq_ignore_ascii_case("identity") {
                last_chunked = false;
            } else {
                return false;
            }
        }
    }
    chunked == 0 || (chunked == 1 && last_chunked)
}

/// Drops the hop-by-hop headers, including those the `Connection` header names but for
/// those `kept` says stay.
fn strip_hop_by_hop(headers: &mut HeaderMap, kept: impl Fn(&HeaderName) -> bool) {
    // The fixed names by a look at each field, those `Connection` names by reading it
    // once (asking `is_hop_by_hop` with the request's fields would read it per field:
    // this runs on every request, hits included).
    let no_fields = HeaderMap::new();
    let mut doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|name| is_hop_by_hop(name, &no_fields))
        .cloned()
        .collect();
    doomed.extend(connection_named(headers).filter(|name| !kept(name)));
    for name in &doomed {
        headers.remove(name);
    }
}

/// Whether a response field is one the cache decides by ([`decides_caching`]: an origin's
/// `Connection` may not make it hop-by-hop; the cache, in the proxy, is that hop's
/// recipient and decides after this step), or the proxy's tag and lifetime fields, which
/// the layer reads and removes.
fn kept_from_connection(name: &HeaderName) -> bool {
    decides_caching(name)
        || name == tower_memcache::cache::DEFAULT_TAG_HEADER
        || name == tower_memcache::cache::DEFAULT_LIFETIME_HEADER
}

/// The fields `Connection` names (read once: `is_hop_by_hop` would read it per field).
fn connection_named(headers: &HeaderMap) -> impl Iterator<Item = HeaderName> + '_ {
    // As bytes: a line holding obs-text (no `str`) still names fields in its other
    // members (skipped whole, an origin's `Connection: x-session, café` passed
    // `X-Session` to the client and the cache).
    headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|value| value.as_bytes().split(|byte| *byte == b','))
        .filter_map(|token| HeaderName::from_bytes(token.trim_ascii()).ok())
}

/// A request as the origin will see it, before the cache looks it up: the cache chooses
/// a variant by the request's fields, so they must be the ones the origin answers. Without
/// this, `Connection: accept-language` would hide `Accept-Language` from the origin after
/// the cache chose the French variant (the default page stored as the French one), and a
/// `Vary: X-Forwarded-For` would select by the client's value, not the address the origin
/// is told (one client's page served to the others). `Host` stays (it was validated and
/// keys the request; [`forward`] sets it), and so do the body's framing fields: the cache
/// bypasses a GET with a body by them; [`forward`] drops them after it.
///
/// HTTP/2 cookie crumbs become one `Cookie` line here, for the same reason: the origin
/// is spoken to in HTTP/1.1, where RFC 9113 §8.2.3 has them joined with `; `.
fn as_forwarded(
    headers: &mut HeaderMap,
    request: ClientRequest<'_>,
    client: &PeerFields,
    client_host: Option<&HeaderValue>,
) {
    // One pass over the fields, whose names are compared, not hashed: this runs on every
    // request, hits included, and most requests carry none of the fields dropped.
    let no_fields = HeaderMap::new();
    let mut doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|name| request.drops(name, &no_fields))
        .cloned()
        .collect();
    let named = connection_named(headers).filter(|name| !KEPT_FOR_THE_CACHE.contains(name));
    doomed.extend(named);
    for name in &doomed {
        headers.remove(name);
    }
    set_forwarding(headers, client, client_host);
    if request.version == Version::HTTP_2 {
        join_cookie_crumbs(headers);
    }
}

/// Hop-by-hop fields the cache still needs to see: `Host` was validated and keys the
/// request ([`forward`] sets it), and the cache bypasses a GET with a body by its framing
/// fields ([`forward`] drops them after it).
const KEPT_FOR_THE_CACHE: [HeaderName; 3] = [
    header::HOST,
    header::TRANSFER_ENCODING,
    header::CONTENT_LENGTH,
];

/// What [`as_forwarded`] needs to know of a request besides its fields.
#[derive(Clone, Copy)]
pub(crate) struct ClientRequest<'a> {
    version: Version,
    method: &'a Method,
    /// `--underscores-in-headers`.
    pass_underscored: bool,
}

impl ClientRequest<'_> {
    /// Whether the client's field `name` stays away from the cache and the origin.
    fn drops(&self, name: &HeaderName, no_fields: &HeaderMap) -> bool {
        if KEPT_FOR_THE_CACHE.contains(name) {
            return false;
        }
        // A method override on a GET or HEAD could run another method's handler at the
        // origin for an answer stored under the GET's key. Dropped before the cache
        // (which would otherwise bypass such a request), the origin never sees it.
        let stored = matches!(*self.method, Method::GET | Method::HEAD);
        if is_hop_by_hop(name, no_fields)
            || FORWARDING.contains(name)
            || (stored && METHOD_OVERRIDES.contains(name))
        {
            return true;
        }
        if memchr::memchr(b'_', name.as_str().as_bytes()).is_none() {
            return false;
        }
        // nginx's `underscores_in_headers off`: a CGI-style gateway reads `Accept_Language`
        // as `Accept-Language`, so passed on beside the real one it could choose the page
        // stored as another variant. Passed (`--underscores-in-headers`), the spellings of
        // the fields dropped above still go.
        !self.pass_underscored
            || cgi_spelling_of(name, &FORWARDING)
            || (stored && cgi_spelling_of(name, &METHOD_OVERRIDES))
    }
}

/// RFC 9113 §8.2.3: an HTTP/2 client may send `Cookie` as one field per cookie; "these
/// MUST be concatenated into a single octet string using the two-octet delimiter of 0x3b,
/// 0x20 ("; ") before being passed into a non-HTTP/2 context, such as an HTTP/1.1
/// connection". Sent as separate lines, they reach an HTTP/1.1 origin as a message
/// HTTP/1.1 forbids (RFC 6265 §5.4), which gateways that join repeated lines with `,`
/// read as one cookie holding the others.
fn join_cookie_crumbs(headers: &mut HeaderMap) {
    let mut crumbs = headers.get_all(header::COOKIE).iter();
    if crumbs.next().is_none() || crumbs.next().is_none() {
        return;
    }
    let mut joined = Vec::new();
    for crumb in headers.get_all(header::COOKIE) {
        if !joined.is_empty() {
            joined.extend_from_slice(b"; ");
        }
        joined.extend_from_slice(crumb.as_bytes());
    }
    // Field values joined by a visible delimiter are a field value.
    if let Ok(value) = HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, value);
    }
}

/// What the forwarding headers say of a client connection's peer, built once per
/// connection: they are set on every request (hits included, see [`as_forwarded`]), and
/// formatting an address each time cost more than the rest of the step.
pub(crate) struct PeerFields {
    /// `X-Forwarded-For`: the peer address alone.
    x_forwarded_for: HeaderValue,
    /// The `for=` parameter of `Forwarded` (RFC 7239 §6: an IPv6 node is bracketed and
    /// quoted).
    forwarded_for: String,
    /// The `Forwarded` value of the first host the connection asked for, with that host:
    /// a connection mostly asks for one.
    forwarded_first: OnceLock<(HeaderValue, HeaderValue)>,
    /// The first `Host` field the connection sent with an origin-form target, valid, and
    /// the `Host` such a request is forwarded with (see [`check_target`]).
    host_first: OnceLock<(HeaderValue, Option<HeaderValue>)>,
}

impl PeerFields {
    pub(crate) fn new(peer: SocketAddr) -> Self {
        let ip = peer.ip();
        let forwarded_for = match ip {
            std::net::IpAddr::V4(v4) => format!("for={v4}"),
            std::net::IpAddr::V6(v6) => format!("for=\"[{v6}]\""),
        };
        // An address's text is always a valid field value.
        let x_forwarded_for = HeaderValue::try_from(ip.to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        Self {
            x_forwarded_for,
            forwarded_for,
            forwarded_first: OnceLock::new(),
            host_first: OnceLock::new(),
        }
    }

    /// `Forwarded: for=<peer>;host="<host>";proto=http` (without `host` for none).
    fn forwarded(&self, host: Option<&HeaderValue>) -> Option<HeaderValue> {
        if let (Some(host), Some((first, value))) = (host, self.forwarded_first.get()) {
            if host == first {
                return Some(value.clone());
            }
        }
        let mut forwarded = String::with_capacity(self.forwarded_for.len() + 64);
        forwarded.push_str(&self.forwarded_for);
        // A validated authority holds no quote or backslash.
        if let Some(text) = host.and_then(|host| host.to_str().ok()) {
            forwarded.push_str(";host=\"");
            forwarded.push_str(text);
            forwarded.push('"');
        }
        forwarded.push_str(";proto=http");
        let value = HeaderValue::try_from(forwarded).ok()?;
        if let Some(host) = host {
            let _ = self.forwarded_first.set((host.clone(), value.clone()));
        }
        Some(value)
    }
}

/// Whether `field` is one of `names` as a CGI-style gateway reads it. WSGI, Rack and
/// CGI hand a field to the application as `HTTP_` + its name upper-cased with `-` made
/// `_`, so `X_Forwarded_Host` (or `x-forwarded_host`) is `X-Forwarded-Host` to it: passed
/// on, it would reach the origin beside or instead of the proxy's own value (Puma's
/// CVE-2024-45614; nginx and Apache drop such names for this reason). Only names holding
/// `_` are looked at: the exact names are matched by the caller's own lookups.
fn cgi_spelling_of(field: &HeaderName, names: &[HeaderName]) -> bool {
    let field = field.as_str().as_bytes();
    memchr::memchr(b'_', field).is_some()
        && names.iter().any(|name| {
            let name = name.as_str().as_bytes();
            name.len() == field.len()
                && field
                    .iter()
                    .zip(name)
                    .all(|(f, n)| f == n || (*f == b'_' && *n == b'-'))
        })
}

/// Removes every field that is one of `names`, exactly or in a CGI spelling.
fn remove_spellings(headers: &mut HeaderMap, names: &[HeaderName]) {
    // One pass over the request's fields first: most clients send none of these, and a
    // removal is a hashed lookup per name.
    let present = headers
        .keys()
        .any(|field| names.contains(field) || cgi_spelling_of(field, names));
    if !present {
        return;
    }
    let aliases: Vec<HeaderName> = headers
        .keys()
        .filter(|field| cgi_spelling_of(field, names))
        .cloned()
        .collect();
    for name in names.iter().chain(&aliases) {
        headers.remove(name);
    }
}

/// The proxy's `Via` member for a request received in `version` (RFC 9110 §7.6.3: the
/// protocol version, then a pseudonym rather than the host's name).
fn via(version: Version) -> HeaderValue {
    let protocol = match version {
        Version::HTTP_09 => "0.9",
        Version::HTTP_10 => "1.0",
        Version::HTTP_2 => "2",
        Version::HTTP_3 => "3",
        _ => "1.1",
    };
    HeaderValue::from_str(&format!("{protocol} {}", pseudonym()))
        .unwrap_or_else(|_| HeaderValue::from_static("1.1 tower-memcache"))
}

/// This process's `Via` pseudonym: `tower-memcache-` and a random token, the same for
/// every request, so that a request coming back to the process that relayed it is known
/// (a loop), while a chain of several proxies is not taken for one. It names no host.
fn pseudonym() -> &'static str {
    static PSEUDONYM: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PSEUDONYM.get_or_init(|| {
        use std::hash::{BuildHasher, Hasher};
        // Randomly keyed per process; nothing secret rides on it.
        let token = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        format!("tower-memcache-{token:016x}")
    })
}

/// Whether the request's `Via` holds this process's own member: it relayed this request
/// already (its upstream leads back to it), and forwarding it again would loop until the
/// client gave up, each hop waiting for the next.
fn looped(headers: &HeaderMap) -> bool {
    let own = pseudonym().as_bytes();
    headers.get_all(header::VIA).iter().any(|line| {
        line.as_bytes()
            .split(|b| *b == b',')
            .filter_map(|member| {
                // `RWS` between protocol and pseudonym is any run of spaces and tabs:
                // split at each byte, `1.1  <own>` had an empty second field.
                member
                    .split(|b| b.is_ascii_whitespace())
                    .filter(|field| !field.is_empty())
                    .nth(1)
            })
            .any(|received_by| received_by == own)
    })
}

/// Sets the proxy's own forwarding headers (see the crate docs), over any the request
/// still holds.
fn set_forwarding(headers: &mut HeaderMap, client: &PeerFields, client_host: Option<&HeaderValue>) {
    headers.reserve(4);
    headers.insert(X_FORWARDED_FOR, client.x_forwarded_for.clone());
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    if let Some(host) = client_host {
        headers.insert(X_FORWARDED_HOST, host.clone());
    }
    if let Some(value) = client.forwarded(client_host) {
        headers.insert(header::FORWARDED, value);
    }
}

/// Why a request is refused before the cache sees it, if it is; else the `Host` it is
/// forwarded with (its target's validated authority; none for an HTTP/1.0 request that
/// named none).
fn check_target<B>(
    request: &Request<B>,
    client: &PeerFields,
) -> Result<Option<HeaderValue>, InvalidTarget> {
    // The proxy listens on plain HTTP only: an `https://` target here is a lie (and would
    // be keyed apart from the same page under `http://`).
    if request
        .uri()
        .scheme_str()
        .is_some_and(|scheme| !scheme.eq_ignore_ascii_case("http"))
    {
        return Err(InvalidTarget::UnsupportedScheme);
    }
    // RFC 9112 §3.2.3, §3.2.4: the asterisk form is a server-wide OPTIONS's and the
    // authority form CONNECT's. A `GET *` was stored and replayed; a `GET host:port` went
    // to the origin as `GET /`.
    let form_allowed = match request.uri().path_and_query() {
        Some(path_and_query) if path_and_query.as_str() == "*" => {
            request.method() == Method::OPTIONS
        }
        Some(path_and_query) => path_and_query.path().starts_with('/'),
        None => request.uri().scheme().is_some() || request.method() == Method::CONNECT,
    };
    if !form_allowed {
        return Err(InvalidTarget::NotAResource);
    }
    let mut hosts = request.headers().get_all(header::HOST).iter();
    let (host, more_hosts) = (hosts.next(), hosts.next().is_some());
    // RFC 9112 §3.2: an HTTP/1.1 request without Host is answered 400.
    if request.version() == Version::HTTP_11 && host.is_none() {
        return Err(InvalidTarget::MalformedAuthority);
    }
    // An origin-form target's authority is its one `Host` field's, validated alike
    // whatever else the request holds. Most connections send one host: the bytes this
    // one sent first were validated then and are not again here (the layer validates
    // every request's target for its key anyway).
    let origin_form = request.uri().scheme().is_none() && request.uri().authority().is_none();
    let single_host = host.filter(|_| origin_form && !more_hosts);
    if let (Some(host), Some((first, forwarded))) = (single_host, client.host_first.get()) {
        if host.as_bytes() == first.as_bytes() {
            return Ok(forwarded.clone());
        }
    }
    let target = RequestTarget::from_parts("http", request.uri(), request.headers())?;
    let forwarded = match target.authority() {
        "" => None,
        // Most often the `Host` field as it came: shared, not copied.
        authority => match host {
            Some(host) if host.as_bytes() == authority.as_bytes() => Some(host.clone()),
            _ => HeaderValue::from_str(authority).ok(),
        },
    };
    if let Some(host) = single_host {
        // Copies: a slice would hold the connection's first read buffer for its lifetime.
        let copy = |value: &HeaderValue| HeaderValue::from_bytes(value.as_bytes()).ok();
        if let Some(first) = copy(host) {
            let kept = forwarded.as_ref().map(|value| {
                if value == host {
                    first.clone()
                } else {
                    value.clone()
                }
            });
            let _ = client.host_first.set((first, kept));
        }
    }
    Ok(forwarded)
}

/// The 400 for a target the proxy refuses.
fn refused(invalid: InvalidTarget) -> Response<Full<Bytes>> {
    tracing::debug!(reason = %invalid, "request refused: 400");
    plain(StatusCode::BAD_REQUEST, "400 Bad Request\n")
}

fn made_up(status: StatusCode, text: &'static str) -> Response<ProxyBody> {
    plain(status, text).map(Either::Right)
}

/// A short `text/plain` answer of the proxy's own, never stored.
fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// A 502 or 504 for an origin that did not answer: marked so that the cache layer may let a
/// stale entry stand in (`stale-if-error`) or answer 504 for a `must-revalidate` one.
fn unreachable(status: StatusCode, text: &'static str) -> Response<ProxyBody> {
    let mut response = made_up(status, text);
    response.extensions_mut().insert(OriginUnreachable);
    response
}

/// The outermost service: drops method overrides from GET and HEAD, and answers 400 to a
/// request whose target the proxy refuses ([`check_target`]), before the cache or the
/// origin see it; passes the rest on as the origin will see it ([`as_forwarded`]).
#[derive(Clone)]
pub(crate) struct ValidTarget<S> {
    pub(crate) inner: S,
    /// What the forwarding headers say of the client (the connection's peer).
    pub(crate) client: Arc<PeerFields>,
    /// `--underscores-in-headers`: pass fields whose names hold `_`.
    pub(crate) pass_underscored: bool,
}

/// The inner service's response, or the 400.
pub(crate) type GuardedResponse<B> = Response<Either<B, Full<Bytes>>>;

impl<S, B> Service<Request<Incoming>> for ValidTarget<S>
where
    S: Service<Request<ProxyRequestBody>, Response = Response<B>, Error = Infallible>,
{
    type Response = GuardedResponse<B>;
    type Error = Infallible;
    type Future = future::Either<
        future::Ready<Result<GuardedResponse<B>, Infallible>>,
        future::MapOk<S::Future, fn(Response<B>) -> GuardedResponse<B>>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<Incoming>) -> Self::Future {
        // A reverse proxy tunnels nothing: forwarded, CONNECT asked the origin (which may
        // itself be a forward proxy) to open a tunnel for any client.
        if request.method() == Method::CONNECT {
            tracing::debug!("CONNECT refused: 501");
            let response = plain(StatusCode::NOT_IMPLEMENTED, "501 Not Implemented\n");
            return answered_unread(request, response);
        }
        // Before the cache: a looped request waited for its own flight at each hop.
        if looped(request.headers()) {
            tracing::warn!(
                "a request came back through this proxy (its upstream leads to it): 508"
            );
            let response = plain(StatusCode::LOOP_DETECTED, "508 Loop Detected\n");
            return answered_unread(request, response);
        }
        if let Some(response) = answered_here(&mut request) {
            return answered_unread(request, response);
        }
        match check_target(&request, &self.client) {
            Err(invalid) => answered_unread(request, refused(invalid)),
            Ok(client_host) => future::Either::Right({
                // A standard method's clone is a copy.
                let method = request.method().clone();
                let clients = ClientRequest {
                    version: request.version(),
                    method: &method,
                    pass_underscored: self.pass_underscored,
                };
                as_forwarded(
                    request.headers_mut(),
                    clients,
                    &self.client,
                    client_host.as_ref(),
                );
                self.inner
                    .call(request.map(Either::Left))
                    .map_ok(passed as fn(Response<B>) -> GuardedResponse<B>)
            }),
        }
    }
}

/// `response`, the proxy's own answer to `request`, whose body is read and dropped
/// ([`discard_rest`]) rather than dropped unread: a client that writes its whole body
/// before it reads would otherwise have its connection reset under its writes, the
/// answer never read.
fn answered_unread<F, B>(
    request: Request<Incoming>,
    response: Response<Full<Bytes>>,
) -> future::Either<future::Ready<Result<GuardedResponse<B>, Infallible>>, F> {
    let version = request.version();
    let body = request.into_body();
    // An HTTP/2 stream is reset instead, as h2 does when its body is dropped.
    if version != Version::HTTP_2 && !body.is_end_stream() {
        discard_rest(Either::Left(body));
    }
    future::Either::Left(future::ready(Ok(response.map(Either::Right))))
}

/// The methods the proxy passes on, for `Allow` in what it answers itself.
const ALLOW: HeaderValue = HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS");

/// What the proxy answers itself rather than forward (RFC 9110 §7.6.2, §9.3.8), and the
/// `Max-Forwards` it lowers on the way:
/// - TRACE: 405, as nginx answers. Forwarded, the origin echoed the request as it got it
///   (cookies, credentials, the proxy's forwarding fields) to whoever sent it. In any
///   case (`trace`): many servers upper-case the method before routing.
/// - OPTIONS with `Max-Forwards: 0`: the proxy is its final recipient (200, `Allow`); with
///   more, it goes on one lower. An unreadable value is left as it is.
fn answered_here(request: &mut Request<Incoming>) -> Option<Response<Full<Bytes>>> {
    if request.method().as_str().eq_ignore_ascii_case("TRACE") {
        tracing::debug!("TRACE refused: 405");
        let mut response = plain(StatusCode::METHOD_NOT_ALLOWED, "405 Method Not Allowed\n");
        response.headers_mut().insert(header::ALLOW, ALLOW);
        return Some(response);
    }
    if request.method() != Method::OPTIONS {
        return None;
    }
    let remaining = request
        .headers()
        .get(header::MAX_FORWARDS)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()?;
    if remaining == 0 {
        let mut response = plain(StatusCode::OK, "");
        response.headers_mut().insert(header::ALLOW, ALLOW);
        return Some(response);
    }
    request
        .headers_mut()
        .insert(header::MAX_FORWARDS, HeaderValue::from(remaining - 1));
    None
}

fn passed<B>(response: Response<B>) -> GuardedResponse<B> {
    response.map(Either::Left)
}

/// An error and its sources on one line (hyper's own messages are terse).
pub(crate) fn error_chain(err: &dyn Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// How the proxy talks to its origin (`--upstream*`, `--connect-timeout`).
#[derive(Clone, Debug)]
pub(crate) struct UpstreamSettings {
    pub(crate) origin: Uri,
    /// Send the origin's authority as `Host` (`--upstream-host`).
    pub(crate) upstream_host: bool,
    pub(crate) connect_timeout: Duration,
    pub(crate) head_timeout: Duration,
    /// `--upstream-max-connections`, shared by every worker.
    pub(crate) limit: Arc<UpstreamLimit>,
    /// `--targeted-cache-control`.
    pub(crate) targeted: Vec<HeaderName>,
}

/// The pooled client to the origin (`http://host[:port]`); made inside the runtime that
/// will use it.
pub(crate) fn upstream(settings: &UpstreamSettings) -> Result<Arc<Upstream>, crate::BoxError> {
    let origin = &settings.origin;
    let authority = origin
        .authority()
        .cloned()
        .ok_or("--upstream has no host")?;
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(settings.connect_timeout));
    let client = Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(30))
        // Idle connections hold no place: at most as many are kept as may be busy.
        .pool_max_idle_per_host(settings.limit.max().min(256))
        // hyper's default (about 400 KiB) let each response under way hold that much
        // head, and the entry every hit decodes keep it. Larger heads are a 502.
        .http1_max_buf_size(MAX_RESPONSE_HEAD)
        .build(OriginConnector(connector));
    Ok(Arc::new(Upstream {
        client,
        host_value: HeaderValue::from_str(authority.as_str())?,
        authority,
        upstream_host: settings.upstream_host,
        head_timeout: settings.head_timeout,
        limit: Arc::clone(&settings.limit),
        targeted: settings.targeted.clone(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(target: &str, version: Version, hosts: &[&str]) -> Request<()> {
        let mut request = Request::get(target).version(version);
        for host in hosts {
            request = request.header(header::HOST, *host);
        }
        request.body(()).unwrap()
    }

    fn peer() -> PeerFields {
        PeerFields::new(SocketAddr::from(([127, 0, 0, 1], 40000)))
    }

    #[test]
    fn a_connection_checks_each_target_as_a_new_connection_would() {
        let v11 = Version::HTTP_11;
        let requests = [
            request("/a", v11, &["Example.COM:80"]),
            request("/a", v11, &["example.com"]),
            request("/a", v11, &["example.com:8080"]),
            request("/a", v11, &["example.com/a"]),
            request("/a", v11, &["example.com:99999"]),
            request("/a", v11, &["example.com", "example.com"]),
            request("/a", v11, &[]),
            request("/a", Version::HTTP_10, &[]),
            request("http://other.example/a", v11, &["example.com"]),
            request("http://example.com/a", v11, &["example.com"]),
            request("https://example.com/a", v11, &["example.com"]),
            request("*", v11, &["example.com"]),
        ];
        for first in &requests {
            let client = peer();
            let _ = check_target(first, &client);
            for request in &requests {
                assert_eq!(
                    check_target(request, &client),
                    check_target(request, &peer()),
                    "{} {:?} after {} {:?}",
                    request.uri(),
                    request.headers(),
                    first.uri(),
                    first.headers()
                );
            }
        }
        let client = peer();
        let first = check_target(&requests[0], &client);
        assert_eq!(first, Ok(Some(HeaderValue::from_static("example.com"))));
        assert_eq!(check_target(&requests[0], &client), first);
    }
}
