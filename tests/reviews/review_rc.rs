//! Review RC: request spellings an origin reads differently than the cache (IIS's `%u`
//! escapes, overlong UTF-8, Windows' trailing dots and spaces, browsers' `\`), and other
//! keying leftovers. Each test names an attack or defect and fails if it works.

use crate::support;

use support::path_origin::{self, decode_once, get};
use support::scripted_service::Origin;
use support::{HIT, Watch, assert_hit, send};

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::Full;
use tower::{Layer, Service};
use tower_memcache::backend::MemoryBackend;
use tower_memcache::cache::RouteMatch;

/// How an IIS-like origin on Windows resolves a path: IIS's `%uXXXX` escapes and every
/// `%XY` decoded, an overlong UTF-8 form (`%c0%ae`, the IIS 4/5 and old Java decoders) or a
/// fullwidth form (`%ef%bc%8e`, Windows' best-fit mapping) read as its ASCII character,
/// `\` as `/`, letters in any case, white space around each segment trimmed (Spring's
/// `trimTokens`), each segment's trailing dots and spaces dropped (Win32 path
/// normalisation). Written apart from the crate's own reading.
fn windows(path: &str) -> String {
    // `%uXXXX` (`u` in either case) first, then the `%XY` escapes.
    let path = path.replace("%U", "%u");
    let mut text = String::new();
    let mut rest = path.as_str();
    while let Some(at) = rest.find("%u") {
        text.push_str(&rest[..at]);
        let code = rest
            .get(at + 2..at + 6)
            .and_then(|hex| u32::from_str_radix(hex, 16).ok())
            .and_then(char::from_u32);
        match code {
            Some(c) => {
                let mut utf8 = [0; 4];
                for byte in c.encode_utf8(&mut utf8).bytes() {
                    text.push_str(&format!("%{byte:02x}"));
                }
                rest = &rest[at + 6..];
            }
            None => {
                text.push_str("%u");
                rest = &rest[at + 2..];
            }
        }
    }
    text.push_str(rest);
    let bytes = decode_once(text.as_bytes());
    let mut ascii = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i..] {
            // Two-byte overlong forms of ASCII.
            [lead @ (0xc0 | 0xc1), cont, ..] if cont & 0xc0 == 0x80 => {
                ascii.push(((lead & 0x1f) << 6) | (cont & 0x3f));
                i += 2;
            }
            // Three-byte overlong forms of ASCII.
            [0xe0, second @ (0x80 | 0x81), cont, ..] if cont & 0xc0 == 0x80 => {
                ascii.push(((second & 0x3f) << 6) | (cont & 0x3f));
                i += 3;
            }
            // Fullwidth forms U+FF01..U+FF5E.
            [0xef, second @ (0xbc | 0xbd), third, ..] if third & 0xc0 == 0x80 => {
                let code = 0xff00 | (u32::from(second & 0x03) << 6) | u32::from(third & 0x3f);
                match u8::try_from(code.wrapping_sub(0xfee0)) {
                    Ok(byte) if (0x21..=0x7e).contains(&byte) => ascii.push(byte),
                    _ => ascii.extend_from_slice(&bytes[i..i + 3]),
                }
                i += 3;
            }
            _ => {
                ascii.push(bytes[i]);
                i += 1;
            }
        }
    }
    let text = String::from_utf8_lossy(&ascii)
        .to_lowercase()
        .replace('\\', "/");
    let trimmed: Vec<&str> = text
        .split('/')
        .map(|segment| match segment.trim_matches(|c: char| c <= ' ') {
            trimmed @ ("." | "..") => trimmed,
            other => other.trim_end_matches(['.', ' ']),
        })
        .collect();
    path_origin::resolve_segments(&trimmed.join("/"))
}

/// The origin: `/account` is the page of the user whose cookie came with the request,
/// marked by nothing; everything else is public.
fn windows_origin() -> impl Service<
    Request<Full<Bytes>>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl Send,
> + Clone {
    path_origin::serving(|path, user| {
        let path = windows(path);
        if path == "/account" {
            format!("{user}'s account")
        } else {
            format!("public file {path}")
        }
    })
}

/// Spellings an IIS-like origin answers with `/account`'s page that the route rules read
/// as other paths: Windows drops a segment's trailing dots and spaces, IIS decodes `%u`
/// escapes, old decoders take an overlong UTF-8 form for its ASCII character, and
/// Windows' best-fit mapping a fullwidth one.
const WINDOWS_SPELLINGS: [&str; 13] = [
    "/account.",
    "/account%20",
    "/Account.%20.",
    "/x/%c0%ae%c0%ae/account",
    "/x/..%c0%afaccount",
    "/x/%e0%80%ae%e0%80%ae/account",
    "/x/%u002e%u002e/account",
    "/x/..%U002Faccount",
    "/x/..%ef%bc%8faccount",
    "/x/%uff0e%uff0e/%uFF41ccount",
    // Sent raw: a request line may hold UTF-8, which `Uri` keeps.
    "/x/\u{ff0e}\u{ff0e}/account",
    // Trimmed as Java's `String.trim` does.
    "/%20account",
    "/%09Account%0B",
];

/// Web cache deception through Windows path spellings: a `no_cache` rule for `/account`
/// read `/account.`, `/account%20`, `/x/%c0%ae%c0%ae/account` or `/x/%u002e%u002e/account`
/// as other paths, so the victim lured there had the page an IIS-like origin answered
/// (the victim's own account) stored for the attacker.
#[tokio::test]
async fn no_cache_holds_for_windows_and_iis_spellings_of_its_path() {
    let layer = support::layer(MemoryBackend::new())
        .default_lifetime(Duration::from_secs(60))
        .no_cache(RouteMatch::Exact("/account".into()));
    let watch = support::Watch::of(&layer);
    let app = layer.layer(windows_origin());
    path_origin::assert_none_stored(&app, &watch, &WINDOWS_SPELLINGS, |user| {
        format!("{user}'s account")
    })
    .await;
}

/// "Cache only `/static/`" (a default lifetime of 0, `/static/` for an hour) against the
/// same spellings behind a static prefix: `/static/%c0%ae%c0%ae/account`,
/// `/static/%u002e%u002e/account` and `/static/..%c1%9caccount` (an overlong `\`) were
/// under `/static/` in every reading, and stored for an hour, though an IIS-like origin
/// answers them with the victim's `/account`.
#[tokio::test]
async fn a_static_prefix_rule_never_stores_an_iis_spelling_of_another_page() {
    let layer = path_origin::static_only_layer();
    let watch = support::Watch::of(&layer);
    let app = layer.layer(windows_origin());
    for spelling in [
        "/static/%c0%ae%c0%ae/account",
        "/static/..%c0%afaccount",
        "/static/..%c1%9caccount",
        "/static/%e0%80%ae%e0%80%ae/account",
        "/static/%u002e%u002e/account",
        "/static/..%u005caccount",
        "/static/%uff0e%uff0e%uff0faccount",
        "/static/\u{ff0e}\u{ff0e}\u{ff0f}account",
    ] {
        path_origin::assert_each_gets_own(&app, &watch, spelling, |user| {
            format!("{user}'s account")
        })
        .await;
    }
    // The rule still caches what it names, odd spellings of its own files too.
    for file in [
        "/static/app.css",
        "/static/app.css.",
        "/static/%u0061pp.css",
    ] {
        let (first, _) = get(&app, file, None).await;
        assert_eq!(first, "public file /static/app.css", "{file}");
        watch.settled().await;
        let (_, status) = get(&app, file, None).await;
        support::assert_hit(&status);
    }
}

/// RFC 9111 §4.4 with the URL Standard: a browser reads `\` as `/` in an http(s) URL, so
/// a `Location: \page\b` sends it to `/page/b`, the resource the unsafe request changed
/// (and drops a tab anywhere in it). Such a value did not parse as a URI and invalidated
/// nothing: `/page/b` (and the others below) kept answering as before the change. Only on the request's own origin:
/// `\\other.example\…` is another site's.
#[tokio::test]
async fn a_backslash_location_invalidates_the_path_a_browser_reads() {
    let layer = support::layer(MemoryBackend::new());
    let watch = Watch::of(&layer);
    let svc = layer.layer(Origin::naming_locations());
    let host = ("host", "site.example");
    // The fields the POST's response names, and the path they name.
    let cases: [(&str, &str, &str); 6] = [
        ("x-location", "\\page\\b", "/page/b"),
        ("x-content-location", "\\page\\x\\..\\c", "/page/c"),
        ("x-location", "x\\..\\d", "/page/d"),
        ("x-location", "http:\\\\site.example\\page\\e", "/page/e"),
        ("x-location", "\\/site.example/page/f", "/page/f"),
        // The URL Standard drops tabs anywhere in a URL too.
        ("x-location", "/pa\tge/\tg", "/page/g"),
    ];
    let mut left = Vec::new();
    for (field, value, named) in cases {
        send(&svc, Method::GET, named, &[host]).await;
        watch.settled().await;
        let again = send(&svc, Method::GET, named, &[host]).await;
        assert_hit(again.cache_status());
        let posted = send(&svc, Method::POST, "/page/form", &[host, (field, value)]).await;
        assert_eq!(posted.status, 201);
        let after = send(&svc, Method::GET, named, &[host]).await;
        if after.cache_status() == HIT {
            left.push(format!("{field}: {value} left {named} cached"));
        }
    }
    assert!(left.is_empty(), "{left:#?}");
}

/// The target itself, sent with `\` (no browser does; any other client may): an origin
/// that reads `\` as `/` (IIS, many Windows stacks) changed `/page/b` for `POST
/// /page\b`, and `/page/c` for `POST /page\x\..\c`, while the cache invalidated only the
/// spelling it was sent, and kept answering `/page/b` and `/page/c` as before the change.
#[tokio::test]
async fn a_backslash_target_invalidates_the_path_a_lenient_origin_reads() {
    let layer = support::layer(MemoryBackend::new());
    let watch = Watch::of(&layer);
    let svc = layer.layer(Origin::naming_locations());
    let host = ("host", "site.example");
    let mut left = Vec::new();
    for (target, named) in [
        ("/page\\b", "/page/b"),
        ("/page\\x\\..\\c", "/page/c"),
        ("/page/x\\%2e%2e\\d?q=\\", "/page/d?q=\\"),
    ] {
        send(&svc, Method::GET, named, &[host]).await;
        watch.settled().await;
        let again = send(&svc, Method::GET, named, &[host]).await;
        assert_hit(again.cache_status());
        let posted = send(&svc, Method::POST, target, &[host]).await;
        assert_eq!(posted.status, 201);
        let after = send(&svc, Method::GET, named, &[host]).await;
        if after.cache_status() == HIT {
            left.push(format!("POST {target} left {named} cached"));
        }
    }
    assert!(left.is_empty(), "{left:#?}");
}

/// A `Pattern` rule decided alone: the router matched `/static/..%2Faccount` to
/// `/static/{*path}` as sent, and the rule's lifetime applied without any other reading.
/// But the route's handler gets `path` decoded (`../account`) and hands it on (a proxy to
/// a file server or a legacy backend, here one that resolves dot segments), which answers
/// `/account`: with "cache only `/static/`" the victim's page was stored for an hour, and
/// a `no_cache` rule for `/account` did not hold either. A reading that leaves the
/// pattern now gets the shortest lifetime, as for the other rules.
#[cfg(feature = "axum")]
#[tokio::test]
async fn a_pattern_rule_never_stores_a_page_its_handler_resolves_elsewhere() {
    use axum::Router;
    use axum::extract::Path;
    use axum::http::HeaderMap;
    use axum::routing::get as route_get;

    /// The handler: hands `/static/{path}` to an origin that resolves dot segments, which
    /// answers `/account` with the page of the user whose cookie came.
    async fn proxied(Path(path): Path<String>, headers: HeaderMap) -> String {
        let user = headers
            .get("cookie")
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("user="))
            .unwrap_or("anonymous");
        match path_origin::resolve_segments(&format!("/static/{path}")).as_str() {
            "/account" => format!("{user}'s account"),
            other => format!("public file {other}"),
        }
    }

    for no_cache in [false, true] {
        let mut layer = support::layer(MemoryBackend::new())
            .default_lifetime(if no_cache {
                Duration::from_secs(3600)
            } else {
                Duration::ZERO
            })
            .route(
                RouteMatch::Pattern("/static/{*path}".into()),
                Duration::from_secs(3600),
            );
        if no_cache {
            layer = layer.no_cache(RouteMatch::Prefix("/account".into()));
        }
        let watch = Watch::of(&layer);
        let app = Router::new()
            .route("/static/{*path}", route_get(proxied))
            .route_layer(layer);
        for spelling in ["/static/..%2Faccount", "/static/x/..%2F..%2Faccount"] {
            path_origin::assert_each_gets_own(&app, &watch, spelling, |user| {
                format!("{user}'s account")
            })
            .await;
        }
        // The rule still caches what the route serves.
        let (first, _) = get(&app, "/static/app.css", None).await;
        assert_eq!(first, "public file /static/app.css");
        watch.settled().await;
        let (_, status) = get(&app, "/static/app.css", None).await;
        assert_hit(&status);
    }
}
