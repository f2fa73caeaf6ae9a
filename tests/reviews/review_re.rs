//! Review RE: an adversarial second look at reviews RB and RC (a 304 to a client's own
//! condition refreshing the stored response, `Cache-Status: stored`, several ranges of an
//! encoded entry, the route rules' origin reading, `\` in `Location`). Each test names an
//! attack or defect and fails if it works.

use crate::support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use http::{Method, Request};
use tower::Layer;
use tower_memcache::CacheMode;
use tower_memcache::backend::MemoryBackend;

use support::scripted_service::Origin;
use support::{Watch, bounded, send};

/// Attack (RFC 9110 §13.1.3: a recipient "MUST ignore" an `If-Modified-Since` whose value
/// has more than one member): since review RB a validator-less 304 to a client's own
/// `If-Modified-Since` refreshes the validator-less stored response when the date asked
/// about is no later than the stored `Date`. The layer read the first of two field lines
/// and the origin another (the last, as PHP behind FastCGI does, each line a parameter
/// the next overwrites): `If-Modified-Since: <the stored Date>` then
/// `If-Modified-Since: <now>`. The origin, honestly not modified since now, answered 304;
/// the layer took it as vouching for its old page and refreshed it, so everyone got the
/// page the origin had replaced, for the 304's whole lifetime (and again each time it
/// went stale). A condition of several members vouches for nothing.
#[tokio::test]
async fn two_if_modified_since_lines_do_not_refresh_an_old_page() {
    let now = SystemTime::now();
    let made = now - Duration::from_secs(100);
    let changed_at = now - Duration::from_secs(50);
    let changed = Arc::new(AtomicBool::new(false));
    let origin = Origin::new({
        let changed = Arc::clone(&changed);
        move |request: &Request<()>| {
            if !changed.load(Ordering::SeqCst) {
                // Stale on arrival (100 s old, fresh for 50; kept for `stale-if-error`):
                // revalidated by the next request. No validator: the origin keeps its
                // modification time to itself.
                return (
                    200,
                    vec![
                        ("date", httpdate::fmt_http_date(made)),
                        ("cache-control", "max-age=50, stale-if-error=600".to_owned()),
                    ],
                    "old page",
                );
            }
            let date = ("date", httpdate::fmt_http_date(SystemTime::now()));
            let cache_control = ("cache-control", "max-age=600".to_owned());
            // The last line wins, and "not modified since" is answered honestly.
            let since = request
                .headers()
                .get_all("if-modified-since")
                .iter()
                .next_back()
                .and_then(|value| httpdate::parse_http_date(value.to_str().ok()?).ok());
            if since.is_some_and(|since| since >= changed_at) {
                return (304, vec![date, cache_control], "");
            }
            (200, vec![date, cache_control], "new page")
        }
    });
    let layer = support::layer(MemoryBackend::new()).mode(CacheMode::Origin);
    let watch = Watch::of(&layer);
    let service = layer.layer(origin.clone());
    let url = "http://site.example/p";
    let first = bounded("fill", send(&service, Method::GET, url, &[])).await;
    assert_eq!(first.body, "old page");
    support::stores(&watch, 1).await;

    changed.store(true, Ordering::SeqCst);
    let (stored_date, later) = (httpdate::fmt_http_date(made), httpdate::fmt_http_date(now));
    let attack = [
        ("if-modified-since", stored_date.as_str()),
        ("if-modified-since", later.as_str()),
    ];
    let answer = bounded("attack", send(&service, Method::GET, url, &attack)).await;
    assert_eq!(answer.status, 304, "{answer:?}");
    watch.settled().await;

    let victim = bounded("victim", send(&service, Method::GET, url, &[])).await;
    assert_eq!(victim.body, "new page", "{victim:?}");
    assert_eq!(origin.calls(), 3);
}

/// Web cache deception past review RC's `Pattern` check: a reading the route pattern
/// still covers was taken for the pattern's own, whatever rule names it. A catch-all
/// (`/{*path}`, a gateway handing every other path to a legacy origin, cached an hour)
/// covers every reading, `/account` too, though the router sends `/account` itself to
/// its own route, which a `no_cache` rule keeps out. `/x/..%2Faccount` reached the
/// catch-all, its handler handed `x/../account` on, the origin answered the victim's
/// account, and it was stored for an hour for the attacker. A `no_cache` rule that names
/// a reading now holds, however the pattern covers it.
#[cfg(feature = "axum")]
#[tokio::test]
async fn a_catch_all_pattern_rule_never_stores_a_page_a_no_cache_rule_names() {
    use axum::Router;
    use axum::extract::Path;
    use axum::http::HeaderMap;
    use axum::routing::get as route_get;
    use support::path_origin;
    use tower_memcache::cache::RouteMatch;

    /// The page of the user whose cookie came.
    fn account(headers: &HeaderMap) -> String {
        let user = headers
            .get("cookie")
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("user="))
            .unwrap_or("anonymous");
        format!("{user}'s account")
    }

    /// The catch-all's handler: hands `/{path}` to an origin that resolves dot segments,
    /// which answers `/account` as the application does.
    async fn proxied(Path(path): Path<String>, headers: HeaderMap) -> String {
        match path_origin::resolve_segments(&format!("/{path}")).as_str() {
            "/account" => account(&headers),
            other => format!("public page {other}"),
        }
    }

    let layer = support::layer(MemoryBackend::new())
        .no_cache(RouteMatch::Prefix("/account".into()))
        .route(
            RouteMatch::Pattern("/{*path}".into()),
            Duration::from_secs(3600),
        );
    let watch = Watch::of(&layer);
    let app = Router::new()
        .route(
            "/account",
            route_get(|headers: HeaderMap| async move { account(&headers) }),
        )
        .route("/{*path}", route_get(proxied))
        .route_layer(layer);
    for spelling in ["/account", "/x/..%2Faccount", "/x/%2e%2e/account"] {
        path_origin::assert_each_gets_own(&app, &watch, spelling, |user| {
            format!("{user}'s account")
        })
        .await;
    }
    // The catch-all's rule still caches what the route serves, odd spellings too.
    for path in ["/news", "/News.html", "/x/..%2Fnews"] {
        let (first, _) = path_origin::get(&app, path, None).await;
        assert!(first.starts_with("public page"), "{path}: {first}");
        watch.settled().await;
        let (_, status) = path_origin::get(&app, path, None).await;
        support::assert_hit(&status);
    }
}
