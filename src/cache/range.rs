//! Range requests (RFC 9110 §14, RFC 9111 §3.3–3.4): a `Range` answered from a stored
//! complete response (206 with one slice of the zero-copy body, `multipart/byteranges`
//! for several, 416 when none overlaps), and, on a miss, the whole representation fetched
//! in the background so the next range request is a hit.
//!
//! On a miss the range request goes to the origin as it is and the origin's 206 passes
//! through (never stored, never replayed as a 200): stripping `Range` and waiting for the
//! whole body would make a player seeking into a video, or a download manager fetching
//! the last segment of a file, wait for every byte before its range. Once that 206 names
//! a complete length the entry size limit allows, a GET of the layer's own (no `Range`,
//! no conditions) fetches the whole in the background, through the same single flight,
//! placeholder and admission gate as any miss ("Purges that hold" holds for it). Partial
//! entries (keeping 206s and combining them, §3.4) are not kept: a representation is
//! cached whole or not at all.

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body::Body;
use tower::Service;

use super::answer::FromCache;
use super::body::ResponseBody;
use super::coalesce::{Coordinated, Waiting};
use super::exchange::Exchange;
use super::own_request::{RequestHead, own_body};
use super::revalidate::{For, drain_stored, exchange};
use super::shared::Shared;
use super::status::Forward;
use super::storage::Lookup;
use super::stored::header_map;
use crate::backend::Backend;
use crate::cache::entry::Entry;
use crate::cache::policy::CacheControl;
pub(super) use crate::cache::policy::range::abusive;
use crate::cache::policy::range::{self, Resolved};

/// Turns `response`, a stored complete 200 answered to a GET, into the answer to the
/// request's `Range` (§14.2): a 206, a 416, or (the field ignored, `If-Range` false) left
/// as it is. Returns the length of the new body when it changed the response.
pub(super) fn apply<B>(
    response: &mut Response<ResponseBody<B>>,
    entry: &Entry,
    request_headers: &HeaderMap,
) -> Option<usize> {
    if !request_headers.contains_key(header::RANGE) {
        return None;
    }
    let specs = range::parse(request_headers)?;
    let stored = header_map(&entry.meta);
    if !range::if_range_holds(request_headers, &stored) {
        tracing::debug!("If-Range does not match the stored response: the whole is sent");
        return None;
    }
    let body = &entry.body;
    let len = u64::try_from(body.len()).ok()?;
    let ranges = match range::resolve(&specs, len) {
        Resolved::Ignore => return None,
        Resolved::Unsatisfiable => {
            // §15.5.17: the generated 416 says how long the representation is.
            let headers = response.headers_mut();
            headers.clear();
            headers.insert(header::CONTENT_RANGE, content_range(None, len)?);
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
            *response.status_mut() = StatusCode::RANGE_NOT_SATISFIABLE;
            *response.body_mut() = ResponseBody::empty();
            return Some(0);
        }
        // §8.4, §14.6: the ranges are of the encoded representation, but the coding
        // field describes the message's content, which would be a multipart body that
        // is no stream of that coding: clients that decode codings (most) read garbage.
        // Several ranges of an encoded entry get the whole (§14.2 lets a server ignore
        // `Range`), which every client decodes; one range stays a 206 of encoded bytes.
        Resolved::Ranges(ranges) if ranges.len() > 1 && has_content_coding(&stored) => {
            tracing::debug!("several ranges of an encoded representation: the whole is sent");
            return None;
        }
        Resolved::Ranges(ranges) => ranges,
    };
    let slices = ranges
        .iter()
        .map(|r| Some((r.clone(), slice(body, r)?)))
        .collect::<Option<Vec<_>>>()?;
    let (data, content_type, content_range) = match slices.as_slice() {
        [(r, data)] => (data.clone(), None, Some(content_range(Some(r), len)?)),
        parts => {
            let media = response.headers().get(header::CONTENT_TYPE).cloned();
            let (data, boundary) = multipart(parts, media.as_ref(), len)?;
            let value = format!("multipart/byteranges; boundary={boundary}");
            (data, Some(HeaderValue::from_str(&value).ok()?), None)
        }
    };
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(data.len()));
    // Digests of the 200's content (RFC 9530 §2, RFC 1864) are false of a part: a client
    // that checks them would reject it. `Repr-Digest`, of the representation, stays true.
    for name in CONTENT_DIGESTS {
        headers.remove(name);
    }
    // §14.6: a multipart 206 has no `Content-Range` of its own (each part has one).
    match content_range {
        Some(content_range) => headers.insert(header::CONTENT_RANGE, content_range),
        None => headers.remove(header::CONTENT_RANGE),
    };
    if let Some(content_type) = content_type {
        headers.insert(header::CONTENT_TYPE, content_type);
    }
    let sent = data.len();
    *response.status_mut() = StatusCode::PARTIAL_CONTENT;
    // One range is a slice of the stored body, which it keeps in memory until sent
    // (`ResponseBody::cached_len` says so); several are copied into a buffer of their own.
    let whole = if slices.len() == 1 { body.len() } else { 0 };
    *response.body_mut() = ResponseBody::slice_of(data, whole);
    tracing::debug!(
        ranges = ranges.len(),
        bytes = sent,
        "range answered from cache"
    );
    Some(sent)
}

/// Whether a response's content has a coding (`Content-Encoding` naming anything but
/// `identity`, which is no coding, RFC 9110 §8.4.1).
pub(super) fn has_content_coding(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::CONTENT_ENCODING)
        .iter()
        .any(names_a_coding)
}

/// Whether one `Content-Encoding` line names a coding (see [`has_content_coding`]).
pub(super) fn names_a_coding(value: &HeaderValue) -> bool {
    value
        .as_bytes()
        .split(|byte| *byte == b',')
        .map(<[u8]>::trim_ascii)
        .any(|coding| !coding.is_empty() && !coding.eq_ignore_ascii_case(b"identity"))
}

/// Fields that digest a message's content, not its representation: true of the stored
/// 200, not of a 206 made from it.
const CONTENT_DIGESTS: [header::HeaderName; 2] = [
    header::HeaderName::from_static("content-digest"),
    header::HeaderName::from_static("content-md5"),
];

/// `bytes first-last/len`, or `bytes */len` for a 416.
fn content_range(range: Option<&Range<u64>>, len: u64) -> Option<HeaderValue> {
    let text = match range {
        Some(r) => format!("bytes {}-{}/{len}", r.start, r.end.checked_sub(1)?),
        None => format!("bytes */{len}"),
    };
    HeaderValue::from_str(&text).ok()
}

/// A zero-copy slice of the stored body.
fn slice(body: &Bytes, range: &Range<u64>) -> Option<Bytes> {
    let start = usize::try_from(range.start).ok()?;
    let end = usize::try_from(range.end).ok()?;
    (start < end && end <= body.len()).then(|| body.slice(start..end))
}

/// A `multipart/byteranges` body (§14.6) and its boundary; `None` when the boundary
/// happens to occur in the data (the whole is sent then).
fn multipart(
    parts: &[(Range<u64>, Bytes)],
    media: Option<&HeaderValue>,
    len: u64,
) -> Option<(Bytes, String)> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let boundary = format!(
        "tower-memcache-{:08x}{:08x}",
        nanos,
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let delimiter = format!("--{boundary}");
    let finder = memchr::memmem::Finder::new(delimiter.as_bytes());
    if parts.iter().any(|(_, data)| finder.find(data).is_some()) {
        return None;
    }
    let total: usize = parts.iter().map(|(_, d)| d.len()).sum();
    let mut body = BytesMut::with_capacity(total.saturating_add(parts.len().saturating_mul(128)));
    for (i, (range, data)) in parts.iter().enumerate() {
        if i > 0 {
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(delimiter.as_bytes());
        body.extend_from_slice(b"\r\n");
        if let Some(media) = media {
            body.extend_from_slice(b"Content-Type: ");
            body.extend_from_slice(media.as_bytes());
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(b"Content-Range: ");
        body.extend_from_slice(content_range(Some(range), len)?.as_bytes());
        body.extend_from_slice(b"\r\n\r\n");
        body.extend_from_slice(data);
    }
    body.extend_from_slice(b"\r\n");
    body.extend_from_slice(delimiter.as_bytes());
    body.extend_from_slice(b"--\r\n");
    Some((body.freeze(), boundary))
}

/// Request fields the whole-representation GET leaves out: it asks for the whole,
/// unconditionally.
const NOT_FORWARDED: [header::HeaderName; 6] = [
    header::RANGE,
    header::IF_RANGE,
    header::IF_MATCH,
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
    header::IF_UNMODIFIED_SINCE,
];

/// Removes what makes a request ask for part of the representation (`Range`, the
/// `If-Range` that only qualifies it, and the old `Request-Range`), for requests that
/// refresh a whole entry.
pub(super) fn strip(headers: &mut HeaderMap) {
    headers.remove(header::RANGE);
    headers.remove(header::IF_RANGE);
    headers.remove(REQUEST_RANGE);
}

/// `Request-Range`: `Range` as a pre-standard draft named it, which Apache httpd still
/// honours when a request has no `Range` (a 206, `multipart/x-byteranges` for several).
const REQUEST_RANGE: header::HeaderName = header::HeaderName::from_static("request-range");

/// Makes a GET or HEAD fit to relay to the origin, looked up or not (RFC 9110 §14.2 lets
/// any server ignore `Range`): without `Request-Range`, and without a `Range` the cache
/// would not answer itself, which asks for many times the page for a few bytes of
/// request (§17.15; see [`abusive`]). Returns whether that `Range` was removed.
///
/// `Request-Range` is no standard field, in no key and named by no `Vary`, yet it changes
/// an origin's answer: relayed, it passed any range set to such an origin past
/// [`abusive`], and its part (never stored) left the requests waiting for it with
/// nothing, each going to the origin on its own.
pub(super) fn tame(headers: &mut HeaderMap) -> bool {
    headers.remove(REQUEST_RANGE);
    let abusive = abusive(headers);
    if abusive {
        strip(headers);
    }
    abusive
}

/// The GET of the whole representation a range request's miss may start, ready before
/// the range request goes out (it moves its request to the origin).
pub(super) struct WholeFill<S, R> {
    inner: S,
    request: Request<R>,
}

impl<S, R> WholeFill<S, R> {
    /// For a GET with `Range` going to the origin: its whole-representation GET, if the
    /// layer can make one.
    pub(super) fn for_request<B: Backend>(
        shared: &Shared<B>,
        inner: &S,
        request: &Request<R>,
        ex: &Exchange,
    ) -> Option<Self>
    where
        S: Clone,
        R: 'static,
    {
        if ex.is_head
            || !ex.plan.from_cache
            || request.method() != Method::GET
            || !request.headers().contains_key(header::RANGE)
        {
            return None;
        }
        let Some(body) = own_body::<R>(shared.config.own_request_body.as_ref()) else {
            tracing::debug!(
                "no request body of the inner service's type: a range miss fills nothing"
            );
            return None;
        };
        let mut headers = HeaderMap::new();
        for (name, value) in request.headers() {
            if !NOT_FORWARDED.contains(name) {
                headers.append(name.clone(), value.clone());
            }
        }
        // A GET already (checked above).
        let whole = RequestHead::of(request).into_request(body, headers);
        Some(Self {
            inner: inner.clone(),
            request: whole,
        })
    }

    /// Starts the GET in the background when the origin answered the range request with
    /// a 206 whose complete length the entry size limit allows (a 200 was stored, or
    /// refused, as any response; a 206 of unknown length or a multipart one could be of
    /// any size).
    pub(super) fn start<B, T, ResBody>(self, shared: &Arc<Shared<B>>, answered: &Response<T>)
    where
        B: Backend,
        S: Service<Request<R>, Response = Response<ResBody>> + Clone + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Send + 'static,
        R: Send + 'static,
        ResBody: Body<Data = Bytes> + Send + 'static,
        ResBody::Error: Send + 'static,
    {
        if answered.status() != StatusCode::PARTIAL_CONTENT
            || answered.extensions().get::<FromCache>().is_some()
        {
            return;
        }
        // Nothing to fetch when the whole could not be stored anyway (`private`,
        // `no-store`, `Set-Cookie`, `Vary: *`, credentials, the request's own `no-store`):
        // judged on the 206's fields as if they were the 200's, `Content-Range` aside.
        let mut whole_headers = answered.headers().clone();
        whole_headers.remove(header::CONTENT_RANGE);
        let ruling = shared.policy().response_directives(&whole_headers);
        let request_cc = CacheControl::parse_request(self.request.headers());
        if let Err(reason) = shared.policy().storable(
            self.request.headers(),
            &request_cc,
            StatusCode::OK,
            &ruling.headers,
            &ruling.cc,
        ) {
            tracing::debug!(
                ?reason,
                "range miss: the whole would not be stored; not fetched"
            );
            return;
        }
        // Bounded: a client spraying range requests over many URLs gets a few whole
        // fills at a time, the rest are skipped (their ranges still pass through).
        let Ok(permit) = Arc::clone(&shared.config.whole_fills).try_acquire_owned() else {
            tracing::debug!("range miss: enough whole fills under way; not fetched");
            return;
        };
        let limit = shared.storable_body_size();
        let Some(total) = complete_length(answered.headers()) else {
            return;
        };
        if usize::try_from(total).map_or(true, |total| total > limit) {
            tracing::debug!(
                total,
                limit,
                "range miss: the whole is over the entry size limit; not fetched"
            );
            return;
        }
        let Self { inner, request } = self;
        let task = Arc::clone(shared);
        let deadline = shared.config.background_timeout;
        let started = shared.config.background.spawn(async move {
            // Bounded as a refresh is (`MemcacheLayer::background_timeout`): no client
            // waits for it, and an inner service that never answers would hold the place.
            if tokio::time::timeout(deadline, fill_whole(&task, inner, request, limit))
                .await
                .is_err()
            {
                tracing::debug!(
                    ?deadline,
                    "whole-representation fill dropped at its deadline"
                );
            }
            drop(permit);
        });
        if !started {
            tracing::debug!("no tokio runtime for the whole-representation fill; skipped");
        }
    }
}

/// The complete length in a single-part 206's `Content-Range: bytes a-b/len`.
fn complete_length(headers: &HeaderMap) -> Option<u64> {
    let value = headers.get(header::CONTENT_RANGE)?.to_str().ok()?;
    let (unit, rest) = value.trim().split_once(' ')?;
    if !unit.eq_ignore_ascii_case("bytes") {
        return None;
    }
    let (_, len) = rest.trim().split_once('/')?;
    let len = len.trim();
    if len.is_empty() || len.len() > 19 || !len.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    len.parse().ok()
}

/// The whole-representation GET: looked up and coordinated like any miss (it stores over
/// its own placeholder, or waits for another request's fill and is done), then read to
/// its end so the response is stored.
async fn fill_whole<B, S, R, ResBody>(
    shared: &Arc<Shared<B>>,
    mut inner: S,
    request: Request<R>,
    limit: usize,
) where
    B: Backend,
    S: Service<Request<R>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    R: Send + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Send + 'static,
{
    let Some(plan) = shared.plan(&request) else {
        return;
    };
    // Ready before it leads: a request that joins this fill's flight may hold the inner
    // service's only slot (a `ConcurrencyLimit` inside the layer), which it keeps until
    // the fill it waits for answers; readiness awaited after leading held both for
    // `coalesce_timeout`.
    if futures_util::future::poll_fn(|cx| inner.poll_ready(cx))
        .await
        .is_err()
    {
        return;
    }
    let found = match shared
        .storage
        .lookup(&plan.canonical, &plan.key, request.headers())
        .await
    {
        Lookup::Found(found) => found,
        // Nothing could be stored: do not ask the origin for the whole.
        Lookup::Unavailable => return,
    };
    if let Some(entry) = &found.entry {
        if shared
            .usable_now(entry, &plan, request.headers(), false)
            .is_some()
        {
            return;
        }
    }
    let fwd = if found.entry.is_some() {
        Forward::Stale
    } else {
        Forward::UriMiss
    };
    let ex = Exchange {
        plan,
        found,
        fwd,
        detail: None,
        is_head: false,
    };
    // Waiting for another request's fill, it lets the readiness go (keeping an unready
    // clone), as a client's request does: ready, it held a `ConcurrencyLimit`'s slot for
    // nothing up to `coalesce_timeout`, and every other request waited behind it.
    let mut unready = false;
    let mut idle = || {
        if !unready {
            inner = inner.clone();
            unready = true;
        }
    };
    // The layer's own request: never counted as a client's wait.
    let coordinated = shared
        .coordinate_idle(
            &ex,
            request.headers(),
            false,
            &mut Waiting::uncounted(),
            &mut idle,
        )
        .await;
    let filler = match coordinated {
        Coordinated::Go(filler) => filler,
        Coordinated::Answered(..) | Coordinated::Retry => return,
    };
    // Made ready again after a wait, possibly as the URL's leader (it waited for another
    // process's placeholder): requests that wait for it let their readiness go, so
    // none holds the slot it waits for.
    if unready
        && futures_util::future::poll_fn(|cx| inner.poll_ready(cx))
            .await
            .is_err()
    {
        filler.release().await;
        return;
    }
    tracing::debug!(key = %ex.plan.key, "range miss: fetching the whole representation in the background");
    if let Ok(response) = exchange(shared, inner, request, &ex, filler, For::Background).await {
        drain_stored(response.into_body(), limit).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc9110_14_4_complete_length_of_a_206() {
        let with = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_RANGE, HeaderValue::from_static(v));
            h
        };
        assert_eq!(complete_length(&with("bytes 0-4/10")), Some(10));
        assert_eq!(complete_length(&with("bytes 0-4/*")), None);
        assert_eq!(complete_length(&with("items 0-4/10")), None);
        assert_eq!(complete_length(&HeaderMap::new()), None);
    }
}
