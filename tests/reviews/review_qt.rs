//! Review QT: what a hostile or reflecting origin can make the cache do to other URLs,
//! other origins and the cache's own resources: unsafe-method invalidations through
//! `Location` / `Content-Location`, the tag header, `Vary`, targeted cache-control fields
//! (RFC 9213) and repeated directives, and request fields reflected into the response.
//! The origin may be multi-tenant (one tenant's pages attacker-controlled), or reflect a
//! client's field into a response field line of its own, as layered middleware appends
//! lines.
//!
//! Each test fails if the defect it names returns.

use crate::support;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::Full;
use tower::Layer;

use tower_memcache::backend::MemoryBackend;
use tower_memcache::cache::{CDN_CACHE_CONTROL, CacheMode, MemcacheLayer};

use support::scripted_service::{Origin, Reply};
use support::{Watch, assert_hit, assert_not_hit, send};

/// An origin whose every page is personal: the body and an `X-User` field name the
/// request's `X-User`, and `script` adds the rest. Counts calls.
fn personal(
    script: impl Fn(&Request<()>) -> Vec<(&'static str, String)> + Send + Sync + 'static,
) -> Origin {
    Origin::replying(move |request, _| {
        let user = request
            .headers()
            .get("x-user")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("nobody")
            .to_string();
        let mut headers = vec![("x-user", user.clone())];
        headers.extend(script(request));
        Reply::ok(headers, format!("page of {user}"))
    })
}

/// An origin-mode layer obeying `CDN-Cache-Control`, as the reverse proxy runs by default.
fn cdn_layer(backend: MemoryBackend) -> MemcacheLayer<MemoryBackend> {
    support::layer(backend)
        .namespace("review-qt")
        .mode(CacheMode::Origin)
        .targeted_cache_control([CDN_CACHE_CONTROL])
}

/// The request's `X-Debug`, reflected as a line of the response field `name` (as an
/// origin that echoes a debug field, or a second middleware that appends a line).
fn reflected(request: &Request<()>, name: &'static str) -> Option<(&'static str, String)> {
    request
        .headers()
        .get("x-debug")
        .and_then(|v| v.to_str().ok())
        .map(|v| (name, v.to_string()))
}

// ---------------------------------------------------------------------------------------
// Targeted fields: a repeated directive
// ---------------------------------------------------------------------------------------

/// Attack: an origin answers its account page `CDN-Cache-Control: private` (or
/// `no-store`, or `no-cache` without a validator) and reflects a client's field as a
/// line of its own of that field. An RFC 8941 dictionary keeps a repeated key's last
/// value only, so the client's `private=?0, max-age=600` (or `no-store=?0`, or a qualified
/// `private="x-trace"`, which replaced the bare `private` with a field list) undid the
/// origin's restriction, and Alice's page was stored and served to Bob. `Cache-Control`
/// holds against the same reflection (review KK); the targeted field now does too: a
/// restriction any member of the field states holds, whatever a repeat says after it.
#[tokio::test]
async fn a_repeated_targeted_directive_cannot_lift_an_earlier_restriction() {
    for (own, debug) in [
        ("private", "private=?0, max-age=600"),
        ("private, max-age=600", "private=\"x-trace\""),
        ("no-store", "no-store=?0, max-age=600"),
        ("max-age=600, no-cache", "no-cache=?0"),
    ] {
        let backend = MemoryBackend::new();
        let cache = cdn_layer(backend.clone());
        let origin = personal(move |request| {
            let mut lines = vec![("cdn-cache-control", own.to_string())];
            lines.extend(reflected(request, "cdn-cache-control"));
            lines
        });
        let svc = cache.layer(origin.clone());
        let url = "http://tenant.test/account";
        let alice = send(
            &svc,
            Method::GET,
            url,
            &[("x-user", "alice"), ("x-debug", debug)],
        )
        .await;
        assert_eq!(alice.body, "page of alice");
        Watch::of(&cache).settled().await;
        let bob = send(&svc, Method::GET, url, &[("x-user", "bob")]).await;
        assert_eq!(bob.body, "page of bob", "{own:?} + {debug:?}: {bob:?}");
        assert_eq!(origin.calls(), 2, "{own:?} + {debug:?}");
    }
}

/// Attack: two lines of `CDN-Cache-Control` each keep a field out of shared caches
/// (`private="x-user"` from the application, `private="x-trace"` from a tracing
/// middleware; or a reflected second list). The dictionary kept the last list only, so
/// the page was stored with Alice's `X-User` and every hit gave it to Bob. Every list a
/// repeated `private` / `no-cache` names is kept out.
#[tokio::test]
async fn every_field_list_of_a_repeated_targeted_directive_is_kept_out() {
    for lines in [
        &["max-age=600, private=\"x-user\"", "private=\"x-trace\""][..],
        &["max-age=600, no-cache=\"x-user\", no-cache=\"x-trace\""][..],
    ] {
        let backend = MemoryBackend::new();
        let cache = cdn_layer(backend.clone());
        let origin = personal(move |_| {
            lines
                .iter()
                .map(|line| ("cdn-cache-control", line.to_string()))
                .collect()
        });
        let svc = cache.layer(origin.clone());
        let url = "http://tenant.test/home";
        send(&svc, Method::GET, url, &[("x-user", "alice")]).await;
        Watch::of(&cache).settled().await;
        let bob = send(&svc, Method::GET, url, &[("x-user", "bob")]).await;
        assert_hit(bob.cache_status());
        assert_eq!(bob.header("x-user"), None, "{lines:?}: {bob:?}");
    }
}

/// Attack: a client's `max-age=31536000` reflected as a second `CDN-Cache-Control` line
/// beside the origin's `max-age=1` made the page (whatever the client's request got
/// stored with it) fresh for a year instead of a second: the dictionary's last value won.
/// A repeated lifetime counts by its smallest value, as in `Cache-Control` (RFC 9111
/// §4.2.1 allows the first or none; never the one a later line substitutes). The origin's
/// `Age: 5` has the one-second page stale at once, without sleeping.
#[tokio::test]
async fn a_repeated_targeted_lifetime_counts_by_its_smallest_value() {
    for debug in ["max-age=31536000", "s-maxage=31536000, max-age=31536000"] {
        let backend = MemoryBackend::new();
        let cache = cdn_layer(backend.clone());
        let origin = personal(|request| {
            let mut lines = vec![
                ("cdn-cache-control", "max-age=1, s-maxage=1".to_string()),
                ("age", "5".to_string()),
            ];
            lines.extend(reflected(request, "cdn-cache-control"));
            lines
        });
        let svc = cache.layer(origin.clone());
        let url = "http://tenant.test/news";
        send(&svc, Method::GET, url, &[("x-debug", debug)]).await;
        Watch::of(&cache).settled().await;
        let again = send(&svc, Method::GET, url, &[]).await;
        assert_not_hit(again.cache_status());
        assert_eq!(origin.calls(), 2, "{debug:?}");
    }
}

// ---------------------------------------------------------------------------------------
// Statuses that answer one request's own state
// ---------------------------------------------------------------------------------------

/// Attack: delta encoding (RFC 3229, and its `A-IM: feed` use by feed servers). A client
/// that sends `A-IM` with an old `If-None-Match` gets a `226 IM Used`: a delta against
/// the instance that client holds, not the representation. An origin that stamps
/// `max-age` on every answer of the URL had that 226 stored, and every later client of
/// the feed (none of which asked for a delta) got the attacker's chosen slice of it with
/// status 226. RFC 3229 §10.6 lets only a cache that implements instance manipulations
/// reuse a 226; this one does not, so a 226 is never stored, as a 206 is not.
#[tokio::test]
async fn a_delta_answering_one_clients_instance_is_not_stored_as_the_feed() {
    let origin = Origin::replying(|request, _| {
        let delta = request.headers().contains_key("a-im")
            && request.headers().contains_key("if-none-match");
        let (status, mut headers, body) = if delta {
            (226, vec![("im", "feed".to_owned())], "entry 3")
        } else {
            (200, vec![], "entry 1, entry 2, entry 3")
        };
        headers.push(("etag", "\"v3\"".to_owned()));
        headers.push(("cache-control", "max-age=600".to_owned()));
        Reply::with_status(status, headers, body)
    });
    let backend = MemoryBackend::new();
    let cache = cdn_layer(backend);
    let svc = cache.layer(origin.clone());
    let url = "http://tenant.test/feed";
    let attacker = send(
        &svc,
        Method::GET,
        url,
        &[("a-im", "feed"), ("if-none-match", "\"v2\"")],
    )
    .await;
    assert_eq!(attacker.status.as_u16(), 226);
    Watch::of(&cache).settled().await;
    let reader = send(&svc, Method::GET, url, &[]).await;
    assert_eq!(reader.status.as_u16(), 200, "{reader:?}");
    assert_eq!(reader.body, "entry 1, entry 2, entry 3");
    assert_eq!(origin.calls(), 2);
}

/// Attack: a client sends `A-IM` alone to a stale page. The cache revalidates it with its
/// own `If-None-Match` (the stored ETag) beside the client's `A-IM`, which makes the
/// request a delta request against the cache's instance: the origin's `226` (a delta the
/// client holds no base for) went to the client as its answer, and, before 226s were
/// refused, into the cache for everyone. The cache's validators are sent without the
/// client's `A-IM`: the answer is a 304 (the stored page, refreshed) or the whole page.
#[tokio::test]
async fn a_revalidation_with_the_caches_validators_asks_for_no_delta() {
    let version = Arc::new(AtomicUsize::new(1));
    let origin = {
        let version = Arc::clone(&version);
        Origin::replying(move |request, _| {
            let version = version.load(Ordering::SeqCst);
            let etag = format!("\"v{version}\"");
            let sent = request
                .headers()
                .get("if-none-match")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let (status, mut headers, body) = match sent {
                Some(sent) if sent == etag => (304, vec![], String::new()),
                Some(_) if request.headers().contains_key("a-im") => (
                    226,
                    vec![("im", "feed".to_owned())],
                    format!("delta to v{version}"),
                ),
                _ => (200, vec![], format!("whole v{version}")),
            };
            headers.push(("etag", etag));
            headers.push(("cache-control", "max-age=0".to_owned()));
            Reply::with_status(status, headers, body)
        })
    };
    let cache = cdn_layer(MemoryBackend::new());
    let svc = cache.layer(origin);
    let url = "http://tenant.test/feed";
    assert_eq!(send(&svc, Method::GET, url, &[]).await.body, "whole v1");
    Watch::of(&cache).settled().await;
    version.store(2, Ordering::SeqCst);
    let client = send(&svc, Method::GET, url, &[("a-im", "feed")]).await;
    assert_eq!(client.status.as_u16(), 200, "{client:?}");
    assert_eq!(client.body, "whole v2");
}

// ---------------------------------------------------------------------------------------
// Surfaces that held (regression tests)
// ---------------------------------------------------------------------------------------

/// Held: a multi-tenant origin whose tenant `a.example` answers a POST with a `Location`
/// and `Content-Location` naming tenant `b.example`'s page, in every spelling a lenient
/// URL parser might resolve onto it (another case and the default port, a network-path
/// reference, user information, a bare authority, another scheme), evicts nothing of
/// `b.example`'s; the same names on its own origin do invalidate.
#[tokio::test]
async fn an_unsafe_methods_locations_never_invalidate_another_origin() {
    let backend = MemoryBackend::new();
    let cache = support::layer(backend)
        .namespace("review-qt")
        .mode(CacheMode::Origin);
    let locations: Arc<std::sync::Mutex<(String, String)>> = Arc::default();
    let origin = {
        let locations = Arc::clone(&locations);
        personal(move |request| {
            if request.method() == Method::POST {
                let (location, content_location) = locations.lock().unwrap().clone();
                vec![
                    ("location", location),
                    ("content-location", content_location),
                ]
            } else {
                vec![("cache-control", "max-age=600".to_string())]
            }
        })
    };
    let svc = cache.layer(origin.clone());
    let watch = Watch::of(&cache);
    let victim = "http://b.example/page";
    send(&svc, Method::GET, victim, &[]).await;
    watch.settled().await;
    for (location, content_location) in [
        ("http://b.example/page", "http://B.EXAMPLE:80/page"),
        ("//b.example/page", "http://a.example@b.example/page"),
        ("b.example", "https://b.example/page"),
        ("http://b.example:80/page", "http://b.example./page"),
    ] {
        *locations.lock().unwrap() = (location.to_string(), content_location.to_string());
        let post = send(&svc, Method::POST, "http://a.example/form", &[]).await;
        assert!(post.status.is_success(), "{post:?}");
        let again = send(&svc, Method::GET, victim, &[]).await;
        assert_hit(again.cache_status());
        assert_eq!(
            again.body, "page of nobody",
            "{location:?} / {content_location:?}"
        );
    }
    // The same names on the request's own origin are invalidated (RFC 9111 §4.4).
    let own = "http://a.example/page";
    send(&svc, Method::GET, own, &[]).await;
    watch.settled().await;
    assert_hit(send(&svc, Method::GET, own, &[]).await.cache_status());
    *locations.lock().unwrap() = ("/page".to_string(), "/other".to_string());
    send(&svc, Method::POST, "http://a.example/form", &[]).await;
    assert_not_hit(send(&svc, Method::GET, own, &[]).await.cache_status());
}

// ---------------------------------------------------------------------------------------
// Through the reverse proxy
// ---------------------------------------------------------------------------------------

/// A feed origin behind `tower-memcache-proxy` (origin mode, `CDN-Cache-Control` obeyed):
/// `/feed` answers `A-IM` with `If-None-Match` by a `226` delta, anything else with the
/// whole feed, both `max-age=600`; `/account` is `CDN-Cache-Control: private` with the
/// request's `X-Debug` reflected as a line of its own, its body the request's `X-User`.
async fn feed_origin() -> std::net::SocketAddr {
    use http_body_util::BodyExt as _;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let handle = |request: Request<hyper::body::Incoming>| async move {
        let headers = request.headers().clone();
        let path = request.uri().path().to_string();
        let _ = request.into_body().collect().await;
        let mut response = Response::builder().header("cache-control", "max-age=600");
        let body = if path == "/feed" {
            response = response.header("etag", "\"v3\"");
            if headers.contains_key("a-im") && headers.contains_key("if-none-match") {
                response = response.status(226).header("im", "feed");
                "entry 3".to_string()
            } else {
                "entry 1, entry 2, entry 3".to_string()
            }
        } else {
            response = response.header("cdn-cache-control", "private");
            if let Some(debug) = headers.get("x-debug") {
                response = response.header("cdn-cache-control", debug.clone());
            }
            let user = headers.get("x-user").and_then(|v| v.to_str().ok());
            format!("page of {}", user.unwrap_or("nobody"))
        };
        Ok::<_, Infallible>(response.body(Full::new(Bytes::from(body))).unwrap())
    };
    support::origin::serve_http1(listener, handle);
    addr
}

/// Whether the proxy answers `GET path` from its cache within half a second (stores run
/// in the background): `only-if-cached` gets a 504 until it does.
async fn proxy_stored(proxy: &support::proxy::Proxy, path: &str) -> Option<(u16, String)> {
    for _ in 0..10 {
        let (status, body) = support::proxy::raw(
            proxy,
            &format!(
                "GET {path} HTTP/1.1\r\nHost: tenant.example\r\nCache-Control: only-if-cached\r\n"
            ),
        )
        .await;
        if status != 504 {
            return Some((status, body));
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    None
}

/// The two attacks above through `tower-memcache-proxy`: a client's `A-IM` got its
/// delta stored as the feed, and a client's `X-Debug: private=?0, max-age=600`, reflected
/// as a second `CDN-Cache-Control` line, got the `private` page stored for everyone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_the_proxy_neither_a_delta_nor_a_reflected_repeat_is_stored() {
    let origin = feed_origin().await;
    let proxy = support::proxy::start_proxy(origin, &[]);
    let (status, _) = support::proxy::raw(
        &proxy,
        "GET /feed HTTP/1.1\r\nHost: tenant.example\r\nA-IM: feed\r\nIf-None-Match: \"v2\"\r\n",
    )
    .await;
    assert_eq!(status, 226);
    assert_eq!(
        proxy_stored(&proxy, "/feed").await,
        None,
        "the delta stored"
    );
    let (status, body) =
        support::proxy::raw(&proxy, "GET /feed HTTP/1.1\r\nHost: tenant.example\r\n").await;
    assert_eq!((status, body.as_str()), (200, "entry 1, entry 2, entry 3"));

    let (status, body) = support::proxy::raw(
        &proxy,
        "GET /account HTTP/1.1\r\nHost: tenant.example\r\nX-User: alice\r\n\
         X-Debug: private=?0, max-age=600\r\n",
    )
    .await;
    assert_eq!((status, body.as_str()), (200, "page of alice"));
    assert_eq!(
        proxy_stored(&proxy, "/account").await,
        None,
        "Alice's private page stored"
    );
}
