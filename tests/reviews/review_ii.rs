//! Review II: a gap-finding consistency review. "A purge that returned holds" tried where
//! the earlier suites were thinnest: refreshes (a 304, a background revalidation) that
//! began before a tag or namespace purge, unsafe-method invalidations of a `Location`
//! target and of a varied URL racing their fills, and processes with near tiers sharing
//! memcached. The origin is a gated "database" (as in `tests/purges.rs`): a response says
//! which version it was produced from, read when the request arrives, and the test bumps
//! the version (and purges) while that request is held at the gate.

use crate::support;

use support::db::{
    Db, Svc, get, joined, send, serves_only_the_new_version, service, spawn_get, spawn_send,
};
use support::{Watch, assert_hit, stores};

use std::time::Duration;

use http::{Method, StatusCode};
use tower_memcache::backend::Backend;
use tower_memcache::cache::{CacheMode, MemcacheLayer, NearCache};

fn layer<B: Backend>(backend: B) -> MemcacheLayer<B> {
    support::layer(backend)
        .namespace("review-ii")
        .mode(CacheMode::Origin)
}

// ---------------------------------------------------------------------------------------
// Refreshes that began before a tag or namespace purge.

/// A 304 validates the stored body; when it names other tags than the stored response
/// (an origin that moved the page to another surrogate key), the refresh must still not
/// undo a purge of the tags the stored entry had when the purge ran: the body it keeps
/// was produced (and validated) before that purge.
async fn a_304_naming_other_tags_does_not_undo_a_purge_of_the_stored_ones<B: Backend>(backend: B) {
    let db = Db::default();
    // Stored with tag `old`, stale at once: every reuse is revalidated.
    db.fields(
        "/r",
        &[("cache-control", "max-age=0"), ("surrogate-key", "old")],
    );
    let layer = layer(backend);
    let watch = Watch::of(&layer);
    let svc = service(&layer, &db);
    assert_eq!(get(&svc, "/r").await.body, "/r v0");
    stores(&watch, 1).await;
    let gate = db.hold();
    // The revalidation reaches the origin while version 0 is current (a 304 coming) ...
    let revalidating = spawn_get(&svc, "/r", &[]);
    gate.arrivals(1).await;
    // ... whose answer will name the tag `new` only, and be fresh.
    db.fields(
        "/r",
        &[("cache-control", "max-age=600"), ("surrogate-key", "new")],
    );
    db.bump();
    layer.purger().purge_tag("old").await.unwrap();
    gate.open();
    let answer = joined(revalidating).await;
    assert_eq!(answer.body, "/r v0", "{}", answer.cache_status());
    serves_only_the_new_version(&svc, &watch, "/r", &[], "/r v1").await;
}

/// A stale-while-revalidate refresh that reached the origin before a namespace purge
/// (answered 304, or 200 with the version it read) is not stored over the purge.
async fn a_background_refresh_begun_before_a_namespace_purge_is_not_stored<B: Backend>(backend: B) {
    let db = Db::default();
    db.fields(
        "/s",
        &[("cache-control", "max-age=0, stale-while-revalidate=600")],
    );
    let layer = layer(backend);
    let watch = Watch::of(&layer);
    let svc = service(&layer, &db);
    assert_eq!(get(&svc, "/s").await.body, "/s v0");
    stores(&watch, 1).await;
    let gate = db.hold();
    // Served stale at once; its refresh waits at the origin with version 0 (a 304).
    assert_eq!(get(&svc, "/s").await.body, "/s v0");
    gate.arrivals(1).await;
    db.bump();
    layer.purger().purge_namespace().await.unwrap();
    gate.open();
    db.fields("/s", &[("cache-control", "max-age=600")]);
    serves_only_the_new_version(&svc, &watch, "/s", &[], "/s v1").await;
}

/// The same with a tag purge, the background 304 naming the same tag.
async fn a_background_refresh_begun_before_a_tag_purge_is_not_stored<B: Backend>(backend: B) {
    let db = Db::default();
    db.fields(
        "/s",
        &[
            ("cache-control", "max-age=0, stale-while-revalidate=600"),
            ("surrogate-key", "news"),
        ],
    );
    let layer = layer(backend);
    let watch = Watch::of(&layer);
    let svc = service(&layer, &db);
    assert_eq!(get(&svc, "/s").await.body, "/s v0");
    stores(&watch, 1).await;
    let gate = db.hold();
    assert_eq!(get(&svc, "/s").await.body, "/s v0");
    gate.arrivals(1).await;
    db.bump();
    layer.purger().purge_tag("news").await.unwrap();
    db.fields(
        "/s",
        &[("cache-control", "max-age=600"), ("surrogate-key", "news")],
    );
    gate.open();
    serves_only_the_new_version(&svc, &watch, "/s", &[], "/s v1").await;
}

// ---------------------------------------------------------------------------------------
// Unsafe-method invalidations racing fills.

/// A POST to another URL whose 201 names `/a` in `Location` invalidates `/a`: a fill of
/// `/a` under way meanwhile is not stored over it.
async fn a_location_invalidation_during_a_fill_is_not_undone<B: Backend>(backend: B) {
    let db = Db::default();
    db.fields("/b", &[("location", "/a")]);
    let layer = layer(backend);
    let watch = Watch::of(&layer);
    let svc = service(&layer, &db);
    let gate = db.hold();
    let filling = spawn_get(&svc, "/a", &[]);
    gate.arrivals(1).await;
    db.bump();
    let post = spawn_send(&svc, Method::POST, "/b", &[]);
    gate.arrivals(2).await;
    gate.open();
    assert_eq!(joined(post).await.status, StatusCode::OK);
    assert_eq!(joined(filling).await.body, "/a v0");
    serves_only_the_new_version(&svc, &watch, "/a", &[], "/a v1").await;
}

/// A varied URL whose index is stored: a fill of another variant (no placeholder can go
/// in the primary key, which holds the index) under way during a DELETE of the URL is not
/// stored, and neither is the index it would update.
async fn a_variant_fill_during_an_invalidation_of_its_url_is_not_undone<B: Backend>(backend: B) {
    let db = Db::default();
    db.fields(
        "/v",
        &[
            ("cache-control", "max-age=600"),
            ("vary", "accept-language"),
        ],
    );
    let layer = layer(backend);
    let watch = Watch::of(&layer);
    let svc = service(&layer, &db);
    let en = [("accept-language", "en")];
    let fr = [("accept-language", "fr")];
    assert_eq!(send(&svc, Method::GET, "/v", &en).await.body, "/v v0 en");
    stores(&watch, 1).await;
    let gate = db.hold();
    let filling = spawn_get(&svc, "/v", &fr);
    gate.arrivals(1).await;
    db.bump();
    let delete = spawn_send(&svc, Method::DELETE, "/v", &[]);
    gate.arrivals(2).await;
    gate.open();
    assert_eq!(joined(delete).await.status, StatusCode::OK);
    assert_eq!(joined(filling).await.body, "/v v0 fr");
    serves_only_the_new_version(&svc, &watch, "/v", &fr, "/v v1 fr").await;
    serves_only_the_new_version(&svc, &watch, "/v", &en, "/v v1 en").await;
}

/// The same with a namespace purge, and a 304 refresh of one variant begun before it.
async fn a_variant_refresh_during_a_namespace_purge_is_not_undone<B: Backend>(backend: B) {
    let db = Db::default();
    db.fields(
        "/v",
        &[("cache-control", "max-age=0"), ("vary", "accept-language")],
    );
    let layer = layer(backend);
    let watch = Watch::of(&layer);
    let svc = service(&layer, &db);
    let en = [("accept-language", "en")];
    assert_eq!(send(&svc, Method::GET, "/v", &en).await.body, "/v v0 en");
    stores(&watch, 1).await;
    let gate = db.hold();
    let refreshing = spawn_get(&svc, "/v", &en);
    gate.arrivals(1).await;
    db.bump();
    db.fields(
        "/v",
        &[
            ("cache-control", "max-age=600"),
            ("vary", "accept-language"),
        ],
    );
    layer.purger().purge_namespace().await.unwrap();
    gate.open();
    assert_eq!(joined(refreshing).await.body, "/v v0 en");
    serves_only_the_new_version(&svc, &watch, "/v", &en, "/v v1 en").await;
}

// ---------------------------------------------------------------------------------------
// Processes with near tiers sharing memcached.

/// A layer of a process of its own over `backend`, with a near tier of `max_staleness`.
fn process<B: Backend>(backend: B, max_staleness: Duration) -> MemcacheLayer<B> {
    MemcacheLayer::new(backend)
        .namespace("review-ii")
        .mode(CacheMode::Origin)
        .near_cache(NearCache::new(16 << 20, max_staleness))
}

/// Warms `path` in `svc` (stored, then answered from the cache) with version `version`.
async fn warm(svc: &Svc, watch: &Watch, path: &str, version: &str) {
    assert_eq!(get(svc, path).await.body, format!("{path} {version}"));
    stores(watch, 1).await;
    let hit = get(svc, path).await;
    assert_eq!(hit.body, format!("{path} {version}"));
    assert_hit(support::as_seen(hit.cache_status()));
}

/// A process whose near tier has a bound of zero sees another process's invalidation by
/// an unsafe method, tag purge and namespace purge at once, while that other process's
/// own near tier (an hour's bound) drops them at once too.
async fn processes_with_near_tiers_see_each_others_changes<B: Backend + Clone>(backend: B) {
    let db = Db::default();
    db.fields(
        "/t",
        &[("cache-control", "max-age=600"), ("surrogate-key", "news")],
    );
    let a = process(backend.clone(), Duration::ZERO);
    let b = process(backend, Duration::from_secs(3600));
    let (a_watch, b_watch) = (Watch::of(&a), Watch::of(&b));
    let (a_svc, b_svc) = (service(&a, &db), service(&b, &db));
    for (step, path) in ["/p", "/t", "/n"].into_iter().enumerate() {
        let old = format!("v{step}");
        warm(&a_svc, &a_watch, path, &old).await;
        let b_hit = get(&b_svc, path).await;
        assert_eq!(b_hit.body, format!("{path} {old}"));
        b_watch.settled().await;
        db.bump();
        match path {
            "/p" => {
                let post = send(&b_svc, Method::POST, "/p", &[]).await;
                assert_eq!(post.status, StatusCode::OK);
            }
            "/t" => b.purger().purge_tag("news").await.unwrap(),
            _ => b.purger().purge_namespace().await.unwrap(),
        }
        let new = format!("{path} v{}", step + 1);
        let seen_by_a = get(&a_svc, path).await;
        assert_eq!(seen_by_a.body, new, "{}", seen_by_a.cache_status());
        a_watch.settled().await;
        let seen_by_b = get(&b_svc, path).await;
        assert_eq!(seen_by_b.body, new, "{}", seen_by_b.cache_status());
        b_watch.settled().await;
    }
}

/// A tag purge by this process empties its near tier of the tag's pages at once, also of
/// a page another process has tagged since this tier kept it: the tier's copy (tagged
/// `first`) is the page the operator purged by `second`, which memcached's entry names now.
async fn a_local_tag_purge_reaches_a_page_another_process_tagged_since<B: Backend + Clone>(
    backend: B,
) {
    let db = Db::default();
    let tagged = |tag: &'static str| [("cache-control", "max-age=600"), ("surrogate-key", tag)];
    db.fields("/u", &tagged("first"));
    let a = process(backend.clone(), Duration::from_secs(3600));
    let b = process(backend, Duration::ZERO);
    let (a_watch, b_watch) = (Watch::of(&a), Watch::of(&b));
    let (a_svc, b_svc) = (service(&a, &db), service(&b, &db));
    warm(&a_svc, &a_watch, "/u", "v0").await;
    // Another process fetches the page anew (its client asked for `no-cache`), now tagged
    // `second`, and stores it.
    db.bump();
    db.fields("/u", &tagged("second"));
    let refetched = send(&b_svc, Method::GET, "/u", &[("cache-control", "no-cache")]).await;
    assert_eq!(refetched.body, "/u v1");
    stores(&b_watch, 1).await;
    // This process purges `second`: the page must come from the origin.
    db.bump();
    a.purger().purge_tag("second").await.unwrap();
    let after = get(&a_svc, "/u").await;
    assert_eq!(after.body, "/u v2", "{}", after.cache_status());
}

/// memcached restarted empty under a process with a near tier (bound zero): generations
/// and store epochs are gone and made again, and what the tier holds from before is not
/// vouched for by them; a tag purge by another process after the restart holds for it.
#[cfg(feature = "tcp")]
#[tokio::test]
async fn a_restart_of_memcached_then_a_tag_purge_holds_for_a_near_tier() {
    let mut server = memcached_or_skip!("review_ii::restart");
    let backend = || {
        tower_memcache::backend::TcpBackend::builder()
            .server(server.addr())
            .timeout(Duration::from_secs(2))
            .build()
            .unwrap()
    };
    let db = Db::default();
    db.fields(
        "/t",
        &[("cache-control", "max-age=600"), ("surrogate-key", "news")],
    );
    let a = process(backend(), Duration::ZERO);
    let b = MemcacheLayer::new(backend())
        .namespace("review-ii")
        .mode(CacheMode::Origin);
    let a_watch = Watch::of(&a);
    let (a_svc, b_svc) = (service(&a, &db), service(&b, &db));
    warm(&a_svc, &a_watch, "/t", "v0").await;
    server.restart();
    db.bump();
    // Another process stores the page again (after the restart) and purges its tag.
    let refill = get(&b_svc, "/t").await;
    assert_eq!(refill.body, "/t v1");
    Watch::of(&b).settled().await;
    db.bump();
    b.purger().purge_tag("news").await.unwrap();
    let seen_by_a = get(&a_svc, "/t").await;
    assert_eq!(seen_by_a.body, "/t v2", "{}", seen_by_a.cache_status());
}

on_every_backend!("review_ii";
    a_304_naming_other_tags_does_not_undo_a_purge_of_the_stored_ones,
    a_background_refresh_begun_before_a_namespace_purge_is_not_stored,
    a_background_refresh_begun_before_a_tag_purge_is_not_stored,
    a_location_invalidation_during_a_fill_is_not_undone,
    a_variant_fill_during_an_invalidation_of_its_url_is_not_undone,
    a_variant_refresh_during_a_namespace_purge_is_not_undone,
    processes_with_near_tiers_see_each_others_changes,
    a_local_tag_purge_reaches_a_page_another_process_tagged_since,
);
