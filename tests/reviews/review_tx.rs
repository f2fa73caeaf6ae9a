//! Review TX: an adversarial second look at three changes of the last hour: review TS's
//! rule that a target given another authority or scheme after routing bypasses the cache,
//! the selection by `Origin` of a response allowing one origin without `Vary: Origin`, and
//! review TV's `Age` written as 2^31 at most.
//!
//! Entries stored before a selecting rule was added (`Origin` for one allowed origin,
//! `Accept-Encoding` for a coded response) were still answered to every request: the
//! poisoned answer the rule closes was served on after the upgrade, for its lifetime.

use crate::support;

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response};
use tower::Layer;
use tower_memcache::backend::{Backend, Lifetime, MemoryBackend};

/// Rewrites every stored entry's bytes as an earlier snapshot would have stored them:
/// a stand-in field name of the same length made the real one (so the metadata's lengths
/// hold), while the selecting names stay those the stand-in got (none).
async fn as_stored_before(backend: &MemoryBackend, renames: &[(&[u8], &[u8])]) -> usize {
    let mut rewritten = 0;
    for (key, item) in backend.entries() {
        let mut bytes = item.value.to_vec();
        let mut changed = false;
        for (from, to) in renames {
            assert_eq!(from.len(), to.len());
            while let Some(at) = bytes.windows(from.len()).position(|w| w == *from) {
                bytes[at..at + to.len()].copy_from_slice(to);
                changed = true;
            }
        }
        if changed {
            backend
                .set(
                    &key,
                    Bytes::from(bytes),
                    item.flags,
                    Lifetime::from_secs(600),
                )
                .await
                .unwrap();
            rewritten += 1;
        }
    }
    rewritten
}

/// An entry an earlier snapshot stored for `Origin: https://evil.example` from an origin
/// that reflects `Origin` and forgets `Vary` (a font, a JSON API, a year's `max-age`):
/// kept without selecting values, it was answered to the application's own origin after
/// the upgrade, `Access-Control-Allow-Origin: https://evil.example` and all, which its
/// browsers refuse; likewise a `br` answer stored before coded responses were selected by
/// `Accept-Encoding`, served to a client that accepts none. An entry whose stored fields
/// call for a selecting name it was not stored with is now a miss, and refilled.
#[tokio::test]
async fn an_entry_stored_before_origin_selected_it_is_not_served_to_another_origin() {
    let backend = MemoryBackend::new();
    let layer = support::layer(backend.clone()).default_lifetime(Duration::from_secs(60));
    let watch = support::Watch::of(&layer);
    let service = layer.layer(tower::service_fn(|request: Request<()>| async move {
        let mut response = Response::builder().header("cache-control", "public, max-age=600");
        if let Some(origin) = request.headers().get("origin") {
            // Stored under a stand-in name, renamed below.
            response = response.header("xccess-control-allow-origin", origin);
        }
        if request.uri().path() == "/coded" {
            response = response.header("xontent-encoding", "br");
        }
        Ok::<_, std::convert::Infallible>(
            response
                .body(http_body_util::Full::new(Bytes::from_static(b"{}")))
                .unwrap(),
        )
    }));
    let evil = [("origin", "https://evil.example")];
    let url = "http://api.example/font";
    support::send(&service, Method::GET, url, &evil).await;
    let coded = "http://api.example/coded";
    support::send(&service, Method::GET, coded, &[("accept-encoding", "br")]).await;
    support::stores(&watch, 2).await;
    let renames: [(&[u8], &[u8]); 2] = [
        (
            b"xccess-control-allow-origin",
            b"access-control-allow-origin",
        ),
        (b"xontent-encoding", b"content-encoding"),
    ];
    assert_eq!(as_stored_before(&backend, &renames).await, 2);
    let app = support::send(
        &service,
        Method::GET,
        url,
        &[("origin", "https://app.example")],
    )
    .await;
    assert_ne!(
        app.header("access-control-allow-origin"),
        Some("https://evil.example"),
        "the application's origin was answered the attacker's ({})",
        app.cache_status()
    );
    let identity = support::send(
        &service,
        Method::GET,
        coded,
        &[("accept-encoding", "identity")],
    )
    .await;
    assert_eq!(
        identity.header("content-encoding"),
        None,
        "a client refusing every coding was answered br ({})",
        identity.cache_status()
    );
    // Refilled: the entries answer again.
    watch.settled().await;
    for (url, headers) in [(url, evil), (coded, [("accept-encoding", "identity")])] {
        let again = support::send(&service, Method::GET, url, &headers).await;
        support::assert_hit(again.cache_status());
    }
}

/// A shared answer (stored for a request without `Origin`, so without the field) that
/// the origin revalidates with a 304 reflecting each caller's `Origin`: the refresh would
/// make the entry select by `Origin` with values it was not stored with, so it is not
/// stored, and each caller is answered its own allowed origin, never another's.
#[tokio::test]
async fn a_304_reflecting_origin_refreshes_no_caller_into_anothers_answer() {
    let layer = support::layer(MemoryBackend::new()).mode(tower_memcache::CacheMode::Origin);
    let watch = support::Watch::of(&layer);
    let service = layer.layer(tower::service_fn(|request: Request<()>| async move {
        let revalidation = request.headers().contains_key("if-none-match");
        let mut response = Response::builder()
            .status(if revalidation { 304 } else { 200 })
            .header("cache-control", "public, max-age=0")
            .header("etag", "\"v1\"");
        if let Some(origin) = request.headers().get("origin") {
            response = response.header("access-control-allow-origin", origin);
        }
        Ok::<_, std::convert::Infallible>(
            response
                .body(http_body_util::Full::new(Bytes::from_static(b"{}")))
                .unwrap(),
        )
    }));
    let url = "http://api.example/data";
    support::send(&service, Method::GET, url, &[]).await;
    support::stores(&watch, 1).await;
    for round in 0..2 {
        for origin in ["https://app.example", "https://evil.example"] {
            let answer = support::send(&service, Method::GET, url, &[("origin", origin)]).await;
            watch.settled().await;
            assert_eq!(answer.status, 200, "{round} {origin}");
            assert_eq!(
                answer.header("access-control-allow-origin"),
                Some(origin),
                "{round}: {}",
                answer.cache_status()
            );
        }
    }
    let none = support::send(&service, Method::GET, url, &[]).await;
    assert_eq!(none.header("access-control-allow-origin"), None);
}
