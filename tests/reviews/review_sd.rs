//! Review SD: web cache deception in routes mode (the layer's default), where the
//! operator's route rules, not the origin, decide what is stored, and the origin's
//! framework decides what a path means. Omer Gil's "Web Cache Deception" and PortSwigger's
//! "Gotta cache 'em all" (2024): a victim is lured to a spelling of their private page
//! that the cache's rules read as another path, the page is stored there, and the
//! attacker reads it. Here: delimiters the route reading did not model (Tomcat's and
//! Spring's `;` path parameters, cut before the path is decoded), and what a personal page
//! looks like to the layer (`private`, `no-store`, `Set-Cookie`, `Vary: Cookie`) when a
//! route rule gives its path a lifetime.

use crate::support;

use support::path_origin::{self, decode_once, get};

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, header};
use http_body_util::Full;
use tower::{Layer, service_fn};
use tower_memcache::backend::MemoryBackend;
use tower_memcache::cache::RouteMatch;

/// How Tomcat (and Spring's `UrlPathHelper`, `removeSemicolonContent` before
/// `decodeRequestString`) reads a path: each segment's `;` parameters dropped on the path
/// as sent, up to its next `/` (an escaped `%2F` or `%5C` inside one is part of the
/// parameter), then the rest decoded once and its dot segments resolved. Written apart
/// from the crate's own reading.
fn tomcat(path: &str) -> String {
    let raw: Vec<&str> = path
        .split('/')
        .map(|segment| segment.split(';').next().unwrap_or_default())
        .collect();
    let decoded = decode_once(raw.join("/").as_bytes());
    path_origin::resolve_segments(&String::from_utf8_lossy(&decoded))
}

/// A Tomcat origin where `/account` is the page of the user whose cookie came with the
/// request, marked by nothing (the mistake route rules exist to catch).
fn account_page(path: &str, user: &str) -> String {
    if tomcat(path) == "/account" {
        format!("{user}'s account")
    } else {
        format!("public page {}", tomcat(path))
    }
}

/// A victim lured to `/account;%2F..%2Fnews` had their page stored past a `no_cache`
/// `Exact("/account")` rule: Tomcat and Spring drop `;%2F..%2Fnews` as a path parameter
/// before decoding and answer with `/account`, while the layer decoded first and read
/// `/account;/../news`, which resolves to `/news`. The attacker then read the stored page.
#[tokio::test]
async fn a_no_cache_rule_holds_where_parameters_are_dropped_before_decoding() {
    let spellings = [
        "/account;%2F..%2Fnews",
        "/account;%2f%2e%2e%2fx.css",
        "/account;jsessionid=1%2F..%2Fstatic%2Fapp.css",
        "/account;%5C..%5Cx.css",
        "/account;%252F..%252Fx.css",
    ];
    for spelling in spellings {
        assert_eq!(tomcat(spelling), "/account", "{spelling}");
    }
    let layer = support::layer(MemoryBackend::new())
        .default_lifetime(Duration::from_secs(60))
        .no_cache(RouteMatch::Exact("/account".into()));
    let watch = support::Watch::of(&layer);
    let app = layer.layer(path_origin::serving(account_page));
    path_origin::assert_none_stored(&app, &watch, &spellings, |user| format!("{user}'s account"))
        .await;
}

/// "Cache only `/static/`" (a default lifetime of 0): `/static/x/..;%2Fb/..;/account`
/// is `/static/x/../../account` to Tomcat, its `/account`, but decoded first it read
/// `/static/x/..;/b/..;/account`, `/static/account`, so every reading put it under
/// `/static/` and the victim's page was stored for the rule's hour. A browser sends it
/// as it is: `..;%2Fb` and `..;` are no dot segments to the URL parser.
#[tokio::test]
async fn a_lifetime_rule_lengthens_nothing_tomcat_reads_outside_it() {
    let spellings = [
        "/static/x/..;%2Fb/..;/account",
        "/static/x/..;%2Fb%2Fc/..;/..;/account",
    ];
    for spelling in spellings {
        assert_eq!(tomcat(spelling), "/account", "{spelling}");
    }
    let layer = path_origin::static_only_layer();
    let watch = support::Watch::of(&layer);
    let app = layer.layer(path_origin::serving(account_page));
    path_origin::assert_none_stored(&app, &watch, &spellings, |user| format!("{user}'s account"))
        .await;
}

/// The price is only caching: a `;` parameter that holds no escape reads alike either
/// way, and a public page spelled with one is still stored and served.
#[tokio::test]
async fn parameters_on_public_pages_are_still_cached() {
    let layer = support::layer(MemoryBackend::new())
        .default_lifetime(Duration::from_secs(60))
        .no_cache(RouteMatch::Exact("/account".into()));
    let watch = support::Watch::of(&layer);
    let app = layer.layer(path_origin::serving(account_page));
    for spelling in ["/news;v=1", "/news;v=1/x.css", "/static/app.css;v=2"] {
        let (first, _) = get(&app, spelling, Some("user=alice")).await;
        watch.settled().await;
        let (second, status) = get(&app, spelling, None).await;
        support::assert_hit(&status);
        assert_eq!(first, second, "{spelling}");
    }
}

/// An origin that marks its personal page one way or another, under a route whose rule
/// gives it an hour: the origin's word wins over the route's lifetime (README's response
/// directive table: `private`, `no-store` and `Set-Cookie` are not stored in routes mode),
/// and `Vary: Cookie` keeps each cookie's page apart.
#[tokio::test]
async fn an_origins_personal_page_is_not_shared_under_a_lifetime_rule() {
    type Marker = (&'static str, &'static str);
    let markers: [&[Marker]; 6] = [
        &[("cache-control", "private")],
        &[("cache-control", "Private, max-age=600")],
        &[("cache-control", "no-store")],
        &[("cache-control", "public"), ("cache-control", "no-store")],
        &[("set-cookie", "session=1; HttpOnly")],
        &[("vary", "Cookie")],
    ];
    for marker in markers {
        let layer = support::layer(MemoryBackend::new())
            .default_lifetime(Duration::ZERO)
            .route(
                RouteMatch::Prefix("/account".into()),
                Duration::from_secs(3600),
            );
        let watch = support::Watch::of(&layer);
        let app = layer.layer(service_fn(
            move |request: Request<Full<Bytes>>| async move {
                let user = request
                    .headers()
                    .get(header::COOKIE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("anonymous")
                    .to_owned();
                let mut response = Response::new(Full::new(Bytes::from(format!("{user}'s page"))));
                for (name, value) in marker {
                    response.headers_mut().append(*name, value.parse().unwrap());
                }
                Ok::<_, Infallible>(response)
            },
        ));
        let (victim, _) = get(&app, "/account", Some("user=alice")).await;
        assert_eq!(victim, "user=alice's page");
        watch.settled().await;
        let (attacker, status) = get(&app, "/account", None).await;
        assert_eq!(attacker, "anonymous's page", "{marker:?}: {status}");
    }
}

/// How Rails routes a path (`get "/account(.:format)"`): a format suffix on the last
/// segment is no part of the route (`/account.json` is `/account`, answered as JSON).
fn rails_page(path: &str, user: &str) -> String {
    let (route, format) = match path.rsplit_once('/') {
        Some((dir, last)) => match last.split_once('.') {
            Some((name, format)) => (format!("{dir}/{name}"), format),
            None => (path.to_owned(), "html"),
        },
        None => (path.to_owned(), "html"),
    };
    if route == "/account" || route.starts_with("/account/") {
        format!("{user}'s account as {format}")
    } else {
        format!("public page {route} as {format}")
    }
}

/// A private area written `Prefix("/account/")`: the rule covers `/account` itself (a
/// lenient origin's reading drops the trailing slash), and the docs send an origin with a
/// `.:format` suffix to a `Prefix` rule; but `/account.json`, Rails' `/account` answered
/// as JSON, was no path of the prefix (`.` is no segment boundary), so a victim lured
/// there had their page stored for the attacker.
#[tokio::test]
async fn a_no_cache_prefix_of_whole_segments_holds_for_a_format_suffix() {
    let layer = support::layer(MemoryBackend::new())
        .default_lifetime(Duration::from_secs(60))
        .no_cache(RouteMatch::Prefix("/account/".into()));
    let watch = support::Watch::of(&layer);
    let app = layer.layer(path_origin::serving(rails_page));
    path_origin::assert_each_gets_own(&app, &watch, "/account.json", |user| {
        format!("{user}'s account as json")
    })
    .await;
    path_origin::assert_each_gets_own(&app, &watch, "/account.css", |user| {
        format!("{user}'s account as css")
    })
    .await;
    assert_eq!(watch.snapshot().stores, 0);
}

/// The same through axum: a catch-all (`/{*path}`, a gateway handing the target as sent
/// to a Tomcat application, cached an hour) gets `/account;%2F..%2Fnews`, which the
/// router does not send to `/account`'s own route; Tomcat answers it with the victim's
/// account. The route pattern's rule must not store it past the `no_cache` rule.
#[cfg(feature = "axum")]
#[tokio::test]
async fn a_catch_all_pattern_rule_holds_where_tomcat_drops_parameters() {
    use axum::Router;
    use axum::http::{HeaderMap, Uri};
    use axum::routing::get as route_get;

    fn user(headers: &HeaderMap) -> String {
        headers
            .get("cookie")
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("user="))
            .unwrap_or("anonymous")
            .to_owned()
    }

    let layer = support::layer(MemoryBackend::new())
        .no_cache(RouteMatch::Exact("/account".into()))
        .route(
            RouteMatch::Pattern("/{*path}".into()),
            Duration::from_secs(3600),
        );
    let watch = support::Watch::of(&layer);
    let app = Router::new()
        .route(
            "/account",
            route_get(
                |headers: HeaderMap| async move { account_page("/account", &user(&headers)) },
            ),
        )
        .route(
            "/{*path}",
            route_get(|uri: Uri, headers: HeaderMap| async move {
                account_page(uri.path(), &user(&headers))
            }),
        )
        .route_layer(layer);
    for spelling in ["/account;%2F..%2Fnews", "/account;v=%2F..%2Fx.css"] {
        path_origin::assert_each_gets_own(&app, &watch, spelling, |user| {
            format!("{user}'s account")
        })
        .await;
    }
    // The catch-all's rule still caches what it serves.
    let (_, _) = get(&app, "/news;v=1", None).await;
    watch.settled().await;
    let (_, status) = get(&app, "/news;v=1", None).await;
    support::assert_hit(&status);
}
