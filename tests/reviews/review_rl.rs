//! Review RL: an adversarial second look at the last session's changes (review RJ's
//! lower-casing in route rules' origin reading, review RK's stored-meanwhile stand-in,
//! the one `lease_wait` per request, `Location` invalidation across schemes, the keyed
//! host spelling sent to the origin, a lifetime of 0). Each test names an attack or
//! defect and fails if it works.

use crate::support;

use support::non_ascii_encoded as encoded;

use support::Watch;
use support::flood;
use support::paced_origin::{Pace, Paced};
use support::path_origin::{self, decode_once, resolve_segments};
use support::scripted_service::{self, Reply};

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Semaphore;
use tower::Layer;
use tower_memcache::backend::MemoryBackend;
use tower_memcache::cache::RouteMatch;

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

/// An origin that counts its calls and answers each after `delay` with a response any
/// cache may keep for ten minutes, whose body names the call.
fn counting_origin(calls: Arc<AtomicUsize>, delay: Duration) -> Paced {
    Paced::new(calls, Pace::Every(delay), |_, call| {
        let headers = vec![
            ("cache-control", "max-age=600".to_owned()),
            ("etag", format!("\"v{call}\"")),
        ];
        Reply::ok(headers, format!("call {call}"))
    })
}

/// Origin load past coalescing with `no-store`: review QQ made requests with `no-cache`
/// (or `max-age=0`) share one refresh, but a request with `no-store` too never
/// leads a flight (its response is stored for nobody), so with no other request in
/// flight each went to the origin on its own. Any client adding `no-store` to its
/// `no-cache` flood made one origin call per request, coalescing and the cache both
/// bypassed. Such a request now leads a flight its response is shared with, not stored.
#[tokio::test]
async fn a_flood_of_no_cache_no_store_requests_shares_its_origin_calls() {
    support::bounded("no-cache, no-store flood", async {
        let calls = Arc::new(AtomicUsize::new(0));
        let layer = support::layer(MemoryBackend::new());
        let watch = Watch::of(&layer);
        let service = layer.layer(counting_origin(calls.clone(), Duration::from_millis(300)));
        let url = "http://shop.example/hot";
        support::send(&service, http::Method::GET, url, &[]).await;
        support::stores(&watch, 1).await;
        assert_eq!(calls.load(Ordering::SeqCst), 1);

        let burst = flood::burst(&service, url, 30, |i| {
            if i % 2 == 0 {
                &[("cache-control", "no-cache, no-store")]
            } else {
                &[("cache-control", "max-age=0, no-store")]
            }
        })
        .await;
        for answer in burst {
            assert_eq!(answer.status, http::StatusCode::OK);
            // Validated after it arrived (its `no-cache`): never the stored call 1.
            assert_ne!(answer.body, "call 1");
        }
        watch.settled().await;
        let total = calls.load(Ordering::SeqCst);
        // About two (one refresh the burst arrived during, one after); a loaded machine
        // spreading the burst out may add a round or two, never one per request.
        assert!(
            total <= 7,
            "30 no-cache, no-store requests cost {} origin calls",
            total - 1
        );
        // Nothing of theirs was stored: the entry is still call 1's.
        assert_eq!(watch.snapshot().stores, 1);
    })
    .await;
}

/// The fix above must not let a flood of `no-store` requests keep a page from being
/// refreshed: a request that would store its response (a reload's `max-age=0`) never
/// waits for a `no-store` request's flight, whose response is stored for nobody; it
/// leads its own, and its response is stored.
#[tokio::test]
async fn a_request_that_stores_does_not_wait_for_a_no_store_flight() {
    support::bounded("reload beside a no-store flight", async {
        let calls = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(Semaphore::new(0));
        let origin = gated_origin(calls.clone(), gate.clone(), &[]);
        // Longer than `eventually` waits: a reload waiting for the flood's flight fails.
        let layer = support::layer(MemoryBackend::new()).coalesce_timeout(Duration::from_secs(60));
        let watch = Watch::of(&layer);
        let service = layer.layer(origin);
        let get = |headers| flood::spawn_get(&service, "http://site.example/r", headers);
        assert_eq!(get(&[]).await.unwrap().body, "call 1");
        support::stores(&watch, 1).await;
        let flood = get(&[("cache-control", "no-cache, no-store")]);
        support::eventually("the no-store request reached the origin", || {
            calls.load(Ordering::SeqCst) == 2
        })
        .await;
        let reload = get(&[("cache-control", "max-age=0")]);
        support::eventually("the reload reached the origin on its own", || {
            calls.load(Ordering::SeqCst) == 3
        })
        .await;
        gate.add_permits(16);
        assert_eq!(flood.await.unwrap().body, "call 2");
        assert_eq!(reload.await.unwrap().body, "call 3");
        support::stores(&watch, 2).await;
    })
    .await;
}

/// An origin whose first call answers at once and later ones once `gate` lets them, each
/// with a response any cache may keep for ten minutes (with `fields` besides), no
/// validator (a revalidation gets the whole page), whose body names the call.
fn gated_origin(
    calls: Arc<AtomicUsize>,
    gate: Arc<Semaphore>,
    fields: &'static [(&'static str, &'static str)],
) -> Paced {
    let pace = Pace::AfterFirst {
        gate,
        then: Duration::ZERO,
    };
    Paced::new(calls, pace, move |_, call| {
        let mut headers = vec![("cache-control", "max-age=600".to_owned())];
        headers.extend(scripted_service::lines(fields));
        Reply::ok(headers, format!("call {call}"))
    })
}

/// The fix above must keep a purge that returned: a request that looks after a tag purge
/// finds the tagged entry gone but memcached's item unchanged (a tag purge shows only in
/// the tags' marks), so another `no-store` request may join the flight of one that went
/// out before the purge. That response, tagged with the purged tag, is shared only with the
/// requests that joined before its request went out; the later one gets the page anew.
#[tokio::test]
async fn a_no_store_flight_does_not_carry_a_response_past_a_tag_purge() {
    support::bounded("tag purge during a no-store flight", async {
        let calls = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(Semaphore::new(0));
        let origin = gated_origin(calls.clone(), gate.clone(), &[("surrogate-key", "news")]);
        let layer = support::layer(MemoryBackend::new());
        let service = layer.clone().layer(origin);
        let (leading, after) = support::no_store_flight::tag_purge_during_flight(
            &layer,
            service,
            "http://site.example/t",
            &calls,
            &gate,
        )
        .await;
        assert_eq!(leading.body, "call 2", "its own client's");
        assert_eq!(
            after.body,
            "call 3",
            "{:?}",
            after.headers.get("cache-status")
        );
    })
    .await;
}
