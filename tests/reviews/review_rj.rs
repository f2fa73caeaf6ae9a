//! Review RJ: an adversarial second look at reviews RF and RI (host spellings, Unicode
//! case in route rules' origin reading, a `Location` in the other scheme, tag-purge
//! marks). Each test names an attack or defect and fails if it works.

use crate::support;

use support::non_ascii_encoded as encoded;

use support::Watch;
use support::path_origin::{self, decode_once, resolve_segments};

use std::time::Duration;

use tower::Layer;
use tower_memcache::backend::MemoryBackend;
use tower_memcache::cache::RouteMatch;

/// A path as a router that compares by Unicode case without context reads it (ASP.NET
/// Core's `OrdinalIgnoreCase`, Java's `equalsIgnoreCase`): each character on its own in
/// upper case, so `σ` and the word-final `ς` are both `Σ`.
fn ordinal_ignore_case(path: &str) -> String {
    let decoded = String::from_utf8_lossy(&decode_once(path.as_bytes())).into_owned();
    resolve_segments(&decoded)
        .chars()
        .map(|c| {
            let mut upper = c.to_uppercase();
            match (upper.next(), upper.next()) {
                (Some(one), None) => one,
                _ => c,
            }
        })
        .collect()
}

/// `/λογαριασμός` ("account") is the page of the user whose cookie came with the request,
/// in any letter case; everything else is public.
fn greek_account(path: &str, user: &str) -> String {
    if ordinal_ignore_case(path) == "/ΛΟΓΑΡΙΑΣΜΌΣ" {
        format!("{user}'s private page")
    } else {
        format!("public page {path}")
    }
}

/// Every path under `/ΛΟΓΑΡΙΑΣ` ("accounts") is the page of the user whose cookie came
/// with the request, in any letter case; everything else is public.
fn greek_accounts_area(path: &str, user: &str) -> String {
    if ordinal_ignore_case(path).starts_with("/ΛΟΓΑΡΙΑΣ") {
        format!("{user}'s private page")
    } else {
        format!("public page {path}")
    }
}

/// Web cache deception through Greek's final sigma: the origin reading lower-cased
/// non-ASCII letters with `str::to_lowercase`, which writes `Σ` as `ς` at a word's end
/// and as `σ` elsewhere. A `no_cache` rule for `/λογαριασμός` (written, as Greek is, with
/// `ς`) then read `/λογαριασμόσ` as a path no rule names, which a router comparing by
/// Unicode case answers with the victim's page, stored for the attacker.
#[tokio::test]
async fn no_cache_holds_for_a_sigma_in_either_form() {
    let layer = support::layer(MemoryBackend::new())
        .default_lifetime(Duration::from_secs(60))
        .no_cache(RouteMatch::Exact(encoded("/λογαριασμός")));
    let watch = Watch::of(&layer);
    let app = layer.layer(path_origin::serving(greek_account));
    let spellings = [
        "/λογαριασμός",
        "/ΛΟΓΑΡΙΑΣΜΌΣ",
        "/λογαριασμόσ",
        "/ΛΟΓΑΡΙΑΣΜΌσ",
    ];
    assert_no_private_page_stored(&app, &watch, &spellings).await;
}

/// A regression of review RF's lower-casing: a `no_cache` prefix ending in `Σ`
/// (`/ΛΟΓΑΡΙΑΣ`) became `/λογαριας` in the origin reading, while the paths under it
/// (`/./ΛΟΓΑΡΙΑΣΜΟΣ`, which only the origin reading resolves) read `/λογαριασμος`: the
/// prefix no longer covered them, and the victim's page was stored for the attacker.
/// Before the lower-casing, both kept their `Σ` and the rule held.
#[tokio::test]
async fn no_cache_prefix_ending_in_a_sigma_covers_the_paths_under_it() {
    let layer = support::layer(MemoryBackend::new())
        .default_lifetime(Duration::from_secs(60))
        .no_cache(RouteMatch::Prefix(encoded("/ΛΟΓΑΡΙΑΣ")));
    let watch = Watch::of(&layer);
    let app = layer.layer(path_origin::serving(greek_accounts_area));
    let spellings = ["/./ΛΟΓΑΡΙΑΣΜΟΣ", "/./λογαριασμοσ", "/./ΛΟΓΑΡΙΑΣ/x"];
    assert_no_private_page_stored(&app, &watch, &spellings).await;
}

/// Each spelling, percent-encoded as a client sends it, leaves nothing stored: the
/// victim's private page is never answered to another user.
async fn assert_no_private_page_stored<S, B>(app: &S, watch: &Watch, spellings: &[&str])
where
    S: tower::Service<
            http::Request<http_body_util::Full<bytes::Bytes>>,
            Response = http::Response<B>,
        > + Clone,
    S::Error: std::fmt::Debug,
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    let encoded: Vec<String> = spellings.iter().map(|path| encoded(path)).collect();
    let encoded: Vec<&str> = encoded.iter().map(String::as_str).collect();
    path_origin::assert_none_stored(app, watch, &encoded, |user| {
        format!("{user}'s private page")
    })
    .await;
}
