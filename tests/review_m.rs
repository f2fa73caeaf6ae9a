//! Review M: a critical review of one round of changes (the one-pass authority, stored
//! header names read as bytes, a hit's `Content-Length`, the proxy's off-thread log
//! writers, the review J and K fixes). Each test fails if the defect it names returns.

mod support;

use std::convert::Infallible;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use support::Watch;
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
