//! Review FF: the layer stacked with tower-http's middleware in axum apps, as users stack
//! it, inside and outside each. Each test is one attack (a client of its own choosing, then
//! an innocent one that must not be answered with what the attacker's request produced),
//! and fails if the attack works. Tests named `unsafe_order_*` are demonstrations: they
//! assert the unsafe outcome of a stacking order the README's "Stacking with other
//! middleware" warns against, so that the warning stays true.
//!
//! - `CompressionLayer`: a gzip body stored for one client and served to one that did not
//!   accept it; lengths and ranges of a stored compressed body.
//! - `CorsLayer`: one origin's `Access-Control-Allow-Origin` served to another; preflights.
//! - auth (`ValidateRequestHeaderLayer::bearer`, a cookie check): a page an authenticated
//!   request filled, served to an unauthenticated one.
//! - `NormalizePathLayer`: a `no_cache` page stored under another spelling of its path.
//! - Request rewriting (a locale middleware): a variant stored under a value the handler
//!   never read.
//! - `SetResponseHeaderLayer`, `TimeoutLayer`, a session middleware: a field that belongs to
//!   one response (`Set-Cookie`, a request id) or a timeout stored for everyone; a fill
//!   cut short (a timeout outside, a body timeout inside) held or stored half.

#![cfg(feature = "axum")]

use crate::support;

use support::Watch;

use std::io::Read;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::Request as AxumRequest;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use futures_util::StreamExt;
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use tower::{Layer, Service, ServiceExt};
use tower_http::compression::CompressionLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::normalize_path::NormalizePathLayer;
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::validate_request::ValidateRequestHeaderLayer;
use tower_memcache::backend::MemoryBackend;
use tower_memcache::cache::{MemcacheLayer, RouteMatch};

/// A page long enough for `CompressionLayer` to compress (it leaves bodies under 32 bytes).
const PAGE: &str = "the quick brown fox jumps over the lazy dog, again and again and again";

/// A response read to its end, body as bytes (compressed bodies are not text).
#[derive(Debug)]
struct Got {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Got {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    fn cache_status(&self) -> &str {
        support::as_seen(self.header("cache-status").unwrap_or(""))
    }

    /// The body as the client reads it: gunzipped when it says `gzip`.
    fn decoded(&self) -> String {
        match self.header("content-encoding") {
            None => String::from_utf8(self.body.to_vec()).unwrap(),
            Some("gzip") => {
                let mut text = String::new();
                flate2::read::GzDecoder::new(&self.body[..])
                    .read_to_string(&mut text)
                    .unwrap();
                text
            }
            Some(other) => panic!("unexpected content-encoding {other}"),
        }
    }
}

async fn call<S, B>(service: &S, method: Method, url: &str, headers: &[(&str, &str)]) -> Got
where
    S: Service<Request<Body>, Response = http::Response<B>> + Clone,
    S::Error: std::fmt::Debug,
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    let mut request = Request::builder()
        .method(method)
        .uri(url)
        .body(Body::empty())
        .unwrap();
    for (name, value) in headers {
        request.headers_mut().append(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    let response = service.clone().oneshot(request).await.unwrap();
    let (parts, body) = response.into_parts();
    Got {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

async fn get_url<S, B>(service: &S, url: &str, headers: &[(&str, &str)]) -> Got
where
    S: Service<Request<Body>, Response = http::Response<B>> + Clone,
    S::Error: std::fmt::Debug,
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    call(service, Method::GET, url, headers).await
}

fn cache() -> MemcacheLayer<MemoryBackend> {
    support::layer(MemoryBackend::new())
}

fn page_app() -> Router {
    Router::new().route("/page", get(|| async { PAGE }))
}

// ---------------------------------------------------------------------------------------
// CompressionLayer

/// Cache outside compression: the stored response is the compressed one, with the
/// `Vary: accept-encoding` compression adds. A client that accepts no gzip must get the
/// page as text, whichever client filled the entry first.
#[tokio::test]
async fn compressed_entry_is_not_served_to_a_client_without_gzip() {
    for near in [false, true] {
        let _near = near.then(support::NearTier::on);
        for gzip_first in [true, false] {
            let layer = cache();
            let watch = Watch::of(&layer);
            let app = layer.layer(CompressionLayer::new().layer(page_app()));
            let clients: [&[(&str, &str)]; 2] = if gzip_first {
                [&[("accept-encoding", "gzip")], &[]]
            } else {
                [&[], &[("accept-encoding", "gzip")]]
            };
            for round in 0..3 {
                for client in clients {
                    let got = get_url(&app, "/page", client).await;
                    watch.settled().await;
                    assert_eq!(got.status, StatusCode::OK);
                    if client.is_empty() {
                        assert_eq!(
                            got.header("content-encoding"),
                            None,
                            "gzip served to a client that did not accept it \
                             (gzip first: {gzip_first}, round {round}): {got:?}"
                        );
                    }
                    assert_eq!(got.decoded(), PAGE, "round {round}: {got:?}");
                    if let Some(length) = got.header("content-length") {
                        assert_eq!(length, got.body.len().to_string(), "{got:?}");
                    }
                }
            }
            // Both variants are kept: the second round was answered from the cache.
            assert!(watch.snapshot().hits >= 2, "{:?}", watch.snapshot());
        }
    }
}

/// Concurrent cold misses from a gzip client and a client without gzip: the one that
/// waits for the other's response must not take it when it varies on what they differ in.
#[tokio::test]
async fn concurrent_misses_do_not_share_a_compressed_response() {
    let layer = cache();
    let app = layer.layer(CompressionLayer::new().layer(Router::new().route(
        "/slow",
        get(|| async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            PAGE
        }),
    )));
    let gzip = get_url(&app, "/slow", &[("accept-encoding", "gzip")]);
    let plain = async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        get_url(&app, "/slow", &[]).await
    };
    let (gzip, plain) = tokio::join!(gzip, plain);
    assert_eq!(gzip.decoded(), PAGE);
    assert_eq!(plain.header("content-encoding"), None, "{plain:?}");
    assert_eq!(plain.decoded(), PAGE);
}

/// A range of a stored compressed body is a range of the gzip bytes, labelled so
/// (`Content-Encoding: gzip`, `Content-Range` against the stored length), and is never
/// served to a client that did not accept gzip.
#[tokio::test]
async fn ranges_of_a_stored_compressed_body() {
    let layer = cache();
    let watch = Watch::of(&layer);
    let app = layer.layer(CompressionLayer::new().layer(page_app()));
    let full = get_url(&app, "/page", &[("accept-encoding", "gzip")]).await;
    watch.settled().await;
    assert_eq!(full.header("content-encoding"), Some("gzip"));
    let total = full.body.len();

    let part = get_url(
        &app,
        "/page",
        &[("accept-encoding", "gzip"), ("range", "bytes=0-9")],
    )
    .await;
    assert_eq!(part.status, StatusCode::PARTIAL_CONTENT, "{part:?}");
    assert_eq!(part.header("content-encoding"), Some("gzip"));
    assert_eq!(
        part.header("content-range"),
        Some(format!("bytes 0-9/{total}").as_str())
    );
    assert_eq!(part.body, full.body.slice(0..10));

    let plain = get_url(&app, "/page", &[("range", "bytes=0-9")]).await;
    assert_eq!(plain.header("content-encoding"), None, "{plain:?}");
    if plain.status == StatusCode::PARTIAL_CONTENT {
        assert_eq!(plain.body, &PAGE.as_bytes()[..10]);
    } else {
        assert_eq!(plain.decoded(), PAGE);
    }
}

/// Cache inside compression (the usual axum order: `.layer(cache).layer(compression)`):
/// the stored body is the plain one, each client gets its own encoding on a hit too, and a
/// range from a hit is never compressed (compression leaves `Content-Range` alone).
#[tokio::test]
async fn cache_inside_compression_serves_each_client_its_encoding() {
    let layer = cache();
    let watch = Watch::of(&layer);
    let app = page_app().layer(layer).layer(CompressionLayer::new());
    let first = get_url(&app, "/page", &[("accept-encoding", "gzip")]).await;
    watch.settled().await;
    assert_eq!(first.header("content-encoding"), Some("gzip"));
    let gzip = get_url(&app, "/page", &[("accept-encoding", "gzip")]).await;
    support::assert_hit(gzip.cache_status());
    assert_eq!(gzip.header("content-encoding"), Some("gzip"));
    assert_eq!(gzip.decoded(), PAGE);
    let plain = get_url(&app, "/page", &[]).await;
    support::assert_hit(plain.cache_status());
    assert_eq!(plain.header("content-encoding"), None);
    assert_eq!(plain.decoded(), PAGE);
    let part = get_url(
        &app,
        "/page",
        &[("accept-encoding", "gzip"), ("range", "bytes=4-8")],
    )
    .await;
    assert_eq!(part.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(part.header("content-encoding"), None);
    assert_eq!(part.body, &PAGE.as_bytes()[4..9]);
}

// ---------------------------------------------------------------------------------------
// CorsLayer

fn cors_app() -> Router {
    Router::new().route("/api", get(|| async { PAGE }))
}

/// Cache outside a CORS layer that reflects allowed origins: one origin's
/// `Access-Control-Allow-Origin` never reaches another origin, nor a request without one.
#[tokio::test]
async fn one_origins_allow_origin_is_not_served_to_another() {
    for near in [false, true] {
        let _near = near.then(support::NearTier::on);
        for cors in [
            CorsLayer::new().allow_origin(AllowOrigin::mirror_request()),
            CorsLayer::new().allow_origin([
                HeaderValue::from_static("https://a.example"),
                HeaderValue::from_static("https://b.example"),
            ]),
        ] {
            let layer = cache();
            let watch = Watch::of(&layer);
            let app = layer.layer(cors.layer(cors_app()));
            let a = get_url(&app, "/api", &[("origin", "https://a.example")]).await;
            watch.settled().await;
            assert_eq!(
                a.header("access-control-allow-origin"),
                Some("https://a.example")
            );
            let again = get_url(&app, "/api", &[("origin", "https://a.example")]).await;
            support::assert_hit(again.cache_status());
            let b = get_url(&app, "/api", &[("origin", "https://b.example")]).await;
            assert_eq!(
                b.header("access-control-allow-origin"),
                Some("https://b.example"),
                "{b:?}"
            );
            let evil = get_url(&app, "/api", &[("origin", "https://evil.example")]).await;
            if evil.header("access-control-allow-origin").is_some() {
                assert_eq!(
                    evil.header("access-control-allow-origin"),
                    Some("https://evil.example")
                );
            }
            let none = get_url(&app, "/api", &[]).await;
            assert_eq!(none.header("access-control-allow-origin"), None, "{none:?}");
        }
    }
}

/// CORS and compression both inside the cache: two `Vary` lines (one from each). Each
/// is honoured.
#[tokio::test]
async fn vary_lines_from_cors_and_compression_are_both_honoured() {
    for near in [false, true] {
        let _near = near.then(support::NearTier::on);
        let layer = cache();
        let watch = Watch::of(&layer);
        let app = layer.layer(
            CorsLayer::new()
                .allow_origin(AllowOrigin::mirror_request())
                .layer(CompressionLayer::new().layer(cors_app())),
        );
        let first = get_url(
            &app,
            "/api",
            &[("origin", "https://a.example"), ("accept-encoding", "gzip")],
        )
        .await;
        watch.settled().await;
        assert_eq!(first.header("content-encoding"), Some("gzip"));
        assert!(first.headers.get_all(header::VARY).iter().count() >= 2);
        let other_origin = get_url(
            &app,
            "/api",
            &[("origin", "https://b.example"), ("accept-encoding", "gzip")],
        )
        .await;
        assert_eq!(
            other_origin.header("access-control-allow-origin"),
            Some("https://b.example")
        );
        let plain = get_url(&app, "/api", &[("origin", "https://a.example")]).await;
        assert_eq!(plain.header("content-encoding"), None, "{plain:?}");
        assert_eq!(plain.decoded(), PAGE);
    }
}

/// Preflights (OPTIONS) are neither stored nor answered from the cache, and do not
/// invalidate the URL's GET entry (OPTIONS is safe).
#[tokio::test]
async fn preflights_are_not_cached_and_invalidate_nothing() {
    let layer = cache();
    let watch = Watch::of(&layer);
    let app = layer.layer(
        CorsLayer::new()
            .allow_origin(AllowOrigin::mirror_request())
            .allow_methods([Method::GET, Method::POST])
            .layer(cors_app()),
    );
    get_url(&app, "/api", &[("origin", "https://a.example")]).await;
    watch.settled().await;
    for origin in ["https://a.example", "https://b.example"] {
        let preflight = call(
            &app,
            Method::OPTIONS,
            "/api",
            &[
                ("origin", origin),
                ("access-control-request-method", "POST"),
            ],
        )
        .await;
        watch.settled().await;
        assert_eq!(
            preflight.header("access-control-allow-origin"),
            Some(origin)
        );
        assert!(!preflight.cache_status().contains("hit"), "{preflight:?}");
    }
    let again = get_url(&app, "/api", &[("origin", "https://a.example")]).await;
    support::assert_hit(again.cache_status());
}

// ---------------------------------------------------------------------------------------
// Auth

/// `ValidateRequestHeaderLayer::bearer`, which tower-http 0.7 deprecates as "too basic"
/// for real applications: it is still what many stack, and the simplest auth to test.
#[allow(deprecated)]
fn bearer(
    token: &str,
) -> ValidateRequestHeaderLayer<tower_http::auth::require_authorization::Bearer<Body>> {
    ValidateRequestHeaderLayer::bearer(token)
}

/// A page behind `ValidateRequestHeaderLayer::bearer`, inside the cache: the
/// authenticated request's answer is not stored (RFC 9111 §3.5), so an unauthenticated
/// request is answered 401 by the auth layer.
#[tokio::test]
async fn bearer_auth_inside_the_cache_keeps_the_page_private() {
    let layer = cache();
    let watch = Watch::of(&layer);
    let app = Router::new()
        .route(
            "/secret",
            get(|| async { "the secret page for the token holder" }),
        )
        .layer(bearer("token"))
        .layer(layer);
    let ok = get_url(&app, "/secret", &[("authorization", "Bearer token")]).await;
    watch.settled().await;
    assert_eq!(ok.status, StatusCode::OK);
    let anonymous = get_url(&app, "/secret", &[]).await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED, "{anonymous:?}");
    let wrong = get_url(&app, "/secret", &[("authorization", "Bearer guess")]).await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED, "{wrong:?}");
    // The 401 the auth layer gave is not stored either.
    let ok = get_url(&app, "/secret", &[("authorization", "Bearer token")]).await;
    assert_eq!(ok.status, StatusCode::OK);
}

/// `must-revalidate` lets a response to an authenticated request be stored (§3.5), but
/// without its own freshness every reuse is revalidated: the anonymous request's
/// revalidation reaches the bearer check, whose 401 the anonymous client gets, never the
/// stored page (in routes and origin mode, with or without a validator).
#[tokio::test]
async fn must_revalidate_pages_behind_bearer_auth_are_revalidated_for_anonymous_requests() {
    for mode in [
        tower_memcache::CacheMode::Routes,
        tower_memcache::CacheMode::Origin,
    ] {
        for cache_control in ["must-revalidate", "must-revalidate, no-cache"] {
            let layer = cache().mode(mode);
            let watch = Watch::of(&layer);
            let app = Router::new()
                .route(
                    "/secret",
                    get(move || async move {
                        (
                            [
                                (header::CACHE_CONTROL, cache_control),
                                (header::ETAG, "\"s1\""),
                            ],
                            "the secret page for the token holder",
                        )
                    }),
                )
                .layer(bearer("token"))
                .layer(layer);
            get_url(&app, "/secret", &[("authorization", "Bearer token")]).await;
            support::stores(&watch, 1).await;
            for headers in [&[][..], &[("if-none-match", "\"s1\"")][..]] {
                let anonymous = get_url(&app, "/secret", headers).await;
                assert_eq!(
                    anonymous.status,
                    StatusCode::UNAUTHORIZED,
                    "{mode:?}, {cache_control}, {headers:?}: {anonymous:?}"
                );
            }
        }
    }
}

/// Unsafe stacking, a demonstration: a blanket `Cache-Control: public` added by
/// `SetResponseHeaderLayer` to every response, the bearer check and the cache outside it.
/// `public` is the origin's word that a response to an authenticated request may be
/// shared (RFC 9111 §3.5), so the page is stored and the cache answers the anonymous
/// request before the auth layer sees it. The README says to stack auth outside the cache
/// and keep `public` off authenticated routes.
#[tokio::test]
async fn unsafe_order_blanket_public_lets_anyone_read_an_authenticated_page() {
    let layer = cache();
    let watch = Watch::of(&layer);
    let app = Router::new()
        .route(
            "/secret",
            get(|| async { "the secret page for the token holder" }),
        )
        .layer(bearer("token"))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::CACHE_CONTROL,
            HeaderValue::from_static("public, max-age=60"),
        ))
        .layer(layer);
    get_url(&app, "/secret", &[("authorization", "Bearer token")]).await;
    watch.settled().await;
    let anonymous = get_url(&app, "/secret", &[]).await;
    assert_eq!(anonymous.status, StatusCode::OK);
    assert_eq!(anonymous.body, "the secret page for the token holder");
}

/// A session check by cookie, as a middleware: the page depends on a request field the key
/// does not hold and no `Vary` names.
async fn require_session(request: AxumRequest, next: Next) -> Response {
    let signed_in = request
        .headers()
        .get(header::COOKIE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|cookie| cookie.contains("session=valid"));
    if signed_in {
        next.run(request).await
    } else {
        StatusCode::UNAUTHORIZED.into_response()
    }
}

fn session_app() -> Router {
    Router::new().route("/members", get(|| async { "members only" }))
}

/// Safe order: the cookie check outside the cache (`.layer(cache).layer(auth)` in axum):
/// every request is checked before the cache answers.
#[tokio::test]
async fn cookie_auth_outside_the_cache_checks_every_request() {
    let layer = cache();
    let watch = Watch::of(&layer);
    let app = session_app()
        .layer(layer)
        .layer(middleware::from_fn(require_session));
    let member = get_url(&app, "/members", &[("cookie", "session=valid")]).await;
    watch.settled().await;
    assert_eq!(member.body, "members only");
    let anonymous = get_url(&app, "/members", &[]).await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
}

/// Unsafe order, a demonstration: the cookie check inside the cache. The member's page is
/// stored (routes mode stores what the route says), and the cache answers the anonymous
/// request without asking the auth middleware. The README says to stack auth outside.
#[tokio::test]
async fn unsafe_order_cookie_auth_inside_the_cache_serves_members_pages_to_anyone() {
    let layer = cache();
    let watch = Watch::of(&layer);
    let app = session_app()
        .layer(middleware::from_fn(require_session))
        .layer(layer);
    get_url(&app, "/members", &[("cookie", "session=valid")]).await;
    watch.settled().await;
    let anonymous = get_url(&app, "/members", &[]).await;
    assert_eq!(anonymous.status, StatusCode::OK);
    assert_eq!(anonymous.body, "members only");
}

/// Unsafe order, a demonstration: a request validator inside the cache. A hit is answered
/// before the validator runs, so a request it would refuse (`Accept: text/html` at a JSON
/// endpoint: 406) gets what an accepted request stored. The README says to validate
/// outside the cache.
#[tokio::test]
async fn unsafe_order_request_validation_inside_the_cache_is_skipped_on_hits() {
    let layer = cache();
    let watch = Watch::of(&layer);
    let app = Router::new()
        .route("/data", get(|| async { "{\"data\":1}" }))
        .layer(ValidateRequestHeaderLayer::accept("application/json"))
        .layer(layer);
    get_url(&app, "/data", &[("accept", "application/json")]).await;
    watch.settled().await;
    let refused = get_url(&app, "/data", &[("accept", "text/html")]).await;
    support::assert_hit(refused.cache_status());
    assert_eq!(refused.status, StatusCode::OK);
    // Outside the cache, the validator answers every request.
    let layer = cache();
    let watch = Watch::of(&layer);
    let app = Router::new()
        .route("/data", get(|| async { "{\"data\":1}" }))
        .layer(layer)
        .layer(ValidateRequestHeaderLayer::accept("application/json"));
    get_url(&app, "/data", &[("accept", "application/json")]).await;
    watch.settled().await;
    let refused = get_url(&app, "/data", &[("accept", "text/html")]).await;
    assert_eq!(refused.status, StatusCode::NOT_ACCEPTABLE);
}

// ---------------------------------------------------------------------------------------
// NormalizePathLayer

fn account_app() -> Router {
    Router::new()
        .route("/account", get(|| async { "alice's account" }))
        .route("/news", get(|| async { "news" }))
}

/// Safe order: `NormalizePathLayer` wraps the router, the cache is inside it
/// (`Router::layer`), so the cache and its rules see the normalised path: no spelling of
/// `/account` is stored.
#[tokio::test]
async fn normalize_path_outside_the_cache_keeps_no_cache_rules() {
    let layer = cache().no_cache(RouteMatch::Exact("/account".into()));
    let watch = Watch::of(&layer);
    let app = NormalizePathLayer::trim_trailing_slash().layer(account_app().layer(layer));
    for spelling in ["/account", "/account/", "//account", "/account//"] {
        let got = get_url(&app, spelling, &[("cookie", "session=alice")]).await;
        watch.settled().await;
        assert_eq!(got.body, "alice's account", "{spelling}");
        assert_eq!(
            got.cache_status(),
            "tower-memcache; fwd=bypass",
            "{spelling}"
        );
    }
    assert_eq!(watch.snapshot().stores, 0);
}

/// The cache outside `NormalizePathLayer`, with the `no_cache` rule the docs recommend for
/// a private area (`Prefix`). `trim_trailing_slash` also trims leading slashes, so the
/// router answers `//account` (and `/account//`, `//account/x`) as `/account`: a victim
/// lured to such a spelling must not fill an entry an attacker then reads (web cache
/// deception). Rules match paths with runs of `/` read as one, as path normalisers (and
/// nginx's `merge_slashes`) read them.
#[tokio::test]
async fn no_cache_prefix_holds_for_every_slash_spelling_under_a_normaliser_inside() {
    let layer = cache().no_cache(RouteMatch::Prefix("/account".into()));
    let watch = Watch::of(&layer);
    let app = layer.layer(NormalizePathLayer::trim_trailing_slash().layer(account_app()));
    for spelling in ["//account", "///account", "/account//", "//account/"] {
        let victim = get_url(&app, spelling, &[("cookie", "session=alice")]).await;
        watch.settled().await;
        assert_eq!(victim.body, "alice's account", "{spelling}");
        let attacker = get_url(&app, spelling, &[]).await;
        assert_eq!(
            attacker.cache_status(),
            "tower-memcache; fwd=bypass",
            "{spelling}: {attacker:?}"
        );
    }
    assert_eq!(watch.snapshot().stores, 0);
}

/// The cache outside `NormalizePathLayer`, with an `Exact` rule: the cache keys the path
/// as sent and the router answers `/account/` as `/account`, so a victim lured to
/// `/account/` would fill an entry an attacker then reads. A `no_cache` rule also holds for
/// its path with a trailing slash (and the other spellings a lenient origin resolves to
/// it, `tests/route_rules.rs`). Putting path normalisation outside the cache is still the
/// README's advice: inside, each spelling of a public page is its own entry.
#[tokio::test]
async fn normalize_path_inside_the_cache_keeps_an_exact_no_cache_rule() {
    let layer = cache().no_cache(RouteMatch::Exact("/account".into()));
    let watch = Watch::of(&layer);
    let app = layer.layer(NormalizePathLayer::trim_trailing_slash().layer(account_app()));
    get_url(&app, "/account/", &[("cookie", "session=alice")]).await;
    watch.settled().await;
    let attacker = get_url(&app, "/account/", &[]).await;
    assert_eq!(attacker.cache_status(), "tower-memcache; fwd=bypass");
    assert_eq!(watch.snapshot().stores, 0);
}

// ---------------------------------------------------------------------------------------
// Request rewriting

/// A locale middleware: a `lang` cookie overrides `Accept-Language` for the handler, which
/// answers by `Accept-Language` and says `Vary: accept-language`, as it should.
async fn locale_from_cookie(mut request: AxumRequest, next: Next) -> Response {
    let french = request
        .headers()
        .get(header::COOKIE)
        .is_some_and(|v| v.as_bytes() == b"lang=fr");
    if french {
        request
            .headers_mut()
            .insert(header::ACCEPT_LANGUAGE, HeaderValue::from_static("fr"));
    }
    next.run(request).await
}

fn localized_app() -> Router {
    Router::new().route(
        "/welcome",
        get(|headers: HeaderMap| async move {
            let french = headers
                .get(header::ACCEPT_LANGUAGE)
                .is_some_and(|v| v.as_bytes().starts_with(b"fr"));
            (
                [(header::VARY, "accept-language")],
                if french { "bienvenue" } else { "welcome" },
            )
        }),
    )
}

/// Safe order: the rewriting middleware outside the cache. The cache selects the variant
/// by the `Accept-Language` the handler read.
#[tokio::test]
async fn request_rewriting_outside_the_cache_is_keyed_as_the_origin_reads_it() {
    let layer = cache();
    let watch = Watch::of(&layer);
    let app = localized_app()
        .layer(layer)
        .layer(middleware::from_fn(locale_from_cookie));
    let french = get_url(
        &app,
        "/welcome",
        &[("cookie", "lang=fr"), ("accept-language", "en")],
    )
    .await;
    watch.settled().await;
    assert_eq!(french.body, "bienvenue");
    let english = get_url(&app, "/welcome", &[("accept-language", "en")]).await;
    assert_eq!(english.body, "welcome");
}

/// Unsafe order, a demonstration: the rewriting middleware inside the cache. The handler's
/// `Vary: accept-language` names the value it read (`fr`, from the cookie), the cache
/// selects by the value the client sent (`en`): the French page is stored for every
/// English reader. The README says to rewrite requests outside the cache.
#[tokio::test]
async fn unsafe_order_request_rewriting_inside_the_cache_stores_a_variant_under_another_value() {
    let layer = cache();
    let watch = Watch::of(&layer);
    let app = localized_app()
        .layer(middleware::from_fn(locale_from_cookie))
        .layer(layer);
    get_url(
        &app,
        "/welcome",
        &[("cookie", "lang=fr"), ("accept-language", "en")],
    )
    .await;
    watch.settled().await;
    let english = get_url(&app, "/welcome", &[("accept-language", "en")]).await;
    support::assert_hit(english.cache_status());
    assert_eq!(english.body, "bienvenue");
}

// ---------------------------------------------------------------------------------------
// Per-response fields added by middleware

/// A session middleware inside the cache that sets a cookie on the response: the response
/// is not stored, and the cookie is never replayed to another client.
#[tokio::test]
async fn session_cookie_set_by_middleware_is_not_replayed() {
    let layer = cache();
    let watch = Watch::of(&layer);
    let app = page_app()
        .layer(middleware::from_fn(
            |request: AxumRequest, next: Next| async move {
                let mut response = next.run(request).await;
                response.headers_mut().append(
                    header::SET_COOKIE,
                    HeaderValue::from_static("session=victim; HttpOnly"),
                );
                response
            },
        ))
        .layer(layer);
    let first = get_url(&app, "/page", &[]).await;
    watch.settled().await;
    assert!(first.header("set-cookie").is_some());
    let second = get_url(&app, "/page", &[]).await;
    support::assert_not_hit(second.cache_status());
    // Even opted in to store such responses, the cookie stays out of the entry.
    let layer = cache().store_set_cookie(true);
    let watch = Watch::of(&layer);
    let app = page_app()
        .layer(SetResponseHeaderLayer::appending(
            header::SET_COOKIE,
            HeaderValue::from_static("session=victim"),
        ))
        .layer(layer);
    get_url(&app, "/page", &[]).await;
    watch.settled().await;
    let hit = get_url(&app, "/page", &[]).await;
    support::assert_hit(hit.cache_status());
    assert_eq!(hit.header("set-cookie"), None, "{hit:?}");
}

/// A request id set on responses inside the cache belongs to the request that filled it.
/// A demonstration: the cache replays it (it cannot tell a per-request field from the
/// page's); the README says to add such fields outside the cache, where each request gets
/// its own.
#[tokio::test]
async fn unsafe_order_request_id_set_inside_the_cache_is_replayed() {
    let layer = cache();
    let watch = Watch::of(&layer);
    let app = page_app()
        .layer(middleware::from_fn(
            |request: AxumRequest, next: Next| async move {
                let id = request.headers().get("x-request-id").cloned();
                let mut response = next.run(request).await;
                if let Some(id) = id {
                    response.headers_mut().insert("x-request-id", id);
                }
                response
            },
        ))
        .layer(layer);
    get_url(&app, "/page", &[("x-request-id", "victim-1")]).await;
    watch.settled().await;
    let other = get_url(&app, "/page", &[("x-request-id", "other-2")]).await;
    support::assert_hit(other.cache_status());
    assert_eq!(other.header("x-request-id"), Some("victim-1"));
}

/// `TimeoutLayer` inside the cache: its 408 is not stored, so the next request reaches the
/// handler again; outside the cache a hit is never timed out by a slow origin.
#[tokio::test]
async fn timeout_inside_the_cache_is_not_stored() {
    let layer = cache();
    let watch = Watch::of(&layer);
    let slow = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let flag = slow.clone();
    let app = Router::new()
        .route(
            "/sometimes-slow",
            get(move || {
                let slow = flag.load(std::sync::atomic::Ordering::SeqCst);
                async move {
                    if slow {
                        tokio::time::sleep(Duration::from_secs(2)).await;
                    }
                    PAGE
                }
            }),
        )
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            Duration::from_millis(100),
        ))
        .layer(layer);
    let first = get_url(&app, "/sometimes-slow", &[]).await;
    watch.settled().await;
    assert_eq!(first.status, StatusCode::REQUEST_TIMEOUT);
    slow.store(false, std::sync::atomic::Ordering::SeqCst);
    let second = get_url(&app, "/sometimes-slow", &[]).await;
    assert_eq!(second.status, StatusCode::OK, "{second:?}");
    assert_eq!(second.body, PAGE);
}

/// A HEAD answered by the origin refreshes the stored GET response it selects (RFC 9111
/// §4.3.5). Under compression the HEAD's `Content-Encoding` is that of its own variant:
/// a HEAD from a client of the other encoding must not relabel a stored body.
#[tokio::test]
async fn a_head_of_the_other_encoding_does_not_relabel_a_stored_body() {
    for near in [false, true] {
        let _near = near.then(support::NearTier::on);
        for (stored, head) in [
            (&[("accept-encoding", "gzip")][..], &[][..]),
            (&[][..], &[("accept-encoding", "gzip")][..]),
        ] {
            let layer = cache();
            let watch = Watch::of(&layer);
            let app = layer.layer(CompressionLayer::new().layer(page_app()));
            get_url(&app, "/page", stored).await;
            watch.settled().await;
            let answered = call(&app, Method::HEAD, "/page", head).await;
            watch.settled().await;
            assert_eq!(answered.status, StatusCode::OK);
            for client in [stored, head] {
                for _ in 0..2 {
                    let got = get_url(&app, "/page", client).await;
                    watch.settled().await;
                    if client.is_empty() {
                        assert_eq!(got.header("content-encoding"), None, "{got:?}");
                    }
                    assert_eq!(
                        got.decoded(),
                        PAGE,
                        "{client:?} after a HEAD {head:?}: {got:?}"
                    );
                }
            }
        }
    }
}

/// `TimeoutLayer` outside the cache: a request whose miss the timeout cut short (its
/// response future dropped while it was the URL's filler) leaves nothing behind that makes
/// the next requests wait: they reach the handler, now fast, within the timeout.
#[tokio::test]
async fn a_fill_cut_short_by_a_timeout_outside_does_not_hold_the_url() {
    let layer = cache();
    let watch = Watch::of(&layer);
    let slow = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let flag = slow.clone();
    let app = Router::new()
        .route(
            "/sometimes-slow",
            get(move || {
                let slow = flag.load(std::sync::atomic::Ordering::SeqCst);
                async move {
                    if slow {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                    PAGE
                }
            }),
        )
        .layer(layer)
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            Duration::from_millis(200),
        ));
    let first = get_url(&app, "/sometimes-slow", &[]).await;
    assert_eq!(first.status, StatusCode::REQUEST_TIMEOUT);
    slow.store(false, std::sync::atomic::Ordering::SeqCst);
    for _ in 0..3 {
        let next = get_url(&app, "/sometimes-slow", &[]).await;
        watch.settled().await;
        assert_eq!(next.status, StatusCode::OK, "{next:?}");
        assert_eq!(next.body, PAGE);
    }
}

/// Accept-Encoding spellings the layer may read as one variant: whatever one of them
/// filled, every other one gets what compression would have sent it without the cache
/// (gzip only to a client compression would have sent gzip).
#[tokio::test]
async fn accept_encoding_spellings_get_the_encoding_compression_chose_for_them() {
    let spellings = [
        None,
        Some("gzip"),
        Some("GZIP"),
        Some("gzip;q=0"),
        Some("gzip; q=0"),
        Some("gzip;q=0.0"),
        Some("gzip;q=0.000"),
        Some("gzip;Q=0"),
        Some("identity"),
        Some(""),
        Some("*"),
        Some("*;q=0"),
        Some("*;q=0, identity"),
        Some("gzip;q=0, *"),
        Some("identity, gzip;q=0.5"),
        Some("gzip;q=0.5, identity"),
        Some("x-gzip"),
        Some("deflate"),
        Some("br"),
        Some("gzip, deflate, br"),
        Some("br;q=1.0, gzip;q=0.8, *;q=0.1"),
    ];
    let headers = |spelling: Option<&'static str>| -> Vec<(&'static str, &'static str)> {
        spelling
            .map(|value| vec![("accept-encoding", value)])
            .unwrap_or_default()
    };
    let direct = CompressionLayer::new().layer(page_app());
    for reader in spellings {
        let wanted = get_url(&direct, "/page", &headers(reader)).await;
        for filler in spellings {
            let layer = cache();
            let watch = Watch::of(&layer);
            let app = layer.layer(CompressionLayer::new().layer(page_app()));
            get_url(&app, "/page", &headers(filler)).await;
            watch.settled().await;
            let got = get_url(&app, "/page", &headers(reader)).await;
            assert_eq!(
                (got.status, got.header("content-encoding")),
                (wanted.status, wanted.header("content-encoding")),
                "reader {reader:?} after filler {filler:?}: {got:?}"
            );
        }
    }
}

/// An origin that validates: `ETag: "v1"`, short freshness, a 304 to a matching
/// `If-None-Match`, as handlers written for conditional requests do.
fn validating_app(cache_control: &'static str) -> Router {
    Router::new().route(
        "/page",
        get(move |headers: HeaderMap| async move {
            let matches = headers
                .get(header::IF_NONE_MATCH)
                .is_some_and(|v| v.as_bytes() == b"\"v1\"");
            let status = if matches {
                StatusCode::NOT_MODIFIED
            } else {
                StatusCode::OK
            };
            let body = if matches { "" } else { PAGE };
            (
                status,
                [
                    (header::ETAG, "\"v1\""),
                    (header::CACHE_CONTROL, cache_control),
                ],
                body,
            )
        }),
    )
}

/// Cache outside compression, origin mode: stale variants are revalidated (in the
/// background inside `stale-while-revalidate`, or before use) with the request of a
/// client of the other encoding around. The 304s compression passes through carry
/// neither `Content-Encoding` nor `Vary`: each refresh keeps its variant's labels.
#[tokio::test]
async fn revalidations_under_compression_keep_each_variants_encoding() {
    for cache_control in ["max-age=1, stale-while-revalidate=60", "max-age=1"] {
        let layer = cache().mode(tower_memcache::CacheMode::Origin);
        let watch = Watch::of(&layer);
        let app = layer.layer(CompressionLayer::new().layer(validating_app(cache_control)));
        let gzip: &[(&str, &str)] = &[("accept-encoding", "gzip")];
        let plain: &[(&str, &str)] = &[];
        for client in [gzip, plain] {
            get_url(&app, "/page", client).await;
            watch.settled().await;
        }
        tokio::time::sleep(Duration::from_millis(2100)).await;
        for round in 0..3 {
            for client in [gzip, plain, plain, gzip] {
                let got = get_url(&app, "/page", client).await;
                watch.settled().await;
                assert_eq!(got.status, StatusCode::OK, "{got:?}");
                if client.is_empty() {
                    assert_eq!(got.header("content-encoding"), None, "{got:?}");
                }
                assert_eq!(
                    got.decoded(),
                    PAGE,
                    "{cache_control}, round {round}, {client:?}: {got:?}"
                );
            }
        }
        assert!(
            watch.snapshot().revalidations >= 1,
            "{:?}",
            watch.snapshot()
        );
    }
}

/// Concurrent cold misses: an authenticated request fills, an anonymous one arrives while
/// it is under way. The anonymous one must not be handed the authenticated answer (not
/// storable: §3.5), neither behind `ValidateRequestHeaderLayer::bearer` nor for a page the
/// origin marks `private`.
#[tokio::test]
async fn an_anonymous_request_waiting_for_an_authenticated_fill_gets_its_own_answer() {
    let bearer = Router::new()
        .route(
            "/secret",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(300)).await;
                "the secret page for the token holder"
            }),
        )
        .layer(bearer("token"));
    let private = Router::new().route(
        "/secret",
        get(|headers: HeaderMap| async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            if headers.contains_key(header::COOKIE) {
                (
                    [(header::CACHE_CONTROL, "private")],
                    "the secret page for the token holder",
                )
            } else {
                ([(header::CACHE_CONTROL, "public")], "sign in")
            }
        }),
    );
    for (app, credential) in [
        (bearer, ("authorization", "Bearer token")),
        (private, ("cookie", "session=valid")),
    ] {
        for near in [false, true] {
            let _near = near.then(support::NearTier::on);
            let app = app.clone().layer(cache());
            let credentials = [credential];
            let member = get_url(&app, "/secret", &credentials);
            let anonymous = async {
                tokio::time::sleep(Duration::from_millis(100)).await;
                get_url(&app, "/secret", &[]).await
            };
            let (member, anonymous) = tokio::join!(member, anonymous);
            assert_eq!(member.body, "the secret page for the token holder");
            assert_ne!(
                anonymous.body, "the secret page for the token holder",
                "{credential:?}: {anonymous:?}"
            );
        }
    }
}

/// A page whose body stalls halfway, as an origin that hangs mid-response.
fn stalling_app() -> Router {
    Router::new().route(
        "/stalls",
        get(|| async {
            let chunks = futures_util::stream::iter([("first half, ", 0u64), ("second half", 400)])
                .then(|(chunk, pause)| async move {
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                    Ok::<_, std::io::Error>(Bytes::from_static(chunk.as_bytes()))
                });
            (
                [(header::CONTENT_TYPE, "text/plain")],
                Body::from_stream(chunks),
            )
        }),
    )
}

/// `ResponseBodyTimeoutLayer` inside the cache cuts a stalling body short (an error
/// mid-body): nobody gets the first half as a whole page, not the request that filled,
/// not one waiting for it, not a later one from the cache.
#[tokio::test]
async fn a_body_cut_short_by_a_timeout_inside_is_never_a_whole_page() {
    use tower_http::timeout::ResponseBodyTimeoutLayer;
    for near in [false, true] {
        let _near = near.then(support::NearTier::on);
        let layer = cache();
        let watch = Watch::of(&layer);
        let app = stalling_app()
            .layer(ResponseBodyTimeoutLayer::new(Duration::from_millis(150)))
            .layer(layer);
        let read = |delay: u64| {
            let app = app.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(delay)).await;
                let response = app
                    .oneshot(Request::get("/stalls").body(Body::empty()).unwrap())
                    .await
                    .unwrap();
                response.into_body().collect().await.map(|b| b.to_bytes())
            }
        };
        let (first, second) = tokio::join!(read(0), read(50));
        watch.settled().await;
        for (who, got) in [("filler", first), ("waiter", second)] {
            if let Ok(body) = got {
                assert_eq!(body, "first half, second half", "{who} (near: {near})");
            }
        }
        if let Ok(body) = read(0).await {
            assert_eq!(body, "first half, second half", "later (near: {near})");
        }
    }
}

/// An origin that honours single ranges, as `ServeDir` does.
fn ranged_app() -> Router {
    Router::new().route(
        "/page",
        get(|headers: HeaderMap| async move {
            let range = headers
                .get(header::RANGE)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("bytes="))
                .and_then(|v| v.split_once('-'))
                .and_then(|(a, b)| Some((a.parse::<usize>().ok()?, b.parse::<usize>().ok()?)))
                .filter(|&(a, b)| a <= b && b < PAGE.len());
            match range {
                Some((a, b)) => (
                    StatusCode::PARTIAL_CONTENT,
                    [(
                        header::CONTENT_RANGE,
                        format!("bytes {a}-{b}/{}", PAGE.len()),
                    )],
                    &PAGE[a..=b],
                )
                    .into_response(),
                None => PAGE.into_response(),
            }
        }),
    )
}

/// Cache outside compression, a range miss: the origin's 206 passes through uncompressed
/// (compression leaves ranges alone) and the whole representation is fetched in the
/// background with the client's `Accept-Encoding`, so the gzip body it brings back is
/// stored for gzip clients only.
#[tokio::test]
async fn a_range_miss_fills_the_variant_of_the_clients_encoding() {
    for (filler, other) in [
        (&[("accept-encoding", "gzip")][..], &[][..]),
        (&[][..], &[("accept-encoding", "gzip")][..]),
    ] {
        let layer = cache();
        let watch = Watch::of(&layer);
        let app = layer.layer(CompressionLayer::new().layer(ranged_app()));
        let mut ranged = filler.to_vec();
        ranged.push(("range", "bytes=0-9"));
        let part = get_url(&app, "/page", &ranged).await;
        watch.settled().await;
        assert_eq!(part.status, StatusCode::PARTIAL_CONTENT);
        assert_eq!(part.body, &PAGE.as_bytes()[..10]);
        assert!(watch.snapshot().stores >= 1, "{:?}", watch.snapshot());
        for client in [other, filler, other] {
            let got = get_url(&app, "/page", client).await;
            watch.settled().await;
            if client.is_empty() {
                assert_eq!(got.header("content-encoding"), None, "{got:?}");
            }
            assert_eq!(got.decoded(), PAGE, "{client:?}: {got:?}");
        }
    }
}
