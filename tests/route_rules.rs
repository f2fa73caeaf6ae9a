//! `no_cache` route rules against origins that resolve paths leniently (web cache
//! deception, "path confusion"). The cache keys a request by its path as sent; an origin
//! may answer many spellings with one page: in any letter case (IIS, case-insensitive
//! routers), with escapes decoded once or twice (`%2F`, `%252F`), `\` read as `/`, dot
//! segments resolved after decoding, `;` parameters dropped (Tomcat, Spring). An attacker
//! lures a victim to such a spelling of a private page; if the cache stores the victim's
//! answer there, the attacker reads it. Each test fails if that works.

mod support;

use support::path_origin::{self, decode_once, get};

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use tower::{Layer, Service};
use tower_memcache::backend::MemoryBackend;
use tower_memcache::cache::RouteMatch;

/// How a lenient origin resolves a path: the union of what Tomcat (`;` parameters, then
/// dot segments), IIS (case, `\`), a double-decoding proxy chain and a slash-merging,
/// trailing-slash-trimming router do. Written apart from the crate's own reading.
fn lenient(path: &str) -> String {
    let decoded = decode_once(&decode_once(path.as_bytes()));
    let text = String::from_utf8_lossy(&decoded)
        .to_lowercase()
        .replace('\\', "/");
    let text = text.split(['?', '#', '\0']).next().unwrap_or_default();
    path_origin::resolve_segments(text)
}

/// The origin: `/account` (and anything below it) is the page of the user whose cookie
/// came with the request, marked by nothing (the mistake `no_cache` rules exist to catch);
/// every other path is public.
fn origin() -> impl Service<
    Request<Full<Bytes>>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl Send,
> + Clone {
    path_origin::serving(|path, user| {
        let path = lenient(path);
        let private = path == "/account"
            || (path.starts_with("/account/") && !path.starts_with("/account/avatars/"));
        if private {
            format!("{user}'s account")
        } else if path == "/stats" {
            format!("stats for {user}")
        } else {
            format!("public page {path}")
        }
    })
}

/// Spellings a lenient origin answers with `/account`'s page.
const ACCOUNT_SPELLINGS: [&str; 15] = [
    "/static\\..\\account",
    "/Account",
    "/ACCOUNT/settings",
    "/account/",
    "/x/../account",
    "/x/..%2Faccount",
    "/x/..%2faccount/",
    "/x/..%252Faccount",
    "/%2Faccount",
    "/static/..;/account",
    "/account;.css",
    "/account;v=1/x.css",
    "/account%3F.css",
    "/x/%2e%2e/account",
    "/./account",
];

/// The rule the docs recommend for a private area (`Prefix`): no spelling a lenient
/// origin resolves into it is stored.
#[tokio::test]
async fn a_no_cache_prefix_holds_for_every_spelling_a_lenient_origin_resolves() {
    let layer = support::layer(MemoryBackend::new())
        .default_lifetime(Duration::from_secs(60))
        .no_cache(RouteMatch::Prefix("/account".into()));
    let watch = support::Watch::of(&layer);
    let app = layer.layer(origin());
    path_origin::assert_none_stored(&app, &watch, &ACCOUNT_SPELLINGS, |user| {
        format!("{user}'s account")
    })
    .await;
}

/// An `Exact` rule: the spellings of that one path (not of paths below it, which `Exact`
/// does not name) are not stored either.
#[tokio::test]
async fn a_no_cache_exact_rule_holds_for_every_spelling_of_its_path() {
    let layer = support::layer(MemoryBackend::new())
        .default_lifetime(Duration::from_secs(60))
        .no_cache(RouteMatch::Exact("/stats".into()));
    let watch = support::Watch::of(&layer);
    let app = layer.layer(origin());
    path_origin::assert_none_stored(
        &app,
        &watch,
        &[
            "/Stats",
            "/stats/",
            "/STATS/",
            "/x/../stats",
            "/x/..%2Fstats",
            "/%2Fstats",
            "/stats;.css",
            "/stats%3F.css",
            "/stats%23.css",
            "/x/%2e%2e/stats",
            "/x/..%252fstats",
        ],
        |user| format!("stats for {user}"),
    )
    .await;
}

/// The price is only caching: odd spellings of public pages are still stored and served,
/// and a lifetime rule still picks its routes' lifetime.
#[tokio::test]
async fn odd_spellings_of_public_pages_are_still_cached() {
    let layer = support::layer(MemoryBackend::new())
        .default_lifetime(Duration::from_secs(60))
        .no_cache(RouteMatch::Prefix("/account".into()))
        .route(
            RouteMatch::Prefix("/account/avatars/".into()),
            Duration::from_secs(30),
        );
    let watch = support::Watch::of(&layer);
    let app = layer.layer(origin());
    for spelling in [
        "/News/",
        "/news;v=1",
        "/a/../news",
        "/account/avatars/Me.png",
    ] {
        let (first, _) = get(&app, spelling, Some("user=alice")).await;
        watch.settled().await;
        let (second, status) = get(&app, spelling, None).await;
        support::assert_hit(&status);
        assert_eq!(first, second, "{spelling}");
    }
}

/// The page an origin that normalises Unicode by compatibility (NFKC) before it routes
/// answers, as Python's `unicodedata.normalize("NFKC", ...)` or Java's `Normalizer` in
/// front of a router does: `/𝐚ccount` (mathematical bold `a`), `/ⓐccount` (circled) and
/// `/ᵃccount` (modifier) are its `/account`, and `/café` written with a combining
/// accent is the `/café` written with `é`. Read with Unicode's own tables, apart from the
/// crate's reading; `/account` and `/café` are the user's own pages.
fn nfkc_page(path: &str, user: &str) -> String {
    use unicode_normalization::UnicodeNormalization;
    let decoded: String = String::from_utf8_lossy(&decode_once(path.as_bytes()))
        .nfkc()
        .collect();
    let path = path_origin::resolve_segments(&decoded.to_lowercase());
    if path == "/account" || path.starts_with("/account/") || path == "/caf\u{e9}" {
        format!("{user}'s account")
    } else {
        format!("public page {path}")
    }
}

/// Web cache deception through NFKC: the origin reading took the fullwidth forms and
/// the delimiters NFKC writes (review RL), but no other compatibility form, nor a
/// letter and its combining mark as the letter they compose. A victim lured to
/// `/𝐚ccount` or `/cafe%CC%81` had their page stored past `no_cache` rules for
/// `/account` and `/café`, for the attacker to read; and a rule written decomposed
/// missed the composed path.
#[tokio::test]
async fn no_cache_holds_for_every_nfkc_spelling_of_its_path() {
    let ascii = [
        "/\u{1d41a}ccount",
        "/\u{24d0}ccount/settings",
        "/\u{1d43}CCOUNT",
        "/x/\u{1d7ce}/../../\u{1d400}ccount",
    ];
    for (cafe_rule, cafe_spellings) in [
        (
            "/caf\u{e9}",
            ["/cafe\u{301}", "/CAFE\u{301}", "/caf%65%CC%81"],
        ),
        ("/cafe\u{301}", ["/caf\u{e9}", "/CAF\u{c9}", "/CAFE\u{301}"]),
    ] {
        let layer = support::layer(MemoryBackend::new())
            .default_lifetime(Duration::from_secs(60))
            .no_cache(RouteMatch::Prefix("/account".into()))
            .no_cache(RouteMatch::Exact(support::non_ascii_encoded(cafe_rule)));
        let watch = support::Watch::of(&layer);
        let app = layer.layer(path_origin::serving(nfkc_page));
        let spellings: Vec<String> = ascii
            .iter()
            .chain(&cafe_spellings)
            .map(|path| support::non_ascii_encoded(path))
            .collect();
        let spellings: Vec<&str> = spellings.iter().map(String::as_str).collect();
        path_origin::assert_none_stored(&app, &watch, &spellings, |user| {
            format!("{user}'s account")
        })
        .await;
    }
}
