//! Review RB: conformance gaps earlier sessions noticed and left standing, fixed to the
//! RFCs: `Cache-Status: stored` for a response the fill can still abandon (RFC 9211
//! §2.5), the stored responses a 304 to a client's own condition selects for update (RFC
//! 9111 §4.3.4), a multipart 206 of an entry with a content coding (RFC 9110 §8.4,
//! §14.6), a stale stand-in for a failing origin called a hit (RFC 9211 §2.1), and a
//! refresh relabelling the stored body's content coding (RFC 9111 §3.2). Each test
//! failed before its fix.

use crate::support;

use std::convert::Infallible;
use std::io::{Read, Write};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use tower::{Layer, ServiceExt};
use tower_memcache::CacheMode;
use tower_memcache::backend::MemoryBackend;

use support::{Watch, bounded, send};

/// A body of one data frame, then (when it has any) trailers; `exact`: its size hint
/// says its length, as a `Content-Length` framed body's does.
struct Framed {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
    exact: bool,
}

impl Body for Framed {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(data) = self.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }

    fn size_hint(&self) -> SizeHint {
        match (&self.data, self.exact) {
            (Some(data), true) => SizeHint::with_exact(data.len() as u64),
            (None, true) => SizeHint::with_exact(0),
            (_, false) => SizeHint::default(),
        }
    }
}

/// RFC 9211 §2.5: `stored` says the cache stored the response. It was sent for every
/// response the admission gate let in, before its body was read, and a body that then
/// ended with trailers (which the cache does not keep, so it abandons the store) was
/// stored nowhere: the client was told `stored`, and the next request missed. `stored`
/// is now sent only when storing is certain at header time but for a failure the client
/// sees itself: a body of a declared length and no `Trailer` announced.
#[tokio::test]
async fn stored_is_not_claimed_for_a_response_its_trailers_can_still_abandon() {
    // (label, body length declared, `Trailer` announced, trailers sent, stored)
    let cases = [
        ("chunked, trailers", false, false, true, false),
        (
            "declared length, announced trailers",
            true,
            true,
            true,
            false,
        ),
        ("declared length, no trailers", true, false, false, true),
    ];
    for (label, exact, announce, trailers, stored) in cases {
        let layer = support::layer(MemoryBackend::new());
        let watch = Watch::of(&layer);
        let service = layer.layer(tower::service_fn(move |_request: Request<()>| async move {
            let trailers = trailers.then(|| {
                let mut t = HeaderMap::new();
                t.insert("x-checksum", HeaderValue::from_static("1"));
                t
            });
            let body = Framed {
                data: Some(Bytes::from_static(b"page")),
                trailers,
                exact,
            };
            let mut response = Response::new(body);
            if announce {
                let headers = response.headers_mut();
                headers.insert("trailer", HeaderValue::from_static("x-checksum"));
            }
            Ok::<_, Infallible>(response)
        }));
        let url = "http://site.example/t";
        let first = bounded(label, send(&service, Method::GET, url, &[])).await;
        assert_eq!(first.body, "page", "{label}");
        watch.settled().await;
        let second = bounded(label, send(&service, Method::GET, url, &[])).await;
        let was_stored = second.cache_status() == support::HIT;
        assert_eq!(was_stored, stored, "{label}: {second:?}");
        assert_eq!(
            first.cache_status().ends_with("; stored"),
            was_stored,
            "{label}: said {:?}, stored: {was_stored}",
            first.cache_status()
        );
    }
}

/// A gzip member of `text`.
fn gzip(text: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(text).unwrap();
    encoder.finish().unwrap()
}

/// RFC 9110 §8.4, §14.6: ranges are of the encoded representation, and a
/// `multipart/byteranges` body is no gzip stream. A request for several ranges of an
/// entry stored with `Content-Encoding: gzip` got a multipart 206 that still said
/// `Content-Encoding: gzip`: a client that decodes it (curl `--compressed`, any HTTP
/// library that decodes content codings) failed, or read garbage. Such a request now
/// gets the whole 200 (§14.2 lets a server ignore `Range`), which decodes; one range of
/// it is still a 206 of the encoded bytes.
#[tokio::test]
async fn several_ranges_of_a_gzip_entry_decode_as_the_client_reads_them() {
    let text: Vec<u8> = (0..400u32)
        .flat_map(|i| format!("line {i}\n").into_bytes())
        .collect();
    let encoded = Bytes::from(gzip(&text));
    let layer = support::layer(MemoryBackend::new());
    let watch = Watch::of(&layer);
    let service = layer.layer(tower::service_fn({
        let encoded = encoded.clone();
        move |request: Request<()>| {
            let encoded = encoded.clone();
            async move {
                assert!(
                    !request.headers().contains_key("range"),
                    "a hit was expected"
                );
                let mut response = Response::new(http_body_util::Full::new(encoded));
                let headers = response.headers_mut();
                headers.insert("content-encoding", HeaderValue::from_static("gzip"));
                headers.insert("content-type", HeaderValue::from_static("text/plain"));
                Ok::<_, Infallible>(response)
            }
        }
    }));
    let url = "http://site.example/log.txt";
    let read = |range: &'static str| {
        let service = service.clone();
        async move {
            let request = Request::get(url).header("range", range).body(()).unwrap();
            let response = bounded(range, service.oneshot(request)).await.unwrap();
            let (parts, body) = response.into_parts();
            (parts, body.collect().await.unwrap().to_bytes())
        }
    };
    bounded("fill", send(&service, Method::GET, url, &[])).await;
    watch.settled().await;
    let (parts, body) = read("bytes=0-9,100-109").await;
    assert!(
        parts.headers["cache-status"]
            .to_str()
            .unwrap()
            .contains("hit"),
        "{parts:?}"
    );
    if parts.headers.get("content-encoding").is_some() {
        let mut decoded = Vec::new();
        let decodes = flate2::read::GzDecoder::new(&body[..])
            .read_to_end(&mut decoded)
            .is_ok();
        assert!(
            decodes && decoded == text,
            "a body that says gzip does not decode: {} {:?}",
            parts.status,
            parts.headers.get("content-type")
        );
    }
    assert!(parts.status == 200 || parts.status == 206, "{parts:?}");
    // One range stays a 206: a slice of the encoded representation (§14.1.2).
    let (parts, body) = read("bytes=0-9").await;
    assert_eq!(parts.status, 206);
    assert_eq!(
        parts.headers["content-range"],
        format!("bytes 0-9/{}", encoded.len())
    );
    assert_eq!(body, encoded.slice(0..10));
}

/// An origin for the 304 scenarios: a full 200 the first time (with `fields`), then a
/// 304 (with `not_modified`) to every conditional request; counts calls.
fn validating_origin(
    fields: &'static [(&'static str, &'static str)],
    not_modified: &'static [(&'static str, &'static str)],
) -> (
    impl tower::Service<
        Request<()>,
        Response = Response<http_body_util::Full<Bytes>>,
        Error = Infallible,
        Future = impl Send,
    > + Clone
    + Send
    + 'static,
    Arc<AtomicUsize>,
) {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&calls);
    let service = tower::service_fn(move |request: Request<()>| {
        counted.fetch_add(1, Ordering::SeqCst);
        let conditional = request.headers().contains_key("if-none-match")
            || request.headers().contains_key("if-modified-since");
        async move {
            let (status, lines, body) = if conditional {
                (304, not_modified, "")
            } else {
                (200, fields, "page")
            };
            let mut response = Response::new(http_body_util::Full::new(Bytes::from(body)));
            *response.status_mut() = http::StatusCode::from_u16(status).unwrap();
            for (name, value) in lines {
                response
                    .headers_mut()
                    .append(*name, HeaderValue::from_static(value));
            }
            Ok::<_, Infallible>(response)
        }
    });
    (service, calls)
}

/// RFC 9111 §4.3.4: a 304 selects the stored responses to update by its strong `ETag`,
/// else by a weak validator (a weak `ETag`, `Last-Modified`) that corresponds to the
/// stored one's, else, when neither it nor the one stored response carries a validator,
/// that response. For a 304 to a client's own condition the layer demanded a validator
/// on both sides and byte-identical `ETag`s, so the refresh was lost for a 304 that
/// weakens the stored `ETag` (`W/"v1"` for `"v1"`, as servers that compress on the fly
/// send), one that answers with `Last-Modified` alone, and a validator-less 304 to an
/// `If-Modified-Since` the stored response vouches for (its `Date` at or after the
/// date asked about: "not modified since" then covers it). Each is now refreshed; a
/// validator-less 304 to `If-None-Match: *` (which says only that a representation
/// exists, review GG) or to a date after the stored one's still refreshes nothing.
#[tokio::test]
async fn a_304_to_a_clients_own_condition_selects_by_rfc9111_4_3_4() {
    // The stored response is dated 100 s ago (fresh for 500 s more); the dates the
    // clients ask about lie before and after it.
    let ago = |seconds| {
        let when = std::time::SystemTime::now() - std::time::Duration::from_secs(seconds);
        &*String::leak(httpdate::fmt_http_date(when))
    };
    let (earlier, date, later) = (ago(1000), ago(100), ago(10));
    type Fields = &'static [(&'static str, &'static str)];
    // (label, stored fields, the client's condition, the 304's validators, refreshed)
    type Case = (
        &'static str,
        Vec<(&'static str, &'static str)>,
        Vec<(&'static str, &'static str)>,
        Vec<(&'static str, &'static str)>,
        bool,
    );
    let cases: [Case; 7] = [
        (
            "strong etag",
            vec![("etag", "\"v1\"")],
            vec![("if-none-match", "\"v1\"")],
            vec![("etag", "\"v1\"")],
            true,
        ),
        (
            "weak etag for a strong one",
            vec![("etag", "\"v1\"")],
            vec![("if-none-match", "W/\"v1\"")],
            vec![("etag", "W/\"v1\"")],
            true,
        ),
        (
            "last-modified alone",
            vec![("etag", "\"v1\""), ("last-modified", date)],
            vec![("if-modified-since", date)],
            vec![("last-modified", date)],
            true,
        ),
        (
            "no validators, a date the stored response vouches for",
            vec![("date", date)],
            vec![("if-modified-since", earlier)],
            vec![],
            true,
        ),
        (
            "no validators, a date past the stored response",
            vec![("date", date)],
            vec![("if-modified-since", later)],
            vec![],
            false,
        ),
        (
            "no validators, if-none-match: *",
            vec![("date", date)],
            vec![("if-none-match", "*")],
            vec![],
            false,
        ),
        (
            "another strong etag",
            vec![("etag", "\"v1\"")],
            vec![("if-none-match", "\"v2\"")],
            vec![("etag", "\"v2\"")],
            false,
        ),
    ];
    for (label, stored, condition, validators, refreshed) in cases {
        let mut fields = vec![("cache-control", "max-age=600")];
        fields.extend_from_slice(&stored);
        let fields: Fields = Vec::leak(fields);
        let mut not_modified = vec![("cache-control", "max-age=600"), ("x-refreshed", "1")];
        not_modified.extend_from_slice(&validators);
        // The cookie answers this client alone: never grafted onto the entry.
        not_modified.push(("set-cookie", "sid=attacker"));
        let not_modified: Fields = Vec::leak(not_modified);
        let (origin, _calls) = validating_origin(fields, not_modified);
        let layer = support::layer(MemoryBackend::new()).mode(CacheMode::Origin);
        let watch = Watch::of(&layer);
        let service = layer.layer(origin);
        let url = "http://site.example/p";
        let first = bounded(label, send(&service, Method::GET, url, &[])).await;
        assert_eq!(first.body, "page", "{label}");
        watch.settled().await;
        let mut asked = vec![("cache-control", "no-cache")];
        asked.extend_from_slice(&condition);
        let answer = bounded(label, send(&service, Method::GET, url, &asked)).await;
        assert_eq!(answer.status, 304, "{label}: {answer:?}");
        watch.settled().await;
        let after = bounded(label, send(&service, Method::GET, url, &[])).await;
        assert_eq!(after.body, "page", "{label}");
        support::assert_hit(after.cache_status());
        assert_eq!(
            after.header("x-refreshed").is_some(),
            refreshed,
            "{label}: {after:?}"
        );
        assert!(after.header("set-cookie").is_none(), "{label}: {after:?}");
    }
}

/// RFC 9211 §2.1: `hit` says the request "was not forwarded"; a response that was in the
/// cache "but not able to be used without going forward (e.g., because it was stale)
/// is not considered a hit". A stale response standing in for a failing origin
/// (`stale-if-error`, `stale_if_unreachable`) went forward first, yet said `hit; ttl=-N`:
/// a monitor reading hits counted an origin outage as the cache at work. It now says
/// `fwd=stale`, with the origin's status (`fwd-status`, when it sent one), how stale
/// (`ttl`) and why (`detail`).
#[tokio::test]
async fn a_stale_stand_in_for_a_failing_origin_is_no_hit() {
    for unreachable in [false, true] {
        let calls = Arc::new(AtomicUsize::new(0));
        let origin = tower::service_fn({
            let calls = Arc::clone(&calls);
            move |_request: Request<()>| {
                let call = calls.fetch_add(1, Ordering::SeqCst);
                async move {
                    if call > 0 && unreachable {
                        return Err(std::io::Error::other("connection refused"));
                    }
                    let mut response =
                        Response::new(http_body_util::Full::new(Bytes::from("page")));
                    if call > 0 {
                        *response.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
                    }
                    let headers = response.headers_mut();
                    // Stale on arrival (its age past its lifetime), usable on error (or,
                    // by the layer's `stale_if_unreachable`, when unreachable).
                    let cc = match unreachable {
                        false => "max-age=1, stale-if-error=600",
                        true => "max-age=1",
                    };
                    headers.insert("cache-control", HeaderValue::from_static(cc));
                    headers.insert("age", HeaderValue::from_static("5"));
                    headers.insert("etag", HeaderValue::from_static("\"s1\""));
                    Ok(response)
                }
            }
        });
        let layer = support::layer(MemoryBackend::new())
            .mode(CacheMode::Origin)
            .stale_if_unreachable(Some(std::time::Duration::from_secs(600)));
        let watch = Watch::of(&layer);
        let service = layer.layer(origin);
        let url = "http://site.example/s";
        bounded("fill", send(&service, Method::GET, url, &[])).await;
        watch.settled().await;
        let stale = bounded("stand-in", send(&service, Method::GET, url, &[])).await;
        assert_eq!(stale.body, "page", "unreachable: {unreachable}: {stale:?}");
        assert_eq!(calls.load(Ordering::SeqCst), 2, "it went forward");
        let said = stale.header("cache-status").unwrap_or("").to_string();
        let expected = if unreachable {
            "tower-memcache; fwd=stale; ttl=-"
        } else {
            "tower-memcache; fwd=stale; fwd-status=503; ttl=-"
        };
        assert!(said.starts_with(expected), "{said}");
        assert!(!said.contains("hit"), "{said}");
        let detail = if unreachable {
            "detail=origin-unreachable"
        } else {
            "detail=stale-if-error"
        };
        assert!(said.ends_with(detail), "{said}");
    }
}

/// RFC 9111 §3.2: a cache that keeps the bytes it received "MAY omit" from a refresh the
/// fields "necessary to assure integrity of the stored response", its example being
/// `Content-Encoding` ("Updating that stored metadata with a different Content-Encoding
/// header field would be problematic"). A 304 (or HEAD) carrying another coding than the
/// stored body's (an origin that shares one `ETag` between its plain and gzip variants,
/// revalidated by a client that accepts gzip) relabelled the stored plain body as gzip,
/// and every later hit was undecodable. The stored body keeps its own coding.
#[tokio::test]
async fn a_refresh_never_relabels_the_stored_bodys_content_coding() {
    let calls = Arc::new(AtomicUsize::new(0));
    let origin = tower::service_fn({
        let calls = Arc::clone(&calls);
        move |request: Request<()>| {
            calls.fetch_add(1, Ordering::SeqCst);
            async move {
                let conditional = request.headers().contains_key("if-none-match");
                let body = if conditional { "" } else { "page" };
                let mut response = Response::new(http_body_util::Full::new(Bytes::from(body)));
                if conditional {
                    *response.status_mut() = http::StatusCode::NOT_MODIFIED;
                }
                let headers = response.headers_mut();
                headers.insert("etag", HeaderValue::from_static("\"v1\""));
                if conditional {
                    headers.insert("cache-control", HeaderValue::from_static("max-age=600"));
                    headers.insert("content-encoding", HeaderValue::from_static("gzip"));
                    headers.insert("x-refreshed", HeaderValue::from_static("1"));
                } else {
                    // Stale on arrival: the next request revalidates it.
                    headers.insert("cache-control", HeaderValue::from_static("max-age=1"));
                    headers.insert("age", HeaderValue::from_static("5"));
                }
                Ok::<_, Infallible>(response)
            }
        }
    });
    let layer = support::layer(MemoryBackend::new()).mode(CacheMode::Origin);
    let watch = Watch::of(&layer);
    let service = layer.layer(origin);
    let url = "http://site.example/plain";
    bounded("fill", send(&service, Method::GET, url, &[])).await;
    watch.settled().await;
    let gzip = [("accept-encoding", "gzip")];
    let revalidated = bounded("revalidation", send(&service, Method::GET, url, &gzip)).await;
    watch.settled().await;
    let hit = bounded("hit", send(&service, Method::GET, url, &[])).await;
    assert_eq!(calls.load(Ordering::SeqCst), 2, "{revalidated:?} {hit:?}");
    assert_eq!(hit.header("x-refreshed"), Some("1"), "refreshed: {hit:?}");
    support::assert_hit(hit.cache_status());
    assert_eq!(hit.body, "page");
    assert_eq!(hit.header("content-encoding"), None, "relabelled: {hit:?}");
    assert_eq!(
        revalidated.header("content-encoding"),
        None,
        "{revalidated:?}"
    );
}
