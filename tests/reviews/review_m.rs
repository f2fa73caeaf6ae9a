//! Review M: a critical review of one round of changes (the one-pass authority, stored
//! header names read as bytes, a hit's `Content-Length`, the proxy's off-thread log
//! writers, the review J and K fixes). Each test fails if the defect it names returns.

use crate::support;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use support::Watch;
use support::proxy::{raw_request, start_proxy};
use tower::Layer;

use tower_memcache::backend::MemoryBackend;
use tower_memcache::cache::CacheMode;

/// RFC 9110 §8.6: "A server MUST NOT send a Content-Length header field in any response
/// with a status code of 1xx (Informational) or 204 (No Content)." A stored 204 (one of
/// the default statuses) answered to a HEAD got the body's length, `0`, added as for any
/// HEAD; one stored with an origin's `Content-Length` got it, or `0` in its place, on
/// every GET hit.
#[tokio::test]
async fn rfc9110_8_6_a_cached_204_carries_no_content_length() {
    for origin_length in [None, Some("0"), Some("5")] {
        let origin = tower::service_fn(move |_: Request<()>| async move {
            let mut builder = Response::builder()
                .status(StatusCode::NO_CONTENT)
                .header("cache-control", "max-age=60");
            if let Some(length) = origin_length {
                builder = builder.header("content-length", length);
            }
            Ok::<_, Infallible>(builder.body(Full::<Bytes>::default()).unwrap())
        });
        let layer = support::layer(MemoryBackend::new()).mode(CacheMode::Origin);
        let watch = Watch::of(&layer);
        let service = layer.layer(origin);
        let url = "http://example.com/no-content";
        support::send(&service, Method::GET, url, &[]).await;
        support::stores(&watch, 1).await;
        for method in [Method::GET, Method::HEAD] {
            let answer = support::send(&service, method.clone(), url, &[]).await;
            support::assert_hit(answer.cache_status());
            assert_eq!(answer.status, StatusCode::NO_CONTENT);
            assert_eq!(
                answer.header("content-length"),
                None,
                "{method} hit of a 204 stored with Content-Length {origin_length:?}"
            );
        }
    }
}

/// Review J made a transfer coding other than `chunked` a 502, but let through any list
/// of `chunked` and `identity`. hyper undoes one chunking, and only when `chunked` is the
/// last coding: `chunked, chunked` (chunked twice, which RFC 9112 §6.1 forbids) kept the
/// inner chunk framing in the body, and `chunked, identity` (chunked not last) was read to
/// the connection's close with all of its framing. Either way the client got, and the
/// cache stored for everyone, chunk-size lines as the page.
#[test]
fn a_chunking_hyper_does_not_undo_never_reaches_a_client_as_the_page() {
    let inner = b"5\r\nhello\r\n0\r\n\r\n";
    let mut twice = format!("{:x}\r\n", inner.len()).into_bytes();
    twice.extend_from_slice(inner);
    twice.extend_from_slice(b"\r\n0\r\n\r\n");
    let head = |codings: &str| {
        format!(
            "HTTP/1.1 200 OK\r\nCache-Control: public, max-age=60\r\n\
             Transfer-Encoding: {codings}\r\nConnection: close\r\n\r\n"
        )
        .into_bytes()
    };
    let cases: [(&str, &[u8]); 3] = [
        ("chunked, chunked", &twice),
        ("chunked\r\nTransfer-Encoding: chunked", &twice),
        ("chunked, identity", inner),
    ];
    for (codings, body) in cases {
        let mut answer = head(codings);
        answer.extend_from_slice(body);
        let proxy = start_proxy(support::origin::canned(answer, 16), &[]);
        for attempt in ["first", "second"] {
            let (status, response) = raw_request(proxy.addr, "GET /page HTTP/1.1\r\nHost: h\r\n");
            // The proxy cannot undo these codings: a 502, as for any it cannot undo.
            assert_eq!(
                status, 502,
                "{codings:?}, {attempt}: chunk framing passed on as the page: {response:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// Review K gave `stale-while-revalidate` no window when none is given (its
/// `staleness <= window` held at staleness 0, in the millisecond where a response's age
/// equals its lifetime); `stale-if-error` kept the same comparison. A `max-age=0`
/// response with no `stale-if-error`, revalidated in the millisecond it was stored, was
/// served stale in place of the origin's 500 (RFC 9111 §4.2.4: a cache must not generate
/// a stale response unless the origin or the client permits it).
#[tokio::test]
async fn rfc5861_4_no_window_no_stale_if_error_even_at_age_equal_lifetime() {
    let calls = Arc::new(AtomicUsize::new(0));
    let origin = {
        let calls = Arc::clone(&calls);
        tower::service_fn(move |_: Request<()>| {
            // Each URL is asked twice: a storable 200, then a failure.
            let first = calls.fetch_add(1, Ordering::SeqCst) % 2 == 0;
            async move {
                let response = if first {
                    Response::builder()
                        .header("etag", "\"v1\"")
                        .header("cache-control", "max-age=0")
                        .body(Full::<Bytes>::from("stored, never fresh"))
                } else {
                    Response::builder()
                        .status(StatusCode::INTERNAL_SERVER_ERROR)
                        .body(Full::<Bytes>::from("origin failed"))
                };
                Ok::<_, Infallible>(response.unwrap())
            }
        })
    };
    let layer = support::layer(MemoryBackend::new()).mode(CacheMode::Origin);
    let watch = Watch::of(&layer);
    let service = layer.layer(origin);
    for n in 0..50 {
        let url = format!("http://example.com/failing/{n}");
        support::send(&service, Method::GET, &url, &[]).await;
        watch.settled().await;
        let answer = support::send(&service, Method::GET, &url, &[]).await;
        assert_eq!(
            answer.status,
            StatusCode::INTERNAL_SERVER_ERROR,
            "{url}: served stale without stale-if-error: {}",
            answer.cache_status()
        );
        watch.settled().await;
    }
    assert_eq!(calls.load(Ordering::SeqCst), 100);
    assert_eq!(watch.snapshot().stores, 50, "{:?}", watch.snapshot());
}
