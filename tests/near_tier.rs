//! The near tier (`MemcacheLayer::near_cache`): what it answers, for how long, and what
//! makes it forget. Each scenario runs on MemoryBackend and on a private memcached (see
//! `on_every_backend!`). "Another process" is a second layer over the same backend with
//! a near tier of its own; a change made behind every layer's back is a write straight to
//! the backend.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response};
use http_body_util::Full;
use support::versioned::Svc;
use support::{Answer, Watch};
use tower_memcache::MemcacheLayer;
use tower_memcache::backend::Backend;
use tower_memcache::cache::{CacheMode, NearCache};

const NEAR_HIT: &str = "tower-memcache; hit; detail=near";
const HIT: &str = "tower-memcache; hit";

/// The origin: a version counter bumped by the test, answered in every body; paths ask for
/// their headers (`/short` fresh for 1 s, `/tagged...` carries a tag, `/vary` varies on
/// `Accept-Encoding`, `/two` on two sets of headers depending on `Origin`).
#[derive(Clone, Default)]
struct Origin {
    version: Arc<AtomicU64>,
    calls: Arc<AtomicU64>,
}

impl Origin {
    fn respond(&self, request: &Request<()>) -> Response<Full<Bytes>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let path = request.uri().path();
        let encoding = request
            .headers()
            .get("accept-encoding")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("identity");
        let body = format!("{path} v{} {encoding}", self.version.load(Ordering::SeqCst));
        let mut response = Response::new(Full::new(Bytes::from(body)));
        let headers = response.headers_mut();
        let max_age = if path == "/short" {
            "max-age=1"
        } else {
            "max-age=600"
        };
        headers.insert("cache-control", HeaderValue::from_static(max_age));
        headers.insert("etag", HeaderValue::from_static("\"e1\""));
        if path.starts_with("/tagged") {
            headers.insert("surrogate-key", HeaderValue::from_static("news"));
        }
        if path == "/vary" {
            headers.insert("vary", HeaderValue::from_static("accept-encoding"));
        }
        if path == "/two" {
            let vary = if request.headers().contains_key("origin") {
                "accept-encoding, origin"
            } else {
                "accept-encoding"
            };
            headers.insert("vary", HeaderValue::from_static(vary));
        }
        response
    }

    fn bump(&self) {
        self.version.fetch_add(1, Ordering::SeqCst);
    }

    fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }
}

/// The layer every test uses, without a near tier: another process's, or a layer that
/// has none.
fn plain<B: Backend>(backend: B) -> MemcacheLayer<B> {
    MemcacheLayer::new(backend)
        .namespace("near")
        .mode(CacheMode::Origin)
        .tag_header(Some(http::HeaderName::from_static("surrogate-key")))
}

fn layer<B: Backend>(backend: B, near: &NearCache) -> MemcacheLayer<B> {
    plain(backend).near_cache(near.clone())
}

fn service<B: Backend>(layer: &MemcacheLayer<B>, origin: &Origin) -> Svc {
    let origin = origin.clone();
    support::versioned::serving(layer, move |request: &Request<()>| origin.respond(request))
}

async fn send(svc: &Svc, method: Method, path: &str, headers: &[(&str, &str)]) -> Answer {
    support::send(svc, method, &format!("http://site.example{path}"), headers).await
}

async fn get(svc: &Svc, path: &str) -> Answer {
    send(svc, Method::GET, path, &[]).await
}

/// Stores `path` (unless it is) and reads it from memcached, which keeps it in the near
/// tier.
async fn warm(svc: &Svc, watch: &Watch, path: &str, headers: &[(&str, &str)]) {
    send(svc, Method::GET, path, headers).await;
    watch.settled().await;
    let hit = send(svc, Method::GET, path, headers).await;
    let status = hit.header("cache-status").unwrap_or("");
    assert!(status == HIT || status == NEAR_HIT, "{path}: {status}");
}

/// Keys read from memcached so far (its `cmd_get`, which counts keys: a lookup of an entry
/// and its namespace generation counts 2).
async fn keys_read<B: Backend>(backend: &B) -> u64 {
    let stats = backend.stats().await.unwrap();
    stats.iter().filter_map(|s| s.get_u64("cmd_get")).sum()
}

/// A GET's `Cache-Status` and the keys it read from memcached.
async fn checked<B: Backend>(svc: &Svc, backend: &B, path: &str) -> (String, u64) {
    let before = keys_read(backend).await;
    let answer = get(svc, path).await;
    let status = answer.header("cache-status").unwrap_or("").to_string();
    (status, keys_read(backend).await - before)
}

/// A hit read from memcached is kept; the next is answered from the near tier with the
/// same body, headers and an `Age`, and counted; memcached is not asked (an entry deleted
/// behind the layer's back is still answered, within the bound).
async fn a_hot_entry_is_answered_without_memcached<B: Backend>(backend: B) {
    let near = NearCache::new(1 << 20, Duration::from_secs(30));
    let layer = layer(backend.clone(), &near);
    let (svc, watch) = (service(&layer, &Origin::default()), Watch::of(&layer));
    warm(&svc, &watch, "/page", &[]).await;
    let from_memcached = get(&svc, "/page").await;
    assert_eq!(
        from_memcached.header("cache-status").unwrap_or(""),
        NEAR_HIT
    );
    assert_eq!(from_memcached.body, "/page v0 identity");
    assert_eq!(from_memcached.header("etag"), Some("\"e1\""));
    assert!(from_memcached.header("age").is_some());
    assert_eq!(near.entries(), 1);
    // Gone from memcached, by someone who does not tell this process: still answered.
    backend.flush_all().await.unwrap();
    assert_eq!(
        get(&svc, "/page")
            .await
            .header("cache-status")
            .unwrap_or(""),
        NEAR_HIT
    );
    // A conditional request and a HEAD are answered from it as from any hit.
    let revalidated = send(&svc, Method::GET, "/page", &[("if-none-match", "\"e1\"")]).await;
    assert_eq!(
        (
            revalidated.status.as_u16(),
            revalidated.header("cache-status").unwrap_or("")
        ),
        (304, NEAR_HIT)
    );
    let head = send(&svc, Method::HEAD, "/page", &[]).await;
    assert_eq!(
        (
            head.header("cache-status").unwrap_or(""),
            head.body.as_str()
        ),
        (NEAR_HIT, "")
    );
    let snapshot = watch.snapshot();
    assert_eq!(snapshot.near_hits, 4, "{snapshot:?}");
    assert!(snapshot.hits >= 5, "{snapshot:?}");
}

/// Past `max_staleness` an entry is checked in memcached again: a purge by another
/// process (a layer with its own tier) shows within the bound, and not before.
async fn another_process_purge_shows_within_the_bound<B: Backend>(backend: B) {
    let origin = Origin::default();
    let near = NearCache::new(1 << 20, Duration::from_millis(400));
    let here = layer(backend.clone(), &near);
    let (svc, watch) = (service(&here, &origin), Watch::of(&here));
    let elsewhere = layer(
        backend,
        &NearCache::new(1 << 20, Duration::from_millis(400)),
    );
    warm(&svc, &watch, "/page", &[]).await;
    origin.bump();
    elsewhere
        .purger()
        .purge_uri("http://site.example/page")
        .await
        .unwrap();
    let before = get(&svc, "/page").await;
    assert_eq!(
        (
            before.header("cache-status").unwrap_or(""),
            before.body.as_str()
        ),
        (NEAR_HIT, "/page v0 identity")
    );
    tokio::time::sleep(Duration::from_millis(450)).await;
    let after = get(&svc, "/page").await;
    assert_eq!(
        after.body,
        "/page v1 identity",
        "{}",
        after.header("cache-status").unwrap_or("")
    );
    assert_ne!(after.header("cache-status").unwrap_or(""), NEAR_HIT);
}

/// This process's purges, invalidations and refreshes apply to its near tier before they
/// return: the next request never gets what they removed.
async fn local_purges_apply_at_once<B: Backend>(backend: B) {
    let origin = Origin::default();
    let near = NearCache::new(1 << 20, Duration::from_secs(30));
    let layer = layer(backend, &near);
    let (svc, watch, purger) = (service(&layer, &origin), Watch::of(&layer), layer.purger());
    let fresh_after = |answer: &Answer, version: u64, what: &str| {
        assert!(
            answer.body.contains(&format!(" v{version} ")),
            "{what}: {} ({})",
            answer.body,
            answer.header("cache-status").unwrap_or("")
        );
    };
    let mut version = 0;
    for what in ["uri", "tag", "namespace", "all", "post", "no-cache refresh"] {
        let path = if what == "tag" { "/tagged" } else { "/page" };
        warm(&svc, &watch, path, &[]).await;
        assert_eq!(
            get(&svc, path).await.header("cache-status").unwrap_or(""),
            NEAR_HIT,
            "{what}"
        );
        origin.bump();
        version += 1;
        match what {
            "uri" => purger.purge_uri("http://site.example/page").await.unwrap(),
            "tag" => purger.purge_tag("news").await.unwrap(),
            "namespace" => purger.purge_namespace().await.unwrap(),
            "all" => purger.purge_all().await.unwrap(),
            "post" => {
                let posted = send(&svc, Method::POST, path, &[]).await;
                assert!(posted.status.is_success());
            }
            _ => {
                // The origin's new response replaces the stored one; the near tier's
                // copy goes with it once the store is done.
                let refreshed =
                    send(&svc, Method::GET, path, &[("cache-control", "no-cache")]).await;
                fresh_after(&refreshed, version, what);
                watch.settled().await;
            }
        }
        fresh_after(&get(&svc, path).await, version, what);
        watch.settled().await;
    }
}

/// Only fresh entries are answered from the near tier; a stale one goes to memcached and
/// the origin as without it, and a request that asks for the origin gets it.
async fn only_fresh_entries_and_willing_requests<B: Backend>(backend: B) {
    let origin = Origin::default();
    let near = NearCache::new(1 << 20, Duration::from_secs(30));
    let layer = layer(backend, &near);
    let (svc, watch) = (service(&layer, &origin), Watch::of(&layer));
    warm(&svc, &watch, "/short", &[]).await;
    assert_eq!(
        get(&svc, "/short")
            .await
            .header("cache-status")
            .unwrap_or(""),
        NEAR_HIT
    );
    let calls = origin.calls();
    let no_cache = send(
        &svc,
        Method::GET,
        "/short",
        &[("cache-control", "no-cache")],
    )
    .await;
    assert!(
        no_cache
            .header("cache-status")
            .unwrap_or("")
            .contains("fwd=request"),
        "{}",
        no_cache.header("cache-status").unwrap_or("")
    );
    assert_eq!(origin.calls(), calls + 1);
    let max_age_0 = send(
        &svc,
        Method::GET,
        "/short",
        &[("cache-control", "max-age=0")],
    )
    .await;
    assert_ne!(max_age_0.header("cache-status").unwrap_or(""), NEAR_HIT);
    watch.settled().await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let stale = get(&svc, "/short").await;
    assert_ne!(stale.header("cache-status").unwrap_or(""), NEAR_HIT);
    assert!(
        !stale.header("cache-status").unwrap_or("").starts_with(HIT)
            || stale.header("cache-status").unwrap_or("").contains("ttl=-")
    );
}

/// Variants: each request gets the variant it selects, from the near tier too; a URL with
/// two sets of selecting headers is not kept (memcached picks among them).
async fn variants_are_kept_apart<B: Backend>(backend: B) {
    let origin = Origin::default();
    let near = NearCache::new(1 << 20, Duration::from_secs(30));
    let layer = layer(backend, &near);
    let (svc, watch) = (service(&layer, &origin), Watch::of(&layer));
    for encoding in ["gzip", "br", "gzip", "br"] {
        let headers = [("accept-encoding", encoding)];
        send(&svc, Method::GET, "/vary", &headers).await;
        watch.settled().await;
        send(&svc, Method::GET, "/vary", &headers).await;
    }
    for encoding in ["gzip", "br"] {
        let answer = send(&svc, Method::GET, "/vary", &[("accept-encoding", encoding)]).await;
        assert_eq!(
            answer.header("cache-status").unwrap_or(""),
            NEAR_HIT,
            "{encoding}"
        );
        assert_eq!(answer.body, format!("/vary v0 {encoding}"));
    }
    let unknown = send(&svc, Method::GET, "/vary", &[("accept-encoding", "zstd")]).await;
    assert_ne!(unknown.header("cache-status").unwrap_or(""), NEAR_HIT);
    assert_eq!(unknown.body, "/vary v0 zstd");

    let cors = [("accept-encoding", "gzip"), ("origin", "https://a.example")];
    // The CORS variant first: the plain request does not select it, so the URL ends up
    // with two sets of selecting headers.
    for headers in [&cors[..], &[("accept-encoding", "gzip")][..]] {
        send(&svc, Method::GET, "/two", headers).await;
        watch.settled().await;
    }
    for _ in 0..2 {
        let answer = send(&svc, Method::GET, "/two", &cors).await;
        assert_eq!(
            answer.header("cache-status").unwrap_or(""),
            HIT,
            "two name sets: asked in memcached"
        );
        let plain = send(&svc, Method::GET, "/two", &[("accept-encoding", "gzip")]).await;
        assert_eq!(plain.header("cache-status").unwrap_or(""), HIT);
    }
}

/// One tier shared by two layers (a server's threads): a purge through one applies to
/// the other's hits at once, and the tier holds no more than its bound.
async fn layers_sharing_a_tier_share_purges_and_the_bound<B: Backend>(backend: B) {
    let origin = Origin::default();
    let near = NearCache::new(64 << 10, Duration::from_secs(30));
    let (one, two) = (layer(backend.clone(), &near), layer(backend, &near));
    let (svc_one, svc_two) = (service(&one, &origin), service(&two, &origin));
    let (watch_one, watch_two) = (Watch::of(&one), Watch::of(&two));
    warm(&svc_one, &watch_one, "/page", &[]).await;
    assert_eq!(
        get(&svc_two, "/page")
            .await
            .header("cache-status")
            .unwrap_or(""),
        NEAR_HIT
    );
    origin.bump();
    two.purger()
        .purge_uri("http://site.example/page")
        .await
        .unwrap();
    assert_eq!(get(&svc_one, "/page").await.body, "/page v1 identity");
    watch_one.settled().await;
    watch_two.settled().await;
    for i in 0..300 {
        let path = format!("/many/{i}");
        get(&svc_one, &path).await;
        watch_one.settled().await;
        get(&svc_two, &path).await;
    }
    assert!(near.entries() > 10, "{near:?}");
    assert!(near.weight() <= near.capacity(), "{near:?}");
}

/// Checks past the bound confirm an entry without reading it: its server's store epoch
/// (for its stripe of URLs), the namespace generation and its tags' generations are read
/// (one multi-get, at most 2 keys here, 3 with a tag) and, unchanged, the entry is
/// answered from the tier for another window. Those values are remembered (the epochs for
/// a quarter of the bound, generations for a sixteenth) and confirm other entries with no
/// round trip. A confirmed entry is answered no longer than the bound after the earliest
/// read it relied on. A layer without a near tier reads the generations with every
/// lookup, as before, and no epoch.
async fn a_lapsed_entry_is_confirmed_without_reading_it<B: Backend>(backend: B) {
    let origin = Origin::default();
    let bound = Duration::from_secs(3);
    let near = NearCache::new(1 << 20, bound);
    let here = layer(backend.clone(), &near);
    let (svc, watch) = (service(&here, &origin), Watch::of(&here));
    for path in ["/a", "/b", "/tagged/a", "/tagged/b"] {
        warm(&svc, &watch, path, &[]).await;
    }
    assert_eq!(checked(&svc, &backend, "/b").await, (NEAR_HIT.into(), 0));
    tokio::time::sleep(bound + Duration::from_millis(100)).await;
    let t0 = Instant::now();
    assert_eq!(
        checked(&svc, &backend, "/a").await,
        (NEAR_HIT.into(), 2),
        "epoch + namespace generation, not the entry"
    );
    // Within the generation's reuse window (187 ms), with room for a loaded machine.
    tokio::time::sleep(Duration::from_millis(30)).await;
    let (status, keys) = checked(&svc, &backend, "/b").await;
    assert_eq!(status, NEAR_HIT);
    assert!(keys <= 1, "its stripe's epoch at most: {keys}");
    let (status, keys) = checked(&svc, &backend, "/tagged/a").await;
    assert_eq!(status, NEAR_HIT);
    assert!(keys <= 2, "epoch and the tag's generation at most: {keys}");
    let (status, keys) = checked(&svc, &backend, "/tagged/b").await;
    assert_eq!(status, NEAR_HIT);
    assert!(keys <= 1, "the tag's generation is remembered: {keys}");
    assert!(
        t0.elapsed() < bound / 16,
        "too slow a machine: {:?}",
        t0.elapsed()
    );
    for path in ["/a", "/b", "/tagged/a", "/tagged/b"] {
        assert_eq!(checked(&svc, &backend, path).await, (NEAR_HIT.into(), 0));
    }
    // /b's confirmation started 30 ms after the generation's read it relied on:
    // answered from the tier until t0 + the bound, then confirmed again.
    tokio::time::sleep_until((t0 + bound - Duration::from_millis(150)).into()).await;
    assert_eq!(checked(&svc, &backend, "/b").await, (NEAR_HIT.into(), 0));
    tokio::time::sleep_until((t0 + bound + Duration::from_millis(50)).into()).await;
    let (status, keys) = checked(&svc, &backend, "/b").await;
    assert_eq!(status, NEAR_HIT);
    assert!(
        keys >= 1,
        "the generation read at t0 vouched for /b until t0 + the bound only"
    );

    let plain = plain(backend.clone());
    let plain = service(&plain, &origin);
    for _ in 0..2 {
        assert_eq!(checked(&plain, &backend, "/b").await, (HIT.into(), 2));
        assert_eq!(
            checked(&plain, &backend, "/tagged/b").await,
            (HIT.into(), 3)
        );
    }
}

/// However often it is confirmed, an entry is read in full again within 8 windows of its
/// last full read.
async fn a_confirmed_entry_is_read_in_full_within_eight_windows<B: Backend>(backend: B) {
    let origin = Origin::default();
    let bound = Duration::from_millis(200);
    let near = NearCache::new(1 << 20, bound);
    let here = layer(backend, &near);
    let (svc, watch) = (service(&here, &origin), Watch::of(&here));
    warm(&svc, &watch, "/page", &[]).await;
    let read = Instant::now();
    let mut full_reads = Vec::new();
    let mut confirmed = 0;
    while read.elapsed() < bound * 8 + Duration::from_millis(400) {
        tokio::time::sleep(Duration::from_millis(40)).await;
        match get(&svc, "/page")
            .await
            .header("cache-status")
            .unwrap_or("")
        {
            HIT => full_reads.push(read.elapsed()),
            NEAR_HIT => confirmed += 1,
            other => panic!("{other}"),
        }
    }
    assert!(confirmed > 20, "{confirmed}");
    let first = full_reads.first().copied();
    assert!(
        first.is_some_and(|at| at >= bound * 2 && at <= bound * 8 + Duration::from_millis(300)),
        "full reads at {full_reads:?}"
    );
}

/// A refresh or an invalidation by another process, with a near tier or without one,
/// shows within the bound also in an entry the tier keeps confirming without reading it:
/// each writes a new store epoch.
async fn another_process_refresh_and_invalidation_show_within_the_bound<B: Backend>(backend: B) {
    let origin = Origin::default();
    let bound = Duration::from_millis(600);
    let near = NearCache::new(1 << 20, bound);
    let here = layer(backend.clone(), &near);
    let (svc, watch) = (service(&here, &origin), Watch::of(&here));
    let tiered = layer(backend.clone(), &NearCache::new(1 << 20, bound));
    let plain = plain(backend);
    let mut version = 0;
    for (writer, writer_name) in [(&tiered, "with a tier"), (&plain, "without")] {
        let (writer_svc, writer_watch) = (service(writer, &origin), Watch::of(writer));
        for change in ["refresh", "post"] {
            let path = format!("/{change}/{version}");
            warm(&svc, &watch, &path, &[]).await;
            tokio::time::sleep(bound + Duration::from_millis(50)).await;
            let confirmed = get(&svc, &path).await;
            assert_eq!(confirmed.header("cache-status"), Some(NEAR_HIT));
            origin.bump();
            version += 1;
            match change {
                "refresh" => {
                    let refreshed = send(
                        &writer_svc,
                        Method::GET,
                        &path,
                        &[("cache-control", "no-cache")],
                    )
                    .await;
                    assert!(refreshed.body.contains(&format!(" v{version} ")));
                }
                _ => {
                    let posted = send(&writer_svc, Method::POST, &path, &[]).await;
                    assert!(posted.status.is_success());
                }
            }
            writer_watch.settled().await;
            let changed = Instant::now();
            tokio::time::sleep_until((changed + bound + Duration::from_millis(50)).into()).await;
            let now = get(&svc, &path).await;
            assert!(
                now.body.contains(&format!(" v{version} ")),
                "{change} by a layer {writer_name}: {} ({})",
                now.body,
                now.header("cache-status").unwrap_or("")
            );
            watch.settled().await;
        }
    }
}

/// A purge of the namespace or of a tag by another process shows within the bound, also
/// when this process's tier had just read (and remembers) the generation it replaced.
async fn another_process_namespace_and_tag_purges_show_within_the_bound<B: Backend>(backend: B) {
    let origin = Origin::default();
    let bound = Duration::from_millis(800);
    let near = NearCache::new(1 << 20, bound);
    let here = layer(backend.clone(), &near);
    let (svc, watch) = (service(&here, &origin), Watch::of(&here));
    let elsewhere = layer(backend, &NearCache::new(1 << 20, bound));
    for (version, kind) in ["namespace", "tag"].into_iter().enumerate() {
        let paths = if kind == "tag" {
            ["/tagged/a", "/tagged/b"]
        } else {
            ["/a", "/b"]
        };
        for path in paths {
            warm(&svc, &watch, path, &[]).await;
        }
        tokio::time::sleep(bound + Duration::from_millis(50)).await;
        // A check: the generations are read, and remembered (and confirm the entry).
        assert_eq!(
            get(&svc, paths[0]).await.header("cache-status"),
            Some(NEAR_HIT)
        );
        origin.bump();
        let purger = elsewhere.purger();
        match kind {
            "tag" => purger.purge_tag("news").await.unwrap(),
            _ => purger.purge_namespace().await.unwrap(),
        }
        let purged = Instant::now();
        // May still be the old one: the tier read the old generation a moment ago.
        get(&svc, paths[1]).await;
        tokio::time::sleep_until((purged + bound + Duration::from_millis(50)).into()).await;
        for path in paths {
            let now = get(&svc, path).await;
            assert_eq!(
                now.body,
                format!("{path} v{} identity", version + 1),
                "{kind}: {}",
                now.header("cache-status").unwrap_or("")
            );
        }
        watch.settled().await;
    }
}

/// A purge of the namespace or of a tag by this process drops the generations the tier
/// remembers too: an entry the purge orphaned, which the tier never kept (another layer
/// stored it), is not vouched for by the generation the purge replaced.
async fn local_purges_drop_the_generations_remembered<B: Backend>(backend: B) {
    let origin = Origin::default();
    let near = NearCache::new(1 << 20, Duration::from_secs(30));
    let here = layer(backend.clone(), &near);
    let (svc, watch) = (service(&here, &origin), Watch::of(&here));
    let plain = plain(backend);
    let (plain_svc, plain_watch) = (service(&plain, &origin), Watch::of(&plain));
    for (version, kind) in ["namespace", "tag"].into_iter().enumerate() {
        let (kept, other) = if kind == "tag" {
            ("/tagged/a", "/tagged/b")
        } else {
            ("/a", "/b")
        };
        // The generations read now are remembered for 30 s / 16.
        warm(&svc, &watch, kept, &[]).await;
        get(&plain_svc, other).await;
        plain_watch.settled().await;
        assert_eq!(
            get(&plain_svc, other).await.header("cache-status"),
            Some(HIT)
        );
        origin.bump();
        let purger = here.purger();
        match kind {
            "tag" => purger.purge_tag("news").await.unwrap(),
            _ => purger.purge_namespace().await.unwrap(),
        }
        let now = get(&svc, other).await;
        assert_eq!(
            now.body,
            format!("{other} v{} identity", version + 1),
            "{kind}: {}",
            now.header("cache-status").unwrap_or("")
        );
        watch.settled().await;
    }
}

on_every_backend!("near_tier";
    a_hot_entry_is_answered_without_memcached,
    another_process_purge_shows_within_the_bound,
    local_purges_apply_at_once,
    only_fresh_entries_and_willing_requests,
    variants_are_kept_apart,
    layers_sharing_a_tier_share_purges_and_the_bound,
    a_lapsed_entry_is_confirmed_without_reading_it,
    a_confirmed_entry_is_read_in_full_within_eight_windows,
    another_process_refresh_and_invalidation_show_within_the_bound,
    another_process_namespace_and_tag_purges_show_within_the_bound,
    local_purges_drop_the_generations_remembered,
);
