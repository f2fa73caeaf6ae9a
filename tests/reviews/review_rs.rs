//! Review RS: conditional requests, 304s, HEAD and stand-ins against RFC 9110 §13 and
//! RFC 9111 §3.2, §4.2.4, §4.3. Each test named for a defect failed before its fix.

use crate::support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use http::{Method, Request, StatusCode};
use tower::Layer;
use tower_memcache::CacheMode;
use tower_memcache::backend::MemoryBackend;

use support::scripted_service::{Answer as Scripted, Origin};
use support::{Watch, bounded, send};

const URL: &str = "http://site.example/doc";

/// An origin answering its `n`th call (from 0) as `script` says.
fn numbered(script: impl Fn(usize, &Request<()>) -> Scripted + Send + Sync + 'static) -> Origin {
    let calls = Arc::new(AtomicUsize::new(0));
    Origin::new(move |request| script(calls.fetch_add(1, Ordering::SeqCst), request))
}

/// A first answer stale on arrival (its `Age` past its lifetime), with a strong `ETag`
/// and `extra` lines: the next request revalidates it.
fn stale_json(extra: &[(&'static str, &'static str)]) -> Scripted {
    let mut lines = vec![
        ("etag", "\"v1\"".to_owned()),
        ("content-type", "application/json".to_owned()),
        ("cache-control", "max-age=60".to_owned()),
        ("age", "120".to_owned()),
    ];
    lines.extend(
        extra
            .iter()
            .map(|(name, value)| (*name, (*value).to_owned())),
    );
    (200, lines, "{\"name\":\"<script>alert(1)</script>\"}")
}

/// RFC 9110 §13.1.2: `If-None-Match: *` is false when a current representation exists.
/// A stored 200 without `ETag` was answered in full (the condition read as "no tag
/// matches"), where the origin answers 304.
#[tokio::test]
async fn if_none_match_star_is_answered_304_from_an_entry_without_etag() {
    let origin = Origin::new(|_: &Request<()>| {
        (
            200,
            vec![("cache-control", "max-age=600".to_owned())],
            "page",
        )
    });
    let layer = support::layer(MemoryBackend::new()).mode(CacheMode::Origin);
    let watch = Watch::of(&layer);
    let service = layer.layer(origin.clone());
    bounded("fill", send(&service, Method::GET, URL, &[])).await;
    watch.settled().await;
    let star = [("if-none-match", "*")];
    let answer = bounded("star", send(&service, Method::GET, URL, &star)).await;
    assert_eq!(answer.status, StatusCode::NOT_MODIFIED, "{answer:?}");
    assert_eq!(answer.body, "");
    support::assert_hit(answer.cache_status());
    let head = bounded("head", send(&service, Method::HEAD, URL, &star)).await;
    assert_eq!(head.status, StatusCode::NOT_MODIFIED, "{head:?}");
    assert_eq!(origin.calls(), 1);
}

/// Security: a 304 carrying another `Content-Type` (PHP sends its `default_mimetype`,
/// `text/html`, on a script's bare 304) relabelled the stored body for every later hit: a
/// JSON document holding a user's `<script>` was served to everyone as HTML. The stored
/// body keeps its media type (RFC 9111 §3.2: fields kept for the stored response's
/// integrity; RFC 9110 §15.4.5: a 304 carries no representation metadata but its
/// validators').
#[tokio::test]
async fn a_304_never_relabels_the_stored_bodys_media_type() {
    let origin = numbered(|call, _| match call {
        0 => stale_json(&[]),
        _ => (
            304,
            vec![
                ("etag", "\"v1\"".to_owned()),
                ("cache-control", "max-age=600".to_owned()),
                ("content-type", "text/html; charset=UTF-8".to_owned()),
                ("x-refreshed", "1".to_owned()),
            ],
            "",
        ),
    });
    let layer = support::layer(MemoryBackend::new()).mode(CacheMode::Origin);
    let watch = Watch::of(&layer);
    let service = layer.layer(origin.clone());
    bounded("fill", send(&service, Method::GET, URL, &[])).await;
    watch.settled().await;
    let revalidated = bounded("revalidation", send(&service, Method::GET, URL, &[])).await;
    watch.settled().await;
    let hit = bounded("hit", send(&service, Method::GET, URL, &[])).await;
    assert_eq!(origin.calls(), 2, "{revalidated:?} {hit:?}");
    assert_eq!(hit.header("x-refreshed"), Some("1"), "refreshed: {hit:?}");
    support::assert_hit(hit.cache_status());
    for answer in [&revalidated, &hit] {
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(
            answer.header("content-type"),
            Some("application/json"),
            "relabelled: {answer:?}"
        );
    }
}

/// Security: the same through a client's HEAD, which any client may send: a HEAD answer
/// with the stored validator and length but another `Content-Type` relabelled the
/// stored GET response.
#[tokio::test]
async fn a_head_response_never_relabels_the_stored_bodys_media_type() {
    let origin = numbered(|call, _| match call {
        0 => stale_json(&[]),
        // An origin that ignores the cache's validators on HEAD, and types it anew.
        _ => (
            200,
            vec![
                ("etag", "\"v1\"".to_owned()),
                ("cache-control", "max-age=600".to_owned()),
                ("content-type", "text/html".to_owned()),
                ("x-refreshed", "1".to_owned()),
            ],
            "",
        ),
    });
    let layer = support::layer(MemoryBackend::new()).mode(CacheMode::Origin);
    let watch = Watch::of(&layer);
    let service = layer.layer(origin.clone());
    bounded("fill", send(&service, Method::GET, URL, &[])).await;
    watch.settled().await;
    bounded("head", send(&service, Method::HEAD, URL, &[])).await;
    watch.settled().await;
    let hit = bounded("hit", send(&service, Method::GET, URL, &[])).await;
    assert_eq!(origin.calls(), 2, "{hit:?}");
    assert_eq!(hit.header("x-refreshed"), Some("1"), "refreshed: {hit:?}");
    support::assert_hit(hit.cache_status());
    assert_eq!(
        hit.header("content-type"),
        Some("application/json"),
        "relabelled: {hit:?}"
    );
}

/// RFC 9111 §5.2.1.4, §4.2.4: a request's `no-cache` (or `Pragma: no-cache`) asks for the
/// origin's word; a stale response standing in for a failing origin by the response's
/// `stale-if-error` answered it all the same, though a fresh response stored meanwhile
/// does not (review RK) and nor does `stale_if_unreachable`. The client's own
/// `stale-if-error` beside `no-cache` still lets one stand in, within its window.
#[tokio::test]
async fn a_request_s_no_cache_gets_the_origin_s_failure_not_a_stale_stand_in() {
    for (headers, stands_in) in [
        (&[][..], true),
        (&[("cache-control", "no-cache")][..], false),
        (&[("pragma", "no-cache")][..], false),
        (
            &[("cache-control", "no-cache, stale-if-error=3600")][..],
            true,
        ),
        (
            &[("cache-control", "no-cache, stale-if-error=1")][..],
            false,
        ),
    ] {
        let origin = numbered(|call, _| match call {
            0 => stale_json(&[("cache-control", "stale-if-error=600")]),
            _ => (503, Vec::new(), "origin down"),
        });
        let layer = support::layer(MemoryBackend::new()).mode(CacheMode::Origin);
        let watch = Watch::of(&layer);
        let service = layer.layer(origin.clone());
        bounded("fill", send(&service, Method::GET, URL, &[])).await;
        watch.settled().await;
        let answer = bounded("failing", send(&service, Method::GET, URL, headers)).await;
        assert_eq!(origin.calls(), 2, "{headers:?}");
        if stands_in {
            assert_eq!(answer.status, StatusCode::OK, "{headers:?}: {answer:?}");
            assert!(
                answer.cache_status().contains("detail=stale-if-error"),
                "{headers:?}: {answer:?}"
            );
        } else {
            assert_eq!(
                (answer.status, answer.body.as_str()),
                (StatusCode::SERVICE_UNAVAILABLE, "origin down"),
                "{headers:?}: {answer:?}"
            );
        }
    }
}

/// RFC 9111 §4.3.1, §4.3.4: a `stale-while-revalidate` refresh is the cache's own request
/// (its client was answered from the stale entry), yet it went out with that client's
/// conditions. An origin that keeps `Last-Modified` off its 304s (RFC 9110 §15.4.5 lets
/// it) answered a client's `If-Modified-Since` with a 304 that selects no stored response
/// with a validator, so the refresh refreshed nothing: the entry stayed stale, and the
/// next request paid for another. It now carries the stored validators, as the whole
/// fetch after a range miss does.
#[tokio::test]
async fn a_background_refresh_asks_with_the_stored_validators_not_its_client_s() {
    const MODIFIED: &str = "Sun, 06 Nov 1994 08:49:37 GMT";
    let origin = numbered(|call, request| {
        let conditional = request.headers().contains_key("if-modified-since")
            || request.headers().contains_key("if-none-match");
        match call {
            0 => (
                200,
                vec![
                    ("last-modified", MODIFIED.to_owned()),
                    (
                        "cache-control",
                        "max-age=60, stale-while-revalidate=600".to_owned(),
                    ),
                    ("age", "120".to_owned()),
                ],
                "page",
            ),
            _ if conditional => (304, vec![("cache-control", "max-age=600".to_owned())], ""),
            _ => (
                200,
                vec![("cache-control", "max-age=600".to_owned())],
                "new",
            ),
        }
    });
    let layer = support::layer(MemoryBackend::new()).mode(CacheMode::Origin);
    let watch = Watch::of(&layer);
    let service = layer.layer(origin.clone());
    bounded("fill", send(&service, Method::GET, URL, &[])).await;
    watch.settled().await;
    let since = [("if-modified-since", MODIFIED)];
    let stale = bounded("stale", send(&service, Method::GET, URL, &since)).await;
    assert_eq!(stale.status, StatusCode::NOT_MODIFIED, "{stale:?}");
    watch.settled().await;
    let hit = bounded("hit", send(&service, Method::GET, URL, &[])).await;
    watch.settled().await;
    assert_eq!((hit.status, hit.body.as_str()), (StatusCode::OK, "page"));
    support::assert_hit(hit.cache_status());
    assert_eq!(origin.calls(), 2, "{hit:?}");
}

/// Review RH's counters counted a stale response standing in for a failing origin as a
/// hit (answered from the cache), with nothing to tell it from one: an origin failing
/// every revalidation kept the hit ratio where it was. `stood_in` counts it as what it
/// is; a stale-while-revalidate hit, which the origin did not fail, is none.
#[tokio::test]
async fn a_stand_in_is_counted_as_one() {
    let origin = numbered(|call, _| match call {
        0 => stale_json(&[("cache-control", "stale-if-error=600")]),
        _ => (503, Vec::new(), "origin down"),
    });
    let layer = support::layer(MemoryBackend::new()).mode(CacheMode::Origin);
    let watch = Watch::of(&layer);
    let service = layer.layer(origin.clone());
    bounded("fill", send(&service, Method::GET, URL, &[])).await;
    watch.settled().await;
    let answer = bounded("failing", send(&service, Method::GET, URL, &[])).await;
    watch.settled().await;
    assert!(
        answer.cache_status().contains("detail=stale-if-error"),
        "{answer:?}"
    );
    let snapshot = watch.snapshot();
    assert_eq!(
        (
            snapshot.stood_in,
            snapshot.hits,
            snapshot.stale,
            snapshot.misses
        ),
        (1, 1, 1, 1),
        "{snapshot:?}"
    );
}
