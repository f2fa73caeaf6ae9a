//! Review QU: a second look at review QS (ranges) and QT (hostile origins), and two
//! defects they left open: a 304 or HEAD refresh storing a field the stored response kept
//! out of shared caches, and a status a `Range` caused stored as the whole URL's.
//!
//! Each test fails if the defect it names returns.

use crate::support;

use std::sync::Arc;

use http::{HeaderValue, Method, Request, StatusCode};
use tower::Layer;

use tower_memcache::backend::MemoryBackend;
use tower_memcache::cache::{CDN_CACHE_CONTROL, CacheMode, MemcacheLayer};

use support::scripted_service::Origin;
use support::{Watch, assert_hit, send};

fn cache(backend: MemoryBackend) -> MemcacheLayer<MemoryBackend> {
    support::layer(backend)
        .namespace("review-qu")
        .mode(CacheMode::Origin)
}

/// The request's `X-User`, or `nobody`.
fn user(request: &Request<()>) -> String {
    request
        .headers()
        .get("x-user")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("nobody")
        .to_string()
}

// ---------------------------------------------------------------------------------------
// A refresh and the stored response's own field lists
// ---------------------------------------------------------------------------------------

/// The shared page of an origin that keeps `X-User` out of shared caches with
/// `directive` in its 200's `field` (`Cache-Control`, or `CDN-Cache-Control` beside a
/// plain `Cache-Control`), and whose 304s (to the cache's `If-None-Match`) and HEAD
/// answers replace `field` with a plain `max-age=600` while still carrying the
/// requester's `X-User` (a session middleware that adds it to every answer).
fn personal_field_origin(field: &'static str, directive: &'static str) -> Origin {
    Origin::new(move |request| {
        let user = user(request);
        let revalidating = request.headers().get("if-none-match").is_some();
        let mut lines = vec![("etag", "\"v1\"".to_string()), ("x-user", user)];
        if field != "cache-control" {
            lines.push(("cache-control", "max-age=0".to_string()));
        }
        if revalidating || request.method() == Method::HEAD {
            lines.push((field, "max-age=600".to_string()));
            if !revalidating {
                lines.push(("content-length", "11".to_string()));
            }
            let status = if revalidating { 304 } else { 200 };
            return (status, lines, "shared page");
        }
        lines.push((field, format!("max-age=0, {directive}")));
        (200, lines, "shared page")
    })
}

/// The layers and origins of the refresh tests: each list in `Cache-Control`, and in
/// `CDN-Cache-Control` for a layer that obeys it.
fn personal_field_cases() -> Vec<(MemcacheLayer<MemoryBackend>, Origin, &'static str)> {
    let mut cases = Vec::new();
    for directive in ["private=\"x-user\"", "no-cache=\"x-user\""] {
        for field in ["cache-control", "cdn-cache-control"] {
            let mut layer = cache(MemoryBackend::new());
            if field == "cdn-cache-control" {
                layer = layer.targeted_cache_control([CDN_CACHE_CONTROL]);
            }
            cases.push((layer, personal_field_origin(field, directive), directive));
        }
    }
    cases
}

/// Attack (defect left open): the stored page kept `X-User` out with
/// `private="x-user"` (or `no-cache="x-user"`); Bob's request revalidates it, and the
/// origin's 304 replaces `Cache-Control` without the list while carrying `X-User: bob`.
/// The refresh stored Bob's field, and every later client got `X-User: bob`. A field the
/// stored response's own lists kept out stays out of what a refresh stores (fail
/// closed), and only Bob, whose request the 304 answered, gets his; so it does on a later
/// refresh, from a `no-cache` request that makes the origin answer Carol's.
#[tokio::test]
async fn a_304_cannot_store_a_field_the_stored_response_kept_out() {
    for (cache, origin, directive) in personal_field_cases() {
        let svc = cache.layer(origin.clone());
        let watch = Watch::of(&cache);
        let url = "http://site.test/home";
        let alice = send(&svc, Method::GET, url, &[("x-user", "alice")]).await;
        assert_eq!(alice.header("x-user"), Some("alice"), "her own answer");
        watch.settled().await;
        // Stale at once: Bob's request revalidates it.
        let bob = send(&svc, Method::GET, url, &[("x-user", "bob")]).await;
        assert_eq!(bob.body, "shared page");
        assert_eq!(origin.calls(), 2, "{directive}: Bob's request revalidated");
        assert_eq!(bob.header("x-user"), Some("bob"), "his own 304's field");
        watch.settled().await;
        let carol = send(&svc, Method::GET, url, &[("x-user", "carol")]).await;
        assert_hit(carol.cache_status());
        assert_eq!(carol.header("x-user"), None, "{directive}: {carol:?}");
        // A second refresh: the merged response's own `Cache-Control` no longer names
        // the field, but the stored one's exclusion holds.
        let again = send(
            &svc,
            Method::GET,
            url,
            &[("x-user", "carol"), ("cache-control", "no-cache")],
        )
        .await;
        assert_eq!(again.body, "shared page");
        assert_eq!(
            origin.calls(),
            3,
            "{directive}: Carol's no-cache revalidated"
        );
        watch.settled().await;
        let dave = send(&svc, Method::GET, url, &[("x-user", "dave")]).await;
        assert_hit(dave.cache_status());
        assert_eq!(dave.header("x-user"), None, "{directive}: {dave:?}");
    }
}

/// Attack (defect left open, §4.3.5's path): as above, through a HEAD request whose 200
/// refreshes the stored GET response. Bob's `X-User` was stored with it.
#[tokio::test]
async fn a_head_refresh_cannot_store_a_field_the_stored_response_kept_out() {
    for (cache, origin, directive) in personal_field_cases() {
        let svc = cache.layer(origin.clone());
        let watch = Watch::of(&cache);
        let url = "http://site.test/home";
        send(&svc, Method::GET, url, &[("x-user", "alice")]).await;
        watch.settled().await;
        send(&svc, Method::HEAD, url, &[("x-user", "bob")]).await;
        assert_eq!(
            origin.calls(),
            2,
            "{directive}: Bob's HEAD reached the origin"
        );
        watch.settled().await;
        let carol = send(&svc, Method::GET, url, &[("x-user", "carol")]).await;
        assert_hit(carol.cache_status());
        assert_eq!(carol.body, "shared page");
        assert_eq!(carol.header("x-user"), None, "{directive}: {carol:?}");
    }
}

// ---------------------------------------------------------------------------------------
// What a `Range` caused
// ---------------------------------------------------------------------------------------

/// Attack (defect left open): an operator lists 416 (or 400) among the storable
/// `statuses`; an origin answers a client's `Range: bytes=5000-6000` past the end with a
/// 416 (without the `Content-Range` that marked it partial), or refuses an odd range with
/// a 400, stamping `max-age` as on every answer. It was stored under the URL and served
/// to every client that sent no `Range`: one request turned the page into an error for
/// all. A response to a request with `Range` is stored only when it is the whole
/// representation (a 200 that ignored the range).
#[tokio::test]
async fn a_status_a_range_caused_is_not_stored_as_the_url() {
    for (status, range) in [(416, "bytes=5000-6000"), (400, "bytes=0-0")] {
        let backend = MemoryBackend::new();
        let cache = cache(backend).statuses([200, 404, status]);
        let origin = Origin::new(move |request| {
            let answer = if request.headers().contains_key("range") {
                status
            } else {
                200
            };
            let lines = vec![("cache-control", "max-age=600".to_string())];
            (answer, lines, "the whole page")
        });
        let svc = cache.layer(origin.clone());
        let watch = Watch::of(&cache);
        let url = "http://site.test/file";
        let attacker = send(&svc, Method::GET, url, &[("range", range)]).await;
        assert_eq!(attacker.status.as_u16(), status, "passed through");
        watch.settled().await;
        let victim = send(&svc, Method::GET, url, &[]).await;
        assert_eq!(victim.status, StatusCode::OK, "{status}: {victim:?}");
        assert_eq!(victim.body, "the whole page");
        assert_eq!(origin.calls(), 2, "{status}");
        // The whole, answered to a request without `Range`, is stored as before.
        watch.settled().await;
        let again = send(&svc, Method::GET, url, &[]).await;
        assert_hit(again.cache_status());
    }
}

/// Attack on review QS's `abusive` (a sibling path it missed): a `bytes` range set with
/// a byte past ASCII in it (`bytes=0-,0-,0-,…,0-\xff`, obs-text a server may accept in
/// a field value) is no valid range set, so the cache ignores it on a hit; but the check
/// that keeps such sets from the origin on a miss read only text and let it pass as it
/// came, and an origin that reads the ranges before the stray byte sent the page many
/// times over. It now goes without `Range`, as any invalid `bytes` set does.
#[tokio::test]
async fn a_range_set_with_obs_text_is_not_relayed_to_the_origin() {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let origin = Origin::new({
        let seen = Arc::clone(&seen);
        move |request| {
            seen.lock()
                .unwrap()
                .push(request.headers().get("range").cloned());
            let lines = vec![("cache-control", "max-age=600".to_string())];
            (200, lines, "the whole page")
        }
    });
    let cache = cache(MemoryBackend::new());
    let svc = cache.layer(origin.clone());
    let mut value = format!("bytes={}", vec!["0-"; 15].join(",")).into_bytes();
    value.extend_from_slice(b",0-\xff");
    let mut request = Request::get("http://site.test/big").body(()).unwrap();
    request
        .headers_mut()
        .insert("range", HeaderValue::from_bytes(&value).unwrap());
    let response = tower::ServiceExt::oneshot(svc, request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(*seen.lock().unwrap(), vec![None], "the Range was relayed");
}
