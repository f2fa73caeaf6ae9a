//! Forwarding to the origin: the request's target and `Host` as the origin sees them, the
//! pooled client, the response head checked before the cache sees it, and the 502, 503 and
//! 504 the proxy answers for an origin that failed. The fields rewritten on the way are
//! `fields`'s, the bodies `upload`'s and `download`'s, what is refused before the cache
//! `target`'s.

use std::convert::Infallible;
use std::error::Error;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme, Uri};
use http::{Request, Response, StatusCode, Version};
use http_body::Body as _;
use http_body_util::{Either, Empty, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tower_memcache::cache::{OriginUnreachable, RequestTarget};

use crate::connections::Activity;
use crate::download::Download;
use crate::fields::{
    FORWARDING, PeerFields, canonical_length, kept_from_connection, remove_spellings,
    set_forwarding, strip_hop_by_hop, via,
};
use crate::origin_connection::{Carriers, OriginConnector, framed_two_ways, kept_alive_unanswered};
use crate::target::refused;
use crate::upload::{Answered, Progress, ProxyRequestBody, Upload, head_in_time};
use crate::upstream_limit::UpstreamLimit;

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
    /// ([`decides_caching`](tower_memcache::cache::decides_caching)).
    targeted: Vec<HeaderName>,
}

impl Upstream {
    /// `--upstream-max-connections`.
    pub(crate) fn limit(&self) -> &Arc<UpstreamLimit> {
        &self.limit
    }
}

/// The origin's body, or a short body the proxy made up (502, 504).
pub(crate) type ProxyBody = Either<Download, Full<Bytes>>;

/// The inner service: forwards one request to the origin. Never fails: trouble with the
/// origin is a 502 or 504 response. `connection` counts the place it takes at the origin
/// and its request body's progress (see `connections::watch_connection`).
pub(crate) async fn forward(
    upstream: Arc<Upstream>,
    client: Arc<PeerFields>,
    connection: Arc<Activity>,
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
    canonical_length(headers);
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
            connection: Arc::clone(&connection),
        })
    });
    // A copy to send again, for a safe request without body only (misses only: hits never
    // get here).
    let mut carriers = Carriers::default();
    let again = (!carries_body && method.is_safe()).then(|| {
        let mut again = bodiless_copy(&request);
        carriers.note(&mut again);
        again
    });
    let mut request = request.map(|body| Upload {
        body,
        progress: progress.clone(),
        discards: received != Version::HTTP_2,
    });
    carriers.note(&mut request);
    let place = match upstream.limit.admit().await {
        Ok(place) => connection.hold(place),
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
            // An answer framed two ways: what the origin sends past the framing hyper
            // read it by, arriving once the next client's request went out on the
            // pooled connection, would answer that request (and be stored under its key).
            if framed_two_ways(response.status(), response.headers()) {
                tracing::warn!(%method, upstream = %upstream.authority, status = %response.status(), "upstream framed a response two ways: its connection is not used again");
                carriers.retire();
            }
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

/// Whether hyper undid every transfer coding the message (a response, or a request:
/// [`ValidTarget`](crate::target::ValidTarget)) names, so that the body it hands over
/// is the representation: `chunked` once, as the last coding (or none, the obsolete
/// `identity` aside). Another coding (`gzip, chunked`) is left on the body, and
/// so is a second chunking (`chunked, chunked`), or all of the framing when `chunked` is
/// not last (`chunked, identity`: hyper then reads to the connection's close); dropping
/// the hop-by-hop field would pass that on, and store it, as if it were the
/// representation. Such a response is a 502, as nginx makes it ("upstream sent unknown
/// Transfer-Encoding").
pub(crate) fn only_chunked(headers: &HeaderMap) -> bool {
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

fn made_up(status: StatusCode, text: &'static str) -> Response<ProxyBody> {
    plain(status, text).map(Either::Right)
}

/// A short `text/plain` answer of the proxy's own, never stored.
pub(crate) fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
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
pub(crate) fn unreachable(status: StatusCode, text: &'static str) -> Response<ProxyBody> {
    let mut response = made_up(status, text);
    response.extensions_mut().insert(OriginUnreachable);
    response
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
