//! Review RL: an adversarial second look at the last session's changes (review RJ's
//! lower-casing in route rules' origin reading, review RK's stored-meanwhile stand-in,
//! the one `lease_wait` per request, `Location` invalidation across schemes, the keyed
//! host spelling sent to the origin, a lifetime of 0). Each test names an attack or
//! defect and fails if it works.

mod support;

use support::Watch;
use support::path_origin::{self, decode_once, resolve_segments};

use std::time::Duration;

use tower::Layer;
use tower_memcache::backend::MemoryBackend;
use tower_memcache::cache::RouteMatch;

/// `text` with every non-ASCII byte percent-encoded, as a client sends it.
fn encoded(text: &str) -> String {
    text.bytes()
        .map(|byte| {
            if byte.is_ascii() {
                char::from(byte).to_string()
            } else {
                format!("%{byte:02X}")
            }
        })
        .collect()
}

/// A path decoded once and its segments resolved, as `String`.
fn resolved(path: &str) -> String {
    resolve_segments(&String::from_utf8_lossy(&decode_once(path.as_bytes())))
}

/// Under `/երևան/հաշիվ` ("Yerevan/account") is the page of the user whose cookie came
/// with the request, for a router that compares paths in full upper case (JavaScript's
/// `toUpperCase`, Python's `upper` or `casefold`): `և` is `ԵՒ` to it, as `եւ` is.
fn armenian_account(path: &str, user: &str) -> String {
    if resolved(path).to_uppercase().starts_with("/ԵՐԵՒԱՆ/ՀԱՇԻՎ") {
        format!("{user}'s private page")
    } else {
        format!("public page {path}")
    }
}

/// Web cache deception through a letter whose upper case is two: review RJ's origin
/// reading folded each character through its upper case, but kept one whose upper case
/// is several letters as it was (`և`, whose upper case is `ԵՒ`; `ŉ`, Greek letters with
/// iota subscript). A router comparing in full upper case (JavaScript's `toUpperCase`,
/// Python's `casefold`, the models the reading already follows for `ß` and `ﬁ`) reads
/// `/երեւան` (Yerevan as it is also written, with `եւ`) as `/երևան`: a `no_cache` rule
/// written with either spelling missed the other, and the victim's page was stored.
#[tokio::test]
async fn no_cache_holds_for_a_letter_whose_upper_case_is_two_letters() {
    for (rule, spellings) in [
        (
            "/երևան/հաշիվ",
            ["/երեւան/հաշիվ", "/ԵՐԵՒԱՆ/ՀԱՇԻՎ", "/./երեւան/հաշիվ/x"],
        ),
        (
            "/երեւան/հաշիվ",
            ["/երևան/հաշիվ", "/Երևան/Հաշիվ", "/./երևան/հաշիվ/x"],
        ),
    ] {
        let layer = support::layer(MemoryBackend::new())
            .default_lifetime(Duration::from_secs(60))
            .no_cache(RouteMatch::Prefix(encoded(rule)));
        let watch = Watch::of(&layer);
        let app = layer.layer(path_origin::serving(armenian_account));
        let encoded: Vec<String> = spellings.iter().map(|path| encoded(path)).collect();
        let encoded: Vec<&str> = encoded.iter().map(String::as_str).collect();
        path_origin::assert_none_stored(&app, &watch, &encoded, |user| {
            format!("{user}'s private page")
        })
        .await;
    }
}

/// A path as an origin that normalises Unicode by compatibility (NFKC, as it reads the
/// fullwidth `．` as `.`) before it resolves it: the few punctuation marks NFKC writes
/// as path delimiters (`‥` as `..`, `﹒` as `.`, `﹨` as `\`, `;` as `;`, `﹪` as `%`;
/// from Unicode's decomposition table), `\` read as `/`, escapes decoded again.
fn nfkc_resolved(path: &str) -> String {
    let decoded = String::from_utf8_lossy(&decode_once(path.as_bytes())).into_owned();
    let mut normalised = String::new();
    for c in decoded.chars() {
        match c {
            '\u{2024}' | '\u{fe52}' => normalised.push('.'),
            '\u{2025}' | '\u{fe30}' => normalised.push_str(".."),
            '\u{fe68}' | '\\' => normalised.push('/'),
            '\u{37e}' | '\u{fe54}' => normalised.push(';'),
            '\u{fe6a}' => normalised.push('%'),
            other => normalised.push(other),
        }
    }
    resolved(&normalised)
}

/// `/account` is the page of the user whose cookie came with the request, to an origin
/// that reads paths as [`nfkc_resolved`] does; everything else is public.
fn nfkc_account(path: &str, user: &str) -> String {
    if nfkc_resolved(path) == "/account" {
        format!("{user}'s private page")
    } else {
        format!("public page {path}")
    }
}

/// Web cache deception and the static-directory deception through NFKC's dot leaders:
/// the origin reading takes the fullwidth `．`, `／` and `＼` for `.`, `/` and `\`, as an
/// origin that normalises Unicode by compatibility (NFKC) reads them, but not the other
/// characters NFKC writes as path delimiters: the two dot leader `‥` (U+2025), the small
/// full stop `﹒` (U+FE52), the small reverse solidus `﹨` (U+FE68), the Greek question
/// mark (U+037E, `;` even to NFC) or the small percent sign `﹪` (U+FE6A). Such an origin
/// resolves `/static/‥/account` to `/account`, which "cache only `/static/`" stored for
/// an hour as a static file, and `/x/‥/account` past a `no_cache` rule for `/account`.
#[tokio::test]
async fn nfkc_dot_leaders_are_dot_segments_in_the_origin_reading() {
    let spellings = [
        "/static/\u{2025}/account",
        "/static/x/\u{fe52}\u{fe52}/\u{fe52}\u{fe52}/account",
        "/static/x\u{fe68}..\u{fe68}..\u{fe68}account",
        "/static/x/\u{fe30}/\u{2024}\u{2024}/account\u{37e}.css",
        "/static/x/\u{fe6a}2e\u{fe6a}2e/\u{fe6a}2E%2e/account",
    ];
    let encoded: Vec<String> = spellings.iter().map(|path| encoded(path)).collect();
    let encoded: Vec<&str> = encoded.iter().map(String::as_str).collect();
    let page = |user: &str| format!("{user}'s private page");

    // "Cache only `/static/`": the default lifetime 0, an hour under `/static/`.
    let layer = path_origin::static_only_layer();
    let watch = Watch::of(&layer);
    let app = layer.layer(path_origin::serving(nfkc_account));
    path_origin::assert_none_stored(&app, &watch, &encoded, page).await;

    // A `no_cache` rule for the private page, everything else cached.
    let layer = support::layer(MemoryBackend::new())
        .default_lifetime(Duration::from_secs(60))
        .no_cache(RouteMatch::Exact("/account".into()));
    let watch = Watch::of(&layer);
    let app = layer.layer(path_origin::serving(nfkc_account));
    path_origin::assert_none_stored(&app, &watch, &encoded, page).await;
}
