//! Review QZ: an adversarial second look at the newest changes (relative and dotted
//! `Location` / target invalidation, route-rule readings, the proxy's client-upload
//! errors, obs-text `Connection` lines, multipart range order, 304 kept-out fields).
//! Each test names an attack or defect and fails if it works.

use crate::support;

use support::path_origin::{self, decode_once};
use support::scripted_service::Origin;
use support::{HIT, Watch, assert_hit, send};

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::Full;
use tower::Layer;
use tower_memcache::backend::MemoryBackend;
use tower_memcache::cache::RouteMatch;

/// RFC 9111 §4.4 with RFC 3986 §2.3 / §6.2.2.2: `%2E` is `.` (an unreserved character
/// percent-encoded), so `/x/%2E%2E/b` is the URI `/b`, and a browser that follows a
/// `Location: /x/%2e%2e/b` goes to `/b` (the URL Standard reads `%2e` as `.` in a dot
/// segment). Only the literal `..` was resolved: the encoded spelling, in a `Location`,
/// a `Content-Location` or the target itself (`POST /x/%2e%2e/c`, which an origin that
/// decodes before resolving serves as `/c`), invalidated only itself and left the stored
/// `/page/b` and `/page/c` answering as before the change.
#[tokio::test]
async fn percent_encoded_dot_segments_invalidate_the_path_they_name() {
    let layer = support::layer(MemoryBackend::new());
    let watch = Watch::of(&layer);
    let svc = layer.layer(Origin::naming_locations());
    // The request (target and the fields the origin answers with), the path it names.
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
    let cases: [Case; 4] = [
        (
            "/page/form",
            &[("x-location", "/page/x/%2E%2e/b")],
            "/page/b",
        ),
        (
            "/page/form",
            &[("x-content-location", "x/.%2e/c")],
            "/page/c",
        ),
        ("/page/form", &[("x-location", "%2e/d")], "/page/d"),
        ("/page/x/%2e%2E/e", &[], "/page/e"),
    ];
    let mut left = Vec::new();
    for (target, fields, named) in cases {
        send(&svc, Method::GET, named, &[]).await;
        watch.settled().await;
        let again = send(&svc, Method::GET, named, &[]).await;
        assert_hit(again.cache_status());
        let posted = send(&svc, Method::POST, target, fields).await;
        assert_eq!(posted.status, 201);
        let after = send(&svc, Method::GET, named, &[]).await;
        if after.cache_status() == HIT {
            left.push(format!("POST {target} {fields:?} left {named} cached"));
        }
    }
    assert!(left.is_empty(), "{left:#?}");
}

/// An nginx-style origin: escapes decoded once, an escaped `?`, `#` or line break kept as
/// a byte of its segment (nginx's `ngx_http_parse_complex_uri` does so), then dot
/// segments resolved. `/account` is the page of the user whose cookie came.
fn resolving_origin() -> impl tower::Service<
    Request<Full<Bytes>>,
    Response = http::Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl Send,
> + Clone {
    path_origin::serving(|path, user| {
        let decoded = String::from_utf8_lossy(&decode_once(path.as_bytes())).into_owned();
        match path_origin::resolve_segments(&decoded).as_str() {
            "/account" => format!("{user}'s account"),
            other => format!("public file {other:?}"),
        }
    })
}

/// The spellings that put `/account` behind an escaped delimiter in an earlier segment.
const BEHIND_A_DELIMITER: [&str; 5] = [
    "/static/x%3F/../../account",
    "/static/x%23/../../account",
    "/static/x%0A/../../account",
    "/static/x%0d/../../account",
    "/static/x%253F/../../account",
];

/// Web cache deception through the origin reading's cut: route rules read a path up to an
/// escaped `?`, `#`, NUL or line break (an origin that ends the path there), so
/// `/static/x%3F/../../account` read as `/static/x`, while an origin that keeps the byte in
/// its segment and resolves the dot segments after (nginx) answers it with `/account`.
/// A `no_cache` rule for `/account` held in no reading: the victim's page was stored for
/// the attacker.
#[tokio::test]
async fn no_cache_holds_for_a_page_behind_an_escaped_delimiter_segment() {
    let layer = support::layer(MemoryBackend::new())
        .default_lifetime(Duration::from_secs(60))
        .no_cache(RouteMatch::Exact("/account".into()));
    let watch = Watch::of(&layer);
    let app = layer.layer(resolving_origin());
    path_origin::assert_none_stored(&app, &watch, &BEHIND_A_DELIMITER, |user| {
        format!("{user}'s account")
    })
    .await;
}

/// The same cut against a lifetime rule: with "cache only `/static/`" (a default lifetime
/// of 0), `/static/x%3F/../../account` was under `/static/` in all three readings and
/// was stored for an hour, though the origin answered it with the victim's `/account`.
#[tokio::test]
async fn a_static_prefix_rule_never_stores_a_page_behind_an_escaped_delimiter_segment() {
    let layer = path_origin::static_only_layer();
    let watch = Watch::of(&layer);
    let app = layer.layer(resolving_origin());
    path_origin::assert_none_stored(&app, &watch, &BEHIND_A_DELIMITER, |user| {
        format!("{user}'s account")
    })
    .await;
    // The rule still caches what it names.
    let (first, _) = path_origin::get(&app, "/static/app.css", None).await;
    assert_eq!(first, "public file \"/static/app.css\"");
    watch.settled().await;
    let (_, status) = path_origin::get(&app, "/static/app.css", None).await;
    assert!(status.contains("hit"), "{status}");
}
