//! Review TS: the cache key against what the application actually routes, attacked with
//! crafted paths (percent-encoded and empty segments, trailing slashes) and with ordinary
//! axum stacks (`nest`, `nest_service`, captures, route middleware outside the cache):
//! the page a handler made must be stored only under the target whose page it is.
//!
//! A route middleware outside the cache (added with `Router::layer`, after the `Router`
//! noted `OriginalUri`) that changed the target's authority, not its path or query, was
//! not taken for a rewrite: the handler answered the other authority, and its page was
//! stored under the client's.
//!
//! Not fixed (ignored test): a rewrite that only adds a slash after a nest's prefix
//! (`/v1/x` made `/v1//x`, which axum routes to the nested router's fallback) hands the
//! handler the target the nest's stripping makes of the client's (`/x`).
#![cfg(feature = "axum")]

use crate::support;

use axum::Router;
use axum::extract::Request;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::get;
use http::Uri;
use tower::Layer;
use tower_memcache::backend::MemoryBackend;

/// An operator previewing a tenant's site: the `preview` cookie names the tenant whose
/// authority the target is given (the handler serves by the target's host, as it reads
/// HTTP/2's `:authority` or an absolute-form target).
async fn preview_tenant(mut request: Request, next: Next) -> Response {
    let tenant = request
        .headers()
        .get(http::header::COOKIE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("preview="))
        .and_then(|tenant| format!("{tenant}.example").parse().ok());
    if let Some(authority) = tenant {
        let mut parts = request.uri().clone().into_parts();
        parts.authority = Some(authority);
        parts.scheme.get_or_insert(http::uri::Scheme::HTTP);
        if let Ok(uri) = Uri::from_parts(parts) {
            *request.uri_mut() = uri;
        }
    }
    next.run(request).await
}

/// A tenant's page, made for the host of the target the handler is given.
async fn tenant_page(uri: Uri) -> String {
    format!("{} page", uri.host().unwrap_or("no host"))
}

/// The preview of tenant `b` at `a.example`'s URL was stored under that URL: the next
/// visitor of `a.example` was answered `b`'s page, at the top level and in a nested router.
#[tokio::test]
async fn a_target_given_another_authority_is_not_stored_under_the_clients() {
    let layer = support::layer(MemoryBackend::new());
    let watch = support::Watch::of(&layer);
    let app = Router::new()
        .route("/page", get(tenant_page).layer(layer.clone()))
        .nest(
            "/docs",
            Router::new()
                .route("/intro", get(tenant_page))
                .layer(layer.clone()),
        )
        .layer(middleware::from_fn(preview_tenant));
    for url in ["http://a.example/page", "http://a.example/docs/intro"] {
        let preview = support::send_axum(&app, url, &[("cookie", "preview=b")]).await;
        assert_eq!(preview.body, "b.example page", "{url}");
        watch.settled().await;
        let visitor = support::send_axum(&app, url, &[]).await;
        assert_eq!(
            visitor.body,
            "a.example page",
            "{url}: a visitor was answered the previewed tenant's page ({})",
            visitor.cache_status()
        );
    }
}

/// A page that says what its handler was given: the target and every capture.
async fn what_was_routed(uri: Uri, params: axum::extract::RawPathParams) -> String {
    let params: Vec<String> = params
        .iter()
        .map(|(name, value)| format!("{name}={value}"))
        .collect();
    format!("{uri} [{}]", params.join(","))
}

/// Crafted paths through nests (a literal prefix, a capture, `nest_service`, a merged
/// router's nest, a `route_service` wildcard, a fallback, a normaliser outside the cache
/// inside a nest), without any rewrite: each page a second request is answered from the
/// cache is the one its own target gets from the handler (`%2F` and `/`, `%2f` and `%2F`,
/// `%2e%2e` and `..`, empty segments and trailing slashes never share a page).
#[tokio::test]
async fn crafted_paths_through_nests_are_each_answered_their_own_page() {
    use tower_http::normalize_path::NormalizePathLayer;
    let layer = support::layer(MemoryBackend::new());
    let watch = support::Watch::of(&layer);
    let pages = || {
        Router::new()
            .route("/x", get(what_was_routed))
            .route("/y/{item}", get(what_was_routed))
            .fallback(what_was_routed)
            .layer(layer.clone())
    };
    let app = Router::new()
        .nest("/v1", pages())
        .nest("/t/{tenant}", pages())
        .nest_service("/s/{tenant}", pages())
        .merge(Router::new().nest("/m", pages()))
        .route_service("/r/{*rest}", pages().into_service())
        .nest(
            "/n",
            pages().layer(NormalizePathLayer::trim_trailing_slash()),
        )
        .fallback_service(pages());
    let mut urls = Vec::new();
    for prefix in [
        "/v1",
        "/t/acme",
        "/t/a%2Fb",
        "/t/a%2fb",
        "/t/a/b",
        "/t/%2e%2e",
        "/t/%ff",
        "/t/a+b",
        "/t/a%20b",
        "/s/acme",
        "/s/a%2Fb",
        "/s/",
        "/m",
        "/r",
        "/n",
        "",
    ] {
        for suffix in [
            "/x",
            "/x/",
            "//x",
            "/y/a%2Fb",
            "/y/a%2fb",
            "/y/a/b",
            "/%2e%2e/x",
            "/../x",
            "/%25",
            "/y/%ff",
            "/+",
            "",
            "/",
        ] {
            urls.push(format!("http://club.example{prefix}{suffix}"));
        }
    }
    for url in &urls {
        support::send_axum(&app, url, &[]).await;
    }
    watch.settled().await;
    let (mut wrong, mut hits) = (Vec::new(), 0);
    for url in &urls {
        let answered = support::send_axum(&app, url, &[]).await;
        if answered.cache_status() != support::HIT {
            continue;
        }
        hits += 1;
        let own = support::send_axum(&app, url, &[("cache-control", "no-cache")]).await;
        if own.body != answered.body {
            wrong.push(format!(
                "{url}\n  answered: {}\n  its own:  {}",
                answered.body, own.body
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    // Most of them are cached: the check compared something.
    assert!(hits >= urls.len() / 2, "{hits} hits of {}", urls.len());
}

/// A middleware that adds a slash after the nest's prefix for requests with a cookie
/// (`/v1/x` made `/v1//x`), before the site's router routes them again.
async fn extra_slash_for_cookie(mut request: Request, next: Next) -> Response {
    if request.headers().contains_key(http::header::COOKIE) {
        let mut parts = request.uri().clone().into_parts();
        let path = request.uri().path().replacen("/v1/", "/v1//", 1);
        parts.path_and_query = path.parse().ok();
        if let Ok(uri) = Uri::from_parts(parts) {
            *request.uri_mut() = uri;
        }
    }
    next.run(request).await
}

/// Not fixed: a nest hands on `/v1/x` and `/v1//x` alike (`/x`), but axum routes them
/// apart (the route `/x`, the nested router's fallback). A rewrite that only adds that
/// slash, made before a router inside routes the request again, cannot be told from the
/// nest's own stripping by the target the handler sees: the fallback's page was stored
/// under `/v1/x`. Telling them apart needs the route axum chose (no `MatchedPath` for a
/// fallback), or routing the client's target again.
#[tokio::test]
#[ignore = "review TS: a rewrite that only adds a slash after a nest's prefix is not detected"]
async fn a_slash_added_after_a_nests_prefix_is_not_stored_under_the_clients_target() {
    let layer = support::layer(MemoryBackend::new());
    let watch = support::Watch::of(&layer);
    let pages = Router::new()
        .route("/x", get(|| async { "x" }))
        .fallback(|uri: Uri| async move { format!("fallback {uri}") })
        .layer(layer.clone());
    let site = Router::new().nest("/v1", pages);
    let app = Router::new()
        .route("/health", get(|| async { "ok" }))
        .fallback_service(middleware::from_fn(extra_slash_for_cookie).layer(site));
    let url = "http://club.example/v1/x";
    let rewritten = support::send_axum(&app, url, &[("cookie", "c=1")]).await;
    assert_eq!(rewritten.body, "fallback http://club.example/x");
    watch.settled().await;
    let visitor = support::send_axum(&app, url, &[]).await;
    assert_eq!(visitor.body, "x", "{}", visitor.cache_status());
}
