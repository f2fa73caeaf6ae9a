//! Review QY: the desync and cache-deception techniques published since the earlier
//! reviews (Kettle's "HTTP/1.1 must die" and "Gotta cache 'em all", the "funky chunks"
//! chunk-parsing discrepancies) against `tower-memcache-proxy` and the layer. Each test
//! names an attack and fails if it works.

use crate::support;

use support::path_origin::{self, decode_once, get};

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use tower::{Layer, Service};
use tower_memcache::backend::MemoryBackend;
use tower_memcache::cache::RouteMatch;

/// How a lenient origin resolves a path (Tomcat's `;` parameters, escapes decoded before
/// dot segments are resolved, `\` as `/`): written apart from the crate's own reading.
fn lenient(path: &str) -> String {
    let decoded = decode_once(path.as_bytes());
    let text = String::from_utf8_lossy(&decoded).replace('\\', "/");
    path_origin::resolve_segments(&text)
}

/// The origin: `/account` is the page of the user whose cookie came with the request,
/// marked by nothing; `/static/*` are public files.
fn lenient_origin() -> impl Service<
    Request<Full<Bytes>>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl Send,
> + Clone {
    path_origin::serving(|path, user| {
        let path = lenient(path);
        if path == "/account" {
            format!("{user}'s account")
        } else {
            format!("public file {path}")
        }
    })
}

/// "Gotta cache 'em all" (static directory rule + origin normalisation): a layer that
/// caches only what its rules name (`default_lifetime(0)`, `/static/` for an hour) stored
/// the victim's `/static/..%2Faccount` for an hour: the rule matched the path as written,
/// while the origin decoded `%2F`, resolved the dot segment and answered its `/account`
/// page. The attacker then read it from the cache. A lifetime rule now lengthens a
/// path's lifetime only when the path also falls under it as a lenient origin reads it.
#[tokio::test]
async fn a_static_prefix_rule_never_stores_a_page_the_origin_resolves_outside_it() {
    let layer = path_origin::static_only_layer();
    let watch = support::Watch::of(&layer);
    let app = layer.layer(lenient_origin());
    for spelling in [
        "/static/..%2Faccount",
        "/static/..%2faccount",
        "/static/..;/account",
        "/static/..%5Caccount",
        "/static/%2e%2e/account",
        "/static/x/..%2F..%2Faccount",
    ] {
        path_origin::assert_each_gets_own(&app, &watch, spelling, |user| {
            format!("{user}'s account")
        })
        .await;
    }
    // The rule still caches what it names.
    let (first, _) = get(&app, "/static/app.css", None).await;
    assert_eq!(first, "public file /static/app.css");
    watch.settled().await;
    let (_, status) = get(&app, "/static/app.css", None).await;
    assert!(status.contains("hit"), "{status}");
}

/// The origin of an nginx `location ~ ^/account$` (PCRE's `$` also matches before a final
/// newline) reached through a decoding front: `/account%0A` is its `/account` page, of
/// the user whose cookie came with the request.
fn regex_location_origin() -> impl Service<
    Request<Full<Bytes>>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl Send,
> + Clone {
    path_origin::serving(|path, user| {
        let path = String::from_utf8_lossy(&decode_once(path.as_bytes())).into_owned();
        match path.strip_suffix('\n').unwrap_or(&path) {
            "/account" => format!("{user}'s account"),
            other => format!("public page {other:?}"),
        }
    })
}

/// "Gotta cache 'em all" (origin delimiters): an encoded newline ends the path for an
/// nginx regex location, as `%00` does for OpenLiteSpeed. A `no_cache` rule for
/// `/account` held for `%00`, `%3F` and `%23` but not for `/account%0A`: the victim's
/// page was stored there for everyone.
#[tokio::test]
async fn an_encoded_newline_does_not_slip_a_private_page_past_no_cache() {
    let layer = support::layer(MemoryBackend::new())
        .default_lifetime(Duration::from_secs(60))
        .no_cache(RouteMatch::Exact("/account".into()));
    let watch = support::Watch::of(&layer);
    let app = layer.layer(regex_location_origin());
    path_origin::assert_none_stored(&app, &watch, &["/account%0A", "/account%0a"], |user| {
        format!("{user}'s account")
    })
    .await;
}

/// A strict origin (axum's router matches the path as sent: no decoding, no slash
/// merging): `/static/*` are public files, and every other path gets its fallback, a page
/// that greets the user whose cookie came with the request (a server-rendered 404 with
/// the account menu, say).
fn strict_origin() -> impl Service<
    Request<Full<Bytes>>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl Send,
> + Clone {
    path_origin::serving(|path, user| match path.strip_prefix("/static/") {
        Some(file) => format!("public file {file}"),
        None => format!("not found, {user}"),
    })
}

/// "Gotta cache 'em all" the other way round (the cache normalises, the origin does not):
/// rules read `/%73tatic/x` and `//static/x` as `/static/x`, so a layer caching only
/// `/static/` stored them for an hour, while an origin that routes on the path as sent
/// answered them with its fallback page, the victim's own. A lifetime rule now applies
/// only where the path as sent is under it too.
#[tokio::test]
async fn a_static_prefix_rule_never_stores_what_a_strict_origin_routes_elsewhere() {
    let layer = path_origin::static_only_layer();
    let watch = support::Watch::of(&layer);
    let app = layer.layer(strict_origin());
    for spelling in ["/%73tatic/x.css", "//static/x.css", "/%73%74atic//x.css"] {
        path_origin::assert_each_gets_own(&app, &watch, spelling, |user| {
            format!("not found, {user}")
        })
        .await;
    }
    let (first, _) = get(&app, "/static/app.css", None).await;
    assert_eq!(first, "public file app.css");
    watch.settled().await;
    let (_, status) = get(&app, "/static/app.css", None).await;
    assert!(status.contains("hit"), "{status}");
}
